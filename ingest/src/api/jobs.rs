//! `POST /v1/jobs[?callback_url=URL]` (one job; the callback goes to its batch), `GET /v1/jobs/{id}` (its record and events) and
//! `GET /v1/jobs?batch=&state=&recipient=&since=&after=&limit=` (a page of jobs).

use std::collections::HashMap;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use mailpipe_common::amqp::PublishError;
use mailpipe_common::domain::{BatchId, EmailAddress, JobId};
use serde_json::json;

use super::error::ApiError;
use super::roles::Caller;
use super::{AppState, ownership};
use crate::batch::conflict_reason;
use crate::metrics;
use crate::publish::Outcome;
use crate::records::JobFilter;

pub async fn submit(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Query(query) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()).field("query"))?;
    let callback = state.callback_url(query.get("callback_url")).await?;
    // The smaller of the request's and the job's limit applies, and is the one named.
    let settings = &state.settings;
    let limit = if settings.limits.max_job_bytes < settings.max_request_bytes {
        super::BodyLimit {
            bytes: settings.limits.max_job_bytes,
            name: "ingest.limits.max_job_bytes",
        }
    } else {
        super::BodyLimit {
            bytes: settings.max_request_bytes,
            name: "ingest.max_request_bytes",
        }
    };
    let ct = super::media_type(&headers);
    if ct != "application/json" {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type {ct:?}: send application/json"),
        )
        .field("content-type"));
    }
    let timeout = std::time::Duration::from_millis(state.settings.body_read_timeout_ms);
    let bytes = super::read_limited(body, &headers, limit, timeout).await?;
    let job = state.validator.check(&bytes).map_err(|invalid| {
        metrics::rejected(&invalid.errors, invalid.malformed);
        let status = if invalid.malformed {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        };
        let first = &invalid.errors[0];
        let error = if invalid.malformed {
            format!("malformed JSON: {}", first.reason)
        } else {
            first.to_string()
        };
        ApiError::new(status, error)
            .field(first.field.clone())
            .errors(&invalid.errors)
    })?;
    if callback.is_some() && job.batch.is_none() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "callback_url: a callback belongs to a batch; give the job a `batch`",
        )
        .field("callback_url"));
    }
    if caller.confined_to().is_some() {
        let Some(batch) = &job.batch else {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "batch: a `submit` token's jobs belong to one of its batches (its owner label is recorded there); give the job a `batch`",
            )
            .field("batch"));
        };
        state.database_ready()?;
        ownership::may_submit_to(&state, &caller, batch).await?;
    }
    state.database_ready()?;
    let id = job.id.clone();
    let batch = job.batch.clone();
    // The job's batch gets its row (owner, callback) once the job is accepted, before it
    // is published.
    let published = state
        .publisher
        .publish_one(job, callback.as_deref(), caller.opener())
        .await;
    match published {
        Ok(Outcome::Accepted) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "id": id, "status": "accepted" })),
        )
            .into_response()),
        Ok(Outcome::Duplicate) => {
            let status = state
                .records
                .job(&id)
                .await
                .ok()
                .flatten()
                .map(|j| json!(j.status))
                .unwrap_or(json!("accepted"));
            Ok((
                StatusCode::OK,
                Json(json!({ "id": id, "status": status, "duplicate": true })),
            )
                .into_response())
        }
        Ok(Outcome::InFlight) => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("job {id} is being accepted by another request right now; retry"),
        )
        .field("id")),
        Ok(Outcome::Suppressed(refusal)) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            refusal.to_string(),
        )
        .field(refusal.field.clone())
        .errors(std::slice::from_ref(&refusal))),
        Ok(Outcome::NotYours) => match &batch {
            Some(batch) => Err(ownership::not_yours(batch)),
            None => Err(ApiError::unavailable("the job was not accepted (retry)")),
        },
        Ok(Outcome::Conflict) => {
            Err(ApiError::new(StatusCode::CONFLICT, conflict_reason(&id)).field("id"))
        }
        Err(PublishError::Store(e)) => Err((*e).into()),
        Err(e) => {
            tracing::error!(job_id = %id, error = %e, "publish failed");
            Err(ApiError::unavailable(format!(
                "the job was not accepted (retry): {e}"
            )))
        }
    }
}

pub async fn status(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = JobId::parse(&id)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()).field("id"))?;
    state.database_ready()?;
    let unknown = || ApiError::new(StatusCode::NOT_FOUND, format!("no job {id} known")).field("id");
    let Some(job) = state.records.job(&id).await? else {
        return Err(unknown());
    };
    // A `submit` token sees the jobs of its own batches only.
    if caller.confined_to().is_some() {
        let Some(batch) = &job.batch else {
            return Err(unknown());
        };
        ownership::visible(&state, &caller, batch)
            .await
            .map_err(|_| unknown())?;
    }
    Ok(Json(job).into_response())
}

/// Default page size of `GET /v1/jobs`.
pub const DEFAULT_PAGE: u32 = 100;

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
    Ok(Json(state.records.jobs(&filter).await?).into_response())
}

/// The query parameters, each checked and named when wrong.
fn parse_filter(query: &HashMap<String, String>) -> Result<JobFilter, ApiError> {
    let bad = |field: &str, why: String| ApiError::new(StatusCode::BAD_REQUEST, why).field(field);
    for key in query.keys() {
        if !["batch", "state", "recipient", "since", "after", "limit"].contains(&key.as_str()) {
            return Err(bad(
                key,
                format!("unknown parameter {key:?}: batch, state, recipient, since, after, limit"),
            ));
        }
    }
    let mut filter = JobFilter {
        limit: DEFAULT_PAGE,
        ..JobFilter::default()
    };
    if let Some(b) = query.get("batch") {
        filter.batch = Some(BatchId::parse(b).map_err(|e| bad("batch", e.to_string()))?);
    }
    if let Some(s) = query.get("state") {
        filter.state = Some(
            s.parse()
                .map_err(|e: mailpipe_common::store::UnknownState| bad("state", e.to_string()))?,
        );
    }
    if let Some(r) = query.get("recipient") {
        let address = EmailAddress::parse(r)
            .map_err(|e| bad("recipient", format!("{r:?} is not an email address: {e}")))?;
        filter.recipient = Some(address);
    }
    if let Some(s) = query.get("since") {
        let since = chrono::DateTime::parse_from_rfc3339(s).map_err(|e| {
            bad(
                "since",
                format!("{s:?} is not an RFC 3339 time (2026-11-30T00:00:00Z): {e}"),
            )
        })?;
        filter.since = Some(since.with_timezone(&chrono::Utc));
    }
    if let Some(a) = query.get("after") {
        filter.after = Some(JobId::parse(a).map_err(|e| bad("after", e.to_string()))?);
    }
    if let Some(l) = query.get("limit") {
        filter.limit = l
            .parse()
            .ok()
            .filter(|n| (1..=crate::records::MAX_PAGE).contains(n))
            .ok_or_else(|| {
                bad(
                    "limit",
                    format!("{l:?}: a number from 1 to {}", crate::records::MAX_PAGE),
                )
            })?;
    }
    Ok(filter)
}
