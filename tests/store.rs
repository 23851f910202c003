//! The store against real databases. Every body in `both_backends!` runs on a fresh Postgres
//! database and on a fresh SQLite file, and asserts on what users see: rows of
//! `tracked_meetings`, `roster_events`, the snapshot and the attendance views.

mod common;

use chrono::{DateTime, TimeDelta, Utc};
use common::TestDb;
use roster_sync::domain::{
    self, Attendee, AttendeeId, Capabilities, Capability, Change, EventKind, ExternalUserId,
    LeftReason, MeetingId, Region,
};
use roster_sync::store::{
    AddOutcome, ApplyOutcome, Backend, MeetingStatus, PollRecord, Store, StoreError, StoredEvent,
};

fn meeting(n: u32) -> MeetingId {
    MeetingId::parse(&format!("0000000{n:x}-0000-4000-8000-000000000000")).unwrap()
}

fn attendee(n: u32, user: &str) -> Attendee {
    Attendee {
        attendee_id: AttendeeId::parse(&format!("aaaaaaaa-0000-4000-8000-{n:012x}")).unwrap(),
        external_user_id: ExternalUserId::new(user),
        capabilities: Capabilities::DEFAULT,
    }
}

fn with_caps(a: &Attendee, audio: Capability, video: Capability, content: Capability) -> Attendee {
    Attendee {
        capabilities: Capabilities {
            audio,
            video,
            content,
        },
        ..a.clone()
    }
}

fn region(name: &str) -> Region {
    Region::parse(name).unwrap()
}

/// An hour ago, at microsecond precision: the tests' clock starts here.
fn start() -> DateTime<Utc> {
    domain::now() - TimeDelta::hours(1)
}

fn at(start: DateTime<Utc>, seconds: i64) -> DateTime<Utc> {
    start + TimeDelta::seconds(seconds)
}

/// Records a poll that started one second before `observed_at`, against the stored snapshot.
async fn poll(
    store: &Store,
    id: &MeetingId,
    observed_at: DateTime<Utc>,
    changes: &[Change],
) -> Vec<StoredEvent> {
    let snapshot = store.snapshot(id).await.unwrap();
    let rec = PollRecord {
        meeting_id: id,
        expected_seq: snapshot.poll_seq,
        started_at: observed_at - TimeDelta::seconds(1),
        observed_at,
        previous_poll_at: snapshot.last_polled_at,
        changes,
    };
    match store.apply(rec).await.unwrap() {
        ApplyOutcome::Applied { events, poll_seq } => {
            assert_eq!(poll_seq, snapshot.poll_seq + 1);
            events
        }
        ApplyOutcome::Conflict => panic!("unexpected conflict"),
    }
}

async fn event_count(db: &TestDb) -> i64 {
    db.raw.scalar("SELECT count(*) FROM roster_events").await
}

async fn attendee_count(db: &TestDb) -> i64 {
    db.raw.scalar("SELECT count(*) FROM roster_attendees").await
}

both_backends!(
    add_meeting_is_idempotent_and_only_force_revives_an_ended_meeting_or_moves_one,
    apply_records_joins_leaves_and_capability_changes_as_events_and_snapshot,
    event_ids_ascend_in_the_order_of_the_changes,
    an_unchanged_poll_writes_no_snapshot_or_event_rows,
    a_stale_expected_seq_conflicts_and_writes_nothing,
    two_polls_racing_from_one_snapshot_record_only_one,
    changes_that_contradict_the_snapshot_are_refused_and_write_nothing,
    end_meeting_closes_everyone_with_meeting_ended_and_empties_the_snapshot,
    remove_meeting_closes_everyone_with_tracking_stopped,
    attendance_views_pair_each_join_with_the_next_leave,
    record_failure_counts_failures_until_a_poll_succeeds,
    a_stored_value_that_does_not_parse_is_reported_with_its_column,
    the_snapshot_of_an_untracked_meeting_is_an_error,
);

