//! `mailpipe-ingest`: `serve` the HTTP API, `submit` a file, ask a batch's `status`, or
//! list and replay `dead` letters.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mailpipe_common::cli::{ConfigArgs, ConfigCheck};
use mailpipe_common::config::{CommonSettings, ConfigSource};
use mailpipe_common::domain::{BatchId, JobId};
use mailpipe_common::{out, outln};
use mailpipe_ingest::dead::{self, DeadFilter};
use mailpipe_ingest::settings::ApiTokens;
use mailpipe_ingest::status_cli::{self, StatusOptions};
use mailpipe_ingest::submit::{self, Display, SubmitOptions};
use mailpipe_ingest::{Application, Config};

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

  # A batch's status from the events stream (no server needed): counts, per mailbox,
  # failures with their SMTP replies, ETA from the [deliver] pool's limits:
  mailpipe-ingest --config mailpipe.toml status nov-2026
  mailpipe-ingest status nov-2026 --watch          # every 2 s until finished (or Ctrl-C)
  mailpipe-ingest status nov-2026 --json | jq .eta # the same JSON as GET /v1/batches/{id}

  # Dead letters: read them (the queue is left intact), then send them back:
  mailpipe-ingest dead list --batch nov-2026
  mailpipe-ingest dead replay --batch nov-2026 --dry-run
  mailpipe-ingest dead replay --id inv-2026-11-000123

  # Check the configuration (every error, each naming its key; exit 2 when any):
  mailpipe-ingest --config mailpipe.toml --check-config
  mailpipe-ingest --config mailpipe.toml --check-config --json   # one JSON object: ok, errors, warnings, summary

Exit codes: submit: 0 ok; 1 lines were rejected (or found bad by --dry-run); 2 configuration or
input error (a path that is not a regular file too); 3 RabbitMQ failed. status: 0 no failures
(finished, or not yet with no --watch); 1 failures; 2 unknown batch or configuration; 3 RabbitMQ
failed. dead: 0 done; 2 configuration; 3 RabbitMQ failed. RabbitMQ failed: a refused login, a
missing vhost or an inequivalent queue (at once), or unreachable for --broker-timeout (30s).
See docs/ingest.md for the CSV columns, idempotency, the HTTP API, the ETA and dead letters.";

#[derive(Debug, Parser)]
#[command(name = "mailpipe-ingest", version, about = "Accepts mail jobs (HTTP API or files), validates them and publishes them to RabbitMQ.", after_help = AFTER_HELP)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    /// submit, status, dead: give up (exit 3) once RabbitMQ has been unreachable this
    /// long, at start or later (`30s`, `2m`, or seconds). A refused login, a missing vhost
    /// or an inequivalent queue exits 3 at once. `serve` retries until stopped.
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
    Submit {
        /// The file; its extension picks the format.
        file: std::path::PathBuf,
        /// Batch id for every job (default: a fresh one, printed in the summary).
        #[arg(long, value_parser = |s: &str| BatchId::parse(s))]
        batch: Option<BatchId>,
        /// Publish the good lines even if some are bad (default: all or nothing).
        #[arg(long)]
        partial: bool,
        /// No progress output.
        #[arg(long, short)]
        quiet: bool,
        /// Check and render every line, publish nothing (no broker needed): exit 0 all
        /// good, 1 bad lines (listed).
        #[arg(long)]
        dry_run: bool,
    },
    /// A batch's status from the events stream: counts, per mailbox, failures, ETA.
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
    /// Dead letters: list them, or replay them to the stage they died in.
    Dead {
        #[command(subcommand)]
        command: DeadCommand,
    },
}

