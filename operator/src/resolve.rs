//! Which Repositories and UpstreamPolicies a Domain serves, and why the others are left
//! out: namespace admission, name clashes (the older Repository wins), upstreams that do
//! not exist or form a cycle, unknown external connections, and whatever the shared
//! configuration validator refuses. Pure: the controllers pass in what their caches hold.
//!
//! Every controller runs the same resolution over the same cached objects, so the Domain
//! (which renders the configuration) and the Repositories (which report their status)
//! agree on who is in.

use std::collections::{BTreeMap, BTreeSet};

use wharf_api::{ConfigError, Domain, DomainConfig, NamespacesFrom, Repository, TargetKind, TargetRef, UpstreamPolicy};

use crate::selector;

/// Longest Domain name: the registry's Service is `wharf-{domain}`, a 63-character label.
pub const MAX_DOMAIN_NAME: usize = 63 - "wharf-".len();

/// Namespace labels by namespace name (for `repositoryNamespaces.from: Selector`).
pub type NamespaceLabels = BTreeMap<String, BTreeMap<String, String>>;

/// A namespaced object's identity: `(namespace, name)`.
pub type ObjectKey = (String, String);

/// The key of any namespaced object.
pub fn key_of(metadata: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjectKey {
    (metadata.namespace.clone().unwrap_or_default(), metadata.name.clone().unwrap_or_default())
}

/// Why an object is not served. Each has a CamelCase name for condition reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The Repository's namespace is not admitted by the Domain's `repositoryNamespaces`.
    NamespaceNotAdmitted,
    /// An older Repository of the Domain has the same name.
    NameConflict,
    /// An upstream names no Repository of the Domain.
    UpstreamNotFound,
    /// An upstream exists but is itself not served.
    UpstreamNotReady,
    /// Upstreams form a cycle.
    UpstreamCycle,
    /// A Repository in the upstream chain does not consent to serving this one's readers.
    UpstreamNotPermitted,
    /// `externalConnection` is not in the Domain's catalogue.
    UnknownExternalConnection,
    /// The configuration validator refused the object.
    InvalidSpec,
    /// A policy target does not exist.
    TargetNotFound,
    /// The Domain itself is invalid, so nothing of it is served.
    DomainInvalid,
    /// The object is being deleted.
    Deleting,
}

impl Rejection {
    /// The condition reason.
    pub fn reason(self) -> &'static str {
        match self {
            Rejection::NamespaceNotAdmitted => "NamespaceNotAdmitted",
            Rejection::NameConflict => "NameConflict",
            Rejection::UpstreamNotFound => "UpstreamNotFound",
            Rejection::UpstreamNotReady => "UpstreamNotReady",
            Rejection::UpstreamCycle => "UpstreamCycle",
            Rejection::UpstreamNotPermitted => "UpstreamNotPermitted",
            Rejection::UnknownExternalConnection => "UnknownExternalConnection",
            Rejection::InvalidSpec => "InvalidSpec",
            Rejection::TargetNotFound => "TargetNotFound",
            Rejection::DomainInvalid => "DomainInvalid",
            Rejection::Deleting => "Deleting",
        }
    }
}

/// Whether an object is served, and if not, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Rendered into the Domain's configuration.
    Admitted,
    /// Left out, with the reason and a message a person can act on.
    Rejected(Rejection, String),
}

/// The outcome for one Domain.
#[derive(Clone, Debug)]
pub struct Resolution {
    /// Problems of the Domain itself; when any, `config` is `None`.
    pub domain_problems: Vec<String>,
    /// The validated configuration the registry will read.
    pub config: Option<DomainConfig>,
    /// Every Repository that refers to this Domain.
    pub repositories: BTreeMap<ObjectKey, Verdict>,
    /// Every UpstreamPolicy that targets this Domain or one of its Repositories.
    pub policies: BTreeMap<ObjectKey, Verdict>,
}

impl Resolution {
    /// The Repository that holds `name` in this Domain, if one is admitted.
    pub fn admitted_repository(&self, name: &str) -> Option<&ObjectKey> {
        self.repositories
            .iter()
            .find(|((_, repository), verdict)| repository == name && **verdict == Verdict::Admitted)
            .map(|(key, _)| key)
    }
}

