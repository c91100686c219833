//! The webhook outbox (docs/webhooks.md): events are written by triggers in the
//! transaction that records an outcome (migration 0007); these are the queries of
//! ingest's dispatcher and of `mailpipe-ingest webhooks`. Every step claims its rows with
//! `FOR UPDATE SKIP LOCKED`, so several ingest replicas share the work without waiting on
//! each other, and holds a delivery by pushing its `next_attempt_at` past the request's
//! end instead of holding a transaction open across the HTTP call.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{Store, StoreError};

/// An event not yet given its deliveries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    pub id: String,
    /// `job.delivered`, ..., `batch.completed`.
    pub kind: String,
    pub batch: Option<String>,
    /// The batch's callback URL, if it has one.
    pub callback_url: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Where one event goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// `callback`, or a configured endpoint's name.
    pub endpoint: String,
    pub url: String,
}

/// A delivery a dispatcher holds now: send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueDelivery {
    pub id: i64,
    pub event_id: String,
    pub endpoint: String,
    pub url: String,
    /// Tries made before this one.
    pub attempts: u32,
    pub expires_at: DateTime<Utc>,
    pub event_created_at: DateTime<Utc>,
    /// The body, as on every try.
    pub payload: String,
}

/// How one try ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// A 2xx: done.
    Delivered { status: u16 },
    /// 410 Gone: the receiver does not want it; not tried again (a batch's callback is
    /// dropped from the batch, so its later events are not sent there).
    Gone,
    /// Not called: its URL is not allowed any more (its host left the allow-list). Not
    /// tried again; `reason` says why (`webhooks retry` puts it back).
    Dropped { reason: String },
    /// Anything else: tried again at `retry_at`, or expired when that is past its expiry.
    Failed {
        status: Option<u16>,
        error: String,
        retry_at: DateTime<Utc>,
    },
}

/// What became of a failed try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterAttempt {
    Done,
    Retrying,
    Expired,
    /// Someone else settled it meanwhile (an operator, another replica).
    Stale,
}

/// A delivery as `mailpipe-ingest webhooks list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct WebhookDelivery {
    pub id: i64,
    pub event_id: String,
    #[sqlx(rename = "type")]
    #[serde(rename = "type")]
    pub kind: String,
    pub job_id: Option<String>,
    pub batch_id: Option<String>,
    pub endpoint: String,
    pub url: String,
    pub state: String,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

/// Which deliveries to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryFilter {
    /// Not delivered yet, not expired (tries left).
    Pending,
    /// Pending with at least one failed try.
    Failed,
    Expired,
    /// Not called because their URL is not allowed any more.
    Dropped,
    All,
}

/// Non-final job states: a batch with none of these left is complete (any other state,
/// including one added later, is final).
const NOT_FINAL: &str = "('received', 'accepted', 'rendered', 'retrying')";

/// Batches with a job outcome since the last sweep, taken off the sweep list.
const SWEEP_TAKE: &str = r#"
WITH touched AS (
    SELECT id, batch_id FROM webhook_events WHERE batch_pending
    ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED
)
UPDATE webhook_events e SET batch_pending = false FROM touched t WHERE e.id = t.id
RETURNING t.batch_id
"#;

/// `batch.completed` for a batch with no job left non-final (once: its dedupe key).
fn completion_sql() -> String {
    format!(
        r#"
SELECT mailpipe_webhook_record(
    'batch.completed', 'batch:' || $1 || ':completed', NULL, $1, now(),
    jsonb_build_object('batch', $1, 'jobs', c.total, 'counts', c.counts,
                       'completed_at', mailpipe_webhook_time(now())),
    false)
FROM (SELECT sum(n)::bigint AS total, jsonb_object_agg(state, n) AS counts
      FROM (SELECT state, count(*) AS n FROM jobs WHERE batch_id = $1 GROUP BY state) s) c
WHERE c.total > 0
  AND NOT EXISTS (SELECT 1 FROM jobs WHERE batch_id = $1 AND state IN {NOT_FINAL})
"#
    )
}