async fn add_meeting_is_idempotent_and_only_force_revives_an_ended_meeting_or_moves_one(
    db: &TestDb,
) {
    let store = &db.store;
    let (id, other) = (meeting(1), meeting(2));
    let t = start();

    let added = store
        .add_meeting(&id, &region("us-east-1"), Some("standup"), t, false)
        .await
        .unwrap();
    assert_eq!(added, AddOutcome::Added);
    let m = store.get_meeting(&id).await.unwrap().unwrap();
    assert_eq!(
        (
            m.status,
            m.region.as_str(),
            m.label.as_deref(),
            m.added_at,
            m.ended_at,
            m.poll_seq
        ),
        (
            MeetingStatus::Active,
            "us-east-1",
            Some("standup"),
            t,
            None,
            0
        )
    );

    let again = store
        .add_meeting(&id, &region("us-east-1"), None, at(t, 1), false)
        .await
        .unwrap();
    assert_eq!(again, AddOutcome::AlreadyTracked);
    let elsewhere = store
        .add_meeting(&id, &region("us-west-2"), None, at(t, 1), false)
        .await
        .unwrap();
    assert_eq!(
        elsewhere,
        AddOutcome::RegionDiffers {
            current: region("us-east-1")
        },
        "another region is never silently ignored"
    );
    let m = store.get_meeting(&id).await.unwrap().unwrap();
    assert_eq!(
        (m.region.as_str(), m.label.as_deref(), m.added_at),
        ("us-east-1", Some("standup"), t)
    );

    let relabelled = store
        .add_meeting(&id, &region("us-east-1"), Some("retro"), at(t, 2), false)
        .await;
    assert_eq!(relabelled.unwrap(), AddOutcome::AlreadyTracked);
    assert_eq!(
        store
            .get_meeting(&id)
            .await
            .unwrap()
            .unwrap()
            .label
            .as_deref(),
        Some("retro")
    );

    poll(store, &id, at(t, 3), &[]).await;
    assert_eq!(
        store.remove_meeting(&id, at(t, 4)).await.unwrap(),
        Some(Vec::new())
    );
    let m = store.get_meeting(&id).await.unwrap().unwrap();
    assert_eq!(
        (m.status, m.ended_at),
        (MeetingStatus::Stopped, Some(at(t, 4)))
    );

    let back = store
        .add_meeting(&id, &region("us-west-2"), None, at(t, 5), false)
        .await
        .unwrap();
    assert_eq!(back, AddOutcome::Reactivated);
    let m = store.get_meeting(&id).await.unwrap().unwrap();
    assert_eq!(
        (
            m.status,
            m.ended_at,
            m.region.as_str(),
            m.label.as_deref(),
            m.last_polled_at
        ),
        (
            MeetingStatus::Active,
            None,
            "us-west-2",
            Some("retro"),
            None
        )
    );
    assert_eq!(m.added_at, t, "added_at is when tracking first began");

    store
        .add_meeting(&other, &region("eu-central-1"), None, at(t, 6), false)
        .await
        .unwrap();
    let seq = store.snapshot(&id).await.unwrap().poll_seq;
    store.end_meeting(&id, seq, at(t, 7), None).await.unwrap();
    let ended = store
        .add_meeting(&id, &region("us-east-1"), Some("x"), at(t, 8), false)
        .await
        .unwrap();
    assert_eq!(ended, AddOutcome::AlreadyEnded);
    let m = store.get_meeting(&id).await.unwrap().unwrap();
    assert_eq!(
        (m.status, m.label.as_deref()),
        (MeetingStatus::Ended, Some("retro"))
    );
    let revived = store
        .add_meeting(&id, &region("us-east-1"), None, at(t, 9), true)
        .await
        .unwrap();
    assert_eq!(revived, AddOutcome::Revived);
    let m = store.get_meeting(&id).await.unwrap().unwrap();
    assert_eq!(
        (m.status, m.ended_at, m.region.as_str(), m.last_polled_at),
        (MeetingStatus::Active, None, "us-east-1", None)
    );
    let moved = store
        .add_meeting(&id, &region("eu-central-1"), None, at(t, 10), true)
        .await
        .unwrap();
    assert_eq!(
        moved,
        AddOutcome::Moved {
            from: region("us-east-1")
        }
    );
    let m = store.get_meeting(&id).await.unwrap().unwrap();
    assert_eq!(
        (m.status, m.region.as_str()),
        (MeetingStatus::Active, "eu-central-1")
    );

    let all: Vec<_> = store
        .list_meetings()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.meeting_id)
        .collect();
    assert_eq!(all, [id.clone(), other.clone()]);
    let active: Vec<_> = store
        .active_meetings()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.meeting_id)
        .collect();
    assert_eq!(active, [id, other], "the revived meeting is active again");
    assert!(store.get_meeting(&meeting(9)).await.unwrap().is_none());
}

