//! Presence in the simulator: who is connected to a meeting, from when to when, with video
//! and content, driven by controls (join, leave, drop, hand-off, video and content per
//! attendee) that stand in for clients. Each control emits the lifecycle event the real
//! service would (`AttendeeJoined` ... `AttendeeContentVideoStopped`, with `networkType` on
//! joins, leaves and drops), and the simulator keeps the **truth**: every session and
//! interval as it really happened, for tests to compare a consumer's reconstruction with.
//!
//! The truth is pure bookkeeping (time passed in, no I/O). A deletion closes what the
//! attendee had open (`removed`) and DeleteMeeting closes everything (`meeting_ended`)
//! without emitting `AttendeeLeft`: the real service documents no such event, which is
//! exactly the gap a consumer must repair by polling.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::lifecycle::EventType;

/// The `networkType` a join names when the control names none.
pub const DEFAULT_NETWORK_TYPE: &str = "Voip";

/// One presence control, as a client's action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceAction {
    /// The client connects: `AttendeeJoined`.
    Join,
    /// The client leaves cleanly: `AttendeeLeft` (video and content end with it).
    Leave,
    /// The client stops sending packets: `AttendeeDropped` (video and content end with it).
    Drop,
    /// The same join token used from another device: `AttendeeAuthorized`; the session goes on.
    Handoff,
    VideoStart,
    VideoStop,
    /// Content share starts: `AttendeeContentJoined`.
    ContentJoin,
    ContentLeave,
    ContentDrop,
    ContentVideoStart,
    ContentVideoStop,
}

impl PresenceAction {
    pub const ALL: [Self; 11] = [
        Self::Join,
        Self::Leave,
        Self::Drop,
        Self::Handoff,
        Self::VideoStart,
        Self::VideoStop,
        Self::ContentJoin,
        Self::ContentLeave,
        Self::ContentDrop,
        Self::ContentVideoStart,
        Self::ContentVideoStop,
    ];

    /// The event the action makes Chime publish.
    pub fn event_type(self) -> EventType {
        match self {
            Self::Join => EventType::AttendeeJoined,
            Self::Leave => EventType::AttendeeLeft,
            Self::Drop => EventType::AttendeeDropped,
            Self::Handoff => EventType::AttendeeAuthorized,
            Self::VideoStart => EventType::AttendeeVideoStarted,
            Self::VideoStop => EventType::AttendeeVideoStopped,
            Self::ContentJoin => EventType::AttendeeContentJoined,
            Self::ContentLeave => EventType::AttendeeContentLeft,
            Self::ContentDrop => EventType::AttendeeContentDropped,
            Self::ContentVideoStart => EventType::AttendeeContentVideoStarted,
            Self::ContentVideoStop => EventType::AttendeeContentVideoStopped,
        }
    }
}

/// Why an interval ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    Left,
    Dropped,
    /// DeleteAttendee while connected.
    Removed,
    /// DeleteMeeting while connected.
    MeetingEnded,
    /// Video or content video stopped.
    Stopped,
}

/// A session (connected), or a video, content or content-video interval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interval {
    pub start: DateTime<Utc>,
    /// `None` while it lasts.
    pub end: Option<DateTime<Utc>>,
    pub end_reason: Option<EndReason>,
    /// Sessions and content intervals only.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub network_type: Option<String>,
}

/// One attendee's truth.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttendeePresence {
    pub attendee_id: String,
    pub external_user_id: String,
    pub sessions: Vec<Interval>,
    pub video: Vec<Interval>,
    pub content: Vec<Interval>,
    pub content_video: Vec<Interval>,
    /// When a hand-off (`AttendeeAuthorized`) happened.
    pub handoffs: Vec<DateTime<Utc>>,
}

/// One meeting's truth, as `GET /_sim/presence/{MeetingId}` answers it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeetingPresence {
    pub meeting_id: String,
    pub ended_at: Option<DateTime<Utc>>,
    /// In attendee-id order.
    pub attendees: Vec<AttendeePresence>,
}

