//! Hold episodes and probes of one mailbox: the bookkeeping behind "one failed AUTH per
//! backoff period". A mailbox held back after a mailbox-level failure starts an *episode*;
//! when the hold ends it is on *probation*: one send (the probe) may use it, alone, until it
//! proves the mailbox healthy (the episodes end) or fails (the next episode, twice the
//! backoff). Failures of sends that were already in flight when the hold began belong to
//! the episode already counted: they neither double the backoff nor start a hold.
//!
//! Pure bookkeeping; `MailboxPool` applies its answers to the schedule under the same lock.

use crate::throttle::{MailboxState, Millis};

use super::*;

/// What a send knew of its mailbox when it started: which episode a failure or a success of
/// it belongs to. Taken from its lease ([`super::Lease::ticket`]), kept after the lease ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendTicket {
    pub idx: usize,
    /// The reservation's id, unique within the pool.
    id: u64,
    /// The mailbox's generation when the send started.
    generation: u64,
    probe: bool,
}

impl SendTicket {
    /// This send is the probe of a mailbox on probation.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

/// The health of one mailbox, beyond what the schedule's state says.
#[derive(Debug, Default, Clone)]
pub(super) struct Health {
    /// Episodes in a row since the mailbox last proved healthy: the backoff doubles with each.
    episodes: u32,
    /// Changes when an episode starts and when probation ends: a send that started under an
    /// older generation speaks for a state already judged.
    generation: u64,
    /// Held back and not proved healthy since: the next send is a probe.
    probation: bool,
    /// The probe in flight: its ticket id, and the hold that keeps other sends off meanwhile.
    probe: Option<(u64, MailboxState)>,
    /// The last hold was a quarantine (the probe's hold shows the same).
    quarantined: bool,
}

impl Health {
    /// A mailbox not proved yet (at start): its first send is a probe, so a mailbox broken
    /// before deliver started fails one AUTH, not one per connection it may open.
    pub fn unproven() -> Self {
        Self {
            probation: true,
            ..Self::default()
        }
    }

    pub fn episodes(&self) -> u32 {
        self.episodes
    }

    pub fn on_probation(&self) -> bool {
        self.probation
    }

    /// A send starts on this mailbox with reservation `id`. On probation it is the probe, and
    /// the state to set now (held until `probe_until`) is returned: nobody else may pick the
    /// mailbox until the probe's verdict.
    pub fn start(
        &mut self,
        idx: usize,
        id: u64,
        probe_until: Millis,
    ) -> (SendTicket, Option<MailboxState>) {
        let ticket = SendTicket {
            idx,
            id,
            generation: self.generation,
            probe: self.probation,
        };
        if !self.probation {
            return (ticket, None);
        }
        let hold = self.held_until(probe_until);
        self.probe = Some((id, hold));
        (ticket, Some(hold))
    }

    /// Whether the outcome of `ticket` says something new: on probation only the probe's does,
    /// otherwise any send started since the last change.
    fn speaks(&self, ticket: &SendTicket) -> bool {
        if self.probation {
            self.probe.is_some_and(|(id, _)| id == ticket.id)
        } else {
            ticket.generation == self.generation
        }
    }

    /// A mailbox-level failure of `ticket`. `Some(n)`: it starts episode `n` (1 for a healthy
    /// mailbox's first failure, one more for each failed probe), and the mailbox is on
    /// probation; the caller holds it with that episode's backoff. `None`: it belongs to an
    /// episode already counted.
    pub fn failed(&mut self, ticket: &SendTicket, quarantine: bool) -> Option<u32> {
        if !self.speaks(ticket) {
            return None;
        }
        self.episodes = self.episodes.saturating_add(1);
        self.generation += 1;
        self.probation = true;
        self.probe = None;
        self.quarantined = quarantine;
        Some(self.episodes)
    }

    /// `ticket` proved the mailbox works (its session was opened and the server took the
    /// message, or refused it for the message's sake). For the probe: the episodes end, and
    /// the probe's hold is returned for the caller to lift (if it is still the state).
    pub fn proved(&mut self, ticket: &SendTicket) -> Option<MailboxState> {
        if !self.probation || !self.speaks(ticket) {
            return None;
        }
        self.episodes = 0;
        self.generation += 1;
        self.probation = false;
        self.probe.take().map(|(_, hold)| hold)
    }

