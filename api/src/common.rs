//! Types shared by the Wharf resources: references, access subjects, deletion policy and
//! the names of status conditions. Pure data, no I/O.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of every Wharf resource.
pub const GROUP: &str = "wharf.dev";
/// The version of the Wharf resources this crate describes.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of every Wharf resource.
pub const API_VERSION: &str = "wharf.dev/v1alpha1";

/// Condition type: the resource is fully reconciled and serving.
pub const CONDITION_READY: &str = "Ready";
/// Condition type: the controller is working towards the desired state.
pub const CONDITION_RECONCILING: &str = "Reconciling";
/// Condition type: progress stopped and needs a person (invalid spec, missing reference).
pub const CONDITION_STALLED: &str = "Stalled";

/// Finds the condition of the given type (`Ready`, `Reconciling`, `Stalled`).
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|condition| condition.type_ == type_)
}

/// Whether the conditions hold `Ready=True`.
pub fn is_ready(conditions: &[Condition]) -> bool {
    find_condition(conditions, CONDITION_READY).is_some_and(|condition| condition.status == "True")
}

/// Whether `text` looks like an absolute `http://` or `https://` URL with a host. A
/// deliberately small check (no URL crate): scheme, a non-empty host, no whitespace.
pub fn is_http_url(text: &str) -> bool {
    http_url_host(text).is_some()
}

/// The scheme (`http` or `https`) and host of an absolute http(s) URL, as
/// [`is_http_url`] reads it.
fn http_url_host(text: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = match text.strip_prefix("https://") {
        Some(rest) => ("https", rest),
        None => ("http", text.strip_prefix("http://")?),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    let host = match host.strip_prefix('[') {
        // IPv6 literal: `[::1]:8080`.
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => host.split(':').next().unwrap_or_default(),
    };
    (!host.is_empty() && !text.chars().any(|c| c.is_whitespace() || c.is_control())).then_some((scheme, host))
}

/// Whether `text` is an https URL, or an http one on a loopback address
/// (what tests run): where credentials and signing keys may come from.
pub fn is_https_or_loopback(text: &str) -> bool {
    match http_url_host(text) {
        Some(("https", _)) => true,
        Some((_, host)) => host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

/// What happens to stored data when the resource is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep the stored packages (and, for a Domain, its bucket contents and keys) when the
    /// resource is deleted. The default.
    #[default]
    Retain,
    /// Delete the stored packages with the resource.
    Delete,
}

/// A reference to a key of a Secret in the namespace of the referring resource.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret, in the namespace of the referring resource.
    pub name: String,
    /// Key inside the Secret. When omitted, the consumer's documented default key is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// A reference from a Repository to the Domain it belongs to.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DomainRef {
    /// Name of the Domain.
    pub name: String,
    /// Namespace of the Domain. Defaults to the namespace of the Repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A reference to another Repository of the same Domain, by name (names are unique
/// within a Domain).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryRef {
    /// Name of the Repository.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
}

/// Kinds of subjects that may be granted access to a Repository.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum SubjectKind {
    /// A Kubernetes ServiceAccount; needs `name` and `namespace`.
    ServiceAccount,
    /// Every ServiceAccount of a namespace; needs `name` (the namespace).
    Namespace,
    /// Holders of a token from an OpenID Connect issuer; needs `issuer`, optionally `claims`
    /// that must all match.
    #[serde(rename = "OIDC")]
    Oidc,
    /// A person, by user name: as the apiserver names them (their kubeconfig token,
    /// `spec.tokens.kubernetesUsers`) or as a trusted issuer's `people` mapping does (with
    /// its prefix); needs `name`.
    User,
    /// Every person in a group, named as [`SubjectKind::User`] names people; needs `name`.
    Group,
    /// Anyone, without credentials. Only allowed for `read`.
    Anonymous,
}

impl SubjectKind {
    /// The name as written in YAML.
    pub fn as_str(&self) -> &'static str {
        match self {
            SubjectKind::ServiceAccount => "ServiceAccount",
            SubjectKind::Namespace => "Namespace",
            SubjectKind::Oidc => "OIDC",
            SubjectKind::User => "User",
            SubjectKind::Group => "Group",
            SubjectKind::Anonymous => "Anonymous",
        }
    }
}

