//! One batch import, shared by `POST /v1/batches` and `mailpipe-ingest submit`:
//!
//! 1. check: read the upload line by line on a blocking thread, validate each line, and
//!    spool the good jobs to an anonymous temp file (never the whole upload in memory);
//! 2. decide: with bad lines and all-or-nothing, stop here: nothing is published;
//! 3. claim: every id in the system of record (duplicates and conflicts are known now,
//!    before anything is published); with conflicts and all-or-nothing, stop here;
//! 4. publish: stream the spool through a `BatchSender` (chunks confirmed and recorded).
//!
//! Spooling also in partial mode keeps one rule for both: an upload that breaks off
//! halfway (client gone, size limit) publishes nothing.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufWriter, Read, Seek, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use mailpipe_common::amqp::PublishError;
use mailpipe_common::contract::{FieldError, Job};
use mailpipe_common::domain::{BatchId, JobId};
use mailpipe_common::store::{ClaimOutcome, Opener};
use serde::Serialize;
use tokio::io::AsyncBufReadExt;

use crate::batch_reader::{Format, LineError, ReadError, read_jobs};
use crate::metrics;
use crate::publish::{BatchSender, JobPublisher};
use crate::validate::Validator;

#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Every job gets this batch (jobs naming another batch are refused). A fresh id is
    /// made when absent, so the import can always be looked up.
    pub batch: Option<BatchId>,
    /// Accept the good lines even when some are bad.
    pub partial: bool,
    /// Refuse the upload once it grows past this many bytes.
    pub max_bytes: u64,
    /// The batch's callback URL, already checked. It is recorded only once the upload is
    /// known to be accepted (after the check and the claims, before anything is
    /// published), so a refused upload cannot re-point a batch's callback.
    pub callback_url: Option<String>,
    /// The submitting token's owner label, recorded on a batch this import creates.
    pub owner: Option<String>,
    /// The batch, when it exists, must be `owner`'s (a `submit` token).
    pub confined: bool,
}

/// Counters a progress display reads while an import runs.
#[derive(Debug, Default)]
pub struct Progress {
    pub bytes_read: AtomicU64,
    pub lines: AtomicU64,
    pub bad_lines: AtomicU64,
    pub publishing: AtomicBool,
    pub to_publish: AtomicU64,
    pub published: AtomicU64,
    pub duplicates: AtomicU64,
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    pub batch: BatchId,
    /// Non-blank lines read.
    pub lines: u64,
    /// Jobs published (confirmed by the broker).
    pub accepted: u64,
    /// Jobs whose id was accepted before with the same content (or appeared earlier in
    /// this upload, or is being accepted by another request right now): not published again.
    pub duplicates: u64,
    /// Jobs whose id was accepted before with different content: refused (409).
    pub conflicts: u64,
    /// Bad lines.
    pub rejected: u64,
    /// The first [`MAX_REPORTED_ERRORS`] problems, in line order.
    pub errors: Vec<LineError>,
    /// Every problem counted by kind (the field's top level: `to`, `data`, `csv`,
    /// `malformed`...), so a report stays small however bad the input.
    pub error_counts: BTreeMap<&'static str, u64>,
}

/// Problems listed one by one in a report; the rest are only counted.
pub const MAX_REPORTED_ERRORS: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// All-or-nothing and some lines were bad: nothing was published.
    #[error("{} of {} lines are bad; nothing was published", .0.rejected, .0.lines)]
    Rejected(ImportReport),
    /// All-or-nothing and some ids were accepted before with other content.
    #[error("{} job ids were accepted before with different content; nothing was published", .0.conflicts)]
    Conflict(ImportReport),
    /// The system of record is unreachable: nothing was published.
    #[error("{0}")]
    Unavailable(mailpipe_common::store::StoreError),
    /// The batch exists and is another owner's: nothing was published or written.
    #[error("batch {0} was created by another token owner")]
    NotYours(BatchId),
    #[error("CSV header: column {column:?}: {reason}")]
    Header { column: String, reason: String },
    #[error("the upload exceeds {limit} bytes")]
    TooLarge { limit: u64 },
    #[error(
        "CSV record starting at line {line} exceeds {limit} bytes (limits.max_job_bytes): an unterminated quote?"
    )]
    RecordTooLong { line: u64, limit: usize },
    #[error("reading the upload: {0}")]
    Io(std::io::Error),
    /// Publishing stopped partway; `report` says what was published before.
    #[error("publishing stopped after {} jobs: {source}", report.accepted)]
    Publish {
        report: ImportReport,
        source: PublishError,
    },
}

