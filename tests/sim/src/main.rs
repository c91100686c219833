//! The `mailpipe-sim` binary: runs the Exchange Online simulator from a TOML file until
//! SIGINT/SIGTERM (local demo, benchmarks, scripts).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use mailpipe_sim::{SimConfig, Simulator};

/// Exchange Online stand-in: SMTP AUTH client submission (STARTTLS, XOAUTH2, LOGIN) and the
/// Entra ID client-credentials token endpoint, with Exchange's limits and reply texts.
///
/// Clients must connect to the name `localhost` and trust the CA written to
/// `<state_dir>/ca.pem`. See docs/simulator.md for the config reference.
#[derive(Debug, Parser)]
#[command(name = "mailpipe-sim", version, about, long_about)]
struct Args {
    /// The TOML configuration (see examples/sim.toml).
    #[arg(long, short, env = "MAILPIPE_SIM_CONFIG", value_name = "PATH")]
    config: PathBuf,
    /// Only parse and validate the configuration, then exit (0 when valid).
    #[arg(long)]
    check_config: bool,
    /// Print the addresses as one JSON line on stdout (for scripts) instead of text.
    #[arg(long)]
    print_json: bool,
    /// Override `smtp_listen` (e.g. 127.0.0.1:2587).
    #[arg(long, value_name = "ADDR")]
    smtp_listen: Option<std::net::SocketAddr>,
    /// Override `http_listen` (e.g. 127.0.0.1:8025).
    #[arg(long, value_name = "ADDR")]
    http_listen: Option<std::net::SocketAddr>,
    /// Log filter (RUST_LOG syntax).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log: String,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_new(&args.log).context("invalid --log filter")?;
    // Logs go to stderr so stdout carries only the address lines scripts read.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.log_json {
        builder.json().init();
    } else {
        builder.init();
    }

    let mut config = SimConfig::from_file(&args.config)?;
    if let Some(a) = args.smtp_listen {
        config.smtp_listen = a;
    }
    if let Some(a) = args.http_listen {
        config.http_listen = a;
    }
    if args.check_config {
        println!(
            "{}: valid ({} tenants, {} apps, {} mailboxes)",
            args.config.display(),
            config.tenants.len(),
            config.apps.len(),
            config.mailboxes.len()
        );
        return Ok(());
    }

    let signals = Signals::install()?;
    let sim = Simulator::start(config)
        .await
        .context("cannot start the simulator")?;
    if args.print_json {
        let line = serde_json::json!({
            "smtp_addr": sim.smtp_addr().to_string(),
            "smtp_host": "localhost",
            "smtp_port": sim.smtp_addr().port(),
            "http_addr": sim.http_addr().to_string(),
            "authority": sim.authority(),
            "ca_pem": sim.ca_pem_path().display().to_string(),
            "state_dir": sim.state_dir().display().to_string(),
        });
        println!("{line}");
    } else {
        println!(
            "SMTP      localhost:{} (listening on {})",
            sim.smtp_addr().port(),
            sim.smtp_addr()
        );
        println!("HTTP      {}", sim.authority());
        println!("authority {}", sim.authority());
        println!("CA        {}", sim.ca_pem_path().display());
    }
    signals.wait().await?;
    tracing::info!("shutting down");
    sim.shutdown().await;
    Ok(())
}

/// SIGTERM and SIGINT, listened for from creation on: installed before the addresses are
/// announced, so a signal sent right after reading them is never missed.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                term: signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?,
                int: signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    async fn wait(mut self) -> anyhow::Result<()> {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        #[cfg(not(unix))]
        tokio::signal::ctrl_c()
            .await
            .context("cannot wait for Ctrl-C")?;
        Ok(())
    }
}
