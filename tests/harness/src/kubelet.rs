//! Plays the kubelet for the registry a Deployment describes: runs its container's arguments
//! with the locally built `wharf-registry`, with its environment and volumes materialised from
//! the apiserver, under a token of the pod's ServiceAccount, then reports the Deployment
//! available the way the Deployment controller would. Does I/O.
//!
//! Volumes: Secret, ConfigMap and emptyDir volumes become local folders, and every argument or
//! environment value under their mount path is rewritten to match. A PersistentVolumeClaim is
//! taken to be mounted on this "node" at its mount path as written, so a test that wants a
//! registry on filesystem storage gives its Domain a path on this machine.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Container, EnvVar, Secret};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};

use crate::{ControlPlane, free_ports};

/// How long a registry may take to answer `/readyz`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs what Deployments describe, with a given `wharf-registry` binary.
pub struct Kubelet<'a> {
    plane: &'a ControlPlane,
    registry_bin: PathBuf,
}

/// Where the program of a container listens.
#[derive(Clone, Copy, Debug)]
pub enum Listen {
    /// A command-line flag taking `ADDRESS:PORT` (`--listen`).
    Flag(&'static str),
    /// An environment variable holding `ADDRESS:PORT` (`WHARF_METRICS_ADDR`).
    Env(&'static str),
}

/// A program the kubelet runs; stopped on drop.
pub struct RunningPod {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Its stdout and stderr.
    pub log: PathBuf,
    stdin: Option<ChildStdin>,
    child: Child,
    _dir: tempfile::TempDir,
}

impl RunningPod {
    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for RunningPod {
    fn drop(&mut self) {
        self.stdin.take();
        let _ = self.child.wait();
    }
}

impl<'a> Kubelet<'a> {
    /// A kubelet that runs `registry_bin` for the registry container.
    pub fn new(plane: &'a ControlPlane, registry_bin: impl Into<PathBuf>) -> Self {
        Kubelet { plane, registry_bin: registry_bin.into() }
    }

    /// Runs the registry container of Deployment `namespace/name`, waits for its `/readyz`,
    /// and marks the Deployment available.
    pub async fn run(&self, namespace: &str, name: &str) -> anyhow::Result<RunningPod> {
        self.run_program(namespace, name, &self.registry_bin.clone(), Listen::Flag("--listen"), "/readyz").await
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
        let client = self.plane.admin_client().await?;
        let deployment = Api::<Deployment>::namespaced(client.clone(), namespace).get(name).await?;
        let pod = deployment.spec.template.spec.as_ref().context("no pod template")?;
        let container = pod.containers.first().context("no container")?;
        let dir = tempfile::Builder::new().prefix("wharf-pod-").tempdir()?;

        let mut mounts = BTreeMap::new();
        for mount in container.volume_mounts.iter().flatten() {
            let volume = pod
                .volumes
                .iter()
                .flatten()
                .find(|volume| volume.name == mount.name)
                .with_context(|| format!("volume {} is mounted but not declared", mount.name))?;
            let local = dir.path().join("volumes").join(&volume.name);
            if let Some(secret) = &volume.secret {
                let secret_name = secret.secret_name.as_deref().context("secret volume without secretName")?;
                let stored = Api::<Secret>::namespaced(client.clone(), namespace).get(secret_name).await?;
                write_files(&local, stored.data.unwrap_or_default().into_iter().map(|(key, value)| (key, value.0)))?;
            } else if let Some(config_map) = &volume.config_map {
                let stored = Api::<ConfigMap>::namespaced(client.clone(), namespace).get(&config_map.name).await?;
                write_files(
                    &local,
                    stored.data.unwrap_or_default().into_iter().map(|(key, value)| (key, value.into_bytes())),
                )?;
            } else if volume.empty_dir.is_some() {
                std::fs::create_dir_all(&local)?;
            } else if volume.persistent_volume_claim.is_some() {
                continue;
            } else {
                bail!(
                    "volume {}: only secret, configMap, emptyDir and persistentVolumeClaim volumes are supported",
                    volume.name
                );
            }
            mounts.insert(mount.mount_path.clone(), local);
        }
        let rewrite = |value: &str| rewrite_paths(value, &mounts);

        let [port] = free_ports()?;
        let address = format!("127.0.0.1:{port}");
        let mut args: Vec<String> = container.args.iter().flatten().map(|arg| rewrite(arg)).collect();
        if let Listen::Flag(flag) = listen {
            set_flag(&mut args, flag, &address);
        }
        let mut command = Command::new(binary);
        command.args(&args).env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default());
        for (key, value) in environment(&client, namespace, name, container).await? {
            let value =
                if matches!(listen, Listen::Env(variable) if variable == key) { address.clone() } else { value };
            command.env(key, rewrite(&value));
        }
        let account = pod.service_account_name.as_deref().unwrap_or("default");
        command.env("KUBECONFIG", self.plane.service_account_kubeconfig(namespace, account).await?);
        command.env("HOME", dir.path());

        let log = dir.path().join("registry.log");
        let (child, stdin) = spawn_supervised(command, &log)?;
        let mut running = RunningPod { url: format!("http://127.0.0.1:{port}"), log, stdin, child, _dir: dir };
        wait_ready(&mut running, port, probe).await?;
        mark_available(&client, namespace, name).await?;
        Ok(running)
    }
}

/// Reports Deployment `namespace/name` available at its current generation, as the
/// Deployment controller does once its pods are ready.
pub async fn mark_available(client: &Client, namespace: &str, name: &str) -> anyhow::Result<()> {
    let deployments = Api::<Deployment>::namespaced(client.clone(), namespace);
    let deployment = deployments.get(name).await?;
    let replicas = deployment.spec.replicas.unwrap_or(1);
    let status = serde_json::json!({"status": {
        "observedGeneration": deployment.metadata.generation,
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
        mark_available(&self.admin_client().await?, namespace, name).await
    }
}

/// Resolves a container's environment as the kubelet does.
async fn environment(
    client: &Client,
    namespace: &str,
    pod_name: &str,
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

fn write_files(folder: &Path, files: impl Iterator<Item = (String, Vec<u8>)>) -> anyhow::Result<()> {
    std::fs::create_dir_all(folder)?;
    for (key, bytes) in files {
        if key.contains('/') || key == ".." {
            bail!("key {key:?} is not a file name");
        }
        std::fs::write(folder.join(key), bytes)?;
    }
    Ok(())
}

/// Replaces a mount path at the start of `value` (alone, before `/`, or after `=`) with its
/// local folder.
fn rewrite_paths(value: &str, mounts: &BTreeMap<String, PathBuf>) -> String {
    let (prefix, path) = value.split_once('=').map_or(("", value), |(flag, path)| (flag, path));
    for (mount, local) in mounts.iter().rev() {
        if let Some(rest) = path.strip_prefix(mount.as_str())
            && (rest.is_empty() || rest.starts_with('/'))
        {
            let rewritten = format!("{}{rest}", local.display());
            return if prefix.is_empty() { rewritten } else { format!("{prefix}={rewritten}") };
        }
    }
    value.to_owned()
}

/// Sets `flag`'s value, in `--flag value` or `--flag=value` form, adding it when absent.
fn set_flag(args: &mut Vec<String>, flag: &str, value: &str) {
    if let Some(index) = args.iter().position(|arg| arg == flag)
        && index + 1 < args.len()
    {
        args[index + 1] = value.to_owned();
    } else if let Some(arg) = args.iter_mut().find(|arg| arg.starts_with(&format!("{flag}="))) {
        *arg = format!("{flag}={value}");
    } else {
        args.extend([flag.to_owned(), value.to_owned()]);
    }
}

/// Starts `command` under a shell that stops it when our end of its stdin closes, so it
/// cannot outlive the test process.
pub(crate) fn spawn_supervised(command: Command, log: &Path) -> anyhow::Result<(Child, Option<ChildStdin>)> {
    let log_file = std::fs::File::create(log)?;
    let mut supervisor = Command::new("sh");
    supervisor
        .args([
            "-c",
            "\"$@\" </dev/null & child=$!; cat >/dev/null; kill $child 2>/dev/null; \
             i=0; while kill -0 $child 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done; \
             kill -9 $child 2>/dev/null; wait $child",
            "sh",
        ])
        .arg(command.get_program())
        .args(command.get_args())
        .stdin(Stdio::piped())
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
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

async fn wait_ready(running: &mut RunningPod, port: u16, probe: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        if let Some(status) = running.child.try_wait()? {
            bail!("the program exited ({status}):\n{}", running.log_tail());
        }
        if http_status(port, probe).is_ok_and(|status| status == 200) {
            return Ok(());
        }
        if started.elapsed() > READY_TIMEOUT {
            bail!("{probe} did not answer 200 within {READY_TIMEOUT:?}:\n{}", running.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The status code of a plain GET on loopback.
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

    #[test]
    fn rewrites_mounted_paths_in_both_flag_forms() {
        let mounts = BTreeMap::from([
            ("/var/run/wharf/secrets".to_owned(), PathBuf::from("/tmp/pod/secrets")),
            ("/tmp".to_owned(), PathBuf::from("/tmp/pod/tmp")),
        ]);
        assert_eq!(rewrite_paths("/var/run/wharf/secrets", &mounts), "/tmp/pod/secrets");
        assert_eq!(rewrite_paths("/var/run/wharf/secrets/key/key", &mounts), "/tmp/pod/secrets/key/key");
        assert_eq!(rewrite_paths("--data=/tmp/data", &mounts), "--data=/tmp/pod/tmp/data");
        assert_eq!(rewrite_paths("/tmpfoo", &mounts), "/tmpfoo");
        assert_eq!(rewrite_paths("serve", &mounts), "serve");
    }

    #[test]
    fn sets_flags_in_either_form_or_appends_them() {
        let mut args = vec!["serve".to_owned(), "--listen".to_owned(), "0.0.0.0:8080".to_owned()];
        set_flag(&mut args, "--listen", "127.0.0.1:1");
        assert_eq!(args[2], "127.0.0.1:1");
        let mut args = vec!["--listen=0.0.0.0:8080".to_owned()];
        set_flag(&mut args, "--listen", "127.0.0.1:1");
        assert_eq!(args, ["--listen=127.0.0.1:1"]);
        let mut args = vec!["serve".to_owned()];
        set_flag(&mut args, "--listen", "127.0.0.1:1");
        assert_eq!(args, ["serve", "--listen", "127.0.0.1:1"]);
    }
}
