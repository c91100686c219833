//! `mailpipe-ingest uncertain`: the sends whose outcome is unknown (no reply after the
//! data, or their deliver process died mid-send), held under the pool's `hold` policy
//! until an operator decides: `resend` (the recipient may get it twice) or `mark-sent`
//! (it was delivered; never sent again). docs/deliver.md, "Uncertain sends".

use std::process::ExitCode;

use mailpipe_common::domain::JobId;
use mailpipe_common::outln;
use mailpipe_common::store::{Resolution, Store, StoreError};

#[derive(Debug, clap::Subcommand)]
pub enum UncertainCommand {
    /// Uncertain sends waiting for a decision, oldest first: job, batch, mailbox,
    /// Message-ID (look it up in the mailbox's Sent Items), when.
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: i64,
    },
    /// Send these jobs again (deliver picks them up within seconds). The recipient may
    /// get a message twice: use it when the Message-ID is not in the Sent Items.
    Resend {
        #[arg(required = true, value_parser = |s: &str| JobId::parse(s))]
        jobs: Vec<JobId>,
    },
    /// These jobs were delivered (their Message-ID is in the Sent Items): recorded
    /// `delivered`, never sent again.
    MarkSent {
        #[arg(required = true, value_parser = |s: &str| JobId::parse(s))]
        jobs: Vec<JobId>,
    },
}

/// Runs one `uncertain` command. Exit: 0 done; 1 some job had no uncertain send
/// waiting; 3 PostgreSQL failed.
pub async fn run(store: &Store, command: UncertainCommand) -> ExitCode {
    let result = match command {
        UncertainCommand::List { json, limit } => list(store, json, limit).await,
        UncertainCommand::Resend { jobs } => decide(store, &jobs, Resolution::Resend).await,
        UncertainCommand::MarkSent { jobs } => decide(store, &jobs, Resolution::MarkedSent).await,
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("PostgreSQL: {e}");
            ExitCode::from(3)
        }
    }
}

async fn list(store: &Store, json: bool, limit: i64) -> Result<u8, StoreError> {
    let sends = store.uncertain_sends(limit.max(1)).await?;
    if json {
        for s in &sends {
            outln!("{}", serde_json::to_string(s).unwrap_or_default());
        }
        return Ok(0);
    }
    if sends.is_empty() {
        outln!("no uncertain sends waiting for a decision");
        return Ok(0);
    }
    outln!(
        "{:<28} {:<16} {:<30} {:<25} MESSAGE-ID",
        "JOB",
        "BATCH",
        "MAILBOX",
        "STARTED"
    );
    for s in &sends {
        outln!(
            "{:<28} {:<16} {:<30} {:<25} {}",
            s.job_id,
            s.batch.as_deref().unwrap_or("-"),
            s.mailbox,
            s.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
            s.message_id
        );
    }
    outln!(
        "{} uncertain; decide with: mailpipe-ingest uncertain resend JOB... | mark-sent JOB...",
        sends.len()
    );
    Ok(0)
}

async fn decide(store: &Store, jobs: &[JobId], resolution: Resolution) -> Result<u8, StoreError> {
    let mut code = 0;
    for job in jobs {
        let why = "marked sent by an operator after an uncertain send";
        if !store.settle_uncertain(job, resolution, why, None).await? {
            eprintln!("{job}: no uncertain send waiting for a decision");
            code = 1;
            continue;
        }
        outln!(
            "{job}: {}",
            match resolution {
                Resolution::Resend => "will be sent again",
                Resolution::MarkedSent => "recorded delivered; never sent again",
            }
        );
    }
    Ok(code)
}
