//! Router tests for upstream chains and origin controls: the origin report,
//! reads through a chain, merged metadata and refused publishes.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::json;

use axum::body::Body;
use axum::http::{Request, header};

use super::{Limits, TestApp, publish_body, tarball, upload_form, wheel};

/// The usual topology: `app` reads through `[internal, npm-store]`;
/// `npm-store` holds the external connection.
pub(super) const CHAIN_CONFIG: &str = r#"
apiVersion: wharf.dev/v1alpha1
kind: Domain
metadata: {name: acme, namespace: wharf}
spec:
  storage: {memory: {}}
  externalConnections:
    - {name: public-npm, format: npm, url: "http://127.0.0.1:9/npm/public"}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {name: app, namespace: wharf}
spec:
  domainRef: {name: acme}
  upstreams: [{name: internal}, {name: npm-store}]
  access: {read: [{kind: Anonymous}]}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {name: internal, namespace: wharf}
spec:
  domainRef: {name: acme}
  access: {read: [{kind: Anonymous}]}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {name: npm-store, namespace: wharf}
spec:
  domainRef: {name: acme}
  externalConnection: public-npm
  access: {read: [{kind: Anonymous}]}
---
apiVersion: wharf.dev/v1alpha1
kind: UpstreamPolicy
metadata: {name: internal-names, namespace: wharf}
spec:
  targetRefs: [{kind: Domain, name: acme}]
  metadataTTL: 30s
  rules:
    - patterns: ["/npm/acme/*"]
      publish: Allow
      externalUpstream: Block
    - patterns: ["/*"]
      minimumReleaseAge: 72h
      blockedVersions: ["/npm//event-stream@3.3.6"]
"#;

async fn chain_app() -> TestApp {
    TestApp::with_config(CHAIN_CONFIG, Arc::new(object_store::memory::InMemory::new()), Limits::default()).await
}

#[tokio::test]
async fn origin_report_names_the_deciding_rules() {
    let app = chain_app().await;
    let reply = app.get("/api/v1/repositories/app/packages/npm/@acme%2Ftools/origin", None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let report = reply.json();
    assert_eq!(report["chain"], json!(["app", "internal", "npm-store"]));
    assert_eq!(report["externalConnection"]["heldBy"], "npm-store");
    assert_eq!(report["externalUpstream"]["restriction"], json!({"mode": "Block"}));
    assert_eq!(report["externalUpstream"]["source"]["policy"], "wharf/internal-names");
    assert_eq!(report["externalUpstream"]["source"]["pattern"], "/npm/acme/*");
    assert_eq!(report["minimumReleaseAge"]["value"], "3d");
    assert_eq!(report["minimumReleaseAge"]["source"]["pattern"], "/*");
    assert_eq!(report["metadataTTL"]["value"], "30s");
    assert_eq!(report["effective"]["externalUpstream"]["allowed"], false);
    assert_eq!(report["effective"]["publish"]["allowed"], true);
    assert_eq!(report["firstVersionOrigin"], json!(null));

    let plain = app.get("/api/v1/repositories/app/packages/npm/event-stream/origin", None).await.json();
    assert_eq!(plain["publish"]["restriction"], json!(null));
    assert_eq!(plain["publish"]["source"], json!(null));
    assert_eq!(plain["blockedVersions"][0]["entry"], "/npm//event-stream@3.3.6");
    assert_eq!(plain["effective"]["externalUpstream"]["allowed"], true);
}

#[tokio::test]
async fn origin_report_rejects_bad_input() {
    let app = chain_app().await;
    for (uri, status) in [
        ("/api/v1/repositories/app/packages/npm/..%2Fetc/origin", StatusCode::BAD_REQUEST),
        ("/api/v1/repositories/app/packages/rpm/x/origin", StatusCode::BAD_REQUEST),
        ("/api/v1/repositories/nope/packages/npm/x/origin", StatusCode::UNAUTHORIZED),
    ] {
        let reply = app.get(uri, None).await;
        assert_eq!(reply.status, status, "{uri}: {}", reply.text());
    }
}

/// A second registry on loopback playing the public registry: repository
/// `public`, readable by anyone.
pub(super) struct PublicRegistry {
    app: TestApp,
    pub(super) url: String,
    server: tokio::task::JoinHandle<()>,
}

const PUBLIC_CONFIG: &str = r#"
apiVersion: wharf.dev/v1alpha1
kind: Domain
metadata: {name: public}
spec:
  storage: {memory: {}}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {name: public}
spec:
  domainRef: {name: public}
  access: {read: [{kind: Anonymous}]}
"#;

impl PublicRegistry {
    pub(super) async fn start() -> PublicRegistry {
        let app =
            TestApp::with_config(PUBLIC_CONFIG, Arc::new(object_store::memory::InMemory::new()), Limits::default())
                .await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let router = app.router.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        PublicRegistry { app, url, server }
    }

    pub(super) async fn publish(&self, name: &str, version: &str, content: &[u8]) {
        let token = self.app.token(&["public"], &["publish"]).await;
        let body = publish_body(name, version, &tarball(name, version, content));
        let reply = self.app.put_json(&format!("/npm/public/{}", name.replacen('/', "%2f", 1)), &token, &body).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    }

    async fn upload_wheel(&self, project: &str, version: &str, body: &str) {
        let token = self.app.token(&["public"], &["publish"]).await;
        let fields = [(":action", "file_upload"), ("name", project), ("version", version)];
        let filename = format!("{}-{version}-py3-none-any.whl", project.replace('-', "_"));
        let (content_type, form) = upload_form(&fields, &filename, &wheel(project, version, body));
        let request = Request::post("/pypi/public/")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(form))
            .unwrap();
        let reply = self.app.send(request).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }

    /// Publishes a crate (cargo's framed body) and returns the `.crate` bytes.
    async fn publish_crate(&self, name: &str, version: &str) -> Vec<u8> {
        use wharf_formats::cargo::archive::{build_crate, manifest};
        let folder = format!("{name}-{version}");
        let bytes = build_crate(&[
            (&format!("{folder}/Cargo.toml"), manifest(name, version).as_bytes()),
            (&format!("{folder}/src/lib.rs"), b"pub fn f() {}"),
        ]);
        let metadata = json!({"name": name, "vers": version, "deps": [], "features": {}, "authors": [], "links": null});
        let body = wharf_formats::cargo::framing::encode(metadata.to_string().as_bytes(), &bytes);
        let token = self.app.token(&["public"], &["publish"]).await;
        let request = Request::put("/cargo/public/api/v1/crates/new")
            .header(header::AUTHORIZATION, token)
            .body(Body::from(body))
            .unwrap();
        let reply = self.app.send(request).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        bytes
    }

    /// Requests the public registry answered with 200 on one route.
    async fn count(&self, route: &str) -> u64 {
        self.count_status(route, 200).await
    }

    async fn count_status(&self, route: &str, status: u16) -> u64 {
        let text = self.app.get("/metrics", None).await.text();
        let prefix = format!("wharf_http_requests_total{{route=\"{route}\",method=\"GET\",status=\"{status}\"}} ");
        text.lines().find_map(|line| line.strip_prefix(&prefix)).map_or(0, |n| n.trim().parse().unwrap())
    }
}

