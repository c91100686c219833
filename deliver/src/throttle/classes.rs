//! Eligibility classes: the sets of mailboxes a message may go through, registered once.
//!
//! A pick used to ask an arbitrary predicate about every mailbox, which cannot beat a scan of
//! the pool. A class is a fixed member set instead, so each class can keep its members
//! queued in the order the scheduler wants them ([`ReadyKey`]), updated when a mailbox
//! changes rather than recomputed at every pick. Members are grouped by tenant because a
//! tenant's external-recipient window holds back all its mailboxes at once: a search then
//! skips the whole group after one look at the tenant instead of visiting each member.

use std::collections::{BTreeMap, BTreeSet};

use super::outcome::Impossible;
use super::ready::ReadyKey;

/// A registered eligibility class of one [`PoolSchedule`](super::PoolSchedule), from
/// [`PoolSchedule::class`](super::PoolSchedule::class). Cheap to copy; identical member sets
/// share one id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClassId {
    pub(super) pool: u64,
    pub(super) index: usize,
}

/// What one member contributes to a class, read from the pool when the class is registered.
pub(super) struct Member {
    pub(super) mailbox: usize,
    pub(super) tenant: usize,
    /// The most recipients one message may have on it; `None` when it can never send
    /// (no messages or no connections allowed).
    pub(super) max_recipients: Option<u64>,
    /// Its tenant's external-recipient limit per window.
    pub(super) tenant_limit: u64,
    /// Its current place in the queues (`None`: busy, unavailable or unable to send).
    pub(super) queued: Option<ReadyKey>,
}

/// The members of a class that share one tenant.
#[derive(Debug)]
pub(super) struct TenantGroup {
    pub(super) tenant: usize,
    /// The most recipients one message may have on any member that can send.
    pub(super) max_recipients: Option<u64>,
    /// Members that may be admitted at some computable instant, best first.
    pub(super) queue: BTreeSet<ReadyKey>,
}

/// A class: its tenant groups, queued by their best member, and what it could ever take.
#[derive(Debug)]
pub(super) struct Class {
    pub(super) groups: Vec<TenantGroup>,
    /// `(first key of the group's queue, group index)` for every group with a queued member,
    /// so groups are visited best first and the search can stop early.
    pub(super) heads: BTreeSet<(ReadyKey, usize)>,
    reach: Reach,
}

impl Class {
    /// A class of `members` (distinct mailboxes). Returns it and, for each member in the same
    /// order, the index of its tenant group.
    pub(super) fn new(members: &[Member]) -> (Class, Vec<usize>) {
        let mut group_of_tenant: BTreeMap<usize, usize> = BTreeMap::new();
        let mut groups: Vec<TenantGroup> = Vec::new();
        let mut placement = Vec::with_capacity(members.len());
        for m in members {
            let g = *group_of_tenant.entry(m.tenant).or_insert_with(|| {
                groups.push(TenantGroup {
                    tenant: m.tenant,
                    max_recipients: None,
                    queue: BTreeSet::new(),
                });
                groups.len() - 1
            });
            let group = &mut groups[g];
            group.max_recipients = group.max_recipients.max(m.max_recipients);
            if let Some(key) = m.queued {
                group.queue.insert(key);
            }
            placement.push(g);
        }
        let heads = groups
            .iter()
            .enumerate()
            .filter_map(|(g, group)| group.queue.first().map(|&k| (k, g)))
            .collect();
        let class = Class {
            groups,
            heads,
            reach: Reach::new(members),
        };
        (class, placement)
    }

    /// Moves a member of group `group` from `old` to `new` in the queues.
    pub(super) fn requeue(&mut self, group: usize, old: Option<ReadyKey>, new: Option<ReadyKey>) {
        let Some(g) = self.groups.get_mut(group) else {
            return;
        };
        let old_head = g.queue.first().copied();
        if let Some(k) = old {
            g.queue.remove(&k);
        }
        if let Some(k) = new {
            g.queue.insert(k);
        }
        let new_head = g.queue.first().copied();
        if old_head != new_head {
            if let Some(h) = old_head {
                self.heads.remove(&(h, group));
            }
            if let Some(h) = new_head {
                self.heads.insert((h, group));
            }
        }
    }

