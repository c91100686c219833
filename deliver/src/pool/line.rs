//! The order in which messages waiting for a mailbox are served: transactional ones first,
//! then bulk ones with their batches taking turns.
//!
//! deliver holds messages from several queues at once (its lanes; `contract::DeliverQueue`)
//! and each waits in `MailboxPool::acquire`. Left to race, whichever task locked the pool
//! first after a slot freed would take it: a transactional message could wait behind any
//! number of bulk ones, and a big batch would crowd out a small one in proportion to the
//! messages each has in hand. So waiters of one eligibility class queue up here, and only
//! the head of its class may pick a mailbox:
//!
//! - a transactional waiter is ahead of every bulk one (first come, first served among them);
//! - among bulk waiters, the batch served least so far goes first (start-time fair
//!   queuing: a batch that joins starts level with the least-served batch present, so it
//!   neither jumps ahead with credit from the past nor waits for the others to finish);
//!   within a batch, first come, first served.
//!
//! Classes are independent (another class picks from other mailbox sets). The costs are a
//! few map operations per pick and per grant, for a handful of batches.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use mailpipe_common::contract::{Lane, RenderedMeta};

use crate::throttle::ClassId;

/// A place in the line; the waiter leaves with `leave` (granted or given up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    class: ClassId,
    seq: u64,
}

impl Place {
    pub fn class(&self) -> ClassId {
        self.class
    }
}

/// Which batch a bulk waiter belongs to (jobs without a batch share one turn).
type BatchKey = Option<Arc<str>>;

#[derive(Debug, Default)]
struct ClassLine {
    transactional: BTreeSet<u64>,
    bulk: HashMap<BatchKey, BTreeSet<u64>>,
}

#[derive(Debug, Default)]
pub struct WaitingLine {
    next: u64,
    classes: HashMap<ClassId, ClassLine>,
    /// Sends granted per batch while it has waiters: its virtual time.
    served: HashMap<BatchKey, u64>,
    /// Each waiter's lane and batch, to find it again when it leaves.
    waiters: HashMap<u64, (Lane, BatchKey)>,
}

impl WaitingLine {
    /// Puts a waiter for `meta` at the end of its class's line.
    pub fn join(&mut self, class: ClassId, meta: &RenderedMeta) -> Place {
        self.next += 1;
        let seq = self.next;
        let batch: BatchKey = meta.batch.as_ref().map(|b| Arc::from(b.as_str()));
        let line = self.classes.entry(class).or_default();
        match meta.lane {
            Lane::Transactional => {
                line.transactional.insert(seq);
            }
            Lane::Bulk => {
                if !self.served.contains_key(&batch) {
                    // Joins level with the least-served batch waiting now.
                    let level = self.served.values().copied().min().unwrap_or(0);
                    self.served.insert(batch.clone(), level);
                }
                line.bulk.entry(batch.clone()).or_default().insert(seq);
            }
        }
        self.waiters.insert(seq, (meta.lane, batch));
        Place { class, seq }
    }

    /// Whether `place` is first in its class's line: only the first may pick a mailbox.
    pub fn is_first(&self, place: Place) -> bool {
        self.first(place.class) == Some(place.seq)
    }

    fn first(&self, class: ClassId) -> Option<u64> {
        let line = self.classes.get(&class)?;
        if let Some(&seq) = line.transactional.first() {
            return Some(seq);
        }
        line.bulk
            .iter()
            .filter_map(|(batch, seqs)| {
                let served = self.served.get(batch).copied().unwrap_or(0);
                seqs.first().map(|&seq| (served, seq))
            })
            .min()
            .map(|(_, seq)| seq)
    }

    /// The waiter got a mailbox: it leaves, and its batch has been served once more.
    pub fn granted(&mut self, place: Place) {
        if let Some((Lane::Bulk, batch)) = self.waiters.get(&place.seq)
            && let Some(served) = self.served.get_mut(batch)
        {
            *served += 1;
        }
        self.leave(place);
    }

