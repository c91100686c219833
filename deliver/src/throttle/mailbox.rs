//! One mailbox's limits: messages per window, recipients per window, connections, recipients per message.

use std::time::Duration;

use super::admit::Admit;
use super::error::ThrottleError;
use super::time::Millis;
use super::window::{SlidingWindow, WindowReservation, next_owner};

/// Per-mailbox limits. The defaults are Exchange Online's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailboxLimits {
    /// Messages per `message_window` (default 30).
    pub messages: u64,
    /// Default 60 s.
    pub message_window: Duration,
    /// Recipients (To + Cc + Bcc) per `recipient_window` (default 10,000).
    pub recipients: u64,
    /// Default 24 h.
    pub recipient_window: Duration,
    /// Concurrent sends in flight (default 3).
    pub connections: u32,
    /// Recipients in one message (default 500).
    pub recipients_per_message: u64,
}

impl Default for MailboxLimits {
    fn default() -> Self {
        MailboxLimits {
            messages: 30,
            message_window: Duration::from_secs(60),
            recipients: 10_000,
            recipient_window: Duration::from_secs(24 * 60 * 60),
            connections: 3,
            recipients_per_message: 500,
        }
    }
}

/// What is left of a mailbox's quota at an instant, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Messages that could still start in the current message window (in-flight sends counted).
    pub messages_left: u64,
    /// Recipients left in the current recipient window (in-flight sends counted).
    pub recipients_left: u64,
    /// Sends in flight.
    pub connections_in_use: u32,
}

/// The throttle of one mailbox.
#[derive(Debug)]
pub struct MailboxThrottle {
    limits: MailboxLimits,
    messages: SlidingWindow,
    recipients: SlidingWindow,
    connections: u32,
    owner: u64,
}

/// A send in flight on one mailbox: one message, its recipients and one connection.
/// Consumed by [`MailboxThrottle::settle`] or [`MailboxThrottle::release`], which also free the connection.
#[must_use = "a reservation must be settled or released, or its quota and connection are held forever"]
#[derive(Debug)]
pub struct MailboxReservation {
    owner: u64,
    messages: WindowReservation,
    recipients: WindowReservation,
}

impl MailboxReservation {
    /// Recipients held.
    pub fn recipients(&self) -> u64 {
        self.recipients.weight()
    }
    /// When the send started.
    pub fn started(&self) -> Millis {
        self.messages.started()
    }
}

impl MailboxThrottle {
    /// A throttle with no history.
    pub fn new(limits: MailboxLimits) -> MailboxThrottle {
        MailboxThrottle {
            messages: SlidingWindow::new(limits.messages, limits.message_window),
            recipients: SlidingWindow::new(limits.recipients, limits.recipient_window),
            connections: 0,
            owner: next_owner(),
            limits,
        }
    }

    /// The configured limits.
    pub fn limits(&self) -> &MailboxLimits {
        &self.limits
    }

    /// The message window (read-only).
    pub fn message_window(&self) -> &SlidingWindow {
        &self.messages
    }

    /// The recipient window (read-only).
    pub fn recipient_window(&self) -> &SlidingWindow {
        &self.recipients
    }

    /// Sends in flight.
    pub fn connections_in_use(&self) -> u32 {
        self.connections
    }

    /// The most recipients one message may have here; 0 if this mailbox can never send.
    pub fn max_recipients_per_message(&self) -> u64 {
        if self.limits.messages == 0 || self.limits.connections == 0 {
            return 0;
        }
        self.limits
            .recipients_per_message
            .min(self.limits.recipients)
    }

    /// When a message with `recipients` recipients could start here.
    pub fn earliest_admit(&self, now: Millis, recipients: u64) -> Admit {
        if recipients > self.limits.recipients_per_message || self.limits.connections == 0 {
            return Admit::Never;
        }
        let connections = if self.connections >= self.limits.connections {
            Admit::Busy
        } else {
            Admit::Now
        };
        // Never from a window must win over Busy from connections, so combine windows first.
        self.messages
            .earliest_admit(now, 1)
            .and(self.recipients.earliest_admit(now, recipients))
            .and(connections)
    }

