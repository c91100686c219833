//! How long a batch still needs, from the pool's capacity. Pure: the pool's limits come
//! from the `[deliver]` section, the recipients each mailbox already sent come from the
//! `delivered` events ingest reads anyway (a [`QuotaLog`]), and `now` is a parameter.
//!
//! The model (see docs/ingest.md, "ETA"):
//!
//! * **rate**: the pool sends at most `Σ messages_per_window / message_window` messages per
//!   second, so `jobs_left` need at least `jobs_left / rate` seconds;
//! * **quota**: each mailbox may send `recipients_per_window` recipients per rolling
//!   recipient window. What is left now is `Σ max(0, limit - sent in the window)`. When the
//!   recipients left exceed it, the batch must wait until enough of the logged sends leave
//!   their window (oldest first); past one whole window the pattern repeats (our own sends
//!   leave the window one window after they were made), so `k` whole windows are added.
//! * ETA = the larger of the two (sending goes on at the rate while quota frees; the last
//!   message can leave neither before the rate allows nor before the quota does).
//!
//! It is an estimate for one batch that has the pool to itself; the limits it ignores are
//! listed in docs/ingest.md.

use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Duration, Utc};
use mailpipe_common::domain::EmailAddress;
use mailpipe_common::pool::PoolSettings;
use serde::Serialize;

/// A mailbox's limits, as the ETA needs them.
#[derive(Debug, Clone, PartialEq)]
pub struct MailboxCapacity {
    pub address: EmailAddress,
    pub messages_per_second: f64,
    pub recipients_per_window: u64,
    pub recipient_window_ms: i64,
}

/// The pool's limits (from `[deliver]`).
#[derive(Debug, Clone, PartialEq)]
pub struct PoolCapacity {
    pub mailboxes: Vec<MailboxCapacity>,
}

impl PoolCapacity {
    /// The pool's limits, or why there are none (the ETA then says so).
    pub fn from_settings(pool: &PoolSettings) -> Result<Self, String> {
        if pool.mailboxes.is_empty() {
            return Err(
                "no [[deliver.mailboxes]] in the configuration: the ETA needs the pool's limits"
                    .into(),
            );
        }
        let mailboxes = pool
            .mailboxes
            .iter()
            .map(|m| MailboxCapacity {
                address: m.address.clone(),
                messages_per_second: if m.limits.message_window_ms == 0 {
                    0.0
                } else {
                    m.limits.messages_per_window as f64 * 1000.0 / m.limits.message_window_ms as f64
                },
                recipients_per_window: m.limits.recipients_per_window,
                recipient_window_ms: m.limits.recipient_window_ms.min(i64::MAX as u64) as i64,
            })
            .collect();
        Ok(Self { mailboxes })
    }

    pub fn messages_per_second(&self) -> f64 {
        self.mailboxes.iter().map(|m| m.messages_per_second).sum()
    }

    pub fn recipients_per_window(&self) -> u64 {
        self.mailboxes.iter().map(|m| m.recipients_per_window).sum()
    }

    fn longest_window_ms(&self) -> i64 {
        self.mailboxes
            .iter()
            .map(|m| m.recipient_window_ms)
            .max()
            .unwrap_or(0)
    }
}

/// Recipients each pool mailbox sent inside its recipient window, from `delivered` events.
///
/// Kept per mailbox as a log of buckets (1/1440 of the window: one minute for 24 h), so a
/// busy mailbox costs at most ~1,440 entries. A bucket counts as sent at its *end*, so it
/// leaves the window up to one bucket later than its sends did: the estimate errs late.
#[derive(Debug, Clone, Default)]
pub struct QuotaLog {
    mailboxes: HashMap<String, MailboxLog>,
}

#[derive(Debug, Clone)]
struct MailboxLog {
    window_ms: i64,
    bucket_ms: i64,
    /// `(bucket end in ms since the epoch, recipients)`, sorted by end.
    buckets: VecDeque<(i64, u64)>,
}

