//! An SQS-compatible standard queue on the simulator's listener, for the meeting-events
//! intake: the awsJson1_0 protocol (`POST /`, `X-Amz-Target: AmazonSQS.<Operation>`,
//! `Content-Type: application/x-amz-json-1.0`) as aws-sdk-sqs and boto3 speak it, errors as
//! a JSON `__type` (`com.amazonaws.sqs#QueueDoesNotExist`) plus the `x-amzn-query-error`
//! header (`AWS.SimpleQueueService.NonExistentQueue;Sender`) that both clients read.
//!
//! Operations: CreateQueue, GetQueueUrl, DeleteQueue, SendMessage(Batch), ReceiveMessage
//! (long polling up to 20 s, woken by a send or by a message becoming visible, never by
//! polling), DeleteMessage(Batch), ChangeMessageVisibility(Batch), GetQueueAttributes,
//! PurgeQueue. Standard-queue semantics: at least once, no order promised; a message not
//! deleted within its visibility timeout comes back with a higher `ApproximateReceiveCount`
//! and a new receipt handle. Queue URLs are `http://<listen address>/<account>/<name>`.
//!
//! Not simulated: FIFO queues, message attributes (accepted and dropped), dead-letter
//! redrive, retention expiry, tags, SSE. Like the Chime side it only checks that a SigV4
//! `Authorization` header is present and never logs a message body.

mod queue;
mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::time::Instant;

pub use queue::QueueCounts;
use queue::{Queue, Receipt, VisibilityError};

use super::lock;

/// The account id in queue URLs and ARNs (the same one the Chime side's ARNs use).
pub const ACCOUNT: &str = "123456789012";

/// The region in queue ARNs.
const REGION: &str = "us-east-1";

/// The header that routes a request here instead of to the Chime side.
pub(crate) const TARGET_HEADER: &str = "x-amz-target";
const TARGET_PREFIX: &str = "AmazonSQS.";
const CONTENT_TYPE: &str = "application/x-amz-json-1.0";

/// SQS's largest message body.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// SQS's longest long poll.
const MAX_WAIT: Duration = Duration::from_secs(20);
const MAX_BATCH: usize = 10;

/// A refused SQS request: the model's error shape, the query-compatible code and whether
/// the sender is at fault, as real SQS reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SqsError {
    status: StatusCode,
    /// `__type`, fully qualified (`com.amazonaws.sqs#QueueDoesNotExist`).
    error_type: String,
    /// `x-amzn-query-error` before the `;` (`AWS.SimpleQueueService.NonExistentQueue`);
    /// `None` sends no such header.
    query_code: Option<&'static str>,
    message: String,
}

impl SqsError {
    fn sqs(shape: &str, query_code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            error_type: format!("com.amazonaws.sqs#{shape}"),
            query_code: Some(query_code),
            message: message.into(),
        }
    }

    fn no_queue() -> Self {
        Self::sqs(
            "QueueDoesNotExist",
            "AWS.SimpleQueueService.NonExistentQueue",
            "The specified queue does not exist.",
        )
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::sqs(
            "InvalidParameterValueException",
            "InvalidParameterValue",
            message,
        )
    }

    fn missing(member: &str) -> Self {
        Self::sqs(
            "MissingParameter",
            "MissingParameter",
            format!("The request must contain the parameter {member}."),
        )
    }

    fn coral(status: StatusCode, shape: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            error_type: format!("com.amazon.coral.service#{shape}"),
            query_code: None,
            message: message.into(),
        }
    }

    /// The code the clients report (`ProvideErrorMetadata::code`).
    fn code(&self) -> &str {
        self.query_code.unwrap_or_else(|| {
            self.error_type
                .rsplit('#')
                .next()
                .unwrap_or(&self.error_type)
        })
    }

    fn into_response(self, request_id: &str) -> Response {
        let body = wire::ErrorOut {
            error_type: self.error_type.clone(),
            message: &self.message,
        };
        let mut resp = json(self.status, &body);
        if let Some(code) = self.query_code {
            let fault = if self.status.is_server_error() {
                "Receiver"
            } else {
                "Sender"
            };
            if let Ok(v) = HeaderValue::from_str(&format!("{code};{fault}")) {
                resp.headers_mut().insert("x-amzn-query-error", v);
            }
        }
        if let Ok(v) = HeaderValue::from_str(request_id) {
            resp.headers_mut().insert("x-amzn-RequestId", v);
        }
        resp
    }
}

