//! Router tests for upload hygiene: refused uploads and upstream files
//! that fail verification leave nothing in storage, a publish document
//! carries one attachment, and names too long to store are refused with
//! 400 before anything is written.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures::TryStreamExt;
use object_store::ObjectStore;
use serde_json::json;

use super::{Limits, TestApp, go_zip, hex_digest, publish_body, put_generic, tarball, upload_form, wheel};
use wharf_formats::cargo::archive::{build_crate, manifest};

async fn keys_under(store: &dyn ObjectStore, prefix: &str) -> BTreeSet<String> {
    let prefix = object_store::path::Path::from(prefix);
    store.list(Some(&prefix)).map_ok(|meta| meta.location.to_string()).try_collect().await.unwrap()
}

/// What refused uploads could leave behind: blobs and staging objects.
async fn bytes_kept(store: &dyn ObjectStore) -> BTreeSet<String> {
    let mut kept = keys_under(store, "blobs").await;
    kept.extend(keys_under(store, "uploads").await);
    kept
}

/// Background deletes (a dropped staging handle) finish within this.
async fn settled(store: &dyn ObjectStore) -> BTreeSet<String> {
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    bytes_kept(store).await
}

#[tokio::test]
async fn refused_uploads_of_every_format_leave_no_bytes_behind() {
    let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let app = TestApp::with_store(store.clone(), Limits::default()).await;
    let token = app.token(&["main"], &["publish"]).await;
    let good = tarball("demo", "1.0.0", b"good");
    let reply = app.put_json("/npm/main/demo", &token, &publish_body("demo", "1.0.0", &good)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let before = bytes_kept(store.as_ref()).await;
    assert_eq!(before.len(), 1, "{before:?}");

    // npm: a wrong shasum; a tarball naming another package; the very
    // bytes already stored, refused for naming 1.0.0 in a 1.0.1 document.
    let mut bad_shasum = publish_body("demo", "1.0.1", &tarball("demo", "1.0.1", b"new"));
    bad_shasum["versions"]["1.0.1"]["dist"]["shasum"] = json!("0000");
    let wrong_name = publish_body("demo", "1.0.2", &tarball("other", "1.0.2", b""));
    let same_bytes = publish_body("demo", "1.0.1", &good);
    for body in [bad_shasum, wrong_name, same_bytes] {
        let reply = app.put_json("/npm/main/demo", &token, &body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
    }

    // Generic: the body does not hash to the declared SHA-256.
    let reply =
        put_generic(&app, &token, "/generic/main/acme/tool/1.0/tool.bin", b"x".to_vec(), Some("0".repeat(64))).await;
    assert!(reply.text().contains("checksum mismatch"), "{}", reply.text());

    // PyPI: a declared digest that differs, and a wheel of another project.
    for (fields, content) in
        [(vec![("sha256_digest", "00".repeat(32))], wheel("demo", "1.1", "x = 1")), (vec![], wheel("other", "1.1", ""))]
    {
        let mut all = vec![(":action", "file_upload".to_owned()), ("name", "demo".into()), ("version", "1.1".into())];
        all.extend(fields);
        let all: Vec<(&str, &str)> = all.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (content_type, body) = upload_form(&all, "demo-1.1-py3-none-any.whl", &content);
        let request = Request::post("/pypi/main/")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body))
            .unwrap();
        let reply = app.send(request).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
    }

    // Maven: a checksum header that differs.
    let request = Request::put("/maven/main/com/acme/lib/1.0/lib-1.0.jar")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header("x-checksum-sha1", "0".repeat(40))
        .body(Body::from("jar bytes"))
        .unwrap();
    let reply = app.send(request).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());

    // Go: the go.mod names another module.
    let zip = go_zip(
        "example.com/greet",
        "v1.0.0",
        &[("go.mod", b"module example.com/other\n"), ("greet.go", b"package greet\n")],
    );
    let reply = app.put_bytes("/go/main/example.com/greet/@v/v1.0.0.zip", Some(&token), zip).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());

    // Cargo: the .crate's Cargo.toml names another crate.
    let folder = "demo-1.0.0";
    let crate_file = build_crate(&[(&format!("{folder}/Cargo.toml"), manifest("other", "1.0.0").as_bytes())]);
    let metadata = json!({"name": "demo", "vers": "1.0.0", "deps": [], "features": {}, "authors": [], "links": null});
    let body = wharf_formats::cargo::framing::encode(metadata.to_string().as_bytes(), &crate_file);
    let request =
        Request::put("/cargo/main/api/v1/crates/new").header(header::AUTHORIZATION, &token).body(Body::from(body));
    let reply = app.send(request.unwrap()).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());

    assert_eq!(settled(store.as_ref()).await, before, "refused uploads left bytes behind");
    let stored = app.get("/npm/main/demo/-/demo-1.0.0.tgz", None).await;
    assert_eq!(stored.body, good, "the blob a refused upload shared is kept");
}

