//! `roster-sync events`: prints recorded events in `event_id` order, and with `--follow` keeps
//! printing them as they commit. The JSON it prints is the wire format webhooks deliver too
//! ([`crate::event_json`]).
//!
//! Following reads after the last id printed, so it neither skips nor repeats an event across
//! wakeups, timeouts and lost connections. On Postgres it wakes on `NOTIFY` (with a fallback
//! poll); on SQLite it polls. It must never print a JoinToken (no event holds one).

use std::io::Write;
use std::time::Duration;

use crate::config::Settings;
use crate::domain::{Capabilities, EventKind, MeetingId};
use crate::event_json::{EventFilter, EventJson};
use crate::store::{EventWakeups, LabeledEvent, Store};
use anyhow::Context as _;
use clap::{Args, ValueEnum};

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

    fn print(&mut self, e: &LabeledEvent, json: &EventJson) -> anyhow::Result<()> {
        let mut out = self.out.lock();
        match self.format {
            EventsFormat::Json => {
                serde_json::to_writer(&mut out, json)?;
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
                    // Cut, not widened: a streamed table cannot size its columns in advance.
                    crate::report::truncate(event.external_user_id.as_str(), 24),
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
            let json = EventJson::from(e);
            if filter.matches(&json) {
                match printer.print(e, &json) {
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
