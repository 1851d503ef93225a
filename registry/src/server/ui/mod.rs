//! The web interface at `/ui/`: server-rendered pages (askama templates under
//! `registry/templates/ui/`, checked when the crate compiles) for finding a package,
//! seeing where each version came from and why a version is hidden, and copying the
//! command that installs it. People sign in by pasting a registry token, kept in an
//! HttpOnly cookie scoped to `/ui` (the only credential the pages take); every page asks the same authorisation as the API
//! (access rules and network rules) and shows only Repositories the viewer may read.
//! Forms that change something carry a token derived from the session and are refused
//! from another origin. Pages load nothing from elsewhere: a strict Content-Security-Policy
//! allows only this registry's own stylesheet and script.

mod browse;
mod changes;
mod graph;
mod install;
mod package;
mod readme;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use askama::Template;
use axum::Router;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use wharf_api::{DomainConfig, PackageFormat, Repository};

use super::connections::ClientAddress;
use super::{ApiError, ErrorStyle, SharedState, credentials};
use crate::auth::{Permission, Principal};

/// The cookie holding a signed-in viewer's token: a registry token, or
/// [`OIDC_SESSION`] and the ID token of a person signed in with an identity provider.
const COOKIE: &str = "wharf_ui";
/// What marks a session of a person signed in with an identity provider.
const OIDC_SESSION: &str = "oidc:";
/// The cookie holding a sign-in with an identity provider while it is under way.
const PENDING_SIGN_IN: &str = "wharf_ui_sign_in";
const STYLE: ErrorStyle = ErrorStyle::Json;
/// Search results on a page.
const SEARCH_PAGE: usize = 50;
/// Package indexes read at most for one page of results filtered by origin.
const SEARCH_SCAN: usize = 1000;
/// Package names on a page of a Repository.
const PACKAGES_PAGE: usize = 200;
/// Versions listed on a package page unless all are asked for.
const VERSIONS_SHOWN: usize = 100;
/// How long a sign-in lasts when the token does not say.
const SESSION_SECONDS: i64 = 12 * 3600;
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(browse::repositories))
        .route("/ui/search", get(browse::search))
        .route("/ui/sign-in", get(changes::sign_in_page).post(changes::sign_in))
        .route("/ui/sign-out", post(changes::sign_out))
        .route("/ui/sign-in/oidc", get(changes::sign_in_with_provider))
        .route("/ui/sign-in/callback", get(changes::signed_in_with_provider))
        .route("/ui/assets/{name}", get(asset))
        .route("/ui/repositories/{repo}", get(browse::repository))
        .route("/ui/repositories/{repo}/packages/{format}/{*package}", get(package::package))
        .route("/ui/repositories/{repo}/explain/{format}/{*package}", get(package::explain))
        .route("/ui/repositories/{repo}/status/{format}/{*package}", post(changes::change_status))
        .route("/ui/repositories/{repo}/copy/{format}/{*package}", post(changes::copy))
        .layer(axum::middleware::map_response(protect))
}

/// How long search reuses a Repository's list of package names.
const NAMES_FRESH_FOR: Duration = Duration::from_secs(10);

/// Package names per Repository and format, as search (and the Repositories page, for the
/// formats each holds) lists them, each list kept for
/// [`NAMES_FRESH_FOR`]: listing a Repository of 10,000 packages takes the storage tens of
/// milliseconds, and a search lists every Repository the viewer may read and their
/// upstreams. A package published meanwhile (on any replica) shows up within that time;
/// what each hit shows is read fresh.
#[derive(Default)]
pub struct SearchNames(Mutex<HashMap<(String, PackageFormat), ListedNames>>);

/// When a list of names was read, and the list.
type ListedNames = (Instant, Arc<Vec<String>>);

impl SearchNames {
    /// The names of `format` that `repo` holds itself.
    async fn held_by(
        &self,
        state: &SharedState,
        repo: &str,
        format: PackageFormat,
    ) -> Result<Arc<Vec<String>>, wharf_core::CoreError> {
        let key = (repo.to_owned(), format);
        if let Some((listed, names)) = self.0.lock().unwrap_or_else(|e| e.into_inner()).get(&key)
            && listed.elapsed() < NAMES_FRESH_FOR
        {
            return Ok(names.clone());
        }
        let names = Arc::new(state.packages.registry.package_names(repo, format).await?);
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // Repositories and formats are few; a removed Repository's list goes when it is stale.
        kept.retain(|_, (listed, _)| listed.elapsed() < NAMES_FRESH_FOR);
        kept.insert(key, (Instant::now(), names.clone()));
        Ok(names)
    }
}

