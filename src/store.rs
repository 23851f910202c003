//! The only code that writes SQL. Postgres in production, SQLite as the embedded default.
//!
//! `apply` writes the new snapshot rows, the events and the poll bookkeeping of one poll in one
//! transaction, fenced by the meeting's `poll_seq`, so a poll is either fully recorded or not at
//! all. It must never store a JoinToken (no type here can hold one).

use chrono::{DateTime, Utc};

use crate::domain::{
    Attendee, AttendeeId, Capabilities, Change, EventKind, ExternalUserId, LeftReason, MeetingId,
    Region,
};

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database url {0:?} is neither postgres://… nor sqlite://…")]
    UnsupportedUrl(String),
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored row is invalid: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Locked(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Which database a [`Store`] talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// `tracked_meetings.status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MeetingStatus {
    Active,
    Ended,
    Stopped,
}

/// One row of `tracked_meetings`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TrackedMeeting {
    pub meeting_id: MeetingId,
    pub region: Region,
    pub label: Option<String>,
    pub status: MeetingStatus,
    pub added_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub last_polled_at: Option<DateTime<Utc>>,
    /// Fencing counter: bumped by every recorded poll; `apply` only succeeds if it is unchanged.
    pub poll_seq: i64,
    pub consecutive_failures: i32,
    pub last_error: Option<String>,
}

/// The current snapshot of one meeting, as the previous recorded poll left it.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Sorted by attendee id.
    pub attendees: Vec<Attendee>,
    pub poll_seq: i64,
    pub last_polled_at: Option<DateTime<Utc>>,
}

/// One row of `roster_events`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    pub event_id: i64,
    pub meeting_id: MeetingId,
    pub attendee_id: AttendeeId,
    pub external_user_id: ExternalUserId,
    pub kind: EventKind,
    pub after: Option<Capabilities>,
    pub before: Option<Capabilities>,
    pub reason: Option<LeftReason>,
    pub observed_at: DateTime<Utc>,
    pub previous_poll_at: Option<DateTime<Utc>>,
}

/// Everything one poll wants recorded.
#[derive(Clone, Debug)]
pub struct PollRecord<'a> {
    pub meeting_id: &'a MeetingId,
    /// `poll_seq` of the snapshot the changes were computed against.
    pub expected_seq: i64,
    pub observed_at: DateTime<Utc>,
    pub previous_poll_at: Option<DateTime<Utc>>,
    pub changes: &'a [Change],
}

/// What `apply` did.
#[derive(Clone, Debug)]
pub enum ApplyOutcome {
    /// Recorded; the events as stored, in `event_id` order, and the new `poll_seq`.
    Applied { events: Vec<StoredEvent>, poll_seq: i64 },
    /// The meeting's `poll_seq` moved or it is no longer active: nothing was written.
    Conflict,
}

/// What `add_meeting` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddOutcome {
    Added,
    AlreadyTracked,
    /// It had been stopped; it is active again.
    Reactivated,
    /// It ended (the service said it is gone); an ended meeting cannot come back.
    AlreadyEnded,
}

/// One row of the `attendance_sessions` view.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SessionRow {
    pub meeting_id: MeetingId,
    pub attendee_id: AttendeeId,
    pub external_user_id: ExternalUserId,
    pub joined_at: DateTime<Utc>,
    pub left_at: Option<DateTime<Utc>>,
    pub left_reason: Option<LeftReason>,
    pub duration_seconds: f64,
}

/// One row of the `meeting_attendance` view.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AttendanceRow {
    pub meeting_id: MeetingId,
    pub external_user_id: ExternalUserId,
    pub sessions: i64,
    pub first_joined_at: DateTime<Utc>,
    pub last_left_at: Option<DateTime<Utc>>,
    pub total_seconds: f64,
}
