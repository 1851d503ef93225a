//! The management API's description, generated from the handlers and the types they
//! answer with (utoipa), served at `/api/v1/openapi.json`. The copy checked in at
//! `registry/openapi.json` is compared with it by a test, so a change to the API shows in
//! review.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use super::{admin, inventory};

/// Every error of the management API.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a person to act on.
    pub error: String,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Wharf management API",
        version = "v1",
        description = "Tokens, repositories, packages and versions (status, copy, delete) and the audit trail of a Wharf Domain's registry. Credentials: a registry token, the admin token or (in cluster mode) a Kubernetes ServiceAccount token, as a bearer token or a Basic password."
    ),
    paths(
        admin::mint_token,
        admin::exchange_oidc,
        admin::exchange_kubernetes,
        admin::sign_in_options,
        admin::list_tokens,
        admin::revoke_subject,
        admin::revoke_token,
        admin::list_repositories,
        inventory::list_packages,
        inventory::list_versions,
        inventory::get_version,
        inventory::set_statuses,
        admin::set_status,
        admin::delete_version,
        admin::origin,
        inventory::explain,
        inventory::copy,
        inventory::audit,
        document,
    ),
    modifiers(&Credentials),
    security(("bearer" = [])),
    tags(
        (name = "auth", description = "Registry tokens: minted, exchanged, listed, revoked"),
        (name = "repositories", description = "What the caller may read"),
        (name = "packages", description = "What a Repository holds"),
        (name = "versions", description = "Versions: read in full, statuses, copies, deletion"),
        (name = "audit", description = "Who did what, from where"),
    )
)]
pub struct ManagementApi;

struct Credentials;

impl Modify for Credentials {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The description as JSON, rendered once.
pub fn json() -> &'static str {
    static RENDERED: OnceLock<String> = OnceLock::new();
    RENDERED
        .get_or_init(|| ManagementApi::openapi().to_pretty_json().unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}")))
}

/// `GET /api/v1/openapi.json`: this API's OpenAPI 3.1 description. Public, like any
/// published API description: it names no Repository or package.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "repositories", security(()), responses((status = 200, description = "OpenAPI 3.1", body = Object)))]
pub async fn document() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], json()).into_response()
}
