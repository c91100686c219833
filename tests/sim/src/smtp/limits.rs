//! Per-mailbox and per-tenant quota state: sliding-window logs of accepted messages and
//! recipients, connection counting, and the per-mailbox statistics derived from them.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::Limits;
use crate::records::{MailboxStats, lock};

/// A log of (time, amount) entries; an entry counts while `now < time + len`. A log rather
/// than fixed buckets, because Exchange counts in rolling windows and a client that only
/// respects fixed buckets can put twice the limit into one rolling window.
#[derive(Debug)]
pub(crate) struct SlidingWindow {
    len: Duration,
    entries: VecDeque<(Instant, u64)>,
    sum: u64,
}

impl SlidingWindow {
    pub fn new(len: Duration) -> Self {
        Self {
            len,
            entries: VecDeque::new(),
            sum: 0,
        }
    }

    fn prune(&mut self, now: Instant) {
        while let Some(&(t, n)) = self.entries.front() {
            if t + self.len <= now {
                self.entries.pop_front();
                self.sum -= n;
            } else {
                break;
            }
        }
    }

    pub fn current(&mut self, now: Instant) -> u64 {
        self.prune(now);
        self.sum
    }

    /// Adds `n` at `now` and returns the window's total including it.
    pub fn add(&mut self, now: Instant, n: u64) -> u64 {
        self.prune(now);
        self.entries.push_back((now, n));
        self.sum += n;
        self.sum
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.sum = 0;
    }
}

/// Result of the quota check at the end of DATA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Accept,
    /// Messages per window would be exceeded.
    MessageRate,
    /// Recipients per window would be exceeded.
    RecipientQuota,
    /// The tenant's external recipients per window would be exceeded.
    TenantExternal,
}

#[derive(Debug)]
struct MailboxState {
    limits: Limits,
    messages: SlidingWindow,
    recipients: SlidingWindow,
    stats: MailboxStats,
}

#[derive(Debug)]
struct TenantState {
    limit: u64,
    external: SlidingWindow,
}

/// All quota state, shared by every SMTP session.
#[derive(Debug)]
pub(crate) struct LimitState {
    limits_enabled: bool,
    mailboxes: Mutex<HashMap<String, MailboxState>>,
    tenants: Mutex<HashMap<String, TenantState>>,
}

/// One connection counted against a mailbox's connection cap; released on drop.
#[derive(Debug)]
pub(crate) struct ConnectionSlot {
    state: Arc<LimitState>,
    mailbox: String,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let Some(mb) = lock(&self.state.mailboxes).get_mut(&self.mailbox) {
            mb.stats.current_connections = mb.stats.current_connections.saturating_sub(1);
        }
    }
}

impl LimitState {
    /// `mailboxes`: (address, limits); `tenants`: (id, external limit, window).
    pub fn new(
        limits_enabled: bool,
        mailboxes: impl IntoIterator<Item = (String, Limits)>,
        tenants: impl IntoIterator<Item = (String, u64, Duration)>,
    ) -> Self {
        let mailboxes = mailboxes
            .into_iter()
            .map(|(addr, limits)| {
                let st = MailboxState {
                    messages: SlidingWindow::new(limits.message_window),
                    recipients: SlidingWindow::new(limits.recipient_window),
                    limits,
                    stats: MailboxStats {
                        address: addr.clone(),
                        ..MailboxStats::default()
                    },
                };
                (addr, st)
            })
            .collect();
        let tenants = tenants
            .into_iter()
            .map(|(id, limit, window)| {
                (
                    id,
                    TenantState {
                        limit,
                        external: SlidingWindow::new(window),
                    },
                )
            })
            .collect();
        Self {
            limits_enabled,
            mailboxes: Mutex::new(mailboxes),
            tenants: Mutex::new(tenants),
        }
    }

    pub fn limits(&self, mailbox: &str) -> Option<Limits> {
        lock(&self.mailboxes).get(mailbox).map(|m| m.limits.clone())
    }

