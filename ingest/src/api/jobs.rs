//! `POST /v1/jobs` (one job) and `GET /v1/jobs/{id}`.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use mailpipe_common::domain::JobId;
use serde_json::json;

use super::AppState;
use super::error::ApiError;
use crate::metrics;
use crate::publish::{Outcome, lock_status};

pub async fn submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let limit = state.settings.max_request_bytes;
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
    state.wait_for_replay().await?;
    let id = job.id.clone();
    match state.publisher.publish_one(job).await {
        Ok(Outcome::Accepted) => Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "id": id, "status": "accepted" })),
        )
            .into_response()),
        Ok(Outcome::Duplicate) => {
            let status = lock_status(state.publisher.status())
                .job(&id)
                .map(|j| j.status);
            let status = status.map(|s| json!(s)).unwrap_or(json!("accepted"));
            Ok((
                StatusCode::OK,
                Json(json!({ "id": id, "status": status, "duplicate": true })),
            )
                .into_response())
        }
        Ok(Outcome::InFlight) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "a job with this id is being accepted right now; retry",
        )
        .field("id")),
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
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = JobId::parse(&id)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()).field("id"))?;
    let found = lock_status(state.publisher.status()).job(&id).cloned();
    match found {
        Some(job) => Ok(Json(job).into_response()),
        None => Err(
            ApiError::new(StatusCode::NOT_FOUND, format!("no job {id} known (yet)")).field("id"),
        ),
    }
}
