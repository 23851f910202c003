//! Alerting end to end: webhook sinks delivering to a real receiver (an axum server on port 0
//! that checks every signature with its own implementation of the Standard Webhooks check),
//! Postgres NOTIFY heard only after commit, and `roster-sync events --follow` through the
//! real binary.

mod common;

use common::eventually;

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use chrono::TimeDelta;
use common::TestDb;
use hmac::{KeyInit as _, Mac as _};
use roster_sync::config::{Secret, Settings, WebhookEntry};
use roster_sync::domain::{
    self, Attendee, AttendeeId, Capabilities, Change, ExternalUserId, LeftReason, MeetingId, Region,
};
use roster_sync::store::{ApplyOutcome, PollRecord, Store, StoredEvent};
use sqlx::Connection as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use common::BIN;
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

both_backends!(
    webhook_batches_arrive_in_order_signed_so_the_receiver_can_verify_them,
    a_receiver_down_then_up_loses_nothing_and_reorders_nothing,
    filters_deliver_only_matching_events_and_still_move_the_cursor,
    a_sustained_stream_from_concurrent_writers_reaches_the_receiver_once_in_order,
);

fn meeting(n: u32) -> MeetingId {
    MeetingId::parse(&format!("0000000{n:x}-0000-4000-8000-0000000000aa")).unwrap()
}

fn attendee(n: u32, user: &str) -> Attendee {
    Attendee {
        attendee_id: AttendeeId::parse(&format!("bbbbbbbb-0000-4000-8000-{n:012x}")).unwrap(),
        external_user_id: ExternalUserId::new(user),
        capabilities: Capabilities::DEFAULT,
    }
}

async fn track(store: &Store, id: &MeetingId, label: &str) {
    store
        .add_meeting(
            id,
            &Region::parse("us-east-1").unwrap(),
            Some(label),
            domain::now(),
            false,
        )
        .await
        .unwrap();
}

/// Records one poll with `changes` against the stored snapshot.
async fn poll(store: &Store, id: &MeetingId, changes: &[Change]) -> Vec<StoredEvent> {
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
        ApplyOutcome::Applied { events, .. } => events,
        ApplyOutcome::Conflict => panic!("unexpected conflict"),
    }
}

/// What the receiver saw.
#[derive(Default)]
struct Received {
    /// Answer 503 (with `Retry-After: retry_after` seconds) to this many requests before
    /// accepting any.
    refuse_next: usize,
    retry_after: u32,
    /// Never answer this many requests (after the refusals), as a hung receiver.
    hang_next: usize,
    refused: usize,
    /// When each request with a valid signature arrived.
    arrivals: Vec<Instant>,
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

/// The receiver's own Standard Webhooks check: HMAC-SHA256 over "{id}.{timestamp}.{body}"
/// with the base64-decoded secret, compared with every `v1,` signature in the header, and a
/// timestamp within five minutes.
fn signature_is_valid(headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(id), Some(timestamp), Some(signatures)) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    ) else {
        return false;
    };
    let Ok(sent_at) = timestamp.parse::<i64>() else {
        return false;
    };
    if (chrono::Utc::now().timestamp() - sent_at).abs() > 300 {
        return false;
    }
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
    State(state): State<Arc<Mutex<Received>>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, HeaderMap) {
    let hang = {
        let mut state = state.lock().unwrap();
        let hang =
            signature_is_valid(&headers, &body) && state.refuse_next == 0 && state.hang_next > 0;
        if hang {
            state.hang_next -= 1;
            state.arrivals.push(Instant::now());
        }
        hang
    };
    if hang {
        std::future::pending::<()>().await;
    }
    let mut state = state.lock().unwrap();
    if !signature_is_valid(&headers, &body) {
        state.bad_signatures += 1;
        return (StatusCode::UNAUTHORIZED, HeaderMap::new());
    }
    state.arrivals.push(Instant::now());
    if state.refuse_next > 0 {
        state.refuse_next -= 1;
        state.refused += 1;
        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            state.retry_after.to_string().parse().unwrap(),
        );
        return (StatusCode::SERVICE_UNAVAILABLE, h);
    }
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["type"], "roster.events");
    let id = headers["webhook-id"].to_str().unwrap().to_owned();
    let events = doc["data"]["events"].as_array().unwrap().clone();
    state.batches.push((id, events));
    (StatusCode::OK, HeaderMap::new())
}

/// A receiver on 127.0.0.1, port 0; its URL and what it saw.
async fn receiver(refuse_first: usize) -> (String, Arc<Mutex<Received>>) {
    receiver_with(Received {
        refuse_next: refuse_first,
        ..Received::default()
    })
    .await
}