fn key(address: &EmailAddress) -> String {
    address.as_str().to_ascii_lowercase()
}

impl QuotaLog {
    pub fn new(pool: &PoolCapacity) -> Self {
        let mailboxes = pool
            .mailboxes
            .iter()
            .map(|m| {
                let window_ms = m.recipient_window_ms.max(1);
                (
                    key(&m.address),
                    MailboxLog {
                        window_ms,
                        bucket_ms: (window_ms / 1440).max(1),
                        buckets: VecDeque::new(),
                    },
                )
            })
            .collect();
        Self { mailboxes }
    }

    /// Logs `recipients` sent by `mailbox` at `at` (mailboxes outside the pool are ignored).
    pub fn record(&mut self, mailbox: &EmailAddress, at: DateTime<Utc>, recipients: u64) {
        let Some(log) = self.mailboxes.get_mut(&key(mailbox)) else {
            return;
        };
        if recipients == 0 {
            return;
        }
        let ms = at.timestamp_millis();
        let end = (ms.div_euclid(log.bucket_ms) + 1) * log.bucket_ms;
        match log.buckets.binary_search_by_key(&end, |(e, _)| *e) {
            Ok(i) => log.buckets[i].1 += recipients,
            Err(i) => log.buckets.insert(i, (end, recipients)),
        }
        // Prune against the newest send seen (pure: no clock here).
        let newest = log.buckets.back().map(|(e, _)| *e).unwrap_or(end);
        while log
            .buckets
            .front()
            .is_some_and(|(e, _)| *e + log.window_ms <= newest)
        {
            log.buckets.pop_front();
        }
    }

    /// Recipients `mailbox` sent in the window ending at `now`.
    pub fn used(&self, mailbox: &EmailAddress, now: DateTime<Utc>) -> u64 {
        let Some(log) = self.mailboxes.get(&key(mailbox)) else {
            return 0;
        };
        let now = now.timestamp_millis();
        log.buckets
            .iter()
            .filter(|(e, _)| *e + log.window_ms > now)
            .map(|(_, n)| n)
            .sum()
    }

    /// Entries logged in total (memory check).
    pub fn entries(&self) -> usize {
        self.mailboxes.values().map(|l| l.buckets.len()).sum()
    }
}

/// The estimate with its inputs, so an operator can see why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Eta {
    /// Seconds from `computed_at` until the batch is expected to be finished; `null` when it
    /// cannot be estimated (`reason` says why).
    pub eta_seconds: Option<f64>,
    /// `computed_at + eta_seconds`, RFC 3339.
    pub eta_at: Option<DateTime<Utc>>,
    pub computed_at: DateTime<Utc>,
    /// Jobs not delivered or failed yet.
    pub jobs_left: u64,
    /// Their recipients (known from their `accepted` events, else the batch's average).
    pub recipients_left: u64,
    pub pool_messages_per_second: Option<f64>,
    /// Recipients the pool's mailboxes may still send in their current windows.
    pub pool_recipients_available: Option<u64>,
    /// Recipients the pool may send per window (all mailboxes).
    pub pool_recipients_per_window: Option<u64>,
    /// `(jobs_left + shared_jobs) / pool_messages_per_second`.
    pub rate_seconds: Option<f64>,
    /// Wait until the quota has room for `recipients_left` (0 when it has already).
    pub quota_wait_seconds: Option<f64>,
    /// Jobs of other unfinished, running batches (and jobs without a batch): they share
    /// the pool with this batch.
    pub other_jobs_left: u64,
    /// Of those, the jobs sent before this batch finishes: batches take turns (deliver.md,
    /// "Lanes and fair share"), so each other batch sends as many as this one while both
    /// have jobs left — `Σ min(its jobs left, jobs_left)`.
    pub shared_jobs: u64,
    /// Why `eta_seconds` is null, or what it leaves out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Eta {
    pub fn unknown(
        now: DateTime<Utc>,
        jobs_left: u64,
        recipients_left: u64,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            eta_seconds: None,
            eta_at: None,
            computed_at: now,
            jobs_left,
            recipients_left,
            pool_messages_per_second: None,
            pool_recipients_available: None,
            pool_recipients_per_window: None,
            rate_seconds: None,
            quota_wait_seconds: None,
            other_jobs_left: 0,
            shared_jobs: 0,
            reason: Some(reason.into()),
        }
    }
}

