//! Validated domain values shared by every module: meeting and attendee ids, capabilities,
//! a roster entry and the events `diff` produces.
//!
//! Nothing here does I/O. A value of these types has passed validation, so an invalid id
//! cannot reach the store or the API. There is deliberately no type that can hold a JoinToken.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a string was refused as a domain value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DomainError {
    #[error(
        "{kind} {value:?} is not a GUID (expected 8-4-4-4-12 hexadecimal digits, e.g. 4f1c7a2e-0b3d-4c5e-9f60-7a8b9c0d1e2f)"
    )]
    NotAGuid { kind: &'static str, value: String },
    #[error("capability {0:?} is not one of SendReceive, Send, Receive, None")]
    BadCapability(String),
    #[error("left reason {0:?} is not one of removed, meeting_ended, tracking_stopped")]
    BadLeftReason(String),
    #[error(
        "event kind {0:?} is not one of joined, left, capabilities_changed, connected, disconnected, video_started, video_stopped, content_started, content_stopped"
    )]
    BadEventKind(String),
    #[error("region {0:?} is not an AWS region name (e.g. us-east-1)")]
    BadRegion(String),
}

/// `[a-fA-F0-9]{8}(-[a-fA-F0-9]{4}){3}-[a-fA-F0-9]{12}`, the model's `GuidString` pattern.
pub fn is_guid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

