//! The owner half of the role check: a `submit` token sees, controls and adds to only
//! the batches created with its owner label ([`Caller::sees`]). Another owner's batch is
//! answered like an unknown one on reads and controls (404: its existence is not
//! disclosed); a submission to it is refused (403) before anything is written, and again
//! by `Store::open_batch` in the statement that records an accepted one.

use axum::http::StatusCode;
use mailpipe_common::domain::BatchId;

use super::AppState;
use super::error::ApiError;
use super::roles::Caller;

pub(super) fn unknown_batch(id: &BatchId) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no batch {id} known")).field("batch")
}

/// The 403 of a submission to another owner's batch.
pub(crate) fn not_yours(id: &BatchId) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        format!("batch {id} was created by another token owner: give your jobs another batch id"),
    )
    .field("batch")
}

/// `Ok` when `caller` may read or control batch `id` (404 otherwise, as for an unknown
/// batch). No query for callers that see every batch.
pub(super) async fn visible(
    state: &AppState,
    caller: &Caller,
    id: &BatchId,
) -> Result<(), ApiError> {
    if caller.confined_to().is_none() {
        return Ok(());
    }
    match state.records.store().batch_owner(id.as_str()).await? {
        Some(owner) if caller.sees(owner.as_deref()) => Ok(()),
        _ => Err(unknown_batch(id)),
    }
}

/// `Ok` when `caller` may submit to batch `id`: a new batch, or one it may add to.
pub(super) async fn may_submit_to(
    state: &AppState,
    caller: &Caller,
    id: &BatchId,
) -> Result<(), ApiError> {
    if caller.confined_to().is_none() {
        return Ok(());
    }
    match state.records.store().batch_owner(id.as_str()).await? {
        Some(owner) if !caller.sees(owner.as_deref()) => Err(not_yours(id)),
        _ => Ok(()),
    }
}
