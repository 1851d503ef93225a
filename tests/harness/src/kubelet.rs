//! A stand-in kubelet: runs what a pod template describes as a local process, with its
//! arguments, environment and volumes materialised from the apiserver, under a token of the
//! pod's ServiceAccount. [`Kubelet::run_program`] runs one Deployment when a test asks;
//! [`Kubelet::start_node`] runs whatever Deployments and Jobs appear ([`crate::Node`]). Does
//! I/O (processes, files, the apiserver).
//!
//! What a container sees at its mount paths lives in local folders, and the node rewrites
//! every mount path wherever it occurs — command, arguments, environment values and working
//! directory, at a path boundary — to the folder. Volumes: Secret and ConfigMap (with
//! `items`), emptyDir (a folder per process), projected (`serviceAccountToken` from the
//! TokenRequest API with its audience and expiry, `secret`, `configMap`), and
//! PersistentVolumeClaim (a folder per `namespace/claim`, kept as long as the kubelet, so a
//! process restarted on the same claim sees its data). The ServiceAccount token is mounted
//! at `/var/run/secrets/kubernetes.io/serviceaccount` (`token`, `namespace`, and `ca.crt`,
//! the apiserver's self-signed certificate) unless `automountServiceAccountToken` is false,
//! and `KUBECONFIG` names a kubeconfig with the same token, since the apiserver is on
//! loopback, not at `kubernetes.default.svc`.
//!
//! An image registered as an OCI archive ([`Kubelet::container_image`]) runs as a container
//! under runc instead ([`crate::oci`]): its own root file system, the pod's security context
//! (user, read-only root, capabilities, no privilege escalation, seccomp `RuntimeDefault`),
//! the volumes bind-mounted at their mount paths (given to the pod's user, as `fsGroup`
//! does), and the kubeconfig mounted at `/var/run/wharf-harness`. It shares the node's
//! network, so it listens on loopback like the processes do.
//!
//! Not a kubelet: a registered binary runs without isolation (as this user, on this
//! machine's filesystem and network), a Job's `command[0]` is taken to be installed on this
//! machine's PATH, containers share the host's network, tokens are not refreshed, probes
//! other than readiness at start are not run, and there is no kubelet API, so no
//! `kubectl logs` or `exec` ([`crate::Node::pod_log`] instead). Stopping is the kubelet's:
//! SIGTERM, then SIGKILL after the pod's `terminationGracePeriodSeconds`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Container, EnvVar, KeyToPath, PodSpec, Secret, Volume};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};

use crate::oci::{RuntimeConfig, UnpackedImage};
use crate::{ControlPlane, free_ports};

/// How long a program may take to answer its readiness probe.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where Kubernetes mounts a pod's ServiceAccount token.
pub const SERVICE_ACCOUNT_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The kubelet's default lifetime of a projected token (it asks for an hour).
const DEFAULT_TOKEN_SECONDS: i64 = 3600;

/// Runs what pod templates describe, with registered binaries standing in for images.
#[derive(Clone)]
pub struct Kubelet<'a> {
    pub(crate) plane: &'a ControlPlane,
    pub(crate) images: BTreeMap<String, Image>,
    claims: Arc<ClaimFolders>,
}

/// The program an image name stands for: a binary of this machine, or an unpacked image.
#[derive(Clone, Debug)]
pub(crate) struct Image {
    pub(crate) binary: PathBuf,
    pub(crate) listen: Listen,
    pub(crate) probe: String,
    pub(crate) unpacked: Option<Arc<UnpackedImage>>,
}

/// Where the program of a container listens.
#[derive(Clone, Copy, Debug)]
pub enum Listen {
    /// A command-line flag taking `ADDRESS:PORT` (`--listen`).
    Flag(&'static str),
    /// An environment variable holding `ADDRESS:PORT` (`WHARF_METRICS_ADDR`).
    Env(&'static str),
}

/// A process the kubelet started, under a shell that stops it when our end of its stdin
/// closes (on drop, or when the test process dies), so it cannot outlive the test.
pub(crate) struct Process {
    pub(crate) log: PathBuf,
    stdin: Option<ChildStdin>,
    child: Child,
    /// The runc container the process is, when it is one.
    container: Option<String>,
    _dir: tempfile::TempDir,
}

impl Process {
    /// Asks the process to stop without waiting for it.
    pub(crate) fn signal_stop(&mut self) {
        self.stdin.take();
    }

    /// Its exit code once it has exited (`-1` for a signal).
    pub(crate) fn exit_code(&mut self) -> anyhow::Result<Option<i32>> {
        Ok(self.child.try_wait()?.map(|status| status.code().unwrap_or(-1)))
    }

    /// The last `lines` lines of its stdout and stderr.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.signal_stop();
        let _ = self.child.wait();
        // A container outlives a runc killed before it stopped; it goes with the process.
        if let Some(id) = &self.container {
            crate::oci::delete_container(id);
        }
    }
}

/// A program the kubelet runs; stopped on drop.
pub struct RunningPod {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Its stdout and stderr.
    pub log: PathBuf,
    process: Process,
}

impl RunningPod {
    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        self.process.log_tail(30)
    }
}

