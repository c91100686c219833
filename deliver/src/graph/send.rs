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
use crate::graph::types::{MessageSummary, WireMessage};

/// Graph refuses a request body above about 4 MB; the draft's MIME travels as base64.
pub const MAX_REQUEST_BYTES: u64 = 4 * 1024 * 1024;

/// Bytes a message of `mime_len` bytes takes as base64.
pub fn base64_len(mime_len: usize) -> u64 {
    (mime_len as u64).div_ceil(3) * 4
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
mod tests {
    use super::*;

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
