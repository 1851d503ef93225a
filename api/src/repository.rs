//! The `Repository` resource: a named place in a Domain to publish and install packages
//! of every format, with its upstreams and access rules. Pure data, no I/O.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{DeletionPolicy, DomainRef, RepositoryRef, Subject, SubjectKind};

/// Most upstreams a Repository may list.
pub const MAX_UPSTREAMS: usize = 10;

/// A Repository holds packages of every format in a Domain; it may read through other
/// Repositories of the Domain (upstreams) and one external connection.
// Several printer columns share `type_ = "string"`, which clippy takes for a repeated
// attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "wharf.dev",
    version = "v1alpha1",
    kind = "Repository",
    plural = "repositories",
    namespaced,
    status = "RepositoryStatus",
    derive = "PartialEq",
    shortname = "wrepo",
    category = "wharf",
    doc = "A Repository of Wharf holds packages of every format in a Domain; it may read through other Repositories of the Domain (upstreams) and one external connection.",
    printcolumn(name = "Domain", type_ = "string", json_path = ".spec.domainRef.name"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Size", type_ = "string", json_path = ".status.usage.size"),
    printcolumn(name = "Description", type_ = "string", priority = "1", json_path = ".spec.description"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct RepositorySpec {
    /// The Domain this Repository belongs to. Its namespace defaults to the Repository's.
    pub domain_ref: DomainRef,
    /// What the Repository is for, shown to people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Other Repositories of the same Domain searched, in this order, for packages this one
    /// does not hold (at most 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub upstreams: Vec<RepositoryRef>,
    /// Repositories that may list this one as an upstream even though their readers could not
    /// read it: their readers then get this Repository's packages through them. A Repository
    /// whose readers (and publishers) may all read this one needs no entry; any other chain
    /// that reaches this Repository is refused (reason `UpstreamNotPermitted`). Consent is given
    /// to each reading Repository, also one that reaches this one through others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub allowed_downstreams: Vec<DownstreamGrant>,
    /// Name of an external connection from the Domain's catalogue (at most one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_connection: Option<String>,
    /// Who may read and who may publish.
    #[serde(default)]
    pub access: AccessSpec,
    /// What happens to stored packages when the Repository is deleted: Retain (default) or
    /// Delete.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// Rules that dispose of versions nobody should need any more, applied by each run of
    /// the registry's storage collector (`wharf-registry storage gc --dry-run` previews
    /// them). A version goes when any rule selects it; its bytes go when nothing else in
    /// the Domain names them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub cleanup: Vec<CleanupRule>,
    /// Where callers may reach this Repository from, by their address (a client's own, or
    /// the one a trusted proxy reports in `X-Forwarded-For`), on top of `access`: the
    /// managed services' endpoint policies. Anywhere when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<RepositoryNetwork>,
}

/// The networks a Repository is reachable from, for reading and for publishing.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryNetwork {
    /// Callers from any of these may read (and publish, unless `publish` is set); from
    /// anywhere when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub read: Vec<NetworkSource>,
    /// Callers from any of these may publish; the `read` list when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub publish: Vec<NetworkSource>,
}

/// Where callers come from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSource {
    /// `InCluster` (the Domain's `network.clusterCIDRs`) or `CIDR`.
    pub kind: NetworkSourceKind,
    /// The range, with kind `CIDR` (`192.168.10.0/24`, `2001:db8::/48`, or one address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub cidr: Option<String>,
}

/// Kinds of [`NetworkSource`].
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum NetworkSourceKind {
    /// The Domain's `network.clusterCIDRs`.
    InCluster,
    /// The range in `cidr`.
    #[serde(rename = "CIDR")]
    Cidr,
}

impl std::fmt::Display for NetworkSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            NetworkSourceKind::InCluster => f.write_str("InCluster"),
            NetworkSourceKind::Cidr => write!(f, "CIDR {}", self.cidr.as_deref().unwrap_or_default()),
        }
    }
}

impl RepositoryNetwork {
    /// The sources that may publish: `publish`, or `read` when it is empty.
    pub fn publishers(&self) -> &[NetworkSource] {
        if self.publish.is_empty() { &self.read } else { &self.publish }
    }
}

/// Parses a CIDR or a single address (`/32`, `/128`).
pub fn parse_cidr(text: &str) -> Option<ipnet::IpNet> {
    let text = text.trim();
    match text.parse::<ipnet::IpNet>() {
        Ok(range) => Some(range.trunc()),
        Err(_) => text.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from),
    }
}

impl NetworkSource {
    /// Whether `address` is in this source, the cluster's ranges being `cluster`.
    pub fn contains(&self, address: std::net::IpAddr, cluster: &[ipnet::IpNet]) -> bool {
        let address = address.to_canonical();
        match self.kind {
            NetworkSourceKind::InCluster => cluster.iter().any(|range| range.contains(&address)),
            NetworkSourceKind::Cidr => self.cidr.as_deref().and_then(parse_cidr).is_some_and(|r| r.contains(&address)),
        }
    }

    /// Whether every address of `other` is in this source (conservatively: InCluster covers
    /// only InCluster).
    pub fn covers(&self, other: &NetworkSource) -> bool {
        match (self.kind, other.kind) {
            (NetworkSourceKind::InCluster, NetworkSourceKind::InCluster) => true,
            (NetworkSourceKind::Cidr, NetworkSourceKind::Cidr) => {
                match (self.cidr.as_deref().and_then(parse_cidr), other.cidr.as_deref().and_then(parse_cidr)) {
                    (Some(outer), Some(inner)) => outer.contains(&inner),
                    _ => false,
                }
            }
            _ => false,
        }
    }
}

