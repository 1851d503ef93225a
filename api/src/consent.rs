//! Upstream consent: whether a Repository's packages may be served to the readers of another
//! Repository that reaches it through its upstreams. Pure.
//!
//! A Repository *U* in the upstream chain of a Repository *T* serves its packages to whoever
//! may read *T*. That is allowed when it widens nobody's access — every subject that may read
//! *T* may read *U* already — or when *U* names *T* in `spec.allowedDownstreams`. Consent is
//! given to each reading Repository, not passed along: when *T* reads *U* through *M*, *U*
//! must consent to *T* as well as to *M*. So naming another team's private Repository as an
//! upstream, directly or through a chain, never lets anyone read it who could not before.

use std::collections::HashSet;

use crate::common::{Subject, SubjectKind};
use crate::repository::{AccessSpec, Repository};

/// A Repository in a chain that does not consent to the Repository reading through it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The upstream entry the chain leads through, like `spec.upstreams[0].name`.
    pub path: String,
    /// Which Repository refuses and why, for people.
    pub message: String,
}

/// Every Repository in `top`'s upstream chain (depth-first, each once) that does not
/// consent to serving `top`'s readers. `lookup` finds a Repository of the Domain by name;
/// names it does not know are skipped (they are reported elsewhere).
pub fn refusals<'a>(top: &'a Repository, lookup: impl Fn(&str) -> Option<&'a Repository>) -> Vec<Refusal> {
    let mut refusals = Vec::new();
    let mut seen = HashSet::from([top.name()]);
    for (position, first) in top.upstream_names().enumerate() {
        let mut stack: Vec<Vec<&str>> = vec![vec![first]];
        while let Some(path) = stack.pop() {
            let Some(&name) = path.last() else { continue };
            if !seen.insert(name) {
                continue;
            }
            let Some(upstream) = lookup(name) else { continue };
            if let Err(reason) = check(upstream, top) {
                let through =
                    if path.len() > 1 { format!(" (reached through {})", path.join(" -> ")) } else { String::new() };
                refusals.push(Refusal {
                    path: format!("spec.upstreams[{position}].name"),
                    message: format!("upstream Repository `{name}`{through} does not permit this Repository: {reason}"),
                });
            }
            let next_names: Vec<&str> = upstream.upstream_names().collect();
            for &next in next_names.iter().rev() {
                let mut next_path = path.clone();
                next_path.push(next);
                stack.push(next_path);
            }
        }
    }
    refusals
}

/// Whether `upstream` lets `downstream` (in namespace `downstream_namespace`) serve its
/// packages, and if not, why.
pub fn check(upstream: &Repository, downstream: &Repository) -> Result<(), String> {
    let downstream_namespace = downstream.metadata.namespace.as_deref().unwrap_or_default();
    if grants(upstream, downstream_namespace, downstream.name()) {
        return Ok(());
    }
    if let Some(subject) = uncovered_reader(&upstream.spec.access, &downstream.spec.access) {
        return Err(format!(
            "{} may read this Repository but not `{}`, and `{}` does not list this Repository in spec.allowedDownstreams",
            describe(subject),
            upstream.name(),
            upstream.name(),
        ));
    }
    match uncovered_network(upstream, downstream) {
        None => Ok(()),
        Some(from) => Err(format!(
            "callers from {from} may read this Repository but not `{}` (its spec.network.read), and `{}` does not \
             list this Repository in spec.allowedDownstreams",
            upstream.name(),
            upstream.name(),
        )),
    }
}

/// Where callers may read `downstream` from that `upstream`'s network rules keep out (a
/// reader of `downstream` may publish to it too, so its publishers' networks count), if
/// anywhere; `None` when the upstream's rules cover every one.
fn uncovered_network(upstream: &Repository, downstream: &Repository) -> Option<String> {
    let allowed = upstream.spec.network.as_ref().map(|network| network.read.as_slice()).unwrap_or_default();
    if allowed.is_empty() {
        return None;
    }
    let Some(network) = downstream.spec.network.as_ref().filter(|network| !network.read.is_empty()) else {
        return Some("anywhere".to_owned());
    };
    network
        .read
        .iter()
        .chain(network.publishers())
        .find(|source| !allowed.iter().any(|outer| outer.covers(source)))
        .map(ToString::to_string)
}

