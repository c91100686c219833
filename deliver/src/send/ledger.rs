//! What deliver keeps in memory about sends. The quota windows are rebuilt from the
//! write-ahead record, one mailbox at a time when its lease is taken (`ownership`);
//! whether a job was delivered, or its last send is uncertain, is asked of the record
//! before each send (`Store::send_check`, `Store::unsettled_send`). Only what could not
//! be recorded yet lives here.

use std::collections::HashMap;
use std::sync::Mutex;

use mailpipe_common::contract::DeliveryEvent;
use mailpipe_common::domain::JobId;
use mailpipe_common::store::SendOutcome;
use uuid::Uuid;

/// Jobs this process delivered whose `delivered` record is not written yet (the write
/// failed, and the message came back): the record is written again, the mail never.
/// Once recorded a job leaves this map: the record answers for it from then on
/// (`Store::send_check` before every send), so memory does not grow with what was sent.
#[derive(Debug, Default)]
pub struct DeliveredJobs {
    pending: Mutex<HashMap<JobId, PendingRecord>>,
}

/// A delivered send not yet on record: the send, its outcome and its job's event.
type PendingRecord = (Uuid, SendOutcome, DeliveryEvent);

impl DeliveredJobs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, PendingRecord>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The send and `delivered` event of a job sent here and not yet recorded.
    pub fn pending(&self, id: &JobId) -> Option<PendingRecord> {
        self.lock().get(id).cloned()
    }

    /// Delivered, not yet recorded: kept so the record can be written again.
    pub fn insert_pending(&self, send: Uuid, outcome: SendOutcome, event: DeliveryEvent) {
        self.lock()
            .insert(event.job_id.clone(), (send, outcome, event));
    }

    /// Recorded: the database answers for it now.
    pub fn mark_recorded(&self, id: &JobId) {
        self.lock().remove(id);
    }

    /// Jobs delivered here and not yet recorded.
    pub fn pending_len(&self) -> usize {
        self.lock().len()
    }
}
