//! The real Python clients against the real registry binary: `twine` and
//! `uv publish` upload, `pip install`, `pip download` of an sdist and
//! `uv pip install` read; yanking, immutability, PEP 658 and access control.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};

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

/// Builds an sdist and a wheel with the real `build` frontend.
fn build_project(ws: &Workspace, venv: &Path, dir: &str, name: &str, version: &str) -> Vec<PathBuf> {
    ws.write(
        &format!("{dir}/pyproject.toml"),
        &format!(
            "[build-system]\nrequires = [\"setuptools>=61\", \"wheel\"]\nbuild-backend = \"setuptools.build_meta\"\n\n[project]\nname = \"{name}\"\nversion = \"{version}\"\nrequires-python = \">=3.8\"\n"
        ),
    );
    ws.write(&format!("{dir}/src/demo_pkg/__init__.py"), &format!("VERSION = \"{version}\"\n"));
    run_ok(ws.command(venv_bin(venv, "python"), dir).args(["-m", "build", "--no-isolation", "--outdir", "dist", "."]));
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(ws.path(&format!("{dir}/dist"))).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert_eq!(files.len(), 2, "{files:?}");
    files
}

fn twine(ws: &Workspace, venv: &Path, server: &TestServer, repo: &str, token: &str) -> std::process::Command {
    let mut command = ws.command(venv_bin(venv, "twine"), ".");
    command
        .args(["upload", "--non-interactive", "--disable-progress-bar", "--repository-url"])
        .arg(server.url(&format!("/pypi/{repo}/")))
        .args(["-u", "__token__", "-p", token]);
    command
}

fn index_url(server: &TestServer, repo: &str, token: Option<&str>) -> String {
    match token {
        Some(token) => format!("http://__token__:{token}@127.0.0.1:{}/pypi/{repo}/simple/", server.port),
        None => server.url(&format!("/pypi/{repo}/simple/")),
    }
}

fn new_venv(ws: &Workspace, dir: &str) -> PathBuf {
    run_ok(ws.command("python3", ".").args(["-m", "venv", dir]));
    ws.path(dir)
}