impl Drop for PublicRegistry {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// [`CHAIN_CONFIG`] with the connection pointing at `public` and `extra`
/// rules appended to the Domain policy.
async fn chain_app_to(public: &PublicRegistry, ttl: &str, extra_rules: &str) -> TestApp {
    let config = CHAIN_CONFIG
        .replace("http://127.0.0.1:9/npm/public", &format!("{}/npm/public", public.url))
        .replace("metadataTTL: 30s", &format!("metadataTTL: {ttl}"))
        .replace(
            "      blockedVersions: [\"/npm//event-stream@3.3.6\"]\n",
            &format!("      blockedVersions: [\"/npm//event-stream@3.3.6\"]\n{extra_rules}"),
        )
        // The tests below pick their own cooldown.
        .replace("      minimumReleaseAge: 72h\n", "");
    TestApp::with_config(&config, Arc::new(object_store::memory::InMemory::new()), Limits::default()).await
}

fn versions(reply: &super::Reply) -> Vec<String> {
    let mut versions: Vec<String> = reply.json()["versions"].as_object().unwrap().keys().cloned().collect();
    versions.sort();
    versions
}

#[tokio::test]
async fn dependency_confusion_is_refused_and_public_names_are_fetched_once() {
    let public = PublicRegistry::start().await;
    let app = chain_app_to(&public, "30s", "").await;
    let internal = app.token(&["internal"], &["publish"]).await;
    for name in ["@acme/tools", "tools-internal"] {
        let body = publish_body(name, "1.0.0", &tarball(name, "1.0.0", b"internal"));
        let reply = app.put_json(&format!("/npm/internal/{}", name.replacen('/', "%2f", 1)), &internal, &body).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        public.publish(name, "9.9.9", b"hostile").await;
    }
    public.publish("left-pad", "1.0.0", b"public").await;

    for name in ["@acme%2ftools", "tools-internal"] {
        let reply = app.get(&format!("/npm/app/{name}"), None).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(versions(&reply), ["1.0.0"], "{name}");
        assert_eq!(reply.json()["dist-tags"]["latest"], "1.0.0");
        let hostile =
            app.get(&format!("/npm/app/{name}/-/{}-9.9.9.tgz", name.rsplit("%2f").next().unwrap()), None).await;
        assert_eq!(hostile.status, StatusCode::NOT_FOUND, "{}", hostile.text());
    }
    let report = app.get("/api/v1/repositories/app/packages/npm/tools-internal/origin", None).await.json();
    assert_eq!(report["firstVersionOrigin"]["kind"], "Direct");
    assert_eq!(report["effective"]["externalUpstream"]["allowed"], false);
    // The reserved names were never even asked for upstream.
    assert_eq!(public.count("npm_packument").await, 0);

    // A public name comes through, with its tarball URL pointing through Wharf.
    let packument = app.get("/npm/app/left-pad", None).await;
    assert_eq!(packument.status, StatusCode::OK, "{}", packument.text());
    let tarball_url = packument.json()["versions"]["1.0.0"]["dist"]["tarball"].as_str().unwrap().to_owned();
    assert!(tarball_url.ends_with("/npm/app/left-pad/-/left-pad-1.0.0.tgz"), "{tarball_url}");
    let path = "/npm/app/left-pad/-/left-pad-1.0.0.tgz";
    let (a, b, c, d) = tokio::join!(app.get(path, None), app.get(path, None), app.get(path, None), app.get(path, None));
    for reply in [&a, &b, &c, &d] {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.body, tarball("left-pad", "1.0.0", b"public"));
    }
    assert_eq!(public.count("npm_tarball").await, 1, "four simultaneous misses make one upstream fetch");
    let own = app.get("/metrics", None).await.text();
    assert!(
        own.contains(
            "wharf_upstream_requests_total{connection=\"public-npm\",kind=\"artifact\",outcome=\"fetched\"} 1"
        ),
        "{own}"
    );
    // Kept in the requesting repository and the connection holder, not in between.
    for (repo, status) in [("app", StatusCode::OK), ("npm-store", StatusCode::OK), ("internal", StatusCode::NOT_FOUND)]
    {
        let reply = app.get(&format!("/api/v1/repositories/{repo}/packages/npm/left-pad/versions/1.0.0"), None).await;
        assert_eq!(reply.status, status, "{repo}: {}", reply.text());
    }
    let report = app.get("/api/v1/repositories/app/packages/npm/left-pad/origin", None).await.json();
    assert_eq!(report["firstVersionOrigin"]["kind"], "External");
    let tags = app.get("/npm/app/-/package/left-pad/dist-tags", None).await;
    assert_eq!(tags.json(), json!({"latest": "1.0.0"}), "dist-tags as seen through the chain");
    assert_eq!(report["firstVersionOrigin"]["connection"], "public-npm");
    // Nothing hostile was stored anywhere.
    for repo in ["app", "internal", "npm-store"] {
        for name in ["@acme%2Ftools", "tools-internal"] {
            let reply = app.get(&format!("/api/v1/repositories/{repo}/packages/npm/{name}/versions/9.9.9"), None).await;
            assert_eq!(reply.status, StatusCode::NOT_FOUND, "{repo} {name}");
        }
    }
}

