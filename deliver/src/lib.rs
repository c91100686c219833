//! mailpipe-deliver: sends rendered messages through a pool of Office 365 mailboxes.
//!
//! The modules follow a message's way through deliver (docs/architecture.md has the map and
//! a glossary):
//!
//! - [`send`]: one message, from the record's verdict to the ack: the send decision (one
//!   transaction in the store), the SMTP send, the outcome recorded with its job's event.
//!   Beside it: [`send::claims`] (one copy of a job at a time here), [`send::suppression`]
//!   (recipients screened), [`send::compose`] (the bytes sent), [`send::ledger`] (delivered
//!   sends not yet on record).
//! - [`pool`]: the mailboxes this process sends through: booking a send slot (waiting exactly
//!   until a mailbox has room, in the waiting line's order), each mailbox's health, idle SMTP
//!   sessions, eligibility classes.
//! - [`throttle`]: the pure scheduler: exact sliding windows per mailbox and tenant.
//! - [`ownership`]: fenced mailbox leases across deliver processes; [`ownership::shares`]:
//!   which process should own which mailbox.
//! - [`smtp`]: one STARTTLS + AUTH session, every step under a timeout; [`smtp::classify`]:
//!   what each Exchange reply means.
//! - [`auth`]: tokens and certificate credentials.
//! - After the 250: [`graph`] (Microsoft Graph), [`feedback`] (Sent Items, the Inbox),
//!   [`bounce`] (reading non-delivery reports, pure).
//! - [`settings`], [`startup`], [`metrics`], [`check_pool`] (the preflight of every mailbox,
//!   its Graph permissions and every sender domain), [`sender_domain`] (what receivers judge
//!   of the From domain: SPF, DKIM, DMARC through DNS, and the refusals that blame it).

pub mod auth;
pub mod bounce;
pub mod check_pool;
pub mod feedback;
pub mod graph;
pub mod metrics;
pub mod ownership;
pub mod pool;
pub mod send;
pub mod sender_domain;
pub mod settings;
pub mod smtp;
pub mod startup;
pub mod throttle;
