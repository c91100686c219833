//! Choosing a mailbox of the pool for each message, or the exact instant to try again.

use std::fmt;

use super::admit::Admit;
use super::error::ThrottleError;
use super::mailbox::{MailboxReservation, MailboxThrottle, Snapshot};
use super::tenant::{TenantLimit, TenantReservation};
use super::time::Millis;
use super::window::next_owner;

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

/// Why no eligible mailbox could ever take a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Impossible {
    /// The eligibility predicate accepted no mailbox of the pool.
    NoEligibleMailbox,
    /// More recipients than any eligible mailbox allows in one message (or in its whole window).
    TooManyRecipients {
        /// Recipients of the message.
        requested: u64,
        /// The most any eligible mailbox allows (0: none of them can send at all).
        max: u64,
    },
    /// More external recipients than the tenant limit of any eligible mailbox.
    TooManyExternalRecipients {
        /// External recipients of the message.
        requested: u64,
        /// The largest tenant limit among the eligible mailboxes.
        max: u64,
    },
}

impl fmt::Display for Impossible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Impossible::NoEligibleMailbox => write!(f, "no eligible mailbox in the pool"),
            Impossible::TooManyRecipients { requested, max } => {
                write!(
                    f,
                    "{requested} recipients, but eligible mailboxes take at most {max} per message"
                )
            }
            Impossible::TooManyExternalRecipients { requested, max } => write!(
                f,
                "{requested} external recipients, but the eligible tenants allow at most {max} per window"
            ),
        }
    }
}

/// A send in flight, holding quota on one mailbox and its tenant. Give it back to
/// [`PoolSchedule::settle`] or [`PoolSchedule::release`] exactly once (it is consumed).
#[must_use = "a reservation must be settled or released, or its quota and connection are held forever"]
#[derive(Debug)]
pub struct Reservation {
    id: u64,
    pool: u64,
    mailbox: usize,
    tenant: usize,
    mbox: MailboxReservation,
    ext: TenantReservation,
}

impl Reservation {
    /// Unique within the pool, for logs.
    pub fn id(&self) -> u64 {
        self.id
    }
    /// Index of the mailbox to send through.
    pub fn mailbox(&self) -> usize {
        self.mailbox
    }
    /// Index of that mailbox's tenant.
    pub fn tenant(&self) -> usize {
        self.tenant
    }
    /// When the send started.
    pub fn started(&self) -> Millis {
        self.mbox.started()
    }
    /// Recipients held.
    pub fn recipients(&self) -> u64 {
        self.mbox.recipients()
    }
    /// External recipients held.
    pub fn external_recipients(&self) -> u64 {
        self.ext.external_recipients()
    }
}

/// The outcome of [`PoolSchedule::pick`].
#[derive(Debug)]
pub enum Pick {
    /// Send through this mailbox now; the reservation is already taken.
    Mailbox(usize, Reservation),
    /// Nothing can take it before this instant (exact, not a polling hint). Sleep until then, or
    /// until a reservation is settled or released, whichever comes first, and pick again.
    WaitUntil(Millis),
    /// Every mailbox that could take it is held by sends in flight (connections, in-flight quota):
    /// no instant can be computed. Sleep until a reservation is settled or released, then pick again.
    WaitForRelease,
    /// No eligible mailbox could ever take it.
    Impossible(Impossible),
}

#[derive(Debug)]
struct Slot {
    throttle: MailboxThrottle,
    tenant: usize,
    state: MailboxState,
    last_used: u64,
    /// Owned by this process (see `set_available`).
    available: bool,
}

/// Where a message can go, computed without changing anything.
struct Plan {
    /// Mailboxes that can take it now, best first.
    now: Vec<usize>,
    wait: Admit,
    impossible: Impossible,
}

/// A pool of mailboxes and their tenants. Pure and synchronous: the async caller owns the clock.
#[derive(Debug)]
pub struct PoolSchedule {
    slots: Vec<Slot>,
    tenants: Vec<TenantLimit>,
    owner: u64,
    next_id: u64,
    picks: u64,
}

impl Default for PoolSchedule {
    fn default() -> Self {
        PoolSchedule::new()
    }
}

impl PoolSchedule {
    /// An empty pool.
    pub fn new() -> PoolSchedule {
        PoolSchedule {
            slots: Vec::new(),
            tenants: Vec::new(),
            owner: next_owner(),
            next_id: 1,
            picks: 0,
        }
    }

