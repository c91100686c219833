//! The Batch page: counts that add up, failures grouped by reply code with examples,
//! sends per mailbox, links to its dead letters and uncertain sends; and pause, resume,
//! cancel (each asks for a confirmation first), through the same store call as
//! `POST /v1/batches/{id}/pause|resume|cancel` and `mailpipe-ingest batch`.

use std::collections::BTreeMap;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use chrono::Utc;
use mailpipe_common::domain::BatchId;
use mailpipe_common::store::BatchControl;
use serde::Serialize;

use super::ConsoleState;
use super::page::{self, Page};
use super::session::{CheckedForm, Session};
use crate::records::progress::{MinuteProgress, PROGRESS_MINUTES};
use crate::records::{BatchState, Failure};

/// Examples shown per reply code.
const EXAMPLES: usize = 3;

/// Failures that share a reply code.
#[derive(Debug, Serialize)]
struct FailureGroup {
    /// `550 5.1.1`, or the reason when there was no reply.
    code: String,
    count: usize,
    examples: Vec<Failure>,
}

fn group(failures: &[Failure]) -> Vec<FailureGroup> {
    let mut groups: BTreeMap<String, FailureGroup> = BTreeMap::new();
    for f in failures {
        let code = match (&f.smtp, f.refused_recipients.first()) {
            (Some(r), _) => format!("{} {}", r.code, r.enhanced.as_deref().unwrap_or("")),
            (None, Some(refusal)) => format!(
                "{} {} (recipient refused)",
                refusal.reply.code,
                refusal.reply.enhanced.as_deref().unwrap_or("")
            ),
            (None, None) => "no SMTP reply".to_owned(),
        };
        let g = groups.entry(code.clone()).or_insert(FailureGroup {
            code: code.trim().to_owned(),
            count: 0,
            examples: Vec::new(),
        });
        g.count += 1;
        if g.examples.len() < EXAMPLES {
            g.examples.push(f.clone());
        }
    }
    let mut out: Vec<FailureGroup> = groups.into_values().collect();
    out.sort_by_key(|g| std::cmp::Reverse(g.count));
    out
}

fn batch_id(raw: &str) -> Result<BatchId, String> {
    BatchId::parse(raw).map_err(|e| format!("batch: {e}"))
}

pub async fn page(
    State(state): State<ConsoleState>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    let id = match batch_id(&id) {
        Ok(id) => id,
        Err(m) => return page::error(StatusCode::BAD_REQUEST, &m),
    };
    let records = &state.api.records;
    match records.batch_report(&id, Utc::now()).await {
        Ok(Some(report)) => {
            let chart = match records.batch_progress(id.as_str()).await {
                Ok(minutes) => ProgressChart::of(&minutes),
                Err(e) => return page::store_error(e),
            };
            Page::new("batch", &format!("Batch {id}"))
                .with("state", BatchState::of(&report))
                .with("groups", group(&report.failures.items))
                .with("chart_width", PROGRESS_MINUTES * BAR_WIDTH)
                .with("chart", chart)
                .with("report", report)
                .render(&session)
        }
        Ok(None) => page::error(StatusCode::NOT_FOUND, &format!("no batch {id} known")),
        Err(e) => page::store_error(e),
    }
}

/// The batch's progress over time as bars (one per minute, delivered above failed), laid
/// out here so the page draws it as plain SVG: no script, nothing the CSP must allow.
#[derive(Debug, Serialize)]
struct ProgressChart {
    bars: Vec<Bar>,
    /// The busiest minute's jobs (the chart's full height).
    peak: i64,
    first: Option<String>,
    last: Option<String>,
}

#[derive(Debug, Serialize)]
struct Bar {
    x: i64,
    /// Heights in the chart's units (0..=CHART_HEIGHT), and where each starts.
    delivered_y: i64,
    delivered_h: i64,
    failed_y: i64,
    failed_h: i64,
    title: String,
}

/// The chart's drawing box: one bar 4 units wide per minute, 100 units high.
const BAR_WIDTH: i64 = 4;
const CHART_HEIGHT: i64 = 100;

