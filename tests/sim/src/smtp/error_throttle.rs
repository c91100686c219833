//! Exchange's continuous error throttling: a mailbox that keeps repeating an error (failed
//! AUTHs, unknown recipients) is refused for a while, whatever it sends then. A client that
//! retries a broken mailbox in bursts is punished here as it would be by Exchange.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::ErrorThrottlingConfig;
use crate::records::lock;

/// One kind of error of one mailbox: recent instants, and the block they caused.
#[derive(Debug, Default)]
struct Offences {
    recent: VecDeque<Instant>,
    blocked_until: Option<Instant>,
}

impl Offences {
    fn blocked(&self, now: Instant) -> bool {
        self.blocked_until.is_some_and(|u| now < u)
    }

    /// Counts one error; true when it starts a block. Errors while blocked are not counted
    /// (the block is not extended), and a block starts the count afresh.
    fn note(&mut self, now: Instant, limit: u64, window: Duration, block: Duration) -> bool {
        if limit == 0 || self.blocked(now) {
            return false;
        }
        while self.recent.front().is_some_and(|&t| t + window <= now) {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        if (self.recent.len() as u64) < limit {
            return false;
        }
        self.recent.clear();
        self.blocked_until = Some(now + block);
        true
    }
}

#[derive(Debug)]
pub(crate) struct ErrorThrottle {
    config: ErrorThrottlingConfig,
    auth: Mutex<HashMap<String, Offences>>,
    recipients: Mutex<HashMap<String, Offences>>,
}

impl ErrorThrottle {
    pub fn new(config: ErrorThrottlingConfig) -> Self {
        Self {
            config,
            auth: Mutex::default(),
            recipients: Mutex::default(),
        }
    }

    fn window(&self) -> Duration {
        Duration::from_millis(self.config.window_ms)
    }

    fn block(&self) -> Duration {
        Duration::from_millis(self.config.block_ms)
    }

    /// Whether AUTH as `mailbox` (lower case) is locked out now.
    pub fn auth_locked(&self, mailbox: &str, now: Instant) -> bool {
        lock(&self.auth)
            .get(mailbox)
            .is_some_and(|o| o.blocked(now))
    }

    /// Counts a failed AUTH as `mailbox`; true when it locks the mailbox out.
    pub fn note_auth_failure(&self, mailbox: &str, now: Instant) -> bool {
        let limit = self.config.auth_failures;
        lock(&self.auth)
            .entry(mailbox.to_owned())
            .or_default()
            .note(now, limit, self.window(), self.block())
    }

    /// Whether `mailbox` is throttled for invalid recipients now.
    pub fn sending_throttled(&self, mailbox: &str, now: Instant) -> bool {
        lock(&self.recipients)
            .get(mailbox)
            .is_some_and(|o| o.blocked(now))
    }

    /// Counts an unknown recipient of `mailbox`; true when it throttles the mailbox.
    pub fn note_invalid_recipient(&self, mailbox: &str, now: Instant) -> bool {
        let limit = self.config.invalid_recipients;
        lock(&self.recipients)
            .entry(mailbox.to_owned())
            .or_default()
            .note(now, limit, self.window(), self.block())
    }

    pub fn reset(&self) {
        lock(&self.auth).clear();
        lock(&self.recipients).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle(auth_failures: u64) -> ErrorThrottle {
        ErrorThrottle::new(ErrorThrottlingConfig {
            auth_failures,
            invalid_recipients: 2,
            window_ms: 1_000,
            block_ms: 5_000,
        })
    }

    #[test]
    fn the_nth_failure_within_the_window_blocks_for_the_block_time() {
        let t = throttle(3);
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        assert!(!t.note_auth_failure("a@x", at(0)));
        assert!(!t.note_auth_failure("a@x", at(600)));
        // the first one left the window: still two
        assert!(!t.note_auth_failure("a@x", at(1_100)));
        assert!(!t.auth_locked("a@x", at(1_100)));
        assert!(t.note_auth_failure("a@x", at(1_200)));
        assert!(t.auth_locked("a@x", at(1_200)));
        assert!(!t.auth_locked("b@x", at(1_200)), "per mailbox");
        // failures while locked neither count nor extend the block
        assert!(!t.note_auth_failure("a@x", at(3_000)));
        assert!(t.auth_locked("a@x", at(6_199)));
        assert!(!t.auth_locked("a@x", at(6_200)));
        assert!(
            !t.note_auth_failure("a@x", at(6_300)),
            "the count starts afresh"
        );
    }

    #[test]
    fn invalid_recipients_throttle_sending_and_zero_turns_a_kind_off() {
        let t = throttle(0);
        let now = Instant::now();
        for _ in 0..50 {
            assert!(!t.note_auth_failure("a@x", now));
        }
        assert!(!t.auth_locked("a@x", now));
        assert!(!t.note_invalid_recipient("a@x", now));
        assert!(t.note_invalid_recipient("a@x", now));
        assert!(t.sending_throttled("a@x", now));
        t.reset();
        assert!(!t.sending_throttled("a@x", now));
    }
}
