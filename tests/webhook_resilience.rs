//! Webhook sinks under the failures that used to break them: a person erased (`forget`) while
//! a batch holding them waits to be retried, a database pool of one connection beside a sink,
//! and a replica stopped (SIGSTOP) while it holds a sink's claim. Each test drives a real
//! receiver (an axum server on port 0); the last two run the real binary on Postgres.

mod common;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use chrono::TimeDelta;
use common::{TestDb, eventually};
use roster_sync::config::{Secret, Settings, WebhookEntry};
use roster_sync::domain::{
    self, Attendee, AttendeeId, Capabilities, Change, ExternalUserId, MeetingId, Region,
};
use roster_sync::sinks::webhook::{Sink, Step, http_client};
use roster_sync::store::{ApplyOutcome, PollRecord, Store};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

both_backends!(
    a_person_forgotten_while_a_batch_waits_for_a_retry_is_never_delivered,
    a_claim_taken_over_after_it_expired_can_no_longer_move_the_cursor,
);

fn attendee(n: u32, user: &str) -> Attendee {
    Attendee {
        attendee_id: AttendeeId::parse(&format!("bbbbbbbb-0000-4000-8000-{n:012x}")).unwrap(),
        external_user_id: ExternalUserId::new(user),
        capabilities: Capabilities::DEFAULT,
    }
}

/// Records one poll with `changes` against the stored snapshot.
async fn poll(store: &Store, id: &MeetingId, changes: &[Change]) {
    let snapshot = store.snapshot(id).await.unwrap();
    let observed_at = domain::now();
    let rec = PollRecord {
        meeting_id: id,
        expected_seq: snapshot.poll_seq,
        started_at: observed_at - TimeDelta::milliseconds(1),
        observed_at,
        previous_poll_at: snapshot.last_polled_at,
        changes,
    };
    match store.apply(rec).await.unwrap() {
        ApplyOutcome::Applied { .. } => {}
        ApplyOutcome::Conflict => panic!("unexpected conflict"),
    }
}

/// What the receiver saw: every request's body and the status it was answered.
#[derive(Default)]
struct Received {
    /// Answer 500 while set.
    failing: bool,
    /// How long to wait before answering (a slow receiver keeps posts in flight).
    delay: Duration,
    requests: Vec<(StatusCode, String)>,
}

