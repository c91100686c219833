//! The deliver crate's integration tests, one binary with a module per concern: one link
//! instead of one per file (see the README, "Quick start").

#![allow(clippy::unwrap_used)]

#[path = "../support/mod.rs"]
mod support;

mod auth_discipline;
mod bounce;
mod bounce_props;
mod check_pool;
mod check_pool_domains;
mod check_pool_graph;
mod classify_props;
mod docs_microsoft365;
mod federated;
mod graph_client;
mod graph_send;
mod graph_upload;
mod inbox_reader;
mod pool;
mod reliability;
mod schedule;
mod send_decision;
mod starttls_injection;
mod startup;
mod token_requests;
