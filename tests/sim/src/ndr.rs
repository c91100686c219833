//! Exchange Online-style non-delivery reports (NDRs), filed into the sender's Inbox for
//! recipients configured in `[[bounces]]`.

use chrono::{DateTime, Utc};

use crate::mail_store::summary_headers;

/// One recipient the NDR reports as failed.
#[derive(Debug, Clone)]
pub struct FailedRecipient {
    pub address: String,
    /// Enhanced status code, `5.1.10`.
    pub status: String,
    /// The remote server's reply, `550 5.1.10 RESOLVER.ADR.RecipientNotFound; …`.
    pub diagnostic: String,
}

/// Builds the NDR Exchange Online sends back to `sender` when `recipients` of the message
/// `original` (as submitted, headers and body) could not be delivered.
///
/// The shape follows what Exchange Online writes, so a bounce parser tested against it meets
/// the real thing:
/// - RFC 6522 `multipart/report; report-type=delivery-status` with three parts: the human
///   part (Exchange's wording: "Delivery has failed to these recipients or groups:", "Diagnostic
///   information for administrators:", "Generating server:", "Remote Server returned '…'",
///   "Original message headers:"; see Microsoft's "Email non-delivery reports and SMTP errors
///   in Exchange Online", learn.microsoft.com/exchange/troubleshoot/email-delivery/ndr/
///   non-delivery-reports-in-exchange-online, section "What's included in an NDR?"), an RFC
///   3464 `message/delivery-status` part (Reporting-MTA, Arrival-Date, then per recipient
///   Original-Recipient, Final-Recipient, Action: failed, Status, Diagnostic-Code,
///   Remote-MTA), and `text/rfc822-headers` with the original header section (its
///   Message-ID is what a client matches the NDR to its send with).
/// - The top-level headers Exchange NDRs carry: `From: postmaster@<tenant domain>` display
///   name "Microsoft Outlook", `Subject: Undeliverable: <subject>`, `In-Reply-To` and
///   `References` with the original Message-ID, `Thread-Topic`, `Auto-Submitted:
///   auto-replied` (RFC 3834), `X-MS-Exchange-Message-Is-Ndr:` (empty value),
///   `Content-Language: en-US`, and the organization headers the tenant's transport stamps
///   on a message it generated itself: `X-MS-Exchange-Organization-AuthAs: Internal`,
///   `X-MS-Exchange-Organization-AuthSource: <the generating server>`,
///   `X-MS-Exchange-Organization-MessageDirectionality: Originating` (Exchange's header
///   firewall removes `X-MS-Exchange-Organization-*` from mail entering the tenant:
///   [`strip_organization_headers`]).
pub fn exchange_ndr(
    reporting_mta: &str,
    postmaster: &str,
    sender: &str,
    original: &[u8],
    recipients: &[FailedRecipient],
    arrived: DateTime<Utc>,
) -> Vec<u8> {
    let header_end = original
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .unwrap_or(original.len());
    let original_headers = String::from_utf8_lossy(&original[..header_end]).into_owned();
    let (message_id, subject, _) = summary_headers(original);
    let subject = subject.unwrap_or_default();
    let boundary = format!("ndr_{}", uuid::Uuid::new_v4().simple());
    let alt = format!("alt_{}", uuid::Uuid::new_v4().simple());
    let now = Utc::now();
    let date = now.to_rfc2822();
    let ndr_id = format!(
        "<{}@{}>",
        uuid::Uuid::new_v4().simple(),
        reporting_mta.to_ascii_lowercase()
    );

    let mut m = String::new();
    m.push_str(&format!("From: Microsoft Outlook <{postmaster}>\r\n"));
    m.push_str(&format!("To: <{sender}>\r\n"));
    m.push_str(&format!("Date: {date}\r\n"));
    m.push_str(&format!("Subject: Undeliverable: {subject}\r\n"));
    m.push_str(&format!("Message-ID: {ndr_id}\r\n"));
    if let Some(id) = &message_id {
        m.push_str(&format!("In-Reply-To: {id}\r\nReferences: {id}\r\n"));
    }
    m.push_str(&format!("Thread-Topic: {subject}\r\n"));
    m.push_str("Content-Language: en-US\r\n");
    m.push_str("X-MS-Has-Attach: \r\n");
    m.push_str("X-MS-Exchange-Message-Is-Ndr: \r\n");
    m.push_str("X-MS-Exchange-Organization-SCL: -1\r\n");
    m.push_str("X-MS-Exchange-Organization-AuthAs: Internal\r\n");
    m.push_str(&format!(
        "X-MS-Exchange-Organization-AuthSource: {reporting_mta}\r\n"
    ));
    m.push_str("X-MS-Exchange-Organization-MessageDirectionality: Originating\r\n");
    m.push_str("Auto-Submitted: auto-replied\r\n");
    m.push_str(&format!(
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n"
    ));
    m.push_str("MIME-Version: 1.0\r\n\r\n");

    // 1. The human part, plain text and HTML.
    let mut text = String::from("Delivery has failed to these recipients or groups:\r\n\r\n");
    for r in recipients {
        text.push_str(&format!(
            "{0}<mailto:{0}>\r\n{1}\r\n\r\n",
            r.address,
            explanation(&r.status)
        ));
    }
    text.push_str("\r\n\r\nDiagnostic information for administrators:\r\n\r\n");
    text.push_str(&format!("Generating server: {reporting_mta}\r\n\r\n"));
    for r in recipients {
        text.push_str(&format!(
            "{}\r\nRemote Server returned '{}'\r\n\r\n",
            r.address, r.diagnostic
        ));
    }
    text.push_str("Original message headers:\r\n\r\n");
    text.push_str(&original_headers);
    let html = format!(
        "<html><body><p><b><font color=\"#000066\" size=\"3\" face=\"Arial\">Delivery has failed to these recipients or groups:</font></b></p><pre>{}</pre></body></html>\r\n",
        html_escape(&text)
    );
    m.push_str(&format!("--{boundary}\r\n"));
    m.push_str(&format!(
        "Content-Type: multipart/alternative; boundary=\"{alt}\"\r\n\r\n"
    ));
    m.push_str(&format!(
        "--{alt}\r\nContent-Type: text/plain; charset=\"us-ascii\"\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{text}\r\n"
    ));
    m.push_str(&format!(
        "--{alt}\r\nContent-Type: text/html; charset=\"us-ascii\"\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{html}"
    ));
    m.push_str(&format!("--{alt}--\r\n\r\n"));

    // 2. The machine-readable report (RFC 3464).
    m.push_str(&format!(
        "--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
    ));
    m.push_str(&format!("Reporting-MTA: dns;{reporting_mta}\r\n"));
    m.push_str(&format!("Received-From-MTA: dns;{reporting_mta}\r\n"));
    m.push_str(&format!("Arrival-Date: {}\r\n", arrived.to_rfc2822()));
    for r in recipients {
        m.push_str("\r\n");
        m.push_str(&format!("Original-Recipient: rfc822;{}\r\n", r.address));
        m.push_str(&format!("Final-Recipient: rfc822;{}\r\n", r.address));
        m.push_str("Action: failed\r\n");
        m.push_str(&format!("Status: {}\r\n", r.status));
        m.push_str(&format!("Diagnostic-Code: smtp;{}\r\n", r.diagnostic));
        let domain = r.address.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        m.push_str(&format!("Remote-MTA: dns;mx.{domain}\r\n"));
    }
    m.push_str("\r\n");

    // 3. The original message's header section.
    m.push_str(&format!(
        "--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
    ));
    m.push_str(&original_headers);
    m.push_str(&format!("\r\n--{boundary}--\r\n"));
    m.into_bytes()
}

