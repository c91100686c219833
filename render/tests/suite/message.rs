//! The rendered bytes, read back by an independent parser (mail-parser).

#![allow(clippy::unwrap_used)]

use crate::support;

use std::collections::BTreeSet;

use mail_parser::{HeaderName, MessageParser, MimeHeaders, PartType};
use mailpipe_common::contract::Job;
use proptest::prelude::*;
use support::{
    DOMAIN, b64, example_renderer, invoice_job, job, pdf::sample_pdf, renderer_with, settings,
};

fn header_names(raw: &[u8]) -> Vec<String> {
    let msg = MessageParser::default().parse(raw).expect("parses");
    msg.headers()
        .iter()
        .map(|h| h.name.as_str().to_owned())
        .collect()
}

/// The top-level header block as text (everything before the first empty line).
fn header_block(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    text.split("\r\n\r\n").next().unwrap_or_default().to_owned()
}

#[test]
fn an_invoice_is_mixed_with_alternative_text_and_html_plus_the_pdf() {
    let pdf = sample_pdf(50 * 1024);
    let rendered = example_renderer()
        .render(&invoice_job("inv-42", &pdf))
        .expect("renders");
    let msg = MessageParser::default()
        .parse(&rendered.mime)
        .expect("parses");

    // Structure: multipart/mixed > [multipart/alternative > [text/plain, text/html], application/pdf].
    let root = msg.root_part();
    let ct = root.content_type().expect("content type");
    assert_eq!((ct.ctype(), ct.subtype()), ("multipart", Some("mixed")));
    let children = root.sub_parts().expect("multipart");
    assert_eq!(children.len(), 2);
    let alt = msg.part(children[0]).unwrap();
    let ct = alt.content_type().unwrap();
    assert_eq!(
        (ct.ctype(), ct.subtype()),
        ("multipart", Some("alternative"))
    );
    let alt_children = alt.sub_parts().unwrap();
    assert_eq!(alt_children.len(), 2);
    let text = msg.part(alt_children[0]).unwrap();
    let html = msg.part(alt_children[1]).unwrap();
    assert!(
        matches!(text.body, PartType::Text(_)),
        "{:?}",
        text.content_type()
    );
    assert!(
        matches!(html.body, PartType::Html(_)),
        "{:?}",
        html.content_type()
    );
    let pdf_part = msg.part(children[1]).unwrap();
    let ct = pdf_part.content_type().unwrap();
    assert_eq!((ct.ctype(), ct.subtype()), ("application", Some("pdf")));
    assert_eq!(
        pdf_part.attachment_name(),
        Some("Rechnung INV-2026-0042.pdf")
    );
    assert_eq!(
        pdf_part.contents(),
        pdf.as_slice(),
        "attachment bytes survive byte for byte"
    );

    // Headers.
    assert_eq!(
        msg.subject(),
        Some("Invoice INV-2026-0042 for Zoë Müller, due 2026-12-15")
    );
    let to = msg.to().unwrap().first().unwrap();
    assert_eq!(
        (to.name(), to.address()),
        (Some("Zoë Müller"), Some("zoe@kunde.example"))
    );
    assert_eq!(
        msg.cc().unwrap().first().unwrap().address(),
        Some("accounting@kunde.example")
    );
    assert_eq!(
        msg.reply_to().unwrap().first().unwrap().address(),
        Some("accounts@acme.example"),
        "template default Reply-To"
    );
    let id = msg.message_id().expect("Message-ID");
    assert!(id.ends_with(&format!("@{DOMAIN}")), "{id}");
    assert_eq!(rendered.meta.message_id, format!("<{id}>"));
    let date = msg.date().expect("Date").to_timestamp();
    assert!((date - chrono::Utc::now().timestamp()).abs() < 60);
    let names = header_names(&rendered.mime);
    assert!(
        !names.iter().any(|n| n.eq_ignore_ascii_case("bcc")),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n.eq_ignore_ascii_case("from")),
        "deliver writes From: {names:?}"
    );
    assert!(msg.bcc().is_none() && msg.from().is_none());
    assert!(
        !String::from_utf8_lossy(&rendered.mime).contains("archive@acme.example"),
        "Bcc addresses appear nowhere in the message"
    );
    assert_eq!(
        msg.header_raw(HeaderName::Other("X-Mailpipe-Template".into()))
            .map(str::trim),
        Some("invoice")
    );

    // Meta: template default From, envelope = to + cc + bcc without the case-variant duplicate.
    let m = &rendered.meta;
    assert_eq!(m.from.address.as_str(), "billing@acme.example");
    assert_eq!(m.from.name.as_deref(), Some("Acme Billing"));
    assert!(m.has_reply_to);
    let rcpts: Vec<&str> = m.recipients.iter().map(|a| a.as_str()).collect();
    assert_eq!(
        rcpts,
        [
            "zoe@kunde.example",
            "accounting@kunde.example",
            "archive@acme.example"
        ]
    );
    assert_eq!(
        (
            m.job_id.as_str(),
            m.batch.as_ref().map(|b| b.as_str()),
            m.attempt
        ),
        ("inv-42", Some("2026-11"), 0)
    );

    // Bodies: totals computed from data.items; HTML escaped, text not.
    let html = html.text_contents().unwrap();
    assert!(html.contains("Beratung &lt;vor Ort&gt;"), "{html}");
    assert!(
        html.contains("360.00 EUR") && html.contains("449.90 EUR"),
        "{html}"
    );
    let text = text.text_contents().unwrap();
    assert!(
        text.contains("Beratung <vor Ort>: 3 x 120.00 = 360.00 EUR"),
        "{text}"
    );
    assert!(text.contains("Total due: 449.90 EUR"), "{text}");
}

