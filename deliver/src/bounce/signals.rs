//! What the headers of a message say about what it is: an Exchange NDR, a mailer
//! daemon's bounce, an automatic reply, a read receipt.

use mail_parser::{Message, MimeHeaders};
use mailpipe_common::domain::EmailAddress;

/// Top-level headers of one name looked at (a header repeated more often is a forgery).
const MAX_SAME_HEADER: usize = 16;

/// A header's raw value (unfolded, trimmed), by case-insensitive name.
pub fn header(msg: &Message<'_>, name: &str) -> Option<String> {
    headers(msg, name).into_iter().next()
}

/// Every top-level header of that name, raw values unfolded and trimmed, in order (at most
/// `MAX_SAME_HEADER`).
pub fn headers(msg: &Message<'_>, name: &str) -> Vec<String> {
    msg.root_part()
        .headers()
        .iter()
        .filter(|h| h.name.as_str().eq_ignore_ascii_case(name))
        .take(MAX_SAME_HEADER)
        .filter_map(|h| {
            let raw = msg
                .raw_message()
                .get(h.offset_start as usize..h.offset_end as usize)?;
            let text = String::from_utf8_lossy(raw);
            Some(
                text.split(['\r', '\n'])
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect::<Vec<_>>()
                    .join(" "),
            )
        })
        .collect()
}

/// The first address of `From`.
pub fn from_address(msg: &Message<'_>) -> Option<String> {
    msg.from()
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .map(str::to_owned)
}

fn has_header(msg: &Message<'_>, name: &str) -> bool {
    msg.root_part()
        .headers()
        .iter()
        .any(|h| h.name.as_str().eq_ignore_ascii_case(name))
}

/// Exchange marks its NDRs with `X-MS-Exchange-Message-Is-Ndr` (an empty header).
pub fn is_exchange_ndr(msg: &Message<'_>) -> bool {
    has_header(msg, "X-MS-Exchange-Message-Is-Ndr")
}

pub fn is_read_receipt(msg: &Message<'_>) -> bool {
    let report_type = msg
        .content_type()
        .and_then(|ct| ct.attribute("report-type"))
        .is_some_and(|t| t.eq_ignore_ascii_case("disposition-notification"));
    report_type
        || msg.parts.iter().skip(1).any(|p| {
            p.content_type().is_some_and(|ct| {
                ct.ctype().eq_ignore_ascii_case("message")
                    && ct
                        .subtype()
                        .is_some_and(|s| s.eq_ignore_ascii_case("disposition-notification"))
            })
        })
}

/// From `MAILER-DAEMON@...`, `postmaster@...`, or with `X-Failed-Recipients`.
pub fn is_from_mailer_daemon(msg: &Message<'_>) -> bool {
    let from_daemon = from_address(msg)
        .as_deref()
        .and_then(|a| a.split('@').next())
        .is_some_and(|local| {
            ["mailer-daemon", "postmaster", "mail-daemon", "mailerdaemon"]
                .iter()
                .any(|d| local.eq_ignore_ascii_case(d))
        });
    from_daemon || has_header(msg, "X-Failed-Recipients")
}

/// RFC 3834 `Auto-Submitted: auto-replied`, Exchange's `X-Auto-Response-Suppress`,
/// `X-Autoreply`, or an "Automatic reply:" / out-of-office subject.
pub fn is_auto_reply(msg: &Message<'_>) -> bool {
    let auto_submitted = header(msg, "Auto-Submitted")
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("auto-replied"));
    let subject = msg.subject().unwrap_or_default().to_lowercase();
    auto_submitted
        || has_header(msg, "X-Auto-Response-Suppress")
        || has_header(msg, "X-Autoreply")
        || has_header(msg, "X-Autorespond")
        || ["automatic reply:", "auto:", "autoreply", "out of office"]
            .iter()
            .any(|p| subject.starts_with(p))
}

/// Subjects bounces use when they carry nothing else to go by.
pub fn has_bounce_subject(msg: &Message<'_>) -> bool {
    let subject = msg.subject().unwrap_or_default().to_lowercase();
    [
        "undeliverable:",
        "undelivered mail",
        "delivery status notification (failure)",
        "mail delivery failed",
        "returned mail:",
        "failure notice",
        "delivery failure",
    ]
    .iter()
    .any(|p| subject.starts_with(p))
}

/// The report's own From and To: never a bounced recipient.
pub fn own_addresses(msg: &Message<'_>) -> Vec<EmailAddress> {
    [msg.from(), msg.to()]
        .into_iter()
        .flatten()
        .flat_map(|a| a.iter())
        .filter_map(|a| a.address())
        .filter_map(|a| EmailAddress::parse(a).ok())
        .collect()
}