async fn apply_records_joins_leaves_and_capability_changes_as_events_and_snapshot(db: &TestDb) {
    let store = &db.store;
    let id = meeting(1);
    let t = start();
    store
        .add_meeting(&id, &region("us-east-1"), None, t, false)
        .await
        .unwrap();
    let (a, b, c, d) = (
        attendee(1, "ana"),
        attendee(2, "bo"),
        attendee(3, "cy «ü»"),
        attendee(4, "dee"),
    );

    let first = poll(
        store,
        &id,
        at(t, 10),
        &[Change::joined(&a), Change::joined(&b), Change::joined(&c)],
    )
    .await;
    assert_eq!(first.len(), 3);
    for (event, who) in first.iter().zip([&a, &b, &c]) {
        assert_eq!(event.meeting_id, id);
        assert_eq!(event.attendee_id, who.attendee_id);
        assert_eq!(event.external_user_id, who.external_user_id);
        assert_eq!(event.kind, EventKind::Joined);
        assert_eq!(
            (event.after, event.before, event.reason),
            (Some(who.capabilities), None, None)
        );
        assert_eq!(
            (event.observed_at, event.previous_poll_at),
            (at(t, 10), None)
        );
    }
    let snapshot = store.snapshot(&id).await.unwrap();
    assert_eq!(snapshot.attendees, [a.clone(), b.clone(), c.clone()]);
    assert_eq!(snapshot.poll_seq, 1);
    assert_eq!(
        snapshot.last_polled_at,
        Some(at(t, 9)),
        "last_polled_at is when the poll started"
    );

    let c2 = with_caps(&c, Capability::Send, Capability::None, Capability::None);
    let second = poll(
        store,
        &id,
        at(t, 20),
        &[
            Change::left(&b, LeftReason::Removed),
            Change::capabilities_changed(&c, &c2),
            Change::joined(&d),
        ],
    )
    .await;
    assert_eq!(second.len(), 3);
    assert_eq!(
        (
            second[0].kind,
            second[0].after,
            second[0].before,
            second[0].reason
        ),
        (
            EventKind::Left,
            None,
            Some(b.capabilities),
            Some(LeftReason::Removed)
        )
    );
    assert_eq!(
        (
            second[1].kind,
            second[1].after,
            second[1].before,
            second[1].reason
        ),
        (
            EventKind::CapabilitiesChanged,
            Some(c2.capabilities),
            Some(c.capabilities),
            None
        )
    );
    assert_eq!(
        (second[2].kind, &second[2].attendee_id),
        (EventKind::Joined, &d.attendee_id)
    );
    for event in &second {
        assert_eq!(
            (event.observed_at, event.previous_poll_at),
            (at(t, 20), Some(at(t, 9)))
        );
    }

    let snapshot = store.snapshot(&id).await.unwrap();
    assert_eq!(snapshot.attendees, [a.clone(), c2.clone(), d.clone()]);
    assert_eq!(
        (snapshot.poll_seq, snapshot.last_polled_at),
        (2, Some(at(t, 19)))
    );
    assert_eq!(attendee_count(db).await, 3);
    assert_eq!(event_count(db).await, 6);

    let stored = store.events_for_meeting(&id).await.unwrap();
    assert_eq!(
        stored,
        [first.clone(), second.clone()].concat(),
        "read back exactly as returned"
    );
    let after_first = store.events_since(first[2].event_id, 100).await.unwrap();
    assert_eq!(after_first, second);
    let page = store.events_since(0, 2).await.unwrap();
    assert_eq!(page, first[..2]);

    let sessions = store.sessions(&id).await.unwrap();
    let d_session = sessions
        .iter()
        .find(|s| s.attendee_id == d.attendee_id)
        .unwrap();
    assert_eq!(
        d_session.joined_at,
        at(t, 20),
        "joined_at is the observed_at of the join"
    );
}

async fn event_ids_ascend_in_the_order_of_the_changes(db: &TestDb) {
    let store = &db.store;
    let id = meeting(1);
    store
        .add_meeting(&id, &region("us-east-1"), None, start(), false)
        .await
        .unwrap();
    // Many more than one SQLite statement takes, in descending attendee order.
    let people: Vec<Attendee> = (0..3000)
        .rev()
        .map(|n| attendee(n, &format!("user {n}")))
        .collect();
    let changes: Vec<Change> = people.iter().map(Change::joined).collect();

    let events = poll(store, &id, domain::now(), &changes).await;

    assert_eq!(events.len(), people.len());
    assert!(
        events.windows(2).all(|w| w[0].event_id < w[1].event_id),
        "ids ascend"
    );
    let order: Vec<_> = events.iter().map(|e| e.attendee_id.clone()).collect();
    let given: Vec<_> = people.iter().map(|a| a.attendee_id.clone()).collect();
    assert_eq!(order, given, "event ids follow the order of the changes");
    assert_eq!(store.events_for_meeting(&id).await.unwrap(), events);
    let snapshot = store.snapshot(&id).await.unwrap();
    assert_eq!(snapshot.attendees.len(), people.len());
    assert!(
        snapshot
            .attendees
            .windows(2)
            .all(|w| w[0].attendee_id < w[1].attendee_id)
    );
}

both_backends!(a_cursor_reader_never_skips_an_id_while_writers_commit_concurrently);

