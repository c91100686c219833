//! Graph's throttling rules, per mailbox: at most N requests in flight (a semaphore), and
//! once a mailbox got a `429`/`503`, no request for it leaves before the instant its
//! `Retry-After` names (seconds or an HTTP date; a doubling backoff when absent). Beside
//! them one app-wide cap on requests in flight (`deliver.graph.max_concurrent_requests`):
//! Microsoft documents the per-mailbox limit inconsistently (per app and mailbox, per
//! app, per mailbox), so a process can also be kept below an app-wide figure.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// First wait after a `429`/`503` without `Retry-After`; doubles per repeat.
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(2);
/// Longest default backoff.
pub const MAX_BACKOFF: Duration = Duration::from_secs(120);
/// Longest `Retry-After` believed: a larger one (or a date far ahead) waits this long, so a
/// broken answer cannot stop a mailbox for days.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// `Retry-After` as seconds or an HTTP date (RFC 9110 10.2.3), relative to `now`.
pub fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = at.with_timezone(&chrono::Utc) - now;
    Some(wait.to_std().unwrap_or(Duration::ZERO).min(MAX_RETRY_AFTER))
}

#[derive(Debug)]
struct Gate {
    permits: Arc<Semaphore>,
    state: Mutex<GateState>,
}

#[derive(Debug, Default)]
struct GateState {
    /// No request leaves before this.
    not_before: Option<Instant>,
    /// The next default backoff (after a throttle reply without `Retry-After`).
    next_backoff: Option<Duration>,
}

/// Every mailbox's gate, and the app-wide cap.
#[derive(Debug)]
pub struct MailboxGates {
    max_concurrent: usize,
    gates: Mutex<HashMap<String, Arc<Gate>>>,
    overall: Arc<Semaphore>,
}

/// A request's right to go out for a mailbox; dropping it frees the slot.
#[derive(Debug)]
pub struct Admission {
    gate: Arc<Gate>,
    _permit: OwnedSemaphorePermit,
    _overall: OwnedSemaphorePermit,
    /// How long this request waited for a `Retry-After` instant.
    pub throttled_wait: Duration,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl MailboxGates {
    /// `max_concurrent` requests in flight per mailbox, `overall` for the whole app.
    pub fn new(max_concurrent: u32, overall: u32) -> Self {
        Self {
            max_concurrent: max_concurrent.max(1) as usize,
            gates: Mutex::new(HashMap::new()),
            overall: Arc::new(Semaphore::new(overall.max(1) as usize)),
        }
    }

    fn gate(&self, mailbox: &str) -> Arc<Gate> {
        Arc::clone(
            lock(&self.gates)
                .entry(mailbox.to_ascii_lowercase())
                .or_insert_with(|| {
                    Arc::new(Gate {
                        permits: Arc::new(Semaphore::new(self.max_concurrent)),
                        state: Mutex::new(GateState::default()),
                    })
                }),
        )
    }

    /// Waits for a slot of `mailbox`, then for its `Retry-After` instant (which another
    /// request may push further while this one waits), then for an app-wide slot (taken
    /// last, so a request held back for its mailbox does not hold one meanwhile).
    pub async fn admit(&self, mailbox: &str) -> Admission {
        let gate = self.gate(mailbox);
        let permit = Arc::clone(&gate.permits)
            .acquire_owned()
            .await
            .unwrap_or_else(|_| unreachable!("the semaphore is never closed"));
        let mut waited = Duration::ZERO;
        loop {
            let not_before = lock(&gate.state).not_before;
            let now = Instant::now();
            match not_before {
                Some(at) if at > now => {
                    tokio::time::sleep_until(at.into()).await;
                    waited += at - now;
                }
                _ => break,
            }
        }
        let overall = Arc::clone(&self.overall)
            .acquire_owned()
            .await
            .unwrap_or_else(|_| unreachable!("the semaphore is never closed"));
        Admission {
            gate,
            _permit: permit,
            _overall: overall,
            throttled_wait: waited,
        }
    }
}

impl Admission {
    /// A `429`/`503` arrived: no request for this mailbox before `retry_after` from now
    /// (or the default backoff, doubling). Returns the wait set.
    pub fn throttled(&self, retry_after: Option<Duration>) -> Duration {
        let mut state = lock(&self.gate.state);
        let wait = match retry_after {
            Some(d) => d,
            None => {
                let d = state.next_backoff.unwrap_or(DEFAULT_BACKOFF);
                state.next_backoff = Some((d * 2).min(MAX_BACKOFF));
                d
            }
        };
        let until = Instant::now() + wait;
        state.not_before = Some(state.not_before.map_or(until, |t| t.max(until)));
        wait
    }

    /// A request went through: the default backoff starts over.
    pub fn succeeded(&self) {
        lock(&self.gate.state).next_backoff = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_seconds_or_a_date_and_capped() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .expect("date")
            .with_timezone(&chrono::Utc);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 2026 00:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 31 Dec 2025 23:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("999999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[tokio::test]
    async fn default_backoff_doubles_and_resets() {
        let gates = MailboxGates::new(4, 16);
        let a = gates.admit("a@x").await;
        assert_eq!(a.throttled(None), DEFAULT_BACKOFF);
        assert_eq!(a.throttled(None), DEFAULT_BACKOFF * 2);
        a.succeeded();
        assert_eq!(a.throttled(None), DEFAULT_BACKOFF);
    }

    #[tokio::test]
    async fn the_app_wide_cap_holds_requests_of_every_mailbox() {
        let gates = MailboxGates::new(4, 2);
        let a = gates.admit("a@x").await;
        let _b = gates.admit("b@x").await;
        // A third request, for a mailbox with free slots of its own, waits for the app.
        let third = tokio::time::timeout(Duration::from_millis(200), gates.admit("c@x")).await;
        assert!(third.is_err(), "admitted past the app-wide cap");
        drop(a);
        let _c = tokio::time::timeout(Duration::from_secs(5), gates.admit("c@x"))
            .await
            .expect("admitted once a slot is free");
    }
}
