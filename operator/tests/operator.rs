//! The operator against a real kube-apiserver and etcd (the test harness): CRDs installed,
//! `wharf-operator run` as a child process under exactly `operator/rbac/cluster-role.yaml`
//! and its guard policy (as ServiceAccount wharf-system/wharf-operator), Wharf objects applied, children,
//! status, events, drift, invalid objects and deletion checked. Does I/O (processes,
//! network on loopback).
//!
//! One operator serves every test of this binary; tests keep apart by namespace.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, Resource};
use tokio::sync::OnceCell;
use wharf_api::{Domain, DomainConfig, Repository, UpstreamPolicy, find_condition};
use wharf_test_harness::{ControlPlane, apply_yaml, ensure_namespace, eventually, install_crds};

const WAIT: Duration = Duration::from_secs(30);

/// The operator process, stopped when this test binary exits (its supervisor reads our end
/// of a pipe and kills the operator when it closes, also on a panic or a kill).
struct Operator {
    _stdin: Mutex<Option<ChildStdin>>,
    _supervisor: Mutex<Child>,
    log: std::path::PathBuf,
}

static OPERATOR: OnceCell<Operator> = OnceCell::const_new();

/// The control plane with the CRDs and the operator running; the admin client.
async fn operator() -> Client {
    let plane = ControlPlane::shared().await;
    let admin = plane.admin_client().await.unwrap();
    OPERATOR
        .get_or_init(|| async {
            let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            install_crds(&admin).await.unwrap();
            ensure_namespace(&admin, "wharf-system").await.unwrap();
            for file in ["cluster-role.yaml", "service-account.yaml", "cluster-role-binding-guard.yaml"] {
                let yaml = std::fs::read_to_string(root.join("operator/rbac").join(file)).unwrap();
                apply_yaml(&admin, &yaml, None).await.unwrap();
            }
            let kubeconfig = plane.service_account_kubeconfig("wharf-system", "wharf-operator").await.unwrap();
            let log = tempfile::Builder::new().prefix("wharf-operator-").suffix(".log").tempfile().unwrap().keep().unwrap().1;
            let script = format!(
                "{bin} run >{log} 2>&1 </dev/null & pid=$!\ncat >/dev/null\nkill $pid 2>/dev/null\nfor i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do kill -0 $pid 2>/dev/null || break; sleep 1; done\nkill -9 $pid 2>/dev/null\nrm -f {log}",
                bin = env!("CARGO_BIN_EXE_wharf-operator"),
                log = log.display()
            );
            let mut supervisor = Command::new("sh")
                .args(["-c", &script])
                .env("KUBECONFIG", kubeconfig)
                .env("RUST_LOG", std::env::var("WHARF_TEST_OPERATOR_LOG").unwrap_or_else(|_| "info,kube=warn".to_owned()))
                .stdin(Stdio::piped())
                .spawn()
                .unwrap();
            let stdin = supervisor.stdin.take();
            Operator { _stdin: Mutex::new(stdin), _supervisor: Mutex::new(supervisor), log }
        })
        .await;
    admin
}

/// The operator's log, for failure messages (without kube's certificate notices).
fn operator_log() -> String {
    let Some(operator) = OPERATOR.get() else { return String::new() };
    let text = std::fs::read_to_string(&operator.log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|line| !line.contains("cert bypassed")).collect();
    lines[lines.len().saturating_sub(
        std::env::var("WHARF_TEST_OPERATOR_LOG_LINES").ok().and_then(|n| n.parse().ok()).unwrap_or(15),
    )..]
        .join("\n")
}

/// `(status, reason, message)` of the `Ready` condition, and whether Stalled is true.
fn ready_of(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> Option<(String, String, String, bool)> {
    let ready = find_condition(conditions, "Ready")?;
    let stalled = find_condition(conditions, "Stalled").is_some_and(|stalled| stalled.status == "True");
    Some((ready.status.clone(), ready.reason.clone(), ready.message.clone(), stalled))
}

async fn repository_ready(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<(String, String, String, bool), String> {
    let api: Api<Repository> = Api::namespaced(client.clone(), namespace);
    let repository = api.get(name).await.map_err(|e| e.to_string())?;
    let status = repository.status.ok_or("no status")?;
    if status.observed_generation != repository.metadata.generation {
        return Err(format!("observedGeneration {:?}", status.observed_generation));
    }
    ready_of(&status.conditions).ok_or_else(|| "no Ready".to_owned())
}

/// Waits until Repository `namespace/name` reports `reason`, and returns its message.
async fn wait_repository(client: &Client, namespace: &str, name: &str, reason: &str, stalled: bool) -> String {
    let result = eventually(WAIT, &format!("Repository {namespace}/{name} reports {reason}"), || async {
        let state = repository_ready(client, namespace, name).await?;
        if state.1 == reason && state.3 == stalled { Ok(state.2) } else { Err(format!("{state:?}")) }
    })
    .await;
    result.unwrap_or_else(|error| panic!("{error}\noperator log:\n{}", operator_log()))
}

async fn wait_domain(client: &Client, namespace: &str, name: &str, reason: &str) -> Domain {
    let api: Api<Domain> = Api::namespaced(client.clone(), namespace);
    let result = eventually(WAIT, &format!("Domain {namespace}/{name} reports {reason}"), || async {
        let domain = api.get(name).await.map_err(|e| e.to_string())?;
        let status = domain.status.clone().ok_or("no status")?;
        let state = ready_of(&status.conditions).ok_or("no Ready")?;
        let current = status.observed_generation == domain.metadata.generation;
        if current && state.1 == reason { Ok(domain) } else { Err(format!("{state:?} current={current}")) }
    })
    .await;
    result.unwrap_or_else(|error| panic!("{error}\noperator log:\n{}", operator_log()))
}

fn labels(domain: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "wharf-registry".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), domain.to_owned()),
        ("app.kubernetes.io/managed-by".to_owned(), "wharf-operator".to_owned()),
        ("app.kubernetes.io/component".to_owned(), "registry".to_owned()),
    ])
}

