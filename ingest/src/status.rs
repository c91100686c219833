//! What is known about jobs and batches so far, built from delivery events. Pure: no
//! I/O, fed by `apply(event)` (from the events stream and from ingest's own accepts), so
//! it can be tested and extended (per-mailbox counts, ETA) without a broker.
//!
//! A job's status is its latest event. "Latest" is by the event's `at`, not by arrival:
//! events of one job are written by different processes, and a replay or a redelivery
//! may bring an older event after a newer one. An `accepted` event never replaces a
//! status already known (a second accept is a duplicate, not a regression). Applying the
//! same event twice changes nothing, so replays are harmless.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use mailpipe_common::contract::{DeliveryEvent, EventKind, RecipientRefusal, SmtpReply};
use mailpipe_common::domain::{BatchId, EmailAddress, JobId};
use serde::Serialize;

use crate::eta::{self, Eta, PoolCapacity, QuotaLog};

const KINDS: [EventKind; 5] = [
    EventKind::Accepted,
    EventKind::Rendered,
    EventKind::Delivered,
    EventKind::Retrying,
    EventKind::Failed,
];

/// Failures listed in a batch report (the total is always given).
pub const FAILURES_SHOWN: usize = 100;

fn slot(kind: EventKind) -> usize {
    match kind {
        EventKind::Accepted => 0,
        EventKind::Rendered => 1,
        EventKind::Delivered => 2,
        EventKind::Retrying => 3,
        EventKind::Failed => 4,
    }
}

fn finished(kind: EventKind) -> bool {
    matches!(kind, EventKind::Delivered | EventKind::Failed)
}

/// Whether event `e` moves a job that is `status` since `since`. A job's state only moves
/// forward, whatever order events arrive in and however the hosts' clocks differ:
/// `delivered` is final (deliver never sends a delivered job again); `failed` is final
/// except for `delivered` (a dead letter replayed and then delivered); a final event
/// beats a non-final one whatever their stamps (a duplicate render stamped after the
/// delivery is still a render); between non-final events, the later stamp wins.
fn moves_forward(status: EventKind, since: DateTime<Utc>, e: &DeliveryEvent) -> bool {
    match (finished(status), finished(e.kind)) {
        _ if status == EventKind::Delivered => false,
        (true, _) => e.kind == EventKind::Delivered,
        (false, true) => true,
        (false, false) => e.at > since || (e.at == since && e.kind != status),
    }
}

/// Jobs per current status, for one batch. Serialised as a map by kind, plus `dead`
/// (the same number as `failed`: a failed job's message is in dead letters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindCounts([u64; 5]);

impl KindCounts {
    pub fn get(&self, kind: EventKind) -> u64 {
        self.0[slot(kind)]
    }

    fn add(&mut self, kind: EventKind) {
        self.0[slot(kind)] += 1;
    }

