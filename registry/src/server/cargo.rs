//! Cargo endpoints under `/cargo/{repo}/`: the sparse index (`index/`
//! with `config.json` and one file per crate), downloads, and the web API
//! (publish, yank/unyank, owners, search). Errors are cargo's
//! `{"errors":[{"detail":…}]}`.
//!
//! Users configure `index = "sparse+http://HOST/cargo/{repo}/index/"`.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use wharf_api::{PackageFormat, Repository};

use super::metrics::tagged;
use super::staging::StreamedUpload;
use super::{ApiError, ErrorStyle, SharedState, blob, upstream};
use crate::auth::Permission;
use wharf_core::{CoreError, NewAsset, NewVersion, PackageId, PublishOutcome, VersionStatus};
use wharf_formats::cargo::archive::{self, ArchiveLimits};
use wharf_formats::cargo::framing::{FrameEvent, PublishFrameReader};
use wharf_formats::cargo::{self as format, NewCrateVersion};
use wharf_storage::StagedBlob;

const STYLE: ErrorStyle = ErrorStyle::Cargo;
/// Search results per page unless asked otherwise, and at most.
const DEFAULT_PER_PAGE: usize = 10;
const MAX_PER_PAGE: usize = 100;

fn repo_name(repo: &Repository) -> &str {
    repo.metadata.name.as_deref().unwrap_or_default()
}

fn crate_id(name: &str) -> PackageId {
    PackageId::new(PackageFormat::Cargo, format::canonical_name(name))
}

fn bad_request(error: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(error.to_string(), STYLE)
}

/// A crate name and version from a URL, checked; the version as the core
/// keys it.
fn crate_and_version(krate: &str, version: &str) -> Result<(PackageId, String), ApiError> {
    format::validate_name(krate).map_err(bad_request)?;
    let version = format::validate_version(version).map_err(bad_request)?;
    Ok((crate_id(krate), format::version_key(&version)))
}

/// `GET index/config.json`. For a private repository it answers anonymous
/// requests with 401, which is what makes cargo retry with its token.
pub async fn config(Path(repo): Path<String>, State(state): State<SharedState>, headers: HeaderMap) -> Response {
    let result = async {
        let repo = state.repository(&repo, &headers, Permission::Read, STYLE).await?;
        state.authorize(&headers, repo, Permission::Read, STYLE).await?;
        let base = format!("{}/cargo/{}", super::origin(&headers), repo_name(repo));
        let body = format::render_config(&format!("{base}/api/v1/crates"), &base, !repo.allows_anonymous_read());
        Ok::<_, ApiError>(
            ([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "private, no-cache")], body)
                .into_response(),
        )
    }
    .await;
    tagged("cargo_config", result)
}

/// `GET index/{1,2,3/a,ab/cd}/{name}`: the crate's index file, rendered
/// once per index revision and served with an ETag.
pub async fn index_file(
    Path((repo, path)): Path<(String, String)>,
    State(state): State<SharedState>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let repo = state.repository(&repo, &headers, Permission::Read, STYLE).await?;
        state.authorize(&headers, repo, Permission::Read, STYLE).await?;
        let name = format::name_from_index_path(&path).map_err(bad_request)?;
        let missing = || ApiError::not_found(format!("crate {name} not found"), STYLE);
        let rendered = if upstream::has_chain(&state, repo_name(repo)) {
            let view =
                upstream::view(&state, repo_name(repo), &crate_id(&name), &name, STYLE).await?.ok_or_else(missing)?;
            if view.index.display_name.to_ascii_lowercase() != name {
                return Err(missing());
            }
            view.rendered("cargo:index", format::render_index_file)
        } else {
            let snapshot = state.package(repo_name(repo), &crate_id(&name), STYLE).await?.ok_or_else(missing)?;
            // Only the kept spelling has an index file; cargo offers the other
            // spelling itself when a lookup fails.
            if snapshot.index.display_name.to_ascii_lowercase() != name {
                return Err(missing());
            }
            snapshot.rendered("cargo:index", format::render_index_file)
        };
        if rendered.body.is_empty() {
            return Err(missing());
        }
        Ok(super::metadata_document(rendered, "text/plain; charset=utf-8", &headers, None))
    }
    .await;
    tagged("cargo_index", result)
}

