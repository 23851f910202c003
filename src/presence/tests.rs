use std::collections::HashSet;

use chrono::TimeZone;
use proptest::prelude::*;

use super::*;
use crate::domain::{MeetingId, Region};
use crate::lifecycle::EventAttendee;

const MEETING: &str = "4f1c7a2e-0b3d-4c5e-9f60-7a8b9c0d1e2f";
const ATTENDEE: &str = "0a1b2c3d-0b3d-4c5e-9f60-7a8b9c0d1e2f";

fn t(seconds: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 4, 12, 0, 0).unwrap() + TimeDelta::seconds(seconds)
}

fn attendee() -> AttendeeId {
    AttendeeId::parse(ATTENDEE).unwrap()
}

fn event(n: u32, event_type: EventType, at: DateTime<Utc>) -> MeetingEvent {
    MeetingEvent {
        id: format!("event-{n}"),
        event_type,
        region: Region::parse("us-east-1").unwrap(),
        time: at,
        occurred_at: at,
        meeting_id: MeetingId::parse(MEETING).unwrap(),
        external_meeting_id: None,
        media_region: None,
        attendee: Some(EventAttendee {
            attendee_id: attendee(),
            external_user_id: None,
        }),
        network_type: event_type.has_network_type().then(|| "Voip".to_owned()),
        capabilities: None,
        success: None,
    }
}

fn kinds(changes: &[PresenceChange]) -> Vec<&'static str> {
    changes.iter().map(|c| c.kind.as_str()).collect()
}

fn applied(v: Verdict) -> Vec<PresenceChange> {
    match v {
        Verdict::Applied(c) => c,
        other => panic!("expected Applied, got {other:?}"),
    }
}

#[test]
fn joined_then_left_is_one_session_from_the_events() {
    let mut s = AttendeePresence::default();
    let c = applied(apply_event(
        &mut s,
        &event(1, EventType::AttendeeJoined, t(10)),
        t(0),
    ));
    assert_eq!(kinds(&c), ["connected"]);
    assert_eq!(c[0].occurred_at, t(10));
    assert_eq!(c[0].inferred, None);
    assert_eq!(c[0].network_type.as_deref(), Some("Voip"));
    let c = applied(apply_event(
        &mut s,
        &event(2, EventType::AttendeeLeft, t(70)),
        t(0),
    ));
    assert_eq!(kinds(&c), ["disconnected"]);
    assert_eq!(c[0].reason, Some(DisconnectReason::Left));
    assert_eq!(
        s,
        AttendeePresence {
            last_at: Some(t(70)),
            ..Default::default()
        }
    );
}

#[test]
fn dropped_then_joined_is_two_sessions_with_the_gap_between() {
    let mut s = AttendeePresence::default();
    applied(apply_event(
        &mut s,
        &event(1, EventType::AttendeeJoined, t(10)),
        t(0),
    ));
    let c = applied(apply_event(
        &mut s,
        &event(2, EventType::AttendeeDropped, t(20)),
        t(0),
    ));
    assert_eq!(c[0].reason, Some(DisconnectReason::Dropped));
    let c = applied(apply_event(
        &mut s,
        &event(3, EventType::AttendeeJoined, t(35)),
        t(0),
    ));
    assert_eq!(kinds(&c), ["connected"]);
    assert_eq!(c[0].occurred_at, t(35));
}

#[test]
fn a_hand_off_starts_no_new_session() {
    let mut s = AttendeePresence::default();
    applied(apply_event(
        &mut s,
        &event(1, EventType::AttendeeJoined, t(10)),
        t(0),
    ));
    assert!(
        applied(apply_event(
            &mut s,
            &event(2, EventType::AttendeeAuthorized, t(20)),
            t(0)
        ))
        .is_empty()
    );
    assert!(
        applied(apply_event(
            &mut s,
            &event(3, EventType::AttendeeJoined, t(21)),
            t(0)
        ))
        .is_empty()
    );
    assert_eq!(s.connected_since, Some(t(10)));
}

#[test]
fn a_left_without_joined_opens_an_inferred_session_bounded_by_the_roster() {
    let mut s = AttendeePresence::default();
    let c = applied(apply_event(
        &mut s,
        &event(1, EventType::AttendeeLeft, t(90)),
        t(5),
    ));
    assert_eq!(kinds(&c), ["connected", "disconnected"]);
    assert_eq!(c[0].occurred_at, t(5));
    assert_eq!(
        c[0].inferred,
        Some(Window {
            from: t(5),
            to: t(90)
        })
    );
    assert_eq!(c[1].inferred, None);
}

