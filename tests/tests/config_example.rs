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

/// The example configuration moved to `dir/conf/`, with every path in it relative to that
/// directory and every secret in a file there.
fn relative_config(dir: &std::path::Path) -> std::path::PathBuf {
    let conf = dir.join("conf");
    std::fs::create_dir_all(conf.join("secrets")).unwrap();
    std::fs::create_dir_all(conf.join("attachments")).unwrap();
    for s in ["rabbitmq-password", "ingest-token-next", "notify-password"] {
        std::fs::write(conf.join("secrets").join(s), "x\n").unwrap();
    }
    std::os::unix::fs::symlink(
        workspace_root().join("examples/templates"),
        conf.join("templates"),
    )
    .unwrap();
    let text = std::fs::read_to_string(workspace_root().join("examples/mailpipe.toml"))
        .unwrap()
        .replace(
            "{ env = \"MAILPIPE_RABBITMQ_PASSWORD\" }",
            "{ file = \"secrets/rabbitmq-password\" }",
        )
        .replace("/run/secrets/", "secrets/")
        .replace("/etc/mailpipe/templates", "templates")
        .replace("/srv/mailpipe/attachments", "./attachments");
    let left: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains("\"/"))
        .collect();
    assert!(left.is_empty(), "absolute paths are left: {left:?}");
    let path = conf.join("mailpipe.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_config_with_relative_paths_works_from_any_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    let config = relative_config(dir.path());
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    // The same file by absolute path from `/`, and by a relative path from a sibling.
    for (cwd, config_arg) in [
        (std::path::PathBuf::from("/"), config.clone()),
        (
            elsewhere.clone(),
            std::path::PathBuf::from("../conf/mailpipe.toml"),
        ),
    ] {
        for b in Binary::ALL {
            let mut cmd = Command::new(bin_dir().unwrap().join(b.name()));
            if b == Binary::Ingest {
                // --config after the subcommand works as well as before it.
                cmd.arg("serve");
            }
            cmd.arg("--config")
                .arg(&config_arg)
                .arg("--check-config")
                .current_dir(&cwd)
                .env_remove("MAILPIPE_CONFIG")
                .env("MAILPIPE_INGEST_TOKEN", "t")
                .env("CONTOSO_CLIENT_SECRET", "s");
            let out = cmd.output().unwrap();
            assert!(
                out.status.success(),
                "{} from {}: {}{}",
                b.name(),
                cwd.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    // The relative secret path is the one read: without the file, the error names it.
    std::fs::remove_file(config.with_file_name("secrets").join("rabbitmq-password")).unwrap();
    let out = Command::new(bin_dir().unwrap().join(Binary::Render.name()))
        .arg("--config")
        .arg(&config)
        .arg("--check-config")
        .current_dir("/")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = config.with_file_name("secrets").join("rabbitmq-password");
    assert!(stderr.contains(&expected.display().to_string()), "{stderr}");
}

#[test]
fn a_misspelt_section_exits_2_naming_it() {
    let dirs = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(workspace_root().join("examples/mailpipe.toml"))
        .unwrap()
        .replace("[rabbitmq]", "[rabitmq]");
    let broken = dirs.path().join("broken.toml");
    std::fs::write(&broken, text).unwrap();
    for b in Binary::ALL {
        let out = check_config(b, &broken, &dirs);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {stderr}", b.name());
        assert!(
            stderr.contains("unknown section [rabitmq]"),
            "{}: {stderr}",
            b.name()
        );
    }
}
