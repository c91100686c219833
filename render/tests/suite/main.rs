//! The render crate's integration tests, one binary with a module per concern: one link
//! instead of one per file (see the README, "Quick start").

#![allow(clippy::unwrap_used)]

mod support;

mod attachments;
mod cli;
mod message;
mod rabbitmq;
mod render_bounds;
mod silent_broker;
mod templates;