/// Read errors on purpose by `Limited`, told apart from the transport's.
#[derive(Debug)]
struct TooLarge;

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("upload too large")
    }
}

impl std::error::Error for TooLarge {}

/// Counts bytes for progress and stops at the size limit.
struct Limited<R> {
    inner: R,
    read: u64,
    limit: u64,
    progress: Arc<Progress>,
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        self.progress
            .bytes_read
            .fetch_add(n as u64, Ordering::Relaxed);
        if self.read > self.limit {
            return Err(std::io::Error::other(TooLarge));
        }
        Ok(n)
    }
}

struct Checked {
    spool: std::fs::File,
    valid: u64,
    lines: u64,
    duplicates: u64,
    rejected: u64,
    errors: Vec<LineError>,
    error_counts: BTreeMap<&'static str, u64>,
}

/// A fresh batch id for uploads that did not name one.
pub fn new_batch_id() -> BatchId {
    BatchId::parse(&format!("batch-{}", uuid::Uuid::now_v7().simple()))
        .expect("hex is a valid batch id")
}

/// Runs a whole import. `input` is read on a blocking thread.
pub async fn import<R: Read + Send + 'static>(
    input: R,
    format: Format,
    options: ImportOptions,
    validator: Arc<Validator>,
    publisher: &JobPublisher,
    progress: Arc<Progress>,
) -> Result<ImportReport, ImportError> {
    let (mut report, mut checked) =
        check_upload(input, format, &options, validator, progress.clone()).await?;
    if report.rejected > 0 && !options.partial {
        return Err(ImportError::Rejected(report));
    }

    let mut sender = publisher.sender();
    let skip = match claim_spool(&mut checked.spool, &sender, &mut report).await {
        Ok(skip) => skip,
        Err(e) => {
            sender.abandon().await;
            return Err(e);
        }
    };
    progress
        .duplicates
        .store(report.duplicates, Ordering::Relaxed);
    if report.rejected > 0 && !options.partial {
        // Suppressed recipients under the `refuse` policy.
        sender.abandon().await;
        return Err(ImportError::Rejected(report));
    }
    if report.conflicts > 0 && !options.partial {
        sender.abandon().await;
        return Err(ImportError::Conflict(report));
    }
    // Accepted from here on: the batch's row (owner, callback) is on record before any
    // job is published. An upload without one valid job writes none.
    if checked.valid > 0 {
        let opener = Opener {
            owner: options.owner.as_deref(),
            confined: options.confined,
        };
        let store = publisher.pipeline().store();
        let batch = report.batch.as_str();
        match store
            .open_batch(batch, opener, options.callback_url.as_deref())
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                sender.abandon().await;
                return Err(ImportError::NotYours(report.batch));
            }
            Err(e) => {
                sender.abandon().await;
                return Err(ImportError::Unavailable(e));
            }
        }
    }
    let to_publish = checked.valid.saturating_sub(skip.len() as u64);
    progress.to_publish.store(to_publish, Ordering::Relaxed);
    progress.publishing.store(true, Ordering::Relaxed);
    let result = publish_spool(checked.spool, &skip, &mut sender, &progress).await;
    let finished = match result {
        Ok(()) => sender.finish().await.map_err(Stop::Publish),
        Err(e) => Err(e),
    };
    report.accepted = sender.accepted;
    progress.published.store(sender.accepted, Ordering::Relaxed);
    if finished.is_err() {
        sender.abandon().await;
    }
    match finished {
        Ok(()) => Ok(report),
        Err(Stop::Publish(source)) => Err(ImportError::Publish { report, source }),
        Err(Stop::Spool(e)) => Err(ImportError::Io(e)),
    }
}

