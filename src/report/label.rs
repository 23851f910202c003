//! Attendance across the meetings of one label, per person, inside a time window. Pure.
//!
//! The rules:
//! - The window is `[since, until)`; either end may be open.
//! - A session is in the window when it overlaps it; a session still open lasts until `now`.
//! - A meeting is *held* in the window when at least one of its sessions is in it (a meeting
//!   nobody attended has no activity, so it is not counted).
//! - A person *attended* a meeting when one of their sessions of it is in the window. Their
//!   time is the sum of their sessions' time inside the window; first and last seen are the
//!   first join and last leave of those sessions (last seen is `None` while one is open).
//! - Where a meeting has presence for a person (rows of `presence_sessions`), their time in
//!   it is their connected time inside the window instead of their roster time; whether they
//!   attended is still decided by the roster.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};

use crate::domain::{ExternalUserId, MeetingId};
use crate::store::{MeetingStatus, PresenceSessionRow, SessionRow, TrackedMeeting};

/// `[since, until)`, each end optional.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Window {
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

impl Window {
    /// Whether a session from `start` to `end` overlaps the window (a session of no length
    /// counts when its instant is inside).
    pub fn holds(&self, start: DateTime<Utc>, end: DateTime<Utc>) -> bool {
        self.until.is_none_or(|u| start < u) && self.since.is_none_or(|s| end > s || start >= s)
    }

    /// Seconds of `start..end` inside the window.
    pub fn seconds_within(&self, start: DateTime<Utc>, end: DateTime<Utc>) -> f64 {
        let start = self.since.map_or(start, |s| start.max(s));
        let end = self.until.map_or(end, |u| end.min(u));
        ((end - start).num_microseconds().unwrap_or(0) as f64 / 1e6).max(0.0)
    }
}

/// A meeting of the label held in the window.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HeldMeeting {
    pub meeting_id: MeetingId,
    pub status: MeetingStatus,
    /// The first join among its sessions in the window.
    pub first_joined_at: DateTime<Utc>,
    /// How many people attended it in the window.
    pub people: usize,
}

/// One person's attendance of one held meeting.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Attended {
    pub meeting_id: MeetingId,
    pub seconds: f64,
    /// `seconds` is connected time (the meeting has presence for the person), not roster
    /// time. Absent from JSON when false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub connected: bool,
}

/// One person across the label's meetings.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PersonAttendance {
    pub external_user_id: ExternalUserId,
    pub meetings_attended: usize,
    pub meetings_held: usize,
    pub total_seconds: f64,
    /// How many of the meetings attended count connected time. Absent from JSON when zero.
    #[serde(skip_serializing_if = "is_zero")]
    pub presence_meetings: usize,
    pub first_seen: DateTime<Utc>,
    /// `None` while one of their sessions is still open.
    pub last_seen: Option<DateTime<Utc>>,
    /// Ordered like [`LabelReport::meetings`].
    pub meetings: Vec<Attended>,
}

