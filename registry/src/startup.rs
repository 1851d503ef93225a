//! Turns a Domain configuration into a running server: opens its storage,
//! loads or generates its keys, binds, and shuts down gracefully. Does I/O.

use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};

use anyhow::Context;
use axum::Router;
use axum::response::IntoResponse;
use tower::ServiceExt;
use wharf_api::DomainConfig;

use crate::auth::TokenSigner;
use crate::server::connections::ConnectionLimits;
use crate::server::{self, AppState, Limits, metrics::Metrics};
use crate::tokens::TokenLedger;
use wharf_core::{Packages, Registry};
use wharf_storage::Storage;
use wharf_storage::secrets::SecretsDir;
use wharf_upstream::UpstreamClient;

pub struct ServeOptions {
    pub listen: SocketAddr,
    /// Where the configuration's Secret references are read from.
    pub secrets: SecretsDir,
    pub admin_token: String,
    /// Overrides the signing key kept in storage (all replicas must agree).
    pub signing_key: Option<Vec<u8>>,
    pub limits: Limits,
    /// How external connections are treated.
    pub upstream: wharf_upstream::UpstreamOptions,
    /// Checks Kubernetes ServiceAccount tokens (cluster mode).
    pub token_review: Option<Arc<crate::token_review::TokenReviewer>>,
    /// How often the encryption keys are read again (a rotated key Secret).
    pub key_refresh: std::time::Duration,
    /// When the storage collector runs.
    pub collect: crate::collector::CollectSchedule,
    /// How often the downloads noted in memory are written (cleanup rules read them).
    pub downloads_flush: std::time::Duration,
    /// Where each collection reports usage (cluster mode).
    pub usage: Option<Arc<crate::cluster::UsageReporter>>,
    /// Where audit events go and how long storage keeps them.
    pub audit: crate::audit::AuditOptions,
}

/// Builds the shared state the router serves from.
pub async fn build_state(
    config: DomainConfig,
    storage: Storage,
    options: &ServeOptions,
) -> anyhow::Result<Arc<AppState>> {
    let mut reachable = true;
    if !storage.is_exclusive() {
        // Refuse a store that would corrupt data; start on one that cannot be
        // reached yet, with /readyz answering 503 until it can.
        match storage.verify_conditional_writes().await {
            Ok(()) => {}
            Err(error) if error.is_unreachable() => {
                reachable = false;
                tracing::warn!(
                    error = %wharf_diagnostics::error_chain(&error),
                    "storage is not reachable; serving anyway, /readyz answers 503 until it is"
                )
            }
            Err(error) if error.is_access_denied() => {
                let source = wharf_storage::backends::credentials_source(&config.domain.spec.storage);
                return Err(error)
                    .context(format!("storage refused {source}: check them and the bucket's permissions"));
            }
            Err(error) if error.is_not_found() => {
                return Err(error).context("storage has no such bucket or container: create it, or fix its name");
            }
            Err(error) => return Err(error).context("storage cannot hold a Wharf Domain"),
        }
    }
    // Storage that cannot be reached is checked by readiness once it answers.
    match storage.check_encryption().await {
        Err(error) if !error.is_unreachable() => {
            return Err(error).context("storage does not match the Domain's encryption");
        }
        _ => {}
    }
    if let Some(encryption) = storage.encryption() {
        if let Some(why) = encryption.unavailable()
            && reachable
        {
            anyhow::bail!("the encryption keys cannot be used: {why}");
        }
        tracing::info!(current = encryption.current_key_id().unwrap_or_default(), "encrypting with the Domain's keys");
        let encryption = Arc::downgrade(encryption);
        let interval = options.key_refresh;
        tokio::spawn(async move {
            // Picks up a rotated key Secret (a Secret volume follows its Secret within a
            // minute or so); a change that does not open the data makes /readyz fail.
            loop {
                tokio::time::sleep(interval).await;
                let Some(encryption) = encryption.upgrade() else { return };
                encryption.refresh().await;
            }
        });
    }
    if config.domain.spec.kubernetes_users() && options.token_review.is_none() {
        anyhow::bail!(
            "spec.tokens.kubernetesUsers needs cluster mode (--config-map): people's Kubernetes tokens are checked \
             by the apiserver, which a registry outside a cluster cannot ask"
        );
    }
    let key = match &options.signing_key {
        Some(key) => key.clone(),
        None => storage.token_signing_key().await.context("failed to load the token signing key")?,
    };
    let domain = config.domain_name().to_owned();
    let credentials = wharf_upstream::resolve_credentials(&config, &options.secrets)?;
    let upstream = Arc::new(
        wharf_upstream::UpstreamClient::new(credentials)
            .with_storage(storage.clone())
            .with_options(options.upstream.clone()),
    );
    upstream.count_from_zero(config.domain.spec.external_connections.iter().map(|connection| connection.name.as_str()));
    let metrics = Arc::new(Metrics::new(upstream.requests()));
    let tokens = TokenLedger::new(storage.clone());
    tokens.keep_reloading(wharf_api::TOKEN_TTL_CEILING.as_secs() as i64);
    let audit_spec = config.domain.spec.audit.as_ref();
    let audit = crate::audit::AuditTrail::start(&domain, storage.clone(), &options.audit, audit_spec, metrics.clone());
    let registry = Arc::new(Registry::new(storage).with_activity(audit.clone()));
    tokio::spawn(flush_downloads(Arc::downgrade(&registry), options.downloads_flush));
    let collector =
        crate::collector::Collector::start(registry.clone(), options.collect.clone(), options.usage.clone());
    collector.set_cleanup(&config);
    Ok(Arc::new(AppState {
        packages: packages(Arc::new(config), registry, upstream, options.limits),
        signer: TokenSigner::new(key, domain),
        tokens,
        oidc: Arc::default(),
        admin_token: options.admin_token.clone(),
        limits: options.limits,
        metrics,
        token_review: options.token_review.clone(),
        collector,
        audit,
        search_names: Arc::default(),
    }))
}

