//! The Helm charts (`charts/wharf`, `charts/wharf-crds`) with a real helm and the real
//! apiserver: lint; the CRD chart generated from the Wharf types; the operator's ClusterRole,
//! and with `watchNamespaces` its per-namespace Roles, exactly the RBAC the operator is tested
//! under; an upgrade of the CRD chart updates the CRDs;
//! every rendered object, the restricted Pod Security of the operator's pod and the examples
//! accepted by a server-side dry-run. Runs helm (built by `tests/helm.sh`) in temp dirs, starts
//! the harness's control plane, reads and (with `WHARF_UPDATE_CRDS=1`) writes chart files.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use wharf_test_harness::{
    ControlPlane, TEST_FIELD_MANAGER, apply_yaml, dynamic_api, ensure_namespace, eventually, helm_binary,
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A helm command with its own config, cache and data folders, so nothing of the user's
/// helm set-up (repositories, plugins) takes part.
struct Helm {
    binary: PathBuf,
    home: tempfile::TempDir,
}

impl Helm {
    fn new() -> Helm {
        Helm { binary: helm_binary().unwrap(), home: tempfile::tempdir().unwrap() }
    }

    fn run(&self, args: &[&str]) -> Result<String, String> {
        let home = self.home.path();
        let output = Command::new(&self.binary)
            .args(args)
            .current_dir(root())
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_DATA_HOME", home.join("data"))
            .env_remove("KUBECONFIG")
            .output()
            .unwrap();
        let stdout = String::from_utf8(output.stdout).unwrap();
        if output.status.success() {
            Ok(stdout)
        } else {
            Err(format!("helm {}: {}{stdout}", args.join(" "), String::from_utf8_lossy(&output.stderr)))
        }
    }
}

/// What `charts/wharf-crds/templates/{name}` must hold: the CRD as `wharf_api::crds()` gives it,
/// which `crds/` and `wharf-operator crd` also print, kept on `helm uninstall`.
fn crd_templates() -> Vec<(String, String)> {
    wharf_api::crds()
        .into_iter()
        .map(|crd| {
            let name = format!("{}.yaml", crd.metadata.name.clone().unwrap());
            let mut value = serde_json::to_value(&crd).unwrap();
            // Deleting a CRD deletes every object of its kind, and with them what the
            // Domains' finalizers guard; an uninstall of the chart must not do that.
            value["metadata"]["annotations"] = json!({"helm.sh/resource-policy": "keep"});
            let header = "# Generated from the Wharf resource types: do not edit. Regenerate with\n\
                          # `WHARF_UPDATE_CRDS=1 cargo test -p wharf-test-harness --test chart`.\n";
            (name, format!("{header}{}", serde_saphyr::to_string(&value).unwrap()))
        })
        .collect()
}

#[test]
fn crd_chart_matches_the_types() {
    let folder = root().join("charts/wharf-crds/templates");
    let update = std::env::var("WHARF_UPDATE_CRDS").is_ok_and(|value| value == "1");
    let expected = crd_templates();
    let mut stale = Vec::new();
    for (name, yaml) in &expected {
        let path = folder.join(name);
        if std::fs::read_to_string(&path).unwrap_or_default() != *yaml {
            if update {
                std::fs::write(&path, yaml).unwrap();
            } else {
                stale.push(name.clone());
            }
        }
    }
    let mut unexpected = Vec::new();
    for entry in std::fs::read_dir(&folder).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if !expected.iter().any(|(known, _)| *known == name) {
            if update {
                std::fs::remove_file(folder.join(&name)).unwrap();
            } else {
                unexpected.push(name);
            }
        }
    }
    assert!(
        stale.is_empty() && unexpected.is_empty(),
        "charts/wharf-crds/templates is out of date (stale: {stale:?}, not generated: {unexpected:?}); \
         regenerate with `WHARF_UPDATE_CRDS=1 cargo test -p wharf-test-harness --test chart`"
    );

    // Where the repository has the checked-in crds/ folder, the chart says the same.
    let checked_in = root().join("crds");
    if checked_in.is_dir() {
        for (name, yaml) in &expected {
            let mut chart: Value = serde_saphyr::from_str(yaml).unwrap();
            chart["metadata"].as_object_mut().unwrap().remove("annotations");
            let file: Value = serde_saphyr::from_str(&std::fs::read_to_string(checked_in.join(name)).unwrap()).unwrap();
            assert_eq!(chart, file, "charts/wharf-crds/templates/{name} differs from crds/{name}");
        }
    }
}

