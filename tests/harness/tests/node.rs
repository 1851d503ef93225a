//! The stand-in node against the real apiserver: Jobs run in the background with projected
//! ServiceAccount tokens and emptyDirs and `kubectl wait` sees them complete or fail; a
//! Deployment of the registry is reached through a Service name by curl and by the real npm
//! (publish, then install after the Deployment was replaced, from the same claim); an
//! unknown Service is a 502.
//!
//! One test: a node runs the Jobs of every namespace, so two nodes in one test binary would
//! both run them.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use wharf_test_harness::{ControlPlane, Kubelet, Node, apply_yaml, ensure_namespace, eventually, workspace_binary};

/// A Job running `script` under `sh -c`, with `extra` appended to its pod spec.
fn job(namespace: &str, name: &str, script: &str, extra: &str) -> String {
    let script = serde_json::to_string(script).unwrap();
    format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  backoffLimit: 0\n  \
         template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: main\n        image: busybox\n        \
         command: [sh, -c]\n        args: [{script}]\n{extra}"
    )
}

/// `kubectl wait --for=condition=CONDITION OBJECT` (`job/NAME` when `object` names no kind),
/// which must succeed.
async fn kubectl_wait(plane: &ControlPlane, node: &Node, namespace: &str, object: &str, condition: &str) {
    let (object, name) = match object.split_once('/') {
        Some((_, name)) => (object.to_owned(), name),
        None => (format!("job/{object}"), object),
    };
    let mut kubectl = tokio::process::Command::from(plane.kubectl().unwrap());
    let output = kubectl
        .args(["wait", "-n", namespace, &format!("--for=condition={condition}"), &object])
        .arg("--timeout=60s")
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "kubectl wait --for=condition={condition} {object}: {}{}\n--- its log\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        node.pod_log(namespace, name)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_runs_jobs_and_deployments_and_proxies_services() {
    let plane = ControlPlane::shared().await;
    let admin = plane.admin_client().await.unwrap();
    let ns = "node-test";
    ensure_namespace(&admin, ns).await.unwrap();
    let kubelet = Kubelet::new(plane, workspace_binary("wharf-registry").unwrap());
    let node = kubelet.start_node().await.unwrap();

    // The registry as a Deployment on a claim, behind a Service with a named targetPort.
    let registry = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: registry-admin, namespace: {ns}}}\nstringData: {{token: node-test-admin}}\n---\n\
         apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: registry, namespace: {ns}}}\nspec:\n  \
         selector: {{matchLabels: {{app: registry}}}}\n  template:\n    metadata: {{labels: {{app: registry}}}}\n    spec:\n      \
         containers:\n      - name: registry\n        image: registry.example:5000/wharf/wharf-registry:0.1.0\n        \
         args: [serve, --listen, '0.0.0.0:8080', --data, /var/lib/wharf]\n        ports: [{{name: http, containerPort: 8080}}]\n        \
         env: [{{name: WHARF_ADMIN_TOKEN, valueFrom: {{secretKeyRef: {{name: registry-admin, key: token}}}}}}]\n        \
         volumeMounts: [{{name: data, mountPath: /var/lib/wharf}}]\n      \
         volumes: [{{name: data, persistentVolumeClaim: {{claimName: registry-data}}}}]\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: registry, namespace: {ns}}}\nspec:\n  selector: {{app: registry}}\n  \
         ports: [{{port: 8080, targetPort: http}}]\n"
    );
    apply_yaml(&admin, &registry, None).await.unwrap();

    let token_job = job(
        ns,
        "token",
        "test -s /var/run/secrets/wharf/token && cd /work && echo hello > greeting && test -f /work/greeting \
         && test \"$(cat /var/run/secrets/kubernetes.io/serviceaccount/namespace)\" = node-test \
         && echo \"token=$(cat /var/run/secrets/wharf/token)\"",
        "        workingDir: /work\n        volumeMounts:\n        - {name: work, mountPath: /work}\n        \
         - {name: wharf-token, mountPath: /var/run/secrets/wharf, readOnly: true}\n      \
         serviceAccountName: release-bot\n      volumes:\n      - {name: work, emptyDir: {}}\n      \
         - name: wharf-token\n        projected:\n          sources:\n          \
         - serviceAccountToken: {audience: wharf.dev, expirationSeconds: 3600, path: token}\n",
    );
    let failing_job = job(ns, "exits-3", "echo failing on purpose; exit 3", "");
    let reachable = job(ns, "curl-service", &format!("curl -fsS http://registry.{ns}.svc:8080/readyz"), "");
    let unknown = job(ns, "curl-unknown", &format!("curl -fsS http://nothing.{ns}.svc:8080/readyz"), "");
    for yaml in [&token_job, &failing_job] {
        apply_yaml(&admin, yaml, None).await.unwrap();
    }
    // As in a cluster, a Service reaches the registry once its pod is ready.
    kubectl_wait(plane, &node, ns, "deployment/registry", "available").await;
    for yaml in [&reachable, &unknown] {
        apply_yaml(&admin, yaml, None).await.unwrap();
    }

    kubectl_wait(plane, &node, ns, "token", "complete").await;
    let log = node.pod_log(ns, "token");
    let token = log.lines().find_map(|line| line.strip_prefix("token=")).unwrap_or_else(|| panic!("{log}"));
    let payload = token.split('.').nth(1).unwrap();
    let claims: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(claims["aud"], serde_json::json!(["wharf.dev"]), "{claims}");
    assert_eq!(claims["sub"], "system:serviceaccount:node-test:release-bot", "{claims}");

    kubectl_wait(plane, &node, ns, "exits-3", "failed").await;
    kubectl_wait(plane, &node, ns, "curl-service", "complete").await;
    kubectl_wait(plane, &node, ns, "curl-unknown", "failed").await;
    let log = node.pod_log(ns, "curl-unknown");
    assert!(log.contains("502"), "{log}");

    // The real npm through the proxy: a token minted with a POST, a publish (PUT with a
    // body), then, after the Deployment was replaced, an install from the same claim.
    let npm_environment = "        env:\n        \
         - {name: WHARF_ADMIN_TOKEN, valueFrom: {secretKeyRef: {name: registry-admin, key: token}}}\n        \
         - {name: npm_config_update_notifier, value: 'false'}\n        - {name: npm_config_audit, value: 'false'}\n        \
         - {name: npm_config_fund, value: 'false'}\n        workingDir: /work\n        \
         volumeMounts: [{name: work, mountPath: /work}]\n      volumes: [{name: work, emptyDir: {}}]\n";
    let base = format!("http://registry.{ns}.svc:8080");
    let login = format!(
        "TOKEN=$(curl -fsS -X POST {base}/api/v1/auth/token -H \"Authorization: Bearer $WHARF_ADMIN_TOKEN\" \
         -H 'content-type: application/json' -d '{{\"repositories\":[\"*\"],\"permissions\":[\"read\",\"publish\"]}}' \
         | sed -n 's/.*\"token\":\"\\([^\"]*\\)\".*/\\1/p') && test -n \"$TOKEN\" && \
         printf 'registry={base}/npm/main/\\n//registry.{ns}.svc:8080/npm/main/:_authToken=%s\\n' \"$TOKEN\" > .npmrc && "
    );
    let publish = format!(
        "{login}printf '{{\"name\": \"node-greeting\", \"version\": \"1.0.0\", \"main\": \"index.js\"}}' > package.json && \
         echo \"module.exports = 'hello through the node';\" > index.js && npm publish"
    );
    apply_yaml(&admin, &job(ns, "npm-publish", &publish, npm_environment), None).await.unwrap();
    kubectl_wait(plane, &node, ns, "npm-publish", "complete").await;

    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), ns);
    let restart = serde_json::json!({"spec": {"template": {"metadata": {"annotations": {"restarted": "1"}}}}});
    deployments.patch("registry", &PatchParams::default(), &Patch::Merge(restart)).await.unwrap();
    eventually(Duration::from_secs(30), "the replaced registry is available", || async {
        let deployment = deployments.get("registry").await.map_err(|e| e.to_string())?;
        let observed = deployment.status.and_then(|status| status.observed_generation);
        if observed == Some(2) { Ok(()) } else { Err(format!("observedGeneration {observed:?}")) }
    })
    .await
    .unwrap_or_else(|error| panic!("{error}\n{}", node.all_logs()));

    let install = format!(
        "{login}printf '{{\"name\": \"consumer\", \"version\": \"0.0.0\", \"private\": true}}' > package.json && \
         npm install node-greeting && grep -q 'hello through the node' node_modules/node-greeting/index.js"
    );
    apply_yaml(&admin, &job(ns, "npm-install", &install, npm_environment), None).await.unwrap();
    kubectl_wait(plane, &node, ns, "npm-install", "complete").await;
    // The claim is the kubelet's folder, not the mount path as written.
    let claim = kubelet.claim_folder(ns, "registry-data");
    assert!(std::fs::read_dir(&claim).unwrap().next().is_some(), "{} is empty", claim.display());
    assert!(!std::path::Path::new("/var/lib/wharf").exists());
    assert!(
        node.events().iter().any(|event| event.contains("generation Some(2) replaces Some(1)")),
        "{:?}",
        node.events()
    );
}