/// Whether `repository` refers to `domain` (its `domainRef` namespace defaults to its own).
pub fn refers_to(repository: &Repository, domain: &Domain) -> bool {
    let namespace = repository.metadata.namespace.as_deref().unwrap_or_default();
    let domain_ref = &repository.spec.domain_ref;
    domain_ref.name == domain.metadata.name.as_deref().unwrap_or_default()
        && domain_ref.namespace.as_deref().unwrap_or(namespace)
            == domain.metadata.namespace.as_deref().unwrap_or_default()
}

/// Whether a policy target names `domain` (a Domain target's namespace defaults to the
/// policy's).
fn targets_domain(target: &TargetRef, policy_namespace: &str, domain: &Domain) -> bool {
    target.kind == TargetKind::Domain
        && target.name == domain.metadata.name.as_deref().unwrap_or_default()
        && target.namespace.as_deref().unwrap_or(policy_namespace)
            == domain.metadata.namespace.as_deref().unwrap_or_default()
}

/// Resolves what `domain` serves from every Repository and UpstreamPolicy the caches hold.
pub fn resolve<'a>(
    domain: &Domain,
    repositories: impl IntoIterator<Item = &'a Repository>,
    policies: impl IntoIterator<Item = &'a UpstreamPolicy>,
    namespaces: &NamespaceLabels,
) -> Resolution {
    let domain_namespace = domain.metadata.namespace.clone().unwrap_or_default();
    let domain_name = domain.metadata.name.clone().unwrap_or_default();
    let mut resolution = Resolution {
        domain_problems: Vec::new(),
        config: None,
        repositories: BTreeMap::new(),
        policies: BTreeMap::new(),
    };
    if domain_name.len() > MAX_DOMAIN_NAME {
        resolution.domain_problems.push(format!(
            "metadata.name: `{domain_name}` is longer than {MAX_DOMAIN_NAME} characters, so its registry Service `wharf-{domain_name}` would not be a valid name; use a shorter name"
        ));
    }

    // Namespace selectors of `allowedDownstreams` become the namespaces they select now, so
    // the rendered configuration means the same to the registry, which has no labels.
    let expanded: Vec<Repository> = repositories
        .into_iter()
        .filter(|repository| refers_to(repository, domain))
        .map(|repository| with_selected_namespaces(repository, namespaces))
        .collect();
    // Oldest first: on a name clash the older Repository wins.
    let mut candidates: Vec<&Repository> = expanded.iter().collect();
    candidates.sort_by(|a, b| {
        let created = |repository: &Repository| repository.metadata.creation_timestamp.clone().map(|time| time.0);
        created(a).cmp(&created(b)).then_with(|| key_of(&a.metadata).cmp(&key_of(&b.metadata)))
    });

    let mut admitted: BTreeMap<String, &Repository> = BTreeMap::new();
    for repository in &candidates {
        let key = key_of(&repository.metadata);
        let verdict = if repository.metadata.deletion_timestamp.is_some() {
            Verdict::Rejected(Rejection::Deleting, "the Repository is being deleted".to_owned())
        } else if let Some(message) = namespace_refusal(domain, &key.0, namespaces) {
            Verdict::Rejected(Rejection::NamespaceNotAdmitted, message)
        } else if let Some(winner) = admitted.get(&key.1) {
            let (winner_namespace, _) = key_of(&winner.metadata);
            Verdict::Rejected(
                Rejection::NameConflict,
                format!(
                    "Repository {winner_namespace}/{} already uses the name `{}` in Domain {domain_namespace}/{domain_name} and is older; names are unique in a Domain, so rename this Repository or delete the other",
                    key.1, key.1
                ),
            )
        } else {
            admitted.insert(key.1.clone(), repository);
            Verdict::Admitted
        };
        resolution.repositories.insert(key, verdict);
    }

    let attached: Vec<&UpstreamPolicy> = Vec::from_iter(policies);
    let mut policy_rejections: BTreeMap<ObjectKey, Verdict> = BTreeMap::new();

    // Rejections cascade (a rejected upstream rejects its dependants; a validator problem
    // rejects one object), so repeat until nothing changes. Each round rejects at least one
    // object or ends, so the loop is bounded by the number of objects.
    loop {
        let mut changed = reject_bad_references(domain, &mut admitted, &mut resolution.repositories);
        changed |= reject_cycles(&mut admitted, &mut resolution.repositories);
        if !changed {
            changed = reject_unpermitted(&mut admitted, &mut resolution.repositories);
        }
        if changed {
            continue;
        }

        let (config, policy_keys) = assemble(domain, &admitted, &attached, &policy_rejections);
        if config.domain.metadata.name.is_none() {
            resolution.domain_problems.push("metadata.name: missing".to_owned());
        }
        if !resolution.domain_problems.is_empty() {
            break;
        }
        match config.validate() {
            Ok(config) => {
                resolution.config = Some(config);
                for key in policy_keys {
                    resolution.policies.insert(key, Verdict::Admitted);
                }
                break;
            }
            Err(error) => {
                if !attribute_problems(
                    &error,
                    &mut admitted,
                    &mut resolution.repositories,
                    &policy_keys,
                    &mut policy_rejections,
                    &mut resolution.domain_problems,
                ) {
                    if resolution.domain_problems.is_empty() {
                        resolution.domain_problems.push(error.to_string());
                    }
                    break;
                }
            }
        }
    }

    for policy in &attached {
        let key = key_of(&policy.metadata);
        let attaches_here = policy.spec.target_refs.iter().any(|target| {
            targets_domain(target, &key.0, domain)
                || (target.kind == TargetKind::Repository
                    && resolution.repositories.iter().any(|((namespace, name), _)| {
                        *name == target.name && target.namespace.as_deref().is_none_or(|wanted| wanted == namespace)
                    }))
        });
        if !attaches_here || resolution.policies.contains_key(&key) {
            continue;
        }
        let verdict = if !resolution.domain_problems.is_empty() {
            Verdict::Rejected(Rejection::DomainInvalid, format!("Domain {domain_namespace}/{domain_name} is invalid"))
        } else if let Some(verdict) = policy_rejections.get(&key) {
            verdict.clone()
        } else {
            Verdict::Rejected(
                Rejection::TargetNotFound,
                "its target Repositories are not served by the Domain (see their status)".to_owned(),
            )
        };
        resolution.policies.insert(key, verdict);
    }
    if !resolution.domain_problems.is_empty() {
        for verdict in resolution.repositories.values_mut() {
            if *verdict == Verdict::Admitted {
                *verdict = Verdict::Rejected(
                    Rejection::DomainInvalid,
                    format!("Domain {domain_namespace}/{domain_name} is invalid; see its status"),
                );
            }
        }
    }
    resolution
}