#[tokio::test]
async fn publishing_is_refused_for_fetched_names_and_reachable_versions() {
    let public = PublicRegistry::start().await;
    let app = chain_app_to(&public, "30s", "").await;
    let token = app.token(&["app", "internal"], &["publish"]).await;
    public.publish("left-pad", "1.0.0", b"public").await;
    public.publish("fresh", "2.0.0", b"public").await;
    public.publish("@acme/lib", "3.0.0", b"public").await;
    let body = |name: &str, version: &str| publish_body(name, version, &tarball(name, version, b"mine"));

    // Reachable through the internal upstream.
    assert_eq!(
        app.put_json("/npm/internal/shared", &token, &body("shared", "1.0.0")).await.status,
        StatusCode::CREATED
    );
    let reply = app.put_json("/npm/app/shared", &token, &body("shared", "1.0.0")).await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.text());
    assert!(reply.text().contains("upstream repository internal"), "{}", reply.text());
    // Reachable through the external connection.
    let reply = app.put_json("/npm/app/fresh", &token, &body("fresh", "2.0.0")).await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.text());
    assert!(reply.text().contains("external connection public-npm"), "{}", reply.text());
    // Unless that package's upstream is blocked (/npm/acme/* blocks it).
    let reply = app.put_json("/npm/app/@acme%2flib", &token, &body("@acme/lib", "3.0.0")).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    // A name first fetched from outside cannot be published directly.
    assert_eq!(app.get("/npm/app/left-pad/-/left-pad-1.0.0.tgz", None).await.status, StatusCode::OK);
    let reply = app.put_json("/npm/internal/left-pad", &token, &body("left-pad", "5.0.0")).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
    assert!(reply.text().contains("came through external connection public-npm"), "{}", reply.text());
}

#[tokio::test]
async fn blocked_and_too_young_versions_disappear_and_latest_retargets() {
    let public = PublicRegistry::start().await;
    let rules = "    - patterns: [\"/npm//slow\"]\n      minimumReleaseAge: 3s\n    - patterns: [\"/npm//left-pad\"]\n      blockedVersions: [\"/npm//left-pad@1.1.0\"]\n";
    let app = chain_app_to(&public, "1s", rules).await;
    public.publish("slow", "1.0.0", b"old").await;
    public.publish("left-pad", "1.0.0", b"a").await;
    public.publish("left-pad", "1.1.0", b"b").await;
    tokio::time::sleep(Duration::from_millis(3200)).await;
    public.publish("slow", "1.1.0", b"new").await;

    let slow = app.get("/npm/app/slow", None).await;
    assert_eq!(versions(&slow), ["1.0.0"]);
    assert_eq!(slow.json()["dist-tags"]["latest"], "1.0.0", "latest retargets to the newest mature version");
    assert_eq!(app.get("/npm/app/slow/-/slow-1.1.0.tgz", None).await.status, StatusCode::NOT_FOUND);

    let pad = app.get("/npm/app/left-pad", None).await;
    assert_eq!(versions(&pad), ["1.0.0"]);
    assert_eq!(pad.json()["dist-tags"]["latest"], "1.0.0");
    assert_eq!(app.get("/npm/app/left-pad/-/left-pad-1.1.0.tgz", None).await.status, StatusCode::NOT_FOUND);
    let report = app.get("/api/v1/repositories/app/packages/npm/slow/origin", None).await.json();
    assert_eq!(report["minimumReleaseAge"]["value"], "3s");
}

