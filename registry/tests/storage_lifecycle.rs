//! The storage lifecycle with real clients: a Disposed version's bytes are freed by the
//! collector (`wharf-registry storage gc`, and the registry's own runs) unless another
//! version in the Domain names the same bytes; a version deleted for a takedown keeps its
//! number taken (or not, on request); nothing a client can still install loses its bytes.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path as FsPath;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use support::*;

fn blob_file(data: &FsPath, sha256: &str) -> std::path::PathBuf {
    data.join("store/blobs/sha256").join(&sha256[..2]).join(sha256)
}

/// A version of Repository `main` as the management API describes it.
async fn version_of(server: &TestServer, format: &str, package: &str, version: &str) -> serde_json::Value {
    let package = package.replace('/', "%2F");
    let url = server.url(&format!("/api/v1/repositories/main/packages/{format}/{package}/versions/{version}"));
    let response = reqwest::Client::new().get(url).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn sha256_of(server: &TestServer, format: &str, package: &str, version: &str) -> String {
    version_of(server, format, package, version).await["assets"][0]["sha256"].as_str().unwrap().to_owned()
}

async fn status_of(server: &TestServer, format: &str, package: &str, version: &str) -> String {
    version_of(server, format, package, version).await["status"].as_str().unwrap().to_owned()
}

async fn put_generic(server: &TestServer, token: &str, version: &str, body: &'static str) -> reqwest::StatusCode {
    reqwest::Client::new()
        .put(server.url(&format!("/generic/main/acme/tool/{version}/tool.bin")))
        .bearer_auth(token)
        .header("X-Checksum-Sha256", hex::encode(Sha256::digest(body)))
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
}

fn gc(data: &FsPath, args: &[&str]) -> String {
    let output = run_ok(
        std::process::Command::new(env!("CARGO_BIN_EXE_wharf-registry"))
            .args(["storage", "gc", "--config"])
            .arg(data.join("wharf.yaml"))
            .args(args),
    );
    text(&output)
}

/// Publishes `name@version` with npm from its own folder, `pkg-{version}`.
fn publish_npm(ws: &Workspace, server: &TestServer, token: &str, name: &str, version: &str) {
    let dir = format!("pkg-{version}");
    ws.write(
        &format!("{dir}/package.json"),
        &serde_json::json!({"name": name, "version": version, "main": "index.js"}).to_string(),
    );
    ws.write(&format!("{dir}/index.js"), &format!("module.exports = '{version}';\n"));
    write_npmrc(ws, &dir, server, "main", Some(token));
    run_ok(npm(ws, &dir).args(["publish", "--access", "public"]));
}

/// A Repository's cleanup rule: previewed by `storage gc --dry-run`, carried out by the
/// collection, the newest version (and whatever a tag points at) kept.
#[tokio::test(flavor = "multi_thread")]
async fn cleanup_rules_dispose_what_they_select_after_a_preview() {
    let data = tempfile::tempdir().unwrap();
    let config =
        format!("{ACME_ON_A_FOLDER}  cleanup: [{{name: keep-newest, packages: [\"/npm/acme/*\"], keepNewest: 1}}]\n");
    let server = TestServer::start_in(data.path(), Some(&config), &["--gc-interval", "1h"]);
    let token = server.token(&["main"], &["read", "publish"]).await;
    let ws = Workspace::new();
    for version in ["1.0.0", "1.1.0", "1.2.0"] {
        publish_npm(&ws, &server, &token, "@acme/tidy", version);
    }
    let oldest = sha256_of(&server, "npm", "@acme/tidy", "1.0.0").await;

    let preview = gc(data.path(), &["--dry-run", "--grace", "0s"]);
    for version in ["1.0.0", "1.1.0"] {
        let line = format!("would dispose of npm @acme/tidy {version} in Repository \"main\" (rule keep-newest)");
        assert!(preview.contains(&line), "{preview}");
    }
    assert!(!preview.contains("1.2.0"), "{preview}");
    assert!(preview.contains("would free 2 of 3 blobs"), "{preview}");
    let status = |version: &'static str| status_of(&server, "npm", "@acme/tidy", version);
    assert_eq!(status("1.0.0").await, "Published", "a preview changes nothing");

    // The registry's own collection carries the rules out; a dispose starts one at once.
    let put = reqwest::Client::new()
        .put(server.url("/generic/main/acme/scratch/1.0.0/scratch.txt"))
        .bearer_auth(&token)
        .header("X-Checksum-Sha256", hex::encode(Sha256::digest("scratch")))
        .body("scratch")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    assert_eq!(server.set_status("main", "generic", "acme/scratch", "1.0.0", "Disposed", &token).await.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    while status("1.1.0").await != "Disposed" {
        assert!(Instant::now() < deadline, "the registry did not carry out its cleanup rules");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        (status("1.0.0").await, status("1.1.0").await, status("1.2.0").await),
        ("Disposed".to_owned(), "Disposed".to_owned(), "Published".to_owned())
    );
    // Younger than the registry's grace period, the bytes stay for the command to free.
    assert!(blob_file(data.path(), &oldest).exists());
    let freed = gc(data.path(), &["--grace", "0s"]);
    assert!(freed.contains("freed 3 of"), "two tarballs and the scratch file: {freed}");
    assert!(!blob_file(data.path(), &oldest).exists());
    ws.write("app/package.json", r#"{"name":"app","version":"1.0.0","private":true}"#);
    write_npmrc(&ws, "app", &server, "main", None);
    run_ok(npm(&ws, "app").args(["install", "@acme/tidy@^1"]));
    assert_eq!(
        std::fs::read_to_string(ws.path("app/node_modules/@acme/tidy/index.js")).unwrap(),
        "module.exports = '1.2.0';\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn disposed_bytes_are_freed_shared_bytes_stay_and_deleted_versions_stay_taken() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(data.path(), Some(ACME_ON_A_FOLDER), &["--gc-interval", "1h"]);
    let token = server.token(&["main"], &["read", "publish"]).await;
    let ws = Workspace::new();
    for version in ["1.0.0", "1.1.0"] {
        publish_npm(&ws, &server, &token, "@acme/life", version);
    }
    // Two generic versions of identical bytes: stored once.
    for version in ["1.0.0", "1.0.1"] {
        assert_eq!(put_generic(&server, &token, version, "the same build twice").await, 201);
    }
    let old_tarball = sha256_of(&server, "npm", "@acme/life", "1.0.0").await;
    let shared = sha256_of(&server, "generic", "acme/tool", "1.0.0").await;
    assert_eq!(sha256_of(&server, "generic", "acme/tool", "1.0.1").await, shared);

    // Disposed: the registry's own collection runs at once, and keeps bytes younger than
    // its grace period (a publish may be about to name them).
    assert_eq!(server.set_status("main", "npm", "@acme/life", "1.0.0", "Disposed", &token).await.status(), 200);
    assert_eq!(server.set_status("main", "generic", "acme/tool", "1.0.0", "Disposed", &token).await.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server.log_lines().iter().any(|line| line.contains("storage collected")) {
        assert!(Instant::now() < deadline, "the registry did not collect after a dispose");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(blob_file(data.path(), &old_tarball).exists(), "recent bytes stay for the grace period");

    // The command: a dry run names what would go; the run frees it, and only it.
    let dry = gc(data.path(), &["--dry-run", "--grace", "0s"]);
    assert!(dry.contains(&format!("would free blob {old_tarball}")) && !dry.contains(&shared), "{dry}");
    assert!(blob_file(data.path(), &old_tarball).exists());
    // One collection at a time: the command waits for one running (here, a lease whose
    // holder stopped without giving it back) and gives up after --wait.
    let expires = chrono::Utc::now() + chrono::Duration::seconds(3);
    let lease = serde_json::json!({"holder": "registry-0/7", "expires": expires});
    std::fs::create_dir_all(data.path().join("store/leases")).unwrap();
    std::fs::write(data.path().join("store/leases/gc.json"), lease.to_string()).unwrap();
    let refused = run(std::process::Command::new(env!("CARGO_BIN_EXE_wharf-registry"))
        .args(["storage", "gc", "--config"])
        .arg(data.path().join("wharf.yaml"))
        .args(["--grace", "0s", "--wait", "0s"]));
    assert!(!refused.status.success());
    assert!(text(&refused).contains("registry-0/7") && text(&refused).contains("--wait"), "{}", text(&refused));
    let freed = gc(data.path(), &["--grace", "0s"]);
    assert!(freed.contains("freed 1 of"), "{freed}");
    assert!(!blob_file(data.path(), &old_tarball).exists());
    assert!(blob_file(data.path(), &shared).exists(), "1.0.1 still names the shared bytes");
    let shared_file = reqwest::get(server.url("/generic/main/acme/tool/1.0.1/tool.bin")).await.unwrap();
    assert_eq!(shared_file.text().await.unwrap(), "the same build twice");

    // npm installs what is left, and not the disposed version.
    let app = "app";
    ws.write(&format!("{app}/package.json"), r#"{"name":"app","version":"1.0.0","private":true}"#);
    write_npmrc(&ws, app, &server, "main", None);
    run_ok(npm(&ws, app).args(["install", "@acme/life@^1"]));
    let installed = std::fs::read_to_string(ws.path("app/node_modules/@acme/life/index.js")).unwrap();
    assert_eq!(installed, "module.exports = '1.1.0';\n");
    assert!(!run(npm(&ws, app).args(["install", "@acme/life@1.0.0"])).status.success());

    // A takedown: administrators only; the number stays taken unless reuse is allowed.
    let client = reqwest::Client::new();
    let delete = |query: &'static str, bearer: String| {
        let url = server.url(&format!("/api/v1/repositories/main/packages/npm/@acme%2Flife/versions/1.1.0{query}"));
        client.delete(url).bearer_auth(bearer).send()
    };
    let refused = delete("", token.clone()).await.unwrap();
    assert_eq!(refused.status(), 403);
    assert!(refused.text().await.unwrap().contains("administrators"));
    assert_eq!(delete("", ADMIN_TOKEN.to_owned()).await.unwrap().status(), 200);
    let republish = run(npm(&ws, "pkg-1.1.0").args(["publish", "--access", "public"]));
    assert!(!republish.status.success());
    assert!(text(&republish).contains("409"), "npm's own wording for a number taken: {}", text(&republish));
    let generic = server.url("/api/v1/repositories/main/packages/generic/acme%2Ftool/versions/1.0.1?allowReuse=true");
    assert_eq!(client.delete(generic).bearer_auth(ADMIN_TOKEN).send().await.unwrap().status(), 200);
    assert_eq!(put_generic(&server, &token, "1.0.1", "a new build under a reused number").await, 201);
    let freed = gc(data.path(), &["--grace", "0s"]);
    assert!(freed.contains("freed 2 of"), "the 1.1.0 tarball and the old shared bytes: {freed}");
    assert!(!blob_file(data.path(), &shared).exists());
}

/// An npm upstream of fixed files (`/oldlib`, `/oldlib/-/oldlib-1.0.0.tgz`, …) whose versions
/// were published long ago; stopped on drop.
struct OldUpstream {
    child: std::process::Child,
    port: u16,
    _files: tempfile::TempDir,
}

impl OldUpstream {
    /// Serves `oldlib` 1.0.0 and 1.1.0, both published in 2020, packed by npm.
    fn start(ws: &Workspace) -> OldUpstream {
        let files = tempfile::tempdir().unwrap();
        let script = "import http.server, os, sys\n\
            root = sys.argv[1]\n\
            class Files(http.server.BaseHTTPRequestHandler):\n\
            \x20   def do_GET(self):\n\
            \x20       name = self.path.split('?')[0].strip('/').replace('/', '_')\n\
            \x20       try:\n\
            \x20           body = open(os.path.join(root, name), 'rb').read()\n\
            \x20       except OSError:\n\
            \x20           self.send_error(404)\n\
            \x20           return\n\
            \x20       self.send_response(200)\n\
            \x20       self.send_header('Content-Length', str(len(body)))\n\
            \x20       self.end_headers()\n\
            \x20       self.wfile.write(body)\n\
            \x20   def log_message(self, *args):\n\
            \x20       pass\n\
            server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Files)\n\
            print(server.server_address[1], flush=True)\n\
            server.serve_forever()\n";
        let mut child = std::process::Command::new("python3")
            .args(["-c", script])
            .arg(files.path())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
        let port: u16 = line.trim().parse().unwrap();
        let mut versions = serde_json::Map::new();
        for version in ["1.0.0", "1.1.0"] {
            let dir = format!("oldlib-{version}");
            ws.write(&format!("{dir}/package.json"), &format!(r#"{{"name":"oldlib","version":"{version}"}}"#));
            ws.write(&format!("{dir}/index.js"), &format!("module.exports = '{version}';\n"));
            let packed = run_ok(npm(ws, &dir).args(["pack", "--json"]));
            let packed: serde_json::Value = serde_json::from_slice(&packed.stdout).unwrap();
            let file = format!("oldlib-{version}.tgz");
            std::fs::copy(ws.path(&format!("{dir}/{file}")), files.path().join(format!("oldlib_-_{file}"))).unwrap();
            versions.insert(
                version.to_owned(),
                serde_json::json!({"name": "oldlib", "version": version, "dist": {
                    "tarball": format!("http://127.0.0.1:{port}/oldlib/-/{file}"),
                    "shasum": packed[0]["shasum"], "integrity": packed[0]["integrity"]}}),
            );
        }
        let packument = serde_json::json!({"name": "oldlib", "versions": versions, "dist-tags": {"latest": "1.1.0"},
            "time": {"created": "2020-01-01T00:00:00.000Z", "modified": "2020-02-01T00:00:00.000Z",
                     "1.0.0": "2020-01-01T00:00:00.000Z", "1.1.0": "2020-02-01T00:00:00.000Z"}});
        std::fs::write(files.path().join("oldlib"), packument.to_string()).unwrap();
        OldUpstream { child, port, _files: files }
    }
}

impl Drop for OldUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The day folders of the download record, by name.
fn download_days(data: &FsPath) -> Vec<String> {
    let dir = data.join("store/downloads/days");
    let Ok(days) = std::fs::read_dir(dir) else { return Vec::new() };
    days.map(|day| day.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

/// `notDownloadedFor`: npm's downloads are recorded in batches; a cached version nobody
/// downloaded within the window is disposed of, one downloaded lately stays.
#[tokio::test(flavor = "multi_thread")]
async fn versions_nobody_downloaded_lately_are_disposed_and_used_ones_stay() {
    let ws = Workspace::new();
    let upstream = OldUpstream::start(&ws);
    let data = tempfile::tempdir().unwrap();
    let config = format!(
        "apiVersion: wharf.dev/v1alpha1\nkind: Domain\nmetadata: {{name: acme}}\nspec:\n  \
         storage: {{filesystem: {{path: \"{{data}}\"}}}}\n  \
         externalConnections: [{{name: old-npm, format: npm, url: \"http://127.0.0.1:{}\"}}]\n---\n\
         apiVersion: wharf.dev/v1alpha1\nkind: Repository\nmetadata: {{name: main}}\nspec:\n  \
         domainRef: {{name: acme}}\n  externalConnection: old-npm\n  access: {{read: [{{kind: Anonymous}}]}}\n  \
         cleanup: [{{name: unused, origin: Cached, notDownloadedFor: 30d}}]\n",
        upstream.port
    );
    // This Domain has recorded downloads since 2020.
    std::fs::create_dir_all(data.path().join("store/downloads")).unwrap();
    std::fs::write(data.path().join("store/downloads/since.json"), r#"{"since":"2020-01-01T00:00:00Z"}"#).unwrap();
    let flush_often = ["--gc-interval", "1h", "--downloads-flush-interval", "1s"];
    let install = |server: &TestServer, dir: &str, version: &str| {
        ws.write(&format!("{dir}/package.json"), r#"{"name":"app","version":"1.0.0","private":true}"#);
        write_npmrc(&ws, dir, server, "main", None);
        run_ok(npm(&ws, dir).args(["install", "--prefer-online", &format!("oldlib@{version}")]));
    };

    // Both versions are installed (and so cached) today; the record is written within a second.
    let mut server = TestServer::start_in(data.path(), Some(&config), &flush_often);
    install(&server, "first", "1.0.0");
    install(&server, "second", "1.1.0");
    let today = chrono::Utc::now().date_naive().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    while download_days(data.path()) != [today.clone()] {
        assert!(Instant::now() < deadline, "no download record: {:?}", download_days(data.path()));
        std::thread::sleep(Duration::from_millis(100));
    }
    server.terminate();
    assert!(server.wait_exit(Duration::from_secs(30)).success());

    // Those downloads become old ones; only 1.0.0 is downloaded again.
    let days = data.path().join("store/downloads/days");
    std::fs::rename(days.join(&today), days.join("2020-06-01")).unwrap();
    let server = TestServer::start_in(data.path(), Some(&config), &flush_often);
    let fresh = Workspace::new();
    fresh.write("third/package.json", r#"{"name":"app","version":"1.0.0","private":true}"#);
    write_npmrc(&fresh, "third", &server, "main", None);
    run_ok(npm(&fresh, "third").args(["install", "oldlib@1.0.0"]));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !download_days(data.path()).contains(&today) {
        assert!(Instant::now() < deadline, "the second download was not recorded");
        std::thread::sleep(Duration::from_millis(100));
    }

    let preview = gc(data.path(), &["--dry-run"]);
    assert!(preview.contains("would dispose of npm oldlib 1.1.0 in Repository \"main\" (rule unused)"), "{preview}");
    assert!(!preview.contains("oldlib 1.0.0"), "{preview}");

    // The registry's collection carries it out (a dispose wakes it).
    let token = server.token(&["main"], &["read", "publish"]).await;
    assert_eq!(put_generic(&server, &token, "1.0.0", "scratch").await, 201);
    assert_eq!(server.set_status("main", "generic", "acme/tool", "1.0.0", "Disposed", &token).await.status(), 200);
    let status = |version: &'static str| status_of(&server, "npm", "oldlib", version);
    let deadline = Instant::now() + Duration::from_secs(20);
    while status("1.1.0").await != "Disposed" {
        assert!(Instant::now() < deadline, "the registry did not dispose of the unused version");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status("1.0.0").await, "Published");
    assert!(!run(npm(&fresh, "third").args(["install", "oldlib@1.1.0"])).status.success());
}