/// Event ids become visible in commit order: a reader following a cursor (`events_since`
/// after the highest id it has seen, as `events --follow` and the webhook sinks do) while
/// four writers commit polls concurrently ends with every event exactly once. Without the
/// ordering, a transaction that took a lower id and committed later would be skipped.
async fn a_cursor_reader_never_skips_an_id_while_writers_commit_concurrently(db: &TestDb) {
    const WRITERS: u32 = 4;
    const POLLS: u32 = 30;
    const PER_POLL: u32 = 10;
    for w in 0..WRITERS {
        db.store
            .add_meeting(&meeting(8 + w), &region("us-east-1"), None, start(), false)
            .await
            .unwrap();
    }
    let writing = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(WRITERS));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (store, writing) = (db.store.clone(), std::sync::Arc::clone(&writing));
        writers.push(tokio::spawn(async move {
            for p in 0..POLLS {
                let changes: Vec<Change> = (0..PER_POLL)
                    .map(|k| {
                        let n = (w * POLLS + p) * PER_POLL + k;
                        Change::joined(&attendee(n, &format!("user {n}")))
                    })
                    .collect();
                poll(&store, &meeting(8 + w), domain::now(), &changes).await;
            }
            writing.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }));
    }
    let mut seen = Vec::new();
    let mut cursor = 0;
    loop {
        // Read whether the writers are done before reading, so the last read sees all.
        let done = writing.load(std::sync::atomic::Ordering::SeqCst) == 0;
        let batch = db.store.events_since(cursor, 7).await.unwrap();
        for e in &batch {
            assert!(e.event_id > cursor, "ids come in ascending order");
            cursor = e.event_id;
            seen.push(e.event_id);
        }
        if done && batch.is_empty() {
            break;
        }
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let all = db.store.events_since(0, i64::MAX).await.unwrap();
    assert_eq!(all.len() as u32, WRITERS * POLLS * PER_POLL);
    let all: Vec<i64> = all.iter().map(|e| e.event_id).collect();
    let skipped: Vec<&i64> = all.iter().filter(|id| !seen.contains(id)).collect();
    assert!(skipped.is_empty(), "the cursor reader skipped {skipped:?}");
    assert_eq!(seen, all, "every event seen exactly once, in order");
}

/// Statement-level triggers on Postgres notice even a statement that touches no row.
const POSTGRES_WRITE_AUDIT: &str = "
    CREATE TABLE test_writes (table_name text NOT NULL, operation text NOT NULL);
    CREATE FUNCTION test_note_write() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO test_writes VALUES (TG_TABLE_NAME, TG_OP);
        RETURN NULL;
    END
    $$;
    CREATE TRIGGER note_event_writes
        AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON roster_events
        FOR EACH STATEMENT EXECUTE FUNCTION test_note_write();
    CREATE TRIGGER note_attendee_writes
        AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON roster_attendees
        FOR EACH STATEMENT EXECUTE FUNCTION test_note_write();
";

const SQLITE_WRITE_AUDIT: &str = "
    CREATE TABLE test_writes (table_name TEXT NOT NULL, operation TEXT NOT NULL);
    CREATE TRIGGER note_event_inserts AFTER INSERT ON roster_events
        BEGIN INSERT INTO test_writes VALUES ('roster_events', 'INSERT'); END;
    CREATE TRIGGER note_event_updates AFTER UPDATE ON roster_events
        BEGIN INSERT INTO test_writes VALUES ('roster_events', 'UPDATE'); END;
    CREATE TRIGGER note_event_deletes AFTER DELETE ON roster_events
        BEGIN INSERT INTO test_writes VALUES ('roster_events', 'DELETE'); END;
    CREATE TRIGGER note_attendee_inserts AFTER INSERT ON roster_attendees
        BEGIN INSERT INTO test_writes VALUES ('roster_attendees', 'INSERT'); END;
    CREATE TRIGGER note_attendee_updates AFTER UPDATE ON roster_attendees
        BEGIN INSERT INTO test_writes VALUES ('roster_attendees', 'UPDATE'); END;
    CREATE TRIGGER note_attendee_deletes AFTER DELETE ON roster_attendees
        BEGIN INSERT INTO test_writes VALUES ('roster_attendees', 'DELETE'); END;
";

