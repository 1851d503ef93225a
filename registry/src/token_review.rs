//! Kubernetes ServiceAccount tokens as registry credentials, in cluster mode: a pod presents
//! a projected token (audience [`DEFAULT_AUDIENCE`] unless configured otherwise) and the
//! registry asks the apiserver who it is with a TokenReview, the way the kubelet and
//! aggregated apiservers do. Answers are cached briefly, one review per token at a time, so
//! an install that makes hundreds of requests costs one review. Does I/O.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use kube::api::{Api, PostParams};
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;

use crate::auth::ServiceAccount;
use wharf_api::Person;

/// The audience a pod's projected token must be issued for, so that a token meant for the
/// apiserver (or another service) is not accepted here, and one meant for Wharf is no use
/// elsewhere.
pub const DEFAULT_AUDIENCE: &str = "wharf.dev";

/// How long an accepted token is trusted without asking again; the apiserver's own webhook
/// authenticator caches for two minutes. A deleted pod's bound token stops working within it.
const ACCEPTED_TTL: Duration = Duration::from_secs(60);
/// How long a refused token is refused without asking again, so a client retrying a bad
/// token does not become a stream of reviews.
const REJECTED_TTL: Duration = Duration::from_secs(10);
/// Tokens remembered at most; past it, expired answers go, then everything.
const MAX_ENTRIES: usize = 4096;
/// Reviews asked of the apiserver per second by default, and twice that in a burst. Every
/// new token is a review (anyone can send a made-up one), so without a bound a client could
/// turn the registry into a stream of reviews against the apiserver; past it, a review is
/// answered "cannot be checked now" (503) until the bucket refills.
pub const DEFAULT_REVIEWS_PER_SECOND: u32 = 50;

/// Why a ServiceAccount token was not taken.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReviewError {
    /// The apiserver does not vouch for it, or it is not a ServiceAccount's.
    #[error("the Kubernetes token was not accepted: {0}")]
    Rejected(String),
    /// The apiserver could not be asked; the caller may retry.
    #[error("the Kubernetes token cannot be checked now: {0}")]
    Unavailable(String),
}

/// A review's answer, and whether the apiserver was asked for it (rather than the cache).
#[derive(Debug)]
pub struct Reviewed {
    pub outcome: Result<ServiceAccount, ReviewError>,
    pub asked_apiserver: bool,
}

type Answer = (Result<ServiceAccount, ReviewError>, Instant);

/// Checks ServiceAccount tokens with the apiserver's TokenReview API.
pub struct TokenReviewer {
    api: Api<TokenReview>,
    audience: String,
    answers: Mutex<HashMap<[u8; 32], Arc<OnceCell<Answer>>>>,
    reviews: Mutex<Bucket>,
}

/// A token bucket: `rate` a second, up to `burst` at once.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    burst: f64,
    left: f64,
    refilled: Instant,
}

impl Bucket {
    fn new(per_second: u32, now: Instant) -> Bucket {
        let rate = f64::from(per_second.max(1));
        Bucket { rate, burst: 2.0 * rate, left: 2.0 * rate, refilled: now }
    }

    /// Takes one, if there is one at `now`.
    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.left = (self.left + elapsed * self.rate).min(self.burst);
        self.refilled = now;
        if self.left >= 1.0 {
            self.left -= 1.0;
            true
        } else {
            false
        }
    }
}

impl TokenReviewer {
    /// A reviewer asking through `client` (which needs `create` on `tokenreviews`, as the
    /// `system:auth-delegator` ClusterRole grants) for tokens of `audience`.
    pub fn new(client: kube::Client, audience: impl Into<String>, reviews_per_second: u32) -> TokenReviewer {
        TokenReviewer {
            api: Api::all(client),
            audience: audience.into(),
            answers: Mutex::new(HashMap::new()),
            reviews: Mutex::new(Bucket::new(reviews_per_second, Instant::now())),
        }
    }

