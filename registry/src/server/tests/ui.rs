//! Router tests for the web interface: what each viewer may see, the explain view's
//! reasons, sign-in, forms and their protections. The browser tests (`tests/web_ui.rs`)
//! drive the same pages in Chromium.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::json;

use super::upstream::{CHAIN_CONFIG, PublicRegistry};
use super::{ADMIN, Limits, Reply, TestApp, publish_body, tarball};

/// The usual chain, reading `public`, with `internal` private.
async fn app_reading(public: &PublicRegistry) -> TestApp {
    let config = CHAIN_CONFIG.replace("http://127.0.0.1:9/npm/public", &format!("{}/npm/public", public.url)).replace(
        "metadata: {name: internal, namespace: wharf}\nspec:\n  domainRef: {name: acme}\n  access: {read: [{kind: Anonymous}]}\n",
        "metadata: {name: internal, namespace: wharf}\nspec:\n  domainRef: {name: acme}\n  allowedDownstreams: [{namespace: wharf, name: app}]\n",
    );
    assert!(!config.contains("name: internal, namespace: wharf}\nspec:\n  domainRef: {name: acme}\n  access"));
    TestApp::with_config(&config, Arc::new(object_store::memory::InMemory::new()), Limits::default()).await
}

impl TestApp {
    async fn page(&self, uri: &str, cookie: Option<&str>) -> Reply {
        let mut request = Request::get(uri);
        if let Some(cookie) = cookie {
            request = request.header(header::COOKIE, cookie);
        }
        self.send(request.body(Body::empty()).unwrap()).await
    }

    async fn form(&self, uri: &str, cookie: Option<&str>, origin: Option<&str>, fields: &[(&str, &str)]) -> Reply {
        let body = fields
            .iter()
            .map(|(k, v)| {
                format!("{k}={}", percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC))
            })
            .collect::<Vec<_>>()
            .join("&");
        let mut request = Request::post(uri).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(cookie) = cookie {
            request = request.header(header::COOKIE, cookie);
        }
        if let Some(origin) = origin {
            request = request.header(header::ORIGIN, origin);
        }
        self.send(request.body(Body::from(body)).unwrap()).await
    }
}

/// The form token a page carries.
fn csrf(page: &Reply) -> String {
    let text = page.text();
    let at = text.find("name=\"csrf\" value=\"").expect("a form with a token") + "name=\"csrf\" value=\"".len();
    text[at..].split('"').next().unwrap().to_owned()
}

/// Signs in with `token` as a browser would; the cookie to send from then on.
async fn sign_in(app: &TestApp, token: &str) -> String {
    let page = app.page("/ui/sign-in", None).await;
    let reply = app.form("/ui/sign-in", None, None, &[("csrf", &csrf(&page)), ("token", token)]).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.text());
    let cookie = reply.headers[header::SET_COOKIE].to_str().unwrap().to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    cookie.split(';').next().unwrap().to_owned()
}

