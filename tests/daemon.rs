//! The poll loop end to end: the real SDK client → simulator over HTTP → diff → the store, on
//! Postgres and on SQLite.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{TestDb, eventually, eventually_within};
use roster_sync::app::{Daemon, DaemonOptions};
use roster_sync::chime::{ChimeClient, ClientOptions, simulator_sdk_config};
use roster_sync::config::Settings;
use roster_sync::domain::{self, Capabilities, Capability, MeetingId, Region};
use roster_sync::scheduler::{PollOutcome, poll_once};
use roster_sync::sim::control::{Created, Driver};
use roster_sync::sim::{self, ScriptedFault, SimConfig, SimHandle};
use roster_sync::store::{MeetingStatus, TrackedMeeting};
use tokio_util::sync::CancellationToken;

fn region() -> Region {
    Region::parse("us-east-1").unwrap()
}

/// The simulator and the client share one quota, `rps` with bursts of `burst`.
async fn rig_with_quota(rps: f64, burst: u32) -> Rig {
    rig(
        SimConfig {
            rate: rps,
            burst,
            ..SimConfig::default()
        },
        rps,
        burst,
    )
    .await
}

struct Rig {
    sim: SimHandle,
    client: ChimeClient,
    driver: Driver,
}

async fn rig(sim_cfg: SimConfig, rps: f64, burst: u32) -> Rig {
    let sim = sim::start(
        "127.0.0.1:0".parse().unwrap(),
        SimConfig {
            exempt_control: true,
            ..sim_cfg
        },
    )
    .await
    .expect("simulator");
    let client = ChimeClient::new(
        simulator_sdk_config(&region()),
        ClientOptions::for_endpoint(&sim.endpoint_url(), rps, burst),
    );
    let driver = Driver::new(client.sdk_client(&region()));
    Rig {
        sim,
        client,
        driver,
    }
}

async fn tracked_meeting(db: &TestDb, rig: &Rig, attendees: usize) -> (MeetingId, Vec<Created>) {
    let id = rig
        .driver
        .create_meeting("scenario", "us-east-1")
        .await
        .unwrap();
    let made = rig
        .driver
        .add_attendees(
            &id,
            (0..attendees).map(|i| (format!("person-{i}@example.com"), None)),
        )
        .await
        .unwrap();
    db.store
        .add_meeting(&id, &region(), Some("scenario"), domain::now(), false)
        .await
        .unwrap();
    (id, made)
}

async fn count(db: &TestDb, kind: &str, reason: Option<&str>) -> usize {
    let events = db.store.events_since(0, 1_000_000).await.unwrap();
    events
        .iter()
        .filter(|e| e.kind.as_str() == kind && e.reason.map(|r| r.as_str()) == reason)
        .count()
}

both_backends!(
    the_scenario_records_exactly_what_happened,
    unchanged_polls_write_no_snapshot_or_event_rows,
    the_daemons_batched_bookkeeping_writes_no_snapshot_or_event_rows,
    a_page_that_fails_after_its_retries_records_no_events,
    no_table_holds_a_join_token,
    a_failing_meeting_backs_off_without_delaying_the_others,
    meetings_added_and_removed_while_running_are_noticed,
    twenty_meetings_under_a_two_rps_quota_keep_being_polled_within_budget,
);

