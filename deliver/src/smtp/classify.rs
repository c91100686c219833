//! What an Exchange Online reply means for the message and for the mailbox that sent it.
//!
//! | reply | class | what deliver does |
//! |---|---|---|
//! | 2xx | `Accepted` | `delivered` event, ack |
//! | 535 5.7.3 (bad credentials / token) | `Mailbox(Auth)` | OAuth: a refused *cached* token is refreshed and AUTH retried once (not on probation); then quarantine with backoff, reroute |
//! | 535 5.7.139 (SMTP AUTH disabled) · 550 5.7.30 (basic auth unsupported) · 530 5.7.57 (not authenticated) | `Mailbox(Auth)` | quarantine with backoff, reroute |
//! | 5.7.60 · 554 5.2.252 SendAsDenied | `Mailbox(SendAs)` | quarantine with backoff, reroute |
//! | 554 5.2.0 SubmissionQuotaExceededException | `Mailbox(Quota)` | pause for the recipient window, reroute |
//! | 554 5.2.2 mailbox full; STOREDRV.Submission…QuotaExceededException (the *sending* mailbox is over its storage quota) | `Mailbox(StorageFull)` | quarantine with backoff, reroute: nothing it sends can pass until its Sent Items are emptied |
//! | 432 (4.3.2: "sender thread limit exceeded", now "Concurrent connections limit exceeded"; recognised by the code, whatever the text) | `Mailbox(Connections)` | short pause, reroute |
//! | 421 4.4.2 submission rate exceeded | `Mailbox(Rate)` | pause for the message window, reroute |
//! | 550 5.2.251, 5.2.253–5.2.255 (sender throttled for continuous mailbox-full, licence, too-many-recipients, invalid-recipient errors) | `Mailbox(Throttled)` | pause with backoff, reroute: Exchange refuses the mailbox a while, and every refusal meanwhile would be one more error |
//! | 550 5.7.708 (tenant blocked) | `Tenant(Blocked)` | quarantine every mailbox of the tenant, reroute |
//! | 550 5.7.233 (tenant external recipient limit) | `Tenant(ExternalLimit)` | pause the tenant for its window, reroute |
//! | a session cannot be opened (connect, STARTTLS, AUTH: timeout, network, 4xx) | `Mailbox(Unreachable)` | pause with doubling backoff, reroute |
//! | other 4xx, timeouts, dropped connections | `Transient` | retry ladder (an attempt is spent), dead letters after `max_attempts` |
//! | 550 5.7.515, 5.7.509, 5.7.26, 5.7.27, 5.7.23, 5.7.750, 5.7.236 (the sender domain's SPF/DKIM/DMARC, or a domain the tenant lacks: `sender_domain_refusal`) | `MessagePermanent` | as below, the failure reason carrying the sender-domain hint (`check-pool` checks the records) |
//! | other 5xx (5.1.1 unknown recipient, 5.3.4 too big, ...) | `MessagePermanent` | `failed` event, dead letters with the reply, ack |
//!
//! Mailbox- and tenant-level refusals never spend one of the message's attempts: the
//! message is not at fault. "With backoff": `pause_ms`, doubled per hold *episode* up to
//! `max_pause_ms`; when the hold ends one send probes the mailbox alone, and only a failed
//! probe starts the next episode (failures of sends already in flight belong to the current
//! one), so a broken mailbox gets one failed AUTH per backoff period: Exchange answers
//! repeated errors with the throttling above (`MailboxPool::hold_mailbox`). Exchange gives enhanced codes in the text only, so the
//! classification reads `SmtpReply::enhanced` (parsed from the text) and a few markers.

use mailpipe_common::contract::SmtpReply;

