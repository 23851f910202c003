//! Retention and `forget` cover presence, on both backends: `forget --external-user-id` erases
//! a person's `connected`/`disconnected`/video/content rows and nothing of anyone else's, and
//! retention deletes old presence rows together with the rest of an attendee's events, then
//! the meeting with its record of applied meeting events (`presence_applied`).

mod common;

use std::process::Stdio;

use chrono::{DateTime, TimeDelta, Utc};
use common::{BIN, TestDb};
use roster_sync::domain::{
    self, Attendee, AttendeeId, Capabilities, Change, ExternalUserId, LeftReason, MeetingId, Region,
};
use roster_sync::lifecycle::{EventType, MeetingEvent};
use roster_sync::store::{ApplyOutcome, PollRecord, Store};

const ANA: &str = "ana@presence-forget.example";
const BEN: &str = "ben@presence-keep.example";

fn meeting() -> MeetingId {
    MeetingId::parse("0000000d-0000-4000-8000-000000000000").unwrap()
}

fn attendee(n: u32, user: &str) -> Attendee {
    Attendee {
        attendee_id: AttendeeId::parse(&format!("dddddddd-0000-4000-8000-{n:012x}")).unwrap(),
        external_user_id: ExternalUserId::new(user),
        capabilities: Capabilities::DEFAULT,
    }
}

fn at(t0: DateTime<Utc>, s: i64) -> DateTime<Utc> {
    t0 + TimeDelta::seconds(s)
}

fn event(id: &str, ty: EventType, who: &Attendee, when: DateTime<Utc>) -> MeetingEvent {
    common::presence_event(id, ty, &meeting(), &who.attendee_id, when)
}

async fn poll(store: &Store, observed_at: DateTime<Utc>, changes: &[Change]) {
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
        ApplyOutcome::Applied { .. } => {}
        ApplyOutcome::Conflict => panic!("unexpected conflict"),
    }
}

/// Ana and Ben join at `t0`, both connect, share video and content; Ana leaves and a poll at
/// `t0 + 200` proves her deleted. Ben stays.
async fn seed(store: &Store, t0: DateTime<Utc>) -> (Attendee, Attendee) {
    let (ana, ben) = (attendee(1, ANA), attendee(2, BEN));
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
        event("a1", EventType::AttendeeJoined, &ana, at(t0, 10)),
        event("b1", EventType::AttendeeJoined, &ben, at(t0, 11)),
        event("a2", EventType::AttendeeVideoStarted, &ana, at(t0, 20)),
        event(
            "b2",
            EventType::AttendeeContentVideoStarted,
            &ben,
            at(t0, 25),
        ),
        event("a3", EventType::AttendeeDropped, &ana, at(t0, 60)),
        event("a4", EventType::AttendeeJoined, &ana, at(t0, 70)),
        event(
            "b3",
            EventType::AttendeeContentVideoStopped,
            &ben,
            at(t0, 90),
        ),
        event("a5", EventType::AttendeeLeft, &ana, at(t0, 150)),
    ];
    let (stored, plan) = store
        .record_presence(&meeting(), &batch, at(t0, 151))
        .await
        .unwrap();
    assert!(plan.unknown.is_empty());
    assert!(stored.len() >= batch.len(), "{stored:?}");
    poll(
        store,
        at(t0, 200),
        &[Change::left(&ana, LeftReason::Removed)],
    )
    .await;
    (ana, ben)
}

/// `(roster rows, presence rows)` of one attendee in `roster_events`.
async fn rows_of(db: &TestDb, who: &Attendee) -> (i64, i64) {
    let (roster, presence) = match who.external_user_id.as_str() {
        ANA => (
            "SELECT count(*) FROM roster_events WHERE attendee_id = 'dddddddd-0000-4000-8000-000000000001' AND occurred_at IS NULL",
            "SELECT count(*) FROM roster_events WHERE attendee_id = 'dddddddd-0000-4000-8000-000000000001' AND occurred_at IS NOT NULL",
        ),
        _ => (
            "SELECT count(*) FROM roster_events WHERE attendee_id = 'dddddddd-0000-4000-8000-000000000002' AND occurred_at IS NULL",
            "SELECT count(*) FROM roster_events WHERE attendee_id = 'dddddddd-0000-4000-8000-000000000002' AND occurred_at IS NOT NULL",
        ),
    };
    (db.raw.scalar(roster).await, db.raw.scalar(presence).await)
}

