//! Bearer-token check for the `/v1` API (not for /metrics, /healthz, /readyz, nor the
//! OpenAPI document): the token names the [`Caller`], whose role must allow the route's
//! [`Action`] (403 naming the role needed). The caller travels with the request for the
//! handlers' owner checks.

use axum::extract::Request;
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;
use super::roles::{Action, Caller};

/// The token of an `Authorization: Bearer <token>` value; the scheme name is
/// case-insensitive (RFC 9110 11.1).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The caller of a request's bearer token, if it is one of ours.
pub fn caller_of(state: &AppState, request: &Request) -> Option<Caller> {
    request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .and_then(|token| state.tokens.identify(token))
}

/// 401 without a known token, 403 when its role does not allow `action`; otherwise the
/// request goes on with its [`Caller`].
pub async fn authorize(
    state: AppState,
    action: Action,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(caller) = caller_of(&state, &request) else {
        return ApiError::unauthorized().into_response();
    };
    if let Err(refused) = caller.require(action) {
        return refused.into_response();
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_scheme_is_case_insensitive() {
        for v in ["Bearer t0k", "bearer t0k", "BEARER t0k", "bEaReR   t0k "] {
            assert_eq!(bearer_token(v), Some("t0k"), "{v}");
        }
        for v in ["Basic t0k", "Bearer", "Bearer ", "t0k", "Bearert0k"] {
            assert_eq!(bearer_token(v), None, "{v}");
        }
    }
}
