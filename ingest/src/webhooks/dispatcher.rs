//! The dispatcher: a task of `serve` that moves the outbox along. Each round it expires
//! what is past its age, sweeps batches for completion, fans new events out to their
//! endpoints, and takes the due deliveries its free slots allow (bounded overall and per
//! endpoint), each call in its own task. It runs in ingest, never in deliver: a dead or
//! slow receiver costs a slot here and nothing on the sending path.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use mailpipe_common::store::{
    AfterAttempt, AttemptOutcome, DueDelivery, OutboxEvent, Route, Store,
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::address_guard::{GuardedResolver, Lookup, SystemLookup};
use super::backoff::retry_delay;
use super::sender::{Call, CallResult, Sender};
use super::settings::{CALLBACK, Webhooks};
use crate::metrics;

/// Events fanned out, batches swept, per statement.
const BATCH: i64 = 500;
/// How often the backlog gauges are refreshed.
const BACKLOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Dispatcher {
    store: Store,
    webhooks: Arc<Webhooks>,
    /// Calls to configured endpoints.
    sender: Sender,
    /// Calls to batches' callback URLs: checked addresses only.
    callbacks: Sender,
    /// Calls in flight, per endpoint.
    busy: Arc<Mutex<HashMap<String, usize>>>,
}

impl Dispatcher {
    pub fn new(store: Store, webhooks: Webhooks) -> reqwest::Result<Self> {
        Self::with_lookup(store, webhooks, Arc::new(SystemLookup))
    }

    /// A dispatcher whose callback calls resolve names with `lookup` (tests play a
    /// rebinding DNS server with it).
    pub fn with_lookup(
        store: Store,
        webhooks: Webhooks,
        lookup: Arc<dyn Lookup>,
    ) -> reqwest::Result<Self> {
        let s = &webhooks.settings;
        let (connect, request) = (
            Duration::from_millis(s.connect_timeout_ms),
            Duration::from_millis(s.request_timeout_ms),
        );
        let resolver = GuardedResolver {
            lookup,
            policy: webhooks.policy.addresses(),
        };
        Ok(Self {
            sender: Sender::new(connect, request)?,
            callbacks: Sender::guarded(connect, request, resolver)?,
            store,
            webhooks: Arc::new(webhooks),
            busy: Arc::default(),
        })
    }

    /// Runs until shutdown, once `ready` (the schema is current); then lets the calls in
    /// flight finish (each is bounded by the request timeout).
    pub async fn run(self, ready: Arc<AtomicBool>, shutdown: CancellationToken) {
        let poll = Duration::from_millis(self.webhooks.settings.poll_ms);
        let mut calls = JoinSet::new();
        let mut backlog_at = tokio::time::Instant::now();
        loop {
            while calls.try_join_next().is_some() {}
            let busy = if ready.load(Ordering::SeqCst) {
                match self.round(&mut calls).await {
                    Ok(busy) => busy,
                    Err(e) => {
                        tracing::warn!(error = %e, "webhook outbox: trying again shortly");
                        false
                    }
                }
            } else {
                false
            };
            if ready.load(Ordering::SeqCst) && backlog_at.elapsed() >= BACKLOG_EVERY {
                backlog_at = tokio::time::Instant::now();
                if let Ok((pending, oldest)) = self.store.webhook_backlog().await {
                    metrics::WEBHOOK_PENDING.set(pending);
                    metrics::WEBHOOK_OLDEST_PENDING.set(oldest);
                }
            }
            let pause = if busy {
                Duration::from_millis(20)
            } else {
                poll
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(pause) => {}
            }
        }
        while calls.join_next().await.is_some() {}
    }

    /// One round; `true` when there may be more to do at once.
    async fn round(
        &self,
        calls: &mut JoinSet<()>,
    ) -> Result<bool, mailpipe_common::store::StoreError> {
        for endpoint in self.store.expire_webhooks().await? {
            tracing::warn!(
                endpoint,
                "a webhook expired undelivered (ingest.webhooks.max_age)"
            );
            metrics::WEBHOOK_DELIVERIES
                .with_label_values(&[metrics::webhook_kind(&endpoint), "expired"])
                .inc();
        }
        let swept = self.store.sweep_completed_batches(BATCH).await?;
        let max_age = self.webhooks.settings.max_age();
        let fanned = self
            .store
            .fan_out_webhooks(BATCH, max_age, |e| routes(&self.webhooks, e))
            .await?;
        let claimed = self.claim_and_call(calls).await?;
        Ok(swept as i64 == BATCH || fanned as i64 == BATCH || claimed > 0)
    }