/// Writes the downloads `registry` notes every `interval`, until it is dropped.
async fn flush_downloads(registry: std::sync::Weak<Registry>, interval: std::time::Duration) {
    // Retried each round until storage answers.
    let mut begun = false;
    loop {
        let Some(registry) = registry.upgrade() else { return };
        if !begun {
            begun = wharf_core::downloads::DownloadLog::begin(registry.storage()).await.is_ok();
        }
        if let Err(error) = registry.flush_downloads().await {
            tracing::warn!(error = %wharf_diagnostics::error_chain(&error), "downloads could not be recorded");
        }
        drop(registry);
        tokio::time::sleep(interval).await;
    }
}

/// The pipelines every format's requests go through, over one configuration revision.
fn packages(
    config: Arc<DomainConfig>,
    registry: Arc<Registry>,
    upstream: Arc<UpstreamClient>,
    limits: Limits,
) -> Packages {
    Packages::new(config, registry, upstream, wharf_formats::adapters::all(), limits.max_upload_bytes)
}

/// The configuration in force and the router built from it. A new configuration revision
/// replaces both at once, so a request is served start to finish under one revision; what
/// does not depend on the configuration (storage, caches, keys, metrics, upstream client) is
/// shared across revisions.
pub struct LiveServer {
    current: RwLock<(Arc<AppState>, Router)>,
}

/// Why a configuration revision was not taken.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The revision names another Domain: a registry serves one Domain for its lifetime.
    #[error("the configuration is for Domain {new}, this registry serves Domain {serving}")]
    OtherDomain {
        /// The Domain being served.
        serving: String,
        /// The Domain the revision names.
        new: String,
    },
    /// Storage is opened once at start-up.
    #[error("the Domain's storage or encryption changed; such changes take effect when the registry restarts")]
    StorageChanged,
    /// An external connection's credentials could not be read.
    #[error(transparent)]
    Credentials(#[from] wharf_upstream::CredentialsError),
}

impl LiveServer {
    /// Serves `state` until a new configuration replaces it.
    pub fn new(state: Arc<AppState>) -> Arc<LiveServer> {
        let router = server::app(state.clone());
        Arc::new(LiveServer { current: RwLock::new((state, router)) })
    }

