//! Sending through Graph: a draft created from MIME (`POST /users/{id}/messages`, the MIME
//! as base64 with `Content-Type: text/plain`) lands in Drafts; sending it (`POST
//! /users/{id}/messages/{id}/send`) applies the limits and refusals the SMTP side applies at
//! the end of DATA (its size against `max_message_bytes`, Send As on From, message rate, recipient quota, the tenant's external
//! recipients, a blocked tenant), then takes the draft out of Drafts and records the message
//! like an accepted SMTP one (Sent Items, NDRs, the accepted-mail log). A draft is sent at
//! most once: its id is gone from Drafts afterwards (`404`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::Value;

use crate::graph::call::{Call, graph_error};
use crate::graph::messages::message_json;
use crate::mail_store::WellKnown;
use crate::records::{AcceptedMessage, Stage};
use crate::smtp::limits::Verdict;
use crate::smtp::parse::{header_addresses, header_from_addresses};
use crate::smtp::replies::{self, Reply};
use crate::state::Shared;

/// Graph's cap on one request's body (about 4 MB); larger drafts need an upload session.
pub(crate) const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

fn path_of(uri: &Uri) -> String {
    uri.path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default()
}

/// `POST /v1.0/users/{upn}/messages` with a base64 MIME body → `201` and the draft.
pub(crate) async fn create_draft(
    State(s): State<Arc<Shared>>,
    Path(upn): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let mut call = match Call::begin(&s, &headers, &upn, "POST", &path_of(&uri)).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    if body.len() > MAX_REQUEST_BYTES {
        return call.finish(graph_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestBodyTooLarge",
            "The maximum request length supported is 4MB.",
        ));
    }
    let text_plain = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with("text/plain"));
    if !text_plain {
        return call.finish(graph_error(
            StatusCode::BAD_REQUEST,
            "ErrorInvalidRequest",
            "The simulator creates drafts from MIME only: Content-Type: text/plain with the message as base64.",
        ));
    }
    let compact: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let Ok(mime) = base64::engine::general_purpose::STANDARD.decode(&compact) else {
        return call.finish(graph_error(
            StatusCode::BAD_REQUEST,
            "ErrorMimeContentInvalidBase64String",
            "Invalid base64 string for MIME content.",
        ));
    };
    let id = s.mail.file(&call.mailbox, WellKnown::Drafts, mime);
    let folder = s
        .mail
        .folder_id(&call.mailbox, "drafts")
        .unwrap_or_default();
    let response = match s.mail.message(&call.mailbox, &id) {
        Some(m) => (
            StatusCode::CREATED,
            Json(Value::Object(message_json(&m, &folder))),
        )
            .into_response(),
        None => graph_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ErrorInternalServerError",
            "The draft could not be read back.",
        ),
    };
    call.finish(response)
}