    async fn claim_and_call(
        &self,
        calls: &mut JoinSet<()>,
    ) -> Result<usize, mailpipe_common::store::StoreError> {
        let s = &self.webhooks.settings;
        let (free, saturated) = {
            let busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
            let total: usize = busy.values().sum();
            let saturated: Vec<String> = busy
                .iter()
                .filter(|(_, n)| **n >= s.max_in_flight_per_endpoint)
                .map(|(e, _)| e.clone())
                .collect();
            (s.max_in_flight.saturating_sub(total), saturated)
        };
        if free == 0 {
            return Ok(0);
        }
        // A hold outlasts the longest call, so no other dispatcher takes it meanwhile.
        let hold = Duration::from_millis(s.connect_timeout_ms + s.request_timeout_ms)
            + Duration::from_secs(30);
        let mut taken: HashMap<String, usize> = HashMap::new();
        let mut left = free;
        let busy_now = self.busy.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let per_endpoint = s.max_in_flight_per_endpoint;
        let chosen = self
            .store
            .claim_webhooks(
                (free * 4) as i64,
                &saturated,
                |d| {
                    let n = busy_now.get(&d.endpoint).copied().unwrap_or(0)
                        + taken.get(&d.endpoint).copied().unwrap_or(0);
                    if left == 0 || n >= per_endpoint {
                        return false;
                    }
                    left -= 1;
                    *taken.entry(d.endpoint.clone()).or_default() += 1;
                    true
                },
                hold,
            )
            .await?;
        let n = chosen.len();
        for d in chosen {
            *self
                .busy
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(d.endpoint.clone())
                .or_default() += 1;
            let this = self.clone();
            calls.spawn(async move {
                let endpoint = d.endpoint.clone();
                this.deliver(d).await;
                let mut busy = this.busy.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(n) = busy.get_mut(&endpoint) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        busy.remove(&endpoint);
                    }
                }
            });
        }
        Ok(n)
    }

    /// One try of one delivery, recorded.
    async fn deliver(&self, d: DueDelivery) {
        let kind = metrics::webhook_kind(&d.endpoint);
        let s = &self.webhooks.settings;
        if let Some(reason) = self.no_longer_allowed(&d) {
            return self.drop_delivery(d, reason).await;
        }
        let refused = (d.endpoint == CALLBACK)
            .then(|| self.refused_address(&d.url))
            .flatten();
        let result = match (self.webhooks.keys_for(&d.endpoint), refused) {
            (Some(_), Some(why)) => CallResult::Failed(why),
            (Some(keys), None) => {
                let now = Utc::now();
                let timestamp = now.timestamp();
                let call = Call {
                    url: &d.url,
                    id: &d.event_id,
                    timestamp,
                    // A retry is signed now, with the keys of now (both during a rotation).
                    signature: keys.sign(&d.event_id, timestamp, d.payload.as_bytes(), now),
                    body: &d.payload,
                };
                if d.endpoint == CALLBACK {
                    self.callbacks.send(call).await
                } else {
                    self.sender.send(call).await
                }
            }
            (None, _) => CallResult::Failed(format!(
                "endpoint {:?} is no longer configured (ingest.webhooks)",
                d.endpoint
            )),
        };
        metrics::WEBHOOK_ATTEMPTS
            .with_label_values(&[kind, result.label()])
            .inc();
        let tries = d.attempts + 1;
        let outcome = match &result {
            CallResult::Status(status) if (200..300).contains(status) => {
                AttemptOutcome::Delivered { status: *status }
            }
            CallResult::Status(410) => AttemptOutcome::Gone,
            other => {
                let unconfigured = self.webhooks.keys_for(&d.endpoint).is_none();
                let wait = retry_delay(
                    tries,
                    Duration::from_millis(s.retry_initial_ms),
                    Duration::from_millis(s.retry_max_ms),
                    &mut rand::rng(),
                );
                let retry_at = if unconfigured {
                    d.expires_at
                } else {
                    Utc::now()
                        + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::hours(1))
                };
                let (status, error) = match other {
                    CallResult::Status(s) => (Some(*s), format!("the receiver answered {s}")),
                    CallResult::TimedOut => (
                        None,
                        format!(
                            "no answer within {} ms (ingest.webhooks.request_timeout_ms)",
                            s.request_timeout_ms
                        ),
                    ),
                    CallResult::Failed(e) => (None, e.clone()),
                };
                tracing::info!(endpoint = %d.endpoint, webhook_id = %d.event_id, tries, error = %error, "webhook not acknowledged; trying again later");
                AttemptOutcome::Failed {
                    status,
                    error,
                    retry_at,
                }
            }
        };
        match self.store.record_webhook_attempt(d.id, &outcome).await {
            Ok(AfterAttempt::Done) => match outcome {
                AttemptOutcome::Delivered { .. } => {
                    metrics::WEBHOOK_DELIVERIES
                        .with_label_values(&[kind, "delivered"])
                        .inc();
                    let age = (Utc::now() - d.event_created_at).num_milliseconds().max(0);
                    metrics::WEBHOOK_LATENCY
                        .with_label_values(&[kind])
                        .observe(age as f64 / 1000.0);
                }
                _ => {
                    tracing::warn!(endpoint = %d.endpoint, webhook_id = %d.event_id, "the receiver answered 410 Gone: not tried again");
                    metrics::WEBHOOK_DELIVERIES
                        .with_label_values(&[kind, "gone"])
                        .inc();
                }
            },
            Ok(AfterAttempt::Expired) => {
                tracing::warn!(endpoint = %d.endpoint, webhook_id = %d.event_id, tries, "a webhook expired undelivered (ingest.webhooks.max_age)");
                metrics::WEBHOOK_DELIVERIES
                    .with_label_values(&[kind, "expired"])
                    .inc();
            }
            Ok(AfterAttempt::Retrying | AfterAttempt::Stale) => {}
            // Not recorded: the hold lapses and the delivery is tried again (at least once).
            Err(e) => {
                tracing::warn!(error = %e, webhook_id = %d.event_id, "recording a webhook try failed")
            }
        }
    }
}