/// A receiver starting from `state` (refusals, Retry-After, hangs).
async fn receiver_with(state: Received) -> (String, Arc<Mutex<Received>>) {
    let state = Arc::new(Mutex::new(state));
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

/// Starts the sinks and waits until each has its cursor (so the events recorded next are
/// after it).
async fn start_sinks(db: &TestDb, entries: Vec<WebhookEntry>) -> (CancellationToken, TaskTracker) {
    start_sinks_on(&db.store, &db.raw, entries).await
}

/// [`start_sinks`] on a given store (several stores on one database act as replicas).
async fn start_sinks_on(
    store: &Store,
    raw: &common::Raw,
    entries: Vec<WebhookEntry>,
) -> (CancellationToken, TaskTracker) {
    start_sinks_with(store, raw, entries, |_| {}).await
}

/// The fast delivery settings of the tests, retry backoff capped at [`BACKOFF_CAP`], then
/// `adjust`.
async fn start_sinks_with(
    store: &Store,
    raw: &common::Raw,
    entries: Vec<WebhookEntry>,
    adjust: impl FnOnce(&mut Settings),
) -> (CancellationToken, TaskTracker) {
    let mut settings = Settings::defaults().unwrap();
    settings.webhook.batch = 2;
    settings.webhook.poll_interval = Duration::from_millis(20);
    settings.webhook.backoff_base = Duration::from_millis(10);
    settings.webhook.backoff_cap = BACKOFF_CAP;
    adjust(&mut settings);
    let sinks = entries.len() as i64;
    settings.webhooks = entries;
    settings.validate().unwrap();
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let started =
        roster_sync::sinks::spawn_webhooks(&settings, store.clone(), cancel.clone(), &tracker)
            .await
            .unwrap();
    assert_eq!(started as i64, sinks);
    tracker.close();
    eventually("every sink has its cursor", || async {
        raw.scalar("SELECT count(*) FROM webhook_cursors").await == sinks
    })
    .await;
    (cancel, tracker)
}

/// The tests' cap on the webhook retry backoff: a wait longer than this is the receiver's.
const BACKOFF_CAP: Duration = Duration::from_millis(100);

both_backends!(
    a_receivers_retry_after_is_honoured_before_the_next_attempt,
    a_hung_receiver_is_cut_off_by_webhook_timeout_and_the_batch_retried,
);

/// A 503 with `Retry-After: 2`: the next attempt comes no sooner than two seconds later
/// (the backoff alone, starting at 10 ms, would retry within a few tens of milliseconds), and
/// the batch then arrives. A receiver's `Retry-After` is honoured up to `webhook.backoff_cap`,
/// so the cap is raised above it here.
async fn a_receivers_retry_after_is_honoured_before_the_next_attempt(db: &TestDb) {
    let (url, received) = receiver_with(Received {
        refuse_next: 1,
        retry_after: 2,
        ..Received::default()
    })
    .await;
    let id = meeting(9);
    track(&db.store, &id, "board").await;
    let (cancel, tracker) = start_sinks_with(&db.store, &db.raw, vec![webhook("ops", &url)], |s| {
        s.webhook.backoff_cap = Duration::from_secs(5);
    })
    .await;
    let ids = five_events(&db.store, &id).await;
    eventually("every event delivered after the refusal", || async {
        received.lock().unwrap().event_ids() == ids
    })
    .await;
    let (refused, arrivals) = {
        let r = received.lock().unwrap();
        (r.refused, r.arrivals.clone())
    };
    assert_eq!(refused, 1);
    let gap = arrivals[1] - arrivals[0];
    assert!(
        gap >= Duration::from_secs(2),
        "retried {gap:?} after a Retry-After of 2 s"
    );
    cancel.cancel();
    tracker.wait().await;
}

/// A receiver that never answers its first request: `webhook.timeout` (300 ms) ends that
/// attempt, and the batch is sent again and delivered, instead of the sink waiting forever.
async fn a_hung_receiver_is_cut_off_by_webhook_timeout_and_the_batch_retried(db: &TestDb) {
    let (url, received) = receiver_with(Received {
        hang_next: 1,
        ..Received::default()
    })
    .await;
    let id = meeting(10);
    track(&db.store, &id, "board").await;
    let timeout = Duration::from_millis(300);
    let (cancel, tracker) = start_sinks_with(&db.store, &db.raw, vec![webhook("ops", &url)], |s| {
        s.webhook.timeout = timeout;
    })
    .await;
    let ids = five_events(&db.store, &id).await;
    // The guard: the timeout, a backoff and generous room; a sink without a timeout never
    // delivers.
    common::eventually_within(
        timeout + BACKOFF_CAP + Duration::from_secs(20),
        "every event delivered after the hung attempt",
        || async { received.lock().unwrap().event_ids() == ids },
    )
    .await;
    let arrivals = received.lock().unwrap().arrivals.clone();
    assert!(arrivals.len() >= 2, "the hung batch was sent again");
    let gap = arrivals[1] - arrivals[0];
    assert!(
        gap >= timeout,
        "the hung attempt was abandoned after {gap:?}, before the timeout"
    );
    cancel.cancel();
    tracker.wait().await;
}

/// Five events on one meeting: three joins, a capability change, a leave.
async fn five_events(store: &Store, id: &MeetingId) -> Vec<i64> {
    let (a, b, c) = (
        attendee(1, "ana@partner.example"),
        attendee(2, "bo@corp.example"),
        attendee(3, "cy@partner.example"),
    );
    let mut ids = Vec::new();
    let changes = [Change::joined(&a), Change::joined(&b), Change::joined(&c)];
    ids.extend(poll(store, id, &changes).await.iter().map(|e| e.event_id));
    let mut muted = a.clone();
    muted.capabilities.audio = domain::Capability::Receive;
    let changes = [Change::capabilities_changed(&a, &muted)];
    ids.extend(poll(store, id, &changes).await.iter().map(|e| e.event_id));
    let changes = [Change::left(&b, LeftReason::Removed)];
    ids.extend(poll(store, id, &changes).await.iter().map(|e| e.event_id));
    ids
}

async fn webhook_batches_arrive_in_order_signed_so_the_receiver_can_verify_them(db: &TestDb) {
    let (url, seen) = receiver(0).await;
    let id = meeting(1);
    track(&db.store, &id, "board").await;
    let (cancel, tracker) = start_sinks(db, vec![webhook("security", &url)]).await;
    let ids = five_events(&db.store, &id).await;

    // The cursor moves after the receiver's 2xx: once it is at the last event, all were taken.
    let last_id = *ids.last().unwrap();
    eventually("the cursor reached the last event", || async {
        db.raw
            .scalar("SELECT last_event_id FROM webhook_cursors WHERE name = 'security'")
            .await
            == last_id
    })
    .await;
    cancel.cancel();
    tracker.wait().await;

    let seen = seen.lock().unwrap();
    assert_eq!(seen.bad_signatures, 0);
    assert_eq!(seen.event_ids(), ids);
    for (webhook_id, events) in &seen.batches {
        assert!(events.len() <= 2, "batch larger than webhook.batch");
        let first = events[0]["event_id"].as_i64().unwrap();
        let last = events[events.len() - 1]["event_id"].as_i64().unwrap();
        assert_eq!(webhook_id, &format!("security-{first}-{last}"));
    }
    let first = &seen.batches[0].1[0];
    assert_eq!(first["meeting_id"], id.as_str());
    assert_eq!(first["meeting_label"], "board");
    assert_eq!(first["kind"], "joined");
    assert_eq!(first["audio"], "SendReceive");
    assert!(first["previous_audio"].is_null());
    assert!(first["observed_at"].is_string());
    assert!(!first.to_string().to_lowercase().contains("jointoken"));
    let last = seen.batches.last().unwrap().1.last().unwrap();
    assert_eq!(last["kind"], "left");
    assert_eq!(last["reason"], "removed");
}

/// The correctness part of `tests/alerting_latency.rs`'s webhook measurement, in a test that
/// runs: four writers commit 1000 events concurrently, 10 at a time, while the sink delivers
/// them in batches of 50 to a receiver that refuses now and then. Every event arrives once,
/// in commit (id) order, in signed batches no larger than `webhook.batch`.
async fn a_sustained_stream_from_concurrent_writers_reaches_the_receiver_once_in_order(
    db: &TestDb,
) {
    const WRITERS: u32 = 4;
    const POLLS: u32 = 25;
    const JOINS: u32 = 10;
    const BATCH: u32 = 50;
    // Three refusals at the start; each writer adds more while it writes.
    let (url, seen) = receiver(3).await;
    for w in 0..WRITERS {
        track(&db.store, &meeting(10 + w), "stream").await;
    }
    let (cancel, tracker) =
        start_sinks_with(&db.store, &db.raw, vec![webhook("stream", &url)], |s| {
            s.webhook.batch = BATCH
        })
        .await;
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = db.store.clone();
            let seen = Arc::clone(&seen);
            tokio::spawn(async move {
                let id = meeting(10 + w);
                let mut ids = Vec::new();
                for p in 0..POLLS {
                    let changes: Vec<Change> = (0..JOINS)
                        .map(|j| {
                            let n = (w * POLLS + p) * JOINS + j;
                            Change::joined(&attendee(10_000 + n, &format!("s{n}@corp.example")))
                        })
                        .collect();
                    ids.extend(poll(&store, &id, &changes).await.iter().map(|e| e.event_id));
                    if p % 10 == 5 {
                        // A refusal while the stream goes on: the batch is sent again.
                        seen.lock().unwrap().refuse_next += 1;
                    }
                }
                ids
            })
        })
        .collect();
    let mut all = Vec::new();
    for w in writers {
        all.extend(w.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all.len(), (WRITERS * POLLS * JOINS) as usize);
    let last = *all.last().unwrap();
    eventually("the cursor reached the last event", || async {
        db.raw
            .scalar("SELECT last_event_id FROM webhook_cursors WHERE name = 'stream'")
            .await
            == last
    })
    .await;
    cancel.cancel();
    tracker.wait().await;

    let seen = seen.lock().unwrap();
    assert_eq!(seen.bad_signatures, 0);
    assert!(
        seen.refused >= 3,
        "the receiver refused {} times",
        seen.refused
    );
    assert_eq!(seen.event_ids(), all, "each event once, in commit order");
    for (webhook_id, events) in &seen.batches {
        assert!(
            events.len() <= BATCH as usize,
            "a batch larger than webhook.batch"
        );
        let first = events[0]["event_id"].as_i64().unwrap();
        let last = events[events.len() - 1]["event_id"].as_i64().unwrap();
        assert_eq!(webhook_id, &format!("stream-{first}-{last}"));
    }
}

