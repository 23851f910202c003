//! Human-readable attendance tables, shared by `report` and the demo's closing summary.
//!
//! Pure formatting: no I/O beyond the writer it is given.

use std::io::Write;

use crate::store::{AttendanceRow, TrackedMeeting};

/// One meeting's attendance: who, how many sessions, first join, last leave, total time.
///
/// # Errors
/// The writer failed.
pub fn write_table(
    out: &mut impl Write,
    meeting: &TrackedMeeting,
    rows: &[AttendanceRow],
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
    writeln!(
        out,
        "  {:<32}  {:>8}  {:<19}  {:<19}  {:>10}",
        "ATTENDEE", "SESSIONS", "FIRST JOINED", "LAST LEFT", "TOTAL"
    )?;
    for r in rows {
        writeln!(
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
    }
    writeln!(out, "  {} attendee(s)", rows.len())
}

fn truncate(s: &str, max: usize) -> String {
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

    #[test]
    fn seconds_read_as_hours_minutes_seconds() {
        assert_eq!(format_seconds(3725.0), "1h02m05s");
        assert_eq!(format_seconds(59.6), "1m00s");
    }
}
