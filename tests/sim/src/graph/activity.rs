//! What the Graph side saw, per mailbox: requests in flight (and the most ever at once),
//! throttling armed by tests, each `429` with the instant the next request came, and a
//! bounded request log. This is what a test judges a client's throttling discipline by.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::records::lock;

/// One Graph request as the simulator answered it.
#[derive(Debug, Clone, Serialize)]
pub struct GraphRequest {
    /// The mailbox of the path (lower case).
    pub mailbox: String,
    pub method: String,
    /// Path and query as requested.
    pub path: String,
    pub status: u16,
    /// When it arrived.
    pub at: DateTime<Utc>,
    /// When it was answered.
    pub answered_at: DateTime<Utc>,
    /// The `Retry-After` of a `429` (0 when the header was left out).
    pub retry_after_secs: Option<u64>,
    /// Whether the `429` carried `Retry-After` (Graph sometimes leaves it out).
    #[serde(default)]
    pub retry_after_header: bool,
}

/// A `429` given to a mailbox's client, and when that client's next request arrived.
#[derive(Debug, Clone, Serialize)]
pub struct ThrottleReply {
    pub answered_at: DateTime<Utc>,
    pub retry_after_secs: u64,
    /// Whether it carried `Retry-After` (without it, a client backs off on its own).
    pub retry_after_header: bool,
    /// The first request for the mailbox that arrived after the `429` was answered.
    pub next_request_at: Option<DateTime<Utc>>,
}

impl ThrottleReply {
    /// Whether the client waited the whole `Retry-After` before its next request.
    pub fn honoured(&self) -> bool {
        let until = self.answered_at
            + chrono::Duration::seconds(i64::try_from(self.retry_after_secs).unwrap_or(i64::MAX));
        self.next_request_at.is_none_or(|next| next >= until)
    }
}

/// Per-mailbox Graph counters.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GraphMailboxStats {
    pub address: String,
    pub requests: u64,
    /// Requests answered `429`.
    pub throttled: u64,
    /// The most requests for this mailbox ever in the simulator at once (those refused for
    /// concurrency included).
    pub max_concurrent: u64,
    pub in_flight: u64,
    /// Throttling replies still armed (`throttle_graph`).
    pub armed_throttle: u64,
    pub throttle_replies: Vec<ThrottleReply>,
}

/// What to do with an arriving request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    Serve,
    /// `429` because a test armed it: `Retry-After` seconds, or no header (`None`).
    Armed(Option<u64>),
    /// `429` because more than the cap are in flight.
    Concurrency,
}

#[derive(Debug, Default)]
struct MailboxActivity {
    stats: GraphMailboxStats,
    /// `None`: the armed `429`s carry no `Retry-After`.
    armed_retry_after: Option<u64>,
}

#[derive(Debug)]
pub(crate) struct GraphActivity {
    mailboxes: Mutex<HashMap<String, MailboxActivity>>,
    log: Mutex<VecDeque<GraphRequest>>,
    max_log: usize,
}

impl GraphActivity {
    pub fn new(max_log: usize) -> Self {
        Self {
            mailboxes: Mutex::new(HashMap::new()),
            log: Mutex::new(VecDeque::new()),
            max_log,
        }
    }

    /// Counts an arriving request for `mailbox` and decides whether it is served; every
    /// call must be paired with `leave`.
    pub fn arrive(&self, mailbox: &str, max_concurrent: u64) -> Admission {
        let now = Utc::now();
        let mut map = lock(&self.mailboxes);
        let a = map.entry(mailbox.to_owned()).or_default();
        a.stats.address = mailbox.to_owned();
        a.stats.requests += 1;
        a.stats.in_flight += 1;
        a.stats.max_concurrent = a.stats.max_concurrent.max(a.stats.in_flight);
        for t in a
            .stats
            .throttle_replies
            .iter_mut()
            .filter(|t| t.next_request_at.is_none())
        {
            t.next_request_at = Some(now);
        }
        if a.stats.armed_throttle > 0 {
            a.stats.armed_throttle -= 1;
            Admission::Armed(a.armed_retry_after)
        } else if a.stats.in_flight > max_concurrent {
            Admission::Concurrency
        } else {
            Admission::Serve
        }
    }

    /// The request is answered: logs it, and remembers a `429`. `counted`: it went
    /// through `arrive` (it was authenticated).
    pub fn leave(&self, mut request: GraphRequest, counted: bool) {
        request.answered_at = Utc::now();
        if counted {
            let mut map = lock(&self.mailboxes);
            let a = map.entry(request.mailbox.clone()).or_default();
            a.stats.in_flight = a.stats.in_flight.saturating_sub(1);
            if let Some(secs) = request.retry_after_secs {
                a.stats.throttled += 1;
                a.stats.throttle_replies.push(ThrottleReply {
                    answered_at: request.answered_at,
                    retry_after_secs: secs,
                    retry_after_header: request.retry_after_header,
                    next_request_at: None,
                });
            }
        }
        let mut log = lock(&self.log);
        log.push_back(request);
        while log.len() > self.max_log {
            log.pop_front();
        }
    }

    /// Answers the next `requests` requests of `mailbox` with `429`, `Retry-After: secs`
    /// (`None`: without the header).
    pub fn arm_throttle(&self, mailbox: &str, requests: u64, retry_after_secs: Option<u64>) {
        let mut map = lock(&self.mailboxes);
        let a = map.entry(mailbox.to_owned()).or_default();
        a.stats.address = mailbox.to_owned();
        a.stats.armed_throttle = requests;
        a.armed_retry_after = retry_after_secs;
    }

    pub fn stats(&self) -> Vec<GraphMailboxStats> {
        let mut v: Vec<_> = lock(&self.mailboxes)
            .values()
            .map(|a| a.stats.clone())
            .collect();
        v.sort_by(|a, b| a.address.cmp(&b.address));
        v
    }

    pub fn requests(&self) -> Vec<GraphRequest> {
        lock(&self.log).iter().cloned().collect()
    }

    /// Forgets counters and the log, keeping requests in flight counted.
    pub fn clear(&self) {
        lock(&self.log).clear();
        for a in lock(&self.mailboxes).values_mut() {
            let in_flight = a.stats.in_flight;
            a.stats = GraphMailboxStats {
                address: a.stats.address.clone(),
                in_flight,
                ..Default::default()
            };
            a.armed_retry_after = None;
        }
    }
}
