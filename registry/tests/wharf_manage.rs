//! `wharf packages`, `wharf versions` and `wharf audit` (the CLI, built by tests/run.sh)
//! against the real registry binary: a promotion from `dev` to `prod` at a terminal.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::*;

/// `wharf ARGS` with `token` in WHARF_TOKEN and the registry in WHARF_REGISTRY.
fn wharf(ws: &Workspace, server: &TestServer, token: &str, args: &[&str]) -> Command {
    let mut command = ws.command(wharf_bin(), ".");
    command.env("WHARF_REGISTRY", &server.base).env("WHARF_TOKEN", token).env_remove("WHARF_ADMIN_TOKEN").args(args);
    command
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_release_is_promoted_inspected_and_audited_from_the_command_line() {
    let server = TestServer::start_with(Some(DEV_AND_PROD_ON_A_FOLDER), &["--audit-log", "off"]);
    let ci = server.token_for("ci-bot", &["dev"], &["read", "publish"]).await;
    let release = server.token_for("release-bot", &["dev", "prod"], &["read", "publish"]).await;
    for version in ["1.0.0", "1.1.0"] {
        let body = format!("tool {version}").into_bytes();
        let checksum = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&body));
        let url = server.url(&format!("/generic/dev/acme/tool/{version}/tool.bin"));
        let put = server.client.put(url).bearer_auth(&ci).header("x-checksum-sha256", checksum).body(body);
        assert_eq!(put.send().await.unwrap().status(), 201);
    }
    let ws = Workspace::new();
    let package = ["--format", "generic", "--package", "acme/tool"];

    let list = run_ok(&mut wharf(&ws, &server, &ci, &["packages", "list", "--repository", "dev"]));
    let line = stdout(&list).lines().find(|l| l.contains("acme/tool")).map(str::to_owned);
    assert!(line.as_deref().is_some_and(|l| l.contains(" 2 ") && l.contains("local")), "{}", stdout(&list));
    let json_list = run_ok(&mut wharf(&ws, &server, &ci, &["packages", "list", "--repository", "dev", "--json"]));
    let parsed: Value = serde_json::from_str(&stdout(&json_list)).unwrap();
    assert_eq!(parsed["packages"][0]["name"], "acme/tool");

    let show = run_ok(wharf(&ws, &server, &ci, &["packages", "show", "--repository", "dev"]).args(package));
    assert!(stdout(&show).lines().any(|l| l.starts_with("1.1.0") && l.contains("ci-bot")), "{}", stdout(&show));
    let detail = run_ok(
        wharf(&ws, &server, &ci, &["packages", "show", "--repository", "dev", "--version", "1.0.0"]).args(package),
    );
    assert!(stdout(&detail).contains("tool.bin") && stdout(&detail).contains("sha256:"), "{}", stdout(&detail));

    // CI may not promote; the release token does.
    let copy = ["versions", "copy", "--from", "dev", "--to", "prod", "--version", "1.0.0"];
    let refused = run(wharf(&ws, &server, &ci, &copy).args(package));
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("403"), "{}", text(&refused));
    let copied = run_ok(wharf(&ws, &server, &release, &copy).args(package));
    assert!(stdout(&copied).contains("copied 1.0.0"), "{}", stdout(&copied));
    let fetched = server.client.get(server.url("/generic/prod/acme/tool/1.0.0/tool.bin")).bearer_auth(&release).send();
    assert_eq!(fetched.await.unwrap().text().await.unwrap(), "tool 1.0.0");

    let status = ["versions", "status", "--repository", "prod", "--version", "1.0.0", "--status", "Unlisted"];
    let unlisted = run_ok(wharf(&ws, &server, &release, &status).args(package));
    assert!(stdout(&unlisted).contains("1.0.0 is Unlisted"), "{}", stdout(&unlisted));
    let again = run(wharf(&ws, &server, &release, &status).args(package).args(["--expected-status", "Published"]));
    assert!(!again.status.success() && stdout(&again).contains("1.0.0 unchanged"), "{}", text(&again));
    // Why a version is (not) served, per version and for one.
    let explain = run_ok(wharf(&ws, &server, &release, &["packages", "explain", "--repository", "prod"]).args(package));
    let lines = stdout(&explain);
    assert!(lines.contains("1. repository prod: searched (the Repository asked), 1 versions"), "{lines}");
    assert!(
        lines.contains("1.0.0            Unlisted    prod                     served by exact version only (Unlisted)"),
        "{lines}"
    );
    let one = ["packages", "explain", "--repository", "prod", "--version", "9.9.9"];
    let missing = run_ok(wharf(&ws, &server, &release, &one).args(package));
    assert!(stdout(&missing).contains("9.9.9: no step has it"), "{}", stdout(&missing));

    let delete = ["versions", "delete", "--repository", "dev", "--version", "1.1.0"];
    let not_admin = run(wharf(&ws, &server, &release, &delete).args(package));
    assert!(String::from_utf8_lossy(&not_admin.stderr).contains("administrators"), "{}", text(&not_admin));
    let deleted = run_ok(wharf(&ws, &server, ADMIN_TOKEN, &delete).args(package));
    assert!(stdout(&deleted).contains("deleted 1.1.0"), "{}", stdout(&deleted));

    // The trail, from the command line: who copied, who unlisted.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let audit = run_ok(&mut wharf(&ws, &server, &release, &["audit", "--repository", "prod"]));
        let lines = stdout(&audit);
        let copied = lines.lines().any(|l| {
            l.contains("package.copied")
                && l.contains("prod/generic/acme/tool@1.0.0")
                && l.contains("release-bot from 127.0.0.1")
        });
        let changed = lines.lines().any(|l| l.contains("package.status_changed") && l.contains("release-bot"));
        if copied && changed {
            break;
        }
        assert!(Instant::now() < deadline, "the audit lacks the copy or the status change:\n{lines}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let everything = run(&mut wharf(&ws, &server, &release, &["audit"]));
    assert!(String::from_utf8_lossy(&everything.stderr).contains("administrators"), "{}", text(&everything));
}