#[tokio::test]
async fn a_domain_becomes_a_registry_with_status_events_and_drift_repair() {
    let client = operator().await;
    let ns = "it-basic";
    ensure_namespace(&client, ns).await.unwrap();
    let world = format!(
        r#"
apiVersion: wharf.dev/v1alpha1
kind: Domain
metadata: {{name: acme, namespace: {ns}}}
spec:
  storage: {{memory: {{}}}}
  externalConnections:
    - {{name: npm-public, format: npm, url: "http://127.0.0.1:9/"}}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {{name: store, namespace: {ns}}}
spec: {{domainRef: {{name: acme}}, externalConnection: npm-public, allowedDownstreams: [{{namespace: {ns}, name: web}}]}}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {{name: web, namespace: {ns}}}
spec:
  domainRef: {{name: acme}}
  upstreams: [{{name: store}}]
  access: {{read: [{{kind: Anonymous}}]}}
---
apiVersion: wharf.dev/v1alpha1
kind: UpstreamPolicy
metadata: {{name: internal-names, namespace: {ns}}}
spec:
  targetRefs: [{{kind: Domain, name: acme}}]
  rules: [{{patterns: ["/npm/acme/*"], externalUpstream: {{mode: Block}}}}]
"#
    );
    apply_yaml(&client, &world, None).await.unwrap();

    // Without pods the registry is not available yet: Reconciling, with the reason.
    let domain = wait_domain(&client, ns, "acme", "DeploymentNotAvailable").await;
    let status = domain.status.clone().unwrap();
    assert!(find_condition(&status.conditions, "Reconciling").is_some_and(|c| c.status == "True"));
    assert_eq!(status.endpoint.as_deref(), Some("http://wharf-acme.it-basic.svc:8080"));
    let uid = domain.metadata.uid.clone().unwrap();

    // Children: owned by the Domain, labelled, the Deployment restricted.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let deployment = deployments.get("wharf-acme").await.unwrap();
    for metadata in [
        &deployment.metadata,
        &Api::<Service>::namespaced(client.clone(), ns).get("wharf-acme").await.unwrap().metadata,
        &Api::<ConfigMap>::namespaced(client.clone(), ns).get("wharf-acme-config").await.unwrap().metadata,
        &Api::<Secret>::namespaced(client.clone(), ns).get("wharf-acme-signing-key").await.unwrap().metadata,
        &Api::<Secret>::namespaced(client.clone(), ns).get("wharf-acme-admin-token").await.unwrap().metadata,
    ] {
        let owner = &metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str(), owner.controller), ("Domain", uid.as_str(), Some(true)));
        for (key, value) in labels("acme") {
            assert_eq!(metadata.labels.as_ref().unwrap().get(&key), Some(&value), "{:?} {key}", metadata.name);
        }
    }
    let binding: Api<ClusterRoleBinding> = Api::all(client.clone());
    let binding = binding.get("wharf-it-basic-acme-auth-delegator").await.unwrap();
    assert_eq!(binding.role_ref.name, "system:auth-delegator");
    let pod = deployment.spec.template.spec.as_ref().unwrap();
    let security = pod.containers[0].security_context.as_ref().unwrap();
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.capabilities.as_ref().unwrap().drop.as_deref(), Some(&["ALL".to_owned()][..]));
    assert_eq!(pod.security_context.as_ref().unwrap().seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    // The objects were applied together, but the operator may render the
    // Domain before it has seen the policy: the configuration converges.
    let yaml = eventually(WAIT, "the rendered configuration has both Repositories and the policy", || async {
        let map = config_maps.get("wharf-acme-config").await.map_err(|e| e.to_string())?;
        let yaml = map.data.unwrap_or_default().get("wharf.yaml").cloned().unwrap_or_default();
        let config = DomainConfig::from_yaml_str("wharf.yaml", &yaml).map_err(|e| e.to_string())?;
        let counts = (config.repositories.len(), config.policies.len());
        if counts == (2, 1) { Ok(yaml) } else { Err(format!("{} Repositories, {} policies", counts.0, counts.1)) }
    })
    .await
    .unwrap();
    wait_repository(&client, ns, "web", "DomainNotReady", false).await;

    // The kubelet's part: the Deployment becomes available.
    ControlPlane::shared().await.mark_available(ns, "wharf-acme").await.unwrap();
    wait_domain(&client, ns, "acme", "Available").await;
    let message = wait_repository(&client, ns, "web", "Served", false).await;
    assert!(message.contains("http://wharf-acme.it-basic.svc:8080/npm/web/"), "{message}");
    let web: Api<Repository> = Api::namespaced(client.clone(), ns);
    let endpoints = web.get("web").await.unwrap().status.unwrap().endpoints;
    assert_eq!(endpoints["pypi"], "http://wharf-acme.it-basic.svc:8080/pypi/web/simple/");
    let policies: Api<UpstreamPolicy> = Api::namespaced(client.clone(), ns);
    eventually(WAIT, "the policy is attached", || async {
        let policy = policies.get("internal-names").await.map_err(|e| e.to_string())?;
        let state = ready_of(&policy.status.ok_or("no status")?.conditions).ok_or("no Ready")?;
        if state.1 == "Attached" { Ok(()) } else { Err(format!("{state:?}")) }
    })
    .await
    .unwrap();

    // Events: the Domain's move to Available was announced.
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    eventually(WAIT, "an Available event for the Domain", || async {
        let list = events.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
        let reasons: Vec<String> = list
            .items
            .iter()
            .filter(|event| event.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("acme"))
            .filter_map(|event| event.reason.clone())
            .collect();
        if reasons.iter().any(|reason| reason == "Available") { Ok(()) } else { Err(format!("{reasons:?}")) }
    })
    .await
    .unwrap();

    // Settled: no writes to anything in the namespace for 10 s.
    assert_no_writes(&client, ns, Duration::from_secs(10)).await;

    // Drift: a deleted Service and an edited configuration come back.
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    services.delete("wharf-acme", &DeleteParams::default()).await.unwrap();
    config_maps
        .patch(
            "wharf-acme-config",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"data": {"wharf.yaml": "edited"}})),
        )
        .await
        .unwrap();
    eventually(WAIT, "the Service and the configuration are restored", || async {
        services.get("wharf-acme").await.map_err(|e| e.to_string())?;
        let data = config_maps.get("wharf-acme-config").await.map_err(|e| e.to_string())?.data.unwrap_or_default();
        if data.get("wharf.yaml") == Some(&yaml) { Ok(()) } else { Err("configuration not restored".to_owned()) }
    })
    .await
    .unwrap_or_else(|error| panic!("{error}\noperator log:\n{}", operator_log()));

    // A spec change is observed: the new generation is reported.
    let domains: Api<Domain> = Api::namespaced(client.clone(), ns);
    domains
        .patch(
            "acme",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"registry": {"replicas": 2}}})),
        )
        .await
        .unwrap();
    eventually(WAIT, "a PodDisruptionBudget from 2 replicas", || async {
        let budgets: Api<k8s_openapi::api::policy::v1::PodDisruptionBudget> = Api::namespaced(client.clone(), ns);
        budgets.get("wharf-acme").await.map(|_| ()).map_err(|e| e.to_string())
    })
    .await
    .unwrap();
    let domain = domains.get("acme").await.unwrap();
    eventually(WAIT, "observedGeneration follows", || async {
        let current = domains.get("acme").await.map_err(|e| e.to_string())?;
        let observed = current.status.and_then(|status| status.observed_generation);
        if observed == domain.metadata.generation { Ok(()) } else { Err(format!("{observed:?}")) }
    })
    .await
    .unwrap();
    // A rollout is Ready only when complete: one pod of the new template and the old ones
    // still serving (a crash-looping ReplicaSet) is not Ready; past the progress deadline it
    // is Stalled, with the Deployment controller's reason.
    let deployment = deployments.get("wharf-acme").await.unwrap();
    let generation = deployment.metadata.generation;
    let rollout = |updated: i32, deadline_passed: bool| {
        let conditions = if deadline_passed {
            serde_json::json!([{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                                "message": "ReplicaSet \"wharf-acme-new\" has timed out progressing."}])
        } else {
            serde_json::json!([])
        };
        serde_json::json!({"status": {"observedGeneration": generation, "replicas": 3, "updatedReplicas": updated,
                                      "readyReplicas": 2, "availableReplicas": 2, "conditions": conditions}})
    };
    deployments.patch_status("wharf-acme", &PatchParams::default(), &Patch::Merge(rollout(1, false))).await.unwrap();
    eventually(WAIT, "a rollout in progress reported", || async {
        let domain = domains.get("acme").await.map_err(|e| e.to_string())?;
        let (ready, reason, message, _) = ready_of(&domain.status.ok_or("no status")?.conditions).ok_or("no Ready")?;
        let reported = ready == "False"
            && reason == "DeploymentNotAvailable"
            && message.contains("1 of 2 registry pods updated")
            && message.contains("older template");
        if reported { Ok(()) } else { Err(format!("{ready} {reason}: {message}")) }
    })
    .await
    .unwrap();
    deployments.patch_status("wharf-acme", &PatchParams::default(), &Patch::Merge(rollout(1, true))).await.unwrap();
    let domain = wait_domain(&client, ns, "acme", "ProgressDeadlineExceeded").await;
    assert!(find_condition(&domain.status.unwrap().conditions, "Stalled").is_some_and(|c| c.status == "True"));
    ControlPlane::shared().await.mark_available(ns, "wharf-acme").await.unwrap();
    wait_domain(&client, ns, "acme", "Available").await;

    // A new signing key (the Secret deleted: the operator makes a new one) rolls the pods:
    // the template's digest of the secret values changes, so every replica gets the new key
    // together.
    let template_digest = |deployment: &Deployment| {
        deployment.spec.template.metadata.as_ref().unwrap().annotations.as_ref().unwrap()["wharf.dev/secrets-checksum"]
            .clone()
    };
    let before = template_digest(&deployments.get("wharf-acme").await.unwrap());
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let old_key = secrets.get("wharf-acme-signing-key").await.unwrap().data.unwrap()["key"].clone();
    secrets.delete("wharf-acme-signing-key", &DeleteParams::default()).await.unwrap();
    eventually(WAIT, "a new signing key, and the pod template following it", || async {
        let secret = secrets.get("wharf-acme-signing-key").await.map_err(|e| e.to_string())?;
        if secret.data.unwrap_or_default().get("key") == Some(&old_key) {
            return Err("the old key".to_owned());
        }
        let after = template_digest(&deployments.get("wharf-acme").await.map_err(|e| e.to_string())?);
        if after != before { Ok(()) } else { Err("the template still carries the old digest".to_owned()) }
    })
    .await
    .unwrap();
}

/// Fails if any object in `namespace` that the operator manages changes within `window`.
async fn assert_no_writes(client: &Client, namespace: &str, window: Duration) {
    async fn versions<K>(client: &Client, namespace: &str) -> Vec<(String, String)>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(client.clone(), namespace);
        let list = api.list(&ListParams::default()).await.unwrap();
        list.items
            .iter()
            .map(|item| {
                let meta = item.meta();
                (
                    format!("{}/{}", K::kind(&()), meta.name.clone().unwrap_or_default()),
                    meta.resource_version.clone().unwrap_or_default(),
                )
            })
            .collect()
    }
    async fn snapshot(client: &Client, namespace: &str) -> Vec<(String, String)> {
        let mut all = Vec::new();
        all.extend(versions::<Domain>(client, namespace).await);
        all.extend(versions::<Repository>(client, namespace).await);
        all.extend(versions::<UpstreamPolicy>(client, namespace).await);
        all.extend(versions::<ConfigMap>(client, namespace).await);
        all.extend(versions::<Secret>(client, namespace).await);
        all.extend(versions::<Service>(client, namespace).await);
        all.extend(versions::<Deployment>(client, namespace).await);
        all.extend(versions::<Event>(client, namespace).await);
        all.sort();
        all
    }
    let before = snapshot(client, namespace).await;
    tokio::time::sleep(window).await;
    let after = snapshot(client, namespace).await;
    let changed: Vec<_> = after.iter().filter(|entry| !before.contains(entry)).collect();
    assert!(changed.is_empty(), "writes in steady state: {changed:?}\noperator log:\n{}", operator_log());
}

