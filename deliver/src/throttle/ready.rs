//! The order mailboxes are tried in, and the search for the best one that can take a message.
//!
//! Each queued mailbox has a [`ReadyKey`] whose first field, `since`, is the instant from which
//! the limits that do not depend on the message (its hold, one more message in its message
//! window, a free connection) admit a send. That instant is absolute: it only moves when the
//! mailbox itself changes (a pick, a settle or release, a hold, a restore, availability), never
//! as time passes, so the queues stay valid between calls without a scan.
//!
//! The limits that do depend on the message (the recipient window, the tenant's external
//! window, the per-message recipient cap) can only admit *later* than `since`, so `since`
//! is a lower bound and the search is a branch and bound over the queues in key order: it
//! stops at the first member whose bound cannot beat the best found. When those limits do not
//! bind (the usual case), the first member visited is the answer and a pick costs O(log n);
//! when they do, the search visits the members whose bound is earlier than the answer (a
//! tenant whose window is full is skipped as a whole group).

use super::admit::Admit;
use super::classes::Class;
use super::pool::Slot;
use super::tenant::TenantLimit;
use super::time::Millis;

/// A mailbox's place in its classes' queues: the earliest `since` first (the mailbox that has
/// been able to send the longest: one with room left in its message window has `since` zero),
/// then the least recently used, then the lowest index.
///
/// Why this order spreads load evenly: mailboxes that have never had to wait share `since`
/// zero and take turns (least recently used first: round robin), and once windows fill up,
/// mailboxes are taken in the order they regained room (first come, first served). It also
/// prefers mailboxes with room left over ones that just came back from a full window, as
/// the former ranking by capacity left did, without having to count capacity at every pick.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct ReadyKey {
    pub(super) since: Millis,
    pub(super) last_used: u64,
    pub(super) mailbox: usize,
}

/// An [`Admit`] computed at the epoch, as an absolute instant: `Now` is "since always".
fn instant(admit: Admit) -> Option<Millis> {
    match admit {
        Admit::Now => Some(Millis::ZERO),
        Admit::At(t) => Some(t),
        Admit::Busy | Admit::Never => None,
    }
}

/// The key mailbox `idx` is queued under, or `None` when no instant can be computed for it
/// whatever the message: unavailable, every connection in use, in-flight messages alone fill
/// its message window, or it can never send.
pub(super) fn queue_key(slot: &Slot, idx: usize) -> Option<ReadyKey> {
    if !slot.available {
        return None;
    }
    let throttle = &slot.throttle;
    if throttle.connections_in_use() >= throttle.limits().connections {
        return None;
    }
    let since = instant(
        throttle
            .message_window()
            .earliest_admit(Millis::ZERO, 1)
            .and(held(slot)),
    )?;
    Some(ReadyKey {
        since,
        last_used: slot.last_used,
        mailbox: idx,
    })
}

fn held(slot: &Slot) -> Admit {
    slot.state.until().map_or(Admit::Now, Admit::At)
}

/// The best queued member of `class` for a message of `recipients` recipients, `external` of
/// them external: `(instant it can be admitted, mailbox)`. An instant at or before `now` means
/// it can send now, and is then the first such member in key order; otherwise it is the
/// earliest instant any member can be admitted (ties to the first in key order). `None` when
/// no queued member has a computable instant (all busy, or the class has none queued).
pub(super) fn best(
    class: &Class,
    slots: &[Slot],
    tenants: &[TenantLimit],
    now: Millis,
    recipients: u64,
    external: u64,
) -> Option<(Millis, usize)> {
    // Scores compare lexicographically: ready members (clamped to `now`) before later ones,
    // then by key. Every bound below is no greater than the score of what it bounds, and
    // bounds grow along each queue and along the heads, so the first bound that does not
    // beat the best ends that loop.
    let mut best: Option<(Millis, ReadyKey)> = None;
    let beats = |bound: (Millis, ReadyKey), best: Option<(Millis, ReadyKey)>| {
        best.is_none_or(|b| bound < b)
    };
    for &(head, g) in &class.heads {
        if !beats((head.since.max(now), head), best) {
            break;
        }
        let group = &class.groups[g];
        if group.max_recipients.is_none_or(|m| recipients > m) {
            continue;
        }
        let Some(tenant) = tenants.get(group.tenant) else {
            continue;
        };
        let tenant_admit = tenant.earliest_admit(Millis::ZERO, external);
        let Some(tenant_at) = instant(tenant_admit) else {
            continue; // busy or too many: this whole tenant group contributes no instant
        };
        for &key in &group.queue {
            if !beats((key.since.max(tenant_at).max(now), key), best) {
                break;
            }
            let Some(slot) = slots.get(key.mailbox) else {
                continue;
            };
            let admit = slot
                .throttle
                .earliest_admit(Millis::ZERO, recipients)
                .and(tenant_admit)
                .and(held(slot));
            if let Some(at) = instant(admit) {
                let score = (at.max(now), key);
                if beats(score, best) {
                    best = Some(score);
                }
            }
        }
    }
    best.map(|(at, key)| (at, key.mailbox))
}