type SqsResult<T = Response> = Result<T, SqsError>;

struct Slot {
    queue: Queue,
    /// Woken on every send, visibility change and purge, so long polls re-check.
    arrived: Arc<Notify>,
}

/// The simulator's queues. Shared by the HTTP side and the in-process emitters.
pub(crate) struct Sqs {
    /// `http://host:port`, the start of every queue URL.
    base_url: String,
    queues: Mutex<HashMap<String, Slot>>,
    nonces: Mutex<StdRng>,
    /// ReceiveMessage requests waiting in a long poll now (tests wait for one).
    waiting: AtomicUsize,
}

impl Sqs {
    pub(crate) fn new(base_url: String, seed: Option<u64>) -> Self {
        let nonces = match seed {
            Some(s) => StdRng::seed_from_u64(s.wrapping_add(7)),
            None => StdRng::from_os_rng(),
        };
        Self {
            base_url,
            queues: Mutex::new(HashMap::new()),
            nonces: Mutex::new(nonces),
            waiting: AtomicUsize::new(0),
        }
    }

    /// The URL of queue `name`, whether or not it exists.
    pub(crate) fn url(&self, name: &str) -> String {
        format!("{}/{ACCOUNT}/{name}", self.base_url)
    }

    /// Creates `name` with default attributes if it does not exist; answers its URL.
    ///
    /// # Errors
    /// A name SQS would refuse.
    pub(crate) fn ensure(&self, name: &str) -> SqsResult<String> {
        check_queue_name(name)?;
        lock(&self.queues)
            .entry(name.to_owned())
            .or_insert_with(|| Slot {
                queue: Queue::new(HashMap::new(), crate::domain::now().timestamp()),
                arrived: Arc::new(Notify::new()),
            });
        Ok(self.url(name))
    }

    pub(crate) fn exists(&self, name: &str) -> bool {
        lock(&self.queues).contains_key(name)
    }

    /// Sends a body to queue `name`, receivable after `delay` (the queue's own when
    /// `None`). Answers the message id.
    ///
    /// # Errors
    /// The queue does not exist.
    pub(crate) fn send(
        &self,
        name: &str,
        body: String,
        delay: Option<Duration>,
    ) -> SqsResult<String> {
        let mut queues = lock(&self.queues);
        let slot = queues.get_mut(name).ok_or_else(SqsError::no_queue)?;
        let now_ms = crate::domain::now().timestamp_millis();
        let msg = slot.queue.send(body, delay, Instant::now(), now_ms);
        slot.arrived.notify_waiters();
        Ok(msg.id.to_string())
    }

