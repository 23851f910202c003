//! A meeting moved to another control region is never ended by the move: it has "answered"
//! only in the region it is polled in now. Through the real SDK client against a simulator that
//! keeps each meeting in the control region that created it, on Postgres and on SQLite, and
//! through the real binary for `meetings add --force`.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{TestDb, eventually};
use roster_sync::app::{Daemon, DaemonOptions};
use roster_sync::chime::{ChimeClient, ClientOptions, simulator_sdk_config};
use roster_sync::config::{MeetingEntry, Settings};
use roster_sync::domain::{self, MeetingId, Region};
use roster_sync::sim::control::Driver;
use roster_sync::sim::{self, SimConfig, SimHandle};
use roster_sync::store::{MeetingStatus, TrackedMeeting};
use tokio_util::sync::CancellationToken;

fn west() -> Region {
    Region::parse("us-west-2").unwrap()
}

fn east() -> Region {
    Region::parse("us-east-1").unwrap()
}

/// A simulator that keeps meetings in their control region, and a meeting of 6 attendees
/// created in us-west-2.
async fn meeting_in_west() -> (SimHandle, MeetingId) {
    let sim = sim::start(
        "127.0.0.1:0".parse().unwrap(),
        SimConfig {
            rate: f64::INFINITY,
            control_regions: true,
            ..SimConfig::default()
        },
    )
    .await
    .expect("simulator");
    let driver = Driver::new(client(&sim).sdk_client(&west()));
    let id = driver.create_meeting("moved", "us-west-2").await.unwrap();
    driver
        .add_attendees(&id, (0..6).map(|i| (format!("person-{i}"), None)))
        .await
        .unwrap();
    (sim, id)
}

fn client(sim: &SimHandle) -> ChimeClient {
    let mut options = ClientOptions::for_endpoint(&sim.endpoint_url(), 1000.0, 1000);
    options.retry.base = Duration::from_millis(10);
    options.retry.cap = Duration::from_millis(100);
    ChimeClient::new(simulator_sdk_config(&east()), options)
}

/// The daemon as `run` builds it, polling every 100 ms, with the configured `meetings`.
async fn daemon(db: &TestDb, sim: &SimHandle, meetings: Vec<MeetingEntry>) -> Daemon {
    let mut settings = Settings::defaults().unwrap();
    settings.database.url = db.url.clone();
    settings.http.listen.clear();
    settings.chime.region = east();
    settings.poll.interval = Duration::from_millis(100);
    settings.poll.failure_backoff_cap = Duration::from_millis(200);
    settings.shutdown.grace = Duration::from_secs(5);
    settings.meetings = meetings;
    Daemon::build(
        &settings,
        Some(db.store.clone()),
        CancellationToken::new(),
        DaemonOptions {
            client: Some(Arc::new(client(sim))),
            ..DaemonOptions::default()
        },
    )
    .await
    .expect("build the daemon")
}

async fn meeting(db: &TestDb, id: &MeetingId) -> TrackedMeeting {
    db.store.get_meeting(id).await.unwrap().unwrap()
}

async fn lefts(db: &TestDb) -> i64 {
    db.raw
        .scalar("SELECT count(*) FROM roster_events WHERE kind = 'left'")
        .await
}

async fn joins(db: &TestDb) -> i64 {
    db.raw
        .scalar("SELECT count(*) FROM roster_events WHERE kind = 'joined'")
        .await
}

/// Tracks the meeting in us-west-2 and runs a daemon until its 6 attendees joined.
async fn recorded_in_west(db: &TestDb, sim: &SimHandle, id: &MeetingId) {
    db.store
        .add_meeting(id, &west(), None, domain::now(), false)
        .await
        .unwrap();
    let d = daemon(db, sim, Vec::new()).await;
    eventually("6 joins recorded in us-west-2", || async {
        joins(db).await == 6
    })
    .await;
    d.stop().await.unwrap();
}

both_backends!(
    a_meeting_moved_where_it_does_not_live_is_never_ended,
    a_meeting_moved_while_the_daemon_polls_it_is_never_ended,
    a_configured_meeting_without_region_stays_in_its_tracked_region,
    a_configured_region_where_the_meeting_is_not_found_is_refused,
    a_configured_region_where_get_meeting_finds_the_meeting_moves_it,
);

/// The move `meetings add --force --no-verify` makes: the meeting answered in us-west-2, then
/// fails in us-east-1 with NotFound from ListAttendees and GetMeeting. That is a failing poll,
/// never an ending.
async fn a_meeting_moved_where_it_does_not_live_is_never_ended(db: &TestDb) {
    let (sim, id) = meeting_in_west().await;
    recorded_in_west(db, &sim, &id).await;
    db.store
        .add_meeting(&id, &east(), None, domain::now(), true)
        .await
        .unwrap();
    let d = daemon(db, &sim, Vec::new()).await;
    eventually("three failed polls in us-east-1", || async {
        let m = meeting(db, &id).await;
        m.consecutive_failures >= 3 || m.status != MeetingStatus::Active
    })
    .await;
    d.stop().await.unwrap();
    let m = meeting(db, &id).await;
    assert_eq!(m.status, MeetingStatus::Active);
    assert_eq!(m.region, east());
    assert_eq!(lefts(db).await, 0, "a move invented departures");
    assert_eq!(m.last_error_code.as_deref(), Some("NotFoundException"));
}