#[tokio::test]
async fn invalid_objects_are_stalled_with_a_reason_a_person_can_act_on() {
    let client = operator().await;
    let ns = "it-invalid";
    for namespace in [ns, "it-invalid-admitted", "it-invalid-stranger"] {
        ensure_namespace(&client, namespace).await.unwrap();
    }
    apply_yaml(
        &client,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: it-invalid-admitted, labels: {wharf.dev/domain: picky}}\n",
        None,
    )
    .await
    .unwrap();
    let repository = |namespace: &str, name: &str, extra: &str| {
        format!(
            "---\napiVersion: wharf.dev/v1alpha1\nkind: Repository\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  domainRef: {{name: picky, namespace: {ns}}}\n{extra}\n"
        )
    };
    let domain = format!(
        "apiVersion: wharf.dev/v1alpha1\nkind: Domain\nmetadata: {{name: picky, namespace: {ns}}}\nspec:\n  storage: {{memory: {{}}}}\n  externalConnections: [{{name: npm-public, format: npm, url: \"http://127.0.0.1:9/\"}}]\n  repositoryNamespaces: {{from: Selector, selector: {{matchLabels: {{wharf.dev/domain: picky}}}}}}\n"
    );
    apply_yaml(&client, &domain, None).await.unwrap();
    // The older of two Repositories named `shared` is applied first.
    apply_yaml(&client, &repository("it-invalid-admitted", "shared", ""), None).await.unwrap();
    let rest = [
        repository("it-invalid-stranger", "stranger", ""),
        repository("it-invalid-admitted", "loop-a", "  upstreams: [{name: loop-b}]"),
        repository("it-invalid-admitted", "loop-b", "  upstreams: [{name: loop-a}]"),
        repository("it-invalid-admitted", "conn", "  externalConnection: pypi-public"),
        repository("it-invalid-admitted", "dangling", "  upstreams: [{name: ghost}]"),
        format!(
            "---\napiVersion: wharf.dev/v1alpha1\nkind: Repository\nmetadata: {{name: orphan, namespace: {ns}}}\nspec: {{domainRef: {{name: nowhere}}}}\n"
        ),
    ]
    .concat();
    apply_yaml(&client, &rest, None).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The newer `shared`, in a namespace the Domain admits (its own).
    apply_yaml(
        &client,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: it-invalid, labels: {wharf.dev/domain: picky}}\n",
        None,
    )
    .await
    .unwrap();
    apply_yaml(&client, &repository(ns, "shared", ""), None).await.unwrap();

    let message = wait_repository(&client, "it-invalid-stranger", "stranger", "NamespaceNotAdmitted", true).await;
    assert!(message.contains("label the namespace"), "{message}");
    let message = wait_repository(&client, "it-invalid-admitted", "loop-a", "UpstreamCycle", true).await;
    assert!(message.contains("loop-a -> loop-b -> loop-a"), "{message}");
    wait_repository(&client, "it-invalid-admitted", "loop-b", "UpstreamCycle", true).await;
    let message = wait_repository(&client, "it-invalid-admitted", "conn", "UnknownExternalConnection", true).await;
    assert!(message.contains("npm-public"), "{message}");
    wait_repository(&client, "it-invalid-admitted", "dangling", "UpstreamNotFound", true).await;
    let message = wait_repository(&client, ns, "orphan", "DomainNotFound", true).await;
    assert!(message.contains("Domain it-invalid/nowhere"), "{message}");
    let message = wait_repository(&client, ns, "shared", "NameConflict", true).await;
    assert!(message.contains("Repository it-invalid-admitted/shared already uses the name"), "{message}");
    wait_repository(&client, "it-invalid-admitted", "shared", "DomainNotReady", false).await;

    // Fixing the namespace's labels admits the stranger.
    apply_yaml(
        &client,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: it-invalid-stranger, labels: {wharf.dev/domain: picky}}\n",
        None,
    )
    .await
    .unwrap();
    wait_repository(&client, "it-invalid-stranger", "stranger", "DomainNotReady", false).await;
}

/// A Domain that encrypts: its key Secret is read as the registry reads it, so a Secret
/// without a usable current key stops the rollout with a message, and a good one is
/// mounted into the pods, its contents part of the template's checksum (a rotation rolls).
#[tokio::test]
async fn encryption_keys_are_checked_mounted_and_rolled() {
    let client = operator().await;
    let ns = "it-sealed";
    ensure_namespace(&client, ns).await.unwrap();
    let domain = format!(
        "apiVersion: wharf.dev/v1alpha1\nkind: Domain\nmetadata: {{name: sealed, namespace: {ns}}}\nspec:\n  storage: {{memory: {{}}}}\n  encryption: {{keySecretRef: {{name: sealed-keys}}}}\n"
    );
    apply_yaml(&client, &domain, None).await.unwrap();
    wait_domain(&client, ns, "sealed", "SecretNotFound").await;
    let key = |byte: u8| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode([byte; 32])
    };
    let secret = |current: &str, keys: &[(&str, String)]| {
        let entries: String = keys.iter().map(|(id, value)| format!("  {id}: \"{value}\"\n")).collect();
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: sealed-keys, namespace: {ns}}}\nstringData:\n  current: {current}\n{entries}"
        )
    };
    apply_yaml(&client, &secret("k2", &[("k1", key(1))]), None).await.unwrap();
    let stalled = wait_domain(&client, ns, "sealed", "EncryptionKeysInvalid").await;
    let ready = ready_of(&stalled.status.unwrap().conditions).unwrap();
    assert!(ready.2.contains("names key \"k2\"") && ready.2.contains("sealed-keys"), "{ready:?}");

    apply_yaml(&client, &secret("k1", &[("k1", key(1))]), None).await.unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let checksum = |deployment: &Deployment| {
        deployment
            .spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get("wharf.dev/secrets-checksum").cloned())
    };
    let first = eventually(WAIT, "the Deployment mounts the key Secret", || async {
        let deployment = deployments.get("wharf-sealed").await.map_err(|e| e.to_string())?;
        let pod = deployment.spec.template.spec.as_ref().ok_or("no pod spec")?;
        let mounted = pod.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .any(|mount| mount.mount_path == "/var/run/wharf/secrets/sealed-keys");
        if mounted {
            checksum(&deployment).ok_or_else(|| "no checksum".to_owned())
        } else {
            Err("not mounted".to_owned())
        }
    })
    .await
    .unwrap();
    // Rotation: a new current key changes the template, so the pods roll onto it.
    apply_yaml(&client, &secret("k2", &[("k1", key(1)), ("k2", key(2))]), None).await.unwrap();
    eventually(WAIT, "a rotated key rolls the pods", || async {
        let deployment = deployments.get("wharf-sealed").await.map_err(|e| e.to_string())?;
        match checksum(&deployment) {
            Some(now) if now != first => Ok(()),
            other => Err(format!("checksum {other:?}")),
        }
    })
    .await
    .unwrap();
}

