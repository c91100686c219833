//! mailpipe-deliver: sends rendered messages through a pool of Office 365 mailboxes.
//!
//! - [`throttle`]: exact sliding-window limits per mailbox and tenant, and the pure pool
//!   scheduler (which mailbox may send what, and when).
//! - [`eligibility`]: which mailboxes may send a message, as a cached scheduler class.
//! - [`claims`]: a job is in at most one send at a time in this process.
//! - [`ownership`]: fenced leases on mailboxes across deliver processes; [`shares`]:
//!   which process should own which mailbox.
//! - [`classify`]: what each Exchange reply means (the documented table).
//! - [`smtp`]: one STARTTLS + AUTH session, every step under a timeout.
//! - [`oauth`]: client-credentials tokens, cached and refreshed; [`token_endpoint`]: where
//!   they come from; [`assertion`]: certificate credentials.
//! - [`graph`]: the pool's mailboxes through Microsoft Graph (Inbox, Sent Items, folders);
//!   [`feedback`]: what deliver reads there (uncertain sends in Sent Items, bounces).
//! - [`settings`]: the `[deliver]` section: pool, policies, timeouts.
//! - [`check_pool`]: the `check-pool` preflight of every mailbox.
//! - [`bounce`]: reading non-delivery reports (pure; the Inbox reader calls it).
//! - [`suppression`]: suppressed recipients dropped before a send, RCPT refusals listed.

pub mod assertion;
pub mod bounce;
pub mod check_pool;
pub mod claims;
pub mod classify;
pub mod compose;
pub mod eligibility;
pub mod feedback;
pub mod graph;
pub mod ledger;
pub mod metrics;
pub mod oauth;
pub mod ownership;
pub mod pool;
pub mod settings;
pub mod shares;
pub mod smtp;
pub mod stage;
pub mod startup;
pub mod suppression;
pub mod throttle;
pub mod token_endpoint;