const FAN_OUT_TAKE: &str = r#"
SELECT e.id, e.type, e.batch_id, b.callback_url, e.created_at
FROM webhook_events e LEFT JOIN batches b ON b.id = e.batch_id
WHERE NOT e.fanned_out
ORDER BY e.created_at LIMIT $1
FOR UPDATE OF e SKIP LOCKED
"#;

const FAN_OUT_INSERT: &str = r#"
INSERT INTO webhook_deliveries (event_id, endpoint, url, expires_at, next_attempt_at)
SELECT u.event_id, u.endpoint, u.url, u.created_at + make_interval(secs => $5), now()
FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[])
     AS u(event_id, endpoint, url, created_at)
ON CONFLICT (event_id, endpoint) DO NOTHING
"#;

const CLAIM_CANDIDATES: &str = r#"
SELECT d.id, d.event_id, d.endpoint, d.url, d.attempts, d.expires_at, e.created_at,
       e.payload::text
FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id
WHERE d.state = 'pending' AND d.next_attempt_at <= now() AND d.expires_at > now()
  AND NOT (d.endpoint = ANY($2))
ORDER BY d.next_attempt_at LIMIT $1
FOR UPDATE OF d SKIP LOCKED
"#;

type DueRow = (
    i64,
    String,
    String,
    String,
    i32,
    DateTime<Utc>,
    DateTime<Utc>,
    String,
);

const LIST: &str = r#"
SELECT d.id, d.event_id, e.type, e.job_id, e.batch_id, d.endpoint, d.url, d.state, d.attempts,
       d.next_attempt_at, d.expires_at, d.last_status, d.last_error, d.created_at, d.delivered_at
FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id
WHERE ($1 = 'all' OR d.state = $1 OR ($1 = 'failed' AND d.state = 'pending' AND d.last_error IS NOT NULL))
ORDER BY d.id LIMIT $2
"#;

impl Store {
    /// Looks at the batches that had a job outcome since the last sweep (up to `limit`
    /// outcomes) and records `batch.completed` for each one with no job left non-final.
    /// One transaction: a crash leaves the outcomes on the sweep list. Returns how many
    /// batches were looked at.
    pub async fn sweep_completed_batches(&self, limit: i64) -> Result<usize, StoreError> {
        let mut tx = self.observe("starting a transaction", self.pool.begin().await)?;
        let r = sqlx::query_scalar::<_, Option<String>>(SWEEP_TAKE)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await;
        let mut batches: Vec<String> = self
            .observe("taking batches to sweep", r)?
            .into_iter()
            .flatten()
            .collect();
        batches.sort_unstable();
        batches.dedup();
        let completion = completion_sql();
        for batch in &batches {
            let r = sqlx::query(sqlx::AssertSqlSafe(completion.as_str()))
                .bind(batch)
                .execute(&mut *tx)
                .await;
            self.observe("recording a batch's completion", r)?;
        }
        self.observe("committing", tx.commit().await)?;
        Ok(batches.len())
    }

    /// Gives up to `limit` new events their deliveries: `route` says where each goes.
    /// Each delivery expires `max_age` after its event was born. Returns how many events.
    pub async fn fan_out_webhooks(
        &self,
        limit: i64,
        max_age: Duration,
        route: impl Fn(&OutboxEvent) -> Vec<Route>,
    ) -> Result<usize, StoreError> {
        let mut tx = self.observe("starting a transaction", self.pool.begin().await)?;
        let r = sqlx::query_as::<
            _,
            (
                String,
                String,
                Option<String>,
                Option<String>,
                DateTime<Utc>,
            ),
        >(FAN_OUT_TAKE)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await;
        let events: Vec<OutboxEvent> = self
            .observe("taking new webhook events", r)?
            .into_iter()
            .map(|(id, kind, batch, callback_url, created_at)| OutboxEvent {
                id,
                kind,
                batch,
                callback_url,
                created_at,
            })
            .collect();
        if events.is_empty() {
            return Ok(0);
        }
        let (mut ids, mut endpoints, mut urls, mut born) = (vec![], vec![], vec![], vec![]);
        for e in &events {
            for r in route(e) {
                ids.push(e.id.clone());
                endpoints.push(r.endpoint);
                urls.push(r.url);
                born.push(e.created_at);
            }
        }
        if !ids.is_empty() {
            let r = sqlx::query(FAN_OUT_INSERT)
                .bind(&ids)
                .bind(&endpoints)
                .bind(&urls)
                .bind(&born)
                .bind(max_age.as_secs_f64())
                .execute(&mut *tx)
                .await;
            self.observe("writing webhook deliveries", r)?;
        }
        let all: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        let r = sqlx::query("UPDATE webhook_events SET fanned_out = true WHERE id = ANY($1)")
            .bind(&all)
            .execute(&mut *tx)
            .await;
        self.observe("marking webhook events fanned out", r)?;
        self.observe("committing", tx.commit().await)?;
        Ok(events.len())
    }

