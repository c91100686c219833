//! `GET /v1/batches?state=&created_from=&created_to=&q=&cursor=&limit=`: batches newest
//! first, a page at a time (`records::BatchPage`).

use std::collections::HashMap;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};

use super::AppState;
use super::error::ApiError;
use super::roles::Caller;
use crate::records::{BatchFilter, MAX_BATCH_PAGE};

const PARAMETERS: [&str; 6] = [
    "state",
    "created_from",
    "created_to",
    "q",
    "cursor",
    "limit",
];

/// Longest `q` accepted (a batch id is at most this long).
const MAX_TEXT: usize = mailpipe_common::domain::BatchId::MAX_LEN;

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()).field("query"))?;
    let mut filter = parse_filter(&query)?;
    // A `submit` token lists what belongs to its own batches only.
    filter.owner = caller.list_filter();
    state.database_ready()?;
    let page = state.records.batches(&filter, Utc::now()).await?;
    Ok(Json(page).into_response())
}

fn time(field: &str, s: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("{field}: {s:?} is not an RFC 3339 time (2026-11-30T00:00:00Z): {e}"),
            )
            .field(field)
        })
}

/// The query parameters, each checked and named when wrong.
pub(crate) fn parse_filter(query: &HashMap<String, String>) -> Result<BatchFilter, ApiError> {
    let bad = |field: &str, why: String| {
        ApiError::new(StatusCode::BAD_REQUEST, format!("{field}: {why}")).field(field)
    };
    if let Some(key) = query.keys().find(|k| !PARAMETERS.contains(&k.as_str())) {
        return Err(bad(
            key,
            format!("unknown parameter; use {}", PARAMETERS.join(", ")),
        ));
    }
    let mut filter = BatchFilter::default();
    if let Some(s) = query.get("state") {
        filter.state = Some(s.parse().map_err(|e| bad("state", e))?);
    }
    if let Some(s) = query.get("created_from") {
        filter.created_from = Some(time("created_from", s)?);
    }
    if let Some(s) = query.get("created_to") {
        filter.created_to = Some(time("created_to", s)?);
    }
    if let Some(q) = query.get("q").filter(|q| !q.is_empty()) {
        if q.chars().count() > MAX_TEXT {
            return Err(bad("q", format!("longer than {MAX_TEXT} characters")));
        }
        filter.text = Some(q.clone());
    }
    if let Some(c) = query.get("cursor") {
        filter.cursor = Some(c.parse().map_err(|e| bad("cursor", e))?);
    }
    if let Some(l) = query.get("limit") {
        filter.limit = l
            .parse()
            .ok()
            .filter(|n| (1..=MAX_BATCH_PAGE).contains(n))
            .ok_or_else(|| {
                bad(
                    "limit",
                    format!("{l:?}: a number from 1 to {MAX_BATCH_PAGE}"),
                )
            })?;
    }
    Ok(filter)
}