/// 120 attendees; 30 added, 10 deleted, 5 capability changes; then the meeting is deleted.
async fn the_scenario_records_exactly_what_happened(db: &TestDb) {
    let rig = rig_with_quota(100.0, 100).await;
    let (id, made) = tracked_meeting(db, &rig, 120).await;
    let region = region();
    let poll = |known| poll_once(&rig.client, &db.store, &id, &region, known);

    let (first, known) = poll(None).await;
    assert!(
        matches!(&first, PollOutcome::Changed(e) if e.len() == 120),
        "{first:?}"
    );

    rig.driver
        .add_attendees(
            &id,
            (120..150).map(|i| (format!("person-{i}@example.com"), None)),
        )
        .await
        .unwrap();
    for a in &made[..10] {
        rig.driver
            .delete_attendee(&id, &a.attendee_id)
            .await
            .unwrap();
    }
    let presenter = Capabilities {
        audio: Capability::SendReceive,
        video: Capability::Send,
        content: Capability::Send,
    };
    for a in &made[10..15] {
        rig.driver
            .set_capabilities(&id, &a.attendee_id, presenter)
            .await
            .unwrap();
    }
    let (second, known) = poll(known).await;
    assert!(
        matches!(&second, PollOutcome::Changed(e) if e.len() == 45),
        "{second:?}"
    );
    let (third, known) = poll(known).await;
    assert!(matches!(third, PollOutcome::Unchanged), "{third:?}");

    rig.driver.delete_meeting(&id).await.unwrap();
    let (last, _) = poll(known).await;
    assert!(
        matches!(&last, PollOutcome::Ended(e) if e.len() == 140),
        "{last:?}"
    );

    assert_eq!(count(db, "joined", None).await, 150);
    assert_eq!(count(db, "left", Some("removed")).await, 10);
    assert_eq!(count(db, "capabilities_changed", None).await, 5);
    assert_eq!(count(db, "left", Some("meeting_ended")).await, 140);
    for e in db.store.events_for_meeting(&id).await.unwrap() {
        if e.kind.as_str() == "capabilities_changed" {
            assert_eq!(e.before, Some(Capabilities::DEFAULT));
            assert_eq!(e.after, Some(presenter));
            assert!(made[10..15].iter().any(|a| a.attendee_id == e.attendee_id));
        }
        if e.kind.as_str() != "joined" {
            assert!(
                e.previous_poll_at.is_some_and(|p| p <= e.observed_at),
                "window ends ordered"
            );
        }
    }
    assert_eq!(
        db.raw.scalar("SELECT count(*) FROM roster_attendees").await,
        0
    );
    let meeting = db.store.get_meeting(&id).await.unwrap().unwrap();
    assert_eq!(meeting.status, MeetingStatus::Ended);
    assert!(meeting.ended_at.is_some());
    let sessions = db.store.sessions(&id).await.unwrap();
    assert_eq!(sessions.len(), 150);
    assert!(
        sessions
            .iter()
            .all(|s| s.left_at.is_some() && s.duration_seconds >= 0.0)
    );
}

/// 100 polls of an unchanged meeting: no insert, update or delete on the event and snapshot
/// tables, not even one that leaves the same values behind. Triggers the test adds to both
/// tables log every row written, synchronously, on both backends.
async fn unchanged_polls_write_no_snapshot_or_event_rows(db: &TestDb) {
    let rig = rig_with_quota(1000.0, 1000).await;
    let (id, made) = tracked_meeting(db, &rig, 40).await;
    let (first, mut known) = poll_once(&rig.client, &db.store, &id, &region(), None).await;
    assert!(matches!(first, PollOutcome::Changed(_)));
    log_row_writes(db).await;
    for _ in 0..100 {
        let (outcome, k) = poll_once(&rig.client, &db.store, &id, &region(), known).await;
        assert!(matches!(outcome, PollOutcome::Unchanged), "{outcome:?}");
        known = k;
    }
    assert_eq!(
        db.raw.scalar("SELECT count(*) FROM test_row_writes").await,
        0,
        "unchanged polls wrote to roster_events/roster_attendees"
    );
    let meeting = db.store.get_meeting(&id).await.unwrap().unwrap();
    assert_eq!(
        meeting.poll_seq, 101,
        "every poll was recorded in the bookkeeping"
    );
    assert_eq!(rig.sim.stats().list_attendees.requests, 101);
    // The triggers do see a write: the next change is logged.
    rig.driver
        .delete_attendee(&id, &made[0].attendee_id)
        .await
        .unwrap();
    let (outcome, _) = poll_once(&rig.client, &db.store, &id, &region(), known).await;
    assert!(matches!(outcome, PollOutcome::Changed(_)), "{outcome:?}");
    assert!(db.raw.scalar("SELECT count(*) FROM test_row_writes").await >= 2);
}

