//! `mailpipe-ingest`: `serve` the HTTP API, `submit` a file, ask a batch's `status`, or
//! list and replay `dead` letters.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mailpipe_common::cli::{ConfigArgs, ConfigCheck};
use mailpipe_common::config::ConfigSource;
use mailpipe_common::domain::BatchId;
use mailpipe_ingest::Config;
use mailpipe_ingest::commands::{self, BatchCommand, DeadCommand, JobsArgs, SubmitArgs};
use mailpipe_ingest::status_cli::StatusOptions;
use mailpipe_ingest::suppressions_cli::SuppressCommand;
use mailpipe_ingest::uncertain_cli::UncertainCommand;

const AFTER_HELP: &str = "\
Examples:
  # Serve the API (tokens and limits come from the [ingest] section):
  MAILPIPE_INGEST_TOKEN=s3cret mailpipe-ingest --config mailpipe.toml serve
  curl -H 'Authorization: Bearer s3cret' -H 'Content-Type: application/json' \\
       -d @examples/jobs/invoice.json http://127.0.0.1:8080/v1/jobs
  curl -H 'Authorization: Bearer s3cret' -H 'Content-Type: application/x-ndjson' \\
       --data-binary @examples/jobs/batch.jsonl 'http://127.0.0.1:8080/v1/batches?batch=nov-2026'

  # Submit a file straight to RabbitMQ (JSONL or CSV, by extension):
  mailpipe-ingest --config mailpipe.toml submit examples/jobs/batch.csv --batch nov-2026
  mailpipe-ingest submit invoices.jsonl --partial     # publish the good lines, report the bad
  mailpipe-ingest submit invoices.csv --dry-run       # check and render every line, publish nothing

  # A batch's status from the database (no server, no RabbitMQ needed): counts, per
  # mailbox, failures with their SMTP replies, ETA from the [deliver] pool's limits:
  mailpipe-ingest --config mailpipe.toml status nov-2026
  mailpipe-ingest status nov-2026 --watch          # every 2 s until finished (or Ctrl-C)
  mailpipe-ingest status nov-2026 --json | jq .eta # the same JSON as GET /v1/batches/{id}

  # Batches newest first (state, counts, ETA), filtered by state, time or part of the id:
  mailpipe-ingest --config mailpipe.toml batch list
  mailpipe-ingest batch list --state running --from 2026-11-01T00:00:00Z --search nov --json

  # Stop a batch (a wrong template?), let it go on, or end it for good:
  mailpipe-ingest --config mailpipe.toml batch pause nov-2026
  mailpipe-ingest --config mailpipe.toml batch resume nov-2026
  mailpipe-ingest --config mailpipe.toml batch cancel nov-2026

  # Jobs from the database, by batch, state, recipient or time (a table, CSV or JSON lines):
  mailpipe-ingest --config mailpipe.toml jobs --batch nov-2026 --state failed --csv > failed.csv
  mailpipe-ingest jobs --recipient ann@example.com --since 2026-01-01T00:00:00Z

  # Dead letters: read them (the queue is left intact), then send them back:
  mailpipe-ingest dead list --batch nov-2026
  mailpipe-ingest dead replay --batch nov-2026 --dry-run
  mailpipe-ingest dead replay --id inv-2026-11-000123

  # Sends of unknown outcome (deliver died mid-send, or no reply after the data), held for
  # a decision: look each Message-ID up in the mailbox's Sent Items, then decide:
  mailpipe-ingest --config mailpipe.toml uncertain list
  mailpipe-ingest uncertain resend inv-2026-11-000123      # not in Sent Items: send again
  mailpipe-ingest uncertain mark-sent inv-2026-11-000124   # in Sent Items: it was delivered

  # Outcome webhooks (docs/webhooks.md): a batch whose outcomes are called back, signed:
  mailpipe-ingest --config mailpipe.toml submit examples/jobs/batch.csv --batch nov-2026 \
       --callback-url https://erp.example.com/mailpipe/outcomes
  # What the outbox holds, and a second chance for deliveries that expired:
  mailpipe-ingest --config mailpipe.toml webhooks list
  mailpipe-ingest --config mailpipe.toml webhooks list --state expired --json
  mailpipe-ingest --config mailpipe.toml webhooks retry --all
  # Pending deliveries that must not be called (a retired receiver): dropped, counted:
  mailpipe-ingest --config mailpipe.toml webhooks drop --host erp.example.com --reason \"retired\"
  # The suppression list (hard bounces, RCPT refusals, operators): never sent to again:
  mailpipe-ingest --config mailpipe.toml suppress list --address @example.com
  mailpipe-ingest suppress add ann@example.com --reason \"left the company\"
  mailpipe-ingest suppress list --json
  mailpipe-ingest suppress remove ann@example.com

  # Check the configuration (every error, each naming its key; exit 2 when any):
  mailpipe-ingest --config mailpipe.toml --check-config
  mailpipe-ingest --config mailpipe.toml --check-config --json   # one JSON object: ok, errors, warnings, summary

