//! Presence: who was connected, reconciled from meeting events and polls. Pure, like `diff`.
//!
//! The polled roster says who *exists* (attendees created and not deleted); the lifecycle
//! events say who is *connected*. Events are best effort (at least once, in no set order,
//! some never arrive), so this module turns them into presence changes under rules that never
//! invent a second session and mark every boundary no event gave:
//! - an event counts once per envelope id (the caller keeps the applied ids);
//! - events are applied in Chime-timestamp order ([`Reorder`] holds them for a short window
//!   so that reordered deliveries are applied in their place); an event older than the latest
//!   one applied for its attendee is **stale**: counted and ignored;
//! - `Dropped` then `Joined` are two sessions with the gap between them; `Authorized` (the join
//!   token used from another device) starts no session;
//! - a `Left`, `Dropped`, video or content event of an attendee with no open session opens
//!   one **inferred**, bounded below by what the roster and earlier events prove;
//! - a session with no `Left` is closed when a poll proves the attendee deleted, the meeting
//!   ended or tracking stopped ([`close_by_poll`]), inferred, inside the poll window.
//!
//! No async, no SQL, no clock: every time comes in as an argument.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};

use crate::domain::{AttendeeId, EventKind, ExternalUserId};

/// The presence kinds are [`EventKind`]s: they share `roster_events` with the roster's.
pub type PresenceKind = EventKind;
use crate::lifecycle::{EventType, MeetingEvent};

/// Why a presence session ended: `left`/`dropped` from an event, the rest proved by a poll.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum DisconnectReason {
    Left,
    Dropped,
    Removed,
    MeetingEnded,
    TrackingStopped,
}

impl DisconnectReason {
    pub const ALL: [DisconnectReason; 5] = [
        Self::Left,
        Self::Dropped,
        Self::Removed,
        Self::MeetingEnded,
        Self::TrackingStopped,
    ];

    /// The `reason` column's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Left => "left",
            Self::Dropped => "dropped",
            Self::Removed => "removed",
            Self::MeetingEnded => "meeting_ended",
            Self::TrackingStopped => "tracking_stopped",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Where a presence boundary came from.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Source {
    /// A meeting event gave it (its `occurred_at` is the Chime timestamp, unless inferred).
    MeetingEvent,
    /// A poll proved it (deleted, meeting ended, tracking stopped).
    Poll,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MeetingEvent => "meeting_event",
            Self::Poll => "poll",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::MeetingEvent, Self::Poll]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// The interval in which an inferred boundary happened. `occurred_at` of an inferred change
/// lies inside it (it is the earliest moment, so durations are never under-counted by an
/// unknown start and never over-counted by an unknown end, which takes the latest).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Window {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

/// One presence change to record.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PresenceChange {
    pub attendee_id: AttendeeId,
    pub kind: PresenceKind,
    /// Set on `disconnected` only.
    pub reason: Option<DisconnectReason>,
    pub occurred_at: DateTime<Utc>,
    pub source: Source,
    /// `Some` exactly when the boundary was inferred.
    pub inferred: Option<Window>,
    /// On `connected`, from the event that opened the session.
    pub network_type: Option<String>,
}

/// What is known of one attendee's presence: enough to apply the next event. The store
/// rebuilds it from the recorded presence changes.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct AttendeePresence {
    /// When the open session started, if one is open.
    pub connected_since: Option<DateTime<Utc>>,
    pub video_since: Option<DateTime<Utc>>,
    pub content_since: Option<DateTime<Utc>>,
    /// The latest boundary recorded for the attendee: no later change may start before it.
    pub last_at: Option<DateTime<Utc>>,
    /// An `Authorized` arrived in the open session: the next `Joined` is the hand-off's new
    /// device, not a new session. Kept in memory only; lost on restart, which at worst turns
    /// one hand-off into an inferred boundary.
    pub handoff: bool,
}

/// What happened to one event.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Verdict {
    /// Recorded as these changes (possibly none: an event that changes nothing, such as a
    /// `Joined` of an attendee already connected or an `Authorized` hand-off).
    Applied(Vec<PresenceChange>),
    /// Older than a change already recorded for its attendee: counted and ignored.
    Stale,
    /// Not a presence event (roster and meeting events are hints only).
    NotPresence,
}

impl Verdict {
    /// The `outcome` label for metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Applied(c) if c.is_empty() => "no_change",
            Self::Applied(_) => "applied",
            Self::Stale => "stale",
            Self::NotPresence => "hint_only",
        }
    }
}