    /// ReceiveMessage requests waiting in a long poll now.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    pub(crate) fn counts(&self, name: &str) -> Option<QueueCounts> {
        lock(&self.queues)
            .get(name)
            .map(|s| s.queue.counts(Instant::now()))
    }

    /// Answers one SQS request; `target` is the `X-Amz-Target` header's value.
    pub(crate) async fn serve(
        &self,
        target: &str,
        headers: &HeaderMap,
        body: Body,
        request_id: &str,
    ) -> Response {
        let result = self.dispatch(target, headers, body).await;
        match result {
            Ok(mut resp) => {
                if let Ok(v) = HeaderValue::from_str(request_id) {
                    resp.headers_mut().insert("x-amzn-RequestId", v);
                }
                resp
            }
            Err(e) => {
                tracing::debug!(
                    target_op = target,
                    code = e.code(),
                    status = e.status.as_u16(),
                    %request_id,
                    "sqs simulator refused a request"
                );
                e.into_response(request_id)
            }
        }
    }

    async fn dispatch(&self, target: &str, headers: &HeaderMap, body: Body) -> SqsResult {
        let signed = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("AWS4-HMAC-SHA256"));
        if !signed {
            return Err(SqsError::coral(
                StatusCode::FORBIDDEN,
                "MissingAuthenticationTokenException",
                "Missing Authentication Token",
            ));
        }
        let op = target.strip_prefix(TARGET_PREFIX).unwrap_or_default();
        match op {
            "CreateQueue" => self.create_queue(read(body).await?),
            "GetQueueUrl" => self.get_queue_url(read(body).await?),
            "DeleteQueue" => self.delete_queue(read(body).await?),
            "SendMessage" => self.send_message(read(body).await?),
            "SendMessageBatch" => self.send_message_batch(read(body).await?),
            "ReceiveMessage" => self.receive_message(read(body).await?).await,
            "DeleteMessage" => self.delete_message(read(body).await?),
            "DeleteMessageBatch" => self.delete_message_batch(read(body).await?),
            "ChangeMessageVisibility" => self.change_visibility(read(body).await?),
            "ChangeMessageVisibilityBatch" => self.change_visibility_batch(read(body).await?),
            "GetQueueAttributes" => self.get_queue_attributes(read(body).await?),
            "PurgeQueue" => self.purge_queue(read(body).await?),
            _ => Err(SqsError::coral(
                StatusCode::BAD_REQUEST,
                "UnknownOperationException",
                format!("The operation {target:?} is not simulated"),
            )),
        }
    }

    /// The queue name a QueueUrl names (any host: clients may reach the listener by
    /// another name); `QueueDoesNotExist` for another account or no such queue.
    fn resolve(&self, url: Option<&str>) -> SqsResult<String> {
        let url = url.ok_or_else(|| SqsError::missing("QueueUrl"))?;
        let path = url
            .split_once("://")
            .map_or(url, |(_, rest)| rest.split_once('/').map_or("", |(_, p)| p));
        let mut segs = path.trim_end_matches('/').rsplit('/');
        let (Some(name), Some(account)) = (segs.next(), segs.next()) else {
            return Err(SqsError::sqs(
                "InvalidAddress",
                "InvalidAddress",
                format!("{url:?} is not a queue URL"),
            ));
        };
        if account != ACCOUNT || !lock(&self.queues).contains_key(name) {
            return Err(SqsError::no_queue());
        }
        Ok(name.to_owned())
    }

    fn with_queue<T>(&self, name: &str, f: impl FnOnce(&mut Slot) -> T) -> SqsResult<T> {
        let mut queues = lock(&self.queues);
        queues.get_mut(name).map(f).ok_or_else(SqsError::no_queue)
    }

    fn create_queue(&self, input: wire::CreateQueueIn) -> SqsResult {
        let name = input
            .queue_name
            .ok_or_else(|| SqsError::missing("QueueName"))?;
        check_queue_name(&name)?;
        for (k, v) in &input.attributes {
            check_attribute(k, v)?;
        }
        let mut queues = lock(&self.queues);
        match queues.get(&name) {
            Some(slot)
                if !input.attributes.is_empty() && slot.queue.attributes != input.attributes =>
            {
                return Err(SqsError::sqs(
                    "QueueNameExists",
                    "QueueAlreadyExists",
                    format!("A queue named {name} already exists with different attributes."),
                ));
            }
            Some(_) => {}
            None => {
                queues.insert(
                    name.clone(),
                    Slot {
                        queue: Queue::new(input.attributes, crate::domain::now().timestamp()),
                        arrived: Arc::new(Notify::new()),
                    },
                );
            }
        }
        drop(queues);
        ok(&wire::QueueUrlOut {
            queue_url: self.url(&name),
        })
    }

    fn get_queue_url(&self, input: wire::GetQueueUrlIn) -> SqsResult {
        let name = input
            .queue_name
            .ok_or_else(|| SqsError::missing("QueueName"))?;
        if !self.exists(&name) {
            return Err(SqsError::no_queue());
        }
        ok(&wire::QueueUrlOut {
            queue_url: self.url(&name),
        })
    }

    fn delete_queue(&self, input: wire::QueueUrlIn) -> SqsResult {
        let name = self.resolve(input.queue_url.as_deref())?;
        if let Some(slot) = lock(&self.queues).remove(&name) {
            slot.arrived.notify_waiters();
        }
        ok(&serde_json::json!({}))
    }

    fn send_message(&self, input: wire::SendMessageIn) -> SqsResult {
        let name = self.resolve(input.queue_url.as_deref())?;
        let body = input
            .message_body
            .ok_or_else(|| SqsError::missing("MessageBody"))?;
        let delay = delay(input.delay_seconds)?;
        check_body(&body)?;
        let md5 = queue::md5_hex(body.as_bytes());
        let id = self.send(&name, body, delay)?;
        ok(&wire::SendMessageOut {
            message_id: id,
            md5_of_message_body: md5,
        })
    }

    fn send_message_batch(&self, input: wire::BatchIn) -> SqsResult {
        let name = self.resolve(input.queue_url.as_deref())?;
        let entries = check_batch(input.entries)?;
        let mut out = batch_out();
        for e in entries {
            let id = e.id.unwrap_or_default();
            let checked = e
                .message_body
                .ok_or_else(|| SqsError::missing("MessageBody"))
                .and_then(|b| check_body(&b).map(|()| b))
                .and_then(|b| delay(e.delay_seconds).map(|d| (b, d)));
            match checked.and_then(|(body, d)| {
                let md5 = queue::md5_hex(body.as_bytes());
                self.send(&name, body, d).map(|mid| (mid, md5))
            }) {
                Ok((message_id, md5)) => out.successful.push(wire::BatchSuccess {
                    id,
                    message_id: Some(message_id),
                    md5_of_message_body: Some(md5),
                }),
                Err(err) => out.failed.push(failure(id, &err)),
            }
        }
        ok(&out)
    }

    async fn receive_message(&self, input: wire::ReceiveMessageIn) -> SqsResult {
        let name = self.resolve(input.queue_url.as_deref())?;
        let max = match input.max_number_of_messages {
            None => 1,
            Some(n @ 1..=10) => usize::try_from(n).unwrap_or(1),
            Some(n) => {
                return Err(SqsError::invalid(format!(
                    "Value {n} for parameter MaxNumberOfMessages is invalid. Reason: Must be between 1 and 10, if provided."
                )));
            }
        };
        let visibility = input
            .visibility_timeout
            .map(|v| seconds("VisibilityTimeout", v, queue::MAX_VISIBILITY))
            .transpose()?;
        let wait = input
            .wait_time_seconds
            .map(|v| seconds("WaitTimeSeconds", v, MAX_WAIT))
            .transpose()?;
        let mut wanted: Vec<&str> = input
            .attribute_names
            .iter()
            .chain(&input.message_system_attribute_names)
            .map(String::as_str)
            .collect();
        wanted.dedup();
        let (wait, arrived) = self.with_queue(&name, |s| {
            (wait.unwrap_or(s.queue.receive_wait), Arc::clone(&s.arrived))
        })?;
        let deadline = Instant::now() + wait;
        loop {
            let notified = arrived.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = Instant::now();
            let now_ms = crate::domain::now().timestamp_millis();
            let (got, next) = {
                let mut nonces = lock(&self.nonces);
                let mut nonce = || nonces.next_u64();
                self.with_queue(&name, |s| {
                    let vis = visibility.unwrap_or(s.queue.visibility_timeout);
                    let got = s.queue.receive(max, vis, now, now_ms, &mut nonce);
                    (got, s.queue.next_visible(now))
                })?
            };
            if !got.is_empty() || now >= deadline {
                let messages = got
                    .into_iter()
                    .map(|(m, handle)| wire::MessageOut {
                        message_id: m.id.to_string(),
                        receipt_handle: handle,
                        md5_of_body: m.md5_of_body.clone(),
                        attributes: message_attributes(&m, &wanted),
                        body: m.body,
                    })
                    .collect();
                return ok(&wire::ReceiveMessageOut { messages });
            }
            let until = next.map_or(deadline, |t| t.min(deadline));
            let _waiting = Waiting::new(&self.waiting);
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(until) => {}
            }
        }
    }

    fn delete_message(&self, input: wire::DeleteMessageIn) -> SqsResult {
        let name = self.resolve(input.queue_url.as_deref())?;
        let receipt = receipt(input.receipt_handle.as_deref())?;
        self.with_queue(&name, |s| s.queue.delete(receipt))?;
        ok(&serde_json::json!({}))
    }

    fn delete_message_batch(&self, input: wire::BatchIn) -> SqsResult {
        let name = self.resolve(input.queue_url.as_deref())?;
        let entries = check_batch(input.entries)?;
        let mut out = batch_out();
        for e in entries {
            let id = e.id.unwrap_or_default();
            match receipt(e.receipt_handle.as_deref())
                .and_then(|r| self.with_queue(&name, |s| s.queue.delete(r)))
            {
                Ok(_) => out.successful.push(success(id)),
                Err(err) => out.failed.push(failure(id, &err)),
            }
        }
        ok(&out)
    }

    fn change_one(&self, name: &str, handle: Option<&str>, timeout: Option<i64>) -> SqsResult<()> {
        let r = receipt(handle)?;
        let handle = handle.unwrap_or_default();
        let timeout = timeout.ok_or_else(|| SqsError::missing("VisibilityTimeout"))?;
        let visibility = seconds("VisibilityTimeout", timeout, queue::MAX_VISIBILITY)?;
        self.with_queue(name, |s| {
            let changed = s
                .queue
                .change_visibility(handle, r, visibility, Instant::now());
            s.arrived.notify_waiters();
            changed
        })?
        .map_err(|VisibilityError::NotInFlight| {
            SqsError::sqs(
                "MessageNotInflight",
                "AWS.SimpleQueueService.MessageNotInflight",
                "The message referred to is not in flight.",
            )
        })
    }

    fn change_visibility(&self, input: wire::ChangeVisibilityIn) -> SqsResult {
        let name = self.resolve(input.queue_url.as_deref())?;
        self.change_one(
            &name,
            input.receipt_handle.as_deref(),
            input.visibility_timeout,
        )?;
        ok(&serde_json::json!({}))
    }

    fn change_visibility_batch(&self, input: wire::BatchIn) -> SqsResult {
        let name = self.resolve(input.queue_url.as_deref())?;
        let entries = check_batch(input.entries)?;
        let mut out = batch_out();
        for e in entries {
            let id = e.id.unwrap_or_default();
            match self.change_one(&name, e.receipt_handle.as_deref(), e.visibility_timeout) {
                Ok(()) => out.successful.push(success(id)),
                Err(err) => out.failed.push(failure(id, &err)),
            }
        }
        ok(&out)
    }

    fn get_queue_attributes(&self, input: wire::GetQueueAttributesIn) -> SqsResult {
        let name = self.resolve(input.queue_url.as_deref())?;
        let all = self.with_queue(&name, |s| {
            let q = &s.queue;
            let c = q.counts(Instant::now());
            let mut a: HashMap<String, String> = q.attributes.clone();
            let mut put = |k: &str, v: String| {
                a.insert(k.to_owned(), v);
            };
            put("QueueArn", format!("arn:aws:sqs:{REGION}:{ACCOUNT}:{name}"));
            put("ApproximateNumberOfMessages", c.visible.to_string());
            put(
                "ApproximateNumberOfMessagesNotVisible",
                c.in_flight.to_string(),
            );
            put("ApproximateNumberOfMessagesDelayed", c.delayed.to_string());
            put("CreatedTimestamp", q.created_s.to_string());
            put("LastModifiedTimestamp", q.created_s.to_string());
            put(
                "VisibilityTimeout",
                q.visibility_timeout.as_secs().to_string(),
            );
            put("DelaySeconds", q.delay.as_secs().to_string());
            put(
                "ReceiveMessageWaitTimeSeconds",
                q.receive_wait.as_secs().to_string(),
            );
            a.entry("MaximumMessageSize".into())
                .or_insert_with(|| MAX_MESSAGE_BYTES.to_string());
            a.entry("MessageRetentionPeriod".into())
                .or_insert_with(|| "345600".into());
            a.entry("SqsManagedSseEnabled".into())
                .or_insert_with(|| "false".into());
            a
        })?;
        let mut attributes = HashMap::new();
        for n in &input.attribute_names {
            if n == "All" {
                attributes.clone_from(&all);
                break;
            }
            match all.get(n) {
                Some(v) => {
                    attributes.insert(n.clone(), v.clone());
                }
                None if KNOWN_ATTRIBUTES.contains(&n.as_str()) => {}
                None => {
                    return Err(SqsError::sqs(
                        "InvalidAttributeName",
                        "InvalidAttributeName",
                        format!("Unknown Attribute {n}."),
                    ));
                }
            }
        }
        ok(&wire::GetQueueAttributesOut { attributes })
    }

    fn purge_queue(&self, input: wire::QueueUrlIn) -> SqsResult {
        let name = self.resolve(input.queue_url.as_deref())?;
        self.with_queue(&name, |s| s.queue.purge())?;
        ok(&serde_json::json!({}))
    }
}