/// Jobs claimed per statement.
const CLAIM_CHUNK: usize = 1000;

/// Step 3: claims every spooled id; returns the ids not to publish (duplicates, in
/// flight elsewhere, conflicts) and counts them into the report. The next chunk is read
/// and parsed while the database claims the one before: ingest and PostgreSQL work at
/// once, and no statement holds more than one chunk.
async fn claim_spool(
    spool: &mut std::fs::File,
    sender: &BatchSender,
    report: &mut ImportReport,
) -> Result<HashSet<JobId>, ImportError> {
    let mut skip = HashSet::new();
    let mut reader = std::io::BufReader::with_capacity(256 * 1024, &*spool);
    let mut next = read_chunk(&mut reader).map_err(ImportError::Io)?;
    while !next.is_empty() {
        let chunk = std::mem::take(&mut next);
        let (claimed, read) = tokio::join!(claim_chunk(sender, chunk), async {
            read_chunk(&mut reader)
        });
        let claimed = claimed.map_err(|e| match e {
            PublishError::Store(s) => ImportError::Unavailable(*s),
            other => ImportError::Publish {
                report: report.clone(),
                source: other,
            },
        })?;
        claimed.tally(report, &mut skip);
        next = read.map_err(ImportError::Io)?;
    }
    drop(reader);
    spool.rewind().map_err(ImportError::Io)?;
    Ok(skip)
}

/// Up to [`CLAIM_CHUNK`] spooled jobs with their lines; empty at the end.
fn read_chunk(reader: &mut impl std::io::BufRead) -> std::io::Result<Vec<(u64, Job)>> {
    let mut chunk = Vec::with_capacity(CLAIM_CHUNK);
    while chunk.len() < CLAIM_CHUNK {
        match read_spooled(reader)? {
            Some(entry) => chunk.push(entry),
            None => break,
        }
    }
    Ok(chunk)
}

/// What claiming one chunk found, in line order.
struct ClaimedChunk {
    /// Refused for a suppressed recipient (`ingest.suppressed_recipients = "refuse"`):
    /// bad lines, not claimed.
    refused: Vec<(u64, JobId, FieldError)>,
    claimed: Vec<(u64, JobId, ClaimOutcome)>,
}

/// Checks a chunk's recipients against the suppression list, then claims the rest.
async fn claim_chunk(
    sender: &BatchSender,
    chunk: Vec<(u64, Job)>,
) -> Result<ClaimedChunk, PublishError> {
    let jobs: Vec<&Job> = chunk.iter().map(|(_, j)| j).collect();
    let refusals = sender.suppression_refusals(&jobs).await?;
    let mut refused = Vec::new();
    let mut kept = Vec::with_capacity(chunk.len());
    for ((line, job), refusal) in chunk.into_iter().zip(refusals) {
        match refusal {
            None => kept.push((line, job)),
            Some(error) => refused.push((line, job.id, error)),
        }
    }
    let jobs: Vec<&Job> = kept.iter().map(|(_, j)| j).collect();
    let outcomes = sender.claim(&jobs).await?;
    let claimed = kept
        .into_iter()
        .zip(outcomes)
        .map(|((line, job), outcome)| (line, job.id, outcome))
        .collect();
    Ok(ClaimedChunk { refused, claimed })
}

