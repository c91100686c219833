//! Credentials for the pool's mailboxes: client-credentials tokens for XOAUTH2 and Graph
//! (`oauth`), cached and refreshed, from the tenant's token endpoint (`token_endpoint`),
//! with a client secret, a certificate (`assertion`) or a federated token file (`federated`).

pub mod assertion;
pub mod federated;
pub mod oauth;
pub mod token_endpoint;