/// `POST /v1.0/users/{upn}/messages/{id}/send` → `202`, or Graph's refusal.
pub(crate) async fn send_draft(
    State(s): State<Arc<Shared>>,
    Path((upn, id)): Path<(String, String)>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let mut call = match Call::begin(&s, &headers, &upn, "POST", &path_of(&uri)).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let address = call.mailbox.clone();
    let Some(mailbox) = s.directory.mailbox(&address).cloned() else {
        return call.finish(graph_error(
            StatusCode::NOT_FOUND,
            "ErrorInvalidUser",
            "The requested user is invalid.",
        ));
    };
    let in_drafts = s
        .mail
        .messages(&address, "drafts")
        .unwrap_or_default()
        .into_iter()
        .find(|m| m.id == id);
    let Some(draft) = in_drafts else {
        return call.finish(graph_error(
            StatusCode::NOT_FOUND,
            "ErrorItemNotFound",
            "The specified object was not found in the store.",
        ));
    };
    let host = s.hostname().to_owned();
    let raw = draft.raw.as_ref().clone();
    let max = s.config.graph.max_message_bytes;
    if raw.len() as u64 > max {
        return call.finish(graph_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "ErrorMessageSizeExceeded",
            &format!("The message exceeds the maximum supported size of {max} bytes."),
        ));
    }
    let rcpts: Vec<String> = header_addresses(&raw, &["to", "cc", "bcc"])
        .into_iter()
        .filter(|a| a.contains('@'))
        .collect();
    let refuse = |call: &mut Call, status: StatusCode, code: &str, reply: Reply| {
        s.refuse(Some(&address), Stage::DataEnd, "GRAPH SEND", &reply);
        let message = format!("{} {}", reply.code, reply.text);
        call.finish(graph_error(status, code, &message))
    };
    if rcpts.is_empty() {
        return call.finish(graph_error(
            StatusCode::BAD_REQUEST,
            "ErrorInvalidRecipients",
            "At least one recipient is not valid., A message can't be sent because it contains no recipients.",
        ));
    }
    if s.tenant_blocked(&mailbox.tenant) {
        return refuse(
            &mut call,
            StatusCode::FORBIDDEN,
            "ErrorMessageSubmissionBlocked",
            replies::tenant_blocked(&host),
        );
    }
    let limits = s
        .limits
        .limits(&address)
        .unwrap_or_else(|| s.config.limits_for_default());
    if !limits.unlimited && rcpts.len() as u64 > limits.max_recipients_per_message {
        return refuse(
            &mut call,
            StatusCode::BAD_REQUEST,
            "ErrorTooManyRecipients",
            replies::too_many_recipients(),
        );
    }
    if let Some(bad) = header_from_addresses(&raw)
        .into_iter()
        .find(|f| !mailbox.may_send_as(f))
    {
        return refuse(
            &mut call,
            StatusCode::FORBIDDEN,
            "ErrorSendAsDenied",
            replies::send_as_header(&host, &mailbox.address, &bad),
        );
    }
    let tenant = s.directory.tenant(&mailbox.tenant);
    let external = rcpts
        .iter()
        .filter(|r| !tenant.is_some_and(|t| t.is_internal(r)))
        .count() as u64;
    let n = rcpts.len() as u64;
    match s
        .limits
        .admit(&address, &mailbox.tenant, n, external, Instant::now())
    {
        Verdict::MessageRate => {
            let reply = replies::message_rate(&host);
            s.refuse(Some(&address), Stage::DataEnd, "GRAPH SEND", &reply);
            let secs = limits.message_window.as_secs().max(1);
            let message = format!("{} {}", reply.code, reply.text);
            return call.throttled_as(Some(secs), "ErrorExceededMessageLimit", &message);
        }
        Verdict::RecipientQuota => {
            return refuse(
                &mut call,
                StatusCode::FORBIDDEN,
                "ErrorSubmissionQuotaExceeded",
                replies::recipient_quota(&host),
            );
        }
        Verdict::TenantExternal => {
            return refuse(
                &mut call,
                StatusCode::FORBIDDEN,
                "ErrorMessageSubmissionBlocked",
                replies::tenant_external_limit(&host),
            );
        }
        Verdict::Accept => {}
    }
    // Sent: out of Drafts (the id is gone), into Sent Items and the accepted-mail log.
    if s.mail.take(&address, WellKnown::Drafts, &id).is_none() {
        // Sent by a concurrent request for the same draft a moment ago.
        return call.finish(graph_error(
            StatusCode::NOT_FOUND,
            "ErrorItemNotFound",
            "The specified object was not found in the store.",
        ));
    }
    let delivered = without_bcc(&raw);
    s.metrics
        .messages_accepted
        .with_label_values(&[&address])
        .inc();
    s.metrics
        .recipients_accepted
        .with_label_values(&[&address])
        .inc_by(n);
    s.metrics.bytes_accepted.inc_by(delivered.len() as u64);
    crate::filing::file_accepted(&s, &address, &rcpts, &raw);
    s.records.push_accepted(AcceptedMessage {
        id: format!("{}@{}", uuid::Uuid::new_v4().simple(), host),
        mailbox: address.clone(),
        mail_from: address.clone(),
        rcpt_to: rcpts,
        received_at: chrono::Utc::now(),
        raw: delivered,
    });
    let hold = s.faults.accepted_reply_delay_ms(&address);
    if hold > 0 {
        tokio::time::sleep(Duration::from_millis(hold)).await;
    }
    call.finish(StatusCode::ACCEPTED.into_response())
}

/// The message as its recipients get it: the `Bcc` header removed (with its continuation
/// lines).
fn without_bcc(raw: &[u8]) -> Vec<u8> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(raw.len(), |p| p + 2);
    let (head, body) = raw.split_at(end);
    let mut out = Vec::with_capacity(raw.len());
    let mut skipping = false;
    for line in head.split_inclusive(|&b| b == b'\n') {
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        if !continuation {
            skipping = line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"bcc:");
        }
        if !skipping {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bcc_leaves_the_delivered_copy() {
        let raw = b"To: a@x\r\nBcc: b@x,\r\n c@x\r\nSubject: s\r\n\r\nBcc: body stays\r\n";
        assert_eq!(
            without_bcc(raw),
            b"To: a@x\r\nSubject: s\r\n\r\nBcc: body stays\r\n".to_vec()
        );
    }
}
