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
use serde::Deserialize;
use serde_json::{Value, json};
use wharf_api::PackageFormat;

use super::access::{Access, Authorized, Client};
use super::metrics::tagged;
use super::staging::{self, Embedded};
use super::{ApiError, ErrorStyle, SharedState, blob};
use wharf_core::{
    CoreError, Declared, NewAsset, NewVersion, PackageId, Placement, Publication, PublishOutcome, VersionStatus,
};
use wharf_formats::cargo::archive::{self, ArchiveLimits};
use wharf_formats::cargo::framing::{FrameEvent, PublishFrameReader};
use wharf_formats::cargo::{self as format, NewCrateVersion};
use wharf_storage::StagedBlob;

/// cargo: errors as `{"errors": [{"detail": …}]}`.
pub enum Cargo {}

impl Client for Cargo {
    const STYLE: ErrorStyle = ErrorStyle::Cargo;
}

const STYLE: ErrorStyle = Cargo::STYLE;
/// Search results per page unless asked otherwise, and at most.
const DEFAULT_PER_PAGE: usize = 10;
const MAX_PER_PAGE: usize = 100;

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
pub async fn config(access: Authorized<Cargo>, State(state): State<SharedState>, headers: HeaderMap) -> Response {
    let result = access.and_then(|access| {
        let repo = access.repository(&state)?;
        let base = format!("{}/cargo/{}", super::origin(&headers), access.repo);
        let body = format::render_config(&format!("{base}/api/v1/crates"), &base, !repo.allows_anonymous_read());
        Ok(([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "private, no-cache")], body)
            .into_response())
    });
    tagged("cargo_config", result)
}

/// `GET index/{1,2,3/a,ab/cd}/{name}`: the crate's index file, rendered
/// once per view and served with an ETag.
pub async fn index_file(
    access: Authorized<Cargo>,
    Path((_, path)): Path<(String, String)>,
    State(state): State<SharedState>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let access = access?;
        let name = format::name_from_index_path(&path).map_err(bad_request)?;
        let missing = || ApiError::not_found(format!("crate {name} not found"), STYLE);
        let view = state.view(&access.repo, &crate_id(&name), &name, STYLE).await?.ok_or_else(missing)?;
        // Only the kept spelling has an index file; cargo offers the other
        // spelling itself when a lookup fails.
        if view.index().display_name.to_ascii_lowercase() != name {
            return Err(missing());
        }
        let rendered = view.rendered("cargo:index", format::render_index_file);
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
    access: Authorized<Cargo>,
    Path((_, krate, version)): Path<(String, String, String)>,
    State(state): State<SharedState>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let access = access?;
        let (id, key) = crate_and_version(&krate, &version)?;
        let missing = || ApiError::not_found(format!("{krate}@{version} not found"), STYLE);
        let view = state.view(&access.repo, &id, &krate, STYLE).await?.ok_or_else(missing)?;
        let file = view.index().versions.get(&key).and_then(|e| e.assets.keys().next().cloned()).ok_or_else(missing)?;
        let digests = state.stored_asset(&access.repo, &view, &id, &key, &file, STYLE).await?;
        blob::serve(&state.packages.registry, &digests, "application/octet-stream", &method, &headers, STYLE).await
    }
    .await;
    tagged("cargo_download", result)
}

/// `PUT api/v1/crates/new`: cargo's framed body, streamed. The metadata is
/// checked as soon as it arrives, the `.crate` goes straight to staging and
/// through the publish pipeline (exactly one of concurrent publishers wins).
pub async fn publish(
    access: Authorized<Cargo>,
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    tagged("cargo_publish", async { publish_crate(&state, &access?, &headers, body).await }.await)
}

