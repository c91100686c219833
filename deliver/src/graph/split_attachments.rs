//! A message too large for one Graph request (a draft from MIME is capped near 4 MB) is
//! sent as a draft without its attachments plus the attachments added to that draft one
//! by one (small ones in one request, large ones through an upload session). This splits
//! our MIME that way: the top-level `multipart/mixed` loses every part that is an
//! attachment (a `Content-Disposition: attachment`, or a file name on a part that is not
//! `inline`), byte for byte otherwise, and each attachment comes out decoded (its transfer
//! encoding undone, nothing else: a text attachment keeps its charset's bytes).

use mail_parser::{MessageParser, MimeHeaders};

/// One attachment taken out of the message: what Graph's `fileAttachment` and
/// `AttachmentItem` name, and the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Attachment {
    pub name: String,
    /// `type/subtype`, as the part declared it (`application/octet-stream` when it did not).
    pub content_type: String,
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attachment")
            .field("name", &self.name)
            .field("content_type", &self.content_type)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

/// The draft's MIME (the message without its attachments) and the attachments, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub draft: Vec<u8>,
    pub attachments: Vec<Attachment>,
}

/// `mime` split into a draft and its attachments; `None` when the message is not a
/// top-level `multipart/mixed` or has no attachment part (nothing to take out).
pub fn split_attachments(mime: &[u8]) -> Option<Split> {
    let head_end = header_end(mime)?;
    let top = MessageParser::new().parse_headers(&mime[..head_end])?;
    let ctype = top.content_type()?;
    let mixed = ctype.ctype().eq_ignore_ascii_case("multipart")
        && ctype
            .subtype()
            .is_some_and(|s| s.eq_ignore_ascii_case("mixed"));
    if !mixed {
        return None;
    }
    let boundary = ctype.attribute("boundary")?.as_bytes().to_vec();
    let body_start = head_end;
    let body = &mime[body_start..];
    let delimiters = delimiter_lines(body, &boundary);
    let close = delimiters.iter().position(|d| d.close)?;
    let opening = &delimiters[..close];
    if opening.is_empty() {
        return None;
    }
    let mut draft = mime[..body_start + opening[0].start].to_vec();
    let mut attachments = Vec::new();
    let mut kept = 0;
    for (i, d) in opening.iter().enumerate() {
        let next = &delimiters[i + 1];
        // The CRLF before a delimiter belongs to it (RFC 2046 5.1.1).
        let content_end = strip_line_end(body, d.end, next.start);
        let part = &body[d.end..content_end];
        match attachment_of(part) {
            Some(a) => attachments.push(a),
            None => {
                draft.extend_from_slice(&body[d.start..next.start]);
                kept += 1;
            }
        }
    }
    if attachments.is_empty() {
        return None;
    }
    if kept == 0 {
        // A multipart needs a part: an empty text one stands for the body.
        let line = &body[opening[0].start..opening[0].end];
        draft.extend_from_slice(line);
        draft.extend_from_slice(b"Content-Type: text/plain; charset=utf-8\r\n\r\n\r\n");
    }
    draft.extend_from_slice(&body[delimiters[close].start..]);
    Some(Split { draft, attachments })
}

