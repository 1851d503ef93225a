//! Identities and registry tokens: minting and verifying short-lived
//! signed tokens, and deciding what a caller may do. Pure logic, no I/O.
//!
//! Tokens are compact JWS (HS256) so standard tools can decode them; the
//! signing key belongs to the Domain.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use wharf_api::{Person, Repository, Subject};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Hash, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    Read,
    Publish,
    Admin,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Publish => "publish",
            Permission::Admin => "admin",
        }
    }
}

/// What a registry token grants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenClaims {
    /// Who the token was minted for.
    pub sub: String,
    /// The Domain that signed it.
    pub dom: String,
    /// Repository names; `*` means every repository of the Domain.
    pub repos: Vec<String>,
    pub perms: Vec<Permission>,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
}

/// A Kubernetes ServiceAccount, as the apiserver vouched for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
    /// `system:serviceaccount:{namespace}:{name}`, the apiserver's user name for it.
    pub username: String,
}

impl ServiceAccount {
    /// The ServiceAccount a Kubernetes user name denotes, if it denotes one.
    pub fn from_username(username: &str) -> Option<ServiceAccount> {
        let (namespace, name) = username.strip_prefix("system:serviceaccount:")?.split_once(':')?;
        (!namespace.is_empty() && !name.is_empty() && !name.contains(':')).then(|| ServiceAccount {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            username: username.to_owned(),
        })
    }
}

/// The caller of a request, once its credential was checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    Anonymous,
    /// The bootstrap admin token.
    Admin,
    /// A registry token: its scope is in its claims.
    Token(TokenClaims),
    /// A Kubernetes ServiceAccount token: what it may do is what the Repositories' `access`
    /// grants that ServiceAccount.
    ServiceAccount(ServiceAccount),
    /// A verified ID token of a trusted OIDC issuer (at the exchange only): what it may do
    /// is what the Repositories' `OIDC` subjects matching its claims grant, and, when the
    /// issuer names people, their `User` and `Group` subjects naming the person.
    Oidc(OidcIdentity),
    /// A person the apiserver vouched for by their own Kubernetes token (at the exchange
    /// only): what they may do is what the Repositories' `User` and `Group` subjects grant.
    KubernetesUser(Person),
}

/// Who an ID token of a trusted issuer says its bearer is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OidcIdentity {
    pub issuer: String,
    /// `{issuer}#{sub}`: the subject of the registry tokens it is exchanged for.
    pub name: String,
    pub claims: serde_json::Map<String, serde_json::Value>,
    /// The person the token names, when its issuer is an identity provider for people.
    pub person: Option<Person>,
}

impl Principal {
    pub fn name(&self) -> &str {
        match self {
            Principal::Anonymous => "anonymous",
            Principal::Admin => "admin",
            Principal::Token(claims) => &claims.sub,
            Principal::ServiceAccount(account) => &account.username,
            Principal::Oidc(identity) => &identity.name,
            Principal::KubernetesUser(person) => &person.username,
        }
    }

    /// Whether this principal may do `permission` on `repo`: anyone may read where the
    /// Repository admits anonymous reads; a ServiceAccount, an OIDC identity or a person
    /// where its `access` names them (publishers may read); a registry token within its
    /// scope.
    pub fn may(&self, repo: &Repository, permission: Permission) -> bool {
        if permission == Permission::Read && repo.allows_anonymous_read() {
            return true;
        }
        let names = |subject: &Subject| match self {
            Principal::ServiceAccount(account) => subject.includes_service_account(&account.namespace, &account.name),
            Principal::Oidc(identity) => {
                subject.matches_oidc(&identity.issuer, &identity.claims)
                    || identity.person.as_ref().is_some_and(|person| subject.includes_person(person))
            }
            Principal::KubernetesUser(person) => subject.includes_person(person),
            _ => false,
        };
        match self {
            Principal::ServiceAccount(_) | Principal::Oidc(_) | Principal::KubernetesUser(_) => {
                let named = |subjects: &[Subject]| subjects.iter().any(names);
                match permission {
                    Permission::Read => named(&repo.spec.access.read) || named(&repo.spec.access.publish),
                    Permission::Publish => named(&repo.spec.access.publish),
                    Permission::Admin => false,
                }
            }
            other => other.grants(repo.name(), permission),
        }
    }