/// True for the event types that say something about who is connected.
pub fn is_presence_event(t: EventType) -> bool {
    use EventType::*;
    matches!(
        t,
        AttendeeJoined
            | AttendeeLeft
            | AttendeeDropped
            | AttendeeAuthorized
            | AttendeeVideoStarted
            | AttendeeVideoStopped
            | AttendeeContentJoined
            | AttendeeContentLeft
            | AttendeeContentDropped
            | AttendeeContentVideoStarted
            | AttendeeContentVideoStopped
    )
}

/// Applies one presence event of an attendee the roster knows. `known_since` is the
/// earliest moment the roster allows the attendee to have existed (the `previous_poll_at` of
/// its `joined`, or that `joined`'s `observed_at` on a first poll): an inferred start is never
/// earlier.
pub fn apply_event(
    state: &mut AttendeePresence,
    event: &MeetingEvent,
    known_since: DateTime<Utc>,
) -> Verdict {
    let Some(attendee) = &event.attendee else {
        return Verdict::NotPresence;
    };
    if !is_presence_event(event.event_type) {
        return Verdict::NotPresence;
    }
    let at = event.occurred_at;
    if state.last_at.is_some_and(|last| at < last) {
        return Verdict::Stale;
    }
    let id = &attendee.attendee_id;
    let mut out = Vec::new();
    use EventType::*;
    match event.event_type {
        AttendeeJoined => {
            if state.connected_since.is_some() && !std::mem::take(&mut state.handoff) {
                // Joined again with no hand-off: the leave between was lost. The session
                // ends inferred, at the latest moment it could have (this join).
                let from = state
                    .last_at
                    .into_iter()
                    .chain(state.connected_since)
                    .max()
                    .unwrap_or(at);
                let window = Window {
                    from: from.min(at),
                    to: at,
                };
                close(
                    state,
                    id,
                    at,
                    DisconnectReason::Left,
                    Source::MeetingEvent,
                    Some(window),
                    &mut out,
                );
            }
            if state.connected_since.is_none() {
                out.push(connected(id, at, None, event.network_type.clone()));
                state.connected_since = Some(at);
            }
        }
        AttendeeAuthorized => state.handoff = state.connected_since.is_some(),
        AttendeeLeft | AttendeeDropped => {
            open_inferred(state, id, at, known_since, &mut out);
            let reason = if event.event_type == AttendeeLeft {
                DisconnectReason::Left
            } else {
                DisconnectReason::Dropped
            };
            close(state, id, at, reason, Source::MeetingEvent, None, &mut out);
        }
        AttendeeVideoStarted => {
            open_inferred(state, id, at, known_since, &mut out);
            if state.video_since.is_none() {
                out.push(plain(id, PresenceKind::VideoStarted, at));
                state.video_since = Some(at);
            }
        }
        AttendeeVideoStopped => {
            open_inferred(state, id, at, known_since, &mut out);
            if state.video_since.take().is_some() {
                out.push(plain(id, PresenceKind::VideoStopped, at));
            }
        }
        AttendeeContentJoined | AttendeeContentVideoStarted => {
            open_inferred(state, id, at, known_since, &mut out);
            if state.content_since.is_none() {
                out.push(plain(id, PresenceKind::ContentStarted, at));
                state.content_since = Some(at);
            }
        }
        AttendeeContentLeft | AttendeeContentDropped | AttendeeContentVideoStopped => {
            open_inferred(state, id, at, known_since, &mut out);
            if state.content_since.take().is_some() {
                out.push(plain(id, PresenceKind::ContentStopped, at));
            }
        }
        _ => return Verdict::NotPresence,
    }
    if !out.is_empty() {
        state.last_at = Some(at);
    }
    Verdict::Applied(out)
}

/// Closes what a poll proved over: the attendee was deleted (`Removed`), the meeting ended
/// (`MeetingEnded`) or tracking stopped (`TrackingStopped`). The poll window is
/// `previous_poll_at..observed_at`; the boundary is inferred within it, and never before the
/// attendee's latest recorded change.
pub fn close_by_poll(
    state: &mut AttendeePresence,
    attendee_id: &AttendeeId,
    reason: DisconnectReason,
    previous_poll_at: Option<DateTime<Utc>>,
    observed_at: DateTime<Utc>,
) -> Vec<PresenceChange> {
    let mut out = Vec::new();
    if state.connected_since.is_none() {
        return out;
    }
    let floor = state.last_at.into_iter().chain(state.connected_since).max();
    let from = previous_poll_at
        .into_iter()
        .chain(floor)
        .max()
        .unwrap_or(observed_at)
        .min(observed_at);
    let window = Window {
        from,
        to: observed_at,
    };
    // The latest moment: an unknown end never shortens a session the events proved.
    let at = observed_at;
    close(
        state,
        attendee_id,
        at,
        reason,
        Source::Poll,
        Some(window),
        &mut out,
    );
    state.last_at = Some(at);
    out
}

