//! The annotated example configuration is valid for every binary, and a broken one is
//! refused with exit code 2 and the key named.

use std::process::Command;

use mailpipe_tests::stack::{Binary, bin_dir, workspace_root};

fn check_config(
    binary: Binary,
    config: &std::path::Path,
    dirs: &tempfile::TempDir,
) -> std::process::Output {
    let secret = dirs.path().join("secret");
    std::fs::write(&secret, "x").unwrap();
    let templates = workspace_root().join("examples/templates");
    // The basic-auth mailbox reads its password from a file: point it at one that exists.
    let example = std::fs::read_to_string(config).unwrap().replace(
        "/run/secrets/notify-password",
        &secret.display().to_string(),
    );
    let patched = dirs.path().join(format!("{}.toml", binary.name()));
    std::fs::write(&patched, example).unwrap();
    let mut cmd = Command::new(bin_dir().unwrap().join(binary.name()));
    cmd.arg("--config").arg(&patched).arg("--check-config");
    // The example names production paths; point them at this machine's equivalents.
    cmd.env("MAILPIPE_RABBITMQ_PASSWORD", "x")
        .env("MAILPIPE_INGEST_TOKEN", "t")
        .env("CONTOSO_CLIENT_SECRET", "s")
        .env(
            "MAILPIPE_INGEST__API_TOKENS",
            format!("[{{file={:?}}}]", secret.display().to_string()),
        )
        .env("MAILPIPE_INGEST__TEMPLATES_DIR", &templates)
        .env("MAILPIPE_INGEST__ATTACHMENTS_ROOT", dirs.path())
        .env("MAILPIPE_RENDER__TEMPLATES_DIR", &templates)
        .env("MAILPIPE_RENDER__ATTACHMENTS_ROOT", dirs.path());
    cmd.output().unwrap()
}

#[test]
fn the_example_configuration_is_valid_for_every_binary() {
    let dirs = tempfile::tempdir().unwrap();
    let example = workspace_root().join("examples/mailpipe.toml");
    for b in Binary::ALL {
        let out = check_config(b, &example, &dirs);
        assert!(
            out.status.success(),
            "{} --check-config: {}{}",
            b.name(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_wrong_value_exits_2_naming_the_key() {
    let dirs = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(workspace_root().join("examples/mailpipe.toml"))
        .unwrap()
        .replace("prefetch = 32", "prefetch = \"lots\"");
    let broken = dirs.path().join("broken.toml");
    std::fs::write(&broken, text).unwrap();
    for b in Binary::ALL {
        let out = check_config(b, &broken, &dirs);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}: {}",
            b.name(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("rabbitmq.prefetch"),
            "{}: {}",
            b.name(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