/// `GET api/v1/crates/{crate}/{version}/download` (config.json's `dl`).
/// Yanked versions stay downloadable so existing lockfiles still build.
pub async fn download(
    Path((repo, krate, version)): Path<(String, String, String)>,
    State(state): State<SharedState>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let repo = state.repository(&repo, &headers, Permission::Read, STYLE).await?;
        state.authorize(&headers, repo, Permission::Read, STYLE).await?;
        let (id, key) = crate_and_version(&krate, &version)?;
        let missing = || ApiError::not_found(format!("{krate}@{version} not found"), STYLE);
        if upstream::has_chain(&state, repo_name(repo)) {
            let view = upstream::view(&state, repo_name(repo), &id, &krate, STYLE).await?.ok_or_else(missing)?;
            let file =
                view.index.versions.get(&key).and_then(|e| e.assets.keys().next().cloned()).ok_or_else(missing)?;
            let digests = upstream::stored_asset(&state, repo_name(repo), &view, &id, &key, &file, STYLE).await?;
            return blob::serve(&state.registry, &digests, "application/octet-stream", &method, &headers, STYLE).await;
        }
        let snapshot = state.package(repo_name(repo), &id, STYLE).await?.ok_or_else(missing)?;
        let entry = snapshot.index.versions.get(&key).ok_or_else(missing)?;
        if !entry.status.is_installable() {
            return Err(ApiError::not_found(format!("{krate}@{version} is {}", entry.status.as_str()), STYLE));
        }
        let asset = entry.assets.values().next().ok_or_else(missing)?;
        blob::serve(&state.registry, &asset.digests, "application/octet-stream", &method, &headers, STYLE).await
    }
    .await;
    tagged("cargo_download", result)
}

/// `PUT api/v1/crates/new`: cargo's framed body, streamed. The metadata is
/// checked as soon as it arrives, the `.crate` goes straight to storage,
/// is inspected there, and the version is created by the core (exactly one
/// of concurrent publishers wins).
pub async fn publish(
    Path(repo): Path<String>,
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    tagged("cargo_publish", publish_crate(&state, &repo, &headers, body).await)
}

async fn publish_crate(state: &SharedState, repo: &str, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
    let repo = state.repository(repo, headers, Permission::Publish, STYLE).await?;
    let principal = state.authorize(headers, repo, Permission::Publish, STYLE).await?;
    let limits = state.limits;
    let max_metadata = limits.max_metadata_bytes as u64;
    let declared: Option<u64> = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
    if declared.is_some_and(|n| n > 8 + max_metadata + limits.max_upload_bytes) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the publish body exceeds the upload limit of {} bytes", limits.max_upload_bytes),
            STYLE,
        ));
    }

    let mut frames = PublishFrameReader::new(max_metadata, limits.max_upload_bytes);
    let mut body = body.into_data_stream();
    let mut new: Option<NewCrateVersion> = None;
    let mut upload: Option<StreamedUpload> = None;
    let mut streamed: Option<StreamedUpload> = None;
    let read: Result<(), ApiError> = async {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| bad_request(format!("failed to read the request body: {e}")))?;
            let events = frames.feed(chunk).map_err(|e| {
                let status = if e.is_too_large() { StatusCode::PAYLOAD_TOO_LARGE } else { StatusCode::BAD_REQUEST };
                ApiError::new(status, e.to_string(), STYLE)
            })?;
            for event in events {
                match event {
                    FrameEvent::Metadata(json) => {
                        new = Some(format::parse_publish_metadata(&json).map_err(bad_request)?);
                    }
                    FrameEvent::CrateStart(_) => {
                        upload = Some(StreamedUpload::start(state.registry.clone(), limits.max_upload_bytes));
                    }
                    FrameEvent::CrateData(bytes) => {
                        if let Some(upload) = upload.as_mut() {
                            upload.send(bytes).await;
                        }
                    }
                    FrameEvent::CrateEnd => streamed = upload.take(),
                }
            }
        }
        Ok(())
    }
    .await;
    let read = read.and_then(|()| frames.finish().map_err(bad_request));
    let (new, streamed) = match (read, new, streamed, upload) {
        (Ok(()), Some(new), Some(streamed), None) => (new, streamed),
        (read, _, streamed, upload) => {
            for upload in upload.into_iter().chain(streamed) {
                upload.abort().await;
            }
            return Err(read.err().unwrap_or_else(|| bad_request("the body has no metadata or no .crate")));
        }
    };
    let mut staged = streamed.finish(STYLE).await?;
    let checked = check_crate(state, repo, &new, &staged).await;
    let info = staged.discard_on_err(checked).await?;
    let digests = staged.commit().await.map_err(|e| ApiError::from_storage(&e, STYLE))?;
    let name = new.name.clone();
    let vers = new.version.to_string();
    let repo_name = repo_name(repo);
    let id = crate_id(&name);
    let key = format::version_key(&new.version);
    let mut metadata = new.metadata;
    metadata["publisher"] = json!(principal.name());
    let outcome = state
        .registry
        .publish_version(
            repo_name,
            &id,
            &name,
            NewVersion {
                version: format::version_key(&new.version),
                metadata,
                assets: vec![NewAsset {
                    name: format::crate_filename(&name, &vers),
                    digests,
                    metadata: json!({"fileCount": info.file_count, "unpackedSize": info.unpacked_size}),
                }],
                tags: Vec::new(),
            },
        )
        .await
        .map_err(|e| match e {
            CoreError::Conflict(_) => ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "crate version {name}@{} is already uploaded with different contents; versions are immutable, so publish a new version (and yank this one if it is broken)",
                    format::version_key(&new.version)
                ),
                STYLE,
            ),
            other => ApiError::from_core(other, STYLE),
        })?;
    upstream::record_publish(state, repo_name, &id, &key, outcome, STYLE).await?;
    let other: Vec<String> = match outcome {
        PublishOutcome::Created => Vec::new(),
        PublishOutcome::AlreadyPublished => {
            vec![format!("{name}@{vers} was already published with these exact bytes; nothing changed")]
        }
    };
    Ok(axum::Json(json!({"warnings": {"invalid_categories": [], "invalid_badges": [], "other": other}}))
        .into_response())
}