    /// The state in force.
    pub fn state(&self) -> Arc<AppState> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).0.clone()
    }

    fn router(&self) -> Router {
        self.current.read().unwrap_or_else(PoisonError::into_inner).1.clone()
    }

    /// Serves `config` from now on, unless it names another Domain or other storage, or its
    /// connections' credentials cannot be read from `secrets`.
    pub fn replace_config(&self, config: DomainConfig, secrets: &SecretsDir) -> Result<(), ReloadError> {
        let old = self.state();
        if config.domain_name() != old.packages.config.domain_name() {
            return Err(ReloadError::OtherDomain {
                serving: old.packages.config.domain_name().to_owned(),
                new: config.domain_name().to_owned(),
            });
        }
        if config.domain.spec.storage != old.packages.config.domain.spec.storage
            || config.domain.spec.encryption != old.packages.config.domain.spec.encryption
        {
            return Err(ReloadError::StorageChanged);
        }
        let credentials = wharf_upstream::resolve_credentials(&config, secrets)?;
        old.packages.upstream.replace_credentials(credentials);
        old.collector.set_cleanup(&config);
        old.audit.apply(config.domain.spec.audit.as_ref());
        // Views through chains belong to the configuration they were built under: new
        // pipelines, over the same core and client.
        let packages =
            packages(Arc::new(config), old.packages.registry.clone(), old.packages.upstream.clone(), old.limits);
        let state = Arc::new(AppState {
            packages,
            signer: old.signer.clone(),
            tokens: old.tokens.clone(),
            oidc: old.oidc.clone(),
            admin_token: old.admin_token.clone(),
            limits: old.limits,
            metrics: old.metrics.clone(),
            token_review: old.token_review.clone(),
            collector: old.collector.clone(),
            audit: old.audit.clone(),
            search_names: old.search_names.clone(),
        });
        let router = server::app(state.clone());
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = (state, router);
        Ok(())
    }
}

/// Serves until SIGINT or SIGTERM within `limits` (see [`server::connections`]); requests
/// in flight (uploads included) are allowed to finish first.
pub async fn serve(
    listener: tokio::net::TcpListener,
    live: Arc<LiveServer>,
    limits: ConnectionLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    metrics_elsewhere: bool,
) {
    let service = tower::service_fn(move |request: axum::extract::Request| {
        let router = live.router();
        async move {
            if metrics_elsewhere && request.uri().path() == "/metrics" {
                let moved = "metrics are served on the metrics port (--metrics-listen)\n";
                return Ok((axum::http::StatusCode::NOT_FOUND, moved).into_response());
            }
            router.oneshot(request).await
        }
    });
    server::connections::serve(listener, limits, tls, service, shutdown_signal()).await;
}

/// Serves `/metrics`, `/healthz` and `/readyz` on a listener of their own (`--metrics-listen`),
/// so metrics stay off the port clients, ingresses and other tenants reach, and probes and
/// scrapes are not held to the clients' connection limits.
pub async fn serve_metrics(listener: tokio::net::TcpListener, live: Arc<LiveServer>) -> std::io::Result<()> {
    // A fallback, not routes: the registry's own router then matches the path, so the
    // request metrics label it as they would on the main port.
    let forward = move |request: axum::extract::Request| {
        let router = live.router();
        async move {
            if !matches!(request.uri().path(), "/metrics" | "/healthz" | "/readyz") {
                return (axum::http::StatusCode::NOT_FOUND, "the metrics port serves /metrics, /healthz and /readyz\n")
                    .into_response();
            }
            router.oneshot(request).await.into_response()
        }
    };
    axum::serve(listener, axum::Router::new().fallback(forward)).await
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}

