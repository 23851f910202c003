//! CSV output (RFC 4180): one header line, then one line per row, every line the same columns.

use std::io::Write;

use super::{CapabilityChanges, MeetingReport, label::LabelReport};
use crate::domain::Capabilities;

/// RFC 4180 quoting: ExternalUserIds may hold commas, quotes and spaces. A value a
/// spreadsheet would run as a formula (starting with `=`, `+`, `-`, `@`, a tab or a carriage
/// return) gets a leading `'`, so opening the file never executes an ExternalUserId.
pub fn field(s: &str) -> String {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        return format!("\"'{}\"", s.replace('"', "\"\""));
    }
    if s.contains([',', '"', '\n', '\r']) || s.starts_with(' ') || s.ends_with(' ') {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn time(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map(|t| t.to_rfc3339()).unwrap_or_default()
}

/// One line per session of the meeting. The meeting's peak concurrency and when it was first
/// reached repeat on every line, so the file stays one rectangular table. When the meeting has
/// presence, each line ends with the attendee's presence sessions and connected, video and
/// content seconds (empty for an attendee without presence rows); without, those columns are
/// absent.
///
/// # Errors
/// The writer failed.
pub fn write_meeting(out: &mut impl Write, report: &MeetingReport) -> std::io::Result<()> {
    let presence =
        (!report.presence.is_empty()).then(|| report.presence.by_attendee(report.generated_at));
    write!(
        out,
        "meeting_id,attendee_id,external_user_id,joined_at,left_at,left_reason,duration_seconds,\
         peak_concurrent,peak_at"
    )?;
    if presence.is_some() {
        write!(
            out,
            ",presence_sessions,connected_seconds,video_seconds,content_seconds"
        )?;
    }
    writeln!(out)?;
    for s in &report.sessions {
        write!(
            out,
            "{},{},{},{},{},{},{:.3},{},{}",
            s.meeting_id,
            s.attendee_id,
            field(s.external_user_id.as_str()),
            s.joined_at.to_rfc3339(),
            time(s.left_at),
            s.left_reason.map(|r| r.as_str()).unwrap_or_default(),
            s.duration_seconds,
            report.concurrency.peak,
            time(report.concurrency.peak_at),
        )?;
        if let Some(totals) = &presence {
            match totals.get(&s.attendee_id) {
                Some(t) => write!(
                    out,
                    ",{},{:.3},{:.3},{:.3}",
                    t.sessions, t.connected_seconds, t.video_seconds, t.content_seconds
                )?,
                None => write!(out, ",,,,")?,
            }
        }
        writeln!(out)?;
    }
    Ok(())
}

/// One line per person of a label report.
///
/// # Errors
/// The writer failed.
pub fn write_label(out: &mut impl Write, report: &LabelReport) -> std::io::Result<()> {
    let presence = report.uses_presence();
    write!(
        out,
        "label,external_user_id,meetings_attended,meetings_held,total_seconds,first_seen,last_seen"
    )?;
    if presence {
        // How many of the meetings attended count connected time in total_seconds.
        write!(out, ",presence_meetings")?;
    }
    writeln!(out)?;
    for p in &report.people {
        write!(
            out,
            "{},{},{},{},{:.3},{},{}",
            field(&report.label),
            field(p.external_user_id.as_str()),
            p.meetings_attended,
            p.meetings_held,
            p.total_seconds,
            p.first_seen.to_rfc3339(),
            time(p.last_seen),
        )?;
        if presence {
            write!(out, ",{}", p.presence_meetings)?;
        }
        writeln!(out)?;
    }
    Ok(())
}

/// One line per `capabilities_changed` event.
///
/// # Errors
/// The writer failed.
pub fn write_capability_changes(
    out: &mut impl Write,
    changes: &CapabilityChanges,
) -> std::io::Result<()> {
    writeln!(
        out,
        "event_id,meeting_id,attendee_id,external_user_id,observed_at,previous_poll_at,\
         previous_audio,audio,previous_video,video,previous_content,content"
    )?;
    for e in &changes.events {
        let [before_audio, before_video, before_content] = values(e.before);
        let [audio, video, content] = values(e.after);
        writeln!(
            out,
            "{},{},{},{},{},{},{before_audio},{audio},{before_video},{video},{before_content},{content}",
            e.event_id,
            e.meeting_id,
            e.attendee_id,
            field(e.external_user_id.as_str()),
            e.observed_at.to_rfc3339(),
            time(e.previous_poll_at),
        )?;
    }
    Ok(())
}

fn values(caps: Option<Capabilities>) -> [&'static str; 3] {
    caps.map_or(["", "", ""], |c| {
        [c.audio.as_str(), c.video.as_str(), c.content.as_str()]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_with_commas_quotes_or_edge_spaces_are_quoted() {
        assert_eq!(field("plain"), "plain");
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(field(" padded"), "\" padded\"");
    }

    #[test]
    fn values_a_spreadsheet_would_run_are_defused() {
        assert_eq!(field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(field("+1"), "\"'+1\"");
        assert_eq!(field("@sum"), "\"'@sum\"");
        assert_eq!(field("-2"), "\"'-2\"");
    }
}
