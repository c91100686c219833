//! Mail folders: list (optionally `$filter=displayName eq '…'`) and create, so a client can
//! find or create the folder it moves handled messages to.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::graph::call::{Call, graph_error};
use crate::graph::odata::parse_eq_filter;
use crate::mail_store::StoreError;
use crate::state::Shared;

fn folder_json(id: &str, display_name: &str, total: usize) -> Value {
    json!({
        "id": id,
        "displayName": display_name,
        "parentFolderId": "msgfolderroot",
        "childFolderCount": 0,
        "unreadItemCount": total,
        "totalItemCount": total,
        "isHidden": false,
    })
}

/// `GET /v1.0/users/{upn}/mailFolders[?$filter=displayName eq '…']`
pub(crate) async fn list(
    State(s): State<Arc<Shared>>,
    Path(upn): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let mut call = match Call::begin(&s, &headers, &upn, "GET", &path).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let filter = match q.get("$filter").map(|f| parse_eq_filter(f)) {
        None => None,
        Some(Ok(f)) if f.property.eq_ignore_ascii_case("displayName") => Some(f.value),
        Some(Ok(f)) => {
            let m = format!("Filtering on '{}' is not supported.", f.property);
            return call.finish(graph_error(StatusCode::BAD_REQUEST, "BadRequest", &m));
        }
        Some(Err(m)) => {
            return call.finish(graph_error(StatusCode::BAD_REQUEST, "BadRequest", &m));
        }
    };
    let value: Vec<Value> = s
        .mail
        .folder_list(&call.mailbox)
        .into_iter()
        .filter(|(_, name, _)| filter.as_ref().is_none_or(|f| f.eq_ignore_ascii_case(name)))
        .map(|(id, name, total)| folder_json(&id, &name, total))
        .collect();
    call.finish(Json(json!({ "value": value })).into_response())
}

/// `POST /v1.0/users/{upn}/mailFolders` `{"displayName": …}` → `201`, or `409
/// ErrorFolderExists`.
pub(crate) async fn create(
    State(s): State<Arc<Shared>>,
    Path(upn): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    let mut call = match Call::begin(&s, &headers, &upn, "POST", uri.path()).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let name = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("displayName")?.as_str().map(str::to_owned))
        .filter(|n| !n.trim().is_empty());
    let Some(name) = name else {
        return call.finish(graph_error(
            StatusCode::BAD_REQUEST,
            "ErrorInvalidRequest",
            "The body must be a JSON object with a non-empty 'displayName'.",
        ));
    };
    let response = match s.mail.create_folder(&call.mailbox, &name) {
        Ok(id) => (StatusCode::CREATED, Json(folder_json(&id, &name, 0))).into_response(),
        Err(StoreError::FolderExists) => graph_error(
            StatusCode::CONFLICT,
            "ErrorFolderExists",
            "A folder with the specified name already exists.",
        ),
        Err(_) => graph_error(
            StatusCode::NOT_FOUND,
            "ErrorItemNotFound",
            "The specified object was not found in the store.",
        ),
    };
    call.finish(response)
}
