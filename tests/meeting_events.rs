//! Meeting events end to end: the real daemon (`Daemon::build`, or the real binary where its
//! metrics are the point) reads Chime lifecycle events from an SQS queue (the simulator's, and
//! once an independent server's, moto) and polls the meetings they name through the real SDK
//! client against the simulator. Events decide when a meeting is polled, never what is
//! recorded.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use common::{TestDb, eventually};
use roster_sync::app::{Daemon, DaemonOptions};
use roster_sync::chime::{ChimeClient, ClientOptions, simulator_sdk_config};
use roster_sync::config::Settings;
use roster_sync::domain::{self, AttendeeId, MeetingId, Region};
use roster_sync::lifecycle::{EventAttendee, EventType, MeetingEvent};
use roster_sync::scheduler::PollReport;
use roster_sync::sim::control::Driver;
use roster_sync::sim::{self, SimConfig, SimHandle};
use roster_sync::store::MeetingStatus;
use tokio_util::sync::CancellationToken;

/// Only reached when something is broken; no assertion depends on how long a wait took.
const LIMIT: Duration = Duration::from_secs(60);

/// Far longer than any test: a change seen before it was seen because of an event.
const SCHEDULED: Duration = Duration::from_secs(600);

const QUEUE: &str = "chime-events";

fn region() -> Region {
    Region::parse("us-east-1").unwrap()
}

struct Rig {
    sim: SimHandle,
    driver: Driver,
    queue_url: String,
}

async fn rig() -> Rig {
    // `RUST_LOG=roster_sync=debug cargo test --test meeting_events -- --nocapture` shows the
    // daemon's logs.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
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
    let queue_url = sim.create_queue(QUEUE).unwrap();
    Rig {
        sim,
        driver,
        queue_url,
    }
}

impl Rig {
    fn client(&self) -> ChimeClient {
        ChimeClient::new(
            simulator_sdk_config(&region()),
            ClientOptions::for_endpoint(&self.sim.endpoint_url(), 1000.0, 1000),
        )
    }

    fn send(&self, body: &str) {
        self.sim.send_to_queue(QUEUE, body).unwrap();
    }

    /// Messages still in the queue, visible or in flight.
    fn queued(&self) -> usize {
        let c = self.sim.queue_counts(QUEUE).unwrap();
        c.visible + c.in_flight + c.delayed
    }
}

/// An event as EventBridge delivers it, with a fresh envelope id unless `id` is given.
fn event(
    t: EventType,
    meeting: &MeetingId,
    attendee: Option<&AttendeeId>,
    external_meeting_id: Option<&str>,
) -> MeetingEvent {
    let now = Utc::now();
    MeetingEvent {
        id: uuid::Uuid::new_v4().to_string(),
        event_type: t,
        region: region(),
        time: now,
        occurred_at: now,
        meeting_id: meeting.clone(),
        external_meeting_id: external_meeting_id.map(str::to_owned),
        media_region: Some("us-east-1".into()),
        attendee: attendee.map(|a| EventAttendee {
            attendee_id: a.clone(),
            external_user_id: None,
        }),
        network_type: None,
        capabilities: None,
        success: None,
    }
}

fn settings(db: &TestDb, queue_url: &str, endpoint: &str) -> Settings {
    let mut s = Settings::defaults().unwrap();
    s.database.url = db.url.clone();
    s.http.listen.clear();
    s.poll.interval = SCHEDULED;
    s.poll.max_interval = SCHEDULED;
    s.poll.failure_backoff_cap = SCHEDULED;
    s.shutdown.grace = Duration::from_secs(5);
    s.meeting_events.queue_url = queue_url.to_owned();
    s.meeting_events.endpoint_url = endpoint.to_owned();
    s.meeting_events.wait = Duration::from_secs(1);
    s.meeting_events.coalesce = Duration::from_millis(200);
    s
}

/// The daemon as `run` builds it, counting its finished polls in `polls`.
async fn daemon(
    settings: &Settings,
    db: &TestDb,
    client: ChimeClient,
    polls: Arc<AtomicU64>,
) -> Daemon {
    Daemon::build(
        settings,
        Some(db.store.clone()),
        CancellationToken::new(),
        DaemonOptions {
            client: Some(Arc::new(client)),
            poll_observer: Some(Box::new(move |_: &PollReport<'_>| {
                polls.fetch_add(1, Ordering::SeqCst);
            })),
            ..DaemonOptions::default()
        },
    )
    .await
    .expect("build the daemon")
}