/// Why the Domain does not admit Repositories from `namespace`, or `None` if it does.
fn namespace_refusal(domain: &Domain, namespace: &str, namespaces: &NamespaceLabels) -> Option<String> {
    let domain_namespace = domain.metadata.namespace.as_deref().unwrap_or_default();
    let domain_name = domain.metadata.name.as_deref().unwrap_or_default();
    let settings = domain.spec.repository_namespaces.as_ref();
    match domain.spec.namespaces_from() {
        NamespacesFrom::All => None,
        NamespacesFrom::Same => (namespace != domain_namespace).then(|| {
            format!(
                "Domain {domain_namespace}/{domain_name} admits Repositories only from its own namespace {domain_namespace} (repositoryNamespaces.from: Same); move this Repository there, or ask the Domain's owners to admit namespace {namespace}"
            )
        }),
        NamespacesFrom::Selector => {
            let selector = settings.and_then(|settings| settings.selector.as_ref());
            let admitted = match (selector, namespaces.get(namespace)) {
                (Some(selector), Some(labels)) => selector::matches(selector, labels),
                _ => false,
            };
            (!admitted).then(|| {
                format!(
                    "namespace {namespace} does not match the repositoryNamespaces selector of Domain {domain_namespace}/{domain_name}; label the namespace as the selector requires, or ask the Domain's owners to admit it"
                )
            })
        }
    }
}