async fn publish_crate(
    state: &SharedState,
    access: &Access<Cargo>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (new, staged) = read_publish_body(state, headers, body).await?;
    let name = new.name.clone();
    let vers = new.version.to_string();
    let mut publication = Publication::new(&access.repo, crate_id(&name), &name, format::version_key(&new.version));
    publication.keeps_spelling = true;
    publication.conflict = Some(format!(
        "crate version {name}@{} is already uploaded with different contents; versions are immutable, so publish a new version (and yank this one if it is broken)",
        publication.version
    ));
    let (crate_name, crate_version) = (name.clone(), vers.clone());
    let inspect = move |reader| {
        archive::inspect_crate(reader, &crate_name, &crate_version, ArchiveLimits::default())
            .map_err(|e| CoreError::Invalid(e.to_string()))
    };
    let accepted = state.packages.accept(&publication, staged, &Declared::default(), inspect).await;
    let (info, digests) = accepted.map_err(|e| ApiError::from_core(e, STYLE))?;
    let mut metadata = new.metadata;
    metadata["publisher"] = json!(access.principal.name());
    let asset = NewAsset {
        name: format::crate_filename(&name, &vers),
        digests,
        metadata: json!({"fileCount": info.file_count, "unpackedSize": info.unpacked_size}),
    };
    let new = NewVersion { version: publication.version.clone(), metadata, assets: vec![asset], tags: Vec::new() };
    let written = state.packages.write(&publication, Placement::Version { new, withdrawals: None }).await;
    let other: Vec<String> = match written.map_err(|e| ApiError::from_core(e, STYLE))? {
        PublishOutcome::Created => Vec::new(),
        PublishOutcome::AlreadyPublished => {
            vec![format!("{name}@{vers} was already published with these exact bytes; nothing changed")]
        }
    };
    Ok(axum::Json(json!({"warnings": {"invalid_categories": [], "invalid_badges": [], "other": other}}))
        .into_response())
}

/// Reads cargo's framing (u32 LE length, JSON metadata, u32 LE length,
/// `.crate`) as it streams: the metadata is checked before the first byte of
/// the `.crate` is staged.
async fn read_publish_body(
    state: &SharedState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(NewCrateVersion, StagedBlob), ApiError> {
    let limits = state.limits;
    let max_metadata = limits.max_metadata_bytes as u64;
    let max_body = 8 + max_metadata + limits.max_upload_bytes;
    let too_large = || {
        let message = format!("the publish body exceeds the upload limit of {} bytes", limits.max_upload_bytes);
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, message, STYLE)
    };
    if super::declared_length(headers).is_some_and(|n| n > max_body) {
        return Err(too_large());
    }
    let mut frames = PublishFrameReader::new(max_metadata, limits.max_upload_bytes);
    let mut new: Option<NewCrateVersion> = None;
    let split = |chunk| {
        let events = frames.feed(chunk).map_err(|e| {
            let status = if e.is_too_large() { StatusCode::PAYLOAD_TOO_LARGE } else { StatusCode::BAD_REQUEST };
            ApiError::new(status, e.to_string(), STYLE)
        })?;
        let mut parts = Vec::with_capacity(events.len());
        for event in events {
            match event {
                FrameEvent::Metadata(json) => new = Some(format::parse_publish_metadata(&json).map_err(bad_request)?),
                FrameEvent::CrateStart(_) => parts.push(Embedded::Start(String::new())),
                FrameEvent::CrateData(bytes) => parts.push(Embedded::Data(bytes)),
                FrameEvent::CrateEnd => parts.push(Embedded::End),
            }
        }
        Ok(parts)
    };
    let registry = &state.packages.registry;
    // The framing reader refuses a frame past its limit itself, naming which.
    let limits = (u64::MAX, limits.max_upload_bytes);
    let staged = staging::stage_embedded(registry, body, limits, STYLE, too_large, split).await?;
    match (frames.finish(), new, staged) {
        (Ok(()), Some(new), Some((_, staged))) => Ok((new, staged)),
        (finished, _, staged) => {
            if let Some((_, staged)) = staged {
                staged.discard().await;
            }
            Err(finished.err().map(bad_request).unwrap_or_else(|| bad_request("the body has no metadata or no .crate")))
        }
    }
}

