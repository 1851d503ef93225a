//! `wharf-operator`: the operator's command line (`run`, `crd`).

use anyhow::Context;
use clap::{Parser, Subcommand};
use wharf_operator::render::RegistrySettings;

#[derive(Parser)]
#[command(name = "wharf-operator", version, about = "Wharf operator: Domains, Repositories and UpstreamPolicies")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controllers against the cluster of the in-cluster configuration or
    /// `KUBECONFIG`, until SIGTERM or SIGINT.
    Run(RunArgs),
    /// Print the CustomResourceDefinitions as multi-document YAML (`kubectl apply -f -`).
    Crd,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Container image of the registry pods.
    #[arg(long, env = "WHARF_REGISTRY_IMAGE", default_value = concat!("wharf-registry:", env!("CARGO_PKG_VERSION")))]
    registry_image: String,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => {
            print!("{}", crd_yaml()?);
            Ok(())
        }
        Command::Run(args) => {
            init_tracing();
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("failed to start the async runtime")?
                .block_on(run(args))
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("failed to configure the Kubernetes client (in-cluster configuration or KUBECONFIG)")?;
    wharf_operator::controller::run(client, RegistrySettings { image: args.registry_image }).await;
    Ok(())
}

fn crd_yaml() -> anyhow::Result<String> {
    let files = wharf_api::crd_files().context("failed to write the CustomResourceDefinitions as YAML")?;
    Ok(files.into_iter().map(|(_, yaml)| format!("---\n{yaml}")).collect())
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}
