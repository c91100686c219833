//! mailpipe-common: what the stages share.
//!
//! - [`domain`]: types that parse at the edge (`EmailAddress`, `Mailbox`, `JobId`...).
//! - [`contract`]: what travels between stages (`Job`, `RenderedMeta`, `DeliveryEvent`),
//!   versioned.
//! - [`config`]: one TOML file for all binaries, environment overrides, secret references.
//! - [`amqp`]: the RabbitMQ layer: reconnecting `Broker`, `Topology`, confirmed
//!   `Publisher`, bounded `consume` loop.
//! - [`pipeline`]: the records stages write: delivery events, dead letters, the retry ladder.
//! - [`store`]: the system of record in PostgreSQL: jobs, their events, batches.
//! - [`pool`]: the configured pool of sending mailboxes (deliver sends, ingest estimates).
//! - [`http_server`]: the bounded HTTP accept loop (connection cap, header timeout).
//! - [`service`], [`telemetry`], [`shutdown`], [`cli`]: what every binary serves and how it
//!   starts and stops.

pub mod amqp;
pub mod cli;
pub mod config;
pub mod contract;
pub mod domain;
pub mod http_server;
pub mod pipeline;
pub mod pool;
pub mod service;
pub mod shutdown;
pub mod store;
pub mod telemetry;

#[cfg(feature = "testkit")]
pub mod testkit;
