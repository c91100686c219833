//! Prometheus metrics of the render stage, in the default registry (served by
//! `common::service`). One function per outcome updates them together, so counters agree.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{
    Histogram, IntCounterVec, exponential_buckets, register_histogram, register_int_counter_vec,
};

pub static JOBS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "mailpipe_render_jobs_total",
        "Jobs handled, by outcome (rendered, dead, requeued).",
        &["outcome"]
    )
    .expect("metric registers once")
});

pub static FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "mailpipe_render_failures_total",
        "Jobs that could not be rendered, by reason.",
        &["reason"]
    )
    .expect("metric registers once")
});

pub static DURATION: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "mailpipe_render_duration_seconds",
        "Time to render one job (templates, attachments, MIME), excluding publishing.",
        exponential_buckets(10e-6, 2.0, 18).expect("valid buckets")
    )
    .expect("metric registers once")
});

pub static MESSAGE_BYTES: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "mailpipe_render_message_bytes",
        "Size of rendered messages, encoded.",
        exponential_buckets(1024.0, 4.0, 10).expect("valid buckets")
    )
    .expect("metric registers once")
});

/// Makes every series visible at zero from the start.
pub fn init() {
    for outcome in ["rendered", "dead", "requeued"] {
        JOBS.with_label_values(&[outcome]);
    }
    LazyLock::force(&FAILURES);
    LazyLock::force(&DURATION);
    LazyLock::force(&MESSAGE_BYTES);
}

pub fn rendered(took: Duration, bytes: usize) {
    JOBS.with_label_values(&["rendered"]).inc();
    DURATION.observe(took.as_secs_f64());
    MESSAGE_BYTES.observe(bytes as f64);
}

pub fn dead(reason: &str) {
    JOBS.with_label_values(&["dead"]).inc();
    FAILURES.with_label_values(&[reason]).inc();
}

pub fn requeued() {
    JOBS.with_label_values(&["requeued"]).inc();
}
