//! The last step of a send through a mailbox with `transport = "graph"`: after the same
//! decision as SMTP (`decide`), a draft from our MIME (the draft an earlier send left in
//! Drafts, if there is one: never a second), its id noted on the send record, then the draft
//! sent. Only the send step can leave the outcome unknown; that is settled like an SMTP
//! send without a reply after the data: from Sent Items, or by the uncertain policy.
//!
//! A message too large for one request goes as a draft without its attachments, its id
//! noted, then each attachment added (an upload session for the large ones), then the send.
//! A draft of such a message found in Drafts may be half built (a crash or failure while
//! adding the attachments): it is deleted and built again, never sent as found.

use super::*;
use crate::graph::send::{DraftPlan, plan_draft};
use crate::graph::send_outcome::{SendStep, StepFailure, accepted_reply, classify_failure};
use crate::pool::Fence;
use crate::send::attempt::Decided;
use crate::send::drill::{self, CrashPoint};
use crate::settings::Transport;

/// How long after a failed attachment step its draft's deletion may still start.
const DRAFT_CLEANUP_WINDOW: std::time::Duration = std::time::Duration::from_secs(30);

impl DeliverStage {
    /// A send through Graph on the leased mailbox; the lease is always finished here.
    pub(super) async fn send_through_graph(
        &self,
        meta: &RenderedMeta,
        mime: &[u8],
        lease: Lease<'_>,
        fence: Fence,
    ) -> Result<Attempt, PublishError> {
        let idx = lease.idx;
        let mailbox = &self.pool.mailboxes()[idx];
        let Some(graph) = self.graph.clone() else {
            // Settings refuse a Graph mailbox without [deliver.graph]: not reached.
            self.pool.release_unsent(lease);
            return Ok(Attempt::Failed {
                class: ReplyClass::Mailbox(crate::smtp::classify::MailboxProblem::Auth),
                reply: SmtpReply::new(0, "transport = \"graph\" without [deliver.graph] enabled"),
            });
        };
        let bytes = compose::finalize(meta, mime, self.pool.policy(), &mailbox.address);
        let draft_mime = crate::graph::draft_mime::with_envelope(&bytes, &meta.recipients);
        let plan = match plan_draft(draft_mime, graph.max_send_bytes()) {
            Ok(plan) => plan,
            Err(reason) => {
                // Refused before any decision: nothing is on record, nothing was sent.
                self.pool.release_unsent(lease);
                return Ok(Attempt::Failed {
                    class: ReplyClass::MessagePermanent,
                    reply: SmtpReply::new(0, reason),
                });
            }
        };
        let (sent, written_at) = match self.decide(meta, idx, fence).await {
            Ok(Decided::Send(sent, at)) => (sent, at),
            Ok(Decided::NotSent(attempt)) => {
                let fenced = matches!(attempt, Attempt::Fenced);
                self.pool.release_unsent(lease);
                if fenced {
                    self.pool.revoke(idx);
                }
                return Ok(attempt);
            }
            Err(e) => {
                self.pool.release_unsent(lease);
                return Err(e);
            }
        };
        drill::reached(CrashPoint::AfterDecision);
        let started = Instant::now();
        // Each request goes out before the lease's end and within the send's budget, or not
        // at all (a Retry-After wait, or a large message's uploads, may run past them). The
        // lease's end is read again before each request: renewed meanwhile under the same
        // fencing token, it is still this send's lease (a large message's uploads may take
        // longer than one lease period; the budget still bounds the send).
        let budget_end = written_at + self.data_budget;
        let pool = &self.pool;
        let send_by = move || {
            let until = match pool.fence(idx) {
                Some(now) if now.token == fence.token => now.until,
                _ => fence.until,
            };
            until.min(budget_end)
        };
        let address = &mailbox.address;
        let (draft_bytes, attachments) = match &plan {
            DraftPlan::Whole(mime) => (mime.as_slice(), &[][..]),
            DraftPlan::Split(split) => (split.draft.as_slice(), split.attachments.as_slice()),
        };
        let draft = match graph.find_draft(address, &meta.message_id).await {
            Ok(Some(found)) if !attachments.is_empty() => {
                // An earlier send may have stopped while adding the attachments: a draft
                // that may be half built is deleted and built again, never sent.
                tracing::info!(job = %meta.job_id, mailbox = %address, "an earlier send left its draft in Drafts, perhaps without all its attachments: deleting it and building it again");
                match graph.delete_draft(address, &found.id, send_by()).await {
                    Ok(()) => graph.create_draft(address, draft_bytes, send_by()).await,
                    Err(e) => Err(e),
                }
            }
            Ok(Some(found)) => {
                tracing::info!(job = %meta.job_id, mailbox = %address, "an earlier send left its draft in Drafts: sending that one");
                Ok(found.id)
            }
            Ok(None) => graph.create_draft(address, draft_bytes, send_by()).await,
            Err(e) => Err(e),
        };
        let draft = match draft {
            Ok(id) => id,
            Err(e) => {
                return self
                    .graph_not_sent(meta, lease, sent, &e, SendStep::Draft)
                    .await;
            }
        };
        self.pipeline
            .store()
            .note_graph_draft(sent.id, &draft)
            .await
            .map_err(PublishError::from)?;
        drill::reached(CrashPoint::AfterDraft);
        for (i, attachment) in attachments.iter().enumerate() {
            if i > 0 {
                drill::reached(CrashPoint::MidAttachments);
            }
            if let Err(e) = graph.attach(address, &draft, attachment, &send_by).await {
                // Not sent. The half-built draft goes now, apart from the send (past its
                // deadline too: deleting an unsent draft sends nothing), or, failing that,
                // when the job comes back to this mailbox (see above).
                let (graph, mailbox, job) =
                    (Arc::clone(&graph), address.clone(), meta.job_id.clone());
                let draft = draft.clone();
                tokio::spawn(async move {
                    let by = Instant::now() + DRAFT_CLEANUP_WINDOW;
                    if let Err(gone) = graph.delete_draft(&mailbox, &draft, by).await {
                        tracing::info!(%job, %mailbox, error = %gone, "could not delete the half-built draft: the next send of the job through this mailbox deletes it");
                    }
                });
                return self
                    .graph_not_sent(meta, lease, sent, &e, SendStep::Draft)
                    .await;
            }
        }
        let result = graph.send_draft(address, &draft, send_by()).await;
        metrics::observe_send(Transport::Graph, started.elapsed());
        match result {
            Ok(()) => {
                self.pool.finish(lease, Completion::Counted);
                metrics::count_send(address.as_str(), Transport::Graph, "accepted");
                let report = SendReport {
                    reply: accepted_reply(&draft),
                    accepted: meta.recipients.clone(),
                    refused: vec![],
                };
                Ok(Attempt::Delivered(report, sent))
            }
            Err(e) => {
                self.graph_not_sent(meta, lease, sent, &e, SendStep::Send)
                    .await
            }
        }
    }

