//! A job: one mail to render and deliver, as clients submit it to ingest.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{ContractError, Lane, check_version, current_version};
use crate::domain::{BatchId, JobId, Mailbox, TemplateName};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    #[serde(default = "current_version")]
    pub v: u16,
    pub id: JobId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchId>,
    pub template: TemplateName,
    /// The business sender. Whether it stays the From header or becomes Reply-To is the
    /// deliver pool's From policy (see docs/architecture.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Mailbox>,
    #[serde(default)]
    pub to: Vec<Mailbox>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cc: Vec<Mailbox>,
    /// Travels in the SMTP envelope only: never written as a header.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bcc: Vec<Mailbox>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<Mailbox>,
    /// Restricts delivery to pool mailboxes of this group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default)]
    pub data: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
    /// Not sent before this instant (a scheduled send).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<DateTime<Utc>>,
    /// Not sent after this instant: past it, the job ends `expired` instead of going out
    /// late (a reminder after its due date is worse than none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<DateTime<Utc>>,
    /// `transactional` or `bulk`; absent: `transactional` for the templates named in
    /// `ingest.transactional_templates`, else `bulk`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lane: Option<Lane>,
    /// Set by ingest when it accepted the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted_at: Option<DateTime<Utc>>,
    /// Set by ingest: the bulk deliver queue of the job's batch (batches take them in
    /// turn, so that running batches share the pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bulk_queue: Option<u16>,
}

/// Limits a job must respect before it is accepted; ingest and render share them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobLimits {
    /// Exchange's default is 500; a tenant may set 1..=1000.
    pub max_recipients: usize,
    pub max_attachments: usize,
    /// Bytes of decoded attachment content per attachment.
    pub max_attachment_bytes: usize,
    /// Bytes of the serialised job (inline attachments included).
    pub max_job_bytes: usize,
}

/// Exchange Online's maxima, the bounds of [`JobLimits`]: recipients per message (a
/// tenant may set 1 to 1,000), attachments per message, and message size (150 MB).
pub const EXCHANGE_MAX_RECIPIENTS: usize = 1_000;
pub const EXCHANGE_MAX_ATTACHMENTS: usize = 250;
pub const EXCHANGE_MAX_MESSAGE_BYTES: usize = 150 * 1024 * 1024;

impl Default for JobLimits {
    fn default() -> Self {
        Self {
            max_recipients: 500,
            max_attachments: 20,
            max_attachment_bytes: 25 * 1024 * 1024,
            max_job_bytes: 35 * 1024 * 1024,
        }
    }
}

/// One problem with a job, naming the field (`to[2].address`, `attachments[0].path`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl Job {
    /// Parses a job from JSON, reporting the field at fault.
    pub fn from_json(bytes: &[u8]) -> Result<Self, FieldError> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let job: Job = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." { "job".to_owned() } else { path };
            FieldError::new(field, e.into_inner().to_string())
        })?;
        // One job per document: `{job}xyz` or `{job} {job}` is refused, not half-read.
        de.end().map_err(|e| {
            FieldError::new("job", format!("unexpected data after the job object: {e}"))
        })?;
        check_version(job.v).map_err(|e| FieldError::new("v", e.to_string()))?;
        Ok(job)
    }

    /// SHA-256 of what the job asks for, to tell a resubmission (same content: a
    /// duplicate) from a different job reusing an id (a conflict). The batch, the
    /// contract version and `accepted_at` are left out: resubmitting a file under a new
    /// batch id is still the same invoice. Object keys are hashed in sorted order, so the
    /// key order of the submitted JSON does not matter.
    pub fn content_hash(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut value = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Value::Object(fields) = &mut value {
            for key in ["v", "batch", "accepted_at"] {
                fields.remove(key);
            }
        }
        let mut hasher = Sha256::new();
        hash_canonical(&value, &mut hasher);
        hasher.finalize().into()
    }

    /// Reads a job from a queue body (already accepted once, so only the version can be new).
    pub fn from_queue(bytes: &[u8]) -> Result<Self, ContractError> {
        let job: Job =
            serde_json::from_slice(bytes).map_err(|source| ContractError::Malformed {
                what: "job",
                source,
            })?;
        check_version(job.v)?;
        Ok(job)
    }

    /// Rules that cross fields or depend on configuration; field syntax is already
    /// guaranteed by the domain types. Returns every problem, not just the first.
    pub fn validate(&self, limits: &JobLimits) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let recipients = self.to.len() + self.cc.len() + self.bcc.len();
        if recipients == 0 {
            errors.push(FieldError::new(
                "to",
                "a job needs at least one recipient in to, cc or bcc",
            ));
        }
        if let (Some(from), Some(until)) = (self.not_before, self.not_after)
            && until <= from
        {
            errors.push(FieldError::new(
                "not_after",
                format!("{until} is not after not_before ({from})"),
            ));
        }
        if recipients > limits.max_recipients {
            errors.push(FieldError::new(
                "to",
                format!(
                    "{recipients} recipients (to+cc+bcc) exceed the limit of {} per message",
                    limits.max_recipients
                ),
            ));
        }
        if let Some(group) = &self.group
            && (group.is_empty()
                || group.len() > 64
                || !group
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c)))
        {
            errors.push(FieldError::new(
                "group",
                "a group is 1-64 letters, digits, '-' or '_'",
            ));
        }
        if self.attachments.len() > limits.max_attachments {
            errors.push(FieldError::new(
                "attachments",
                format!("more than {} attachments", limits.max_attachments),
            ));
        }
        for (i, a) in self.attachments.iter().enumerate() {
            if let AttachmentSource::Inline(content) = &a.source
                && content.len() / 4 * 3 > limits.max_attachment_bytes
            {
                errors.push(FieldError::new(
                    format!("attachments[{i}].content_base64"),
                    format!("larger than {} bytes", limits.max_attachment_bytes),
                ));
            }
        }
        errors
    }

    pub fn recipient_count(&self) -> usize {
        self.to.len() + self.cc.len() + self.bcc.len()
    }
}

