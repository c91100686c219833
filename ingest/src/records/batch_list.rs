//! `GET /v1/batches` and `mailpipe-ingest batch list`: which batches exist, newest first,
//! a page at a time. The page's batch ids come from one indexed query on `batches`; each
//! batch's numbers come from [`Records::batch_report`], the one way a batch is counted.

use std::fmt;

use chrono::{DateTime, Utc};
use mailpipe_common::domain::BatchId;
use mailpipe_common::store::{BatchControl, StoreError};
use serde::Serialize;

use super::Records;
use super::report::{BatchReport, KindCounts};
use crate::eta::Eta;

/// Most batches one page holds (each is a batch report: pages stay small).
pub const MAX_BATCH_PAGE: u32 = 100;
/// Batches per page when `limit` is not given.
pub const DEFAULT_BATCH_PAGE: u32 = 20;

/// What a batch is doing, as the list shows and filters it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchState {
    /// Jobs left, being sent.
    Running,
    /// Jobs left, held by a pause.
    Paused,
    /// Cancelled (final), whether or not jobs are still settling.
    Cancelled,
    /// Every job at an end, not cancelled.
    Done,
}

impl BatchState {
    pub const ALL: [BatchState; 4] = [
        BatchState::Running,
        BatchState::Paused,
        BatchState::Cancelled,
        BatchState::Done,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BatchState::Running => "running",
            BatchState::Paused => "paused",
            BatchState::Cancelled => "cancelled",
            BatchState::Done => "done",
        }
    }

    /// A report's state: its control, or `done` once nothing is left.
    pub fn of(report: &BatchReport) -> Self {
        match report.control {
            BatchControl::Cancelled => BatchState::Cancelled,
            _ if report.finished => BatchState::Done,
            BatchControl::Paused => BatchState::Paused,
            BatchControl::Running => BatchState::Running,
        }
    }
}

impl std::str::FromStr for BatchState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|b| b.as_str() == s)
            .ok_or_else(|| format!("{s:?}: one of running, paused, cancelled, done"))
    }
}

/// Where the next page starts: after this batch in newest-first order. Written
/// `<microseconds since the epoch>~<batch id>` (`~` is not in a batch id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchCursor {
    created_at: DateTime<Utc>,
    id: BatchId,
}

impl std::str::FromStr for BatchCursor {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not a cursor: pass a page's next_cursor unchanged");
        let (micros, id) = s.split_once('~').ok_or_else(bad)?;
        let micros: i64 = micros.parse().map_err(|_| bad())?;
        Ok(Self {
            created_at: DateTime::from_timestamp_micros(micros).ok_or_else(bad)?,
            id: BatchId::parse(id).map_err(|_| bad())?,
        })
    }
}

impl fmt::Display for BatchCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}~{}", self.created_at.timestamp_micros(), self.id)
    }
}

impl Serialize for BatchCursor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Which batches a list holds.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchFilter {
    pub state: Option<BatchState>,
    /// Created at or after.
    pub created_from: Option<DateTime<Utc>>,
    /// Created before.
    pub created_to: Option<DateTime<Utc>>,
    /// Part of the batch id (any case).
    pub text: Option<String>,
    /// Created by this token owner only (a `submit` token's list).
    pub owner: Option<String>,
    pub cursor: Option<BatchCursor>,
    /// 1..=[`MAX_BATCH_PAGE`].
    pub limit: u32,
}

impl Default for BatchFilter {
    fn default() -> Self {
        Self {
            state: None,
            created_from: None,
            created_to: None,
            text: None,
            owner: None,
            cursor: None,
            limit: DEFAULT_BATCH_PAGE,
        }
    }
}

/// One batch of a list: its report without the failure and mailbox details.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchSummary {
    pub batch: BatchId,
    pub created_at: DateTime<Utc>,
    pub state: BatchState,
    pub control: BatchControl,
    pub jobs: u64,
    pub remaining: u64,
    pub uncertain: u64,
    pub scheduled: u64,
    pub counts: KindCounts,
    /// Jobs failed, or delivered with some recipients refused.
    pub failures: u64,
    pub eta: Eta,
    pub last_event_at: DateTime<Utc>,
}

/// A page of batches: pass `next_cursor` as `cursor` for the next (absent on the last).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchPage {
    pub batches: Vec<BatchSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<BatchCursor>,
}

