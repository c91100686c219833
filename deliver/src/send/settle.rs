//! Where a message ends: delivered (the send's outcome and the job's event in one
//! statement), uncertain, in the retry ladder, in dead letters, or recorded unsent.

use super::*;
use crate::send::drill::{self, CrashPoint};

/// How a message is put in the retry ladder to wait (see `DeliverStage::park_for`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Park {
    NotBefore,
    Around,
}

impl DeliverStage {
    /// Records `event` (the database, then the events stream) and waits for the confirm.
    async fn record(&self, event: &DeliveryEvent) -> Result<(), PublishError> {
        self.pipeline.record_event(event).await?.confirmed().await
    }

    fn event(&self, meta: &RenderedMeta, kind: EventKind, mailbox: Option<usize>) -> DeliveryEvent {
        let mut e = DeliveryEvent::new(meta.job_id.clone(), meta.batch.clone(), kind);
        e.attempt = meta.attempt;
        e.message_id = Some(meta.message_id.clone());
        if let Some(m) = mailbox.and_then(|i| self.pool.mailboxes().get(i)) {
            e.mailbox = Some(m.address.clone());
            e.tenant = Some(m.tenant_id.clone());
        }
        e
    }

    pub(super) async fn delivered(
        &self,
        meta: &RenderedMeta,
        mime: &[u8],
        idx: usize,
        report: SendReport,
        send: SentRecord,
    ) -> Result<DeliveryOutcome, PublishError> {
        let m = &self.pool.mailboxes()[idx];
        let mut event = self.event(meta, EventKind::Delivered, Some(idx));
        event.recipients = report.accepted.len() as u32;
        event.external_recipients = self.pool.external_count_for(m.tenant, &report.accepted) as u32;
        event.smtp = Some(report.reply.clone());
        event.refused_recipients = refusals(&report);
        let outcome = SendOutcome::Accepted {
            recipients: event.recipients,
            external: event.external_recipients,
        };
        drill::reached(CrashPoint::AfterReply);
        // Remember before recording: if recording fails and the message comes back, it is
        // not sent again (only the record is written).
        self.delivered
            .insert_pending(send.id, outcome, event.clone());
        self.pipeline
            .record_outcome(send.id, outcome, &event)
            .await?
            .confirmed()
            .await?;
        drill::reached(CrashPoint::AfterOutcome);
        self.delivered.mark_recorded(&meta.job_id);
        if !report.refused.is_empty() {
            // The refused recipients go to dead letters once, with their replies; a replay
            // of that dead letter addresses only them.
            let mut refused_meta = meta.clone();
            refused_meta.recipients = report.refused.iter().map(|(a, _)| a.clone()).collect();
            let reason = report
                .refused
                .iter()
                .map(|(a, r)| format!("{a}: {r}"))
                .collect::<Vec<_>>()
                .join("; ");
            let dead_props = rendered_properties(&refused_meta);
            self.pipeline
                .dead_letter(
                    Stage::Deliver,
                    mime,
                    &dead_props,
                    &format!("recipients refused: {reason}"),
                )
                .await?
                .confirmed()
                .await?;
        }
        metrics::MESSAGES.with_label_values(&["delivered"]).inc();
        tracing::info!(job = %meta.job_id, mailbox = %m.address, recipients = event.recipients, "delivered");
        Ok(DeliveryOutcome::Delivered {
            mailbox: m.address.to_string(),
        })
    }

