//! Scrapes the real binaries and checks that every `mailpipe_*` metric named in
//! docs/metrics.md, the Grafana dashboard and the alert rules is exported.
//!
//! Labelled metrics have no series until a label set is used (the `prometheus` crate writes
//! nothing for an empty vec), so the test first drives traffic through every path that
//! creates one: a delivered batch, a refused job, a job render cannot render, a refused token
//! request, an injected 451 (retry), and a blocked tenant (provider refusal).
//! Needs RabbitMQ (deploy/local/ensure-rabbitmq.sh) and the built binaries
//! (`cargo build --workspace --bins`).

#![allow(clippy::unwrap_used)]

use crate::deploy_files;

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context as _, bail};
use mailpipe_sim::FaultsConfig;
use mailpipe_tests::invoices;
use mailpipe_tests::stack::{Binary, Stack, StackOptions};

use deploy_files::names;

/// The metric families and sample names of one scrape.
#[derive(Debug, Default)]
struct Scrape {
    names: BTreeSet<String>,
    text: String,
}

impl Scrape {
    fn parse(text: String) -> Self {
        let mut names = BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line
                .strip_prefix("# TYPE ")
                .or_else(|| line.strip_prefix("# HELP "))
            {
                names.extend(rest.split_whitespace().next().map(str::to_owned));
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                let name = line.split(['{', ' ']).next().unwrap_or_default();
                names.insert(name.to_owned());
                names.insert(names::family(name).to_owned());
            }
        }
        Self { names, text }
    }

    fn has(&self, name: &str) -> bool {
        self.names.contains(name)
    }
}

async fn scrape(http: &reqwest::Client, base: &str) -> anyhow::Result<Scrape> {
    let r = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .with_context(|| format!("GET {base}/metrics"))?;
    let r = r
        .error_for_status()
        .with_context(|| format!("GET {base}/metrics"))?;
    Ok(Scrape::parse(r.text().await?))
}

