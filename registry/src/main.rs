//! `wharf-registry`: the registry server's command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use wharf_api::DomainConfig;
use wharf_diagnostics::logging::{self, LogFormat};
use wharf_registry::cluster::{ConfigMapSource, UsageReporter};
use wharf_registry::server::Limits;
use wharf_registry::server::connections::{self, ConnectionLimits, ExternalUrls, TrustedProxies};
use wharf_registry::server::tls::{ReloadingCertificate, TlsFiles};
use wharf_registry::startup::{self, LiveServer, ServeOptions};
use wharf_registry::token_review::{DEFAULT_AUDIENCE, TokenReviewer};
use wharf_storage::secrets::SecretsDir;
use wharf_upstream::UpstreamOptions;

#[derive(Parser)]
#[command(name = "wharf-registry", version, about = "Wharf artifact registry")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the registry. Without --config: Domain `default` with one
    /// Repository `main`, stored under --data.
    Serve(Box<ServeArgs>),
    /// Maintain the Domain's storage.
    #[command(subcommand)]
    Storage(StorageCommand),
}

#[derive(Subcommand)]
enum StorageCommand {
    /// Re-wrap every object's data key under the Domain's current encryption key, without
    /// rewriting data, so older keys can be removed from the key Secret. Safe on a live
    /// registry, and to interrupt and run again.
    Rekey(DomainArgs),
    /// Free what nothing references any more: bytes of Disposed and deleted versions no
    /// other version in the Domain names, staging leftovers, old index revisions. A running
    /// registry does this on its own every --gc-interval; one collector runs at a time.
    Gc(GcArgs),
}

#[derive(clap::Args)]
struct GcArgs {
    #[command(flatten)]
    domain: DomainArgs,
    /// Print what would be freed, free nothing.
    #[arg(long)]
    dry_run: bool,
    /// Free only what was left alone this long (a publish names its bytes within seconds of
    /// storing them). A duration: 1h, 30m.
    #[arg(long, default_value = "1h", value_parser = duration)]
    grace: Duration,
    /// How long to wait for a collection already running (a registry's own, every few
    /// hours and after each dispose) to end before giving up. A duration: 2m, 0s.
    #[arg(long, default_value = "2m", value_parser = duration)]
    wait: Duration,
}

/// Which Domain, and where its Secrets are.
#[derive(clap::Args)]
struct DomainArgs {
    /// A file or folder of Wharf resources (Domain, Repository, UpstreamPolicy YAML).
    #[arg(long, env = "WHARF_CONFIG", conflicts_with = "config_map")]
    config: Option<PathBuf>,
    /// Cluster mode: the ConfigMap (NAMESPACE/NAME, key `wharf.yaml`) the operator renders
    /// for the Domain, watched so changes apply within seconds without a restart.
    #[arg(long, env = "WHARF_CONFIG_MAP")]
    config_map: Option<String>,
    /// Data folder of the embedded default configuration [default: ./wharf-data]; in cluster
    /// mode, where a filesystem Domain's volume is mounted (the operator passes the Domain's
    /// path; without it, the Domain's path is used as written).
    #[arg(long, env = "WHARF_DATA")]
    data: Option<String>,
    /// Folder of Secrets, laid out like a Secret volume (`DIR/{secret}/{key}`), that the
    /// configuration's `credentialsSecretRef`s and `keySecretRef`s name. Default:
    /// `<data>/secrets`.
    #[arg(long, env = "WHARF_SECRETS_DIR")]
    secrets_dir: Option<PathBuf>,
}

impl DomainArgs {
    fn secrets(&self) -> SecretsDir {
        SecretsDir::new(
            self.secrets_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(self.data.as_deref().unwrap_or(DEFAULT_DATA)).join("secrets")),
        )
    }

    /// The Domain's storage, opened as the registry opens it.
    fn open_storage(&self, config: &DomainConfig) -> anyhow::Result<wharf_storage::Storage> {
        // The operator mounts a filesystem Domain's volume at --data.
        let mounted_at = self.config_map.as_ref().and(self.data.as_deref());
        wharf_storage::backends::open_domain_storage(config, &self.secrets(), mounted_at)
    }
}

