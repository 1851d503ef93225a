//! The real `go` command against the real registry binary: module zips
//! published with `PUT …/@v/{version}.zip`, then `go get`, `go build`,
//! `go mod verify`, `go list -m -versions` and `go mod download` through
//! `GOPROXY`; the `h1:` lines go writes to go.sum match what the registry
//! serves; retracted versions are skipped; a private repository needs the
//! token in the `GOPROXY` URL, which the go command sends only over https
//! (the registry serves it itself, `--tls-cert`).
#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;
use std::process::Command;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};
use support::*;

const PRIVATE_CONFIG: &str = r#"
apiVersion: wharf.dev/v1alpha1
kind: Domain
metadata: {name: acme}
spec:
  storage: {filesystem: {path: "{data}"}}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {name: private}
spec:
  domainRef: {name: acme}
"#;

/// Has an uppercase letter, so every request exercises `!` escaping.
const GREET: &str = "example.internal/Acme/greet";

/// A module zip as the go command lays it out: `{module}@{version}/…`.
fn module_zip(path: &str, version: &str, go_mod_extra: &str, code: &str) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default();
    zip.start_file(format!("{path}@{version}/go.mod"), options).unwrap();
    write!(zip, "module {path}\n\ngo 1.21\n{go_mod_extra}").unwrap();
    zip.start_file(format!("{path}@{version}/greet.go"), options).unwrap();
    zip.write_all(code.as_bytes()).unwrap();
    zip.finish().unwrap().into_inner()
}

fn greet_code(version: &str) -> String {
    format!(
        "package greet\n\n// Hello names the version that answers.\nfunc Hello() string {{ return \"hello from {version}\" }}\n"
    )
}

async fn publish(server: &TestServer, repo: &str, path: &str, version: &str, zip: Vec<u8>, token: &str) {
    let escaped = wharf_formats::go::escape(path);
    let response = server
        .client
        .put(server.url(&format!("/go/{repo}/{escaped}/@v/{version}.zip")))
        .bearer_auth(token)
        .body(zip)
        .send()
        .await
        .unwrap();
    let status = response.status();
    assert_eq!(status, 201, "publish {path}@{version}: {}", response.text().await.unwrap());
}

async fn fetch(server: &TestServer, repo: &str, path: &str, file: &str) -> Vec<u8> {
    let escaped = wharf_formats::go::escape(path);
    let response = reqwest::get(server.url(&format!("/go/{repo}/{escaped}/@v/{file}"))).await.unwrap();
    assert_eq!(response.status(), 200, "{file}");
    response.bytes().await.unwrap().to_vec()
}

/// `go` with everything isolated in the workspace: module cache, build
/// cache, GOPATH, no checksum database, no toolchain downloads, and none of
/// the machine's GO* settings.
fn go(ws: &Workspace, dir: &str, proxy: &str) -> Command {
    let mut command = ws.command("go", dir);
    for (key, _) in std::env::vars() {
        if key.starts_with("GO") {
            command.env_remove(key);
        }
    }
    command
        .env("GOENV", "off")
        .env("GOPATH", ws.path("gopath"))
        .env("GOMODCACHE", ws.path("gomodcache"))
        .env("GOCACHE", ws.path("gocache"))
        .env("GOFLAGS", "-modcacherw")
        .env("GOPROXY", proxy)
        .env("GOSUMDB", "off")
        .env("GONOSUMDB", "example.internal")
        .env("GOTOOLCHAIN", "local");
    command
}

fn proxy_url(server: &TestServer, repo: &str) -> String {
    format!("http://127.0.0.1:{}/go/{repo}", server.port)
}

/// A module that calls `greet.Hello`. `println` keeps the cold build small
/// (no fmt or os to compile into the fresh build cache).
fn consumer(ws: &Workspace, dir: &str) {
    ws.write(&format!("{dir}/go.mod"), "module example.internal/app\n\ngo 1.21\n");
    ws.write(
        &format!("{dir}/main.go"),
        &format!("package main\n\nimport \"{GREET}\"\n\nfunc main() {{ println(greet.Hello()) }}\n"),
    );
}

/// dirhash `h1:`: SHA-256 over the lines "{sha256 hex}  {name}\n" sorted
/// by name, base64. Written here independently of the registry's own.
fn hash1(mut files: Vec<(String, Vec<u8>)>) -> String {
    files.sort();
    let mut summary = Sha256::new();
    for (name, data) in files {
        summary.update(format!("{}  {name}\n", hex::encode(Sha256::digest(&data))));
    }
    format!("h1:{}", STANDARD.encode(summary.finalize()))
}

