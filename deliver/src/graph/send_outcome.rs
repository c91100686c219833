//! What a Graph error during a send means, in the outcome classes SMTP replies have
//! (`ReplyClass`), and whether the message may have gone out anyway. Creating the draft
//! sends nothing, so a failure there is never uncertain; a failure of the send step is
//! uncertain unless the answer proves it was refused before any processing (a `429`, a
//! `4xx` refusal, a connection that never opened, a request kept back past its deadline).

use mailpipe_common::contract::SmtpReply;

use crate::graph::error::GraphError;
use crate::smtp::classify::{MailboxProblem, ReplyClass, classify};

/// The step of a Graph send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendStep {
    /// Looking for our draft, or creating it: nothing is sent.
    Draft,
    /// Sending the draft.
    Send,
}

/// What a failed step means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepFailure {
    /// Not sent: the class says whose fault it is (as for an SMTP reply).
    NotSent { class: ReplyClass, reply: SmtpReply },
    /// The send may have gone out: settled from Sent Items (the uncertain machinery).
    Uncertain(SmtpReply),
}

/// The reply recorded for a Graph answer: the HTTP status as the code (`202` accepted),
/// Graph's error code and message as the text (an enhanced status code in it is kept).
pub fn reply_of(e: &GraphError) -> SmtpReply {
    let status = match e {
        GraphError::Api { status, .. } => *status,
        GraphError::Throttled { .. } => 429,
        _ => 0,
    };
    let text = match e {
        GraphError::Api { code, message, .. } => format!("{code}: {message} (Graph)"),
        other => other.to_string(),
    };
    SmtpReply::new(status, text)
}

/// The `202` of a sent draft, as the delivered event records it.
pub fn accepted_reply(draft_id: &str) -> SmtpReply {
    let tail: String = draft_id
        .chars()
        .rev()
        .take(16)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    SmtpReply::new(
        202,
        format!("Accepted: draft …{tail} sent through Microsoft Graph"),
    )
}

pub fn classify_failure(e: &GraphError, step: SendStep) -> StepFailure {
    let reply = reply_of(e);
    let not_sent = |class| StepFailure::NotSent {
        class,
        reply: reply.clone(),
    };
    match e {
        GraphError::NoGraph { .. } | GraphError::Token { .. } => {
            not_sent(ReplyClass::Mailbox(MailboxProblem::Auth))
        }
        // Kept back by Retry-After waits: the mailbox is throttled. Without any such wait
        // the send's own requests (a large message's uploads) used its budget up.
        GraphError::PastDeadline { waited, .. } if waited.is_zero() => {
            not_sent(ReplyClass::Transient)
        }
        GraphError::PastDeadline { .. } => not_sent(ReplyClass::Mailbox(MailboxProblem::Rate)),
        GraphError::Throttled {
            maybe_processed: true,
            ..
        } if step == SendStep::Send => StepFailure::Uncertain(reply),
        GraphError::Throttled { .. } => not_sent(ReplyClass::Mailbox(MailboxProblem::Rate)),
        GraphError::Transport { message, .. } => {
            if step == SendStep::Send && !message.starts_with("cannot connect") {
                StepFailure::Uncertain(reply)
            } else {
                not_sent(ReplyClass::Transient)
            }
        }
        GraphError::Api {
            status,
            code,
            message,
            ..
        } => match (step, *status) {
            // The draft is gone: sent by an earlier try of ours whose answer was lost (a
            // `503` retried), or removed. Sent Items will tell.
            (SendStep::Send, 404) => StepFailure::Uncertain(reply),
            (SendStep::Send, 500..=599) => StepFailure::Uncertain(reply),
            (_, 500..=599) => not_sent(ReplyClass::Transient),
            _ => not_sent(class_of(*status, code, message)),
        },
        GraphError::Redirected { .. }
        | GraphError::TooLarge { .. }
        | GraphError::Malformed { .. }
        | GraphError::ForeignLink { .. }
        | GraphError::ForeignUploadUrl { .. }
        | GraphError::UploadStalled { .. } => {
            if step == SendStep::Send {
                StepFailure::Uncertain(reply)
            } else {
                not_sent(ReplyClass::Transient)
            }
        }
    }
}

