//! The simulator's Chime side as an event source: every operation that makes Chime publish a
//! meeting lifecycle event (developer guide, "Understanding Amazon Chime SDK meeting lifecycle
//! events") puts that event on a configured queue of the simulator's own SQS side, as
//! EventBridge delivers it to an SQS target ([`crate::lifecycle::MeetingEvent::to_body`]) or
//! wrapped in an SNS notification ([`crate::lifecycle::sns_envelope`]).
//!
//! | operation | event |
//! |---|---|
//! | CreateMeeting (a new meeting, not an idempotent repeat) | `MeetingStarted` |
//! | CreateAttendee, BatchCreateAttendee (each new attendee) | `AttendeeAdded` |
//! | DeleteAttendee | `AttendeeDeleted` |
//! | UpdateAttendeeCapabilities | `AttendeeCapabilitiesUpdated` (`success` "1") |
//! | DeleteMeeting | `MeetingEnded` (the guide: "also sent when you call DeleteMeeting") |
//! | presence controls (`sim/presence.rs`) | `AttendeeJoined`, `Left`, `Dropped`, `Authorized`, video and content events |
//!
//! The event path misbehaves as the real one may, on demand ([`EventFaults`]): each event is
//! lost with probability `loss`, sent twice with probability `duplicate`, and each copy is
//! held back a uniform random delay up to `max_delay` (so later events overtake earlier ones);
//! a message not deleted in time comes back by itself (the queue's visibility timeout), and
//! [`Poison`] plants a body no Chime operation would send. With a seed the ids, losses,
//! duplicates and delays repeat run to run for the same sequence of operations.
//!
//! Off by default: without [`EventsConfig`] nothing is emitted and nothing is kept.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::lock;
use super::sqs::{self, Sqs};
use crate::domain::{AttendeeId, Capabilities, ExternalUserId, MeetingId, Region};
use crate::lifecycle::{EventAttendee, EventType, MeetingEvent, sns_envelope};

/// The region an event names when the request that caused it named none.
pub const DEFAULT_REGION: &str = "us-east-1";

/// The longest delay [`EventFaults::max_delay`] may ask for (SQS's own largest delay).
pub const MAX_EVENT_DELAY: Duration = Duration::from_secs(15 * 60);

/// The SNS topic an SNS-wrapped event names.
const TOPIC_ARN: &str = "arn:aws:sns:us-east-1:123456789012:chime-meeting-events";

/// How an event reaches the queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum EventsFormat {
    /// An EventBridge rule with an SQS target: the body is the event JSON.
    #[default]
    Eventbridge,
    /// SNS to SQS without raw delivery: the body is an SNS notification whose `Message` is
    /// the event JSON.
    Sns,
}

/// What goes wrong on the event path, per event.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EventFaults {
    /// Probability (0.0..=1.0) that an event never reaches the queue.
    pub loss: f64,
    /// Probability (0.0..=1.0) that a delivered event is delivered twice (same envelope id).
    pub duplicate: f64,
    /// Each copy is held back a uniform random delay from zero to this; events overtake each
    /// other when it is larger than the time between them. At most [`MAX_EVENT_DELAY`].
    pub max_delay: Duration,
}

/// Where and how the simulator emits lifecycle events.
#[derive(Debug, Clone, PartialEq)]
pub struct EventsConfig {
    /// The queue (on the simulator's SQS side) that receives them; created if missing.
    pub queue: String,
    pub format: EventsFormat,
    pub faults: EventFaults,
}

impl EventsConfig {
    /// Events to `queue` as EventBridge delivers them, without faults.
    pub fn to_queue(queue: impl Into<String>) -> Self {
        Self {
            queue: queue.into(),
            format: EventsFormat::Eventbridge,
            faults: EventFaults::default(),
        }
    }
}

/// An [`EventsConfig`] or [`EventFaults`] value the simulator cannot run with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EventsError {
    #[error("{0} must be between 0.0 and 1.0 (got {1})")]
    Probability(&'static str, f64),
    #[error("max_delay must be at most {} s (got {} ms)", MAX_EVENT_DELAY.as_secs(), .0.as_millis())]
    Delay(Duration),
    #[error("{0:?} is not a valid queue name: 1 to 80 letters, digits, '-' and '_'")]
    QueueName(String),
}

