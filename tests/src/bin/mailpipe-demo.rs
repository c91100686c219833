//! `mailpipe-demo`: the quick start (see deploy/local/demo.sh).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mailpipe_tests::demo::{DemoOptions, render_text, run};

/// Run a sample invoice batch through the whole mailpipe pipeline into the bundled
/// Exchange Online simulator, show progress, print a summary, and stop everything.
/// Needs RabbitMQ on 127.0.0.1:5672 (deploy/local/demo.sh makes sure of it).
#[derive(Debug, Parser)]
#[command(name = "mailpipe-demo", version)]
struct Cli {
    /// How many invoices the sample batch holds.
    #[arg(long, default_value_t = 240)]
    invoices: usize,
    /// Where the run's config, logs, PDFs and delivered .eml files go (replaced each run).
    #[arg(long, default_value = ".demo")]
    dir: PathBuf,
    /// Print the summary as one JSON object on stdout (progress is not shown).
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let opts = DemoOptions {
        invoices: cli.invoices,
        dir: cli.dir,
        json: cli.json,
    };
    match run(opts.clone()).await {
        Ok(summary) => {
            if opts.json {
                println!("{summary}");
            } else {
                println!("{}", render_text(&summary));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mailpipe-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}
