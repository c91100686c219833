//! Choosing a mailbox of the pool for each message, or the exact instant to try again.
//!
//! Every mailbox that can be given an admission instant independent of the message sits in
//! the queues of each eligibility class it belongs to ([`super::classes`]), keyed by that
//! instant ([`super::ready`]); every call that changes a mailbox re-queues it there. A pick
//! is then a search of one class's queues that usually stops at the first member, instead
//! of a scan of the pool.

use std::collections::HashMap;

use super::admit::Admit;
use super::classes::{Class, ClassId, Member};
use super::error::ThrottleError;
use super::hold::MailboxState;
use super::mailbox::{MailboxThrottle, Snapshot};
use super::outcome::{Impossible, Pick, Reservation};
use super::ready::{ReadyKey, best, queue_key};
use super::tenant::TenantLimit;
use super::time::Millis;
use super::window::next_owner;

/// One mailbox of the pool and its place in the classes' queues.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) throttle: MailboxThrottle,
    pub(super) tenant: usize,
    pub(super) state: MailboxState,
    /// False while another deliver process owns the mailbox.
    pub(super) available: bool,
    /// The pick count at its last pick (0: never picked).
    pub(super) last_used: u64,
    /// The key it is queued under in every class it belongs to (`None`: in no queue).
    queued: Option<ReadyKey>,
    /// `(class index, tenant group index)` of every class it belongs to.
    memberships: Vec<(usize, usize)>,
}

/// A pool of mailboxes and their tenants. Pure and synchronous: the async caller owns the clock.
#[derive(Debug)]
pub struct PoolSchedule {
    slots: Vec<Slot>,
    tenants: Vec<TenantLimit>,
    classes: Vec<Class>,
    /// Sorted, deduplicated member lists of the registered classes, to share identical ones.
    class_of_members: HashMap<Vec<usize>, usize>,
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
            classes: Vec::new(),
            class_of_members: HashMap::new(),
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

    /// Adds an active, available mailbox of tenant `tenant`; returns its index. It belongs to
    /// no class registered before.
    pub fn add_mailbox(
        &mut self,
        throttle: MailboxThrottle,
        tenant: usize,
    ) -> Result<usize, ThrottleError> {
        if tenant >= self.tenants.len() {
            return Err(ThrottleError::UnknownTenant(tenant));
        }
        let idx = self.slots.len();
        let mut slot = Slot {
            throttle,
            tenant,
            state: MailboxState::Active,
            available: true,
            last_used: 0,
            queued: None,
            memberships: Vec::new(),
        };
        slot.queued = queue_key(&slot, idx);
        self.slots.push(slot);
        Ok(idx)
    }

    /// Registers the eligibility class of `members` (mailbox indices; repeats and indices that
    /// are not mailboxes of the pool are ignored) and returns its id, the same id for the same
    /// set. Pass it to [`PoolSchedule::pick`] and [`PoolSchedule::earliest_admit`]. Costs
    /// O(members × log members) once; afterwards every change to a member also updates this
    /// class, so register one class per distinct set, not one per message. Tenant limits are
    /// read here, for [`Impossible`].
    pub fn class(&mut self, members: impl IntoIterator<Item = usize>) -> ClassId {
        let mut members: Vec<usize> = members
            .into_iter()
            .filter(|&m| m < self.slots.len())
            .collect();
        members.sort_unstable();
        members.dedup();
        if let Some(&index) = self.class_of_members.get(&members) {
            return self.class_id(index);
        }
        let index = self.classes.len();
        let described: Vec<Member> = members
            .iter()
            .map(|&m| {
                let slot = &self.slots[m];
                let limits = slot.throttle.limits();
                let can_send = limits.messages > 0 && limits.connections > 0;
                Member {
                    mailbox: m,
                    tenant: slot.tenant,
                    max_recipients: can_send
                        .then(|| limits.recipients_per_message.min(limits.recipients)),
                    tenant_limit: self
                        .tenants
                        .get(slot.tenant)
                        .map_or(0, |t| t.window().limit()),
                    queued: slot.queued,
                }
            })
            .collect();
        let (class, groups) = Class::new(&described);
        for (member, group) in described.iter().zip(groups) {
            self.slots[member.mailbox].memberships.push((index, group));
        }
        self.classes.push(class);
        self.class_of_members.insert(members, index);
        self.class_id(index)
    }

    fn class_id(&self, index: usize) -> ClassId {
        ClassId {
            pool: self.owner,
            index,
        }
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

    /// A tenant's limit, e.g. to import another process's sends with [`TenantLimit::restore`]
    /// (replacing it by one with another limit would leave registered classes judging
    /// [`Impossible`] by the old one).
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
        self.requeue(idx);
        Ok(())
    }

    /// Whether this process may send through mailbox `idx` (default: true). An unavailable
    /// mailbox (owned by another deliver process) is never picked and never gives a
    /// [`Pick::WaitUntil`] instant, but still counts for [`Impossible`]: a message only it could
    /// send gets [`Pick::WaitForRelease`]. Its sends in flight are settled and released as usual.
    pub fn set_available(&mut self, idx: usize, available: bool) -> Result<(), ThrottleError> {
        let slot = self
            .slots
            .get_mut(idx)
            .ok_or(ThrottleError::UnknownMailbox(idx))?;
        slot.available = available;
        self.requeue(idx);
        Ok(())
    }

