//! Attachments added to a draft, as Graph takes them: `POST .../messages/{id}/attachments`
//! (a `fileAttachment`, its bytes as base64 in the 4 MB request), and upload sessions for
//! large files (`POST .../attachments/createUploadSession` with an `AttachmentItem`, then
//! the bytes `PUT` in ranges to the session's pre-authenticated `uploadUrl`).
//!
//! The upload URL is what Exchange's is: opaque, carrying its own credential in the query
//! (`authtoken`), refusing a request that also carries an `Authorization` header. Ranges
//! must follow each other (`Content-Range: bytes {start}-{end}/{size}`, `start` the next
//! expected byte), each at most 4 MiB and, but for the last, a multiple of 320 KiB. Each
//! range extends the session's life (`upload_session_expiry_secs`); an expired session
//! answers `404`. The last range adds the attachment to the draft's MIME
//! (`attach_mime`): the message finally sent carries it, and the accepted-mail record has
//! its bytes like any other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use rand::RngCore as _;
use serde::Deserialize;
use serde_json::json;

use crate::graph::activity::GraphRequest;
use crate::graph::attach_mime::with_attachment;
use crate::graph::call::{Call, graph_error};
use crate::mail_store::WellKnown;
use crate::records::lock;
use crate::state::Shared;

/// Largest file an upload session takes (Microsoft: 150 MB).
pub(crate) const MAX_SESSION_BYTES: u64 = 150 * 1024 * 1024;
/// Largest range one `PUT` may carry (Microsoft: "up to 4 MB each time").
pub(crate) const MAX_RANGE_BYTES: usize = 4 * 1024 * 1024;
/// Ranges but the last are multiples of this.
pub(crate) const RANGE_MULTIPLE: usize = 320 * 1024;
/// Largest file a `fileAttachment` takes in one request (Microsoft: under 3 MB; the
/// request's own 4 MB cap applies too).
pub(crate) const MAX_INLINE_BYTES: usize = 3 * 1024 * 1024;

#[derive(Debug)]
struct Session {
    mailbox: String,
    draft_id: String,
    name: String,
    content_type: String,
    size: usize,
    received: Vec<u8>,
    token: String,
    expires: Instant,
}

/// The open upload sessions, by id.
#[derive(Debug, Default)]
pub(crate) struct UploadSessions {
    sessions: Mutex<HashMap<String, Session>>,
}

impl UploadSessions {
    pub fn clear(&self) {
        lock(&self.sessions).clear();
    }

    /// How many sessions are open (not finished, not expired).
    pub fn open(&self) -> usize {
        let now = Instant::now();
        lock(&self.sessions)
            .values()
            .filter(|s| s.expires > now)
            .count()
    }

    /// Ends every session's life now (a test of expiry).
    pub fn expire_all(&self) {
        let now = Instant::now();
        for s in lock(&self.sessions).values_mut() {
            s.expires = now;
        }
    }
}

fn path_of(uri: &Uri) -> String {
    uri.path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default()
}

fn in_drafts(s: &Shared, mailbox: &str, id: &str) -> Option<usize> {
    s.mail
        .messages(mailbox, "drafts")
        .unwrap_or_default()
        .into_iter()
        .find(|m| m.id == id)
        .map(|m| m.raw.len())
}

fn not_found() -> Response {
    graph_error(
        StatusCode::NOT_FOUND,
        "ErrorItemNotFound",
        "The specified object was not found in the store.",
    )
}

fn too_large(max: u64) -> Response {
    graph_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "ErrorMessageSizeExceeded",
        &format!("The message exceeds the maximum supported size of {max} bytes."),
    )
}

