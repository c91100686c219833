//! `GET /v1/suppressions` (a page of the list), `PUT /v1/suppressions/{address}` (add, with
//! `{"reason": ...}`) and `DELETE /v1/suppressions/{address}` (remove; 404 when absent).

use std::collections::HashMap;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use mailpipe_common::contract::SuppressionSource;
use mailpipe_common::domain::EmailAddress;
use mailpipe_common::store::{MAX_REASON, MAX_SUPPRESSION_PAGE, NewSuppression, SuppressionFilter};
use serde::Deserialize;
use serde_json::json;

use super::AppState;
use super::error::ApiError;

/// Default page size.
pub const DEFAULT_PAGE: u32 = 100;
/// Largest `PUT` body accepted.
const MAX_BODY: usize = 4096;

fn bad(field: &str, why: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, why).field(field)
}

fn address(raw: &str) -> Result<EmailAddress, ApiError> {
    EmailAddress::parse(raw).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("address {raw:?}: {e}"),
        )
        .field("address")
    })
}

pub async fn list(
    State(state): State<AppState>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| bad("query", e.body_text()))?;
    let filter = parse_filter(&query)?;
    state.database_ready()?;
    let items = state.records.store().list_suppressions(&filter).await?;
    let next_after = (items.len() as u32 == filter.limit)
        .then(|| items.last().map(|s| s.address.clone()))
        .flatten();
    Ok(Json(json!({ "suppressions": items, "next_after": next_after })).into_response())
}

/// `address` (a part of the address, any case: `ann@example.com`, `@example.com`),
/// `source`, `after` (the previous page's `next_after`), `limit`.
pub fn parse_filter(query: &HashMap<String, String>) -> Result<SuppressionFilter, ApiError> {
    for key in query.keys() {
        if !["address", "source", "after", "limit"].contains(&key.as_str()) {
            return Err(bad(
                key,
                format!("unknown parameter {key:?}: address, source, after, limit"),
            ));
        }
    }
    let mut filter = SuppressionFilter {
        limit: DEFAULT_PAGE,
        ..SuppressionFilter::default()
    };
    if let Some(a) = query.get("address") {
        if a.is_empty() || a.len() > 254 || a.chars().any(char::is_control) {
            return Err(bad(
                "address",
                "an address or a part of one (1-254 characters)",
            ));
        }
        filter.address = Some(a.clone());
    }
    if let Some(s) = query.get("source") {
        filter.source = Some(SuppressionSource::parse(s).ok_or_else(|| {
            bad(
                "source",
                format!("{s:?}: one of bounce, rcpt_refused, operator"),
            )
        })?);
    }
    if let Some(a) = query.get("after") {
        if a.len() > 254 {
            return Err(bad("after", "the previous page's next_after"));
        }
        filter.after = Some(a.to_ascii_lowercase());
    }
    if let Some(l) = query.get("limit") {
        filter.limit = l
            .parse()
            .ok()
            .filter(|n| (1..=MAX_SUPPRESSION_PAGE).contains(n))
            .ok_or_else(|| {
                bad(
                    "limit",
                    format!("{l:?}: a number from 1 to {MAX_SUPPRESSION_PAGE}"),
                )
            })?;
    }
    Ok(filter)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody {
    reason: String,
}

pub async fn put(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let address = address(&raw)?;
    let timeout = std::time::Duration::from_millis(state.settings.body_read_timeout_ms);
    let limit = super::BodyLimit {
        bytes: MAX_BODY,
        name: "the fixed limit of a suppression's body",
    };
    let bytes = super::read_limited(body, &headers, limit, timeout).await?;
    let body: PutBody = serde_json::from_slice(&bytes).map_err(|e| {
        bad(
            "reason",
            format!("the body must be {{\"reason\": \"...\"}}: {e}"),
        )
    })?;
    let reason = body.reason.trim();
    if let Some(c) = reason.chars().find(|c| c.is_control()) {
        return Err(super::query_guard::control_character("reason", c));
    }
    if reason.is_empty() || reason.chars().count() > MAX_REASON {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("reason: 1 to {MAX_REASON} characters"),
        )
        .field("reason"));
    }
    state.database_ready()?;
    let store = state.records.store();
    let created = store
        .suppress(&NewSuppression::by_operator(
            address.clone(),
            reason,
            Some("api".into()),
        ))
        .await?;
    let entry = store
        .suppressed_among(std::slice::from_ref(&address))
        .await?
        .into_iter()
        .next();
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(entry)).into_response())
}

pub async fn delete(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let address = address(&raw)?;
    state.database_ready()?;
    if state.records.store().unsuppress(&address).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{address} is not on the suppression list"),
        )
        .field("address"))
    }
}