    /// Who `token` belongs to. Concurrent calls with one token share one review.
    pub async fn review(&self, token: &str) -> Reviewed {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = Instant::now();
        let cell = {
            let mut answers = self.answers.lock().unwrap_or_else(PoisonError::into_inner);
            let fresh = answers.get(&key).filter(|cell| cell.get().is_none_or(|(_, until)| *until > now)).cloned();
            match fresh {
                Some(cell) => cell,
                None => {
                    if answers.len() >= MAX_ENTRIES {
                        answers.retain(|_, cell| cell.get().is_none_or(|(_, until)| *until > now));
                        if answers.len() >= MAX_ENTRIES {
                            answers.clear();
                        }
                    }
                    let cell = Arc::new(OnceCell::new());
                    answers.insert(key, cell.clone());
                    cell
                }
            }
        };
        let asked_apiserver = AtomicBool::new(false);
        let answer = cell
            .get_or_try_init(|| async {
                asked_apiserver.store(true, Ordering::Relaxed);
                let outcome = self.ask(token).await;
                if let Err(ReviewError::Unavailable(_)) = outcome {
                    // Not remembered: the next request asks again.
                    return Err(outcome);
                }
                let ttl = if outcome.is_ok() { ACCEPTED_TTL.min(lifetime_left(token)) } else { REJECTED_TTL };
                Ok((outcome, Instant::now() + ttl))
            })
            .await;
        let outcome = match answer {
            Ok((outcome, _)) => outcome.clone(),
            Err(outcome) => outcome,
        };
        Reviewed { outcome, asked_apiserver: asked_apiserver.into_inner() }
    }

    async fn ask(&self, token: &str) -> Result<ServiceAccount, ReviewError> {
        let (user, audiences) = self.authenticated(token, Some(&self.audience)).await.map_err(|error| match error {
            ReviewError::Rejected(reason) => ReviewError::Rejected(format!(
                "{reason} (a pod's token must be projected with audience {})",
                self.audience
            )),
            unavailable => unavailable,
        })?;
        // An apiserver that ignores audiences answers with none: refuse rather than accept
        // a token that may have been meant for someone else.
        if !audiences.contains(&self.audience) {
            return Err(ReviewError::Rejected(format!("the token is not issued for audience {}", self.audience)));
        }
        let username = user.username.unwrap_or_default();
        ServiceAccount::from_username(&username).ok_or_else(|| {
            ReviewError::Rejected(format!(
                "{username} is not a ServiceAccount; only ServiceAccount tokens are accepted"
            ))
        })
    }

    /// The person a user's own Kubernetes token (from their kubeconfig) belongs to, with
    /// their groups, as the apiserver says: reviewed for the apiserver's own audiences, since
    /// that is whom the token was issued for. Asked every time (people exchange rarely);
    /// ServiceAccounts and other `system:` identities are refused, as they are not people.
    pub async fn review_person(&self, token: &str) -> Result<Person, ReviewError> {
        let (user, _) = self.authenticated(token, None).await?;
        person(user.username.unwrap_or_default(), user.groups.unwrap_or_default())
    }

    /// Who the apiserver says `token` is, and the audiences it was accepted for; asked for
    /// `audience`, or the apiserver's own when `None`.
    async fn authenticated(&self, token: &str, audience: Option<&str>) -> Result<(UserInfo, Vec<String>), ReviewError> {
        if !self.reviews.lock().unwrap_or_else(PoisonError::into_inner).take(Instant::now()) {
            return Err(ReviewError::Unavailable("too many token reviews at once; retry in a moment".to_owned()));
        }
        let review = TokenReview {
            spec: TokenReviewSpec { token: token.to_owned(), audiences: audience.map(|a| vec![a.to_owned()]) },
            ..Default::default()
        };
        let answered = self
            .api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|error| ReviewError::Unavailable(wharf_diagnostics::error_chain(&error)))?;
        let status = answered.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let reason = status.error.filter(|error| !error.is_empty()).unwrap_or_else(|| "not authenticated".into());
            return Err(ReviewError::Rejected(reason));
        }
        Ok((status.user.unwrap_or_default(), status.audiences.unwrap_or_default()))
    }
}

/// A reviewed Kubernetes user as a person, unless it is a ServiceAccount or another
/// `system:` identity (nodes, controllers, anonymous).
fn person(username: String, groups: Vec<String>) -> Result<Person, ReviewError> {
    if ServiceAccount::from_username(&username).is_some() {
        return Err(ReviewError::Rejected(format!(
            "{username} is a ServiceAccount: a pod presents its projected token (audience {DEFAULT_AUDIENCE}) instead"
        )));
    }
    if username.is_empty() || username.starts_with("system:") {
        return Err(ReviewError::Rejected(format!("{username:?} is a Kubernetes system identity, not a person")));
    }
    Ok(Person { username, groups })
}

