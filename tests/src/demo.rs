//! The quick start: a sample invoice batch through ingest, render and deliver into the
//! Exchange Online simulator, with progress and a summary. Stops everything cleanly, also
//! on Ctrl-C.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::invoices::write_batch;
use crate::stack::{Binary, Stack, StackOptions};
use mailpipe_common::store::{DatabaseSettings, Store};

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub invoices: usize,
    pub dir: PathBuf,
    pub json: bool,
}

/// The demo's records: schema `demo` of the local `mailpipe` database (what
/// deploy/local/ensure-postgres.sh sets up), or of `$MAILPIPE_DEMO_DATABASE_URL`. Emptied
/// at the start of each run and left afterwards, to be looked at.
async fn demo_database() -> anyhow::Result<DatabaseSettings> {
    let settings = DatabaseSettings {
        url: std::env::var("MAILPIPE_DEMO_DATABASE_URL")
            .unwrap_or_else(|_| DatabaseSettings::default().url),
        schema: "demo".into(),
        ..DatabaseSettings::default()
    };
    let store = Store::new(&settings, tokio_util::sync::CancellationToken::new())?;
    let dropped = sqlx::query("DROP SCHEMA IF EXISTS demo CASCADE")
        .execute(store.pool())
        .await;
    store.close().await;
    dropped.with_context(|| {
        format!(
            "PostgreSQL at {} (start it with deploy/local/ensure-postgres.sh)",
            settings.url
        )
    })?;
    Ok(settings)
}

/// Runs the demo; returns the summary (printed by the caller).
pub async fn run(opts: DemoOptions) -> anyhow::Result<Value> {
    if opts.invoices == 0 {
        bail!("--invoices must be at least 1");
    }
    let _ = std::fs::remove_dir_all(&opts.dir);
    let options = StackOptions {
        name: "demo".into(),
        dir: Some(opts.dir.clone()),
        tenants: 2,
        mailboxes_per_tenant: 3,
        // Exchange's 30 messages per 60 s, scaled to 10 per 10 s so the demo takes a minute.
        messages_per_window: 10,
        message_window_ms: 10_000,
        recipients_per_window: 10_000,
        recipient_window_ms: 86_400_000,
        record_eml: true,
        log_filter: "info".into(),
        database: Some(demo_database().await?),
        ..StackOptions::default()
    };
    say(
        &opts,
        "starting the Exchange Online simulator and mailpipe-ingest, mailpipe-render, mailpipe-deliver...",
    );
    let mut stack = Stack::prepare(options).await?;
    let started = async {
        for b in Binary::ALL {
            stack.start_binary(b).await?;
        }
        anyhow::Ok(())
    };
    let result = tokio::select! {
        r = started => match r {
            Ok(()) => tokio::select! {
                r = drive(&stack, &opts) => r,
                _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted (Ctrl-C)")),
            },
            Err(e) => Err(e),
        },
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted (Ctrl-C)")),
    };
    say(&opts, "stopping everything...");
    stack.shutdown().await.context("stopping the stack")?;
    result
}

fn say(opts: &DemoOptions, line: &str) {
    if !opts.json {
        eprintln!("{line}");
    }
}