impl std::fmt::Display for SubjectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Someone who may read from or publish to a Repository.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Subject {
    /// What kind of subject this is: ServiceAccount, Namespace, OIDC, User, Group or
    /// Anonymous.
    pub kind: SubjectKind,
    /// ServiceAccount: its name. Namespace: the namespace's name. User: the user name.
    /// Group: the group's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// ServiceAccount: the namespace it lives in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// OIDC: the issuer URL, exactly as in the token's `iss` claim; the Domain must trust
    /// it (`spec.tokens.trustedIssuers`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// OIDC: claims the ID token must carry, each with this value or matching it as a glob
    /// (`*` for any run of characters), all of them; at least one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claims: BTreeMap<String, String>,
}

impl Subject {
    /// A subject of the given kind with no other field set.
    pub fn new(kind: SubjectKind) -> Self {
        Subject { kind, name: None, namespace: None, issuer: None, claims: BTreeMap::new() }
    }

    /// Anyone, without credentials.
    pub fn anonymous() -> Self {
        Subject::new(SubjectKind::Anonymous)
    }

    /// A ServiceAccount.
    pub fn service_account(namespace: &str, name: &str) -> Self {
        Subject {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..Subject::new(SubjectKind::ServiceAccount)
        }
    }

    /// Every ServiceAccount of a namespace.
    pub fn namespace(name: &str) -> Self {
        Subject { name: Some(name.to_owned()), ..Subject::new(SubjectKind::Namespace) }
    }

    /// Holders of a token from an OIDC issuer whose claims match.
    pub fn oidc(issuer: &str, claims: BTreeMap<String, String>) -> Self {
        Subject { issuer: Some(issuer.to_owned()), claims, ..Subject::new(SubjectKind::Oidc) }
    }

    /// Whether an ID token of `issuer` with `claims` (already verified) is
    /// this OIDC subject: every condition names a claim the token has, whose
    /// value (a string, number or boolean as written) matches it exactly or
    /// as a glob (`*` for any run of characters).
    pub fn matches_oidc(&self, issuer: &str, claims: &serde_json::Map<String, serde_json::Value>) -> bool {
        self.kind == SubjectKind::Oidc
            && self.issuer.as_deref() == Some(issuer)
            && !self.claims.is_empty()
            && self.claims.iter().all(|(claim, pattern)| {
                let value = match claims.get(claim) {
                    Some(serde_json::Value::String(text)) => text.clone(),
                    Some(serde_json::Value::Number(number)) => number.to_string(),
                    Some(serde_json::Value::Bool(flag)) => flag.to_string(),
                    _ => return false,
                };
                glob_matches(pattern, &value)
            })
    }

    /// A person, by user name.
    pub fn user(name: &str) -> Self {
        Subject { name: Some(name.to_owned()), ..Subject::new(SubjectKind::User) }
    }

    /// Every person of a group.
    pub fn group(name: &str) -> Self {
        Subject { name: Some(name.to_owned()), ..Subject::new(SubjectKind::Group) }
    }

    /// Whether `person` is this User subject, or in this Group subject.
    pub fn includes_person(&self, person: &Person) -> bool {
        let Some(name) = self.name.as_deref() else { return false };
        match self.kind {
            SubjectKind::User => person.username == name,
            SubjectKind::Group => person.groups.iter().any(|group| group == name),
            _ => false,
        }
    }

    /// Whether ServiceAccount `namespace/name` is this subject: the ServiceAccount itself, or
    /// any ServiceAccount of the namespace it names. OIDC and Anonymous subjects name no
    /// ServiceAccount.
    pub fn includes_service_account(&self, namespace: &str, name: &str) -> bool {
        match self.kind {
            SubjectKind::ServiceAccount => {
                self.namespace.as_deref() == Some(namespace) && self.name.as_deref() == Some(name)
            }
            SubjectKind::Namespace => self.name.as_deref() == Some(namespace),
            SubjectKind::Oidc | SubjectKind::User | SubjectKind::Group | SubjectKind::Anonymous => false,
        }
    }

