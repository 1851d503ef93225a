//! The management API under `/api/v1/`: tokens, repositories, versions and
//! their statuses, and the effective origin configuration of a package.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use wharf_api::PackageFormat;

use super::access::{Access, Client};
use super::credentials::authenticate;
use super::openapi::ErrorBody;
use super::{ApiError, ErrorStyle, SharedState};
use crate::audit::EventData;
use crate::auth::{Permission, Principal, TokenClaims};
use wharf_core::{PackageId, VersionStatus};

/// Callers of the management API: errors as `{"error": …}`.
pub enum Admin {}

impl Client for Admin {
    const STYLE: ErrorStyle = ErrorStyle::Json;
}

const STYLE: ErrorStyle = Admin::STYLE;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenRequest {
    /// Repository names, or `["*"]` for all of the Domain's.
    repositories: Vec<String>,
    permissions: Vec<Permission>,
    ttl_seconds: Option<u64>,
    /// Who the token is for; shown by `npm whoami` and in logs.
    subject: Option<String>,
}

/// What a token request asks for, checked: the subject and lifetime of the token to mint.
fn check_token_request(
    state: &SharedState,
    principal: &Principal,
    request: &mut TokenRequest,
) -> Result<(String, u64), ApiError> {
    if request.repositories.is_empty() || request.permissions.is_empty() {
        return Err(ApiError::bad_request("name at least one repository and one permission", STYLE));
    }
    if matches!(principal, Principal::ServiceAccount(_) | Principal::Oidc(_) | Principal::KubernetesUser(_)) {
        check_exchange(state, principal, request)?;
        if request.subject.as_ref().is_some_and(|subject| subject != principal.name()) {
            return Err(ApiError::bad_request(
                format!("an exchanged token is for {}; leave subject out", principal.name()),
                STYLE,
            ));
        }
        request.subject = Some(principal.name().to_owned());
    } else {
        for repo in &request.repositories {
            if repo != "*" && state.packages.config.repository(repo).is_none() {
                return Err(ApiError::bad_request(format!("repository {repo} does not exist"), STYLE));
            }
        }
    }
    let min_ttl = wharf_api::TOKEN_TTL_MIN.as_secs();
    let max_ttl = state.packages.config.domain.spec.max_token_ttl().as_secs();
    let ttl = request.ttl_seconds.unwrap_or(max_ttl);
    if !(min_ttl..=max_ttl).contains(&ttl) {
        return Err(ApiError::bad_request(format!("ttlSeconds must be between {min_ttl} and {max_ttl}"), STYLE));
    }
    let subject = request.subject.clone().unwrap_or_else(|| "token".into());
    if subject.is_empty() || subject.len() > 128 || subject.chars().any(char::is_control) {
        return Err(ApiError::bad_request("subject must be 1–128 printable characters", STYLE));
    }
    Ok((subject, ttl))
}

/// `POST /api/v1/auth/token`: a scoped, short-lived registry token. An admin mints any; a
/// Kubernetes ServiceAccount (cluster mode) exchanges its own token for one covering what the
/// Repositories' `access` grants it now, for clients that keep a token in their configuration
/// longer than a projected token lives. Tokens do not mint tokens.
#[utoipa::path(post, path = "/api/v1/auth/token", tag = "auth", request_body = TokenRequest, responses((status = 201, description = "The token (shown once)", body = IssuedTokenBody), (status = 400, description = "The request is malformed", body = ErrorBody), (status = 401, description = "A credential is needed", body = ErrorBody), (status = 403, description = "The credential does not allow it", body = ErrorBody)))]
pub async fn mint_token(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Result<Json<TokenRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let principal = authenticate(&state, &headers, "api", STYLE).await?;
    match &principal {
        Principal::Anonymous => {
            return Err(ApiError::unauthorized(
                "minting a token needs an admin token, or a ServiceAccount token in cluster mode",
                "api",
                STYLE,
            ));
        }
        Principal::Token(_) | Principal::Oidc(_) | Principal::KubernetesUser(_) => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "a registry token cannot mint tokens; use an admin or a ServiceAccount token",
                STYLE,
            ));
        }
        Principal::Admin | Principal::ServiceAccount(_) => {}
    }
    let Json(mut request) = body.map_err(|e| ApiError::bad_request(e.body_text(), STYLE))?;
    let (subject, ttl) = check_token_request(&state, &principal, &mut request)?;
    let event = if principal == Principal::Admin { "token.minted" } else { "token.exchanged" };
    issue(&state, subject, request, ttl, event).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OidcExchangeRequest {
    /// An ID token of an issuer the Domain trusts (`spec.tokens.trustedIssuers`).
    id_token: String,
    repositories: Vec<String>,
    permissions: Vec<Permission>,
    ttl_seconds: Option<u64>,
}

