//! `GraphClient`: the pool's mailboxes through Microsoft Graph v1.0 (list a folder, fetch a
//! message's MIME, move it, find or create a folder, look a Message-ID up in Sent Items).
//! Every request carries an app-only token of the mailbox's tenant (Graph scope, cached apart
//! from the SMTP token), passes the mailbox's throttling gate, follows no redirect, and has
//! its answer read with a size bound.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use mailpipe_common::config::ConfigError;
use mailpipe_common::domain::EmailAddress;
use reqwest::{Method, StatusCode, Url};
use secrecy::ExposeSecret;
use serde::de::DeserializeOwned;

use crate::auth::oauth::{ClientCredential, TokenSource};
use crate::auth::token_endpoint::{TokenEndpoint, parse_authority};
use crate::graph::body::read_bounded;
use crate::graph::error::GraphError;
use crate::graph::odata::string_literal;
use crate::graph::settings::GraphSettings;
use crate::graph::throttling::{MailboxGates, parse_retry_after};
use crate::graph::types::{
    FolderId, MessageSummary, NextPage, Order, Page, WireError, WireFolder, WireList, WireMessage,
};
use crate::metrics;
use crate::settings::{AuthMethod, DeliverSettings, OAuthApp};

/// Bound of a list page or any JSON answer.
pub const MAX_JSON_BYTES: u64 = 1024 * 1024;
/// Attempts a request gets while throttled (each waits for its `Retry-After`).
pub const MAX_THROTTLED_ATTEMPTS: u32 = 5;
/// The properties a listing asks for.
const SELECT: &str = "id,internetMessageId,subject,receivedDateTime,from";
/// The `operation` label values of `mailpipe_deliver_graph_requests_total`.
pub const OPERATIONS: [&str; 15] = [
    "list_messages",
    "message_mime",
    "move_message",
    "find_folder",
    "create_folder",
    "find_sent",
    "find_draft",
    "create_draft",
    "send_draft",
    "add_attachment",
    "create_upload_session",
    "upload_range",
    "delete_draft",
    "folder_usage",
    "permanent_delete",
];
/// Largest `$top` Graph takes for messages.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// What a request carries.
#[derive(Debug)]
pub(crate) enum RequestBody {
    Empty,
    Json(serde_json::Value),
    /// `Content-Type: text/plain` (a MIME message as base64, for Graph's MIME drafts).
    Text(Bytes),
}

/// How a pool mailbox is reached through Graph, or why it is not.
#[derive(Debug)]
enum Route {
    Graph(Arc<TokenSource>),
    NoGraph(String),
}

#[derive(Debug)]
pub struct GraphClient {
    /// `base_url` with a trailing `/`.
    pub(super) base: Url,
    pub(super) http: reqwest::Client,
    max_message_bytes: u64,
    /// `deliver.graph.max_send_bytes`.
    pub(super) max_send_bytes: u64,
    /// `deliver.graph.upload_hosts`, lower case.
    pub(super) upload_hosts: Vec<String>,
    routes: HashMap<String, Route>,
    pub(super) gates: MailboxGates,
}

