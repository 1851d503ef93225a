//! Maven endpoints under `/maven/{repo}/`: the repository layout over GET,
//! HEAD and PUT (what `mvn deploy` and dependency resolution use), with
//! `maven-metadata.xml` generated from the package index and checksum
//! sidecars served from the digests storage computed.
//!
//! Maven has no "publish" call: a deploy is a series of PUTs, each file
//! then its `.sha1`/`.md5`, and after all files the `maven-metadata.xml`
//! the client merged (maven-resolver uploads all artifacts of a deploy,
//! then all metadata; maven-deploy-plugin 3 sends the POM first). So:
//! - A version (a release, or one timestamped build of a SNAPSHOT) is
//!   created Unfinished by its first file: neither listed nor
//!   downloadable. It becomes Published when the client uploads metadata
//!   naming it, the last step of a deploy; a deploy that fails half-way
//!   (a 409 on one file, a lost connection) never shows. When a build of
//!   a SNAPSHOT is published, the older builds of that SNAPSHOT become
//!   Unlisted (still downloadable by their exact names).
//! - The uploaded metadata is read only for that: which of the client's
//!   Unfinished versions it names. Its content is never stored or served;
//!   two concurrent deploys each merge their own version into what they
//!   read, and the later write would drop the other's. The server renders
//!   the metadata from what is stored instead.
//! - Checksum sidecars are compared with the stored file's digests (400 on
//!   a mismatch) and not stored; GETs answer from the stored digests.
//!
//! A Repository with upstreams reads through its chain (`wharf_core::chain`):
//! `maven-metadata.xml` is rendered from the merged, policy-filtered view,
//! and a file of a release from the external connection is fetched once
//! and kept. Deploys are origin-checked like the other formats' publishes.

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures::{StreamExt, TryStreamExt};
use wharf_api::PackageFormat;

use super::access::{Authorized, Client};
use super::metrics::tagged;
use super::{ApiError, ErrorStyle, SharedState, blob};
use wharf_core::{
    Declared, Digest, NewAsset, PackageId, PackageIndex, Placement, Publication, PublishOutcome, VersionStatus,
};
use wharf_formats::maven::{
    self as format, ArtifactFile, ChecksumAlgorithm, Coordinates, FileVersion, MetadataLevel, RepositoryPath,
};
use wharf_storage::{BlobDigests, BodyError};

/// Maven shows the status code and reason phrase of a failed transfer.
pub enum Maven {}

impl Client for Maven {
    const STYLE: ErrorStyle = ErrorStyle::Text;
}

const STYLE: ErrorStyle = Maven::STYLE;
/// Largest checksum sidecar accepted: a SHA-512 hex digest and a file name.
const MAX_SIDECAR_BYTES: usize = 1024;

/// Authorised before the path is looked at: an anonymous client of a
/// private repository gets the challenge Maven waits for.
pub async fn dispatch(
    access: Authorized<Maven>,
    Path((_, path)): Path<(String, String)>,
    State(state): State<SharedState>,
    request: Request,
) -> Response {
    let (operation, result) = match access {
        Ok(access) => handle(&state, &access.repo, &path, request).await,
        Err(refused) => ("maven", Err(refused)),
    };
    tagged(operation, result)
}

async fn handle(
    state: &SharedState,
    repo_name: &str,
    path: &str,
    request: Request,
) -> (&'static str, Result<Response, ApiError>) {
    let method = request.method().clone();
    let read = method == Method::GET || method == Method::HEAD;
    if !read && method != Method::PUT {
        let refused = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not supported; files are immutable (change a version's status through /api/v1)"),
            STYLE,
        );
        return ("maven", Err(refused));
    }
    let headers = request.headers().clone();
    let parsed = match format::parse_path(path) {
        Ok(parsed) => parsed,
        Err(e) => return ("maven", Err(ApiError::bad_request(e.to_string(), STYLE))),
    };
    let body = request.into_body();
    match (parsed, read) {
        (RepositoryPath::Metadata { coordinates, level, checksum }, true) => {
            ("maven_metadata", metadata(state, repo_name, &coordinates, &level, checksum, &method, &headers).await)
        }
        (RepositoryPath::Metadata { coordinates, level, checksum }, false) => {
            ("maven_metadata_upload", complete_deploy(state, repo_name, &coordinates, &level, checksum, body).await)
        }
        (RepositoryPath::File { file, checksum: Some(algorithm) }, true) => {
            ("maven_checksum", checksum(state, repo_name, &file, algorithm, &method).await)
        }
        (RepositoryPath::File { file, checksum: None }, true) => {
            ("maven_file", download(state, repo_name, &file, &method, &headers).await)
        }
        (RepositoryPath::File { file, checksum: Some(algorithm) }, false) => {
            ("maven_checksum_upload", verify_checksum(state, repo_name, &file, algorithm, body).await)
        }
        (RepositoryPath::File { file, checksum: None }, false) => {
            ("maven_upload", upload(state, repo_name, &file, &headers, body).await)
        }
    }
}