/// Counts one long poll while it waits, however the wait ends (a client hanging up drops
/// the request future mid-wait).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        Self(n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Attribute names SQS knows that this queue may have no value for.
const KNOWN_ATTRIBUTES: &[&str] = &[
    "Policy",
    "RedrivePolicy",
    "RedriveAllowPolicy",
    "KmsMasterKeyId",
    "KmsDataKeyReusePeriodSeconds",
    "FifoQueue",
    "ContentBasedDeduplication",
    "DeduplicationScope",
    "FifoThroughputLimit",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "SqsManagedSseEnabled",
];

fn message_attributes(m: &queue::Message, wanted: &[&str]) -> HashMap<&'static str, String> {
    let all = wanted.contains(&"All");
    let mut out = HashMap::new();
    let mut put = |k: &'static str, v: String| {
        if all || wanted.contains(&k) {
            out.insert(k, v);
        }
    };
    put("ApproximateReceiveCount", m.receive_count.to_string());
    put("SentTimestamp", m.sent_ms.to_string());
    if let Some(t) = m.first_receive_ms {
        put("ApproximateFirstReceiveTimestamp", t.to_string());
    }
    put("SenderId", "AIDASIMULATOR".into());
    out
}

fn check_queue_name(name: &str) -> SqsResult<()> {
    let ok = (1..=80).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(SqsError::invalid(format!(
            "Can only include alphanumeric characters, hyphens, or underscores. 1 to 80 in length (got {:?}; FIFO queues are not simulated)",
            name.chars().take(90).collect::<String>()
        )))
    }
}

