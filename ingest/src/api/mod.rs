//! The HTTP API. Routes are declared once, in [`api_routes`]; the router and the
//! OpenAPI sync test both read that list.
//!
//! | route | roles | |
//! |---|---|---|
//! | `POST /v1/jobs` | submit, operate | one job (JSON) |
//! | `GET /v1/jobs`, `GET /v1/jobs/{id}` | all (submit: its batches') | jobs, a job |
//! | `POST /v1/batches?batch=ID[&partial=true]` | submit, operate | JSONL or CSV upload |
//! | `GET /v1/batches?state=&created_from=&created_to=&q=&cursor=&limit=` | all (submit: its own) | batches, newest first, a page at a time |
//! | `GET /v1/batches/{id}` | all (submit: its own) | counts by status |
//! | `POST /v1/batches/{id}/pause|resume|cancel` | submit (its own), operate | control |
//! | `GET /v1/suppressions` | read, operate | the suppression list, a page at a time |
//! | `PUT`, `DELETE /v1/suppressions/{address}` | operate | add (with a reason), remove |
//! | `GET /v1/openapi.yaml` | open | this API, described |
//!
//! Which role may do what is said once, in [`roles`]; [`auth`] applies it per route.

pub mod auth;
pub(crate) mod batch_list;
mod batches;
mod error;
mod jobs;
mod ownership;
pub(crate) mod query_guard;
pub mod roles;
pub mod suppressions;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post, put};

pub use error::ApiError;
pub use roles::{Action, Caller, Role};

use crate::metrics;
use crate::publish::JobPublisher;
use crate::records::Records;
use crate::settings::IngestSettings;
use crate::tokens::ApiTokens;
use crate::validate::Validator;

/// The OpenAPI description served at `/v1/openapi.yaml`.
pub const OPENAPI_YAML: &str = include_str!("../../openapi.yaml");

#[derive(Clone)]
pub struct AppState {
    pub(crate) validator: Arc<Validator>,
    pub(crate) publisher: JobPublisher,
    pub(crate) records: Records,
    pub(crate) tokens: ApiTokens,
    pub(crate) settings: Arc<IngestSettings>,
    /// The database schema is current (set once at start).
    pub(crate) schema_ready: Arc<AtomicBool>,
    /// One permit per batch upload being checked (`max_concurrent_batches`).
    pub(crate) batch_slots: Arc<tokio::sync::Semaphore>,
}

impl AppState {
    /// A submission's `callback_url`, checked: allowed host and port, and every address
    /// the host resolves to now (422 naming the field when refused). Nothing is written.
    pub(crate) async fn callback_url(
        &self,
        query: Option<&String>,
    ) -> Result<Option<String>, ApiError> {
        let Some(text) = query else {
            return Ok(None);
        };
        let refuse = |why: String| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("callback_url: {why}"),
            )
            .field("callback_url")
        };
        let webhooks = &self.settings.webhooks;
        if !webhooks.callbacks_enabled() {
            return Err(refuse(
                "callbacks are not enabled here (ingest.webhooks.callback_secret and allowed_callback_hosts)".into(),
            ));
        }
        let lookup = crate::webhooks::address_guard::SystemLookup;
        let limit = Duration::from_millis(webhooks.connect_timeout_ms);
        let url = tokio::time::timeout(limit, webhooks.policy().check_and_resolve(text, &lookup))
            .await
            .map_err(|_| {
                refuse(format!(
                    "its host was not resolved within {} ms",
                    limit.as_millis()
                ))
            })?
            .map_err(refuse)?;
        Ok(Some(url.into()))
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}

impl AppState {
    pub fn new(
        validator: Validator,
        publisher: JobPublisher,
        records: Records,
        tokens: ApiTokens,
        settings: IngestSettings,
        schema_ready: Arc<AtomicBool>,
    ) -> Self {
        Self {
            validator: Arc::new(validator),
            publisher,
            records,
            tokens,
            batch_slots: Arc::new(tokio::sync::Semaphore::new(settings.max_concurrent_batches)),
            settings: Arc::new(settings),
            schema_ready,
        }
    }

    /// Submissions and queries need the system of record: 503 until its schema is
    /// current, and at once while the probe (or the last operation) finds it unreachable,
    /// instead of holding the request until a connection attempt times out.
    fn database_ready(&self) -> Result<(), ApiError> {
        let store = self.records.store();
        // Why the database is away is for /readyz and the log, not for API clients.
        if !store.is_reachable() {
            return Err(ApiError::unavailable(
                "the database is unreachable; retry shortly",
            ));
        }
        if self.schema_ready.load(Ordering::SeqCst) {
            return Ok(());
        }
        Err(ApiError::unavailable(
            "the database schema is being made current after a start; retry shortly",
        ))
    }
}

