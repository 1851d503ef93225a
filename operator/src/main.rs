//! `wharf-operator`: the operator's command line (`run`, `crd`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use wharf_diagnostics::logging::{self, LogFormat};
use wharf_operator::controller::termination;
use wharf_operator::leader::{Elector, Timing};
use wharf_operator::metrics::Metrics;
use wharf_operator::render::RegistrySettings;
use wharf_operator::scope::WatchScope;

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
    /// Serve `/metrics` (Prometheus text) and `/healthz` on this address, e.g. `0.0.0.0:9090`.
    /// Default: not served.
    #[arg(long, env = "WHARF_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// Namespaces to watch and reconcile, comma separated; empty for all. With a list, the
    /// operator needs its namespaced rules only in those namespaces and its cluster-scoped ones
    /// cluster-wide (operator/rbac/watch-namespaces/); objects elsewhere are not seen.
    #[arg(long, env = "WHARF_WATCH_NAMESPACES")]
    watch_namespaces: Option<String>,
    /// Log format.
    #[arg(long, env = "WHARF_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Reconcile only while holding a Lease, so that of several replicas one reconciles.
    /// Off for a single local process; the Helm chart turns it on.
    #[arg(long, env = "WHARF_LEADER_ELECTION", num_args = 0..=1, default_missing_value = "true",
          default_value_t = false, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Name of the Lease.
    #[arg(long, env = "WHARF_LEADER_ELECTION_LEASE", default_value = "wharf-operator")]
    leader_election_lease: String,
    /// Namespace of the Lease. Default: the namespace of the in-cluster configuration or of
    /// the KUBECONFIG context.
    #[arg(long, env = "POD_NAMESPACE")]
    leader_election_namespace: Option<String>,
    /// This replica's name in the Lease. Default: the host name and process id.
    #[arg(long, env = "POD_NAME")]
    leader_election_identity: Option<String>,
    /// Seconds a Lease stays valid after its last renewal: how long a successor waits after
    /// a leader that died without releasing it.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
    leader_election_lease_seconds: u64,
    /// Seconds between renewals by the leader, and between attempts by the others.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    leader_election_renew_seconds: u64,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => {
            print!("{}", crd_yaml()?);
            Ok(())
        }
        Command::Run(args) => {
            if args.leader_election_renew_seconds >= args.leader_election_lease_seconds {
                anyhow::bail!(
                    "--leader-election-renew-seconds ({}) must be shorter than --leader-election-lease-seconds ({}), \
                     or the Lease expires between renewals",
                    args.leader_election_renew_seconds,
                    args.leader_election_lease_seconds
                );
            }
            let value = args.watch_namespaces.as_deref().unwrap_or_default();
            let scope = WatchScope::parse(value).with_context(|| {
                format!(
                    "WHARF_WATCH_NAMESPACES / --watch-namespaces {value:?} is not a comma-separated list of \
                     namespace names (empty for all namespaces)"
                )
            })?;
            logging::init(args.log_format);
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("failed to start the async runtime")?
                .block_on(run(args, scope))
        }
    }
}

async fn run(args: RunArgs, scope: WatchScope) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("failed to configure the Kubernetes client (in-cluster configuration or KUBECONFIG)")?;
    match &scope {
        WatchScope::All => tracing::info!("watching all namespaces"),
        WatchScope::Namespaces(namespaces) => {
            tracing::info!(namespaces = %namespaces.join(","), "watching only these namespaces");
        }
    }
    let settings = RegistrySettings { image: args.registry_image };
    let metrics = Arc::new(Metrics::default());
    if let Some(address) = args.metrics_addr {
        let listener = wharf_operator::metrics::bind(address)
            .await
            .with_context(|| format!("failed to listen on {address} for metrics (--metrics-addr)"))?;
        tracing::info!(%address, "serving /metrics and /healthz");
        let metrics = metrics.clone();
        tokio::spawn(async move {
            if let Err(error) = wharf_operator::metrics::serve(listener, metrics).await {
                tracing::error!(%error, "the metrics server stopped");
            }
        });
    }
    if !args.leader_election {
        metrics.set_leader(true);
        wharf_operator::controller::run(client, settings, scope, metrics).await;
        return Ok(());
    }
    let namespace = args.leader_election_namespace.unwrap_or_else(|| client.default_namespace().to_owned());
    let identity = args.leader_election_identity.unwrap_or_else(default_identity);
    let timing = Timing {
        lease_duration: Duration::from_secs(args.leader_election_lease_seconds),
        renew_interval: Duration::from_secs(args.leader_election_renew_seconds),
    };
    let elector = Elector::new(client.clone(), &namespace, &args.leader_election_lease, &identity, timing);
    tokio::select! {
        () = elector.acquire() => {},
        () = termination() => {
            tracing::info!("stopped before becoming leader");
            return Ok(());
        }
    }
    metrics.set_leader(true);
    tokio::select! {
        // The controllers stop on SIGTERM: hand the Lease over now rather than after it expires.
        () = wharf_operator::controller::run(client, settings, scope, metrics.clone()) => {
            metrics.set_leader(false);
            elector.release().await.context("failed to release the Lease; a successor takes over when it expires")?;
            Ok(())
        }
        // Another replica may be reconciling already: stop at once, so the pod restarts as a
        // candidate.
        lost = elector.hold() => Err(anyhow::Error::new(lost).context("stopped reconciling")),
    }
}

/// The host name and process id: unique among replicas that share a host name by accident.
fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "wharf-operator".to_owned());
    format!("{host}-{}", std::process::id())
}

fn crd_yaml() -> anyhow::Result<String> {
    let files = wharf_api::crd_files().context("failed to write the CustomResourceDefinitions as YAML")?;
    Ok(files.into_iter().map(|(_, yaml)| format!("---\n{yaml}")).collect())
}
