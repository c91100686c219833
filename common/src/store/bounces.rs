//! Recording a non-delivery report: once per report (keyed by the mailbox it was read
//! from and its Graph id or Message-ID), bound to the send it reports on or refused
//! (`report_binding`: which reports are trusted), and, when bound, its job moved to
//! `bounced` with a `bounced` event and its hard-bounced recipients suppressed. One
//! transaction, so a crash anywhere leaves either all of it or nothing, and what the trust
//! decision saw is what is written.

use chrono::{DateTime, Utc};
use sqlx::types::Json;

use super::report_binding::{self, Binding};
use super::suppressions::{NewSuppression, suppress_in};
use super::{Store, StoreError};
use crate::contract::{Bounce, BouncedRecipient, DeliveryEvent, EventKind, SuppressionSource};
use crate::domain::{BatchId, EmailAddress, JobId};

/// Longest report key kept (a Graph id is about 150 characters).
const MAX_REPORT_KEY: usize = 512;

/// What recording a report did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BounceRecord {
    /// The job it was bound to (`None`: refused, or it named no permanent failure; nothing
    /// was recorded but the report itself, so it is not looked at again).
    pub job: Option<JobId>,
    /// `false`: this report was handled before; nothing changed now.
    pub newly: bool,
    /// Addresses this report put on the suppression list (not those already there).
    pub suppressed: Vec<EmailAddress>,
    /// Why the report was not trusted (`Some`: it changed nothing and is for a person to
    /// look at), now or when it was handled before.
    pub untrusted: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BounceError {
    #[error("the report key is empty or longer than {MAX_REPORT_KEY} characters")]
    BadKey,
    #[error(transparent)]
    Store(#[from] StoreError),
}

const CLAIM_REPORT: &str = r#"
INSERT INTO handled_reports (mailbox, report_key, outcome) VALUES (lower($1), $2, 'pending')
ON CONFLICT (mailbox, report_key) DO NOTHING
RETURNING true
"#;

const PREVIOUS: &str = r#"
SELECT job_id, outcome, reason FROM handled_reports WHERE mailbox = lower($1) AND report_key = $2
"#;

const EVENT: &str = r#"
INSERT INTO job_events (job_id, kind, at, mailbox, event)
VALUES ($1, 'bounced', $2, $3, $4)
ON CONFLICT (job_id, at, kind) DO NOTHING
"#;

const MOVE: &str = r#"
UPDATE jobs SET state = 'bounced', smtp_code = $3, smtp_enhanced = $4, smtp_text = $5,
                reason = $6, updated_at = $2
WHERE id = $1 AND mailpipe_moves_forward(state, updated_at, 'bounced', $2)
"#;

const SETTLE: &str = r#"
UPDATE handled_reports SET job_id = $3, outcome = $4, reason = $5, handled_at = now()
WHERE mailbox = lower($1) AND report_key = $2
"#;

impl Store {
    /// Records the report `report_key` read from `mailbox` (its Graph id, or its own
    /// Message-ID), once. Only the permanent failures of `bounce` count (a mixed report
    /// may also name delayed or delivered recipients). The report changes something only
    /// when it binds to a send of `mailbox` and names none but that send's recipients
    /// (`report_binding`); otherwise it is recorded `untrusted` with the reason and
    /// nothing else changes. A bound report moves the job to `bounced` and suppresses the
    /// recipients whose status proves the address dead (`DsnStatus::suppresses`).
    pub async fn record_bounce(
        &self,
        mailbox: &EmailAddress,
        report_key: &str,
        bounce: &Bounce,
        at: DateTime<Utc>,
    ) -> Result<BounceRecord, BounceError> {
        if report_key.is_empty() || report_key.chars().count() > MAX_REPORT_KEY {
            return Err(BounceError::BadKey);
        }
        let failed: Vec<&BouncedRecipient> = bounce
            .recipients
            .iter()
            .filter(|r| r.status.is_permanent())
            .collect();
        let mut tx = self.observe("starting a transaction", self.pool.begin().await)?;
        let r = sqlx::query_scalar::<_, bool>(CLAIM_REPORT)
            .bind(mailbox.as_str())
            .bind(report_key)
            .fetch_optional(&mut *tx)
            .await;
        if self.observe("claiming a report", r)?.is_none() {
            let r = sqlx::query_as::<_, (Option<String>, String, Option<String>)>(PREVIOUS)
                .bind(mailbox.as_str())
                .bind(report_key)
                .fetch_one(&mut *tx)
                .await;
            let (job, outcome, reason) = self.observe("reading a handled report", r)?;
            return Ok(BounceRecord {
                job: job.and_then(|j| JobId::parse(&j).ok()),
                newly: false,
                suppressed: Vec::new(),
                untrusted: (outcome == "untrusted").then(|| reason.unwrap_or_default()),
            });
        }
        if failed.is_empty() {
            self.settle(&mut tx, mailbox, report_key, None, "no_failure", None)
                .await?;
            self.observe("committing", tx.commit().await)?;
            return Ok(BounceRecord {
                job: None,
                newly: true,
                suppressed: Vec::new(),
                untrusted: None,
            });
        }
        let addresses: Vec<String> = failed
            .iter()
            .map(|r| r.address.as_str().to_ascii_lowercase())
            .collect();
        let bound = report_binding::bind(&mut tx, mailbox.as_str(), bounce, &addresses).await;
        // Ids in the table were written through `JobId`; one edited by hand that does not
        // parse binds to nothing.
        let bound = match self.observe("binding a report to its send", bound)? {
            Ok(b) => JobId::parse(&b.job_id)
                .map(|job| (job, b))
                .map_err(|_| report_binding::Refusal::NotOurSend),
            Err(refusal) => Err(refusal),
        };
        let (
            job,
            Binding {
                batch, recipients, ..
            },
        ) = match bound {
            Ok(bound) => bound,
            Err(refusal) => {
                let reason = refusal.reason();
                self.settle(
                    &mut tx,
                    mailbox,
                    report_key,
                    None,
                    "untrusted",
                    Some(&reason),
                )
                .await?;
                self.observe("committing", tx.commit().await)?;
                return Ok(BounceRecord {
                    job: None,
                    newly: true,
                    suppressed: Vec::new(),
                    untrusted: Some(reason),
                });
            }
        };
        let job_id = job.as_str().to_owned();
        let mut event = DeliveryEvent::new(
            job.clone(),
            batch.as_deref().and_then(|b| BatchId::parse(b).ok()),
            EventKind::Bounced,
        );
        event.at = at;
        event.mailbox = Some(mailbox.clone());
        event.message_id = bounce.original_message_id.clone();
        event.bounced_recipients = failed.iter().map(|r| (*r).clone()).collect();
        let reason = summary(&failed);
        event.reason = Some(reason.clone());
        let first = failed[0];
        let r = sqlx::query(EVENT)
            .bind(&job_id)
            .bind(at)
            .bind(mailbox.as_str())
            .bind(Json(&event))
            .execute(&mut *tx)
            .await;
        self.observe("recording a bounce", r)?;
        let r = sqlx::query(MOVE)
            .bind(&job_id)
            .bind(at)
            .bind(first.diagnostic.as_deref().and_then(smtp_code))
            .bind(first.status.to_string())
            .bind(first.diagnostic.as_deref().map(smtp_text))
            .bind(&reason)
            .execute(&mut *tx)
            .await;
        self.observe("moving a job to bounced", r)?;
        let mut suppressed = Vec::new();
        for r in failed.iter().filter(|r| r.status.suppresses()) {
            let key = r.address.as_str().to_ascii_lowercase();
            if !recipients.contains(&key) {
                continue;
            }
            let entry = NewSuppression {
                address: r.address.clone(),
                source: SuppressionSource::Bounce,
                reason: match &r.diagnostic {
                    Some(d) => format!("bounced {}: {d}", r.status),
                    None => format!("bounced {}", r.status),
                },
                status: Some(r.status.to_string()),
                job_id: Some(job_id.clone()),
                mailbox: Some(mailbox.as_str().to_owned()),
                created_by: None,
            };
            let added = suppress_in(&mut *tx, &entry).await;
            if self.observe("suppressing a bounced address", added)? == Some(true) {
                suppressed.push(r.address.clone());
            }
        }
        self.settle(&mut tx, mailbox, report_key, Some(&job_id), "bounced", None)
            .await?;
        self.observe("committing", tx.commit().await)?;
        Ok(BounceRecord {
            job: Some(job),
            newly: true,
            suppressed,
            untrusted: None,
        })
    }

    /// Notes what became of a claimed report, inside its transaction.
    async fn settle(
        &self,
        tx: &mut sqlx::PgConnection,
        mailbox: &EmailAddress,
        report_key: &str,
        job: Option<&str>,
        outcome: &str,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        let r = sqlx::query(SETTLE)
            .bind(mailbox.as_str())
            .bind(report_key)
            .bind(job)
            .bind(outcome)
            .bind(reason)
            .execute(tx)
            .await;
        self.observe("settling a report", r).map(|_| ())
    }
}

/// "ann@example.com: 5.1.10 (Remote server returned ...); bob@...: 5.1.1"
fn summary(failed: &[&BouncedRecipient]) -> String {
    let text = failed
        .iter()
        .map(|r| match &r.diagnostic {
            Some(d) => format!("{}: {} ({d})", r.address, r.status),
            None => format!("{}: {}", r.address, r.status),
        })
        .collect::<Vec<_>>()
        .join("; ");
    format!("bounced: {}", super::suppressions::bounded_reason(&text))
}

/// The SMTP reply code inside a diagnostic (`smtp; 550 5.1.1 ...`, `Remote Server
/// returned '550 5.1.10 ...'`): the first three-digit word starting with 4 or 5.
fn smtp_code(diagnostic: &str) -> Option<i32> {
    diagnostic
        .split(|c: char| !c.is_ascii_digit())
        .find(|w| w.len() == 3 && (w.starts_with('4') || w.starts_with('5')))
        .and_then(|w| w.parse().ok())
}

/// A diagnostic as a reply's text: without a leading `smtp;` and reply code (the code has
/// its own column, and a reply's text never repeats it).
fn smtp_text(diagnostic: &str) -> &str {
    let d = diagnostic.trim_start();
    let d = d.strip_prefix("smtp;").unwrap_or(d).trim_start();
    match d.split_once(' ') {
        Some((code, rest)) if code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()) => {
            rest.trim_start()
        }
        _ => d,
    }
}

#[cfg(test)]
mod tests {
    use super::smtp_code;

    #[test]
    fn finds_the_reply_code_in_a_diagnostic() {
        assert_eq!(smtp_code("smtp; 550 5.1.1 no such user"), Some(550));
        assert_eq!(
            smtp_code("Remote Server returned '550 5.1.10 RESOLVER.ADR.RecipientNotFound'"),
            Some(550)
        );
        assert_eq!(smtp_code("no code here 12 1234"), None);
        assert_eq!(
            super::smtp_text("smtp; 550 5.1.1 no such user"),
            "5.1.1 no such user"
        );
        assert_eq!(
            super::smtp_text("Mailbox unavailable"),
            "Mailbox unavailable"
        );
    }
}
