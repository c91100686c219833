//! `mailpipe-ingest batch list`: batches newest first, from the system of record, as a
//! table or JSON lines (each line as `GET /v1/batches` answers a batch).

use chrono::{DateTime, Utc};
use mailpipe_common::outln;
use mailpipe_common::store::StoreError;

use crate::records::{BatchCursor, BatchFilter, BatchState, MAX_BATCH_PAGE, Records};

/// `batch list`: which batches, and how they are shown.
#[derive(Debug, Clone, clap::Args)]
pub struct BatchListArgs {
    /// Only batches in this state: running, paused, cancelled or done.
    #[arg(long)]
    pub state: Option<BatchState>,
    /// Only batches first seen at or after this time (RFC 3339: 2026-11-30T00:00:00Z).
    #[arg(long)]
    pub from: Option<DateTime<Utc>>,
    /// Only batches first seen before this time (RFC 3339).
    #[arg(long)]
    pub to: Option<DateTime<Utc>>,
    /// Only batches whose id contains this text (any case).
    #[arg(long)]
    pub search: Option<String>,
    /// At most this many (1 to 100); the last line says how to ask for the next page.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=MAX_BATCH_PAGE as i64))]
    pub limit: u32,
    /// Start after this batch: the `--cursor` the previous page printed.
    #[arg(long)]
    pub cursor: Option<BatchCursor>,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

/// Prints one page. Exit: 0 done; 3 PostgreSQL failed.
pub async fn run(records: &Records, args: BatchListArgs) -> u8 {
    let filter = BatchFilter {
        state: args.state,
        created_from: args.from,
        created_to: args.to,
        text: args.search.filter(|s| !s.is_empty()),
        owner: None,
        cursor: args.cursor,
        limit: args.limit,
    };
    match print(records, &filter, args.json).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("PostgreSQL: {e}");
            3
        }
    }
}

async fn print(records: &Records, filter: &BatchFilter, json: bool) -> Result<(), StoreError> {
    let page = records.batches(filter, Utc::now()).await?;
    if json {
        for b in &page.batches {
            outln!("{}", serde_json::to_string(b).unwrap_or_default());
        }
        return Ok(());
    }
    if page.batches.is_empty() {
        outln!("no batches match");
        return Ok(());
    }
    outln!(
        "{:<24} {:<10} {:>8} {:>9} {:>9} {:>7} {:>9}  CREATED",
        "BATCH",
        "STATE",
        "JOBS",
        "DELIVERED",
        "REMAINING",
        "FAILED",
        "ETA"
    );
    for b in &page.batches {
        let eta = match b.eta.eta_seconds {
            Some(s) if b.remaining > 0 => format!("{:.0}s", s.ceil()),
            _ => "-".into(),
        };
        outln!(
            "{:<24} {:<10} {:>8} {:>9} {:>9} {:>7} {:>9}  {}",
            b.batch,
            b.state.as_str(),
            b.jobs,
            b.counts
                .get(mailpipe_common::contract::EventKind::Delivered),
            b.remaining,
            b.failures,
            eta,
            b.created_at.format("%Y-%m-%d %H:%M:%S UTC")
        );
    }
    if let Some(next) = &page.next_cursor {
        outln!("more: add --cursor {next}");
    }
    Ok(())
}
