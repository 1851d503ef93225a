//! What a signed-in viewer changes from the pages: a version's status (after a
//! confirmation), a copy to another Repository, and the sign-in itself.

use askama::Template;
use axum::Form;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use chrono::Utc;
use serde::Deserialize;
use wharf_api::Repository;
use wharf_core::VersionStatus;

use super::{
    COOKIE, Layout, Page, SESSION_SECONDS, STYLE, Viewer, error_page, from_api, install, not_readable, package_href,
    package_path, segment,
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
        SignInPage { layout: viewer.layout(state, ""), base: viewer.origin.clone(), error, credential, how }
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
