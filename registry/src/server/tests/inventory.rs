//! Router tests of the management API's inventory: packages and versions listed and shown
//! in full, statuses changed in batches, versions copied between Repositories under the
//! destination's rules, and the audit trail of all of it.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};

use super::{ADMIN, Limits, Reply, TestApp, publish_body, tarball};

/// `dev` is where CI publishes, `prod` what builds read; an UpstreamPolicy blocks
/// publishing `blocked-tool` to `prod`, so a copy of one is refused too.
const PROMOTION: &str = r#"
apiVersion: wharf.dev/v1alpha1
kind: Domain
metadata: {name: acme}
spec:
  storage: {memory: {}}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {name: dev}
spec:
  domainRef: {name: acme}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {name: prod}
spec:
  domainRef: {name: acme}
---
apiVersion: wharf.dev/v1alpha1
kind: UpstreamPolicy
metadata: {name: prod-rules}
spec:
  targetRefs: [{kind: Repository, name: prod}]
  rules:
    - patterns: ["/npm//blocked-tool$"]
      publish: Block
"#;

pub(super) async fn promotion_app() -> TestApp {
    TestApp::with_config(PROMOTION, Arc::new(object_store::memory::InMemory::new()), Limits::default()).await
}

impl TestApp {
    async fn post_json(&self, uri: &str, token: Option<&str>, body: &Value) -> Reply {
        let mut request = Request::post(uri).header(header::CONTENT_TYPE, "application/json");
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        self.send(request.body(Body::from(body.to_string())).unwrap()).await
    }

    /// A token for `subject`.
    async fn token_for(&self, subject: &str, repositories: &[&str], permissions: &[&str]) -> String {
        let body =
            json!({"repositories": repositories, "permissions": permissions, "ttlSeconds": 900, "subject": subject});
        let reply = self.mint(body).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        reply.json()["token"].as_str().unwrap().to_owned()
    }

    pub(super) async fn publish_npm(&self, repo: &str, token: &str, name: &str, version: &str) {
        let body = publish_body(name, version, &tarball(name, version, version.as_bytes()));
        let reply = self.put_json(&format!("/npm/{repo}/{name}"), token, &body).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    }

