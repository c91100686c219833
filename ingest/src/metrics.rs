//! ingest's Prometheus metrics (default registry, served by `common::service`).

use std::sync::LazyLock;

use prometheus::{
    Histogram, HistogramVec, IntCounterVec, register_histogram, register_histogram_vec,
    register_int_counter_vec,
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
}
