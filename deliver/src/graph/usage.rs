//! How much a mailbox folder holds, and freeing it: Graph's `mailFolder` with
//! `totalItemCount` and `sizeInBytes`, read for Sent Items, which SMTP AUTH fills with a
//! copy of every message sent until the mailbox reaches its storage quota
//! (docs/microsoft365.md, "Sent Items fill the mailbox"); and `permanentDelete`, which
//! takes a message out of the mailbox's quota (a plain `DELETE` only moves it to Deleted
//! Items, which still counts). Apart from `client.rs` so the operations there stay the
//! reading ones.

use mailpipe_common::domain::EmailAddress;
use reqwest::Method;
use serde::Deserialize;

use crate::graph::client::{GraphClient, MAX_JSON_BYTES, decode};
use crate::graph::error::GraphError;
use crate::graph::types::FolderId;

/// A folder's item count and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FolderUsage {
    pub total_item_count: u64,
    /// `None` when Graph did not give `sizeInBytes` (older tenants' folders): the count is
    /// still good.
    pub size_in_bytes: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireUsage {
    #[serde(default)]
    total_item_count: Option<u64>,
    #[serde(default)]
    size_in_bytes: Option<u64>,
}

impl GraphClient {
    /// `GET /users/{mailbox}/mailFolders/{folder}?$select=totalItemCount,sizeInBytes`.
    pub async fn folder_usage(
        &self,
        mailbox: &EmailAddress,
        folder: &FolderId,
    ) -> Result<FolderUsage, GraphError> {
        let mut url = self.mailbox_url(mailbox, &["mailFolders", folder.as_str()]);
        url.query_pairs_mut()
            .append_pair("$select", "totalItemCount,sizeInBytes");
        let (_, bytes) = self
            .request(
                mailbox,
                "folder_usage",
                Method::GET,
                url,
                None,
                MAX_JSON_BYTES,
            )
            .await?;
        let wire: WireUsage = decode(mailbox, "folder_usage", &bytes)?;
        let total_item_count = wire.total_item_count.ok_or_else(|| GraphError::Malformed {
            operation: "folder_usage",
            mailbox: mailbox.to_string(),
            message: "the folder has no totalItemCount".into(),
        })?;
        Ok(FolderUsage {
            total_item_count,
            size_in_bytes: wire.size_in_bytes,
        })
    }
}

impl GraphClient {
    /// `POST /users/{mailbox}/messages/{id}/permanentDelete`: the message goes to the
    /// Recoverable Items purges (its own quota), out of the mailbox's storage quota.
    pub async fn permanent_delete(
        &self,
        mailbox: &EmailAddress,
        id: &str,
    ) -> Result<(), GraphError> {
        let url = self.mailbox_url(mailbox, &["messages", id, "permanentDelete"]);
        self.request(
            mailbox,
            "permanent_delete",
            Method::POST,
            url,
            None,
            MAX_JSON_BYTES,
        )
        .await?;
        Ok(())
    }
}