async fn a_receiver_down_then_up_loses_nothing_and_reorders_nothing(db: &TestDb) {
    let (url, seen) = receiver(6).await;
    let id = meeting(2);
    track(&db.store, &id, "board").await;
    let (cancel, tracker) = start_sinks(db, vec![webhook("ops", &url)]).await;
    let ids = five_events(&db.store, &id).await;
    eventually("the receiver refused six times", || async {
        seen.lock().unwrap().refused == 6
    })
    .await;
    // More events while the sink is retrying.
    let late = attendee(9, "late@corp.example");
    let more = poll(&db.store, &id, &[Change::joined(&late)]).await;

    let last = more[0].event_id;
    eventually(
        "the cursor passed every event once the receiver is up",
        || async {
            db.raw
                .scalar("SELECT COALESCE(MAX(last_event_id), 0) FROM webhook_cursors WHERE last_error IS NULL")
                .await
                == last
        },
    )
    .await;
    cancel.cancel();
    tracker.wait().await;
    let mut expected = ids;
    expected.push(last);
    assert_eq!(seen.lock().unwrap().event_ids(), expected);
}

async fn filters_deliver_only_matching_events_and_still_move_the_cursor(db: &TestDb) {
    let (url, seen) = receiver(0).await;
    let (board, standup) = (meeting(3), meeting(4));
    track(&db.store, &board, "board").await;
    track(&db.store, &standup, "standup").await;
    let mut filtered = webhook("partners", &url);
    filtered.kinds = vec!["joined".into(), "capabilities_changed".into()];
    filtered.meeting_labels = vec!["board".into()];
    filtered.external_user_ids = vec!["*@partner.example".into()];
    let (cancel, tracker) = start_sinks(db, vec![filtered]).await;

    let board_events = five_events(&db.store, &board).await;
    let standup_events = five_events(&db.store, &standup).await;
    let last = *standup_events.last().unwrap();
    eventually("the cursor passed every event", || async {
        db.raw
            .scalar("SELECT last_event_id FROM webhook_cursors WHERE name = 'partners'")
            .await
            == last
    })
    .await;
    cancel.cancel();
    tracker.wait().await;

    // Of the board's events: ana and cy joined, ana's audio changed; bo is not a partner,
    // and a leave is not a delivered kind. Nothing of the standup.
    let expected = vec![board_events[0], board_events[2], board_events[3]];
    let seen = seen.lock().unwrap();
    assert_eq!(seen.event_ids(), expected);
    for (_, events) in &seen.batches {
        for e in events {
            assert!(
                e["external_user_id"]
                    .as_str()
                    .unwrap()
                    .ends_with("@partner.example")
            );
        }
    }
}

