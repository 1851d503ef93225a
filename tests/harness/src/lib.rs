//! A real control plane for tests: kube-apiserver and etcd, built from their Go modules by
//! `tests/control-plane.sh`, started on loopback with RBAC and ServiceAccount tokens — what
//! envtest does for Go operators. Does I/O (processes, files, network).
//!
//! There is no kube-controller-manager, scheduler, kubelet or cluster DNS: no garbage
//! collection and no Pods. [`Kubelet`] stands in for the kubelet: it runs the program a
//! Deployment describes when a test asks ([`Kubelet::run_program`]), or, started as a
//! [`Node`], runs every Deployment and Job that appears in the background, writes their
//! status as the Deployment and Job controllers would, and stands in for Services and
//! cluster DNS with an HTTP proxy. Its processes are local, unisolated programs (see the
//! `kubelet` and `node` modules for what they see and what is left out).
//!
//! One control plane serves every test of a test binary ([`ControlPlane::shared`]); tests
//! keep apart by namespace. Its processes run under a small shell supervisor that stops them
//! and removes their folder when the test binary's end of a pipe closes — at exit, on panic,
//! or when the test process is killed — so nothing outlives the tests.

mod kubelet;
mod node;
pub mod oci;

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersionKind;
use kube::{Client, Config};
use tokio::sync::OnceCell;

pub use kubelet::{Kubelet, Listen, RunningPod, SERVICE_ACCOUNT_MOUNT};
pub use node::Node;

/// Field manager of what tests apply, distinct from the operator's.
pub const TEST_FIELD_MANAGER: &str = "wharf-test";

/// How long the apiserver may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// People the apiserver knows by a static token (as a cluster's OIDC or webhook
/// authenticator would know them), each with their groups: `(user name, groups)`.
pub const PEOPLE: [(&str, &[&str]); 2] = [("alice", &["platform-team"]), ("bob", &["developers"])];

/// A running kube-apiserver with its etcd.
pub struct ControlPlane {
    server: String,
    /// The folder of the binaries (kubectl among them).
    bin: PathBuf,
    admin_token: String,
    /// The token of each of [`PEOPLE`], in that order.
    people_tokens: Vec<String>,
    dir: PathBuf,
    /// Closing this pipe stops the supervisor's processes.
    supervisor_stdin: Mutex<Option<ChildStdin>>,
    supervisor: Mutex<Child>,
}

static SHARED: OnceCell<ControlPlane> = OnceCell::const_new();

