//! Encryption at rest by the registry (`spec.encryption.keySecretRef`), with real clients:
//! npm, twine and pip through a Domain on an S3-compatible server (moto), every object of
//! the bucket read raw afterwards; a key rotated and the data re-wrapped with
//! `wharf-registry storage rekey` while the registry serves; and a key removed too early,
//! which must make the registry unready (and a new one refuse to start), never serve
//! garbage.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::path::{Path as FsPath, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::{ObjectStore, ObjectStoreExt};
use sha2::{Digest, Sha256};
use support::*;

const BUCKET: &str = "wharf";
const KEYS: &str = "acme-keys";
/// Strings that stored records and metadata hold in the clear without encryption.
const MARKERS: [&str; 3] = ["\"@acme/sealed\"", "Name: sealed-demo", "ci-bot"];

const S3_CONFIG: &str = r#"apiVersion: wharf.dev/v1alpha1
kind: Domain
metadata: {name: acme}
spec:
  storage:
    s3:
      bucket: wharf
      prefix: acme
      region: us-east-1
      endpoint: "{endpoint}"
      allowHttp: true
      credentialsSecretRef: {name: acme-s3}
  encryption:
    keySecretRef: {name: acme-keys}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {name: main}
spec:
  domainRef: {name: acme}
  access: {read: [{kind: Anonymous}]}
"#;

/// A secrets folder with the S3 credentials and key `k1`, current.
fn secrets() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("acme-s3")).unwrap();
    std::fs::write(dir.path().join("acme-s3/accessKeyId"), "wharf-test-key\n").unwrap();
    std::fs::write(dir.path().join("acme-s3/secretAccessKey"), "wharf-test-secret\n").unwrap();
    add_key(dir.path(), "k1");
    set_current(dir.path(), "k1");
    dir
}

fn key_file(secrets: &FsPath, id: &str) -> PathBuf {
    secrets.join(KEYS).join(id)
}

fn add_key(secrets: &FsPath, id: &str) {
    std::fs::create_dir_all(secrets.join(KEYS)).unwrap();
    let key = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(format!("test key {id}")));
    std::fs::write(key_file(secrets, id), format!("{key}\n")).unwrap();
}

fn set_current(secrets: &FsPath, id: &str) {
    std::fs::write(key_file(secrets, "current"), id).unwrap();
}

fn start(data: &FsPath, secrets: &FsPath, config: &str) -> TestServer {
    TestServer::start_in(
        data,
        Some(config),
        &["--secrets-dir", &secrets.display().to_string(), "--key-refresh-interval", "1s"],
    )
}

/// Every object in the bucket, raw.
async fn raw_objects(endpoint: &str) -> Vec<(String, bytes::Bytes)> {
    let store = AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_bucket_name(BUCKET)
        .with_region("us-east-1")
        .with_access_key_id("wharf-test-key")
        .with_secret_access_key("wharf-test-secret")
        .with_allow_http(true)
        .build()
        .unwrap();
    let metas: Vec<_> = store.list(None).try_collect().await.unwrap();
    let mut objects = Vec::new();
    for meta in metas {
        let bytes = store.get(&meta.location).await.unwrap().bytes().await.unwrap();
        objects.push((meta.location.to_string(), bytes));
    }
    objects
}

/// The key fingerprints in the headers of the encrypted objects; asserts that every
/// object is encrypted and that none shows a marker.
fn fingerprints(objects: &[(String, bytes::Bytes)]) -> BTreeSet<Vec<u8>> {
    let mut prints = BTreeSet::new();
    for (key, bytes) in objects {
        if key.starts_with("acme/encryption/rewrapped/") {
            continue;
        }
        assert!(bytes.starts_with(b"WHARFENC"), "{key} is stored in the clear");
        for marker in MARKERS {
            assert!(!bytes.windows(marker.len()).any(|w| w == marker.as_bytes()), "{key} shows {marker}");
        }
        prints.insert(bytes[12..28].to_vec());
    }
    prints
}

