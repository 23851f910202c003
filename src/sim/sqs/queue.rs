//! One standard queue's messages and their visibility, with time passed in: no I/O, no
//! locks, no clock of its own, so the rules (visibility timeout, receive count, delays,
//! receipt handles) are tested without a server.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tokio::time::Instant;
use uuid::Uuid;

/// SQS's bounds on a queue's and a receive's visibility timeout: 0 s to 12 h.
pub(crate) const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 60 * 60);
/// SQS's bound on a message delay: 15 min.
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(15 * 60);

/// A message as SQS stores it.
#[derive(Debug, Clone)]
pub(crate) struct Message {
    pub(crate) id: Uuid,
    pub(crate) body: String,
    pub(crate) md5_of_body: String,
    /// Milliseconds since the epoch, as `SentTimestamp` reports it.
    pub(crate) sent_ms: i64,
    pub(crate) first_receive_ms: Option<i64>,
    pub(crate) receive_count: u32,
    /// Until then the message is delayed (never received yet) or in flight.
    visible_at: Instant,
    /// The handle of the latest receive; only it may change the visibility.
    receipt: Option<String>,
}

/// What a receipt handle names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Receipt {
    pub(crate) message: Uuid,
    pub(crate) receive: u32,
}

impl Receipt {
    fn encode(self, nonce: u64) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}.{}.{nonce:016x}", self.message, self.receive))
    }

    /// `None` for anything this queue never issued a handle like.
    pub(crate) fn decode(handle: &str) -> Option<Self> {
        let raw = URL_SAFE_NO_PAD.decode(handle).ok()?;
        let raw = String::from_utf8(raw).ok()?;
        let mut parts = raw.split('.');
        let message = Uuid::parse_str(parts.next()?).ok()?;
        let receive = parts.next()?.parse().ok()?;
        u64::from_str_radix(parts.next()?, 16).ok()?;
        parts.next().is_none().then_some(Self { message, receive })
    }
}

/// Why a visibility change was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VisibilityError {
    /// The message is gone, not in flight, or was received again since this handle.
    NotInFlight,
}

/// The queue's counts, as `GetQueueAttributes` reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueueCounts {
    /// `ApproximateNumberOfMessages`: receivable now.
    pub visible: usize,
    /// `ApproximateNumberOfMessagesNotVisible`: received and neither deleted nor back yet.
    pub in_flight: usize,
    /// `ApproximateNumberOfMessagesDelayed`: sent with a delay that has not passed.
    pub delayed: usize,
}

/// One standard queue: at-least-once delivery, no order promised.
#[derive(Debug)]
pub(crate) struct Queue {
    pub(crate) visibility_timeout: Duration,
    pub(crate) delay: Duration,
    pub(crate) receive_wait: Duration,
    /// Every attribute CreateQueue was given, verbatim (for GetQueueAttributes and the
    /// "same name, other attributes" check).
    pub(crate) attributes: HashMap<String, String>,
    pub(crate) created_s: i64,
    messages: Vec<Message>,
}

impl Queue {
    pub(crate) fn new(attributes: HashMap<String, String>, created_s: i64) -> Self {
        let secs = |name: &str, default: u64| {
            attributes
                .get(name)
                .and_then(|v| v.parse().ok())
                .map_or(Duration::from_secs(default), Duration::from_secs)
        };
        Self {
            visibility_timeout: secs("VisibilityTimeout", 30),
            delay: secs("DelaySeconds", 0),
            receive_wait: secs("ReceiveMessageWaitTimeSeconds", 0),
            attributes,
            created_s,
            messages: Vec::new(),
        }
    }

    /// Adds a message, receivable after `delay` (the queue's own when `None`).
    pub(crate) fn send(
        &mut self,
        body: String,
        delay: Option<Duration>,
        now: Instant,
        now_ms: i64,
    ) -> Message {
        let msg = Message {
            id: Uuid::new_v4(),
            md5_of_body: md5_hex(body.as_bytes()),
            body,
            sent_ms: now_ms,
            first_receive_ms: None,
            receive_count: 0,
            visible_at: now + delay.unwrap_or(self.delay),
            receipt: None,
        };
        self.messages.push(msg.clone());
        msg
    }

    /// Receives up to `max` visible messages, each hidden for `visibility` with a fresh
    /// receipt handle and its receive count raised.
    pub(crate) fn receive(
        &mut self,
        max: usize,
        visibility: Duration,
        now: Instant,
        now_ms: i64,
        nonce: &mut impl FnMut() -> u64,
    ) -> Vec<(Message, String)> {
        let mut out = Vec::new();
        for m in &mut self.messages {
            if out.len() >= max {
                break;
            }
            if m.visible_at > now {
                continue;
            }
            m.receive_count = m.receive_count.saturating_add(1);
            m.first_receive_ms.get_or_insert(now_ms);
            m.visible_at = now + visibility;
            let handle = Receipt {
                message: m.id,
                receive: m.receive_count,
            }
            .encode(nonce());
            m.receipt = Some(handle.clone());
            out.push((m.clone(), handle));
        }
        out
    }

