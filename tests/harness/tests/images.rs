//! The images `images/build.sh` makes, run as a cluster would run them: unpacked by umoci (an
//! OCI consumer that is not ours) and started by runc with the restricted security context
//! the operator gives registry pods — the image's non-root user, a read-only root file
//! system, no capabilities, no privilege escalation, seccomp `RuntimeDefault` — with the
//! data volume mounted; stopped with SIGTERM. The build is reproducible: two builds of one
//! tree give the same digests, and podman loads the archives as they are. (The README
//! walkthrough runs both images as the node's pods.)
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    Capabilities, Container, PodSecurityContext, PodSpec, SeccompProfile, SecurityContext,
};
use wharf_test_harness::oci::{RuntimeConfig, UnpackedImage, build_images, tool};
use wharf_test_harness::workspace_binary;

const ADMIN_TOKEN: &str = "image-test-admin-token";

fn output(command: &mut Command) -> String {
    let output = command.stderr(Stdio::inherit()).output().unwrap();
    assert!(output.status.success(), "{command:?} failed");
    String::from_utf8(output.stdout).unwrap()
}

/// The pod security context the operator renders for registry pods.
fn restricted_pod() -> (PodSpec, Container) {
    let runtime_default = SeccompProfile { type_: "RuntimeDefault".to_owned(), localhost_profile: None };
    let pod = PodSpec {
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            run_as_group: Some(65532),
            fs_group: Some(65532),
            seccomp_profile: Some(runtime_default.clone()),
            ..PodSecurityContext::default()
        }),
        ..PodSpec::default()
    };
    let container = Container {
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".to_owned()]), add: None }),
            seccomp_profile: Some(runtime_default),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    (pod, container)
}

/// A container runc runs in the background; removed on drop.
struct Detached {
    id: String,
}

impl Detached {
    fn start(bundle: &Path, id: &str, log: &Path) -> Detached {
        let log = std::fs::File::create(log).unwrap();
        let status = Command::new(tool("runc").unwrap())
            .args(["run", "--detach", "--bundle"])
            .arg(bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .status()
            .unwrap();
        assert!(status.success(), "runc run {id} failed");
        Detached { id: id.to_owned() }
    }

    fn status(&self) -> String {
        let state = output(Command::new(tool("runc").unwrap()).args(["state", &self.id]));
        serde_json::from_str::<serde_json::Value>(&state).unwrap()["status"].as_str().unwrap().to_owned()
    }
}

impl Drop for Detached {
    fn drop(&mut self) {
        wharf_test_harness::oci::delete_container(&self.id);
    }
}

fn curl(args: &[&str]) -> String {
    output(Command::new("curl").args(["--silent", "--show-error", "--max-time", "10"]).args(args))
}

#[test]
fn images_are_reproducible_small_and_run_under_runc_with_a_restricted_context() {
    let work = tempfile::tempdir().unwrap();
    let binaries = workspace_binary("wharf-registry").unwrap().parent().unwrap().to_owned();
    workspace_binary("wharf-operator").unwrap();
    let built = build_images(&binaries, &work.path().join("first")).unwrap();
    let again = build_images(&binaries, &work.path().join("second")).unwrap();
    let version = env!("CARGO_PKG_VERSION");
    let references: Vec<&str> = built.iter().map(|image| image.reference.as_str()).collect();
    assert_eq!(references, [format!("wharf-registry:{version}"), format!("wharf-operator:{version}")]);
    for (first, second) in built.iter().zip(&again) {
        assert_eq!((&first.digest, first.layer_bytes), (&second.digest, second.layer_bytes), "a build is reproducible");
        assert_eq!(std::fs::read(&first.archive).unwrap(), std::fs::read(&second.archive).unwrap());
        assert!(first.layer_bytes < 64 << 20, "{first:?}");
    }

    // podman (containers/image, as Podman, Buildah and CRI-O read images) loads each archive
    // under its name, with the image's user, entrypoint and labels.
    let storage = work.path().join("podman");
    let podman = |args: &[&str]| {
        output(
            Command::new(tool("podman").unwrap())
                .arg("--root")
                .arg(storage.join("root"))
                .arg("--runroot")
                .arg(storage.join("run"))
                .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs"])
                .args(args),
        )
    };
    for image in &built {
        let loaded = podman(&["load", "--quiet", "--input", image.archive.to_str().unwrap()]);
        assert!(loaded.contains(&image.reference), "{loaded}");
        let format = "{{.Config.User}} {{.Config.Entrypoint}} {{index .Labels \"org.opencontainers.image.version\"}}";
        let inspected = podman(&["image", "inspect", &image.reference, "--format", format]);
        let name = image.reference.split(':').next().unwrap();
        assert_eq!(inspected.trim(), format!("65532:65532 [/usr/local/bin/{name}] {version}"));
    }

    // The registry: its image's user and entrypoint, the pod's restrictions, its volume.
    let registry = UnpackedImage::unpack(&built[0].archive, version, &work.path().join("registry")).unwrap();
    let image_config = registry.config().unwrap();
    assert_eq!(image_config["process"]["user"]["uid"], 65532, "the image runs as its non-root user");
    assert_eq!(image_config["process"]["args"][0], "/usr/local/bin/wharf-registry");
    let data = work.path().join("data");
    std::fs::create_dir(&data).unwrap();
    wharf_test_harness::oci::give_to(&data, 65532, 65532).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let args: Vec<String> =
        ["/usr/local/bin/wharf-registry", "serve", "--listen", &listen, "--data", "/var/lib/wharf-data"]
            .map(str::to_owned)
            .to_vec();
    let (pod, container) = restricted_pod();
    let mut runtime = RuntimeConfig::new(&registry, &args).unwrap();
    runtime.secure(&pod, &container).bind(&data, "/var/lib/wharf-data", false).env("WHARF_ADMIN_TOKEN", ADMIN_TOKEN);
    let config = runtime.json();
    assert_eq!(config["root"]["readonly"], true);
    assert_eq!(config["process"]["noNewPrivileges"], true);
    assert_eq!(config["process"]["capabilities"]["bounding"], serde_json::json!([]));
    assert!(config["linux"]["seccomp"]["syscalls"][0]["names"].as_array().unwrap().contains(&"mount".into()));
    let bundle = work.path().join("registry-bundle");
    runtime.write(&bundle).unwrap();
    let id = format!("wharf-image-test-{}", std::process::id());
    let log = work.path().join("registry.log");
    let started = Detached::start(&bundle, &id, &log);
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
    output(Command::new(tool("runc").unwrap()).args(["kill", &id, "TERM"]));
    let deadline = Instant::now() + Duration::from_secs(20);
    while started.status() != "stopped" {
        assert!(Instant::now() < deadline, "the registry did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(started);

    // The operator's image runs its binary the same way (it needs an apiserver to do more).
    let operator = UnpackedImage::unpack(&built[1].archive, version, &work.path().join("operator")).unwrap();
    let args = ["/usr/local/bin/wharf-operator".to_owned(), "--version".to_owned()];
    let mut runtime = RuntimeConfig::new(&operator, &args).unwrap();
    runtime.secure(&pod, &container);
    let bundle = work.path().join("operator-bundle");
    runtime.write(&bundle).unwrap();
    let operator_id = format!("{id}-operator");
    let printed = output(Command::new(tool("runc").unwrap()).args(["run", "--bundle"]).arg(&bundle).arg(&operator_id));
    wharf_test_harness::oci::delete_container(&operator_id);
    assert_eq!(printed.trim(), format!("wharf-operator {version}"));
}