/// The same move while a daemon polls the meeting: what the scheduler remembers of the
/// meeting from us-west-2 must not count as an answer in us-east-1.
async fn a_meeting_moved_while_the_daemon_polls_it_is_never_ended(db: &TestDb) {
    let (sim, id) = meeting_in_west().await;
    db.store
        .add_meeting(&id, &west(), None, domain::now(), false)
        .await
        .unwrap();
    let d = daemon(db, &sim, Vec::new()).await;
    eventually("6 joins recorded in us-west-2", || async {
        joins(db).await == 6
    })
    .await;
    let seq = meeting(db, &id).await.poll_seq;
    eventually("two more polls in us-west-2", || async {
        meeting(db, &id).await.poll_seq >= seq + 2
    })
    .await;
    db.store
        .add_meeting(&id, &east(), None, domain::now(), true)
        .await
        .unwrap();
    eventually("three failed polls in us-east-1", || async {
        let m = meeting(db, &id).await;
        m.consecutive_failures >= 3 || m.status != MeetingStatus::Active
    })
    .await;
    d.stop().await.unwrap();
    let m = meeting(db, &id).await;
    assert_eq!(m.status, MeetingStatus::Active);
    assert_eq!(lefts(db).await, 0, "a move invented departures");
}

/// An entry without `region` means "the default region" only for a meeting not tracked yet:
/// it never moves one tracked elsewhere, and the meeting goes on being polled where it is.
async fn a_configured_meeting_without_region_stays_in_its_tracked_region(db: &TestDb) {
    let (sim, id) = meeting_in_west().await;
    recorded_in_west(db, &sim, &id).await;
    let seq = meeting(db, &id).await.poll_seq;
    let entry = MeetingEntry {
        id: id.clone(),
        region: None,
        label: None,
    };
    let d = daemon(db, &sim, vec![entry]).await;
    eventually("three more successful polls in us-west-2", || async {
        let m = meeting(db, &id).await;
        m.poll_seq >= seq + 3 || m.status != MeetingStatus::Active
    })
    .await;
    d.stop().await.unwrap();
    let m = meeting(db, &id).await;
    assert_eq!(m.region, west());
    assert_eq!(m.status, MeetingStatus::Active);
    assert_eq!(m.consecutive_failures, 0);
    assert_eq!(lefts(db).await, 0);
}

/// An entry naming a region where GetMeeting does not find the meeting is refused: the
/// meeting stays where it is tracked and keeps being polled there.
async fn a_configured_region_where_the_meeting_is_not_found_is_refused(db: &TestDb) {
    let (sim, id) = meeting_in_west().await;
    recorded_in_west(db, &sim, &id).await;
    let seq = meeting(db, &id).await.poll_seq;
    let entry = MeetingEntry {
        id: id.clone(),
        region: Some(east()),
        label: None,
    };
    let d = daemon(db, &sim, vec![entry]).await;
    eventually("three more successful polls in us-west-2", || async {
        let m = meeting(db, &id).await;
        m.poll_seq >= seq + 3 || m.status != MeetingStatus::Active
    })
    .await;
    d.stop().await.unwrap();
    let m = meeting(db, &id).await;
    assert_eq!(m.region, west());
    assert_eq!(m.status, MeetingStatus::Active);
    assert_eq!(lefts(db).await, 0);
}

/// An entry naming the region where the meeting really is moves it there once GetMeeting
/// finds it.
async fn a_configured_region_where_get_meeting_finds_the_meeting_moves_it(db: &TestDb) {
    let (sim, id) = meeting_in_west().await;
    // Tracked in the wrong region: never answered there.
    db.store
        .add_meeting(&id, &east(), None, domain::now(), false)
        .await
        .unwrap();
    let entry = MeetingEntry {
        id: id.clone(),
        region: Some(west()),
        label: None,
    };
    let d = daemon(db, &sim, vec![entry]).await;
    eventually("6 joins recorded in us-west-2", || async {
        joins(db).await == 6
    })
    .await;
    d.stop().await.unwrap();
    let m = meeting(db, &id).await;
    assert_eq!(m.region, west());
    assert_eq!(m.status, MeetingStatus::Active);
    assert_eq!(lefts(db).await, 0);
}

/// `meetings add --force` to a region where GetMeeting finds nothing is refused (naming
/// `--no-verify`); with `--no-verify` the move is made, and the daemon does not end it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meetings_add_force_to_a_region_without_the_meeting_needs_no_verify() {
    let (sim, id) = meeting_in_west().await;
    let db = common::sqlite_db().await;
    recorded_in_west(&db, &sim, &id).await;
    let add = |extra: &[&str]| {
        let mut cmd = Command::new(common::BIN);
        cmd.args([
            "meetings",
            "add",
            id.as_str(),
            "--region",
            "us-east-1",
            "--force",
        ])
        .args(extra)
        .env_clear()
        .envs(common::binary_env())
        .env("DATABASE_URL", &db.url)
        .env("ROSTER_SYNC__CHIME__ENDPOINT_URL", sim.endpoint_url())
        .stdin(Stdio::null());
        let out = cmd.output().expect("run roster-sync");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, text) = add(&[]);
    assert!(!ok, "{text}");
    assert!(
        text.contains("not found in region us-east-1") && text.contains("--no-verify"),
        "{text}"
    );
    assert_eq!(meeting(&db, &id).await.region, west());
    let (ok, text) = add(&["--no-verify"]);
    assert!(ok && text.contains("moved from region us-west-2"), "{text}");
    let d = daemon(&db, &sim, Vec::new()).await;
    eventually("two failed polls in us-east-1", || async {
        let m = meeting(&db, &id).await;
        m.consecutive_failures >= 2 || m.status != MeetingStatus::Active
    })
    .await;
    d.stop().await.unwrap();
    assert_eq!(meeting(&db, &id).await.status, MeetingStatus::Active);
    assert_eq!(lefts(&db).await, 0);
    db.finish().await;
}
