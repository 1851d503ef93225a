//! Router tests that probe, anonymously and across tenants, that no answer reveals a
//! Repository, package or version the caller may not read — and that a Repository's
//! packages reach other Repositories' readers only with its consent.

use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::Value;

use super::{ADMIN, Limits, TestApp, publish_body, tarball};

/// `pub` is anonymously readable and has the external connection; `priv2` is private to
/// namespace team-b.
const TENANTS: &str = r#"
apiVersion: wharf.dev/v1alpha1
kind: Domain
metadata: {name: acme, namespace: wharf}
spec:
  storage: {memory: {}}
  repositoryNamespaces: {from: All}
  externalConnections:
    - {name: public-npm, format: npm, url: "http://127.0.0.1:9/npm/public"}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {name: pub, namespace: team-a}
spec:
  domainRef: {name: acme, namespace: wharf}
  externalConnection: public-npm
  access: {read: [{kind: Anonymous}]}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {name: priv2, namespace: team-b}
spec:
  domainRef: {name: acme, namespace: wharf}
  access: {read: [{kind: Namespace, name: team-b}]}
"#;

async fn tenants() -> TestApp {
    TestApp::with_config(TENANTS, Arc::new(object_store::memory::InMemory::new()), Limits::default()).await
}

/// The body of a reply with the name asked about replaced, to compare the answers for two
/// names.
fn without(reply: &super::Reply, name: &str) -> String {
    reply.text().replace(name, "NAME")
}

#[tokio::test]
async fn the_origin_report_does_not_reveal_private_names() {
    let app = tenants().await;
    let body = publish_body("secret", "1.0.0", &tarball("secret", "1.0.0", b""));
    assert_eq!(app.put_json("/npm/priv2/secret", ADMIN, &body).await.status, StatusCode::CREATED);

    let origin = |name: &str| format!("/api/v1/repositories/pub/packages/npm/{name}/origin");
    let pub_reader = app.token(&["pub"], &["read", "publish"]).await;
    for token in [None, Some(pub_reader.as_str())] {
        let secret = app.get(&origin("secret"), token).await;
        let unused = app.get(&origin("never-used"), token).await;
        assert_eq!(secret.status, StatusCode::OK);
        assert!(!secret.text().contains("priv2"), "{}", secret.text());
        assert_eq!(without(&secret, "secret"), without(&unused, "never-used"));
    }
    // Whoever may read priv2 sees why the name is reserved.
    let report: Value = app.get(&origin("secret"), Some(ADMIN)).await.json();
    assert_eq!(report["firstVersionOrigin"]["repository"], "priv2");
    assert_eq!(report["effective"]["externalUpstream"]["allowed"], false);
}

