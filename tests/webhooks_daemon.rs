//! Webhooks through the real daemon: `roster-sync run` with a `[[webhooks]]` entry polls an
//! in-process simulator and delivers signed batches to an in-test receiver on 127.0.0.1, in
//! order; a receiver that answers 503 for a while loses and reorders nothing. Also: the
//! `[webhook] batch` key, and its environment override `ROSTER_SYNC__WEBHOOK__BATCH`.

mod common;

use common::eventually;

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use common::TestDb;
use hmac::{KeyInit as _, Mac as _};
use roster_sync::domain::{Capabilities, Capability};

use common::BIN;
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

both_backends!(
    the_daemon_delivers_signed_batches_in_order_and_loses_nothing_while_the_receiver_is_down,
    a_failing_sink_is_logged_once_when_it_fails_and_once_when_it_recovers_not_per_retry,
    a_sink_added_to_the_configuration_gets_every_event_from_the_daemon_start_on_and_no_history,
    a_receiver_stopped_across_a_daemon_restart_gets_every_event_in_order_without_a_gap,
    a_hung_receiver_never_holds_up_polling,
);

/// The binary with a clean environment and placeholder AWS credentials (the simulator does
/// not check signatures), run without blocking the runtime the simulator and receiver use.
fn roster_sync(args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .envs(common::binary_env())
        .env("ROSTER_SYNC__HTTP__LISTEN", "")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

async fn succeeds(cmd: &mut tokio::process::Command) -> String {
    let out = cmd.output().await.expect("run roster-sync");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    stdout
}

/// What the receiver saw.
#[derive(Default)]
struct Received {
    refused: usize,
    bad_signatures: usize,
    /// Accepted batches: webhook-id and the events' JSON.
    batches: Vec<(String, Vec<serde_json::Value>)>,
}

impl Received {
    fn event_ids(&self) -> Vec<i64> {
        self.batches
            .iter()
            .flat_map(|(_, events)| events.iter().map(|e| e["event_id"].as_i64().unwrap()))
            .collect()
    }
}

#[derive(Clone, Default)]
struct Receiver {
    /// While set, every request is answered 503 with `Retry-After: 0`.
    down: Arc<AtomicBool>,
    seen: Arc<Mutex<Received>>,
}

/// The Standard Webhooks check, done independently of the daemon's code: HMAC-SHA256 over
/// "{id}.{timestamp}.{body}" with the base64-decoded secret, against every `v1,` signature.
fn signature_is_valid(headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(id), Some(timestamp), Some(signatures)) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    ) else {
        return false;
    };
    let key = base64::engine::general_purpose::STANDARD
        .decode(SECRET.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    signatures
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .any(|s| s == expected)
}

async fn receive(
    State(receiver): State<Receiver>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, HeaderMap) {
    let mut seen = receiver.seen.lock().unwrap();
    if !signature_is_valid(&headers, &body) {
        seen.bad_signatures += 1;
        return (StatusCode::UNAUTHORIZED, HeaderMap::new());
    }
    if receiver.down.load(Ordering::SeqCst) {
        seen.refused += 1;
        let mut h = HeaderMap::new();
        h.insert("retry-after", "0".parse().unwrap());
        return (StatusCode::SERVICE_UNAVAILABLE, h);
    }
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let id = headers["webhook-id"].to_str().unwrap().to_owned();
    let events = doc["data"]["events"].as_array().unwrap().clone();
    seen.batches.push((id, events));
    (StatusCode::OK, HeaderMap::new())
}

async fn start_receiver() -> (String, Receiver) {
    let receiver = Receiver::default();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, receiver)
}

async fn recorded_event_ids(db: &TestDb) -> Vec<i64> {
    db.store
        .events_since(0, 10_000)
        .await
        .unwrap()
        .iter()
        .map(|e| e.event_id)
        .collect()
}

