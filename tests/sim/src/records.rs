//! What the simulator saw: accepted messages and refusals, kept in memory (bounded) and
//! optionally written as .eml files.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// A message the server answered 250 to at the end of DATA.
#[derive(Debug, Clone, Serialize)]
pub struct AcceptedMessage {
    /// The id also given in the 250 reply (`250 2.0.0 OK <id> ...`).
    pub id: String,
    /// The authenticated mailbox (lower case).
    pub mailbox: String,
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    pub received_at: DateTime<Utc>,
    /// The message as received, dot-stuffing removed, CRLF line ends.
    #[serde(skip)]
    pub raw: Vec<u8>,
}

/// The SMTP stage a reply belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Connect,
    Helo,
    StartTls,
    Auth,
    MailFrom,
    RcptTo,
    Data,
    /// The reply to the final `.` of DATA.
    DataEnd,
    Other,
}

/// A 4xx/5xx reply (or a dropped connection, `code == 0`), with what it was about.
#[derive(Debug, Clone, Serialize)]
pub struct Refusal {
    /// The mailbox, when it was known (authenticated, or named in the AUTH attempt).
    pub mailbox: Option<String>,
    pub stage: Stage,
    /// The command verb that got the reply (`AUTH`, `MAIL`, `RCPT`, `DATA`, ...).
    pub command: String,
    pub code: u16,
    /// The enhanced status code (`5.7.3`), empty when the reply has none.
    pub enhanced: String,
    /// The full reply line after the code.
    pub text: String,
    pub at: DateTime<Utc>,
}

/// An AUTH the server refused (bad credentials, a locked-out mailbox, a blocked tenant, the
/// connections cap), so tests can count and space a client's failed AUTHs.
#[derive(Debug, Clone, Serialize)]
pub struct AuthFailure {
    /// The mailbox named in the attempt (lower case), when it could be read.
    pub mailbox: Option<String>,
    pub code: u16,
    /// The enhanced status code (`5.7.3`).
    pub enhanced: String,
    /// Refused because of continuous error throttling (the mailbox was locked out).
    pub throttled: bool,
    pub at: DateTime<Utc>,
}

/// Per-mailbox counters for the inspection API and tests.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct MailboxStats {
    pub address: String,
    pub accepted: u64,
    pub recipients_accepted: u64,
    pub refused: u64,
    /// Largest number of accepted messages found in any one message window.
    pub max_messages_in_window: u64,
    /// Largest number of accepted recipients found in any one recipient window.
    pub max_recipients_in_window: u64,
    pub max_concurrent_connections: u64,
    pub current_connections: u64,
}

/// The in-memory log.
#[derive(Debug)]
pub(crate) struct Records {
    inner: Mutex<Inner>,
    max_messages: usize,
    max_refusals: usize,
    eml_dir: Option<PathBuf>,
}

#[derive(Debug, Default)]
struct Inner {
    accepted: VecDeque<AcceptedMessage>,
    refusals: VecDeque<Refusal>,
    auth_failures: VecDeque<AuthFailure>,
    /// SMTP AUTH attempts per configured mailbox (lower case), whatever their outcome.
    auth_attempts: std::collections::HashMap<String, u64>,
}

impl Records {
    pub fn new(max_messages: usize, max_refusals: usize, eml_dir: Option<PathBuf>) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            max_messages,
            max_refusals,
            eml_dir,
        }
    }

    pub fn push_accepted(&self, msg: AcceptedMessage) {
        if let Some(dir) = &self.eml_dir {
            // Best effort: a full disk must not turn a 250 into a failure.
            let path = dir.join(format!("{}.eml", msg.id));
            if let Err(e) = std::fs::write(&path, &msg.raw) {
                tracing::warn!(path = %path.display(), error = %e, "cannot write .eml");
            }
        }
        let mut inner = lock(&self.inner);
        if self.max_messages == 0 {
            return;
        }
        while inner.accepted.len() >= self.max_messages {
            inner.accepted.pop_front();
        }
        inner.accepted.push_back(msg);
    }

    pub fn push_refusal(&self, r: Refusal) {
        let mut inner = lock(&self.inner);
        if self.max_refusals == 0 {
            return;
        }
        while inner.refusals.len() >= self.max_refusals {
            inner.refusals.pop_front();
        }
        inner.refusals.push_back(r);
    }

    /// Kept like refusals (at most `max_recorded_refusals`).
    pub fn push_auth_failure(&self, f: AuthFailure) {
        let mut inner = lock(&self.inner);
        if self.max_refusals == 0 {
            return;
        }
        while inner.auth_failures.len() >= self.max_refusals {
            inner.auth_failures.pop_front();
        }
        inner.auth_failures.push_back(f);
    }

    pub fn auth_failures(&self) -> Vec<AuthFailure> {
        lock(&self.inner).auth_failures.iter().cloned().collect()
    }

    /// Counts an AUTH attempt as `mailbox` (only configured mailboxes, so the map stays bounded).
    pub fn count_auth(&self, mailbox: &str) {
        *lock(&self.inner)
            .auth_attempts
            .entry(mailbox.to_owned())
            .or_default() += 1;
    }

    pub fn auth_attempts(&self, mailbox: &str) -> u64 {
        lock(&self.inner)
            .auth_attempts
            .get(mailbox)
            .copied()
            .unwrap_or(0)
    }

    pub fn accepted(&self) -> Vec<AcceptedMessage> {
        lock(&self.inner).accepted.iter().cloned().collect()
    }

    pub fn refusals(&self) -> Vec<Refusal> {
        lock(&self.inner).refusals.iter().cloned().collect()
    }

    pub fn clear(&self) {
        let mut inner = lock(&self.inner);
        inner.accepted.clear();
        inner.refusals.clear();
        inner.auth_failures.clear();
        inner.auth_attempts.clear();
    }
}

/// Locks a mutex, recovering from poisoning: the data are plain logs, still consistent.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