/// The same through the daemon, whose unchanged polls go to the batched bookkeeping
/// ([`roster_sync::store::Store::record_unchanged_polls`]) rather than to `apply`: 30 polls
/// counted in `poll_seq` leave no row written in the event and snapshot tables, and the
/// change that follows is written and logged.
async fn the_daemons_batched_bookkeeping_writes_no_snapshot_or_event_rows(db: &TestDb) {
    let rig = rig_with_quota(1000.0, 1000).await;
    let (id, made) = tracked_meeting(db, &rig, 40).await;
    let driver = rig.driver.clone();
    let daemon = spawn_daemon(db, rig.client, Duration::from_millis(50), 4).await;
    eventually("the first poll", || async {
        meeting(db, &id).await.poll_seq >= 1
    })
    .await;
    log_row_writes(db).await;
    let from = meeting(db, &id).await.poll_seq;
    eventually("30 unchanged polls recorded", || async {
        meeting(db, &id).await.poll_seq >= from + 30
    })
    .await;
    assert_eq!(
        db.raw.scalar("SELECT count(*) FROM test_row_writes").await,
        0,
        "the bookkeeping of unchanged polls wrote to roster_events/roster_attendees"
    );
    driver
        .delete_attendee(&id, &made[0].attendee_id)
        .await
        .unwrap();
    eventually("the departure logged by the triggers", || async {
        db.raw.scalar("SELECT count(*) FROM test_row_writes").await >= 2
    })
    .await;
    daemon.stop().await.unwrap();
    assert_eq!(count(db, "left", Some("removed")).await, 1);
}

/// Adds a `test_row_writes` table and triggers that log there every row inserted, updated or
/// deleted in `roster_events` and `roster_attendees`.
async fn log_row_writes(db: &TestDb) {
    if db.raw.is_postgres() {
        db.raw
            .execute(
                "CREATE TABLE test_row_writes (what text NOT NULL); \
                 CREATE FUNCTION test_log_row_write() RETURNS trigger LANGUAGE plpgsql AS $$ \
                 BEGIN INSERT INTO test_row_writes VALUES (TG_OP || ' ' || TG_TABLE_NAME); \
                 RETURN NULL; END $$; \
                 CREATE TRIGGER test_log_events AFTER INSERT OR UPDATE OR DELETE \
                 ON roster_events FOR EACH ROW EXECUTE FUNCTION test_log_row_write(); \
                 CREATE TRIGGER test_log_attendees AFTER INSERT OR UPDATE OR DELETE \
                 ON roster_attendees FOR EACH ROW EXECUTE FUNCTION test_log_row_write();",
            )
            .await;
    } else {
        db.raw
            .execute(
                "CREATE TABLE test_row_writes (what TEXT NOT NULL); \
                 CREATE TRIGGER test_ie AFTER INSERT ON roster_events \
                 BEGIN INSERT INTO test_row_writes VALUES ('insert roster_events'); END; \
                 CREATE TRIGGER test_ue AFTER UPDATE ON roster_events \
                 BEGIN INSERT INTO test_row_writes VALUES ('update roster_events'); END; \
                 CREATE TRIGGER test_de AFTER DELETE ON roster_events \
                 BEGIN INSERT INTO test_row_writes VALUES ('delete roster_events'); END; \
                 CREATE TRIGGER test_ia AFTER INSERT ON roster_attendees \
                 BEGIN INSERT INTO test_row_writes VALUES ('insert roster_attendees'); END; \
                 CREATE TRIGGER test_ua AFTER UPDATE ON roster_attendees \
                 BEGIN INSERT INTO test_row_writes VALUES ('update roster_attendees'); END; \
                 CREATE TRIGGER test_da AFTER DELETE ON roster_attendees \
                 BEGIN INSERT INTO test_row_writes VALUES ('delete roster_attendees'); END;",
            )
            .await;
    }
}