/// `POST /api/v1/auth/oidc`: a CI job's ID token exchanged for a registry token, for
/// named repositories and permissions each granted now by an `OIDC` subject of the
/// Repository's `access` that the token's claims match. No stored secret is involved.
#[utoipa::path(post, path = "/api/v1/auth/oidc", tag = "auth", request_body = OidcExchangeRequest, security(()), responses((status = 201, description = "The token (shown once)", body = IssuedTokenBody), (status = 400, description = "The request is malformed", body = ErrorBody), (status = 401, description = "A credential is needed", body = ErrorBody), (status = 403, description = "The credential does not allow it", body = ErrorBody)))]
pub async fn exchange_oidc(
    State(state): State<SharedState>,
    body: Result<Json<OidcExchangeRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(exchange) = body.map_err(|e| ApiError::bad_request(e.body_text(), STYLE))?;
    let verified = state.oidc.verify(&state.packages.config.domain.spec, exchange.id_token.trim()).await;
    let verified = verified.map_err(|error| match error {
        crate::oidc::OidcError::Unavailable { .. } => {
            tracing::warn!(%error, "an ID token could not be verified");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, error.to_string(), STYLE)
        }
        refused => ApiError::unauthorized(refused.to_string(), "api", STYLE),
    })?;
    let principal = oidc_principal(&state, verified);
    exchange_for(&state, principal, exchange.repositories, exchange.permissions, exchange.ttl_seconds).await
}

/// Who a verified ID token speaks for: a person (named as the issuer's `people` settings
/// say) or a CI job (its issuer and subject).
pub(super) fn oidc_principal(state: &SharedState, verified: crate::oidc::VerifiedIdToken) -> Principal {
    let spec = &state.packages.config.domain.spec;
    let person =
        spec.trusted_issuer(&verified.issuer).and_then(|issuer| issuer.people.as_ref()?.person(&verified.claims));
    Principal::Oidc(crate::auth::OidcIdentity {
        // A person is known by name (listed and revoked as such), a CI job by issuer and subject.
        name: person
            .as_ref()
            .map_or_else(|| format!("{}#{}", verified.issuer, verified.subject), |p| p.username.clone()),
        issuer: verified.issuer,
        claims: verified.claims,
        person,
    })
}

