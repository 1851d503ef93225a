//! The management API's inventory under `/api/v1/`: the packages of a Repository, their
//! versions, one version in full, status changes in batches, copies between Repositories
//! (promotion), and the audit trail. Errors are the management API's `{"error": …}`.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use wharf_api::PackageFormat;
use wharf_core::{PackageIndex, VersionEntry, VersionStatus};

use super::access::Access;
use super::admin::{Admin, package_id, version_key};
use super::connections::ClientAddress;
use super::credentials::authenticate;
use super::openapi::ErrorBody;
use super::{ApiError, ErrorStyle, SharedState};
use crate::auth::{Permission, Principal};

const STYLE: ErrorStyle = ErrorStyle::Json;
/// Packages a page holds unless the caller asks for fewer.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

fn bad_request(error: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(error.to_string(), STYLE)
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PackageQuery {
    format: Option<String>,
    /// Names starting with this (as the format normalises them).
    prefix: Option<String>,
    /// `local` (a version published in the Domain) or `cached` (a version fetched
    /// through an external connection).
    origin: Option<String>,
    /// Packages with a version in this status.
    status: Option<VersionStatus>,
    /// `nextCursor` of the page before.
    cursor: Option<String>,
    limit: Option<usize>,
}

/// Where a package's versions came from: `local`, `cached` or `mixed`.
pub(super) fn origin_of(index: &PackageIndex) -> &'static str {
    let local = index.versions.values().any(|v| v.fetched_from.is_none());
    let cached = index.versions.values().any(|v| v.fetched_from.is_some());
    match (local, cached) {
        (true, true) => "mixed",
        (false, true) => "cached",
        _ => "local",
    }
}

