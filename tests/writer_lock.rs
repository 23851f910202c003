//! The writer lock of a Postgres database, as the real `roster-sync run` holds it: a daemon that
//! loses it (its lock session terminated, another process taking the lock meanwhile) pauses
//! polling and answers 503 on `/readyz` until it holds the lock again, and retention deletes
//! or delivers meanwhile; and a single-writer
//! daemon and cluster replicas refuse to run beside each other, naming the other process.
//!
//! The simulator runs in the test's runtime, so the binary is driven with `tokio::process`.

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::TimeDelta;
use common::{BIN, TestDb, eventually};
use roster_sync::config::{Secret, Settings, WebhookEntry};
use roster_sync::domain::{
    Attendee, AttendeeId, Capabilities, Change, ExternalUserId, LeftReason, MeetingId, Region,
};
use roster_sync::retention::{Deleted, Retention};
use roster_sync::store::{ApplyOutcome, PollRecord, Store};
use sqlx::Connection as _;
use sqlx::postgres::PgConnection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The writer lock's advisory key ("rstrwrtr"), as `pg_locks` shows it: high and low halves.
const WRITER_LOCK: i64 = 0x7273_7472_7772_7472;

/// `roster-sync run` on `db`, polling the simulator at `endpoint`, its endpoint on `port`.
fn run(db: &TestDb, endpoint: &str, port: u16) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("run")
        .env_clear()
        .envs(common::binary_env())
        .env("DATABASE_URL", &db.url)
        .env("ROSTER_SYNC__CHIME__ENDPOINT_URL", endpoint)
        .env("ROSTER_SYNC__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("ROSTER_SYNC__POLL__INTERVAL", "200ms")
        .env("ROSTER_SYNC__RETRY__BASE", "20ms")
        .env("ROSTER_SYNC__RETRY__CAP", "500ms")
        .env("ROSTER_SYNC__CLUSTER__LEASE_TTL", "4s")
        .env("ROSTER_SYNC__CLUSTER__HEARTBEAT", "300ms")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true);
    cmd
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `GET path` on `port`: the status code and the body, or `None` while nothing answers.
async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.ok()?;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let code = answer.split_whitespace().nth(1)?.parse().ok()?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((code, body))
}

/// `ListAttendees` requests the simulator has answered, read from its `/_sim/stats`.
async fn list_attendees_requests(sim_port: u16) -> u64 {
    let (code, body) = get(sim_port, "/_sim/stats")
        .await
        .expect("the simulator answers");
    assert_eq!(code, 200, "{body}");
    let stats: roster_sync::sim::SimStats = serde_json::from_str(&body).expect("stats JSON");
    stats.list_attendees.requests
}

/// Sends SIGTERM and waits for the exit.
async fn terminate(child: &mut Child) {
    let pid = child.id().expect("the daemon is running");
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(sent, "kill -TERM {pid}");
    tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("the daemon stops")
        .expect("wait for the daemon");
}

