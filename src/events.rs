//! `roster-sync events`: prints recorded events in `event_id` order, and with `--follow` keeps
//! printing them as they commit. Also the one JSON shape of an event, shared with webhooks.
//!
//! Following reads after the last id printed, so it neither skips nor repeats an event across
//! wakeups, timeouts and lost connections. On Postgres it wakes on `NOTIFY` (with a fallback
//! poll); on SQLite it polls. It must never print a JoinToken (no event holds one).

use std::io::Write;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::config::{Settings, WebhookEntry};
use crate::domain::{Capabilities, EventKind, MeetingId};
use crate::store::{EventWakeups, LabeledEvent, Store};

/// Which events a consumer wants. Every list empty (or `None`) means everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub meeting: Option<MeetingId>,
    pub kinds: Vec<EventKind>,
    pub meeting_labels: Vec<String>,
    /// Patterns: `*` matches any run of characters, `?` one character, the rest itself.
    pub external_user_ids: Vec<String>,
}

impl EventFilter {
    /// The filter of a validated `[[webhooks]]` entry.
    ///
    /// # Errors
    /// A kind that is not an event kind (validation at start rules this out).
    pub fn for_webhook(entry: &WebhookEntry) -> Result<Self, String> {
        let kinds = entry
            .kinds
            .iter()
            .map(|k| k.parse().map_err(|e| format!("{e}")))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            meeting: None,
            kinds,
            meeting_labels: entry.meeting_labels.clone(),
            external_user_ids: entry.external_user_ids.clone(),
        })
    }

    pub fn matches(&self, e: &LabeledEvent) -> bool {
        let event = &e.event;
        self.meeting.as_ref().is_none_or(|m| *m == event.meeting_id)
            && (self.kinds.is_empty() || self.kinds.contains(&event.kind))
            && (self.meeting_labels.is_empty()
                || e.meeting_label
                    .as_ref()
                    .is_some_and(|l| self.meeting_labels.contains(l)))
            && (self.external_user_ids.is_empty()
                || self
                    .external_user_ids
                    .iter()
                    .any(|p| glob_matches(p, event.external_user_id.as_str())))
    }
}

/// `*` matches any run of characters (none included), `?` exactly one, anything else itself.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    // Greedy matching with backtracking to the last `*`: linear for patterns with one `*`,
    // never exponential.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == '?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// Events read per query.
const PAGE: i64 = 500;
/// How often `--follow` polls on SQLite, and with `LISTEN` as a fallback on Postgres.
const POLL_SQLITE: Duration = Duration::from_millis(500);
const POLL_POSTGRES: Duration = Duration::from_secs(5);
/// The wait after a failed read before trying again.
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(2);

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Print only events after this event_id (the last one you saw).
    #[arg(long, value_name = "EVENT_ID", value_parser = clap::value_parser!(i64).range(0..))]
    pub since: Option<i64>,
    /// Only events of this meeting.
    #[arg(long = "meeting", value_name = "MEETING_ID", value_parser = parse_meeting)]
    pub meeting: Option<MeetingId>,
    /// Only events of this kind: joined, left, capabilities_changed (repeatable).
    #[arg(long = "kind", value_name = "KIND", value_parser = parse_kind)]
    pub kinds: Vec<EventKind>,
    /// Keep printing events as they are recorded, until interrupted.
    #[arg(long)]
    pub follow: bool,
    #[arg(long, value_enum, default_value_t = EventsFormat::Table)]
    pub format: EventsFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum EventsFormat {
    Table,
    /// One JSON object per line, the fields webhooks deliver.
    Json,
}

fn parse_meeting(s: &str) -> Result<MeetingId, String> {
    MeetingId::parse(s).map_err(|e| e.to_string())
}

fn parse_kind(s: &str) -> Result<EventKind, String> {
    s.parse::<EventKind>()
        .map_err(|_| format!("{s:?} is not one of joined, left, capabilities_changed"))
}

