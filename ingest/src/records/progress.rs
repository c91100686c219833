//! A batch's progress over time: jobs delivered and failed per minute, from the rollup
//! the event statements keep (`batch_minutes`), for the console's chart.

use chrono::{DateTime, Utc};
use mailpipe_common::store::StoreError;
use serde::Serialize;

use super::Records;

/// Minutes shown at most: the last two hours of the batch's activity.
pub const PROGRESS_MINUTES: i64 = 120;

/// One minute of a batch's sending.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MinuteProgress {
    pub minute: DateTime<Utc>,
    pub delivered: i64,
    pub failed: i64,
}

impl Records {
    /// The batch's minutes with an outcome, oldest first, within [`PROGRESS_MINUTES`] of
    /// its latest one.
    pub async fn batch_progress(&self, batch: &str) -> Result<Vec<MinuteProgress>, StoreError> {
        let r = sqlx::query_as::<_, (DateTime<Utc>, i64, i64)>(
            "SELECT minute, delivered, failed FROM batch_minutes
             WHERE batch_id = $1
               AND minute > (SELECT max(minute) FROM batch_minutes WHERE batch_id = $1)
                            - make_interval(mins => $2)
             ORDER BY minute",
        )
        .bind(batch)
        .bind(PROGRESS_MINUTES as i32)
        .fetch_all(self.store.pool())
        .await;
        Ok(self
            .store
            .observe("reading a batch's progress", r)?
            .into_iter()
            .map(|(minute, delivered, failed)| MinuteProgress {
                minute,
                delivered,
                failed,
            })
            .collect())
    }
}
