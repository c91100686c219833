//! Exact throttling of a pool of Office 365 mailboxes, as pure synchronous code over a virtual clock.
//!
//! Every limit is a sliding-window *log* ([`SlidingWindow`]): a send is admitted only if the weight
//! logged in the trailing window, plus the weight of sends still in flight, plus its own weight fits
//! the limit, and [`Admit::At`] names the exact instant enough old weight leaves the window. A send
//! *reserves* its weight when it starts and *settles* it at completion, where the entry is logged at the
//! completion instant; in-flight weight counts at every instant until then. The server counts a message
//! at some instant inside [start, completion], so for any server window, the last message admitted into
//! it saw every earlier one either in flight or logged no earlier than its acceptance, hence inside its
//! own trailing window: no server window ever exceeds the limit (unlike a token bucket, which lets close
//! to twice the limit through one window). The price is that a slot is reused one window after the send
//! *completed*, so a mailbox carries `limit × window / (window + send time)` — over 99% for sends
//! under 600 ms on a 60 s window — and the recipient and tenant windows work the same way.

mod admit;
#[cfg(test)]
mod check;
mod classes;
mod error;
mod hold;
mod mailbox;
mod outcome;
mod pool;
#[cfg(test)]
mod pool_tests;
mod ready;
#[cfg(test)]
mod reference_tests;
#[cfg(test)]
mod sim_tests;
mod tenant;
mod time;
mod window;

pub use admit::Admit;
pub use classes::ClassId;
pub use error::ThrottleError;
pub use hold::MailboxState;
pub use mailbox::{MailboxLimits, MailboxReservation, MailboxThrottle, Snapshot};
pub use outcome::{Impossible, Pick, Reservation};
pub use pool::PoolSchedule;
pub use tenant::{TenantLimit, TenantReservation};
pub use time::Millis;
pub use window::{SlidingWindow, WindowReservation};
