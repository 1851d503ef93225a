//! Images as a node runs them: `images/build.sh` builds the OCI archives, umoci (an OCI
//! consumer that is not ours) unpacks one into a root file system and the runtime
//! configuration its image describes, and runc (Debian's, run as root) runs containers from
//! it under the configuration a pod's security context asks for. Does I/O (processes, files).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{Container, PodSpec};

/// The calls `RuntimeDefault` (the profile of containerd and Docker) refuses to a container
/// without capabilities. runc applies them as a deny list over everything else allowed,
/// which is what that profile amounts to for such a container.
pub const RUNTIME_DEFAULT_REFUSED: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "mount",
    "move_pages",
    "open_by_handle_at",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "set_mempolicy",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "sysfs",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vhangup",
];

/// One image `images/build.sh` built.
#[derive(Clone, Debug, PartialEq)]
pub struct BuiltImage {
    /// `wharf-registry:0.1.0`.
    pub reference: String,
    /// The manifest's digest, `sha256:…`.
    pub digest: String,
    /// The compressed layer's size.
    pub layer_bytes: u64,
    /// The OCI archive.
    pub archive: PathBuf,
}

/// Builds both images with `images/build.sh` from the binaries in `binaries` (the suite's
/// own, so no release build is needed) into `out`.
pub fn build_images(binaries: &Path, out: &Path) -> anyhow::Result<Vec<BuiltImage>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../images/build.sh");
    let output = Command::new(script)
        .arg("--binaries")
        .arg(binaries)
        .arg("--out")
        .arg(out)
        .stderr(Stdio::inherit())
        .output()
        .context("failed to run images/build.sh")?;
    if !output.status.success() {
        bail!("images/build.sh failed");
    }
    String::from_utf8(output.stdout)?
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let [reference, digest, layer_bytes, archive] = fields[..] else {
                bail!("images/build.sh printed {line:?}")
            };
            Ok(BuiltImage {
                reference: reference.to_owned(),
                digest: digest.to_owned(),
                layer_bytes: layer_bytes.parse()?,
                archive: PathBuf::from(archive),
            })
        })
        .collect()
}

/// An image unpacked by umoci: `rootfs/` and the `config.json` derived from the image's
/// configuration (its user, entrypoint, environment), which [`RuntimeConfig`] starts from.
#[derive(Debug)]
pub struct UnpackedImage {
    pub bundle: PathBuf,
    /// The folder holding it, when the image owns it (removed with the image).
    _folder: Option<tempfile::TempDir>,
}

impl UnpackedImage {
    /// Unpacks the archive of the image tagged `tag` into `into`.
    pub fn unpack(archive: &Path, tag: &str, into: &Path) -> anyhow::Result<UnpackedImage> {
        let layout = into.join("layout");
        std::fs::create_dir_all(&layout)?;
        run(Command::new("tar").arg("-xf").arg(archive).arg("-C").arg(&layout))?;
        let bundle = into.join("bundle");
        let image = format!("{}:{tag}", layout.display());
        run(Command::new(tool("umoci")?).args(["unpack", "--image", &image]).arg(&bundle))?;
        Ok(UnpackedImage { bundle, _folder: None })
    }

    /// [`UnpackedImage::unpack`] into a temporary folder of its own.
    pub fn unpack_to_temporary(archive: &Path, tag: &str) -> anyhow::Result<UnpackedImage> {
        let folder = tempfile::Builder::new().prefix("wharf-image-").tempdir()?;
        let unpacked = Self::unpack(archive, tag, folder.path())?;
        Ok(UnpackedImage { _folder: Some(folder), ..unpacked })
    }

    /// The runtime configuration umoci derived from the image.
    pub fn config(&self) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_slice(&std::fs::read(self.bundle.join("config.json"))?)?)
    }
}

/// A container's runtime configuration, built from its image's and a pod's security
/// context: what runc is given.
pub struct RuntimeConfig {
    config: serde_json::Value,
}

impl RuntimeConfig {
    /// The image's configuration running `args` (the entrypoint included) with the host's
    /// network (the node's pods share loopback with the tests) and a tmpfs `/tmp`.
    pub fn new(image: &UnpackedImage, args: &[String]) -> anyhow::Result<RuntimeConfig> {
        let mut config = image.config()?;
        config["root"]["path"] = image.bundle.join("rootfs").display().to_string().into();
        config["process"]["terminal"] = false.into();
        config["process"]["args"] = args.into();
        config["linux"]["namespaces"]
            .as_array_mut()
            .context("no namespaces")?
            .retain(|namespace| namespace["type"] != "network");
        let mut built = RuntimeConfig { config };
        built.mount_tmpfs("/tmp");
        Ok(built)
    }