    /// The audit events matching `query`, once at least `count` are recorded (the audit
    /// task takes them off its queue a moment after the request).
    async fn audit(&self, query: &str, token: &str, count: usize) -> Vec<Value> {
        for _ in 0..100 {
            let reply = self.get(&format!("/api/v1/audit?{query}"), Some(token)).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            let events = reply.json()["events"].as_array().unwrap().clone();
            if events.len() >= count {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("fewer than {count} audit events match {query}");
    }
}

#[tokio::test]
async fn packages_and_versions_are_listed_and_shown_in_full() {
    let app = promotion_app().await;
    let alice = app.token_for("alice", &["dev"], &["publish"]).await;
    for name in ["app-a", "app-b", "lib-c"] {
        app.publish_npm("dev", &alice, name, "1.0.0").await;
    }
    app.publish_npm("dev", &alice, "app-a", "1.1.0").await;

    let page = app.get("/api/v1/repositories/dev/packages?format=npm&prefix=app-&limit=1", Some(&alice)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text());
    let page = page.json();
    assert_eq!(page["packages"].as_array().unwrap().len(), 1);
    assert_eq!(page["packages"][0]["name"], "app-a");
    assert_eq!(page["packages"][0]["versions"], 2);
    assert_eq!(page["packages"][0]["latest"], "1.1.0");
    assert_eq!(page["packages"][0]["origin"], "local");
    let cursor = page["nextCursor"].as_str().unwrap();
    let next =
        app.get(&format!("/api/v1/repositories/dev/packages?prefix=app-&limit=1&cursor={cursor}"), Some(&alice)).await;
    let next = next.json();
    assert_eq!(next["packages"][0]["name"], "app-b");
    assert!(next["nextCursor"].is_null(), "{next}");
    let cached = app.get("/api/v1/repositories/dev/packages?origin=cached", Some(&alice)).await.json();
    assert!(cached["packages"].as_array().unwrap().is_empty(), "{cached}");
    let bad = app.get("/api/v1/repositories/dev/packages?origin=elsewhere", Some(&alice)).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.json()["error"].as_str().unwrap().contains("local or cached"));

    let versions = app.get("/api/v1/repositories/dev/packages/npm/app-a/versions", Some(&alice)).await.json();
    assert_eq!(versions["tags"]["latest"], "1.1.0");
    assert_eq!(versions["versions"].as_array().unwrap().len(), 2);
    assert_eq!(versions["versions"][0]["publishedBy"], "alice");

    let uri = "/api/v1/repositories/dev/packages/npm/app-a/versions/1.0.0/status";
    assert_eq!(app.put_json(uri, &alice, &json!({"status": "Unlisted"})).await.status, StatusCode::OK);
    let full = app.get("/api/v1/repositories/dev/packages/npm/app-a/versions/1.0.0", Some(&alice)).await.json();
    assert_eq!(full["publishedBy"], "alice");
    assert_eq!(full["status"], "Unlisted");
    assert_eq!(full["statusHistory"][0]["by"], "alice");
    assert_eq!(full["origin"], "local");
    assert_eq!(full["dependencies"], json!([{"name": "left-pad", "requirement": "^1.0.0", "kind": "runtime"}]));
    assert_eq!(full["readme"], "long readme");
    let asset = &full["assets"][0];
    for digest in ["sha256", "sha512", "sha1", "md5"] {
        assert!(asset[digest].as_str().is_some_and(|d| !d.is_empty()), "{digest}: {asset}");
    }

    // Nobody who may not read `dev` learns what it holds.
    let outsider = app.token_for("bob", &["prod"], &["read"]).await;
    for uri in [
        "/api/v1/repositories/dev/packages",
        "/api/v1/repositories/dev/packages/npm/app-a/versions",
        "/api/v1/repositories/dev/packages/npm/app-a/versions/1.0.0",
        "/api/v1/repositories/nowhere/packages",
    ] {
        assert_eq!(app.get(uri, None).await.status, StatusCode::UNAUTHORIZED, "{uri}");
        assert_eq!(app.get(uri, Some(&outsider)).await.status, StatusCode::FORBIDDEN, "{uri}");
    }
    let missing = app.get("/api/v1/repositories/dev/packages/npm/nothing/versions", Some(&alice)).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn statuses_change_in_batches_each_from_its_expected_status() {
    let app = promotion_app().await;
    let alice = app.token_for("alice", &["dev"], &["publish"]).await;
    for version in ["1.0.0", "1.1.0", "1.2.0"] {
        app.publish_npm("dev", &alice, "app", version).await;
    }
    let uri = "/api/v1/repositories/dev/packages/npm/app/versions/status";
    let set =
        |versions: Value, status: &str| json!({"versions": versions, "status": status, "expectedStatus": "Published"});
    assert_eq!(app.post_json(uri, Some(&alice), &set(json!(["1.0.0"]), "Archived")).await.status, StatusCode::OK);
    let batch = app.post_json(uri, Some(&alice), &set(json!(["1.0.0", "1.1.0", "9.9.9"]), "Unlisted")).await;
    assert_eq!(batch.status, StatusCode::OK, "{}", batch.text());
    let batch = batch.json();
    assert_eq!(batch["changed"], json!(["1.1.0"]));
    assert_eq!(batch["failed"]["1.0.0"]["code"], "MISMATCHED_STATUS");
    assert_eq!(batch["failed"]["9.9.9"]["code"], "NOT_FOUND");
    let reader = app.token_for("reader", &["dev"], &["read"]).await;
    assert_eq!(
        app.post_json(uri, Some(&reader), &set(json!(["1.2.0"]), "Unlisted")).await.status,
        StatusCode::FORBIDDEN
    );
    let unfinished = app.post_json(uri, Some(&alice), &set(json!(["1.2.0"]), "Unfinished")).await;
    assert_eq!(unfinished.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn versions_are_copied_under_the_destinations_rules_and_audited() {
    let app = promotion_app().await;
    let ci = app.token_for("ci", &["dev"], &["publish"]).await;
    app.publish_npm("dev", &ci, "app", "1.0.0").await;
    app.publish_npm("dev", &ci, "app", "2.0.0").await;
    app.publish_npm("dev", &ci, "blocked-tool", "1.0.0").await;
    let promoter = app.token_for("release-bot", &["dev", "prod"], &["read", "publish"]).await;
    let copy = |package: &str, versions: Value| json!({"source": "dev", "format": "npm", "package": package, "versions": versions});

    // Publishing to `dev` does not give the right to copy into `prod`.
    let refused = app.post_json("/api/v1/repositories/prod/copy", Some(&ci), &copy("app", json!(["1.0.0"]))).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.text());

    let copied =
        app.post_json("/api/v1/repositories/prod/copy", Some(&promoter), &copy("app", json!(["1.0.0", "3.0.0"]))).await;
    assert_eq!(copied.status, StatusCode::OK, "{}", copied.text());
    let copied = copied.json();
    assert_eq!(copied["copied"], json!(["1.0.0"]));
    assert_eq!(copied["failed"]["3.0.0"]["code"], "NOT_FOUND");
    // The copy names the same bytes: prod serves them.
    let reader = app.token_for("build", &["prod"], &["read"]).await;
    let served = app.get("/npm/prod/app/-/app-1.0.0.tgz", Some(&reader)).await;
    assert_eq!(served.status, StatusCode::OK);
    assert_eq!(app.get("/npm/prod/app/-/app-2.0.0.tgz", Some(&reader)).await.status, StatusCode::NOT_FOUND);
    // Again: nothing to do.
    let again = app.post_json("/api/v1/repositories/prod/copy", Some(&promoter), &copy("app", json!(["1.0.0"]))).await;
    assert_eq!(again.json()["unchanged"], json!(["1.0.0"]));

    // prod's rules refuse the name: the copy is refused as a publish would be.
    let blocked =
        app.post_json("/api/v1/repositories/prod/copy", Some(&promoter), &copy("blocked-tool", json!(["1.0.0"]))).await;
    assert_eq!(blocked.status, StatusCode::FORBIDDEN, "{}", blocked.text());
    assert!(blocked.json()["error"].as_str().unwrap().contains("blocked"), "{}", blocked.text());
    assert_eq!(
        app.get("/api/v1/repositories/prod/packages/npm/blocked-tool/versions", Some(&reader)).await.status,
        StatusCode::NOT_FOUND
    );

    // Another version with other bytes under the same number is not overwritten, unless an
    // administrator asks.
    app.publish_npm("dev", &ci, "app", "3.0.0").await;
    let body = publish_body("app", "3.0.0", &tarball("app", "3.0.0", b"prod's own build"));
    let prod_publisher = app.token_for("hotfix", &["prod"], &["publish"]).await;
    assert_eq!(app.put_json("/npm/prod/app", &prod_publisher, &body).await.status, StatusCode::CREATED);
    let clash = app.post_json("/api/v1/repositories/prod/copy", Some(&promoter), &copy("app", json!(["3.0.0"]))).await;
    assert_eq!(clash.json()["failed"]["3.0.0"]["code"], "ALREADY_EXISTS", "{}", clash.text());
    let mut overwrite = copy("app", json!(["3.0.0"]));
    overwrite["allowOverwrite"] = json!(true);
    let not_admin = app.post_json("/api/v1/repositories/prod/copy", Some(&promoter), &overwrite).await;
    assert_eq!(not_admin.status, StatusCode::FORBIDDEN);
    let replaced = app.post_json("/api/v1/repositories/prod/copy", Some(ADMIN), &overwrite).await;
    assert_eq!(replaced.json()["copied"], json!(["3.0.0"]), "{}", replaced.text());
    let dev_bytes = app.get("/npm/dev/app/-/app-3.0.0.tgz", Some(&ci)).await.body;
    assert_eq!(app.get("/npm/prod/app/-/app-3.0.0.tgz", Some(&reader)).await.body, dev_bytes);

    let same = app.post_json("/api/v1/repositories/dev/copy", Some(&promoter), &copy("app", json!(["1.0.0"]))).await;
    assert_eq!(same.status, StatusCode::BAD_REQUEST);
    let both = json!({"source": "dev", "format": "npm", "package": "app", "versions": ["1.0.0"], "allVersions": true});
    assert_eq!(
        app.post_json("/api/v1/repositories/prod/copy", Some(&promoter), &both).await.status,
        StatusCode::BAD_REQUEST
    );

    // The audit trail says who did each, from where.
    let copies = app.audit("type=package.copied&repository=prod", &promoter, 2).await;
    assert_eq!(copies[0]["data"]["actor"]["subject"], "release-bot");
    assert_eq!(copies[0]["data"]["sourceRepository"], "dev");
    // A publisher of prod who may not read dev does not learn of it.
    let hidden = app.audit("type=package.copied&repository=prod", &prod_publisher, 2).await;
    assert!(hidden.iter().all(|e| e["data"].get("sourceRepository").is_none()), "{hidden:?}");
    assert_eq!(copies[0]["subject"], "prod/npm/app@1.0.0");
    assert_eq!(copies[0]["specversion"], "1.0");
    assert_eq!(copies[0]["type"], "dev.wharf.package.copied");
    let refusals = app.audit("type=policy.refused", ADMIN, 1).await;
    assert_eq!(refusals[0]["data"]["package"], "blocked-tool");
    assert_eq!(refusals[0]["data"]["actor"]["subject"], "release-bot");
    let downloads = app.audit("type=package.downloaded&repository=prod&package=app&version=1.0.0", ADMIN, 1).await;
    assert_eq!(downloads[0]["data"]["actor"]["subject"], "build");
    assert_eq!(downloads[0]["data"]["file"], "app-1.0.0.tgz");
    let publishes = app.audit("type=package.published&repository=dev&package=app", ADMIN, 3).await;
    assert_eq!(publishes[0]["data"]["actor"]["subject"], "ci");
    assert_eq!(publishes[0]["data"]["actor"]["kind"], "token");
    assert!(publishes[0]["data"]["actor"]["tokenId"].is_string());
    let minted = app.audit("type=token.minted", ADMIN, 4).await;
    assert!(minted.iter().any(|e| e["data"]["tokenSubject"] == "release-bot" && e["data"]["actor"]["kind"] == "admin"));
    assert!(minted.iter().all(|e| !e.to_string().contains("eyJ")), "a token's secret is never audited");
    let newest = app.audit("type=token.minted&limit=1", ADMIN, 1).await;
    assert_eq!((newest.len(), &newest[0]["data"]["tokenSubject"]), (1, &json!("hotfix")), "the newest, not the oldest");

    // Only an administrator reads the whole trail; a Repository's publishers read its own.
    assert_eq!(app.get("/api/v1/audit", None).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.get("/api/v1/audit", Some(&promoter)).await.status, StatusCode::FORBIDDEN);
    assert_eq!(app.get("/api/v1/audit?repository=prod", Some(&reader)).await.status, StatusCode::FORBIDDEN);
    assert_eq!(app.get("/api/v1/audit?repository=dev", Some(&prod_publisher)).await.status, StatusCode::FORBIDDEN);
    assert_eq!(app.get("/api/v1/audit?repository=prod&bogus=1", Some(&promoter)).await.status, StatusCode::BAD_REQUEST);
}

/// A Repository named in the body (a copy's source, the audit's repository) is reached
/// under its own network rules, as the one in the path is.
#[tokio::test]
async fn a_copy_source_and_an_audited_repository_keep_their_network_rules() {
    let config = format!(
        "{PROMOTION}---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {{name: vault}}
spec:
  domainRef: {{name: acme}}
  network: {{read: [{{kind: CIDR, cidr: 10.0.0.0/8}}]}}
"
    );
    let app = TestApp::with_config(&config, Arc::new(object_store::memory::InMemory::new()), Limits::default()).await;
    let both = app.token_for("release-bot", &["vault", "prod"], &["read", "publish"]).await;
    // Router tests come over no socket: an unknown address, outside every rule.
    let copy = json!({"source": "vault", "format": "npm", "package": "app", "allVersions": true});
    let refused = app.post_json("/api/v1/repositories/prod/copy", Some(&both), &copy).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.text());
    assert!(refused.text().contains("spec.network.read"), "{}", refused.text());
    let audit = app.get("/api/v1/audit?repository=vault", Some(&both)).await;
    assert_eq!(audit.status, StatusCode::FORBIDDEN, "{}", audit.text());
    assert!(audit.text().contains("spec.network"), "{}", audit.text());
    // Without rules, prod answers.
    assert_eq!(app.get("/api/v1/audit?repository=prod", Some(&both)).await.status, StatusCode::OK);
}