#[test]
fn charts_lint() {
    let helm = Helm::new();
    for chart in ["charts/wharf", "charts/wharf-crds"] {
        let output = helm.run(&["lint", "--strict", chart]).unwrap();
        assert!(output.contains("0 chart(s) failed"), "{output}");
    }
    let output =
        helm.run(&["lint", "--strict", "charts/wharf", "--set", "watchNamespaces={team-web,team-data}"]).unwrap();
    assert!(output.contains("0 chart(s) failed"), "{output}");
    // Values the schema refuses, and the one combination the templates refuse.
    let refused = helm.run(&["template", "charts/wharf", "--set", "logFormat=xml"]).unwrap_err();
    assert!(refused.contains("logFormat"), "{refused}");
    for namespaces in ["{team-web,team-web}", "{Team_Web}", "{team-web,}"] {
        let value = format!("watchNamespaces={namespaces}");
        let refused = helm.run(&["template", "charts/wharf", "--set", &value]).unwrap_err();
        assert!(refused.contains("watchNamespaces"), "{namespaces}: {refused}");
    }
    let refused = helm
        .run(&["template", "charts/wharf", "--set", "replicaCount=2", "--set", "leaderElection.enabled=false"])
        .unwrap_err();
    assert!(refused.contains("needs leaderElection.enabled"), "{refused}");
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(yaml).unwrap().into_iter().filter(|document| !document.is_null()).collect()
}

/// The rules of a ClusterRole or Role as a comparable set: each rule's lists sorted, the rules
/// sorted (their order means nothing to RBAC).
fn normalized_rules(role: &Value) -> Vec<Value> {
    let mut rules: Vec<Value> = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rule| {
            let mut rule = rule.as_object().unwrap().clone();
            for list in rule.values_mut() {
                if let Value::Array(items) = list {
                    items.sort_by_key(|item| item.to_string());
                }
            }
            Value::Object(rule)
        })
        .collect();
    rules.sort_by_key(|rule| rule.to_string());
    rules
}

/// The document of `kind` in an `operator/rbac` file.
fn rbac_file(path: &str, kind: &str) -> Value {
    let text = std::fs::read_to_string(root().join("operator/rbac").join(path)).unwrap();
    documents(&text).into_iter().find(|document| document["kind"] == kind).unwrap()
}

/// The all-namespaces ClusterRole is its two halves for `--watch-namespaces` together, so
/// neither mode can be granted something the other lacks.
#[test]
fn the_rbac_split_by_scope_adds_up_to_the_cluster_role() {
    let whole = normalized_rules(&rbac_file("cluster-role.yaml", "ClusterRole"));
    let cluster_scoped = normalized_rules(&rbac_file("watch-namespaces/cluster.yaml", "ClusterRole"));
    let namespaced = normalized_rules(&rbac_file("watch-namespaces/namespace.yaml", "Role"));
    let mut halves: Vec<Value> = cluster_scoped.iter().chain(&namespaced).cloned().collect();
    halves.sort_by_key(|rule| rule.to_string());
    assert_eq!(
        halves, whole,
        "operator/rbac/watch-namespaces/ must split operator/rbac/cluster-role.yaml, no more, no less"
    );
    // Each half holds only its scope's resources.
    let cluster_resources = ["namespaces", "clusterrolebindings", "clusterroles"];
    for rule in &cluster_scoped {
        for resource in rule["resources"].as_array().unwrap() {
            assert!(cluster_resources.contains(&resource.as_str().unwrap()), "{rule}");
        }
    }
    for rule in &namespaced {
        for resource in rule["resources"].as_array().unwrap() {
            assert!(!cluster_resources.contains(&resource.as_str().unwrap()), "{rule}");
        }
    }
    // Both halves bind the identity the all-namespaces files create.
    let account = rbac_file("service-account.yaml", "ServiceAccount");
    assert_eq!(rbac_file("watch-namespaces/cluster.yaml", "ServiceAccount")["metadata"], account["metadata"]);
    let subject = json!([{"kind": "ServiceAccount", "name": "wharf-operator", "namespace": "wharf-system"}]);
    assert_eq!(rbac_file("watch-namespaces/cluster.yaml", "ClusterRoleBinding")["subjects"], subject);
    assert_eq!(rbac_file("watch-namespaces/namespace.yaml", "RoleBinding")["subjects"], subject);
}