impl ClaimedChunk {
    /// Counts the chunk into the report; what is not ours to publish goes in `skip`.
    fn tally(self, report: &mut ImportReport, skip: &mut HashSet<JobId>) {
        for (line, id, error) in self.refused {
            report.rejected += 1;
            *report.error_counts.entry("suppressed").or_insert(0) += 1;
            if report.errors.len() < MAX_REPORTED_ERRORS {
                report.errors.push(LineError::new(line, error));
            }
            skip.insert(id);
        }
        for (line, id, outcome) in self.claimed {
            match outcome {
                ClaimOutcome::Claimed => continue,
                ClaimOutcome::Duplicate | ClaimOutcome::InFlight => {
                    report.duplicates += 1;
                    metrics::duplicate(1);
                }
                ClaimOutcome::Conflict => {
                    report.conflicts += 1;
                    *report.error_counts.entry("conflict").or_insert(0) += 1;
                    if report.errors.len() < MAX_REPORTED_ERRORS {
                        report.errors.push(LineError::new(
                            line,
                            FieldError::new("id", conflict_reason(&id)),
                        ));
                    }
                }
            }
            skip.insert(id);
        }
    }
}

/// Why a job id is refused as a conflict (the API's 409 says the same).
pub fn conflict_reason(id: &JobId) -> String {
    format!(
        "job id {id} was accepted before with different content (ids are kept for database.retention_days): use a new id, or resend the same content"
    )
}

/// One spooled job with its line in the upload: `LINE\tJSON\n` (our own writing).
fn read_spooled(reader: &mut impl std::io::BufRead) -> std::io::Result<Option<(u64, Job)>> {
    let mut buf = Vec::new();
    if reader.read_until(b'\n', &mut buf)? == 0 {
        return Ok(None);
    }
    parse_spooled(&buf).map(Some)
}

fn parse_spooled(buf: &[u8]) -> std::io::Result<(u64, Job)> {
    let bad = || std::io::Error::other("unreadable spool line");
    let tab = buf.iter().position(|b| *b == b'\t').ok_or_else(bad)?;
    let line = std::str::from_utf8(&buf[..tab])
        .ok()
        .and_then(|l| l.parse().ok())
        .ok_or_else(bad)?;
    let job = Job::from_queue(&buf[tab + 1..]).map_err(std::io::Error::other)?;
    Ok((line, job))
}

/// Only the check step of an import (`submit --dry-run`): every line is parsed, checked
/// and rendered (when the validator has templates); nothing is published, no broker is
/// needed. Bad lines make it `Rejected`. Duplicates are those within the input only.
pub async fn dry_run<R: Read + Send + 'static>(
    input: R,
    format: Format,
    options: ImportOptions,
    validator: Arc<Validator>,
    progress: Arc<Progress>,
) -> Result<ImportReport, ImportError> {
    let (report, _) = check_upload(input, format, &options, validator, progress).await?;
    if report.rejected > 0 {
        return Err(ImportError::Rejected(report));
    }
    Ok(report)
}

/// Step 1 of an import: reads and checks the whole input, spooling the good jobs.
async fn check_upload<R: Read + Send + 'static>(
    input: R,
    format: Format,
    options: &ImportOptions,
    validator: Arc<Validator>,
    progress: Arc<Progress>,
) -> Result<(ImportReport, Checked), ImportError> {
    let batch = options.batch.clone().unwrap_or_else(new_batch_id);
    let (b, p, max_bytes) = (batch.clone(), progress.clone(), options.max_bytes);
    let mut checked = tokio::task::spawn_blocking(move || {
        let input = Limited {
            inner: input,
            read: 0,
            limit: max_bytes,
            progress: p.clone(),
        };
        check(input, format, &validator, &b, &p)
    })
    .await
    .map_err(|e| ImportError::Io(std::io::Error::other(e)))?
    .map_err(|e| match e {
        ReadError::Header { column, reason } => ImportError::Header { column, reason },
        ReadError::RecordTooLong { line, limit } => ImportError::RecordTooLong { line, limit },
        ReadError::Io(io) if io.get_ref().is_some_and(|e| e.is::<TooLarge>()) => {
            ImportError::TooLarge { limit: max_bytes }
        }
        ReadError::Io(io) => ImportError::Io(io),
    })?;
    metrics::BATCH_SIZE.observe(checked.lines as f64);
    let report = ImportReport {
        batch,
        lines: checked.lines,
        accepted: 0,
        duplicates: checked.duplicates,
        conflicts: 0,
        rejected: checked.rejected,
        errors: std::mem::take(&mut checked.errors),
        error_counts: std::mem::take(&mut checked.error_counts),
    };
    Ok((report, checked))
}

