//! The rows the store hands out and takes in (`TrackedMeeting`, `StoredEvent`, `PollRecord`,
//! …), the checks a poll's changes pass before they are written, and the decoding of stored
//! text back into domain values.
//!
//! No SQL runs here: `store.rs` and the backend files write it.

use super::*;

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
    /// The error code of the last failed poll (`AccessDeniedException`, `NotFoundException`,
    /// …), or a stand-in in parentheses for an answer without one.
    pub last_error_code: Option<String>,
    pub last_error: Option<String>,
    /// When `last_error` happened; set exactly when `last_error` is.
    pub last_error_at: Option<DateTime<Utc>>,
}

/// The current snapshot of one meeting, as the previous recorded poll left it.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Sorted by attendee id.
    pub attendees: Vec<Attendee>,
    pub poll_seq: i64,
    pub last_polled_at: Option<DateTime<Utc>>,
    /// When the meeting was last moved to another control region (`meetings add --force`, a
    /// `[[meetings]]` entry naming another region), if ever.
    pub region_changed_at: Option<DateTime<Utc>>,
}

impl Snapshot {
    /// Whether the meeting has answered a complete poll in the region it is tracked in now:
    /// a recorded poll that started after the last region move. A poll in the old region says
    /// nothing about the new one, where a `NotFoundException` may only mean "wrong region".
    pub fn answered_in_current_region(&self) -> bool {
        match (self.last_polled_at, self.region_changed_at) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(polled), Some(moved)) => polled > moved,
        }
    }
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
    /// Set exactly on the presence kinds (`EventKind::is_presence`).
    pub presence: Option<PresenceFacts>,
}

/// What a presence row says beyond the common columns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresenceFacts {
    /// When it happened: the Chime timestamp, or inside `inferred` when no event gave it.
    pub occurred_at: DateTime<Utc>,
    pub source: crate::presence::Source,
    /// The window of an inferred boundary.
    pub inferred: Option<crate::presence::Window>,
    /// On `connected`, from the event.
    pub network_type: Option<String>,
    /// On `disconnected`.
    pub reason: Option<crate::presence::DisconnectReason>,
}

/// The detail the CLI shows for a presence row: the reason, the network type, and when it
/// happened if that differs from when it was recorded, with `inferred` and its window.
pub fn describe_presence(facts: Option<&PresenceFacts>) -> String {
    let Some(f) = facts else {
        return String::new();
    };
    let mut parts = Vec::new();
    if let Some(r) = f.reason {
        parts.push(r.as_str().to_owned());
    }
    if let Some(n) = &f.network_type {
        parts.push(n.clone());
    }
    parts.push(format!("at {}", f.occurred_at.format("%H:%M:%S%.3f")));
    if let Some(w) = f.inferred {
        parts.push(format!(
            "inferred within {}..{}",
            w.from.format("%H:%M:%S"),
            w.to.format("%H:%M:%S")
        ));
    }
    if f.source == crate::presence::Source::Poll {
        parts.push("proved by a poll".into());
    }
    parts.join(", ")
}

/// Everything one batch of meeting events wants recorded for one meeting.
#[derive(Clone, Debug)]
pub struct PresenceRecord<'a> {
    pub meeting_id: &'a MeetingId,
    /// [`crate::presence::PresenceContext::fence`] of the context the changes were computed from.
    pub fence: i64,
    /// The envelope ids applied (including those that changed nothing): each counts once.
    pub envelope_ids: &'a [String],
    /// In order; each attendee must be in the snapshot.
    pub changes: &'a [crate::presence::PresenceChange],
    /// When the batch is recorded: the rows' `observed_at`.
    pub observed_at: DateTime<Utc>,
}

/// Everything one poll wants recorded.
#[derive(Clone, Debug)]
pub struct PollRecord<'a> {
    pub meeting_id: &'a MeetingId,
    /// `poll_seq` of the snapshot the changes were computed against.
    pub expected_seq: i64,
    /// When the poll started fetching. It becomes `last_polled_at`, the lower end of the next
    /// poll's change window: an attendee created while this poll was paging may be missing from
    /// it, so the next poll cannot claim the change happened after `observed_at`.
    pub started_at: DateTime<Utc>,
    /// When the last page arrived: every event's `observed_at`.
    pub observed_at: DateTime<Utc>,
    pub previous_poll_at: Option<DateTime<Utc>>,
    /// At most one change per attendee, as `diff` produces them; stored in this order.
    pub changes: &'a [Change],
}

/// What `apply` did.
#[derive(Clone, Debug)]
pub enum ApplyOutcome {
    /// Recorded; the events as stored, in `event_id` order, and the new `poll_seq`.
    Applied {
        events: Vec<StoredEvent>,
        poll_seq: i64,
    },
    /// The meeting's `poll_seq` moved or it is no longer active: nothing was written.
    Conflict,
}

/// The bookkeeping of one poll that found the roster unchanged, for
/// [`Store::record_unchanged_polls`]: the scheduler records these in batches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnchangedPoll {
    pub meeting_id: MeetingId,
    /// `poll_seq` the poll's fingerprint was compared against; the fence, as in `apply`.
    pub expected_seq: i64,
    /// When the poll started fetching: the new `last_polled_at`.
    pub started_at: DateTime<Utc>,
    /// In cluster mode, the lease token the poll ran under: recorded only while it holds.
    pub fence: Option<LeaseToken>,
}