fn connected(
    id: &AttendeeId,
    at: DateTime<Utc>,
    inferred: Option<Window>,
    network_type: Option<String>,
) -> PresenceChange {
    PresenceChange {
        attendee_id: id.clone(),
        kind: PresenceKind::Connected,
        reason: None,
        occurred_at: at,
        source: Source::MeetingEvent,
        inferred,
        network_type,
    }
}

fn plain(id: &AttendeeId, kind: PresenceKind, at: DateTime<Utc>) -> PresenceChange {
    PresenceChange {
        attendee_id: id.clone(),
        kind,
        reason: None,
        occurred_at: at,
        source: Source::MeetingEvent,
        inferred: None,
        network_type: None,
    }
}

/// A missing `Joined`: opens a session that started somewhere between what is proved
/// (the roster's lower bound, the attendee's latest change) and `at`. It takes the earliest
/// moment of that window.
fn open_inferred(
    state: &mut AttendeePresence,
    id: &AttendeeId,
    at: DateTime<Utc>,
    known_since: DateTime<Utc>,
    out: &mut Vec<PresenceChange>,
) {
    if state.connected_since.is_some() {
        return;
    }
    let from = state
        .last_at
        .map_or(known_since, |l| l.max(known_since))
        .min(at);
    out.push(connected(id, from, Some(Window { from, to: at }), None));
    state.connected_since = Some(from);
}

fn close(
    state: &mut AttendeePresence,
    id: &AttendeeId,
    at: DateTime<Utc>,
    reason: DisconnectReason,
    source: Source,
    inferred: Option<Window>,
    out: &mut Vec<PresenceChange>,
) {
    if state.video_since.take().is_some() {
        out.push(PresenceChange {
            source,
            inferred,
            ..plain(id, PresenceKind::VideoStopped, at)
        });
    }
    if state.content_since.take().is_some() {
        out.push(PresenceChange {
            source,
            inferred,
            ..plain(id, PresenceKind::ContentStopped, at)
        });
    }
    state.handoff = false;
    if state.connected_since.take().is_some() {
        out.push(PresenceChange {
            attendee_id: id.clone(),
            kind: PresenceKind::Disconnected,
            reason: Some(reason),
            occurred_at: at,
            source,
            inferred,
            network_type: None,
        });
    }
}

/// Where an event goes among events of the same millisecond (Chime's timestamps are in
/// milliseconds, and a leave stops video in the same one): a session opens before what
/// happens in it, and what happens in it before the session closes.
pub fn same_instant_rank(t: EventType) -> u8 {
    use EventType::*;
    match t {
        AttendeeJoined => 0,
        AttendeeAuthorized => 1,
        AttendeeVideoStarted | AttendeeContentJoined | AttendeeContentVideoStarted => 2,
        AttendeeVideoStopped
        | AttendeeContentVideoStopped
        | AttendeeContentLeft
        | AttendeeContentDropped => 3,
        AttendeeLeft | AttendeeDropped => 4,
        _ => 5,
    }
}

/// The order events are applied in: Chime timestamp, then [`same_instant_rank`], then
/// envelope id (so that the order is the same whoever applies them).
pub fn order_key(e: &MeetingEvent) -> (DateTime<Utc>, u8, &str) {
    (
        e.occurred_at,
        same_instant_rank(e.event_type),
        e.id.as_str(),
    )
}

/// An owned [`order_key`].
type OrderKey = (DateTime<Utc>, u8, String);

/// Holds events for `window` after they arrive and releases them in Chime-timestamp order,
/// so that a delivery reordered by up to `window` is applied in its place.
#[derive(Debug)]
pub struct Reorder {
    window: TimeDelta,
    /// [`order_key`] → (arrived, event); an id pushed twice is kept once.
    held: BTreeMap<OrderKey, (DateTime<Utc>, MeetingEvent)>,
}

impl Reorder {
    pub fn new(window: TimeDelta) -> Self {
        Self {
            window,
            held: BTreeMap::new(),
        }
    }

