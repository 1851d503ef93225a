//! npm endpoints under `/npm/{repo}/`: packuments, tarballs, publish,
//! dist-tags, deprecation, ping and whoami.
//!
//! Paths are dispatched by hand: a scoped name arrives either as one
//! segment (`@scope%2fname`) or as two (`@scope/name`), and what follows
//! it decides the operation.

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use wharf_api::PackageFormat;

use super::access::{self, Access, Authorized, Client};
use super::metrics::tagged;
use super::staging::{self, Embedded};
use super::{ApiError, ErrorStyle, SharedState, blob};
use crate::auth::Permission;
use wharf_core::{
    CoreError, Declared, Digest, NewAsset, NewVersion, PackageId, Placement, Publication, PublishOutcome, View,
};
use wharf_formats::npm::publish_body::{Event, PublishBodySplitter};
use wharf_formats::npm::{self as format, NewNpmVersion, PublishRequest, TarballInfo};
use wharf_storage::{StagedBlob, SyncBlobReader};

/// npm's clients: errors as `{"error": …}`.
pub enum Npm {}

impl Client for Npm {
    const STYLE: ErrorStyle = ErrorStyle::Json;

    /// `npm audit` POSTs its question; whoever may install may ask it.
    fn permission(method: &Method, path: &str) -> Permission {
        if path.contains("/-/npm/v1/security/") || path.contains("/-/v1/security/") {
            return Permission::Read;
        }
        access::by_method(method)
    }
}

const STYLE: ErrorStyle = Npm::STYLE;
/// Largest unpacked size of a package tarball.
const MAX_UNPACKED_BYTES: u64 = 4 * 1024 * 1024 * 1024;

pub async fn dispatch_root(access: Authorized<Npm>, state: State<SharedState>, request: Request) -> Response {
    dispatch_to(access, &state, "", request).await
}

pub async fn dispatch(
    access: Authorized<Npm>,
    Path((_, rest)): Path<(String, String)>,
    state: State<SharedState>,
    request: Request,
) -> Response {
    dispatch_to(access, &state, &rest, request).await
}

async fn dispatch_to(access: Authorized<Npm>, state: &SharedState, rest: &str, request: Request) -> Response {
    let (operation, result) = match access {
        Ok(access) => handle(state, &access, rest, request).await,
        Err(refused) => ("npm", Err(refused)),
    };
    tagged(operation, result)
}

async fn handle(
    state: &SharedState,
    access: &Access<Npm>,
    rest: &str,
    request: Request,
) -> (&'static str, Result<Response, ApiError>) {
    // The router already percent-decoded `rest`; `@scope/name` and
    // `@scope%2fname` now look alike.
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let (parts, body) = request.into_parts();
    let (method, headers) = (&parts.method, &parts.headers);
    let get = method == Method::GET || method == Method::HEAD;
    match segments.as_slice() {
        ["-", "ping"] => ("npm_ping", Ok(axum::Json(json!({})).into_response())),
        ["-", "whoami"] => ("npm_whoami", whoami(access)),
        ["-", "npm", "v1", "security", ..] | ["-", "v1", "security", ..] => {
            // No advisories database: answer "none" so installs don't fail.
            ("npm_audit", Ok(axum::Json(json!({})).into_response()))
        }
        ["-", "package", tail @ ..] => ("npm_dist_tags", dist_tags(state, access, method, tail, body).await),
        [] => ("npm", Err(ApiError::not_found("not found", STYLE))),
        _ => {
            let (name, tail) = split_name(&segments);
            if let Err(e) = format::validate_name(&name) {
                return ("npm", Err(ApiError::bad_request(e.to_string(), STYLE)));
            }
            match (tail, get, method) {
                ([], true, _) => ("npm_packument", packument(state, access, &name, headers).await),
                ([], _, &Method::PUT) | (["-rev", _], _, &Method::PUT) => {
                    ("npm_publish", publish(state, access, &name, headers, body).await)
                }
                (["-", file], true, _) => ("npm_tarball", tarball(state, access, &name, file, method, headers).await),
                ([spec], true, _) => ("npm_version", version(state, access, &name, spec, headers).await),
                _ => (
                    "npm",
                    Err(ApiError::new(
                        StatusCode::METHOD_NOT_ALLOWED,
                        format!(
                            "{method} is not supported here; versions are immutable (change their status through /api/v1)"
                        ),
                        STYLE,
                    )),
                ),
            }
        }
    }
}

