//! `mailpipe-deliver`: sends rendered messages through the mailbox pool.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mailpipe_common::cli::{ConfigArgs, ConfigCheck};
use mailpipe_common::config::{CommonSettings, ConfigSource};
use mailpipe_common::domain::EmailAddress;
use mailpipe_deliver::check_pool::{self, CheckOptions};
use mailpipe_deliver::settings::DeliverSettings;
use mailpipe_deliver::startup::Application;

/// Deliver rendered messages from RabbitMQ through a throttled pool of Office 365
/// mailboxes (SMTP AUTH client submission, STARTTLS, OAuth2 XOAUTH2 or password).
#[derive(Debug, Parser)]
#[command(
    name = "mailpipe-deliver",
    version,
    after_help = "Examples:\n  mailpipe-deliver --config /etc/mailpipe/mailpipe.toml\n  mailpipe-deliver --config mailpipe.toml --check-config\n  mailpipe-deliver --config mailpipe.toml --check-config --json\n  mailpipe-deliver --config mailpipe.toml check-pool\n\nThe [deliver] section configures the pool; see docs/configuration.md."
)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check every pool mailbox without sending: token from its app, connect, EHLO,
    /// STARTTLS (verified, TLS 1.2+), AUTH, QUIT. One connection and one AUTH attempt per
    /// mailbox. With [deliver.graph]: the Graph permissions in the app's token and one Inbox
    /// read per mailbox. Then every sender domain's SPF, DKIM and DMARC through DNS
    /// ([deliver.check_pool]). Prints each result, the server's answer and what to fix;
    /// exits 0 when all pass (warnings allowed), 1 otherwise.
    #[command(
        after_help = "Examples:\n  mailpipe-deliver --config mailpipe.toml check-pool\n  mailpipe-deliver --config mailpipe.toml check-pool --json\n  mailpipe-deliver --config mailpipe.toml check-pool --send-test you@example.com\n\nSetting up a tenant so that every mailbox passes: docs/microsoft365.md."
    )]
    CheckPool {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Also send one short test message through each mailbox to this address.
        #[arg(long, value_name = "ADDRESS", value_parser = parse_address)]
        send_test: Option<EmailAddress>,
    },
}

fn parse_address(s: &str) -> Result<EmailAddress, String> {
    EmailAddress::parse(s).map_err(|e| e.to_string())
}

/// Loads `[rabbitmq]`, `[telemetry]` and `[deliver]`, recording every problem in `check`.
fn load(cli: &Cli, check: &mut ConfigCheck) -> Option<(CommonSettings, DeliverSettings)> {
    let source = check.check(ConfigSource::load(cli.config.config.as_deref()))?;
    let common = check.check(source.common());
    let settings = check.check(DeliverSettings::load(&source));
    if cli.config.check_config {
        // Every secret any mode needs; a start resolves the ones it uses.
        check.check(source.check_common_secrets());
    }
    Some((common?, settings?))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut check = ConfigCheck::new();
    let loaded = load(&cli, &mut check);
    if cli.config.check_config {
        if let Some((common, settings)) = &loaded {
            check.common(common);
            check.section("deliver", settings);
            check.line(format!(
                "deliver: {} mailboxes in {} tenants, From policy {:?}",
                settings.mailboxes.len(),
                settings.tenants.len(),
                settings.from_policy,
            ));
        }
        return check.print(cli.config.json);
    }
    let Some((common, settings)) = loaded.filter(|_| check.is_ok()) else {
        return check.fail();
    };
    if let Some(Command::CheckPool { json, send_test }) = cli.command {
        return check_pool::run(&settings, &CheckOptions { send_test }, json).await;
    }
    let _telemetry = match mailpipe_common::telemetry::init("mailpipe-deliver", &common.telemetry) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("mailpipe-deliver: telemetry: {e}");
            return ExitCode::from(2);
        }
    };
    let shutdown = mailpipe_common::shutdown::on_signals();
    let result = async {
        Application::build(&common, &settings, shutdown)
            .await?
            .run_until_stopped()
            .await
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "mailpipe-deliver failed");
            eprintln!("mailpipe-deliver: {e:#}");
            ExitCode::FAILURE
        }
    }
}