use crate::sender_domain::SenderDomainRefusal;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyClass {
    Accepted,
    MessagePermanent,
    Mailbox(MailboxProblem),
    Tenant(TenantProblem),
    Transient,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MailboxProblem {
    /// Credentials, token, or SMTP AUTH disabled: nothing this mailbox sends can pass.
    Auth,
    SendAs,
    /// The 24-hour recipient quota is spent.
    Quota,
    /// The mailbox is over its storage quota (Sent Items fill it): Exchange cannot save what
    /// it sends.
    StorageFull,
    /// Too many concurrent connections.
    Connections,
    /// Message rate exceeded.
    Rate,
    /// Throttled for repeated errors.
    Throttled,
    /// Sessions cannot be opened (connect, STARTTLS or AUTH timed out, failed or was refused
    /// with a 4xx): nothing was sent, and the next try should go elsewhere.
    Unreachable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TenantProblem {
    Blocked,
    ExternalLimit,
}

impl MailboxProblem {
    pub fn as_str(self) -> &'static str {
        match self {
            MailboxProblem::Auth => "auth",
            MailboxProblem::SendAs => "send_as",
            MailboxProblem::Quota => "quota",
            MailboxProblem::StorageFull => "mailbox_full",
            MailboxProblem::Connections => "connections",
            MailboxProblem::Rate => "rate",
            MailboxProblem::Throttled => "throttled",
            MailboxProblem::Unreachable => "unreachable",
        }
    }

    /// Quarantine (needs an operator's fix, re-admitted on a long backoff) vs pause
    /// (resolves itself when a window slides).
    pub fn is_quarantine(self) -> bool {
        matches!(
            self,
            MailboxProblem::Auth | MailboxProblem::SendAs | MailboxProblem::StorageFull
        )
    }
}

impl TenantProblem {
    pub fn as_str(self) -> &'static str {
        match self {
            TenantProblem::Blocked => "tenant_blocked",
            TenantProblem::ExternalLimit => "tenant_external_limit",
        }
    }
}

impl ReplyClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplyClass::Accepted => "accepted",
            ReplyClass::MessagePermanent => "message_permanent",
            ReplyClass::Mailbox(p) => p.as_str(),
            ReplyClass::Tenant(p) => p.as_str(),
            ReplyClass::Transient => "transient",
        }
    }
}

pub fn classify(reply: &SmtpReply) -> ReplyClass {
    if reply.is_positive() {
        return ReplyClass::Accepted;
    }
    let enhanced = reply.enhanced.as_deref().unwrap_or("");
    let text = reply.text.to_ascii_lowercase();
    match enhanced {
        "5.7.708" => return ReplyClass::Tenant(TenantProblem::Blocked),
        "5.7.233" => return ReplyClass::Tenant(TenantProblem::ExternalLimit),
        "5.7.3" | "5.7.139" | "5.7.30" | "5.7.57" | "4.7.3" => {
            return ReplyClass::Mailbox(MailboxProblem::Auth);
        }
        "5.7.60" | "5.2.252" => return ReplyClass::Mailbox(MailboxProblem::SendAs),
        "5.2.251" | "5.2.253" | "5.2.254" | "5.2.255" => {
            return ReplyClass::Mailbox(MailboxProblem::Throttled);
        }
        _ => {}
    }
    if text.contains("submissionquotaexceeded") {
        return ReplyClass::Mailbox(MailboxProblem::Quota);
    }
    // The sender's own store refusing the submission; a recipient's full mailbox comes
    // back later in an NDR (STOREDRV.Deliver), never in this reply.
    if enhanced == "5.2.2" && text.contains("storedrv.submission") {
        return ReplyClass::Mailbox(MailboxProblem::StorageFull);
    }
    // The connection cap, by its code: Exchange's text has changed ("sender thread limit
    // exceeded", then "Concurrent connections limit exceeded") and may again. 432 is
    // Exchange's own code for it (`421 4.3.2` is a server going away: transient).
    if reply.code == 432 {
        return ReplyClass::Mailbox(MailboxProblem::Connections);
    }
    if enhanced == "4.4.2" && text.contains("submission rate") {
        return ReplyClass::Mailbox(MailboxProblem::Rate);
    }
    if reply.code == 535 || reply.code == 530 {
        return ReplyClass::Mailbox(MailboxProblem::Auth);
    }
    if reply.is_transient() {
        ReplyClass::Transient
    } else {
        ReplyClass::MessagePermanent
    }
}

