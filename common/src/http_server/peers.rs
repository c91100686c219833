//! How many connections each client address holds, so that one address cannot take more
//! than its share of a server's connections (an idle flood from one client would
//! otherwise hold every slot until the head timeout and starve `/healthz` and everyone
//! else). A slot is a guard: the count goes back down however the connection ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Open connections per client address, bounded by `cap`.
#[derive(Debug)]
pub struct PeerTable {
    cap: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in its peer's count, given back on drop.
#[derive(Debug)]
pub struct PeerSlot {
    table: Arc<PeerTable>,
    peer: IpAddr,
}

impl PeerTable {
    pub fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap: cap.max(1),
            open: Mutex::default(),
        })
    }

    /// A slot for `peer` and how many connections it held before this one, or `None`
    /// when it holds `cap` already.
    pub fn try_take(self: &Arc<Self>, peer: IpAddr) -> Option<(PeerSlot, usize)> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let held = open.entry(peer).or_insert(0);
        if *held >= self.cap {
            return None;
        }
        let before = *held;
        *held += 1;
        Some((
            PeerSlot {
                table: self.clone(),
                peer,
            },
            before,
        ))
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = open.get_mut(&self.peer) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                open.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_holds_at_most_the_cap_and_slots_come_back_on_drop() {
        let table = PeerTable::new(2);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let (first, held) = table.try_take(a).unwrap();
        assert_eq!(held, 0);
        let (_second, held) = table.try_take(a).unwrap();
        assert_eq!(held, 1);
        assert!(
            table.try_take(a).is_none(),
            "a third connection passed the cap"
        );
        assert!(
            table.try_take(b).is_some(),
            "another peer is not limited by the first"
        );
        drop(first);
        assert!(table.try_take(a).is_some(), "a dropped slot came back");
    }
}
