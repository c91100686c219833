//! Shared by the render tests: the example templates, a renderer over them, jobs.
#![allow(dead_code, clippy::unwrap_used)]

pub mod pdf;

use std::path::{Path, PathBuf};

use base64::Engine as _;
use mailpipe_common::contract::Job;
use mailpipe_render::attachments::AttachmentLoader;
use mailpipe_render::templates::Templates;
use mailpipe_render::{Renderer, Settings};

pub const DOMAIN: &str = "mail.acme.example";

pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/templates")
}

pub fn settings(templates_dir: &Path, attachments_root: Option<&Path>) -> Settings {
    Settings {
        templates_dir: templates_dir.to_owned(),
        attachments_root: attachments_root.map(Path::to_owned),
        message_id_domain: DOMAIN.into(),
        concurrency: 2,
        http_listen: "127.0.0.1:0".parse().unwrap(),
        ..Settings::default()
    }
}

pub fn renderer_with(settings: &Settings) -> Renderer {
    let templates = Templates::load(&settings.templates_dir).expect("templates load");
    let loader = AttachmentLoader::new(
        settings.attachments_root.as_deref(),
        settings.max_attachment_bytes,
    )
    .expect("root");
    Renderer::new(templates, loader, settings)
}

pub fn example_renderer() -> Renderer {
    renderer_with(&settings(&examples_dir(), None))
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn job(value: serde_json::Value) -> Job {
    Job::from_json(value.to_string().as_bytes()).expect("valid job")
}

/// An invoice job with the PDF inline.
pub fn invoice_job(id: &str, pdf: &[u8]) -> Job {
    job(serde_json::json!({
        "id": id,
        "batch": "2026-11",
        "template": "invoice",
        "to": [{"name": "Zoë Müller", "address": "zoe@kunde.example"}],
        "cc": ["accounting@kunde.example"],
        "bcc": ["archive@acme.example", "ZOE@kunde.example"],
        "data": {
            "invoice_number": "INV-2026-0042",
            "due_date": "2026-12-15",
            "currency": "EUR",
            "customer": {"name": "Zoë Müller"},
            "items": [
                {"description": "Beratung <vor Ort>", "quantity": 3, "unit_price": 120.0},
                {"description": "Reise", "quantity": 1, "unit_price": 89.9}
            ]
        },
        "attachments": [{"filename": "Rechnung INV-2026-0042.pdf", "content_base64": b64(pdf)}]
    }))
}