fn package_id(coordinates: &Coordinates) -> PackageId {
    PackageId::new(PackageFormat::Maven, coordinates.package_name())
}

/// The core version and stored file name a layout file names. The
/// unversioned SNAPSHOT name (`lib-1.1-SNAPSHOT.jar`) means the newest
/// listed build's file.
fn stored_name(index: &PackageIndex, file: &ArtifactFile) -> Option<(String, String)> {
    match &file.version {
        FileVersion::Release(version) => Some((version.clone(), file.file_name.clone())),
        FileVersion::SnapshotBuild(build) => Some((build.version(), file.file_name.clone())),
        FileVersion::LatestSnapshot { base_version } => {
            let (build, _) = format::newest_listed_build(index, base_version)?;
            let version = build.version();
            let name = file.file_name_in(&version);
            Some((version, name))
        }
    }
}

/// The digests of a file clients may download: its version is Published
/// or Unlisted (an Unfinished version is not there yet).
async fn downloadable(
    state: &SharedState,
    repo_name: &str,
    file: &ArtifactFile,
) -> Result<(BlobDigests, DateTime<Utc>), ApiError> {
    let missing = || ApiError::not_found(format!("{} not found", file.file_name), STYLE);
    let id = package_id(&file.coordinates);
    let view = state.view(repo_name, &id, &id.name, STYLE).await?.ok_or_else(missing)?;
    let (version, name) = stored_name(view.index(), file).ok_or_else(missing)?;
    let stored = state.packages.stored_layout_file(repo_name, &view, &id, &version, &name).await;
    let digests = stored.map_err(|e| ApiError::from_core(e, STYLE))?;
    let created = view.index().versions.get(&version).and_then(|e| e.assets.get(&name)).map(|a| a.created);
    Ok((digests, created.unwrap_or_else(Utc::now)))
}