/// Waits up to `limit` for a process that should refuse to start; its stderr, or a panic when
/// it is still running then.
async fn refused(mut child: Child, limit: Duration, what: &str) -> String {
    let status = match tokio::time::timeout(limit, child.wait()).await {
        Ok(status) => status.expect("wait for the process"),
        Err(_) => {
            let _ = child.kill().await;
            panic!("{what} was not refused: it is still running after {limit:?}");
        }
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr is piped")
        .read_to_string(&mut stderr)
        .await
        .expect("read stderr");
    assert!(!status.success(), "{what} exited with success: {stderr}");
    eprintln!("{what}: {}", stderr.lines().last().unwrap_or_default());
    stderr
}

/// Terminates the session holding the writer lock and takes the lock on `other` before the
/// daemon takes it back (trying again if the daemon was quicker).
async fn take_the_writer_lock_away(other: &mut PgConnection) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_locks \
             WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid() \
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND classid::int8 = $1 AND objid::int8 = $2 AND objsubid = 1",
        )
        .bind(WRITER_LOCK >> 32)
        .bind(WRITER_LOCK & 0xffff_ffff)
        .execute(&mut *other)
        .await
        .unwrap();
        let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(WRITER_LOCK)
            .fetch_one(&mut *other)
            .await
            .unwrap();
        if taken {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "timed out taking the writer lock from the daemon"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn losing_the_writer_lock_pauses_polling_and_readyz_until_the_lock_is_taken_back() {
    let Some(db) = common::postgres_db().await else {
        return;
    };
    let (sim, driver) = common::sim_and_driver(100.0).await;
    let meeting = driver.create_meeting("lock", "us-east-1").await.unwrap();
    driver
        .add_attendees(&meeting, (0..3).map(|i| (format!("person-{i}"), None)))
        .await
        .unwrap();
    db.store
        .add_meeting(
            &meeting,
            &Region::parse("us-east-1").unwrap(),
            None,
            roster_sync::domain::now(),
            false,
        )
        .await
        .unwrap();
    let sim_port = sim.addr().port();
    let port = free_port();
    let mut daemon = run(&db, &sim.endpoint_url(), port)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = daemon.stderr.take().unwrap();
    let log = tokio::spawn(async move {
        let mut text = String::new();
        let mut stderr = stderr;
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    eventually("the daemon is ready and polling", || async {
        get(port, "/readyz").await.is_some_and(|(c, _)| c == 200)
            && list_attendees_requests(sim_port).await > 2
    })
    .await;

    // The lock's session dies and another process takes the lock before the daemon can.
    let mut other = PgConnection::connect(&db.url).await.unwrap();
    take_the_writer_lock_away(&mut other).await;

    eventually("/readyz answers 503 naming the writer lock", || async {
        get(port, "/readyz")
            .await
            .is_some_and(|(code, body)| code == 503 && body.contains("writer lock"))
    })
    .await;
    // Polling has stopped: no ListAttendees request for 2 s (10 poll intervals), once the
    // polls in flight when the lock went have ended.
    eventually("polling stops", || async {
        let before = list_attendees_requests(sim_port).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        list_attendees_requests(sim_port).await == before
    })
    .await;
    let (code, body) = get(port, "/readyz").await.unwrap();
    assert_eq!(code, 503, "still paused: {body}");

    // The other process lets go: the daemon takes the lock back and polls again.
    let paused_at = list_attendees_requests(sim_port).await;
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(WRITER_LOCK)
        .execute(&mut other)
        .await
        .unwrap();
    eventually("ready and polling again", || async {
        get(port, "/readyz").await.is_some_and(|(c, _)| c == 200)
            && list_attendees_requests(sim_port).await > paused_at
    })
    .await;

    terminate(&mut daemon).await;
    let log = log.await.unwrap();
    let lost = log.matches("lost the writer lock").count();
    assert_eq!(lost, 1, "the loss is logged once:\n{log}");
    other.close().await.unwrap();
    db.finish().await;
}

/// A replica (`cluster.enabled`) that describes itself as `host`.
fn replica(db: &TestDb, endpoint: &str, port: u16, host: &str) -> Command {
    let mut cmd = run(db, endpoint, port);
    cmd.env("ROSTER_SYNC__CLUSTER__ENABLED", "true")
        .env("HOSTNAME", host);
    cmd
}

#[tokio::test]
async fn a_single_writer_is_refused_while_cluster_replicas_run_naming_them() {
    let Some(db) = common::postgres_db().await else {
        return;
    };
    let (sim, _driver) = common::sim_and_driver(100.0).await;
    let port = free_port();
    let mut first = replica(&db, &sim.endpoint_url(), port, "replica-one.example")
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    eventually("the replica is ready", || async {
        get(port, "/readyz").await.is_some_and(|(c, _)| c == 200)
    })
    .await;

    let single = run(&db, &sim.endpoint_url(), free_port())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = refused(
        single,
        Duration::from_secs(20),
        "a single writer beside a replica",
    )
    .await;
    let pid = first.id().expect("the replica runs");
    assert!(
        stderr.contains(&format!("pid {pid} on host replica-one.example")),
        "{stderr}"
    );
    assert!(stderr.contains("cluster"), "{stderr}");
    assert!(first.try_wait().unwrap().is_none(), "the replica runs on");
    terminate(&mut first).await;
    db.finish().await;
}

#[tokio::test]
async fn a_cluster_replica_is_refused_while_a_single_writer_runs_naming_it() {
    let Some(db) = common::postgres_db().await else {
        return;
    };
    let (sim, _driver) = common::sim_and_driver(100.0).await;
    let port = free_port();
    let mut single = run(&db, &sim.endpoint_url(), port)
        .env("HOSTNAME", "writer-one.example")
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    eventually("the single writer is ready", || async {
        get(port, "/readyz").await.is_some_and(|(c, _)| c == 200)
    })
    .await;

    let second = replica(&db, &sim.endpoint_url(), free_port(), "replica-two.example")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = refused(
        second,
        Duration::from_secs(20),
        "a replica beside a single writer",
    )
    .await;
    let pid = single.id().expect("the single writer runs");
    assert!(
        stderr.contains(&format!("pid {pid} on host writer-one.example")),
        "{stderr}"
    );
    assert!(stderr.contains("cluster.enabled"), "{stderr}");
    assert!(
        single.try_wait().unwrap().is_none(),
        "the single writer runs on"
    );
    terminate(&mut single).await;
    db.finish().await;
}

/// A tracked meeting in which ana joined `days_ago` days ago and left a day later: two events.
async fn ana_came_and_went(store: &Store, meeting: &MeetingId, days_ago: i64) {
    if store.get_meeting(meeting).await.unwrap().is_none() {
        store
            .add_meeting(
                meeting,
                &Region::parse("us-east-1").unwrap(),
                None,
                roster_sync::domain::now(),
                false,
            )
            .await
            .unwrap();
    }
    let ana = Attendee {
        attendee_id: AttendeeId::parse("00000000-0000-0000-0000-000000000001").unwrap(),
        external_user_id: ExternalUserId::new("ana".to_owned()),
        capabilities: Capabilities::DEFAULT,
    };
    for (days, change) in [
        (days_ago, Change::joined(&ana)),
        (days_ago - 1, Change::left(&ana, LeftReason::Removed)),
    ] {
        let snapshot = store.snapshot(meeting).await.unwrap();
        let at = roster_sync::domain::now() - TimeDelta::days(days);
        let applied = store
            .apply(PollRecord {
                meeting_id: meeting,
                expected_seq: snapshot.poll_seq,
                started_at: at,
                observed_at: at,
                previous_poll_at: snapshot.last_polled_at,
                changes: &[change],
            })
            .await
            .unwrap();
        assert!(
            matches!(applied, ApplyOutcome::Applied { .. }),
            "{applied:?}"
        );
    }
}

fn meeting_aa() -> MeetingId {
    MeetingId::parse("00000000-0000-4000-8000-0000000000aa").unwrap()
}

#[tokio::test]
async fn retention_deletes_nothing_while_the_writer_lock_is_lost() {
    let Some(db) = common::postgres_db().await else {
        return;
    };
    let store = &db.store;
    let meeting = meeting_aa();
    // Ana came and went ten days ago: both events are past a one-day retention.
    ana_came_and_went(store, &meeting, 10).await;
    let mut settings = Settings::defaults().unwrap();
    settings.retention.events = Some(Duration::from_secs(86_400));
    settings.validate().unwrap();
    let retention = Retention::from_settings(&settings, store.clone()).unwrap();
    store.acquire_writer_lock().await.unwrap();

    let mut other = PgConnection::connect(&db.url).await.unwrap();
    take_the_writer_lock_away(&mut other).await;
    let permit = store.writer_permit();
    eventually("the store notices the lost lock", || {
        let held = permit.is_held();
        async move { !held }
    })
    .await;
    let cancel = CancellationToken::new();
    let deleted = retention
        .pass(roster_sync::domain::now(), &cancel)
        .await
        .unwrap();
    assert_eq!(
        deleted,
        Deleted::default(),
        "nothing is deleted without the lock"
    );
    assert_eq!(store.events_for_meeting(&meeting).await.unwrap().len(), 2);

    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(WRITER_LOCK)
        .execute(&mut other)
        .await
        .unwrap();
    eventually("the store holds the lock again", || {
        let held = permit.is_held();
        async move { held }
    })
    .await;
    let deleted = retention
        .pass(roster_sync::domain::now(), &cancel)
        .await
        .unwrap();
    assert_eq!(deleted.events, 2, "{deleted:?}");
    other.close().await.unwrap();
    db.finish().await;
}

/// Counts the POSTs a webhook receiver on 127.0.0.1 gets, answering each 204.
async fn counting_receiver() -> (String, Arc<AtomicUsize>) {
    let posts = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(
                |axum::extract::State(posts): axum::extract::State<Arc<AtomicUsize>>| async move {
                    posts.fetch_add(1, Ordering::SeqCst);
                    axum::http::StatusCode::NO_CONTENT
                },
            ),
        )
        .with_state(Arc::clone(&posts));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, posts)
}

#[tokio::test]
async fn a_webhook_sink_delivers_nothing_while_the_writer_lock_is_lost() {
    let Some(db) = common::postgres_db().await else {
        return;
    };
    let store = &db.store;
    store.acquire_writer_lock().await.unwrap();
    let (url, posts) = counting_receiver().await;
    let mut settings = Settings::defaults().unwrap();
    settings.webhook.poll_interval = Duration::from_millis(20);
    settings.webhooks = vec![WebhookEntry {
        name: "audit".into(),
        url,
        secret: Some(Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")),
        secret_env: None,
        kinds: Vec::new(),
        meeting_labels: Vec::new(),
        external_user_ids: Vec::new(),
    }];
    settings.validate().unwrap();
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    roster_sync::sinks::spawn_webhooks(&settings, store.clone(), cancel.clone(), &tracker)
        .await
        .unwrap();
    tracker.close();

    let mut other = PgConnection::connect(&db.url).await.unwrap();
    take_the_writer_lock_away(&mut other).await;
    let permit = store.writer_permit();
    eventually("the store notices the lost lock", || {
        let held = permit.is_held();
        async move { !held }
    })
    .await;
    // Events recorded meanwhile (by whichever process writes now) are not delivered from here.
    ana_came_and_went(store, &meeting_aa(), 2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        posts.load(Ordering::SeqCst),
        0,
        "no delivery without the lock"
    );

    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(WRITER_LOCK)
        .execute(&mut other)
        .await
        .unwrap();
    eventually("delivery resumes with the lock", || {
        let delivered = posts.load(Ordering::SeqCst);
        async move { delivered > 0 }
    })
    .await;
    cancel.cancel();
    tracker.wait().await;
    other.close().await.unwrap();
    db.finish().await;
}