/// Mints the registry token an exchanged identity asked for, within what it is granted now;
/// an hour unless it asks otherwise (a CI job needs its token for the job).
async fn exchange_for(
    state: &SharedState,
    principal: Principal,
    repositories: Vec<String>,
    permissions: Vec<Permission>,
    ttl_seconds: Option<u64>,
) -> Result<Response, ApiError> {
    let max_ttl = state.packages.config.domain.spec.max_token_ttl().as_secs();
    let mut request = TokenRequest {
        repositories,
        permissions,
        ttl_seconds: Some(ttl_seconds.unwrap_or(3600).min(max_ttl)),
        subject: None,
    };
    crate::audit::attribute(&principal);
    let (subject, ttl) = check_token_request(state, &principal, &mut request)?;
    issue(state, subject, request, ttl, "token.exchanged").await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubernetesExchangeRequest {
    /// The person's own Kubernetes token, as their kubeconfig holds it.
    token: String,
    repositories: Vec<String>,
    permissions: Vec<Permission>,
    ttl_seconds: Option<u64>,
}

/// `POST /api/v1/auth/kubernetes`: a person's Kubernetes token (`wharf login
/// --kubeconfig`) exchanged for a registry token, for named repositories and permissions
/// each granted now by a `User` or `Group` subject naming them as the apiserver does. Only
/// where the Domain sets `spec.tokens.kubernetesUsers`.
#[utoipa::path(post, path = "/api/v1/auth/kubernetes", tag = "auth", request_body = KubernetesExchangeRequest, security(()), responses((status = 201, description = "The token (shown once)", body = IssuedTokenBody), (status = 400, description = "The request is malformed", body = ErrorBody), (status = 401, description = "A credential is needed", body = ErrorBody), (status = 403, description = "The credential does not allow it", body = ErrorBody)))]
pub async fn exchange_kubernetes(
    State(state): State<SharedState>,
    body: Result<Json<KubernetesExchangeRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    if !state.packages.config.domain.spec.kubernetes_users() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "this Domain does not take Kubernetes users' tokens; its spec.tokens.kubernetesUsers is not set",
            STYLE,
        ));
    }
    let Some(reviewer) = &state.token_review else {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "Kubernetes users are served in cluster mode only", STYLE));
    };
    let Json(exchange) = body.map_err(|e| ApiError::bad_request(e.body_text(), STYLE))?;
    if exchange.token.trim().is_empty() {
        return Err(ApiError::bad_request("token is empty: send the token of your kubeconfig's user", STYLE));
    }
    let person = reviewer.review_person(exchange.token.trim()).await.map_err(|error| match error {
        crate::token_review::ReviewError::Unavailable(_) => {
            tracing::warn!(%error, "a Kubernetes user's token could not be reviewed");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, error.to_string(), STYLE)
        }
        refused => ApiError::unauthorized(refused.to_string(), "api", STYLE),
    })?;
    let principal = Principal::KubernetesUser(person);
    exchange_for(&state, principal, exchange.repositories, exchange.permissions, exchange.ttl_seconds).await
}

/// Whether people sign in to this Domain with an identity provider (`wharf login --sign-in`).
pub(super) fn people_sign_in(state: &SharedState) -> bool {
    let spec = &state.packages.config.domain.spec;
    spec.tokens
        .iter()
        .flat_map(|tokens| &tokens.trusted_issuers)
        .any(|issuer| issuer.people.as_ref().is_some_and(|people| people.client_id.is_some()))
}

/// `GET /api/v1/auth/sign-in`: the identity providers people sign in with (`wharf login
/// --sign-in`), each an issuer and the public client to use, and whether Kubernetes users'
/// tokens are taken. Public: a client needs it before it has any credential, and it names
/// nothing a sign-in page would not.
#[utoipa::path(get, path = "/api/v1/auth/sign-in", tag = "auth", responses((status = 200, body = SignInOptions)))]
pub async fn sign_in_options(State(state): State<SharedState>) -> Json<SignInOptions> {
    let spec = &state.packages.config.domain.spec;
    let providers = spec
        .tokens
        .iter()
        .flat_map(|tokens| &tokens.trusted_issuers)
        .filter_map(|issuer| {
            let people = issuer.people.as_ref()?;
            Some(SignInProvider {
                issuer: issuer.issuer.clone(),
                client_id: people.client_id.clone()?,
                scopes: people.sign_in_scopes().iter().map(ToString::to_string).collect(),
            })
        })
        .collect();
    Json(SignInOptions { providers, kubernetes_users: spec.kubernetes_users() })
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignInOptions {
    providers: Vec<SignInProvider>,
    /// Whether people's own Kubernetes tokens are exchanged (`wharf login --kubeconfig`).
    kubernetes_users: bool,
}

/// An identity provider people sign in with, and the public client to use.
#[derive(Serialize, ToSchema)]
pub struct SignInProvider {
    issuer: String,
    #[serde(rename = "clientID")]
    client_id: String,
    scopes: Vec<String>,
}

/// A registry token, handed out once: it is never shown again.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuedTokenBody {
    token: String,
    expires_at: Option<String>,
    repositories: Vec<String>,
    permissions: Vec<Permission>,
}