/// The registry reports usage in the one ConfigMap it may patch; the operator shows it in
/// the Domain's and each Repository's status (the `Size` columns).
#[tokio::test]
async fn usage_the_registry_reports_shows_in_status() {
    let client = operator().await;
    let ns = "it-usage";
    ensure_namespace(&client, ns).await.unwrap();
    let objects = format!(
        "apiVersion: wharf.dev/v1alpha1\nkind: Domain\nmetadata: {{name: counted, namespace: {ns}}}\nspec:\n  storage: {{memory: {{}}}}\n---\n\
         apiVersion: wharf.dev/v1alpha1\nkind: Repository\nmetadata: {{name: web, namespace: {ns}}}\nspec: {{domainRef: {{name: counted}}}}\n"
    );
    apply_yaml(&client, &objects, None).await.unwrap();
    wait_domain(&client, ns, "counted", "DeploymentNotAvailable").await;

    // As the registry's ServiceAccount: the usage ConfigMap, and nothing else.
    let plane = ControlPlane::shared().await;
    let kubeconfig = plane.service_account_kubeconfig(ns, "wharf-counted").await.unwrap();
    let registry = wharf_test_harness::client_for(&std::fs::read_to_string(kubeconfig).unwrap()).await.unwrap();
    let config_maps: Api<ConfigMap> = Api::namespaced(registry, ns);
    let report = serde_json::json!({"repositories": {"web": {"packages": 2, "versions": 3, "bytes": 3 * 1024 * 1024,
        "lastPublished": "2026-12-05T10:00:00Z"}}, "blobs": 2, "storedBytes": 2 * 1024 * 1024, "measuredAt": "2026-12-06T00:00:00Z"});
    // A copy the registry reports, as it does right after one: an Event on the Repository.
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let copy = serde_json::json!([{"id": "c1", "at": now, "kind": "Copied", "repository": "web", "format": "npm",
        "package": "app", "versions": ["1.0.0", "1.1.0"], "by": "release-bot", "source": "dev"}]);
    let patch =
        serde_json::json!({"data": {"usage.json": report.to_string(), "actions-registry-1.json": copy.to_string()}});
    config_maps.patch("wharf-counted-usage", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let refused = config_maps.patch("wharf-counted-config", &PatchParams::default(), &Patch::Merge(&patch)).await;
    assert!(refused.is_err(), "the registry may not write its configuration");

    let domains: Api<Domain> = Api::namespaced(client.clone(), ns);
    let repositories: Api<Repository> = Api::namespaced(client.clone(), ns);
    eventually(WAIT, "usage in the Domain's and the Repository's status", || async {
        let domain = domains.get("counted").await.map_err(|e| e.to_string())?;
        let repository = repositories.get("web").await.map_err(|e| e.to_string())?;
        let domain_usage = domain.status.and_then(|status| status.usage).ok_or("no Domain usage")?;
        let usage = repository.status.and_then(|status| status.usage).ok_or("no Repository usage")?;
        if domain_usage.size == "2.0 MiB"
            && domain_usage.logical_bytes == 3 * 1024 * 1024
            && usage.size == "3.0 MiB"
            && usage.counts.versions == 3
            && usage.counts.last_published.as_deref() == Some("2026-12-05T10:00:00Z")
        {
            Ok(())
        } else {
            Err(format!("{domain_usage:?} {usage:?}"))
        }
    })
    .await
    .unwrap_or_else(|error| panic!("{error}\noperator log:\n{}", operator_log()));

    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let copied = eventually(WAIT, "a VersionsCopied event on the Repository", || async {
        let list = events.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
        let copied: Vec<Event> = list
            .items
            .into_iter()
            .filter(|event| event.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("Repository"))
            .filter(|event| event.reason.as_deref() == Some("VersionsCopied"))
            .collect();
        if copied.is_empty() { Err("none yet".to_owned()) } else { Ok(copied) }
    })
    .await
    .unwrap_or_else(|error| panic!("{error}\noperator log:\n{}", operator_log()));
    assert_eq!(copied[0].note.as_deref(), Some("release-bot copied npm app 1.0.0, 1.1.0 from dev"));
    assert_eq!(copied[0].regarding.as_ref().and_then(|r| r.name.as_deref()), Some("web"));
    // Announced once, however often the Domain is reconciled.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let list = events.list(&ListParams::default()).await.unwrap();
    let copies = list.items.iter().filter(|event| event.reason.as_deref() == Some("VersionsCopied")).count();
    assert_eq!(copies, 1);
}

/// An autoscaled Domain: the operator renders the HorizontalPodAutoscaler and leaves the
/// Deployment's replica count to it, so what the autoscaler sets survives reconciles; a
/// filesystem Domain's claim takes its size and storage class from `registry.dataVolume`.
#[tokio::test]
async fn an_autoscaler_keeps_its_replica_count_and_the_data_volume_is_sized() {
    use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
    let client = operator().await;
    let ns = "it-autoscaling";
    ensure_namespace(&client, ns).await.unwrap();
    let domain = |registry: &str| {
        format!(
            "apiVersion: wharf.dev/v1alpha1\nkind: Domain\nmetadata: {{name: scaled, namespace: {ns}}}\nspec:\n  \
             storage: {{memory: {{}}}}\n  registry: {registry}\n"
        )
    };
    // Three fixed pods first: turning the autoscaler on must not drop them to one.
    apply_yaml(&client, &domain("{replicas: 3}"), None).await.unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    eventually(WAIT, "three replicas", || async {
        let replicas = deployments.get("wharf-scaled").await.map_err(|e| e.to_string())?.spec.replicas;
        if replicas == Some(3) { Ok(()) } else { Err(format!("{replicas:?}")) }
    })
    .await
    .unwrap_or_else(|error| panic!("{error}\noperator log:\n{}", operator_log()));
    let domains: Api<Domain> = Api::namespaced(client.clone(), ns);
    let autoscaled = serde_json::json!({"spec": {"registry": {"replicas": null,
        "autoscaling": {"minReplicas": 2, "maxReplicas": 6, "targetCPUUtilizationPercentage": 60}}}});
    domains.patch("scaled", &PatchParams::default(), &Patch::Merge(&autoscaled)).await.unwrap();
    let autoscalers: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), ns);
    let autoscaler = eventually(WAIT, "the HorizontalPodAutoscaler", || async {
        autoscalers.get("wharf-scaled").await.map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|error| panic!("{error}\noperator log:\n{}", operator_log()));
    let spec = autoscaler.spec;
    assert_eq!((spec.min_replicas, spec.max_replicas), (Some(2), 6));
    assert_eq!(spec.scale_target_ref.name, "wharf-scaled");
    let metrics = spec.metrics.unwrap();
    assert_eq!(metrics[0].resource.as_ref().unwrap().target.average_utilization, Some(60));
    let owned_by_operator = |deployment: &Deployment| {
        deployment.metadata.managed_fields.iter().flatten().any(|entry| {
            entry.manager.as_deref() == Some("wharf-operator")
                && entry.fields_v1.as_ref().is_some_and(|fields| fields.0["f:spec"].get("f:replicas").is_some())
        })
    };
    let deployment = deployments.get("wharf-scaled").await.unwrap();
    assert!(!owned_by_operator(&deployment), "replicas are the autoscaler's");
    assert_eq!(deployment.spec.replicas, Some(3), "handing over to the autoscaler keeps the pods running");

    // The autoscaler scales (as the controller does, through the scale subresource); a
    // reconcile of a changed Domain leaves its count alone.
    let scale = serde_json::json!({"spec": {"replicas": 5}});
    let as_autoscaler =
        PatchParams { field_manager: Some("horizontal-pod-autoscaler".to_owned()), ..PatchParams::default() };
    deployments.patch_scale("wharf-scaled", &as_autoscaler, &Patch::Merge(&scale)).await.unwrap();
    let relabel = serde_json::json!({"spec": {"registry": {"podLabels": {"team": "platform"}}}});
    domains.patch("scaled", &PatchParams::default(), &Patch::Merge(&relabel)).await.unwrap();
    eventually(WAIT, "the new pod template applied", || async {
        let deployment = deployments.get("wharf-scaled").await.map_err(|e| e.to_string())?;
        let labels = deployment.spec.template.metadata.and_then(|metadata| metadata.labels).unwrap_or_default();
        if labels.get("team").map(String::as_str) == Some("platform") { Ok(()) } else { Err("not yet".to_owned()) }
    })
    .await
    .unwrap_or_else(|error| panic!("{error}\noperator log:\n{}", operator_log()));
    assert_eq!(deployments.get("wharf-scaled").await.unwrap().spec.replicas, Some(5), "the autoscaler's count stays");

    // Back to a fixed count: the autoscaler goes, the operator sets replicas again.
    let fixed = serde_json::json!({"spec": {"registry": {"autoscaling": null, "replicas": 3}}});
    domains.patch("scaled", &PatchParams::default(), &Patch::Merge(&fixed)).await.unwrap();
    eventually(WAIT, "a fixed count of 3, no autoscaler", || async {
        let replicas = deployments.get("wharf-scaled").await.map_err(|e| e.to_string())?.spec.replicas;
        let gone = autoscalers.get_opt("wharf-scaled").await.map_err(|e| e.to_string())?.is_none();
        if replicas == Some(3) && gone { Ok(()) } else { Err(format!("{replicas:?}, autoscaler gone: {gone}")) }
    })
    .await
    .unwrap_or_else(|error| panic!("{error}\noperator log:\n{}", operator_log()));

    // Both at once, or a data volume without filesystem storage, is refused at admission.
    let both = apply_yaml(&client, &domain("{replicas: 2, autoscaling: {maxReplicas: 3}}"), None).await;
    assert!(format!("{:?}", both.unwrap_err()).contains("not both"));
    let volume = apply_yaml(&client, &domain("{dataVolume: {size: 5Gi}}"), None).await;
    assert!(format!("{:?}", volume.unwrap_err()).contains("filesystem"));

    let sized = format!(
        "apiVersion: wharf.dev/v1alpha1\nkind: Domain\nmetadata: {{name: sized, namespace: {ns}}}\nspec:\n  \
         storage: {{filesystem: {{path: /var/lib/wharf}}}}\n  \
         registry: {{dataVolume: {{size: 50Gi, storageClassName: fast-ssd}}}}\n"
    );
    apply_yaml(&client, &sized, None).await.unwrap();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    let claim = eventually(WAIT, "the data volume claim", || async {
        let claims = claims.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
        claims.items.into_iter().next().ok_or_else(|| "no claim".to_owned())
    })
    .await
    .unwrap_or_else(|error| panic!("{error}\noperator log:\n{}", operator_log()));
    let spec = claim.spec.unwrap();
    assert_eq!(spec.storage_class_name.as_deref(), Some("fast-ssd"));
    assert_eq!(spec.resources.unwrap().requests.unwrap()["storage"].0, "50Gi");
    let moved = serde_json::json!({"spec": {"registry": {"dataVolume": {"storageClassName": "slow-hdd"}}}});
    let refused = domains.patch("sized", &PatchParams::default(), &Patch::Merge(&moved)).await;
    assert!(format!("{:?}", refused.unwrap_err()).contains("fixed once it exists"));
}