    /// When the next message not visible now becomes visible, if any.
    pub(crate) fn next_visible(&self, now: Instant) -> Option<Instant> {
        self.messages
            .iter()
            .map(|m| m.visible_at)
            .filter(|t| *t > now)
            .min()
    }

    /// Deletes the message a handle names. A handle of a message already deleted is not an
    /// error (SQS answers success too).
    pub(crate) fn delete(&mut self, receipt: Receipt) -> bool {
        let before = self.messages.len();
        self.messages.retain(|m| m.id != receipt.message);
        self.messages.len() != before
    }

    /// Hides (or shows, with zero) an in-flight message for `visibility` from now.
    pub(crate) fn change_visibility(
        &mut self,
        handle: &str,
        receipt: Receipt,
        visibility: Duration,
        now: Instant,
    ) -> Result<(), VisibilityError> {
        let m = self
            .messages
            .iter_mut()
            .find(|m| m.id == receipt.message)
            .ok_or(VisibilityError::NotInFlight)?;
        let in_flight = m.receive_count > 0 && m.visible_at > now;
        if !in_flight || m.receipt.as_deref() != Some(handle) {
            return Err(VisibilityError::NotInFlight);
        }
        m.visible_at = now + visibility;
        Ok(())
    }

    pub(crate) fn purge(&mut self) {
        self.messages.clear();
    }

    pub(crate) fn counts(&self, now: Instant) -> QueueCounts {
        let mut c = QueueCounts::default();
        for m in &self.messages {
            match (m.visible_at > now, m.receive_count) {
                (false, _) => c.visible += 1,
                (true, 0) => c.delayed += 1,
                (true, _) => c.in_flight += 1,
            }
        }
        c
    }
}

/// The lowercase hex MD5 digest SQS reports as `MD5OfBody` (boto3 checks it).
pub(crate) fn md5_hex(bytes: &[u8]) -> String {
    use md5::Digest as _;
    let digest = md5::Md5::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nonce() -> impl FnMut() -> u64 {
        let mut n = 0;
        move || {
            n += 1;
            n
        }
    }

    #[test]
    fn md5_matches_the_rfc_1321_vectors() {
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(md5_hex(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
    }

    #[test]
    fn a_message_not_deleted_comes_back_after_its_visibility_timeout() {
        let t0 = Instant::now();
        let mut q = Queue::new(HashMap::new(), 0);
        q.send("a".into(), None, t0, 0);
        let vis = Duration::from_secs(5);
        let first = q.receive(10, vis, t0, 0, &mut nonce());
        assert_eq!(first.len(), 1);
        assert!(
            q.receive(10, vis, t0 + Duration::from_secs(4), 0, &mut nonce())
                .is_empty()
        );
        assert_eq!(q.counts(t0).in_flight, 1);
        let again = q.receive(10, vis, t0 + vis, 0, &mut nonce());
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].0.receive_count, 2);
        assert_ne!(first[0].1, again[0].1, "each receive has its own handle");
    }

    #[test]
    fn only_the_latest_handle_changes_visibility_and_any_handle_deletes() {
        let t0 = Instant::now();
        let mut q = Queue::new(HashMap::new(), 0);
        q.send("a".into(), None, t0, 0);
        let vis = Duration::from_secs(1);
        let (_, old) = q.receive(1, vis, t0, 0, &mut nonce()).remove(0);
        let (_, new) = q.receive(1, vis, t0 + vis, 0, &mut nonce()).remove(0);
        let old_r = Receipt::decode(&old).expect("our handle");
        assert_eq!(
            q.change_visibility(&old, old_r, vis, t0 + vis),
            Err(VisibilityError::NotInFlight)
        );
        let new_r = Receipt::decode(&new).expect("our handle");
        assert_eq!(q.change_visibility(&new, new_r, vis, t0 + vis), Ok(()));
        assert!(q.delete(old_r));
        assert!(!q.delete(new_r), "already gone");
        assert_eq!(q.counts(t0 + vis), QueueCounts::default());
    }

    #[test]
    fn a_delayed_message_is_counted_delayed_until_its_time() {
        let t0 = Instant::now();
        let mut q = Queue::new(HashMap::new(), 0);
        q.send("a".into(), Some(Duration::from_secs(3)), t0, 0);
        assert_eq!(q.counts(t0).delayed, 1);
        assert_eq!(q.next_visible(t0), Some(t0 + Duration::from_secs(3)));
        assert!(
            q.receive(10, Duration::ZERO, t0, 0, &mut nonce())
                .is_empty()
        );
        assert_eq!(q.counts(t0 + Duration::from_secs(3)).visible, 1);
    }

    #[test]
    fn foreign_handles_do_not_decode() {
        assert_eq!(Receipt::decode("not-a-handle"), None);
        assert_eq!(Receipt::decode(""), None);
    }
}
