//! UpstreamPolicy evaluation and upstream chains: for one package in one
//! Repository, which rule decides publishing, origins, cooldown, blocked
//! versions and metadata freshness, and in which order Repositories and the
//! external connection are searched. Pure, no I/O.
//!
//! Precedence, per setting: Repository-level policies before Domain-level
//! ones; within a level, the rule with the most specific matching pattern;
//! a rule that leaves a setting unset or says `Inherit` falls through to the
//! next. Blocked versions add up over every matching rule of both levels:
//! blocking is never undone by a more specific rule that does not mention it.

use std::collections::HashSet;
use std::time::Duration;

use serde::Serialize;
use wharf_api::{
    BlockedVersion, DomainConfig, ExternalConnection, PackageFormat, PackagePattern, PolicyRule, Restriction,
    RestrictionMode, UpstreamPolicy, parse_duration,
};

use super::model::{OriginKind, PackageId, PackageIndex, PackageOrigin, VersionEntry};

/// Upstream metadata is reused this long when no policy sets `metadataTTL`.
pub const DEFAULT_METADATA_TTL: Duration = Duration::from_secs(5 * 60);
/// Repositories searched for one package at most, the requesting one included.
pub const MAX_SEARCHED_REPOSITORIES: usize = 25;

/// Where a policy is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub enum PolicyLevel {
    Repository,
    Domain,
}

/// The policy, rule and pattern that produced a setting.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuleSource {
    /// `namespace/name` of the UpstreamPolicy.
    pub policy: String,
    pub level: PolicyLevel,
    /// Position of the rule in the policy's `rules`; absent for policy-wide settings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<usize>,
    /// The pattern of that rule that matched the package.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
}

/// A setting and what decided it (`None`: nothing did; the default applies).
#[derive(Clone, Debug, PartialEq)]
pub struct Decided<T> {
    pub value: T,
    pub source: Option<RuleSource>,
}

impl<T> Decided<T> {
    fn default_value(value: T) -> Self {
        Decided { value, source: None }
    }
}

/// Everything the policies say about one package in one Repository.
#[derive(Clone, Debug, PartialEq)]
pub struct EffectivePolicy {
    /// `None`: no rule decides; the first-version origin decides.
    pub publish: Decided<Option<Restriction>>,
    pub external_upstream: Decided<Option<Restriction>>,
    pub internal_upstream: Decided<Option<Restriction>>,
    pub minimum_release_age: Decided<Option<Duration>>,
    pub blocked_versions: Vec<Decided<BlockedVersion>>,
    pub metadata_ttl: Decided<Duration>,
}

impl EffectivePolicy {
    /// Whether `version` of the package is blocked.
    pub fn blocks_version(&self, id: &PackageId, version: &str) -> bool {
        self.blocking_entry(id, version).is_some()
    }

    /// The `blockedVersions` entry that blocks `version` of the package, and its rule.
    pub fn blocking_entry(&self, id: &PackageId, version: &str) -> Option<&Decided<BlockedVersion>> {
        let (namespace, name) = coordinates(id);
        self.blocked_versions.iter().find(|blocked| blocked.value.matches(id.format, &namespace, &name, version))
    }

    /// Whether the external connection may serve the package: `None` when no
    /// rule decides (the first-version origin does then).
    pub fn external_allowed(&self, repository: &str) -> Option<bool> {
        self.external_upstream.value.as_ref().and_then(|r| r.allows(repository))
    }

    /// Whether a version of the package may be served from the upstream
    /// Repository `upstream`; allowed unless a rule says otherwise.
    pub fn internal_allowed(&self, upstream: &str) -> bool {
        self.internal_upstream.value.as_ref().and_then(|r| r.allows(upstream)).unwrap_or(true)
    }

    /// Whether a direct publish to `repository` is allowed: `None` when no
    /// rule decides (the first-version origin does then).
    pub fn publish_allowed(&self, repository: &str) -> Option<bool> {
        self.publish.value.as_ref().and_then(|r| r.allows(repository))
    }
}