fn publish_npm(ws: &Workspace, server: &TestServer, token: &str, version: &str) {
    let dir = format!("pkg-{version}");
    ws.write(
        &format!("{dir}/package.json"),
        &serde_json::json!({"name": "@acme/sealed", "version": version, "main": "index.js"}).to_string(),
    );
    ws.write(&format!("{dir}/index.js"), &format!("module.exports = 'sealed {version}';\n"));
    write_npmrc(ws, &dir, server, "main", Some(token));
    run_ok(npm(ws, &dir).args(["publish", "--access", "public"]));
}

/// Installs `@acme/sealed@version` and the wheel into fresh folders; what they say.
fn install(ws: &Workspace, server: &TestServer, tag: &str, version: &str) -> (String, String) {
    let app = format!("app-{tag}");
    ws.write(&format!("{app}/package.json"), r#"{"name":"app","version":"1.0.0","private":true}"#);
    write_npmrc(ws, &app, server, "main", None);
    run_ok(npm(ws, &app).args(["install", "--prefer-online", &format!("@acme/sealed@{version}")]));
    let js = std::fs::read_to_string(ws.path(&format!("{app}/node_modules/@acme/sealed/index.js"))).unwrap();
    let site = ws.path(&format!("site-{tag}"));
    run_ok(
        ws.command(venv_bin(&python_tools(), "pip"), ".")
            .args(["install", "--no-deps", "--no-cache-dir", "--target"])
            .arg(&site)
            .args(["--index-url", &server.url("/pypi/main/simple/"), "sealed-demo"]),
    );
    let python = std::fs::read_to_string(site.join("sealed_demo/__init__.py")).unwrap();
    (js, python)
}

fn wait_for_log(server: &TestServer, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server.log_lines().iter().any(|line| line.contains(text)) {
        assert!(Instant::now() < deadline, "the registry never logged {text:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_encrypted_domain_serves_real_clients_stores_nothing_readable_and_rotates_live() {
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let secrets = secrets();
    let data = tempfile::tempdir().unwrap();
    let config = S3_CONFIG.replace("{endpoint}", &s3.endpoint);
    let server = start(data.path(), secrets.path(), &config);
    let token = server.token(&["main"], &["read", "publish"]).await;
    let ws = Workspace::new();
    publish_npm(&ws, &server, &token, "1.0.0");
    let wheel = ws.path("sealed_demo-1.0.0-py3-none-any.whl");
    write_wheel(&wheel, "sealed-demo", "1.0.0", "SEALED = 'wheel'\n");
    run_ok(
        ws.command(venv_bin(&python_tools(), "twine"), ".")
            .args(["upload", "--non-interactive", "--disable-progress-bar", "--repository-url"])
            .arg(server.url("/pypi/main/"))
            .args(["-u", "__token__", "-p", &token])
            .arg(&wheel),
    );
    let installed = install(&ws, &server, "first", "1.0.0");
    assert_eq!(installed, ("module.exports = 'sealed 1.0.0';\n".into(), "SEALED = 'wheel'\n".into()));

    // A Range request opens only the segments it needs and answers exactly those bytes.
    let client = reqwest::Client::new();
    let tarball = server.url("/npm/main/@acme/sealed/-/sealed-1.0.0.tgz");
    let whole = client.get(&tarball).send().await.unwrap().bytes().await.unwrap();
    let part = client.get(&tarball).header("Range", "bytes=10-99").send().await.unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.bytes().await.unwrap(), whole.slice(10..100));

    let before = fingerprints(&raw_objects(&s3.endpoint).await);
    assert_eq!(before.len(), 1, "one key so far");

    // Rotation on the live registry: k2 seals what comes next, k1 still opens the rest.
    add_key(secrets.path(), "k2");
    set_current(secrets.path(), "k2");
    wait_for_log(&server, "encryption keys changed");
    publish_npm(&ws, &server, &token, "1.0.1");
    let rotated = fingerprints(&raw_objects(&s3.endpoint).await);
    assert_eq!(rotated.len(), 2, "new writes use the new key");

    // Rekey while serving, then retire k1: everything still opens, here and in a new replica.
    let rekey = run_ok(
        std::process::Command::new(env!("CARGO_BIN_EXE_wharf-registry"))
            .args(["storage", "rekey", "--config"])
            .arg(data.path().join("wharf.yaml"))
            .arg("--secrets-dir")
            .arg(secrets.path()),
    );
    let said = text(&rekey);
    assert!(said.contains("every object opens with key \"k2\""), "{said}");
    std::fs::remove_file(key_file(secrets.path(), "k1")).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(http_status(&server.url("/readyz")).unwrap(), 200);
    let later = Workspace::new();
    assert_eq!(install(&later, &server, "after", "1.0.0").0, "module.exports = 'sealed 1.0.0';\n");
    let fresh_data = tempfile::tempdir().unwrap();
    let fresh = start(fresh_data.path(), secrets.path(), &config);
    assert_eq!(
        install(&later, &fresh, "fresh", "1.0.1"),
        ("module.exports = 'sealed 1.0.1';\n".into(), "SEALED = 'wheel'\n".into())
    );
    // Data was never rewritten: the old objects still name k1 in their headers.
    assert_eq!(fingerprints(&raw_objects(&s3.endpoint).await), rotated);
}

/// The folder Domain of the other tests, encrypted.
fn encrypted_folder_config() -> String {
    ACME_ON_A_FOLDER.replace(
        "    filesystem: {path: \"{data}\"}\n",
        "    filesystem: {path: \"{data}\"}\n  encryption:\n    keySecretRef: {name: acme-keys}\n",
    )
}

fn serve_command(data: &FsPath, secrets: &FsPath) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_wharf-registry"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(data.join("wharf.yaml"))
        .arg("--secrets-dir")
        .arg(secrets)
        .env("WHARF_ADMIN_TOKEN", ADMIN_TOKEN);
    command
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_removed_before_rekey_makes_the_registry_unready_and_stops_a_new_one() {
    let secrets = tempfile::tempdir().unwrap();
    add_key(secrets.path(), "k1");
    set_current(secrets.path(), "k1");
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path(), secrets.path(), &encrypted_folder_config());
    let token = server.token(&["main"], &["read", "publish"]).await;
    let client = reqwest::Client::new();
    let file = server.url("/generic/main/acme/notes/1.0.0/notes.txt");
    let body = "a file only the key can read";
    let put = client
        .put(&file)
        .bearer_auth(&token)
        .header("X-Checksum-Sha256", hex::encode(Sha256::digest(body)))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    for path in files_under(&data.path().join("store")) {
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.starts_with(b"WHARFENC"), "{} is stored in the clear", path.display());
        assert!(!bytes.windows(body.len()).any(|w| w == body.as_bytes()), "{}", path.display());
    }

    // k1 replaced by k2 without a rekey: not ready, writes refused, what is stored is
    // still served with the keys that open it.
    add_key(secrets.path(), "k2");
    set_current(secrets.path(), "k2");
    std::fs::remove_file(key_file(secrets.path(), "k1")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_status(&server.url("/readyz")).unwrap() != 503 {
        assert!(Instant::now() < deadline, "the registry stayed ready without the key that opens its data");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        server.log_lines().iter().any(|line| line.contains("acme-keys") && line.contains("rekey")),
        "the log names the Secret and what to do"
    );
    assert_eq!(client.get(&file).send().await.unwrap().text().await.unwrap(), body);
    let refused = client
        .put(server.url("/generic/main/acme/notes/1.0.1/notes.txt"))
        .bearer_auth(&token)
        .header("X-Checksum-Sha256", hex::encode(Sha256::digest("a write under an unchecked key")))
        .body("a write under an unchecked key")
        .send()
        .await
        .unwrap();
    assert!(refused.status().is_server_error(), "{}", refused.status());
    server.terminate();

    // A new registry without k1 does not start, and says why.
    let output = run(&mut serve_command(data.path(), secrets.path()));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Secret \"acme-keys\"") && stderr.contains("does not hold"), "{stderr}");

    // A Domain that was encrypted refuses to start without `encryption`.
    let plain = ACME_ON_A_FOLDER;
    std::fs::write(
        data.path().join("wharf.yaml"),
        plain.replace("{data}", &data.path().join("store").display().to_string()),
    )
    .unwrap();
    let output = run(&mut serve_command(data.path(), secrets.path()));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("names no encryption key"), "{stderr}");
}
