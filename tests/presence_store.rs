//! Presence recorded through the store on Postgres and SQLite: meeting events become
//! `connected`/`disconnected`/video/content rows in `roster_events`, polls close what the
//! events left open, and the views `presence_sessions` and `meeting_attendance` read them.

mod common;

use chrono::{DateTime, TimeDelta, Utc};
use common::TestDb;
use roster_sync::domain::{
    self, Attendee, AttendeeId, Capabilities, Change, EventKind, ExternalUserId, LeftReason,
    MeetingId, Region,
};
use roster_sync::lifecycle::{EventType, MeetingEvent};
use roster_sync::presence::Source;
use roster_sync::store::{ApplyOutcome, PollRecord, Store, StoredEvent};

fn meeting() -> MeetingId {
    MeetingId::parse("0000000a-0000-4000-8000-000000000000").unwrap()
}

fn attendee(n: u32, user: &str) -> Attendee {
    Attendee {
        attendee_id: AttendeeId::parse(&format!("aaaaaaaa-0000-4000-8000-{n:012x}")).unwrap(),
        external_user_id: ExternalUserId::new(user),
        capabilities: Capabilities::DEFAULT,
    }
}

fn start() -> DateTime<Utc> {
    domain::now() - TimeDelta::hours(1)
}

fn at(t0: DateTime<Utc>, s: i64) -> DateTime<Utc> {
    t0 + TimeDelta::seconds(s)
}

fn event(id: &str, ty: EventType, who: &Attendee, when: DateTime<Utc>) -> MeetingEvent {
    common::presence_event(id, ty, &meeting(), &who.attendee_id, when)
}

async fn poll(store: &Store, observed_at: DateTime<Utc>, changes: &[Change]) -> Vec<StoredEvent> {
    let id = meeting();
    let snapshot = store.snapshot(&id).await.unwrap();
    let rec = PollRecord {
        meeting_id: &id,
        expected_seq: snapshot.poll_seq,
        started_at: observed_at - TimeDelta::seconds(1),
        observed_at,
        previous_poll_at: snapshot.last_polled_at,
        changes,
    };
    match store.apply(rec).await.unwrap() {
        ApplyOutcome::Applied { events, .. } => events,
        ApplyOutcome::Conflict => panic!("unexpected conflict"),
    }
}

both_backends!(
    events_and_polls_make_presence_sessions_with_inferred_ends_marked,
    a_redelivered_event_is_recorded_once,
    events_of_attendees_the_roster_does_not_know_are_held_not_recorded,
    an_ended_meeting_closes_every_open_presence_session,
    events_of_an_ended_or_untracked_meeting_or_of_another_meetings_attendee_record_nothing,
);

async fn events_and_polls_make_presence_sessions_with_inferred_ends_marked(db: &TestDb) {
    let store = &db.store;
    let t0 = start();
    let (ana, ben) = (attendee(1, "ana"), attendee(2, "ben"));
    store
        .add_meeting(
            &meeting(),
            &Region::parse("us-east-1").unwrap(),
            None,
            t0,
            false,
        )
        .await
        .unwrap();
    poll(
        store,
        at(t0, 5),
        &[Change::joined(&ana), Change::joined(&ben)],
    )
    .await;

    let batch = [
        event("e1", EventType::AttendeeJoined, &ana, at(t0, 10)),
        event("e2", EventType::AttendeeVideoStarted, &ana, at(t0, 12)),
        event("e3", EventType::AttendeeJoined, &ben, at(t0, 20)),
        event("e4", EventType::AttendeeLeft, &ana, at(t0, 70)),
    ];
    let (stored, plan) = store
        .record_presence(&meeting(), &batch, at(t0, 71))
        .await
        .unwrap();
    assert!(plan.unknown.is_empty());
    let kinds: Vec<_> = stored.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "connected",
            "video_started",
            "connected",
            "video_stopped",
            "disconnected"
        ]
    );
    assert!(stored.iter().all(|e| {
        e.presence
            .as_ref()
            .is_some_and(|p| p.source == Source::MeetingEvent)
    }));

    // Ben's Left never arrives; a poll proves him deleted between t0+100 and t0+130.
    poll(store, at(t0, 100), &[]).await;
    let closed = poll(
        store,
        at(t0, 130),
        &[Change::left(&ben, LeftReason::Removed)],
    )
    .await;
    let last = closed.last().unwrap();
    assert_eq!(last.kind, EventKind::Disconnected);
    let facts = last.presence.as_ref().unwrap();
    assert_eq!(facts.source, Source::Poll);
    let window = facts.inferred.expect("an inferred end");
    assert!(
        window.from >= at(t0, 99) && window.to == at(t0, 130),
        "{window:?}"
    );

    // What analysts read.
    let sessions = db
        .raw
        .text_rows(
            "SELECT external_user_id || ' ' || coalesce(disconnect_reason, '-') || ' ' \
                    || CASE WHEN start_inferred THEN 'i' ELSE 'e' END \
                    || CASE WHEN end_inferred THEN 'i' ELSE 'e' END || ' ' \
                    || cast(round(duration_seconds) AS integer) \
             FROM presence_sessions ORDER BY connected_at",
        )
        .await;
    assert_eq!(sessions, ["ana left ee 60", "ben removed ei 110"]);
    let attendance = db
        .raw
        .text_rows(
            "SELECT external_user_id || ' ' || cast(round(connected_seconds) AS integer) || ' ' \
                    || cast(round(coalesce(video_seconds, 0)) AS integer) || ' ' \
                    || coalesce(cast(content_seconds AS text), 'none') \
             FROM meeting_attendance ORDER BY external_user_id",
        )
        .await;
    assert_eq!(attendance, ["ana 60 58 none", "ben 110 0 none"]);
    // The feed decodes them like any event.
    let all = store.events_since(0, 100).await.unwrap();
    assert_eq!(all.iter().filter(|e| e.kind.is_presence()).count(), 6);
}