/// Folders standing in for PersistentVolumeClaims, one per `namespace/claim`, removed with
/// the last kubelet (or node) that shares them.
struct ClaimFolders {
    root: PathBuf,
}

impl Drop for ClaimFolders {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// What a container's program is.
pub(crate) enum Entrypoint<'b> {
    /// A registered image: its binary, given the container's `args` (its `command` is taken
    /// to be the binary), moved to a free loopback port.
    Image(&'b Image),
    /// The container's `command` (`command[0]` found on this machine's PATH) and `args`.
    Command,
}

/// A container ready to start: its command with everything materialised.
pub(crate) struct Launch {
    pub(crate) command: Command,
    /// The loopback port it listens on, for an image.
    pub(crate) port: Option<u16>,
    /// The port the pod template has it listen on, which Services target.
    pub(crate) container_port: Option<i32>,
    pub(crate) dir: tempfile::TempDir,
    /// The runc container it runs as, when it is one.
    pub(crate) container: Option<String>,
    /// How long it may take to stop after SIGTERM before SIGKILL (the pod's
    /// `terminationGracePeriodSeconds`, 30 s by default as in Kubernetes).
    pub(crate) grace: Duration,
}

impl Launch {
    /// Starts it, its output going to `pod.log` in its folder.
    pub(crate) fn spawn(self) -> anyhow::Result<Process> {
        let log = self.dir.path().join("pod.log");
        let (child, stdin) = spawn_supervised(self.command, &log, self.grace)?;
        Ok(Process { log, stdin, child, container: self.container, _dir: self.dir })
    }
}

impl<'a> Kubelet<'a> {
    /// A kubelet that runs `registry_bin` for the image `wharf-registry` (listening where
    /// `--listen` says, ready when `/readyz` answers 200).
    pub fn new(plane: &'a ControlPlane, registry_bin: impl Into<PathBuf>) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let root = std::env::temp_dir().join(format!(
            "wharf-claims-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        Kubelet { plane, images: BTreeMap::new(), claims: Arc::new(ClaimFolders { root }) }.image(
            "wharf-registry",
            registry_bin,
            Listen::Flag("--listen"),
            "/readyz",
        )
    }

    /// Registers `binary` as the program of images whose repository is `name` (the last path
    /// segment before the tag or digest: `registry.example/acme/wharf-operator:0.1.0` is
    /// `wharf-operator`), listening where `listen` says, ready when `probe` answers 200.
    pub fn image(mut self, name: &str, binary: impl Into<PathBuf>, listen: Listen, probe: &str) -> Self {
        let image = Image { binary: binary.into(), listen, probe: probe.to_owned(), unpacked: None };
        self.images.insert(name.to_owned(), image);
        self
    }

    /// Registers the OCI image `archive` (tagged `tag`) for images whose repository is
    /// `name`: its containers run under runc ([`crate::oci`]).
    pub fn container_image(
        mut self,
        name: &str,
        archive: &Path,
        tag: &str,
        listen: Listen,
        probe: &str,
    ) -> anyhow::Result<Self> {
        let unpacked = UnpackedImage::unpack_to_temporary(archive, tag)?;
        let image =
            Image { binary: PathBuf::new(), listen, probe: probe.to_owned(), unpacked: Some(Arc::new(unpacked)) };
        self.images.insert(name.to_owned(), image);
        Ok(self)
    }

    /// The local folder of PersistentVolumeClaim `namespace/claim`.
    pub fn claim_folder(&self, namespace: &str, claim: &str) -> PathBuf {
        self.claims.root.join(namespace).join(claim)
    }

    /// Runs the registry container of Deployment `namespace/name`, waits for its `/readyz`,
    /// and marks the Deployment available.
    pub async fn run(&self, namespace: &str, name: &str) -> anyhow::Result<RunningPod> {
        let image = self.images.get("wharf-registry").context("no wharf-registry image")?.clone();
        self.run_image(namespace, name, &image).await
    }

    /// Runs the first container of Deployment `namespace/name` with `binary` (its image's
    /// program), moving where it `listen`s to a free loopback port, waits until `probe`
    /// answers 200 there, and marks the Deployment available.
    pub async fn run_program(
        &self,
        namespace: &str,
        name: &str,
        binary: &Path,
        listen: Listen,
        probe: &str,
    ) -> anyhow::Result<RunningPod> {
        let image = Image { binary: binary.to_owned(), listen, probe: probe.to_owned(), unpacked: None };
        self.run_image(namespace, name, &image).await
    }

    async fn run_image(&self, namespace: &str, name: &str, image: &Image) -> anyhow::Result<RunningPod> {
        let client = self.plane.admin_client().await?;
        let deployment = Api::<Deployment>::namespaced(client.clone(), namespace).get(name).await?;
        let pod = deployment.spec.template.spec.as_ref().context("no pod template")?;
        let launch = self.launch(&client, namespace, name, pod, Entrypoint::Image(image), None).await?;
        let port = launch.port.context("an image listens on a port")?;
        let mut process = launch.spawn()?;
        let https = probes_https(pod);
        wait_ready(&mut process, port, &image.probe, https).await?;
        mark_available(&client, namespace, name, deployment.metadata.generation).await?;
        let scheme = if https { "https" } else { "http" };
        Ok(RunningPod { url: format!("{scheme}://127.0.0.1:{port}"), log: process.log.clone(), process })
    }