/// A control the truth refuses: it would make a state no client can be in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresenceError {
    #[error("the attendee is already connected (a second device is a hand-off)")]
    AlreadyConnected,
    #[error("the attendee is not connected")]
    NotConnected,
    #[error("video is already on")]
    VideoOn,
    #[error("video is not on")]
    VideoOff,
    #[error("content is already shared")]
    ContentOn,
    #[error("content is not shared")]
    ContentOff,
    #[error("content video is already on")]
    ContentVideoOn,
    #[error("content video is not on")]
    ContentVideoOff,
    #[error("{at} is before the attendee's last change ({last}); presence moves forward only")]
    OutOfOrder {
        at: DateTime<Utc>,
        last: DateTime<Utc>,
    },
    #[error("the meeting has ended")]
    MeetingEnded,
}

/// An event a control (or a leave that closes video and content) makes Chime publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Emitted {
    pub(crate) event_type: EventType,
    pub(crate) network_type: Option<String>,
}

#[derive(Debug, Default)]
struct MeetingTruth {
    ended_at: Option<DateTime<Utc>>,
    attendees: BTreeMap<Uuid, AttendeePresence>,
}

/// Every meeting's truth.
#[derive(Debug, Default)]
pub(crate) struct Truth {
    meetings: HashMap<Uuid, MeetingTruth>,
}

fn open(v: &[Interval]) -> bool {
    v.last().is_some_and(|i| i.end.is_none())
}

fn close(v: &mut [Interval], at: DateTime<Utc>, reason: EndReason) -> bool {
    match v.last_mut() {
        Some(i) if i.end.is_none() => {
            i.end = Some(at);
            i.end_reason = Some(reason);
            true
        }
        _ => false,
    }
}

fn start(v: &mut Vec<Interval>, at: DateTime<Utc>, network_type: Option<String>) {
    v.push(Interval {
        start: at,
        end: None,
        end_reason: None,
        network_type,
    });
}

impl AttendeePresence {
    fn last_change(&self) -> Option<DateTime<Utc>> {
        [
            &self.sessions,
            &self.video,
            &self.content,
            &self.content_video,
        ]
        .into_iter()
        .filter_map(|v| v.last().map(|i| i.end.unwrap_or(i.start)))
        .chain(self.handoffs.last().copied())
        .max()
    }

    fn network_type(&self) -> Option<String> {
        self.sessions.last().and_then(|s| s.network_type.clone())
    }

    /// Closes everything open; the events a leave or drop publishes for what it closed.
    fn close_all(&mut self, at: DateTime<Utc>, reason: EndReason, out: &mut Vec<Emitted>) {
        let net = self.network_type();
        let (content_reason, content_event) = match reason {
            EndReason::Dropped => (EndReason::Dropped, EventType::AttendeeContentDropped),
            EndReason::Left => (EndReason::Left, EventType::AttendeeContentLeft),
            other => (other, EventType::AttendeeContentLeft),
        };
        let stop = if matches!(reason, EndReason::Left | EndReason::Dropped) {
            EndReason::Stopped
        } else {
            reason
        };
        if close(&mut self.content_video, at, stop) {
            out.push(Emitted {
                event_type: EventType::AttendeeContentVideoStopped,
                network_type: None,
            });
        }
        if close(&mut self.content, at, content_reason) {
            out.push(Emitted {
                event_type: content_event,
                network_type: net.clone(),
            });
        }
        if close(&mut self.video, at, stop) {
            out.push(Emitted {
                event_type: EventType::AttendeeVideoStopped,
                network_type: None,
            });
        }
        close(&mut self.sessions, at, reason);
    }
}

