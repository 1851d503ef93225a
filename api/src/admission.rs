//! Admission rules of the CustomResourceDefinitions: the CEL validations
//! (`x-kubernetes-validations`) a kube-apiserver checks before it stores a Wharf object, and
//! the schema of the restriction fields. Pure: it edits the generated schemas.
//!
//! They live in one table rather than in attributes on the types because most need a path
//! through the generated schema (a rule on `spec.storage` of a Domain, another on the root
//! of a Repository) and because reading them side by side shows what admission catches and
//! what is left to the operator's status (a missing Domain, a cycle of upstreams, a name
//! clash: nothing a rule on one object can see).

use serde_json::{Value, json};

use crate::PackageFormat;

/// One CEL rule at a schema path (`.`-separated properties, `[]` for list items).
struct Rule {
    kind: &'static str,
    path: &'static str,
    rule: String,
    message: &'static str,
}

/// Seconds a duration string of the loader's syntax (`90`, `5m`, `1h30m`, `7d`) stands for,
/// as a CEL expression over `self`. CEL's `duration()` reads Go durations, which have no
/// days, so days are split off first.
fn duration_seconds() -> String {
    let go = |text: &str| format!("({text} == '' ? 0 : duration({text}).getSeconds())");
    format!(
        "(self.matches('^[0-9]+$') ? int(self) : (self.contains('d') ? int(self.split('d')[0]) * 86400 + {} : {}))",
        go("self.split('d')[1]"),
        go("self"),
    )
}

fn duration_between(min_seconds: u64, max_seconds: u64) -> String {
    let seconds = duration_seconds();
    format!("{seconds} >= {min_seconds} && {seconds} <= {max_seconds}")
}

/// A network source: kind CIDR with a range, or InCluster without one.
const NETWORK_SOURCE_RULE: &str =
    "self.kind == 'CIDR' ? (has(self.cidr) && (isCIDR(self.cidr) || isIP(self.cidr))) : !has(self.cidr)";
const NETWORK_SOURCE_MESSAGE: &str = "kind CIDR names a range in cidr (192.168.10.0/24, 2001:db8::/48, or an address); \
     kind InCluster takes none (the Domain's network.clusterCIDRs say what is inside)";

