//! NuGet's own command-line client (nuget.exe 5.8 on Mono) against the real
//! registry binary: `pack`, `push`, `install`, `restore` of a
//! packages.config project, `list`, `delete` (unlist) and the exact pin of an
//! unlisted version, a private source with stored credentials, and an
//! install through an upstream chain whose external connection is a second
//! registry's NuGet feed, which keeps working once that feed is gone.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
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
metadata: {name: dotnet}
spec:
  domainRef: {name: acme}
"#;

/// `app` reads through `[internal, nuget-store]`; the store holds the
/// external connection to the "public" registry's feed at `base`.
fn chain_config(base: &str) -> String {
    store_chain_config(
        "nuget",
        &format!("{base}/nuget/public/v3/index.json"),
        "  rules:\n    - patterns: [\"/nuget//public.lib\"]\n      blockedVersions: [\"/nuget//Public.Lib@2.1.0\"]\n",
    )
}

fn nuget_exe() -> PathBuf {
    test_tool("nuget/node_modules/nuget-exe/nuget-5.8.0.exe")
}

/// `mono nuget.exe …` with its caches and configuration in the workspace.
fn nuget(ws: &Workspace, dir: &str) -> Command {
    let mut command = ws.command("mono", dir);
    command.arg(nuget_exe()).env("NUGET_PACKAGES", ws.path("home/.nuget/packages"));
    command
}

fn feed(server: &TestServer, repo: &str) -> String {
    server.url(&format!("/nuget/{repo}/v3/index.json"))
}

/// Packs `id` `version` with `nuget pack`, its content file saying
/// `content`, depending on `dependencies` (id, range); returns the package.
fn pack(ws: &Workspace, id: &str, version: &str, content: &str, dependencies: &[(&str, &str)]) -> PathBuf {
    let dir = format!("src/{id}-{version}-{}", content.len());
    let dependencies: String =
        dependencies.iter().map(|(id, range)| format!("<dependency id=\"{id}\" version=\"{range}\" />")).collect();
    ws.write(
        &format!("{dir}/{id}.nuspec"),
        &format!(
            r#"<?xml version="1.0"?>
<package xmlns="http://schemas.microsoft.com/packaging/2013/05/nuspec.xsd">
  <metadata>
    <id>{id}</id>
    <version>{version}</version>
    <authors>Acme</authors>
    <description>{id} for the tests</description>
    <tags>acme wharf</tags>
    <dependencies><group targetFramework="net45">{dependencies}</group></dependencies>
  </metadata>
  <files><file src="content.txt" target="content" /></files>
</package>"#
        ),
    );
    ws.write(&format!("{dir}/content.txt"), content);
    run_ok(nuget(ws, &dir).args(["pack", &format!("{id}.nuspec"), "-OutputDirectory", "out", "-NoDefaultExcludes"]));
    ws.path(&format!("{dir}/out/{id}.{version}.nupkg"))
}

fn push(ws: &Workspace, package: &PathBuf, source: &str, token: &str) -> std::process::Output {
    run(nuget(ws, ".").arg("push").arg(package).args(["-Source", source, "-ApiKey", token, "-NonInteractive"]))
}

/// What `nuget install` put in `folder` for `id` `version`.
fn installed(ws: &Workspace, folder: &str, id: &str, version: &str) -> String {
    std::fs::read_to_string(ws.path(&format!("{folder}/{id}.{version}/content/content.txt"))).unwrap()
}

