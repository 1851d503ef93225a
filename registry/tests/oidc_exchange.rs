//! Trusted publishing: a real OpenID provider (Ory Hydra, built by
//! `tests/oidc-provider.sh`) issues ID tokens with the claims a CI system
//! puts in them (repository, ref, a `sub` naming both), the registry
//! exchanges them for registry tokens within what the Repositories' `OIDC`
//! subjects grant, and the real npm and twine publish with those. Refused:
//! another repository or branch, another audience, a tampered or expired
//! token, `alg: none` and an HMAC signature keyed with the public key. The
//! provider's key rotation is followed. People sign in with `wharf login
//! --sign-in` (authorization code with PKCE on a loopback redirect, the test
//! playing the browser) and are named by `User` and `Group` subjects.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::{Output, Stdio};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use support::oidc::{Provider, people_config};
use support::*;

/// How long the provider's ID tokens live: short, so one can be seen expire.
const ID_TOKEN_SECONDS: u64 = 4;

fn config(issuer: &str) -> String {
    format!(
        r#"
apiVersion: wharf.dev/v1alpha1
kind: Domain
metadata: {{name: acme}}
spec:
  storage: {{filesystem: {{path: "{{data}}"}}}}
  tokens:
    trustedIssuers:
      - {{issuer: "{issuer}", audiences: [wharf-ci], clockSkew: 0s}}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {{name: web}}
spec:
  domainRef: {{name: acme}}
  access:
    read: [{{kind: Anonymous}}]
    publish:
      - {{kind: OIDC, issuer: "{issuer}", claims: {{repository: acme/web, ref: "refs/heads/*"}}}}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {{name: other}}
spec:
  domainRef: {{name: acme}}
  access:
    publish:
      - {{kind: OIDC, issuer: "{issuer}", claims: {{repository: acme/other}}}}
"#
    )
}

