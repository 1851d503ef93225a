//! Router tests for upstream chains and origin controls: the origin report,
//! reads through a chain, merged metadata and refused publishes.

use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::json;

use super::{Limits, TestApp};

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
        ("/api/v1/repositories/nope/packages/npm/x/origin", StatusCode::NOT_FOUND),
    ] {
        let reply = app.get(uri, None).await;
        assert_eq!(reply.status, status, "{uri}: {}", reply.text());
    }
}
