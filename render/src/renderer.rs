//! `Renderer`: one job in, one rendered message (MIME + metadata) out. Pure CPU and file
//! reads, no broker: the stage runs it on the blocking pool, the benchmark calls it directly.

use std::collections::HashSet;

use chrono::Utc;
use mailpipe_common::contract::{CONTRACT_VERSION, Job, RenderedMessage, RenderedMeta};
use mailpipe_common::domain::{EmailAddress, Mailbox};

use crate::attachments::{AttachmentError, AttachmentLoader};
use crate::mime::{self, MimeInput};
use crate::settings::Settings;
use crate::templates::{
    JobContext, RenderContext, RenderedParts, TemplateError, TemplateSpec, Templates,
};

/// Why a job cannot be rendered. Each is the job's fault (or its template's), so the job
/// goes to dead letters: rendering it again would fail the same way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(transparent)]
    Attachment(#[from] AttachmentError),
    #[error("no sender: the job has no from and template {template:?} has no default from")]
    NoSender { template: String },
    #[error("no recipients in to, cc or bcc")]
    NoRecipients,
    #[error(
        "rendered message is {size} bytes, over the limit of {max} bytes (render.max_message_bytes)"
    )]
    TooLarge { size: usize, max: usize },
}

impl RenderError {
    /// Low-cardinality label for `mailpipe_render_failures_total{reason}`.
    pub fn kind(&self) -> &'static str {
        match self {
            RenderError::Template(TemplateError::Unknown(_)) => "unknown_template",
            RenderError::Template(TemplateError::Undefined { .. }) => "undefined_variable",
            RenderError::Template(TemplateError::Render { .. }) => "template_error",
            RenderError::Attachment(e) => e.kind(),
            RenderError::NoSender { .. } => "no_sender",
            RenderError::NoRecipients => "no_recipients",
            RenderError::TooLarge { .. } => "message_too_large",
        }
    }
}

#[derive(Debug)]
pub struct Renderer {
    templates: Templates,
    attachments: AttachmentLoader,
    message_id_domain: String,
    max_message_bytes: usize,
}

impl Renderer {
    pub fn new(templates: Templates, attachments: AttachmentLoader, settings: &Settings) -> Self {
        Self {
            templates,
            attachments,
            message_id_domain: settings.message_id_domain.clone(),
            max_message_bytes: settings.max_message_bytes,
        }
    }

    pub fn templates(&self) -> &Templates {
        &self.templates
    }

    pub fn render(&self, job: &Job) -> Result<RenderedMessage, RenderError> {
        let Text {
            parts,
            spec,
            from,
            reply_to,
            recipients,
        } = render_text(&self.templates, job)?;

        let attachments = job
            .attachments
            .iter()
            .map(|a| self.attachments.load(a))
            .collect::<Result<Vec<_>, _>>()?;
        // Base64 grows content by 4/3 plus line breaks: refuse early without building.
        let estimate: usize = attachments.iter().map(|a| a.bytes.len() / 57 * 78).sum();
        if estimate > self.max_message_bytes {
            return Err(RenderError::TooLarge {
                size: estimate,
                max: self.max_message_bytes,
            });
        }

        let message_id = mime::new_message_id(&self.message_id_domain);
        let now = Utc::now();
        let bytes = mime::build(MimeInput {
            to: &job.to,
            cc: &job.cc,
            reply_to,
            parts: &parts,
            message_id: &message_id,
            date: now,
            headers: &spec.defaults.headers,
            attachments: &attachments,
        });
        if bytes.len() > self.max_message_bytes {
            return Err(RenderError::TooLarge {
                size: bytes.len(),
                max: self.max_message_bytes,
            });
        }
        let meta = RenderedMeta {
            v: CONTRACT_VERSION,
            job_id: job.id.clone(),
            batch: job.batch.clone(),
            from: from.clone(),
            has_reply_to: reply_to.is_some(),
            recipients,
            group: job.group.clone(),
            message_id: format!("<{message_id}>"),
            attempt: 0,
            rendered_at: now,
            not_before: job.not_before,
            not_after: job.not_after,
            lane: job.lane.unwrap_or_default(),
            bulk_queue: job.bulk_queue.unwrap_or(0),
        };
        Ok(RenderedMessage { meta, mime: bytes })
    }
}

/// What [`render_text`] produced: the rendered text and what it was rendered with.
#[derive(Debug)]
pub struct Text<'a> {
    pub parts: RenderedParts,
    pub spec: &'a TemplateSpec,
    pub from: &'a Mailbox,
    pub reply_to: Option<&'a Mailbox>,
    pub recipients: Vec<EmailAddress>,
}

/// The part of rendering that depends on the templates and the job's data only (no
/// attachments, no MIME): template lookup, sender, recipients, subject and bodies in
/// strict-undefined mode. ingest runs exactly this before it answers 202, so what it
/// accepts render does not dead-letter for its text.
pub fn render_text<'a>(templates: &'a Templates, job: &'a Job) -> Result<Text<'a>, RenderError> {
    let name = job.template.as_str();
    let spec = templates
        .get(name)
        .ok_or_else(|| TemplateError::Unknown(name.to_owned()))?;
    let from = job
        .from
        .as_ref()
        .or(spec.defaults.from.as_ref())
        .ok_or_else(|| RenderError::NoSender {
            template: name.to_owned(),
        })?;
    let recipients = envelope(job);
    if recipients.is_empty() {
        return Err(RenderError::NoRecipients);
    }
    let reply_to = job.reply_to.as_ref().or(spec.defaults.reply_to.as_ref());
    let ctx = RenderContext {
        data: &job.data,
        job: JobContext {
            id: &job.id,
            batch: job.batch.as_ref(),
            template: name,
        },
        to: &job.to,
        cc: &job.cc,
        from,
    };
    let parts = templates.render(name, &ctx)?;
    Ok(Text {
        parts,
        spec,
        from,
        reply_to,
        recipients,
    })
}

/// To + Cc + Bcc in that order, each address once (compared case-insensitively).
pub fn envelope(job: &Job) -> Vec<EmailAddress> {
    let mut seen = HashSet::new();
    job.to
        .iter()
        .chain(&job.cc)
        .chain(&job.bcc)
        .filter(|m| seen.insert(m.address.as_str().to_ascii_lowercase()))
        .map(|m| m.address.clone())
        .collect()
}