    fn remove(&mut self, kind: EventKind) {
        self.0[slot(kind)] = self.0[slot(kind)].saturating_sub(1);
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

impl Serialize for KindCounts {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(KINDS.len() + 1))?;
        for k in KINDS {
            m.serialize_entry(&k, &self.get(k))?;
        }
        m.serialize_entry("dead", &self.get(EventKind::Failed))?;
        m.end()
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobStatus {
    pub id: JobId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchId>,
    pub status: EventKind,
    /// When the latest event happened.
    pub updated_at: DateTime<Utc>,
    /// Delivery attempts so far (from the latest event that counted them).
    pub attempt: u32,
    /// SMTP reply or reason of the latest failure or retry, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The pool mailbox that sent (or last tried to send) it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mailbox: Option<EmailAddress>,
    /// Its recipients (to + cc + bcc from the `accepted` event, or what deliver reported).
    #[serde(skip_serializing_if = "is_zero")]
    pub recipients: u32,
    /// The latest event's SMTP reply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smtp: Option<SmtpReply>,
    /// The latest event's reason (failures without a reply, dead-letter reasons).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Recipients the server refused (the message itself may still be delivered).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refused_recipients: Vec<RecipientRefusal>,
}

impl JobStatus {
    /// Failed, or delivered with some recipients refused.
    pub fn has_failure(&self) -> bool {
        self.status == EventKind::Failed
            || (self.status == EventKind::Delivered && !self.refused_recipients.is_empty())
    }
}

/// One failure in a batch report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Failure {
    pub job_id: JobId,
    /// `failed`, or `delivered` when only some recipients were refused.
    pub status: EventKind,
    pub at: DateTime<Utc>,
    pub attempt: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mailbox: Option<EmailAddress>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smtp: Option<SmtpReply>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refused_recipients: Vec<RecipientRefusal>,
}

impl From<&JobStatus> for Failure {
    fn from(j: &JobStatus) -> Self {
        Self {
            job_id: j.id.clone(),
            status: j.status,
            at: j.updated_at,
            attempt: j.attempt,
            mailbox: j.mailbox.clone(),
            reason: j.reason.clone(),
            smtp: j.smtp.clone(),
            refused_recipients: j.refused_recipients.clone(),
        }
    }
}

/// What one batch adds up to, kept current by `apply`.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchStatus {
    pub batch: BatchId,
    /// Jobs known in this batch.
    pub jobs: u64,
    /// Jobs by current status.
    pub counts: KindCounts,
    pub first_event_at: DateTime<Utc>,
    pub last_event_at: DateTime<Utc>,
    /// Delivered jobs per sending mailbox.
    pub delivered_by_mailbox: BTreeMap<EmailAddress, u64>,
    /// Jobs with a failure, oldest first: `(when, job)`.
    failures: BTreeSet<(DateTime<Utc>, JobId)>,
    /// Recipients of the jobs whose count is known, and how many such jobs.
    recipients_known: u64,
    jobs_with_recipients: u64,
    /// Of the unfinished jobs: recipients known, and jobs whose count is not known.
    pending_recipients: u64,
    pending_unknown: u64,
}

impl BatchStatus {
    fn new(batch: BatchId, at: DateTime<Utc>) -> Self {
        Self {
            batch,
            jobs: 0,
            counts: KindCounts::default(),
            first_event_at: at,
            last_event_at: at,
            delivered_by_mailbox: BTreeMap::new(),
            failures: BTreeSet::new(),
            recipients_known: 0,
            jobs_with_recipients: 0,
            pending_recipients: 0,
            pending_unknown: 0,
        }
    }

    /// Jobs that reached an end (delivered or failed).
    pub fn finished(&self) -> u64 {
        self.counts.get(EventKind::Delivered) + self.counts.get(EventKind::Failed)
    }

    /// Jobs not delivered or failed yet.
    pub fn remaining(&self) -> u64 {
        self.jobs.saturating_sub(self.finished())
    }

    /// Jobs with a failure (failed, or delivered with refused recipients).
    pub fn failures(&self) -> u64 {
        self.failures.len() as u64
    }

    /// Average recipients per job, from the jobs whose count is known.
    pub fn average_recipients(&self) -> Option<f64> {
        (self.jobs_with_recipients > 0)
            .then(|| self.recipients_known as f64 / self.jobs_with_recipients as f64)
    }

    /// Recipients of the unfinished jobs (unknown counts taken at the batch's average, or 1).
    pub fn recipients_left(&self) -> u64 {
        let avg = self.average_recipients().unwrap_or(1.0);
        self.pending_recipients + (self.pending_unknown as f64 * avg).ceil() as u64
    }
}

/// A job's share in its batch's numbers: `apply` takes the old share out and puts the new
/// one in, so every aggregate stays exact however events arrive.
#[derive(Debug, Clone, PartialEq)]
struct Share {
    batch: Option<BatchId>,
    status: EventKind,
    mailbox: Option<EmailAddress>,
    failure: Option<(DateTime<Utc>, JobId)>,
    recipients: u32,
}

impl Share {
    fn of(j: &JobStatus) -> Self {
        Self {
            batch: j.batch.clone(),
            status: j.status,
            mailbox: if j.status == EventKind::Delivered {
                j.mailbox.clone()
            } else {
                None
            },
            failure: j.has_failure().then(|| (j.updated_at, j.id.clone())),
            recipients: j.recipients,
        }
    }
}