    /// `ticket` ended without a verdict (released unsent). For the probe: the mailbox stays on
    /// probation, and the probe's hold is returned for the caller to lift, so the next send
    /// probes.
    pub fn released(&mut self, ticket: &SendTicket) -> Option<MailboxState> {
        match self.probe {
            Some((id, hold)) if id == ticket.id => {
                self.probe = None;
                Some(hold)
            }
            _ => None,
        }
    }

    /// A hold of the kind of the last episode.
    pub fn held_until(&self, until: Millis) -> MailboxState {
        if self.quarantined {
            MailboxState::Quarantined { until }
        } else {
            MailboxState::Paused { until }
        }
    }
}

/// What a send proved about its mailbox: healthy, or held back (a mailbox, a tenant).
impl MailboxPool {
    /// The send of `ticket` proved its mailbox works: its session was opened (AUTH passed)
    /// and the server answered for the message's sake, not the mailbox's. For a probe, the
    /// mailbox is active again and its episodes end. A send that was in flight before the
    /// mailbox was held proves nothing (its session may predate the fault).
    pub fn mark_healthy(&self, ticket: SendTicket) {
        let lifted = {
            let mut book = self.book();
            let hold = book.health[ticket.idx].proved(&ticket);
            book.lift(ticket.idx, hold)
        };
        if lifted {
            tracing::info!(mailbox = %self.mailboxes[ticket.idx].address, "probe passed; mailbox active again");
            self.changed.notify_waiters();
        }
    }

    /// Holds a mailbox back after a mailbox-level refusal of the send of `ticket`, until a
    /// window frees or its backoff ends. A healthy mailbox's first failure and a failed probe
    /// start an episode (the backoff doubles per episode); failures of sends that were in
    /// flight when the hold began belong to it and change nothing.
    pub fn hold_mailbox(&self, ticket: SendTicket, problem: MailboxProblem) {
        let idx = ticket.idx;
        let now = now_millis();
        let (episode, pause) = {
            let mut book = self.book();
            let Some(episode) = book.health[idx].failed(&ticket, problem.is_quarantine()) else {
                drop(book);
                tracing::debug!(mailbox = %self.mailboxes[idx].address, problem = problem.as_str(), "failure of a send from an episode already counted");
                return;
            };
            let limits = book
                .schedule
                .mailbox(idx)
                .map(|m| m.limits().clone())
                .unwrap_or_default();
            let pause = match problem {
                // The window tells exactly when room comes back.
                MailboxProblem::Rate => limits.message_window,
                MailboxProblem::Quota => limits.recipient_window.min(self.max_pause),
                MailboxProblem::Connections => Duration::from_secs(2).min(self.pause),
                // Credentials, send-as, throttling for repeated errors (5.2.25x), sessions
                // that cannot be opened: each episode waits twice as long as the last.
                MailboxProblem::Auth
                | MailboxProblem::SendAs
                | MailboxProblem::StorageFull
                | MailboxProblem::Throttled
                | MailboxProblem::Unreachable => self.backoff(episode),
            };
            let state = book.health[idx].held_until(now + pause);
            let _ = book.schedule.set_state(idx, state);
            book.held_for[idx] = problem.as_str();
            (episode, pause)
        };
        tracing::warn!(mailbox = %self.mailboxes[idx].address, problem = problem.as_str(), episode, pause_ms = pause.as_millis() as u64, quarantined = problem.is_quarantine(), "mailbox held back");
        self.changed.notify_waiters();
    }

