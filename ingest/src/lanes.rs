//! Which deliver queue an accepted job will wait in: its lane (the job's own `lane`, else
//! `transactional` for the templates `ingest.transactional_templates` names, else `bulk`)
//! and, for bulk, the queue its batch was given by turn (`contract::DeliverQueue`).

use std::collections::{HashMap, HashSet};

use mailpipe_common::contract::{DeliverQueue, Job, Lane};
use mailpipe_common::store::{Store, StoreError};

#[derive(Debug, Clone, Default)]
pub struct LanePolicy {
    transactional_templates: HashSet<String>,
    bulk_queues: u16,
}

impl LanePolicy {
    pub fn new(transactional_templates: &[String], bulk_queues: u16) -> Self {
        Self {
            transactional_templates: transactional_templates.iter().cloned().collect(),
            bulk_queues,
        }
    }

    pub fn lane_of(&self, job: &Job) -> Lane {
        job.lane.unwrap_or_else(|| {
            if self.transactional_templates.contains(job.template.as_str()) {
                Lane::Transactional
            } else {
                Lane::Bulk
            }
        })
    }
}

/// The lane decisions of one publish: batch turns are read once per batch.
#[derive(Debug, Default)]
pub struct LaneAssigner {
    policy: LanePolicy,
    turns: HashMap<String, i64>,
}

impl LaneAssigner {
    pub fn new(policy: LanePolicy) -> Self {
        Self {
            policy,
            turns: HashMap::new(),
        }
    }

    /// Sets `job.lane` and `job.bulk_queue` for each job (after the claim, which recorded
    /// their batches, and after the content hash: neither is the client's content).
    pub async fn assign(&mut self, store: &Store, jobs: &mut [Job]) -> Result<(), StoreError> {
        let missing: Vec<&str> = jobs
            .iter()
            .filter_map(|j| j.batch.as_ref().map(|b| b.as_str()))
            .filter(|b| !self.turns.contains_key(*b))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if !missing.is_empty() {
            self.turns.extend(store.batch_turns(&missing).await?);
        }
        for job in jobs {
            let lane = self.policy.lane_of(job);
            job.lane = Some(lane);
            let turn = job.batch.as_ref().and_then(|b| self.turns.get(b.as_str()));
            job.bulk_queue = match (lane, turn) {
                (Lane::Bulk, Some(&turn)) => {
                    Some(DeliverQueue::bulk_of_turn(turn, self.policy.bulk_queues))
                }
                _ => None,
            };
        }
        Ok(())
    }
}
