//! Who is asking for a registry token, when it is a person: signed in
//! through the Domain's identity provider (authorization code with PKCE on a
//! loopback redirect, RFC 8252), or known to the cluster by the token in
//! their kubeconfig.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a person has to finish signing in.
const SIGN_IN_TIMEOUT: Duration = Duration::from_secs(300);

/// An ID token for the person at the keyboard, from the first identity provider the
/// registry names (`issuer` picks another). The sign-in page is opened in a browser
/// unless `open_browser` is false; its address is printed either way.
pub async fn sign_in(registry: &str, issuer: Option<&str>, open_browser: bool) -> anyhow::Result<String> {
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    let options: Value = get_json(&http, &format!("{registry}/api/v1/auth/sign-in")).await?;
    let providers = options["providers"].as_array().cloned().unwrap_or_default();
    let provider =
        providers.iter().find(|p| issuer.is_none_or(|wanted| p["issuer"] == wanted)).with_context(|| match issuer {
            Some(wanted) => format!("the registry names no identity provider {wanted} for people to sign in with"),
            None => "the registry names no identity provider to sign in with (a trusted issuer's people.clientID)"
                .to_owned(),
        })?;
    let issuer = provider["issuer"].as_str().context("the registry's provider has no issuer")?;
    let client_id = provider["clientID"].as_str().context("the registry's provider has no clientID")?;
    let scopes: Vec<&str> = provider["scopes"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let discovery_url = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
    let discovery = get_json(&http, &discovery_url).await?;
    let endpoint = |name: &str| {
        discovery[name].as_str().map(str::to_owned).with_context(|| format!("{discovery_url} names no {name}"))
    };
    let (authorize, token_endpoint) = (endpoint("authorization_endpoint")?, endpoint("token_endpoint")?);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("cannot listen on loopback")?;
    let redirect = format!("http://127.0.0.1:{}/callback", listener.local_addr()?.port());
    let verifier = random_text();
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let (state, nonce) = (random_text(), random_text());
    let mut url = url::Url::parse(&authorize).with_context(|| format!("{authorize} is not a URL"))?;
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", &redirect)
        .append_pair("scope", &scopes.join(" "))
        .append_pair("state", &state)
        .append_pair("nonce", &nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    eprintln!("Sign in at: {url}");
    if open_browser {
        open_in_browser(url.as_str());
    }
    let code = tokio::time::timeout(SIGN_IN_TIMEOUT, wait_for_code(&listener, &state))
        .await
        .context("nobody signed in within 5 minutes")??;

    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", redirect.as_str()),
        ("client_id", client_id),
        ("code_verifier", verifier.as_str()),
    ];
    let response = http
        .post(&token_endpoint)
        .form(&form)
        .send()
        .await
        .with_context(|| format!("cannot reach {token_endpoint}"))?;
    let status = response.status();
    let tokens: Value = response.json().await.unwrap_or_default();
    if !status.is_success() {
        bail!("the identity provider refused the sign-in: {status}: {}", tokens["error_description"]);
    }
    let id_token = tokens["id_token"].as_str().context("the identity provider sent no ID token")?.to_owned();
    // The registry checks the signature; the nonce ties the token to this sign-in, so a
    // token injected into the redirect is not taken for it.
    if claims(&id_token)?["nonce"] != nonce.as_str() {
        bail!("the ID token is not from this sign-in (its nonce differs)");
    }
    Ok(id_token)
}

/// The unverified claims of a JWT.
fn claims(jwt: &str) -> anyhow::Result<Value> {
    let payload = jwt.split('.').nth(1).context("the ID token is not a JWT")?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).context("the ID token is not a JWT")?;
    serde_json::from_slice(&bytes).context("the ID token is not a JWT")
}

