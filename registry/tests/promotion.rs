//! Promotion and the audit trail with real clients against the real registry binary: npm
//! and twine publish to `dev`, a release token copies to `prod`, npm and pip install from
//! `prod` with a read-only token, a copy `prod`'s rules refuse is refused; every step is
//! attributed on the audit stream, at a webhook receiver started here (which fails its
//! first delivery, so retries are exercised) and through `GET /api/v1/audit`.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use support::*;

/// `dev` and `prod`, and prod's rule that blocks publishing `promo-experiment` there.
fn promotion_config() -> String {
    let rules = r#"---
apiVersion: wharf.dev/v1alpha1
kind: UpstreamPolicy
metadata: {name: prod-rules}
spec:
  targetRefs: [{kind: Repository, name: prod}]
  rules:
    - patterns: ["/npm//promo-experiment$"]
      publish: Block
"#;
    format!("{DEV_AND_PROD_ON_A_FOLDER}{rules}")
}

/// An HTTP server on loopback that keeps the event batches POSTed to it, refusing the
/// first delivery.
struct Receiver {
    url: String,
    batches: Arc<Mutex<Vec<Value>>>,
    refused: Arc<Mutex<u32>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(Mutex::new(0));
        let (kept, count) = (batches.clone(), refused.clone());
        let app = axum::Router::new().route(
            "/events",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let (kept, count) = (kept.clone(), count.clone());
                async move {
                    assert_eq!(headers["content-type"], "application/cloudevents-batch+json");
                    let mut refused = count.lock().unwrap();
                    if *refused == 0 {
                        *refused += 1;
                        return StatusCode::SERVICE_UNAVAILABLE;
                    }
                    kept.lock().unwrap().push(serde_json::from_slice(&body).unwrap());
                    StatusCode::ACCEPTED
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
        let url = format!("http://{}/events", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { url, batches, refused }
    }

    fn events(&self) -> Vec<Value> {
        self.batches.lock().unwrap().iter().flat_map(|batch| batch.as_array().unwrap().clone()).collect()
    }
}

/// Waits until `find` finds what it looks for in `events()`.
async fn eventually<T>(what: &str, events: impl Fn() -> Vec<Value>, find: impl Fn(&[Value]) -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = events();
        if let Some(found) = find(&seen) {
            return found;
        }
        assert!(Instant::now() < deadline, "{what} never arrived; seen: {seen:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn event<'a>(events: &'a [Value], kind: &str, subject: &str) -> Option<&'a Value> {
    events.iter().find(|e| e["type"] == format!("dev.wharf.{kind}") && e["subject"] == subject)
}

async fn copy(server: &TestServer, token: &str, format: &str, package: &str, version: &str) -> (u16, Value) {
    let body = json!({"source": "dev", "format": format, "package": package, "versions": [version]});
    let response = server
        .client
        .post(server.url("/api/v1/repositories/prod/copy"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

fn npm_package(ws: &Workspace, dir: &str, name: &str, version: &str) {
    ws.write(
        &format!("{dir}/package.json"),
        &json!({"name": name, "version": version, "main": "index.js"}).to_string(),
    );
    ws.write(&format!("{dir}/index.js"), &format!("module.exports = '{name} {version}';\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn promoted_versions_install_from_prod_and_every_step_is_attributed() {
    let tools = python_tools();
    let receiver = Receiver::start().await;
    // The Domain names the webhook, as a platform team's GitOps repository would.
    let config = promotion_config().replace(
        "    filesystem: {path: \"{data}\"}\n",
        &format!("    filesystem: {{path: \"{{data}}\"}}\n  audit: {{webhookURL: \"{}\"}}\n", receiver.url),
    );
    assert!(config.contains("webhookURL"));
    let server = TestServer::start_with(Some(&config), &["--audit-flush-interval", "1s"]);
    let ci = server.token_for("ci-bot", &["dev"], &["read", "publish"]).await;
    let release = server.token_for("release-bot", &["dev", "prod"], &["read", "publish"]).await;
    let build = server.token_for("build", &["prod"], &["read"]).await;
    let ws = Workspace::new();

    // CI publishes to dev with the clients people use.
    for name in ["promo-app", "promo-experiment"] {
        npm_package(&ws, name, name, "1.0.0");
        write_npmrc(&ws, name, &server, "dev", Some(&ci));
        run_ok(npm(&ws, name).args(["publish"]));
    }
    let wheel = ws.path("promo_lib-1.0.0-py3-none-any.whl");
    write_wheel(&wheel, "promo-lib", "1.0.0", "VERSION = '1.0.0'\n");
    run_ok(
        ws.command(venv_bin(&tools, "twine"), ".")
            .args(["upload", "--non-interactive", "--disable-progress-bar", "--repository-url"])
            .arg(server.url("/pypi/dev/"))
            .args(["-u", "__token__", "-p", &ci])
            .arg(&wheel),
    );

    // Publishing to dev does not reach prod; the release token promotes.
    assert_eq!(copy(&server, &ci, "npm", "promo-app", "1.0.0").await.0, 403);
    let (status, report) = copy(&server, &release, "npm", "promo-app", "1.0.0").await;
    assert_eq!((status, &report["copied"]), (200, &json!(["1.0.0"])), "{report}");
    let (status, report) = copy(&server, &release, "pypi", "promo-lib", "1.0.0").await;
    assert_eq!((status, &report["copied"]), (200, &json!(["1.0.0"])), "{report}");
    // prod's rules block the experiment: the copy is refused as a publish there would be.
    let (status, refusal) = copy(&server, &release, "npm", "promo-experiment", "1.0.0").await;
    assert_eq!(status, 403, "{refusal}");
    assert!(refusal["error"].as_str().unwrap().contains("blocked"), "{refusal}");

    // Builds install from prod with a read-only token.
    ws.write("app/package.json", r#"{"name":"app","version":"1.0.0","private":true}"#);
    write_npmrc(&ws, "app", &server, "prod", Some(&build));
    // A cache of its own, as a build machine has: `npm publish` left the tarball in CI's.
    let install = |package: &str| {
        let mut command = npm(&ws, "app");
        command.env("npm_config_cache", ws.path("build-cache")).args(["install", package]);
        command
    };
    run_ok(&mut install("promo-app"));
    let installed = std::fs::read_to_string(ws.path("app/node_modules/promo-app/index.js")).unwrap();
    assert_eq!(installed, "module.exports = 'promo-app 1.0.0';\n");
    let failed = run(&mut install("promo-experiment"));
    assert!(!failed.status.success(), "promo-experiment is not in prod");
    run_ok(ws.command("python3", ".").args(["-m", "venv", "venv"]));
    let index = format!("http://__token__:{build}@127.0.0.1:{}/pypi/prod/simple/", server.port);
    run_ok(ws.command(venv_bin(&ws.path("venv"), "pip"), ".").args([
        "install",
        "--quiet",
        "--no-cache-dir",
        "--index-url",
        &index,
        "promo-lib",
    ]));

    // Every step is attributed: at the webhook (after its first delivery failed) …
    let webhook = || receiver.events();
    let published =
        eventually("npm publish", webhook, |e| event(e, "package.published", "dev/npm/promo-app@1.0.0").cloned()).await;
    assert_eq!(published["data"]["actor"]["subject"], "ci-bot");
    assert_eq!(published["data"]["actor"]["kind"], "token");
    assert_eq!(published["data"]["clientAddress"], "127.0.0.1");
    assert!(published["data"]["actor"]["tokenId"].as_str().is_some_and(|id| !id.is_empty()));
    assert_eq!(published["specversion"], "1.0");
    assert_eq!(published["source"], "/wharf/acme");
    let wheel =
        eventually("twine upload", webhook, |e| event(e, "package.published", "dev/pypi/promo-lib@1.0.0").cloned())
            .await;
    assert_eq!(wheel["data"]["files"], json!(["promo_lib-1.0.0-py3-none-any.whl"]));
    let copied =
        eventually("the copy", webhook, |e| event(e, "package.copied", "prod/npm/promo-app@1.0.0").cloned()).await;
    assert_eq!(copied["data"]["actor"]["subject"], "release-bot");
    assert_eq!(copied["data"]["sourceRepository"], "dev");
    let refused =
        eventually("the refusal", webhook, |e| event(e, "policy.refused", "prod/npm/promo-experiment@1.0.0").cloned())
            .await;
    assert_eq!(refused["data"]["actor"]["subject"], "release-bot");
    let pulled =
        eventually("npm install", webhook, |e| event(e, "package.downloaded", "prod/npm/promo-app@1.0.0").cloned())
            .await;
    assert_eq!(pulled["data"]["actor"]["subject"], "build");
    let pip =
        eventually("pip install", webhook, |e| event(e, "package.downloaded", "prod/pypi/promo-lib@1.0.0").cloned())
            .await;
    assert_eq!(pip["data"]["file"], "promo_lib-1.0.0-py3-none-any.whl");
    let minted = eventually("token mints", webhook, |e| {
        let minted: Vec<_> = e.iter().filter(|e| e["type"] == "dev.wharf.token.minted").collect();
        (minted.len() == 3).then(|| minted.into_iter().cloned().collect::<Vec<_>>())
    })
    .await;
    assert!(minted.iter().all(|e| e["data"]["actor"]["kind"] == "admin"));
    assert_eq!(*receiver.refused.lock().unwrap(), 1, "the first delivery was refused, and retried");

    // … on the audit stream, the same events …
    let stream = || server.audit_lines();
    eventually("the stream's copy event", stream, |e| (e.iter().any(|l| l["id"] == copied["id"])).then_some(())).await;
    assert!(
        server.log_lines().iter().all(|line| !line.contains("dev.wharf.")),
        "audit events stay off the operational log"
    );

    // … and from the Domain's own record, without a log pipeline.
    let query = "/api/v1/audit?repository=prod&package=promo-app&version=1.0.0&type=package.downloaded";
    let answer: Value =
        server.client.get(server.url(query)).bearer_auth(&release).send().await.unwrap().json().await.unwrap();
    let pulls = answer["events"].as_array().unwrap();
    assert!(pulls.iter().any(|e| e["data"]["actor"]["subject"] == "build"), "{answer:#}");
    let denied = server.client.get(server.url(query)).bearer_auth(&build).send().await.unwrap();
    assert_eq!(denied.status(), 403, "readers do not read who else pulled");
}

/// The audit record answers "who pulled this version" quickly after 10,000 downloads.
#[tokio::test(flavor = "multi_thread")]
async fn the_audit_query_answers_in_under_100_ms_after_10_000_downloads() {
    let server =
        TestServer::start_with(Some(&promotion_config()), &["--audit-log", "off", "--audit-flush-interval", "1s"]);
    let ci = server.token_for("ci-bot", &["dev"], &["publish"]).await;
    for version in 0..10 {
        let url = server.url(&format!("/generic/dev/acme/tool/1.0.{version}/tool.bin"));
        let body = vec![version as u8; 1024];
        let checksum = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&body));
        let put = server.client.put(url).bearer_auth(&ci).header("x-checksum-sha256", checksum).body(body);
        let put = put.send().await.unwrap();
        assert_eq!(put.status(), 201, "{}", put.text().await.unwrap());
    }
    let mut readers = Vec::new();
    for n in 0..10 {
        readers.push(server.token_for(&format!("build-{n}"), &["dev"], &["read"]).await);
    }
    let started = Instant::now();
    let downloads = futures::StreamExt::map(futures::stream::iter(0..10_000usize), |n| {
        let (client, token) = (server.client.clone(), readers[n % 10].clone());
        let url = server.url(&format!("/generic/dev/acme/tool/1.0.{}/tool.bin", n / 1000));
        async move {
            let response = client.get(url).bearer_auth(token).send().await.unwrap();
            assert_eq!(response.status(), 200);
            response.bytes().await.unwrap();
        }
    });
    futures::StreamExt::for_each_concurrent(downloads, 32, |download| download).await;
    eprintln!("10,000 downloads in {:?}", started.elapsed());
    // Written to storage by the next flush: the answer then comes from the Domain's record.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let query = server.url("/api/v1/audit?repository=dev&package=acme/tool&version=1.0.3&type=package.downloaded");
    let mut fastest = Duration::MAX;
    let mut answer = Value::Null;
    for _ in 0..5 {
        let asked = Instant::now();
        answer = server.client.get(&query).bearer_auth(ADMIN_TOKEN).send().await.unwrap().json().await.unwrap();
        fastest = fastest.min(asked.elapsed());
    }
    eprintln!("the audit query answered in {fastest:?}");
    let events = answer["events"].as_array().unwrap();
    let counted: u64 = events.iter().map(|e| e["data"]["count"].as_u64().unwrap_or(1)).sum();
    assert_eq!(counted, 1000, "{answer:#}");
    let builds: std::collections::BTreeSet<&str> =
        events.iter().map(|e| e["data"]["actor"]["subject"].as_str().unwrap()).collect();
    assert_eq!(builds.len(), 10, "who pulled it: {builds:?}");
    assert!(fastest < Duration::from_millis(100), "the audit query took {fastest:?}");
}

/// What a registry recorded right before it was stopped is in the Domain's record after
/// it starts again: shutdown writes what the last flush had not.
#[tokio::test(flavor = "multi_thread")]
async fn events_recorded_before_a_shutdown_are_kept() {
    let data = tempfile::tempdir().unwrap();
    let config = promotion_config();
    let flags = ["--audit-log", "off", "--audit-flush-interval", "1h"];
    let mut server = TestServer::start_in(data.path(), Some(&config), &flags);
    let ci = server.token_for("ci-bot", &["dev"], &["publish"]).await;
    let body = b"tool 1.0.0".to_vec();
    let checksum = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&body));
    let url = server.url("/generic/dev/acme/tool/1.0.0/tool.bin");
    let put = server.client.put(url).bearer_auth(&ci).header("x-checksum-sha256", checksum).body(body);
    assert_eq!(put.send().await.unwrap().status(), 201);
    server.terminate();
    assert!(server.wait_exit(Duration::from_secs(20)).success());

    let restarted = TestServer::start_in(data.path(), Some(&config), &flags);
    let query = restarted.url("/api/v1/audit?type=package.published&repository=dev");
    let answer: Value =
        restarted.client.get(query).bearer_auth(ADMIN_TOKEN).send().await.unwrap().json().await.unwrap();
    let events = answer["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{answer:#}");
    assert_eq!(events[0]["data"]["actor"]["subject"], "ci-bot");
    assert_eq!(events[0]["subject"], "dev/generic/acme/tool@1.0.0");
}
