//! What a signed-in viewer changes from the pages: a version's status (after a
//! confirmation), a copy to another Repository, and the sign-in itself: a pasted token,
//! or an identity provider's (the authorization code flow with PKCE).

use askama::Template;
use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::Utc;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use wharf_api::Repository;
use wharf_core::VersionStatus;

use super::{
    COOKIE, Layout, OIDC_SESSION, PENDING_SIGN_IN, Page, SESSION_SECONDS, STYLE, Viewer, cookie, error_page, from_api,
    install, not_readable, package_href, package_path, segment,
};
use crate::auth::{Permission, Principal};
use crate::server::{ApiError, SharedState};

// ---- Changes ----

/// A status a person may set.
pub(super) struct StatusName(pub(super) VersionStatus);

impl std::str::FromStr for StatusName {
    type Err = ();

    fn from_str(text: &str) -> Result<Self, ()> {
        Ok(StatusName(match text {
            "Published" => VersionStatus::Published,
            "Unlisted" => VersionStatus::Unlisted,
            "Archived" => VersionStatus::Archived,
            "Disposed" => VersionStatus::Disposed,
            _ => return Err(()),
        }))
    }
}

#[derive(Template)]
#[template(path = "ui/confirm.html")]
struct ConfirmPage {
    layout: Layout,
    repository: String,
    package: String,
    version: String,
    from: String,
    to: String,
    consequence: &'static str,
    action: String,
    back: String,
}

#[derive(Deserialize)]
pub(super) struct StatusForm {
    csrf: String,
    version: String,
    expected: String,
    status: String,
    #[serde(default)]
    confirmed: Option<String>,
}

/// The Repository `repo`, when the viewer may publish to it; else the page that says no.
fn publishable<'a>(state: &'a SharedState, viewer: &Viewer, repo: &str) -> Result<&'a Repository, Page> {
    match state.packages.config.repository(repo) {
        Some(repository) if viewer.may(state, repository, Permission::Publish) => Ok(repository),
        Some(repository) if viewer.may(state, repository, Permission::Read) => Err(error_page(
            state,
            viewer,
            StatusCode::FORBIDDEN,
            "Not allowed",
            &format!("{} may not publish to repository {repo}.", viewer.principal.name()),
        )),
        _ => Err(not_readable(state, viewer, &format!("Repository {repo}"))),
    }
}

pub(super) async fn change_status(
    State(state): State<SharedState>,
    viewer: Viewer,
    Path((repo, format, package)): Path<(String, String, String)>,
    Form(form): Form<StatusForm>,
) -> Page {
    if let Err(page) = viewer.check_form(&state, &form.csrf) {
        return page;
    }
    if let Err(page) = publishable(&state, &viewer, &repo) {
        return page;
    }
    let id = match crate::server::admin::package_id(&format, &package) {
        Ok(id) => id,
        Err(error) => return from_api(&state, &viewer, error),
    };
    let (Ok(StatusName(expected)), Ok(StatusName(status))) = (form.expected.parse(), form.status.parse()) else {
        return error_page(&state, &viewer, StatusCode::BAD_REQUEST, "Bad request", "Unknown status.");
    };
    let back = format!("{}?version={}", package_href(&repo, id.format, &id.name), segment(&form.version));
    if form.confirmed.as_deref() != Some("yes") {
        let consequence = match status {
            VersionStatus::Published => "Clients will list and install it again.",
            VersionStatus::Unlisted => "Clients will install it only by exact version; ranges and latest skip it.",
            VersionStatus::Archived => "Clients will no longer install it; it can be published again later.",
            _ => "Its files will be deleted. This cannot be undone.",
        };
        return Page::render(&ConfirmPage {
            layout: viewer.layout(&state, ""),
            action: format!(
                "/ui/repositories/{}/status/{}/{}",
                segment(&repo),
                id.format.as_str(),
                package_path(&id.name)
            ),
            package: id.name.clone(),
            version: form.version,
            from: expected.as_str().to_owned(),
            to: status.as_str().to_owned(),
            consequence,
            back,
            repository: repo,
        });
    }
    let version = match crate::server::admin::version_key(&id, &form.version) {
        Ok(version) => version,
        Err(error) => return from_api(&state, &viewer, error),
    };
    let by = viewer.principal.name();
    if let Err(error) = state.packages.registry.set_status(&repo, &id, &version, Some(expected), status, by).await {
        return from_api(&state, &viewer, ApiError::from_core(error, STYLE));
    }
    if status == VersionStatus::Disposed {
        state.collector.wake();
    }
    redirect(&format!("{back}&done=status&to={}", status.as_str()))
}

#[derive(Deserialize)]
pub(super) struct CopyForm {
    csrf: String,
    version: String,
    destination: String,
}

