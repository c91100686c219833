//! What each `mailpipe-ingest` command does, once `main.rs` parsed the command line and
//! loaded the configuration. Each returns the process's exit code (see `--help`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use mailpipe_common::amqp::{Broker, ConnectOptions, Publisher};
use mailpipe_common::cli::ConfigCheck;
use mailpipe_common::config::CommonSettings;
use mailpipe_common::domain::{BatchId, JobId};
use mailpipe_common::pipeline::Pipeline;
use mailpipe_common::store::{BatchControl, JobState, Store, StoreError};
use mailpipe_common::{out, outln};
use tokio_util::sync::CancellationToken;

use crate::Application;
use crate::dead::{self, DeadFilter};
use crate::jobs_cli::{self, JobsFormat};
use crate::records::JobFilter;
use crate::settings::Config;
use crate::startup::records;
use crate::status_cli::{self, StatusOptions};
use crate::submit::{self, Display, SubmitOptions};
use crate::tokens::ApiTokens;

#[derive(Debug, Subcommand)]
pub enum DeadCommand {
    /// Show each dead letter (job, batch, stage, reason, SMTP reply); the queue is left intact.
    List {
        /// Only this batch's.
        #[arg(long, value_parser = |s: &str| BatchId::parse(s))]
        batch: Option<BatchId>,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Republish matching dead letters to their stage (acked after the broker confirmed).
    #[command(group = clap::ArgGroup::new("which").required(true).args(["batch", "id", "all"]))]
    Replay {
        /// This batch's dead letters.
        #[arg(long, value_parser = |s: &str| BatchId::parse(s))]
        batch: Option<BatchId>,
        /// This job's dead letter(s).
        #[arg(long, value_parser = |s: &str| JobId::parse(s))]
        id: Option<JobId>,
        /// Every dead letter.
        #[arg(long, conflicts_with_all = ["batch", "id"])]
        all: bool,
        /// Say what would be replayed; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum BatchCommand {
    /// Batches newest first, with their state, counts and ETA (filter by state, time, id).
    List(crate::batch_list_cli::BatchListArgs),
    /// No further job of the batch is sent (sends under way finish); other batches go on.
    Pause {
        #[arg(value_parser = |s: &str| BatchId::parse(s))]
        batch: BatchId,
    },
    /// Send the rest of a paused batch (within the retry ladder's first delay).
    Resume {
        #[arg(value_parser = |s: &str| BatchId::parse(s))]
        batch: BatchId,
    },
    /// Every job of the batch not sent yet ends `cancelled`, never sent. Final.
    Cancel {
        #[arg(value_parser = |s: &str| BatchId::parse(s))]
        batch: BatchId,
    },
}

/// `submit`: the file and how to import it.
#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// The file; its extension picks the format.
    pub file: PathBuf,
    /// Batch id for every job (default: a fresh one, printed in the summary).
    #[arg(long, value_parser = |s: &str| BatchId::parse(s))]
    pub batch: Option<BatchId>,
    /// Publish the good lines even if some are bad or conflict (default: all or nothing).
    #[arg(long)]
    pub partial: bool,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
    /// Check and render every line, publish nothing (no broker or database needed): exit
    /// 0 all good, 1 bad lines (listed).
    #[arg(long)]
    pub dry_run: bool,
    /// Call this URL with every outcome of the batch's jobs and its completion (signed
    /// with ingest.webhooks.callback_secret; its host must be in allowed_callback_hosts).
    #[arg(long, value_name = "URL")]
    pub callback_url: Option<String>,
}

/// `jobs`: which jobs to list and how.
#[derive(Debug, clap::Args)]
pub struct JobsArgs {
    /// Only this batch's.
    #[arg(long, value_parser = |s: &str| BatchId::parse(s))]
    pub batch: Option<BatchId>,
    /// Only jobs in this state: accepted, rendered, retrying, delivered or failed.
    #[arg(long)]
    pub state: Option<JobState>,
    /// Only jobs sent to this address (To, Cc or Bcc; any case).
    #[arg(long)]
    pub recipient: Option<mailpipe_common::domain::EmailAddress>,
    /// Only jobs changed at or after this time (RFC 3339: 2026-11-30T00:00:00Z).
    #[arg(long)]
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// At most this many jobs.
    #[arg(long)]
    pub limit: Option<u64>,
    /// CSV with a header line (id, batch, state, template, recipients, attempt, mailbox,
    /// message_id, smtp_code, smtp_text, reason, accepted_at, updated_at, refused_recipients).
    #[arg(long, conflicts_with = "json")]
    pub csv: bool,
    /// One JSON object per line (as GET /v1/jobs answers each job).
    #[arg(long)]
    pub json: bool,
}

/// The store for a command: reachable within `give_up_after` and its schema current
/// (exit 3 when the database cannot be reached, 2 when the schema is behind).
pub async fn open_store(
    config: &Config,
    shutdown: CancellationToken,
    give_up_after: Duration,
) -> Result<Store, ExitCode> {
    let store = Store::new(&config.database, shutdown).map_err(|e| {
        eprintln!("configuration error: {e}");
        ExitCode::from(2)
    })?;
    match store.prepare(Some(give_up_after)).await {
        Ok(()) => Ok(store),
        Err(e @ StoreError::SchemaBehind { .. }) => {
            eprintln!("PostgreSQL: {e}");
            Err(ExitCode::from(2))
        }
        Err(e) => {
            eprintln!("PostgreSQL: {e}");
            Err(ExitCode::from(3))
        }
    }
}

/// A pipeline on a broker reached within `give_up_after` (exit 3 otherwise). `passive`:
/// only check that the deployment exists, never declare it.
async fn connect_broker(
    config: &Config,
    name: &str,
    shutdown: CancellationToken,
    give_up_after: Duration,
    passive: bool,
    store: Store,
) -> Result<Pipeline, ExitCode> {
    let options = ConnectOptions {
        give_up_after: Some(give_up_after),
        passive,
    };
    match Broker::connect_with(&config.rabbitmq, name, shutdown, options).await {
        Ok(b) => {
            let timeout = Duration::from_millis(config.rabbitmq.confirm_timeout_ms);
            Ok(Pipeline::new(Publisher::new(b, timeout), store))
        }
        Err(e) => {
            eprintln!("RabbitMQ: {e}");
            Err(ExitCode::from(3))
        }
    }
}

/// `serve`.
pub async fn serve(config: Config, shutdown: CancellationToken) -> ExitCode {
    let app = match Application::build(config, shutdown).await {
        Ok(app) => app,
        Err(crate::startup::StartError::Config(e)) => {
            eprintln!("configuration error: {e}");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match app.run_until_stopped().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("server failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `migrate`: applies the schema's migrations and says where it stands.
pub async fn migrate(
    config: &Config,
    shutdown: CancellationToken,
    give_up_after: Duration,
) -> ExitCode {
    let mut database = config.database.clone();
    database.migrate_on_start = true;
    let store = match Store::new(&database, shutdown) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    match store.prepare(Some(give_up_after)).await {
        Ok(()) => {
            let latest = mailpipe_common::store::MIGRATOR
                .iter()
                .map(|m| m.version)
                .max()
                .unwrap_or(0);
            outln!(
                "schema {:?} is current (migration {latest})",
                config.database.schema
            );
            store.close().await;
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("PostgreSQL: {e}");
            ExitCode::from(3)
        }
    }
}

/// `status BATCH`.
pub async fn status(
    config: &Config,
    options: StatusOptions,
    shutdown: CancellationToken,
    give_up_after: Duration,
) -> ExitCode {
    let store = match open_store(config, shutdown.clone(), give_up_after).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let code = status_cli::run(&records(config, store.clone()), &options, &shutdown).await;
    store.close().await;
    ExitCode::from(code)
}

/// `batch list`: exit 0 done, 3 the database failed. `batch pause|resume|cancel ID`: exit
/// 0 done, 1 a cancelled batch cannot be resumed or paused, 2 unknown batch, 3 the
/// database failed.
pub async fn batch(
    config: &Config,
    command: BatchCommand,
    shutdown: CancellationToken,
    give_up_after: Duration,
) -> ExitCode {
    let (batch, to) = match command {
        BatchCommand::List(args) => {
            let store = match open_store(config, shutdown, give_up_after).await {
                Ok(s) => s,
                Err(code) => return code,
            };
            let code = crate::batch_list_cli::run(&records(config, store.clone()), args).await;
            store.close().await;
            return ExitCode::from(code);
        }
        BatchCommand::Pause { batch } => (batch, BatchControl::Paused),
        BatchCommand::Resume { batch } => (batch, BatchControl::Running),
        BatchCommand::Cancel { batch } => (batch, BatchControl::Cancelled),
    };
    let store = match open_store(config, shutdown.clone(), give_up_after).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let code = match store.set_batch_control(batch.as_str(), to).await {
        Ok(None) => {
            eprintln!("unknown batch {batch}: no job of it in the database");
            2
        }
        Ok(Some((now, _))) if now != to => {
            eprintln!("batch {batch} is cancelled: it cannot be {}", to.as_str());
            1
        }
        Ok(Some((now, cancelled))) => {
            let what = match now {
                BatchControl::Running => "resumed".to_owned(),
                BatchControl::Paused => "paused".to_owned(),
                BatchControl::Cancelled => format!("cancelled ({cancelled} unsent jobs cancelled)"),
            };
            outln!("batch {batch}: {what}");
            let options = StatusOptions {
                batch,
                watch: false,
                json: false,
            };
            // The report as it stands now; its failures do not make this command fail.
            status_cli::run(&records(config, store.clone()), &options, &shutdown).await;
            0
        }
        Err(e) => {
            eprintln!("PostgreSQL: {e}");
            3
        }
    };
    store.close().await;
    ExitCode::from(code)
}

/// `uncertain`.
pub async fn uncertain(
    config: &Config,
    command: crate::uncertain_cli::UncertainCommand,
    shutdown: CancellationToken,
    give_up_after: Duration,
) -> ExitCode {
    with_store(config, shutdown, give_up_after, async |store| {
        crate::uncertain_cli::run(store, command).await
    })
    .await
}

/// `webhooks list|retry`.
pub async fn webhooks(
    config: &Config,
    command: crate::webhooks::cli::WebhooksCommand,
    shutdown: CancellationToken,
    give_up_after: Duration,
) -> ExitCode {
    let max_age = config.ingest.webhooks.max_age();
    with_store(config, shutdown, give_up_after, async |store| {
        crate::webhooks::cli::run(store, command, max_age).await
    })
    .await
}

/// `suppress`.
pub async fn suppress(
    config: &Config,
    command: crate::suppressions_cli::SuppressCommand,
    shutdown: CancellationToken,
    give_up_after: Duration,
) -> ExitCode {
    with_store(config, shutdown, give_up_after, async |store| {
        crate::suppressions_cli::run(store, command).await
    })
    .await
}

/// Runs a command that needs only the database: opens it, runs, closes it.
async fn with_store(
    config: &Config,
    shutdown: CancellationToken,
    give_up_after: Duration,
    command: impl AsyncFnOnce(&Store) -> ExitCode,
) -> ExitCode {
    let store = match open_store(config, shutdown, give_up_after).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let code = command(&store).await;
    store.close().await;
    code
}

/// `jobs`.
pub async fn jobs(
    config: &Config,
    args: JobsArgs,
    shutdown: CancellationToken,
    give_up_after: Duration,
) -> ExitCode {
    let store = match open_store(config, shutdown, give_up_after).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let filter = JobFilter {
        batch: args.batch,
        state: args.state,
        recipient: args.recipient,
        since: args.since,
        after: None,
        limit: 0,
        owner: None,
    };
    let format = match (args.csv, args.json) {
        (true, _) => JobsFormat::Csv,
        (_, true) => JobsFormat::JsonLines,
        _ => JobsFormat::Table,
    };
    let code = jobs_cli::run(&records(config, store.clone()), filter, args.limit, format).await;
    store.close().await;
    ExitCode::from(code)
}

/// `submit FILE`.
pub async fn submit(
    config: &Config,
    args: SubmitArgs,
    shutdown: CancellationToken,
    give_up_after: Duration,
) -> ExitCode {
    let SubmitArgs {
        file,
        batch,
        partial,
        quiet,
        dry_run,
        callback_url,
    } = args;
    let webhooks = &config.ingest.webhooks;
    let callback_url = match &callback_url {
        None => None,
        Some(_) if !webhooks.callbacks_enabled() => {
            eprintln!(
                "--callback-url: callbacks are not enabled here (ingest.webhooks.callback_secret and allowed_callback_hosts)"
            );
            return ExitCode::from(2);
        }
        Some(url) => {
            let lookup = crate::webhooks::address_guard::SystemLookup;
            match webhooks.policy().check_and_resolve(url, &lookup).await {
                Ok(url) => Some(String::from(url)),
                Err(why) => {
                    eprintln!("--callback-url: {why}");
                    return ExitCode::from(2);
                }
            }
        }
    };
    // A callback needs the batch's id before the import: one is made when none was given.
    let batch = match (&callback_url, batch) {
        (Some(_), None) if !dry_run => Some(crate::batch::new_batch_id()),
        (_, batch) => batch,
    };
    let display = if quiet {
        Display::Quiet
    } else {
        Display::for_stderr()
    };
    let options = SubmitOptions {
        file: file.clone(),
        batch,
        partial,
        display,
        callback_url,
    };
    if dry_run {
        let result = submit::dry_run(&config.ingest, &options).await;
        out!("{}", submit::dry_run_summary(&file, &result));
        return match result {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => ExitCode::from(e.exit_code()),
        };
    }
    // The file first: a typo'd name must not wait on the broker or the database.
    if let Err(e) = submit::open_input(&file) {
        eprintln!("{e}");
        return ExitCode::from(e.exit_code());
    }
    let store = match open_store(config, shutdown.clone(), give_up_after).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let pipeline = match connect_broker(
        config,
        "mailpipe-ingest submit",
        shutdown,
        give_up_after,
        false,
        store.clone(),
    )
    .await
    {
        Ok(p) => p,
        Err(code) => return code,
    };
    let result = submit::submit(&pipeline, &config.ingest, &options).await;
    out!("{}", submit::summary(&file, &result));
    pipeline.broker().close().await;
    store.close().await;
    match result {
        Ok(report) if report.rejected > 0 || report.conflicts > 0 => ExitCode::from(1),
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => ExitCode::from(e.exit_code()),
    }
}

/// `--check-config`: what the loaded configuration means for each command, and the secrets
/// and templates they would read.
pub fn describe(check: &mut ConfigCheck, config: &Config) {
    check.common(&CommonSettings {
        rabbitmq: config.rabbitmq.clone(),
        telemetry: config.telemetry.clone(),
        database: config.database.clone(),
    });
    check.section("ingest", &config.ingest);
    check.line(format!(
        "ingest: listen {}, {} API token(s), max_request_bytes {}, max_batch_bytes {}, max_in_flight {}",
        config.ingest.listen,
        config.ingest.api_tokens.len(),
        config.ingest.max_request_bytes,
        config.ingest.max_batch_bytes,
        config.ingest.max_in_flight
    ));
    check.line(format!("ingest.limits: {:?}", config.ingest.limits));
    if let Some(v) = check.check(crate::validate::Validator::from_settings(&config.ingest)) {
        match v.templates() {
            Some(t) => check.line(format!(
                "templates: {} loaded ({}); every job is rendered before it is accepted",
                t.len(),
                t.names().collect::<Vec<_>>().join(", ")
            )),
            None => check.warn(
                "ingest.templates_dir",
                "unset: jobs are not rendered before they are accepted",
            ),
        }
    }
    match &config.pool {
        Ok(pool) => {
            if let Ok(p) = crate::eta::PoolCapacity::from_settings(pool) {
                check.line(format!(
                    "pool (from [deliver], for batch ETAs): {} mailboxes, {:.2} messages/s, {} recipients per window",
                    p.mailboxes.len(),
                    p.messages_per_second(),
                    p.recipients_per_window()
                ));
            }
        }
        Err(why) => check.warn("deliver", format!("batch ETAs will be null: {why}")),
    }
    let webhooks = &config.ingest.webhooks;
    check.line(format!(
        "webhooks: {} endpoint(s) ({}); callback URLs {}; tried for {}",
        webhooks.endpoints.len(),
        webhooks
            .endpoints
            .iter()
            .map(|e| e.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        if webhooks.callbacks_enabled() {
            format!("allowed to {}", webhooks.allowed_callback_hosts.join(", "))
        } else {
            "refused (no callback_secret or allowed_callback_hosts)".to_owned()
        },
        webhooks.max_age
    ));
    check.check(crate::webhooks::Webhooks::resolve(webhooks));
    // Tokens are needed by `serve` only: none configured is a warning here, but a token
    // that is configured and cannot be read is an error.
    if config.ingest.api_tokens.is_empty() {
        check.warn(
            "ingest.api_tokens",
            "no API tokens configured: `serve` will refuse to start (submit, status, jobs and dead work without)",
        );
    } else {
        check.check(ApiTokens::resolve(&config.ingest.api_tokens));
        for (key, message) in crate::tokens::legacy_warnings(&config.ingest.api_tokens) {
            check.warn(key, message);
        }
    }
}

/// `dead list|replay`.
pub async fn dead(
    config: &Config,
    command: DeadCommand,
    shutdown: CancellationToken,
    give_up_after: Duration,
) -> ExitCode {
    let store = match open_store(config, shutdown.clone(), give_up_after).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    // Which jobs are delivered (their dead letters are left alone), from the record.
    let delivered_ids = match records(config, store.clone())
        .delivered_with_dead_letters()
        .await
    {
        Ok(ids) => ids,
        Err(e) => {
            eprintln!("PostgreSQL: {e}");
            return ExitCode::from(3);
        }
    };
    let delivered = |id: &JobId| delivered_ids.contains(id.as_str());
    // dead lists and replays into an existing deployment: never declare it.
    let pipeline = match connect_broker(
        config,
        "mailpipe-ingest dead",
        shutdown,
        give_up_after,
        true,
        store,
    )
    .await
    {
        Ok(p) => p,
        Err(code) => return code,
    };
    let code = match command {
        DeadCommand::List { batch, json } => {
            let filter = DeadFilter { batch, job: None };
            match dead::list(pipeline.broker(), &filter, delivered).await {
                Ok(listing) => {
                    if json {
                        outln!("{}", serde_json::to_string(&listing).unwrap_or_default());
                    } else {
                        out!("{}", dead_listing_text(&listing));
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("dead letters: {e}");
                    ExitCode::from(3)
                }
            }
        }
        DeadCommand::Replay {
            batch,
            id,
            all: _,
            dry_run,
            json,
        } => {
            let filter = DeadFilter { batch, job: id };
            match dead::replay(&pipeline, &filter, dry_run, delivered).await {
                Ok(report) => {
                    if json {
                        outln!("{}", serde_json::to_string(&report).unwrap_or_default());
                    } else {
                        let verb = if dry_run { "would replay" } else { "replayed" };
                        outln!(
                            "{}: {} dead letters, {} matching; {verb} {}, left {}",
                            report.queue,
                            report.total,
                            report.matched,
                            report.replayed.len(),
                            report.skipped.len()
                        );
                        for r in &report.replayed {
                            outln!(
                                "  {verb} {} -> {}",
                                r.job_id.as_deref().unwrap_or("?"),
                                r.stage
                            );
                        }
                        for s in &report.skipped {
                            outln!("  left {}: {}", s.job_id.as_deref().unwrap_or("?"), s.why);
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("dead letters: {e}");
                    ExitCode::from(3)
                }
            }
        }
    };
    pipeline.broker().shutdown_token().cancel();
    pipeline.broker().close().await;
    pipeline.store().close().await;
    code
}

fn dead_listing_text(l: &dead::Listing) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "{}: {} dead letters, {} listed\n",
        l.queue, l.total, l.matched
    );
    for d in &l.dead_letters {
        let _ = writeln!(
            out,
            "  {}  batch {}  stage {}{}",
            d.job_id.as_deref().unwrap_or("?"),
            d.batch.as_deref().unwrap_or("-"),
            d.stage.as_deref().unwrap_or("?"),
            if d.delivered { "  (job delivered)" } else { "" }
        );
        let from = d.reason_from.map(|f| format!(" ({f})")).unwrap_or_default();
        let _ = writeln!(
            out,
            "      reason{from}: {}",
            d.reason.as_deref().unwrap_or("(none given)")
        );
        if let Some(reply) = &d.smtp {
            let _ = writeln!(out, "      last reply: {reply}");
        }
    }
    out
}
