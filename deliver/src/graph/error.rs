//! What can go wrong talking to Graph, each case saying what and where (never a token).

use std::time::Duration;

use crate::auth::oauth::OAuthError;

#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// The mailbox cannot be read through Graph at all (password auth, a tenant without an
    /// app registration, not in the pool).
    #[error("mailbox {mailbox} has no Graph access: {reason}")]
    NoGraph { mailbox: String, reason: String },
    #[error("Graph token for {mailbox}: {source}")]
    Token {
        mailbox: String,
        #[source]
        source: Box<OAuthError>,
    },
    #[error("Graph {operation} for {mailbox} failed: {message}")]
    Transport {
        operation: &'static str,
        mailbox: String,
        message: String,
    },
    /// Following would send the bearer token to wherever the redirect points.
    #[error(
        "Graph {operation} for {mailbox} answered {status} redirecting to {location:?}; redirects are never followed (they could carry the token away): check deliver.graph.base_url"
    )]
    Redirected {
        operation: &'static str,
        mailbox: String,
        status: u16,
        location: String,
    },
    #[error("Graph {operation} for {mailbox}: the answer is larger than {limit} bytes{hint}")]
    TooLarge {
        operation: &'static str,
        mailbox: String,
        limit: u64,
        hint: &'static str,
    },
    /// Graph's own error (`{"error":{"code":…,"message":…}}`).
    #[error("Graph {operation} for {mailbox} answered {status} {code}: {message}")]
    Api {
        operation: &'static str,
        mailbox: String,
        status: u16,
        code: String,
        message: String,
    },
    /// Still throttled after the retries a request gets.
    #[error(
        "Graph {operation} for {mailbox} is throttled (429/503) after {attempts} attempts; next try after {retry_after:?}"
    )]
    Throttled {
        operation: &'static str,
        mailbox: String,
        attempts: u32,
        retry_after: Duration,
        /// One of the answers was a `503`: the server may have acted on that request (a
        /// `429` is a refusal before any processing).
        maybe_processed: bool,
    },
    /// The request would have gone out after its deadline (a throttling wait, or the
    /// send's earlier requests, ran past it): it was not sent.
    #[error(
        "Graph {operation} for {mailbox} not sent: the send's deadline passed before it could start ({waited:?} of waiting for Retry-After)"
    )]
    PastDeadline {
        operation: &'static str,
        mailbox: String,
        waited: Duration,
    },
    #[error("Graph {operation} for {mailbox} answered something unexpected: {message}")]
    Malformed {
        operation: &'static str,
        mailbox: String,
        message: String,
    },
    /// An upload session's `uploadUrl` that is not https on `base_url`'s host or one of
    /// `upload_hosts`: its bytes (and the URL's own credential) would go elsewhere. Only the
    /// origin is kept: the URL's query is a credential.
    #[error(
        "Graph create_upload_session for {mailbox}: refusing an uploadUrl at {origin}, which is not https on deliver.graph.base_url's host or one of deliver.graph.upload_hosts"
    )]
    ForeignUploadUrl { mailbox: String, origin: String },
    /// The upload session stopped making progress: Graph asked for a range that does not
    /// continue the upload, or never finished it.
    #[error("Graph upload_range for {mailbox}: {message}")]
    UploadStalled { mailbox: String, message: String },
    /// An `@odata.nextLink` pointing away from `base_url` (the token would go with it).
    #[error("Graph list for {mailbox}: refusing a nextLink outside deliver.graph.base_url: {url}")]
    ForeignLink { mailbox: String, url: String },
}

impl GraphError {
    /// Graph's error code (`ErrorItemNotFound`, `ErrorFolderExists`, ...), when it gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            GraphError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            GraphError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}
