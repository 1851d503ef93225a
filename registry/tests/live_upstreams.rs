//! Opt-in live tests (`WHARF_LIVE_TESTS=1`): external connections at the
//! public registries the local clients use by default, real dependency
//! trees installed through Wharf cold, warm (no upstream request), and again
//! after a restart with every connection pointing at a closed loopback port.
//! The registry URLs are read at run time from the clients themselves; no
//! public host is written here. Needs the internet; skipped otherwise.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::Command;

use support::*;

/// Whether live tests were asked for; prints why not otherwise.
fn live(test: &str) -> bool {
    let enabled = std::env::var("WHARF_LIVE_TESTS").is_ok_and(|v| v == "1");
    if !enabled {
        println!("{test}: skipped: set WHARF_LIVE_TESTS=1 to run it against the public registries");
    }
    enabled
}

/// The first line of a client's standard output.
fn first_line(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).lines().next().unwrap_or_default().trim().to_owned()
}

/// A URL the connection can use, or `None` (with the reason printed) when
/// the client gave none.
fn usable(format: &str, url: &str) -> Option<String> {
    let url = url.trim().trim_end_matches('/');
    if url.starts_with("https://") || url.starts_with("http://") {
        Some(url.to_owned())
    } else {
        println!("{format}: skipped: the local client names no usable registry URL ({url:?})");
        None
    }
}

/// npm's own default registry, as `npm config get registry` prints it
/// with no user configuration.
fn npm_registry() -> Option<String> {
    let ws = Workspace::new();
    let output = run_ok(ws.command("npm", ".").args(["config", "get", "registry"]));
    usable("npm", &first_line(&output))
}

/// pip's default simple index.
fn pypi_index() -> Option<String> {
    let ws = Workspace::new();
    let output = run_ok(
        ws.command("python3", ".").args(["-c", "from pip._internal.models.index import PyPI; print(PyPI.simple_url)"]),
    );
    usable("pypi", &first_line(&output))
}

/// The first proxy of `go env GOPROXY` (outer GO* settings ignored).
fn go_proxy() -> Option<String> {
    let ws = Workspace::new();
    let mut command = ws.command("go", ".");
    for (key, _) in std::env::vars() {
        if key.starts_with("GO") {
            command.env_remove(key);
        }
    }
    let output = run_ok(command.env("GOENV", "off").args(["env", "GOPROXY"]));
    let first = first_line(&output).split([',', '|']).next().unwrap_or_default().to_owned();
    usable("go", &first)
}

/// `cargo` with its own `CARGO_HOME` and none of the outer `cargo test`'s
/// variables.
fn cargo(ws: &Workspace, dir: &str) -> Command {
    isolated_cargo(ws, dir)
}

/// cargo's default (sparse) index: cargo has no stable command printing
/// it, so it is read from the error cargo gives when its proxy is a closed
/// port (no request leaves the machine).
fn crates_index() -> Option<String> {
    let ws = Workspace::new();
    ws.write("probe/Cargo.toml", &cargo_manifest("probe", "anyhow = \"1\"\n"));
    ws.write("probe/src/main.rs", "fn main() {}\n");
    ws.write("home/.cargo/config.toml", "[net]\nretry = 0\n");
    let output = run(cargo(&ws, "probe")
        .args(["generate-lockfile"])
        .env("https_proxy", "http://127.0.0.1:9")
        .env("HTTPS_PROXY", "http://127.0.0.1:9"));
    let said = text(&output);
    let pattern = regex::Regex::new(r"(https://[^\s`'\x22]+/)config\.json").unwrap();
    match pattern.captures(&said) {
        Some(found) => usable("cargo", &found[1]),
        None => {
            println!("cargo: skipped: cargo did not name its default index:\n{said}");
            None
        }
    }
}

/// Maven's built-in `central` repository, read from the super POM of the
/// local Maven installation (what `mvn` uses when no settings name one).
fn maven_central() -> Option<String> {
    use std::io::Read;
    let ws = Workspace::new();
    let version = run_ok(ws.command("mvn", ".").arg("--version").env("MAVEN_SKIP_RC", "1"));
    let said = String::from_utf8_lossy(&version.stdout).into_owned();
    let home = said.lines().find_map(|line| line.strip_prefix("Maven home:")).map(|h| Path::new(h.trim()).to_owned());
    let builder = home.and_then(|home| {
        std::fs::read_dir(home.join("lib")).ok()?.filter_map(Result::ok).map(|entry| entry.path()).find(|path| {
            path.file_name().is_some_and(|name| name.to_string_lossy().starts_with("maven-model-builder-"))
        })
    });
    let super_pom = builder.and_then(|jar| {
        let mut archive = zip::ZipArchive::new(std::fs::File::open(jar).ok()?).ok()?;
        let mut text = String::new();
        archive.by_name("org/apache/maven/model/pom-4.0.0.xml").ok()?.read_to_string(&mut text).ok()?;
        Some(text)
    });
    let url = super_pom.as_deref().and_then(|pom| {
        let central = pom.split("<repository>").nth(1)?;
        Some(central.split("<url>").nth(1)?.split("</url>").next()?.to_owned())
    });
    match url {
        Some(url) => usable("maven", &url),
        None => {
            println!("maven: skipped: no super POM with a central repository in the Maven installation:\n{said}");
            None
        }
    }
}