#[tokio::test]
async fn upstream_down_serves_cached_and_stale_and_names_the_upstream() {
    let public = PublicRegistry::start().await;
    let app = chain_app_to(&public, "1s", "").await;
    public.publish("left-pad", "1.0.0", b"a").await;
    public.publish("left-pad", "1.1.0", b"b").await;
    public.publish("right-pad", "1.0.0", b"c").await;
    assert_eq!(versions(&app.get("/npm/app/left-pad", None).await), ["1.0.0", "1.1.0"]);
    assert_eq!(app.get("/npm/app/left-pad/-/left-pad-1.0.0.tgz", None).await.status, StatusCode::OK);

    public.server.abort();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Stale metadata: 1.1.0 is still listed though the TTL passed.
    let packument = app.get("/npm/app/left-pad", None).await;
    assert_eq!(packument.status, StatusCode::OK, "{}", packument.text());
    assert_eq!(versions(&packument), ["1.0.0", "1.1.0"]);
    // The cached tarball still installs; the uncached one names the upstream.
    assert_eq!(app.get("/npm/app/left-pad/-/left-pad-1.0.0.tgz", None).await.status, StatusCode::OK);
    let uncached = app.get("/npm/app/left-pad/-/left-pad-1.1.0.tgz", None).await;
    assert_eq!(uncached.status, StatusCode::BAD_GATEWAY, "{}", uncached.text());
    assert!(uncached.text().contains("external connection public-npm"), "{}", uncached.text());
    // Never seen before, upstream down: a clear 502, not a 404.
    let unknown = app.get("/npm/app/right-pad", None).await;
    assert_eq!(unknown.status, StatusCode::BAD_GATEWAY, "{}", unknown.text());
    assert!(unknown.text().contains("public-npm"), "{}", unknown.text());
}

#[tokio::test]
async fn upstream_metadata_is_reused_for_its_ttl_then_revalidated() {
    let public = PublicRegistry::start().await;
    let app = chain_app_to(&public, "1s", "").await;
    public.publish("left-pad", "1.0.0", b"a").await;
    for _ in 0..3 {
        assert_eq!(app.get("/npm/app/left-pad", None).await.status, StatusCode::OK);
    }
    assert_eq!(public.count("npm_packument").await, 1, "reused within the TTL");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(versions(&app.get("/npm/app/left-pad", None).await), ["1.0.0"]);
    assert_eq!(public.count_status("npm_packument", 304).await, 1, "revalidated with its ETag");
    public.publish("left-pad", "1.1.0", b"b").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(versions(&app.get("/npm/app/left-pad", None).await), ["1.0.0", "1.1.0"]);
    assert_eq!(public.count("npm_packument").await, 2);
}

/// [`CHAIN_CONFIG`] with a PyPI store beside the npm one.
async fn pypi_chain_app(public: &PublicRegistry, extra_rules: &str) -> TestApp {
    let config = CHAIN_CONFIG
        .replace(
            "    - {name: public-npm, format: npm, url: \"http://127.0.0.1:9/npm/public\"}\n",
            &format!(
                "    - {{name: public-npm, format: npm, url: \"http://127.0.0.1:9/npm/public\"}}\n    - {{name: public-pypi, format: pypi, url: \"{}/pypi/public/simple\"}}\n",
                public.url
            ),
        )
        .replace("upstreams: [{name: internal}, {name: npm-store}]", "upstreams: [{name: internal}, {name: npm-store}, {name: pypi-store}]")
        .replace("      minimumReleaseAge: 72h\n", extra_rules)
        + "---\napiVersion: wharf.dev/v1alpha1\nkind: Repository\nmetadata: {name: pypi-store, namespace: wharf}\nspec:\n  domainRef: {name: acme}\n  externalConnection: public-pypi\n  access: {read: [{kind: Anonymous}]}\n";
    TestApp::with_config(&config, Arc::new(object_store::memory::InMemory::new()), Limits::default()).await
}

#[tokio::test]
async fn pypi_pages_merge_the_chain_and_hide_what_policy_forbids() {
    let public = PublicRegistry::start().await;
    let rules = "      blockedVersions: [\"/pypi//demo@1.1\"]\n    - patterns: [\"/pypi//slow\"]\n      minimumReleaseAge: 3s\n";
    let app = pypi_chain_app(&public, rules).await;
    public.upload_wheel("demo", "1.0", "a").await;
    public.upload_wheel("demo", "1.1", "b").await;
    public.upload_wheel("slow", "1.0", "old").await;
    tokio::time::sleep(Duration::from_millis(3200)).await;
    public.upload_wheel("slow", "2.0", "new").await;

    let page = get_json(&app, "/pypi/app/simple/demo/").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text());
    assert_eq!(page.json()["versions"], json!(["1.0"]), "1.1 is blocked");
    let url = page.json()["files"][0]["url"].as_str().unwrap().to_owned();
    assert_eq!(url, "../../files/demo/1.0/demo-1.0-py3-none-any.whl", "file URLs point through Wharf");
    let file = app.get("/pypi/app/files/demo/1.0/demo-1.0-py3-none-any.whl", None).await;
    assert_eq!(file.status, StatusCode::OK, "{}", file.text());
    assert_eq!(file.body, wheel("demo", "1.0", "a"));
    assert_eq!(app.get("/pypi/app/files/demo/1.1/demo-1.1-py3-none-any.whl", None).await.status, StatusCode::NOT_FOUND);
    for (repo, status) in
        [("app", StatusCode::OK), ("pypi-store", StatusCode::OK), ("npm-store", StatusCode::NOT_FOUND)]
    {
        let reply = app.get(&format!("/api/v1/repositories/{repo}/packages/pypi/demo/versions/1.0"), None).await;
        assert_eq!(reply.status, status, "{repo}");
    }
    assert_eq!(get_json(&app, "/pypi/app/simple/slow/").await.json()["versions"], json!(["1.0"]), "2.0 is too young");

    // A name published in the Domain first is never served from outside.
    let token = app.token(&["internal"], &["publish"]).await;
    let fields = [(":action", "file_upload"), ("name", "acme-core"), ("version", "1.0")];
    let (content_type, form) =
        upload_form(&fields, "acme_core-1.0-py3-none-any.whl", &wheel("acme-core", "1.0", "internal"));
    let request = Request::post("/pypi/internal/")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(form))
        .unwrap();
    assert_eq!(app.send(request).await.status, StatusCode::OK);
    public.upload_wheel("acme-core", "9.0", "hostile").await;
    assert_eq!(get_json(&app, "/pypi/app/simple/acme-core/").await.json()["versions"], json!(["1.0"]));
}

