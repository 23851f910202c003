//! Presence in reports: who was connected, read from the presence rows of `roster_events`.
//! Pure.
//!
//! The pairing is the views' (`presence_sessions`, `presence_media_spans`): a `connected` row
//! starts a session that the attendee's next `disconnected` row (by `event_id`) ends; a
//! `video_started` or `content_started` row a span that the next matching `*_stopped` ends.
//! What is still open lasts until the report is made, as the views' `now()`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::domain::{AttendeeId, EventKind, ExternalUserId};
use crate::presence::{DisconnectReason, Window};
use crate::store::StoredEvent;

/// One presence session: from a `connected` row to the next `disconnected` row.
#[derive(Clone, Debug, PartialEq)]
pub struct PresenceSession {
    pub attendee_id: AttendeeId,
    pub external_user_id: ExternalUserId,
    pub connected_at: DateTime<Utc>,
    /// `None` while the session is open.
    pub disconnected_at: Option<DateTime<Utc>>,
    pub disconnect_reason: Option<DisconnectReason>,
    pub network_type: Option<String>,
    /// The window of an inferred start (no event gave it).
    pub start_inferred: Option<Window>,
    /// The window of an inferred end.
    pub end_inferred: Option<Window>,
}

impl PresenceSession {
    /// Its end, or `now` while open; never before its start.
    pub fn end(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        self.disconnected_at.unwrap_or(now).max(self.connected_at)
    }

    pub fn seconds(&self, now: DateTime<Utc>) -> f64 {
        seconds_between(self.connected_at, self.end(now))
    }

    /// The parts of the session that an inferred boundary makes uncertain: each inferred
    /// window clipped to the session.
    pub fn inferred_parts(&self, now: DateTime<Utc>) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
        let (start, end) = (self.connected_at, self.end(now));
        [self.start_inferred, self.end_inferred]
            .into_iter()
            .flatten()
            .map(|w| (w.from.max(start), w.to.min(end)))
            .filter(|(from, to)| from < to)
            .collect()
    }
}

/// What a media span carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Medium {
    Video,
    Content,
}

impl Medium {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Video => "video",
            Self::Content => "content",
        }
    }
}

/// One video or content span: from a `*_started` row to the next matching `*_stopped` row.
#[derive(Clone, Debug, PartialEq)]
pub struct MediaSpan {
    pub attendee_id: AttendeeId,
    pub external_user_id: ExternalUserId,
    pub medium: Medium,
    pub started_at: DateTime<Utc>,
    /// `None` while the span is open.
    pub stopped_at: Option<DateTime<Utc>>,
}

impl MediaSpan {
    pub fn end(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        self.stopped_at.unwrap_or(now).max(self.started_at)
    }

    pub fn seconds(&self, now: DateTime<Utc>) -> f64 {
        seconds_between(self.started_at, self.end(now))
    }
}

/// One person's (or one attendee's) presence totals.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Totals {
    /// Presence sessions: a drop and a reconnect make two.
    pub sessions: usize,
    pub connected_seconds: f64,
    pub video_seconds: f64,
    pub content_seconds: f64,
}

/// A meeting's presence: empty when no meeting events were read for it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Presence {
    /// Ordered by `connected_at`, then attendee id.
    pub sessions: Vec<PresenceSession>,
    /// Ordered by `started_at`, then attendee id.
    pub media: Vec<MediaSpan>,
}

impl Presence {
    /// From one meeting's events in `event_id` order (the roster's rows are skipped).
    pub fn from_events(events: &[StoredEvent]) -> Self {
        // Walking backwards, the next `disconnected`/`*_stopped` row of each attendee is at hand.
        let mut next: HashMap<(&AttendeeId, EventKind), &StoredEvent> = HashMap::new();
        let mut sessions = Vec::new();
        let mut media = Vec::new();
        for e in events.iter().rev() {
            let Some(facts) = &e.presence else { continue };
            let closing = |kind| next.get(&(&e.attendee_id, kind)).copied();
            let occurred = |e: &StoredEvent| e.presence.as_ref().map(|p| p.occurred_at);
            match e.kind {
                EventKind::Connected => {
                    let end = closing(EventKind::Disconnected);
                    let end_facts = end.and_then(|d| d.presence.as_ref());
                    sessions.push(PresenceSession {
                        attendee_id: e.attendee_id.clone(),
                        external_user_id: e.external_user_id.clone(),
                        connected_at: facts.occurred_at,
                        disconnected_at: end.and_then(occurred),
                        disconnect_reason: end_facts.and_then(|f| f.reason),
                        network_type: facts.network_type.clone(),
                        start_inferred: facts.inferred,
                        end_inferred: end_facts.and_then(|f| f.inferred),
                    });
                }
                EventKind::VideoStarted | EventKind::ContentStarted => {
                    let (medium, stop) = if e.kind == EventKind::VideoStarted {
                        (Medium::Video, EventKind::VideoStopped)
                    } else {
                        (Medium::Content, EventKind::ContentStopped)
                    };
                    media.push(MediaSpan {
                        attendee_id: e.attendee_id.clone(),
                        external_user_id: e.external_user_id.clone(),
                        medium,
                        started_at: facts.occurred_at,
                        stopped_at: closing(stop).and_then(occurred),
                    });
                }
                kind @ (EventKind::Disconnected
                | EventKind::VideoStopped
                | EventKind::ContentStopped) => {
                    next.insert((&e.attendee_id, kind), e);
                }
                _ => {}
            }
        }
        sessions.sort_by(|a, b| {
            (a.connected_at, &a.attendee_id).cmp(&(b.connected_at, &b.attendee_id))
        });
        media.sort_by(|a, b| (a.started_at, &a.attendee_id).cmp(&(b.started_at, &b.attendee_id)));
        Self { sessions, media }
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty() && self.media.is_empty()
    }

