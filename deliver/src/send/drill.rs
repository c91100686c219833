//! Crash drills for the tests: with `MAILPIPE_CRASH_AT=<point>:<n>` deliver aborts (no
//! cleanup, as a `kill -9` would leave things) the n-th time a send reaches `point`, so a
//! test can prove that a crash at each instant of a send ends every job exactly once.
//! Unset, as in production, a check reads one cached `None`.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Where in a send a drill may crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// The send is on record (written ahead), nothing handed to the server yet.
    AfterDecision,
    /// The message's data and its final `.` are written and the reply is awaited: the
    /// abort comes when the connection first reads after the data, so the server has the
    /// whole message however slow the machine is, and (the simulator with
    /// `accepted_reply_delay_ms`) holds its 250.
    DuringData,
    /// Graph: the draft is created and noted on the send, not sent yet.
    AfterDraft,
    /// Graph, a message with several attachments: the draft has its first attachment,
    /// not the others (a draft that must never be sent as it is).
    MidAttachments,
    /// The server answered 250 (Graph: 202); the outcome is not on record yet.
    AfterReply,
    /// The outcome is on record; the message is not acked yet.
    AfterOutcome,
}

impl CrashPoint {
    pub fn as_str(self) -> &'static str {
        match self {
            CrashPoint::AfterDecision => "after_decision",
            CrashPoint::DuringData => "during_data",
            CrashPoint::AfterDraft => "after_draft",
            CrashPoint::MidAttachments => "mid_attachments",
            CrashPoint::AfterReply => "after_reply",
            CrashPoint::AfterOutcome => "after_outcome",
        }
    }
}

/// The drill asked for (`point`, `n`), read once.
static DRILL: LazyLock<Option<(String, u64)>> = LazyLock::new(|| {
    let value = std::env::var("MAILPIPE_CRASH_AT").ok()?;
    let (point, n) = value.split_once(':')?;
    Some((point.to_owned(), n.parse().ok()?))
});

static REACHED: AtomicU64 = AtomicU64::new(0);

/// True when the drill names `point` and this is its n-th time here: the caller aborts
/// (with [`abort_at`]) at the instant it chooses.
pub fn armed(point: CrashPoint) -> bool {
    let Some((name, n)) = DRILL.as_ref() else {
        return false;
    };
    name == point.as_str() && REACHED.fetch_add(1, Ordering::SeqCst) + 1 == *n
}

/// Aborts the process, as a `kill -9` would leave things.
pub fn abort_at(point: CrashPoint) -> ! {
    eprintln!(
        "crash drill: aborting at {} (MAILPIPE_CRASH_AT)",
        point.as_str()
    );
    std::process::abort()
}

/// Aborts the process when the drill names `point` and this is its n-th time here.
pub fn reached(point: CrashPoint) {
    if armed(point) {
        abort_at(point);
    }
}
