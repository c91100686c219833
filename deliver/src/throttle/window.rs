//! An exact sliding-window log: no window of the configured length ever holds more than the limit.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::admit::Admit;
use super::error::ThrottleError;
use super::time::{Millis, duration_ms_ceil};

static NEXT_OWNER: AtomicU64 = AtomicU64::new(1);

/// A process-unique id, so a reservation can only be settled by the throttle that issued it.
pub(crate) fn next_owner() -> u64 {
    NEXT_OWNER.fetch_add(1, Ordering::Relaxed)
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    at: Millis,
    weight: u64,
}

/// A rolling-window limit kept as a log of `(time, weight)` entries, sorted by time.
///
/// An entry recorded at `s` counts for every instant `t` with `s` in `(t - window, t]`, i.e. for
/// `t` in `[s, s + window)`. Weight held by reservations in flight counts at every instant until
/// the reservation is settled (then it becomes an entry at the settle instant) or released.
/// Admission requires `sum(entries newer than now - window) + in_flight + weight <= limit`;
/// because entries are never later than the admission instant (settles happen at or before the
/// caller's `now`), that sum can only fall as time passes, so checking at `now` covers the whole
/// window the new entry will live in. If some entry is in the future (clock skew in restored
/// events), it is counted anyway: the check stays safe, merely conservative.
#[derive(Debug)]
pub struct SlidingWindow {
    limit: u64,
    window_ms: u64,
    log: VecDeque<Entry>,
    /// Sum of weights in `log` (expired-but-not-yet-pruned entries included).
    logged: u128,
    in_flight: u128,
    owner: u64,
}

/// Weight held in a [`SlidingWindow`] by a send in flight. Consumed by
/// [`SlidingWindow::settle`] or [`SlidingWindow::release`], so it cannot be settled twice.
/// Dropping it leaks its weight (the window stays safe but loses capacity), hence `must_use`.
#[must_use = "a reservation must be settled or released, or its weight is held forever"]
#[derive(Debug)]
pub struct WindowReservation {
    owner: u64,
    weight: u64,
    started: Millis,
}

impl WindowReservation {
    /// The weight held.
    pub fn weight(&self) -> u64 {
        self.weight
    }
    /// The instant the reservation was taken.
    pub fn started(&self) -> Millis {
        self.started
    }
}

impl SlidingWindow {
    /// At most `limit` weight in any window of length `window` (rounded up to whole
    /// milliseconds, at least 1 ms).
    pub fn new(limit: u64, window: Duration) -> SlidingWindow {
        SlidingWindow {
            limit,
            window_ms: duration_ms_ceil(window).max(1),
            log: VecDeque::new(),
            logged: 0,
            in_flight: 0,
            owner: next_owner(),
        }
    }