async fn event_count(db: &TestDb) -> usize {
    db.store.events_since(0, 100_000).await.unwrap().len()
}

/// Sends an `AttendeeAdded` for `attendee`: its meeting is polled now (a tracked meeting's
/// first scheduled poll is spread over the first `poll.interval`, minutes here).
fn added(rig: &Rig, id: &MeetingId, attendee: &AttendeeId) {
    rig.send(&event(EventType::AttendeeAdded, id, Some(attendee), None).to_body("123456789012"));
}

/// A tracked meeting with `n` attendees (not polled yet).
async fn tracked(rig: &Rig, db: &TestDb, n: usize) -> (MeetingId, Vec<AttendeeId>) {
    let id = rig
        .driver
        .create_meeting("tracked", "us-east-1")
        .await
        .unwrap();
    let made = rig
        .driver
        .add_attendees(&id, (0..n).map(|i| (format!("person-{i}"), None)))
        .await
        .unwrap();
    db.store
        .add_meeting(&id, &region(), None, domain::now(), false)
        .await
        .unwrap();
    (id, made.into_iter().map(|c| c.attendee_id).collect())
}

async fn a_change_is_recorded_by_a_hint_poll_long_before_the_scheduled_interval(db: &TestDb) {
    let rig = rig().await;
    let (id, people) = tracked(&rig, db, 2).await;
    let polls = Arc::new(AtomicU64::new(0));
    let s = settings(db, &rig.queue_url, &rig.sim.endpoint_url());
    let d = daemon(&s, db, rig.client(), Arc::clone(&polls)).await;
    added(&rig, &id, &people[0]);
    eventually("the first poll's joins", || async {
        event_count(db).await == 2
    })
    .await;

    let added = rig
        .driver
        .add_attendees(&id, [("late-comer".to_owned(), None)])
        .await
        .unwrap();
    let body = event(
        EventType::AttendeeAdded,
        &id,
        Some(&added[0].attendee_id),
        None,
    )
    .to_body("123456789012");
    rig.send(&body);
    eventually(
        "the late-comer's join, ten minutes before its scheduled poll",
        || async {
            db.store
                .events_for_meeting(&id)
                .await
                .unwrap()
                .iter()
                .any(|e| e.attendee_id == added[0].attendee_id)
        },
    )
    .await;
    eventually("the message deleted", || async { rig.queued() == 0 }).await;
    d.stop().await.unwrap();
}

async fn duplicates_record_nothing_twice_and_are_deleted(db: &TestDb) {
    let rig = rig().await;
    let (id, people) = tracked(&rig, db, 1).await;
    let polls = Arc::new(AtomicU64::new(0));
    let s = settings(db, &rig.queue_url, &rig.sim.endpoint_url());
    let d = daemon(&s, db, rig.client(), Arc::clone(&polls)).await;
    added(&rig, &id, &people[0]);
    eventually("the first poll's join", || async {
        event_count(db).await == 1
    })
    .await;

    let added = rig
        .driver
        .add_attendees(&id, [("twice".to_owned(), None)])
        .await
        .unwrap();
    let body = event(
        EventType::AttendeeAdded,
        &id,
        Some(&added[0].attendee_id),
        None,
    )
    .to_body("123456789012");
    for _ in 0..3 {
        rig.send(&body);
    }
    eventually("every copy deleted", || async { rig.queued() == 0 }).await;
    eventually("the join recorded", || async { event_count(db).await == 2 }).await;
    // A second hint poll of the same meeting, if any, finds nothing new: the join is there once.
    let before = polls.load(Ordering::SeqCst);
    let again = event(
        EventType::AttendeeAdded,
        &id,
        Some(&added[0].attendee_id),
        None,
    )
    .to_body("123456789012");
    rig.send(&again);
    eventually("a poll after a fresh event", || async {
        polls.load(Ordering::SeqCst) > before && rig.queued() == 0
    })
    .await;
    let events = db.store.events_for_meeting(&id).await.unwrap();
    let joins = events
        .iter()
        .filter(|e| e.attendee_id == added[0].attendee_id)
        .count();
    assert_eq!(joins, 1, "{events:?}");
    d.stop().await.unwrap();
}