/// Why a cleanup rule without `olderThan`, `notDownloadedFor` or `keepNewest` is refused: it
/// would dispose of every version it covers.
pub const CLEANUP_RULE_NEEDS_A_LIMIT: &str = "a cleanup rule needs olderThan, notDownloadedFor or keepNewest: without any of them it would dispose of every version it covers";

/// The longest `notDownloadedFor`: downloads are remembered for [`DOWNLOADS_KEPT_DAYS`] days.
pub const NOT_DOWNLOADED_FOR_LIMIT_DAYS: u64 = 365;
/// How long the registry keeps its record of which versions were downloaded on a day.
pub const DOWNLOADS_KEPT_DAYS: u64 = 400;

/// One cleanup rule: every condition it sets must hold for a version to be disposed of.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CleanupRule {
    /// The rule's name; a version it disposes of says `cleanup/NAME` disposed of it.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// Packages the rule covers, as UpstreamPolicy patterns (`/npm/acme/*`, `/pypi//requests`,
    /// `/*`); every package when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub packages: Vec<String>,
    /// Versions cached from an upstream (`Cached`), published here (`Published`), or both
    /// (`Any`, the default).
    #[serde(default)]
    pub origin: CleanupOrigin,
    /// Only versions published (or fetched) longer ago than this: `90d`, `12h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub older_than: Option<String>,
    /// Only versions nobody downloaded (through any Repository of the Domain) for this long,
    /// at most `365d`. A version counts as downloaded when it was published or fetched, and
    /// when the registry started recording downloads; so a new rule, or a new registry,
    /// disposes of nothing by this condition until it has watched for that long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_downloaded_for: Option<String>,
    /// Never the newest N versions of each package (newest by publish time, Disposed ones
    /// not counted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100000))]
    pub keep_newest: Option<u32>,
}

/// Which versions a cleanup rule looks at.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum CleanupOrigin {
    /// Cached and published alike.
    #[default]
    Any,
    /// Versions fetched through an external connection.
    Cached,
    /// Versions published to this Domain.
    Published,
}

impl RepositorySpec {
    /// A spec in the given Domain with every other field at its default (private, no
    /// upstreams).
    pub fn new(domain_ref: DomainRef) -> Self {
        RepositorySpec {
            domain_ref,
            description: None,
            upstreams: Vec::new(),
            allowed_downstreams: Vec::new(),
            external_connection: None,
            access: AccessSpec::default(),
            deletion_policy: DeletionPolicy::default(),
            cleanup: Vec::new(),
            network: None,
        }
    }
}

/// Repositories allowed to use a Repository as an upstream: one Repository (`namespace` and
/// `name`), every Repository of a namespace (`namespace`), or of the namespaces whose labels
/// match `namespaceSelector` (evaluated by the operator; a configuration file names
/// namespaces).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DownstreamGrant {
    /// Namespace of the allowed Repositories.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The one allowed Repository of `namespace`; every Repository of it when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Namespaces whose Repositories are allowed, by their labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
}

impl DownstreamGrant {
    /// The Repository `namespace/name`.
    pub fn repository(namespace: &str, name: &str) -> Self {
        DownstreamGrant { namespace: Some(namespace.to_owned()), name: Some(name.to_owned()), namespace_selector: None }
    }

    /// Every Repository of `namespace`.
    pub fn namespace(namespace: &str) -> Self {
        DownstreamGrant { namespace: Some(namespace.to_owned()), name: None, namespace_selector: None }
    }
}

/// Who may read from and publish to a Repository. Nobody but a Domain admin has access
/// unless listed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AccessSpec {
    /// Subjects that may install packages. Publishers may always read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read: Vec<Subject>,
    /// Subjects that may publish, change version statuses and delete versions. Anonymous is
    /// not allowed here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<Subject>,
}

/// Observed state of a Repository.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryStatus {
    /// Ready, Reconciling and Stalled conditions, with a reason and a message for people.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Client endpoint per package format (`npm` → its registry URL), for copy and paste.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub endpoints: BTreeMap<String, String>,
    /// The same, outside the cluster, when the Domain is exposed (`registry.expose`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub external_endpoints: BTreeMap<String, String>,
    /// What the Repository's versions hold, as the registry's last storage collection
    /// counted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<crate::usage::RepositoryUsageStatus>,
}

impl Repository {
    /// Whether anyone may read without credentials.
    pub fn allows_anonymous_read(&self) -> bool {
        self.spec.access.read.iter().any(|subject| subject.kind == SubjectKind::Anonymous)
    }

    /// The name of the Repository (empty if the object has none).
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }

    /// The upstream names, in search order.
    pub fn upstream_names(&self) -> impl Iterator<Item = &str> {
        self.spec.upstreams.iter().map(|upstream| upstream.name.as_str())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_read() {
        let mut repository = Repository::new("main", RepositorySpec::new(DomainRef::default()));
        assert!(!repository.allows_anonymous_read());
        repository.spec.access.publish.push(Subject::service_account("ci", "bot"));
        assert!(!repository.allows_anonymous_read());
        repository.spec.access.read.push(Subject::anonymous());
        assert!(repository.allows_anonymous_read());
        assert_eq!(repository.name(), "main");
    }

    #[test]
    fn serializes_with_api_version_and_kind() {
        let repository = Repository::new("main", RepositorySpec::new(DomainRef::default()));
        let value = serde_json::to_value(&repository).unwrap();
        assert_eq!(value["apiVersion"], "wharf.dev/v1alpha1");
        assert_eq!(value["kind"], "Repository");
        assert_eq!(value["spec"]["deletionPolicy"], "Retain");
    }
}
