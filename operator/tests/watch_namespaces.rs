//! `wharf-operator run --watch-namespaces` against a real kube-apiserver and etcd (the test
//! harness), under exactly `operator/rbac/watch-namespaces/` — the cluster-scoped ClusterRole
//! and a Role in each watched namespace, no all-namespaces ClusterRole: objects in the watched
//! namespaces reach Ready, those elsewhere are left alone, and no request is refused. Does I/O
//! (processes, network on loopback).

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Client;
use kube::api::{Api, ListParams};
use wharf_api::{Domain, Repository, find_condition};
use wharf_test_harness::{ControlPlane, apply_yaml, ensure_namespace, eventually, install_crds};

const WAIT: Duration = Duration::from_secs(30);
/// Watched: the Domain lives in the first, one of its Repositories in the second.
const WATCHED: [&str; 2] = ["scoped-a", "scoped-c"];
/// Not watched, and the operator holds no rights in it.
const UNWATCHED: &str = "scoped-b";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The operator process, stopped when dropped or when this test binary exits (its supervisor
/// reads our end of a pipe and kills the operator when it closes, also on a panic or a kill).
struct Operator {
    stdin: Option<ChildStdin>,
    supervisor: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Operator {
    fn start(kubeconfig: &Path, watch_namespaces: &str) -> Operator {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("operator.log");
        let script = format!(
            "{bin} run >{log} 2>&1 </dev/null & pid=$!\ncat >/dev/null\nkill $pid 2>/dev/null\n\
             for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do kill -0 $pid 2>/dev/null || break; sleep 1; done\n\
             kill -9 $pid 2>/dev/null",
            bin = env!("CARGO_BIN_EXE_wharf-operator"),
            log = log.display()
        );
        let mut supervisor = Command::new("sh")
            .args(["-c", &script])
            .env("KUBECONFIG", kubeconfig)
            .env("WHARF_WATCH_NAMESPACES", watch_namespaces)
            .env("RUST_LOG", "info,kube=warn")
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = supervisor.stdin.take();
        Operator { stdin, supervisor, log, _dir: dir }
    }

    fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines().filter(|line| !line.contains("cert bypassed")).collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.supervisor.wait();
    }
}

/// `(status, reason, message)` of the `Ready` condition.
fn ready_of(conditions: Option<&[Condition]>) -> Result<(String, String, String), String> {
    let ready = find_condition(conditions.ok_or("no status")?, "Ready").ok_or("no Ready")?;
    Ok((ready.status.clone(), ready.reason.clone(), ready.message.clone()))
}

async fn domain_ready(api: &Api<Domain>, name: &str) -> Result<(String, String, String), String> {
    let domain = api.get(name).await.map_err(|e| e.to_string())?;
    ready_of(domain.status.as_ref().map(|status| status.conditions.as_slice()))
}

async fn repository_ready(api: &Api<Repository>, name: &str) -> Result<(String, String, String), String> {
    let repository = api.get(name).await.map_err(|e| e.to_string())?;
    ready_of(repository.status.as_ref().map(|status| status.conditions.as_slice()))
}

/// Installs the CRDs, the namespaces and the operator's namespaced RBAC; returns the admin
/// client and the operator's kubeconfig.
async fn install(plane: &ControlPlane) -> (Client, PathBuf) {
    let admin = plane.admin_client().await.unwrap();
    install_crds(&admin).await.unwrap();
    for namespace in ["wharf-system", UNWATCHED].iter().chain(WATCHED.iter()) {
        ensure_namespace(&admin, namespace).await.unwrap();
    }
    let rbac = root().join("operator/rbac/watch-namespaces");
    apply_yaml(&admin, &std::fs::read_to_string(rbac.join("cluster.yaml")).unwrap(), None).await.unwrap();
    let guard = root().join("operator/rbac/cluster-role-binding-guard.yaml");
    apply_yaml(&admin, &std::fs::read_to_string(guard).unwrap(), None).await.unwrap();
    let namespace_rbac = std::fs::read_to_string(rbac.join("namespace.yaml")).unwrap();
    for namespace in WATCHED {
        apply_yaml(&admin, &namespace_rbac, Some(namespace)).await.unwrap();
    }
    let kubeconfig = plane.service_account_kubeconfig("wharf-system", "wharf-operator").await.unwrap();
    (admin, kubeconfig)
}

#[tokio::test]
async fn only_the_watched_namespaces_are_reconciled_under_namespaced_rbac() {
    let started = Instant::now();
    let plane = ControlPlane::shared().await;
    let (admin, kubeconfig) = install(plane).await;

    // The RBAC really is namespaced: the operator's identity can read Domains where it has a
    // Role, not elsewhere, nor cluster-wide.
    let operator_client = plane.service_account_client("wharf-system", "wharf-operator").await.unwrap();
    let list = ListParams::default().limit(1);
    Api::<Domain>::namespaced(operator_client.clone(), WATCHED[0]).list(&list).await.unwrap();
    for api in [Api::<Domain>::namespaced(operator_client.clone(), UNWATCHED), Api::<Domain>::all(operator_client)] {
        match api.list(&list).await {
            Err(kube::Error::Api(status)) if status.code == 403 => {}
            other => panic!("the operator's identity should not list Domains there: {other:?}"),
        }
    }

    let operator = Operator::start(&kubeconfig, &WATCHED.join(","));
    let [a, c] = WATCHED;
    let b = UNWATCHED;
    let world = format!(
        r#"
apiVersion: wharf.dev/v1alpha1
kind: Domain
metadata: {{name: acme, namespace: {a}}}
spec:
  storage: {{memory: {{}}}}
  repositoryNamespaces: {{from: All}}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {{name: store, namespace: {a}}}
spec: {{domainRef: {{name: acme}}}}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {{name: web, namespace: {c}}}
spec: {{domainRef: {{name: acme, namespace: {a}}}, upstreams: [{{name: store}}]}}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {{name: stray, namespace: {a}}}
spec: {{domainRef: {{name: other, namespace: {b}}}}}
---
apiVersion: wharf.dev/v1alpha1
kind: Domain
metadata: {{name: other, namespace: {b}}}
spec:
  storage: {{memory: {{}}}}
  repositoryNamespaces: {{from: All}}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {{name: unseen, namespace: {b}}}
spec: {{domainRef: {{name: acme, namespace: {a}}}}}
"#
    );
    apply_yaml(&admin, &world, None).await.unwrap();

    // The Domain in a watched namespace gets its registry; the harness stands in for the
    // Deployment controller.
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), a);
    eventually(WAIT, "the registry Deployment exists", || async {
        deployments.get("wharf-acme").await.map(|_| ()).map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|error| panic!("{error}\noperator log:\n{}", operator.log()));
    plane.mark_available(a, "wharf-acme").await.unwrap();

    let domains: Api<Domain> = Api::namespaced(admin.clone(), a);
    eventually(WAIT, "Domain acme Available", || async {
        let state = domain_ready(&domains, "acme").await?;
        if state.0 == "True" && state.1 == "Available" { Ok(()) } else { Err(format!("{state:?}")) }
    })
    .await
    .unwrap_or_else(|error| panic!("{error}\noperator log:\n{}", operator.log()));
    // Its Repositories in both watched namespaces are served, and the one in the unwatched
    // namespace was never seen, so the configuration does not name it.
    for (namespace, name) in [(a, "store"), (c, "web")] {
        let repositories: Api<Repository> = Api::namespaced(admin.clone(), namespace);
        eventually(WAIT, &format!("Repository {namespace}/{name} Served"), || async {
            let state = repository_ready(&repositories, name).await?;
            if state.0 == "True" && state.1 == "Served" { Ok(()) } else { Err(format!("{state:?}")) }
        })
        .await
        .unwrap_or_else(|error| panic!("{error}\noperator log:\n{}", operator.log()));
    }
    let config = Api::<ConfigMap>::namespaced(admin.clone(), a).get("wharf-acme-config").await.unwrap();
    let rendered = &config.data.unwrap()["wharf.yaml"];
    assert!(rendered.contains("name: web") && rendered.contains("name: store"), "{rendered}");
    assert!(!rendered.contains("unseen"), "{rendered}");

    // A Repository naming a Domain outside the watched namespaces says so.
    let repositories: Api<Repository> = Api::namespaced(admin.clone(), a);
    let stray = eventually(WAIT, "Repository stray DomainNotFound", || async {
        let state = repository_ready(&repositories, "stray").await?;
        if state.1 == "DomainNotFound" { Ok(state.2) } else { Err(format!("{state:?}")) }
    })
    .await
    .unwrap_or_else(|error| panic!("{error}\noperator log:\n{}", operator.log()));
    assert!(stray.contains("outside the namespaces this operator watches (namespaces scoped-a, scoped-c)"), "{stray}");

    // The unwatched namespace is untouched: no status, no finalizer, no children, no binding.
    let other = Api::<Domain>::namespaced(admin.clone(), b).get("other").await.unwrap();
    assert!(other.status.is_none(), "{:?}", other.status);
    assert!(other.metadata.finalizers.unwrap_or_default().is_empty());
    let unseen = Api::<Repository>::namespaced(admin.clone(), b).get("unseen").await.unwrap();
    assert!(unseen.status.is_none() && unseen.metadata.finalizers.unwrap_or_default().is_empty());
    let managed = ListParams::default().labels("app.kubernetes.io/managed-by=wharf-operator");
    assert!(Api::<ConfigMap>::namespaced(admin.clone(), b).list(&managed).await.unwrap().items.is_empty());
    assert!(Api::<Deployment>::namespaced(admin.clone(), b).list(&managed).await.unwrap().items.is_empty());
    let bindings = Api::<ClusterRoleBinding>::all(admin.clone()).list(&managed).await.unwrap();
    let bound: Vec<String> = bindings
        .items
        .iter()
        .flat_map(|binding| binding.subjects.iter().flatten())
        .map(|subject| format!("{}/{}", subject.namespace.as_deref().unwrap_or_default(), subject.name))
        .collect();
    assert_eq!(bound, [format!("{a}/wharf-acme")]);

    // It said where it looks, and nothing it asked for was refused.
    let log = operator.log();
    assert!(log.contains("watching only these namespaces") && log.contains("scoped-a,scoped-c"), "{log}");
    // Word by word: a timestamp's digits may hold "403".
    let lower = log.to_lowercase();
    let refused = lower.split(|c: char| !c.is_ascii_alphanumeric()).any(|word| word == "403" || word == "forbidden");
    assert!(!refused, "{log}");
    eprintln!("reconciled two namespaces under namespaced RBAC in {:?}", started.elapsed());
}

#[test]
fn a_bad_namespace_list_stops_the_operator_with_the_reason() {
    let output = Command::new(env!("CARGO_BIN_EXE_wharf-operator"))
        .args(["run", "--watch-namespaces", "team-web,Team_Data"])
        .env("KUBECONFIG", "/nonexistent")
        .env_remove("WHARF_WATCH_NAMESPACES")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--watch-namespaces") && stderr.contains("\"Team_Data\" is not a namespace name"),
        "{stderr}"
    );
}