#[tokio::test]
async fn notify_payload_is_heard_only_after_the_events_commit() {
    let Some(db) = common::postgres_db().await else {
        return;
    };
    let common::Raw::Postgres(raw) = &db.raw else {
        unreachable!("postgres_db gives a Postgres database")
    };
    // A deferred trigger runs at COMMIT, after the NOTIFY was queued: it waits for an advisory
    // lock the test holds, so the recording transaction stays uncommitted until released.
    db.raw
        .execute(
            "CREATE FUNCTION hold_commit() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN PERFORM pg_advisory_xact_lock(4242); RETURN NULL; END $$; \
             CREATE CONSTRAINT TRIGGER hold_commit AFTER INSERT ON roster_events \
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION hold_commit();",
        )
        .await;
    let mut gate = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(4242)")
        .execute(&mut gate)
        .await
        .unwrap();
    let mut listener = sqlx::postgres::PgListener::connect(&db.url).await.unwrap();
    listener.listen("roster_events").await.unwrap();

    let id = meeting(5);
    track(&db.store, &id, "board").await;
    let store = db.store.clone();
    let recording = tokio::spawn({
        let id = id.clone();
        async move {
            let (a, b) = (attendee(1, "ana"), attendee(2, "bo"));
            poll(&store, &id, &[Change::joined(&a), Change::joined(&b)]).await
        }
    });
    eventually("the recording transaction waits at commit", || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
        )
        .fetch_one(raw)
        .await
        .unwrap()
            == 1
    })
    .await;
    assert_eq!(db.raw.scalar("SELECT count(*) FROM roster_events").await, 0);
    let early = tokio::time::timeout(Duration::from_millis(300), listener.recv()).await;
    assert!(early.is_err(), "a notification arrived before commit");

    sqlx::query("SELECT pg_advisory_unlock(4242)")
        .execute(&mut gate)
        .await
        .unwrap();
    let events = recording.await.unwrap();
    let heard = tokio::time::timeout(Duration::from_secs(20), listener.recv())
        .await
        .expect("a notification after commit")
        .unwrap();
    let payload: serde_json::Value = serde_json::from_str(heard.payload()).unwrap();
    assert_eq!(
        payload,
        serde_json::json!({
            "meeting_id": id.as_str(),
            "first_event_id": events[0].event_id,
            "last_event_id": events[1].event_id,
        })
    );

    // Stopping the meeting records `left` events and announces them the same way.
    sqlx::query("DROP TRIGGER hold_commit ON roster_events")
        .execute(raw)
        .await
        .unwrap();
    let closed = db
        .store
        .remove_meeting(&id, domain::now())
        .await
        .unwrap()
        .unwrap();
    let heard = tokio::time::timeout(Duration::from_secs(20), listener.recv())
        .await
        .expect("a notification for the stop")
        .unwrap();
    let payload: serde_json::Value = serde_json::from_str(heard.payload()).unwrap();
    assert_eq!(payload["first_event_id"], closed[0].event_id);
    assert_eq!(payload["last_event_id"], closed[1].event_id);
    drop(gate);
    drop(listener);
    db.finish().await;
}

