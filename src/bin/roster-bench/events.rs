//! `--meeting-events`: the simulator emits a Chime lifecycle event for every change the churn
//! makes (through `PUT /_sim/events`, after setup, so the setup's events are not in the run),
//! with the run's loss, duplication and delay, into a queue of its own SQS side that the
//! daemon reads (`[meeting_events]`). What the event path did is read back from the
//! simulator (`GET /_sim/events`) and from the daemon's counters.

use anyhow::{Context, bail};
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use roster_sync::config::Settings;

use crate::BenchArgs;

/// The queue the simulator emits into.
pub const QUEUE: &str = "roster-bench-events";

/// What the event path did in a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EventsReport {
    /// Events the simulator's operations caused (before faults).
    pub events_emitted: u64,
    pub events_lost: u64,
    pub events_duplicated: u64,
    /// Messages the daemon received from the queue (duplicates and redeliveries included).
    pub events_received: u64,
    /// Polls a hint launched.
    pub hint_polls: u64,
    /// `--event-loss`, `--event-dup`, `--event-delay` of the run.
    pub event_loss: f64,
    pub event_dup: f64,
    pub event_delay_s: f64,
    /// Presence changes the presence churn made (`--presence-churn-per-s`), and those the
    /// simulator refused (an attendee the roster churn had deleted meanwhile, say).
    pub presence_changes: u64,
    pub presence_changes_failed: u64,
}

async fn request(url: &str, method: &str, path: &str, body: &str) -> anyhow::Result<String> {
    let addr = url.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to the simulator at {url}"))?;
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).await?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .context("the simulator's answer has no body")?;
    let status = head.split_whitespace().nth(1).unwrap_or_default();
    if !status.starts_with('2') {
        bail!("{method} {path}: HTTP {status}: {body}");
    }
    Ok(body.to_owned())
}

/// Turns the simulator's emission on with the run's faults and points `settings` at its
/// queue.
///
/// # Errors
/// The simulator refused the configuration or did not answer.
pub async fn enable(
    args: &BenchArgs,
    sim_url: &str,
    settings: &mut Settings,
) -> anyhow::Result<()> {
    let spec = serde_json::json!({
        "queue": QUEUE,
        "loss": args.event_loss,
        "duplicate": args.event_dup,
        "max_delay_ms": u64::try_from(args.event_delay.as_millis()).unwrap_or(u64::MAX),
    });
    request(sim_url, "PUT", "/_sim/events", &spec.to_string()).await?;
    settings.meeting_events.queue_url = format!("{sim_url}/123456789012/{QUEUE}");
    settings.meeting_events.endpoint_url = sim_url.to_owned();
    settings.validate()?;
    Ok(())
}

/// Reads the event path's counters at the end of a run.
///
/// # Errors
/// The simulator did not answer.
pub async fn report(args: &BenchArgs, sim_url: &str) -> anyhow::Result<EventsReport> {
    let body = request(sim_url, "GET", "/_sim/events", "").await?;
    let v: serde_json::Value =
        serde_json::from_str(&body).with_context(|| format!("the simulator's events: {body}"))?;
    let stats = v.get("stats").unwrap_or(&v);
    let n = |k: &str| {
        stats
            .get(k)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    };
    Ok(EventsReport {
        events_emitted: n("emitted"),
        events_lost: n("lost"),
        events_duplicated: n("duplicated"),
        events_received: roster_sync::meeting_events::received_total(),
        hint_polls: roster_sync::scheduler::hint_polls_total(),
        event_loss: args.event_loss,
        event_dup: args.event_dup,
        event_delay_s: args.event_delay.as_secs_f64(),
        presence_changes: 0,
        presence_changes_failed: 0,
    })
}