fn rules() -> Vec<Rule> {
    let mut rules = vec![
        Rule {
            kind: "Domain",
            path: "spec.storage",
            rule: "[has(self.s3), has(self.gcs), has(self.azure), has(self.filesystem), has(self.memory)]\
                   .filter(set, set).size() == 1"
                .into(),
            message: "set exactly one storage backend: s3, gcs, azure, filesystem or memory",
        },
        Rule {
            kind: "Domain",
            path: "spec.tokens.maxTTL",
            rule: duration_between(15 * 60, 12 * 3600),
            message: "maxTTL must be between 15m and 12h",
        },
        Rule {
            kind: "Domain",
            path: "spec.externalConnections",
            rule: "self.all(c, self.exists_one(d, d.name == c.name))".into(),
            message: "external connection names must be unique in a Domain",
        },
        Rule {
            kind: "Domain",
            path: "spec.externalConnections[].format",
            rule: format!(
                "self in [{}]",
                PackageFormat::WITH_EXTERNAL_CONNECTIONS.map(|format| format!("'{format}'")).join(", ")
            ),
            message: "external connections are served for npm, pypi, maven, nuget, swift, cargo and go; generic connections are not served (generic packages are never read through a chain)",
        },
        Rule {
            kind: "Domain",
            path: "spec.tokens.trustedIssuers[].issuer",
            rule: "isURL(self) && (url(self).getScheme() == 'https' || (url(self).getScheme() == 'http' && \
                   url(self).getHostname() in ['127.0.0.1', 'localhost', '::1']))"
                .into(),
            message: "a trusted issuer is an https URL (http only on a loopback address)",
        },
        Rule {
            kind: "Domain",
            path: "spec",
            rule: "!has(self.storage.filesystem) || !has(self.registry) || ((!has(self.registry.replicas) \
                   || self.registry.replicas <= 1) && (!has(self.registry.autoscaling) \
                   || self.registry.autoscaling.maxReplicas <= 1))"
                .into(),
            message: "filesystem storage lives on one ReadWriteOnce volume, which one registry pod can use: set \
                      registry.replicas to 1, or use object storage (s3, gcs, azure) for more replicas",
        },
        Rule {
            kind: "Domain",
            path: "spec.registry",
            rule: "!has(self.replicas) || !has(self.autoscaling)".into(),
            message: crate::domain::REPLICAS_OR_AUTOSCALING,
        },
        Rule {
            kind: "Domain",
            path: "spec.registry.autoscaling",
            rule: "!has(self.minReplicas) || self.minReplicas <= self.maxReplicas".into(),
            message: "minReplicas cannot exceed maxReplicas",
        },
        Rule {
            kind: "Domain",
            path: "spec",
            rule: "!has(self.registry) || !has(self.registry.dataVolume) || has(self.storage.filesystem)".into(),
            message: crate::domain::DATA_VOLUME_NEEDS_FILESYSTEM,
        },
        Rule {
            kind: "Domain",
            path: "spec.registry.expose",
            rule: "has(self.httpRoute) != has(self.ingress)".into(),
            message: crate::domain::EXPOSE_ROUTE_OR_INGRESS,
        },
        Rule {
            kind: "Domain",
            path: "spec.registry.expose.hosts[]",
            rule: "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$') && size(self) <= 253".into(),
            message: "a host is a lowercase DNS name (wharf.example.com), without scheme, port or path",
        },
        Rule {
            kind: "Domain",
            path: "spec.registry.networkPolicy.egressTo[]",
            rule: "isCIDR(self)".into(),
            message: "egressTo names CIDRs (10.0.0.1/32, 192.168.0.0/16)",
        },
        Rule {
            kind: "Domain",
            path: "spec.registry.trustedProxies[]",
            rule: "isCIDR(self) || isIP(self)".into(),
            message: "a trusted proxy is a CIDR (10.0.0.0/8) or an address",
        },
        Rule {
            kind: "Domain",
            path: "spec.network.clusterCIDRs[]",
            rule: "isCIDR(self) || isIP(self)".into(),
            message: "a cluster range is a CIDR (10.244.0.0/16, fd00:10:244::/56) or an address",
        },
        Rule {
            kind: "Domain",
            path: "spec.registry.tls",
            rule: "has(self.secretName) != has(self.issuerRef)".into(),
            message: crate::domain::TLS_SECRET_OR_ISSUER,
        },
        Rule {
            kind: "Domain",
            path: "spec.registry.tls",
            rule: "!has(self.dnsNames) || has(self.issuerRef)".into(),
            message: crate::domain::TLS_DNS_NAMES_NEED_ISSUER,
        },
        Rule {
            kind: "Domain",
            path: "spec.registry.dataVolume.size",
            rule: "isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))".into(),
            message: "size must be a positive Kubernetes quantity, such as 50Gi",
        },
        Rule {
            kind: "Domain",
            path: "spec.registry.dataVolume.storageClassName",
            rule: "self == oldSelf".into(),
            message: "a claim's storage class is fixed once it exists: create a new Domain to move to another class",
        },
        Rule {
            kind: "Domain",
            path: "spec.registry.podLabels",
            rule: "self.all(label, !label.startsWith('app.kubernetes.io/'))".into(),
            message: "app.kubernetes.io/ labels are the operator's (its selector uses them)",
        },
        Rule {
            kind: "Domain",
            path: "spec.registry.env[]",
            rule: "!self.name.startsWith('WHARF_')".into(),
            message: "WHARF_ variables are the operator's",
        },
        Rule {
            kind: "Domain",
            path: "spec.encryption",
            rule: "!has(self.keySecretRef.key)".into(),
            message: crate::domain::ENCRYPTION_KEY_NAMED,
        },
        Rule {
            kind: "Domain",
            path: "spec.tokens.trustedIssuers[]",
            rule: "!has(self.people) || !has(self.people.clientID) || self.people.clientID in self.audiences".into(),
            message: "people.clientID must be one of the issuer's audiences, or its ID tokens would be refused",
        },
        Rule {
            kind: "Domain",
            path: "spec.tokens.trustedIssuers[].people.prefix",
            rule: "!self.startsWith('system:')".into(),
            message: "`system:` names belong to Kubernetes; choose another prefix",
        },
        Rule {
            kind: "Domain",
            path: "spec.externalConnections[].url",
            rule: "isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHostname() != ''".into(),
            message: "url must be an http or https URL with a host",
        },
        Rule {
            kind: "Domain",
            path: "spec.externalConnections[].fileOrigins[]",
            rule: "isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHostname() != '' \
                   && url(self).getEscapedPath() in ['', '/'] && size(url(self).getQuery()) == 0"
                .into(),
            message: "a file origin is a scheme (http or https), a host and an optional port, nothing else",
        },
        Rule {
            kind: "Repository",
            path: "spec.domainRef",
            rule: "self == oldSelf".into(),
            message: "domainRef is immutable: packages cannot move between Domains; create a new Repository instead",
        },
        Rule {
            kind: "Repository",
            path: "",
            rule: "!has(self.spec.upstreams) || !self.spec.upstreams.exists(u, u.name == self.metadata.name)".into(),
            message: "a Repository cannot be its own upstream",
        },
        Rule {
            kind: "Repository",
            path: "spec.network.read[]",
            rule: NETWORK_SOURCE_RULE.into(),
            message: NETWORK_SOURCE_MESSAGE,
        },
        Rule {
            kind: "Repository",
            path: "spec.network.publish[]",
            rule: NETWORK_SOURCE_RULE.into(),
            message: NETWORK_SOURCE_MESSAGE,
        },
        Rule {
            kind: "Repository",
            path: "spec.cleanup[]",
            rule: "has(self.olderThan) || has(self.keepNewest) || has(self.notDownloadedFor)".into(),
            message: crate::repository::CLEANUP_RULE_NEEDS_A_LIMIT,
        },
        Rule {
            kind: "Repository",
            path: "spec.cleanup",
            rule: "self.all(r, self.exists_one(s, s.name == r.name))".into(),
            message: "each cleanup rule needs a name of its own",
        },
        Rule {
            kind: "Repository",
            path: "spec.upstreams",
            rule: "self.all(u, self.exists_one(v, v.name == u.name))".into(),
            message: "each upstream may be listed once",
        },
        Rule {
            kind: "Repository",
            path: "spec.allowedDownstreams[]",
            rule: "has(self.namespace) != has(self.namespaceSelector) && (!has(self.name) || has(self.namespace))"
                .into(),
            message: "name a namespace (and, optionally, one Repository in it) or a namespaceSelector, not both",
        },
        Rule {
            kind: "Repository",
            path: "spec.access.publish",
            rule: "!self.exists(subject, subject.kind == 'Anonymous')".into(),
            message: "Anonymous may read, never publish",
        },
        Rule {
            kind: "UpstreamPolicy",
            path: "spec.metadataTTL",
            rule: duration_between(0, 24 * 3600),
            message: "metadataTTL must be between 0s and 24h",
        },
        Rule {
            kind: "UpstreamPolicy",
            path: "spec.rules[].minimumReleaseAge",
            rule: duration_between(0, 365 * 86400),
            message: "minimumReleaseAge must be between 0s and 365d",
        },
    ];
    for field in ["publish", "externalUpstream", "internalUpstream"] {
        rules.push(Rule {
            kind: "UpstreamPolicy",
            path: match field {
                "publish" => "spec.rules[].publish",
                "externalUpstream" => "spec.rules[].externalUpstream",
                _ => "spec.rules[].internalUpstream",
            },
            rule: "self.mode == 'AllowSpecificRepositories' ? has(self.repositories) && size(self.repositories) > 0 \
                   : !has(self.repositories) || size(self.repositories) == 0"
                .into(),
            message: "AllowSpecificRepositories needs repositories, and only it takes them",
        });
    }
    for subject_list in ["spec.access.read[]", "spec.access.publish[]"] {
        rules.push(Rule {
            kind: "Repository",
            path: subject_list,
            rule: "self.kind == 'ServiceAccount' ? has(self.name) && has(self.namespace) : \
                   self.kind == 'Namespace' ? has(self.name) : \
                   self.kind == 'OIDC' ? has(self.issuer) : \
                   self.kind in ['User', 'Group'] ? has(self.name) : true"
                .into(),
            message: "ServiceAccount needs name and namespace, Namespace, User and Group need name, OIDC needs issuer",
        });
        rules.push(Rule {
            kind: "Repository",
            path: subject_list,
            rule: "self.kind != 'OIDC' || (has(self.claims) && size(self.claims) > 0)".into(),
            message: crate::common::OIDC_NEEDS_CLAIMS,
        });
    }
    rules
}

