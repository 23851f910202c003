//! Retention and erasure on Postgres and SQLite: expired events go without breaking a session
//! or an undelivered webhook batch, and `forget` erases one person in one transaction, through
//! the store, the poll loop and the real binary.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use common::TestDb;
use roster_sync::chime::{ChimeClient, ClientOptions, simulator_sdk_config};
use roster_sync::config::Settings;
use roster_sync::domain::{
    self, Attendee, AttendeeId, Capabilities, Capability, Change, EventKind, ExternalUserId,
    LeftReason, MeetingId, Region,
};
use roster_sync::retention::Retention;
use roster_sync::scheduler::{PollOutcome, poll_once};
use roster_sync::sim::control::Driver;
use roster_sync::sim::{self, SimConfig};
use roster_sync::store::{ApplyOutcome, Erased, PollRecord, Store, StoredEvent};
use tokio_util::sync::CancellationToken;

use common::BIN;

both_backends!(
    retention_deletes_whole_finished_histories_and_keeps_open_and_recent_sessions,
    retention_never_deletes_an_event_a_webhook_sink_has_not_passed,
    retention_deletes_in_batches_of_the_given_size,
    retention_deletes_meetings_that_ended_or_stopped_before_the_cutoff_once_their_events_are_gone,
    the_daemon_deletes_expired_history_in_batches_while_it_goes_on_polling,
    forget_erases_one_person_everywhere_and_fences_the_meetings_they_are_in,
    a_forgotten_person_still_in_the_meeting_is_recorded_as_joined_at_the_next_poll,
    forget_refuses_without_yes_when_stdin_is_not_a_terminal_and_erases_with_it,
);

fn region() -> Region {
    Region::parse("us-east-1").unwrap()
}

fn meeting(n: u32) -> MeetingId {
    MeetingId::parse(&format!("0000000{n:x}-0000-4000-8000-0000000000cc")).unwrap()
}

fn attendee(n: u32, user: &str) -> Attendee {
    Attendee {
        attendee_id: AttendeeId::parse(&format!("cccccccc-0000-4000-8000-{n:012x}")).unwrap(),
        external_user_id: ExternalUserId::new(user),
        capabilities: Capabilities::DEFAULT,
    }
}

async fn track(store: &Store, id: &MeetingId) {
    store
        .add_meeting(id, &region(), None, domain::now(), false)
        .await
        .unwrap();
}

/// Records one poll observed at `at` with `changes` against the stored snapshot.
async fn poll_at(
    store: &Store,
    id: &MeetingId,
    at: DateTime<Utc>,
    changes: &[Change],
) -> Vec<StoredEvent> {
    let snapshot = store.snapshot(id).await.unwrap();
    let rec = PollRecord {
        meeting_id: id,
        expected_seq: snapshot.poll_seq,
        started_at: at - TimeDelta::milliseconds(1),
        observed_at: at,
        previous_poll_at: snapshot.last_polled_at,
        changes,
    };
    match store.apply(rec).await.unwrap() {
        ApplyOutcome::Applied { events, .. } => events,
        ApplyOutcome::Conflict => panic!("unexpected conflict"),
    }
}

fn days_ago(days: i64) -> DateTime<Utc> {
    domain::now() - TimeDelta::days(days)
}

fn retention(store: &Store, keep_days: u64) -> Retention {
    let mut settings = Settings::defaults().unwrap();
    settings.retention.events = Some(Duration::from_secs(keep_days * 86_400));
    settings.validate().unwrap();
    Retention::from_settings(&settings, store.clone()).expect("retention is configured")
}

/// The users whose events are stored, one entry per event, in event order.
async fn users_of_events(store: &Store, id: &MeetingId) -> Vec<(String, EventKind)> {
    store
        .events_for_meeting(id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.external_user_id.as_str().to_owned(), e.kind))
        .collect()
}

