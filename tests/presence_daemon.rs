//! Presence end to end: the simulator's clients connect, share video, drop and leave; the
//! simulator publishes the lifecycle events to its SQS queue; the real daemon reads the queue
//! through aws-sdk-sqs, polls through the Chime client, and records presence that matches the
//! simulator's truth. On Postgres and on SQLite.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::TestDb;
use roster_sync::app::{Daemon, DaemonOptions};
use roster_sync::chime::{ChimeClient, ClientOptions, simulator_sdk_config};
use roster_sync::config::Settings;
use roster_sync::domain::{self, MeetingId, Region};
use roster_sync::sim::control::Driver;
use roster_sync::sim::events::{EventFaults, EventsConfig};
use roster_sync::sim::presence::PresenceAction;
use roster_sync::sim::{self, SimConfig, SimHandle};
use tokio_util::sync::CancellationToken;

const QUEUE: &str = "chime-events";

fn region() -> Region {
    Region::parse("us-east-1").unwrap()
}

struct Rig {
    sim: SimHandle,
    client: Arc<ChimeClient>,
    driver: Driver,
}

async fn rig(faults: EventFaults) -> Rig {
    let sim = sim::start(
        "127.0.0.1:0".parse().unwrap(),
        SimConfig {
            exempt_control: true,
            ..SimConfig::default()
        },
    )
    .await
    .expect("simulator");
    sim.set_events(Some(EventsConfig {
        faults,
        ..EventsConfig::to_queue(QUEUE)
    }))
    .expect("events on");
    let client = Arc::new(ChimeClient::new(
        simulator_sdk_config(&region()),
        ClientOptions::for_endpoint(&sim.endpoint_url(), 100.0, 100),
    ));
    let driver = Driver::new(client.sdk_client(&region())).with_endpoint(&sim.endpoint_url());
    Rig {
        sim,
        client,
        driver,
    }
}

async fn daemon(db: &TestDb, rig: &Rig, cancel: CancellationToken) -> Daemon {
    let mut settings = Settings::defaults().unwrap();
    settings.database.url = db.url.clone();
    settings.http.listen.clear();
    // Scheduled polls are rare: what changes quickly is driven by the events.
    settings.poll.interval = Duration::from_secs(300);
    settings.poll.max_interval = Duration::from_secs(600);
    settings.meeting_events.queue_url = rig.sim.queue_url(QUEUE).expect("the queue exists");
    settings.meeting_events.endpoint_url = rig.sim.endpoint_url();
    settings.meeting_events.region = "us-east-1".into();
    settings.meeting_events.wait = Duration::from_secs(1);
    settings.meeting_events.reorder_window = Duration::from_secs(2);
    settings.shutdown.grace = Duration::from_secs(5);
    Daemon::build(
        &settings,
        Some(db.store.clone()),
        cancel,
        DaemonOptions {
            client: Some(rig.client.clone()),
            ..DaemonOptions::default()
        },
    )
    .await
    .expect("build the daemon")
}

/// `presence_sessions` as `user start end reason start_inferred end_inferred`, in order.
#[derive(Debug, Clone)]
struct Session {
    user: String,
    connected_at: DateTime<Utc>,
    disconnected_at: Option<DateTime<Utc>>,
    reason: Option<String>,
    start_inferred: bool,
    end_inferred: Option<bool>,
}

async fn sessions(db: &TestDb, meeting: &MeetingId) -> Vec<Session> {
    let mut out = Vec::new();
    for e in db.store.events_for_meeting(meeting).await.unwrap() {
        let Some(p) = &e.presence else { continue };
        match e.kind.as_str() {
            "connected" => out.push(Session {
                user: e.external_user_id.as_str().to_owned(),
                connected_at: p.occurred_at,
                disconnected_at: None,
                reason: None,
                start_inferred: p.inferred.is_some(),
                end_inferred: None,
            }),
            "disconnected" => {
                let open = out
                    .iter_mut()
                    .rev()
                    .find(|s| s.user == e.external_user_id.as_str())
                    .expect("a disconnect follows a connect");
                assert!(
                    open.disconnected_at.is_none(),
                    "two disconnects of one session"
                );
                open.disconnected_at = Some(p.occurred_at);
                open.reason = p.reason.map(|r| r.as_str().to_owned());
                open.end_inferred = Some(p.inferred.is_some());
            }
            _ => {}
        }
    }
    out
}

async fn eventually<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn close(a: DateTime<Utc>, b: DateTime<Utc>) -> bool {
    (a - b).num_milliseconds().abs() <= 1000
}