    /// Materialises the first container of `pod` (of the Deployment or Job `pod_name` in
    /// `namespace`) into a command: volumes, environment, ServiceAccount credentials, paths
    /// rewritten, and with `proxy`, the node's Service proxy in the environment.
    pub(crate) async fn launch(
        &self,
        client: &Client,
        namespace: &str,
        pod_name: &str,
        pod: &PodSpec,
        entrypoint: Entrypoint<'_>,
        proxy: Option<u16>,
    ) -> anyhow::Result<Launch> {
        let container = pod.containers.first().context("no container")?;
        let account = pod.service_account_name.as_deref().unwrap_or("default");
        let dir = tempfile::Builder::new().prefix("wharf-pod-").tempdir()?;
        let token = self.plane.service_account_token_for(namespace, account, None, DEFAULT_TOKEN_SECONDS).await?;
        let mounts = self.materialise_volumes(client, namespace, pod, container, &token, dir.path()).await?;
        let mut environment = environment(client, namespace, pod_name, pod, container).await?;
        if let Entrypoint::Image(Image { unpacked: Some(unpacked), listen, .. }) = entrypoint {
            let pod = Pod { namespace, name: pod_name, spec: pod, container, account, token: &token, proxy };
            return self.launch_container(&pod, unpacked, *listen, mounts, environment, dir);
        }
        let rewrite = |value: &str| rewrite_paths(value, &mounts);

        let mut args: Vec<String> = container.args.iter().flatten().map(|arg| rewrite(arg)).collect();
        let (program, port, container_port) = match entrypoint {
            Entrypoint::Image(image) => {
                let [port] = free_ports()?;
                let original = listen_at(image.listen, &mut args, &mut environment, format!("127.0.0.1:{port}"));
                rebind_metrics(&mut args)?;
                let container_port = original.as_deref().and_then(port_of);
                (image.binary.clone(), Some(port), container_port)
            }
            Entrypoint::Command => {
                let mut command = container.command.iter().flatten().map(|part| rewrite(part));
                let program = command.next().with_context(|| {
                    format!(
                        "container {} has no command: the node runs command[0] from this machine's PATH",
                        container.name
                    )
                })?;
                let rest: Vec<String> = command.collect();
                args.splice(0..0, rest);
                (PathBuf::from(program), None, None)
            }
        };

        let mut command = Command::new(&program);
        command.args(&args).env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
        command.env("HOME", dir.path());
        for (key, value) in &environment {
            command.env(key, rewrite(value));
        }
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, self.plane.kubeconfig_yaml(&format!("{namespace}-{account}"), &token))?;
        command.env("KUBECONFIG", &kubeconfig);
        for (key, value) in proxy_environment(proxy) {
            command.env(key, value);
        }
        // A container starts in its image's working directory; here the pod's folder stands
        // in for it, so relative writes stay inside.
        let working_dir = container.working_dir.as_deref().map(rewrite);
        command.current_dir(working_dir.map_or_else(|| dir.path().to_owned(), PathBuf::from));
        Ok(Launch { command, port, container_port, dir, container: None, grace: grace_period(pod) })
    }

    /// [`Kubelet::launch`] for an unpacked image: `runc run` of a bundle whose configuration
    /// is the image's with the pod's security context, its volumes mounted where the pod
    /// mounts them, and the kubeconfig at `/var/run/wharf-harness`.
    fn launch_container(
        &self,
        pod: &Pod<'_>,
        unpacked: &UnpackedImage,
        listen: Listen,
        mounts: BTreeMap<String, PathBuf>,
        mut environment: Vec<(String, String)>,
        dir: tempfile::TempDir,
    ) -> anyhow::Result<Launch> {
        let container = pod.container;
        let [port] = free_ports()?;
        // The container's command replaces the image's entrypoint, its args the image's
        // command (kept when neither is given); these images' entrypoint is their binary
        // alone, the rest of what umoci derived is their command.
        let image_args: Vec<String> = serde_json::from_value(unpacked.config()?["process"]["args"].clone())?;
        let (entrypoint, image_command) = image_args.split_first().context("the image has no entrypoint")?;
        let mut args = match (&container.command, &container.args) {
            (_, Some(args)) => args.clone(),
            (None, None) => image_command.to_vec(),
            (Some(_), None) => Vec::new(),
        };
        let original = listen_at(listen, &mut args, &mut environment, format!("127.0.0.1:{port}"));
        rebind_metrics(&mut args)?;
        let command = container.command.clone().unwrap_or_else(|| vec![entrypoint.clone()]);
        let mut runtime = RuntimeConfig::new(unpacked, &[command, args].concat())?;
        runtime.secure(pod.spec, container);
        let (uid, gid) = runtime.user();

        // Secret, ConfigMap and projected volumes are read-only whatever the mount says.
        let always_read_only = |name: &str| {
            pod.spec.volumes.iter().flatten().find(|volume| volume.name == name).is_some_and(|volume| {
                volume.secret.is_some() || volume.config_map.is_some() || volume.projected.is_some()
            })
        };
        let read_only: BTreeMap<&str, bool> = container
            .volume_mounts
            .iter()
            .flatten()
            .map(|mount| {
                let read_only = mount.read_only.unwrap_or(false) || always_read_only(&mount.name);
                (mount.mount_path.trim_end_matches('/'), read_only)
            })
            .collect();
        for (path, folder) in &mounts {
            crate::oci::give_to(folder, uid, gid)?;
            let read_only = read_only.get(path.as_str()).copied().unwrap_or(path == SERVICE_ACCOUNT_MOUNT);
            runtime.bind(folder, path, read_only);
        }
        // The apiserver is on loopback, not at kubernetes.default.svc: a kubeconfig says so.
        let harness = dir.path().join("harness");
        std::fs::create_dir_all(&harness)?;
        std::fs::copy(self.plane.ca_certificate(), harness.join("ca.crt"))?;
        let user = format!("{}-{}", pod.namespace, pod.account);
        let kubeconfig =
            self.plane.kubeconfig_yaml_with_ca(&user, pod.token, Path::new(HARNESS_MOUNT).join("ca.crt").as_path());
        std::fs::write(harness.join("kubeconfig"), kubeconfig)?;
        crate::oci::give_to(&harness, uid, gid)?;
        runtime.bind(&harness, HARNESS_MOUNT, true);
        runtime.env("KUBECONFIG", &format!("{HARNESS_MOUNT}/kubeconfig"));
        for (key, value) in environment.iter().map(|(k, v)| (k.as_str(), v.clone())).chain(proxy_environment(pod.proxy))
        {
            runtime.env(key, &value);
        }
        let bundle = dir.path().join("bundle");
        runtime.write(&bundle)?;
        let id = format!("wharf-{}-{}-{port}", pod.namespace, pod.name);
        let mut command = Command::new(crate::oci::tool("runc")?);
        command.args(["run", "--bundle"]).arg(&bundle).arg(&id).current_dir(dir.path());
        let container_port = original.as_deref().and_then(port_of);
        let grace = grace_period(pod.spec);
        Ok(Launch { command, port: Some(port), container_port, dir, container: Some(id), grace })
    }

    /// Materialises the volumes `container` mounts (and the ServiceAccount token unless the
    /// pod opts out) under `dir`, returning the local folder of each mount path.
    async fn materialise_volumes(
        &self,
        client: &Client,
        namespace: &str,
        pod: &PodSpec,
        container: &Container,
        token: &str,
        dir: &Path,
    ) -> anyhow::Result<BTreeMap<String, PathBuf>> {
        let account = pod.service_account_name.as_deref().unwrap_or("default");
        let mut folders: BTreeMap<String, PathBuf> = BTreeMap::new();
        let mut mounts = BTreeMap::new();
        for mount in container.volume_mounts.iter().flatten() {
            let folder = match folders.get(&mount.name) {
                Some(folder) => folder.clone(),
                None => {
                    let volume = pod
                        .volumes
                        .iter()
                        .flatten()
                        .find(|volume| volume.name == mount.name)
                        .with_context(|| format!("volume {} is mounted but not declared", mount.name))?;
                    let local = dir.join("volumes").join(&volume.name);
                    let folder = self
                        .materialise_volume(client, namespace, account, volume, local)
                        .await
                        .with_context(|| format!("volume {}", volume.name))?;
                    folders.insert(mount.name.clone(), folder.clone());
                    folder
                }
            };
            let folder = match mount.sub_path.as_deref().filter(|sub_path| !sub_path.is_empty()) {
                Some(sub_path) => {
                    let folder = folder.join(relative_path(sub_path)?);
                    if !folder.exists() {
                        std::fs::create_dir_all(&folder)?;
                    }
                    folder
                }
                None => folder,
            };
            mounts.insert(mount.mount_path.trim_end_matches('/').to_owned(), folder);
        }
        if pod.automount_service_account_token != Some(false) && !mounts.contains_key(SERVICE_ACCOUNT_MOUNT) {
            let local = dir.join("volumes/kube-api-access");
            let ca = std::fs::read(self.plane.ca_certificate()).unwrap_or_default();
            write_files(
                &local,
                [
                    ("token".to_owned(), token.as_bytes().to_vec()),
                    ("namespace".to_owned(), namespace.as_bytes().to_vec()),
                    ("ca.crt".to_owned(), ca),
                ],
            )?;
            mounts.insert(SERVICE_ACCOUNT_MOUNT.to_owned(), local);
        }
        Ok(mounts)
    }

    /// Materialises one volume, returning its folder: `local`, or the claim's folder.
    async fn materialise_volume(
        &self,
        client: &Client,
        namespace: &str,
        account: &str,
        volume: &Volume,
        local: PathBuf,
    ) -> anyhow::Result<PathBuf> {
        if let Some(secret) = &volume.secret {
            let name = secret.secret_name.as_deref().context("secret volume without secretName")?;
            let files = secret_files(client, namespace, name, secret.items.as_deref(), secret.optional).await?;
            write_files(&local, files)?;
        } else if let Some(config_map) = &volume.config_map {
            let files =
                config_map_files(client, namespace, &config_map.name, config_map.items.as_deref(), config_map.optional)
                    .await?;
            write_files(&local, files)?;
        } else if volume.empty_dir.is_some() {
            std::fs::create_dir_all(&local)?;
        } else if let Some(claim) = &volume.persistent_volume_claim {
            let folder = self.claim_folder(namespace, &claim.claim_name);
            std::fs::create_dir_all(&folder)?;
            return Ok(folder);
        } else if let Some(projected) = &volume.projected {
            std::fs::create_dir_all(&local)?;
            for source in projected.sources.iter().flatten() {
                let files = if let Some(token) = &source.service_account_token {
                    let issued = self
                        .plane
                        .service_account_token_for(
                            namespace,
                            account,
                            token.audience.as_deref(),
                            token.expiration_seconds.unwrap_or(DEFAULT_TOKEN_SECONDS),
                        )
                        .await?;
                    vec![(token.path.clone(), issued.into_bytes())]
                } else if let Some(secret) = &source.secret {
                    secret_files(client, namespace, &secret.name, secret.items.as_deref(), secret.optional).await?
                } else if let Some(config_map) = &source.config_map {
                    config_map_files(
                        client,
                        namespace,
                        &config_map.name,
                        config_map.items.as_deref(),
                        config_map.optional,
                    )
                    .await?
                } else {
                    bail!("only serviceAccountToken, secret and configMap projections are supported")
                };
                write_files(&local, files)?;
            }
        } else {
            bail!("only secret, configMap, emptyDir, projected and persistentVolumeClaim volumes are supported");
        }
        Ok(local)
    }
}

