//! Delivering one rendered message: pick a mailbox, send, classify the reply, record the
//! outcome durably, and only then let the caller ack. `DeliverStage::handle` returns what
//! happened, so tests can drive it one message at a time; the consume loop is dull.

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use lapin::BasicProperties;
use mailpipe_common::amqp::{PublishError, Stage, header_str};
use mailpipe_common::contract::{
    DeliveryEvent, EventKind, META_HEADER, RecipientRefusal, RenderedMeta, SmtpReply,
    SuppressedRecipient,
};
use mailpipe_common::domain::EmailAddress;
use mailpipe_common::pipeline::{Pipeline, rendered_properties};
use mailpipe_common::store::{
    AcceptedSend, BatchControl, Decision, JobState, SendOutcome, SendRules, SendStart,
    UnsettledSend,
};
use uuid::Uuid;

use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::claims::JobClaims;
use crate::classify::ReplyClass;
use crate::compose;
use crate::ledger::DeliveredJobs;
use crate::metrics;
use crate::pool::{AcquireError, Completion, Lease, MailboxPool, SessionError};
use crate::settings::{DeliverSettings, UncertainPolicy};
use crate::smtp::{SendReport, SmtpFailure, SmtpStage};
use crate::suppression::{self, Screened};

/// What the record says before a send.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Send,
    /// Delivered before: never sent again.
    Duplicate,
    /// A send of it was accepted but the job not recorded delivered (a crash between the
    /// two, before they were one statement): recorded delivered now, never sent again.
    AcceptedBefore(AcceptedSend),
    /// Its batch was cancelled.
    Cancelled,
    /// Its batch is paused: back to the retry ladder, looked at again later.
    Paused,
    /// Its `not_before` is still ahead: back to the retry ladder until then.
    Scheduled(DateTime<Utc>),
    /// Its `not_after` passed: it ends `expired`, never sent.
    Expired,
    /// A send of it is open (in another process, or one that died): not before its deadline.
    InFlight(DateTime<Utc>),
    /// Its last send is uncertain and the policy is `hold`: an operator decides.
    Uncertain,
    /// Its last send is uncertain and the policy is `resend`: not before this.
    UncertainUntil(DateTime<Utc>),
}

/// How a message is put in the retry ladder to wait (see `DeliverStage::park_for`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Park {
    NotBefore,
    Around,
}

/// How long a job of a paused batch waits in the retry ladder before it is looked at
/// again (the ladder's first delay at least this long; 30 s by default).
const PAUSED_RECHECK: chrono::Duration = chrono::Duration::seconds(10);

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The server accepted it (some recipients may have been refused: see the event).
    Delivered { mailbox: String },
    /// The events stream already shows this job delivered: not sent again.
    AlreadyDelivered,
    /// A transient failure: the message waits in the retry ladder.
    Retry { attempt: u32 },
    /// No reply came after the message data: it may have been accepted, so it waits in the
    /// retry ladder and is not sent again before `until`.
    Uncertain { until: DateTime<Utc> },
    /// A copy of a job whose last send is uncertain, or of a paused batch: back to the
    /// retry ladder, unsent, with no attempt spent.
    Held { until: DateTime<Utc> },
    /// Its batch was cancelled: recorded `cancelled`, never sent.
    Cancelled,
    /// Its `not_after` passed: recorded `expired`, never sent.
    Expired,
    /// Every recipient is on the suppression list: recorded `suppressed`, never sent.
    Suppressed,
    /// Permanently failed: in dead letters with its reason.
    Dead { reason: String },
    /// Shutdown came while it waited for a mailbox: it goes back to the queue unsent.
    Returned,
}

#[derive(Debug, Clone)]
pub struct DeliverStage {
    pool: Arc<MailboxPool>,
    pipeline: Pipeline,
    delivered: Arc<DeliveredJobs>,
    claims: Arc<JobClaims>,
    max_attempts: u32,
    uncertain_policy: UncertainPolicy,
    uncertain_hold: chrono::Duration,
    /// The longest a send may take before its data starts; the record counts an open
    /// send at its start plus this and one more step (its deadline).
    data_budget: std::time::Duration,
    step_timeout: std::time::Duration,
    /// This process among the deliver processes (the owner of its leases and sends).
    owner: Uuid,
    shutdown: CancellationToken,
}

/// Why the last try failed, carried into the retry or dead-letter record.
struct LastFailure {
    reply: SmtpReply,
    mailbox: Option<usize>,
}

