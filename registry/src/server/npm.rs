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
use futures::StreamExt;
use serde_json::json;
use wharf_api::{PackageFormat, Repository};

use super::metrics::tagged;
use super::staging::StreamedUpload;
use super::{ApiError, ErrorStyle, SharedState, blob, upstream};
use crate::auth::Permission;
use wharf_core::{NewAsset, NewVersion, PackageId, PackageIndex, PublishOutcome};
use wharf_formats::npm::publish_body::{Event, PublishBodySplitter};
use wharf_formats::npm::{self as format, PublishRequest};
use wharf_storage::StagedBlob;

const STYLE: ErrorStyle = ErrorStyle::Json;
/// Largest unpacked size of a package tarball.
const MAX_UNPACKED_BYTES: u64 = 4 * 1024 * 1024 * 1024;

pub async fn dispatch_root(Path(repo): Path<String>, state: State<SharedState>, request: Request) -> Response {
    route(state.0, repo, String::new(), request).await
}

pub async fn dispatch(
    Path((repo, rest)): Path<(String, String)>,
    state: State<SharedState>,
    request: Request,
) -> Response {
    route(state.0, repo, rest, request).await
}

async fn route(state: SharedState, repo_name: String, rest: String, request: Request) -> Response {
    let (operation, result) = handle(&state, &repo_name, &rest, request).await;
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
        Err(e) => return ("npm", Err(e)),
    };
    // The router already percent-decoded `rest`; `@scope/name` and
    // `@scope%2fname` now look alike.
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let (parts, body) = request.into_parts();
    let (method, headers) = (&parts.method, &parts.headers);
    let get = method == Method::GET || method == Method::HEAD;
    match segments.as_slice() {
        ["-", "ping"] => ("npm_ping", Ok(axum::Json(json!({})).into_response())),
        ["-", "whoami"] => ("npm_whoami", whoami(state, repo, headers).await),
        ["-", "npm", "v1", "security", ..] | ["-", "v1", "security", ..] => {
            // No advisories database: answer "none" so installs don't fail.
            ("npm_audit", Ok(axum::Json(json!({})).into_response()))
        }
        ["-", "package", tail @ ..] => ("npm_dist_tags", dist_tags(state, repo, method, headers, tail, body).await),
        [] => ("npm", Err(ApiError::not_found("not found", STYLE))),
        _ => {
            let (name, tail) = split_name(&segments);
            if let Err(e) = format::validate_name(&name) {
                return ("npm", Err(ApiError::bad_request(e.to_string(), STYLE)));
            }
            match (tail, get, method) {
                ([], true, _) => ("npm_packument", packument(state, repo, &name, headers).await),
                ([], _, &Method::PUT) | (["-rev", _], _, &Method::PUT) => {
                    ("npm_publish", publish(state, repo, &name, headers, body).await)
                }
                (["-", file], true, _) => ("npm_tarball", tarball(state, repo, &name, file, method, headers).await),
                ([spec], true, _) => ("npm_version", version(state, repo, &name, spec, headers).await),
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

async fn whoami(state: &SharedState, repo: &Repository, headers: &HeaderMap) -> Result<Response, ApiError> {
    let principal = state.authorize(headers, repo, Permission::Read, STYLE).await?;
    if principal == crate::auth::Principal::Anonymous {
        let name = repo.metadata.name.as_deref().unwrap_or_default();
        return Err(ApiError::unauthorized("not logged in", name, STYLE));
    }
    Ok(axum::Json(json!({"username": principal.name()})).into_response())
}

async fn packument(
    state: &SharedState,
    repo: &Repository,
    name: &str,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    state.authorize(headers, repo, Permission::Read, STYLE).await?;
    let repo_name = repo.metadata.name.as_deref().unwrap_or_default();
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let abbreviated = accept.contains(format::ABBREVIATED_CONTENT_TYPE);
    let base = format!("{}/npm/{repo_name}", super::origin(headers));
    let rendered = if upstream::has_chain(state, repo_name) {
        // Rendered once per view: a new one comes with any change upstream,
        // in the chain, or of the clock's cooldown.
        let view = upstream::view(state, repo_name, &package_id(name), name, STYLE)
            .await?
            .ok_or_else(|| ApiError::not_found("Not found", STYLE))?;
        let key = format!("npm:{abbreviated}:{base}");
        view.rendered(&key, |index| format::render_packument(index, name, &base, abbreviated))
    } else {
        let snapshot = state
            .package(repo_name, &package_id(name), STYLE)
            .await?
            .ok_or_else(|| ApiError::not_found("Not found", STYLE))?;
        let key = format!("npm:{abbreviated}:{base}");
        snapshot.rendered(&key, |index| format::render_packument(index, name, &base, abbreviated))
    };
    let content_type = if abbreviated { format::ABBREVIATED_CONTENT_TYPE } else { "application/json" };
    Ok(super::metadata_document(rendered, content_type, headers, Some("Accept, Authorization")))
}

/// The package's index as `repo` sees it: through its chain, or its own.
async fn visible_index(state: &SharedState, repo_name: &str, name: &str) -> Result<PackageIndex, ApiError> {
    if upstream::has_chain(state, repo_name) {
        let view = upstream::view(state, repo_name, &package_id(name), name, STYLE).await?;
        return view
            .map(|v| std::sync::Arc::unwrap_or_clone(v.index))
            .ok_or_else(|| ApiError::not_found("Not found", STYLE));
    }
    let snapshot = state
        .package(repo_name, &package_id(name), STYLE)
        .await?
        .ok_or_else(|| ApiError::not_found("Not found", STYLE))?;
    Ok(snapshot.index.clone())
}

async fn version(
    state: &SharedState,
    repo: &Repository,
    name: &str,
    spec: &str,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    state.authorize(headers, repo, Permission::Read, STYLE).await?;
    let repo_name = repo.metadata.name.as_deref().unwrap_or_default();
    let index = visible_index(state, repo_name, name).await?;
    let version = index.tags.get(spec).map(String::as_str).unwrap_or(spec);
    let entry = index
        .versions
        .get(version)
        .filter(|e| e.status.is_installable())
        .ok_or_else(|| ApiError::not_found(format!("version {spec} of {name} not found"), STYLE))?;
    let base = format!("{}/npm/{repo_name}", super::origin(headers));
    Ok(axum::Json(format::version_manifest(entry, name, version, &base)).into_response())
}

async fn tarball(
    state: &SharedState,
    repo: &Repository,
    name: &str,
    file: &str,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    state.authorize(headers, repo, Permission::Read, STYLE).await?;
    let repo_name = repo.metadata.name.as_deref().unwrap_or_default();
    let bare = name.rsplit('/').next().unwrap_or(name);
    let version = file
        .strip_suffix(".tgz")
        .and_then(|stem| stem.strip_prefix(bare))
        .and_then(|stem| stem.strip_prefix('-'))
        .ok_or_else(|| ApiError::not_found(format!("{file} is not a tarball of {name}"), STYLE))?;
    if upstream::has_chain(state, repo_name) {
        let id = package_id(name);
        let view = upstream::view(state, repo_name, &id, name, STYLE)
            .await?
            .ok_or_else(|| ApiError::not_found("Not found", STYLE))?;
        let file = format::tarball_filename(name, version);
        let digests = upstream::stored_asset(state, repo_name, &view, &id, version, &file, STYLE).await?;
        return blob::serve(&state.registry, &digests, "application/octet-stream", method, headers, STYLE).await;
    }
    let snapshot = state
        .package(repo_name, &package_id(name), STYLE)
        .await?
        .ok_or_else(|| ApiError::not_found("Not found", STYLE))?;
    let entry = snapshot
        .index
        .versions
        .get(version)
        .ok_or_else(|| ApiError::not_found(format!("{name}@{version} not found"), STYLE))?;
    if !entry.status.is_installable() {
        return Err(ApiError::not_found(format!("{name}@{version} is {}", entry.status.as_str()), STYLE));
    }
    let asset = entry
        .assets
        .get(&format::tarball_filename(name, version))
        .ok_or_else(|| ApiError::not_found(format!("{file} not found"), STYLE))?;
    blob::serve(&state.registry, &asset.digests, "application/octet-stream", method, headers, STYLE).await
}

async fn publish(
    state: &SharedState,
    repo: &Repository,
    name: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    state.authorize(headers, repo, Permission::Publish, STYLE).await?;
    let repo_name = repo.metadata.name.as_deref().unwrap_or_default();
    let limits = state.limits;
    // base64 inflates by 4/3; the document around it by up to the metadata limit.
    let max_body = limits.max_upload_bytes / 3 * 4 + 4 + limits.max_metadata_bytes as u64;
    let declared: Option<u64> = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
    if declared.is_some_and(|n| n > max_body) {
        return Err(too_large(limits.max_upload_bytes));
    }

    let mut splitter = PublishBodySplitter::new(limits.max_metadata_bytes);
    let mut body = body.into_data_stream();
    let mut received = 0u64;
    // The splitter refuses a second attachment, so there is at most one.
    let mut staging: Option<(String, StreamedUpload)> = None;
    let mut streamed: Option<(String, StreamedUpload)> = None;
    let read: Result<(), ApiError> = async {
        while let Some(chunk) = body.next().await {
            let chunk =
                chunk.map_err(|e| ApiError::bad_request(format!("failed to read the request body: {e}"), STYLE))?;
            received += chunk.len() as u64;
            if received > max_body {
                return Err(too_large(limits.max_upload_bytes));
            }
            let events = splitter.feed(&chunk).map_err(|e| {
                let status = match e {
                    format::publish_body::SplitError::MetadataTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                    _ => StatusCode::BAD_REQUEST,
                };
                ApiError::new(status, e.to_string(), STYLE)
            })?;
            for event in events {
                match event {
                    Event::AttachmentStart(file) => {
                        let upload = StreamedUpload::start(state.registry.clone(), limits.max_upload_bytes);
                        staging = Some((file, upload));
                    }
                    Event::AttachmentData(bytes) => {
                        if let Some((_, upload)) = staging.as_mut() {
                            upload.send(bytes.into()).await;
                        }
                    }
                    Event::AttachmentEnd => streamed = staging.take(),
                }
            }
        }
        Ok(())
    }
    .await;
    let skeleton = read.and_then(|()| splitter.finish().map_err(|e| ApiError::bad_request(e.to_string(), STYLE)));
    let skeleton = match skeleton {
        Ok(skeleton) => skeleton,
        Err(error) => {
            for (_, upload) in staging.into_iter().chain(streamed) {
                upload.abort().await;
            }
            return Err(error);
        }
    };
    let attachment = match streamed {
        Some((file, upload)) => Some((file, upload.finish(STYLE).await?)),
        None => None,
    };
    let id = package_id(name);
    let (new, info, staged) = match check_publish_document(state, repo_name, name, &skeleton, attachment).await? {
        CheckedPublish::Deprecate(messages) => {
            state
                .registry
                .set_deprecations(repo_name, &id, &messages)
                .await
                .map_err(|e| ApiError::from_core(e, STYLE))?;
            return Ok(axum::Json(json!({"ok": true})).into_response());
        }
        CheckedPublish::Publish(checked) => *checked,
    };
    let digests = staged.commit().await.map_err(|e| ApiError::from_storage(&e, STYLE))?;
    let outcome = state
        .registry
        .publish_version(
            repo_name,
            &id,
            name,
            NewVersion {
                version: new.version.clone(),
                metadata: new.manifest,
                assets: vec![NewAsset {
                    name: format::tarball_filename(name, &new.version),
                    digests,
                    metadata: json!({"fileCount": info.file_count, "unpackedSize": info.unpacked_size}),
                }],
                tags: new.tags,
            },
        )
        .await
        .map_err(|e| match e {
            wharf_core::CoreError::Conflict(_) => ApiError::new(
                StatusCode::CONFLICT,
                format!("cannot publish over the previously published version {}", new.version),
                STYLE,
            ),
            other => ApiError::from_core(other, STYLE),
        })?;
    upstream::record_publish(state, repo_name, &id, &new.version, outcome, STYLE).await?;
    let status = match outcome {
        PublishOutcome::Created => StatusCode::CREATED,
        PublishOutcome::AlreadyPublished => StatusCode::OK,
    };
    Ok((status, axum::Json(json!({"ok": true, "id": name}))).into_response())
}

/// Every check of a publish document and its staged tarball: the
/// declared length and digests, the tarball's own `package.json`, and the
/// origin rules. A refused tarball is discarded before this returns; one
/// that passes comes back to be committed.
async fn check_publish_document(
    state: &SharedState,
    repo_name: &str,
    name: &str,
    skeleton: &[u8],
    attachment: Option<(String, StagedBlob)>,
) -> Result<CheckedPublish, ApiError> {
    let parsed = format::parse_publish(skeleton, name).map_err(|e| ApiError::bad_request(e.to_string(), STYLE));
    let new = match parsed {
        Ok(PublishRequest::Publish(new)) => new,
        Ok(PublishRequest::Deprecate(messages)) => {
            discard(attachment).await;
            return Ok(CheckedPublish::Deprecate(messages));
        }
        Err(error) => {
            discard(attachment).await;
            return Err(error);
        }
    };
    let mut staged = match attachment {
        Some((file, staged)) if file == new.attachment => staged,
        other => {
            discard(other).await;
            return Err(ApiError::bad_request(format!("attachment {} has no data", new.attachment), STYLE));
        }
    };
    let verified = verify_tarball(state, repo_name, name, &new, &staged).await;
    let info = staged.discard_on_err(verified).await?;
    let mut new = new;
    format::align_with_tarball(&mut new.manifest, name, &info);
    Ok(CheckedPublish::Publish(Box::new((new, info, staged))))
}

async fn discard(attachment: Option<(String, StagedBlob)>) {
    if let Some((_, staged)) = attachment {
        staged.discard().await;
    }
}

async fn verify_tarball(
    state: &SharedState,
    repo_name: &str,
    name: &str,
    new: &format::NewNpmVersion,
    staged: &StagedBlob,
) -> Result<format::TarballInfo, ApiError> {
    let digests = staged.digests();
    let mismatch = |what: &str| ApiError::bad_request(format!("the tarball does not match its declared {what}"), STYLE);
    if new.declared_length.is_some_and(|n| n != digests.size) {
        return Err(mismatch("length"));
    }
    if new.declared_shasum.as_ref().is_some_and(|s| *s != digests.sha1) {
        return Err(mismatch("shasum"));
    }
    if new
        .declared_integrity
        .as_ref()
        .is_some_and(|i| i.starts_with("sha512-") && *i != format::integrity(&digests.sha512))
    {
        return Err(mismatch("integrity"));
    }
    let reader = staged.reader();
    let info = tokio::task::spawn_blocking(move || format::inspect_tarball(reader, MAX_UNPACKED_BYTES))
        .await
        .map_err(|e| ApiError::internal(&e, STYLE))?
        .map_err(|e| ApiError::bad_request(e.to_string(), STYLE))?;
    if info.name != name || info.version != new.version {
        return Err(ApiError::bad_request(
            format!(
                "the tarball's package.json says {}@{}, but the document publishes {name}@{}",
                info.name, info.version, new.version
            ),
            STYLE,
        ));
    }
    wharf_core::check_storable(&package_id(name), &new.version, []).map_err(|e| ApiError::from_core(e, STYLE))?;
    upstream::check_publish(state, repo_name, &package_id(name), name, &new.version, STYLE).await?;
    Ok(info)
}

/// A publish document that passed [`check_publish_document`].
enum CheckedPublish {
    Deprecate(Vec<(String, Option<String>)>),
    Publish(Box<(format::NewNpmVersion, format::TarballInfo, StagedBlob)>),
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
    repo: &Repository,
    method: &Method,
    headers: &HeaderMap,
    tail: &[&str],
    body: Body,
) -> Result<Response, ApiError> {
    let (name, rest) = split_name(tail);
    format::validate_name(&name).map_err(|e| ApiError::bad_request(e.to_string(), STYLE))?;
    let repo_name = repo.metadata.name.as_deref().unwrap_or_default();
    let id = package_id(&name);
    let registry = &state.registry;
    match (rest, method) {
        (["dist-tags"], &Method::GET) => {
            state.authorize(headers, repo, Permission::Read, STYLE).await?;
            // The tags a client installing from here would see (merged through the chain).
            let index = visible_index(state, repo_name, &name).await?;
            Ok(axum::Json(&index.tags).into_response())
        }
        (["dist-tags", tag], &Method::PUT) | (["dist-tags", tag], &Method::POST) => {
            state.authorize(headers, repo, Permission::Publish, STYLE).await?;
            format::validate_tag(tag).map_err(|e| ApiError::bad_request(e.to_string(), STYLE))?;
            let body = axum::body::to_bytes(body, 4096)
                .await
                .map_err(|e| ApiError::bad_request(format!("failed to read the body: {e}"), STYLE))?;
            let version: String = serde_json::from_slice(&body)
                .map_err(|_| ApiError::bad_request("the body must be a JSON string naming a version", STYLE))?;
            registry.set_tag(repo_name, &id, tag, &version).await.map_err(|e| ApiError::from_core(e, STYLE))?;
            Ok((StatusCode::CREATED, axum::Json(json!({"ok": true}))).into_response())
        }
        (["dist-tags", tag], &Method::DELETE) => {
            state.authorize(headers, repo, Permission::Publish, STYLE).await?;
            registry.remove_tag(repo_name, &id, tag).await.map_err(|e| ApiError::from_core(e, STYLE))?;
            Ok(axum::Json(json!({"ok": true})).into_response())
        }
        _ => Err(ApiError::not_found("not found", STYLE)),
    }
}
