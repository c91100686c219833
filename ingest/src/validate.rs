//! Edge validation: the contract's own parsing and limits, plus what only ingest can
//! check (the job renders with its template, attachment files exist inside the root).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mailpipe_common::config::ConfigError;
use mailpipe_common::contract::{AttachmentSource, FieldError, Job, JobLimits};
use mailpipe_render::RenderError;
use mailpipe_render::renderer::render_text;
use mailpipe_render::templates::{TemplateError, Templates};

use crate::settings::IngestSettings;

/// Why a job was refused: every problem found, each naming its field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The input was not JSON at all (HTTP 400), as opposed to JSON that breaks a rule (422).
    pub malformed: bool,
    pub errors: Vec<FieldError>,
}

impl Invalid {
    fn one(malformed: bool, field: &str, reason: impl Into<String>) -> Self {
        Self {
            malformed,
            errors: vec![FieldError::new(field, reason)],
        }
    }
}

#[derive(Debug, Clone)]
pub struct Validator {
    limits: JobLimits,
    /// render's own templates and renderer: a job is accepted only if its subject and
    /// bodies render (strict undefined), exactly as render will render them.
    templates: Option<Arc<Templates>>,
    /// Canonical, so containment is checked against the real directory.
    attachments_root: Option<PathBuf>,
}

impl Validator {
    pub fn new(
        limits: JobLimits,
        templates: Option<Arc<Templates>>,
        attachments_root: Option<PathBuf>,
    ) -> Self {
        let attachments_root = attachments_root.map(|r| r.canonicalize().unwrap_or(r));
        Self {
            limits,
            templates,
            attachments_root,
        }
    }

    /// Loads the templates of `templates_dir` (when set) as render loads them.
    pub fn from_settings(s: &IngestSettings) -> Result<Self, ConfigError> {
        let templates = s
            .templates_dir
            .as_deref()
            .map(|dir| {
                Templates::load(dir)
                    .map(Arc::new)
                    .map_err(|e| ConfigError::invalid("ingest.templates_dir", e.to_string()))
            })
            .transpose()?;
        Ok(Self::new(s.limits, templates, s.attachments_root.clone()))
    }

    /// The loaded templates (when `templates_dir` is set).
    pub fn templates(&self) -> Option<&Templates> {
        self.templates.as_deref()
    }

    pub fn limits(&self) -> &JobLimits {
        &self.limits
    }

    /// Parses and checks one job. Nothing that fails here may be published.
    pub fn check(&self, bytes: &[u8]) -> Result<Job, Invalid> {
        if bytes.len() > self.limits.max_job_bytes {
            return Err(Invalid::one(
                false,
                "job",
                format!(
                    "{} bytes exceed the limit of {} per job (ingest.limits.max_job_bytes)",
                    bytes.len(),
                    self.limits.max_job_bytes
                ),
            ));
        }
        let job = Job::from_json(bytes).map_err(|e| {
            // Tell "not JSON" from "JSON that breaks a rule" by a second, cheap pass; only
            // on the error path.
            let malformed = serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_err();
            Invalid {
                malformed,
                errors: vec![e],
            }
        })?;
        let mut errors = job.validate(&self.limits);
        if job.accepted_at.is_some() {
            errors.push(FieldError::new(
                "accepted_at",
                "is set by ingest, not by clients",
            ));
        }
        if let Some(until) = job.not_after
            && until <= chrono::Utc::now()
        {
            errors.push(FieldError::new(
                "not_after",
                format!("{until} has passed: the job could only expire"),
            ));
        }
        if let Some(root) = &self.attachments_root {
            for (i, a) in job.attachments.iter().enumerate() {
                if let AttachmentSource::Path(p) = &a.source
                    && let Err(reason) = inside_root(root, Path::new(p.as_str()))
                {
                    errors.push(FieldError::new(format!("attachments[{i}].path"), reason));
                }
            }
        }
        // Rendering last: only a job that is otherwise valid is worth rendering.
        if errors.is_empty()
            && let Some(templates) = &self.templates
            && let Err(e) = render_text(templates, &job)
        {
            errors.push(render_problem(&e));
        }
        if errors.is_empty() {
            Ok(job)
        } else {
            Err(Invalid {
                malformed: false,
                errors,
            })
        }
    }
}

/// What render would dead-letter, as a field error: an undefined variable names the
/// expression as the field (`data.invoice_number`) and the template file and line in the
/// reason.
fn render_problem(e: &RenderError) -> FieldError {
    let field = match e {
        RenderError::Template(TemplateError::Unknown(_)) => "template".to_owned(),
        RenderError::Template(TemplateError::Undefined { expression, .. })
            if expression.starts_with("data") =>
        {
            expression.clone()
        }
        RenderError::NoSender { .. } => "from".to_owned(),
        RenderError::NoRecipients => "to".to_owned(),
        _ => "data".to_owned(),
    };
    let reason = match e {
        RenderError::Template(TemplateError::Unknown(name)) => {
            format!("no template {name:?} in the templates directory")
        }
        other => format!("{other} (render would dead-letter this job)"),
    };
    FieldError::new(field, reason)
}