/// The value of the operator container's environment variable `name`.
fn operator_env(rendered: &[Value], name: &str) -> String {
    let deployment = rendered.iter().find(|document| document["kind"] == "Deployment").unwrap();
    let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap();
    env.iter().find(|variable| variable["name"] == name).unwrap()["value"].as_str().unwrap().to_owned()
}

#[test]
fn cluster_role_is_the_operators() {
    let helm = Helm::new();
    let rendered = documents(&helm.run(&["template", "wharf", "charts/wharf", "-n", "wharf-system"]).unwrap());
    let chart_role = rendered.iter().find(|document| document["kind"] == "ClusterRole").unwrap();
    assert_eq!(
        normalized_rules(chart_role),
        normalized_rules(&rbac_file("cluster-role.yaml", "ClusterRole")),
        "charts/wharf/templates/clusterrole.yaml must grant exactly what operator/rbac/cluster-role.yaml does"
    );
    assert_eq!(operator_env(&rendered, "WHARF_WATCH_NAMESPACES"), "");
    let roles: Vec<&Value> = rendered.iter().filter(|document| document["kind"] == "Role").collect();
    assert_eq!(roles.len(), 1, "only the leader-election Role: {roles:?}");

    // The guard on ClusterRoleBindings is the tested one, for the release's ServiceAccount.
    let policy = |documents: &[Value]| {
        documents.iter().find(|document| document["kind"] == "ValidatingAdmissionPolicy").unwrap()["spec"].clone()
    };
    let guard = std::fs::read_to_string(root().join("operator/rbac/cluster-role-binding-guard.yaml")).unwrap();
    let (chart_policy, tested_policy) = (policy(&rendered), policy(&documents(&guard)));
    for field in ["failurePolicy", "matchConstraints", "variables", "validations"] {
        assert_eq!(chart_policy[field], tested_policy[field], "{field} of the chart's guard policy");
    }
    assert_eq!(
        chart_policy["matchConditions"][0]["expression"],
        "request.userInfo.username == 'system:serviceaccount:wharf-system:wharf'"
    );
    let binding = rendered.iter().find(|document| document["kind"] == "ValidatingAdmissionPolicyBinding").unwrap();
    assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));
}

#[test]
fn watched_namespaces_get_roles_and_the_cluster_role_shrinks() {
    let helm = Helm::new();
    let rendered = documents(
        &helm
            .run(&[
                "template",
                "wharf",
                "charts/wharf",
                "-n",
                "wharf-system",
                "--set",
                "watchNamespaces={team-web,team-data}",
            ])
            .unwrap(),
    );
    assert_eq!(operator_env(&rendered, "WHARF_WATCH_NAMESPACES"), "team-web,team-data");
    let chart_role = rendered.iter().find(|document| document["kind"] == "ClusterRole").unwrap();
    assert_eq!(
        normalized_rules(chart_role),
        normalized_rules(&rbac_file("watch-namespaces/cluster.yaml", "ClusterRole")),
        "with watchNamespaces the chart's ClusterRole must grant exactly operator/rbac/watch-namespaces/cluster.yaml"
    );
    let namespaced = normalized_rules(&rbac_file("watch-namespaces/namespace.yaml", "Role"));
    let of_kind = |kind: &str| -> Vec<&Value> {
        rendered.iter().filter(|document| document["kind"] == kind && document["metadata"]["name"] == "wharf").collect()
    };
    let roles = of_kind("Role");
    let namespaces: Vec<&str> = roles.iter().map(|role| role["metadata"]["namespace"].as_str().unwrap()).collect();
    assert_eq!(namespaces, ["team-web", "team-data"]);
    for role in &roles {
        assert_eq!(
            normalized_rules(role),
            namespaced,
            "the Role in {} must be operator/rbac/watch-namespaces/namespace.yaml",
            role["metadata"]["namespace"]
        );
    }
    let bindings = of_kind("RoleBinding");
    assert_eq!(bindings.len(), 2);
    for binding in bindings {
        assert_eq!(
            binding["roleRef"],
            json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "wharf"})
        );
        assert_eq!(
            binding["subjects"],
            json!([{"kind": "ServiceAccount", "name": "wharf", "namespace": "wharf-system"}])
        );
    }
    // The leader-election Role stays as it is, in the release namespace.
    let lease_role = rendered.iter().find(|document| document["metadata"]["name"] == "wharf-leader-election").unwrap();
    assert_eq!(lease_role["metadata"]["namespace"], "wharf-system");
}

