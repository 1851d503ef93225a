//! Router tests for the Cargo endpoints: publish through the index and
//! downloads, yank, owners, search, credentials, bad input and the race.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use object_store::ObjectStore;
use serde_json::{Value, json};
use sha2::Digest;

use super::{Limits, Reply, TestApp};
use wharf_formats::cargo::archive::{build_crate, manifest};
use wharf_formats::cargo::framing::encode;

fn crate_file(name: &str, version: &str, source: &str) -> Vec<u8> {
    let folder = format!("{name}-{version}");
    build_crate(&[
        (&format!("{folder}/Cargo.toml"), manifest(name, version).as_bytes()),
        (&format!("{folder}/src/lib.rs"), source.as_bytes()),
    ])
}

fn metadata(name: &str, version: &str) -> Value {
    json!({
        "name": name,
        "vers": version,
        "deps": [{"name": "helper", "version_req": "^0.2", "features": [], "optional": false,
                  "default_features": true, "target": null, "kind": "normal", "registry": null}],
        "features": {"default": ["std"], "std": []},
        "description": "A demo crate",
        "authors": [],
        "links": null
    })
}

fn framed(name: &str, version: &str, source: &str) -> Vec<u8> {
    encode(metadata(name, version).to_string().as_bytes(), &crate_file(name, version, source))
}

impl TestApp {
    /// A request carrying cargo's raw `Authorization: <token>`.
    async fn cargo(&self, method: &str, uri: &str, token: Option<&str>, body: Vec<u8>) -> Reply {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, token);
        }
        self.send(request.body(Body::from(body)).unwrap()).await
    }

    async fn cargo_publish(&self, repo: &str, token: &str, body: Vec<u8>) -> Reply {
        self.cargo("PUT", &format!("/cargo/{repo}/api/v1/crates/new"), Some(token), body).await
    }
}

fn index_lines(reply: &Reply) -> Vec<Value> {
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.text().lines().map(|line| serde_json::from_str(line).unwrap()).collect()
}

fn detail(reply: &Reply) -> String {
    reply.json()["errors"][0]["detail"].as_str().unwrap_or_else(|| panic!("not a cargo error: {}", reply.text())).into()
}