/// An origin decision and the reason a person reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub allowed: bool,
    pub reason: String,
}

pub(crate) fn rule_reason(source: Option<&RuleSource>) -> String {
    match source {
        Some(RuleSource { policy, pattern: Some(pattern), .. }) => {
            format!("UpstreamPolicy {policy}, pattern {pattern}")
        }
        Some(RuleSource { policy, .. }) => format!("UpstreamPolicy {policy}"),
        None => "the default".to_owned(),
    }
}

/// Whether the package may be published directly to `repository`: a rule
/// decides; without one, a name first fetched from outside is refused.
pub fn may_publish(effective: &EffectivePolicy, origin: Option<&PackageOrigin>, repository: &str) -> Verdict {
    if let Some(allowed) = effective.publish_allowed(repository) {
        let how = if allowed { "allowed" } else { "blocked" };
        return Verdict {
            allowed,
            reason: format!("publishing is {how} by {}", rule_reason(effective.publish.source.as_ref())),
        };
    }
    match origin {
        Some(origin @ PackageOrigin { kind: OriginKind::External, .. }) => Verdict {
            allowed: false,
            reason: format!(
                "the first version of this name came through external connection {}; publishing it directly needs an UpstreamPolicy rule with publish: Allow",
                origin.connection.as_deref().unwrap_or("?")
            ),
        },
        _ => {
            Verdict { allowed: true, reason: "no rule restricts publishing and the name has no external origin".into() }
        }
    }
}

/// Whether the external connection may serve the package to `repository`:
/// a rule decides; without one, a name first published directly in the
/// Domain is reserved and never served from outside.
pub fn may_fetch_external(effective: &EffectivePolicy, origin: Option<&PackageOrigin>, repository: &str) -> Verdict {
    if let Some(allowed) = effective.external_allowed(repository) {
        let how = if allowed { "allowed" } else { "blocked" };
        return Verdict {
            allowed,
            reason: format!(
                "the external upstream is {how} by {}",
                rule_reason(effective.external_upstream.source.as_ref())
            ),
        };
    }
    match origin {
        Some(origin @ PackageOrigin { kind: OriginKind::Direct, .. }) => Verdict {
            allowed: false,
            reason: format!(
                "the name is reserved: its first version ({}) was published directly to repository {}",
                origin.version, origin.repository
            ),
        },
        _ => Verdict {
            allowed: true,
            reason: "no rule restricts the external upstream and the name is not reserved".into(),
        },
    }
}

/// Lays an external connection's view of a package under the chain's own:
/// versions the chain holds win; a tag of the chain wins when it names a
/// version published in the Domain, while tags that only follow fetched
/// copies (the `latest` a cached version got) give way to the upstream's.
pub fn merge_external(local: Option<PackageIndex>, upstream: PackageIndex) -> PackageIndex {
    let Some(mut merged) = local else {
        return upstream;
    };
    let own_tags: Vec<(String, String)> = merged
        .tags
        .iter()
        .filter(|(_, version)| merged.versions.get(*version).is_some_and(|entry| entry.fetched_from.is_none()))
        .map(|(tag, version)| (tag.clone(), version.clone()))
        .collect();
    for (version, entry) in upstream.versions {
        match merged.versions.get_mut(&version) {
            None => {
                merged.versions.insert(version, entry);
            }
            // A cached copy may hold only some of the version's files (one
            // wheel of several): the others stay fetchable from upstream.
            Some(cached) if cached.fetched_from.is_some() => {
                for (name, asset) in entry.assets {
                    cached.assets.entry(name).or_insert(asset);
                }
            }
            Some(_) => {}
        }
    }
    for (tag, version) in upstream.tags {
        merged.tags.insert(tag, version);
    }
    merged.tags.extend(own_tags);
    merged.modified = merged.modified.max(upstream.modified);
    merged
}

