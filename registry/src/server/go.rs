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
use wharf_api::PackageFormat;

use super::access::{Access, Authorized, Client};
use super::metrics::tagged;
use super::{ApiError, ErrorStyle, SharedState, blob};
use wharf_core::{
    CoreError, Declared, NewAsset, NewVersion, PackageId, Placement, Publication, PublishOutcome, Rendered, View,
};
use wharf_formats::go::{self as format, FileKind, ProxyRequest};
use wharf_storage::BodyError;

/// The go command: errors as plain text, which it prints.
pub enum Go {}

impl Client for Go {
    const STYLE: ErrorStyle = ErrorStyle::Text;
}

const STYLE: ErrorStyle = Go::STYLE;
const TEXT: &str = "text/plain; charset=utf-8";

pub async fn dispatch(
    access: Authorized<Go>,
    Path((_, rest)): Path<(String, String)>,
    State(state): State<SharedState>,
    request: Request,
) -> Response {
    let (operation, result) = match access {
        Ok(access) => handle(&state, &access, &rest, request).await,
        Err(refused) => ("go", Err(refused)),
    };
    tagged(operation, result)
}

async fn handle(
    state: &SharedState,
    access: &Access<Go>,
    rest: &str,
    request: Request,
) -> (&'static str, Result<Response, ApiError>) {
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
            ("go_publish", publish(state, access, &path, &version, &headers, request).await)
        }
        (_, false) => (
            "go",
            Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not supported here; publish with PUT {{module}}/@v/{{version}}.zip"),
                STYLE,
            )),
        ),
        (ProxyRequest::SumDb { name, path }, true) => ("go_sumdb", sumdb(state, access, &name, &path).await),
        (ProxyRequest::List { path }, true) => ("go_list", list(state, access, &path, &headers).await),
        (ProxyRequest::Latest { path }, true) => ("go_latest", latest(state, access, &path, &headers).await),
        (ProxyRequest::File { path, version, kind }, true) => {
            let operation = match kind {
                FileKind::Info => "go_info",
                FileKind::Mod => "go_mod",
                FileKind::Zip => "go_zip",
            };
            (operation, file(state, access, &path, &version, kind, &method, &headers).await)
        }
    }
}

/// A checksum database endpoint, proxied through the chain's Go external
/// connection as public module proxies do, so the go command can verify
/// public modules in a cluster that reaches nothing but Wharf. Without a
/// connection, 404: the go command then asks the database directly.
async fn sumdb(state: &SharedState, access: &Access<Go>, name: &str, path: &str) -> Result<Response, ApiError> {
    let path_under_connection = format!("sumdb/{name}/{path}");
    let document = state.packages.connection_document(&access.repo, PackageFormat::Go, &path_under_connection, "*/*");
    let Some(body) = document.await.map_err(|e| ApiError::from_core(e, STYLE))? else {
        return Err(ApiError::not_found(format!("checksum database {name}: {path} not found upstream"), STYLE));
    };
    let content_type = if path.starts_with("tile/") { "application/octet-stream" } else { TEXT };
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

/// The module as the Repository's clients see it, or 404.
async fn module(state: &SharedState, access: &Access<Go>, path: &str) -> Result<View, ApiError> {
    state
        .view(&access.repo, &PackageId::new(PackageFormat::Go, path), path, STYLE)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("module {path} not found"), STYLE))
}

/// A metadata document that changes with the module: revalidated by ETag.
fn document(rendered: Rendered, content_type: &'static str, headers: &HeaderMap) -> Response {
    super::metadata_document(rendered, content_type, headers, None)
}

async fn list(state: &SharedState, access: &Access<Go>, path: &str, headers: &HeaderMap) -> Result<Response, ApiError> {
    let view = module(state, access, path).await?;
    Ok(document(view.rendered("go:list", format::render_list), TEXT, headers))
}

async fn latest(
    state: &SharedState,
    access: &Access<Go>,
    path: &str,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let mut view = module(state, access, path).await?;
    let version = format::latest(view.index())
        .map(|(version, _)| version.to_owned())
        .ok_or_else(|| ApiError::not_found(format!("module {path} has no listed versions"), STYLE))?;
    date_from_upstream(state, &mut view, &version).await?;
    let rendered = view.rendered("go:latest", |index| {
        format::latest(index).map(|(version, entry)| format::render_info(version, entry)).unwrap_or_default()
    });
    Ok(document(rendered, "application/json", headers))
}

/// Dates a version not stored here by its upstream `.info`, so `.info`,
/// `@latest` and the copy Wharf keeps carry the upstream's time.
async fn date_from_upstream(state: &SharedState, view: &mut View, version: &str) -> Result<(), ApiError> {
    let Some(entry) = view.index().versions.get(version) else { return Ok(()) };
    let Some(url) = entry
        .assets
        .get(&format::zip_asset(version))
        .and_then(|a| a.metadata.get(wharf_core::UPSTREAM_URL))
        .and_then(|u| u.as_str())
    else {
        return Ok(());
    };
    if entry.created != chrono::DateTime::UNIX_EPOCH {
        return Ok(());
    }
    let info_url = format!("{}.info", url.trim_end_matches(".zip"));
    let body = state.packages.upstream_document(view, PackageFormat::Go, &info_url, "application/json").await;
    if let Some(time) = body.map_err(|e| ApiError::from_core(e, STYLE))?.and_then(|b| format::info_time(&b)) {
        view.date_version(version, time);
    }
    Ok(())
}

