//! Cluster mode against a real kube-apiserver: the registry reads its configuration from a
//! ConfigMap under a ServiceAccount token allowed to read only that ConfigMap, applies a new
//! revision within 5 s without a restart, and keeps the last good revision when a new one is
//! invalid or would move its storage.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use support::*;
use wharf_test_harness::{ControlPlane, apply_yaml, eventually};

const NAMESPACE: &str = "cluster-mode";

fn config_map(store: &str, anonymous_read: bool, extra: &str) -> String {
    let read = if anonymous_read { "[{kind: Anonymous}]" } else { "[]" };
    let yaml = format!(
        "apiVersion: wharf.dev/v1alpha1\nkind: Domain\nmetadata: {{name: acme, namespace: {NAMESPACE}}}\n\
         spec:\n  storage: {{filesystem: {{path: {store}}}}}\n---\n\
         apiVersion: wharf.dev/v1alpha1\nkind: Repository\nmetadata: {{name: main, namespace: {NAMESPACE}}}\n\
         spec:\n  domainRef: {{name: acme}}\n  access: {{read: {read}}}\n{extra}"
    );
    let data = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "wharf-acme-config", "namespace": NAMESPACE},
        "data": {"wharf.yaml": yaml}});
    serde_json::to_string(&data).unwrap()
}

async fn metric(metrics_url: String, name: &str) -> f64 {
    let text = reqwest::get(metrics_url).await.unwrap().text().await.unwrap();
    text.lines()
        .find(|line| line.starts_with(name))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Waits until the registry has rejected `count` revisions.
async fn wait_rejected(server: &TestServer, count: f64) {
    eventually(Duration::from_secs(5), "revision rejected", || {
        let url = server.url("/metrics");
        async move {
            let rejected = metric(url, "wharf_config_reloads_total{result=\"rejected\"}").await;
            if rejected >= count { Ok(()) } else { Err(format!("rejected={rejected}")) }
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn follows_its_config_map_and_keeps_the_last_good_revision() {
    let plane = ControlPlane::shared().await;
    let admin = plane.admin_client().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let store = data.path().join("store").display().to_string();
    wharf_test_harness::ensure_namespace(&admin, NAMESPACE).await.unwrap();
    apply_yaml(&admin, &config_map(&store, false, ""), None).await.unwrap();
    // What the operator grants the registry: read its own ConfigMap, nothing else.
    let rbac = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: registry, namespace: {NAMESPACE}}}\n\
         rules: [{{apiGroups: [\"\"], resources: [configmaps], resourceNames: [wharf-acme-config], verbs: [get, list, watch]}}]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: registry, namespace: {NAMESPACE}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: registry}}\n\
         subjects: [{{kind: ServiceAccount, name: registry, namespace: {NAMESPACE}}}]\n"
    );
    apply_yaml(&admin, &rbac, None).await.unwrap();
    let kubeconfig = plane.service_account_kubeconfig(NAMESPACE, "registry").await.unwrap();

    let server = TestServer::start_in_env(
        data.path(),
        None,
        &["--config-map", &format!("{NAMESPACE}/wharf-acme-config")],
        &[("KUBECONFIG", kubeconfig.as_os_str())],
    );
    let packument = server.url("/npm/main/left-pad");
    assert_eq!(http_status(&packument).unwrap(), 401, "private until the ConfigMap says otherwise");

    // Anonymous read granted: served within 5 s, same process.
    let changed = Instant::now();
    apply_yaml(&admin, &config_map(&store, true, ""), None).await.unwrap();
    let took = eventually(Duration::from_secs(5), "anonymous read applied", || {
        let status = http_status(&packument).unwrap();
        async move { if status == 404 { Ok(changed.elapsed()) } else { Err(format!("status {status}")) } }
    })
    .await
    .unwrap();
    eprintln!("configuration change applied after {took:?}");

    // An invalid revision (an upstream that does not exist) is rejected; the last good one
    // keeps serving.
    let broken = "  upstreams: [{name: missing}]\n";
    apply_yaml(&admin, &config_map(&store, false, broken), None).await.unwrap();
    wait_rejected(&server, 1.0).await;
    assert_eq!(http_status(&packument).unwrap(), 404, "the last good revision still serves");
    assert!(server.log_lines().iter().any(|line| line.contains("missing")), "the log names the problem");

    // Storage is opened once: a revision moving it is refused, not half-applied.
    let moved = data.path().join("elsewhere").display().to_string();
    apply_yaml(&admin, &config_map(&moved, false, ""), None).await.unwrap();
    wait_rejected(&server, 2.0).await;
    assert_eq!(http_status(&packument).unwrap(), 404);
    assert!(server.log_lines().iter().any(|line| line.contains("storage changes take effect")));
}
