//! HTML reports: one self-contained page per report, for people who read attendance rather
//! than query it.
//!
//! A page never fetches anything and runs no script: CSS is inline, charts are inline SVG. It
//! is well-formed XHTML (XML parsers read it; tests do), so every piece of stored text, an
//! ExternalUserId or a label, goes through [`escape`] wherever it lands, element text or
//! attribute value.

use std::collections::HashMap;
use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use super::label::LabelReport;
use super::presence::{MediaSpan, PresenceSession};
use super::{MeetingReport, format_seconds, peak_sentence, timestamp, truncate};
use crate::domain::{AttendeeId, Capabilities, Capability, EventKind};
use crate::store::SessionRow;

/// Width of the charts' coordinate system; they scale to the page.
const WIDTH: f64 = 1100.0;
/// Where the plot starts; the names sit left of it.
const PLOT_X: f64 = 250.0;
const PLOT_W: f64 = WIDTH - PLOT_X - 20.0;
/// One timeline row per person: compact, so 250 people fit in 3000 px.
const ROW_H: f64 = 12.0;
const BAR_H: f64 = 8.0;
/// Room for the time axis above the rows.
const AXIS_H: f64 = 22.0;
const CURVE_H: f64 = 160.0;
/// Names longer than this are cut on the timeline (the full name is in its tooltip).
const NAME_CHARS: usize = 40;

