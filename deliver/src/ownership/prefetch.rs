//! The prefetch follows what this process can send (docs/deliver.md, "Work reaches an
//! owner"): messages a process holds wait for its own mailboxes only, so it takes no more
//! than its owned mailboxes can keep busy, and a process that joins finds the rest of the
//! backlog still in the queue.

use tokio::sync::watch;

use crate::metrics;

/// In hand per owned connection: one being sent, one ready for when it ends.
const PER_CONNECTION: u64 = 2;

/// The prefetch of each of this process's consumers for the mailboxes it owns now: twice
/// their connections (every one busy, plus one message ready each), at least 1, at most
/// `ceiling` (`deliver.prefetch`).
pub fn prefetch_for(owned_connections: impl IntoIterator<Item = u32>, ceiling: u16) -> u16 {
    let wanted: u64 = owned_connections
        .into_iter()
        .map(|c| u64::from(c) * PER_CONNECTION)
        .sum();
    wanted.clamp(1, u64::from(ceiling.max(1))) as u16
}

/// Publishes the prefetch to the consumers after each lease round.
#[derive(Debug)]
pub struct PrefetchShare {
    /// `max_connections` of each pool mailbox, by index.
    connections: Vec<u32>,
    ceiling: u16,
    tx: watch::Sender<u16>,
}

impl PrefetchShare {
    pub fn new(connections: Vec<u32>, ceiling: u16) -> Self {
        let (tx, _) = watch::channel(prefetch_for([], ceiling));
        Self {
            connections,
            ceiling,
            tx,
        }
    }

    /// What the consumers follow.
    pub fn subscribe(&self) -> watch::Receiver<u16> {
        self.tx.subscribe()
    }

    /// Sizes the prefetch to the mailboxes held now (`owned`: their indexes); a change is
    /// logged and sent to the consumers.
    pub fn follow(&self, owned: &[usize]) {
        let prefetch = prefetch_for(
            owned
                .iter()
                .filter_map(|&idx| self.connections.get(idx).copied()),
            self.ceiling,
        );
        metrics::PREFETCH.set(i64::from(prefetch));
        let before = *self.tx.borrow();
        if before != prefetch {
            self.tx.send_replace(prefetch);
            tracing::info!(
                prefetch,
                before,
                mailboxes = owned.len(),
                "prefetch follows the mailboxes owned"
            );
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn twice_the_owned_connections_within_one_and_the_ceiling() {
        assert_eq!(prefetch_for([3, 3, 3, 3], 64), 24);
        assert_eq!(prefetch_for([3, 1], 64), 8);
        assert_eq!(prefetch_for([3; 100], 64), 64, "the ceiling caps it");
        assert_eq!(
            prefetch_for([], 64),
            1,
            "never 0: 0 is unlimited to RabbitMQ"
        );
        assert_eq!(prefetch_for([u32::MAX; 3], u16::MAX), u16::MAX);
        assert_eq!(prefetch_for([3], 0), 1);
    }

    #[test]
    fn follows_the_mailboxes_owned_and_tells_only_changes() {
        let share = PrefetchShare::new(vec![3, 3, 2, 1], 64);
        let mut rx = share.subscribe();
        assert_eq!(*rx.borrow_and_update(), 1);
        share.follow(&[0, 1, 2, 3]);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 18);
        share.follow(&[3, 2, 1, 0]);
        assert!(
            !rx.has_changed().unwrap(),
            "same mailboxes: no re-subscription"
        );
        share.follow(&[0, 3]);
        assert_eq!(*rx.borrow_and_update(), 8);
        share.follow(&[9]);
        assert_eq!(
            *rx.borrow_and_update(),
            1,
            "an unknown index counts nothing"
        );
    }
}
