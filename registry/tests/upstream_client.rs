//! The real `npm` and `pip` through an upstream chain, against the real
//! registry binary, with a second registry binary on loopback playing the
//! public registry: dependency confusion refused, public packages fetched
//! and retained, cached packages still installing with the upstream gone,
//! uncached ones failing with a 502 that names the connection; an https
//! connection verified against the trust store Wharf is given.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;
use std::path::Path;

use support::*;

/// The usual topology: `app` reads through `[internal, npm-store,
/// pypi-store]`; the stores hold the external connections.
fn chain_config(public: &TestServer) -> String {
    chain_config_with(public, "")
}

/// [`chain_config`] with more rules in the Domain policy.
fn chain_config_with(public: &TestServer, extra_rules: &str) -> String {
    chain_config_at(&public.base, extra_rules)
}

/// The topology with the external connections at `base`.
fn chain_config_at(base: &str, extra_rules: &str) -> String {
    format!(
        r#"
apiVersion: wharf.dev/v1alpha1
kind: Domain
metadata: {{name: acme}}
spec:
  storage: {{filesystem: {{path: "{{data}}"}}}}
  externalConnections:
    - {{name: public-npm, format: npm, url: "{base}/npm/public"}}
    - {{name: public-pypi, format: pypi, url: "{base}/pypi/public/simple"}}
    - {{name: public-crates, format: cargo, url: "{base}/cargo/public/index"}}
    - {{name: public-go, format: go, url: "{base}/go/public"}}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {{name: app}}
spec:
  domainRef: {{name: acme}}
  upstreams: [{{name: internal}}, {{name: npm-store}}, {{name: pypi-store}}, {{name: cargo-store}}, {{name: go-store}}]
  access: {{read: [{{kind: Anonymous}}]}}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {{name: internal}}
spec:
  domainRef: {{name: acme}}
  allowedDownstreams: [{{namespace: default, name: app}}]
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {{name: npm-store}}
spec:
  domainRef: {{name: acme}}
  externalConnection: public-npm
  allowedDownstreams: [{{namespace: default, name: app}}]
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {{name: pypi-store}}
spec:
  domainRef: {{name: acme}}
  externalConnection: public-pypi
  allowedDownstreams: [{{namespace: default, name: app}}]
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {{name: cargo-store}}
spec:
  domainRef: {{name: acme}}
  externalConnection: public-crates
  allowedDownstreams: [{{namespace: default, name: app}}]
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {{name: go-store}}
spec:
  domainRef: {{name: acme}}
  externalConnection: public-go
  allowedDownstreams: [{{namespace: default, name: app}}]
---
apiVersion: wharf.dev/v1alpha1
kind: UpstreamPolicy
metadata: {{name: internal-names}}
spec:
  targetRefs: [{{kind: Domain, name: acme}}]
  metadataTTL: 1s
  rules:
    - patterns: ["/npm/acme/*"]
      externalUpstream: Block
{extra_rules}"#
    )
}

fn npm_package(ws: &Workspace, dir: &str, name: &str, version: &str, body: &str) {
    ws.write(
        &format!("{dir}/package.json"),
        &serde_json::json!({"name": name, "version": version, "main": "index.js"}).to_string(),
    );
    ws.write(&format!("{dir}/index.js"), body);
}

/// Requests a registry answered with `status` on one route, from its `/metrics`.
async fn served(server: &TestServer, route: &str, status: u16) -> u64 {
    let text = reqwest::get(server.url("/metrics")).await.unwrap().text().await.unwrap();
    let prefix = format!("wharf_http_requests_total{{route=\"{route}\",method=\"GET\",status=\"{status}\"}} ");
    text.lines().find_map(|line| line.strip_prefix(&prefix)).map_or(0, |n| n.trim().parse().unwrap())
}

fn installed(ws: &Workspace, dir: &str, name: &str) -> String {
    std::fs::read_to_string(ws.path(&format!("{dir}/node_modules/{name}/index.js"))).unwrap()
}

