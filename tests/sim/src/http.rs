//! The HTTP side: the Entra ID token endpoint, Microsoft Graph (`/v1.0`, in `graph`), the
//! inspection API, /metrics and /healthz.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use base64::Engine as _;
use serde::Serialize;
use serde_json::json;

use crate::app_certificate::RegisteredCertificate;
use crate::config::FaultsConfig;
use crate::records::lock;
use crate::state::Shared;
use crate::tokens::Audience;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token))
        .route("/api/messages", get(messages))
        .route("/api/messages/{id}/raw", get(message_raw))
        .route("/api/refusals", get(refusals))
        .route("/api/auth-failures", get(auth_failures))
        .route("/api/mailboxes", get(mailboxes))
        .route("/api/reset", post(reset))
        .route("/api/faults", get(get_faults).put(put_faults))
        .route("/api/tenants/{tenant}/blocked", put(put_blocked))
        .route("/api/mailboxes/{mailbox}/inbox", post(inject_inbox))
        .route("/api/mailboxes/{mailbox}/folders", get(mailbox_folders))
        .route(
            "/api/mailboxes/{mailbox}/graph-access",
            put(put_graph_access),
        )
        .route(
            "/api/mailboxes/{mailbox}/graph-throttle",
            put(put_graph_throttle),
        )
        .route("/api/graph/requests", get(graph_requests))
        .route("/api/graph/mailboxes", get(graph_mailboxes))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .merge(crate::graph::router())
        .with_state(shared)
}

// ---------- token endpoint ----------

/// An Entra ID style error body (`error`, `error_description` starting with the AADSTS
/// code, `error_codes`, ids and timestamp).
fn aad_error(status: StatusCode, error: &str, code: u32, message: &str) -> Response {
    let trace_id = uuid::Uuid::new_v4();
    let correlation_id = uuid::Uuid::new_v4();
    let now = chrono::Utc::now();
    let timestamp = now.format("%Y-%m-%d %H:%M:%SZ").to_string();
    let description = format!(
        "AADSTS{code}: {message} Trace ID: {trace_id} Correlation ID: {correlation_id} Timestamp: {}",
        now.format("%Y-%m-%d %H:%M:%S%.3fZ")
    );
    let body = json!({
        "error": error,
        "error_description": description,
        "error_codes": [code],
        "timestamp": timestamp,
        "trace_id": trace_id,
        "correlation_id": correlation_id,
        "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
    });
    (status, Json(body)).into_response()
}