async fn get_json(app: &TestApp, uri: &str) -> super::Reply {
    let request =
        Request::get(uri).header(header::ACCEPT, wharf_formats::pypi::JSON_CONTENT_TYPE).body(Body::empty()).unwrap();
    app.send(request).await
}

#[tokio::test]
async fn cargo_reads_a_sparse_index_upstream_and_keeps_what_it_fetched() {
    let public = PublicRegistry::start().await;
    let config = CHAIN_CONFIG
        .replace(
            "    - {name: public-npm, format: npm, url: \"http://127.0.0.1:9/npm/public\"}\n",
            &format!(
                "    - {{name: public-npm, format: npm, url: \"http://127.0.0.1:9/npm/public\"}}\n    - {{name: public-crates, format: cargo, url: \"{}/cargo/public/index\"}}\n",
                public.url
            ),
        )
        .replace("upstreams: [{name: internal}, {name: npm-store}]", "upstreams: [{name: internal}, {name: npm-store}, {name: cargo-store}]")
        .replace("[\"/npm//event-stream@3.3.6\"]", "[\"/npm//event-stream@3.3.6\", \"/cargo//demo-crate@1.1.0\"]")
        .replace("      minimumReleaseAge: 72h\n", "")
        + "---\napiVersion: wharf.dev/v1alpha1\nkind: Repository\nmetadata: {name: cargo-store, namespace: wharf}\nspec:\n  domainRef: {name: acme}\n  externalConnection: public-crates\n  access: {read: [{kind: Anonymous}]}\n";
    let app = TestApp::with_config(&config, Arc::new(object_store::memory::InMemory::new()), Limits::default()).await;
    let first = public.publish_crate("demo-crate", "1.0.0").await;
    public.publish_crate("demo-crate", "1.1.0").await;

    let index = app.get("/cargo/app/index/de/mo/demo-crate", None).await;
    assert_eq!(index.status, StatusCode::OK, "{}", index.text());
    let lines: Vec<serde_json::Value> = index.text().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1, "1.1.0 is blocked: {lines:?}");
    assert_eq!(lines[0]["vers"], "1.0.0");
    assert_eq!(lines[0]["cksum"], hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&first)));
    let (a, b) = tokio::join!(
        app.get("/cargo/app/api/v1/crates/demo-crate/1.0.0/download", None),
        app.get("/cargo/app/api/v1/crates/demo-crate/1.0.0/download", None)
    );
    for reply in [&a, &b] {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.body, first);
    }
    assert_eq!(public.count("cargo_download").await, 1);
    for (repo, status) in
        [("app", StatusCode::OK), ("cargo-store", StatusCode::OK), ("internal", StatusCode::NOT_FOUND)]
    {
        let reply =
            app.get(&format!("/api/v1/repositories/{repo}/packages/cargo/demo-crate/versions/1.0.0"), None).await;
        assert_eq!(reply.status, status, "{repo}: {}", reply.text());
    }
    let blocked = app.get("/cargo/app/api/v1/crates/demo-crate/1.1.0/download", None).await;
    assert_eq!(blocked.status, StatusCode::NOT_FOUND);
    // Fetched from outside first: a direct publish of the name is refused.
    let token = app.token(&["internal"], &["publish"]).await;
    let (metadata, bytes) =
        (json!({"name": "demo-crate", "vers": "2.0.0", "deps": [], "features": {}, "authors": [], "links": null}), {
            use wharf_formats::cargo::archive::{build_crate, manifest};
            build_crate(&[
                ("demo-crate-2.0.0/Cargo.toml", manifest("demo-crate", "2.0.0").as_bytes()),
                ("demo-crate-2.0.0/src/lib.rs", b""),
            ])
        });
    let body = wharf_formats::cargo::framing::encode(metadata.to_string().as_bytes(), &bytes);
    let request = Request::put("/cargo/internal/api/v1/crates/new")
        .header(header::AUTHORIZATION, token)
        .body(Body::from(body))
        .unwrap();
    let refused = app.send(request).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.text());
    assert!(refused.json()["errors"][0]["detail"].as_str().unwrap().contains("public-crates"), "{}", refused.text());
    // The upstream gone, the kept crate still downloads and its index line stays.
    public.server.abort();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let index = app.get("/cargo/app/index/de/mo/demo-crate", None).await;
    assert_eq!(index.status, StatusCode::OK, "{}", index.text());
    assert_eq!(app.get("/cargo/app/api/v1/crates/demo-crate/1.0.0/download", None).await.body, first);
}

