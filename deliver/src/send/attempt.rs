//! One send through a booked mailbox: the send decision (one transaction in the store),
//! the SMTP conversation, and what the outcome means for the mailbox and the windows.

use super::*;
use crate::pool::Fence;
use crate::send::drill::{self, CrashPoint};
use crate::settings::Transport;

/// A send on record whose outcome is written with its job's event.
#[derive(Debug, Clone, Copy)]
pub(super) struct SentRecord {
    pub(super) id: Uuid,
}

/// What the send decision said.
pub(super) enum Decided {
    /// On record (written at that instant): send it.
    Send(SentRecord, Instant),
    /// Not to be sent through this mailbox now.
    NotSent(Attempt),
}

pub(super) enum Attempt {
    /// The mailbox's lease ended before the data: nothing was sent, no attempt spent.
    Fenced,
    /// The decision said not to send (another copy in flight or done, a batch control, an
    /// uncertain send): nothing was sent.
    NotSent(Verdict),
    /// Recipients were suppressed since the screen: nothing was sent; screen again.
    Rescreen,
    /// The tenant's window is full across processes until then: nothing was sent.
    TenantFull(DateTime<Utc>),
    Delivered(SendReport, SentRecord),
    /// Handed over, no reply: the server may have accepted it.
    Uncertain(SmtpReply, SentRecord),
    AllRefused(SendReport),
    Failed {
        class: ReplyClass,
        reply: SmtpReply,
    },
}

impl DeliverStage {
    /// One send through the leased mailbox; the lease is always finished here. An outcome
    /// that is not the mailbox's fault (delivered, refused or failed for the message's sake,
    /// uncertain) marks the mailbox healthy: its session was opened, AUTH passed. That ends
    /// a probe's hold; a mailbox- or tenant-level failure is judged by the caller, and a
    /// send stopped by the fence proved nothing (the mailbox stays on probation).
    pub(super) async fn attempt(
        &self,
        meta: &RenderedMeta,
        mime: &[u8],
        lease: Lease<'_>,
    ) -> Result<Attempt, PublishError> {
        let ticket = lease.ticket();
        let attempt = self.send_on(meta, mime, lease).await?;
        let proved_nothing = matches!(
            attempt,
            Attempt::Fenced
                | Attempt::NotSent(_)
                | Attempt::Rescreen
                | Attempt::TenantFull(_)
                | Attempt::Failed {
                    class: ReplyClass::Mailbox(_) | ReplyClass::Tenant(_),
                    ..
                }
        );
        if !proved_nothing {
            self.pool.mark_healthy(ticket);
        }
        Ok(attempt)
    }

