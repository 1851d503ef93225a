//! The real `npm` client against the real registry binary: publish
//! (scoped and unscoped), install into a fresh project, dist-tags, view,
//! deprecate, ping, whoami, immutability and access control.
#![allow(clippy::unwrap_used)]

mod support;

use support::*;

pub const PRIVATE_CONFIG: &str = r#"
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
  access: {read: [{kind: Namespace, name: team-web}]}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {name: other}
spec:
  domainRef: {name: acme}
"#;

fn package(workspace: &Workspace, dir: &str, name: &str, version: &str, body: &str) {
    workspace.write(
        &format!("{dir}/package.json"),
        &serde_json::json!({"name": name, "version": version, "main": "index.js", "description": "test package"})
            .to_string(),
    );
    workspace.write(&format!("{dir}/index.js"), body);
}

#[tokio::test(flavor = "multi_thread")]
async fn npm_publish_install_tags_and_deprecate() {
    let server = TestServer::start();
    let token = server.token(&["main"], &["read", "publish"]).await;
    let ws = Workspace::new();

    for (dir, name) in [("scoped", "@acme/tools"), ("plain", "wharf-left-pad")] {
        package(&ws, dir, name, "1.0.0", "module.exports = 'one';\n");
        write_npmrc(&ws, dir, &server, "main", Some(&token));
        run_ok(npm(&ws, dir).args(["publish", "--access", "public"]));
    }
    package(&ws, "scoped", "@acme/tools", "1.1.0", "module.exports = 'two';\n");
    run_ok(npm(&ws, "scoped").args(["publish", "--tag", "beta"]));

    // A fresh project installs both by range and gets latest, not beta.
    ws.write("app/package.json", r#"{"name":"app","version":"1.0.0","private":true}"#);
    write_npmrc(&ws, "app", &server, "main", Some(&token));
    run_ok(npm(&ws, "app").args(["install", "@acme/tools", "wharf-left-pad@^1"]));
    let installed = std::fs::read_to_string(ws.path("app/node_modules/@acme/tools/index.js")).unwrap();
    assert_eq!(installed, "module.exports = 'one';\n");
    assert!(ws.path("app/node_modules/wharf-left-pad/index.js").exists());
    let lock = std::fs::read_to_string(ws.path("app/package-lock.json")).unwrap();
    assert!(lock.contains(&format!("{}/npm/main/@acme/tools/-/tools-1.0.0.tgz", server.base)), "{lock}");
    assert!(lock.contains("\"integrity\": \"sha512-"), "{lock}");

    // dist-tags
    let ls = run_ok(npm(&ws, "scoped").args(["dist-tag", "ls", "@acme/tools"]));
    assert!(text(&ls).contains("beta: 1.1.0") && text(&ls).contains("latest: 1.0.0"), "{}", text(&ls));
    run_ok(npm(&ws, "scoped").args(["dist-tag", "add", "@acme/tools@1.1.0", "latest"]));
    run_ok(npm(&ws, "scoped").args(["dist-tag", "rm", "@acme/tools", "beta"]));
    let view = run_ok(npm(&ws, "scoped").args(["view", "@acme/tools", "dist-tags", "--json"]));
    let tags: serde_json::Value = serde_json::from_slice(&view.stdout).unwrap();
    assert_eq!(tags, serde_json::json!({"latest": "1.1.0"}));

    // view, deprecate, whoami, ping
    let versions = run_ok(npm(&ws, "scoped").args(["view", "@acme/tools", "versions", "--json"]));
    let versions: serde_json::Value = serde_json::from_slice(&versions.stdout).unwrap();
    assert_eq!(versions, serde_json::json!(["1.0.0", "1.1.0"]));
    run_ok(npm(&ws, "scoped").args(["deprecate", "@acme/tools@1.0.0", "use 1.1.0"]));
    let deprecated = run_ok(npm(&ws, "scoped").args(["view", "@acme/tools@1.0.0", "deprecated"]));
    assert_eq!(String::from_utf8_lossy(&deprecated.stdout).trim(), "use 1.1.0");
    let whoami = run_ok(npm(&ws, "scoped").arg("whoami"));
    assert_eq!(String::from_utf8_lossy(&whoami.stdout).trim(), "ci-bot");
    run_ok(npm(&ws, "scoped").arg("ping"));

    // A version is immutable: npm's retry after the 409 re-reads the
    // packument and gives up. (Identical re-publishes are idempotent at the
    // HTTP level, see http_api.rs; npm itself never sends one.)
    package(&ws, "plain", "wharf-left-pad", "1.0.0", "module.exports = 'changed';\n");
    let conflict = run(npm(&ws, "plain").arg("publish"));
    assert!(!conflict.status.success());
    assert!(text(&conflict).to_lowercase().contains("cannot publish over"), "{}", text(&conflict));

    // An installed project still gets the original bytes.
    ws.write("app2/package.json", r#"{"name":"app2","version":"1.0.0","private":true}"#);
    write_npmrc(&ws, "app2", &server, "main", None);
    run_ok(npm(&ws, "app2").args(["install", "wharf-left-pad@1.0.0"]));
    let body = std::fs::read_to_string(ws.path("app2/node_modules/wharf-left-pad/index.js")).unwrap();
    assert_eq!(body, "module.exports = 'one';\n", "anonymous read installs the first bytes");
}

#[tokio::test(flavor = "multi_thread")]
async fn npm_access_control() {
    let server = TestServer::start_with(Some(PRIVATE_CONFIG), &[]);
    let ws = Workspace::new();
    package(&ws, "pkg", "@acme/secret", "1.0.0", "module.exports = 1;\n");

    // No credential: 401 with a Basic challenge.
    let response = reqwest::get(server.url("/npm/private/@acme%2fsecret")).await.unwrap();
    assert_eq!(response.status(), 401);
    let challenge = response.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.starts_with("Basic realm=\""), "{challenge}");

    // A read-only token cannot publish.
    let read_only = server.token(&["private"], &["read"]).await;
    write_npmrc(&ws, "pkg", &server, "private", Some(&read_only));
    let refused = run(npm(&ws, "pkg").arg("publish"));
    assert!(!refused.status.success());
    assert!(text(&refused).contains("403"), "{}", text(&refused));

    // A token for another repository is refused here.
    let other = server.token(&["other"], &["read", "publish"]).await;
    write_npmrc(&ws, "pkg", &server, "private", Some(&other));
    let refused = run(npm(&ws, "pkg").arg("publish"));
    assert!(text(&refused).contains("403"), "{}", text(&refused));

    // The right token publishes; its installs work, anonymous ones do not.
    let publisher = server.token(&["private"], &["publish"]).await;
    write_npmrc(&ws, "pkg", &server, "private", Some(&publisher));
    run_ok(npm(&ws, "pkg").arg("publish"));
    ws.write("app/package.json", r#"{"name":"app","version":"1.0.0","private":true}"#);
    write_npmrc(&ws, "app", &server, "private", Some(&read_only));
    run_ok(npm(&ws, "app").args(["install", "@acme/secret"]));
    write_npmrc(&ws, "app", &server, "private", None);
    std::fs::remove_dir_all(ws.path("app/node_modules")).unwrap();
    std::fs::remove_file(ws.path("app/package-lock.json")).unwrap();
    let anonymous = run(npm(&ws, "app").args(["install", "@acme/secret"]));
    assert!(!anonymous.status.success());
    assert!(text(&anonymous).contains("401"), "{}", text(&anonymous));
}