    /// Holds `event`, which arrived at `now`.
    pub fn push(&mut self, event: MeetingEvent, now: DateTime<Utc>) {
        let key = (
            event.occurred_at,
            same_instant_rank(event.event_type),
            event.id.clone(),
        );
        self.held.entry(key).or_insert((now, event));
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// When the next event is due for release, if any is held.
    pub fn next_release(&self) -> Option<DateTime<Utc>> {
        self.held
            .values()
            .map(|(arrived, _)| *arrived + self.window)
            .min()
    }

    /// Releases, in timestamp order, every event held for `window` and every event stamped
    /// no later than one of those (it cannot be applied after them without being stale).
    pub fn release(&mut self, now: DateTime<Utc>) -> Vec<MeetingEvent> {
        let horizon = self
            .held
            .iter()
            .filter(|(_, (arrived, _))| *arrived + self.window <= now)
            .map(|((at, _, _), _)| *at)
            .max();
        let Some(horizon) = horizon else {
            return Vec::new();
        };
        let keep = self
            .held
            .split_off(&(horizon + TimeDelta::nanoseconds(1), 0, String::new()));
        let released = std::mem::replace(&mut self.held, keep);
        released.into_values().map(|(_, e)| e).collect()
    }

    /// Releases everything held, in timestamp order (shutdown, or a meeting that ended).
    pub fn drain(&mut self) -> Vec<MeetingEvent> {
        std::mem::take(&mut self.held)
            .into_values()
            .map(|(_, e)| e)
            .collect()
    }
}

/// The external user id to record for a presence change: the roster's, which is the
/// authority on who an attendee is; the event's is only a fallback.
pub fn external_user_id<'a>(
    roster: Option<&'a ExternalUserId>,
    event: Option<&'a ExternalUserId>,
) -> Option<&'a ExternalUserId> {
    roster.or(event)
}

/// What the presence reconciler needs of one meeting, read in one go
/// (`Store::presence_context`); `fence` makes `Store::apply_presence` refuse to write if
/// another writer recorded presence for the meeting meanwhile.
#[derive(Clone, Debug, Default)]
pub struct PresenceContext {
    /// False when the meeting is not tracked or no longer active: its events are not applied.
    pub active: bool,
    /// Every attendee of the current snapshot: who they are and since when the roster allows
    /// them to have existed (the lower bound of an inferred start).
    pub roster: std::collections::HashMap<AttendeeId, (ExternalUserId, DateTime<Utc>)>,
    /// Each attendee's presence so far, rebuilt from the recorded presence rows.
    pub state: std::collections::HashMap<AttendeeId, AttendeePresence>,
    /// The newest presence `event_id` of the meeting (0 when none).
    pub fence: i64,
}

/// What [`plan`] decided for a batch of one meeting's events.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// The presence changes to record, in order.
    pub changes: Vec<PresenceChange>,
    /// The envelope ids the batch applied (changing something or not): recorded with the
    /// changes, so that each counts once.
    pub applied: Vec<String>,
    /// Events of attendees the roster does not know yet: held until a poll shows them.
    pub unknown: Vec<MeetingEvent>,
    /// Each event's outcome (`applied`, `no_change`, `stale`, `duplicate`, `hint_only`,
    /// `meeting_not_active`, `unknown_attendee`), for metrics.
    pub outcomes: Vec<(EventType, &'static str)>,
}

/// Applies a batch of events of one meeting (in the order given: release them from a
/// [`Reorder`] first) to the context read from the store. `already` holds the envelope ids
/// recorded before. Pure: the caller records [`Plan::changes`] and [`Plan::applied`] with
/// the context's fence.
pub fn plan(
    ctx: &mut PresenceContext,
    events: &[MeetingEvent],
    already: &std::collections::HashSet<String>,
) -> Plan {
    let mut out = Plan::default();
    let mut seen = std::collections::HashSet::new();
    for e in events {
        let t = e.event_type;
        if already.contains(&e.id) || !seen.insert(e.id.clone()) {
            out.outcomes.push((t, "duplicate"));
            continue;
        }
        if !ctx.active {
            out.outcomes.push((t, "meeting_not_active"));
            continue;
        }
        let Some(attendee) = e.attendee.as_ref().filter(|_| is_presence_event(t)) else {
            out.outcomes.push((t, "hint_only"));
            continue;
        };
        let Some((_, known_since)) = ctx.roster.get(&attendee.attendee_id) else {
            out.unknown.push(e.clone());
            seen.remove(&e.id);
            continue;
        };
        let state = ctx.state.entry(attendee.attendee_id.clone()).or_default();
        let verdict = apply_event(state, e, *known_since);
        out.outcomes.push((t, verdict.outcome()));
        out.applied.push(e.id.clone());
        if let Verdict::Applied(c) = verdict {
            out.changes.extend(c);
        }
    }
    out
}

#[cfg(test)]
mod tests;