    /// See [`PoolSchedule::set_available`].
    pub fn is_available(&self, idx: usize) -> Option<bool> {
        self.slots.get(idx).map(|s| s.available)
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
        self.requeue(idx);
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
        self.requeue(idx);
        Ok(())
    }

    /// Restores a send into a mailbox's own windows only (its tenant's window learns of
    /// it separately, through [`TenantLimit::restore`]).
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
        self.requeue(idx);
        Ok(())
    }

    /// Moves mailbox `idx` to the key its current state gives, in every class it belongs to.
    fn requeue(&mut self, idx: usize) {
        let Some(slot) = self.slots.get_mut(idx) else {
            return;
        };
        let key = queue_key(slot, idx);
        if key == slot.queued {
            return;
        }
        let old = std::mem::replace(&mut slot.queued, key);
        for &(class, group) in &slot.memberships {
            if let Some(c) = self.classes.get_mut(class) {
                c.requeue(group, old, key);
            }
        }
    }

    fn class_ref(&self, class: ClassId) -> Option<&Class> {
        if class.pool != self.owner {
            return None;
        }
        self.classes.get(class.index)
    }

    /// Where a message can go: `Ok((instant, mailbox))` of the best queued member (an instant
    /// at or before `now`: it can send now), `Ok(None)` when only a release can make room.
    fn plan(
        &self,
        now: Millis,
        recipients: u64,
        external: u64,
        class: ClassId,
    ) -> Result<Option<(Millis, usize)>, Impossible> {
        let Some(c) = self.class_ref(class) else {
            return Err(Impossible::NoEligibleMailbox);
        };
        if let Some(why) = c.impossible(recipients, external) {
            return Err(why);
        }
        // Some member could take it. One that is available is queued unless it is busy, so when
        // the queues give no instant, every member that could take it is busy or unavailable.
        Ok(best(
            c,
            &self.slots,
            &self.tenants,
            now,
            recipients,
            external,
        ))
    }

    /// When some mailbox of `class` could take a message with `recipients` recipients
    /// (`external` of them external), without reserving anything: `Now`, `At(t)` (exactly),
    /// `Busy` (only after a release, or once a mailbox is available again) or `Never`.
    pub fn earliest_admit(
        &self,
        now: Millis,
        recipients: u64,
        external: u64,
        class: ClassId,
    ) -> Admit {
        match self.plan(now, recipients, external, class) {
            Err(_) => Admit::Never,
            Ok(None) => Admit::Busy,
            Ok(Some((at, _))) => Admit::not_before(now, at),
        }
    }

    /// Chooses a mailbox of `class` for a message with `recipients` recipients, `external` of
    /// them outside the tenant, and reserves its quota (mailbox and tenant together) and a
    /// connection. A mailbox is taken only if its message window, recipient window, connection
    /// cap, tenant window and hold all admit the send now, and it is available.
    ///
    /// Among the mailboxes that can send now it takes the one that has been able to send the
    /// longest, then the least recently used (see [`ReadyKey`]): round robin while windows
    /// have room, first come first served once they fill, so load spreads evenly. Cost:
    /// O(log n) when the message-dependent limits (recipient and tenant windows) do not hold
    /// back the first mailboxes in that order; each one they do hold back costs another
    /// O(log n) step, and a held-back tenant is skipped as a whole.
    pub fn pick(&mut self, now: Millis, recipients: u64, external: u64, class: ClassId) -> Pick {
        match self.plan(now, recipients, external, class) {
            Err(why) => Pick::Impossible(why),
            Ok(None) => Pick::WaitForRelease,
            Ok(Some((at, idx))) if at <= now => {
                match self.reserve(idx, now, recipients, external) {
                    Some(res) => Pick::Mailbox(idx, res),
                    // cannot happen: the search checked exactly what reserve checks
                    None => Pick::WaitForRelease,
                }
            }
            Ok(Some((at, _))) => Pick::WaitUntil(at),
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
        let tenant_idx = slot.tenant;
        self.requeue(idx);
        let id = self.next_id;
        self.next_id += 1;
        Some(Reservation {
            id,
            pool: self.owner,
            mailbox: idx,
            tenant: tenant_idx,
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
        let idx = r.mailbox;
        let (mailbox, tenant) = self.parts(&r)?;
        let m = mailbox.settle(r.mbox, at);
        let t = tenant.settle(r.ext, at);
        self.requeue(idx);
        m.and(t)
    }

    /// The send ended and the server surely never counted it (failed before DATA): its quota and
    /// its connection are freed.
    pub fn release(&mut self, r: Reservation) -> Result<(), ThrottleError> {
        let idx = r.mailbox;
        let (mailbox, tenant) = self.parts(&r)?;
        let m = mailbox.release(r.mbox);
        let t = tenant.release(r.ext);
        self.requeue(idx);
        m.and(t)
    }
}