macro_rules! guid_newtype {
    ($name:ident, $kind:literal) => {
        #[doc = concat!("A ", $kind, ", validated against the model's GUID pattern and kept in lower case,")]
        /// the form AWS issues, so the same id typed in another case is the same key.
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// # Errors
            /// [`DomainError::NotAGuid`] when `s` does not match the GUID pattern.
            pub fn parse(s: &str) -> Result<Self, DomainError> {
                let t = s.trim();
                if is_guid(t) {
                    Ok(Self(t.to_ascii_lowercase()))
                } else {
                    Err(DomainError::NotAGuid { kind: $kind, value: s.to_owned() })
                }
            }

            /// As [`Self::parse`], keeping `s`'s buffer when it needs no trimming (the ids in
            /// a `ListAttendees` page: no copy per attendee).
            ///
            /// # Errors
            /// [`DomainError::NotAGuid`] when `s` does not match the GUID pattern.
            pub fn parse_owned(mut s: String) -> Result<Self, DomainError> {
                if is_guid(&s) {
                    s.make_ascii_lowercase();
                    Ok(Self(s))
                } else {
                    Self::parse(&s)
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            // `pad`, not `write_str`: a table's `{:<36}` must get its width.
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = DomainError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

guid_newtype!(MeetingId, "meeting id");
guid_newtype!(AttendeeId, "attendee id");

/// An AWS region name such as `us-east-1`. Only the shape is checked (lower-case letters,
/// digits and dashes), so new regions work without a release.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize)]
#[serde(transparent)]
pub struct Region(String);

impl Region {
    /// # Errors
    /// [`DomainError::BadRegion`] when `s` is empty or holds anything but `[a-z0-9-]`.
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        let ok = !s.is_empty()
            && s.len() <= 32
            && s.contains('-')
            && s.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(DomainError::BadRegion(s.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl<'de> Deserialize<'de> for Region {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The application's identifier for a person. The service model marks it `sensitive`, so
/// `Debug` redacts it; `Display` and [`ExternalUserId::as_str`] give the value to code that
/// must store or show it on purpose (the store, `report`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ExternalUserId(String);

impl ExternalUserId {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ExternalUserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.alternate() {
            // `{:#?}` is the explicit request to see the value.
            write!(f, "{:?}", self.0)
        } else {
            f.write_str("ExternalUserId(<redacted>)")
        }
    }
}

impl fmt::Display for ExternalUserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

/// One media capability, as the model's `MediaCapabilities` enum spells it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub enum Capability {
    SendReceive,
    Send,
    Receive,
    None,
}

impl Capability {
    pub const ALL: [Capability; 4] = [Self::SendReceive, Self::Send, Self::Receive, Self::None];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::SendReceive => "SendReceive",
            Self::Send => "Send",
            Self::Receive => "Receive",
            Self::None => "None",
        }
    }

    /// True for `SendReceive` and `Receive`: the values the content rule looks at.
    pub fn receives(self) -> bool {
        matches!(self, Self::SendReceive | Self::Receive)
    }
}

impl FromStr for Capability {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| DomainError::BadCapability(s.to_owned()))
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Audio, video and content capabilities of one attendee.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct Capabilities {
    pub audio: Capability,
    pub video: Capability,
    pub content: Capability,
}

impl Capabilities {
    /// What an attendee created without capabilities gets.
    pub const DEFAULT: Capabilities = Capabilities {
        audio: Capability::SendReceive,
        video: Capability::SendReceive,
        content: Capability::SendReceive,
    };

    /// The service's rule: content `SendReceive`/`Receive` needs video `SendReceive`/`Receive`.
    pub fn is_allowed(&self) -> bool {
        !self.content.receives() || self.video.receives()
    }
}

impl Default for Capabilities {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// One attendee of a roster as roster-sync keeps it. There is no JoinToken field on purpose.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Attendee {
    pub attendee_id: AttendeeId,
    pub external_user_id: ExternalUserId,
    pub capabilities: Capabilities,
}

/// A complete roster: every page of one `ListAttendees` sweep, sorted by attendee id.
/// Only `chime` builds one from the API, and only when every page arrived.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Roster {
    attendees: Vec<Attendee>,
}

impl Roster {
    /// Sorts by attendee id and keeps the first of any duplicate id (a page boundary that
    /// shifted under concurrent changes can repeat an attendee).
    pub fn new(mut attendees: Vec<Attendee>) -> Self {
        attendees.sort_by(|a, b| a.attendee_id.cmp(&b.attendee_id));
        attendees.dedup_by(|b, a| a.attendee_id == b.attendee_id);
        Self { attendees }
    }

    pub fn attendees(&self) -> &[Attendee] {
        &self.attendees
    }

    pub fn into_attendees(self) -> Vec<Attendee> {
        self.attendees
    }

    pub fn len(&self) -> usize {
        self.attendees.len()
    }

    pub fn is_empty(&self) -> bool {
        self.attendees.is_empty()
    }

    /// See [`fingerprint`].
    pub fn fingerprint(&self) -> Fingerprint {
        fingerprint(&self.attendees)
    }
}

/// A 128-bit digest of a sorted attendee list (ids, external user ids, capabilities).
/// The scheduler keeps this instead of whole snapshots: when a new roster has the same
/// fingerprint as the recorded one, nothing changed and the snapshot need not be read.
pub type Fingerprint = u128;

/// Digest of `attendees` in their order (rosters and snapshots are both sorted by id).
pub fn fingerprint(attendees: &[Attendee]) -> Fingerprint {
    use std::hash::{DefaultHasher, Hash, Hasher};
    // Two independently seeded 64-bit SipHash digests: a collision, which would hide a
    // change until the next one, is out of practical reach.
    let mut h1 = DefaultHasher::new();
    let mut h2 = DefaultHasher::new();
    0x5eed_0001_u64.hash(&mut h1);
    0x5eed_0002_u64.hash(&mut h2);
    for a in attendees {
        for h in [&mut h1, &mut h2] {
            a.attendee_id.hash(h);
            a.external_user_id.hash(h);
            a.capabilities.hash(h);
        }
    }
    (u128::from(h1.finish()) << 64) | u128::from(h2.finish())
}

/// The kinds of change roster-sync records (`roster_events.kind`): the roster's three, from
/// polls, and presence's six, from meeting events (see `presence.rs`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Joined,
    Left,
    CapabilitiesChanged,
    Connected,
    Disconnected,
    VideoStarted,
    VideoStopped,
    ContentStarted,
    ContentStopped,
}

impl EventKind {
    pub const ALL: [EventKind; 9] = [
        Self::Joined,
        Self::Left,
        Self::CapabilitiesChanged,
        Self::Connected,
        Self::Disconnected,
        Self::VideoStarted,
        Self::VideoStopped,
        Self::ContentStarted,
        Self::ContentStopped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Joined => "joined",
            Self::Left => "left",
            Self::CapabilitiesChanged => "capabilities_changed",
            Self::Connected => "connected",
            Self::Disconnected => "disconnected",
            Self::VideoStarted => "video_started",
            Self::VideoStopped => "video_stopped",
            Self::ContentStarted => "content_started",
            Self::ContentStopped => "content_stopped",
        }
    }

    /// True for the kinds presence records (who is connected), false for the roster's.
    pub fn is_presence(self) -> bool {
        !matches!(self, Self::Joined | Self::Left | Self::CapabilitiesChanged)
    }
}

impl FromStr for EventKind {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| DomainError::BadEventKind(s.to_owned()))
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// Why an attendee left the roster (`roster_events.reason`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeftReason {
    /// DeleteAttendee happened between two polls.
    Removed,
    /// The meeting answered 404/403: it is over.
    MeetingEnded,
    /// An operator stopped tracking the meeting.
    TrackingStopped,
}

impl LeftReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Removed => "removed",
            Self::MeetingEnded => "meeting_ended",
            Self::TrackingStopped => "tracking_stopped",
        }
    }
}

impl FromStr for LeftReason {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::Removed, Self::MeetingEnded, Self::TrackingStopped]
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| DomainError::BadLeftReason(s.to_owned()))
    }
}

impl fmt::Display for LeftReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// One change between two rosters, before it is stored. The store adds `event_id`,
/// `meeting_id`, `observed_at` and `previous_poll_at`.
///
/// - `Joined`: `after` set, `before` none, `reason` none.
/// - `Left`: `after` none, `before` = the last known capabilities, `reason` set.
/// - `CapabilitiesChanged`: both set, `reason` none.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Change {
    pub kind: EventKind,
    pub attendee_id: AttendeeId,
    pub external_user_id: ExternalUserId,
    pub after: Option<Capabilities>,
    pub before: Option<Capabilities>,
    pub reason: Option<LeftReason>,
}

