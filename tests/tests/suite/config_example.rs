//! The annotated example configuration is valid for every binary, and a broken one is
//! refused with exit code 2, every problem reported, each naming its key (as text, or as
//! one JSON object with `--json`), and no secret printed.

#![allow(clippy::unwrap_used)]

use std::process::Command;

use mailpipe_tests::stack::{Binary, bin_dir, workspace_root};

fn check_config(
    binary: Binary,
    config: &std::path::Path,
    dirs: &tempfile::TempDir,
) -> std::process::Output {
    check_config_with(binary, config, dirs, |_| {})
}

/// `binary --config <the example, patched> --check-config`, with `adjust` changing the
/// command (more flags, other environment) before it runs.
fn check_config_with(
    binary: Binary,
    config: &std::path::Path,
    dirs: &tempfile::TempDir,
    adjust: impl FnOnce(&mut Command),
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
        .envs(WEBHOOK_SECRETS)
        .env(
            "MAILPIPE_INGEST__API_TOKENS",
            format!("[{{file={:?}}}]", secret.display().to_string()),
        )
        .env("MAILPIPE_INGEST__TEMPLATES_DIR", &templates)
        .env("MAILPIPE_INGEST__ATTACHMENTS_ROOT", dirs.path())
        .env("MAILPIPE_RENDER__TEMPLATES_DIR", &templates)
        .env("MAILPIPE_RENDER__ATTACHMENTS_ROOT", dirs.path())
        .env_remove("MAILPIPE_CONFIG");
    adjust(&mut cmd);
    cmd.output().unwrap()
}

/// The example's webhook signing keys (`[ingest.webhooks]`), in their `whsec_` form.
const WEBHOOK_SECRETS: [(&str, &str); 2] = [
    (
        "MAILPIPE_WEBHOOK_CALLBACK_SECRET",
        "whsec_Y2FsbGJhY2stc2lnbmluZy1rZXktb2YtMzItYnl0ZXM=",
    ),
    (
        "MAILPIPE_WEBHOOK_ERP_SECRET",
        "whsec_ZXJwLWVuZHBvaW50LXNpZ25pbmcta2V5LTMyLWJ5dGVz",
    ),
];

/// Secret values set for a check; none may show in its output.
const SECRETS: [(&str, &str); 3] = [
    ("MAILPIPE_RABBITMQ_PASSWORD", "rabbit-pw-never-printed"),
    ("MAILPIPE_INGEST_TOKEN", "ingest-token-never-printed"),
    ("CONTOSO_CLIENT_SECRET", "client-secret-never-printed"),
];

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn assert_no_secret(binary: Binary, output: &str) {
    for (_, value) in SECRETS {
        assert!(
            !output.contains(value),
            "{} printed a secret: {output}",
            binary.name()
        );
    }
    assert!(!output.contains("inline-pw-never-printed"), "{output}");
}

/// What each binary's own section gets wrong in the tests below, and the key it names.
fn own_section_error(binary: Binary) -> (&'static str, &'static str) {
    match binary {
        Binary::Ingest => ("MAILPIPE_INGEST__MAX_IN_FLIGHT", "ingest.max_in_flight"),
        Binary::Render => ("MAILPIPE_RENDER__CONCURRENCY", "render.concurrency"),
        Binary::Deliver => (
            "MAILPIPE_DELIVER__SMTP_TIMEOUT_MS",
            "deliver.smtp_timeout_ms",
        ),
    }
}

#[test]
fn check_config_prints_every_error_of_every_section_one_per_line() {
    let dirs = tempfile::tempdir().unwrap();
    let text_of_example =
        std::fs::read_to_string(workspace_root().join("examples/mailpipe.toml")).unwrap();
    let broken = dirs.path().join("broken.toml");
    std::fs::write(
        &broken,
        format!(
            "{}\n[rabitmq]\n",
            text_of_example.replace("prefetch = 32", "prefetch = 0")
        ),
    )
    .unwrap();
    for b in Binary::ALL {
        let (var, own_key) = own_section_error(b);
        let out = check_config_with(b, &broken, &dirs, |cmd| {
            cmd.env(var, "0")
                .env("MAILPIPE_TELEMETRY__LOG_FILTER", "info,mailpipe=lots")
                .env_remove("MAILPIPE_RABBITMQ_PASSWORD");
        });
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {stderr}", b.name());
        let errors: Vec<&str> = stderr
            .lines()
            .filter_map(|l| l.strip_prefix("configuration error: "))
            .collect();
        let expected = [
            "rabitmq: unknown section [rabitmq]",
            "rabbitmq.prefetch: must be at least 1",
            "telemetry.log_filter: ",
            own_key,
            "rabbitmq.password: environment variable MAILPIPE_RABBITMQ_PASSWORD is not set",
        ];
        for e in expected {
            assert!(
                errors.iter().filter(|l| l.starts_with(e)).count() == 1,
                "{}: no line starting {e:?} in\n{stderr}",
                b.name()
            );
        }
        assert_eq!(errors.len(), expected.len(), "{}: {stderr}", b.name());
        assert!(stderr.contains("5 configuration errors"), "{stderr}");
        // A start finds the same errors (and starts nothing).
        let mut start = Command::new(bin_dir().unwrap().join(b.name()));
        start
            .arg("--config")
            .arg(&broken)
            .env_remove("MAILPIPE_CONFIG")
            .env(var, "0");
        if b == Binary::Ingest {
            start.arg("serve");
        }
        let out = start.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {stderr}", b.name());
        for e in ["rabitmq", "rabbitmq.prefetch", own_key] {
            assert!(
                stderr.contains(&format!("configuration error: {e}")),
                "{}: {stderr}",
                b.name()
            );
        }
    }
}

