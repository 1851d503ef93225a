//! PyPI endpoints under `/pypi/{repo}/`: the legacy upload API (twine,
//! uv publish), the simple index in HTML and JSON, files and their PEP 658
//! metadata.

use std::collections::BTreeMap;

use axum::extract::{Multipart, Path, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use serde_json::json;
use wharf_api::PackageFormat;

use super::access::{Access, Authorized, Client};
use super::metrics::tagged;
use super::{ApiError, ErrorStyle, SharedState, blob};
use wharf_core::{
    CoreError, Declared, Digest, NewAsset, PackageId, PackageIndex, Placement, Publication, VersionStatus,
};
use wharf_formats::pypi::{self as format, DistFilename, DistKind};
use wharf_storage::{BlobDigests, BodyError, StagedBlob};

/// pip, uv and twine: errors as plain text, the message also the reason phrase.
pub enum Pypi {}

impl Client for Pypi {
    const STYLE: ErrorStyle = ErrorStyle::Text;
}

const STYLE: ErrorStyle = Pypi::STYLE;

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

pub async fn root(access: Authorized<Pypi>, State(state): State<SharedState>, headers: HeaderMap) -> Response {
    let result = async {
        let access = access?;
        let mut names = state
            .packages
            .registry
            .package_names(&access.repo, PackageFormat::Pypi)
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
    access: Authorized<Pypi>,
    Path((_, project)): Path<(String, String)>,
    State(state): State<SharedState>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let access = access?;
        let normalized = format::normalize_name(&project);
        if normalized != project {
            return Ok(moved_permanently(format!("/pypi/{}/simple/{normalized}/", access.repo)));
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
        let view = state.view(&access.repo, &id, &id.name, STYLE).await?.ok_or_else(not_found)?;
        let rendered = view.rendered(key, render);
        Ok(super::metadata_document(rendered, content_type, &headers, Some("Accept, Authorization")))
    }
    .await;
    tagged("pypi_simple_project", result)
}

pub async fn file(
    access: Authorized<Pypi>,
    Path((_, project, version, filename)): Path<(String, String, String, String)>,
    State(state): State<SharedState>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let access = access?;
        let (asset_name, metadata_file) = match filename.strip_suffix(".metadata") {
            Some(asset) => (asset, true),
            None => (filename.as_str(), false),
        };
        let missing = || ApiError::not_found(format!("file {filename} not found"), STYLE);
        let id = PackageId::new(PackageFormat::Pypi, &project);
        let view = state.view(&access.repo, &id, &id.name, STYLE).await?.ok_or_else(missing)?;
        if !metadata_file {
            let digests = state.stored_asset(&access.repo, &view, &id, &version, asset_name, STYLE).await?;
            return blob::serve(
                &state.packages.registry,
                &digests,
                "application/octet-stream",
                &method,
                &headers,
                STYLE,
            )
            .await;
        }
        let entry = view.index().versions.get(&version).ok_or_else(missing)?;
        if !entry.status.is_installable() {
            return Err(ApiError::not_found(format!("{project} {version} is {}", entry.status.as_str()), STYLE));
        }
        let asset = entry.assets.get(asset_name).ok_or_else(missing)?;
        let sha256 = asset.metadata.get("core_metadata_sha256").and_then(|v| v.as_str()).ok_or_else(missing)?;
        let size = asset.metadata.get("core_metadata_size").and_then(|v| v.as_u64()).unwrap_or(0);
        let digests = BlobDigests {
            sha256: sha256.to_owned(),
            sha512: String::new(),
            sha1: String::new(),
            md5: String::new(),
            size,
        };
        blob::serve(&state.packages.registry, &digests, "text/plain; charset=utf-8", &method, &headers, STYLE).await
    }
    .await;
    tagged("pypi_file", result)
}

/// Room for a form's boundaries and part headers beyond its file and text fields: twine
/// sends some 30 fields, each framed in about 100 bytes.
const FORM_FRAMING_BYTES: u64 = 64 * 1024;

/// The legacy upload API: one `multipart/form-data` POST per file.
pub async fn upload(
    access: Authorized<Pypi>,
    State(state): State<SharedState>,
    headers: HeaderMap,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Response {
    tagged("pypi_upload", async { upload_file(&state, &access?, &headers, multipart).await }.await)
}

/// The form of an upload, as checked before its file is: what it publishes.
struct UploadForm {
    name: String,
    version: String,
    project: String,
    dist: DistFilename,
}

/// The form's name and version, checked against the file's name.
fn check_form(fields: &BTreeMap<String, Vec<String>>, filename: &str) -> Result<UploadForm, ApiError> {
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
    if field("filetype").is_some_and(|t| t != filetype(dist.kind)) {
        return Err(ApiError::bad_request(format!("filetype must be {} for {filename}", filetype(dist.kind)), STYLE));
    }
    Ok(UploadForm { name: name.to_owned(), version, project, dist })
}

fn filetype(kind: DistKind) -> &'static str {
    match kind {
        DistKind::Wheel => "bdist_wheel",
        DistKind::Sdist => "sdist",
    }
}

/// The digests the form declares for its file.
fn declared_digests(fields: &BTreeMap<String, Vec<String>>) -> Declared {
    let field = |key: &str| fields.get(key).and_then(|v| v.first()).cloned();
    let mismatch = |which: &'static str| move |_: &str| format!("the file does not match its {which}");
    Declared::default().expect(Digest::Sha256, field("sha256_digest"), mismatch("sha256_digest")).expect(
        Digest::Md5,
        field("md5_digest").filter(|d| !d.is_empty()),
        mismatch("md5_digest"),
    )
}

async fn upload_file(
    state: &SharedState,
    access: &Access<Pypi>,
    headers: &HeaderMap,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<Response, ApiError> {
    let (fields, filename, mut staged) = read_form(state, headers, multipart).await?;
    let UploadForm { name, version, project, dist } = staged.discard_on_err(check_form(&fields, &filename)).await?;
    let mut publication =
        Publication::new(&access.repo, PackageId::new(PackageFormat::Pypi, &project), &name, &version);
    publication.files.push(filename.clone());
    let (kind, inspected_name) = (dist.kind, filename.clone());
    let inspect = move |reader| {
        match kind {
            DistKind::Wheel => format::wheel_metadata(reader, &dist, &inspected_name).map(|(b, meta)| (Some(b), meta)),
            DistKind::Sdist => format::sdist_metadata(reader, &dist, &inspected_name).map(|meta| (None, meta)),
        }
        .map_err(|e| CoreError::Invalid(e.to_string()))
    };
    let accepted = state.packages.accept(&publication, staged, &declared_digests(&fields), inspect).await;
    let ((metadata_file, core), digests) = accepted.map_err(|e| ApiError::from_core(e, STYLE))?;
    let field = |key: &str| fields.get(key).and_then(|v| v.first()).filter(|v| !v.is_empty()).cloned();
    let requires_python = core.requires_python.or_else(|| field("requires_python"));
    let mut asset_metadata = json!({"filetype": filetype(kind), "requires_python": requires_python});
    if let Some(bytes) = metadata_file {
        let registry = &state.packages.registry;
        let stored = registry.store_small_asset(bytes.into()).await.map_err(|e| ApiError::from_core(e, STYLE))?;
        asset_metadata["core_metadata_sha256"] = json!(stored.sha256);
        asset_metadata["core_metadata_size"] = json!(stored.size);
    }
    let placement = Placement::File {
        version_metadata: format::version_metadata(&fields),
        status: VersionStatus::Published,
        asset: NewAsset { name: filename, digests, metadata: asset_metadata },
    };
    state.packages.write(&publication, placement).await.map_err(|e| ApiError::from_core(e, STYLE))?;
    Ok((StatusCode::OK, "OK\n").into_response())
}

/// A text field of the form, counted against what all of them may take.
async fn read_text_field(
    mut field: axum::extract::multipart::Field<'_>,
    name: &str,
    text_bytes: &mut usize,
    max_text_bytes: usize,
) -> Result<String, ApiError> {
    let mut value = Vec::new();
    while let Some(chunk) =
        field.chunk().await.map_err(|e| ApiError::bad_request(format!("malformed upload form: {e}"), STYLE))?
    {
        *text_bytes += chunk.len();
        if *text_bytes > max_text_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the upload's metadata fields exceed {max_text_bytes} bytes"),
                STYLE,
            ));
        }
        value.extend_from_slice(&chunk);
    }
    String::from_utf8(value).map_err(|_| ApiError::bad_request(format!("field {name} is not UTF-8"), STYLE))
}

