//! What is known about jobs and batches so far, built from delivery events. Pure: no
//! I/O, fed by `apply(event)` (from the events stream and from ingest's own accepts), so
//! it can be tested and extended (per-mailbox counts, ETA) without a broker.
//!
//! A job's status is its latest event. "Latest" is by the event's `at`, not by arrival:
//! events of one job are written by different processes, and a replay or a redelivery
//! may bring an older event after a newer one. An `accepted` event never replaces a
//! status already known (a second accept is a duplicate, not a regression). Applying the
//! same event twice changes nothing, so replays are harmless.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use mailpipe_common::contract::{DeliveryEvent, EventKind};
use mailpipe_common::domain::{BatchId, JobId};
use serde::Serialize;

const KINDS: [EventKind; 5] = [EventKind::Accepted, EventKind::Rendered, EventKind::Delivered, EventKind::Retrying, EventKind::Failed];

fn slot(kind: EventKind) -> usize {
    match kind {
        EventKind::Accepted => 0,
        EventKind::Rendered => 1,
        EventKind::Delivered => 2,
        EventKind::Retrying => 3,
        EventKind::Failed => 4,
    }
}

/// Jobs per current status, for one batch.
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
        let mut m = s.serialize_map(Some(KINDS.len()))?;
        for k in KINDS {
            m.serialize_entry(&k, &self.get(k))?;
        }
        m.end()
    }
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
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchStatus {
    pub batch: BatchId,
    /// Jobs known in this batch.
    pub jobs: u64,
    /// Jobs by current status.
    pub counts: KindCounts,
    pub first_event_at: DateTime<Utc>,
    pub last_event_at: DateTime<Utc>,
}

impl BatchStatus {
    fn new(batch: BatchId, at: DateTime<Utc>) -> Self {
        Self { batch, jobs: 0, counts: KindCounts::default(), first_event_at: at, last_event_at: at }
    }

    /// Jobs that reached an end (delivered or failed).
    pub fn finished(&self) -> u64 {
        self.counts.get(EventKind::Delivered) + self.counts.get(EventKind::Failed)
    }
}

#[derive(Debug, Default)]
pub struct StatusIndex {
    jobs: HashMap<JobId, JobStatus>,
    batches: HashMap<BatchId, BatchStatus>,
}

impl StatusIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Folds one event in. Returns whether the job's status changed.
    pub fn apply(&mut self, e: &DeliveryEvent) -> bool {
        let detail = e.smtp.as_ref().map(|r| format!("{} {}", r.code, r.text)).or_else(|| e.reason.clone());
        let (previous, batch) = match self.jobs.get_mut(&e.job_id) {
            Some(job) => {
                let newer = e.at > job.updated_at || (e.at == job.updated_at && e.kind != job.status);
                if e.kind == EventKind::Accepted || !newer {
                    // Still learn the batch if only a later event carried it.
                    if job.batch.is_none() && e.batch.is_some() {
                        job.batch = e.batch.clone();
                        let b = job.batch.clone();
                        let kind = job.status;
                        self.count_new_job(b.as_ref(), kind, e.at);
                    }
                    return false;
                }
                let previous = job.status;
                job.status = e.kind;
                job.updated_at = e.at;
                job.attempt = job.attempt.max(e.attempt);
                if detail.is_some() || matches!(e.kind, EventKind::Delivered) {
                    job.detail = detail;
                }
                if job.batch.is_none() {
                    job.batch = e.batch.clone();
                    let b = job.batch.clone();
                    self.count_new_job(b.as_ref(), e.kind, e.at);
                    return true;
                }
                (Some(previous), job.batch.clone())
            }
            None => {
                self.jobs.insert(
                    e.job_id.clone(),
                    JobStatus { id: e.job_id.clone(), batch: e.batch.clone(), status: e.kind, updated_at: e.at, attempt: e.attempt, detail },
                );
                (None, e.batch.clone())
            }
        };
        match previous {
            None => self.count_new_job(batch.as_ref(), e.kind, e.at),
            Some(previous) => {
                if let Some(b) = batch.and_then(|b| self.batches.get_mut(&b)) {
                    b.counts.remove(previous);
                    b.counts.add(e.kind);
                    b.last_event_at = b.last_event_at.max(e.at);
                    b.first_event_at = b.first_event_at.min(e.at);
                }
            }
        }
        true
    }

    fn count_new_job(&mut self, batch: Option<&BatchId>, kind: EventKind, at: DateTime<Utc>) {
        if let Some(b) = batch {
            let entry = self.batches.entry(b.clone()).or_insert_with(|| BatchStatus::new(b.clone(), at));
            entry.jobs += 1;
            entry.counts.add(kind);
            entry.last_event_at = entry.last_event_at.max(at);
            entry.first_event_at = entry.first_event_at.min(at);
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

    /// Forgets jobs and batches whose last event is older than `cutoff` (the events
    /// stream forgets them too, after its retention).
    pub fn prune_before(&mut self, cutoff: DateTime<Utc>) {
        self.jobs.retain(|_, j| j.updated_at >= cutoff);
        self.batches.retain(|_, b| b.last_event_at >= cutoff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    fn ev(job: &str, batch: Option<&str>, kind: EventKind, secs: i64) -> DeliveryEvent {
        let mut e = DeliveryEvent::new(JobId::parse(job).unwrap(), batch.map(|b| BatchId::parse(b).unwrap()), kind);
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
        assert_eq!(ix.job(&JobId::parse("a").unwrap()).unwrap().status, EventKind::Delivered);
        assert_eq!(ix.batch(&BatchId::parse("b1").unwrap()).unwrap().finished(), 1);
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
        assert!(!ix.apply(&ev("a", Some("b1"), EventKind::Accepted, 9)), "a second accept is a duplicate");
        assert!(!ix.apply(&ev("a", Some("b1"), EventKind::Retrying, 2)), "an older retry arrives late");
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
        ix.prune_before(DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap() + Duration::seconds(50));
        assert!(ix.job(&JobId::parse("old").unwrap()).is_none());
        assert!(ix.batch(&BatchId::parse("b0").unwrap()).is_none());
        assert_eq!(ix.jobs_known(), 1);
    }

    #[test]
    fn counts_serialise_as_a_map_by_kind() {
        let mut ix = StatusIndex::new();
        ix.apply(&ev("a", Some("b"), EventKind::Accepted, 0));
        let json = serde_json::to_value(ix.batch(&BatchId::parse("b").unwrap()).unwrap()).unwrap();
        assert_eq!(json["counts"]["accepted"], 1);
        assert_eq!(json["counts"]["failed"], 0);
        assert_eq!(json["jobs"], 1);
    }
}
