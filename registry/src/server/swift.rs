//! The Swift package registry under `/swift/{repo}/` (SE-0292 and its
//! server spec): list releases, release metadata, manifests, source
//! archives, identifiers by repository URL, publish and login. Every
//! response carries `Content-Version: 1`; errors are
//! `application/problem+json`.
//!
//! Users run `swift package-registry set http(s)://HOST/swift/{repo}`.

use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use serde_json::{Value, json};
use wharf_api::PackageFormat;
use wharf_core::{CoreError, Declared, NewAsset, NewVersion, PackageId, Placement, Publication, PublishOutcome, View};
use wharf_formats::swift::{self as format, ApiVersionError, ArchiveLimits, SourceArchive, SwiftError};
use wharf_storage::{BodyError, StagedBlob};

use super::access::{Access, Authorized, Client, by_method};
use super::metrics::tagged;
use super::{ApiError, ErrorStyle, SharedState, blob};
use crate::auth::{Permission, Principal};

/// SwiftPM: RFC 7807 problems.
pub enum Swift {}

impl Client for Swift {
    const STYLE: ErrorStyle = ErrorStyle::Problem;

    /// Logging in only proves the credentials may read the repository.
    fn permission(method: &Method, path: &str) -> Permission {
        if *method == Method::POST && path.ends_with("/login") { Permission::Read } else { by_method(method) }
    }
}

const STYLE: ErrorStyle = Swift::STYLE;
const JSON: &str = "application/json";
/// What a publish's parts other than the archive may hold in all.
const MAX_SIDE_PARTS_BYTES: usize = 1 << 20;

fn problem(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError::new(status, message, STYLE)
}

fn bad_request(error: impl std::fmt::Display) -> ApiError {
    problem(StatusCode::BAD_REQUEST, error.to_string())
}

fn core_error(error: CoreError) -> ApiError {
    ApiError::from_core(error, STYLE)
}

pub async fn dispatch(
    access: Authorized<Swift>,
    Path((_, rest)): Path<(String, String)>,
    State(state): State<SharedState>,
    request: Request,
) -> Response {
    let accept = request.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let (operation, result) = match (access, format::check_accept(accept)) {
        (Err(refused), _) => ("swift", Err(refused)),
        (Ok(_), Err(SwiftError::ApiVersion(ApiVersionError::Unsupported))) => {
            ("swift", Err(problem(StatusCode::UNSUPPORTED_MEDIA_TYPE, ApiVersionError::Unsupported.to_string())))
        }
        (Ok(_), Err(error)) => ("swift", Err(bad_request(error))),
        (Ok(access), Ok(())) => handle(&state, &access, &rest, request).await,
    };
    let mut response = tagged(operation, result);
    response.headers_mut().insert("content-version", HeaderValue::from_static("1"));
    response
}

