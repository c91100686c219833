//! The reply texts, worded as Exchange Online words them (DESIGN.md, reply codes), so that
//! clients classifying replies by code and enhanced code are tested against the real thing.

/// One SMTP reply: code and text (the text starts with the enhanced status code, if any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    pub code: u16,
    pub text: String,
}

impl Reply {
    pub fn new(code: u16, text: impl Into<String>) -> Self {
        Self {
            code,
            text: text.into(),
        }
    }

    /// The enhanced status code at the start of the text (`5.7.3`), or "".
    pub fn enhanced(&self) -> &str {
        let first = self.text.split(' ').next().unwrap_or("");
        let parts: Vec<&str> = first.split('.').collect();
        if parts.len() == 3
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        {
            first
        } else {
            ""
        }
    }
}

pub(crate) fn greeting(host: &str) -> Reply {
    let now = chrono::Utc::now().format("%a, %-d %b %Y %H:%M:%S %z");
    Reply::new(
        220,
        format!("{host} Microsoft ESMTP MAIL Service ready at {now}"),
    )
}

pub(crate) fn starttls_ready() -> Reply {
    Reply::new(220, "2.0.0 SMTP server ready")
}

pub(crate) fn auth_before_tls(host: &str) -> Reply {
    Reply::new(
        530,
        format!("5.7.57 Client not authenticated to send mail. [{host}]"),
    )
}

pub(crate) fn mail_not_authenticated(host: &str) -> Reply {
    Reply::new(
        530,
        format!(
            "5.7.57 Client not authenticated to send mail. Client was not authenticated to send anonymous mail during MAIL FROM [{host}]"
        ),
    )
}

pub(crate) fn auth_ok() -> Reply {
    Reply::new(235, "2.7.0 Authentication successful")
}

pub(crate) fn auth_failed(host: &str) -> Reply {
    Reply::new(535, format!("5.7.3 Authentication unsuccessful [{host}]"))
}

pub(crate) fn basic_auth_disabled_tenant(host: &str) -> Reply {
    Reply::new(
        535,
        format!(
            "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant. Visit https://aka.ms/smtp_auth_disabled for more information. [{host}]"
        ),
    )
}

pub(crate) fn basic_auth_disabled_mailbox(host: &str) -> Reply {
    Reply::new(
        535,
        format!(
            "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Mailbox. Visit https://aka.ms/smtp_auth_disabled for more information. [{host}]"
        ),
    )
}

pub(crate) fn sender_thread_limit(host: &str) -> Reply {
    Reply::new(
        432,
        format!("4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded [Hostname={host}]"),
    )
}

pub(crate) fn tenant_blocked(host: &str) -> Reply {
    Reply::new(
        550,
        format!(
            "5.7.708 Service unavailable. Access denied, traffic not accepted from this IP. For more information please go to http://go.microsoft.com/fwlink/?LinkId=526653 AS(7230) [{host}]"
        ),
    )
}

pub(crate) fn send_as_envelope(host: &str) -> Reply {
    Reply::new(
        550,
        format!("5.7.60 SMTP; Client does not have permissions to send as this sender [{host}]"),
    )
}

pub(crate) fn send_as_header(host: &str, mailbox: &str, from: &str) -> Reply {
    Reply::new(
        554,
        format!(
            "5.2.252 SendAsDenied; {mailbox} not allowed to send as {from}; STOREDRV.Submission.Exception:SendAsDeniedException.MapiExceptionSendAsDenied; Failed to process message due to a permanent exception with message [BeginDiagnosticData]Cannot submit message. [Hostname={host}]"
        ),
    )
}

pub(crate) fn message_rate(host: &str) -> Reply {
    Reply::new(
        421,
        format!(
            "4.4.2 Message submission rate for this client has exceeded the configured limit [Hostname={host}]"
        ),
    )
}

pub(crate) fn recipient_quota(host: &str) -> Reply {
    Reply::new(
        554,
        format!(
            "5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message due to a permanent exception with message [BeginDiagnosticData]Cannot submit message. [Hostname={host}]"
        ),
    )
}

/// The sending mailbox is over its storage quota (`ProhibitSendQuota`): Exchange cannot save
/// the submission (to Sent Items) and refuses it after the data.
pub(crate) fn mailbox_full(host: &str) -> Reply {
    Reply::new(
        554,
        format!(
            "5.2.2 mailbox full; STOREDRV.Submission.Exception:QuotaExceededException.MapiExceptionShutoffQuotaExceeded; Failed to process message due to a permanent exception with message [BeginDiagnosticData]Cannot submit message. [Hostname={host}]"
        ),
    )
}