/// Polls `base`/metrics until `needle` (a name, or a name with labels as written) shows.
async fn wait_for(
    http: &reqwest::Client,
    base: &str,
    needle: &str,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let s = scrape(http, base).await?;
        if s.has(needle) || s.text.contains(needle) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{needle} did not appear on {base}/metrics within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn post_job(stack: &Stack, http: &reqwest::Client, job: &str) -> anyhow::Result<u16> {
    let r = http
        .post(format!("{}/v1/jobs", stack.url(Binary::Ingest)))
        .bearer_auth(&stack.token)
        .header("content-type", "application/json")
        .body(job.to_owned())
        .send()
        .await?;
    Ok(r.status().as_u16())
}

/// One valid invoice job of its own batch.
fn invoice_job(stack: &Stack, batch: &str) -> anyhow::Result<String> {
    let jsonl = invoices::write_batch(&stack.attachments_root(), batch, 1, |_| 1)?;
    Ok(jsonl.lines().next().context("one job")?.to_owned())
}

async fn drive_every_path(stack: &Stack, http: &reqwest::Client) -> anyhow::Result<()> {
    let (ingest, render, deliver) = (
        stack.url(Binary::Ingest),
        stack.url(Binary::Render),
        stack.url(Binary::Deliver),
    );
    let sim = stack.sim.authority();

    // A delivered batch: ingest, render and deliver counters and histograms.
    let jsonl = invoices::write_batch(&stack.attachments_root(), "mon-ok", 3, |_| 1)?;
    let (status, body) = stack.post_batch("mon-ok", jsonl, false).await?;
    assert!(
        (200..300).contains(&status),
        "batch refused: {status} {body}"
    );
    stack
        .wait_batch_done("mon-ok", 3, Duration::from_secs(120))
        .await?;

    // A refused job: mailpipe_ingest_rejections_total.
    let status = post_job(
        stack,
        http,
        r#"{"id":"mon-bad","template":"invoice","to":["not-an-address"]}"#,
    )
    .await?;
    assert!((400..500).contains(&status), "an invalid job got {status}");
    wait_for(
        http,
        &ingest,
        "mailpipe_ingest_rejections_total",
        Duration::from_secs(10),
    )
    .await?;

    // A job render cannot render (no data for the template): ingest renders it first and
    // refuses it; one published past ingest (as when templates change between the two)
    // fails in render: mailpipe_render_failures_total.
    let undefined =
        r#"{"id":"mon-undefined","template":"invoice","to":["x@fabrikam.example"],"data":{}}"#;
    let status = post_job(stack, http, undefined).await?;
    assert_eq!(status, 422, "ingest accepted a job render cannot render");
    let broker = mailpipe_common::amqp::Broker::connect(
        &stack.rabbit,
        "monitoring test",
        tokio_util::sync::CancellationToken::new(),
    )
    .await?;
    let store = mailpipe_common::store::Store::new(
        &stack.database,
        tokio_util::sync::CancellationToken::new(),
    )?;
    let pipeline = mailpipe_common::pipeline::Pipeline::new(
        mailpipe_common::amqp::Publisher::new(broker.clone(), Duration::from_secs(10)),
        store,
    );
    let job = mailpipe_common::contract::Job::from_json(undefined.as_bytes())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    pipeline.send_job(&job).await?.confirmed().await?;
    broker.close().await;
    wait_for(
        http,
        &render,
        "mailpipe_render_failures_total",
        Duration::from_secs(60),
    )
    .await?;

    // A refused token request: mailpipe_sim_token_errors_total.
    let tenant = &stack.mailboxes[0].tenant;
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", "nobody"),
        ("client_secret", "wrong"),
        ("scope", "https://outlook.office365.com/.default"),
    ];
    let r = http
        .post(stack.sim.token_url(tenant))
        .form(&form)
        .send()
        .await?;
    assert!(
        r.status().is_client_error(),
        "a bad token request got {}",
        r.status()
    );

    // An injected 451: a retry (mailpipe_deliver_messages_total{outcome="retry"}) and a fault.
    stack.sim.set_faults(FaultsConfig {
        reply_451_rate: 1.0,
        ..Default::default()
    });
    assert!((200..300).contains(&post_job(stack, http, &invoice_job(stack, "mon-retry")?).await?));
    // deliver's outcome series exist from the start (at 0), so wait for the fault itself.
    wait_for(
        http,
        &sim,
        "mailpipe_sim_faults_injected_total",
        Duration::from_secs(60),
    )
    .await?;
    stack.sim.set_faults(FaultsConfig::default());
    wait_for(
        http,
        &deliver,
        r#"mailpipe_deliver_messages_total{outcome="retry"}"#,
        Duration::from_secs(5),
    )
    .await?;

    // A blocked tenant: mailpipe_deliver_provider_refusals_total.
    stack.sim.set_tenant_blocked(tenant, true);
    assert!(
        (200..300).contains(&post_job(stack, http, &invoice_job(stack, "mon-blocked")?).await?)
    );
    let refused = wait_for(
        http,
        &deliver,
        "mailpipe_deliver_provider_refusals_total",
        Duration::from_secs(60),
    )
    .await;
    stack.sim.set_tenant_blocked(tenant, false);
    refused?;
    // Both held-up jobs go through once the faults are gone.
    stack
        .wait_batch_done("mon-retry", 1, Duration::from_secs(60))
        .await?;
    stack
        .wait_batch_done("mon-blocked", 1, Duration::from_secs(60))
        .await?;
    // Graph is on: the Sent Items gauges, from the first storage read.
    wait_for(
        http,
        &deliver,
        "mailpipe_deliver_mailbox_sent_items_messages",
        Duration::from_secs(30),
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_referenced_mailpipe_metric_is_exported() -> anyhow::Result<()> {
    let referenced = names::referenced_mailpipe_metrics();
    assert!(
        referenced.len() >= 30,
        "docs/metrics.md should list every metric, found {referenced:?}"
    );

    let options = StackOptions {
        name: "monitoring".into(),
        tenants: 1,
        mailboxes_per_tenant: 2,
        // The Graph-side series (Inbox, Sent Items) appear once Graph is read.
        graph_poll_ms: Some(1000),
        ..Default::default()
    };
    let stack = Stack::start(options).await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let driven = drive_every_path(&stack, &http).await;

    let mut scrapes = Vec::new();
    for (what, base) in [
        ("mailpipe-ingest", stack.url(Binary::Ingest)),
        ("mailpipe-render", stack.url(Binary::Render)),
        ("mailpipe-deliver", stack.url(Binary::Deliver)),
        ("mailpipe-sim", stack.sim.authority()),
    ] {
        scrapes.push((what, scrape(&http, &base).await));
    }
    stack.shutdown().await?;
    driven?;

    let mut exported = BTreeSet::new();
    for (what, s) in scrapes {
        let s = s.with_context(|| format!("scraping {what}"))?;
        assert!(
            s.names.iter().any(|n| n.starts_with("mailpipe_")),
            "{what} exports no mailpipe_* metric"
        );
        if what != "mailpipe-sim" {
            // Every stage: which build it is, and the process's own figures.
            let labels = [
                format!("version=\"{}\"", env!("CARGO_PKG_VERSION")),
                format!("binary=\"{what}\""),
            ];
            assert!(
                s.text.lines().any(|l| l.starts_with("mailpipe_build_info{")
                    && l.ends_with("} 1")
                    && labels.iter().all(|x| l.contains(x.as_str()))),
                "{what} lacks mailpipe_build_info{{{}}} 1",
                labels.join(",")
            );
            assert!(
                s.text.lines().any(|l| l == "mailpipe_rabbitmq_connected 1"),
                "{what} does not report mailpipe_rabbitmq_connected 1"
            );
            for name in [
                "process_cpu_seconds_total",
                "process_resident_memory_bytes",
                "process_open_fds",
                "process_max_fds",
                "process_start_time_seconds",
            ] {
                assert!(s.has(name), "{what} does not export {name}");
            }
        }
        exported.extend(s.names);
    }
    let missing: Vec<&String> = referenced
        .iter()
        .filter(|n| !exported.contains(*n))
        .collect();
    assert!(
        missing.is_empty(),
        "named in docs/metrics.md, the dashboard or the alert rules but not exported by any binary: {missing:?}"
    );
    // And the other way round: every exported mailpipe_* family is documented.
    let documented = names::documented();
    let undocumented: Vec<&String> = exported
        .iter()
        .filter(|n| {
            n.starts_with("mailpipe_") && names::family(n) == n.as_str() && !documented.contains(*n)
        })
        .filter(|n| !documented.contains(names::family(n)))
        .collect();
    assert!(
        undocumented.is_empty(),
        "exported but missing from docs/metrics.md: {undocumented:?}"
    );
    Ok(())
}

/// `mailpipe_rabbitmq_connected` is 1 on every binary once it is connected, and 0 on one
/// whose broker cannot be reached (its `/metrics` is served all the same).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_binary_reports_whether_it_is_connected_to_rabbitmq() -> anyhow::Result<()> {
    let options = StackOptions {
        name: "connected-gauge".into(),
        tenants: 1,
        mailboxes_per_tenant: 1,
        ..Default::default()
    };
    let stack = Stack::start(options).await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut connected = Vec::new();
    for b in Binary::ALL {
        connected.push(
            wait_for(
                &http,
                &stack.url(b),
                "mailpipe_rabbitmq_connected 1",
                Duration::from_secs(60),
            )
            .await
            .with_context(|| b.name()),
        );
    }

    // render pointed at a port where no broker listens: served, never connected.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut render =
        tokio::process::Command::new(mailpipe_tests::stack::bin_dir()?.join(Binary::Render.name()))
            .arg("--config")
            .arg(&stack.config_path)
            .env(
                "MAILPIPE_RABBITMQ__URL",
                "amqp://guest:guest@127.0.0.1:1/%2f",
            )
            .env("MAILPIPE_RENDER__HTTP_LISTEN", format!("127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
    let base = format!("http://127.0.0.1:{port}");
    // Until the process listens, the scrape fails: poll, with a wide margin.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let unreachable = loop {
        match scrape(&http, &base).await {
            Ok(s) if s.has("mailpipe_rabbitmq_connected") => break Ok(()),
            _ if tokio::time::Instant::now() > deadline => {
                break Err(anyhow::anyhow!("{base}/metrics never served the gauge"));
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let scraped = scrape(&http, &base).await;
    let ready = http.get(format!("{base}/readyz")).send().await;
    render.kill().await.ok();
    stack.shutdown().await?;

    for c in connected {
        c?;
    }
    unreachable?;
    let scraped = scraped?;
    assert!(
        scraped
            .text
            .lines()
            .any(|l| l == "mailpipe_rabbitmq_connected 0"),
        "{}",
        scraped.text
    );
    let ready = ready?;
    assert_eq!(ready.status().as_u16(), 503);
    assert!(ready.text().await?.contains("RabbitMQ at"));
    Ok(())
}

#[test]
fn scrape_parsing_sees_families_and_samples() {
    let s = Scrape::parse(
        "# HELP a_total x\n# TYPE a_total counter\na_total{k=\"v\"} 1\n# TYPE h histogram\nh_bucket{le=\"1\"} 0\nh_sum 0\nh_count 0\n".into(),
    );
    for n in ["a_total", "h", "h_bucket", "h_sum", "h_count"] {
        assert!(s.has(n), "{n}");
    }
}