/// Rejects admitted Repositories whose upstreams or external connection do not resolve.
/// Returns whether anything was rejected.
fn reject_bad_references(
    domain: &Domain,
    admitted: &mut BTreeMap<String, &Repository>,
    verdicts: &mut BTreeMap<ObjectKey, Verdict>,
) -> bool {
    let domain_label = format!(
        "{}/{}",
        domain.metadata.namespace.as_deref().unwrap_or_default(),
        domain.metadata.name.as_deref().unwrap_or_default()
    );
    let mut rejected = Vec::new();
    for (name, repository) in admitted.iter() {
        if let Some(connection) = repository.spec.external_connection.as_deref()
            && domain.spec.external_connection(connection).is_none()
        {
            let known: Vec<&str> = domain.spec.external_connections.iter().map(|known| known.name.as_str()).collect();
            let known =
                if known.is_empty() { "it defines none".to_owned() } else { format!("it has {}", known.join(", ")) };
            rejected.push((
                name.clone(),
                Rejection::UnknownExternalConnection,
                format!(
                    "spec.externalConnection: Domain {domain_label} has no external connection named `{connection}` ({known}); use one of those or ask the Domain's owners to add it"
                ),
            ));
            continue;
        }
        for (position, upstream) in repository.upstream_names().enumerate() {
            if admitted.contains_key(upstream) {
                continue;
            }
            let exists = verdicts.keys().any(|(_, candidate)| candidate == upstream);
            let (rejection, message) = if exists {
                (
                    Rejection::UpstreamNotReady,
                    format!(
                        "spec.upstreams[{position}]: upstream Repository `{upstream}` is not served by Domain {domain_label}; see its status"
                    ),
                )
            } else {
                (
                    Rejection::UpstreamNotFound,
                    format!(
                        "spec.upstreams[{position}]: Domain {domain_label} has no Repository named `{upstream}`; create it or remove it from the list"
                    ),
                )
            };
            rejected.push((name.clone(), rejection, message));
            break;
        }
    }
    let changed = !rejected.is_empty();
    for (name, rejection, message) in rejected {
        reject(&name, rejection, message, admitted, verdicts);
    }
    changed
}

/// Rejects every admitted Repository whose upstream chain reaches a Repository that does not
/// consent to serving its readers. Returns whether any was.
fn reject_unpermitted(
    admitted: &mut BTreeMap<String, &Repository>,
    verdicts: &mut BTreeMap<ObjectKey, Verdict>,
) -> bool {
    let refused: Vec<(String, String)> = admitted
        .iter()
        .filter_map(|(name, repository)| {
            let refusal = wharf_api::consent::refusals(repository, |upstream| admitted.get(upstream).copied())
                .into_iter()
                .next()?;
            Some((name.clone(), format!("{}: {}", refusal.path, refusal.message)))
        })
        .collect();
    let changed = !refused.is_empty();
    for (name, message) in refused {
        reject(&name, Rejection::UpstreamNotPermitted, message, admitted, verdicts);
    }
    changed
}

/// `repository` with each `allowedDownstreams` namespace selector replaced by the namespaces
/// it selects.
fn with_selected_namespaces(repository: &Repository, namespaces: &NamespaceLabels) -> Repository {
    let mut repository = repository.clone();
    let grants = std::mem::take(&mut repository.spec.allowed_downstreams);
    for grant in grants {
        match &grant.namespace_selector {
            None => repository.spec.allowed_downstreams.push(grant),
            Some(selector) => repository.spec.allowed_downstreams.extend(
                namespaces
                    .iter()
                    .filter(|(_, labels)| selector::matches(selector, labels))
                    .map(|(namespace, _)| wharf_api::DownstreamGrant::namespace(namespace)),
            ),
        }
    }
    repository
}

/// Rejects every admitted Repository on an upstream cycle. Returns whether any was.
fn reject_cycles(admitted: &mut BTreeMap<String, &Repository>, verdicts: &mut BTreeMap<ObjectKey, Verdict>) -> bool {
    // A Repository is on a cycle when it can reach itself through upstreams.
    let mut on_cycle: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for start in admitted.keys() {
        let mut parents: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue: Vec<&str> = vec![start.as_str()];
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        let mut found = None;
        while let Some(current) = queue.pop() {
            let Some(repository) = admitted.get(current) else { continue };
            for next in repository.upstream_names() {
                if next == start {
                    found = Some(current);
                    break;
                }
                if admitted.contains_key(next) && seen.insert(next) {
                    parents.insert(next, current);
                    queue.push(next);
                }
            }
            if found.is_some() {
                break;
            }
        }
        if let Some(last) = found {
            let mut path = vec![start.clone()];
            let mut back = vec![last];
            while let Some(&parent) = back.last().and_then(|node| parents.get(node)) {
                back.push(parent);
            }
            path.extend(back.iter().rev().filter(|node| **node != start).map(|node| node.to_string()));
            path.push(start.clone());
            on_cycle.insert(start.clone(), path);
        }
    }
    let changed = !on_cycle.is_empty();
    for (name, path) in on_cycle {
        reject(
            &name,
            Rejection::UpstreamCycle,
            format!("spec.upstreams: upstream cycle {}; remove one of these upstreams", path.join(" -> ")),
            admitted,
            verdicts,
        );
    }
    changed
}

