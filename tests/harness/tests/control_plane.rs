//! The harness itself against the real control plane: it starts, RBAC is enforced for
//! ServiceAccount tokens, and Wharf's CRDs are accepted and served.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, ListParams};
use wharf_test_harness::{ControlPlane, apply_yaml, eventually};

#[tokio::test]
async fn admin_and_service_account_clients_see_rbac() {
    let plane = ControlPlane::shared().await;
    let admin = plane.admin_client().await.unwrap();
    let namespaces = Api::<Namespace>::all(admin.clone()).list(&ListParams::default()).await.unwrap();
    assert!(namespaces.items.iter().any(|ns| ns.metadata.name.as_deref() == Some("kube-system")));

    let account = plane.service_account_client("harness-rbac", "nobody").await.unwrap();
    let error = Api::<Secret>::namespaced(account, "harness-rbac").list(&ListParams::default()).await.unwrap_err();
    assert!(matches!(&error, kube::Error::Api(status) if status.code == 403), "{error}");
}

#[tokio::test]
async fn wharf_crds_are_accepted_and_served() {
    let plane = ControlPlane::shared().await;
    let admin = plane.admin_client().await.unwrap();
    let yaml: String =
        wharf_api::crds().iter().map(|crd| format!("---\n{}\n", serde_json::to_string(crd).unwrap())).collect();
    apply_yaml(&admin, &yaml, None).await.unwrap();
    let discovery = eventually(Duration::from_secs(30), "Wharf kinds served", || {
        let admin = admin.clone();
        async move {
            let discovery = kube::Discovery::new(admin).run().await.map_err(|e| e.to_string())?;
            let group = discovery.get("wharf.dev").ok_or("no wharf.dev group yet")?;
            let kinds: Vec<String> = group.recommended_resources().into_iter().map(|(r, _)| r.kind).collect();
            if kinds.len() == 3 { Ok(kinds) } else { Err(format!("{kinds:?}")) }
        }
    })
    .await
    .unwrap();
    assert_eq!(discovery.len(), 3);
}