impl ControlPlane {
    /// The control plane of this test binary, started by the first test that asks.
    pub async fn shared() -> &'static ControlPlane {
        match SHARED.get_or_try_init(ControlPlane::start).await {
            Ok(plane) => plane,
            Err(error) => panic!("the control plane did not start: {error:#}"),
        }
    }

    /// Starts etcd and kube-apiserver in a fresh folder and waits until the apiserver is
    /// ready.
    pub async fn start() -> anyhow::Result<ControlPlane> {
        let bin = binaries()?;
        let dir = tempfile::Builder::new().prefix("wharf-control-plane-").tempdir()?.keep();
        let admin_token = random_token();
        let people_tokens: Vec<String> = PEOPLE.iter().map(|_| random_token()).collect();
        let mut tokens = format!("{admin_token},wharf-test-admin,wharf-test-admin,\"system:masters\"\n");
        for ((name, groups), token) in PEOPLE.iter().zip(&people_tokens) {
            tokens.push_str(&format!("{token},{name},{name}-uid,\"{}\"\n", groups.join(",")));
        }
        std::fs::write(dir.join("tokens.csv"), tokens)?;
        run(Command::new("openssl").args(["genrsa", "-out"]).arg(dir.join("sa.key")).arg("2048"))?;
        run(Command::new("openssl")
            .args(["rsa", "-pubout", "-in"])
            .arg(dir.join("sa.key"))
            .arg("-out")
            .arg(dir.join("sa.pub")))?;

        let [etcd_client, etcd_peer, apiserver] = free_ports()?;
        let etcd = format!(
            "{etcd} --name wharf-test --data-dir {dir}/etcd --listen-client-urls http://127.0.0.1:{etcd_client} \
             --advertise-client-urls http://127.0.0.1:{etcd_client} --listen-peer-urls http://127.0.0.1:{etcd_peer} \
             --initial-advertise-peer-urls http://127.0.0.1:{etcd_peer} \
             --initial-cluster wharf-test=http://127.0.0.1:{etcd_peer} --unsafe-no-fsync --log-level warn",
            etcd = bin.join("etcd").display(),
            dir = dir.display(),
        );
        let apiserver_command = format!(
            "{apiserver_bin} --etcd-servers http://127.0.0.1:{etcd_client} --bind-address 127.0.0.1 \
             --advertise-address 127.0.0.1 --secure-port {apiserver} --endpoint-reconciler-type none \
             --cert-dir {dir}/certs --authorization-mode RBAC --anonymous-auth=false \
             --token-auth-file {dir}/tokens.csv --service-account-issuer https://kubernetes.default.svc \
             --service-account-key-file {dir}/sa.pub --service-account-signing-key-file {dir}/sa.key \
             --service-cluster-ip-range 10.96.0.0/16 --disable-admission-plugins ServiceAccount",
            apiserver_bin = bin.join("kube-apiserver").display(),
            dir = dir.display(),
        );
        // The supervisor reads its stdin until it closes, then stops both processes — the
        // apiserver first, and by SIGKILL after 5 s, since it can hang in its graceful
        // shutdown once etcd is gone — and, unless the folder is kept for a post-mortem,
        // removes it. Their output goes to files, never to the test's pipes.
        let keep = std::env::var_os("WHARF_KEEP_CONTROL_PLANE").is_some();
        let script = format!(
            "{etcd} >{dir}/etcd.log 2>&1 </dev/null & etcd=$!\n\
             {apiserver_command} >{dir}/apiserver.log 2>&1 </dev/null & apiserver=$!\n\
             echo \"$etcd $apiserver\" >{dir}/pids\n\
             cat >/dev/null\n\
             stop() {{ kill $1 2>/dev/null; i=0; while kill -0 $1 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done; kill -9 $1 2>/dev/null; }}\n\
             stop $apiserver; stop $etcd; wait\n\
             {cleanup}",
            dir = dir.display(),
            cleanup = if keep { String::new() } else { format!("rm -rf {}", dir.display()) },
        );
        let mut supervisor = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("failed to start the control plane's supervisor")?;
        let supervisor_stdin = supervisor.stdin.take();
        let plane = ControlPlane {
            server: format!("https://127.0.0.1:{apiserver}"),
            bin,
            admin_token,
            people_tokens,
            dir,
            supervisor_stdin: Mutex::new(supervisor_stdin),
            supervisor: Mutex::new(supervisor),
        };
        plane.wait_ready().await
    }

    async fn wait_ready(self) -> anyhow::Result<ControlPlane> {
        let started = Instant::now();
        let cert = self.dir.join("certs/apiserver.crt");
        loop {
            if let Some(status) = self.supervisor.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.try_wait()? {
                bail!("the control plane exited ({status}):\n{}", self.log_tail());
            }
            // The apiserver writes its self-signed certificate before it serves.
            if std::fs::read_to_string(&cert).is_ok_and(|pem| pem.contains("END CERTIFICATE"))
                && let Ok(client) = self.admin_client().await
                && let Ok(body) = client.request_text(get("/readyz")?).await
                && body.trim() == "ok"
            {
                return Ok(self);
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!("kube-apiserver not ready after {READY_TIMEOUT:?}:\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The last lines of both logs, for failure messages.
    pub fn log_tail(&self) -> String {
        ["etcd.log", "apiserver.log"]
            .iter()
            .map(|name| {
                let text = std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                format!("--- {name}\n{}", lines[lines.len().saturating_sub(20)..].join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The apiserver's URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// A kubeconfig for a bearer token against this apiserver, trusting the certificate the
    /// apiserver generated for itself.
    pub fn kubeconfig_yaml(&self, user: &str, token: &str) -> String {
        self.kubeconfig_yaml_with_ca(user, token, &self.ca_certificate())
    }

    /// [`ControlPlane::kubeconfig_yaml`] naming the apiserver's certificate at `ca` (where a
    /// container sees it).
    pub fn kubeconfig_yaml_with_ca(&self, user: &str, token: &str, ca: &Path) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: wharf-test\n  cluster:\n    server: {server}\n    \
             certificate-authority: {ca}\nusers:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: {user}\n  \
             context:\n    cluster: wharf-test\n    user: {user}\ncurrent-context: {user}\n",
            server = self.server,
            ca = ca.display(),
        )
    }

    /// `kubectl` of the same Kubernetes version, as cluster-admin.
    pub fn kubectl(&self) -> anyhow::Result<Command> {
        let mut command = Command::new(self.bin.join("kubectl"));
        command.env("KUBECONFIG", self.admin_kubeconfig()?);
        Ok(command)
    }

    /// The cluster-admin kubeconfig, written to a file for child processes.
    pub fn admin_kubeconfig(&self) -> anyhow::Result<PathBuf> {
        self.write_kubeconfig("admin", &self.admin_token)
    }

    /// A kubeconfig for `name`, one of [`PEOPLE`], holding their token: what a person's
    /// own kubeconfig holds. They may do nothing in the cluster unless a test grants it.
    pub fn person_kubeconfig(&self, name: &str) -> anyhow::Result<PathBuf> {
        let position = PEOPLE.iter().position(|(person, _)| *person == name).context("not one of PEOPLE")?;
        self.write_kubeconfig(&format!("person-{name}"), &self.people_tokens[position])
    }

    /// A client with cluster-admin rights (the `system:masters` group).
    pub async fn admin_client(&self) -> anyhow::Result<Client> {
        client_for(&self.kubeconfig_yaml("admin", &self.admin_token)).await
    }

    /// A kubeconfig for the ServiceAccount `namespace/name` (created if missing, with its
    /// namespace), holding a token from the TokenRequest API: what a pod running as that
    /// ServiceAccount presents, so RBAC applies exactly as in a cluster.
    pub async fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> anyhow::Result<PathBuf> {
        let token = self.service_account_token(namespace, name).await?;
        self.write_kubeconfig(&format!("{namespace}-{name}"), &token)
    }

    /// A client acting as the ServiceAccount `namespace/name`.
    pub async fn service_account_client(&self, namespace: &str, name: &str) -> anyhow::Result<Client> {
        let token = self.service_account_token(namespace, name).await?;
        client_for(&self.kubeconfig_yaml(&format!("{namespace}-{name}"), &token)).await
    }

    /// A TokenRequest token of the ServiceAccount `namespace/name` (created if missing), for
    /// the apiserver's own audience, valid for a day.
    pub async fn service_account_token(&self, namespace: &str, name: &str) -> anyhow::Result<String> {
        self.service_account_token_for(namespace, name, None, 24 * 3600).await
    }

    /// A TokenRequest token of the ServiceAccount `namespace/name` (created, with its
    /// namespace, if missing) for `audience` (the apiserver's own when `None`), valid for
    /// `expiration_seconds`: what the kubelet writes into a projected `serviceAccountToken`.
    pub async fn service_account_token_for(
        &self,
        namespace: &str,
        name: &str,
        audience: Option<&str>,
        expiration_seconds: i64,
    ) -> anyhow::Result<String> {
        let client = self.admin_client().await?;
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
        // Created only when missing: applying it would take away fields a chart set on it.
        if accounts.get_opt(name).await?.is_none() {
            ensure_namespace(&client, namespace).await?;
            let account = serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}});
            accounts.patch(name, &PatchParams::apply(TEST_FIELD_MANAGER), &Patch::Apply(account)).await?;
        }
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: audience.map(|audience| vec![audience.to_owned()]),
                expiration_seconds: Some(expiration_seconds),
                ..Default::default()
            }),
            ..Default::default()
        };
        let issued = accounts
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .with_context(|| format!("TokenRequest for ServiceAccount {namespace}/{name}"))?;
        issued.status.and_then(|status| status.token).context("TokenRequest returned no token")
    }

    /// The apiserver's self-signed serving certificate, which is also the CA that verifies
    /// it: a pod's `ca.crt`.
    pub fn ca_certificate(&self) -> PathBuf {
        self.dir.join("certs/apiserver.crt")
    }

    fn write_kubeconfig(&self, user: &str, token: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.join(format!("kubeconfig-{user}"));
        let mut file = std::fs::File::create(&path)?;
        file.write_all(self.kubeconfig_yaml(user, token).as_bytes())?;
        Ok(path)
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // Closing the pipe is the supervisor's signal to stop both processes.
        if let Ok(mut stdin) = self.supervisor_stdin.lock() {
            stdin.take();
        }
        if let Ok(mut supervisor) = self.supervisor.lock() {
            let _ = supervisor.wait();
        }
    }
}

