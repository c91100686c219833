//! Parsing of SMTP command lines, envelope paths and the message's From header.

/// One command line, parsed. Arguments are kept as text; the session decides what they mean.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    Ehlo(String),
    Helo(String),
    StartTls,
    Auth {
        mechanism: String,
        initial: Option<String>,
    },
    Mail {
        from: String,
        size: Option<u64>,
    },
    Rcpt {
        to: String,
    },
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
    /// A known verb with arguments that do not parse.
    Invalid,
    Unknown(String),
}

/// Parses one command line (without its CRLF).
pub(crate) fn parse_command(line: &str) -> Command {
    let line = line.trim_end_matches(['\r', '\n']);
    let (verb, rest) = match line.split_once(' ') {
        Some((v, r)) => (v, r.trim()),
        None => (line, ""),
    };
    match verb.to_ascii_uppercase().as_str() {
        "EHLO" if !rest.is_empty() => Command::Ehlo(rest.to_owned()),
        "HELO" if !rest.is_empty() => Command::Helo(rest.to_owned()),
        "EHLO" | "HELO" => Command::Invalid,
        "STARTTLS" if rest.is_empty() => Command::StartTls,
        "AUTH" => {
            let mut parts = rest.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some(m), initial, None) => Command::Auth {
                    mechanism: m.to_ascii_uppercase(),
                    initial: initial.map(str::to_owned),
                },
                _ => Command::Invalid,
            }
        }
        "MAIL" => match strip_prefix_ci(rest, "FROM:").and_then(parse_path) {
            Some((from, params)) => {
                let mut size = None;
                for p in params.split_whitespace() {
                    if let Some(v) = strip_prefix_ci(p, "SIZE=") {
                        match v.parse::<u64>() {
                            Ok(n) => size = Some(n),
                            Err(_) => return Command::Invalid,
                        }
                    }
                }
                Command::Mail { from, size }
            }
            None => Command::Invalid,
        },
        "RCPT" => match strip_prefix_ci(rest, "TO:").and_then(parse_path) {
            Some((to, _)) if to.contains('@') => Command::Rcpt { to },
            _ => Command::Invalid,
        },
        "DATA" => Command::Data,
        "RSET" => Command::Rset,
        "NOOP" => Command::Noop,
        "QUIT" => Command::Quit,
        "VRFY" => Command::Vrfy,
        "HELP" => Command::Help,
        "STARTTLS" => Command::Invalid,
        other => Command::Unknown(other.to_owned()),
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// `<user@example>` params, or a bare address (lenient, as Exchange is). Source routes
/// (`<@a,@b:user@example>`) are stripped. Returns the address and the rest of the line.
fn parse_path(s: &str) -> Option<(String, &str)> {
    let s = s.trim_start();
    let (addr, rest) = if let Some(inner) = s.strip_prefix('<') {
        let end = inner.find('>')?;
        (&inner[..end], &inner[end + 1..])
    } else {
        match s.split_once(' ') {
            Some((a, r)) => (a, r),
            None => (s, ""),
        }
    };
    let addr = match addr.rsplit_once(':') {
        Some((route, a)) if route.starts_with('@') => a,
        _ => addr,
    };
    if addr
        .chars()
        .any(|c| c.is_whitespace() || c == '<' || c == '>')
    {
        return None;
    }
    Some((addr.to_owned(), rest))
}

/// The addresses in the From header(s) of a message (lower case). Empty when there is none.
pub(crate) fn header_from_addresses(raw: &[u8]) -> Vec<String> {
    header_addresses(raw, &["from"])
}

/// The addresses in the headers named `names` (lower case), in order (a Graph draft's
/// recipients are its `To`, `Cc` and `Bcc`).
pub(crate) fn header_addresses(raw: &[u8], names: &[&str]) -> Vec<String> {
    let text = String::from_utf8_lossy(header_block(raw));
    // Unfold continuation lines, then look at each header.
    let mut headers: Vec<String> = Vec::new();
    for line in text.split('\n') {
        let line = line.trim_end_matches('\r');
        if line.starts_with([' ', '\t']) {
            if let Some(last) = headers.last_mut() {
                last.push(' ');
                last.push_str(line.trim());
            }
        } else {
            headers.push(line.to_owned());
        }
    }
    headers
        .iter()
        .filter_map(|h| {
            let (name, value) = h.split_once(':')?;
            names
                .iter()
                .any(|n| name.trim().eq_ignore_ascii_case(n))
                .then(|| mailbox_list(value))
        })
        .flatten()
        .collect()
}

