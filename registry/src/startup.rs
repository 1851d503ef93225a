//! Turns a Domain configuration into a running server: opens its storage,
//! loads or generates its keys, binds, and shuts down gracefully. Does I/O.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use wharf_api::DomainConfig;

use crate::auth::TokenSigner;
use crate::core::Registry;
use crate::secrets::SecretsDir;
use crate::server::{self, AppState, Limits, metrics::Metrics};
use crate::storage::Storage;

/// Opens the storage the Domain's `storage` names. A local folder and
/// memory belong to this process alone, which spares readers a storage
/// round trip per request (see [`Storage::exclusive`]).
pub fn open_storage(config: &DomainConfig, _secrets: &SecretsDir) -> anyhow::Result<Storage> {
    let storage = &config.domain.spec.storage;
    if let Some(fs) = &storage.filesystem {
        std::fs::create_dir_all(&fs.path).with_context(|| format!("failed to create the data folder {}", fs.path))?;
        let store = LocalFileSystem::new_with_prefix(&fs.path)
            .with_context(|| format!("failed to open filesystem storage at {}", fs.path))?;
        return Ok(Storage::exclusive(Arc::new(store)));
    }
    if storage.memory.is_some() {
        return Ok(Storage::exclusive(Arc::new(InMemory::new())));
    }
    bail!("storage backend {:?} is not supported by this build yet; use filesystem or memory", storage.backends())
}

pub struct ServeOptions {
    pub listen: SocketAddr,
    /// Where the configuration's Secret references are read from.
    pub secrets: SecretsDir,
    pub admin_token: String,
    /// Overrides the signing key kept in storage (all replicas must agree).
    pub signing_key: Option<Vec<u8>>,
    pub limits: Limits,
}

/// Builds the shared state the router serves from.
pub async fn build_state(
    config: DomainConfig,
    storage: Storage,
    options: &ServeOptions,
) -> anyhow::Result<Arc<AppState>> {
    let key = match &options.signing_key {
        Some(key) => key.clone(),
        None => storage.token_signing_key().await.context("failed to load the token signing key")?,
    };
    let domain = config.domain_name().to_owned();
    let credentials = crate::upstream::resolve_credentials(&config, &options.secrets)?;
    let upstream = Arc::new(crate::upstream::UpstreamClient::new(credentials));
    Ok(Arc::new(AppState {
        registry: Arc::new(Registry::new(storage)),
        signer: TokenSigner::new(key, domain),
        admin_token: options.admin_token.clone(),
        limits: options.limits,
        metrics: Arc::new(Metrics::new(upstream.requests())),
        upstream,
        views: Default::default(),
        config: Arc::new(config),
    }))
}

/// Serves until SIGINT or SIGTERM; requests in flight (uploads included)
/// are allowed to finish first.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<AppState>) -> anyhow::Result<()> {
    axum::serve(listener, server::app(state)).with_graceful_shutdown(shutdown_signal()).await.context("server failed")
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
pub fn banner(config: &DomainConfig, listen: SocketAddr, admin_token: &str, token_generated: bool) -> String {
    let base = format!("http://{listen}");
    let mut text = format!("Wharf registry for Domain {:?} listening on {base}\n", config.domain_name());
    for repo in &config.repositories {
        let name = repo.metadata.name.as_deref().unwrap_or_default();
        let access = if repo.allows_anonymous_read() { "anonymous read" } else { "private" };
        text.push_str(&format!("\nRepository {name} ({access}):\n"));
        text.push_str(&format!("  npm:  npm config set registry {base}/npm/{name}/\n"));
        text.push_str(&format!("        echo '//{listen}/npm/{name}/:_authToken=${{WHARF_TOKEN}}' >> .npmrc\n"));
        text.push_str(&format!("  pip:  pip install --index-url {base}/pypi/{name}/simple/ PACKAGE\n"));
        text.push_str(&format!(
            "  twine upload --repository-url {base}/pypi/{name}/ -u __token__ -p \"$WHARF_TOKEN\" dist/*\n"
        ));
        text.push_str(&format!(
            "  cargo: [registries.wharf] index = \"sparse+{base}/cargo/{name}/index/\", credential-provider = \"cargo:token\"\n"
        ));
        if repo.allows_anonymous_read() {
            text.push_str(&format!("  go:   GOPROXY={base}/go/{name} GONOSUMDB=MODULE-PREFIX go get MODULE\n"));
        } else {
            // The go command sends a GOPROXY URL's credentials only over https.
            text.push_str(&format!(
                "  go:   GOPROXY=https://token:$WHARF_TOKEN@TLS-HOST/go/{name} GONOSUMDB=MODULE-PREFIX go get MODULE\n"
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