pub(crate) fn tenant_external_limit(host: &str) -> Reply {
    Reply::new(
        550,
        format!(
            "5.7.233 Message can't be submitted because the sender's organization has exceeded its tenant external recipient rate limit. [{host}]"
        ),
    )
}

/// Exchange's continuous error throttling for unknown recipients (5.2.251–5.2.255 are its
/// siblings for other repeated errors).
pub(crate) fn throttled_invalid_recipients(host: &str) -> Reply {
    Reply::new(
        550,
        format!(
            "5.2.255 Sender throttled due to continuous invalid recipients errors. [Hostname={host}]"
        ),
    )
}

pub(crate) fn too_many_recipients() -> Reply {
    Reply::new(452, "4.5.3 Too many recipients")
}

pub(crate) fn message_too_big() -> Reply {
    Reply::new(552, "5.3.4 Message size exceeds fixed maximum message size")
}

pub(crate) fn recipient_not_found() -> Reply {
    Reply::new(550, "5.1.1 RESOLVER.ADR.RecipNotFound; not found")
}

pub(crate) fn service_not_available() -> Reply {
    Reply::new(421, "4.3.2 Service not available")
}

pub(crate) fn temporary_error() -> Reply {
    Reply::new(
        451,
        "4.7.0 Temporary server error. Please try again later. PRX4",
    )
}

pub(crate) fn accepted(host: &str, id: &str) -> Reply {
    Reply::new(250, format!("2.0.0 OK <{id}> [Hostname={host}]"))
}

pub(crate) fn sender_ok() -> Reply {
    Reply::new(250, "2.1.0 Sender OK")
}

pub(crate) fn recipient_ok() -> Reply {
    Reply::new(250, "2.1.5 Recipient OK")
}

pub(crate) fn start_data() -> Reply {
    Reply::new(354, "Start mail input; end with <CRLF>.<CRLF>")
}

pub(crate) fn closing() -> Reply {
    Reply::new(221, "2.0.0 Service closing transmission channel")
}

pub(crate) fn reset() -> Reply {
    Reply::new(250, "2.0.0 Resetting")
}

pub(crate) fn ok() -> Reply {
    Reply::new(250, "2.0.0 OK")
}

pub(crate) fn send_hello_first() -> Reply {
    Reply::new(503, "5.5.2 Send hello first")
}

pub(crate) fn sender_already_specified() -> Reply {
    Reply::new(503, "5.5.2 Sender already specified")
}

pub(crate) fn need_mail() -> Reply {
    Reply::new(503, "5.5.2 Need mail command")
}

pub(crate) fn need_rcpt() -> Reply {
    Reply::new(503, "5.5.2 Need rcpt command")
}

pub(crate) fn already_authenticated() -> Reply {
    Reply::new(503, "5.5.2 Already authenticated")
}

pub(crate) fn bad_sequence() -> Reply {
    Reply::new(503, "5.5.1 Bad sequence of commands")
}

pub(crate) fn unrecognized(verb: &str) -> Reply {
    // Echo only a printable, bounded prefix of what the client sent.
    let shown: String = verb
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(32)
        .collect();
    Reply::new(500, format!("5.3.3 Unrecognized command '{shown}'"))
}

pub(crate) fn invalid_arguments() -> Reply {
    Reply::new(501, "5.5.4 Invalid arguments")
}

pub(crate) fn unrecognized_auth_type() -> Reply {
    Reply::new(504, "5.7.4 Unrecognized authentication type")
}

pub(crate) fn cannot_decode() -> Reply {
    Reply::new(501, "5.5.2 Cannot Decode response")
}

pub(crate) fn auth_cancelled() -> Reply {
    Reply::new(501, "5.0.0 Authentication cancelled")
}

pub(crate) fn line_too_long() -> Reply {
    Reply::new(500, "5.5.2 Line too long")
}

pub(crate) fn idle_timeout() -> Reply {
    Reply::new(421, "4.4.1 Connection timed out")
}

pub(crate) fn cannot_vrfy() -> Reply {
    Reply::new(252, "2.1.5 Cannot VRFY user")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enhanced_code_is_parsed() {
        assert_eq!(auth_failed("h").enhanced(), "5.7.3");
        assert_eq!(start_data().enhanced(), "");
        assert_eq!(basic_auth_disabled_tenant("h").enhanced(), "5.7.139");
    }
}