#[test]
fn video_and_content_are_marks_inside_the_session_and_stop_with_it() {
    let mut s = AttendeePresence::default();
    applied(apply_event(
        &mut s,
        &event(1, EventType::AttendeeJoined, t(10)),
        t(0),
    ));
    let c = applied(apply_event(
        &mut s,
        &event(2, EventType::AttendeeVideoStarted, t(11)),
        t(0),
    ));
    assert_eq!(kinds(&c), ["video_started"]);
    let c = applied(apply_event(
        &mut s,
        &event(3, EventType::AttendeeContentJoined, t(12)),
        t(0),
    ));
    assert_eq!(kinds(&c), ["content_started"]);
    let c = applied(apply_event(
        &mut s,
        &event(4, EventType::AttendeeLeft, t(30)),
        t(0),
    ));
    assert_eq!(
        kinds(&c),
        ["video_stopped", "content_stopped", "disconnected"]
    );
    assert!(c.iter().all(|c| c.occurred_at == t(30)));
}

#[test]
fn an_event_older_than_the_last_applied_is_stale_and_changes_nothing() {
    let mut s = AttendeePresence::default();
    applied(apply_event(
        &mut s,
        &event(1, EventType::AttendeeJoined, t(10)),
        t(0),
    ));
    applied(apply_event(
        &mut s,
        &event(2, EventType::AttendeeLeft, t(50)),
        t(0),
    ));
    let before = s.clone();
    assert_eq!(
        apply_event(&mut s, &event(3, EventType::AttendeeJoined, t(40)), t(0)),
        Verdict::Stale
    );
    assert_eq!(s, before);
}

#[test]
fn roster_and_meeting_events_are_not_presence() {
    let mut s = AttendeePresence::default();
    for ty in [
        EventType::AttendeeAdded,
        EventType::AttendeeDeleted,
        EventType::AttendeeCapabilitiesUpdated,
    ] {
        assert_eq!(
            apply_event(&mut s, &event(1, ty, t(1)), t(0)),
            Verdict::NotPresence
        );
    }
}

#[test]
fn a_poll_closes_a_session_whose_left_never_came_inside_the_poll_window() {
    let mut s = AttendeePresence::default();
    applied(apply_event(
        &mut s,
        &event(1, EventType::AttendeeJoined, t(10)),
        t(0),
    ));
    applied(apply_event(
        &mut s,
        &event(2, EventType::AttendeeVideoStarted, t(15)),
        t(0),
    ));
    let c = close_by_poll(
        &mut s,
        &attendee(),
        DisconnectReason::Removed,
        Some(t(100)),
        t(130),
    );
    assert_eq!(kinds(&c), ["video_stopped", "disconnected"]);
    let window = Window {
        from: t(100),
        to: t(130),
    };
    assert!(
        c.iter()
            .all(|c| c.source == Source::Poll && c.inferred == Some(window))
    );
    assert!(
        c.iter()
            .all(|c| c.occurred_at >= window.from && c.occurred_at <= window.to)
    );
    assert!(
        close_by_poll(
            &mut s,
            &attendee(),
            DisconnectReason::MeetingEnded,
            Some(t(130)),
            t(160)
        )
        .is_empty()
    );
}

#[test]
fn the_poll_window_never_starts_before_the_last_recorded_change() {
    let mut s = AttendeePresence::default();
    applied(apply_event(
        &mut s,
        &event(1, EventType::AttendeeJoined, t(120)),
        t(0),
    ));
    let c = close_by_poll(
        &mut s,
        &attendee(),
        DisconnectReason::MeetingEnded,
        Some(t(100)),
        t(130),
    );
    assert_eq!(
        c[0].inferred,
        Some(Window {
            from: t(120),
            to: t(130)
        })
    );
}

#[test]
fn reorder_releases_held_events_in_timestamp_order() {
    let mut r = Reorder::new(TimeDelta::seconds(5));
    r.push(event(2, EventType::AttendeeLeft, t(20)), t(21));
    r.push(event(1, EventType::AttendeeJoined, t(10)), t(23));
    r.push(event(1, EventType::AttendeeJoined, t(10)), t(24));
    assert!(r.release(t(25)).is_empty());
    assert_eq!(r.next_release(), Some(t(26)));
    let out = r.release(t(26));
    assert_eq!(
        out.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["event-1", "event-2"]
    );
    assert!(r.is_empty());
}

/// A person's true timeline: sessions (start, end, how it ended) and video spans inside.
#[derive(Debug, Clone)]
struct Truth {
    sessions: Vec<(i64, i64, bool)>,
}

fn truth() -> impl Strategy<Value = Truth> {
    prop::collection::vec((1i64..300, 1i64..600, any::<bool>()), 0..6).prop_map(|spans| {
        let mut at = 0;
        let mut sessions = Vec::new();
        for (gap, len, dropped) in spans {
            let start = at + gap;
            let end = start + len;
            sessions.push((start, end, dropped));
            at = end;
        }
        Truth { sessions }
    })
}