#[derive(Debug, Subcommand)]
enum DeadCommand {
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
            describe(&mut check, config);
        }
        return check.print(cli.config.json);
    }
    let Some(config) = config.filter(|_| check.is_ok()) else {
        return check.fail();
    };
    let Some(command) = cli.command else {
        eprintln!(
            "nothing to do: give `serve`, `submit FILE`, `status BATCH` or `dead list|replay` (see --help)"
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

/// `--check-config`: what the loaded configuration means for each command, and the secrets
/// and templates they would read.
fn describe(check: &mut ConfigCheck, config: &Config) {
    check.common(&CommonSettings {
        rabbitmq: config.rabbitmq.clone(),
        telemetry: config.telemetry.clone(),
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
    if let Some(v) = check.check(mailpipe_ingest::validate::Validator::from_settings(
        &config.ingest,
    )) {
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
            if let Ok(p) = mailpipe_ingest::eta::PoolCapacity::from_settings(pool) {
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
    // Tokens are needed by `serve` only: none configured is a warning here, but a token
    // that is configured and cannot be read is an error.
    if config.ingest.api_tokens.is_empty() {
        check.warn(
            "ingest.api_tokens",
            "no API tokens configured: `serve` will refuse to start (submit, status and dead work without)",
        );
    } else {
        check.check(ApiTokens::resolve(&config.ingest.api_tokens));
    }
}

async fn connect(
    config: &Config,
    name: &str,
    shutdown: tokio_util::sync::CancellationToken,
    give_up_after: std::time::Duration,
) -> Result<mailpipe_common::pipeline::Pipeline, ExitCode> {
    // status and dead read (or replay into) an existing deployment: never declare it.
    let options = mailpipe_common::amqp::ConnectOptions {
        give_up_after: Some(give_up_after),
        passive: true,
    };
    match mailpipe_common::amqp::Broker::connect_with(&config.rabbitmq, name, shutdown, options)
        .await
    {
        Ok(b) => {
            let timeout = std::time::Duration::from_millis(config.rabbitmq.confirm_timeout_ms);
            Ok(mailpipe_common::pipeline::Pipeline::new(
                mailpipe_common::amqp::Publisher::new(b, timeout),
            ))
        }
        Err(e) => {
            eprintln!("RabbitMQ: {e}");
            Err(ExitCode::from(3))
        }
    }
}

async fn dead_command(
    config: &Config,
    command: DeadCommand,
    shutdown: tokio_util::sync::CancellationToken,
    give_up_after: std::time::Duration,
) -> ExitCode {
    let pipeline = match connect(
        config,
        "mailpipe-ingest dead",
        shutdown.clone(),
        give_up_after,
    )
    .await
    {
        Ok(p) => p,
        Err(code) => return code,
    };
    // Which jobs are delivered: from the events stream, as `status` reads it.
    let index = match status_cli::follow_index(&pipeline, config, &shutdown).await {
        Ok(i) => i,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(3);
        }
    };
    let delivered = |id: &JobId| mailpipe_ingest::publish::lock_status(&index).is_delivered(id);
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
        Command::Serve => {
            let app = match Application::build(config, shutdown).await {
                Ok(app) => app,
                Err(mailpipe_ingest::startup::StartError::Config(e)) => {
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
        Command::Status { batch, watch, json } => {
            let pipeline = match connect(
                &config,
                "mailpipe-ingest status",
                shutdown.clone(),
                give_up_after,
            )
            .await
            {
                Ok(p) => p,
                Err(code) => return code,
            };
            let code = status_cli::run(
                &pipeline,
                &config,
                &StatusOptions { batch, watch, json },
                &shutdown,
            )
            .await;
            pipeline.broker().shutdown_token().cancel();
            pipeline.broker().close().await;
            ExitCode::from(code)
        }
        Command::Dead { command } => dead_command(&config, command, shutdown, give_up_after).await,
        Command::Submit {
            file,
            batch,
            partial,
            quiet,
            dry_run,
        } => {
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
            };
            if dry_run {
                let result = submit::dry_run(&config.ingest, &options).await;
                out!("{}", submit::dry_run_summary(&file, &result));
                return match result {
                    Ok(_) => ExitCode::SUCCESS,
                    Err(e) => ExitCode::from(e.exit_code()),
                };
            }
            // The file first: a typo'd name must not wait on the broker.
            if let Err(e) = submit::open_input(&file) {
                eprintln!("{e}");
                return ExitCode::from(e.exit_code());
            }
            let options_broker = mailpipe_common::amqp::ConnectOptions {
                give_up_after: Some(give_up_after),
                passive: false,
            };
            let broker = match mailpipe_common::amqp::Broker::connect_with(
                &config.rabbitmq,
                "mailpipe-ingest submit",
                shutdown,
                options_broker,
            )
            .await
            {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("RabbitMQ: {e}");
                    return ExitCode::from(3);
                }
            };
            let timeout = std::time::Duration::from_millis(config.rabbitmq.confirm_timeout_ms);
            let pipeline = mailpipe_common::pipeline::Pipeline::new(
                mailpipe_common::amqp::Publisher::new(broker.clone(), timeout),
            );
            let result = submit::submit(&pipeline, &config.ingest, &options).await;
            out!("{}", submit::summary(&file, &result));
            broker.close().await;
            match result {
                Ok(report) if report.rejected > 0 => ExitCode::from(1),
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => ExitCode::from(e.exit_code()),
            }
        }
    }
}