    /// Adds a tenant; returns its index.
    pub fn add_tenant(&mut self, tenant: TenantLimit) -> usize {
        self.tenants.push(tenant);
        self.tenants.len() - 1
    }

    /// Adds an active mailbox of tenant `tenant`; returns its index.
    pub fn add_mailbox(
        &mut self,
        throttle: MailboxThrottle,
        tenant: usize,
    ) -> Result<usize, ThrottleError> {
        if tenant >= self.tenants.len() {
            return Err(ThrottleError::UnknownTenant(tenant));
        }
        self.slots.push(Slot {
            throttle,
            tenant,
            state: MailboxState::Active,
            last_used: 0,
            available: true,
        });
        Ok(self.slots.len() - 1)
    }

    /// Number of mailboxes.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when the pool has no mailbox.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Number of tenants.
    pub fn tenant_count(&self) -> usize {
        self.tenants.len()
    }

    /// A mailbox's throttle.
    pub fn mailbox(&self, idx: usize) -> Option<&MailboxThrottle> {
        self.slots.get(idx).map(|s| &s.throttle)
    }

    /// A mailbox's tenant index.
    pub fn tenant_of(&self, idx: usize) -> Option<usize> {
        self.slots.get(idx).map(|s| s.tenant)
    }

    /// A tenant's limit.
    pub fn tenant(&self, idx: usize) -> Option<&TenantLimit> {
        self.tenants.get(idx)
    }

    /// A tenant's limit, e.g. to import another process's sends with [`TenantLimit::restore`].
    pub fn tenant_mut(&mut self, idx: usize) -> Option<&mut TenantLimit> {
        self.tenants.get_mut(idx)
    }

    /// A mailbox's state as stored (a hold past its `until` is effectively active; see [`MailboxState::at`]).
    pub fn state(&self, idx: usize) -> Option<MailboxState> {
        self.slots.get(idx).map(|s| s.state)
    }

    /// Pauses, quarantines or re-activates a mailbox. Sends in flight on it are unaffected.
    pub fn set_state(&mut self, idx: usize, state: MailboxState) -> Result<(), ThrottleError> {
        let slot = self
            .slots
            .get_mut(idx)
            .ok_or(ThrottleError::UnknownMailbox(idx))?;
        slot.state = state;
        Ok(())
    }

    /// Makes a mailbox pickable or not (another deliver process owns it now). An
    /// unavailable mailbox is never picked and gives no wait instant, but a message it
    /// could send is not impossible: `pick` answers `WaitForRelease` when only
    /// unavailable mailboxes could take it.
    pub fn set_available(&mut self, idx: usize, available: bool) -> Result<(), ThrottleError> {
        let slot = self
            .slots
            .get_mut(idx)
            .ok_or(ThrottleError::UnknownMailbox(idx))?;
        slot.available = available;
        Ok(())
    }

    /// Forgets a mailbox's windows, to rebuild them from the record (a new owner). Only
    /// with no send in flight on it.
    pub fn reset_mailbox(&mut self, idx: usize) -> Result<(), ThrottleError> {
        let slot = self
            .slots
            .get_mut(idx)
            .ok_or(ThrottleError::UnknownMailbox(idx))?;
        if slot.throttle.connections_in_use() > 0 {
            return Err(ThrottleError::InFlight(idx));
        }
        slot.throttle = MailboxThrottle::new(slot.throttle.limits().clone());
        Ok(())
    }

    /// Restores a send into a mailbox's own windows only (its tenant's window learns of
    /// it separately, see [`TenantLimit::restore`]).
    pub fn restore_mailbox(
        &mut self,
        idx: usize,
        at: Millis,
        recipients: u64,
    ) -> Result<(), ThrottleError> {
        let slot = self
            .slots
            .get_mut(idx)
            .ok_or(ThrottleError::UnknownMailbox(idx))?;
        slot.throttle.restore(at, recipients);
        Ok(())
    }

    /// A mailbox's quota left at `now`.
    pub fn snapshot(&self, idx: usize, now: Millis) -> Option<Snapshot> {
        self.slots.get(idx).map(|s| s.throttle.snapshot(now))
    }

