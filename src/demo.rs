//! `roster-sync demo`: the simulator, the churn driver ([`crate::sim::churn`]) and the daemon
//! ([`crate::app::Daemon`]) in one process, with every event shown live as it is recorded,
//! then each meeting's attendance.
//!
//! Zero setup: no config file, no network beyond 127.0.0.1, the embedded SQLite default unless
//! a database URL is given. It must never touch AWS: the client points at the in-process
//! simulator with placeholder credentials.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::app::{Daemon, DaemonOptions};
use crate::chime::{ChimeClient, ClientOptions, simulator_sdk_config};
use crate::config::Settings;
use crate::deadline::Later as _;
use crate::domain::{Capability, EventKind, MeetingId};
use crate::redact::redact_url;
use crate::sim::churn::{self, ChurnPlan, Fleet, PresenceChurnPlan, Skew, churn};
use crate::sim::control::Driver;
use crate::sim::events::EventsConfig;
use crate::sim::{self, SimConfig};
use crate::store::{Store, StoredEvent};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Meetings to create.
    #[arg(long, default_value_t = 3)]
    pub meetings: usize,
    /// Attendees each meeting starts with.
    #[arg(long, default_value_t = 40)]
    pub attendees: usize,
    /// How long the demo runs (Ctrl-C ends it early).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Database to record into (default: the configured one, else roster-sync.db here).
    #[arg(long)]
    pub database_url: Option<String>,
    /// Poll interval of the demo's daemon.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
}

const NAMES: &[&str] = &[
    "alice", "bruno", "chidi", "dana", "élodie", "farid", "grace", "hiro", "ines", "jonas", "kofi",
    "lena", "mateo", "nadia", "oskar", "priya", "quinn", "rosa", "sven", "tariq", "uma", "vera",
    "wei", "ximena", "yusuf", "zoë",
];
const LABELS: &[&str] = &[
    "all-hands",
    "design review",
    "standup",
    "support rota",
    "retro",
];

/// How many changes a second the demo's churn makes, over all meetings.
const CHANGES_PER_SECOND: f64 = 3.0;

/// How many presence changes (connects, drops, leaves, video, content) a second, over all
/// meetings.
const PRESENCE_CHANGES_PER_SECOND: f64 = 2.0;

/// The simulator's queue for the meeting lifecycle events.
const EVENTS_QUEUE: &str = "demo-meeting-events";