impl Dispatcher {
    /// Why a callback delivery may not be made any more (its host or port left the
    /// allow-list since it was fanned out), or `None`.
    fn no_longer_allowed(&self, d: &DueDelivery) -> Option<String> {
        if d.endpoint != CALLBACK {
            return None;
        }
        let why = self.webhooks.policy.check(&d.url).err()?;
        Some(format!(
            "not called: the callback URL is not allowed any more: {why}"
        ))
    }

    /// Why a callback URL naming an address (not a name, which the guarded resolver
    /// checks) may not be called, or `None`.
    fn refused_address(&self, url: &str) -> Option<String> {
        let url = url::Url::parse(url).ok()?;
        let ip = match url.host()? {
            url::Host::Ipv4(ip) => std::net::IpAddr::V4(ip),
            url::Host::Ipv6(ip) => std::net::IpAddr::V6(ip),
            url::Host::Domain(_) => return None,
        };
        let why = self.webhooks.policy.addresses().refusal(ip)?;
        Some(format!("{ip} is {why}: not called"))
    }

    /// Records a delivery dropped without a call.
    async fn drop_delivery(&self, d: DueDelivery, reason: String) {
        tracing::warn!(endpoint = %d.endpoint, webhook_id = %d.event_id, reason = %reason, "a webhook delivery was dropped");
        let outcome = AttemptOutcome::Dropped { reason };
        match self.store.record_webhook_attempt(d.id, &outcome).await {
            Ok(_) => metrics::WEBHOOK_DELIVERIES
                .with_label_values(&[metrics::webhook_kind(&d.endpoint), "dropped"])
                .inc(),
            Err(e) => {
                tracing::warn!(error = %e, webhook_id = %d.event_id, "recording a dropped webhook failed")
            }
        }
    }
}

/// Where an event goes: every configured endpoint that wants its type, and its batch's
/// callback URL when there is one that the current policy still allows.
pub fn routes(webhooks: &Webhooks, e: &OutboxEvent) -> Vec<Route> {
    let mut out: Vec<Route> = webhooks
        .endpoints
        .iter()
        .filter(|ep| ep.wants(&e.kind))
        .map(|ep| Route {
            endpoint: ep.name.clone(),
            url: ep.url.clone(),
        })
        .collect();
    if let Some(url) = &e.callback_url
        && webhooks.callback_keys.is_some()
    {
        match webhooks.policy.check(url) {
            Ok(_) => out.push(Route {
                endpoint: CALLBACK.to_owned(),
                url: url.clone(),
            }),
            Err(why) => tracing::warn!(
                batch = e.batch.as_deref().unwrap_or("-"),
                why,
                "a batch's callback URL is not allowed any more: not called"
            ),
        }
    }
    out
}