/// Server-side apply with `dryRun=All`: the apiserver validates, defaults and admits the
/// object (schemas, RBAC escalation checks, Pod Security) and stores nothing.
async fn dry_run_apply(client: &kube::Client, document: &Value, namespace: &str) -> Result<DynamicObject, String> {
    let object: DynamicObject = serde_json::from_value(document.clone()).unwrap();
    let api = dynamic_api(client, &object, Some(namespace)).await.map_err(|error| format!("{error:#}"))?;
    let name = object.metadata.name.clone().unwrap();
    let params = PatchParams::apply(TEST_FIELD_MANAGER).force().dry_run();
    api.patch(&name, &params, &Patch::Apply(document))
        .await
        .map_err(|error| format!("{} {name}: {error}", object.types.unwrap().kind))
}

async fn crd(client: &kube::Client, name: &str) -> CustomResourceDefinition {
    Api::<CustomResourceDefinition>::all(client.clone()).get(name).await.unwrap()
}

fn printer_columns(crd: &CustomResourceDefinition) -> Vec<String> {
    crd.spec.versions[0].additional_printer_columns.iter().flatten().map(|column| column.name.clone()).collect()
}

/// The platform team's path: the CRD chart installed at an older version and upgraded (the
/// CRDs change, which a `crds/` folder would not do), then the operator chart and the examples
/// through a server-side dry-run, and the operator's pod admitted under restricted Pod Security.
#[tokio::test]
async fn crd_chart_upgrades_and_everything_is_accepted() {
    let helm = Helm::new();
    let plane = ControlPlane::shared().await;
    let admin = plane.admin_client().await.unwrap();
    let kubeconfig = plane.admin_kubeconfig().unwrap();
    let kubeconfig = kubeconfig.to_str().unwrap();

    // The previous chart version: the same CRDs, but Repository lacks its printer columns.
    let previous = tempfile::tempdir().unwrap();
    let previous_chart = previous.path().join("wharf-crds");
    std::fs::create_dir_all(previous_chart.join("templates")).unwrap();
    let chart_yaml = std::fs::read_to_string(root().join("charts/wharf-crds/Chart.yaml")).unwrap();
    std::fs::write(previous_chart.join("Chart.yaml"), chart_yaml.replace("\nversion: ", "\nversion: 0.0.1-")).unwrap();
    for (name, yaml) in crd_templates() {
        let mut value: Value = serde_saphyr::from_str(&yaml).unwrap();
        if name == "repositories.wharf.dev.yaml" {
            value["spec"]["versions"][0].as_object_mut().unwrap().remove("additionalPrinterColumns");
        }
        std::fs::write(previous_chart.join("templates").join(name), serde_saphyr::to_string(&value).unwrap()).unwrap();
    }
    let install = |chart: &Path, verb: &str| {
        helm.run(&[
            "--kubeconfig",
            kubeconfig,
            verb,
            "wharf-crds",
            chart.to_str().unwrap(),
            "--namespace",
            "wharf-system",
            "--create-namespace",
        ])
    };
    install(&previous_chart, "install").unwrap();
    assert!(printer_columns(&crd(&admin, "repositories.wharf.dev").await).is_empty());

    install(&root().join("charts/wharf-crds"), "upgrade").unwrap();
    let upgraded = crd(&admin, "repositories.wharf.dev").await;
    assert!(printer_columns(&upgraded).contains(&"Domain".to_owned()), "{:?}", printer_columns(&upgraded));
    let history = helm.run(&["--kubeconfig", kubeconfig, "history", "wharf-crds", "-n", "wharf-system"]).unwrap();
    assert!(history.contains("wharf-crds-0.0.1-0.1.0") && history.contains("wharf-crds-0.1.0"), "{history}");
    eventually(Duration::from_secs(30), "Wharf kinds served", || {
        let admin = admin.clone();
        async move {
            let discovery = kube::Discovery::new(admin).run().await.map_err(|error| error.to_string())?;
            let group = discovery.get("wharf.dev").ok_or("no wharf.dev group yet")?;
            let count = group.recommended_resources().len();
            if count == 3 { Ok(()) } else { Err(format!("{count} kinds")) }
        }
    })
    .await
    .unwrap();

    // Every object of the operator chart, with values other than the defaults too (the
    // watched namespaces must exist for their Roles to be admitted).
    for namespace in ["team-web", "team-api"] {
        ensure_namespace(&admin, namespace).await.unwrap();
    }
    for values in [&[][..], &["--set", "replicaCount=2", "--set", "watchNamespaces={team-web,team-api}"][..]] {
        let mut args = vec!["template", "wharf", "charts/wharf", "--namespace", "wharf-system"];
        args.extend_from_slice(values);
        let rendered = documents(&helm.run(&args).unwrap());
        let kinds: Vec<&str> = rendered.iter().map(|document| document["kind"].as_str().unwrap()).collect();
        for kind in
            ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Service", "Deployment"]
        {
            assert!(kinds.contains(&kind), "no {kind} in {kinds:?}");
        }
        let watched = values.iter().any(|value| value.starts_with("watchNamespaces="));
        let roles = rendered.iter().filter(|document| document["kind"] == "Role").count();
        assert_eq!(roles, if watched { 3 } else { 1 }, "{values:?}");
        for document in &rendered {
            dry_run_apply(&admin, document, "wharf-system").await.unwrap();
        }
    }

    // Nothing of the dry-run was stored.
    let deployments = Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(admin.clone(), "wharf-system");
    assert!(deployments.get_opt("wharf").await.unwrap().is_none());

    // Pod Security admits pods, not Deployments: dry-run the Deployment's pod in a namespace
    // that enforces the restricted standard (with its ServiceAccount, which admission looks up).
    let rendered =
        documents(&helm.run(&["template", "wharf", "charts/wharf", "--namespace", "wharf-restricted"]).unwrap());
    apply_yaml(
        &admin,
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: wharf-restricted\n  labels:\n    \
         pod-security.kubernetes.io/enforce: restricted\n    pod-security.kubernetes.io/enforce-version: latest\n",
        None,
    )
    .await
    .unwrap();
    let account = rendered.iter().find(|document| document["kind"] == "ServiceAccount").unwrap();
    apply_yaml(&admin, &serde_json::to_string(account).unwrap(), Some("wharf-restricted")).await.unwrap();
    let deployment = rendered.iter().find(|document| document["kind"] == "Deployment").unwrap();
    let pods = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(admin.clone(), "wharf-restricted");
    let template = &deployment["spec"]["template"];
    let pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "wharf-operator-pod-security", "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
    }))
    .unwrap();
    pods.create(&PostParams { dry_run: true, field_manager: None }, &pod).await.unwrap();
    // And the check bites: the same pod without its security context is refused.
    let mut loose = serde_json::to_value(&pod).unwrap();
    loose["spec"]["containers"][0].as_object_mut().unwrap().remove("securityContext");
    let error = pods
        .create(&PostParams { dry_run: true, field_manager: None }, &serde_json::from_value(loose).unwrap())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("restricted"), "{error}");

    // The examples, sync-wave annotations and all, against the CRDs the chart installed.
    ensure_namespace(&admin, "wharf-examples").await.unwrap();
    for folder in ["local", "upstreams"] {
        let folder = root().join("examples").join(folder);
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            for document in documents(&std::fs::read_to_string(&path).unwrap()) {
                dry_run_apply(&admin, &document, "wharf-examples")
                    .await
                    .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
            }
        }
    }
}