/// The ETA of `jobs_left` jobs with `recipients_left` recipients through `pool`, whose
/// mailboxes already sent what `log` holds, while other batches with `others` jobs left
/// each take their turns.
pub fn estimate(
    pool: &PoolCapacity,
    log: &QuotaLog,
    jobs_left: u64,
    recipients_left: u64,
    others: &[u64],
    now: DateTime<Utc>,
) -> Eta {
    let rate = pool.messages_per_second();
    let per_window = pool.recipients_per_window();
    let mut eta = Eta::unknown(now, jobs_left, recipients_left, "");
    eta.reason = None;
    eta.other_jobs_left = others.iter().sum();
    eta.shared_jobs = others.iter().map(|&o| o.min(jobs_left)).sum();
    eta.pool_messages_per_second = Some(rate);
    eta.pool_recipients_per_window = Some(per_window);
    if jobs_left == 0 {
        eta.pool_recipients_available = Some(available_now(pool, log, now));
        eta.rate_seconds = Some(0.0);
        eta.quota_wait_seconds = Some(0.0);
        return finish(eta, 0.0);
    }
    if rate <= 0.0 || per_window == 0 {
        eta.reason = Some("the pool's limits allow no messages (messages_per_window or recipients_per_window is 0)".into());
        return eta;
    }
    let sent = jobs_left + eta.shared_jobs;
    let rate_seconds = sent as f64 / rate;
    // The others' jobs spend quota too: as many recipients per job as this batch's, a guess.
    let recipients = (recipients_left as f64 * sent as f64 / jobs_left as f64).ceil() as u64;
    let (available, wait_ms) = quota_wait(pool, log, recipients, now);
    eta.pool_recipients_available = Some(available);
    eta.rate_seconds = Some(rate_seconds);
    eta.quota_wait_seconds = Some(wait_ms as f64 / 1000.0);
    finish(eta, rate_seconds.max(wait_ms as f64 / 1000.0))
}

fn finish(mut eta: Eta, seconds: f64) -> Eta {
    eta.eta_seconds = Some(seconds);
    eta.eta_at = Some(eta.computed_at + Duration::milliseconds((seconds * 1000.0).round() as i64));
    eta
}

fn available_now(pool: &PoolCapacity, log: &QuotaLog, now: DateTime<Utc>) -> u64 {
    pool.mailboxes
        .iter()
        .map(|m| {
            m.recipients_per_window
                .saturating_sub(log.used(&m.address, now))
        })
        .sum()
}