async fn a_redelivered_event_is_recorded_once(db: &TestDb) {
    let store = &db.store;
    let t0 = start();
    let ana = attendee(1, "ana");
    store
        .add_meeting(
            &meeting(),
            &Region::parse("us-east-1").unwrap(),
            None,
            t0,
            false,
        )
        .await
        .unwrap();
    poll(store, at(t0, 5), &[Change::joined(&ana)]).await;
    let joined = event("e1", EventType::AttendeeJoined, &ana, at(t0, 10));
    let (first, _) = store
        .record_presence(&meeting(), std::slice::from_ref(&joined), at(t0, 11))
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    let (again, plan) = store
        .record_presence(&meeting(), &[joined.clone(), joined], at(t0, 12))
        .await
        .unwrap();
    assert!(again.is_empty());
    assert!(
        plan.outcomes.iter().all(|(_, o)| *o == "duplicate"),
        "{:?}",
        plan.outcomes
    );
    assert_eq!(
        db.raw
            .scalar("SELECT count(*) FROM roster_events WHERE kind = 'connected'")
            .await,
        1
    );
}

async fn events_of_attendees_the_roster_does_not_know_are_held_not_recorded(db: &TestDb) {
    let store = &db.store;
    let t0 = start();
    let (ana, stranger) = (attendee(1, "ana"), attendee(9, "stranger"));
    store
        .add_meeting(
            &meeting(),
            &Region::parse("us-east-1").unwrap(),
            None,
            t0,
            false,
        )
        .await
        .unwrap();
    poll(store, at(t0, 5), &[Change::joined(&ana)]).await;
    let e = event("e1", EventType::AttendeeJoined, &stranger, at(t0, 10));
    let (stored, plan) = store
        .record_presence(&meeting(), std::slice::from_ref(&e), at(t0, 11))
        .await
        .unwrap();
    assert!(stored.is_empty());
    assert_eq!(plan.unknown, std::slice::from_ref(&e));
    // Once a poll shows the attendee, the held event is recorded.
    poll(store, at(t0, 15), &[Change::joined(&stranger)]).await;
    let (stored, plan) = store
        .record_presence(&meeting(), &[e], at(t0, 16))
        .await
        .unwrap();
    assert!(plan.unknown.is_empty());
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].external_user_id.as_str(), "stranger");
}

