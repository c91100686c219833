//! Jobs in a send in this process: one job is in at most one send at a time.
//!
//! A job can reach deliver twice at once (a duplicate publish, a redelivery after a
//! reconnect). The delivered-jobs check runs before a send and the mark after it, so two
//! copies handled concurrently would both pass the check: a copy first claims its job id,
//! and a second copy waits until the first is done, then checks again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use mailpipe_common::domain::JobId;
use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct JobClaims {
    held: Mutex<HashMap<JobId, Arc<Notify>>>,
}

/// The claim on one job id; released when dropped (whatever the outcome).
#[derive(Debug)]
pub struct JobClaim<'a> {
    claims: &'a JobClaims,
    id: JobId,
}

impl JobClaims {
    fn lock(&self) -> MutexGuard<'_, HashMap<JobId, Arc<Notify>>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims `id`, waiting while another copy of the job holds it.
    pub async fn claim(&self, id: &JobId) -> JobClaim<'_> {
        loop {
            let released = {
                let mut held = self.lock();
                match held.get(id) {
                    Some(notify) => {
                        // Registered under the lock: a release after it cannot be missed.
                        let mut released = Box::pin(Arc::clone(notify).notified_owned());
                        released.as_mut().enable();
                        released
                    }
                    None => {
                        held.insert(id.clone(), Arc::new(Notify::new()));
                        return JobClaim {
                            claims: self,
                            id: id.clone(),
                        };
                    }
                }
            };
            released.await;
        }
    }

    /// Jobs claimed now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for JobClaim<'_> {
    fn drop(&mut self) {
        if let Some(notify) = self.claims.lock().remove(&self.id) {
            notify.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_second_copy_waits_for_the_first() {
        let claims = Arc::new(JobClaims::default());
        let id = JobId::parse("job-1").expect("valid id");
        let first = claims.claim(&id).await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let waiter = {
            let claims = Arc::clone(&claims);
            let id = id.clone();
            tokio::spawn(async move {
                let _second = claims.claim(&id).await;
                tx.send(()).expect("test alive");
            })
        };
        // The second copy cannot get the claim while the first holds it.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), rx.recv())
                .await
                .is_err()
        );
        drop(first);
        rx.recv().await.expect("second copy claims after the first");
        waiter.await.expect("no panic");
        assert!(claims.is_empty());
        // Another job is never held up.
        let _other = claims
            .claim(&JobId::parse("job-2").expect("valid id"))
            .await;
    }
}