async fn the_daemon_delivers_signed_batches_in_order_and_loses_nothing_while_the_receiver_is_down(
    db: &TestDb,
) {
    let (sim, driver) = common::sim_and_driver(100.0).await;
    let id = driver.create_meeting("hooks", "us-east-1").await.unwrap();
    let (url, receiver) = start_receiver().await;

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("roster.toml");
    std::fs::write(
        &config,
        format!(
            "[webhook]\npoll_interval = \"50ms\"\nbackoff_base = \"20ms\"\nbackoff_cap = \"200ms\"\n\n\
             [[webhooks]]\nname = \"receiver\"\nurl = \"{url}\"\nsecret = \"{SECRET}\"\n"
        ),
    )
    .unwrap();
    succeeds(roster_sync(&["migrate"]).env("DATABASE_URL", &db.url)).await;
    succeeds(
        roster_sync(&[
            "meetings",
            "add",
            id.as_str(),
            "--no-verify",
            "--label",
            "hooks",
        ])
        .env("DATABASE_URL", &db.url),
    )
    .await;
    let mut daemon = roster_sync(&["run"])
        .arg("--config")
        .arg(&config)
        .env("DATABASE_URL", &db.url)
        .env("ROSTER_SYNC__CHIME__ENDPOINT_URL", sim.endpoint_url())
        .env("ROSTER_SYNC__POLL__INTERVAL", "200ms")
        // The batch size from the environment: `[webhook] batch`, overridden.
        .env("ROSTER_SYNC__WEBHOOK__BATCH", "2")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the daemon");
    // A sink seen for the first time starts after the newest event: wait for its cursor
    // before making changes.
    eventually("the sink has its cursor", || async {
        db.raw
            .scalar("SELECT count(*) FROM webhook_cursors WHERE name = 'receiver'")
            .await
            == 1
    })
    .await;

    // Receiver up: five joins, then one leaves and one is muted.
    let made = driver
        .add_attendees(&id, (0..5).map(|i| (format!("p{i}@example.com"), None)))
        .await
        .unwrap();
    eventually("five joins recorded", || async {
        recorded_event_ids(db).await.len() == 5
    })
    .await;
    driver
        .delete_attendee(&id, &made[0].attendee_id)
        .await
        .unwrap();
    let muted = Capabilities {
        audio: Capability::Receive,
        video: Capability::Receive,
        content: Capability::None,
    };
    driver
        .set_capabilities(&id, &made[1].attendee_id, muted)
        .await
        .unwrap();
    eventually("seven events delivered", || async {
        receiver.seen.lock().unwrap().event_ids().len() == 7
    })
    .await;
    let recorded = recorded_event_ids(db).await;
    assert_eq!(receiver.seen.lock().unwrap().event_ids(), recorded);

    // Receiver down: changes keep being recorded, deliveries are refused and retried.
    receiver.down.store(true, Ordering::SeqCst);
    driver
        .add_attendees(&id, (5..9).map(|i| (format!("p{i}@example.com"), None)))
        .await
        .unwrap();
    eventually("four more joins recorded", || async {
        recorded_event_ids(db).await.len() == 11
    })
    .await;
    for a in &made[2..4] {
        driver.delete_attendee(&id, &a.attendee_id).await.unwrap();
    }
    eventually("two more leaves recorded", || async {
        recorded_event_ids(db).await.len() == 13
    })
    .await;
    eventually(
        "the receiver refused a retried batch three times",
        || async { receiver.seen.lock().unwrap().refused >= 3 },
    )
    .await;
    assert_eq!(receiver.seen.lock().unwrap().event_ids().len(), 7);

    // Back up: everything arrives, once, in order.
    receiver.down.store(false, Ordering::SeqCst);
    let recorded = recorded_event_ids(db).await;
    eventually("every event delivered", || async {
        receiver.seen.lock().unwrap().event_ids().len() >= recorded.len()
    })
    .await;

    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(daemon.id().unwrap().to_string())
        .status();
    let status = tokio::time::timeout(Duration::from_secs(60), daemon.wait())
        .await
        .expect("the daemon stops after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");

    sim.shutdown().await.unwrap();
    let seen = receiver.seen.lock().unwrap();
    assert_eq!(seen.bad_signatures, 0);
    assert_eq!(
        seen.event_ids(),
        recorded,
        "nothing lost, repeated or reordered"
    );
    assert!(
        seen.batches.iter().all(|(_, events)| events.len() <= 2),
        "no batch above ROSTER_SYNC__WEBHOOK__BATCH"
    );
    assert!(seen.batches.iter().any(|(_, events)| events.len() == 2));
    for (webhook_id, events) in &seen.batches {
        let first = events[0]["event_id"].as_i64().unwrap();
        let last = events[events.len() - 1]["event_id"].as_i64().unwrap();
        assert_eq!(webhook_id, &format!("receiver-{first}-{last}"));
        assert!(events.iter().all(|e| e["meeting_label"] == "hooks"));
    }
    let kinds: Vec<&str> = seen
        .batches
        .iter()
        .flat_map(|(_, events)| events.iter().map(|e| e["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(kinds.iter().filter(|k| **k == "joined").count(), 9);
    assert_eq!(kinds.iter().filter(|k| **k == "left").count(), 3);
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == "capabilities_changed")
            .count(),
        1
    );
}

#[tokio::test]
async fn the_webhook_batch_key_is_singular_and_the_environment_overrides_it() {
    let out = roster_sync(&["config"])
        .env("ROSTER_SYNC__WEBHOOK__BATCH", "7")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("[webhook]\nbatch = 7\n"), "{stdout}");

    let out = roster_sync(&["config"])
        .env("ROSTER_SYNC__WEBHOOK__BATCH", "0")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("webhook.batch"), "{stderr}");

    // DESIGN.md's name, `webhooks.batch`, is not a key: the file form is refused, naming it.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("roster.toml");
    std::fs::write(&file, "[webhooks]\nbatch = 7\n").unwrap();
    let out = roster_sync(&["config"])
        .arg("--config")
        .arg(&file)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("webhooks"), "{stderr}");
}

