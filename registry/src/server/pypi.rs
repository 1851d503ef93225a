//! PyPI endpoints under `/pypi/{repo}/`: the legacy upload API (twine,
//! uv publish), the simple index in HTML and JSON, files and their PEP 658
//! metadata.

use std::collections::BTreeMap;

use axum::extract::{Multipart, Path, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use serde_json::json;
use wharf_api::{PackageFormat, Repository};

use super::metrics::tagged;
use super::{ApiError, ErrorStyle, SharedState, blob, upstream};
use crate::auth::Permission;
use wharf_core::{NewAsset, PackageId, PackageIndex, VersionStatus};
use wharf_formats::pypi::{self as format, DistKind};
use wharf_storage::{BlobDigests, BodyError, StagedBlob};

const STYLE: ErrorStyle = ErrorStyle::Text;

fn repo_name(repo: &Repository) -> &str {
    repo.metadata.name.as_deref().unwrap_or_default()
}

/// PEP 503 asks for a 301 to the normalised, slash-terminated URL.
fn moved_permanently(location: String) -> Response {
    (StatusCode::MOVED_PERMANENTLY, [(header::LOCATION, location)]).into_response()
}

pub async fn redirect_root(Path(repo): Path<String>) -> Response {
    moved_permanently(format!("/pypi/{repo}/simple/"))
}

pub async fn redirect_project(Path((repo, project)): Path<(String, String)>) -> Response {
    moved_permanently(format!("/pypi/{repo}/simple/{}/", format::normalize_name(&project)))
}

pub async fn root(Path(repo): Path<String>, State(state): State<SharedState>, headers: HeaderMap) -> Response {
    let result = async {
        let repo = state.repository(&repo, &headers, Permission::Read, STYLE).await?;
        state.authorize(&headers, repo, Permission::Read, STYLE).await?;
        let mut names = state
            .registry
            .package_names(repo_name(repo), PackageFormat::Pypi)
            .await
            .map_err(|e| ApiError::from_core(e, STYLE))?;
        names.sort();
        let json_form = format::prefers_json(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
        let content_type = if json_form { format::JSON_CONTENT_TYPE } else { "text/html; charset=utf-8" };
        Ok(([(header::CONTENT_TYPE, content_type), (header::VARY, "Accept")], format::render_root(&names, json_form))
            .into_response())
    }
    .await;
    tagged("pypi_simple_root", result)
}

pub async fn project(
    Path((repo, project)): Path<(String, String)>,
    State(state): State<SharedState>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let repo = state.repository(&repo, &headers, Permission::Read, STYLE).await?;
        state.authorize(&headers, repo, Permission::Read, STYLE).await?;
        let normalized = format::normalize_name(&project);
        if normalized != project {
            return Ok(moved_permanently(format!("/pypi/{}/simple/{normalized}/", repo_name(repo))));
        }
        format::validate_name(&project).map_err(|e| ApiError::not_found(e.to_string(), STYLE))?;
        let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
        let json_form = format::prefers_json(accept);
        let asked_versioned_html = accept.is_some_and(|a| a.contains(format::HTML_CONTENT_TYPE));
        let (key, content_type) = match (json_form, asked_versioned_html) {
            (true, _) => ("pypi:json", format::JSON_CONTENT_TYPE),
            (false, true) => ("pypi:html", format::HTML_CONTENT_TYPE),
            (false, false) => ("pypi:html", "text/html; charset=utf-8"),
        };
        let render = |index: &PackageIndex| {
            if json_form {
                format::render_project_json(index, &normalized)
            } else {
                format::render_project_html(index, &normalized)
            }
        };
        let id = PackageId::new(PackageFormat::Pypi, &normalized);
        let not_found = || ApiError::not_found(format!("project {normalized} not found"), STYLE);
        let rendered = if upstream::has_chain(&state, repo_name(repo)) {
            let view = upstream::view(&state, repo_name(repo), &id, &id.name, STYLE).await?.ok_or_else(not_found)?;
            view.rendered(key, render)
        } else {
            let snapshot = state.package(repo_name(repo), &id, STYLE).await?.ok_or_else(not_found)?;
            snapshot.rendered(key, render)
        };
        Ok(super::metadata_document(rendered, content_type, &headers, Some("Accept, Authorization")))
    }
    .await;
    tagged("pypi_simple_project", result)
}

pub async fn file(
    Path((repo, project, version, filename)): Path<(String, String, String, String)>,
    State(state): State<SharedState>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let repo = state.repository(&repo, &headers, Permission::Read, STYLE).await?;
        state.authorize(&headers, repo, Permission::Read, STYLE).await?;
        let (asset_name, metadata_file) = match filename.strip_suffix(".metadata") {
            Some(asset) => (asset, true),
            None => (filename.as_str(), false),
        };
        let missing = || ApiError::not_found(format!("file {filename} not found"), STYLE);
        let id = PackageId::new(PackageFormat::Pypi, &project);
        // Borrowed, not cloned: a file request must not copy the whole index.
        let (view, snapshot);
        let index = if upstream::has_chain(&state, repo_name(repo)) {
            view = upstream::view(&state, repo_name(repo), &id, &id.name, STYLE).await?.ok_or_else(missing)?;
            if !metadata_file {
                let digests =
                    upstream::stored_asset(&state, repo_name(repo), &view, &id, &version, asset_name, STYLE).await?;
                return blob::serve(&state.registry, &digests, "application/octet-stream", &method, &headers, STYLE)
                    .await;
            }
            &*view.index
        } else {
            snapshot = state.package(repo_name(repo), &id, STYLE).await?.ok_or_else(missing)?;
            &snapshot.index
        };
        let entry = index.versions.get(&version).ok_or_else(missing)?;
        if !entry.status.is_installable() {
            return Err(ApiError::not_found(format!("{project} {version} is {}", entry.status.as_str()), STYLE));
        }
        let asset = entry.assets.get(asset_name).ok_or_else(missing)?;
        if !metadata_file {
            return blob::serve(&state.registry, &asset.digests, "application/octet-stream", &method, &headers, STYLE)
                .await;
        }
        let sha256 = asset.metadata.get("core_metadata_sha256").and_then(|v| v.as_str()).ok_or_else(missing)?;
        let size = asset.metadata.get("core_metadata_size").and_then(|v| v.as_u64()).unwrap_or(0);
        let digests = BlobDigests {
            sha256: sha256.to_owned(),
            sha512: String::new(),
            sha1: String::new(),
            md5: String::new(),
            size,
        };
        blob::serve(&state.registry, &digests, "text/plain; charset=utf-8", &method, &headers, STYLE).await
    }
    .await;
    tagged("pypi_file", result)
}

