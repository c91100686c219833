//! Prometheus metrics of the simulator (`mailpipe_sim_*`), served at /metrics.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Debug)]
pub(crate) struct Metrics {
    pub registry: Registry,
    pub connections_total: IntCounter,
    pub connections_active: IntGauge,
    pub messages_accepted: IntCounterVec,
    pub recipients_accepted: IntCounterVec,
    pub bytes_accepted: IntCounter,
    pub refusals: IntCounterVec,
    pub auth_attempts: IntCounterVec,
    pub tokens_issued: IntCounterVec,
    pub token_errors: IntCounterVec,
    pub faults_injected: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        // A registry per simulator, so several simulators in one test process don't collide.
        let registry = Registry::new();
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let vec =
            |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec, prometheus::Error> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let connections_total = counter(
            "mailpipe_sim_smtp_connections_total",
            "SMTP connections accepted",
        )?;
        let connections_active = IntGauge::new(
            "mailpipe_sim_smtp_connections_active",
            "SMTP connections open now",
        )?;
        registry.register(Box::new(connections_active.clone()))?;
        Ok(Self {
            connections_total,
            connections_active,
            messages_accepted: vec(
                "mailpipe_sim_messages_accepted_total",
                "Messages accepted (250 after DATA)",
                &["mailbox"],
            )?,
            recipients_accepted: vec(
                "mailpipe_sim_recipients_accepted_total",
                "Recipients of accepted messages",
                &["mailbox"],
            )?,
            bytes_accepted: counter(
                "mailpipe_sim_bytes_accepted_total",
                "Bytes of accepted messages",
            )?,
            refusals: vec(
                "mailpipe_sim_refusals_total",
                "4xx/5xx replies and dropped connections",
                &["stage", "code", "enhanced"],
            )?,
            auth_attempts: vec(
                "mailpipe_sim_auth_attempts_total",
                "SMTP AUTH attempts",
                &["mechanism", "result"],
            )?,
            tokens_issued: vec(
                "mailpipe_sim_tokens_issued_total",
                "Access tokens issued",
                &["client_id"],
            )?,
            token_errors: vec(
                "mailpipe_sim_token_errors_total",
                "Token requests refused",
                &["error"],
            )?,
            faults_injected: vec(
                "mailpipe_sim_faults_injected_total",
                "Injected faults",
                &["kind"],
            )?,
            registry,
        })
    }

    pub fn render(&self) -> String {
        let encoder = prometheus::TextEncoder::new();
        encoder
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}