fn header_block(raw: &[u8]) -> &[u8] {
    let crlf = raw.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = raw.windows(2).position(|w| w == b"\n\n");
    let end = match (crlf, lf) {
        (Some(a), Some(b)) => a.min(b),
        (Some(a), None) => a,
        (None, Some(b)) => b,
        (None, None) => raw.len(),
    };
    &raw[..end]
}

/// Splits an RFC 5322 mailbox-list at top-level commas (not inside quotes, comments or
/// angle brackets) and returns each mailbox's address.
fn mailbox_list(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let (mut in_quote, mut depth_comment, mut in_angle, mut escaped) = (false, 0u32, false, false);
    let mut angle_addr: Option<String> = None;
    let mut angle_buf = String::new();
    let mut flush = |current: &mut String, angle_addr: &mut Option<String>| {
        let addr = angle_addr
            .take()
            .unwrap_or_else(|| current.trim().to_owned());
        if !addr.is_empty() {
            out.push(addr.to_ascii_lowercase());
        }
        current.clear();
    };
    for c in value.chars() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if in_quote || depth_comment > 0 => escaped = true,
            '"' if depth_comment == 0 && !in_angle => in_quote = !in_quote,
            '(' if !in_quote && !in_angle => depth_comment += 1,
            ')' if !in_quote && depth_comment > 0 => depth_comment -= 1,
            '<' if !in_quote && depth_comment == 0 => {
                in_angle = true;
                angle_buf.clear();
            }
            '>' if in_angle => {
                in_angle = false;
                angle_addr = Some(angle_buf.trim().to_owned());
            }
            ',' if !in_quote && depth_comment == 0 && !in_angle => {
                flush(&mut current, &mut angle_addr)
            }
            _ if in_angle => angle_buf.push(c),
            _ if !in_quote && depth_comment == 0 => current.push(c),
            _ => {}
        }
    }
    flush(&mut current, &mut angle_addr);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_from_with_params() {
        assert_eq!(
            parse_command("mail from:<A@x.example> SIZE=1234 BODY=8BITMIME"),
            Command::Mail {
                from: "A@x.example".into(),
                size: Some(1234)
            }
        );
        assert_eq!(
            parse_command("MAIL FROM: <a@x>"),
            Command::Mail {
                from: "a@x".into(),
                size: None
            }
        );
        assert_eq!(
            parse_command("MAIL FROM:<>"),
            Command::Mail {
                from: "".into(),
                size: None
            }
        );
        // Exchange Online advertises SMTPUTF8 and takes the MAIL parameter.
        assert_eq!(
            parse_command("MAIL FROM:<a@x.example> SMTPUTF8 BODY=8BITMIME"),
            Command::Mail {
                from: "a@x.example".into(),
                size: None
            }
        );
        assert_eq!(parse_command("MAIL TO:<a@x>"), Command::Invalid);
        assert_eq!(parse_command("MAIL FROM:<a@x> SIZE=abc"), Command::Invalid);
    }

    #[test]
    fn rcpt_with_source_route() {
        assert_eq!(
            parse_command("RCPT TO:<@relay:b@y>"),
            Command::Rcpt { to: "b@y".into() }
        );
        assert_eq!(parse_command("RCPT TO:<>"), Command::Invalid);
    }

    #[test]
    fn auth_forms() {
        assert_eq!(
            parse_command("AUTH xoauth2"),
            Command::Auth {
                mechanism: "XOAUTH2".into(),
                initial: None
            }
        );
        assert_eq!(
            parse_command("AUTH PLAIN AGEAYg=="),
            Command::Auth {
                mechanism: "PLAIN".into(),
                initial: Some("AGEAYg==".into())
            }
        );
    }

    #[test]
    fn from_header_variants() {
        let raw = b"Subject: x\r\nFrom: \"Billing, Contoso\" <Billing@Contoso.example>\r\nTo: a@b\r\n\r\nFrom: body@x\r\n";
        assert_eq!(header_from_addresses(raw), vec!["billing@contoso.example"]);
        let raw = b"From: a@x (comment, here),\r\n b@y\r\n\r\n";
        assert_eq!(header_from_addresses(raw), vec!["a@x", "b@y"]);
        assert!(header_from_addresses(b"Subject: none\r\n\r\nbody").is_empty());
    }
}
