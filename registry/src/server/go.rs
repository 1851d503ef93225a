//! Go module proxy endpoints under `/go/{repo}/` (the GOPROXY protocol:
//! `{module}/@v/list`, `@v/{version}.info`, `.mod`, `.zip`, `@latest`),
//! and publishing by `PUT {module}/@v/{version}.zip`, whose `.mod` and
//! `.info` are derived from the zip. Errors are plain text, which the go
//! command prints as the server's response.

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use serde_json::json;
use wharf_api::{PackageFormat, Repository};

use super::metrics::tagged;
use super::{ApiError, ErrorStyle, SharedState, blob, upstream};
use crate::auth::Permission;
use wharf_core::policy;
use wharf_core::{CoreError, NewAsset, NewVersion, PackageId, PackageSnapshot, PublishOutcome, Rendered};
use wharf_formats::go::{self as format, FileKind, ProxyRequest};
use wharf_storage::{BodyError, StagedBlob};
use wharf_upstream::Absence;

const STYLE: ErrorStyle = ErrorStyle::Text;
const TEXT: &str = "text/plain; charset=utf-8";

pub async fn dispatch(
    Path((repo, rest)): Path<(String, String)>,
    State(state): State<SharedState>,
    request: Request,
) -> Response {
    let (operation, result) = handle(&state, &repo, &rest, request).await;
    tagged(operation, result)
}

async fn handle(
    state: &SharedState,
    repo_name: &str,
    rest: &str,
    request: Request,
) -> (&'static str, Result<Response, ApiError>) {
    let permission =
        if matches!(*request.method(), Method::GET | Method::HEAD) { Permission::Read } else { Permission::Publish };
    let repo = match state.repository(repo_name, request.headers(), permission, STYLE).await {
        Ok(repo) => repo,
        Err(e) => return ("go", Err(e)),
    };
    let parsed = match format::parse_request(rest) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return ("go", Err(ApiError::not_found(format!("{rest}: not a module proxy endpoint"), STYLE))),
        Err(e) => return ("go", Err(ApiError::bad_request(e.to_string(), STYLE))),
    };
    let method = request.method().clone();
    let headers = request.headers().clone();
    let read = method == Method::GET || method == Method::HEAD;
    match (parsed, read) {
        (ProxyRequest::File { path, version, kind: FileKind::Zip }, false) if method == Method::PUT => {
            ("go_publish", publish(state, repo, &path, &version, &headers, request).await)
        }
        (_, false) => (
            "go",
            Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not supported here; publish with PUT {{module}}/@v/{{version}}.zip"),
                STYLE,
            )),
        ),
        (ProxyRequest::SumDb { name, path }, true) => ("go_sumdb", sumdb(state, repo, &name, &path, &headers).await),
        (ProxyRequest::List { path }, true) => ("go_list", list(state, repo, &path, &headers).await),
        (ProxyRequest::Latest { path }, true) => ("go_latest", latest(state, repo, &path, &headers).await),
        (ProxyRequest::File { path, version, kind }, true) => {
            let operation = match kind {
                FileKind::Info => "go_info",
                FileKind::Mod => "go_mod",
                FileKind::Zip => "go_zip",
            };
            (operation, file(state, repo, &path, &version, kind, &method, &headers).await)
        }
    }
}

fn repo_name(repo: &Repository) -> &str {
    repo.metadata.name.as_deref().unwrap_or_default()
}