/// `DELETE api/v1/crates/{crate}/{version}/yank`: Published → Unlisted.
pub async fn yank(
    access: Authorized<Cargo>,
    Path((_, krate, version)): Path<(String, String, String)>,
    State(state): State<SharedState>,
) -> Response {
    tagged("cargo_yank", async { change_yank(&state, &access?, &krate, &version, true).await }.await)
}

/// `PUT api/v1/crates/{crate}/{version}/unyank`: Unlisted → Published.
pub async fn unyank(
    access: Authorized<Cargo>,
    Path((_, krate, version)): Path<(String, String, String)>,
    State(state): State<SharedState>,
) -> Response {
    tagged("cargo_unyank", async { change_yank(&state, &access?, &krate, &version, false).await }.await)
}

async fn change_yank(
    state: &SharedState,
    access: &Access<Cargo>,
    krate: &str,
    version: &str,
    yank: bool,
) -> Result<Response, ApiError> {
    let (id, key) = crate_and_version(krate, version)?;
    let (from, to) = if yank {
        (VersionStatus::Published, VersionStatus::Unlisted)
    } else {
        (VersionStatus::Unlisted, VersionStatus::Published)
    };
    // Compare-and-swap from the one status this operation starts from, so
    // an Archived version is never brought back by an unyank.
    match state.packages.registry.set_status(&access.repo, &id, &key, Some(from), to, access.principal.name()).await {
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
    access: Authorized<Cargo>,
    Path((_, krate)): Path<(String, String)>,
    State(state): State<SharedState>,
    method: Method,
) -> Response {
    let result = async {
        let access = access?;
        if method != Method::GET && method != Method::HEAD {
            return Err(bad_request(format!(
                "crate owners cannot be changed in Wharf: who may publish {krate} is decided by repository {}'s access.publish",
                access.repo
            )));
        }
        format::validate_name(&krate).map_err(bad_request)?;
        let snapshot = state.package(&access.repo, &crate_id(&krate), STYLE).await?
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

/// The first `per_page` of `names` that have an installable version, as
/// cargo shows them, and how many such crates there are in all.
async fn search_page(
    state: &SharedState,
    repo: &str,
    names: Vec<String>,
    per_page: usize,
) -> Result<(Vec<Value>, usize), ApiError> {
    let mut crates = Vec::new();
    let mut total = 0usize;
    for name in names {
        // Each match costs a snapshot read; stop loading once the page
        // is full and only count the rest.
        if crates.len() >= per_page {
            total += 1;
            continue;
        }
        let snapshot = state.package(repo, &PackageId::new(PackageFormat::Cargo, name), STYLE).await?;
        // A spelling claimed by a publish that then failed has no versions.
        let Some(snapshot) = snapshot.filter(|s| s.index.versions.values().any(|v| v.status.is_installable())) else {
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
    Ok((crates, total))
}

#[derive(Debug, Deserialize)]
pub struct SearchParams {
    q: Option<String>,
    per_page: Option<String>,
}

/// `GET api/v1/crates?q=&per_page=`: crates whose name contains `q`
/// (case-insensitive, `-` equal to `_`), exact match first, then by name.
pub async fn search(
    access: Authorized<Cargo>,
    State(state): State<SharedState>,
    Query(params): Query<SearchParams>,
) -> Response {
    let result = async {
        let access = access?;
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
            .packages
            .registry
            .package_names(&access.repo, PackageFormat::Cargo)
            .await
            .map_err(|e| ApiError::from_core(e, STYLE))?
            .into_iter()
            .filter(|name| name.contains(&query))
            .collect();
        names.sort_by(|a, b| (*a != query).cmp(&(*b != query)).then_with(|| a.cmp(b)));
        let (crates, total) = search_page(&state, &access.repo, names, per_page).await?;
        Ok(axum::Json(json!({"crates": crates, "meta": {"total": total}})).into_response())
    }
    .await;
    tagged("cargo_search", result)
}