/// A refusal that blames the sender's domain (SPF, DKIM, DMARC, or a domain the tenant
/// does not have): every message From that domain would meet it at that receiver, so the
/// failure reason says what to check. Still `MessagePermanent`: the mailbox is not at fault.
pub fn sender_domain_refusal(reply: &SmtpReply) -> Option<SenderDomainRefusal> {
    if !reply.is_permanent() {
        return None;
    }
    SenderDomainRefusal::of(reply.enhanced.as_deref().unwrap_or(""), &reply.text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(code: u16, text: &str) -> ReplyClass {
        classify(&SmtpReply::new(code, text))
    }

    #[test]
    fn exchange_replies_are_classified_as_documented() {
        use MailboxProblem::*;
        assert_eq!(
            class(250, "2.6.0 <id> Queued mail for delivery"),
            ReplyClass::Accepted
        );
        assert_eq!(
            class(535, "5.7.3 Authentication unsuccessful"),
            ReplyClass::Mailbox(Auth)
        );
        assert_eq!(
            class(
                535,
                "5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for the Tenant."
            ),
            ReplyClass::Mailbox(Auth)
        );
        assert_eq!(
            class(
                550,
                "5.7.30 Basic authentication is not supported for Client Submission."
            ),
            ReplyClass::Mailbox(Auth)
        );
        assert_eq!(
            class(530, "5.7.57 Client not authenticated to send mail."),
            ReplyClass::Mailbox(Auth)
        );
        assert_eq!(
            class(
                550,
                "5.7.60 SMTP; Client does not have permissions to send as this sender"
            ),
            ReplyClass::Mailbox(SendAs)
        );
        assert_eq!(
            class(
                554,
                "5.2.252 SendAsDenied; a@b.example not allowed to send as c@d.example"
            ),
            ReplyClass::Mailbox(SendAs)
        );
        assert_eq!(
            class(
                554,
                "5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message"
            ),
            ReplyClass::Mailbox(Quota)
        );
        assert_eq!(
            class(
                554,
                "5.2.2 mailbox full; STOREDRV.Submission.Exception:QuotaExceededException.MapiExceptionShutoffQuotaExceeded; Failed to process message"
            ),
            ReplyClass::Mailbox(StorageFull)
        );
        // A recipient's full mailbox is about the message, not the sender.
        assert_eq!(
            class(
                554,
                "5.2.2 mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException.MapiExceptionShutoffQuotaExceeded"
            ),
            ReplyClass::MessagePermanent
        );
        assert_eq!(
            class(
                432,
                "4.3.2 STOREDRV.ClientSubmit; sender thread limit exceeded"
            ),
            ReplyClass::Mailbox(Connections)
        );
        assert_eq!(
            class(
                421,
                "4.4.2 Message submission rate for this client has exceeded the configured limit"
            ),
            ReplyClass::Mailbox(Rate)
        );
        assert_eq!(
            class(550, "5.2.254 sender throttled"),
            ReplyClass::Mailbox(Throttled)
        );
        for code in ["5.2.251", "5.2.253", "5.2.255"] {
            assert_eq!(
                class(
                    550,
                    &format!(
                        "{code} Sender throttled due to continuous invalid recipients errors."
                    )
                ),
                ReplyClass::Mailbox(Throttled)
            );
        }
        assert_eq!(
            class(550, "5.7.708 Service unavailable. Access denied"),
            ReplyClass::Tenant(TenantProblem::Blocked)
        );
        assert_eq!(
            class(550, "5.7.233 external recipient limit"),
            ReplyClass::Tenant(TenantProblem::ExternalLimit)
        );
        assert_eq!(
            class(
                432,
                "4.3.2 Concurrent connections limit exceeded. Visit https://aka.ms/concurrent_sending for more information. [Hostname=AM0PR01MB1234]"
            ),
            ReplyClass::Mailbox(Connections)
        );
        // Whatever the next text is, the code decides.
        assert_eq!(
            class(432, "4.3.2 Too many open sessions for this sender"),
            ReplyClass::Mailbox(Connections)
        );
        assert_eq!(
            class(421, "4.3.2 Service not available"),
            ReplyClass::Transient
        );
        assert_eq!(
            class(451, "4.7.0 Temporary server error"),
            ReplyClass::Transient
        );
        assert_eq!(
            class(550, "5.1.1 RESOLVER.ADR.RecipNotFound; not found"),
            ReplyClass::MessagePermanent
        );
        assert_eq!(
            class(552, "5.3.4 Message size exceeds fixed maximum message size"),
            ReplyClass::MessagePermanent
        );
    }

    #[test]
    fn sender_domain_refusals_stay_message_permanent_and_are_named() {
        let reply = SmtpReply::new(
            550,
            "5.7.515 Access denied, sending domain contoso.com doesn't meet the required authentication level.",
        );
        assert_eq!(classify(&reply), ReplyClass::MessagePermanent);
        assert_eq!(
            sender_domain_refusal(&reply),
            Some(SenderDomainRefusal::Authentication)
        );
        let dmarc = SmtpReply::new(
            550,
            "5.7.509 Access denied, sending domain contoso.com does not pass DMARC verification and has a DMARC policy of reject.",
        );
        assert_eq!(
            sender_domain_refusal(&dmarc),
            Some(SenderDomainRefusal::Authentication)
        );
        assert_eq!(
            sender_domain_refusal(&SmtpReply::new(550, "5.1.1 unknown")),
            None
        );
        // A transient reply is never blamed on the domain.
        assert_eq!(
            sender_domain_refusal(&SmtpReply::new(451, "4.7.26 try later, DMARC")),
            None
        );
    }
}
