//! `mailpipe-ingest status ID [--watch] [--json]`: a batch's status from the system of
//! record (no HTTP server, no RabbitMQ needed). The report is the API's: same query,
//! same shape.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::time::Duration;

use chrono::Utc;
use mailpipe_common::contract::EventKind;
use mailpipe_common::domain::BatchId;
use mailpipe_common::store::{BatchControl, JobState};
use mailpipe_common::{out, outln};
use tokio_util::sync::CancellationToken;

use crate::records::{BatchReport, Records};

/// How often `--watch` prints.
pub const WATCH_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct StatusOptions {
    pub batch: BatchId,
    pub watch: bool,
    pub json: bool,
}

/// Runs the command; returns the exit code (0 finished or running without failures,
/// 1 with failures, 2 unknown batch, 3 the database failed).
pub async fn run(records: &Records, options: &StatusOptions, stop: &CancellationToken) -> u8 {
    let clear = options.watch && !options.json && std::io::stdout().is_terminal();
    loop {
        let report = match records.batch_report(&options.batch, Utc::now()).await {
            Ok(Some(report)) => report,
            Ok(None) => {
                eprintln!(
                    "unknown batch {}: no job of it in the database (kept for database.retention_days)",
                    options.batch
                );
                return 2;
            }
            Err(e) => {
                eprintln!("PostgreSQL: {e}");
                return 3;
            }
        };
        if options.json {
            outln!("{}", serde_json::to_string(&report).unwrap_or_default());
        } else {
            if clear {
                out!("\x1b[2J\x1b[H");
            }
            out!("{}", render(&report));
        }
        let done = report.finished || !options.watch;
        if done {
            return exit_code(&report);
        }
        tokio::select! {
            _ = stop.cancelled() => return exit_code(&report),
            _ = tokio::time::sleep(WATCH_EVERY) => {}
        }
    }
}

pub fn exit_code(report: &BatchReport) -> u8 {
    if report.failures.total > 0 { 1 } else { 0 }
}

/// The report in words (what `status` prints without `--json`).
pub fn render(r: &BatchReport) -> String {
    let mut out = String::new();
    let c = &r.counts;
    let _ = writeln!(
        out,
        "batch {}{}: {} jobs: {} delivered, {} failed, {}{} to go (accepted {}, rendered {}, retrying {}){}",
        r.batch,
        match r.control {
            BatchControl::Running => "",
            BatchControl::Paused => " (paused)",
            BatchControl::Cancelled => " (cancelled)",
        },
        r.jobs,
        c.get(EventKind::Delivered),
        c.get(EventKind::Failed),
        [
            (EventKind::Bounced, "bounced"),
            (EventKind::Suppressed, "suppressed"),
            (EventKind::Cancelled, "cancelled"),
            (EventKind::Expired, "expired"),
        ]
        .iter()
        .filter(|(k, _)| c.get(*k) > 0)
        .map(|(k, name)| format!("{} {name}, ", c.get(*k)))
        .collect::<String>(),
        r.remaining,
        c.get(EventKind::Accepted),
        c.get(EventKind::Rendered),
        match r.uncertain {
            0 => c.get(EventKind::Retrying).to_string(),
            n => format!("{}, {n} of them uncertain", c.get(EventKind::Retrying)),
        },
        if r.finished { ": finished" } else { "" }
    );
    let _ = writeln!(
        out,
        "  first event {}, last event {}",
        r.first_event_at.to_rfc3339(),
        r.last_event_at.to_rfc3339()
    );
    if !r.per_mailbox.is_empty() {
        let _ = writeln!(out, "delivered per mailbox:");
        let width = r
            .per_mailbox
            .keys()
            .map(|m| m.as_str().len())
            .max()
            .unwrap_or(0);
        for (m, n) in &r.per_mailbox {
            let _ = writeln!(out, "  {:width$}  {}", m.as_str(), n.delivered);
        }
    }
    if r.failures.total > 0 {
        let _ = writeln!(
            out,
            "failures: {} (oldest {} shown)",
            r.failures.total, r.failures.shown
        );
        for f in &r.failures.items {
            let what = match (&f.smtp, &f.reason) {
                (Some(reply), _) => reply.to_string(),
                (None, Some(reason)) => reason.clone(),
                (None, None) => "(no reply recorded)".into(),
            };
            let via = f
                .mailbox
                .as_ref()
                .map(|m| format!(" via {m}"))
                .unwrap_or_default();
            let kind = if f.status == JobState::Failed {
                "failed"
            } else {
                "partly refused"
            };
            let _ = writeln!(
                out,
                "  {}  {kind}{via}, attempt {}: {what}",
                f.job_id, f.attempt
            );
            if let Some(reason) = &f.reason
                && f.smtp.is_some()
            {
                let _ = writeln!(out, "      reason: {reason}");
            }
            for refused in &f.refused_recipients {
                let _ = writeln!(out, "      refused {}: {}", refused.address, refused.reply);
            }
        }
    }
    let e = &r.eta;
    match (e.eta_seconds, e.eta_at) {
        _ if r.finished => {}
        (Some(secs), Some(at)) => {
            let _ = writeln!(out, "ETA: {} (at {})", human(secs), at.to_rfc3339());
            let _ = writeln!(
                out,
                "  {} jobs, {} recipients left; pool {:.2} msg/s ({} at that rate), {} recipients available now, quota wait {}",
                e.jobs_left,
                e.recipients_left,
                e.pool_messages_per_second.unwrap_or_default(),
                human(e.rate_seconds.unwrap_or_default()),
                e.pool_recipients_available.unwrap_or_default(),
                human(e.quota_wait_seconds.unwrap_or_default()),
            );
            if e.other_jobs_left > 0 {
                let _ = writeln!(
                    out,
                    "  {} jobs of other batches share the pool and are not counted",
                    e.other_jobs_left
                );
            }
        }
        _ => {
            let _ = writeln!(
                out,
                "ETA: unknown: {}",
                e.reason.as_deref().unwrap_or("no estimate")
            );
        }
    }
    out
}

/// `3h 05m`, `12m 30s`, `42s`.
pub fn human(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {:02}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(human(0.4), "0s");
        assert_eq!(human(750.0), "12m 30s");
        assert_eq!(human(11_100.0), "3h 05m");
        assert_eq!(human(90_000.0), "1d 01h");
    }
}
