//! The Batches page: newest first, with progress, counts, state and ETA (the ETA's reason
//! says what binds it), filtered like `GET /v1/batches`.

use std::collections::HashMap;

use axum::Extension;
use axum::extract::{Query, State};
use axum::response::Response;
use chrono::Utc;

use super::ConsoleState;
use super::page::{self, Page};
use super::session::Session;
use crate::api::batch_list::parse_filter;

pub async fn page(
    State(state): State<ConsoleState>,
    Extension(session): Extension<Session>,
    Query(mut query): Query<HashMap<String, String>>,
) -> Response {
    // An empty field of the filter form means "any".
    query.retain(|_, v| !v.is_empty());
    let filter = match parse_filter(&query) {
        Ok(f) => f,
        Err(e) => return page::api_error(e),
    };
    match state.api.records.batches(&filter, Utc::now()).await {
        Ok(batches) => Page::new("batches", "Batches")
            .with("page", batches)
            .with("query", &query)
            .with("states", crate::records::BatchState::ALL)
            .render(&session),
        Err(e) => page::store_error(e),
    }
}