#[tokio::test]
async fn cargo_publish_index_download_yank_owners_search() {
    let app = TestApp::new().await;
    let token = app.token(&["main"], &["publish"]).await;
    let config = app.get("/cargo/main/index/config.json", None).await;
    assert_eq!(
        config.json(),
        json!({"dl": "http://localhost/cargo/main/api/v1/crates", "api": "http://localhost/cargo/main"})
    );

    let bytes = crate_file("Demo_lib", "1.0.0", "pub fn one() {}");
    let body = encode(metadata("Demo_lib", "1.0.0").to_string().as_bytes(), &bytes);
    let published = app.cargo_publish("main", &token, body.clone()).await;
    assert_eq!(published.status, StatusCode::OK, "{}", published.text());
    assert_eq!(published.json()["warnings"]["other"], json!([]));
    let again = app.cargo_publish("main", &token, body).await;
    assert_eq!(again.status, StatusCode::OK, "identical bytes are idempotent: {}", again.text());
    assert!(again.json()["warnings"]["other"][0].as_str().unwrap().contains("nothing changed"));

    let index = app.get("/cargo/main/index/de/mo/demo_lib", None).await;
    let lines = index_lines(&index);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["name"], "Demo_lib");
    assert_eq!(lines[0]["vers"], "1.0.0");
    assert_eq!(lines[0]["cksum"], hex::encode(sha2::Sha256::digest(&bytes)));
    assert_eq!(lines[0]["yanked"], false);
    assert_eq!(lines[0]["deps"][0]["req"], "^0.2");
    assert_eq!(lines[0]["features"]["default"], json!(["std"]));
    // The other spelling's path has no file: cargo matches names exactly.
    assert_eq!(app.get("/cargo/main/index/de/mo/demo-lib", None).await.status, StatusCode::NOT_FOUND);
    let etag = index.headers[header::ETAG].to_str().unwrap().to_owned();
    let revalidated = app
        .send(
            Request::get("/cargo/main/index/de/mo/demo_lib")
                .header(header::IF_NONE_MATCH, &etag)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(revalidated.status, StatusCode::NOT_MODIFIED);

    let download = app.get("/cargo/main/api/v1/crates/Demo_lib/1.0.0/download", None).await;
    assert_eq!(download.status, StatusCode::OK);
    assert_eq!(&download.body[..], &bytes[..]);

    let yank = app.cargo("DELETE", "/cargo/main/api/v1/crates/Demo_lib/1.0.0/yank", Some(&token), vec![]).await;
    assert_eq!(yank.json(), json!({"ok": true}));
    let yanked = app.get("/cargo/main/index/de/mo/demo_lib", None).await;
    assert_eq!(index_lines(&yanked)[0]["yanked"], true);
    assert_ne!(yanked.headers[header::ETAG], index.headers[header::ETAG], "a yank changes the ETag");
    let again = app.cargo("DELETE", "/cargo/main/api/v1/crates/Demo_lib/1.0.0/yank", Some(&token), vec![]).await;
    assert_eq!(again.status, StatusCode::OK, "yanking twice is harmless");
    assert_eq!(
        app.get("/cargo/main/api/v1/crates/Demo_lib/1.0.0/download", None).await.status,
        StatusCode::OK,
        "yanked crates stay downloadable for existing lockfiles"
    );
    let search = app.get("/cargo/main/api/v1/crates?q=demo", None).await.json();
    assert_eq!(search["crates"][0]["max_version"], "0.0.0", "no unyanked version: {search}");
    let unyank = app.cargo("PUT", "/cargo/main/api/v1/crates/demo-lib/1.0.0/unyank", Some(&token), vec![]).await;
    assert_eq!(unyank.status, StatusCode::OK, "{}", unyank.text());
    assert_eq!(index_lines(&app.get("/cargo/main/index/de/mo/demo_lib", None).await)[0]["yanked"], false);

    // An archived version leaves the index and cannot be unyanked back.
    let archive = app
        .put_json(
            "/api/v1/repositories/main/packages/cargo/demo_lib/versions/1.0.0/status",
            &token,
            &json!({"status": "Archived"}),
        )
        .await;
    assert_eq!(archive.status, StatusCode::OK, "{}", archive.text());
    assert_eq!(app.get("/cargo/main/index/de/mo/demo_lib", None).await.status, StatusCode::NOT_FOUND);
    let unyank = app.cargo("PUT", "/cargo/main/api/v1/crates/demo_lib/1.0.0/unyank", Some(&token), vec![]).await;
    assert_eq!(unyank.status, StatusCode::CONFLICT);
    assert!(detail(&unyank).contains("is Archived; only a Unlisted version can be unyanked"), "{}", unyank.text());
    app.put_json(
        "/api/v1/repositories/main/packages/cargo/demo_lib/versions/1.0.0/status",
        &token,
        &json!({"status": "Published"}),
    )
    .await;

    let owners = app.get("/cargo/main/api/v1/crates/demo_lib/owners", None).await;
    assert_eq!(owners.json(), json!({"users": [{"id": 1, "login": "token", "name": "token"}]}));
    let add = app.cargo("PUT", "/cargo/main/api/v1/crates/demo_lib/owners", Some(&token), vec![]).await;
    assert_eq!(add.status, StatusCode::BAD_REQUEST);
    assert!(detail(&add).contains("access.publish"));

    let other = framed("demo-tools", "0.3.0", "");
    assert_eq!(app.cargo_publish("main", &token, other).await.status, StatusCode::OK);
    let search = app.get("/cargo/main/api/v1/crates?q=DEMO_&per_page=1", None).await.json();
    assert_eq!(search["meta"]["total"], 2, "{search}");
    assert_eq!(search["crates"], json!([{"name": "Demo_lib", "max_version": "1.0.0", "description": "A demo crate"}]));
    let exact = app.get("/cargo/main/api/v1/crates?q=demo-tools", None).await.json();
    assert_eq!(exact["crates"][0]["name"], "demo-tools");
    let bad_page = app.get("/cargo/main/api/v1/crates?q=x&per_page=1000", None).await;
    assert_eq!(bad_page.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn cargo_private_repositories_ask_for_the_token() {
    let app = TestApp::new().await;
    let anonymous = app.get("/cargo/private/index/config.json", None).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert_eq!(anonymous.headers[header::WWW_AUTHENTICATE], "Basic realm=\"wharf/private\"");
    assert!(detail(&anonymous).contains("authentication required"));
    let reader = app.token(&["private"], &["read"]).await;
    let config = app.cargo("GET", "/cargo/private/index/config.json", Some(&reader), vec![]).await;
    assert_eq!(config.json()["auth-required"], true);
    assert_eq!(app.get("/cargo/private/index/de/mo/demo", None).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.cargo("GET", "/cargo/private/index/de/mo/demo", Some(&reader), vec![]).await.status,
        StatusCode::NOT_FOUND
    );
    let refused = app.cargo_publish("private", &reader, framed("demo", "1.0.0", "")).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let yank = app.cargo("DELETE", "/cargo/private/api/v1/crates/demo/1.0.0/yank", None, vec![]).await;
    assert_eq!(yank.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn cargo_bad_input_is_refused_and_changes_nothing() {
    let limits = Limits { max_upload_bytes: 64 * 1024, max_metadata_bytes: 8 * 1024 };
    let app = TestApp::with_store(Arc::new(object_store::memory::InMemory::new()), limits).await;
    let token = app.token(&["main"], &["publish"]).await;
    assert_eq!(app.cargo_publish("main", &token, framed("demo", "1.0.0", "")).await.status, StatusCode::OK);
    let before = app.get("/cargo/main/index/3/d/demo", None).await.body;

    let good_crate = crate_file("demo", "1.0.1", "");
    let with_metadata = |meta: Value| encode(meta.to_string().as_bytes(), &good_crate);
    let mut truncated_crate = framed("demo", "1.0.1", "");
    truncated_crate.truncate(truncated_crate.len() - 5);
    let mut trailing = framed("demo", "1.0.1", "");
    trailing.extend_from_slice(b"extra");
    let metadata_beyond_body = [500u32.to_le_bytes().to_vec(), b"{}".to_vec()].concat();
    let cases: Vec<(Vec<u8>, StatusCode, &str)> = vec![
        (with_metadata(metadata("9demo", "1.0.1")), StatusCode::BAD_REQUEST, "must start with an ASCII letter"),
        (with_metadata(metadata("de/mo", "1.0.1")), StatusCode::BAD_REQUEST, "invalid crate name"),
        (with_metadata(metadata(&"a".repeat(65), "1.0.1")), StatusCode::BAD_REQUEST, "longer than 64"),
        (with_metadata(metadata("demo", "1.0")), StatusCode::BAD_REQUEST, "not a semantic version"),
        (with_metadata(metadata("demo", "../../1.0.1")), StatusCode::BAD_REQUEST, "not a semantic version"),
        (vec![1, 0], StatusCode::BAD_REQUEST, "ended inside the metadata length"),
        (metadata_beyond_body, StatusCode::BAD_REQUEST, "ended inside the metadata: 2 of 500 bytes"),
        (truncated_crate, StatusCode::BAD_REQUEST, "ended inside the .crate"),
        (trailing, StatusCode::BAD_REQUEST, "goes on after the .crate"),
        (encode(b"[\"not\", \"an object\"]", &good_crate), StatusCode::BAD_REQUEST, "not a JSON object"),
        (encode(b"{\"name\": \"demo\"", &good_crate), StatusCode::BAD_REQUEST, "not JSON"),
        (
            encode(
                metadata("demo", "1.0.1").to_string().as_bytes(),
                &build_crate(&[
                    ("demo-1.0.1/Cargo.toml", manifest("demo", "1.0.1").as_bytes()),
                    ("demo-1.0.1/../../escape", b"x"),
                ]),
            ),
            StatusCode::BAD_REQUEST,
            "outside the folder demo-1.0.1/",
        ),
        (
            encode(
                metadata("demo", "1.0.1").to_string().as_bytes(),
                &build_crate(&[("demo-1.0.1/Cargo.toml", manifest("other", "1.0.1").as_bytes())]),
            ),
            StatusCode::BAD_REQUEST,
            "Cargo.toml names the crate Some(\"other\")",
        ),
        (
            encode(metadata("demo", "1.0.1").to_string().as_bytes(), b"not gzip"),
            StatusCode::BAD_REQUEST,
            "not a gzip tar archive",
        ),
        (
            encode(metadata("demo", "1.0.1").to_string().as_bytes(), &vec![7u8; 100 * 1024]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "the .crate is 102400 bytes; the limit is 65536",
        ),
        (
            with_metadata(json!({"name": "demo", "vers": "1.0.1", "description": "x".repeat(10_000)})),
            StatusCode::PAYLOAD_TOO_LARGE,
            "the limit is 8192",
        ),
        (framed("Demo", "1.0.1", ""), StatusCode::CONFLICT, "cargo package demo already exists"),
        (framed("demo", "1.0.0", "changed"), StatusCode::CONFLICT, "already uploaded with different contents"),
    ];
    for (body, status, message) in cases {
        let reply = app.cargo_publish("main", &token, body).await;
        assert_eq!(reply.status, status, "{message}: {}", reply.text());
        assert!(detail(&reply).contains(message), "{message}: {}", reply.text());
    }
    assert_eq!(app.get("/cargo/main/index/3/d/demo", None).await.body, before, "nothing stored changed");
    let search = app.get("/cargo/main/api/v1/crates?q=", None).await.json();
    assert_eq!(search["meta"]["total"], 1, "{search}");

    for (uri, status) in [
        ("/cargo/main/index/3/x/demo", StatusCode::BAD_REQUEST),
        ("/cargo/main/index/de/mo/de%2fmo", StatusCode::BAD_REQUEST),
        ("/cargo/main/index/3/d/DEMO", StatusCode::BAD_REQUEST),
        ("/cargo/main/index/ab/cd/abcd-none", StatusCode::NOT_FOUND),
        ("/cargo/main/index/../private/index/config.json", StatusCode::BAD_REQUEST),
        ("/cargo/main/api/v1/crates/-demo/1.0.0/download", StatusCode::BAD_REQUEST),
        ("/cargo/main/api/v1/crates/demo/1.0/download", StatusCode::BAD_REQUEST),
        ("/cargo/main/api/v1/crates/demo/9.9.9/download", StatusCode::NOT_FOUND),
        // As a private Repository would: no answer tells whether it exists.
        ("/cargo/nope/index/config.json", StatusCode::UNAUTHORIZED),
    ] {
        let reply = app.get(uri, None).await;
        assert_eq!(reply.status, status, "{uri}: {}", reply.text());
    }
    let unknown = app.cargo("DELETE", "/cargo/main/api/v1/crates/demo/9.9.9/yank", Some(&token), vec![]).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
}

/// 50 publishers race for one version with different bytes: exactly one
/// wins and the stored `.crate` is the winner's, on both backends.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cargo_concurrent_publishes_have_one_winner() {
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
                let bytes = crate_file("race", "1.0.0", &format!("// publisher {i}"));
                let body = encode(metadata("race", "1.0.0").to_string().as_bytes(), &bytes);
                (app.cargo_publish("main", &token, body).await.status, bytes)
            })
        });
        let results: Vec<_> = futures::future::join_all(attempts).await.into_iter().map(|r| r.unwrap()).collect();
        let winners: Vec<_> = results.iter().filter(|(status, _)| *status == StatusCode::OK).collect();
        assert_eq!(winners.len(), 1, "{:?}", results.iter().map(|r| r.0).collect::<Vec<_>>());
        assert!(results.iter().all(|(s, _)| *s == StatusCode::OK || *s == StatusCode::CONFLICT));
        let stored = app.get("/cargo/main/api/v1/crates/race/1.0.0/download", None).await;
        assert_eq!(&stored.body[..], &winners[0].1[..]);
        let lines = index_lines(&app.get("/cargo/main/index/ra/ce/race", None).await);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["cksum"], hex::encode(sha2::Sha256::digest(&winners[0].1)));
    }
}
