//! Sinks: where recorded events go after `store.apply` committed them. Postgres `NOTIFY` is
//! sent by the store inside the recording transaction; this module holds the consumers that
//! read `roster_events` after a cursor: the webhook sinks (`[[webhooks]]`, see [`webhook`]).
//! The JSON they deliver and the filter they select with are the wire format in
//! [`crate::event_json`], shared with `roster-sync events`.
//!
//! A sink never writes `roster_events` and never slows the poll loop: it reads committed
//! rows at its own pace, from its own durable cursor.

pub mod webhook;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Settings;
use crate::store::Store;

/// How a delivery attempt ended, the `outcome` label of
/// `roster_sync_webhook_deliveries_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Every event of the batch was filtered out; nothing was sent.
    Skipped,
    Rejected,
    Timeout,
    TransportError,
    StoreError,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Skipped => "skipped",
            Self::Rejected => "rejected",
            Self::Timeout => "timeout",
            Self::TransportError => "transport_error",
            Self::StoreError => "store_error",
        }
    }
}

/// Connections of the sinks' own pool on Postgres: each sink holds one only for a statement
/// (claims and cursor moves are autocommitted, never open across a post), so two serve any
/// number of sinks.
pub const SINK_CONNECTIONS: u32 = 2;

const DELIVERIES: &str = "roster_sync_webhook_deliveries_total";
const LAG: &str = "roster_sync_webhook_lag_events";
const LAST_SUCCESS: &str = "roster_sync_webhook_last_success_timestamp_seconds";

fn describe_metrics() {
    metrics::describe_counter!(
        DELIVERIES,
        "Webhook delivery attempts by sink and outcome (delivered, skipped, rejected, timeout, \
         transport_error, store_error)."
    );
    metrics::describe_gauge!(
        LAG,
        "Events recorded that a webhook sink has not yet delivered or skipped."
    );
    metrics::describe_gauge!(
        LAST_SUCCESS,
        metrics::Unit::Seconds,
        "Unix time of the sink's last batch answered 2xx (or skipped by its filters)."
    );
}

fn record_delivery(sink: &str, outcome: Outcome) {
    metrics::counter!(DELIVERIES, "sink" => sink.to_owned(), "outcome" => outcome.as_str())
        .increment(1);
    if matches!(outcome, Outcome::Delivered | Outcome::Skipped) {
        let now = chrono::Utc::now().timestamp_micros() as f64 / 1e6;
        metrics::gauge!(LAST_SUCCESS, "sink" => sink.to_owned()).set(now);
    }
}

fn record_lag(sink: &str, events: i64) {
    metrics::gauge!(LAG, "sink" => sink.to_owned()).set(events as f64);
}

/// Starts one delivery task per `[[webhooks]]` entry on `tracker`; they stop when `cancel`
/// fires (a batch in flight is abandoned and sent again on the next start). Returns how many
/// were started.
///
/// Idle sinks wake as soon as this daemon commits events ([`Store::committed`]); on Postgres
/// one `LISTEN` connection of its own (outside every pool) also wakes them for other writers'
/// commits. Otherwise they look every `webhook.poll_interval`. On Postgres the sinks read and
/// claim through a pool of their own ([`SINK_CONNECTIONS`], [`Store::with_own_pool`]), so
/// `database.max_connections` is the scheduler's alone and any value of it works with sinks.
///
/// Every sink's cursor is read, or created for a new sink, before this returns: the daemon
/// calls it before its first poll, so a sink added to the configuration receives every event
/// recorded from that start on, including the first poll's (a cursor created later, by the
/// task, would start after them).
///
/// # Errors
/// The platform's root certificates cannot be read, an entry is invalid (validation at
/// start rules that out), or a cursor cannot be read or created; nothing is started then.
pub async fn spawn_webhooks(
    settings: &Settings,
    store: Store,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<usize> {
    if settings.webhooks.is_empty() {
        return Ok(0);
    }
    describe_metrics();
    // The sinks' own connections: a sink never waits for, or holds, one the scheduler needs.
    let store = store.with_own_pool(SINK_CONNECTIONS);
    let claim_ttl = webhook::claim_ttl(settings.webhook.timeout, settings.cluster.lease_ttl);
    let client = webhook::http_client()
        .map_err(|e| anyhow::anyhow!("cannot build the webhook HTTPS client: {e}"))?;
    let mut sinks = settings
        .webhooks
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            webhook::Sink::new(entry, &settings.webhook, store.clone(), client.clone())
                .map(|sink| sink.with_claim_ttl(claim_ttl))
                .map_err(|why| anyhow::anyhow!("webhooks[{i}] ({}): {why}", entry.name))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    for sink in &mut sinks {
        let cursor = sink.open_cursor().await.map_err(|e| {
            anyhow::anyhow!(
                "cannot read the delivery cursor of webhook {:?}: {e}",
                sink.name()
            )
        })?;
        tracing::debug!(sink = %sink.name(), cursor, "webhook cursor");
    }
    // The store wakes the sinks after this daemon's commits; on Postgres one LISTEN
    // connection (of its own, outside every pool) also passes on other writers' commits.
    let wakeups = store.committed();
    match store.event_wakeups().await {
        Ok(Some(listener)) => {
            tracker.spawn(forward_wakeups(listener, store.clone(), cancel.clone()));
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(
            error = %e,
            "cannot LISTEN for new events; webhook sinks look every webhook.poll_interval"
        ),
    }
    let started = sinks.len();
    for sink in sinks {
        let sink = sink.with_wakeups(wakeups.clone());
        tracker.spawn(sink.run(settings.webhook.clone(), cancel.clone()));
    }
    Ok(started)
}

/// Passes every notification on [`crate::store::EVENTS_CHANNEL`] on to the store's
/// [`Store::committed`] wakeups, and one after a lost connection (notifications sent meanwhile
/// are lost; the listener reconnects by itself), until `cancel` fires.
async fn forward_wakeups(
    mut listener: crate::store::EventWakeups,
    store: Store,
    cancel: CancellationToken,
) {
    loop {
        let heard = tokio::select! {
            () = cancel.cancelled() => break,
            heard = listener.next() => heard,
        };
        if let Err(e) = heard {
            tracing::debug!(error = %e, "webhook wakeups: LISTEN connection lost");
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
        }
        store.note_committed_elsewhere();
    }
}