    /// Problems with this subject, as messages; empty when it is valid. `for_publish`
    /// forbids Anonymous.
    pub fn problems(&self, for_publish: bool) -> Vec<String> {
        let mut problems = Vec::new();
        let has = |field: &Option<String>| field.as_deref().is_some_and(|value| !value.is_empty());
        let mut forbid = |present: bool, field: &str| {
            if present {
                problems.push(format!("{field} is not used by kind {}; remove it", self.kind));
            }
        };
        match self.kind {
            SubjectKind::Anonymous => {
                forbid(self.name.is_some(), "name");
                forbid(self.namespace.is_some(), "namespace");
                forbid(self.issuer.is_some(), "issuer");
                forbid(!self.claims.is_empty(), "claims");
            }
            SubjectKind::ServiceAccount | SubjectKind::Namespace | SubjectKind::User | SubjectKind::Group => {
                forbid(self.issuer.is_some(), "issuer");
                forbid(!self.claims.is_empty(), "claims");
                if self.kind != SubjectKind::ServiceAccount {
                    forbid(self.namespace.is_some(), "namespace");
                }
            }
            SubjectKind::Oidc => {
                forbid(self.name.is_some(), "name");
                forbid(self.namespace.is_some(), "namespace");
            }
        }
        match self.kind {
            SubjectKind::Anonymous if for_publish => {
                problems.push("Anonymous may only read; publishing always needs an identity".to_owned())
            }
            SubjectKind::Anonymous => {}
            SubjectKind::ServiceAccount => {
                if !has(&self.name) {
                    problems.push("ServiceAccount needs a name".to_owned());
                }
                if !has(&self.namespace) {
                    problems.push("ServiceAccount needs a namespace".to_owned());
                }
            }
            SubjectKind::Namespace => {
                if !has(&self.name) {
                    problems.push("Namespace needs a name (the namespace's name)".to_owned());
                }
            }
            SubjectKind::User | SubjectKind::Group => {
                if !has(&self.name) {
                    problems.push(format!("{} needs a name", self.kind));
                }
            }
            SubjectKind::Oidc => {
                forbid(self.name.is_some(), "name");
                forbid(self.namespace.is_some(), "namespace");
                match self.issuer.as_deref() {
                    None | Some("") => problems.push("OIDC needs an issuer".to_owned()),
                    Some(issuer) if !is_http_url(issuer) => {
                        problems.push(format!("OIDC issuer `{issuer}` is not an http(s) URL"))
                    }
                    Some(_) => {}
                }
                // Without a condition, any workflow anywhere that can ask the issuer
                // for this audience would match.
                if self.claims.is_empty() {
                    problems.push(OIDC_NEEDS_CLAIMS.to_owned());
                }
                if self.claims.iter().any(|(claim, value)| claim.is_empty() || value.is_empty()) {
                    problems.push("OIDC claim conditions need a claim name and a value".to_owned());
                }
            }
        }
        problems
    }
}

/// A person, as an identity provider or the apiserver names them: a user
/// name and the groups they are in (prefixed as the source's mapping says).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Person {
    /// The user name, prefixed.
    pub username: String,
    /// The groups they are in, each prefixed.
    pub groups: Vec<String>,
}

/// Whether `text` matches `pattern`, where `*` stands for any run of
/// characters (none included) and everything else for itself.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let Some((first, rest)) = pattern.split_once('*') else { return pattern == text };
    let Some(mut remaining) = text.strip_prefix(first) else { return false };
    let mut pieces: Vec<&str> = rest.split('*').collect();
    let last = pieces.pop().unwrap_or_default();
    for piece in pieces {
        match remaining.find(piece) {
            Some(at) => remaining = &remaining[at + piece.len()..],
            None => return false,
        }
    }
    remaining.len() >= last.len() && remaining.ends_with(last)
}

