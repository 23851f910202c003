//! Presence from meeting events: the intake's holding area between a message's receipt and
//! its presence rows.
//!
//! Each presence event (`AttendeeJoined`, `Left`, `Dropped`, the video and content events) is
//! held for `meeting_events.reorder_window` in a [`Reorder`], then released in Chime-timestamp
//! order and recorded per meeting by [`Store::record_presence`] (the pure reconciler decides,
//! the store writes fenced). Its SQS message is deleted only after that commit; if the write
//! fails the message is let go undeleted and comes back after the visibility timeout.
//!
//! An event of an attendee no roster has shown yet is held apart (at most
//! [`MAX_UNKNOWN_PER_MEETING`] per meeting, for at most `hold_unknown`), its meeting hinted so
//! a poll shows the attendee, and retried at every flush; when the bound is reached it is
//! counted as `unknown_attendee` and deleted. Nothing here writes SQL or calls AWS.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, TimeDelta, Utc};

use crate::domain::MeetingId;
use crate::lifecycle::{EventType, MeetingEvent};
use crate::presence::Reorder;
use crate::store::Store;

/// Events of unknown attendees held per meeting, at most.
pub const MAX_UNKNOWN_PER_MEETING: usize = 1000;

/// What one [`PresenceBuffer::flush`] did.
#[derive(Debug, Default)]
pub struct Flushed {
    /// Receipt handles of the messages to delete now.
    pub delete: Vec<String>,
    /// Each released event's type and outcome, for `roster_sync_presence_events_total`.
    pub outcomes: Vec<(EventType, &'static str)>,
    /// Meetings with events of attendees the roster does not know: poll them.
    pub hint: Vec<MeetingId>,
    /// Presence rows recorded, in `event_id` order.
    pub stored: Vec<crate::store::StoredEvent>,
}

/// See the module header.
#[derive(Debug)]
pub struct PresenceBuffer {
    reorder: Reorder,
    /// The receipt handles of each held envelope id: one per message that carried it (a
    /// duplicate delivery is a message of its own, deleted with its own handle).
    receipts: HashMap<String, Vec<String>>,
    /// Events of attendees not in the roster yet, with when each was first held.
    unknown: BTreeMap<MeetingId, Vec<(MeetingEvent, DateTime<Utc>)>>,
    hold_unknown: TimeDelta,
}

impl PresenceBuffer {
    pub fn new(window: std::time::Duration, hold_unknown: std::time::Duration) -> Self {
        let delta = |d: std::time::Duration| TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX);
        Self {
            reorder: Reorder::new(delta(window)),
            receipts: HashMap::new(),
            unknown: BTreeMap::new(),
            hold_unknown: delta(hold_unknown),
        }
    }

    /// Holds a presence event whose message has `receipt`.
    pub fn offer(&mut self, event: MeetingEvent, receipt: Option<String>, now: DateTime<Utc>) {
        if let Some(r) = receipt {
            self.receipts.entry(event.id.clone()).or_default().push(r);
        }
        self.reorder.push(event, now);
    }

    /// How many events are held.
    pub fn held(&self) -> usize {
        self.reorder.len() + self.unknown.values().map(Vec::len).sum::<usize>()
    }

    /// When [`Self::flush`] has something to release: the next reorder deadline, or now while
    /// events of unknown attendees wait for a poll.
    pub fn next_flush(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let unknown = (!self.unknown.is_empty()).then_some(now + TimeDelta::seconds(1));
        self.reorder.next_release().into_iter().chain(unknown).min()
    }

    /// Releases what is due and records it. A meeting whose write failed keeps nothing in
    /// memory: its messages are not deleted and come back. (On shutdown nothing is flushed:
    /// held messages come back after the visibility timeout to the next daemon.)
    pub async fn flush(&mut self, store: &Store, now: DateTime<Utc>) -> Flushed {
        let released = self.reorder.release(now);
        let waiting_before: std::collections::HashSet<MeetingId> =
            self.unknown.keys().cloned().collect();
        let mut by_meeting: BTreeMap<MeetingId, Vec<(MeetingEvent, DateTime<Utc>)>> =
            std::mem::take(&mut self.unknown);
        for e in released {
            by_meeting
                .entry(e.meeting_id.clone())
                .or_default()
                .push((e, now));
        }
        let mut out = Flushed::default();
        for (meeting, mut held) in by_meeting {
            held.sort_by(|(a, _), (b, _)| {
                crate::presence::order_key(a).cmp(&crate::presence::order_key(b))
            });
            let events: Vec<MeetingEvent> = held.iter().map(|(e, _)| e.clone()).collect();
            let (stored, plan) = match store.record_presence(&meeting, &events, now).await {
                Ok(done) => done,
                Err(e) => {
                    tracing::warn!(
                        meeting_id = %meeting,
                        error = %e,
                        "meeting events: presence could not be recorded; the messages come back"
                    );
                    for (e, _) in &held {
                        self.receipts.remove(&e.id);
                        out.outcomes.push((e.event_type, "failed"));
                    }
                    continue;
                }
            };
            out.stored.extend(stored);
            out.outcomes.extend(plan.outcomes.iter().copied());
            let waiting: std::collections::HashSet<&str> =
                plan.unknown.iter().map(|e| e.id.as_str()).collect();
            let mut keep = Vec::new();
            for (e, first_held) in held {
                if !waiting.contains(e.id.as_str()) {
                    out.delete
                        .extend(self.receipts.remove(&e.id).unwrap_or_default());
                } else if now - first_held >= self.hold_unknown {
                    out.outcomes.push((e.event_type, "unknown_attendee"));
                    out.delete
                        .extend(self.receipts.remove(&e.id).unwrap_or_default());
                } else {
                    keep.push((e, first_held));
                }
            }
            if keep.len() > MAX_UNKNOWN_PER_MEETING {
                for (e, _) in keep.drain(..keep.len() - MAX_UNKNOWN_PER_MEETING) {
                    out.outcomes.push((e.event_type, "unknown_attendee"));
                    out.delete
                        .extend(self.receipts.remove(&e.id).unwrap_or_default());
                }
            }
            if !keep.is_empty() {
                if !waiting_before.contains(&meeting) {
                    out.hint.push(meeting.clone());
                }
                self.unknown.insert(meeting, keep);
            }
        }
        out
    }
}