/// Every check of a staged `.crate` before it is committed: its entries
/// and manifest, the origin rules, and the first spelling of its name.
async fn check_crate(
    state: &SharedState,
    repo: &Repository,
    new: &NewCrateVersion,
    staged: &StagedBlob,
) -> Result<archive::CrateInfo, ApiError> {
    let (name, vers) = (new.name.clone(), new.version.to_string());
    let reader = staged.reader();
    let info = {
        let (name, vers) = (name.clone(), vers.clone());
        tokio::task::spawn_blocking(move || archive::inspect_crate(reader, &name, &vers, ArchiveLimits::default()))
            .await
            .map_err(|e| ApiError::internal(&e, STYLE))?
            .map_err(bad_request)?
    };
    let repo_name = repo_name(repo);
    let id = crate_id(&name);
    let key = format::version_key(&new.version);
    wharf_core::check_storable(&id, &key, []).map_err(|e| ApiError::from_core(e, STYLE))?;
    upstream::check_publish(state, repo_name, &id, &name, &key, STYLE).await?;
    state.registry.claim_spelling(repo_name, &id, &name).await.map_err(|e| ApiError::from_core(e, STYLE))?;
    Ok(info)
}

/// `DELETE api/v1/crates/{crate}/{version}/yank`: Published → Unlisted.
pub async fn yank(
    Path((repo, krate, version)): Path<(String, String, String)>,
    State(state): State<SharedState>,
    headers: HeaderMap,
) -> Response {
    tagged("cargo_yank", change_yank(&state, &repo, &krate, &version, &headers, true).await)
}

/// `PUT api/v1/crates/{crate}/{version}/unyank`: Unlisted → Published.
pub async fn unyank(
    Path((repo, krate, version)): Path<(String, String, String)>,
    State(state): State<SharedState>,
    headers: HeaderMap,
) -> Response {
    tagged("cargo_unyank", change_yank(&state, &repo, &krate, &version, &headers, false).await)
}

async fn change_yank(
    state: &SharedState,
    repo: &str,
    krate: &str,
    version: &str,
    headers: &HeaderMap,
    yank: bool,
) -> Result<Response, ApiError> {
    let repo = state.repository(repo, headers, Permission::Publish, STYLE).await?;
    state.authorize(headers, repo, Permission::Publish, STYLE).await?;
    let (id, key) = crate_and_version(krate, version)?;
    let (from, to) = if yank {
        (VersionStatus::Published, VersionStatus::Unlisted)
    } else {
        (VersionStatus::Unlisted, VersionStatus::Published)
    };
    // Compare-and-swap from the one status this operation starts from, so
    // an Archived version is never brought back by an unyank.
    match state.registry.set_status(repo_name(repo), &id, &key, Some(from), to).await {
        Ok(()) => {}
        // Already where it was asked to go (a retry, or a concurrent yank).
        Err(CoreError::StatusMismatch { actual, .. }) if actual == to.as_str() => {}
        Err(CoreError::StatusMismatch { actual, .. }) => {
            let action = if yank { "yanked" } else { "unyanked" };
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("{krate}@{version} is {actual}; only a {} version can be {action}", from.as_str()),
                STYLE,
            ));
        }
        Err(CoreError::NotFound(_)) => {
            return Err(ApiError::not_found(format!("{krate}@{version} not found"), STYLE));
        }
        Err(other) => return Err(ApiError::from_core(other, STYLE)),
    }
    Ok(axum::Json(json!({"ok": true})).into_response())
}

