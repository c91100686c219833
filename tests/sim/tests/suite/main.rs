//! The sim crate's integration tests, one binary with a module per concern: one link
//! instead of one per file (see the README, "Quick start").

#![allow(clippy::unwrap_used)]

mod common;

mod app_permissions;
mod binary;
mod client_assertions;
mod error_throttling;
mod federated_credentials;
mod graph;
mod graph_uploads;
mod http_api;
mod lettre_xoauth2;
mod limits;
mod protocol;
mod python_client;
mod tls_and_auth;
