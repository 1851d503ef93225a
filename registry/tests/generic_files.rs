//! Generic files with `curl` against the real binary: upload with a
//! checksum, a multi-asset version that stays Unfinished until its last
//! asset, listings, downloads, and refusals.
#![allow(clippy::unwrap_used)]

mod support;

use sha2::{Digest, Sha256};
use support::*;

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn curl_uploads_lists_and_downloads() {
    let server = TestServer::start();
    let token = server.token(&["main"], &["publish"]).await;
    let ws = Workspace::new();
    let linux = ws.write("tool-linux.tar.gz", &"linux build\n".repeat(1000));
    let darwin = ws.write("tool-darwin.tar.gz", &"darwin build\n".repeat(1000));
    let base = server.url("/generic/main/acme/tool/1.0.0");

    let curl = |args: &[&str]| {
        let mut command = ws.command("curl", ".");
        command.args(["-sS", "-o", "response.txt", "-w", "%{http_code}"]).args(args);
        let output = run_ok(&mut command);
        let code = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        (code, std::fs::read_to_string(ws.path("response.txt")).unwrap_or_default())
    };
    let auth = format!("Authorization: Bearer {token}");
    let linux_sum = format!("X-Checksum-Sha256: {}", sha256(&std::fs::read(&linux).unwrap()));
    let darwin_sum = format!("X-Checksum-Sha256: {}", sha256(&std::fs::read(&darwin).unwrap()));

    // First asset keeps the version open.
    let (code, body) = curl(&[
        "-H",
        &auth,
        "-H",
        &linux_sum,
        "-T",
        linux.to_str().unwrap(),
        &format!("{base}/tool-linux.tar.gz?unfinished=true"),
    ]);
    assert_eq!(code, "201", "{body}");
    let (_, version) = curl(&[&base]);
    let version: serde_json::Value = serde_json::from_str(&version).unwrap();
    assert_eq!(version["status"], "Unfinished");
    let (code, _) = curl(&[&format!("{base}/tool-linux.tar.gz")]);
    assert_eq!(code, "404", "an Unfinished version is not downloadable");

    // A checksum mismatch is refused and adds nothing.
    let (code, body) = curl(&[
        "-H",
        &auth,
        "-H",
        &linux_sum,
        "-T",
        darwin.to_str().unwrap(),
        &format!("{base}/tool-darwin.tar.gz?unfinished=true"),
    ]);
    assert_eq!(code, "400", "{body}");
    assert!(body.contains("checksum mismatch"), "{body}");
    let (code, _) = curl(&["-H", &auth, "-T", darwin.to_str().unwrap(), &format!("{base}/tool-darwin.tar.gz")]);
    assert_eq!(code, "400", "the checksum header is required");

    // The last asset publishes the version.
    let (code, body) =
        curl(&["-H", &auth, "-H", &darwin_sum, "-T", darwin.to_str().unwrap(), &format!("{base}/tool-darwin.tar.gz")]);
    assert_eq!(code, "201", "{body}");
    let (_, version) = curl(&[&base]);
    let version: serde_json::Value = serde_json::from_str(&version).unwrap();
    assert_eq!(version["status"], "Published");
    assert_eq!(version["assets"].as_array().unwrap().len(), 2);

    // Published is final; the same bytes again are fine.
    let (code, _) =
        curl(&["-H", &auth, "-H", &darwin_sum, "-T", darwin.to_str().unwrap(), &format!("{base}/tool-darwin.tar.gz")]);
    assert_eq!(code, "200");
    let (code, body) =
        curl(&["-H", &auth, "-H", &darwin_sum, "-T", darwin.to_str().unwrap(), &format!("{base}/extra.tar.gz")]);
    assert_eq!(code, "409", "{body}");

    // Download and list.
    let mut download = ws.command("curl", ".");
    download.args(["-sSf", "-o", "got.tar.gz", &format!("{base}/tool-linux.tar.gz")]);
    run_ok(&mut download);
    assert_eq!(std::fs::read(ws.path("got.tar.gz")).unwrap(), std::fs::read(&linux).unwrap());
    let (code, listing) = curl(&[&server.url("/generic/main/acme/tool")]);
    assert_eq!(code, "200");
    let listing: serde_json::Value = serde_json::from_str(&listing).unwrap();
    assert_eq!(listing["versions"][0]["version"], "1.0.0");
    assert_eq!(listing["versions"][0]["status"], "Published");

    // A read-only caller cannot upload; traversal in any part is refused.
    let reader = server.token(&["main"], &["read"]).await;
    let (code, _) = curl(&[
        "-H",
        &format!("Authorization: Bearer {reader}"),
        "-H",
        &linux_sum,
        "-T",
        linux.to_str().unwrap(),
        &server.url("/generic/main/acme/tool/2.0/x"),
    ]);
    assert_eq!(code, "403");
    let (code, _) = curl(&[
        "--path-as-is",
        "-H",
        &auth,
        "-H",
        &linux_sum,
        "-T",
        linux.to_str().unwrap(),
        &server.url("/generic/main/acme/tool/2.0/%2e%2e"),
    ]);
    assert_eq!(code, "400");
}