impl Truth {
    /// Applies one control at `at`; answers the events to publish, in order. A leave or a
    /// drop first stops content video, content and video (each with its own event).
    ///
    /// # Errors
    /// A control no client could make now ([`PresenceError`]); nothing changes.
    pub(crate) fn apply(
        &mut self,
        meeting: Uuid,
        attendee: Uuid,
        external_user_id: &str,
        action: PresenceAction,
        network_type: Option<&str>,
        at: DateTime<Utc>,
    ) -> Result<Vec<Emitted>, PresenceError> {
        let m = self.meetings.entry(meeting).or_default();
        if m.ended_at.is_some() {
            return Err(PresenceError::MeetingEnded);
        }
        let a = m
            .attendees
            .entry(attendee)
            .or_insert_with(|| AttendeePresence {
                attendee_id: attendee.to_string(),
                external_user_id: external_user_id.to_owned(),
                ..AttendeePresence::default()
            });
        if let Some(last) = a.last_change()
            && at < last
        {
            return Err(PresenceError::OutOfOrder { at, last });
        }
        let connected = open(&a.sessions);
        let need = |ok: bool, e: PresenceError| if ok { Ok(()) } else { Err(e) };
        let mut out = Vec::new();
        let net = a.network_type();
        match action {
            PresenceAction::Join => {
                need(!connected, PresenceError::AlreadyConnected)?;
                let n = network_type.unwrap_or(DEFAULT_NETWORK_TYPE).to_owned();
                start(&mut a.sessions, at, Some(n.clone()));
                out.push(Emitted {
                    event_type: EventType::AttendeeJoined,
                    network_type: Some(n),
                });
                return Ok(out);
            }
            PresenceAction::Leave | PresenceAction::Drop => {
                need(connected, PresenceError::NotConnected)?;
                let reason = if action == PresenceAction::Leave {
                    EndReason::Left
                } else {
                    EndReason::Dropped
                };
                a.close_all(at, reason, &mut out);
                out.push(Emitted {
                    event_type: action.event_type(),
                    network_type: net,
                });
                return Ok(out);
            }
            PresenceAction::Handoff => {
                need(connected, PresenceError::NotConnected)?;
                a.handoffs.push(at);
            }
            PresenceAction::VideoStart => {
                need(connected, PresenceError::NotConnected)?;
                need(!open(&a.video), PresenceError::VideoOn)?;
                start(&mut a.video, at, None);
            }
            PresenceAction::VideoStop => {
                need(
                    close(&mut a.video, at, EndReason::Stopped),
                    PresenceError::VideoOff,
                )?;
            }
            PresenceAction::ContentJoin => {
                need(connected, PresenceError::NotConnected)?;
                need(!open(&a.content), PresenceError::ContentOn)?;
                start(&mut a.content, at, net.clone());
            }
            PresenceAction::ContentLeave | PresenceAction::ContentDrop => {
                need(open(&a.content), PresenceError::ContentOff)?;
                if close(&mut a.content_video, at, EndReason::Stopped) {
                    out.push(Emitted {
                        event_type: EventType::AttendeeContentVideoStopped,
                        network_type: None,
                    });
                }
                let reason = if action == PresenceAction::ContentLeave {
                    EndReason::Left
                } else {
                    EndReason::Dropped
                };
                close(&mut a.content, at, reason);
            }
            PresenceAction::ContentVideoStart => {
                need(open(&a.content), PresenceError::ContentOff)?;
                need(!open(&a.content_video), PresenceError::ContentVideoOn)?;
                start(&mut a.content_video, at, None);
            }
            PresenceAction::ContentVideoStop => {
                need(
                    close(&mut a.content_video, at, EndReason::Stopped),
                    PresenceError::ContentVideoOff,
                )?;
            }
        }
        let event_type = action.event_type();
        out.push(Emitted {
            event_type,
            network_type: net.filter(|_| event_type.has_network_type()),
        });
        Ok(out)
    }

    /// DeleteAttendee: whatever the attendee had open ends, `removed`.
    pub(crate) fn removed(&mut self, meeting: &Uuid, attendee: &Uuid, at: DateTime<Utc>) {
        if let Some(a) = self
            .meetings
            .get_mut(meeting)
            .and_then(|m| m.attendees.get_mut(attendee))
        {
            a.close_all(at, EndReason::Removed, &mut Vec::new());
        }
    }

    /// DeleteMeeting: everything open ends, `meeting_ended`.
    pub(crate) fn meeting_ended(&mut self, meeting: &Uuid, at: DateTime<Utc>) {
        if let Some(m) = self.meetings.get_mut(meeting) {
            m.ended_at = Some(at);
            for a in m.attendees.values_mut() {
                a.close_all(at, EndReason::MeetingEnded, &mut Vec::new());
            }
        }
    }