    /// Takes due deliveries for this dispatcher: among up to `candidates` due ones (none
    /// of the `saturated` endpoints), those `choose` accepts are held for `hold` (no other
    /// dispatcher takes them meanwhile; a dispatcher that dies lets them fall due again).
    pub async fn claim_webhooks(
        &self,
        candidates: i64,
        saturated: &[String],
        mut choose: impl FnMut(&DueDelivery) -> bool,
        hold: Duration,
    ) -> Result<Vec<DueDelivery>, StoreError> {
        let mut tx = self.observe("starting a transaction", self.pool.begin().await)?;
        let r = sqlx::query_as::<_, DueRow>(CLAIM_CANDIDATES)
            .bind(candidates)
            .bind(saturated)
            .fetch_all(&mut *tx)
            .await;
        let chosen: Vec<DueDelivery> = self
            .observe("taking due webhook deliveries", r)?
            .into_iter()
            .map(
                |(id, event_id, endpoint, url, attempts, expires_at, born, payload)| DueDelivery {
                    id,
                    event_id,
                    endpoint,
                    url,
                    attempts: attempts.max(0) as u32,
                    expires_at,
                    event_created_at: born,
                    payload,
                },
            )
            .filter(|d| choose(d))
            .collect();
        if !chosen.is_empty() {
            let ids: Vec<i64> = chosen.iter().map(|d| d.id).collect();
            let r = sqlx::query(
                "UPDATE webhook_deliveries SET next_attempt_at = now() + make_interval(secs => $2)
                 WHERE id = ANY($1)",
            )
            .bind(&ids)
            .bind(hold.as_secs_f64())
            .execute(&mut *tx)
            .await;
            self.observe("holding webhook deliveries", r)?;
        }
        self.observe("committing", tx.commit().await)?;
        Ok(chosen)
    }