/// Ana came and went long ago; Bo is still present since long ago; Cy joined long ago and
/// left recently; Di joined recently.
async fn four_histories(store: &Store, id: &MeetingId) {
    let (ana, bo, cy, di) = (
        attendee(1, "ana"),
        attendee(2, "bo"),
        attendee(3, "cy"),
        attendee(4, "di"),
    );
    track(store, id).await;
    let joins = [
        Change::joined(&ana),
        Change::joined(&bo),
        Change::joined(&cy),
    ];
    poll_at(store, id, days_ago(10), &joins).await;
    let mut muted = bo.clone();
    muted.capabilities.audio = Capability::Receive;
    let changes = [
        Change::left(&ana, LeftReason::Removed),
        Change::capabilities_changed(&bo, &muted),
    ];
    poll_at(store, id, days_ago(9), &changes).await;
    let changes = [Change::left(&cy, LeftReason::Removed), Change::joined(&di)];
    poll_at(store, id, domain::now() - TimeDelta::hours(1), &changes).await;
}

async fn retention_deletes_whole_finished_histories_and_keeps_open_and_recent_sessions(
    db: &TestDb,
) {
    let id = meeting(1);
    four_histories(&db.store, &id).await;
    let sessions_before = db.store.sessions(&id).await.unwrap().len();
    assert_eq!(sessions_before, 4);

    let deleted = retention(&db.store, 2)
        .pass(domain::now(), &CancellationToken::new())
        .await
        .unwrap()
        .events;

    assert_eq!(deleted, 2, "ana's joined and left");
    use EventKind::*;
    assert_eq!(
        users_of_events(&db.store, &id).await,
        [
            ("bo".to_owned(), Joined),
            ("cy".to_owned(), Joined),
            ("bo".to_owned(), CapabilitiesChanged),
            ("cy".to_owned(), Left),
            ("di".to_owned(), Joined),
        ],
        "bo is present, cy's session ended recently, di's began recently"
    );
    let sessions = db.store.sessions(&id).await.unwrap();
    let users: Vec<_> = sessions
        .iter()
        .map(|s| (s.external_user_id.as_str(), s.left_at.is_some()))
        .collect();
    assert_eq!(users, [("bo", false), ("cy", true), ("di", false)]);
    assert_eq!(
        db.raw.scalar("SELECT count(*) FROM roster_attendees").await,
        2,
        "the current roster is never deleted by age"
    );
    let again = retention(&db.store, 2)
        .pass(domain::now(), &CancellationToken::new())
        .await
        .unwrap()
        .events;
    assert_eq!(again, 0);
}

async fn retention_never_deletes_an_event_a_webhook_sink_has_not_passed(db: &TestDb) {
    let id = meeting(2);
    // The sink exists before any event, so its cursor starts at 0.
    assert_eq!(
        db.store
            .webhook_cursor("lagging", domain::now())
            .await
            .unwrap(),
        0
    );
    four_histories(&db.store, &id).await;
    let events = db.store.events_for_meeting(&id).await.unwrap();
    let ana_joined = events[0].event_id;
    let ana_left = events
        .iter()
        .find(|e| e.external_user_id.as_str() == "ana" && e.kind == EventKind::Left)
        .unwrap()
        .event_id;
    let never = CancellationToken::new();

    let keep_two_days = retention(&db.store, 2);
    assert_eq!(
        keep_two_days
            .pass(domain::now(), &never)
            .await
            .unwrap()
            .events,
        0
    );
    // Delivered up to ana's join but not her leave: her session stays whole.
    db.store
        .advance_webhook_cursor("lagging", ana_joined, domain::now())
        .await
        .unwrap();
    assert_eq!(
        keep_two_days
            .pass(domain::now(), &never)
            .await
            .unwrap()
            .events,
        0
    );
    db.store
        .advance_webhook_cursor("lagging", ana_left, domain::now())
        .await
        .unwrap();
    assert_eq!(
        keep_two_days
            .pass(domain::now(), &never)
            .await
            .unwrap()
            .events,
        2
    );
    assert!(
        !users_of_events(&db.store, &id)
            .await
            .iter()
            .any(|(u, _)| u == "ana")
    );
}