async fn a_page_that_fails_after_its_retries_records_no_events(db: &TestDb) {
    let rig = rig_with_quota(1000.0, 1000).await;
    let (id, made) = tracked_meeting(db, &rig, 30).await;
    let (_, known) = poll_once(&rig.client, &db.store, &id, &region(), None).await;
    let events_before = db.raw.scalar("SELECT count(*) FROM roster_events").await;
    // Change the roster, then make its second page fail for good.
    rig.driver
        .delete_attendee(&id, &made[0].attendee_id)
        .await
        .unwrap();
    let mut client_opts = ClientOptions::for_endpoint(&rig.sim.endpoint_url(), 1000.0, 1000);
    client_opts.max_results = 10;
    let small_pages = ChimeClient::new(simulator_sdk_config(&region()), client_opts);
    rig.sim.script(
        &id,
        ScriptedFault::new(503, "ServiceUnavailableException").on_page(1),
    );
    let (outcome, known) = poll_once(&small_pages, &db.store, &id, &region(), known).await;
    assert!(matches!(outcome, PollOutcome::Failed(_)), "{outcome:?}");
    assert_eq!(
        db.raw.scalar("SELECT count(*) FROM roster_events").await,
        events_before
    );
    assert_eq!(
        db.raw.scalar("SELECT count(*) FROM roster_attendees").await,
        30
    );
    let meeting = db.store.get_meeting(&id).await.unwrap().unwrap();
    assert_eq!(meeting.consecutive_failures, 1);
    assert!(meeting.last_error.is_some_and(|e| e.contains("503")));
    // Once the page answers again, the deletion is seen exactly once.
    rig.sim.clear_script(&id);
    let (outcome, _) = poll_once(&small_pages, &db.store, &id, &region(), known).await;
    assert!(
        matches!(&outcome, PollOutcome::Changed(e) if e.len() == 1),
        "{outcome:?}"
    );
}

async fn no_table_holds_a_join_token(db: &TestDb) {
    let rig = rig_with_quota(1000.0, 1000).await;
    let (id, made) = tracked_meeting(db, &rig, 25).await;
    let (_, known) = poll_once(&rig.client, &db.store, &id, &region(), None).await;
    rig.driver
        .set_capabilities(
            &id,
            &made[3].attendee_id,
            Capabilities {
                audio: Capability::Receive,
                video: Capability::None,
                content: Capability::None,
            },
        )
        .await
        .unwrap();
    rig.driver
        .delete_attendee(&id, &made[4].attendee_id)
        .await
        .unwrap();
    let (outcome, _) = poll_once(&rig.client, &db.store, &id, &region(), known).await;
    assert!(
        matches!(&outcome, PollOutcome::Changed(e) if e.len() == 2),
        "the capability change and the departure were recorded: {outcome:?}"
    );
    let dump = db.raw.dump_all_tables().await;
    assert!(
        dump.contains(made[0].attendee_id.as_str()),
        "the dump holds the data"
    );
    for a in &made {
        assert!(!a.join_token.is_empty());
        assert!(!dump.contains(&a.join_token), "a JoinToken was stored");
    }
}

/// The daemon as `run` builds it ([`Daemon::build`]), on the test's database, polling through
/// `client` every `interval` with `concurrency` polls in flight.
async fn spawn_daemon(
    db: &TestDb,
    client: ChimeClient,
    interval: Duration,
    concurrency: usize,
) -> Daemon {
    let mut settings = Settings::defaults().unwrap();
    settings.database.url = db.url.clone();
    settings.http.listen.clear();
    settings.poll.interval = interval;
    settings.poll.concurrency = concurrency;
    settings.poll.failure_backoff_cap = Duration::from_secs(60);
    settings.shutdown.grace = Duration::from_secs(5);
    Daemon::build(
        &settings,
        Some(db.store.clone()),
        CancellationToken::new(),
        DaemonOptions {
            client: Some(Arc::new(client)),
            ..DaemonOptions::default()
        },
    )
    .await
    .expect("build the daemon")
}

async fn meeting(db: &TestDb, id: &MeetingId) -> TrackedMeeting {
    db.store.get_meeting(id).await.unwrap().unwrap()
}

async fn a_failing_meeting_backs_off_without_delaying_the_others(db: &TestDb) {
    let rig = rig_with_quota(1000.0, 1000).await;
    let (healthy, _) = tracked_meeting(db, &rig, 3).await;
    let (broken, _) = tracked_meeting(db, &rig, 3).await;
    rig.sim
        .script(&broken, ScriptedFault::new(500, "ServiceFailureException"));
    let daemon = spawn_daemon(db, rig.client, Duration::from_millis(100), 4).await;
    eventually(
        "12 polls of the healthy meeting and 2 failures of the broken one",
        || async {
            meeting(db, &healthy).await.poll_seq >= 12
                && meeting(db, &broken).await.consecutive_failures >= 2
        },
    )
    .await;
    daemon.stop().await.unwrap();
    let h = meeting(db, &healthy).await;
    let b = meeting(db, &broken).await;
    // Both are due every 100 ms; the broken one waits twice as long after each failure, so
    // it is tried far less often than the healthy one is polled, however fast this machine.
    assert!(
        2 * i64::from(b.consecutive_failures) <= h.poll_seq,
        "the broken meeting backed off: {} failures while the healthy one was polled {} times",
        b.consecutive_failures,
        h.poll_seq
    );
    assert_eq!(b.poll_seq, 0, "no poll of the broken meeting was recorded");
    assert_eq!(
        db.raw.scalar("SELECT count(*) FROM roster_events").await,
        3,
        "only the healthy meeting's joins"
    );
}

