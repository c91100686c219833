//! `POST /v1/batches?batch=ID[&partial=true][&callback_url=URL]` (JSONL or CSV, streamed),
//! `GET /v1/batches/{id}` (counts, per mailbox, failures, ETA: `records::BatchReport`) and
//! `POST /v1/batches/{id}/pause|resume|cancel`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use std::time::Duration;

use futures::StreamExt;
use mailpipe_common::domain::BatchId;
use mailpipe_common::store::BatchControl;
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::error::ApiError;
use super::roles::Caller;
use super::{AppState, ownership};
use crate::batch::{ImportError, ImportOptions, Progress, import};
use crate::batch_reader::Format;

pub async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Query(query) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()).field("query"))?;
    let batch =
        match query.get("batch") {
            Some(b) => Some(BatchId::parse(b).map_err(|e| {
                ApiError::new(StatusCode::BAD_REQUEST, e.to_string()).field("batch")
            })?),
            None => None,
        };
    let partial = match query.get("partial").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("partial={other:?}: use true or false"),
            )
            .field("partial"));
        }
    };
    let callback = state.callback_url(query.get("callback_url")).await?;
    let ct = super::media_type(&headers);
    let format = Format::from_content_type(&ct).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type {ct:?}: send application/x-ndjson or text/csv"),
        )
        .field("content-type")
    })?;
    let max_bytes = state.settings.max_batch_bytes;
    if super::content_length(&headers).is_some_and(|n| n > max_bytes) {
        return Err(too_large(max_bytes));
    }
    state.database_ready()?;
    if let Some(batch) = &batch {
        ownership::may_submit_to(&state, &caller, batch).await?;
    }
    // Each upload being checked holds a blocking thread: their number is capped.
    let Ok(_slot) = state.batch_slots.clone().try_acquire_owned() else {
        return Err(ApiError::unavailable(format!(
            "{} batch uploads are being read already (ingest.max_concurrent_batches); retry shortly",
            state.settings.max_concurrent_batches
        )));
    };

    // `import` records the callback once the upload is accepted, before it publishes.
    let idle = Duration::from_millis(state.settings.body_read_timeout_ms);
    let input = SyncIoBridge::new(StreamReader::new(Box::pin(with_idle_timeout(body, idle))));
    let options = ImportOptions {
        batch,
        partial,
        max_bytes,
        callback_url: callback,
        owner: caller.owner.clone(),
        confined: caller.confined_to().is_some(),
    };
    let result = import(
        input,
        format,
        options,
        state.validator.clone(),
        &state.publisher,
        Arc::new(Progress::default()),
    )
    .await;
    match result {
        Ok(report) => Ok((StatusCode::ACCEPTED, Json(report)).into_response()),
        Err(ImportError::Rejected(report)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{} of {} lines are bad; nothing was published (fix them, or send with ?partial=true)", report.rejected, report.lines),
        )
        .errors(&report.errors)
        .extra(&serde_json::json!({ "batch": report.batch, "lines": report.lines, "rejected": report.rejected, "accepted": 0, "error_counts": report.error_counts }))),
        Err(ImportError::Conflict(report)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("{} job ids were accepted before with different content; nothing was published (give them new ids, or send with ?partial=true)", report.conflicts),
        )
        .errors(&report.errors)
        .extra(&serde_json::json!({ "batch": report.batch, "lines": report.lines, "conflicts": report.conflicts, "accepted": 0 }))),
        Err(ImportError::Unavailable(e)) => Err(e.into()),
        Err(ImportError::NotYours(batch)) => Err(ownership::not_yours(&batch)),
        Err(ImportError::Header { column, reason }) => {
            Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("CSV header: column {column:?}: {reason}")).field(column))
        }
        Err(ImportError::TooLarge { limit }) => Err(too_large(limit)),
        Err(e @ ImportError::RecordTooLong { .. }) => {
            Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("{e}; nothing was published")).field("csv"))
        }
        Err(ImportError::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
            Err(super::body_timeout(idle))
        }
        Err(ImportError::Io(e)) => Err(ApiError::new(StatusCode::BAD_REQUEST, format!("reading the upload: {e}")).field("body")),
        Err(ImportError::Publish { report, source }) => {
            tracing::error!(batch = %report.batch, accepted = report.accepted, error = %source, "batch publish stopped");
            Err(ApiError::unavailable(format!(
                "publishing stopped after {} jobs: {source}; send the batch again: accepted ids are skipped",
                report.accepted
            ))
            .extra(&report))
        }
    }
}

/// The body as a stream of chunks that fails with `TimedOut` when no chunk arrives for
/// `idle`: a client trickling its upload cannot hold a thread forever.
fn with_idle_timeout(
    body: Body,
    idle: Duration,
) -> impl futures::Stream<Item = std::io::Result<axum::body::Bytes>> {
    futures::stream::unfold(Some(body.into_data_stream()), move |stream| async move {
        let mut stream = stream?;
        match tokio::time::timeout(idle, stream.next()).await {
            Ok(Some(chunk)) => Some((chunk.map_err(std::io::Error::other), Some(stream))),
            Ok(None) => None,
            Err(_) => Some((
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no data for {} ms", idle.as_millis()),
                )),
                None,
            )),
        }
    })
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the upload exceeds {limit} bytes (ingest.max_batch_bytes); split it"),
    )
    .field("body")
}

pub async fn status(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = BatchId::parse(&id)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()).field("batch"))?;
    state.database_ready()?;
    ownership::visible(&state, &caller, &id).await?;
    match state.records.batch_report(&id, chrono::Utc::now()).await? {
        Some(b) => Ok(Json(b).into_response()),
        None => Err(ownership::unknown_batch(&id)),
    }
}

pub async fn pause(
    state: State<AppState>,
    caller: Caller,
    id: Path<String>,
) -> Result<Response, ApiError> {
    control(state, caller, id, BatchControl::Paused).await
}

pub async fn resume(
    state: State<AppState>,
    caller: Caller,
    id: Path<String>,
) -> Result<Response, ApiError> {
    control(state, caller, id, BatchControl::Running).await
}

pub async fn cancel(
    state: State<AppState>,
    caller: Caller,
    id: Path<String>,
) -> Result<Response, ApiError> {
    control(state, caller, id, BatchControl::Cancelled).await
}

/// Pause, resume or cancel: answers the batch's report as it stands after the change.
/// A batch's owner never changes once its row exists, so checking it first is final.
async fn control(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    to: BatchControl,
) -> Result<Response, ApiError> {
    let id = BatchId::parse(&id)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()).field("batch"))?;
    state.database_ready()?;
    ownership::visible(&state, &caller, &id).await?;
    let store = state.records.store();
    let Some((now, _)) = store.set_batch_control(id.as_str(), to).await? else {
        return Err(ownership::unknown_batch(&id));
    };
    if now != to {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("batch {id} is cancelled: it cannot be {}", to.as_str()),
        )
        .field("batch"));
    }
    match state.records.batch_report(&id, chrono::Utc::now()).await? {
        Some(report) => Ok(Json(report).into_response()),
        None => Err(ownership::unknown_batch(&id)),
    }
}
