//! An OpenID provider for the tests: Ory Hydra (built by `tests/oidc-provider.sh`) on
//! loopback with its in-memory store, the test playing its login and consent apps through
//! the admin API. Stopped on drop.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// An Ory Hydra on loopback with its in-memory store; stopped on drop.
pub struct Provider {
    child: Child,
    pub issuer: String,
    admin: String,
    http: reqwest::Client,
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub const REDIRECT: &str = "http://127.0.0.1:9/callback";

impl Provider {
    /// Starts one whose ID tokens live `id_token_seconds`.
    pub async fn start(id_token_seconds: u64) -> Provider {
        let binary = std::env::var_os("WHARF_HYDRA_BIN").map(PathBuf::from).unwrap_or_else(|| {
            let cache =
                std::env::var_os("HOME").map(PathBuf::from).unwrap().join(".cache/wharf/oidc/hydra-v2.3.0/hydra");
            assert!(cache.exists(), "Ory Hydra is missing: run tests/oidc-provider.sh (tests/run.sh does it)");
            cache
        });
        let (public, admin) = (free_port(), free_port());
        let issuer = format!("http://127.0.0.1:{public}");
        let log = std::env::temp_dir().join(format!("wharf-hydra-{public}.log"));
        let child = Command::new(binary)
            .args(["serve", "all", "--dev", "--sqa-opt-out"])
            .env("DSN", "memory")
            .env("URLS_SELF_ISSUER", &issuer)
            // The test plays the login and consent apps through the admin API.
            .env("URLS_LOGIN", "http://127.0.0.1:9/login")
            .env("URLS_CONSENT", "http://127.0.0.1:9/consent")
            .env("SECRETS_SYSTEM", "a system secret for the wharf tests")
            .env("SERVE_PUBLIC_HOST", "127.0.0.1")
            .env("SERVE_PUBLIC_PORT", public.to_string())
            .env("SERVE_ADMIN_HOST", "127.0.0.1")
            .env("SERVE_ADMIN_PORT", admin.to_string())
            .env("TTL_ID_TOKEN", format!("{id_token_seconds}s"))
            .env("LOG_LEVEL", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        let provider = Provider { child, issuer, admin: format!("http://127.0.0.1:{admin}"), http };
        let started = Instant::now();
        loop {
            let ready = provider.http.get(format!("{}/health/ready", provider.admin)).send().await;
            if ready.is_ok_and(|r| r.status() == 200) {
                break;
            }
            let output = || std::fs::read_to_string(&log).unwrap_or_default();
            assert!(started.elapsed() < Duration::from_secs(60), "Hydra did not become ready:\n{}", output());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        provider
    }

    pub async fn admin_json(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let response = self.http.request(method, format!("{}{path}", self.admin)).json(&body).send().await.unwrap();
        assert!(response.status().is_success(), "{path}: {}", response.status());
        response.json().await.unwrap()
    }

    pub async fn register_client(&self, client_id: &str) {
        let client = json!({
            "client_id": client_id, "client_secret": "a client secret for the tests",
            "grant_types": ["authorization_code"], "response_types": ["code"], "scope": "openid",
            "redirect_uris": [REDIRECT], "token_endpoint_auth_method": "client_secret_post",
        });
        self.admin_json(reqwest::Method::POST, "/admin/clients", client).await;
    }

    /// A new signing key for ID tokens: the provider signs with it from now on.
    pub async fn rotate_keys(&self) -> String {
        let body = json!({"alg": "RS256", "kid": "rotated", "use": "sig"});
        let set = self.admin_json(reqwest::Method::POST, "/admin/keys/hydra.openid.id-token", body).await;
        set["keys"][0]["kid"].as_str().unwrap().to_owned()
    }

    /// A public client (no secret; PKCE) sending people back to `redirect_uris`: as
    /// `wharf login --sign-in` signs in with, the loopback redirect (any port, as RFC 8252
    /// allows native apps); as the web interface does, its callback.
    pub async fn register_public_client(&self, client_id: &str, redirect_uris: &[&str]) {
        let client = json!({
            "client_id": client_id, "grant_types": ["authorization_code"], "response_types": ["code"],
            "scope": "openid email profile", "redirect_uris": redirect_uris,
            "token_endpoint_auth_method": "none",
        });
        self.admin_json(reqwest::Method::POST, "/admin/clients", client).await;
    }

    /// Plays the browser and the provider's login and consent apps for an
    /// authorization request at `start`: signs in as `subject`, consents to
    /// `scopes` adding `claims` to the ID token, and returns the address the
    /// provider then sends the browser to (the client's redirect, with a code).
    pub async fn authorize(&self, start: String, subject: &str, scopes: &[&str], claims: Value) -> String {
        let mut cookies: HashMap<String, String> = HashMap::new();
        let get = |url: String, cookies: &HashMap<String, String>| {
            let cookie = cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
            self.http.get(url).header("Cookie", cookie).send()
        };
        let follow = |response: &reqwest::Response, cookies: &mut HashMap<String, String>| {
            for value in response.headers().get_all("set-cookie") {
                let pair = value.to_str().unwrap().split(';').next().unwrap();
                let (name, value) = pair.split_once('=').unwrap();
                cookies.insert(name.to_owned(), value.to_owned());
            }
            response.headers()["location"].to_str().unwrap().to_owned()
        };
        let response = get(start, &cookies).await.unwrap();
        let login = follow(&response, &mut cookies);
        let challenge = query(&login, "login_challenge");
        let accepted = self
            .admin_json(
                reqwest::Method::PUT,
                &format!("/admin/oauth2/auth/requests/login/accept?login_challenge={challenge}"),
                json!({"subject": subject}),
            )
            .await;
        let response = get(accepted["redirect_to"].as_str().unwrap().to_owned(), &cookies).await.unwrap();
        let consent = follow(&response, &mut cookies);
        let challenge = query(&consent, "consent_challenge");
        let accepted = self
            .admin_json(
                reqwest::Method::PUT,
                &format!("/admin/oauth2/auth/requests/consent/accept?consent_challenge={challenge}"),
                json!({"grant_scope": scopes, "session": {"id_token": claims}}),
            )
            .await;
        let response = get(accepted["redirect_to"].as_str().unwrap().to_owned(), &cookies).await.unwrap();
        follow(&response, &mut cookies)
    }

    /// An ID token for `client_id`, through the authorization code flow a
    /// CI system's token service runs: login as `subject`, consent adding
    /// `claims` to the ID token, the code exchanged at the token endpoint.
    pub async fn id_token(&self, client_id: &str, subject: &str, claims: Value) -> String {
        let start = format!(
            "{}/oauth2/auth?client_id={client_id}&response_type=code&scope=openid&redirect_uri={REDIRECT}&state=state-0123456789&nonce=nonce-0123456789",
            self.issuer
        );
        let callback = self.authorize(start, subject, &["openid"], claims).await;
        let code = query(&callback, "code");
        let encode =
            |text: &str| percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string();
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
            ("client_id", client_id),
            ("client_secret", "a client secret for the tests"),
        ]
        .iter()
        .map(|(key, value)| format!("{key}={}", encode(value)))
        .collect::<Vec<_>>()
        .join("&");
        let tokens: Value = self
            .http
            .post(format!("{}/oauth2/token", self.issuer))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        tokens["id_token"].as_str().unwrap().to_owned()
    }
}

/// The value of `key` in `url`'s query.
pub fn query(url: &str, key: &str) -> String {
    let query = url.split_once('?').unwrap().1;
    let value = query.split('&').find_map(|pair| pair.strip_prefix(&format!("{key}="))).unwrap();
    percent_encoding::percent_decode_str(value).decode_utf8().unwrap().into_owned()
}

/// Domain `acme` on a local folder trusting `issuer` for people (user names from their
/// verified `email`, groups from `groups`, both prefixed `idp:`; the public client
/// `client_id`), and Repository `repository`, which the group `developers` reads and
/// alice@example.com publishes to.
pub fn people_config(issuer: &str, client_id: &str, repository: &str) -> String {
    format!(
        r#"
apiVersion: wharf.dev/v1alpha1
kind: Domain
metadata: {{name: acme}}
spec:
  storage: {{filesystem: {{path: "{{data}}"}}}}
  tokens:
    trustedIssuers:
      - issuer: "{issuer}"
        audiences: [{client_id}]
        people: {{usernameClaim: email, groupsClaim: groups, prefix: "idp:", clientID: {client_id}}}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {{name: {repository}}}
spec:
  domainRef: {{name: acme}}
  access:
    read: [{{kind: Group, name: "idp:developers"}}]
    publish: [{{kind: User, name: "idp:alice@example.com"}}]
"#
    )
}