/// An event as `events --format json` prints it and webhooks deliver it.
#[derive(Clone, Debug, Serialize)]
pub struct EventJson {
    pub event_id: i64,
    pub meeting_id: String,
    pub meeting_label: Option<String>,
    pub attendee_id: String,
    pub external_user_id: String,
    pub kind: EventKind,
    pub reason: Option<&'static str>,
    pub audio: Option<&'static str>,
    pub video: Option<&'static str>,
    pub content: Option<&'static str>,
    pub previous_audio: Option<&'static str>,
    pub previous_video: Option<&'static str>,
    pub previous_content: Option<&'static str>,
    pub observed_at: chrono::DateTime<chrono::Utc>,
    pub previous_poll_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Presence kinds only: when it happened (the Chime timestamp, or inside the window).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub occurred_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Presence kinds only: `meeting_event`, or `poll` for a boundary a poll proved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<&'static str>,
    /// Presence kinds only: whether no event gave the boundary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inferred: Option<bool>,
    /// Presence kinds only, when inferred: the window in which it happened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inferred_from: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inferred_to: Option<chrono::DateTime<chrono::Utc>>,
    /// `connected` only, from the event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_type: Option<String>,
}

impl From<&LabeledEvent> for EventJson {
    fn from(e: &LabeledEvent) -> Self {
        let event = &e.event;
        let split = |c: Option<Capabilities>| match c {
            Some(c) => [
                Some(c.audio.as_str()),
                Some(c.video.as_str()),
                Some(c.content.as_str()),
            ],
            None => [None; 3],
        };
        let [audio, video, content] = split(event.after);
        let [previous_audio, previous_video, previous_content] = split(event.before);
        let p = event.presence.as_ref();
        Self {
            event_id: event.event_id,
            meeting_id: event.meeting_id.to_string(),
            meeting_label: e.meeting_label.clone(),
            attendee_id: event.attendee_id.to_string(),
            external_user_id: event.external_user_id.as_str().to_owned(),
            kind: event.kind,
            reason: event
                .reason
                .map(|r| r.as_str())
                .or_else(|| p.and_then(|p| p.reason).map(|r| r.as_str())),
            audio,
            video,
            content,
            previous_audio,
            previous_video,
            previous_content,
            observed_at: event.observed_at,
            previous_poll_at: event.previous_poll_at,
            occurred_at: p.map(|p| p.occurred_at),
            source: p.map(|p| p.source.as_str()),
            inferred: p.map(|p| p.inferred.is_some()),
            inferred_from: p.and_then(|p| p.inferred).map(|w| w.from),
            inferred_to: p.and_then(|p| p.inferred).map(|w| w.to),
            network_type: p.and_then(|p| p.network_type.clone()),
        }
    }
}

/// Writes events to stdout, flushing each line so a pipe reader sees it at once.
struct Printer {
    format: EventsFormat,
    out: std::io::Stdout,
}

impl Printer {
    fn header(&mut self) -> std::io::Result<()> {
        if let EventsFormat::Table = self.format {
            let mut out = self.out.lock();
            writeln!(
                out,
                "{:>8}  {:<19}  {:<36}  {:<20}  {:<24}  DETAIL",
                "EVENT", "OBSERVED AT", "MEETING", "KIND", "EXTERNAL USER"
            )?;
            out.flush()?;
        }
        Ok(())
    }

    fn print(&mut self, e: &LabeledEvent) -> anyhow::Result<()> {
        let mut out = self.out.lock();
        match self.format {
            EventsFormat::Json => {
                serde_json::to_writer(&mut out, &EventJson::from(e))?;
                writeln!(out)?;
            }
            EventsFormat::Table => {
                let event = &e.event;
                let caps = |c: Option<Capabilities>| {
                    c.map(|c| format!("{}/{}/{}", c.audio, c.video, c.content))
                };
                let detail = match event.kind {
                    EventKind::Joined => caps(event.after).unwrap_or_default(),
                    EventKind::Left => event
                        .reason
                        .map(|r| r.as_str().to_owned())
                        .unwrap_or_default(),
                    EventKind::CapabilitiesChanged => format!(
                        "{} -> {}",
                        caps(event.before).unwrap_or_default(),
                        caps(event.after).unwrap_or_default()
                    ),
                    _ => crate::store::describe_presence(event.presence.as_ref()),
                };
                writeln!(
                    out,
                    "{:>8}  {:<19}  {:<36}  {:<20}  {:<24}  {detail}",
                    event.event_id,
                    crate::report::timestamp(event.observed_at),
                    event.meeting_id,
                    event.kind.as_str(),
                    event.external_user_id.as_str(),
                )?;
            }
        }
        out.flush()?;
        Ok(())
    }
}

