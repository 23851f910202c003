//! One webhook sink: reads the events after its durable cursor, POSTs them in batches signed
//! per the Standard Webhooks specification, and moves the cursor only after a 2xx answer.
//!
//! Delivery is at-least-once and in `event_id` order: a failed batch is retried, unchanged
//! (same `webhook-id`, same body), until the receiver takes it; nothing after it is sent
//! before. It must never log or send the secret, and never send a JoinToken (no event holds
//! one).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Outcome, record_delivery, record_lag};
use crate::config::{WebhookEntry, WebhookSettings};
use crate::events::EventFilter;
use crate::events::EventJson;
use crate::signing::{check_url, signature, signing_key};
use crate::store::{CursorClaim, Store, StoreError};

/// Errors of one delivery attempt. None is final: the sink retries them all.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("receiver answered {status}")]
    Rejected {
        status: http::StatusCode,
        /// The receiver's `Retry-After`, when it sent one in seconds.
        retry_after: Option<Duration>,
    },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot reach the receiver: {0}")]
    Transport(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The HTTP(S) client every sink shares.
pub type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// An HTTPS client over rustls (aws-lc-rs) trusting the platform's root certificates; plain
/// `http://` is allowed by the client, and by [`crate::signing::check_url`] only towards loopback addresses.
///
/// # Errors
/// The platform's root certificates cannot be read.
pub fn http_client() -> std::io::Result<HttpClient> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(rustls::crypto::aws_lc_rs::default_provider())?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

/// A batch waiting for a 2xx: retried exactly as it is.
#[derive(Clone, Debug)]
struct Batch {
    /// `{sink}-{first event_id}-{last event_id}`: the same on every retry, so receivers can
    /// drop a batch they already took.
    id: String,
    body: Bytes,
    /// Events in the body.
    events: usize,
    /// The cursor the batch was read after: it is retried only while the cursor is still
    /// there (another replica may have delivered it meanwhile).
    after: i64,
    /// The cursor after this batch: the last event read, delivered or filtered out.
    through: i64,
}

/// What one [`Sink::step`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// No event after the cursor.
    Idle,
    /// Another process (a replica on the same database) is delivering this sink right now.
    Standby,
    /// Every event read was left out by the filters; the cursor moved past them.
    Skipped { through: i64 },
    /// A batch of `events` was taken by the receiver; the cursor is at `through`.
    Delivered { events: usize, through: i64 },
}

/// One configured webhook and its position.
pub struct Sink {
    name: String,
    url: http::Uri,
    key: Vec<u8>,
    filter: EventFilter,
    batch_size: i64,
    timeout: Duration,
    store: Store,
    client: HttpClient,
    /// `None` until read from the database.
    cursor: Option<i64>,
    pending: Option<Batch>,
    /// Changes when events are committed: ends an idle wait early ([`Sink::with_wakeups`]).
    wakeups: Option<watch::Receiver<u64>>,
}

impl Sink {
    /// A sink for a validated `[[webhooks]]` entry.
    ///
    /// # Errors
    /// The entry's URL or secret is invalid (validation at start rules this out).
    pub fn new(
        entry: &WebhookEntry,
        settings: &WebhookSettings,
        store: Store,
        client: HttpClient,
    ) -> Result<Self, String> {
        check_url(&entry.url)?;
        let url = entry.url.parse().map_err(|e| format!("{e}"))?;
        let key = signing_key(&entry.secret_value()?)?;
        Ok(Self {
            name: entry.name.clone(),
            url,
            key,
            filter: EventFilter::for_webhook(entry)?,
            batch_size: i64::from(settings.batch),
            timeout: settings.timeout,
            store,
            client,
            cursor: None,
            pending: None,
            wakeups: None,
        })
    }