/// Adds to the draft; `Err` is Graph's answer.
fn attach(
    s: &Shared,
    mailbox: &str,
    draft_id: &str,
    name: &str,
    content_type: &str,
    bytes: &[u8],
) -> Result<(), Box<Response>> {
    let max = s.config.graph.max_message_bytes;
    let outcome = s.mail.rewrite(mailbox, WellKnown::Drafts, draft_id, |raw| {
        let out = with_attachment(raw, name, content_type, bytes);
        if out.len() as u64 > max {
            Err(Box::new(too_large(max)))
        } else {
            Ok(out)
        }
    });
    match outcome {
        None => Err(Box::new(not_found())),
        Some(result) => result,
    }
}

#[derive(Debug, Deserialize)]
struct FileAttachment {
    #[serde(rename = "@odata.type")]
    odata_type: String,
    name: String,
    #[serde(rename = "contentType", default)]
    content_type: Option<String>,
    #[serde(rename = "contentBytes")]
    content_bytes: String,
}

/// `POST /v1.0/users/{upn}/messages/{id}/attachments` → `201` and the attachment.
pub(crate) async fn add(
    State(s): State<Arc<Shared>>,
    Path((upn, id)): Path<(String, String)>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let mut call = match Call::begin(&s, &headers, &upn, "POST", &path_of(&uri)).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    if body.len() > crate::graph::sending::MAX_REQUEST_BYTES {
        return call.finish(graph_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestBodyTooLarge",
            "The maximum request length supported is 4MB.",
        ));
    }
    let Ok(a) = serde_json::from_slice::<FileAttachment>(&body) else {
        return call.finish(graph_error(
            StatusCode::BAD_REQUEST,
            "ErrorInvalidRequest",
            "The body must be a fileAttachment: @odata.type, name, contentBytes.",
        ));
    };
    if a.odata_type != "#microsoft.graph.fileAttachment" || a.name.trim().is_empty() {
        return call.finish(graph_error(
            StatusCode::BAD_REQUEST,
            "ErrorInvalidRequest",
            "The simulator takes file attachments (#microsoft.graph.fileAttachment) with a name.",
        ));
    }
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(a.content_bytes.trim()) else {
        return call.finish(graph_error(
            StatusCode::BAD_REQUEST,
            "ErrorInvalidRequest",
            "contentBytes is not valid base64.",
        ));
    };
    if bytes.len() > MAX_INLINE_BYTES {
        return call.finish(graph_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize",
            "Attachments of 3 MB and more need an upload session.",
        ));
    }
    let content_type = a
        .content_type
        .unwrap_or_else(|| "application/octet-stream".into());
    let mailbox = call.mailbox.clone();
    if let Err(answer) = attach(&s, &mailbox, &id, &a.name, &content_type, &bytes) {
        return call.finish(*answer);
    }
    let answer = json!({
        "@odata.type": "#microsoft.graph.fileAttachment",
        "id": format!("AAMkAtt{}", uuid::Uuid::new_v4().simple()),
        "name": a.name,
        "contentType": content_type,
        "size": bytes.len(),
        "isInline": false,
    });
    call.finish((StatusCode::CREATED, Json(answer)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AttachmentItem {
    attachment_type: String,
    name: String,
    size: u64,
    #[serde(default)]
    content_type: Option<String>,
}

#[derive(Debug, Deserialize)]
struct CreateSession {
    #[serde(rename = "AttachmentItem")]
    attachment_item: AttachmentItem,
}

/// `POST /v1.0/users/{upn}/messages/{id}/attachments/createUploadSession` → `201` and the
/// `uploadSession`.
pub(crate) async fn create_session(
    State(s): State<Arc<Shared>>,
    Path((upn, id)): Path<(String, String)>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let mut call = match Call::begin(&s, &headers, &upn, "POST", &path_of(&uri)).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Ok(CreateSession {
        attachment_item: item,
    }) = serde_json::from_slice::<CreateSession>(&body)
    else {
        return call.finish(graph_error(
            StatusCode::BAD_REQUEST,
            "ErrorInvalidRequest",
            "The body must be {\"AttachmentItem\":{\"attachmentType\":\"file\",\"name\":…,\"size\":…}}.",
        ));
    };
    if !item.attachment_type.eq_ignore_ascii_case("file")
        || item.name.trim().is_empty()
        || item.size == 0
    {
        return call.finish(graph_error(
            StatusCode::BAD_REQUEST,
            "ErrorInvalidRequest",
            "AttachmentItem needs attachmentType \"file\", a name and a size above 0.",
        ));
    }
    if item.size > MAX_SESSION_BYTES {
        return call.finish(graph_error(
            StatusCode::BAD_REQUEST,
            "ErrorAttachmentSizeShouldNotBeGreaterThanMaximumSize",
            "An upload session takes files of up to 150 MB.",
        ));
    }
    let mailbox = call.mailbox.clone();
    let Some(draft_len) = in_drafts(&s, &mailbox, &id) else {
        return call.finish(not_found());
    };
    let max = s.config.graph.max_message_bytes;
    // As base64 in the message: four bytes per three.
    if draft_len as u64 + item.size.div_ceil(3) * 4 > max {
        return call.finish(too_large(max));
    }
    let session_id = format!("AAMkSes{}", uuid::Uuid::new_v4().simple());
    let mut secret = [0u8; 24];
    rand::rng().fill_bytes(&mut secret);
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    let expiry = Duration::from_secs(s.config.graph.upload_session_expiry_secs.max(1));
    lock(&s.graph_uploads.sessions).insert(
        session_id.clone(),
        Session {
            mailbox,
            draft_id: id,
            name: item.name,
            content_type: item
                .content_type
                .unwrap_or_else(|| "application/octet-stream".into()),
            size: item.size as usize,
            received: Vec::new(),
            token: token.clone(),
            expires: Instant::now() + expiry,
        },
    );
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let answer = json!({
        "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#microsoft.graph.uploadSession",
        "uploadUrl": format!("http://{host}/upload/AttachmentSessions/{session_id}?authtoken={token}"),
        "expirationDateTime": expiration(expiry),
        "nextExpectedRanges": ["0"],
    });
    call.finish((StatusCode::CREATED, Json(answer)).into_response())
}

fn expiration(from_now: Duration) -> String {
    let at = chrono::Utc::now() + chrono::Duration::from_std(from_now).unwrap_or_default();
    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

#[derive(Debug, Deserialize)]
pub(crate) struct UploadQuery {
    #[serde(default)]
    authtoken: Option<String>,
}

/// `PUT /upload/AttachmentSessions/{session}?authtoken=…` with one range: `200` and the
/// next expected byte, `201` once the file is whole (and on the draft).
pub(crate) async fn put_range(
    State(s): State<Arc<Shared>>,
    Path(session_id): Path<String>,
    Query(query): Query<UploadQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut logged = GraphRequest {
        mailbox: String::new(),
        method: "PUT".into(),
        // The query is a credential: not logged.
        path: format!("/upload/AttachmentSessions/{session_id}"),
        status: 0,
        at: chrono::Utc::now(),
        answered_at: chrono::Utc::now(),
        retry_after_secs: None,
        retry_after_header: false,
    };
    let response = range(&s, &session_id, query, &headers, &body, &mut logged.mailbox);
    logged.status = response.status().as_u16();
    s.graph_activity.leave(logged, false);
    response
}

fn range(
    s: &Shared,
    session_id: &str,
    query: UploadQuery,
    headers: &HeaderMap,
    body: &[u8],
    mailbox_of: &mut String,
) -> Response {
    if headers.contains_key(header::AUTHORIZATION) {
        return graph_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "An upload session's URL is pre-authenticated: a request to it must not carry an Authorization header.",
        );
    }
    let mut sessions = lock(&s.graph_uploads.sessions);
    let Some(session) = sessions.get_mut(session_id) else {
        return not_found();
    };
    *mailbox_of = session.mailbox.clone();
    if query.authtoken.as_deref() != Some(session.token.as_str()) {
        return graph_error(
            StatusCode::UNAUTHORIZED,
            "InvalidAuthenticationToken",
            "The upload session's authtoken is missing or wrong.",
        );
    }
    let now = Instant::now();
    if session.expires <= now {
        sessions.remove(session_id);
        return graph_error(
            StatusCode::NOT_FOUND,
            "ErrorItemNotFound",
            "The upload session has expired.",
        );
    }
    let Some((start, end, total)) = headers
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_content_range)
    else {
        return graph_error(
            StatusCode::BAD_REQUEST,
            "InvalidContentRange",
            "Content-Range must be bytes {start}-{end}/{size}.",
        );
    };
    let expected = session.received.len();
    let problem = if total != session.size {
        Some(format!(
            "the range names a file of {total} bytes; the session's is {}",
            session.size
        ))
    } else if start != expected {
        Some(format!("the next expected byte is {expected}, not {start}"))
    } else if end < start || end >= total {
        Some(format!(
            "the range {start}-{end} is not within 0-{}",
            total - 1
        ))
    } else if body.len() != end - start + 1 {
        Some(format!(
            "the range {start}-{end} is {} bytes; the body has {}",
            end - start + 1,
            body.len()
        ))
    } else if body.len() > MAX_RANGE_BYTES {
        Some(format!(
            "a range is at most {MAX_RANGE_BYTES} bytes; this one has {}",
            body.len()
        ))
    } else if end + 1 < total && !body.len().is_multiple_of(RANGE_MULTIPLE) {
        Some(format!(
            "a range but the last must be a multiple of 320 KiB; this one is {} bytes",
            body.len()
        ))
    } else {
        None
    };
    if let Some(problem) = problem {
        let status = if start != expected && total == session.size {
            StatusCode::RANGE_NOT_SATISFIABLE
        } else {
            StatusCode::BAD_REQUEST
        };
        return graph_error(status, "InvalidRange", &problem);
    }
    session.received.extend_from_slice(body);
    let expiry = Duration::from_secs(s.config.graph.upload_session_expiry_secs.max(1));
    session.expires = now + expiry;
    if session.received.len() < session.size {
        let next = session.received.len();
        return (
            StatusCode::OK,
            Json(json!({
                "expirationDateTime": expiration(expiry),
                "nextExpectedRanges": [next.to_string()],
            })),
        )
            .into_response();
    }
    let Some(done) = sessions.remove(session_id) else {
        return not_found();
    };
    drop(sessions);
    if let Err(answer) = attach(
        s,
        &done.mailbox,
        &done.draft_id,
        &done.name,
        &done.content_type,
        &done.received,
    ) {
        return *answer;
    }
    let attachment_id = format!("AAMkAtt{}", uuid::Uuid::new_v4().simple());
    let location = format!(
        "https://outlook.office.com/api/v2.0/Users('{}')/Messages('{}')/Attachments('{attachment_id}')",
        done.mailbox, done.draft_id
    );
    let mut response = StatusCode::CREATED.into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

/// `bytes {start}-{end}/{total}` → `(start, end, total)`.
fn parse_content_range(v: &str) -> Option<(usize, usize, usize)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    Some((
        start.trim().parse().ok()?,
        end.trim().parse().ok()?,
        total.trim().parse().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_is_read() {
        assert_eq!(
            parse_content_range("bytes 0-327679/1000000"),
            Some((0, 327_679, 1_000_000))
        );
        assert_eq!(parse_content_range("bytes */1000"), None);
        assert_eq!(parse_content_range("0-1/2"), None);
    }

    #[test]
    fn expiration_is_a_graph_timestamp() {
        let at = expiration(Duration::from_secs(900));
        assert!(chrono::DateTime::parse_from_rfc3339(&at).is_ok(), "{at}");
        assert!(at.ends_with('Z'), "{at}");
    }
}
