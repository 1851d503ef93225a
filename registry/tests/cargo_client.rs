//! The real `cargo` against the real registry binary over the sparse
//! index: publish (token from `CARGO_REGISTRIES_WHARF_TOKEN` through the
//! `cargo:token` provider), builds of a dependent crate in fresh
//! `CARGO_HOME`s, yank and unyank against fresh resolutions and an existing
//! lockfile, a dependency chain with `dep:` features, owners, search,
//! immutability, name spelling and access control, on an auth-required
//! repository and on an anonymously readable one.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;

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

/// How one `CARGO_HOME` reaches the registry.
struct CargoSetup<'a> {
    server: &'a TestServer,
    repo: &'a str,
    /// Sent through the `cargo:token` provider when set.
    token: Option<&'a str>,
}

/// Writes `$CARGO_HOME/config.toml` naming the registry `wharf`.
fn configure(ws: &Workspace, setup: &CargoSetup) {
    let index = format!("sparse+{}/cargo/{}/index/", setup.server.base, setup.repo);
    ws.write(
        "home/.cargo/config.toml",
        &format!(
            "[registries.wharf]\nindex = \"{index}\"\ncredential-provider = \"cargo:token\"\n\n[net]\nretry = 0\n"
        ),
    );
}

/// `cargo` isolated in the workspace: its own `CARGO_HOME`, none of the
/// outer `cargo test`'s variables, the token only when the setup has one.
fn cargo(ws: &Workspace, setup: &CargoSetup, dir: &str) -> Command {
    let mut command = isolated_cargo(ws, dir);
    // Hermetic: the registry under test is plain http on loopback, so send
    // every https request (a public registry) to a closed port; a test that
    // needed the internet would fail here instead of passing by luck.
    command.env("https_proxy", "http://127.0.0.1:9").env("HTTPS_PROXY", "http://127.0.0.1:9");
    if let Some(token) = setup.token {
        command.env("CARGO_REGISTRIES_WHARF_TOKEN", token);
    }
    command
}

/// A library crate whose `answer()` returns `answer`.
fn library(ws: &Workspace, dir: &str, name: &str, version: &str, answer: u32) {
    ws.write(
        &format!("{dir}/Cargo.toml"),
        &format!(
            "[package]\nname = \"{name}\"\nversion = \"{version}\"\nedition = \"2021\"\ndescription = \"A crate for Wharf's tests\"\nlicense = \"MIT\"\npublish = [\"wharf\"]\n\n[features]\ndefault = [\"std\"]\nstd = []\n\n[dependencies]\n"
        ),
    );
    ws.write(&format!("{dir}/src/lib.rs"), &format!("pub fn answer() -> u32 {{\n    {answer}\n}}\n"));
}

/// A binary crate printing the answer of `dependency` (a `wharf` crate).
fn application(ws: &Workspace, dir: &str, dependency: &str, requirement: &str) {
    ws.write(
        &format!("{dir}/Cargo.toml"),
        &format!(
            "[package]\nname = \"app\"\nversion = \"0.1.0\"\nedition = \"2021\"\npublish = false\n\n[dependencies]\n{dependency} = {{ version = \"{requirement}\", registry = \"wharf\" }}\n"
        ),
    );
    let module = dependency.replace('-', "_");
    ws.write(
        &format!("{dir}/src/main.rs"),
        &format!("fn main() {{\n    println!(\"answer={{}}\", {module}::answer());\n}}\n"),
    );
}

fn publish(ws: &Workspace, setup: &CargoSetup, dir: &str) -> std::process::Output {
    run(cargo(ws, setup, dir).args(["publish", "--registry", "wharf", "--allow-dirty"]))
}