/// Answers the browser's requests until one comes back to `/callback` with our
/// `state`; returns its authorization code.
async fn wait_for_code(listener: &tokio::net::TcpListener, state: &str) -> anyhow::Result<String> {
    loop {
        let (mut stream, _) = listener.accept().await?;
        let mut buffer = vec![0u8; 16 * 1024];
        let mut read = 0;
        while read < buffer.len() && !buffer[..read].windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buffer[read..]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
        }
        let request = String::from_utf8_lossy(&buffer[..read]);
        let target = request.lines().next().and_then(|line| line.split(' ').nth(1)).unwrap_or_default();
        let Ok(url) = url::Url::parse(&format!("http://127.0.0.1{target}")) else { continue };
        if url.path() != "/callback" {
            let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
            continue;
        }
        let query = |key: &str| url.query_pairs().find(|(k, _)| k == key).map(|(_, v)| v.into_owned());
        let (body, outcome) = if query("state").as_deref() != Some(state) {
            ("This sign-in is not the one wharf started; start it again.", None)
        } else if let Some(error) = query("error") {
            let reason = query("error_description").unwrap_or_default();
            ("The identity provider refused the sign-in; see the terminal.", Some(Err(format!("{error}: {reason}"))))
        } else if let Some(code) = query("code") {
            ("Signed in to Wharf. You can close this window.", Some(Ok(code)))
        } else {
            ("The identity provider sent no code; see the terminal.", Some(Err("no code in the redirect".into())))
        };
        let page = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(page.as_bytes()).await;
        match outcome {
            Some(Ok(code)) => return Ok(code),
            Some(Err(reason)) => bail!("the sign-in failed: {reason}"),
            None => continue,
        }
    }
}

fn open_in_browser(url: &str) {
    let browser = std::env::var("BROWSER").ok().filter(|b| !b.is_empty());
    let opener = browser.as_deref().unwrap_or(if cfg!(target_os = "macos") { "open" } else { "xdg-open" });
    let started = std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if started.is_err() {
        eprintln!("(could not start {opener}; open the address above yourself)");
    }
}

fn random_text() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

async fn get_json(http: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    let response = http.get(url).send().await.with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    if !status.is_success() {
        bail!("{url} answered {status}");
    }
    response.json().await.with_context(|| format!("{url} did not answer JSON"))
}

/// The token the kubeconfig's user (of `context`, else the current context) presents to
/// the apiserver: a `token`, a `tokenFile`, or what its `exec` credential plugin prints.
/// Kubeconfig files are read as kubectl does: `$KUBECONFIG` (a list, the first file to
/// define something wins) or `~/.kube/config`.
pub fn kubeconfig_token(context: Option<&str>) -> anyhow::Result<String> {
    let files: Vec<PathBuf> = match std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
        Some(list) => std::env::split_paths(&list).filter(|p| !p.as_os_str().is_empty()).collect(),
        None => vec![std::env::var_os("HOME").map(PathBuf::from).context("HOME is not set")?.join(".kube/config")],
    };
    token_in(&files, context)
}

/// The token of `context`'s user in the kubeconfig made of `files`.
fn token_in(files: &[PathBuf], context: Option<&str>) -> anyhow::Result<String> {
    let mut documents = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(file) else { continue };
        let document: Value =
            serde_saphyr::from_str(&text).with_context(|| format!("{} is not a kubeconfig", file.display()))?;
        documents.push((file.clone(), document));
    }
    if documents.is_empty() {
        bail!(
            "no kubeconfig found (looked at {})",
            files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")
        );
    }
    let context_name = match context {
        Some(name) => name.to_owned(),
        None => documents
            .iter()
            .find_map(|(_, d)| d["current-context"].as_str().filter(|c| !c.is_empty()))
            .context("the kubeconfig has no current context; pass --kube-context")?
            .to_owned(),
    };
    let named = |list: &str, name: &str| {
        documents.iter().find_map(|(file, document)| {
            let entries = document[list].as_array()?;
            let entry = entries.iter().find(|entry| entry["name"] == name)?;
            Some((file.clone(), entry.clone()))
        })
    };
    let (_, context) =
        named("contexts", &context_name).with_context(|| format!("no context {context_name} in the kubeconfig"))?;
    let user_name =
        context["context"]["user"].as_str().with_context(|| format!("context {context_name} names no user"))?;
    let (file, user) = named("users", user_name).with_context(|| format!("no user {user_name} in the kubeconfig"))?;
    let user = &user["user"];
    if let Some(token) = user["token"].as_str().filter(|t| !t.is_empty()) {
        return Ok(token.to_owned());
    }
    if let Some(path) = user["tokenFile"].as_str() {
        let path = relative_to(&file, path);
        let token = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        return Ok(token.trim().to_owned());
    }
    if user["exec"].is_object() {
        return exec_token(&file, &user["exec"]);
    }
    if user["client-certificate"].is_string() || user["client-certificate-data"].is_string() {
        bail!(
            "kubeconfig user {user_name} signs in with a client certificate, which the apiserver cannot review for \
             the registry; use --sign-in, or a kubeconfig with a token"
        );
    }
    bail!("kubeconfig user {user_name} has no token, tokenFile or exec plugin")
}

