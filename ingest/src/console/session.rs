//! Who may use the console, in one place: the login form takes an API token, identified
//! the way the API identifies a bearer token ([`crate::tokens::ApiTokens::identify`]); a
//! session is a random id in an HttpOnly, SameSite=Strict cookie that maps, in this
//! process, to the token's role and owner (the token itself is not kept) and to the
//! session's CSRF token, which every form carries and every POST must return. Roles: a
//! `read` token sees every page, an `operate` token may also act; a `submit` token (which
//! sees only its own batches) cannot log in.
//!
//! Sessions live in the ingest process that created them (a restart logs everyone out;
//! behind a load balancer use sticky sessions), for at most [`SESSION_TTL`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use base64::Engine;
use rand::RngCore;
use subtle::ConstantTimeEq;

use super::ConsoleState;
use super::page::{self, Page};
use crate::api::roles::{Action, Caller};

/// The session cookie's name.
pub const COOKIE: &str = "mailpipe_console";
/// The login form's own CSRF cookie (double submit: the form field must equal it).
const LOGIN_COOKIE: &str = "mailpipe_console_login";
/// How long a session lasts after login.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// Sessions one process holds at most (the oldest expired ones go first).
const MAX_SESSIONS: usize = 10_000;

/// A logged-in session, as handlers see it.
#[derive(Clone)]
pub struct Session {
    /// Who logged in: the role (and owner label) of the token the session was opened
    /// with. The token itself is not kept.
    pub caller: Caller,
    /// Goes into every form; a POST without it is refused.
    pub csrf: String,
    expires_at: Instant,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Session(..)")
    }
}

/// The sessions of this process.
#[derive(Clone, Default)]
pub struct Sessions(Arc<Mutex<HashMap<String, Session>>>);

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sessions(..)")
    }
}

fn random_id() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

impl Sessions {
    fn open(&self, caller: Caller) -> Option<String> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        map.retain(|_, s| s.expires_at > now);
        if map.len() >= MAX_SESSIONS {
            return None;
        }
        let id = random_id();
        map.insert(
            id.clone(),
            Session {
                caller,
                csrf: random_id(),
                expires_at: now + SESSION_TTL,
            },
        );
        Some(id)
    }

    fn get(&self, id: &str) -> Option<Session> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(id)
            .filter(|s| s.expires_at > Instant::now())
            .cloned()
    }

    fn close(&self, id: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn set_cookie(name: &str, value: &str, max_age: u64) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={max_age}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// In front of every page but the login form and the assets: the request's session, or
/// a redirect to the login form.
pub async fn require(
    State(state): State<ConsoleState>,
    mut request: Request,
    next: Next,
) -> Response {
    let session = cookie(request.headers(), COOKIE).and_then(|id| state.sessions.get(id));
    match session {
        Some(s) => {
            request.extensions_mut().insert(s);
            next.run(request).await
        }
        None => Redirect::to("/console/login").into_response(),
    }
}

/// A form posted by a logged-in session, its CSRF field checked against the session's.
/// Every console POST takes its fields through this, so none can forget the check.
pub struct CheckedForm(pub HashMap<String, String>);

impl std::fmt::Debug for CheckedForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CheckedForm(..)")
    }
}

impl<S: Send + Sync> FromRequest<S> for CheckedForm {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let session = request.extensions().get::<Session>().cloned();
        let Form(fields) = Form::<HashMap<String, String>>::from_request(request, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let given = fields.get("csrf").map(String::as_str).unwrap_or_default();
        match session {
            // Every console action is an operator's: pause/resume/cancel, replay, settle,
            // suppressions. A `read` session sees the pages and changes nothing.
            Some(s) if same(given, &s.csrf) => match s.caller.require(Action::ManageSuppressions) {
                Ok(()) => Ok(Self(fields)),
                Err(_) => Err((
                    StatusCode::FORBIDDEN,
                    format!(
                        "refused: this session's token has the role `{}`; console actions need `operate` (ingest.api_tokens[].role)",
                        s.caller.role
                    ),
                )
                    .into_response()),
            },
            _ => Err(refused()),
        }
    }
}