    /// Records how a try of delivery `id` ended.
    pub async fn record_webhook_attempt(
        &self,
        id: i64,
        outcome: &AttemptOutcome,
    ) -> Result<AfterAttempt, StoreError> {
        let r = match outcome {
            AttemptOutcome::Delivered { status } => {
                sqlx::query_scalar::<_, String>(
                    "UPDATE webhook_deliveries SET state = 'delivered', delivered_at = now(),
                        attempts = attempts + 1, last_attempt_at = now(), last_status = $2
                 WHERE id = $1 AND state = 'pending' RETURNING state",
                )
                .bind(id)
                .bind(i32::from(*status))
                .fetch_optional(&self.pool)
                .await
            }
            AttemptOutcome::Gone => {
                sqlx::query_scalar::<_, String>(
                    "WITH gone AS (
                     UPDATE webhook_deliveries SET state = 'gone', attempts = attempts + 1,
                            last_attempt_at = now(), last_status = 410,
                            last_error = 'the receiver answered 410 Gone'
                     WHERE id = $1 AND state = 'pending' RETURNING event_id, endpoint, url, state
                 ), dropped AS (
                     UPDATE batches b SET callback_url = NULL
                     FROM gone g JOIN webhook_events e ON e.id = g.event_id
                     WHERE g.endpoint = 'callback' AND b.id = e.batch_id AND b.callback_url = g.url
                 )
                 SELECT state FROM gone",
                )
                .bind(id)
                .fetch_optional(&self.pool)
                .await
            }
            AttemptOutcome::Dropped { reason } => {
                sqlx::query_scalar::<_, String>(
                    "UPDATE webhook_deliveries SET state = 'dropped', last_error = $2
                     WHERE id = $1 AND state = 'pending' RETURNING state",
                )
                .bind(id)
                .bind(reason)
                .fetch_optional(&self.pool)
                .await
            }
            AttemptOutcome::Failed {
                status,
                error,
                retry_at,
            } => sqlx::query_scalar::<_, String>(
                "UPDATE webhook_deliveries SET attempts = attempts + 1, last_attempt_at = now(),
                        last_status = $2, last_error = $3, next_attempt_at = $4,
                        state = CASE WHEN $4 >= expires_at THEN 'expired' ELSE 'pending' END
                 WHERE id = $1 AND state = 'pending' RETURNING state",
            )
            .bind(id)
            .bind(status.map(i32::from))
            .bind(error)
            .bind(retry_at)
            .fetch_optional(&self.pool)
            .await,
        };
        Ok(
            match self.observe("recording a webhook try", r)?.as_deref() {
                None => AfterAttempt::Stale,
                Some("expired") => AfterAttempt::Expired,
                Some("pending") => AfterAttempt::Retrying,
                Some(_) => AfterAttempt::Done,
            },
        )
    }

    /// Pending deliveries past their expiry end `expired`; returns their endpoints (one
    /// entry per delivery).
    pub async fn expire_webhooks(&self) -> Result<Vec<String>, StoreError> {
        let r = sqlx::query_scalar::<_, String>(
            "UPDATE webhook_deliveries SET state = 'expired'
             WHERE state = 'pending' AND expires_at <= now() RETURNING endpoint",
        )
        .fetch_all(&self.pool)
        .await;
        self.observe("expiring webhook deliveries", r)
    }

    /// Pending deliveries and the age in seconds of the oldest one's event (0 when none).
    pub async fn webhook_backlog(&self) -> Result<(i64, f64), StoreError> {
        let r = sqlx::query_as::<_, (i64, Option<f64>)>(
            "SELECT count(*), extract(epoch FROM now() - min(created_at))::float8
             FROM webhook_deliveries WHERE state = 'pending'",
        )
        .fetch_one(&self.pool)
        .await;
        let (n, age) = self.observe("counting pending webhooks", r)?;
        Ok((n, age.unwrap_or(0.0).max(0.0)))
    }

    /// Deliveries matching `filter`, oldest first (at most `limit`).
    pub async fn webhook_deliveries(
        &self,
        filter: DeliveryFilter,
        limit: i64,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        let state = match filter {
            DeliveryFilter::Pending => "pending",
            DeliveryFilter::Failed => "failed",
            DeliveryFilter::Expired => "expired",
            DeliveryFilter::Dropped => "dropped",
            DeliveryFilter::All => "all",
        };
        let r = sqlx::query_as::<_, WebhookDelivery>(LIST)
            .bind(state)
            .bind(limit)
            .fetch_all(&self.pool)
            .await;
        self.observe("listing webhook deliveries", r)
    }

    /// Puts expired (or gone, or dropped) deliveries back in the queue, due now, with `max_age` more to
    /// live: one (`Some(id)`) or all of them. Returns how many.
    pub async fn retry_webhooks(
        &self,
        id: Option<i64>,
        max_age: Duration,
    ) -> Result<u64, StoreError> {
        let r = sqlx::query(
            "UPDATE webhook_deliveries SET state = 'pending', next_attempt_at = now(),
                    expires_at = now() + make_interval(secs => $2)
             WHERE state IN ('expired', 'gone', 'dropped') AND ($1::bigint IS NULL OR id = $1)",
        )
        .bind(id)
        .bind(max_age.as_secs_f64())
        .execute(&self.pool)
        .await;
        Ok(self.observe("requeueing webhooks", r)?.rows_affected())
    }
}