/// Reads the upload form as it streams: its text fields (at most
/// `--max-metadata-bytes` in all) and its one file, staged.
async fn read_form(
    state: &SharedState,
    headers: &HeaderMap,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<(BTreeMap<String, Vec<String>>, String, StagedBlob), ApiError> {
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
            if name != "content" {
                let value = read_text_field(field, &name, &mut text_bytes, limits.max_metadata_bytes).await?;
                fields.entry(name).or_default().push(value);
                continue;
            }
            if content.is_some() {
                return Err(ApiError::bad_request("the form has more than one content field", STYLE));
            }
            let filename = field
                .file_name()
                .map(str::to_owned)
                .ok_or_else(|| ApiError::bad_request("the content field has no file name", STYLE))?;
            let body = field.map_err(|e| Box::new(e) as BodyError);
            let staged = state.packages.registry.stage_asset(body, limits.max_upload_bytes).await;
            content = Some((filename, staged.map_err(|e| ApiError::from_core(e, STYLE))?));
        }
        Ok(())
    }
    .await;
    let read = read.and_then(|()| match fields.get(":action").and_then(|v| v.first()).map(String::as_str) {
        Some("file_upload") => Ok(()),
        other => Err(ApiError::bad_request(format!("unsupported :action {other:?}; only file_upload is"), STYLE)),
    });
    match (read, content) {
        (Ok(()), Some((filename, staged))) => Ok((fields, filename, staged)),
        (Ok(()), None) => Err(ApiError::bad_request("the upload has no content file", STYLE)),
        (Err(error), content) => {
            if let Some((_, staged)) = content {
                staged.discard().await;
            }
            Err(error)
        }
    }
}
