//! The README's "On Kubernetes" walkthrough, run as it is written: every line of the
//! section's `sh` blocks runs in bash from the repository's root, with helm and kubectl (built
//! at the apiserver's version) on the PATH and the cluster-admin kubeconfig, against the real
//! control plane. The harness's stand-in node runs what those commands create (the operator
//! from the chart, the registry the operator renders, the example's Jobs), so a README that
//! drifts from the charts, the examples or the code fails here. The operator and the registry
//! run as containers of the images `images/build.sh` builds from the suite's binaries, under
//! runc with the security contexts the chart and the operator give their pods.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use wharf_test_harness::oci::build_images;
use wharf_test_harness::{ControlPlane, Kubelet, Listen, Node, helm_binary, workspace_binary};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The command lines of the `sh` blocks in the README section that starts with `heading`.
fn walkthrough_commands(readme: &str, heading: &str) -> Vec<String> {
    let start = readme.find(&format!("\n{heading}\n")).unwrap_or_else(|| panic!("README has no {heading}"));
    let section = &readme[start + heading.len() + 2..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let mut commands = Vec::new();
    let mut in_sh = false;
    for line in section.lines() {
        match line.trim_end() {
            "```sh" => in_sh = true,
            "```" => in_sh = false,
            command if in_sh && !command.trim().is_empty() && !command.trim_start().starts_with('#') => {
                assert!(!command.ends_with('\\'), "one command a line, please: {command}");
                commands.push(command.to_owned());
            }
            _ => {}
        }
    }
    commands
}

/// `kubectl logs job/NAME --namespace NS   # prints: TEXT` → (NS, NAME, TEXT).
fn logs_command(command: &str) -> Option<(String, String, String)> {
    let (command, expected) = command.split_once("# prints:")?;
    let words: Vec<&str> = command.split_whitespace().collect();
    let ["kubectl", "logs", job, "--namespace", namespace] = words.as_slice() else {
        panic!("a `kubectl logs` line the test cannot read: {command}");
    };
    let name = job.strip_prefix("job/").unwrap_or_else(|| panic!("not a Job: {job}"));
    Some((namespace.to_string(), name.to_owned(), expected.trim().to_owned()))
}

fn fail(node: &Node, what: String) -> ! {
    panic!("{what}\n\n{}", node.all_logs())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_readme_walkthrough_installs_a_package_from_a_pod() {
    let helm = helm_binary().unwrap();
    let plane = ControlPlane::shared().await;
    let kubectl = PathBuf::from(plane.kubectl().unwrap().get_program());
    let images = tempfile::tempdir().unwrap();
    let registry = workspace_binary("wharf-registry").unwrap();
    workspace_binary("wharf-operator").unwrap();
    let built = build_images(registry.parent().unwrap(), images.path()).unwrap();
    let version = env!("CARGO_PKG_VERSION");
    let node = Kubelet::new(plane, &registry)
        .container_image("wharf-registry", &built[0].archive, version, Listen::Flag("--listen"), "/readyz")
        .unwrap()
        .container_image("wharf-operator", &built[1].archive, version, Listen::Env("WHARF_METRICS_ADDR"), "/readyz")
        .unwrap()
        .start_node()
        .await
        .unwrap();

    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let commands = walkthrough_commands(&readme, "## On Kubernetes");
    assert!(commands.len() >= 8, "the walkthrough lost its steps: {commands:?}");
    let home = tempfile::tempdir().unwrap();
    let path = std::env::join_paths(
        [helm.parent().unwrap(), kubectl.parent().unwrap()]
            .into_iter()
            .map(Path::to_path_buf)
            .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .unwrap();
    let started = Instant::now();
    for command in &commands {
        if let Some((namespace, job, expected)) = logs_command(command) {
            // No kubelet API to serve `kubectl logs`: the node has the same output.
            let log = node.pod_log(&namespace, &job);
            if !log.contains(&expected) {
                fail(&node, format!("`{command}`: the Job's output lacks {expected:?}:\n{log}"));
            }
            continue;
        }
        let step = Instant::now();
        let mut bash = Command::new("bash");
        bash.args(["-euo", "pipefail", "-c", command])
            .current_dir(root())
            .env("PATH", &path)
            .env("KUBECONFIG", plane.admin_kubeconfig().unwrap())
            .env("HELM_CONFIG_HOME", home.path().join("config"))
            .env("HELM_CACHE_HOME", home.path().join("cache"))
            .env("HELM_DATA_HOME", home.path().join("data"));
        // Off the runtime's worker, so the node's tasks run while the command waits on them.
        let output = tokio::task::block_in_place(|| bash.output()).unwrap();
        let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        if !output.status.success() {
            fail(&node, format!("`{command}` failed ({}):\n{printed}", output.status));
        }
        eprintln!("$ {command}   ({:.1?})\n{printed}", step.elapsed());
    }
    eprintln!("the walkthrough took {:.1?}", started.elapsed());
}

#[test]
fn reads_commands_and_log_expectations() {
    let readme = "# x\n## On Kubernetes\ntext\n```sh\nhelm install a b\n# a comment\n\nkubectl apply -f x\n```\n\
                  ```yaml\nnot: this\n```\n## Next\n```sh\nnot this\n```\n";
    assert_eq!(walkthrough_commands(readme, "## On Kubernetes"), ["helm install a b", "kubectl apply -f x"]);
    assert_eq!(
        logs_command("kubectl logs job/install --namespace team-web   # prints: hello from a pod"),
        Some(("team-web".into(), "install".into(), "hello from a pod".into()))
    );
    assert_eq!(logs_command("kubectl wait --for=condition=complete job/x"), None);
}