/// Whether `upstream`'s `allowedDownstreams` names the Repository `namespace/name`.
/// Namespace selectors are not evaluated here: the operator, which knows namespace labels,
/// replaces them with the namespaces they select before the configuration is validated.
pub fn grants(upstream: &Repository, namespace: &str, name: &str) -> bool {
    upstream.spec.allowed_downstreams.iter().any(|grant| {
        grant.namespace.as_deref() == Some(namespace) && grant.name.as_deref().is_none_or(|wanted| wanted == name)
    })
}

/// The first subject that may read through `downstream` (its readers and publishers) and is
/// not among those who may read `upstream`; `None` when there is none.
pub fn uncovered_reader<'a>(upstream: &AccessSpec, downstream: &'a AccessSpec) -> Option<&'a Subject> {
    let upstream_readers: Vec<&Subject> = upstream.read.iter().chain(&upstream.publish).collect();
    downstream
        .read
        .iter()
        .chain(&downstream.publish)
        .find(|subject| !upstream_readers.iter().any(|reader| covers(reader, subject)))
}

/// Whether everyone `subject` stands for is also in `reader`.
fn covers(reader: &Subject, subject: &Subject) -> bool {
    match (reader.kind, subject.kind) {
        (SubjectKind::Anonymous, _) => true,
        (SubjectKind::ServiceAccount, SubjectKind::ServiceAccount) => {
            reader.namespace == subject.namespace && reader.name == subject.name
        }
        (SubjectKind::Namespace, SubjectKind::ServiceAccount) => reader.name == subject.namespace,
        (SubjectKind::Namespace, SubjectKind::Namespace) => reader.name == subject.name,
        (SubjectKind::User, SubjectKind::User) | (SubjectKind::Group, SubjectKind::Group) => {
            reader.name == subject.name
        }
        // A token matching the subject's claims matches every claim the reader asks for.
        (SubjectKind::Oidc, SubjectKind::Oidc) => {
            reader.issuer == subject.issuer
                && reader.claims.iter().all(|(claim, value)| subject.claims.get(claim) == Some(value))
        }
        _ => false,
    }
}