/// The next notification on `listener` as JSON, within 20 s.
async fn next_notification(listener: &mut sqlx::postgres::PgListener) -> serde_json::Value {
    let heard = tokio::time::timeout(Duration::from_secs(20), listener.recv())
        .await
        .expect("a notification within 20 s")
        .unwrap();
    serde_json::from_str(heard.payload()).unwrap()
}

fn payload_of(events: &[StoredEvent]) -> serde_json::Value {
    serde_json::json!({
        "meeting_id": events[0].meeting_id.as_str(),
        "first_event_id": events[0].event_id,
        "last_event_id": events[events.len() - 1].event_id,
    })
}

#[tokio::test]
async fn notify_is_never_heard_for_an_apply_that_fails_at_commit() {
    let Some(db) = common::postgres_db().await else {
        return;
    };
    // A deferred trigger fails the commit of any transaction that inserted an event of
    // "doomed": after the events, the NOTIFY and the snapshot were written.
    db.raw
        .execute(
            "CREATE FUNCTION doom() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF NEW.external_user_id = 'doomed' THEN \
                 RAISE EXCEPTION 'doomed at commit'; END IF; RETURN NULL; END $$; \
             CREATE CONSTRAINT TRIGGER doom AFTER INSERT ON roster_events \
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION doom();",
        )
        .await;
    let mut listener = sqlx::postgres::PgListener::connect(&db.url).await.unwrap();
    listener.listen("roster_events").await.unwrap();
    let id = meeting(8);
    track(&db.store, &id, "board").await;

    let first = poll(&db.store, &id, &[Change::joined(&attendee(1, "ana"))]).await;
    assert_eq!(next_notification(&mut listener).await, payload_of(&first));

    let snapshot = db.store.snapshot(&id).await.unwrap();
    let doomed = [
        Change::joined(&attendee(2, "doomed")),
        Change::joined(&attendee(3, "bo")),
    ];
    let observed_at = domain::now();
    let failed = db
        .store
        .apply(PollRecord {
            meeting_id: &id,
            expected_seq: snapshot.poll_seq,
            started_at: observed_at - TimeDelta::milliseconds(1),
            observed_at,
            previous_poll_at: snapshot.last_polled_at,
            changes: &doomed,
        })
        .await;
    let err = failed.expect_err("the commit fails");
    assert!(format!("{err:?}").contains("doomed at commit"), "{err:?}");
    assert_eq!(db.raw.scalar("SELECT count(*) FROM roster_events").await, 1);

    // A later commit: the next notification heard is its own, so none came for the
    // rolled-back apply, whose inserts took two event ids.
    let later = poll(&db.store, &id, &[Change::joined(&attendee(4, "cy"))]).await;
    assert_eq!(
        later[0].event_id,
        first[0].event_id + 3,
        "the failed apply inserted"
    );
    assert_eq!(next_notification(&mut listener).await, payload_of(&later));
    drop(listener);
    db.finish().await;
}