impl EventFaults {
    /// # Errors
    /// The first value out of range.
    pub fn validate(&self) -> Result<(), EventsError> {
        for (name, p) in [("loss", self.loss), ("duplicate", self.duplicate)] {
            if !(0.0..=1.0).contains(&p) {
                return Err(EventsError::Probability(name, p));
            }
        }
        if self.max_delay > MAX_EVENT_DELAY {
            return Err(EventsError::Delay(self.max_delay));
        }
        Ok(())
    }
}

/// What the emitter did, since the simulator started. `GET /_sim/events` answers it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventStats {
    /// Events the operations caused while emission was on (before faults).
    pub emitted: u64,
    /// Events dropped by [`EventFaults::loss`] or [`super::SimHandle::lose_next`].
    pub lost: u64,
    /// Events sent a second time by [`EventFaults::duplicate`].
    pub duplicated: u64,
    /// Copies held back by a non-zero delay.
    pub delayed: u64,
    /// Messages put on the queue (events plus duplicates plus poison).
    pub messages: u64,
    /// Poison messages planted.
    pub poison: u64,
    /// Events that found no queue (it was deleted after emission was configured).
    pub undeliverable: u64,
}

/// A message body no Chime operation would send, planted on the events queue on demand, so
/// a consumer's handling of bad input can be tested end to end.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Poison {
    /// Not JSON at all.
    NotJson,
    /// JSON from another source (an S3 event).
    NotChime,
    /// A Chime envelope with an `eventType` Chime does not publish.
    UnknownType,
    /// A Chime event whose `meetingId` is not a GUID.
    BadMeetingId,
    /// A Chime event stamped a day in the future.
    FutureTimestamp,
    /// An SNS notification whose `Message` is not JSON.
    BrokenSns,
    /// A body of exactly SQS's limit (256 KiB) that is not a Chime event.
    Huge,
    /// This body, verbatim.
    Raw(String),
}

impl Poison {
    fn body(&self) -> String {
        let meeting = "4f1c7a2e-0b3d-4c5e-9f60-7a8b9c0d1e2f";
        let chime = |event_type: &str, meeting_id: &str, ms: i64| {
            serde_json::json!({
                "version": "0", "id": Uuid::new_v4().to_string(),
                "detail-type": crate::lifecycle::DETAIL_TYPE, "source": crate::lifecycle::SOURCE,
                "account": sqs::ACCOUNT, "time": Utc::now().to_rfc3339(), "region": DEFAULT_REGION,
                "resources": [],
                "detail": {"version": "0", "eventType": event_type, "timestamp": ms, "meetingId": meeting_id},
            })
            .to_string()
        };
        let now_ms = Utc::now().timestamp_millis();
        match self {
            Self::NotJson => "this is not JSON {".into(),
            Self::NotChime => serde_json::json!({
                "version": "0", "id": Uuid::new_v4().to_string(), "detail-type": "Object Created",
                "source": "aws.s3", "detail": {"bucket": {"name": "b"}},
            })
            .to_string(),
            Self::UnknownType => chime("chime:MeetingExploded", meeting, now_ms),
            Self::BadMeetingId => chime("chime:MeetingStarted", "not-a-guid", now_ms),
            Self::FutureTimestamp => chime("chime:MeetingStarted", meeting, now_ms + 86_400_000),
            Self::BrokenSns => serde_json::json!({
                "Type": "Notification", "MessageId": Uuid::new_v4().to_string(),
                "TopicArn": TOPIC_ARN, "Message": "{\"broken\": ",
            })
            .to_string(),
            Self::Huge => {
                let mut body = String::from("{\"padding\":\"");
                let pad = sqs::MAX_MESSAGE_BYTES.saturating_sub(body.len() + 2);
                body.extend(std::iter::repeat_n('x', pad));
                body.push_str("\"}");
                body
            }
            Self::Raw(body) => body.clone(),
        }
    }
}

/// One event about to be emitted: what the operation knows.
pub(crate) struct Occurrence<'a> {
    pub(crate) event_type: EventType,
    pub(crate) meeting: Uuid,
    pub(crate) external_meeting_id: &'a str,
    pub(crate) media_region: &'a str,
    pub(crate) attendee: Option<(Uuid, &'a str)>,
    pub(crate) network_type: Option<&'a str>,
    pub(crate) capabilities: Option<Capabilities>,
    pub(crate) at: DateTime<Utc>,
}

/// The emitter: configuration, fault dice, the control region of each meeting, counters.
pub(crate) struct Emitter {
    cfg: Mutex<Option<EventsConfig>>,
    rng: Mutex<StdRng>,
    /// The region each meeting's CreateMeeting was signed for: the control region its events
    /// name. Also how a repeated (idempotent) CreateMeeting is told from a new one.
    regions: Mutex<HashMap<Uuid, Region>>,
    /// Events of a type to lose whatever the dice say, by count.
    lose_next: Mutex<HashMap<EventType, u32>>,
    stats: Mutex<EventStats>,
}