/// See [`Store::meetings_version`]. Compare two for equality; the fields mean nothing alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeetingsVersion {
    pub(in crate::store) active: i64,
    pub(in crate::store) last_added: Option<DateTime<Utc>>,
    pub(in crate::store) last_ended: Option<DateTime<Utc>>,
    pub(in crate::store) last_moved: Option<DateTime<Utc>>,
}

/// What `add_meeting` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddOutcome {
    Added,
    AlreadyTracked,
    /// It had been stopped; it is active again.
    Reactivated,
    /// It ended (the service said it is gone) and `force` was not given: nothing changed.
    AlreadyEnded,
    /// It had ended; `force` made it active again.
    Revived,
    /// It is active in another region and `force` was not given: nothing changed.
    RegionDiffers {
        current: Region,
    },
    /// It was active in region `from`; `force` moved it.
    Moved {
        from: Region,
    },
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

/// Refuses changes that cannot be applied as a set: the snapshot update applies each kind of
/// change in bulk, which is only right when every attendee appears at most once.
pub(super) fn check_changes(meeting: &MeetingId, changes: &[Change]) -> Result<()> {
    let mut seen = HashSet::with_capacity(changes.len());
    for c in changes {
        if !seen.insert(&c.attendee_id) {
            return Err(StoreError::InvalidRecord(format!(
                "attendee {} of meeting {meeting} appears in more than one change",
                c.attendee_id
            )));
        }
        let fits = match c.kind {
            EventKind::Joined => c.after.is_some() && c.before.is_none() && c.reason.is_none(),
            EventKind::Left => c.after.is_none() && c.before.is_some() && c.reason.is_some(),
            EventKind::CapabilitiesChanged => {
                c.after.is_some() && c.before.is_some() && c.reason.is_none()
            }
            // A poll records roster changes only; presence has its own path.
            _ => false,
        };
        if !fits {
            return Err(StoreError::InvalidRecord(format!(
                "the {} change of attendee {} of meeting {meeting} lacks fields of its kind",
                c.kind, c.attendee_id
            )));
        }
    }
    Ok(())
}

/// Number of values [`event_values`] gives.
pub(super) const EVENT_VALUES: usize = 10;

/// The values of the `roster_events` row of `change`, in the order of the columns `attendee_id,
/// external_user_id, kind, audio, video, content, previous_audio, previous_video,
/// previous_content, reason` (the other columns are the same for every event of a poll).
pub(super) fn event_values(change: &Change) -> [Option<&str>; EVENT_VALUES] {
    let [audio, video, content] = capability_values(change.after);
    let [previous_audio, previous_video, previous_content] = capability_values(change.before);
    [
        Some(change.attendee_id.as_str()),
        Some(change.external_user_id.as_str()),
        Some(change.kind.as_str()),
        audio,
        video,
        content,
        previous_audio,
        previous_video,
        previous_content,
        change.reason.map(LeftReason::as_str),
    ]
}

pub(super) fn capability_values(caps: Option<Capabilities>) -> [Option<&'static str>; 3] {
    match caps {
        Some(c) => [
            Some(c.audio.as_str()),
            Some(c.video.as_str()),
            Some(c.content.as_str()),
        ],
        None => [None; 3],
    }
}

/// Turning stored text back into domain values. A value that does not parse is
/// [`StoreError::Corrupt`], naming the column.
pub(in crate::store) mod decode {
    use super::*;

    pub(in crate::store) fn parse<T>(column: &str, value: &str) -> Result<T>
    where
        T: FromStr,
        T::Err: Display,
    {
        value
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("column {column}: {e}")))
    }

    pub(in crate::store) fn meeting_id(value: &str) -> Result<MeetingId> {
        MeetingId::parse(value).map_err(|e| StoreError::Corrupt(format!("column meeting_id: {e}")))
    }

    pub(in crate::store) fn attendee_id(value: &str) -> Result<AttendeeId> {
        AttendeeId::parse(value)
            .map_err(|e| StoreError::Corrupt(format!("column attendee_id: {e}")))
    }

    pub(in crate::store) fn region(value: &str) -> Result<Region> {
        Region::parse(value).map_err(|e| StoreError::Corrupt(format!("column region: {e}")))
    }

    /// Three capability columns (`audio, video, content` or their `previous_` twins): all set
    /// or all NULL.
    pub(in crate::store) fn capabilities(
        columns: [&str; 3],
        values: [Option<String>; 3],
    ) -> Result<Option<Capabilities>> {
        match values {
            [None, None, None] => Ok(None),
            [Some(audio), Some(video), Some(content)] => Ok(Some(Capabilities {
                audio: parse::<Capability>(columns[0], &audio)?,
                video: parse::<Capability>(columns[1], &video)?,
                content: parse::<Capability>(columns[2], &content)?,
            })),
            _ => Err(StoreError::Corrupt(format!(
                "columns {}, {}, {} must be all set or all NULL",
                columns[0], columns[1], columns[2]
            ))),
        }
    }

    /// A `try_get` failure: a value of the wrong type is corruption; anything else (a missing
    /// column) is a bug reported as the database error it is.
    pub(in crate::store) fn column_error(column: &str, e: sqlx::Error) -> StoreError {
        match e {
            sqlx::Error::ColumnDecode { source, .. } => {
                StoreError::Corrupt(format!("column {column}: {source}"))
            }
            other => StoreError::Sqlx(other),
        }
    }
}