/// The attack from the field, on a real apiserver: a team names another team's private
/// Repository as the upstream of its anonymously readable one. Refused until the private
/// Repository consents, here by a namespace selector.
#[tokio::test]
async fn an_upstream_without_consent_is_refused() {
    let client = operator().await;
    let (ns_a, ns_b) = ("it-consent-a", "it-consent-b");
    for (namespace, team) in [(ns_a, "a"), (ns_b, "b")] {
        let yaml = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {namespace}, labels: {{wharf.dev/domain: consent, team: {team}}}}}\n"
        );
        apply_yaml(&client, &yaml, None).await.unwrap();
    }
    let domain = format!(
        "apiVersion: wharf.dev/v1alpha1\nkind: Domain\nmetadata: {{name: consent, namespace: {ns_a}}}\nspec:\n  storage: {{memory: {{}}}}\n  repositoryNamespaces: {{from: Selector, selector: {{matchLabels: {{wharf.dev/domain: consent}}}}}}\n"
    );
    apply_yaml(&client, &domain, None).await.unwrap();
    let private = |extra: &str| {
        format!(
            "apiVersion: wharf.dev/v1alpha1\nkind: Repository\nmetadata: {{name: priv, namespace: {ns_b}}}\nspec:\n  domainRef: {{name: consent, namespace: {ns_a}}}\n  access: {{read: [{{kind: Namespace, name: {ns_b}}}]}}\n{extra}"
        )
    };
    apply_yaml(&client, &private(""), None).await.unwrap();
    let app = format!(
        "apiVersion: wharf.dev/v1alpha1\nkind: Repository\nmetadata: {{name: app, namespace: {ns_a}}}\nspec:\n  domainRef: {{name: consent}}\n  upstreams: [{{name: priv}}]\n  access: {{read: [{{kind: Anonymous}}]}}\n"
    );
    apply_yaml(&client, &app, None).await.unwrap();

    let message = wait_repository(&client, ns_a, "app", "UpstreamNotPermitted", true).await;
    assert!(
        message.contains("upstream Repository `priv` does not permit this Repository: Anonymous (anyone) may read"),
        "{message}"
    );
    wait_repository(&client, ns_b, "priv", "DomainNotReady", false).await;

    // A selector that matches another namespace is no consent; one that matches app's is.
    apply_yaml(&client, &private("  allowedDownstreams: [{namespaceSelector: {matchLabels: {team: c}}}]\n"), None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    wait_repository(&client, ns_a, "app", "UpstreamNotPermitted", true).await;
    apply_yaml(&client, &private("  allowedDownstreams: [{namespaceSelector: {matchLabels: {team: a}}}]\n"), None)
        .await
        .unwrap();
    wait_repository(&client, ns_a, "app", "DomainNotReady", false).await;
}

#[tokio::test]
async fn deletion_policies_keep_or_delete_the_data() {
    let client = operator().await;
    let ns = "it-delete";
    ensure_namespace(&client, ns).await.unwrap();
    let yaml = format!(
        r#"
apiVersion: wharf.dev/v1alpha1
kind: Domain
metadata: {{name: kept, namespace: {ns}}}
spec: {{storage: {{filesystem: {{path: /var/lib/wharf-data}}}}}}
---
apiVersion: wharf.dev/v1alpha1
kind: Domain
metadata: {{name: dropped, namespace: {ns}}}
spec: {{storage: {{filesystem: {{path: /var/lib/wharf-data}}}}, deletionPolicy: Delete}}
---
apiVersion: wharf.dev/v1alpha1
kind: Repository
metadata: {{name: files, namespace: {ns}}}
spec: {{domainRef: {{name: dropped}}, deletionPolicy: Delete}}
"#
    );
    apply_yaml(&client, &yaml, None).await.unwrap();
    wait_domain(&client, ns, "kept", "DeploymentNotAvailable").await;
    wait_domain(&client, ns, "dropped", "DeploymentNotAvailable").await;
    wait_repository(&client, ns, "files", "DomainNotReady", false).await;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), ns);
    assert!(claims.get("wharf-kept-data").await.unwrap().metadata.owner_references.is_some());

    // A Repository of a filesystem Domain: the operator cannot reach the volume, says so.
    let repositories: Api<Repository> = Api::namespaced(client.clone(), ns);
    repositories.delete("files", &DeleteParams::default()).await.unwrap();
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let reasons_for = |name: &'static str| {
        let events = events.clone();
        async move {
            let list = events.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
            Ok::<Vec<(String, String)>, String>(
                list.items
                    .iter()
                    .filter(|event| event.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
                    .map(|event| (event.type_.clone().unwrap_or_default(), event.reason.clone().unwrap_or_default()))
                    .collect(),
            )
        }
    };
    eventually(WAIT, "the Repository is gone after a Warning DataRetained", || async {
        let gone = repositories.get_opt("files").await.map_err(|e| e.to_string())?.is_none();
        let reasons = reasons_for("files").await?;
        let warned = reasons.contains(&("Warning".to_owned(), "DataRetained".to_owned()));
        if gone && warned { Ok(()) } else { Err(format!("gone={gone} {reasons:?}")) }
    })
    .await
    .unwrap_or_else(|error| panic!("{error}\noperator log:\n{}", operator_log()));

    // Retain: the volume is released from the Domain, so the garbage collector keeps it.
    let domains: Api<Domain> = Api::namespaced(client.clone(), ns);
    domains.delete("kept", &DeleteParams::default()).await.unwrap();
    // Delete: the volume goes (it waits on pvc-protection, which no controller lifts here).
    domains.delete("dropped", &DeleteParams::default()).await.unwrap();
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    eventually(WAIT, "both Domains gone, each policy carried out", || async {
        for name in ["kept", "dropped"] {
            if domains.get_opt(name).await.map_err(|e| e.to_string())?.is_some() {
                return Err(format!("Domain {name} still there"));
            }
            if bindings
                .get_opt(&format!("wharf-it-delete-{name}-auth-delegator"))
                .await
                .map_err(|e| e.to_string())?
                .is_some()
            {
                return Err(format!("ClusterRoleBinding of {name} still there"));
            }
        }
        let kept = claims.get("wharf-kept-data").await.map_err(|e| e.to_string())?;
        if kept.metadata.owner_references.is_some_and(|owners| !owners.is_empty()) {
            return Err("the kept volume still has an owner".to_owned());
        }
        if kept.metadata.deletion_timestamp.is_some() {
            return Err("the kept volume is being deleted".to_owned());
        }
        let dropped = claims.get_opt("wharf-dropped-data").await.map_err(|e| e.to_string())?;
        if dropped.is_some_and(|claim| claim.metadata.deletion_timestamp.is_none()) {
            return Err("the dropped volume is not being deleted".to_owned());
        }
        let kept_reasons = reasons_for("kept").await?;
        let dropped_reasons = reasons_for("dropped").await?;
        if !kept_reasons.iter().any(|(_, reason)| reason == "DataRetained")
            || !dropped_reasons.iter().any(|(_, reason)| reason == "DataDeleted")
        {
            return Err(format!("events: {kept_reasons:?} {dropped_reasons:?}"));
        }
        Ok(())
    })
    .await
    .unwrap_or_else(|error| panic!("{error}\noperator log:\n{}", operator_log()));
}

/// The platform team's layout in `examples/platform/`, applied as it is, reaches Ready once
/// its registry is available.
#[tokio::test]
async fn the_platform_example_becomes_ready() {
    let client = operator().await;
    let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/platform");
    let mut files: Vec<_> = std::fs::read_dir(&folder).unwrap().map(|entry| entry.unwrap().path()).collect();
    files.sort_by_key(|path| !path.ends_with("domain.yaml"));
    for file in files {
        apply_yaml(&client, &std::fs::read_to_string(&file).unwrap(), None).await.unwrap();
    }
    wait_domain(&client, "wharf-system", "acme", "DeploymentNotAvailable").await;
    ControlPlane::shared().await.mark_available("wharf-system", "wharf-acme").await.unwrap();
    wait_domain(&client, "wharf-system", "acme", "Available").await;
    for (namespace, name) in
        [("wharf-system", "npm-store"), ("wharf-system", "pypi-store"), ("team-web", "web"), ("team-data", "data")]
    {
        wait_repository(&client, namespace, name, "Served", false).await;
    }
    let policy = eventually(WAIT, "the policy is Ready", || async {
        let api: Api<UpstreamPolicy> = Api::namespaced(client.clone(), "wharf-system");
        let policy = api.get("acme-scope-internal").await.map_err(|e| e.to_string())?;
        let state = ready_of(&policy.status.unwrap_or_default().conditions).ok_or("no Ready")?;
        if state.0 == "True" { Ok(state) } else { Err(format!("{state:?}")) }
    })
    .await
    .unwrap_or_else(|error| panic!("{error}\noperator log:\n{}", operator_log()));
    eprintln!("policy: {policy:?}");
}

