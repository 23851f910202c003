//! What `report` prints, in every format, and the demo's closing summary.
//!
//! Reads through the store's query functions and never writes. Everything after loading is
//! pure formatting into the writer it is given: tables here, CSV in `report/csv.rs`, HTML in
//! `report/html.rs`; the concurrency curve (`report/concurrency.rs`) and the label report
//! (`report/label.rs`) are computed from `attendance_sessions` rows.

use std::collections::HashMap;
use std::io::Write;

use chrono::{DateTime, Utc};

use crate::domain::{Capabilities, ExternalUserId, MeetingId};
use crate::store::{AttendanceRow, SessionRow, Store, StoredEvent, TrackedMeeting};

pub mod concurrency;
pub mod csv;
pub mod html;
pub mod label;
pub mod presence;

pub use concurrency::Concurrency;
pub use label::{LabelReport, Window};
pub use presence::Presence;

/// Everything `report <MEETING_ID>` shows about one meeting.
#[derive(Clone, Debug)]
pub struct MeetingReport {
    pub meeting: TrackedMeeting,
    /// Ordered by `joined_at` then attendee id.
    pub sessions: Vec<SessionRow>,
    /// Ordered by `first_joined_at` then external user id.
    pub attendance: Vec<AttendanceRow>,
    /// The meeting's events in `event_id` order: the timeline colours sessions by the
    /// capabilities of their `joined` and `capabilities_changed` events.
    pub events: Vec<StoredEvent>,
    pub concurrency: Concurrency,
    /// Who was connected, from the presence rows among `events`; empty when no meeting
    /// events were read for the meeting, and then the report reads as without presence.
    pub presence: Presence,
    /// When the report was made: open sessions last until then on the timeline.
    pub generated_at: DateTime<Utc>,
}

impl MeetingReport {
    /// Reads one meeting's report; `None` when the meeting is not tracked.
    ///
    /// # Errors
    /// The store failed.
    pub async fn load(
        store: &Store,
        id: &MeetingId,
        now: DateTime<Utc>,
    ) -> crate::store::Result<Option<Self>> {
        let Some(meeting) = store.get_meeting(id).await? else {
            return Ok(None);
        };
        let sessions = store.sessions(id).await?;
        let attendance = store.attendance(id).await?;
        let events = store.events_for_meeting(id).await?;
        Ok(Some(Self::new(meeting, sessions, attendance, events, now)))
    }

    pub fn new(
        meeting: TrackedMeeting,
        sessions: Vec<SessionRow>,
        attendance: Vec<AttendanceRow>,
        events: Vec<StoredEvent>,
        generated_at: DateTime<Utc>,
    ) -> Self {
        let concurrency = Concurrency::from_sessions(&sessions);
        let presence = Presence::from_events(&events);
        Self {
            meeting,
            sessions,
            attendance,
            events,
            concurrency,
            presence,
            generated_at,
        }
    }

    /// From the first join to the last leave (`None` while a session is open); `None`
    /// without sessions.
    pub fn time_range(&self) -> Option<(DateTime<Utc>, Option<DateTime<Utc>>)> {
        let first = self.sessions.iter().map(|s| s.joined_at).min()?;
        let last = if self.sessions.iter().all(|s| s.left_at.is_some()) {
            self.sessions.iter().filter_map(|s| s.left_at).max()
        } else {
            None
        };
        Some((first, last))
    }

    /// Each person's presence totals, by external user id; `None` when the meeting has no
    /// presence at all (then no presence column is shown).
    pub fn presence_by_person(&self) -> Option<HashMap<&ExternalUserId, presence::Totals>> {
        (!self.presence.is_empty()).then(|| self.presence.by_person(self.generated_at))
    }

