//! The MIME a Graph draft is created from. SMTP has an envelope apart from the headers;
//! Graph takes a draft's recipients from its `To`, `Cc` and `Bcc` headers. So the headers
//! must name exactly the envelope: recipients only in the envelope (the job's Bcc, which
//! render leaves out of the headers) go into a `Bcc` header (Exchange keeps it off the
//! copies it delivers), and header recipients that left the envelope (suppressed since the
//! job was rendered) leave the `To`/`Cc` header, or they would be sent to.

use mail_builder::headers::Header;
use mail_builder::headers::address::Address;
use mailpipe_common::domain::EmailAddress;

/// `mime` with recipient headers that name exactly `envelope`.
pub fn with_envelope(mime: &[u8], envelope: &[EmailAddress]) -> Vec<u8> {
    let split = header_end(mime);
    let (head, body) = mime.split_at(split);
    let fields = fields(head);
    let in_envelope = |a: &str| envelope.iter().any(|e| e.as_str().eq_ignore_ascii_case(a));
    let mut named: Vec<String> = Vec::new();
    let mut out = Vec::with_capacity(mime.len() + 128);
    for field in &fields {
        let name = field_name(field);
        let is_recipients = ["to", "cc"].iter().any(|n| name.eq_ignore_ascii_case(n));
        // A Bcc header of the render (there is none today) is replaced by ours.
        if name.eq_ignore_ascii_case("bcc") {
            continue;
        }
        if !is_recipients {
            out.extend_from_slice(field);
            continue;
        }
        let addresses = addresses_of(field);
        named.extend(addresses.iter().cloned());
        if addresses.iter().all(|a| in_envelope(a)) {
            out.extend_from_slice(field);
            continue;
        }
        // Written again with the envelope's recipients only (display names are dropped
        // with the rewrite); an emptied header goes.
        let kept: Vec<&str> = addresses
            .iter()
            .map(String::as_str)
            .filter(|a| in_envelope(a))
            .collect();
        if !kept.is_empty() {
            write_list(&mut out, &name, &kept);
        }
    }
    let only_envelope: Vec<&str> = envelope
        .iter()
        .map(EmailAddress::as_str)
        .filter(|e| !named.iter().any(|n| n.eq_ignore_ascii_case(e)))
        .collect();
    if !only_envelope.is_empty() {
        write_list(&mut out, "Bcc", &only_envelope);
    }
    out.extend_from_slice(body);
    out
}

fn write_list(out: &mut Vec<u8>, name: &str, addresses: &[&str]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    let list = Address::new_list(
        addresses
            .iter()
            .map(|a| Address::new_address(None::<&str>, *a))
            .collect(),
    );
    list.write_header(out, name.len() + 2);
}

/// Where the header section ends (the blank line stays with the body).
fn header_end(mime: &[u8]) -> usize {
    let mut i = 0;
    while i < mime.len() {
        let line_end = mime[i..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(mime.len(), |p| i + p + 1);
        let line = &mime[i..line_end];
        if line == b"\r\n" || line == b"\n" {
            return i;
        }
        i = line_end;
    }
    mime.len()
}

/// Header fields, each with its continuation lines and line ends.
fn fields(head: &[u8]) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = Vec::new();
    let mut start = None;
    let mut i = 0;
    while i < head.len() {
        let end = head[i..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(head.len(), |p| i + p + 1);
        let continuation = matches!(head[i], b' ' | b'\t');
        if !continuation {
            if let Some(s) = start {
                out.push(&head[s..i]);
            }
            start = Some(i);
        }
        i = end;
    }
    if let Some(s) = start {
        out.push(&head[s..]);
    }
    out
}

fn field_name(field: &[u8]) -> String {
    let text = String::from_utf8_lossy(field);
    text.split_once(':')
        .map(|(n, _)| n.trim().to_owned())
        .unwrap_or_default()
}

/// The addr-specs of an address-list header: each `<...>`, or the bare `a@b` items.
fn addresses_of(field: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(field);
    let value = text.split_once(':').map_or("", |(_, v)| v);
    let mut out = Vec::new();
    let mut quoted = false;
    let mut item = String::new();
    let flush = |item: &mut String, out: &mut Vec<String>| {
        let t = item.trim();
        let angle = t
            .rfind('<')
            .and_then(|a| t[a..].find('>').map(|b| t[a + 1..a + b].trim().to_owned()));
        match angle {
            Some(a) if a.contains('@') => out.push(a),
            Some(_) => {}
            None => {
                // `group: a@b, c@d;` and bare addresses.
                let bare = t
                    .rsplit(':')
                    .next()
                    .unwrap_or(t)
                    .trim_end_matches(';')
                    .trim();
                if bare.contains('@') && !bare.contains(char::is_whitespace) {
                    out.push(bare.to_owned());
                }
            }
        }
        item.clear();
    };
    for c in value.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                item.push(c);
            }
            ',' | ';' if !quoted => flush(&mut item, &mut out),
            '\r' | '\n' => {}
            _ => item.push(c),
        }
    }
    flush(&mut item, &mut out);
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn env(list: &[&str]) -> Vec<EmailAddress> {
        list.iter()
            .map(|a| EmailAddress::parse(a).unwrap())
            .collect()
    }

    fn header<'a>(out: &'a str, name: &str) -> Option<&'a str> {
        out.lines().find(|l| {
            l.to_ascii_lowercase()
                .starts_with(&format!("{}:", name.to_ascii_lowercase()))
        })
    }

    #[test]
    fn headers_naming_the_envelope_stay_as_they_are() {
        let mime = b"From: a@contoso.example\r\nTo: \"Zo\xc3\xab, Q\" <z@fabrikam.example>,\r\n b@fabrikam.example\r\nSubject: s\r\n\r\nTo: not@a.header\r\n";
        let out = with_envelope(mime, &env(&["z@fabrikam.example", "B@fabrikam.example"]));
        assert_eq!(out, mime.to_vec());
    }

    #[test]
    fn envelope_only_recipients_become_bcc_and_suppressed_ones_leave() {
        let mime = b"To: \"Z\" <z@fabrikam.example>, gone@fabrikam.example\r\nCc: gone2@fabrikam.example\r\nSubject: s\r\n\r\nbody\r\n";
        let out = with_envelope(
            mime,
            &env(&["z@fabrikam.example", "hidden@fabrikam.example"]),
        );
        let out = String::from_utf8(out).unwrap();
        let to = header(&out, "To").unwrap();
        assert!(
            to.contains("z@fabrikam.example") && !to.contains("gone"),
            "{out}"
        );
        assert!(header(&out, "Cc").is_none(), "{out}");
        let bcc = header(&out, "Bcc").unwrap();
        assert!(
            bcc.contains("hidden@fabrikam.example") && !bcc.contains("z@"),
            "{out}"
        );
        assert!(out.ends_with("\r\n\r\nbody\r\n"), "{out}");
        assert!(header(&out, "Subject").is_some());
    }

    #[test]
    fn an_undisclosed_group_names_nobody() {
        let mime = b"To: undisclosed-recipients:;\r\n\r\nx";
        let out = String::from_utf8(with_envelope(mime, &env(&["b@x.example"]))).unwrap();
        assert!(out.starts_with("To: undisclosed-recipients:;\r\n"), "{out}");
        assert!(
            header(&out, "Bcc").unwrap().contains("b@x.example"),
            "{out}"
        );
    }
}