/// The files of Secret `namespace/name` (those `items` select, at their paths); none when it
/// is missing and `optional`.
async fn secret_files(
    client: &Client,
    namespace: &str,
    name: &str,
    items: Option<&[KeyToPath]>,
    optional: Option<bool>,
) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let stored = Api::<Secret>::namespaced(client.clone(), namespace).get_opt(name).await?;
    let Some(stored) = stored else {
        return if optional == Some(true) { Ok(Vec::new()) } else { bail!("Secret {namespace}/{name} not found") };
    };
    let data = stored.data.unwrap_or_default().into_iter().map(|(key, value)| (key, value.0)).collect();
    select_items(data, items, &format!("Secret {namespace}/{name}"))
}

/// The files of ConfigMap `namespace/name`, as [`secret_files`].
async fn config_map_files(
    client: &Client,
    namespace: &str,
    name: &str,
    items: Option<&[KeyToPath]>,
    optional: Option<bool>,
) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let stored = Api::<ConfigMap>::namespaced(client.clone(), namespace).get_opt(name).await?;
    let Some(stored) = stored else {
        return if optional == Some(true) { Ok(Vec::new()) } else { bail!("ConfigMap {namespace}/{name} not found") };
    };
    let mut data: BTreeMap<String, Vec<u8>> =
        stored.data.unwrap_or_default().into_iter().map(|(key, value)| (key, value.into_bytes())).collect();
    data.extend(stored.binary_data.unwrap_or_default().into_iter().map(|(key, value)| (key, value.0)));
    select_items(data, items, &format!("ConfigMap {namespace}/{name}"))
}