/// Why the policy hides a version from a Repository's clients.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(tag = "reason", rename_all = "camelCase")]
pub enum Hiding {
    /// A `blockedVersions` entry matches it.
    Blocked { entry: String, source: Option<RuleSource> },
    /// It came from outside less than `minimumReleaseAge` ago.
    TooYoung {
        #[serde(rename = "minimumReleaseAge")]
        minimum_release_age: String,
        /// When it is served.
        #[serde(rename = "shownFrom")]
        shown_from: chrono::DateTime<chrono::Utc>,
        source: Option<RuleSource>,
    },
}

/// Whether, and why, the policy hides `version` (held as `entry`): blocked
/// wherever it comes from, or from outside and younger than
/// `minimumReleaseAge`. The one decision [`apply_policy`] takes per version.
pub fn hiding(
    entry: &VersionEntry,
    id: &PackageId,
    version: &str,
    effective: &EffectivePolicy,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<Hiding> {
    if let Some(blocked) = effective.blocking_entry(id, version) {
        return Some(Hiding::Blocked { entry: blocked.value.to_string(), source: blocked.source.clone() });
    }
    let decided = &effective.minimum_release_age;
    let minimum = decided.value?;
    let age = chrono::Duration::from_std(minimum).ok()?;
    (entry.fetched_from.is_some() && now - entry.created < age).then(|| Hiding::TooYoung {
        minimum_release_age: wharf_api::format_duration(minimum),
        shown_from: entry.created + age,
        source: decided.source.clone(),
    })
}

/// Hides what the policy forbids (see [`hiding`]). Tags left pointing at
/// nothing go, and `latest` moves to the newest version left.
pub fn apply_policy(
    index: &mut PackageIndex,
    id: &PackageId,
    effective: &EffectivePolicy,
    now: chrono::DateTime<chrono::Utc>,
) {
    index.versions.retain(|version, entry| hiding(entry, id, version, effective, now).is_none());
    let versions = &index.versions;
    index.tags.retain(|_, version| versions.contains_key(version));
    super::repair_latest(index);
}

/// The namespace and name a pattern sees: the npm scope without `@`, the
/// Maven groupId, the generic namespace, the Swift scope; empty for the
/// other formats.
pub fn coordinates(id: &PackageId) -> (String, String) {
    let split = |separator: char| match id.name.split_once(separator) {
        Some((namespace, name)) => (namespace.to_owned(), name.to_owned()),
        None => (String::new(), id.name.clone()),
    };
    match id.format {
        PackageFormat::Npm => match id.name.strip_prefix('@').and_then(|scoped| scoped.split_once('/')) {
            Some((scope, name)) => (scope.to_owned(), name.to_owned()),
            None => (String::new(), id.name.clone()),
        },
        PackageFormat::Maven => split(':'),
        PackageFormat::Generic => split('/'),
        PackageFormat::Swift => split('.'),
        _ => (String::new(), id.name.clone()),
    }
}

/// A rule of some policy whose pattern matches the package.
struct Candidate<'a> {
    policy: &'a UpstreamPolicy,
    level: PolicyLevel,
    rule_index: usize,
    rule: &'a PolicyRule,
    pattern: &'a str,
    specificity: u32,
}

impl Candidate<'_> {
    fn source(&self) -> RuleSource {
        RuleSource {
            policy: policy_name(self.policy),
            level: self.level,
            rule: Some(self.rule_index),
            pattern: Some(self.pattern.to_owned()),
        }
    }
}

fn policy_name(policy: &UpstreamPolicy) -> String {
    let namespace = policy.metadata.namespace.as_deref().unwrap_or(wharf_api::DEFAULT_NAMESPACE);
    format!("{namespace}/{}", policy.metadata.name.as_deref().unwrap_or_default())
}