#[tokio::test]
async fn notify_is_never_heard_for_a_poll_the_daemon_crashed_in_before_commit() {
    let Some(db) = common::postgres_db().await else {
        return;
    };
    let (sim, driver) = common::sim_and_driver(100.0).await;
    let id = driver.create_meeting("notify", "us-east-1").await.unwrap();
    driver
        .add_attendees(&id, (0..3).map(|i| (format!("p{i}@example.com"), None)))
        .await
        .unwrap();
    track(&db.store, &id, "board").await;
    let mut listener = sqlx::postgres::PgListener::connect(&db.url).await.unwrap();
    listener.listen("roster_events").await.unwrap();
    let daemon = |fault: &str| {
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.arg("run")
            .env_clear()
            .envs(common::binary_env())
            .env("ROSTER_SYNC__HTTP__LISTEN", "")
            .env("DATABASE_URL", &db.url)
            .env("ROSTER_SYNC__CHIME__ENDPOINT_URL", sim.endpoint_url())
            .env("ROSTER_SYNC__POLL__INTERVAL", "200ms")
            .env("ROSTER_SYNC_FAULT", fault)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        cmd
    };

    // The first poll inserts three joins, sends its NOTIFY, and the process exits before
    // the commit.
    let crashed = tokio::time::timeout(
        Duration::from_secs(60),
        daemon("crash_before_commit").status(),
    )
    .await
    .expect("the daemon crashes on purpose")
    .unwrap();
    assert_eq!(crashed.code(), Some(99), "{crashed}");
    assert_eq!(db.raw.scalar("SELECT count(*) FROM roster_events").await, 0);

    // The next daemon records the same joins and commits.
    let mut next = daemon("").spawn().unwrap();
    eventually("the joins are committed", || async {
        db.raw.scalar("SELECT count(*) FROM roster_events").await == 3
    })
    .await;
    let committed = db.store.events_for_meeting(&id).await.unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", &next.id().unwrap().to_string()])
        .status();
    let stopped = tokio::time::timeout(Duration::from_secs(60), next.wait())
        .await
        .expect("the daemon stops after SIGTERM")
        .unwrap();
    assert!(stopped.success(), "{stopped}");
    sim.shutdown().await.unwrap();

    // The crashed transaction took event ids 1 to 3; the first notification heard is the
    // committed poll's.
    assert_eq!(committed[0].event_id, 4, "the crashed poll inserted first");
    assert_eq!(
        next_notification(&mut listener).await,
        payload_of(&committed)
    );
    drop(listener);
    db.finish().await;
}

