//! The images `images/build.sh` makes, run as a cluster would run them: unpacked by umoci (an
//! OCI consumer that is not ours) and started by runc with the restricted security context
//! the operator and the chart give their pods — the image's non-root user, a read-only root
//! file system, no capabilities, no privilege escalation, a seccomp filter refusing what
//! `RuntimeDefault` refuses — with the pod's volumes as mounts; stopped with SIGTERM.
//! The build is reproducible: two builds of one tree give the same digests.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wharf_test_harness::workspace_binary;

const ADMIN_TOKEN: &str = "image-test-admin-token";

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn output(command: &mut Command) -> String {
    let output = command.stderr(Stdio::inherit()).output().unwrap();
    assert!(output.status.success(), "{command:?} failed");
    String::from_utf8(output.stdout).unwrap()
}

/// One built image: reference, manifest digest, compressed layer bytes, archive.
#[derive(Debug, PartialEq)]
struct Built {
    reference: String,
    digest: String,
    layer_bytes: u64,
    archive: PathBuf,
}

/// Builds both images from the binaries the suite built.
fn build_images(out: &Path) -> Vec<Built> {
    let binaries = workspace_binary("wharf-registry").unwrap().parent().unwrap().to_owned();
    workspace_binary("wharf-operator").unwrap();
    let printed = output(
        Command::new(repository_root().join("images/build.sh")).arg("--binaries").arg(binaries).arg("--out").arg(out),
    );
    printed
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            Built {
                reference: fields[0].to_owned(),
                digest: fields[1].to_owned(),
                layer_bytes: fields[2].parse().unwrap(),
                archive: PathBuf::from(fields[3]),
            }
        })
        .collect()
}

/// Unpacks an image archive into an OCI runtime bundle (`rootfs` and the `config.json` umoci
/// derives from the image's configuration).
fn unpack(archive: &Path, into: &Path) -> PathBuf {
    let layout = into.join("layout");
    std::fs::create_dir_all(&layout).unwrap();
    output(Command::new("tar").arg("-xf").arg(archive).arg("-C").arg(&layout));
    let bundle = into.join("bundle");
    let image = format!("{}:{}", layout.display(), env!("CARGO_PKG_VERSION"));
    output(Command::new("umoci").args(["unpack", "--image", &image]).arg(&bundle));
    bundle
}

/// What a pod's restricted security context makes of the bundle's configuration: read-only
/// root, no capabilities, no new privileges, a seccomp filter, the host's network (the
/// tests reach it on loopback), and `mounts` (host folder, container path) as the pod's
/// volumes with a tmpfs `/tmp` (an emptyDir).
fn restrict(bundle: &Path, args: &[&str], env: &[&str], mounts: &[(&Path, &str)]) -> serde_json::Value {
    let path = bundle.join("config.json");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    config["root"]["readonly"] = true.into();
    let process = &mut config["process"];
    process["terminal"] = false.into();
    process["noNewPrivileges"] = true.into();
    process["args"] = args.into();
    for variable in env {
        process["env"].as_array_mut().unwrap().push((*variable).into());
    }
    for set in ["bounding", "effective", "inheritable", "permitted", "ambient"] {
        process["capabilities"][set] = serde_json::json!([]);
    }
    let linux = &mut config["linux"];
    linux["namespaces"].as_array_mut().unwrap().retain(|namespace| namespace["type"] != "network");
    // The calls RuntimeDefault (Docker's and containerd's profile) refuses to a container
    // without capabilities; the rest is allowed, as there.
    let refused = [
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
    linux["seccomp"] = serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": refused.as_slice(), "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
    });
    let mounts_list = config["mounts"].as_array_mut().unwrap();
    for (source, destination) in mounts {
        mounts_list.push(serde_json::json!({"destination": destination, "type": "bind",
            "source": source, "options": ["rbind", "rw", "nosuid", "nodev"]}));
    }
    mounts_list.push(serde_json::json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
        "options": ["nosuid", "nodev", "mode=1777"]}));
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    config
}

/// A container runc runs in the background; killed and deleted on drop.
struct Container {
    id: String,
}

impl Container {
    fn start(bundle: &Path, id: &str, log: &Path) -> Container {
        let log = std::fs::File::create(log).unwrap();
        let status = Command::new("runc")
            .args(["run", "--detach", id])
            .current_dir(bundle)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .status()
            .unwrap();
        assert!(status.success(), "runc run {id} failed");
        Container { id: id.to_owned() }
    }