/// Every key as a file of its name, or only the keys `items` name, at their paths.
fn select_items(
    mut data: BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    source: &str,
) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    match items {
        None => Ok(data.into_iter().collect()),
        Some(items) => items
            .iter()
            .map(|item| {
                let bytes = data.remove(&item.key).with_context(|| format!("{source} has no key {}", item.key))?;
                Ok((item.path.clone(), bytes))
            })
            .collect(),
    }
}

/// Reports Deployment `namespace/name` available at `generation` (its current one when
/// `None`), as the Deployment controller does once its pods are ready.
pub async fn mark_available(
    client: &Client,
    namespace: &str,
    name: &str,
    generation: Option<i64>,
) -> anyhow::Result<()> {
    let deployments = Api::<Deployment>::namespaced(client.clone(), namespace);
    let deployment = deployments.get(name).await?;
    let replicas = deployment.spec.replicas.unwrap_or(1);
    let status = serde_json::json!({"status": {
        "observedGeneration": generation.or(deployment.metadata.generation),
        "replicas": replicas, "updatedReplicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas,
        "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
                        "message": "Deployment has minimum availability."}],
    }});
    deployments.patch_status(name, &PatchParams::default(), &Patch::Merge(status)).await?;
    Ok(())
}

impl ControlPlane {
    /// Reports Deployment `namespace/name` available (see [`mark_available`]).
    pub async fn mark_available(&self, namespace: &str, name: &str) -> anyhow::Result<()> {
        mark_available(&self.admin_client().await?, namespace, name, None).await
    }
}