fn cargo_manifest(name: &str, dependencies: &str) -> String {
    format!(
        "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\npublish = false\n\n[dependencies]\n{dependencies}"
    )
}

/// One store per format, `app` reading through all of them; a format
/// whose connection URL is `None` is left out.
fn live_config(npm: &str, pypi: &str, cargo: &str, go: &str, maven: &str) -> String {
    format!(
        r#"
apiVersion: wharf.dev/v1alpha1
kind: Domain
metadata: {{name: live}}
spec:
  storage: {{filesystem: {{path: "{{data}}"}}}}
  externalConnections:
    - {{name: public-npm, format: npm, url: "{npm}"}}
    - {{name: public-pypi, format: pypi, url: "{pypi}"}}
    - {{name: public-crates, format: cargo, url: "{cargo}"}}
    - {{name: public-go, format: go, url: "{go}"}}
    - {{name: public-maven, format: maven, url: "{maven}"}}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {{name: app}}
spec:
  domainRef: {{name: live}}
  upstreams: [{{name: npm-store}}, {{name: pypi-store}}, {{name: cargo-store}}, {{name: go-store}}, {{name: maven-store}}]
  access: {{read: [{{kind: Anonymous}}]}}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {{name: npm-store}}
spec:
  domainRef: {{name: live}}
  externalConnection: public-npm
  allowedDownstreams: [{{namespace: default, name: app}}]
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {{name: pypi-store}}
spec:
  domainRef: {{name: live}}
  externalConnection: public-pypi
  allowedDownstreams: [{{namespace: default, name: app}}]
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {{name: cargo-store}}
spec:
  domainRef: {{name: live}}
  externalConnection: public-crates
  allowedDownstreams: [{{namespace: default, name: app}}]
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {{name: go-store}}
spec:
  domainRef: {{name: live}}
  externalConnection: public-go
  allowedDownstreams: [{{namespace: default, name: app}}]
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {{name: maven-store}}
spec:
  domainRef: {{name: live}}
  externalConnection: public-maven
  allowedDownstreams: [{{namespace: default, name: app}}]
"#
    )
}

/// A loopback URL nothing listens on.
fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

/// Wharf with one live connection (the others at a closed port), on a data
/// folder that outlives it, so it can restart with the connection cut.
struct LiveWharf {
    data: tempfile::TempDir,
    server: Option<TestServer>,
}

impl LiveWharf {
    fn start(format: &str, url: &str) -> LiveWharf {
        Self::start_with(format, url, &[])
    }

    /// [`LiveWharf::start`] with the connection of `format` allowed to fetch files from
    /// `file_origins` too.
    fn start_with(format: &str, url: &str, file_origins: &[&str]) -> LiveWharf {
        let data = tempfile::tempdir().unwrap();
        let closed = closed_port_url();
        let pick = |f: &str| if f == format { url.to_owned() } else { closed.clone() };
        let mut config = live_config(&pick("npm"), &pick("pypi"), &pick("cargo"), &pick("go"), &pick("maven"));
        if !file_origins.is_empty() {
            let connection = format!("format: {format}, url: \"{url}\"");
            let origins: Vec<String> = file_origins.iter().map(|origin| format!("\"{origin}\"")).collect();
            config = config.replace(&connection, &format!("{connection}, fileOrigins: [{}]", origins.join(", ")));
        }
        let server = TestServer::start_in(data.path(), Some(&config), &[]);
        LiveWharf { data, server: Some(server) }
    }

    fn server(&self) -> &TestServer {
        self.server.as_ref().unwrap()
    }

    /// Restarts on the same data with every connection unreachable.
    fn restart_unreachable(&mut self) {
        self.server = None;
        let closed = closed_port_url();
        let config = live_config(&closed, &closed, &closed, &closed, &closed);
        self.server = Some(TestServer::start_in(self.data.path(), Some(&config), &[]));
    }
}