async fn an_unchanged_poll_writes_no_snapshot_or_event_rows(db: &TestDb) {
    let store = &db.store;
    let id = meeting(1);
    let t = start();
    store
        .add_meeting(&id, &region("us-east-1"), None, t, false)
        .await
        .unwrap();
    let (a, b) = (attendee(1, "ana"), attendee(2, "bo"));
    poll(
        store,
        &id,
        at(t, 10),
        &[Change::joined(&a), Change::joined(&b)],
    )
    .await;
    store
        .record_failure(&id, Some("ThrottlingException"), "throttled", at(t, 15))
        .await
        .unwrap();
    db.raw
        .execute(if db.raw.is_postgres() {
            POSTGRES_WRITE_AUDIT
        } else {
            SQLITE_WRITE_AUDIT
        })
        .await;
    let before = store.snapshot(&id).await.unwrap();

    let rec = PollRecord {
        meeting_id: &id,
        expected_seq: before.poll_seq,
        started_at: at(t, 19),
        observed_at: at(t, 20),
        previous_poll_at: before.last_polled_at,
        changes: &[],
    };
    let outcome = store.apply(rec).await.unwrap();

    let ApplyOutcome::Applied { events, poll_seq } = outcome else {
        panic!("unexpected conflict")
    };
    assert!(events.is_empty());
    assert_eq!(poll_seq, before.poll_seq + 1);
    assert_eq!(
        db.raw.scalar("SELECT count(*) FROM test_writes").await,
        0,
        "no statement touched roster_events or roster_attendees"
    );
    assert_eq!((event_count(db).await, attendee_count(db).await), (2, 2));
    let m = store.get_meeting(&id).await.unwrap().unwrap();
    assert_eq!((m.poll_seq, m.last_polled_at), (poll_seq, Some(at(t, 19))));
    assert_eq!(
        (m.consecutive_failures, m.last_error, m.last_error_at),
        (0, None, None)
    );
    assert_eq!(
        store.snapshot(&id).await.unwrap().attendees,
        before.attendees
    );

    // The audit does notice writes: a poll with a change is seen.
    poll(
        store,
        &id,
        at(t, 30),
        &[Change::left(&a, LeftReason::Removed)],
    )
    .await;
    assert!(db.raw.scalar("SELECT count(*) FROM test_writes").await > 0);
}

async fn a_stale_expected_seq_conflicts_and_writes_nothing(db: &TestDb) {
    let store = &db.store;
    let id = meeting(1);
    let t = start();
    store
        .add_meeting(&id, &region("us-east-1"), None, t, false)
        .await
        .unwrap();
    let (a, b) = (attendee(1, "ana"), attendee(2, "bo"));
    poll(store, &id, at(t, 10), &[Change::joined(&a)]).await;
    let before = store.get_meeting(&id).await.unwrap().unwrap();
    assert_eq!(before.poll_seq, 1);

    for changes in [vec![Change::joined(&b)], vec![]] {
        let stale = PollRecord {
            meeting_id: &id,
            expected_seq: 0,
            started_at: at(t, 19),
            observed_at: at(t, 20),
            previous_poll_at: None,
            changes: &changes,
        };
        assert!(matches!(
            store.apply(stale).await.unwrap(),
            ApplyOutcome::Conflict
        ));
    }
    let ended = store.end_meeting(&id, 0, at(t, 21), None).await.unwrap();
    assert!(matches!(ended, ApplyOutcome::Conflict));

    let after = store.get_meeting(&id).await.unwrap().unwrap();
    assert_eq!(
        (after.poll_seq, after.last_polled_at, after.status),
        (1, before.last_polled_at, MeetingStatus::Active)
    );
    assert_eq!((event_count(db).await, attendee_count(db).await), (1, 1));
    assert_eq!(store.snapshot(&id).await.unwrap().attendees, [a]);

    // A stopped meeting conflicts even at its current poll_seq.
    store.remove_meeting(&id, at(t, 30)).await.unwrap();
    let seq = store.snapshot(&id).await.unwrap().poll_seq;
    let late = PollRecord {
        meeting_id: &id,
        expected_seq: seq,
        started_at: at(t, 31),
        observed_at: at(t, 32),
        previous_poll_at: None,
        changes: &[Change::joined(&b)],
    };
    assert!(matches!(
        store.apply(late).await.unwrap(),
        ApplyOutcome::Conflict
    ));
    assert_eq!(store.get_meeting(&id).await.unwrap().unwrap().poll_seq, seq);
}

async fn two_polls_racing_from_one_snapshot_record_only_one(db: &TestDb) {
    let store = &db.store;
    let id = meeting(1);
    let t = start();
    store
        .add_meeting(&id, &region("us-east-1"), None, t, false)
        .await
        .unwrap();
    let (a, b) = (attendee(1, "ana"), attendee(2, "bo"));
    let (mine, theirs) = ([Change::joined(&a)], [Change::joined(&b)]);
    let record = |changes| PollRecord {
        meeting_id: &id,
        expected_seq: 0,
        started_at: at(t, 9),
        observed_at: at(t, 10),
        previous_poll_at: None,
        changes,
    };

    let (first, second) = tokio::join!(
        store.apply(record(&mine[..])),
        store.apply(record(&theirs[..]))
    );

    let applied = [first.unwrap(), second.unwrap()]
        .into_iter()
        .filter(|o| matches!(o, ApplyOutcome::Applied { .. }))
        .count();
    assert_eq!(applied, 1, "exactly one of the two polls is recorded");
    let snapshot = store.snapshot(&id).await.unwrap();
    assert_eq!((snapshot.poll_seq, snapshot.attendees.len()), (1, 1));
    assert_eq!(event_count(db).await, 1);
}