/// A token as listings show it, without its secret.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    id: String,
    subject: String,
    repositories: Vec<String>,
    permissions: Vec<Permission>,
    issued_at: Option<String>,
    expires_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct TokenList {
    tokens: Vec<TokenInfo>,
}

#[derive(Serialize, ToSchema)]
pub struct RevokedTokens {
    /// The subject whose tokens were revoked, when the request named one.
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
    revoked: Vec<TokenInfo>,
}

/// Records and signs a token for `subject`, and audits it as `event`.
async fn issue(
    state: &SharedState,
    subject: String,
    request: TokenRequest,
    ttl: u64,
    event: &'static str,
) -> Result<Response, ApiError> {
    let now = chrono::Utc::now().timestamp();
    let claims = TokenClaims {
        sub: subject,
        dom: state.signer.domain().to_owned(),
        repos: request.repositories,
        perms: request.permissions,
        iat: now,
        exp: now + ttl as i64,
        jti: uuid::Uuid::new_v4().to_string(),
    };
    // Recorded first, so every token handed out can be listed and revoked.
    state.tokens.record(&claims).await.map_err(|e| ApiError::from_storage(&e, STYLE))?;
    let token = state.signer.mint(&claims);
    let expires_at = chrono::DateTime::from_timestamp(claims.exp, 0).map(|t| t.to_rfc3339());
    tracing::info!(subject = %claims.sub, repositories = ?claims.repos, permissions = ?claims.perms, ttl, "minted token");
    state.audit.emit(event, None, token_event(&claims.jti, &claims.sub, &claims.repos, &claims.perms));
    let body = IssuedTokenBody { token, expires_at, repositories: claims.repos, permissions: claims.perms };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// The token endpoints below are the admin's: who holds a registry token
/// and revoking it is the Domain operator's business.
async fn require_admin(state: &SharedState, headers: &HeaderMap) -> Result<(), ApiError> {
    match authenticate(state, headers, "api", STYLE).await? {
        Principal::Admin => Ok(()),
        Principal::Anonymous => {
            Err(ApiError::unauthorized("listing and revoking tokens needs the admin token", "api", STYLE))
        }
        other => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!("{} may not list or revoke tokens; that needs the admin token", other.name()),
            STYLE,
        )),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SubjectQuery {
    subject: Option<String>,
}

/// The admin's request, and the subject it names (`?subject=`), if any.
async fn admin_with_subject(
    state: &SharedState,
    headers: &HeaderMap,
    query: Result<Query<SubjectQuery>, QueryRejection>,
) -> Result<Option<String>, ApiError> {
    require_admin(state, headers).await?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text(), STYLE))?;
    Ok(query.subject.filter(|s| !s.is_empty()))
}

/// What a token event says about the token (never its secret).
fn token_event(id: &str, subject: &str, repositories: &[String], permissions: &[Permission]) -> EventData {
    EventData::default()
        .detail("tokenId", id)
        .detail("tokenSubject", subject)
        .detail("repositories", repositories)
        .detail("permissions", permissions)
}

fn token_json(token: &crate::tokens::IssuedToken) -> TokenInfo {
    let time = |t: i64| chrono::DateTime::from_timestamp(t, 0).map(|t| t.to_rfc3339());
    TokenInfo {
        id: token.id.clone(),
        subject: token.subject.clone(),
        repositories: token.repositories.clone(),
        permissions: token.permissions.clone(),
        issued_at: time(token.issued_at),
        expires_at: time(token.expires_at),
    }
}

