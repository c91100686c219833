//! Every job shipped in examples/jobs and in the OpenAPI document is accepted by ingest
//! and renders, subject, HTML, text and MIME, through render's real `Renderer` with the
//! example templates: a new user's first batch does not end in dead letters.

#![allow(clippy::unwrap_used)]

use crate::support;

use std::sync::Arc;

use mailpipe_common::contract::{Job, JobLimits};
use mailpipe_ingest::api::OPENAPI_YAML;
use mailpipe_ingest::batch_reader::{Format, read_jobs};
use mailpipe_ingest::validate::Validator;
use mailpipe_render::Renderer;
use mailpipe_render::attachments::AttachmentLoader;
use mailpipe_render::templates::Templates;
use support::examples_dir;

/// ingest's validator and render's renderer over the same example templates; the
/// attachments root holds the file the OpenAPI's full example names.
struct Both {
    validator: Validator,
    renderer: Renderer,
    _root: tempfile::TempDir,
}

fn both() -> Both {
    let templates = examples_dir().join("templates");
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("2026/11")).unwrap();
    std::fs::write(root.path().join("2026/11/inv-000124.pdf"), b"%PDF-1.4").unwrap();
    let validator = Validator::new(
        JobLimits::default(),
        Some(Arc::new(Templates::load(&templates).unwrap())),
        Some(root.path().to_owned()),
    );
    let settings = mailpipe_render::Settings {
        message_id_domain: "mailpipe.test".into(),
        ..Default::default()
    };
    let renderer = Renderer::new(
        Templates::load(&templates).unwrap(),
        AttachmentLoader::new(Some(root.path()), settings.max_attachment_bytes).unwrap(),
        &settings,
    );
    Both {
        validator,
        renderer,
        _root: root,
    }
}

impl Both {
    /// Accepted by ingest, rendered by render; the text part names the invoice.
    fn renders(&self, what: &str, job: Job) {
        let message = self
            .renderer
            .render(&job)
            .unwrap_or_else(|e| panic!("{what}: render refuses it: {e}"));
        let mime = String::from_utf8_lossy(&message.mime);
        let number = job.data["invoice_number"].as_str().unwrap();
        assert!(mime.contains(number), "{what}: {number} not in\n{mime}");
    }

    fn renders_file(&self, file: &str, format: Format, expected: usize) {
        let path = examples_dir().join("jobs").join(file);
        self.renders_text(file, &std::fs::read(path).unwrap(), format, expected);
    }

    fn renders_text(&self, what: &str, text: &[u8], format: Format, expected: usize) {
        let mut jobs = Vec::new();
        read_jobs(text, format, &self.validator, |line, r| match r {
            Ok(job) => jobs.push((line, job)),
            Err(e) => panic!("{what} line {line}: ingest refuses it: {:?}", e.errors),
        })
        .unwrap();
        assert_eq!(jobs.len(), expected, "{what}");
        for (line, job) in jobs {
            self.renders(&format!("{what} line {line}"), job);
        }
    }
}

#[test]
fn every_example_job_is_accepted_and_renders() {
    let b = both();
    let invoice = std::fs::read(examples_dir().join("jobs/invoice.json")).unwrap();
    let job = b
        .validator
        .check(&invoice)
        .unwrap_or_else(|e| panic!("invoice.json: {:?}", e.errors));
    b.renders("invoice.json", job);
    b.renders_file("batch.jsonl", Format::Jsonl, 3);
    b.renders_file("batch.csv", Format::Csv, 2);
}

#[test]
fn the_csv_example_builds_nested_data() {
    let b = both();
    let csv = std::fs::read(examples_dir().join("jobs/batch.csv")).unwrap();
    let mut jobs = Vec::new();
    read_jobs(&csv[..], Format::Csv, &b.validator, |_, r| {
        jobs.push(r.unwrap())
    })
    .unwrap();
    // Row 1 fills one item (the columns of the second are empty), row 2 two.
    assert_eq!(
        serde_json::Value::Object(jobs[0].data.clone()),
        serde_json::json!({
            "invoice_number": "INV-2026-11-000301", "due_date": "2026-12-15", "currency": "EUR",
            "customer": {"name": "Ann Example"},
            "items": [{"description": "Support plan", "quantity": 1, "unit_price": 12.50}]
        })
    );
    assert_eq!(jobs[1].data["items"][1]["description"], "Licence");
    assert_eq!(jobs[1].data["items"][1]["unit_price"], 9.0);
}

#[test]
fn every_example_in_the_openapi_document_renders() {
    let b = both();
    let mut examples = 0;
    // `value: {...}` single-job examples.
    for line in OPENAPI_YAML.lines() {
        if let Some(json) = line.trim_start().strip_prefix("value: ") {
            let job = b
                .validator
                .check(json.as_bytes())
                .unwrap_or_else(|e| panic!("example {json}: {:?}", e.errors));
            b.renders("openapi value", job);
            examples += 1;
        }
    }
    // The `example: |` blocks of the batch upload, by media type.
    for (media, format, lines) in [
        ("application/x-ndjson:", Format::Jsonl, 2),
        ("text/csv:", Format::Csv, 1),
    ] {
        let block = example_block(media);
        b.renders_text(media, block.as_bytes(), format, lines);
        examples += lines;
    }
    assert_eq!(examples, 5);
}

/// The text of the `example: |` block under the first `media` key.
fn example_block(media: &str) -> String {
    let mut lines = OPENAPI_YAML.lines().skip_while(|l| l.trim() != media);
    let _ = lines.by_ref().find(|l| l.trim() == "example: |");
    let mut block = String::new();
    for l in lines {
        if !l.starts_with("              ") {
            break;
        }
        block.push_str(l.trim());
        block.push('\n');
    }
    assert!(!block.is_empty(), "no example block under {media}");
    block
}

/// The jobs shown in docs/ingest.md (```json blocks with an `id` and a `template`) are
/// accepted by ingest and rendered by render, as shown.
#[test]
fn every_job_shown_in_the_ingest_docs_renders() {
    let b = both();
    let doc = std::fs::read_to_string(examples_dir().join("../docs/ingest.md")).unwrap();
    let mut jobs = 0;
    for block in doc.split("```json").skip(1) {
        let json = block.split("```").next().unwrap();
        if !(json.contains("\"id\"") && json.contains("\"template\"")) {
            continue;
        }
        let job = b
            .validator
            .check(json.trim().as_bytes())
            .unwrap_or_else(|e| panic!("docs/ingest.md job {json}: {:?}", e.errors));
        b.renders("docs/ingest.md", job);
        jobs += 1;
    }
    assert!(jobs >= 1, "docs/ingest.md shows a job");
}
