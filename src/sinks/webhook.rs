//! One webhook sink: reads the events after its durable cursor, POSTs them in batches signed
//! per the Standard Webhooks specification, and moves the cursor only after a 2xx answer.
//!
//! Delivery is at-least-once and in `event_id` order: a failed batch is retried until the
//! receiver takes it, nothing after it is sent before, and each attempt rebuilds the batch
//! from the database (same `webhook-id` and body while its rows are unchanged), so an event
//! erased meanwhile (`forget`, retention) is never sent again. Each attempt runs under an
//! expiring claim on the sink's cursor ([`Store::claim_webhook_cursor`]), never inside an open
//! transaction. It must never log or send the secret, and never send a JoinToken (no event
//! holds one).

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
use crate::event_json::{EventFilter, EventJson};
use crate::permit::WriterPermit;
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

/// A batch waiting for a 2xx: which events it spans, not their content. Every attempt reads
/// them again from the database, so an event erased since the last attempt is not sent.
#[derive(Clone, Copy, Debug)]
struct Batch {
    /// The cursor the batch was read after: it is retried only while the cursor is still
    /// there (another replica may have delivered it meanwhile).
    after: i64,
    /// The cursor after this batch: the last event read, delivered or filtered out.
    through: i64,
    /// The body's `timestamp` at the first attempt, kept so that a retry of unchanged rows
    /// sends the same body.
    timestamp: chrono::DateTime<chrono::Utc>,
}

/// One attempt's request: the batch's events as they are in the database now.
struct Request {
    /// `{sink}-{first event_id}-{last event_id}`: the same on every retry of the same events,
    /// so receivers can drop a batch they already took.
    id: String,
    body: Bytes,
    /// Events in the body.
    events: usize,
}