#[tokio::test]
async fn go_lists_hide_young_versions_and_info_carries_the_upstream_time() {
    let public = PublicRegistry::start().await;
    let config = CHAIN_CONFIG
        .replace(
            "    - {name: public-npm, format: npm, url: \"http://127.0.0.1:9/npm/public\"}\n",
            &format!(
                "    - {{name: public-npm, format: npm, url: \"http://127.0.0.1:9/npm/public\"}}\n    - {{name: public-go, format: go, url: \"{}/go/public\"}}\n",
                public.url
            ),
        )
        .replace("upstreams: [{name: internal}, {name: npm-store}]", "upstreams: [{name: internal}, {name: npm-store}, {name: go-store}]")
        .replace("      minimumReleaseAge: 72h\n", "    - patterns: [\"/go/*\"]\n      minimumReleaseAge: 3s\n")
        + "---\napiVersion: wharf.dev/v1alpha1\nkind: Repository\nmetadata: {name: go-store, namespace: wharf}\nspec:\n  domainRef: {name: acme}\n  externalConnection: public-go\n  access: {read: [{kind: Anonymous}]}\n";
    let app = TestApp::with_config(&config, Arc::new(object_store::memory::InMemory::new()), Limits::default()).await;
    let token = public.app.token(&["public"], &["publish"]).await;
    let module = "example.internal/Acme/m";
    for version in ["v1.0.0", "v1.1.0"] {
        let zip = super::go_module(module, version, "", "package m\n");
        let reply = public
            .app
            .put_bytes(&format!("/go/public/example.internal/!acme/m/@v/{version}.zip"), Some(&token), zip)
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        if version == "v1.0.0" {
            tokio::time::sleep(Duration::from_millis(3200)).await;
        }
    }
    let list = app.get("/go/app/example.internal/!acme/m/@v/list", None).await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text());
    assert_eq!(list.text(), "v1.0.0\n", "v1.1.0 is younger than the cooldown");
    let latest = app.get("/go/app/example.internal/!acme/m/@latest", None).await.json();
    assert_eq!(latest["Version"], "v1.0.0");
    let upstream_info = public.app.get("/go/public/example.internal/!acme/m/@v/v1.0.0.info", None).await.json();
    assert_eq!(latest["Time"], upstream_info["Time"]);
    assert_eq!(app.get("/go/app/example.internal/!acme/m/@v/v1.1.0.zip", None).await.status, StatusCode::NOT_FOUND);
    let zip = app.get("/go/app/example.internal/!acme/m/@v/v1.0.0.zip", None).await;
    assert_eq!(zip.status, StatusCode::OK, "{}", zip.text());
    assert_eq!(zip.body, super::go_module(module, "v1.0.0", "", "package m\n"));
    let info = app.get("/go/app/example.internal/!acme/m/@v/v1.0.0.info", None).await.json();
    assert_eq!(info["Time"], upstream_info["Time"], "the kept copy is dated as upstream dated it");
}

#[tokio::test]
async fn kept_views_follow_the_cooldown_clock_and_origins_recorded_elsewhere() {
    let public = PublicRegistry::start().await;
    let config = CHAIN_CONFIG
        .replace("http://127.0.0.1:9/npm/public", &format!("{}/npm/public", public.url))
        .replace("      minimumReleaseAge: 72h\n", "")
        .replace(
            "      blockedVersions: [\"/npm//event-stream@3.3.6\"]\n",
            "      blockedVersions: [\"/npm//event-stream@3.3.6\"]\n    - patterns: [\"/npm//slow\"]\n      minimumReleaseAge: 2s\n",
        )
        + "---\napiVersion: wharf.dev/v1alpha1\nkind: Repository\nmetadata: {name: sibling, namespace: wharf}\nspec:\n  domainRef: {name: acme}\n";
    let app = TestApp::with_config(&config, Arc::new(object_store::memory::InMemory::new()), Limits::default()).await;

    // Upstream metadata is fresh for 30 s, so only the clock can show 1.0.0.
    public.publish("slow", "1.0.0", b"a").await;
    assert!(versions(&app.get("/npm/app/slow", None).await).is_empty(), "too young");
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(versions(&app.get("/npm/app/slow", None).await), ["1.0.0"], "of age now");
    assert_eq!(public.count("npm_packument").await, 1, "from the same upstream document");

    // A direct publish in a Repository outside app's chain reserves the
    // name Domain-wide: the public versions app showed go at once.
    public.publish("shared-name", "1.0.0", b"public").await;
    assert_eq!(versions(&app.get("/npm/app/shared-name", None).await), ["1.0.0"]);
    assert_eq!(versions(&app.get("/npm/app/shared-name", None).await), ["1.0.0"], "kept");
    let sibling = app.token(&["sibling"], &["publish"]).await;
    let body = publish_body("shared-name", "2.0.0", &tarball("shared-name", "2.0.0", b"ours"));
    assert_eq!(app.put_json("/npm/sibling/shared-name", &sibling, &body).await.status, StatusCode::CREATED);
    assert_eq!(app.get("/npm/app/shared-name", None).await.status, StatusCode::NOT_FOUND, "reserved");
}

