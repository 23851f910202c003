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
