//! Errors as HTTP responses, in exactly one place: the status code, the
//! body each client understands, and the `WWW-Authenticate` challenge that
//! makes clients retry with credentials.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use wharf_core::CoreError;
use wharf_storage::StorageError;

/// The error body a client expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorStyle {
    /// `{"error": "…"}`: npm and the management API.
    Json,
    /// Plain text, with the message also as the reason phrase: what twine,
    /// pip and uv print.
    Text,
    /// `{"errors": [{"detail": "…"}]}`: what cargo prints.
    Cargo,
    /// RFC 7807 `application/problem+json` (`status`, `title`, `detail`):
    /// the Swift package registry's errors, `detail` being what SwiftPM shows.
    Problem,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub style: ErrorStyle,
    /// The realm of a `WWW-Authenticate: Basic` challenge (401 only).
    challenge: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>, style: ErrorStyle) -> Self {
        ApiError { status, message: message.into(), style, challenge: None }
    }

    pub fn bad_request(message: impl Into<String>, style: ErrorStyle) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message, style)
    }

    pub fn not_found(message: impl Into<String>, style: ErrorStyle) -> Self {
        Self::new(StatusCode::NOT_FOUND, message, style)
    }

    /// 401 with a Basic challenge. npm reads the challenge for the words
    /// `otp` and `ipaddress`; the realm never contains either.
    pub fn unauthorized(message: impl Into<String>, repo: &str, style: ErrorStyle) -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: message.into(),
            style,
            challenge: Some(format!("wharf/{repo}")),
        }
    }

    /// Maps a core error; server-side failures are logged here with their
    /// cause chain and answered generically.
    pub fn from_core(error: CoreError, style: ErrorStyle) -> Self {
        let status = match &error {
            CoreError::NotFound(_) => StatusCode::NOT_FOUND,
            CoreError::Conflict(_) | CoreError::StatusMismatch { .. } => StatusCode::CONFLICT,
            CoreError::Invalid(_) => StatusCode::BAD_REQUEST,
            CoreError::Forbidden(_) => StatusCode::FORBIDDEN,
            CoreError::Contention(_) => StatusCode::SERVICE_UNAVAILABLE,
            CoreError::Upstream { timed_out: true, .. } => StatusCode::GATEWAY_TIMEOUT,
            CoreError::Upstream { timed_out: false, .. } => StatusCode::BAD_GATEWAY,
            CoreError::Crashed(_) => return Self::internal(&error, style),
            CoreError::Storage(storage) => return Self::from_storage(storage, style),
        };
        Self::new(status, error.to_string(), style)
    }

    pub fn from_storage(error: &StorageError, style: ErrorStyle) -> Self {
        match error {
            StorageError::TooLarge { .. } => Self::new(StatusCode::PAYLOAD_TOO_LARGE, error.to_string(), style),
            StorageError::Body(_) => Self::bad_request(wharf_diagnostics::error_chain(error), style),
            StorageError::KeyTooLong { .. } => Self::bad_request(error.to_string(), style),
            _ => Self::internal(error, style),
        }
    }

    /// A failure on our side: 507 when storage is out of space (the client may retry
    /// once an operator has made room), else 500. Logged with its cause chain either way.
    pub fn internal(error: &(dyn std::error::Error + 'static), style: ErrorStyle) -> Self {
        if out_of_space(error) {
            tracing::error!(error = %wharf_diagnostics::error_chain(error), "storage is out of space");
            return Self::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "the registry's storage is full, so nothing was published; retry once an operator has freed \
                 space or enlarged the volume",
                style,
            );
        }
        tracing::error!(error = %wharf_diagnostics::error_chain(error), "request failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error; see the registry's log", style)
    }
}

/// Whether a cause of `error` is the file system saying it has no room (ENOSPC) or the
/// user's quota is spent (EDQUOT): the same answer for every format and every write, since
/// wherever in a publish it happens (staging, moving a blob, writing a record) nothing
/// half-done becomes visible and the client may retry later.
fn out_of_space(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(current) = cause {
        if let Some(io) = current.downcast_ref::<std::io::Error>()
            && matches!(io.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
        {
            return true;
        }
        cause = current.source();
    }
    false
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = match self.style {
            ErrorStyle::Json => (self.status, axum::Json(serde_json::json!({"error": self.message}))).into_response(),
            ErrorStyle::Cargo => {
                (self.status, axum::Json(serde_json::json!({"errors": [{"detail": self.message}]}))).into_response()
            }
            ErrorStyle::Problem => {
                let title = self.status.canonical_reason().unwrap_or("Error");
                let body = serde_json::json!({"status": self.status.as_u16(), "title": title, "detail": self.message});
                let mut response = (self.status, body.to_string()).into_response();
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
                response
            }
            ErrorStyle::Text => {
                let mut response = (self.status, format!("{}\n", self.message)).into_response();
                // twine shows the reason phrase; make it the message.
                let phrase: String =
                    self.message.chars().filter(|c| c.is_ascii() && !c.is_ascii_control()).take(200).collect();
                if let Ok(reason) = hyper::ext::ReasonPhrase::try_from(phrase.into_bytes()) {
                    response.extensions_mut().insert(reason);
                }
                response
            }
        };
        if let Some(realm) = self.challenge
            && let Ok(value) = HeaderValue::from_str(&format!("Basic realm=\"{realm}\""))
        {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}