    /// What a Kubernetes security context asks for, the container's overriding the pod's:
    /// user and group, a read-only root, capabilities (`drop: [ALL]` and `add`), no privilege
    /// escalation and the `RuntimeDefault` seccomp profile.
    pub fn secure(&mut self, pod: &PodSpec, container: &Container) -> &mut Self {
        let (pod_context, context) = (pod.security_context.as_ref(), container.security_context.as_ref());
        let user = context.and_then(|c| c.run_as_user).or_else(|| pod_context.and_then(|p| p.run_as_user));
        let group = context.and_then(|c| c.run_as_group).or_else(|| pod_context.and_then(|p| p.run_as_group));
        if let Some(user) = user {
            self.config["process"]["user"]["uid"] = user.into();
        }
        if let Some(group) = group {
            self.config["process"]["user"]["gid"] = group.into();
        }
        if let Some(fs_group) = pod_context.and_then(|p| p.fs_group) {
            self.config["process"]["user"]["additionalGids"] = serde_json::json!([fs_group]);
        }
        let context = context.cloned().unwrap_or_default();
        self.config["root"]["readonly"] = context.read_only_root_filesystem.unwrap_or(false).into();
        self.config["process"]["noNewPrivileges"] = (context.allow_privilege_escalation == Some(false)).into();
        if let Some(capabilities) = &context.capabilities {
            let dropped_all = capabilities.drop.iter().flatten().any(|name| name == "ALL");
            let added: Vec<String> =
                capabilities.add.iter().flatten().map(|name| format!("CAP_{}", name.to_uppercase())).collect();
            for set in ["bounding", "effective", "inheritable", "permitted", "ambient"] {
                let current = &mut self.config["process"]["capabilities"][set];
                if dropped_all {
                    *current = serde_json::json!([]);
                }
                if let Some(list) = current.as_array_mut() {
                    list.extend(added.iter().map(|name| serde_json::Value::from(name.as_str())));
                }
            }
        }
        let profile = context
            .seccomp_profile
            .as_ref()
            .or_else(|| pod_context.and_then(|p| p.seccomp_profile.as_ref()))
            .map(|profile| profile.type_.as_str());
        if profile == Some("RuntimeDefault") {
            self.config["linux"]["seccomp"] = serde_json::json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64"],
                "syscalls": [{"names": RUNTIME_DEFAULT_REFUSED, "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
            });
        }
        self
    }

    /// Adds `KEY=VALUE` to the environment (after the image's, which it overrides).
    pub fn env(&mut self, key: &str, value: &str) -> &mut Self {
        if let Some(list) = self.config["process"]["env"].as_array_mut() {
            list.retain(|entry| entry.as_str().is_none_or(|entry| !entry.starts_with(&format!("{key}="))));
            list.push(format!("{key}={value}").into());
        }
        self
    }

    /// Mounts the host folder or file `source` at `destination`.
    pub fn bind(&mut self, source: &Path, destination: &str, read_only: bool) -> &mut Self {
        let mut options = vec!["rbind", "nosuid", "nodev"];
        options.push(if read_only { "ro" } else { "rw" });
        self.push_mount(serde_json::json!({"destination": destination, "type": "bind",
            "source": source, "options": options}));
        self
    }

    /// A memory-backed folder at `destination`, as an emptyDir with `medium: Memory`.
    pub fn mount_tmpfs(&mut self, destination: &str) -> &mut Self {
        self.push_mount(serde_json::json!({"destination": destination, "type": "tmpfs", "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=1777"]}));
        self
    }

    fn push_mount(&mut self, mount: serde_json::Value) {
        let destination = mount["destination"].clone();
        if let Some(list) = self.config["mounts"].as_array_mut() {
            list.retain(|existing| existing["destination"] != destination);
            list.push(mount);
        }
    }

    /// The user the container runs as: (uid, gid).
    pub fn user(&self) -> (u32, u32) {
        let id = |key: &str| self.config["process"]["user"][key].as_u64().unwrap_or(0) as u32;
        (id("uid"), id("gid"))
    }

    pub fn json(&self) -> &serde_json::Value {
        &self.config
    }

    /// Writes `config.json` into `bundle`, a folder of its own for this container.
    pub fn write(&self, bundle: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(bundle)?;
        std::fs::write(bundle.join("config.json"), serde_json::to_vec_pretty(&self.config)?)?;
        Ok(())
    }
}

/// The path of `name` on this machine (runc, umoci), saying how to install it when missing.
pub fn tool(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|folder| folder.join(name))
        .find(|candidate| candidate.is_file());
    path.with_context(|| format!("{name} is missing: run tests/install-clients.sh (Debian: apt-get install {name})"))
}

/// Gives `path` and everything under it to `uid:gid`, as a volume with the pod's `fsGroup`
/// is given to it.
pub fn give_to(path: &Path, uid: u32, gid: u32) -> anyhow::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    if path.is_dir() && !path.is_symlink() {
        for entry in std::fs::read_dir(path)? {
            give_to(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// `runc delete --force`: stops and removes the container `id`, if it is there.
pub fn delete_container(id: &str) {
    if let Ok(runc) = tool("runc") {
        let _ = Command::new(runc).args(["delete", "--force", id]).stderr(Stdio::null()).status();
    }
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let output = command.output().with_context(|| format!("failed to run {command:?}"))?;
    if !output.status.success() {
        bail!("{command:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(())
}