/// Builds a client from kubeconfig YAML.
pub async fn client_for(kubeconfig_yaml: &str) -> anyhow::Result<Client> {
    let kubeconfig = Kubeconfig::from_yaml(kubeconfig_yaml)?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// Creates `namespace` unless it exists.
pub async fn ensure_namespace(client: &Client, namespace: &str) -> anyhow::Result<()> {
    apply_yaml(client, &format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {namespace}}}\n"), None).await?;
    Ok(())
}

/// Applies the checked-in CustomResourceDefinitions (`crds/`, what users install) and waits
/// until the apiserver serves their kinds: a CRD is served a moment after it is created.
pub async fn install_crds(client: &Client) -> anyhow::Result<()> {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../crds");
    for entry in std::fs::read_dir(&folder).with_context(|| format!("reading {}", folder.display()))? {
        apply_yaml(client, &std::fs::read_to_string(entry?.path())?, None).await?;
    }
    eventually(Duration::from_secs(30), "the Wharf kinds are served", || async {
        let request = get("/apis/wharf.dev/v1alpha1/domains?limit=1").map_err(|e| e.to_string())?;
        client.request_text(request).await.map(|_| ()).map_err(|e| e.to_string())
    })
    .await
}

/// Installs third-party CustomResourceDefinitions by file name (`cert-manager.io_certificates.yaml`)
/// from the folder `tests/third-party-crds.sh` gathers from their projects' Go modules
/// (`WHARF_THIRD_PARTY_CRDS`, or the script's cache), and waits until each kind is served.
pub async fn install_third_party_crds(client: &Client, files: &[&str]) -> anyhow::Result<()> {
    let folder = cached_build("WHARF_THIRD_PARTY_CRDS", "third-party-crds.sh")?;
    for file in files {
        let path = folder.join(file);
        let yaml = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        for crd in apply_yaml(client, &yaml, None).await? {
            let spec = crd.data.get("spec").context("a CRD without spec")?;
            let group = spec["group"].as_str().context("a CRD without spec.group")?.to_owned();
            let plural = spec["names"]["plural"].as_str().context("a CRD without spec.names.plural")?.to_owned();
            let version = spec["versions"]
                .as_array()
                .and_then(|versions| versions.iter().find(|version| version["served"] == true))
                .and_then(|version| version["name"].as_str())
                .context("a CRD without a served version")?
                .to_owned();
            eventually(Duration::from_secs(30), &format!("{plural}.{group} is served"), || async {
                let request = get(&format!("/apis/{group}/{version}/{plural}?limit=1")).map_err(|e| e.to_string())?;
                client.request_text(request).await.map(|_| ()).map_err(|e| e.to_string())
            })
            .await?;
        }
    }
    Ok(())
}

