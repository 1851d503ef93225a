//! Reads the credential a client sent, in whichever form its protocol
//! uses: `Bearer`, `Basic` (any user, the token as password), a raw token
//! (cargo), or `X-NuGet-ApiKey`.

use axum::http::{HeaderMap, StatusCode, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::{ApiError, AppState, ErrorStyle};
use crate::auth::{Principal, secrets_equal};
use crate::token_review::{ReviewError, is_foreign_jwt};

pub fn credential(headers: &HeaderMap) -> Option<String> {
    if let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let value = value.trim();
        let (scheme, rest) = value.split_once(' ').unwrap_or(("", value));
        return match scheme.to_ascii_lowercase().as_str() {
            "bearer" | "token" => Some(rest.trim().to_owned()),
            "basic" => {
                let decoded = STANDARD.decode(rest.trim()).ok()?;
                let decoded = String::from_utf8(decoded).ok()?;
                let (user, password) = decoded.split_once(':').unwrap_or((&decoded, ""));
                let token = if password.is_empty() { user } else { password };
                (!token.is_empty()).then(|| token.to_owned())
            }
            _ => (!value.is_empty()).then(|| value.to_owned()),
        };
    }
    headers.get("x-nuget-apikey").and_then(|v| v.to_str().ok()).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

/// Who is calling: anonymous without a credential; a 401 for a credential that is not valid
/// (expired, forged, another Domain's, a Kubernetes token the apiserver does not vouch for);
/// a 503 when a Kubernetes token cannot be checked because the apiserver does not answer.
pub async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    repo: &str,
    style: ErrorStyle,
) -> Result<Principal, ApiError> {
    let principal = identify(state, headers, repo, style).await?;
    crate::audit::attribute(&principal);
    Ok(principal)
}

async fn identify(state: &AppState, headers: &HeaderMap, repo: &str, style: ErrorStyle) -> Result<Principal, ApiError> {
    let Some(token) = credential(headers) else { return Ok(Principal::Anonymous) };
    if secrets_equal(&token, &state.admin_token) {
        return Ok(Principal::Admin);
    }
    if is_foreign_jwt(&token) {
        let Some(reviewer) = &state.token_review else {
            return Err(ApiError::unauthorized(
                "invalid credential: this looks like a Kubernetes token, which a registry accepts only in \
                 cluster mode; use a registry token",
                repo,
                style,
            ));
        };
        let reviewed = reviewer.review(&token).await;
        if reviewed.asked_apiserver {
            state.metrics.record_token_review(&reviewed.outcome);
        }
        return match reviewed.outcome {
            Ok(account) => Ok(Principal::ServiceAccount(account)),
            Err(error @ ReviewError::Rejected(_)) => Err(ApiError::unauthorized(error.to_string(), repo, style)),
            Err(error @ ReviewError::Unavailable(_)) => {
                tracing::warn!(%error, "a ServiceAccount token could not be reviewed");
                Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, error.to_string(), style))
            }
        };
    }
    let now = chrono::Utc::now().timestamp();
    let claims = state
        .signer
        .verify(&token, now)
        .map_err(|error| ApiError::unauthorized(format!("invalid credential: {error}"), repo, style))?;
    state
        .tokens
        .check(&claims)
        .map_err(|revoked| ApiError::unauthorized(format!("invalid credential: {revoked}"), repo, style))?;
    Ok(Principal::Token(claims))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_str(value).unwrap_or_else(|_| HeaderValue::from_static("x")));
        headers
    }

    #[test]
    fn every_client_form() {
        assert_eq!(credential(&headers("authorization", "Bearer abc")).as_deref(), Some("abc"));
        let basic = STANDARD.encode("__token__:abc");
        assert_eq!(credential(&headers("authorization", &format!("Basic {basic}"))).as_deref(), Some("abc"));
        let user_only = STANDARD.encode("abc:");
        assert_eq!(credential(&headers("authorization", &format!("Basic {user_only}"))).as_deref(), Some("abc"));
        assert_eq!(credential(&headers("authorization", "abc")).as_deref(), Some("abc"));
        assert_eq!(credential(&headers("x-nuget-apikey", "abc")).as_deref(), Some("abc"));
        assert_eq!(credential(&HeaderMap::new()), None);
    }
}
