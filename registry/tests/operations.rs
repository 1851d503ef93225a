//! Running the binary: graceful shutdown with an upload in flight, JSON
//! logs, data and tokens surviving a restart, configuration errors a
//! person can act on.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use base64::Engine;
use support::*;

fn publish_document(name: &str, version: &str) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    let manifest = serde_json::json!({"name": name, "version": version}).to_string();
    let mut header = tar::Header::new_gnu();
    header.set_size(manifest.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append_data(&mut header, "package/package.json", manifest.as_bytes()).unwrap();
    // Incompressible padding so the body takes a moment to send.
    let padding: Vec<u8> = (0..512 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let mut header = tar::Header::new_gnu();
    header.set_size(padding.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append_data(&mut header, "package/data.bin", &padding[..]).unwrap();
    let tarball = builder.into_inner().unwrap().finish().unwrap();
    serde_json::to_vec(&serde_json::json!({
        "name": name,
        "dist-tags": {"latest": version},
        "versions": {version: {"name": name, "version": version}},
        "_attachments": {format!("{name}-{version}.tgz"): {
            "data": base64::engine::general_purpose::STANDARD.encode(&tarball),
            "length": tarball.len()
        }}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_an_upload_in_flight_finish() {
    let data = tempfile::tempdir().unwrap();
    let mut server = TestServer::start_in(data.path(), None, &["--log-format", "json"]);
    let token = server.token(&["main"], &["publish"]).await;
    let body = publish_document("slow-pkg", "1.0.0");
    let (first, second) = body.split_at(body.len() / 2);
    let (first, second) = (first.to_vec(), second.to_vec());
    let (sent_first, first_sent) = tokio::sync::oneshot::channel::<()>();
    let stream = async_stream(first, second, sent_first);
    let upload = tokio::spawn(
        reqwest::Client::new()
            .put(server.url("/npm/main/slow-pkg"))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(stream))
            .send(),
    );
    first_sent.await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.terminate();
    let response = upload.await.unwrap().unwrap();
    assert_eq!(response.status(), 201, "the upload in flight completes");
    let status = server.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "clean exit after SIGTERM: {status}");

    let logs = server.log_lines();
    assert!(!logs.is_empty());
    for line in &logs {
        let parsed: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not a JSON log line: {line}"));
        assert!(parsed["level"].is_string() && parsed["fields"].is_object(), "{line}");
    }
    assert!(logs.iter().any(|l| l.contains("shutting down")), "{logs:?}");

    // A restart on the same data serves the package, and the token still
    // verifies: the signing key lives with the data.
    let restarted = TestServer::start_in(data.path(), None, &[]);
    let response = reqwest::Client::new()
        .get(restarted.url("/npm/main/slow-pkg/-/slow-pkg-1.0.0.tgz"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let whoami =
        reqwest::Client::new().get(restarted.url("/npm/main/-/whoami")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(whoami.status(), 200);
}

/// Sends `first`, signals, pauses, then sends `second`.
fn async_stream(
    first: Vec<u8>,
    second: Vec<u8>,
    sent_first: tokio::sync::oneshot::Sender<()>,
) -> impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    let mut sent_first = Some(sent_first);
    futures::stream::unfold(0, move |step| {
        let (first, second) = (first.clone(), second.clone());
        let signal = if step == 1 { sent_first.take() } else { None };
        async move {
            match step {
                0 => Some((Ok(first), 1)),
                1 => {
                    if let Some(signal) = signal {
                        let _ = signal.send(());
                    }
                    tokio::time::sleep(Duration::from_millis(800)).await;
                    Some((Ok(second), 2))
                }
                _ => None,
            }
        }
    })
}

/// What `serve --config path` says on stderr as it refuses to start.
fn start_up_refused(path: &std::path::Path) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_wharf-registry"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn configuration_errors_name_file_document_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.yaml");
    std::fs::write(
        &path,
        "apiVersion: wharf.dev/v1alpha1\nkind: Domain\nmetadata: {name: acme}\nspec:\n  storage: {memory: {}}\n---\napiVersion: wharf.dev/v1alpha1\nkind: Repository\nmetadata: {name: web}\nspec:\n  domainRef: {name: acme}\n  upstreams: [{nam: x}]\n",
    )
    .unwrap();
    let stderr = start_up_refused(&path);
    assert!(stderr.contains("broken.yaml"), "{stderr}");
    assert!(stderr.contains("document 2"), "{stderr}");
    assert!(stderr.contains("spec.upstreams[0]"), "{stderr}");
}

/// Pod settings in a file a registry is started from would be ignored: refused, saying why.
#[test]
fn pod_settings_are_refused_outside_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wharf.yaml");
    let domain =
        "apiVersion: wharf.dev/v1alpha1\nkind: Domain\nmetadata: {name: acme}\nspec:\n  storage: {memory: {}}\n";
    std::fs::write(&path, format!("{domain}  registry: {{autoscaling: {{maxReplicas: 4}}}}\n")).unwrap();
    let stderr = start_up_refused(&path);
    assert!(stderr.contains("spec.registry sets up the registry pods the operator runs"), "{stderr}");
}