#[derive(clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    domain: DomainArgs,
    /// Cluster mode: the ConfigMap (NAMESPACE/NAME) each storage collection reports the
    /// Domain's usage in, for the operator's statuses.
    #[arg(long, env = "WHARF_USAGE_CONFIG_MAP", requires = "config_map")]
    usage_config_map: Option<String>,
    /// Cluster mode: the audience a pod's projected ServiceAccount token must be issued for
    /// to be accepted as a credential (checked with the apiserver's TokenReview API).
    #[arg(long, env = "WHARF_TOKEN_AUDIENCE", default_value = DEFAULT_AUDIENCE)]
    token_audience: String,
    /// Cluster mode: TokenReviews asked of the apiserver per second at most (twice that in a
    /// burst); new tokens past it are answered 503 until the bucket refills, so made-up
    /// tokens cannot become a stream of reviews.
    #[arg(long, env = "WHARF_TOKEN_REVIEWS_PER_SECOND", default_value_t = wharf_registry::token_review::DEFAULT_REVIEWS_PER_SECOND)]
    token_reviews_per_second: u32,
    /// Address to listen on.
    #[arg(long, env = "WHARF_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Serve HTTPS (HTTP/2 and HTTP/1.1) with this PEM certificate chain, e.g. a mounted
    /// kubernetes.io/tls Secret's tls.crt. Read again when it changes, so a renewed
    /// certificate is served without a restart. Needs --tls-key.
    #[arg(long, env = "WHARF_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "WHARF_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve /metrics (and /healthz, /readyz) on this address instead of --listen, e.g.
    /// 0.0.0.0:9090: Prometheus scrapes it, clients and ingresses never see it.
    #[arg(long, env = "WHARF_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// How often --tls-cert and --tls-key are checked for changes. A duration: 10s, 1m.
    #[arg(long, env = "WHARF_TLS_RELOAD_INTERVAL", default_value = "10s", value_parser = timeout)]
    tls_reload_interval: Duration,
    /// How often the Domain's encryption keys are read again from their Secret, so a
    /// rotated key seals new data (a Secret volume follows its Secret within a minute or
    /// so). A duration: 10s, 1m.
    #[arg(long, env = "WHARF_KEY_REFRESH_INTERVAL", default_value = "10s", value_parser = timeout)]
    key_refresh_interval: Duration,
    /// How often each replica writes which versions were downloaded since it last did, for
    /// cleanup rules' notDownloadedFor (one storage write each time, whatever the traffic).
    #[arg(long, env = "WHARF_DOWNLOADS_FLUSH_INTERVAL", default_value = "5m", value_parser = timeout)]
    downloads_flush_interval: Duration,
    /// Record no audit events at all (the trail's stream, webhook and storage record), to
    /// measure what it costs or where another layer audits.
    #[arg(long, env = "WHARF_NO_AUDIT")]
    no_audit: bool,
    /// Where audit events go as CloudEvents JSON lines: stdout (operational logs go to
    /// stderr), a file path (appended to), or off. Storage and the webhook get them either way.
    #[arg(long, env = "WHARF_AUDIT_LOG", default_value = "stdout")]
    audit_log: wharf_registry::audit::AuditLog,
    /// An HTTP(S) URL batches of audit events are POSTed to
    /// (application/cloudevents-batch+json), retried; events are dropped, and counted in
    /// wharf_audit_events_dropped, when it stays down. The Domain's spec.audit.webhookURL,
    /// when set, takes its place.
    #[arg(long, env = "WHARF_AUDIT_WEBHOOK")]
    audit_webhook: Option<reqwest::Url>,
    /// How often each replica writes the audit events it recorded to storage (one write
    /// each time, whatever the traffic), where GET /api/v1/audit reads them.
    #[arg(long, env = "WHARF_AUDIT_FLUSH_INTERVAL", default_value = "10s", value_parser = timeout)]
    audit_flush_interval: Duration,
    /// Days the Domain's storage keeps audit events, unless its spec.audit.retentionDays says.
    #[arg(long, env = "WHARF_AUDIT_RETENTION_DAYS", default_value_t = 90, value_parser = clap::value_parser!(u32).range(1..=3650))]
    audit_retention_days: u32,
    /// Time between runs of the storage collector (`storage gc`); replicas take turns.
    #[arg(long, env = "WHARF_GC_INTERVAL", default_value = "6h", value_parser = timeout)]
    gc_interval: Duration,
    /// How long a blob must have been left alone before the collector frees it.
    #[arg(long, env = "WHARF_GC_GRACE", default_value = "1h", value_parser = duration)]
    gc_grace: Duration,
    /// Log format.
    #[arg(long, env = "WHARF_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Largest artifact accepted in one upload, in bytes.
    #[arg(long, env = "WHARF_MAX_UPLOAD_BYTES", default_value_t = Limits::default().max_upload_bytes)]
    max_upload_bytes: u64,
    /// Largest metadata document (npm publish document without its tarball,
    /// PyPI upload fields), in bytes.
    #[arg(long, env = "WHARF_MAX_METADATA_BYTES", default_value_t = Limits::default().max_metadata_bytes)]
    max_metadata_bytes: usize,
    /// Time a client has to send a request's head (method, path, headers), counted from
    /// the connection's start or from the head's first byte; slower clients are
    /// disconnected (slowloris). Bodies are not timed. A duration: 30s, 2m.
    #[arg(long, env = "WHARF_HEADER_READ_TIMEOUT", default_value = "30s", value_parser = timeout)]
    header_read_timeout: Duration,
    /// Time a keep-alive connection may stay open with no request in flight, and a client
    /// may take none of a response. The default is longer than the 60 s idle timeout of
    /// common load balancers, so they close first.
    #[arg(long, env = "WHARF_IDLE_TIMEOUT", default_value = "75s", value_parser = timeout)]
    idle_timeout: Duration,
    /// Connections open at once; more are answered 503 with Retry-After and closed.
    /// Default: half of the soft open-files limit (RLIMIT_NOFILE) after 64 for the process
    /// itself, at most 8192 (480 under a limit of 1024).
    #[arg(long, env = "WHARF_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: Option<u32>,
    /// Connections open at once from one client address; trusted proxies are not counted.
    #[arg(long, env = "WHARF_MAX_CONNECTIONS_PER_CLIENT", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_connections_per_client: u32,
    /// A proxy (address or CIDR range) whose X-Forwarded-Host, X-Forwarded-Proto,
    /// X-Forwarded-For and Forwarded headers are believed, e.g. the ingress controller's
    /// pod range; repeat for more, or `none`. From any other peer those headers are
    /// dropped, so clients cannot choose the host of tarball and download URLs.
    #[arg(long = "trusted-proxy", env = "WHARF_TRUSTED_PROXIES", value_delimiter = ',',
          default_values_t = ["127.0.0.0/8".to_owned(), "::1".to_owned()])]
    trusted_proxies: Vec<String>,
    /// A URL clients reach the registry at (https://wharf.example.com, the in-cluster
    /// http://wharf-acme.wharf-system.svc:8080); repeat for more. Absolute links (npm tarball
    /// URLs, NuGet and Swift links, cargo's dl) use the one whose host the request names,
    /// else the first, so a client cannot point them elsewhere. Without one, links follow
    /// the request's Host.
    #[arg(long = "external-url", env = "WHARF_EXTERNAL_URLS", value_delimiter = ',')]
    external_urls: Vec<String>,
    /// How old, in seconds, the last good copy of an upstream metadata document (packument,
    /// simple page, index file) may be and still be served while the upstream fails. The
    /// copy is kept in storage, so it is served across restarts. Counted from when the
    /// upstream last sent or confirmed it.
    #[arg(long, env = "WHARF_UPSTREAM_MAX_STALE_SECONDS", default_value_t = UpstreamOptions::default().max_stale.as_secs())]
    upstream_max_stale_seconds: u64,
    /// The longest one upstream file download may take, in seconds; past it the client gets
    /// a 504 naming the connection and nothing of the file is kept.
    #[arg(long, env = "WHARF_UPSTREAM_FILE_DEADLINE_SECONDS", default_value_t = UpstreamOptions::default().file_deadline.as_secs())]
    upstream_file_deadline_seconds: u64,
    /// An upstream file download is abandoned (504) when fewer than this many bytes arrive in
    /// any --upstream-file-window-seconds.
    #[arg(long, env = "WHARF_UPSTREAM_FILE_MIN_BYTES", default_value_t = UpstreamOptions::default().file_min_bytes)]
    upstream_file_min_bytes: u64,
    /// The window --upstream-file-min-bytes is counted over, in seconds.
    #[arg(long, env = "WHARF_UPSTREAM_FILE_WINDOW_SECONDS", default_value_t = UpstreamOptions::default().file_window.as_secs())]
    upstream_file_window_seconds: u64,
}

