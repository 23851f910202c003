//! The simulator's SQS queue through the real aws-sdk-sqs client: every operation the
//! meeting-events intake uses, long polling, visibility timeouts and redelivery, batches, and
//! the errors a missing queue or a bad request gets.

use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::ProvideErrorMetadata as _;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageSystemAttributeName, QueueAttributeName, SendMessageBatchRequestEntry,
};
use roster_sync::domain::Region;
use roster_sync::sim::{self, SimConfig, SimHandle};

/// Generous: only reached when something is broken.
const DEADLINE: Duration = Duration::from_secs(30);

async fn sim_and_sqs() -> (SimHandle, Client) {
    let sim = sim::start(
        "127.0.0.1:0".parse().expect("an address"),
        SimConfig::default(),
    )
    .await
    .expect("start the simulator");
    let region = Region::parse("us-east-1").expect("a region");
    let sdk = roster_sync::chime::simulator_sdk_config(&region);
    let conf = aws_sdk_sqs::config::Builder::from(&sdk)
        .endpoint_url(sim.endpoint_url())
        .build();
    (sim, Client::from_conf(conf))
}

async fn queue(sqs: &Client, name: &str) -> String {
    sqs.create_queue()
        .queue_name(name)
        .send()
        .await
        .expect("CreateQueue")
        .queue_url
        .expect("a QueueUrl")
}

