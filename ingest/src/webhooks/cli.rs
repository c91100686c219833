//! `mailpipe-ingest webhooks`: what the outbox holds (`list`), a second chance for
//! deliveries that expired, were refused with 410 or were dropped (`retry`), and an end
//! to pending ones that must not be called (`drop`).

use std::process::ExitCode;

use mailpipe_common::domain::BatchId;
use mailpipe_common::outln;
use mailpipe_common::store::{DeliveryFilter, DropFilter, Store, StoreError};

/// `webhooks drop --help`'s examples (a test runs them as shown).
pub const DROP_EXAMPLES: &str = "\
Examples:
  # A receiver retired: nothing pending is called there any more.
  mailpipe-ingest --config mailpipe.toml webhooks drop --host erp.example.com --reason \"retired\"
  # One batch's outcomes must not leave:
  mailpipe-ingest --config mailpipe.toml webhooks drop --batch nov-2026 --reason \"sent by mistake\"
  # Everything pending:
  mailpipe-ingest --config mailpipe.toml webhooks drop --all --reason \"incident 42\"";

/// The longest `--reason`.
const MAX_DROP_REASON: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StateArg {
    /// Not acknowledged yet, still tried.
    Pending,
    /// Pending, with at least one failed try.
    Failed,
    /// Tried until `ingest.webhooks.max_age`, never acknowledged.
    Expired,
    /// Not called: the callback URL's host or port left the allow-list.
    Dropped,
    All,
}

#[derive(Debug, clap::Subcommand)]
pub enum WebhooksCommand {
    /// Webhook deliveries, oldest first: id, event type, job or batch, endpoint, state,
    /// tries, last answer.
    List {
        #[arg(long, value_enum, default_value = "pending")]
        state: StateArg,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: i64,
    },
    /// Put expired, 410-refused or dropped deliveries back in the queue, due now, with a fresh
    /// `max_age`: one by its id (from `list`), or `--all`.
    #[command(group = clap::ArgGroup::new("which").required(true).args(["id", "all"]))]
    Retry {
        id: Option<i64>,
        #[arg(long)]
        all: bool,
    },
    /// End pending deliveries `dropped`, never called (until `retry` puts them back): those
    /// to a host, of a batch (both: those to the host of the batch), or `--all`. Prints how
    /// many.
    #[command(
        group = clap::ArgGroup::new("which").required(true).multiple(true).args(["host", "batch", "all"]),
        after_help = DROP_EXAMPLES
    )]
    Drop {
        /// The receiver's host name, as in its URL (any case).
        #[arg(long)]
        host: Option<String>,
        /// The batch whose deliveries to drop.
        #[arg(long, value_parser = |s: &str| BatchId::parse(s))]
        batch: Option<BatchId>,
        /// Every pending delivery.
        #[arg(long, conflicts_with_all = ["host", "batch"])]
        all: bool,
        /// Why (kept with each delivery: `webhooks list --state dropped` shows it).
        #[arg(long)]
        reason: String,
    },
}

/// Exit: 0 done; 1 nothing to retry for that id; 2 a bad `--reason`; 3 PostgreSQL failed.
pub async fn run(
    store: &Store,
    command: WebhooksCommand,
    max_age: std::time::Duration,
) -> ExitCode {
    let result = match command {
        WebhooksCommand::List { state, json, limit } => list(store, state, json, limit).await,
        WebhooksCommand::Retry { id, all: _ } => retry(store, id, max_age).await,
        WebhooksCommand::Drop {
            host,
            batch,
            all: _,
            reason,
        } => {
            let filter = DropFilter {
                host: host.as_deref(),
                batch: batch.as_ref().map(BatchId::as_str),
            };
            drop(store, filter, &reason).await
        }
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("PostgreSQL: {e}");
            ExitCode::from(3)
        }
    }
}

async fn list(store: &Store, state: StateArg, json: bool, limit: i64) -> Result<u8, StoreError> {
    let filter = match state {
        StateArg::Pending => DeliveryFilter::Pending,
        StateArg::Failed => DeliveryFilter::Failed,
        StateArg::Expired => DeliveryFilter::Expired,
        StateArg::Dropped => DeliveryFilter::Dropped,
        StateArg::All => DeliveryFilter::All,
    };
    let rows = store.webhook_deliveries(filter, limit.max(1)).await?;
    if json {
        for r in &rows {
            outln!("{}", serde_json::to_string(r).unwrap_or_default());
        }
        return Ok(0);
    }
    if rows.is_empty() {
        outln!("no webhook deliveries in that state");
        return Ok(0);
    }
    outln!(
        "{:<8} {:<16} {:<28} {:<14} {:<9} {:>5}  LAST ANSWER",
        "ID",
        "TYPE",
        "JOB/BATCH",
        "ENDPOINT",
        "STATE",
        "TRIES"
    );
    for r in &rows {
        let subject = r.job_id.as_deref().or(r.batch_id.as_deref()).unwrap_or("-");
        let last = match (&r.last_status, &r.last_error) {
            (_, Some(e)) => e.clone(),
            (Some(s), None) => s.to_string(),
            (None, None) => "-".into(),
        };
        outln!(
            "{:<8} {:<16} {:<28} {:<14} {:<9} {:>5}  {}",
            r.id,
            r.kind,
            subject,
            r.endpoint,
            r.state,
            r.attempts,
            last
        );
    }
    Ok(0)
}

async fn retry(
    store: &Store,
    id: Option<i64>,
    max_age: std::time::Duration,
) -> Result<u8, StoreError> {
    let n = store.retry_webhooks(id, max_age).await?;
    match id {
        Some(id) if n == 0 => {
            eprintln!(
                "webhook delivery {id}: not expired or refused (see `webhooks list --state all`)"
            );
            Ok(1)
        }
        _ => {
            outln!("{n} webhook deliveries queued again");
            Ok(0)
        }
    }
}

async fn drop(store: &Store, filter: DropFilter<'_>, reason: &str) -> Result<u8, StoreError> {
    let reason = reason.trim();
    if reason.is_empty() || reason.len() > MAX_DROP_REASON || reason.chars().any(char::is_control) {
        eprintln!(
            "--reason: say why in 1 to {MAX_DROP_REASON} characters, without control characters"
        );
        return Ok(2);
    }
    let n = store.drop_webhooks(filter, reason).await?;
    outln!("{n} pending webhook deliveries dropped");
    Ok(0)
}