async fn seeded() -> (PublicRegistry, TestApp) {
    let public = PublicRegistry::start().await;
    let app = app_reading(&public).await;
    let internal = app.token(&["internal"], &["publish"]).await;
    let mut body = publish_body("@acme/tools", "1.0.0", &tarball("@acme/tools", "1.0.0", b"internal"));
    body["versions"]["1.0.0"]["readme"] =
        json!("# Acme tools\n\n<script>alert('readme')</script>\n\n![tracker](https://tracker.example.test/p.png)\n");
    let reply = app.put_json("/npm/internal/@acme%2ftools", &internal, &body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    public.publish("@acme/tools", "9.9.9", b"hostile").await;
    public.publish("left-pad", "1.0.0", b"young").await;
    public.publish("event-stream", "3.3.6", b"bad").await;
    (public, app)
}

#[tokio::test]
async fn anonymous_viewers_see_only_what_they_may_read() {
    let (_public, app) = seeded().await;
    let home = app.page("/ui/", None).await;
    assert_eq!(home.status, StatusCode::OK, "{}", home.text());
    let csp = home.headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"), "{csp}");
    assert_eq!(home.headers[header::CACHE_CONTROL], "no-store");
    let text = home.text();
    assert!(text.contains("/ui/repositories/app\"") && text.contains("/ui/repositories/npm-store\""), "{text}");
    assert!(!text.contains("/ui/repositories/internal") && !text.contains(">internal<"), "{text}");
    assert!(text.contains("private Repository"), "the chain shows an unnamed upstream: {text}");

    // A private Repository and one that does not exist look the same.
    for repo in ["internal", "nonexistent"] {
        let reply = app.page(&format!("/ui/repositories/{repo}"), None).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{repo}");
        assert!(reply.text().contains("does not exist, or you may not read it"), "{}", reply.text());
        let reply = app.page(&format!("/ui/repositories/{repo}/packages/npm/@acme/tools"), None).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{repo}");
    }
    // Through app the internal package is served, and its page does not name internal.
    let reply = app.page("/ui/repositories/app/packages/npm/@acme/tools", None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let text = reply.text();
    assert!(text.contains("published in a private Repository"), "{text}");
    assert!(!text.contains("Repository internal") && !text.contains(">internal<"), "{text}");
    // The readme is rendered without its script or its remote image.
    assert!(text.contains("<h1>Acme tools</h1>"), "{text}");
    assert!(!text.contains("<script>alert") && !text.contains("<img"), "{text}");
    assert!(text.contains("npm install @acme/tools@1.0.0"), "{text}");

    // The origin filter: @acme/tools was published here, none of it cached.
    let local = app.page("/ui/search?q=tools&origin=local", None).await.text();
    assert!(local.contains("/packages/npm/%40acme/tools") && local.contains("published here"), "{local}");
    let cached = app.page("/ui/search?q=tools&origin=cached", None).await.text();
    assert!(!cached.contains("/packages/npm/%40acme/tools"), "{cached}");
    let search = app.page("/ui/search?q=tools", None).await.text();
    assert!(search.contains("/ui/repositories/app/packages/npm/%40acme/tools"), "{search}");
    assert!(!search.contains("internal<") && !search.contains(", internal"), "{search}");
    let explain = app.page("/ui/repositories/app/explain/npm/@acme/tools?version=1.0.0", None).await.text();
    assert!(explain.contains("not recorded (or made in a Repository you may not read)"), "{explain}");
    assert!(!explain.contains("Repository internal"), "{explain}");
}

#[tokio::test]
async fn the_explain_view_names_the_rule_that_hides_a_version() {
    let (_public, app) = seeded().await;
    let explain = |package: &'static str, version: &'static str| {
        let app = &app;
        async move {
            let reply = app.page(&format!("/ui/repositories/app/explain/npm/{package}?version={version}"), None).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            reply.text()
        }
    };
    let young = explain("left-pad", "1.0.0").await;
    assert!(young.contains("do not get 1.0.0"), "{young}");
    assert!(young.contains("Too new"), "{young}");
    assert!(young.contains("minimum release age of 3d"), "{young}");
    assert!(young.contains("UpstreamPolicy wharf/internal-names, rule 2, pattern /*"), "{young}");

    let blocked = explain("event-stream", "3.3.6").await;
    assert!(blocked.contains("Blocked: the blockedVersions entry /npm//event-stream@3.3.6"), "{blocked}");

    // The public 9.9.9 of a reserved name: the connection is never asked.
    let shadowed = explain("@acme/tools", "9.9.9").await;
    assert!(shadowed.contains("nothing searched has it"), "{shadowed}");
    assert!(
        shadowed.contains(
            "External connection public-npm was not asked: the external upstream is blocked by UpstreamPolicy wharf/internal-names, pattern /npm/acme/*"
        ),
        "{shadowed}"
    );
    let served = explain("@acme/tools", "1.0.0").await;
    assert!(served.contains("get 1.0.0: it is listed and installable"), "{served}");

    // The management API answers the same question in JSON.
    let api = app.get("/api/v1/repositories/app/packages/npm/left-pad/explain", None).await.json();
    let fate = &api["versions"][0];
    assert_eq!((&fate["version"], &fate["served"]), (&json!("1.0.0"), &json!(false)), "{api}");
    assert_eq!(fate["hiddenBy"]["reason"], "tooYoung", "{api}");
    assert_eq!(fate["hiddenBy"]["source"]["pattern"], "/*", "{api}");
    assert_eq!(api["steps"][3]["kind"], "externalConnection", "{api}");

    // The package page lists hidden versions with their reason.
    let page = app.page("/ui/repositories/app/packages/npm/left-pad", None).await.text();
    assert!(page.contains("no: too new until"), "{page}");
    assert!(page.contains("offered by public-npm, not fetched yet"), "{page}");

    for (uri, status) in [
        ("/ui/repositories/app/explain/npm/left-pad", StatusCode::BAD_REQUEST),
        ("/ui/repositories/app/explain/npm/..%2Fx?version=1", StatusCode::BAD_REQUEST),
        ("/ui/repositories/app/explain/rpm/x?version=1", StatusCode::BAD_REQUEST),
        ("/ui/repositories/app/packages/npm/never-heard-of", StatusCode::NOT_FOUND),
    ] {
        assert_eq!(app.page(uri, None).await.status, status, "{uri}");
    }
}

#[tokio::test]
async fn signed_in_viewers_see_their_repositories_and_change_statuses() {
    let (_public, app) = seeded().await;
    let reader = app.token(&["internal"], &["read"]).await;
    let publisher = app.token(&["internal"], &["read", "publish"]).await;

    // A token the registry does not accept is refused with a reason, and sets nothing.
    let page = app.page("/ui/sign-in", None).await;
    let reply = app.form("/ui/sign-in", None, None, &[("csrf", &csrf(&page)), ("token", "not-a-token")]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(reply.text().contains("does not accept this token"), "{}", reply.text());
    assert!(!reply.headers.contains_key(header::SET_COOKIE));

    let cookie = sign_in(&app, &reader).await;
    let home = app.page("/ui/", Some(&cookie)).await.text();
    assert!(home.contains("/ui/repositories/internal\""), "{home}");
    let package = app.page("/ui/repositories/internal/packages/npm/@acme/tools", Some(&cookie)).await.text();
    assert!(!package.contains("Change status"), "a reader gets no form: {package}");
    // A reader's forged form is refused all the same.
    let fields = [("version", "1.0.0"), ("expected", "Published"), ("status", "Unlisted"), ("confirmed", "yes")];
    let action = "/ui/repositories/internal/status/npm/@acme/tools";
    let reader_csrf = csrf(&app.page("/ui/", Some(&cookie)).await);
    fn with<'a>(token: &'a str, fields: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        [&[("csrf", token)][..], fields].concat()
    }
    let reply = app.form(action, Some(&cookie), None, &with(&reader_csrf, &fields)).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
    // Anonymous: the private Repository is not found.
    let anonymous_csrf = csrf(&app.page("/ui/sign-in", None).await);
    let reply = app.form(action, None, None, &with(&anonymous_csrf, &fields)).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text());

    let cookie = sign_in(&app, &publisher).await;
    let token = csrf(&app.page("/ui/", Some(&cookie)).await);
    // Without the session's form token, or from another origin: refused, nothing changes.
    for (csrf, origin) in [("0000", None), (token.as_str(), Some("http://evil.example.test"))] {
        let reply = app.form(action, Some(&cookie), origin, &with(csrf, &fields)).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
    }
    // First a confirmation, then the change.
    let unconfirmed =
        [("csrf", token.as_str()), ("version", "1.0.0"), ("expected", "Published"), ("status", "Unlisted")];
    let confirm = app.form(action, Some(&cookie), None, &unconfirmed).await;
    assert_eq!(confirm.status, StatusCode::OK);
    assert!(confirm.text().contains("Change the status of @acme/tools 1.0.0?"), "{}", confirm.text());
    let versions = app.get("/api/v1/repositories/internal/packages/npm/@acme%2Ftools/versions", Some(ADMIN)).await;
    assert_eq!(versions.json()["versions"][0]["status"], "Published", "nothing changes before confirmation");
    let reply = app.form(action, Some(&cookie), Some("http://localhost"), &with(&token, &fields)).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.text());
    let versions = app.get("/api/v1/repositories/internal/packages/npm/@acme%2Ftools/versions", Some(ADMIN)).await;
    assert_eq!(versions.json()["versions"][0]["status"], "Unlisted");
    let location = reply.headers[header::LOCATION].to_str().unwrap().to_owned();
    let after = app.page(&location, Some(&cookie)).await.text();
    assert!(after.contains("Status changed to Unlisted."), "{after}");
    // A stale form (the status moved on) is a conflict.
    let reply = app.form(action, Some(&cookie), None, &with(&token, &fields)).await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.text());

    // Copying needs read on the source and publish on the destination; the form is offered then.
    let promoter = app.token(&["internal", "npm-store"], &["read", "publish"]).await;
    let cookie = sign_in(&app, &promoter).await;
    let page = app.page("/ui/repositories/internal/packages/npm/@acme/tools?version=1.0.0", Some(&cookie)).await;
    assert!(page.text().contains("<option value=\"npm-store\">npm-store</option>"), "{}", page.text());
    let token = csrf(&page);
    let copy = "/ui/repositories/internal/copy/npm/@acme/tools";
    let fields = [("csrf", token.as_str()), ("version", "1.0.0"), ("destination", "app")];
    let reply = app.form(copy, Some(&cookie), None, &fields).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "no publish on app (which anyone reads): {}", reply.text());
    let fields = [("csrf", token.as_str()), ("version", "1.0.0"), ("destination", "npm-store")];
    let reply = app.form(copy, Some(&cookie), None, &fields).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.text());
    let copied = app.get("/api/v1/repositories/npm-store/packages/npm/@acme%2Ftools/versions/1.0.0", Some(ADMIN)).await;
    assert_eq!(copied.status, StatusCode::OK, "{}", copied.text());
    assert_eq!(copied.json()["status"], "Unlisted", "a copy keeps the status");

    // Signing out forgets the token.
    let reply = app.form("/ui/sign-out", Some(&cookie), None, &[("csrf", &token)]).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert!(reply.headers[header::SET_COOKIE].to_str().unwrap().contains("Max-Age=0"));
}