fn reject(
    name: &str,
    rejection: Rejection,
    message: String,
    admitted: &mut BTreeMap<String, &Repository>,
    verdicts: &mut BTreeMap<ObjectKey, Verdict>,
) {
    if let Some(repository) = admitted.remove(name) {
        verdicts.insert(key_of(&repository.metadata), Verdict::Rejected(rejection, message));
    }
}

/// The configuration of the admitted objects, built from clean copies (no server-set
/// metadata, no status) in a stable order, so an unchanged world renders identical bytes.
/// Also returns the keys of the policies included.
fn assemble(
    domain: &Domain,
    admitted: &BTreeMap<String, &Repository>,
    policies: &[&UpstreamPolicy],
    policy_rejections: &BTreeMap<ObjectKey, Verdict>,
) -> (DomainConfig, Vec<ObjectKey>) {
    let clean_metadata = |metadata: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: metadata.name.clone(),
            namespace: metadata.namespace.clone(),
            ..Default::default()
        }
    };
    let clean_domain = Domain { metadata: clean_metadata(&domain.metadata), spec: domain.spec.clone(), status: None };
    let repositories: Vec<Repository> = admitted
        .values()
        .map(|repository| Repository {
            metadata: clean_metadata(&repository.metadata),
            spec: repository.spec.clone(),
            status: None,
        })
        .collect();

    let mut included = Vec::new();
    let mut sorted: Vec<&&UpstreamPolicy> = policies.iter().collect();
    sorted.sort_by_key(|policy| key_of(&policy.metadata));
    for policy in sorted {
        let key = key_of(&policy.metadata);
        if policy_rejections.contains_key(&key) || policy.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let targets: Vec<TargetRef> = policy
            .spec
            .target_refs
            .iter()
            .filter(|target| match target.kind {
                TargetKind::Domain => targets_domain(target, &key.0, domain),
                TargetKind::Repository => admitted.get(&target.name).is_some_and(|repository| {
                    target
                        .namespace
                        .as_deref()
                        .is_none_or(|wanted| Some(wanted) == repository.metadata.namespace.as_deref())
                }),
            })
            .cloned()
            .collect();
        if targets.is_empty() {
            continue;
        }
        let mut spec = policy.spec.clone();
        spec.target_refs = targets;
        included.push((key, UpstreamPolicy { metadata: clean_metadata(&policy.metadata), spec, status: None }));
    }
    let (keys, policies): (Vec<ObjectKey>, Vec<UpstreamPolicy>) = included.into_iter().unzip();
    (DomainConfig { domain: clean_domain, repositories, policies }, keys)
}