/// `GET /api/v1/repositories/{repo}/packages`: the packages the Repository holds (its
/// own and those it keeps from upstream; not what its upstreams hold), by format and
/// name, in pages.
#[utoipa::path(get, path = "/api/v1/repositories/{repo}/packages", tag = "packages", params(("repo" = String, Path, description = "The Repository"), PackageQuery), security((), ("bearer" = [])), responses((status = 200, body = PackagePage), (status = 400, description = "The request is malformed", body = ErrorBody), (status = 401, description = "A credential is needed", body = ErrorBody), (status = 403, description = "The credential does not allow it", body = ErrorBody)))]
pub async fn list_packages(
    access: Access<Admin>,
    State(state): State<SharedState>,
    query: Result<Query<PackageQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| bad_request(e.body_text()))?;
    let formats: Vec<PackageFormat> = match &query.format {
        Some(format) => vec![format.parse().map_err(|_| bad_request(format!("unknown package format {format}")))?],
        None => PackageFormat::ALL.to_vec(),
    };
    let origin = match query.origin.as_deref() {
        None => None,
        Some(origin @ ("local" | "cached")) => Some(origin),
        Some(other) => return Err(bad_request(format!("origin is local or cached, not {other}"))),
    };
    let limit = query.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
    let registry = &state.packages.registry;
    let mut packages = Vec::new();
    let mut next_cursor = None;
    'formats: for format in formats {
        let mut names =
            registry.package_names(&access.repo, format).await.map_err(|e| ApiError::from_core(e, STYLE))?;
        names.sort_unstable();
        for name in names {
            let key = format!("{}/{name}", format.as_str());
            if query.cursor.as_ref().is_some_and(|cursor| key.as_str() <= cursor.as_str())
                || query.prefix.as_ref().is_some_and(|prefix| !name.starts_with(prefix.as_str()))
            {
                continue;
            }
            let id = wharf_core::PackageId::new(format, name);
            let Some(snapshot) = state.package(&access.repo, &id, STYLE).await? else { continue };
            let index = &snapshot.index;
            let package_origin = origin_of(index);
            if origin.is_some_and(|wanted| package_origin != wanted && package_origin != "mixed")
                || query.status.is_some_and(|status| !index.versions.values().any(|v| v.status == status))
            {
                continue;
            }
            if packages.len() == limit {
                next_cursor = packages.last().map(|p: &PackageSummary| format!("{}/{}", p.format, p.name));
                break 'formats;
            }
            let latest =
                index.tags.get("latest").cloned().or_else(|| {
                    index.listed_versions().max_by_key(|(_, v)| v.created).map(|(version, _)| version.clone())
                });
            let last_published = index.versions.values().filter(|v| v.fetched_from.is_none()).map(|v| v.created).max();
            packages.push(PackageSummary {
                format: format.as_str().to_owned(),
                display_name: index.display_name.clone(),
                versions: index.versions.len(),
                latest,
                origin: package_origin.to_owned(),
                last_published,
                modified: index.modified,
                name: id.name,
            });
        }
    }
    Ok(Json(PackagePage { repository: access.repo, packages, next_cursor }).into_response())
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PackagePage {
    repository: String,
    packages: Vec<PackageSummary>,
    /// Pass as `cursor` for the next page; `null` on the last.
    next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PackageSummary {
    format: String,
    /// As the format normalises it (the name in paths).
    name: String,
    /// As first published.
    display_name: String,
    versions: usize,
    latest: Option<String>,
    /// `local`, `cached` or `mixed`.
    origin: String,
    /// The newest version published here (not fetched).
    last_published: Option<DateTime<Utc>>,
    modified: Option<DateTime<Utc>>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionSummary {
    version: String,
    status: VersionStatus,
    created: DateTime<Utc>,
    /// `local` (published here) or `cached` (fetched through `connection`).
    origin: String,
    connection: Option<String>,
    published_by: Option<String>,
    files: usize,
}

/// A version as listings show it.
fn version_summary(version: &str, entry: &VersionEntry) -> VersionSummary {
    VersionSummary {
        version: version.to_owned(),
        status: entry.status,
        created: entry.created,
        origin: origin_name(entry).to_owned(),
        connection: entry.fetched_from.clone(),
        published_by: entry.published_by.clone(),
        files: entry.assets.len(),
    }
}

fn origin_name(entry: &VersionEntry) -> &'static str {
    if entry.fetched_from.is_some() { "cached" } else { "local" }
}

async fn held_package(
    state: &SharedState,
    repo: &str,
    format: &str,
    package: &str,
) -> Result<(wharf_core::PackageId, std::sync::Arc<wharf_core::PackageSnapshot>), ApiError> {
    let id = package_id(format, package)?;
    let snapshot = state
        .package(repo, &id, STYLE)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("repository {repo} has no {format} package {package}"), STYLE))?;
    Ok((id, snapshot))
}