/// Decodes an `application/x-www-form-urlencoded` body. Invalid percent escapes are kept
/// literally, which makes the lookup fail the way a wrong value would.
fn parse_form(body: &[u8]) -> HashMap<String, String> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    match std::str::from_utf8(&bytes[i + 1..i + 3])
                        .ok()
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                    {
                        Some(b) => {
                            out.push(b);
                            i += 2;
                        }
                        None => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

/// `Authorization: Basic base64(client_id:client_secret)` (client_secret_basic).
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

/// The Host the client addressed (the simulator answers on whatever address it was given).
fn host_of(headers: &HeaderMap) -> String {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

async fn token(
    State(s): State<Arc<Shared>>,
    Path(tenant_path): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let fail = |status: StatusCode, error: &str, code: u32, message: &str| {
        s.metrics.token_errors.with_label_values(&[error]).inc();
        aad_error(status, error, code, message)
    };
    let form = parse_form(&body);
    let Some(tenant) = s.directory.tenant(&tenant_path) else {
        return fail(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            &format!(
                "Tenant '{tenant_path}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
            ),
        );
    };
    let Some(grant_type) = form.get("grant_type") else {
        return fail(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'grant_type'.",
        );
    };
    if grant_type != "client_credentials" {
        return fail(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            &format!("The app requested an unsupported grant type '{grant_type}'."),
        );
    }
    let basic = basic_credentials(&headers);
    let client_id = form
        .get("client_id")
        .cloned()
        .or_else(|| basic.as_ref().map(|b| b.0.clone()));
    let Some(client_id) = client_id else {
        return fail(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'client_id'.",
        );
    };
    let app = s
        .directory
        .apps
        .get(&client_id)
        .filter(|a| a.tenant.eq_ignore_ascii_case(&tenant.id));
    let Some(app) = app else {
        return fail(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            &format!(
                "Application with identifier '{client_id}' was not found in the directory '{}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.",
                tenant.id
            ),
        );
    };
    let secret = form
        .get("client_secret")
        .cloned()
        .or_else(|| basic.map(|b| b.1));
    match (secret, form.get("client_assertion")) {
        (Some(secret), None) => {
            if app.client_secret.as_deref() != Some(secret.as_str()) {
                return fail(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    7000215,
                    &format!(
                        "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."
                    ),
                );
            }
        }
        (None, Some(assertion)) => {
            if form.get("client_assertion_type").map(String::as_str)
                != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
            {
                return fail(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    50027,
                    "client_assertion_type must be 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer'.",
                );
            }
            // An assertion issued by someone else than the app is a federated one.
            if !app.federated.is_empty()
                && crate::federated::issuer_of(assertion).is_some_and(|iss| iss != client_id)
            {
                match crate::federated::verify(app, assertion) {
                    Ok(seen) => s.federated.record(seen),
                    Err(r) => {
                        return fail(
                            StatusCode::UNAUTHORIZED,
                            "invalid_client",
                            r.code,
                            &r.message,
                        );
                    }
                }
                return issue_token(&s, app, &form).unwrap_or_else(|(code, message)| {
                    fail(StatusCode::BAD_REQUEST, "invalid_scope", code, &message)
                });
            }
            let registered = app
                .client_certificate
                .as_deref()
                .and_then(|pem| RegisteredCertificate::from_pem(pem).ok());
            let Some(registered) = registered else {
                return fail(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    700027,
                    &format!(
                        "Client assertion failed signature validation. [Reason - The key was not found.] No certificate is configured for app Id '{client_id}'."
                    ),
                );
            };
            // Entra checks `aud` against its own token URL, as the client was told to post it.
            let token_url = format!("http://{}{}", host_of(&headers), uri.path());
            if let Err(r) = registered.verify(assertion, &client_id, &token_url) {
                return fail(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    r.code,
                    &r.message,
                );
            }
        }
        (Some(_), Some(_)) => {
            return fail(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                900144,
                "Give either 'client_secret' or 'client_assertion', not both.",
            );
        }
        (None, None) => {
            return fail(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000216,
                "'client_assertion', 'client_secret' or 'request' is required for the 'client_credentials' grant type.",
            );
        }
    }
    issue_token(&s, app, &form).unwrap_or_else(|(code, message)| {
        fail(StatusCode::BAD_REQUEST, "invalid_scope", code, &message)
    })
}

/// The token for an app that proved itself: its audience from the requested scope, or the
/// AADSTS code and text of an invalid scope.
fn issue_token(
    s: &Shared,
    app: &crate::config::AppConfig,
    form: &HashMap<String, String>,
) -> Result<Response, (u32, String)> {
    let scope = form.get("scope").map(String::as_str).unwrap_or("");
    let single = scope.split_whitespace().count() == 1;
    let listed =
        |list: &[String]| single && list.iter().any(|a| a.eq_ignore_ascii_case(scope.trim()));
    let audience = if listed(&s.config.accepted_scopes) {
        Audience::Exchange
    } else if listed(&s.config.graph_scopes) {
        Audience::Graph
    } else {
        return Err((
            70011,
            format!(
                "The provided request must include a 'scope' input parameter. The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid."
            ),
        ));
    };
    let lifetime = app.token_lifetime_secs;
    // Exchange's tokens carry Exchange's permission (SMTP AUTH as the app); Graph's the
    // Graph permissions the app was consented.
    let roles = match audience {
        Audience::Exchange => vec!["SMTP.SendAsApp".to_owned()],
        Audience::Graph => app.roles.clone(),
    };
    let access_token = s.tokens.issue(
        &app.client_id,
        &app.tenant.to_ascii_lowercase(),
        Duration::from_secs(lifetime),
        audience,
        &roles,
    );
    s.metrics
        .tokens_issued
        .with_label_values(&[&app.client_id])
        .inc();
    Ok(Json(json!({
        "token_type": "Bearer",
        "expires_in": lifetime,
        "ext_expires_in": lifetime,
        "access_token": access_token,
    }))
    .into_response())
}

// ---------- inspection API ----------

/// An accepted message as the API shows it.
#[derive(Debug, Serialize)]
struct MessageView {
    id: String,
    mailbox: String,
    mail_from: String,
    rcpt_to: Vec<String>,
    received_at: chrono::DateTime<chrono::Utc>,
    size: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    raw_base64: Option<String>,
}

fn flag(q: &HashMap<String, String>, key: &str) -> bool {
    q.get(key)
        .is_some_and(|v| v.is_empty() || v == "true" || v == "1")
}

async fn messages(
    State(s): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let with_raw = flag(&q, "raw");
    let mailbox = q.get("mailbox").map(|m| m.to_ascii_lowercase());
    let views: Vec<MessageView> = s
        .records
        .accepted()
        .into_iter()
        .filter(|m| mailbox.as_ref().is_none_or(|mb| &m.mailbox == mb))
        .map(|m| MessageView {
            size: m.raw.len(),
            raw_base64: with_raw.then(|| base64::engine::general_purpose::STANDARD.encode(&m.raw)),
            id: m.id,
            mailbox: m.mailbox,
            mail_from: m.mail_from,
            rcpt_to: m.rcpt_to,
            received_at: m.received_at,
        })
        .collect();
    Json(views).into_response()
}

async fn message_raw(State(s): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match s.records.accepted().into_iter().find(|m| m.id == id) {
        Some(m) => ([(header::CONTENT_TYPE, "message/rfc822")], m.raw).into_response(),
        None => (StatusCode::NOT_FOUND, "no such message").into_response(),
    }
}

async fn refusals(State(s): State<Arc<Shared>>) -> Response {
    Json(s.records.refusals()).into_response()
}

async fn auth_failures(State(s): State<Arc<Shared>>) -> Response {
    Json(s.records.auth_failures()).into_response()
}

async fn mailboxes(State(s): State<Arc<Shared>>) -> Response {
    Json(s.limits.stats()).into_response()
}

async fn reset(State(s): State<Arc<Shared>>) -> Response {
    s.reset();
    StatusCode::NO_CONTENT.into_response()
}

async fn get_faults(State(s): State<Arc<Shared>>) -> Response {
    Json(s.faults.global()).into_response()
}

async fn put_faults(State(s): State<Arc<Shared>>, body: Bytes) -> Response {
    match serde_json::from_slice::<FaultsConfig>(&body) {
        Ok(f) => {
            s.faults.set_global(f);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

async fn put_blocked(
    State(s): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Response {
    let Some(t) = s.directory.tenant(&tenant) else {
        return (StatusCode::NOT_FOUND, "no such tenant").into_response();
    };
    // `true`: blocked, in the set.
    put_membership(&s.blocked_tenants, t.id.to_ascii_lowercase(), &body, true)
}

/// A `true`/`false` body putting `key` in `set` (when it equals `member_when`) or taking
/// it out.
fn put_membership(
    set: &std::sync::Mutex<std::collections::HashSet<String>>,
    key: String,
    body: &[u8],
    member_when: bool,
) -> Response {
    match serde_json::from_slice::<bool>(body) {
        Ok(value) => {
            let mut set = lock(set);
            if value == member_when {
                set.insert(key);
            } else {
                set.remove(&key);
            }
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            format!("body must be true or false: {e}"),
        )
            .into_response(),
    }
}

/// `POST /api/mailboxes/{mailbox}/inbox` with a raw message → `201 {"id": …}`.
async fn inject_inbox(
    State(s): State<Arc<Shared>>,
    Path(mailbox): Path<String>,
    body: Bytes,
) -> Response {
    if s.directory.mailbox(&mailbox).is_none() {
        return (StatusCode::NOT_FOUND, "no such mailbox").into_response();
    }
    let id = s
        .mail
        .file(&mailbox, crate::mail_store::WellKnown::Inbox, body.to_vec());
    (StatusCode::CREATED, Json(json!({ "id": id }))).into_response()
}

async fn mailbox_folders(State(s): State<Arc<Shared>>, Path(mailbox): Path<String>) -> Response {
    if s.directory.mailbox(&mailbox).is_none() {
        return (StatusCode::NOT_FOUND, "no such mailbox").into_response();
    }
    Json(s.mail.view(&mailbox)).into_response()
}

async fn put_graph_access(
    State(s): State<Arc<Shared>>,
    Path(mailbox): Path<String>,
    body: Bytes,
) -> Response {
    let Some(mb) = s.directory.mailbox(&mailbox) else {
        return (StatusCode::NOT_FOUND, "no such mailbox").into_response();
    };
    // `false`: access denied, in the set.
    put_membership(&s.graph_denied, mb.address.clone(), &body, false)
}

async fn put_graph_throttle(
    State(s): State<Arc<Shared>>,
    Path(mailbox): Path<String>,
    body: Bytes,
) -> Response {
    let Some(mb) = s.directory.mailbox(&mailbox) else {
        return (StatusCode::NOT_FOUND, "no such mailbox").into_response();
    };
    match serde_json::from_slice::<crate::config::GraphThrottle>(&body) {
        Ok(t) => {
            s.graph_activity
                .arm_throttle(&mb.address, t.requests, t.retry_after_secs);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            format!("body must be {{\"requests\": N, \"retry_after_secs\": S}}: {e}"),
        )
            .into_response(),
    }
}

async fn graph_requests(State(s): State<Arc<Shared>>) -> Response {
    Json(s.graph_activity.requests()).into_response()
}

async fn graph_mailboxes(State(s): State<Arc<Shared>>) -> Response {
    Json(s.graph_activity.stats()).into_response()
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        let f = parse_form(b"grant_type=client_credentials&scope=https%3A%2F%2Foutlook.office365.com%2F.default&x=a+b&bad=%zz");
        assert_eq!(f["grant_type"], "client_credentials");
        assert_eq!(f["scope"], "https://outlook.office365.com/.default");
        assert_eq!(f["x"], "a b");
        assert_eq!(f["bad"], "%zz");
    }
}
