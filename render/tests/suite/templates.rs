//! Template loading, checks and errors.

#![allow(clippy::unwrap_used)]

use crate::support;

use mailpipe_render::RenderError;
use mailpipe_render::templates::{TemplateError, Templates};
use support::{example_renderer, examples_dir, job};

#[test]
fn the_examples_load_and_pass_their_checks() {
    let t = Templates::load(&examples_dir()).expect("examples load");
    assert_eq!(t.names().collect::<Vec<_>>(), ["invoice", "notification"]);
    assert_eq!(t.check(), Vec::<String>::new());
}

#[test]
fn a_missing_variable_is_named() {
    let j = job(serde_json::json!({
        "id": "j1", "template": "invoice", "to": ["a@b.example"],
        "data": {"invoice_number": "1", "due_date": "x", "currency": "EUR", "items": []}
    }));
    let err = example_renderer().render(&j).unwrap_err();
    assert_eq!(err.kind(), "undefined_variable");
    let msg = err.to_string();
    assert!(msg.contains("data.customer.name"), "{msg}");
    assert!(msg.contains("invoice/subject.txt"), "{msg}");
}

#[test]
fn a_missing_variable_in_a_body_is_named_with_its_file_and_line() {
    let j = job(serde_json::json!({
        "id": "j1", "template": "notification", "to": ["a@b.example"], "data": {"title": "t"}
    }));
    let err = example_renderer().render(&j).unwrap_err();
    let RenderError::Template(TemplateError::Undefined {
        template,
        expression,
        line,
    }) = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(expression, "data.message");
    assert!(template.starts_with("notification/body."), "{template}");
    assert!(line.is_some());
}

#[test]
fn unknown_templates_and_missing_senders_are_refused() {
    let j = job(serde_json::json!({"id": "j1", "template": "nope", "to": ["a@b.example"]}));
    let err = example_renderer().render(&j).unwrap_err();
    assert_eq!(err.kind(), "unknown_template");
    assert!(err.to_string().contains("\"nope\""));

    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("bare");
    std::fs::create_dir(&t).unwrap();
    std::fs::write(t.join("subject.txt"), "hi").unwrap();
    std::fs::write(t.join("body.txt"), "hi").unwrap();
    let r = support::renderer_with(&support::settings(dir.path(), None));
    let err = r
        .render(&job(
            serde_json::json!({"id": "j1", "template": "bare", "to": ["a@b.example"]}),
        ))
        .unwrap_err();
    assert_eq!(err.kind(), "no_sender");
    let ok = r.render(&job(serde_json::json!({"id": "j1", "template": "bare", "from": "me@acme.example", "bcc": ["a@b.example"]}))).unwrap();
    let text = String::from_utf8_lossy(&ok.mime);
    assert!(text.contains("To: \"undisclosed-recipients\":;"), "{text}");
    assert_eq!(ok.meta.recipients.len(), 1);
}

#[test]
fn loading_reports_every_problem_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mk = |name: &str, files: &[(&str, &str)]| {
        let t = dir.path().join(name);
        std::fs::create_dir(&t).unwrap();
        for (f, c) in files {
            std::fs::write(t.join(f), c).unwrap();
        }
    };
    mk("good", &[("subject.txt", "ok"), ("body.txt", "ok")]);
    mk(
        "syntax",
        &[("subject.txt", "ok"), ("body.html", "{% for x in %}")],
    );
    mk("nosubject", &[("body.txt", "ok")]);
    mk("nobody", &[("subject.txt", "ok")]);
    mk(
        "badheader",
        &[
            ("subject.txt", "ok"),
            ("body.txt", "ok"),
            ("template.toml", "[headers]\nBcc = \"x@y.example\"\n"),
        ],
    );
    mk(
        "badfrom",
        &[
            ("subject.txt", "ok"),
            ("body.txt", "ok"),
            ("template.toml", "from = \"not an address\"\n"),
        ],
    );
    mk("bad.name", &[("subject.txt", "ok"), ("body.txt", "ok")]);
    let err = Templates::load(dir.path()).unwrap_err();
    let all = err.problems.join("\n");
    for needle in [
        "syntax/body.html",
        "nosubject: subject.txt",
        "nobody: needs body",
        "headers.Bcc",
        "badfrom/template.toml",
        "bad.name",
    ] {
        assert!(all.contains(needle), "{needle} missing from:\n{all}");
    }
    assert!(!all.contains("good"), "{all}");
}

#[test]
fn checks_report_every_failing_sample() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("t");
    std::fs::create_dir(&t).unwrap();
    std::fs::write(t.join("subject.txt"), "{{ data.a }}").unwrap();
    std::fs::write(t.join("body.txt"), "{{ data.b }}").unwrap();
    std::fs::write(
        t.join("template.toml"),
        "[[checks]]\nname = \"ok\"\ndata = { a = 1, b = 2 }\n[[checks]]\nname = \"no b\"\ndata = { a = 1 }\n[[checks]]\nname = \"no a\"\ndata = { b = 1 }\n",
    )
    .unwrap();
    let problems = Templates::load(dir.path()).unwrap().check();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].contains("no b") && problems[0].contains("data.b"),
        "{problems:?}"
    );
    assert!(
        problems[1].contains("no a") && problems[1].contains("data.a"),
        "{problems:?}"
    );
}
