//! The web interface in a real browser (headless Chromium over WebDriver) against the real
//! registry binary, seeded by the real npm client, reading a second registry as its
//! public upstream: a person searches, opens a package, sees why versions are hidden
//! (the cooldown and origin control, each naming its rule), copies the install command
//! (which is run here, and installs), signs in, and unlists a version, which npm then
//! no longer resolves. A private Repository stays invisible to an anonymous viewer. The
//! main pages are saved as screenshots under `target/tmp/ui-screenshots/`.
#![allow(clippy::unwrap_used)]

mod support;

use serde_json::json;
use support::browser::Browser;
use support::oidc::{Provider, people_config};
use support::*;

/// `app` reads `internal` and, through `npm-store`, the public registry; names under
/// `@acme` never come from outside, and versions from outside wait three days. `secret`
/// is private.
fn acme_config(public_url: &str) -> String {
    let rules = r#"  rules:
    - patterns: ["/npm/acme/*"]
      publish: Allow
      externalUpstream: Block
    - patterns: ["/*"]
      minimumReleaseAge: 3d
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {name: secret}
spec:
  domainRef: {name: acme}
  description: "Where nobody anonymous looks"
"#;
    store_chain_config("npm", public_url, rules)
}

fn publish(ws: &Workspace, server: &TestServer, repo: &str, token: &str, name: &str, version: &str) {
    let dir = format!("{repo}-{}-{version}", name.replace(['@', '/'], "_"));
    ws.write(&format!("{dir}/package.json"), &json!({"name": name, "version": version, "description": format!("{name} for the UI test"), "devDependencies": {"left-pad": "^1.0.0"}}).to_string());
    ws.write(&format!("{dir}/index.js"), &format!("module.exports = '{name} {version}';\n"));
    ws.write(&format!("{dir}/README.md"), &format!("# {name}\n\nVersion {version}. <script>alert('x')</script>\n"));
    write_npmrc(ws, &dir, server, repo, Some(token));
    run_ok(npm(ws, &dir).args(["publish"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_person_finds_a_package_sees_why_versions_are_hidden_and_installs_it() {
    let public = TestServer::start_with(Some(PUBLIC_CONFIG), &["--audit-log", "off"]);
    let server = TestServer::start_with(Some(&acme_config(&public.url("/npm/public"))), &["--audit-log", "off"]);
    let ws = Workspace::new();
    let outside = public.token(&["public"], &["publish"]).await;
    publish(&ws, &public, "public", &outside, "left-pad", "1.0.0");
    publish(&ws, &public, "public", &outside, "@acme/tools", "9.9.9");
    let ci = server.token_for("ci-bot", &["internal"], &["read", "publish"]).await;
    for version in ["1.0.0", "1.1.0"] {
        publish(&ws, &server, "internal", &ci, "@acme/tools", version);
    }
    let browser = Browser::start().await;

    // Anonymous: the Repositories anyone may read, not `secret`.
    browser.goto(&server.url("/ui/")).await;
    let home = browser.text("main").await;
    assert!(home.contains("app") && home.contains("Search order"), "{home}\n{}", browser.source().await);
    assert!(!home.contains("secret") && !home.contains("Where nobody"), "{home}");
    browser.screenshot("repositories.png").await;
    // A keyboard user's first Tab reaches the link that skips to the content.
    browser.press_tab().await;
    let focused = browser.script("return document.activeElement.textContent;").await;
    assert_eq!(focused, "Skip to content");
    browser.goto(&server.url("/ui/repositories/secret")).await;
    assert!(browser.text("main").await.contains("does not exist, or you may not read it"));

    // Search, then the package page: versions, statuses, where each came from.
    browser.goto(&server.url("/ui/")).await;
    browser.type_into("#top-search", "tools").await;
    browser.submit("#top-search").await;
    let results = browser.expect_text("table.results", "@acme/tools").await;
    assert!(results.contains("npm"), "{results}");
    browser.screenshot("search.png").await;
    browser.click("table.results a").await;
    let page = browser.expect_text("main", "Install").await;
    assert!(page.contains("1.1.0") && page.contains("1.0.0") && page.contains("Published"), "{page}");
    assert!(page.contains("published in a private Repository"), "{page}");
    assert!(!page.contains("alert("), "{page}");
    browser.screenshot("package.png").await;

    // The install command as shown, run as a person would paste it.
    let snippet = browser.text("#snippet-1").await;
    assert!(snippet.starts_with("wharf login --tool npm"), "{snippet}");
    assert!(snippet.ends_with("npm install @acme/tools@1.1.0"), "{snippet}");
    let reader = server.token_for("dev", &["app"], &["read"]).await;
    ws.write("project/package.json", r#"{"name":"project","version":"1.0.0","private":true}"#);
    let path = format!("{}:{}", wharf_bin().parent().unwrap().display(), std::env::var("PATH").unwrap());
    run_ok(ws.command("sh", "project").args(["-e", "-c", &snippet]).env("PATH", path).env("WHARF_TOKEN", &reader));
    let installed = std::fs::read_to_string(ws.path("project/node_modules/@acme/tools/index.js")).unwrap();
    assert_eq!(installed, "module.exports = '@acme/tools 1.1.0';\n");

    // Why 9.9.9 of the public registry is not served: origin control, by its rule.
    browser.type_into("#explain-version", "9.9.9").await;
    browser.submit("#explain-version").await;
    browser.expect_text("#verdict", "do not get 9.9.9").await;
    let reasons = browser.text("#reasons").await;
    assert!(
        reasons.contains("public-npm was not asked: the external upstream is blocked by UpstreamPolicy default/supply-chain, pattern /npm/acme/*"),
        "{reasons}"
    );
    browser.screenshot("explain-origin-control.png").await;

    // left-pad 1.0.0 is too new: the package page says so and links to the reason.
    browser.goto(&server.url("/ui/repositories/app/packages/npm/left-pad")).await;
    let page = browser.text("main").await;
    assert!(page.contains("no: too new until"), "{page}");
    assert!(page.contains("offered by public-npm, not fetched yet"), "{page}");
    browser.click("tr.hidden-version td:nth-child(3) a").await;
    let reasons = browser.expect_text("#reasons", "Too new").await;
    assert!(reasons.contains("minimum release age of 3d"), "{reasons}");
    assert!(reasons.contains("UpstreamPolicy default/supply-chain, rule 2, pattern /*"), "{reasons}");
    browser.screenshot("explain-cooldown.png").await;

    // Signed in with a token that may publish to internal: unlist 1.1.0.
    browser.goto(&server.url("/ui/sign-in")).await;
    browser.type_into("#token", &ci).await;
    browser.click("form.stack button[type=submit]").await;
    browser.expect_text("header", "Signed in as ci-bot").await;
    browser.goto(&server.url("/ui/repositories/internal/packages/npm/@acme/tools?version=1.1.0")).await;
    browser.select("#new-status", "Unlisted").await;
    browser.click("#change-status").await;
    browser.expect_text("main", "from Published to Unlisted").await;
    browser.screenshot("confirm-status.png").await;
    for page in [
        "/ui/",
        "/ui/search?q=tools",
        "/ui/sign-in",
        "/ui/repositories/internal/packages/npm/@acme/tools?version=1.1.0",
    ] {
        browser.goto(&server.url(page)).await;
        assert_eq!(browser.unlabelled_controls().await, Vec::<String>::new(), "{page}");
    }
    browser.goto(&server.url("/ui/repositories/internal/packages/npm/@acme/tools?version=1.1.0")).await;
    browser.select("#new-status", "Unlisted").await;
    browser.click("#change-status").await;
    browser.expect_text("main", "from Published to Unlisted").await;
    browser.click("#confirm").await;
    browser.expect_text("#done", "Status changed to Unlisted.").await;

    // npm now resolves the previous version.
    let view = run_ok(npm(&ws, "project").args(["view", "@acme/tools", "dist-tags.latest", "versions", "--json"]));
    let view: serde_json::Value = serde_json::from_slice(&view.stdout).unwrap();
    assert_eq!(view["dist-tags.latest"], "1.0.0", "{view}");

    // At phone width nothing makes the page wider than the screen.
    browser.resize(390, 844).await;
    browser.goto(&server.url("/ui/repositories/app/packages/npm/@acme/tools")).await;
    let overflow = browser.script("return document.documentElement.scrollWidth - window.innerWidth;").await;
    assert!(overflow.as_i64().unwrap() <= 0, "the page is {overflow} px wider than the screen");
    browser.screenshot("package-phone.png").await;
}

/// Waits until the browser is at an address containing `needle`, and returns it.
async fn wait_for_address(browser: &Browser, needle: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let url = browser.url().await;
        if url.contains(needle) {
            return url;
        }
        assert!(std::time::Instant::now() < deadline, "the browser never reached {needle}; it is at {url}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_person_signs_in_with_the_identity_provider_in_the_browser() {
    let provider = Provider::start(3600).await;
    let config = people_config(&provider.issuer, "wharf-web", "team");
    let server = TestServer::start_with(Some(&config), &["--audit-log", "off"]);
    provider.register_public_client("wharf-web", &[&server.url("/ui/sign-in/callback")]).await;
    let ws = Workspace::new();
    let ci = server.token_for("ci-bot", &["team"], &["read", "publish"]).await;
    publish(&ws, &server, "team", &ci, "team-lib", "1.0.0");
    let browser = Browser::start().await;

    browser.goto(&server.url("/ui/")).await;
    assert!(!browser.text("main").await.contains("team"), "anonymous viewers do not see team");
    browser.goto(&server.url("/ui/sign-in")).await;
    browser.screenshot("sign-in.png").await;
    browser.click("a.provider").await;
    // The provider's login and consent apps, played through its admin API.
    let login = wait_for_address(&browser, "login_challenge=").await;
    let challenge = support::oidc::query(&login, "login_challenge");
    let path = format!("/admin/oauth2/auth/requests/login/accept?login_challenge={challenge}");
    let accepted = provider.admin_json(reqwest::Method::PUT, &path, json!({"subject": "alice"})).await;
    browser.goto(accepted["redirect_to"].as_str().unwrap()).await;
    let consent = wait_for_address(&browser, "consent_challenge=").await;
    let challenge = support::oidc::query(&consent, "consent_challenge");
    let claims = json!({"email": "alice@example.com", "email_verified": true, "groups": ["developers"]});
    let body = json!({"grant_scope": ["openid", "email", "profile"], "session": {"id_token": claims}});
    let path = format!("/admin/oauth2/auth/requests/consent/accept?consent_challenge={challenge}");
    let accepted = provider.admin_json(reqwest::Method::PUT, &path, body).await;
    browser.goto(accepted["redirect_to"].as_str().unwrap()).await;

    // Back at the registry, signed in as the Domain names her; her access rules apply.
    browser.expect_text("header", "Signed in as idp:alice@example.com").await;
    browser.expect_text("main", "team").await;
    browser.goto(&server.url("/ui/repositories/team/packages/npm/team-lib")).await;
    browser.expect_text("main", "Change status").await;
    browser.screenshot("signed-in-with-provider.png").await;

    // Revoking her tokens ends the session too.
    let revoke = reqwest::Client::new()
        .delete(server.url("/api/v1/auth/tokens?subject=idp:alice@example.com"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert!(revoke.status().is_success(), "{}", revoke.status());
    browser.goto(&server.url("/ui/")).await;
    browser.expect_text("body", "no longer accepted").await;
    assert!(!browser.text("main").await.contains("team"));

    // A callback that is not this browser's sign-in is refused.
    browser.goto(&server.url("/ui/sign-in/callback?code=forged&state=forged")).await;
    browser.expect_text("main", "No sign-in is under way in this browser").await;
}