    /// Holds back every mailbox of a tenant (blocked, or its external limit reached).
    pub fn hold_tenant(&self, tenant: usize, problem: TenantProblem) {
        let now = now_millis();
        let pause = match problem {
            TenantProblem::ExternalLimit => {
                let book = self.book();
                book.schedule
                    .tenant(tenant)
                    .map(|t| t.window().window())
                    .unwrap_or(self.pause)
                    .min(self.max_pause)
            }
            TenantProblem::Blocked => self.max_pause,
        };
        let until = now + pause;
        {
            let mut book = self.book();
            for (idx, m) in self.mailboxes.iter().enumerate() {
                if m.tenant == tenant {
                    let _ = book
                        .schedule
                        .set_state(idx, MailboxState::Quarantined { until });
                    book.held_for[idx] = problem.as_str();
                }
            }
        }
        tracing::warn!(tenant = %self.mailboxes.iter().find(|m| m.tenant == tenant).map(|m| m.tenant_id.as_str()).unwrap_or("?"), problem = problem.as_str(), pause_ms = pause.as_millis() as u64, "tenant held back");
        self.changed.notify_waiters();
    }

    /// `pause_ms` doubled per episode after the first, up to `max_pause_ms`.
    pub(super) fn backoff(&self, episode: u32) -> Duration {
        let factor = 1u32 << episode.saturating_sub(1).min(16);
        (self.pause * factor).min(self.max_pause)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAR: Millis = Millis(1_000_000);

    #[test]
    fn in_flight_failures_belong_to_the_episode_and_only_a_failed_probe_starts_the_next() {
        let mut h = Health::default();
        // three sends in flight on a healthy mailbox
        let (a, hold) = h.start(0, 1, FAR);
        assert_eq!(hold, None);
        let (b, _) = h.start(0, 2, FAR);
        let (c, _) = h.start(0, 3, FAR);
        assert!(!a.is_probe());
        assert_eq!(
            h.failed(&a, true),
            Some(1),
            "the first failure starts episode 1"
        );
        assert!(h.on_probation());
        assert_eq!(h.failed(&b, true), None, "in flight when the hold began");
        assert_eq!(h.proved(&c), None, "an old session proves nothing");
        assert!(h.on_probation());

        // the hold ends: the next send is the probe, and holds the mailbox while it runs
        let (p, hold) = h.start(0, 4, FAR);
        assert!(p.is_probe());
        assert_eq!(hold, Some(MailboxState::Quarantined { until: FAR }));
        assert_eq!(h.failed(&c, true), None, "still the old episode");
        assert_eq!(h.failed(&p, true), Some(2), "a failed probe doubles");
        assert_eq!(h.failed(&p, true), None, "one verdict per probe");
        let (p2, _) = h.start(0, 5, FAR);
        assert_eq!(h.failed(&p2, true), Some(3));
        assert_eq!(h.episodes(), 3);

        // a probe that works ends the episodes; the next failure starts over at 1
        let (p3, hold) = h.start(0, 6, FAR);
        assert_eq!(h.proved(&p3), hold);
        assert!(!h.on_probation());
        assert_eq!(h.episodes(), 0);
        assert_eq!(h.failed(&p2, true), None, "a stale probe");
        let (d, hold) = h.start(0, 7, FAR);
        assert_eq!((d.is_probe(), hold), (false, None));
        assert_eq!(h.failed(&d, false), Some(1));
        let (_, hold) = h.start(0, 8, FAR);
        assert_eq!(hold, Some(MailboxState::Paused { until: FAR }));
    }

    #[test]
    fn an_unproven_mailbox_starts_with_a_probe() {
        let mut h = Health::unproven();
        let (p, hold) = h.start(0, 1, FAR);
        assert!(p.is_probe());
        assert_eq!(hold, Some(MailboxState::Paused { until: FAR }));
        assert_eq!(
            h.failed(&p, true),
            Some(1),
            "its failure is the first episode"
        );
    }

    #[test]
    fn a_probe_released_unsent_leaves_the_mailbox_on_probation() {
        let mut h = Health::default();
        let (a, _) = h.start(0, 1, FAR);
        h.failed(&a, false);
        let (p, hold) = h.start(0, 2, FAR);
        assert_eq!(h.released(&p), hold);
        assert!(h.on_probation());
        assert_eq!(h.failed(&p, false), None, "released: no verdict any more");
        assert_eq!(h.released(&p), None);
        let (p2, _) = h.start(0, 3, FAR);
        assert!(p2.is_probe());
        assert_eq!(h.failed(&p2, false), Some(2));
    }
}