/// What Exchange Online's header firewall does to a message that enters the tenant from the
/// internet: every `X-MS-Exchange-Organization-*` header of its header section is removed
/// (an outsider cannot claim to be internal), and the tenant stamps its own
/// `X-MS-Exchange-Organization-AuthAs: Anonymous` and `MessageDirectionality: Incoming`.
pub fn strip_organization_headers(raw: &[u8]) -> Vec<u8> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|p| p + 1))
        .unwrap_or(raw.len());
    let (head, body) = raw.split_at(end);
    let mut out = Vec::with_capacity(raw.len() + 128);
    out.extend_from_slice(b"X-MS-Exchange-Organization-AuthAs: Anonymous\r\n");
    out.extend_from_slice(b"X-MS-Exchange-Organization-MessageDirectionality: Incoming\r\n");
    let mut dropping = false;
    for line in head.split_inclusive(|b| *b == b'\n') {
        let continuation = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        if !continuation {
            const PREFIX: &[u8] = b"x-ms-exchange-organization-";
            dropping =
                line.len() >= PREFIX.len() && line[..PREFIX.len()].eq_ignore_ascii_case(PREFIX);
        }
        if !dropping {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(body);
    out
}

/// The sentence Exchange puts under each failed recipient.
fn explanation(status: &str) -> &'static str {
    match status {
        "5.1.10" | "5.1.1" => {
            "The email address you entered couldn't be found. Please check the recipient's email address and try to send the message again. If the problem continues, please contact your helpdesk."
        }
        "5.2.2" => {
            "The recipient's mailbox is full and can't accept messages now. Please try resending your message later, or contact the recipient directly."
        }
        _ => {
            "Your message couldn't be delivered. The recipient's email system refused it. Please contact your helpdesk."
        }
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::{MessageParser, MimeHeaders as _};

    #[test]
    fn the_header_firewall_removes_organization_headers_of_the_header_section_only() {
        let raw = b"From: x@attacker.example\r\nX-MS-Exchange-Organization-AuthAs: Internal\r\nx-ms-exchange-organization-authsource:\r\n folded.example\r\nX-MS-Exchange-Message-Is-Ndr: \r\n\r\nX-MS-Exchange-Organization-AuthAs: Internal\r\n";
        let out = String::from_utf8(strip_organization_headers(raw)).expect("ASCII in, ASCII out");
        assert_eq!(
            out,
            "X-MS-Exchange-Organization-AuthAs: Anonymous\r\nX-MS-Exchange-Organization-MessageDirectionality: Incoming\r\nFrom: x@attacker.example\r\nX-MS-Exchange-Message-Is-Ndr: \r\n\r\nX-MS-Exchange-Organization-AuthAs: Internal\r\n"
        );
    }

    #[test]
    fn ndr_is_a_delivery_status_report_with_three_parts_and_the_original_message_id() {
        let original = b"From: invoices1@contoso.example\r\nTo: nobody@fabrikam.example\r\nSubject: Invoice 42\r\nMessage-ID: <job-42@mailpipe.example>\r\n\r\nHello\r\n";
        let raw = exchange_ndr(
            "SIM0PR01MB0001.mailpipe-sim.localhost",
            "postmaster@contoso.example",
            "invoices1@contoso.example",
            original,
            &[FailedRecipient {
                address: "nobody@fabrikam.example".into(),
                status: "5.1.10".into(),
                diagnostic: "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup".into(),
            }],
            Utc::now(),
        );
        let msg = MessageParser::default()
            .parse(&raw)
            .expect("the NDR parses");
        let ct = msg.content_type().expect("content type");
        assert_eq!(ct.ctype(), "multipart");
        assert_eq!(ct.subtype(), Some("report"));
        assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
        assert_eq!(msg.subject(), Some("Undeliverable: Invoice 42"));
        assert_eq!(msg.in_reply_to().as_text(), Some("job-42@mailpipe.example"));
        assert!(msg.header("Auto-Submitted").is_some());
        assert!(msg.header("X-MS-Exchange-Message-Is-Ndr").is_some());

        let root = msg.root_part();
        let children = match &root.body {
            mail_parser::PartType::Multipart(ids) => ids.clone(),
            other => panic!("not multipart: {other:?}"),
        };
        assert_eq!(children.len(), 3, "human, delivery-status, headers");
        let part = |i: usize| &msg.parts[children[i] as usize];
        let types: Vec<String> = (0..3)
            .map(|i| {
                let ct = part(i).content_type().expect("part type");
                format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or(""))
            })
            .collect();
        assert_eq!(
            types,
            [
                "multipart/alternative",
                "message/delivery-status",
                "text/rfc822-headers"
            ]
        );
        let text = msg.body_text(0).expect("text part");
        assert!(text.contains("Delivery has failed to these recipients or groups"));
        assert!(text.contains("Remote Server returned '550 5.1.10 RESOLVER.ADR.RecipientNotFound"));
        let status = String::from_utf8_lossy(part(1).contents()).into_owned();
        for line in [
            "Reporting-MTA: dns;SIM0PR01MB0001.mailpipe-sim.localhost",
            "Final-Recipient: rfc822;nobody@fabrikam.example",
            "Original-Recipient: rfc822;nobody@fabrikam.example",
            "Action: failed",
            "Status: 5.1.10",
            "Diagnostic-Code: smtp;550 5.1.10",
        ] {
            assert!(status.contains(line), "{line} not in {status}");
        }
        let headers = String::from_utf8_lossy(part(2).contents()).into_owned();
        assert!(
            headers.contains("Message-ID: <job-42@mailpipe.example>"),
            "{headers}"
        );
    }
}