/// Where a container finds the harness's kubeconfig and the apiserver's certificate.
const HARNESS_MOUNT: &str = "/var/run/wharf-harness";

/// The pod a container belongs to, as [`Kubelet::launch_container`] needs it.
struct Pod<'b> {
    namespace: &'b str,
    name: &'b str,
    spec: &'b PodSpec,
    container: &'b Container,
    account: &'b str,
    token: &'b str,
    /// The node's Service proxy.
    proxy: Option<u16>,
}

/// Moves where a program listens to `address`, by flag or environment variable; returns
/// where it listened before.
fn listen_at(
    listen: Listen,
    args: &mut Vec<String>,
    environment: &mut Vec<(String, String)>,
    address: String,
) -> Option<String> {
    match listen {
        Listen::Flag(flag) => set_flag(args, flag, &address),
        Listen::Env(variable) => match environment.iter_mut().find(|(key, _)| key == variable) {
            Some((_, value)) => Some(std::mem::replace(value, address)),
            None => {
                environment.push((variable.to_owned(), address));
                None
            }
        },
    }
}

/// The node's Service proxy for npm, pip and curl (they read either case); the apiserver
/// stays direct.
fn proxy_environment(proxy: Option<u16>) -> Vec<(&'static str, String)> {
    let Some(proxy) = proxy else { return Vec::new() };
    let url = format!("http://127.0.0.1:{proxy}");
    let direct = "127.0.0.1,localhost".to_owned();
    vec![("http_proxy", url.clone()), ("HTTP_PROXY", url), ("no_proxy", direct.clone()), ("NO_PROXY", direct)]
}

/// Resolves a container's environment as the kubelet does.
async fn environment(
    client: &Client,
    namespace: &str,
    pod_name: &str,
    pod: &PodSpec,
    container: &Container,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut resolved = Vec::new();
    for EnvVar { name, value, value_from } in container.env.iter().flatten() {
        let value = match (value, value_from) {
            (Some(value), _) => value.clone(),
            (None, Some(source)) => {
                if let Some(selector) = &source.secret_key_ref {
                    let secret = Api::<Secret>::namespaced(client.clone(), namespace).get(&selector.name).await?;
                    let bytes = secret.data.unwrap_or_default().remove(&selector.key);
                    String::from_utf8(bytes.with_context(|| format!("{name}: no key {}", selector.key))?.0)?
                } else if let Some(selector) = &source.config_map_key_ref {
                    let map = Api::<ConfigMap>::namespaced(client.clone(), namespace).get(&selector.name).await?;
                    map.data
                        .unwrap_or_default()
                        .remove(&selector.key)
                        .with_context(|| format!("{name}: no key {}", selector.key))?
                } else if let Some(field) = &source.field_ref {
                    match field.field_path.as_str() {
                        "metadata.namespace" => namespace.to_owned(),
                        "metadata.name" => format!("{pod_name}-harness"),
                        "spec.serviceAccountName" => pod.service_account_name.clone().unwrap_or("default".to_owned()),
                        "status.podIP" | "status.hostIP" => "127.0.0.1".to_owned(),
                        other => bail!("{name}: field {other} is not supported"),
                    }
                } else {
                    bail!("{name}: only secretKeyRef, configMapKeyRef and fieldRef are supported")
                }
            }
            (None, None) => String::new(),
        };
        resolved.push((name.clone(), value));
    }
    Ok(resolved)
}

/// A relative path without `..`, as volume item paths and subPaths must be.
fn relative_path(path: &str) -> anyhow::Result<&Path> {
    let relative = Path::new(path);
    if relative.is_absolute() || relative.components().any(|part| matches!(part, std::path::Component::ParentDir)) {
        bail!("path {path:?} must be relative and stay inside its volume");
    }
    Ok(relative)
}

fn write_files(folder: &Path, files: impl IntoIterator<Item = (String, Vec<u8>)>) -> anyhow::Result<()> {
    std::fs::create_dir_all(folder)?;
    for (path, bytes) in files {
        let file = folder.join(relative_path(&path)?);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(file, bytes)?;
    }
    Ok(())
}

/// Replaces every mount path in `value` with its local folder, wherever it stands at a path
/// boundary: after the start or a character that cannot end a path segment, and before the
/// end, `/`, or such a character. The longest mount wins, so a mount inside another mount's
/// path is its own folder.
pub(crate) fn rewrite_paths(value: &str, mounts: &BTreeMap<String, PathBuf>) -> String {
    let mut by_length: Vec<(&String, &PathBuf)> = mounts.iter().filter(|(mount, _)| mount.len() > 1).collect();
    by_length.sort_by_key(|(mount, _)| std::cmp::Reverse(mount.len()));
    let mut rewritten = String::with_capacity(value.len());
    let mut rest = value;
    let mut previous: Option<char> = None;
    while let Some(next) = rest.chars().next() {
        let at_boundary = previous.is_none_or(|character| !is_path_character(character) && character != '/');
        let matched = (next == '/' && at_boundary)
            .then(|| {
                by_length.iter().find(|(mount, _)| {
                    rest.strip_prefix(mount.as_str()).is_some_and(|after| {
                        after.chars().next().is_none_or(|character| character == '/' || !is_path_character(character))
                    })
                })
            })
            .flatten();
        match matched {
            Some((mount, local)) => {
                rewritten.push_str(&local.display().to_string());
                rest = &rest[mount.len()..];
                previous = mount.chars().last();
            }
            None => {
                rewritten.push(next);
                rest = &rest[next.len_utf8()..];
                previous = Some(next);
            }
        }
    }
    rewritten
}

