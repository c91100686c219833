//! One HTTP call to a receiver, bounded: connect and whole-request timeouts, redirects
//! never followed (a redirect could carry the signed body elsewhere), the response body
//! never read (only its status counts). Errors are kept without the URL, whose query
//! may hold a receiver's token. Callback calls go through a sender whose resolver checks
//! every address it hands the connection (`address_guard`).

use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderValue};

use super::address_guard::GuardedResolver;

/// How a call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallResult {
    /// The receiver answered this status.
    Status(u16),
    /// No answer within the request timeout.
    TimedOut,
    /// No connection, or it broke.
    Failed(String),
}

impl CallResult {
    /// The metric label (`mailpipe_ingest_webhook_attempts_total{result}`).
    pub fn label(&self) -> &'static str {
        match self {
            CallResult::Status(s) if (200..300).contains(s) => "success",
            CallResult::Status(410) => "gone",
            CallResult::Status(_) => "http_error",
            CallResult::TimedOut => "timeout",
            CallResult::Failed(_) => "connection",
        }
    }
}

/// One signed call.
#[derive(Debug)]
pub struct Call<'a> {
    pub url: &'a str,
    pub id: &'a str,
    pub timestamp: i64,
    pub signature: String,
    pub body: &'a str,
}

#[derive(Debug, Clone)]
pub struct Sender {
    client: reqwest::Client,
}

impl Sender {
    /// A sender for the operator's configured endpoints (the system's resolver; they may
    /// be on an internal network).
    pub fn new(connect_timeout: Duration, request_timeout: Duration) -> reqwest::Result<Self> {
        Self::build(connect_timeout, request_timeout, None)
    }

    /// A sender for batches' callback URLs: it connects only to addresses `resolver`
    /// checked, found by the connection's own lookup.
    pub fn guarded(
        connect_timeout: Duration,
        request_timeout: Duration,
        resolver: GuardedResolver,
    ) -> reqwest::Result<Self> {
        Self::build(connect_timeout, request_timeout, Some(resolver))
    }

    fn build(
        connect_timeout: Duration,
        request_timeout: Duration,
        resolver: Option<GuardedResolver>,
    ) -> reqwest::Result<Self> {
        let mut builder = reqwest::Client::builder();
        if let Some(resolver) = resolver {
            builder = builder.dns_resolver(std::sync::Arc::new(resolver));
        }
        let client = builder
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(connect_timeout)
            .timeout(request_timeout)
            .user_agent(concat!("mailpipe-webhooks/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()?;
        Ok(Self { client })
    }

    pub async fn send(&self, call: Call<'_>) -> CallResult {
        let signature = match HeaderValue::from_str(&call.signature) {
            Ok(v) => v,
            Err(e) => return CallResult::Failed(format!("signature header: {e}")),
        };
        let request = self
            .client
            .post(call.url)
            .header(CONTENT_TYPE, "application/json")
            .header("webhook-id", call.id)
            .header("webhook-timestamp", call.timestamp.to_string())
            .header("webhook-signature", signature)
            .body(call.body.to_owned());
        match request.send().await {
            // The body is dropped unread: its size and pace are the receiver's.
            Ok(response) => CallResult::Status(response.status().as_u16()),
            Err(e) if e.is_timeout() => CallResult::TimedOut,
            Err(e) => {
                let e = e.without_url();
                let mut text = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    text.push_str(": ");
                    text.push_str(&s.to_string());
                    source = s.source();
                }
                text.truncate(text.floor_char_boundary(500));
                CallResult::Failed(text)
            }
        }
    }
}