    /// The JSON document of `report --format json`. With presence, each attendance row gains
    /// `presence_sessions`, `connected_seconds`, `video_seconds` and `content_seconds` (null
    /// for a person without presence rows) and the document a `presence` list; without, it
    /// has neither.
    pub fn to_json(&self) -> serde_json::Value {
        let mut doc = serde_json::json!({
            "meeting": self.meeting,
            "sessions": self.sessions,
            "attendance": self.attendance,
            "concurrency": self.concurrency,
            "generated_at": self.generated_at,
        });
        let Some(totals) = self.presence_by_person() else {
            return doc;
        };
        if let Some(rows) = doc["attendance"].as_array_mut() {
            for (row, a) in rows.iter_mut().zip(&self.attendance) {
                let t = totals.get(&a.external_user_id);
                row["presence_sessions"] = serde_json::json!(t.map(|t| t.sessions));
                row["connected_seconds"] = serde_json::json!(t.map(|t| t.connected_seconds));
                row["video_seconds"] = serde_json::json!(t.map(|t| t.video_seconds));
                row["content_seconds"] = serde_json::json!(t.map(|t| t.content_seconds));
            }
        }
        let now = self.generated_at;
        let window = |w: Option<crate::presence::Window>| {
            w.map(|w| serde_json::json!({ "from": w.from, "to": w.to }))
        };
        doc["presence"] = self
            .presence
            .sessions
            .iter()
            .map(|s| {
                serde_json::json!({
                    "attendee_id": s.attendee_id,
                    "external_user_id": s.external_user_id,
                    "connected_at": s.connected_at,
                    "disconnected_at": s.disconnected_at,
                    "disconnect_reason": s.disconnect_reason.map(|r| r.as_str()),
                    "network_type": s.network_type,
                    "start_inferred": window(s.start_inferred),
                    "end_inferred": window(s.end_inferred),
                    "duration_seconds": s.seconds(now),
                })
            })
            .collect();
        doc["media"] = self
            .presence
            .media
            .iter()
            .map(|m| {
                serde_json::json!({
                    "attendee_id": m.attendee_id,
                    "external_user_id": m.external_user_id,
                    "medium": m.medium.as_str(),
                    "started_at": m.started_at,
                    "stopped_at": m.stopped_at,
                    "duration_seconds": m.seconds(now),
                })
            })
            .collect();
        doc
    }
}

/// Every `capabilities_changed` event since a moment: `report --capability-changes`.
#[derive(Clone, Debug)]
pub struct CapabilityChanges {
    pub since: Option<DateTime<Utc>>,
    /// In `event_id` order.
    pub events: Vec<StoredEvent>,
}

impl CapabilityChanges {
    /// # Errors
    /// The store failed.
    pub async fn load(store: &Store, since: Option<DateTime<Utc>>) -> crate::store::Result<Self> {
        Ok(Self {
            since,
            events: store.capability_changes(since).await?,
        })
    }

    /// One object per event: who, which meeting, when, the values before and after.
    pub fn to_json(&self) -> serde_json::Value {
        let changes: Vec<serde_json::Value> = self
            .events
            .iter()
            .map(|e| {
                serde_json::json!({
                    "event_id": e.event_id,
                    "meeting_id": e.meeting_id,
                    "attendee_id": e.attendee_id,
                    "external_user_id": e.external_user_id,
                    "observed_at": e.observed_at,
                    "previous_poll_at": e.previous_poll_at,
                    "before": e.before,
                    "after": e.after,
                })
            })
            .collect();
        serde_json::json!({ "since": self.since, "changes": changes })
    }
}

impl LabelReport {
    /// Reads the label's meetings and sessions and builds the report.
    ///
    /// # Errors
    /// The store failed.
    pub async fn load(
        store: &Store,
        label: &str,
        window: Window,
        now: DateTime<Utc>,
    ) -> crate::store::Result<Self> {
        let meetings = store.meetings_with_label(label).await?;
        let sessions = store.label_sessions(label).await?;
        let presence = store.label_presence_sessions(label).await?;
        Ok(Self::with_presence(
            label, window, &meetings, &sessions, &presence, now,
        ))
    }
}

