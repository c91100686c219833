//! The tests crate's integration tests, one binary with a module per concern: one link
//! instead of one per file (see the README, "Quick start").

#![allow(clippy::unwrap_used)]

mod batch_control;
mod config_example;
mod console;
mod database;
mod deliver_ha;
mod demo;
mod deploy_files;
mod e2e;
mod feedback;
mod forged_reports;
mod inbox_backlog;
mod lanes;
mod log_secrets;
mod monitoring;
mod readme_commands;
mod rebalance;
mod suppression;
mod tracing;
mod webhooks;
