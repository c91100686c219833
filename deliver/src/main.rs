//! `mailpipe-deliver`: sends rendered messages through the mailbox pool.

use std::process::ExitCode;

use clap::Parser;
use mailpipe_common::cli::ConfigArgs;
use mailpipe_common::config::ConfigSource;
use mailpipe_common::outln;
use mailpipe_deliver::settings::DeliverSettings;
use mailpipe_deliver::startup::Application;

/// Deliver rendered messages from RabbitMQ through a throttled pool of Office 365
/// mailboxes (SMTP AUTH client submission, STARTTLS, OAuth2 XOAUTH2 or password).
#[derive(Debug, Parser)]
#[command(
    name = "mailpipe-deliver",
    version,
    after_help = "Examples:\n  mailpipe-deliver --config /etc/mailpipe/mailpipe.toml\n  mailpipe-deliver --config mailpipe.toml --check-config\n\nThe [deliver] section configures the pool; see docs/configuration.md."
)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let loaded = ConfigSource::load(cli.config.config.as_deref())
        .and_then(|src| Ok((src.common()?, DeliverSettings::load(&src)?)));
    let (common, settings) = match loaded {
        Ok(v) => v,
        Err(e) => {
            eprintln!("mailpipe-deliver: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.config.check_config {
        outln!(
            "configuration OK: {} mailboxes in {} tenants, From policy {:?}, RabbitMQ prefix {:?}",
            settings.mailboxes.len(),
            settings.tenants.len(),
            settings.from_policy,
            common.rabbitmq.prefix
        );
        return ExitCode::SUCCESS;
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