/// The checksum database goes through the chain's Go connection, as through
/// a public module proxy, so `go` verifies public modules with Wharf alone.
#[tokio::test]
async fn go_checksum_database_is_proxied_through_the_go_connection() {
    use axum::routing::get;
    let lookup = "1234\nexample.com/m v1.0.0 h1:abc=\nexample.com/m v1.0.0/go.mod h1:def=\n\ngo.sum database tree\n";
    let tile: &'static [u8] = &[0, 1, 2, 250, 251];
    let upstream = axum::Router::new()
        .route("/go/sumdb/sum.example.org/supported", get(|| async { "" }))
        .route("/go/sumdb/sum.example.org/lookup/{*module}", get(move || async move { lookup }))
        .route("/go/sumdb/sum.example.org/tile/8/0/001", get(move || async move { tile }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/go", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, upstream).await.unwrap() });
    let config = format!(
        r#"
apiVersion: wharf.dev/v1alpha1
kind: Domain
metadata: {{name: acme}}
spec:
  storage: {{memory: {{}}}}
  externalConnections: [{{name: public-go, format: go, url: "{base}"}}]
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {{name: app}}
spec:
  domainRef: {{name: acme}}
  upstreams: [{{name: go-store}}]
  access: {{read: [{{kind: Anonymous}}]}}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {{name: go-store}}
spec:
  domainRef: {{name: acme}}
  externalConnection: public-go
  access: {{read: [{{kind: Anonymous}}]}}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {{name: alone}}
spec:
  domainRef: {{name: acme}}
  access: {{read: [{{kind: Anonymous}}]}}
"#
    );
    let app = TestApp::with_config(&config, Arc::new(object_store::memory::InMemory::new()), Limits::default()).await;
    assert_eq!(app.get("/go/app/sumdb/sum.example.org/supported", None).await.status, StatusCode::OK);
    let found = app.get("/go/app/sumdb/sum.example.org/lookup/example.com/m@v1.0.0", None).await;
    assert_eq!((found.status, found.text()), (StatusCode::OK, lookup.to_owned()));
    let tiled = app.get("/go/app/sumdb/sum.example.org/tile/8/0/001", None).await;
    assert_eq!((tiled.status, &tiled.body[..]), (StatusCode::OK, tile));
    assert_eq!(tiled.headers[header::CONTENT_TYPE], "application/octet-stream");
    // Another database than the upstream serves, a path outside the protocol,
    // and a Repository without a Go connection: 404, so go asks elsewhere.
    assert_eq!(app.get("/go/app/sumdb/sum.other.org/supported", None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(app.get("/go/app/sumdb/sum.example.org/other", None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(app.get("/go/app/sumdb/sum.example.org/lookup/../x", None).await.status, StatusCode::BAD_REQUEST);
    assert_eq!(app.get("/go/alone/sumdb/sum.example.org/supported", None).await.status, StatusCode::NOT_FOUND);
    // Within the metadata TTL the copy is served while the upstream is gone.
    server.abort();
    let cached = app.get("/go/app/sumdb/sum.example.org/lookup/example.com/m@v1.0.0", None).await;
    assert_eq!((cached.status, cached.text()), (StatusCode::OK, lookup.to_owned()));
}

/// A loopback server answering every request with `status` and `body`,
/// counting the requests.
async fn answering(status: StatusCode, body: &'static str) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    let router = axum::Router::new().fallback(move || {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move { (status, body) }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, hits)
}

#[tokio::test]
async fn file_urls_on_another_origin_are_refused_without_telling_the_client_where() {
    let (internal, internal_hits) = answering(StatusCode::INTERNAL_SERVER_ERROR, "internal-secret").await;
    let packument = json!({
        "name": "pointed",
        "dist-tags": {"latest": "1.0.0"},
        "versions": {"1.0.0": {"name": "pointed", "version": "1.0.0",
            "dist": {"tarball": format!("{internal}/admin/pointed-1.0.0.tgz"), "shasum": "a".repeat(40)}}}
    });
    let packument: &'static str = Box::leak(packument.to_string().into_boxed_str());
    let (upstream, _) = answering(StatusCode::OK, packument).await;
    let config = CHAIN_CONFIG
        .replace("http://127.0.0.1:9/npm/public", &format!("{upstream}/npm/public"))
        .replace("      minimumReleaseAge: 72h\n", "");
    let tarball = "/npm/app/pointed/-/pointed-1.0.0.tgz";

    let app = TestApp::with_config(&config, Arc::new(object_store::memory::InMemory::new()), Limits::default()).await;
    let reply = app.get(tarball, None).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    let message = reply.text();
    assert!(message.contains("external connection public-npm") && message.contains("pointed-1.0.0.tgz"), "{message}");
    let internal_host = internal.trim_start_matches("http://");
    for secret in [internal_host, "500", "internal-secret", "/admin/"] {
        assert!(!message.contains(secret), "{secret} in: {message}");
    }
    assert_eq!(internal_hits.load(std::sync::atomic::Ordering::SeqCst), 0, "the foreign URL is never fetched");

    // An origin the connection lists in fileOrigins is fetched (and its
    // answer reported, as the connection's own would be).
    let allowing =
        config.replace("url: \"http://127.0.0.1:", &format!("fileOrigins: [\"{internal}\"], url: \"http://127.0.0.1:"));
    assert!(allowing.contains("fileOrigins"), "{allowing}");
    let allowed =
        TestApp::with_config(&allowing, Arc::new(object_store::memory::InMemory::new()), Limits::default()).await;
    let reply = allowed.get(tarball, None).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    assert!(reply.text().contains("answered 500"), "{}", reply.text());
    assert_eq!(internal_hits.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn file_origins_must_be_bare_origins() {
    let with = |origin: &str| {
        CHAIN_CONFIG.replace("format: npm, url:", &format!("format: npm, fileOrigins: [\"{origin}\"], url:"))
    };
    wharf_api::DomainConfig::from_yaml_str("test.yaml", &with("https://files.example.test:8443")).unwrap();
    wharf_api::DomainConfig::from_yaml_str("test.yaml", &with("http://files.example.test/")).unwrap();
    for bad in ["files.example.test", "ftp://x.test", "https://x.test/path", "https://user@x.test", "https://x.test?q"]
    {
        let error = wharf_api::DomainConfig::from_yaml_str("test.yaml", &with(bad)).unwrap_err().to_string();
        assert!(
            error.contains("spec.externalConnections[0].fileOrigins[0]") && error.contains("is not an origin"),
            "{bad}: {error}"
        );
    }
}

/// An npm upstream whose one tarball trickles a byte every 200 ms and
/// stops by itself after 10 s.
async fn trickling_upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let tarball = format!("{url}/npm/public/slow/-/slow-1.0.0.tgz");
    let router = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let tarball = tarball.clone();
        async move {
            if uri.path().ends_with(".tgz") {
                let bytes = futures::stream::unfold(0u32, |sent| async move {
                    if sent == 50 {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Some((Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"x")), sent + 1))
                });
                return axum::response::Response::new(Body::from_stream(bytes));
            }
            let packument = json!({
                "name": "slow",
                "dist-tags": {"latest": "1.0.0"},
                "versions": {"1.0.0": {"name": "slow", "version": "1.0.0", "dist": {"tarball": tarball, "shasum": "a".repeat(40)}}}
            });
            axum::response::Response::new(Body::from(packument.to_string()))
        }
    });
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

#[tokio::test]
async fn a_trickling_upstream_file_gets_a_504_in_bounded_time_and_leaves_nothing_stored() {
    let upstream = trickling_upstream().await;
    let config = CHAIN_CONFIG
        .replace("http://127.0.0.1:9/npm/public", &format!("{upstream}/npm/public"))
        .replace("      minimumReleaseAge: 72h\n", "");
    let tarball = "/npm/app/slow/-/slow-1.0.0.tgz";
    // (deadline, minimum bytes per 1 s window, what the message names)
    let cases = [(Duration::from_secs(60), 1024, "fewer than 1024 bytes"), (Duration::from_secs(2), 1, "within 2 s")];
    for (deadline, min_bytes, expected) in cases {
        let store = Arc::new(object_store::memory::InMemory::new());
        let options = wharf_upstream::UpstreamOptions {
            file_deadline: deadline,
            file_min_bytes: min_bytes,
            file_window: Duration::from_secs(1),
            ..Default::default()
        };
        let app = Arc::new(TestApp::with_upstream_options(&config, store.clone(), Limits::default(), options).await);
        let started = std::time::Instant::now();
        // Two clients at once: the second waits behind the first's fetch.
        let second = {
            let app = app.clone();
            tokio::spawn(async move { app.get(tarball, None).await })
        };
        let first = app.get(tarball, None).await;
        let second = second.await.unwrap();
        let elapsed = started.elapsed();
        for reply in [&first, &second] {
            assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT, "{}", reply.text());
            let message = reply.text();
            assert!(message.contains("external connection public-npm") && message.contains(expected), "{message}");
        }
        println!("{expected}: both clients answered 504 after {elapsed:?}");
        // The waiting client gets the fetch's answer, not a second wait.
        let bound = deadline.min(Duration::from_secs(2)) + Duration::from_secs(1);
        assert!(elapsed < bound, "{elapsed:?}");
        use futures::TryStreamExt as _;
        let stored: Vec<_> = object_store::ObjectStore::list(&*store, None).try_collect().await.unwrap();
        // The only blob is the kept copy of the packument (an upstream/ record names it).
        let mut kept = Vec::new();
        for meta in stored.iter().filter(|meta| meta.location.as_ref().starts_with("upstream/")) {
            let record =
                object_store::ObjectStoreExt::get(&*store, &meta.location).await.unwrap().bytes().await.unwrap();
            let record: serde_json::Value = serde_json::from_slice(&record).unwrap();
            kept.push(record["body"]["sha256"].as_str().unwrap().to_owned());
        }
        let staged: Vec<_> = stored
            .iter()
            .map(|meta| meta.location.to_string())
            .filter(|key| key.starts_with("uploads/") || key.starts_with("blobs/"))
            .filter(|key| !kept.iter().any(|sha256| key.ends_with(sha256.as_str())))
            .collect();
        assert!(staged.is_empty(), "{staged:?}");
    }
}