fn refused() -> Response {
    (
        StatusCode::FORBIDDEN,
        "refused: the form's CSRF token is missing or wrong (reload the page and try again)",
    )
        .into_response()
}

/// `GET /console/login`: the form, with a fresh login CSRF cookie.
pub async fn login_form() -> Response {
    login_page(None, StatusCode::OK)
}

fn login_page(error: Option<&str>, status: StatusCode) -> Response {
    let csrf = random_id();
    let mut response = Page::new("login", "Log in")
        .with("error", error)
        .render_with_csrf(&csrf)
        .into_response();
    *response.status_mut() = status;
    response
        .headers_mut()
        .append(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, &csrf, 600));
    response
}

/// `POST /console/login`: a token the API accepts opens a session.
pub async fn login(
    State(state): State<ConsoleState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    Form(fields): Form<HashMap<String, String>>,
) -> Response {
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    let given = fields.get("csrf").map(String::as_str).unwrap_or_default();
    if expected.is_empty() || !same(given, expected) {
        return refused();
    }
    // Without the peer (a router served outside `serve_bounded`), one shared count.
    let peer = peer.map_or(IpAddr::from([0, 0, 0, 0]), |Extension(ConnectInfo(p))| {
        p.ip()
    });
    if let Err(wait) = state.logins.check(peer) {
        let mut response = login_page(
            Some(&format!(
                "Too many failed logins from this address: try again in {} s.",
                wait.as_secs()
            )),
            StatusCode::TOO_MANY_REQUESTS,
        );
        if let Ok(v) = HeaderValue::from_str(&wait.as_secs().to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return response;
    }
    let token = fields.get("token").map(|t| t.trim()).unwrap_or_default();
    let caller = (!token.is_empty())
        .then(|| state.api.tokens.identify(token))
        .flatten();
    if caller.is_none() {
        state.logins.failed(peer);
    }
    // A `submit` token sees only its own batches; the console shows the whole pool, so it
    // takes `read` or `operate` tokens.
    if caller.as_ref().is_some_and(|c| c.confined_to().is_some()) {
        return login_page(
            Some(
                "That token has the role `submit`: the console needs a `read` or `operate` token.",
            ),
            StatusCode::FORBIDDEN,
        );
    }
    let Some(caller) = caller else {
        return login_page(
            Some("That token is not one of ingest.api_tokens."),
            StatusCode::UNAUTHORIZED,
        );
    };
    let Some(id) = state.sessions.open(caller) else {
        return page::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many console sessions are open; try again later",
        );
    };
    let mut response = Redirect::to("/console/batches").into_response();
    let headers = response.headers_mut();
    headers.append(
        header::SET_COOKIE,
        set_cookie(COOKIE, &id, SESSION_TTL.as_secs()),
    );
    headers.append(header::SET_COOKIE, set_cookie(LOGIN_COOKIE, "", 0));
    response
}

/// `POST /console/logout`.
pub async fn logout(
    State(state): State<ConsoleState>,
    headers: HeaderMap,
    Extension(_): Extension<Session>,
    CheckedForm(_): CheckedForm,
) -> Response {
    if let Some(id) = cookie(&headers, COOKIE) {
        state.sessions.close(id);
    }
    let mut response = Redirect::to("/console/login").into_response();
    response
        .headers_mut()
        .append(header::SET_COOKIE, set_cookie(COOKIE, "", 0));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cookie_is_found_by_its_exact_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; mailpipe_console_login=x; mailpipe_console=abc"),
        );
        assert_eq!(cookie(&h, COOKIE), Some("abc"));
        assert_eq!(cookie(&h, LOGIN_COOKIE), Some("x"));
        assert_eq!(cookie(&h, "b"), None);
    }

    #[test]
    fn a_session_opens_expires_and_closes() {
        let s = Sessions::default();
        let id = s
            .open(Caller {
                role: crate::api::roles::Role::Read,
                owner: None,
            })
            .unwrap();
        let session = s.get(&id).unwrap();
        assert_ne!(session.csrf, id);
        assert!(s.get("other").is_none());
        s.close(&id);
        assert!(s.get(&id).is_none());
    }
}