/// `(recipients available now, ms until `needed` recipients fit)`.
///
/// S(τ) = what can have been sent by `now + τ` within the first window: what is left now
/// plus what the logged sends free as they leave their windows. After a whole window the
/// pool sends `P = Σ limits` per window, so `needed` takes `k = ceil(needed / P) - 1` whole
/// windows plus the τ at which S(τ) reaches the rest.
fn quota_wait(pool: &PoolCapacity, log: &QuotaLog, needed: u64, now: DateTime<Utc>) -> (u64, i64) {
    let now_ms = now.timestamp_millis();
    let mut used: Vec<u64> = pool
        .mailboxes
        .iter()
        .map(|m| log.used(&m.address, now))
        .collect();
    let limit: Vec<u64> = pool
        .mailboxes
        .iter()
        .map(|m| m.recipients_per_window)
        .collect();
    let avail = |used: &[u64]| -> u64 {
        used.iter()
            .zip(&limit)
            .map(|(u, l)| l.saturating_sub(*u))
            .sum()
    };
    let available = avail(&used);
    let per_window = pool.recipients_per_window();
    if needed <= available {
        return (available, 0);
    }
    let k = needed.div_ceil(per_window).saturating_sub(1);
    let rest = needed - k * per_window;
    let mut wait = k as i64 * pool.longest_window_ms();
    if rest > available {
        // Logged sends in the order they leave their windows.
        let mut expiries: Vec<(i64, usize, u64)> = Vec::new();
        for (i, m) in pool.mailboxes.iter().enumerate() {
            if let Some(l) = log.mailboxes.get(&key(&m.address)) {
                expiries.extend(
                    l.buckets
                        .iter()
                        .filter(|(e, _)| *e + l.window_ms > now_ms)
                        .map(|(e, n)| (*e + l.window_ms, i, *n)),
                );
            }
        }
        expiries.sort_unstable();
        let mut at = pool.longest_window_ms();
        let mut have = available;
        for (expiry, i, n) in expiries {
            used[i] = used[i].saturating_sub(n);
            have = avail(&used);
            if have >= rest {
                at = expiry - now_ms;
                break;
            }
        }
        debug_assert!(have >= rest || at == pool.longest_window_ms());
        wait += at;
    }
    (available, wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn addr(s: &str) -> EmailAddress {
        EmailAddress::parse(s).unwrap()
    }

    /// Two mailboxes: 30 messages/60 s each (1 msg/s together), 100 recipients per 1,440 s
    /// window (buckets of 1 s, so the hand computations are exact to the second).
    fn pool() -> PoolCapacity {
        let m = |a: &str| MailboxCapacity {
            address: addr(a),
            messages_per_second: 0.5,
            recipients_per_window: 100,
            recipient_window_ms: 1_440_000,
        };
        PoolCapacity {
            mailboxes: vec![m("a@pool.example"), m("b@pool.example")],
        }
    }

    #[test]
    fn with_quota_to_spare_the_rate_decides() {
        let p = pool();
        let log = QuotaLog::new(&p);
        // 60 jobs x 2 recipients: 120 <= 200 left; 60 jobs at 1 msg/s = 60 s.
        let eta = estimate(&p, &log, 60, 120, &[], t(0));
        assert_eq!(eta.pool_messages_per_second, Some(1.0));
        assert_eq!(eta.pool_recipients_available, Some(200));
        assert_eq!(eta.quota_wait_seconds, Some(0.0));
        assert_eq!(eta.eta_seconds, Some(60.0));
        assert_eq!(eta.eta_at, Some(t(60)));
    }

    #[test]
    fn other_running_batches_share_the_pool_in_turns() {
        let p = pool();
        let log = QuotaLog::new(&p);
        // 60 jobs left; a batch with 500 left sends 60 meanwhile, one with 10 sends its 10:
        // 130 jobs at 1 msg/s.
        let eta = estimate(&p, &log, 60, 60, &[500, 10], t(0));
        assert_eq!(eta.other_jobs_left, 510);
        assert_eq!(eta.shared_jobs, 70);
        assert_eq!(eta.eta_seconds, Some(130.0));
        // Alone, half of that.
        assert_eq!(
            estimate(&p, &log, 60, 60, &[], t(0)).eta_seconds,
            Some(60.0)
        );
    }

    #[test]
    fn when_the_quota_is_short_the_oldest_sends_must_leave_the_window() {
        let p = pool();
        let mut log = QuotaLog::new(&p);
        // a sent 80 at t=0 (bucket ends at 1 s) and 10 at t=100; b sent 100 at t=500.
        log.record(&addr("a@pool.example"), t(0), 80);
        log.record(&addr("A@pool.example"), t(100), 10);
        log.record(&addr("b@pool.example"), t(500), 100);
        assert_eq!(log.used(&addr("a@pool.example"), t(600)), 90);
        // At t=600: left = (100-90) + (100-100) = 10. 50 recipients needed: the 80 of a
        // leave at 1 + 1440 = 1441 s, which makes 90 available: wait 1441 - 600 = 841 s.
        let eta = estimate(&p, &log, 25, 50, &[], t(600));
        assert_eq!(eta.pool_recipients_available, Some(10));
        assert_eq!(eta.quota_wait_seconds, Some(841.0));
        assert_eq!(eta.rate_seconds, Some(25.0));
        assert_eq!(eta.eta_seconds, Some(841.0));
        // 95 needed: after 1441 s, 90; after a's 10 leave (101 + 1440 = 1541 s), 100.
        let eta = estimate(&p, &log, 50, 95, &[], t(600));
        assert_eq!(eta.quota_wait_seconds, Some(941.0));
    }

    #[test]
    fn more_than_one_window_of_recipients_adds_whole_windows() {
        let p = pool();
        let log = QuotaLog::new(&p);
        // Nothing sent: 200 per window. 450 recipients: 2 whole windows (400) and 50 of
        // the third, which are there at once: wait = 2 x 1440 s. The rate: 450 s.
        let eta = estimate(&p, &log, 450, 450, &[], t(0));
        assert_eq!(eta.quota_wait_seconds, Some(2880.0));
        assert_eq!(eta.eta_seconds, Some(2880.0));
        // Exactly 400: one whole window, then 200 are there at once.
        assert_eq!(
            estimate(&p, &log, 400, 400, &[], t(0)).quota_wait_seconds,
            Some(1440.0)
        );
        // 200: no wait; the rate (200 s) decides.
        assert_eq!(
            estimate(&p, &log, 200, 200, &[], t(0)).eta_seconds,
            Some(200.0)
        );
    }

    #[test]
    fn the_log_forgets_what_left_the_window_and_ignores_other_mailboxes() {
        let p = pool();
        let mut log = QuotaLog::new(&p);
        log.record(&addr("a@pool.example"), t(0), 30);
        log.record(&addr("stranger@elsewhere.example"), t(0), 30);
        assert_eq!(
            log.used(&addr("a@pool.example"), t(1440)),
            30,
            "the bucket ends at 1 s: still inside"
        );
        assert_eq!(log.used(&addr("a@pool.example"), t(1441)), 0);
        log.record(&addr("a@pool.example"), t(3000), 5);
        assert_eq!(log.entries(), 1, "the old bucket was pruned");
    }

    #[test]
    fn buckets_bound_memory() {
        let p = PoolCapacity {
            mailboxes: vec![MailboxCapacity {
                address: addr("a@x.example"),
                messages_per_second: 0.5,
                recipients_per_window: 10_000,
                recipient_window_ms: 86_400_000,
            }],
        };
        let mut log = QuotaLog::new(&p);
        for s in 0..(2 * 86_400) {
            log.record(&addr("a@x.example"), t(s), 1);
        }
        assert!(log.entries() <= 1441, "{} entries", log.entries());
        assert_eq!(
            log.used(&addr("a@x.example"), t(2 * 86_400)),
            86_400,
            "the last day of 1/s"
        );
    }

    #[test]
    fn a_pool_without_capacity_says_why() {
        let empty = PoolSettings::default();
        assert!(
            PoolCapacity::from_settings(&empty)
                .unwrap_err()
                .contains("deliver.mailboxes")
        );
        let p = PoolCapacity {
            mailboxes: vec![MailboxCapacity {
                address: addr("a@x.example"),
                messages_per_second: 0.0,
                recipients_per_window: 10,
                recipient_window_ms: 1000,
            }],
        };
        let eta = estimate(&p, &QuotaLog::new(&p), 3, 3, &[], t(0));
        assert_eq!(eta.eta_seconds, None);
        assert!(eta.reason.is_some());
        let done = estimate(&pool(), &QuotaLog::new(&pool()), 0, 0, &[], t(0));
        assert_eq!(done.eta_seconds, Some(0.0));
    }
}