/// Where the blank line after the header section ends (the body starts there).
fn header_end(mime: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < mime.len() {
        let end = mime[i..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(mime.len(), |p| i + p + 1);
        let line = &mime[i..end];
        if line == b"\r\n" || line == b"\n" {
            return Some(end);
        }
        i = end;
    }
    None
}

#[derive(Debug, Clone, Copy)]
struct Delimiter {
    /// Where the line starts (after the CRLF that precedes it).
    start: usize,
    /// After its line end.
    end: usize,
    close: bool,
}

fn delimiter_lines(body: &[u8], boundary: &[u8]) -> Vec<Delimiter> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < body.len() {
        let end = body[i..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(body.len(), |p| i + p + 1);
        let line = body[i..end].trim_ascii_end();
        if let Some(rest) = line.strip_prefix(b"--")
            && let Some(tail) = rest.strip_prefix(boundary)
        {
            if tail.is_empty() {
                out.push(Delimiter {
                    start: i,
                    end,
                    close: false,
                });
            } else if tail == b"--" {
                out.push(Delimiter {
                    start: i,
                    end,
                    close: true,
                });
                break;
            }
        }
        i = end;
    }
    out
}

/// `to` less the line end just before it (never before `from`).
fn strip_line_end(body: &[u8], from: usize, to: usize) -> usize {
    let mut end = to;
    if end > from && body[end - 1] == b'\n' {
        end -= 1;
        if end > from && body[end - 1] == b'\r' {
            end -= 1;
        }
    }
    end
}

/// The part as an attachment, when it is one.
fn attachment_of(part: &[u8]) -> Option<Attachment> {
    let head_end = header_end(part)?;
    let headers = MessageParser::new().parse_headers(&part[..head_end])?;
    let disposition = headers.content_disposition();
    let is_attachment = match disposition {
        Some(d) => d.is_attachment(),
        None => false,
    } || (disposition.is_none_or(|d| !d.is_inline())
        && headers.attachment_name().is_some());
    if !is_attachment {
        return None;
    }
    let content_type = headers
        .content_type()
        .filter(|c| !c.ctype().eq_ignore_ascii_case("multipart"))
        .map(|c| match c.subtype() {
            Some(sub) => format!("{}/{}", c.ctype(), sub).to_ascii_lowercase(),
            None => c.ctype().to_ascii_lowercase(),
        });
    // A multipart attachment (a forwarded thread's parts) is not a file: left in the draft.
    if headers
        .content_type()
        .is_some_and(|c| c.ctype().eq_ignore_ascii_case("multipart"))
    {
        return None;
    }
    let encoding = headers
        .content_transfer_encoding()
        .map(|e| e.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let raw = &part[head_end..];
    let bytes = match encoding.as_str() {
        "base64" => {
            use base64::Engine as _;
            let compact: Vec<u8> = raw
                .iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            base64::engine::general_purpose::STANDARD
                .decode(&compact)
                .ok()?
        }
        "quoted-printable" => quoted_printable(raw),
        _ => raw.to_vec(),
    };
    Some(Attachment {
        name: headers
            .attachment_name()
            .map(str::to_owned)
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| "attachment".to_owned()),
        content_type: content_type.unwrap_or_else(|| "application/octet-stream".to_owned()),
        bytes,
    })
}

/// Quoted-printable decoded (RFC 2045 6.7): `=XX` octets, soft line breaks dropped.
fn quoted_printable(raw: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b != b'=' {
            out.push(b);
            i += 1;
            continue;
        }
        let rest = &raw[i + 1..];
        if rest.starts_with(b"\r\n") {
            i += 3;
        } else if rest.starts_with(b"\n") {
            i += 2;
        } else if let (Some(h), Some(l)) = (
            rest.first().copied().and_then(hex),
            rest.get(1).copied().and_then(hex),
        ) {
            out.push(h << 4 | l);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use mail_builder::MessageBuilder;

    fn message_with(attachments: &[(&str, &str, Vec<u8>)]) -> Vec<u8> {
        let mut m = MessageBuilder::new()
            .from("a@contoso.example")
            .to("b@fabrikam.example")
            .subject("Invoice")
            .message_id("inv-1@mailpipe.test")
            .text_body("Hello.\r\n")
            .html_body("<p>Hello.</p>");
        for (ct, name, bytes) in attachments {
            m = m.attachment(*ct, *name, bytes.clone());
        }
        m.write_to_vec().unwrap()
    }

    #[test]
    fn attachments_come_out_decoded_and_the_rest_stays_byte_for_byte() {
        let pdf: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let csv = "n;€\r\n1;2\r\n".as_bytes().to_vec();
        let mime = message_with(&[
            ("application/pdf", "invoice.pdf", pdf.clone()),
            ("text/csv", "lines.csv", csv.clone()),
        ]);
        let split = split_attachments(&mime).unwrap();
        assert_eq!(split.attachments.len(), 2);
        assert_eq!(split.attachments[0].name, "invoice.pdf");
        assert_eq!(split.attachments[0].content_type, "application/pdf");
        assert_eq!(split.attachments[0].bytes, pdf);
        assert_eq!(split.attachments[1].name, "lines.csv");
        assert_eq!(split.attachments[1].bytes, csv);
        // The draft is the message less those parts: the body is still there, and it
        // parses with the same Message-ID and no attachment.
        assert!(split.draft.len() < 2_000, "{}", split.draft.len());
        let parsed = MessageParser::new().parse(&split.draft).unwrap();
        assert_eq!(parsed.message_id(), Some("inv-1@mailpipe.test"));
        assert_eq!(parsed.attachment_count(), 0);
        assert_eq!(parsed.body_text(0).unwrap().trim(), "Hello.");
        assert!(mime.starts_with(&split.draft[..split.draft.len() / 2]));
    }

    #[test]
    fn a_message_without_attachments_is_not_split() {
        assert!(split_attachments(&message_with(&[])).is_none());
        assert!(split_attachments(b"Subject: x\r\n\r\nbody\r\n").is_none());
    }

    #[test]
    fn a_message_of_attachments_only_keeps_an_empty_body() {
        let mime = b"Subject: x\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"a.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\nAAEC\r\n--b1--\r\n";
        let split = split_attachments(mime).unwrap();
        assert_eq!(split.attachments[0].bytes, vec![0, 1, 2]);
        let parsed = MessageParser::new().parse(&split.draft).unwrap();
        assert_eq!(parsed.attachment_count(), 0);
        assert!(split.draft.ends_with(b"--b1--\r\n"));
    }

    #[test]
    fn quoted_printable_is_undone() {
        assert_eq!(
            quoted_printable(b"a=3Db=\r\nc=E2=82=AC"),
            "a=bc€".as_bytes()
        );
    }
}