async fn an_ended_meeting_closes_every_open_presence_session(db: &TestDb) {
    let store = &db.store;
    let t0 = start();
    let (ana, ben) = (attendee(1, "ana"), attendee(2, "ben"));
    store
        .add_meeting(
            &meeting(),
            &Region::parse("us-east-1").unwrap(),
            None,
            t0,
            false,
        )
        .await
        .unwrap();
    poll(
        store,
        at(t0, 5),
        &[Change::joined(&ana), Change::joined(&ben)],
    )
    .await;
    let batch = [
        event("e1", EventType::AttendeeJoined, &ana, at(t0, 10)),
        event("e2", EventType::AttendeeContentJoined, &ben, at(t0, 20)),
    ];
    store
        .record_presence(&meeting(), &batch, at(t0, 21))
        .await
        .unwrap();
    let seq = store.snapshot(&meeting()).await.unwrap().poll_seq;
    let ApplyOutcome::Applied { events, .. } = store
        .end_meeting(&meeting(), seq, at(t0, 60), Some(at(t0, 5)))
        .await
        .unwrap()
    else {
        panic!("conflict");
    };
    let presence: Vec<_> = events
        .iter()
        .filter(|e| e.kind.is_presence())
        .map(|e| e.kind.as_str())
        .collect();
    assert_eq!(
        presence,
        ["disconnected", "content_stopped", "disconnected"]
    );
    assert_eq!(
        db.raw
            .scalar("SELECT count(*) FROM presence_sessions WHERE disconnected_at IS NULL")
            .await,
        0
    );
    // Ben had no Joined: his session was opened inferred, bounded below by the roster.
    assert_eq!(
        db.raw
            .scalar("SELECT count(*) FROM presence_sessions WHERE start_inferred")
            .await,
        1
    );
}

async fn events_of_an_ended_or_untracked_meeting_or_of_another_meetings_attendee_record_nothing(
    db: &TestDb,
) {
    let store = &db.store;
    let t0 = start();
    let other = MeetingId::parse("0000000b-0000-4000-8000-000000000000").unwrap();
    let (ana, bob) = (attendee(1, "ana"), attendee(2, "bob"));
    let r = Region::parse("us-east-1").unwrap();
    store
        .add_meeting(&meeting(), &r, None, t0, false)
        .await
        .unwrap();
    store
        .add_meeting(&other, &r, None, t0, false)
        .await
        .unwrap();
    poll(store, at(t0, 5), &[Change::joined(&ana)]).await;
    // Bob is in the other meeting only.
    let snapshot = store.snapshot(&other).await.unwrap();
    let rec = PollRecord {
        meeting_id: &other,
        expected_seq: snapshot.poll_seq,
        started_at: at(t0, 4),
        observed_at: at(t0, 5),
        previous_poll_at: None,
        changes: &[Change::joined(&bob)],
    };
    store.apply(rec).await.unwrap();

    // An event naming this meeting with the other meeting's attendee: held, never recorded
    // against either meeting.
    let wrong = event("e1", EventType::AttendeeJoined, &bob, at(t0, 10));
    let (stored, plan) = store
        .record_presence(&meeting(), std::slice::from_ref(&wrong), at(t0, 11))
        .await
        .unwrap();
    assert!(stored.is_empty());
    assert_eq!(plan.unknown.len(), 1);

    // A meeting that is not tracked: counted, nothing recorded.
    let untracked = MeetingId::parse("0000000c-0000-4000-8000-000000000000").unwrap();
    let mut stray = event("e2", EventType::AttendeeJoined, &ana, at(t0, 12));
    stray.meeting_id = untracked.clone();
    let (stored, plan) = store
        .record_presence(&untracked, std::slice::from_ref(&stray), at(t0, 13))
        .await
        .unwrap();
    assert!(stored.is_empty());
    assert_eq!(
        plan.outcomes,
        [(EventType::AttendeeJoined, "meeting_not_active")]
    );

    // An ended meeting: counted, nothing recorded.
    let seq = store.snapshot(&meeting()).await.unwrap().poll_seq;
    store
        .end_meeting(&meeting(), seq, at(t0, 20), Some(at(t0, 5)))
        .await
        .unwrap();
    let late = event("e3", EventType::AttendeeJoined, &ana, at(t0, 21));
    let (stored, plan) = store
        .record_presence(&meeting(), std::slice::from_ref(&late), at(t0, 22))
        .await
        .unwrap();
    assert!(stored.is_empty());
    assert_eq!(
        plan.outcomes,
        [(EventType::AttendeeJoined, "meeting_not_active")]
    );
    assert_eq!(
        db.raw
            .scalar("SELECT count(*) FROM roster_events WHERE occurred_at IS NOT NULL")
            .await,
        0
    );
}