/// The Prometheus Operator's objects render only where its CRDs are served (the chart never
/// requires them) and the apiserver admits them, with those CRDs installed from the project's
/// own module; the PrometheusRule carries exactly `files/wharf-alerts.yaml`, and the dashboard
/// is JSON Grafana can read.
#[tokio::test]
async fn monitoring_renders_where_the_prometheus_operator_is_installed() {
    let helm = Helm::new();
    let monitoring = |document: &&Value| document["kind"] == "ServiceMonitor" || document["kind"] == "PrometheusRule";
    let plain = documents(&helm.run(&["template", "wharf", "charts/wharf", "-n", "wharf-system"]).unwrap());
    assert!(!plain.iter().any(|document| monitoring(&document)), "no Prometheus Operator, no monitoring objects");
    let dashboard = plain.iter().find(|document| document["metadata"]["name"] == "wharf-dashboard").unwrap();
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let board: Value = serde_json::from_str(dashboard["data"]["wharf.json"].as_str().unwrap()).unwrap();
    assert_eq!(board["uid"], "wharf-registry");
    assert!(board["panels"].as_array().unwrap().len() >= 6);

    let apis = ["monitoring.coreos.com/v1/ServiceMonitor", "monitoring.coreos.com/v1/PrometheusRule"];
    let mut args = vec!["template", "wharf", "charts/wharf", "-n", "wharf-system"];
    for api in apis {
        args.extend(["--api-versions", api]);
    }
    let rendered = documents(&helm.run(&args).unwrap());
    let rule = rendered.iter().find(|document| document["kind"] == "PrometheusRule").unwrap();
    let alerts: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(root().join("charts/wharf/files/wharf-alerts.yaml")).unwrap())
            .unwrap();
    assert_eq!(rule["spec"], alerts, "the PrometheusRule is the rule file promtool checks");
    let monitor = rendered.iter().find(|document| document["kind"] == "ServiceMonitor").unwrap();
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");

    let plane = ControlPlane::shared().await;
    let admin = plane.admin_client().await.unwrap();
    ensure_namespace(&admin, "wharf-system").await.unwrap();
    wharf_test_harness::install_third_party_crds(
        &admin,
        &["monitoring.coreos.com_servicemonitors.yaml", "monitoring.coreos.com_prometheusrules.yaml"],
    )
    .await
    .unwrap();
    for document in rendered.iter().filter(monitoring) {
        dry_run_apply(&admin, document, "wharf-system").await.unwrap();
    }
}

