//! The daemon's own retention task, counted in `/metrics`. Alone in its test binary: the
//! metrics recorder is global to a process, so tests running beside it would add their own
//! deletions to the counter this test reads exactly.

mod common;

use std::time::Duration;

use chrono::TimeDelta;
use roster_sync::chime::{ChimeClient, ClientOptions, simulator_sdk_config};
use roster_sync::config::Settings;
use roster_sync::domain::{
    self, Attendee, AttendeeId, Capabilities, Change, ExternalUserId, LeftReason, MeetingId, Region,
};
use roster_sync::store::{ApplyOutcome, PollRecord};
use tokio_util::sync::CancellationToken;

fn region() -> Region {
    Region::parse("us-east-1").unwrap()
}

/// `GET /metrics` of the daemon's operations endpoint, as text.
async fn metrics_text(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: roster-sync\r\n\r\n")
        .await
        .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.unwrap();
    reply
}

/// Two events 39 and 40 days old, a retention of 30 days: the daemon deletes both when it
/// starts, and `/metrics` counts exactly those two.
#[tokio::test]
async fn the_daemon_deletes_expired_events_when_it_starts_and_counts_them() {
    let db = common::sqlite_db().await;
    let id = MeetingId::parse("00000007-0000-4000-8000-0000000000cc").unwrap();
    let ana = Attendee {
        attendee_id: AttendeeId::parse("cccccccc-0000-4000-8000-000000000001").unwrap(),
        external_user_id: ExternalUserId::new("ana"),
        capabilities: Capabilities::DEFAULT,
    };
    db.store
        .add_meeting(&id, &region(), None, domain::now(), false)
        .await
        .unwrap();
    let left = [Change::left(&ana, LeftReason::Removed)];
    for (days, changes) in [(40, &[Change::joined(&ana)][..]), (39, &left[..])] {
        let at = domain::now() - TimeDelta::days(days);
        let snapshot = db.store.snapshot(&id).await.unwrap();
        let rec = PollRecord {
            meeting_id: &id,
            expected_seq: snapshot.poll_seq,
            started_at: at - TimeDelta::milliseconds(1),
            observed_at: at,
            previous_poll_at: snapshot.last_polled_at,
            changes,
        };
        assert!(matches!(
            db.store.apply(rec).await.unwrap(),
            ApplyOutcome::Applied { .. }
        ));
    }
    // Stopped, so the daemon has nothing to poll.
    db.store.remove_meeting(&id, domain::now()).await.unwrap();

    let mut settings = Settings::defaults().unwrap();
    settings.retention.events = Some(Duration::from_secs(30 * 86_400));
    settings.http.listen = "127.0.0.1:0".into();
    settings.validate().unwrap();
    let client = ChimeClient::new(
        simulator_sdk_config(&region()),
        ClientOptions::for_endpoint("http://127.0.0.1:9", 10.0, 10),
    );
    let daemon = roster_sync::app::Daemon::build(
        &settings,
        Some(db.store.clone()),
        CancellationToken::new(),
        roster_sync::app::DaemonOptions {
            client: Some(std::sync::Arc::new(client)),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let addr = daemon.http_addr().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        let text = metrics_text(addr).await;
        if text.contains("\nroster_sync_retention_deleted_events_total 2\n") {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the expired events were not counted: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        metrics.contains("# HELP roster_sync_retention_deleted_events_total "),
        "{metrics}"
    );
    assert_eq!(db.raw.scalar("SELECT count(*) FROM roster_events").await, 0);
    daemon.stop().await.unwrap();
    db.finish().await;
}
