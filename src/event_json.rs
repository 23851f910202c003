//! The wire format of recorded events: the JSON object of one event that `roster-sync events
//! --format json` prints and the webhooks deliver ([`EventJson`]), the `NOTIFY` payload that
//! announces a commit ([`NotifyPayload`]), and the filter consumers select events with
//! ([`EventFilter`]).
//!
//! A leaf below everything that uses it (the `events` command, the webhook sinks, the store's
//! `NOTIFY`): it imports only `domain`, so none of them depends on another to share it. The
//! store converts its rows into these forms (`store/alerting.rs`). It must never carry a
//! JoinToken (no event holds one), and a field's name or meaning never changes: receivers and
//! scripts parse it.

use serde::{Deserialize, Serialize};

use crate::domain::{EventKind, MeetingId};

/// An event as `events --format json` prints it and webhooks deliver it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EventJson {
    pub event_id: i64,
    pub meeting_id: String,
    /// The meeting's label as it is now (labels can change after the event).
    pub meeting_label: Option<String>,
    pub attendee_id: String,
    pub external_user_id: String,
    pub kind: EventKind,
    pub reason: Option<&'static str>,
    pub audio: Option<&'static str>,
    pub video: Option<&'static str>,
    pub content: Option<&'static str>,
    pub previous_audio: Option<&'static str>,
    pub previous_video: Option<&'static str>,
    pub previous_content: Option<&'static str>,
    pub observed_at: chrono::DateTime<chrono::Utc>,
    pub previous_poll_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Presence kinds only: when it happened (the Chime timestamp, or inside the window).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub occurred_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Presence kinds only: `meeting_event`, or `poll` for a boundary a poll proved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<&'static str>,
    /// Presence kinds only: whether no event gave the boundary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inferred: Option<bool>,
    /// Presence kinds only, when inferred: the window in which it happened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inferred_from: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inferred_to: Option<chrono::DateTime<chrono::Utc>>,
    /// `connected` only, from the event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_type: Option<String>,
}

/// The payload of the Postgres `NOTIFY` on the events channel, one per transaction that
/// recorded events (all of one meeting). Listeners read the rows themselves: a payload is
/// limited to 8000 bytes, and a listener may have missed some.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyPayload {
    pub meeting_id: String,
    pub first_event_id: i64,
    pub last_event_id: i64,
}

impl NotifyPayload {
    /// The payload as sent: `{"meeting_id":"…","first_event_id":N,"last_event_id":M}`.
    ///
    /// # Errors
    /// Never in practice (the fields are plain strings and numbers); serde's error otherwise.
    pub fn to_json(&self) -> serde_json::Result<String> {
        serde_json::to_string(self)
    }
}

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
    pub fn matches(&self, e: &EventJson) -> bool {
        self.meeting
            .as_ref()
            .is_none_or(|m| m.as_str() == e.meeting_id)
            && (self.kinds.is_empty() || self.kinds.contains(&e.kind))
            && (self.meeting_labels.is_empty()
                || e.meeting_label
                    .as_ref()
                    .is_some_and(|l| self.meeting_labels.contains(l)))
            && (self.external_user_ids.is_empty()
                || self
                    .external_user_ids
                    .iter()
                    .any(|p| glob_matches(p, &e.external_user_id)))
    }
}

pub use crate::glob::glob_matches;

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

    #[test]
    fn the_notify_payload_keeps_its_field_names() {
        let payload = NotifyPayload {
            meeting_id: "m".into(),
            first_event_id: 1,
            last_event_id: 2,
        };
        assert_eq!(
            payload.to_json().unwrap(),
            r#"{"meeting_id":"m","first_event_id":1,"last_event_id":2}"#
        );
    }
}
