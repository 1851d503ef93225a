//! The chart installed into the real control plane, not just dry-run: the CRD chart and the
//! operator chart's manifests applied, the operator run from the chart's Deployment (its
//! arguments and environment, under the chart's ServiceAccount, ClusterRole and
//! leader-election Role, by the harness's stand-in kubelet), and the platform example
//! reaching Ready through it.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use kube::api::Api;
use wharf_api::{Repository, find_condition};
use wharf_test_harness::{ControlPlane, Kubelet, Listen, apply_yaml, ensure_namespace, eventually};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn helm_template(args: &[&str]) -> Option<String> {
    let helm = match std::env::var_os("WHARF_HELM_BIN") {
        Some(path) => PathBuf::from(path),
        None => {
            let output =
                Command::new("bash").arg(root().join("tests/helm.sh")).stderr(Stdio::inherit()).output().ok()?;
            if !output.status.success() {
                eprintln!("skipped: WHARF_HELM_BIN is unset and tests/helm.sh failed");
                return None;
            }
            PathBuf::from(String::from_utf8(output.stdout).unwrap().lines().last()?.trim())
        }
    };
    let home = tempfile::tempdir().unwrap();
    let output = Command::new(helm)
        .arg("template")
        .args(args)
        .current_dir(root())
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .output()
        .unwrap();
    assert!(output.status.success(), "helm template {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    Some(String::from_utf8(output.stdout).unwrap())
}

/// A binary of this workspace next to this test binary (`cargo test --workspace` builds it).
fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let binary = exe.parent().and_then(|deps| deps.parent()).unwrap().join(name);
    assert!(binary.exists(), "{} is missing: build it with `cargo build --workspace`", binary.display());
    binary
}

#[tokio::test]
async fn the_operator_runs_from_the_chart_and_the_examples_become_ready() {
    let Some(crds) = helm_template(&["wharf-crds", "charts/wharf-crds"]) else { return };
    let operator_chart = helm_template(&["wharf", "charts/wharf", "--namespace", "wharf-system"]).unwrap();
    let plane = ControlPlane::shared().await;
    let admin = plane.admin_client().await.unwrap();
    apply_yaml(&admin, &crds, None).await.unwrap();
    ensure_namespace(&admin, "wharf-system").await.unwrap();
    apply_yaml(&admin, &operator_chart, Some("wharf-system")).await.unwrap();

    let kubelet = Kubelet::new(plane, workspace_binary("wharf-registry"));
    let operator = kubelet
        .run_program(
            "wharf-system",
            "wharf",
            &workspace_binary("wharf-operator"),
            Listen::Env("WHARF_METRICS_ADDR"),
            "/healthz",
        )
        .await
        .unwrap_or_else(|error| panic!("the chart's operator did not start: {error:#}"));

    let folder = root().join("examples/platform");
    let mut files: Vec<_> = std::fs::read_dir(&folder).unwrap().map(|entry| entry.unwrap().path()).collect();
    files.sort_by_key(|path| !path.ends_with("domain.yaml"));
    for file in &files {
        let yaml = std::fs::read_to_string(file).unwrap();
        eventually(Duration::from_secs(30), "the example applies", || {
            let admin = admin.clone();
            let yaml = yaml.clone();
            async move { apply_yaml(&admin, &yaml, None).await.map(|_| ()).map_err(|e| format!("{e:#}")) }
        })
        .await
        .unwrap();
    }
    // The registry Deployment the operator made: the harness reports it available, as the
    // Deployment controller would once its pod is ready.
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(admin.clone(), "wharf-system");
    eventually(Duration::from_secs(30), "the registry Deployment exists", || async {
        deployments.get("wharf-acme").await.map(|_| ()).map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|error| panic!("{error}\noperator log:\n{}", operator.log_tail()));
    plane.mark_available("wharf-system", "wharf-acme").await.unwrap();

    for (namespace, name) in
        [("wharf-system", "npm-store"), ("wharf-system", "pypi-store"), ("team-web", "web"), ("team-data", "data")]
    {
        let repositories: Api<Repository> = Api::namespaced(admin.clone(), namespace);
        eventually(Duration::from_secs(30), &format!("Repository {namespace}/{name} Ready"), || async {
            let repository = repositories.get(name).await.map_err(|e| e.to_string())?;
            let conditions = repository.status.map(|status| status.conditions).unwrap_or_default();
            match find_condition(&conditions, "Ready") {
                Some(ready) if ready.status == "True" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await
        .unwrap_or_else(|error| panic!("{error}\noperator log:\n{}", operator.log_tail()));
    }
}