/// The go command asks a proxy whether it proxies a checksum database
/// before using it; 404 sends it to the database directly.
/// A checksum database endpoint, proxied through the chain's Go external
/// connection as public module proxies do, so the go command can verify
/// public modules in a cluster that reaches nothing but Wharf. Without a
/// connection, 404: the go command then asks the database directly.
async fn sumdb(
    state: &SharedState,
    repo: &Repository,
    name: &str,
    path: &str,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    state.authorize(headers, repo, Permission::Read, STYLE).await?;
    let chain = policy::resolution_order(&state.config, repo_name(repo));
    let Some(hop) = chain.external(PackageFormat::Go) else {
        return Err(ApiError::not_found("no Go external connection to proxy a checksum database through", STYLE));
    };
    let url = format!("{}/sumdb/{name}/{path}", hop.connection.url.trim_end_matches('/'));
    let ttl = policy::metadata_ttl(&state.config, repo_name(repo)).value;
    let document = state
        .upstream
        .metadata(&hop.connection.name, &url, "*/*", ttl, Absence::GoProxy)
        .await
        .map_err(|e| ApiError::from_upstream(&e, STYLE))?;
    let Some(body) = document.body else {
        return Err(ApiError::not_found(format!("checksum database {name}: {path} not found upstream"), STYLE));
    };
    let content_type = if path.starts_with("tile/") { "application/octet-stream" } else { TEXT };
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

async fn module(
    state: &SharedState,
    repo: &Repository,
    path: &str,
) -> Result<std::sync::Arc<PackageSnapshot>, ApiError> {
    state
        .package(repo_name(repo), &PackageId::new(PackageFormat::Go, path), STYLE)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("module {path} not found"), STYLE))
}

/// A metadata document that changes with the module: revalidated by ETag.
fn document(rendered: Rendered, content_type: &'static str, headers: &HeaderMap) -> Response {
    super::metadata_document(rendered, content_type, headers, None)
}

async fn list(state: &SharedState, repo: &Repository, path: &str, headers: &HeaderMap) -> Result<Response, ApiError> {
    state.authorize(headers, repo, Permission::Read, STYLE).await?;
    if upstream::has_chain(state, repo_name(repo)) {
        let view = chained(state, repo, path).await?;
        return Ok(document(view.rendered("go:list", format::render_list), TEXT, headers));
    }
    let snapshot = module(state, repo, path).await?;
    Ok(document(snapshot.rendered("go:list", format::render_list), TEXT, headers))
}

async fn latest(state: &SharedState, repo: &Repository, path: &str, headers: &HeaderMap) -> Result<Response, ApiError> {
    state.authorize(headers, repo, Permission::Read, STYLE).await?;
    if upstream::has_chain(state, repo_name(repo)) {
        let mut view = chained(state, repo, path).await?;
        let version = format::latest(&view.index)
            .map(|(version, _)| version.to_owned())
            .ok_or_else(|| ApiError::not_found(format!("module {path} has no listed versions"), STYLE))?;
        date_from_upstream(state, &mut view, &version).await?;
        let entry = &view.index.versions[&version];
        return Ok(document(Rendered::of(format::render_info(&version, entry)), "application/json", headers));
    }
    let snapshot = module(state, repo, path).await?;
    if format::latest(&snapshot.index).is_none() {
        return Err(ApiError::not_found(format!("module {path} has no listed versions"), STYLE));
    }
    let rendered = snapshot.rendered("go:latest", |index| {
        format::latest(index).map(|(version, entry)| format::render_info(version, entry)).unwrap_or_default()
    });
    Ok(document(rendered, "application/json", headers))
}

/// The module as `repo` sees it through its chain.
async fn chained(state: &SharedState, repo: &Repository, path: &str) -> Result<upstream::View, ApiError> {
    upstream::view(state, repo_name(repo), &PackageId::new(PackageFormat::Go, path), path, STYLE)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("module {path} not found"), STYLE))
}

/// Dates a version not stored here by its upstream `.info`, so `.info`,
/// `@latest` and the copy Wharf keeps carry the upstream's time.
async fn date_from_upstream(state: &SharedState, view: &mut upstream::View, version: &str) -> Result<(), ApiError> {
    let Some(entry) = view.index.versions.get(version) else { return Ok(()) };
    let Some(url) = entry
        .assets
        .get(&format::zip_asset(version))
        .and_then(|a| a.metadata.get(format::UPSTREAM_URL))
        .and_then(|u| u.as_str())
    else {
        return Ok(());
    };
    if entry.created != chrono::DateTime::UNIX_EPOCH {
        return Ok(());
    }
    let info_url = format!("{}.info", url.trim_end_matches(".zip"));
    let body =
        upstream::upstream_document(state, view, PackageFormat::Go, &info_url, "application/json", STYLE).await?;
    if let Some(time) = body.and_then(|b| format::info_time(&b))
        && let Some(entry) = std::sync::Arc::make_mut(&mut view.index).versions.get_mut(version)
    {
        entry.created = time;
    }
    Ok(())
}