/// Whether `e` (or what caused it) is a write to a closed pipe: the reader went away.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || cause
                .downcast_ref::<serde_json::Error>()
                .and_then(serde_json::Error::io_error_kind)
                == Some(std::io::ErrorKind::BrokenPipe)
    })
}

/// What one [`drain`] ended with.
enum Drained {
    /// Everything committed so far was printed.
    CaughtUp,
    /// The reader closed the pipe.
    ReaderGone,
}

/// Prints every event after `cursor` that `filter` lets through, moving `cursor` past each
/// event read (printed or not).
async fn drain(
    store: &Store,
    filter: &EventFilter,
    cursor: &mut i64,
    printer: &mut Printer,
) -> anyhow::Result<Drained> {
    loop {
        let page = store
            .labeled_events_after(*cursor, filter.meeting.as_ref(), PAGE)
            .await
            .context("reading events")?;
        for e in &page {
            if filter.matches(e) {
                match printer.print(e) {
                    Ok(()) => {}
                    Err(err) if is_broken_pipe(&err) => return Ok(Drained::ReaderGone),
                    Err(err) => return Err(err.context("writing to stdout")),
                }
            }
            *cursor = e.event.event_id;
        }
        if (page.len() as i64) < PAGE {
            return Ok(Drained::CaughtUp);
        }
    }
}

/// Waits until new events may have committed: a `NOTIFY`, or the fallback poll interval.
async fn wait_for_events(wakeups: &mut Option<EventWakeups>) {
    match wakeups {
        Some(listener) => {
            match tokio::time::timeout(POLL_POSTGRES, listener.next()).await {
                Ok(Ok(_)) | Err(_) => {}
                Ok(Err(e)) => {
                    // The listener reconnects on its next call; read after the cursor meanwhile.
                    tracing::warn!(error = %e, "event notifications interrupted; reconnecting");
                    tokio::time::sleep(RETRY_AFTER_ERROR).await;
                }
            }
        }
        None => tokio::time::sleep(POLL_SQLITE).await,
    }
}

/// Runs `roster-sync events`.
///
/// # Errors
/// The database cannot be opened, or (without `--follow`) a read fails; writing to stdout
/// fails for a reason other than the reader going away.
pub async fn run(settings: &Settings, args: EventsArgs) -> anyhow::Result<()> {
    let filter = EventFilter {
        meeting: args.meeting,
        kinds: args.kinds,
        ..EventFilter::default()
    };
    let store = crate::app::connect(settings).await?;
    let cancel = crate::shutdown::on_signals();
    let mut printer = Printer {
        format: args.format,
        out: std::io::stdout(),
    };
    if let Err(e) = printer.header() {
        return if e.kind() == std::io::ErrorKind::BrokenPipe {
            Ok(())
        } else {
            Err(e).context("writing to stdout")
        };
    }
    let mut cursor = args.since.unwrap_or(0);
    // Listen before the first read, so an event committed in between wakes us.
    let mut wakeups = if args.follow {
        store
            .event_wakeups()
            .await
            .context("listening for new events")?
    } else {
        None
    };
    loop {
        let drained = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            drained = drain(&store, &filter, &mut cursor, &mut printer) => drained,
        };
        match drained {
            Ok(Drained::ReaderGone) => return Ok(()),
            Ok(Drained::CaughtUp) if !args.follow => return Ok(()),
            Ok(Drained::CaughtUp) => {
                tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    () = wait_for_events(&mut wakeups) => {}
                }
            }
            Err(e) if !args.follow => return Err(e),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), after_event_id = cursor, "cannot read events; retrying");
                tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    () = tokio::time::sleep(RETRY_AFTER_ERROR) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_patterns_match_like_shell_globs() {
        assert!(glob_matches("*@partner.example", "ana@partner.example"));
        assert!(glob_matches("*@partner.example", "@partner.example"));
        assert!(!glob_matches(
            "*@partner.example",
            "ana@partner.example.com"
        ));
        assert!(glob_matches("a?c*", "abcdef"));
        assert!(glob_matches("*a*b*", "xxaxxbxx"));
        assert!(!glob_matches("*a*b*", "xxbxxaxx"));
        assert!(glob_matches("exact", "exact"));
        assert!(!glob_matches("exact", "exactly"));
        assert!(glob_matches("«*»", "«Zoë»"));
    }
}
