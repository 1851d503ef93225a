//! The Domain's ledger of registry tokens, kept in its storage so every
//! replica shares it: a record of each token issued (listed, never with the
//! secret), each token revoked, and each subject whose tokens were revoked
//! up to a moment. Every replica reloads the revocations every
//! [`REFRESH_EVERY`], so a revocation holds everywhere within seconds.
//!
//! Names carry what the ledger needs to decide without reading records: an
//! issued or revoked token is `{expiry:012}-{id}`, a subject revocation
//! `{until:012}-{sha256(subject)}`. Records are dropped once no token they
//! concern can still be valid.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wharf_storage::{Storage, StorageError, keys};

use crate::auth::{Permission, TokenClaims};

/// How often a replica reloads the revocations: well within the 5 s in
/// which a revocation must hold on every replica.
pub const REFRESH_EVERY: Duration = Duration::from_secs(2);

/// What the ledger keeps of an issued token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IssuedToken {
    pub id: String,
    pub subject: String,
    pub repositories: Vec<String>,
    pub permissions: Vec<Permission>,
    pub issued_at: i64,
    pub expires_at: i64,
}

impl IssuedToken {
    /// What a revocation check needs of the token it describes.
    fn claims(&self) -> TokenClaims {
        TokenClaims {
            sub: self.subject.clone(),
            dom: String::new(),
            repos: self.repositories.clone(),
            perms: self.permissions.clone(),
            iat: self.issued_at,
            exp: self.expires_at,
            jti: self.id.clone(),
        }
    }

    fn of(claims: &TokenClaims) -> Self {
        IssuedToken {
            id: claims.jti.clone(),
            subject: claims.sub.clone(),
            repositories: claims.repos.clone(),
            permissions: claims.perms.clone(),
            issued_at: claims.iat,
            expires_at: claims.exp,
        }
    }
}

/// A subject whose tokens issued until `until` are revoked.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SubjectRevocation {
    subject: String,
    until: i64,
}

/// The revocations a replica enforces.
#[derive(Debug, Default)]
struct Revoked {
    ids: HashSet<String>,
    /// Subject digest → tokens issued at or before this time are revoked.
    subjects: HashMap<String, i64>,
}

/// Why a token is refused although its signature holds.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Revocation {
    #[error("the token {0} was revoked")]
    Token(String),
    #[error("the tokens of {0} issued before its revocation were revoked")]
    Subject(String),
}

pub struct TokenLedger {
    storage: Storage,
    revoked: RwLock<Revoked>,
}

fn subject_digest(subject: &str) -> String {
    hex::encode(Sha256::digest(subject.as_bytes()))
}

/// `{time:012}-{rest}`, the names the ledger keeps.
fn timed_name(time: i64, rest: &str) -> String {
    format!("{:012}-{rest}.json", time.max(0))
}

fn parse_timed_name(name: &str) -> Option<(i64, &str)> {
    let (time, rest) = name.strip_suffix(".json")?.split_once('-')?;
    Some((time.parse().ok()?, rest))
}

impl TokenLedger {
    pub fn new(storage: Storage) -> Arc<Self> {
        Arc::new(TokenLedger { storage, revoked: RwLock::default() })
    }

    /// Records a token about to be handed out.
    pub async fn record(&self, claims: &TokenClaims) -> Result<(), StorageError> {
        let key = keys::issued_token(&timed_name(claims.exp, &claims.jti));
        self.storage.put_json(&key, &IssuedToken::of(claims)).await
    }

    /// Whether a token whose signature holds was revoked (as of the last
    /// reload, or this replica's own revocations since).
    pub fn check(&self, claims: &TokenClaims) -> Result<(), Revocation> {
        let revoked = self.revoked.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        if revoked.ids.contains(&claims.jti) {
            return Err(Revocation::Token(claims.jti.clone()));
        }
        drop(revoked);
        if self.subject_revoked(&claims.sub, claims.iat) {
            return Err(Revocation::Subject(claims.sub.clone()));
        }
        Ok(())
    }

    /// Whether what `subject` was given at `issued_at` is revoked: every token (and web
    /// interface session) of a subject up to the moment it was revoked.
    pub fn subject_revoked(&self, subject: &str, issued_at: i64) -> bool {
        let revoked = self.revoked.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        revoked.subjects.get(&subject_digest(subject)).is_some_and(|until| issued_at <= *until)
    }

    /// The tokens still valid, oldest first; records of expired tokens are
    /// dropped on the way.
    pub async fn live(&self, now: i64) -> Result<Vec<IssuedToken>, StorageError> {
        let mut live = Vec::new();
        for name in self.storage.list_files(&keys::issued_tokens()).await? {
            let Some((expires, _)) = parse_timed_name(&name) else { continue };
            let key = keys::issued_token(&name);
            if expires <= now {
                let _ = self.storage.delete(&key).await;
                continue;
            }
            let Some(token) = self.storage.read_json::<IssuedToken>(&key).await? else { continue };
            if self.check(&token.claims()).is_ok() {
                live.push(token);
            }
        }
        live.sort_by_key(|t| (t.issued_at, t.id.clone()));
        Ok(live)
    }