async fn file(
    state: &SharedState,
    repo: &Repository,
    path: &str,
    version: &str,
    kind: FileKind,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    state.authorize(headers, repo, Permission::Read, STYLE).await?;
    if upstream::has_chain(state, repo_name(repo)) {
        let mut view = chained(state, repo, path).await?;
        date_from_upstream(state, &mut view, version).await?;
        let entry = view
            .index
            .versions
            .get(version)
            .filter(|e| e.status.is_installable())
            .ok_or_else(|| ApiError::not_found(format!("{path}@{version}: unknown version"), STYLE))?;
        let (asset, content_type) = match kind {
            FileKind::Info => return Ok(info_response(version, entry, method)),
            FileKind::Mod => (format::mod_asset(version), TEXT),
            FileKind::Zip => (format::zip_asset(version), "application/zip"),
        };
        let id = PackageId::new(PackageFormat::Go, path);
        let digests = upstream::stored_asset(state, repo_name(repo), &view, &id, version, &asset, STYLE).await?;
        return blob::serve(&state.registry, &digests, content_type, method, headers, STYLE).await;
    }
    let snapshot = module(state, repo, path).await?;
    // Queries (`master`, `v1.2`) are for proxies backed by version
    // control; here only published versions exist, and 404 lets the go
    // command try its next proxy.
    let entry = snapshot
        .index
        .versions
        .get(version)
        .ok_or_else(|| ApiError::not_found(format!("{path}@{version}: unknown version"), STYLE))?;
    if !entry.status.is_installable() {
        return Err(ApiError::not_found(format!("{path}@{version} is {}", entry.status.as_str()), STYLE));
    }
    let (asset, content_type) = match kind {
        FileKind::Info => return Ok(info_response(version, entry, method)),
        FileKind::Mod => (format::mod_asset(version), TEXT),
        FileKind::Zip => (format::zip_asset(version), "application/zip"),
    };
    let asset = entry
        .assets
        .get(&asset)
        .ok_or_else(|| ApiError::not_found(format!("{path}@{version}: {asset} not found"), STYLE))?;
    blob::serve(&state.registry, &asset.digests, content_type, method, headers, STYLE).await
}

fn info_response(version: &str, entry: &wharf_core::VersionEntry, method: &Method) -> Response {
    let body = format::render_info(version, entry);
    let mut response = (
        [(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "private, max-age=31536000, immutable")],
        body,
    )
        .into_response();
    if *method == Method::HEAD {
        *response.body_mut() = axum::body::Body::empty();
    }
    response
}

/// A module zip checked in staging: its contents, its `go.mod` (its own,
/// or the one synthesized for a module without), and whether it had one.
struct CheckedModule(format::ModuleZip, Vec<u8>, format::GoMod, bool);