async fn drive(stack: &Stack, opts: &DemoOptions) -> anyhow::Result<Value> {
    let batch = format!("demo-{}", chrono::Utc::now().format("%Y%m%d-%H%M%S"));
    let jsonl = write_batch(&stack.attachments_root(), &batch, opts.invoices, |i| {
        if i % 10 == 0 { 3 } else { 1 }
    })?;
    say(
        opts,
        &format!(
            "submitting batch {batch}: {} invoices with PDF attachments (POST /v1/batches)",
            opts.invoices
        ),
    );
    let t0 = Instant::now();
    let (status, body) = stack.post_batch(&batch, jsonl, false).await?;
    if status >= 300 {
        bail!("ingest refused the batch ({status}): {body}");
    }

    let total = opts.invoices as u64;
    let bar = if !opts.json && std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} delivered ({per_sec}, ETA {eta}) {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(bar)
    } else {
        None
    };
    let mut last_line = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(600);
    let final_status = loop {
        let s = stack.batch_status(&batch).await.unwrap_or(Value::Null);
        let c = &s["counts"];
        let delivered = c["delivered"].as_u64().unwrap_or(0);
        let failed = c["failed"].as_u64().unwrap_or(0);
        if let Some(bar) = &bar {
            bar.set_position(delivered + failed);
            bar.set_message(format!("{failed} failed"));
        } else if !opts.json && last_line.elapsed() >= Duration::from_secs(3) {
            eprintln!(
                "  {delivered}/{total} delivered, {failed} failed, {:.0} s",
                t0.elapsed().as_secs_f64()
            );
            last_line = Instant::now();
        }
        if delivered + failed >= total {
            break s;
        }
        if Instant::now() > deadline {
            bail!(
                "the batch did not finish within 10 minutes; logs in {}",
                stack.dir.join("logs").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    if let Some(bar) = bar {
        bar.finish();
    }
    Ok(summary(stack, &batch, &final_status, t0.elapsed()))
}

fn summary(stack: &Stack, batch: &str, status: &Value, elapsed: Duration) -> Value {
    let accepted = stack.sim.accepted();
    let rate = match (
        accepted.iter().map(|m| m.received_at).min(),
        accepted.iter().map(|m| m.received_at).max(),
    ) {
        (Some(first), Some(last)) => {
            let span = (last - first).to_std().unwrap_or_default()
                + Duration::from_millis(stack.options.message_window_ms);
            accepted.len() as f64 / span.as_secs_f64()
        }
        _ => 0.0,
    };
    let mailboxes: Vec<Value> = stack
        .sim
        .mailbox_stats()
        .into_iter()
        .map(|m| {
            json!({
                "mailbox": m.address,
                "sent": m.accepted,
                "recipients": m.recipients_accepted,
                "max_in_one_window": m.max_messages_in_window,
                "window_limit": stack.options.messages_per_window,
                "refused": m.refused,
            })
        })
        .collect();
    let refusals: Vec<Value> = stack
        .sim
        .refusals()
        .into_iter()
        .map(|r| json!({"mailbox": r.mailbox, "code": r.code, "text": r.text}))
        .collect();
    json!({
        "batch": batch,
        "invoices": status["jobs"],
        "counts": status["counts"],
        "failures": status.get("failures").cloned().unwrap_or(Value::Array(vec![])),
        "elapsed_seconds": (elapsed.as_secs_f64() * 10.0).round() / 10.0,
        "pool": {
            "mailboxes": stack.mailboxes.len(),
            "limit_messages_per_second": stack.pool_rate(),
            "achieved_messages_per_second": (rate * 100.0).round() / 100.0,
            "achieved_fraction": if stack.pool_rate() > 0.0 { ((rate / stack.pool_rate()) * 1000.0).round() / 1000.0 } else { 0.0 },
        },
        "per_mailbox": mailboxes,
        "provider_refusals": refusals,
        "inspect": {
            "eml_dir": stack.dir.join("sim/messages").display().to_string(),
            "simulator_api": format!("http://{}/api/messages", stack.sim.http_addr()),
            "logs": stack.dir.join("logs").display().to_string(),
            "config": stack.config_path.display().to_string(),
            // Kept after the demo (schema `demo`, emptied at the next run).
            "records": format!(
                "{} --config {} jobs --batch {batch}",
                crate::stack::bin_dir()
                    .map(|d| d.join("mailpipe-ingest").display().to_string())
                    .unwrap_or_else(|_| "mailpipe-ingest".into()),
                stack.config_path.display()
            ),
        },
        "metrics": {
            "ingest": format!("{}/metrics", stack.url(Binary::Ingest)),
            "render": format!("{}/metrics", stack.url(Binary::Render)),
            "deliver": format!("{}/metrics", stack.url(Binary::Deliver)),
            "simulator": format!("http://{}/metrics", stack.sim.http_addr()),
        },
    })
}

/// The summary for people.
pub fn render_text(s: &Value) -> String {
    let mut out = String::new();
    let c = &s["counts"];
    out.push_str(&format!(
        "\nbatch {}: {} invoices, {} delivered, {} failed in {} s\n",
        s["batch"].as_str().unwrap_or("?"),
        s["invoices"],
        c["delivered"],
        c["failed"],
        s["elapsed_seconds"]
    ));
    let p = &s["pool"];
    out.push_str(&format!(
        "pool: {} mailboxes, limit {} msg/s; achieved {} msg/s ({:.1}% of the limit)\n",
        p["mailboxes"],
        p["limit_messages_per_second"],
        p["achieved_messages_per_second"],
        p["achieved_fraction"].as_f64().unwrap_or(0.0) * 100.0
    ));
    out.push_str("per mailbox (sent, most in one window / limit):\n");
    for m in s["per_mailbox"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {:<28} {:>5} sent  {:>3}/{} per window  {} refused\n",
            m["mailbox"].as_str().unwrap_or("?"),
            m["sent"],
            m["max_in_one_window"],
            m["window_limit"],
            m["refused"]
        ));
    }
    let refusals = s["provider_refusals"].as_array().map(Vec::len).unwrap_or(0);
    out.push_str(&format!("provider refusals: {refusals}\n"));
    match s["failures"].as_array() {
        Some(f) if !f.is_empty() => {
            out.push_str("failures:\n");
            for x in f {
                out.push_str(&format!("  {x}\n"));
            }
        }
        _ => out.push_str("failures: none\n"),
    }
    let i = &s["inspect"];
    out.push_str(&format!(
        "delivered messages: {} (.eml), {}\n",
        i["eml_dir"].as_str().unwrap_or(""),
        i["simulator_api"].as_str().unwrap_or("")
    ));
    out.push_str(&format!(
        "logs: {}   config: {}\n",
        i["logs"].as_str().unwrap_or(""),
        i["config"].as_str().unwrap_or("")
    ));
    out.push_str(&format!(
        "records (PostgreSQL, schema demo): {}\n",
        i["records"].as_str().unwrap_or("")
    ));
    let m = &s["metrics"];
    out.push_str(&format!(
        "metrics (while running): {} {} {} {}\n",
        m["ingest"].as_str().unwrap_or(""),
        m["render"].as_str().unwrap_or(""),
        m["deliver"].as_str().unwrap_or(""),
        m["simulator"].as_str().unwrap_or("")
    ));
    out
}