    /// The send itself. It is on record (write-ahead, under this process's lease on the
    /// mailbox) before MAIL FROM, and its outcome closes it.
    async fn send_on(
        &self,
        meta: &RenderedMeta,
        mime: &[u8],
        lease: Lease<'_>,
    ) -> Result<Attempt, PublishError> {
        let idx = lease.idx;
        let mailbox = &self.pool.mailboxes()[idx];
        let Some(fence) = self.pool.fence(idx) else {
            // The lease ended since the pick (not renewed in time): not through this one.
            self.pool.release_unsent(lease);
            self.pool.revoke(idx);
            return Ok(Attempt::Fenced);
        };
        if mailbox.transport == Transport::Graph {
            return self.send_through_graph(meta, mime, lease, fence).await;
        }
        let started = Instant::now();
        let (mut session, reused) = match self.pool.session(idx).await {
            Ok(s) => s,
            Err(e) => return Ok(self.not_opened(lease, e)),
        };
        let decided = match self.decide(meta, idx, fence).await {
            Ok(decided) => decided,
            Err(e) => {
                self.pool.return_session(idx, session);
                self.pool.release_unsent(lease);
                return Err(e);
            }
        };
        let (sent, written_at) = match decided {
            Decided::Send(sent, written_at) => (sent, written_at),
            Decided::NotSent(Attempt::Fenced) => {
                session.quit().await;
                self.pool.release_unsent(lease);
                self.pool.revoke(idx);
                return Ok(Attempt::Fenced);
            }
            Decided::NotSent(attempt) => {
                self.pool.return_session(idx, session);
                self.pool.release_unsent(lease);
                return Ok(attempt);
            }
        };
        drill::reached(CrashPoint::AfterDecision);
        // The data starts before the lease's end and within the send's budget, or not at all.
        let data_by = fence.until.min(written_at + self.data_budget);
        let bytes = compose::finalize(meta, mime, self.pool.policy(), &mailbox.address);
        let span = tracing::info_span!("smtp.send", mailbox = %mailbox.address, recipients = meta.recipients.len());
        let mut result = session
            .send(&mailbox.address, &meta.recipients, &bytes, data_by)
            .instrument(span.clone())
            .await;
        if reused && matches!(&result, Err(f) if f.stale_session()) {
            // The server had closed (or abandoned) the idle session: the first command never
            // reached it. Not this message's failure: once more on a fresh session.
            tracing::debug!(mailbox = %mailbox.address, "idle session was closed by the server; opening a new one");
            drop(session);
            session = match self.pool.open(idx, true).await {
                Ok(s) => s,
                Err(e) => {
                    self.close_send(sent.id, SendOutcome::NotCounted).await?;
                    return Ok(self.not_opened(lease, e));
                }
            };
            result = session
                .send(&mailbox.address, &meta.recipients, &bytes, data_by)
                .instrument(span)
                .await;
        }
        metrics::observe_send(Transport::Smtp, started.elapsed());
        let outcome = match &result {
            Ok(report) if report.delivered() => SendOutcome::Accepted {
                recipients: report.accepted.len() as u32,
                external: self
                    .pool
                    .external_count_for(mailbox.tenant, &report.accepted)
                    as u32,
            },
            Ok(_) => SendOutcome::NotCounted,
            Err(f) if f.maybe_accepted() => SendOutcome::Uncertain,
            Err(f) if f.stage() == SmtpStage::Message => SendOutcome::Counted,
            Err(_) => SendOutcome::NotCounted,
        };
        let attempt = match result {
            Ok(report) if report.delivered() => {
                // The session goes back before the slot frees: otherwise a waiting send
                // could take the slot, find no idle session and open one connection too many.
                self.pool.return_session(idx, session);
                self.pool.finish(lease, Completion::Counted);
                metrics::count_send(mailbox.address.as_str(), Transport::Smtp, "accepted");
                Attempt::Delivered(report, sent)
            }
            Ok(report) => {
                self.pool.return_session(idx, session);
                self.pool.finish(lease, Completion::NotCounted);
                metrics::count_send(
                    mailbox.address.as_str(),
                    Transport::Smtp,
                    "message_permanent",
                );
                Attempt::AllRefused(report)
            }
            Err(SmtpFailure::Fenced) => {
                // Past the lease (or the budget) before the data: the connection closes at
                // once (it may be inside DATA, where QUIT would be message text, and it
                // may soon count against another process's connections).
                drop(session);
                self.pool.release_unsent(lease);
                if self.pool.fence(idx).is_none() {
                    self.pool.revoke(idx);
                }
                tracing::warn!(job = %meta.job_id, mailbox = %mailbox.address, "send stopped before the data: the mailbox's lease or the send's budget ended");
                Attempt::Fenced
            }
            Err(failure) => {
                // Refused or lost after the data was handed over: count it, to be safe.
                let counted = if failure.stage() == SmtpStage::Message {
                    Completion::Counted
                } else {
                    Completion::NotCounted
                };
                // A session the server closed (421) or that broke is dropped here, before
                // the slot frees, so the server never sees one connection too many.
                if failure.ends_session() {
                    drop(session);
                } else {
                    self.pool.return_session(idx, session);
                }
                self.pool.finish(lease, counted);
                if failure.maybe_accepted() {
                    metrics::count_send(mailbox.address.as_str(), Transport::Smtp, "uncertain");
                    tracing::warn!(job = %meta.job_id, mailbox = %mailbox.address, error = %failure, "send uncertain: no reply after the message data");
                    Attempt::Uncertain(failure.reply(), sent)
                } else {
                    let class = failure.class();
                    metrics::count_send(mailbox.address.as_str(), Transport::Smtp, class.as_str());
                    tracing::info!(job = %meta.job_id, mailbox = %mailbox.address, error = %failure, class = class.as_str(), "send failed");
                    Attempt::Failed {
                        class,
                        reply: failure.reply(),
                    }
                }
            }
        };
        // Delivered and uncertain sends are closed together with their job's event (one
        // statement, in `delivered` and `uncertain`); the others end here, and their job's
        // record follows (a crash in between leaves the job to be sent again, as it should).
        if !matches!(attempt, Attempt::Delivered(..) | Attempt::Uncertain(..)) {
            self.close_send(sent.id, outcome).await?;
        }
        Ok(attempt)
    }