/// `report <MEETING_ID>` as a table: the attendance table, then the peak concurrency.
///
/// # Errors
/// The writer failed.
pub fn write_meeting_table(out: &mut impl Write, report: &MeetingReport) -> std::io::Result<()> {
    match report.presence_by_person() {
        None => write_table(out, &report.meeting, &report.attendance)?,
        Some(totals) => write_presence_table(out, &report.meeting, &report.attendance, &totals)?,
    }
    writeln!(out, "  {}", peak_sentence(&report.concurrency))
}

/// `peak 12 concurrent attendee(s), first at 2026-01-31 09:05:07`.
pub fn peak_sentence(c: &Concurrency) -> String {
    match c.peak_at {
        Some(at) => format!(
            "peak {} concurrent attendee(s), first at {}",
            c.peak,
            timestamp(at)
        ),
        None => "peak 0 concurrent attendees".to_owned(),
    }
}

/// `report --label` as a table: one line per person.
///
/// # Errors
/// The writer failed.
pub fn write_label_table(out: &mut impl Write, report: &LabelReport) -> std::io::Result<()> {
    writeln!(
        out,
        "label \"{}\" from {} until {}: {} meeting(s) held",
        report.label,
        report.window.since.map_or("(any time)".into(), timestamp),
        report.window.until.map_or("(now)".into(), timestamp),
        report.meetings.len()
    )?;
    writeln!(
        out,
        "  {:<32}  {:>8}  {:>10}  {:<19}  {:<19}",
        "ATTENDEE", "MEETINGS", "TOTAL", "FIRST SEEN", "LAST SEEN"
    )?;
    for p in &report.people {
        writeln!(
            out,
            "  {:<32}  {:>8}  {:>10}  {:<19}  {:<19}",
            truncate(p.external_user_id.as_str(), 32),
            format!("{}/{}", p.meetings_attended, p.meetings_held),
            format_seconds(p.total_seconds),
            timestamp(p.first_seen),
            p.last_seen.map_or_else(|| "(present)".into(), timestamp),
        )?;
    }
    writeln!(out, "  {} person(s)", report.people.len())?;
    if report.uses_presence() {
        let counted: usize = report.people.iter().map(|p| p.presence_meetings).sum();
        let all: usize = report.people.iter().map(|p| p.meetings_attended).sum();
        writeln!(
            out,
            "  TOTAL is connected time (from meeting events) in {counted} of {all} attendance(s), \
             roster time in the rest"
        )?;
    }
    Ok(())
}

/// `report --capability-changes` as a table: one line per event, `before -> after` for each
/// value that changed.
///
/// # Errors
/// The writer failed.
pub fn write_capability_changes_table(
    out: &mut impl Write,
    changes: &CapabilityChanges,
) -> std::io::Result<()> {
    writeln!(
        out,
        "  {:<19}  {:<36}  {:<24}  {:<24}  {:<24}  CONTENT",
        "OBSERVED AT", "MEETING", "ATTENDEE", "AUDIO", "VIDEO"
    )?;
    for e in &changes.events {
        let [audio, video, content] = transitions(e.before, e.after);
        writeln!(
            out,
            "  {:<19}  {:<36}  {:<24}  {audio:<24}  {video:<24}  {content}",
            timestamp(e.observed_at),
            e.meeting_id.as_str(),
            truncate(e.external_user_id.as_str(), 24),
        )?;
    }
    writeln!(out, "  {} change(s)", changes.events.len())
}

/// `Receive -> SendReceive` for a value that changed, the value alone for one that did not.
fn transitions(before: Option<Capabilities>, after: Option<Capabilities>) -> [String; 3] {
    let (Some(b), Some(a)) = (before, after) else {
        return [String::new(), String::new(), String::new()];
    };
    [
        (b.audio, a.audio),
        (b.video, a.video),
        (b.content, a.content),
    ]
    .map(|(b, a)| {
        if a == b {
            a.as_str().to_owned()
        } else {
            format!("{b} -> {a}")
        }
    })
}

