//! HTTPS served by the registry itself (`--tls-cert`, `--tls-key`), with no terminator in
//! front: real npm, pip, twine and cargo trusting a throw-away authority, HTTP/2 where the
//! client offers it, and a renewed certificate served without a restart while a broken
//! renewal is refused and the last good certificate stays. (The go command over this TLS
//! is in `go_client.rs`.)
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use support::*;

/// What the server presents to a new connection, and the HTTP version it spoke.
async fn presented(ca: &TestCa, server: &TestServer) -> (Vec<u8>, reqwest::Version) {
    let response = ca.client().get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let info = response.extensions().get::<reqwest::tls::TlsInfo>().unwrap();
    (info.peer_certificate().unwrap().to_vec(), response.version())
}

#[tokio::test(flavor = "multi_thread")]
async fn real_clients_over_the_registrys_own_tls_and_a_renewal_without_restart() {
    let ca = TestCa::new();
    let server = TestServer::start_tls(Some(ACME_ON_A_FOLDER), &ca, &[]);
    assert!(server.base.starts_with("https://127.0.0.1:"), "{}", server.base);
    let (first, version) = presented(&ca, &server).await;
    assert_eq!(version, reqwest::Version::HTTP_2, "ALPN chose HTTP/2");
    let token = server.token(&["main"], &["read", "publish"]).await;
    let ws = Workspace::new();
    let authority = ca.authority.display().to_string();

    // npm publishes and installs, trusting the authority through `cafile`.
    ws.write("lib/package.json", r#"{"name":"@acme/secure","version":"1.0.0","main":"index.js"}"#);
    ws.write("lib/index.js", "module.exports = 'over tls';\n");
    ws.write("app/package.json", r#"{"name":"app","version":"1.0.0","private":true}"#);
    for dir in ["lib", "app"] {
        write_npmrc(&ws, dir, &server, "main", Some(&token));
        let npmrc = ws.path(&format!("{dir}/.npmrc"));
        let text = std::fs::read_to_string(&npmrc).unwrap();
        std::fs::write(&npmrc, format!("{text}cafile={authority}\n")).unwrap();
    }
    run_ok(npm(&ws, "lib").args(["publish", "--access", "public"]));
    run_ok(npm(&ws, "app").args(["install", "@acme/secure@1.0.0"]));
    let installed = std::fs::read_to_string(ws.path("app/node_modules/@acme/secure/index.js")).unwrap();
    assert_eq!(installed, "module.exports = 'over tls';\n");
    let untrusting = reqwest::get(server.url("/npm/main/@acme/secure")).await;
    assert!(untrusting.is_err(), "a client that does not trust the authority does not connect");

    // twine uploads and pip downloads, trusting the authority through REQUESTS_CA_BUNDLE
    // (which this machine sets, and which wins over their `--cert`); the simple page's
    // links are https.
    let tools = python_tools();
    std::fs::create_dir_all(ws.path("dist")).unwrap();
    write_wheel(&ws.path("dist/secure_pkg-1.0-py3-none-any.whl"), "secure-pkg", "1.0", "VERSION = '1.0'\n");
    run_ok(
        ws.command(venv_bin(&tools, "twine"), ".")
            .env("REQUESTS_CA_BUNDLE", &authority)
            .args(["upload", "--non-interactive", "--disable-progress-bar"])
            .arg("--repository-url")
            .arg(server.url("/pypi/main/"))
            .args(["-u", "__token__", "-p", &token, "dist/secure_pkg-1.0-py3-none-any.whl"]),
    );
    let index = format!("https://__token__:{token}@127.0.0.1:{}/pypi/main/simple/", server.port);
    run_ok(
        ws.command(venv_bin(&tools, "pip"), ".")
            .env("REQUESTS_CA_BUNDLE", &authority)
            .args(["download", "--no-deps", "--disable-pip-version-check", "-d", "downloads"])
            .args(["--index-url", &index, "secure-pkg==1.0"]),
    );
    assert!(ws.path("downloads/secure_pkg-1.0-py3-none-any.whl").exists());

    // cargo publishes and resolves over the sparse protocol (HTTP/2, multiplexed).
    let index = format!("sparse+{}/cargo/main/index/", server.base);
    ws.write(
        "home/.cargo/config.toml",
        &format!(
            "[registries.wharf]\nindex = \"{index}\"\ncredential-provider = \"cargo:token\"\n\n[net]\nretry = 0\n"
        ),
    );
    ws.write(
        "crate/Cargo.toml",
        "[package]\nname = \"wharf-secure\"\nversion = \"0.1.0\"\nedition = \"2021\"\ndescription = \"TLS test\"\nlicense = \"MIT\"\npublish = [\"wharf\"]\n",
    );
    ws.write("crate/src/lib.rs", "pub const ANSWER: u32 = 42;\n");
    ws.write(
        "user/Cargo.toml",
        "[package]\nname = \"user\"\nversion = \"0.1.0\"\nedition = \"2021\"\npublish = false\n\n[dependencies]\nwharf-secure = { version = \"0.1\", registry = \"wharf\" }\n",
    );
    ws.write("user/src/lib.rs", "pub use wharf_secure::ANSWER;\n");
    let cargo = |dir: &str| {
        let mut command = isolated_cargo(&ws, dir);
        command.env("CARGO_HTTP_CAINFO", &ca.authority).env("CARGO_REGISTRIES_WHARF_TOKEN", &token);
        command
    };
    run_ok(cargo("crate").args(["publish", "--registry", "wharf", "--allow-dirty", "--no-verify"]));
    run_ok(cargo("user").args(["generate-lockfile"]));
    assert!(std::fs::read_to_string(ws.path("user/Cargo.lock")).unwrap().contains("name = \"wharf-secure\""));

    // A renewal (a cert-manager certificate, a rotated Secret) is served within seconds.
    let renewed = ca.issue();
    assert_ne!(renewed, first);
    let deadline = Instant::now() + Duration::from_secs(15);
    while presented(&ca, &server).await.0 != renewed {
        assert!(Instant::now() < deadline, "the renewed certificate was not served");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Half a rotation (a new certificate, the old key) is refused, saying why; the
    // renewed certificate stays in use.
    let key = std::fs::read(&ca.key).unwrap();
    ca.issue();
    std::fs::write(&ca.key, key).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !server.log_lines().iter().any(|line| line.contains("does not belong to the certificate")) {
        assert!(Instant::now() < deadline, "the broken renewal was not reported");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(presented(&ca, &server).await.0, renewed);
}

#[test]
fn a_registry_asked_for_https_does_not_start_without_a_usable_certificate() {
    let ca = TestCa::new();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(&ca.key, "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_wharf-registry"))
        .args(["serve", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&ca.certificate)
        .arg("--tls-key")
        .arg(&ca.key)
        .env("WHARF_DATA", data.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot serve HTTPS") && stderr.contains("tls.key"), "{stderr}");
}

/// SIGTERM with HTTP/2 connections open and idle: one of a client that answers (its pool
/// keeps the connection) and one of a client that has stopped reading (it sent its preface
/// and went quiet, so it never acknowledges the GOAWAY). The registry exits within a second
/// or two, not after the header or idle timeout.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_does_not_wait_for_idle_http2_connections() {
    use rustls::pki_types::pem::PemObject;
    use tokio::io::AsyncWriteExt;
    let ca = TestCa::new();
    let mut server = TestServer::start_tls(Some(ACME_ON_A_FOLDER), &ca, &[]);
    let client = ca.client();
    let response = client.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);

    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from_pem_file(&ca.authority).unwrap()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", server.port)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut quiet = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp).await.unwrap();
    // The client preface and an empty SETTINGS frame, then nothing: never read again.
    quiet.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.unwrap();
    quiet.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    server.terminate();
    let status = tokio::task::block_in_place(|| server.wait_exit(Duration::from_secs(5)));
    assert!(status.success(), "{status:?}");
    eprintln!("exited {:?} after SIGTERM", started.elapsed());
    drop((client, quiet));
}