/// Splits the package name off the front of the path.
fn split_name<'a>(segments: &'a [&'a str]) -> (String, &'a [&'a str]) {
    match segments {
        [scope, name, tail @ ..] if scope.starts_with('@') && !scope.contains('/') => (format!("{scope}/{name}"), tail),
        [name, tail @ ..] => ((*name).to_owned(), tail),
        [] => (String::new(), segments),
    }
}

fn package_id(name: &str) -> PackageId {
    PackageId::new(PackageFormat::Npm, name)
}

fn whoami(access: &Access<Npm>) -> Result<Response, ApiError> {
    if access.principal == crate::auth::Principal::Anonymous {
        return Err(ApiError::unauthorized("not logged in", &access.repo, STYLE));
    }
    Ok(axum::Json(json!({"username": access.principal.name()})).into_response())
}

/// The package as the Repository's clients see it, or 404.
async fn view(state: &SharedState, access: &Access<Npm>, name: &str) -> Result<View, ApiError> {
    state
        .view(&access.repo, &package_id(name), name, STYLE)
        .await?
        .ok_or_else(|| ApiError::not_found("Not found", STYLE))
}

async fn packument(
    state: &SharedState,
    access: &Access<Npm>,
    name: &str,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let abbreviated = accept.contains(format::ABBREVIATED_CONTENT_TYPE);
    let base = format!("{}/npm/{}", super::origin(headers), access.repo);
    // Rendered once per view: a new one comes with any change upstream,
    // in the chain, or of the clock's cooldown.
    let view = view(state, access, name).await?;
    let key = format!("npm:{abbreviated}:{base}");
    let rendered = view.rendered(&key, |index| format::render_packument(index, name, &base, abbreviated));
    let content_type = if abbreviated { format::ABBREVIATED_CONTENT_TYPE } else { "application/json" };
    Ok(super::metadata_document(rendered, content_type, headers, Some("Accept, Authorization")))
}

async fn version(
    state: &SharedState,
    access: &Access<Npm>,
    name: &str,
    spec: &str,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let view = view(state, access, name).await?;
    let index = view.index();
    let version = index.tags.get(spec).map(String::as_str).unwrap_or(spec);
    let entry = index
        .versions
        .get(version)
        .filter(|e| e.status.is_installable())
        .ok_or_else(|| ApiError::not_found(format!("version {spec} of {name} not found"), STYLE))?;
    let base = format!("{}/npm/{}", super::origin(headers), access.repo);
    Ok(axum::Json(format::version_manifest(entry, name, version, &base)).into_response())
}

async fn tarball(
    state: &SharedState,
    access: &Access<Npm>,
    name: &str,
    file: &str,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let bare = name.rsplit('/').next().unwrap_or(name);
    let version = file
        .strip_suffix(".tgz")
        .and_then(|stem| stem.strip_prefix(bare))
        .and_then(|stem| stem.strip_prefix('-'))
        .ok_or_else(|| ApiError::not_found(format!("{file} is not a tarball of {name}"), STYLE))?;
    let view = view(state, access, name).await?;
    let file = format::tarball_filename(name, version);
    let digests = state.stored_asset(&access.repo, &view, &package_id(name), version, &file, STYLE).await?;
    blob::serve(&state.packages.registry, &digests, "application/octet-stream", method, headers, STYLE).await
}

/// `npm publish` (and `npm deprecate`, which sends the same document
/// without an attachment): the document is split as it streams, its one
/// tarball staged, and the version published through the pipeline.
async fn publish(
    state: &SharedState,
    access: &Access<Npm>,
    name: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (skeleton, attachment) = split_publish_body(state, headers, body).await?;
    let parsed = format::parse_publish(&skeleton, name).map_err(|e| ApiError::bad_request(e.to_string(), STYLE));
    let new = match parsed {
        Ok(PublishRequest::Publish(new)) => new,
        Ok(PublishRequest::Deprecate(messages)) => {
            discard(attachment).await;
            let id = package_id(name);
            let deprecated = state.packages.registry.set_deprecations(&access.repo, &id, &messages).await;
            deprecated.map_err(|e| ApiError::from_core(e, STYLE))?;
            return Ok(axum::Json(json!({"ok": true})).into_response());
        }
        Err(error) => {
            discard(attachment).await;
            return Err(error);
        }
    };
    let staged = match attachment {
        Some((file, staged)) if file == new.attachment => staged,
        other => {
            discard(other).await;
            return Err(ApiError::bad_request(format!("attachment {} has no data", new.attachment), STYLE));
        }
    };
    let mut publication = Publication::new(&access.repo, package_id(name), name, &new.version);
    publication.conflict = Some(format!("cannot publish over the previously published version {}", new.version));
    let (declared, inspect) = (declared_digests(&new), tarball_check(name, &new.version));
    let accepted = state.packages.accept(&publication, staged, &declared, inspect).await;
    let (info, digests) = accepted.map_err(|e| ApiError::from_core(e, STYLE))?;
    let mut new = new;
    format::align_with_tarball(&mut new.manifest, name, &info);
    let asset = NewAsset {
        name: format::tarball_filename(name, &new.version),
        digests,
        metadata: json!({"fileCount": info.file_count, "unpackedSize": info.unpacked_size}),
    };
    let new = NewVersion { version: new.version, metadata: new.manifest, assets: vec![asset], tags: new.tags };
    let written = state.packages.write(&publication, Placement::Version { new, withdrawals: None }).await;
    let status = match written.map_err(|e| ApiError::from_core(e, STYLE))? {
        PublishOutcome::Created => StatusCode::CREATED,
        PublishOutcome::AlreadyPublished => StatusCode::OK,
    };
    Ok((status, axum::Json(json!({"ok": true, "id": name}))).into_response())
}

/// The digests the document declares for its tarball.
fn declared_digests(new: &NewNpmVersion) -> Declared {
    let mismatch = |what: &'static str| move |_: &str| format!("the tarball does not match its declared {what}");
    let sha512 = new.declared_integrity.as_deref().and_then(format::declared_sha512);
    Declared::default()
        .expect(Digest::Size, new.declared_length.map(|n| n.to_string()), mismatch("length"))
        .expect(Digest::Sha1, new.declared_shasum.clone(), mismatch("shasum"))
        .expect(Digest::Sha512, sha512, mismatch("integrity"))
}

/// Reads a staged tarball and confirms its `package.json` names this
/// package and version.
fn tarball_check(name: &str, version: &str) -> impl FnOnce(SyncBlobReader) -> Result<TarballInfo, CoreError> + use<> {
    let (name, version) = (name.to_owned(), version.to_owned());
    move |reader| {
        let info =
            format::inspect_tarball(reader, MAX_UNPACKED_BYTES).map_err(|e| CoreError::Invalid(e.to_string()))?;
        if info.name != name || info.version != version {
            return Err(CoreError::Invalid(format!(
                "the tarball's package.json says {}@{}, but the document publishes {name}@{version}",
                info.name, info.version
            )));
        }
        Ok(info)
    }
}

/// Reads a publish document as it streams: its skeleton (at most
/// `--max-metadata-bytes`) and its one attachment, staged as it is decoded.
async fn split_publish_body(
    state: &SharedState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Vec<u8>, Option<(String, StagedBlob)>), ApiError> {
    let limits = state.limits;
    // base64 inflates by 4/3; the document around it by up to the metadata limit.
    let max_body = limits.max_upload_bytes / 3 * 4 + 4 + limits.max_metadata_bytes as u64;
    if super::declared_length(headers).is_some_and(|n| n > max_body) {
        return Err(too_large(limits.max_upload_bytes));
    }
    // The splitter refuses a second attachment, so there is at most one.
    let mut splitter = PublishBodySplitter::new(limits.max_metadata_bytes);
    let split = |chunk: bytes::Bytes| {
        let events = splitter.feed(&chunk).map_err(|e| {
            let status = match e {
                format::publish_body::SplitError::MetadataTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                _ => StatusCode::BAD_REQUEST,
            };
            ApiError::new(status, e.to_string(), STYLE)
        })?;
        Ok(events
            .into_iter()
            .map(|event| match event {
                Event::AttachmentStart(file) => Embedded::Start(file),
                Event::AttachmentData(bytes) => Embedded::Data(bytes.into()),
                Event::AttachmentEnd => Embedded::End,
            })
            .collect())
    };
    let registry = &state.packages.registry;
    let limit = || too_large(limits.max_upload_bytes);
    let attachment =
        staging::stage_embedded(registry, body, (max_body, limits.max_upload_bytes), STYLE, limit, split).await?;
    match splitter.finish() {
        Ok(skeleton) => Ok((skeleton, attachment)),
        Err(error) => {
            discard(attachment).await;
            Err(ApiError::bad_request(error.to_string(), STYLE))
        }
    }
}

async fn discard(attachment: Option<(String, StagedBlob)>) {
    if let Some((_, staged)) = attachment {
        staged.discard().await;
    }
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the package exceeds the upload limit of {limit} bytes"),
        STYLE,
    )
}