/// A config file with fast retries and one sink, `name`, posting to `url`.
fn webhook_config(dir: &std::path::Path, name: &str, url: &str) -> std::path::PathBuf {
    let config = dir.join("roster.toml");
    std::fs::write(
        &config,
        format!(
            "[webhook]\npoll_interval = \"50ms\"\nbackoff_base = \"20ms\"\nbackoff_cap = \"200ms\"\n\n\
             [[webhooks]]\nname = \"{name}\"\nurl = \"{url}\"\nsecret = \"{SECRET}\"\n"
        ),
    )
    .unwrap();
    config
}

/// `roster-sync run` on `db` against the simulator at `endpoint`, with `config` if given.
fn daemon(
    db: &TestDb,
    endpoint: &str,
    config: Option<&std::path::Path>,
) -> tokio::process::Command {
    let mut cmd = roster_sync(&["run"]);
    if let Some(config) = config {
        cmd.arg("--config").arg(config);
    }
    cmd.env("DATABASE_URL", &db.url)
        .env("ROSTER_SYNC__CHIME__ENDPOINT_URL", endpoint)
        .env("ROSTER_SYNC__POLL__INTERVAL", "200ms")
        .stdout(Stdio::null());
    cmd
}

/// SIGTERM, then a successful exit within 60 s.
async fn terminate(child: &mut tokio::process::Child) {
    let status = common::terminate(child).await;
    assert!(status.success(), "the daemon exited {status} after SIGTERM");
}

async fn track(db: &TestDb, id: &roster_sync::domain::MeetingId) {
    succeeds(roster_sync(&["migrate"]).env("DATABASE_URL", &db.url)).await;
    succeeds(
        roster_sync(&[
            "meetings",
            "add",
            id.as_str(),
            "--no-verify",
            "--label",
            "hooks",
        ])
        .env("DATABASE_URL", &db.url),
    )
    .await;
}

