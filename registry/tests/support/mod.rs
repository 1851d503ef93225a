//! Test harness: runs the real `wharf-registry` binary on a loopback port
//! with its own data folder, mints tokens, and runs real package clients
//! each in its own temporary HOME. Everything it starts stops on drop,
//! also when a test fails.
#![allow(dead_code, clippy::unwrap_used)]

pub mod browser;
pub mod oidc;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const ADMIN_TOKEN: &str = "test-admin-token";

/// The "public registry" of the upstream tests: a second instance whose one Repository,
/// `public`, anyone may read.
pub const PUBLIC_CONFIG: &str = r#"
apiVersion: wharf.dev/v1alpha1
kind: Domain
metadata: {name: public}
spec:
  storage: {filesystem: {path: "{data}"}}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {name: public}
spec:
  domainRef: {name: public}
  access: {read: [{kind: Anonymous}]}
"#;

/// The one-format chain of the client tests: `app` (anonymous read) reads
/// through `[internal, {format}-store]`; the store holds the external
/// connection `public-{format}` to `url`. `rules` are the Domain
/// UpstreamPolicy's (metadataTTL 1s).
pub fn store_chain_config(format: &str, url: &str, rules: &str) -> String {
    format!(
        r#"
apiVersion: wharf.dev/v1alpha1
kind: Domain
metadata: {{name: acme}}
spec:
  storage: {{filesystem: {{path: "{{data}}"}}}}
  externalConnections:
    - {{name: public-{format}, format: {format}, url: "{url}"}}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {{name: app}}
spec:
  domainRef: {{name: acme}}
  upstreams: [{{name: internal}}, {{name: {format}-store}}]
  access: {{read: [{{kind: Anonymous}}]}}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {{name: internal}}
spec:
  domainRef: {{name: acme}}
  allowedDownstreams: [{{namespace: default, name: app}}]
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {{name: {format}-store}}
spec:
  domainRef: {{name: acme}}
  externalConnection: public-{format}
  allowedDownstreams: [{{namespace: default, name: app}}]
---
apiVersion: wharf.dev/v1alpha1
kind: UpstreamPolicy
metadata: {{name: supply-chain}}
spec:
  targetRefs: [{{kind: Domain, name: acme}}]
  metadataTTL: 1s
{rules}"#
    )
}

pub struct TestServer {
    child: Child,
    pub base: String,
    pub port: u16,
    /// The data folder, when the server owns it.
    _data: Option<tempfile::TempDir>,
    logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// What the server wrote to standard output after it began listening: the audit stream.
    stdout: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// A client that trusts the server's certificate when it serves HTTPS.
    pub client: reqwest::Client,
}

impl TestServer {
    /// The embedded default configuration (Domain `default`, Repository `main`).
    pub fn start() -> TestServer {
        Self::start_with(None, &[])
    }

