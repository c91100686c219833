//! Misuse errors (all are caller bugs; none can corrupt the ledger).

/// A call that the throttle refused because its arguments do not belong to it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ThrottleError {
    /// The reservation was issued by a different throttle, tenant or pool. Nothing was changed.
    #[error("reservation was issued by a different throttle")]
    ForeignReservation,
    /// No mailbox with this index in the pool.
    #[error("no mailbox {0} in the pool")]
    UnknownMailbox(usize),
    /// No tenant with this index in the pool.
    #[error("no tenant {0} in the pool")]
    UnknownTenant(usize),
    /// The mailbox has sends in flight: its windows cannot be rebuilt now.
    #[error("mailbox {0} has sends in flight")]
    InFlight(usize),
}