/// The alerts are valid Prometheus rules and fire as meant: `promtool check rules` and
/// `promtool test rules` (tests/alerts/wharf-alerts.test.yaml), with promtool built from the
/// Prometheus module by `tests/promtool.sh`.
#[test]
fn the_alerts_pass_promtool() {
    let promtool = wharf_test_harness::promtool_binary().unwrap();
    for args in [
        &["check", "rules", "charts/wharf/files/wharf-alerts.yaml"][..],
        &["test", "rules", "tests/alerts/wharf-alerts.test.yaml"][..],
    ] {
        let output = Command::new(&promtool).args(args).current_dir(root()).output().unwrap();
        let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "promtool {args:?}: {printed}");
    }
}

/// `values.schema.json` types every value and refuses unknown keys: a misspelt value fails the
/// install instead of being ignored.
#[test]
fn misspelt_and_mistyped_values_are_refused() {
    let helm = Helm::new();
    for (set, says) in [
        ("leaderElecton.enabled=false", "leaderElecton"),
        ("monitoring.serviceMonitor.intervall=1m", "intervall"),
        ("logFormat=xml", "logFormat"),
        ("metrics.port=70000", "port"),
    ] {
        let refused = helm.run(&["template", "charts/wharf", "--set", set]).unwrap_err();
        assert!(refused.contains(says), "{set}: {refused}");
    }
    helm.run(&["template", "charts/wharf", "--set", "monitoring.serviceMonitor.labels.release=prometheus"]).unwrap();
}
