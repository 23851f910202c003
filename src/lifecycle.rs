//! Chime SDK meeting lifecycle events: the wire format and its validated form.
//!
//! Chime publishes an event for each change of a meeting (developer guide, "Understanding
//! Amazon Chime SDK meeting lifecycle events"). Through EventBridge with an SQS target the
//! message body is the event JSON; through SNS without raw delivery it is an SNS envelope
//! whose `Message` is that JSON. [`parse_body`] accepts both and returns a [`MeetingEvent`]
//! whose ids have passed the same validation as the polled ones, or a [`Rejection`] that
//! names what was wrong (its [`Rejection::outcome`] is the metric label).
//! [`MeetingEvent::to_body`] writes the EventBridge form, for the simulator.
//!
//! This is a leaf: the simulator (which emits), the intake (which parses) and presence
//! (which reconciles) all use it, and it imports none of them. It does no I/O and never
//! decides what an event means for the record.

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Value, json};

use crate::domain::{AttendeeId, Capabilities, Capability, ExternalUserId, MeetingId, Region};

/// SQS refuses bodies above 256 KiB; anything larger did not come from a queue.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// An event stamped further ahead of the receiver's clock than this is refused: SigV4
/// already refuses a 15-minute clock skew, so a larger gap is not a skewed clock.
pub const MAX_FUTURE: TimeDelta = TimeDelta::minutes(15);

/// An event older than this is refused: SQS keeps a message at most 14 days.
pub const MAX_AGE: TimeDelta = TimeDelta::days(14);

/// `detail-type` of every Chime meeting event.
pub const DETAIL_TYPE: &str = "Chime Meeting State Change";
/// `source` of every Chime meeting event.
pub const SOURCE: &str = "aws.chime";

macro_rules! event_types {
    ($($name:ident),* $(,)?) => {
        /// The `eventType` of a lifecycle event, without its `chime:` prefix.
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
        pub enum EventType { $($name),* }

        impl EventType {
            pub const ALL: &'static [EventType] = &[$(EventType::$name),*];

            /// The name without the `chime:` prefix, as metrics label it.
            pub fn name(self) -> &'static str {
                match self { $(EventType::$name => stringify!($name)),* }
            }
        }
    };
}

event_types!(
    MeetingStarted,
    MeetingEnded,
    AttendeeAdded,
    AttendeeDeleted,
    AttendeeAuthorized,
    AttendeeJoined,
    AttendeeLeft,
    AttendeeDropped,
    AttendeeVideoStarted,
    AttendeeVideoStopped,
    AttendeeContentVideoStarted,
    AttendeeContentVideoStopped,
    AttendeeCapabilitiesUpdated,
    AttendeeContentJoined,
    AttendeeContentLeft,
    AttendeeContentDropped,
);

impl EventType {
    /// Parses `chime:AttendeeJoined` (the prefix is required, as the service sends it).
    pub fn parse(s: &str) -> Option<Self> {
        let name = s.strip_prefix("chime:")?;
        Self::ALL.iter().copied().find(|t| t.name() == name)
    }

    /// The wire form, `chime:` + [`Self::name`].
    pub fn wire(self) -> String {
        format!("chime:{}", self.name())
    }

    /// True for the events that are about one attendee and carry `attendeeId`.
    pub fn is_attendee_event(self) -> bool {
        !matches!(self, Self::MeetingStarted | Self::MeetingEnded)
    }

    /// True for the content-share events, whose `attendeeId` may carry a `#content` suffix.
    pub fn is_content_event(self) -> bool {
        matches!(
            self,
            Self::AttendeeContentJoined
                | Self::AttendeeContentLeft
                | Self::AttendeeContentDropped
                | Self::AttendeeContentVideoStarted
                | Self::AttendeeContentVideoStopped
        )
    }

    /// True for the events that carry `networkType`: joins, leaves and drops.
    pub fn has_network_type(self) -> bool {
        matches!(
            self,
            Self::AttendeeJoined
                | Self::AttendeeLeft
                | Self::AttendeeDropped
                | Self::AttendeeContentJoined
                | Self::AttendeeContentLeft
                | Self::AttendeeContentDropped
        )
    }
}

/// The attendee an attendee event is about.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct EventAttendee {
    pub attendee_id: AttendeeId,
    /// Absent or empty in some events; the roster is the authority on it anyway.
    pub external_user_id: Option<ExternalUserId>,
}

/// One lifecycle event, validated.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct MeetingEvent {
    /// The envelope `id`: unique per event, the same on every delivery of it.
    pub id: String,
    pub event_type: EventType,
    /// The control region (envelope `region`): where the meeting's API calls go.
    pub region: Region,
    /// The envelope `time` (when EventBridge took the event).
    pub time: DateTime<Utc>,
    /// `detail.timestamp`: when the change happened, by Chime's clock.
    pub occurred_at: DateTime<Utc>,
    pub meeting_id: MeetingId,
    pub external_meeting_id: Option<String>,
    pub media_region: Option<String>,
    /// Present exactly when [`EventType::is_attendee_event`].
    pub attendee: Option<EventAttendee>,
    pub network_type: Option<String>,
    /// `attendeeCapabilities` of `AttendeeCapabilitiesUpdated`.
    pub capabilities: Option<Capabilities>,
    /// `success` of `AttendeeCapabilitiesUpdated` ("1" or "0").
    pub success: Option<bool>,
}