/// `GET /api/v1/auth/tokens[?subject=]`: the registry tokens still valid
/// (neither expired nor revoked), never their secrets.
#[utoipa::path(get, path = "/api/v1/auth/tokens", tag = "auth", params(SubjectQuery), responses((status = 200, body = TokenList), (status = 400, description = "The request is malformed", body = ErrorBody), (status = 401, description = "A credential is needed", body = ErrorBody), (status = 403, description = "The credential does not allow it", body = ErrorBody)))]
pub async fn list_tokens(
    State(state): State<SharedState>,
    headers: HeaderMap,
    query: Result<Query<SubjectQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let subject = admin_with_subject(&state, &headers, query).await?;
    let live =
        state.tokens.live(chrono::Utc::now().timestamp()).await.map_err(|e| ApiError::from_storage(&e, STYLE))?;
    let tokens: Vec<_> =
        live.iter().filter(|t| subject.as_ref().is_none_or(|s| *s == t.subject)).map(token_json).collect();
    Ok(Json(TokenList { tokens }).into_response())
}

/// `DELETE /api/v1/auth/tokens/{id}`: revokes one token, on every replica
/// within seconds.
#[utoipa::path(delete, path = "/api/v1/auth/tokens/{id}", tag = "auth", params(("id" = String, Path, description = "The token's id")), responses((status = 200, body = RevokedTokens), (status = 400, description = "The request is malformed", body = ErrorBody), (status = 401, description = "A credential is needed", body = ErrorBody), (status = 403, description = "The credential does not allow it", body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn revoke_token(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    require_admin(&state, &headers).await?;
    let now = chrono::Utc::now().timestamp();
    let revoked = state.tokens.revoke(&id, now).await.map_err(|e| ApiError::from_storage(&e, STYLE))?;
    let token = revoked.ok_or_else(|| ApiError::not_found(format!("no valid token has id {id}"), STYLE))?;
    tracing::info!(id = %token.id, subject = %token.subject, "revoked token");
    state.audit.emit(
        "token.revoked",
        None,
        token_event(&token.id, &token.subject, &token.repositories, &token.permissions),
    );
    Ok(Json(RevokedTokens { subject: None, revoked: vec![token_json(&token)] }).into_response())
}

/// `DELETE /api/v1/auth/tokens?subject=`: revokes every token of a subject
/// issued until now (tokens minted for it later are valid).
#[utoipa::path(delete, path = "/api/v1/auth/tokens", tag = "auth", params(SubjectQuery), responses((status = 200, body = RevokedTokens), (status = 400, description = "The request is malformed", body = ErrorBody), (status = 401, description = "A credential is needed", body = ErrorBody), (status = 403, description = "The credential does not allow it", body = ErrorBody)))]
pub async fn revoke_subject(
    State(state): State<SharedState>,
    headers: HeaderMap,
    query: Result<Query<SubjectQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let subject = admin_with_subject(&state, &headers, query).await?.ok_or_else(|| {
        ApiError::bad_request("name the subject whose tokens to revoke (?subject=), or DELETE …/tokens/{id}", STYLE)
    })?;
    let now = chrono::Utc::now().timestamp();
    let revoked = state.tokens.revoke_subject(&subject, now).await.map_err(|e| ApiError::from_storage(&e, STYLE))?;
    tracing::info!(%subject, count = revoked.len(), "revoked the tokens of a subject");
    for token in &revoked {
        let event = token_event(&token.id, &token.subject, &token.repositories, &token.permissions);
        state.audit.emit("token.revoked", None, event);
    }
    let revoked = revoked.iter().map(token_json).collect();
    Ok(Json(RevokedTokens { subject: Some(subject), revoked }).into_response())
}

/// What a ServiceAccount or an OIDC identity may exchange its token for: named
/// repositories, read or publish, each granted by the Repository's `access` now. A
/// Repository that does not exist is refused as one it may not use, so the answer reveals
/// nothing about it.
fn check_exchange(state: &SharedState, principal: &Principal, request: &TokenRequest) -> Result<(), ApiError> {
    for repo in &request.repositories {
        if repo == "*" {
            return Err(ApiError::bad_request("an exchange names each repository; `*` is for admins", STYLE));
        }
        let repository = state.packages.config.repository(repo);
        for permission in &request.permissions {
            if !repository.is_some_and(|repository| principal.may(repository, *permission)) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!("{} may not {} on repository {repo}", principal.name(), permission.as_str()),
                    STYLE,
                ));
            }
        }
    }
    Ok(())
}