async fn handle(
    state: &SharedState,
    access: &Access<Swift>,
    rest: &str,
    request: Request,
) -> (&'static str, Result<Response, ApiError>) {
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let method = request.method().clone();
    let read = method == Method::GET || method == Method::HEAD;
    let base = format!("{}/swift/{}", super::origin(request.headers()), access.repo);
    match (segments.as_slice(), read) {
        (["availability"], true) => ("swift_availability", Ok(StatusCode::OK.into_response())),
        (["login"], false) if method == Method::POST => ("swift_login", login(access)),
        (["identifiers"], true) => ("swift_identifiers", identifiers(state, access, request.uri().query()).await),
        ([scope, name], true) => {
            let name = name.strip_suffix(".json").unwrap_or(name);
            ("swift_releases", list_releases(state, access, &base, scope, name, request.headers()).await)
        }
        ([scope, name, version], true) => match version.strip_suffix(".zip") {
            Some(version) => {
                let (method, headers) = (request.method(), request.headers());
                ("swift_archive", source_archive(state, access, scope, name, version, method, headers).await)
            }
            None => {
                let version = version.strip_suffix(".json").unwrap_or(version);
                ("swift_release", release(state, access, &base, scope, name, version).await)
            }
        },
        ([scope, name, version, "Package.swift"], true) => {
            let asked = swift_version(request.uri().query());
            let (method, headers) = (request.method().clone(), request.headers().clone());
            let manifest = manifest(state, access, &base, scope, name, version, asked.as_deref(), &method, &headers);
            ("swift_manifest", manifest.await)
        }
        ([scope, name, version], false) if method == Method::PUT => {
            let (scope, name, version) = (scope.to_string(), name.to_string(), version.to_string());
            ("swift_publish", publish(state, access, &base, &scope, &name, &version, request).await)
        }
        (_, true) => ("swift", Err(problem(StatusCode::NOT_FOUND, format!("no registry resource at {rest}")))),
        (_, false) => {
            ("swift", Err(problem(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not supported on {rest}"))))
        }
    }
}

/// `POST login`: 200 when the request carries credentials that may read
/// the repository (the extractor checked them); anonymous callers are
/// challenged even where anonymous reading is allowed.
fn login(access: &Access<Swift>) -> Result<Response, ApiError> {
    if access.principal == Principal::Anonymous {
        return Err(ApiError::unauthorized("log in with a token: Authorization: Bearer TOKEN", &access.repo, STYLE));
    }
    Ok(StatusCode::OK.into_response())
}

/// The `swift-version` of a manifest request, read from the raw query.
fn swift_version(query: Option<&str>) -> Option<String> {
    query_value(query, "swift-version")
}

/// One query parameter, percent-decoded without turning `+` into a space
/// (SwiftPM leaves `+` unencoded in URLs it sends).
fn query_value(query: Option<&str>, key: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        (name == key).then(|| percent_encoding::percent_decode_str(value).decode_utf8_lossy().into_owned())
    })
}

/// The package named by the path, checked; its key and the version's.
fn release_id(scope: &str, name: &str, version: Option<&str>) -> Result<(PackageId, Option<String>), ApiError> {
    format::validate_scope(scope).map_err(bad_request)?;
    format::validate_name(name).map_err(bad_request)?;
    let key = version.map(|v| format::parse_version(v).map(|v| v.to_string()).map_err(bad_request)).transpose()?;
    Ok((PackageId::new(PackageFormat::Swift, format::package_key(scope, name)), key))
}

async fn view(state: &SharedState, access: &Access<Swift>, id: &PackageId, shown: &str) -> Result<View, ApiError> {
    let view = state.view(&access.repo, id, shown, STYLE).await?;
    view.ok_or_else(|| problem(StatusCode::NOT_FOUND, format!("package {shown} not found")))
}

fn link(url: &str, rel: &str) -> String {
    format!("<{url}>; rel=\"{rel}\"")
}

fn with_links(mut response: Response, links: &[String]) -> Response {
    if !links.is_empty()
        && let Ok(value) = HeaderValue::from_str(&links.join(", "))
    {
        response.headers_mut().insert(header::LINK, value);
    }
    response
}

/// `GET {scope}/{name}`: every release, with `latest-version`.
async fn list_releases(
    state: &SharedState,
    access: &Access<Swift>,
    base: &str,
    scope: &str,
    name: &str,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let (id, _) = release_id(scope, name, None)?;
    let view = view(state, access, &id, &format!("{scope}.{name}")).await?;
    let package_url = format!("{base}/{scope}/{name}");
    // Both rendered once per view: a hot package's list costs no parsing.
    let rendered =
        view.rendered(&format!("swift:releases:{package_url}"), |index| format::render_releases(index, &package_url));
    if rendered.body.is_empty() {
        return Err(problem(StatusCode::NOT_FOUND, format!("package {scope}.{name} has no releases")));
    }
    let latest = view.rendered(&format!("swift:latest:{package_url}"), |index| {
        let latest = format::latest(index).map(|key| link(&format!("{package_url}/{key}"), "latest-version"));
        bytes::Bytes::from(latest.unwrap_or_default())
    });
    let mut response = super::metadata_document(rendered, JSON, headers, None);
    if let Ok(value) = HeaderValue::from_bytes(&latest.body)
        && !latest.body.is_empty()
    {
        response.headers_mut().insert(header::LINK, value);
    }
    Ok(response)
}

/// A release a path names, as the repository's clients see it.
struct Found {
    id: PackageId,
    key: String,
    view: View,
}

impl Found {
    fn entry(&self) -> &wharf_core::VersionEntry {
        &self.view.index().versions[&self.key]
    }
}

/// The release: 404 when there is none, 410 when it is gone.
async fn find_release(
    state: &SharedState,
    access: &Access<Swift>,
    scope: &str,
    name: &str,
    version: &str,
) -> Result<Found, ApiError> {
    let (id, key) = release_id(scope, name, Some(version))?;
    let (shown, key) = (format!("{scope}.{name}"), key.unwrap_or_default());
    let view = view(state, access, &id, &shown).await?;
    let entry = view
        .index()
        .versions
        .get(&key)
        .ok_or_else(|| problem(StatusCode::NOT_FOUND, format!("release {shown} {key} not found")))?;
    if !entry.status.is_installable() {
        return Err(problem(StatusCode::GONE, format!("release {shown} {key} is {}", entry.status.as_str())));
    }
    Ok(Found { id, key, view })
}

/// `GET {scope}/{name}/{version}`: the release's resources and metadata,
/// linked to the latest release and its neighbours.
async fn release(
    state: &SharedState,
    access: &Access<Swift>,
    base: &str,
    scope: &str,
    name: &str,
    version: &str,
) -> Result<Response, ApiError> {
    let found = find_release(state, access, scope, name, version).await?;
    let (entry, key) = (found.entry(), &found.key);
    let package_url = format!("{base}/{scope}/{name}");
    let listed: Vec<String> = format::releases(found.view.index())
        .into_iter()
        .filter(|(_, _, entry)| entry.status.is_listed())
        .map(|(_, key, _)| key.clone())
        .collect();
    let mut links = Vec::new();
    if let Some(latest) = listed.first() {
        links.push(link(&format!("{package_url}/{latest}"), "latest-version"));
    }
    // Newest first: the one before is the successor, the one after the predecessor.
    if let Some(position) = listed.iter().position(|k| k == key) {
        if let Some(successor) = position.checked_sub(1).and_then(|i| listed.get(i)) {
            links.push(link(&format!("{package_url}/{successor}"), "successor-version"));
        }
        if let Some(predecessor) = listed.get(position + 1) {
            links.push(link(&format!("{package_url}/{predecessor}"), "predecessor-version"));
        }
    }
    let body = format::render_release(found.view.index(), key, entry);
    Ok(with_links(([(header::CONTENT_TYPE, JSON)], body).into_response(), &links))
}

/// `GET {scope}/{name}/{version}.zip`.
async fn source_archive(
    state: &SharedState,
    access: &Access<Swift>,
    scope: &str,
    name: &str,
    version: &str,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let found = find_release(state, access, scope, name, version).await?;
    let (entry, key) = (found.entry(), &found.key);
    let signing = entry.metadata.get("signing").cloned();
    let digests = state.stored_asset(&access.repo, &found.view, &found.id, key, format::SOURCE_ARCHIVE, STYLE).await?;
    let mut response =
        blob::serve(&state.packages.registry, &digests, "application/zip", method, headers, STYLE).await?;
    let response_headers = response.headers_mut();
    let disposition = format!("attachment; filename=\"{}\"", format::archive_filename(name, key));
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        response_headers.insert(header::CONTENT_DISPOSITION, value);
    }
    if let Some(value) = format::digest_header(&digests.sha256).and_then(|d| HeaderValue::from_str(&d).ok()) {
        response_headers.insert("digest", value);
    }
    let signature = |key: &str| signing.as_ref().and_then(|s| s.get(key)).and_then(Value::as_str);
    if let (Some(signature_format), Some(signature)) =
        (signature("signatureFormat"), signature("signatureBase64Encoded"))
        && let (Ok(signature_format), Ok(signature)) =
            (HeaderValue::from_str(signature_format), HeaderValue::from_str(signature))
    {
        response_headers.insert("x-swift-package-signature-format", signature_format);
        response_headers.insert("x-swift-package-signature", signature);
    }
    Ok(response)
}

