//! The common crate's integration tests, one binary with a module per concern: one link
//! instead of one per file (see the README, "Quick start").

#![allow(clippy::unwrap_used)]

mod amqp;
mod bounces;
mod config_props;
mod contract_props;
mod prefetch_follows;
mod store;
mod topology_changes;
mod webhook_outbox;
