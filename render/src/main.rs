//! `mailpipe-render`: parses flags, loads configuration, runs the render stage.

use std::process::ExitCode;

use clap::Parser;
use mailpipe_common::cli::{ConfigArgs, ConfigCheck};
use mailpipe_common::config::{CommonSettings, ConfigSource};
use mailpipe_common::outln;
use mailpipe_render::templates::Templates;
use mailpipe_render::{Application, Settings};

/// Renders mailpipe jobs into MIME messages.
#[derive(Debug, Parser)]
#[command(name = "mailpipe-render", version)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,

    /// Load every template, render each with the sample data of its [[checks]], report
    /// every problem and exit: 0 if all are fine, 2 if not.
    #[arg(long)]
    check_templates: bool,
}

/// Loads `[rabbitmq]`, `[telemetry]` and `[render]`, recording every problem in `check`.
fn load(cli: &Cli, check: &mut ConfigCheck) -> Option<(CommonSettings, Settings)> {
    let source = check.check(ConfigSource::load(cli.config.config.as_deref()))?;
    let common = check.check(source.common());
    let settings = check.check(Settings::load(&source));
    if cli.config.check_config {
        // Every secret any mode needs; a start resolves the ones it uses.
        check.check(source.check_common_secrets());
    }
    Some((common?, settings?))
}

fn check_templates(settings: &Settings) -> ExitCode {
    match Templates::load(&settings.templates_dir) {
        Err(e) => {
            eprintln!("templates in {}:", e.dir.display());
            for p in &e.problems {
                eprintln!("  {p}");
            }
            ExitCode::from(2)
        }
        Ok(t) => {
            let problems = t.check();
            for p in &problems {
                eprintln!("  {p}");
            }
            if problems.is_empty() {
                outln!(
                    "{} templates OK: {}",
                    t.len(),
                    t.names().collect::<Vec<_>>().join(", ")
                );
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "{} problem(s) in {}",
                    problems.len(),
                    settings.templates_dir.display()
                );
                ExitCode::from(2)
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut check = ConfigCheck::new();
    let loaded = load(&cli, &mut check);
    if cli.config.check_config {
        if let Some((common, settings)) = &loaded {
            check.common(common);
            check.section("render", settings);
            check.line(format!(
                "render: templates in {}, Message-IDs @{}, concurrency {}",
                settings.templates_dir.display(),
                settings.message_id_domain,
                settings.concurrency
            ));
            for (key, dir) in [
                ("render.templates_dir", Some(&settings.templates_dir)),
                (
                    "render.attachments_root",
                    settings.attachments_root.as_ref(),
                ),
            ] {
                if let Some(dir) = dir
                    && !dir.is_dir()
                {
                    check.error(key, format!("{} is not a directory", dir.display()));
                }
            }
        }
        return check.print(cli.config.json);
    }
    let Some((common, settings)) = loaded.filter(|_| check.is_ok()) else {
        return check.fail();
    };
    if cli.check_templates {
        return check_templates(&settings);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async move {
        let _telemetry =
            match mailpipe_common::telemetry::init("mailpipe-render", &common.telemetry) {
                Ok(g) => g,
                Err(e) => {
                    eprintln!("configuration error: telemetry: {e}");
                    return ExitCode::from(2);
                }
            };
        let shutdown = mailpipe_common::shutdown::on_signals();
        let app = match Application::build(settings, common, shutdown).await {
            Ok(app) => app,
            Err(e) if e.is_config() => {
                eprintln!("configuration error: {e}");
                return ExitCode::from(2);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                return ExitCode::FAILURE;
            }
        };
        match app.run_until_stopped().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "stopped with an error");
                ExitCode::FAILURE
            }
        }
    });
    // A render given up on (render.job_timeout_ms) may still hold a blocking thread:
    // don't let it hold up the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    code
}