/// One meeting's attendance: who, how many sessions, first join, last leave, total time.
///
/// # Errors
/// The writer failed.
pub fn write_table(
    out: &mut impl Write,
    meeting: &TrackedMeeting,
    rows: &[AttendanceRow],
) -> std::io::Result<()> {
    write_table_with(out, meeting, rows, None)
}

/// The attendance table of a meeting with presence: the roster's columns, then each person's
/// presence sessions and connected, video and content time (`-` for a person without
/// presence rows).
///
/// # Errors
/// The writer failed.
pub fn write_presence_table(
    out: &mut impl Write,
    meeting: &TrackedMeeting,
    rows: &[AttendanceRow],
    totals: &HashMap<&ExternalUserId, presence::Totals>,
) -> std::io::Result<()> {
    write_table_with(out, meeting, rows, Some(totals))
}

fn write_table_with(
    out: &mut impl Write,
    meeting: &TrackedMeeting,
    rows: &[AttendanceRow],
    presence: Option<&HashMap<&ExternalUserId, presence::Totals>>,
) -> std::io::Result<()> {
    let label = meeting
        .label
        .as_deref()
        .map(|l| format!(" \"{l}\""))
        .unwrap_or_default();
    writeln!(
        out,
        "meeting {}{label} ({}, {})",
        meeting.meeting_id,
        meeting.region,
        meeting.status.as_str()
    )?;
    write!(
        out,
        "  {:<32}  {:>8}  {:<19}  {:<19}  {:>10}",
        "ATTENDEE", "SESSIONS", "FIRST JOINED", "LAST LEFT", "TOTAL"
    )?;
    if presence.is_some() {
        write!(
            out,
            "  {:>8}  {:>10}  {:>10}  {:>10}",
            "CONNECTS", "CONNECTED", "VIDEO", "CONTENT"
        )?;
    }
    writeln!(out)?;
    for r in rows {
        write!(
            out,
            "  {:<32}  {:>8}  {:<19}  {:<19}  {:>10}",
            truncate(r.external_user_id.as_str(), 32),
            r.sessions,
            timestamp(r.first_joined_at),
            r.last_left_at
                .map(timestamp)
                .unwrap_or_else(|| "(present)".into()),
            format_seconds(r.total_seconds)
        )?;
        if let Some(totals) = presence {
            let [sessions, connected, video, content] = match totals.get(&r.external_user_id) {
                Some(t) => [
                    t.sessions.to_string(),
                    format_seconds(t.connected_seconds),
                    format_seconds(t.video_seconds),
                    format_seconds(t.content_seconds),
                ],
                None => [
                    "-".to_owned(),
                    "-".to_owned(),
                    "-".to_owned(),
                    "-".to_owned(),
                ],
            };
            write!(
                out,
                "  {sessions:>8}  {connected:>10}  {video:>10}  {content:>10}"
            )?;
        }
        writeln!(out)?;
    }
    writeln!(out, "  {} attendee(s)", rows.len())
}

/// `s` cut to `max` characters (the last one `…` when cut), so a column of a table keeps its
/// width.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}

/// A timestamp as tables show it: UTC to the second.
pub fn timestamp(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// `3725.0` → `1h02m05s`.
pub fn format_seconds(secs: f64) -> String {
    let total = secs.max(0.0).round() as u64;
    let (h, m, s) = (total / 3600, total / 60 % 60, total % 60);
    if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else {
        format!("{m}m{s:02}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Capability;

    #[test]
    fn a_capability_change_shows_only_the_values_that_moved() {
        let before = Capabilities {
            audio: Capability::Receive,
            ..Capabilities::DEFAULT
        };
        let [audio, video, _] = transitions(Some(before), Some(Capabilities::DEFAULT));
        assert_eq!(audio, "Receive -> SendReceive");
        assert_eq!(video, "SendReceive");
    }

    #[test]
    fn seconds_read_as_hours_minutes_seconds() {
        assert_eq!(format_seconds(3725.0), "1h02m05s");
        assert_eq!(format_seconds(59.6), "1m00s");
    }
}