fn timeout(text: &str) -> Result<Duration, String> {
    match wharf_api::parse_duration(text) {
        Ok(duration) if duration.is_zero() => Err("must be at least 1s".to_owned()),
        Ok(duration) => Ok(duration),
        Err(error) => Err(error.to_string()),
    }
}

fn duration(text: &str) -> Result<Duration, String> {
    wharf_api::parse_duration(text).map_err(|error| error.to_string())
}

/// Where the embedded default configuration keeps its data.
const DEFAULT_DATA: &str = "./wharf-data";

fn main() -> anyhow::Result<()> {
    let command = Cli::parse().command;
    logging::init(match &command {
        Command::Serve(args) => args.log_format,
        Command::Storage(_) => LogFormat::Text,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    match command {
        Command::Serve(args) => runtime.block_on(serve(*args)),
        Command::Storage(StorageCommand::Rekey(args)) => runtime.block_on(rekey(args)),
        Command::Storage(StorageCommand::Gc(args)) => runtime.block_on(collect(args)),
    }
}

/// The Domain's configuration, and in cluster mode where it came from.
async fn load_config(
    args: &DomainArgs,
) -> anyhow::Result<(DomainConfig, Option<(ConfigMapSource, Option<String>, kube::Client)>)> {
    match (&args.config, &args.config_map) {
        (_, Some(reference)) => {
            // In-cluster configuration, or KUBECONFIG.
            let client = kube::Client::try_default().await.context("failed to configure the Kubernetes client")?;
            let source = ConfigMapSource::new(client.clone(), reference)?;
            let (config, revision) = source.load().await?;
            Ok((config, Some((source, revision, client))))
        }
        (Some(path), None) => Ok((DomainConfig::load(path).map_err(|e| anyhow::anyhow!("{e}"))?, None)),
        (None, None) => Ok((DomainConfig::embedded_default(args.data.as_deref().unwrap_or(DEFAULT_DATA)), None)),
    }
}

async fn rekey(args: DomainArgs) -> anyhow::Result<()> {
    let (config, _) = load_config(&args).await?;
    let domain = config.domain_name().to_owned();
    let storage = args.open_storage(&config)?;
    let Some(encryption) = storage.encryption() else {
        anyhow::bail!(
            "Domain {domain:?} is not encrypted by the registry (it has no spec.encryption): nothing to rekey"
        )
    };
    if !storage.is_exclusive() {
        storage.verify_conditional_writes().await.context("storage cannot hold a Wharf Domain")?;
    }
    let report = encryption
        .rekey(|progress| {
            eprintln!("{} objects examined, {} re-wrapped so far", progress.examined, progress.rewrapped);
        })
        .await
        .with_context(|| format!("rekey of Domain {domain:?} stopped; run it again to go on"))?;
    if let Some(why) = encryption.unavailable() {
        anyhow::bail!("the encryption keys cannot be used: {why}");
    }
    let current = encryption.current_key_id().unwrap_or_default();
    println!(
        "Domain {domain:?}: every object opens with key {current:?} ({} re-wrapped now, {} already current); keys \
         other than {current:?} may be removed from the key Secret",
        report.rewrapped, report.current
    );
    Ok(())
}

async fn collect(args: GcArgs) -> anyhow::Result<()> {
    let (config, _) = load_config(&args.domain).await?;
    let domain = config.domain_name().to_owned();
    let storage = args.domain.open_storage(&config)?;
    if !storage.is_exclusive() {
        storage.verify_conditional_writes().await.context("storage cannot hold a Wharf Domain")?;
    }
    storage.check_encryption().await.context("storage does not match the Domain's encryption")?;
    if let Some(why) = storage.encryption().and_then(|encryption| encryption.unavailable()) {
        anyhow::bail!("the encryption keys cannot be used: {why}");
    }
    let registry = wharf_core::Registry::new(storage);
    let holder = format!("wharf-registry storage gc/{}", std::process::id());
    let mut cleanup = wharf_registry::collector::cleanup_rules(&config);
    if registry.storage().is_exclusive() && !args.dry_run && !cleanup.is_empty() {
        // A registry serving this folder trusts that it alone changes the package indexes.
        eprintln!(
            "note: cleanup rules on a local folder are carried out by the registry's own collections (a running \
             registry would not see another process dispose of versions); this run frees bytes only"
        );
        cleanup.clear();
    }
    let options = wharf_core::collect::CollectOptions { grace: args.grace, dry_run: args.dry_run, cleanup };
    let give_up = std::time::Instant::now() + args.wait;
    let mut waiting = false;
    let report = loop {
        match registry.collect(&holder, &options).await? {
            Ok(report) => break report,
            Err(held) if std::time::Instant::now() < give_up => {
                if !waiting {
                    eprintln!("waiting for the collection {} runs to end (at most {:?})", held.holder, args.wait);
                    waiting = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(held) => anyhow::bail!(
                "another collection of Domain {domain:?} runs ({}, lease until {}); waited {:?} (--wait)",
                held.holder,
                held.expires,
                args.wait
            ),
        }
    };
    let dispose = if report.dry_run { "would dispose of" } else { "disposed of" };
    for version in &report.disposed {
        println!(
            "{dispose} {} {} {} in Repository {:?} (rule {})",
            version.format, version.package, version.version, version.repository, version.rule
        );
    }
    let verb = if report.dry_run { "would free" } else { "freed" };
    for blob in &report.freed {
        println!("{verb} blob {} ({} bytes)", blob.sha256, blob.size);
    }
    for (repository, usage) in &report.usage.repositories {
        println!(
            "Repository {repository:?}: {} packages, {} versions, {}",
            usage.packages,
            usage.versions,
            wharf_api::usage::human_size(usage.bytes)
        );
    }
    println!(
        "Domain {domain:?}: {verb} {} of {} blobs ({} bytes), {} staging leftovers, {} old index revisions and {} \
         days of download records; {} blobs are referenced, {} too recent to judge (grace {:?}); {} packages read in {:.1} s",
        report.freed_blobs,
        report.blobs,
        report.freed_bytes,
        report.freed_uploads,
        report.freed_revisions,
        report.freed_download_days,
        report.referenced_blobs,
        report.recent_blobs,
        args.grace,
        report.packages,
        report.seconds
    );
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let (config, source) = load_config(&args.domain).await?;
    if source.is_none() && config.domain.spec.registry.is_some() {
        anyhow::bail!(
            "Domain {:?}: spec.registry sets up the registry pods the operator runs (replicas, image, resources, \
             autoscaling, dataVolume, …); a registry started from a file is this one process and would ignore it: \
             remove spec.registry, or apply the Domain to a cluster",
            config.domain_name()
        );
    }
    let (source, token_review, usage) = match source {
        Some((source, revision, client)) => {
            let usage = match &args.usage_config_map {
                Some(reference) => Some(Arc::new(UsageReporter::new(client.clone(), reference)?)),
                None => None,
            };
            let reviewer = TokenReviewer::new(client, &args.token_audience, args.token_reviews_per_second);
            (Some((source, revision)), Some(Arc::new(reviewer)), usage)
        }
        None => (None, None, None),
    };
    let (admin_token, generated) = match std::env::var("WHARF_ADMIN_TOKEN") {
        Ok(token) if !token.is_empty() => (token, false),
        _ => (hex::encode(rand::random::<[u8; 24]>()), true),
    };
    let signing_key = std::env::var("WHARF_TOKEN_SIGNING_KEY").ok().filter(|k| !k.is_empty()).map(String::into_bytes);
    let secrets = args.domain.secrets();
    let options = ServeOptions {
        listen: args.listen,
        secrets,
        admin_token,
        signing_key,
        limits: Limits { max_upload_bytes: args.max_upload_bytes, max_metadata_bytes: args.max_metadata_bytes },
        upstream: UpstreamOptions {
            max_stale: std::time::Duration::from_secs(args.upstream_max_stale_seconds),
            file_deadline: std::time::Duration::from_secs(args.upstream_file_deadline_seconds),
            file_min_bytes: args.upstream_file_min_bytes,
            file_window: std::time::Duration::from_secs(args.upstream_file_window_seconds),
        },
        token_review,
        key_refresh: args.key_refresh_interval,
        downloads_flush: args.downloads_flush_interval,
        audit: wharf_registry::audit::AuditOptions {
            enabled: !args.no_audit,
            log: args.audit_log.clone(),
            webhook: args.audit_webhook.clone(),
            flush_interval: args.audit_flush_interval,
            retention_days: args.audit_retention_days,
            ..Default::default()
        },
        collect: wharf_registry::collector::CollectSchedule { interval: args.gc_interval, grace: args.gc_grace },
        usage,
    };
    let storage = args.domain.open_storage(&config)?;
    let connection_limits = ConnectionLimits {
        header_read_timeout: args.header_read_timeout,
        idle_timeout: args.idle_timeout,
        max_connections: args.max_connections.map_or_else(connections::default_max_connections, |n| n as usize),
        max_connections_per_client: args.max_connections_per_client as usize,
        trusted_proxies: TrustedProxies::parse(args.trusted_proxies.iter().map(String::as_str))?,
        external_urls: ExternalUrls::parse(args.external_urls.iter().map(String::as_str))?,
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(certificate), Some(key)) => {
            let files = TlsFiles { certificate: certificate.clone(), key: key.clone() };
            let certificate = ReloadingCertificate::load(files).context("cannot serve HTTPS")?;
            tokio::spawn(certificate.clone().watch(args.tls_reload_interval));
            Some(certificate.acceptor())
        }
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("failed to listen on {}", options.listen))?;
    let listen = listener.local_addr().context("failed to read the bound address")?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("{}", startup::banner(&config, scheme, listen, &options.admin_token, generated));
    let live = LiveServer::new(startup::build_state(config, storage, &options).await?);
    if let Some((source, revision)) = source {
        tokio::spawn(source.watch(live.clone(), revision, options.secrets.clone()));
    }
    tracing::info!(
        %listen,
        %scheme,
        max_connections = connection_limits.max_connections,
        max_connections_per_client = connection_limits.max_connections_per_client,
        trusted_proxies = %connection_limits.trusted_proxies,
        external_urls = %connection_limits.external_urls,
        "serving"
    );
    if let Some(address) = args.metrics_listen {
        let metrics = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("failed to listen on {address} (--metrics-listen)"))?;
        tracing::info!(listen = %address, "serving metrics");
        let live = live.clone();
        tokio::spawn(async move {
            if let Err(error) = startup::serve_metrics(metrics, live).await {
                tracing::error!(%error, "the metrics listener failed");
            }
        });
    }
    startup::serve(listener, live.clone(), connection_limits, tls, args.metrics_listen.is_some()).await;
    live.state().audit.flush().await;
    if let Err(error) = live.state().packages.registry.flush_downloads().await {
        tracing::warn!(error = %wharf_diagnostics::error_chain(&error), "the last downloads could not be recorded");
    }
    Ok(())
}
