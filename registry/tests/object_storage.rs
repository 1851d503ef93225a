//! Storage on S3-compatible servers on loopback — SeaweedFS (a real S3 implementation)
//! and moto (a mock, where one is enough: request headers, refused credentials) — blob
//! staging with multipart uploads, create-once races, compare-and-swap revisions and
//! purging through `Storage`; then the registry binary on an S3 Domain with
//! credentials from a secrets folder, driven by npm, twine and pip, with a
//! second replica on the same SeaweedFS bucket; and the start-up failures a platform
//! team would meet (a missing Secret, credentials the store refuses, an
//! unreachable endpoint). Azure Blob Storage likewise, through Azurite. One storage suite
//! (conditional creates, multipart, ranges, listings, purge, encryption, the collector)
//! runs on all three.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use sha2::{Digest, Sha256};
use support::*;
use wharf_api::{S3Storage, SecretRef, StorageSpec};
use wharf_storage::backends::open_storage;
use wharf_storage::secrets::SecretsDir;
use wharf_storage::{BodyError, Created, Storage, keys};

const BUCKET: &str = "wharf";
const SECRET: &str = "acme-s3";

/// A secrets folder laid out like the Secret volume the operator mounts.
fn secrets_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join(SECRET)).unwrap();
    std::fs::write(dir.path().join(SECRET).join("accessKeyId"), "wharf-test-key\n").unwrap();
    std::fs::write(dir.path().join(SECRET).join("secretAccessKey"), "wharf-test-secret\n").unwrap();
    dir
}