/// Paths in a kubeconfig are relative to its own folder.
fn relative_to(kubeconfig: &Path, path: &str) -> PathBuf {
    let path = PathBuf::from(path);
    match kubeconfig.parent() {
        Some(folder) if path.is_relative() => folder.join(path),
        _ => path,
    }
}

/// Runs a client-go credential plugin as kubectl would and returns the token it prints
/// (an `ExecCredential`'s `status.token`).
fn exec_token(kubeconfig: &Path, exec: &Value) -> anyhow::Result<String> {
    let command = exec["command"].as_str().context("the kubeconfig's exec plugin names no command")?;
    let program = if command.contains('/') { relative_to(kubeconfig, command) } else { PathBuf::from(command) };
    let api_version = exec["apiVersion"].as_str().unwrap_or("client.authentication.k8s.io/v1");
    let mut process = std::process::Command::new(&program);
    process.args(exec["args"].as_array().into_iter().flatten().filter_map(Value::as_str));
    for variable in exec["env"].as_array().into_iter().flatten() {
        if let (Some(name), Some(value)) = (variable["name"].as_str(), variable["value"].as_str()) {
            process.env(name, value);
        }
    }
    let info = serde_json::json!({"apiVersion": api_version, "kind": "ExecCredential", "spec": {"interactive": false}});
    process.env("KUBERNETES_EXEC_INFO", info.to_string()).stdin(std::process::Stdio::null());
    let output = process.output().with_context(|| format!("cannot run the kubeconfig's exec plugin {command}"))?;
    if !output.status.success() {
        bail!("the kubeconfig's exec plugin {command} failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    let credential: Value = serde_json::from_slice(&output.stdout)
        .with_context(|| format!("the exec plugin {command} did not print an ExecCredential"))?;
    match credential["status"]["token"].as_str() {
        Some(token) if !token.is_empty() => Ok(token.to_owned()),
        _ => bail!("the exec plugin {command} printed no token (a client certificate cannot be reviewed)"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tokens_from_each_kind_of_kubeconfig_user() {
        let folder = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = folder.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        write("token-file", "from-a-file\n");
        let plugin = write(
            "plugin.sh",
            "#!/bin/sh\necho \"{\\\"kind\\\":\\\"ExecCredential\\\",\\\"status\\\":{\\\"token\\\":\\\"from-$GREETING\\\"}}\"\n",
        );
        std::fs::set_permissions(&plugin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let first = write(
            "first",
            "apiVersion: v1\nkind: Config\ncurrent-context: with-token\ncontexts:\n\
             - {name: with-token, context: {cluster: c, user: alice}}\n\
             - {name: with-file, context: {cluster: c, user: file-user}}\n\
             - {name: with-plugin, context: {cluster: c, user: plugin-user}}\n\
             - {name: with-cert, context: {cluster: c, user: cert-user}}\n\
             users:\n- {name: alice, user: {token: alices-token}}\n",
        );
        let second = write(
            "second",
            "apiVersion: v1\nkind: Config\ncurrent-context: ignored\nusers:\n\
             - {name: alice, user: {token: shadowed}}\n\
             - {name: file-user, user: {tokenFile: token-file}}\n\
             - {name: plugin-user, user: {exec: {apiVersion: client.authentication.k8s.io/v1, command: ./plugin.sh, env: [{name: GREETING, value: plugin}]}}}\n\
             - {name: cert-user, user: {client-certificate-data: Zm9v}}\n",
        );
        let files = [first, second];
        assert_eq!(token_in(&files, None).unwrap(), "alices-token", "the first file's current context and user win");
        assert_eq!(token_in(&files, Some("with-file")).unwrap(), "from-a-file");
        assert_eq!(token_in(&files, Some("with-plugin")).unwrap(), "from-plugin");
        let certificate = token_in(&files, Some("with-cert")).unwrap_err().to_string();
        assert!(certificate.contains("client certificate"), "{certificate}");
        assert!(token_in(&files, Some("missing")).unwrap_err().to_string().contains("no context missing"));
    }
}
