//! Measurements, not tests: how long after its commit an event reaches a webhook receiver
//! and a line of `roster-sync events --follow`, on Postgres and SQLite. Every test here is
//! `#[ignore]`d and asserts only that every event arrived; the numbers are printed, for the
//! docs/benchmarks.md and reports. Run them one at a time, on a quiet machine:
//!
//! ```text
//! cargo test --release --test alerting_latency -- --ignored --nocapture --test-threads 1
//! ```

mod common;

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use chrono::TimeDelta;
use common::TestDb;
use roster_sync::config::{Secret, Settings, WebhookEntry};
use roster_sync::domain::{
    self, Attendee, AttendeeId, Capabilities, Change, ExternalUserId, MeetingId, Region,
};
use roster_sync::store::{ApplyOutcome, PollRecord, Store};
use tokio::io::AsyncBufReadExt as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use common::BIN;

/// Arrival instant of each event id.
type Arrivals = Arc<Mutex<HashMap<i64, Instant>>>;

fn meeting(n: u32) -> MeetingId {
    MeetingId::parse(&format!("0000000{n:x}-0000-4000-8000-0000000000dd")).unwrap()
}

fn attendee(n: u32) -> Attendee {
    Attendee {
        attendee_id: AttendeeId::parse(&format!("dddddddd-0000-4000-8000-{n:012x}")).unwrap(),
        external_user_id: ExternalUserId::new(format!("p{n}@example.com")),
        capabilities: Capabilities::DEFAULT,
    }
}

async fn track(store: &Store, meetings: u32) {
    for m in 0..meetings {
        store
            .add_meeting(
                &meeting(m),
                &Region::parse("us-east-1").unwrap(),
                Some("latency"),
                domain::now(),
                false,
            )
            .await
            .unwrap();
    }
}

/// Records one poll of `meeting` in which `someone` joined; returns the event id and the
/// instant the commit returned.
async fn commit_join(store: &Store, id: &MeetingId, someone: &Attendee) -> (i64, Instant) {
    let snapshot = store.snapshot(id).await.unwrap();
    let observed_at = domain::now();
    let changes = [Change::joined(someone)];
    let rec = PollRecord {
        meeting_id: id,
        expected_seq: snapshot.poll_seq,
        started_at: observed_at - TimeDelta::milliseconds(1),
        observed_at,
        previous_poll_at: snapshot.last_polled_at,
        changes: &changes,
    };
    match store.apply(rec).await.unwrap() {
        ApplyOutcome::Applied { events, .. } => (events[0].event_id, Instant::now()),
        ApplyOutcome::Conflict => panic!("unexpected conflict"),
    }
}

/// Commits `count` joins spread over `meetings`, one every `every`; returns each event's
/// commit instant.
async fn commit_at_rate(
    store: &Store,
    meetings: u32,
    count: u32,
    every: Duration,
) -> HashMap<i64, Instant> {
    let mut committed = HashMap::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for n in 0..count {
        tick.tick().await;
        let (event_id, at) = commit_join(store, &meeting(n % meetings), &attendee(n)).await;
        committed.insert(event_id, at);
    }
    committed
}

/// Waits until every committed event has arrived (a 60 s guard), then prints the latency
/// percentiles.
async fn report(what: &str, committed: &HashMap<i64, Instant>, arrivals: &Arrivals) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while committed
        .keys()
        .any(|id| !arrivals.lock().unwrap().contains_key(id))
    {
        assert!(Instant::now() < deadline, "{what}: not every event arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let arrivals = arrivals.lock().unwrap();
    let mut ms: Vec<f64> = committed
        .iter()
        .map(|(id, at)| arrivals[id].saturating_duration_since(*at).as_secs_f64() * 1e3)
        .collect();
    ms.sort_by(f64::total_cmp);
    let pct = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
    println!(
        "MEASURED {what}: {} events, commit -> arrival p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms.len(),
        pct(0.50),
        pct(0.99),
        ms[ms.len() - 1]
    );
}

async fn receive(State(arrivals): State<Arrivals>, body: axum::body::Bytes) -> &'static str {
    let now = Instant::now();
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let mut arrivals = arrivals.lock().unwrap();
    for e in doc["data"]["events"].as_array().unwrap() {
        arrivals
            .entry(e["event_id"].as_i64().unwrap())
            .or_insert(now);
    }
    "ok"
}

async fn webhook_latency(db: &TestDb, backend: &str) {
    let arrivals = Arrivals::default();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(arrivals.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    // The default [webhook] settings, one sink receiving everything.
    let mut settings = Settings::defaults().unwrap();
    settings.webhooks = vec![WebhookEntry {
        name: "latency".into(),
        url,
        secret: Some(Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")),
        secret_env: None,
        kinds: Vec::new(),
        meeting_labels: Vec::new(),
        external_user_ids: Vec::new(),
    }];
    settings.validate().unwrap();
    track(&db.store, 10).await;
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    roster_sync::sinks::spawn_webhooks(&settings, db.store.clone(), cancel.clone(), &tracker)
        .await
        .unwrap();
    tracker.close();

    // 100 events/s for 30 s, over ten meetings.
    let committed = commit_at_rate(&db.store, 10, 3000, Duration::from_millis(10)).await;
    report(
        &format!(
            "{backend} webhook (poll_interval {:?}, 100 events/s)",
            settings.webhook.poll_interval
        ),
        &committed,
        &arrivals,
    )
    .await;
    cancel.cancel();
    tracker.wait().await;
}

async fn follow_latency(db: &TestDb, backend: &str) {
    track(&db.store, 1).await;
    let (first, _) = commit_join(&db.store, &meeting(0), &attendee(100_000)).await;
    let mut child = tokio::process::Command::new(BIN)
        .args(["events", "--follow", "--format", "json", "--since"])
        .arg(first.to_string())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("DATABASE_URL", &db.url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let arrivals = Arrivals::default();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let reader = {
        let arrivals = arrivals.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let now = Instant::now();
                let e: serde_json::Value = serde_json::from_str(&line).unwrap();
                arrivals
                    .lock()
                    .unwrap()
                    .insert(e["event_id"].as_i64().unwrap(), now);
            }
        })
    };
    // Let it start and reach its steady state (listening, or polling) before measuring.
    let (warm, _) = commit_join(&db.store, &meeting(0), &attendee(100_001)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !arrivals.lock().unwrap().contains_key(&warm) {
        assert!(Instant::now() < deadline, "events --follow printed nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // 10 events/s for 20 s: one commit at a time, so each line's delay is its own.
    let committed = commit_at_rate(&db.store, 1, 200, Duration::from_millis(100)).await;
    report(
        &format!("{backend} events --follow (10 events/s)"),
        &committed,
        &arrivals,
    )
    .await;
    let _ = child.kill().await;
    reader.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: prints numbers, run with --ignored --nocapture"]
async fn measure_commit_to_webhook_receipt() {
    if let Some(db) = common::postgres_db().await {
        webhook_latency(&db, "postgres").await;
        db.finish().await;
    }
    let db = common::sqlite_db().await;
    webhook_latency(&db, "sqlite").await;
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: prints numbers, run with --ignored --nocapture"]
async fn measure_commit_to_events_follow_line() {
    if let Some(db) = common::postgres_db().await {
        follow_latency(&db, "postgres").await;
        db.finish().await;
    }
    let db = common::sqlite_db().await;
    follow_latency(&db, "sqlite").await;
    db.finish().await;
}