    /// Totals per person; a person without presence rows is absent.
    pub fn by_person(&self, now: DateTime<Utc>) -> HashMap<&ExternalUserId, Totals> {
        self.totals(now, |_, user| user)
    }

    /// Totals per attendee; an attendee without presence rows is absent.
    pub fn by_attendee(&self, now: DateTime<Utc>) -> HashMap<&AttendeeId, Totals> {
        self.totals(now, |id, _| id)
    }

    fn totals<'a, K: std::hash::Hash + Eq>(
        &'a self,
        now: DateTime<Utc>,
        key: impl Fn(&'a AttendeeId, &'a ExternalUserId) -> K,
    ) -> HashMap<K, Totals> {
        let mut out: HashMap<K, Totals> = HashMap::new();
        for s in &self.sessions {
            let t = out
                .entry(key(&s.attendee_id, &s.external_user_id))
                .or_default();
            t.sessions += 1;
            t.connected_seconds += s.seconds(now);
        }
        for m in &self.media {
            let t = out
                .entry(key(&m.attendee_id, &m.external_user_id))
                .or_default();
            match m.medium {
                Medium::Video => t.video_seconds += m.seconds(now),
                Medium::Content => t.content_seconds += m.seconds(now),
            }
        }
        out
    }
}

fn seconds_between(a: DateTime<Utc>, b: DateTime<Utc>) -> f64 {
    ((b - a).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::MeetingId;
    use crate::presence::Source;
    use crate::store::PresenceFacts;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    fn row(id: i64, who: u32, kind: EventKind, at: i64) -> StoredEvent {
        StoredEvent {
            event_id: id,
            meeting_id: MeetingId::parse("0000000a-0000-4000-8000-000000000000").unwrap(),
            attendee_id: AttendeeId::parse(&format!("aaaaaaaa-0000-4000-8000-{who:012x}")).unwrap(),
            external_user_id: ExternalUserId::new(format!("user{who}")),
            kind,
            after: None,
            before: None,
            reason: None,
            observed_at: t(at),
            previous_poll_at: None,
            presence: Some(PresenceFacts {
                occurred_at: t(at),
                source: Source::MeetingEvent,
                inferred: None,
                network_type: None,
                reason: (kind == EventKind::Disconnected).then_some(DisconnectReason::Dropped),
            }),
        }
    }

    #[test]
    fn sessions_and_spans_pair_like_the_views() {
        use EventKind::*;
        let events = [
            row(1, 1, Connected, 0),
            row(2, 2, Connected, 5),
            row(3, 1, VideoStarted, 10),
            row(4, 1, Disconnected, 20),
            row(5, 1, VideoStopped, 20),
            row(6, 1, Connected, 30),
            row(7, 2, ContentStarted, 40),
        ];
        let p = Presence::from_events(&events);
        let ends: Vec<_> = p.sessions.iter().map(|s| s.disconnected_at).collect();
        assert_eq!(ends, [Some(t(20)), None, None]);
        let totals = p.by_person(t(50));
        let one = totals[&ExternalUserId::new("user1")];
        assert_eq!((one.sessions, one.connected_seconds), (2, 40.0));
        assert_eq!(one.video_seconds, 10.0);
        let two = totals[&ExternalUserId::new("user2")];
        assert_eq!((two.connected_seconds, two.content_seconds), (45.0, 10.0));
    }

    #[test]
    fn only_the_inferred_windows_inside_a_session_are_uncertain() {
        let s = PresenceSession {
            attendee_id: AttendeeId::parse("aaaaaaaa-0000-4000-8000-000000000001").unwrap(),
            external_user_id: ExternalUserId::new("ana"),
            connected_at: t(10),
            disconnected_at: Some(t(100)),
            disconnect_reason: Some(DisconnectReason::Removed),
            network_type: None,
            start_inferred: None,
            end_inferred: Some(Window {
                from: t(70),
                to: t(100),
            }),
        };
        assert_eq!(s.inferred_parts(t(200)), [(t(70), t(100))]);
    }
}
