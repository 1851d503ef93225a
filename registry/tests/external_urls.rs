//! `--external-url`: absolute links (here npm's tarball URLs) name one of the URLs the
//! registry is configured to be reached at, whatever `Host` a client sends; the one a
//! request names when it is among them, the first otherwise.
#![allow(clippy::unwrap_used)]

mod support;

use support::*;

#[tokio::test(flavor = "multi_thread")]
async fn links_name_a_configured_url_never_the_clients_host() {
    let server = TestServer::start_with(
        Some(ACME_ON_A_FOLDER),
        &["--external-url", "https://wharf.example.com", "--external-url", "http://wharf-acme.ns.svc:8080"],
    );
    let token = server.token(&["main"], &["read", "publish"]).await;
    let ws = Workspace::new();
    ws.write("pkg/package.json", r#"{"name":"@acme/linked","version":"1.0.0","main":"index.js"}"#);
    ws.write("pkg/index.js", "module.exports = 1;\n");
    write_npmrc(&ws, "pkg", &server, "main", Some(&token));
    run_ok(npm(&ws, "pkg").args(["publish", "--access", "public"]));

    let tarball = |headers: &'static [(&'static str, &'static str)]| {
        let mut request = reqwest::Client::new().get(server.url("/npm/main/@acme%2flinked"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        async move {
            let packument: serde_json::Value = request.send().await.unwrap().json().await.unwrap();
            packument["versions"]["1.0.0"]["dist"]["tarball"].as_str().unwrap().to_owned()
        }
    };
    let path = "/npm/main/@acme/linked/-/linked-1.0.0.tgz";
    assert_eq!(tarball(&[("Host", "evil.example")]).await, format!("https://wharf.example.com{path}"));
    assert_eq!(tarball(&[]).await, format!("https://wharf.example.com{path}"), "127.0.0.1 is not among them");
    assert_eq!(tarball(&[("Host", "wharf-acme.ns.svc:8080")]).await, format!("http://wharf-acme.ns.svc:8080{path}"));
    // A trusted proxy (loopback, by default) names the host its client asked for; the
    // scheme is the configured URL's.
    const PROXIED: &[(&str, &str)] = &[("X-Forwarded-Host", "wharf-acme.ns.svc:8080"), ("X-Forwarded-Proto", "https")];
    assert_eq!(tarball(PROXIED).await, format!("http://wharf-acme.ns.svc:8080{path}"));
}