/// Characters of a path segment (so `/workfoo` does not start with the mount `/work`).
fn is_path_character(character: char) -> bool {
    character.is_alphanumeric() || matches!(character, '.' | '-' | '_' | '~' | '+' | '@' | '%' | ',')
}

/// The port of `ADDRESS:PORT`.
fn port_of(address: &str) -> Option<i32> {
    address.rsplit_once(':').and_then(|(_, port)| port.parse().ok())
}

/// Sets `flag`'s value, in `--flag value` or `--flag=value` form, adding it when absent;
/// returns the value it replaced.
/// Moves a `--metrics-listen` to a free loopback port: pods share this node's network, so
/// two registries cannot both take the port their pods name.
fn rebind_metrics(args: &mut Vec<String>) -> anyhow::Result<()> {
    const FLAG: &str = "--metrics-listen";
    if args.iter().any(|arg| arg == FLAG || arg.starts_with(&format!("{FLAG}="))) {
        let [port] = free_ports()?;
        set_flag(args, FLAG, &format!("127.0.0.1:{port}"));
    }
    Ok(())
}

fn set_flag(args: &mut Vec<String>, flag: &str, value: &str) -> Option<String> {
    if let Some(index) = args.iter().position(|arg| arg == flag)
        && index + 1 < args.len()
    {
        Some(std::mem::replace(&mut args[index + 1], value.to_owned()))
    } else if let Some(arg) = args.iter_mut().find(|arg| arg.starts_with(&format!("{flag}="))) {
        let previous = arg[flag.len() + 1..].to_owned();
        *arg = format!("{flag}={value}");
        Some(previous)
    } else {
        args.extend([flag.to_owned(), value.to_owned()]);
        None
    }
}

/// The pod's grace period after SIGTERM.
fn grace_period(pod: &PodSpec) -> Duration {
    Duration::from_secs(pod.termination_grace_period_seconds.unwrap_or(30).max(0) as u64)
}

/// Starts `command` under a shell that stops it when our end of its stdin closes, so it
/// cannot outlive the test process: SIGTERM, then SIGKILL once `grace` has passed.
pub(crate) fn spawn_supervised(
    command: Command,
    log: &Path,
    grace: Duration,
) -> anyhow::Result<(Child, Option<ChildStdin>)> {
    let log_file = std::fs::File::create(log)?;
    let mut supervisor = Command::new("sh");
    let tenths = (grace.as_millis() / 100).to_string();
    supervisor
        .args([
            "-c",
            "grace=$1; shift; exec 3<&0; \"$@\" </dev/null 3<&- & child=$!; \
             (cat <&3 >/dev/null; kill $child 2>/dev/null; \
              i=0; while kill -0 $child 2>/dev/null && [ $i -lt $grace ]; do sleep 0.1; i=$((i+1)); done; \
              kill -9 $child 2>/dev/null) & watcher=$!; \
             wait $child; status=$?; kill $watcher 2>/dev/null; exit $status",
            "sh",
        ])
        .arg(tenths)
        .arg(command.get_program())
        .args(command.get_args())
        .stdin(Stdio::piped())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    if let Some(dir) = command.get_current_dir() {
        supervisor.current_dir(dir);
    }
    supervisor.env_clear();
    for (key, value) in command.get_envs() {
        if let Some(value) = value {
            supervisor.env(key, value);
        }
    }
    let mut child = supervisor.spawn().with_context(|| format!("failed to start {:?}", command.get_program()))?;
    let stdin = child.stdin.take();
    Ok((child, stdin))
}