impl Change {
    pub fn joined(a: &Attendee) -> Self {
        Self {
            kind: EventKind::Joined,
            attendee_id: a.attendee_id.clone(),
            external_user_id: a.external_user_id.clone(),
            after: Some(a.capabilities),
            before: None,
            reason: None,
        }
    }

    pub fn left(a: &Attendee, reason: LeftReason) -> Self {
        Self {
            kind: EventKind::Left,
            attendee_id: a.attendee_id.clone(),
            external_user_id: a.external_user_id.clone(),
            after: None,
            before: Some(a.capabilities),
            reason: Some(reason),
        }
    }

    pub fn capabilities_changed(before: &Attendee, after: &Attendee) -> Self {
        Self {
            kind: EventKind::CapabilitiesChanged,
            attendee_id: after.attendee_id.clone(),
            external_user_id: after.external_user_id.clone(),
            after: Some(after.capabilities),
            before: Some(before.capabilities),
            reason: None,
        }
    }
}

/// Timestamps are kept at microsecond precision, the finest both Postgres and our SQLite
/// encoding hold, so a value read back compares equal to the one written. The reading is
/// [`crate::clock::now`]: the host's clock, or in cluster mode the database's.
pub fn now() -> chrono::DateTime<chrono::Utc> {
    use chrono::SubsecRound;
    crate::clock::now().trunc_subsecs(6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displayed_values_honour_width_and_alignment() {
        let region = Region::parse("us-east-1").unwrap();
        assert_eq!(format!("[{region:<14}]"), "[us-east-1     ]");
        assert_eq!(format!("[{region:>12}]"), "[   us-east-1]");
        let id = MeetingId::parse("4f1c7a2e-0b3d-4c5e-9f60-7a8b9c0d1e2f").unwrap();
        assert_eq!(format!("{id:<40}|").chars().count(), 41);
        let who = ExternalUserId::new("Zoë");
        assert_eq!(format!("[{who:<5}]"), "[Zoë  ]");
        assert_eq!(format!("[{:<8}]", EventKind::Left), "[left    ]");
        assert_eq!(format!("[{:<8}]", LeftReason::Removed), "[removed ]");
        assert_eq!(format!("[{:<8}]", Capability::None), "[None    ]");
    }

    #[test]
    fn meeting_id_accepts_guid_and_lowercases_it() {
        let id = MeetingId::parse("4F1C7A2E-0B3D-4C5E-9F60-7A8B9C0D1E2F").unwrap();
        assert_eq!(id.as_str(), "4f1c7a2e-0b3d-4c5e-9f60-7a8b9c0d1e2f");
    }

    #[test]
    fn meeting_id_refuses_non_guid_and_names_it() {
        let err = MeetingId::parse("not-a-meeting").unwrap_err();
        assert!(err.to_string().contains("not-a-meeting"), "{err}");
        assert!(MeetingId::parse("4f1c7a2e-0b3d-4c5e-9f60-7a8b9c0d1e2").is_err());
        assert!(MeetingId::parse("4f1c7a2e_0b3d-4c5e-9f60-7a8b9c0d1e2f").is_err());
        assert!(MeetingId::parse("gf1c7a2e-0b3d-4c5e-9f60-7a8b9c0d1e2f").is_err());
    }

    #[test]
    fn an_owned_attendee_id_parses_as_a_borrowed_one() {
        for text in [
            "4F1C7A2E-0B3D-4C5E-9F60-7A8B9C0D1E2F",
            " 4f1c7a2e-0b3d-4c5e-9f60-7a8b9c0d1e2f ",
            "4f1c7a2e-0b3d-4c5e-9f60-7a8b9c0d1e2",
            "not-an-attendee",
        ] {
            let owned = AttendeeId::parse_owned(text.to_owned()).map_err(|e| e.to_string());
            let borrowed = AttendeeId::parse(text).map_err(|e| e.to_string());
            assert_eq!(owned, borrowed, "{text:?}");
        }
    }

    #[test]
    fn external_user_id_debug_is_redacted_unless_asked() {
        let e = ExternalUserId::new("alice@example.com");
        assert!(!format!("{e:?}").contains("alice"));
        assert!(format!("{e:#?}").contains("alice"));
    }

    #[test]
    fn content_receive_needs_video_receive() {
        let mut c = Capabilities::DEFAULT;
        assert!(c.is_allowed());
        c.video = Capability::Send;
        assert!(!c.is_allowed());
        c.content = Capability::Send;
        assert!(c.is_allowed());
    }

    #[test]
    fn roster_is_sorted_and_deduplicated() {
        let a = |id: &str| Attendee {
            attendee_id: AttendeeId::parse(id).unwrap(),
            external_user_id: ExternalUserId::new("x"),
            capabilities: Capabilities::DEFAULT,
        };
        let r = Roster::new(vec![
            a("00000000-0000-0000-0000-000000000002"),
            a("00000000-0000-0000-0000-000000000001"),
            a("00000000-0000-0000-0000-000000000002"),
        ]);
        assert_eq!(r.len(), 2);
        assert_eq!(
            r.attendees()[0].attendee_id.as_str(),
            "00000000-0000-0000-0000-000000000001"
        );
    }
}
