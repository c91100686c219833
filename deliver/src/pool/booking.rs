//! Booking a send: `acquire` waits exactly until an eligible mailbox has room (a timer for
//! time-bound waits, a notification for releases: no polling), in the waiting line's
//! order, and returns a [`Lease`] (a send slot: quota and a connection) that `finish`,
//! `release_unsent` or its `Drop` gives back.

use super::*;

/// A reserved send: one mailbox, its quota and one connection. Give it back with
/// [`MailboxPool::finish`] (or [`MailboxPool::release_unsent`] when nothing was sent). A
/// lease dropped without either (an early return, a cancelled future) is finished by its
/// `Drop` as counted: its quota is kept, as the server may have counted it, and its
/// connection slot frees, so no error path can leave a mailbox's slot taken for good.
#[derive(Debug)]
pub struct Lease<'p> {
    pub idx: usize,
    reservation: Option<Reservation>,
    ticket: SendTicket,
    pool: &'p MailboxPool,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(reservation) = self.reservation.take() {
            tracing::debug!(mailbox = %self.pool.mailboxes[self.idx].address, "a send slot was dropped unfinished; counted and freed");
            self.pool.settle(reservation, Completion::Counted);
        }
    }
}

impl Lease<'_> {
    /// What this send's outcome is reported with ([`MailboxPool::mark_healthy`],
    /// [`MailboxPool::hold_mailbox`]) after the lease is finished.
    pub fn ticket(&self) -> SendTicket {
        self.ticket
    }
}

/// The right to send through a mailbox: its lease's fencing token, and until when this
/// process may start a send's data (the lease's end on the local clock, less a margin).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    pub token: i64,
    pub until: Instant,
}

/// Why `acquire` gives a message up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcquireError {
    /// No mailbox of the pool could ever send it.
    Impossible(Impossible),
    /// Only mailboxes other deliver processes own could send it: it goes back to the
    /// queue for them.
    OwnedElsewhere,
}

/// Whether the server may have counted the send (see `SmtpFailure::maybe_accepted`).
#[derive(Debug, Clone, Copy)]
pub enum Completion {
    Counted,
    NotCounted,
}

/// Longest a waiter behind others in line sleeps before it looks again.
const LINE_RECHECK: Duration = Duration::from_secs(1);

/// What a waiter in [`MailboxPool::acquire`] waits for.
enum Wait {
    /// The instant the pool admits it.
    Until(Millis),
    /// A send in flight to finish.
    Release,
    /// Its turn in the line.
    Line,
}

/// A waiter's place in the line; leaves it when the waiter is dropped (the message went
/// back to the queue, or the process stops) so that the next in line may pick.
struct InLine<'a> {
    pool: &'a MailboxPool,
    place: Place,
}

impl InLine<'_> {
    /// The waiter got its mailbox (and left the line in the same step).
    fn served(self) {
        std::mem::forget(self);
    }
}

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        self.pool.book().line.leave(self.place);
        self.pool.changed.notify_waiters();
    }
}

impl MailboxPool {
    /// Whether a mailbox owned here could send `meta`.
    pub(super) fn owned_here_may_send(&self, meta: &RenderedMeta) -> bool {
        self.mailboxes
            .iter()
            .enumerate()
            .any(|(i, m)| m.may_send(meta, self.policy) && self.lock_fence(i).is_some())
    }

    /// The eligibility class of the mailboxes that may send `meta`, registered on first use
    /// of its (group, From) key.
    pub(super) fn class_of(&self, book: &mut Book, meta: &RenderedMeta) -> ClassId {
        let Book {
            schedule, classes, ..
        } = book;
        classes.get_or_register(EligibilityKey::of(meta, self.policy), || {
            schedule.class(
                self.mailboxes
                    .iter()
                    .enumerate()
                    .filter(|(_, m)| m.may_send(meta, self.policy))
                    .map(|(i, _)| i),
            )
        })
    }