    /// [`TestServer::start_with`] serving HTTPS with `ca`'s certificate.
    pub fn start_tls(config: Option<&str>, ca: &TestCa, extra_args: &[&str]) -> TestServer {
        let mut args = ca.serve_args();
        args.extend(extra_args.iter().map(|arg| (*arg).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut server = Self::start_with(config, &args);
        server.client = ca.client();
        server
    }

    /// A configuration given as YAML text; `{data}` in it is replaced by
    /// the server's data folder.
    pub fn start_with(config: Option<&str>, extra_args: &[&str]) -> TestServer {
        let data = tempfile::tempdir().unwrap();
        let mut server = Self::start_in(data.path(), config, extra_args);
        server._data = Some(data);
        server
    }

    /// Starts on a data folder the caller owns (to restart on it).
    pub fn start_in(data: &Path, config: Option<&str>, extra_args: &[&str]) -> TestServer {
        Self::start_in_env(data, config, extra_args, &[])
    }

    /// [`TestServer::start_in`] with extra environment variables.
    pub fn start_in_env(
        data: &Path,
        config: Option<&str>,
        extra_args: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> TestServer {
        let server = Self::listen_in_env(data, config, extra_args, env);
        server.wait_ready();
        server
    }

    /// [`TestServer::start_in_env`] that returns once the server listens,
    /// ready or not (storage may be unreachable).
    pub fn listen_in_env(
        data: &Path,
        config: Option<&str>,
        extra_args: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> TestServer {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wharf-registry"));
        command.args(["serve", "--listen", "127.0.0.1:0", "--data"]).arg(data.join("store"));
        if let Some(config) = config {
            let path = data.join("wharf.yaml");
            let text = config.replace("{data}", &data.join("store").display().to_string());
            std::fs::write(&path, text).unwrap();
            command.arg("--config").arg(path);
        }
        command
            .args(extra_args)
            .env("WHARF_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("failed to start wharf-registry");
        // Keep the log for assertions and show it with the test's output.
        let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                eprintln!("[wharf-registry] {line}");
                sink.lock().unwrap().push(line);
            }
        });
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(30);
        let base = loop {
            assert!(Instant::now() < deadline, "wharf-registry did not start");
            let line = lines.next().expect("wharf-registry exited before listening").unwrap();
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest.trim().to_owned();
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        let stdout = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = stdout.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let port = base.rsplit(':').next().unwrap().parse().unwrap();
        TestServer { child, base, port, _data: None, logs, stdout, client: reqwest::Client::new() }
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.readyz_status() == Some(200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("wharf-registry never became ready");
    }

    /// `/readyz`'s status, over plain HTTP or (trusting any certificate) HTTPS.
    fn readyz_status(&self) -> Option<u16> {
        let url = format!("{}/readyz", self.base);
        if !url.starts_with("https://") {
            return http_status(&url).ok();
        }
        // From a thread of its own: tests call this from inside their runtime.
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let client = reqwest::Client::builder().tls_danger_accept_invalid_certs(true).build().unwrap();
                Some(client.get(url).send().await.ok()?.status().as_u16())
            })
        })
        .join()
        .unwrap()
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// The audit stream so far: the JSON lines on standard output.
    pub fn audit_lines(&self) -> Vec<serde_json::Value> {
        let lines = self.stdout.lock().unwrap();
        lines.iter().filter_map(|line| serde_json::from_str(line).ok()).collect()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Mints a token for `ci-bot` through the management API.
    pub async fn token(&self, repositories: &[&str], permissions: &[&str]) -> String {
        self.token_for("ci-bot", repositories, permissions).await
    }

    /// Mints a token for `subject` through the management API.
    pub async fn token_for(&self, subject: &str, repositories: &[&str], permissions: &[&str]) -> String {
        let response = self.client
            .post(self.url("/api/v1/auth/token"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&serde_json::json!({"repositories": repositories, "permissions": permissions, "ttlSeconds": 3600, "subject": subject}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let body: serde_json::Value = response.json().await.unwrap();
        body["token"].as_str().unwrap().to_owned()
    }

    pub async fn set_status(
        &self,
        repo: &str,
        format: &str,
        package: &str,
        version: &str,
        status: &str,
        token: &str,
    ) -> reqwest::Response {
        let package = package.replace('/', "%2f");
        self.client
            .put(
                self.url(&format!("/api/v1/repositories/{repo}/packages/{format}/{package}/versions/{version}/status")),
            )
            .bearer_auth(token)
            .json(&serde_json::json!({"status": status}))
            .send()
            .await
            .unwrap()
    }
}

impl TestServer {
    /// The live registry tokens the admin API lists, those of `subject` when given.
    pub async fn live_tokens(&self, subject: Option<&str>) -> serde_json::Value {
        let query = subject.map(|subject| format!("?subject={subject}")).unwrap_or_default();
        let response = self
            .client
            .get(self.url(&format!("/api/v1/auth/tokens{query}")))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// Sends SIGTERM, as Kubernetes does before stopping a pod.
    pub fn terminate(&self) {
        let pid = self.child.id().to_string();
        run_ok(Command::new("kill").args(["-TERM", &pid]));
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "wharf-registry did not exit within {timeout:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP GET from sync code (harness start-up): the status code.
pub fn http_status(url: &str) -> std::io::Result<u16> {
    http_request_status("GET", url)
}

/// A plain HTTP request without a body from sync code: the status code.
pub fn http_request_status(method: &str, url: &str) -> std::io::Result<u16> {
    http_request_with_body(method, url, "")
}

/// A plain HTTP request with a short text body from sync code: the status code.
pub fn http_request_with_body(method: &str, url: &str, body: &str) -> std::io::Result<u16> {
    http_request(method, url, &[], body)
}

/// A plain HTTP request with extra headers and a short text body from sync code: the status code.
pub fn http_request(method: &str, url: &str, headers: &[(&str, &str)], body: &str) -> std::io::Result<u16> {
    use std::io::Read;
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let mut stream = std::net::TcpStream::connect(host)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let length = body.len();
    let extra: String = headers.iter().map(|(name, value)| format!("{name}: {value}\r\n")).collect();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Length: {length}\r\nConnection: close\r\n\r\n{body}"
    )?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    Ok(std::str::from_utf8(&head[9..12]).ok().and_then(|c| c.parse().ok()).unwrap_or(0))
}

/// A scratch folder with its own HOME for one client run.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Workspace {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        Workspace { dir }
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    pub fn write(&self, relative: &str, contents: &str) -> PathBuf {
        let path = self.path(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// A command with HOME, caches and client configuration isolated in
    /// this workspace: nothing from the developer's own setup leaks in.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>, cwd: &str) -> Command {
        let home = self.path("home");
        let cwd = self.path(cwd);
        std::fs::create_dir_all(&cwd).unwrap();
        let mut command = Command::new(program);
        command.current_dir(cwd).stdin(Stdio::null());
        for (key, _) in std::env::vars() {
            let client_setting = ["NPM_", "npm_", "PIP_", "UV_", "TWINE_", "PYTHON", "VIRTUAL_ENV"]
                .iter()
                .any(|prefix| key.starts_with(prefix));
            if client_setting {
                command.env_remove(key);
            }
        }
        command
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .env("npm_config_cache", home.join(".npm"))
            .env("npm_config_userconfig", home.join(".npmrc"))
            .env("npm_config_update_notifier", "false")
            .env("PIP_CONFIG_FILE", "/dev/null")
            .env("PIP_NO_CACHE_DIR", "1")
            .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
            .env("UV_CACHE_DIR", home.join(".cache/uv"))
            .env("UV_NO_CONFIG", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1");
        command
    }
}

/// Every file under `dir`, sorted: what a refused upload must leave unchanged.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// A minimal valid wheel of `project` whose module's `__init__.py` is `init`.
pub fn write_wheel(path: &Path, project: &str, version: &str, init: &str) {
    let module = project.replace('-', "_");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let options = zip::write::SimpleFileOptions::default();
    zip.start_file(format!("{module}/__init__.py"), options).unwrap();
    zip.write_all(init.as_bytes()).unwrap();
    zip.start_file(format!("{module}-{version}.dist-info/METADATA"), options).unwrap();
    write!(zip, "Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n").unwrap();
    zip.start_file(format!("{module}-{version}.dist-info/WHEEL"), options).unwrap();
    write!(zip, "Wheel-Version: 1.0\nGenerator: wharf-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n").unwrap();
    zip.start_file(format!("{module}-{version}.dist-info/RECORD"), options).unwrap();
    zip.finish().unwrap();
}

/// `cargo` isolated in the workspace: its own `CARGO_HOME`, none of the
/// outer `cargo test`'s variables; rustup's toolchains stay where they are.
pub fn isolated_cargo(ws: &Workspace, dir: &str) -> Command {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let rustup_home = std::env::var_os("RUSTUP_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".rustup")));
    let mut command = ws.command(program, dir);
    for (key, _) in std::env::vars_os() {
        let text = key.to_string_lossy();
        if text.starts_with("CARGO") || text.starts_with("RUSTC_") || text == "RUSTFLAGS" {
            command.env_remove(&key);
        }
    }
    command.env("CARGO_HOME", ws.path("home/.cargo")).env("CARGO_TERM_COLOR", "never");
    if let Some(rustup_home) = rustup_home.filter(|p| p.exists()) {
        command.env("RUSTUP_HOME", rustup_home);
    }
    command
}

/// Runs a command, failing the test with its output when it fails.
pub fn run_ok(command: &mut Command) -> Output {
    let output = run(command);
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

pub fn run(command: &mut Command) -> Output {
    command.output().unwrap_or_else(|e| panic!("failed to run {command:?}: {e}"))
}

pub fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// The Python virtualenv with twine, uv and build that `tests/install-clients.sh`
/// prepares (its path in `WHARF_TEST_TOOLS`).
pub fn python_tools() -> PathBuf {
    let dir = std::env::var_os("WHARF_TEST_TOOLS")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/wharf/test-tools")))
        .unwrap();
    let venv = dir.join("venv");
    assert!(
        venv.join("bin/twine").exists() && venv.join("bin/uv").exists(),
        "the Python test clients are missing from {}: run tests/install-clients.sh (tests/run.sh does it)",
        venv.display()
    );
    venv
}

pub fn venv_bin(venv: &Path, tool: &str) -> PathBuf {
    venv.join("bin").join(tool)
}

/// Writes an `.npmrc` pointing at a repository with a token.
/// npm in `dir` of `workspace`, without audit, funding and progress chatter.
pub fn npm(workspace: &Workspace, dir: &str) -> Command {
    let mut command = workspace.command("npm", dir);
    command.args(["--no-audit", "--no-fund", "--loglevel", "warn"]);
    command
}

/// Domain `acme` on a local folder (`{data}`), with Repository `main` anyone may read.
pub const ACME_ON_A_FOLDER: &str = r#"apiVersion: wharf.dev/v1alpha1
kind: Domain
metadata: {name: acme}
spec:
  storage:
    filesystem: {path: "{data}"}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {name: main}
spec:
  domainRef: {name: acme}
  access: {read: [{kind: Anonymous}]}
"#;

/// Domain `acme` on a local folder (`{data}`), with private Repositories `dev` (where CI
/// publishes) and `prod` (what builds read).
pub const DEV_AND_PROD_ON_A_FOLDER: &str = r#"apiVersion: wharf.dev/v1alpha1
kind: Domain
metadata: {name: acme}
spec:
  storage:
    filesystem: {path: "{data}"}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {name: dev}
spec:
  domainRef: {name: acme}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {name: prod}
spec:
  domainRef: {name: acme}
"#;

pub fn write_npmrc(workspace: &Workspace, dir: &str, server: &TestServer, repo: &str, token: Option<&str>) {
    let mut text = format!("registry={}/npm/{repo}/\n", server.base);
    if let Some(token) = token {
        text.push_str(&format!("//127.0.0.1:{}/npm/{repo}/:_authToken={token}\n", server.port));
    }
    std::fs::create_dir_all(workspace.path(dir)).unwrap();
    let mut file = std::fs::File::create(workspace.path(dir).join(".npmrc")).unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

/// A throw-away certificate authority, and the server certificate it issued for
/// `127.0.0.1` and `localhost`, as PEM files: the registry serves them
/// (`--tls-cert`, `--tls-key`) and clients trust the authority (`SSL_CERT_FILE`, npm's
/// `cafile`, `PIP_CERT`, `CARGO_HTTP_CAINFO`).
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// The authority's certificate.
    pub authority: PathBuf,
    pub certificate: PathBuf,
    pub key: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestCa {
    pub fn new() -> TestCa {
        let dir = tempfile::tempdir().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "Wharf test authority");
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let key = rcgen::KeyPair::generate().unwrap();
        let authority = dir.path().join("authority.pem");
        std::fs::write(&authority, params.self_signed(&key).unwrap().pem()).unwrap();
        let ca = TestCa {
            issuer: rcgen::Issuer::new(params, key),
            authority,
            certificate: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
            _dir: dir,
        };
        ca.issue();
        ca
    }

    /// Issues a new server certificate and key over the old files (a renewal); returns the
    /// certificate's DER, to tell which one a server presents.
    pub fn issue(&self) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        // Python's ssl verifies strictly (VERIFY_X509_STRICT): it wants the issuer named.
        params.use_authority_key_identifier_extension = true;
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = params.signed_by(&key, &self.issuer).unwrap();
        std::fs::write(&self.key, key.serialize_pem()).unwrap();
        std::fs::write(&self.certificate, certificate.pem()).unwrap();
        certificate.der().to_vec()
    }

    /// `wharf-registry serve` arguments that serve this certificate, checked every second.
    pub fn serve_args(&self) -> Vec<String> {
        let path = |p: &Path| p.display().to_string();
        ["--tls-cert".to_owned(), path(&self.certificate), "--tls-key".to_owned(), path(&self.key)]
            .into_iter()
            .chain(["--tls-reload-interval".to_owned(), "1s".to_owned()])
            .collect()
    }

    /// An HTTP client that trusts this authority (and only it) and reports the peer's
    /// certificate.
    pub fn client(&self) -> reqwest::Client {
        let authority = reqwest::Certificate::from_pem(&std::fs::read(&self.authority).unwrap()).unwrap();
        reqwest::Client::builder().tls_certs_only([authority]).tls_info(true).build().unwrap()
    }
}

/// A real S3-compatible server on a free loopback port: moto's server
/// application from the venv `tests/install-clients.sh` prepares, run by
/// `tests/s3-server.py`, which serves one request at a time so that moto's
/// conditional writes are atomic, as S3's are. Keeps objects in memory;
/// stopped on drop. moto does not check signatures, so any credentials work.
pub struct S3Server {
    child: Child,
    pub endpoint: String,
}

impl S3Server {
    pub fn start() -> S3Server {
        // Moto takes the port on its command line: find a free one, release it, hand it over.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Self::start_on(port)
    }

    /// Starts on a given loopback port (one a test kept free on purpose).
    pub fn start_on(port: u16) -> S3Server {
        let venv = python_tools();
        assert!(
            venv.join("bin/moto_server").exists(),
            "moto is missing from the test venv: run tests/install-clients.sh"
        );
        let launcher = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/s3-server.py");
        let child = Command::new(venv.join("bin/python"))
            .arg(launcher)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .env_remove("AWS_ENDPOINT_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("failed to start the S3 server");
        let mut server = S3Server { child, endpoint: format!("http://127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_status(&format!("{}/", server.endpoint)).ok() != Some(200) {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("the S3 server exited before answering: {status}");
            }
            assert!(Instant::now() < deadline, "the S3 server did not answer within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    /// From now on, refuses requests signed with access keys moto's IAM does
    /// not know (moto's `reset-auth` with no free unauthenticated requests).
    pub fn require_known_credentials(&self) {
        let status = http_request_with_body("POST", &format!("{}/moto-api/reset-auth", self.endpoint), "0").unwrap();
        assert_eq!(status, 200, "turning on moto's authentication");
    }

    /// Creates a bucket (path-style `PUT /{bucket}`).
    pub fn create_bucket(&self, bucket: &str) {
        let status = http_request_status("PUT", &format!("{}/{bucket}", self.endpoint)).unwrap();
        assert_eq!(status, 200, "creating bucket {bucket}");
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Azure Blob Storage emulator (Azurite, installed by
/// `tests/install-clients.sh`) on a free loopback port, with one account
/// whose key is generated here; it checks SharedKey signatures, so a wrong
/// key is refused. Keeps its data in a temporary folder; stopped on drop.
pub struct AzureEmulator {
    child: Child,
    pub endpoint: String,
    pub account: String,
    /// The account key, base64 as Azure gives it out.
    pub key: String,
    _data: tempfile::TempDir,
}

impl AzureEmulator {
    pub fn start() -> AzureEmulator {
        use base64::Engine;
        let tools = std::env::var_os("WHARF_TEST_TOOLS")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/wharf/test-tools")))
            .unwrap();
        let binary = tools.join("azurite/node_modules/.bin/azurite-blob");
        assert!(binary.exists(), "Azurite is missing from {}: run tests/install-clients.sh", tools.display());
        let account = "wharftest".to_owned();
        let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
        let data = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(binary)
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string(), "--location"])
            .arg(data.path())
            .args(["--silent", "--skipApiVersionCheck", "--disableProductStyleUrl"])
            .env("AZURITE_ACCOUNTS", format!("{account}:{key}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("failed to start Azurite");
        let mut emulator =
            AzureEmulator { child, endpoint: format!("http://127.0.0.1:{port}"), account, key, _data: data };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_status(&format!("{}/{}?comp=list", emulator.endpoint, emulator.account)).is_err() {
            if let Some(status) = emulator.child.try_wait().unwrap() {
                panic!("Azurite exited before answering: {status}");
            }
            assert!(Instant::now() < deadline, "Azurite did not answer within 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        emulator
    }

    /// Creates a container, with a request signed by the account key (SharedKey).
    pub fn create_container(&self, container: &str) {
        use base64::Engine;
        use hmac::{Hmac, Mac};
        let date = chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        let version = "2021-08-06";
        // The verb, eleven empty standard headers, the x-ms- headers, then the resource;
        // path-style URLs carry the account in the path as well.
        let account = &self.account;
        let string_to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{account}/{account}/{container}\nrestype:container"
        );
        let key = base64::engine::general_purpose::STANDARD.decode(&self.key).unwrap();
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&key).unwrap();
        mac.update(string_to_sign.as_bytes());
        let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let authorization = format!("SharedKey {account}:{signature}");
        let url = format!("{}/{account}/{container}?restype=container", self.endpoint);
        let headers = [("x-ms-date", date.as_str()), ("x-ms-version", version), ("Authorization", &authorization)];
        let status = http_request("PUT", &url, &headers, "").unwrap();
        assert_eq!(status, 201, "creating container {container}");
    }
}

impl Drop for AzureEmulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real S3-compatible server: SeaweedFS's all-in-one `weed mini` (master, volume server,
/// filer and S3 gateway; built by `tests/seaweedfs.sh`) on free loopback ports, with one
/// identity it checks signatures against (`wharf-test-key`) and the bucket `bucket`
/// created at start. Keeps its data in a temporary folder; stopped on drop.
pub struct SeaweedS3 {
    child: Child,
    pub endpoint: String,
    _data: tempfile::TempDir,
}

impl SeaweedS3 {
    pub fn start(bucket: &str) -> SeaweedS3 {
        let binary = std::env::var_os("WHARF_SEAWEEDFS_BIN").map(PathBuf::from).unwrap_or_else(|| {
            let cache = std::env::var_os("HOME").map(PathBuf::from).unwrap().join(".cache/wharf/seaweedfs");
            let built = std::fs::read_dir(&cache).ok().and_then(|mut dirs| {
                dirs.find_map(|dir| Some(dir.ok()?.path().join("weed")).filter(|weed| weed.exists()))
            });
            built.expect("SeaweedFS is missing: run tests/seaweedfs.sh (tests/run.sh does it)")
        });
        let data = tempfile::tempdir().unwrap();
        // Every port explicit: its defaults are fixed ports, gRPC ones 10,000 above.
        let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let listeners: Vec<_> = (0..8).map(|_| free()).collect();
        let ports: Vec<String> = listeners.iter().map(|l| l.local_addr().unwrap().port().to_string()).collect();
        drop(listeners);
        let flags = [
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "s3.port",
            "s3.port.grpc",
        ];
        let mut command = Command::new(binary);
        command.args(["mini", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false", "-webdav=false"]);
        command.args(["-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.iam=false"]);
        command.arg(format!("-dir={}", data.path().display()));
        command.arg(format!("-bucket={bucket}"));
        for (flag, port) in flags.iter().zip(&ports) {
            command.arg(format!("-{flag}={port}"));
        }
        let log = std::fs::File::create(data.path().join("weed.log")).unwrap();
        let child = command
            .env("AWS_ACCESS_KEY_ID", "wharf-test-key")
            .env("AWS_SECRET_ACCESS_KEY", "wharf-test-secret")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("failed to start SeaweedFS");
        let mut server = SeaweedS3 { child, endpoint: format!("http://127.0.0.1:{}", ports[6]), _data: data };
        let deadline = Instant::now() + Duration::from_secs(60);
        // Anonymous requests are refused once the gateway is up and the bucket exists.
        while http_status(&format!("{}/{bucket}", server.endpoint)).ok() != Some(403) {
            if let Some(status) = server.child.try_wait().unwrap() {
                let log = std::fs::read_to_string(server._data.path().join("weed.log")).unwrap_or_default();
                panic!("SeaweedFS exited before answering: {status}\n{log}");
            }
            assert!(Instant::now() < deadline, "SeaweedFS's S3 gateway did not answer within 60 s");
            std::thread::sleep(Duration::from_millis(200));
        }
        server
    }
}

impl Drop for SeaweedS3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Maven project template the tests deploy (`tests/install-clients.sh`
/// builds it once to cache every plugin it needs).
pub const LIBRARY_POM: &str = include_str!("../maven/library.pom.xml");

/// The local repository of plugins `tests/install-clients.sh` prepared.
pub fn cached_plugins() -> PathBuf {
    let tools = std::env::var_os("WHARF_TEST_TOOLS")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/wharf/test-tools")))
        .unwrap();
    let repository = tools.join("m2/repository");
    assert!(
        repository.join("org/apache/maven/plugins/maven-deploy-plugin").is_dir(),
        "the Maven plugins are missing from {}: run tests/install-clients.sh (tests/run.sh does it)",
        repository.display()
    );
    repository
}

pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Maven pointed at one Wharf repository only: a mirror of every
/// repository (so nothing reaches the internet), credentials for it, and
/// a profile that lets the mirrored `central` serve SNAPSHOTs too (the
/// built-in `central` refuses them).
pub struct Maven<'a> {
    ws: &'a Workspace,
    url: String,
    /// The settings file given with `-s`; the user's (`~/.m2/settings.xml`) when `None`.
    settings: Option<PathBuf>,
}

impl<'a> Maven<'a> {
    pub fn new(ws: &'a Workspace, server: &TestServer, repo: &str, token: &str) -> Self {
        let url = server.url(&format!("/maven/{repo}/"));
        ws.write(
            "settings.xml",
            &format!(
                r#"<settings>
  <servers>
    <server><id>wharf</id><username>ci</username><password>{token}</password></server>
  </servers>
  <mirrors>
    <mirror><id>wharf</id><mirrorOf>*</mirrorOf><url>{url}</url></mirror>
  </mirrors>
  <profiles>
    <profile>
      <id>wharf</id>
      <repositories>
        <repository>
          <id>central</id><url>{url}</url>
          <snapshots><enabled>true</enabled></snapshots>
        </repository>
      </repositories>
    </profile>
  </profiles>
  <activeProfiles><activeProfile>wharf</activeProfile></activeProfiles>
</settings>
"#
            ),
        );
        // The machine's global settings could name other mirrors.
        ws.write("global-settings.xml", "<settings/>\n");
        Maven { ws, url, settings: Some(ws.path("settings.xml")) }
    }

    /// Maven with the user's own settings (what `wharf login --tool mvn` wrote) for `repo`.
    /// Maven Central is mirrored to a closed port, so a build cannot reach the internet:
    /// the plugins come from the cached local repository.
    pub fn with_user_settings(ws: &'a Workspace, server: &TestServer, repo: &str) -> Self {
        ws.write(
            "global-settings.xml",
            "<settings><mirrors><mirror><id>offline</id><mirrorOf>central</mirrorOf>\
             <url>http://127.0.0.1:9/</url></mirror></mirrors></settings>\n",
        );
        Maven { ws, url: server.url(&format!("/maven/{repo}/")), settings: None }
    }

    /// `mvn` in `dir` with its own local repository `local` (a copy of
    /// the cached plugins, made on first use).
    pub fn command(&self, dir: &str, local: &str) -> Command {
        let local = self.ws.path(local);
        if !local.exists() {
            copy_tree(&cached_plugins(), &local);
        }
        let mut command = self.ws.command("mvn", dir);
        command
            .env("MAVEN_SKIP_RC", "1")
            .env("MAVEN_OPTS", format!("-Duser.home={}", self.ws.path("home").display()))
            .env_remove("MAVEN_ARGS")
            .args(["-B", "-ntp", "-Dstyle.color=never"]);
        if let Some(settings) = &self.settings {
            command.arg("-s").arg(settings);
        }
        command
            .arg("-gs")
            .arg(self.ws.path("global-settings.xml"))
            .arg(format!("-Dmaven.repo.local={}", local.display()));
        command
    }

    pub fn deploy(&self, dir: &str) -> Command {
        let mut command = self.command(dir, "publisher-m2");
        command.arg("deploy").arg(format!("-DaltDeploymentRepository=wharf::{}", self.url));
        command
    }

    /// A jar project with one class `{package}.{class}` whose `name()`
    /// returns `value`.
    pub fn library(&self, dir: &str, artifact: &str, version: &str, class: &str, value: &str) {
        let pom =
            LIBRARY_POM.replace("@GROUP@", "com.acme").replace("@ARTIFACT@", artifact).replace("@VERSION@", version);
        self.ws.write(&format!("{dir}/pom.xml"), &pom);
        self.ws.write(
            &format!("{dir}/src/main/java/com/acme/{artifact}/{class}.java"),
            &format!("package com.acme.{artifact};\n\npublic class {class} {{\n    public static String name() {{ return \"{value}\"; }}\n}}\n"),
        );
    }
}

/// The `wharf` CLI (package `wharf-cli`), which tests/run.sh builds before the tests:
/// cargo builds a binary for its own package's tests only.
pub fn wharf_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(|deps| deps.parent()).unwrap().join("wharf");
    assert!(bin.exists(), "{} is missing: build it with `cargo build -p wharf-cli` (tests/run.sh does)", bin.display());
    bin
}

/// A client `tests/install-clients.sh` installed under the test tools folder, by its path
/// there.
pub fn test_tool(path: &str) -> PathBuf {
    let dir = std::env::var_os("WHARF_TEST_TOOLS")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/wharf/test-tools")))
        .unwrap();
    let tool = dir.join(path);
    assert!(tool.exists(), "{} is missing: run tests/install-clients.sh", tool.display());
    tool
}