/// `GET /api/v1/repositories`: the repositories this caller may read, from where it is.
#[utoipa::path(get, path = "/api/v1/repositories", tag = "repositories", security((), ("bearer" = [])), responses((status = 200, body = RepositoryList), (status = 401, body = ErrorBody)))]
pub async fn list_repositories(
    State(state): State<SharedState>,
    client: Option<axum::Extension<super::connections::ClientAddress>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let principal = authenticate(&state, &headers, "api", STYLE).await?;
    let address = client.map(|client| client.0.0);
    let repositories: Vec<_> = state
        .packages
        .config
        .repositories
        .iter()
        .filter(|r| principal.may(r, Permission::Read) && state.network_refusal(r, Permission::Read, address).is_none())
        .map(|r| {
            let name = r.metadata.name.as_deref().unwrap_or_default();
            // The formats whose public packages reach clients through this Repository's chain
            // (`wharf login` makes such a Repository the client's mirror of the public index).
            let chain = wharf_core::policy::resolution_order(&state.packages.config, name);
            let mut proxies: Vec<&str> = chain.externals.iter().map(|hop| hop.connection.format.as_str()).collect();
            proxies.sort_unstable();
            proxies.dedup();
            let endpoints = [
                ("npm", format!("/npm/{name}/")),
                ("pypi", format!("/pypi/{name}/simple/")),
                ("cargo", format!("/cargo/{name}/index/")),
                ("go", format!("/go/{name}")),
                ("generic", format!("/generic/{name}/")),
                ("maven", format!("/maven/{name}/")),
                ("nuget", format!("/nuget/{name}/v3/index.json")),
                ("swift", format!("/swift/{name}")),
            ];
            RepositorySummary {
                name: name.to_owned(),
                description: r.spec.description.clone(),
                anonymous_read: r.allows_anonymous_read(),
                proxies: proxies.into_iter().map(str::to_owned).collect(),
                endpoints: endpoints.into_iter().map(|(format, path)| (format.to_owned(), path)).collect(),
            }
        })
        .collect();
    Ok(Json(RepositoryList { domain: state.signer.domain().to_owned(), repositories }).into_response())
}

