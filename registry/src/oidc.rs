//! Verifying ID tokens of the OpenID Connect issuers a Domain trusts
//! (`spec.tokens.trustedIssuers`): CI systems exchange them for registry
//! tokens. Signatures and claims are checked by the `jsonwebtoken` crate;
//! this module finds the key: the issuer's discovery document names its key
//! set, which is fetched and kept, and fetched again (at most every
//! [`REFETCH_AFTER`]) when a token names a key it does not hold, so the
//! issuer's key rotation is followed without letting tokens force a fetch
//! per request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use wharf_api::{DomainSpec, TrustedIssuer};

/// The signature algorithms accepted: asymmetric ones only, so a public key
/// can never be used as an HMAC secret, and never `none`.
const ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// The soonest an issuer's keys are fetched again for another unknown key id.
pub const REFETCH_AFTER: Duration = Duration::from_secs(10);
/// How long fetched keys are used before they are fetched again.
const KEYS_LIFETIME: Duration = Duration::from_secs(3600);
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an ID token is refused.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("the ID token is malformed: {0}")]
    Malformed(String),
    #[error("the ID token is signed with {0}; the registry accepts RS, PS, ES and EdDSA signatures")]
    Algorithm(String),
    #[error("the ID token's issuer {0} is not trusted by this Domain (spec.tokens.trustedIssuers)")]
    Untrusted(String),
    #[error("the ID token names signing key {0}, which its issuer does not publish")]
    UnknownKey(String),
    #[error("the ID token is invalid: {0}")]
    Invalid(String),
    /// The issuer's keys could not be fetched: not the token's fault.
    #[error("the keys of issuer {issuer} could not be fetched: {reason}")]
    Unavailable { issuer: String, reason: String },
}

/// A verified ID token: its issuer and every claim it carries.
#[derive(Clone, Debug)]
pub struct VerifiedIdToken {
    pub issuer: String,
    pub subject: String,
    pub claims: Map<String, Value>,
}

struct FetchedKeys {
    keys: JwkSet,
    fetched: Instant,
}

/// The key sets of the issuers in use, shared by every configuration
/// revision.
pub struct OidcVerifier {
    http: reqwest::Client,
    keys: tokio::sync::Mutex<HashMap<String, FetchedKeys>>,
    /// When an issuer's keys were last fetched again for a key they lacked.
    attempts: Mutex<HashMap<String, Instant>>,
}

impl Default for OidcVerifier {
    fn default() -> Self {
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        OidcVerifier { http, keys: tokio::sync::Mutex::default(), attempts: Mutex::default() }
    }
}