/// `GET {scope}/{name}/{version}/Package.swift[?swift-version=X.Y]`: the
/// manifest, linking its version-specific variants; a variant the release
/// lacks is a 303 to the plain one.
#[allow(clippy::too_many_arguments)]
async fn manifest(
    state: &SharedState,
    access: &Access<Swift>,
    base: &str,
    scope: &str,
    name: &str,
    version: &str,
    asked: Option<&str>,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let found = find_release(state, access, scope, name, version).await?;
    let (entry, key) = (found.entry(), &found.key);
    let manifest_url = format!("{base}/{scope}/{name}/{key}/Package.swift");
    let filename = match asked {
        None => "Package.swift".to_owned(),
        Some(asked) => match format::manifest_for(entry, asked) {
            Some(filename) => filename,
            None => {
                return Ok((StatusCode::SEE_OTHER, [(header::LOCATION, manifest_url)]).into_response());
            }
        },
    };
    let digests = state.stored_asset(&access.repo, &found.view, &found.id, key, &filename, STYLE).await?;
    let mut response = blob::serve(&state.packages.registry, &digests, "text/x-swift", method, headers, STYLE).await?;
    let links: Vec<String> = format::alternate_manifests(entry)
        .into_iter()
        .map(|(file, tools)| {
            format!(
                "<{manifest_url}?swift-version={tools}>; rel=\"alternate\"; filename=\"{file}\"; swift-tools-version=\"{tools}\""
            )
        })
        .collect();
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        response.headers_mut().insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(with_links(response, &links))
}