pub(super) async fn copy(
    State(state): State<SharedState>,
    viewer: Viewer,
    Path((repo, format, package)): Path<(String, String, String)>,
    Form(form): Form<CopyForm>,
) -> Page {
    if let Err(page) = viewer.check_form(&state, &form.csrf) {
        return page;
    }
    if !viewer.reads(&state, &repo) {
        return not_readable(&state, &viewer, &format!("Repository {repo}"));
    }
    if let Err(page) = publishable(&state, &viewer, &form.destination) {
        return page;
    }
    let id = match crate::server::admin::package_id(&format, &package) {
        Ok(id) => id,
        Err(error) => return from_api(&state, &viewer, error),
    };
    let version = match crate::server::admin::version_key(&id, &form.version) {
        Ok(version) => version,
        Err(error) => return from_api(&state, &viewer, error),
    };
    let request = crate::server::inventory::CopyRequest::of_versions(&repo, &id, vec![version.clone()]);
    let report =
        match crate::server::inventory::perform_copy(&state, &form.destination, &viewer.principal, &request).await {
            Ok(report) => report,
            Err(error) => return from_api(&state, &viewer, error),
        };
    if let Some((version, failed)) = report.failed.first_key_value() {
        let message = format!("{version} was not copied to {}: {}", form.destination, failed.message);
        return error_page(&state, &viewer, StatusCode::CONFLICT, "Not copied", &message);
    }
    let back = format!("{}?version={}", package_href(&repo, id.format, &id.name), segment(&version));
    redirect(&format!("{back}&done=copy&to={}", segment(&form.destination)))
}

/// A 303 to `location` (after a form: the browser then GETs it).
fn redirect(location: &str) -> Page {
    Page { status: StatusCode::SEE_OTHER, body: Ok(String::new()), headers: Vec::new() }
        .with_header(header::LOCATION, location.to_owned())
}

// ---- Sign-in ----

#[derive(Template)]
#[template(path = "ui/sign_in.html")]
struct SignInPage {
    layout: Layout,
    base: String,
    error: Option<String>,
    /// How `wharf token` gets a token for a person on this Domain (none: only an
    /// administrator can mint one), and what that does.
    credential: Option<&'static str>,
    how: &'static str,
    /// The identity providers people sign in with here, and where their sign-in starts (a
    /// link: the Content-Security-Policy lets forms submit only to this registry, and the
    /// sign-in leaves it).
    providers: Vec<(String, String)>,
}

impl SignInPage {
    fn new(state: &SharedState, viewer: &Viewer, error: Option<String>) -> SignInPage {
        let sign_in = crate::server::admin::people_sign_in(state);
        let kubernetes = state.packages.config.domain.spec.kubernetes_users();
        let (credential, how) = if sign_in || kubernetes {
            let how = if sign_in {
                "it signs you in with the Domain's identity provider in your browser"
            } else {
                "it exchanges your Kubernetes credentials"
            };
            (Some(install::credential_flag(sign_in, kubernetes)), how)
        } else {
            (None, "")
        };
        let providers = people_providers(state)
            .map(|issuer| (issuer.issuer.clone(), format!("/ui/sign-in/oidc?issuer={}", segment(&issuer.issuer))))
            .collect();
        SignInPage { layout: viewer.layout(state, ""), base: viewer.origin.clone(), error, credential, how, providers }
    }
}

pub(super) async fn sign_in_page(State(state): State<SharedState>, viewer: Viewer) -> Page {
    Page::render(&SignInPage::new(&state, &viewer, None))
}

#[derive(Deserialize)]
pub(super) struct SignInForm {
    csrf: String,
    token: String,
}

pub(super) async fn sign_in(State(state): State<SharedState>, viewer: Viewer, Form(form): Form<SignInForm>) -> Page {
    if let Err(page) = viewer.check_form(&state, &form.csrf) {
        return page;
    }
    let token = form.token.trim();
    let refuse = |message: String| {
        let mut page = Page::render(&SignInPage::new(&state, &viewer, Some(message)));
        page.status = StatusCode::UNAUTHORIZED;
        page
    };
    // A cookie value cannot hold every byte; a token never needs them.
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic() && b != b';' && b != b',' && b != b'"') {
        return refuse("That is not a token: paste the whole token, nothing else.".to_owned());
    }
    let mut headers = HeaderMap::new();
    let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}")) else {
        return refuse("That is not a token.".to_owned());
    };
    headers.insert(header::AUTHORIZATION, value);
    let lifetime = match crate::server::credentials::authenticate(&state, &headers, "ui", STYLE).await {
        Ok(Principal::Token(claims)) => (claims.exp - Utc::now().timestamp()).clamp(60, SESSION_SECONDS),
        Ok(Principal::Anonymous) => return refuse("That is not a token.".to_owned()),
        Ok(_) => SESSION_SECONDS,
        Err(error) => return refuse(format!("The registry does not accept this token: {}", error.message)),
    };
    let secure = if viewer.origin.starts_with("https:") { "; Secure" } else { "" };
    redirect("/ui/").with_header(
        header::SET_COOKIE,
        format!("{COOKIE}={token}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={lifetime}{secure}"),
    )
}