/// Size limits the apiserver needs to estimate the cost of the CEL rules (it refuses a CRD
/// whose rules could, over unbounded lists and strings, exceed its budget), generous for any
/// real configuration: (kind, path, keyword, limit).
const BOUNDS: &[(&str, &str, &str, u64)] = &[
    ("Domain", "spec.externalConnections", "maxItems", 100),
    ("Domain", "spec.externalConnections[].url", "maxLength", 2048),
    ("Domain", "spec.tokens.trustedIssuers[].audiences", "maxItems", 32),
    ("Domain", "spec.registry.podLabels", "maxProperties", 64),
    ("Domain", "spec.registry.env", "maxItems", 64),
    ("Domain", "spec.tokens.trustedIssuers[].audiences[]", "maxLength", 512),
    ("Repository", "spec.cleanup[].packages[]", "maxLength", 512),
    ("Repository", "spec.cleanup[].olderThan", "maxLength", 32),
    ("Repository", "spec.cleanup[].notDownloadedFor", "maxLength", 32),
    ("Repository", "spec.access.read", "maxItems", 100),
    ("Repository", "spec.access.publish", "maxItems", 100),
    ("Repository", "spec.access.read[].name", "maxLength", 253),
    ("Repository", "spec.access.read[].namespace", "maxLength", 63),
    ("Repository", "spec.access.read[].issuer", "maxLength", 2048),
    ("Repository", "spec.access.read[].claims", "maxProperties", 32),
    ("Repository", "spec.access.publish[].name", "maxLength", 253),
    ("Repository", "spec.access.publish[].namespace", "maxLength", 63),
    ("Repository", "spec.access.publish[].issuer", "maxLength", 2048),
    ("Repository", "spec.access.publish[].claims", "maxProperties", 32),
    ("UpstreamPolicy", "spec.targetRefs", "maxItems", 100),
    ("UpstreamPolicy", "spec.rules", "maxItems", 200),
    ("UpstreamPolicy", "spec.rules[].patterns", "maxItems", 100),
    ("UpstreamPolicy", "spec.rules[].patterns[]", "maxLength", 512),
    ("UpstreamPolicy", "spec.rules[].blockedVersions", "maxItems", 1000),
    ("UpstreamPolicy", "spec.rules[].blockedVersions[]", "maxLength", 512),
    ("UpstreamPolicy", "spec.rules[].publish.repositories", "maxItems", 100),
    ("UpstreamPolicy", "spec.rules[].externalUpstream.repositories", "maxItems", 100),
    ("UpstreamPolicy", "spec.rules[].internalUpstream.repositories", "maxItems", 100),
];