/// Why a message body is not a usable lifecycle event. Such a message is counted, logged
/// once per kind and deleted: delivering it again would not make it valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the body has {0} bytes, above SQS's limit of {MAX_BODY_BYTES}")]
    TooLarge(usize),
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("an SNS envelope whose Message is not a Chime event: {0}")]
    BadSnsMessage(String),
    #[error("not a Chime meeting event (source {event_source:?}, detail-type {detail_type:?})")]
    NotChime {
        event_source: String,
        detail_type: String,
    },
    #[error("unknown eventType {0:?}")]
    UnknownType(String),
    #[error("{field} is missing or not a string")]
    MissingField { field: &'static str },
    #[error("{0}")]
    BadId(String),
    #[error("timestamp {0} is outside the accepted range (14 days ago to 15 minutes ahead)")]
    BadTimestamp(String),
    #[error("attendeeCapabilities is not a valid set of capabilities: {0}")]
    BadCapabilities(String),
}

impl Rejection {
    /// The `outcome` label of `roster_sync_meeting_events_total` for this rejection.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::TooLarge(_) => "too_large",
            Self::NotJson(_) => "malformed",
            Self::BadSnsMessage(_) => "bad_sns_message",
            Self::NotChime { .. } => "not_chime",
            Self::UnknownType(_) => "unknown_type",
            Self::MissingField { .. } => "malformed",
            Self::BadId(_) => "bad_id",
            Self::BadTimestamp(_) => "bad_timestamp",
            Self::BadCapabilities(_) => "malformed",
        }
    }
}

/// Parses one SQS message body: an EventBridge event, or an SNS envelope around one.
/// `now` bounds the timestamps (see [`MAX_FUTURE`], [`MAX_AGE`]).
///
/// # Errors
/// A [`Rejection`] naming the first thing wrong with the body.
pub fn parse_body(body: &str, now: DateTime<Utc>) -> Result<MeetingEvent, Rejection> {
    if body.len() > MAX_BODY_BYTES {
        return Err(Rejection::TooLarge(body.len()));
    }
    let value: Value = serde_json::from_str(body).map_err(|e| Rejection::NotJson(e.to_string()))?;
    if value.get("Type").and_then(Value::as_str) == Some("Notification") {
        let inner = value
            .get("Message")
            .and_then(Value::as_str)
            .ok_or_else(|| Rejection::BadSnsMessage("Message is missing".into()))?;
        let inner: Value = serde_json::from_str(inner)
            .map_err(|e| Rejection::BadSnsMessage(format!("Message is not JSON: {e}")))?;
        return parse_event(&inner, now).map_err(|e| match e {
            Rejection::NotJson(m) => Rejection::BadSnsMessage(m),
            other => other,
        });
    }
    parse_event(&value, now)
}

fn text<'a>(v: &'a Value, field: &'static str) -> Result<&'a str, Rejection> {
    v.get(field.rsplit('.').next().unwrap_or(field))
        .and_then(Value::as_str)
        .ok_or(Rejection::MissingField { field })
}

