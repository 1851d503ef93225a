//! Repositories' network rules (`spec.network`), enforced by the real registry on the peer
//! address: callers from extra loopback addresses (127.0.0.2, …) stand for other networks,
//! the real npm for a caller inside the cluster; `X-Forwarded-For` is believed from a
//! trusted proxy only, and a refusal is a 403 that names the rule.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::{IpAddr, Ipv4Addr};

use sha2::{Digest, Sha256};
use support::*;

/// The cluster is 127.0.0.1 (where npm runs); `web` is read in the cluster and from
/// 127.0.0.2, published to only from the release host 127.0.0.5; 127.0.0.9 is the ingress.
const CONFIG: &str = r#"
apiVersion: wharf.dev/v1alpha1
kind: Domain
metadata: {name: acme}
spec:
  storage: {filesystem: {path: "{data}"}}
  network: {clusterCIDRs: [127.0.0.1/32]}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {name: web}
spec:
  domainRef: {name: acme}
  access: {read: [{kind: Anonymous}]}
  network:
    read: [{kind: InCluster}, {kind: CIDR, cidr: 127.0.0.2}]
    publish: [{kind: CIDR, cidr: 127.0.0.5/32}]
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {name: open}
spec:
  domainRef: {name: acme}
  access: {read: [{kind: Anonymous}]}
"#;

/// A client whose connections come from `address`.
fn from(address: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder().local_address(IpAddr::V4(Ipv4Addr::from(address))).build().unwrap()
}

async fn put(client: &reqwest::Client, server: &TestServer, token: &str, version: &str) -> reqwest::Response {
    let body = format!("build {version}");
    client
        .put(server.url(&format!("/generic/web/acme/tool/{version}/tool.bin")))
        .bearer_auth(token)
        .header("X-Checksum-Sha256", hex::encode(Sha256::digest(&body)))
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn network_rules_admit_the_named_networks_for_read_and_publish_separately() {
    let server = TestServer::start_with(Some(CONFIG), &["--trusted-proxy", "127.0.0.9"]);
    let token = server.token(&["web", "open"], &["read", "publish"]).await;

    // Publishing: only from the release host, whatever the token.
    let refused = put(&from([127, 0, 0, 1]), &server, &token, "1.0.0").await;
    assert_eq!(refused.status(), 403);
    let message = refused.text().await.unwrap();
    assert!(
        message.contains("repository web may be published to only from CIDR 127.0.0.5/32 (its spec.network.publish)")
            && message.contains("this request comes from 127.0.0.1"),
        "{message}"
    );
    assert_eq!(put(&from([127, 0, 0, 5]), &server, &token, "1.0.0").await.status(), 201);
    // Without a token, or with another Repository's, the answer is the usual refusal, from
    // any address: the rules are not shown to whoever may not publish anyway.
    let other = server.token(&["open"], &["read", "publish"]).await;
    for address in [[127, 0, 0, 1], [127, 0, 0, 5]] {
        let refused = put(&from(address), &server, &other, "1.0.1").await;
        assert_eq!(refused.status(), 403);
        let message = refused.text().await.unwrap();
        assert!(message.contains("may not publish on repository web") && !message.contains("network"), "{message}");
        let anonymous = put(&from(address), &server, "", "1.0.1").await;
        assert_eq!(anonymous.status(), 401);
        assert!(!anonymous.text().await.unwrap().contains("network"));
    }

    // Reading: in the cluster and from 127.0.0.2, not from 127.0.0.3 or the release host.
    let file = server.url("/generic/web/acme/tool/1.0.0/tool.bin");
    for (address, status) in
        [([127, 0, 0, 1], 200), ([127, 0, 0, 2], 200), ([127, 0, 0, 3], 403), ([127, 0, 0, 5], 403)]
    {
        let response = from(address).get(&file).send().await.unwrap();
        assert_eq!(response.status(), status, "from {address:?}");
    }
    let refused = from([127, 0, 0, 3]).get(&file).send().await.unwrap().text().await.unwrap();
    assert!(refused.contains("may be read only from InCluster, CIDR 127.0.0.2 (its spec.network.read)"), "{refused}");
    // A Repository without rules answers anyone; the listing shows each caller what it may reach.
    let listed = |address: [u8; 4]| {
        let request = from(address).get(server.url("/api/v1/repositories")).bearer_auth(&token).send();
        async move {
            let body: serde_json::Value = request.await.unwrap().json().await.unwrap();
            let names: Vec<String> = body["repositories"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["name"].as_str().unwrap().to_owned())
                .collect();
            names
        }
    };
    assert_eq!(listed([127, 0, 0, 1]).await, ["web", "open"]);
    assert_eq!(listed([127, 0, 0, 3]).await, ["open"]);

    // The ingress (a trusted proxy) reports its client; anyone else's header is dropped.
    let through = |proxy: [u8; 4], client: &str| from(proxy).get(&file).header("X-Forwarded-For", client).send();
    assert_eq!(through([127, 0, 0, 9], "127.0.0.2").await.unwrap().status(), 200);
    assert_eq!(through([127, 0, 0, 9], "127.0.0.2, 127.0.0.3").await.unwrap().status(), 403, "the nearest hop counts");
    assert_eq!(through([127, 0, 0, 3], "127.0.0.2").await.unwrap().status(), 403, "not a proxy: not believed");

    // The real npm, in the cluster, installs from web; publishing from there is refused with
    // the rule's words.
    let ws = Workspace::new();
    ws.write("pkg/package.json", r#"{"name":"@acme/netlib","version":"1.0.0","main":"index.js"}"#);
    ws.write("pkg/index.js", "module.exports = 'inside';\n");
    write_npmrc(&ws, "pkg", &server, "web", Some(&token));
    let publish = run(npm(&ws, "pkg").args(["publish", "--access", "public"]));
    assert!(!publish.status.success());
    assert!(text(&publish).contains("403") && text(&publish).contains("spec.network.publish"), "{}", text(&publish));
    let tarball = run_ok(npm(&ws, "pkg").args(["pack", "--json"]));
    let packed: serde_json::Value = serde_json::from_slice(&tarball.stdout).unwrap();
    let tarball = std::fs::read(ws.path(&format!("pkg/{}", packed[0]["filename"].as_str().unwrap()))).unwrap();
    let document = serde_json::json!({
        "name": "@acme/netlib", "dist-tags": {"latest": "1.0.0"},
        "versions": {"1.0.0": {"name": "@acme/netlib", "version": "1.0.0", "main": "index.js",
            "dist": {"shasum": packed[0]["shasum"], "integrity": packed[0]["integrity"],
                     "tarball": server.url("/npm/web/@acme/netlib/-/netlib-1.0.0.tgz")}}},
        "_attachments": {"netlib-1.0.0.tgz": {"content_type": "application/octet-stream",
            "data": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &tarball), "length": tarball.len()}}
    });
    let published = from([127, 0, 0, 5])
        .put(server.url("/npm/web/@acme%2fnetlib"))
        .bearer_auth(&token)
        .json(&document)
        .send()
        .await
        .unwrap();
    assert_eq!(published.status(), 201, "from the release host: {}", published.text().await.unwrap());
    ws.write("app/package.json", r#"{"name":"app","version":"1.0.0","private":true}"#);
    write_npmrc(&ws, "app", &server, "web", None);
    run_ok(npm(&ws, "app").args(["install", "@acme/netlib@1.0.0"]));
    assert_eq!(
        std::fs::read_to_string(ws.path("app/node_modules/@acme/netlib/index.js")).unwrap(),
        "module.exports = 'inside';\n"
    );
}
