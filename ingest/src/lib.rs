//! mailpipe-ingest: the edge of the pipeline. Jobs come in over HTTP or from a file,
//! are checked (nothing invalid is published), published to the render queue with
//! publisher confirms, and answered for.
//!
//! ```text
//!  HTTP (api/) ──┐                                ┌─> render queue
//!                ├─> validate ─> batch (spool) ─> publish ─┤
//!  file (submit)─┘    batch_reader (JSONL/CSV)        └─> events stream (accepted)
//!                                                                 │
//!  status + idempotency <── events (follows the stream) <─────────┘
//! ```
//!
//! - [`settings`]: the `[ingest]` section and API tokens.
//! - [`validate`]: edge checks beyond the contract (template exists, attachment inside root).
//! - [`batch_reader`]: JSONL/CSV line by line into checked jobs, with line numbers.
//! - [`batch`]: one import (check, spool, publish), shared by the API and `submit`.
//! - [`publish`]: claim the id, publish, await the confirm, record the `accepted` event.
//! - [`idempotency`]: ids already accepted. [`status`]: what is known per job and batch.
//! - [`eta`]: a batch's ETA from the pool's limits and what its mailboxes sent (pure).
//! - [`events`]: follows the events stream into both.
//! - [`status_cli`]: `mailpipe-ingest status`. [`dead`]: `mailpipe-ingest dead list|replay`.
//! - [`api`]: the HTTP routes. [`startup`]: `Application`. [`submit`]: the CLI import.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod api;
pub mod batch;
pub mod batch_reader;
pub mod dead;
pub mod eta;
pub mod events;
pub mod idempotency;
pub mod metrics;
pub mod publish;
pub mod settings;
pub mod startup;
pub mod status;
pub mod status_cli;
pub mod submit;
pub mod validate;

pub use settings::{Config, IngestSettings};
pub use startup::Application;