    /// Rebuilds the ledger at startup: mailbox `idx` sent a message with `recipients` recipients,
    /// `external` of them outside its tenant, counted at (or before) `at`.
    pub fn restore(
        &mut self,
        idx: usize,
        at: Millis,
        recipients: u64,
        external: u64,
    ) -> Result<(), ThrottleError> {
        let slot = self
            .slots
            .get_mut(idx)
            .ok_or(ThrottleError::UnknownMailbox(idx))?;
        let tenant = self
            .tenants
            .get_mut(slot.tenant)
            .ok_or(ThrottleError::UnknownTenant(slot.tenant))?;
        slot.throttle.restore(at, recipients);
        tenant.restore(at, external);
        Ok(())
    }

    fn plan(
        &self,
        now: Millis,
        recipients: u64,
        external: u64,
        eligible: &impl Fn(usize) -> bool,
    ) -> Plan {
        let mut ready: Vec<(u64, u64, usize)> = Vec::new();
        let mut wait = Admit::Never;
        let mut any_eligible = false;
        let mut any_mailbox_fits = false;
        let mut max_recipients = 0;
        let mut max_external = 0;
        for (idx, slot) in self.slots.iter().enumerate() {
            if !eligible(idx) {
                continue;
            }
            any_eligible = true;
            let Some(tenant) = self.tenants.get(slot.tenant) else {
                continue;
            };
            max_recipients = max_recipients.max(slot.throttle.max_recipients_per_message());
            let mailbox = slot.throttle.earliest_admit(now, recipients);
            if mailbox == Admit::Never {
                continue;
            }
            any_mailbox_fits = true;
            max_external = max_external.max(tenant.window().limit());
            if !slot.available {
                if tenant.window().limit() >= external {
                    wait = earliest(wait, Admit::Busy);
                }
                continue;
            }
            let held = match slot.state.at(now).until() {
                Some(until) => Admit::At(until),
                None => Admit::Now,
            };
            match mailbox.and(tenant.earliest_admit(now, external)).and(held) {
                Admit::Now => {
                    let left = slot.throttle.message_window().remaining(now);
                    // most message capacity left first, then least recently used
                    ready.push((u64::MAX - left, slot.last_used, idx));
                }
                Admit::At(t) => wait = earliest(wait, Admit::At(t)),
                Admit::Busy => wait = earliest(wait, Admit::Busy),
                Admit::Never => {}
            }
        }
        ready.sort_unstable();
        let impossible = if !any_eligible {
            Impossible::NoEligibleMailbox
        } else if !any_mailbox_fits {
            Impossible::TooManyRecipients {
                requested: recipients,
                max: max_recipients,
            }
        } else {
            Impossible::TooManyExternalRecipients {
                requested: external,
                max: max_external,
            }
        };
        Plan {
            now: ready.into_iter().map(|(_, _, idx)| idx).collect(),
            wait,
            impossible,
        }
    }

    /// When some eligible mailbox could take a message with `recipients` recipients (`external` of
    /// them external), without reserving anything: `Now`, `At(t)` (exactly), `Busy` (only after a
    /// release) or `Never`.
    pub fn earliest_admit(
        &self,
        now: Millis,
        recipients: u64,
        external: u64,
        eligible: impl Fn(usize) -> bool,
    ) -> Admit {
        let plan = self.plan(now, recipients, external, &eligible);
        if plan.now.is_empty() {
            plan.wait
        } else {
            Admit::Now
        }
    }

    /// Chooses a mailbox for a message with `recipients` recipients, `external` of them outside the
    /// tenant, among the mailboxes for which `eligible(idx)` holds, and reserves its quota (mailbox
    /// and tenant together) and a connection. Among mailboxes that can send now it takes the one
    /// with the most message capacity left, then the least recently used, so load spreads evenly.
    pub fn pick(
        &mut self,
        now: Millis,
        recipients: u64,
        external: u64,
        eligible: impl Fn(usize) -> bool,
    ) -> Pick {
        let plan = self.plan(now, recipients, external, &eligible);
        for idx in plan.now {
            if let Some(res) = self.reserve(idx, now, recipients, external) {
                return Pick::Mailbox(idx, res);
            }
        }
        match plan.wait {
            Admit::At(t) => Pick::WaitUntil(t),
            Admit::Busy => Pick::WaitForRelease,
            Admit::Now | Admit::Never => Pick::Impossible(plan.impossible),
        }
    }

