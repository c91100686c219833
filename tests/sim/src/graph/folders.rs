//! Mail folders: list (optionally `$filter=displayName eq '…'`), get one (by id or
//! well-known name, with `totalItemCount` and `sizeInBytes`: what a client watches a
//! mailbox's storage by) and create, so a client can find or create the folder it moves
//! handled messages to.

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
use crate::mail_store::{FolderUsage, StoreError};
use crate::state::Shared;

fn folder_json(f: &FolderUsage) -> Value {
    json!({
        "id": f.id,
        "displayName": f.display_name,
        "parentFolderId": "msgfolderroot",
        "childFolderCount": 0,
        "unreadItemCount": f.total_item_count,
        "totalItemCount": f.total_item_count,
        "sizeInBytes": f.size_in_bytes,
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
        .filter(|u| {
            filter
                .as_ref()
                .is_none_or(|f| f.eq_ignore_ascii_case(&u.display_name))
        })
        .map(|u| folder_json(&u))
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
        Ok(id) => {
            let created = FolderUsage {
                id,
                display_name: name,
                total_item_count: 0,
                size_in_bytes: 0,
            };
            (StatusCode::CREATED, Json(folder_json(&created))).into_response()
        }
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

/// `GET /v1.0/users/{upn}/mailFolders/{folder}` (an id or a well-known name such as
/// `sentitems`): the folder with its item count and size. `$select` is accepted and the
/// whole resource answered (Graph adds unselected properties too, in places).
pub(crate) async fn get_one(
    State(s): State<Arc<Shared>>,
    Path((upn, folder)): Path<(String, String)>,
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
    let response = match s.mail.folder_usage(&call.mailbox, &folder) {
        Some(u) => Json(folder_json(&u)).into_response(),
        None => graph_error(
            StatusCode::NOT_FOUND,
            "ErrorItemNotFound",
            "The specified object was not found in the store.",
        ),
    };
    call.finish(response)
}
