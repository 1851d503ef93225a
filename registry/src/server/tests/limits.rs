//! Router tests for what every upload path shares: a declared length over the limit is
//! refused before a byte is staged, and storage out of space is a 507 that says so.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use futures::TryStreamExt;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{GetOptions, ObjectStore, PutOptions, PutPayload};
use serde_json::json;
use sha2::Digest;

use super::{Limits, Reply, TestApp, publish_body, tarball, upload_form, wheel};
use wharf_formats::cargo::archive::{build_crate, manifest};
use wharf_formats::cargo::framing::encode;

/// A store whose disk fills up on demand: every write then fails as the local file
/// system's do, with an `io::Error` of kind `StorageFull` (ENOSPC) as the cause.
#[derive(Debug)]
struct FillingDisk {
    inner: InMemory,
    full: AtomicBool,
}

impl std::fmt::Display for FillingDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FillingDisk")
    }
}

impl FillingDisk {
    fn check(&self) -> object_store::Result<()> {
        if self.full.load(Ordering::SeqCst) {
            return Err(object_store::Error::Generic {
                store: "LocalFileSystem",
                source: Box::new(std::io::Error::from(std::io::ErrorKind::StorageFull)),
            });
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl ObjectStore for FillingDisk {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        options: PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        self.check()?;
        self.inner.put_opts(location, payload, options).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        options: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        self.check()?;
        self.inner.put_multipart_opts(location, options).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<object_store::GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<object_store::ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: object_store::CopyOptions) -> object_store::Result<()> {
        self.check()?;
        self.inner.copy_opts(from, to, options).await
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn storage_out_of_space_is_507_for_every_format() {
    let disk = Arc::new(FillingDisk { inner: InMemory::new(), full: AtomicBool::new(false) });
    let app = TestApp::with_store(disk.clone(), Limits::default()).await;
    let token = app.token(&["main"], &["publish"]).await;
    disk.full.store(true, Ordering::SeqCst);

    let asset = b"tool build".to_vec();
    let generic = app
        .send(
            Request::put("/generic/main/acme/tool/1.0/tool.bin")
                .header(header::AUTHORIZATION, bearer(&token))
                .header("x-checksum-sha256", hex::encode(sha2::Sha256::digest(&asset)))
                .body(Body::from(asset))
                .unwrap(),
        )
        .await;
    let fields = [(":action", "file_upload"), ("name", "demo"), ("version", "1.0")];
    let (content_type, form) = upload_form(&fields, "demo-1.0-py3-none-any.whl", &wheel("demo", "1.0", "x = 1"));
    let pypi = app
        .send(
            Request::post("/pypi/main/")
                .header(header::AUTHORIZATION, bearer(&token))
                .header(header::CONTENT_TYPE, content_type)
                .body(Body::from(form))
                .unwrap(),
        )
        .await;
    let krate = build_crate(&[
        ("demo-1.0.0/Cargo.toml", manifest("demo", "1.0.0").as_bytes()),
        ("demo-1.0.0/src/lib.rs", b"pub fn one() {}".as_slice()),
    ]);
    let metadata = json!({"name": "demo", "vers": "1.0.0", "deps": [], "features": {}, "authors": [], "links": null});
    let cargo = app
        .send(
            Request::put("/cargo/main/api/v1/crates/new")
                .header(header::AUTHORIZATION, &token)
                .body(Body::from(encode(metadata.to_string().as_bytes(), &krate)))
                .unwrap(),
        )
        .await;
    let npm =
        app.put_json("/npm/main/demo", &token, &publish_body("demo", "1.0.0", &tarball("demo", "1.0.0", b""))).await;
    let maven = app
        .send(
            Request::put("/maven/main/com/acme/lib/1.0/lib-1.0.jar")
                .header(header::AUTHORIZATION, bearer(&token))
                .body(Body::from(b"jar".to_vec()))
                .unwrap(),
        )
        .await;

    for (format, reply, detail) in [
        ("generic", &generic, generic.json()["error"].as_str().map(str::to_owned)),
        ("pypi", &pypi, Some(pypi.text())),
        ("cargo", &cargo, cargo.json()["errors"][0]["detail"].as_str().map(str::to_owned)),
        ("npm", &npm, npm.json()["error"].as_str().map(str::to_owned)),
        ("maven", &maven, Some(maven.text())),
    ] {
        assert_eq!(reply.status, StatusCode::INSUFFICIENT_STORAGE, "{format}: {}", reply.text());
        let detail = detail.unwrap_or_default();
        assert!(detail.contains("storage is full"), "{format} says why in its own error body: {detail}");
    }
}

/// A body that records whether anyone read it.
fn watched_body(bytes: Vec<u8>) -> (Body, Arc<AtomicBool>) {
    let read = Arc::new(AtomicBool::new(false));
    let flag = read.clone();
    let stream = futures::stream::once(async move {
        flag.store(true, Ordering::SeqCst);
        Ok::<_, std::io::Error>(bytes::Bytes::from(bytes))
    });
    (Body::from_stream(stream), read)
}

async fn staged_uploads(store: &InMemory) -> usize {
    let all: Vec<_> = store.list(None).try_collect().await.unwrap();
    all.iter()
        .filter(|meta| meta.location.as_ref().starts_with("uploads/") || meta.location.as_ref().starts_with("blobs/"))
        .count()
}

#[tokio::test]
async fn a_declared_length_over_the_limit_is_refused_before_the_body_is_read() {
    let limits = Limits { max_upload_bytes: 64 * 1024, max_metadata_bytes: 8 * 1024 };
    let store = Arc::new(InMemory::new());
    let app = TestApp::with_store(store.clone(), limits).await;
    let token = app.token(&["main"], &["publish"]).await;
    let declared = (1u64 << 30).to_string();

    let asset = b"small".to_vec();
    let checksum = hex::encode(sha2::Sha256::digest(&asset));
    let (body, generic_read) = watched_body(asset);
    let generic: Reply = app
        .send(
            Request::put("/generic/main/acme/tool/1.0/tool.bin")
                .header(header::AUTHORIZATION, bearer(&token))
                .header("x-checksum-sha256", checksum)
                .header(header::CONTENT_LENGTH, &declared)
                .body(body)
                .unwrap(),
        )
        .await;
    assert_eq!(generic.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", generic.text());
    assert!(generic.json()["error"].as_str().unwrap().contains("65536"), "{}", generic.text());
    assert!(!generic_read.load(Ordering::SeqCst), "the generic body was read");

    let fields = [(":action", "file_upload"), ("name", "demo"), ("version", "1.0")];
    let (content_type, form) = upload_form(&fields, "demo-1.0-py3-none-any.whl", &wheel("demo", "1.0", "x = 1"));
    let (body, pypi_read) = watched_body(form);
    let pypi = app
        .send(
            Request::post("/pypi/main/")
                .header(header::AUTHORIZATION, bearer(&token))
                .header(header::CONTENT_TYPE, content_type)
                .header(header::CONTENT_LENGTH, &declared)
                .body(body)
                .unwrap(),
        )
        .await;
    assert_eq!(pypi.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", pypi.text());
    assert!(pypi.text().contains("65536"), "{}", pypi.text());
    assert!(!pypi_read.load(Ordering::SeqCst), "the PyPI form was read");
    assert_eq!(staged_uploads(&store).await, 0, "nothing was staged");

    // A declared length within the limits is served as before.
    let (content_type, form) = upload_form(&fields, "demo-1.0-py3-none-any.whl", &wheel("demo", "1.0", "x = 1"));
    let length = form.len().to_string();
    let fine = app
        .send(
            Request::post("/pypi/main/")
                .header(header::AUTHORIZATION, bearer(&token))
                .header(header::CONTENT_TYPE, content_type)
                .header(header::CONTENT_LENGTH, length)
                .body(Body::from(form))
                .unwrap(),
        )
        .await;
    assert_eq!(fine.status, StatusCode::OK, "{}", fine.text());
}