both_backends!(
    presence_from_the_queue_matches_the_simulators_truth,
    a_session_whose_left_was_lost_closes_inferred_when_the_attendee_is_deleted,
);

async fn presence_from_the_queue_matches_the_simulators_truth(db: &TestDb) {
    let rig = rig(EventFaults::default()).await;
    let id = rig
        .driver
        .create_meeting("presence", "us-east-1")
        .await
        .unwrap();
    let made = rig
        .driver
        .add_attendees(&id, (0..2).map(|i| (format!("person-{i}"), None)))
        .await
        .unwrap();
    db.store
        .add_meeting(&id, &region(), Some("presence"), domain::now(), false)
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let d = daemon(db, &rig, cancel.clone()).await;
    let (a, b) = (&made[0].attendee_id, &made[1].attendee_id);
    // Chime stamps events in milliseconds, and no client drops and rejoins within one: the
    // actions are a few milliseconds apart, as a person's could never be closer.
    let act = async |who, action| {
        rig.driver.presence(&id, who, action, None).await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
        anyhow::Ok(())
    };
    act(a, PresenceAction::Join).await.unwrap();
    act(a, PresenceAction::VideoStart).await.unwrap();
    act(b, PresenceAction::Join).await.unwrap();
    act(b, PresenceAction::Drop).await.unwrap();
    act(b, PresenceAction::Join).await.unwrap();
    act(a, PresenceAction::Handoff).await.unwrap();
    act(a, PresenceAction::VideoStop).await.unwrap();
    act(a, PresenceAction::Leave).await.unwrap();
    act(b, PresenceAction::Leave).await.unwrap();

    let got = eventually("three closed presence sessions", async || {
        let s = sessions(db, &id).await;
        (s.len() == 3 && s.iter().all(|s| s.disconnected_at.is_some())).then_some(s)
    })
    .await;
    let truth = rig.driver.presence_truth(&id).await.unwrap();
    let mut expected = Vec::new();
    for t in &truth.attendees {
        for s in &t.sessions {
            expected.push((t.external_user_id.clone(), s.start, s.end.expect("ended")));
        }
    }
    expected.sort_by_key(|(_, start, _)| *start);
    assert_eq!(expected.len(), 3, "the truth: {truth:?}");
    for (s, (user, start, end)) in got.iter().zip(&expected) {
        assert_eq!(&s.user, user);
        assert!(close(s.connected_at, *start), "{s:?} vs {start}");
        assert!(close(s.disconnected_at.unwrap(), *end), "{s:?} vs {end}");
        assert!(!s.start_inferred && s.end_inferred == Some(false), "{s:?}");
    }
    assert_eq!(
        got.iter()
            .map(|s| s.reason.as_deref().unwrap())
            .collect::<Vec<_>>(),
        ["left", "dropped", "left"]
    );
    assert_eq!(
        db.raw
            .scalar("SELECT count(*) FROM roster_events WHERE kind IN ('video_started', 'video_stopped')")
            .await,
        2
    );
    cancel.cancel();
    d.wait().await.unwrap();
}

async fn a_session_whose_left_was_lost_closes_inferred_when_the_attendee_is_deleted(db: &TestDb) {
    let rig = rig(EventFaults::default()).await;
    let id = rig
        .driver
        .create_meeting("presence", "us-east-1")
        .await
        .unwrap();
    let made = rig
        .driver
        .add_attendees(&id, [("person-0".to_owned(), None)])
        .await
        .unwrap();
    db.store
        .add_meeting(&id, &region(), None, domain::now(), false)
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let d = daemon(db, &rig, cancel.clone()).await;
    let a = &made[0].attendee_id;
    rig.driver.join(&id, a).await.unwrap();
    eventually("the connection recorded", async || {
        (sessions(db, &id).await.len() == 1).then_some(())
    })
    .await;
    // The attendee is deleted while connected: no AttendeeLeft, only AttendeeDeleted, whose
    // hint brings the poll that proves the departure.
    rig.driver.delete_attendee(&id, a).await.unwrap();
    let s = eventually("the session closed", async || {
        let s = sessions(db, &id).await;
        s.first().filter(|s| s.disconnected_at.is_some()).cloned()
    })
    .await;
    assert_eq!(s.reason.as_deref(), Some("removed"));
    assert_eq!(s.end_inferred, Some(true));
    assert!(!s.start_inferred);
    cancel.cancel();
    d.wait().await.unwrap();
}
