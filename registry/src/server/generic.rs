//! Generic file endpoints under `/generic/{repo}/{namespace}/{package}/`:
//! PUT an asset with its SHA-256, GET it back, list versions and assets.
//! Generic packages are never fetched from upstreams.

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use serde::Deserialize;
use serde_json::json;
use wharf_api::PackageFormat;

use super::access::{Authorized, Client};
use super::metrics::tagged;
use super::{ApiError, ErrorStyle, SharedState, blob};
use wharf_core::{Declared, Digest, NewAsset, PackageId, Placement, Publication, PublishOutcome};
use wharf_formats::generic as format;
use wharf_storage::BodyError;

/// Generic files' clients (curl and the like): errors as `{"error": …}`.
pub enum Generic {}

impl Client for Generic {
    const STYLE: ErrorStyle = ErrorStyle::Json;
}

const STYLE: ErrorStyle = Generic::STYLE;

fn invalid(error: format::GenericError) -> ApiError {
    ApiError::bad_request(error.to_string(), STYLE)
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    /// Keep the version open (Unfinished) for more assets.
    #[serde(default)]
    unfinished: bool,
}

pub async fn put_asset(
    access: Authorized<Generic>,
    Path((_, namespace, package, version, asset)): Path<(String, String, String, String, String)>,
    State(state): State<SharedState>,
    query: Result<Query<UploadQuery>, axum::extract::rejection::QueryRejection>,
    request: Request,
) -> Response {
    let result = async {
        let access = access?;
        let limit = state.limits.max_upload_bytes;
        if super::declared_length(request.headers()).is_some_and(|n| n > limit) {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the asset exceeds the upload limit of {limit} bytes"),
                STYLE,
            ));
        }
        let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text(), STYLE))?;
        let name = checked_name(&namespace, &package, &version, &asset)?;
        let header = request.headers().get(format::CHECKSUM_HEADER).and_then(|v| v.to_str().ok());
        let header = header.ok_or_else(|| ApiError::bad_request(format!("the {} header is required", format::CHECKSUM_HEADER), STYLE))?;
        let checksum = format::parse_checksum(header).map_err(invalid)?;
        let declared = Declared::default().expect(Digest::Sha256, Some(checksum.clone()), move |hashed| {
            format!("checksum mismatch: the header says {checksum}, the body hashes to {hashed}")
        });
        let body = request.into_body().into_data_stream().map_err(|e| Box::new(e) as BodyError);
        let staged = state.packages.registry.stage_asset(body, limit).await.map_err(|e| ApiError::from_core(e, STYLE))?;
        let mut publication = Publication::new(&access.repo, PackageId::new(PackageFormat::Generic, &name), &name, &version);
        publication.files.push(asset.clone());
        publication.admitted_by_first_file = true;
        let accepted = state.packages.accept(&publication, staged, &declared, |_| Ok(())).await;
        let ((), digests) = accepted.map_err(|e| ApiError::from_core(e, STYLE))?;
        let new = NewAsset { name: asset.clone(), digests: digests.clone(), metadata: json!({}) };
        let placement = Placement::OpenFile { version_metadata: json!({}), finalize: !query.unfinished, asset: new };
        let status = match state.packages.write(&publication, placement).await.map_err(|e| ApiError::from_core(e, STYLE))? {
            PublishOutcome::Created => StatusCode::CREATED,
            PublishOutcome::AlreadyPublished => StatusCode::OK,
        };
        let body = json!({"namespace": namespace, "package": package, "version": version, "asset": asset, "sha256": digests.sha256, "size": digests.size});
        Ok((status, axum::Json(body)).into_response())
    }
    .await;
    tagged("generic_put", result)
}

/// The package name of a generic upload's path, every part checked.
fn checked_name(namespace: &str, package: &str, version: &str, asset: &str) -> Result<String, ApiError> {
    format::validate_namespace(namespace).map_err(invalid)?;
    format::validate_package(package).map_err(invalid)?;
    format::validate_package_length(namespace, package).map_err(invalid)?;
    format::validate_version(version).map_err(invalid)?;
    format::validate_asset(asset).map_err(invalid)?;
    Ok(format::package_name(namespace, package))
}

pub async fn get_asset(
    access: Authorized<Generic>,
    Path((_, namespace, package, version, asset)): Path<(String, String, String, String, String)>,
    State(state): State<SharedState>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let access = access?;
        let id = PackageId::new(PackageFormat::Generic, format::package_name(&namespace, &package));
        let missing = || ApiError::not_found(format!("{namespace}/{package} {version} has no asset {asset}"), STYLE);
        let snapshot = state.package(&access.repo, &id, STYLE).await?.ok_or_else(missing)?;
        let entry = snapshot.index.versions.get(&version).ok_or_else(missing)?;
        if !entry.status.is_installable() {
            return Err(ApiError::not_found(
                format!("{namespace}/{package} {version} is {}", entry.status.as_str()),
                STYLE,
            ));
        }
        let file = entry.assets.get(&asset).ok_or_else(missing)?;
        state.packages.registry.record_download(&access.repo, &id, &version, &asset);
        blob::serve(&state.packages.registry, &file.digests, "application/octet-stream", &method, &headers, STYLE).await
    }
    .await;
    tagged("generic_get", result)
}

pub async fn get_version(
    access: Authorized<Generic>,
    Path((_, namespace, package, version)): Path<(String, String, String, String)>,
    State(state): State<SharedState>,
) -> Response {
    let result = async {
        let access = access?;
        let id = PackageId::new(PackageFormat::Generic, format::package_name(&namespace, &package));
        let missing = || ApiError::not_found(format!("{namespace}/{package} {version} not found"), STYLE);
        let snapshot = state.package(&access.repo, &id, STYLE).await?.ok_or_else(missing)?;
        let entry = snapshot.index.versions.get(&version).ok_or_else(missing)?;
        Ok(axum::Json(format::version_document(&namespace, &package, &version, entry)).into_response())
    }
    .await;
    tagged("generic_version", result)
}

pub async fn get_package(
    access: Authorized<Generic>,
    Path((_, namespace, package)): Path<(String, String, String)>,
    State(state): State<SharedState>,
) -> Response {
    let result = async {
        let access = access?;
        let id = PackageId::new(PackageFormat::Generic, format::package_name(&namespace, &package));
        let snapshot = state
            .package(&access.repo, &id, STYLE)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("{namespace}/{package} not found"), STYLE))?;
        Ok(axum::Json(format::package_document(&namespace, &package, &snapshot.index)).into_response())
    }
    .await;
    tagged("generic_package", result)
}
