//! Holding a mailbox back for a while: paused or quarantined until an instant.

use super::time::Millis;

/// Whether a mailbox may be picked. Paused and quarantined mailboxes come back on their own at `until`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MailboxState {
    /// Eligible.
    Active,
    /// Briefly held back (e.g. the server throttled it); eligible again at `until`.
    Paused {
        /// Re-admission instant.
        until: Millis,
    },
    /// Held back for a mailbox-level fault (credentials, send-as, tenant blocked); eligible again at `until`.
    Quarantined {
        /// Re-admission instant.
        until: Millis,
    },
}

impl MailboxState {
    /// The re-admission instant, if held back.
    pub fn until(self) -> Option<Millis> {
        match self {
            MailboxState::Active => None,
            MailboxState::Paused { until } | MailboxState::Quarantined { until } => Some(until),
        }
    }

    /// The state as it stands at `now` (a hold whose `until` has passed is `Active`).
    pub fn at(self, now: Millis) -> MailboxState {
        match self.until() {
            Some(until) if until > now => self,
            _ => MailboxState::Active,
        }
    }
}
