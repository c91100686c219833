//! The Suppressions page: search the list (any part of an address), add an address with
//! a reason, remove one; the same store calls as `/v1/suppressions` and `suppress`.

use std::collections::HashMap;

use axum::Extension;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use mailpipe_common::domain::EmailAddress;
use mailpipe_common::store::{MAX_REASON, NewSuppression};

use super::ConsoleState;
use super::page::{self, Page};
use super::session::{CheckedForm, Session};
use crate::api::suppressions::parse_filter;

pub async fn page(
    State(state): State<ConsoleState>,
    Extension(session): Extension<Session>,
    Query(mut query): Query<HashMap<String, String>>,
) -> Response {
    query.retain(|_, v| !v.is_empty());
    let filter = match parse_filter(&query) {
        Ok(f) => f,
        Err(e) => return page::api_error(e),
    };
    match state.api.records.store().list_suppressions(&filter).await {
        Ok(list) => Page::new("suppressions", "Suppressions")
            .with("suppressions", list)
            .with("query", &query)
            .render(&session),
        Err(e) => page::store_error(e),
    }
}

fn address(form: &HashMap<String, String>) -> Result<EmailAddress, String> {
    let raw = form.get("address").map(|a| a.trim()).unwrap_or_default();
    EmailAddress::parse(raw).map_err(|e| format!("address: {raw:?} is not an email address: {e}"))
}

/// `POST /console/suppressions`: `address` and `reason` (1–500 characters, no control
/// characters), recorded as an operator's entry.
pub async fn add(State(state): State<ConsoleState>, CheckedForm(form): CheckedForm) -> Response {
    let address = match address(&form) {
        Ok(a) => a,
        Err(m) => return page::error(StatusCode::UNPROCESSABLE_ENTITY, &m),
    };
    let reason = form.get("reason").map(|r| r.trim()).unwrap_or_default();
    if reason.is_empty()
        || reason.chars().count() > MAX_REASON
        || reason.chars().any(char::is_control)
    {
        return page::error(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("reason: 1 to {MAX_REASON} characters, no control characters"),
        );
    }
    let entry = NewSuppression::by_operator(address, reason, Some("console".into()));
    match state.api.records.store().suppress(&entry).await {
        Ok(_) => Redirect::to("/console/suppressions").into_response(),
        Err(e) => page::store_error(e),
    }
}

/// `POST /console/suppressions/remove`: `address`.
pub async fn remove(State(state): State<ConsoleState>, CheckedForm(form): CheckedForm) -> Response {
    let address = match address(&form) {
        Ok(a) => a,
        Err(m) => return page::error(StatusCode::UNPROCESSABLE_ENTITY, &m),
    };
    match state.api.records.store().unsuppress(&address).await {
        Ok(true) => Redirect::to("/console/suppressions").into_response(),
        Ok(false) => page::error(
            StatusCode::NOT_FOUND,
            &format!("{address} is not on the suppression list"),
        ),
        Err(e) => page::store_error(e),
    }
}