/// Matching rules of the given policies, most specific first; ties keep the
/// order the policies and rules were written in.
fn candidates<'a>(
    policies: impl Iterator<Item = &'a UpstreamPolicy>,
    level: PolicyLevel,
    id: &PackageId,
) -> Vec<Candidate<'a>> {
    let (namespace, name) = coordinates(id);
    let mut found = Vec::new();
    for policy in policies {
        for (rule_index, rule) in policy.spec.rules.iter().enumerate() {
            // The most specific of a rule's matching patterns speaks for it.
            let best = rule
                .patterns
                .iter()
                .filter_map(|text| PackagePattern::parse(text).ok().map(|pattern| (text, pattern)))
                .filter(|(_, pattern)| pattern.matches(id.format, &namespace, &name))
                .max_by_key(|(_, pattern)| pattern.specificity());
            if let Some((text, pattern)) = best {
                found.push(Candidate {
                    policy,
                    level,
                    rule_index,
                    rule,
                    pattern: text,
                    specificity: pattern.specificity(),
                });
            }
        }
    }
    found.sort_by_key(|c| std::cmp::Reverse(c.specificity));
    found
}

/// The effective policy for `id` in `repository`.
pub fn evaluate(config: &DomainConfig, repository: &str, id: &PackageId) -> EffectivePolicy {
    let mut ranked = candidates(config.repository_policies(repository), PolicyLevel::Repository, id);
    ranked.extend(candidates(config.domain_policies(), PolicyLevel::Domain, id));

    let restriction = |pick: fn(&PolicyRule) -> Option<&Restriction>| {
        ranked
            .iter()
            .find_map(|c| {
                pick(c.rule)
                    .filter(|r| r.mode != RestrictionMode::Inherit)
                    .map(|r| Decided { value: Some(r.clone()), source: Some(c.source()) })
            })
            .unwrap_or_else(|| Decided::default_value(None))
    };
    let minimum_release_age = ranked
        .iter()
        .find_map(|c| {
            let age = parse_duration(c.rule.minimum_release_age.as_deref()?).ok()?;
            Some(Decided { value: Some(age), source: Some(c.source()) })
        })
        .unwrap_or_else(|| Decided::default_value(None));
    let blocked_versions = ranked
        .iter()
        .flat_map(|c| {
            c.rule.blocked_versions.iter().filter_map(|text| {
                let blocked = BlockedVersion::parse(text).ok()?;
                Some(Decided { value: blocked, source: Some(c.source()) })
            })
        })
        .collect();
    EffectivePolicy {
        publish: restriction(|rule| rule.publish.as_ref()),
        external_upstream: restriction(|rule| rule.external_upstream.as_ref()),
        internal_upstream: restriction(|rule| rule.internal_upstream.as_ref()),
        minimum_release_age,
        blocked_versions,
        metadata_ttl: metadata_ttl(config, repository),
    }
}

/// `metadataTTL` is policy-wide: the first Repository-level policy that sets
/// it, else the first Domain-level one, else the default.
pub fn metadata_ttl(config: &DomainConfig, repository: &str) -> Decided<Duration> {
    let levels = [
        (PolicyLevel::Repository, config.repository_policies(repository).collect::<Vec<_>>()),
        (PolicyLevel::Domain, config.domain_policies().collect()),
    ];
    levels
        .iter()
        .find_map(|(level, policies)| {
            policies.iter().find_map(|policy| {
                let ttl = parse_duration(policy.spec.metadata_ttl.as_deref()?).ok()?;
                let source = RuleSource { policy: policy_name(policy), level: *level, rule: None, pattern: None };
                Some(Decided { value: ttl, source: Some(source) })
            })
        })
        .unwrap_or_else(|| Decided::default_value(DEFAULT_METADATA_TTL))
}

/// The order a read searches: Repositories, then one external connection.
#[derive(Clone, Debug, PartialEq)]
pub struct Chain {
    /// The requesting Repository first, then its upstreams depth-first in
    /// listed order, each once, at most [`MAX_SEARCHED_REPOSITORIES`].
    pub repositories: Vec<String>,
    /// The external connections of those Repositories, in the same order.
    pub externals: Vec<ExternalHop>,
}