    /// The waiter leaves without a mailbox (or after `granted`). A batch with no waiter
    /// left in any class forgets its turns: when it comes back it starts level again.
    pub fn leave(&mut self, place: Place) {
        let Some((lane, batch)) = self.waiters.remove(&place.seq) else {
            return;
        };
        if let Some(line) = self.classes.get_mut(&place.class) {
            match lane {
                Lane::Transactional => {
                    line.transactional.remove(&place.seq);
                }
                Lane::Bulk => {
                    if let Some(seqs) = line.bulk.get_mut(&batch) {
                        seqs.remove(&place.seq);
                        if seqs.is_empty() {
                            line.bulk.remove(&batch);
                        }
                    }
                }
            }
            if line.transactional.is_empty() && line.bulk.is_empty() {
                self.classes.remove(&place.class);
            }
        }
        if lane == Lane::Bulk && !self.classes.values().any(|l| l.bulk.contains_key(&batch)) {
            self.served.remove(&batch);
        }
    }

    /// Waiters in line (all classes).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.waiters.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::throttle::PoolSchedule;

    fn meta(lane: Lane, batch: Option<&str>) -> RenderedMeta {
        let json = serde_json::json!({
            "job_id": "j", "batch": batch, "from": {"address": "billing@example.com"},
            "has_reply_to": false, "recipients": ["ann@example.com"],
            "message_id": "<j@example.com>", "attempt": 0,
            "rendered_at": "2026-12-01T10:00:00Z", "lane": lane,
        });
        RenderedMeta::from_header_value(&json.to_string()).expect("meta")
    }

    fn class() -> ClassId {
        PoolSchedule::new().class(std::iter::empty())
    }

    /// Serves the line's head `n` times (each served waiter comes back at the end, as a
    /// consumer refills what it sent) and says which batch each send went to.
    fn serve(
        line: &mut WaitingLine,
        class: ClassId,
        places: &mut Vec<(Place, RenderedMeta)>,
        n: usize,
    ) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..n {
            let i = places
                .iter()
                .position(|(p, _)| line.is_first(*p))
                .expect("a head");
            let (place, meta) = places.remove(i);
            line.granted(place);
            out.push(format!(
                "{}:{}",
                meta.lane,
                meta.batch.as_ref().map_or("-", |b| b.as_str())
            ));
            if meta.lane == Lane::Bulk {
                let again = line.join(class, &meta);
                places.push((again, meta));
            }
        }
        out
    }

    #[test]
    fn transactional_waiters_go_before_any_bulk_backlog() {
        let mut line = WaitingLine::default();
        let c = class();
        let mut places: Vec<_> = (0..50)
            .map(|_| {
                let m = meta(Lane::Bulk, Some("nov"));
                (line.join(c, &m), m)
            })
            .collect();
        for _ in 0..3 {
            let m = meta(Lane::Transactional, None);
            places.push((line.join(c, &m), m));
        }
        let served = serve(&mut line, c, &mut places, 4);
        assert_eq!(
            served,
            [
                "transactional:-",
                "transactional:-",
                "transactional:-",
                "bulk:nov"
            ]
        );
    }

    #[test]
    fn batches_take_turns_and_a_late_batch_starts_level() {
        let mut line = WaitingLine::default();
        let c = class();
        let mut places = Vec::new();
        for _ in 0..20 {
            let m = meta(Lane::Bulk, Some("oct"));
            places.push((line.join(c, &m), m));
        }
        // "oct" alone for a while: it is served 30 times.
        let early = serve(&mut line, c, &mut places, 30);
        assert!(early.iter().all(|b| b == "bulk:oct"));
        // "nov" arrives with as many messages in hand: from now on they alternate, and
        // "nov" gets no catch-up burst for the sends "oct" had before.
        for _ in 0..20 {
            let m = meta(Lane::Bulk, Some("nov"));
            places.push((line.join(c, &m), m));
        }
        let later = serve(&mut line, c, &mut places, 40);
        let nov = later.iter().filter(|b| *b == "bulk:nov").count();
        assert_eq!(nov, 20, "{later:?}");
        for pair in later.chunks(2) {
            assert_ne!(pair[0], pair[1], "not in turn: {later:?}");
        }
    }

    #[test]
    fn leaving_clears_the_line() {
        let mut line = WaitingLine::default();
        let c = class();
        let a = line.join(c, &meta(Lane::Bulk, Some("a")));
        let b = line.join(c, &meta(Lane::Transactional, None));
        assert!(line.is_first(b) && !line.is_first(a));
        line.leave(b);
        assert!(line.is_first(a));
        line.leave(a);
        line.leave(a);
        assert_eq!(line.len(), 0);
        assert!(line.served.is_empty() && line.classes.is_empty());
    }
}