    fn reserve(
        &mut self,
        idx: usize,
        now: Millis,
        recipients: u64,
        external: u64,
    ) -> Option<Reservation> {
        let slot = self.slots.get_mut(idx)?;
        let tenant = self.tenants.get_mut(slot.tenant)?;
        let ext = tenant.reserve(now, external).ok()?;
        let mbox = match slot.throttle.reserve(now, recipients) {
            Ok(m) => m,
            Err(_) => {
                // cannot happen after plan(); undo rather than leak
                let _ = tenant.release(ext);
                return None;
            }
        };
        slot.throttle.prune(now);
        tenant.prune(now);
        if slot.state.at(now) == MailboxState::Active {
            slot.state = MailboxState::Active;
        }
        self.picks += 1;
        slot.last_used = self.picks;
        let id = self.next_id;
        self.next_id += 1;
        Some(Reservation {
            id,
            pool: self.owner,
            mailbox: idx,
            tenant: slot.tenant,
            mbox,
            ext,
        })
    }

    fn parts(
        &mut self,
        r: &Reservation,
    ) -> Result<(&mut MailboxThrottle, &mut TenantLimit), ThrottleError> {
        if r.pool != self.owner {
            return Err(ThrottleError::ForeignReservation);
        }
        let slot = self
            .slots
            .get_mut(r.mailbox)
            .ok_or(ThrottleError::UnknownMailbox(r.mailbox))?;
        let tenant = self
            .tenants
            .get_mut(r.tenant)
            .ok_or(ThrottleError::UnknownTenant(r.tenant))?;
        Ok((&mut slot.throttle, tenant))
    }

    /// The send ended at `at` (completion: no earlier than the server's acceptance) and the server
    /// may have counted it: accepted, refused after DATA, or unknown (timeout, connection lost after
    /// DATA). Its quota moves to `at`; its connection is freed.
    pub fn settle(&mut self, r: Reservation, at: Millis) -> Result<(), ThrottleError> {
        let (mailbox, tenant) = self.parts(&r)?;
        let m = mailbox.settle(r.mbox, at);
        let t = tenant.settle(r.ext, at);
        m.and(t)
    }

    /// The send ended and the server surely never counted it (failed before DATA): its quota and
    /// its connection are freed.
    pub fn release(&mut self, r: Reservation) -> Result<(), ThrottleError> {
        let (mailbox, tenant) = self.parts(&r)?;
        let m = mailbox.release(r.mbox);
        let t = tenant.release(r.ext);
        m.and(t)
    }
}