async fn a_failing_sink_is_logged_once_when_it_fails_and_once_when_it_recovers_not_per_retry(
    db: &TestDb,
) {
    use tokio::io::AsyncBufReadExt as _;
    let (sim, driver) = common::sim_and_driver(100.0).await;
    let id = driver.create_meeting("logs", "us-east-1").await.unwrap();
    let (url, receiver) = start_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let config = webhook_config(dir.path(), "flaky", &url);
    track(db, &id).await;
    let mut child = daemon(db, &sim.endpoint_url(), Some(&config))
        .env("ROSTER_SYNC__LOG__FORMAT", "json")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the daemon");
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let log = tokio::spawn(async move {
        let mut lines = Vec::new();
        while let Ok(Some(line)) = stderr.next_line().await {
            lines.push(line);
        }
        lines
    });

    // Outage n records the n-th event.
    for (outage, retries) in [(1, 5), (2, 3)] {
        // Receiver down: a change is recorded and its delivery refused again and again.
        receiver.down.store(true, Ordering::SeqCst);
        let refused_before = receiver.seen.lock().unwrap().refused;
        driver
            .add_attendees(&id, [(format!("p{outage}@example.com"), None)])
            .await
            .unwrap();
        eventually(
            &format!("outage {outage}: {retries} refused attempts"),
            || async { receiver.seen.lock().unwrap().refused >= refused_before + retries },
        )
        .await;
        // Back up: delivered.
        receiver.down.store(false, Ordering::SeqCst);
        eventually(&format!("outage {outage}: delivered"), || async {
            receiver.seen.lock().unwrap().event_ids().len() == outage
        })
        .await;
        // The sink logs its recovery once the cursor has moved past the batch: wait for the
        // cursor, not only the receiver, before the next outage or the stop.
        eventually(&format!("outage {outage}: the cursor moved"), || async {
            db.raw
                .scalar("SELECT coalesce(max(last_event_id), 0) FROM webhook_cursors")
                .await
                >= outage as i64
        })
        .await;
    }
    terminate(&mut child).await;
    sim.shutdown().await.unwrap();
    let lines = log.await.unwrap();
    let messages: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let about = |message: &str| -> Vec<&serde_json::Value> {
        messages
            .iter()
            .filter(|m| m["fields"]["message"] == message)
            .collect()
    };
    let failing = about("webhook sink failing");
    let recovered = about("webhook sink recovered");
    let refused = receiver.seen.lock().unwrap().refused;
    assert!(refused >= 8, "{refused} refused attempts");
    assert_eq!(
        failing.len(),
        2,
        "one line per outage, not per retry: {lines:#?}"
    );
    assert_eq!(recovered.len(), 2, "{lines:#?}");
    for line in failing {
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["fields"]["sink"], "flaky");
        assert!(
            line["fields"]["error"].as_str().unwrap().contains("503"),
            "{line}"
        );
    }
    // Every failed attempt is counted in the recovery line, not logged on its own.
    let counted: u64 = recovered
        .iter()
        .map(|l| l["fields"]["failed_attempts"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, refused as u64, "{lines:#?}");
}

