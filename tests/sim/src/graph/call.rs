//! One Graph request's way in and out: the bearer token (a Graph token of the mailbox's
//! tenant), the mailbox (known, granted to apps by the access policy, and to this app by
//! its permissions and scope: `crate::scope`), throttling
//! (armed `429`s, more than the concurrency cap in flight), the simulated latency, and the
//! log entry when it is answered (or dropped).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::graph::activity::{Admission, GraphRequest};
use crate::state::Shared;
use crate::tokens::Audience;

/// Graph's error body: `{"error":{"code":…,"message":…,"innerError":{…}}}`.
pub(crate) fn graph_error(status: StatusCode, code: &str, message: &str) -> Response {
    let now = chrono::Utc::now();
    let request_id = uuid::Uuid::new_v4();
    let body = json!({
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": now.format("%Y-%m-%dT%H:%M:%S").to_string(),
                "request-id": request_id,
                "client-request-id": request_id,
            }
        }
    });
    (status, Json(body)).into_response()
}

/// An admitted request; answer it through `finish` (dropping it logs status 499).
#[derive(Debug)]
pub(crate) struct Call {
    shared: Arc<Shared>,
    request: Option<GraphRequest>,
    /// The mailbox's address (lower case).
    pub mailbox: String,
}

impl Call {
    /// Authenticates, authorises and admits a request for `upn`; the `Err` is the answer.
    pub async fn begin(
        shared: &Arc<Shared>,
        headers: &HeaderMap,
        upn: &str,
        method: &str,
        path: &str,
    ) -> Result<Call, Response> {
        let mailbox = upn.to_ascii_lowercase();
        let request = GraphRequest {
            mailbox: mailbox.clone(),
            method: method.to_owned(),
            path: path.to_owned(),
            status: 0,
            at: chrono::Utc::now(),
            answered_at: chrono::Utc::now(),
            retry_after_secs: None,
            retry_after_header: false,
        };
        let refuse = |response: Response| {
            let mut logged = request.clone();
            logged.status = response.status().as_u16();
            shared.graph_activity.leave(logged, false);
            response
        };
        if let Some(response) = refusal(shared, headers, &mailbox, method, path) {
            return Err(refuse(response));
        }
        let admission = shared
            .graph_activity
            .arrive(&mailbox, shared.config.graph.max_concurrent_requests);
        let mut call = Call {
            shared: Arc::clone(shared),
            request: Some(request),
            mailbox,
        };
        match admission {
            Admission::Serve => {}
            Admission::Armed(secs) => {
                return Err(call.throttled(secs, "Application is over its resource limit."));
            }
            Admission::Concurrency => {
                return Err(
                    call.throttled(Some(1), "Application is over its MailboxConcurrency limit.")
                );
            }
        }
        let latency = shared.config.graph.latency_ms;
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        Ok(call)
    }

    /// A `429` with `Retry-After: secs`, or without the header (`None`).
    pub fn throttled(&mut self, secs: Option<u64>, message: &str) -> Response {
        self.throttled_as(secs, "ApplicationThrottled", message)
    }

    /// A `429` with Graph's error `code`.
    pub fn throttled_as(&mut self, secs: Option<u64>, code: &str, message: &str) -> Response {
        let mut response = graph_error(StatusCode::TOO_MANY_REQUESTS, code, message);
        if let Some(secs) = secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if let Some(r) = self.request.as_mut() {
            r.retry_after_secs = Some(secs.unwrap_or(0));
            r.retry_after_header = secs.is_some();
        }
        self.finish(response)
    }

    /// Logs the answer and gives it back.
    pub fn finish(&mut self, response: Response) -> Response {
        if let Some(mut r) = self.request.take() {
            r.status = response.status().as_u16();
            self.shared.graph_activity.leave(r, true);
        }
        response
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if let Some(mut r) = self.request.take() {
            // The client went away before the answer (nginx's 499).
            r.status = 499;
            self.shared.graph_activity.leave(r, true);
        }
    }
}

/// The checks Graph makes before touching a mailbox: a valid token for Graph, a mailbox
/// of the token's tenant, and an access policy that grants apps that mailbox. `Some` is
/// the refusal.
fn refusal(
    shared: &Shared,
    headers: &HeaderMap,
    mailbox: &str,
    method: &str,
    path: &str,
) -> Option<Response> {
    authorise(shared, headers, mailbox, method, path)
        .err()
        .map(|b| *b)
}

fn authorise(
    shared: &Shared,
    headers: &HeaderMap,
    mailbox: &str,
    method: &str,
    path: &str,
) -> Result<(), Box<Response>> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let Some(bearer) = bearer else {
        return Err(Box::new(graph_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "Access token is empty.",
        )));
    };
    let issued = shared.tokens.validate(bearer).map_err(|problem| {
        let message = match problem {
            crate::tokens::TokenProblem::Expired => {
                "Lifetime validation failed, the token is expired."
            }
            crate::tokens::TokenProblem::Unknown => "IDX14100: JWT is not well formed.",
        };
        graph_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            message,
        )
    })?;
    if issued.audience != Audience::Graph {
        return Err(Box::new(graph_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "Access token validation failure. Invalid audience.",
        )));
    }
    let not_found = || {
        graph_error(
            StatusCode::NOT_FOUND,
            "ErrorInvalidUser",
            &format!("The requested user '{mailbox}' is invalid."),
        )
    };
    let Some(mb) = shared.directory.mailbox(mailbox) else {
        return Err(Box::new(not_found()));
    };
    if !mb.tenant.eq_ignore_ascii_case(&issued.tenant) {
        // Another tenant's users are not in the token's directory.
        return Err(Box::new(not_found()));
    }
    if !shared.graph_access(mailbox) {
        return Err(Box::new(graph_error(
            StatusCode::FORBIDDEN,
            "ErrorAccessDenied",
            "Access to OData is disabled: [RAOP] : Blocked by tenant configured AppOnly AccessPolicy settings.",
        )));
    }
    // The app's permissions (token roles) and its RBAC for Applications scope.
    crate::scope::check(shared, &issued, mailbox, method, path).map_err(|r| {
        let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::FORBIDDEN);
        Box::new(graph_error(status, r.code, &r.message))
    })
}
