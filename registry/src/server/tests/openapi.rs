//! The management API's OpenAPI description: generated from the code, checked in, and
//! true of what every endpoint answers.

use std::collections::BTreeSet;
use std::sync::Mutex;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};

use super::inventory::promotion_app;
use super::{ADMIN, Reply, TestApp};
use crate::server::openapi;

const CHECKED_IN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");

#[test]
fn the_checked_in_description_is_the_generated_one() {
    let generated = format!("{}\n", openapi::json());
    if std::env::var_os("WHARF_UPDATE_OPENAPI").is_some() {
        std::fs::write(CHECKED_IN, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(CHECKED_IN).unwrap_or_default();
    assert!(
        checked_in == generated,
        "registry/openapi.json differs from the API the code describes; run WHARF_UPDATE_OPENAPI=1 cargo test -p wharf-registry --lib openapi and review the change"
    );
    let document: Value = serde_json::from_str(&generated).unwrap();
    assert!(document["openapi"].as_str().unwrap().starts_with("3.1"), "{}", document["openapi"]);
}

/// Checks answers against the description and notes which operations were seen.
struct Conformance {
    document: Value,
    seen: Mutex<BTreeSet<(String, String)>>,
}

impl Conformance {
    fn new() -> Self {
        Conformance { document: serde_json::from_str(openapi::json()).unwrap(), seen: Mutex::default() }
    }

    /// Sends the request and checks the answer's status is documented for the operation
    /// `template` names and its body matches the documented schema, objects closed (a
    /// field the description lacks fails too).
    async fn send(
        &self,
        app: &TestApp,
        method: Method,
        uri: &str,
        template: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut request = Request::builder().method(method.clone()).uri(uri);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = match body {
            Some(body) => request.header(header::CONTENT_TYPE, "application/json").body(Body::from(body.to_string())),
            None => request.body(Body::empty()),
        };
        let reply = app.send(request.unwrap()).await;
        let method = method.as_str().to_lowercase();
        let operation = &self.document["paths"][template][&method];
        assert!(operation.is_object(), "{method} {template} is not described");
        let response = &operation["responses"][reply.status.as_str()];
        assert!(
            response.is_object(),
            "{method} {template} answered {} which is not described: {}",
            reply.status,
            reply.text()
        );
        let schema = &response["content"]["application/json"]["schema"];
        if schema.is_object() {
            let body = reply.json();
            let errors = self.violations(schema, &body);
            assert!(
                errors.is_empty(),
                "{method} {uri} answered {} not as described: {errors:#?}\n{body:#}",
                reply.status
            );
        }
        self.seen.lock().unwrap().insert((method, template.to_owned()));
        reply
    }

    /// How `body` departs from `schema` (a schema of the description, its references
    /// resolved in the description's components).
    fn violations(&self, schema: &Value, body: &Value) -> Vec<String> {
        let mut root = json!({"components": closed(self.document["components"].clone())});
        root.as_object_mut().unwrap().extend(closed(schema.clone()).as_object().unwrap().clone());
        let validator = jsonschema::draft202012::new(&root).unwrap();
        validator.iter_errors(body).map(|e| format!("{} at {}", e, e.instance_path())).collect()
    }

    /// Every operation described was exercised.
    fn assert_all_seen(&self) {
        let seen = self.seen.lock().unwrap();
        let mut missing = Vec::new();
        for (path, operations) in self.document["paths"].as_object().unwrap() {
            for method in operations.as_object().unwrap().keys() {
                if !seen.contains(&(method.clone(), path.clone())) {
                    missing.push(format!("{method} {path}"));
                }
            }
        }
        assert!(missing.is_empty(), "not exercised: {missing:?}");
    }
}

/// `schema` with every object that lists its properties closed to others.
fn closed(mut schema: Value) -> Value {
    fn close(value: &mut Value) {
        match value {
            Value::Object(map) => {
                if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                    map.insert("additionalProperties".into(), Value::Bool(false));
                }
                map.values_mut().for_each(close);
            }
            Value::Array(items) => items.iter_mut().for_each(close),
            _ => {}
        }
    }
    close(&mut schema);
    schema
}

#[test]
fn the_check_refuses_a_missing_a_mistyped_and_an_undescribed_field() {
    let api = Conformance::new();
    let schema = json!({"$ref": "#/components/schemas/StatusChanged"});
    assert!(api.violations(&schema, &json!({"version": "1.0.0", "status": "Unlisted"})).is_empty());
    assert!(!api.violations(&schema, &json!({"version": "1.0.0"})).is_empty());
    assert!(!api.violations(&schema, &json!({"version": "1.0.0", "status": "Gone"})).is_empty());
    assert!(!api.violations(&schema, &json!({"version": "1.0.0", "status": "Unlisted", "extra": 1})).is_empty());
}

#[tokio::test]
async fn every_endpoint_answers_as_described() {
    let app = promotion_app().await;
    let api = Conformance::new();
    let check = |method, uri: String, template: &'static str, token: Option<String>, body: Option<Value>| {
        let api = &api;
        let app = &app;
        async move { api.send(app, method, &uri, template, token.as_deref(), body).await }
    };
    let admin = Some(ADMIN.to_owned());

    let document = check(Method::GET, "/api/v1/openapi.json".into(), "/api/v1/openapi.json", None, None).await;
    assert_eq!(document.status, StatusCode::OK);
    let token_body = json!({"repositories": ["dev", "prod"], "permissions": ["read", "publish"], "ttlSeconds": 900, "subject": "release-bot"});
    let minted =
        check(Method::POST, "/api/v1/auth/token".into(), "/api/v1/auth/token", admin.clone(), Some(token_body.clone()))
            .await;
    assert_eq!(minted.status, StatusCode::CREATED);
    let bot = Some(minted.json()["token"].as_str().unwrap().to_owned());
    check(Method::POST, "/api/v1/auth/token".into(), "/api/v1/auth/token", None, Some(token_body.clone())).await;
    check(Method::POST, "/api/v1/auth/token".into(), "/api/v1/auth/token", bot.clone(), Some(token_body)).await;
    check(
        Method::POST,
        "/api/v1/auth/token".into(),
        "/api/v1/auth/token",
        admin.clone(),
        Some(json!({"repositories": []})),
    )
    .await;
    let oidc = json!({"idToken": "not-a-token", "repositories": ["dev"], "permissions": ["read"]});
    let refused = check(Method::POST, "/api/v1/auth/oidc".into(), "/api/v1/auth/oidc", None, Some(oidc)).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    let kubernetes = json!({"token": "x", "repositories": ["dev"], "permissions": ["read"]});
    check(Method::POST, "/api/v1/auth/kubernetes".into(), "/api/v1/auth/kubernetes", None, Some(kubernetes)).await;
    check(Method::GET, "/api/v1/auth/sign-in".into(), "/api/v1/auth/sign-in", None, None).await;
    let tokens = check(
        Method::GET,
        "/api/v1/auth/tokens?subject=release-bot".into(),
        "/api/v1/auth/tokens",
        admin.clone(),
        None,
    )
    .await;
    assert_eq!(tokens.json()["tokens"].as_array().unwrap().len(), 1);
    check(Method::GET, "/api/v1/auth/tokens".into(), "/api/v1/auth/tokens", bot.clone(), None).await;
    let repositories =
        check(Method::GET, "/api/v1/repositories".into(), "/api/v1/repositories", bot.clone(), None).await;
    assert_eq!(repositories.json()["repositories"].as_array().unwrap().len(), 2);

    app.publish_npm("dev", bot.as_deref().unwrap(), "app", "1.0.0").await;
    app.publish_npm("dev", bot.as_deref().unwrap(), "app", "1.1.0").await;
    let packages = "/api/v1/repositories/{repo}/packages";
    check(Method::GET, "/api/v1/repositories/dev/packages?limit=1".into(), packages, bot.clone(), None).await;
    check(Method::GET, "/api/v1/repositories/dev/packages?limit=x".into(), packages, bot.clone(), None).await;
    check(Method::GET, "/api/v1/repositories/dev/packages".into(), packages, None, None).await;
    let versions = "/api/v1/repositories/{repo}/packages/{format}/{package}/versions";
    check(Method::GET, "/api/v1/repositories/dev/packages/npm/app/versions".into(), versions, bot.clone(), None).await;
    check(Method::GET, "/api/v1/repositories/dev/packages/npm/none/versions".into(), versions, bot.clone(), None).await;
    let version = "/api/v1/repositories/{repo}/packages/{format}/{package}/versions/{version}";
    let detail = check(
        Method::GET,
        "/api/v1/repositories/dev/packages/npm/app/versions/1.0.0".into(),
        version,
        bot.clone(),
        None,
    )
    .await;
    assert_eq!(detail.status, StatusCode::OK);
    check(Method::GET, "/api/v1/repositories/dev/packages/npm/app/versions/9.9.9".into(), version, bot.clone(), None)
        .await;
    let status = "/api/v1/repositories/{repo}/packages/{format}/{package}/versions/{version}/status";
    let unlisted = json!({"status": "Unlisted", "expectedStatus": "Published"});
    check(
        Method::PUT,
        "/api/v1/repositories/dev/packages/npm/app/versions/1.0.0/status".into(),
        status,
        bot.clone(),
        Some(unlisted.clone()),
    )
    .await;
    let mismatch = check(
        Method::PUT,
        "/api/v1/repositories/dev/packages/npm/app/versions/1.0.0/status".into(),
        status,
        bot.clone(),
        Some(unlisted),
    )
    .await;
    assert_eq!(mismatch.status, StatusCode::CONFLICT);
    let batch = "/api/v1/repositories/{repo}/packages/{format}/{package}/versions/status";
    let archive = json!({"versions": ["1.0.0", "1.1.0", "2.0.0"], "status": "Archived", "expectedStatus": "Unlisted"});
    check(
        Method::POST,
        "/api/v1/repositories/dev/packages/npm/app/versions/status".into(),
        batch,
        bot.clone(),
        Some(archive),
    )
    .await;
    let origin = "/api/v1/repositories/{repo}/packages/{format}/{package}/origin";
    check(Method::GET, "/api/v1/repositories/dev/packages/npm/app/origin".into(), origin, bot.clone(), None).await;
    let explain = "/api/v1/repositories/{repo}/packages/{format}/{package}/explain";
    let explained =
        check(Method::GET, "/api/v1/repositories/dev/packages/npm/app/explain".into(), explain, bot.clone(), None)
            .await;
    let archived = &explained.json()["versions"][1];
    assert_eq!((&archived["version"], &archived["installable"]), (&json!("1.0.0"), &json!(false)), "{archived}");
    check(Method::GET, "/api/v1/repositories/dev/packages/npm/..%2Fx/explain".into(), explain, bot.clone(), None).await;
    let copy = "/api/v1/repositories/{repo}/copy";
    let promote = json!({"source": "dev", "format": "npm", "package": "app", "allVersions": true});
    let copied = check(Method::POST, "/api/v1/repositories/prod/copy".into(), copy, bot.clone(), Some(promote)).await;
    assert_eq!(copied.json()["copied"], json!(["1.0.0", "1.1.0"]));
    let missing = json!({"source": "dev", "format": "npm", "package": "none", "allVersions": true});
    check(Method::POST, "/api/v1/repositories/prod/copy".into(), copy, bot.clone(), Some(missing)).await;
    let deleted = check(
        Method::DELETE,
        "/api/v1/repositories/prod/packages/npm/app/versions/1.1.0".into(),
        version,
        admin.clone(),
        None,
    )
    .await;
    assert_eq!(deleted.status, StatusCode::OK);
    check(
        Method::DELETE,
        "/api/v1/repositories/prod/packages/npm/app/versions/1.0.0".into(),
        version,
        bot.clone(),
        None,
    )
    .await;

    // Events reach the trail a moment after their requests.
    let mut events = Value::Null;
    for _ in 0..100 {
        events = check(Method::GET, "/api/v1/audit?type=package.deleted".into(), "/api/v1/audit", admin.clone(), None)
            .await
            .json();
        if !events["events"].as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(events["events"][0]["data"]["reusable"], false, "{events}");
    let all = check(Method::GET, "/api/v1/audit".into(), "/api/v1/audit", admin.clone(), None).await;
    let kinds: BTreeSet<String> =
        all.json()["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect();
    for kind in ["token.minted", "package.published", "package.status_changed", "package.copied", "package.deleted"] {
        assert!(kinds.contains(&format!("dev.wharf.{kind}")), "{kind} missing from {kinds:?}");
    }
    check(Method::GET, "/api/v1/audit?repository=prod".into(), "/api/v1/audit", bot.clone(), None).await;
    check(Method::GET, "/api/v1/audit".into(), "/api/v1/audit", None, None).await;

    let tokens = "/api/v1/auth/tokens/{id}";
    let id = minted_id(&app).await;
    check(Method::DELETE, format!("/api/v1/auth/tokens/{id}"), tokens, admin.clone(), None).await;
    check(Method::DELETE, "/api/v1/auth/tokens/nothing".into(), tokens, admin.clone(), None).await;
    let revoked = check(
        Method::DELETE,
        "/api/v1/auth/tokens?subject=release-bot".into(),
        "/api/v1/auth/tokens",
        admin.clone(),
        None,
    )
    .await;
    assert_eq!(revoked.status, StatusCode::OK);

    api.assert_all_seen();
}

/// The id of a token minted now.
async fn minted_id(app: &TestApp) -> String {
    app.token(&["dev"], &["read"]).await;
    let tokens = app.get("/api/v1/auth/tokens?subject=token", Some(ADMIN)).await.json();
    tokens["tokens"][0]["id"].as_str().unwrap().to_owned()
}
