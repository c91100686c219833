//! ingest's Prometheus metrics (default registry, served by `common::service`).

use std::sync::LazyLock;

use prometheus::{
    Gauge, Histogram, HistogramVec, IntCounterVec, IntGauge, register_gauge, register_histogram,
    register_histogram_vec, register_int_counter_vec, register_int_gauge,
};

/// Jobs by outcome: `accepted`, `rejected`, `duplicate`.
pub static JOBS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "mailpipe_ingest_jobs_total",
        "Jobs submitted, by outcome.",
        &["outcome"]
    )
    .expect("metric registers once")
});

/// Refused jobs by the class of the field at fault (bounded: see `validate::reason_class`).
pub static REJECTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "mailpipe_ingest_rejections_total",
        "Problems found in refused jobs, by field class.",
        &["reason"]
    )
    .expect("metric registers once")
});

pub static BATCH_SIZE: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "mailpipe_ingest_batch_size",
        "Lines per batch upload.",
        vec![1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0, 1_000_000.0]
    )
    .expect("metric registers once")
});

pub static CONFIRM_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "mailpipe_ingest_publish_confirm_seconds",
        "Time from publishing a job to the broker's confirm.",
        vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0
        ]
    )
    .expect("metric registers once")
});

pub static HTTP_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "mailpipe_ingest_http_request_duration_seconds",
        "HTTP requests by route template and status.",
        &["route", "status"],
        vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0]
    )
    .expect("metric registers once")
});

/// Webhook calls by endpoint kind (`endpoint`: configured, `callback`: a batch's URL)
/// and result (`success`, `http_error`, `gone`, `timeout`, `connection`).
pub static WEBHOOK_ATTEMPTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "mailpipe_ingest_webhook_attempts_total",
        "Webhook calls made, by endpoint kind and result.",
        &["kind", "result"]
    )
    .expect("metric registers once")
});

/// Webhook deliveries settled, by endpoint kind and outcome (`delivered`, `expired`,
/// `gone`).
pub static WEBHOOK_DELIVERIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "mailpipe_ingest_webhook_deliveries_total",
        "Webhook deliveries settled, by endpoint kind and outcome.",
        &["kind", "outcome"]
    )
    .expect("metric registers once")
});

/// From the event's birth (the outcome's commit) to the receiver's 2xx.
pub static WEBHOOK_LATENCY: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "mailpipe_ingest_webhook_delivery_seconds",
        "Time from an outcome to its webhook's acknowledgement, by endpoint kind.",
        &["kind"],
        vec![
            0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0, 86400.0
        ]
    )
    .expect("metric registers once")
});

pub static WEBHOOK_PENDING: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "mailpipe_ingest_webhook_pending",
        "Webhook deliveries waiting for a 2xx (all ingest processes, from the database)."
    )
    .expect("metric registers once")
});

pub static WEBHOOK_OLDEST_PENDING: LazyLock<Gauge> = LazyLock::new(|| {
    register_gauge!(
        "mailpipe_ingest_webhook_oldest_pending_seconds",
        "Age of the oldest webhook delivery waiting for a 2xx (0 when none)."
    )
    .expect("metric registers once")
});

/// The `kind` label of an outbox endpoint name.
pub fn webhook_kind(endpoint: &str) -> &'static str {
    if endpoint == crate::webhooks::CALLBACK {
        "callback"
    } else {
        "endpoint"
    }
}

pub fn accepted(n: u64) {
    JOBS.with_label_values(&["accepted"]).inc_by(n);
}

pub fn duplicate(n: u64) {
    JOBS.with_label_values(&["duplicate"]).inc_by(n);
}

/// One refused job with its problems.
pub fn rejected(errors: &[mailpipe_common::contract::FieldError], malformed: bool) {
    JOBS.with_label_values(&["rejected"]).inc();
    for e in errors {
        REJECTIONS
            .with_label_values(&[crate::validate::reason_class(&e.field, malformed)])
            .inc();
    }
}

/// Registers every metric now, so /metrics shows them (at zero) from the start.
pub fn register() {
    for outcome in ["accepted", "rejected", "duplicate"] {
        JOBS.with_label_values(&[outcome]);
    }
    LazyLock::force(&REJECTIONS);
    LazyLock::force(&BATCH_SIZE);
    LazyLock::force(&CONFIRM_SECONDS);
    LazyLock::force(&HTTP_SECONDS);
    for kind in ["endpoint", "callback"] {
        for result in ["success", "http_error", "gone", "timeout", "connection"] {
            WEBHOOK_ATTEMPTS.with_label_values(&[kind, result]);
        }
        for outcome in ["delivered", "expired", "gone"] {
            WEBHOOK_DELIVERIES.with_label_values(&[kind, outcome]);
        }
        WEBHOOK_LATENCY.with_label_values(&[kind]);
    }
    LazyLock::force(&WEBHOOK_PENDING);
    LazyLock::force(&WEBHOOK_OLDEST_PENDING);
}
