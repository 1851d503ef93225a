//! The HTTP layer: routing, authentication, limits, and errors turned into
//! the status codes and bodies each client understands. Handlers extract,
//! call the core, encode.

mod access;
mod admin;
mod blob;
mod cargo;
pub mod connections;
mod credentials;
mod error;
mod generic;
mod go;
mod guard;
mod inventory;
mod maven;
pub mod metrics;
mod npm;
mod nuget;
pub mod openapi;
mod pypi;
mod staging;
mod swift;
pub mod tls;
pub mod ui;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, post, put};
use wharf_api::Repository;
use wharf_diagnostics::error_chain;

use crate::auth::{Permission, Principal, TokenSigner};
use wharf_core::{PackageId, Packages, View};
use wharf_storage::BlobDigests;

pub use error::{ApiError, ErrorStyle};

/// Request limits, configurable on the command line.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest artifact accepted in one upload.
    pub max_upload_bytes: u64,
    /// Largest metadata document (an npm publish document without its
    /// tarball, the text fields of a PyPI upload).
    pub max_metadata_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_upload_bytes: 1024 * 1024 * 1024, max_metadata_bytes: 16 * 1024 * 1024 }
    }
}

/// Everything a handler needs, shared by all requests.
pub struct AppState {
    /// The Domain's packages under this configuration revision: the core
    /// (`packages.registry`), the configuration (`packages.config`), the
    /// external connections' client (`packages.upstream`), and the read and
    /// publish pipelines over them.
    pub packages: Packages,
    pub signer: TokenSigner,
    /// The tokens issued and revoked, shared by every replica through storage.
    pub tokens: Arc<crate::tokens::TokenLedger>,
    /// Verifies ID tokens of the Domain's trusted OIDC issuers, with their keys kept.
    pub oidc: Arc<crate::oidc::OidcVerifier>,
    pub admin_token: String,
    pub limits: Limits,
    pub metrics: Arc<metrics::Metrics>,
    /// Checks Kubernetes ServiceAccount tokens; in cluster mode only.
    pub token_review: Option<Arc<crate::token_review::TokenReviewer>>,
    /// Frees storage nothing references any more.
    pub collector: Arc<crate::collector::Collector>,
    /// Who did what (see [`crate::audit`]).
    pub audit: Arc<crate::audit::AuditTrail>,
    /// Package names the web interface's search lists, kept briefly.
    pub search_names: Arc<ui::SearchNames>,
}

pub type SharedState = Arc<AppState>;

impl AppState {
    /// The Repository a request names, for a request that needs `permission` on it. A name
    /// the Domain does not have is refused as a Repository the caller may not use is (401
    /// without credentials, 403 with), so that no answer tells someone who may not read a
    /// Repository whether it exists; only an admin learns that it does not (404).
    pub async fn repository(
        &self,
        name: &str,
        headers: &HeaderMap,
        permission: Permission,
        style: ErrorStyle,
    ) -> Result<&Repository, ApiError> {
        if let Some(repository) = self.packages.config.repository(name) {
            return Ok(repository);
        }
        let principal = credentials::authenticate(self, headers, name, style).await?;
        Err(match principal {
            Principal::Admin => ApiError::new(StatusCode::NOT_FOUND, format!("repository {name} not found"), style),
            principal => refusal(&principal, name, permission, style),
        })
    }

    /// The package as the core has it now, its errors mapped for the client.
    pub async fn package(
        &self,
        repo: &str,
        id: &PackageId,
        style: ErrorStyle,
    ) -> Result<Option<Arc<wharf_core::PackageSnapshot>>, ApiError> {
        self.packages.registry.package(repo, id).await.map_err(|e| ApiError::from_core(e, style))
    }

    /// The package as `repo`'s clients see it, through its chain (see
    /// [`Packages::view`]); `None` when nobody has it.
    pub async fn view(
        &self,
        repo: &str,
        id: &PackageId,
        spelling: &str,
        style: ErrorStyle,
    ) -> Result<Option<View>, ApiError> {
        self.packages.view(repo, id, spelling).await.map_err(|e| ApiError::from_core(e, style))
    }

    /// A file of a version in `view`, fetched into the Domain first when it
    /// comes from an external connection (see [`Packages::stored_asset`]).
    pub async fn stored_asset(
        &self,
        repo: &str,
        view: &View,
        id: &PackageId,
        version: &str,
        file: &str,
        style: ErrorStyle,
    ) -> Result<BlobDigests, ApiError> {
        self.packages.stored_asset(repo, view, id, version, file).await.map_err(|e| ApiError::from_core(e, style))
    }