fn check_attribute(name: &str, value: &str) -> SqsResult<()> {
    let bound = match name {
        "VisibilityTimeout" => Some(queue::MAX_VISIBILITY.as_secs()),
        "DelaySeconds" => Some(queue::MAX_DELAY.as_secs()),
        "ReceiveMessageWaitTimeSeconds" => Some(MAX_WAIT.as_secs()),
        _ if KNOWN_ATTRIBUTES.contains(&name) => None,
        _ => {
            return Err(SqsError::sqs(
                "InvalidAttributeName",
                "InvalidAttributeName",
                format!("Unknown Attribute {name}."),
            ));
        }
    };
    if let Some(max) = bound
        && !value.parse::<u64>().is_ok_and(|v| v <= max)
    {
        return Err(SqsError::sqs(
            "InvalidAttributeValue",
            "InvalidAttributeValue",
            format!("Invalid value for the parameter {name}."),
        ));
    }
    Ok(())
}

fn seconds(member: &str, v: i64, max: Duration) -> SqsResult<Duration> {
    u64::try_from(v)
        .ok()
        .filter(|s| *s <= max.as_secs())
        .map(Duration::from_secs)
        .ok_or_else(|| {
            SqsError::invalid(format!(
                "Value {v} for parameter {member} is invalid. Reason: Must be between 0 and {}.",
                max.as_secs()
            ))
        })
}