#[tokio::test]
async fn an_upstream_the_policy_excludes_is_named_only_to_its_readers() {
    let public = PublicRegistry::start().await;
    let config = CHAIN_CONFIG
        .replace("http://127.0.0.1:9/npm/public", &format!("{}/npm/public", public.url))
        .replace(
            "metadata: {name: internal, namespace: wharf}\nspec:\n  domainRef: {name: acme}\n  access: {read: [{kind: Anonymous}]}\n",
            "metadata: {name: internal, namespace: wharf}\nspec:\n  domainRef: {name: acme}\n  allowedDownstreams: [{namespace: wharf, name: app}]\n",
        )
        .replace(
            "  rules:\n",
            "  rules:\n    - patterns: [\"/npm//only-store\"]\n      internalUpstream: {mode: AllowSpecificRepositories, repositories: [npm-store]}\n",
        );
    let app = TestApp::with_config(&config, Arc::new(object_store::memory::InMemory::new()), Limits::default()).await;
    let internal = app.token(&["internal"], &["read", "publish"]).await;
    let body = publish_body("only-store", "1.0.0", &tarball("only-store", "1.0.0", b"internal"));
    assert_eq!(app.put_json("/npm/internal/only-store", &internal, &body).await.status, StatusCode::CREATED);

    // Anonymous: not found through app, not in search, and the explain view does not say
    // what the excluded Repository holds.
    assert_eq!(app.page("/ui/repositories/app/packages/npm/only-store", None).await.status, StatusCode::NOT_FOUND);
    let search = app.page("/ui/search?q=only-store", None).await.text();
    assert!(!search.contains("/packages/npm/only-store"), "{search}");
    let explain = app.page("/ui/repositories/app/explain/npm/only-store?version=1.0.0", None).await.text();
    assert!(explain.contains("A Repository you may not read</strong> — not searched: internalUpstream excludes it, by UpstreamPolicy wharf/internal-names, pattern /npm//only-store"), "{explain}");
    assert!(!explain.contains("It has 1 version"), "{explain}");
    // Nor any page of the private Repository, nor a form aimed at it.
    let anonymous = csrf(&app.page("/ui/sign-in", None).await);
    for uri in [
        "/ui/repositories/internal/explain/npm/only-store?version=1.0.0",
        "/ui/repositories/internal/packages/npm/only-store",
    ] {
        assert_eq!(app.page(uri, None).await.status, StatusCode::NOT_FOUND, "{uri}");
    }
    let copy = [("csrf", anonymous.as_str()), ("version", "1.0.0"), ("destination", "app")];
    let reply = app.form("/ui/repositories/internal/copy/npm/only-store", None, None, &copy).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text());

    // The management API's origin report leaves it unnamed as well.
    let report = app.get("/api/v1/repositories/app/packages/npm/only-store/origin", None).await.json();
    assert_eq!(report["chain"], json!(["app", null, "npm-store"]), "{report}");
    let report = app.get("/api/v1/repositories/app/packages/npm/only-store/origin", Some(&internal)).await.json();
    assert_eq!(report["chain"][1], "internal", "{report}");

    // Its reader sees the Repository, what it holds and the rule that leaves it out.
    let cookie = sign_in(&app, &internal).await;
    let explain = app.page("/ui/repositories/app/explain/npm/only-store?version=1.0.0", Some(&cookie)).await.text();
    assert!(explain.contains("Repository internal</strong> — not searched"), "{explain}");
    assert!(explain.contains("It has 1 version of the package"), "{explain}");
}