/// Repository URLs compared as the same repository: without scheme case,
/// a trailing slash or `.git`.
fn same_repository(a: &str, b: &str) -> bool {
    let normal = |url: &str| {
        let url = url.trim().trim_end_matches('/');
        url.strip_suffix(".git").unwrap_or(url).to_ascii_lowercase()
    };
    normal(a) == normal(b)
}

/// `GET identifiers?url=`: the packages of this repository (and its
/// upstream Repositories) whose releases name that source repository.
async fn identifiers(state: &SharedState, access: &Access<Swift>, query: Option<&str>) -> Result<Response, ApiError> {
    let url = query_value(query, "url")
        .filter(|url| !url.trim().is_empty())
        .ok_or_else(|| bad_request("the url query parameter is required"))?;
    let names = state.packages.held_names(&access.repo, PackageFormat::Swift).await.map_err(core_error)?;
    let mut found = Vec::new();
    for name in names {
        let id = PackageId::new(PackageFormat::Swift, name);
        let Some(index) = state.packages.held(&access.repo, &id).await.map_err(core_error)? else { continue };
        let names_it = index.versions.values().filter(|e| e.status.is_installable()).any(|entry| {
            let urls = entry.metadata.pointer("/metadata/repositoryURLs").and_then(Value::as_array);
            urls.is_some_and(|urls| urls.iter().filter_map(Value::as_str).any(|u| same_repository(u, &url)))
        });
        if names_it {
            found.push(index.display_name.clone());
        }
    }
    if found.is_empty() {
        return Err(problem(StatusCode::NOT_FOUND, format!("no package is published from {url}")));
    }
    found.sort_by_key(|id| id.to_ascii_lowercase());
    Ok(([(header::CONTENT_TYPE, JSON)], json!({"identifiers": found}).to_string()).into_response())
}

