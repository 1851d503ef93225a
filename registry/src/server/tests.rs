//! Router tests with `oneshot`: the whole HTTP surface over `InMemory` (and
//! `LocalFileSystem` where the backend matters), without sockets.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http_body_util::BodyExt;
use object_store::ObjectStore;
use serde_json::{Value, json};
use sha2::Digest;
use tower::ServiceExt;

use super::{Limits, app};
use crate::startup::{ServeOptions, build_state};

const ADMIN: &str = "admin-secret";

const CONFIG: &str = r#"
apiVersion: wharf.dev/v1alpha1
kind: Domain
metadata: {name: acme}
spec:
  storage: {memory: {}}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {name: main}
spec:
  domainRef: {name: acme}
  access: {read: [{kind: Anonymous}]}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {name: private}
spec:
  domainRef: {name: acme}
"#;

struct TestApp {
    router: axum::Router,
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: bytes::Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl TestApp {
    async fn new() -> TestApp {
        Self::with_store(Arc::new(object_store::memory::InMemory::new()), Limits::default()).await
    }

    async fn with_store(store: Arc<dyn ObjectStore>, limits: Limits) -> TestApp {
        Self::with_config(CONFIG, store, limits).await
    }

    async fn with_config(config: &str, store: Arc<dyn ObjectStore>, limits: Limits) -> TestApp {
        Self::with_upstream_options(config, store, limits, Default::default()).await
    }

    async fn with_upstream_options(
        config: &str,
        store: Arc<dyn ObjectStore>,
        limits: Limits,
        upstream: wharf_upstream::UpstreamOptions,
    ) -> TestApp {
        let config = wharf_api::DomainConfig::from_yaml_str("test.yaml", config).unwrap();
        let options = ServeOptions {
            key_refresh: std::time::Duration::from_secs(10),
            downloads_flush: std::time::Duration::from_secs(300),
            collect: Default::default(),
            usage: None,
            upstream,
            listen: "127.0.0.1:0".parse().unwrap(),
            secrets: wharf_storage::secrets::SecretsDir::new("/nonexistent-secrets"),
            admin_token: ADMIN.into(),
            signing_key: Some(b"test-key".to_vec()),
            limits,
            token_review: None,
            audit: crate::audit::AuditOptions { log: crate::audit::AuditLog::Off, ..Default::default() },
        };
        // Shared storage: readers revalidate, as replicas on object storage do.
        TestApp { router: app(build_state(config, wharf_storage::Storage::new(store), &options).await.unwrap()) }
    }

    async fn send(&self, request: Request<Body>) -> Reply {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Reply { status, headers, body }
    }

    async fn get(&self, uri: &str, token: Option<&str>) -> Reply {
        let mut request = Request::get(uri);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        self.send(request.body(Body::empty()).unwrap()).await
    }

    async fn put_json(&self, uri: &str, token: &str, body: &Value) -> Reply {
        let request = Request::put(uri)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap();
        self.send(request).await
    }

    async fn token(&self, repositories: &[&str], permissions: &[&str]) -> String {
        let reply =
            self.mint(json!({"repositories": repositories, "permissions": permissions, "ttlSeconds": 900})).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        reply.json()["token"].as_str().unwrap().to_owned()
    }

    async fn mint(&self, body: Value) -> Reply {
        let request = Request::post("/api/v1/auth/token")
            .header(header::AUTHORIZATION, format!("Bearer {ADMIN}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        self.send(request).await
    }
}

fn tarball(name: &str, version: &str, extra: &[u8]) -> Vec<u8> {
    // The dependencies `publish_body` declares: the packument serves the tarball's.
    let package_json = json!({"name": name, "version": version, "dependencies": {"left-pad": "^1.0.0"}});
    gzip_tar(&[("package/package.json", &package_json.to_string().into_bytes()), ("package/index.js", extra)])
}

fn gzip_tar(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    for (path, data) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, path, *data).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

fn publish_body(name: &str, version: &str, tarball: &[u8]) -> Value {
    let file = wharf_formats::npm::tarball_filename(name, version);
    json!({
        "_id": name,
        "name": name,
        "dist-tags": {"latest": version},
        "versions": {version: {
            "name": name,
            "version": version,
            "dependencies": {"left-pad": "^1.0.0"},
            "readme": "long readme",
            "dist": {"shasum": hex::encode(sha1::Sha1::digest(tarball))}
        }},
        "_attachments": {file: {"content_type": "application/octet-stream", "data": STANDARD.encode(tarball), "length": tarball.len()}}
    })
}

#[tokio::test]
async fn health_ready_metrics() {
    let app = TestApp::new().await;
    assert_eq!(app.get("/healthz", None).await.status, StatusCode::OK);
    assert_eq!(app.get("/readyz", None).await.status, StatusCode::OK);
    app.get("/npm/main/nothing", None).await;
    let metrics = app.get("/metrics", None).await;
    assert_eq!(metrics.status, StatusCode::OK);
    let text = metrics.text();
    assert!(
        text.contains("wharf_http_requests_total{route=\"npm_packument\",method=\"GET\",status=\"404\"} 1"),
        "{text}"
    );
    assert!(text.contains("wharf_http_request_duration_seconds_bucket"), "{text}");
}

#[tokio::test]
async fn tokens_are_minted_only_by_the_admin_within_bounds() {
    let app = TestApp::new().await;
    let anonymous = app
        .send(
            Request::post("/api/v1/auth/token")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{}"))
                .unwrap(),
        )
        .await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert!(anonymous.headers[header::WWW_AUTHENTICATE].to_str().unwrap().starts_with("Basic realm="));
    for (body, expected) in [
        (json!({"repositories": ["main"], "permissions": ["read"], "ttlSeconds": 60}), "between 900 and 43200"),
        (json!({"repositories": ["main"], "permissions": ["read"], "ttlSeconds": 50000}), "between 900 and 43200"),
        (json!({"repositories": ["nope"], "permissions": ["read"]}), "repository nope does not exist"),
        (json!({"repositories": [], "permissions": ["read"]}), "at least one repository"),
        (json!({"repositories": ["main"], "permissions": ["write"]}), "unknown variant"),
    ] {
        let reply = app.mint(body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
        assert!(reply.json()["error"].as_str().unwrap().contains(expected), "{}", reply.text());
    }
    let reader = app.token(&["main"], &["read"]).await;
    let not_admin = app
        .send(
            Request::post("/api/v1/auth/token")
                .header(header::AUTHORIZATION, format!("Bearer {reader}"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(json!({"repositories": ["*"], "permissions": ["admin"]}).to_string()))
                .unwrap(),
        )
        .await;
    assert_eq!(not_admin.status, StatusCode::FORBIDDEN);
    let forged = app.get("/npm/private/x", Some("eyJhbGciOiJIUzI1NiJ9.e30.AAAA")).await;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn npm_publish_read_and_republish() {
    let app = TestApp::new().await;
    let token = app.token(&["main"], &["publish"]).await;
    let bytes = tarball("@acme/tools", "1.0.0", b"one");
    let body = publish_body("@acme/tools", "1.0.0", &bytes);
    assert_eq!(app.put_json("/npm/main/@acme%2ftools", &token, &body).await.status, StatusCode::CREATED);
    // Identical bytes: idempotent.
    assert_eq!(app.put_json("/npm/main/@acme%2ftools", &token, &body).await.status, StatusCode::OK);
    // Different bytes: conflict, and the stored tarball is unchanged.
    let other = tarball("@acme/tools", "1.0.0", b"two");
    let conflict = app.put_json("/npm/main/@acme%2ftools", &token, &publish_body("@acme/tools", "1.0.0", &other)).await;
    assert_eq!(conflict.status, StatusCode::CONFLICT);
    assert!(conflict.json()["error"].as_str().unwrap().contains("cannot publish over"));

    let full = app.get("/npm/main/@acme%2ftools", None).await;
    assert_eq!(full.headers[header::CONTENT_TYPE], "application/json");
    let doc = full.json();
    assert_eq!(doc["dist-tags"]["latest"], "1.0.0");
    assert_eq!(doc["readme"], "long readme");
    assert!(doc["time"]["1.0.0"].is_string());
    let dist = &doc["versions"]["1.0.0"]["dist"];
    assert_eq!(dist["tarball"], "http://localhost/npm/main/@acme/tools/-/tools-1.0.0.tgz");
    let sha512 = sha2::Sha512::digest(&bytes);
    assert_eq!(dist["integrity"], format!("sha512-{}", STANDARD.encode(sha512)));

    let abbreviated = app
        .send(
            Request::get("/npm/main/@acme/tools")
                .header(header::ACCEPT, "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(abbreviated.headers[header::CONTENT_TYPE], "application/vnd.npm.install-v1+json");
    let short = abbreviated.json();
    assert!(short["versions"]["1.0.0"].get("readme").is_none());
    assert_eq!(short["versions"]["1.0.0"]["dependencies"]["left-pad"], "^1.0.0");
    let etag = abbreviated.headers[header::ETAG].to_str().unwrap().to_owned();
    let revalidated = app
        .send(
            Request::get("/npm/main/@acme/tools")
                .header(header::ACCEPT, "application/vnd.npm.install-v1+json")
                .header(header::IF_NONE_MATCH, &etag)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(revalidated.status, StatusCode::NOT_MODIFIED);

    let tgz = app.get("/npm/main/@acme/tools/-/tools-1.0.0.tgz", None).await;
    assert_eq!(tgz.status, StatusCode::OK);
    assert_eq!(&tgz.body[..], &bytes[..]);
    let version = app.get("/npm/main/@acme%2ftools/latest", None).await;
    assert_eq!(version.json()["version"], "1.0.0");
    assert_eq!(app.get("/npm/main/@acme/tools/-/tools-9.9.9.tgz", None).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn npm_bad_input_is_refused_and_changes_nothing() {
    let limits = Limits { max_upload_bytes: 64 * 1024, max_metadata_bytes: 8 * 1024 };
    let app = TestApp::with_store(Arc::new(object_store::memory::InMemory::new()), limits).await;
    let token = app.token(&["main"], &["publish"]).await;
    let good = tarball("demo", "1.0.0", b"good");
    assert_eq!(
        app.put_json("/npm/main/demo", &token, &publish_body("demo", "1.0.0", &good)).await.status,
        StatusCode::CREATED
    );
    let before = app.get("/npm/main/demo", None).await.body;

    let mut not_gzip = publish_body("demo", "1.0.1", b"plain text");
    not_gzip["versions"]["1.0.1"]["dist"] = json!({});
    let mut wrong_name = publish_body("demo", "1.0.2", &tarball("other", "1.0.2", b""));
    wrong_name["versions"]["1.0.2"]["dist"] = json!({});
    let mut bad_shasum = publish_body("demo", "1.0.3", &tarball("demo", "1.0.3", b""));
    bad_shasum["versions"]["1.0.3"]["dist"]["shasum"] = json!("0000");
    let mut bad_base64 = publish_body("demo", "1.0.4", b"x");
    bad_base64["_attachments"]["demo-1.0.4.tgz"]["data"] = json!("!!!not base64!!!");
    let cases = [
        ("/npm/main/demo", not_gzip, StatusCode::BAD_REQUEST, "not a gzip tar archive"),
        ("/npm/main/demo", wrong_name, StatusCode::BAD_REQUEST, "package.json says other@1.0.2"),
        ("/npm/main/demo", bad_shasum, StatusCode::BAD_REQUEST, "declared shasum"),
        ("/npm/main/demo", bad_base64, StatusCode::BAD_REQUEST, "base64"),
        (
            "/npm/main/demo",
            publish_body("demo", "not-semver", &good),
            StatusCode::BAD_REQUEST,
            "not a semantic version",
        ),
        ("/npm/main/Demo", publish_body("Demo", "1.0.0", &good), StatusCode::BAD_REQUEST, "lowercase"),
        ("/npm/main/other", publish_body("demo", "1.0.5", &good), StatusCode::BAD_REQUEST, "does not match the URL"),
        (
            "/npm/main/demo",
            publish_body("demo", "1.0.6", &vec![7u8; 100 * 1024]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "exceeds the upload limit",
        ),
        (
            "/npm/main/demo",
            json!({"name": "demo", "description": "x".repeat(10_000), "versions": {}}),
            StatusCode::PAYLOAD_TOO_LARGE,
            "exceeds 8192 bytes",
        ),
    ];
    for (uri, body, status, message) in cases {
        let reply = app.put_json(uri, &token, &body).await;
        assert_eq!(reply.status, status, "{message}: {}", reply.text());
        assert!(reply.json()["error"].as_str().unwrap().contains(message), "{message}: {}", reply.text());
    }
    let truncated = app
        .send(
            Request::put("/npm/main/demo")
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .body(Body::from(r#"{"name":"demo","versions":{"#))
                .unwrap(),
        )
        .await;
    assert_eq!(truncated.status, StatusCode::BAD_REQUEST);
    assert_eq!(app.get("/npm/main/demo", None).await.body, before, "nothing stored changed");

    for path in [
        "/npm/main/../private/demo",
        "/npm/main/%2e%2e/private",
        "/npm/main/demo%2f..%2f..",
        "/pypi/main/files/a%2fb/1.0/x.whl",
        "/npm/main/demo%00",
    ] {
        let reply = app.get(path, None).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path}: {}", reply.text());
    }
}

#[tokio::test]
async fn access_rules() {
    let app = TestApp::new().await;
    let unauthenticated = app.get("/npm/private/demo", None).await;
    assert_eq!(unauthenticated.status, StatusCode::UNAUTHORIZED);
    assert_eq!(unauthenticated.headers[header::WWW_AUTHENTICATE], "Basic realm=\"wharf/private\"");
    let for_main = app.token(&["main"], &["read", "publish"]).await;
    assert_eq!(app.get("/npm/private/demo", Some(&for_main)).await.status, StatusCode::FORBIDDEN);
    let reader = app.token(&["private"], &["read"]).await;
    assert_eq!(app.get("/npm/private/demo", Some(&reader)).await.status, StatusCode::NOT_FOUND);
    let body = publish_body("demo", "1.0.0", &tarball("demo", "1.0.0", b""));
    assert_eq!(app.put_json("/npm/private/demo", &reader, &body).await.status, StatusCode::FORBIDDEN);
    let basic = STANDARD.encode(format!("__token__:{reader}"));
    let reply = app
        .send(
            Request::get("/pypi/private/simple/")
                .header(header::AUTHORIZATION, format!("Basic {basic}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    // A Repository that does not exist is answered as one the caller may not read.
    let missing = app.get("/npm/nope/demo", None).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(missing.headers[header::WWW_AUTHENTICATE], "Basic realm=\"wharf/nope\"");
    assert_eq!(app.get("/npm/nope/demo", Some(&for_main)).await.status, StatusCode::FORBIDDEN);
    assert_eq!(app.get("/npm/nope/demo", Some(ADMIN)).await.status, StatusCode::NOT_FOUND);
}

/// 50 publishers race for one version with different bytes: exactly one
/// wins and the stored tarball is the winner's, on both backends.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_publishes_have_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let stores: Vec<Arc<dyn ObjectStore>> = vec![
        Arc::new(object_store::memory::InMemory::new()),
        Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap()),
    ];
    for store in stores {
        let app = Arc::new(TestApp::with_store(store, Limits::default()).await);
        let token = app.token(&["main"], &["publish"]).await;
        let attempts = (0..50).map(|i| {
            let app = app.clone();
            let token = token.clone();
            tokio::spawn(async move {
                let bytes = tarball("race", "1.0.0", format!("publisher {i}").as_bytes());
                let reply = app.put_json("/npm/main/race", &token, &publish_body("race", "1.0.0", &bytes)).await;
                (reply.status, bytes)
            })
        });
        let results: Vec<_> = futures::future::join_all(attempts).await.into_iter().map(|r| r.unwrap()).collect();
        let winners: Vec<_> = results.iter().filter(|(status, _)| *status == StatusCode::CREATED).collect();
        assert_eq!(winners.len(), 1, "{:?}", results.iter().map(|r| r.0).collect::<Vec<_>>());
        assert!(results.iter().all(|(s, _)| *s == StatusCode::CREATED || *s == StatusCode::CONFLICT));
        let stored = app.get("/npm/main/race/-/race-1.0.0.tgz", None).await;
        assert_eq!(&stored.body[..], &winners[0].1[..]);
    }
}

fn wheel(project: &str, version: &str, body: &str) -> Vec<u8> {
    let module = project.replace('-', "_");
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default();
    zip.start_file(format!("{module}/__init__.py"), options).unwrap();
    zip.write_all(body.as_bytes()).unwrap();
    zip.start_file(format!("{module}-{version}.dist-info/METADATA"), options).unwrap();
    write!(zip, "Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n").unwrap();
    zip.finish().unwrap().into_inner()
}

fn upload_form(fields: &[(&str, &str)], filename: &str, content: &[u8]) -> (String, Vec<u8>) {
    let boundary = "wharf-test-boundary";
    let mut body = Vec::new();
    for (name, value) in fields {
        write!(body, "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").unwrap();
    }
    write!(
        body,
        "--{boundary}\r\nContent-Disposition: form-data; name=\"content\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    .unwrap();
    body.extend_from_slice(content);
    write!(body, "\r\n--{boundary}--\r\n").unwrap();
    (format!("multipart/form-data; boundary={boundary}"), body)
}

#[tokio::test]
async fn pypi_bad_uploads_are_refused() {
    let limits = Limits { max_upload_bytes: 64 * 1024, max_metadata_bytes: 8 * 1024 };
    let app = TestApp::with_store(Arc::new(object_store::memory::InMemory::new()), limits).await;
    let token = app.token(&["main"], &["publish"]).await;
    let upload = |fields: Vec<(&'static str, String)>, filename: &'static str, content: Vec<u8>| {
        let app = &app;
        let token = token.clone();
        async move {
            let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let (content_type, body) = upload_form(&fields, filename, &content);
            app.send(
                Request::post("/pypi/main/")
                    .header(header::AUTHORIZATION, format!("Bearer {token}"))
                    .header(header::CONTENT_TYPE, content_type)
                    .body(Body::from(body))
                    .unwrap(),
            )
            .await
        }
    };
    let base = |name: &str, version: &str| {
        vec![(":action", "file_upload".to_owned()), ("name", name.to_owned()), ("version", version.to_owned())]
    };
    let good = wheel("demo", "1.0", "x = 1");
    let ok = upload(base("demo", "1.0"), "demo-1.0-py3-none-any.whl", good.clone()).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());

    let mut wrong_digest = base("demo", "1.1");
    wrong_digest.push(("sha256_digest", "00".repeat(32)));
    let mut wrong_action = base("demo", "1.1");
    wrong_action[0].1 = "remove_pkg".into();
    let cases = [
        (base("demo", "1.1"), "demo-1.1-py3-none-any.whl", b"not a zip".to_vec(), "not a zip archive"),
        (
            base("demo", "1.1"),
            "demo-1.1-py3-none-any.whl",
            wheel("other", "1.1", ""),
            "no {name}-{version}.dist-info/METADATA",
        ),
        (base("demo", "1.1"), "demo-1.2-py3-none-any.whl", wheel("demo", "1.2", ""), "does not match"),
        (base("demo", "1.1"), "../demo-1.1-py3-none-any.whl", wheel("demo", "1.1", ""), "plain file name"),
        (base("demo", "1.1"), "demo-1.1.exe", vec![1], "only wheels"),
        (base("demo", "1.1"), "demo-1.1.tar.gz", b"not gzip".to_vec(), "not a gzip tar archive"),
        (base("demo", "x.y"), "demo-1.1-py3-none-any.whl", wheel("demo", "1.1", ""), "not a PEP 440 version"),
        (base("-bad-", "1.1"), "demo-1.1-py3-none-any.whl", wheel("demo", "1.1", ""), "invalid project name"),
        (wrong_digest, "demo-1.1-py3-none-any.whl", wheel("demo", "1.1", ""), "sha256_digest"),
        (wrong_action, "demo-1.1-py3-none-any.whl", wheel("demo", "1.1", ""), "unsupported :action"),
    ];
    for (fields, filename, content, message) in cases {
        let reply = upload(fields, filename, content).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{message}: {}", reply.text());
        assert!(reply.text().contains(message), "{message}: {}", reply.text());
    }
    let big = upload(base("demo", "1.1"), "demo-1.1-py3-none-any.whl", vec![0; 100 * 1024]).await;
    assert_eq!(big.status, StatusCode::PAYLOAD_TOO_LARGE);
    let conflict = upload(base("demo", "1.0"), "demo-1.0-py3-none-any.whl", wheel("demo", "1.0", "x = 2")).await;
    assert_eq!(conflict.status, StatusCode::CONFLICT);
    assert!(conflict.text().contains("File already exists"));

    let page = app.get("/pypi/main/simple/demo/", None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.text().matches("<a href=").count(), 1, "only the good file: {}", page.text());
    let file = app.get("/pypi/main/files/demo/1.0/demo-1.0-py3-none-any.whl", None).await;
    assert_eq!(&file.body[..], &good[..]);
    let ranged = app
        .send(
            Request::get("/pypi/main/files/demo/1.0/demo-1.0-py3-none-any.whl")
                .header(header::RANGE, "bytes=0-3")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(ranged.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&ranged.body[..], &good[..4]);
}

#[tokio::test]
async fn status_changes_through_the_api() {
    let app = TestApp::new().await;
    let token = app.token(&["main"], &["publish"]).await;
    let body = publish_body("demo", "1.0.0", &tarball("demo", "1.0.0", b""));
    app.put_json("/npm/main/demo", &token, &body).await;
    let uri = "/api/v1/repositories/main/packages/npm/demo/versions/1.0.0/status";
    let mismatch = app.put_json(uri, &token, &json!({"status": "Archived", "expectedStatus": "Unlisted"})).await;
    assert_eq!(mismatch.status, StatusCode::CONFLICT);
    let archived = app.put_json(uri, &token, &json!({"status": "Archived", "expectedStatus": "Published"})).await;
    assert_eq!(archived.status, StatusCode::OK, "{}", archived.text());
    assert_eq!(app.get("/npm/main/demo/-/demo-1.0.0.tgz", None).await.status, StatusCode::NOT_FOUND);
    let info = app.get("/api/v1/repositories/main/packages/npm/demo/versions/1.0.0", None).await;
    assert_eq!(info.json()["status"], "Archived");
    let reader = app.token(&["main"], &["read"]).await;
    assert_eq!(app.put_json(uri, &reader, &json!({"status": "Published"})).await.status, StatusCode::FORBIDDEN);
    assert_eq!(app.put_json(uri, &token, &json!({"status": "Gone"})).await.status, StatusCode::BAD_REQUEST);
}

async fn put_generic(app: &TestApp, token: &str, uri: &str, body: Vec<u8>, checksum: Option<String>) -> Reply {
    let mut request = Request::put(uri).header(header::AUTHORIZATION, format!("Bearer {token}"));
    if let Some(checksum) = checksum {
        request = request.header("x-checksum-sha256", checksum);
    }
    app.send(request.body(Body::from(body)).unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn generic_race_and_bad_input() {
    let limits = Limits { max_upload_bytes: 64 * 1024, max_metadata_bytes: 8 * 1024 };
    let app = Arc::new(TestApp::with_store(Arc::new(object_store::memory::InMemory::new()), limits).await);
    let token = app.token(&["main"], &["publish"]).await;
    let attempts = (0..50).map(|i| {
        let (app, token) = (app.clone(), token.clone());
        tokio::spawn(async move {
            let bytes = format!("build {i}").into_bytes();
            let sum = hex::encode(sha2::Sha256::digest(&bytes));
            let reply =
                put_generic(&app, &token, "/generic/main/acme/tool/1.0/tool.bin", bytes.clone(), Some(sum)).await;
            (reply.status, bytes)
        })
    });
    let results: Vec<_> = futures::future::join_all(attempts).await.into_iter().map(|r| r.unwrap()).collect();
    let winners: Vec<_> = results.iter().filter(|(s, _)| *s == StatusCode::CREATED).collect();
    assert_eq!(winners.len(), 1, "{:?}", results.iter().map(|r| r.0).collect::<Vec<_>>());
    assert!(results.iter().all(|(s, _)| *s == StatusCode::CREATED || *s == StatusCode::CONFLICT));
    let stored = app.get("/generic/main/acme/tool/1.0/tool.bin", None).await;
    assert_eq!(&stored.body[..], &winners[0].1[..]);

    let sum = |b: &[u8]| Some(hex::encode(sha2::Sha256::digest(b)));
    for (uri, body, checksum, status) in [
        ("/generic/main/acme/tool/1.0/.hidden", b"x".to_vec(), sum(b"x"), StatusCode::BAD_REQUEST),
        ("/generic/main/ac%20me/tool/1.0/a", b"x".to_vec(), sum(b"x"), StatusCode::BAD_REQUEST),
        ("/generic/main/acme/tool/1.0@x/a", b"x".to_vec(), sum(b"x"), StatusCode::BAD_REQUEST),
        ("/generic/main/acme/tool/2.0/a", b"x".to_vec(), Some("nothex".into()), StatusCode::BAD_REQUEST),
        ("/generic/main/acme/tool/2.0/a", vec![1; 100 * 1024], sum(&[1; 100 * 1024]), StatusCode::PAYLOAD_TOO_LARGE),
        ("/generic/main/acme/tool/2.0/a%2fb", b"x".to_vec(), sum(b"x"), StatusCode::BAD_REQUEST),
    ] {
        let reply = put_generic(&app, &token, uri, body, checksum).await;
        assert_eq!(reply.status, status, "{uri}: {}", reply.text());
    }
    assert_eq!(app.get("/generic/main/acme/tool/2.0", None).await.status, StatusCode::NOT_FOUND, "nothing stored");
    // Finalising through the management API (namespace%2Fpackage).
    let open =
        put_generic(&app, &token, "/generic/main/acme/tool/3.0/a?unfinished=true", b"a".to_vec(), sum(b"a")).await;
    assert_eq!(open.status, StatusCode::CREATED);
    let uri = "/api/v1/repositories/main/packages/generic/acme%2Ftool/versions/3.0/status";
    let reply = app.put_json(uri, &token, &json!({"status": "Published", "expectedStatus": "Unfinished"})).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(app.get("/generic/main/acme/tool/3.0/a", None).await.status, StatusCode::OK);
}

/// A module zip: every file under `{path}@{version}/`.
fn go_zip(path: &str, version: &str, files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data) in files {
        zip.start_file(format!("{path}@{version}/{name}"), zip::write::SimpleFileOptions::default()).unwrap();
        zip.write_all(data).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

fn go_module(path: &str, version: &str, go_mod_extra: &str, code: &str) -> Vec<u8> {
    let go_mod = format!("module {path}\n\ngo 1.21\n{go_mod_extra}");
    go_zip(path, version, &[("go.mod", go_mod.as_bytes()), ("greet.go", code.as_bytes())])
}

impl TestApp {
    async fn put_bytes(&self, uri: &str, token: Option<&str>, body: Vec<u8>) -> Reply {
        let mut request = Request::put(uri);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        self.send(request.body(Body::from(body)).unwrap()).await
    }
}

const GREET: &str = "example.com/Acme/greet";
const GREET_URL: &str = "/go/main/example.com/!acme/greet";

#[tokio::test]
async fn go_publish_read_and_republish() {
    let app = TestApp::new().await;
    let token = app.token(&["main"], &["publish"]).await;
    let v1 = go_module(GREET, "v1.0.0", "", "package greet\n");
    let created = app.put_bytes(&format!("{GREET_URL}/@v/v1.0.0.zip"), Some(&token), v1.clone()).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    let again = app.put_bytes(&format!("{GREET_URL}/@v/v1.0.0.zip"), Some(&token), v1.clone()).await;
    assert_eq!(again.status, StatusCode::OK, "identical bytes are idempotent: {}", again.text());
    let changed = go_module(GREET, "v1.0.0", "", "package greet // changed\n");
    let conflict = app.put_bytes(&format!("{GREET_URL}/@v/v1.0.0.zip"), Some(&token), changed).await;
    assert_eq!(conflict.status, StatusCode::CONFLICT);
    assert!(conflict.text().contains("versions are immutable"), "{}", conflict.text());
    assert_eq!(conflict.headers[header::CONTENT_TYPE], "text/plain; charset=utf-8");

    let list = app.get(&format!("{GREET_URL}/@v/list"), None).await;
    assert_eq!((list.status, list.text().as_str()), (StatusCode::OK, "v1.0.0\n"));
    assert_eq!(list.headers[header::CONTENT_TYPE], "text/plain; charset=utf-8");
    let info = app.get(&format!("{GREET_URL}/@v/v1.0.0.info"), None).await;
    assert_eq!(info.headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(info.json()["Version"], "v1.0.0");
    assert!(info.json()["Time"].as_str().unwrap().ends_with('Z'));
    let go_mod = app.get(&format!("{GREET_URL}/@v/v1.0.0.mod"), None).await;
    assert_eq!(go_mod.text(), format!("module {GREET}\n\ngo 1.21\n"));
    let zip = app.get(&format!("{GREET_URL}/@v/v1.0.0.zip"), None).await;
    assert_eq!(zip.headers[header::CONTENT_TYPE], "application/zip");
    assert_eq!(&zip.body[..], &v1[..], "the stored zip is the first publisher's");
    assert_eq!(app.get(&format!("{GREET_URL}/@latest"), None).await.json()["Version"], "v1.0.0");
    let etag = list.headers[header::ETAG].to_str().unwrap();
    let revalidated = app
        .send(
            Request::get(format!("{GREET_URL}/@v/list"))
                .header(header::IF_NONE_MATCH, etag)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(revalidated.status, StatusCode::NOT_MODIFIED);
    for missing in ["@v/v9.9.9.info", "@v/master.info", "@v/v1.0.0.zip.sig", "@v/v1.0.0"] {
        let reply = app.get(&format!("{GREET_URL}/{missing}"), None).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{missing}: {}", reply.text());
    }
    assert_eq!(app.get("/go/main/example.com/nothing/@v/list", None).await.status, StatusCode::NOT_FOUND);
    // No checksum database here: 404 sends the go command to it directly.
    assert_eq!(app.get("/go/main/sumdb/sum.example.org/supported", None).await.status, StatusCode::NOT_FOUND);

    // Pseudo-versions are served by exact version, never listed; @latest
    // falls back to the newest of them when nothing else is listed.
    let pseudo = "v0.0.0-20240102030405-abcdefabcdef";
    let snapshot = go_module("example.com/snap", pseudo, "", "package snap\n");
    let reply = app.put_bytes(&format!("/go/main/example.com/snap/@v/{pseudo}.zip"), Some(&token), snapshot).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    assert_eq!(app.get("/go/main/example.com/snap/@v/list", None).await.text(), "");
    let latest = app.get("/go/main/example.com/snap/@latest", None).await.json();
    assert_eq!(latest, json!({"Version": pseudo, "Time": "2024-01-02T03:04:05Z"}));

    // A module without go.mod: the go command's synthesized one; a v2+
    // version of it is +incompatible.
    let legacy = go_zip("example.com/legacy", "v2.0.0+incompatible", &[("legacy.go", b"package legacy\n")]);
    let reply = app.put_bytes("/go/main/example.com/legacy/@v/v2.0.0+incompatible.zip", Some(&token), legacy).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let synthesized = app.get("/go/main/example.com/legacy/@v/v2.0.0+incompatible.mod", None).await;
    assert_eq!(synthesized.text(), "module example.com/legacy\n");
    assert_eq!(app.get("/go/main/example.com/legacy/@v/list", None).await.text(), "v2.0.0+incompatible\n");
}

/// Retractions in the newest version's go.mod hide versions from `list`
/// and `@latest`; they stay downloadable, and show as Unlisted.
#[tokio::test]
async fn go_retracted_versions_are_unlisted() {
    let app = TestApp::new().await;
    let token = app.token(&["main"], &["publish"]).await;
    for (version, retract) in [
        ("v1.0.0", ""),
        ("v1.1.0", ""),
        ("v1.2.0", "retract [v1.1.0, v1.2.0] // v1.1.0 breaks callers; v1.2.0 only retracts\n"),
    ] {
        let zip = go_module(GREET, version, retract, "package greet\n");
        let reply = app.put_bytes(&format!("{GREET_URL}/@v/{version}.zip"), Some(&token), zip).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{version}: {}", reply.text());
    }
    assert_eq!(app.get(&format!("{GREET_URL}/@v/list"), None).await.text(), "v1.0.0\n");
    assert_eq!(app.get(&format!("{GREET_URL}/@latest"), None).await.json()["Version"], "v1.0.0");
    for version in ["v1.1.0", "v1.2.0"] {
        assert_eq!(app.get(&format!("{GREET_URL}/@v/{version}.zip"), None).await.status, StatusCode::OK);
        let status = app
            .get(&format!("/api/v1/repositories/main/packages/go/example.com%2FAcme%2Fgreet/versions/{version}"), None)
            .await;
        assert_eq!(status.json()["status"], "Unlisted", "{}", status.text());
    }
    // A newer version that no longer retracts v1.1.0 lists it again.
    let zip = go_module(GREET, "v1.3.0", "retract v1.2.0\n", "package greet\n");
    assert_eq!(
        app.put_bytes(&format!("{GREET_URL}/@v/v1.3.0.zip"), Some(&token), zip).await.status,
        StatusCode::CREATED
    );
    assert_eq!(app.get(&format!("{GREET_URL}/@v/list"), None).await.text(), "v1.0.0\nv1.1.0\nv1.3.0\n");
    // An operator's status wins over the module's own listing.
    let uri = "/api/v1/repositories/main/packages/go/example.com%2FAcme%2Fgreet/versions/v1.3.0/status";
    let archived = app.put_json(uri, &token, &json!({"status": "Archived", "expectedStatus": "Published"})).await;
    assert_eq!(archived.status, StatusCode::OK, "{}", archived.text());
    assert_eq!(app.get(&format!("{GREET_URL}/@v/v1.3.0.zip"), None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(app.get(&format!("{GREET_URL}/@latest"), None).await.json()["Version"], "v1.1.0");
}

#[tokio::test]
async fn go_bad_input_is_refused_and_changes_nothing() {
    let limits = Limits { max_upload_bytes: 64 * 1024, max_metadata_bytes: 8 * 1024 };
    let app = TestApp::with_store(Arc::new(object_store::memory::InMemory::new()), limits).await;
    let token = app.token(&["main"], &["publish"]).await;
    let good = go_module(GREET, "v1.0.0", "", "package greet\n");
    assert_eq!(
        app.put_bytes(&format!("{GREET_URL}/@v/v1.0.0.zip"), Some(&token), good).await.status,
        StatusCode::CREATED
    );
    let before = app.get(&format!("{GREET_URL}/@v/list"), None).await.body;

    let m = |version: &str, extra: &str| go_module(GREET, version, extra, "package greet\n");
    let file = |name: &str, version: &str| go_zip(GREET, version, &[(name, b"package greet\n")]);
    let mut outside = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    outside.start_file("example.com/Acme/other@v1.0.1/a.go", zip::write::SimpleFileOptions::default()).unwrap();
    let outside = outside.finish().unwrap().into_inner();
    let big_go_mod = format!("module {GREET}\n{}", " ".repeat(17 << 20));
    let cases: Vec<(String, Vec<u8>, StatusCode, &str)> = vec![
        // Malformed escapes and paths.
        (
            "/go/main/example.com/Acme/greet/@v/v1.0.1.zip".to_owned(),
            m("v1.0.1", ""),
            StatusCode::BAD_REQUEST,
            "uppercase letters",
        ),
        (
            "/go/main/example.com/!!acme/greet/@v/v1.0.1.zip".to_owned(),
            m("v1.0.1", ""),
            StatusCode::BAD_REQUEST,
            "'!' must be followed",
        ),
        (
            "/go/main/example.com/greet!/@v/v1.0.1.zip".to_owned(),
            m("v1.0.1", ""),
            StatusCode::BAD_REQUEST,
            "'!' must be followed",
        ),
        ("/go/main/example/greet/@v/v1.0.1.zip".to_owned(), m("v1.0.1", ""), StatusCode::BAD_REQUEST, "missing dot"),
        (
            "/go/main/example.com/greet/v1/@v/v1.0.1.zip".to_owned(),
            m("v1.0.1", ""),
            StatusCode::BAD_REQUEST,
            "major version suffix",
        ),
        // Path and module disagree.
        (
            "/go/main/example.com/!acme/other/@v/v1.0.1.zip".to_owned(),
            m("v1.0.1", ""),
            StatusCode::BAD_REQUEST,
            "does not have prefix",
        ),
        (
            format!("{GREET_URL}/@v/v1.0.1.zip"),
            go_zip(GREET, "v1.0.1", &[("go.mod", b"module example.com/acme/greet\n")]),
            StatusCode::BAD_REQUEST,
            "go.mod declares module example.com/acme/greet",
        ),
        // Bad versions.
        (
            format!("{GREET_URL}/@v/v1.0.zip"),
            m("v1.0", ""),
            StatusCode::BAD_REQUEST,
            "not a canonical semantic version",
        ),
        (format!("{GREET_URL}/@v/1.0.1.zip"), m("1.0.1", ""), StatusCode::BAD_REQUEST, "starts with v"),
        (format!("{GREET_URL}/@v/v1.0.1+build.zip"), m("v1.0.1+build", ""), StatusCode::BAD_REQUEST, "+incompatible"),
        (format!("{GREET_URL}/@v/v2.0.0.zip"), m("v2.0.0", ""), StatusCode::BAD_REQUEST, "example.com/Acme/greet/v2"),
        (
            format!("{GREET_URL}/@v/v2.0.0+incompatible.zip"),
            m("v2.0.0+incompatible", ""),
            StatusCode::BAD_REQUEST,
            "without a go.mod file",
        ),
        (
            format!("{GREET_URL}/@v/v1.0.1.zip"),
            m("v1.0.1", "retract v1.0\n"),
            StatusCode::BAD_REQUEST,
            "invalid go.mod",
        ),
        // Bad zips.
        (format!("{GREET_URL}/@v/v1.0.1.zip"), b"not a zip".to_vec(), StatusCode::BAD_REQUEST, "not a zip archive"),
        (format!("{GREET_URL}/@v/v1.0.1.zip"), file("../../escape.go", "v1.0.1"), StatusCode::BAD_REQUEST, "not clean"),
        (format!("{GREET_URL}/@v/v1.0.1.zip"), outside, StatusCode::BAD_REQUEST, "does not have prefix"),
        (format!("{GREET_URL}/@v/v1.0.1.zip"), m("v1.0.0", ""), StatusCode::BAD_REQUEST, "does not have prefix"),
        (
            format!("{GREET_URL}/@v/v1.0.1.zip"),
            file("sub/go.mod", "v1.0.1"),
            StatusCode::BAD_REQUEST,
            "not in module root",
        ),
        (
            format!("{GREET_URL}/@v/v1.0.1.zip"),
            go_zip(GREET, "v1.0.1", &[("a.go", b""), ("A.go", b"")]),
            StatusCode::BAD_REQUEST,
            "case-insensitive file name collision",
        ),
        (
            format!("{GREET_URL}/@v/v1.0.1.zip"),
            go_zip(GREET, "v1.0.1", &[("go.mod", big_go_mod.as_bytes())]),
            StatusCode::BAD_REQUEST,
            "go.mod file too large",
        ),
        (
            format!("{GREET_URL}/@v/v1.0.1.zip"),
            go_zip(
                GREET,
                "v1.0.1",
                &[("blob.bin", &std::iter::repeat_with(rand::random::<u8>).take(100 * 1024).collect::<Vec<_>>())],
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "exceeds the limit",
        ),
    ];
    for (uri, body, status, message) in cases {
        let reply = app.put_bytes(&uri, Some(&token), body).await;
        assert_eq!(reply.status, status, "{uri} {message}: {}", reply.text());
        assert!(reply.text().contains(message), "{uri} {message}: {}", reply.text());
        assert_eq!(reply.headers[header::CONTENT_TYPE], "text/plain; charset=utf-8");
    }
    let anonymous = app.put_bytes(&format!("{GREET_URL}/@v/v1.0.1.zip"), None, m("v1.0.1", "")).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    let wrong_method = app.put_bytes(&format!("{GREET_URL}/@v/v1.0.1.mod"), Some(&token), vec![]).await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    for path in [
        "/go/main/example.com/!Acme/@v/list",
        "/go/main/example.com/%2e%2e/@v/list",
        "/go/main/example.com/x/@v/V1.0.0.info",
    ] {
        assert_eq!(app.get(path, None).await.status, StatusCode::BAD_REQUEST, "{path}");
    }
    assert_eq!(app.get(&format!("{GREET_URL}/@v/list"), None).await.body, before, "nothing stored changed");
    assert_eq!(app.get(&format!("{GREET_URL}/@v/v1.0.1.info"), None).await.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn go_private_reads_need_credentials() {
    let app = TestApp::new().await;
    let token = app.token(&["private"], &["read", "publish"]).await;
    let zip = go_module(GREET, "v1.0.0", "", "package greet\n");
    let uri = "/go/private/example.com/!acme/greet/@v/v1.0.0.zip";
    assert_eq!(app.put_bytes(uri, Some(&token), zip).await.status, StatusCode::CREATED);
    let anonymous = app.get("/go/private/example.com/!acme/greet/@v/list", None).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert_eq!(anonymous.headers[header::WWW_AUTHENTICATE], "Basic realm=\"wharf/private\"");
    // The go command sends the GOPROXY URL's user information as Basic.
    let basic = STANDARD.encode(format!("gopher:{token}"));
    let reply = app
        .send(
            Request::get("/go/private/example.com/!acme/greet/@v/list")
                .header(header::AUTHORIZATION, format!("Basic {basic}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!((reply.status, reply.text().as_str()), (StatusCode::OK, "v1.0.0\n"));
}

/// 50 publishers race for one version with different zips: exactly one
/// wins and the stored zip is the winner's, on both backends.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn go_concurrent_publishes_have_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let stores: Vec<Arc<dyn ObjectStore>> = vec![
        Arc::new(object_store::memory::InMemory::new()),
        Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap()),
    ];
    for store in stores {
        let app = Arc::new(TestApp::with_store(store, Limits::default()).await);
        let token = app.token(&["main"], &["publish"]).await;
        let attempts = (0..50).map(|i| {
            let app = app.clone();
            let token = token.clone();
            tokio::spawn(async move {
                let zip = go_module(GREET, "v1.0.0", "", &format!("package greet // publisher {i}\n"));
                let reply = app.put_bytes(&format!("{GREET_URL}/@v/v1.0.0.zip"), Some(&token), zip.clone()).await;
                (reply.status, zip)
            })
        });
        let results: Vec<_> = futures::future::join_all(attempts).await.into_iter().map(|r| r.unwrap()).collect();
        let winners: Vec<_> = results.iter().filter(|(status, _)| *status == StatusCode::CREATED).collect();
        assert_eq!(winners.len(), 1, "{:?}", results.iter().map(|r| r.0).collect::<Vec<_>>());
        assert!(results.iter().all(|(s, _)| *s == StatusCode::CREATED || *s == StatusCode::CONFLICT));
        let stored = app.get(&format!("{GREET_URL}/@v/v1.0.0.zip"), None).await;
        assert_eq!(&stored.body[..], &winners[0].1[..]);
        assert_eq!(app.get(&format!("{GREET_URL}/@v/list"), None).await.text(), "v1.0.0\n");
    }
}

// ---- Maven ----

impl TestApp {
    async fn maven(&self, method: &str, path: &str, token: Option<&str>, body: Vec<u8>) -> Reply {
        let mut request = Request::builder().method(method).uri(format!("/maven/{path}"));
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        self.send(request.body(Body::from(body)).unwrap()).await
    }
}

fn hex_digest<D: Digest>(bytes: &[u8]) -> String {
    hex::encode(D::digest(bytes))
}

#[tokio::test]
async fn maven_release_deploy_read_and_checksums() {
    let app = TestApp::new().await;
    let publisher = app.token(&["main"], &["publish"]).await;
    let token = Some(publisher.as_str());
    let jar = b"jar bytes".to_vec();
    let pom = b"<project><artifactId>lib</artifactId></project>".to_vec();
    let dir = "main/com/acme/lib/1.0";

    // The jar alone leaves the version Unfinished: not downloadable, not listed.
    assert_eq!(app.maven("PUT", &format!("{dir}/lib-1.0.jar"), token, jar.clone()).await.status, StatusCode::CREATED);
    assert_eq!(app.maven("GET", &format!("{dir}/lib-1.0.jar"), None, vec![]).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        app.maven("GET", "main/com/acme/lib/maven-metadata.xml", None, vec![]).await.status,
        StatusCode::NOT_FOUND
    );
    let sha1 = hex_digest::<sha1::Sha1>(&jar);
    let sidecar =
        app.maven("PUT", &format!("{dir}/lib-1.0.jar.sha1"), token, format!("{sha1}  lib-1.0.jar\n").into()).await;
    assert_eq!(sidecar.status, StatusCode::OK, "{}", sidecar.text());
    let wrong = app.maven("PUT", &format!("{dir}/lib-1.0.jar.md5"), token, "0".repeat(32).into()).await;
    assert_eq!(wrong.status, StatusCode::BAD_REQUEST);
    assert!(wrong.text().contains("checksum mismatch"), "{}", wrong.text());

    // So does the POM; the metadata upload that ends a deploy publishes
    // the versions it names.
    assert_eq!(app.maven("PUT", &format!("{dir}/lib-1.0.pom"), token, pom.clone()).await.status, StatusCode::CREATED);
    assert_eq!(app.maven("GET", &format!("{dir}/lib-1.0.pom"), None, vec![]).await.status, StatusCode::NOT_FOUND);
    let merged = "<metadata><versioning><versions><version>1.0</version></versions></versioning></metadata>";
    let done = app.maven("PUT", "main/com/acme/lib/maven-metadata.xml", token, merged.into()).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text());
    let got = app.maven("GET", &format!("{dir}/lib-1.0.jar"), None, vec![]).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(&got.body[..], &jar[..]);
    assert_eq!(got.headers[header::CONTENT_TYPE], "application/java-archive");
    assert_eq!(got.headers["x-checksum-sha1"], sha1.as_str());
    assert_eq!(got.headers["x-checksum-md5"], hex_digest::<md5::Md5>(&jar).as_str());
    assert!(got.headers.contains_key(header::LAST_MODIFIED));
    let head = app.maven("HEAD", &format!("{dir}/lib-1.0.jar"), None, vec![]).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.headers[header::CONTENT_LENGTH], jar.len().to_string().as_str());
    assert!(head.body.is_empty());
    for (extension, expected) in [
        ("md5", hex_digest::<md5::Md5>(&jar)),
        ("sha1", sha1.clone()),
        ("sha256", hex_digest::<sha2::Sha256>(&jar)),
        ("sha512", hex_digest::<sha2::Sha512>(&jar)),
    ] {
        let reply = app.maven("GET", &format!("{dir}/lib-1.0.jar.{extension}"), None, vec![]).await;
        assert_eq!(reply.status, StatusCode::OK, "{extension}");
        assert_eq!(reply.text(), expected, "{extension}");
    }

    // Artifact-level metadata comes from what is stored; its sidecars and
    // headers are computed from the bytes served.
    let metadata = app.maven("GET", "main/com/acme/lib/maven-metadata.xml", None, vec![]).await;
    assert_eq!(metadata.status, StatusCode::OK);
    assert_eq!(metadata.headers[header::CONTENT_TYPE], "application/xml");
    let xml = metadata.text();
    assert!(xml.contains("<release>1.0</release>") && xml.contains("<version>1.0</version>"), "{xml}");
    assert_eq!(metadata.headers["x-checksum-sha1"], hex_digest::<sha1::Sha1>(&metadata.body).as_str());
    for (extension, expected) in [
        ("sha1", hex_digest::<sha1::Sha1>(&metadata.body)),
        ("md5", hex_digest::<md5::Md5>(&metadata.body)),
        ("sha256", hex_digest::<sha2::Sha256>(&metadata.body)),
        ("sha512", hex_digest::<sha2::Sha512>(&metadata.body)),
    ] {
        let reply = app.maven("GET", &format!("main/com/acme/lib/maven-metadata.xml.{extension}"), None, vec![]).await;
        assert_eq!(reply.text(), expected, "{extension}");
    }
    let head = app.maven("HEAD", "main/com/acme/lib/maven-metadata.xml", None, vec![]).await;
    assert_eq!((head.status, head.body.len()), (StatusCode::OK, 0));
    // A client's own merge of the metadata is accepted and ignored.
    let theirs = "<metadata><versioning><versions><version>9.9</version></versions></versioning></metadata>";
    for (file, body) in [
        ("maven-metadata.xml", theirs.to_owned()),
        ("maven-metadata.xml.sha1", hex_digest::<sha1::Sha1>(theirs.as_bytes())),
        ("maven-metadata.xml.md5", hex_digest::<md5::Md5>(theirs.as_bytes())),
    ] {
        let reply = app.maven("PUT", &format!("main/com/acme/lib/{file}"), token, body.into()).await;
        assert_eq!(reply.status, StatusCode::OK, "{file}");
    }
    assert_eq!(app.maven("GET", "main/com/acme/lib/maven-metadata.xml", None, vec![]).await.body, metadata.body);

    // Releases are immutable: identical bytes are a no-op, others a 409.
    assert_eq!(app.maven("PUT", &format!("{dir}/lib-1.0.jar"), token, jar.clone()).await.status, StatusCode::OK);
    let conflict = app.maven("PUT", &format!("{dir}/lib-1.0.jar"), token, b"other bytes".to_vec()).await;
    assert_eq!(conflict.status, StatusCode::CONFLICT);
    assert!(conflict.text().contains("File already exists"), "{}", conflict.text());
    assert_eq!(&app.maven("GET", &format!("{dir}/lib-1.0.jar"), None, vec![]).await.body[..], &jar[..]);

    // The status API names the package groupId:artifactId; an Unlisted
    // release leaves the metadata but stays downloadable.
    let version = app.get("/api/v1/repositories/main/packages/maven/com.acme:lib/versions/1.0", None).await;
    assert_eq!(version.json()["status"], "Published", "{}", version.text());
    let uri = "/api/v1/repositories/main/packages/maven/com.acme:lib/versions/1.0/status";
    assert_eq!(app.put_json(uri, &publisher, &json!({"status": "Unlisted"})).await.status, StatusCode::OK);
    assert_eq!(
        app.maven("GET", "main/com/acme/lib/maven-metadata.xml", None, vec![]).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(app.maven("GET", &format!("{dir}/lib-1.0.jar"), None, vec![]).await.status, StatusCode::OK);
    let bad_name = app
        .put_json(
            "/api/v1/repositories/main/packages/maven/com.acme/versions/1.0/status",
            &publisher,
            &json!({"status": "Published"}),
        )
        .await;
    assert_eq!(bad_name.status, StatusCode::BAD_REQUEST);
    assert!(bad_name.json()["error"].as_str().unwrap().contains("groupId:artifactId"));
}

#[tokio::test]
async fn maven_snapshot_builds_supersede_each_other() {
    let app = TestApp::new().await;
    let token = app.token(&["main"], &["publish"]).await;
    let token = Some(token.as_str());
    let dir = "main/com/acme/lib/1.1-SNAPSHOT";
    let deploy = |stamp: &'static str, files: &'static [&'static str]| {
        let app = &app;
        async move {
            for suffix in files {
                let path = format!("{dir}/lib-1.1-{stamp}{suffix}");
                let reply = app.maven("PUT", &path, token, format!("{stamp}{suffix}").into_bytes()).await;
                assert_eq!(reply.status, StatusCode::CREATED, "{path}: {}", reply.text());
            }
            let (timestamp, build) = stamp.split_once('-').unwrap();
            let merged = format!(
                "<metadata><versioning><snapshot><timestamp>{timestamp}</timestamp><buildNumber>{build}</buildNumber></snapshot>\
                 <snapshotVersions><snapshotVersion><extension>jar</extension><value>1.1-{stamp}</value></snapshotVersion>\
                 </snapshotVersions></versioning></metadata>"
            );
            let reply = app.maven("PUT", &format!("{dir}/maven-metadata.xml"), token, merged.into_bytes()).await;
            assert_eq!(reply.status, StatusCode::OK);
        }
    };
    deploy("20261126.120000-1", &[".jar", ".pom"]).await;
    deploy("20261126.130000-2", &[".jar", "-sources.jar", ".pom"]).await;

    let metadata = app.maven("GET", &format!("{dir}/maven-metadata.xml"), None, vec![]).await;
    assert_eq!(metadata.status, StatusCode::OK);
    let xml = metadata.text();
    assert!(xml.contains("<timestamp>20261126.130000</timestamp>\n      <buildNumber>2</buildNumber>"), "{xml}");
    assert_eq!(xml.matches("<value>1.1-20261126.130000-2</value>").count(), 3, "{xml}");
    assert!(xml.contains("<classifier>sources</classifier>"), "{xml}");
    assert!(!xml.contains("120000-1"), "{xml}");
    let artifact = app.maven("GET", "main/com/acme/lib/maven-metadata.xml", None, vec![]).await.text();
    assert!(artifact.contains("<latest>1.1-SNAPSHOT</latest>") && !artifact.contains("<release>"), "{artifact}");

    // The unversioned name is the newest build; older builds stay
    // downloadable by their exact name, Unlisted.
    let latest = app.maven("GET", &format!("{dir}/lib-1.1-SNAPSHOT.jar"), None, vec![]).await;
    assert_eq!(latest.text(), "20261126.130000-2.jar");
    let old = app.maven("GET", &format!("{dir}/lib-1.1-20261126.120000-1.jar"), None, vec![]).await;
    assert_eq!(old.text(), "20261126.120000-1.jar");
    let status = |version: &'static str| {
        let app = &app;
        async move {
            let uri = format!("/api/v1/repositories/main/packages/maven/com.acme:lib/versions/{version}");
            app.get(&uri, None).await.json()["status"].as_str().unwrap().to_owned()
        }
    };
    assert_eq!(status("1.1-20261126.120000-1").await, "Unlisted");
    assert_eq!(status("1.1-20261126.130000-2").await, "Published");

    // A build older than the newest, finished late, does not take over.
    deploy("20261126.110000-3", &[".jar", ".pom"]).await;
    assert_eq!(status("1.1-20261126.110000-3").await, "Unlisted");
    let again = app.maven("GET", &format!("{dir}/maven-metadata.xml"), None, vec![]).await;
    assert_eq!(again.body, metadata.body);

    let unversioned = app.maven("PUT", &format!("{dir}/lib-1.1-SNAPSHOT.jar"), token, b"x".to_vec()).await;
    assert_eq!(unversioned.status, StatusCode::BAD_REQUEST);
    assert!(unversioned.text().contains("has no timestamp"), "{}", unversioned.text());
}

#[tokio::test]
async fn maven_bad_input_is_refused_and_changes_nothing() {
    let limits = Limits { max_upload_bytes: 64 * 1024, max_metadata_bytes: 8 * 1024 };
    let app = TestApp::with_store(Arc::new(object_store::memory::InMemory::new()), limits).await;
    let publisher = app.token(&["main"], &["publish"]).await;
    let token = Some(publisher.as_str());
    let jar = b"good jar".to_vec();
    app.maven("PUT", "main/com/acme/lib/1.0/lib-1.0.jar", token, jar.clone()).await;
    app.maven("PUT", "main/com/acme/lib/1.0/lib-1.0.pom", token, b"<project/>".to_vec()).await;
    let merged = b"<metadata><versioning><versions><version>1.0</version></versions></versioning></metadata>";
    app.maven("PUT", "main/com/acme/lib/maven-metadata.xml", token, merged.to_vec()).await;
    let before = app.maven("GET", "main/com/acme/lib/maven-metadata.xml", None, vec![]).await.body;

    let sha1 = hex_digest::<sha1::Sha1>(&jar);
    let cases: Vec<(&str, &str, Vec<u8>, StatusCode, &str)> = vec![
        ("PUT", "com/acme/lib/1.1/other-1.1.jar", vec![1], StatusCode::BAD_REQUEST, "must start with lib-"),
        ("PUT", "com/acme/lib/1.1/lib-1.2.jar", vec![1], StatusCode::BAD_REQUEST, "must name version 1.1"),
        ("PUT", "com/acme/lib/1.1/lib-1.1-bad!.jar", vec![1], StatusCode::BAD_REQUEST, "classifier"),
        ("PUT", "com/acme/lib/1.1/lib-1.1", vec![1], StatusCode::BAD_REQUEST, "[-classifier].extension"),
        ("PUT", "com/ac%20me/lib/1.1/lib-1.1.jar", vec![1], StatusCode::BAD_REQUEST, "invalid groupId"),
        ("PUT", "com/acme/li$b/1.1/li$b-1.1.jar", vec![1], StatusCode::BAD_REQUEST, "invalid artifactId"),
        ("PUT", "com/acme/lib/1.1!/lib-1.1!.jar", vec![1], StatusCode::BAD_REQUEST, "invalid version"),
        ("PUT", "com/acme/lib/1.1/", vec![1], StatusCode::BAD_REQUEST, "ends in /"),
        ("PUT", "lib/1.1/lib-1.1.jar", vec![1], StatusCode::BAD_REQUEST, "sits under"),
        (
            "PUT",
            "com/acme/lib/1.0/lib-1.0.jar.sha1",
            "0".repeat(40).into(),
            StatusCode::BAD_REQUEST,
            "checksum mismatch",
        ),
        ("PUT", "com/acme/lib/1.0/lib-1.0.jar.sha1", b"not hex".to_vec(), StatusCode::BAD_REQUEST, "not a hex SHA1"),
        ("PUT", "com/acme/lib/1.0/lib-1.0.jar.sha1.md5", vec![1], StatusCode::BAD_REQUEST, "checksums of checksum"),
        ("PUT", "com/acme/lib/2.0/lib-2.0.jar.sha1", sha1.into(), StatusCode::BAD_REQUEST, "has not been uploaded"),
        ("PUT", "com/acme/lib/1.1/lib-1.1.jar", vec![0; 100 * 1024], StatusCode::PAYLOAD_TOO_LARGE, "exceeds"),
        ("PUT", "com/acme/lib/maven-metadata.xml", vec![b' '; 10 * 1024], StatusCode::PAYLOAD_TOO_LARGE, "exceeds"),
        (
            "PUT",
            "com/acme/lib/maven-metadata.xml",
            b"<html>oops</html>".to_vec(),
            StatusCode::BAD_REQUEST,
            "<metadata>",
        ),
        ("PUT", "com/acme/lib/maven-metadata.xml.sha1", b"oops".to_vec(), StatusCode::BAD_REQUEST, "not a hex SHA1"),
        ("PUT", "com/acme/lib/1.0/lib-1.0.jar.md5", vec![b' '; 2048], StatusCode::PAYLOAD_TOO_LARGE, "exceeds"),
        ("DELETE", "com/acme/lib/1.0/lib-1.0.jar", vec![], StatusCode::METHOD_NOT_ALLOWED, "not supported"),
    ];
    for (method, path, body, status, message) in cases {
        let reply = app.maven(method, &format!("main/{path}"), token, body).await;
        assert_eq!(reply.status, status, "{method} {path}: {}", reply.text());
        assert!(reply.text().contains(message), "{method} {path}: {}", reply.text());
    }
    // A declared length over the limit is refused before the body is read.
    let declared = app
        .send(
            Request::put("/maven/main/com/acme/lib/1.1/lib-1.1.jar")
                .header(header::AUTHORIZATION, format!("Bearer {publisher}"))
                .header(header::CONTENT_LENGTH, (1u64 << 30).to_string())
                .body(Body::from(vec![0u8; 16]))
                .unwrap(),
        )
        .await;
    assert_eq!(declared.status, StatusCode::PAYLOAD_TOO_LARGE);
    // Traversal never reaches the handler.
    for path in [
        "main/com/acme/%2e%2e/%2e%2e/private/x.jar",
        "main/com/acme/lib/1.0/..%2flib-1.0.jar",
        "main/com/acme/lib/1.0/lib-1.0.jar%00",
        "main/com/acme/lib/1.0/lib%5c1.0.jar",
    ] {
        let reply = app.maven("PUT", path, token, vec![1]).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path}: {}", reply.text());
    }
    // Publishing needs a publish token; anonymous clients are challenged.
    let anonymous = app.maven("PUT", "main/com/acme/lib/1.1/lib-1.1.jar", None, vec![1]).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert!(anonymous.headers[header::WWW_AUTHENTICATE].to_str().unwrap().starts_with("Basic realm="));
    let reader = app.token(&["main"], &["read"]).await;
    let forbidden = app.maven("PUT", "main/com/acme/lib/1.1/lib-1.1.jar", Some(&reader), vec![1]).await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN);

    assert_eq!(app.maven("GET", "main/com/acme/lib/maven-metadata.xml", None, vec![]).await.body, before);
    assert_eq!(&app.maven("GET", "main/com/acme/lib/1.0/lib-1.0.jar", None, vec![]).await.body[..], &jar[..]);
    let absent = app.get("/api/v1/repositories/main/packages/maven/com.acme:lib/versions/1.1", None).await;
    assert_eq!(absent.status, StatusCode::NOT_FOUND, "no refused upload created version 1.1");
}

#[tokio::test]
async fn maven_private_reads_are_challenged() {
    let app = TestApp::new().await;
    let path = "private/com/acme/lib/maven-metadata.xml";
    let anonymous = app.maven("GET", path, None, vec![]).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert_eq!(anonymous.headers[header::WWW_AUTHENTICATE], "Basic realm=\"wharf/private\"");
    let head = app.maven("HEAD", "private/com/acme/lib/1.0/lib-1.0.jar", None, vec![]).await;
    assert_eq!(head.status, StatusCode::UNAUTHORIZED);
    let reader = app.token(&["private"], &["read"]).await;
    let basic = STANDARD.encode(format!("ci:{reader}"));
    let reply = app
        .send(
            Request::get(format!("/maven/{path}"))
                .header(header::AUTHORIZATION, format!("Basic {basic}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "authenticated: nothing there yet");
}

/// 50 deploys race for one release file with different bytes: exactly one
/// wins, the rest get 409, and the stored file is the winner's, on both
/// backends.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn maven_concurrent_deploys_of_one_release_file_have_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let stores: Vec<Arc<dyn ObjectStore>> = vec![
        Arc::new(object_store::memory::InMemory::new()),
        Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap()),
    ];
    for store in stores {
        let app = Arc::new(TestApp::with_store(store, Limits::default()).await);
        let token = app.token(&["main"], &["publish"]).await;
        let attempts = (0..50).map(|i| {
            let app = app.clone();
            let token = token.clone();
            tokio::spawn(async move {
                let bytes = format!("jar of deployer {i}").into_bytes();
                let reply = app.maven("PUT", "main/com/acme/race/1.0/race-1.0.jar", Some(&token), bytes.clone()).await;
                (reply.status, bytes)
            })
        });
        let results: Vec<_> = futures::future::join_all(attempts).await.into_iter().map(|r| r.unwrap()).collect();
        let winners: Vec<_> = results.iter().filter(|(status, _)| *status == StatusCode::CREATED).collect();
        assert_eq!(winners.len(), 1, "{:?}", results.iter().map(|r| r.0).collect::<Vec<_>>());
        assert!(results.iter().all(|(s, _)| *s == StatusCode::CREATED || *s == StatusCode::CONFLICT));
        let pom = app.maven("PUT", "main/com/acme/race/1.0/race-1.0.pom", Some(&token), b"<project/>".to_vec()).await;
        assert_eq!(pom.status, StatusCode::CREATED);
        let merged = b"<metadata><versioning><versions><version>1.0</version></versions></versioning></metadata>";
        app.maven("PUT", "main/com/acme/race/maven-metadata.xml", Some(&token), merged.to_vec()).await;
        let stored = app.maven("GET", "main/com/acme/race/1.0/race-1.0.jar", None, vec![]).await;
        assert_eq!(&stored.body[..], &winners[0].1[..]);
    }
}

mod cargo;
mod disclosure;
mod inventory;
mod limits;
mod openapi;
mod ui;
mod uploads;
mod upstream;

/// npm manifest confusion: the document claims `left-pad` and no scripts,
/// the tarball's package.json depends on `evil-dep` and runs a postinstall.
/// The packument serves what the tarball says.
#[tokio::test]
async fn npm_packuments_serve_what_the_tarball_says() {
    let app = TestApp::new().await;
    let token = app.token(&["main"], &["publish"]).await;
    let package_json = json!({
        "name": "confused",
        "version": "1.0.0",
        "dependencies": {"evil-dep": "^1.0.0"},
        "scripts": {"postinstall": "node steal.js", "test": "true"},
        "bin": "cli.js",
    });
    let tarball =
        gzip_tar(&[("package/package.json", &package_json.to_string().into_bytes()), ("package/cli.js", b"")]);
    // publish_body declares {"left-pad": "^1.0.0"} and nothing else.
    let body = publish_body("confused", "1.0.0", &tarball);
    assert_eq!(app.put_json("/npm/main/confused", &token, &body).await.status, StatusCode::CREATED);
    for accept in ["application/json", "application/vnd.npm.install-v1+json"] {
        let request = Request::get("/npm/main/confused").header(header::ACCEPT, accept).body(Body::empty()).unwrap();
        let packument = app.send(request).await.json();
        let version = &packument["versions"]["1.0.0"];
        assert_eq!(version["dependencies"], json!({"evil-dep": "^1.0.0"}), "{accept}");
        assert_eq!(version["hasInstallScript"], true, "{accept}");
        assert_eq!(version["bin"], json!({"confused": "cli.js"}), "{accept}");
    }
    let full = app.get("/npm/main/confused/1.0.0", None).await.json();
    assert_eq!(full["scripts"]["postinstall"], "node steal.js");
}