/// The sooner of two waits: any instant beats `Busy`, which beats `Never`.
fn earliest(a: Admit, b: Admit) -> Admit {
    match (a, b) {
        (Admit::Now, _) | (_, Admit::Now) => Admit::Now,
        (Admit::At(x), Admit::At(y)) => Admit::At(x.min(y)),
        (Admit::At(x), _) | (_, Admit::At(x)) => Admit::At(x),
        (Admit::Busy, _) | (_, Admit::Busy) => Admit::Busy,
        (Admit::Never, Admit::Never) => Admit::Never,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::throttle::mailbox::MailboxLimits;

    const ALL: fn(usize) -> bool = |_| true;

    fn pool(n: usize, limits: MailboxLimits, tenant_limit: u64) -> PoolSchedule {
        let mut p = PoolSchedule::new();
        let t = p.add_tenant(TenantLimit::new(
            tenant_limit,
            Duration::from_secs(86_400),
            ["contoso.com"],
        ));
        for _ in 0..n {
            p.add_mailbox(MailboxThrottle::new(limits.clone()), t)
                .expect("tenant exists");
        }
        p
    }

    fn take(p: Pick) -> (usize, Reservation) {
        match p {
            Pick::Mailbox(idx, r) => (idx, r),
            other => panic!("expected a mailbox, got {other:?}"),
        }
    }

    #[test]
    fn impossible_reasons() {
        let mut empty = PoolSchedule::new();
        assert!(matches!(
            empty.pick(Millis(0), 1, 0, ALL),
            Pick::Impossible(Impossible::NoEligibleMailbox)
        ));
        let mut p = pool(2, MailboxLimits::default(), 1_000);
        assert!(matches!(
            p.pick(Millis(0), 1, 0, |_| false),
            Pick::Impossible(Impossible::NoEligibleMailbox)
        ));
        match p.pick(Millis(0), 501, 0, ALL) {
            Pick::Impossible(Impossible::TooManyRecipients {
                requested: 501,
                max: 500,
            }) => {}
            other => panic!("{other:?}"),
        }
        match p.pick(Millis(0), 400, 1_001, ALL) {
            Pick::Impossible(Impossible::TooManyExternalRecipients {
                requested: 1_001,
                max: 1_000,
            }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(p.earliest_admit(Millis(0), 501, 0, ALL), Admit::Never);
        // nothing was held by the refusals
        assert_eq!(p.snapshot(0, Millis(0)).map(|s| s.messages_left), Some(30));
        assert_eq!(p.tenant(0).map(|t| t.remaining(Millis(0))), Some(1_000));
        assert!(
            p.add_mailbox(MailboxThrottle::new(MailboxLimits::default()), 7)
                .is_err()
        );
        assert_eq!(
            Impossible::TooManyRecipients {
                requested: 501,
                max: 500
            }
            .to_string(),
            "501 recipients, but eligible mailboxes take at most 500 per message"
        );
    }

    #[test]
    fn impossible_only_considers_eligible_mailboxes() {
        let mut p = PoolSchedule::new();
        let t = p.add_tenant(TenantLimit::new(
            10_000,
            Duration::from_secs(86_400),
            ["contoso.com"],
        ));
        let small = MailboxLimits {
            recipients_per_message: 10,
            ..MailboxLimits::default()
        };
        p.add_mailbox(MailboxThrottle::new(small), t)
            .expect("tenant");
        p.add_mailbox(MailboxThrottle::new(MailboxLimits::default()), t)
            .expect("tenant");
        assert!(matches!(
            p.pick(Millis(0), 20, 0, |i| i == 0),
            Pick::Impossible(Impossible::TooManyRecipients {
                requested: 20,
                max: 10
            })
        ));
        assert!(matches!(p.pick(Millis(0), 20, 0, ALL), Pick::Mailbox(1, _)));
    }

    #[test]
    fn spreads_load_round_robin() {
        let mut p = pool(3, MailboxLimits::default(), 10_000);
        let mut order = Vec::new();
        for t in 0..7u64 {
            let (idx, r) = take(p.pick(Millis(t), 1, 0, ALL));
            order.push(idx);
            p.settle(r, Millis(t)).expect("own");
        }
        assert_eq!(order, [0, 1, 2, 0, 1, 2, 0]);
        // a mailbox with more capacity left is preferred over the least recently used one
        p.restore(0, Millis(100), 1, 0).expect("mailbox");
        p.restore(2, Millis(100), 1, 0).expect("mailbox");
        let (idx, r) = take(p.pick(Millis(200), 1, 0, ALL));
        assert_eq!(idx, 1);
        p.release(r).expect("own");
    }

    #[test]
    fn paused_and_quarantined_mailboxes_come_back_at_until() {
        let mut p = pool(2, MailboxLimits::default(), 10_000);
        p.set_state(
            0,
            MailboxState::Paused {
                until: Millis(5_000),
            },
        )
        .expect("mailbox");
        p.set_state(
            1,
            MailboxState::Quarantined {
                until: Millis(9_000),
            },
        )
        .expect("mailbox");
        assert!(matches!(
            p.pick(Millis(0), 1, 0, ALL),
            Pick::WaitUntil(Millis(5_000))
        ));
        assert!(matches!(
            p.pick(Millis(4_999), 1, 0, |i| i == 1),
            Pick::WaitUntil(Millis(9_000))
        ));
        let (idx, r) = take(p.pick(Millis(5_000), 1, 0, ALL));
        assert_eq!(idx, 0);
        assert_eq!(p.state(0), Some(MailboxState::Active));
        assert_eq!(
            MailboxState::Quarantined {
                until: Millis(9_000)
            }
            .at(Millis(9_000)),
            MailboxState::Active
        );
        p.settle(r, Millis(5_100)).expect("own");
        assert!(p.set_state(5, MailboxState::Active).is_err());
    }

    #[test]
    fn pause_while_busy_waits_for_release() {
        let limits = MailboxLimits {
            connections: 1,
            ..MailboxLimits::default()
        };
        let mut p = pool(1, limits, 10_000);
        let (_, r) = take(p.pick(Millis(0), 1, 0, ALL));
        assert!(matches!(p.pick(Millis(0), 1, 0, ALL), Pick::WaitForRelease));
        p.set_state(
            0,
            MailboxState::Paused {
                until: Millis(1_000),
            },
        )
        .expect("mailbox");
        assert!(matches!(p.pick(Millis(0), 1, 0, ALL), Pick::WaitForRelease));
        p.release(r).expect("own");
        assert!(matches!(
            p.pick(Millis(0), 1, 0, ALL),
            Pick::WaitUntil(Millis(1_000))
        ));
    }

    #[test]
    fn wait_until_is_the_earliest_over_mailboxes_and_tenant() {
        let limits = MailboxLimits {
            messages: 1,
            connections: 1,
            ..MailboxLimits::default()
        };
        let mut p = pool(2, limits, 10_000);
        let (a, ra) = take(p.pick(Millis(0), 1, 0, ALL));
        let (b, rb) = take(p.pick(Millis(10), 1, 0, ALL));
        assert_ne!(a, b);
        p.settle(ra, Millis(500)).expect("own");
        // mailbox a: window full until 60_500; mailbox b: connection busy
        assert!(matches!(
            p.pick(Millis(600), 1, 0, ALL),
            Pick::WaitUntil(Millis(60_500))
        ));
        p.settle(rb, Millis(700)).expect("own");
        assert!(matches!(
            p.pick(Millis(800), 1, 0, ALL),
            Pick::WaitUntil(Millis(60_500))
        ));
        assert!(matches!(
            p.pick(Millis(60_500), 1, 0, ALL),
            Pick::Mailbox(_, _)
        ));
    }

    #[test]
    fn tenant_window_is_reserved_with_the_mailbox() {
        let mut p = pool(2, MailboxLimits::default(), 100);
        let (_, r1) = take(p.pick(Millis(0), 60, 60, ALL));
        // the other mailbox is free, but the tenant's in-flight 60 leave no room for 60 more
        assert!(matches!(
            p.pick(Millis(0), 60, 60, ALL),
            Pick::WaitForRelease
        ));
        assert!(matches!(
            p.pick(Millis(0), 60, 40, ALL),
            Pick::Mailbox(1, _)
        ));
        p.settle(r1, Millis(1_000)).expect("own");
        assert_eq!(p.tenant(0).map(|t| t.remaining(Millis(1_000))), Some(0));
        assert!(matches!(
            p.pick(Millis(2_000), 1, 1, ALL),
            Pick::WaitUntil(Millis(86_401_000))
        ));
        assert!(matches!(
            p.pick(Millis(2_000), 1, 0, ALL),
            Pick::Mailbox(_, _)
        ));
    }

    #[test]
    fn release_gives_everything_back_and_foreign_tokens_are_refused() {
        let mut p = pool(1, MailboxLimits::default(), 1_000);
        let mut other = pool(1, MailboxLimits::default(), 1_000);
        let (_, r) = take(p.pick(Millis(0), 10, 5, ALL));
        assert_eq!(
            (r.recipients(), r.external_recipients(), r.started()),
            (10, 5, Millis(0))
        );
        let s = p.snapshot(0, Millis(0)).expect("mailbox");
        assert_eq!(
            (s.messages_left, s.recipients_left, s.connections_in_use),
            (29, 9_990, 1)
        );
        let (_, foreign) = take(other.pick(Millis(0), 1, 0, ALL));
        assert_eq!(p.release(foreign), Err(ThrottleError::ForeignReservation));
        p.release(r).expect("own");
        let s = p.snapshot(0, Millis(0)).expect("mailbox");
        assert_eq!(
            (s.messages_left, s.recipients_left, s.connections_in_use),
            (30, 10_000, 0)
        );
        assert_eq!(p.tenant(0).map(|t| t.remaining(Millis(0))), Some(1_000));
    }

    #[test]
    fn restore_rebuilds_the_pool_ledger() {
        let limits = MailboxLimits {
            messages: 2,
            ..MailboxLimits::default()
        };
        let mut p = pool(1, limits, 50);
        let now = Millis(1_000_000_000);
        p.restore(0, now.minus_ms(90_000), 5, 5).expect("mailbox"); // outside the message window
        p.restore(0, now.minus_ms(50_000), 5, 20).expect("mailbox");
        p.restore(0, now.minus_ms(40_000), 5, 20).expect("mailbox");
        assert!(p.restore(3, now, 1, 1).is_err());
        assert!(matches!(p.pick(now, 1, 0, ALL), Pick::WaitUntil(t) if t == now.plus_ms(10_000)));
        // the tenant's 24 h window holds 45 of 50
        assert!(matches!(p.pick(now.plus_ms(10_000), 1, 6, ALL),
            Pick::WaitUntil(t) if t == now.minus_ms(90_000).plus_ms(86_400_000)));
        assert!(matches!(
            p.pick(now.plus_ms(10_000), 1, 5, ALL),
            Pick::Mailbox(0, _)
        ));
    }
}
