//! The job ids already accepted, so a job id is published once however often it is
//! submitted. Fed by this process's own accepts and by the `accepted` events of the
//! events stream (so it survives restarts and learns other replicas' accepts, a little
//! later). See docs/ingest.md for how far that holds.
//!
//! A std `Mutex`: every critical section is a hash lookup or insert, never held across
//! an `.await`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use mailpipe_common::domain::JobId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A publish of this id is under way in this process.
    InFlight,
    Accepted,
}

/// What `reserve` found.
#[derive(Debug)]
pub enum Claim {
    /// Nobody has this id: publish it, then `commit` the reservation.
    New(Reservation),
    /// Being published right now by another request of this process.
    InFlight,
    /// Already accepted (here or, as the events stream told us, elsewhere).
    Accepted,
}

#[derive(Debug, Clone, Default)]
pub struct AcceptedIds {
    inner: Arc<Mutex<HashMap<JobId, State>>>,
}

impl AcceptedIds {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<JobId, State>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn reserve(&self, id: &JobId) -> Claim {
        let mut map = self.lock();
        match map.get(id) {
            Some(State::Accepted) => Claim::Accepted,
            Some(State::InFlight) => Claim::InFlight,
            None => {
                map.insert(id.clone(), State::InFlight);
                Claim::New(Reservation {
                    ids: self.clone(),
                    id: Some(id.clone()),
                })
            }
        }
    }

    /// Records an id accepted elsewhere (an `accepted` event from the stream).
    pub fn learn(&self, id: &JobId) {
        self.lock().insert(id.clone(), State::Accepted);
    }

    pub fn is_accepted(&self, id: &JobId) -> bool {
        self.lock().get(id) == Some(&State::Accepted)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An id held while its publish is in flight. Dropped without `commit` (the publish
/// failed, the request was cancelled), it frees the id for the next attempt.
#[derive(Debug)]
pub struct Reservation {
    ids: AcceptedIds,
    id: Option<JobId>,
}

impl Reservation {
    pub fn id(&self) -> Option<&JobId> {
        self.id.as_ref()
    }

    /// The broker confirmed the publish.
    pub fn commit(mut self) {
        if let Some(id) = self.id.take() {
            self.ids.lock().insert(id, State::Accepted);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let mut map = self.ids.lock();
            // The stream may have told us meanwhile that another replica accepted it.
            if map.get(&id) == Some(&State::InFlight) {
                map.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> JobId {
        JobId::parse(s).unwrap()
    }

    #[test]
    fn an_id_is_claimed_once_and_a_failed_publish_frees_it() {
        let ids = AcceptedIds::new();
        let Claim::New(r) = ids.reserve(&id("a")) else {
            panic!("first claim")
        };
        assert!(matches!(ids.reserve(&id("a")), Claim::InFlight));
        drop(r);
        let Claim::New(r) = ids.reserve(&id("a")) else {
            panic!("freed after a failed publish")
        };
        r.commit();
        assert!(matches!(ids.reserve(&id("a")), Claim::Accepted));
        assert!(ids.is_accepted(&id("a")));
    }

    #[test]
    fn ids_learned_from_the_stream_are_duplicates() {
        let ids = AcceptedIds::new();
        let Claim::New(r) = ids.reserve(&id("b")) else {
            panic!()
        };
        ids.learn(&id("b"));
        drop(r);
        assert!(matches!(ids.reserve(&id("b")), Claim::Accepted));
    }
}