    /// The configured limit.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// The configured window length.
    pub fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms)
    }

    /// Number of entries in the log (entries expired since the last mutation included).
    pub fn len(&self) -> usize {
        self.log.len()
    }

    /// True when the log holds no entries.
    pub fn is_empty(&self) -> bool {
        self.log.is_empty()
    }

    /// Weight held by reservations in flight.
    pub fn in_flight(&self) -> u64 {
        clamp(self.in_flight)
    }

    /// Weight counting against the limit at `now`: entries still in the window plus in-flight weight.
    pub fn used(&self, now: Millis) -> u64 {
        clamp(self.unexpired(now) + self.in_flight)
    }

    /// `limit - used(now)`, saturating at zero.
    pub fn remaining(&self, now: Millis) -> u64 {
        self.limit.saturating_sub(self.used(now))
    }

    fn expiry(&self, e: &Entry) -> Millis {
        e.at.plus_ms(self.window_ms)
    }

    fn unexpired(&self, now: Millis) -> u128 {
        let expired: u128 = self
            .log
            .iter()
            .take_while(|e| self.expiry(e) <= now)
            .map(|e| u128::from(e.weight))
            .sum();
        self.logged - expired
    }

    /// The earliest instant at which `weight` fits, assuming nothing else is admitted, settled or
    /// released meanwhile. O(entries that must expire), never a scan per candidate instant.
    pub fn earliest_admit(&self, now: Millis, weight: u64) -> Admit {
        if weight > self.limit {
            return Admit::Never;
        }
        if weight == 0 {
            // adding nothing cannot overflow, even a window overfilled by restored history
            return Admit::Now;
        }
        let budget = u128::from(self.limit - weight);
        if self.in_flight > budget {
            return Admit::Busy;
        }
        let allowed = budget - self.in_flight;
        let mut rest = self.logged;
        let mut when = now;
        // The log is sorted, so entries leave the window front first: drop them until the rest fits.
        for e in &self.log {
            if rest <= allowed {
                break;
            }
            rest -= u128::from(e.weight);
            when = when.max(self.expiry(e));
        }
        Admit::not_before(now, when)
    }

    /// Holds `weight` if it fits now (see [`SlidingWindow::earliest_admit`]); otherwise says when it would.
    pub fn reserve(&mut self, now: Millis, weight: u64) -> Result<WindowReservation, Admit> {
        match self.earliest_admit(now, weight) {
            Admit::Now => {
                self.prune(now);
                self.in_flight += u128::from(weight);
                Ok(WindowReservation {
                    owner: self.owner,
                    weight,
                    started: now,
                })
            }
            other => Err(other),
        }
    }

    /// The send completed at `at`: its weight becomes an entry at `max(at, started)`.
    /// `at` must be no earlier than the instant the server counted it (the completion instant is).
    pub fn settle(&mut self, r: WindowReservation, at: Millis) -> Result<(), ThrottleError> {
        self.take(&r)?;
        self.record(at.max(r.started), r.weight);
        Ok(())
    }

    /// The server surely never counted this send: forget its weight.
    pub fn release(&mut self, r: WindowReservation) -> Result<(), ThrottleError> {
        self.take(&r)
    }

    fn take(&mut self, r: &WindowReservation) -> Result<(), ThrottleError> {
        if r.owner != self.owner {
            return Err(ThrottleError::ForeignReservation);
        }
        // Cannot underflow: every token of this owner added its weight exactly once.
        self.in_flight = self.in_flight.saturating_sub(u128::from(r.weight));
        Ok(())
    }

    /// Records weight counted at `at` (used by settle, and to rebuild the ledger from past events).
    /// Entries may arrive out of order; they are inserted in time order.
    pub fn record(&mut self, at: Millis, weight: u64) {
        if weight == 0 {
            return;
        }
        let idx = self.log.partition_point(|e| e.at <= at);
        self.log.insert(idx, Entry { at, weight });
        self.logged += u128::from(weight);
    }

    /// Drops entries that no longer count at `now` (or at any later instant).
    pub fn prune(&mut self, now: Millis) {
        while let Some(e) = self.log.front().copied() {
            if self.expiry(&e) > now {
                break;
            }
            self.log.pop_front();
            self.logged -= u128::from(e.weight);
        }
    }
}

