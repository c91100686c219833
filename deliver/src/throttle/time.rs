//! Wall-clock instants in milliseconds, so tests can drive a virtual clock.

use std::fmt;
use std::ops::Add;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// An instant: milliseconds since the UNIX epoch (wall clock).
///
/// Wall clock rather than a monotonic clock because the quota ledger is rebuilt after a restart
/// from timestamped events. All arithmetic saturates: no instant a caller passes can panic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millis(pub u64);

impl Millis {
    /// The UNIX epoch.
    pub const ZERO: Millis = Millis(0);

    /// Milliseconds since the epoch; instants before the epoch become [`Millis::ZERO`].
    pub fn from_system_time(t: SystemTime) -> Millis {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            Err(_) => Millis::ZERO,
        }
    }

    /// The same instant as a [`SystemTime`].
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }

    /// Raw milliseconds since the epoch.
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// `self + ms`, saturating.
    pub fn plus_ms(self, ms: u64) -> Millis {
        Millis(self.0.saturating_add(ms))
    }

    /// `self - ms`, saturating at the epoch.
    pub fn minus_ms(self, ms: u64) -> Millis {
        Millis(self.0.saturating_sub(ms))
    }

    /// Time from `earlier` to `self`; zero if `earlier` is not before `self`.
    /// Handy for `tokio::time::sleep(until.saturating_duration_since(now))`.
    pub fn saturating_duration_since(self, earlier: Millis) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Millis {
    type Output = Millis;
    /// Saturating; sub-millisecond parts are rounded up.
    fn add(self, d: Duration) -> Millis {
        self.plus_ms(duration_ms_ceil(d))
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// Whole milliseconds in `d`, rounded up (a longer window is the safe side), saturating.
pub(crate) fn duration_ms_ceil(d: Duration) -> u64 {
    let ms = d.as_millis() + u128::from(!d.subsec_nanos().is_multiple_of(1_000_000));
    u64::try_from(ms).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(Millis(u64::MAX).plus_ms(5), Millis(u64::MAX));
        assert_eq!(Millis(3).minus_ms(5), Millis::ZERO);
        assert_eq!(
            Millis(3).saturating_duration_since(Millis(10)),
            Duration::ZERO
        );
        assert_eq!(
            Millis(10).saturating_duration_since(Millis(3)),
            Duration::from_millis(7)
        );
        assert_eq!(Millis(1) + Duration::from_micros(1500), Millis(3));
        assert_eq!(Millis(1) + Duration::MAX, Millis(u64::MAX));
    }

    #[test]
    fn system_time_round_trip() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(Millis::from_system_time(t), Millis(1_700_000_000_123));
        assert_eq!(Millis(1_700_000_000_123).to_system_time(), t);
        assert_eq!(
            Millis::from_system_time(UNIX_EPOCH - Duration::from_secs(1)),
            Millis::ZERO
        );
    }
}
