//! Generic file endpoints under `/generic/{repo}/{namespace}/{package}/`:
//! PUT an asset with its SHA-256, GET it back, list versions and assets.
//! Generic packages are never fetched from upstreams.

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use serde::Deserialize;
use serde_json::json;
use wharf_api::{PackageFormat, Repository};

use super::metrics::tagged;
use super::{ApiError, ErrorStyle, SharedState, blob};
use crate::auth::Permission;
use wharf_core::{NewAsset, PackageId, PublishOutcome};
use wharf_formats::generic as format;
use wharf_storage::BodyError;

const STYLE: ErrorStyle = ErrorStyle::Json;

fn invalid(error: format::GenericError) -> ApiError {
    ApiError::bad_request(error.to_string(), STYLE)
}

fn repo_name(repo: &Repository) -> &str {
    repo.metadata.name.as_deref().unwrap_or_default()
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    /// Keep the version open (Unfinished) for more assets.
    #[serde(default)]
    unfinished: bool,
}

pub async fn put_asset(
    Path((repo, namespace, package, version, asset)): Path<(String, String, String, String, String)>,
    State(state): State<SharedState>,
    query: Result<Query<UploadQuery>, axum::extract::rejection::QueryRejection>,
    request: Request,
) -> Response {
    let result = async {
        let repo = state.repository(&repo, request.headers(), Permission::Publish, STYLE).await?;
        state.authorize(request.headers(), repo, Permission::Publish, STYLE).await?;
        let limit = state.limits.max_upload_bytes;
        if super::declared_length(request.headers()).is_some_and(|n| n > limit) {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the asset exceeds the upload limit of {limit} bytes"),
                STYLE,
            ));
        }
        let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text(), STYLE))?;
        format::validate_namespace(&namespace).map_err(invalid)?;
        format::validate_package(&package).map_err(invalid)?;
        format::validate_package_length(&namespace, &package).map_err(invalid)?;
        format::validate_version(&version).map_err(invalid)?;
        format::validate_asset(&asset).map_err(invalid)?;
        let declared = request
            .headers()
            .get(format::CHECKSUM_HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ApiError::bad_request(format!("the {} header is required", format::CHECKSUM_HEADER), STYLE))?;
        let declared = format::parse_checksum(declared).map_err(invalid)?;
        let body = request.into_body().into_data_stream().map_err(|e| Box::new(e) as BodyError);
        let mut staged = state
            .registry
            .stage_asset(body, limit)
            .await
            .map_err(|e| ApiError::from_core(e, STYLE))?;
        let hashed = &staged.digests().sha256;
        let checked = if *hashed == declared {
            Ok(())
        } else {
            Err(ApiError::bad_request(
                format!("checksum mismatch: the header says {declared}, the body hashes to {hashed}"),
                STYLE,
            ))
        };
        staged.discard_on_err(checked).await?;
        let digests = staged.commit().await.map_err(|e| ApiError::from_storage(&e, STYLE))?;
        let id = PackageId::new(PackageFormat::Generic, format::package_name(&namespace, &package));
        let outcome = state
            .registry
            .add_asset_to_open_version(
                repo_name(repo),
                &id,
                &id.name,
                &version,
                json!({}),
                !query.unfinished,
                NewAsset { name: asset.clone(), digests: digests.clone(), metadata: json!({}) },
            )
            .await
            .map_err(|e| ApiError::from_core(e, STYLE))?;
        let status = match outcome {
            PublishOutcome::Created => StatusCode::CREATED,
            PublishOutcome::AlreadyPublished => StatusCode::OK,
        };
        let body = json!({"namespace": namespace, "package": package, "version": version, "asset": asset, "sha256": digests.sha256, "size": digests.size});
        Ok((status, axum::Json(body)).into_response())
    }
    .await;
    tagged("generic_put", result)
}

pub async fn get_asset(
    Path((repo, namespace, package, version, asset)): Path<(String, String, String, String, String)>,
    State(state): State<SharedState>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let repo = state.repository(&repo, &headers, Permission::Read, STYLE).await?;
        state.authorize(&headers, repo, Permission::Read, STYLE).await?;
        let id = PackageId::new(PackageFormat::Generic, format::package_name(&namespace, &package));
        let missing = || ApiError::not_found(format!("{namespace}/{package} {version} has no asset {asset}"), STYLE);
        let snapshot = state.package(repo_name(repo), &id, STYLE).await?.ok_or_else(missing)?;
        let entry = snapshot.index.versions.get(&version).ok_or_else(missing)?;
        if !entry.status.is_installable() {
            return Err(ApiError::not_found(
                format!("{namespace}/{package} {version} is {}", entry.status.as_str()),
                STYLE,
            ));
        }
        let file = entry.assets.get(&asset).ok_or_else(missing)?;
        blob::serve(&state.registry, &file.digests, "application/octet-stream", &method, &headers, STYLE).await
    }
    .await;
    tagged("generic_get", result)
}

pub async fn get_version(
    Path((repo, namespace, package, version)): Path<(String, String, String, String)>,
    State(state): State<SharedState>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let repo = state.repository(&repo, &headers, Permission::Read, STYLE).await?;
        state.authorize(&headers, repo, Permission::Read, STYLE).await?;
        let id = PackageId::new(PackageFormat::Generic, format::package_name(&namespace, &package));
        let missing = || ApiError::not_found(format!("{namespace}/{package} {version} not found"), STYLE);
        let snapshot = state.package(repo_name(repo), &id, STYLE).await?.ok_or_else(missing)?;
        let entry = snapshot.index.versions.get(&version).ok_or_else(missing)?;
        Ok(axum::Json(format::version_document(&namespace, &package, &version, entry)).into_response())
    }
    .await;
    tagged("generic_version", result)
}

pub async fn get_package(
    Path((repo, namespace, package)): Path<(String, String, String)>,
    State(state): State<SharedState>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let repo = state.repository(&repo, &headers, Permission::Read, STYLE).await?;
        state.authorize(&headers, repo, Permission::Read, STYLE).await?;
        let id = PackageId::new(PackageFormat::Generic, format::package_name(&namespace, &package));
        let snapshot = state
            .package(repo_name(repo), &id, STYLE)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("{namespace}/{package} not found"), STYLE))?;
        Ok(axum::Json(format::package_document(&namespace, &package, &snapshot.index)).into_response())
    }
    .await;
    tagged("generic_package", result)
}