    /// The write-ahead decision for a send of `meta` through `idx` under `fence` (one
    /// transaction in the store, whatever the transport): `Send` once it is on record, or
    /// the attempt that ends it unsent (`Attempt::Fenced`: the caller gives the mailbox up).
    pub(super) async fn decide(
        &self,
        meta: &RenderedMeta,
        idx: usize,
        fence: Fence,
    ) -> Result<Decided, PublishError> {
        let mailbox = &self.pool.mailboxes()[idx];
        let send = SendStart {
            id: Uuid::now_v7(),
            mailbox: self.pool.mailbox_key(idx),
            tenant: Some(mailbox.tenant_id.clone()),
            job_id: meta.job_id.as_str().to_owned(),
            batch: meta.batch.as_ref().map(|b| b.as_str().to_owned()),
            message_id: meta.message_id.clone(),
            owner: self.owner,
            token: fence.token,
            recipients: meta.recipients.clone(),
            external_recipients: self
                .pool
                .external_count_for(mailbox.tenant, &meta.recipients)
                as u32,
            budget: self.data_budget + self.step_timeout,
            rules: SendRules {
                uncertain_hold: match self.uncertain_policy {
                    UncertainPolicy::Hold => None,
                    UncertainPolicy::Resend => {
                        Some(self.uncertain_hold.to_std().unwrap_or_default())
                    }
                },
                tenant_budget: self.pool.tenant_budget(mailbox.tenant),
            },
        };
        let written_at = Instant::now();
        let decision = self.pipeline.store().open_send(&send).await?;
        metrics::SEND_DECISIONS
            .with_label_values(&[decision.label()])
            .inc();
        let refused = match decision {
            Decision::Written => None,
            Decision::Fenced => {
                // The database says the lease is another process's now: nothing is sent.
                tracing::warn!(mailbox = %mailbox.address, token = fence.token, "mailbox lease lost before a send; not sending through it");
                Some(Attempt::Fenced)
            }
            Decision::Suppressed(_) => Some(Attempt::Rescreen),
            Decision::TenantFull { until, detail } => {
                tracing::info!(mailbox = %mailbox.address, tenant = %mailbox.tenant_id, %until, detail, "tenant's external-recipient window is full across processes; waiting");
                Some(Attempt::TenantFull(until))
            }
            Decision::Duplicate => Some(Attempt::NotSent(Verdict::Duplicate)),
            Decision::AcceptedBefore(a) => Some(Attempt::NotSent(Verdict::AcceptedBefore(a))),
            Decision::Cancelled => Some(Attempt::NotSent(Verdict::Cancelled)),
            Decision::Expired => Some(Attempt::NotSent(Verdict::Expired)),
            Decision::Paused => Some(Attempt::NotSent(Verdict::Paused)),
            Decision::InFlight(until) => Some(Attempt::NotSent(Verdict::InFlight(until))),
            Decision::Uncertain(None) => Some(Attempt::NotSent(Verdict::Uncertain)),
            Decision::Uncertain(Some(until)) => {
                Some(Attempt::NotSent(Verdict::UncertainUntil(until)))
            }
        };
        Ok(match refused {
            Some(attempt) => Decided::NotSent(attempt),
            None => Decided::Send(SentRecord { id: send.id }, written_at),
        })
    }

    /// Closes a write-ahead send with its outcome (waits for the database).
    pub(super) async fn close_send(
        &self,
        id: Uuid,
        outcome: SendOutcome,
    ) -> Result<(), PublishError> {
        self.pipeline
            .store()
            .close_send(id, outcome)
            .await
            .map_err(PublishError::from)
    }

    /// No session could be opened: nothing was handed over, the server counted nothing.
    fn not_opened(&self, lease: Lease<'_>, e: SessionError) -> Attempt {
        let mailbox = &self.pool.mailboxes()[lease.idx];
        self.pool.finish(lease, Completion::NotCounted);
        let reply = match &e {
            SessionError::Smtp(f) => f.reply(),
            other => SmtpReply {
                code: 0,
                enhanced: None,
                text: other.to_string(),
            },
        };
        let class = e.class();
        tracing::warn!(mailbox = %mailbox.address, error = %e, class = class.as_str(), "cannot open an SMTP session");
        metrics::count_send(mailbox.address.as_str(), Transport::Smtp, class.as_str());
        Attempt::Failed { class, reply }
    }
}
