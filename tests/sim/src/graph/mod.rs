//! Microsoft Graph v1.0, the part a mail client of the pool's mailboxes needs: list a
//! folder's messages (OData `$filter`, `$orderby`, `$top`, `$select`, paging by
//! `@odata.nextLink`), a message's MIME (`$value`), move, delete (`DELETE`,
//! `permanentDelete`), find-or-create a folder, a folder's count and size
//! (`totalItemCount`, `sizeInBytes`), and send (a draft from MIME, attachments added to it
//! in one request or through an upload session, then the draft sent), with Graph's
//! authentication, access policy and throttling answers (docs/simulator.md).

mod activity;
mod attach_mime;
mod attachments;
mod call;
mod folders;
mod messages;
mod odata;
mod sending;

pub(crate) use activity::GraphActivity;
pub use activity::{GraphMailboxStats, GraphRequest, ThrottleReply};
pub(crate) use attachments::UploadSessions;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};

use crate::state::Shared;

pub(crate) fn router() -> Router<Arc<Shared>> {
    Router::new()
        .route(
            "/v1.0/users/{upn}/mailFolders/{folder}/messages",
            get(messages::list),
        )
        .route(
            "/v1.0/users/{upn}/mailFolders/{folder}",
            get(folders::get_one),
        )
        .route(
            "/v1.0/users/{upn}/messages/{id}",
            axum::routing::delete(messages::delete),
        )
        .route(
            "/v1.0/users/{upn}/messages/{id}/permanentDelete",
            post(messages::delete),
        )
        .route(
            "/v1.0/users/{upn}/messages/{id}/$value",
            get(messages::mime),
        )
        .route(
            "/v1.0/users/{upn}/messages/{id}/move",
            post(messages::move_to),
        )
        // Graph's own cap (4 MB) answers larger drafts, not axum's default of 2 MB.
        .route(
            "/v1.0/users/{upn}/messages",
            post(sending::create_draft).layer(axum::extract::DefaultBodyLimit::max(
                sending::MAX_REQUEST_BYTES * 2,
            )),
        )
        .route(
            "/v1.0/users/{upn}/messages/{id}/send",
            post(sending::send_draft),
        )
        .route(
            "/v1.0/users/{upn}/messages/{id}/attachments",
            post(attachments::add).layer(DefaultBodyLimit::max(sending::MAX_REQUEST_BYTES * 2)),
        )
        .route(
            "/v1.0/users/{upn}/messages/{id}/attachments/createUploadSession",
            post(attachments::create_session),
        )
        // Not under /v1.0: the session's own pre-authenticated URL (Outlook's host in
        // Exchange).
        .route(
            "/upload/AttachmentSessions/{session}",
            put(attachments::put_range)
                .layer(DefaultBodyLimit::max(attachments::MAX_RANGE_BYTES * 2)),
        )
        .route(
            "/v1.0/users/{upn}/mailFolders",
            get(folders::list).post(folders::create),
        )
}
