//! The `UpstreamPolicy` resource: rules attached to a Domain or Repositories that decide,
//! per package pattern, who may publish, where packages may come from, how old upstream
//! versions must be and which versions are blocked. Pure data, no I/O.

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::de::{self, IntoDeserializer, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::duration::DURATION_SCHEMA_PATTERN;
use crate::pattern::{BLOCKED_VERSION_SCHEMA_PATTERN, PATTERN_SCHEMA_PATTERN};

/// Rules for the packages of a Domain or of some Repositories: publishing, upstream
/// origins, cooldown, blocked versions and metadata freshness. The most specific pattern
/// wins; a Repository-level policy beats a Domain-level one.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "wharf.dev",
    version = "v1alpha1",
    kind = "UpstreamPolicy",
    plural = "upstreampolicies",
    namespaced,
    status = "UpstreamPolicyStatus",
    derive = "PartialEq",
    shortname = "wupol",
    category = "wharf",
    doc = "An UpstreamPolicy of Wharf sets rules for the packages of a Domain or of some Repositories: publishing, upstream origins, cooldown, blocked versions and metadata freshness.",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamPolicySpec {
    /// The Domain or Repositories this policy applies to.
    #[schemars(length(min = 1))]
    pub target_refs: Vec<TargetRef>,
    /// How long upstream metadata is reused before it is fetched again, such as `5m` or
    /// `30s`.
    #[serde(rename = "metadataTTL", default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_SCHEMA_PATTERN))]
    pub metadata_ttl: Option<String>,
    /// Rules, each for a set of package patterns. For a package, the rule with the most
    /// specific matching pattern decides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<PolicyRule>,
}

/// What an UpstreamPolicy is attached to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    /// Domain or Repository.
    pub kind: TargetKind,
    /// Name of the Domain or Repository.
    pub name: String,
    /// Namespace of the target. For a Domain it defaults to the policy's namespace; a
    /// Repository is found by name alone (names are unique in a Domain) unless given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Kinds an UpstreamPolicy can attach to.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum TargetKind {
    /// A whole Domain: every Repository in it.
    Domain,
    /// One Repository.
    Repository,
}

/// Observed state of an UpstreamPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamPolicyStatus {
    /// Ready, Reconciling and Stalled conditions, with a reason and a message for people.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// One rule: what applies to the packages matching its patterns.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    /// Package patterns: `/*`, `/npm/*`, `/npm/acme/*` (a namespace), `/pypi//acme~` (a
    /// name prefix), `/maven/com.acme/lib$` (one package).
    #[schemars(length(min = 1), inner(regex(pattern = PATTERN_SCHEMA_PATTERN)))]
    pub patterns: Vec<String>,
    /// Whether the packages may be published directly to the Repositories.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<Restriction>,
    /// Whether the packages may be fetched through external connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_upstream: Option<Restriction>,
    /// Whether the packages may be served from upstream Repositories of the Domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal_upstream: Option<Restriction>,
    /// Cooldown: upstream versions younger than this are hidden (such as `72h` or `7d`);
    /// `latest` points at the newest version old enough.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_SCHEMA_PATTERN))]
    pub minimum_release_age: Option<String>,
    /// Blocked packages or versions: a pattern (every version), or an exact package with a
    /// version, like `/npm//event-stream@3.3.6`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = BLOCKED_VERSION_SCHEMA_PATTERN)))]
    pub blocked_versions: Vec<String>,
}

/// An origin control: a mode (`Allow`, `Block`, `AllowSpecificRepositories` with a list,
/// `Inherit`) and, for `AllowSpecificRepositories`, the Repositories.
//
// On the wire both the short form `publish: Allow` and the long form
// `{mode: AllowSpecificRepositories, repositories: [shared]}` are read (the Deserialize
// impl below) in local YAML. The CRD describes only the long form: a structural schema
// cannot type "string or object", and an untyped node would let a malformed value into the
// apiserver, where it would break every typed watch of UpstreamPolicies (one bad object
// fails the whole list) — so the cluster takes `publish: {mode: Allow}`. Serialization always writes the long form, so what the operator
// renders is read the same in both modes.
#[derive(Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Restriction {
    /// Allow, Block, AllowSpecificRepositories (only the listed Repositories) or Inherit
    /// (what a less specific rule or the Domain-level policy says).
    pub mode: RestrictionMode,
    /// The Repositories allowed by AllowSpecificRepositories.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repositories: Vec<String>,
}

impl Restriction {
    /// A restriction without a repository list.
    pub fn new(mode: RestrictionMode) -> Self {
        Restriction { mode, repositories: Vec::new() }
    }