async fn file(
    state: &SharedState,
    access: &Access<Go>,
    path: &str,
    version: &str,
    kind: FileKind,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let mut view = module(state, access, path).await?;
    date_from_upstream(state, &mut view, version).await?;
    // Queries (`master`, `v1.2`) are for proxies backed by version
    // control; here only published versions exist, and 404 lets the go
    // command try its next proxy.
    let entry = view
        .index()
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
    let digests = state.stored_asset(&access.repo, &view, &id, version, &asset, STYLE).await?;
    blob::serve(&state.packages.registry, &digests, content_type, method, headers, STYLE).await
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

/// Every check of a staged module zip: its layout and sizes, its `go.mod`
/// naming this module, and the major-version rules.
fn check_module(
    reader: wharf_storage::SyncBlobReader,
    path: &str,
    version: &str,
    parsed_version: &format::ModuleVersion,
) -> Result<CheckedModule, CoreError> {
    let invalid = |e: &dyn std::fmt::Display| CoreError::Invalid(e.to_string());
    let mut inspected =
        format::inspect_zip(reader, path, version, &format::ZipLimits::default()).map_err(|e| invalid(&e))?;
    let has_go_mod = inspected.go_mod.is_some();
    let go_mod_bytes = inspected.go_mod.take().unwrap_or_else(|| format::synthesized_go_mod(path));
    let go_mod = format::parse_go_mod(&go_mod_bytes).map_err(|e| invalid(&e))?;
    if go_mod.module != path {
        return Err(CoreError::Invalid(format!(
            "go.mod declares module {}, but this upload is for {path}",
            go_mod.module
        )));
    }
    format::check_major_version(path, version, parsed_version, has_go_mod).map_err(|e| invalid(&e))?;
    Ok(CheckedModule(inspected, go_mod_bytes, go_mod, has_go_mod))
}

async fn publish(
    state: &SharedState,
    access: &Access<Go>,
    path: &str,
    version: &str,
    headers: &HeaderMap,
    request: Request,
) -> Result<Response, ApiError> {
    let parsed_version = format::parse_version(version).map_err(|e| ApiError::bad_request(e.to_string(), STYLE))?;
    let mut publication = Publication::new(&access.repo, PackageId::new(PackageFormat::Go, path), path, version);
    publication.conflict = Some(format!(
        "{path}@{version} was already published with different contents; versions are immutable (publish a new version, and retract this one in its go.mod)"
    ));
    // Refused before a byte of the zip is read.
    wharf_core::check_storable(&publication.id, version, []).map_err(|e| ApiError::from_core(e, STYLE))?;
    let limit = state.limits.max_upload_bytes.min(format::MAX_ZIP_BYTES);
    if super::declared_length(headers).is_some_and(|n| n > limit) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the module zip exceeds the limit of {limit} bytes"),
            STYLE,
        ));
    }
    let body = request.into_body().into_data_stream().map_err(|e| Box::new(e) as BodyError);
    let staged = state.packages.registry.stage_asset(body, limit).await.map_err(|e| ApiError::from_core(e, STYLE))?;
    let (module, version_owned) = (path.to_owned(), version.to_owned());
    let inspect = move |reader| check_module(reader, &module, &version_owned, &parsed_version);
    let accepted = state.packages.accept(&publication, staged, &Declared::default(), inspect).await;
    let (CheckedModule(inspected, go_mod_bytes, go_mod, has_go_mod), digests) =
        accepted.map_err(|e| ApiError::from_core(e, STYLE))?;
    let go_mod_hash = format::go_mod_hash(&go_mod_bytes);
    let registry = &state.packages.registry;
    let mod_digests =
        registry.store_small_asset(go_mod_bytes.into()).await.map_err(|e| ApiError::from_core(e, STYLE))?;
    let zip_metadata =
        json!({"h1": inspected.hash, "fileCount": inspected.file_count, "unpackedSize": inspected.unpacked_size});
    let new = NewVersion {
        version: version.to_owned(),
        metadata: format::version_metadata(path, &go_mod, has_go_mod),
        assets: vec![
            NewAsset { name: format::zip_asset(version), digests, metadata: zip_metadata },
            NewAsset { name: format::mod_asset(version), digests: mod_digests, metadata: json!({"h1": go_mod_hash}) },
        ],
        tags: Vec::new(),
    };
    let placement = Placement::Version { new, withdrawals: Some(&format::retracted_versions) };
    let written = state.packages.write(&publication, placement).await;
    let (status, message) = match written.map_err(|e| ApiError::from_core(e, STYLE))? {
        PublishOutcome::Created => (StatusCode::CREATED, "published"),
        PublishOutcome::AlreadyPublished => (StatusCode::OK, "was already published with these contents"),
    };
    Ok((status, [(header::CONTENT_TYPE, TEXT)], format!("{path}@{version} {message}\n")).into_response())
}