impl Received {
    /// The distinct event ids of every batch answered 2xx.
    fn delivered(&self) -> std::collections::BTreeSet<i64> {
        self.requests
            .iter()
            .filter(|(status, _)| status.is_success())
            .flat_map(|(_, body)| {
                let doc: serde_json::Value = serde_json::from_str(body).unwrap();
                doc["data"]["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["event_id"].as_i64().unwrap())
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

async fn receive(State(state): State<Arc<Mutex<Received>>>, body: axum::body::Bytes) -> StatusCode {
    let delay = state.lock().unwrap().delay;
    tokio::time::sleep(delay).await;
    let mut state = state.lock().unwrap();
    let status = if state.failing {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    state
        .requests
        .push((status, String::from_utf8_lossy(&body).into_owned()));
    status
}

/// A receiver on 127.0.0.1, port 0; its URL and what it saw.
async fn receiver(failing: bool) -> (String, Arc<Mutex<Received>>) {
    let state = Arc::new(Mutex::new(Received {
        failing,
        ..Received::default()
    }));
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, state)
}

fn webhook(name: &str, url: &str) -> WebhookEntry {
    WebhookEntry {
        name: name.into(),
        url: url.into(),
        secret: Some(Secret::new(SECRET)),
        secret_env: None,
        kinds: Vec::new(),
        meeting_labels: Vec::new(),
        external_user_ids: Vec::new(),
    }
}

/// A batch holding two people fails; one of them is erased with `forget`; the retry that the
/// receiver takes holds only the other, and nothing sent after the erasure names the person.
async fn a_person_forgotten_while_a_batch_waits_for_a_retry_is_never_delivered(db: &TestDb) {
    let (url, seen) = receiver(true).await;
    let meeting = MeetingId::parse("00000001-0000-4000-8000-0000000000aa").unwrap();
    db.store
        .add_meeting(
            &meeting,
            &Region::parse("us-east-1").unwrap(),
            Some("board"),
            domain::now(),
            false,
        )
        .await
        .unwrap();
    let settings = Settings::defaults().unwrap();
    let mut sink = Sink::new(
        &webhook("security", &url),
        &settings.webhook,
        db.store.clone(),
        http_client().unwrap(),
    )
    .unwrap();
    sink.open_cursor().await.unwrap();
    let (erased, kept) = (
        attendee(1, "erase-me@partner.example"),
        attendee(2, "keep-me@partner.example"),
    );
    poll(
        &db.store,
        &meeting,
        &[Change::joined(&erased), Change::joined(&kept)],
    )
    .await;

    // The receiver fails: the batch with both people waits for a retry.
    assert!(sink.step().await.is_err(), "the receiver answers 500");
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.requests.len(), 1);
        assert!(seen.requests[0].1.contains("erase-me@partner.example"));
    }
    let forgotten = db
        .store
        .forget_person(&ExternalUserId::new("erase-me@partner.example"))
        .await
        .unwrap();
    assert_eq!(forgotten.events, 1);
    let sent_before_forget = seen.lock().unwrap().requests.len();

    seen.lock().unwrap().failing = false;
    let step = sink.step().await.unwrap();
    assert!(
        matches!(step, Step::Delivered { events: 1, .. }),
        "the retry delivers the one event left, not {step:?}"
    );
    let seen = seen.lock().unwrap();
    let after_forget = &seen.requests[sent_before_forget..];
    assert!(!after_forget.is_empty());
    for (status, body) in after_forget {
        assert!(
            !body.contains("erase-me@partner.example"),
            "a delivery after forget ({status}) names the erased person: {body}"
        );
    }
    assert!(after_forget.iter().any(
        |(status, body)| *status == StatusCode::OK && body.contains("keep-me@partner.example")
    ));
}

/// Claims expire and are taken over; the cursor then moves only for the new holder, never
/// back, and the old holder's move is refused.
async fn a_claim_taken_over_after_it_expired_can_no_longer_move_the_cursor(db: &TestDb) {
    let store = &db.store;
    assert_eq!(
        store.webhook_cursor("sink", domain::now()).await.unwrap(),
        0
    );
    let long = Duration::from_secs(600);
    let old = store
        .claim_webhook_cursor("sink", "old:1:a", Duration::from_millis(1))
        .await
        .unwrap()
        .expect("an unclaimed cursor can be claimed");
    // Once it expired, another holder gets it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let new = loop {
        if let Some(claim) = store
            .claim_webhook_cursor("sink", "new:2:b", long)
            .await
            .unwrap()
        {
            break claim;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the first claim to expire"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        store
            .claim_webhook_cursor("sink", "old:1:a", long)
            .await
            .unwrap()
            .is_none(),
        "a live claim is not taken over"
    );
    assert!(
        store
            .advance_claimed_cursor(new, "sink", 7, domain::now())
            .await
            .unwrap()
    );
    assert!(
        !store
            .advance_claimed_cursor(old, "sink", 3, domain::now())
            .await
            .unwrap(),
        "the superseded holder cannot move the cursor"
    );
    assert!(
        !store
            .advance_claimed_cursor(old, "sink", 9, domain::now())
            .await
            .unwrap(),
        "nor forward"
    );
    assert_eq!(store.peek_webhook_cursor("sink").await.unwrap(), Some(7));
    // A clean stop gives the claim up: another holder takes it at once.
    store
        .release_webhook_claim("sink", "new:2:b")
        .await
        .unwrap();
    let next = store
        .claim_webhook_cursor("sink", "old:1:a", long)
        .await
        .unwrap()
        .expect("a released claim is free");
    assert_eq!(next.cursor(), 7);
}

/// The binary with a clean environment and placeholder AWS credentials, killed when dropped.
fn roster_sync(db: &TestDb, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(common::BIN);
    cmd.args(args)
        .env_clear()
        .envs(common::binary_env())
        .env("ROSTER_SYNC__HTTP__LISTEN", "")
        .env("DATABASE_URL", &db.url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    cmd
}

/// Migrates `db` and tracks a new simulator meeting; the driver adds attendees to it.
async fn tracked_meeting(
    db: &TestDb,
) -> (
    roster_sync::sim::SimHandle,
    roster_sync::sim::control::Driver,
    MeetingId,
) {
    let (sim, driver) = common::sim_and_driver(100.0).await;
    let id = driver.create_meeting("hooks", "us-east-1").await.unwrap();
    for args in [
        vec!["migrate"],
        vec![
            "meetings",
            "add",
            id.as_str(),
            "--no-verify",
            "--label",
            "hooks",
        ],
    ] {
        let status = roster_sync(db, &args).status().await.unwrap();
        assert!(status.success(), "{args:?}: {status}");
    }
    (sim, driver, id)
}

/// A config file with fast webhook retries and one sink, `receiver`, posting to `url`.
fn webhook_config(dir: &std::path::Path, url: &str) -> std::path::PathBuf {
    let config = dir.join("roster.toml");
    std::fs::write(
        &config,
        format!(
            "[webhook]\nbatch = 2\npoll_interval = \"100ms\"\ntimeout = \"2s\"\n\
             backoff_base = \"20ms\"\nbackoff_cap = \"200ms\"\n\n\
             [[webhooks]]\nname = \"receiver\"\nurl = \"{url}\"\nsecret = \"{SECRET}\"\n"
        ),
    )
    .unwrap();
    config
}

async fn signal(pid: u32, sig: &str) {
    let ok = tokio::process::Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .status()
        .await
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// SIGTERM, then a successful exit within 60 s.
async fn terminate(child: &mut tokio::process::Child) {
    signal(child.id().unwrap(), "-TERM").await;
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("the daemon stops after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
}

async fn recorded_event_ids(db: &TestDb) -> std::collections::BTreeSet<i64> {
    db.store
        .events_since(0, 10_000)
        .await
        .unwrap()
        .iter()
        .map(|e| e.event_id)
        .collect()
}

/// `database.max_connections = 1` is accepted, and with a webhook sink the daemon still gets
/// its connection: it polls, records and delivers (the `LISTEN` and the sinks' claims use
/// connections of their own).
#[tokio::test]
async fn a_daemon_with_one_database_connection_and_a_webhook_sink_polls_and_delivers() {
    let Some(db) = common::postgres_db().await else {
        return;
    };
    let (sim, driver, id) = tracked_meeting(&db).await;
    let (url, seen) = receiver(false).await;
    let dir = tempfile::tempdir().unwrap();
    let config = webhook_config(dir.path(), &url);
    let mut daemon = roster_sync(&db, &["run"])
        .arg("--config")
        .arg(&config)
        .env("ROSTER_SYNC__CHIME__ENDPOINT_URL", sim.endpoint_url())
        .env("ROSTER_SYNC__POLL__INTERVAL", "200ms")
        .env("ROSTER_SYNC__DATABASE__MAX_CONNECTIONS", "1")
        .spawn()
        .expect("start the daemon");
    eventually("the sink has its cursor", || async {
        db.raw.scalar("SELECT count(*) FROM webhook_cursors").await == 1
    })
    .await;
    driver
        .add_attendees(&id, (0..3).map(|i| (format!("p{i}@example.com"), None)))
        .await
        .unwrap();
    eventually("three joins recorded", || async {
        recorded_event_ids(&db).await.len() == 3
    })
    .await;
    let recorded = recorded_event_ids(&db).await;
    eventually("three joins delivered", || async {
        seen.lock().unwrap().delivered() == recorded
    })
    .await;
    terminate(&mut daemon).await;
    sim.shutdown().await.unwrap();
    db.finish().await;
}

/// The pid in `webhook_cursors.claimed_by` (`host:pid:nonce`) of a claim not yet expired, 0
/// when there is none.
async fn claim_holder_pid(db: &TestDb) -> u32 {
    let pid = db
        .raw
        .scalar(
            "SELECT COALESCE((SELECT (regexp_match(claimed_by, ':([0-9]+):[^:]*$'))[1]::bigint \
             FROM webhook_cursors WHERE name = 'receiver' AND claim_expires_at > now()), 0)",
        )
        .await;
    u32::try_from(pid).unwrap()
}

/// Two replicas run the same sink; the one holding its claim is stopped (SIGSTOP) with posts
/// in flight. The other takes the claim over once it expires and delivers what is recorded
/// meanwhile; resumed (SIGCONT), the stopped one neither moves the cursor back nor loses an
/// event.
#[tokio::test]
async fn a_replica_stopped_while_holding_a_webhook_claim_is_taken_over_and_no_event_is_lost() {
    let Some(db) = common::postgres_db().await else {
        return;
    };
    let (sim, driver, id) = tracked_meeting(&db).await;
    // Every move of the cursor, as the database saw it.
    db.raw
        .execute(
            "CREATE TABLE cursor_moves (moved_from bigint NOT NULL, moved_to bigint NOT NULL); \
             CREATE FUNCTION note_cursor_move() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN INSERT INTO cursor_moves VALUES (OLD.last_event_id, NEW.last_event_id); \
             RETURN NEW; END $$; \
             CREATE TRIGGER note_cursor_move AFTER UPDATE OF last_event_id ON webhook_cursors \
             FOR EACH ROW EXECUTE FUNCTION note_cursor_move();",
        )
        .await;
    let (url, seen) = receiver(false).await;
    // A slow receiver: the holder is most likely in the middle of a post when it stops.
    seen.lock().unwrap().delay = Duration::from_millis(300);
    let dir = tempfile::tempdir().unwrap();
    let config = webhook_config(dir.path(), &url);
    let replica = || {
        roster_sync(&db, &["run"])
            .arg("--config")
            .arg(&config)
            .env("ROSTER_SYNC__CHIME__ENDPOINT_URL", sim.endpoint_url())
            .env("ROSTER_SYNC__POLL__INTERVAL", "300ms")
            .env("ROSTER_SYNC__CLUSTER__ENABLED", "true")
            .env("ROSTER_SYNC__CLUSTER__LEASE_TTL", "4s")
            .env("ROSTER_SYNC__CLUSTER__HEARTBEAT", "300ms")
            .spawn()
            .expect("start a replica")
    };
    let mut replicas = [replica(), replica()];
    let pids: Vec<u32> = replicas.iter().map(|r| r.id().unwrap()).collect();
    eventually("a replica claims the sink", || async {
        pids.contains(&claim_holder_pid(&db).await)
    })
    .await;

    driver
        .add_attendees(&id, (0..6).map(|i| (format!("a{i}@example.com"), None)))
        .await
        .unwrap();
    eventually("six joins recorded", || async {
        recorded_event_ids(&db).await.len() == 6
    })
    .await;
    // Stop the holder while it delivers (the batch size is 2, so three posts are needed).
    let stopped = claim_holder_pid(&db).await;
    assert!(pids.contains(&stopped), "the claim names a replica");
    signal(stopped, "-STOP").await;
    let other = *pids.iter().find(|p| **p != stopped).unwrap();

    driver
        .add_attendees(&id, (0..4).map(|i| (format!("b{i}@example.com"), None)))
        .await
        .unwrap();
    eventually("ten joins recorded", || async {
        recorded_event_ids(&db).await.len() == 10
    })
    .await;
    let recorded = recorded_event_ids(&db).await;
    eventually(
        "the other replica delivers everything while the holder is stopped",
        || async { seen.lock().unwrap().delivered() == recorded },
    )
    .await;
    assert_eq!(
        claim_holder_pid(&db).await,
        other,
        "the claim was taken over"
    );

    signal(stopped, "-CONT").await;
    driver
        .add_attendees(&id, (0..2).map(|i| (format!("c{i}@example.com"), None)))
        .await
        .unwrap();
    eventually("twelve joins recorded", || async {
        recorded_event_ids(&db).await.len() == 12
    })
    .await;
    let recorded = recorded_event_ids(&db).await;
    let last = *recorded.last().unwrap();
    eventually("the cursor reaches the last event", || async {
        db.raw
            .scalar("SELECT last_event_id FROM webhook_cursors WHERE name = 'receiver'")
            .await
            == last
    })
    .await;
    for replica in &mut replicas {
        terminate(replica).await;
    }
    sim.shutdown().await.unwrap();
    assert_eq!(seen.lock().unwrap().delivered(), recorded, "no event lost");
    assert_eq!(
        db.raw
            .scalar("SELECT count(*) FROM cursor_moves WHERE moved_to < moved_from")
            .await,
        0,
        "the cursor never moved backwards"
    );
    db.finish().await;
}