/// Server-side applies every document of `yaml` (field manager [`TEST_FIELD_MANAGER`],
/// forcing conflicts), in `default_namespace` where a namespaced document names none.
/// Returns the applied objects as the apiserver stored them.
pub async fn apply_yaml(
    client: &Client,
    yaml: &str,
    default_namespace: Option<&str>,
) -> anyhow::Result<Vec<DynamicObject>> {
    let mut applied = Vec::new();
    for document in serde_saphyr::from_multiple::<serde_json::Value>(yaml).context("invalid YAML")? {
        if document.is_null() {
            continue;
        }
        let object: DynamicObject = serde_json::from_value(document.clone()).context("not a Kubernetes object")?;
        let api = dynamic_api(client, &object, default_namespace).await?;
        let name = object.metadata.name.clone().context("an object without metadata.name")?;
        let params = PatchParams::apply(TEST_FIELD_MANAGER).force();
        applied.push(
            api.patch(&name, &params, &Patch::Apply(document)).await.with_context(|| format!("applying {name}"))?,
        );
    }
    Ok(applied)
}

/// The API of `object`'s kind, in its namespace (or `default_namespace`) when namespaced.
pub async fn dynamic_api(
    client: &Client,
    object: &DynamicObject,
    default_namespace: Option<&str>,
) -> anyhow::Result<Api<DynamicObject>> {
    let types = object.types.as_ref().context("an object without apiVersion and kind")?;
    let gvk = GroupVersionKind::try_from(types)?;
    let (resource, capabilities) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .with_context(|| format!("the apiserver does not serve {}/{}", types.api_version, types.kind))?;
    Ok(if capabilities.scope == kube::discovery::Scope::Namespaced {
        let namespace = object.metadata.namespace.as_deref().or(default_namespace).unwrap_or("default");
        Api::namespaced_with(client.clone(), namespace, &resource)
    } else {
        Api::all_with(client.clone(), &resource)
    })
}

