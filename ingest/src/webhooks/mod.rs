//! Outcome webhooks (docs/webhooks.md). Events are born in PostgreSQL with the outcome
//! they announce (triggers, migration 0007); this module takes them from there to the
//! receivers.
//!
//! - [`settings`]: `[ingest.webhooks]`, resolved into [`Webhooks`] (keys read).
//! - [`callback_url`]: what a batch's callback URL must satisfy (it is untrusted input).
//! - [`allowed_host`]: one allow-list entry, a host and the port it may be called on.
//! - [`address_guard`]: the addresses a callback may connect to, checked on the
//!   connection's own lookup.
//! - [`signature`]: Standard Webhooks signing. [`keyring`]: the keys of one endpoint,
//!   both during a secret rotation.
//! - [`backoff`]: when a failed call is tried again.
//! - [`sender`]: one bounded HTTP call.
//! - [`dispatcher`]: the `serve` task that expires, sweeps, fans out and calls.
//! - [`cli`]: `mailpipe-ingest webhooks list|retry|drop`.

pub mod address_guard;
pub mod allowed_host;
pub mod backoff;
pub mod callback_url;
pub mod cli;
pub mod dispatcher;
pub mod keyring;
pub mod sender;
pub mod settings;
pub mod signature;

pub use callback_url::UrlPolicy;
pub use dispatcher::Dispatcher;
pub use settings::{CALLBACK, PreviousSecret, WebhookSettings, Webhooks};
