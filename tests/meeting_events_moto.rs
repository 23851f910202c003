//! The meeting-events intake against an independent SQS server: moto (`moto[server]` from
//! PyPI), so the consumer is not only tested against our own simulator's idea of SQS.
//!
//! The server is `ROSTER_SYNC_MOTO_SERVER` (`.ci/run` installs it into `.venv`), else
//! `.venv/bin/moto_server`. Without it the test is skipped, and named in the run's `SKIPPED`
//! report (`common::skip`), unless `CI` is true: then it fails.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use chrono::Utc;
use roster_sync::app::{Daemon, DaemonOptions};
use roster_sync::chime::{ChimeClient, ClientOptions, simulator_sdk_config};
use roster_sync::config::Settings;
use roster_sync::domain::{self, AttendeeId, MeetingId, Region};
use roster_sync::lifecycle::{EventAttendee, EventType, MeetingEvent};
use roster_sync::sim::control::Driver;
use roster_sync::sim::{self, SimConfig};
use tokio_util::sync::CancellationToken;

use common::eventually;

fn region() -> Region {
    Region::parse("us-east-1").unwrap()
}

fn moto_server() -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    std::env::var_os("ROSTER_SYNC_MOTO_SERVER")
        .map(PathBuf::from)
        .or_else(|| Some(root.join(".venv/bin/moto_server")))
        .filter(|p| p.exists())
}

/// moto on a free port of 127.0.0.1, killed when dropped.
struct Moto {
    child: tokio::process::Child,
    endpoint: String,
}

async fn start_moto(path: &PathBuf) -> Moto {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = tokio::process::Command::new(path)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start moto_server");
    let endpoint = format!("http://127.0.0.1:{port}");
    eventually("moto_server listens", || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    Moto { child, endpoint }
}

fn body(t: EventType, meeting: &MeetingId, attendee: &AttendeeId) -> String {
    let now = Utc::now();
    MeetingEvent {
        id: uuid::Uuid::new_v4().to_string(),
        event_type: t,
        region: region(),
        time: now,
        occurred_at: now,
        meeting_id: meeting.clone(),
        external_meeting_id: None,
        media_region: Some("us-east-1".into()),
        attendee: Some(EventAttendee {
            attendee_id: attendee.clone(),
            external_user_id: None,
        }),
        network_type: None,
        capabilities: None,
        success: None,
    }
    .to_body("123456789012")
}

#[tokio::test]
async fn the_intake_consumes_events_from_moto_deleting_each_once_handled() {
    let Some(path) = moto_server() else {
        common::skip(
            "moto_server is missing (python3 -m venv .venv && .venv/bin/pip install 'moto[server]')",
        );
        return;
    };
    let mut moto = start_moto(&path).await;
    let sdk = simulator_sdk_config(&region());
    let sqs = aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::config::Builder::from(&sdk)
            .endpoint_url(&moto.endpoint)
            .build(),
    );
    let queue_url = sqs
        .create_queue()
        .queue_name("chime-events")
        .send()
        .await
        .expect("CreateQueue on moto")
        .queue_url
        .expect("a QueueUrl");

    let chime = sim::start(
        "127.0.0.1:0".parse().unwrap(),
        SimConfig {
            exempt_control: true,
            ..SimConfig::default()
        },
    )
    .await
    .unwrap();
    let client = || {
        ChimeClient::new(
            simulator_sdk_config(&region()),
            ClientOptions::for_endpoint(&chime.endpoint_url(), 1000.0, 1000),
        )
    };
    let driver = Driver::new(client().sdk_client(&region()));
    let id = driver.create_meeting("moto", "us-east-1").await.unwrap();
    let first = driver
        .add_attendees(&id, [("first".to_owned(), None)])
        .await
        .unwrap();

    let db = common::sqlite_db().await;
    db.store
        .add_meeting(&id, &region(), None, domain::now(), false)
        .await
        .unwrap();
    let mut s = Settings::defaults().unwrap();
    s.database.url = db.url.clone();
    s.http.listen.clear();
    s.poll.interval = Duration::from_secs(600);
    s.poll.max_interval = Duration::from_secs(600);
    s.poll.failure_backoff_cap = Duration::from_secs(600);
    s.shutdown.grace = Duration::from_secs(5);
    s.meeting_events.queue_url = queue_url.clone();
    s.meeting_events.endpoint_url = moto.endpoint.clone();
    s.meeting_events.wait = Duration::from_secs(1);
    let daemon = Daemon::build(
        &s,
        Some(db.store.clone()),
        CancellationToken::new(),
        DaemonOptions {
            client: Some(Arc::new(client())),
            ..DaemonOptions::default()
        },
    )
    .await
    .unwrap();

    let event = body(EventType::AttendeeAdded, &id, &first[0].attendee_id);
    for text in [event.as_str(), event.as_str(), "{not json"] {
        sqs.send_message()
            .queue_url(&queue_url)
            .message_body(text)
            .send()
            .await
            .expect("SendMessage on moto");
    }
    eventually("the hint poll's join", || async {
        db.store.events_since(0, 100).await.unwrap().len() == 1
    })
    .await;
    let later = driver
        .add_attendees(&id, [("second".to_owned(), None)])
        .await
        .unwrap();
    sqs.send_message()
        .queue_url(&queue_url)
        .message_body(body(EventType::AttendeeAdded, &id, &later[0].attendee_id))
        .send()
        .await
        .unwrap();
    eventually("the second join", || async {
        db.store.events_since(0, 100).await.unwrap().len() == 2
    })
    .await;
    eventually("every message deleted from moto's queue", || async {
        let attrs = sqs
            .get_queue_attributes()
            .queue_url(&queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .unwrap();
        let count = |k: QueueAttributeName| {
            attrs
                .attributes()
                .and_then(|a| a.get(&k))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(u64::MAX)
        };
        count(QueueAttributeName::ApproximateNumberOfMessages) == 0
            && count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible) == 0
    })
    .await;
    assert_eq!(
        db.store.events_since(0, 100).await.unwrap().len(),
        2,
        "the duplicate or the bad body recorded something"
    );
    daemon.stop().await.unwrap();
    db.finish().await;
    let _ = moto.child.kill().await;
}