async fn changes_that_contradict_the_snapshot_are_refused_and_write_nothing(db: &TestDb) {
    let store = &db.store;
    let id = meeting(1);
    let t = start();
    store
        .add_meeting(&id, &region("us-east-1"), None, t, false)
        .await
        .unwrap();
    let (a, b) = (attendee(1, "ana"), attendee(2, "bo"));
    poll(store, &id, at(t, 10), &[Change::joined(&a)]).await;
    let before = store.snapshot(&id).await.unwrap();

    let contradictions = [
        vec![Change::joined(&b), Change::left(&b, LeftReason::Removed)],
        vec![Change::joined(&b), Change::joined(&a)],
        vec![Change::left(&b, LeftReason::Removed)],
        vec![Change::capabilities_changed(&b, &b)],
    ];
    for changes in contradictions {
        let rec = PollRecord {
            meeting_id: &id,
            expected_seq: before.poll_seq,
            started_at: at(t, 19),
            observed_at: at(t, 20),
            previous_poll_at: before.last_polled_at,
            changes: &changes,
        };
        let err = store.apply(rec).await.unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidRecord(_)),
            "{changes:?}: {err}"
        );
    }

    let after = store.snapshot(&id).await.unwrap();
    assert_eq!(
        (after.poll_seq, after.last_polled_at),
        (before.poll_seq, before.last_polled_at)
    );
    assert_eq!(after.attendees, before.attendees);
    assert_eq!(event_count(db).await, 1);
}

async fn end_meeting_closes_everyone_with_meeting_ended_and_empties_the_snapshot(db: &TestDb) {
    let store = &db.store;
    let id = meeting(1);
    let t = start();
    store
        .add_meeting(&id, &region("us-east-1"), None, t, false)
        .await
        .unwrap();
    let (a, b) = (attendee(1, "ana"), attendee(2, "bo"));
    let b2 = with_caps(
        &b,
        Capability::Receive,
        Capability::Receive,
        Capability::None,
    );
    poll(
        store,
        &id,
        at(t, 10),
        &[Change::joined(&b), Change::joined(&a)],
    )
    .await;
    poll(
        store,
        &id,
        at(t, 20),
        &[Change::capabilities_changed(&b, &b2)],
    )
    .await;
    let snapshot = store.snapshot(&id).await.unwrap();

    let outcome = store
        .end_meeting(&id, snapshot.poll_seq, at(t, 30), snapshot.last_polled_at)
        .await
        .unwrap();

    let ApplyOutcome::Applied { events, poll_seq } = outcome else {
        panic!("unexpected conflict")
    };
    assert_eq!(poll_seq, snapshot.poll_seq + 1);
    assert_eq!(events.len(), 2);
    for (e, who) in events.iter().zip([&a, &b2]) {
        assert_eq!(
            (&e.attendee_id, e.kind, e.after, e.before),
            (
                &who.attendee_id,
                EventKind::Left,
                None,
                Some(who.capabilities)
            ),
            "everyone leaves with their last capabilities"
        );
        assert_eq!(
            (e.reason, e.observed_at, e.previous_poll_at),
            (Some(LeftReason::MeetingEnded), at(t, 30), Some(at(t, 19)))
        );
    }
    assert!(events[0].event_id < events[1].event_id);
    assert_eq!(
        store.events_for_meeting(&id).await.unwrap()[3..],
        events[..]
    );

    assert!(store.snapshot(&id).await.unwrap().attendees.is_empty());
    assert_eq!(attendee_count(db).await, 0);
    let m = store.get_meeting(&id).await.unwrap().unwrap();
    assert_eq!(
        (m.status, m.ended_at, m.last_polled_at, m.poll_seq),
        (
            MeetingStatus::Ended,
            Some(at(t, 30)),
            Some(at(t, 30)),
            poll_seq
        )
    );
    let late = PollRecord {
        meeting_id: &id,
        expected_seq: poll_seq,
        started_at: at(t, 40),
        observed_at: at(t, 41),
        previous_poll_at: None,
        changes: &[],
    };
    assert!(matches!(
        store.apply(late).await.unwrap(),
        ApplyOutcome::Conflict
    ));
}