    /// Waits until a mailbox may send `meta` and reserves it. `Err` when no mailbox ever
    /// could, or when only mailboxes owned by other processes could for a while.
    ///
    /// Waiters of one eligibility class pick in the order of the [`WaitingLine`]:
    /// transactional messages first, bulk batches in turn.
    pub async fn acquire(&self, meta: &RenderedMeta) -> Result<Lease<'_>, AcquireError> {
        let recipients = meta.recipients.len() as u64;
        let mut elsewhere_since: Option<Instant> = None;
        let mut place: Option<InLine<'_>> = None;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = now_millis();
            let wait_until = {
                let mut book = self.book();
                let at = match place.as_ref() {
                    Some(p) => p.place,
                    None => {
                        let class = self.class_of(&mut book, meta);
                        let at = book.line.join(class, meta);
                        place = Some(InLine {
                            pool: self,
                            place: at,
                        });
                        at
                    }
                };
                if !book.line.is_first(at) {
                    Wait::Line
                } else {
                    let external = self.external_count(&book.schedule, &meta.recipients);
                    match book.schedule.pick(now, recipients, external, at.class()) {
                        Pick::Mailbox(idx, reservation) => {
                            book.line.granted(at);
                            if let Some(p) = place.take() {
                                p.served();
                            }
                            let lease = self.lease(&mut book, now, idx, reservation);
                            drop(book);
                            // The next in line may pick now.
                            self.changed.notify_waiters();
                            return Ok(lease);
                        }
                        Pick::Impossible(why) => return Err(AcquireError::Impossible(why)),
                        Pick::WaitUntil(at) => Wait::Until(at),
                        Pick::WaitForRelease => Wait::Release,
                    }
                }
            };
            let wait_until = match wait_until {
                Wait::Until(at) => Some(at),
                Wait::Release => None,
                Wait::Line if self.owned_here_may_send(meta) => {
                    elsewhere_since = None;
                    // Woken when the one ahead picks or leaves; the bounded wait is a
                    // safety net only (a turn never depends on it).
                    tokio::select! {
                        _ = tokio::time::sleep(LINE_RECHECK) => {}
                        _ = &mut notified => {}
                    }
                    continue;
                }
                // Behind others, and only other processes' mailboxes could send it: the
                // hand-back below runs for every waiter at once, not one after another.
                Wait::Line => None,
            };
            match wait_until {
                Some(at) => {
                    elsewhere_since = None;
                    let wait = at.saturating_duration_since(now);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = &mut notified => {}
                    }
                }
                None if self.owned_here_may_send(meta) => {
                    elsewhere_since = None;
                    notified.await;
                }
                None => {
                    // Only mailboxes of other processes could take it: wait a little (a
                    // lease may be on its way here), then hand it back to the queue.
                    let since = *elsewhere_since.get_or_insert_with(Instant::now);
                    let left = self.elsewhere_grace.saturating_sub(since.elapsed());
                    if left.is_zero() {
                        return Err(AcquireError::OwnedElsewhere);
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(left) => {}
                        _ = &mut notified => {}
                    }
                }
            }
        }
    }

    /// The lease of a picked mailbox. A mailbox on probation is held at once for its probe, in
    /// the same step as the pick: nobody else picks it until the probe's verdict.
    pub(super) fn lease(
        &self,
        book: &mut Book,
        now: Millis,
        idx: usize,
        reservation: Reservation,
    ) -> Lease<'_> {
        let until = now + self.probe_limit(idx);
        let (ticket, probe_hold) = book.health[idx].start(idx, reservation.id(), until);
        if let Some(hold) = probe_hold {
            let _ = book.schedule.set_state(idx, hold);
            tracing::info!(mailbox = %self.mailboxes[idx].address, episodes = book.health[idx].episodes(), "probing a re-admitted mailbox with one send");
        }
        Lease {
            idx,
            reservation: Some(reservation),
            ticket,
            pool: self,
        }
    }

    /// Ends a send: its quota counts from now (if the server may have counted it) or is
    /// given back; its connection slot frees; waiters re-check. A probe's hold stays: its
    /// verdict follows ([`Self::mark_healthy`], [`Self::hold_mailbox`], a tenant hold), so no
    /// other send slips in between.
    pub fn finish(&self, mut lease: Lease<'_>, completion: Completion) {
        if let Some(reservation) = lease.reservation.take() {
            self.settle(reservation, completion);
        }
    }

    /// Gives a reservation's quota back or counts it, frees its slot, wakes the waiters.
    pub(super) fn settle(&self, reservation: Reservation, completion: Completion) {
        let result = {
            let mut book = self.book();
            match completion {
                // Rounded up to the next millisecond: instants are whole milliseconds, and a
                // truncated completion could let the next send in up to 1 ms early.
                Completion::Counted => book.schedule.settle(reservation, now_millis().plus_ms(1)),
                Completion::NotCounted => book.schedule.release(reservation),
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "throttle bookkeeping error");
        }
        self.changed.notify_waiters();
    }

    /// Ends a send that never went out (the record said not to send): quota and slot are
    /// given back, and a probe's hold is lifted with the mailbox still on probation, so the
    /// next send probes it.
    pub fn release_unsent(&self, lease: Lease<'_>) {
        let ticket = lease.ticket;
        self.finish(lease, Completion::NotCounted);
        let lifted = {
            let mut book = self.book();
            let hold = book.health[ticket.idx].released(&ticket);
            book.lift(ticket.idx, hold)
        };
        if lifted {
            self.changed.notify_waiters();
        }
    }
}