proptest! {
    /// Lost, duplicated and reordered events: no session twice, none overlapping or negative,
    /// every session whose two events arrived exactly as it was, and every other boundary
    /// marked inferred inside its window.
    #[test]
    fn lossy_delivery_never_invents_or_overlaps_sessions(
        truth in truth(),
        fates in prop::collection::vec((0u8..100, 0u8..100, 0i64..5), 12),
    ) {
        let mut events = Vec::new();
        let mut n = 0;
        for (start, end, dropped) in &truth.sessions {
            n += 1;
            events.push(event(n, EventType::AttendeeJoined, t(*start)));
            n += 1;
            let ty = if *dropped { EventType::AttendeeDropped } else { EventType::AttendeeLeft };
            events.push(event(n, ty, t(*end)));
        }
        // Deliveries: 20 % lost, 10 % twice, each delayed up to 4 s.
        let mut arrivals = Vec::new();
        let mut delivered = HashSet::new();
        for (i, e) in events.iter().enumerate() {
            let (loss, dup, delay) = fates[i % fates.len()];
            if loss < 20 { continue; }
            delivered.insert(e.id.clone());
            let arrive = e.occurred_at + TimeDelta::seconds(delay);
            arrivals.push((arrive, e.clone()));
            if dup < 10 { arrivals.push((arrive + TimeDelta::seconds(1), e.clone())); }
        }
        arrivals.sort_by_key(|(at, _)| *at);
        let mut reorder = Reorder::new(TimeDelta::seconds(5));
        let mut applied_ids = HashSet::new();
        let mut state = AttendeePresence::default();
        let mut changes = Vec::new();
        let mut apply = |e: MeetingEvent, state: &mut AttendeePresence, changes: &mut Vec<PresenceChange>| {
            if applied_ids.insert(e.id.clone())
                && let Verdict::Applied(c) = apply_event(state, &e, t(0))
            {
                changes.extend(c);
            }
        };
        for (at, e) in arrivals {
            for r in reorder.release(at) { apply(r, &mut state, &mut changes); }
            reorder.push(e, at);
        }
        for r in reorder.drain() { apply(r, &mut state, &mut changes); }
        let end = truth.sessions.last().map_or(10, |s| s.1 + 10);
        changes.extend(close_by_poll(&mut state, &attendee(), DisconnectReason::MeetingEnded, Some(t(end - 5)), t(end)));

        // Sessions from the changes.
        let mut sessions: Vec<(PresenceChange, PresenceChange)> = Vec::new();
        let mut open: Option<PresenceChange> = None;
        for c in &changes {
            match c.kind {
                PresenceKind::Connected => { prop_assert!(open.is_none(), "two open sessions"); open = Some(c.clone()); }
                PresenceKind::Disconnected => {
                    let start = open.take();
                    prop_assert!(start.is_some(), "a disconnect without a session");
                    sessions.push((start.unwrap(), c.clone()));
                }
                _ => {}
            }
            if let Some(w) = c.inferred {
                prop_assert!(w.from <= c.occurred_at && c.occurred_at <= w.to, "{c:?} outside its window");
            }
        }
        prop_assert!(open.is_none(), "a session left open after the meeting ended");
        for pair in sessions.windows(2) {
            prop_assert!(pair[0].1.occurred_at <= pair[1].0.occurred_at, "overlapping sessions");
        }
        for (start, stop) in &sessions {
            prop_assert!(start.occurred_at <= stop.occurred_at, "negative session");
        }
        // Each true session whose Joined and end event both arrived is recorded exactly.
        let mut n = 0;
        for (start, end, _) in &truth.sessions {
            let (j, l) = (format!("event-{}", n + 1), format!("event-{}", n + 2));
            n += 2;
            if delivered.contains(&j) && delivered.contains(&l) {
                prop_assert!(
                    sessions.iter().any(|(a, b)| a.occurred_at == t(*start) && a.inferred.is_none()
                        && b.occurred_at == t(*end) && b.inferred.is_none()),
                    "session {start}..{end} not recorded exactly: {sessions:?}"
                );
            }
        }
    }
}

#[test]
fn a_second_joined_without_a_hand_off_ends_the_open_session_inferred() {
    let mut s = AttendeePresence::default();
    applied(apply_event(
        &mut s,
        &event(1, EventType::AttendeeJoined, t(10)),
        t(0),
    ));
    let c = applied(apply_event(
        &mut s,
        &event(2, EventType::AttendeeJoined, t(40)),
        t(0),
    ));
    assert_eq!(kinds(&c), ["disconnected", "connected"]);
    assert_eq!(
        c[0].inferred,
        Some(Window {
            from: t(10),
            to: t(40)
        })
    );
    assert_eq!(c[1].inferred, None);
    assert_eq!(c[1].occurred_at, t(40));
}