/// A batch with jobs not at an end yet, from its counters (`received` jobs are not
/// accepted, so not counted).
const LEFT: &str = "EXISTS (SELECT 1 FROM batch_counts c WHERE c.batch_id = b.id \
     AND c.state IN ('accepted', 'rendered', 'retrying') AND c.jobs > 0)";

impl Records {
    /// A page of batches matching `filter`, newest first.
    pub async fn batches(
        &self,
        filter: &BatchFilter,
        now: DateTime<Utc>,
    ) -> Result<BatchPage, StoreError> {
        let limit = filter.limit.clamp(1, MAX_BATCH_PAGE);
        let left = LEFT;
        let state = match filter.state {
            None => "true".to_owned(),
            Some(BatchState::Cancelled) => "b.control = 'cancelled'".to_owned(),
            Some(BatchState::Paused) => format!("b.control = 'paused' AND {left}"),
            Some(BatchState::Running) => format!("b.control = 'running' AND {left}"),
            Some(BatchState::Done) => format!("b.control <> 'cancelled' AND NOT {left}"),
        };
        let query = format!(
            "SELECT b.id, b.created_at FROM batches b \
             WHERE EXISTS (SELECT 1 FROM batch_counts c WHERE c.batch_id = b.id AND c.jobs > 0) \
             AND ({state}) \
             AND ($1::timestamptz IS NULL OR b.created_at >= $1) \
             AND ($2::timestamptz IS NULL OR b.created_at < $2) \
             AND ($3::text IS NULL OR strpos(lower(b.id), lower($3)) > 0) \
             AND ($4::timestamptz IS NULL OR (b.created_at, b.id) < ($4, $5::text)) \
             AND ($7::text IS NULL OR b.owner = $7) \
             ORDER BY b.created_at DESC, b.id DESC LIMIT $6"
        );
        let r = sqlx::query_as::<_, (String, DateTime<Utc>)>(sqlx::AssertSqlSafe(query))
            .bind(filter.created_from)
            .bind(filter.created_to)
            .bind(filter.text.as_deref())
            .bind(filter.cursor.as_ref().map(|c| c.created_at))
            .bind(filter.cursor.as_ref().map(|c| c.id.as_str()))
            .bind(i64::from(limit))
            .bind(filter.owner.as_deref())
            .fetch_all(self.store().pool())
            .await;
        let rows = self.store().observe("listing batches", r)?;
        let next_cursor = (rows.len() == limit as usize)
            .then(|| rows.last())
            .flatten()
            .and_then(|(id, created_at)| {
                Some(BatchCursor {
                    created_at: *created_at,
                    id: BatchId::parse(id).ok()?,
                })
            });
        let mut batches = Vec::with_capacity(rows.len());
        for (id, created_at) in rows {
            let Ok(id) = BatchId::parse(&id) else {
                continue;
            };
            if let Some(report) = self.batch_report(&id, now).await? {
                batches.push(BatchSummary::of(report, created_at));
            }
        }
        Ok(BatchPage {
            batches,
            next_cursor,
        })
    }
}

impl BatchSummary {
    fn of(r: BatchReport, created_at: DateTime<Utc>) -> Self {
        Self {
            state: BatchState::of(&r),
            batch: r.batch,
            created_at,
            control: r.control,
            jobs: r.jobs,
            remaining: r.remaining,
            uncertain: r.uncertain,
            scheduled: r.scheduled,
            counts: r.counts,
            failures: r.failures.total,
            eta: r.eta,
            last_event_at: r.last_event_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_what_it_wrote() {
        let c = BatchCursor {
            created_at: DateTime::from_timestamp_micros(1_764_000_000_123_456).unwrap(),
            id: BatchId::parse("nov-2026:a_b.c").unwrap(),
        };
        assert_eq!(c.to_string().parse::<BatchCursor>(), Ok(c));
        for bad in ["", "12", "x~b", "12~", "12~a b", "~b"] {
            assert!(bad.parse::<BatchCursor>().is_err(), "{bad}");
        }
    }

    #[test]
    fn states_parse_by_name() {
        for s in BatchState::ALL {
            assert_eq!(s.as_str().parse::<BatchState>(), Ok(s));
        }
        assert!("finished".parse::<BatchState>().is_err());
    }
}