/// Every API route: method, path (OpenAPI syntax), handler, and the [`Action`] it
/// performs (`None`: open, no token).
pub fn api_routes() -> Vec<(Method, &'static str, MethodRouter<AppState>, Option<Action>)> {
    use Action as A;
    vec![
        (
            Method::POST,
            "/v1/jobs",
            post(jobs::submit),
            Some(A::Submit),
        ),
        (Method::GET, "/v1/jobs", get(jobs::list), Some(A::Read)),
        (
            Method::GET,
            "/v1/jobs/{id}",
            get(jobs::status),
            Some(A::Read),
        ),
        (
            Method::POST,
            "/v1/batches",
            post(batches::upload),
            Some(A::Submit),
        ),
        (
            Method::GET,
            "/v1/batches",
            get(batch_list::list),
            Some(A::Read),
        ),
        (
            Method::GET,
            "/v1/batches/{id}",
            get(batches::status),
            Some(A::Read),
        ),
        (
            Method::POST,
            "/v1/batches/{id}/pause",
            post(batches::pause),
            Some(A::Control),
        ),
        (
            Method::POST,
            "/v1/batches/{id}/resume",
            post(batches::resume),
            Some(A::Control),
        ),
        (
            Method::POST,
            "/v1/batches/{id}/cancel",
            post(batches::cancel),
            Some(A::Control),
        ),
        (
            Method::GET,
            "/v1/suppressions",
            get(suppressions::list),
            Some(A::ReadSuppressions),
        ),
        (
            Method::PUT,
            "/v1/suppressions/{address}",
            put(suppressions::put),
            Some(A::ManageSuppressions),
        ),
        (
            Method::DELETE,
            "/v1/suppressions/{address}",
            delete(suppressions::delete),
            Some(A::ManageSuppressions),
        ),
        (Method::GET, "/v1/openapi.yaml", get(openapi), None),
    ]
}

/// The API router (without the ops routes, which `startup` merges in). Each route with
/// an action gets the token and role check for that action.
pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    for (_, path, handler, action) in api_routes() {
        let handler = match action {
            Some(action) => handler.route_layer(middleware::from_fn_with_state(
                state.clone(),
                move |State(state): State<AppState>, request: Request, next: Next| {
                    auth::authorize(state, action, request, next)
                },
            )),
            None => handler,
        };
        router = router.route(path, handler);
    }
    router
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such route (see /v1/openapi.yaml)",
            )
        })
        .layer(middleware::from_fn(query_guard::refuse_control_characters))
        .with_state(state)
}

/// Records `mailpipe_ingest_http_request_duration_seconds{route,status}` (route is the
/// template, so cardinality stays bounded).
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let started = Instant::now();
    let response = next.run(request).await;
    metrics::HTTP_SECONDS
        .with_label_values(&[route.as_str(), response.status().as_str()])
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI_YAML)
}

/// The request's media type: `Content-Type` without parameters, lower-case; empty when
/// absent or unreadable.
pub(crate) fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The answer to a client that stopped sending its body.
fn body_timeout(timeout: Duration) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        format!(
            "the request body did not arrive within {} ms (ingest.body_read_timeout_ms)",
            timeout.as_millis()
        ),
    )
    .field("body")
}

/// The most a route reads of a body, and the limit's name for the 413 (the key that
/// sets it, or the route's fixed bound).
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyLimit {
    pub bytes: usize,
    pub name: &'static str,
}

/// Reads a whole (small) body within `timeout`, refusing it with a 413 naming the limit
/// past `limit.bytes`.
async fn read_limited(
    body: Body,
    headers: &HeaderMap,
    limit: BodyLimit,
    timeout: Duration,
) -> Result<axum::body::Bytes, ApiError> {
    tokio::time::timeout(timeout, read_body(body, headers, limit))
        .await
        .map_err(|_| body_timeout(timeout))?
}

async fn read_body(
    body: Body,
    headers: &HeaderMap,
    BodyLimit { bytes: limit, name }: BodyLimit,
) -> Result<axum::body::Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body exceeds {limit} bytes ({name})"),
        )
        .field("body")
    };
    if content_length(headers).is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut stream = body.into_data_stream();
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("reading the request body: {e}"),
            )
            .field("body")
        })?;
        if buf.len() + chunk.len() > limit {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}