/// The batch answer of the API and of `mailpipe-ingest status` (one shape for both).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchReport {
    pub batch: BatchId,
    /// Jobs known in this batch.
    pub jobs: u64,
    /// Every job delivered or failed.
    pub finished: bool,
    /// Jobs not delivered or failed yet.
    pub remaining: u64,
    /// Jobs by current status (`dead` = `failed`).
    pub counts: KindCounts,
    /// Per sending mailbox: jobs delivered through it.
    pub per_mailbox: BTreeMap<EmailAddress, MailboxCounts>,
    pub failures: Failures,
    pub eta: Eta,
    pub first_event_at: DateTime<Utc>,
    pub last_event_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MailboxCounts {
    pub delivered: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Failures {
    /// Jobs failed, or delivered with some recipients refused.
    pub total: u64,
    /// How many `items` hold (the oldest first, at most 100).
    pub shown: u64,
    pub items: Vec<Failure>,
}

#[derive(Debug, Default)]
pub struct StatusIndex {
    jobs: HashMap<JobId, JobStatus>,
    batches: HashMap<BatchId, BatchStatus>,
    /// The pool's limits and what its mailboxes sent, or why the ETA cannot be computed.
    capacity: Option<(PoolCapacity, QuotaLog)>,
    no_capacity: Option<String>,
}

impl StatusIndex {
    /// An index without a pool: batch ETAs are `null` ("no pool configured").
    pub fn new() -> Self {
        Self::default()
    }

    /// An index that estimates ETAs from `pool` (or says why it cannot).
    pub fn with_pool(pool: Result<PoolCapacity, String>) -> Self {
        match pool {
            Ok(p) => Self {
                capacity: Some((p.clone(), QuotaLog::new(&p))),
                ..Self::default()
            },
            Err(why) => Self {
                no_capacity: Some(why),
                ..Self::default()
            },
        }
    }

    /// Folds one event in. Returns whether the job's status changed.
    pub fn apply(&mut self, e: &DeliveryEvent) -> bool {
        let recipients = e
            .recipients
            .saturating_add(e.refused_recipients.len() as u32);
        let detail = e
            .smtp
            .as_ref()
            .map(|r| format!("{} {}", r.code, r.text))
            .or_else(|| e.reason.clone());
        let (before, changed) = match self.jobs.get_mut(&e.job_id) {
            Some(job) => {
                let before = Share::of(job);
                if job.batch.is_none() && e.batch.is_some() {
                    // Learn the batch even if only an older event carried it.
                    job.batch = e.batch.clone();
                }
                job.recipients = job.recipients.max(recipients);
                let newer = moves_forward(job.status, job.updated_at, e);
                // A second accept is a duplicate, never a regression.
                let changed = newer && e.kind != EventKind::Accepted;
                if changed {
                    job.status = e.kind;
                    job.updated_at = e.at;
                    job.attempt = job.attempt.max(e.attempt);
                    if detail.is_some() || e.kind == EventKind::Delivered {
                        job.detail = detail;
                    }
                    if e.mailbox.is_some() {
                        job.mailbox = e.mailbox.clone();
                    }
                    job.smtp = e.smtp.clone();
                    job.reason = e.reason.clone();
                    job.refused_recipients = e.refused_recipients.clone();
                }
                (Some(before), changed)
            }
            None => {
                self.jobs.insert(
                    e.job_id.clone(),
                    JobStatus {
                        id: e.job_id.clone(),
                        batch: e.batch.clone(),
                        status: e.kind,
                        updated_at: e.at,
                        attempt: e.attempt,
                        detail,
                        mailbox: e.mailbox.clone(),
                        recipients,
                        smtp: e.smtp.clone(),
                        reason: e.reason.clone(),
                        refused_recipients: e.refused_recipients.clone(),
                    },
                );
                (None, true)
            }
        };
        let Some(job) = self.jobs.get(&e.job_id) else {
            return changed;
        };
        let after = Share::of(job);
        let newly_delivered = job.status == EventKind::Delivered
            && before
                .as_ref()
                .is_none_or(|b| b.status != EventKind::Delivered);
        if newly_delivered
            && let (Some((_, log)), Some(mailbox)) = (self.capacity.as_mut(), job.mailbox.as_ref())
        {
            log.record(mailbox, job.updated_at, u64::from(e.recipients));
        }
        if before.as_ref() != Some(&after) {
            if let Some(before) = &before {
                self.take_out(before);
            }
            self.put_in(&after, e.at);
        }
        if let Some(b) = after.batch.as_ref().and_then(|b| self.batches.get_mut(b)) {
            b.last_event_at = b.last_event_at.max(e.at);
            b.first_event_at = b.first_event_at.min(e.at);
        }
        changed
    }

    fn take_out(&mut self, s: &Share) {
        let Some(b) = s.batch.as_ref().and_then(|b| self.batches.get_mut(b)) else {
            return;
        };
        b.jobs = b.jobs.saturating_sub(1);
        b.counts.remove(s.status);
        if let Some(m) = &s.mailbox
            && let Some(n) = b.delivered_by_mailbox.get_mut(m)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                b.delivered_by_mailbox.remove(m);
            }
        }
        if let Some(f) = &s.failure {
            b.failures.remove(f);
        }
        if s.recipients > 0 {
            b.recipients_known = b.recipients_known.saturating_sub(u64::from(s.recipients));
            b.jobs_with_recipients = b.jobs_with_recipients.saturating_sub(1);
        }
        if !finished(s.status) {
            if s.recipients > 0 {
                b.pending_recipients = b.pending_recipients.saturating_sub(u64::from(s.recipients));
            } else {
                b.pending_unknown = b.pending_unknown.saturating_sub(1);
            }
        }
    }

    fn put_in(&mut self, s: &Share, at: DateTime<Utc>) {
        let Some(batch) = &s.batch else { return };
        let b = self
            .batches
            .entry(batch.clone())
            .or_insert_with(|| BatchStatus::new(batch.clone(), at));
        b.jobs += 1;
        b.counts.add(s.status);
        if let Some(m) = &s.mailbox {
            *b.delivered_by_mailbox.entry(m.clone()).or_default() += 1;
        }
        if let Some(f) = &s.failure {
            b.failures.insert(f.clone());
        }
        if s.recipients > 0 {
            b.recipients_known += u64::from(s.recipients);
            b.jobs_with_recipients += 1;
        }
        if !finished(s.status) {
            if s.recipients > 0 {
                b.pending_recipients += u64::from(s.recipients);
            } else {
                b.pending_unknown += 1;
            }
        }
    }

    pub fn job(&self, id: &JobId) -> Option<&JobStatus> {
        self.jobs.get(id)
    }

    pub fn batch(&self, id: &BatchId) -> Option<&BatchStatus> {
        self.batches.get(id)
    }

    pub fn jobs_known(&self) -> usize {
        self.jobs.len()
    }

    pub fn batches_known(&self) -> usize {
        self.batches.len()
    }

    /// Whether `id` is known delivered (dead-letter replay leaves those alone).
    pub fn is_delivered(&self, id: &JobId) -> bool {
        self.jobs
            .get(id)
            .is_some_and(|j| j.status == EventKind::Delivered)
    }

    /// The batch answer at `now`: counts, per mailbox, the first failures, the ETA.
    pub fn report(&self, id: &BatchId, now: DateTime<Utc>) -> Option<BatchReport> {
        let b = self.batches.get(id)?;
        let items: Vec<Failure> = b
            .failures
            .iter()
            .take(FAILURES_SHOWN)
            .filter_map(|(_, job)| self.jobs.get(job))
            .map(Failure::from)
            .collect();
        let remaining = b.remaining();
        let recipients_left = b.recipients_left();
        let eta = match (&self.capacity, &self.no_capacity) {
            (Some((pool, log)), _) => eta::estimate(pool, log, remaining, recipients_left, now),
            (None, why) => {
                let why = why.clone().unwrap_or_else(|| {
                    "no pool configured: the ETA needs the [deliver] section".into()
                });
                if remaining == 0 {
                    let mut e = Eta::unknown(now, 0, 0, why);
                    e.eta_seconds = Some(0.0);
                    e.eta_at = Some(now);
                    e
                } else {
                    Eta::unknown(now, remaining, recipients_left, why)
                }
            }
        };
        let mut eta = eta;
        eta.other_jobs_left = self.remaining_elsewhere(id);
        Some(BatchReport {
            batch: b.batch.clone(),
            jobs: b.jobs,
            finished: remaining == 0,
            remaining,
            counts: b.counts,
            per_mailbox: b
                .delivered_by_mailbox
                .iter()
                .map(|(m, n)| (m.clone(), MailboxCounts { delivered: *n }))
                .collect(),
            failures: Failures {
                total: b.failures(),
                shown: items.len() as u64,
                items,
            },
            eta,
            first_event_at: b.first_event_at,
            last_event_at: b.last_event_at,
        })
    }

    /// Jobs not finished in batches other than `id` (they compete for the same pool).
    pub fn remaining_elsewhere(&self, id: &BatchId) -> u64 {
        self.batches
            .values()
            .filter(|b| &b.batch != id)
            .map(BatchStatus::remaining)
            .sum()
    }

    /// Forgets batches whose last event is older than `cutoff` (the events stream forgot
    /// them too, after its retention) with their jobs, and jobs without a batch that old.
    /// Jobs of batches still alive are kept, so a late event never counts a job twice.
    pub fn prune_before(&mut self, cutoff: DateTime<Utc>) -> usize {
        let before = self.jobs.len() + self.batches.len();
        self.batches.retain(|_, b| b.last_event_at >= cutoff);
        let batches = &self.batches;
        self.jobs.retain(|_, j| {
            j.updated_at >= cutoff || j.batch.as_ref().is_some_and(|b| batches.contains_key(b))
        });
        before - self.jobs.len() - self.batches.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn ev(job: &str, batch: Option<&str>, kind: EventKind, secs: i64) -> DeliveryEvent {
        let mut e = DeliveryEvent::new(
            JobId::parse(job).unwrap(),
            batch.map(|b| BatchId::parse(b).unwrap()),
            kind,
        );
        e.at = DateTime::<Utc>::from_timestamp(1_800_000_000 + secs, 0).unwrap();
        e
    }

    fn counts(ix: &StatusIndex, b: &str) -> (u64, [u64; 5]) {
        let s = ix.batch(&BatchId::parse(b).unwrap()).unwrap();
        (s.jobs, KINDS.map(|k| s.counts.get(k)))
    }

    #[test]
    fn a_job_moves_through_its_events_and_the_batch_counts_follow() {
        let mut ix = StatusIndex::new();
        assert!(ix.apply(&ev("a", Some("b1"), EventKind::Accepted, 0)));
        assert!(ix.apply(&ev("b", Some("b1"), EventKind::Accepted, 0)));
        assert!(ix.apply(&ev("a", Some("b1"), EventKind::Rendered, 1)));
        assert!(ix.apply(&ev("a", Some("b1"), EventKind::Delivered, 2)));
        assert_eq!(counts(&ix, "b1"), (2, [1, 0, 1, 0, 0]));
        assert_eq!(
            ix.job(&JobId::parse("a").unwrap()).unwrap().status,
            EventKind::Delivered
        );
        assert_eq!(
            ix.batch(&BatchId::parse("b1").unwrap()).unwrap().finished(),
            1
        );
    }

    #[test]
    fn delivered_is_final_even_when_an_earlier_stage_is_stamped_later() {
        // Another host's clock may stamp `rendered` after `delivered`.
        let mut ix = StatusIndex::new();
        ix.apply(&ev("a", Some("b1"), EventKind::Accepted, 0));
        ix.apply(&ev("a", Some("b1"), EventKind::Delivered, 1));
        assert!(!ix.apply(&ev("a", Some("b1"), EventKind::Rendered, 2)));
        assert_eq!(
            ix.job(&JobId::parse("a").unwrap()).unwrap().status,
            EventKind::Delivered
        );
        assert_eq!(
            ix.batch(&BatchId::parse("b1").unwrap()).unwrap().finished(),
            1
        );
    }

    #[test]
    fn a_final_event_wins_whatever_its_stamp_and_only_delivered_follows_failed() {
        let id = |j: &str| JobId::parse(j).unwrap();
        let mut ix = StatusIndex::new();
        // A duplicate render stamped after the delivery arrives first.
        ix.apply(&ev("a", Some("b"), EventKind::Rendered, 5));
        assert!(ix.apply(&ev("a", Some("b"), EventKind::Delivered, 3)));
        assert_eq!(ix.job(&id("a")).unwrap().status, EventKind::Delivered);
        // Failed stays failed against later non-final events...
        ix.apply(&ev("f", Some("b"), EventKind::Failed, 2));
        assert!(!ix.apply(&ev("f", Some("b"), EventKind::Retrying, 4)));
        assert!(!ix.apply(&ev("f", Some("b"), EventKind::Rendered, 6)));
        assert_eq!(ix.job(&id("f")).unwrap().status, EventKind::Failed);
        assert_eq!(counts(&ix, "b"), (2, [0, 0, 1, 0, 1]));
        assert!(ix.batch(&BatchId::parse("b").unwrap()).unwrap().remaining() == 0);
        // ...but a replayed dead letter that is then delivered is delivered.
        assert!(ix.apply(&ev("f", Some("b"), EventKind::Delivered, 7)));
        assert!(!ix.apply(&ev("f", Some("b"), EventKind::Failed, 8)));
        assert_eq!(counts(&ix, "b"), (2, [0, 0, 2, 0, 0]));
    }

    #[test]
    fn replays_duplicates_and_late_events_change_nothing() {
        let mut ix = StatusIndex::new();
        let events = [
            ev("a", Some("b1"), EventKind::Accepted, 0),
            ev("a", Some("b1"), EventKind::Rendered, 1),
            ev("a", Some("b1"), EventKind::Delivered, 3),
        ];
        for e in &events {
            ix.apply(e);
        }
        for e in &events {
            assert!(!ix.apply(e), "replaying {e:?} changed the index");
        }
        assert!(
            !ix.apply(&ev("a", Some("b1"), EventKind::Accepted, 9)),
            "a second accept is a duplicate"
        );
        assert!(
            !ix.apply(&ev("a", Some("b1"), EventKind::Retrying, 2)),
            "an older retry arrives late"
        );
        assert_eq!(counts(&ix, "b1"), (1, [0, 0, 1, 0, 0]));
    }

    #[test]
    fn events_out_of_order_end_in_the_same_state() {
        let events = [
            ev("a", Some("b"), EventKind::Accepted, 0),
            ev("a", Some("b"), EventKind::Rendered, 1),
            ev("a", Some("b"), EventKind::Retrying, 2),
            ev("a", Some("b"), EventKind::Failed, 3),
            ev("c", Some("b"), EventKind::Accepted, 1),
        ];
        let mut forward = StatusIndex::new();
        events.iter().for_each(|e| {
            forward.apply(e);
        });
        let mut backward = StatusIndex::new();
        events.iter().rev().for_each(|e| {
            backward.apply(e);
        });
        assert_eq!(counts(&forward, "b"), counts(&backward, "b"));
        assert_eq!(counts(&forward, "b"), (2, [1, 0, 0, 0, 1]));
    }

    #[test]
    fn a_batch_learned_from_a_later_event_is_counted_once() {
        let mut ix = StatusIndex::new();
        ix.apply(&ev("a", None, EventKind::Accepted, 0));
        ix.apply(&ev("a", Some("b"), EventKind::Rendered, 1));
        ix.apply(&ev("a", Some("b"), EventKind::Delivered, 2));
        assert_eq!(counts(&ix, "b"), (1, [0, 0, 1, 0, 0]));
    }

    #[test]
    fn pruning_forgets_what_the_stream_forgot() {
        let mut ix = StatusIndex::new();
        ix.apply(&ev("old", Some("b0"), EventKind::Delivered, 0));
        ix.apply(&ev("new", Some("b1"), EventKind::Accepted, 100));
        ix.prune_before(
            DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap() + Duration::seconds(50),
        );
        assert!(ix.job(&JobId::parse("old").unwrap()).is_none());
        assert!(ix.batch(&BatchId::parse("b0").unwrap()).is_none());
        assert_eq!(ix.jobs_known(), 1);
    }

    #[test]
    fn pruning_keeps_the_jobs_of_live_batches() {
        let mut ix = StatusIndex::new();
        ix.apply(&ev("early", Some("b"), EventKind::Delivered, 0));
        ix.apply(&ev("late", Some("b"), EventKind::Accepted, 100));
        ix.prune_before(
            DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap() + Duration::seconds(50),
        );
        assert!(ix.job(&JobId::parse("early").unwrap()).is_some());
        // A late replay of the early job's event does not count it twice.
        ix.apply(&ev("early", Some("b"), EventKind::Delivered, 0));
        assert_eq!(counts(&ix, "b"), (2, [1, 0, 1, 0, 0]));
    }

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn accepted(job: &str, batch: &str, recipients: u32, secs: i64) -> DeliveryEvent {
        let mut e = ev(job, Some(batch), EventKind::Accepted, secs);
        e.recipients = recipients;
        e
    }

    fn delivered(
        job: &str,
        batch: &str,
        mailbox: &str,
        recipients: u32,
        secs: i64,
    ) -> DeliveryEvent {
        let mut e = ev(job, Some(batch), EventKind::Delivered, secs);
        e.mailbox = Some(EmailAddress::parse(mailbox).unwrap());
        e.recipients = recipients;
        e.smtp = Some(SmtpReply::new(250, "2.6.0 Queued mail for delivery"));
        e
    }

    fn failed(job: &str, batch: &str, secs: i64) -> DeliveryEvent {
        let mut e = ev(job, Some(batch), EventKind::Failed, secs);
        e.mailbox = Some(EmailAddress::parse("a@pool.example").unwrap());
        e.smtp = Some(SmtpReply::new(
            550,
            "5.1.1 RESOLVER.ADR.RecipNotFound; not found",
        ));
        e.reason =
            Some("refused by the server: 550 5.1.1 RESOLVER.ADR.RecipNotFound; not found".into());
        e.attempt = 1;
        e
    }

    #[test]
    fn counts_serialise_as_a_map_by_kind_with_dead() {
        let mut ix = StatusIndex::new();
        ix.apply(&ev("a", Some("b"), EventKind::Accepted, 0));
        ix.apply(&failed("f", "b", 1));
        let json =
            serde_json::to_value(ix.report(&BatchId::parse("b").unwrap(), t(2)).unwrap()).unwrap();
        assert_eq!(json["counts"]["accepted"], 1);
        assert_eq!(json["counts"]["failed"], 1);
        assert_eq!(json["counts"]["dead"], 1);
        assert_eq!(json["jobs"], 2);
        assert_eq!(json["remaining"], 1);
        assert_eq!(json["finished"], false);
        assert_eq!(json["eta"]["eta_seconds"], serde_json::Value::Null);
        assert!(
            json["eta"]["reason"]
                .as_str()
                .unwrap()
                .contains("[deliver]"),
            "{json}"
        );
    }

    #[test]
    fn per_mailbox_and_failures_follow_the_jobs() {
        let mut ix = StatusIndex::new();
        for (i, j) in ["j1", "j2", "j3", "j4"].iter().enumerate() {
            ix.apply(&accepted(j, "b", 2, i as i64));
        }
        ix.apply(&delivered("j1", "b", "a@pool.example", 2, 10));
        ix.apply(&delivered("j2", "b", "b@pool.example", 2, 11));
        let mut partial = delivered("j3", "b", "a@pool.example", 1, 12);
        partial.refused_recipients = vec![RecipientRefusal {
            address: EmailAddress::parse("gone@example.com").unwrap(),
            reply: SmtpReply::new(550, "5.1.1 unknown"),
        }];
        ix.apply(&partial);
        ix.apply(&failed("j4", "b", 13));
        let r = ix.report(&BatchId::parse("b").unwrap(), t(20)).unwrap();
        assert!(r.finished);
        let a = EmailAddress::parse("a@pool.example").unwrap();
        assert_eq!(r.per_mailbox[&a].delivered, 2);
        assert_eq!(r.per_mailbox.len(), 2);
        assert_eq!(r.failures.total, 2);
        let ids: Vec<&str> = r.failures.items.iter().map(|f| f.job_id.as_str()).collect();
        assert_eq!(ids, ["j3", "j4"], "oldest first");
        assert_eq!(r.failures.items[0].status, EventKind::Delivered);
        assert_eq!(r.failures.items[0].refused_recipients.len(), 1);
        assert_eq!(
            r.failures.items[1]
                .smtp
                .as_ref()
                .unwrap()
                .enhanced
                .as_deref(),
            Some("5.1.1")
        );
        assert_eq!(r.eta.eta_seconds, Some(0.0));
        // A failed job replayed and delivered later leaves the failures.
        ix.apply(&delivered("j4", "b", "b@pool.example", 2, 30));
        let r = ix.report(&BatchId::parse("b").unwrap(), t(31)).unwrap();
        assert_eq!(r.failures.total, 1);
        assert_eq!(r.counts.get(EventKind::Failed), 0);
        assert_eq!(
            r.per_mailbox[&EmailAddress::parse("b@pool.example").unwrap()].delivered,
            2
        );
    }

    #[test]
    fn failures_are_bounded_but_counted() {
        let mut ix = StatusIndex::new();
        for i in 0..150 {
            ix.apply(&failed(&format!("f{i:03}"), "b", i));
        }
        let r = ix.report(&BatchId::parse("b").unwrap(), t(200)).unwrap();
        assert_eq!(
            (r.failures.total, r.failures.shown, r.failures.items.len()),
            (150, 100, 100)
        );
        assert_eq!(r.failures.items[0].job_id.as_str(), "f000");
    }

    #[test]
    fn the_eta_comes_from_the_pool_and_what_its_mailboxes_sent() {
        use crate::eta::MailboxCapacity;
        // Two mailboxes, 0.5 msg/s each, 100 recipients per 1,440 s window.
        let m = |a: &str| MailboxCapacity {
            address: EmailAddress::parse(a).unwrap(),
            messages_per_second: 0.5,
            recipients_per_window: 100,
            recipient_window_ms: 1_440_000,
        };
        let mut ix = StatusIndex::with_pool(Ok(PoolCapacity {
            mailboxes: vec![m("a@pool.example"), m("b@pool.example")],
        }));
        // An earlier batch used 90 of a's and 100 of b's quota.
        ix.apply(&delivered("old-1", "old", "a@pool.example", 90, 0));
        ix.apply(&delivered("old-2", "old", "b@pool.example", 100, 500));
        ix.apply(&delivered("old-2", "old", "b@pool.example", 100, 500)); // replayed: counted once
        // This batch: 30 jobs of 2 recipients; 5 delivered through a (10 recipients).
        for i in 0..30 {
            ix.apply(&accepted(&format!("n{i}"), "new", 2, 600));
        }
        for i in 0..5 {
            ix.apply(&delivered(
                &format!("n{i}"),
                "new",
                "a@pool.example",
                2,
                601,
            ));
        }
        let r = ix.report(&BatchId::parse("new").unwrap(), t(700)).unwrap();
        // Left: 25 jobs, 50 recipients; a has 100 - 100 = 0, b 0: nothing available.
        // a's 90 (bucket ending at 1 s) leave at 1441 s: 90 available >= 50. Wait 741 s.
        assert_eq!(r.eta.jobs_left, 25);
        assert_eq!(r.eta.recipients_left, 50);
        assert_eq!(r.eta.pool_messages_per_second, Some(1.0));
        assert_eq!(r.eta.pool_recipients_available, Some(0));
        assert_eq!(r.eta.rate_seconds, Some(25.0));
        assert_eq!(r.eta.quota_wait_seconds, Some(741.0));
        assert_eq!(r.eta.eta_seconds, Some(741.0));
        assert_eq!(r.eta.eta_at, Some(t(1441)));
        // Unknown recipient counts take the batch's average.
        ix.apply(&ev("n30", Some("new"), EventKind::Rendered, 702));
        assert_eq!(
            ix.report(&BatchId::parse("new").unwrap(), t(703))
                .unwrap()
                .eta
                .recipients_left,
            52
        );
    }
}
