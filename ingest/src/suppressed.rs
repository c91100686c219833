//! `ingest.suppressed_recipients`: what a submission to a suppressed address gets. With
//! `drop` (the default) the job is accepted and deliver leaves the address out of the
//! envelope; with `refuse` the job is refused at submission, naming the field and the
//! address (one query per 1,000 jobs).

use mailpipe_common::contract::{FieldError, Job};
use mailpipe_common::domain::EmailAddress;
use mailpipe_common::store::{Store, StoreError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SuppressedPolicy {
    /// Accepted; deliver drops the suppressed recipients (a job left with none ends
    /// `suppressed`).
    #[default]
    Drop,
    /// Refused at submission (422, the field and the address named).
    Refuse,
}

/// For each job, why it is refused (its first suppressed recipient), or `None`.
pub async fn refusals(store: &Store, jobs: &[&Job]) -> Result<Vec<Option<FieldError>>, StoreError> {
    let fields = |j: &'_ Job| -> Vec<(String, EmailAddress)> {
        [("to", &j.to), ("cc", &j.cc), ("bcc", &j.bcc)]
            .into_iter()
            .flat_map(|(name, list)| {
                list.iter()
                    .enumerate()
                    .map(move |(i, m)| (format!("{name}[{i}].address"), m.address.clone()))
            })
            .collect()
    };
    let all: Vec<EmailAddress> = jobs
        .iter()
        .flat_map(|j| fields(j))
        .map(|(_, a)| a)
        .collect();
    let listed = store.suppressed_among(&all).await?;
    if listed.is_empty() {
        return Ok(vec![None; jobs.len()]);
    }
    Ok(jobs
        .iter()
        .map(|j| {
            fields(j).into_iter().find_map(|(field, address)| {
                let s = listed
                    .iter()
                    .find(|s| s.address.eq_ignore_ascii_case(address.as_str()))?;
                Some(FieldError::new(
                    field,
                    format!(
                        "{address} is on the suppression list ({}: {}); ingest.suppressed_recipients = \"refuse\"",
                        s.source.as_str(),
                        s.reason
                    ),
                ))
            })
        })
        .collect())
}
