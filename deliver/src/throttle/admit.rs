//! The answer to "when could this be admitted?".

use super::time::Millis;

/// When a throttle could admit a send of a given weight, assuming nothing else changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Admit {
    /// It fits now.
    Now,
    /// It fits at exactly this instant (and at every later one, unless something else is admitted first);
    /// never before. Computed from the log, so the caller can sleep until then instead of polling.
    At(Millis),
    /// It does not fit at any instant that can be computed now, because sends in flight on this throttle
    /// hold the room (connection cap reached, or in-flight reservations alone leave no room). Ask again
    /// after one of them is settled or released; that is not time-based.
    Busy,
    /// It can never fit (weight above the limit, or above the per-message cap).
    Never,
}

impl Admit {
    /// Both conditions must hold: the stricter answer, with the later instant.
    pub fn and(self, other: Admit) -> Admit {
        use Admit::*;
        match (self, other) {
            (Never, _) | (_, Never) => Never,
            (Busy, _) | (_, Busy) => Busy,
            (At(a), At(b)) => At(a.max(b)),
            (At(a), Now) | (Now, At(a)) => At(a),
            (Now, Now) => Now,
        }
    }

    /// `Admit::At(t)` unless `t <= now`, in which case `Admit::Now`.
    pub fn not_before(now: Millis, t: Millis) -> Admit {
        if t <= now { Admit::Now } else { Admit::At(t) }
    }

    /// True for [`Admit::Now`].
    pub fn is_now(self) -> bool {
        self == Admit::Now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn and_takes_the_stricter() {
        use Admit::*;
        assert_eq!(Now.and(Now), Now);
        assert_eq!(Now.and(At(Millis(5))), At(Millis(5)));
        assert_eq!(At(Millis(7)).and(At(Millis(5))), At(Millis(7)));
        assert_eq!(At(Millis(7)).and(Busy), Busy);
        assert_eq!(Busy.and(Never), Never);
        assert_eq!(Now.and(Never), Never);
        assert_eq!(Admit::not_before(Millis(5), Millis(5)), Now);
        assert_eq!(Admit::not_before(Millis(5), Millis(6)), At(Millis(6)));
    }
}
