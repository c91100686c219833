//! The Needs-a-decision page: uncertain sends (mark sent, or resend), dead letters
//! (replay), webhook deliveries failing or pending. Each action is the store or dead
//! letter call `mailpipe-ingest uncertain`, `dead replay` and the API make.

use std::collections::HashMap;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use mailpipe_common::domain::{BatchId, JobId};
use mailpipe_common::store::{DeliveryFilter, Resolution};

use super::ConsoleState;
use super::page::{self, Page};
use super::session::{CheckedForm, Session};
use crate::dead::{self, DeadFilter};

/// Rows shown per list.
const SHOWN: i64 = 200;

/// The jobs whose dead letters a replay leaves alone (they are delivered).
async fn delivered(state: &ConsoleState) -> Result<std::collections::HashSet<String>, Response> {
    state
        .api
        .records
        .delivered_with_dead_letters()
        .await
        .map_err(page::store_error)
}

/// The header the page's script sends when it refreshes the live part.
const REFRESH: &str = "x-console-refresh";

pub async fn page(
    State(state): State<ConsoleState>,
    Extension(session): Extension<Session>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let batch = match query.get("batch").filter(|b| !b.is_empty()) {
        Some(b) => match BatchId::parse(b) {
            Ok(b) => Some(b),
            Err(e) => return page::error(StatusCode::BAD_REQUEST, &format!("batch: {e}")),
        },
        None => None,
    };
    let store = state.api.records.store();
    let mut uncertain = match store.uncertain_sends(SHOWN).await {
        Ok(u) => u,
        Err(e) => return page::store_error(e),
    };
    if let Some(b) = &batch {
        uncertain.retain(|u| u.batch.as_deref() == Some(b.as_str()));
    }
    let webhooks = match (
        store
            .webhook_deliveries(DeliveryFilter::Failed, SHOWN)
            .await,
        store
            .webhook_deliveries(DeliveryFilter::Pending, SHOWN)
            .await,
    ) {
        (Ok(failed), Ok(pending)) => {
            let mut all = failed;
            all.extend(pending.into_iter().filter(|p| p.attempts == 0));
            all
        }
        (Err(e), _) | (_, Err(e)) => return page::store_error(e),
    };
    // Reading the dead letters walks the whole dead-letter queue, holding each message
    // until the pass ends: done when the page is opened, not on every refresh (the dead
    // letters sit outside the live part).
    if headers.contains_key(REFRESH) {
        return Page::new("decisions", "Needs a decision")
            .with("batch", batch)
            .with("uncertain", uncertain)
            .with("webhooks", webhooks)
            .render(&session);
    }
    let delivered_ids = match delivered(&state).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let filter = DeadFilter {
        batch: batch.clone(),
        job: None,
    };
    let broker = state.api.publisher.pipeline().broker();
    let (dead_letters, dead_error) = match dead::list(broker, &filter, |id: &JobId| {
        delivered_ids.contains(id.as_str())
    })
    .await
    {
        Ok(listing) => (Some(listing), None),
        Err(e) => {
            tracing::warn!(error = %e, "console: listing dead letters failed");
            (
                None,
                Some("the dead letters could not be read from RabbitMQ; see ingest's log"),
            )
        }
    };
    Page::new("decisions", "Needs a decision")
        .with("batch", batch)
        .with("uncertain", uncertain)
        .with("dead", dead_letters)
        .with("dead_error", dead_error)
        .with("webhooks", webhooks)
        .render(&session)
}

fn job_id(raw: &str) -> Result<JobId, String> {
    JobId::parse(raw).map_err(|e| format!("job: {e}"))
}

/// `POST /console/decisions/uncertain/{job}/resend|mark-sent`.
pub async fn settle(
    State(state): State<ConsoleState>,
    Path((job, verb)): Path<(String, String)>,
    CheckedForm(_): CheckedForm,
) -> Response {
    let job = match job_id(&job) {
        Ok(j) => j,
        Err(m) => return page::error(StatusCode::BAD_REQUEST, &m),
    };
    let resolution = match verb.as_str() {
        "resend" => Resolution::Resend,
        "mark-sent" => Resolution::MarkedSent,
        _ => return page::error(StatusCode::NOT_FOUND, "use resend or mark-sent"),
    };
    let why = "marked sent by an operator after an uncertain send (console)";
    match state
        .api
        .records
        .store()
        .settle_uncertain(&job, resolution, why, None)
        .await
    {
        Ok(true) => Redirect::to("/console/decisions").into_response(),
        Ok(false) => page::error(
            StatusCode::CONFLICT,
            &format!("{job}: no uncertain send waiting for a decision"),
        ),
        Err(e) => page::store_error(e),
    }
}

/// `POST /console/decisions/dead/{job}/replay`: that job's dead letters back to their
/// stage.
pub async fn replay(
    State(state): State<ConsoleState>,
    Extension(session): Extension<Session>,
    Path(job): Path<String>,
    CheckedForm(_): CheckedForm,
) -> Response {
    let job = match job_id(&job) {
        Ok(j) => j,
        Err(m) => return page::error(StatusCode::BAD_REQUEST, &m),
    };
    let delivered_ids = match delivered(&state).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let filter = DeadFilter {
        batch: None,
        job: Some(job.clone()),
    };
    let pipeline = state.api.publisher.pipeline();
    match dead::replay(pipeline, &filter, false, |id: &JobId| {
        delivered_ids.contains(id.as_str())
    })
    .await
    {
        Ok(report) if report.skipped.is_empty() => {
            Redirect::to("/console/decisions").into_response()
        }
        Ok(report) => Page::new("error", "Replay")
            .with("status", 200)
            .with(
                "message",
                report
                    .skipped
                    .iter()
                    .map(|s| format!("{job}: left in dead letters: {}", s.why))
                    .collect::<Vec<_>>()
                    .join("; "),
            )
            .render(&session),
        Err(e) => {
            tracing::warn!(error = %e, "console: replay failed");
            page::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the replay failed (RabbitMQ); see ingest's log; nothing was lost",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refresh_renders_without_reading_dead_letters() {
        let none: Vec<String> = Vec::new();
        let response = Page::new("decisions", "Needs a decision")
            .with("batch", None::<String>)
            .with("uncertain", &none)
            .with("webhooks", &none)
            .render_with_csrf("c");
        assert_eq!(response.status(), StatusCode::OK);
    }
}