    /// Starts a send now if it fits, holding a message, its recipients and a connection.
    pub fn reserve(&mut self, now: Millis, recipients: u64) -> Result<MailboxReservation, Admit> {
        match self.earliest_admit(now, recipients) {
            Admit::Now => {}
            other => return Err(other),
        }
        let messages = self.messages.reserve(now, 1)?;
        let recipients = match self.recipients.reserve(now, recipients) {
            Ok(r) => r,
            Err(e) => {
                // unreachable after the check above; undo rather than leak
                let _ = self.messages.release(messages);
                return Err(e);
            }
        };
        self.connections += 1;
        Ok(MailboxReservation {
            owner: self.owner,
            messages,
            recipients,
        })
    }

    /// The send ended at `at` and the server may have counted it: its quota is logged at
    /// `max(at, started)` and its connection is freed.
    pub fn settle(&mut self, r: MailboxReservation, at: Millis) -> Result<(), ThrottleError> {
        self.check(&r)?;
        self.connections = self.connections.saturating_sub(1);
        self.messages.settle(r.messages, at)?;
        self.recipients.settle(r.recipients, at)
    }

    /// The send ended and the server surely never counted it (failed before DATA): its quota and
    /// its connection are freed.
    pub fn release(&mut self, r: MailboxReservation) -> Result<(), ThrottleError> {
        self.check(&r)?;
        self.connections = self.connections.saturating_sub(1);
        self.messages.release(r.messages)?;
        self.recipients.release(r.recipients)
    }

    fn check(&self, r: &MailboxReservation) -> Result<(), ThrottleError> {
        if r.owner == self.owner {
            Ok(())
        } else {
            Err(ThrottleError::ForeignReservation)
        }
    }

    /// Rebuilds the ledger at startup: a message with `recipients` recipients that the server
    /// counted at (or before) `at`. Events older than a window simply never count in it.
    pub fn restore(&mut self, at: Millis, recipients: u64) {
        self.messages.record(at, 1);
        self.recipients.record(at, recipients);
    }

    /// Drops log entries that no longer count at `now`.
    pub fn prune(&mut self, now: Millis) {
        self.messages.prune(now);
        self.recipients.prune(now);
    }