/// Headers every UI answer carries: no framing, no sniffing, nothing loaded from
/// elsewhere; pages (which show what one viewer may read) are not cached.
async fn protect(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}

/// Who is looking, from the session cookie (the only credential pages take), and from
/// where.
pub struct Viewer {
    principal: Principal,
    /// The request's headers, a registry token of the session as their credential.
    headers: HeaderMap,
    address: Option<IpAddr>,
    /// The session's token, when there is a valid one.
    token: Option<String>,
    /// Why the session's token was not accepted (expired, revoked).
    refused: Option<String>,
    origin: String,
}

impl FromRequestParts<SharedState> for Viewer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &SharedState) -> Result<Self, Self::Rejection> {
        // Only the session's cookie speaks for the viewer: credentials a browser may add on
        // its own (Basic credentials it remembers for the registry's paths) do not.
        let mut headers = parts.headers.clone();
        headers.remove(header::AUTHORIZATION);
        headers.remove("x-nuget-apikey");
        let token = cookie(&parts.headers, COOKIE);
        if let Some(token) = token.as_deref().filter(|token| !token.starts_with(OIDC_SESSION))
            && let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}"))
        {
            headers.insert(header::AUTHORIZATION, value);
        }
        let address = parts.extensions.get::<ClientAddress>().map(|client| client.0);
        let origin = super::origin(&parts.headers);
        let session = match token.as_deref().and_then(|token| token.strip_prefix(OIDC_SESSION)) {
            // A person signed in with an identity provider: the ID token is checked on every
            // request, as an exchange checks it, and the access rules decide what it may.
            Some(id_token) => match state.oidc.verify(&state.packages.config.domain.spec, id_token).await {
                Ok(verified) => {
                    let issued_at = verified.claims.get("iat").and_then(|iat| iat.as_i64()).unwrap_or_default();
                    let principal = crate::server::admin::oidc_principal(state, verified);
                    crate::audit::attribute(&principal);
                    // Revoking a person's tokens (by subject) ends their sessions too.
                    if state.tokens.subject_revoked(principal.name(), issued_at) {
                        Err(format!("the tokens of {} were revoked", principal.name()))
                    } else {
                        Ok(principal)
                    }
                }
                Err(error) => Err(error.to_string()),
            },
            None => credentials::authenticate(state, &headers, "ui", STYLE).await.map_err(|error| error.message),
        };
        let (principal, token, refused) = match session {
            Ok(principal) => (principal, token, None),
            Err(why) => {
                headers.remove(header::AUTHORIZATION);
                (Principal::Anonymous, None, Some(why))
            }
        };
        Ok(Viewer { principal, headers, address, token, refused, origin })
    }
}

impl Viewer {
    fn may(&self, state: &SharedState, repo: &Repository, permission: Permission) -> bool {
        self.principal.may(repo, permission) && state.network_refusal(repo, permission, self.address).is_none()
    }

    /// Whether the viewer may read the Repository `name`.
    fn reads(&self, state: &SharedState, name: &str) -> bool {
        state.packages.config.repository(name).is_some_and(|repo| self.may(state, repo, Permission::Read))
    }