fn describe(subject: &Subject) -> String {
    match subject.kind {
        SubjectKind::Anonymous => "Anonymous (anyone)".to_owned(),
        SubjectKind::ServiceAccount => format!(
            "ServiceAccount {}/{}",
            subject.namespace.as_deref().unwrap_or_default(),
            subject.name.as_deref().unwrap_or_default()
        ),
        SubjectKind::Namespace => format!("Namespace {}", subject.name.as_deref().unwrap_or_default()),
        SubjectKind::Oidc => format!("OIDC subject of {}", subject.issuer.as_deref().unwrap_or_default()),
        SubjectKind::User => format!("User {}", subject.name.as_deref().unwrap_or_default()),
        SubjectKind::Group => format!("Group {}", subject.name.as_deref().unwrap_or_default()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::common::DomainRef;
    use crate::repository::{DownstreamGrant, RepositorySpec};

    fn repository(namespace: &str, name: &str, read: Vec<Subject>) -> Repository {
        let mut repository = Repository::new(name, RepositorySpec::new(DomainRef::default()));
        repository.metadata.namespace = Some(namespace.to_owned());
        repository.spec.access.read = read;
        repository
    }

    #[test]
    fn anonymous_downstream_of_a_private_upstream_needs_consent() {
        let mut private = repository("team-b", "priv", vec![Subject::namespace("team-b")]);
        let public = repository("team-a", "app", vec![Subject::anonymous()]);
        let refusal = check(&private, &public).unwrap_err();
        assert_eq!(
            refusal,
            "Anonymous (anyone) may read this Repository but not `priv`, and `priv` does not list this Repository in spec.allowedDownstreams"
        );
        private.spec.allowed_downstreams.push(DownstreamGrant::repository("team-a", "app"));
        assert!(check(&private, &public).is_ok());
        // A grant names a namespace, and a Repository in it or all of them.
        private.spec.allowed_downstreams = vec![DownstreamGrant::repository("team-a", "other")];
        assert!(check(&private, &public).is_err());
        private.spec.allowed_downstreams = vec![DownstreamGrant::namespace("team-a")];
        assert!(check(&private, &public).is_ok());
        private.spec.allowed_downstreams = vec![DownstreamGrant::namespace("team-c")];
        assert!(check(&private, &public).is_err());
    }

    #[test]
    fn a_downstream_reachable_from_wider_networks_needs_consent() {
        use crate::repository::{NetworkSource, NetworkSourceKind, RepositoryNetwork};
        let source = |cidr: Option<&str>| NetworkSource {
            kind: if cidr.is_some() { NetworkSourceKind::Cidr } else { NetworkSourceKind::InCluster },
            cidr: cidr.map(str::to_owned),
        };
        let anyone = vec![Subject::anonymous()];
        let mut upstream = repository("b", "priv", anyone.clone());
        upstream.spec.network =
            Some(RepositoryNetwork { read: vec![source(None), source(Some("10.0.0.0/8"))], publish: vec![] });
        let mut downstream = repository("a", "app", anyone);
        let error = check(&upstream, &downstream).unwrap_err();
        assert!(error.contains("callers from anywhere may read this Repository but not `priv`"), "{error}");
        downstream.spec.network = Some(RepositoryNetwork { read: vec![source(Some("10.1.0.0/16"))], publish: vec![] });
        assert_eq!(check(&upstream, &downstream), Ok(()), "a narrower range");
        downstream.spec.network =
            Some(RepositoryNetwork { read: vec![source(None)], publish: vec![source(Some("192.168.0.0/16"))] });
        let error = check(&upstream, &downstream).unwrap_err();
        assert!(error.contains("callers from CIDR 192.168.0.0/16"), "{error}");
        upstream.spec.allowed_downstreams =
            vec![DownstreamGrant { namespace: Some("a".into()), name: Some("app".into()), namespace_selector: None }];
        assert_eq!(check(&upstream, &downstream), Ok(()), "consent given");
    }

    #[test]
    fn narrower_readers_need_no_consent() {
        let anyone = repository("store", "npm-store", vec![Subject::anonymous()]);
        let team = repository("team-a", "app", vec![Subject::namespace("team-a")]);
        assert!(check(&anyone, &team).is_ok());
        let bot = repository("team-a", "ci", vec![Subject::service_account("team-a", "bot")]);
        assert!(check(&team, &bot).is_ok());
        assert!(check(&bot, &team).is_err(), "a namespace is more than one of its ServiceAccounts");
        // Publishers read too.
        let mut published = repository("team-a", "pub", vec![]);
        published.spec.access.publish.push(Subject::service_account("team-b", "release"));
        assert!(check(&team, &published).is_err());
    }

    #[test]
    fn oidc_claims_narrow() {
        let claims = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
        };
        let issuer = "https://issuer.example";
        let org = repository("a", "org", vec![Subject::oidc(issuer, claims(&[("org", "acme")]))]);
        let repo = repository(
            "a",
            "repo",
            vec![Subject::oidc(issuer, claims(&[("org", "acme"), ("repository", "acme/web")]))],
        );
        assert!(check(&org, &repo).is_ok());
        assert!(check(&repo, &org).is_err());
        let other = repository("a", "other", vec![Subject::oidc("https://other.example", claims(&[("org", "acme")]))]);
        assert!(check(&org, &other).is_err());
    }
}