fn check(
    input: impl Read,
    format: Format,
    validator: &Validator,
    batch: &BatchId,
    progress: &Progress,
) -> Result<Checked, ReadError> {
    let spool = tempfile::tempfile()?;
    let mut out = BufWriter::with_capacity(256 * 1024, spool);
    let mut seen: HashSet<JobId> = HashSet::new();
    let (mut valid, mut lines, mut duplicates, mut rejected) = (0u64, 0u64, 0u64, 0u64);
    let mut errors = Vec::new();
    let mut error_counts = BTreeMap::new();
    let mut write_error = None;
    read_jobs(input, format, validator, |line, result| {
        lines += 1;
        progress.lines.fetch_add(1, Ordering::Relaxed);
        let result = result.and_then(|mut job: Job| match &job.batch {
            Some(b) if b != batch => Err(crate::validate::Invalid {
                malformed: false,
                errors: vec![FieldError::new(
                    "batch",
                    format!("{b} differs from the upload's batch {batch}"),
                )],
            }),
            _ => {
                job.batch = Some(batch.clone());
                Ok(job)
            }
        });
        match result {
            Ok(job) => {
                if !seen.insert(job.id.clone()) {
                    duplicates += 1;
                    progress.duplicates.fetch_add(1, Ordering::Relaxed);
                    metrics::duplicate(1);
                    return;
                }
                valid += 1;
                if write_error.is_none()
                    && let Err(e) = write!(out, "{line}\t")
                        .and_then(|()| {
                            serde_json::to_writer(&mut out, &job).map_err(std::io::Error::from)
                        })
                        .and_then(|()| out.write_all(b"\n"))
                {
                    write_error = Some(e);
                }
            }
            Err(invalid) => {
                rejected += 1;
                progress.bad_lines.fetch_add(1, Ordering::Relaxed);
                metrics::rejected(&invalid.errors, invalid.malformed);
                for e in invalid.errors {
                    *error_counts
                        .entry(crate::validate::reason_class(&e.field, invalid.malformed))
                        .or_insert(0) += 1;
                    if errors.len() < MAX_REPORTED_ERRORS {
                        errors.push(LineError::new(line, e));
                    }
                }
            }
        }
    })?;
    if let Some(e) = write_error {
        return Err(ReadError::Io(e));
    }
    let mut spool = out.into_inner().map_err(|e| e.into_error())?;
    spool.rewind()?;
    Ok(Checked {
        spool,
        valid,
        lines,
        duplicates,
        rejected,
        errors,
        error_counts,
    })
}

enum Stop {
    Spool(std::io::Error),
    Publish(PublishError),
}

async fn publish_spool(
    spool: std::fs::File,
    skip: &HashSet<JobId>,
    sender: &mut BatchSender,
    progress: &Progress,
) -> Result<(), Stop> {
    let mut reader =
        tokio::io::BufReader::with_capacity(256 * 1024, tokio::fs::File::from_std(spool));
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .await
            .map_err(Stop::Spool)?;
        if n == 0 {
            return Ok(());
        }
        let (_, job) = parse_spooled(&buf).map_err(Stop::Spool)?;
        if skip.contains(&job.id) {
            continue;
        }
        sender.send(job).await.map_err(Stop::Publish)?;
        progress.published.store(sender.accepted, Ordering::Relaxed);
    }
}