/// Room for a form's boundaries and part headers beyond its file and text fields: twine
/// sends some 30 fields, each framed in about 100 bytes.
const FORM_FRAMING_BYTES: u64 = 64 * 1024;

/// The legacy upload API: one `multipart/form-data` POST per file.
pub async fn upload(
    Path(repo): Path<String>,
    State(state): State<SharedState>,
    headers: HeaderMap,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Response {
    tagged("pypi_upload", upload_file(&state, &repo, &headers, multipart).await)
}

/// An upload that passed [`check_upload`].
struct CheckedUpload {
    name: String,
    version: String,
    project: String,
    expected_filetype: &'static str,
    /// A wheel's METADATA file, served for PEP 658.
    metadata_file: Option<Vec<u8>>,
    requires_python: Option<String>,
}

/// Every check of a staged distribution before it is committed: the form's
/// name and version against the file name, the declared digests, the
/// archive's own metadata, and the origin rules.
async fn check_upload(
    state: &SharedState,
    repo: &Repository,
    fields: &BTreeMap<String, Vec<String>>,
    filename: &str,
    staged: &StagedBlob,
) -> Result<CheckedUpload, ApiError> {
    let digests = staged.digests();
    let field = |key: &str| fields.get(key).and_then(|v| v.first()).map(String::as_str);
    let name = field("name").ok_or_else(|| ApiError::bad_request("the upload has no name field", STYLE))?;
    let version = field("version").ok_or_else(|| ApiError::bad_request("the upload has no version field", STYLE))?;
    format::validate_name(name).map_err(|e| ApiError::bad_request(e.to_string(), STYLE))?;
    let version = format::normalize_version(version).map_err(|e| ApiError::bad_request(e.to_string(), STYLE))?;
    let project = format::normalize_name(name);
    let dist = format::parse_filename(filename).map_err(|e| ApiError::bad_request(e.to_string(), STYLE))?;
    if dist.project != project || dist.version != version {
        return Err(ApiError::bad_request(
            format!("file name {filename} does not match the project {name} version {version}"),
            STYLE,
        ));
    }
    let expected_filetype = match dist.kind {
        DistKind::Wheel => "bdist_wheel",
        DistKind::Sdist => "sdist",
    };
    if field("filetype").is_some_and(|t| t != expected_filetype) {
        return Err(ApiError::bad_request(format!("filetype must be {expected_filetype} for {filename}"), STYLE));
    }
    let digest_mismatch = |which: &str| ApiError::bad_request(format!("the file does not match its {which}"), STYLE);
    if field("sha256_digest").is_some_and(|d| !d.eq_ignore_ascii_case(&digests.sha256)) {
        return Err(digest_mismatch("sha256_digest"));
    }
    if field("md5_digest").is_some_and(|d| !d.is_empty() && !d.eq_ignore_ascii_case(&digests.md5)) {
        return Err(digest_mismatch("md5_digest"));
    }

    let reader = staged.reader();
    let inspected = {
        let filename = filename.to_owned();
        tokio::task::spawn_blocking(move || match dist.kind {
            DistKind::Wheel => {
                format::wheel_metadata(reader, &dist, &filename).map(|(bytes, meta)| (Some(bytes), meta))
            }
            DistKind::Sdist => format::sdist_metadata(reader, &dist, &filename).map(|meta| (None, meta)),
        })
        .await
        .map_err(|e| ApiError::internal(&e, STYLE))?
        .map_err(|e| ApiError::bad_request(e.to_string(), STYLE))?
    };
    let (metadata_file, core) = inspected;
    let requires_python =
        core.requires_python.or_else(|| field("requires_python").filter(|r| !r.is_empty()).map(str::to_owned));
    let id = PackageId::new(PackageFormat::Pypi, &project);
    wharf_core::check_storable(&id, &version, [filename]).map_err(|e| ApiError::from_core(e, STYLE))?;
    upstream::check_publish(state, repo_name(repo), &id, &project, &version, STYLE).await?;
    Ok(CheckedUpload { name: name.to_owned(), version, project, expected_filetype, metadata_file, requires_python })
}

async fn upload_file(
    state: &SharedState,
    repo: &str,
    headers: &HeaderMap,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Response, ApiError> {
    let repo = state.repository(repo, headers, Permission::Publish, STYLE).await?;
    state.authorize(headers, repo, Permission::Publish, STYLE).await?;
    let limits = state.limits;
    // The file, the text fields, and the form's framing (boundaries and part headers).
    let max_body = limits.max_upload_bytes + limits.max_metadata_bytes as u64 + FORM_FRAMING_BYTES;
    if super::declared_length(headers).is_some_and(|n| n > max_body) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the upload exceeds the limit of {} bytes per file", limits.max_upload_bytes),
            STYLE,
        ));
    }
    let mut multipart =
        multipart.map_err(|e| ApiError::bad_request(format!("expected a multipart/form-data upload: {e}"), STYLE))?;
    let mut fields: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut text_bytes = 0usize;
    let mut content: Option<(String, StagedBlob)> = None;
    let bad_form = |e: axum::extract::multipart::MultipartError| {
        ApiError::bad_request(format!("malformed upload form: {e}"), STYLE)
    };
    let read: Result<(), ApiError> = async {
        while let Some(field) = multipart.next_field().await.map_err(bad_form)? {
            let name = field.name().unwrap_or_default().to_owned();
            if name == "content" {
                if content.is_some() {
                    return Err(ApiError::bad_request("the form has more than one content field", STYLE));
                }
                let filename = field
                    .file_name()
                    .map(str::to_owned)
                    .ok_or_else(|| ApiError::bad_request("the content field has no file name", STYLE))?;
                let body = field.map_err(|e| Box::new(e) as BodyError);
                let staged = state
                    .registry
                    .stage_asset(body, limits.max_upload_bytes)
                    .await
                    .map_err(|e| ApiError::from_core(e, STYLE))?;
                content = Some((filename, staged));
            } else {
                let mut field = field;
                let mut value = Vec::new();
                while let Some(chunk) = field.chunk().await.map_err(bad_form)? {
                    text_bytes += chunk.len();
                    if text_bytes > limits.max_metadata_bytes {
                        return Err(ApiError::new(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            format!("the upload's metadata fields exceed {} bytes", limits.max_metadata_bytes),
                            STYLE,
                        ));
                    }
                    value.extend_from_slice(&chunk);
                }
                let value = String::from_utf8(value)
                    .map_err(|_| ApiError::bad_request(format!("field {name} is not UTF-8"), STYLE))?;
                fields.entry(name).or_default().push(value);
            }
        }
        Ok(())
    }
    .await;
    let read = read.and_then(|()| match fields.get(":action").and_then(|v| v.first()).map(String::as_str) {
        Some("file_upload") => Ok(()),
        other => Err(ApiError::bad_request(format!("unsupported :action {other:?}; only file_upload is"), STYLE)),
    });
    let content = match read {
        Ok(()) => content,
        Err(error) => {
            if let Some((_, staged)) = content {
                staged.discard().await;
            }
            return Err(error);
        }
    };
    let (filename, mut staged) =
        content.ok_or_else(|| ApiError::bad_request("the upload has no content file", STYLE))?;
    let checked = check_upload(state, repo, &fields, &filename, &staged).await;
    let CheckedUpload { name, version, project, expected_filetype, metadata_file, requires_python } =
        staged.discard_on_err(checked).await?;
    let digests = staged.commit().await.map_err(|e| ApiError::from_storage(&e, STYLE))?;
    let mut asset_metadata = json!({"filetype": expected_filetype, "requires_python": requires_python});
    if let Some(bytes) = metadata_file {
        let stored = state.registry.store_small_asset(bytes.into()).await.map_err(|e| ApiError::from_core(e, STYLE))?;
        asset_metadata["core_metadata_sha256"] = json!(stored.sha256);
        asset_metadata["core_metadata_size"] = json!(stored.size);
    }
    let name = name.as_str();
    let id = PackageId::new(PackageFormat::Pypi, &project);
    let outcome = state
        .registry
        .add_asset(
            repo_name(repo),
            &id,
            name,
            &version,
            format::version_metadata(&fields),
            VersionStatus::Published,
            NewAsset { name: filename, digests, metadata: asset_metadata },
        )
        .await
        .map_err(|e| ApiError::from_core(e, STYLE))?;
    upstream::record_publish(state, repo_name(repo), &id, &version, outcome, STYLE).await?;
    Ok((StatusCode::OK, "OK\n").into_response())
}
