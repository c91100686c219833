//! `mailpipe-ingest`: `serve` the HTTP API, or `submit` a file from the command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mailpipe_common::cli::ConfigArgs;
use mailpipe_common::config::ConfigSource;
use mailpipe_common::domain::BatchId;
use mailpipe_ingest::settings::ApiTokens;
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

  # Check the configuration (exit 2 naming the key when it is wrong):
  mailpipe-ingest --config mailpipe.toml --check-config

Exit codes: 0 ok; 1 lines were rejected; 2 configuration or input error; 3 RabbitMQ failed.
See docs/ingest.md for the CSV columns, idempotency and the HTTP API.";

#[derive(Debug, Parser)]
#[command(name = "mailpipe-ingest", version, about = "Accepts mail jobs (HTTP API or files), validates them and publishes them to RabbitMQ.", after_help = AFTER_HELP)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
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
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match ConfigSource::load(cli.config.config.as_deref()).and_then(|s| Config::load(&s)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.config.check_config {
        return check_config(&config);
    }
    let Some(command) = cli.command else {
        eprintln!("nothing to do: give `serve` or `submit FILE` (see --help)");
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(config, command))
}

fn check_config(config: &Config) -> ExitCode {
    let tokens = ApiTokens::resolve(&config.ingest.api_tokens);
    println!("rabbitmq: prefix {:?}, confirm timeout {} ms", config.rabbitmq.prefix, config.rabbitmq.confirm_timeout_ms);
    println!(
        "ingest: listen {}, {} API token(s), max_request_bytes {}, max_batch_bytes {}, max_in_flight {}",
        config.ingest.listen,
        config.ingest.api_tokens.len(),
        config.ingest.max_request_bytes,
        config.ingest.max_batch_bytes,
        config.ingest.max_in_flight
    );
    println!("ingest.limits: {:?}", config.ingest.limits);
    match tokens {
        Ok(_) => {
            println!("configuration is valid");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("configuration error: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run(config: Config, command: Command) -> ExitCode {
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
        Command::Submit { file, batch, partial, quiet } => {
            let broker = match mailpipe_common::amqp::Broker::connect(&config.rabbitmq, "mailpipe-ingest submit", shutdown).await {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("RabbitMQ: {e}");
                    return ExitCode::from(3);
                }
            };
            let timeout = std::time::Duration::from_millis(config.rabbitmq.confirm_timeout_ms);
            let pipeline = mailpipe_common::pipeline::Pipeline::new(mailpipe_common::amqp::Publisher::new(broker.clone(), timeout));
            let display = if quiet { Display::Quiet } else { Display::for_stderr() };
            let options = SubmitOptions { file: file.clone(), batch, partial, display };
            let result = submit::submit(&pipeline, &config.ingest, &options).await;
            print!("{}", submit::summary(&file, &result));
            broker.close().await;
            match result {
                Ok(report) if report.rejected > 0 => ExitCode::from(1),
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => ExitCode::from(e.exit_code()),
            }
        }
    }
}
