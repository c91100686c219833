//! Rendering the invoice example (HTML + text + a 50 KB PDF) without the broker: the CPU
//! cost per message render adds to the pipeline. Criterion reports `thrpt` in elem/s,
//! one element being one message, i.e. messages per second on one core.

#[path = "../tests/suite/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn render_invoice(c: &mut Criterion) {
    let renderer = support::example_renderer();
    let pdf = support::pdf::sample_pdf(50 * 1024);
    let job = support::invoice_job("bench-1", &pdf);
    let size = renderer.render(&job).expect("renders").mime.len();

    let mut group = c.benchmark_group("render");
    group.throughput(Throughput::Elements(1));
    group.bench_function("invoice_html_text_50k_pdf", |b| {
        b.iter(|| renderer.render(black_box(&job)).expect("renders"))
    });
    group.finish();

    // A plain summary line in messages per second, next to criterion's statistics.
    let n = 2_000;
    let started = Instant::now();
    for _ in 0..n {
        black_box(renderer.render(black_box(&job)).expect("renders"));
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "render/invoice_html_text_50k_pdf: {:.0} messages/s on one thread ({:.1} µs per message, {} bytes each)",
        n as f64 / secs,
        secs / n as f64 * 1e6,
        size
    );
}

criterion_group!(benches, render_invoice);
criterion_main!(benches);