    /// An idle sink also wakes when `wakeups` changes (see [`crate::sinks::spawn_webhooks`]),
    /// not only every `webhook.poll_interval`.
    #[must_use]
    pub fn with_wakeups(mut self, wakeups: watch::Receiver<u64>) -> Self {
        self.wakeups = Some(wakeups);
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads the sink's durable cursor, creating it if this is the sink's first start (see
    /// [`Store::webhook_cursor`] for where a new cursor starts). The daemon calls this for
    /// every sink before its first poll, so a new sink's cursor is placed before any event
    /// that daemon records and none is missed. [`Sink::step`] does it too, when not done yet.
    ///
    /// # Errors
    /// The database failed; the cursor is read again at the next step.
    pub async fn open_cursor(&mut self) -> Result<i64, StoreError> {
        if let Some(cursor) = self.cursor {
            return Ok(cursor);
        }
        let cursor = self
            .store
            .webhook_cursor(&self.name, crate::domain::now())
            .await?;
        self.cursor = Some(cursor);
        Ok(cursor)
    }

    /// Makes one delivery attempt: the pending batch if a previous attempt failed, else the
    /// next events after the cursor.
    ///
    /// # Errors
    /// The receiver did not answer 2xx, or the database failed; the batch stays pending.
    pub async fn step(&mut self) -> Result<Step, DeliveryError> {
        self.open_cursor().await?;
        // The durable cursor, read under a claim that keeps other replicas out until this
        // attempt ends: two replicas never post the same batch at once.
        let Some(claim) = self.store.claim_webhook_cursor(&self.name).await? else {
            // Keep the lag this process reports true to the shared cursor.
            if let Some(cursor) = self.store.peek_webhook_cursor(&self.name).await? {
                self.cursor = Some(cursor);
            }
            return Ok(Step::Standby);
        };
        let cursor = claim.cursor();
        self.cursor = Some(cursor);
        let batch = match self.pending.take() {
            Some(batch) if batch.after == cursor => batch,
            _ => {
                let read = self
                    .store
                    .labeled_events_after(cursor, None, self.batch_size)
                    .await?;
                let Some(last) = read.last() else {
                    return Ok(Step::Idle);
                };
                let through = last.event.event_id;
                let events: Vec<EventJson> = read
                    .iter()
                    .filter(|e| self.filter.matches(e))
                    .map(EventJson::from)
                    .collect();
                let (Some(first), Some(last)) = (events.first(), events.last()) else {
                    self.advance(claim, through).await?;
                    return Ok(Step::Skipped { through });
                };
                let body = serde_json::json!({
                    "type": "roster.events",
                    "timestamp": crate::domain::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                    "data": { "events": events },
                });
                Batch {
                    id: format!("{}-{}-{}", self.name, first.event_id, last.event_id),
                    body: Bytes::from(body.to_string()),
                    events: events.len(),
                    after: cursor,
                    through,
                }
            }
        };
        if let Err(e) = self.post(&batch).await {
            self.pending = Some(batch);
            return Err(e);
        }
        let step = Step::Delivered {
            events: batch.events,
            through: batch.through,
        };
        if let Err(e) = self.advance(claim, batch.through).await {
            // Delivered but not recorded: the next attempt sends it again (at-least-once),
            // under the same id.
            self.pending = Some(batch);
            return Err(e.into());
        }
        Ok(step)
    }

    async fn advance(&mut self, claim: CursorClaim, through: i64) -> Result<(), StoreError> {
        self.store
            .advance_claimed_cursor(claim, &self.name, through, crate::domain::now())
            .await?;
        self.cursor = Some(through);
        Ok(())
    }

    async fn post(&self, batch: &Batch) -> Result<(), DeliveryError> {
        let timestamp = crate::domain::now().timestamp();
        let request = http::Request::post(self.url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("roster-sync/", env!("CARGO_PKG_VERSION")),
            )
            .header("webhook-id", &batch.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                signature(&self.key, &batch.id, timestamp, &batch.body),
            )
            .body(Full::new(batch.body.clone()))
            .map_err(|e| DeliveryError::Transport(e.to_string()))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| DeliveryError::Transport(error_chain(&e)))?;
            let status = response.status();
            let retry_after = response
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            // Read the (ignored) body so the connection can be reused.
            let _ = response.into_body().collect().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(DeliveryError::Rejected {
                    status,
                    retry_after,
                })
            }
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| DeliveryError::Timeout(self.timeout))?
    }

    /// Delivers until `cancel` fires: steps while there is work, waits when idle, and after a
    /// failure waits the backoff (or the receiver's `Retry-After`, if longer) before retrying
    /// the same batch. An idle sink waits `poll_interval`, or until its wakeups say events
    /// were committed, whichever comes first.
    ///
    /// It logs state changes, not attempts: one warning when a healthy sink fails ("webhook
    /// sink failing", with the error), one line when a failing sink succeeds again ("webhook
    /// sink recovered", with the number of failed attempts). The retries in between are
    /// logged at debug; every attempt is counted in the metrics.
    pub async fn run(mut self, settings: WebhookSettings, cancel: CancellationToken) {
        let new_backoff = || {
            backon::BackoffBuilder::build(
                backon::ExponentialBuilder::default()
                    .with_min_delay(settings.backoff_base)
                    .with_max_delay(settings.backoff_cap)
                    .with_jitter()
                    .without_max_times(),
            )
        };
        let mut backoff = new_backoff();
        // Failed attempts since the last success; 0 while healthy.
        let mut failed_attempts: u64 = 0;
        tracing::info!(sink = %self.name, "webhook sink started");
        loop {
            let step = tokio::select! {
                () = cancel.cancelled() => break,
                step = self.step() => step,
            };
            let worked = matches!(
                step,
                Ok(Step::Idle | Step::Skipped { .. } | Step::Delivered { .. })
            );
            if worked && failed_attempts > 0 {
                tracing::info!(sink = %self.name, failed_attempts, "webhook sink recovered");
                failed_attempts = 0;
            }
            let idle = matches!(step, Ok(Step::Idle | Step::Standby));
            let wait = match step {
                Ok(Step::Idle | Step::Standby) => {
                    backoff = new_backoff();
                    settings.poll_interval
                }
                Ok(Step::Skipped { .. }) => {
                    record_delivery(&self.name, Outcome::Skipped);
                    Duration::ZERO
                }
                Ok(Step::Delivered { events, through }) => {
                    backoff = new_backoff();
                    record_delivery(&self.name, Outcome::Delivered);
                    tracing::debug!(sink = %self.name, events, through, "webhook batch delivered");
                    Duration::ZERO
                }
                Err(e) => {
                    let outcome = match &e {
                        DeliveryError::Rejected { .. } => Outcome::Rejected,
                        DeliveryError::Timeout(_) => Outcome::Timeout,
                        DeliveryError::Transport(_) => Outcome::TransportError,
                        DeliveryError::Store(_) => {
                            crate::telemetry::database_error("webhook");
                            Outcome::StoreError
                        }
                    };
                    record_delivery(&self.name, outcome);
                    let retry_after = match &e {
                        DeliveryError::Rejected { retry_after, .. } => *retry_after,
                        _ => None,
                    };
                    let wait = backoff
                        .next()
                        .unwrap_or(settings.backoff_cap)
                        .max(retry_after.unwrap_or_default().min(settings.backoff_cap));
                    failed_attempts += 1;
                    if failed_attempts == 1 {
                        tracing::warn!(sink = %self.name, error = %e, retry_in = ?wait, "webhook sink failing");
                    } else {
                        tracing::debug!(sink = %self.name, error = %e, retry_in = ?wait, failed_attempts, "webhook delivery failed again");
                    }
                    if !matches!(e, DeliveryError::Store(_)) {
                        // Best effort: the failure is already in the log and the metrics.
                        let _ = self
                            .store
                            .record_webhook_failure(
                                &self.name,
                                &e.to_string(),
                                crate::domain::now(),
                            )
                            .await;
                    }
                    wait
                }
            };
            if let (Some(cursor), Ok(last)) = (self.cursor, self.store.last_event_id().await) {
                // Never below 0: erasing the newest events (`forget`) lowers the last id.
                record_lag(&self.name, last.saturating_sub(cursor).max(0));
            }
            if !wait.is_zero() {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(wait) => {}
                    () = committed(&mut self.wakeups), if idle => {}
                }
            }
        }
        tracing::info!(sink = %self.name, "webhook sink stopped");
    }
}

/// Returns when events were committed since the last return ([`Sink::with_wakeups`]);
/// never without a wakeup channel, or once its sender is gone.
async fn committed(wakeups: &mut Option<watch::Receiver<u64>>) {
    if let Some(rx) = wakeups {
        if rx.changed().await.is_ok() {
            return;
        }
        *wakeups = None;
    }
    std::future::pending().await
}

/// An error and its sources, for a log line ("client error (Connect): connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