#[derive(Serialize, ToSchema)]
pub struct RepositoryList {
    domain: String,
    repositories: Vec<RepositorySummary>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepositorySummary {
    name: String,
    description: Option<String>,
    anonymous_read: bool,
    /// The formats whose public packages reach clients through this Repository's chain.
    proxies: Vec<String>,
    /// Each format's path on this registry.
    endpoints: std::collections::BTreeMap<String, String>,
}

/// Normalises a package name by its format's rules.
pub(super) fn package_id(format: &str, package: &str) -> Result<PackageId, ApiError> {
    let format: PackageFormat =
        format.parse().map_err(|_| ApiError::bad_request(format!("unknown package format {format}"), STYLE))?;
    let name = match format {
        PackageFormat::Npm => {
            wharf_formats::npm::validate_name(package).map_err(|e| ApiError::bad_request(e.to_string(), STYLE))?;
            package.to_owned()
        }
        PackageFormat::Pypi => {
            wharf_formats::pypi::validate_name(package).map_err(|e| ApiError::bad_request(e.to_string(), STYLE))?;
            wharf_formats::pypi::normalize_name(package)
        }
        // `namespace/package`, the slash written %2F.
        PackageFormat::Generic => {
            let (namespace, name) = package
                .split_once('/')
                .ok_or_else(|| ApiError::bad_request("a generic package is named namespace%2Fpackage here", STYLE))?;
            wharf_formats::generic::validate_namespace(namespace)
                .map_err(|e| ApiError::bad_request(e.to_string(), STYLE))?;
            wharf_formats::generic::validate_package(name).map_err(|e| ApiError::bad_request(e.to_string(), STYLE))?;
            wharf_formats::generic::package_name(namespace, name)
        }
        PackageFormat::Cargo => {
            wharf_formats::cargo::validate_name(package).map_err(|e| ApiError::bad_request(e.to_string(), STYLE))?;
            wharf_formats::cargo::canonical_name(package)
        }
        // The module path as written (`example.com/Acme/m`, slashes as %2F).
        PackageFormat::Go => {
            wharf_formats::go::check_module_path(package).map_err(|e| ApiError::bad_request(e.to_string(), STYLE))?;
            package.to_owned()
        }
        PackageFormat::Maven => wharf_formats::maven::parse_package_name(package)
            .map_err(|e| ApiError::bad_request(e.to_string(), STYLE))?
            .package_name(),
        PackageFormat::Nuget => {
            wharf_formats::nuget::validate_id(package).map_err(|e| ApiError::bad_request(e.to_string(), STYLE))?;
            wharf_formats::nuget::lower_id(package)
        }
        // `scope.name`.
        PackageFormat::Swift => {
            let (scope, name) = package
                .split_once('.')
                .ok_or_else(|| ApiError::bad_request("a Swift package is named scope.name here", STYLE))?;
            wharf_formats::swift::validate_scope(scope).map_err(|e| ApiError::bad_request(e.to_string(), STYLE))?;
            wharf_formats::swift::validate_name(name).map_err(|e| ApiError::bad_request(e.to_string(), STYLE))?;
            wharf_formats::swift::package_key(scope, name)
        }
    };
    Ok(PackageId::new(format, name))
}

/// A version as the format keys it (NuGet's `1.0` is `1.0.0`).
pub(super) fn version_key(id: &PackageId, version: &str) -> Result<String, ApiError> {
    match id.format {
        PackageFormat::Nuget => wharf_formats::nuget::parse_version(version)
            .map(|v| v.key())
            .map_err(|e| ApiError::bad_request(e.to_string(), STYLE)),
        _ => Ok(version.to_owned()),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StatusRequest {
    status: VersionStatus,
    /// Change only if the version is in this status now.
    expected_status: Option<VersionStatus>,
}

/// `PUT …/versions/{version}/status`: Published ↔ Unlisted ↔ Archived, or
/// Disposed for good. Needs publish rights on the repository.
#[utoipa::path(put, path = "/api/v1/repositories/{repo}/packages/{format}/{package}/versions/{version}/status", tag = "versions", params(("repo" = String, Path, description = "The Repository"), ("format" = String, Path, description = "npm, pypi, cargo, go, maven, nuget, swift or generic"), ("package" = String, Path, description = "The package name (a Maven groupId:artifactId, a generic namespace%2Fpackage, a Swift scope.name, a Go module path with %2F)"), ("version" = String, Path)), request_body = StatusRequest, responses((status = 200, body = StatusChanged), (status = 400, description = "The request is malformed", body = ErrorBody), (status = 401, description = "A credential is needed", body = ErrorBody), (status = 403, description = "The credential does not allow it", body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, description = "Not in expectedStatus, or Disposed", body = ErrorBody)))]
pub async fn set_status(
    access: Access<Admin>,
    Path((repo, format, package, version)): Path<(String, String, String, String)>,
    State(state): State<SharedState>,
    body: Result<Json<StatusRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body.map_err(|e| ApiError::bad_request(e.body_text(), STYLE))?;
    if request.status == VersionStatus::Unfinished {
        return Err(ApiError::bad_request("a version cannot be set back to Unfinished", STYLE));
    }
    let id = package_id(&format, &package)?;
    let version = version_key(&id, &version)?;
    state
        .packages
        .registry
        .set_status(&repo, &id, &version, request.expected_status, request.status, access.principal.name())
        .await
        .map_err(|e| ApiError::from_core(e, STYLE))?;
    if request.status == VersionStatus::Disposed {
        state.collector.wake();
    }
    Ok(Json(StatusChanged { version, status: request.status }).into_response())
}

#[derive(Serialize, ToSchema)]
pub struct StatusChanged {
    version: String,
    status: VersionStatus,
}

#[derive(Serialize, ToSchema)]
pub struct DeletedVersion {
    version: String,
    deleted: bool,
    /// Whether the number may be published again.
    reusable: bool,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Whether the version number may be published again (default: no, a tombstone
    /// keeps it taken).
    #[serde(default)]
    allow_reuse: bool,
}

/// `DELETE …/packages/{format}/{package}/versions/{version}[?allowReuse=true]`: a
/// takedown. Administrators only: its metadata and records go at once, its bytes with
/// the next collection (started now) when no other version in the Domain names them.
#[utoipa::path(delete, path = "/api/v1/repositories/{repo}/packages/{format}/{package}/versions/{version}", tag = "versions", params(("repo" = String, Path, description = "The Repository"), ("format" = String, Path, description = "npm, pypi, cargo, go, maven, nuget, swift or generic"), ("package" = String, Path, description = "The package name (a Maven groupId:artifactId, a generic namespace%2Fpackage, a Swift scope.name, a Go module path with %2F)"), ("version" = String, Path), DeleteQuery), responses((status = 200, body = DeletedVersion), (status = 400, description = "The request is malformed", body = ErrorBody), (status = 401, description = "A credential is needed", body = ErrorBody), (status = 403, description = "The credential does not allow it", body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_version(
    access: Access<Admin>,
    Path((repo, format, package, version)): Path<(String, String, String, String)>,
    query: Result<Query<DeleteQuery>, QueryRejection>,
    State(state): State<SharedState>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text(), STYLE))?;
    if !matches!(access.principal, Principal::Admin) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "deleting a version is for administrators; to withdraw it, set its status to Disposed",
            STYLE,
        ));
    }
    let id = package_id(&format, &package)?;
    let version = version_key(&id, &version)?;
    let registry = &state.packages.registry;
    registry
        .delete_version(&repo, &id, &version, query.allow_reuse, access.principal.name())
        .await
        .map_err(|e| ApiError::from_core(e, STYLE))?;
    state.collector.wake();
    tracing::info!(%repo, package = %id.name, %version, allow_reuse = query.allow_reuse, "deleted a version");
    state.collector.report_action(wharf_api::usage::RepositoryAction {
        id: uuid::Uuid::new_v4().to_string(),
        at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        kind: "Deleted".to_owned(),
        repository: repo.clone(),
        format: id.format.as_str().to_owned(),
        package: id.name.clone(),
        versions: vec![version.clone()],
        by: access.principal.name().to_owned(),
        source: None,
    });
    Ok(Json(DeletedVersion { version, deleted: true, reusable: query.allow_reuse }).into_response())
}