/// The file must exist and, symlinks resolved, stay inside `root` (already canonical).
fn inside_root(root: &Path, rel: &Path) -> Result<(), String> {
    let real = root.join(rel).canonicalize().map_err(|_| {
        format!(
            "{} does not exist under the attachments root",
            rel.display()
        )
    })?;
    if !real.starts_with(root) {
        return Err(format!(
            "{} resolves outside the attachments root",
            rel.display()
        ));
    }
    if !real.is_file() {
        return Err(format!("{} is not a file", rel.display()));
    }
    Ok(())
}

/// A bounded label for the rejection metric: the top-level field of the error
/// (`to[3].address` → `to`), `malformed` for non-JSON, `other` for anything unexpected.
pub fn reason_class(field: &str, malformed: bool) -> &'static str {
    if malformed {
        return "malformed";
    }
    let head = field.split(['[', '.']).next().unwrap_or_default();
    const KNOWN: [&str; 19] = [
        "id",
        "batch",
        "template",
        "from",
        "to",
        "cc",
        "bcc",
        "reply_to",
        "group",
        "lane",
        "data",
        "attachments",
        "v",
        "accepted_at",
        "not_before",
        "not_after",
        "job",
        "csv",
        "body",
    ];
    KNOWN.into_iter().find(|k| *k == head).unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v() -> Validator {
        Validator::new(
            JobLimits {
                max_recipients: 2,
                ..Default::default()
            },
            None,
            None,
        )
    }

    #[test]
    fn malformed_json_is_told_apart_from_rule_breaking_json() {
        let e = v().check(b"{\"id\": ").unwrap_err();
        assert!(e.malformed);
        let e = v()
            .check(br#"{"id":"j1","template":"t","to":["nope"]}"#)
            .unwrap_err();
        assert!(!e.malformed);
        assert_eq!(e.errors[0].field, "to[0]");
    }

    #[test]
    fn a_schedule_must_be_possible() {
        let e = v()
            .check(br#"{"id":"j1","template":"t","to":["a@x.com"],"not_after":"2020-01-01T00:00:00Z"}"#)
            .unwrap_err();
        assert_eq!(e.errors[0].field, "not_after");
        assert!(e.errors[0].reason.contains("has passed"), "{:?}", e.errors);
        let e = v()
            .check(br#"{"id":"j1","template":"t","to":["a@x.com"],"not_before":"2099-01-02T00:00:00Z","not_after":"2099-01-01T00:00:00Z"}"#)
            .unwrap_err();
        assert_eq!(e.errors[0].field, "not_after");
        let ok = v().check(br#"{"id":"j1","template":"t","to":["a@x.com"],"not_before":"2099-01-01T00:00:00Z","not_after":"2099-01-02T00:00:00Z"}"#);
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn limits_and_ingest_only_rules_apply() {
        let e = v()
            .check(br#"{"id":"j1","template":"t","to":["a@x.com","b@x.com","c@x.com"]}"#)
            .unwrap_err();
        assert_eq!(e.errors[0].field, "to");
        let e = v().check(br#"{"id":"j1","template":"t","to":["a@x.com"],"accepted_at":"2026-01-01T00:00:00Z"}"#).unwrap_err();
        assert_eq!(e.errors[0].field, "accepted_at");
    }

    #[test]
    fn templates_and_attachments_are_checked_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let templates = dir.path().join("templates");
        let root = dir.path().join("files");
        std::fs::create_dir_all(templates.join("invoice")).unwrap();
        std::fs::write(templates.join("invoice/subject.txt"), "Invoice").unwrap();
        std::fs::write(templates.join("invoice/body.txt"), "Hello").unwrap();
        let templates = Arc::new(Templates::load(&templates).unwrap());
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("a.pdf"), b"%PDF").unwrap();
        std::fs::write(dir.path().join("secret.txt"), b"s").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("link.pdf")).unwrap();
        let v = Validator::new(JobLimits::default(), Some(templates), Some(root));
        let job = |t: &str, p: &str| {
            format!(
                r#"{{"id":"j1","template":"{t}","from":"b@x.com","to":["a@x.com"],"attachments":[{{"filename":"a.pdf","path":"{p}"}}]}}"#
            )
        };
        assert!(v.check(job("invoice", "a.pdf").as_bytes()).is_ok());
        let e = v.check(job("reminder", "a.pdf").as_bytes()).unwrap_err();
        assert_eq!(e.errors[0].field, "template");
        let e = v
            .check(job("invoice", "missing.pdf").as_bytes())
            .unwrap_err();
        assert_eq!(e.errors[0].field, "attachments[0].path");
        #[cfg(unix)]
        {
            let e = v.check(job("invoice", "link.pdf").as_bytes()).unwrap_err();
            assert!(e.errors[0].reason.contains("outside"), "{:?}", e);
        }
    }

    #[test]
    fn reason_classes_are_bounded() {
        assert_eq!(reason_class("to[3].address", false), "to");
        assert_eq!(reason_class("attachments[0].path", false), "attachments");
        assert_eq!(reason_class("whatever-a-client-sends", false), "other");
        assert_eq!(reason_class("id", true), "malformed");
    }
}