fn zip_hash(zip: &[u8]) -> String {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).unwrap();
    let mut files = Vec::new();
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).unwrap();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        files.push((entry.name().to_owned(), data));
    }
    hash1(files)
}

/// The go.sum line for `{path} {version}` (or `{version}/go.mod`).
fn go_sum_hash(go_sum: &str, path: &str, version: &str) -> String {
    go_sum
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            (fields.next() == Some(path) && fields.next() == Some(version)).then(|| fields.next().unwrap().to_owned())
        })
        .unwrap_or_else(|| panic!("no go.sum line for {path} {version}:\n{go_sum}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn go_get_build_verify_and_skip_retracted() {
    let server = TestServer::start();
    let token = server.token(&["main"], &["read", "publish"]).await;
    for version in ["v1.0.0", "v1.1.0"] {
        publish(&server, "main", GREET, version, module_zip(GREET, version, "", &greet_code(version)), &token).await;
    }
    let ws = Workspace::new();
    // `main` is anonymously readable: plain http, no credentials.
    let proxy = proxy_url(&server, "main");

    // go get resolves @latest through @v/list, go build links it.
    consumer(&ws, "app");
    run_ok(go(&ws, "app", &proxy).args(["get", &format!("{GREET}@latest")]));
    let go_mod = std::fs::read_to_string(ws.path("app/go.mod")).unwrap();
    assert!(go_mod.contains(&format!("require {GREET} v1.1.0")), "{go_mod}");
    run_ok(go(&ws, "app", &proxy).args(["build", "-o", "app", "."]));
    let ran = run_ok(&mut Command::new(ws.path("app/app")));
    assert_eq!(String::from_utf8_lossy(&ran.stderr).trim(), "hello from v1.1.0");

    // go.sum holds what the registry serves, hashed as go does.
    let go_sum = std::fs::read_to_string(ws.path("app/go.sum")).unwrap();
    let served_zip = fetch(&server, "main", GREET, "v1.1.0.zip").await;
    let served_mod = fetch(&server, "main", GREET, "v1.1.0.mod").await;
    assert_eq!(go_sum_hash(&go_sum, GREET, "v1.1.0"), zip_hash(&served_zip));
    assert_eq!(go_sum_hash(&go_sum, GREET, "v1.1.0/go.mod"), hash1(vec![("go.mod".into(), served_mod)]));
    let verified = run_ok(go(&ws, "app", &proxy).args(["mod", "verify"]));
    assert!(text(&verified).contains("all modules verified"), "{}", text(&verified));

    // v1.2.0 retracts v1.1.0 and itself: the go command lists neither and
    // resolves @latest to v1.0.0 in a fresh module.
    let retract = "\nretract [v1.1.0, v1.2.0] // v1.1.0 greets the wrong way\n";
    publish(&server, "main", GREET, "v1.2.0", module_zip(GREET, "v1.2.0", retract, &greet_code("v1.2.0")), &token)
        .await;
    // The registry leaves them out of @v/list itself (had it listed them,
    // the go command would hide them after reading v1.2.0's go.mod).
    assert_eq!(fetch(&server, "main", GREET, "list").await, b"v1.0.0\n");
    let versions = run_ok(go(&ws, ".", &proxy).args(["list", "-m", "-versions", GREET]));
    assert_eq!(String::from_utf8_lossy(&versions.stdout).trim(), format!("{GREET} v1.0.0"));
    consumer(&ws, "fresh");
    run_ok(go(&ws, "fresh", &proxy).args(["get", &format!("{GREET}@latest")]));
    let go_mod = std::fs::read_to_string(ws.path("fresh/go.mod")).unwrap();
    assert!(go_mod.contains(&format!("require {GREET} v1.0.0")), "{go_mod}");
    run_ok(go(&ws, "fresh", &proxy).args(["build", "-o", "app", "."]));
    let ran = run_ok(&mut Command::new(ws.path("fresh/app")));
    assert_eq!(String::from_utf8_lossy(&ran.stderr).trim(), "hello from v1.0.0");

    // A retracted version is still there for builds that pin it.
    let download = run_ok(go(&ws, ".", &proxy).args(["mod", "download", "-json", &format!("{GREET}@v1.2.0")]));
    let info: serde_json::Value = serde_json::from_slice(&download.stdout).unwrap();
    assert_eq!(info["Version"], "v1.2.0");
    assert!(info.get("Error").is_none(), "{info}");
    assert_eq!(
        std::fs::read(info["Zip"].as_str().unwrap()).unwrap(),
        fetch(&server, "main", GREET, "v1.2.0.zip").await
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn go_private_repository_needs_credentials() {
    let ca = TestCa::new();
    let server = TestServer::start_tls(Some(PRIVATE_CONFIG), &ca, &[]);
    let publisher = server.token(&["private"], &["publish"]).await;
    let reader = server.token(&["private"], &["read"]).await;
    let path = "example.internal/secret";
    let zip = module_zip(path, "v0.1.0", "", "package secret\n");
    publish(&server, "private", path, "v0.1.0", zip.clone(), &publisher).await;
    let ws = Workspace::new();

    let download_args = ["mod", "download", "-json", "example.internal/secret@v0.1.0"];
    // The go command keeps credentials off plain http, whatever the host.
    let over_http = format!("http://gopher:{reader}@127.0.0.1:{}/go/private", server.port);
    let refused = run(go(&ws, ".", &over_http).args(download_args));
    assert!(text(&refused).contains("refusing to pass credentials to insecure URL"), "{}", text(&refused));

    // Over the registry's own https it sends the URL's user information as Basic
    // credentials.
    let over_https = |token: Option<&str>| {
        let userinfo = token.map(|t| format!("gopher:{t}@")).unwrap_or_default();
        let mut command = go(&ws, ".", &format!("https://{userinfo}127.0.0.1:{}/go/private", server.port));
        command.env("SSL_CERT_FILE", &ca.authority);
        command
    };
    let anonymous = run(over_https(None).args(["list", "-m", "-versions", path]));
    let refusal = text(&anonymous);
    assert!(refusal.contains("401") && refusal.contains("authentication required for repository private"), "{refusal}");
    let versions = run_ok(over_https(Some(&reader)).args(["list", "-m", "-versions", path]));
    assert_eq!(String::from_utf8_lossy(&versions.stdout).trim(), format!("{path} v0.1.0"));
    let download = run_ok(over_https(Some(&reader)).args(download_args));
    let info: serde_json::Value = serde_json::from_slice(&download.stdout).unwrap();
    assert_eq!(std::fs::read(info["Zip"].as_str().unwrap()).unwrap(), zip, "the published bytes, unchanged");
    assert_eq!(info["Sum"], zip_hash(&zip));

    // A read token cannot publish.
    let refused = server
        .client
        .put(server.url(&format!("/go/private/{path}/@v/v0.2.0.zip")))
        .bearer_auth(&reader)
        .body(module_zip(path, "v0.2.0", "", "package secret\n"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn go_builds_from_a_private_repository_after_wharf_login() {
    let ca = TestCa::new();
    let server = TestServer::start_tls(Some(PRIVATE_CONFIG), &ca, &[]);
    let publisher = server.token(&["private"], &["publish"]).await;
    publish(&server, "private", GREET, "v1.0.0", module_zip(GREET, "v1.0.0", "", &greet_code("v1.0.0")), &publisher)
        .await;
    let registry = server.base.clone();
    let ws = Workspace::new();
    ws.write("home/.config/go/env", "GOFLAGS=-modcacherw\n");
    let wharf = |verb: &str| {
        let mut command = ws.command(wharf_bin(), ".");
        command
            .args([verb, "--tool", "go", "--registry", &registry, "--repository", "private"])
            .args(["--private-modules", "example.internal/*"])
            .env("WHARF_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("SSL_CERT_FILE", &ca.authority);
        command
    };
    run_ok(&mut wharf("login"));

    // The go command with nothing but its user files (no GO* variable but the caches'):
    // GOPROXY, GONOSUMDB and the token in ~/.netrc are what login wrote.
    let go_as_user = |dir: &str| {
        let mut command = go(&ws, dir, "unused");
        for key in ["GOENV", "GOPROXY", "GOSUMDB", "GONOSUMDB", "GOFLAGS"] {
            command.env_remove(key);
        }
        command.env("SSL_CERT_FILE", &ca.authority);
        command
    };
    let proxy = run_ok(go_as_user(".").args(["env", "GOPROXY", "GONOSUMDB"]));
    let proxy = String::from_utf8_lossy(&proxy.stdout).into_owned();
    assert!(proxy.starts_with(&format!("{registry}/go/private,")), "{proxy}");
    assert!(proxy.contains("example.internal/*"), "{proxy}");
    consumer(&ws, "app");
    run_ok(go_as_user("app").args(["get", &format!("{GREET}@v1.0.0")]));
    let built = run_ok(go_as_user("app").args(["run", "."]));
    assert_eq!(text(&built).trim(), "hello from v1.0.0");

    run_ok(&mut wharf("logout"));
    assert_eq!(
        std::fs::read_to_string(ws.path("home/.config/go/env")).unwrap(),
        "GOFLAGS=-modcacherw\nGONOSUMDB=example.internal/*\n"
    );
    assert_eq!(std::fs::read_to_string(ws.path("home/.netrc")).unwrap(), "");
}