#[tokio::test]
async fn a_publish_document_with_more_than_one_attachment_is_refused_before_staging_the_second() {
    let folder = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> =
        Arc::new(object_store::local::LocalFileSystem::new_with_prefix(folder.path()).unwrap());
    let app = TestApp::with_store(store.clone(), Limits::default()).await;
    let token = app.token(&["main"], &["publish"]).await;
    let mut body = publish_body("demo", "1.0.0", &tarball("demo", "1.0.0", b""));
    let attachments = body["_attachments"].as_object_mut().unwrap();
    for i in 0..20_000 {
        let data = STANDARD.encode(format!("tiny attachment {i}"));
        attachments.insert(format!("extra-{i}.tgz"), json!({"data": data, "length": 20}));
    }
    let started = std::time::Instant::now();
    let reply = app.put_json("/npm/main/demo", &token, &body).await;
    let elapsed = started.elapsed();
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
    let message = reply.json()["error"].as_str().unwrap().to_owned();
    assert!(message.contains("more than one attachment") && message.contains("extra-0.tgz"), "{message}");
    assert!(settled(store.as_ref()).await.is_empty(), "nothing staged is left");
    eprintln!("20,000 attachments refused in {elapsed:?}");
    assert_eq!(app.get("/npm/main/demo", None).await.status, StatusCode::NOT_FOUND);
}

/// An upstream whose tarball never matches the digests its packument
/// declares: different bytes on every request.
async fn lying_upstream() -> (String, tokio::task::JoinHandle<()>) {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let tarball_url = format!("{url}/npm/public/left-pad/-/left-pad-1.0.0.tgz");
    let declared = tarball("left-pad", "1.0.0", b"what the packument promises");
    let packument = json!({
        "name": "left-pad",
        "dist-tags": {"latest": "1.0.0"},
        "time": {"1.0.0": "2020-01-01T00:00:00.000Z"},
        "versions": {"1.0.0": {"name": "left-pad", "version": "1.0.0", "dist": {
            "tarball": tarball_url,
            "shasum": hex_digest::<sha1::Sha1>(&declared),
            "integrity": wharf_formats::npm::integrity(&hex_digest::<sha2::Sha512>(&declared)),
        }}},
    });
    let served = std::sync::atomic::AtomicU64::new(0);
    let served = Arc::new(served);
    let router =
        axum::Router::new().route("/npm/public/left-pad", get(move || async move { axum::Json(packument) })).route(
            "/npm/public/left-pad/-/left-pad-1.0.0.tgz",
            get(move || async move {
                let n = served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tarball("left-pad", "1.0.0", format!("different bytes, take {n}").as_bytes())
            }),
        );
    let server = tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (url, server)
}

#[tokio::test]
async fn upstream_bytes_that_fail_verification_are_not_kept() {
    let (url, server) = lying_upstream().await;
    let config = super::upstream::CHAIN_CONFIG.replace("http://127.0.0.1:9", &url);
    let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let app = TestApp::with_config(&config, store.clone(), Limits::default()).await;
    let packument = app.get("/npm/app/left-pad", None).await;
    assert_eq!(packument.status, StatusCode::OK, "{}", packument.text());
    for _ in 0..3 {
        let reply = app.get("/npm/app/left-pad/-/left-pad-1.0.0.tgz", None).await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
        assert!(reply.text().contains("do not match the digest"), "{}", reply.text());
    }
    // The packument is kept (its last good copy, for restarts); no tarball is.
    let mut kept = settled(store.as_ref()).await;
    for record in keys_under(store.as_ref(), "upstream").await {
        let location = object_store::path::Path::from(record);
        let bytes = object_store::ObjectStoreExt::get(store.as_ref(), &location).await.unwrap().bytes().await.unwrap();
        let record: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let sha256 = record["body"]["sha256"].as_str().unwrap().to_owned();
        kept.retain(|key| !key.ends_with(&sha256));
    }
    assert!(kept.is_empty(), "nothing the upstream sent is kept but its packument: {kept:?}");
    server.abort();
}