/// What one [`Sink::step`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// No event after the cursor.
    Idle,
    /// Another process (a replica on the same database) holds this sink's claim.
    Standby,
    /// The receiver took a batch of `events`, but another process had claimed the sink
    /// since (this one was paused past its claim): the cursor is the new holder's to move,
    /// and it may send the batch again (at least once).
    Superseded { events: usize },
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
    /// Who this sink claims the cursor as: `host:pid:nonce`, unique per sink instance, so an
    /// operator (or a test) can tell from `webhook_cursors.claimed_by` which process holds it.
    holder: String,
    /// How long a claim lasts unless renewed ([`Sink::with_claim_ttl`]).
    claim_ttl: Duration,
    /// `None` until read from the database.
    cursor: Option<i64>,
    pending: Option<Batch>,
    /// Changes when events are committed: ends an idle wait early ([`Sink::with_wakeups`]).
    wakeups: Option<watch::Receiver<u64>>,
    /// The store's writer permit: no attempt is made while it is revoked (the daemon lost its
    /// writer lock), so only the writer delivers.
    permit: WriterPermit,
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
        let permit = store.writer_permit();
        Ok(Self {
            name: entry.name.clone(),
            url,
            key,
            filter: filter_of(entry)?,
            batch_size: i64::from(settings.batch),
            timeout: settings.timeout,
            store,
            client,
            holder: format!(
                "{}:{}:{}",
                crate::store::hostname(),
                std::process::id(),
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
            claim_ttl: default_claim_ttl(settings.timeout),
            cursor: None,
            pending: None,
            wakeups: None,
            permit,
        })
    }

    /// An idle sink also wakes when `wakeups` changes (see [`crate::sinks::spawn_webhooks`]),
    /// not only every `webhook.poll_interval`.
    #[must_use]
    pub fn with_wakeups(mut self, wakeups: watch::Receiver<u64>) -> Self {
        self.wakeups = Some(wakeups);
        self
    }

    /// How long this sink's claim on its cursor lasts without renewal: past it, another
    /// process may take the sink over. It must exceed `webhook.timeout`, so a claim outlives
    /// the post made under it; the daemon passes `webhook.timeout + cluster.lease_ttl / 2`
    /// ([`claim_ttl`]).
    #[must_use]
    pub fn with_claim_ttl(mut self, ttl: Duration) -> Self {
        self.claim_ttl = ttl;
        self
    }

    /// The claim holder this sink writes to `webhook_cursors.claimed_by`.
    pub fn holder(&self) -> &str {
        &self.holder
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
    /// next events after the cursor. Either way the events are read from the database now.
    ///
    /// # Errors
    /// The receiver did not answer 2xx, or the database failed; the batch stays pending.
    pub async fn step(&mut self) -> Result<Step, DeliveryError> {
        self.open_cursor().await?;
        // The durable cursor, under a claim that keeps other processes out until it expires:
        // two replicas never post the same batch at once while both are running.
        let Some(claim) = self
            .store
            .claim_webhook_cursor(&self.name, &self.holder, self.claim_ttl)
            .await?
        else {
            // Keep the lag this process reports true to the shared cursor.
            if let Some(cursor) = self.store.peek_webhook_cursor(&self.name).await? {
                self.cursor = Some(cursor);
            }
            return Ok(Step::Standby);
        };
        let cursor = claim.cursor();
        self.cursor = Some(cursor);
        let pending = self.pending.take().filter(|batch| batch.after == cursor);
        let mut read = self
            .store
            .labeled_events_after(cursor, None, self.batch_size)
            .await?;
        let batch = match pending {
            Some(batch) => {
                // The same span as before: event ids are never reused, so nothing new can
                // appear inside it; only erased events are missing.
                read.retain(|e| e.event.event_id <= batch.through);
                batch
            }
            None => {
                let Some(last) = read.last() else {
                    return Ok(Step::Idle);
                };
                Batch {
                    after: cursor,
                    through: last.event.event_id,
                    timestamp: crate::domain::now(),
                }
            }
        };
        let Some(request) = self.request(&read, &batch) else {
            return if self.advance(claim, batch.through).await? {
                Ok(Step::Skipped {
                    through: batch.through,
                })
            } else {
                Ok(Step::Standby)
            };
        };
        if let Err(e) = self.post(&request).await {
            self.pending = Some(batch);
            return Err(e);
        }
        match self.advance(claim, batch.through).await {
            Ok(true) => Ok(Step::Delivered {
                events: request.events,
                through: batch.through,
            }),
            Ok(false) => Ok(Step::Superseded {
                events: request.events,
            }),
            Err(e) => {
                // Delivered but not recorded: the next attempt sends it again (at-least-once),
                // under the same id while its rows are unchanged.
                self.pending = Some(batch);
                Err(e.into())
            }
        }
    }

    /// The request for `batch` from the events `read` (those after its cursor, up to its
    /// end): `None` when the filters leave none of them.
    fn request(&self, read: &[crate::store::LabeledEvent], batch: &Batch) -> Option<Request> {
        let events: Vec<EventJson> = read
            .iter()
            .map(EventJson::from)
            .filter(|e| self.filter.matches(e))
            .collect();
        let (first, last) = (events.first()?, events.last()?);
        let id = format!("{}-{}-{}", self.name, first.event_id, last.event_id);
        let body = serde_json::json!({
            "type": "roster.events",
            "timestamp": batch.timestamp.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "data": { "events": events },
        });
        Some(Request {
            id,
            body: Bytes::from(body.to_string()),
            events: events.len(),
        })
    }

    /// Moves the cursor to `through` under `claim`: `false` when another process claimed the
    /// sink since (the cursor is left to it).
    async fn advance(&mut self, claim: CursorClaim, through: i64) -> Result<bool, StoreError> {
        let moved = self
            .store
            .advance_claimed_cursor(claim, &self.name, through, crate::domain::now())
            .await?;
        if moved {
            self.cursor = Some(through);
        }
        Ok(moved)
    }

    /// Gives the claim up (a clean stop), so another process takes over without waiting for
    /// it to expire. Best effort: an expired claim is taken over anyway.
    pub async fn release(&self) {
        if let Err(e) = self
            .store
            .release_webhook_claim(&self.name, &self.holder)
            .await
        {
            tracing::debug!(sink = %self.name, error = %e, "cannot release the webhook claim; it expires by itself");
        }
    }

    async fn post(&self, batch: &Request) -> Result<(), DeliveryError> {
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
    /// failure waits the backoff (or the receiver's `Retry-After`, if longer, up to
    /// `webhook.backoff_cap`) before retrying the same batch. An idle sink waits `poll_interval`, or until its wakeups say events
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
            if !self.permit.wait_held(&cancel).await {
                break;
            }
            let step = tokio::select! {
                () = cancel.cancelled() => break,
                step = self.step() => step,
            };
            let worked = matches!(
                step,
                Ok(Step::Idle
                    | Step::Skipped { .. }
                    | Step::Delivered { .. }
                    | Step::Superseded { .. })
            );
            if worked && failed_attempts > 0 {
                tracing::info!(sink = %self.name, failed_attempts, "webhook sink recovered");
                failed_attempts = 0;
            }
            let idle = matches!(step, Ok(Step::Idle | Step::Standby));
            let wait = match step {
                Ok(Step::Idle) => {
                    backoff = new_backoff();
                    settings.poll_interval
                }
                Ok(Step::Standby) => {
                    backoff = new_backoff();
                    // Look again well before the holder's claim can have expired, so a
                    // stopped holder is replaced soon after its claim lapses.
                    settings
                        .poll_interval
                        .min(self.claim_ttl.saturating_sub(settings.timeout))
                        .max(MIN_STANDBY_WAIT)
                }
                Ok(Step::Superseded { events }) => {
                    backoff = new_backoff();
                    record_delivery(&self.name, Outcome::Delivered);
                    tracing::info!(sink = %self.name, events, "webhook batch delivered after another process took the sink over; the cursor is left to it");
                    Duration::ZERO
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
                    let wait = retry_wait(
                        backoff.next().unwrap_or(settings.backoff_cap),
                        retry_after,
                        settings.backoff_cap,
                    );
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
        self.release().await;
        tracing::info!(sink = %self.name, "webhook sink stopped");
    }
}

/// The filter of a validated `[[webhooks]]` entry.
///
/// # Errors
/// A kind that is not an event kind (validation at start rules this out).
fn filter_of(entry: &WebhookEntry) -> Result<EventFilter, String> {
    let kinds = entry
        .kinds
        .iter()
        .map(|k| k.parse().map_err(|e| format!("{e}")))
        .collect::<Result<_, _>>()?;
    Ok(EventFilter {
        meeting: None,
        kinds,
        meeting_labels: entry.meeting_labels.clone(),
        external_user_ids: entry.external_user_ids.clone(),
    })
}

/// The wait before retrying a failed batch: the backoff, or the receiver's `Retry-After` when
/// longer, but never more than `cap` (`webhook.backoff_cap`): a `Retry-After` is the network's
/// to send, and a huge one (`18446744073709551615`) must not park the sink until a restart.
fn retry_wait(backoff: Duration, retry_after: Option<Duration>, cap: Duration) -> Duration {
    backoff.max(retry_after.unwrap_or_default()).min(cap)
}

/// The shortest wait of a sink in standby between two looks at the claim.
const MIN_STANDBY_WAIT: Duration = Duration::from_millis(10);

/// A sink's claim lifetime without a cluster: `webhook.timeout` plus 15 s (half the default
/// `cluster.lease_ttl`).
fn default_claim_ttl(timeout: Duration) -> Duration {
    claim_ttl(timeout, Duration::from_secs(30))
}

/// How long a sink's claim on its cursor lasts: `webhook.timeout + cluster.lease_ttl / 2`.
/// A post under the claim ends (answered or timed out) before it expires, and a sink in
/// standby looks again at least every `min(webhook.poll_interval, lease_ttl / 2)`, so another
/// process resumes delivery within `webhook.timeout + cluster.lease_ttl` of the holder
/// stopping, as a meeting lease is taken over within `cluster.lease_ttl`.
pub fn claim_ttl(timeout: Duration, lease_ttl: Duration) -> Duration {
    timeout.saturating_add(lease_ttl / 2)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_waits_for_the_receivers_retry_after_but_never_past_the_cap() {
        let (second, cap) = (Duration::from_secs(1), Duration::from_secs(300));
        assert_eq!(retry_wait(second, None, cap), second);
        assert_eq!(
            retry_wait(second, Some(Duration::from_secs(30)), cap),
            Duration::from_secs(30)
        );
        assert_eq!(
            retry_wait(Duration::from_secs(60), Some(second), cap),
            Duration::from_secs(60)
        );
        assert_eq!(
            retry_wait(second, Some(Duration::from_secs(u64::MAX)), cap),
            cap
        );
        assert_eq!(retry_wait(Duration::MAX, None, cap), cap);
    }
}