async fn remove_meeting_closes_everyone_with_tracking_stopped(db: &TestDb) {
    let store = &db.store;
    let id = meeting(1);
    let t = start();
    store
        .add_meeting(&id, &region("us-east-1"), None, t, false)
        .await
        .unwrap();
    let (a, b) = (attendee(1, "ana"), attendee(2, "bo"));
    poll(
        store,
        &id,
        at(t, 10),
        &[Change::joined(&a), Change::joined(&b)],
    )
    .await;
    let before = store.snapshot(&id).await.unwrap();

    let events = store.remove_meeting(&id, at(t, 50)).await.unwrap().unwrap();

    assert_eq!(events.len(), 2);
    for (e, who) in events.iter().zip([&a, &b]) {
        assert_eq!(
            (&e.attendee_id, e.kind, e.after),
            (&who.attendee_id, EventKind::Left, None)
        );
        assert_eq!(
            (e.before, e.reason),
            (Some(who.capabilities), Some(LeftReason::TrackingStopped))
        );
        assert_eq!(
            (e.observed_at, e.previous_poll_at),
            (at(t, 50), before.last_polled_at)
        );
    }
    let m = store.get_meeting(&id).await.unwrap().unwrap();
    assert_eq!(
        (m.status, m.ended_at, m.poll_seq, m.last_polled_at),
        (
            MeetingStatus::Stopped,
            Some(at(t, 50)),
            before.poll_seq + 1,
            before.last_polled_at
        )
    );
    assert!(store.snapshot(&id).await.unwrap().attendees.is_empty());
    assert_eq!((event_count(db).await, attendee_count(db).await), (4, 0));

    assert_eq!(
        store.remove_meeting(&id, at(t, 60)).await.unwrap(),
        Some(Vec::new())
    );
    let again = store.get_meeting(&id).await.unwrap().unwrap();
    assert_eq!(
        (again.ended_at, again.poll_seq),
        (m.ended_at, m.poll_seq),
        "already stopped: unchanged"
    );
    assert_eq!(event_count(db).await, 4);
    assert_eq!(
        store.remove_meeting(&meeting(9), at(t, 60)).await.unwrap(),
        None
    );
}

async fn attendance_views_pair_each_join_with_the_next_leave(db: &TestDb) {
    let store = &db.store;
    let id = meeting(1);
    let t = start();
    store
        .add_meeting(&id, &region("us-east-1"), None, t, false)
        .await
        .unwrap();
    let (a, b, c, d) = (
        attendee(1, "ana"),
        attendee(2, "bo"),
        attendee(3, "ana"),
        attendee(4, "cy"),
    );
    poll(
        store,
        &id,
        at(t, 0),
        &[Change::joined(&a), Change::joined(&b), Change::joined(&d)],
    )
    .await;
    poll(
        store,
        &id,
        at(t, 60),
        &[Change::left(&a, LeftReason::Removed)],
    )
    .await;
    store.remove_meeting(&id, at(t, 120)).await.unwrap();
    store
        .add_meeting(&id, &region("us-east-1"), None, at(t, 150), false)
        .await
        .unwrap();
    poll(
        store,
        &id,
        at(t, 200),
        &[Change::joined(&b), Change::joined(&c)],
    )
    .await;
    // Open sessions last until now: roughly an hour minus 200 s.
    let open = 3400.0 - 60.0..3400.0 + 60.0;

    let sessions = store.sessions(&id).await.unwrap();

    let rows: Vec<_> = sessions
        .iter()
        .map(|s| {
            (
                s.attendee_id.clone(),
                s.external_user_id.as_str(),
                s.joined_at,
                s.left_at,
                s.left_reason,
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (
                a.attendee_id.clone(),
                "ana",
                at(t, 0),
                Some(at(t, 60)),
                Some(LeftReason::Removed)
            ),
            (
                b.attendee_id.clone(),
                "bo",
                at(t, 0),
                Some(at(t, 120)),
                Some(LeftReason::TrackingStopped)
            ),
            (
                d.attendee_id.clone(),
                "cy",
                at(t, 0),
                Some(at(t, 120)),
                Some(LeftReason::TrackingStopped)
            ),
            (b.attendee_id.clone(), "bo", at(t, 200), None, None),
            (c.attendee_id.clone(), "ana", at(t, 200), None, None),
        ]
    );
    let durations: Vec<f64> = sessions.iter().map(|s| s.duration_seconds).collect();
    assert!(durations.iter().all(|d| *d >= 0.0), "{durations:?}");
    assert!((durations[0] - 60.0).abs() < 1e-6, "{durations:?}");
    assert!((durations[1] - 120.0).abs() < 1e-6, "{durations:?}");
    assert!((durations[2] - 120.0).abs() < 1e-6, "{durations:?}");
    assert!(
        open.contains(&durations[3]) && open.contains(&durations[4]),
        "{durations:?}"
    );

    let attendance = store.attendance(&id).await.unwrap();

    let rows: Vec<_> = attendance
        .iter()
        .map(|r| {
            (
                r.external_user_id.as_str(),
                r.sessions,
                r.first_joined_at,
                r.last_left_at,
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("ana", 2, at(t, 0), None),
            ("bo", 2, at(t, 0), None),
            ("cy", 1, at(t, 0), Some(at(t, 120))),
        ]
    );
    assert!(
        open.contains(&(attendance[0].total_seconds - 60.0)),
        "{attendance:?}"
    );
    assert!(
        open.contains(&(attendance[1].total_seconds - 120.0)),
        "{attendance:?}"
    );
    assert!(
        (attendance[2].total_seconds - 120.0).abs() < 1e-6,
        "{attendance:?}"
    );
}

async fn record_failure_counts_failures_until_a_poll_succeeds(db: &TestDb) {
    let store = &db.store;
    let id = meeting(1);
    let t = start();
    store
        .add_meeting(&id, &region("us-east-1"), None, t, false)
        .await
        .unwrap();

    store
        .record_failure(&id, Some("ThrottlingException"), "throttled", at(t, 1))
        .await
        .unwrap();
    store
        .record_failure(&id, None, &"x".repeat(10_000), at(t, 2))
        .await
        .unwrap();

    let m = store.get_meeting(&id).await.unwrap().unwrap();
    assert_eq!(
        (m.consecutive_failures, m.last_error_at),
        (2, Some(at(t, 2)))
    );
    assert_eq!(
        m.last_error.as_deref().map(str::len),
        Some(roster_sync::store::MAX_ERROR_LEN)
    );
    assert_eq!(m.poll_seq, 0, "a failure is not a recorded poll");
    assert_eq!((event_count(db).await, attendee_count(db).await), (0, 0));

    poll(store, &id, at(t, 3), &[]).await;
    let m = store.get_meeting(&id).await.unwrap().unwrap();
    assert_eq!(
        (m.consecutive_failures, m.last_error, m.last_error_at),
        (0, None, None)
    );
}

async fn a_stored_value_that_does_not_parse_is_reported_with_its_column(db: &TestDb) {
    db.raw
        .execute(
            "INSERT INTO tracked_meetings (meeting_id, region, status, added_at) \
             VALUES ('not-a-meeting', 'us-east-1', 'active', '2025-01-01T00:00:00.000000Z')",
        )
        .await;

    let err = db.store.list_meetings().await.unwrap_err();

    assert!(matches!(err, StoreError::Corrupt(_)), "{err}");
    assert!(err.to_string().contains("meeting_id"), "{err}");
}

async fn the_snapshot_of_an_untracked_meeting_is_an_error(db: &TestDb) {
    let err = db.store.snapshot(&meeting(7)).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::UnknownMeeting(m) if *m == meeting(7)),
        "{err}"
    );
}