#[derive(Deserialize)]
pub(super) struct SignOutForm {
    csrf: String,
}

pub(super) async fn sign_out(State(state): State<SharedState>, viewer: Viewer, Form(form): Form<SignOutForm>) -> Page {
    if let Err(page) = viewer.check_form(&state, &form.csrf) {
        return page;
    }
    redirect("/ui/")
        .with_header(header::SET_COOKIE, format!("{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"))
}

// ---- Sign-in with an identity provider ----

/// The trusted issuers people sign in with (those with a `people.clientID`).
fn people_providers(state: &SharedState) -> impl Iterator<Item = &wharf_api::TrustedIssuer> {
    let spec = &state.packages.config.domain.spec;
    spec.tokens
        .iter()
        .flat_map(|tokens| &tokens.trusted_issuers)
        .filter(|issuer| issuer.people.as_ref().is_some_and(|people| people.client_id.is_some()))
}

/// Random text for `state`, `nonce` and the PKCE verifier (256 bits, base64url).
fn random_text() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// What the browser keeps while a sign-in with an identity provider is under way.
struct PendingSignIn {
    state: String,
    verifier: String,
    nonce: String,
    issuer: String,
}

impl PendingSignIn {
    fn cookie_value(&self) -> String {
        [self.state.as_str(), &self.verifier, &self.nonce, &URL_SAFE_NO_PAD.encode(&self.issuer)].join(".")
    }

    fn parse(value: &str) -> Option<PendingSignIn> {
        let mut parts = value.split('.');
        let (state, verifier, nonce, issuer) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let issuer = String::from_utf8(URL_SAFE_NO_PAD.decode(issuer).ok()?).ok()?;
        Some(PendingSignIn { state: state.to_owned(), verifier: verifier.to_owned(), nonce: nonce.to_owned(), issuer })
    }
}

fn redirect_uri(viewer: &Viewer) -> String {
    format!("{}/ui/sign-in/callback", viewer.origin)
}

fn secure(viewer: &Viewer) -> &'static str {
    if viewer.origin.starts_with("https:") { "; Secure" } else { "" }
}

#[derive(Deserialize)]
pub(super) struct ProviderQuery {
    issuer: String,
}

/// `GET /ui/sign-in/oidc?issuer=`: sends the browser to the identity provider (the
/// authorization code flow with PKCE, as the public client `people.clientID`), keeping
/// what the way back is checked against in a short-lived cookie.
pub(super) async fn sign_in_with_provider(
    State(state): State<SharedState>,
    viewer: Viewer,
    Query(query): Query<ProviderQuery>,
) -> Page {
    let Some(issuer) = people_providers(&state).find(|issuer| issuer.issuer == query.issuer) else {
        let message = "People do not sign in with that identity provider here.";
        return error_page(&state, &viewer, StatusCode::BAD_REQUEST, "Bad request", message);
    };
    let people = issuer.people.as_ref().unwrap_or_else(|| unreachable!("people_providers keeps those with people"));
    let client_id = people.client_id.as_deref().unwrap_or_default();
    let (authorize, _) = match state.oidc.sign_in_endpoints(issuer).await {
        Ok(endpoints) => endpoints,
        Err(error) => {
            return error_page(&state, &viewer, StatusCode::BAD_GATEWAY, "Sign-in unavailable", &error.to_string());
        }
    };
    let pending = PendingSignIn {
        state: random_text(),
        verifier: random_text(),
        nonce: random_text(),
        issuer: issuer.issuer.clone(),
    };
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(pending.verifier.as_bytes()));
    let Ok(mut url) = url::Url::parse(&authorize) else {
        let message = format!("The identity provider's authorization endpoint {authorize} is not a URL.");
        return error_page(&state, &viewer, StatusCode::BAD_GATEWAY, "Sign-in unavailable", &message);
    };
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", &redirect_uri(&viewer))
        .append_pair("scope", &people.sign_in_scopes().join(" "))
        .append_pair("state", &pending.state)
        .append_pair("nonce", &pending.nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    // Lax: the cookie must come back on the provider's redirect, a navigation from its site.
    let cookie = format!(
        "{PENDING_SIGN_IN}={}; Path=/ui/sign-in; HttpOnly; SameSite=Lax; Max-Age=600{}",
        pending.cookie_value(),
        secure(&viewer)
    );
    redirect(url.as_str()).with_header(header::SET_COOKIE, cookie)
}

#[derive(Deserialize)]
pub(super) struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

