//! The ingest crate's integration tests, one binary with a module per concern: one link
//! instead of one per file (see the README, "Quick start").

#![allow(clippy::unwrap_used)]

#[path = "../support/mod.rs"]
mod support;

mod api;
mod batch_props;
mod broker_errors;
mod dead;
mod examples;
mod openapi;
mod records;
mod security;
mod status;
mod submit;
mod suppressions;
mod uncertain;
