//! Mail that fills a pool mailbox's Inbox besides reports, as Exchange files it: the
//! out-of-office answers every large batch of invoices draws (in bulk), and messages larger
//! than a client is willing to fetch.

/// An Exchange out-of-office reply from `from` to `to`, the `n`th of a run: the headers
/// Exchange stamps on automatic replies (`Auto-Submitted: auto-replied`,
/// `X-Auto-Response-Suppress: All`, `X-MS-Exchange-Inbox-Rules-Loop`), a unique Message-ID.
pub fn auto_reply(from: &str, to: &str, n: usize) -> Vec<u8> {
    let domain = from.rsplit_once('@').map_or("example.com", |(_, d)| d);
    format!(
        "From: {from}\r\nTo: {to}\r\nSubject: Automatic reply: Your invoice\r\n\
         Date: {date}\r\nMessage-ID: <ooo-{n}-{id}@{domain}>\r\n\
         Auto-Submitted: auto-replied\r\nX-Auto-Response-Suppress: All\r\n\
         X-MS-Exchange-Inbox-Rules-Loop: {from}\r\nContent-Language: en-US\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=\"us-ascii\"\r\n\r\n\
         I am out of the office until the end of the month with limited access to email.\r\n",
        date = chrono::Utc::now().to_rfc2822(),
        id = uuid::Uuid::new_v4().simple(),
    )
    .into_bytes()
}

/// An ordinary message from `from` to `to` of at least `bytes` bytes (a customer's reply
/// with a large scan attached).
pub fn large_message(from: &str, to: &str, bytes: usize) -> Vec<u8> {
    let domain = from.rsplit_once('@').map_or("example.com", |(_, d)| d);
    let mut raw = format!(
        "From: {from}\r\nTo: {to}\r\nSubject: RE: Your invoice (scan attached)\r\n\
         Date: {date}\r\nMessage-ID: <large-{id}@{domain}>\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"scan\"\r\n\r\n\
         --scan\r\nContent-Type: text/plain\r\n\r\nPlease find the signed copy attached.\r\n\
         --scan\r\nContent-Type: application/pdf; name=\"scan.pdf\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n",
        date = chrono::Utc::now().to_rfc2822(),
        id = uuid::Uuid::new_v4().simple(),
    )
    .into_bytes();
    let line = [b'A'; 76];
    while raw.len() < bytes {
        raw.extend_from_slice(&line);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"--scan--\r\n");
    raw
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_mail_has_the_headers_a_reader_sees() {
        let a = auto_reply("ann@fabrikam.example", "sender0@contoso.example", 7);
        let (id, subject, from) = crate::mail_store::summary_headers(&a);
        assert!(id.is_some_and(|i| i.starts_with("<ooo-7-")));
        assert_eq!(subject.as_deref(), Some("Automatic reply: Your invoice"));
        assert_eq!(from.as_deref(), Some("ann@fabrikam.example"));
        let big = large_message("bob@fabrikam.example", "sender0@contoso.example", 100_000);
        assert!(big.len() >= 100_000);
        assert!(big.ends_with(b"--scan--\r\n"));
    }
}