/// The resolver takes `X-Checksum-*` headers instead of fetching sidecars.
fn checksum_headers(headers: &mut HeaderMap, sha1: &str, md5: &str, sha256: &str) {
    for (name, value) in [("x-checksum-sha1", sha1), ("x-checksum-md5", md5), ("x-checksum-sha256", sha256)] {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
}

fn last_modified(headers: &mut HeaderMap, modified: Option<DateTime<Utc>>) {
    if let Some(modified) = modified
        && let Ok(value) = HeaderValue::from_str(&modified.format("%a, %d %b %Y %H:%M:%S GMT").to_string())
    {
        headers.insert(header::LAST_MODIFIED, value);
    }
}

/// A small generated body (a checksum, metadata), without the body on HEAD.
fn small_body(method: &Method, content_type: &'static str, body: bytes::Bytes, mut headers: HeaderMap) -> Response {
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    if *method == Method::HEAD {
        return (StatusCode::OK, headers).into_response();
    }
    (StatusCode::OK, headers, body).into_response()
}

async fn download(
    state: &SharedState,
    repo_name: &str,
    file: &ArtifactFile,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let (digests, created) = downloadable(state, repo_name, file).await?;
    let content_type = format::content_type(&file.extension);
    let mut response = blob::serve(&state.packages.registry, &digests, content_type, method, headers, STYLE).await?;
    checksum_headers(response.headers_mut(), &digests.sha1, &digests.md5, &digests.sha256);
    last_modified(response.headers_mut(), Some(created));
    if matches!(file.version, FileVersion::LatestSnapshot { .. }) {
        // The newest build changes under this name: revalidate every time.
        response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-cache"));
    }
    Ok(response)
}

async fn checksum(
    state: &SharedState,
    repo_name: &str,
    file: &ArtifactFile,
    algorithm: ChecksumAlgorithm,
    method: &Method,
) -> Result<Response, ApiError> {
    let (digests, created) = downloadable(state, repo_name, file).await?;
    let body = bytes::Bytes::from(algorithm.stored(&digests).to_owned());
    let mut headers = HeaderMap::new();
    last_modified(&mut headers, Some(created));
    Ok(small_body(method, "text/plain; charset=utf-8", body, headers))
}

async fn metadata(
    state: &SharedState,
    repo_name: &str,
    coordinates: &Coordinates,
    level: &MetadataLevel,
    checksum: Option<ChecksumAlgorithm>,
    method: &Method,
    request_headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let missing = || ApiError::not_found(format!("no metadata for {}", coordinates.package_name()), STYLE);
    let render = |index: &PackageIndex| {
        match level {
            MetadataLevel::Artifact => format::render_artifact_metadata(index, coordinates),
            MetadataLevel::Snapshot { base_version } => {
                format::render_snapshot_metadata(index, coordinates, base_version)
            }
        }
        .unwrap_or_default()
    };
    let key = match level {
        MetadataLevel::Artifact => "maven:artifact".to_owned(),
        MetadataLevel::Snapshot { base_version } => format!("maven:snapshot:{base_version}"),
    };
    // Rendered from the view, after policy: blocked and too-young versions
    // are gone and `latest`/`release` follow.
    let id = package_id(coordinates);
    let view = state.view(repo_name, &id, &id.name, STYLE).await?.ok_or_else(missing)?;
    let (rendered, modified) = (view.rendered(&key, render), view.index().modified);
    if rendered.body.is_empty() {
        return Err(missing());
    }
    let mut headers = HeaderMap::new();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-cache"));
    last_modified(&mut headers, modified);
    if let Some(algorithm) = checksum {
        let body = bytes::Bytes::from(algorithm.compute(&rendered.body));
        return Ok(small_body(method, "text/plain; charset=utf-8", body, headers));
    }
    let sha1 = ChecksumAlgorithm::Sha1.compute(&rendered.body);
    let md5 = ChecksumAlgorithm::Md5.compute(&rendered.body);
    let sha256 = ChecksumAlgorithm::Sha256.compute(&rendered.body);
    checksum_headers(&mut headers, &sha1, &md5, &sha256);
    if let Ok(etag) = HeaderValue::from_str(&rendered.etag) {
        headers.insert(header::ETAG, etag);
    }
    if request_headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(rendered.etag.as_str()) {
        return Ok((StatusCode::NOT_MODIFIED, headers).into_response());
    }
    Ok(small_body(method, "application/xml", rendered.body, headers))
}

/// Reads a small request body, refusing it past `limit` bytes (413).
async fn read_small(body: Body, limit: usize, what: &str) -> Result<bytes::Bytes, ApiError> {
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("failed to read the request body: {e}"), STYLE))?;
        if bytes.len() + chunk.len() > limit {
            return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("{what} exceeds {limit} bytes"), STYLE));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes.into())
}

/// A client uploads the metadata it merged after the files of a deploy:
/// the versions it names that are still Unfinished are published (see
/// the module docs). The content itself, and its sidecars, are checked
/// for form and dropped.
async fn complete_deploy(
    state: &SharedState,
    repo_name: &str,
    coordinates: &Coordinates,
    level: &MetadataLevel,
    checksum: Option<ChecksumAlgorithm>,
    body: Body,
) -> Result<Response, ApiError> {
    let document = read_small(body, state.limits.max_metadata_bytes, "maven-metadata.xml").await?;
    let accepted = || {
        (StatusCode::OK, "accepted; the registry generates maven-metadata.xml from the files it stores\n")
            .into_response()
    };
    if let Some(algorithm) = checksum {
        // The checksum of the client's own document, which is not kept:
        // only its form can be checked.
        algorithm.parse_sidecar(&document).ok_or_else(|| {
            ApiError::bad_request(
                format!("the body is not a hex {} digest", algorithm.extension().to_uppercase()),
                STYLE,
            )
        })?;
        return Ok(accepted());
    }
    let versions =
        format::deployed_versions(&document, level).map_err(|e| ApiError::bad_request(e.to_string(), STYLE))?;
    let id = package_id(coordinates);
    let finished = state.packages.finish(repo_name, &id, &versions, format::snapshot_series).await;
    finished.map_err(|e| ApiError::from_core(e, STYLE))?;
    Ok(accepted())
}