impl Emitter {
    pub(crate) fn new(seed: Option<u64>) -> Self {
        let rng = match seed {
            Some(s) => StdRng::seed_from_u64(s.wrapping_add(11)),
            None => StdRng::from_os_rng(),
        };
        Self {
            cfg: Mutex::new(None),
            rng: Mutex::new(rng),
            regions: Mutex::new(HashMap::new()),
            lose_next: Mutex::new(HashMap::new()),
            stats: Mutex::new(EventStats::default()),
        }
    }

    /// Turns emission on (creating the queue) or off.
    ///
    /// # Errors
    /// A fault out of range or a queue name SQS would refuse; the configuration is unchanged.
    pub(crate) fn configure(
        &self,
        sqs: &Sqs,
        cfg: Option<EventsConfig>,
    ) -> Result<(), EventsError> {
        if let Some(c) = &cfg {
            c.faults.validate()?;
            sqs.ensure(&c.queue)
                .map_err(|_| EventsError::QueueName(c.queue.chars().take(90).collect()))?;
        }
        *lock(&self.cfg) = cfg;
        Ok(())
    }

    /// Changes the faults of the current configuration (nothing when emission is off).
    ///
    /// # Errors
    /// A value out of range; the faults are unchanged.
    pub(crate) fn set_faults(&self, faults: EventFaults) -> Result<(), EventsError> {
        faults.validate()?;
        if let Some(c) = lock(&self.cfg).as_mut() {
            c.faults = faults;
        }
        Ok(())
    }

    pub(crate) fn is_on(&self) -> bool {
        lock(&self.cfg).is_some()
    }

    pub(crate) fn config(&self) -> Option<EventsConfig> {
        lock(&self.cfg).clone()
    }

    pub(crate) fn stats(&self) -> EventStats {
        *lock(&self.stats)
    }

    pub(crate) fn lose_next(&self, event_type: EventType, count: u32) {
        *lock(&self.lose_next).entry(event_type).or_default() += count;
    }

    /// Records the control region of a meeting; false when it was known already (an
    /// idempotent repeat of CreateMeeting, which starts nothing).
    pub(crate) fn meeting_created(&self, meeting: Uuid, region: Region) -> bool {
        lock(&self.regions).insert(meeting, region).is_none()
    }

    fn region(&self, meeting: &Uuid) -> Option<Region> {
        lock(&self.regions)
            .get(meeting)
            .cloned()
            .or_else(|| Region::parse(DEFAULT_REGION).ok())
    }

