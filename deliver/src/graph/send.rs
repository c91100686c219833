//! The send side of Microsoft Graph, for mailboxes with `transport = "graph"`: a draft
//! created from our MIME (`POST /users/{id}/messages`, the MIME as base64 with
//! `Content-Type: text/plain`), then that draft sent (`POST /users/{id}/messages/{id}/send`).
//! Two steps, not `sendMail`, because `sendMail` has no idempotency: a retry after a lost
//! answer may send twice. A draft can be sent once (Exchange moves it out of Drafts), and it
//! carries our Message-ID, so Drafts and Sent Items tell what became of a send whose answer
//! was lost (docs/deliver.md, "The Graph transport").

use std::time::Instant;

use base64::Engine as _;
use bytes::Bytes;
use mailpipe_common::domain::EmailAddress;
use reqwest::Method;

use crate::graph::client::{GraphClient, MAX_JSON_BYTES, RequestBody, decode};
use crate::graph::error::GraphError;
use crate::graph::split_attachments::{Split, split_attachments};
use crate::graph::types::{MessageSummary, WireMessage};

/// Graph refuses a request body above about 4 MB; the draft's MIME travels as base64.
pub const MAX_REQUEST_BYTES: u64 = 4 * 1024 * 1024;

/// Bytes a message of `mime_len` bytes takes as base64.
pub fn base64_len(mime_len: usize) -> u64 {
    (mime_len as u64).div_ceil(3) * 4
}

/// How a message becomes a draft.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DraftPlan {
    /// The whole MIME in one request.
    Whole(Vec<u8>),
    /// Too large for one request: a draft without the attachments, then each attachment
    /// added to it (`graph::upload`).
    Split(Split),
}

/// The plan for `mime` (the draft's MIME, as sent), or why it cannot go through Graph at
/// all: above `max_send_bytes` (Exchange's message size limit), or above Graph's
/// single-request limit without attachments to take out.
pub fn plan_draft(mime: Vec<u8>, max_send_bytes: u64) -> Result<DraftPlan, String> {
    let size = mime.len() as u64;
    if size > max_send_bytes {
        return Err(format!(
            "the message is {size} bytes, above the message size limit of {max_send_bytes} bytes for Graph mailboxes (deliver.graph.max_send_bytes, Exchange Online's limit: 35 MB unless the mailbox's MaxSendSize was raised)"
        ));
    }
    let encoded = base64_len(mime.len());
    if encoded <= MAX_REQUEST_BYTES {
        return Ok(DraftPlan::Whole(mime));
    }
    let Some(split) = split_attachments(&mime) else {
        return Err(format!(
            "the message is {encoded} bytes as base64, above Microsoft Graph's single-request limit of {MAX_REQUEST_BYTES} bytes, and has no attachments to upload apart (only attachments go through upload sessions): make the body smaller, or send it through a mailbox with transport = \"smtp\""
        ));
    };
    let draft = base64_len(split.draft.len());
    if draft > MAX_REQUEST_BYTES {
        return Err(format!(
            "without its {} attachment(s) the message is still {draft} bytes as base64, above Microsoft Graph's single-request limit of {MAX_REQUEST_BYTES} bytes (only attachments go through upload sessions): make the body smaller, or send it through a mailbox with transport = \"smtp\"",
            split.attachments.len()
        ));
    }
    Ok(DraftPlan::Split(split))
}

impl GraphClient {
    /// A draft of this Message-ID still in the mailbox's Drafts (an earlier send created
    /// it and did not send it): sent instead of a new one.
    pub async fn find_draft(
        &self,
        mailbox: &EmailAddress,
        internet_message_id: &str,
    ) -> Result<Option<MessageSummary>, GraphError> {
        self.find_by_message_id(
            mailbox,
            "drafts",
            "id,internetMessageId",
            "find_draft",
            internet_message_id,
        )
        .await
    }

    /// Creates a draft from `mime` (its headers give the recipients and the Message-ID);
    /// returns the draft's id. Not sent before `deadline`: `GraphError::PastDeadline`.
    pub async fn create_draft(
        &self,
        mailbox: &EmailAddress,
        mime: &[u8],
        deadline: Instant,
    ) -> Result<String, GraphError> {
        let url = self.mailbox_url(mailbox, &["messages"]);
        let body = RequestBody::Text(Bytes::from(
            base64::engine::general_purpose::STANDARD.encode(mime),
        ));
        let (_, bytes) = self
            .request_by(
                mailbox,
                "create_draft",
                Method::POST,
                url,
                &body,
                MAX_JSON_BYTES,
                Some(deadline),
            )
            .await?;
        let draft: WireMessage = decode(mailbox, "create_draft", &bytes)?;
        Ok(draft.id)
    }

    /// Sends the draft (`202`: Exchange took it for submission). Not sent at all once
    /// `deadline` has passed.
    pub async fn send_draft(
        &self,
        mailbox: &EmailAddress,
        draft_id: &str,
        deadline: Instant,
    ) -> Result<(), GraphError> {
        let url = self.mailbox_url(mailbox, &["messages", draft_id, "send"]);
        self.request_by(
            mailbox,
            "send_draft",
            Method::POST,
            url,
            &RequestBody::Empty,
            MAX_JSON_BYTES,
            Some(deadline),
        )
        .await
        .map(drop)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn with_attachment(len: usize) -> Vec<u8> {
        mail_builder::MessageBuilder::new()
            .from("a@contoso.example")
            .to("b@fabrikam.example")
            .subject("s")
            .text_body("Hello.")
            .attachment("application/pdf", "a.pdf", vec![7u8; len])
            .write_to_vec()
            .unwrap()
    }

    #[test]
    fn a_draft_is_whole_split_or_refused_with_the_reason() {
        let max = 35 * 1024 * 1024;
        assert!(matches!(
            plan_draft(with_attachment(1_000), max),
            Ok(DraftPlan::Whole(_))
        ));
        match plan_draft(with_attachment(10_000_000), max) {
            Ok(DraftPlan::Split(split)) => {
                assert_eq!(split.attachments[0].bytes.len(), 10_000_000);
            }
            other => panic!("{other:?}"),
        }
        let over = plan_draft(with_attachment(10_000_000), 5_000_000).unwrap_err();
        assert!(over.contains("deliver.graph.max_send_bytes"), "{over}");
        let mut body = b"Subject: s\r\n\r\n".to_vec();
        body.extend(std::iter::repeat_n(b'x', 3_200_000));
        let text = plan_draft(body, max).unwrap_err();
        assert!(text.contains("single-request limit"), "{text}");
    }

    #[test]
    fn base64_is_four_bytes_per_three() {
        assert_eq!(base64_len(0), 0);
        assert_eq!(base64_len(1), 4);
        assert_eq!(base64_len(3), 4);
        assert_eq!(base64_len(4), 8);
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .encode([0u8; 1000])
                .len() as u64,
            base64_len(1000)
        );
    }
}