/// Adds the admission rules to the generated CRD of `kind` (as JSON).
pub(crate) fn apply(kind: &str, crd: &mut Value) {
    let Some(root) = crd.pointer_mut("/spec/versions/0/schema/openAPIV3Schema") else {
        return;
    };
    for (_, path, keyword, limit) in BOUNDS.iter().filter(|(bound_kind, ..)| *bound_kind == kind) {
        let Some(node) = schema_at(root, path) else {
            panic!("size limit for {kind}: no schema at {path:?}");
        };
        node[*keyword] = json!(limit);
    }
    for rule in rules().into_iter().filter(|rule| rule.kind == kind) {
        let Some(node) = schema_at(root, rule.path) else {
            panic!("admission rule for {kind}: no schema at {:?}", rule.path);
        };
        let validations =
            node.as_object_mut().map(|object| object.entry("x-kubernetes-validations").or_insert_with(|| json!([])));
        if let Some(Value::Array(list)) = validations {
            list.push(json!({"rule": rule.rule, "message": rule.message}));
        }
        // The apiserver estimates each rule's cost from the sizes it can know; a bounded
        // string keeps duration rules within budget.
        if node.get("type") == Some(&json!("string")) && node.get("maxLength").is_none() {
            node["maxLength"] = json!(64);
        }
    }
}

/// The schema node at `path` below `root`.
fn schema_at<'a>(root: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    let mut node = root;
    for segment in path.split('.').filter(|segment| !segment.is_empty()) {
        let (name, items) = segment.strip_suffix("[]").map_or((segment, false), |name| (name, true));
        node = node.get_mut("properties")?.get_mut(name)?;
        if items {
            node = node.get_mut("items")?;
        }
    }
    Some(node)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_finds_its_schema_node() {
        for crd in crate::crds() {
            let json = serde_json::to_value(&crd).unwrap();
            let kind = json["spec"]["names"]["kind"].as_str().unwrap().to_owned();
            let mut root = json["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone();
            for rule in rules().into_iter().filter(|rule| rule.kind == kind) {
                let node = schema_at(&mut root, rule.path).unwrap_or_else(|| panic!("{kind} {}", rule.path));
                let validations = node["x-kubernetes-validations"].as_array().unwrap();
                assert!(validations.iter().any(|v| v["message"] == rule.message), "{kind} {}", rule.path);
            }
        }
    }
}
