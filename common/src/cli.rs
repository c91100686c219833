//! Flags every binary shares: `--config PATH` and `--check-config`, accepted before or
//! after a subcommand.

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