    /// The truth of one meeting; `None` when no control ever touched it.
    pub(crate) fn meeting(&self, meeting: &Uuid) -> Option<MeetingPresence> {
        let m = self.meetings.get(meeting)?;
        Some(MeetingPresence {
            meeting_id: meeting.to_string(),
            ended_at: m.ended_at,
            attendees: m.attendees.values().cloned().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap_or_default()
    }

    const M: Uuid = Uuid::from_u128(1);
    const A: Uuid = Uuid::from_u128(2);

    fn act(
        truth: &mut Truth,
        action: PresenceAction,
        at: i64,
    ) -> Result<Vec<EventType>, PresenceError> {
        truth
            .apply(M, A, "alice", action, None, t(at))
            .map(|v| v.into_iter().map(|e| e.event_type).collect())
    }

    #[test]
    fn a_drop_then_a_join_is_two_sessions_with_the_gap_between() {
        let mut truth = Truth::default();
        act(&mut truth, PresenceAction::Join, 0).expect("join");
        act(&mut truth, PresenceAction::Drop, 10).expect("drop");
        act(&mut truth, PresenceAction::Join, 25).expect("rejoin");
        act(&mut truth, PresenceAction::Handoff, 30).expect("hand-off");
        act(&mut truth, PresenceAction::Leave, 40).expect("leave");
        let p = truth.meeting(&M).expect("truth");
        let s = &p.attendees[0].sessions;
        assert_eq!(s.len(), 2, "a hand-off starts no session");
        assert_eq!(
            (s[0].start, s[0].end, s[0].end_reason),
            (t(0), Some(t(10)), Some(EndReason::Dropped))
        );
        assert_eq!(
            (s[1].start, s[1].end, s[1].end_reason),
            (t(25), Some(t(40)), Some(EndReason::Left))
        );
        assert_eq!(s[0].network_type.as_deref(), Some(DEFAULT_NETWORK_TYPE));
    }

    #[test]
    fn a_leave_ends_content_and_video_with_their_own_events() {
        let mut truth = Truth::default();
        act(&mut truth, PresenceAction::Join, 0).expect("join");
        act(&mut truth, PresenceAction::VideoStart, 1).expect("video");
        act(&mut truth, PresenceAction::ContentJoin, 2).expect("content");
        act(&mut truth, PresenceAction::ContentVideoStart, 3).expect("content video");
        let events = act(&mut truth, PresenceAction::Leave, 9).expect("leave");
        assert_eq!(
            events,
            vec![
                EventType::AttendeeContentVideoStopped,
                EventType::AttendeeContentLeft,
                EventType::AttendeeVideoStopped,
                EventType::AttendeeLeft,
            ]
        );
        let a = &truth.meeting(&M).expect("truth").attendees[0];
        assert_eq!(a.video[0].end, Some(t(9)));
        assert_eq!(a.content[0].end_reason, Some(EndReason::Left));
    }

    #[test]
    fn impossible_controls_are_refused_and_change_nothing() {
        let mut truth = Truth::default();
        assert_eq!(
            act(&mut truth, PresenceAction::Leave, 0),
            Err(PresenceError::NotConnected)
        );
        act(&mut truth, PresenceAction::Join, 5).expect("join");
        assert_eq!(
            act(&mut truth, PresenceAction::Join, 6),
            Err(PresenceError::AlreadyConnected)
        );
        assert_eq!(
            act(&mut truth, PresenceAction::VideoStop, 6),
            Err(PresenceError::VideoOff)
        );
        assert!(matches!(
            act(&mut truth, PresenceAction::Leave, 4),
            Err(PresenceError::OutOfOrder { .. })
        ));
        truth.meeting_ended(&M, t(7));
        assert_eq!(
            act(&mut truth, PresenceAction::Join, 8),
            Err(PresenceError::MeetingEnded)
        );
        let s = &truth.meeting(&M).expect("truth").attendees[0].sessions;
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].end_reason, Some(EndReason::MeetingEnded));
    }

    #[test]
    fn a_deleted_attendee_is_disconnected_as_removed() {
        let mut truth = Truth::default();
        act(&mut truth, PresenceAction::Join, 0).expect("join");
        act(&mut truth, PresenceAction::VideoStart, 1).expect("video");
        truth.removed(&M, &A, t(3));
        let a = &truth.meeting(&M).expect("truth").attendees[0];
        assert_eq!(a.sessions[0].end_reason, Some(EndReason::Removed));
        assert_eq!(a.video[0].end_reason, Some(EndReason::Removed));
    }
}