    /// Why no member could ever take a message of `recipients` recipients, `external` of them
    /// external; `None` when some member could (now, later, or once it is available again).
    pub(super) fn impossible(&self, recipients: u64, external: u64) -> Option<Impossible> {
        self.reach.impossible(recipients, external)
    }
}

/// What the members of a class could ever take, whatever their state or availability: this
/// alone decides [`Impossible`], in O(log members).
#[derive(Debug)]
struct Reach {
    members: usize,
    /// For members that can send: `(most recipients per message, largest tenant limit among
    /// this and every later entry)`, sorted by the first.
    by_recipients: Vec<(u64, u64)>,
}

impl Reach {
    fn new(members: &[Member]) -> Reach {
        let mut by_recipients: Vec<(u64, u64)> = members
            .iter()
            .filter_map(|m| m.max_recipients.map(|r| (r, m.tenant_limit)))
            .collect();
        by_recipients.sort_unstable();
        let mut largest = 0;
        for entry in by_recipients.iter_mut().rev() {
            largest = largest.max(entry.1);
            entry.1 = largest;
        }
        Reach {
            members: members.len(),
            by_recipients,
        }
    }

    fn impossible(&self, recipients: u64, external: u64) -> Option<Impossible> {
        if self.members == 0 {
            return Some(Impossible::NoEligibleMailbox);
        }
        let first_fit = self.by_recipients.partition_point(|&(r, _)| r < recipients);
        match self.by_recipients.get(first_fit) {
            None => Some(Impossible::TooManyRecipients {
                requested: recipients,
                max: self.by_recipients.last().map_or(0, |&(r, _)| r),
            }),
            Some(&(_, max)) if external > max => Some(Impossible::TooManyExternalRecipients {
                requested: external,
                max,
            }),
            Some(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(mailbox: usize, tenant: usize, max: Option<u64>, limit: u64) -> Member {
        Member {
            mailbox,
            tenant,
            max_recipients: max,
            tenant_limit: limit,
            queued: None,
        }
    }

    #[test]
    fn reach_decides_impossible() {
        let (empty, _) = Class::new(&[]);
        assert_eq!(empty.impossible(1, 0), Some(Impossible::NoEligibleMailbox));
        let (c, placement) = Class::new(&[
            member(0, 0, Some(10), 100),
            member(1, 1, Some(50), 20),
            member(2, 0, None, 1_000),
        ]);
        assert_eq!(placement, [0, 1, 0]);
        assert_eq!(c.groups.len(), 2);
        assert_eq!(c.impossible(10, 100), None);
        assert_eq!(c.impossible(0, 0), None);
        assert_eq!(
            c.impossible(11, 21),
            Some(Impossible::TooManyExternalRecipients {
                requested: 21,
                max: 20
            })
        );
        assert_eq!(
            c.impossible(51, 0),
            Some(Impossible::TooManyRecipients {
                requested: 51,
                max: 50
            })
        );
        let (mute, _) = Class::new(&[member(0, 0, None, 100)]);
        assert_eq!(
            mute.impossible(0, 0),
            Some(Impossible::TooManyRecipients {
                requested: 0,
                max: 0
            })
        );
    }

    #[test]
    fn requeue_keeps_group_heads() {
        let key = |since: u64, mailbox: usize| ReadyKey {
            since: super::super::time::Millis(since),
            last_used: 0,
            mailbox,
        };
        let mut members = [member(0, 0, Some(1), 1), member(1, 0, Some(1), 1)];
        members[0].queued = Some(key(5, 0));
        let (mut c, _) = Class::new(&members);
        assert_eq!(c.heads.first(), Some(&(key(5, 0), 0)));
        c.requeue(0, None, Some(key(3, 1)));
        assert_eq!(c.heads.first(), Some(&(key(3, 1), 0)));
        c.requeue(0, Some(key(3, 1)), None);
        c.requeue(0, Some(key(5, 0)), None);
        assert!(c.heads.is_empty());
    }
}