/// `GET …/packages/{format}/{package}/origin`: the effective origin
/// configuration of a package in a repository and what produced each part.
#[utoipa::path(get, path = "/api/v1/repositories/{repo}/packages/{format}/{package}/origin", tag = "packages", params(("repo" = String, Path, description = "The Repository"), ("format" = String, Path, description = "npm, pypi, cargo, go, maven, nuget, swift or generic"), ("package" = String, Path, description = "The package name (a Maven groupId:artifactId, a generic namespace%2Fpackage, a Swift scope.name, a Go module path with %2F)")), security((), ("bearer" = [])), responses((status = 200, description = "The effective origin configuration and what decided each part", body = Object), (status = 400, description = "The request is malformed", body = ErrorBody), (status = 401, description = "A credential is needed", body = ErrorBody), (status = 403, description = "The credential does not allow it", body = ErrorBody)))]
pub async fn origin(
    access: Access<Admin>,
    Path((repo, format, package)): Path<(String, String, String)>,
    State(state): State<SharedState>,
) -> Result<Response, ApiError> {
    let id = package_id(&format, &package)?;
    let config = &state.packages.config;
    let readable = |name: &str| config.repository(name).is_some_and(|r| access.principal.may(r, Permission::Read));
    let report = state.packages.origin_report(&repo, &id, readable).await;
    Ok(Json(report.map_err(|e| ApiError::from_core(e, STYLE))?).into_response())
}
