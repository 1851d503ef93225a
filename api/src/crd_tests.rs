//! Tests of the generated CustomResourceDefinitions: generation must not panic (kube
//! rejects some enum shapes at run time) and every schema must be structural. Pure.

#![allow(clippy::unwrap_used)]

use serde_json::Value;

use crate::crds;

/// Walks a schema and reports every node an apiserver would reject as non-structural: a
/// node without `type` (unless it is int-or-string or keeps unknown fields), or a type
/// inside `anyOf`/`oneOf`/`allOf`.
fn structural_problems(schema: &Value, path: &str, out: &mut Vec<String>) {
    let Some(node) = schema.as_object() else {
        out.push(format!("{path}: not an object"));
        return;
    };
    let exempt = node.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true))
        || node.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if !node.contains_key("type") && !exempt {
        out.push(format!("{path}: no type"));
    }
    if let Some(properties) = node.get("properties").and_then(Value::as_object) {
        for (name, child) in properties {
            structural_problems(child, &format!("{path}.{name}"), out);
        }
    }
    if let Some(items) = node.get("items") {
        structural_problems(items, &format!("{path}[]"), out);
    }
    if let Some(additional) = node.get("additionalProperties").filter(|value| value.is_object()) {
        structural_problems(additional, &format!("{path}{{}}"), out);
    }
    for keyword in ["anyOf", "oneOf", "allOf"] {
        for (index, branch) in node.get(keyword).and_then(Value::as_array).into_iter().flatten().enumerate() {
            for forbidden in ["type", "description", "default", "nullable", "$ref"] {
                if branch.get(forbidden).is_some() {
                    out.push(format!("{path}.{keyword}[{index}]: has {forbidden}"));
                }
            }
        }
    }
    if node.contains_key("$ref") {
        out.push(format!("{path}: unresolved $ref"));
    }
}

#[test]
fn crds_generate_and_are_structural() {
    let crds = crds();
    assert_eq!(crds.len(), 3);
    for crd in crds {
        let json = serde_json::to_value(&crd).unwrap();
        let name = json["metadata"]["name"].as_str().unwrap().to_owned();
        let version = &json["spec"]["versions"][0];
        assert_eq!(version["name"], "v1alpha1", "{name}");
        assert_eq!(json["spec"]["scope"], "Namespaced", "{name}");
        assert_eq!(json["spec"]["names"]["categories"][0], "wharf", "{name}");
        assert!(json["spec"]["names"]["shortNames"][0].is_string(), "{name}");
        assert!(version["subresources"]["status"].is_object(), "{name}");
        let columns = version["additionalPrinterColumns"].as_array().unwrap();
        assert!(columns.iter().any(|column| column["name"] == "Ready"), "{name}");

        let root = &version["schema"]["openAPIV3Schema"];
        let mut problems = Vec::new();
        for part in ["spec", "status"] {
            let schema = &root["properties"][part];
            assert!(schema.is_object(), "{name}: no {part} schema");
            structural_problems(schema, &format!("{name}.{part}"), &mut problems);
        }
        assert!(problems.is_empty(), "non-structural schema:\n{}", problems.join("\n"));
    }
}

#[test]
fn crd_names_and_wire_fields() {
    let crds: Vec<Value> = crds().iter().map(|crd| serde_json::to_value(crd).unwrap()).collect();
    let names: Vec<&str> = crds.iter().map(|crd| crd["metadata"]["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["domains.wharf.dev", "repositories.wharf.dev", "upstreampolicies.wharf.dev"]);
    let spec =
        |index: usize| crds[index]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"].clone();

    let domain = spec(0);
    assert_eq!(domain["required"], serde_json::json!(["storage"]));
    assert!(domain["properties"]["tokens"]["properties"]["maxTTL"].is_object());
    assert!(domain["properties"]["registry"]["properties"]["service"]["properties"]["type"].is_object());
    assert_eq!(domain["properties"]["deletionPolicy"]["default"], "Retain");
    assert_eq!(
        domain["properties"]["externalConnections"]["items"]["properties"]["format"]["enum"],
        serde_json::json!(["npm", "pypi", "maven", "nuget", "swift", "cargo", "go", "generic"])
    );

    let repository = spec(1);
    assert_eq!(repository["properties"]["upstreams"]["maxItems"], 10);
    assert_eq!(
        repository["properties"]["access"]["properties"]["read"]["items"]["properties"]["kind"]["enum"],
        serde_json::json!(["ServiceAccount", "Namespace", "OIDC", "User", "Group", "Anonymous"])
    );

    let policy = spec(2);
    assert!(policy["properties"]["metadataTTL"].is_object());
    let rule = &policy["properties"]["rules"]["items"]["properties"];
    assert!(rule["patterns"]["items"]["pattern"].is_string());
    // The cluster takes the long form only; see policy.rs.
    assert_eq!(rule["publish"]["type"], "object");
    assert_eq!(
        rule["publish"]["properties"]["mode"]["enum"],
        serde_json::json!(["Allow", "Block", "AllowSpecificRepositories", "Inherit"])
    );
}

/// The schema's regular expressions accept what the parsers accept, on a sample. No regex
/// crate here: the sample is checked against the parsers, and the patterns are compared
/// with the text the CRD carries.
#[test]
fn schema_patterns_are_in_the_crd() {
    let policy = serde_json::to_value(&crds()[2]).unwrap();
    let rule = &policy["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["rules"]
        ["items"]["properties"];
    assert_eq!(rule["patterns"]["items"]["pattern"], crate::pattern::PATTERN_SCHEMA_PATTERN);
    assert_eq!(rule["blockedVersions"]["items"]["pattern"], crate::pattern::BLOCKED_VERSION_SCHEMA_PATTERN);
    assert_eq!(rule["minimumReleaseAge"]["pattern"], crate::duration::DURATION_SCHEMA_PATTERN);
}