    /// Takes a connection slot for an authenticated mailbox, or `None` when the cap is reached.
    pub fn try_connect(self: &Arc<Self>, mailbox: &str) -> Option<ConnectionSlot> {
        let mut map = lock(&self.mailboxes);
        let mb = map.get_mut(mailbox)?;
        if !mb.limits.unlimited && mb.stats.current_connections >= mb.limits.max_connections {
            return None;
        }
        mb.stats.current_connections += 1;
        mb.stats.max_concurrent_connections = mb
            .stats
            .max_concurrent_connections
            .max(mb.stats.current_connections);
        Some(ConnectionSlot {
            state: Arc::clone(self),
            mailbox: mailbox.to_owned(),
        })
    }

    /// Checks every rolling-window quota for one message and, if all allow it, counts it.
    /// Check and count happen under one lock so concurrent sessions cannot both squeeze in.
    pub fn admit(
        &self,
        mailbox: &str,
        tenant: &str,
        recipients: u64,
        external_recipients: u64,
        now: Instant,
    ) -> Verdict {
        let mut map = lock(&self.mailboxes);
        let Some(mb) = map.get_mut(mailbox) else {
            return Verdict::Accept;
        };
        let mut tenants = lock(&self.tenants);
        let tenant_state = tenants.get_mut(tenant);
        if !mb.limits.unlimited {
            if mb.messages.current(now) + 1 > mb.limits.messages_per_window {
                return Verdict::MessageRate;
            }
            if mb.recipients.current(now) + recipients > mb.limits.recipients_per_window {
                return Verdict::RecipientQuota;
            }
        }
        let tenant_state = if self.limits_enabled {
            tenant_state
        } else {
            None
        };
        if let Some(t) = tenant_state {
            if external_recipients > 0 && t.external.current(now) + external_recipients > t.limit {
                return Verdict::TenantExternal;
            }
            if external_recipients > 0 {
                t.external.add(now, external_recipients);
            }
        }
        if !mb.limits.unlimited {
            let m = mb.messages.add(now, 1);
            let r = mb.recipients.add(now, recipients);
            mb.stats.max_messages_in_window = mb.stats.max_messages_in_window.max(m);
            mb.stats.max_recipients_in_window = mb.stats.max_recipients_in_window.max(r);
        }
        mb.stats.accepted += 1;
        mb.stats.recipients_accepted += recipients;
        Verdict::Accept
    }

    pub fn note_refusal(&self, mailbox: &str) {
        if let Some(mb) = lock(&self.mailboxes).get_mut(mailbox) {
            mb.stats.refused += 1;
        }
    }

    pub fn stats(&self) -> Vec<MailboxStats> {
        let mut v: Vec<_> = lock(&self.mailboxes)
            .values()
            .map(|m| m.stats.clone())
            .collect();
        v.sort_by(|a, b| a.address.cmp(&b.address));
        v
    }

    /// Forgets all windows and counters; open connections stay counted.
    pub fn reset(&self) {
        for mb in lock(&self.mailboxes).values_mut() {
            mb.messages.clear();
            mb.recipients.clear();
            let current = mb.stats.current_connections;
            mb.stats = MailboxStats {
                address: mb.stats.address.clone(),
                current_connections: current,
                max_concurrent_connections: current,
                ..MailboxStats::default()
            };
        }
        for t in lock(&self.tenants).values_mut() {
            t.external.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_slides() {
        let t0 = Instant::now();
        let mut w = SlidingWindow::new(Duration::from_millis(100));
        assert_eq!(w.add(t0, 1), 1);
        assert_eq!(w.add(t0 + Duration::from_millis(50), 2), 3);
        assert_eq!(w.current(t0 + Duration::from_millis(99)), 3);
        // The first entry leaves exactly one window length after it arrived.
        assert_eq!(w.current(t0 + Duration::from_millis(100)), 2);
        assert_eq!(w.current(t0 + Duration::from_millis(150)), 0);
    }
}