fn npm(home: &std::path::Path, dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    let output = Command::new("npm")
        .args(args)
        .current_dir(dir)
        .env("HOME", home)
        .env("npm_config_cache", home.join(".npm"))
        .env("npm_config_userconfig", dir.join(".npmrc"))
        .env("npm_config_update_notifier", "false")
        .env("npm_config_audit", "false")
        .env("npm_config_fund", "false")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "npm {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// End to end: the operator renders a Domain, the harness runs the registry exactly as the
/// Deployment describes (its arguments, environment, Secret volumes and ServiceAccount), real
/// npm publishes and installs through it, and a change of the Repository's `access` is
/// enforced by the running registry within 5 s.
#[tokio::test]
async fn npm_through_the_registry_the_operator_rendered() {
    let client = operator().await;
    let plane = ControlPlane::shared().await;
    let ns = "it-e2e";
    ensure_namespace(&client, ns).await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let store = data.path().join("store");
    let resources = format!(
        "apiVersion: wharf.dev/v1alpha1\nkind: Domain\nmetadata: {{name: e2e, namespace: {ns}}}\n\
         spec:\n  storage: {{filesystem: {{path: {store}}}}}\n---\n\
         apiVersion: wharf.dev/v1alpha1\nkind: Repository\nmetadata: {{name: web, namespace: {ns}}}\n\
         spec:\n  domainRef: {{name: e2e}}\n  access:\n    publish: [{{kind: ServiceAccount, namespace: {ns}, name: release-bot}}]\n",
        store = store.display()
    );
    apply_yaml(&client, &resources, None).await.unwrap();
    wait_domain(&client, ns, "e2e", "DeploymentNotAvailable").await;

    // The registry's pod passes the `restricted` Pod Security Standard where it is enforced:
    // the apiserver's PodSecurity admission judges a pod built from the Deployment's template.
    let restricted = "it-e2e-restricted";
    let labelled = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {restricted}\n  labels: {{pod-security.kubernetes.io/enforce: restricted}}\n"
    );
    apply_yaml(&client, &labelled, None).await.unwrap();
    let deployment = Api::<Deployment>::namespaced(client.clone(), ns).get("wharf-e2e").await.unwrap();
    let pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "registry-pod", "namespace": restricted},
        "spec": deployment.spec.template.spec});
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), restricted);
    let dry_run = kube::api::PostParams { dry_run: true, ..Default::default() };
    pods.create(&dry_run, &serde_json::from_value(pod).unwrap())
        .await
        .unwrap_or_else(|error| panic!("the registry pod is not admitted under the restricted standard: {error}"));

    let kubelet =
        wharf_test_harness::Kubelet::new(plane, wharf_test_harness::workspace_binary("wharf-registry").unwrap());
    let registry = kubelet.run(ns, "wharf-e2e").await.unwrap_or_else(|error| panic!("{error:#}"));
    wait_domain(&client, ns, "e2e", "Available").await;
    wait_repository(&client, ns, "web", "Served", false).await;

    // A publish token, minted with the admin token the operator generated.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let admin_token = secrets.get("wharf-e2e-admin-token").await.unwrap().data.unwrap().remove("token").unwrap();
    let admin_token = String::from_utf8(admin_token.0).unwrap();
    let http = reqwest::Client::new();
    let minted: serde_json::Value = http
        .post(format!("{}/api/v1/auth/token", registry.url))
        .bearer_auth(&admin_token)
        .json(&serde_json::json!({"repositories": ["web"], "permissions": ["publish"], "subject": "release-bot"}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = minted["token"].as_str().unwrap();

    let work = tempfile::tempdir().unwrap();
    let port = registry.url.rsplit(':').next().unwrap();
    let npmrc = format!("registry={}/npm/web/\n//127.0.0.1:{port}/npm/web/:_authToken={token}\n", registry.url);
    let package = work.path().join("package");
    std::fs::create_dir_all(&package).unwrap();
    std::fs::write(package.join(".npmrc"), &npmrc).unwrap();
    std::fs::write(package.join("package.json"), r#"{"name": "e2e-greeting", "version": "1.0.0", "main": "index.js"}"#)
        .unwrap();
    std::fs::write(package.join("index.js"), "module.exports = 'hello from the cluster';\n").unwrap();
    npm(work.path(), &package, &["publish"]);

    let consumer = work.path().join("consumer");
    std::fs::create_dir_all(&consumer).unwrap();
    std::fs::write(consumer.join(".npmrc"), &npmrc).unwrap();
    std::fs::write(consumer.join("package.json"), r#"{"name": "consumer", "version": "0.0.0", "private": true}"#)
        .unwrap();
    npm(work.path(), &consumer, &["install", "e2e-greeting"]);
    let installed = std::fs::read_to_string(consumer.join("node_modules/e2e-greeting/index.js")).unwrap();
    assert!(installed.contains("hello from the cluster"));

    // Private: an anonymous read is refused. Then the Repository's access admits anonymous
    // readers, and the running registry enforces it within 5 s, without a restart.
    let packument = format!("{}/npm/web/e2e-greeting", registry.url);
    assert_eq!(http.get(&packument).send().await.unwrap().status(), 401);
    let changed = std::time::Instant::now();
    let patch = serde_json::json!({"spec": {"access": {
        "read": [{"kind": "Anonymous"}],
        "publish": [{"kind": "ServiceAccount", "namespace": ns, "name": "release-bot"}],
    }}});
    let repositories: Api<Repository> = Api::namespaced(client.clone(), ns);
    repositories.patch("web", &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    let took = eventually(Duration::from_secs(5), "anonymous read enforced", || async {
        let status = http.get(&packument).send().await.map_err(|e| e.to_string())?.status();
        if status == 200 { Ok(changed.elapsed()) } else { Err(format!("status {status}")) }
    })
    .await
    .unwrap_or_else(|error| {
        panic!("{error}\nregistry log:\n{}\noperator log:\n{}", registry.log_tail(), operator_log())
    });
    eprintln!("access change enforced {took:?} after the Repository was patched");
}

/// `registry.tls`: with `issuerRef` the operator renders cert-manager's `Certificate` (admitted
/// by cert-manager's own CRD) for the Service's names and `dnsNames`, and the pods read the
/// Secret it fills; the Certificate goes when the Domain names a Secret of its own instead;
/// without cert-manager, or with a Secret that does not exist, the Domain says so.
#[tokio::test]
async fn tls_comes_from_a_cert_manager_certificate_or_a_secret() {
    use kube::core::DynamicObject;
    use wharf_operator::render::certificate_resource;
    let client = operator().await;
    let ns = "it-tls";
    ensure_namespace(&client, ns).await.unwrap();
    let domains: Api<Domain> = Api::namespaced(client.clone(), ns);
    let touch = |n: u32| {
        let patch = serde_json::json!({"metadata": {"annotations": {"test.wharf.dev/touch": n.to_string()}}});
        let domains = domains.clone();
        async move { domains.patch("secure", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap() }
    };
    let issued = format!(
        "apiVersion: wharf.dev/v1alpha1\nkind: Domain\nmetadata: {{name: secure, namespace: {ns}}}\nspec:\n  \
         storage: {{memory: {{}}}}\n  registry:\n    service: {{port: 443}}\n    \
         tls: {{issuerRef: {{name: acme-ca, kind: ClusterIssuer}}, dnsNames: [wharf.acme.example]}}\n"
    );
    // Probably no cert-manager yet: this binary's other tests never install it.
    let certificates: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &certificate_resource());
    if certificates.list(&ListParams::default()).await.is_err() {
        apply_yaml(&client, &issued, None).await.unwrap();
        let domain = wait_domain(&client, ns, "secure", "CertificateNotIssuable").await;
        let message = ready_of(&domain.status.unwrap().conditions).unwrap().2;
        assert!(message.contains("install cert-manager"), "{message}");
    }
    wharf_test_harness::install_third_party_crds(&client, &["cert-manager.io_certificates.yaml"]).await.unwrap();
    apply_yaml(&client, &issued, None).await.unwrap();
    touch(1).await;
    let certificate = eventually(WAIT, "the Certificate", || async {
        certificates.get("wharf-secure").await.map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|error| panic!("{error}\noperator log:\n{}", operator_log()));
    let spec = &certificate.data["spec"];
    assert_eq!(spec["secretName"], "wharf-secure-tls");
    let names: Vec<&str> = spec["dnsNames"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "wharf-secure",
            "wharf-secure.it-tls",
            "wharf-secure.it-tls.svc",
            "wharf-secure.it-tls.svc.cluster.local",
            "wharf.acme.example"
        ]
    );
    assert_eq!(
        spec["issuerRef"],
        serde_json::json!({"name": "acme-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"})
    );
    let uid = domains.get("secure").await.unwrap().metadata.uid.unwrap();
    assert_eq!(certificate.metadata.owner_references.unwrap()[0].uid, uid, "deleted with the Domain");

    // The pods read the issued Secret and speak https: probes, Service, endpoint.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let tls_secret_of = |deployment: &Deployment| {
        let spec = deployment.spec.template.spec.as_ref()?;
        let volume = spec.volumes.as_ref()?.iter().find(|volume| volume.name == "tls")?;
        volume.secret.as_ref()?.secret_name.clone()
    };
    let deployment = eventually(WAIT, "the Deployment mounting the issued Secret", || async {
        let deployment = deployments.get("wharf-secure").await.map_err(|e| e.to_string())?;
        let secret = tls_secret_of(&deployment);
        if secret.as_deref() == Some("wharf-secure-tls") { Ok(deployment) } else { Err(format!("{secret:?}")) }
    })
    .await
    .unwrap_or_else(|error| panic!("{error}\noperator log:\n{}", operator_log()));
    let container = &deployment.spec.template.spec.unwrap().containers[0];
    let probe = container.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap();
    assert_eq!(probe.scheme.as_deref(), Some("HTTPS"));
    let env: BTreeMap<_, _> =
        container.env.iter().flatten().map(|var| (var.name.as_str(), var.value.clone().unwrap_or_default())).collect();
    assert_eq!(env["WHARF_TLS_CERT"], "/var/run/wharf/tls/tls.crt");
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let port = &services.get("wharf-secure").await.unwrap().spec.unwrap().ports.unwrap()[0];
    assert_eq!((port.name.as_deref(), port.app_protocol.as_deref(), port.port), (Some("https"), Some("https"), 443));
    let endpoint = eventually(WAIT, "an https endpoint", || async {
        let endpoint = domains.get("secure").await.map_err(|e| e.to_string())?.status.and_then(|s| s.endpoint);
        endpoint.filter(|e| e.starts_with("https://")).ok_or_else(|| "none yet".to_owned())
    })
    .await
    .unwrap();
    assert_eq!(endpoint, "https://wharf-secure.it-tls.svc:443");

    // A Secret of the Domain's own instead: the Certificate goes; until the Secret exists,
    // the Domain says which one it waits for.
    let own = serde_json::json!({"spec": {"registry": {"tls": {"issuerRef": null, "dnsNames": null, "secretName": "acme-tls"}}}});
    domains.patch("secure", &PatchParams::default(), &Patch::Merge(&own)).await.unwrap();
    let domain = wait_domain(&client, ns, "secure", "SecretNotFound").await;
    let message = ready_of(&domain.status.unwrap().conditions).unwrap().2;
    assert!(message.contains("acme-tls") && message.contains("kubernetes.io/tls"), "{message}");
    assert!(certificates.get_opt("wharf-secure").await.unwrap().is_none(), "the Certificate is deleted");
    // A real certificate for the Service's name, from a throw-away authority.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut authority = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    authority.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let authority_pem = authority.self_signed(&key).unwrap().pem();
    let issuer = rcgen::Issuer::new(authority, key);
    let server_key = rcgen::KeyPair::generate().unwrap();
    let names = vec!["wharf-secure.it-tls.svc".to_owned(), "127.0.0.1".to_owned()];
    let certificate = rcgen::CertificateParams::new(names).unwrap().signed_by(&server_key, &issuer).unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = serde_json::json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "acme-tls", "namespace": ns},
        "stringData": {"tls.crt": certificate.pem(), "tls.key": server_key.serialize_pem()}});
    secrets.patch("acme-tls", &PatchParams::apply("wharf-test"), &Patch::Apply(&secret)).await.unwrap();
    touch(2).await;
    eventually(WAIT, "the Deployment mounting Secret acme-tls", || async {
        let deployment = deployments.get("wharf-secure").await.map_err(|e| e.to_string())?;
        let secret = tls_secret_of(&deployment);
        if secret.as_deref() == Some("acme-tls") { Ok(()) } else { Err(format!("{secret:?}")) }
    })
    .await
    .unwrap_or_else(|error| panic!("{error}\noperator log:\n{}", operator_log()));

    // The pod as rendered serves that certificate, found where the operator mounts it, and
    // passes its HTTPS readiness probe.
    let plane = ControlPlane::shared().await;
    let kubelet =
        wharf_test_harness::Kubelet::new(plane, wharf_test_harness::workspace_binary("wharf-registry").unwrap());
    let registry = kubelet.run(ns, "wharf-secure").await.unwrap_or_else(|error| panic!("{error:#}"));
    assert!(registry.url.starts_with("https://"), "{}", registry.url);
    let trusting = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(authority_pem.as_bytes()).unwrap()])
        .build()
        .unwrap();
    let ready = trusting.get(format!("{}/readyz", registry.url)).send().await.unwrap();
    assert_eq!(ready.status(), 200, "{}", registry.log_tail());
    assert_eq!(ready.version(), reqwest::Version::HTTP_2);
}