fn installed_version(ws: &Workspace, venv: &Path) -> String {
    let output =
        run_ok(ws.command(venv_bin(venv, "python"), ".").args(["-c", "import demo_pkg; print(demo_pkg.VERSION)"]));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn python_clients_publish_and_install() {
    let tools = python_tools();
    let server = TestServer::start();
    let token = server.token(&["main"], &["read", "publish"]).await;
    let ws = Workspace::new();

    // twine uploads what `build` made; uv publish uploads the next release.
    let first = build_project(&ws, &tools, "v1", "Demo_Pkg", "1.0.0");
    run_ok(twine(&ws, &tools, &server, "main", &token).args(&first));
    let second = build_project(&ws, &tools, "v2", "Demo_Pkg", "1.1.0");
    let mut uv_publish = ws.command(venv_bin(&tools, "uv"), ".");
    uv_publish
        .args(["publish", "--publish-url"])
        .arg(server.url("/pypi/main/"))
        .args(["--token", &token, "--check-url"])
        .arg(index_url(&server, "main", None))
        .args(&second);
    run_ok(&mut uv_publish);
    // uv publish again: the check URL shows the files are there already.
    run_ok(&mut uv_publish);

    // pip installs the newest; the name is normalised.
    let venv = new_venv(&ws, "pip-env");
    run_ok(ws.command(venv_bin(&venv, "pip"), ".").args([
        "install",
        "--index-url",
        &index_url(&server, "main", None),
        "demo-pkg",
    ]));
    assert_eq!(installed_version(&ws, &venv), "1.1.0");

    // pip download of the sdist (built with the tools' setuptools).
    let download = run_ok(ws.command(venv_bin(&tools, "pip"), ".").args([
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        "--no-build-isolation",
        "--dest",
        "downloads",
        "--index-url",
        &index_url(&server, "main", Some(&token)),
        "demo-pkg==1.0.0",
    ]));
    let sdist = ws.path("downloads/demo_pkg-1.0.0.tar.gz");
    assert!(sdist.exists(), "{}", text(&download));
    assert_eq!(std::fs::read(&sdist).unwrap(), std::fs::read(&first[1]).unwrap());

    // uv pip install with credentials in the index URL.
    let uv_env = ws.path("uv-env");
    run_ok(ws.command(venv_bin(&tools, "uv"), ".").args(["venv", "--python", "python3"]).arg(&uv_env));
    run_ok(
        ws.command(venv_bin(&tools, "uv"), ".")
            .args(["pip", "install", "--index-url", &index_url(&server, "main", Some(&token)), "demo-pkg==1.0.0"])
            .env("VIRTUAL_ENV", &uv_env),
    );
    assert_eq!(installed_version(&ws, &uv_env), "1.0.0");

    // Yanking (Unlisted) hides 1.1.0 from resolution but keeps it installable by pin.
    let response = server.set_status("main", "pypi", "Demo_Pkg", "1.1.0", "Unlisted", &token).await;
    assert_eq!(response.status(), 200);
    let yanked = new_venv(&ws, "yank-env");
    run_ok(ws.command(venv_bin(&yanked, "pip"), ".").args([
        "install",
        "--index-url",
        &index_url(&server, "main", None),
        "demo-pkg",
    ]));
    assert_eq!(installed_version(&ws, &yanked), "1.0.0");
    let pinned = run_ok(ws.command(venv_bin(&yanked, "pip"), ".").args([
        "install",
        "--index-url",
        &index_url(&server, "main", None),
        "demo-pkg==1.1.0",
    ]));
    assert_eq!(installed_version(&ws, &yanked), "1.1.0");
    assert!(text(&pinned).to_lowercase().contains("yanked"), "pip warns about the yanked file: {}", text(&pinned));

    // The JSON page: yanked flags, hashes and PEP 658 metadata files that match their hashes.
    let client = reqwest::Client::new();
    let page_url = server.url("/pypi/main/simple/demo-pkg/");
    let page: serde_json::Value = client
        .get(&page_url)
        .header("accept", "application/vnd.pypi.simple.v1+json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["versions"], serde_json::json!(["1.0.0", "1.1.0"]));
    let files = page["files"].as_array().unwrap();
    assert_eq!(files.len(), 4);
    for file in files {
        let filename = file["filename"].as_str().unwrap();
        assert_eq!(file["yanked"], serde_json::json!(filename.contains("1.1.0")), "{filename}");
        let url = reqwest::Url::parse(&page_url).unwrap().join(file["url"].as_str().unwrap()).unwrap();
        let bytes = client.get(url.clone()).send().await.unwrap().bytes().await.unwrap();
        assert_eq!(hex(&bytes), file["hashes"]["sha256"].as_str().unwrap(), "{filename}");
        if filename.ends_with(".whl") {
            let metadata_url = format!("{url}.metadata");
            let metadata = client.get(&metadata_url).send().await.unwrap().bytes().await.unwrap();
            assert_eq!(hex(&metadata), file["core-metadata"]["sha256"].as_str().unwrap());
            assert!(String::from_utf8_lossy(&metadata).contains("Name: Demo_Pkg"));
        }
    }
    // Non-normalised names redirect to the normalised page.
    let redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(server.url("/pypi/main/simple/Demo.Pkg/"))
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.status(), 301);
    assert_eq!(redirect.headers()["location"], "/pypi/main/simple/demo-pkg/");
}

#[tokio::test(flavor = "multi_thread")]
async fn python_uploads_are_immutable_and_guarded() {
    let tools = python_tools();
    let server = TestServer::start_with(Some(PRIVATE_CONFIG), &[]);
    let publisher = server.token(&["private"], &["publish"]).await;
    let reader = server.token(&["private"], &["read"]).await;
    let ws = Workspace::new();
    let wheel = ws.path("demo_pkg-2.0-py3-none-any.whl");
    write_wheel(&wheel, "demo-pkg", "2.0", "VERSION = '2.0'\n");

    // A read-only token cannot upload.
    let refused = run(twine(&ws, &tools, &server, "private", &reader).arg(&wheel));
    assert!(!refused.status.success());
    assert!(text(&refused).contains("403"), "{}", text(&refused));

    run_ok(twine(&ws, &tools, &server, "private", &publisher).arg(&wheel));
    // Identical bytes: accepted again (safe retries).
    run_ok(twine(&ws, &tools, &server, "private", &publisher).arg(&wheel));
    // Different bytes under the same file name: 409 File already exists.
    let original = std::fs::read(&wheel).unwrap();
    write_wheel(&wheel, "demo-pkg", "2.0", "VERSION = 'tampered'\n");
    let conflict = run(twine(&ws, &tools, &server, "private", &publisher).arg(&wheel));
    assert!(!conflict.status.success());
    assert!(text(&conflict).contains("409") && text(&conflict).contains("File already exists"), "{}", text(&conflict));
    // (twine 7 allows --skip-existing only for the public index, so the 409
    // is what other tools and retry logic key on.)

    // Private reads: anonymous pip gets a 401; with the token it installs the original bytes.
    let venv = new_venv(&ws, "env");
    let anonymous = run(ws.command(venv_bin(&venv, "pip"), ".").args([
        "install",
        "--index-url",
        &index_url(&server, "private", None),
        "demo-pkg",
    ]));
    assert!(!anonymous.status.success());
    assert!(text(&anonymous).contains("401"), "{}", text(&anonymous));
    run_ok(ws.command(venv_bin(&venv, "pip"), ".").args([
        "download",
        "--no-deps",
        "--dest",
        "got",
        "--index-url",
        &index_url(&server, "private", Some(&reader)),
        "demo-pkg==2.0",
    ]));
    assert_eq!(std::fs::read(ws.path("got/demo_pkg-2.0-py3-none-any.whl")).unwrap(), original);
}

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}