/// The parts of a publish besides the archive.
#[derive(Default)]
struct SideParts {
    metadata: Option<Vec<u8>>,
    archive_signature: Option<Vec<u8>>,
    metadata_signature: Option<Vec<u8>>,
}

/// Reads the publish form as it streams: the archive staged, the other
/// parts (at most [`MAX_SIDE_PARTS_BYTES`] in all) kept.
async fn read_publish_form(
    state: &SharedState,
    headers: &HeaderMap,
    request: Request,
) -> Result<(StagedBlob, SideParts), ApiError> {
    let limits = state.limits;
    if super::declared_length(headers).is_some_and(|n| n > limits.max_upload_bytes + MAX_SIDE_PARTS_BYTES as u64) {
        let message = format!("the release exceeds the upload limit of {} bytes", limits.max_upload_bytes);
        return Err(problem(StatusCode::PAYLOAD_TOO_LARGE, message));
    }
    let mut form = Multipart::from_request(request, state)
        .await
        .map_err(|e| bad_request(format!("expected a multipart/form-data release: {e}")))?;
    let mut archive: Option<StagedBlob> = None;
    let mut side = SideParts::default();
    let mut side_bytes = 0usize;
    let read: Result<(), ApiError> = async {
        while let Some(mut field) = form.next_field().await.map_err(|e| bad_request(format!("malformed form: {e}")))? {
            let name = field.name().unwrap_or_default().to_owned();
            let slot = match name.as_str() {
                "source-archive" => {
                    if archive.is_some() {
                        return Err(bad_request("the form has more than one source-archive part"));
                    }
                    let body = field.map_err(|e| Box::new(e) as BodyError);
                    let staged = state.packages.registry.stage_asset(body, limits.max_upload_bytes).await;
                    archive = Some(staged.map_err(core_error)?);
                    continue;
                }
                "metadata" => &mut side.metadata,
                "source-archive-signature" => &mut side.archive_signature,
                "metadata-signature" => &mut side.metadata_signature,
                other => return Err(bad_request(format!("unknown part {other:?} in the release form"))),
            };
            let mut bytes = Vec::new();
            while let Some(chunk) = field.chunk().await.map_err(|e| bad_request(format!("malformed form: {e}")))? {
                side_bytes += chunk.len();
                if side_bytes > MAX_SIDE_PARTS_BYTES {
                    let message = format!("the metadata and signatures exceed {MAX_SIDE_PARTS_BYTES} bytes");
                    return Err(problem(StatusCode::PAYLOAD_TOO_LARGE, message));
                }
                bytes.extend_from_slice(&chunk);
            }
            *slot = Some(bytes);
        }
        Ok(())
    }
    .await;
    match (read, archive) {
        (Ok(()), Some(archive)) => Ok((archive, side)),
        (Ok(()), None) => Err(bad_request("the release form has no source-archive part")),
        (Err(error), archive) => {
            if let Some(archive) = archive {
                archive.discard().await;
            }
            Err(error)
        }
    }
}

/// The signing facts a release keeps, checked against the request.
fn signing(headers: &HeaderMap, side: &SideParts) -> Result<Option<Value>, ApiError> {
    use base64::Engine;
    let unprocessable = |message: &str| problem(StatusCode::UNPROCESSABLE_ENTITY, message);
    let signature_format = headers.get("x-swift-package-signature-format").and_then(|v| v.to_str().ok());
    if side.metadata_signature.is_some() && side.metadata.is_none() {
        return Err(unprocessable("a metadata-signature part needs a metadata part"));
    }
    if side.metadata_signature.is_some() != side.archive_signature.is_some() {
        return Err(unprocessable("sign both the source archive and the metadata, or neither"));
    }
    match (&side.archive_signature, signature_format) {
        (None, _) => Ok(None),
        (Some(_), None) => {
            Err(unprocessable("a source-archive-signature part needs the X-Swift-Package-Signature-Format header"))
        }
        (Some(signature), Some(signature_format)) => {
            let encode = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
            Ok(Some(json!({
                "signatureFormat": signature_format,
                "signatureBase64Encoded": encode(signature),
                "metadataSignatureBase64Encoded": side.metadata_signature.as_deref().map(encode),
            })))
        }
    }
}

