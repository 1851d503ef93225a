//! The Argo CD health check (`gitops/argocd/health.lua`) on the fixtures of
//! `gitops/argocd/health_test.yaml`, run twice: by the reference Lua interpreter (5.4) and by
//! `tests/argocd-lua`, which runs it the way Argo CD does (gopher-lua, Lua 5.1, only the base,
//! package and table libraries); both with the object as the global `obj` and the returned
//! table read for `status` and `message`. Also: the fixtures are objects the Wharf types accept,
//! the Argo CD configuration carries the script unchanged, the examples' sync waves, and the
//! Flux example's consistency. Starts one process per fixture and interpreter; reads files.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;
use serde_json::Value;

fn gitops() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../gitops/argocd")
}

#[derive(Deserialize)]
struct HealthTests {
    tests: Vec<HealthTest>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HealthTest {
    health_status: Health,
    input_path: String,
}

#[derive(Deserialize, Debug, PartialEq)]
struct Health {
    status: String,
    message: String,
}

/// The interpreter: `WHARF_LUA_BIN`, else `lua5.4` or `lua` on PATH. Argo CD embeds Lua 5.1
/// (gopher-lua); the script keeps to what 5.1 and 5.4 share, so either runs it as Argo CD would.
fn lua() -> String {
    if let Ok(path) = std::env::var("WHARF_LUA_BIN") {
        return path;
    }
    for candidate in ["lua5.4", "lua"] {
        if Command::new(candidate).arg("-v").output().is_ok_and(|output| output.status.success()) {
            return candidate.to_owned();
        }
    }
    panic!(
        "no Lua interpreter: tests/install-clients.sh installs one (Debian: apt-get install lua5.4), or set WHARF_LUA_BIN"
    );
}

/// `value` as a Lua table constructor, the way Argo CD hands a JSON object to its scripts
/// (objects become tables with string keys, arrays tables indexed from 1, null is nil).
fn lua_literal(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("nil"),
        Value::Bool(flag) => out.push_str(if *flag { "true" } else { "false" }),
        Value::Number(number) => out.push_str(&number.to_string()),
        Value::String(text) => lua_string(text, out),
        Value::Array(items) => {
            out.push('{');
            for item in items {
                lua_literal(item, out);
                out.push(',');
            }
            out.push('}');
        }
        Value::Object(fields) => {
            out.push('{');
            for (key, item) in fields {
                out.push('[');
                lua_string(key, out);
                out.push_str("]=");
                lua_literal(item, out);
                out.push(',');
            }
            out.push('}');
        }
    }
}

fn lua_string(text: &str, out: &mut String) {
    out.push('"');
    for character in text.chars() {
        match character {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            // Decimal escapes are the form Lua 5.1 and 5.4 both read.
            control if (control as u32) < 0x20 || control == '\u{7f}' => {
                out.push_str(&format!("\\{:03}", control as u32))
            }
            other => out.push(other),
        }
    }
    out.push('"');
}