impl ProgressChart {
    fn of(minutes: &[MinuteProgress]) -> Self {
        let peak = minutes
            .iter()
            .map(|m| m.delivered + m.failed)
            .max()
            .unwrap_or(0)
            .max(1);
        let Some(start) = minutes.first().map(|m| m.minute) else {
            return Self {
                bars: Vec::new(),
                peak: 0,
                first: None,
                last: None,
            };
        };
        let scale = |n: i64| (n * CHART_HEIGHT + peak - 1) / peak;
        let bars = minutes
            .iter()
            .map(|m| {
                let delivered_h = scale(m.delivered);
                let failed_h = scale(m.failed);
                Bar {
                    x: (m.minute - start).num_minutes() * BAR_WIDTH,
                    delivered_y: CHART_HEIGHT - delivered_h,
                    delivered_h,
                    failed_y: CHART_HEIGHT - delivered_h - failed_h,
                    failed_h,
                    title: format!(
                        "{}: {} delivered, {} failed",
                        m.minute.format("%H:%M"),
                        m.delivered,
                        m.failed
                    ),
                }
            })
            .collect();
        Self {
            bars,
            peak,
            first: minutes
                .first()
                .map(|m| m.minute.format("%H:%M").to_string()),
            last: minutes.last().map(|m| m.minute.format("%H:%M").to_string()),
        }
    }
}

fn verb(raw: &str) -> Option<(BatchControl, &'static str)> {
    match raw {
        "pause" => Some((BatchControl::Paused, "pause")),
        "resume" => Some((BatchControl::Running, "resume")),
        "cancel" => Some((BatchControl::Cancelled, "cancel")),
        _ => None,
    }
}

/// `POST /console/batches/{id}/pause|resume|cancel`: without `confirmed=yes`, a page that
/// asks; with it, the change, then back to the batch.
pub async fn control(
    State(state): State<ConsoleState>,
    Extension(session): Extension<Session>,
    Path((id, raw_verb)): Path<(String, String)>,
    CheckedForm(form): CheckedForm,
) -> Response {
    let id = match batch_id(&id) {
        Ok(id) => id,
        Err(m) => return page::error(StatusCode::BAD_REQUEST, &m),
    };
    let Some((to, verb)) = verb(&raw_verb) else {
        return page::error(StatusCode::NOT_FOUND, "use pause, resume or cancel");
    };
    if form.get("confirmed").map(String::as_str) != Some("yes") {
        let warning = match to {
            BatchControl::Cancelled => {
                "Every job of it not sent yet ends cancelled and is never sent. This is final."
            }
            BatchControl::Paused => {
                "No further job of it is sent until it is resumed; sends under way finish."
            }
            BatchControl::Running => "The rest of it is sent.",
        };
        return Page::new("confirm", &format!("{verb} {id}?"))
            .with("batch", &id)
            .with("verb", verb)
            .with("warning", warning)
            .render(&session);
    }
    match state
        .api
        .records
        .store()
        .set_batch_control(id.as_str(), to)
        .await
    {
        Ok(Some((now, _))) if now == to => {
            Redirect::to(&format!("/console/batches/{id}")).into_response()
        }
        Ok(Some(_)) => page::error(
            StatusCode::CONFLICT,
            &format!("batch {id} is cancelled: it cannot be {}", to.as_str()),
        ),
        Ok(None) => page::error(StatusCode::NOT_FOUND, &format!("no batch {id} known")),
        Err(e) => page::store_error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailpipe_common::contract::SmtpReply;
    use mailpipe_common::domain::JobId;
    use mailpipe_common::store::JobState;

    fn failure(id: &str, code: u16, text: &str) -> Failure {
        Failure {
            job_id: JobId::parse(id).unwrap(),
            status: JobState::Failed,
            at: Utc::now(),
            attempt: 1,
            mailbox: None,
            reason: None,
            smtp: Some(SmtpReply::new(code, text)),
            refused_recipients: Vec::new(),
        }
    }

    #[test]
    fn failures_group_by_reply_code_most_first_with_a_few_examples() {
        let mut items: Vec<Failure> = (0..5)
            .map(|i| failure(&format!("a{i}"), 550, "5.1.1 RESOLVER.ADR.RecipNotFound"))
            .collect();
        items.push(failure("b", 554, "5.6.0 Corrupt message content"));
        let groups = group(&items);
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].code, "550 5.1.1");
        assert_eq!(groups[0].count, 5);
        assert_eq!(groups[0].examples.len(), EXAMPLES);
        assert_eq!(groups[1].code, "554 5.6.0");
    }
}