#[tokio::test]
async fn missing_and_private_repositories_answer_alike() {
    let app = tenants().await;
    let pub_reader = app.token(&["pub"], &["read"]).await;
    let paths = [
        "/api/v1/repositories/{repo}/packages/npm/x/origin",
        "/api/v1/repositories/{repo}/packages/npm/x/explain",
        "/api/v1/repositories/{repo}/packages/npm/x/versions/1.0.0",
        "/npm/{repo}/x",
        "/npm/{repo}/-/ping",
        "/npm/{repo}/-/npm/v1/security/audits/quick",
        "/pypi/{repo}/simple/x/",
        "/cargo/{repo}/index/config.json",
        "/go/{repo}/example.com/m/@v/list",
        "/go/{repo}/sumdb/sum.example.org/supported",
        "/maven/{repo}/com/acme/lib/maven-metadata.xml",
        "/generic/{repo}/acme/tool",
        "/nuget/{repo}/v3/index.json",
        "/nuget/{repo}/v3/search?q=x",
        "/nuget/{repo}/v3/flatcontainer/x/index.json",
        "/nuget/{repo}/v2/Search()?searchTerm='x'",
        "/swift/{repo}/acme/x",
        "/swift/{repo}/identifiers?url=https://git.example/x",
        "/swift/{repo}/availability",
    ];
    for path in paths {
        for token in [None, Some(pub_reader.as_str())] {
            let private = app.get(&path.replace("{repo}", "priv2"), token).await;
            let missing = app.get(&path.replace("{repo}", "ghost"), token).await;
            let expected = if token.is_some() { StatusCode::FORBIDDEN } else { StatusCode::UNAUTHORIZED };
            assert_eq!((private.status, missing.status), (expected, expected), "{path}");
            assert_eq!(without(&private, "priv2"), without(&missing, "ghost"), "{path}");
        }
    }
    // The version changes a publisher or an administrator makes (a status, a takedown):
    // anonymous, another repository's reader and its publisher get the same answers for a
    // private and a missing repository, and change nothing.
    let pub_publisher = app.token(&["pub"], &["read", "publish"]).await;
    for (method, path) in [
        ("DELETE", "/api/v1/repositories/{repo}/packages/npm/x/versions/1.0.0"),
        ("PUT", "/api/v1/repositories/{repo}/packages/npm/x/versions/1.0.0/status"),
    ] {
        for token in [None, Some(pub_reader.as_str()), Some(pub_publisher.as_str())] {
            let send = |repo: &str| {
                let mut request = axum::http::Request::builder()
                    .method(method)
                    .uri(path.replace("{repo}", repo))
                    .header(axum::http::header::CONTENT_TYPE, "application/json");
                if let Some(token) = token {
                    request = request.header(axum::http::header::AUTHORIZATION, format!("Bearer {token}"));
                }
                app.send(request.body(axum::body::Body::from(r#"{"status":"Disposed"}"#)).unwrap())
            };
            let (private, missing) = (send("priv2").await, send("ghost").await);
            let expected = if token.is_some() { StatusCode::FORBIDDEN } else { StatusCode::UNAUTHORIZED };
            assert_eq!((private.status, missing.status), (expected, expected), "{method} {path}");
            assert_eq!(without(&private, "priv2"), without(&missing, "ghost"), "{method} {path}");
        }
    }

    // The list of repositories shows only readable ones.
    let listed = app.get("/api/v1/repositories", None).await.text();
    assert!(listed.contains("\"pub\"") && !listed.contains("priv2"), "{listed}");
}

/// The attack from the field: `app` (anyone may read) names `priv` (team-b only) as an
/// upstream to read its packages anonymously. Refused unless `priv` consents.
const ATTACK: &str = r#"
apiVersion: wharf.dev/v1alpha1
kind: Domain
metadata: {name: acme, namespace: wharf}
spec:
  storage: {memory: {}}
  repositoryNamespaces: {from: All}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {name: app, namespace: team-a}
spec:
  domainRef: {name: acme, namespace: wharf}
  upstreams: [{name: priv}]
  access: {read: [{kind: Anonymous}]}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {name: priv, namespace: team-b}
spec:
  domainRef: {name: acme, namespace: wharf}
  access: {read: [{kind: Namespace, name: team-b}]}
"#;

#[test]
fn a_chain_into_a_private_repository_is_refused_without_consent() {
    let error = wharf_api::DomainConfig::from_yaml_str("attack.yaml", ATTACK).unwrap_err();
    assert_eq!(
        error.to_string(),
        "attack.yaml: document 2 (Repository app): spec.upstreams[0].name: upstream Repository `priv` does not permit this Repository: Anonymous (anyone) may read this Repository but not `priv`, and `priv` does not list this Repository in spec.allowedDownstreams"
    );
    // Through an intermediate Repository as well, and consent to the intermediate is not
    // consent to what reads through it.
    let through = ATTACK.replace("upstreams: [{name: priv}]", "upstreams: [{name: mid}]")
        + r#"  allowedDownstreams: [{namespace: team-a, name: mid}]
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {name: mid, namespace: team-a}
spec:
  domainRef: {name: acme, namespace: wharf}
  upstreams: [{name: priv}]
  access: {read: [{kind: Namespace, name: team-b}]}
"#;
    let error = wharf_api::DomainConfig::from_yaml_str("attack.yaml", &through).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("upstream Repository `priv` (reached through mid -> priv) does not permit this Repository"),
        "{error}"
    );
}

#[tokio::test]
async fn a_consented_chain_serves_the_upstream_to_the_downstream_readers_only() {
    let consented = ATTACK.to_owned() + "  allowedDownstreams: [{namespace: team-a, name: app}]\n";
    let app =
        TestApp::with_config(&consented, Arc::new(object_store::memory::InMemory::new()), Limits::default()).await;
    let tarball = tarball("secret", "1.0.0", b"team-b's code");
    let body = publish_body("secret", "1.0.0", &tarball);
    assert_eq!(app.put_json("/npm/priv/secret", ADMIN, &body).await.status, StatusCode::CREATED);
    let through_app = app.get("/npm/app/secret/-/secret-1.0.0.tgz", None).await;
    assert_eq!(through_app.status, StatusCode::OK);
    assert_eq!(&through_app.body[..], &tarball[..]);
    assert_eq!(app.get("/npm/priv/secret/-/secret-1.0.0.tgz", None).await.status, StatusCode::UNAUTHORIZED);
}

/// The identity endpoints, anonymously and with another repository's token: the listing
/// names only readable repositories (and what their chains proxy), the exchanges answer a
/// private repository and a missing one alike, and the sign-in options name no repository.
#[tokio::test]
async fn identity_endpoints_reveal_nothing_to_outsiders() {
    let app = tenants().await;
    let pub_reader = app.token(&["pub"], &["read"]).await;
    let post = |uri: &'static str, token: Option<String>, body: Value| {
        let mut request = axum::http::Request::post(uri).header(axum::http::header::CONTENT_TYPE, "application/json");
        if let Some(token) = token {
            request = request.header(axum::http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        app.send(request.body(axum::body::Body::from(body.to_string())).unwrap())
    };
    for token in [None, Some(pub_reader.clone())] {
        let listed: Value = app.get("/api/v1/repositories", token.as_deref()).await.json();
        let names: Vec<&str> =
            listed["repositories"].as_array().unwrap().iter().filter_map(|r| r["name"].as_str()).collect();
        assert_eq!(names, ["pub"]);
        assert_eq!(listed["repositories"][0]["proxies"], serde_json::json!(["npm"]));

        let exchange =
            |repo: &str| serde_json::json!({"idToken": "not.a.token", "repositories": [repo], "permissions": ["read"]});
        let private = post("/api/v1/auth/oidc", token.clone(), exchange("priv2")).await;
        let missing = post("/api/v1/auth/oidc", token.clone(), exchange("ghost")).await;
        assert_eq!((private.status, missing.status), (StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED));
        assert_eq!(without(&private, "priv2"), without(&missing, "ghost"));
        let kubernetes =
            |repo: &str| serde_json::json!({"token": "t", "repositories": [repo], "permissions": ["read"]});
        let private = post("/api/v1/auth/kubernetes", token.clone(), kubernetes("priv2")).await;
        let missing = post("/api/v1/auth/kubernetes", token.clone(), kubernetes("ghost")).await;
        assert_eq!((private.status, missing.status), (StatusCode::FORBIDDEN, StatusCode::FORBIDDEN));
        assert_eq!(without(&private, "priv2"), without(&missing, "ghost"));
        assert!(private.text().contains("kubernetesUsers"), "{}", private.text());

        let options = app.get("/api/v1/auth/sign-in", token.as_deref()).await;
        assert_eq!(options.json(), serde_json::json!({"providers": [], "kubernetesUsers": false}));
        // Tokens are the admin's business.
        let expected = if token.is_some() { StatusCode::FORBIDDEN } else { StatusCode::UNAUTHORIZED };
        assert_eq!(app.get("/api/v1/auth/tokens", token.as_deref()).await.status, expected);
    }
}