async fn bad_bodies_are_deleted_and_never_recorded(db: &TestDb) {
    let rig = rig().await;
    let (id, people) = tracked(&rig, db, 1).await;
    let polls = Arc::new(AtomicU64::new(0));
    let s = settings(db, &rig.queue_url, &rig.sim.endpoint_url());
    let d = daemon(&s, db, rig.client(), Arc::clone(&polls)).await;
    added(&rig, &id, &people[0]);
    eventually("the first poll's join", || async {
        event_count(db).await == 1
    })
    .await;
    let polled = polls.load(Ordering::SeqCst);

    let good = event(
        EventType::AttendeeAdded,
        &id,
        Some(&AttendeeId::parse("11111111-2222-4333-8444-555555555555").unwrap()),
        None,
    )
    .to_body("123456789012");
    let mut value: serde_json::Value = serde_json::from_str(&good).unwrap();
    let bad_bodies = [
        "not json at all".to_owned(),
        serde_json::json!({"source": "aws.s3", "detail-type": "Object Created", "id": "x"})
            .to_string(),
        {
            value["detail"]["eventType"] = "chime:SomethingNew".into();
            value.to_string()
        },
        {
            value["detail"]["eventType"] = "chime:AttendeeAdded".into();
            value["detail"]["meetingId"] = "not-a-guid".into();
            value["id"] = "bad-guid".into();
            value.to_string()
        },
        {
            value["detail"]["meetingId"] = id.as_str().into();
            value["detail"]["timestamp"] = 1_000.into();
            value["id"] = "in-1970".into();
            value.to_string()
        },
        {
            value["detail"]["timestamp"] = (Utc::now().timestamp_millis() + 86_400_000).into();
            value["id"] = "tomorrow".into();
            value.to_string()
        },
        roster_sync::lifecycle::sns_envelope("{broken", "arn:aws:sns:us-east-1:123456789012:t"),
        "x".repeat(roster_sync::lifecycle::MAX_BODY_BYTES + 1),
    ];
    for body in &bad_bodies {
        rig.send(body);
    }
    eventually("every bad message deleted", || async { rig.queued() == 0 }).await;
    assert_eq!(event_count(db).await, 1, "a bad body recorded something");
    assert_eq!(
        polls.load(Ordering::SeqCst),
        polled,
        "a bad body caused a poll"
    );
    assert_eq!(
        db.store.meeting_status(&id).await.unwrap(),
        Some(MeetingStatus::Active)
    );
    d.stop().await.unwrap();
}

async fn meeting_ended_alone_never_ends_a_meeting_that_still_answers(db: &TestDb) {
    let rig = rig().await;
    let (id, people) = tracked(&rig, db, 2).await;
    let polls = Arc::new(AtomicU64::new(0));
    let s = settings(db, &rig.queue_url, &rig.sim.endpoint_url());
    let d = daemon(&s, db, rig.client(), Arc::clone(&polls)).await;
    added(&rig, &id, &people[0]);
    eventually("the first poll's joins", || async {
        event_count(db).await == 2
    })
    .await;
    let before = polls.load(Ordering::SeqCst);
    rig.send(&event(EventType::MeetingEnded, &id, None, None).to_body("123456789012"));
    eventually("the poll MeetingEnded brings", || async {
        polls.load(Ordering::SeqCst) > before && rig.queued() == 0
    })
    .await;
    assert_eq!(
        db.store.meeting_status(&id).await.unwrap(),
        Some(MeetingStatus::Active),
        "MeetingEnded alone ended a meeting whose ListAttendees answers"
    );
    assert_eq!(event_count(db).await, 2, "MeetingEnded recorded something");

    // When the service says it is gone, the immediate poll ends it by the existing rule.
    rig.driver.delete_meeting(&id).await.unwrap();
    rig.send(&event(EventType::MeetingEnded, &id, None, None).to_body("123456789012"));
    eventually("the meeting ended by its poll", || async {
        db.store.meeting_status(&id).await.unwrap() == Some(MeetingStatus::Ended)
    })
    .await;
    d.stop().await.unwrap();
}