/// `GET …/packages/{format}/{package}/versions`: every version the Repository holds, with
/// its status and origin, and the package's tags.
#[utoipa::path(get, path = "/api/v1/repositories/{repo}/packages/{format}/{package}/versions", tag = "versions", params(("repo" = String, Path, description = "The Repository"), ("format" = String, Path, description = "npm, pypi, cargo, go, maven, nuget, swift or generic"), ("package" = String, Path, description = "The package name (a Maven groupId:artifactId, a generic namespace%2Fpackage, a Swift scope.name, a Go module path with %2F)")), security((), ("bearer" = [])), responses((status = 200, body = VersionList), (status = 400, description = "The request is malformed", body = ErrorBody), (status = 401, description = "A credential is needed", body = ErrorBody), (status = 403, description = "The credential does not allow it", body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_versions(
    access: Access<Admin>,
    Path((_, format, package)): Path<(String, String, String)>,
    State(state): State<SharedState>,
) -> Result<Response, ApiError> {
    let (id, snapshot) = held_package(&state, &access.repo, &format, &package).await?;
    let index = &snapshot.index;
    let versions = index.versions.iter().map(|(v, entry)| version_summary(v, entry)).collect();
    let list = VersionList {
        repository: access.repo,
        format: id.format.as_str().to_owned(),
        name: id.name,
        display_name: index.display_name.clone(),
        tags: index.tags.clone(),
        versions,
    };
    Ok(Json(list).into_response())
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionList {
    repository: String,
    format: String,
    name: String,
    display_name: String,
    /// Named pointers to versions (npm's dist-tags).
    tags: BTreeMap<String, String>,
    versions: Vec<VersionSummary>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionDetail {
    repository: String,
    format: String,
    package: String,
    version: String,
    status: VersionStatus,
    /// Who changed the status and when, oldest first (the last 16).
    status_history: Vec<StatusChangeBody>,
    created: DateTime<Utc>,
    published_by: Option<String>,
    origin: String,
    connection: Option<String>,
    deprecated: Option<String>,
    tags: Vec<String>,
    assets: Vec<AssetDetail>,
    dependencies: Vec<wharf_formats::inventory::Dependency>,
    readme: Option<String>,
    /// The format's own description of the version, as published.
    metadata: Value,
}

#[derive(Serialize, ToSchema)]
pub struct StatusChangeBody {
    status: VersionStatus,
    by: String,
    at: DateTime<Utc>,
}

#[derive(Serialize, ToSchema)]
pub struct AssetDetail {
    name: String,
    size: u64,
    sha256: String,
    sha512: String,
    sha1: String,
    md5: String,
    created: DateTime<Utc>,
}

/// Largest POM read to list a Maven version's dependencies.
const MAX_POM_BYTES: u64 = 1024 * 1024;

/// What a version depends on: as its stored metadata says, or for Maven as its POM (read
/// from storage when the Domain holds it) says.
pub(super) async fn dependencies_of(
    state: &SharedState,
    format: PackageFormat,
    entry: &VersionEntry,
) -> Vec<wharf_formats::inventory::Dependency> {
    if format != PackageFormat::Maven {
        return wharf_formats::inventory::dependencies(format, &entry.metadata);
    }
    let pom = entry.assets.values().find(|asset| {
        asset.name.ends_with(".pom") && !asset.digests.sha256.is_empty() && asset.digests.size <= MAX_POM_BYTES
    });
    let Some(pom) = pom else { return Vec::new() };
    match state.packages.registry.small_blob(&pom.digests.sha256).await {
        Ok(Some(bytes)) => wharf_formats::inventory::pom_dependencies(&bytes),
        Ok(None) => Vec::new(),
        Err(error) => {
            tracing::warn!(pom = %pom.name, %error, "a POM could not be read for its dependencies");
            Vec::new()
        }
    }
}

/// `GET …/packages/{format}/{package}/versions/{version}`: one version in full: its files
/// with every digest, origin, status and who changed it, publisher, dependencies and
/// readme where the format keeps them, and the format's own metadata.
#[utoipa::path(get, path = "/api/v1/repositories/{repo}/packages/{format}/{package}/versions/{version}", tag = "versions", params(("repo" = String, Path, description = "The Repository"), ("format" = String, Path, description = "npm, pypi, cargo, go, maven, nuget, swift or generic"), ("package" = String, Path, description = "The package name (a Maven groupId:artifactId, a generic namespace%2Fpackage, a Swift scope.name, a Go module path with %2F)"), ("version" = String, Path)), security((), ("bearer" = [])), responses((status = 200, body = VersionDetail), (status = 400, description = "The request is malformed", body = ErrorBody), (status = 401, description = "A credential is needed", body = ErrorBody), (status = 403, description = "The credential does not allow it", body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_version(
    access: Access<Admin>,
    Path((_, format, package, version)): Path<(String, String, String, String)>,
    State(state): State<SharedState>,
) -> Result<Response, ApiError> {
    let (id, snapshot) = held_package(&state, &access.repo, &format, &package).await?;
    let version = version_key(&id, &version)?;
    let index = &snapshot.index;
    let entry = index
        .versions
        .get(&version)
        .ok_or_else(|| ApiError::not_found(format!("{package} has no version {version} here"), STYLE))?;
    let assets = entry
        .assets
        .values()
        .map(|asset| {
            let digests = &asset.digests;
            AssetDetail {
                name: asset.name.clone(),
                size: digests.size,
                sha256: digests.sha256.clone(),
                sha512: digests.sha512.clone(),
                sha1: digests.sha1.clone(),
                md5: digests.md5.clone(),
                created: asset.created,
            }
        })
        .collect();
    let status_history = index
        .status_changes
        .get(&version)
        .into_iter()
        .flatten()
        .map(|change| StatusChangeBody { status: change.status, by: change.by.clone(), at: change.at })
        .collect();
    let tags = index.tags.iter().filter(|(_, v)| **v == version).map(|(tag, _)| tag.clone()).collect();
    let detail = VersionDetail {
        repository: access.repo,
        format: id.format.as_str().to_owned(),
        package: index.display_name.clone(),
        status: entry.status,
        status_history,
        created: entry.created,
        published_by: entry.published_by.clone(),
        origin: origin_name(entry).to_owned(),
        connection: entry.fetched_from.clone(),
        deprecated: entry.deprecated.clone(),
        tags,
        assets,
        dependencies: dependencies_of(&state, id.format, entry).await,
        readme: wharf_formats::inventory::readme(id.format, &entry.metadata).map(str::to_owned),
        metadata: entry.metadata.clone(),
        version,
    };
    Ok(Json(detail).into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StatusBatch {
    versions: Vec<String>,
    status: VersionStatus,
    /// Change only the versions in this status now.
    expected_status: Option<VersionStatus>,
}

/// `POST …/packages/{format}/{package}/versions/status`: one status for many versions,
/// each changed only if it is in `expectedStatus` (when given); the answer says per
/// version what happened. Needs publish rights on the Repository.
#[utoipa::path(post, path = "/api/v1/repositories/{repo}/packages/{format}/{package}/versions/status", tag = "versions", params(("repo" = String, Path, description = "The Repository"), ("format" = String, Path, description = "npm, pypi, cargo, go, maven, nuget, swift or generic"), ("package" = String, Path, description = "The package name (a Maven groupId:artifactId, a generic namespace%2Fpackage, a Swift scope.name, a Go module path with %2F)")), request_body = StatusBatch, responses((status = 200, body = StatusBatchResult), (status = 400, description = "The request is malformed", body = ErrorBody), (status = 401, description = "A credential is needed", body = ErrorBody), (status = 403, description = "The credential does not allow it", body = ErrorBody)))]
pub async fn set_statuses(
    access: Access<Admin>,
    Path((repo, format, package)): Path<(String, String, String)>,
    State(state): State<SharedState>,
    body: Result<Json<StatusBatch>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(batch) = body.map_err(|e| bad_request(e.body_text()))?;
    let StatusBatch { status, expected_status, .. } = batch;
    if status == VersionStatus::Unfinished {
        return Err(bad_request("a version cannot be set back to Unfinished"));
    }
    if batch.versions.is_empty() || batch.versions.len() > 1000 {
        return Err(bad_request("name 1 to 1000 versions"));
    }
    let id = package_id(&format, &package)?;
    let registry = &state.packages.registry;
    let mut changed = Vec::new();
    let mut failed = BTreeMap::new();
    for version in &batch.versions {
        let key = version_key(&id, version)?;
        match registry.set_status(&repo, &id, &key, expected_status, status, access.principal.name()).await {
            Ok(()) => changed.push(key),
            Err(error) => {
                let code = match &error {
                    wharf_core::CoreError::NotFound(_) => "NOT_FOUND",
                    wharf_core::CoreError::StatusMismatch { .. } => "MISMATCHED_STATUS",
                    wharf_core::CoreError::Conflict(_) => "NOT_ALLOWED",
                    _ => return Err(ApiError::from_core(error, STYLE)),
                };
                failed.insert(key, FailedChange { code: code.to_owned(), message: error.to_string() });
            }
        }
    }
    if status == VersionStatus::Disposed && !changed.is_empty() {
        state.collector.wake();
    }
    Ok(Json(StatusBatchResult { status, changed, failed }).into_response())
}

#[derive(Serialize, ToSchema)]
pub struct StatusBatchResult {
    status: VersionStatus,
    changed: Vec<String>,
    /// Per version: `NOT_FOUND`, `MISMATCHED_STATUS` (not in `expectedStatus`) or
    /// `NOT_ALLOWED` (Disposed is final).
    failed: BTreeMap<String, FailedChange>,
}

#[derive(Serialize, ToSchema)]
pub struct FailedChange {
    code: String,
    message: String,
}

/// `GET …/packages/{format}/{package}/explain`: why each version of the package is or is
/// not served to the Repository's clients: the Repositories and the external connection a
/// read goes through and what each has, the rules that apply (cooldown, blocked versions,
/// origin control), and per version where it comes from and what hides it. What the web
/// interface's package and explain pages show. Repositories the caller may not read are
/// not named.
#[utoipa::path(get, path = "/api/v1/repositories/{repo}/packages/{format}/{package}/explain", tag = "packages", params(("repo" = String, Path, description = "The Repository"), ("format" = String, Path, description = "npm, pypi, cargo, go, maven, nuget, swift or generic"), ("package" = String, Path, description = "The package name (a Maven groupId:artifactId, a generic namespace%2Fpackage, a Swift scope.name, a Go module path with %2F)")), security((), ("bearer" = [])), responses((status = 200, body = wharf_core::explain::Explanation), (status = 400, description = "The request is malformed", body = ErrorBody), (status = 401, description = "A credential is needed", body = ErrorBody), (status = 403, description = "The credential does not allow it", body = ErrorBody)))]
pub async fn explain(
    access: Access<Admin>,
    Path((_, format, package)): Path<(String, String, String)>,
    State(state): State<SharedState>,
) -> Result<Response, ApiError> {
    let id = package_id(&format, &package)?;
    let config = &state.packages.config;
    let readable = |name: &str| config.repository(name).is_some_and(|r| access.principal.may(r, Permission::Read));
    let explanation = state.packages.explain(&access.repo, &id, &package, readable).await;
    Ok(Json(explanation.map_err(|e| ApiError::from_core(e, STYLE))?).into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CopyRequest {
    /// The Repository copied from (the destination is the path's).
    source: String,
    format: String,
    package: String,
    /// The versions to copy; every version with `allVersions`.
    #[serde(default)]
    versions: Vec<String>,
    #[serde(default)]
    all_versions: bool,
    #[serde(default)]
    allow_overwrite: bool,
    #[serde(default)]
    include_from_upstream: bool,
}

/// `POST /api/v1/repositories/{repo}/copy`: copies versions of a package from `source`
/// into this Repository (promotion). Needs read on the source and publish here; replacing
/// a version with other contents (`allowOverwrite`) needs the admin token.
#[utoipa::path(post, path = "/api/v1/repositories/{repo}/copy", tag = "versions", params(("repo" = String, Path, description = "The destination Repository")), request_body = CopyRequest, responses((status = 200, body = wharf_core::copy::CopyReport), (status = 400, description = "The request is malformed", body = ErrorBody), (status = 401, description = "A credential is needed", body = ErrorBody), (status = 403, description = "The credential does not allow it", body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn copy(
    access: Access<Admin>,
    State(state): State<SharedState>,
    client: Option<axum::Extension<ClientAddress>>,
    headers: HeaderMap,
    body: Result<Json<CopyRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body.map_err(|e| bad_request(e.body_text()))?;
    // The source is reached as the path's Repository is: access and network rules.
    let address = client.map(|client| client.0.0);
    state.authorize_named(&request.source, &headers, Permission::Read, address, STYLE).await?;
    let report = perform_copy(&state, &access.repo, &access.principal, &request).await?;
    Ok(Json(report).into_response())
}

impl CopyRequest {
    /// A copy of the named versions of `id` from `source`, as a person picks them (in the
    /// web interface): fetched copies included, nothing overwritten.
    pub(super) fn of_versions(source: &str, id: &wharf_core::PackageId, versions: Vec<String>) -> CopyRequest {
        CopyRequest {
            source: source.to_owned(),
            format: id.format.as_str().to_owned(),
            package: id.name.clone(),
            versions,
            all_versions: false,
            allow_overwrite: false,
            include_from_upstream: true,
        }
    }
}

/// Copies as `request` says into `destination`, for `principal`, who was authorised to
/// read the source and publish to the destination; announces what was copied.
pub(super) async fn perform_copy(
    state: &SharedState,
    destination: &str,
    principal: &Principal,
    request: &CopyRequest,
) -> Result<wharf_core::copy::CopyReport, ApiError> {
    if request.versions.is_empty() != request.all_versions {
        return Err(bad_request("name the versions to copy, or set allVersions (not both)"));
    }
    if request.allow_overwrite && *principal != Principal::Admin {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "allowOverwrite replaces a published version, which is for administrators",
            STYLE,
        ));
    }
    let id = package_id(&request.format, &request.package)?;
    let versions: Vec<String> = request.versions.iter().map(|v| version_key(&id, v)).collect::<Result<_, _>>()?;
    let copy = wharf_core::copy::Copy {
        source: &request.source,
        destination,
        id: &id,
        versions: (!request.all_versions).then_some(versions.as_slice()),
        allow_overwrite: request.allow_overwrite,
        include_from_upstream: request.include_from_upstream,
        by: principal.name(),
    };
    let report = state.packages.copy(&copy).await.map_err(|e| ApiError::from_core(e, STYLE))?;
    if !report.copied.is_empty() {
        state.collector.report_action(wharf_api::usage::RepositoryAction {
            id: uuid::Uuid::new_v4().to_string(),
            at: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            kind: "Copied".to_owned(),
            repository: destination.to_owned(),
            format: id.format.as_str().to_owned(),
            package: id.name.clone(),
            versions: report.copied.clone(),
            by: principal.name().to_owned(),
            source: Some(request.source.clone()),
        });
    }
    tracing::info!(source = %request.source, %destination, package = %id.name, copied = report.copied.len(), "copied versions");
    Ok(report)
}

/// `GET /api/v1/audit`: recorded events (see [`crate::audit`]). Administrators see every
/// event; others must name a `repository` they may publish to and see its events only.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(crate::audit::AuditQuery), responses((status = 200, body = AuditEvents), (status = 400, description = "The request is malformed", body = ErrorBody), (status = 401, description = "A credential is needed", body = ErrorBody), (status = 403, description = "The credential does not allow it", body = ErrorBody)))]
pub async fn audit(
    State(state): State<SharedState>,
    client: Option<axum::Extension<ClientAddress>>,
    headers: HeaderMap,
    query: Result<Query<crate::audit::AuditQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let principal = authenticate(&state, &headers, "api", STYLE).await?;
    let Query(query) = query.map_err(|e| bad_request(e.body_text()))?;
    if principal != Principal::Admin {
        let Some(name) = &query.repository else {
            return Err(match principal {
                Principal::Anonymous => ApiError::unauthorized("the audit trail needs a credential", "api", STYLE),
                _ => ApiError::new(
                    StatusCode::FORBIDDEN,
                    "name a repository you may publish to (?repository=); the whole audit trail is for administrators",
                    STYLE,
                ),
            });
        };
        let address = client.map(|client| client.0.0);
        state.authorize_named(name, &headers, Permission::Publish, address, STYLE).await?;
    }
    let mut events = state.audit.query(&query).await.map_err(|e| ApiError::from_storage(&e, STYLE))?;
    // A copy's event names where it came from: only to those who may read that Repository.
    let readable = |name: &str| {
        state.packages.config.repository(name).is_some_and(|repository| principal.may(repository, Permission::Read))
    };
    for event in &mut events {
        let details = &mut event.data.details;
        if details.get("sourceRepository").and_then(Value::as_str).is_some_and(|source| !readable(source)) {
            details.remove("sourceRepository");
        }
    }
    Ok(Json(AuditEvents { events }).into_response())
}

#[derive(Serialize, ToSchema)]
pub struct AuditEvents {
    /// Oldest first.
    events: Vec<crate::audit::AuditEvent>,
}