/// Runs the application and returns what it printed.
fn answer(ws: &Workspace, setup: &CargoSetup, dir: &str, extra: &[&str]) -> String {
    let output = run_ok(cargo(ws, setup, dir).args(["run", "--quiet"]).args(extra));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A fresh `CARGO_HOME` (no cached index, no downloaded crates) with an
/// application in `app/`.
fn fresh_app(setup: &CargoSetup, dependency: &str, requirement: &str) -> Workspace {
    let ws = Workspace::new();
    configure(&ws, setup);
    application(&ws, "app", dependency, requirement);
    ws
}

#[tokio::test(flavor = "multi_thread")]
async fn cargo_publish_build_yank_owners_search_on_an_auth_required_repository() {
    let server = TestServer::start_with(Some(PRIVATE_CONFIG), &[]);
    let token = server.token(&["private"], &["read", "publish"]).await;
    let setup = CargoSetup { server: &server, repo: "private", token: Some(&token) };

    // Anonymous requests for config.json get the 401 that makes cargo send its token.
    let anonymous = reqwest::get(server.url("/cargo/private/index/config.json")).await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert!(anonymous.headers().contains_key("www-authenticate"));
    let config: serde_json::Value = reqwest::Client::new()
        .get(server.url("/cargo/private/index/config.json"))
        .header("authorization", &token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(config["auth-required"], true, "{config}");

    // Publish two versions; cargo waits until each shows in the index.
    let publisher = Workspace::new();
    configure(&publisher, &setup);
    for (version, answer) in [("0.1.0", 1), ("0.1.1", 2)] {
        library(&publisher, "lib", "wharf-demo", version, answer);
        let output = publish(&publisher, &setup, "lib");
        let text = text(&output);
        assert!(output.status.success(), "{text}");
        assert!(text.contains(&format!("Published wharf-demo v{version}")), "{text}");
        assert!(!text.contains("timed out"), "the index must show the version at once: {text}");
    }

    // A dependent crate builds against the newest version, in its own CARGO_HOME.
    let first = fresh_app(&setup, "wharf-demo", "0.1");
    assert_eq!(answer(&first, &setup, "app", &[]), "answer=2");
    let lockfile = std::fs::read_to_string(first.path("app/Cargo.lock")).unwrap();
    let downloaded = reqwest::Client::new()
        .get(server.url("/cargo/private/api/v1/crates/wharf-demo/0.1.1/download"))
        .header("authorization", &token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let checksum = hex::encode(Sha256::digest(&downloaded));
    assert!(lockfile.contains(&format!("checksum = \"{checksum}\"")), "{lockfile}");

    // Yanked: a fresh resolution avoids 0.1.1 ...
    run_ok(cargo(&publisher, &setup, "lib").args(["yank", "--registry", "wharf", "wharf-demo@0.1.1"]));
    let fresh = fresh_app(&setup, "wharf-demo", "0.1");
    assert_eq!(answer(&fresh, &setup, "app", &[]), "answer=1");
    // ... while the existing lockfile still builds, downloading the yanked crate.
    let locked = fresh_app(&setup, "wharf-demo", "0.1");
    std::fs::write(locked.path("app/Cargo.lock"), &lockfile).unwrap();
    assert_eq!(answer(&locked, &setup, "app", &["--locked"]), "answer=2");

    // Unyanked: resolution picks it again.
    run_ok(cargo(&publisher, &setup, "lib").args(["yank", "--registry", "wharf", "wharf-demo@0.1.1", "--undo"]));
    run_ok(cargo(&fresh, &setup, "app").args(["update"]));
    assert_eq!(answer(&fresh, &setup, "app", &[]), "answer=2");

    // Owners: who published it (the token's subject).
    let owners =
        run_ok(cargo(&publisher, &setup, "lib").args(["owner", "--registry", "wharf", "--list", "wharf-demo"]));
    assert!(text(&owners).contains("ci-bot"), "{}", text(&owners));

    // Search.
    let search = run_ok(cargo(&publisher, &setup, "lib").args(["search", "--registry", "wharf", "demo"]));
    let found = String::from_utf8_lossy(&search.stdout);
    assert!(found.contains("wharf-demo = \"0.1.1\""), "{}", text(&search));
    assert!(found.contains("A crate for Wharf's tests"), "{}", text(&search));

    // A published version is immutable. cargo finds it in the index itself
    // (so the index is fresh) ...
    library(&publisher, "lib", "wharf-demo", "0.1.1", 3);
    let republish = publish(&publisher, &setup, "lib");
    assert!(!republish.status.success());
    assert!(text(&republish).contains("wharf-demo@0.1.1 already exists"), "{}", text(&republish));
    // ... and when the index does not list it (archived through the
    // management API), cargo uploads and shows the registry's refusal.
    library(&publisher, "lib", "wharf-demo", "0.1.2", 5);
    run_ok(cargo(&publisher, &setup, "lib").args(["publish", "--registry", "wharf", "--allow-dirty"]));
    let archived = server.set_status("private", "cargo", "wharf-demo", "0.1.2", "Archived", &token).await;
    assert_eq!(archived.status(), 200);
    library(&publisher, "lib", "wharf-demo", "0.1.2", 6);
    let rebuilt = publish(&publisher, &setup, "lib");
    assert!(!rebuilt.status.success());
    assert!(
        text(&rebuilt).contains("crate version wharf-demo@0.1.2 is already uploaded with different contents"),
        "{}",
        text(&rebuilt)
    );
    // ... and the original bytes are still what a fresh build gets.
    let after = fresh_app(&setup, "wharf-demo", "=0.1.1");
    assert_eq!(answer(&after, &setup, "app", &[]), "answer=2");

    // Without a token cargo cannot read an auth-required registry.
    let anonymous_setup = CargoSetup { server: &server, repo: "private", token: None };
    let nobody = fresh_app(&anonymous_setup, "wharf-demo", "0.1");
    let refused = run(cargo(&nobody, &anonymous_setup, "app").args(["generate-lockfile"]));
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(text(&refused).contains("token"), "{}", text(&refused));
    // A token for reading only cannot publish.
    let reader = server.token(&["private"], &["read"]).await;
    let reader_setup = CargoSetup { server: &server, repo: "private", token: Some(&reader) };
    library(&publisher, "lib", "wharf-demo", "0.2.0", 4);
    let forbidden = publish(&publisher, &reader_setup, "lib");
    assert!(!forbidden.status.success());
    assert!(text(&forbidden).contains("may not publish"), "{}", text(&forbidden));
}

#[tokio::test(flavor = "multi_thread")]
async fn cargo_on_an_anonymously_readable_repository() {
    let server = TestServer::start();
    let token = server.token(&["main"], &["read", "publish"]).await;
    let setup = CargoSetup { server: &server, repo: "main", token: Some(&token) };

    let config: serde_json::Value =
        reqwest::get(server.url("/cargo/main/index/config.json")).await.unwrap().json().await.unwrap();
    assert!(config.get("auth-required").is_none(), "{config}");

    let publisher = Workspace::new();
    configure(&publisher, &setup);
    library(&publisher, "lib", "wharf_util", "1.0.0", 7);
    let output = publish(&publisher, &setup, "lib");
    assert!(output.status.success(), "{}", text(&output));

    // Builds need no token at all here.
    let anonymous = CargoSetup { server: &server, repo: "main", token: None };
    let app = fresh_app(&anonymous, "wharf_util", "1");
    assert_eq!(answer(&app, &anonymous, "app", &[]), "answer=7");

    // A crate depending on it through a `dep:` feature (an index line with
    // `v: 2` and `features2`), and a build through both.
    publisher.write(
        "chain/Cargo.toml",
        "[package]\nname = \"wharf-chain\"\nversion = \"0.1.0\"\nedition = \"2021\"\ndescription = \"Depends on wharf_util\"\nlicense = \"MIT\"\n\n[dependencies]\nwharf_util = { version = \"1\", registry = \"wharf\", optional = true }\n\n[features]\ndefault = [\"util\"]\nutil = [\"dep:wharf_util\"]\n",
    );
    publisher.write(
        "chain/src/lib.rs",
        "#[cfg(feature = \"util\")]\npub fn answer() -> u32 {\n    wharf_util::answer() + 1\n}\n",
    );
    let output = publish(&publisher, &setup, "chain");
    assert!(output.status.success(), "{}", text(&output));
    let line: serde_json::Value =
        reqwest::get(server.url("/cargo/main/index/wh/ar/wharf-chain")).await.unwrap().json().await.unwrap();
    assert_eq!(line["v"], 2, "{line}");
    assert_eq!(line["features2"]["util"], serde_json::json!(["dep:wharf_util"]), "{line}");
    let dependency = &line["deps"][0];
    assert_eq!(dependency["name"], "wharf_util", "{line}");
    assert!(dependency["registry"].is_null(), "a dependency from the same registry has no registry URL: {line}");
    let chained = fresh_app(&anonymous, "wharf-chain", "0.1");
    assert_eq!(answer(&chained, &anonymous, "app", &[]), "answer=8");

    // `Wharf-Util` is the same crate as `wharf_util`; the first spelling stays
    // and cargo shows the registry's refusal.
    library(&publisher, "other", "Wharf-Util", "1.0.1", 8);
    let respelled = publish(&publisher, &setup, "other");
    assert!(!respelled.status.success());
    assert!(
        text(&respelled).contains("cargo package wharf_util already exists; publish it under that name"),
        "{}",
        text(&respelled)
    );
}