/// The operator's ClusterRole grants create, patch and delete on ClusterRoleBindings, which
/// RBAC cannot limit by name; the guard policy limits them to the registries' own bindings:
/// as the operator, another binding can be neither deleted, nor changed, nor made, while the
/// Domains' bindings come and go (the other tests).
#[tokio::test]
async fn the_operator_cannot_touch_cluster_role_bindings_it_does_not_make() {
    let admin = operator().await;
    let plane = wharf_test_harness::ControlPlane::shared().await;
    let as_operator = plane.service_account_client("wharf-system", "wharf-operator").await.unwrap();
    let binding = |name: &str, role: &str| {
        format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: {name}}}\n\
             roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: \"{role}\"}}\n\
             subjects: [{{kind: ServiceAccount, name: someone, namespace: elsewhere}}]\n"
        )
    };
    // An administrator's bindings, one even named like the operator's.
    apply_yaml(&admin, &binding("platform-auth-delegator", "system:auth-delegator"), None).await.unwrap();
    apply_yaml(&admin, &binding("wharf-it-lookalike-auth-delegator", "view"), None).await.unwrap();
    let bindings: Api<ClusterRoleBinding> = Api::all(as_operator.clone());
    for name in ["platform-auth-delegator", "wharf-it-lookalike-auth-delegator"] {
        let refused = bindings.delete(name, &DeleteParams::default()).await.unwrap_err();
        let kube::Error::Api(status) = refused else { panic!("{refused:?}") };
        assert_eq!(status.code, 403, "{status:?}");
        assert!(status.message.contains("manages only the ClusterRoleBindings it makes for registries"), "{status:?}");
        assert!(status.message.contains(name), "{status:?}");
    }
    let changed = serde_json::json!({"subjects": [{"kind": "ServiceAccount", "name": "registry", "namespace": "x"}]});
    let refused = bindings.patch("platform-auth-delegator", &PatchParams::default(), &Patch::Merge(&changed)).await;
    assert!(format!("{refused:?}").contains("manages only"), "{refused:?}");
    let made = apply_yaml(&as_operator, &binding("grant-everyone-auth-delegator", "system:auth-delegator"), None).await;
    assert!(format!("{made:?}").contains("manages only"), "{made:?}");
    let admins: Api<ClusterRoleBinding> = Api::all(admin);
    for name in ["platform-auth-delegator", "wharf-it-lookalike-auth-delegator"] {
        assert!(admins.get_opt(name).await.unwrap().is_some(), "{name} is still there");
        admins.delete(name, &DeleteParams::default()).await.unwrap();
    }
}