    /// `AllowSpecificRepositories` with the given Repositories.
    pub fn allow_specific<I, S>(repositories: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Restriction {
            mode: RestrictionMode::AllowSpecificRepositories,
            repositories: repositories.into_iter().map(Into::into).collect(),
        }
    }

    /// Whether the named Repository is allowed (`Inherit` answers `None`: ask the next
    /// rule).
    pub fn allows(&self, repository: &str) -> Option<bool> {
        match self.mode {
            RestrictionMode::Allow => Some(true),
            RestrictionMode::Block => Some(false),
            RestrictionMode::AllowSpecificRepositories => {
                Some(self.repositories.iter().any(|allowed| allowed == repository))
            }
            RestrictionMode::Inherit => None,
        }
    }
}

impl From<RestrictionMode> for Restriction {
    fn from(mode: RestrictionMode) -> Self {
        Restriction::new(mode)
    }
}

impl<'de> Deserialize<'de> for Restriction {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct LongForm {
            mode: RestrictionMode,
            #[serde(default)]
            repositories: Vec<String>,
        }

        struct RestrictionVisitor;

        impl<'de> Visitor<'de> for RestrictionVisitor {
            type Value = Restriction;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("Allow, Block, AllowSpecificRepositories, Inherit, or {mode, repositories}")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Restriction, E> {
                let mode = RestrictionMode::deserialize(text.into_deserializer())?;
                Ok(Restriction::new(mode))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Restriction, A::Error> {
                let long = LongForm::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Restriction { mode: long.mode, repositories: long.repositories })
            }
        }

        deserializer.deserialize_any(RestrictionVisitor)
    }
}

/// Modes of an origin control.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum RestrictionMode {
    /// Allowed.
    Allow,
    /// Refused.
    Block,
    /// Allowed for the listed Repositories only.
    AllowSpecificRepositories,
    /// Decided by a less specific rule, or by the Domain-level policy.
    Inherit,
}

impl RestrictionMode {
    /// The name as written in YAML.
    pub fn as_str(&self) -> &'static str {
        match self {
            RestrictionMode::Allow => "Allow",
            RestrictionMode::Block => "Block",
            RestrictionMode::AllowSpecificRepositories => "AllowSpecificRepositories",
            RestrictionMode::Inherit => "Inherit",
        }
    }
}

impl fmt::Display for RestrictionMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn restriction_accepts_short_and_long_forms() {
        let rule: PolicyRule = serde_json::from_value(serde_json::json!({
            "patterns": ["/npm/acme/*"],
            "publish": "Allow",
            "externalUpstream": {"mode": "Block"},
            "internalUpstream": {"mode": "AllowSpecificRepositories", "repositories": ["shared"]}
        }))
        .unwrap();
        assert_eq!(rule.publish, Some(Restriction::new(RestrictionMode::Allow)));
        assert_eq!(rule.external_upstream, Some(Restriction::new(RestrictionMode::Block)));
        assert_eq!(rule.internal_upstream, Some(Restriction::allow_specific(["shared"])));
        let back = serde_json::to_value(&rule).unwrap();
        assert_eq!(back["publish"], serde_json::json!({"mode": "Allow"}));
        assert_eq!(
            back["internalUpstream"],
            serde_json::json!({"mode": "AllowSpecificRepositories", "repositories": ["shared"]})
        );
    }

    #[test]
    fn restriction_errors_are_readable() {
        let error = serde_json::from_value::<Restriction>(serde_json::json!("Allw")).unwrap_err();
        assert!(error.to_string().contains("unknown variant `Allw`"), "{error}");
        let error = serde_json::from_value::<Restriction>(serde_json::json!(3)).unwrap_err();
        assert!(error.to_string().contains("Allow, Block"), "{error}");
        let error = serde_json::from_value::<Restriction>(serde_json::json!({"repositories": []})).unwrap_err();
        assert!(error.to_string().contains("missing field `mode`"), "{error}");
    }

    #[test]
    fn restriction_answers() {
        assert_eq!(Restriction::new(RestrictionMode::Allow).allows("a"), Some(true));
        assert_eq!(Restriction::new(RestrictionMode::Block).allows("a"), Some(false));
        assert_eq!(Restriction::new(RestrictionMode::Inherit).allows("a"), None);
        let specific = Restriction::allow_specific(["shared"]);
        assert_eq!(specific.allows("shared"), Some(true));
        assert_eq!(specific.allows("other"), Some(false));
    }
}