/// A Graph refusal (`4xx`) in SMTP's outcome classes: by Graph's error code, then by an
/// enhanced status code in its message (Exchange puts `5.7.708`, `5.2.252`... there), then
/// by the status.
fn class_of(status: u16, code: &str, message: &str) -> ReplyClass {
    match code {
        "ErrorSendAsDenied" => return ReplyClass::Mailbox(MailboxProblem::SendAs),
        "ErrorQuotaExceeded" | "ErrorSubmissionQuotaExceeded" => {
            return ReplyClass::Mailbox(MailboxProblem::Quota);
        }
        "MailboxNotEnabledForRESTAPI"
        | "MailboxNotFound"
        | "ErrorAccessDenied"
        | "AccessDenied"
        | "Authorization_RequestDenied"
        | "InvalidAuthenticationToken"
        | "ErrorNonExistentMailbox" => return ReplyClass::Mailbox(MailboxProblem::Auth),
        "ApplicationThrottled" | "ErrorExceededMessageLimit" | "TooManyRequests" => {
            return ReplyClass::Mailbox(MailboxProblem::Rate);
        }
        _ => {}
    }
    // Exchange's text may start with the SMTP code (`550 5.7.708 ...`).
    let text = message.trim_start();
    let text = match text.split_once(' ') {
        Some((code, rest)) if code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()) => rest,
        _ => text,
    };
    let as_smtp = classify(&SmtpReply::new(550, text));
    if !matches!(as_smtp, ReplyClass::MessagePermanent) {
        return as_smtp;
    }
    match status {
        // 404: the mailbox (or its Drafts) is not there for this app.
        401 | 403 | 404 => ReplyClass::Mailbox(MailboxProblem::Auth),
        408 | 409 | 423 | 425 => ReplyClass::Transient,
        _ => ReplyClass::MessagePermanent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::classify::TenantProblem;

    fn api(status: u16, code: &str, message: &str) -> GraphError {
        GraphError::Api {
            operation: "send_draft",
            mailbox: "m@x".into(),
            status,
            code: code.into(),
            message: message.into(),
        }
    }

    fn class(e: &GraphError, step: SendStep) -> Option<ReplyClass> {
        match classify_failure(e, step) {
            StepFailure::NotSent { class, .. } => Some(class),
            StepFailure::Uncertain(_) => None,
        }
    }

    #[test]
    fn graph_refusals_take_the_classes_of_smtp_replies() {
        use MailboxProblem::*;
        let s = SendStep::Send;
        assert_eq!(
            class(&api(403, "ErrorSendAsDenied", "x"), s),
            Some(ReplyClass::Mailbox(SendAs))
        );
        assert_eq!(
            class(
                &api(404, "MailboxNotEnabledForRESTAPI", "x"),
                SendStep::Draft
            ),
            Some(ReplyClass::Mailbox(Auth))
        );
        assert_eq!(
            class(&api(403, "ErrorSubmissionQuotaExceeded", "x"), s),
            Some(ReplyClass::Mailbox(Quota))
        );
        assert_eq!(
            class(
                &api(
                    403,
                    "ErrorMessageSubmissionBlocked",
                    "550 5.7.708 Service unavailable. Access denied, traffic not accepted from this IP."
                ),
                s
            ),
            Some(ReplyClass::Tenant(TenantProblem::Blocked))
        );
        assert_eq!(
            class(
                &api(
                    403,
                    "ErrorMessageSubmissionBlocked",
                    "5.7.233 the tenant exceeded its external recipient rate limit"
                ),
                s
            ),
            Some(ReplyClass::Tenant(TenantProblem::ExternalLimit))
        );
        assert_eq!(
            class(
                &api(400, "ErrorMimeContentInvalid", "bad MIME"),
                SendStep::Draft
            ),
            Some(ReplyClass::MessagePermanent)
        );
    }

    #[test]
    fn only_the_send_step_can_be_uncertain() {
        let throttled = |maybe_processed| GraphError::Throttled {
            operation: "send_draft",
            mailbox: "m@x".into(),
            attempts: 5,
            retry_after: std::time::Duration::from_secs(1),
            maybe_processed,
        };
        let timeout = GraphError::Transport {
            operation: "send_draft",
            mailbox: "m@x".into(),
            message: "timed out: operation timed out".into(),
        };
        let refused = GraphError::Transport {
            operation: "send_draft",
            mailbox: "m@x".into(),
            message: "cannot connect: refused".into(),
        };
        let gone = api(404, "ErrorItemNotFound", "not found");
        let bad_gateway = api(504, "GatewayTimeout", "");
        for e in [&timeout, &gone, &bad_gateway, &throttled(true)] {
            assert_eq!(class(e, SendStep::Send), None, "{e}");
            assert!(class(e, SendStep::Draft).is_some(), "{e}");
        }
        assert_eq!(
            class(&throttled(false), SendStep::Send),
            Some(ReplyClass::Mailbox(MailboxProblem::Rate))
        );
        assert_eq!(class(&refused, SendStep::Send), Some(ReplyClass::Transient));
        let past = |waited| GraphError::PastDeadline {
            operation: "upload_range",
            mailbox: "m@x".into(),
            waited,
        };
        assert_eq!(
            class(&past(std::time::Duration::ZERO), SendStep::Draft),
            Some(ReplyClass::Transient)
        );
        assert_eq!(
            class(&past(std::time::Duration::from_secs(2)), SendStep::Send),
            Some(ReplyClass::Mailbox(MailboxProblem::Rate))
        );
        assert_eq!(reply_of(&throttled(false)).code, 429);
        assert_eq!(accepted_reply("AAMkADxyz").code, 202);
    }
}
