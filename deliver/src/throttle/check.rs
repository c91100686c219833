//! Brute-force checkers for the tests, deliberately independent of the throttle's own bookkeeping.

/// The largest total weight any window `(t - window_ms, t]` holds, over all `t`.
/// The maximum is reached with `t` at some event's instant, so only those are tried.
pub(crate) fn max_window_sum(events: &[(u64, u64)], window_ms: u64) -> u64 {
    events
        .iter()
        .map(|&(t, _)| {
            events
                .iter()
                .filter(|&&(s, _)| s <= t && s + window_ms > t)
                .map(|&(_, w)| w)
                .sum::<u64>()
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checker_counts_half_open_windows() {
        assert_eq!(max_window_sum(&[], 10), 0);
        assert_eq!(max_window_sum(&[(0, 1), (9, 1), (10, 1)], 10), 2);
        assert_eq!(max_window_sum(&[(0, 2), (5, 3), (20, 1)], 10), 5);
    }
}