impl GraphClient {
    /// Builds the client for the pool in `settings` (validated): one Graph token source per
    /// tenant with an app registration, the same app with `deliver.graph.scope`. Whether
    /// Graph is `enabled` is the caller's decision.
    pub fn from_settings(settings: &DeliverSettings) -> Result<Self, ConfigError> {
        let graph = &settings.graph;
        let extra_ca = match &settings.extra_ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                ConfigError::invalid("deliver.extra_ca_file", format!("{}: {e}", path.display()))
            })?),
            None => None,
        };
        let token_http =
            crate::auth::oauth::token_http_client(extra_ca.as_deref()).map_err(|e| {
                ConfigError::invalid("deliver.extra_ca_file", e.without_url().to_string())
            })?;
        let mut tokens: HashMap<&str, Arc<TokenSource>> = HashMap::new();
        for (i, t) in settings.tenants.iter().enumerate() {
            if let Some(app) = &t.oauth {
                let key = format!("deliver.tenants[{i}].oauth");
                let graph_app = OAuthApp {
                    scope: graph.scope.clone(),
                    ..app.clone()
                };
                tokens.insert(
                    t.id.as_str(),
                    Arc::new(TokenSource::new(
                        &graph_app,
                        TokenEndpoint::new(&graph_app, &key)?,
                        ClientCredential::from_settings(&graph_app, &key)?,
                        token_http.clone(),
                    )),
                );
            }
        }
        let mut routes = HashMap::new();
        for m in &settings.mailboxes {
            let route = match (m.auth, tokens.get(m.tenant.as_str())) {
                (AuthMethod::Password, _) => Route::NoGraph(
                    "it signs in with a password (auth = \"password\"); Graph needs the tenant's app registration and auth = \"oauth2\"".into(),
                ),
                (_, None) => Route::NoGraph(format!(
                    "tenant {:?} has no app registration (deliver.tenants.oauth)",
                    m.tenant
                )),
                (_, Some(source)) => Route::Graph(Arc::clone(source)),
            };
            routes.insert(m.address.as_str().to_ascii_lowercase(), route);
        }
        Self::new(graph, routes, extra_ca.as_deref())
    }

    fn new(
        graph: &GraphSettings,
        routes: HashMap<String, Route>,
        extra_ca: Option<&[u8]>,
    ) -> Result<Self, ConfigError> {
        let base = parse_authority(&graph.base_url, graph.allow_loopback_http)
            .map_err(|m| ConfigError::invalid("deliver.graph.base_url", m))?;
        let mut http = reqwest::Client::builder()
            .timeout(graph.request_timeout())
            .connect_timeout(graph.connect_timeout())
            // A redirect could take the bearer token to another host: answered as an error.
            .redirect(reqwest::redirect::Policy::none())
            .min_tls_version(reqwest::tls::Version::TLS_1_2)
            // base_url is https, or http to loopback on explicit opt-in (checked above).
            .https_only(false);
        if let Some(pem) = extra_ca {
            let cert = reqwest::Certificate::from_pem(pem).map_err(|e| {
                ConfigError::invalid("deliver.extra_ca_file", e.without_url().to_string())
            })?;
            http = http.add_root_certificate(cert);
        }
        let http = http
            .build()
            .map_err(|e| ConfigError::invalid("deliver.graph", e.without_url().to_string()))?;
        Ok(Self {
            base,
            http,
            max_message_bytes: graph.max_message_bytes,
            max_send_bytes: graph.max_send_bytes,
            upload_hosts: graph
                .upload_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            routes,
            gates: MailboxGates::new(
                graph.max_concurrent_per_mailbox,
                graph.max_concurrent_requests,
            ),
        })
    }

    /// `deliver.graph.max_send_bytes`: the largest message sent through Graph.
    pub fn max_send_bytes(&self) -> u64 {
        self.max_send_bytes
    }

    /// Whether `mailbox` can be read through Graph; `Err` says why not.
    pub fn check_mailbox(&self, mailbox: &EmailAddress) -> Result<(), GraphError> {
        self.tokens_for(mailbox).map(drop)
    }

    /// One page of `folder` (`$top` = `page_size`, 1 to 1000), with the summary properties.
    pub async fn list_messages(
        &self,
        mailbox: &EmailAddress,
        folder: &FolderId,
        order: Order,
        page_size: u32,
    ) -> Result<Page, GraphError> {
        let mut url = self.mailbox_url(mailbox, &["mailFolders", folder.as_str(), "messages"]);
        url.query_pairs_mut()
            .append_pair("$select", SELECT)
            .append_pair("$top", &page_size.clamp(1, MAX_PAGE_SIZE).to_string())
            .append_pair(
                "$orderby",
                match order {
                    Order::OldestFirst => "receivedDateTime asc",
                    Order::NewestFirst => "receivedDateTime desc",
                },
            );
        self.list_at(mailbox, "list_messages", url).await
    }

    /// The page after `next`.
    pub async fn next_page(
        &self,
        mailbox: &EmailAddress,
        next: &NextPage,
    ) -> Result<Page, GraphError> {
        self.list_at(mailbox, "list_messages", next.0.clone()).await
    }

    /// Up to `max` messages of `folder`, following `@odata.nextLink` page by page.
    pub async fn list_all(
        &self,
        mailbox: &EmailAddress,
        folder: &FolderId,
        order: Order,
        max: usize,
    ) -> Result<Vec<MessageSummary>, GraphError> {
        let page_size = u32::try_from(max.clamp(1, 100)).unwrap_or(100);
        let mut page = self
            .list_messages(mailbox, folder, order, page_size)
            .await?;
        let mut out = Vec::new();
        loop {
            out.extend(page.messages);
            if out.len() >= max {
                out.truncate(max);
                return Ok(out);
            }
            match page.next {
                Some(next) => page = self.next_page(mailbox, &next).await?,
                None => return Ok(out),
            }
        }
    }

    /// The message's MIME (`$value`), refused beyond `deliver.graph.max_message_bytes`.
    pub async fn message_mime(
        &self,
        mailbox: &EmailAddress,
        id: &str,
    ) -> Result<Bytes, GraphError> {
        let url = self.mailbox_url(mailbox, &["messages", id, "$value"]);
        self.request(
            mailbox,
            "message_mime",
            Method::GET,
            url,
            None,
            self.max_message_bytes,
        )
        .await
        .map(|(_, body)| body)
    }

    /// Moves a message to `folder`; returns its new id (Exchange gives a moved message one).
    pub async fn move_message(
        &self,
        mailbox: &EmailAddress,
        id: &str,
        folder: &FolderId,
    ) -> Result<String, GraphError> {
        let url = self.mailbox_url(mailbox, &["messages", id, "move"]);
        let body = serde_json::json!({ "destinationId": folder.as_str() });
        let (_, bytes) = self
            .request(
                mailbox,
                "move_message",
                Method::POST,
                url,
                Some(body),
                MAX_JSON_BYTES,
            )
            .await?;
        let moved: WireMessage = decode(mailbox, "move_message", &bytes)?;
        Ok(moved.id)
    }

    /// The id of the top-level folder named `display_name`, created when missing (a
    /// concurrent creator's `409 ErrorFolderExists` is read as "found").
    pub async fn ensure_folder(
        &self,
        mailbox: &EmailAddress,
        display_name: &str,
    ) -> Result<FolderId, GraphError> {
        if let Some(id) = self.find_folder(mailbox, display_name).await? {
            return Ok(id);
        }
        let url = self.mailbox_url(mailbox, &["mailFolders"]);
        let body = serde_json::json!({ "displayName": display_name });
        match self
            .request(
                mailbox,
                "create_folder",
                Method::POST,
                url,
                Some(body),
                MAX_JSON_BYTES,
            )
            .await
        {
            Ok((_, bytes)) => {
                let folder: WireFolder = decode(mailbox, "create_folder", &bytes)?;
                Ok(FolderId(folder.id))
            }
            Err(e) if e.status() == Some(409) => {
                self.find_folder(mailbox, display_name).await?.ok_or(e)
            }
            Err(e) => Err(e),
        }
    }

    /// The message with this Message-ID in the mailbox's Sent Items, if Exchange filed it
    /// there (it does when it accepts a submission).
    pub async fn find_sent(
        &self,
        mailbox: &EmailAddress,
        internet_message_id: &str,
    ) -> Result<Option<MessageSummary>, GraphError> {
        self.find_by_message_id(
            mailbox,
            "sentitems",
            SELECT,
            "find_sent",
            internet_message_id,
        )
        .await
    }

    /// The first message of `folder` (a well-known name) with this Message-ID.
    pub(crate) async fn find_by_message_id(
        &self,
        mailbox: &EmailAddress,
        folder: &str,
        select: &str,
        operation: &'static str,
        internet_message_id: &str,
    ) -> Result<Option<MessageSummary>, GraphError> {
        let mut url = self.mailbox_url(mailbox, &["mailFolders", folder, "messages"]);
        url.query_pairs_mut()
            .append_pair("$select", select)
            .append_pair("$top", "1")
            .append_pair(
                "$filter",
                &format!(
                    "internetMessageId eq {}",
                    string_literal(internet_message_id)
                ),
            );
        let page = self.list_at(mailbox, operation, url).await?;
        Ok(page.messages.into_iter().next())
    }

    async fn find_folder(
        &self,
        mailbox: &EmailAddress,
        display_name: &str,
    ) -> Result<Option<FolderId>, GraphError> {
        let mut url = self.mailbox_url(mailbox, &["mailFolders"]);
        url.query_pairs_mut().append_pair(
            "$filter",
            &format!("displayName eq {}", string_literal(display_name)),
        );
        let (_, bytes) = self
            .request(
                mailbox,
                "find_folder",
                Method::GET,
                url,
                None,
                MAX_JSON_BYTES,
            )
            .await?;
        let list: WireList<WireFolder> = decode(mailbox, "find_folder", &bytes)?;
        Ok(list
            .value
            .into_iter()
            .find(|f| f.display_name.eq_ignore_ascii_case(display_name))
            .map(|f| FolderId(f.id)))
    }

    pub(crate) async fn list_at(
        &self,
        mailbox: &EmailAddress,
        operation: &'static str,
        url: Url,
    ) -> Result<Page, GraphError> {
        let (_, bytes) = self
            .request(mailbox, operation, Method::GET, url, None, MAX_JSON_BYTES)
            .await?;
        let list: WireList<WireMessage> = decode(mailbox, operation, &bytes)?;
        let next = match list.next_link {
            None => None,
            Some(link) => Some(NextPage(self.checked_link(mailbox, &link)?)),
        };
        Ok(Page {
            messages: list.value.into_iter().map(MessageSummary::from).collect(),
            next,
        })
    }

    /// A nextLink is followed only when it points under `base_url` (same scheme, host,
    /// port): the bearer token goes with it.
    fn checked_link(&self, mailbox: &EmailAddress, link: &str) -> Result<Url, GraphError> {
        let foreign = || GraphError::ForeignLink {
            mailbox: mailbox.to_string(),
            url: link.chars().take(200).collect(),
        };
        let url = Url::parse(link).map_err(|_| foreign())?;
        let same_origin = url.scheme() == self.base.scheme()
            && url.host() == self.base.host()
            && url.port_or_known_default() == self.base.port_or_known_default()
            && url.username().is_empty()
            && url.password().is_none()
            && url.path().starts_with(self.base.path());
        if same_origin { Ok(url) } else { Err(foreign()) }
    }

    /// `{base}/v1.0/users/{mailbox}/{segments…}`, each segment percent-encoded (an id
    /// cannot add path segments or a query).
    pub(crate) fn mailbox_url(&self, mailbox: &EmailAddress, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty()
                .extend(["v1.0", "users", mailbox.as_str()])
                .extend(segments);
        }
        url
    }

    pub(super) fn tokens_for(
        &self,
        mailbox: &EmailAddress,
    ) -> Result<&Arc<TokenSource>, GraphError> {
        match self.routes.get(&mailbox.as_str().to_ascii_lowercase()) {
            Some(Route::Graph(t)) => Ok(t),
            Some(Route::NoGraph(reason)) => Err(GraphError::NoGraph {
                mailbox: mailbox.to_string(),
                reason: reason.clone(),
            }),
            None => Err(GraphError::NoGraph {
                mailbox: mailbox.to_string(),
                reason: "it is not a mailbox of the pool (deliver.mailboxes)".into(),
            }),
        }
    }

    /// One Graph call through the mailbox's gate: retried while throttled (each retry after
    /// the `Retry-After`), once after a `401` with a fresh token. Returns the status and the
    /// body of a 2xx answer, read up to `limit` bytes.
    pub(super) async fn request(
        &self,
        mailbox: &EmailAddress,
        operation: &'static str,
        method: Method,
        url: Url,
        json: Option<serde_json::Value>,
        limit: u64,
    ) -> Result<(StatusCode, Bytes), GraphError> {
        let body = json.map_or(RequestBody::Empty, RequestBody::Json);
        self.request_with(mailbox, operation, method, url, &body, limit)
            .await
    }

    /// `request` with any body (the send side posts MIME as base64 text).
    pub(crate) async fn request_with(
        &self,
        mailbox: &EmailAddress,
        operation: &'static str,
        method: Method,
        url: Url,
        body: &RequestBody,
        limit: u64,
    ) -> Result<(StatusCode, Bytes), GraphError> {
        self.request_by(mailbox, operation, method, url, body, limit, None)
            .await
    }

    /// `request_with`, not sent at all once `deadline` has passed (a wait for the mailbox's
    /// gate or its `Retry-After` may run past it): `GraphError::PastDeadline`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn request_by(
        &self,
        mailbox: &EmailAddress,
        operation: &'static str,
        method: Method,
        url: Url,
        body: &RequestBody,
        limit: u64,
        deadline: Option<Instant>,
    ) -> Result<(StatusCode, Bytes), GraphError> {
        let tokens = self.tokens_for(mailbox)?;
        let who = || mailbox.to_string();
        let count = |outcome: &str| {
            metrics::GRAPH_REQUESTS
                .with_label_values(&[operation, outcome])
                .inc();
        };
        let mut refreshed = false;
        let mut attempts = 0;
        let mut maybe_processed = false;
        let mut waited = std::time::Duration::ZERO;
        loop {
            attempts += 1;
            let admission = self.gates.admit(mailbox.as_str()).await;
            metrics::GRAPH_THROTTLED_WAIT.observe(admission.throttled_wait.as_secs_f64());
            waited += admission.throttled_wait;
            if deadline.is_some_and(|d| Instant::now() >= d) {
                count("past_deadline");
                return Err(GraphError::PastDeadline {
                    operation,
                    mailbox: who(),
                    waited,
                });
            }
            let started = Instant::now();
            let token = tokens
                .token_since(started)
                .await
                .map_err(|source| GraphError::Token {
                    mailbox: who(),
                    source: Box::new(source),
                })?;
            let (token, fresh) = token;
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .bearer_auth(token.expose_secret());
            request = match body {
                RequestBody::Empty => request,
                RequestBody::Json(json) => request.json(json),
                RequestBody::Text(text) => request
                    .header(reqwest::header::CONTENT_TYPE, "text/plain")
                    .body(text.clone()),
            };
            let response = request.send().await.map_err(|e| {
                count("transport");
                transport(operation, mailbox, e)
            })?;
            let status = response.status();
            if status.is_redirection() {
                count("redirected");
                return Err(GraphError::Redirected {
                    operation,
                    mailbox: who(),
                    status: status.as_u16(),
                    location: crate::auth::oauth::redirect_location(&response),
                });
            }
            if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE
            {
                count("throttled");
                maybe_processed |= status == StatusCode::SERVICE_UNAVAILABLE;
                let wait = admission.throttled(retry_after_of(&response));
                tracing::info!(%mailbox, operation, status = status.as_u16(), wait_ms = wait.as_millis() as u64, "Graph throttled the mailbox; waiting");
                if attempts >= MAX_THROTTLED_ATTEMPTS {
                    return Err(GraphError::Throttled {
                        operation,
                        mailbox: who(),
                        attempts,
                        retry_after: wait,
                        maybe_processed,
                    });
                }
                continue;
            }
            if status == StatusCode::UNAUTHORIZED && !refreshed && !fresh {
                // A cached token the server no longer takes: one more try with a new one.
                count("unauthorized");
                tokens.invalidate(&token).await;
                refreshed = true;
                continue;
            }
            let hint = if operation == "message_mime" {
                " (deliver.graph.max_message_bytes)"
            } else {
                ""
            };
            let body = answer_body(response, operation, mailbox, limit, hint, &count).await?;
            admission.succeeded();
            count("ok");
            return Ok((status, body));
        }
    }
}