const STYLE: &str = "\
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1d2430;background:#fff}
h1{font-size:20px;margin:0 0 8px}
h2{font-size:16px;margin:24px 0 8px}
dl.summary{display:grid;grid-template-columns:max-content auto;gap:2px 16px;margin:0}
dt{font-weight:600}
dd{margin:0}
svg.chart{display:block;width:100%;max-width:1100px;height:auto}
svg.mark{display:inline-block;vertical-align:middle}
svg text{font-size:9px;fill:#1d2430}
svg text.axis{fill:#57606a}
.grid{stroke:#d0d7de;stroke-width:0.5}
.cap-change{stroke:#cf222e;stroke-width:1.5}
.curve{fill:none;stroke:#0969da;stroke-width:1.5}
.peak{fill:#cf222e}
.caps-avc{fill:#1a7f37;background:#1a7f37}
.caps-av{fill:#2da44e;background:#2da44e}
.caps-ac{fill:#8250df;background:#8250df}
.caps-vc{fill:#bf3989;background:#bf3989}
.caps-a{fill:#54aeff;background:#54aeff}
.caps-v{fill:#d4a72c;background:#d4a72c}
.caps-c{fill:#fb8f44;background:#fb8f44}
.caps-none{fill:#8c959f;background:#8c959f}
.legend{margin:4px 0 8px}
.legend span{display:inline-block;margin-right:14px}
.swatch{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:middle}
table{border-collapse:collapse}
th,td{padding:2px 8px;border-bottom:1px solid #d0d7de;text-align:left;white-space:nowrap}
td.num,th.num{text-align:right}
td.attended{background:#dafbe1;text-align:right}
td.absent{color:#8c959f;text-align:center}
";

/// Added to [`STYLE`] on the page of a meeting with presence.
const PRESENCE_STYLE: &str = "\
.roster-line{fill:#57606a}
.media.video{fill:#0550ae}
.media.content{fill:#953800}
.drop{stroke:#cf222e;stroke-width:1.5}
.inferred{fill:url(#inferred-hatch)}
.hatch{stroke:#1d2430;stroke-width:1.2;stroke-opacity:0.6}
";

/// Text safe in XML element content and in single- or double-quoted attribute values. A
/// character XML 1.0 does not allow (control characters) becomes U+FFFD, so stored text can
/// never make the page unparsable.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// Writes `report <MEETING_ID> --format html`.
///
/// # Errors
/// The writer failed.
pub fn write_meeting(out: &mut impl std::io::Write, report: &MeetingReport) -> std::io::Result<()> {
    let mut page = String::new();
    meeting_page(&mut page, report).map_err(std::io::Error::other)?;
    out.write_all(page.as_bytes())
}

/// Writes `report --label L --format html`.
///
/// # Errors
/// The writer failed.
pub fn write_label(out: &mut impl std::io::Write, report: &LabelReport) -> std::io::Result<()> {
    let mut page = String::new();
    label_page(&mut page, report).map_err(std::io::Error::other)?;
    out.write_all(page.as_bytes())
}

fn open_page(s: &mut String, title: &str) -> std::fmt::Result {
    open_page_styled(s, title, "")
}

fn open_page_styled(s: &mut String, title: &str, extra_style: &str) -> std::fmt::Result {
    writeln!(s, "<!DOCTYPE html>")?;
    writeln!(
        s,
        r#"<html xmlns="http://www.w3.org/1999/xhtml" lang="en">"#
    )?;
    writeln!(s, "<head>")?;
    writeln!(s, r#"<meta charset="utf-8"/>"#)?;
    writeln!(s, "<title>{}</title>", escape(title))?;
    writeln!(s, "<style>\n{STYLE}{extra_style}</style>")?;
    writeln!(s, "</head>")?;
    writeln!(s, "<body>")
}

fn close_page(s: &mut String) -> std::fmt::Result {
    writeln!(s, "</body>\n</html>")
}

fn summary_item(s: &mut String, term: &str, value: &str) -> std::fmt::Result {
    writeln!(s, "<dt>{}</dt><dd>{}</dd>", escape(term), escape(value))
}

fn meeting_page(s: &mut String, r: &MeetingReport) -> std::fmt::Result {
    let m = &r.meeting;
    let title = match &m.label {
        Some(label) => format!("{label} ({})", m.meeting_id),
        None => format!("Meeting {}", m.meeting_id),
    };
    let has_presence = !r.presence.is_empty();
    open_page_styled(
        s,
        &format!("Attendance: {title}"),
        if has_presence { PRESENCE_STYLE } else { "" },
    )?;
    writeln!(s, "<h1>{}</h1>", escape(&title))?;
    writeln!(s, r#"<dl class="summary">"#)?;
    summary_item(s, "Meeting", m.meeting_id.as_str())?;
    if let Some(label) = &m.label {
        summary_item(s, "Label", label)?;
    }
    summary_item(s, "Region", m.region.as_str())?;
    summary_item(s, "Status", m.status.as_str())?;
    let range = match r.time_range() {
        None => "no attendee yet".to_owned(),
        Some((from, Some(to))) => format!("{} to {} UTC", timestamp(from), timestamp(to)),
        Some((from, None)) => format!("{} UTC to now (attendees present)", timestamp(from)),
    };
    summary_item(s, "Attendance", &range)?;
    writeln!(
        s,
        r#"<dt>Peak</dt><dd id="peak" data-peak="{}">{}</dd>"#,
        r.concurrency.peak,
        escape(&peak_sentence(&r.concurrency))
    )?;
    writeln!(
        s,
        r#"<dt>People</dt><dd id="people" data-people="{0}">{0}</dd>"#,
        r.attendance.len()
    )?;
    summary_item(s, "Sessions", &r.sessions.len().to_string())?;
    if has_presence {
        let inferred = r
            .presence
            .sessions
            .iter()
            .filter(|p| p.start_inferred.is_some() || p.end_inferred.is_some())
            .count();
        summary_item(
            s,
            "Presence",
            &format!(
                "{} connected session(s) from meeting events, {inferred} with an inferred boundary",
                r.presence.sessions.len()
            ),
        )?;
    }
    summary_item(
        s,
        "Report made",
        &format!("{} UTC", timestamp(r.generated_at)),
    )?;
    writeln!(s, "</dl>")?;

    let scale = Scale::of(r);
    writeln!(s, "<h2>Timeline</h2>")?;
    legend(s, has_presence)?;
    timeline(s, r, &scale)?;
    writeln!(s, "<h2>Attendees present</h2>")?;
    curve(s, r, &scale)?;
    writeln!(s, "<h2>Attendance</h2>")?;
    attendance_table(s, r)?;
    close_page(s)
}

/// Maps the report's time span onto the plot's x axis.
struct Scale {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    seconds: f64,
}

impl Scale {
    /// From the first join to the last leave, or to when the report was made while anyone is
    /// present. Presence counts too: a meeting event's timestamp can precede the poll that
    /// first saw the attendee.
    fn of(r: &MeetingReport) -> Self {
        let now = r.generated_at;
        let p = &r.presence;
        let from = r
            .sessions
            .iter()
            .map(|s| s.joined_at)
            .chain(p.sessions.iter().map(|s| s.connected_at))
            .chain(p.media.iter().map(|m| m.started_at))
            .min()
            .unwrap_or(r.meeting.added_at);
        let to = r
            .sessions
            .iter()
            .map(|s| session_end(s, now))
            .chain(p.sessions.iter().map(|s| s.end(now)))
            .chain(p.media.iter().map(|m| m.end(now)))
            .max()
            .unwrap_or(from)
            .max(from);
        let seconds = seconds_between(from, to).max(1.0);
        Scale { from, to, seconds }
    }

    fn x(&self, t: DateTime<Utc>) -> f64 {
        PLOT_X + (seconds_between(self.from, t) / self.seconds).clamp(0.0, 1.0) * PLOT_W
    }
}

fn seconds_between(a: DateTime<Utc>, b: DateTime<Utc>) -> f64 {
    (b - a).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6
}

fn session_end(s: &SessionRow, now: DateTime<Utc>) -> DateTime<Utc> {
    s.left_at.unwrap_or(now).max(s.joined_at)
}

/// Time labels along the top of a chart.
fn axis(s: &mut String, scale: &Scale, y_label: f64, y_to: f64) -> std::fmt::Result {
    const TICKS: i32 = 6;
    let long = scale.seconds > 86_400.0;
    for i in 0..=TICKS {
        let frac = f64::from(i) / f64::from(TICKS);
        let t = scale.from
            + chrono::TimeDelta::microseconds((scale.seconds * frac * 1e6).round() as i64);
        let x = PLOT_X + frac * PLOT_W;
        let label = if long {
            t.format("%m-%d %H:%M")
        } else {
            t.format("%H:%M:%S")
        };
        let anchor = match i {
            0 => "start",
            TICKS => "end",
            _ => "middle",
        };
        writeln!(
            s,
            r#"<line class="grid" x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{y_to:.1}"/><text class="axis" x="{x:.1}" y="{y_label:.1}" text-anchor="{anchor}">{label}</text>"#,
            y_label + 4.0,
        )?;
    }
    Ok(())
}

/// Which media an attendee may send decides a bar's colour: (class, legend text).
const CAPS_CLASSES: [(&str, &str); 8] = [
    ("caps-avc", "sends audio, video and content"),
    ("caps-av", "sends audio and video"),
    ("caps-ac", "sends audio and content"),
    ("caps-vc", "sends video and content"),
    ("caps-a", "sends audio"),
    ("caps-v", "sends video"),
    ("caps-c", "sends content"),
    ("caps-none", "sends nothing"),
];

fn caps_class(c: Capabilities) -> &'static str {
    let sends = |v: Capability| matches!(v, Capability::Send | Capability::SendReceive);
    match (sends(c.audio), sends(c.video), sends(c.content)) {
        (true, true, true) => "caps-avc",
        (true, true, false) => "caps-av",
        (true, false, true) => "caps-ac",
        (false, true, true) => "caps-vc",
        (true, false, false) => "caps-a",
        (false, true, false) => "caps-v",
        (false, false, true) => "caps-c",
        (false, false, false) => "caps-none",
    }
}

fn caps_text(c: Capabilities) -> String {
    format!(
        "audio {}, video {}, content {}",
        c.audio, c.video, c.content
    )
}

fn legend(s: &mut String, presence: bool) -> std::fmt::Result {
    write!(s, r#"<div class="legend">"#)?;
    for (class, text) in CAPS_CLASSES {
        write!(
            s,
            r#"<span><span class="swatch {class}"></span>{text}</span>"#
        )?;
    }
    write!(
        s,
        r#"<span><svg class="mark" xmlns="http://www.w3.org/2000/svg" width="10" height="10"><line class="cap-change" x1="5" y1="0" x2="5" y2="10"/></svg> capabilities changed</span>"#
    )?;
    if presence {
        write!(
            s,
            concat!(
                r#"<span>bar: connected (meeting events); thin line: on the roster</span>"#,
                r#"<span><svg class="mark" xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect class="inferred" x="0" y="0" width="10" height="10"/></svg> inferred (no event gave it)</span>"#,
                r#"<span><svg class="mark" xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect class="media video" x="0" y="7" width="10" height="3"/></svg> video</span>"#,
                r#"<span><svg class="mark" xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect class="media content" x="0" y="7" width="10" height="3"/></svg> content</span>"#,
                r#"<span><svg class="mark" xmlns="http://www.w3.org/2000/svg" width="10" height="10"><line class="drop" x1="5" y1="0" x2="5" y2="10"/></svg> dropped</span>"#,
            )
        )?;
    }
    writeln!(s, "</div>")
}

/// The hatching of inferred parts: an SVG pattern, defined once in the timeline (the legend's
/// swatch refers to it too).
fn hatch_pattern() -> &'static str {
    r#"<defs><pattern id="inferred-hatch" patternUnits="userSpaceOnUse" width="4" height="4" patternTransform="rotate(45)"><line class="hatch" x1="0" y1="0" x2="0" y2="4"/></pattern></defs>"#
}

/// One row per person (by first join), one bar per session, coloured by the capabilities held
/// from each change to the next, with a marker at each change.
fn timeline(s: &mut String, r: &MeetingReport, scale: &Scale) -> std::fmt::Result {
    // Each attendee's capabilities over time: its joined and capabilities_changed events.
    let mut caps: HashMap<&AttendeeId, Vec<(DateTime<Utc>, Capabilities)>> = HashMap::new();
    for e in &r.events {
        if matches!(e.kind, EventKind::Joined | EventKind::CapabilitiesChanged)
            && let Some(after) = e.after
        {
            caps.entry(&e.attendee_id)
                .or_default()
                .push((e.observed_at, after));
        }
    }
    let mut rows: Vec<(&str, Vec<&SessionRow>)> = Vec::new();
    let mut row_of: HashMap<&str, usize> = HashMap::new();
    // Sessions come ordered by joined_at, so rows are ordered by first join.
    for sess in &r.sessions {
        let person = sess.external_user_id.as_str();
        let i = *row_of.entry(person).or_insert_with(|| {
            rows.push((person, Vec::new()));
            rows.len() - 1
        });
        rows[i].1.push(sess);
    }

    let height = AXIS_H + ROW_H * rows.len() as f64 + 4.0;
    writeln!(
        s,
        r#"<svg id="timeline" class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height:.0}" width="{WIDTH}" height="{height:.0}" role="img" aria-label="attendance timeline">"#
    )?;
    if !r.presence.is_empty() {
        writeln!(s, "{}", hatch_pattern())?;
    }
    axis(s, scale, 12.0, height)?;
    let mut presence: HashMap<&AttendeeId, Vec<&PresenceSession>> = HashMap::new();
    for p in &r.presence.sessions {
        presence.entry(&p.attendee_id).or_default().push(p);
    }
    let mut media: HashMap<&AttendeeId, Vec<&MediaSpan>> = HashMap::new();
    for m in &r.presence.media {
        media.entry(&m.attendee_id).or_default().push(m);
    }
    for (i, (person, sessions)) in rows.iter().enumerate() {
        let y = AXIS_H + ROW_H * i as f64;
        let name = escape(person);
        writeln!(s, r#"<g class="person" data-person="{name}">"#)?;
        writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end"><title>{name}</title>{}</text>"#,
            PLOT_X - 6.0,
            y + BAR_H,
            escape(&truncate(person, NAME_CHARS))
        )?;
        for sess in sessions {
            let history = caps.get(&sess.attendee_id);
            let id = &sess.attendee_id;
            if presence.contains_key(id) || media.contains_key(id) {
                let connected = Connected {
                    sessions: presence.get(id).cloned().unwrap_or_default(),
                    media: media.get(id).cloned().unwrap_or_default(),
                };
                presence_bars(s, sess, &connected, history, r.generated_at, scale, y)?;
            } else {
                session_bar(s, sess, history, r.generated_at, scale, y)?;
            }
        }
        writeln!(s, "</g>")?;
    }
    writeln!(s, "</svg>")
}

fn session_bar(
    s: &mut String,
    sess: &SessionRow,
    history: Option<&Vec<(DateTime<Utc>, Capabilities)>>,
    now: DateTime<Utc>,
    scale: &Scale,
    y: f64,
) -> std::fmt::Result {
    let start = sess.joined_at;
    let end = session_end(sess, now);
    writeln!(
        s,
        r#"<g class="session" data-attendee-id="{}"><title>{}: joined {} UTC, {}, {}</title>"#,
        sess.attendee_id,
        escape(sess.external_user_id.as_str()),
        timestamp(start),
        left_text(sess),
        format_seconds(sess.duration_seconds),
    )?;
    caps_bars(s, history, start, end, "bar", scale, y)?;
    writeln!(s, "</g>")
}

fn left_text(sess: &SessionRow) -> String {
    match (sess.left_at, sess.left_reason) {
        (Some(at), Some(reason)) => format!("left {} UTC ({reason})", timestamp(at)),
        (Some(at), None) => format!("left {} UTC", timestamp(at)),
        _ => "still present".to_owned(),
    }
}

/// One bar from `start` to `end` in pieces coloured by the capabilities held from each change
/// to the next, with a marker at each change inside.
fn caps_bars(
    s: &mut String,
    history: Option<&Vec<(DateTime<Utc>, Capabilities)>>,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    class: &str,
    scale: &Scale,
    y: f64,
) -> std::fmt::Result {
    let history = history.map_or(&[][..], Vec::as_slice);
    // The capabilities at the start, then each change strictly inside the bar.
    let initial = history
        .iter()
        .rev()
        .find(|(at, _)| *at <= start)
        .map(|(_, c)| *c);
    let changes: Vec<(DateTime<Utc>, Capabilities)> = history
        .iter()
        .filter(|(at, _)| *at > start && *at < end)
        .copied()
        .collect();
    let mut from = start;
    let mut held = initial;
    for (at, next) in changes
        .iter()
        .copied()
        .chain(std::iter::once((end, Capabilities::DEFAULT)))
    {
        let x = scale.x(from);
        let w = (scale.x(at) - x).max(1.0);
        let (caps, text) = match held {
            Some(c) => (caps_class(c), caps_text(c)),
            None => ("caps-none", "capabilities unknown".to_owned()),
        };
        writeln!(
            s,
            r#"<rect class="{class} {caps}" x="{x:.2}" y="{:.1}" width="{w:.2}" height="{BAR_H}"><title>{text}</title></rect>"#,
            y + 1.0,
        )?;
        from = at;
        held = Some(next);
    }
    for (at, c) in &changes {
        let x = scale.x(*at);
        writeln!(
            s,
            r#"<line class="cap-change" x1="{x:.2}" y1="{:.1}" x2="{x:.2}" y2="{:.1}"><title>{} UTC: {}</title></line>"#,
            y,
            y + ROW_H - 1.0,
            timestamp(*at),
            caps_text(*c),
        )?;
    }
    Ok(())
}

/// One attendee's presence rows, for its timeline row.
struct Connected<'a> {
    sessions: Vec<&'a PresenceSession>,
    media: Vec<&'a MediaSpan>,
}

/// An attendee with presence: the roster lifetime as a thin line, each presence session a bar
/// over it (gaps between are drops or absences), the inferred parts of a bar hatched, video and
/// content marked along the bar's foot, and a red tick where the attendee dropped.
fn presence_bars(
    s: &mut String,
    sess: &SessionRow,
    connected: &Connected<'_>,
    history: Option<&Vec<(DateTime<Utc>, Capabilities)>>,
    now: DateTime<Utc>,
    scale: &Scale,
    y: f64,
) -> std::fmt::Result {
    let name = escape(sess.external_user_id.as_str());
    let start = sess.joined_at;
    let end = session_end(sess, now);
    writeln!(
        s,
        r#"<g class="session" data-attendee-id="{}"><title>{name}: on the roster from {} UTC, {}, {}</title>"#,
        sess.attendee_id,
        timestamp(start),
        left_text(sess),
        format_seconds(sess.duration_seconds),
    )?;
    let x = scale.x(start);
    writeln!(
        s,
        r#"<rect class="roster-line" x="{x:.2}" y="{:.2}" width="{:.2}" height="1.5"/>"#,
        y + 1.0 + BAR_H / 2.0 - 0.75,
        (scale.x(end) - x).max(1.0),
    )?;
    for p in &connected.sessions {
        let (from, to) = (p.connected_at, p.end(now));
        let mut text = format!("{name}: connected {} UTC", timestamp(from));
        if p.start_inferred.is_some() {
            text.push_str(" (inferred)");
        }
        match (p.disconnected_at, p.disconnect_reason) {
            (Some(at), reason) => {
                let _ = write!(text, ", disconnected {} UTC", timestamp(at));
                if let Some(reason) = reason {
                    let _ = write!(text, " ({})", reason.as_str());
                }
                if p.end_inferred.is_some() {
                    text.push_str(" (inferred)");
                }
            }
            (None, _) => text.push_str(", still connected"),
        }
        let _ = write!(text, ", {}", format_seconds(p.seconds(now)));
        writeln!(
            s,
            r#"<g class="presence" data-connected-at="{}" data-disconnect-reason="{}"><title>{text}</title>"#,
            p.connected_at.to_rfc3339(),
            p.disconnect_reason.map_or("", |r| r.as_str()),
        )?;
        caps_bars(s, history, from, to, "bar connected", scale, y)?;
        for (a, b) in p.inferred_parts(now) {
            let x = scale.x(a);
            writeln!(
                s,
                r#"<rect class="inferred" x="{x:.2}" y="{:.1}" width="{:.2}" height="{BAR_H}"><title>inferred: between {} and {} UTC</title></rect>"#,
                y + 1.0,
                (scale.x(b) - x).max(1.0),
                timestamp(a),
                timestamp(b),
            )?;
        }
        if p.disconnect_reason == Some(crate::presence::DisconnectReason::Dropped) {
            let x = scale.x(to);
            writeln!(
                s,
                r#"<line class="drop" x1="{x:.2}" y1="{y:.1}" x2="{x:.2}" y2="{:.1}"><title>dropped {} UTC</title></line>"#,
                y + ROW_H - 1.0,
                timestamp(to),
            )?;
        }
        writeln!(s, "</g>")?;
    }
    for m in &connected.media {
        let x = scale.x(m.started_at);
        writeln!(
            s,
            r#"<rect class="media {medium}" x="{x:.2}" y="{:.1}" width="{:.2}" height="2.5"><title>{medium} from {} UTC, {}</title></rect>"#,
            y + 1.0 + BAR_H - 2.5,
            (scale.x(m.end(now)) - x).max(1.0),
            timestamp(m.started_at),
            format_seconds(m.seconds(now)),
            medium = m.medium.as_str(),
        )?;
    }
    writeln!(s, "</g>")
}

/// Attendees present over time, as a step line, with the peak marked.
fn curve(s: &mut String, r: &MeetingReport, scale: &Scale) -> std::fmt::Result {
    let c = &r.concurrency;
    let top = AXIS_H;
    let base = AXIS_H + CURVE_H;
    let peak = c.peak.max(1) as f64;
    let y = |count: usize| base - count as f64 / peak * CURVE_H;
    writeln!(
        s,
        r#"<svg id="concurrency" class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {:.0}" width="{WIDTH}" height="{:.0}" role="img" aria-label="attendees present over time">"#,
        base + 8.0,
        base + 8.0
    )?;
    axis(s, scale, 12.0, base)?;
    for (count, label_y) in [(c.peak, top), (0, base)] {
        writeln!(
            s,
            r#"<line class="grid" x1="{PLOT_X}" y1="{label_y:.1}" x2="{:.1}" y2="{label_y:.1}"/><text class="axis" x="{:.1}" y="{:.1}" text-anchor="end">{count}</text>"#,
            PLOT_X + PLOT_W,
            PLOT_X - 6.0,
            label_y + 3.0
        )?;
    }
    let mut d = format!("M{:.2} {:.2}", scale.x(scale.from), y(0));
    for p in &c.points {
        let _ = write!(d, " H{:.2} V{:.2}", scale.x(p.at), y(p.count));
    }
    let _ = write!(d, " H{:.2}", scale.x(scale.to));
    writeln!(s, r#"<path class="curve" d="{d}"/>"#)?;
    if let Some(at) = c.peak_at {
        writeln!(
            s,
            r#"<circle class="peak" cx="{:.2}" cy="{:.2}" r="3"><title>{}</title></circle>"#,
            scale.x(at),
            y(c.peak),
            escape(&peak_sentence(c))
        )?;
    }
    writeln!(s, "</svg>")
}

/// The same columns as `--format table`.
fn attendance_table(s: &mut String, r: &MeetingReport) -> std::fmt::Result {
    let presence = r.presence_by_person();
    writeln!(s, r#"<table id="attendance">"#)?;
    write!(
        s,
        r#"<thead><tr><th>Attendee</th><th class="num">Sessions</th><th>First joined (UTC)</th><th>Last left (UTC)</th><th class="num">Total</th>"#
    )?;
    if presence.is_some() {
        write!(
            s,
            r#"<th class="num">Connects</th><th class="num">Connected</th><th class="num">Video</th><th class="num">Content</th>"#
        )?;
    }
    writeln!(s, "</tr></thead>")?;
    writeln!(s, "<tbody>")?;
    for a in &r.attendance {
        write!(
            s,
            r#"<tr><td>{}</td><td class="num">{}</td><td>{}</td><td>{}</td><td class="num">{}</td>"#,
            escape(a.external_user_id.as_str()),
            a.sessions,
            timestamp(a.first_joined_at),
            a.last_left_at
                .map_or_else(|| "(present)".to_owned(), timestamp),
            format_seconds(a.total_seconds)
        )?;
        if let Some(totals) = &presence {
            match totals.get(&a.external_user_id) {
                Some(t) => write!(
                    s,
                    r#"<td class="num">{}</td><td class="num connected">{}</td><td class="num">{}</td><td class="num">{}</td>"#,
                    t.sessions,
                    format_seconds(t.connected_seconds),
                    format_seconds(t.video_seconds),
                    format_seconds(t.content_seconds),
                )?,
                None => write!(
                    s,
                    r#"<td class="absent">-</td><td class="absent">-</td><td class="absent">-</td><td class="absent">-</td>"#
                )?,
            }
        }
        writeln!(s, "</tr>")?;
    }
    writeln!(s, "</tbody>\n</table>")
}

fn label_page(s: &mut String, r: &LabelReport) -> std::fmt::Result {
    open_page(s, &format!("Attendance: {}", r.label))?;
    writeln!(s, "<h1>Label {}</h1>", escape(&r.label))?;
    writeln!(s, r#"<dl class="summary">"#)?;
    summary_item(
        s,
        "Window",
        &format!(
            "from {} until {}",
            r.window
                .since
                .map_or("(any time)".into(), |t| format!("{} UTC", timestamp(t))),
            r.window
                .until
                .map_or("(now)".into(), |t| format!("{} UTC", timestamp(t)))
        ),
    )?;
    summary_item(s, "Meetings held", &r.meetings.len().to_string())?;
    summary_item(s, "People", &r.people.len().to_string())?;
    if r.uses_presence() {
        summary_item(
            s,
            "Time",
            "connected time (from meeting events) where a meeting has presence, marked in the grid; roster time elsewhere",
        )?;
    }
    summary_item(
        s,
        "Report made",
        &format!("{} UTC", timestamp(r.generated_at)),
    )?;
    writeln!(s, "</dl>")?;
    writeln!(s, "<h2>Who attended which meeting</h2>")?;
    writeln!(s, r#"<table id="grid">"#)?;
    write!(s, "<thead><tr><th>Attendee</th>")?;
    for m in &r.meetings {
        write!(
            s,
            r#"<th class="meeting" title="{} ({})">{}<br/>{}</th>"#,
            m.meeting_id,
            m.status.as_str(),
            m.first_joined_at.format("%Y-%m-%d"),
            m.first_joined_at.format("%H:%M"),
        )?;
    }
    writeln!(
        s,
        r#"<th class="num">Attended</th><th class="num">Total</th><th>First seen (UTC)</th><th>Last seen (UTC)</th></tr></thead>"#
    )?;
    writeln!(s, "<tbody>")?;
    for p in &r.people {
        let name = escape(p.external_user_id.as_str());
        write!(
            s,
            r#"<tr class="person" data-person="{name}"><td>{name}</td>"#
        )?;
        for cell in r.grid_cells(p) {
            match cell {
                Some(a) if a.connected => write!(
                    s,
                    r#"<td class="attended connected" title="connected time">{}</td>"#,
                    format_seconds(a.seconds)
                )?,
                Some(a) => write!(
                    s,
                    r#"<td class="attended">{}</td>"#,
                    format_seconds(a.seconds)
                )?,
                None => write!(s, r#"<td class="absent">-</td>"#)?,
            }
        }
        writeln!(
            s,
            r#"<td class="num">{}/{}</td><td class="num">{}</td><td>{}</td><td>{}</td></tr>"#,
            p.meetings_attended,
            p.meetings_held,
            format_seconds(p.total_seconds),
            timestamp(p.first_seen),
            p.last_seen
                .map_or_else(|| "(present)".to_owned(), timestamp),
        )?;
    }
    writeln!(s, "</tbody>\n</table>")?;
    close_page(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_makes_markup_and_quotes_inert() {
        assert_eq!(
            escape(r#"<script>alert("1")</script> & 'x'"#),
            "&lt;script&gt;alert(&quot;1&quot;)&lt;/script&gt; &amp; &#39;x&#39;"
        );
        assert_eq!(escape("a\u{1}b"), "a\u{FFFD}b");
        assert_eq!(escape("Zoë « » ÿ"), "Zoë « » ÿ");
    }

    #[test]
    fn colour_follows_what_an_attendee_may_send() {
        assert_eq!(caps_class(Capabilities::DEFAULT), "caps-avc");
        let listener = Capabilities {
            audio: Capability::Receive,
            video: Capability::None,
            content: Capability::None,
        };
        assert_eq!(caps_class(listener), "caps-none");
    }
}