Exit codes: submit: 0 ok; 1 lines were rejected or ids conflict (or found bad by --dry-run); 2
configuration or input error (a path that is not a regular file too); 3 RabbitMQ or PostgreSQL
failed. status: 0 no failures (finished, or not yet with no --watch); 1 failures; 2 unknown batch,
configuration, or a database schema behind this build (run `migrate`); 3 PostgreSQL failed. jobs: 0
done; 3 PostgreSQL failed. dead: 0 done; 2 configuration; 3 RabbitMQ or PostgreSQL failed.
migrate: 0 done; 3 PostgreSQL failed. batch list: 0 done; 3 PostgreSQL failed. batch: 0 done; 1 the batch is cancelled (final); 2
unknown batch; 3 PostgreSQL failed. uncertain: 0 done; 1 a job had no uncertain send waiting; 3
PostgreSQL failed. webhooks: 0 done; 1 retry ID found nothing to retry; 2 a bad drop --reason;
3 PostgreSQL failed.
suppress: 0 done; 1 remove of an address not listed; 2 a bad reason; 3 PostgreSQL failed.
RabbitMQ failed: a refused login, a missing vhost or an
inequivalent queue (at once), or unreachable for --broker-timeout (30s); PostgreSQL failed:
unreachable for the same time.
See docs/ingest.md for the CSV columns, idempotency, the HTTP API, the ETA and dead letters, and
docs/data.md for what the database holds.";

#[derive(Debug, Parser)]
#[command(name = "mailpipe-ingest", version, about = "Accepts mail jobs (HTTP API or files), validates them, records them in PostgreSQL and publishes them to RabbitMQ; answers what became of them.", after_help = AFTER_HELP)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    /// submit, status, jobs, dead, migrate: give up (exit 3) once RabbitMQ or PostgreSQL
    /// has been unreachable this long, at start or later (`30s`, `2m`, or seconds). A
    /// refused login, a missing vhost or an inequivalent queue exits 3 at once. `serve`
    /// retries until stopped.
    #[arg(long, global = true, default_value = "30s", value_name = "DURATION", value_parser = parse_broker_timeout)]
    broker_timeout: std::time::Duration,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the HTTP API (POST /v1/jobs, POST /v1/batches, GET status) and /metrics.
    Serve,
    /// Import a JSONL (.jsonl/.ndjson) or CSV (.csv) file straight to RabbitMQ.
    Submit(SubmitArgs),
    /// A batch's status from the database: counts, per mailbox, failures, ETA.
    #[command(
        after_help = "Exit codes: 0 no failures (the batch finished, or is still running, without any); 1 some jobs failed or bounced, or were delivered with recipients refused (listed under failures), also while the batch still runs; 2 unknown batch; 3 the database failed."
    )]
    Status {
        /// The batch id.
        #[arg(value_parser = |s: &str| BatchId::parse(s))]
        batch: BatchId,
        /// Print again every 2 s until the batch is finished (or Ctrl-C).
        #[arg(long)]
        watch: bool,
        /// One JSON object (per refresh with --watch), as GET /v1/batches/{id} answers.
        #[arg(long)]
        json: bool,
    },
    /// Pause, resume or cancel a batch (every deliver process honours it within seconds).
    Batch {
        #[command(subcommand)]
        command: BatchCommand,
    },
    /// Jobs by batch, state, recipient or time, from the database (table, --csv, --json).
    Jobs(JobsArgs),
    /// Dead letters: list them, or replay them to the stage they died in.
    Dead {
        #[command(subcommand)]
        command: DeadCommand,
    },
    /// Sends of unknown outcome held for a decision: list, resend, mark-sent.
    Uncertain {
        #[command(subcommand)]
        command: UncertainCommand,
    },
    /// Outcome webhooks: list the outbox's deliveries, retry expired ones, drop pending ones.
    Webhooks {
        #[command(subcommand)]
        command: mailpipe_ingest::webhooks::cli::WebhooksCommand,
    },
    /// The suppression list: list, add, remove addresses never sent to again.
    Suppress {
        #[command(subcommand)]
        command: SuppressCommand,
    },
    /// Apply the database migrations (for operators who set database.migrate_on_start = false).
    Migrate,
}