async fn retention_deletes_in_batches_of_the_given_size(db: &TestDb) {
    let id = meeting(3);
    track(&db.store, &id).await;
    let people: Vec<Attendee> = (0..5).map(|n| attendee(10 + n, &format!("p{n}"))).collect();
    let joins: Vec<Change> = people.iter().map(Change::joined).collect();
    poll_at(&db.store, &id, days_ago(30), &joins).await;
    let leaves: Vec<Change> = people
        .iter()
        .map(|a| Change::left(a, LeftReason::Removed))
        .collect();
    poll_at(&db.store, &id, days_ago(29), &leaves).await;

    let cutoff = days_ago(2);
    let mut batches = Vec::new();
    loop {
        let n = db
            .store
            .delete_expired_events(cutoff, i64::MAX, 4)
            .await
            .unwrap();
        batches.push(n);
        if n < 4 {
            break;
        }
    }
    assert_eq!(batches, [4, 4, 2]);
    assert_eq!(db.raw.scalar("SELECT count(*) FROM roster_events").await, 0);
}

async fn the_daemon_deletes_expired_history_in_batches_while_it_goes_on_polling(db: &TestDb) {
    let (sim, driver) = common::sim_and_driver(100.0).await;
    let id = driver
        .create_meeting("retained", "us-east-1")
        .await
        .unwrap();
    // One person has been in the meeting for 40 days: their join is kept.
    let stayer = driver
        .add_attendees(&id, [("stayer@example.com".to_owned(), None)])
        .await
        .unwrap()
        .remove(0);
    track(&db.store, &id).await;
    let stayer = Attendee {
        attendee_id: stayer.attendee_id,
        external_user_id: ExternalUserId::new("stayer@example.com"),
        capabilities: Capabilities::DEFAULT,
    };
    poll_at(&db.store, &id, days_ago(40), &[Change::joined(&stayer)]).await;
    // 1250 people came and went 40 days ago: 2500 expired events, more than two batches.
    for chunk in 0..5 {
        let people: Vec<Attendee> = (0..250)
            .map(|n| attendee(1000 + chunk * 250 + n, &format!("gone{chunk}-{n}")))
            .collect();
        let joins: Vec<Change> = people.iter().map(Change::joined).collect();
        poll_at(&db.store, &id, days_ago(40), &joins).await;
        let leaves: Vec<Change> = people
            .iter()
            .map(|a| Change::left(a, LeftReason::Removed))
            .collect();
        poll_at(&db.store, &id, days_ago(39), &leaves).await;
    }
    assert_eq!(db.store.events_since(0, 10_000).await.unwrap().len(), 2501);

    let mut settings = Settings::defaults().unwrap();
    settings.retention.events = Some(Duration::from_secs(30 * 86_400));
    settings.poll.interval = Duration::from_millis(200);
    settings.http.listen.clear();
    settings.validate().unwrap();
    let client = ChimeClient::new(
        simulator_sdk_config(&region()),
        ClientOptions::for_endpoint(&sim.endpoint_url(), 100.0, 100),
    );
    let daemon = roster_sync::app::Daemon::build(
        &settings,
        Some(db.store.clone()),
        CancellationToken::new(),
        roster_sync::app::DaemonOptions {
            client: Some(std::sync::Arc::new(client)),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // Polling goes on: people who join now are recorded, during or after the deletion.
    for n in 0..3 {
        driver
            .add_attendees(&id, [(format!("new{n}@example.com"), None)])
            .await
            .unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let users = users_of_events(&db.store, &id).await;
        let gone = users.iter().filter(|(u, _)| u.starts_with("gone")).count();
        let new = users.iter().filter(|(u, _)| u.starts_with("new")).count();
        if gone == 0 && new == 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{gone} expired events left, {new} new joins recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.stop().await.unwrap();
    sim.shutdown().await.unwrap();
    let users = users_of_events(&db.store, &id).await;
    assert_eq!(
        users[0],
        ("stayer@example.com".to_owned(), EventKind::Joined)
    );
    assert_eq!(users.len(), 4, "{users:?}");
    assert!(
        users[1..]
            .iter()
            .all(|(u, kind)| u.starts_with("new") && *kind == EventKind::Joined)
    );
}

/// The ids of every tracked meeting, whatever its status, in id order.
async fn tracked_ids(store: &Store) -> Vec<MeetingId> {
    let mut ids: Vec<MeetingId> = store
        .list_meetings()
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.meeting_id)
        .collect();
    ids.sort();
    ids
}

async fn retention_deletes_meetings_that_ended_or_stopped_before_the_cutoff_once_their_events_are_gone(
    db: &TestDb,
) {
    let (stopped_long_ago, ended_long_ago, stopped_lately, active, held) = (
        meeting(8),
        meeting(9),
        meeting(10),
        meeting(11),
        meeting(12),
    );
    let all = [
        &stopped_long_ago,
        &ended_long_ago,
        &stopped_lately,
        &active,
        &held,
    ];
    for id in all {
        track(&db.store, id).await;
    }
    // Everyone joined ten days ago, one attendee per meeting.
    for (n, id) in all.into_iter().enumerate() {
        let someone = attendee(20 + n as u32, &format!("p{n}"));
        poll_at(&db.store, id, days_ago(10), &[Change::joined(&someone)]).await;
    }
    // Stopped nine days ago: the attendee left with reason tracking_stopped.
    let stopped = db
        .store
        .remove_meeting(&stopped_long_ago, days_ago(9))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stopped.len(), 1);
    // Ended nine days ago, as the service confirmed it.
    let snapshot = db.store.snapshot(&ended_long_ago).await.unwrap();
    let ended = db
        .store
        .end_meeting(
            &ended_long_ago,
            snapshot.poll_seq,
            days_ago(9),
            snapshot.last_polled_at,
        )
        .await
        .unwrap();
    assert!(matches!(ended, ApplyOutcome::Applied { .. }));
    // Stopped an hour ago: younger than the cutoff.
    db.store
        .remove_meeting(&stopped_lately, domain::now() - TimeDelta::hours(1))
        .await
        .unwrap()
        .unwrap();
    // Still active, its attendee gone nine days ago: the events go, the meeting stays.
    let gone = attendee(23, "p3");
    let left = [Change::left(&gone, LeftReason::Removed)];
    poll_at(&db.store, &active, days_ago(9), &left).await;
    // A webhook sink starts here; `held` stops nine days ago, after it, and the sink has not
    // delivered that yet.
    let cursor = db
        .store
        .webhook_cursor("slow", domain::now())
        .await
        .unwrap();
    let stopped = db
        .store
        .remove_meeting(&held, days_ago(9))
        .await
        .unwrap()
        .unwrap();
    assert!(stopped[0].event_id > cursor);
    let never = CancellationToken::new();

    let deleted = retention(&db.store, 2)
        .pass(domain::now(), &never)
        .await
        .unwrap();
    assert_eq!(deleted.events, 2 + 2 + 2, "{deleted:?}");
    assert_eq!(deleted.meetings, 2, "{deleted:?}");
    let mut expected = vec![stopped_lately.clone(), active.clone(), held.clone()];
    expected.sort();
    assert_eq!(tracked_ids(&db.store).await, expected);
    assert!(
        db.store
            .events_for_meeting(&active)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        db.store
            .events_for_meeting(&stopped_lately)
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(db.store.events_for_meeting(&held).await.unwrap().len(), 2);

    // Once the sink has delivered `held`'s leave, its events and then its row go.
    db.store
        .advance_webhook_cursor("slow", stopped[0].event_id, domain::now())
        .await
        .unwrap();
    let deleted = retention(&db.store, 2)
        .pass(domain::now(), &never)
        .await
        .unwrap();
    assert_eq!(
        deleted,
        roster_sync::retention::Deleted {
            events: 2,
            meetings: 1
        }
    );
    let mut expected = vec![stopped_lately.clone(), active.clone()];
    expected.sort();
    assert_eq!(tracked_ids(&db.store).await, expected);
    assert_eq!(
        db.raw.scalar("SELECT count(*) FROM roster_attendees").await,
        0
    );

    // A deleted meeting can be tracked again, afresh.
    let again = db
        .store
        .add_meeting(&stopped_long_ago, &region(), None, domain::now(), false)
        .await
        .unwrap();
    assert_eq!(again, roster_sync::store::AddOutcome::Added);
}

/// Whether the file at `path` holds `needle` anywhere; a file that does not exist holds
/// nothing (SQLite removes or truncates its write-ahead log); any other read error fails.
fn holds(path: &str, needle: &[u8]) -> bool {
    match std::fs::read(path) {
        Ok(bytes) => bytes.windows(needle.len()).any(|w| w == needle),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => panic!("read {path}: {e}"),
    }
}

async fn forget_erases_one_person_everywhere_and_fences_the_meetings_they_are_in(db: &TestDb) {
    let (here, gone) = (meeting(4), meeting(5));
    let zoe = "zoë@forget.example";
    let (zoe_here, zoe_gone, ian) = (attendee(1, zoe), attendee(2, zoe), attendee(3, "ian"));
    track(&db.store, &here).await;
    track(&db.store, &gone).await;
    poll_at(
        &db.store,
        &here,
        domain::now(),
        &[Change::joined(&zoe_here), Change::joined(&ian)],
    )
    .await;
    poll_at(
        &db.store,
        &gone,
        domain::now(),
        &[Change::joined(&zoe_gone)],
    )
    .await;
    poll_at(
        &db.store,
        &gone,
        domain::now(),
        &[Change::left(&zoe_gone, LeftReason::Removed)],
    )
    .await;
    let seq = |id: MeetingId| {
        let store = db.store.clone();
        async move { store.get_meeting(&id).await.unwrap().unwrap().poll_seq }
    };
    let (here_seq, gone_seq) = (seq(here.clone()).await, seq(gone.clone()).await);
    let person = ExternalUserId::new(zoe);
    assert_eq!(
        db.store.person_rows(&person).await.unwrap(),
        Erased {
            events: 3,
            present: 1
        }
    );

    // SQLite: her bytes are in the database file or its write-ahead log before `forget`, so
    // their absence afterwards is the erasure, not a file that never held them.
    let sqlite_files = (!db.raw.is_postgres()).then(|| {
        let path = db.url.trim_start_matches("sqlite://").to_owned();
        [path.clone(), format!("{path}-wal")]
    });
    if let Some(files) = &sqlite_files {
        assert!(
            files.iter().any(|file| holds(file, b"forget.example")),
            "before forget, neither {files:?} holds her bytes"
        );
    }

    let erased = db.store.forget_person(&person).await.unwrap();

    assert_eq!(
        erased,
        Erased {
            events: 3,
            present: 1
        }
    );
    assert!(
        !db.raw.dump_all_tables().await.contains("forget.example"),
        "no row anywhere names her"
    );
    if let Some(files) = &sqlite_files {
        // Not in the file's free space, nor in the write-ahead log either.
        for file in files {
            assert!(
                !holds(file, b"forget.example"),
                "{file} still holds her bytes"
            );
        }
    }
    assert_eq!(
        users_of_events(&db.store, &here).await,
        [("ian".to_owned(), EventKind::Joined)]
    );
    assert_eq!(db.store.snapshot(&here).await.unwrap().attendees, [ian]);
    assert_eq!(
        seq(here.clone()).await,
        here_seq + 1,
        "the meeting she is in is fenced"
    );
    assert_eq!(seq(gone.clone()).await, gone_seq, "the other one is not");
    // A poll computed before the erasure is refused.
    let stale = PollRecord {
        meeting_id: &here,
        expected_seq: here_seq,
        started_at: domain::now(),
        observed_at: domain::now(),
        previous_poll_at: None,
        changes: &[],
    };
    assert!(matches!(
        db.store.apply(stale).await.unwrap(),
        ApplyOutcome::Conflict
    ));
    assert_eq!(
        db.store.forget_person(&person).await.unwrap(),
        Erased::default()
    );
}

async fn a_forgotten_person_still_in_the_meeting_is_recorded_as_joined_at_the_next_poll(
    db: &TestDb,
) {
    let sim = sim::start(
        "127.0.0.1:0".parse().unwrap(),
        SimConfig {
            exempt_control: true,
            ..SimConfig::default()
        },
    )
    .await
    .unwrap();
    let client = ChimeClient::new(
        simulator_sdk_config(&region()),
        ClientOptions::for_endpoint(&sim.endpoint_url(), 100.0, 100),
    );
    let driver = Driver::new(client.sdk_client(&region()));
    let id = driver.create_meeting("erasure", "us-east-1").await.unwrap();
    driver
        .add_attendees(&id, [("zoe".to_owned(), None), ("ian".to_owned(), None)])
        .await
        .unwrap();
    track(&db.store, &id).await;
    let (first, known) = poll_once(&client, &db.store, &id, &region(), None).await;
    assert!(matches!(first, PollOutcome::Changed(ref e) if e.len() == 2));
    let (second, known) = poll_once(&client, &db.store, &id, &region(), known).await;
    assert!(matches!(second, PollOutcome::Unchanged));

    db.store
        .forget_person(&ExternalUserId::new("zoe"))
        .await
        .unwrap();

    // The remembered fingerprint still matches the roster; the fence makes the poll re-read
    // the snapshot instead of recording "unchanged" over it.
    let (fenced, known) = poll_once(&client, &db.store, &id, &region(), known).await;
    assert!(matches!(fenced, PollOutcome::Conflict), "{fenced:?}");
    let (again, _) = poll_once(&client, &db.store, &id, &region(), known).await;
    let PollOutcome::Changed(events) = again else {
        panic!("expected her join, got {again:?}");
    };
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].external_user_id.as_str(), "zoe");
    assert_eq!(events[0].kind, EventKind::Joined);
    assert_eq!(db.store.snapshot(&id).await.unwrap().attendees.len(), 2);
    sim.shutdown().await.unwrap();
}