/// `GET api/v1/crates/{crate}/owners`: who published the crate's versions.
/// Publish rights in Wharf belong to the Repository (its `access.publish`
/// and the tokens minted for it), so there is no owner list to edit.
pub async fn owners(
    Path((repo, krate)): Path<(String, String)>,
    State(state): State<SharedState>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let permission = if method == Method::GET || method == Method::HEAD { Permission::Read } else { Permission::Publish };
        let repo = state.repository(&repo, &headers, permission, STYLE).await?;
        if method != Method::GET && method != Method::HEAD {
            state.authorize(&headers, repo, Permission::Publish, STYLE).await?;
            return Err(bad_request(format!(
                "crate owners cannot be changed in Wharf: who may publish {krate} is decided by repository {}'s access.publish",
                repo_name(repo)
            )));
        }
        state.authorize(&headers, repo, Permission::Read, STYLE).await?;
        format::validate_name(&krate).map_err(bad_request)?;
        let snapshot = state.package(repo_name(repo), &crate_id(&krate), STYLE).await?
            .ok_or_else(|| ApiError::not_found(format!("crate {krate} not found"), STYLE))?;
        let users: Vec<Value> = format::publishers(&snapshot.index)
            .into_iter()
            .enumerate()
            .map(|(i, login)| json!({"id": i + 1, "login": login, "name": login}))
            .collect();
        Ok(axum::Json(json!({"users": users})).into_response())
    }
    .await;
    tagged("cargo_owners", result)
}

#[derive(Debug, Deserialize)]
pub struct SearchParams {
    q: Option<String>,
    per_page: Option<String>,
}

/// `GET api/v1/crates?q=&per_page=`: crates whose name contains `q`
/// (case-insensitive, `-` equal to `_`), exact match first, then by name.
pub async fn search(
    Path(repo): Path<String>,
    State(state): State<SharedState>,
    headers: HeaderMap,
    Query(params): Query<SearchParams>,
) -> Response {
    let result = async {
        let repo = state.repository(&repo, &headers, Permission::Read, STYLE).await?;
        state.authorize(&headers, repo, Permission::Read, STYLE).await?;
        let per_page = match params.per_page.as_deref() {
            None => DEFAULT_PER_PAGE,
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_PER_PAGE).contains(n))
                .ok_or_else(|| bad_request(format!("per_page must be a number from 1 to {MAX_PER_PAGE}")))?,
        };
        let query = format::canonical_name(params.q.as_deref().unwrap_or("").trim());
        let mut names: Vec<String> = state
            .registry
            .package_names(repo_name(repo), PackageFormat::Cargo)
            .await
            .map_err(|e| ApiError::from_core(e, STYLE))?
            .into_iter()
            .filter(|name| name.contains(&query))
            .collect();
        names.sort_by(|a, b| (*a != query).cmp(&(*b != query)).then_with(|| a.cmp(b)));
        let mut crates = Vec::new();
        let mut total = 0usize;
        for name in names {
            // Each match costs a snapshot read; stop loading once the page
            // is full and only count the rest.
            if crates.len() >= per_page {
                total += 1;
                continue;
            }
            let snapshot = state.package(repo_name(repo), &PackageId::new(PackageFormat::Cargo, name), STYLE).await?;
            // A spelling claimed by a publish that then failed has no versions.
            let Some(snapshot) = snapshot.filter(|s| s.index.versions.values().any(|v| v.status.is_installable()))
            else {
                continue;
            };
            total += 1;
            let newest = format::newest_listed(&snapshot.index);
            let max_version =
                newest.and_then(|(_, entry)| entry.metadata.get("vers").and_then(Value::as_str)).unwrap_or("0.0.0");
            let description = newest.and_then(|(_, entry)| entry.metadata.get("description")).cloned();
            crates.push(json!({
                "name": snapshot.index.display_name,
                "max_version": max_version,
                "description": description.unwrap_or(Value::Null),
            }));
        }
        Ok(axum::Json(json!({"crates": crates, "meta": {"total": total}})).into_response())
    }
    .await;
    tagged("cargo_search", result)
}