    /// A send of unknown outcome: counted in the windows (done by `attempt`), recorded as
    /// an `uncertain` retry, and held back until the server could no longer accept it.
    pub(super) async fn uncertain(
        &self,
        meta: &RenderedMeta,
        props: &BasicProperties,
        mime: &[u8],
        idx: usize,
        reply: SmtpReply,
        send: SentRecord,
    ) -> Result<DeliveryOutcome, PublishError> {
        // Held for an operator (`hold`), or until the server surely let it go (`resend`).
        let (until, then) = match self.uncertain_policy {
            UncertainPolicy::Hold => (
                Utc::now() + PAUSED_RECHECK,
                "it is held until an operator decides (mailpipe-ingest uncertain)".to_owned(),
            ),
            UncertainPolicy::Resend => {
                let until = Utc::now() + self.uncertain_hold;
                (until, format!("it is sent again after {until}"))
            }
        };
        let mut next = meta.clone();
        next.attempt = meta.attempt + 1;
        let m = &self.pool.mailboxes()[idx];
        let mut event = self.event(&next, EventKind::Retrying, Some(idx));
        event.uncertain = true;
        // Every recipient, as the server may have counted them all (the ledger replays this).
        event.recipients = meta.recipients.len() as u32;
        event.external_recipients = self.pool.external_count_for(m.tenant, &meta.recipients) as u32;
        event.reason = Some(format!(
            "uncertain: no reply after the message data ({}); the server may have accepted it, so {then}",
            reply.text
        ));
        event.smtp = Some(reply);
        event.retry_at = Some(until);
        // On record before anything else, with the send's close: a restart must keep the
        // hold and the quota used.
        self.pipeline
            .record_outcome(send.id, SendOutcome::Uncertain, &event)
            .await?
            .confirmed()
            .await?;
        metrics::MESSAGES.with_label_values(&["uncertain"]).inc();
        if self.uncertain_policy == UncertainPolicy::Resend && next.attempt >= self.max_attempts {
            let reason = format!(
                "gave up after {} attempts; the last send is uncertain (it may have been accepted)",
                next.attempt
            );
            let reply = event.smtp.clone();
            return self
                .dead(meta, props, mime, &reason, reply, Some(idx), vec![])
                .await;
        }
        if !self.park(&next, mime, until).await? {
            let reason = "uncertain send and no retry ladder configured to hold it back";
            let reply = event.smtp.clone();
            return self
                .dead(meta, props, mime, reason, reply, Some(idx), vec![])
                .await;
        }
        Ok(DeliveryOutcome::Uncertain { until })
    }

    /// A job the record says not to send (now).
    pub(super) async fn not_sent(
        &self,
        meta: &RenderedMeta,
        mime: &[u8],
        verdict: Verdict,
    ) -> Result<DeliveryOutcome, PublishError> {
        match verdict {
            Verdict::Send | Verdict::Duplicate => {
                metrics::MESSAGES.with_label_values(&["duplicate"]).inc();
                Ok(DeliveryOutcome::AlreadyDelivered)
            }
            Verdict::AcceptedBefore(accepted) => {
                let mut event = self.event(meta, EventKind::Delivered, None);
                event.mailbox = EmailAddress::parse(&accepted.mailbox).ok();
                event.tenant = event
                    .mailbox
                    .as_ref()
                    .and_then(|a| self.pool.index_of(a))
                    .map(|i| self.pool.mailboxes()[i].tenant_id.clone());
                event.recipients = accepted.recipients;
                event.external_recipients = accepted.external_recipients;
                event.reason = Some(format!(
                    "recorded from its send accepted through {} at {}; not sent again",
                    accepted.mailbox,
                    accepted.at.map(|t| t.to_rfc3339()).unwrap_or_default()
                ));
                self.record(&event).await?;
                metrics::MESSAGES.with_label_values(&["duplicate"]).inc();
                tracing::info!(job = %meta.job_id, mailbox = %accepted.mailbox, "accepted before, recorded delivered now");
                Ok(DeliveryOutcome::AlreadyDelivered)
            }
            Verdict::Cancelled => {
                self.record_unsent(meta, EventKind::Cancelled, "batch cancelled".into())
                    .await?;
                metrics::MESSAGES.with_label_values(&["cancelled"]).inc();
                Ok(DeliveryOutcome::Cancelled)
            }
            Verdict::Expired => {
                let reason = format!(
                    "not sent before its not_after ({})",
                    meta.not_after.map(|t| t.to_rfc3339()).unwrap_or_default()
                );
                self.record_unsent(meta, EventKind::Expired, reason).await?;
                metrics::MESSAGES.with_label_values(&["expired"]).inc();
                Ok(DeliveryOutcome::Expired)
            }
            Verdict::InFlight(_) | Verdict::Uncertain | Verdict::UncertainUntil(_) => {
                let until = match verdict {
                    Verdict::InFlight(at) | Verdict::UncertainUntil(at) => at,
                    _ => Utc::now() + PAUSED_RECHECK,
                };
                if !self.park(meta, mime, until).await? {
                    let reason = "uncertain send and no retry ladder configured to hold it back";
                    return self
                        .dead(
                            meta,
                            &rendered_properties(meta),
                            mime,
                            reason,
                            None,
                            None,
                            vec![],
                        )
                        .await;
                }
                metrics::MESSAGES.with_label_values(&["held"]).inc();
                Ok(DeliveryOutcome::Held { until })
            }
            Verdict::Paused | Verdict::Scheduled(_) => {
                let (until, label, how) = match verdict {
                    Verdict::Scheduled(at) => (at, "scheduled", Park::Around),
                    _ => (Utc::now() + PAUSED_RECHECK, "paused", Park::NotBefore),
                };
                // Waits in the retry ladder, not in this process: no prefetch held.
                if !self.park_for(meta, mime, until, how).await? {
                    return Ok(DeliveryOutcome::Returned);
                }
                metrics::MESSAGES.with_label_values(&[label]).inc();
                Ok(DeliveryOutcome::Held { until })
            }
        }
    }