fn s3_spec(endpoint: &str, prefix: &str) -> StorageSpec {
    StorageSpec {
        s3: Some(S3Storage {
            bucket: BUCKET.into(),
            prefix: Some(prefix.into()),
            region: Some("us-east-1".into()),
            endpoint: Some(endpoint.into()),
            credentials_secret_ref: Some(SecretRef { name: SECRET.into(), key: None }),
            allow_http: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn s3_storage(s3: &S3Server, secrets: &FsPath, prefix: &str) -> Storage {
    open_storage(&s3_spec(&s3.endpoint, prefix), &SecretsDir::new(secrets)).unwrap()
}

fn chunks(bytes: &Bytes, size: usize) -> impl futures::Stream<Item = Result<Bytes, BodyError>> + Send + 'static {
    let parts: Vec<_> =
        (0..bytes.len()).step_by(size).map(|at| Ok(bytes.slice(at..(at + size).min(bytes.len())))).collect();
    futures::stream::iter(parts)
}

async fn read_all(storage: &Storage, sha256: &str, size: u64, range: Option<std::ops::Range<u64>>) -> Vec<u8> {
    let body = storage.open_blob(sha256, size, range).await.unwrap().unwrap();
    let parts: Vec<Bytes> = body.stream.try_collect().await.unwrap();
    parts.concat()
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_storage_stages_multipart_blobs_under_the_prefix_and_deduplicates() {
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let secrets = secrets_dir();
    let storage = s3_storage(&s3, secrets.path(), "domains/acme");
    storage.verify_conditional_writes().await.unwrap();
    storage.check().await.unwrap();

    // 12 MiB in 1 MiB chunks: three parts of a multipart upload.
    let blob = Bytes::from((0..12 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
    let digests =
        storage.stage_blob(chunks(&blob, 1024 * 1024), 64 * 1024 * 1024).await.unwrap().commit().await.unwrap();
    assert_eq!(digests.sha256, hex::encode(Sha256::digest(&blob)));
    assert_eq!(digests.size, blob.len() as u64);
    assert_eq!(read_all(&storage, &digests.sha256, digests.size, None).await, blob);
    let middle = 5 * 1024 * 1024 - 10..5 * 1024 * 1024 + 10;
    let range = read_all(&storage, &digests.sha256, digests.size, Some(middle.clone())).await;
    assert_eq!(range, blob[middle.start as usize..middle.end as usize]);

    // The same bytes again cost no second object and leave no staging upload.
    let again = storage.stage_blob(chunks(&blob, 3 * 1024 * 1024), 64 * 1024 * 1024).await.unwrap();
    assert_eq!(again.digests(), &digests);
    assert_eq!(again.commit().await.unwrap(), digests);
    // Staged bytes refused by a check are deleted.
    let refused = storage.stage_blob(chunks(&blob.slice(..1024), 512), 64 * 1024 * 1024).await.unwrap();
    refused.discard().await;
    let whole_bucket = s3_storage(&s3, secrets.path(), "");
    assert_eq!(whole_bucket.list_children(&Path::from("domains")).await.unwrap(), ["acme"]);
    assert_eq!(whole_bucket.list_children(&Path::from("domains/acme")).await.unwrap(), ["blobs"]);
    let shard = &digests.sha256[..2];
    let blobs = whole_bucket.list_children(&Path::from("domains/acme/blobs/sha256")).await.unwrap();
    assert_eq!(blobs, [shard]);

    // Past the limit: refused, the multipart upload aborted, nothing new stored.
    let error = storage.stage_blob(chunks(&blob, 1024 * 1024), 6 * 1024 * 1024).await.unwrap_err();
    assert!(error.to_string().contains("exceeds the limit"), "{error}");
    assert_eq!(whole_bucket.list_children(&Path::from("domains/acme")).await.unwrap(), ["blobs"]);
}

/// SSE-KMS with the Domain's key id: every object the registry writes (small records,
/// multipart uploads, and blobs moved into place from staging) carries the key.
#[tokio::test(flavor = "multi_thread")]
async fn s3_objects_are_written_with_the_domain_kms_key() {
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    // moto's KMS answers on the same port; it tells services apart by the signing scope.
    let created: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/", s3.endpoint))
        .header("X-Amz-Target", "TrentService.CreateKey")
        .header("Content-Type", "application/x-amz-json-1.1")
        .header(
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=wharf-test-key/20260101/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=0",
        )
        .body("{}")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key_id = created["KeyMetadata"]["KeyId"].as_str().unwrap().to_owned();
    let secrets = secrets_dir();
    let mut spec = s3_spec(&s3.endpoint, "kms");
    spec.s3.as_mut().unwrap().kms_key_id = Some(key_id.clone());
    let storage = open_storage(&spec, &SecretsDir::new(secrets.path())).unwrap();
    let blob = Bytes::from(vec![7u8; 6 * 1024 * 1024]);
    let digests =
        storage.stage_blob(chunks(&blob, 1024 * 1024), 64 * 1024 * 1024).await.unwrap().commit().await.unwrap();
    let record = keys::version_record("main", "npm", "sealed", "1.0.0");
    storage.create_json(&record, &"record".to_owned()).await.unwrap();
    for key in [format!("kms/{}", keys::blob(&digests.sha256)), format!("kms/{record}")] {
        // Unsigned requests are anonymous to moto; it does not check signatures.
        let head = reqwest::Client::new()
            .head(format!("{}/{BUCKET}/{key}", s3.endpoint))
            .header(
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=wharf-test-key/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0",
            )
            .send()
            .await
            .unwrap();
        assert_eq!(head.status(), 200, "{key}");
        let header = |name: &str| head.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        assert_eq!(header("x-amz-server-side-encryption"), "aws:kms", "{key}");
        assert!(header("x-amz-server-side-encryption-aws-kms-key-id").contains(&key_id), "{key}");
    }
    assert_eq!(read_all(&storage, &digests.sha256, digests.size, None).await, blob);
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_create_once_has_one_winner_among_twenty_and_revisions_compare_and_swap() {
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let secrets = secrets_dir();
    // Separate stores, as separate replicas would have.
    let replicas: Vec<Storage> = (0..4).map(|_| s3_storage(&s3, secrets.path(), "acme")).collect();

    let key = keys::version_record("main", "npm", "left-pad", "1.0.0");
    let attempts = (0..20).map(|i| {
        let storage = replicas[i % replicas.len()].clone();
        let key = key.clone();
        async move { storage.create_json(&key, &format!("publisher {i}")).await.unwrap() }
    });
    let outcomes = futures::future::join_all(attempts).await;
    let winners = outcomes.iter().filter(|o| matches!(o, Created::Created)).count();
    assert_eq!(winners, 1, "exactly one of twenty concurrent creators wins");
    let stored: String = replicas[0].read_json(&key).await.unwrap().unwrap();
    for outcome in outcomes {
        if let Created::AlreadyExists(seen) = outcome {
            assert_eq!(seen, stored, "every loser reads the winner's record");
        }
    }

    // Compare-and-swap by revision: twenty writers race for each of three
    // revisions; one wins each round and the newest is what every replica reads.
    let dir = keys::package_index("main", "npm", "left-pad");
    for revision in 1..=3u64 {
        let attempts = (0..20).map(|i| {
            let storage = replicas[i % replicas.len()].clone();
            let dir = dir.clone();
            async move { storage.create_revision(&dir, revision, Bytes::from(format!("rev {revision} by {i}"))).await }
        });
        let won = futures::future::join_all(attempts).await.into_iter().filter(|r| *r.as_ref().unwrap()).count();
        assert_eq!(won, 1, "revision {revision}");
    }
    for replica in &replicas {
        let (revision, bytes) = replica.latest_revision(&dir).await.unwrap().unwrap();
        assert_eq!(revision, 3);
        assert!(bytes.starts_with(b"rev 3 by "), "{bytes:?}");
        assert_eq!(replica.newest_revision(&dir, Some(2)).await.unwrap(), Some(3));
        assert_eq!(replica.newest_revision(&dir, Some(3)).await.unwrap(), None);
    }
    replicas[1].prune_revisions(&dir, 3).await;
    assert!(replicas[2].read_revision(&dir, 2).await.unwrap().is_none());
    assert_eq!(replicas[3].latest_revision(&dir).await.unwrap().unwrap().0, 3);

    // One signing key for all replicas, however many ask at once.
    let keys = futures::future::join_all(replicas.iter().map(|r| r.token_signing_key())).await;
    assert!(keys.iter().all(|k| k.as_ref().unwrap() == keys[0].as_ref().unwrap()));
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_purge_deletes_everything_under_a_prefix_in_pages() {
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let secrets = secrets_dir();
    let storage = s3_storage(&s3, secrets.path(), "acme");
    let neighbour = s3_storage(&s3, secrets.path(), "other-domain");

    // More than one listing page and one bulk delete (1000 keys each).
    let writes = (0..1100).map(|i| {
        let storage = storage.clone();
        async move {
            let key = keys::version_record("web", "npm", &format!("pkg-{}", i % 40), &format!("1.0.{i}"));
            storage.create_json(&key, &i).await.unwrap();
        }
    });
    futures::stream::iter(writes).buffer_unordered(16).collect::<Vec<_>>().await;
    let kept = keys::version_record("web2", "npm", "kept", "1.0.0");
    storage.create_json(&kept, &"web2 is another repository".to_owned()).await.unwrap();
    storage.put_small_blob(Bytes::from_static(b"a blob")).await.unwrap();
    neighbour.create_json(&kept, &"another Domain in the bucket".to_owned()).await.unwrap();

    assert_eq!(storage.purge(&keys::repository("web")).await.unwrap(), 1100);
    assert!(storage.list_children(&keys::repository("web")).await.unwrap().is_empty());
    assert!(storage.read_json::<String>(&kept).await.unwrap().is_some(), "web2 is not under web/");

    // The whole Domain: only what is under its prefix.
    assert_eq!(storage.purge(&Path::from("")).await.unwrap(), 2);
    assert!(storage.list_children(&Path::from("")).await.unwrap().is_empty());
    assert!(neighbour.read_json::<String>(&kept).await.unwrap().is_some());
}

const S3_CONFIG: &str = r#"
apiVersion: wharf.dev/v1alpha1
kind: Domain
metadata: {name: acme}
spec:
  storage:
    s3:
      bucket: wharf
      prefix: domains/acme
      region: us-east-1
      endpoint: "{endpoint}"
      allowHttp: true
      credentialsSecretRef: {name: acme-s3}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {name: main}
spec:
  domainRef: {name: acme}
  access: {read: [{kind: Anonymous}]}
"#;

const SIGNING_KEY: &str = "a signing key that both replicas share, 32+ bytes";

fn replica(data: &FsPath, secrets: &FsPath, endpoint: &str) -> TestServer {
    let config = S3_CONFIG.replace("{endpoint}", endpoint);
    TestServer::start_in_env(
        data,
        Some(&config),
        &["--secrets-dir", &secrets.display().to_string()],
        &[("WHARF_TOKEN_SIGNING_KEY", SIGNING_KEY.as_ref())],
    )
}

/// npm and pip install through `server` into fresh folders of `ws`; returns
/// what the installed npm package and Python module say.
fn install_through(ws: &Workspace, server: &TestServer, tag: &str) -> (String, String) {
    let tools = python_tools();
    let app = format!("app-{tag}");
    ws.write(&format!("{app}/package.json"), r#"{"name":"app","version":"1.0.0","private":true}"#);
    write_npmrc(ws, &app, server, "main", None);
    run_ok(npm(ws, &app).args(["install", "@acme/s3-demo@^1"]));
    let js = std::fs::read_to_string(ws.path(&format!("{app}/node_modules/@acme/s3-demo/index.js"))).unwrap();
    let site = ws.path(&format!("site-{tag}"));
    run_ok(ws.command(venv_bin(&tools, "pip"), ".").args(["install", "--no-deps", "--target"]).arg(&site).args([
        "--index-url",
        &server.url("/pypi/main/simple/"),
        "s3-demo",
    ]));
    let python = std::fs::read_to_string(site.join("s3_demo/__init__.py")).unwrap();
    (js, python)
}

/// Two registry processes on one bucket of a real S3 implementation.
#[tokio::test(flavor = "multi_thread")]
async fn replicas_on_one_bucket_serve_what_either_stored() {
    let tools = python_tools();
    let s3 = SeaweedS3::start(BUCKET);
    let secrets = secrets_dir();
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = replica(data_a.path(), secrets.path(), &s3.endpoint);
    let token = first.token(&["main"], &["read", "publish"]).await;
    let ws = Workspace::new();

    ws.write(
        "pkg/package.json",
        &serde_json::json!({"name": "@acme/s3-demo", "version": "1.0.0", "main": "index.js"}).to_string(),
    );
    ws.write("pkg/index.js", "module.exports = 'stored in a bucket';\n");
    write_npmrc(&ws, "pkg", &first, "main", Some(&token));
    run_ok(npm(&ws, "pkg").args(["publish", "--access", "public"]));
    let wheel = ws.path("s3_demo-1.0.0-py3-none-any.whl");
    write_wheel(&wheel, "s3-demo", "1.0.0", "VERSION = \"1.0.0\"\n");
    run_ok(
        ws.command(venv_bin(&tools, "twine"), ".")
            .args(["upload", "--non-interactive", "--disable-progress-bar", "--repository-url"])
            .arg(first.url("/pypi/main/"))
            .args(["-u", "__token__", "-p", &token])
            .arg(&wheel),
    );
    let through_first = install_through(&ws, &first, "first");
    assert_eq!(through_first, ("module.exports = 'stored in a bucket';\n".into(), "VERSION = \"1.0.0\"\n".into()));

    // A second replica on the same bucket: no data of its own, same answers,
    // and a token the first minted is good there (shared signing key).
    let second = replica(data_b.path(), secrets.path(), &s3.endpoint);
    assert_eq!(install_through(&ws, &second, "second"), through_first);
    for data in [data_a.path(), data_b.path()] {
        let local: Vec<_> = std::fs::read_dir(data).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(local, ["wharf.yaml"], "replicas keep nothing locally: {}", data.display());
    }

    // A version published on one replica is visible on the other at once,
    // and concurrent publishers on both replicas race for one version: one wins.
    let client = reqwest::Client::new();
    let attempts = (0..20).map(|i| {
        let server = if i % 2 == 0 { &first } else { &second };
        let body = format!("tool build {i}");
        let request = client
            .put(server.url("/generic/main/acme/tool/1.0.0/tool.txt"))
            .bearer_auth(&token)
            .header("X-Checksum-Sha256", hex::encode(Sha256::digest(body.as_bytes())))
            .body(body);
        async move { request.send().await.unwrap().status().as_u16() }
    });
    let mut statuses = futures::future::join_all(attempts).await;
    statuses.sort();
    assert_eq!(statuses.iter().filter(|s| **s < 300).count(), 1, "{statuses:?}");
    assert!(statuses.iter().filter(|s| **s >= 300).all(|s| *s == 409), "{statuses:?}");
    let from_first = client.get(first.url("/generic/main/acme/tool/1.0.0/tool.txt")).send().await.unwrap();
    let from_second = client.get(second.url("/generic/main/acme/tool/1.0.0/tool.txt")).send().await.unwrap();
    assert_eq!(from_first.status(), 200);
    assert_eq!(from_second.status(), 200);
    assert_eq!(from_first.text().await.unwrap(), from_second.text().await.unwrap());
}

/// The field case: replica B reads a package, replica A publishes four more versions
/// (pruning index revisions behind it), then B must list all five and its own publish must
/// reach a replica started afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn a_replica_several_writes_behind_sees_them_and_its_publish_is_kept() {
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let secrets = secrets_dir();
    let (data_a, data_b, data_c) =
        (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = replica(data_a.path(), secrets.path(), &s3.endpoint);
    let b = replica(data_b.path(), secrets.path(), &s3.endpoint);
    let token = a.token(&["main"], &["read", "publish"]).await;
    let client = reqwest::Client::new();
    let publish = |server: &TestServer, version: &str| {
        let body = format!("tool {version}");
        client
            .put(server.url(&format!("/generic/main/acme/tool/{version}/tool.txt")))
            .bearer_auth(&token)
            .header("X-Checksum-Sha256", hex::encode(Sha256::digest(body.as_bytes())))
            .body(body)
            .send()
    };
    let versions = |server: &TestServer| {
        let request = client.get(server.url("/generic/main/acme/tool")).send();
        async move {
            let listing: serde_json::Value = request.await.unwrap().json().await.unwrap();
            let mut names: Vec<String> = listing["versions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["version"].as_str().unwrap().to_owned())
                .collect();
            names.sort();
            names
        }
    };
    assert_eq!(publish(&a, "1.0.0").await.unwrap().status(), 201);
    assert_eq!(versions(&b).await, ["1.0.0"]);
    for version in ["1.1.0", "1.2.0", "1.3.0", "1.4.0"] {
        assert_eq!(publish(&a, version).await.unwrap().status(), 201);
    }
    assert_eq!(versions(&b).await, ["1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0"]);
    assert_eq!(publish(&b, "2.0.0").await.unwrap().status(), 201);
    let c = replica(data_c.path(), secrets.path(), &s3.endpoint);
    assert_eq!(versions(&c).await, ["1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0", "2.0.0"]);
}

#[test]
fn a_missing_secret_stops_start_up_naming_it() {
    let data = tempfile::tempdir().unwrap();
    let empty_secrets = tempfile::tempdir().unwrap();
    let config = data.path().join("wharf.yaml");
    std::fs::write(&config, S3_CONFIG.replace("{endpoint}", "http://127.0.0.1:9")).unwrap();
    let output = run(std::process::Command::new(env!("CARGO_BIN_EXE_wharf-registry"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--secrets-dir")
        .arg(empty_secrets.path())
        .env("WHARF_ADMIN_TOKEN", ADMIN_TOKEN));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("Secret \"acme-s3\"") && stderr.contains("accessKeyId") && stderr.contains("Domain \"acme\""),
        "{stderr}"
    );
}

#[test]
fn credentials_the_store_refuses_stop_start_up_naming_the_secret() {
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    s3.require_known_credentials();
    let data = tempfile::tempdir().unwrap();
    let secrets = secrets_dir();
    let config = data.path().join("wharf.yaml");
    std::fs::write(&config, S3_CONFIG.replace("{endpoint}", &s3.endpoint)).unwrap();
    let output = run(std::process::Command::new(env!("CARGO_BIN_EXE_wharf-registry"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--secrets-dir")
        .arg(secrets.path())
        .env("WHARF_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("WHARF_TOKEN_SIGNING_KEY", SIGNING_KEY));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("storage refused the credentials of Secret \"acme-s3\""), "{stderr}");
}

#[test]
fn a_bucket_that_does_not_exist_stops_start_up() {
    let s3 = S3Server::start();
    let data = tempfile::tempdir().unwrap();
    let secrets = secrets_dir();
    let config = data.path().join("wharf.yaml");
    std::fs::write(&config, S3_CONFIG.replace("{endpoint}", &s3.endpoint)).unwrap();
    let output = run(std::process::Command::new(env!("CARGO_BIN_EXE_wharf-registry"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--secrets-dir")
        .arg(secrets.path())
        .env("WHARF_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("WHARF_TOKEN_SIGNING_KEY", SIGNING_KEY));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no such bucket or container"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_endpoint_serves_but_is_not_ready_until_storage_answers() {
    // A port nothing listens on (yet): the registry starts, live but not ready.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let data = tempfile::tempdir().unwrap();
    let secrets = secrets_dir();
    let config = S3_CONFIG.replace("{endpoint}", &endpoint);
    let server = TestServer::listen_in_env(
        data.path(),
        Some(&config),
        &["--secrets-dir", &secrets.path().display().to_string()],
        &[("WHARF_TOKEN_SIGNING_KEY", SIGNING_KEY.as_ref())],
    );
    let client = reqwest::Client::new();
    assert_eq!(client.get(server.url("/healthz")).send().await.unwrap().status(), 200);
    let started = Instant::now();
    let ready = client.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(5), "readiness answered in {:?}", started.elapsed());
    assert!(server.log_lines().iter().any(|l| l.contains("storage is not reachable")), "{:?}", server.log_lines());

    // Storage comes up: the same process turns ready and serves, no restart.
    let s3 = S3Server::start_on(port);
    s3.create_bucket(BUCKET);
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.get(server.url("/readyz")).send().await.unwrap().status() != 200 {
        assert!(Instant::now() < deadline, "never became ready once storage answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let token = server.token(&["main"], &["read", "publish"]).await;
    let put = client
        .put(server.url("/generic/main/acme/late/1.0.0/late.txt"))
        .bearer_auth(&token)
        .header("X-Checksum-Sha256", hex::encode(Sha256::digest(b"late")))
        .body("late");
    assert!(put.send().await.unwrap().status().is_success());
}

const AZURE_CONFIG: &str = r#"
apiVersion: wharf.dev/v1alpha1
kind: Domain
metadata: {name: acme}
spec:
  storage:
    azure:
      account: wharftest
      container: wharf
      prefix: domains/acme
      credentialsSecretRef: {name: acme-azure}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {name: main}
spec:
  domainRef: {name: acme}
  access: {read: [{kind: Anonymous}]}
"#;

/// Azure Blob Storage through Azurite, which checks the account key: two
/// replicas on one container, a multi-block upload, a create-once race, and
/// a wrong key refused at start-up naming the Secret.
#[tokio::test(flavor = "multi_thread")]
async fn azure_replicas_share_a_container_and_a_wrong_key_is_refused() {
    let azurite = AzureEmulator::start();
    azurite.create_container("wharf");
    let secrets = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(secrets.path().join("acme-azure")).unwrap();
    std::fs::write(secrets.path().join("acme-azure/accountKey"), format!("{}\n", azurite.key)).unwrap();
    let secrets_arg = secrets.path().display().to_string();
    // object_store's emulator mode: path-style URLs at this endpoint.
    let env = [
        ("AZURE_STORAGE_USE_EMULATOR", "true".as_ref()),
        ("AZURITE_BLOB_STORAGE_URL", azurite.endpoint.as_ref()),
        ("WHARF_TOKEN_SIGNING_KEY", SIGNING_KEY.as_ref()),
    ];
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = TestServer::start_in_env(data_a.path(), Some(AZURE_CONFIG), &["--secrets-dir", &secrets_arg], &env);
    let second = TestServer::start_in_env(data_b.path(), Some(AZURE_CONFIG), &["--secrets-dir", &secrets_arg], &env);
    let token = first.token(&["main"], &["read", "publish"]).await;
    let client = reqwest::Client::new();

    // 7 MiB: more than one block of the multipart upload.
    let big: Vec<u8> = (0..7 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    let put = client
        .put(first.url("/generic/main/acme/big/1.0.0/big.bin"))
        .bearer_auth(&token)
        .header("X-Checksum-Sha256", hex::encode(Sha256::digest(&big)))
        .body(big.clone());
    assert!(put.send().await.unwrap().status().is_success());
    let read = client.get(second.url("/generic/main/acme/big/1.0.0/big.bin")).send().await.unwrap();
    assert_eq!(read.status(), 200);
    assert!(read.bytes().await.unwrap() == big, "the other replica serves the same bytes");

    let attempts = (0..20).map(|i| {
        let server = if i % 2 == 0 { &first } else { &second };
        let body = format!("tool build {i}");
        let request = client
            .put(server.url("/generic/main/acme/tool/1.0.0/tool.txt"))
            .bearer_auth(&token)
            .header("X-Checksum-Sha256", hex::encode(Sha256::digest(body.as_bytes())))
            .body(body);
        async move { request.send().await.unwrap().status().as_u16() }
    });
    let statuses = futures::future::join_all(attempts).await;
    assert_eq!(statuses.iter().filter(|s| **s < 300).count(), 1, "{statuses:?}");
    assert!(statuses.iter().filter(|s| **s >= 300).all(|s| *s == 409), "{statuses:?}");

    // Another key of the right shape: Azurite refuses the signature.
    let wrong = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(wrong.path().join("acme-azure")).unwrap();
    std::fs::write(wrong.path().join("acme-azure/accountKey"), "d3JvbmcgYnV0IHdlbGwtZm9ybWVkIGtleSBvZiAzMiBieXRlcw==")
        .unwrap();
    let config = data_a.path().join("wharf.yaml");
    let output = run(std::process::Command::new(env!("CARGO_BIN_EXE_wharf-registry"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--secrets-dir")
        .arg(wrong.path())
        .envs(env.iter().copied())
        .env("WHARF_ADMIN_TOKEN", ADMIN_TOKEN));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("storage refused the credentials of Secret \"acme-azure\""), "{stderr}");
}

/// A leaked token is stopped without rotating the Domain's key: revoked on
/// one replica, refused there at once and by the other replica within 5 s;
/// revoking a subject stops all its tokens issued so far; the listing shows
/// live tokens and never their secrets; only the admin may list or revoke.
#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_token_is_refused_by_every_replica_within_seconds() {
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let secrets = secrets_dir();
    let (data_a, data_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = replica(data_a.path(), secrets.path(), &s3.endpoint);
    let b = replica(data_b.path(), secrets.path(), &s3.endpoint);
    let client = reqwest::Client::new();
    let mint = |subject: &'static str| {
        let request = client
            .post(a.url("/api/v1/auth/token"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&serde_json::json!({"repositories": ["main"], "permissions": ["publish"], "subject": subject}))
            .send();
        async move {
            let reply: serde_json::Value = request.await.unwrap().json().await.unwrap();
            reply["token"].as_str().unwrap().to_owned()
        }
    };
    let (leaked, other, ci_one, ci_two) =
        (mint("laptop").await, mint("release").await, mint("ci").await, mint("ci").await);
    let publish = |server: &TestServer, token: &str, version: &str| {
        let body = format!("tool {version}");
        client
            .put(server.url(&format!("/generic/main/acme/tool/{version}/tool.txt")))
            .bearer_auth(token)
            .header("X-Checksum-Sha256", hex::encode(Sha256::digest(body.as_bytes())))
            .body(body)
            .send()
    };
    assert_eq!(publish(&b, &leaked, "1.0.0").await.unwrap().status(), 201);

    // The listing: every live token, no secret.
    let listing = client.get(a.url("/api/v1/auth/tokens")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(listing.status(), 200);
    let text = listing.text().await.unwrap();
    for token in [&leaked, &other, &ci_one, &ci_two] {
        assert!(!text.contains(token.as_str()), "the listing shows a token's secret");
    }
    let listing: serde_json::Value = serde_json::from_str(&text).unwrap();
    let tokens = listing["tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 4);
    let id = tokens.iter().find(|t| t["subject"] == "laptop").unwrap()["id"].as_str().unwrap().to_owned();

    // Neither anonymous callers nor registry tokens may list or revoke.
    assert_eq!(client.get(a.url("/api/v1/auth/tokens")).send().await.unwrap().status(), 401);
    let by_token = client.delete(a.url(&format!("/api/v1/auth/tokens/{id}"))).bearer_auth(&other).send().await.unwrap();
    assert_eq!(by_token.status(), 403);

    // Revoked on A: refused there at once, and by B within 5 s.
    let revoked =
        client.delete(a.url(&format!("/api/v1/auth/tokens/{id}"))).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(revoked.status(), 200);
    let at = Instant::now();
    let refused = publish(&a, &leaked, "1.0.1").await.unwrap();
    assert_eq!(refused.status(), 401);
    assert!(refused.text().await.unwrap().contains("was revoked"));
    loop {
        let status = publish(&b, &leaked, "1.0.2").await.unwrap().status();
        if status == 401 {
            break;
        }
        // Before B learned of it: the same file again is a 200.
        assert!(status == 201 || status == 200, "{status}");
        assert!(at.elapsed() < Duration::from_secs(5), "replica B still accepts the revoked token after 5 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("replica B refused the revoked token {:?} after the revocation", at.elapsed());
    assert_eq!(publish(&b, &other, "1.0.3").await.unwrap().status(), 201, "other tokens still work");
    let again =
        client.delete(a.url(&format!("/api/v1/auth/tokens/{id}"))).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(again.status(), 404);

    // A subject: both of its tokens, on both replicas; a new one works.
    let by_subject =
        client.delete(b.url("/api/v1/auth/tokens?subject=ci")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(by_subject.status(), 200);
    let by_subject: serde_json::Value = by_subject.json().await.unwrap();
    assert_eq!(by_subject["revoked"].as_array().unwrap().len(), 2);
    assert_eq!(publish(&b, &ci_one, "1.0.4").await.unwrap().status(), 401);
    let at = Instant::now();
    while publish(&a, &ci_two, "1.0.5").await.unwrap().status() != 401 {
        assert!(at.elapsed() < Duration::from_secs(5), "replica A still accepts the subject's token after 5 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fresh = mint("ci").await;
    assert_eq!(publish(&a, &fresh, "1.0.6").await.unwrap().status(), 201);
    let listing = b.live_tokens(Some("ci")).await;
    assert_eq!(listing["tokens"].as_array().unwrap().len(), 1, "{listing}");
}

/// The storage suite, the same on every backend: create-only probe, multipart staging
/// with ranges and deduplication, twenty concurrent creators, compare-and-swap
/// revisions, listings, purge, encryption by the registry and the collector. `open`
/// opens the backend under a key prefix, once per replica.
async fn storage_suite(open: impl Fn(&str) -> Storage) {
    use wharf_core::collect::CollectOptions;
    use wharf_core::{NewAsset, NewVersion, PackageId, Registry, VersionStatus};
    use wharf_storage::encryption::{EncryptedStore, KeyRing};

    let storage = open("suite");
    storage.verify_conditional_writes().await.unwrap();
    let blob = Bytes::from((0..12 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
    let digests =
        storage.stage_blob(chunks(&blob, 1024 * 1024), 64 * 1024 * 1024).await.unwrap().commit().await.unwrap();
    assert_eq!(read_all(&storage, &digests.sha256, digests.size, None).await, blob);
    let middle = 5 * 1024 * 1024 - 10..5 * 1024 * 1024 + 10;
    let range = read_all(&storage, &digests.sha256, digests.size, Some(middle.clone())).await;
    assert_eq!(range, blob[middle.start as usize..middle.end as usize]);
    let again = storage.stage_blob(chunks(&blob, 3 * 1024 * 1024), 64 * 1024 * 1024).await.unwrap();
    assert_eq!(again.commit().await.unwrap(), digests);
    assert_eq!(storage.list_children(&Path::from("blobs/sha256")).await.unwrap(), [&digests.sha256[..2]]);

    let replicas: Vec<Storage> = (0..4).map(|_| open("suite")).collect();
    let key = keys::version_record("main", "npm", "left-pad", "1.0.0");
    let attempts = (0..20).map(|i| {
        let (storage, key) = (replicas[i % replicas.len()].clone(), key.clone());
        async move { storage.create_json(&key, &format!("publisher {i}")).await.unwrap() }
    });
    let outcomes = futures::future::join_all(attempts).await;
    assert_eq!(outcomes.iter().filter(|o| matches!(o, Created::Created)).count(), 1, "one of twenty creators");
    let dir = keys::package_index("main", "npm", "left-pad");
    for revision in 1..=3u64 {
        let attempts = (0..20).map(|i| {
            let (storage, dir) = (replicas[i % replicas.len()].clone(), dir.clone());
            async move { storage.create_revision(&dir, revision, Bytes::from(format!("rev {revision} by {i}"))).await }
        });
        let won = futures::future::join_all(attempts).await.into_iter().filter(|r| *r.as_ref().unwrap()).count();
        assert_eq!(won, 1, "revision {revision}");
    }
    assert_eq!(replicas[3].latest_revision(&dir).await.unwrap().unwrap().0, 3);
    assert_eq!(storage.list_files(&dir).await.unwrap().len(), 3);
    assert_eq!(storage.purge(&keys::repository("main")).await.unwrap(), 4);
    // No object is left (SeaweedFS lists the emptied folders for a while; S3 does not).
    assert!(storage.list_objects(&keys::repository("main")).next().await.is_none());

    // Encrypted by the registry: what the store holds is ciphertext; ranges still open.
    let ring =
        || KeyRing::new("suite-keys".into(), "k1", vec![("k1".into(), Sha256::digest(b"suite key").to_vec())]).unwrap();
    let sealed = open("sealed").with_encryption(|inner| EncryptedStore::with_keys(inner, ring()));
    sealed.check_encryption().await.unwrap();
    assert_eq!(sealed.encryption().unwrap().unavailable(), None);
    let digests =
        sealed.stage_blob(chunks(&blob, 1024 * 1024), 64 * 1024 * 1024).await.unwrap().commit().await.unwrap();
    assert_eq!(read_all(&sealed, &digests.sha256, digests.size, Some(middle.clone())).await, range);
    assert_eq!(read_all(&sealed, &digests.sha256, digests.size, None).await, blob);
    let raw = open("sealed");
    let stored = raw.open_blob(&digests.sha256, u64::MAX, Some(0..8)).await.unwrap().unwrap();
    let head: Vec<Bytes> = stored.stream.try_collect().await.unwrap();
    assert_eq!(head.concat(), b"WHARFENC");

    // The collector frees a disposed version's bytes and keeps a published one's.
    let registry = Registry::new(sealed);
    let id = PackageId::new(wharf_api::PackageFormat::Npm, "pkg");
    let mut published = Vec::new();
    for (version, bytes) in [("1.0.0", "first tarball"), ("1.0.1", "second tarball")] {
        let staged = registry.stage_asset(chunks(&Bytes::from(bytes), 4), 1024).await.unwrap();
        let digests = staged.commit().await.unwrap();
        let asset =
            NewAsset { name: format!("pkg-{version}.tgz"), digests: digests.clone(), metadata: Default::default() };
        let new =
            NewVersion { version: version.into(), metadata: serde_json::json!({}), assets: vec![asset], tags: vec![] };
        registry.publish_version("main", &id, "pkg", new).await.unwrap();
        published.push(digests);
    }
    registry.set_status("main", &id, "1.0.0", None, VersionStatus::Disposed, "suite").await.unwrap();
    let options = CollectOptions { grace: Duration::ZERO, ..Default::default() };
    let report = registry.collect("suite", &options).await.unwrap().unwrap();
    assert_eq!(report.freed_blobs, 2, "the disposed version's and the unnamed one: {report:?}");
    assert!(registry.storage().head(&keys::blob(&published[0].sha256)).await.unwrap().is_none());
    assert!(registry.storage().head(&keys::blob(&published[1].sha256)).await.unwrap().is_some());
    assert!(registry.storage().head(&keys::blob(&digests.sha256)).await.unwrap().is_none(), "nothing named it");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_storage_suite_passes_on_seaweedfs() {
    let seaweed = SeaweedS3::start(BUCKET);
    let secrets = secrets_dir();
    storage_suite(|prefix| {
        open_storage(&s3_spec(&seaweed.endpoint, prefix), &SecretsDir::new(secrets.path())).unwrap()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_storage_suite_passes_on_azure() {
    let azurite = AzureEmulator::start();
    azurite.create_container(BUCKET);
    // Path-style, as Azurite serves it: the account is part of the endpoint.
    let store = Arc::new(
        object_store::azure::MicrosoftAzureBuilder::new()
            .with_account(&azurite.account)
            .with_access_key(&azurite.key)
            .with_container_name(BUCKET)
            .with_endpoint(format!("{}/{}", azurite.endpoint, azurite.account))
            .with_allow_http(true)
            .build()
            .unwrap(),
    );
    storage_suite(|prefix| {
        let scoped = object_store::prefix::PrefixStore::new(store.clone(), prefix);
        Storage::new(Arc::new(scoped))
    })
    .await;
}