/// The binary, with a clean environment and stdin from /dev/null (not a terminal).
async fn forget_cli(db: &TestDb, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(BIN)
        .arg("forget")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("DATABASE_URL", &db.url)
        .env("ROSTER_SYNC__HTTP__LISTEN", "")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (out.status.success(), stdout, stderr)
}

async fn forget_refuses_without_yes_when_stdin_is_not_a_terminal_and_erases_with_it(db: &TestDb) {
    let id = meeting(6);
    let (zoe, ian) = (attendee(1, "zoe@example.com"), attendee(2, "ian"));
    track(&db.store, &id).await;
    poll_at(
        &db.store,
        &id,
        domain::now(),
        &[Change::joined(&zoe), Change::joined(&ian)],
    )
    .await;
    let events = || async { db.raw.scalar("SELECT count(*) FROM roster_events").await };

    let (ok, _, stderr) = forget_cli(db, &["--external-user-id", "zoe@example.com"]).await;
    assert!(!ok, "refused");
    assert!(stderr.contains("--yes"), "{stderr}");
    assert_eq!(events().await, 2, "nothing erased");

    let (ok, stdout, stderr) =
        forget_cli(db, &["--external-user-id", "zoe@example.com", "--dry-run"]).await;
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("would erase 1 event(s) and 1 current-roster row(s)"),
        "{stdout}"
    );
    assert_eq!(events().await, 2, "a dry run erases nothing");

    let (ok, stdout, stderr) =
        forget_cli(db, &["--external-user-id", "zoe@example.com", "--yes"]).await;
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("erased 1 event(s) and 1 current-roster row(s)"),
        "{stdout}"
    );
    assert!(stdout.contains("joined again"), "{stdout}");
    assert_eq!(events().await, 1);

    let (ok, stdout, _) = forget_cli(db, &["--external-user-id", "zoe@example.com", "--yes"]).await;
    assert!(ok);
    assert!(stdout.contains("nothing stored"), "{stdout}");

    let (ok, _, stderr) = forget_cli(db, &["--external-user-id", "z", "--yes"]).await;
    assert!(!ok && stderr.contains("2..=64"), "{stderr}");
}