/// Runs the demo to the end of `--duration`, or until `cancel` fires (Ctrl-C).
///
/// # Errors
/// The database cannot be opened or is in use by another writer, or the simulator cannot bind
/// a port on 127.0.0.1.
pub async fn run(
    settings: &Settings,
    args: DemoArgs,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let url = args
        .database_url
        .clone()
        .unwrap_or_else(|| settings.database_url());
    // The demo's daemon: the configuration's, on the demo's database and interval, with no
    // operations endpoint (a real daemon may hold its port) and no configured meetings
    // (they would be polled against the simulator).
    let mut settings = settings.clone();
    settings.database.url = url.clone();
    settings.database.migrate_on_start = true;
    settings.http.listen.clear();
    settings.meetings.clear();
    settings.poll.interval = args.interval;
    let region = settings.chime.region.clone();

    let store = Store::connect_with(&url, crate::app::daemon_pool(&settings))
        .await
        .with_context(|| format!("cannot open database {}", redact_url(&url)))?;
    let sim = sim::start(
        "127.0.0.1:0".parse()?,
        SimConfig {
            exempt_control: true,
            ..SimConfig::default()
        },
    )
    .await
    .context("starting the simulator on 127.0.0.1")?;
    // The simulator publishes Chime's meeting lifecycle events to a queue of its own, and the
    // daemon reads them (`[meeting_events]`): hints poll a changed meeting at once, and the
    // presence churn below shows who is connected.
    sim.set_events(Some(EventsConfig::to_queue(EVENTS_QUEUE)))
        .context("turning the simulator's meeting events on")?;
    settings.meeting_events.queue_url = sim
        .queue_url(EVENTS_QUEUE)
        .context("the simulator's events queue")?;
    settings.meeting_events.endpoint_url = sim.endpoint_url();
    settings.meeting_events.region = region.as_str().to_owned();
    settings.meeting_events.wait = Duration::from_secs(1);
    settings.meeting_events.reorder_window = Duration::from_secs(1);
    let mut options = ClientOptions::from_settings(&settings);
    options.endpoint_url = Some(sim.endpoint_url());
    let client = Arc::new(ChimeClient::new(simulator_sdk_config(&region), options));
    let driver = Driver::new(client.sdk_client(&region));
    let presence_driver =
        Driver::new(client.sdk_client(&region)).with_endpoint(&sim.endpoint_url());

    let (tx, mut rx) = broadcast::channel::<StoredEvent>(4096);
    let daemon = Daemon::build(
        &settings,
        Some(store.clone()),
        cancel.clone(),
        DaemonOptions {
            client: Some(client),
            events: Some(tx),
            ..DaemonOptions::default()
        },
    )
    .await?;

    let color = std::io::stdout().is_terminal();
    say(&format!(
        "roster-sync demo: simulator at {}, database {}, {} meeting(s) × {} attendee(s), {:?}",
        sim.endpoint_url(),
        redact_url(&url),
        args.meetings,
        args.attendees,
        args.duration
    ));

    // Created after the daemon started: it notices them at its next look at the meeting list.
    let mut meetings = Vec::new();
    let mut fleet = Fleet::default();
    for i in 0..args.meetings.max(1) {
        let label = LABELS[i % LABELS.len()];
        let id = driver.create_meeting(label, region.as_str()).await?;
        let created = driver
            .add_attendees(&id, (0..args.attendees).map(|i| (person(i as u64), None)))
            .await?;
        fleet.add(id.clone(), &created)?;
        store
            .add_meeting(&id, &region, Some(label), crate::domain::now(), false)
            .await?;
        meetings.push((id, label));
    }

    let labels: std::collections::HashMap<MeetingId, &str> =
        meetings.iter().map(|(id, l)| (id.clone(), *l)).collect();
    let printer_cancel = cancel.clone();
    // How many events of each kind have been shown: the opening waits on it.
    let (shown_tx, shown) = watch::channel([0usize; 3]);
    let printer = tokio::spawn(async move {
        let mut counts = [0usize; 3];
        loop {
            let line = match rx.recv().await {
                Ok(e) => {
                    if let Some(k) = kind_index(e.kind) {
                        counts[k] += 1;
                    }
                    shown_tx.send_replace(counts);
                    let label = labels.get(&e.meeting_id).copied().unwrap_or("?");
                    event_line(&e, label, counts, color)
                }
                Err(broadcast::error::RecvError::Lagged(n)) => format!("({n} events not shown)"),
                Err(broadcast::error::RecvError::Closed) => break,
            };
            if !say(&line) {
                // Nobody reads the output any more (`demo | head`): wind the demo down, so
                // its meetings are still untracked below.
                printer_cancel.cancel();
            }
        }
        counts
    });

    let started = tokio::time::Instant::now();
    let stop = started.later_by(args.duration);
    // People connect, share video and content, drop, reconnect and leave.
    let presence = {
        let cancel = cancel.clone();
        let people = fleet.people();
        let plan = PresenceChurnPlan {
            per_second: PRESENCE_CHANGES_PER_SECOND,
            duration: args.duration,
            ..PresenceChurnPlan::default()
        };
        tokio::spawn(async move {
            churn::presence_churn(&presence_driver, &people, &plan, &cancel, |_| {}).await;
        })
    };
    let churn = {
        let cancel = cancel.clone();
        let store = store.clone();
        let ids: Vec<MeetingId> = meetings.iter().map(|(id, _)| id.clone()).collect();
        let first_name = person(args.attendees as u64);
        tokio::spawn(async move {
            tokio::select! {
                opened = opening(&driver, &mut fleet, &store, &ids, shown, first_name) => {
                    if let Err(e) = opened {
                        tracing::warn!(error = %format!("{e:#}"), "the demo's opening changes failed");
                    }
                }
                () = cancel.cancelled() => return,
                () = tokio::time::sleep_until(stop) => return,
            }
            let now = tokio::time::Instant::now();
            let plan = ChurnPlan {
                per_second: CHANGES_PER_SECOND,
                duration: stop.saturating_duration_since(now),
                target: args.attendees,
                end_a_meeting_after: Some(
                    started
                        .later_by(args.duration.mul_f64(2.0 / 3.0))
                        .saturating_duration_since(now),
                ),
                name: person,
                skew: Skew::Uniform,
            };
            churn(&driver, &mut fleet, &plan, &cancel, |_| {}).await;
        })
    };

    tokio::select! {
        _ = tokio::time::sleep(args.duration) => {}
        _ = cancel.cancelled() => {}
    }
    // One more interval so the last changes are seen before stopping.
    tokio::select! {
        _ = tokio::time::sleep(args.interval.saturating_add(Duration::from_millis(500))) => {}
        _ = cancel.cancelled() => {}
    }
    cancel.cancel();
    let _ = churn.await;
    let _ = presence.await;
    daemon.wait().await?;

    // The daemon is gone, and with it the sender: the printer drains and returns.
    let mut counts = printer.await.unwrap_or_default();
    // The demo's meetings live only in this process's simulator: stop tracking what is left
    // (everyone present leaves with tracking_stopped), so a later `run` on this database
    // does not poll them against AWS.
    for (id, label) in &meetings {
        for e in store
            .remove_meeting(id, crate::domain::now())
            .await?
            .unwrap_or_default()
        {
            if let Some(k) = kind_index(e.kind) {
                counts[k] += 1;
            }
            say(&event_line(&e, label, counts, color));
        }
    }
    let summary = summarize(&store, &meetings, counts, &url).await;
    if let Err(e) = sim.shutdown().await {
        tracing::warn!(error = %e, "simulator did not shut down cleanly");
    }
    match summary {
        // The reader went away (`demo | head`): everything was recorded, nothing to report.
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

/// The demo's opening, so that even a short demo shows every kind of event: once the daemon
/// has recorded its first look at every meeting (a change made before that would only be
/// part of its first snapshot), a capability change, a departure and a join in the first
/// meeting (never the one the churn ends), each made once the one before it has been shown.
async fn opening(
    driver: &Driver,
    fleet: &mut Fleet,
    store: &Store,
    ids: &[MeetingId],
    mut shown: watch::Receiver<[usize; 3]>,
    name: String,
) -> anyhow::Result<()> {
    for id in ids {
        while store
            .get_meeting(id)
            .await?
            .is_none_or(|m| m.last_polled_at.is_none())
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for kind in [
        EventKind::CapabilitiesChanged,
        EventKind::Left,
        EventKind::Joined,
    ] {
        let before = *shown.borrow();
        // In a meeting with nobody in it, the change is a join: wait for what it made.
        let made = churn::change(driver, fleet, 0, kind, 0, name.clone()).await?;
        if let Some(k) = kind_index(made.kind) {
            shown.wait_for(|c| c[k] > before[k]).await?;
        }
    }
    Ok(())
}

/// Where the summary counts a roster change; presence changes are shown, not counted.
fn kind_index(kind: EventKind) -> Option<usize> {
    match kind {
        EventKind::Joined => Some(0),
        EventKind::Left => Some(1),
        EventKind::CapabilitiesChanged => Some(2),
        _ => None,
    }
}

/// The totals and each meeting's attendance table.
async fn summarize(
    store: &Store,
    meetings: &[(MeetingId, &str)],
    counts: [usize; 3],
    url: &str,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "\nrecorded {} joined, {} left, {} capabilities_changed\n",
        counts[0], counts[1], counts[2]
    )?;
    for (id, _) in meetings {
        if let Some(m) = store.get_meeting(id).await? {
            crate::report::write_table(&mut out, &m, &store.attendance(id).await?)?;
            writeln!(out)?;
        }
    }
    writeln!(
        out,
        "events are in {}: roster-sync report <MEETING_ID> shows one meeting",
        redact_url(url)
    )?;
    Ok(())
}

/// Writes one line to stdout; false when stdout is gone (a closed pipe), where `println!`
/// would panic.
fn say(line: &str) -> bool {
    writeln!(std::io::stdout().lock(), "{line}").is_ok()
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn event_line(e: &StoredEvent, label: &str, counts: [usize; 3], color: bool) -> String {
    let name = e.kind.as_str();
    let paint = match e.kind {
        EventKind::Joined | EventKind::Connected => "32",
        EventKind::Left | EventKind::Disconnected => "31",
        EventKind::CapabilitiesChanged => "33",
        _ => "36",
    };
    let caps = |c: Option<crate::domain::Capabilities>| {
        c.map(|c| {
            format!(
                "a:{} v:{} c:{}",
                short(c.audio),
                short(c.video),
                short(c.content)
            )
        })
        .unwrap_or_default()
    };
    let detail = match e.kind {
        EventKind::Joined => caps(e.after),
        EventKind::Left => e.reason.map(|r| r.to_string()).unwrap_or_default(),
        EventKind::CapabilitiesChanged => format!("{} → {}", caps(e.before), caps(e.after)),
        _ => crate::store::describe_presence(e.presence.as_ref()),
    };
    let kind = if color {
        format!("\x1b[{paint}m{name:<20}\x1b[0m")
    } else {
        format!("{name:<20}")
    };
    format!(
        "{}  #{:<5} {kind}  {:<14} {:<12} {detail}   [{} joined · {} left · {} changed]",
        e.observed_at.format("%H:%M:%S"),
        e.event_id,
        label,
        e.external_user_id.as_str(),
        counts[0],
        counts[1],
        counts[2]
    )
}

fn short(c: Capability) -> &'static str {
    match c {
        Capability::SendReceive => "sr",
        Capability::Send => "s",
        Capability::Receive => "r",
        Capability::None => "-",
    }
}

/// `alice-1`, `bruno-1`, …, `zoë-1`, `alice-2`, …
fn person(i: u64) -> String {
    let n = NAMES.len() as u64;
    format!("{}-{}", NAMES[(i % n) as usize], i / n + 1)
}