    /// Every recipient is suppressed: recorded `suppressed` with whom and why, acked,
    /// never sent and not dead-lettered (nothing is wrong with the message).
    pub(super) async fn all_suppressed(
        &self,
        meta: &RenderedMeta,
        dropped: Vec<SuppressedRecipient>,
    ) -> Result<DeliveryOutcome, PublishError> {
        let mut event = self.event(meta, EventKind::Suppressed, None);
        let who = dropped
            .iter()
            .map(|d| format!("{} ({})", d.address, d.reason))
            .collect::<Vec<_>>()
            .join("; ");
        event.reason = Some(format!("every recipient is suppressed: {who}"));
        event.suppressed_recipients = dropped;
        self.record(&event).await?;
        metrics::MESSAGES.with_label_values(&["suppressed"]).inc();
        tracing::info!(job = %meta.job_id, "not sent: every recipient is suppressed");
        Ok(DeliveryOutcome::Suppressed)
    }

    /// RCPT refusals that prove an address dead go on the suppression list.
    pub(super) async fn note_refusals(&self, meta: &RenderedMeta, idx: usize, report: &SendReport) {
        if report.refused.is_empty() {
            return;
        }
        let mailbox = &self.pool.mailboxes()[idx].address;
        suppression::note_refusals(self.pipeline.store(), meta, mailbox, &report.refused).await;
    }

    /// Records that the job ends without a send (`kind`, with its reason).
    async fn record_unsent(
        &self,
        meta: &RenderedMeta,
        kind: EventKind,
        reason: String,
    ) -> Result<(), PublishError> {
        let mut event = self.event(meta, kind, None);
        event.reason = Some(reason);
        self.record(&event).await
    }

    async fn park(
        &self,
        meta: &RenderedMeta,
        mime: &[u8],
        until: DateTime<Utc>,
    ) -> Result<bool, PublishError> {
        self.park_for(meta, mime, until, Park::NotBefore).await
    }