/// Why an OIDC subject without claim conditions is refused, in the loader and
/// in admission alike.
pub const OIDC_NEEDS_CLAIMS: &str = "OIDC needs claims: at least one condition on the ID token's claims (such as \
     repository and ref), or every job that can get a token from the issuer would match";

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn oidc_subjects_match_claims_exactly_or_by_glob() {
        let claims = |pairs: &[(&str, serde_json::Value)]| -> serde_json::Map<String, serde_json::Value> {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
        };
        let issuer = "https://token.actions.example";
        let subject = Subject::oidc(
            issuer,
            BTreeMap::from([
                ("repository".to_owned(), "acme/web".to_owned()),
                ("ref".to_owned(), "refs/heads/*".to_owned()),
            ]),
        );
        let token = claims(&[("repository", "acme/web".into()), ("ref", "refs/heads/main".into()), ("run", 7.into())]);
        assert!(subject.matches_oidc(issuer, &token));
        assert!(!subject.matches_oidc("https://other.example", &token));
        let fork = claims(&[("repository", "evil/web".into()), ("ref", "refs/heads/main".into())]);
        assert!(!subject.matches_oidc(issuer, &fork));
        let tag = claims(&[("repository", "acme/web".into()), ("ref", "refs/tags/v1".into())]);
        assert!(!subject.matches_oidc(issuer, &tag));
        assert!(!subject.matches_oidc(issuer, &claims(&[("repository", "acme/web".into())])), "a claim missing");
        let numbered = Subject::oidc(issuer, BTreeMap::from([("run".to_owned(), "7".to_owned())]));
        assert!(numbered.matches_oidc(issuer, &token));
        assert!(!Subject::oidc(issuer, BTreeMap::new()).matches_oidc(issuer, &token), "no condition, no match");

        for (pattern, text, matches) in [
            ("a*", "abc", true),
            ("*c", "abc", true),
            ("a*c", "ac", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxc", false),
            ("*", "", true),
            ("abc", "abcd", false),
            ("a*a", "a", false),
            ("repo:acme/*:ref:refs/heads/main", "repo:acme/web:ref:refs/heads/main", true),
            ("repo:acme/*:ref:refs/heads/main", "repo:acme/web:ref:refs/heads/dev", false),
        ] {
            assert_eq!(glob_matches(pattern, text), matches, "{pattern} ~ {text}");
        }
    }

    #[test]
    fn subject_kinds_use_their_wire_names() {
        let oidc: Subject = serde_json::from_str(r#"{"kind":"OIDC","issuer":"https://issuer.example"}"#).unwrap();
        assert_eq!(oidc.kind, SubjectKind::Oidc);
        assert_eq!(serde_json::to_string(&Subject::anonymous()).unwrap(), r#"{"kind":"Anonymous"}"#);
        assert!(serde_json::from_str::<Subject>(r#"{"kind":"Oidc"}"#).is_err());
    }

    #[test]
    fn subject_requirements() {
        assert!(Subject::anonymous().problems(false).is_empty());
        assert_eq!(Subject::anonymous().problems(true).len(), 1);
        assert!(Subject::service_account("ci", "bot").problems(true).is_empty());
        let mut account = Subject::service_account("ci", "bot");
        account.namespace = None;
        assert_eq!(account.problems(true), vec!["ServiceAccount needs a namespace"]);
        assert!(Subject::namespace("team-web").problems(false).is_empty());
        assert_eq!(Subject::new(SubjectKind::Namespace).problems(false).len(), 1);
        assert_eq!(Subject::new(SubjectKind::Oidc).problems(true), vec!["OIDC needs an issuer", OIDC_NEEDS_CLAIMS]);
        assert_eq!(
            Subject::oidc("https://token.actions.example", BTreeMap::new()).problems(true),
            vec![OIDC_NEEDS_CLAIMS]
        );
        let claims = BTreeMap::from([("repository".to_owned(), "acme/*".to_owned())]);
        assert!(Subject::oidc("https://token.actions.example", claims).problems(true).is_empty());
        let mut anonymous_with_name = Subject::anonymous();
        anonymous_with_name.name = Some("x".into());
        assert_eq!(anonymous_with_name.problems(false).len(), 1);
    }

    #[test]
    fn which_service_accounts_a_subject_includes() {
        let bot = Subject::service_account("ci", "bot");
        assert!(bot.includes_service_account("ci", "bot"));
        assert!(!bot.includes_service_account("ci", "other"));
        assert!(!bot.includes_service_account("bot", "ci"));
        let namespace = Subject::namespace("team-web");
        assert!(namespace.includes_service_account("team-web", "default"));
        assert!(!namespace.includes_service_account("team-data", "default"));
        assert!(!Subject::anonymous().includes_service_account("team-web", "default"));
        assert!(!Subject::oidc("https://issuer.example", BTreeMap::new()).includes_service_account("ci", "bot"));
    }

    #[test]
    fn http_url_check() {
        for good in [
            "https://registry.example",
            "http://127.0.0.1:4873/",
            "https://user@host.example/path?q#f",
            "http://[::1]:8080/npm",
        ] {
            assert!(is_http_url(good), "{good}");
        }
        for bad in ["", "ftp://x", "https://", "https:///path", "https://a b", "registry.example", "http://:80"] {
            assert!(!is_http_url(bad), "{bad}");
        }
    }

    #[test]
    fn ready_condition_lookup() {
        assert!(!is_ready(&[]));
    }
}