fn delay(v: Option<i64>) -> SqsResult<Option<Duration>> {
    v.map(|v| seconds("DelaySeconds", v, queue::MAX_DELAY))
        .transpose()
}

fn check_body(body: &str) -> SqsResult<()> {
    if body.is_empty() {
        return Err(SqsError::invalid(
            "The request must contain the parameter MessageBody.",
        ));
    }
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(SqsError::invalid(format!(
            "One or more parameters are invalid. Reason: Message must be shorter than {MAX_MESSAGE_BYTES} bytes."
        )));
    }
    Ok(())
}

fn check_batch(entries: Option<Vec<wire::BatchEntryIn>>) -> SqsResult<Vec<wire::BatchEntryIn>> {
    let entries = entries.unwrap_or_default();
    if entries.is_empty() {
        return Err(SqsError::sqs(
            "EmptyBatchRequest",
            "AWS.SimpleQueueService.EmptyBatchRequest",
            "There should be at least one SendMessageBatchRequestEntry in the request.",
        ));
    }
    if entries.len() > MAX_BATCH {
        return Err(SqsError::sqs(
            "TooManyEntriesInBatchRequest",
            "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
            format!(
                "Maximum number of entries per request are {MAX_BATCH}. You have sent {}.",
                entries.len()
            ),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for e in &entries {
        let id = e.id.as_deref().unwrap_or_default();
        let valid = (1..=80).contains(&id.len())
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            return Err(SqsError::sqs(
                "InvalidBatchEntryId",
                "AWS.SimpleQueueService.InvalidBatchEntryId",
                "A batch entry id can only contain alphanumeric characters, hyphens and underscores. It can be at most 80 letters long.",
            ));
        }
        if !seen.insert(id) {
            return Err(SqsError::sqs(
                "BatchEntryIdsNotDistinct",
                "AWS.SimpleQueueService.BatchEntryIdsNotDistinct",
                format!("Id {id} repeated."),
            ));
        }
    }
    Ok(entries)
}

fn receipt(handle: Option<&str>) -> SqsResult<Receipt> {
    let handle = handle.ok_or_else(|| SqsError::missing("ReceiptHandle"))?;
    Receipt::decode(handle).ok_or_else(|| {
        SqsError::sqs(
            "ReceiptHandleIsInvalid",
            "ReceiptHandleIsInvalid",
            format!(
                "The input receipt handle \"{}\" is not a valid receipt handle.",
                handle.chars().take(100).collect::<String>()
            ),
        )
    })
}

fn batch_out() -> wire::BatchOut {
    wire::BatchOut {
        successful: Vec::new(),
        failed: Vec::new(),
    }
}

fn success(id: String) -> wire::BatchSuccess {
    wire::BatchSuccess {
        id,
        message_id: None,
        md5_of_message_body: None,
    }
}

fn failure(id: String, e: &SqsError) -> wire::BatchFailure {
    wire::BatchFailure {
        id,
        sender_fault: !e.status.is_server_error(),
        code: e.code().to_owned(),
        message: e.message.clone(),
    }
}

/// True when a request is for the SQS side: it names an `AmazonSQS.` target.
pub(crate) fn is_sqs(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(TARGET_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|t| t.starts_with(TARGET_PREFIX))
}

async fn read<T: DeserializeOwned + Default>(body: Body) -> SqsResult<T> {
    let bytes = axum::body::to_bytes(body, MAX_MESSAGE_BYTES * 2)
        .await
        .map_err(|_| {
            SqsError::coral(
                StatusCode::BAD_REQUEST,
                "SerializationException",
                "The request body is too large or unreadable",
            )
        })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        SqsError::coral(
            StatusCode::BAD_REQUEST,
            "SerializationException",
            format!("The request body is not valid: {e}"),
        )
    })
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => {
            let mut resp = (status, bytes).into_response();
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
            resp
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

fn ok<T: Serialize>(body: &T) -> SqsResult {
    Ok(json(StatusCode::OK, body))
}