/// `30s`, `2m` or a number of seconds.
fn parse_broker_timeout(text: &str) -> Result<std::time::Duration, String> {
    let (number, scale) = match text.strip_suffix('m') {
        Some(n) => (n, 60),
        None => (text.strip_suffix('s').unwrap_or(text), 1),
    };
    match number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
    {
        Some(n) if n > 0 => Ok(std::time::Duration::from_secs(n)),
        _ => Err(format!(
            "{text:?} is not a duration: give seconds (`30`, `30s`) or minutes (`2m`), more than 0"
        )),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut check = ConfigCheck::new();
    let config = check
        .check(ConfigSource::load(cli.config.config.as_deref()))
        .and_then(|source| {
            let config = check.check(Config::load(&source));
            if cli.config.check_config {
                // Every secret any command needs; a command resolves the ones it uses.
                check.check(source.check_common_secrets());
            }
            config
        });
    if cli.config.check_config {
        if let Some(config) = &config {
            commands::describe(&mut check, config);
        }
        return check.print(cli.config.json);
    }
    let Some(config) = config.filter(|_| check.is_ok()) else {
        return check.fail();
    };
    let Some(command) = cli.command else {
        eprintln!(
            "nothing to do: give `serve`, `submit FILE`, `status BATCH`, `jobs`, `dead list|replay` or `migrate` (see --help)"
        );
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config, command, cli.broker_timeout))
}

async fn run(config: Config, command: Command, give_up_after: std::time::Duration) -> ExitCode {
    let _telemetry = match mailpipe_common::telemetry::init("mailpipe-ingest", &config.telemetry) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("telemetry: {e}");
            return ExitCode::from(2);
        }
    };
    let shutdown = mailpipe_common::shutdown::on_signals();
    match command {
        Command::Serve => commands::serve(config, shutdown).await,
        Command::Submit(args) => commands::submit(&config, args, shutdown, give_up_after).await,
        Command::Status { batch, watch, json } => {
            let options = StatusOptions { batch, watch, json };
            commands::status(&config, options, shutdown, give_up_after).await
        }
        Command::Jobs(args) => commands::jobs(&config, args, shutdown, give_up_after).await,
        Command::Dead { command } => {
            commands::dead(&config, command, shutdown, give_up_after).await
        }
        Command::Migrate => commands::migrate(&config, shutdown, give_up_after).await,
        Command::Batch { command } => {
            commands::batch(&config, command, shutdown, give_up_after).await
        }
        Command::Uncertain { command } => {
            commands::uncertain(&config, command, shutdown, give_up_after).await
        }
        Command::Webhooks { command } => {
            commands::webhooks(&config, command, shutdown, give_up_after).await
        }
        Command::Suppress { command } => {
            commands::suppress(&config, command, shutdown, give_up_after).await
        }
    }
}