    /// The Repositories the viewer may read, in the configuration's order.
    fn readable<'a>(&self, state: &'a SharedState) -> Vec<&'a Repository> {
        state.packages.config.repositories.iter().filter(|repo| self.may(state, repo, Permission::Read)).collect()
    }

    /// The token forms carry, bound to the session (and to the registry's admin secret,
    /// so nobody else can compute it).
    fn csrf(&self, state: &SharedState) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(state.admin_token.as_bytes())
            .unwrap_or_else(|_| unreachable!("hmac accepts any key length"));
        mac.update(b"wharf-ui-form\0");
        mac.update(self.token.as_deref().unwrap_or_default().as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    /// Refuses a form that did not come from a page of this registry for this session.
    fn check_form(&self, state: &SharedState, csrf: &str) -> Result<(), Page> {
        let same_origin =
            self.headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()).is_none_or(|o| o == self.origin);
        if same_origin && crate::auth::secrets_equal(csrf, &self.csrf(state)) {
            return Ok(());
        }
        Err(Page::error(
            StatusCode::FORBIDDEN,
            "Form refused",
            "This form did not come from this registry's pages for your current sign-in; reload the page and try again.",
        ))
    }

    fn layout(&self, state: &SharedState, query: &str) -> Layout {
        Layout {
            domain: state.signer.domain().to_owned(),
            signed_in_as: (self.principal != Principal::Anonymous).then(|| self.principal.name().to_owned()),
            csrf: self.csrf(state),
            notice: self
                .refused
                .as_ref()
                .map(|why| format!("Your sign-in is no longer accepted ({why}); you browse anonymously.")),
            query: query.to_owned(),
            asset_version: env!("CARGO_PKG_VERSION"),
        }
    }
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
        .filter(|value| !value.is_empty())
}

/// What every page shows around its content.
pub struct Layout {
    domain: String,
    signed_in_as: Option<String>,
    csrf: String,
    notice: Option<String>,
    /// The search box's text.
    query: String,
    asset_version: &'static str,
}

/// A rendered page, or an error page, with its status.
pub struct Page {
    status: StatusCode,
    body: Result<String, String>,
    headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl Page {
    fn render(template: &impl Template) -> Page {
        Page { status: StatusCode::OK, body: template.render().map_err(|e| e.to_string()), headers: Vec::new() }
    }

    fn error(status: StatusCode, heading: &str, message: &str) -> Page {
        Page { status, body: Err(format!("{heading}\u{0}{message}")), headers: Vec::new() }
    }

    fn with_header(mut self, name: header::HeaderName, value: String) -> Page {
        if let Ok(value) = HeaderValue::from_str(&value) {
            self.headers.push((name, value));
        }
        self
    }
}

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        let html = HeaderValue::from_static("text/html; charset=utf-8");
        let mut response = match self.body {
            Ok(body) => (self.status, [(header::CONTENT_TYPE, html)], body).into_response(),
            Err(error) => {
                let (heading, message) = error.split_once('\u{0}').unwrap_or(("Error", error.as_str()));
                if self.status == StatusCode::OK {
                    tracing::error!(%error, "a page could not be rendered");
                }
                let status =
                    if self.status == StatusCode::OK { StatusCode::INTERNAL_SERVER_ERROR } else { self.status };
                (status, [(header::CONTENT_TYPE, html)], plain_error_page(heading, message)).into_response()
            }
        };
        for (name, value) in self.headers {
            response.headers_mut().append(name, value);
        }
        response
    }
}

#[derive(Template)]
#[template(path = "ui/error.html")]
struct ErrorPage<'a> {
    layout: Layout,
    heading: &'a str,
    message: &'a str,
    show_sign_in: bool,
}

/// An error page where no viewer is known (the page itself failed).
fn plain_error_page(heading: &str, message: &str) -> String {
    let layout = Layout {
        domain: String::new(),
        signed_in_as: None,
        csrf: String::new(),
        notice: None,
        query: String::new(),
        asset_version: env!("CARGO_PKG_VERSION"),
    };
    ErrorPage { layout, heading, message, show_sign_in: false }
        .render()
        .unwrap_or_else(|_| wharf_formats::markup::escape(message))
}

/// An error as the viewer sees it. A Repository the viewer may not read, or that does
/// not exist, gets the same answer, so that no page tells whether it exists.
fn error_page(state: &SharedState, viewer: &Viewer, status: StatusCode, heading: &str, message: &str) -> Page {
    let layout = viewer.layout(state, "");
    let show_sign_in = viewer.principal == Principal::Anonymous && status == StatusCode::NOT_FOUND;
    let mut page = Page::render(&ErrorPage { layout, heading, message, show_sign_in });
    page.status = status;
    page
}

fn not_readable(state: &SharedState, viewer: &Viewer, what: &str) -> Page {
    error_page(
        state,
        viewer,
        StatusCode::NOT_FOUND,
        "Not found",
        &format!("{what} does not exist, or you may not read it."),
    )
}