    /// Whether this principal's credential grants `permission` on `repo` by itself.
    /// Publishing implies reading; admin implies everything. Anonymous and ServiceAccount
    /// access is decided by the Repository's `access` (see [`Principal::may`]).
    pub fn grants(&self, repo: &str, permission: Permission) -> bool {
        match self {
            Principal::Anonymous | Principal::ServiceAccount(_) | Principal::Oidc(_) | Principal::KubernetesUser(_) => {
                false
            }
            Principal::Admin => true,
            Principal::Token(claims) => {
                let repo_ok = claims.repos.iter().any(|r| r == "*" || r == repo);
                let perm_ok = claims.perms.iter().any(|p| {
                    *p == permission
                        || *p == Permission::Admin
                        || (*p == Permission::Publish && permission == Permission::Read)
                });
                repo_ok && perm_ok
            }
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token signature is invalid")]
    BadSignature,
    #[error("the token expired")]
    Expired,
    #[error("the token was issued for domain {0}")]
    WrongDomain(String),
}

/// Mints and verifies the tokens of one Domain.
#[derive(Clone)]
pub struct TokenSigner {
    key: Vec<u8>,
    domain: String,
}

const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

impl TokenSigner {
    pub fn new(key: Vec<u8>, domain: impl Into<String>) -> Self {
        TokenSigner { key, domain: domain.into() }
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn mint(&self, claims: &TokenClaims) -> String {
        let header = URL_SAFE_NO_PAD.encode(HEADER);
        // Claims are plain strings and numbers: serialising cannot fail.
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
        let signing_input = format!("{header}.{payload}");
        let signature = URL_SAFE_NO_PAD.encode(self.sign(signing_input.as_bytes()));
        format!("{signing_input}.{signature}")
    }

    pub fn verify(&self, token: &str, now: i64) -> Result<TokenClaims, TokenError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| TokenError::Malformed)?;
        let mut mac = self.mac();
        mac.update(header.as_bytes());
        mac.update(b".");
        mac.update(payload.as_bytes());
        mac.verify_slice(&signature).map_err(|_| TokenError::BadSignature)?;
        let header = URL_SAFE_NO_PAD.decode(header).map_err(|_| TokenError::Malformed)?;
        if header != HEADER.as_bytes() {
            return Err(TokenError::Malformed);
        }
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| TokenError::Malformed)?;
        let claims: TokenClaims = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
        if claims.dom != self.domain {
            return Err(TokenError::WrongDomain(claims.dom));
        }
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length.
        <Hmac<Sha256> as Mac>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!("hmac accepts any key length"))
    }

    fn sign(&self, input: &[u8]) -> Vec<u8> {
        let mut mac = self.mac();
        mac.update(input);
        mac.finalize().into_bytes().to_vec()
    }
}