#[derive(Template)]
#[template(path = "ui/signed_in.html")]
struct SignedInPage {
    layout: Layout,
}

/// `GET /ui/sign-in/callback`: the identity provider's way back. The code is redeemed
/// with the PKCE verifier, the ID token verified as an exchange verifies it (issuer,
/// audience, signature, expiry) and tied to this sign-in by its nonce; the session then
/// holds it until it expires.
pub(super) async fn signed_in_with_provider(
    State(state): State<SharedState>,
    viewer: Viewer,
    Query(query): Query<CallbackQuery>,
) -> Page {
    let refuse = |status: StatusCode, message: String| {
        let mut page = Page::render(&SignInPage::new(&state, &viewer, Some(message)));
        page.status = status;
        page.with_header(header::SET_COOKIE, format!("{PENDING_SIGN_IN}=; Path=/ui/sign-in; HttpOnly; Max-Age=0"))
    };
    let pending = cookie(&viewer.headers, PENDING_SIGN_IN).and_then(|value| PendingSignIn::parse(&value));
    let Some(pending) = pending else {
        let message =
            "No sign-in is under way in this browser (it took over 10 minutes, or cookies are blocked); start again.";
        return refuse(StatusCode::BAD_REQUEST, message.to_owned());
    };
    if !query.state.as_deref().is_some_and(|state| crate::auth::secrets_equal(state, &pending.state)) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "This is not the sign-in this browser started; start again.".to_owned(),
        );
    }
    if let Some(error) = query.error {
        let reason = query.error_description.unwrap_or_default();
        return refuse(
            StatusCode::UNAUTHORIZED,
            format!("The identity provider refused the sign-in: {error} {reason}"),
        );
    }
    let Some(code) = query.code else {
        return refuse(StatusCode::BAD_REQUEST, "The identity provider sent no code.".to_owned());
    };
    let Some(issuer) = people_providers(&state).find(|issuer| issuer.issuer == pending.issuer) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "People no longer sign in with that identity provider here.".to_owned(),
        );
    };
    let client_id = issuer.people.as_ref().and_then(|people| people.client_id.as_deref()).unwrap_or_default();
    let unavailable = |error: crate::oidc::OidcError| match error {
        crate::oidc::OidcError::Unavailable { .. } => refuse(StatusCode::BAD_GATEWAY, error.to_string()),
        refused => refuse(StatusCode::UNAUTHORIZED, format!("The sign-in is refused: {refused}")),
    };
    let token_endpoint = match state.oidc.sign_in_endpoints(issuer).await {
        Ok((_, token_endpoint)) => token_endpoint,
        Err(error) => return unavailable(error),
    };
    let redirect_uri = redirect_uri(&viewer);
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", redirect_uri.as_str()),
        ("client_id", client_id),
        ("code_verifier", pending.verifier.as_str()),
    ];
    let id_token = match state.oidc.redeem(&issuer.issuer, &token_endpoint, &form).await {
        Ok(id_token) => id_token,
        Err(error) => return unavailable(error),
    };
    let verified = match state.oidc.verify(&state.packages.config.domain.spec, &id_token).await {
        Ok(verified) => verified,
        Err(error) => return unavailable(error),
    };
    // The nonce ties the token to this sign-in: one injected into the redirect is refused.
    let nonce = verified.claims.get("nonce").and_then(|n| n.as_str()).unwrap_or_default();
    if !crate::auth::secrets_equal(nonce, &pending.nonce) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "The ID token is not from this sign-in (its nonce differs).".to_owned(),
        );
    }
    let expires = verified.claims.get("exp").and_then(|exp| exp.as_i64()).unwrap_or_default();
    let principal = crate::server::admin::oidc_principal(&state, verified);
    let Principal::Oidc(identity) = &principal else { unreachable!("oidc_principal names an OIDC identity") };
    if identity.person.is_none() {
        let message = "The identity provider did not say who you are in the way this Domain names people (its people.usernameClaim, verified).";
        return refuse(StatusCode::FORBIDDEN, message.to_owned());
    }
    let lifetime = (expires - Utc::now().timestamp()).clamp(1, SESSION_SECONDS);
    tracing::info!(person = principal.name(), issuer = %pending.issuer, "signed in to the web interface");
    // A page, not a redirect: the session cookie is SameSite=Strict, and a redirect that is
    // part of the provider's (another site's) navigation would not send it yet.
    let mut page = Page::render(&SignedInPage { layout: viewer.layout(&state, "") });
    page = page.with_header(
        header::SET_COOKIE,
        format!(
            "{COOKIE}={OIDC_SESSION}{id_token}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={lifetime}{}",
            secure(&viewer)
        ),
    );
    page.with_header(header::SET_COOKIE, format!("{PENDING_SIGN_IN}=; Path=/ui/sign-in; HttpOnly; Max-Age=0"))
}
