//! The suppression list at send time: recipients on it are dropped from the envelope
//! right before a send (read with the job's check before the send), and a recipient the server refuses at
//! RCPT with a status that proves the address dead goes on it (`rcpt_refused`).

use mailpipe_common::contract::{RenderedMeta, SmtpReply, SuppressedRecipient, SuppressionSource};
use mailpipe_common::domain::{DsnStatus, EmailAddress};
use mailpipe_common::store::{NewSuppression, Store, StoreError};

use crate::metrics;

/// Whom a message may still go to.
#[derive(Debug)]
pub enum Screened {
    /// Nobody on it is suppressed: sent as it is.
    Unchanged(RenderedMeta),
    /// Some were dropped (noted on the job); the rest are sent to.
    Reduced(RenderedMeta, Vec<SuppressedRecipient>),
    /// Every recipient is suppressed: it is never sent.
    Nobody(RenderedMeta, Vec<SuppressedRecipient>),
}

/// Drops the suppressed recipients of `meta` from its envelope (reads the list).
pub async fn screen(store: &Store, meta: RenderedMeta) -> Result<Screened, StoreError> {
    let listed: Vec<SuppressedRecipient> = store
        .suppressed_among(&meta.recipients)
        .await?
        .into_iter()
        .filter_map(|s| {
            Some(SuppressedRecipient {
                address: EmailAddress::parse(&s.address).ok()?,
                source: s.source,
                reason: s.reason,
            })
        })
        .collect();
    screen_against(store, meta, &listed).await
}

/// Drops from the envelope of `meta` the recipients `listed` (read with the job's check
/// before the send, in the same statement); notes them on the job when some are left.
pub async fn screen_against(
    store: &Store,
    meta: RenderedMeta,
    listed: &[SuppressedRecipient],
) -> Result<Screened, StoreError> {
    if listed.is_empty() {
        return Ok(Screened::Unchanged(meta));
    }
    let mut kept = meta.clone();
    let mut dropped = Vec::new();
    kept.recipients.retain(|r| {
        let Some(s) = listed
            .iter()
            .find(|s| s.address.as_str().eq_ignore_ascii_case(r.as_str()))
        else {
            return true;
        };
        dropped.push(SuppressedRecipient {
            address: r.clone(),
            source: s.source,
            reason: s.reason.clone(),
        });
        false
    });
    if dropped.is_empty() {
        return Ok(Screened::Unchanged(meta));
    }
    metrics::SUPPRESSED_RECIPIENTS.inc_by(dropped.len() as u64);
    tracing::info!(job = %meta.job_id, dropped = dropped.len(), left = kept.recipients.len(), "suppressed recipients dropped from the envelope");
    if kept.recipients.is_empty() {
        return Ok(Screened::Nobody(meta, dropped));
    }
    store
        .record_dropped_recipients(&meta.job_id, &dropped)
        .await?;
    Ok(Screened::Reduced(kept, dropped))
}

/// Puts on the list the recipients the server refused at RCPT with a status that proves
/// the address dead (`DsnStatus::suppresses`: 5.1.x address failures, 5.2.1, 5.4.1). A
/// failure to write is logged, never fails the send's record.
pub async fn note_refusals(
    store: &Store,
    meta: &RenderedMeta,
    mailbox: &EmailAddress,
    refused: &[(EmailAddress, SmtpReply)],
) {
    for (address, reply) in refused {
        let Some(status) = reply
            .enhanced
            .as_deref()
            .and_then(|e| DsnStatus::parse(e).ok())
            .filter(|s| s.suppresses())
        else {
            continue;
        };
        let entry = NewSuppression {
            address: address.clone(),
            source: SuppressionSource::RcptRefused,
            reason: format!("refused at RCPT: {reply}"),
            status: Some(status.to_string()),
            job_id: Some(meta.job_id.as_str().to_owned()),
            mailbox: Some(mailbox.as_str().to_owned()),
            created_by: None,
        };
        match store.suppress(&entry).await {
            Ok(true) => {
                tracing::info!(job = %meta.job_id, %address, %status, "suppressed: refused at RCPT")
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(job = %meta.job_id, %address, error = %e, "could not add a refused recipient to the suppression list")
            }
        }
    }
}
