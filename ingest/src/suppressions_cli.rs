//! `mailpipe-ingest suppress`: the suppression list from the command line (the same list
//! as `GET/PUT/DELETE /v1/suppressions`): addresses never sent to again, with why and when.

use std::process::ExitCode;

use mailpipe_common::contract::SuppressionSource;
use mailpipe_common::domain::EmailAddress;
use mailpipe_common::outln;
use mailpipe_common::store::{
    MAX_REASON, MAX_SUPPRESSION_PAGE, NewSuppression, Store, StoreError, SuppressionFilter,
};

#[derive(Debug, clap::Subcommand)]
pub enum SuppressCommand {
    /// The list in address order: address, source, status, when, reason.
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Only addresses containing this (any case): `ann@example.com`, `@example.com`.
        #[arg(long)]
        address: Option<String>,
        /// Only this source: bounce, rcpt_refused, operator.
        #[arg(long, value_parser = |s: &str| SuppressionSource::parse(s).ok_or("one of bounce, rcpt_refused, operator"))]
        source: Option<SuppressionSource>,
        /// At most this many.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=MAX_SUPPRESSION_PAGE as i64))]
        limit: u32,
    },
    /// Never send to ADDRESS again (an operator's entry; replaces the reason if listed).
    Add {
        #[arg(value_parser = |s: &str| EmailAddress::parse(s))]
        address: EmailAddress,
        /// Why, in words (shown with the entry).
        #[arg(long)]
        reason: String,
    },
    /// Send to ADDRESS again.
    Remove {
        #[arg(value_parser = |s: &str| EmailAddress::parse(s))]
        address: EmailAddress,
    },
}

/// Runs one `suppress` command. Exit: 0 done; 1 `remove` of an address not listed;
/// 2 a bad reason; 3 PostgreSQL failed.
pub async fn run(store: &Store, command: SuppressCommand) -> ExitCode {
    let result = match command {
        SuppressCommand::List {
            json,
            address,
            source,
            limit,
        } => {
            let filter = SuppressionFilter {
                address,
                source,
                after: None,
                limit,
            };
            list(store, json, &filter).await
        }
        SuppressCommand::Add { address, reason } => add(store, address, &reason).await,
        SuppressCommand::Remove { address } => remove(store, &address).await,
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("PostgreSQL: {e}");
            ExitCode::from(3)
        }
    }
}

async fn list(store: &Store, json: bool, filter: &SuppressionFilter) -> Result<u8, StoreError> {
    let items = store.list_suppressions(filter).await?;
    if json {
        for s in &items {
            outln!("{}", serde_json::to_string(s).unwrap_or_default());
        }
        return Ok(0);
    }
    if items.is_empty() {
        outln!("no suppressed addresses");
        return Ok(0);
    }
    outln!(
        "{:<36} {:<13} {:<7} {:<20} REASON",
        "ADDRESS",
        "SOURCE",
        "STATUS",
        "SINCE"
    );
    for s in &items {
        outln!(
            "{:<36} {:<13} {:<7} {:<20} {}",
            s.address,
            s.source.as_str(),
            s.status.as_deref().unwrap_or("-"),
            s.created_at.format("%Y-%m-%d %H:%M UTC"),
            s.reason
        );
    }
    Ok(0)
}

async fn add(store: &Store, address: EmailAddress, reason: &str) -> Result<u8, StoreError> {
    let reason = reason.trim();
    if reason.is_empty() || reason.chars().count() > MAX_REASON {
        eprintln!("--reason: 1 to {MAX_REASON} characters");
        return Ok(2);
    }
    let who = std::env::var("USER").ok().map(|u| format!("cli:{u}"));
    let who = who.or_else(|| Some("cli".into()));
    let created = store
        .suppress(&NewSuppression::by_operator(address.clone(), reason, who))
        .await?;
    outln!(
        "{address}: {}",
        if created {
            "suppressed; never sent to again"
        } else {
            "already suppressed; reason replaced"
        }
    );
    Ok(0)
}

async fn remove(store: &Store, address: &EmailAddress) -> Result<u8, StoreError> {
    if store.unsuppress(address).await? {
        outln!("{address}: removed; will be sent to again");
        Ok(0)
    } else {
        eprintln!("{address} is not on the suppression list");
        Ok(1)
    }
}