/// `registry.expose`: a Gateway API `HTTPRoute` (admitted by the Gateway API's own CRD) or an
/// `Ingress` sized for large uploads, at hosts the registry's links then use and the
/// Repositories' external endpoints name; switching from one to the other removes the first.
#[tokio::test]
async fn expose_renders_an_http_route_or_an_ingress() {
    use k8s_openapi::api::networking::v1::Ingress;
    use kube::core::DynamicObject;
    use wharf_operator::render::http_route_resource;
    let client = operator().await;
    let ns = "it-expose";
    ensure_namespace(&client, ns).await.unwrap();
    let domains: Api<Domain> = Api::namespaced(client.clone(), ns);
    let domain = |expose: &str| {
        format!(
            "apiVersion: wharf.dev/v1alpha1\nkind: Domain\nmetadata: {{name: public, namespace: {ns}}}\nspec:\n  \
             storage: {{memory: {{}}}}\n  registry:\n    trustedProxies: [10.0.0.0/8]\n    expose: {expose}\n---\n\
             apiVersion: wharf.dev/v1alpha1\nkind: Repository\nmetadata: {{name: web, namespace: {ns}}}\nspec:\n  \
             domainRef: {{name: public}}\n"
        )
    };
    let routed = domain(
        "{hosts: [wharf.acme.example], httpRoute: {parentRefs: [{name: edge, namespace: gateways, sectionName: https}]}}",
    );
    let routes: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &http_route_resource());
    if routes.list(&ListParams::default()).await.is_err() {
        apply_yaml(&client, &routed, None).await.unwrap();
        let stalled = wait_domain(&client, ns, "public", "GatewayAPIMissing").await;
        let message = ready_of(&stalled.status.unwrap().conditions).unwrap().2;
        assert!(message.contains("httproutes.gateway.networking.k8s.io/v1"), "{message}");
    }
    wharf_test_harness::install_third_party_crds(&client, &["gateway.networking.k8s.io_httproutes.yaml"])
        .await
        .unwrap();
    apply_yaml(&client, &routed, None).await.unwrap();
    let patch = serde_json::json!({"metadata": {"annotations": {"test.wharf.dev/touch": "1"}}});
    domains.patch("public", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let route =
        eventually(WAIT, "the HTTPRoute", || async { routes.get("wharf-public").await.map_err(|e| e.to_string()) })
            .await
            .unwrap_or_else(|error| panic!("{error}\noperator log:\n{}", operator_log()));
    let spec = &route.data["spec"];
    assert_eq!(spec["hostnames"], serde_json::json!(["wharf.acme.example"]));
    assert_eq!(spec["parentRefs"][0]["namespace"], "gateways");
    assert_eq!(spec["parentRefs"][0]["sectionName"], "https");
    assert_eq!(spec["rules"][0]["backendRefs"][0]["name"], "wharf-public");
    assert_eq!(spec["rules"][0]["timeouts"]["request"], "0s");

    // The pods link to the exposed host first, and believe the ingress's forwarding.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let env = |deployment: &Deployment, name: &str| {
        deployment.spec.template.spec.as_ref()?.containers[0]
            .env
            .iter()
            .flatten()
            .find(|var| var.name == name)
            .and_then(|var| var.value.clone())
    };
    let deployment = eventually(WAIT, "the Deployment", || async {
        deployments.get("wharf-public").await.map_err(|e| e.to_string())
    })
    .await
    .unwrap();
    assert_eq!(
        env(&deployment, "WHARF_EXTERNAL_URLS").unwrap(),
        "https://wharf.acme.example,http://wharf-public:8080,http://wharf-public.it-expose:8080,\
         http://wharf-public.it-expose.svc:8080,http://wharf-public.it-expose.svc.cluster.local:8080"
    );
    assert_eq!(env(&deployment, "WHARF_TRUSTED_PROXIES").unwrap(), "127.0.0.0/8,::1,10.0.0.0/8");
    let repositories: Api<Repository> = Api::namespaced(client.clone(), ns);
    let external = eventually(WAIT, "external endpoints", || async {
        let status = repositories.get("web").await.map_err(|e| e.to_string())?.status.ok_or("no status")?;
        status.external_endpoints.get("npm").cloned().ok_or_else(|| format!("{status:?}"))
    })
    .await
    .unwrap_or_else(|error| panic!("{error}\noperator log:\n{}", operator_log()));
    assert_eq!(external, "https://wharf.acme.example/npm/web/");

    // An Ingress instead: the route goes.
    let ingressed = domain(
        "{hosts: [wharf.acme.example, registry.acme.example], ingress: {className: nginx, tlsSecretName: acme-public-tls, \
         annotations: {nginx.ingress.kubernetes.io/proxy-read-timeout: \"7200\"}}}",
    );
    apply_yaml(&client, &ingressed, None).await.unwrap();
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), ns);
    let ingress =
        eventually(WAIT, "the Ingress", || async { ingresses.get("wharf-public").await.map_err(|e| e.to_string()) })
            .await
            .unwrap_or_else(|error| panic!("{error}\noperator log:\n{}", operator_log()));
    let annotations = ingress.metadata.annotations.unwrap();
    assert_eq!(annotations["nginx.ingress.kubernetes.io/proxy-body-size"], "0", "large uploads");
    assert_eq!(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"], "7200", "the Domain's own wins");
    let spec = ingress.spec.unwrap();
    assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx"));
    let hosts: Vec<_> = spec.rules.unwrap().into_iter().map(|rule| rule.host.unwrap()).collect();
    assert_eq!(hosts, ["wharf.acme.example", "registry.acme.example"]);
    assert_eq!(spec.tls.unwrap()[0].secret_name.as_deref(), Some("acme-public-tls"));
    eventually(WAIT, "the HTTPRoute removed", || async {
        match routes.get_opt("wharf-public").await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(_) => Err("still there".to_owned()),
        }
    })
    .await
    .unwrap_or_else(|error| panic!("{error}\noperator log:\n{}", operator_log()));

    // Not exposed any more: the Ingress goes too.
    let plain = serde_json::json!({"spec": {"registry": {"expose": null}}});
    domains.patch("public", &PatchParams::default(), &Patch::Merge(&plain)).await.unwrap();
    eventually(WAIT, "the Ingress removed", || async {
        match ingresses.get_opt("wharf-public").await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(_) => Err("still there".to_owned()),
        }
    })
    .await
    .unwrap_or_else(|error| panic!("{error}\noperator log:\n{}", operator_log()));
}

/// `registry.networkPolicy`: the real apiserver admits the NetworkPolicy, which lets in the
/// namespaces the Domain admits, its own and the ingress's to the registry's port, the
/// monitoring's to the metrics port only, and with `egressTo` lets out DNS and those ranges.
#[tokio::test]
async fn a_network_policy_admits_the_domains_namespaces_ingress_and_monitoring() {
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    let client = operator().await;
    let ns = "it-netpol";
    ensure_namespace(&client, ns).await.unwrap();
    let domain = format!(
        "apiVersion: wharf.dev/v1alpha1\nkind: Domain\nmetadata: {{name: fenced, namespace: {ns}}}\nspec:\n  \
         storage: {{memory: {{}}}}\n  repositoryNamespaces: {{from: Selector, selector: {{matchLabels: {{team: web}}}}}}\n  \
         registry:\n    networkPolicy: {{ingressNamespaces: [ingress-nginx], monitoringNamespaces: [monitoring], \
         egressTo: [10.96.0.1/32, 192.168.50.0/24]}}\n"
    );
    apply_yaml(&client, &domain, None).await.unwrap();
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns);
    let policy = eventually(WAIT, "the NetworkPolicy", || async {
        policies.get("wharf-fenced").await.map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|error| panic!("{error}\noperator log:\n{}", operator_log()));
    let spec = serde_json::to_value(policy.spec.unwrap()).unwrap();
    assert_eq!(spec["podSelector"]["matchLabels"]["app.kubernetes.io/instance"], "fenced");
    assert_eq!(spec["policyTypes"], serde_json::json!(["Ingress", "Egress"]));
    let clients = &spec["ingress"][0];
    assert_eq!(clients["ports"], serde_json::json!([{"port": "http", "protocol": "TCP"}]));
    let from: Vec<String> =
        clients["from"].as_array().unwrap().iter().map(|peer| peer["namespaceSelector"].to_string()).collect();
    assert_eq!(
        from,
        [
            format!(r#"{{"matchLabels":{{"kubernetes.io/metadata.name":"{ns}"}}}}"#),
            r#"{"matchLabels":{"team":"web"}}"#.to_owned(),
            r#"{"matchLabels":{"kubernetes.io/metadata.name":"ingress-nginx"}}"#.to_owned(),
        ]
    );
    assert_eq!(spec["ingress"][1]["ports"], serde_json::json!([{"port": "metrics", "protocol": "TCP"}]));
    assert_eq!(spec["egress"][0]["ports"][0]["port"], 53);
    assert_eq!(spec["egress"][1]["to"][1]["ipBlock"]["cidr"], "192.168.50.0/24");

    // Where the Prometheus Operator is installed, the registry's metrics port is scraped.
    let monitors = wharf_operator::render::service_monitor_resource();
    wharf_test_harness::install_third_party_crds(&client, &["monitoring.coreos.com_servicemonitors.yaml"])
        .await
        .unwrap();
    let touch = serde_json::json!({"metadata": {"annotations": {"test.wharf.dev/touch": "1"}}});
    Api::<Domain>::namespaced(client.clone(), ns)
        .patch("fenced", &PatchParams::default(), &Patch::Merge(&touch))
        .await
        .unwrap();
    let monitors: Api<kube::core::DynamicObject> = Api::namespaced_with(client.clone(), ns, &monitors);
    let monitor = eventually(WAIT, "the ServiceMonitor", || async {
        monitors.get("wharf-fenced").await.map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|error| panic!("{error}\noperator log:\n{}", operator_log()));
    assert_eq!(monitor.data["spec"]["endpoints"][0]["port"], "metrics");
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let ports = services.get("wharf-fenced").await.unwrap().spec.unwrap().ports.unwrap();
    assert_eq!((ports[1].name.as_deref(), ports[1].port), (Some("metrics"), 9090));

    let domains: Api<Domain> = Api::namespaced(client.clone(), ns);
    let off = serde_json::json!({"spec": {"registry": {"networkPolicy": null}}});
    domains.patch("fenced", &PatchParams::default(), &Patch::Merge(&off)).await.unwrap();
    eventually(WAIT, "the NetworkPolicy removed", || async {
        match policies.get_opt("wharf-fenced").await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(_) => Err("still there".to_owned()),
        }
    })
    .await
    .unwrap_or_else(|error| panic!("{error}\noperator log:\n{}", operator_log()));
}
