//! Refusals that are about the sender's domain, not the message or the mailbox: a
//! receiving provider that checks SPF, DKIM and DMARC refuses every message of a domain
//! that fails them (Outlook.com's `550 5.7.515` for high-volume senders without all three,
//! `5.7.509` for a DMARC reject; Gmail's `5.7.26`/`5.7.27`), and Exchange refuses a From
//! domain the tenant does not have (`5.7.750`) and mail From its onmicrosoft.com domain
//! past 100 external recipients a day (`5.7.236`). Recognised by the enhanced status code
//! (and, for codes other providers reuse, the word DMARC or SPF in the text), wherever
//! they arrive: in an SMTP reply or in a non-delivery report from the Inbox.

/// What kind of sender-domain problem a refusal names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SenderDomainRefusal {
    /// SPF, DKIM or DMARC missing or failing at the receiver.
    Authentication,
    /// The From domain is not an accepted domain of the tenant.
    UnregisteredDomain,
    /// The tenant's onmicrosoft.com domain is past its 100 external recipients a day.
    OnMicrosoftLimit,
}

impl SenderDomainRefusal {
    /// Recognises `status` (`5.7.515`, with or without the text) from the enhanced code and
    /// the reply's or diagnostic's `text`.
    pub fn of(status: &str, text: &str) -> Option<Self> {
        let lower = text.to_ascii_lowercase();
        match status {
            // Outlook.com: high-volume senders need SPF, DKIM and DMARC.
            "5.7.515" |
            // Outlook.com: DMARC failed under p=reject.
            "5.7.509" |
            // Gmail: unauthenticated (DMARC policy, or neither SPF nor DKIM).
            "5.7.26" |
            // Gmail: SPF does not pass.
            "5.7.27" |
            // Exchange Online: SPF validation failed (receiving tenant's policy).
            "5.7.23" => Some(Self::Authentication),
            "5.7.750" => Some(Self::UnregisteredDomain),
            "5.7.236" => Some(Self::OnMicrosoftLimit),
            // Yahoo, AOL and others: a policy code naming DMARC or SPF in the text.
            s if s.starts_with("5.7.") && (lower.contains("dmarc") || lower.contains("spf")) => {
                Some(Self::Authentication)
            }
            _ => None,
        }
    }

    /// `sender_domain` (refusal label) for metrics and reasons.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Authentication => "sender_domain_authentication",
            Self::UnregisteredDomain => "sender_domain_unregistered",
            Self::OnMicrosoftLimit => "sender_domain_onmicrosoft_limit",
        }
    }

    /// What to do about it.
    pub fn hint(self) -> &'static str {
        match self {
            Self::Authentication => {
                "a sender-domain problem: the receiver refuses the From domain's authentication (SPF must include spf.protection.outlook.com, DKIM must be enabled for the domain in Microsoft Defender, a _dmarc record must name a policy; Outlook.com requires all three above 5,000 messages a day). Run mailpipe-deliver check-pool: it checks each From domain's records and names the fix (docs/microsoft365.md, \"Sender domains\")"
            }
            Self::UnregisteredDomain => {
                "a sender-domain problem: the From domain is not an accepted domain of the tenant: add and verify it (Microsoft 365 admin center > Settings > Domains), or send From a domain the tenant has"
            }
            Self::OnMicrosoftLimit => {
                "a sender-domain problem: Exchange Online lets a tenant send From its onmicrosoft.com domain to at most 100 external recipients a day: send From a custom domain of the tenant (with SPF, DKIM and DMARC; check-pool checks them)"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SenderDomainRefusal as R;

    #[test]
    fn outlook_gmail_and_exchange_domain_refusals_are_recognised_by_code() {
        assert_eq!(
            R::of(
                "5.7.515",
                "Access denied, sending domain contoso.com doesn't meet the required authentication level."
            ),
            Some(R::Authentication)
        );
        assert_eq!(R::of("5.7.515", ""), Some(R::Authentication));
        assert_eq!(R::of("5.7.509", "Access denied"), Some(R::Authentication));
        assert_eq!(
            R::of("5.7.26", "Unauthenticated email"),
            Some(R::Authentication)
        );
        assert_eq!(R::of("5.7.27", ""), Some(R::Authentication));
        assert_eq!(
            R::of("5.7.750", "unregistered domains"),
            Some(R::UnregisteredDomain)
        );
        assert_eq!(R::of("5.7.236", ""), Some(R::OnMicrosoftLimit));
        assert_eq!(
            R::of("5.7.9", "Message not accepted for policy reasons: DMARC"),
            Some(R::Authentication)
        );
    }

    #[test]
    fn other_refusals_are_not_sender_domain_problems() {
        assert_eq!(R::of("5.7.1", "Delivery not authorized"), None);
        assert_eq!(R::of("5.1.1", "unknown user, DMARC"), None);
        assert_eq!(R::of("5.7.60", "SendAsDenied"), None);
        assert_eq!(R::of("", "dmarc"), None);
    }
}