async fn get_json(url: &str, token: &str) -> Value {
    let response = reqwest::Client::new().get(url).bearer_auth(token).send().await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn nuget_pushes_installs_restores_and_unlists_on_a_private_feed() {
    let server = TestServer::start_with(Some(PRIVATE_CONFIG), &[]);
    let token = server.token(&["dotnet"], &["read", "publish"]).await;
    let reader = server.token(&["dotnet"], &["read"]).await;
    let source = feed(&server, "dotnet");
    let ws = Workspace::new();
    // The source with its credentials, as a user stores it.
    ws.write(
        "NuGet.Config",
        "<?xml version=\"1.0\"?>\n<configuration><packageSources><clear /></packageSources></configuration>\n",
    );
    run_ok(nuget(&ws, ".").args(["sources", "add", "-Name", "wharf", "-Source", &source, "-Username", "ci"]).args([
        "-Password",
        &reader,
        "-StorePasswordInClearText",
        "-ConfigFile",
        "NuGet.Config",
    ]));

    let base_1 = pack(&ws, "Acme.Base", "1.0.0", "base 1.0.0", &[]);
    let base_11 = pack(&ws, "Acme.Base", "1.1.0", "base 1.1.0", &[]);
    let demo = pack(&ws, "Acme.Demo", "1.0.0", "demo 1.0.0", &[("Acme.Base", "[1.0.0, )")]);
    for package in [&base_1, &base_11, &demo] {
        let output = push(&ws, package, &source, &token);
        assert!(output.status.success(), "{}", text(&output));
        assert!(text(&output).contains("Created"), "{}", text(&output));
    }
    // The same bytes again: nothing changes, and the client is told so.
    let again = push(&ws, &base_1, &source, &token);
    assert!(again.status.success() && text(&again).contains("OK"), "{}", text(&again));
    // Other bytes under a published version: refused, immutably.
    let changed = pack(&ws, "Acme.Base", "1.0.0", "base 1.0.0, changed", &[]);
    let conflict = push(&ws, &changed, &source, &token);
    assert!(!conflict.status.success(), "{}", text(&conflict));
    assert!(text(&conflict).contains("409"), "{}", text(&conflict));
    // A reader's token may not push.
    let refused = push(&ws, &pack(&ws, "Acme.Base", "1.2.0", "base 1.2.0", &[]), &source, &reader);
    assert!(text(&refused).contains("403"), "{}", text(&refused));

    // Install with the stored credentials: the dependency comes along.
    run_ok(nuget(&ws, ".").args(["install", "Acme.Demo", "-Version", "1.0.0", "-Source", "wharf"]).args([
        "-ConfigFile",
        "NuGet.Config",
        "-OutputDirectory",
        "pkgs",
        "-NonInteractive",
    ]));
    assert_eq!(installed(&ws, "pkgs", "Acme.Demo", "1.0.0"), "demo 1.0.0");
    assert_eq!(installed(&ws, "pkgs", "Acme.Base", "1.0.0"), "base 1.0.0");

    // The manifest as published, from the flat container.
    let nuspec = reqwest::Client::new()
        .get(server.url("/nuget/dotnet/v3/flatcontainer/acme.demo/1.0.0/acme.demo.nuspec"))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    assert_eq!(nuspec.status(), 200);
    let nuspec = nuspec.text().await.unwrap();
    assert!(nuspec.contains("<id>Acme.Demo</id>") && nuspec.contains("Acme.Base"), "{nuspec}");

    // Restore of a packages.config project into a fresh folder.
    ws.write(
        "project/packages.config",
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<packages>\n  <package id=\"Acme.Demo\" version=\"1.0.0\" targetFramework=\"net45\" />\n  <package id=\"acme.base\" version=\"1.1\" targetFramework=\"net45\" />\n</packages>\n",
    );
    run_ok(nuget(&ws, "project").args(["restore", "packages.config", "-PackagesDirectory", "packages"]).args([
        "-ConfigFile",
        "../NuGet.Config",
        "-NonInteractive",
    ]));
    assert_eq!(installed(&ws, "project/packages", "Acme.Base", "1.1.0"), "base 1.1.0");
    assert_eq!(installed(&ws, "project/packages", "Acme.Demo", "1.0.0"), "demo 1.0.0");

    // Without credentials the private feed refuses the client.
    let anonymous = Workspace::new();
    let output = run(nuget(&anonymous, ".")
        .args(["install", "Acme.Base", "-Version", "1.0.0", "-Source", &source])
        .args(["-OutputDirectory", "pkgs", "-NonInteractive"]));
    assert!(!output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("401"), "{}", text(&output));

    // `nuget list` (the v2 search the service index names), with the
    // stored credentials.
    let list = |ws: &Workspace, extra: &[&str]| {
        let output = run_ok(
            nuget(ws, ".").args(["list", "acme", "-Source", "wharf", "-ConfigFile", "NuGet.Config"]).args(extra),
        );
        String::from_utf8_lossy(&output.stdout).lines().map(str::to_owned).collect::<Vec<_>>()
    };
    assert_eq!(list(&ws, &[]), ["Acme.Base 1.1.0", "Acme.Demo 1.0.0"]);

    // Search: ids without case, prereleases and SemVer 2.0.0 only when asked.
    let search = |query: &str| format!("{}?{query}", server.url("/nuget/dotnet/v3/search"));
    let found = get_json(&search("q=ACME&semVerLevel=2.0.0"), &reader).await;
    assert_eq!(found["totalHits"], 2);
    assert_eq!(found["data"][0]["id"], "Acme.Base");
    assert_eq!(found["data"][0]["version"], "1.1.0");
    let exact = get_json(&search("q=packageid:acme.demo"), &reader).await;
    assert_eq!(exact["totalHits"], 1);

    // Unlist: gone from search and from the registration's listed
    // versions, still installable by its exact version.
    let output = run(nuget(&ws, ".")
        .args(["delete", "Acme.Base", "1.1.0", "-Source", &source, "-ApiKey", &token])
        .arg("-NonInteractive"));
    assert!(output.status.success(), "{}", text(&output));
    let found = get_json(&search("q=acme.base"), &reader).await;
    let versions: Vec<&str> =
        found["data"][0]["versions"].as_array().unwrap().iter().map(|v| v["version"].as_str().unwrap()).collect();
    assert_eq!(versions, ["1.0.0"]);
    assert_eq!(list(&ws, &[]), ["Acme.Base 1.0.0", "Acme.Demo 1.0.0"]);
    assert_eq!(
        list(&ws, &["-AllVersions", "-IncludeDelisted"]),
        ["Acme.Base 1.1.0", "Acme.Base 1.0.0", "Acme.Demo 1.0.0"]
    );
    let registration = get_json(&server.url("/nuget/dotnet/v3/registration/acme.base/index.json"), &reader).await;
    let listed: Vec<bool> = registration["items"][0]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|leaf| leaf["catalogEntry"]["listed"].as_bool().unwrap())
        .collect();
    assert_eq!(listed, [true, false]);
    let fresh = Workspace::new();
    std::fs::copy(ws.path("NuGet.Config"), fresh.path("NuGet.Config")).unwrap();
    run_ok(nuget(&fresh, ".").args(["install", "Acme.Base", "-Version", "1.1.0", "-Source", "wharf"]).args([
        "-ConfigFile",
        "NuGet.Config",
        "-OutputDirectory",
        "pkgs",
        "-NonInteractive",
    ]));
    assert_eq!(installed(&fresh, "pkgs", "Acme.Base", "1.1.0"), "base 1.1.0");
    // Relisted by POST, as the protocol says.
    let relisted = reqwest::Client::new()
        .post(server.url("/nuget/dotnet/v3/package/Acme.Base/1.1.0"))
        .header("X-NuGet-ApiKey", &token)
        .send()
        .await
        .unwrap();
    assert_eq!(relisted.status(), 200);
    assert_eq!(get_json(&search("q=acme.base"), &reader).await["data"][0]["version"], "1.1.0");
}