impl Chain {
    /// The external connection a read of a `format` package ends with: that
    /// of the first Repository in the order whose connection speaks the
    /// format (an npm store and a PyPI store can sit side by side).
    pub fn external(&self, format: PackageFormat) -> Option<&ExternalHop> {
        self.externals.iter().find(|hop| hop.connection.format == format)
    }
}

/// The external connection a chain ends with.
#[derive(Clone, Debug, PartialEq)]
pub struct ExternalHop {
    /// The Repository holding the connection: fetched versions are kept there.
    pub holder: String,
    pub connection: ExternalConnection,
}

/// The search order for reads through `repository`. Cycles cannot loop
/// (each Repository is visited once); configuration validation reports them.
pub fn resolution_order(config: &DomainConfig, repository: &str) -> Chain {
    fn visit(config: &DomainConfig, name: &str, seen: &mut HashSet<String>, order: &mut Vec<String>) {
        if order.len() >= MAX_SEARCHED_REPOSITORIES || !seen.insert(name.to_owned()) {
            return;
        }
        let Some(repository) = config.repository(name) else {
            return;
        };
        order.push(name.to_owned());
        for upstream in repository.upstream_names() {
            visit(config, upstream, seen, order);
        }
    }
    let mut repositories = Vec::new();
    visit(config, repository, &mut HashSet::new(), &mut repositories);
    let externals = repositories
        .iter()
        .filter_map(|name| {
            let connection_name = config.repository(name)?.spec.external_connection.as_deref()?;
            let connection = config.domain.spec.external_connection(connection_name)?;
            Some(ExternalHop { holder: name.clone(), connection: connection.clone() })
        })
        .collect();
    Chain { repositories, externals }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> DomainConfig {
        let base = r#"
apiVersion: wharf.dev/v1alpha1
kind: Domain
metadata: {name: acme, namespace: wharf}
spec:
  storage: {memory: {}}
  externalConnections:
    - {name: public-npm, format: npm, url: "http://127.0.0.1:9/"}
"#;
        DomainConfig::from_yaml_str("test.yaml", &format!("{base}{yaml}")).unwrap()
    }

    fn repositories(names: &[(&str, &[&str], Option<&str>)]) -> String {
        let mut out = String::new();
        for (name, upstreams, external) in names {
            let upstreams: Vec<String> = upstreams.iter().map(|u| format!("{{name: {u}}}")).collect();
            out.push_str(&format!(
                "---\napiVersion: wharf.dev/v1alpha1\nkind: Repository\nmetadata: {{name: {name}, namespace: wharf}}\nspec:\n  domainRef: {{name: acme}}\n  upstreams: [{}]\n",
                upstreams.join(", ")
            ));
            if let Some(external) = external {
                out.push_str(&format!("  externalConnection: {external}\n"));
            }
        }
        out
    }

    const POLICIES: &str = r#"
---
apiVersion: wharf.dev/v1alpha1
kind: UpstreamPolicy
metadata: {name: domain-wide, namespace: wharf}
spec:
  targetRefs: [{kind: Domain, name: acme}]
  metadataTTL: 30s
  rules:
    - patterns: ["/npm/acme/*", "/pypi//acme~"]
      publish: Allow
      externalUpstream: Block
      internalUpstream: {mode: AllowSpecificRepositories, repositories: [internal]}
    - patterns: ["/*"]
      minimumReleaseAge: 72h
      blockedVersions: ["/npm//event-stream@3.3.6"]
    - patterns: ["/npm/acme/tools$"]
      externalUpstream: Inherit
      minimumReleaseAge: 1h
---
apiVersion: wharf.dev/v1alpha1
kind: UpstreamPolicy
metadata: {name: app-only, namespace: wharf}
spec:
  targetRefs: [{kind: Repository, name: app}]
  rules:
    - patterns: ["/*"]
      externalUpstream: Allow
      blockedVersions: ["/npm/acme/tools@0.0.1"]
"#;

    fn npm(name: &str) -> PackageId {
        PackageId::new(PackageFormat::Npm, name)
    }

    #[test]
    fn coordinates_follow_each_format() {
        assert_eq!(coordinates(&npm("@acme/tools")), ("acme".into(), "tools".into()));
        assert_eq!(coordinates(&npm("left-pad")), (String::new(), "left-pad".into()));
        assert_eq!(
            coordinates(&PackageId::new(PackageFormat::Maven, "com.acme:lib")),
            ("com.acme".into(), "lib".into())
        );
        assert_eq!(coordinates(&PackageId::new(PackageFormat::Pypi, "acme-x")), (String::new(), "acme-x".into()));
        assert_eq!(coordinates(&PackageId::new(PackageFormat::Swift, "acme.list")), ("acme".into(), "list".into()));
    }

    #[test]
    fn most_specific_rule_wins_and_inherit_falls_through() {
        let config = config(&format!(
            "{}{POLICIES}",
            repositories(&[("app", &[], None), ("other", &[], None), ("internal", &[], None)])
        ));
        let effective = evaluate(&config, "other", &npm("@acme/tools"));
        // The exact rule says Inherit for externalUpstream: the namespace rule decides.
        assert_eq!(effective.external_upstream.value, Some(Restriction::new(RestrictionMode::Block)));
        let source = effective.external_upstream.source.clone().unwrap();
        assert_eq!(
            (source.policy.as_str(), source.rule, source.pattern.as_deref()),
            ("wharf/domain-wide", Some(0), Some("/npm/acme/*"))
        );
        // The exact rule's cooldown beats /*'s.
        assert_eq!(effective.minimum_release_age.value, Some(Duration::from_secs(3600)));
        assert_eq!(effective.minimum_release_age.source.clone().unwrap().rule, Some(2));
        assert_eq!(effective.publish_allowed("other"), Some(true));
        assert!(effective.internal_allowed("internal"));
        assert!(!effective.internal_allowed("shared"));
        assert_eq!(effective.metadata_ttl.value, Duration::from_secs(30));

        let unscoped = evaluate(&config, "other", &npm("left-pad"));
        assert_eq!(unscoped.publish.value, None);
        assert!(unscoped.publish.source.is_none());
        assert_eq!(unscoped.external_allowed("other"), None);
        assert_eq!(unscoped.minimum_release_age.value, Some(Duration::from_secs(72 * 3600)));
        let pypi = evaluate(&config, "other", &PackageId::new(PackageFormat::Pypi, "acme-core"));
        assert_eq!(pypi.external_allowed("other"), Some(false));
    }

    #[test]
    fn repository_policy_beats_domain_policy() {
        let config = config(&format!(
            "{}{POLICIES}",
            repositories(&[("app", &[], None), ("other", &[], None), ("internal", &[], None)])
        ));
        let effective = evaluate(&config, "app", &npm("@acme/tools"));
        // `/*` at the Repository level beats `/npm/acme/*` at the Domain level.
        assert_eq!(effective.external_allowed("app"), Some(true));
        assert_eq!(effective.external_upstream.source.clone().unwrap().level, PolicyLevel::Repository);
        // Settings the Repository policy leaves unset come from the Domain.
        assert_eq!(effective.publish_allowed("app"), Some(true));
    }

    #[test]
    fn blocked_versions_add_up_over_levels() {
        let config = config(&format!(
            "{}{POLICIES}",
            repositories(&[("app", &[], None), ("other", &[], None), ("internal", &[], None)])
        ));
        let effective = evaluate(&config, "app", &npm("@acme/tools"));
        assert!(effective.blocks_version(&npm("@acme/tools"), "0.0.1"));
        assert!(!effective.blocks_version(&npm("@acme/tools"), "0.0.2"));
        let stream = evaluate(&config, "other", &npm("event-stream"));
        assert!(stream.blocks_version(&npm("event-stream"), "3.3.6"));
        assert!(!stream.blocks_version(&npm("event-stream"), "3.3.5"));
        assert!(!evaluate(&config, "other", &npm("@acme/tools")).blocks_version(&npm("@acme/tools"), "0.0.1"));
    }

    #[test]
    fn defaults_without_policies() {
        let config = config(&repositories(&[("app", &[], None)]));
        let effective = evaluate(&config, "app", &npm("x"));
        assert_eq!(effective.metadata_ttl, Decided { value: DEFAULT_METADATA_TTL, source: None });
        assert_eq!(effective.publish_allowed("app"), None);
        assert!(effective.internal_allowed("anything"));
        assert!(effective.blocked_versions.is_empty());
    }

    #[test]
    fn first_version_origin_decides_without_a_rule() {
        let config = config(&format!(
            "{}{POLICIES}",
            repositories(&[("app", &[], None), ("other", &[], None), ("internal", &[], None)])
        ));
        let origin = |kind| PackageOrigin {
            kind,
            repository: "internal".into(),
            connection: (kind == OriginKind::External).then(|| "public-npm".into()),
            version: "1.0.0".into(),
            recorded: chrono::Utc::now(),
        };
        let plain = evaluate(&config, "other", &npm("left-pad"));
        assert!(may_publish(&plain, None, "other").allowed);
        assert!(may_fetch_external(&plain, None, "other").allowed);
        let direct = origin(OriginKind::Direct);
        assert!(may_publish(&plain, Some(&direct), "other").allowed);
        let refused = may_fetch_external(&plain, Some(&direct), "other");
        assert!(!refused.allowed && refused.reason.contains("reserved"), "{refused:?}");
        let external = origin(OriginKind::External);
        assert!(may_fetch_external(&plain, Some(&external), "other").allowed);
        let refused = may_publish(&plain, Some(&external), "other");
        assert!(!refused.allowed && refused.reason.contains("public-npm"), "{refused:?}");
        // A rule overrides the origin: the app policy allows the external upstream.
        let app = evaluate(&config, "app", &npm("left-pad"));
        let allowed = may_fetch_external(&app, Some(&direct), "app");
        assert!(allowed.allowed && allowed.reason.contains("wharf/app-only"), "{allowed:?}");
        // And @acme/* may be published even when first fetched from outside.
        let acme = evaluate(&config, "other", &npm("@acme/tools"));
        assert!(may_publish(&acme, Some(&external), "other").allowed);
    }

    fn entry(days_old: i64, fetched: bool) -> crate::VersionEntry {
        crate::VersionEntry {
            status: crate::VersionStatus::Published,
            created: chrono::Utc::now() - chrono::Duration::days(days_old),
            metadata: serde_json::json!({}),
            assets: Default::default(),
            deprecated: None,
            withdrawn: false,
            fetched_from: fetched.then(|| "public-npm".into()),
            published_by: None,
        }
    }

    #[test]
    fn local_tags_win_over_upstream_unless_they_follow_fetched_copies() {
        let mut local = PackageIndex::default();
        local.versions.insert("1.0.0".into(), entry(10, false));
        local.tags.insert("latest".into(), "1.0.0".into());
        let mut upstream = PackageIndex::default();
        upstream.versions.insert("1.0.0".into(), entry(1, true));
        upstream.versions.insert("2.0.0".into(), entry(1, true));
        upstream.tags.insert("latest".into(), "2.0.0".into());
        upstream.tags.insert("next".into(), "2.0.0".into());
        let merged = merge_external(Some(local), upstream.clone());
        assert_eq!(merged.tags["latest"], "1.0.0");
        assert_eq!(merged.tags["next"], "2.0.0");
        assert!(merged.versions["1.0.0"].fetched_from.is_none());

        let mut cached = PackageIndex::default();
        cached.versions.insert("1.0.0".into(), entry(1, true));
        cached.tags.insert("latest".into(), "1.0.0".into());
        assert_eq!(merge_external(Some(cached), upstream).tags["latest"], "2.0.0");
    }

    #[test]
    fn a_cached_copy_keeps_the_upstream_files_it_lacks() {
        let asset = |name: &str| crate::AssetRef {
            name: name.into(),
            digests: wharf_storage::BlobDigests {
                sha256: "0".repeat(64),
                sha512: String::new(),
                sha1: String::new(),
                md5: String::new(),
                size: 1,
            },
            created: chrono::Utc::now(),
            metadata: serde_json::json!({}),
        };
        let with = |fetched: bool, files: &[&str]| {
            let mut entry = entry(1, fetched);
            entry.assets = files.iter().map(|f| (f.to_string(), asset(f))).collect();
            let mut index = PackageIndex::default();
            index.versions.insert("1.0".into(), entry);
            index
        };
        let upstream = with(true, &["a.whl", "b.whl"]);
        let merged = merge_external(Some(with(true, &["a.whl"])), upstream.clone());
        assert_eq!(merged.versions["1.0"].assets.len(), 2);
        // A version published in the Domain is never completed from outside.
        let merged = merge_external(Some(with(false, &["a.whl"])), upstream);
        assert_eq!(merged.versions["1.0"].assets.len(), 1);
    }

    #[test]
    fn cooldown_and_blocks_hide_versions_and_latest_retargets() {
        let config = config(&format!(
            "{}{POLICIES}",
            repositories(&[("app", &[], None), ("other", &[], None), ("internal", &[], None)])
        ));
        let id = npm("event-stream");
        let effective = evaluate(&config, "other", &id);
        let mut index = PackageIndex::default();
        index.versions.insert("3.3.5".into(), entry(30, true));
        index.versions.insert("3.3.6".into(), entry(20, true));
        index.versions.insert("3.3.7".into(), entry(1, true));
        index.versions.insert("3.3.8-local".into(), entry(0, false));
        index.tags.insert("latest".into(), "3.3.7".into());
        apply_policy(&mut index, &id, &effective, chrono::Utc::now());
        // 3.3.6 is blocked, 3.3.7 younger than 72h; the Domain's own version stays.
        assert_eq!(index.versions.keys().collect::<Vec<_>>(), ["3.3.5", "3.3.8-local"]);
        assert_eq!(index.tags["latest"], "3.3.8-local");
        index.versions.remove("3.3.8-local");
        apply_policy(&mut index, &id, &effective, chrono::Utc::now());
        assert_eq!(index.tags["latest"], "3.3.5");
    }

    #[test]
    fn chain_is_depth_first_each_once_then_external() {
        let config = config(&repositories(&[
            ("app", &["internal", "npm-store"], None),
            ("internal", &["shared"], None),
            ("shared", &[], None),
            ("npm-store", &["shared"], Some("public-npm")),
        ]));
        let chain = resolution_order(&config, "app");
        assert_eq!(chain.repositories, ["app", "internal", "shared", "npm-store"]);
        let external = chain.external(PackageFormat::Npm).unwrap();
        assert_eq!(external.holder, "npm-store");
        assert_eq!(external.connection.name, "public-npm");
        assert!(chain.external(PackageFormat::Pypi).is_none());
        assert!(resolution_order(&config, "shared").externals.is_empty());
    }

    #[test]
    fn chain_stops_at_25_repositories() {
        let names: Vec<String> = (0..30).map(|i| format!("r{i}")).collect();
        let specs: Vec<(String, Vec<String>)> = names
            .iter()
            .enumerate()
            .map(|(i, name)| (name.clone(), names.get(i + 1).into_iter().cloned().collect()))
            .collect();
        let borrowed: Vec<Vec<&str>> = specs.iter().map(|(_, ups)| ups.iter().map(String::as_str).collect()).collect();
        let table: Vec<(&str, &[&str], Option<&str>)> =
            specs.iter().zip(&borrowed).map(|((name, _), ups)| (name.as_str(), ups.as_slice(), None)).collect();
        let config = config(&repositories(&table));
        let chain = resolution_order(&config, "r0");
        assert_eq!(chain.repositories.len(), MAX_SEARCHED_REPOSITORIES);
        assert_eq!(chain.repositories.last().map(String::as_str), Some("r24"));
    }
}
