//! `mailpipe-ingest submit FILE`: the batch import from the command line, straight to
//! RabbitMQ with its ids claimed in the system of record (exactly as the API does), with
//! a progress bar on a terminal and plain periodic lines otherwise.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use mailpipe_common::domain::BatchId;
use mailpipe_common::pipeline::Pipeline;

use crate::batch::{ImportError, ImportOptions, ImportReport, Progress, import};
use crate::batch_reader::Format;
use crate::publish::JobPublisher;
use crate::settings::IngestSettings;
use crate::validate::Validator;

#[derive(Debug, Clone)]
pub struct SubmitOptions {
    pub file: PathBuf,
    pub batch: Option<BatchId>,
    pub partial: bool,
    pub display: Display,
    /// The batch's callback URL (checked), recorded once the file is accepted.
    pub callback_url: Option<String>,
}

impl SubmitOptions {
    /// A local file is trusted for size (the HTTP upload limit does not apply).
    fn import_options(&self) -> ImportOptions {
        ImportOptions {
            batch: self.batch.clone(),
            partial: self.partial,
            max_bytes: u64::MAX,
            callback_url: self.callback_url.clone(),
            // The command line is trusted like an `operate` token.
            owner: None,
            confined: false,
        }
    }
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Display {
    /// indicatif bars with rate and ETA (stderr is a terminal).
    Bar,
    /// A plain line every few seconds (logs, CI).
    Lines,
    Quiet,
}

impl Display {
    pub fn for_stderr() -> Self {
        if std::io::stderr().is_terminal() {
            Display::Bar
        } else {
            Display::Lines
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("{}: unknown format; name the file .jsonl, .ndjson or .csv", .0.display())]
    Format(PathBuf),
    #[error("{}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: is {kind}, not a regular file; give a .jsonl or .csv file", path.display())]
    NotAFile { path: PathBuf, kind: &'static str },
    #[error("configuration error: {0}")]
    Config(#[from] mailpipe_common::config::ConfigError),
    #[error(transparent)]
    Import(#[from] ImportError),
}

impl SubmitError {
    /// 1: lines were rejected (or ids conflict); 3: the broker or the database failed
    /// us; 2: the input could not be read.
    pub fn exit_code(&self) -> u8 {
        match self {
            SubmitError::Import(ImportError::Rejected(_) | ImportError::Conflict(_)) => 1,
            SubmitError::Import(ImportError::Publish { .. } | ImportError::Unavailable(_)) => 3,
            _ => 2,
        }
    }
}

/// Imports `options.file` through `pipeline`. Ids are claimed in the system of record,
/// so a file submitted twice is published once.
pub async fn submit(
    pipeline: &Pipeline,
    settings: &IngestSettings,
    options: &SubmitOptions,
) -> Result<ImportReport, SubmitError> {
    let (file, format, size) = open_input(&options.file)?;
    let validator = Arc::new(Validator::from_settings(settings)?);
    let publisher = JobPublisher::new(pipeline.clone(), settings);
    let progress = Arc::new(Progress::default());
    let display = spawn_display(options.display, progress.clone(), size);
    let result = import(
        file,
        format,
        options.import_options(),
        validator,
        &publisher,
        progress,
    )
    .await;
    display.finish().await;
    Ok(result?)
}

/// Opens the file to import: its extension names a format, and it is a regular file
/// (after symlinks), checked before and after opening: a FIFO, a device (a link to
/// `/dev/zero`) or a directory would block or never end. Returns the file, its format
/// and its size. The CLI calls this before it connects to the broker.
#[allow(clippy::result_large_err)] // returned once per command, never in a loop
pub fn open_input(path: &Path) -> Result<(std::fs::File, Format, u64), SubmitError> {
    let format = Format::from_path(path).ok_or_else(|| SubmitError::Format(path.to_owned()))?;
    let open_error = |source| SubmitError::Open {
        path: path.to_owned(),
        source,
    };
    let regular = |meta: &std::fs::Metadata| {
        if meta.is_file() {
            Ok(())
        } else {
            Err(SubmitError::NotAFile {
                path: path.to_owned(),
                kind: file_kind(meta),
            })
        }
    };
    // Checked before opening, since opening a FIFO blocks until a writer appears.
    regular(&std::fs::metadata(path).map_err(open_error)?)?;
    let file = std::fs::File::open(path).map_err(open_error)?;
    // And again on what was opened, in case the path was swapped in between.
    let meta = file.metadata().map_err(open_error)?;
    regular(&meta)?;
    Ok((file, format, meta.len()))
}

fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt as _;
        let t = meta.file_type();
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_char_device() || t.is_block_device() {
            return "a device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if meta.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// `submit --dry-run`: checks and renders every line of the file (with the templates of
/// `templates_dir`), publishes nothing and needs no broker.
pub async fn dry_run(
    settings: &IngestSettings,
    options: &SubmitOptions,
) -> Result<ImportReport, SubmitError> {
    let (file, format, size) = open_input(&options.file)?;
    let validator = Arc::new(Validator::from_settings(settings)?);
    let progress = Arc::new(Progress::default());
    let display = spawn_display(options.display, progress.clone(), size);
    let result =
        crate::batch::dry_run(file, format, options.import_options(), validator, progress).await;
    display.finish().await;
    Ok(result?)
}

/// The summary printed after a `--dry-run` (stdout): counts, then every bad line.
pub fn dry_run_summary(path: &Path, result: &Result<ImportReport, SubmitError>) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    match result {
        Ok(r) | Err(SubmitError::Import(ImportError::Rejected(r))) => {
            let _ = writeln!(
                out,
                "{}: dry run: {} lines checked and rendered, {} good, {} bad; nothing was published",
                path.display(),
                r.lines,
                r.lines - r.rejected,
                r.rejected
            );
            write_errors(&mut out, r);
        }
        Err(e) => {
            let _ = writeln!(out, "error: {e}");
        }
    }
    out
}

fn write_errors(out: &mut String, r: &ImportReport) {
    use std::fmt::Write as _;
    for e in &r.errors {
        let _ = writeln!(out, "  line {}: {}: {}", e.line, e.field, e.reason);
    }
    let total: u64 = r.error_counts.values().sum();
    if total > r.errors.len() as u64 {
        let kinds: Vec<String> = r
            .error_counts
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect();
        let _ = writeln!(
            out,
            "  ... {} more problems not listed (all problems by kind: {})",
            total - r.errors.len() as u64,
            kinds.join(", ")
        );
    }
}

/// The summary printed after a submit (stdout): counts, then every bad line.
pub fn summary(path: &Path, result: &Result<ImportReport, SubmitError>) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let report = match result {
        Ok(r) => Some(r),
        Err(SubmitError::Import(
            ImportError::Rejected(r)
            | ImportError::Conflict(r)
            | ImportError::Publish { report: r, .. },
        )) => Some(r),
        Err(_) => None,
    };
    if let Some(r) = report {
        let _ = writeln!(
            out,
            "{}: batch {}: {} lines, {} accepted, {} duplicates (skipped), {}{} rejected",
            path.display(),
            r.batch,
            r.lines,
            r.accepted,
            r.duplicates,
            if r.conflicts > 0 {
                format!("{} conflicts (same id, other content), ", r.conflicts)
            } else {
                String::new()
            },
            r.rejected
        );
        write_errors(&mut out, r);
    }
    match result {
        Err(SubmitError::Import(ImportError::Rejected(_))) => {
            let _ = writeln!(
                out,
                "nothing was published: fix the lines above, or submit with --partial to send the good ones"
            );
        }
        Err(SubmitError::Import(ImportError::Conflict(_))) => {
            let _ = writeln!(
                out,
                "nothing was published: these ids were accepted before with different content; give them new ids, or submit with --partial to send the others"
            );
        }
        Err(e) => {
            let _ = writeln!(out, "error: {e}");
        }
        Ok(r) if r.rejected > 0 || r.conflicts > 0 => {
            let _ = writeln!(
                out,
                "the good lines were published; the rejected ones were not"
            );
        }
        Ok(_) => {}
    }
    out
}

struct DisplayTask {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl DisplayTask {
    async fn finish(self) {
        let _ = self.stop.send(());
        self.task.await.ok();
    }
}

fn spawn_display(display: Display, progress: Arc<Progress>, size: u64) -> DisplayTask {
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let started = Instant::now();
        let tick = if display == Display::Bar {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(2)
        };
        let mut bar: Option<(ProgressBar, bool)> = None;
        loop {
            let done = tokio::select! {
                _ = &mut stopped => true,
                _ = tokio::time::sleep(tick) => false,
            };
            let publishing = progress.publishing.load(Ordering::Relaxed);
            let lines = progress.lines.load(Ordering::Relaxed);
            let bad = progress.bad_lines.load(Ordering::Relaxed);
            let published = progress.published.load(Ordering::Relaxed);
            let total = progress.to_publish.load(Ordering::Relaxed);
            match display {
                Display::Quiet => {}
                Display::Lines => {
                    let secs = started.elapsed().as_secs_f64().max(0.001);
                    if publishing {
                        eprintln!(
                            "published {published}/{total} jobs ({:.0}/s)",
                            published as f64 / secs
                        );
                    } else {
                        eprintln!(
                            "checked {lines} lines ({bad} bad), {} bytes read",
                            progress.bytes_read.load(Ordering::Relaxed)
                        );
                    }
                }
                Display::Bar => {
                    if bar.as_ref().is_none_or(|(_, p)| *p != publishing) {
                        if let Some((b, _)) = bar.take() {
                            b.finish();
                        }
                        let b = if publishing {
                            let b = ProgressBar::new(total);
                            b.set_style(style(
                                "publishing {bar:40} {pos}/{len} jobs {per_sec} ETA {eta}",
                            ));
                            b
                        } else {
                            let b = ProgressBar::new(size);
                            b.set_style(style("checking   {bar:40} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}"));
                            b
                        };
                        bar = Some((b, publishing));
                    }
                    if let Some((b, _)) = &bar {
                        if publishing {
                            b.set_position(published);
                        } else {
                            b.set_position(progress.bytes_read.load(Ordering::Relaxed));
                            b.set_message(format!("{lines} lines, {bad} bad"));
                        }
                    }
                }
            }
            if done {
                if let Some((b, _)) = bar {
                    b.finish();
                }
                return;
            }
        }
    });
    DisplayTask { stop, task }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}
