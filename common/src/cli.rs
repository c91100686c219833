//! What every binary shares on the command line: `--config PATH` and `--check-config`
//! (accepted before or after a subcommand), the report `--check-config` prints (text or
//! `--json`), and printing to stdout without panicking when it is closed.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use crate::config::{CommonSettings, ConfigError, Problem, redact_password};

#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    /// The mailpipe TOML file (one file for all binaries; each reads its section).
    /// Any key can be overridden by MAILPIPE_SECTION__KEY environment variables.
    #[arg(
        long,
        short = 'c',
        env = "MAILPIPE_CONFIG",
        value_name = "PATH",
        global = true
    )]
    pub config: Option<PathBuf>,

    /// Load and validate the configuration (including every secret it references), print
    /// a summary without secrets and every problem, one per line naming its key, and exit:
    /// 0 if valid, 2 if not.
    #[arg(long, global = true)]
    pub check_config: bool,

    /// With --check-config: print one JSON object {"ok", "errors": [{"key", "message"}],
    /// "warnings", "summary"} instead of text (docs/configuration.md). Give it before any
    /// subcommand.
    #[arg(long = "json", id = "check_config_json", requires = "check_config")]
    pub json: bool,
}

/// What loading and checking the configuration found: every error (each naming its key),
/// warnings, and a summary of the effective values without secrets. `--check-config`
/// prints it; a start that finds errors prints them and exits 2.
#[derive(Debug, Default, Serialize)]
pub struct ConfigCheck {
    ok: bool,
    errors: Vec<Problem>,
    warnings: Vec<Problem>,
    /// The sections read without error, as the process sees them (defaults and
    /// environment overrides applied); secrets appear as references (`{"env": "VAR"}`).
    summary: serde_json::Map<String, serde_json::Value>,
    /// The summary for people, one line each.
    #[serde(skip)]
    lines: Vec<String>,
}

impl ConfigCheck {
    pub fn new() -> Self {
        Self::default()
    }

    /// The value, or `None` with the error's problems recorded.
    pub fn check<T>(&mut self, result: Result<T, ConfigError>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.errors.extend(e.problems());
                None
            }
        }
    }

    pub fn error(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.errors.push(Problem::new(key, message));
    }

    pub fn warn(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Problem::new(key, message));
    }

    /// Adds `section`'s effective values to the summary. Only for values without inline
    /// secrets: secret references serialize as references.
    pub fn section(&mut self, section: &str, value: &impl Serialize) {
        match serde_json::to_value(value) {
            Ok(v) => {
                self.summary.insert(section.to_owned(), v);
            }
            Err(e) => self.error(section, format!("cannot be summarised: {e}")),
        }
    }

    /// A summary line for people (text output only).
    pub fn line(&mut self, text: impl Into<String>) {
        self.lines.push(text.into());
    }

    /// `[rabbitmq]` and `[database]` (their URLs' passwords shown as `***`) and
    /// `[telemetry]` in the summary.
    pub fn common(&mut self, common: &CommonSettings) {
        let mut rabbitmq = common.rabbitmq.clone();
        rabbitmq.url = redact_password(&rabbitmq.url);
        self.line(format!(
            "rabbitmq: {} (prefix {:?}, prefetch {}{})",
            rabbitmq.url,
            rabbitmq.prefix,
            rabbitmq.prefetch,
            match &rabbitmq.password {
                Some(_) => ", password from rabbitmq.password",
                None => "",
            }
        ));
        self.section("rabbitmq", &rabbitmq);
        self.section("telemetry", &common.telemetry);
        let mut database = common.database.clone();
        database.url = redact_password(&database.url);
        self.line(format!(
            "database: {} (schema {:?}, {} connections, retention {} days, migrate on start: {}{})",
            database.url,
            database.schema,
            database.max_connections,
            database.retention_days,
            database.migrate_on_start,
            match &database.password {
                Some(_) => ", password from database.password",
                None => "",
            }
        ));
        self.section("database", &database);
    }

    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }

    /// `--check-config`'s output. Text: the summary lines and warnings on stdout, each
    /// error on its own line on stderr. JSON: one object on stdout. Exit 0 without errors,
    /// 2 with.
    pub fn print(mut self, json: bool) -> ExitCode {
        self.ok = self.errors.is_empty();
        if json {
            match serde_json::to_string(&self) {
                Ok(text) => crate::outln!("{text}"),
                Err(e) => {
                    eprintln!("cannot write the report: {e}");
                    return ExitCode::FAILURE;
                }
            }
        } else {
            for line in &self.lines {
                crate::outln!("{line}");
            }
            for w in &self.warnings {
                crate::outln!("warning: {w}");
            }
            if self.ok {
                crate::outln!("configuration OK");
            }
            self.print_errors();
        }
        self.exit_code()
    }

    /// For a start that found errors: each on its own line on stderr; the exit code (2).
    pub fn fail(&self) -> ExitCode {
        self.print_errors();
        self.exit_code()
    }

    fn print_errors(&self) {
        for e in &self.errors {
            eprintln!("configuration error: {e}");
        }
        if self.errors.len() > 1 {
            eprintln!("{} configuration errors", self.errors.len());
        }
    }

    fn exit_code(&self) -> ExitCode {
        if self.errors.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(2)
        }
    }
}

/// Writes to stdout; when stdout is closed (`mailpipe-render --check-config | head`) the
/// process ends quietly with 141 (128 + SIGPIPE, what a shell shows for a killed pipe
/// writer) instead of panicking as `println!` does.
pub fn write_stdout(args: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        eprintln!("writing to stdout: {e}");
        std::process::exit(1);
    }
}

/// `print!` that survives a closed stdout (see [`write_stdout`]).
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::write_stdout(format_args!($($arg)*)) };
}

/// `println!` that survives a closed stdout (see [`write_stdout`]).
#[macro_export]
macro_rules! outln {
    () => { $crate::cli::write_stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::cli::write_stdout(format_args!("{}\n", format_args!($($arg)*))) };
}