impl OidcVerifier {
    /// Verifies `token` against the Domain's trusted issuers: the issuer is
    /// trusted, the signature holds with a key the issuer publishes, the
    /// audience is one the Domain accepts, and it is within its validity
    /// (give or take the issuer's clock skew).
    pub async fn verify(&self, spec: &DomainSpec, token: &str) -> Result<VerifiedIdToken, OidcError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| OidcError::Malformed(e.to_string()))?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(OidcError::Algorithm(format!("{:?}", header.alg)));
        }
        let unverified: Map<String, Value> =
            jsonwebtoken::dangerous::insecure_decode_claims(token).map_err(|e| OidcError::Malformed(e.to_string()))?;
        let iss = unverified.get("iss").and_then(Value::as_str).ok_or_else(|| OidcError::Malformed("no iss".into()))?;
        let trusted = spec.trusted_issuer(iss).ok_or_else(|| OidcError::Untrusted(iss.to_owned()))?;
        let key = self.key(trusted, header.kid.as_deref()).await?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&trusted.issuer]);
        validation.set_audience(&trusted.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = trusted.clock_skew().as_secs();
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
            .map_err(|e| OidcError::Invalid(describe(&e)))?;
        let subject = data.claims.get("sub").and_then(Value::as_str).unwrap_or_default().to_owned();
        Ok(VerifiedIdToken { issuer: trusted.issuer.clone(), subject, claims: data.claims })
    }

    /// The issuer's key `kid` names (its only key when the token names none).
    async fn key(&self, issuer: &TrustedIssuer, kid: Option<&str>) -> Result<DecodingKey, OidcError> {
        let cache_key = format!("{} {}", issuer.issuer, issuer.jwks_url.as_deref().unwrap_or_default());
        let mut keys = self.keys.lock().await;
        let fresh = keys.get(&cache_key).is_some_and(|k| k.fetched.elapsed() < KEYS_LIFETIME);
        let holds = keys.get(&cache_key).is_some_and(|k| find(&k.keys, kid).is_some());
        // A key the set lacks (the issuer rotated) fetches the set again, at most
        // once per REFETCH_AFTER, so tokens naming made-up keys cannot make the
        // registry fetch on every request.
        let unknown_key = fresh && !holds;
        if !fresh || (unknown_key && self.may_refetch(&cache_key)) {
            if unknown_key {
                self.note_refetch(&cache_key);
            }
            match self.fetch(issuer).await {
                Ok(fetched) => {
                    keys.insert(cache_key.clone(), FetchedKeys { keys: fetched, fetched: Instant::now() });
                }
                // Keys fetched before still verify while the issuer is away.
                Err(error) if keys.contains_key(&cache_key) => {
                    tracing::warn!(%error, "keeping the last keys fetched");
                }
                Err(error) => return Err(error),
            }
        }
        let unknown =
            || OidcError::UnknownKey(kid.map_or_else(|| "(none; the issuer has several)".to_owned(), str::to_owned));
        let set = &keys.get(&cache_key).ok_or_else(unknown)?.keys;
        let jwk = find(set, kid).ok_or_else(unknown)?;
        DecodingKey::from_jwk(jwk).map_err(|e| OidcError::Invalid(format!("the issuer's key is unusable: {e}")))
    }

    fn may_refetch(&self, cache_key: &str) -> bool {
        let attempts = self.attempts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        attempts.get(cache_key).is_none_or(|at| at.elapsed() >= REFETCH_AFTER)
    }

    fn note_refetch(&self, cache_key: &str) {
        let mut attempts = self.attempts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        attempts.insert(cache_key.to_owned(), Instant::now());
    }

    /// The issuer's key set: from `jwksURL` when the Domain gives one, else
    /// where its discovery document says.
    async fn fetch(&self, issuer: &TrustedIssuer) -> Result<JwkSet, OidcError> {
        let unavailable = |reason: String| OidcError::Unavailable { issuer: issuer.issuer.clone(), reason };
        let jwks_url = match &issuer.jwks_url {
            Some(url) => url.clone(),
            None => {
                let url = format!("{}/.well-known/openid-configuration", issuer.issuer.trim_end_matches('/'));
                let discovery: Value = self.get_json(&url).await.map_err(unavailable)?;
                if discovery.get("issuer").and_then(Value::as_str) != Some(issuer.issuer.as_str()) {
                    return Err(unavailable(format!("its discovery document at {url} names another issuer")));
                }
                let jwks = discovery.get("jwks_uri").and_then(Value::as_str).unwrap_or_default().to_owned();
                if !wharf_api::common::is_https_or_loopback(&jwks) {
                    return Err(unavailable(format!("its discovery document names jwks_uri {jwks:?}, not https")));
                }
                jwks
            }
        };
        let set: Value = self.get_json(&jwks_url).await.map_err(unavailable)?;
        serde_json::from_value(set).map_err(|e| unavailable(format!("{jwks_url} is not a JSON Web Key Set: {e}")))
    }

    /// Where people sign in with `issuer` and where the code is redeemed: its discovery
    /// document's `authorization_endpoint` and `token_endpoint` (each https, or loopback).
    pub async fn sign_in_endpoints(&self, issuer: &TrustedIssuer) -> Result<(String, String), OidcError> {
        let unavailable = |reason: String| OidcError::Unavailable { issuer: issuer.issuer.clone(), reason };
        let url = format!("{}/.well-known/openid-configuration", issuer.issuer.trim_end_matches('/'));
        let discovery: Value = self.get_json(&url).await.map_err(unavailable)?;
        if discovery.get("issuer").and_then(Value::as_str) != Some(issuer.issuer.as_str()) {
            return Err(unavailable(format!("its discovery document at {url} names another issuer")));
        }
        let endpoint = |name: &str| {
            let value = discovery.get(name).and_then(Value::as_str).unwrap_or_default();
            if wharf_api::common::is_https_or_loopback(value) {
                Ok(value.to_owned())
            } else {
                Err(unavailable(format!("its discovery document names {name} {value:?}, not https")))
            }
        };
        Ok((endpoint("authorization_endpoint")?, endpoint("token_endpoint")?))
    }

    /// Redeems an authorization code (with its PKCE verifier, as the public client
    /// `client_id`) at `token_endpoint` for the ID token it stands for (not yet verified).
    pub async fn redeem(&self, issuer: &str, token_endpoint: &str, form: &[(&str, &str)]) -> Result<String, OidcError> {
        let unavailable = |reason: String| OidcError::Unavailable { issuer: issuer.to_owned(), reason };
        let body = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
        let request = self.http.post(token_endpoint).header("content-type", "application/x-www-form-urlencoded");
        let response = request.body(body).send().await;
        let response = response.map_err(|e| unavailable(format!("{token_endpoint}: {e}")))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or_default();
        if !status.is_success() {
            let reason = body.get("error_description").or_else(|| body.get("error")).and_then(Value::as_str);
            return Err(OidcError::Invalid(format!(
                "the identity provider refused the sign-in ({status}): {}",
                reason.unwrap_or("no reason given")
            )));
        }
        body.get("id_token")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| unavailable(format!("{token_endpoint} sent no ID token")))
    }

    async fn get_json(&self, url: &str) -> Result<Value, String> {
        let response = self.http.get(url).send().await.map_err(|e| format!("{url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("{url} answered {}", response.status()));
        }
        response.json().await.map_err(|e| format!("{url}: {e}"))
    }
}

fn find<'a>(set: &'a JwkSet, kid: Option<&str>) -> Option<&'a jsonwebtoken::jwk::Jwk> {
    match kid {
        Some(kid) => set.find(kid),
        None => match set.keys.as_slice() {
            [only] => Some(only),
            _ => None,
        },
    }
}

/// A refusal in words a CI log reader can act on.
fn describe(error: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::ExpiredSignature => "it expired".into(),
        ErrorKind::ImmatureSignature => "it is not valid yet (nbf)".into(),
        ErrorKind::InvalidAudience => "its audience (aud) is not one this Domain accepts for the issuer".into(),
        ErrorKind::InvalidIssuer => "its issuer (iss) is not the trusted one".into(),
        ErrorKind::InvalidSignature => "its signature does not verify".into(),
        ErrorKind::InvalidAlgorithm => "its algorithm does not match the issuer's key".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("it has no {claim} claim"),
        _ => error.to_string(),
    }
}