    /// Decides whether the request may do `permission` on `repo` (see [`Principal::may`]):
    /// 401 when it needs a credential it lacks, 403 when its credential does not reach.
    pub async fn authorize(
        &self,
        headers: &HeaderMap,
        repo: &Repository,
        permission: Permission,
        style: ErrorStyle,
    ) -> Result<Principal, ApiError> {
        let name = repo.name();
        let principal = credentials::authenticate(self, headers, name, style).await?;
        if principal.may(repo, permission) {
            return Ok(principal);
        }
        Err(refusal(&principal, name, permission, style))
    }
}

impl AppState {
    /// The Repository `name` and who asks, authorised for `permission` from `address`: it
    /// exists (see [`Self::repository`]), the caller may (see [`Self::authorize`]), and its
    /// network rules let the address (see [`Self::network_refusal`]). What the `Access`
    /// extractor decides for the path's Repository, and handlers for one a body names.
    pub async fn authorize_named(
        &self,
        name: &str,
        headers: &HeaderMap,
        permission: Permission,
        address: Option<std::net::IpAddr>,
        style: ErrorStyle,
    ) -> Result<(&Repository, Principal), ApiError> {
        let repository = self.repository(name, headers, permission, style).await?;
        let principal = self.authorize(headers, repository, permission, style).await?;
        if let Some(refusal) = self.network_refusal(repository, permission, address) {
            return Err(ApiError::new(StatusCode::FORBIDDEN, refusal, style));
        }
        Ok((repository, principal))
    }

    /// Why a request from `address` may not do `permission` on `repo` under its network
    /// rules (`spec.network`), naming the rule; `None` when it may. An unknown address (a
    /// request that did not come over a socket) is refused where rules apply.
    pub fn network_refusal(
        &self,
        repo: &Repository,
        permission: Permission,
        address: Option<std::net::IpAddr>,
    ) -> Option<String> {
        let network = repo.spec.network.as_ref()?;
        let (sources, list, verb) = match permission {
            Permission::Read => (network.read.as_slice(), "read", "read"),
            Permission::Publish | Permission::Admin => {
                (network.publishers(), if network.publish.is_empty() { "read" } else { "publish" }, "published to")
            }
        };
        if sources.is_empty() {
            return None;
        }
        let cluster: Vec<ipnet::IpNet> = self
            .packages
            .config
            .domain
            .spec
            .network
            .iter()
            .flat_map(|network| &network.cluster_cidrs)
            .filter_map(|cidr| wharf_api::repository::parse_cidr(cidr))
            .collect();
        if address.is_some_and(|address| sources.iter().any(|source| source.contains(address, &cluster))) {
            return None;
        }
        let allowed: Vec<String> = sources.iter().map(ToString::to_string).collect();
        let from = address.map_or_else(|| "an unknown address".to_owned(), |address| address.to_string());
        Some(format!(
            "repository {} may be {verb} only from {} (its spec.network.{list}); this request comes from {from}",
            repo.name(),
            allowed.join(", "),
        ))
    }
}

/// What someone gets who may not do `permission` on the Repository `name`, or names one that
/// does not exist: the same answer, so it reveals nothing about the Repository.
fn refusal(principal: &Principal, name: &str, permission: Permission, style: ErrorStyle) -> ApiError {
    if *principal == Principal::Anonymous {
        return ApiError::unauthorized(format!("authentication required for repository {name}"), name, style);
    }
    ApiError::new(
        StatusCode::FORBIDDEN,
        format!("{} may not {} on repository {name}", principal.name(), permission.as_str()),
        style,
    )
}