    /// Revokes one token by its id; `None` when no live token has it. Its
    /// record is found by name, so only that one is read.
    pub async fn revoke(&self, id: &str, now: i64) -> Result<Option<IssuedToken>, StorageError> {
        let names = self.storage.list_files(&keys::issued_tokens()).await?;
        let name = names
            .iter()
            .find(|name| parse_timed_name(name).is_some_and(|(expires, named)| named == id && expires > now));
        let Some(name) = name else { return Ok(None) };
        let Some(token) = self.storage.read_json::<IssuedToken>(&keys::issued_token(name)).await? else {
            return Ok(None);
        };
        let probe = token.claims();
        if self.check(&probe).is_err() {
            return Ok(None);
        }
        let key = keys::revoked_token(&timed_name(token.expires_at, &token.id));
        self.storage.put_json(&key, &token).await?;
        self.write_revoked().ids.insert(token.id.clone());
        Ok(Some(token))
    }

    /// Revokes every token of `subject` issued until now; the live ones
    /// it revoked.
    pub async fn revoke_subject(&self, subject: &str, now: i64) -> Result<Vec<IssuedToken>, StorageError> {
        let live: Vec<IssuedToken> = self.live(now).await?.into_iter().filter(|t| t.subject == subject).collect();
        let digest = subject_digest(subject);
        let key = keys::revoked_subject(&timed_name(now, &digest));
        self.storage.put_json(&key, &SubjectRevocation { subject: subject.to_owned(), until: now }).await?;
        let mut revoked = self.write_revoked();
        let until = revoked.subjects.entry(digest).or_insert(now);
        *until = (*until).max(now);
        Ok(live)
    }

    fn write_revoked(&self) -> std::sync::RwLockWriteGuard<'_, Revoked> {
        self.revoked.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Reloads the revocations from storage, dropping those no valid token
    /// can concern any more (`max_ttl`: the longest a token lives).
    pub async fn reload(&self, now: i64, max_ttl: i64) -> Result<(), StorageError> {
        let mut fresh = Revoked::default();
        for name in self.storage.list_files(&keys::revoked_tokens()).await? {
            let Some((expires, id)) = parse_timed_name(&name) else { continue };
            if expires <= now {
                let _ = self.storage.delete(&keys::revoked_token(&name)).await;
            } else {
                fresh.ids.insert(id.to_owned());
            }
        }
        for name in self.storage.list_files(&keys::revoked_subjects()).await? {
            let Some((until, digest)) = parse_timed_name(&name) else { continue };
            if until + max_ttl < now {
                let _ = self.storage.delete(&keys::revoked_subject(&name)).await;
                continue;
            }
            let entry = fresh.subjects.entry(digest.to_owned()).or_insert(until);
            *entry = (*entry).max(until);
        }
        *self.write_revoked() = fresh;
        Ok(())
    }

    /// Reloads the revocations every [`REFRESH_EVERY`] for as long as the
    /// ledger is in use; a failed reload keeps the last ones known.
    pub fn keep_reloading(self: &Arc<Self>, max_ttl: i64) {
        let ledger = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(REFRESH_EVERY);
            loop {
                ticks.tick().await;
                let Some(ledger) = ledger.upgrade() else { return };
                if let Err(error) = ledger.reload(chrono::Utc::now().timestamp(), max_ttl).await {
                    tracing::warn!(error = %wharf_diagnostics::error_chain(&error), "could not reload token revocations");
                }
            }
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use object_store::memory::InMemory;

    use super::*;

    fn claims(sub: &str, jti: &str, iat: i64, exp: i64) -> TokenClaims {
        TokenClaims {
            sub: sub.into(),
            dom: "acme".into(),
            repos: vec!["main".into()],
            perms: vec![Permission::Read],
            iat,
            exp,
            jti: jti.into(),
        }
    }

    #[tokio::test]
    async fn revocations_reach_every_replica_of_the_ledger() {
        let storage = Storage::new(Arc::new(InMemory::new()));
        let (one, other) = (TokenLedger::new(storage.clone()), TokenLedger::new(storage.clone()));
        let (a, b, c) = (claims("ci", "a", 100, 1000), claims("ci", "b", 100, 1000), claims("bot", "c", 100, 1000));
        for token in [&a, &b, &c] {
            one.record(token).await.unwrap();
        }
        assert_eq!(one.live(200).await.unwrap().len(), 3);
        assert_eq!(one.revoke("a", 200).await.unwrap().unwrap().subject, "ci");
        assert!(one.revoke("nope", 200).await.unwrap().is_none());
        assert_eq!(one.check(&a), Err(Revocation::Token("a".into())));
        // The other replica learns it on its next reload.
        assert!(other.check(&a).is_ok());
        other.reload(200, 43_200).await.unwrap();
        assert!(other.check(&a).is_err() && other.check(&b).is_ok());

        // A subject: its tokens issued until then, not later ones.
        let revoked = other.revoke_subject("ci", 300).await.unwrap();
        assert_eq!(revoked.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), ["b"]);
        one.reload(300, 43_200).await.unwrap();
        assert_eq!(one.check(&b), Err(Revocation::Subject("ci".into())));
        assert!(one.check(&claims("ci", "d", 301, 1000)).is_ok());
        assert!(one.check(&c).is_ok());
        assert_eq!(one.live(300).await.unwrap().iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), ["c"]);

        // Once nothing they concern can be valid, records go (an expired
        // token is refused as expired).
        one.reload(1000, 43_200).await.unwrap();
        assert!(storage.list_files(&keys::revoked_tokens()).await.unwrap().is_empty());
        assert!(one.live(1000).await.unwrap().is_empty());
        assert!(storage.list_files(&keys::issued_tokens()).await.unwrap().is_empty());
        assert_eq!(storage.list_files(&keys::revoked_subjects()).await.unwrap().len(), 1);
        one.reload(300 + 43_201, 43_200).await.unwrap();
        assert!(storage.list_files(&keys::revoked_subjects()).await.unwrap().is_empty());
        assert!(one.check(&b).is_ok());
    }
}
