//! What the record says about sending a job now, before a mailbox is waited for (the
//! decision right before the send says it again, under locks: `attempt`).

use super::*;

/// What the record says before a send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
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

impl DeliverStage {
    /// What the record says about sending this job now, and which of its recipients are
    /// suppressed (one statement).
    pub(super) async fn verdict(
        &self,
        meta: &RenderedMeta,
    ) -> Result<(Verdict, Vec<SuppressedRecipient>), PublishError> {
        let store = self.pipeline.store();
        let check = store.send_check_for(&meta.job_id, &meta.recipients).await?;
        let listed = check.suppressed;
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
            return Ok((Verdict::AcceptedBefore(accepted), listed));
        }
        let verdict = match (check.state, check.control) {
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
        };
        Ok((verdict, listed))
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
}