    /// A step failed: uncertain (the send step only), or not sent, closed with its class.
    async fn graph_not_sent(
        &self,
        meta: &RenderedMeta,
        lease: Lease<'_>,
        sent: SentRecord,
        e: &crate::graph::GraphError,
        step: SendStep,
    ) -> Result<Attempt, PublishError> {
        let idx = lease.idx;
        let address = &self.pool.mailboxes()[idx].address;
        match classify_failure(e, step) {
            StepFailure::Uncertain(reply) => {
                self.pool.finish(lease, Completion::Counted);
                metrics::count_send(address.as_str(), Transport::Graph, "uncertain");
                tracing::warn!(job = %meta.job_id, mailbox = %address, error = %e, "Graph send uncertain: no answer to sending the draft");
                Ok(Attempt::Uncertain(reply, sent))
            }
            StepFailure::NotSent { class, reply } => {
                let past_lease = matches!(e, crate::graph::GraphError::PastDeadline { .. })
                    && self.pool.fence(idx).is_none();
                if past_lease {
                    // The lease ended while the request waited: nothing sent; another
                    // mailbox (or process) takes it.
                    self.pool.release_unsent(lease);
                    self.pool.revoke(idx);
                    self.close_send(sent.id, SendOutcome::NotCounted).await?;
                    return Ok(Attempt::Fenced);
                }
                self.pool.finish(lease, Completion::NotCounted);
                self.close_send(sent.id, SendOutcome::NotCounted).await?;
                metrics::count_send(address.as_str(), Transport::Graph, class.as_str());
                tracing::info!(job = %meta.job_id, mailbox = %address, error = %e, class = class.as_str(), "Graph send failed, not sent");
                Ok(Attempt::Failed { class, reply })
            }
        }
    }
}