/// The core version an uploaded file belongs to. SNAPSHOT files are
/// uploaded with their timestamp; the unversioned name is only served.
fn uploaded_version(file: &ArtifactFile) -> Result<String, ApiError> {
    match &file.version {
        FileVersion::Release(version) => Ok(version.clone()),
        FileVersion::SnapshotBuild(build) => Ok(build.version()),
        FileVersion::LatestSnapshot { base_version } => Err(ApiError::bad_request(
            format!(
                "{} has no timestamp: SNAPSHOT files are deployed as {}, as Maven 3 does; the unversioned name is only served",
                file.file_name,
                file.file_name_in(&format!("{}-yyyyMMdd.HHmmss-N", base_version.trim_end_matches("-SNAPSHOT")))
            ),
            STYLE,
        )),
    }
}

async fn verify_checksum(
    state: &SharedState,
    repo_name: &str,
    file: &ArtifactFile,
    algorithm: ChecksumAlgorithm,
    body: Body,
) -> Result<Response, ApiError> {
    let version = uploaded_version(file)?;
    let bytes = read_small(body, MAX_SIDECAR_BYTES, "a checksum file").await?;
    let claimed = algorithm.parse_sidecar(&bytes).ok_or_else(|| {
        ApiError::bad_request(format!("the body is not a hex {} digest", algorithm.extension().to_uppercase()), STYLE)
    })?;
    let not_uploaded = || {
        ApiError::bad_request(
            format!("{} has not been uploaded; upload a file before its checksums", file.file_name),
            STYLE,
        )
    };
    // Any status: the sidecars of a version still Unfinished arrive
    // before its POM publishes it.
    let snapshot = state.package(repo_name, &package_id(&file.coordinates), STYLE).await?.ok_or_else(not_uploaded)?;
    let asset = snapshot
        .index
        .versions
        .get(&version)
        .and_then(|entry| entry.assets.get(&file.file_name))
        .ok_or_else(not_uploaded)?;
    let stored = algorithm.stored(&asset.digests);
    if claimed != stored {
        return Err(ApiError::bad_request(
            format!(
                "checksum mismatch: the stored {} has {} {stored}, the upload says {claimed}",
                file.file_name,
                algorithm.extension()
            ),
            STYLE,
        ));
    }
    Ok((StatusCode::OK, "checksum matches the stored file\n").into_response())
}

/// The digests some clients (Gradle, curl users) declare as headers.
fn declared_checksums(file: &ArtifactFile, headers: &HeaderMap) -> Declared {
    let mut declared = Declared::default();
    for (name, digest) in
        [("x-checksum-sha1", Digest::Sha1), ("x-checksum-md5", Digest::Md5), ("x-checksum-sha256", Digest::Sha256)]
    {
        let claimed = headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let file_name = file.file_name.clone();
        declared = declared.expect(digest, claimed, move |stored| {
            format!("{file_name} does not match its {name} header: received {stored}")
        });
    }
    declared
}

/// One file of a deploy, into its version (Unfinished until the deploy's
/// metadata arrives). The first file of a version in this Repository
/// decides whether it may be deployed here at all; its later files follow it.
async fn upload(
    state: &SharedState,
    repo_name: &str,
    file: &ArtifactFile,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let version = uploaded_version(file)?;
    let name = file.coordinates.package_name();
    let mut publication = Publication::new(repo_name, package_id(&file.coordinates), &name, &version);
    publication.files.push(file.file_name.clone());
    publication.admitted_by_first_file = true;
    let limit = state.limits.max_upload_bytes;
    if super::declared_length(headers).is_some_and(|n| n > limit) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{} exceeds the upload limit of {limit} bytes", file.file_name),
            STYLE,
        ));
    }
    let stream = body.into_data_stream().map_err(|e| Box::new(e) as BodyError);
    let registry = &state.packages.registry;
    let staged = registry.stage_asset(stream, limit).await.map_err(|e| ApiError::from_core(e, STYLE))?;
    let accepted = state.packages.accept(&publication, staged, &declared_checksums(file, headers), |_| Ok(())).await;
    let ((), digests) = accepted.map_err(|e| ApiError::from_core(e, STYLE))?;
    let placement = Placement::File {
        version_metadata: format::version_metadata(&file.version),
        status: VersionStatus::Unfinished,
        asset: NewAsset { name: file.file_name.clone(), digests, metadata: serde_json::Value::Null },
    };
    let written = state.packages.write(&publication, placement).await;
    Ok(match written.map_err(|e| ApiError::from_core(e, STYLE))? {
        PublishOutcome::Created => (StatusCode::CREATED, "created\n").into_response(),
        PublishOutcome::AlreadyPublished => (StatusCode::OK, "already stored with identical bytes\n").into_response(),
    })
}