/// Takes the objects the validator named out of the configuration. Returns whether any
/// object was taken out (otherwise resolution cannot progress).
fn attribute_problems(
    error: &ConfigError,
    admitted: &mut BTreeMap<String, &Repository>,
    verdicts: &mut BTreeMap<ObjectKey, Verdict>,
    policy_keys: &[ObjectKey],
    policy_rejections: &mut BTreeMap<ObjectKey, Verdict>,
    domain_problems: &mut Vec<String>,
) -> bool {
    let mut progressed = false;
    for problem in error.problems() {
        let message = match &problem.path {
            Some(path) => format!("{path}: {}", problem.message),
            None => problem.message.clone(),
        };
        let object = problem.object.as_deref().unwrap_or_default();
        if let Some(name) = object.strip_prefix("Repository ") {
            if admitted.contains_key(name) {
                reject(name, Rejection::InvalidSpec, message, admitted, verdicts);
                progressed = true;
            }
        } else if let Some(name) = object.strip_prefix("UpstreamPolicy ") {
            for key in policy_keys.iter().filter(|(_, policy)| policy == name) {
                if let Some(Verdict::Rejected(_, earlier)) = policy_rejections.get(key) {
                    let combined = format!("{earlier}; {message}");
                    policy_rejections.insert(key.clone(), Verdict::Rejected(Rejection::InvalidSpec, combined));
                } else {
                    policy_rejections.insert(key.clone(), Verdict::Rejected(Rejection::InvalidSpec, message.clone()));
                    progressed = true;
                }
            }
        } else {
            domain_problems.push(message);
            progressed = true;
        }
    }
    if error.problems().is_empty() {
        domain_problems.push(error.to_string());
    }
    progressed && domain_problems.is_empty()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::fixtures::objects;

    const DOMAIN: &str = r#"
apiVersion: wharf.dev/v1alpha1
kind: Domain
metadata: {name: acme, namespace: wharf-system}
spec:
  storage: {memory: {}}
  externalConnections:
    - {name: npm-public, format: npm, url: "http://127.0.0.1:9/"}
  repositoryNamespaces: {from: Selector, selector: {matchLabels: {wharf.dev/domain: acme}}}
"#;

    fn namespaces() -> NamespaceLabels {
        let labelled = BTreeMap::from([("wharf.dev/domain".to_owned(), "acme".to_owned())]);
        BTreeMap::from([
            ("team-a".to_owned(), labelled.clone()),
            ("team-b".to_owned(), labelled),
            ("stranger".to_owned(), BTreeMap::new()),
        ])
    }

    fn repository(namespace: &str, name: &str, extra: &str) -> String {
        format!(
            "---\napiVersion: wharf.dev/v1alpha1\nkind: Repository\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  domainRef: {{name: acme, namespace: wharf-system}}\n{extra}\n"
        )
    }

    fn resolve_yaml(yaml: &str) -> Resolution {
        let objects = objects(yaml);
        resolve(&objects.domains[0], &objects.repositories, &objects.policies, &namespaces())
    }

    fn verdict<'a>(resolution: &'a Resolution, namespace: &str, name: &str) -> &'a Verdict {
        resolution.repositories.get(&(namespace.to_owned(), name.to_owned())).unwrap()
    }

    fn rejection(verdict: &Verdict) -> Rejection {
        match verdict {
            Verdict::Rejected(rejection, _) => *rejection,
            Verdict::Admitted => panic!("admitted"),
        }
    }

    #[test]
    fn admits_by_selector_and_reports_strangers() {
        let yaml = [
            DOMAIN.to_owned(),
            repository("team-a", "web", "  externalConnection: npm-public"),
            repository("stranger", "evil", ""),
        ]
        .concat();
        let resolution = resolve_yaml(&yaml);
        assert_eq!(verdict(&resolution, "team-a", "web"), &Verdict::Admitted);
        let Verdict::Rejected(rejection, message) = verdict(&resolution, "stranger", "evil") else { panic!() };
        assert_eq!(*rejection, Rejection::NamespaceNotAdmitted);
        assert!(message.contains("namespace stranger does not match"), "{message}");
        let config = resolution.config.unwrap();
        assert_eq!(config.repositories.len(), 1);
        assert!(config.repository("web").is_some());
    }

    #[test]
    fn same_namespace_by_default() {
        let yaml = DOMAIN
            .replace("repositoryNamespaces: {from: Selector, selector: {matchLabels: {wharf.dev/domain: acme}}}", "")
            + &repository("wharf-system", "local", "")
            + &repository("team-a", "remote", "");
        let resolution = resolve_yaml(&yaml);
        assert_eq!(verdict(&resolution, "wharf-system", "local"), &Verdict::Admitted);
        assert_eq!(rejection(verdict(&resolution, "team-a", "remote")), Rejection::NamespaceNotAdmitted);
    }

    #[test]
    fn the_older_repository_keeps_a_clashing_name() {
        let yaml = [DOMAIN.to_owned(), repository("team-b", "shared", ""), repository("team-a", "shared", "")].concat();
        let resolution = resolve_yaml(&yaml);
        assert_eq!(verdict(&resolution, "team-b", "shared"), &Verdict::Admitted, "created first");
        let Verdict::Rejected(rejection, message) = verdict(&resolution, "team-a", "shared") else { panic!() };
        assert_eq!(*rejection, Rejection::NameConflict);
        assert!(message.contains("Repository team-b/shared already uses the name `shared`"), "{message}");
        assert_eq!(resolution.admitted_repository("shared"), Some(&("team-b".to_owned(), "shared".to_owned())));
    }

    #[test]
    fn cycles_and_missing_upstreams_cascade() {
        let yaml = [
            DOMAIN.to_owned(),
            repository("team-a", "a", "  upstreams: [{name: b}]"),
            repository("team-a", "b", "  upstreams: [{name: a}]"),
            repository("team-a", "c", "  upstreams: [{name: a}]"),
            repository("team-a", "d", "  upstreams: [{name: ghost}]"),
            repository("team-a", "e", "  externalConnection: pypi-public"),
            repository("team-a", "f", "  upstreams: [{name: g}]"),
            repository("team-a", "g", ""),
        ]
        .concat();
        let resolution = resolve_yaml(&yaml);
        let Verdict::Rejected(rejection, message) = verdict(&resolution, "team-a", "a") else { panic!() };
        assert_eq!(*rejection, Rejection::UpstreamCycle);
        assert!(message.contains("a -> b -> a"), "{message}");
        assert_eq!(rejection_of(&resolution, "b"), Rejection::UpstreamCycle);
        assert_eq!(rejection_of(&resolution, "c"), Rejection::UpstreamNotReady);
        assert_eq!(rejection_of(&resolution, "d"), Rejection::UpstreamNotFound);
        let Verdict::Rejected(rejection, message) = verdict(&resolution, "team-a", "e") else { panic!() };
        assert_eq!(*rejection, Rejection::UnknownExternalConnection);
        assert!(message.contains("it has npm-public"), "{message}");
        assert_eq!(verdict(&resolution, "team-a", "f"), &Verdict::Admitted);
        let config = resolution.config.unwrap();
        let names: Vec<&str> = config.repositories.iter().map(|repository| repository.name()).collect();
        assert_eq!(names, ["f", "g"]);
    }

    fn rejection_of(resolution: &Resolution, name: &str) -> Rejection {
        rejection(verdict(resolution, "team-a", name))
    }

    #[test]
    fn upstreams_need_consent_given_by_name_or_namespace_selector() {
        let private = |grants: &str| {
            repository("team-b", "priv", &format!("  access: {{read: [{{kind: Namespace, name: team-b}}]}}\n{grants}"))
        };
        let app = repository("team-a", "app", "  upstreams: [{name: priv}]\n  access: {read: [{kind: Anonymous}]}");
        let reader =
            repository("team-a", "reader", "  upstreams: [{name: app}]\n  access: {read: [{kind: Anonymous}]}");
        let yaml = [DOMAIN.to_owned(), private(""), app.clone(), reader.clone()].concat();
        let resolution = resolve_yaml(&yaml);
        let Verdict::Rejected(rejection, message) = verdict(&resolution, "team-a", "app") else { panic!() };
        assert_eq!(*rejection, Rejection::UpstreamNotPermitted);
        assert!(message.starts_with("spec.upstreams[0].name: upstream Repository `priv` does not permit"), "{message}");
        assert_eq!(rejection_of(&resolution, "reader"), Rejection::UpstreamNotPermitted);
        assert_eq!(verdict(&resolution, "team-b", "priv"), &Verdict::Admitted);

        // Consent by namespace labels reaches every Repository of team-a; the rendered
        // configuration names the namespaces the selector matched.
        let grants = "  allowedDownstreams: [{namespaceSelector: {matchLabels: {wharf.dev/domain: acme}}}]\n";
        let resolution = resolve_yaml(&[DOMAIN.to_owned(), private(grants), app, reader].concat());
        assert_eq!(verdict(&resolution, "team-a", "app"), &Verdict::Admitted);
        assert_eq!(verdict(&resolution, "team-a", "reader"), &Verdict::Admitted);
        let config = resolution.config.unwrap();
        let granted: Vec<_> = config
            .repository("priv")
            .unwrap()
            .spec
            .allowed_downstreams
            .iter()
            .map(|grant| grant.namespace.clone().unwrap())
            .collect();
        assert_eq!(granted, ["team-a", "team-b"]);
    }

    #[test]
    fn validator_problems_reject_only_their_object() {
        let yaml = [
            DOMAIN.to_owned(),
            repository("team-a", "open", "  access: {publish: [{kind: Anonymous}]}"),
            repository("team-a", "fine", ""),
        ]
        .concat();
        let resolution = resolve_yaml(&yaml);
        let Verdict::Rejected(rejection, message) = verdict(&resolution, "team-a", "open") else { panic!() };
        assert_eq!(*rejection, Rejection::InvalidSpec);
        assert!(message.starts_with("spec.access.publish[0]: Anonymous may only read"), "{message}");
        assert_eq!(verdict(&resolution, "team-a", "fine"), &Verdict::Admitted);
    }

    #[test]
    fn policies_attach_to_the_domain_or_its_repositories() {
        let policy = |name: &str, spec: &str| {
            format!(
                "---\napiVersion: wharf.dev/v1alpha1\nkind: UpstreamPolicy\nmetadata: {{name: {name}, namespace: wharf-system}}\nspec:\n{spec}\n"
            )
        };
        let yaml = [
            DOMAIN.to_owned(),
            repository("team-a", "web", ""),
            policy("domain-wide", "  targetRefs: [{kind: Domain, name: acme}]\n  rules: [{patterns: [\"/npm/acme/*\"], externalUpstream: {mode: Block}}]"),
            policy("for-web", "  targetRefs: [{kind: Repository, name: web, namespace: team-a}]\n  metadataTTL: 1m"),
            policy(
                "bad-list",
                "  targetRefs: [{kind: Domain, name: acme}]\n  rules: [{patterns: [\"/*\"], publish: {mode: AllowSpecificRepositories, repositories: [nobody]}}]",
            ),
            policy("elsewhere", "  targetRefs: [{kind: Domain, name: other}]"),
        ]
        .concat();
        let resolution = resolve_yaml(&yaml);
        let key = |name: &str| ("wharf-system".to_owned(), name.to_owned());
        assert_eq!(resolution.policies.get(&key("domain-wide")), Some(&Verdict::Admitted));
        assert_eq!(resolution.policies.get(&key("for-web")), Some(&Verdict::Admitted));
        let Some(Verdict::Rejected(rejection, message)) = resolution.policies.get(&key("bad-list")) else { panic!() };
        assert_eq!(*rejection, Rejection::InvalidSpec);
        assert!(message.contains("no Repository named `nobody`"), "{message}");
        assert!(!resolution.policies.contains_key(&key("elsewhere")));
        assert_eq!(resolution.config.unwrap().policies.len(), 2);
    }

    #[test]
    fn rendering_is_stable_and_readable_by_the_registry() {
        let parts = [
            DOMAIN.to_owned(),
            repository("team-a", "web", "  upstreams: [{name: store}]"),
            repository("team-b", "store", "  externalConnection: npm-public"),
        ];
        let forward = resolve_yaml(&parts.concat()).config.unwrap().to_yaml().unwrap();
        let mut reversed_objects = objects(&parts.concat());
        reversed_objects.repositories.reverse();
        for repository in &mut reversed_objects.repositories {
            repository.metadata.resource_version = Some("999".to_owned());
            repository.metadata.managed_fields = Some(Vec::new());
        }
        let reversed = resolve(
            &reversed_objects.domains[0],
            &reversed_objects.repositories,
            &reversed_objects.policies,
            &namespaces(),
        )
        .config
        .unwrap()
        .to_yaml()
        .unwrap();
        assert_eq!(forward, reversed, "input order and server metadata do not change the bytes");
        assert!(!forward.contains("resourceVersion") && !forward.contains("uid"), "{forward}");
        let read_back = DomainConfig::from_yaml_str("rendered", &forward).unwrap();
        assert_eq!(read_back.repositories.len(), 2);
    }

    #[test]
    fn an_invalid_domain_serves_nothing() {
        let yaml = DOMAIN.replace("storage: {memory: {}}", "storage: {memory: {}, filesystem: {path: /data}}")
            + &repository("team-a", "web", "");
        let resolution = resolve_yaml(&yaml);
        assert!(resolution.config.is_none());
        assert!(resolution.domain_problems[0].contains("2 storage backends"), "{:?}", resolution.domain_problems);
        assert_eq!(rejection_of(&resolution, "web"), Rejection::DomainInvalid);
    }
}