/// All upstream requests the running process made, from its `/metrics`.
async fn upstream_requests(server: &TestServer) -> u64 {
    let text = reqwest::get(server.url("/metrics")).await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|line| line.starts_with("wharf_upstream_requests_total{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn version_status(server: &TestServer, repo: &str, format: &str, package: &str, version: &str) -> u16 {
    let package = package.replace('/', "%2F");
    let url = server.url(&format!("/api/v1/repositories/{repo}/packages/{format}/{package}/versions/{version}"));
    reqwest::Client::new().get(url).bearer_auth(ADMIN_TOKEN).send().await.unwrap().status().as_u16()
}

/// Asserts both the requesting repository and the store keep `version`.
async fn assert_kept(server: &TestServer, store: &str, format: &str, package: &str, version: &str) {
    for repo in ["app", store] {
        assert_eq!(version_status(server, repo, format, package, version).await, 200, "{repo} {package} {version}");
    }
}

fn npm_install(ws: &Workspace, wharf: &TestServer) {
    ws.write("project/package.json", r#"{"name":"project","version":"1.0.0","private":true}"#);
    write_npmrc(ws, "project", wharf, "app", None);
    run_ok(ws.command("npm", "project").args([
        "install",
        "--no-audit",
        "--no-fund",
        "--loglevel",
        "warn",
        "--fetch-retries=0",
        "express@4",
    ]));
    let express: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(ws.path("project/node_modules/express/package.json")).unwrap())
            .unwrap();
    assert!(express["version"].as_str().unwrap().starts_with("4."), "{express}");
    assert!(ws.path("project/node_modules/body-parser/package.json").exists());
    let checked = run_ok(ws.command("node", "project").args(["-e", "require('express')(); console.log('ok')"]));
    assert_eq!(first_line(&checked), "ok");
}

#[tokio::test(flavor = "multi_thread")]
async fn live_npm_installs_express_cold_warm_and_unreachable() {
    if !live("live npm") {
        return;
    }
    let Some(url) = npm_registry() else { return };
    let mut wharf = LiveWharf::start("npm", &url);
    let cold = Workspace::new();
    let version = {
        npm_install(&cold, wharf.server());
        let text = std::fs::read_to_string(cold.path("project/node_modules/express/package.json")).unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["version"].as_str().unwrap().to_owned()
    };
    assert_kept(wharf.server(), "npm-store", "npm", "express", &version).await;

    // Warm: a fresh client, within the metadata TTL, asks the upstream nothing.
    let before = upstream_requests(wharf.server()).await;
    npm_install(&Workspace::new(), wharf.server());
    assert_eq!(upstream_requests(wharf.server()).await, before, "a warm install made upstream requests");

    wharf.restart_unreachable();
    npm_install(&Workspace::new(), wharf.server());
}

fn pip_install(ws: &Workspace, wharf: &TestServer) {
    run_ok(ws.command("python3", ".").args(["-m", "venv", "env"]));
    run_ok(
        ws.command(ws.path("env/bin/pip"), ".")
            .args(["install", "--retries", "0", "--index-url"])
            .arg(wharf.url("/pypi/app/simple/"))
            .arg("requests"),
    );
    let checked = run_ok(
        ws.command(ws.path("env/bin/python"), ".")
            .args(["-c", "import requests, urllib3, idna, certifi, charset_normalizer; print(requests.__version__)"]),
    );
    assert!(!first_line(&checked).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn live_pip_installs_requests_cold_warm_and_unreachable() {
    if !live("live pip") {
        return;
    }
    let Some(url) = pypi_index() else { return };
    // The index may keep its files on another host, which Wharf fetches
    // from only when allowed; the host is read from the index itself.
    let page = format!("{}/requests/", url.trim_end_matches('/'));
    let listing: serde_json::Value = reqwest::Client::new()
        .get(&page)
        .header("Accept", "application/vnd.pypi.simple.v1+json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let file = listing["files"][0]["url"].as_str().unwrap();
    let file = reqwest::Url::parse(&page).unwrap().join(file).unwrap();
    let file_origin = file.origin().ascii_serialization();
    let mut wharf = LiveWharf::start_with("pypi", &url, &[&file_origin]);
    let cold = Workspace::new();
    pip_install(&cold, wharf.server());
    let checked = run_ok(
        cold.command(cold.path("env/bin/python"), ".").args(["-c", "import requests; print(requests.__version__)"]),
    );
    assert_kept(wharf.server(), "pypi-store", "pypi", "requests", &first_line(&checked)).await;

    let before = upstream_requests(wharf.server()).await;
    pip_install(&Workspace::new(), wharf.server());
    assert_eq!(upstream_requests(wharf.server()).await, before, "a warm install made upstream requests");

    wharf.restart_unreachable();
    pip_install(&Workspace::new(), wharf.server());
}

/// `go` with its own caches and `GOPROXY` at `proxy` (checksums verified
/// against the project's `go.sum` only), no toolchain downloads.
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
        .env("GOTOOLCHAIN", "local");
    command
}

/// A module needing cobra (and through it pflag and mousetrap); the
/// consumer is only loaded (`go list -deps`), not compiled.
const GO_MODULE: &str = "github.com/spf13/cobra";
const GO_VERSION: &str = "v1.8.1";

/// The consumer of [`GO_MODULE`], with go.mod and go.sum copied from
/// `pinned` when given.
fn go_project(ws: &Workspace, pinned: Option<&Path>) {
    ws.write("app/go.mod", "module example.internal/app\n\ngo 1.21\n");
    ws.write(
        "app/main.go",
        &format!(
            "package main\n\nimport \"{GO_MODULE}\"\n\nfunc main() {{ println((&cobra.Command{{Use: \"app\"}}).Name()) }}\n"
        ),
    );
    if let Some(pinned) = pinned {
        for file in ["go.mod", "go.sum"] {
            std::fs::copy(pinned.join(file), ws.path(&format!("app/{file}"))).unwrap();
        }
    }
}

/// With its default checksum database and a go.sum it has to fill, `go get`
/// verifies every module through Wharf: the database is proxied through the
/// Go connection, as the public module proxy does.
#[tokio::test(flavor = "multi_thread")]
async fn live_go_verifies_checksums_through_wharf() {
    if !live("live go checksum database") {
        return;
    }
    let Some(url) = go_proxy() else { return };
    let wharf = LiveWharf::start("go", &url);
    let proxy = format!("http://127.0.0.1:{}/go/app", wharf.server().port);
    let ws = Workspace::new();
    go_project(&ws, None);
    let mut command = go(&ws, "app", &proxy);
    command.env_remove("GOSUMDB");
    run_ok(command.args(["get", &format!("{GO_MODULE}@{GO_VERSION}")]));
    let go_sum = std::fs::read_to_string(ws.path("app/go.sum")).unwrap();
    assert!(go_sum.contains(GO_MODULE), "{go_sum}");
    let metrics = reqwest::get(wharf.server().url("/metrics")).await.unwrap().text().await.unwrap();
    let sumdb_requests: u64 = metrics
        .lines()
        .filter(|line| line.contains("route=\"go_sumdb\"") && line.contains("status=\"200\""))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(sumdb_requests >= 2, "the checksum database was not read through Wharf:\n{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn live_go_downloads_a_module_graph_cold_warm_and_unreachable() {
    if !live("live go") {
        return;
    }
    let Some(url) = go_proxy() else { return };
    // The pinned checksums come from the public proxy directly: Wharf must
    // serve exactly the same bytes.
    let direct = Workspace::new();
    go_project(&direct, None);
    run_ok(go(&direct, "app", &url).args(["get", &format!("{GO_MODULE}@{GO_VERSION}")]));
    let pinned = direct.path("app");

    let mut wharf = LiveWharf::start("go", &url);
    let proxy = format!("http://127.0.0.1:{}/go/app", wharf.server().port);
    let download = |proxy: &str| {
        let ws = Workspace::new();
        go_project(&ws, Some(&pinned));
        run_ok(go(&ws, "app", proxy).args(["mod", "download", "all"]));
        run_ok(go(&ws, "app", proxy).args(["mod", "verify"]));
        // Every imported package's source is there (loaded, not compiled).
        let output = run_ok(go(&ws, "app", proxy).args(["list", "-deps", "."]));
        let packages = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(packages.lines().any(|p| p == GO_MODULE), "{packages}");
        assert!(packages.lines().any(|p| p == "github.com/spf13/pflag"), "{packages}");
    };
    download(&proxy);
    assert_kept(wharf.server(), "go-store", "go", GO_MODULE, GO_VERSION).await;

    let before = upstream_requests(wharf.server()).await;
    download(&proxy);
    assert_eq!(upstream_requests(wharf.server()).await, before, "a warm download made upstream requests");

    wharf.restart_unreachable();
    let proxy = format!("http://127.0.0.1:{}/go/app", wharf.server().port);
    download(&proxy);
}

/// A project needing anyhow and serde (with serde_derive, syn, quote,
/// proc-macro2), crates-io replaced by Wharf's `app` index.
fn cargo_project(ws: &Workspace, index: &str, lock: Option<&Path>) {
    ws.write(
        "home/.cargo/config.toml",
        &format!(
            "[source.crates-io]\nreplace-with = \"wharf\"\n\n[source.wharf]\nregistry = \"sparse+{index}\"\n\n[net]\nretry = 0\n"
        ),
    );
    ws.write(
        "app/Cargo.toml",
        &cargo_manifest("app", "anyhow = \"1\"\nserde = { version = \"1\", features = [\"derive\"] }\n"),
    );
    ws.write("app/src/main.rs", "fn main() {}\n");
    if let Some(lock) = lock {
        std::fs::copy(lock, ws.path("app/Cargo.lock")).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn live_cargo_fetches_a_crate_tree_cold_warm_and_unreachable() {
    if !live("live cargo") {
        return;
    }
    let Some(url) = crates_index() else { return };
    let mut wharf = LiveWharf::start("cargo", &url);
    let index = wharf.server().url("/cargo/app/index/");
    let cold = Workspace::new();
    cargo_project(&cold, &index, None);
    run_ok(cargo(&cold, "app").args(["fetch"]));
    let lock = std::fs::read_to_string(cold.path("app/Cargo.lock")).unwrap();
    for name in ["anyhow", "serde", "serde_derive", "syn", "quote", "proc-macro2"] {
        assert!(lock.contains(&format!("name = \"{name}\"")), "{name} missing from\n{lock}");
    }
    let version = lock
        .split("[[package]]")
        .find(|block| block.contains("name = \"anyhow\""))
        .and_then(|block| block.lines().find_map(|l| l.strip_prefix("version = \"")))
        .map(|v| v.trim_end_matches('"').to_owned())
        .unwrap();
    assert_kept(wharf.server(), "cargo-store", "cargo", "anyhow", &version).await;
    let lock = cold.path("app/Cargo.lock");

    let before = upstream_requests(wharf.server()).await;
    let warm = Workspace::new();
    cargo_project(&warm, &index, Some(&lock));
    run_ok(cargo(&warm, "app").args(["fetch", "--locked"]));
    assert_eq!(upstream_requests(wharf.server()).await, before, "a warm fetch made upstream requests");

    wharf.restart_unreachable();
    let index = wharf.server().url("/cargo/app/index/");
    let offline = Workspace::new();
    cargo_project(&offline, &index, Some(&lock));
    run_ok(cargo(&offline, "app").args(["fetch", "--locked"]));
}

/// A jar project using a library with a dependency of its own (commons-text
/// needs commons-lang3); the plugins come from the cached local repository.
fn maven_project(ws: &Workspace) {
    let dependency = "  <dependencies>\n    <dependency><groupId>org.apache.commons</groupId><artifactId>commons-text</artifactId><version>1.12.0</version></dependency>\n  </dependencies>\n\n  <build>";
    let pom = LIBRARY_POM
        .replace("@GROUP@", "example.live")
        .replace("@ARTIFACT@", "app")
        .replace("@VERSION@", "1.0")
        .replacen("  <build>", dependency, 1);
    ws.write("app/pom.xml", &pom);
    ws.write(
        "app/src/main/java/example/live/App.java",
        "package example.live;\n\npublic class App {\n    public static String greet() {\n        return org.apache.commons.text.WordUtils.capitalize(org.apache.commons.lang3.StringUtils.reverse(\"frahw\"));\n    }\n}\n",
    );
}

/// `mvn package` of [`maven_project`] through `app`, with a local
/// repository of its own.
fn maven_package(wharf: &TestServer) {
    let ws = Workspace::new();
    maven_project(&ws);
    let maven = Maven::new(&ws, wharf, "app", "anonymous-read");
    run_ok(maven.command("app", "m2").arg("package"));
    assert!(ws.path("app/target/app-1.0.jar").exists());
    assert!(ws.path("m2/org/apache/commons/commons-lang3").is_dir(), "the library's own dependency came too");
}

#[tokio::test(flavor = "multi_thread")]
async fn live_maven_builds_against_a_library_cold_warm_and_unreachable() {
    if !live("live maven") {
        return;
    }
    let Some(url) = maven_central() else { return };
    let mut wharf = LiveWharf::start("maven", &url);
    maven_package(wharf.server());
    assert_kept(wharf.server(), "maven-store", "maven", "org.apache.commons:commons-text", "1.12.0").await;

    let before = upstream_requests(wharf.server()).await;
    maven_package(wharf.server());
    assert_eq!(upstream_requests(wharf.server()).await, before, "a warm build made upstream requests");

    wharf.restart_unreachable();
    maven_package(wharf.server());
}