#[test]
fn check_config_json_is_one_object_with_keyed_errors_and_no_secret() {
    let dirs = tempfile::tempdir().unwrap();
    let example = workspace_root().join("examples/mailpipe.toml");
    let json = |out: &std::process::Output| -> serde_json::Value {
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(stdout.lines().count(), 1, "one line of JSON: {stdout}");
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
    };
    for b in Binary::ALL {
        let section = b.name().trim_start_matches("mailpipe-");
        // Valid: ok, no errors, the effective sections with secrets as references.
        let out = check_config_with(b, &example, &dirs, |cmd| {
            cmd.arg("--json").envs(SECRETS).env(
                "MAILPIPE_RABBITMQ__URL",
                "amqp://mailpipe:inline-pw-never-printed@rabbitmq.internal:5672/%2f",
            );
        });
        assert_no_secret(b, &text(&out));
        assert_eq!(out.status.code(), Some(0), "{}: {}", b.name(), text(&out));
        let report = json(&out);
        assert_eq!(report["ok"], true, "{report}");
        assert_eq!(report["errors"], serde_json::json!([]), "{report}");
        assert!(report["warnings"].is_array(), "{report}");
        let summary = &report["summary"];
        assert_eq!(
            summary["rabbitmq"]["url"], "amqp://mailpipe:***@rabbitmq.internal:5672/%2f",
            "{report}"
        );
        assert_eq!(
            summary["rabbitmq"]["password"],
            serde_json::json!({"env": "MAILPIPE_RABBITMQ_PASSWORD"})
        );
        assert_eq!(summary["rabbitmq"]["prefetch"], 32);
        assert_eq!(summary["telemetry"]["log_format"], "json");
        assert!(summary[section].is_object(), "{}: {report}", b.name());

        // Invalid: ok false, exit 2, each error with its key; still one object.
        let (var, own_key) = own_section_error(b);
        let out = check_config_with(b, &example, &dirs, |cmd| {
            cmd.arg("--json")
                .envs(SECRETS)
                .env(var, "0")
                .env_remove("MAILPIPE_RABBITMQ_PASSWORD");
        });
        assert_no_secret(b, &text(&out));
        assert_eq!(out.status.code(), Some(2), "{}: {}", b.name(), text(&out));
        let report = json(&out);
        assert_eq!(report["ok"], false, "{report}");
        let keys: Vec<&str> = report["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
                e["key"].as_str().unwrap()
            })
            .collect();
        assert_eq!(
            keys,
            [own_key, "rabbitmq.password"],
            "{}: {report}",
            b.name()
        );
    }
    // A file that cannot be read is an error without a key, in the same shape.
    let out = Command::new(bin_dir().unwrap().join(Binary::Deliver.name()))
        .args([
            "--config",
            "/nonexistent/mailpipe.toml",
            "--check-config",
            "--json",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let report = json(&out);
    assert_eq!(report["ok"], false);
    assert_eq!(report["errors"][0]["key"], serde_json::Value::Null);
    assert!(
        report["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/mailpipe.toml"),
        "{report}"
    );
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
                .env("CONTOSO_CLIENT_SECRET", "s")
                .envs(WEBHOOK_SECRETS);
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
    // The relative secret path is the one read: without the file, every binary (each
    // needs the broker) says so, naming the key and the file.
    std::fs::remove_file(config.with_file_name("secrets").join("rabbitmq-password")).unwrap();
    for b in Binary::ALL {
        let out = Command::new(bin_dir().unwrap().join(b.name()))
            .arg("--config")
            .arg(&config)
            .arg("--check-config")
            .current_dir("/")
            .env_remove("MAILPIPE_CONFIG")
            .env("MAILPIPE_INGEST_TOKEN", "t")
            .env("CONTOSO_CLIENT_SECRET", "s")
            .envs(WEBHOOK_SECRETS)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {stderr}", b.name());
        let expected = config.with_file_name("secrets").join("rabbitmq-password");
        assert!(
            stderr.contains(&format!(
                "configuration error: rabbitmq.password: cannot read {}",
                expected.display()
            )),
            "{}: {stderr}",
            b.name()
        );
    }
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

/// Every TOML block of the docs that shows a `[database]` section, as the docs show it, is
/// accepted by every binary (with the password variable it names set).
#[test]
fn the_database_sections_shown_in_the_docs_are_valid() {
    let dirs = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for doc in [
        "docs/data.md",
        "docs/configuration.md",
        "docs/operations.md",
    ] {
        let text = std::fs::read_to_string(workspace_root().join(doc)).unwrap();
        for block in text.split("```toml").skip(1) {
            let toml = block.split("```").next().unwrap();
            if !toml.contains("[database]") {
                continue;
            }
            let file = dirs.path().join(format!("db-{checked}.toml"));
            std::fs::write(&file, toml).unwrap();
            for b in Binary::ALL {
                let out = Command::new(bin_dir().unwrap().join(b.name()))
                    .arg("--config")
                    .arg(&file)
                    .arg("--check-config")
                    .env("MAILPIPE_DATABASE_PASSWORD", "db-password-never-printed")
                    .env("MAILPIPE_RABBITMQ_PASSWORD", "x")
                    .env_remove("MAILPIPE_CONFIG")
                    .output()
                    .unwrap();
                let all = text_of(&out);
                // deliver needs its pool: only the [database] part is judged here.
                let database_errors: Vec<&str> = all
                    .lines()
                    .filter(|l| l.starts_with("configuration error: database"))
                    .collect();
                assert!(
                    database_errors.is_empty(),
                    "{doc}, {}: {database_errors:?}\n{toml}",
                    b.name()
                );
                assert!(!all.contains("db-password-never-printed"), "{all}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 2, "the docs show the [database] section");
}

fn text_of(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