#[tokio::test]
async fn a_maven_versions_dependencies_come_from_its_pom() {
    let app = TestApp::new().await;
    let publisher = app.token(&["main"], &["publish"]).await;
    let token = Some(publisher.as_str());
    let pom = b"<project><groupId>com.acme</groupId><artifactId>lib</artifactId><version>1.0</version>\
        <dependencies><dependency><groupId>org.apache.commons</groupId><artifactId>commons-text</artifactId>\
        <version>1.12.0</version></dependency></dependencies></project>";
    let dir = "main/com/acme/lib/1.0";
    for (file, body) in [("lib-1.0.jar", &b"jar bytes"[..]), ("lib-1.0.pom", &pom[..])] {
        assert_eq!(app.maven("PUT", &format!("{dir}/{file}"), token, body.to_vec()).await.status, StatusCode::CREATED);
    }
    let merged = "<metadata><versioning><versions><version>1.0</version></versions></versioning></metadata>";
    let done = app.maven("PUT", "main/com/acme/lib/maven-metadata.xml", token, merged.into()).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text());

    let version = app.get("/api/v1/repositories/main/packages/maven/com.acme:lib/versions/1.0", None).await.json();
    let expected = json!([{"name": "org.apache.commons:commons-text", "requirement": "1.12.0", "kind": "compile"}]);
    assert_eq!(version["dependencies"], expected, "{version}");
    let page = app.page("/ui/repositories/main/packages/maven/com.acme:lib", None).await.text();
    assert!(page.contains("org.apache.commons:commons-text"), "{page}");
    assert!(page.contains("&#60;artifactId&#62;lib&#60;/artifactId&#62;"), "the Maven snippet: {page}");
}