async fn meetings_added_and_removed_while_running_are_noticed(db: &TestDb) {
    let rig = rig_with_quota(1000.0, 1000).await;
    let (first, _) = tracked_meeting(db, &rig, 2).await;
    let later = rig
        .driver
        .create_meeting("later", "us-east-1")
        .await
        .unwrap();
    rig.driver
        .add_attendees(&later, [("late@example.com".to_owned(), None)])
        .await
        .unwrap();
    let daemon = spawn_daemon(db, rig.client, Duration::from_millis(200), 4).await;
    eventually("the first meeting's attendees joined", || async {
        db.store.events_for_meeting(&first).await.unwrap().len() == 2
    })
    .await;
    db.store
        .add_meeting(&later, &region(), None, domain::now(), false)
        .await
        .unwrap();
    eventually("the meeting added while running was polled", || async {
        meeting(db, &later).await.poll_seq >= 1
    })
    .await;
    let removed = db
        .store
        .remove_meeting(&first, domain::now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        removed.len(),
        2,
        "both present attendees left with tracking_stopped"
    );
    let seq_at_removal = meeting(db, &first).await.poll_seq;
    // Five more polls of the other meeting: the daemon has re-read the meeting list (every
    // interval) several times since the removal.
    let later_seq = meeting(db, &later).await.poll_seq;
    eventually("five more polls of the remaining meeting", || async {
        meeting(db, &later).await.poll_seq >= later_seq + 5
    })
    .await;
    daemon.stop().await.unwrap();
    let first_now = meeting(db, &first).await;
    assert_eq!(first_now.status, MeetingStatus::Stopped);
    assert_eq!(
        first_now.poll_seq, seq_at_removal,
        "the removed meeting was not polled again"
    );
    let events = db.store.events_for_meeting(&first).await.unwrap();
    assert_eq!(
        events
            .iter()
            .filter(|e| e.kind.as_str() == "joined")
            .count(),
        2
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e.reason.map(|r| r.as_str()) == Some("tracking_stopped"))
            .count(),
        2
    );
}

async fn twenty_meetings_under_a_two_rps_quota_keep_being_polled_within_budget(db: &TestDb) {
    // The simulator allows 2 requests/s (burst 2); the daemon is configured for 2/s too.
    let rig = rig_with_quota(2.0, 2).await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(tracked_meeting(db, &rig, 3).await.0);
    }
    let sim = rig.sim;
    let started = std::time::Instant::now();
    let daemon = spawn_daemon(db, rig.client, Duration::from_secs(2), 8).await;
    // 40 polls at 2 requests/s take 20 s; the limit is only there so a stuck daemon fails.
    eventually_within(
        Duration::from_secs(180),
        "every meeting polled twice",
        || async {
            let listed = db.store.list_meetings().await.unwrap();
            listed.len() == 20 && listed.iter().all(|m| m.poll_seq >= 2)
        },
    )
    .await;
    daemon.stop().await.unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    let stats = sim.stats().list_attendees;
    // The token bucket allows burst + rate × time: an upper bound, which a slow machine only
    // makes easier to meet.
    assert!(
        (stats.requests as f64) <= 2.0 + 2.0 * elapsed + 1.0,
        "{} requests in {elapsed:.1}s",
        stats.requests
    );
    assert!(
        stats.throttled * 10 <= stats.requests,
        "throttles stay rare: {stats:?}"
    );
    assert_eq!(
        db.raw.scalar("SELECT count(*) FROM roster_events").await,
        60,
        "only the 60 joins, nothing spurious"
    );
}