async fn a_sink_added_to_the_configuration_gets_every_event_from_the_daemon_start_on_and_no_history(
    db: &TestDb,
) {
    let (sim, driver) = common::sim_and_driver(100.0).await;
    let id = driver
        .create_meeting("new-sink", "us-east-1")
        .await
        .unwrap();
    driver
        .add_attendees(&id, (0..3).map(|i| (format!("old{i}@example.com"), None)))
        .await
        .unwrap();
    track(db, &id).await;
    // A daemon without webhooks records the history.
    let mut first = daemon(db, &sim.endpoint_url(), None)
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    eventually("the history is recorded", || async {
        recorded_event_ids(db).await.len() == 3
    })
    .await;
    terminate(&mut first).await;
    let history = recorded_event_ids(db).await;

    // Two people join while no daemon runs; the next daemon, now with a sink, records them
    // in its first poll.
    driver
        .add_attendees(&id, (0..2).map(|i| (format!("new{i}@example.com"), None)))
        .await
        .unwrap();
    let (url, receiver) = start_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let config = webhook_config(dir.path(), "newcomer", &url);
    // On Postgres, a transaction holding a SHARE lock on webhook_cursors keeps the sink's
    // cursor from being created until the first poll's events are committed, or 5 s passed
    // (they never are if the daemon waits for the cursor before polling, as it must): a
    // cursor created after those events would start after them, and they would be lost.
    let gate = match &db.raw {
        common::Raw::Postgres(pool) => {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query("LOCK TABLE webhook_cursors IN SHARE MODE")
                .execute(&mut *tx)
                .await
                .unwrap();
            Some(tx)
        }
        common::Raw::Sqlite(_) => None,
    };
    let mut second = daemon(db, &sim.endpoint_url(), Some(&config))
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    if let Some(tx) = gate {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && recorded_event_ids(db).await.len() < 5 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tx.rollback().await.unwrap();
    }
    eventually("the first poll's joins are delivered", || async {
        receiver.seen.lock().unwrap().event_ids().len() >= 2
    })
    .await;
    terminate(&mut second).await;
    sim.shutdown().await.unwrap();

    let recorded = recorded_event_ids(db).await;
    assert_eq!(recorded.len(), 5);
    let seen = receiver.seen.lock().unwrap();
    assert_eq!(
        seen.event_ids(),
        &recorded[3..],
        "every new event, no history"
    );
    assert!(seen.event_ids().iter().all(|e| !history.contains(e)));
    let kinds: Vec<&str> = seen
        .batches
        .iter()
        .flat_map(|(_, events)| {
            events
                .iter()
                .map(|e| e["external_user_id"].as_str().unwrap())
        })
        .collect();
    assert!(kinds.iter().all(|u| u.starts_with("new")), "{kinds:?}");
}

/// Serves `receiver` on `addr` (port 0: any free port) until the returned sender fires or is
/// dropped; the task ends once the port is closed.
async fn serve_on(
    addr: std::net::SocketAddr,
    receiver: Receiver,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(receiver);
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    (addr, stop, task)
}

