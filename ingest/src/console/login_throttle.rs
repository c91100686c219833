//! Failed console logins per client address: past [`MAX_FAILURES`] within [`WINDOW`], that
//! address may not try again until the oldest failure leaves the window (`429` with
//! `Retry-After`). A token guessed online is then a token guessed at 10 tries per 10
//! minutes per address. Behind a reverse proxy every client shares the proxy's address,
//! and so its limit: a flood of wrong tokens then locks logins out for everyone for a few
//! minutes, never lets one through.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Failed logins one address may make within [`WINDOW`].
pub const MAX_FAILURES: usize = 10;
/// The window failures are counted in.
pub const WINDOW: Duration = Duration::from_secs(600);
/// Addresses tracked at most; past it, new addresses share one count (the limit holds
/// for a flood from many addresses too, and the table stays bounded).
const MAX_TRACKED: usize = 10_000;

#[derive(Debug, Clone, Default)]
pub struct LoginThrottle(Arc<Mutex<HashMap<IpAddr, VecDeque<Instant>>>>);

impl LoginThrottle {
    /// `Err(wait)` while `peer` has used up its failures: how long until it may try again.
    pub fn check(&self, peer: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let mut map = self.lock();
        let key = Self::key(&map, peer);
        match map.get_mut(&key) {
            Some(failures) => {
                Self::forget_old(failures, now);
                match failures.front() {
                    Some(oldest) if failures.len() >= MAX_FAILURES => Err(WINDOW
                        .saturating_sub(now - *oldest)
                        .max(Duration::from_secs(1))),
                    _ => Ok(()),
                }
            }
            None => Ok(()),
        }
    }

    /// Counts a failed login of `peer`.
    pub fn failed(&self, peer: IpAddr) {
        let now = Instant::now();
        let mut map = self.lock();
        if map.len() >= MAX_TRACKED && !map.contains_key(&peer) {
            map.retain(|_, f| {
                Self::forget_old(f, now);
                !f.is_empty()
            });
        }
        let key = Self::key(&map, peer);
        let failures = map.entry(key).or_default();
        Self::forget_old(failures, now);
        if failures.len() < MAX_FAILURES {
            failures.push_back(now);
        }
    }

    /// `peer`, or the shared key when the table is full and `peer` is not in it.
    fn key(map: &HashMap<IpAddr, VecDeque<Instant>>, peer: IpAddr) -> IpAddr {
        if map.len() >= MAX_TRACKED && !map.contains_key(&peer) {
            IpAddr::from([0, 0, 0, 0])
        } else {
            peer
        }
    }

    fn forget_old(failures: &mut VecDeque<Instant>, now: Instant) {
        while failures.front().is_some_and(|t| now - *t >= WINDOW) {
            failures.pop_front();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, VecDeque<Instant>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_failures_lock_one_address_out_and_not_another() {
        let t = LoginThrottle::default();
        let a = IpAddr::from([10, 0, 0, 1]);
        let b = IpAddr::from([10, 0, 0, 2]);
        for _ in 0..MAX_FAILURES {
            assert_eq!(t.check(a), Ok(()));
            t.failed(a);
        }
        let wait = t.check(a).unwrap_err();
        assert!(
            wait > WINDOW - Duration::from_secs(60) && wait <= WINDOW,
            "{wait:?}"
        );
        assert_eq!(t.check(b), Ok(()));
    }
}