impl DeliverStage {
    pub fn new(
        pool: Arc<MailboxPool>,
        pipeline: Pipeline,
        delivered: Arc<DeliveredJobs>,
        settings: &DeliverSettings,
        owner: Uuid,
        shutdown: CancellationToken,
    ) -> Self {
        let step_timeout = settings.smtp_timeout();
        Self {
            pool,
            pipeline,
            delivered,
            claims: Arc::new(JobClaims::default()),
            max_attempts: settings.max_attempts.max(1),
            uncertain_policy: settings.uncertain_policy,
            uncertain_hold: chrono::Duration::from_std(std::time::Duration::from_millis(
                settings.uncertain_hold_ms,
            ))
            .unwrap_or_default(),
            data_budget: step_timeout * 2,
            step_timeout,
            owner,
            shutdown,
        }
    }

    pub fn pool(&self) -> &Arc<MailboxPool> {
        &self.pool
    }

    /// Handles one message. `Err` only when the outcome could not be recorded (broker
    /// trouble): the caller must not ack then, so the message comes back.
    pub async fn handle(
        &self,
        props: &BasicProperties,
        mime: &[u8],
    ) -> Result<DeliveryOutcome, PublishError> {
        let meta = match header_str(props, META_HEADER).map(|v| RenderedMeta::from_header_value(&v))
        {
            Some(Ok(meta)) => meta,
            Some(Err(e)) => return self.unreadable(props, mime, &e.to_string()).await,
            None => {
                return self
                    .unreadable(props, mime, "no mailpipe-meta header")
                    .await;
            }
        };
        // One send per job at a time: a second copy waits here until the first is done,
        // then finds it delivered (or held back) below.
        let _claim = tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => return Ok(DeliveryOutcome::Returned),
            claim = self.claims.claim(&meta.job_id) => claim,
        };
        if let Some((send, outcome, event)) = self.delivered.pending(&meta.job_id) {
            // Delivered here, and its record failed before: write the record, never the
            // mail again.
            self.pipeline
                .record_outcome(send, outcome, &event)
                .await?
                .confirmed()
                .await?;
            self.delivered.mark_recorded(&meta.job_id);
            metrics::MESSAGES.with_label_values(&["duplicate"]).inc();
            return Ok(DeliveryOutcome::AlreadyDelivered);
        }
        match self.verdict(&meta).await? {
            Verdict::Send => {}
            other => return self.not_sent(&meta, mime, other).await,
        }
        // Suppressed recipients leave the envelope here (before the mailbox is picked, so
        // the quota counts only the others); with nobody left the job ends `suppressed`.
        let mut meta = match suppression::screen(self.pipeline.store(), meta).await? {
            Screened::Unchanged(meta) | Screened::Reduced(meta, _) => meta,
            Screened::Nobody(meta, dropped) => return self.all_suppressed(&meta, dropped).await,
        };