/// `PUT {scope}/{name}/{version}`: the release, published synchronously:
/// 201 with its `Location`, 409 when the version exists, 422 when the
/// archive or metadata is refused.
async fn publish(
    state: &SharedState,
    access: &Access<Swift>,
    base: &str,
    scope: &str,
    name: &str,
    version: &str,
    request: Request,
) -> Result<Response, ApiError> {
    let (id, key) = release_id(scope, name, Some(version))?;
    let key = key.unwrap_or_default();
    let headers = request.headers().clone();
    let (staged, side) = read_publish_form(state, &headers, request).await?;
    let checked = (|| {
        let metadata = match &side.metadata {
            Some(bytes) => {
                format::check_metadata(bytes).map_err(|e| problem(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?
            }
            None => json!({}),
        };
        Ok::<_, ApiError>((metadata, signing(&headers, &side)?))
    })();
    let mut staged = staged;
    let (metadata, signing) = staged.discard_on_err(checked).await?;
    let spelled = format!("{scope}.{name}");
    let mut publication = Publication::new(&access.repo, id, &spelled, &key);
    publication.files = vec![format::SOURCE_ARCHIVE.to_owned()];
    publication.conflict =
        Some(format!("release {spelled} {key} already exists with other contents; releases are immutable"));
    let inspect = |reader| {
        format::inspect_source_archive(reader, ArchiveLimits::default()).map_err(|e| CoreError::Invalid(e.to_string()))
    };
    let accepted = state.packages.accept(&publication, staged, &Declared::default(), inspect).await;
    let (SourceArchive { manifests, file_count }, digests) = accepted.map_err(|error| match error {
        CoreError::Invalid(message) => problem(StatusCode::UNPROCESSABLE_ENTITY, message),
        other => core_error(other),
    })?;
    let registry = &state.packages.registry;
    let mut assets = vec![NewAsset {
        name: format::SOURCE_ARCHIVE.to_owned(),
        digests: digests.clone(),
        metadata: json!({"fileCount": file_count}),
    }];
    for manifest in &manifests {
        let stored = registry.store_small_asset(manifest.bytes.clone().into()).await.map_err(core_error)?;
        assets.push(NewAsset { name: manifest.filename.clone(), digests: stored, metadata: Value::Null });
    }
    let mut version_metadata = format::version_metadata(&spelled, &digests.sha256, &manifests, metadata);
    version_metadata["publisher"] = json!(access.principal.name());
    if let Some(signing) = signing {
        version_metadata["signing"] = signing;
    }
    let new = NewVersion { version: key.clone(), metadata: version_metadata, assets, tags: Vec::new() };
    let location = format!("{base}/{scope}/{name}/{key}");
    match state.packages.write(&publication, Placement::Version { new, withdrawals: None }).await.map_err(core_error)? {
        PublishOutcome::Created => Ok((
            StatusCode::CREATED,
            [(header::LOCATION, location.clone()), (header::CONTENT_TYPE, JSON.to_owned())],
            json!({"message": format!("{spelled} {key} published"), "url": location}).to_string(),
        )
            .into_response()),
        PublishOutcome::AlreadyPublished => Err(problem(
            StatusCode::CONFLICT,
            format!("release {spelled} {key} already exists (with these exact bytes; nothing changed)"),
        )),
    }
}