    fn status(&self) -> String {
        let state: serde_json::Value =
            serde_json::from_str(&output(Command::new("runc").args(["state", &self.id]))).unwrap();
        state["status"].as_str().unwrap().to_owned()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("runc").args(["kill", &self.id, "KILL"]).stderr(Stdio::null()).status();
        let _ = Command::new("runc").args(["delete", "--force", &self.id]).stderr(Stdio::null()).status();
    }
}

fn curl(args: &[&str]) -> String {
    output(Command::new("curl").args(["--silent", "--show-error", "--max-time", "10"]).args(args))
}

#[test]
fn images_are_reproducible_small_and_run_under_runc_with_a_restricted_context() {
    let work = tempfile::tempdir().unwrap();
    let built = build_images(&work.path().join("first"));
    let again = build_images(&work.path().join("second"));
    let version = env!("CARGO_PKG_VERSION");
    let references: Vec<&str> = built.iter().map(|image| image.reference.as_str()).collect();
    assert_eq!(references, [format!("wharf-registry:{version}"), format!("wharf-operator:{version}")]);
    for (first, second) in built.iter().zip(&again) {
        assert_eq!((&first.digest, first.layer_bytes), (&second.digest, second.layer_bytes), "a build is reproducible");
        assert_eq!(std::fs::read(&first.archive).unwrap(), std::fs::read(&second.archive).unwrap());
        assert!(first.layer_bytes < 64 << 20, "{first:?}");
    }

    // The registry: its image's user, its volumes, a client on loopback.
    let registry = unpack(&built[0].archive, &work.path().join("registry"));
    let data = work.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::os::unix::fs::chown(&data, Some(65532), Some(65532)).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let admin = format!("WHARF_ADMIN_TOKEN={ADMIN_TOKEN}");
    let args = ["/usr/local/bin/wharf-registry", "serve", "--listen", &listen, "--data", "/var/lib/wharf-data"];
    let config = restrict(&registry, &args, &[&admin], &[(&data, "/var/lib/wharf-data")]);
    assert_eq!(config["process"]["user"]["uid"], 65532, "the image runs as its non-root user");
    let id = format!("wharf-image-test-{}", std::process::id());
    let log = work.path().join("registry.log");
    let container = Container::start(&registry, &id, &log);
    let base = format!("http://{listen}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while curl(&["--output", "/dev/null", "--write-out", "%{http_code}", &format!("{base}/readyz")]) != "200" {
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(Instant::now() < deadline, "the registry container never became ready:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let body = "built in a container";
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(body));
    let url = format!("{base}/generic/main/acme/tool/1.0.0/tool.txt");
    let checksum = format!("X-Checksum-Sha256: {digest}");
    let bearer = format!("Authorization: Bearer {ADMIN_TOKEN}");
    let put = ["--request", "PUT", "--header", &bearer, "--header", &checksum, "--data-binary", body];
    let status = curl(&[&put[..], &["--output", "/dev/null", "--write-out", "%{http_code}", &url]].concat());
    assert_eq!(status, "201");
    assert_eq!(curl(&[&url]), body);
    // What it stored is on the volume, owned by the image's user.
    let stored = std::fs::metadata(data.join("blobs/sha256").join(&digest[..2]).join(&digest)).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&stored), 65532);

    // SIGTERM, as the kubelet sends it: the registry finishes and exits by itself.
    output(Command::new("runc").args(["kill", &id, "TERM"]));
    let deadline = Instant::now() + Duration::from_secs(20);
    while container.status() != "stopped" {
        assert!(Instant::now() < deadline, "the registry did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(container);

    // The operator's image runs its binary the same way (it needs an apiserver to do more).
    let operator = unpack(&built[1].archive, &work.path().join("operator"));
    restrict(&operator, &["/usr/local/bin/wharf-operator", "--version"], &[], &[]);
    let printed = output(Command::new("runc").args(["run", &format!("{id}-operator")]).current_dir(&operator));
    let _ = Command::new("runc").args(["delete", "--force", &format!("{id}-operator")]).status();
    assert_eq!(printed.trim(), format!("wharf-operator {version}"));
}