/// Compares two secrets in constant time.
pub fn secrets_equal(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn claims(repos: &[&str], perms: &[Permission], exp: i64) -> TokenClaims {
        TokenClaims {
            sub: "ci".into(),
            dom: "default".into(),
            repos: repos.iter().map(|r| r.to_string()).collect(),
            perms: perms.to_vec(),
            iat: 0,
            exp,
            jti: "1".into(),
        }
    }

    #[test]
    fn round_trip_and_tamper() {
        let signer = TokenSigner::new(b"key".to_vec(), "default");
        let token = signer.mint(&claims(&["main"], &[Permission::Read], 100));
        assert_eq!(signer.verify(&token, 50).unwrap().repos, vec!["main"]);
        assert_eq!(signer.verify(&token, 100), Err(TokenError::Expired));
        let other = TokenSigner::new(b"other".to_vec(), "default");
        assert_eq!(other.verify(&token, 50), Err(TokenError::BadSignature));
        let foreign = TokenSigner::new(b"key".to_vec(), "acme");
        assert_eq!(foreign.verify(&token, 50), Err(TokenError::WrongDomain("default".into())));
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(&["*"], &[Permission::Admin], 100)).unwrap());
        parts[1] = &forged;
        assert_eq!(signer.verify(&parts.join("."), 50), Err(TokenError::BadSignature));
        assert_eq!(signer.verify("not-a-token", 50), Err(TokenError::Malformed));
    }

    #[test]
    fn service_accounts_from_user_names() {
        let account = ServiceAccount::from_username("system:serviceaccount:team-web:release-bot").unwrap();
        assert_eq!((account.namespace.as_str(), account.name.as_str()), ("team-web", "release-bot"));
        assert_eq!(Principal::ServiceAccount(account).name(), "system:serviceaccount:team-web:release-bot");
        for not_one in ["admin", "system:serviceaccount:team-web", "system:serviceaccount::bot", "system:node:n1", ""] {
            assert_eq!(ServiceAccount::from_username(not_one), None, "{not_one}");
        }
    }

    #[test]
    fn repository_access_decides_for_service_accounts() {
        use wharf_api::{DomainRef, RepositorySpec, Subject};
        let mut web = Repository::new("web", RepositorySpec::new(DomainRef::default()));
        web.spec.access.read.push(Subject::namespace("team-web"));
        web.spec.access.publish.push(Subject::service_account("ci", "release-bot"));
        let account = |namespace: &str, name: &str| {
            Principal::ServiceAccount(
                ServiceAccount::from_username(&format!("system:serviceaccount:{namespace}:{name}")).unwrap(),
            )
        };
        let builder = account("team-web", "builder");
        assert!(builder.may(&web, Permission::Read));
        assert!(!builder.may(&web, Permission::Publish));
        let bot = account("ci", "release-bot");
        assert!(bot.may(&web, Permission::Read), "publishers read");
        assert!(bot.may(&web, Permission::Publish));
        assert!(!bot.may(&web, Permission::Admin));
        let outsider = account("team-data", "builder");
        assert!(!outsider.may(&web, Permission::Read));
        assert!(!Principal::Anonymous.may(&web, Permission::Read));
        // Where anyone reads, so does every credential, whatever its scope.
        web.spec.access.read.push(Subject::anonymous());
        assert!(outsider.may(&web, Permission::Read) && Principal::Anonymous.may(&web, Permission::Read));
        let other_scope = Principal::Token(claims(&["other"], &[Permission::Read], 1));
        assert!(other_scope.may(&web, Permission::Read));
        assert!(!other_scope.may(&web, Permission::Publish));
        assert!(Principal::Admin.may(&web, Permission::Publish));
    }

    #[test]
    fn repository_access_decides_for_people() {
        use wharf_api::{DomainRef, RepositorySpec};
        let mut web = Repository::new("web", RepositorySpec::new(DomainRef::default()));
        web.spec.access.read.push(Subject::group("idp:developers"));
        web.spec.access.publish.push(Subject::user("alice"));
        let person = |username: &str, groups: &[&str]| Person {
            username: username.to_owned(),
            groups: groups.iter().map(|group| (*group).to_owned()).collect(),
        };
        let alice = Principal::KubernetesUser(person("alice", &["system:authenticated"]));
        assert!(alice.may(&web, Permission::Publish) && alice.may(&web, Permission::Read));
        let developer = |person: Person| {
            Principal::Oidc(OidcIdentity {
                issuer: "https://idp.example".into(),
                name: person.username.clone(),
                claims: serde_json::Map::new(),
                person: Some(person),
            })
        };
        let bob = developer(person("idp:bob", &["idp:developers"]));
        assert!(bob.may(&web, Permission::Read) && !bob.may(&web, Permission::Publish));
        assert!(!developer(person("idp:alice", &[])).may(&web, Permission::Read), "the IdP's alice is not alice");
        let cluster_developers = Principal::KubernetesUser(person("carol", &["developers"]));
        assert!(!cluster_developers.may(&web, Permission::Read), "groups are named with their prefix");
        assert!(!alice.grants("web", Permission::Read), "a person's credential grants nothing by itself");
    }

    #[test]
    fn grants_follow_scope() {
        let read = Principal::Token(claims(&["main"], &[Permission::Read], 1));
        assert!(read.grants("main", Permission::Read));
        assert!(!read.grants("main", Permission::Publish));
        assert!(!read.grants("other", Permission::Read));
        let publish = Principal::Token(claims(&["*"], &[Permission::Publish], 1));
        assert!(publish.grants("any", Permission::Read));
        assert!(publish.grants("any", Permission::Publish));
        assert!(!publish.grants("any", Permission::Admin));
        assert!(Principal::Admin.grants("x", Permission::Admin));
        assert!(!Principal::Anonymous.grants("x", Permission::Read));
        assert!(secrets_equal("abc", "abc") && !secrets_equal("abc", "abd") && !secrets_equal("ab", "abc"));
    }
}