fn optional_text(v: &Value, field: &str) -> Option<String> {
    v.get(field)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

fn parse_event(v: &Value, now: DateTime<Utc>) -> Result<MeetingEvent, Rejection> {
    let source = v.get("source").and_then(Value::as_str).unwrap_or_default();
    let detail_type = v
        .get("detail-type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if source != SOURCE || detail_type != DETAIL_TYPE {
        return Err(Rejection::NotChime {
            event_source: source.chars().take(64).collect(),
            detail_type: detail_type.chars().take(64).collect(),
        });
    }
    let id = text(v, "id")?;
    if id.is_empty() || id.len() > 128 || id.chars().any(char::is_control) {
        return Err(Rejection::BadId(format!(
            "envelope id {id:?} is not a usable event id"
        )));
    }
    let region = Region::parse(text(v, "region")?).map_err(|e| Rejection::BadId(e.to_string()))?;
    let time = text(v, "time")?;
    let time = DateTime::parse_from_rfc3339(time)
        .map_err(|_| Rejection::BadTimestamp(time.chars().take(40).collect()))?
        .with_timezone(&Utc);
    let detail = v
        .get("detail")
        .filter(|d| d.is_object())
        .ok_or(Rejection::MissingField { field: "detail" })?;
    let raw_type = text(detail, "detail.eventType")?;
    let event_type = EventType::parse(raw_type)
        .ok_or_else(|| Rejection::UnknownType(raw_type.chars().take(64).collect()))?;
    let meeting_id = MeetingId::parse(text(detail, "detail.meetingId")?)
        .map_err(|e| Rejection::BadId(e.to_string()))?;
    let millis = detail
        .get("timestamp")
        .and_then(|t| {
            t.as_i64()
                .or_else(|| t.as_str().and_then(|s| s.parse().ok()))
        })
        .ok_or(Rejection::MissingField {
            field: "detail.timestamp",
        })?;
    let occurred_at = DateTime::from_timestamp_millis(millis)
        .filter(|t| *t <= now + MAX_FUTURE && *t >= now - MAX_AGE)
        .ok_or_else(|| Rejection::BadTimestamp(millis.to_string()))?;
    let attendee = if event_type.is_attendee_event() {
        let raw = text(detail, "detail.attendeeId")?;
        // A content share joins as its own attendee, `<attendee id>#content`: its events are
        // about the sharing attendee.
        let raw = match raw.strip_suffix("#content") {
            Some(base) if event_type.is_content_event() => base,
            _ => raw,
        };
        let attendee_id = AttendeeId::parse(raw).map_err(|e| Rejection::BadId(e.to_string()))?;
        let external_user_id = optional_text(detail, "externalUserId")
            .filter(|s| s.chars().count() <= 64)
            .map(ExternalUserId::new);
        Some(EventAttendee {
            attendee_id,
            external_user_id,
        })
    } else {
        None
    };
    let capabilities = match detail.get("attendeeCapabilities") {
        Some(c) if event_type == EventType::AttendeeCapabilitiesUpdated => {
            Some(parse_capabilities(c)?)
        }
        _ => None,
    };
    let success = detail.get("success").and_then(|s| match s {
        Value::String(s) => Some(s == "1" || s.eq_ignore_ascii_case("true")),
        Value::Bool(b) => Some(*b),
        Value::Number(n) => Some(n.as_i64() == Some(1)),
        _ => None,
    });
    Ok(MeetingEvent {
        id: id.to_owned(),
        event_type,
        region,
        time,
        occurred_at,
        meeting_id,
        external_meeting_id: optional_text(detail, "externalMeetingId")
            .filter(|s| s.chars().count() <= 64),
        media_region: optional_text(detail, "mediaRegion").filter(|s| s.len() <= 64),
        attendee,
        network_type: optional_text(detail, "networkType")
            .filter(|s| s.len() <= 32 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')),
        capabilities,
        success,
    })
}

fn parse_capabilities(v: &Value) -> Result<Capabilities, Rejection> {
    let one = |field: &str| -> Result<Capability, Rejection> {
        let s = v
            .get(field)
            .or_else(|| v.get(capitalised(field).as_str()))
            .and_then(Value::as_str)
            .ok_or_else(|| Rejection::BadCapabilities(format!("{field} is missing")))?;
        s.parse()
            .map_err(|e: crate::domain::DomainError| Rejection::BadCapabilities(e.to_string()))
    };
    Ok(Capabilities {
        audio: one("audio")?,
        video: one("video")?,
        content: one("content")?,
    })
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
        .unwrap_or_default()
}

impl MeetingEvent {
    /// The event as EventBridge delivers it to an SQS target (the message body).
    pub fn to_body(&self, account: &str) -> String {
        let mut detail = json!({
            "version": "0",
            "eventType": self.event_type.wire(),
            "timestamp": self.occurred_at.timestamp_millis(),
            "meetingId": self.meeting_id.as_str(),
        });
        let d = detail.as_object_mut().expect("a JSON object literal");
        if let Some(x) = &self.external_meeting_id {
            d.insert("externalMeetingId".into(), json!(x));
        }
        if let Some(m) = &self.media_region {
            d.insert("mediaRegion".into(), json!(m));
        }
        if let Some(a) = &self.attendee {
            d.insert("attendeeId".into(), json!(a.attendee_id.as_str()));
            if let Some(u) = &a.external_user_id {
                d.insert("externalUserId".into(), json!(u.as_str()));
            }
        }
        if let Some(n) = &self.network_type {
            d.insert("networkType".into(), json!(n));
        }
        if let Some(c) = &self.capabilities {
            d.insert(
                "attendeeCapabilities".into(),
                json!({"audio": c.audio.as_str(), "video": c.video.as_str(), "content": c.content.as_str()}),
            );
        }
        if let Some(s) = self.success {
            d.insert("success".into(), json!(if s { "1" } else { "0" }));
        }
        json!({
            "version": "0",
            "id": self.id,
            "detail-type": DETAIL_TYPE,
            "source": SOURCE,
            "account": account,
            "time": self.time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "region": self.region.as_str(),
            "resources": [],
            "detail": detail,
        })
        .to_string()
    }
}

/// Wraps an event body in an SNS notification envelope (SNS to SQS without raw delivery).
pub fn sns_envelope(body: &str, topic_arn: &str) -> String {
    json!({
        "Type": "Notification",
        "MessageId": uuid::Uuid::new_v4().to_string(),
        "TopicArn": topic_arn,
        "Message": body,
        "Timestamp": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "SignatureVersion": "1",
    })
    .to_string()
}

#[cfg(test)]
mod tests;
