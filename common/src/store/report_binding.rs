//! The trust decision for a non-delivery report: does it bind to a send this mailbox made,
//! and may it touch the recipients it names (docs/deliver.md, "Which reports are trusted").
//!
//! Anyone who can mail a pool mailbox can write a report, and every recipient of an
//! invoice knows its Message-ID. So a report counts only when
//! - it names the original by a link its writer is believed for: the returned original or
//!   the delivery-status fields from anyone, `In-Reply-To` or a quoted copy only from the
//!   tenant's own Exchange ([`ReportOrigin::Tenant`]);
//! - that Message-ID is a send of *this* mailbox (`sends`), which gives the job;
//! - every permanently failed recipient it names is one of that job's recipients;
//! - a report from outside the tenant does not come from one of those recipients (a
//!   recipient never reports on another).
//!
//! The lookup is one statement inside `record_bounce`'s transaction, and locks the job it
//! binds to: what it decides is what the same transaction writes.

use crate::contract::{Bounce, OriginalLink, ReportOrigin};

/// Recipients named in a refusal's reason (the rest are counted).
const NAMED_IN_REASON: usize = 5;

/// The send a report binds to. `strangers` are the failed addresses (lower-cased) the job
/// was not sent to: a binding with any is refused.
const BIND: &str = r#"
SELECT j.id, j.batch_id, j.recipients,
       ARRAY(SELECT a FROM unnest($3::text[]) AS a WHERE NOT (a = ANY (j.recipients))) AS strangers
FROM sends s JOIN jobs j ON j.id = s.job_id
WHERE s.message_id = $2 AND lower(s.mailbox) = lower($1)
  AND s.outcome IS DISTINCT FROM 'not_counted'
ORDER BY s.started_at DESC
LIMIT 1
FOR UPDATE OF j
"#;

/// A report bound to one of our sends.
#[derive(Debug)]
pub(super) struct Binding {
    pub job_id: String,
    pub batch: Option<String>,
    /// The job's recipients, lower-cased.
    pub recipients: Vec<String>,
}

/// Why a report may change nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Refusal {
    /// It names no Message-ID of an original at all.
    NoOriginal,
    /// It names the original only in a way its writer is not believed for.
    WeakLink(OriginalLink),
    /// No send of this mailbox has that Message-ID.
    NotOurSend,
    /// It names recipients the send did not go to.
    Strangers(Vec<String>),
    /// It comes from a recipient of the original, from outside the tenant.
    FromARecipient,
}

impl Refusal {
    /// The reason kept with the report (`handled_reports.reason`) for the person who reads
    /// the untrusted folder.
    pub fn reason(&self) -> String {
        match self {
            Refusal::NoOriginal => "names no Message-ID of the original message".into(),
            Refusal::WeakLink(link) => format!(
                "names the original only by {}, which only the tenant's own Exchange is believed for",
                match link {
                    OriginalLink::InReplyTo => "In-Reply-To",
                    OriginalLink::QuotedText => "a quoted Message-ID line",
                    OriginalLink::Attached | OriginalLink::StatusField => "its attachment",
                }
            ),
            Refusal::NotOurSend => "its original's Message-ID is not a send of this mailbox".into(),
            Refusal::Strangers(addresses) => {
                let named = addresses
                    .iter()
                    .take(NAMED_IN_REASON)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ");
                let more = addresses.len().saturating_sub(NAMED_IN_REASON);
                if more > 0 {
                    format!("names recipients the send did not go to: {named} and {more} more")
                } else {
                    format!("names recipients the send did not go to: {named}")
                }
            }
            Refusal::FromARecipient => {
                "comes from a recipient of the original, not from a mail system".into()
            }
        }
    }
}

/// The Message-ID a report may be bound by, given who wrote it.
fn believed_original(bounce: &Bounce) -> Result<&str, Refusal> {
    let id = bounce
        .original_message_id
        .as_deref()
        .ok_or(Refusal::NoOriginal)?;
    let origin = bounce.provenance.origin;
    match bounce.provenance.link {
        Some(OriginalLink::Attached | OriginalLink::StatusField) => Ok(id),
        Some(link @ (OriginalLink::InReplyTo | OriginalLink::QuotedText)) => {
            if origin == ReportOrigin::Tenant {
                Ok(id)
            } else {
                Err(Refusal::WeakLink(link))
            }
        }
        // A report made without provenance (an older caller) is believed for nothing.
        None => Err(Refusal::WeakLink(OriginalLink::InReplyTo)),
    }
}

/// Binds `bounce` (read from `mailbox`, whose permanently failed recipients are `failed`,
/// lower-cased) to a send, or says why not. Runs on `tx`, locking the job.
pub(super) async fn bind(
    tx: &mut sqlx::PgConnection,
    mailbox: &str,
    bounce: &Bounce,
    failed: &[String],
) -> Result<Result<Binding, Refusal>, sqlx::Error> {
    let id = match believed_original(bounce) {
        Ok(id) => id,
        Err(refusal) => return Ok(Err(refusal)),
    };
    let row = sqlx::query_as::<_, (String, Option<String>, Vec<String>, Vec<String>)>(BIND)
        .bind(mailbox)
        .bind(id)
        .bind(failed)
        .fetch_optional(&mut *tx)
        .await?;
    let Some((job_id, batch, recipients, strangers)) = row else {
        return Ok(Err(Refusal::NotOurSend));
    };
    if !strangers.is_empty() {
        return Ok(Err(Refusal::Strangers(strangers)));
    }
    let from_a_recipient = bounce
        .provenance
        .from
        .as_ref()
        .is_some_and(|f| recipients.contains(&f.as_str().to_ascii_lowercase()));
    if from_a_recipient && bounce.provenance.origin != ReportOrigin::Tenant {
        return Ok(Err(Refusal::FromARecipient));
    }
    Ok(Ok(Binding {
        job_id,
        batch,
        recipients,
    }))
}
