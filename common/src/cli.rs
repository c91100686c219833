//! What every binary shares on the command line: `--config PATH` and `--check-config`
//! (accepted before or after a subcommand), and printing to stdout without panicking when
//! it is closed.

use std::path::PathBuf;

use clap::Args;

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

    /// Load and validate the configuration (including secrets it references), print a
    /// summary without secrets, and exit: 0 if valid, 2 if not.
    #[arg(long, global = true)]
    pub check_config: bool,
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