/// What `POST /api/v1/auth/oidc` answers for `id_token` asking to publish to `repo`.
async fn exchange(server: &TestServer, id_token: &str, repo: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(server.url("/api/v1/auth/oidc"))
        .json(&json!({"idToken": id_token, "repositories": [repo], "permissions": ["publish"]}))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

fn claims_of(token: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap()
}

fn header_of(token: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').next().unwrap()).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn ci_publishes_with_an_id_token_and_only_where_access_allows() {
    let provider = Provider::start(ID_TOKEN_SECONDS).await;
    provider.register_client("wharf-ci").await;
    provider.register_client("another-audience").await;
    let server = TestServer::start_with(Some(&config(&provider.issuer)), &[]);
    let main_claims = json!({"repository": "acme/web", "ref": "refs/heads/main"});
    let subject = "repo:acme/web:ref:refs/heads/main";

    // The job's ID token becomes a registry token for `web`, no stored secret involved.
    let id_token = provider.id_token("wharf-ci", subject, main_claims.clone()).await;
    let (status, reply) = exchange(&server, &id_token, "web").await;
    assert_eq!(status, 201, "{reply}");
    let token = reply["token"].as_str().unwrap().to_owned();
    // Not for another repository's packages (asked while the ID token lives).
    let (status, reply) = exchange(&server, &id_token, "other").await;
    assert_eq!(status, 403, "{reply}");
    assert!(reply["error"].as_str().unwrap().contains("may not publish on repository other"), "{reply}");

    // The real clients publish with it.
    let ws = Workspace::new();
    ws.write("pkg/package.json", &json!({"name": "ci-built", "version": "1.0.0"}).to_string());
    ws.write("pkg/index.js", "module.exports = 42;\n");
    write_npmrc(&ws, "pkg", &server, "web", Some(&token));
    run_ok(ws.command("npm", "pkg").args(["publish", "--no-audit", "--no-fund"]));
    let tools = python_tools();
    let wheel = ws.path("ci_built-1.0.0-py3-none-any.whl");
    write_wheel(&wheel, "ci-built", "1.0.0", "ANSWER = 42\n");
    run_ok(
        ws.command(venv_bin(&tools, "twine"), ".")
            .args(["upload", "--non-interactive", "--disable-progress-bar", "--repository-url"])
            .arg(server.url("/pypi/web/"))
            .args(["-u", "__token__", "-p", &token])
            .arg(&wheel),
    );
    let listing = reqwest::get(server.url("/pypi/web/simple/ci-built/")).await.unwrap().text().await.unwrap();
    assert!(listing.contains("ci_built-1.0.0-py3-none-any.whl"), "{listing}");
    // The token is the pipeline's, listed under its issuer and subject.
    let tokens = server.live_tokens(None).await;
    assert_eq!(tokens["tokens"][0]["subject"], format!("{}#{subject}", provider.issuer));

    // Not another CI repository's job, nor a job on a tag.
    let fork = provider
        .id_token(
            "wharf-ci",
            "repo:evil/web:ref:refs/heads/main",
            json!({"repository": "evil/web", "ref": "refs/heads/main"}),
        )
        .await;
    assert_eq!(exchange(&server, &fork, "web").await.0, 403);
    let tag = provider
        .id_token(
            "wharf-ci",
            "repo:acme/web:ref:refs/tags/v1",
            json!({"repository": "acme/web", "ref": "refs/tags/v1"}),
        )
        .await;
    assert_eq!(exchange(&server, &tag, "web").await.0, 403, "refs/heads/* does not match a tag");

    // Refused with a reason: another audience, a tampered token, alg none,
    // an HMAC keyed with the provider's public key, an expired token.
    let other_audience = provider.id_token("another-audience", subject, main_claims.clone()).await;
    let (status, reply) = exchange(&server, &other_audience, "web").await;
    assert_eq!(status, 401);
    assert!(reply["error"].as_str().unwrap().contains("audience"), "{reply}");
    let parts: Vec<&str> = id_token.split('.').collect();
    let mut forged_claims = claims_of(&id_token);
    forged_claims["repository"] = json!("acme/other");
    let forged_payload = URL_SAFE_NO_PAD.encode(forged_claims.to_string());
    let tampered = format!("{}.{forged_payload}.{}", parts[0], parts[2]);
    let (status, reply) = exchange(&server, &tampered, "other").await;
    assert_eq!(status, 401);
    assert!(reply["error"].as_str().unwrap().contains("signature"), "{reply}");
    let unsigned = format!("{}.{forged_payload}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#));
    assert_eq!(exchange(&server, &unsigned, "other").await.0, 401);
    let jwks: Value =
        reqwest::get(format!("{}/.well-known/jwks.json", provider.issuer)).await.unwrap().json().await.unwrap();
    let public_key = jwks["keys"][0]["n"].as_str().unwrap().to_owned();
    let mut hmac_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hmac_header.kid = header_of(&id_token)["kid"].as_str().map(str::to_owned);
    let confused = jsonwebtoken::encode(
        &hmac_header,
        &forged_claims,
        &jsonwebtoken::EncodingKey::from_secret(public_key.as_bytes()).unwrap(),
    )
    .unwrap();
    let (status, reply) = exchange(&server, &confused, "other").await;
    assert_eq!(status, 401);
    assert!(reply["error"].as_str().unwrap().contains("HS256"), "{reply}");
    tokio::time::sleep(Duration::from_secs(ID_TOKEN_SECONDS + 1)).await;
    let (status, reply) = exchange(&server, &id_token, "web").await;
    assert_eq!(status, 401);
    assert!(reply["error"].as_str().unwrap().contains("expired"), "{reply}");

    // The provider rotates its signing key: tokens signed with the new key
    // are accepted (the registry fetches the keys again for the new kid).
    let rotated = provider.rotate_keys().await;
    let fresh = provider.id_token("wharf-ci", subject, main_claims).await;
    assert_eq!(header_of(&fresh)["kid"], rotated);
    let (status, reply) = exchange(&server, &fresh, "web").await;
    assert_eq!(status, 201, "{reply}");
}

/// Runs `wharf` with `args` and `--sign-in`, playing the person's browser
/// when it prints the sign-in address: signs in at the provider as
/// `subject`, whose ID token carries `claims`.
async fn signed_in(ws: &Workspace, provider: &Provider, args: &[&str], subject: &str, claims: Value) -> Output {
    let mut child = ws
        .command(wharf_bin(), ".")
        .args(args)
        .args(["--sign-in", "--no-browser"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (address_tx, address_rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut seen = String::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
            let line = line.unwrap();
            if let Some(address) = line.strip_prefix("Sign in at: ") {
                let _ = address_tx.send(address.to_owned());
            }
            seen.push_str(&line);
            seen.push('\n');
        }
        seen
    });
    if let Ok(address) = address_rx.recv_timeout(Duration::from_secs(30)) {
        let callback = provider.authorize(address, subject, &["openid", "email", "profile"], claims).await;
        assert!(callback.starts_with("http://127.0.0.1:"), "the provider sends the browser back to wharf: {callback}");
        let page = reqwest::get(callback).await.unwrap().text().await.unwrap();
        assert!(page.contains("Signed in to Wharf"), "{page}");
    }
    let mut output = child.wait_with_output().unwrap();
    output.stderr = reader.join().unwrap().into_bytes();
    output
}

#[tokio::test(flavor = "multi_thread")]
async fn people_sign_in_with_wharf_login_and_are_named_by_user_and_group_subjects() {
    let provider = Provider::start(ID_TOKEN_SECONDS).await;
    provider.register_public_client("wharf-cli", &["http://127.0.0.1/callback"]).await;
    let server = TestServer::start_with(Some(&people_config(&provider.issuer, "wharf-cli", "web")), &[]);
    let target = ["--registry", server.base.as_str(), "--repository", "web"];
    let person = |email: &str, verified: bool, groups: &[&str]| json!({"email": email, "email_verified": verified, "groups": groups});

    // Alice signs in once; npm then publishes with what `wharf login` wrote.
    let ws = Workspace::new();
    let alice = person("alice@example.com", true, &["developers"]);
    let login = signed_in(&ws, &provider, &[&["login", "--tool", "npm"][..], &target].concat(), "alice", alice).await;
    assert!(login.status.success(), "{}", text(&login));
    ws.write("pkg/package.json", &json!({"name": "signed-in", "version": "1.0.0"}).to_string());
    ws.write("pkg/index.js", "module.exports = 'published by a person';\n");
    run_ok(ws.command("npm", "pkg").args(["publish", "--no-audit"]));
    let whoami = run(ws.command("npm", "pkg").args(["whoami"]));
    assert_eq!(String::from_utf8_lossy(&whoami.stdout).trim(), "idp:alice@example.com");
    // Her token is listed, and revocable, under her name.
    let tokens = server.live_tokens(Some("idp:alice@example.com")).await;
    assert_eq!(tokens["tokens"].as_array().unwrap().len(), 1, "{tokens}");

    // Bob is a developer: his group reads, and he may not publish.
    let bob = person("bob@example.com", true, &["developers"]);
    let read_token = [&["token", "--permission", "read"][..], &target].concat();
    let reader = signed_in(&ws, &provider, &read_token, "bob", bob.clone()).await;
    assert!(reader.status.success(), "{}", text(&reader));
    let token = String::from_utf8(reader.stdout).unwrap().trim().to_owned();
    let packument = server.url("/npm/web/signed-in");
    let auth = format!("Bearer {token}");
    assert_eq!(http_request("GET", &packument, &[("authorization", &auth)], "").unwrap(), 200);
    // Without --permission he gets what he may: a read token, and says why.
    let default = signed_in(&ws, &provider, &[&["token"][..], &target].concat(), "bob", bob.clone()).await;
    assert!(default.status.success(), "{}", text(&default));
    assert!(
        text(&default).contains("idp:bob@example.com may not publish on repository web: the token reads only"),
        "{}",
        text(&default)
    );
    let publish_token = [&["token", "--permission", "publish"][..], &target].concat();
    let publisher = signed_in(&ws, &provider, &publish_token, "bob", bob).await;
    assert!(!publisher.status.success());
    assert!(text(&publisher).contains("idp:bob@example.com may not publish on repository web"), "{}", text(&publisher));

    // An address nobody verified names no one; another group reads nothing.
    let unverified = person("alice@example.com", false, &["developers"]);
    let refused = signed_in(&ws, &provider, &read_token, "eve", unverified).await;
    assert!(text(&refused).contains("may not read on repository web"), "{}", text(&refused));
    let outsider = person("carol@example.com", true, &["sales"]);
    let refused = signed_in(&ws, &provider, &read_token, "carol", outsider).await;
    assert!(text(&refused).contains("idp:carol@example.com may not read on repository web"), "{}", text(&refused));

    // Anyone may ask where to sign in; nothing else is revealed.
    let options: Value = reqwest::get(server.url("/api/v1/auth/sign-in")).await.unwrap().json().await.unwrap();
    assert_eq!(
        options,
        json!({"providers": [{"issuer": provider.issuer, "clientID": "wharf-cli", "scopes": ["openid", "email", "profile"]}],
               "kubernetesUsers": false})
    );
}