fn from_api(state: &SharedState, viewer: &Viewer, error: ApiError) -> Page {
    let heading = match error.status {
        StatusCode::BAD_REQUEST => "Bad request",
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::FORBIDDEN => "Not allowed",
        StatusCode::CONFLICT => "Conflict",
        _ => "Error",
    };
    error_page(state, viewer, error.status, heading, &error.message)
}

/// A path segment, percent-encoded.
fn segment(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A package name in a path: each of its `/`-separated parts encoded (npm scopes, Go
/// module paths and generic namespaces keep their slashes).
fn package_path(name: &str) -> String {
    name.split('/').map(segment).collect::<Vec<_>>().join("/")
}

fn package_href(repo: &str, format: PackageFormat, name: &str) -> String {
    format!("/ui/repositories/{}/packages/{}/{}", segment(repo), format.as_str(), package_path(name))
}

fn explain_href(repo: &str, format: PackageFormat, name: &str, version: &str) -> String {
    format!(
        "/ui/repositories/{}/explain/{}/{}?version={}",
        segment(repo),
        format.as_str(),
        package_path(name),
        segment(version)
    )
}

fn bytes(size: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = size as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{size} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

fn short_time(time: &DateTime<Utc>) -> String {
    time.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// The policies that apply to `repository`: its own, then the Domain's, with their rule counts.
fn policy_summary(config: &DomainConfig, repository: &str) -> Vec<String> {
    let describe = |policy: &wharf_api::UpstreamPolicy, level: &str| {
        let rules = policy.spec.rules.len();
        format!(
            "{} ({level}, {rules} rule{})",
            policy.metadata.name.as_deref().unwrap_or_default(),
            if rules == 1 { "" } else { "s" }
        )
    };
    config
        .repository_policies(repository)
        .map(|p| describe(p, "Repository"))
        .chain(config.domain_policies().map(|p| describe(p, "Domain")))
        .collect()
}

fn usage_summary(state: &SharedState, repository: &str) -> String {
    match state.collector.last_usage() {
        Some(report) => match report.repositories.get(repository) {
            Some(usage) => format!(
                "{} packages, {} versions, {} (counted {})",
                usage.packages,
                usage.versions,
                bytes(usage.bytes),
                report.measured_at
            ),
            None => format!("nothing stored (counted {})", report.measured_at),
        },
        None => "not counted yet (the storage collector counts it)".to_owned(),
    }
}

/// The search order of `repository`'s chain as the viewer may see it.
fn order_names(state: &SharedState, viewer: &Viewer, repository: &str) -> Vec<String> {
    let chain = wharf_core::policy::resolution_order(&state.packages.config, repository);
    let mut order: Vec<String> = chain
        .repositories
        .iter()
        .map(|name| if viewer.reads(state, name) { name.clone() } else { "a private Repository".to_owned() })
        .collect();
    order.extend(
        chain.externals.iter().map(|hop| format!("{} ({})", hop.connection.name, hop.connection.format.as_str())),
    );
    order
}

// ---- Assets ----

const STYLESHEET: &str = include_str!("../../../assets/ui/wharf.css");
const SCRIPT: &str = include_str!("../../../assets/ui/wharf.js");

async fn asset(Path(name): Path<String>) -> Response {
    let (body, content_type) = match name.as_str() {
        "wharf.css" => (STYLESHEET, "text/css; charset=utf-8"),
        "wharf.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        _ => return (StatusCode::NOT_FOUND, "no such asset").into_response(),
    };
    // The URL names the version, so a new release is fetched anew.
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "public, max-age=86400")], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_paths_keep_slashes_and_encode_the_rest() {
        assert_eq!(package_path("@acme/tools"), "%40acme/tools");
        assert_eq!(package_path("a b/c?d"), "a%20b/c%3Fd");
        assert_eq!(package_href("app", PackageFormat::Npm, "x"), "/ui/repositories/app/packages/npm/x");
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("other=1; wharf_ui=abc.def; x=y"));
        assert_eq!(cookie(&headers, COOKIE).as_deref(), Some("abc.def"));
        headers.insert(header::COOKIE, HeaderValue::from_static("wharf_ui="));
        assert_eq!(cookie(&headers, COOKIE), None);
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 * 1024 * 1024), "5.0 MiB");
    }
}
