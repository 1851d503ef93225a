//! `wharf-operator`: the operator's command line (`run`, `crd`).

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "wharf-operator", version, about = "Wharf operator: Domains, Repositories and UpstreamPolicies")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions as multi-document YAML (`kubectl apply -f -`).
    Crd,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => {
            print!("{}", crd_yaml()?);
            Ok(())
        }
    }
}

fn crd_yaml() -> anyhow::Result<String> {
    let files = wharf_api::crd_files().context("failed to write the CustomResourceDefinitions as YAML")?;
    Ok(files.into_iter().map(|(_, yaml)| format!("---\n{yaml}")).collect())
}
