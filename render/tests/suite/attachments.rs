//! Attachments stay inside their root, whatever the path or symlinks say.

#![allow(clippy::unwrap_used)]

use crate::support;

use std::os::unix::fs::symlink;

use mailpipe_render::attachments::{AttachmentError, AttachmentLoader};
use support::{job, renderer_with, settings};

fn root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    std::fs::create_dir_all(r.join("2026-11")).unwrap();
    std::fs::write(r.join("2026-11/inv-1.pdf"), b"%PDF-1.4 one").unwrap();
    symlink("/etc", r.join("etc")).unwrap();
    symlink("/etc/passwd", r.join("passwd")).unwrap();
    symlink("2026-11/inv-1.pdf", r.join("latest.pdf")).unwrap();
    symlink("../../", r.join("2026-11/up")).unwrap();
    dir
}

#[test]
fn paths_that_leave_the_root_are_refused() {
    let dir = root();
    let loader = AttachmentLoader::new(Some(dir.path()), 1024).unwrap();
    for bad in [
        "/etc/passwd",
        "../etc/passwd",
        "2026-11/../../etc/passwd",
        "etc/passwd",
        "etc/no-such-file",
        "passwd",
        "2026-11/up/anything",
        "./passwd",
        "",
    ] {
        let err = loader.read_path("x.pdf", bad).unwrap_err();
        assert!(
            matches!(err, AttachmentError::Escapes { .. }),
            "{bad:?}: {err}"
        );
    }
}

#[test]
fn files_inside_the_root_are_read_even_through_inner_symlinks() {
    let dir = root();
    let loader = AttachmentLoader::new(Some(dir.path()), 1024).unwrap();
    assert_eq!(
        loader.read_path("x.pdf", "2026-11/inv-1.pdf").unwrap(),
        b"%PDF-1.4 one"
    );
    assert_eq!(
        loader.read_path("x.pdf", "latest.pdf").unwrap(),
        b"%PDF-1.4 one"
    );
    assert!(matches!(
        loader.read_path("x.pdf", "2026-11/nope.pdf"),
        Err(AttachmentError::Missing { .. })
    ));
    assert!(matches!(
        loader.read_path("x.pdf", "2026-11"),
        Err(AttachmentError::NotAFile { .. })
    ));
    let small = AttachmentLoader::new(Some(dir.path()), 4).unwrap();
    assert!(matches!(
        small.read_path("x.pdf", "2026-11/inv-1.pdf"),
        Err(AttachmentError::TooLarge {
            size: 12,
            max: 4,
            ..
        })
    ));
}

#[test]
fn without_a_root_path_attachments_are_refused() {
    let loader = AttachmentLoader::new(None, 1024).unwrap();
    assert!(matches!(
        loader.read_path("x.pdf", "a.pdf"),
        Err(AttachmentError::NoRoot { .. })
    ));
}

#[test]
fn jobs_with_path_attachments_render_and_bad_ones_die_with_a_reason() {
    let dir = root();
    let s = settings(&support::examples_dir(), Some(dir.path()));
    let renderer = renderer_with(&s);
    let base = |path: &str| {
        job(serde_json::json!({
            "id": "n1", "template": "notification", "to": ["a@b.example"],
            "data": {"title": "t", "message": "m"},
            "attachments": [{"filename": "inv.pdf", "path": path}]
        }))
    };
    let ok = renderer.render(&base("2026-11/inv-1.pdf")).unwrap();
    let msg = mail_parser::MessageParser::default()
        .parse(&ok.mime)
        .unwrap();
    assert_eq!(
        msg.attachments().next().unwrap().contents(),
        b"%PDF-1.4 one"
    );

    let err = renderer.render(&base("passwd")).unwrap_err();
    assert_eq!(err.kind(), "attachment_path");
    assert!(
        err.to_string().contains("leaves the attachments root"),
        "{err}"
    );
    let err = renderer.render(&base("2026-11/gone.pdf")).unwrap_err();
    assert_eq!(err.kind(), "attachment_missing");
}

#[test]
fn oversize_inline_attachments_and_messages_are_refused() {
    let mut s = settings(&support::examples_dir(), None);
    s.max_attachment_bytes = 1000;
    let renderer = renderer_with(&s);
    let j = |bytes: usize| {
        job(serde_json::json!({
            "id": "n1", "template": "notification", "to": ["a@b.example"],
            "data": {"title": "t", "message": "m"},
            "attachments": [{"filename": "a.bin", "content_base64": support::b64(&vec![7u8; bytes])}]
        }))
    };
    assert!(renderer.render(&j(1000)).is_ok());
    let err = renderer.render(&j(1001)).unwrap_err();
    assert_eq!(err.kind(), "attachment_too_large");

    let mut s = settings(&support::examples_dir(), None);
    s.max_message_bytes = 2000;
    let err = renderer_with(&s).render(&j(1000)).unwrap_err();
    assert_eq!(err.kind(), "message_too_large");
    assert!(
        err.to_string().contains("render.max_message_bytes"),
        "{err}"
    );
}
