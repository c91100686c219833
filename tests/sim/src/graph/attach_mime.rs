//! An attachment added to a draft's MIME, as Exchange does when a client adds a
//! `fileAttachment` or finishes an upload session: a base64 part with the file's name and
//! type at the end of the top-level `multipart/mixed` (the message wrapped in one first
//! when it is not), so the message that is finally sent carries it, byte for byte once
//! decoded.

use base64::Engine as _;
use mail_parser::{MessageParser, MimeHeaders};

/// `raw` with one more attachment.
pub(crate) fn with_attachment(raw: &[u8], name: &str, content_type: &str, bytes: &[u8]) -> Vec<u8> {
    let head_end = header_end(raw);
    let (head, body) = raw.split_at(head_end);
    let part = attachment_part(name, content_type, bytes);
    if let Some(boundary) = mixed_boundary(head)
        && let Some(close) = close_delimiter(body, &boundary)
    {
        let mut out = Vec::with_capacity(raw.len() + part.len() + 80);
        out.extend_from_slice(head);
        out.extend_from_slice(&body[..close]);
        out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        out.extend_from_slice(&part);
        out.extend_from_slice(&body[close..]);
        return out;
    }
    // Wrapped: the content headers move into the first part.
    let body = body
        .strip_prefix(b"\r\n")
        .or_else(|| body.strip_prefix(b"\n"))
        .unwrap_or(body);
    let boundary = format!("sim-{}", uuid::Uuid::new_v4().simple());
    let mut top = Vec::new();
    let mut content = Vec::new();
    let mut has_version = false;
    for field in fields(head) {
        let lower = field.to_ascii_lowercase();
        if lower.starts_with(b"content-") {
            content.extend_from_slice(field);
        } else if !field.trim_ascii().is_empty() {
            has_version |= lower.starts_with(b"mime-version:");
            top.extend_from_slice(field);
        }
    }
    if content.is_empty() {
        content.extend_from_slice(b"Content-Type: text/plain; charset=us-ascii\r\n");
    }
    let mut out = top;
    if !has_version {
        out.extend_from_slice(b"MIME-Version: 1.0\r\n");
    }
    out.extend_from_slice(
        format!("Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n--{boundary}\r\n")
            .as_bytes(),
    );
    out.extend_from_slice(&content);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    if !body.ends_with(b"\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
    out.extend_from_slice(&part);
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}

/// The part's headers, blank line and base64 body (lines of 76), ending in CRLF.
fn attachment_part(name: &str, content_type: &str, bytes: &[u8]) -> Vec<u8> {
    let ctype = if is_media_type(content_type) {
        content_type
    } else {
        "application/octet-stream"
    };
    let filename = filename_params(name);
    let mut out = format!(
        "Content-Type: {ctype}; name{}\r\nContent-Disposition: attachment; filename{}\r\nContent-Transfer-Encoding: base64\r\n\r\n",
        filename.0, filename.1
    )
    .into_bytes();
    let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
    for line in encoded.as_bytes().chunks(76) {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// `(="name"` for `name`, `="name"` for `filename`), or RFC 2231's `*=utf-8''…` for a name
/// that is not plain printable ASCII.
fn filename_params(name: &str) -> (String, String) {
    let plain = name
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
    if plain {
        let v = format!("=\"{name}\"");
        (v.clone(), v)
    } else {
        let encoded: String = name
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let v = format!("*=utf-8''{encoded}");
        (v.clone(), v)
    }
}

fn is_media_type(s: &str) -> bool {
    let token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    matches!(s.split_once('/'), Some((a, b)) if token(a) && token(b))
}

fn header_end(raw: &[u8]) -> usize {
    let mut i = 0;
    while i < raw.len() {
        let end = raw[i..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(raw.len(), |p| i + p + 1);
        let line = &raw[i..end];
        if line == b"\r\n" || line == b"\n" {
            return i;
        }
        i = end;
    }
    raw.len()
}

/// Header fields with their continuation lines (the blank line is not one).
fn fields(head: &[u8]) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < head.len() {
        let end = head[i..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(head.len(), |p| i + p + 1);
        if i > start && !matches!(head[i], b' ' | b'\t') {
            out.push(&head[start..i]);
            start = i;
        }
        i = end;
    }
    if start < head.len() {
        out.push(&head[start..]);
    }
    out
}

fn mixed_boundary(head: &[u8]) -> Option<String> {
    let mut with_blank = head.to_vec();
    with_blank.extend_from_slice(b"\r\n");
    let parsed = MessageParser::new().parse_headers(&with_blank)?;
    let ct = parsed.content_type()?;
    let mixed = ct.ctype().eq_ignore_ascii_case("multipart")
        && ct
            .subtype()
            .is_some_and(|s| s.eq_ignore_ascii_case("mixed"));
    if mixed {
        ct.attribute("boundary").map(str::to_owned)
    } else {
        None
    }
}

/// Where the line `--boundary--` starts in `body`.
fn close_delimiter(body: &[u8], boundary: &str) -> Option<usize> {
    let close = format!("--{boundary}--");
    let mut i = 0;
    while i < body.len() {
        let end = body[i..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(body.len(), |p| i + p + 1);
        if body[i..end].trim_ascii_end() == close.as_bytes() {
            return Some(i);
        }
        i = end;
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn attachments(raw: &[u8]) -> Vec<(String, Vec<u8>)> {
        let m = MessageParser::new().parse(raw).unwrap();
        m.attachments()
            .map(|a| {
                (
                    a.attachment_name().unwrap_or_default().to_owned(),
                    a.contents().to_vec(),
                )
            })
            .collect()
    }

    #[test]
    fn a_multipart_mixed_draft_gets_a_part_before_its_end() {
        let raw = b"Subject: s\r\nMessage-ID: <a@b>\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nHello.\r\n--b1--\r\n";
        let bin: Vec<u8> = (0..1000u32).map(|i| (i % 256) as u8).collect();
        let out = with_attachment(raw, "a.bin", "application/octet-stream", &bin);
        let out = with_attachment(&out, "Zoë.pdf", "application/pdf", b"%PDF");
        assert_eq!(
            attachments(&out),
            vec![
                ("a.bin".to_owned(), bin),
                ("Zoë.pdf".to_owned(), b"%PDF".to_vec())
            ]
        );
        let m = MessageParser::new().parse(&out).unwrap();
        assert_eq!(m.body_text(0).unwrap().trim(), "Hello.");
        assert_eq!(m.message_id(), Some("a@b"));
    }

    #[test]
    fn a_single_part_draft_is_wrapped() {
        let raw = b"Subject: s\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello.\r\n";
        let out = with_attachment(raw, "x.txt", "text/plain", b"file");
        assert_eq!(
            attachments(&out),
            vec![("x.txt".to_owned(), b"file".to_vec())]
        );
        let m = MessageParser::new().parse(&out).unwrap();
        assert_eq!(m.subject(), Some("s"));
        assert_eq!(m.body_text(0).unwrap().trim(), "Hello.");
    }
}