/// Runs `script` on `object` and returns what it reported.
fn run_health(script: &Path, object: &Value) -> Health {
    let mut chunk = String::from("obj = ");
    lua_literal(object, &mut chunk);
    chunk.push_str("\nlocal hs = dofile(");
    lua_string(&script.display().to_string(), &mut chunk);
    // One line each, so a message cannot be mistaken for the status.
    chunk.push_str(
        ")\nassert(type(hs) == 'table', 'the health script returned no table')\n\
         io.write(tostring(hs.status), '\\n', tostring(hs.message))\n",
    );
    let output = Command::new(lua()).arg("-e").arg(&chunk).output().unwrap();
    assert!(output.status.success(), "lua failed on {object}: {}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let (status, message) = stdout.split_once('\n').unwrap();
    Health { status: status.to_owned(), message: message.to_owned() }
}

/// `tests/argocd-lua`: `WHARF_ARGOCD_LUA_BIN`, else what `tests/argocd-lua.sh` builds.
fn argocd_lua() -> PathBuf {
    if let Some(path) = std::env::var_os("WHARF_ARGOCD_LUA_BIN") {
        return PathBuf::from(path);
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../argocd-lua.sh");
    let output = Command::new("bash").arg(&script).stderr(Stdio::inherit()).output().unwrap();
    assert!(output.status.success(), "{} failed (it needs the Go toolchain)", script.display());
    PathBuf::from(String::from_utf8(output.stdout).unwrap().lines().last().unwrap().trim())
}

/// Runs `script` on `object` inside Argo CD's Lua sandbox.
fn run_health_as_argo_cd(binary: &Path, script: &Path, object: &Value) -> Health {
    let mut child = Command::new(binary)
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(object.to_string().as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "Argo CD's sandbox failed on {object}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let (status, message) = stdout.split_once('\n').unwrap();
    Health { status: status.to_owned(), message: message.to_owned() }
}

#[test]
fn health_check_reports_what_argo_cd_should_show() {
    let folder = gitops();
    let cases: HealthTests =
        serde_saphyr::from_str(&std::fs::read_to_string(folder.join("health_test.yaml")).unwrap()).unwrap();
    assert!(cases.tests.len() >= 9, "healthy, progressing and degraded fixtures of each kind");
    let sandbox = argocd_lua();
    let mut failures = Vec::new();
    for case in &cases.tests {
        let object: Value = serde_saphyr::from_str(&std::fs::read_to_string(folder.join(&case.input_path)).unwrap())
            .unwrap_or_else(|error| panic!("{}: {error}", case.input_path));
        let script = folder.join("health.lua");
        for (interpreter, reported) in
            [("lua", run_health(&script, &object)), ("Argo CD", run_health_as_argo_cd(&sandbox, &script, &object))]
        {
            if reported != case.health_status {
                failures.push(format!(
                    "{} ({interpreter}): expected {:?}, got {reported:?}",
                    case.input_path, case.health_status
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Each kind has a fixture of every health Argo CD can give it.
    for kind in ["domain", "repository", "upstreampolicy"] {
        for status in ["Healthy", "Progressing", "Degraded"] {
            assert!(
                cases.tests.iter().any(|case| case.health_status.status == status
                    && case.input_path.starts_with(&format!("testdata/{kind}-"))),
                "no {status} fixture for {kind}"
            );
        }
    }
}

/// A fixture the types reject would test objects the operator never writes.
#[test]
fn fixtures_are_wharf_objects() {
    let folder = gitops().join("testdata");
    let mut checked = 0;
    for entry in std::fs::read_dir(&folder).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let kind: Value = serde_saphyr::from_str(&text).unwrap();
        let parsed = match kind["kind"].as_str() {
            Some("Domain") => serde_saphyr::from_str::<wharf_api::Domain>(&text).map(drop),
            Some("Repository") => serde_saphyr::from_str::<wharf_api::Repository>(&text).map(drop),
            Some("UpstreamPolicy") => serde_saphyr::from_str::<wharf_api::UpstreamPolicy>(&text).map(drop),
            other => panic!("{}: not a Wharf kind: {other:?}", path.display()),
        };
        parsed.unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        checked += 1;
    }
    assert!(checked >= 9);
}

/// What `gitops/argocd/argocd-cm.yaml` must hold: `script` under each kind's key.
fn argocd_config(script: &str) -> String {
    let mut config = String::from(
        "# Argo CD's health checks for Wharf's kinds: merge into the argocd-cm ConfigMap of the Argo CD\n\
         # installation (kubectl -n argocd patch configmap argocd-cm --patch-file gitops/argocd/argocd-cm.yaml).\n\
         # Generated from health.lua: do not edit. Regenerate with\n\
         # `WHARF_UPDATE_GITOPS=1 cargo test -p wharf-test-harness --test gitops`.\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: argocd-cm\ndata:\n",
    );
    for kind in ["Domain", "Repository", "UpstreamPolicy"] {
        config.push_str(&format!("  resource.customizations.health.wharf.dev_{kind}: |\n"));
        for line in script.lines() {
            if line.is_empty() {
                config.push('\n');
            } else {
                config.push_str(&format!("    {line}\n"));
            }
        }
    }
    config
}

/// The Argo CD configuration ships the script byte for byte, once per kind.
#[test]
fn argo_cd_configuration_carries_the_script() {
    let folder = gitops();
    let script = std::fs::read_to_string(folder.join("health.lua")).unwrap();
    let path = folder.join("argocd-cm.yaml");
    let expected = argocd_config(&script);
    if std::env::var("WHARF_UPDATE_GITOPS").is_ok_and(|value| value == "1") {
        std::fs::write(&path, &expected).unwrap();
    }
    assert!(
        std::fs::read_to_string(&path).unwrap() == expected,
        "gitops/argocd/argocd-cm.yaml is out of date; regenerate with \
         `WHARF_UPDATE_GITOPS=1 cargo test -p wharf-test-harness --test gitops`"
    );
    // And YAML reads it back as the script itself.
    let config: Value = serde_saphyr::from_str(&expected).unwrap();
    assert_eq!(config["metadata"]["name"], "argocd-cm");
    for kind in ["Domain", "Repository", "UpstreamPolicy"] {
        let key = format!("resource.customizations.health.wharf.dev_{kind}");
        assert_eq!(config["data"][&key].as_str(), Some(script.as_str()), "{key} differs from health.lua");
    }
}

/// Argo CD applies lower waves first and waits for them to be Healthy: in every example, each
/// Domain must come before every Repository and UpstreamPolicy.
#[test]
fn examples_sync_domains_before_repositories() {
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut checked = 0;
    for folder in ["local", "upstreams"] {
        let path = examples.join(folder).join("wharf.yaml");
        let documents: Vec<Value> = serde_saphyr::from_multiple(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let wave = |document: &Value| -> i64 {
            let annotation = &document["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"];
            let text = annotation.as_str().unwrap_or_else(|| panic!("{}: no sync wave on {document}", path.display()));
            text.parse().unwrap()
        };
        let domains: Vec<i64> = documents.iter().filter(|d| d["kind"] == "Domain").map(wave).collect();
        let dependents: Vec<i64> = documents.iter().filter(|d| d["kind"] != "Domain").map(wave).collect();
        assert!(!domains.is_empty() && !dependents.is_empty(), "{}", path.display());
        let last_domain = domains.iter().max().unwrap();
        let first_dependent = dependents.iter().min().unwrap();
        assert!(
            last_domain < first_dependent,
            "{}: a Repository or UpstreamPolicy syncs with or before a Domain",
            path.display()
        );
        checked += 1;
    }
    assert_eq!(checked, 2);
}

fn yaml_documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    serde_saphyr::from_multiple::<Value>(&text).unwrap().into_iter().filter(|document| !document.is_null()).collect()
}

/// Every YAML document under `folder` (one level, as a Flux Kustomization without a
/// kustomization.yaml reads it).
fn folder_documents(folder: &Path) -> Vec<Value> {
    let mut documents = Vec::new();
    for entry in std::fs::read_dir(folder).unwrap_or_else(|error| panic!("{}: {error}", folder.display())) {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|extension| extension == "yaml") {
            documents.extend(yaml_documents(&path));
        }
    }
    documents
}

/// The Flux example holds together: the paths it names exist and hold what they should, the
/// Kustomizations wait CRDs → operator → platform, and every Wharf object of the platform has
/// a health check.
#[test]
fn flux_example_holds_together() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let documents = yaml_documents(&root.join("gitops/flux/wharf.yaml"));
    let kustomization = |name: &str| {
        documents
            .iter()
            .find(|document| document["kind"] == "Kustomization" && document["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no Kustomization {name}"))
    };
    let depends_on = |name: &str| -> Vec<String> {
        kustomization(name)["spec"]["dependsOn"]
            .as_array()
            .map(|list| list.iter().map(|entry| entry["name"].as_str().unwrap().to_owned()).collect())
            .unwrap_or_default()
    };
    let folder = |name: &str| root.join(kustomization(name)["spec"]["path"].as_str().unwrap());
    assert!(depends_on("wharf-crds").is_empty());
    assert_eq!(depends_on("wharf-operator"), ["wharf-crds"]);
    assert_eq!(depends_on("wharf-platform"), ["wharf-operator"]);
    assert_eq!(kustomization("wharf-crds")["spec"]["prune"], false, "pruning CRDs deletes every Wharf object");

    let crds = folder_documents(&folder("wharf-crds"));
    assert_eq!(crds.len(), 3);
    assert!(crds.iter().all(|document| document["kind"] == "CustomResourceDefinition"));

    let operator = folder_documents(&folder("wharf-operator"));
    let release = operator.iter().find(|document| document["kind"] == "HelmRelease").unwrap();
    let chart = root.join(release["spec"]["chart"]["spec"]["chart"].as_str().unwrap());
    assert!(chart.join("Chart.yaml").is_file(), "{}", chart.display());
    let namespaces: Vec<&str> = operator
        .iter()
        .filter(|document| document["kind"] == "Namespace")
        .map(|document| document["metadata"]["name"].as_str().unwrap())
        .collect();
    assert!(namespaces.contains(&release["metadata"]["namespace"].as_str().unwrap()));

    let platform = kustomization("wharf-platform");
    let target = platform["spec"]["targetNamespace"].as_str().unwrap();
    assert!(namespaces.contains(&target), "the platform namespace {target} is created with the operator");
    let checks: Vec<(String, String)> = platform["spec"]["healthChecks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|check| {
            assert_eq!(check["namespace"], target);
            (check["kind"].as_str().unwrap().to_owned(), check["name"].as_str().unwrap().to_owned())
        })
        .collect();
    let objects: Vec<(String, String)> = folder_documents(&folder("wharf-platform"))
        .iter()
        .filter(|document| document["apiVersion"].as_str().is_some_and(|version| version.starts_with("wharf.dev/")))
        .map(|document| {
            (document["kind"].as_str().unwrap().to_owned(), document["metadata"]["name"].as_str().unwrap().to_owned())
        })
        .collect();
    let mut sorted_checks = checks.clone();
    sorted_checks.sort();
    let mut sorted_objects = objects.clone();
    sorted_objects.sort();
    assert_eq!(sorted_checks, sorted_objects, "one health check for each Wharf object of the platform");
}
