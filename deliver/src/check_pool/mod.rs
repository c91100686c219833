//! `mailpipe-deliver check-pool`: checks every pool mailbox without sending (token from
//! its app, connect, EHLO, STARTTLS verified, AUTH, QUIT) through the same pool and session
//! code deliver sends with, and says what to fix. One connection and at most one AUTH per
//! mailbox per run: a failing mailbox is not hammered (Exchange throttles repeated errors).
//! With `[deliver.graph]` enabled it also reads one message summary of each Inbox through
//! Microsoft Graph, as deliver does for bounces and uncertain sends, after reading the
//! permissions in the app's Graph token: an app not granted the mailbox is named here, not
//! discovered when the first NDR goes unread or the first Graph send is refused.

mod domains;
mod graph_check;
mod graph_permissions;
mod hint;
mod report;
mod settings;

use std::process::ExitCode;

use futures::StreamExt as _;
use mail_builder::MessageBuilder;
use mailpipe_common::domain::EmailAddress;

pub use domains::from_domains;
pub use graph_check::{GraphCheck, graph_hint};
pub use graph_permissions::{MAX_TOKEN_BYTES, Need, needs, token_roles};
pub use hint::{HintContext, aadsts_code, hint};
pub use report::{MailboxCheck, PoolReport};
pub use settings::CheckPoolSettings;

use crate::pool::{MailboxPool, SessionError};
use crate::settings::DeliverSettings;
use crate::smtp::SmtpFailure;

/// Mailboxes checked at once (each with its own single connection).
const PARALLEL: usize = 8;

#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// Also send one short message through each mailbox to this address.
    pub send_test: Option<EmailAddress>,
}

/// The subcommand: prints the report (a table, or JSON) and gives the exit code: 0 all
/// passed, 1 some failed, 2 the pool could not be built.
pub async fn run(settings: &DeliverSettings, options: &CheckOptions, json: bool) -> ExitCode {
    match check_pool(settings, options).await {
        Ok(report) => {
            if json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_table());
            }
            if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("mailpipe-deliver check-pool: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Checks every mailbox of the pool; the report lists them in configuration order.
pub async fn check_pool(
    settings: &DeliverSettings,
    options: &CheckOptions,
) -> anyhow::Result<PoolReport> {
    let pool = MailboxPool::build(settings)?;
    let pool = &pool;
    let graph = GraphCheck::from_settings(settings)?;
    let graph = graph.as_ref();
    let checks: Vec<MailboxCheck> = futures::stream::iter(0..pool.mailboxes().len())
        .map(|idx| async move {
            let mut check = check_mailbox(pool, settings, idx, options).await;
            if let Some(graph) = graph {
                graph.check(&pool.mailboxes()[idx], &mut check).await;
            }
            check
        })
        .buffered(PARALLEL)
        .collect()
        .await;
    let domains = domains::check_domains(settings).await?;
    Ok(PoolReport::new(checks, domains))
}

async fn check_mailbox(
    pool: &MailboxPool,
    settings: &DeliverSettings,
    idx: usize,
    options: &CheckOptions,
) -> MailboxCheck {
    let m = &pool.mailboxes()[idx];
    let client_id = settings
        .tenants
        .get(m.tenant)
        .and_then(|t| t.oauth.as_ref())
        .map(|a| a.client_id.as_str());
    let mut check = MailboxCheck {
        mailbox: m.address.to_string(),
        tenant: m.tenant_id.clone(),
        auth: m.auth_label(),
        endpoint: m.endpoint(),
        ok: false,
        stage: String::new(),
        reply: String::new(),
        hint: None,
        test_message: None,
        graph: None,
        warnings: Vec::new(),
    };
    if m.transport == crate::settings::Transport::Graph {
        // Sent through Graph: no SMTP session to check (the tenant may have SMTP AUTH off);
        // the Graph check below reads the token's permissions and the mailbox's Inbox
        // (`--send-test` is SMTP's).
        check.endpoint = settings.graph.base_url.clone();
        check.stage = "done".into();
        check.ok = true;
        check.reply = if settings.graph.enabled {
            "transport = graph: no SMTP session".into()
        } else {
            "transport = graph needs [deliver.graph] enabled = true".into()
        };
        return check;
    }
    let mut session = match pool.open_once(idx).await {
        Ok(s) => s,
        Err(e) => {
            check.stage = match &e {
                SessionError::Token(_) => "token".into(),
                SessionError::Smtp(f) => f.stage().as_str().into(),
            };
            check.reply = match &e {
                SessionError::Smtp(SmtpFailure::Reply { reply, .. }) => {
                    format!("{} {}", reply.code, reply.text)
                }
                other => other.to_string(),
            };
            check.hint = Some(hint(
                &e,
                HintContext {
                    mailbox: m.address.as_str(),
                    oauth: m.is_oauth(),
                    client_id,
                },
            ));
            return check;
        }
    };
    let auth = session.auth_reply();
    check.reply = format!("{} {}", auth.code, auth.text);
    check.stage = "done".into();
    check.ok = true;
    if let Some(to) = &options.send_test {
        let message = test_message(&m.address, to, &check.tenant);
        match session
            .send(
                &m.address,
                std::slice::from_ref(to),
                &message,
                std::time::Instant::now() + std::time::Duration::from_secs(3_600),
            )
            .await
        {
            Ok(report) if report.delivered() => {
                check.test_message = Some(format!("{} {}", report.reply.code, report.reply.text));
            }
            Ok(report) => {
                check.ok = false;
                check.stage = "test_message".into();
                check.test_message = Some(format!("{} {}", report.reply.code, report.reply.text));
                check.hint = Some(
                    match crate::smtp::classify::sender_domain_refusal(&report.reply) {
                        Some(domain) => domain.hint().into(),
                        None => "the test message was refused: see the reply".into(),
                    },
                );
            }
            Err(f) => {
                check.ok = false;
                check.stage = "test_message".into();
                check.test_message = Some(match &f {
                    SmtpFailure::Reply { reply, .. } => format!("{} {}", reply.code, reply.text),
                    other => other.to_string(),
                });
                check.hint = Some(hint(
                    &SessionError::Smtp(f),
                    HintContext {
                        mailbox: m.address.as_str(),
                        oauth: m.is_oauth(),
                        client_id,
                    },
                ));
            }
        }
    }
    session.quit().await;
    check
}

/// A short plain-text message From the mailbox itself (always allowed).
fn test_message(from: &EmailAddress, to: &EmailAddress, tenant: &str) -> Vec<u8> {
    MessageBuilder::new()
        .from(from.as_str())
        .to(to.as_str())
        .subject(format!("mailpipe check-pool: test from {from}"))
        .text_body(format!(
            "This is a test message sent by `mailpipe-deliver check-pool --send-test` through the pool mailbox {from} (tenant {tenant}).\r\n"
        ))
        .write_to_vec()
        .unwrap_or_default()
}
