//! The poll loop end to end: the real SDK client → simulator over HTTP → diff → the store, on
//! Postgres and on SQLite.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::TestDb;
use roster_sync::chime::{ChimeClient, ClientOptions, simulator_sdk_config};
use roster_sync::domain::{self, Capabilities, Capability, MeetingId, Region};
use roster_sync::driver::{Created, Driver};
use roster_sync::scheduler::{PollOutcome, Scheduler, SchedulerOptions, poll_once};
use roster_sync::sim::{self, ScriptedFault, SimConfig, SimHandle};
use roster_sync::store::MeetingStatus;
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
/// tables. On Postgres this reads the server's own counters (`pg_stat_user_tables`).
async fn unchanged_polls_write_no_snapshot_or_event_rows(db: &TestDb) {
    let rig = rig_with_quota(1000.0, 1000).await;
    let (id, _) = tracked_meeting(db, &rig, 40).await;
    let (first, mut known) = poll_once(&rig.client, &db.store, &id, &region(), None).await;
    assert!(matches!(first, PollOutcome::Changed(_)));
    let before = writes(db).await;
    // A second store, so its connections (and their statistics) are flushed when it closes.
    let polls = roster_sync::store::Store::connect(&db.url, 2)
        .await
        .unwrap();
    for _ in 0..100 {
        let (outcome, k) = poll_once(&rig.client, &polls, &id, &region(), known).await;
        assert!(matches!(outcome, PollOutcome::Unchanged), "{outcome:?}");
        known = k;
    }
    polls.close().await;
    let after = writes(db).await;
    assert_eq!(
        after, before,
        "unchanged polls wrote to roster_events/roster_attendees"
    );
    let meeting = db.store.get_meeting(&id).await.unwrap().unwrap();
    assert_eq!(
        meeting.poll_seq, 101,
        "every poll was recorded in the bookkeeping"
    );
    assert_eq!(rig.sim.stats().list_attendees.requests, 101);
}

/// Inserted + updated + deleted rows of the event and snapshot tables: Postgres statistics
/// (after the writers' connections closed), or row counts and `total_changes` on SQLite.
async fn writes(db: &TestDb) -> i64 {
    if db.raw.is_postgres() {
        // Statistics arrive asynchronously from closed backends; give them a moment.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        db.raw.execute("SELECT pg_stat_clear_snapshot()").await;
        db.raw
            .scalar(
                "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::bigint FROM pg_stat_user_tables \
                 WHERE relname IN ('roster_events', 'roster_attendees')",
            )
            .await
    } else {
        db.raw.scalar("SELECT (SELECT count(*) FROM roster_events) * 1000000 + (SELECT count(*) FROM roster_attendees)").await
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
    let _ = poll_once(&rig.client, &db.store, &id, &region(), known).await;
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

fn fast_scheduler(interval: Duration, concurrency: usize) -> SchedulerOptions {
    SchedulerOptions {
        interval,
        jitter: 0.1,
        concurrency,
        failure_backoff_cap: Duration::from_secs(60),
        refresh_every: interval,
        shutdown_grace: Duration::from_secs(5),
    }
}

async fn a_failing_meeting_backs_off_without_delaying_the_others(db: &TestDb) {
    let rig = rig_with_quota(1000.0, 1000).await;
    let (healthy, _) = tracked_meeting(db, &rig, 3).await;
    let (broken, _) = tracked_meeting(db, &rig, 3).await;
    rig.sim
        .script(&broken, ScriptedFault::new(500, "ServiceFailureException"));
    let client = Arc::new(rig.client);
    let scheduler = Scheduler::new(
        Arc::clone(&client),
        db.store.clone(),
        fast_scheduler(Duration::from_millis(100), 4),
    );
    let cancel = CancellationToken::new();
    let run = tokio::spawn(scheduler.run(cancel.clone()));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    cancel.cancel();
    run.await.unwrap();
    let h = db.store.get_meeting(&healthy).await.unwrap().unwrap();
    let b = db.store.get_meeting(&broken).await.unwrap().unwrap();
    assert!(
        h.poll_seq >= 12,
        "the healthy meeting kept its pace: {} polls",
        h.poll_seq
    );
    // 100 ms doubling per failure: 0.2 + 0.4 + 0.8 + 1.6 s already passes 2.5 s.
    assert!(
        b.consecutive_failures >= 2 && b.consecutive_failures <= 5,
        "backed off: {} failures",
        b.consecutive_failures
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
    let client = Arc::new(rig.client);
    let scheduler = Scheduler::new(
        Arc::clone(&client),
        db.store.clone(),
        fast_scheduler(Duration::from_millis(200), 4),
    );
    let cancel = CancellationToken::new();
    let run = tokio::spawn(scheduler.run(cancel.clone()));
    tokio::time::sleep(Duration::from_millis(600)).await;
    let later = rig
        .driver
        .create_meeting("later", "us-east-1")
        .await
        .unwrap();
    rig.driver
        .add_attendees(&later, [("late@example.com".to_owned(), None)])
        .await
        .unwrap();
    db.store
        .add_meeting(&later, &region(), None, domain::now(), false)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
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
    let seq_at_removal = db
        .store
        .get_meeting(&first)
        .await
        .unwrap()
        .unwrap()
        .poll_seq;
    tokio::time::sleep(Duration::from_millis(800)).await;
    cancel.cancel();
    run.await.unwrap();
    assert!(
        db.store
            .get_meeting(&later)
            .await
            .unwrap()
            .unwrap()
            .poll_seq
            >= 1,
        "the new meeting was polled"
    );
    let first_now = db.store.get_meeting(&first).await.unwrap().unwrap();
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
    let client = Arc::new(rig.client);
    let scheduler = Scheduler::new(
        Arc::clone(&client),
        db.store.clone(),
        fast_scheduler(Duration::from_secs(2), 8),
    );
    let cancel = CancellationToken::new();
    let started = std::time::Instant::now();
    let run = tokio::spawn(scheduler.run(cancel.clone()));
    tokio::time::sleep(Duration::from_secs(25)).await;
    cancel.cancel();
    run.await.unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    let stats = rig.sim.stats().list_attendees;
    // The token bucket allows burst + rate × time; the sim saw no more than that.
    assert!(
        (stats.requests as f64) <= 2.0 + 2.0 * elapsed + 1.0,
        "{} requests in {elapsed:.1}s",
        stats.requests
    );
    assert!(
        stats.throttled * 10 <= stats.requests,
        "throttles stay rare: {stats:?}"
    );
    for id in &ids {
        let m = db.store.get_meeting(id).await.unwrap().unwrap();
        assert!(
            m.poll_seq >= 2,
            "meeting {id} polled only {} times",
            m.poll_seq
        );
    }
    assert_eq!(
        db.raw.scalar("SELECT count(*) FROM roster_events").await,
        60,
        "only the 60 joins, nothing spurious"
    );
}