/// Every check of a staged module zip before it is committed: the zip's
/// layout and sizes, its `go.mod` naming this module, the major-version
/// rules, and the origin rules.
async fn check_module(
    state: &SharedState,
    repo: &Repository,
    path: &str,
    version: &str,
    parsed_version: &format::ModuleVersion,
    staged: &StagedBlob,
) -> Result<CheckedModule, ApiError> {
    let reader = staged.reader();
    let mut inspected = {
        let (path, version) = (path.to_owned(), version.to_owned());
        tokio::task::spawn_blocking(move || format::inspect_zip(reader, &path, &version, &format::ZipLimits::default()))
            .await
            .map_err(|e| ApiError::internal(&e, STYLE))?
            .map_err(|e| ApiError::bad_request(e.to_string(), STYLE))?
    };
    let has_go_mod = inspected.go_mod.is_some();
    let go_mod_bytes = inspected.go_mod.take().unwrap_or_else(|| format::synthesized_go_mod(path));
    let go_mod = format::parse_go_mod(&go_mod_bytes).map_err(|e| ApiError::bad_request(e.to_string(), STYLE))?;
    if go_mod.module != path {
        return Err(ApiError::bad_request(
            format!("go.mod declares module {}, but this upload is for {path}", go_mod.module),
            STYLE,
        ));
    }
    format::check_major_version(path, version, parsed_version, has_go_mod)
        .map_err(|e| ApiError::bad_request(e.to_string(), STYLE))?;
    let id = PackageId::new(PackageFormat::Go, path);
    upstream::check_publish(state, repo_name(repo), &id, path, version, STYLE).await?;
    Ok(CheckedModule(inspected, go_mod_bytes, go_mod, has_go_mod))
}

async fn publish(
    state: &SharedState,
    repo: &Repository,
    path: &str,
    version: &str,
    headers: &HeaderMap,
    request: Request,
) -> Result<Response, ApiError> {
    state.authorize(headers, repo, Permission::Publish, STYLE).await?;
    let parsed_version = format::parse_version(version).map_err(|e| ApiError::bad_request(e.to_string(), STYLE))?;
    wharf_core::check_storable(&PackageId::new(PackageFormat::Go, path), version, [])
        .map_err(|e| ApiError::from_core(e, STYLE))?;
    let limit = state.limits.max_upload_bytes.min(format::MAX_ZIP_BYTES);
    let declared: Option<u64> = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the module zip exceeds the limit of {limit} bytes"),
            STYLE,
        ));
    }
    let body = request.into_body().into_data_stream().map_err(|e| Box::new(e) as BodyError);
    let mut staged = state.registry.stage_asset(body, limit).await.map_err(|e| ApiError::from_core(e, STYLE))?;
    let checked = check_module(state, repo, path, version, &parsed_version, &staged).await;
    let CheckedModule(inspected, go_mod_bytes, go_mod, has_go_mod) = staged.discard_on_err(checked).await?;
    let digests = staged.commit().await.map_err(|e| ApiError::from_storage(&e, STYLE))?;
    let go_mod_hash = format::go_mod_hash(&go_mod_bytes);
    let mod_digests =
        state.registry.store_small_asset(go_mod_bytes.into()).await.map_err(|e| ApiError::from_core(e, STYLE))?;
    let new = NewVersion {
        version: version.to_owned(),
        metadata: format::version_metadata(path, &go_mod, has_go_mod),
        assets: vec![
            NewAsset {
                name: format::zip_asset(version),
                digests,
                metadata: json!({
                    "h1": inspected.hash,
                    "fileCount": inspected.file_count,
                    "unpackedSize": inspected.unpacked_size,
                }),
            },
            NewAsset { name: format::mod_asset(version), digests: mod_digests, metadata: json!({"h1": go_mod_hash}) },
        ],
        tags: Vec::new(),
    };
    let id = PackageId::new(PackageFormat::Go, path);
    let outcome = state
        .registry
        .publish_version_withdrawing(
            repo_name(repo),
            &id,
            path,
            new,
            &format::retracted_versions,
        )
        .await
        .map_err(|e| match e {
            CoreError::Conflict(_) => ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "{path}@{version} was already published with different contents; versions are immutable (publish a new version, and retract this one in its go.mod)"
                ),
                STYLE,
            ),
            other => ApiError::from_core(other, STYLE),
        })?;
    upstream::record_publish(state, repo_name(repo), &id, version, outcome, STYLE).await?;
    let (status, message) = match outcome {
        PublishOutcome::Created => (StatusCode::CREATED, "published"),
        PublishOutcome::AlreadyPublished => (StatusCode::OK, "was already published with these contents"),
    };
    Ok((status, [(header::CONTENT_TYPE, TEXT)], format!("{path}@{version} {message}\n")).into_response())
}