/// A file to attach: inline (base64 in the job) or a path under the attachments root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawAttachment", into = "RawAttachment")]
pub struct Attachment {
    pub filename: String,
    pub content_type: Option<String>,
    pub source: AttachmentSource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachmentSource {
    /// Base64 text, checked to decode when the job was accepted.
    Inline(String),
    Path(AttachmentPath),
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAttachment {
    filename: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path: Option<String>,
}

impl TryFrom<RawAttachment> for Attachment {
    type Error = String;
    fn try_from(raw: RawAttachment) -> Result<Self, String> {
        if raw.filename.is_empty()
            || raw.filename.len() > 255
            || raw
                .filename
                .chars()
                .any(|c| c.is_control() || c == '/' || c == '\\')
        {
            return Err(
                "filename must be 1-255 characters without control characters or path separators"
                    .into(),
            );
        }
        if let Some(ct) = &raw.content_type
            && !valid_content_type(ct)
        {
            return Err(format!(
                "content_type {ct:?} is not a type/subtype media type"
            ));
        }
        let source = match (raw.content_base64, raw.path) {
            (Some(b64), None) => {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(b64.as_bytes())
                    .map_err(|e| format!("content_base64 is not valid base64: {e}"))?;
                AttachmentSource::Inline(b64)
            }
            (None, Some(p)) => AttachmentSource::Path(AttachmentPath::parse(&p)?),
            _ => return Err("an attachment needs exactly one of content_base64 or path".into()),
        };
        Ok(Self {
            filename: raw.filename,
            content_type: raw.content_type,
            source,
        })
    }
}

impl From<Attachment> for RawAttachment {
    fn from(a: Attachment) -> Self {
        let (content_base64, path) = match a.source {
            AttachmentSource::Inline(b) => (Some(b), None),
            AttachmentSource::Path(p) => (None, Some(p.0)),
        };
        Self {
            filename: a.filename,
            content_type: a.content_type,
            content_base64,
            path,
        }
    }
}

fn valid_content_type(ct: &str) -> bool {
    let token = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$&^_.+-".contains(c))
    };
    matches!(ct.split_once('/'), Some((t, s)) if token(t) && token(s))
}

/// A relative path with no `..`, no root, no backslashes and no control characters.
/// Symlinks are checked where the file is opened (render), against the real root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentPath(String);

impl AttachmentPath {
    pub fn parse(input: &str) -> Result<Self, String> {
        if input.is_empty() || input.len() > 1024 {
            return Err("path must be 1-1024 characters".into());
        }
        if input.starts_with('/') || input.contains('\\') || input.contains(':') {
            return Err(format!(
                "path {input:?} must be relative to the attachments root"
            ));
        }
        if input.chars().any(char::is_control) {
            return Err("path contains a control character".into());
        }
        // `.` too: render opens only plain segments, so `./x` would pass here and die there.
        if input
            .split('/')
            .any(|part| part == ".." || part == "." || part.is_empty())
        {
            return Err(format!(
                "path {input:?} may not contain '.', '..' or empty segments"
            ));
        }
        Ok(Self(input.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(json: &str) -> Result<Job, FieldError> {
        Job::from_json(json.as_bytes())
    }

    #[test]
    fn a_minimal_job_parses() {
        let j = job(r#"{"id":"j1","template":"invoice","to":["a@example.com"],"data":{"n":1}}"#)
            .unwrap();
        assert_eq!(j.v, 1);
        assert!(j.validate(&JobLimits::default()).is_empty());
    }

    #[test]
    fn errors_name_the_field() {
        let e =
            job(r#"{"id":"j1","template":"invoice","to":["a@example.com","bad"]}"#).unwrap_err();
        assert_eq!(e.field, "to[1]");
        let e = job(r#"{"id":"j1","template":"invoice","to":[],"colour":"red"}"#).unwrap_err();
        assert!(e.reason.contains("colour"), "{e}");
        let e = job(r#"{"id":"j1","template":"invoice","to":["a@example.com"],"data":[1]}"#)
            .unwrap_err();
        assert_eq!(e.field, "data");
        let e = job(r#"{"id":"j1","template":"x","to":["a@example.com"],"attachments":[{"filename":"a.pdf","path":"../etc/passwd"}]}"#).unwrap_err();
        assert_eq!(e.field, "attachments[0]");
        assert!(e.reason.contains(".."), "{e}");
    }

    #[test]
    fn bytes_after_the_job_are_refused() {
        let ok = r#"{"id":"j1","template":"invoice","to":["a@example.com"]}"#;
        assert!(job(&format!(" {ok}\r\n")).is_ok());
        for extra in ["xyz", " {\"id\":\"j2\"}", "}", "[]"] {
            let e = job(&format!("{ok}{extra}")).unwrap_err();
            assert_eq!(e.field, "job", "{extra}");
            assert!(e.reason.contains("after the job"), "{extra}: {e}");
        }
    }

    #[test]
    fn too_new_a_version_is_refused() {
        let e =
            job(r#"{"v":9,"id":"j1","template":"invoice","to":["a@example.com"]}"#).unwrap_err();
        assert_eq!(e.field, "v");
    }

    #[test]
    fn recipient_limits_apply_to_to_cc_and_bcc() {
        let to: Vec<String> = (0..3).map(|i| format!("\"r{i}@example.com\"")).collect();
        let j = job(&format!(
            r#"{{"id":"j","template":"t","to":[{}],"bcc":["b@example.com"]}}"#,
            to.join(",")
        ))
        .unwrap();
        let limits = JobLimits {
            max_recipients: 3,
            ..Default::default()
        };
        let errors = j.validate(&limits);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].reason.contains("4 recipients"));
    }

    #[test]
    fn attachment_paths_stay_inside_the_root() {
        for bad in [
            "/etc/passwd",
            "a/../../b",
            "..",
            "a//b",
            "C:\\x",
            "a\\b",
            "./x",
            "a/./b",
            "a/.",
        ] {
            assert!(AttachmentPath::parse(bad).is_err(), "{bad}");
        }
        assert!(AttachmentPath::parse("2026-11/inv-1.pdf").is_ok());
    }

    #[test]
    fn attachments_round_trip() {
        let j = job(r#"{"id":"j1","template":"t","to":["a@example.com"],"attachments":[{"filename":"a.pdf","content_base64":"JVBERg=="},{"filename":"b.pdf","path":"x/b.pdf","content_type":"application/pdf"}]}"#).unwrap();
        let back = Job::from_queue(&serde_json::to_vec(&j).unwrap()).unwrap();
        assert_eq!(back, j);
    }
}

/// Feeds `value` into `hasher` with object keys in sorted order and every value tagged,
/// so two different values never feed the same bytes.
fn hash_canonical(value: &Value, hasher: &mut impl sha2::Digest) {
    match value {
        Value::Null => hasher.update(b"n"),
        Value::Bool(b) => hasher.update(if *b { b"t" } else { b"f" }),
        Value::Number(n) => {
            hasher.update(b"#");
            hasher.update(n.to_string().as_bytes());
            hasher.update(b";");
        }
        Value::String(s) => {
            hasher.update(b"s");
            hasher.update((s.len() as u64).to_be_bytes());
            hasher.update(s.as_bytes());
        }
        Value::Array(items) => {
            hasher.update(b"[");
            for item in items {
                hash_canonical(item, hasher);
            }
            hasher.update(b"]");
        }
        Value::Object(fields) => {
            let mut keys: Vec<&String> = fields.keys().collect();
            keys.sort();
            hasher.update(b"{");
            for key in keys {
                hasher.update((key.len() as u64).to_be_bytes());
                hasher.update(key.as_bytes());
                hash_canonical(&fields[key.as_str()], hasher);
            }
            hasher.update(b"}");
        }
    }
}