/// The registry's whole HTTP surface.
pub fn app(state: SharedState) -> Router {
    let uploads = Router::new()
        .route("/npm/{repo}", any(npm::dispatch_root))
        .route("/npm/{repo}/{*rest}", any(npm::dispatch))
        .route("/pypi/{repo}/", post(pypi::upload))
        .route("/pypi/{repo}/legacy/", post(pypi::upload))
        .route(
            "/generic/{repo}/{namespace}/{package}/{version}/{asset}",
            get(generic::get_asset).put(generic::put_asset),
        )
        .route("/cargo/{repo}/api/v1/crates/new", put(cargo::publish))
        .route("/go/{repo}/{*rest}", any(go::dispatch))
        .route("/maven/{repo}/{*path}", any(maven::dispatch))
        .route("/nuget/{repo}/{*rest}", any(nuget::dispatch))
        .route("/swift/{repo}/{*rest}", any(swift::dispatch))
        // Uploads enforce their own streaming limits (413).
        .layer(DefaultBodyLimit::disable());
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics::render))
        .route("/api/v1/auth/token", post(admin::mint_token))
        .route("/api/v1/auth/oidc", post(admin::exchange_oidc))
        .route("/api/v1/auth/kubernetes", post(admin::exchange_kubernetes))
        .route("/api/v1/auth/sign-in", get(admin::sign_in_options))
        .route("/api/v1/auth/tokens", get(admin::list_tokens).delete(admin::revoke_subject))
        .route("/api/v1/auth/tokens/{id}", delete(admin::revoke_token))
        .route("/api/v1/repositories", get(admin::list_repositories))
        .route("/api/v1/repositories/{repo}/packages", get(inventory::list_packages))
        .route("/api/v1/repositories/{repo}/packages/{format}/{package}/versions", get(inventory::list_versions))
        .route("/api/v1/repositories/{repo}/packages/{format}/{package}/versions/status", post(inventory::set_statuses))
        .route(
            "/api/v1/repositories/{repo}/packages/{format}/{package}/versions/{version}",
            get(inventory::get_version).delete(admin::delete_version),
        )
        .route("/api/v1/repositories/{repo}/copy", post(inventory::copy))
        .route("/api/v1/audit", get(inventory::audit))
        .route("/api/v1/openapi.json", get(openapi::document))
        .route("/api/v1/repositories/{repo}/packages/{format}/{package}/origin", get(admin::origin))
        .route("/api/v1/repositories/{repo}/packages/{format}/{package}/explain", get(inventory::explain))
        .route(
            "/api/v1/repositories/{repo}/packages/{format}/{package}/versions/{version}/status",
            put(admin::set_status),
        )
        .route("/pypi/{repo}/simple/", get(pypi::root))
        .route("/pypi/{repo}/simple", get(pypi::redirect_root))
        .route("/pypi/{repo}/simple/{project}/", get(pypi::project))
        .route("/pypi/{repo}/simple/{project}", get(pypi::redirect_project))
        .route("/pypi/{repo}/files/{project}/{version}/{filename}", get(pypi::file))
        .route("/generic/{repo}/{namespace}/{package}", get(generic::get_package))
        .route("/generic/{repo}/{namespace}/{package}/{version}", get(generic::get_version))
        .route("/cargo/{repo}/index/config.json", get(cargo::config))
        .route("/cargo/{repo}/index/{*path}", get(cargo::index_file))
        .route("/cargo/{repo}/api/v1/crates", get(cargo::search))
        .route(
            "/cargo/{repo}/api/v1/crates/{krate}/owners",
            get(cargo::owners).put(cargo::owners).delete(cargo::owners),
        )
        .route("/cargo/{repo}/api/v1/crates/{krate}/{version}/download", get(cargo::download))
        .route("/cargo/{repo}/api/v1/crates/{krate}/{version}/yank", delete(cargo::yank))
        .route("/cargo/{repo}/api/v1/crates/{krate}/{version}/unyank", put(cargo::unyank))
        .merge(uploads)
        .merge(ui::routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), metrics::track))
        .layer(axum::middleware::from_fn(crate::audit::scope))
        .layer(axum::middleware::from_fn(guard::reject_unsafe_paths))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<SharedState>) -> Response {
    match state.packages.registry.storage().check().await {
        Ok(()) => "ready".into_response(),
        Err(error @ wharf_storage::StorageError::Encryption { .. }) => {
            tracing::warn!(error = %error_chain(&error), "not ready");
            (StatusCode::SERVICE_UNAVAILABLE, "the encryption keys cannot be used; the registry's log says why")
                .into_response()
        }
        Err(error) => {
            tracing::warn!(error = %error_chain(&error), "storage is not reachable");
            (StatusCode::SERVICE_UNAVAILABLE, "storage is not reachable").into_response()
        }
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not found", ErrorStyle::Json)
}

/// A metadata document rendered from a package snapshot (packument,
/// simple page, index file): changes with the package, so clients
/// revalidate it by ETag and get a 304 when it did not change. `Vary`
/// covers what selects the representation.
pub fn metadata_document(
    rendered: wharf_core::Rendered,
    content_type: &'static str,
    request_headers: &HeaderMap,
    vary: Option<&'static str>,
) -> Response {
    use axum::http::{HeaderValue, header};
    let mut headers = HeaderMap::new();
    if let Some(vary) = vary {
        headers.insert(header::VARY, HeaderValue::from_static(vary));
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-cache"));
    if let Ok(etag) = HeaderValue::from_str(&rendered.etag) {
        headers.insert(header::ETAG, etag);
    }
    if request_headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(rendered.etag.as_str()) {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    (headers, rendered.body).into_response()
}

/// The body length a request declares (`Content-Length`), so an upload can be refused
/// with 413 before a byte of it is read or staged.
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(axum::http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok())
}

/// The URL clients used to reach us (scheme and host), for links that must
/// be absolute (npm tarball URLs).
pub fn origin(headers: &HeaderMap) -> String {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let scheme = header("x-forwarded-proto").filter(|p| *p == "https" || *p == "http").unwrap_or("http");
    let host = header("x-forwarded-host")
        .or_else(|| header("host"))
        .filter(|h| h.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')))
        .unwrap_or("localhost");
    format!("{scheme}://{host}")
}

#[cfg(test)]
mod tests;