/// A package that is not what it says is refused with a reason, and
/// nothing of it is kept.
#[tokio::test(flavor = "multi_thread")]
async fn a_broken_package_is_refused_and_nothing_is_stored() {
    let data = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(data.path(), Some(PRIVATE_CONFIG), &[]);
    let token = server.token(&["dotnet"], &["read", "publish"]).await;
    let ws = Workspace::new();
    let good = std::fs::read(pack(&ws, "Acme.Good", "1.0.0", "good", &[])).unwrap();
    let files = || files_under(data.path());
    let before = files();
    for (bytes, reason) in
        [(b"not a zip".to_vec(), "not a zip archive"), (renamed_manifest(&good), "must be named Acme.Good.nuspec")]
    {
        let mut form = b"--b0undary\r\nContent-Disposition: form-data; name=\"package\"; filename=\"p.nupkg\"\r\nContent-Type: application/octet-stream\r\n\r\n".to_vec();
        form.extend_from_slice(&bytes);
        form.extend_from_slice(b"\r\n--b0undary--\r\n");
        let response = reqwest::Client::new()
            .put(server.url("/nuget/dotnet/v3/package"))
            .header("X-NuGet-ApiKey", &token)
            .header("Content-Type", "multipart/form-data; boundary=b0undary")
            .body(form)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let body = response.text().await.unwrap();
        assert!(body.contains(reason), "{body}");
    }
    assert_eq!(files(), before, "a refused package left files behind");
    let missing = reqwest::Client::new()
        .get(server.url("/nuget/dotnet/v3/flatcontainer/acme.good/index.json"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

/// The package with its manifest renamed to another id's.
fn renamed_manifest(package: &[u8]) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(package)).unwrap();
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index).unwrap();
        let name = if entry.name().ends_with(".nuspec") { "Other.nuspec".to_owned() } else { entry.name().to_owned() };
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        writer.start_file(name, zip::write::SimpleFileOptions::default()).unwrap();
        writer.write_all(&bytes).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

#[tokio::test(flavor = "multi_thread")]
async fn nuget_installs_through_the_chain_and_keeps_working_without_the_upstream() {
    let public = TestServer::start_with(Some(PUBLIC_CONFIG), &[]);
    let wharf = TestServer::start_with(Some(&chain_config(&public.base)), &[]);
    let public_token = public.token(&["public"], &["publish"]).await;
    let ws = Workspace::new();
    let lib = pack(&ws, "Public.Lib", "2.0.0", "public lib", &[]);
    let output = push(&ws, &lib, &feed(&public, "public"), &public_token);
    assert!(output.status.success(), "{}", text(&output));

    let blocked = pack(&ws, "Public.Lib", "2.1.0", "blocked", &[]);
    let output = push(&ws, &blocked, &feed(&public, "public"), &public_token);
    assert!(output.status.success(), "{}", text(&output));

    let app = feed(&wharf, "app");
    // The blocked version is not offered, nor installable.
    let versions: Value = reqwest::get(wharf.url("/nuget/app/v3/flatcontainer/public.lib/index.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(versions["versions"], serde_json::json!(["2.0.0"]));
    let refused = run(nuget(&ws, ".").args(["install", "Public.Lib", "-Version", "2.1.0", "-Source", &app]).args([
        "-OutputDirectory",
        "blocked",
        "-NonInteractive",
    ]));
    assert!(!refused.status.success(), "{}", text(&refused));
    run_ok(nuget(&ws, ".").args(["install", "Public.Lib", "-Version", "2.0.0", "-Source", &app]).args([
        "-OutputDirectory",
        "pkgs",
        "-NonInteractive",
    ]));
    assert_eq!(installed(&ws, "pkgs", "Public.Lib", "2.0.0"), "public lib");
    let kept = wharf.url("/api/v1/repositories/nuget-store/packages/nuget/Public.Lib/versions/2.0.0");
    let response = reqwest::Client::new().get(kept).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(response.status(), 200, "the fetched version is kept in the store");

    // The upstream's manifest, through the chain.
    let nuspec =
        reqwest::get(wharf.url("/nuget/app/v3/flatcontainer/public.lib/2.0.0/public.lib.nuspec")).await.unwrap();
    assert_eq!(nuspec.status(), 200);
    assert!(nuspec.text().await.unwrap().contains("<id>Public.Lib</id>"));

    // A public name is not published internally: the origin is recorded.
    // Pushing to a private feed needs its credentials for the service index
    // as well as the API key for the push.
    let internal_token = wharf.token(&["internal"], &["read", "publish"]).await;
    ws.write(
        "NuGet.Config",
        "<?xml version=\"1.0\"?>\n<configuration><packageSources><clear /></packageSources></configuration>\n",
    );
    run_ok(nuget(&ws, ".").args(["sources", "add", "-Name", "internal", "-Source", &feed(&wharf, "internal")]).args([
        "-Username",
        "ci",
        "-Password",
        &internal_token,
        "-StorePasswordInClearText",
        "-ConfigFile",
        "NuGet.Config",
    ]));
    let shadow = pack(&ws, "Public.Lib", "9.0.0", "shadow", &[]);
    let refused = push(&ws, &shadow, &feed(&wharf, "internal"), &internal_token);
    assert!(!refused.status.success() && text(&refused).contains("403"), "{}", text(&refused));

    // The upstream gone, a fresh machine still installs what was kept.
    drop(public);
    let offline = Workspace::new();
    run_ok(nuget(&offline, ".").args(["install", "Public.Lib", "-Version", "2.0.0", "-Source", &app]).args([
        "-OutputDirectory",
        "pkgs",
        "-NonInteractive",
    ]));
    assert_eq!(installed(&offline, "pkgs", "Public.Lib", "2.0.0"), "public lib");
}

#[tokio::test(flavor = "multi_thread")]
async fn nuget_pushes_and_installs_after_wharf_login() {
    let server = TestServer::start_with(Some(PRIVATE_CONFIG), &[]);
    let ws = Workspace::new();
    let wharf = |verb: &str| {
        let mut command = ws.command(wharf_bin(), ".");
        command.args([verb, "--tool", "nuget", "--registry", &server.base, "--repository", "dotnet"]);
        command.env("WHARF_ADMIN_TOKEN", ADMIN_TOKEN);
        command
    };
    run_ok(&mut wharf("login"));
    // nuget.exe on Mono reads the XDG user file; the dotnet CLI's has the same source.
    let written = std::fs::read_to_string(ws.path("home/.config/NuGet/NuGet.Config")).unwrap();
    assert_eq!(std::fs::read_to_string(ws.path("home/.nuget/NuGet/NuGet.Config")).unwrap(), written);

    // Pushed by source name with the stored credentials (no API key), then installed.
    let package = pack(&ws, "Acme.LoggedIn", "1.0.0", "logged in", &[]);
    let pushed = run(nuget(&ws, ".").arg("push").arg(&package).args(["-Source", "wharf", "-NonInteractive"]));
    assert!(pushed.status.success() && text(&pushed).contains("Created"), "{}", text(&pushed));
    run_ok(nuget(&ws, ".").args(["install", "Acme.LoggedIn", "-Version", "1.0.0", "-Source", "wharf"]).args([
        "-OutputDirectory",
        "packages",
        "-NonInteractive",
    ]));
    assert_eq!(installed(&ws, "packages", "Acme.LoggedIn", "1.0.0"), "logged in");

    run_ok(&mut wharf("logout"));
    let after = std::fs::read_to_string(ws.path("home/.config/NuGet/NuGet.Config")).unwrap();
    assert!(!after.contains("wharf") && !after.contains("ClearTextPassword"), "{after}");
}