#[tokio::test]
async fn names_too_long_to_store_are_refused_with_400_and_store_nothing() {
    let folder = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> =
        Arc::new(object_store::local::LocalFileSystem::new_with_prefix(folder.path()).unwrap());
    let app = TestApp::with_store(store.clone(), Limits::default()).await;
    let token = app.token(&["main"], &["publish"]).await;
    let bytes = b"asset".to_vec();
    let checksum = Some(hex_digest::<sha2::Sha256>(&bytes));
    let long_asset = format!("/generic/main/acme/tool/1.0/{}", "a".repeat(251));
    let long_package = format!("/generic/main/acme/{}/1.0/tool.bin", "p".repeat(255));
    for (uri, limit) in [(long_asset, "at most 242"), (long_package, "at most 239")] {
        let reply = put_generic(&app, &token, &uri, bytes.clone(), checksum.clone()).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
        assert!(reply.text().contains(limit), "{}", reply.text());
    }
    let version = format!("1.0.0-{}", "x".repeat(5000));
    let reply =
        app.put_json("/npm/main/demo", &token, &publish_body("demo", &version, &tarball("demo", &version, b""))).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
    assert!(reply.text().contains("at most 255"), "{}", reply.text());

    // Any format: a wheel whose platform tag makes its file name too long.
    let filename = format!("demo-1.0-py3-none-{}.whl", "x".repeat(230));
    let fields = [(":action", "file_upload"), ("name", "demo"), ("version", "1.0")];
    let (content_type, body) = upload_form(&fields, &filename, &wheel("demo", "1.0", "x = 1"));
    let request = Request::post("/pypi/main/")
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body))
        .unwrap();
    let reply = app.send(request).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
    assert!(reply.text().contains("file name is too long to store"), "{}", reply.text());

    // Within the limits, the same uploads are stored.
    let fits = format!("/generic/main/acme/{}/1.0/{}", "p".repeat(235), "a".repeat(242));
    let reply = put_generic(&app, &token, &fits, bytes.clone(), checksum.clone()).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let version = format!("1.0.0-{}", "x".repeat(249));
    let reply =
        app.put_json("/npm/main/demo", &token, &publish_body("demo", &version, &tarball("demo", &version, b""))).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());

    let records = keys_under(store.as_ref(), "repositories").await;
    assert!(records.iter().all(|key| key.contains(&"p".repeat(235)) || key.contains("/npm/demo/")), "{records:?}");
    assert!(keys_under(store.as_ref(), "uploads").await.is_empty());
    assert_eq!(keys_under(store.as_ref(), "blobs").await.len(), 2, "only the accepted uploads' bytes");
}

#[tokio::test]
async fn the_core_refuses_any_format_s_name_too_long_to_store_before_writing() {
    let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
    let registry = wharf_core::Registry::new(wharf_storage::Storage::new(store.clone()));
    let id = wharf_core::PackageId::new(wharf_api::PackageFormat::Pypi, "demo");
    let asset = |name: String| wharf_core::NewAsset {
        name,
        digests: wharf_storage::BlobDigests {
            sha256: "0".repeat(64),
            sha512: String::new(),
            sha1: String::new(),
            md5: String::new(),
            size: 1,
        },
        metadata: json!({}),
    };
    // A file name of non-ASCII characters: 80 of them take 160 bytes as
    // UTF-8 and 480 percent-encoded.
    let error = registry
        .add_asset("main", &id, "demo", "1.0", json!({}), wharf_core::VersionStatus::Published, asset("é".repeat(80)))
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, wharf_core::CoreError::Invalid(_)), "{message}");
    assert!(message.contains("file name is too long to store") && message.contains("at most 242"), "{message}");
    let written: Vec<_> = store.list(None).try_collect().await.unwrap();
    assert!(written.is_empty(), "no record is left: {written:?}");
}
