//! `mailpipe-ingest jobs`: the jobs matching a filter, from the system of record, as a
//! table, CSV (the finance team's list) or JSON lines. Pages through the whole answer
//! (1,000 jobs per query), so memory stays flat however many match.

use std::io::Write;

use mailpipe_common::{out, outln};

use crate::records::{JobFilter, JobStatus, MAX_PAGE, Records};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobsFormat {
    Table,
    Csv,
    JsonLines,
}

/// CSV columns, in order.
pub const CSV_COLUMNS: [&str; 14] = [
    "id",
    "batch",
    "state",
    "template",
    "recipients",
    "attempt",
    "mailbox",
    "message_id",
    "smtp_code",
    "smtp_text",
    "reason",
    "accepted_at",
    "updated_at",
    "refused_recipients",
];

fn csv_record(j: &JobStatus) -> [String; 14] {
    let time =
        |t: Option<chrono::DateTime<chrono::Utc>>| t.map(|t| t.to_rfc3339()).unwrap_or_default();
    [
        j.id.to_string(),
        j.batch.as_ref().map(|b| b.to_string()).unwrap_or_default(),
        j.status.to_string(),
        j.template.clone().unwrap_or_default(),
        j.recipient_addresses.join(" "),
        j.attempt.to_string(),
        j.mailbox
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_default(),
        j.message_id.clone().unwrap_or_default(),
        j.smtp
            .as_ref()
            .map(|r| r.code.to_string())
            .unwrap_or_default(),
        j.smtp.as_ref().map(|r| r.text.clone()).unwrap_or_default(),
        j.reason.clone().unwrap_or_default(),
        time(j.accepted_at),
        time(Some(j.updated_at)),
        j.refused_recipients
            .iter()
            .map(|r| format!("{} ({})", r.address, r.reply))
            .collect::<Vec<_>>()
            .join("; "),
    ]
}

/// Prints every job matching `filter` (its `limit` caps the total when not 0); returns
/// the exit code: 0 (even when none match), 3 when the database failed.
pub async fn run(
    records: &Records,
    mut filter: JobFilter,
    max: Option<u64>,
    format: JobsFormat,
) -> u8 {
    let mut csv = csv::Writer::from_writer(Vec::new());
    if format == JobsFormat::Csv {
        let _ = csv.write_record(CSV_COLUMNS);
    }
    let mut printed = 0u64;
    loop {
        filter.limit = match max {
            Some(m) => (m - printed).min(u64::from(MAX_PAGE)) as u32,
            None => MAX_PAGE,
        };
        if filter.limit == 0 {
            break;
        }
        let page = match records.jobs(&filter).await {
            Ok(p) => p,
            Err(e) => {
                eprintln!("PostgreSQL: {e}");
                return 3;
            }
        };
        for job in &page.jobs {
            match format {
                JobsFormat::Csv => {
                    let _ = csv.write_record(csv_record(job));
                }
                JobsFormat::JsonLines => {
                    outln!("{}", serde_json::to_string(job).unwrap_or_default())
                }
                JobsFormat::Table => outln!(
                    "{}  {}  {}  {}{}",
                    job.id,
                    job.batch.as_ref().map(|b| b.as_str()).unwrap_or("-"),
                    job.status,
                    job.updated_at.to_rfc3339(),
                    job.detail
                        .as_ref()
                        .map(|d| format!("  {d}"))
                        .unwrap_or_default()
                ),
            }
        }
        if format == JobsFormat::Csv {
            // Flushed per page: a long export streams.
            if let Ok(bytes) = csv.into_inner() {
                let mut stdout = std::io::stdout().lock();
                if stdout
                    .write_all(&bytes)
                    .and_then(|()| stdout.flush())
                    .is_err()
                {
                    return 0; // stdout closed (`| head`): nothing more to say
                }
            }
            csv = csv::Writer::from_writer(Vec::new());
        }
        printed += page.jobs.len() as u64;
        match page.next_after {
            Some(after) => filter.after = Some(after),
            None => break,
        }
    }
    if format == JobsFormat::Table && printed == 0 {
        out!("");
        eprintln!("no job matches");
    }
    0
}
