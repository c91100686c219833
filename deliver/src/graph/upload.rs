//! Attachments added to a draft, for a message too large for one Graph request
//! (docs/deliver.md, "Large messages: upload sessions"): one of up to
//! [`UPLOAD_SESSION_ABOVE`] bytes in one request (`POST .../attachments`, a
//! `fileAttachment`); a larger one through an upload session (`POST
//! .../attachments/createUploadSession`, then its bytes `PUT` in [`CHUNK_BYTES`] ranges to
//! the session's `uploadUrl`).
//!
//! The `uploadUrl` is pre-authenticated (its query is a credential) and points at
//! Outlook's host, not Graph's: the bearer token never goes with it, it is used only when
//! it is https on `base_url`'s host or one of `deliver.graph.upload_hosts`, and it never
//! reaches a log or an error (only its origin does).

use std::time::Instant;

use base64::Engine as _;
use bytes::Bytes;
use mailpipe_common::domain::EmailAddress;
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;

use crate::graph::client::{
    GraphClient, MAX_JSON_BYTES, MAX_THROTTLED_ATTEMPTS, answer_body, retry_after_of, transport,
};
use crate::graph::error::GraphError;
use crate::graph::split_attachments::Attachment;

use crate::metrics;

/// Attachments up to this size go in one request (as base64 it stays under Graph's 4 MB
/// request cap); larger ones through an upload session (Microsoft: "between 3 MB and 150
/// MB").
pub const UPLOAD_SESSION_ABOVE: usize = 3_000_000;
/// Bytes per `PUT` of an upload session: a multiple of 320 KiB (as Microsoft's upload
/// sessions want) under its 4 MB per request.
pub const CHUNK_BYTES: usize = 12 * 320 * 1024;

/// An upload session as Graph creates it. Its `Debug` leaves the URL out (a credential).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireUploadSession {
    upload_url: String,
    #[serde(default)]
    next_expected_ranges: Vec<String>,
}

impl std::fmt::Debug for WireUploadSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireUploadSession")
            .field("upload_url", &"<redacted>")
            .field("next_expected_ranges", &self.next_expected_ranges)
            .finish()
    }
}

impl GraphClient {
    /// Adds `attachment` to the draft: in one request, or through an upload session when
    /// it is larger than [`UPLOAD_SESSION_ABOVE`]. No request starts after `deadline()`
    /// (read before each: the send's lease may be renewed meanwhile).
    pub async fn attach(
        &self,
        mailbox: &EmailAddress,
        draft_id: &str,
        attachment: &Attachment,
        deadline: &(dyn Fn() -> Instant + Sync),
    ) -> Result<(), GraphError> {
        if attachment.bytes.len() <= UPLOAD_SESSION_ABOVE {
            self.add_attachment(mailbox, draft_id, attachment, deadline)
                .await
        } else {
            self.upload_attachment(mailbox, draft_id, attachment, deadline)
                .await
        }
    }

