//! Sinks: where recorded events go after `store.apply` committed them. Postgres `NOTIFY` is
//! sent by the store inside the recording transaction; this module holds the consumers that
//! read `roster_events` after a cursor: the webhook sinks (`[[webhooks]]`, see
//! [`webhook`]) and the event filter they share with `roster-sync events`.
//!
//! A sink never writes `roster_events` and never slows the poll loop: it reads committed
//! rows at its own pace, from its own durable cursor.

pub mod webhook;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Settings, WebhookEntry};
use crate::domain::{EventKind, MeetingId};
use crate::store::{LabeledEvent, Store};

/// Which events a consumer wants. Every list empty (or `None`) means everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub meeting: Option<MeetingId>,
    pub kinds: Vec<EventKind>,
    pub meeting_labels: Vec<String>,
    /// Patterns: `*` matches any run of characters, `?` one character, the rest itself.
    pub external_user_ids: Vec<String>,
}

impl EventFilter {
    /// The filter of a validated `[[webhooks]]` entry.
    ///
    /// # Errors
    /// A kind that is not an event kind (validation at start rules this out).
    pub fn for_webhook(entry: &WebhookEntry) -> Result<Self, String> {
        let kinds = entry
            .kinds
            .iter()
            .map(|k| k.parse().map_err(|e| format!("{e}")))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            meeting: None,
            kinds,
            meeting_labels: entry.meeting_labels.clone(),
            external_user_ids: entry.external_user_ids.clone(),
        })
    }

    pub fn matches(&self, e: &LabeledEvent) -> bool {
        let event = &e.event;
        self.meeting.as_ref().is_none_or(|m| *m == event.meeting_id)
            && (self.kinds.is_empty() || self.kinds.contains(&event.kind))
            && (self.meeting_labels.is_empty()
                || e.meeting_label
                    .as_ref()
                    .is_some_and(|l| self.meeting_labels.contains(l)))
            && (self.external_user_ids.is_empty()
                || self
                    .external_user_ids
                    .iter()
                    .any(|p| glob_matches(p, event.external_user_id.as_str())))
    }
}

/// `*` matches any run of characters (none included), `?` exactly one, anything else itself.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    // Greedy matching with backtracking to the last `*`: linear for patterns with one `*`,
    // never exponential.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == '?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

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

const DELIVERIES: &str = "roster_sync_webhook_deliveries_total";
const LAG: &str = "roster_sync_webhook_lag_events";

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
}

fn record_delivery(sink: &str, outcome: Outcome) {
    metrics::counter!(DELIVERIES, "sink" => sink.to_owned(), "outcome" => outcome.as_str())
        .increment(1);
}

fn record_lag(sink: &str, events: i64) {
    metrics::gauge!(LAG, "sink" => sink.to_owned()).set(events as f64);
}

/// Starts one delivery task per `[[webhooks]]` entry on `tracker`; they stop when `cancel`
/// fires (a batch in flight is abandoned and sent again on the next start). Returns how many
/// were started.
///
/// # Errors
/// The platform's root certificates cannot be read, or an entry is invalid (validation at
/// start rules that out); nothing is started then.
pub fn spawn_webhooks(
    settings: &Settings,
    store: Store,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<usize> {
    if settings.webhooks.is_empty() {
        return Ok(0);
    }
    describe_metrics();
    let client = webhook::http_client()
        .map_err(|e| anyhow::anyhow!("cannot build the webhook HTTPS client: {e}"))?;
    let sinks = settings
        .webhooks
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            webhook::Sink::new(entry, &settings.webhook, store.clone(), client.clone())
                .map_err(|why| anyhow::anyhow!("webhooks[{i}] ({}): {why}", entry.name))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let started = sinks.len();
    for sink in sinks {
        tracker.spawn(sink.run(settings.webhook.clone(), cancel.clone()));
    }
    Ok(started)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_patterns_match_like_shell_globs() {
        assert!(glob_matches("*@partner.example", "ana@partner.example"));
        assert!(glob_matches("*@partner.example", "@partner.example"));
        assert!(!glob_matches(
            "*@partner.example",
            "ana@partner.example.com"
        ));
        assert!(glob_matches("a?c*", "abcdef"));
        assert!(glob_matches("*a*b*", "xxaxxbxx"));
        assert!(!glob_matches("*a*b*", "xxbxxaxx"));
        assert!(glob_matches("exact", "exact"));
        assert!(!glob_matches("exact", "exactly"));
        assert!(glob_matches("«*»", "«Zoë»"));
    }
}