/// Waits until `probe` answers 200 on `port`, failing if the process exits first.
pub(crate) async fn wait_ready(process: &mut Process, port: u16, probe: &str, https: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        if let Some(code) = process.exit_code()? {
            bail!("the program exited ({code}):\n{}", process.log_tail(30));
        }
        let status = if https { https_status(port, probe) } else { http_status(port, probe) };
        if status.is_ok_and(|status| status == 200) {
            return Ok(());
        }
        if started.elapsed() > READY_TIMEOUT {
            bail!("{probe} did not answer 200 within {READY_TIMEOUT:?}:\n{}", process.log_tail(30));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The status code of a plain GET on loopback.
/// The status code of a GET on loopback over HTTPS, the certificate unchecked (as the
/// kubelet's HTTPS probes do), by curl.
pub fn https_status(port: u16, path: &str) -> anyhow::Result<u16> {
    let output = Command::new("curl")
        .args(["--insecure", "--silent", "--max-time", "5", "--output", "/dev/null", "--write-out", "%{http_code}"])
        .arg(format!("https://127.0.0.1:{port}{path}"))
        .output()
        .context("failed to run curl for an HTTPS probe")?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().parse()?)
}

/// Whether a pod's first container probes readiness over HTTPS (`httpGet.scheme: HTTPS`).
pub fn probes_https(pod: &PodSpec) -> bool {
    pod.containers
        .first()
        .and_then(|container| container.readiness_probe.as_ref())
        .and_then(|probe| probe.http_get.as_ref())
        .and_then(|get| get.scheme.as_deref())
        == Some("HTTPS")
}

pub fn http_status(port: u16, path: &str) -> anyhow::Result<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    let line = std::str::from_utf8(&head)?;
    Ok(line.get(9..12).context("no status line")?.parse()?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn mounts() -> BTreeMap<String, PathBuf> {
        BTreeMap::from([
            ("/var/run/wharf/secrets".to_owned(), PathBuf::from("/tmp/pod/secrets")),
            ("/tmp".to_owned(), PathBuf::from("/tmp/pod/tmp")),
            ("/tmp/cache".to_owned(), PathBuf::from("/tmp/pod/cache")),
            ("/work".to_owned(), PathBuf::from("/tmp/pod/work")),
        ])
    }

    #[test]
    fn rewrites_mounted_paths_in_both_flag_forms() {
        let mounts = mounts();
        assert_eq!(rewrite_paths("/var/run/wharf/secrets", &mounts), "/tmp/pod/secrets");
        assert_eq!(rewrite_paths("/var/run/wharf/secrets/key/key", &mounts), "/tmp/pod/secrets/key/key");
        assert_eq!(rewrite_paths("--data=/tmp/data", &mounts), "--data=/tmp/pod/tmp/data");
        assert_eq!(rewrite_paths("/tmpfoo", &mounts), "/tmpfoo");
        assert_eq!(rewrite_paths("serve", &mounts), "serve");
    }

    #[test]
    fn rewrites_mount_paths_anywhere_in_a_script_at_path_boundaries() {
        let mounts = mounts();
        assert_eq!(
            rewrite_paths("cd /work && curl -H \"Authorization: Bearer $(cat /work/token)\" x", &mounts),
            "cd /tmp/pod/work && curl -H \"Authorization: Bearer $(cat /tmp/pod/work/token)\" x"
        );
        assert_eq!(rewrite_paths("ls '/work' \"/work\" (/work) /work;", &mounts), {
            "ls '/tmp/pod/work' \"/tmp/pod/work\" (/tmp/pod/work) /tmp/pod/work;"
        });
        assert_eq!(rewrite_paths("PATH=/bin:/work/bin", &mounts), "PATH=/bin:/tmp/pod/work/bin");
        // Not a mount: a longer segment, or the mount path inside another path.
        assert_eq!(rewrite_paths("/workfoo /work.d /home/work $HOME/work", &mounts), {
            "/workfoo /work.d /home/work $HOME/work"
        });
        // The longest mount wins, and a rewritten folder is not rewritten again.
        assert_eq!(rewrite_paths("/tmp/cache/x /tmp/y", &mounts), "/tmp/pod/cache/x /tmp/pod/tmp/y");
        assert_eq!(rewrite_paths("/work/", &mounts), "/tmp/pod/work/");
    }

    #[test]
    fn sets_flags_in_either_form_or_appends_them() {
        let mut args = vec!["serve".to_owned(), "--listen".to_owned(), "0.0.0.0:8080".to_owned()];
        assert_eq!(set_flag(&mut args, "--listen", "127.0.0.1:1").as_deref(), Some("0.0.0.0:8080"));
        assert_eq!(args[2], "127.0.0.1:1");
        let mut args = vec!["--listen=0.0.0.0:8080".to_owned()];
        assert_eq!(set_flag(&mut args, "--listen", "127.0.0.1:1").as_deref(), Some("0.0.0.0:8080"));
        assert_eq!(args, ["--listen=127.0.0.1:1"]);
        let mut args = vec!["serve".to_owned()];
        assert_eq!(set_flag(&mut args, "--listen", "127.0.0.1:1"), None);
        assert_eq!(args, ["serve", "--listen", "127.0.0.1:1"]);
        assert_eq!(port_of("0.0.0.0:8080"), Some(8080));
    }

    #[test]
    fn item_paths_stay_inside_their_volume() {
        assert!(relative_path("a/b").is_ok());
        assert!(relative_path("../a").is_err());
        assert!(relative_path("/etc/passwd").is_err());
        let data = BTreeMap::from([("key".to_owned(), b"v".to_vec())]);
        let item = KeyToPath { key: "key".to_owned(), path: "dir/file".to_owned(), ..KeyToPath::default() };
        assert_eq!(select_items(data.clone(), Some(&[item]), "s").unwrap(), [("dir/file".to_owned(), b"v".to_vec())]);
        let missing = KeyToPath { key: "other".to_owned(), path: "x".to_owned(), ..KeyToPath::default() };
        assert!(select_items(data, Some(&[missing]), "Secret a/b").unwrap_err().to_string().contains("no key other"));
    }
}