/// `/-/package/{name}/dist-tags[/{tag}]`.
async fn dist_tags(
    state: &SharedState,
    access: &Access<Npm>,
    method: &Method,
    tail: &[&str],
    body: Body,
) -> Result<Response, ApiError> {
    let (name, rest) = split_name(tail);
    format::validate_name(&name).map_err(|e| ApiError::bad_request(e.to_string(), STYLE))?;
    let id = package_id(&name);
    let registry = &state.packages.registry;
    match (rest, method) {
        (["dist-tags"], &Method::GET) => {
            // The tags a client installing from here would see (merged through the chain).
            let view = view(state, access, &name).await?;
            Ok(axum::Json(&view.index().tags).into_response())
        }
        (["dist-tags", tag], &Method::PUT) | (["dist-tags", tag], &Method::POST) => {
            format::validate_tag(tag).map_err(|e| ApiError::bad_request(e.to_string(), STYLE))?;
            let body = axum::body::to_bytes(body, 4096)
                .await
                .map_err(|e| ApiError::bad_request(format!("failed to read the body: {e}"), STYLE))?;
            let version: String = serde_json::from_slice(&body)
                .map_err(|_| ApiError::bad_request("the body must be a JSON string naming a version", STYLE))?;
            registry.set_tag(&access.repo, &id, tag, &version).await.map_err(|e| ApiError::from_core(e, STYLE))?;
            Ok((StatusCode::CREATED, axum::Json(json!({"ok": true}))).into_response())
        }
        (["dist-tags", tag], &Method::DELETE) => {
            registry.remove_tag(&access.repo, &id, tag).await.map_err(|e| ApiError::from_core(e, STYLE))?;
            Ok(axum::Json(json!({"ok": true})).into_response())
        }
        _ => Err(ApiError::not_found("not found", STYLE)),
    }
}
