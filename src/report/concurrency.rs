//! How many attendees were present at once, computed from `attendance_sessions` rows. Pure.
//!
//! The rules, which the peak query of docs/analysts.md follows too:
//! - A session counts from its `joined_at` (inclusive) to its `left_at` (exclusive).
//! - A session still open (`left_at` NULL) counts until the report is made: it never leaves the
//!   curve. Ending or stopping a meeting closes every session, so only an active meeting has
//!   open sessions.
//! - Events at the same instant are applied together, leaves before joins, and the count is
//!   read after all of them. One poll records every change it saw at one `observed_at`, so a
//!   person leaving and another joining in the same poll never overlap, and a session that
//!   began and ended at the same instant never counts.

use chrono::{DateTime, Utc};

use crate::store::SessionRow;

/// The count of attendees present from `at` until the next point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Point {
    pub at: DateTime<Utc>,
    pub count: usize,
}

/// The concurrency curve of one meeting and its peak.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Concurrency {
    /// The most attendees present at once (0 without sessions).
    pub peak: usize,
    /// The first instant the peak was reached; `None` without sessions.
    pub peak_at: Option<DateTime<Utc>>,
    /// One point per instant the count changed, in time order.
    pub points: Vec<Point>,
}

impl Concurrency {
    /// The curve of `sessions` (any order).
    pub fn from_sessions(sessions: &[SessionRow]) -> Self {
        // (instant, change); sorting by both puts -1 (leave) before +1 (join) at one instant.
        let mut edges: Vec<(DateTime<Utc>, i8)> = Vec::with_capacity(sessions.len() * 2);
        for s in sessions {
            edges.push((s.joined_at, 1));
            if let Some(left) = s.left_at {
                edges.push((left, -1));
            }
        }
        edges.sort_unstable();
        let mut curve = Concurrency::default();
        let mut count: i64 = 0;
        let mut i = 0;
        while i < edges.len() {
            let at = edges[i].0;
            while i < edges.len() && edges[i].0 == at {
                count += i64::from(edges[i].1);
                i += 1;
            }
            // Never negative: every leave has its join at or before it.
            let now = usize::try_from(count).unwrap_or(0);
            if curve.points.last().map_or(0, |p| p.count) != now {
                curve.points.push(Point { at, count: now });
            }
            if now > curve.peak {
                curve.peak = now;
                curve.peak_at = Some(at);
            }
        }
        curve
    }

    /// How many were present at `t` (after every change at `t`).
    pub fn count_at(&self, t: DateTime<Utc>) -> usize {
        self.points
            .iter()
            .take_while(|p| p.at <= t)
            .last()
            .map_or(0, |p| p.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AttendeeId, ExternalUserId, MeetingId};
    use chrono::TimeDelta;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    fn session(n: u32, joined: i64, left: Option<i64>) -> SessionRow {
        SessionRow {
            meeting_id: MeetingId::parse("00000000-0000-4000-8000-000000000001").unwrap(),
            attendee_id: AttendeeId::parse(&format!("aaaaaaaa-0000-4000-8000-{n:012x}")).unwrap(),
            external_user_id: ExternalUserId::new(format!("p{n}")),
            joined_at: t(joined),
            left_at: left.map(t),
            left_reason: None,
            duration_seconds: 0.0,
        }
    }

    #[test]
    fn a_leave_and_a_join_at_the_same_instant_do_not_overlap() {
        let c = Concurrency::from_sessions(&[session(1, 0, Some(10)), session(2, 10, Some(20))]);
        assert_eq!(c.peak, 1);
        assert_eq!(c.peak_at, Some(t(0)));
        assert_eq!(
            c.points,
            vec![
                Point { at: t(0), count: 1 },
                Point {
                    at: t(20),
                    count: 0
                }
            ]
        );
    }

    #[test]
    fn the_peak_is_when_it_was_first_reached_and_open_sessions_stay() {
        let c = Concurrency::from_sessions(&[
            session(1, 0, None),
            session(2, 5, Some(8)),
            session(3, 9, Some(12)),
            session(4, 30, None),
        ]);
        assert_eq!((c.peak, c.peak_at), (2, Some(t(5))));
        assert_eq!(c.count_at(t(31)), 2);
        assert_eq!(c.count_at(t(8)), 1);
        assert_eq!(c.count_at(t(0) - TimeDelta::seconds(1)), 0);
    }

    #[test]
    fn a_session_of_no_length_never_counts() {
        let c = Concurrency::from_sessions(&[session(1, 5, Some(5))]);
        assert_eq!((c.peak, c.peak_at), (0, None));
        assert!(c.points.is_empty());
    }
}