async fn version_status(server: &TestServer, repo: &str, format: &str, package: &str, version: &str) -> u16 {
    let package = package.replace('/', "%2F");
    let url = server.url(&format!("/api/v1/repositories/{repo}/packages/{format}/{package}/versions/{version}"));
    reqwest::Client::new().get(url).bearer_auth(ADMIN_TOKEN).send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn npm_installs_internal_names_and_retains_public_ones() {
    let public = TestServer::start_with(Some(PUBLIC_CONFIG), &[]);
    let wharf = TestServer::start_with(Some(&chain_config(&public)), &[]);
    let public_token = public.token(&["public"], &["publish"]).await;
    let internal_token = wharf.token(&["internal"], &["read", "publish"]).await;
    let ws = Workspace::new();

    // Internal names first, then the hostile upstream publishes higher versions.
    for (dir, name) in [("internal-scoped", "@acme/tools"), ("internal-plain", "acme-internal-util")] {
        npm_package(&ws, dir, name, "1.0.0", "module.exports = 'internal';\n");
        write_npmrc(&ws, dir, &wharf, "internal", Some(&internal_token));
        run_ok(npm(&ws, dir).args(["publish", "--access", "public"]));
    }
    for (dir, name, version, body) in [
        ("hostile-scoped", "@acme/tools", "9.9.9", "module.exports = 'hostile';\n"),
        ("hostile-plain", "acme-internal-util", "9.9.9", "module.exports = 'hostile';\n"),
        ("public-pad", "wharf-pad", "1.2.0", "module.exports = 'public';\n"),
        ("public-never", "never-fetched", "1.0.0", "module.exports = 'never';\n"),
    ] {
        npm_package(&ws, dir, name, version, body);
        write_npmrc(&ws, dir, &public, "public", Some(&public_token));
        run_ok(npm(&ws, dir).args(["publish", "--access", "public"]));
    }

    // A separate client: npm's cache, keyed by integrity, already holds
    // what the publishing workspace packed.
    let client = Workspace::new();
    client.write("project/package.json", r#"{"name":"project","version":"1.0.0","private":true}"#);
    write_npmrc(&client, "project", &wharf, "app", None);
    run_ok(npm(&client, "project").args(["install", "@acme/tools@*", "acme-internal-util@*", "wharf-pad"]));
    for name in ["@acme/tools", "acme-internal-util"] {
        let body = std::fs::read_to_string(client.path(&format!("project/node_modules/{name}/index.js"))).unwrap();
        assert_eq!(body, "module.exports = 'internal';\n", "{name}");
    }
    let pad = std::fs::read_to_string(client.path("project/node_modules/wharf-pad/index.js")).unwrap();
    assert_eq!(pad, "module.exports = 'public';\n");
    let lock = std::fs::read_to_string(client.path("project/package-lock.json")).unwrap();
    assert!(lock.contains(&format!("{}/npm/app/wharf-pad/-/wharf-pad-1.2.0.tgz", wharf.base)), "{lock}");

    // Nothing hostile is stored anywhere; the public package is kept in
    // `app` and `npm-store`, not in `internal`.
    for repo in ["app", "internal", "npm-store"] {
        for name in ["@acme/tools", "acme-internal-util"] {
            assert_eq!(version_status(&wharf, repo, "npm", name, "9.9.9").await, 404, "{repo} {name}");
        }
    }
    assert_eq!(version_status(&wharf, "app", "npm", "wharf-pad", "1.2.0").await, 200);
    assert_eq!(version_status(&wharf, "npm-store", "npm", "wharf-pad", "1.2.0").await, 200);
    assert_eq!(version_status(&wharf, "internal", "npm", "wharf-pad", "1.2.0").await, 404);

    // The upstream goes away: a fresh machine (empty npm cache) still
    // installs what was fetched once; what never was fails with a 502
    // naming the connection.
    drop(public);
    let fresh = Workspace::new();
    fresh.write("project/package.json", r#"{"name":"project","version":"1.0.0","private":true}"#);
    write_npmrc(&fresh, "project", &wharf, "app", None);
    run_ok(npm(&fresh, "project").args(["install", "wharf-pad@1.2.0"]));
    assert!(fresh.path("project/node_modules/wharf-pad/index.js").exists());
    let failed = run(npm(&fresh, "project").args(["install", "--fetch-retries=0", "never-fetched"]));
    assert!(!failed.status.success());
    assert!(text(&failed).contains("502"), "{}", text(&failed));
    assert!(wharf.log_lines().iter().any(|l| l.contains("public-npm")), "the registry log names the connection");
}

fn twine_upload(ws: &Workspace, tools: &Path, server: &TestServer, repo: &str, token: &str, file: &Path) {
    run_ok(
        ws.command(venv_bin(tools, "twine"), ".")
            .args(["upload", "--non-interactive", "--disable-progress-bar", "--repository-url"])
            .arg(server.url(&format!("/pypi/{repo}/")))
            .args(["-u", "__token__", "-p", token])
            .arg(file),
    );
}

/// `pip install` from `app` into a new virtualenv `venv`.
fn pip_install(ws: &Workspace, wharf: &TestServer, venv: &str, packages: &[&str]) -> std::process::Output {
    run_ok(ws.command("python3", ".").args(["-m", "venv", venv]));
    let mut command = ws.command(ws.path(venv).join("bin/pip"), ".");
    command.args(["install", "--index-url"]).arg(wharf.url("/pypi/app/simple/")).args(packages);
    run(&mut command)
}

fn module_value(ws: &Workspace, venv: &str, module: &str) -> String {
    let output = run_ok(
        ws.command(ws.path(venv).join("bin/python"), ".")
            .args(["-c", &format!("import {module}; print({module}.VALUE)")]),
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn pip_installs_internal_names_and_retains_public_ones() {
    let tools = python_tools();
    let public = TestServer::start_with(Some(PUBLIC_CONFIG), &[]);
    let wharf = TestServer::start_with(Some(&chain_config(&public)), &[]);
    let public_token = public.token(&["public"], &["publish"]).await;
    let internal_token = wharf.token(&["internal"], &["publish"]).await;
    let ws = Workspace::new();
    std::fs::create_dir_all(ws.path("wheels")).unwrap();
    let wheel = |project: &str, version: &str, body: &str| {
        let path = ws.path(&format!("wheels/{}-{version}-py3-none-any.whl", project.replace('-', "_")));
        write_wheel(&path, project, version, &format!("VALUE = {body:?}\n"));
        path
    };

    twine_upload(&ws, &tools, &wharf, "internal", &internal_token, &wheel("acme-internal", "1.0", "internal"));
    twine_upload(&ws, &tools, &public, "public", &public_token, &wheel("acme-internal", "9.9", "hostile"));
    twine_upload(&ws, &tools, &public, "public", &public_token, &wheel("wharf-public-lib", "2.0", "public"));
    twine_upload(&ws, &tools, &public, "public", &public_token, &wheel("never-fetched", "1.0", "never"));

    let installed = pip_install(&ws, &wharf, "env", &["acme-internal", "wharf-public-lib"]);
    assert!(installed.status.success(), "{}", text(&installed));
    assert_eq!(module_value(&ws, "env", "acme_internal"), "internal");
    assert_eq!(module_value(&ws, "env", "wharf_public_lib"), "public");
    for repo in ["app", "internal", "pypi-store"] {
        assert_eq!(version_status(&wharf, repo, "pypi", "acme-internal", "9.9").await, 404, "{repo}");
    }
    assert_eq!(version_status(&wharf, "app", "pypi", "wharf-public-lib", "2.0").await, 200);
    assert_eq!(version_status(&wharf, "pypi-store", "pypi", "wharf-public-lib", "2.0").await, 200);
    assert_eq!(version_status(&wharf, "internal", "pypi", "wharf-public-lib", "2.0").await, 404);

    drop(public);
    let again = pip_install(&ws, &wharf, "env2", &["wharf-public-lib==2.0"]);
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(module_value(&ws, "env2", "wharf_public_lib"), "public");
    let failed = pip_install(&ws, &wharf, "env3", &["--retries", "0", "never-fetched"]);
    assert!(!failed.status.success());
    // pip only says "no versions"; the page it was given says why.
    let page = reqwest::get(wharf.url("/pypi/app/simple/never-fetched/")).await.unwrap();
    assert_eq!(page.status(), 502);
    let reason = page.text().await.unwrap();
    assert!(reason.contains("external connection public-pypi"), "{reason}");
}

#[tokio::test(flavor = "multi_thread")]
async fn npm_sees_chain_order_cooldown_blocks_and_reachable_versions() {
    let public = TestServer::start_with(Some(PUBLIC_CONFIG), &[]);
    let rules = r#"    - patterns: ["/npm//wharf-cool"]
      minimumReleaseAge: 10s
    - patterns: ["/npm//wharf-blocked"]
      blockedVersions: ["/npm//wharf-blocked@1.1.0"]
"#;
    let wharf = TestServer::start_with(Some(&chain_config_with(&public, rules)), &[]);
    let public_token = public.token(&["public"], &["publish"]).await;
    let token = wharf.token(&["app", "internal", "npm-store"], &["read", "publish"]).await;
    let publisher = Workspace::new();
    let publish = |server: &TestServer, repo: &str, token: &str, name: &str, version: &str, body: &str| {
        let dir = format!("{repo}-{name}-{version}");
        npm_package(&publisher, &dir, name, version, body);
        write_npmrc(&publisher, &dir, server, repo, Some(token));
        run(npm(&publisher, &dir).args(["publish", "--access", "public"]))
    };

    // Chain order: `internal` comes before `npm-store` in app's upstreams.
    for (repo, body) in [("internal", "from internal"), ("npm-store", "from npm-store")] {
        let output = publish(&wharf, repo, &token, "wharf-ordered", "2.0.0", &format!("module.exports = '{body}';\n"));
        assert!(output.status.success(), "{}", text(&output));
    }
    // Already reachable through an upstream: a 409, which npm reports as
    // its publish conflict.
    let refused = publish(&wharf, "app", &token, "wharf-ordered", "2.0.0", "module.exports = 'app';\n");
    assert!(!refused.status.success());
    assert!(text(&refused).contains("cannot publish over the previously published"), "{}", text(&refused));

    for (name, version) in [("wharf-cool", "1.0.0"), ("wharf-blocked", "1.0.0"), ("wharf-blocked", "1.1.0")] {
        let body = format!("module.exports = '{version}';\n");
        assert!(publish(&public, "public", &public_token, name, version, &body).status.success());
    }
    std::thread::sleep(std::time::Duration::from_millis(10_200));
    assert!(
        publish(&public, "public", &public_token, "wharf-cool", "1.1.0", "module.exports = '1.1.0';\n")
            .status
            .success()
    );

    // Within 10 s of publishing 1.1.0 (the cooldown), so checked first:
    // 1.1.0 is too young, latest points at 1.0.0.
    let client = Workspace::new();
    client.write("project/package.json", r#"{"name":"project","version":"1.0.0","private":true}"#);
    write_npmrc(&client, "project", &wharf, "app", None);
    run_ok(npm(&client, "project").args(["install", "wharf-cool"]));
    assert_eq!(installed(&client, "project", "wharf-cool"), "module.exports = '1.0.0';\n");
    let view = run_ok(npm(&client, "project").args(["view", "wharf-cool", "versions", "--json"]));
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&view.stdout).unwrap(), serde_json::json!(["1.0.0"]));

    run_ok(npm(&client, "project").args(["install", "wharf-ordered@2.0.0", "wharf-blocked"]));
    assert_eq!(installed(&client, "project", "wharf-ordered"), "module.exports = 'from internal';\n");
    assert_eq!(installed(&client, "project", "wharf-blocked"), "module.exports = '1.0.0';\n");
    let refused = run(npm(&client, "project").args(["install", "wharf-blocked@1.1.0"]));
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(text(&refused).contains("ETARGET"), "{}", text(&refused));

    // A warm install (fresh npm cache, metadata still fresh) downloads no
    // tarball from the upstream again.
    let tarballs = served(&public, "npm_tarball", 200).await;
    assert_eq!(tarballs, 2, "one fetch for each public package installed");
    let warm = Workspace::new();
    warm.write("project/package.json", r#"{"name":"project","version":"1.0.0","private":true}"#);
    write_npmrc(&warm, "project", &wharf, "app", None);
    run_ok(npm(&warm, "project").args(["install", "wharf-cool@1.0.0", "wharf-blocked@1.0.0"]));
    assert_eq!(served(&public, "npm_tarball", 200).await, tarballs);
    let own = reqwest::get(wharf.url("/metrics")).await.unwrap().text().await.unwrap();
    let fetched = "wharf_upstream_requests_total{connection=\"public-npm\",kind=\"artifact\",outcome=\"fetched\"} 2";
    assert!(own.contains(fetched), "{own}");
}

/// `cargo` in the workspace's own `CARGO_HOME`, with registry `wharf` at
/// `index` and none of the outer `cargo test`'s variables; https goes to a
/// closed port, so nothing can reach the internet.
fn cargo(ws: &Workspace, index: &str, token: Option<&str>, dir: &str) -> std::process::Command {
    ws.write(
        "home/.cargo/config.toml",
        &format!(
            "[registries.wharf]\nindex = \"sparse+{index}\"\ncredential-provider = \"cargo:token\"\n\n[net]\nretry = 0\n"
        ),
    );
    let mut command = isolated_cargo(ws, dir);
    command.env("https_proxy", "http://127.0.0.1:9").env("HTTPS_PROXY", "http://127.0.0.1:9");
    if let Some(token) = token {
        command.env("CARGO_REGISTRIES_WHARF_TOKEN", token);
    }
    command
}

/// An application printing `answer()` of the `wharf` crate `dependency`.
fn cargo_app(ws: &Workspace, dependency: &str) {
    ws.write(
        "app/Cargo.toml",
        &format!(
            "[package]\nname = \"app\"\nversion = \"0.1.0\"\nedition = \"2021\"\npublish = false\n\n[dependencies]\n{dependency} = {{ version = \"*\", registry = \"wharf\" }}\n"
        ),
    );
    let module = dependency.replace('-', "_");
    ws.write("app/src/main.rs", &format!("fn main() {{\n    println!(\"answer={{}}\", {module}::answer());\n}}\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn cargo_builds_through_the_chain_and_keeps_working_without_the_upstream() {
    let public = TestServer::start_with(Some(PUBLIC_CONFIG), &[]);
    let wharf = TestServer::start_with(Some(&chain_config(&public)), &[]);
    let public_token = public.token(&["public"], &["publish"]).await;
    let publisher = Workspace::new();
    publisher.write(
        "lib/Cargo.toml",
        "[package]\nname = \"wharf-answer\"\nversion = \"1.0.0\"\nedition = \"2021\"\ndescription = \"test\"\nlicense = \"MIT\"\npublish = [\"wharf\"]\n",
    );
    publisher.write("lib/src/lib.rs", "pub fn answer() -> u32 {\n    42\n}\n");
    let public_index = public.url("/cargo/public/index/");
    run_ok(cargo(&publisher, &public_index, Some(&public_token), "lib").args([
        "publish",
        "--registry",
        "wharf",
        "--allow-dirty",
    ]));

    let app_index = wharf.url("/cargo/app/index/");
    let client = Workspace::new();
    cargo_app(&client, "wharf-answer");
    let output = run_ok(cargo(&client, &app_index, None, "app").args(["run", "--quiet"]));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "answer=42");
    assert_eq!(version_status(&wharf, "cargo-store", "cargo", "wharf-answer", "1.0.0").await, 200);
    assert_eq!(version_status(&wharf, "app", "cargo", "wharf-answer", "1.0.0").await, 200);

    // A fresh CARGO_HOME builds from what Wharf kept, the upstream gone.
    drop(public);
    let offline = Workspace::new();
    cargo_app(&offline, "wharf-answer");
    let output = run_ok(cargo(&offline, &app_index, None, "app").args(["run", "--quiet"]));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "answer=42");
}

/// `go` with its own caches, `GOPROXY` at `proxy`, no checksum database,
/// no toolchain downloads, and none of the outer environment's GO*.
fn go(ws: &Workspace, dir: &str, proxy: &str) -> std::process::Command {
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

/// Publishes `module` v1.0.0, whose `Answer()` returns `answer`, to the
/// public registry's repository `public`.
async fn publish_go_module(public: &TestServer, module: &str, answer: u32) {
    let token = public.token(&["public"], &["publish"]).await;
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default();
    zip.start_file(format!("{module}@v1.0.0/go.mod"), options).unwrap();
    write!(zip, "module {module}\n\ngo 1.21\n").unwrap();
    zip.start_file(format!("{module}@v1.0.0/answer.go"), options).unwrap();
    write!(zip, "package answer\n\n// Answer is what the test expects.\nfunc Answer() int {{ return {answer} }}\n")
        .unwrap();
    let zip = zip.finish().unwrap().into_inner();
    let escaped = wharf_formats::go::escape(module);
    let published = public
        .client
        .put(public.url(&format!("/go/public/{escaped}/@v/v1.0.0.zip")))
        .bearer_auth(&token)
        .body(zip)
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 201, "{}", published.text().await.unwrap());
}

/// A go application in `app/` printing `answer.Answer()` of `module`.
fn go_consumer(ws: &Workspace, module: &str) {
    ws.write("app/go.mod", "module example.internal/app\n\ngo 1.21\n");
    ws.write(
        "app/main.go",
        &format!("package main\n\nimport \"{module}\"\n\nfunc main() {{ println(answer.Answer()) }}\n"),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn go_builds_through_the_chain_and_keeps_working_without_the_upstream() {
    const MODULE: &str = "example.internal/Acme/answer";
    let public = TestServer::start_with(Some(PUBLIC_CONFIG), &[]);
    let wharf = TestServer::start_with(Some(&chain_config(&public)), &[]);
    publish_go_module(&public, MODULE, 42).await;

    let proxy = format!("http://127.0.0.1:{}/go/app", wharf.port);
    let client = Workspace::new();
    go_consumer(&client, MODULE);
    run_ok(go(&client, "app", &proxy).args(["get", &format!("{MODULE}@v1.0.0")]));
    let output = run_ok(go(&client, "app", &proxy).args(["run", "."]));
    assert_eq!(String::from_utf8_lossy(&output.stderr).trim(), "42");
    let list = run_ok(go(&client, "app", &proxy).args(["list", "-m", "-versions", MODULE]));
    assert_eq!(String::from_utf8_lossy(&list.stdout).trim(), format!("{MODULE} v1.0.0"));
    for repo in ["go-store", "app"] {
        assert_eq!(version_status(&wharf, repo, "go", MODULE, "v1.0.0").await, 200, "{repo}");
    }

    // The upstream gone, a fresh module cache still downloads it.
    drop(public);
    let offline = Workspace::new();
    go_consumer(&offline, MODULE);
    std::fs::copy(client.path("app/go.mod"), offline.path("app/go.mod")).unwrap();
    std::fs::copy(client.path("app/go.sum"), offline.path("app/go.sum")).unwrap();
    let output = run_ok(go(&offline, "app", &proxy).args(["run", "."]));
    let printed = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(printed.contains(&format!("go: downloading {MODULE} v1.0.0")), "{printed}");
    assert_eq!(printed.lines().last(), Some("42"), "{printed}");
}

/// An https external connection (another Wharf serving its own TLS): Wharf
/// verifies the upstream's certificate against its trust store (`SSL_CERT_FILE`
/// here, the test authority), and `go` builds a module fetched over it; an
/// upstream whose certificate it cannot verify is refused with a 502 naming the
/// connection.
#[tokio::test(flavor = "multi_thread")]
async fn go_builds_through_an_https_external_connection() {
    const MODULE: &str = "example.internal/tls/answer";
    let ca = TestCa::new();
    let public = TestServer::start_tls(Some(PUBLIC_CONFIG), &ca, &[]);
    publish_go_module(&public, MODULE, 43).await;

    let config = chain_config_at(&public.base, "");
    let data = tempfile::tempdir().unwrap();
    let trust = [("SSL_CERT_FILE", ca.authority.as_os_str())];
    let wharf = TestServer::start_in_env(data.path(), Some(&config), &[], &trust);
    let proxy = format!("http://127.0.0.1:{}/go/app", wharf.port);
    let client = Workspace::new();
    go_consumer(&client, MODULE);
    run_ok(go(&client, "app", &proxy).args(["get", &format!("{MODULE}@v1.0.0")]));
    let output = run_ok(go(&client, "app", &proxy).args(["run", "."]));
    assert_eq!(String::from_utf8_lossy(&output.stderr).trim(), "43");
    assert_eq!(version_status(&wharf, "go-store", "go", MODULE, "v1.0.0").await, 200);

    // The machine's own trust store does not know the test authority.
    let untrusting = TestServer::start_with(Some(&config), &[]);
    let refused = reqwest::get(untrusting.url(&format!("/go/app/{MODULE}/@v/list"))).await.unwrap();
    assert_eq!(refused.status(), 502);
    let message = refused.text().await.unwrap();
    assert!(message.contains("external connection public-go"), "{message}");
    // The log is read by another thread: give it a moment to catch up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let says_why = || untrusting.log_lines().join("\n").to_lowercase().contains("certificate");
    while !says_why() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(says_why(), "the log says why:\n{}", untrusting.log_lines().join("\n"));
}

/// [`PUBLIC_CONFIG`] with its repository private: a registry that wants credentials.
fn private_public_config() -> String {
    PUBLIC_CONFIG.replace("  access: {read: [{kind: Anonymous}]}\n", "")
}

#[tokio::test(flavor = "multi_thread")]
async fn npm_installs_from_a_private_upstream_with_the_connection_token() {
    let public = TestServer::start_with(Some(&private_public_config()), &[]);
    let publish_token = public.token(&["public"], &["publish"]).await;
    let read_token = public.token(&["public"], &["read"]).await;
    let publisher = Workspace::new();
    npm_package(&publisher, "pad", "wharf-private-pad", "1.0.0", "module.exports = 'private';\n");
    write_npmrc(&publisher, "pad", &public, "public", Some(&publish_token));
    run_ok(npm(&publisher, "pad").args(["publish", "--access", "public"]));

    let with_secret = chain_config(&public).replace(
        &format!("url: \"{}/npm/public\"}}", public.base),
        &format!("url: \"{}/npm/public\", credentialsSecretRef: {{name: public-registry}}}}", public.base),
    );
    assert_ne!(with_secret, chain_config(&public));
    let secrets = tempfile::tempdir().unwrap();
    let secrets_dir = secrets.path().to_str().unwrap();

    // Without the Secret's file the registry does not start, and says which.
    let data = tempfile::tempdir().unwrap();
    let config_path = data.path().join("wharf.yaml");
    std::fs::write(&config_path, with_secret.replace("{data}", &data.path().join("store").display().to_string()))
        .unwrap();
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_wharf-registry"))
        .args(["serve", "--listen", "127.0.0.1:0", "--secrets-dir", secrets_dir, "--config"])
        .arg(&config_path)
        .env("WHARF_ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    let token_file = secrets.path().join("public-registry/token").display().to_string();
    for part in ["external connection public-npm", "\"public-registry\"", token_file.as_str()] {
        assert!(stderr.contains(part), "{part} in:\n{stderr}");
    }

    // With the token in the secrets folder, npm installs through `app`.
    std::fs::create_dir(secrets.path().join("public-registry")).unwrap();
    std::fs::write(secrets.path().join("public-registry/token"), format!("{read_token}\n")).unwrap();
    let wharf = TestServer::start_with(Some(&with_secret), &["--secrets-dir", secrets_dir]);
    let client = Workspace::new();
    client.write("project/package.json", r#"{"name":"project","version":"1.0.0","private":true}"#);
    write_npmrc(&client, "project", &wharf, "app", None);
    run_ok(npm(&client, "project").args(["install", "wharf-private-pad"]));
    assert_eq!(installed(&client, "project", "wharf-private-pad"), "module.exports = 'private';\n");
    assert_eq!(version_status(&wharf, "npm-store", "npm", "wharf-private-pad", "1.0.0").await, 200);
    assert!(!wharf.log_lines().iter().any(|l| l.contains(&read_token)), "the token is never logged");

    // The same connection without credentials: a 502 naming it and the 401.
    let anonymous = TestServer::start_with(Some(&chain_config(&public)), &[]);
    let reply = reqwest::get(anonymous.url("/npm/app/wharf-private-pad")).await.unwrap();
    assert_eq!(reply.status(), 502);
    let message = reply.text().await.unwrap();
    assert!(message.contains("external connection public-npm answered 401"), "{message}");
    assert!(message.contains("credentialsSecretRef"), "{message}");
}

/// Every request Wharf made to external connection `connection`, from its `/metrics`.
async fn upstream_requests(server: &TestServer, connection: &str) -> u64 {
    let text = reqwest::get(server.url("/metrics")).await.unwrap().text().await.unwrap();
    let prefix = format!("wharf_upstream_requests_total{{connection=\"{connection}\",");
    text.lines()
        .filter(|line| line.starts_with(&prefix))
        .map(|line| line.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// A GOPROXY in front of `backend` that answers 410 where it says 404, as
/// public proxies do for the path prefixes the go command probes. Stops
/// with the test's runtime.
async fn gone_saying_proxy(backend: String) -> String {
    async fn forward(
        axum::extract::State(backend): axum::extract::State<String>,
        uri: axum::http::Uri,
    ) -> (axum::http::StatusCode, bytes::Bytes) {
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let reply = reqwest::get(format!("{backend}{path}")).await.unwrap();
        let status = match reply.status().as_u16() {
            404 => axum::http::StatusCode::GONE,
            other => axum::http::StatusCode::from_u16(other).unwrap(),
        };
        (status, reply.bytes().await.unwrap())
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().fallback(axum::routing::get(forward)).with_state(backend);
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

#[tokio::test(flavor = "multi_thread")]
async fn a_warm_go_build_through_the_chain_makes_no_upstream_request() {
    const MODULE: &str = "example.internal/warm/answer";
    let public = TestServer::start_with(Some(PUBLIC_CONFIG), &[]);
    publish_go_module(&public, MODULE, 44).await;
    let proxy = gone_saying_proxy(public.base.clone()).await;
    // The default metadata TTL (5 m), as a warm build on the next commit sees it.
    let config = chain_config_at(&proxy, "").replace("  metadataTTL: 1s\n", "");
    let wharf = TestServer::start_with(Some(&config), &[]);
    let goproxy = format!("http://127.0.0.1:{}/go/app", wharf.port);

    let cold = Workspace::new();
    go_consumer(&cold, MODULE);
    run_ok(go(&cold, "app", &goproxy).args(["get", &format!("{MODULE}@v1.0.0")]));
    let output = run_ok(go(&cold, "app", &goproxy).args(["run", "."]));
    assert_eq!(String::from_utf8_lossy(&output.stderr).trim(), "44");
    let after_cold = upstream_requests(&wharf, "public-go").await;
    assert!(after_cold > 0, "the cold build fetched through the connection");

    // A fresh machine: empty module and build caches, the same `go get`
    // (which probes `example.internal/warm/@v/…` and `example.internal/@v/…`,
    // answered 410 upstream) and build.
    let warm = Workspace::new();
    go_consumer(&warm, MODULE);
    run_ok(go(&warm, "app", &goproxy).args(["get", &format!("{MODULE}@v1.0.0")]));
    let output = run_ok(go(&warm, "app", &goproxy).args(["run", "."]));
    assert_eq!(String::from_utf8_lossy(&output.stderr).trim(), "44");
    assert_eq!(upstream_requests(&wharf, "public-go").await, after_cold, "a warm build asks the upstream nothing");
}

/// The packument `app` serves for `name`: its versions and `latest`.
async fn packument_versions(wharf: &TestServer, name: &str) -> (Vec<String>, String) {
    let response = reqwest::get(wharf.url(&format!("/npm/app/{name}"))).await.unwrap();
    assert_eq!(response.status(), 200, "{name}");
    let packument: serde_json::Value = response.json().await.unwrap();
    let mut versions: Vec<String> = packument["versions"].as_object().unwrap().keys().cloned().collect();
    versions.sort();
    (versions, packument["dist-tags"]["latest"].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_metadata_survives_a_restart_with_the_upstream_gone() {
    let public = TestServer::start_with(Some(PUBLIC_CONFIG), &[]);
    let data = tempfile::tempdir().unwrap();
    let config = chain_config(&public);
    let wharf = TestServer::start_in(data.path(), Some(&config), &[]);
    let public_token = public.token(&["public"], &["publish"]).await;
    let ws = Workspace::new();
    for version in ["1.0.0", "2.0.0"] {
        let dir = format!("major-{version}");
        npm_package(&ws, &dir, "wharf-major", version, &format!("module.exports = '{version}';\n"));
        write_npmrc(&ws, &dir, &public, "public", Some(&public_token));
        run_ok(npm(&ws, &dir).args(["publish", "--access", "public"]));
    }
    // Only 1.0.0 is kept; 2.0.0 is known from the upstream's packument alone.
    let client = Workspace::new();
    client.write("project/package.json", r#"{"name":"project","version":"1.0.0","private":true}"#);
    write_npmrc(&client, "project", &wharf, "app", None);
    run_ok(npm(&client, "project").args(["install", "wharf-major@1.0.0"]));
    let before = packument_versions(&wharf, "wharf-major").await;
    assert_eq!(before, (vec!["1.0.0".to_owned(), "2.0.0".to_owned()], "2.0.0".to_owned()));

    // The upstream goes away, then the registry restarts.
    drop(public);
    drop(wharf);
    let wharf = TestServer::start_in(data.path(), Some(&config), &[]);
    assert_eq!(packument_versions(&wharf, "wharf-major").await, before, "the upstream's versions and latest");
    // The log is read by another thread; give it a moment.
    let logged = || wharf.log_lines().iter().any(|l| l.contains("serving stale upstream metadata"));
    for _ in 0..50 {
        if logged() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(logged(), "{}", wharf.log_lines().join("\n"));

    // The last good packument is kept in storage as a small record and a blob.
    let kept_dir = data.path().join("store/upstream/public-npm");
    let records: Vec<_> = std::fs::read_dir(&kept_dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(records.len(), 1, "{records:?}");
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(&records[0]).unwrap()).unwrap();
    assert!(record["url"].as_str().unwrap().ends_with("/npm/public/wharf-major"), "{record}");
    assert!(std::fs::metadata(&records[0]).unwrap().len() < 1024, "{record}");

    // Past --upstream-max-stale-seconds the kept copy is not served.
    drop(wharf);
    let strict = TestServer::start_in(data.path(), Some(&config), &["--upstream-max-stale-seconds", "0"]);
    assert_eq!(packument_versions(&strict, "wharf-major").await.0, vec!["1.0.0".to_owned()]);
}