    /// Deletes a draft for good (`permanentDelete`): a draft an earlier send left,
    /// perhaps half built. One that is gone already counts as deleted.
    pub async fn delete_draft(
        &self,
        mailbox: &EmailAddress,
        draft_id: &str,
        deadline: Instant,
    ) -> Result<(), GraphError> {
        let url = self.mailbox_url(mailbox, &["messages", draft_id, "permanentDelete"]);
        match self
            .request_by(
                mailbox,
                "delete_draft",
                Method::POST,
                url,
                &crate::graph::client::RequestBody::Empty,
                MAX_JSON_BYTES,
                Some(deadline),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.status() == Some(404) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn add_attachment(
        &self,
        mailbox: &EmailAddress,
        draft_id: &str,
        attachment: &Attachment,
        deadline: &(dyn Fn() -> Instant + Sync),
    ) -> Result<(), GraphError> {
        let url = self.mailbox_url(mailbox, &["messages", draft_id, "attachments"]);
        let body = serde_json::json!({
            "@odata.type": "#microsoft.graph.fileAttachment",
            "name": attachment.name,
            "contentType": attachment.content_type,
            "contentBytes": base64::engine::general_purpose::STANDARD.encode(&attachment.bytes),
        });
        self.request_by(
            mailbox,
            "add_attachment",
            Method::POST,
            url,
            &crate::graph::client::RequestBody::Json(body),
            MAX_JSON_BYTES,
            Some(deadline()),
        )
        .await
        .map(drop)
    }

    async fn upload_attachment(
        &self,
        mailbox: &EmailAddress,
        draft_id: &str,
        attachment: &Attachment,
        deadline: &(dyn Fn() -> Instant + Sync),
    ) -> Result<(), GraphError> {
        let url = self.mailbox_url(
            mailbox,
            &["messages", draft_id, "attachments", "createUploadSession"],
        );
        let total = attachment.bytes.len();
        let body = serde_json::json!({
            "AttachmentItem": {
                "attachmentType": "file",
                "name": attachment.name,
                "size": total,
                "contentType": attachment.content_type,
            }
        });
        let (_, answer) = self
            .request_by(
                mailbox,
                "create_upload_session",
                Method::POST,
                url,
                &crate::graph::client::RequestBody::Json(body),
                MAX_JSON_BYTES,
                Some(deadline()),
            )
            .await?;
        let session: WireUploadSession =
            crate::graph::client::decode(mailbox, "create_upload_session", &answer)?;
        let upload_url = self.checked_upload_url(mailbox, &session.upload_url)?;
        let mut next = first_expected(&session.next_expected_ranges).unwrap_or(0);
        // Each PUT moves the upload forward, so a session ends within this many.
        let most = total.div_ceil(CHUNK_BYTES) + 2;
        for _ in 0..most {
            if next >= total {
                break;
            }
            let end = (next + CHUNK_BYTES).min(total);
            let range = Bytes::copy_from_slice(&attachment.bytes[next..end]);
            match self
                .put_range(mailbox, &upload_url, next, total, range, deadline)
                .await?
            {
                RangeAnswer::Finished => return Ok(()),
                RangeAnswer::Next(at) => {
                    if at <= next || at > total {
                        return Err(GraphError::UploadStalled {
                            mailbox: mailbox.to_string(),
                            message: format!(
                                "after bytes {next}-{} of {total} the session asked for {at}",
                                end - 1
                            ),
                        });
                    }
                    next = at;
                }
            }
        }
        Err(GraphError::UploadStalled {
            mailbox: mailbox.to_string(),
            message: format!(
                "all {total} bytes of {:?} were sent and the session did not finish the attachment",
                attachment.name
            ),
        })
    }

    /// The session's `uploadUrl`, when it is https on `base_url`'s host or one of
    /// `upload_hosts` (http only on `base_url`'s own origin, when that is loopback http).
    fn checked_upload_url(&self, mailbox: &EmailAddress, raw: &str) -> Result<Url, GraphError> {
        let origin = |u: &Url| {
            format!(
                "{}://{}",
                u.scheme(),
                u.host_str()
                    .unwrap_or("?")
                    .chars()
                    .take(100)
                    .collect::<String>()
            )
        };
        let url = Url::parse(raw).map_err(|_| GraphError::ForeignUploadUrl {
            mailbox: mailbox.to_string(),
            origin: "an unparsable URL".into(),
        })?;
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        let base_origin = url.scheme() == self.base.scheme()
            && url.host() == self.base.host()
            && url.port_or_known_default() == self.base.port_or_known_default();
        let upload_host = url.scheme() == "https" && self.upload_hosts.contains(&host);
        let https_base = base_origin && url.scheme() == "https";
        let loopback_base = base_origin && self.base.scheme() == "http";
        let plain = url.username().is_empty() && url.password().is_none();
        if plain && (upload_host || https_base || loopback_base) {
            Ok(url)
        } else {
            Err(GraphError::ForeignUploadUrl {
                mailbox: mailbox.to_string(),
                origin: origin(&url),
            })
        }
    }

    /// One `PUT` of bytes `start..start + range.len()` of `total` to the session: without
    /// the bearer token, through the mailbox's gate (a `429`/`503` holds the mailbox and
    /// the range goes again after its `Retry-After`).
    async fn put_range(
        &self,
        mailbox: &EmailAddress,
        url: &Url,
        start: usize,
        total: usize,
        range: Bytes,
        deadline: &(dyn Fn() -> Instant + Sync),
    ) -> Result<RangeAnswer, GraphError> {
        const OPERATION: &str = "upload_range";
        let who = || mailbox.to_string();
        let count = |outcome: &str| {
            metrics::GRAPH_REQUESTS
                .with_label_values(&[OPERATION, outcome])
                .inc();
        };
        let content_range = format!("bytes {start}-{}/{total}", start + range.len() - 1);
        let mut attempts = 0;
        let mut waited = std::time::Duration::ZERO;
        loop {
            attempts += 1;
            let admission = self.gates.admit(mailbox.as_str()).await;
            metrics::GRAPH_THROTTLED_WAIT.observe(admission.throttled_wait.as_secs_f64());
            waited += admission.throttled_wait;
            if Instant::now() >= deadline() {
                count("past_deadline");
                return Err(GraphError::PastDeadline {
                    operation: OPERATION,
                    mailbox: who(),
                    waited,
                });
            }
            let response = self
                .http
                .request(Method::PUT, url.clone())
                .header(reqwest::header::CONTENT_RANGE, &content_range)
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(range.clone())
                .send()
                .await
                .map_err(|e| {
                    count("transport");
                    transport(OPERATION, mailbox, e)
                })?;
            let status = response.status();
            if status.is_redirection() {
                count("redirected");
                return Err(GraphError::Redirected {
                    operation: OPERATION,
                    mailbox: who(),
                    status: status.as_u16(),
                    location: "(not shown: an upload session's redirect)".into(),
                });
            }
            if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE
            {
                count("throttled");
                let wait = admission.throttled(retry_after_of(&response));
                if attempts >= MAX_THROTTLED_ATTEMPTS {
                    return Err(GraphError::Throttled {
                        operation: OPERATION,
                        mailbox: who(),
                        attempts,
                        retry_after: wait,
                        maybe_processed: false,
                    });
                }
                continue;
            }
            let body =
                answer_body(response, OPERATION, mailbox, MAX_JSON_BYTES, "", &count).await?;
            admission.succeeded();
            count("ok");
            if status == StatusCode::CREATED {
                return Ok(RangeAnswer::Finished);
            }
            let progress: WireProgress = crate::graph::client::decode(mailbox, OPERATION, &body)?;
            return Ok(match first_expected(&progress.next_expected_ranges) {
                Some(at) => RangeAnswer::Next(at),
                // No range left to send, without a 201: the session took every byte.
                None => RangeAnswer::Finished,
            });
        }
    }
}

/// What the session answered a range.
enum RangeAnswer {
    /// `201`: the attachment is on the draft.
    Finished,
    /// `200`: send from this byte on.
    Next(usize),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireProgress {
    #[serde(default)]
    next_expected_ranges: Vec<String>,
}

/// The start of the first of `nextExpectedRanges` (`"N"` for Outlook attachments, `"N-"`
/// or `"N-M"` elsewhere).
fn first_expected(ranges: &[String]) -> Option<usize> {
    let first = ranges.first()?;
    first.split('-').next()?.trim().parse().ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn client(base_url: &str, loopback: bool) -> GraphClient {
        let mut settings = crate::settings::DeliverSettings::default();
        settings.graph.base_url = base_url.into();
        settings.graph.allow_loopback_http = loopback;
        GraphClient::from_settings(&settings).unwrap()
    }

    #[test]
    fn an_upload_url_is_used_only_over_https_on_the_graph_host_family() {
        let mailbox = EmailAddress::parse("m@contoso.example").unwrap();
        let c = client("https://graph.microsoft.com", false);
        let ok = |u: &str| c.checked_upload_url(&mailbox, u).is_ok();
        assert!(ok(
            "https://outlook.office.com/api/v2.0/Users('x')/Messages('y')/AttachmentSessions('z')?authtoken=SECRET"
        ));
        assert!(ok("https://OUTLOOK.office365.com/up?authtoken=SECRET"));
        assert!(ok("https://graph.microsoft.com/up?authtoken=SECRET"));
        for foreign in [
            "http://outlook.office.com/up?authtoken=SECRET",
            "https://outlook.office.com.evil.example/up?authtoken=SECRET",
            "https://evil.example/up?authtoken=SECRET",
            "https://user:pw@outlook.office.com/up?authtoken=SECRET",
            "not a url SECRET",
        ] {
            let e = c.checked_upload_url(&mailbox, foreign).unwrap_err();
            let text = e.to_string();
            assert!(text.contains("upload_hosts"), "{text}");
            // The query is a credential: never in the error.
            assert!(!text.contains("SECRET"), "{text}");
        }
        // A loopback simulator over http: its own origin only.
        let sim = client("http://127.0.0.1:4000", true);
        assert!(
            sim.checked_upload_url(&mailbox, "http://127.0.0.1:4000/upload/x?authtoken=s")
                .is_ok()
        );
        assert!(
            sim.checked_upload_url(&mailbox, "http://127.0.0.1:4001/upload/x?authtoken=s")
                .is_err()
        );
    }

    // Ranges are multiples of 320 KiB under 4 MB; a one-request attachment fits Graph's
    // cap as base64, with room for the JSON.
    const _: () = assert!(CHUNK_BYTES.is_multiple_of(320 * 1024));
    const _: () = assert!(CHUNK_BYTES <= 4 * 1024 * 1024);
    const _: () = assert!((UPLOAD_SESSION_ABOVE as u64).div_ceil(3) * 4 + 4096 < 4 * 1024 * 1024);

    #[test]
    fn the_next_range_is_read_in_each_of_its_forms() {
        let r = |s: &str| first_expected(&[s.to_owned()]);
        assert_eq!(r("3932160"), Some(3_932_160));
        assert_eq!(r("0-"), Some(0));
        assert_eq!(r("12-99"), Some(12));
        assert_eq!(first_expected(&[]), None);
        assert_eq!(r("x"), None);
    }

    #[test]
    fn an_upload_session_never_shows_its_url() {
        let s = WireUploadSession {
            upload_url: "https://outlook.office.com/api/x?authtoken=SECRET".into(),
            next_expected_ranges: vec!["0".into()],
        };
        assert!(!format!("{s:?}").contains("SECRET"));
    }
}
