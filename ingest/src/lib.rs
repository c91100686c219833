//! mailpipe-ingest: the edge of the pipeline. Jobs come in over HTTP or from a file,
//! are checked (nothing invalid is published), published to the render queue with
//! publisher confirms, and answered for.
//!
//! ```text
//!  HTTP (api/) ──┐                                        ┌─> claim ids (PostgreSQL)
//!                ├─> validate ─> batch (spool) ─> publish ─┼─> render queue
//!  file (submit)─┘    batch_reader (JSONL/CSV)            └─> record accepted (PostgreSQL)
//!
//!  status, jobs, ETA  <── records (queries on the system of record)
//! ```
//!
//! - [`settings`]: the `[ingest]` section. [`tokens`]: the API tokens, their roles and
//!   owners (`api::roles` says what each role may do).
//! - [`validate`]: edge checks beyond the contract (template exists, attachment inside root).
//! - [`batch_reader`]: JSONL/CSV line by line into checked jobs, with line numbers.
//! - [`batch`]: one import (check, spool, publish), shared by the API and `submit`.
//! - [`publish`]: claim the ids, publish, await the confirms, record them accepted.
//! - [`lanes`]: the deliver queue each job will wait in (lane, batch turn).
//! - [`records`]: batch reports, job records and job lists from the system of record.
//! - [`eta`]: a batch's ETA from the pool's limits and what its mailboxes sent (pure).
//! - [`status_cli`]: `mailpipe-ingest status`. [`jobs_cli`]: `mailpipe-ingest jobs`.
//!   [`batch_list_cli`]: `mailpipe-ingest batch list`.
//!   [`dead`]: `mailpipe-ingest dead list|replay`.
//! - [`webhooks`]: outcome webhooks from the database's outbox to the receivers.
//! - [`console`]: the operator's web console at `/console` (sessions, pages).
//! - [`api`]: the HTTP routes. [`startup`]: `Application`. [`submit`]: the CLI import.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod api;
pub mod batch;
pub mod batch_list_cli;
pub mod batch_reader;
pub mod commands;
pub mod console;
pub mod dead;
pub mod dead_log;
pub mod eta;
pub mod jobs_cli;
pub mod lanes;
pub mod metrics;
pub mod publish;
pub mod records;
pub mod settings;
pub mod startup;
pub mod status_cli;
pub mod submit;
pub mod suppressed;
pub mod suppressions_cli;
pub mod tokens;
pub mod uncertain_cli;
pub mod validate;
pub mod webhooks;

pub use settings::{Config, IngestSettings};
pub use startup::Application;