/// `pg_dump` of the server's own major version (the Debian layout first, then `PATH`).
fn pg_dump() -> Option<std::path::PathBuf> {
    let mut found: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|version| version.path().join("bin/pg_dump"))
        .filter(|path| path.exists())
        .collect();
    found.sort();
    found.pop().or_else(|| {
        let ok = Command::new("pg_dump")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        ok.then(|| "pg_dump".into())
    })
}

#[tokio::test]
async fn after_forget_pg_dump_holds_no_trace_of_the_person() {
    let Some(db) = common::postgres_db().await else {
        return;
    };
    let Some(pg_dump) = pg_dump() else {
        common::skip("no pg_dump on PATH (install the PostgreSQL client)");
        db.finish().await;
        return;
    };
    let erased = "Zoë «erase-me» O'Brien";
    let kept = "ian.keep-me@example.com";
    let (here, gone) = (meeting(13), meeting(14));
    track(&db.store, &here).await;
    track(&db.store, &gone).await;
    // A webhook sink that has seen her events and failed once: its row must hold no trace.
    db.store
        .webhook_cursor("security", domain::now())
        .await
        .unwrap();
    let (zoe, zoe_before, ian) = (attendee(1, erased), attendee(2, erased), attendee(3, kept));
    poll_at(
        &db.store,
        &here,
        days_ago(3),
        &[Change::joined(&zoe), Change::joined(&ian)],
    )
    .await;
    let mut muted = zoe.clone();
    muted.capabilities.audio = Capability::Receive;
    let changed = [Change::capabilities_changed(&zoe, &muted)];
    poll_at(&db.store, &here, days_ago(2), &changed).await;
    poll_at(
        &db.store,
        &gone,
        days_ago(3),
        &[Change::joined(&zoe_before)],
    )
    .await;
    let left = [Change::left(&zoe_before, LeftReason::Removed)];
    poll_at(&db.store, &gone, days_ago(2), &left).await;
    db.store.remove_meeting(&gone, days_ago(1)).await.unwrap();
    let last = db.store.last_event_id().await.unwrap();
    db.store
        .advance_webhook_cursor("security", last, domain::now())
        .await
        .unwrap();
    db.store
        .record_webhook_failure("security", "receiver answered 503", domain::now())
        .await
        .unwrap();

    let dump = |name: &str| {
        let out = Command::new(&pg_dump)
            .arg("--dbname")
            .arg(&db.url)
            .arg("--no-owner")
            .output()
            .unwrap_or_else(|e| panic!("{name}: run pg_dump: {e}"));
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("a UTF-8 dump")
    };
    let before = dump("before forget");
    assert!(before.contains(erased), "the dump holds her rows before");

    let (ok, stdout, stderr) = forget_cli(&db, &["--external-user-id", erased, "--yes"]).await;
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("erased 4 event(s) and 1 current-roster row(s)"),
        "{stdout}"
    );

    let after = dump("after forget");
    let traces: Vec<&str> = after.lines().filter(|l| l.contains(erased)).collect();
    assert!(traces.is_empty(), "pg_dump still holds her: {traces:#?}");
    // Nor any part of her id that is unusual enough to identify her.
    assert!(!after.contains("erase-me"), "{after}");
    assert!(
        after.contains(kept),
        "the dump holds the data of everyone else"
    );
    assert!(
        after.contains("COPY public.roster_events"),
        "a dump with data"
    );
    db.finish().await;
}

#[test]
fn retention_events_is_validated_by_name_and_empty_keeps_forever() {
    let run = |value: &str| {
        let out = Command::new(BIN)
            .arg("config")
            .env_clear()
            .env("ROSTER_SYNC__RETENTION__EVENTS", value)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, _, stderr) = run("0s");
    assert!(!ok && stderr.contains("retention.events"), "{stderr}");
    let (ok, _, stderr) = run("a while");
    assert!(!ok && stderr.contains("events"), "{stderr}");
    let (ok, stdout, stderr) = run("30d");
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("[retention]\nevents = \"30days\""),
        "{stdout}"
    );
    assert!(Settings::defaults().unwrap().retention.events.is_none());
}