async fn discovery_tracks_a_matching_meeting_and_ignores_others(db: &TestDb) {
    let rig = rig().await;
    let wanted = rig
        .driver
        .create_meeting("prod-42", "us-east-1")
        .await
        .unwrap();
    rig.driver
        .add_attendees(&wanted, [("found".to_owned(), None)])
        .await
        .unwrap();
    let other = rig
        .driver
        .create_meeting("dev-7", "us-east-1")
        .await
        .unwrap();
    // A meeting the service does not know: GetMeeting refuses to track it.
    let ghost = MeetingId::parse("99999999-8888-4777-8666-555555555555").unwrap();
    let polls = Arc::new(AtomicU64::new(0));
    let mut s = settings(db, &rig.queue_url, &rig.sim.endpoint_url());
    s.meeting_events.auto_track = true;
    s.meeting_events.track_external_meeting_ids = vec!["prod-*".into()];
    let d = daemon(&s, db, rig.client(), Arc::clone(&polls)).await;

    rig.send(
        &event(EventType::MeetingStarted, &other, None, Some("dev-7")).to_body("123456789012"),
    );
    rig.send(
        &event(EventType::MeetingStarted, &ghost, None, Some("prod-ghost")).to_body("123456789012"),
    );
    let started = event(EventType::MeetingStarted, &wanted, None, Some("prod-42"));
    rig.send(&started.to_body("123456789012"));
    rig.send(&started.to_body("123456789012"));
    eventually("the discovered meeting's first poll", || async {
        db.store.events_for_meeting(&wanted).await.unwrap().len() == 1
    })
    .await;
    eventually("every message deleted", || async { rig.queued() == 0 }).await;
    let m = db.store.get_meeting(&wanted).await.unwrap().unwrap();
    assert_eq!(m.label.as_deref(), Some("prod-42"));
    assert_eq!(m.status, MeetingStatus::Active);
    let sources = db.store.meeting_sources().await.unwrap();
    assert_eq!(
        sources.get(&wanted).map(String::as_str),
        Some("meeting_events")
    );
    assert_eq!(db.store.meeting_status(&other).await.unwrap(), None);
    assert_eq!(db.store.meeting_status(&ghost).await.unwrap(), None);
    d.stop().await.unwrap();
}

async fn a_stopped_meeting_is_never_revived_by_discovery(db: &TestDb) {
    let rig = rig().await;
    let (id, _) = tracked(&rig, db, 1).await;
    db.store.remove_meeting(&id, domain::now()).await.unwrap();
    let polls = Arc::new(AtomicU64::new(0));
    let mut s = settings(db, &rig.queue_url, &rig.sim.endpoint_url());
    s.meeting_events.auto_track = true;
    let d = daemon(&s, db, rig.client(), Arc::clone(&polls)).await;
    rig.send(&event(EventType::MeetingStarted, &id, None, Some("tracked")).to_body("123456789012"));
    eventually("the message deleted", || async { rig.queued() == 0 }).await;
    assert_eq!(
        db.store.meeting_status(&id).await.unwrap(),
        Some(MeetingStatus::Stopped)
    );
    d.stop().await.unwrap();
}

both_backends!(
    a_change_is_recorded_by_a_hint_poll_long_before_the_scheduled_interval,
    duplicates_record_nothing_twice_and_are_deleted,
    bad_bodies_are_deleted_and_never_recorded,
    meeting_ended_alone_never_ends_a_meeting_that_still_answers,
    discovery_tracks_a_matching_meeting_and_ignores_others,
    a_stopped_meeting_is_never_revived_by_discovery,
);

/// Cluster mode's hint path: a hint written by any replica (`hinted_at` + `NOTIFY`) reaches
/// every replica listening, once committed; the holder of the lease polls it.
#[tokio::test]
async fn a_hint_through_the_database_reaches_a_listening_replica() {
    let Some(db) = common::postgres_db().await else {
        return;
    };
    let id = MeetingId::parse("12345678-1234-4234-8234-123456789abc").unwrap();
    db.store
        .add_meeting(&id, &region(), None, domain::now(), false)
        .await
        .unwrap();
    let mut wakeups = db
        .store
        .hint_wakeups()
        .await
        .unwrap()
        .expect("a LISTEN on Postgres");
    let other_replica = roster_sync::store::Store::connect(&db.url, 1)
        .await
        .unwrap();
    other_replica.hint_meeting(&id, Utc::now()).await.unwrap();
    let heard = tokio::time::timeout(LIMIT, wakeups.next())
        .await
        .expect("the hint arrives")
        .unwrap();
    assert_eq!(heard, id);
    other_replica.close().await;
    drop(wakeups);
    db.finish().await;
}