/// The `Retry-After` of a throttling answer, when it carries a usable one.
pub(super) fn retry_after_of(response: &reqwest::Response) -> Option<std::time::Duration> {
    response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, chrono::Utc::now()))
}

/// The body of an answer that is neither a redirect nor throttling, read up to `limit`
/// bytes (`hint` names the setting behind the limit); a failure status becomes
/// [`GraphError::Api`] with Graph's error code. `count` records the request's outcome.
pub(super) async fn answer_body(
    response: reqwest::Response,
    operation: &'static str,
    mailbox: &EmailAddress,
    limit: u64,
    hint: &'static str,
    count: &(dyn Fn(&str) + Sync),
) -> Result<bytes::Bytes, GraphError> {
    let status = response.status();
    let body = match read_bounded(response, limit).await {
        Ok(Ok(body)) => body,
        Ok(Err(())) => {
            count("too_large");
            return Err(GraphError::TooLarge {
                operation,
                mailbox: mailbox.to_string(),
                limit,
                hint,
            });
        }
        Err(e) => {
            count("transport");
            return Err(transport(operation, mailbox, e));
        }
    };
    if !status.is_success() {
        count(match status.as_u16() {
            401 => "unauthorized",
            404 => "not_found",
            409 => "conflict",
            400..=499 => "client_error",
            _ => "server_error",
        });
        let err: WireError = serde_json::from_slice(&body).unwrap_or_default();
        return Err(GraphError::Api {
            operation,
            mailbox: mailbox.to_string(),
            status: status.as_u16(),
            code: err.error.code,
            message: err.error.message.chars().take(500).collect(),
        });
    }
    Ok(body)
}

pub(super) fn transport(
    operation: &'static str,
    mailbox: &EmailAddress,
    e: reqwest::Error,
) -> GraphError {
    let kind = if e.is_timeout() {
        "timed out: "
    } else if e.is_connect() {
        "cannot connect: "
    } else {
        ""
    };
    GraphError::Transport {
        operation,
        mailbox: mailbox.to_string(),
        // The URL holds the mailbox and ids, never the token; keep the message short anyway.
        message: format!("{kind}{}", e.without_url()),
    }
}

pub(crate) fn decode<T: DeserializeOwned>(
    mailbox: &EmailAddress,
    operation: &'static str,
    bytes: &[u8],
) -> Result<T, GraphError> {
    serde_json::from_slice(bytes).map_err(|e| GraphError::Malformed {
        operation,
        mailbox: mailbox.to_string(),
        message: e.to_string(),
    })
}