/// Reads lines of a child's stdout on a thread.
fn line_reader(stdout: std::process::ChildStdout) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn next_line(lines: &std::sync::mpsc::Receiver<String>) -> serde_json::Value {
    let line = lines
        .recv_timeout(Duration::from_secs(20))
        .expect("a line from events --follow");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

#[tokio::test]
async fn events_follow_prints_events_committed_after_it_started_and_stops_on_sigterm() {
    let Some(db) = common::postgres_db().await else {
        return;
    };
    let id = meeting(6);
    track(&db.store, &id, "board").await;
    let before = poll(&db.store, &id, &[Change::joined(&attendee(1, "ana"))]).await;

    let mut child = common::Reaped(
        events_follow(&db.url, Some(before[0].event_id))
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let lines = line_reader(child.stdout.take().unwrap());

    // The first event after it started shows that it is following; the rest must follow it
    // in order, none twice.
    let mut expected = Vec::new();
    let mut printed = Vec::new();
    for n in 2..6 {
        let events = poll(&db.store, &id, &[Change::joined(&attendee(n, "bo"))]).await;
        expected.push(events[0].event_id);
        let line = next_line(&lines);
        assert_eq!(line["meeting_label"], "board");
        assert_eq!(line["kind"], "joined");
        printed.push(line["event_id"].as_i64().unwrap());
    }
    assert_eq!(printed, expected);

    let status = sigterm_and_wait(&mut child);
    assert!(status.success(), "events --follow ended with {status}");
    assert!(
        lines.recv_timeout(Duration::from_secs(5)).is_err(),
        "nothing more printed"
    );
    db.finish().await;
}

both_backends!(events_follow_prints_a_burst_of_events_each_once_in_commit_order);

/// `events --follow` on either backend while polls keep committing (120 events in 40 polls,
/// written as fast as the store takes them, not one line at a time): every event is printed
/// once, in id order, none skipped, none repeated. The correctness half of the ignored
/// latency measurement in `alerting_latency.rs`.
async fn events_follow_prints_a_burst_of_events_each_once_in_commit_order(db: &TestDb) {
    let id = meeting(8);
    track(&db.store, &id, "burst").await;
    let before = poll(&db.store, &id, &[Change::joined(&attendee(1, "ana"))]).await;
    let mut child = common::Reaped(
        events_follow(&db.url, Some(before[0].event_id))
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let lines = line_reader(child.stdout.take().unwrap());
    let mut expected = Vec::new();
    for p in 0..40u32 {
        let changes: Vec<Change> = (0..3)
            .map(|k| Change::joined(&attendee(100 + p * 3 + k, "burst")))
            .collect();
        expected.extend(
            poll(&db.store, &id, &changes)
                .await
                .iter()
                .map(|e| e.event_id),
        );
    }
    let printed: Vec<i64> = (0..expected.len())
        .map(|_| next_line(&lines)["event_id"].as_i64().unwrap())
        .collect();
    assert_eq!(printed, expected, "printed in commit order, each once");
    let status = sigterm_and_wait(&mut child);
    assert!(status.success(), "events --follow ended with {status}");
    assert!(
        lines.recv_timeout(Duration::from_secs(1)).is_err(),
        "nothing printed twice after the burst"
    );
}

/// `events --follow` loses its database connections (every backend on the database
/// terminated) between two bursts of events: it reconnects and prints the second burst,
/// nothing skipped and nothing printed twice.
#[tokio::test]
async fn events_follow_across_a_lost_database_connection_skips_and_repeats_nothing() {
    let Some(db) = common::postgres_db().await else {
        return;
    };
    let id = meeting(11);
    track(&db.store, &id, "board").await;
    let before = poll(&db.store, &id, &[Change::joined(&attendee(1, "ana"))]).await;
    let mut child = common::Reaped(
        events_follow(&db.url, Some(before[0].event_id))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let lines = line_reader(child.stdout.take().unwrap());
    let burst = |first: u32| {
        let (store, id) = (db.store.clone(), id.clone());
        async move {
            let mut ids = Vec::new();
            for p in 0..10u32 {
                let changes: Vec<Change> = (0..3)
                    .map(|k| Change::joined(&attendee(first + p * 3 + k, "burst")))
                    .collect();
                ids.extend(poll(&store, &id, &changes).await.iter().map(|e| e.event_id));
            }
            ids
        }
    };
    let mut expected = burst(100).await;
    let mut printed: Vec<i64> = (0..expected.len())
        .map(|_| next_line(&lines)["event_id"].as_i64().unwrap())
        .collect();
    db.raw
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .await;
    let second = burst(200).await;
    expected.extend(&second);
    printed.extend((0..second.len()).map(|_| next_line(&lines)["event_id"].as_i64().unwrap()));
    assert_eq!(
        printed, expected,
        "each event once, in order, across the reconnect"
    );
    let status = sigterm_and_wait(&mut child);
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        status.success(),
        "events --follow ended with {status}: {stderr}"
    );
    assert!(
        // Postgres' own words for the terminated backend, in whichever log line reports it
        // (a pooled connection's ping, the listener, or a failed read).
        [
            "terminating connection",
            "interrupted",
            "cannot read events"
        ]
        .iter()
        .any(|seen| stderr.contains(seen)),
        "the connection was lost, and logged: {stderr}"
    );
    assert!(
        lines.recv_timeout(Duration::from_secs(1)).is_err(),
        "nothing printed twice"
    );
    db.finish().await;
}

both_backends!(events_follow_whose_log_reader_went_away_keeps_printing_and_stops_on_sigterm);

/// `events --follow` whose stderr reader has gone (`2>&1 | head`, a log shipper that died):
/// a log line it cannot write is dropped, never a panic, so it keeps printing what commits,
/// and SIGTERM (whose own log line cannot be written either) still stops it with status 0.
async fn events_follow_whose_log_reader_went_away_keeps_printing_and_stops_on_sigterm(db: &TestDb) {
    let id = meeting(12);
    track(&db.store, &id, "board").await;
    let mut child = common::Reaped(
        events_follow(&db.url, None)
            // Every read logs, so lines keep coming after the reader has gone.
            .env("RUST_LOG", "debug")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    drop(child.stderr.take());
    let lines = line_reader(child.stdout.take().unwrap());
    let mut printed = Vec::new();
    let mut expected = Vec::new();
    for n in 1..4 {
        let events = poll(&db.store, &id, &[Change::joined(&attendee(n, "ana"))]).await;
        expected.push(events[0].event_id);
        printed.push(next_line(&lines)["event_id"].as_i64().unwrap());
    }
    assert_eq!(printed, expected);
    let status = sigterm_and_wait(&mut child);
    assert!(status.success(), "events --follow ended with {status}");
}

#[tokio::test]
async fn events_follow_exits_quietly_when_its_reader_goes_away() {
    let Some(db) = common::postgres_db().await else {
        return;
    };
    let id = meeting(7);
    track(&db.store, &id, "board").await;
    poll(&db.store, &id, &[Change::joined(&attendee(1, "ana"))]).await;

    let mut child = common::Reaped(
        events_follow(&db.url, None)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    assert!(first.contains("\"joined\""), "{first}");
    drop(reader);
    poll(&db.store, &id, &[Change::joined(&attendee(2, "bo"))]).await;

    let status = wait_with_deadline(&mut child);
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "exit {status}: {stderr}");
    assert!(!stderr.contains("error"), "{stderr}");
    db.finish().await;
}

#[test]
fn events_refuses_a_bad_meeting_id_or_kind_by_name() {
    for (args, expected) in [
        (&["events", "--meeting", "not-a-guid"][..], "--meeting"),
        (&["events", "--kind", "arrived"][..], "--kind"),
    ] {
        let out = Command::new(BIN)
            .args(args)
            .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains(expected), "{stderr}");
        assert!(!stderr.contains("cannot open database"), "{stderr}");
    }
}

/// `roster-sync events --follow --format json` on `url`, after `since` when given, its
/// stdout piped; the caller chooses stderr and spawns it.
fn events_follow(url: &str, since: Option<i64>) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["events", "--follow", "--format", "json"]);
    if let Some(since) = since {
        cmd.arg("--since").arg(since.to_string());
    }
    cmd.env("DATABASE_URL", url)
        .env_remove("ROSTER_SYNC_CONFIG")
        .stdout(Stdio::piped());
    cmd
}

/// Sends SIGTERM to `child` and returns its exit status (within 20 s).
fn sigterm_and_wait(child: &mut std::process::Child) -> std::process::ExitStatus {
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(sent);
    wait_with_deadline(child)
}

/// The child's exit status within 20 s.
fn wait_with_deadline(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the child did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Replicas on one Postgres database run the same sinks: the claim on the cursor lets one of
/// them post a batch at a time, so the receiver gets each event once, in order.
#[tokio::test]
async fn replicas_running_the_same_sink_deliver_each_batch_once() {
    let Some(db) = common::postgres_db().await else {
        return;
    };
    let (url, seen) = receiver(0).await;
    // Three "replicas": three sets of sink tasks over separate pools of the same database.
    let mut replicas = Vec::new();
    for _ in 0..3 {
        let store = Store::connect(&db.url, 4).await.unwrap();
        replicas.push(start_sinks_on(&store, &db.raw, vec![webhook("security", &url)]).await);
    }
    let mut ids = Vec::new();
    for n in 1..=4 {
        let id = meeting(n);
        track(&db.store, &id, "board").await;
        ids.extend(five_events(&db.store, &id).await);
    }
    let last_id = *ids.last().unwrap();
    eventually("the cursor reached the last event", || async {
        db.raw
            .scalar("SELECT last_event_id FROM webhook_cursors WHERE name = 'security'")
            .await
            == last_id
    })
    .await;
    for (cancel, tracker) in replicas {
        cancel.cancel();
        tracker.wait().await;
    }
    let (bad_signatures, received) = {
        let seen = seen.lock().unwrap();
        (seen.bad_signatures, seen.event_ids())
    };
    assert_eq!(bad_signatures, 0);
    assert_eq!(received, ids, "each event once, in order");
    db.finish().await;
}
