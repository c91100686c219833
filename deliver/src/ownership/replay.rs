//! The first lease round's progress: deliver is not ready before it has taken its
//! mailboxes and rebuilt their windows from the write-ahead record.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Whether the first lease round (taking this process's mailboxes and rebuilding their
/// windows) is done, for `/readyz` and the replay metric.
#[derive(Debug, Default)]
pub struct ReplayProgress {
    /// Sends read back so far.
    pub events: AtomicU64,
    pub done: AtomicBool,
}

impl ReplayProgress {
    /// The first round is done, having read `sends` back.
    pub fn finish(&self, sends: usize) {
        if !self.done.swap(true, Ordering::SeqCst) {
            let read = self.events.fetch_add(sends as u64, Ordering::Relaxed) + sends as u64;
            crate::metrics::REPLAYED_EVENTS.set(read as i64);
        }
    }

    pub fn readiness(&self) -> Result<(), String> {
        if self.done.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(format!(
                "taking mailbox leases and rebuilding their windows: {} sends read",
                self.events.load(Ordering::Relaxed)
            ))
        }
    }
}
