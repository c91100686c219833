//! The binary's flags and exit codes.

#![allow(clippy::unwrap_used)]

use std::process::Command;

fn run(config: &str, args: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mailpipe.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mailpipe-render"))
        .arg("--config")
        .arg(&path)
        .args(args)
        .env_remove("MAILPIPE_CONFIG")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn config(templates: &std::path::Path) -> String {
    format!(
        "[render]\ntemplates_dir = {:?}\nmessage_id_domain = \"mail.acme.example\"\n",
        templates.display().to_string()
    )
}

#[test]
fn check_templates_passes_on_the_examples_and_lists_every_problem_otherwise() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/templates");
    let (code, text) = run(&config(&examples), &["--check-templates"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("invoice, notification"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    for name in ["a", "b"] {
        let t = dir.path().join(name);
        std::fs::create_dir(&t).unwrap();
        std::fs::write(t.join("subject.txt"), "{{ data.x }}").unwrap();
        std::fs::write(t.join("body.txt"), "{{ data.y }}").unwrap();
        std::fs::write(
            t.join("template.toml"),
            "[[checks]]\nname = \"s\"\ndata = { x = 1 }\n",
        )
        .unwrap();
    }
    let (code, text) = run(&config(dir.path()), &["--check-templates"]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("a [check \"s\"]")
            && text.contains("b [check \"s\"]")
            && text.contains("data.y"),
        "{text}"
    );
}

#[test]
fn configuration_errors_exit_2_with_the_key_named() {
    let (code, text) = run("[render]\n", &["--check-config"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("render.message_id_domain"), "{text}");
    let (code, text) = run(
        "[render]\nmessage_id_domain = \"a.example\"\nconcurrency = 0\n",
        &[],
    );
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("render.concurrency"), "{text}");
    let (code, text) = run(
        "[render]\nmessage_id_domain = \"a.example\"\ntemplates_dir = \"/nonexistent/t\"\n",
        &[],
    );
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("/nonexistent/t"), "{text}");
}

/// `mailpipe-render --check-config | head -c0`: stdout closed before the summary is
/// written. The process ends without a panic (141, like a writer killed by SIGPIPE).
#[test]
fn a_closed_stdout_ends_quietly_instead_of_panicking() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/templates");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mailpipe.toml");
    std::fs::write(&path, config(&examples)).unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_mailpipe-render"))
        .arg("--config")
        .arg(&path)
        .arg("--check-config")
        .env_remove("MAILPIPE_CONFIG")
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(141), "{stderr}");
}
