//! The meeting-events intake as an operator sees it, through the real binary: its metrics
//! (`roster_sync_meeting_events_*`), its logs, `/readyz`, and that a daemon without
//! `[meeting_events]` behaves as before.

mod common;

use std::time::Duration;

use common::eventually;

use chrono::Utc;
use roster_sync::chime::{ChimeClient, ClientOptions, simulator_sdk_config};
use roster_sync::domain::{self, MeetingId, Region};
use roster_sync::lifecycle::{EventType, MeetingEvent};
use roster_sync::sim::control::Driver;
use roster_sync::sim::{self, SimConfig, SimHandle};
use roster_sync::store::Store;

const LIMIT: Duration = Duration::from_secs(60);

fn region() -> Region {
    Region::parse("us-east-1").unwrap()
}

struct Rig {
    sim: SimHandle,
    driver: Driver,
    store: Store,
    url: String,
    _dir: tempfile::TempDir,
    meeting: MeetingId,
}

/// The simulator, a SQLite file with one tracked meeting of two attendees.
async fn rig() -> Rig {
    let sim = sim::start(
        "127.0.0.1:0".parse().unwrap(),
        SimConfig {
            exempt_control: true,
            ..SimConfig::default()
        },
    )
    .await
    .unwrap();
    let control = ChimeClient::new(
        simulator_sdk_config(&region()),
        ClientOptions::for_endpoint(&sim.endpoint_url(), 1000.0, 1000),
    );
    let driver = Driver::new(control.sdk_client(&region()));
    let meeting = driver.create_meeting("ops", "us-east-1").await.unwrap();
    driver
        .add_attendees(&meeting, (0..2).map(|i| (format!("p{i}"), None)))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("roster.db").display());
    let store = Store::connect(&url, 1).await.unwrap();
    store.migrate().await.unwrap();
    store
        .add_meeting(&meeting, &region(), None, domain::now(), false)
        .await
        .unwrap();
    Rig {
        sim,
        driver,
        store,
        url,
        _dir: dir,
        meeting,
    }
}

fn free_listen() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("127.0.0.1:{}", l.local_addr().unwrap().port())
}

/// `roster-sync run` polling the simulator every 200 ms, its endpoint on `listen`.
fn run(rig: &Rig, listen: &str, env: &[(&str, String)]) -> tokio::process::Child {
    tokio::process::Command::new(common::BIN)
        .arg("run")
        .env_clear()
        .envs(common::binary_env())
        .env("ROSTER_SYNC__CHIME__ENDPOINT_URL", rig.sim.endpoint_url())
        .env("DATABASE_URL", &rig.url)
        .env("ROSTER_SYNC__HTTP__LISTEN", listen)
        .env("ROSTER_SYNC__POLL__INTERVAL", "200ms")
        .env("ROSTER_SYNC__LOG__FORMAT", "json")
        .envs(env.iter().map(|(k, v)| (*k, v.clone())))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start roster-sync run")
}