/// Polls `check` every 200 ms until it returns `Some`, or fails after `timeout` with the last
/// state `check` described.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    loop {
        match check().await {
            Ok(value) => return Ok(value),
            Err(state) if started.elapsed() > timeout => bail!("{what}: not within {timeout:?}; last: {state}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The folder with `kube-apiserver` and `etcd`: `WHARF_CONTROL_PLANE_BIN`, or what
/// `tests/control-plane.sh` builds (at once when cached).
fn binaries() -> anyhow::Result<PathBuf> {
    cached_build("WHARF_CONTROL_PLANE_BIN", "control-plane.sh")
}

/// helm: `WHARF_HELM_BIN`, or what `tests/helm.sh` builds from its Go module (at once when
/// cached).
pub fn helm_binary() -> anyhow::Result<PathBuf> {
    cached_build("WHARF_HELM_BIN", "helm.sh")
}

/// promtool: `WHARF_PROMTOOL_BIN`, or what `tests/promtool.sh` builds from the Prometheus
/// module (at once when cached).
pub fn promtool_binary() -> anyhow::Result<PathBuf> {
    cached_build("WHARF_PROMTOOL_BIN", "promtool.sh")
}

/// What the environment variable `variable` names, or the path the build script
/// `tests/{script}` prints last.
fn cached_build(variable: &str, script: &str) -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(variable) {
        return Ok(PathBuf::from(path));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(script);
    let output = Command::new("bash").arg(&script).stderr(Stdio::inherit()).output()?;
    if !output.status.success() {
        bail!("{} failed ({}); or set {variable}", script.display(), output.status);
    }
    let stdout = String::from_utf8(output.stdout)?;
    let last = stdout.lines().last().with_context(|| format!("{} printed nothing", script.display()))?;
    Ok(PathBuf::from(last.trim()))
}

/// A binary of this workspace, next to the running test binary (`cargo test --workspace`
/// builds them all).
pub fn workspace_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let binary = exe.parent().and_then(|deps| deps.parent()).context("no target folder")?.join(name);
    if !binary.exists() {
        bail!("{} is missing: build it with `cargo build --workspace`", binary.display());
    }
    Ok(binary)
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let output = command.stdout(Stdio::null()).output().with_context(|| format!("failed to run {command:?}"))?;
    if !output.status.success() {
        bail!("{command:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(())
}

/// Distinct free loopback ports (bound, read, released).
pub fn free_ports<const N: usize>() -> anyhow::Result<[u16; N]> {
    let listeners = (0..N).map(|_| TcpListener::bind("127.0.0.1:0")).collect::<Result<Vec<_>, _>>()?;
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

fn random_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut token = String::new();
    for _ in 0..4 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos(),
        );
        token.push_str(&format!("{:016x}", hasher.finish()));
    }
    token
}

fn get(path: &str) -> anyhow::Result<http::Request<Vec<u8>>> {
    Ok(http::Request::get(path).body(Vec::new())?)
}
