//! The Repository a request names and who is asking, authorised before a
//! handler runs: reading for GET and HEAD, publishing for every other
//! method unless the client says otherwise. A Repository the Domain does
//! not have is refused like one the caller may not use (see
//! [`AppState::repository`]).

use std::marker::PhantomData;

use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::Method;
use axum::http::request::Parts;

use super::connections::ClientAddress;
use super::{ApiError, AppState, ErrorStyle, SharedState};
use crate::auth::{Permission, Principal};

/// A kind of client, by the error bodies it understands.
pub trait Client: Send + Sync + 'static {
    const STYLE: ErrorStyle;

    /// What a request needs on its Repository.
    fn permission(method: &Method, _path: &str) -> Permission {
        by_method(method)
    }
}

/// Reading for GET and HEAD, publishing for every other method.
pub fn by_method(method: &Method) -> Permission {
    if matches!(*method, Method::GET | Method::HEAD) { Permission::Read } else { Permission::Publish }
}

/// What a handler takes to learn whether the request may go on; a refusal
/// is answered under the handler's own metrics label.
pub type Authorized<C> = Result<Access<C>, ApiError>;

/// An authorised request to the Repository named by the route's `{repo}`.
pub struct Access<C: Client> {
    /// The Repository's name.
    pub repo: String,
    pub principal: Principal,
    client: PhantomData<C>,
}

impl<C: Client> Access<C> {
    /// The Repository itself, as the configuration serving the request has it.
    pub fn repository<'a>(&self, state: &'a AppState) -> Result<&'a wharf_api::Repository, ApiError> {
        state
            .packages
            .config
            .repository(&self.repo)
            .ok_or_else(|| ApiError::not_found(format!("repository {} not found", self.repo), C::STYLE))
    }
}

impl<C: Client> FromRequestParts<SharedState> for Access<C> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &SharedState) -> Result<Self, ApiError> {
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(e.body_text(), C::STYLE))?;
        let repo = params
            .iter()
            .find(|(key, _)| *key == "repo")
            .map(|(_, value)| value.to_owned())
            .ok_or_else(|| ApiError::not_found("not found", C::STYLE))?;
        let permission = C::permission(&parts.method, parts.uri.path());
        let address = parts.extensions.get::<ClientAddress>().map(|client| client.0);
        let (_, principal) = state.authorize_named(&repo, &parts.headers, permission, address, C::STYLE).await?;
        Ok(Access { repo, principal, client: PhantomData })
    }
}
