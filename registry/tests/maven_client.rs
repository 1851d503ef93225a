//! The real `mvn` client against the real registry binary, on a private
//! repository: `mvn deploy` of a release and of a SNAPSHOT (twice) with
//! credentials in settings.xml, a changed release refused with 409, and
//! `mvn -U package` of a project that resolves both, which works only
//! because Maven retries its reads with credentials after the 401
//! challenge.
//!
//! Hermetic: every repository Maven knows is mirrored to the Wharf under
//! test, and the plugins the builds need come from the local repository
//! `tests/install-clients.sh` cached (it builds these same templates once).
#![allow(clippy::unwrap_used)]

mod support;

use std::path::PathBuf;

use sha1::Digest;
use support::*;

const CONFIG: &str = r#"
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

const CONSUMER_POM: &str = include_str!("maven/consumer.pom.xml");

fn read(path: PathBuf) -> Vec<u8> {
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `<value>` (timestamped version) a SNAPSHOT's metadata points at.
async fn newest_build(server: &TestServer, token: &str) -> String {
    let url = server.url("/maven/private/com/acme/tool/2.0-SNAPSHOT/maven-metadata.xml");
    let response = reqwest::Client::new().get(url).basic_auth("ci", Some(token)).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let xml = response.text().await.unwrap();
    let start = xml.find("<value>").unwrap() + "<value>".len();
    xml[start..].split('<').next().unwrap().to_owned()
}

async fn status(server: &TestServer, token: &str, package: &str, version: &str) -> String {
    let url = server.url(&format!("/api/v1/repositories/private/packages/maven/{package}/versions/{version}"));
    let response = reqwest::Client::new().get(url).bearer_auth(token).send().await.unwrap();
    assert_eq!(response.status(), 200, "{package} {version}");
    let body: serde_json::Value = response.json().await.unwrap();
    body["status"].as_str().unwrap().to_owned()
}

/// `app/`: a project using `com.acme:lib:1.0` and `com.acme:tool:2.0-SNAPSHOT`.
fn consumer_project(ws: &Workspace) {
    let consumer = CONSUMER_POM
        .replace("@GROUP@", "com.acme")
        .replace("@RELEASE_ARTIFACT@", "lib")
        .replace("@RELEASE_VERSION@", "1.0")
        .replace("@SNAPSHOT_ARTIFACT@", "tool")
        .replace("@SNAPSHOT_VERSION@", "2.0-SNAPSHOT");
    ws.write("app/pom.xml", &consumer);
    ws.write(
        "app/src/main/java/com/acme/app/App.java",
        "package com.acme.app;\n\npublic class App {\n    public static String describe() { return com.acme.lib.Greeting.name() + com.acme.tool.Build.name(); }\n}\n",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn maven_deploy_snapshots_immutability_and_resolution() {
    let server = TestServer::start_with(Some(CONFIG), &[]);
    let token = server.token(&["private"], &["read", "publish"]).await;
    let ws = Workspace::new();
    let maven = Maven::new(&ws, &server, "private", &token);

    // Anonymous reads of the private repository get the challenge Maven
    // waits for before it sends credentials.
    let anonymous = reqwest::get(server.url("/maven/private/com/acme/lib/1.0/lib-1.0.pom")).await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(anonymous.headers()["www-authenticate"], "Basic realm=\"wharf/private\"");

    // A release.
    maven.library("lib", "lib", "1.0", "Greeting", "hello");
    run_ok(&mut maven.deploy("lib"));
    let released_jar = read(ws.path("lib/target/lib-1.0.jar"));

    // A SNAPSHOT deployed twice: two timestamped builds; the older one is
    // Unlisted, the newer one is what the SNAPSHOT resolves to.
    maven.library("tool", "tool", "2.0-SNAPSHOT", "Build", "one");
    run_ok(&mut maven.deploy("tool"));
    let first_build = newest_build(&server, &token).await;
    maven.library("tool", "tool", "2.0-SNAPSHOT", "Build", "two");
    run_ok(&mut maven.deploy("tool"));
    let second_build = newest_build(&server, &token).await;
    let second_jar = read(ws.path("tool/target/tool-2.0-SNAPSHOT.jar"));
    assert!(first_build.starts_with("2.0-") && first_build.ends_with("-1"), "{first_build}");
    assert!(second_build.ends_with("-2"), "{second_build}");
    assert_eq!(status(&server, &token, "com.acme:tool", &first_build).await, "Unlisted");
    assert_eq!(status(&server, &token, "com.acme:tool", &second_build).await, "Published");
    assert_eq!(status(&server, &token, "com.acme:lib", "1.0").await, "Published");

    // Redeploying the release with changed bytes fails with 409.
    maven.library("lib", "lib", "1.0", "Greeting", "tampered");
    let refused = run(&mut maven.deploy("lib"));
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(text(&refused).contains("409"), "{}", text(&refused));

    // A second project, with a local repository of its own, resolves both
    // through the challenge: the original release and the newest build.
    consumer_project(&ws);
    run_ok(maven.command("app", "consumer-m2").args(["-U", "package"]));
    assert!(ws.path("app/target/consumer-1.0.jar").exists());
    let resolved = ws.path("consumer-m2/com/acme");
    assert_eq!(read(resolved.join("lib/1.0/lib-1.0.jar")), released_jar, "the release kept its first bytes");
    assert_eq!(read(resolved.join("tool/2.0-SNAPSHOT/tool-2.0-SNAPSHOT.jar")), second_jar, "the newest build");
    assert!(resolved.join(format!("tool/2.0-SNAPSHOT/tool-{second_build}.jar")).exists());

    // The registry saw Maven's unauthenticated reads (answered 401) and the
    // retries with credentials, and served the checksums it computed.
    let metrics = reqwest::get(server.url("/metrics")).await.unwrap().text().await.unwrap();
    let count = |series: &str| -> u64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
    };
    assert!(count("wharf_http_requests_total{route=\"maven\",method=\"GET\",status=\"401\"}") > 0);
    assert!(count("wharf_http_requests_total{route=\"maven_file\",method=\"GET\",status=\"200\"}") >= 4);
    assert!(count("wharf_http_requests_total{route=\"maven_checksum\",method=\"GET\",status=\"200\"}") > 0);
    assert!(count("wharf_http_requests_total{route=\"maven_upload\",method=\"PUT\",status=\"409\"}") == 1);
    // The redeploy sent the unchanged POM first (deploy plugin 3): same
    // bytes, accepted as a no-op before the changed jar was refused.
    assert!(count("wharf_http_requests_total{route=\"maven_upload\",method=\"PUT\",status=\"200\"}") == 1);
    let sha1 = reqwest::Client::new()
        .get(server.url("/maven/private/com/acme/lib/1.0/lib-1.0.jar.sha1"))
        .basic_auth("ci", Some(&token))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(sha1, hex::encode(sha1::Sha1::digest(&released_jar)));
}

/// `app` reads through `[internal, maven-store]`; `maven-store` holds the
/// connection to the public registry at `public_base`.
fn chain_config(public_base: &str) -> String {
    store_chain_config("maven", &format!("{public_base}/maven/public"), MAVEN_RULES)
}

const MAVEN_RULES: &str = r#"  rules:
    - patterns: ["/maven/com.acme/young$"]
      minimumReleaseAge: 1h
    - patterns: ["/maven/com.acme/aged$"]
      minimumReleaseAge: 3s
    - patterns: ["/maven/com.acme/blocked$"]
      blockedVersions: ["/maven/com.acme/blocked@1.1"]
    - patterns: ["/maven/com.acme/forkable$"]
      publish: Allow
"#;

/// Deploys a POM-only release `com.acme:{artifact}:{version}` with plain
/// PUTs (the POM, then the metadata that completes the deploy); the POM's
/// status code.
async fn put_release(server: &TestServer, repo: &str, token: &str, artifact: &str, version: &str) -> u16 {
    let client = reqwest::Client::new();
    let folder = server.url(&format!("/maven/{repo}/com/acme/{artifact}"));
    let pom = format!(
        "<project><modelVersion>4.0.0</modelVersion><groupId>com.acme</groupId><artifactId>{artifact}</artifactId><version>{version}</version><packaging>pom</packaging></project>\n"
    );
    let put = |url: String, body: String| client.put(url).bearer_auth(token).body(body).send();
    let status = put(format!("{folder}/{version}/{artifact}-{version}.pom"), pom).await.unwrap().status().as_u16();
    if status < 300 {
        let metadata = format!(
            "<metadata><groupId>com.acme</groupId><artifactId>{artifact}</artifactId><versioning><versions><version>{version}</version></versions></versioning></metadata>\n"
        );
        let completed = put(format!("{folder}/maven-metadata.xml"), metadata).await.unwrap();
        assert!(completed.status().is_success(), "{}", completed.text().await.unwrap());
    }
    status
}

async fn repository_status(server: &TestServer, repo: &str, package: &str, version: &str) -> u16 {
    let url = server.url(&format!("/api/v1/repositories/{repo}/packages/maven/{package}/versions/{version}"));
    reqwest::Client::new().get(url).bearer_auth(ADMIN_TOKEN).send().await.unwrap().status().as_u16()
}

async fn get_text(server: &TestServer, path: &str) -> (u16, String) {
    let response = reqwest::get(server.url(path)).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn maven_resolves_through_the_chain_and_keeps_working_without_the_upstream() {
    let public = TestServer::start_with(Some(PUBLIC_CONFIG), &[]);
    let public_token = public.token(&["public"], &["read", "publish"]).await;
    let wharf = TestServer::start_with(Some(&chain_config(&public.base)), &[]);
    let token = wharf.token(&["app", "internal", "maven-store"], &["read", "publish"]).await;

    // The public registry has a jar library only it holds, and names the
    // Domain published first.
    let publisher = Workspace::new();
    let public_maven = Maven::new(&publisher, &public, "public", &public_token);
    public_maven.library("greeter", "greeter", "1.0", "Greeter", "public greeting");
    run_ok(&mut public_maven.deploy("greeter"));
    let public_jar = read(publisher.path("greeter/target/greeter-1.0.jar"));
    assert_eq!(put_release(&wharf, "internal", &token, "reserved", "1.0").await, 201);
    assert_eq!(put_release(&wharf, "internal", &token, "dual", "1.0").await, 201);
    for (artifact, version) in [
        ("reserved", "9.9"),
        ("blocked", "1.0"),
        ("blocked", "1.1"),
        ("young", "1.0"),
        ("forkable", "1.0"),
        ("aged", "1.0"),
    ] {
        assert_eq!(put_release(&public, "public", &public_token, artifact, version).await, 201, "{artifact}");
    }
    let aged_published = std::time::Instant::now();

    // An internal SNAPSHOT and the public release, both through `app`.
    let internal_ws = Workspace::new();
    let internal_maven = Maven::new(&internal_ws, &wharf, "internal", &token);
    internal_maven.library("tool", "tool", "2.0-SNAPSHOT", "Build", "internal build");
    run_ok(&mut internal_maven.deploy("tool"));
    let consumer = CONSUMER_POM
        .replace("@GROUP@", "com.acme")
        .replace("@RELEASE_ARTIFACT@", "greeter")
        .replace("@RELEASE_VERSION@", "1.0")
        .replace("@SNAPSHOT_ARTIFACT@", "tool")
        .replace("@SNAPSHOT_VERSION@", "2.0-SNAPSHOT");
    let client = Workspace::new();
    let app_maven = Maven::new(&client, &wharf, "app", &token);
    let project = |ws: &Workspace| {
        ws.write("app/pom.xml", &consumer);
        ws.write(
            "app/src/main/java/com/acme/app/App.java",
            "package com.acme.app;\n\npublic class App {\n    public static String describe() { return com.acme.greeter.Greeter.name() + com.acme.tool.Build.name(); }\n}\n",
        );
    };
    project(&client);
    run_ok(app_maven.command("app", "consumer-m2").args(["package"]));
    assert!(client.path("app/target/consumer-1.0.jar").exists());
    assert_eq!(read(client.path("consumer-m2/com/acme/greeter/1.0/greeter-1.0.jar")), public_jar);
    // Kept in the requesting repository and the one holding the connection.
    assert_eq!(repository_status(&wharf, "app", "com.acme:greeter", "1.0").await, 200);
    assert_eq!(repository_status(&wharf, "maven-store", "com.acme:greeter", "1.0").await, 200);
    assert_eq!(repository_status(&wharf, "internal", "com.acme:greeter", "1.0").await, 404);

    // maven-metadata.xml is Wharf's own, from the merged chain and policy.
    let (status, blocked) = get_text(&wharf, "/maven/app/com/acme/blocked/maven-metadata.xml").await;
    assert_eq!(status, 200, "{blocked}");
    assert!(blocked.contains("<version>1.0</version>") && !blocked.contains("<version>1.1</version>"), "{blocked}");
    assert!(blocked.contains("<release>1.0</release>") && blocked.contains("<latest>1.0</latest>"), "{blocked}");
    assert_eq!(get_text(&wharf, "/maven/app/com/acme/blocked/1.1/blocked-1.1.pom").await.0, 404);
    assert_eq!(get_text(&wharf, "/maven/app/com/acme/young/maven-metadata.xml").await.0, 404, "too young");
    // Dated by each POM's Last-Modified upstream: 1.0 (published before
    // the builds above) has aged past the cooldown, 1.1 has not.
    std::thread::sleep(std::time::Duration::from_secs(4).saturating_sub(aged_published.elapsed()));
    assert_eq!(put_release(&public, "public", &public_token, "aged", "1.1").await, 201);
    let (_, aged) = get_text(&wharf, "/maven/app/com/acme/aged/maven-metadata.xml").await;
    assert!(aged.contains("<version>1.0</version>") && !aged.contains("<version>1.1</version>"), "{aged}");
    let (_, reserved) = get_text(&wharf, "/maven/app/com/acme/reserved/maven-metadata.xml").await;
    assert!(reserved.contains("<version>1.0</version>") && !reserved.contains("<version>9.9</version>"), "{reserved}");
    assert!(!blocked.contains("<lastUpdated></lastUpdated>"), "dated by the upstream: {blocked}");
    assert_eq!(get_text(&wharf, "/maven/app/com/acme/reserved/9.9/reserved-9.9.pom").await.0, 404);
    for repo in ["app", "internal", "maven-store"] {
        assert_eq!(repository_status(&wharf, repo, "com.acme:reserved", "9.9").await, 404, "{repo}");
    }

    // Origin controls on deploys: a name first fetched from outside is not
    // deployed directly (403); a version reachable through an upstream is
    // a 409, through a Repository or the connection.
    assert_eq!(put_release(&wharf, "internal", &token, "greeter", "2.0").await, 403);
    assert_eq!(put_release(&wharf, "app", &token, "dual", "1.0").await, 409);
    let forked = reqwest::Client::new()
        .put(wharf.url("/maven/app/com/acme/forkable/1.0/forkable-1.0.pom"))
        .bearer_auth(&token)
        .body("<project/>")
        .send()
        .await
        .unwrap();
    assert_eq!(forked.status(), 409);
    let message = forked.text().await.unwrap();
    assert!(message.contains("external connection public-maven"), "{message}");
    assert_eq!(put_release(&wharf, "app", &token, "forkable", "1.1").await, 201, "publish: Allow");

    // The upstream gone, a fresh local repository still resolves.
    let fetched = "wharf_upstream_requests_total{connection=\"public-maven\",kind=\"artifact\",outcome=\"fetched\"}";
    let metrics = reqwest::get(wharf.url("/metrics")).await.unwrap().text().await.unwrap();
    let artifacts: u64 = metrics.lines().find_map(|l| l.strip_prefix(fetched)?.trim().parse().ok()).unwrap();
    assert!(artifacts >= 2, "the POM and the jar, once each: {artifacts}");
    drop(public);
    let offline = Workspace::new();
    let offline_maven = Maven::new(&offline, &wharf, "app", &token);
    project(&offline);
    run_ok(offline_maven.command("app", "offline-m2").args(["package"]));
    assert_eq!(read(offline.path("offline-m2/com/acme/greeter/1.0/greeter-1.0.jar")), public_jar);
}

#[tokio::test(flavor = "multi_thread")]
async fn maven_deploys_and_resolves_after_wharf_login() {
    let server = TestServer::start_with(Some(CONFIG), &[]);
    let ws = Workspace::new();
    ws.write(
        "home/.m2/settings.xml",
        "<settings>\n  <!-- my own settings -->\n  <offline>false</offline>\n</settings>\n",
    );
    let login = run_ok(
        ws.command(wharf_bin(), ".")
            .args(["login", "--tool", "mvn", "--registry", &server.base, "--repository", "private"])
            .env("WHARF_ADMIN_TOKEN", ADMIN_TOKEN),
    );
    assert!(
        text(&login).contains("-DaltDeploymentRepository=wharf::"),
        "the login says how to deploy: {}",
        text(&login)
    );
    let maven = Maven::with_user_settings(&ws, &server, "private");
    maven.library("lib", "lib", "1.0", "Greeting", "hello");
    run_ok(&mut maven.deploy("lib"));
    maven.library("tool", "tool", "2.0-SNAPSHOT", "Build", "one");
    run_ok(&mut maven.deploy("tool"));
    consumer_project(&ws);
    run_ok(maven.command("app", "consumer-m2").arg("package"));
    assert!(ws.path("consumer-m2/com/acme/lib/1.0/lib-1.0.jar").exists());

    let logout = ws
        .command(wharf_bin(), ".")
        .args(["logout", "--tool", "mvn", "--registry", &server.base, "--repository", "private"])
        .output()
        .unwrap();
    assert!(logout.status.success());
    assert_eq!(
        std::fs::read_to_string(ws.path("home/.m2/settings.xml")).unwrap(),
        "<settings>\n  <!-- my own settings -->\n  <offline>false</offline>\n</settings>\n"
    );
}
