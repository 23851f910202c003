//! The command line of `roster-bench`: every argument ([`BenchArgs`]) and the runtime it asks
//! for ([`RuntimeKind`]). A leaf of the binary: the phases and the reports read it, it reads
//! none of them.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use roster_sync::config::PollStrategy;
use roster_sync::sim::churn::Skew;

/// `roster-bench` arguments.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "roster-bench",
    version,
    about = "Capacity run of roster-sync against the simulator (run as a child process)"
)]
pub struct BenchArgs {
    /// Meetings to create and track.
    #[arg(long, default_value_t = 250)]
    pub meetings: usize,
    /// Attendees each meeting starts with (the churn keeps it about there).
    #[arg(long, default_value_t = 250)]
    pub attendees: usize,
    /// Meetings of mixed sizes: the n-th meeting starts with a third, two thirds or all of
    /// `--attendees` in turn (rounded up), so with 250 attendees at 100 a page the meetings
    /// take 1, 2 and 3 pages. The churn still adds to meetings below `--attendees`.
    #[arg(long)]
    pub mixed_sizes: bool,
    /// The simulator emits a Chime meeting lifecycle event for every change into an SQS
    /// queue of its own, and the daemon reads it (`[meeting_events]`): hints poll the changed
    /// meeting now. The report adds hint polls and events received.
    #[arg(long)]
    pub meeting_events: bool,
    /// With `--meeting-events`: probability (0.0..=1.0) that an event is lost.
    #[arg(long, default_value_t = 0.0, requires = "meeting_events")]
    pub event_loss: f64,
    /// With `--meeting-events`: probability (0.0..=1.0) that an event is delivered twice.
    #[arg(long, default_value_t = 0.0, requires = "meeting_events")]
    pub event_dup: f64,
    /// With `--meeting-events`: each event is held back a random delay up to this (events
    /// overtake each other).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration, requires = "meeting_events")]
    pub event_delay: Duration,
    /// With `--meeting-events`: presence changes a second over all meetings during the churn
    /// phase (people connect, drop, reconnect, share video and content, hand off, leave), so
    /// the daemon records presence beside the roster. 0: none.
    #[arg(long, default_value_t = 0.0, requires = "meeting_events")]
    pub presence_churn_per_s: f64,
    /// Changes per second over all meetings during the churn phase: joins and deletions
    /// (2/3) and capability changes (1/3).
    #[arg(long, default_value_t = 1.0)]
    pub churn_per_s: f64,
    /// The simulator's ListAttendees quota, requests/s (burst 2 × this).
    #[arg(long, default_value_t = 10.0)]
    pub quota_rps: f64,
    /// Length of the churn phase (after the warm-up sweep, before the settle phase).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Record into Postgres: a scratch database is created on this server (the role needs
    /// CREATEDB) and dropped afterwards. Default: a fresh SQLite file in a temporary directory.
    #[arg(long)]
    pub database_url: Option<String>,
    /// The daemon's configured request rate (`rate.requests_per_second`); default the real
    /// default, 10, whatever the simulator's quota.
    #[arg(long)]
    pub daemon_rps: Option<f64>,
    /// The daemon's burst (`rate.burst`); default 2 × the daemon's rate.
    #[arg(long)]
    pub daemon_burst: Option<u32>,
    /// `poll.interval` (default: the configuration's default, 10s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub interval: Option<Duration>,
    /// `poll.concurrency` (default: the configuration's default).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// `poll.max_results`, the page size (default: the configuration's default, 100).
    #[arg(long)]
    pub max_results: Option<i32>,
    /// The `roster-sync` binary that serves the simulator and runs the replicas (default: next
    /// to this one).
    #[arg(long)]
    pub sim_binary: Option<PathBuf>,
    /// Keep the scratch Postgres database (or the SQLite file) for inspection.
    #[arg(long)]
    pub keep_database: bool,
    /// The tokio runtime to run in. `multi-thread` is what `roster-sync run` uses; the other
    /// shows what a single-threaded daemon would cost.
    #[arg(long, value_enum, default_value_t = RuntimeKind::MultiThread)]
    pub runtime: RuntimeKind,
    /// Instead of the capacity run, measure the floor: this many polls of one meeting of
    /// `--attendees` through the daemon's client (16 at once, no rate budget, the simulator
    /// unthrottled), and the CPU each one costs. `--quota-rps` only scales the result to a
    /// share of one core at that rate.
    #[arg(long)]
    pub floor_polls: Option<u64>,
    /// After the capacity run, the floor is measured in the same process for this long: the
    /// bare SDK client pages the same meetings at the rate the daemon reached after its
    /// warm-up, with the same churn. `0s` skips it.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub floor_duration: Duration,
    /// Add a `[[webhooks]]` sink (all events, a fixed test secret) posting to this URL
    /// (https, or http to a loopback address): compare the sweep with and without it.
    #[arg(long, conflicts_with = "webhook_hung")]
    pub webhook_url: Option<String>,
    /// Add a `[[webhooks]]` sink posting to a receiver started here that accepts connections
    /// and never answers: every POST times out (`webhook.timeout`) and is retried with
    /// backoff, for the whole run. A hung receiver must not slow polling.
    #[arg(long)]
    pub webhook_hung: bool,
    /// Instead of polling in this process, run this many `roster-sync run` processes in
    /// cluster mode (`cluster.enabled`) on one scratch Postgres database (needs
    /// `--database-url`), each configured with the daemon's rate, and report the fleet's
    /// requests and throttles at the simulator, the sweeps and each replica's CPU and memory.
    #[arg(long, conflicts_with_all = ["webhook_url", "webhook_hung"])]
    pub replicas: Option<usize>,
    /// `poll.strategy`: `uniform` or `change_aware` (default: the configuration's default).
    #[arg(long, value_parser = parse_strategy)]
    pub strategy: Option<PollStrategy>,
    /// `poll.max_interval` (default: the configuration's default, 2m).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub max_interval: Option<Duration>,
    /// How the churn's changes are spread over the meetings: `uniform`, or `zipf:S` (the
    /// n-th meeting gets changes in proportion to 1 / n^S; same total rate).
    #[arg(long, default_value = "uniform")]
    pub churn_skew: Skew,
}

pub fn parse_strategy(s: &str) -> Result<PollStrategy, String> {
    match s {
        "uniform" => Ok(PollStrategy::Uniform),
        "change_aware" | "change-aware" => Ok(PollStrategy::ChangeAware),
        _ => Err(format!("{s:?} is not uniform or change_aware")),
    }
}

/// See [`BenchArgs::runtime`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuntimeKind {
    /// tokio's multi-threaded scheduler, one worker per core (as `#[tokio::main]`).
    MultiThread,
    /// tokio's current-thread scheduler.
    CurrentThread,
}

impl RuntimeKind {
    /// A runtime of this kind with I/O and timers enabled.
    ///
    /// # Errors
    /// The OS refused the runtime's threads or its I/O driver.
    pub fn build(self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut builder = match self {
            Self::MultiThread => tokio::runtime::Builder::new_multi_thread(),
            Self::CurrentThread => tokio::runtime::Builder::new_current_thread(),
        };
        builder.enable_all().build()
    }
}
