//! Messages: list a folder (filtered, ordered, paged), a message's MIME, move and delete.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::graph::call::{Call, graph_error};
use crate::graph::odata::{ListQuery, percent_encode};
use crate::mail_store::{StoreError, StoredMessage};
use crate::state::Shared;

fn path_of(uri: &Uri) -> String {
    uri.path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default()
}

/// A message as Graph's `message` resource shows it (the properties a client reads).
pub(crate) fn message_json(m: &StoredMessage, folder_id: &str) -> Map<String, Value> {
    let address = |a: &Option<String>| {
        a.as_ref()
            .map(|a| json!({"emailAddress": {"name": a, "address": a}}))
            .unwrap_or(Value::Null)
    };
    let received = m.received.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let mut o = Map::new();
    o.insert(
        "@odata.etag".into(),
        json!(format!("W/\"{}\"", &m.id[m.id.len().saturating_sub(12)..])),
    );
    o.insert("id".into(), json!(m.id));
    o.insert("receivedDateTime".into(), json!(received));
    o.insert("sentDateTime".into(), json!(received));
    o.insert("subject".into(), json!(m.subject));
    o.insert("internetMessageId".into(), json!(m.internet_message_id));
    o.insert("from".into(), address(&m.from));
    o.insert("sender".into(), address(&m.from));
    o.insert("parentFolderId".into(), json!(folder_id));
    o.insert("isRead".into(), json!(false));
    o.insert("hasAttachments".into(), json!(false));
    o
}

/// Keeps `@odata.etag`, `id` and the selected properties, as Graph does for `$select`.
fn select(mut o: Map<String, Value>, select: &Option<Vec<String>>) -> Map<String, Value> {
    if let Some(fields) = select {
        o.retain(|k, _| {
            k == "@odata.etag" || k == "id" || fields.iter().any(|f| f.eq_ignore_ascii_case(k))
        });
    }
    o
}

/// `GET /v1.0/users/{upn}/mailFolders/{folder}/messages`
pub(crate) async fn list(
    State(s): State<Arc<Shared>>,
    Path((upn, folder)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let mut call = match Call::begin(&s, &headers, &upn, "GET", &path_of(&uri)).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let query = match ListQuery::parse(
        &q,
        s.config.graph.default_page_size,
        s.config.graph.max_page_size,
    ) {
        Ok(q) => q,
        Err(m) => return call.finish(graph_error(StatusCode::BAD_REQUEST, "BadRequest", &m)),
    };
    if let Some(f) = &query.filter
        && !f.property.eq_ignore_ascii_case("internetMessageId")
    {
        let m = format!("Filtering on '{}' is not supported.", f.property);
        return call.finish(graph_error(StatusCode::BAD_REQUEST, "BadRequest", &m));
    }
    let Some(folder_id) = s.mail.folder_id(&call.mailbox, &folder) else {
        return call.finish(graph_error(
            StatusCode::NOT_FOUND,
            "ErrorItemNotFound",
            "The specified object was not found in the store.",
        ));
    };
    let mut messages = s
        .mail
        .messages(&call.mailbox, &folder_id)
        .unwrap_or_default();
    if let Some(f) = &query.filter {
        messages.retain(|m| m.internet_message_id.as_deref() == Some(f.value.as_str()));
    }
    // Stored in arrival order; Graph's default order is newest first.
    if !query.ascending {
        messages.reverse();
    }
    let total = messages.len();
    let page: Vec<Value> = messages
        .iter()
        .skip(query.skip)
        .take(query.top)
        .map(|m| Value::Object(select(message_json(m, &folder_id), &query.select)))
        .collect();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let base = format!(
        "http://{host}/v1.0/users/{}/mailFolders/{}/messages",
        percent_encode(&upn),
        percent_encode(&folder)
    );
    let mut body = Map::new();
    body.insert(
        "@odata.context".into(),
        json!(format!(
            "http://{host}/v1.0/$metadata#users('{upn}')/mailFolders('{folder}')/messages"
        )),
    );
    body.insert("value".into(), Value::Array(page));
    if query.skip + query.top < total {
        body.insert(
            "@odata.nextLink".into(),
            json!(format!("{base}?{}", query.next_page_query())),
        );
    }
    call.finish(Json(Value::Object(body)).into_response())
}

/// `GET /v1.0/users/{upn}/messages/{id}/$value`: the MIME content, as `text/plain`
/// like Graph answers it.
pub(crate) async fn mime(
    State(s): State<Arc<Shared>>,
    Path((upn, id)): Path<(String, String)>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let mut call = match Call::begin(&s, &headers, &upn, "GET", &path_of(&uri)).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let response = match s.mail.fetch(&call.mailbox, &id) {
        Some(m) => (
            [(header::CONTENT_TYPE, "text/plain")],
            m.raw.as_ref().clone(),
        )
            .into_response(),
        None => graph_error(
            StatusCode::NOT_FOUND,
            "ErrorItemNotFound",
            "The specified object was not found in the store.",
        ),
    };
    call.finish(response)
}

/// `POST /v1.0/users/{upn}/messages/{id}/move` `{"destinationId": …}` → `201` with the
/// moved message under its new id.
pub(crate) async fn move_to(
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
    let destination = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("destinationId")?.as_str().map(str::to_owned));
    let Some(destination) = destination else {
        return call.finish(graph_error(
            StatusCode::BAD_REQUEST,
            "ErrorInvalidRequest",
            "The body must be a JSON object with a 'destinationId' string.",
        ));
    };
    let response = match s.mail.move_message(&call.mailbox, &id, &destination) {
        Ok(m) => {
            let folder_id = s
                .mail
                .folder_id(&call.mailbox, &destination)
                .unwrap_or(destination);
            (
                StatusCode::CREATED,
                Json(Value::Object(message_json(&m, &folder_id))),
            )
                .into_response()
        }
        Err(StoreError::NoSuchFolder | StoreError::NoSuchMessage | StoreError::FolderExists) => {
            graph_error(
                StatusCode::NOT_FOUND,
                "ErrorItemNotFound",
                "The specified object was not found in the store.",
            )
        }
    };
    call.finish(response)
}

/// `DELETE /v1.0/users/{upn}/messages/{id}` and `POST …/{id}/permanentDelete` → `204`
/// (Exchange moves the first to Deleted Items; here both take it out of the mailbox).
pub(crate) async fn delete(
    State(s): State<Arc<Shared>>,
    Path((upn, id)): Path<(String, String)>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let method = if uri.path().ends_with("/permanentDelete") {
        "POST"
    } else {
        "DELETE"
    };
    let mut call = match Call::begin(&s, &headers, &upn, method, &path_of(&uri)).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let response = match s.mail.delete_message(&call.mailbox, &id) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(_) => graph_error(
            StatusCode::NOT_FOUND,
            "ErrorItemNotFound",
            "The specified object was not found in the store.",
        ),
    };
    call.finish(response)
}
