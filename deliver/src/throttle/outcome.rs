//! What a pick answers: a mailbox and its reservation, an exact instant to wait for, a release
//! to wait for, or why the message can never be sent.

use std::fmt;

use super::mailbox::MailboxReservation;
use super::tenant::TenantReservation;
use super::time::Millis;

/// Why no eligible mailbox could ever take a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Impossible {
    /// The eligibility class has no mailbox.
    NoEligibleMailbox,
    /// More recipients than any eligible mailbox allows in one message (or in its whole window).
    TooManyRecipients {
        /// Recipients of the message.
        requested: u64,
        /// The most any eligible mailbox allows (0: none of them can send at all).
        max: u64,
    },
    /// More external recipients than the tenant limit of any eligible mailbox.
    TooManyExternalRecipients {
        /// External recipients of the message.
        requested: u64,
        /// The largest tenant limit among the eligible mailboxes.
        max: u64,
    },
}

impl fmt::Display for Impossible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Impossible::NoEligibleMailbox => write!(f, "no eligible mailbox in the pool"),
            Impossible::TooManyRecipients { requested, max } => {
                write!(
                    f,
                    "{requested} recipients, but eligible mailboxes take at most {max} per message"
                )
            }
            Impossible::TooManyExternalRecipients { requested, max } => write!(
                f,
                "{requested} external recipients, but the eligible tenants allow at most {max} per window"
            ),
        }
    }
}

/// A send in flight, holding quota on one mailbox and its tenant. Give it back to
/// [`PoolSchedule::settle`] or [`PoolSchedule::release`] exactly once (it is consumed).
#[must_use = "a reservation must be settled or released, or its quota and connection are held forever"]
#[derive(Debug)]
pub struct Reservation {
    pub(super) id: u64,
    pub(super) pool: u64,
    pub(super) mailbox: usize,
    pub(super) tenant: usize,
    pub(super) mbox: MailboxReservation,
    pub(super) ext: TenantReservation,
}

impl Reservation {
    /// Unique within the pool, for logs.
    pub fn id(&self) -> u64 {
        self.id
    }
    /// Index of the mailbox to send through.
    pub fn mailbox(&self) -> usize {
        self.mailbox
    }
    /// Index of that mailbox's tenant.
    pub fn tenant(&self) -> usize {
        self.tenant
    }
    /// When the send started.
    pub fn started(&self) -> Millis {
        self.mbox.started()
    }
    /// Recipients held.
    pub fn recipients(&self) -> u64 {
        self.mbox.recipients()
    }
    /// External recipients held.
    pub fn external_recipients(&self) -> u64 {
        self.ext.external_recipients()
    }
}

/// The outcome of [`PoolSchedule::pick`].
#[derive(Debug)]
pub enum Pick {
    /// Send through this mailbox now; the reservation is already taken.
    Mailbox(usize, Reservation),
    /// Nothing can take it before this instant (exact, not a polling hint). Sleep until then, or
    /// until a reservation is settled or released, whichever comes first, and pick again.
    WaitUntil(Millis),
    /// Every mailbox that could take it is held by sends in flight (connections, in-flight quota)
    /// or is unavailable (owned by another process): no instant can be computed. Sleep until a
    /// reservation is settled or released (or availability changes), then pick again.
    WaitForRelease,
    /// No mailbox of the class could ever take it (whatever its state or availability).
    Impossible(Impossible),
}