    /// Emits one event (when emission is on), through the faults.
    pub(crate) fn emit(&self, sqs: &Sqs, occ: &Occurrence<'_>) {
        let Some(cfg) = self.config() else { return };
        let Some(event) = self.event(occ) else { return };
        let mut stats = lock(&self.stats);
        stats.emitted += 1;
        let forced_loss = {
            let mut lose = lock(&self.lose_next);
            match lose.get_mut(&occ.event_type) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    true
                }
                _ => false,
            }
        };
        let (lost, copies, delays) = {
            let mut rng = lock(&self.rng);
            let f = cfg.faults;
            let lost = forced_loss || (f.loss > 0.0 && rng.random_bool(f.loss));
            let copies = if f.duplicate > 0.0 && rng.random_bool(f.duplicate) {
                2
            } else {
                1
            };
            let max = u64::try_from(f.max_delay.as_millis()).unwrap_or(u64::MAX);
            let delays: Vec<Duration> = (0..copies)
                .map(|_| {
                    Duration::from_millis(if max == 0 {
                        0
                    } else {
                        rng.random_range(0..=max)
                    })
                })
                .collect();
            (lost, copies, delays)
        };
        if lost {
            stats.lost += 1;
            return;
        }
        if copies > 1 {
            stats.duplicated += 1;
        }
        let body = event.to_body(sqs::ACCOUNT);
        for delay in delays {
            let body = match cfg.format {
                EventsFormat::Eventbridge => body.clone(),
                EventsFormat::Sns => sns_envelope(&body, TOPIC_ARN),
            };
            if !delay.is_zero() {
                stats.delayed += 1;
            }
            match sqs.send(&cfg.queue, body, Some(delay)) {
                Ok(_) => stats.messages += 1,
                Err(_) => stats.undeliverable += 1,
            }
        }
    }

    /// Plants a poison message on the events queue.
    ///
    /// # Errors
    /// Emission is off, or its queue was deleted.
    pub(crate) fn poison(&self, sqs: &Sqs, poison: &Poison) -> Result<(), PoisonError> {
        let cfg = self.config().ok_or(PoisonError::Off)?;
        sqs.send(&cfg.queue, poison.body(), None)
            .map_err(|_| PoisonError::NoQueue(cfg.queue.clone()))?;
        let mut stats = lock(&self.stats);
        stats.poison += 1;
        stats.messages += 1;
        Ok(())
    }

    fn event(&self, occ: &Occurrence<'_>) -> Option<MeetingEvent> {
        let meeting_id = MeetingId::parse(&occ.meeting.to_string()).ok()?;
        let attendee = match occ.attendee {
            Some((id, ext)) => Some(EventAttendee {
                attendee_id: AttendeeId::parse(&id.to_string()).ok()?,
                external_user_id: (!ext.is_empty()).then(|| ExternalUserId::new(ext)),
            }),
            None => None,
        };
        let id = {
            let mut b = [0u8; 16];
            lock(&self.rng).fill_bytes(&mut b);
            uuid::Builder::from_random_bytes(b).into_uuid().to_string()
        };
        let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let is_caps = occ.event_type == EventType::AttendeeCapabilitiesUpdated;
        Some(MeetingEvent {
            id,
            event_type: occ.event_type,
            region: self.region(&occ.meeting)?,
            time: occ.at,
            occurred_at: occ.at,
            meeting_id,
            external_meeting_id: nonempty(occ.external_meeting_id),
            media_region: nonempty(occ.media_region),
            attendee,
            network_type: occ
                .network_type
                .filter(|_| occ.event_type.has_network_type())
                .map(str::to_owned),
            capabilities: occ.capabilities.filter(|_| is_caps),
            success: is_caps.then_some(true),
        })
    }
}

/// A poison message that could not be planted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoisonError {
    #[error("meeting events are off: configure an events queue first")]
    Off,
    #[error("the events queue {0:?} no longer exists")]
    NoQueue(String),
}

/// The control region a SigV4 `Authorization` header was signed for
/// (`Credential=AKID/20260101/eu-central-1/chime/aws4_request`), if it names a valid one.
pub(crate) fn signing_region(headers: &axum::http::HeaderMap) -> Option<Region> {
    let auth = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let cred = auth.split("Credential=").nth(1)?;
    let scope = cred.split([',', ' ']).next()?;
    let region = scope.split('/').nth(2)?;
    Region::parse(region).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::parse_body;

    #[test]
    fn the_signing_region_comes_from_the_credential_scope() {
        let mut h = axum::http::HeaderMap::new();
        h.insert(
            axum::http::header::AUTHORIZATION,
            "AWS4-HMAC-SHA256 Credential=AKID/20260101/eu-central-1/chime/aws4_request, SignedHeaders=host, Signature=00"
                .parse()
                .expect("a header value"),
        );
        assert_eq!(
            signing_region(&h).map(|r| r.as_str().to_owned()).as_deref(),
            Some("eu-central-1")
        );
        assert_eq!(signing_region(&axum::http::HeaderMap::new()), None);
    }

    #[test]
    fn every_poison_body_is_refused_by_the_lifecycle_parser() {
        let now = Utc::now();
        for p in [
            Poison::NotJson,
            Poison::NotChime,
            Poison::UnknownType,
            Poison::BadMeetingId,
            Poison::FutureTimestamp,
            Poison::BrokenSns,
            Poison::Huge,
        ] {
            let body = p.body();
            assert!(body.len() <= sqs::MAX_MESSAGE_BYTES, "{p:?} fits a message");
            assert!(parse_body(&body, now).is_err(), "{p:?} must be refused");
        }
    }

    #[test]
    fn faults_out_of_range_are_refused() {
        let f = |loss, duplicate, ms| EventFaults {
            loss,
            duplicate,
            max_delay: Duration::from_millis(ms),
        };
        assert!(f(0.2, 0.1, 5000).validate().is_ok());
        assert!(f(1.5, 0.0, 0).validate().is_err());
        assert!(f(0.0, -0.1, 0).validate().is_err());
        assert!(f(0.0, f64::NAN, 0).validate().is_err());
        assert!(f(0.0, 0.0, 16 * 60 * 1000).validate().is_err());
    }
}
