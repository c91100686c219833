//! When a failed webhook is tried again: the wait doubles from `retry_initial_ms` up to
//! `retry_max_ms`, and each wait is drawn between half of it and all of it ("equal
//! jitter"), so receivers coming back from an outage are not hit by every ingest replica's
//! backlog in the same instant.

use std::time::Duration;

use rand::Rng;

/// The wait after the `tries`-th failed try (1 for the first).
pub fn retry_delay(tries: u32, initial: Duration, max: Duration, rng: &mut impl Rng) -> Duration {
    let doubled = initial.saturating_mul(1u32 << tries.saturating_sub(1).min(30));
    let ceiling = doubled.min(max).max(Duration::from_millis(1));
    let half = ceiling / 2;
    half + Duration::from_millis(rng.random_range(0..=(ceiling - half).as_millis() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_ceiling_with_jitter_inside_half_to_whole() {
        let (initial, max) = (Duration::from_secs(5), Duration::from_secs(3600));
        let mut rng = rand::rng();
        for tries in 1..=40 {
            let ceiling = (initial * 2u32.saturating_pow(tries.min(31) - 1)).min(max);
            for _ in 0..50 {
                let d = retry_delay(tries, initial, max, &mut rng);
                assert!(
                    d >= ceiling / 2 && d <= ceiling,
                    "{tries}: {d:?} vs {ceiling:?}"
                );
            }
        }
    }
}