/// Whether `token` looks like a JWT signed by someone other than a Wharf Domain (whose
/// tokens are HS256): a Kubernetes ServiceAccount token is RS256 or ES256.
pub fn is_foreign_jwt(token: &str) -> bool {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let Ok(header) = URL_SAFE_NO_PAD.decode(header) else { return false };
    let Ok(header) = serde_json::from_slice::<serde_json::Value>(&header) else { return false };
    header.get("alg").and_then(|alg| alg.as_str()).is_some_and(|alg| alg != "HS256" && alg != "none")
}

/// How long until the token's own (unverified) `exp`, so a cached answer never outlives the
/// token; [`ACCEPTED_TTL`] when it names none.
fn lifetime_left(token: &str) -> Duration {
    let exp = token
        .split('.')
        .nth(1)
        .and_then(|payload| URL_SAFE_NO_PAD.decode(payload).ok())
        .and_then(|payload| serde_json::from_slice::<serde_json::Value>(&payload).ok())
        .and_then(|claims| claims.get("exp").and_then(|exp| exp.as_i64()));
    match exp {
        Some(exp) => Duration::from_secs(u64::try_from(exp - chrono::Utc::now().timestamp()).unwrap_or(0)),
        None => ACCEPTED_TTL,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn jwt(header: &str, payload: &str) -> String {
        format!("{}.{}.c2ln", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(payload))
    }

    #[test]
    fn tells_kubernetes_tokens_from_wharf_tokens() {
        assert!(is_foreign_jwt(&jwt(r#"{"alg":"RS256","kid":"k"}"#, "{}")));
        assert!(is_foreign_jwt(&jwt(r#"{"alg":"ES256"}"#, "{}")));
        assert!(!is_foreign_jwt(&jwt(r#"{"alg":"HS256","typ":"JWT"}"#, "{}")));
        assert!(!is_foreign_jwt(&jwt(r#"{"alg":"none"}"#, "{}")));
        assert!(!is_foreign_jwt(&jwt(r#"{"typ":"JWT"}"#, "{}")));
        assert!(!is_foreign_jwt("abc.def"));
        assert!(!is_foreign_jwt("a.b.c.d"));
        assert!(!is_foreign_jwt("!!!.e30.c2ln"));
    }

    #[test]
    fn people_are_users_that_are_not_system_identities() {
        let alice = person("alice".into(), vec!["platform".into(), "system:authenticated".into()]).unwrap();
        assert_eq!(alice.username, "alice");
        assert_eq!(alice.groups, ["platform", "system:authenticated"]);
        for not_a_person in ["system:serviceaccount:ci:bot", "system:node:n1", "system:anonymous", ""] {
            assert!(person(not_a_person.into(), Vec::new()).is_err(), "{not_a_person}");
        }
    }

    #[test]
    fn reviews_are_bounded_by_a_bucket_that_refills() {
        let start = Instant::now();
        let mut bucket = Bucket::new(2, start);
        assert_eq!((0..10).filter(|_| bucket.take(start)).count(), 4, "a burst of twice the rate");
        assert!(!bucket.take(start + Duration::from_millis(100)));
        assert!(bucket.take(start + Duration::from_millis(600)), "half a second refills one");
        assert_eq!(
            (0..10).filter(|_| bucket.take(start + Duration::from_secs(60))).count(),
            4,
            "never above the burst"
        );
    }

    #[test]
    fn cached_answers_never_outlive_the_token() {
        let soon = chrono::Utc::now().timestamp() + 20;
        let left = lifetime_left(&jwt(r#"{"alg":"RS256"}"#, &format!(r#"{{"exp":{soon}}}"#)));
        assert!(left <= Duration::from_secs(20) && left >= Duration::from_secs(18), "{left:?}");
        assert_eq!(lifetime_left(&jwt(r#"{"alg":"RS256"}"#, r#"{"exp":1}"#)), Duration::ZERO);
        assert_eq!(lifetime_left(&jwt(r#"{"alg":"RS256"}"#, "{}")), ACCEPTED_TTL);
    }
}