fn clamp(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::throttle::check::max_window_sum;
    use proptest::prelude::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn admits_until_full_then_says_exactly_when() {
        let mut w = SlidingWindow::new(3, MIN);
        for t in [0, 10, 20] {
            let r = w.reserve(Millis(t), 1).expect("fits");
            w.settle(r, Millis(t + 5)).expect("own");
        }
        assert_eq!(w.used(Millis(30)), 3);
        assert_eq!(w.remaining(Millis(30)), 0);
        // the first entry (settled at 5) expires at 60_005
        assert_eq!(w.earliest_admit(Millis(30), 1), Admit::At(Millis(60_005)));
        assert_eq!(w.earliest_admit(Millis(30), 2), Admit::At(Millis(60_015)));
        assert_eq!(w.earliest_admit(Millis(30), 3), Admit::At(Millis(60_025)));
        assert_eq!(w.earliest_admit(Millis(30), 4), Admit::Never);
        assert_eq!(
            w.earliest_admit(Millis(60_004), 1),
            Admit::At(Millis(60_005))
        );
        assert_eq!(w.earliest_admit(Millis(60_005), 1), Admit::Now);
        assert_eq!(
            w.reserve(Millis(30), 1).err(),
            Some(Admit::At(Millis(60_005)))
        );
    }

    #[test]
    fn in_flight_counts_until_settled_and_release_frees_it() {
        let mut w = SlidingWindow::new(2, MIN);
        let a = w.reserve(Millis(0), 1).expect("fits");
        let b = w.reserve(Millis(0), 1).expect("fits");
        assert_eq!(w.in_flight(), 2);
        // nothing logged yet, in-flight weight alone fills it: no instant can be computed
        assert_eq!(w.earliest_admit(Millis(1_000_000), 1), Admit::Busy);
        w.release(a).expect("own");
        assert_eq!(w.earliest_admit(Millis(1), 1), Admit::Now);
        w.settle(b, Millis(500)).expect("own");
        assert_eq!(w.in_flight(), 0);
        assert_eq!(w.used(Millis(500)), 1);
        assert_eq!(w.used(Millis(60_499)), 1);
        assert_eq!(w.used(Millis(60_500)), 0);
    }

    #[test]
    fn settle_before_start_is_clamped_to_start() {
        let mut w = SlidingWindow::new(1, MIN);
        let r = w.reserve(Millis(1000), 1).expect("fits");
        w.settle(r, Millis(10)).expect("own");
        assert_eq!(w.earliest_admit(Millis(1000), 1), Admit::At(Millis(61_000)));
    }

    #[test]
    fn foreign_reservation_is_refused() {
        let mut a = SlidingWindow::new(5, MIN);
        let mut b = SlidingWindow::new(5, MIN);
        let r = a.reserve(Millis(0), 3).expect("fits");
        assert_eq!(
            b.settle(r, Millis(1)),
            Err(ThrottleError::ForeignReservation)
        );
        assert_eq!(b.in_flight(), 0);
        assert_eq!(b.used(Millis(1)), 0);
    }

    #[test]
    fn out_of_order_records_and_prune() {
        let mut w = SlidingWindow::new(10, MIN);
        w.record(Millis(50_000), 4);
        w.record(Millis(10_000), 3);
        w.record(Millis(30_000), 2);
        w.record(Millis(30_000), 0);
        assert_eq!(w.len(), 3);
        assert_eq!(w.used(Millis(60_000)), 9);
        assert_eq!(
            w.earliest_admit(Millis(60_000), 2),
            Admit::At(Millis(70_000))
        );
        assert_eq!(
            w.earliest_admit(Millis(60_000), 5),
            Admit::At(Millis(90_000))
        );
        w.prune(Millis(70_000));
        assert_eq!(w.len(), 2);
        assert_eq!(w.used(Millis(70_000)), 6);
    }

    #[test]
    fn zero_weight_always_fits() {
        let mut w = SlidingWindow::new(2, MIN);
        w.record(Millis(0), 5); // overfilled by restored history
        assert_eq!(w.earliest_admit(Millis(0), 0), Admit::Now);
        assert_eq!(w.earliest_admit(Millis(0), 1), Admit::At(Millis(60_000)));
    }

    #[test]
    fn future_entries_are_counted_conservatively() {
        let mut w = SlidingWindow::new(2, MIN);
        w.record(Millis(5_000), 2); // e.g. restored from a host whose clock runs ahead
        assert_eq!(w.earliest_admit(Millis(0), 1), Admit::At(Millis(65_000)));
    }

    #[test]
    fn many_entries_are_cheap() {
        // a 24 h recipient window with 10,000 entries; each call walks only what must expire
        let mut w = SlidingWindow::new(10_000, Duration::from_secs(86_400));
        for i in 0..10_000u64 {
            w.record(Millis(i * 8), 1);
        }
        assert_eq!(
            w.earliest_admit(Millis(80_000), 1),
            Admit::At(Millis(86_400_000))
        );
        assert_eq!(
            w.earliest_admit(Millis(80_000), 500),
            Admit::At(Millis(86_400_000 + 499 * 8))
        );
        for _ in 0..10_000 {
            assert!(!w.earliest_admit(Millis(80_000), 1).is_now());
        }
    }

    #[derive(Debug, Clone)]
    struct Send {
        gap: u64,
        weight: u64,
        duration: u64,
        /// where in [start, completion] the server counts it: 0 = start, 1000 = completion
        accept_permille: u64,
        reaches_data: bool,
    }

    fn send() -> impl Strategy<Value = Send> {
        (
            prop_oneof![Just(0u64), 0u64..2_000, 0u64..120_000],
            1u64..=6,
            prop_oneof![Just(0u64), 0u64..3_000, 0u64..90_000],
            prop_oneof![Just(0u64), Just(1000u64), 0u64..=1000],
            prop::bool::weighted(0.9),
        )
            .prop_map(
                |(gap, weight, duration, accept_permille, reaches_data)| Send {
                    gap,
                    weight,
                    duration,
                    accept_permille,
                    reaches_data,
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        /// Reserve at send start, settle at completion (or release when the server never counted
        /// it): whatever instant inside [start, completion] the server counts each send at, no
        /// window of the server's ever holds more than the limit. Sends overlap freely here.
        #[test]
        fn server_windows_never_overflow(
            limit in 1u64..=12,
            window_ms in 1u64..=60_000,
            sends in prop::collection::vec(send(), 1..120),
        ) {
            let mut w = SlidingWindow::new(limit, Duration::from_millis(window_ms));
            let mut now = Millis(1_000_000);
            let mut in_flight: Vec<(Millis, WindowReservation, Millis, bool)> = Vec::new();
            let mut server: Vec<(u64, u64)> = Vec::new();
            let mut queue: std::collections::VecDeque<Send> = sends.into_iter().collect();
            let mut next_arrival = now.plus_ms(queue.front().map_or(0, |s| s.gap));
            let mut waiting: std::collections::VecDeque<Send> = Default::default();
            loop {
                // completions due now, in completion order
                in_flight.sort_by_key(|f| f.0);
                while in_flight.first().is_some_and(|f| f.0 <= now) {
                    let (done, r, _, counted) = in_flight.remove(0);
                    if counted {
                        w.settle(r, done).expect("own");
                    } else {
                        w.release(r).expect("own");
                    }
                }
                while next_arrival <= now {
                    let Some(s) = queue.pop_front() else { break };
                    waiting.push_back(s);
                    next_arrival = next_arrival.plus_ms(queue.front().map_or(u64::MAX, |s| s.gap));
                }
                let mut wake = None;
                while let Some(s) = waiting.front() {
                    match w.reserve(now, s.weight) {
                        Ok(r) => {
                            let s = waiting.pop_front().expect("front exists");
                            let done = now.plus_ms(s.duration);
                            if s.reaches_data {
                                let accepted = now.0 + s.duration * s.accept_permille / 1000;
                                server.push((accepted, s.weight));
                            }
                            in_flight.push((done, r, now, s.reaches_data));
                        }
                        Err(Admit::At(t)) => {
                            prop_assert!(t > now);
                            prop_assert!(!w.earliest_admit(t.minus_ms(1), s.weight).is_now());
                            prop_assert!(w.earliest_admit(t, s.weight).is_now());
                            wake = Some(t);
                            break;
                        }
                        Err(Admit::Busy) => {
                            prop_assert!(!in_flight.is_empty());
                            break;
                        }
                        Err(Admit::Never) => {
                            prop_assert!(s.weight > limit);
                            waiting.pop_front();
                        }
                        Err(Admit::Now) => prop_assert!(false, "Err(Now)"),
                    }
                }
                let next = [wake, in_flight.iter().map(|f| f.0).min(),
                            (!queue.is_empty()).then_some(next_arrival)]
                    .into_iter().flatten().min();
                match next {
                    Some(t) => { prop_assert!(t >= now); now = t; }
                    None => break,
                }
            }
            prop_assert!(waiting.is_empty());
            prop_assert!(max_window_sum(&server, window_ms) <= limit,
                "server window holds {} > {}", max_window_sum(&server, window_ms), limit);
        }
    }
}