both_backends!(
    forget_erases_a_persons_presence_rows_and_nothing_of_anyone_else,
    retention_deletes_presence_rows_with_the_rest_of_an_attendees_history,
);

async fn forget_erases_a_persons_presence_rows_and_nothing_of_anyone_else(db: &TestDb) {
    let (ana, ben) = seed(&db.store, domain::now() - TimeDelta::hours(1)).await;
    let (_, ana_presence) = rows_of(db, &ana).await;
    assert!(
        ana_presence >= 6,
        "connected, video, dropped, connected, left: {ana_presence}"
    );
    let ben_before = rows_of(db, &ben).await;
    assert_eq!(ben_before.1, 3, "connected, content started and stopped");
    let bens_sessions = "SELECT count(*) FROM presence_sessions WHERE external_user_id = 'ben@presence-keep.example'";
    assert_eq!(db.raw.scalar(bens_sessions).await, 1);

    let out = tokio::process::Command::new(BIN)
        .args(["forget", "--external-user-id", ANA, "--yes"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("DATABASE_URL", &db.url)
        .env("ROSTER_SYNC__HTTP__LISTEN", "")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");

    assert_eq!(rows_of(db, &ana).await, (0, 0), "none of her rows is left");
    assert_eq!(
        db.raw
            .scalar("SELECT count(*) FROM presence_sessions WHERE attendee_id = 'dddddddd-0000-4000-8000-000000000001'")
            .await,
        0
    );
    assert!(
        !db.raw
            .dump_all_tables()
            .await
            .contains("presence-forget.example"),
        "no row anywhere names her"
    );
    assert_eq!(
        rows_of(db, &ben).await,
        ben_before,
        "his rows are all there"
    );
    assert_eq!(db.raw.scalar(bens_sessions).await, 1);
    assert_eq!(
        db.raw
            .scalar("SELECT count(*) FROM presence_media_spans WHERE medium = 'content'")
            .await,
        1
    );
}

async fn retention_deletes_presence_rows_with_the_rest_of_an_attendees_history(db: &TestDb) {
    let now = domain::now();
    let t0 = now - TimeDelta::days(10);
    let cutoff = now - TimeDelta::days(1);
    let (ana, ben) = seed(&db.store, t0).await;
    let ben_before = rows_of(db, &ben).await;

    // Ana was deleted long ago: her joined, left and presence rows go together. Ben is still on
    // the roster, so his history stays whole, presence included.
    let deleted = db
        .store
        .delete_expired_events(cutoff, i64::MAX, 1000)
        .await
        .unwrap();
    assert_eq!(rows_of(db, &ana).await, (0, 0));
    assert_eq!(rows_of(db, &ben).await, ben_before);
    assert!(
        deleted >= 8,
        "ana's joined, left and presence rows: {deleted}"
    );
    assert_eq!(
        db.raw
            .scalar("SELECT count(*) FROM presence_sessions WHERE disconnected_at IS NULL")
            .await,
        1,
        "ben's open session is intact"
    );

    // The meeting ends (closing Ben's presence) long ago too: everything goes, then the meeting
    // with its record of applied meeting events.
    let seq = db.store.snapshot(&meeting()).await.unwrap().poll_seq;
    let ended = db
        .store
        .end_meeting(&meeting(), seq, at(t0, 300), Some(at(t0, 200)))
        .await
        .unwrap();
    assert!(matches!(ended, ApplyOutcome::Applied { .. }));
    assert!(
        db.raw.scalar("SELECT count(*) FROM presence_applied").await > 0,
        "the envelope ids of the applied events are kept while the meeting is"
    );
    db.store
        .delete_expired_events(cutoff, i64::MAX, 1000)
        .await
        .unwrap();
    assert_eq!(db.raw.scalar("SELECT count(*) FROM roster_events").await, 0);
    assert_eq!(
        db.store
            .delete_expired_meetings(cutoff, 1000)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        db.raw.scalar("SELECT count(*) FROM presence_applied").await,
        0
    );
    assert!(
        !db.raw.dump_all_tables().await.contains(".example"),
        "nothing of either person is left"
    );
}
