//! Which deliver queue a message waits in: its lane, and for bulk mail its batch's queue.
//!
//! RabbitMQ 3.10's quorum queues have no priorities, and one FIFO queue makes every mail
//! wait behind the whole backlog. So the deliver stage reads several queues: one for the
//! `transactional` lane (a password reset, an urgent single invoice), and the bulk lane split
//! into `rabbitmq.bulk_queues` queues, each batch given one in turn, so that batches
//! submitted an hour apart both have messages in deliver's hands. deliver's mailbox pool then
//! chooses between its waiting messages: transactional first, bulk batches in turn
//! (docs/deliver.md, "Lanes and fair share").

use std::fmt;

use serde::{Deserialize, Serialize};

/// A job's lane: how urgently it goes out relative to the others.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lane {
    /// Waits for at most one free slot of an eligible mailbox, whatever the bulk backlog.
    Transactional,
    /// Uses what transactional mail leaves; batches share it in turn.
    #[default]
    Bulk,
}

impl Lane {
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Transactional => "transactional",
            Lane::Bulk => "bulk",
        }
    }

    pub fn is_bulk(&self) -> bool {
        *self == Lane::Bulk
    }
}

impl fmt::Display for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A deliver queue: the transactional one, or bulk queue `n` (0: the stage's first queue,
/// `<prefix>.deliver`, for jobs without a batch; 1.. for batches, in turn).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliverQueue {
    Transactional,
    Bulk(u16),
}

impl DeliverQueue {
    /// The queue a message of `lane` waits in, given its batch's bulk queue.
    pub fn of(lane: Lane, bulk_queue: u16) -> Self {
        match lane {
            Lane::Transactional => DeliverQueue::Transactional,
            Lane::Bulk => DeliverQueue::Bulk(bulk_queue),
        }
    }

    /// Every deliver queue of a deployment with `bulk_queues` batch queues.
    pub fn all(bulk_queues: u16) -> impl Iterator<Item = DeliverQueue> {
        std::iter::once(DeliverQueue::Transactional)
            .chain((0..=bulk_queues).map(DeliverQueue::Bulk))
    }

    /// The routing key on the work exchange, which is also the queue's name after the
    /// prefix: `deliver`, `deliver.transactional`, `deliver.bulk.3`.
    pub fn routing_key(self) -> String {
        match self {
            DeliverQueue::Transactional => "deliver.transactional".into(),
            DeliverQueue::Bulk(0) => "deliver".into(),
            DeliverQueue::Bulk(n) => format!("deliver.bulk.{n}"),
        }
    }

    /// The bulk queue of the batch with turn `turn` (its rank among batches, from the
    /// database): batches take queues 1..=bulk_queues in turn, so up to `bulk_queues`
    /// batches running at once each have their own.
    pub fn bulk_of_turn(turn: i64, bulk_queues: u16) -> u16 {
        if bulk_queues == 0 {
            return 0;
        }
        let n = i64::from(bulk_queues);
        (1 + turn.rem_euclid(n)) as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_are_named_by_lane_and_turn() {
        let names: Vec<String> = DeliverQueue::all(2).map(|q| q.routing_key()).collect();
        assert_eq!(
            names,
            [
                "deliver.transactional",
                "deliver",
                "deliver.bulk.1",
                "deliver.bulk.2"
            ]
        );
        // Consecutive batches get different queues; the third shares the first's.
        let turns: Vec<u16> = (7..10).map(|t| DeliverQueue::bulk_of_turn(t, 2)).collect();
        assert_eq!(turns, [2, 1, 2]);
        assert_eq!(DeliverQueue::bulk_of_turn(5, 0), 0);
        assert_eq!(
            DeliverQueue::of(Lane::Transactional, 4),
            DeliverQueue::Transactional
        );
    }

    #[test]
    fn a_lane_reads_as_its_name() {
        let lane: Lane = serde_json::from_str("\"transactional\"").expect("lane");
        assert_eq!(lane, Lane::Transactional);
        assert!(serde_json::from_str::<Lane>("\"urgent\"").is_err());
    }
}