/// A template that puts job data straight into the subject and bodies.
fn echo_templates() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("echo");
    std::fs::create_dir(&t).unwrap();
    std::fs::write(t.join("subject.txt"), "{{ data.subject }}").unwrap();
    std::fs::write(t.join("body.txt"), "{{ data.body }}").unwrap();
    std::fs::write(t.join("body.html"), "<p>{{ data.body }}</p>").unwrap();
    dir
}

fn echo_job(subject: &str, to_name: &str, from_name: &str) -> Job {
    job(serde_json::json!({
        "id": "echo-1",
        "template": "echo",
        "from": {"name": from_name, "address": "billing@acme.example"},
        "to": [{"name": to_name, "address": "zoe@kunde.example"}],
        "data": {"subject": subject, "body": "hello"},
        "attachments": [{"filename": "Rechnung für Zoë — 12 €.pdf", "content_base64": b64(b"%PDF-1.4 tiny")}]
    }))
}

#[test]
fn non_ascii_subjects_names_and_file_names_round_trip() {
    let dir = echo_templates();
    let renderer = renderer_with(&settings(dir.path(), None));
    let subject = "Rechnung für Zoë Müller — 12 €";
    let rendered = renderer
        .render(&echo_job(
            subject,
            "Zoë Müller, \"Finanz\" <Abt.>",
            "Acme Bücher",
        ))
        .unwrap();
    let head = header_block(&rendered.mime);
    assert!(head.is_ascii(), "headers are 7-bit: {head}");
    let msg = MessageParser::default().parse(&rendered.mime).unwrap();
    assert_eq!(msg.subject(), Some(subject));
    let to = msg.to().unwrap().first().unwrap();
    assert_eq!(to.name(), Some("Zoë Müller, \"Finanz\" <Abt.>"));
    assert_eq!(to.address(), Some("zoe@kunde.example"));
    let att = msg.attachments().next().expect("attachment");
    assert_eq!(att.attachment_name(), Some("Rechnung für Zoë — 12 €.pdf"));
    assert_eq!(att.contents(), b"%PDF-1.4 tiny");
    assert_eq!(rendered.meta.from.name.as_deref(), Some("Acme Bücher"));
    assert!(!rendered.meta.has_reply_to);
    assert!(msg.reply_to().is_none());
}

const EXPECTED_HEADERS: [&str; 6] = [
    "Message-ID",
    "Date",
    "Subject",
    "To",
    "MIME-Version",
    "Content-Type",
];

fn assert_only_expected_headers(raw: &[u8]) {
    let names: BTreeSet<String> = header_names(raw)
        .into_iter()
        .map(|n| n.to_ascii_lowercase())
        .collect();
    let expected: BTreeSet<String> = EXPECTED_HEADERS
        .iter()
        .map(|n| n.to_ascii_lowercase())
        .collect();
    assert_eq!(names, expected, "{}", header_block(raw));
}

#[test]
fn line_breaks_in_template_data_cannot_add_headers() {
    let dir = echo_templates();
    let renderer = renderer_with(&settings(dir.path(), None));
    for evil in [
        "Hi\r\nBcc: victim@evil.example",
        "Hi\nBcc: victim@evil.example\nX-Injected: 1",
        "Hi\r\n\r\nbody takeover",
        "Hi\rFrom: ceo@acme.example",
        "\r\nBcc: x@evil.example",
        "Hi\u{2028}Bcc: x@evil.example",
    ] {
        let rendered = renderer.render(&echo_job(evil, "Zoë", "Acme")).unwrap();
        assert_only_expected_headers(&rendered.mime);
        let msg = MessageParser::default().parse(&rendered.mime).unwrap();
        let subject = msg.subject().unwrap();
        assert!(!subject.contains(['\r', '\n']), "{subject:?}");
        assert!(
            subject.contains("Bcc:")
                || subject.contains("body takeover")
                || subject.contains("From:"),
            "the text stays, on one line: {subject:?}"
        );
    }
}

#[test]
fn line_breaks_in_names_or_addresses_never_reach_the_renderer() {
    for bad in [
        r#"{"id":"j","template":"echo","to":[{"name":"Eve\r\nBcc: x@evil.example","address":"a@b.example"}]}"#,
        r#"{"id":"j","template":"echo","to":["a@b.example\r\nBcc: x@evil.example"]}"#,
        r#"{"id":"j","template":"echo","to":["a@b.example"],"from":{"name":"A\nB","address":"a@b.example"}}"#,
        r#"{"id":"j","template":"echo","to":["a@b.example"],"attachments":[{"filename":"a\r\nb.pdf","content_base64":"AA=="}]}"#,
    ] {
        assert!(Job::from_queue(bad.as_bytes()).is_err(), "{bad}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever text lands in the subject or a display name, the header list is the same.
    #[test]
    fn arbitrary_subjects_and_names_add_no_header(
        subject in "[ -~\\r\\n\\t\u{e4}\u{20ac}\u{2014}:<>\"]{0,120}",
        name in "[ -~\u{e4}\u{20ac}:<>\",;@]{0,60}",
    ) {
        let dir = echo_templates();
        let renderer = renderer_with(&settings(dir.path(), None));
        let rendered = renderer.render(&echo_job(&subject, &name, &name)).unwrap();
        assert_only_expected_headers(&rendered.mime);
        prop_assert!(header_block(&rendered.mime).is_ascii());
        let msg = MessageParser::default().parse(&rendered.mime).unwrap();
        prop_assert_eq!(msg.headers().iter().filter(|h| h.name == HeaderName::To).count(), 1);
        prop_assert_eq!(msg.to().unwrap().first().unwrap().address(), Some("zoe@kunde.example"));
    }
}
