//! The operator's console at `/console`: server-rendered pages over the same records and
//! store functions as the API and the CLI (one way of doing each thing), with a little
//! plain JavaScript that refreshes each page's live part by polling.
//!
//! - [`session`]: login with an API token, the session cookie, CSRF on every form.
//! - [`page`]: templates (embedded), layout, error page.
//! - [`batches`]: the batch list. [`batch`]: one batch, pause/resume/cancel.
//! - [`pool`]: mailboxes, their owners and windows, tenant budgets.
//! - [`decisions`]: uncertain sends, dead letters, webhooks that need an operator.
//! - [`suppressions`]: search, add, remove.
//!
//! Every response carries a strict Content-Security-Policy: scripts and styles only from
//! `/console/assets/`, nothing inline, no framing, forms only to this origin.

mod batch;
mod batches;
mod decisions;
pub mod login_throttle;
mod page;
mod pool;
pub mod session;
mod suppressions;

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use mailpipe_common::pool::PoolSettings;

use crate::api::AppState;
use login_throttle::LoginThrottle;
use session::Sessions;

/// The console's state: the API's, the sessions, and the configured pool (for the pool
/// page; `None` when this ingest has no `[deliver]` section).
#[derive(Clone, Debug)]
pub struct ConsoleState {
    pub(crate) api: AppState,
    pub(crate) sessions: Sessions,
    pub(crate) logins: LoginThrottle,
    pub(crate) pool: Option<Arc<PoolSettings>>,
}

impl ConsoleState {
    pub fn new(api: AppState, pool: Option<PoolSettings>) -> Self {
        Self {
            api,
            sessions: Sessions::default(),
            logins: LoginThrottle::default(),
            pool: pool.map(Arc::new),
        }
    }
}

/// The policy every console response carries.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

const SCRIPT: &str = include_str!("assets/console.js");
const STYLE: &str = include_str!("assets/console.css");

async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// The console's routes (merged into ingest's router by `startup`).
pub fn router(state: ConsoleState) -> Router {
    let pages = Router::new()
        .route("/console/batches", get(batches::page))
        .route("/console/batches/{id}", get(batch::page))
        .route("/console/batches/{id}/{verb}", post(batch::control))
        .route("/console/pool", get(pool::page))
        .route("/console/decisions", get(decisions::page))
        .route(
            "/console/decisions/uncertain/{job}/{verb}",
            post(decisions::settle),
        )
        .route(
            "/console/decisions/dead/{job}/replay",
            post(decisions::replay),
        )
        .route(
            "/console/suppressions",
            get(suppressions::page).post(suppressions::add),
        )
        .route("/console/suppressions/remove", post(suppressions::remove))
        .route("/console/logout", post(session::logout))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            session::require,
        ));
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::to("/console/batches") }),
        )
        .route(
            "/console/",
            get(|| async { Redirect::to("/console/batches") }),
        )
        .route(
            "/console/login",
            get(session::login_form).post(session::login),
        )
        .route(
            "/console/assets/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/console/assets/console.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .merge(pages)
        .layer(middleware::from_fn(security_headers))
        .layer(middleware::from_fn(
            crate::api::query_guard::refuse_control_characters,
        ))
        .with_state(state)
}