    /// Quota left at `now`.
    pub fn snapshot(&self, now: Millis) -> Snapshot {
        Snapshot {
            messages_left: self.messages.remaining(now),
            recipients_left: self.recipients.remaining(now),
            connections_in_use: self.connections,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> MailboxLimits {
        MailboxLimits {
            messages: 3,
            message_window: Duration::from_secs(60),
            recipients: 100,
            recipient_window: Duration::from_secs(3600),
            connections: 2,
            recipients_per_message: 50,
        }
    }

    #[test]
    fn defaults_are_exchange_online() {
        let m = MailboxThrottle::new(MailboxLimits::default());
        assert_eq!(m.max_recipients_per_message(), 500);
        assert_eq!(
            m.snapshot(Millis(0)),
            Snapshot {
                messages_left: 30,
                recipients_left: 10_000,
                connections_in_use: 0
            }
        );
    }

    #[test]
    fn never_when_over_the_per_message_cap_or_the_window() {
        let m = MailboxThrottle::new(small());
        assert_eq!(m.earliest_admit(Millis(0), 51), Admit::Never);
        assert_eq!(m.earliest_admit(Millis(0), 50), Admit::Now);
        let m = MailboxThrottle::new(MailboxLimits {
            recipients: 20,
            ..small()
        });
        assert_eq!(m.earliest_admit(Millis(0), 21), Admit::Never);
        assert_eq!(m.max_recipients_per_message(), 20);
        let mut m = MailboxThrottle::new(MailboxLimits {
            connections: 0,
            ..small()
        });
        assert_eq!(m.earliest_admit(Millis(0), 1), Admit::Never);
        assert_eq!(m.reserve(Millis(0), 1).err(), Some(Admit::Never));
        assert_eq!(m.max_recipients_per_message(), 0);
    }

    #[test]
    fn connections_cap_is_busy_until_a_send_ends() {
        let mut m = MailboxThrottle::new(small());
        let a = m.reserve(Millis(0), 1).expect("fits");
        let b = m.reserve(Millis(0), 1).expect("fits");
        assert_eq!(m.connections_in_use(), 2);
        assert_eq!(m.earliest_admit(Millis(0), 1), Admit::Busy);
        m.settle(a, Millis(100)).expect("own");
        assert_eq!(m.connections_in_use(), 1);
        let c = m.reserve(Millis(100), 1).expect("fits");
        // three messages in the window now (one logged, two in flight)
        assert_eq!(m.earliest_admit(Millis(200), 1), Admit::Busy);
        m.release(b).expect("own");
        assert_eq!(m.snapshot(Millis(200)).messages_left, 1);
        m.settle(c, Millis(300)).expect("own");
        let d = m.reserve(Millis(300), 1).expect("fits");
        m.settle(d, Millis(400)).expect("own");
        assert_eq!(m.earliest_admit(Millis(400), 1), Admit::At(Millis(60_100)));
    }

    #[test]
    fn recipient_window_gives_the_exact_instant() {
        let mut m = MailboxThrottle::new(small());
        for (t, n) in [(0u64, 40u64), (10_000, 40)] {
            let r = m.reserve(Millis(t), n).expect("fits");
            m.settle(r, Millis(t + 1)).expect("own");
        }
        // 80 used: 20 more fit now, 30 only when the first 40 leave (1 + 3,600,000)
        assert_eq!(m.earliest_admit(Millis(20_000), 20), Admit::Now);
        assert_eq!(
            m.earliest_admit(Millis(20_000), 30),
            Admit::At(Millis(3_600_001))
        );
        assert_eq!(
            m.reserve(Millis(20_000), 30).err(),
            Some(Admit::At(Millis(3_600_001)))
        );
        // nothing was held by the refused reserve
        assert_eq!(m.connections_in_use(), 0);
        assert_eq!(m.snapshot(Millis(20_000)).recipients_left, 20);
    }

    #[test]
    fn restore_rebuilds_only_what_is_still_in_the_windows() {
        let mut m = MailboxThrottle::new(small());
        let now = Millis(10_000_000);
        m.restore(now.minus_ms(3_600_000), 50); // exactly one window ago: no longer counts
        m.restore(now.minus_ms(120_000), 30); // counts for recipients, not messages
        m.restore(now.minus_ms(30_000), 10);
        m.restore(now.minus_ms(20_000), 10);
        let s = m.snapshot(now);
        assert_eq!(s.messages_left, 1);
        assert_eq!(s.recipients_left, 50);
        assert_eq!(m.earliest_admit(now, 50), Admit::Now);
        assert_eq!(m.earliest_admit(now, 51), Admit::Never);
        m.prune(now);
        assert_eq!(m.recipient_window().len(), 3);
        assert_eq!(m.message_window().len(), 2);
        let r = m.reserve(now, 1).expect("fits");
        assert_eq!(m.earliest_admit(now, 1), Admit::At(now.plus_ms(30_000)));
        m.release(r).expect("own");
        assert_eq!(m.earliest_admit(now, 1), Admit::Now);
    }

    #[test]
    fn foreign_reservation_changes_nothing() {
        let mut a = MailboxThrottle::new(small());
        let mut b = MailboxThrottle::new(small());
        let _held = b.reserve(Millis(0), 5).expect("fits");
        let r = a.reserve(Millis(0), 5).expect("fits");
        assert_eq!(
            b.settle(r, Millis(1)),
            Err(ThrottleError::ForeignReservation)
        );
        assert_eq!(b.connections_in_use(), 1);
        assert_eq!(b.snapshot(Millis(1)).recipients_left, 95);
    }
}