async fn get(listen: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(listen).await else {
        return (0, String::new());
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: {listen}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

/// The value of the sample whose line starts with `series`.
async fn metric(listen: &str, series: &str) -> Option<f64> {
    let (_, body) = get(listen, "/metrics").await;
    body.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn stop(child: tokio::process::Child) -> String {
    let pid = child.id().expect("a pid");
    let _ = tokio::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await;
    let out = tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .expect("the daemon stops")
        .unwrap();
    assert!(out.status.success(), "exit {:?}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[tokio::test]
async fn a_queue_that_does_not_exist_leaves_polling_and_readyz_alone() {
    let rig = rig().await;
    let listen = free_listen();
    let missing = format!("{}/123456789012/no-such-queue", rig.sim.endpoint_url());
    let child = run(
        &rig,
        &listen,
        &[
            ("ROSTER_SYNC__MEETING_EVENTS__QUEUE_URL", missing),
            (
                "ROSTER_SYNC__MEETING_EVENTS__ENDPOINT_URL",
                rig.sim.endpoint_url(),
            ),
            ("ROSTER_SYNC__MEETING_EVENTS__WAIT", "1s".into()),
        ],
    );
    eventually("the first poll's joins", || async {
        rig.store.events_since(0, 100).await.unwrap().len() == 2
    })
    .await;
    eventually(
        "roster_sync_meeting_events_receive_errors_total{reason=\"no_such_queue\"}",
        || async {
            metric(
                &listen,
                "roster_sync_meeting_events_receive_errors_total{reason=\"no_such_queue\"}",
            )
            .await
            .is_some_and(|n| n >= 1.0)
        },
    )
    .await;
    assert_eq!(
        metric(&listen, "roster_sync_meeting_events_up").await,
        Some(0.0)
    );
    assert_eq!(
        get(&listen, "/readyz").await.0,
        200,
        "an unreadable queue made the daemon unready"
    );
    // Polling goes on: a change is still recorded at the scheduled pace.
    rig.driver
        .add_attendees(&rig.meeting, [("later".to_owned(), None)])
        .await
        .unwrap();
    eventually("the scheduled poll's join", || async {
        rig.store.events_since(0, 100).await.unwrap().len() == 3
    })
    .await;
    let logs = stop(child).await;
    let complaints = logs
        .lines()
        .filter(|l| l.contains("cannot read the queue"))
        .collect::<Vec<_>>();
    assert_eq!(
        complaints.len(),
        1,
        "logged once per reason, not per retry: {complaints:?}"
    );
    assert!(complaints[0].contains("no_such_queue"), "{}", complaints[0]);
}

#[tokio::test]
async fn events_and_bad_bodies_are_counted_by_type_and_outcome() {
    let rig = rig().await;
    let queue_url = rig.sim.create_queue("events").unwrap();
    let listen = free_listen();
    let child = run(
        &rig,
        &listen,
        &[
            ("ROSTER_SYNC__MEETING_EVENTS__QUEUE_URL", queue_url),
            (
                "ROSTER_SYNC__MEETING_EVENTS__ENDPOINT_URL",
                rig.sim.endpoint_url(),
            ),
            ("ROSTER_SYNC__MEETING_EVENTS__WAIT", "1s".into()),
        ],
    );
    eventually("the first poll's joins", || async {
        rig.store.events_since(0, 100).await.unwrap().len() == 2
    })
    .await;
    let now = Utc::now();
    let ended = MeetingEvent {
        id: uuid::Uuid::new_v4().to_string(),
        event_type: EventType::MeetingEnded,
        region: region(),
        time: now,
        occurred_at: now,
        meeting_id: rig.meeting.clone(),
        external_meeting_id: None,
        media_region: None,
        attendee: None,
        network_type: None,
        capabilities: None,
        success: None,
    }
    .to_body("123456789012");
    for body in [
        ended.as_str(),
        ended.as_str(),
        "{",
        "{\"source\":\"aws.s3\"}",
    ] {
        rig.sim.send_to_queue("events", body).unwrap();
    }
    for (series, at_least) in [
        (
            "roster_sync_meeting_events_total{type=\"MeetingEnded\",outcome=\"hint\"}",
            1.0,
        ),
        (
            "roster_sync_meeting_events_total{type=\"MeetingEnded\",outcome=\"duplicate\"}",
            1.0,
        ),
        (
            "roster_sync_meeting_events_total{type=\"unknown\",outcome=\"malformed\"}",
            1.0,
        ),
        (
            "roster_sync_meeting_events_total{type=\"unknown\",outcome=\"not_chime\"}",
            1.0,
        ),
        ("roster_sync_meeting_events_up", 1.0),
        ("roster_sync_meeting_events_age_seconds_count", 2.0),
    ] {
        eventually(series, || async {
            metric(&listen, series).await.is_some_and(|n| n >= at_least)
        })
        .await;
    }
    assert_eq!(
        rig.store.meeting_status(&rig.meeting).await.unwrap(),
        Some(roster_sync::store::MeetingStatus::Active),
        "MeetingEnded alone ended the meeting"
    );
    assert_eq!(rig.store.events_since(0, 100).await.unwrap().len(), 2);
    let c = rig.sim.queue_counts("events").unwrap();
    assert_eq!(c.visible + c.in_flight, 0, "every message deleted");
    stop(child).await;
}

#[tokio::test]
async fn without_meeting_events_the_daemon_runs_as_before() {
    let rig = rig().await;
    rig.sim.create_queue("events").unwrap();
    rig.sim.send_to_queue("events", "{}").unwrap();
    let listen = free_listen();
    let child = run(&rig, &listen, &[]);
    eventually("the first poll's joins", || async {
        rig.store.events_since(0, 100).await.unwrap().len() == 2
    })
    .await;
    eventually("/readyz 200", || async {
        get(&listen, "/readyz").await.0 == 200
    })
    .await;
    let (_, metrics) = get(&listen, "/metrics").await;
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("roster_sync_meeting_events_up")),
        "an intake ran without [meeting_events]"
    );
    let logs = stop(child).await;
    assert!(!logs.contains("meeting events"), "{logs}");
    let c = rig.sim.queue_counts("events").unwrap();
    assert_eq!(c.visible, 1, "the queue was read");
}
