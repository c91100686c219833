//! The system of record at size: generates N jobs (default 1,000,000; `MAILPIPE_BENCH_JOBS=N`
//! or the first argument) in batches of 100,000, each with its `accepted`, `rendered` and
//! `delivered` (or `failed`) events, in a fresh schema of the test database. Then, through
//! a real ingest `Application` over HTTP: how long ingest takes to start (until `/readyz`
//! answers 200), and the latency (p50, p99, max) of `GET /v1/batches/{id}` for a
//! 100,000-job batch and of `GET /v1/jobs/{id}` for random jobs. Needs RabbitMQ and
//! PostgreSQL, like the tests.
//!
//! `cargo bench -p mailpipe-ingest --bench system_of_record`

use std::time::{Duration, Instant};

use mailpipe_common::config::{SecretRef, TelemetrySettings};
use mailpipe_common::testkit::{TestBroker, drop_schema};
use mailpipe_ingest::{Application, Config, IngestSettings};
use tokio_util::sync::CancellationToken;

const BATCH_JOBS: i64 = 100_000;
const TOKEN: &str = "bench-token-0123456789";

const JOBS: &str = r#"
INSERT INTO jobs (id, batch_id, template, recipients, recipient_count, state, attempt,
                  mailbox, message_id, smtp_code, smtp_enhanced, smtp_text, created_at,
                  accepted_at, updated_at)
SELECT 'job-' || g, 'batch-' || (g / $3), 'invoice',
       ARRAY['customer' || (g % 50000) || '@example.com'], 1,
       CASE WHEN g % 97 = 0 THEN 'failed' ELSE 'delivered' END, 1,
       'sender' || (g % 20) || '@pool.example', '<' || g || '@mailpipe.test>',
       CASE WHEN g % 97 = 0 THEN 550 ELSE 250 END,
       CASE WHEN g % 97 = 0 THEN '5.1.10' ELSE '2.6.0' END,
       CASE WHEN g % 97 = 0 THEN '5.1.10 RESOLVER.ADR.RecipientNotFound' ELSE '2.6.0 Queued mail for delivery' END,
       now() - interval '2 days', now() - interval '2 days',
       now() - (g % 172800) * interval '1 second'
FROM generate_series($1::int8, $2::int8) g
"#;

const EVENTS: &str = r#"
INSERT INTO job_events (job_id, kind, at, mailbox, recipients, event)
SELECT j.id, k.kind, j.updated_at - k.back, CASE WHEN k.kind IN ('delivered', 'failed') THEN j.mailbox END, 1,
       jsonb_build_object('v', 1, 'job_id', j.id, 'batch', j.batch_id, 'kind', k.kind,
                          'recipients', 1, 'attempt', 1, 'at', j.updated_at - k.back)
FROM jobs j
CROSS JOIN LATERAL (VALUES ('accepted', interval '2 minutes'), ('rendered', interval '1 minute'),
                           (j.state, interval '0')) AS k(kind, back)
WHERE j.batch_id = $1
"#;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{what}: n={} p50={:.2} ms p99={:.2} ms max={:.2} ms",
        samples.len(),
        percentile(&samples, 0.5).as_secs_f64() * 1000.0,
        percentile(&samples, 0.99).as_secs_f64() * 1000.0,
        samples
            .last()
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    );
}

#[tokio::main]
async fn main() {
    let n: i64 = std::env::args()
        .nth(1)
        .filter(|a| !a.starts_with('-'))
        .or_else(|| std::env::var("MAILPIPE_BENCH_JOBS").ok())
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let t = TestBroker::start("bench-records").await;
    let db = t.store().pool().clone();

    let started = Instant::now();
    let mut from = 0;
    while from < n {
        let to = (from + BATCH_JOBS).min(n) - 1;
        sqlx::query(JOBS)
            .bind(from)
            .bind(to)
            .bind(BATCH_JOBS)
            .execute(&db)
            .await
            .expect("generate jobs");
        sqlx::query(EVENTS)
            .bind(format!("batch-{}", from / BATCH_JOBS))
            .execute(&db)
            .await
            .expect("generate events");
        from = to + 1;
    }
    sqlx::query("ANALYZE").execute(&db).await.expect("analyze");
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM job_events")
        .fetch_one(&db)
        .await
        .expect("count");
    println!(
        "system_of_record: {n} jobs and {events} events generated in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("token"), TOKEN).expect("token");
    let config = Config {
        rabbitmq: t.settings.clone(),
        telemetry: TelemetrySettings::default(),
        database: t.database.clone(),
        ingest: IngestSettings {
            listen: "127.0.0.1:0".parse().expect("addr"),
            api_tokens: vec![
                SecretRef {
                    env: None,
                    file: Some(dir.path().join("token")),
                }
                .into(),
            ],
            ..IngestSettings::default()
        },
        pool: Err("no pool in this bench".into()),
    };
    let client = reqwest::Client::new();
    let shutdown = CancellationToken::new();
    let start = Instant::now();
    let app = Application::build(config, shutdown.clone())
        .await
        .expect("ingest starts");
    let base = format!("http://127.0.0.1:{}", app.port());
    let server = tokio::spawn(app.run_until_stopped());
    loop {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await
            && r.status() == 200
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "ingest start-up with {n} jobs recorded: {:.0} ms until /readyz answers 200",
        start.elapsed().as_secs_f64() * 1000.0
    );

    let batch = format!("batch-{}", (n / BATCH_JOBS / 2).max(0));
    let mut samples = Vec::new();
    for i in 0..40 {
        let t0 = Instant::now();
        let r = client
            .get(format!("{base}/v1/batches/{batch}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 200);
        let body: serde_json::Value = r.json().await.expect("json");
        if i == 0 {
            println!(
                "GET /v1/batches/{batch}: {} jobs, {} failures",
                body["jobs"], body["failures"]["total"]
            );
        }
        samples.push(t0.elapsed());
    }
    report(
        &format!("GET /v1/batches/{{id}} ({BATCH_JOBS} jobs)"),
        samples,
    );

    let mut samples = Vec::new();
    for i in 0..1000u64 {
        let id = (i * 7919) % n as u64;
        let t0 = Instant::now();
        let r = client
            .get(format!("{base}/v1/jobs/job-{id}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 200);
        r.bytes().await.expect("body");
        samples.push(t0.elapsed());
    }
    report("GET /v1/jobs/{id} (with its events)", samples);

    shutdown.cancel();
    server.await.ok();
    drop_schema(t.store(), &t.database.schema).await;
    t.cleanup().await;
}