    /// Puts the message in the retry ladder. `NotBefore`: on the shortest delay that
    /// reaches `until` (it must not come back earlier: an uncertain send, a pause);
    /// `Around`: on the longest delay that does not pass `until` (a scheduled send comes
    /// back before its time and is parked again, so it goes out at most one short delay
    /// late, not one long one).
    async fn park_for(
        &self,
        meta: &RenderedMeta,
        mime: &[u8],
        until: DateTime<Utc>,
        how: Park,
    ) -> Result<bool, PublishError> {
        let wait = (until - Utc::now()).to_std().unwrap_or_default();
        let topology = self.pipeline.topology();
        let steps = topology.retry_levels() as u32;
        let delay_of = |s: u32| {
            topology
                .retry_route(Stage::Deliver, s)
                .map(|(_, _, delay)| delay)
        };
        let step = match how {
            Park::NotBefore => (1..=steps)
                .find(|&s| delay_of(s).is_some_and(|d| d >= wait))
                .unwrap_or(steps),
            Park::Around => (1..=steps)
                .rev()
                .find(|&s| delay_of(s).is_some_and(|d| d <= wait))
                .unwrap_or(1),
        };
        match self
            .pipeline
            .retry(Stage::Deliver, step, mime, rendered_properties(meta))
            .await?
        {
            Some((_, pending)) => {
                pending.confirmed().await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    pub(super) async fn retry(
        &self,
        meta: &RenderedMeta,
        props: &BasicProperties,
        mime: &[u8],
        last: LastFailure,
    ) -> Result<DeliveryOutcome, PublishError> {
        let attempt = meta.attempt + 1;
        if attempt >= self.max_attempts {
            let reason = format!("gave up after {attempt} attempts; last: {}", last.reply);
            return self
                .dead(
                    meta,
                    props,
                    mime,
                    &reason,
                    Some(last.reply),
                    last.mailbox,
                    vec![],
                )
                .await;
        }
        let mut next = meta.clone();
        next.attempt = attempt;
        match self
            .pipeline
            .retry(Stage::Deliver, attempt, mime, rendered_properties(&next))
            .await?
        {
            Some((delay, pending)) => {
                pending.confirmed().await?;
                let mut event = self.event(&next, EventKind::Retrying, last.mailbox);
                event.smtp = Some(last.reply);
                event.retry_at =
                    Some(Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default());
                self.record(&event).await?;
                metrics::MESSAGES.with_label_values(&["retry"]).inc();
                Ok(DeliveryOutcome::Retry { attempt })
            }
            None => {
                let reason = format!(
                    "transient failure and no retry ladder configured: {}",
                    last.reply
                );
                self.dead(
                    meta,
                    props,
                    mime,
                    &reason,
                    Some(last.reply),
                    last.mailbox,
                    vec![],
                )
                .await
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn dead(
        &self,
        meta: &RenderedMeta,
        props: &BasicProperties,
        mime: &[u8],
        reason: &str,
        reply: Option<SmtpReply>,
        mailbox: Option<usize>,
        refused: Vec<RecipientRefusal>,
    ) -> Result<DeliveryOutcome, PublishError> {
        self.pipeline
            .dead_letter(Stage::Deliver, mime, props, reason)
            .await?
            .confirmed()
            .await?;
        let mut event = self.event(meta, EventKind::Failed, mailbox);
        event.smtp = reply;
        event.reason = Some(reason.to_owned());
        event.refused_recipients = refused;
        self.record(&event).await?;
        metrics::MESSAGES.with_label_values(&["dead"]).inc();
        tracing::warn!(job = %meta.job_id, reason, "dead-lettered");
        Ok(DeliveryOutcome::Dead {
            reason: reason.to_owned(),
        })
    }

    pub(super) async fn unreadable(
        &self,
        props: &BasicProperties,
        mime: &[u8],
        why: &str,
    ) -> Result<DeliveryOutcome, PublishError> {
        let reason = format!("unreadable rendered message: {why}");
        self.pipeline
            .dead_letter(Stage::Deliver, mime, props, &reason)
            .await?
            .confirmed()
            .await?;
        metrics::MESSAGES.with_label_values(&["dead"]).inc();
        Ok(DeliveryOutcome::Dead { reason })
    }
}

pub(super) fn refusals(report: &SendReport) -> Vec<RecipientRefusal> {
    report
        .refused
        .iter()
        .map(|(address, reply)| RecipientRefusal {
            address: address.clone(),
            reply: reply.clone(),
        })
        .collect()
}