/// `report --label`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LabelReport {
    pub label: String,
    pub window: Window,
    pub generated_at: DateTime<Utc>,
    /// Ordered by first join in the window, then id.
    pub meetings: Vec<HeldMeeting>,
    /// Ordered by first seen, then external user id.
    pub people: Vec<PersonAttendance>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl LabelReport {
    /// Builds the report from the label's meetings and all their sessions (any order), without
    /// presence.
    pub fn new(
        label: &str,
        window: Window,
        meetings: &[TrackedMeeting],
        sessions: &[SessionRow],
        now: DateTime<Utc>,
    ) -> Self {
        Self::with_presence(label, window, meetings, sessions, &[], now)
    }

    /// Builds the report from the label's meetings, all their sessions and all their presence
    /// sessions (any order): connected time replaces roster time where presence exists.
    pub fn with_presence(
        label: &str,
        window: Window,
        meetings: &[TrackedMeeting],
        sessions: &[SessionRow],
        presence: &[PresenceSessionRow],
        now: DateTime<Utc>,
    ) -> Self {
        let mut connected: HashMap<(&MeetingId, &ExternalUserId), f64> = HashMap::new();
        for p in presence {
            let end = p.disconnected_at.unwrap_or(now).max(p.connected_at);
            *connected
                .entry((&p.meeting_id, &p.external_user_id))
                .or_default() += window.seconds_within(p.connected_at, end);
        }
        let status: HashMap<&MeetingId, MeetingStatus> =
            meetings.iter().map(|m| (&m.meeting_id, m.status)).collect();
        let in_window: Vec<&SessionRow> = sessions
            .iter()
            .filter(|s| status.contains_key(&s.meeting_id))
            .filter(|s| window.holds(s.joined_at, s.left_at.unwrap_or(now).max(s.joined_at)))
            .collect();

        let mut held: BTreeMap<&MeetingId, (DateTime<Utc>, Vec<&ExternalUserId>)> = BTreeMap::new();
        for s in &in_window {
            let entry = held
                .entry(&s.meeting_id)
                .or_insert((s.joined_at, Vec::new()));
            entry.0 = entry.0.min(s.joined_at);
            entry.1.push(&s.external_user_id);
        }
        let mut held_meetings: Vec<HeldMeeting> = held
            .into_iter()
            .map(|(id, (first, mut people))| {
                people.sort();
                people.dedup();
                HeldMeeting {
                    meeting_id: id.clone(),
                    status: status[id],
                    first_joined_at: first,
                    people: people.len(),
                }
            })
            .collect();
        held_meetings.sort_by(|a, b| {
            (a.first_joined_at, &a.meeting_id).cmp(&(b.first_joined_at, &b.meeting_id))
        });
        let column: HashMap<&MeetingId, usize> = held_meetings
            .iter()
            .enumerate()
            .map(|(i, m)| (&m.meeting_id, i))
            .collect();

        let mut by_person: BTreeMap<&ExternalUserId, Vec<&SessionRow>> = BTreeMap::new();
        for s in &in_window {
            by_person.entry(&s.external_user_id).or_default().push(s);
        }
        let mut people: Vec<PersonAttendance> = by_person
            .into_iter()
            .map(|(person, sessions)| {
                let mut seconds: Vec<Option<f64>> = vec![None; held_meetings.len()];
                for s in &sessions {
                    let end = s.left_at.unwrap_or(now).max(s.joined_at);
                    let cell = &mut seconds[column[&s.meeting_id]];
                    *cell = Some(cell.unwrap_or(0.0) + window.seconds_within(s.joined_at, end));
                }
                let last_seen = if sessions.iter().all(|s| s.left_at.is_some()) {
                    sessions.iter().filter_map(|s| s.left_at).max()
                } else {
                    None
                };
                let meetings: Vec<Attended> = seconds
                    .iter()
                    .zip(&held_meetings)
                    .filter_map(|(secs, m)| {
                        secs.map(|roster| {
                            let presence = connected.get(&(&m.meeting_id, person)).copied();
                            Attended {
                                meeting_id: m.meeting_id.clone(),
                                seconds: presence.unwrap_or(roster),
                                connected: presence.is_some(),
                            }
                        })
                    })
                    .collect();
                PersonAttendance {
                    external_user_id: person.clone(),
                    meetings_attended: meetings.len(),
                    meetings_held: held_meetings.len(),
                    total_seconds: meetings.iter().map(|a| a.seconds).sum(),
                    presence_meetings: meetings.iter().filter(|a| a.connected).count(),
                    first_seen: sessions.iter().map(|s| s.joined_at).min().unwrap_or(now),
                    last_seen,
                    meetings,
                }
            })
            .collect();
        people.sort_by(|a, b| {
            (a.first_seen, &a.external_user_id).cmp(&(b.first_seen, &b.external_user_id))
        });
        LabelReport {
            label: label.to_owned(),
            window,
            generated_at: now,
            meetings: held_meetings,
            people,
        }
    }

    /// The person's seconds in each held meeting (`None`: did not attend), in meeting order.
    pub fn grid_row(&self, person: &PersonAttendance) -> Vec<Option<f64>> {
        self.grid_cells(person)
            .into_iter()
            .map(|a| a.map(|a| a.seconds))
            .collect()
    }

    /// The person's attendance of each held meeting (`None`: did not attend), in meeting order.
    pub fn grid_cells<'a>(&self, person: &'a PersonAttendance) -> Vec<Option<&'a Attended>> {
        self.meetings
            .iter()
            .map(|m| {
                person
                    .meetings
                    .iter()
                    .find(|a| a.meeting_id == m.meeting_id)
            })
            .collect()
    }

    /// Whether any time in the report is connected time.
    pub fn uses_presence(&self) -> bool {
        self.people.iter().any(|p| p.presence_meetings > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    #[test]
    fn a_window_counts_overlapping_sessions_and_clips_their_time() {
        let w = Window {
            since: Some(t(10)),
            until: Some(t(20)),
        };
        assert!(w.holds(t(5), t(15)));
        assert!(!w.holds(t(0), t(10)), "ends exactly when the window starts");
        assert!(
            !w.holds(t(20), t(30)),
            "starts exactly when the window ends"
        );
        assert!(w.holds(t(10), t(10)), "an instant at the start is inside");
        assert_eq!(w.seconds_within(t(5), t(15)), 5.0);
        assert_eq!(w.seconds_within(t(0), t(40)), 10.0);
        assert_eq!(Window::default().seconds_within(t(0), t(40)), 40.0);
    }
}