async fn send(sqs: &Client, url: &str, body: &str) -> String {
    sqs.send_message()
        .queue_url(url)
        .message_body(body)
        .send()
        .await
        .expect("SendMessage")
        .message_id
        .expect("a MessageId")
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let until = tokio::time::Instant::now() + DEADLINE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < until,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn create_queue_and_get_queue_url_answer_the_listener_url() {
    let (sim, sqs) = sim_and_sqs().await;
    let url = queue(&sqs, "events").await;
    assert_eq!(url, format!("{}/123456789012/events", sim.endpoint_url()));
    let again = queue(&sqs, "events").await;
    assert_eq!(
        again, url,
        "CreateQueue of an existing queue answers its URL"
    );
    let got = sqs
        .get_queue_url()
        .queue_name("events")
        .send()
        .await
        .expect("GetQueueUrl");
    assert_eq!(got.queue_url.as_deref(), Some(url.as_str()));
    assert_eq!(sim.queue_url("events"), Some(url));
}

#[tokio::test]
async fn a_sent_message_is_received_with_its_id_md5_and_receive_count_then_deleted() {
    let (sim, sqs) = sim_and_sqs().await;
    let url = queue(&sqs, "q").await;
    let sent = sqs
        .send_message()
        .queue_url(&url)
        .message_body("hello")
        .send()
        .await
        .expect("SendMessage");
    assert_eq!(
        sent.md5_of_message_body.as_deref(),
        Some("5d41402abc4b2a76b9719d911017c592")
    );
    let got = sqs
        .receive_message()
        .queue_url(&url)
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .send()
        .await
        .expect("ReceiveMessage");
    let msgs = got.messages.expect("one message");
    assert_eq!(msgs.len(), 1);
    let m = &msgs[0];
    assert_eq!(m.message_id, sent.message_id);
    assert_eq!(m.body.as_deref(), Some("hello"));
    assert_eq!(
        m.md5_of_body.as_deref(),
        Some("5d41402abc4b2a76b9719d911017c592")
    );
    let attrs = m.attributes.as_ref().expect("attributes");
    assert_eq!(
        attrs
            .get(&MessageSystemAttributeName::ApproximateReceiveCount)
            .map(String::as_str),
        Some("1")
    );
    assert!(attrs.contains_key(&MessageSystemAttributeName::SentTimestamp));
    sqs.delete_message()
        .queue_url(&url)
        .receipt_handle(m.receipt_handle.clone().expect("a receipt handle"))
        .send()
        .await
        .expect("DeleteMessage");
    let counts = sim.queue_counts("q").expect("the queue");
    assert_eq!((counts.visible, counts.in_flight), (0, 0));
}

#[tokio::test]
async fn a_long_poll_wakes_when_a_message_arrives() {
    let (sim, sqs) = sim_and_sqs().await;
    let url = queue(&sqs, "q").await;
    let receiver = {
        let (sqs, url) = (sqs.clone(), url.clone());
        tokio::spawn(async move {
            sqs.receive_message()
                .queue_url(url)
                .wait_time_seconds(20)
                .send()
                .await
        })
    };
    wait_for("the receive to wait", || sim.waiting_receives() == 1).await;
    send(&sqs, &url, "wake up").await;
    let got = tokio::time::timeout(DEADLINE, receiver)
        .await
        .expect("the long poll answered")
        .expect("the task ran")
        .expect("ReceiveMessage");
    let msgs = got.messages.unwrap_or_default();
    assert_eq!(msgs.len(), 1, "the waiting receive got the message");
    assert_eq!(msgs[0].body.as_deref(), Some("wake up"));
    assert_eq!(sim.waiting_receives(), 0);
}

#[tokio::test]
async fn a_message_not_deleted_comes_back_after_its_visibility_timeout() {
    let (_sim, sqs) = sim_and_sqs().await;
    let url = queue(&sqs, "q").await;
    let id = send(&sqs, &url, "again").await;
    let first = sqs
        .receive_message()
        .queue_url(&url)
        .visibility_timeout(1)
        .send()
        .await
        .expect("ReceiveMessage")
        .messages
        .expect("the message");
    let empty = sqs
        .receive_message()
        .queue_url(&url)
        .send()
        .await
        .expect("ReceiveMessage");
    assert!(
        empty.messages.unwrap_or_default().is_empty(),
        "in flight, so not received twice at once"
    );
    // The long poll is woken when the message becomes visible again.
    let second = sqs
        .receive_message()
        .queue_url(&url)
        .wait_time_seconds(20)
        .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
        .send()
        .await
        .expect("ReceiveMessage")
        .messages
        .expect("the message, back");
    assert_eq!(second[0].message_id.as_deref(), Some(id.as_str()));
    assert_ne!(second[0].receipt_handle, first[0].receipt_handle);
    assert_eq!(
        second[0]
            .attributes
            .as_ref()
            .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
            .map(String::as_str),
        Some("2")
    );
}

#[tokio::test]
async fn change_message_visibility_returns_a_message_early_and_batches_do_too() {
    let (_sim, sqs) = sim_and_sqs().await;
    let url = queue(&sqs, "q").await;
    for body in ["a", "b", "c"] {
        send(&sqs, &url, body).await;
    }
    let got = sqs
        .receive_message()
        .queue_url(&url)
        .max_number_of_messages(10)
        .visibility_timeout(600)
        .send()
        .await
        .expect("ReceiveMessage")
        .messages
        .expect("messages");
    assert_eq!(got.len(), 3);
    sqs.change_message_visibility()
        .queue_url(&url)
        .receipt_handle(got[0].receipt_handle.clone().expect("handle"))
        .visibility_timeout(0)
        .send()
        .await
        .expect("ChangeMessageVisibility");
    let mut batch = sqs.change_message_visibility_batch().queue_url(&url);
    for (i, m) in got[1..].iter().enumerate() {
        batch = batch.entries(
            ChangeMessageVisibilityBatchRequestEntry::builder()
                .id(format!("e{i}"))
                .receipt_handle(m.receipt_handle.clone().expect("handle"))
                .visibility_timeout(0)
                .build()
                .expect("entry"),
        );
    }
    batch = batch.entries(
        ChangeMessageVisibilityBatchRequestEntry::builder()
            .id("bad")
            .receipt_handle("not-a-handle")
            .visibility_timeout(0)
            .build()
            .expect("entry"),
    );
    let out = batch.send().await.expect("ChangeMessageVisibilityBatch");
    assert_eq!(out.successful.len(), 2);
    assert_eq!(out.failed.len(), 1);
    assert_eq!(out.failed[0].id, "bad");
    assert_eq!(out.failed[0].code, "ReceiptHandleIsInvalid");
    let again = sqs
        .receive_message()
        .queue_url(&url)
        .max_number_of_messages(10)
        .send()
        .await
        .expect("ReceiveMessage")
        .messages
        .unwrap_or_default();
    assert_eq!(again.len(), 3, "all three visible again at once");
}

#[tokio::test]
async fn send_and_delete_batches_report_each_entry() {
    let (sim, sqs) = sim_and_sqs().await;
    let url = queue(&sqs, "q").await;
    let mut batch = sqs.send_message_batch().queue_url(&url);
    for i in 0..10 {
        batch = batch.entries(
            SendMessageBatchRequestEntry::builder()
                .id(format!("m{i}"))
                .message_body(format!("body {i}"))
                .build()
                .expect("entry"),
        );
    }
    let sent = batch.send().await.expect("SendMessageBatch");
    assert_eq!(sent.successful.len(), 10);
    assert!(sent.failed.is_empty());
    let got = sqs
        .receive_message()
        .queue_url(&url)
        .max_number_of_messages(10)
        .send()
        .await
        .expect("ReceiveMessage")
        .messages
        .expect("messages");
    assert_eq!(got.len(), 10);
    let mut delete = sqs.delete_message_batch().queue_url(&url);
    for (i, m) in got.iter().enumerate() {
        delete = delete.entries(
            DeleteMessageBatchRequestEntry::builder()
                .id(format!("d{i}"))
                .receipt_handle(m.receipt_handle.clone().expect("handle"))
                .build()
                .expect("entry"),
        );
    }
    let out = delete.send().await.expect("DeleteMessageBatch");
    assert_eq!(out.successful.len(), 10);
    assert!(out.failed.is_empty());
    assert_eq!(sim.queue_counts("q"), Some(Default::default()));

    let err = sqs
        .delete_message_batch()
        .queue_url(&url)
        .send()
        .await
        .expect_err("an empty batch is refused");
    assert_eq!(err.code(), Some("AWS.SimpleQueueService.EmptyBatchRequest"));
}

#[tokio::test]
async fn get_queue_attributes_counts_messages_and_purge_queue_empties_it() {
    let (_sim, sqs) = sim_and_sqs().await;
    let url = queue(&sqs, "q").await;
    for body in ["a", "b", "c"] {
        send(&sqs, &url, body).await;
    }
    sqs.receive_message()
        .queue_url(&url)
        .send()
        .await
        .expect("ReceiveMessage");
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .expect("GetQueueAttributes")
        .attributes
        .expect("attributes");
    let get = |n: QueueAttributeName| attrs.get(&n).map(String::as_str);
    assert_eq!(
        get(QueueAttributeName::ApproximateNumberOfMessages),
        Some("2")
    );
    assert_eq!(
        get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        Some("1")
    );
    assert_eq!(get(QueueAttributeName::VisibilityTimeout), Some("30"));
    assert_eq!(
        get(QueueAttributeName::QueueArn),
        Some("arn:aws:sqs:us-east-1:123456789012:q")
    );
    sqs.purge_queue()
        .queue_url(&url)
        .send()
        .await
        .expect("PurgeQueue");
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await
        .expect("GetQueueAttributes")
        .attributes
        .expect("attributes");
    assert_eq!(
        attrs
            .get(&QueueAttributeName::ApproximateNumberOfMessages)
            .map(String::as_str),
        Some("0")
    );
}

#[tokio::test]
async fn a_missing_queue_is_queue_does_not_exist_for_every_operation() {
    let (sim, sqs) = sim_and_sqs().await;
    let err = sqs
        .get_queue_url()
        .queue_name("nope")
        .send()
        .await
        .expect_err("no such queue");
    assert!(
        err.as_service_error()
            .is_some_and(|e| e.is_queue_does_not_exist()),
        "{err:?}"
    );
    let url = format!("{}/123456789012/nope", sim.endpoint_url());
    let err = sqs
        .receive_message()
        .queue_url(&url)
        .send()
        .await
        .expect_err("no such queue");
    assert!(
        err.as_service_error()
            .is_some_and(|e| e.is_queue_does_not_exist()),
        "{err:?}"
    );
    assert_eq!(err.code(), Some("AWS.SimpleQueueService.NonExistentQueue"));
    let err = sqs
        .delete_message()
        .queue_url(&url)
        .receipt_handle("x")
        .send()
        .await
        .expect_err("no such queue");
    assert!(
        err.as_service_error()
            .is_some_and(|e| e.is_queue_does_not_exist()),
        "{err:?}"
    );
    let err = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .send()
        .await
        .expect_err("no such queue");
    assert!(
        err.as_service_error()
            .is_some_and(|e| e.is_queue_does_not_exist()),
        "{err:?}"
    );
}

#[tokio::test]
async fn bad_parameters_and_handles_are_refused_with_the_sqs_codes() {
    let (_sim, sqs) = sim_and_sqs().await;
    let url = queue(&sqs, "q").await;
    let err = sqs
        .receive_message()
        .queue_url(&url)
        .max_number_of_messages(11)
        .send()
        .await
        .expect_err("11 is above the limit");
    assert_eq!(err.code(), Some("InvalidParameterValue"));
    let err = sqs
        .receive_message()
        .queue_url(&url)
        .wait_time_seconds(21)
        .send()
        .await
        .expect_err("21 s is above the limit");
    assert_eq!(err.code(), Some("InvalidParameterValue"));
    let err = sqs
        .delete_message()
        .queue_url(&url)
        .receipt_handle("garbage")
        .send()
        .await
        .expect_err("not a receipt handle");
    assert!(
        err.as_service_error()
            .is_some_and(|e| e.is_receipt_handle_is_invalid()),
        "{err:?}"
    );
    send(&sqs, &url, "a").await;
    let m = sqs
        .receive_message()
        .queue_url(&url)
        .send()
        .await
        .expect("ReceiveMessage")
        .messages
        .expect("the message");
    let handle = m[0].receipt_handle.clone().expect("handle");
    sqs.delete_message()
        .queue_url(&url)
        .receipt_handle(&handle)
        .send()
        .await
        .expect("DeleteMessage");
    let err = sqs
        .change_message_visibility()
        .queue_url(&url)
        .receipt_handle(&handle)
        .visibility_timeout(0)
        .send()
        .await
        .expect_err("deleted, so not in flight");
    assert!(
        err.as_service_error()
            .is_some_and(|e| e.is_message_not_inflight()),
        "{err:?}"
    );
    let err = sqs
        .create_queue()
        .queue_name("bad.name!")
        .send()
        .await
        .expect_err("not a queue name");
    assert_eq!(err.code(), Some("InvalidParameterValue"));
}

mod emission {
    use super::*;
    use roster_sync::lifecycle::{EventType, MeetingEvent, parse_body};
    use roster_sync::sim::control::Driver;
    use roster_sync::sim::events::{EventFaults, EventsConfig, EventsFormat, Poison};
    use roster_sync::sim::presence::{EndReason, PresenceAction};

    async fn sim_with_events(cfg: EventsConfig) -> (SimHandle, Client, Driver, String) {
        let (sim, sqs) = sim_and_sqs().await;
        let queue = cfg.queue.clone();
        sim.set_events(Some(cfg)).expect("events on");
        let region = Region::parse("eu-central-1").expect("a region");
        let options =
            roster_sync::chime::ClientOptions::for_endpoint(&sim.endpoint_url(), 1000.0, 1000);
        let chime = roster_sync::chime::ChimeClient::new(
            roster_sync::chime::simulator_sdk_config(&region),
            options,
        );
        let driver = Driver::new(chime.sdk_client(&region));
        let url = sim.queue_url(&queue).expect("the events queue exists");
        (sim, sqs, driver, url)
    }

    /// Receives and deletes every message until `n` events have arrived.
    async fn drain(sqs: &Client, url: &str, n: usize) -> Vec<MeetingEvent> {
        let mut out = Vec::new();
        let until = tokio::time::Instant::now() + DEADLINE;
        while out.len() < n {
            assert!(
                tokio::time::Instant::now() < until,
                "only {} of {n} events arrived",
                out.len()
            );
            let got = sqs
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .send()
                .await
                .expect("ReceiveMessage");
            for m in got.messages.unwrap_or_default() {
                let body = m.body.as_deref().unwrap_or_default();
                out.push(parse_body(body, chrono::Utc::now()).expect("a valid lifecycle event"));
                sqs.delete_message()
                    .queue_url(url)
                    .receipt_handle(m.receipt_handle.unwrap_or_default())
                    .send()
                    .await
                    .expect("DeleteMessage");
            }
        }
        out
    }

    fn types(events: &[MeetingEvent]) -> Vec<EventType> {
        let mut t: Vec<_> = events.iter().map(|e| e.event_type).collect();
        t.sort();
        t
    }

    #[tokio::test]
    async fn chime_operations_emit_their_lifecycle_events_to_the_queue() {
        let (sim, sqs, driver, url) = sim_with_events(EventsConfig::to_queue("events")).await;
        let meeting = driver
            .create_meeting("standup", "us-east-1")
            .await
            .expect("meeting");
        let events = drain(&sqs, &url, 1).await;
        assert_eq!(events[0].event_type, EventType::MeetingStarted);
        assert_eq!(events[0].meeting_id, meeting);
        assert_eq!(
            events[0].region.as_str(),
            "eu-central-1",
            "the control region signed for"
        );
        assert_eq!(events[0].media_region.as_deref(), Some("us-east-1"));
        assert_eq!(events[0].external_meeting_id.as_deref(), Some("standup"));

        let created = driver
            .add_attendees(
                &meeting,
                [("alice".to_owned(), None), ("bob".to_owned(), None)],
            )
            .await
            .expect("attendees");
        let added = drain(&sqs, &url, 2).await;
        assert_eq!(types(&added), vec![EventType::AttendeeAdded; 2]);
        let alice = &created[0].attendee_id;
        let ev = added
            .iter()
            .find(|e| e.attendee.as_ref().map(|a| &a.attendee_id) == Some(alice))
            .expect("alice's AttendeeAdded");
        assert_eq!(
            ev.attendee
                .as_ref()
                .and_then(|a| a.external_user_id.as_ref())
                .map(|u| u.as_str()),
            Some("alice")
        );
        // An existing ExternalUserId returns the existing attendee and adds nobody.
        driver
            .add_attendees(&meeting, [("alice".to_owned(), None)])
            .await
            .expect("idempotent");
        driver
            .set_capabilities(&meeting, alice, roster_sync::sim::churn::LISTENER)
            .await
            .expect("capabilities");
        driver
            .delete_attendee(&meeting, alice)
            .await
            .expect("delete");
        driver.delete_meeting(&meeting).await.expect("end");
        let rest = drain(&sqs, &url, 3).await;
        assert_eq!(
            types(&rest),
            vec![
                EventType::MeetingEnded,
                EventType::AttendeeDeleted,
                EventType::AttendeeCapabilitiesUpdated,
            ]
        );
        let caps = rest
            .iter()
            .find(|e| e.event_type == EventType::AttendeeCapabilitiesUpdated)
            .expect("the capabilities event");
        assert_eq!(caps.capabilities, Some(roster_sync::sim::churn::LISTENER));
        assert_eq!(caps.success, Some(true));
        let ids: std::collections::HashSet<_> = added
            .iter()
            .chain(&rest)
            .chain(&events)
            .map(|e| e.id.clone())
            .collect();
        assert_eq!(ids.len(), 6, "a fresh envelope id per event");
        let stats = sim.event_stats();
        assert_eq!((stats.emitted, stats.messages, stats.lost), (6, 6, 0));
        assert_eq!(sim.queue_counts("events"), Some(Default::default()));
    }

    #[tokio::test]
    async fn sns_format_wraps_each_event_in_a_notification() {
        let cfg = EventsConfig {
            format: EventsFormat::Sns,
            ..EventsConfig::to_queue("sns-events")
        };
        let (_sim, sqs, driver, url) = sim_with_events(cfg).await;
        driver
            .create_meeting("mtg", "us-east-1")
            .await
            .expect("meeting");
        let got = sqs
            .receive_message()
            .queue_url(&url)
            .wait_time_seconds(5)
            .send()
            .await
            .expect("ReceiveMessage")
            .messages
            .expect("the event");
        let body: serde_json::Value =
            serde_json::from_str(got[0].body.as_deref().unwrap_or_default()).expect("JSON");
        assert_eq!(body["Type"], "Notification");
        let ev = parse_body(
            got[0].body.as_deref().unwrap_or_default(),
            chrono::Utc::now(),
        )
        .expect("the wrapped event parses");
        assert_eq!(ev.event_type, EventType::MeetingStarted);
    }

    #[tokio::test]
    async fn lost_events_never_arrive_and_duplicates_share_their_envelope_id() {
        let cfg = EventsConfig {
            faults: EventFaults {
                loss: 1.0,
                ..EventFaults::default()
            },
            ..EventsConfig::to_queue("faulty")
        };
        let (sim, sqs, driver, url) = sim_with_events(cfg).await;
        let meeting = driver
            .create_meeting("mtg", "us-east-1")
            .await
            .expect("meeting");
        assert_eq!(sim.event_stats().lost, 1);
        assert_eq!(sim.queue_counts("faulty"), Some(Default::default()));
        sim.set_event_faults(EventFaults {
            loss: 0.0,
            duplicate: 1.0,
            max_delay: Duration::from_millis(200),
        })
        .expect("faults");
        driver
            .add_attendees(&meeting, [("ann".to_owned(), None)])
            .await
            .expect("attendee");
        let copies = drain(&sqs, &url, 2).await;
        assert_eq!(copies[0].id, copies[1].id, "a duplicate is the same event");
        assert_eq!(sim.event_stats().duplicated, 1);
    }

    #[tokio::test]
    async fn poison_messages_are_planted_on_the_events_queue() {
        let (sim, sqs, _driver, url) = sim_with_events(EventsConfig::to_queue("events")).await;
        sim.inject_poison(&Poison::NotJson).expect("poison");
        sim.inject_poison(&Poison::BrokenSns).expect("poison");
        let got = sqs
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(10)
            .send()
            .await
            .expect("ReceiveMessage")
            .messages
            .expect("two messages");
        assert_eq!(got.len(), 2);
        for m in got {
            assert!(parse_body(m.body.as_deref().unwrap_or_default(), chrono::Utc::now()).is_err());
        }
        sim.set_events(None).expect("off");
        assert!(
            sim.inject_poison(&Poison::NotJson).is_err(),
            "no queue to plant on"
        );
    }

    #[tokio::test]
    async fn presence_controls_emit_events_and_the_truth_records_them() {
        let (sim, sqs, driver, url) = sim_with_events(EventsConfig::to_queue("events")).await;
        let meeting = driver
            .create_meeting("mtg", "us-east-1")
            .await
            .expect("meeting");
        let a = driver
            .add_attendees(&meeting, [("alice".to_owned(), None)])
            .await
            .expect("attendee")
            .remove(0)
            .attendee_id;
        drain(&sqs, &url, 2).await;
        for action in [
            PresenceAction::Join,
            PresenceAction::VideoStart,
            PresenceAction::ContentJoin,
            PresenceAction::Drop,
            PresenceAction::Join,
        ] {
            sim.presence(&meeting, &a, action, None, None)
                .expect("control");
        }
        assert!(
            sim.presence(&meeting, &a, PresenceAction::Join, None, None)
                .is_err(),
            "joined already"
        );
        let events = drain(&sqs, &url, 7).await;
        assert_eq!(
            types(&events),
            vec![
                EventType::AttendeeJoined,
                EventType::AttendeeJoined,
                EventType::AttendeeDropped,
                EventType::AttendeeVideoStarted,
                EventType::AttendeeVideoStopped,
                EventType::AttendeeContentJoined,
                EventType::AttendeeContentDropped,
            ]
        );
        for e in &events {
            assert_eq!(
                e.network_type.is_some(),
                e.event_type.has_network_type(),
                "{:?}",
                e.event_type
            );
        }
        driver.delete_meeting(&meeting).await.expect("end");
        let truth = sim.presence_truth(&meeting).expect("truth");
        let s = &truth.attendees[0].sessions;
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].end_reason, Some(EndReason::Dropped));
        assert_eq!(s[1].end_reason, Some(EndReason::MeetingEnded));
        assert!(truth.ended_at.is_some());
    }

    #[tokio::test]
    async fn the_driver_drives_presence_over_http_and_reads_the_truth() {
        let (sim, sqs, driver, url) = sim_with_events(EventsConfig::to_queue("events")).await;
        let driver = driver.with_endpoint(&sim.endpoint_url());
        let meeting = driver
            .create_meeting("mtg", "us-east-1")
            .await
            .expect("meeting");
        let a = driver
            .add_attendees(&meeting, [("alice".to_owned(), None)])
            .await
            .expect("attendee")
            .remove(0)
            .attendee_id;
        driver
            .presence(&meeting, &a, PresenceAction::Join, Some("Pstn"))
            .await
            .expect("join");
        driver.hand_off(&meeting, &a).await.expect("hand-off");
        let err = driver.join(&meeting, &a).await.expect_err("joined already");
        assert!(err.to_string().contains("already connected"), "{err:#}");
        driver.leave(&meeting, &a).await.expect("leave");
        let events = drain(&sqs, &url, 5).await;
        let joined = events
            .iter()
            .find(|e| e.event_type == EventType::AttendeeJoined)
            .expect("joined");
        assert_eq!(joined.network_type.as_deref(), Some("Pstn"));
        assert!(
            events
                .iter()
                .any(|e| e.event_type == EventType::AttendeeAuthorized)
        );
        let truth = driver.presence_truth(&meeting).await.expect("truth");
        assert_eq!(
            truth,
            sim.presence_truth(&meeting).expect("truth in-process")
        );
        let s = &truth.attendees[0].sessions;
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].end_reason, Some(EndReason::Left));
        assert_eq!(truth.attendees[0].handoffs.len(), 1);
    }
}
