//! What a platform engineer sees with kubectl (built at the apiserver's version): `kubectl get
//! wharf` lists the three kinds with their columns, and `kubectl explain` shows the doc
//! comments of the types.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use wharf_test_harness::{ControlPlane, apply_yaml, ensure_namespace, eventually};

const NAMESPACE: &str = "kubectl-experience";

fn kubectl(plane: &ControlPlane, args: &[&str]) -> String {
    let output = plane.kubectl().unwrap().args(args).output().unwrap();
    assert!(output.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn get_wharf_lists_every_kind_and_explain_shows_the_docs() {
    let plane = ControlPlane::shared().await;
    let admin = plane.admin_client().await.unwrap();
    let crds: String =
        wharf_api::crds().iter().map(|crd| format!("---\n{}\n", serde_json::to_string(crd).unwrap())).collect();
    apply_yaml(&admin, &crds, None).await.unwrap();
    ensure_namespace(&admin, NAMESPACE).await.unwrap();
    let objects = "apiVersion: wharf.dev/v1alpha1\nkind: Domain\nmetadata: {name: acme}\nspec: {storage: {memory: {}}}\n---\n\
                   apiVersion: wharf.dev/v1alpha1\nkind: Repository\nmetadata: {name: web}\n\
                   spec: {domainRef: {name: acme}, description: Web team packages}\n---\n\
                   apiVersion: wharf.dev/v1alpha1\nkind: UpstreamPolicy\nmetadata: {name: internal-names}\n\
                   spec: {targetRefs: [{kind: Domain, name: acme}]}\n";
    eventually(Duration::from_secs(30), "Wharf kinds served", || {
        let admin = admin.clone();
        async move { apply_yaml(&admin, objects, Some(NAMESPACE)).await.map(|_| ()).map_err(|e| format!("{e:#}")) }
    })
    .await
    .unwrap();

    let listed = kubectl(plane, &["get", "wharf", "-n", NAMESPACE, "-o", "wide"]);
    for expected in ["domain.wharf.dev/acme", "repository.wharf.dev/web", "upstreampolicy.wharf.dev/internal-names"] {
        assert!(listed.contains(expected), "`kubectl get wharf` lacks {expected}:\n{listed}");
    }
    for column in ["READY", "DOMAIN", "DESCRIPTION", "AGE"] {
        assert!(listed.contains(column), "`kubectl get wharf -o wide` lacks column {column}:\n{listed}");
    }
    assert!(listed.contains("Web team packages"), "{listed}");
    let short = kubectl(plane, &["get", "wrepo", "-n", NAMESPACE]);
    assert!(short.contains("web"), "short name wrepo:\n{short}");

    let explained = eventually(Duration::from_secs(30), "kubectl explain", || async {
        let output = plane.kubectl().unwrap().args(["explain", "repository.spec.upstreams"]).output().unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() { Ok(text) } else { Err(String::from_utf8_lossy(&output.stderr).into_owned()) }
    })
    .await
    .unwrap();
    assert!(explained.contains("Other Repositories of the same Domain searched"), "{explained}");
    let domain = kubectl(plane, &["explain", "domain.spec.storage"]);
    assert!(domain.contains("Exactly one backend must be set"), "{domain}");
}