#[tokio::test]
async fn a_second_writer_on_the_same_sqlite_file_is_refused_until_the_first_is_gone() {
    let (first, dir) = common::sqlite_store().await;
    let path = dir.path().join("roster.db");
    let url = format!("sqlite://{}", path.display());
    assert_eq!(first.backend(), Backend::Sqlite);
    first.acquire_writer_lock().await.unwrap();
    first
        .acquire_writer_lock()
        .await
        .expect("taking it twice is fine");

    let second = Store::connect(&url, 1).await.unwrap();
    let err = second.acquire_writer_lock().await.unwrap_err();

    assert!(matches!(err, StoreError::Locked(_)), "{err}");
    let message = err.to_string();
    assert!(message.contains("another roster-sync process"), "{message}");
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(
        message.contains(&format!("pid {}", std::process::id())),
        "{message}"
    );
    second
        .list_meetings()
        .await
        .expect("reading needs no writer lock");

    drop(first);
    second
        .acquire_writer_lock()
        .await
        .expect("free once the first store is gone");
}

#[tokio::test]
async fn an_unreachable_postgres_is_named_with_its_password_redacted() {
    let url = "postgres://roster:hunter2@127.0.0.1:1/roster";

    let err = Store::connect(url, 1).await.unwrap_err();

    let message = err.to_string();
    assert!(matches!(err, StoreError::Connect { .. }), "{message}");
    assert!(
        message.contains("postgres://roster:***@127.0.0.1:1/roster"),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");
}

#[tokio::test]
async fn a_url_of_another_database_is_refused_without_its_password() {
    let err = Store::connect("mysql://roster:hunter2@db/roster", 1)
        .await
        .unwrap_err();

    assert!(matches!(err, StoreError::UnsupportedUrl(_)), "{err}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[tokio::test]
async fn a_second_writer_on_the_same_postgres_database_is_refused_until_the_first_closes() {
    if let Some(db) = common::postgres_db().await {
        assert_eq!(db.store.backend(), Backend::Postgres);
        let first = Store::connect(&db.url, 1).await.unwrap();
        first.acquire_writer_lock().await.unwrap();
        first
            .acquire_writer_lock()
            .await
            .expect("taking it twice is fine");

        let err = db.store.acquire_writer_lock().await.unwrap_err();

        assert!(matches!(err, StoreError::Locked(_)), "{err}");
        let message = err.to_string();
        assert!(message.contains("another roster-sync"), "{message}");
        let name = db.url.rsplit('/').next().unwrap();
        assert!(message.contains(name), "names the database: {message}");
        db.store
            .list_meetings()
            .await
            .expect("reading needs no writer lock");

        first.close().await;
        db.store
            .acquire_writer_lock()
            .await
            .expect("free once the first store is closed");
        db.finish().await;
    }
}
