//! Reading bounces from their human text: the enhanced status codes and addresses a
//! non-standard bounce (qmail, old Exchange, hand-made) writes in prose, and Exchange's
//! "Remote Server returned '...'" line. Best effort, and conservative: an address is only
//! reported with a status found next to it.

use mailpipe_common::contract::{BouncedRecipient, DsnAction, clean_diagnostic};
use mailpipe_common::domain::{DsnStatus, EmailAddress};

use super::MAX_RECIPIENTS;

/// Lines of a text body looked at.
const MAX_LINES: usize = 2000;

/// Where a bounce's own text ends and the copy of the original begins.
const ORIGINAL_MARKERS: [&str; 5] = [
    "below this line is a copy of the message",
    "original message headers",
    "this is a copy of the message",
    "original message follows",
    "----- original message -----",
];

fn tokens(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| c.is_whitespace() || "<>\"'()[],;".contains(c))
        .map(|t| t.trim_matches(|c: char| c == ':' || c == '.'))
        .filter(|t| !t.is_empty())
}

/// The first 4.x.x or 5.x.x enhanced status code in `text`.
pub fn first_status(text: &str) -> Option<DsnStatus> {
    tokens(text)
        .filter(|t| t.starts_with(['4', '5']) && t.contains('.'))
        .find_map(|t| DsnStatus::parse(t).ok())
}

fn addresses(line: &str) -> impl Iterator<Item = EmailAddress> + '_ {
    tokens(line)
        .filter(|t| t.contains('@') && t.len() <= 254)
        .filter_map(|t| EmailAddress::parse(t.trim_start_matches("mailto:")).ok())
}

/// Exchange's "Remote Server returned '550 5.1.10 ...'", the server's words.
pub fn remote_server_returned(text: &str) -> Option<String> {
    const MARK: &str = "Remote Server returned '";
    let start = text.find(MARK)? + MARK.len();
    let rest = &text[start..];
    let end = rest.find('\'').unwrap_or(rest.len()).min(2000);
    let mut end = end.min(rest.len());
    while !rest.is_char_boundary(end) {
        end -= 1;
    }
    clean_diagnostic(&rest[..end])
}

/// Recipients a prose bounce names with a permanent or transient status beside them,
/// skipping `own` (the addresses the bounce itself is from and to).
pub fn recipients(text: &str, own: &[EmailAddress]) -> Vec<BouncedRecipient> {
    let mut out: Vec<BouncedRecipient> = Vec::new();
    let mut current: Option<EmailAddress> = None;
    for line in text.lines().take(MAX_LINES) {
        let lower = line.to_ascii_lowercase();
        if ORIGINAL_MARKERS.iter().any(|m| lower.contains(m)) {
            break;
        }
        for a in addresses(line) {
            let key = a.as_str().to_ascii_lowercase();
            if !own.iter().any(|o| o.as_str().eq_ignore_ascii_case(&key)) {
                current = Some(a);
                break;
            }
        }
        let Some(status) = first_status(line) else {
            continue;
        };
        let Some(address) = current.take() else {
            continue;
        };
        if out
            .iter()
            .any(|r| r.address.as_str().eq_ignore_ascii_case(address.as_str()))
        {
            continue;
        }
        out.push(BouncedRecipient {
            address,
            status,
            action: if status.is_permanent() {
                DsnAction::Failed
            } else {
                DsnAction::Delayed
            },
            diagnostic: clean_diagnostic(line),
        });
        if out.len() >= MAX_RECIPIENTS {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_codes_and_exchange_text() {
        assert_eq!(
            first_status("Remote host said: 550 5.1.1 <x@y>... User unknown")
                .map(|s| s.to_string()),
            Some("5.1.1".into())
        );
        assert_eq!(first_status("version 5.2 of 2.0.0"), None);
        assert_eq!(
            remote_server_returned(
                "x\nRemote Server returned '550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found'\n"
            )
            .as_deref(),
            Some("550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found")
        );
    }
}