        let waited = Instant::now();
        // Mailbox-level refusals reroute without spending an attempt; but a message that
        // every mailbox refuses is itself suspect, so after this many reroutes it is
        // treated as a transient failure (an attempt is spent).
        let reroute_limit = self.pool.mailboxes().len() + 2;
        let mut reroutes = 0;
        let last = loop {
            // A message waiting for quota (maybe for hours) must not hold up shutdown.
            let acquired = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return Ok(DeliveryOutcome::Returned),
                acquired = self.pool.acquire(&meta) => acquired,
            };
            let lease = match acquired {
                Ok(lease) => lease,
                Err(AcquireError::Impossible(impossible)) => {
                    let reason = format!("cannot be sent by this pool: {impossible}");
                    return self
                        .dead(&meta, props, mime, &reason, None, None, vec![])
                        .await;
                }
                Err(AcquireError::OwnedElsewhere) => {
                    // Back to the queue, where the process owning a mailbox for it takes it.
                    metrics::MESSAGES.with_label_values(&["elsewhere"]).inc();
                    return Ok(DeliveryOutcome::Returned);
                }
            };
            metrics::WAIT_SECONDS.observe(waited.elapsed().as_secs_f64());
            // Right before the send, the record decides (`send_on`, one transaction):
            // delivered before (by another process, or before a restart) is never sent
            // twice, a batch paused or cancelled while this one waited is honoured, the
            // tenant's budget is shared exactly with the other processes, and while the
            // database is away this waits, so nothing is sent that could not be recorded.
            let idx = lease.idx;
            let ticket = lease.ticket();
            let refusal = match self.attempt(&meta, mime, lease).await? {
                Attempt::Fenced => {
                    // The mailbox's lease ended: nothing was sent; another mailbox (or
                    // process) takes it, and no attempt is spent.
                    continue;
                }
                Attempt::NotSent(verdict) => {
                    // The decision said no (another copy in flight or done, a batch
                    // control, an uncertain send): nothing was sent, and the answer is final
                    // for this message.
                    return self.not_sent(&meta, mime, verdict).await;
                }
                Attempt::Rescreen => {
                    // Suppressed since it was screened: screened again, then another pick.
                    meta = match suppression::screen(self.pipeline.store(), meta).await? {
                        Screened::Unchanged(meta) | Screened::Reduced(meta, _) => meta,
                        Screened::Nobody(meta, dropped) => {
                            return self.all_suppressed(&meta, dropped).await;
                        }
                    };
                    continue;
                }
                Attempt::TenantFull(until) => {
                    // Another process took the tenant's last room: no send until the
                    // window frees it (the ownership round imports those sends meanwhile).
                    let wait = (until - Utc::now()).to_std().unwrap_or_default();
                    tokio::select! {
                        biased;
                        _ = self.shutdown.cancelled() => return Ok(DeliveryOutcome::Returned),
                        _ = tokio::time::sleep(wait.max(std::time::Duration::from_millis(10))) => {}
                    }
                    continue;
                }
                Attempt::Delivered(report, send) => {
                    self.note_refusals(&meta, idx, &report).await;
                    return self.delivered(&meta, mime, idx, report, send).await;
                }
                Attempt::Uncertain(reply, send) => {
                    return self.uncertain(&meta, props, mime, idx, reply, send).await;
                }
                Attempt::AllRefused(report) => {
                    self.note_refusals(&meta, idx, &report).await;
                    let reason = format!("every recipient refused: {}", report.reply);
                    let refused = refusals(&report);
                    return self
                        .dead(
                            &meta,
                            props,
                            mime,
                            &reason,
                            Some(report.reply),
                            Some(idx),
                            refused,
                        )
                        .await;
                }
                Attempt::Failed { class, reply } => match class {
                    ReplyClass::Mailbox(problem) => {
                        metrics::REFUSALS
                            .with_label_values(&[
                                self.pool.mailboxes()[idx].address.as_str(),
                                problem.as_str(),
                            ])
                            .inc();
                        self.pool.hold_mailbox(ticket, problem);
                        reply
                    }
                    ReplyClass::Tenant(problem) => {
                        metrics::REFUSALS
                            .with_label_values(&[
                                self.pool.mailboxes()[idx].address.as_str(),
                                problem.as_str(),
                            ])
                            .inc();
                        self.pool
                            .hold_tenant(self.pool.mailboxes()[idx].tenant, problem);
                        reply
                    }
                    ReplyClass::MessagePermanent => {
                        let reason = format!("refused by the server: {reply}");
                        return self
                            .dead(&meta, props, mime, &reason, Some(reply), Some(idx), vec![])
                            .await;
                    }
                    ReplyClass::Transient | ReplyClass::Accepted => {
                        break LastFailure {
                            reply,
                            mailbox: Some(idx),
                        };
                    }
                },
            };
            reroutes += 1;
            if reroutes >= reroute_limit {
                break LastFailure {
                    reply: SmtpReply {
                        code: 0,
                        enhanced: None,
                        text: format!(
                            "refused at mailbox level by {reroutes} mailboxes in a row; last: {refusal}"
                        ),
                    },
                    mailbox: None,
                };
            }
        };
        self.retry(&meta, props, mime, last).await
    }

    /// One send through the leased mailbox; the lease is always finished here. An outcome
    /// that is not the mailbox's fault (delivered, refused or failed for the message's sake,
    /// uncertain) marks the mailbox healthy: its session was opened, AUTH passed. That ends
    /// a probe's hold; a mailbox- or tenant-level failure is judged by the caller, and a
    /// send stopped by the fence proved nothing (the mailbox stays on probation).
    async fn attempt(
        &self,
        meta: &RenderedMeta,
        mime: &[u8],
        lease: Lease,
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
        lease: Lease,
    ) -> Result<Attempt, PublishError> {
        let idx = lease.idx;
        let mailbox = &self.pool.mailboxes()[idx];
        let Some(fence) = self.pool.fence(idx) else {
            // The lease ended since the pick (not renewed in time): not through this one.
            self.pool.release_unsent(lease);
            self.pool.revoke(idx);
            return Ok(Attempt::Fenced);
        };
        let started = Instant::now();
        let (mut session, reused) = match self.pool.session(idx).await {
            Ok(s) => s,
            Err(e) => return Ok(self.not_opened(lease, e)),
        };
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
                    UncertainPolicy::Resend => Some(self.uncertain_hold.to_std().unwrap_or_default()),
                },
                tenant_budget: self.pool.tenant_budget(mailbox.tenant),
            },
        };
        let written_at = Instant::now();
        let decision = match self.pipeline.store().open_send(&send).await {
            Ok(decision) => decision,
            Err(e) => {
                self.pool.return_session(idx, session);
                self.pool.release_unsent(lease);
                return Err(e.into());
            }
        };
        metrics::SEND_DECISIONS
            .with_label_values(&[decision.label()])
            .inc();
        let refused = match decision {
            Decision::Written => None,
            Decision::Fenced => {
                // The database says the lease is another process's now: nothing is sent.
                tracing::warn!(mailbox = %mailbox.address, token = fence.token, "mailbox lease lost before a send; not sending through it");
                session.quit().await;
                self.pool.release_unsent(lease);
                self.pool.revoke(idx);
                return Ok(Attempt::Fenced);
            }
            Decision::Suppressed(_) => Some(Attempt::Rescreen),
            Decision::TenantFull { until, detail } => {
                tracing::info!(mailbox = %mailbox.address, tenant = %mailbox.tenant_id, %until, detail, "tenant's external-recipient window is full across processes; waiting");
                Some(Attempt::TenantFull(until))
            }
            other => Some(Attempt::NotSent(Verdict::from_decision(other))),
        };
        if let Some(attempt) = refused {
            self.pool.return_session(idx, session);
            self.pool.release_unsent(lease);
            return Ok(attempt);
        }
        let sent = SentRecord { id: send.id };
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
                    self.close_send(send.id, SendOutcome::NotCounted).await?;
                    return Ok(self.not_opened(lease, e));
                }
            };
            result = session
                .send(&mailbox.address, &meta.recipients, &bytes, data_by)
                .instrument(span)
                .await;
        }
        metrics::SMTP_SECONDS.observe(started.elapsed().as_secs_f64());
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
                metrics::SENDS
                    .with_label_values(&[mailbox.address.as_str(), "accepted"])
                    .inc();
                Attempt::Delivered(report, sent)
            }
            Ok(report) => {
                self.pool.return_session(idx, session);
                self.pool.finish(lease, Completion::NotCounted);
                metrics::SENDS
                    .with_label_values(&[mailbox.address.as_str(), "message_permanent"])
                    .inc();
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
                    metrics::SENDS
                        .with_label_values(&[mailbox.address.as_str(), "uncertain"])
                        .inc();
                    tracing::warn!(job = %meta.job_id, mailbox = %mailbox.address, error = %failure, "send uncertain: no reply after the message data");
                    Attempt::Uncertain(failure.reply(), sent)
                } else {
                    let class = failure.class();
                    metrics::SENDS
                        .with_label_values(&[mailbox.address.as_str(), class.as_str()])
                        .inc();
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
            self.close_send(send.id, outcome).await?;
        }
        Ok(attempt)
    }

    /// Closes a write-ahead send with its outcome (waits for the database).
    async fn close_send(&self, id: Uuid, outcome: SendOutcome) -> Result<(), PublishError> {
        self.pipeline
            .store()
            .close_send(id, outcome)
            .await
            .map_err(PublishError::from)
    }

    /// No session could be opened: nothing was handed over, the server counted nothing.
    fn not_opened(&self, lease: Lease, e: SessionError) -> Attempt {
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
        metrics::SENDS
            .with_label_values(&[mailbox.address.as_str(), class.as_str()])
            .inc();
        Attempt::Failed { class, reply }
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

    async fn delivered(
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
        // Remember before recording: if recording fails and the message comes back, it is
        // not sent again (only the record is written).
        self.delivered.insert_pending(send.id, outcome, event.clone());
        self.pipeline
            .record_outcome(send.id, outcome, &event)
            .await?
            .confirmed()
            .await?;
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
    async fn uncertain(
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

    /// What the record says about sending this job now.
    async fn verdict(&self, meta: &RenderedMeta) -> Result<Verdict, PublishError> {
        let store = self.pipeline.store();
        let check = store.send_check(&meta.job_id).await?;
        let now = Utc::now();
        let unsettled = match check.unsettled {
            Some(UnsettledSend::Open { id, deadline }) if deadline <= now => {
                // Its process died mid-send and no new owner has settled it yet.
                store
                    .expire_open_send(id)
                    .await
                    .map_err(PublishError::from)?;
                Some(UnsettledSend::Uncertain {
                    ended_at: deadline,
                    resolution: None,
                })
            }
            other => other,
        };
        if let Some(accepted) = check.accepted {
            return Ok(Verdict::AcceptedBefore(accepted));
        }
        Ok(match (check.state, check.control) {
            // Bounced: it was delivered before. Suppressed: it ended unsent for good.
            (Some(JobState::Delivered | JobState::Bounced | JobState::Suppressed), _) => {
                Verdict::Duplicate
            }
            (Some(JobState::Cancelled), _) | (_, BatchControl::Cancelled) => Verdict::Cancelled,
            (Some(JobState::Expired), _) => Verdict::Expired,
            _ => match unsettled {
                Some(UnsettledSend::Open { deadline, .. }) => Verdict::InFlight(deadline),
                Some(UnsettledSend::Uncertain {
                    ended_at,
                    resolution: None,
                }) => match self.uncertain_policy {
                    UncertainPolicy::Hold => Verdict::Uncertain,
                    UncertainPolicy::Resend if ended_at + self.uncertain_hold > now => {
                        Verdict::UncertainUntil(ended_at + self.uncertain_hold)
                    }
                    UncertainPolicy::Resend => self.timing(meta, check.control, now),
                },
                // Decided (resend), or nothing unsettled.
                _ => self.timing(meta, check.control, now),
            },
        })
    }

    /// Sending is allowed by the record: what the batch's control and the job's schedule say.
    fn timing(&self, meta: &RenderedMeta, control: BatchControl, now: DateTime<Utc>) -> Verdict {
        match control {
            _ if meta.not_after.is_some_and(|t| t <= now) => Verdict::Expired,
            BatchControl::Paused => Verdict::Paused,
            _ => match meta.not_before.filter(|t| *t > now) {
                Some(at) => Verdict::Scheduled(at),
                None => Verdict::Send,
            },
        }
    }

    /// A job the record says not to send (now).
    async fn not_sent(
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
                self.pipeline.record_event(&event).await?.confirmed().await?;
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
    async fn all_suppressed(
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
        self.pipeline
            .record_event(&event)
            .await?
            .confirmed()
            .await?;
        metrics::MESSAGES.with_label_values(&["suppressed"]).inc();
        tracing::info!(job = %meta.job_id, "not sent: every recipient is suppressed");
        Ok(DeliveryOutcome::Suppressed)
    }

    /// RCPT refusals that prove an address dead go on the suppression list.
    async fn note_refusals(&self, meta: &RenderedMeta, idx: usize, report: &SendReport) {
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
        self.pipeline.record_event(&event).await?.confirmed().await
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

    async fn retry(
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
                self.pipeline
                    .record_event(&event)
                    .await?
                    .confirmed()
                    .await?;
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
    async fn dead(
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
        self.pipeline
            .record_event(&event)
            .await?
            .confirmed()
            .await?;
        metrics::MESSAGES.with_label_values(&["dead"]).inc();
        tracing::warn!(job = %meta.job_id, reason, "dead-lettered");
        Ok(DeliveryOutcome::Dead {
            reason: reason.to_owned(),
        })
    }

    async fn unreadable(
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

/// A send on record whose outcome is written with its job's event.
#[derive(Debug, Clone, Copy)]
struct SentRecord {
    id: Uuid,
}

impl Verdict {
    /// The decision's answer, as what the stage does with the message; `Written`,
    /// `Fenced`, `Suppressed` and `TenantFull` are the caller's (they send or pick again).
    fn from_decision(decision: Decision) -> Verdict {
        match decision {
            Decision::Duplicate => Verdict::Duplicate,
            Decision::AcceptedBefore(a) => Verdict::AcceptedBefore(a),
            Decision::Cancelled => Verdict::Cancelled,
            Decision::Expired => Verdict::Expired,
            Decision::Paused => Verdict::Paused,
            Decision::InFlight(until) => Verdict::InFlight(until),
            Decision::Uncertain(None) => Verdict::Uncertain,
            Decision::Uncertain(Some(until)) => Verdict::UncertainUntil(until),
            Decision::Written
            | Decision::Fenced
            | Decision::Suppressed(_)
            | Decision::TenantFull { .. } => Verdict::Send,
        }
    }
}

enum Attempt {
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

fn refusals(report: &SendReport) -> Vec<RecipientRefusal> {
    report
        .refused
        .iter()
        .map(|(address, reply)| RecipientRefusal {
            address: address.clone(),
            reply: reply.clone(),
        })
        .collect()
}