async fn a_receiver_stopped_across_a_daemon_restart_gets_every_event_in_order_without_a_gap(
    db: &TestDb,
) {
    let (sim, driver) = common::sim_and_driver(100.0).await;
    let id = driver.create_meeting("restart", "us-east-1").await.unwrap();
    let receiver = Receiver::default();
    let (addr, stop, serving) = serve_on("127.0.0.1:0".parse().unwrap(), receiver.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = webhook_config(dir.path(), "restarted", &format!("http://{addr}/hook"));
    track(db, &id).await;
    let start = || {
        daemon(db, &sim.endpoint_url(), Some(&config))
            .env("ROSTER_SYNC__WEBHOOK__BATCH", "2")
            .stderr(Stdio::null())
            .spawn()
            .expect("start the daemon")
    };
    let mut first = start();
    driver
        .add_attendees(&id, (0..3).map(|i| (format!("a{i}@example.com"), None)))
        .await
        .unwrap();
    eventually("three events delivered", || async {
        receiver.seen.lock().unwrap().event_ids().len() == 3
    })
    .await;

    // The receiver stops (connections refused); changes go on being recorded.
    let _ = stop.send(());
    serving.await.unwrap();
    driver
        .add_attendees(&id, (0..3).map(|i| (format!("b{i}@example.com"), None)))
        .await
        .unwrap();
    eventually("a refused delivery is noted", || async {
        db.raw
            .scalar("SELECT count(*) FROM webhook_cursors WHERE last_error IS NOT NULL")
            .await
            == 1
    })
    .await;
    // The daemon restarts while the receiver is still down, and records more.
    terminate(&mut first).await;
    let mut second = start();
    driver
        .add_attendees(&id, (0..2).map(|i| (format!("c{i}@example.com"), None)))
        .await
        .unwrap();
    eventually("eight events recorded", || async {
        recorded_event_ids(db).await.len() == 8
    })
    .await;
    // The receiver comes back on the same port.
    let (_, _stop, _serving) = serve_on(addr, receiver.clone()).await;
    let recorded = recorded_event_ids(db).await;
    eventually("every event delivered", || async {
        let seen = receiver.seen.lock().unwrap().event_ids();
        recorded.iter().all(|e| seen.contains(e))
    })
    .await;
    terminate(&mut second).await;
    sim.shutdown().await.unwrap();

    let seen = receiver.seen.lock().unwrap();
    assert_eq!(seen.bad_signatures, 0);
    // At least once, in order, no gap: each batch starts at most one after the highest id
    // delivered so far (a batch sent again after the restart starts lower), and ids within a
    // batch are consecutive recorded ids.
    let mut highest = 0;
    for (webhook_id, events) in &seen.batches {
        let ids: Vec<i64> = events
            .iter()
            .map(|e| e["event_id"].as_i64().unwrap())
            .collect();
        let at = recorded.iter().position(|e| *e == ids[0]).unwrap();
        assert_eq!(ids, recorded[at..at + ids.len()], "batch {webhook_id}");
        let next = recorded
            .iter()
            .position(|e| *e > highest)
            .unwrap_or(recorded.len());
        assert!(
            at <= next,
            "batch {webhook_id} skipped events after {highest}"
        );
        highest = highest.max(*ids.last().unwrap());
    }
    assert_eq!(highest, *recorded.last().unwrap());
}

/// A receiver that accepts connections and never answers, with a `webhook.timeout` of ten
/// minutes: while the sink waits on it, the daemon keeps polling and recording. Each change is
/// made only after the previous one was recorded, so a poll loop held up by the sink fails
/// the wait instead of a timing. `database.statement_timeout` (which also ends a session idle
/// in a transaction) is ten minutes too, so on Postgres as on SQLite a sink that held a lock
/// the writers need while it waits would hold it past every wait here.
async fn a_hung_receiver_never_holds_up_polling(db: &TestDb) {
    let (sim, driver) = common::sim_and_driver(100.0).await;
    let id = driver.create_meeting("hooks", "us-east-1").await.unwrap();
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", hung.local_addr().unwrap());
    let connections = Arc::new(Mutex::new(Vec::new()));
    let held = Arc::clone(&connections);
    let accepting = tokio::spawn(async move {
        while let Ok((socket, _)) = hung.accept().await {
            // Kept open, never read or answered.
            held.lock().unwrap().push(socket);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("roster.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nstatement_timeout = \"10m\"\n\n\
             [webhook]\npoll_interval = \"50ms\"\ntimeout = \"10m\"\n\n\
             [[webhooks]]\nname = \"hung\"\nurl = \"{url}\"\nsecret = \"{SECRET}\"\n"
        ),
    )
    .unwrap();
    track(db, &id).await;
    let mut daemon = daemon(db, &sim.endpoint_url(), Some(&config))
        .stderr(Stdio::null())
        .spawn()
        .expect("start the daemon");
    eventually("the sink has its cursor", || async {
        db.raw
            .scalar("SELECT count(*) FROM webhook_cursors WHERE name = 'hung'")
            .await
            == 1
    })
    .await;
    driver
        .add_attendees(&id, [("first@example.com".to_owned(), None)])
        .await
        .unwrap();
    eventually(
        "the first join recorded and sent to the hung receiver",
        || async {
            recorded_event_ids(db).await.len() == 1 && !connections.lock().unwrap().is_empty()
        },
    )
    .await;
    for n in 2..=6 {
        driver
            .add_attendees(&id, [(format!("p{n}@example.com"), None)])
            .await
            .unwrap();
        eventually("the join recorded while the sink hangs", || async {
            recorded_event_ids(db).await.len() == n
        })
        .await;
    }
    terminate(&mut daemon).await;
    accepting.abort();
}