/// What a newcomer needs to point clients at the registry.
pub fn banner(
    config: &DomainConfig,
    scheme: &str,
    listen: SocketAddr,
    admin_token: &str,
    token_generated: bool,
) -> String {
    let base = format!("{scheme}://{listen}");
    let mut text = format!("Wharf registry for Domain {:?} listening on {base}\n", config.domain_name());
    for repo in &config.repositories {
        let name = repo.metadata.name.as_deref().unwrap_or_default();
        let access = if repo.allows_anonymous_read() { "anonymous read" } else { "private" };
        text.push_str(&format!("\nRepository {name} ({access}):\n"));
        text.push_str(&format!(
            "  wharf login --tool npm|pip|uv|twine|cargo --registry {base} --repository {name}   (or by hand:)\n"
        ));
        text.push_str(&format!("  npm:  npm config set registry {base}/npm/{name}/\n"));
        text.push_str(&format!("        echo '//{listen}/npm/{name}/:_authToken=${{WHARF_TOKEN}}' >> .npmrc\n"));
        text.push_str(&format!("  pip:  pip install --index-url {base}/pypi/{name}/simple/ PACKAGE\n"));
        text.push_str(&format!(
            "  twine upload --repository-url {base}/pypi/{name}/ -u __token__ -p \"$WHARF_TOKEN\" dist/*\n"
        ));
        text.push_str(&format!(
            "  cargo: [registries.wharf] index = \"sparse+{base}/cargo/{name}/index/\", credential-provider = \"cargo:token\"\n"
        ));
        text.push_str(&format!(
            "  nuget: nuget sources add -Name wharf -Source {base}/nuget/{name}/v3/index.json -Username token -Password \"$WHARF_TOKEN\" -StorePasswordInClearText\n"
        ));
        text.push_str("         nuget push PACKAGE.nupkg -Source wharf -ApiKey \"$WHARF_TOKEN\"\n");
        if scheme == "https" {
            text.push_str(&format!("  swift: swift package-registry set {base}/swift/{name}\n"));
        } else {
            text.push_str(&format!(
                "  swift: swift package-registry set --allow-insecure-http {base}/swift/{name} (login and publish need https)\n"
            ));
        }
        if repo.allows_anonymous_read() {
            text.push_str(&format!("  go:   GOPROXY={base}/go/{name} GONOSUMDB=MODULE-PREFIX go get MODULE\n"));
        } else {
            // The go command sends a GOPROXY URL's credentials only over https.
            let host = if scheme == "https" { listen.to_string() } else { "TLS-HOST".to_owned() };
            text.push_str(&format!(
                "  go:   GOPROXY=https://token:$WHARF_TOKEN@{host}/go/{name} GONOSUMDB=MODULE-PREFIX go get MODULE\n"
            ));
        }
    }
    if token_generated {
        text.push_str(&format!("\nGenerated admin token (set WHARF_ADMIN_TOKEN to choose one): {admin_token}\n"));
    }
    text.push_str(&format!(
        "\nMint a publish token:\n  curl -s -X POST {base}/api/v1/auth/token -H \"Authorization: Bearer $WHARF_ADMIN_TOKEN\" \\\n    -H 'content-type: application/json' -d '{{\"repositories\":[\"*\"],\"permissions\":[\"read\",\"publish\"]}}'\n"
    ));
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;

    use wharf_storage::Storage;
    use wharf_storage::testing::IgnoresPreconditions;

    #[tokio::test]
    async fn a_store_ignoring_conditional_writes_is_refused_at_start_saying_why() {
        let careless = Storage::new(Arc::new(IgnoresPreconditions::default()));
        let config = wharf_api::DomainConfig::embedded_default("unused");
        let options = super::ServeOptions {
            key_refresh: std::time::Duration::from_secs(10),
            downloads_flush: std::time::Duration::from_secs(300),
            collect: Default::default(),
            usage: None,
            upstream: Default::default(),
            listen: ([127, 0, 0, 1], 0).into(),
            secrets: wharf_storage::secrets::SecretsDir::new("unused"),
            admin_token: "admin".into(),
            signing_key: Some(vec![7; 32]),
            limits: Default::default(),
            token_review: None,
            audit: crate::audit::AuditOptions { log: crate::audit::AuditLog::Off, ..Default::default() },
        };
        let refused = super::build_state(config, careless, &options).await.err().unwrap();
        let message = format!("{refused:#}");
        assert!(message.contains("conditional write") && message.contains("If-None-Match"), "{message}");
    }
}
