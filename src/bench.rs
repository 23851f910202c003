//! `roster-bench`: a capacity run of the daemon against the simulator, with numbers anyone can
//! reproduce — how close to the quota it polls, how many requests are throttled, how long a
//! sweep of every meeting takes, how late changes are detected, and what it costs in CPU and
//! memory.
//!
//! The simulator runs as a child process (`roster-sync sim`, the binary next to this one) so
//! that the CPU time and peak RSS measured here are the daemon's: the scheduler, the SDK
//! client, the diff and the store, in this process. The churn driver and the measurement
//! (event matching, sweep tracking) also run here and are included; they are small next to
//! the polling. It must never talk to AWS: every client points at the child simulator with
//! placeholder credentials, and it only ever writes to a database it created (a fresh SQLite
//! file, or a scratch Postgres database that it drops afterwards).
//!
//! Phases: **setup** (create the meetings and attendees over HTTP; control operations are
//! exempt from the simulator's quota; not measured), **warm-up** (polling starts: CPU and peak
//! RSS are measured from here; it ends with the first sweep, which records every attendee as
//! joined), **churn** (`--duration` of joins, deletions and capability changes at
//! `--churn-per-s`), **settle** (churn stops; polling goes on until a sweep that started after
//! the last change has completed, so every change could be seen).
//!
//! A **sweep** is the time it takes for every meeting to complete one successful poll that
//! started after the sweep began. The first sweep begins when polling starts; each next one
//! begins when the previous one completes. `sweep_p50_s` and `sweep_max_s` are over the
//! completed sweeps of the run. Budget-bound, a sweep cannot be shorter than
//! `ideal_sweep_s` = pages of all meetings / quota.
//!
//! **Detection latency** is from the Driver's answer to a change (the simulator has applied
//! it) to the moment the scheduler's event sink delivers the matching event (it is committed),
//! matched by meeting, attendee and kind.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::{Context, bail};
use rand::Rng;
use serde::Serialize;
use tokio::sync::broadcast;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::chime::{ChimeClient, ClientOptions, RosterSource as _, simulator_sdk_config};
use crate::config::Settings;
use crate::domain::{Capabilities, Capability, EventKind, MeetingId, Region};
use crate::driver::Driver;
use crate::scheduler::{PollReport, Scheduler, SchedulerOptions};
use crate::store::{self, Backend, Store, StoredEvent, redact_url};

/// Events buffered between the scheduler's sink and the latency matcher.
const EVENT_BUFFER: usize = 4096;

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
    /// The `roster-sync` binary that serves the simulator (default: next to this one).
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
}

/// What a run measured: the capacity run's report, or the floor's.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Outcome {
    Capacity(Report),
    Floor(FloorReport),
}

/// `--floor-polls`: the CPU cost of one poll through the SDK client alone (signing, HTTP,
/// JSON, conversion), with no scheduler, store or rate budget. Printed as the last line.
#[derive(Debug, Clone, Serialize)]
pub struct FloorReport {
    pub mode: &'static str,
    pub attendees: usize,
    pub polls: u64,
    /// ListAttendees requests sent (pages of all polls).
    pub requests: u64,
    pub runtime: RuntimeKind,
    pub wall_s: f64,
    pub cpu_seconds: f64,
    pub cpu_us_per_request: f64,
    /// cpu_us_per_request × quota_rps: the share of one core these requests alone cost when
    /// the daemon polls at `--quota-rps`.
    pub quota_rps: f64,
    pub cpu_fraction_at_quota: f64,
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

/// The measured numbers; printed as the last line of `roster-bench`, as one JSON object.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub meetings: usize,
    pub attendees: usize,
    pub churn_per_s: f64,
    pub quota_rps: f64,
    pub daemon_rps: f64,
    pub daemon_burst: u32,
    pub database: &'static str,
    pub runtime: RuntimeKind,
    /// Length of the churn phase, s.
    pub duration_s: f64,
    /// From polling start to stop (warm-up + churn + settle), s: the CPU window.
    pub polling_s: f64,
    /// ListAttendees requests the daemon sent, retries included.
    pub requests: u64,
    /// Of those, answered 429.
    pub throttled: u64,
    pub throttled_ratio: f64,
    /// Pages received per second of polling.
    pub goodput_rps: f64,
    /// Pages of all meetings at the start / quota: the shortest possible sweep.
    pub ideal_sweep_s: f64,
    pub sweeps: usize,
    pub sweep_p50_s: f64,
    pub sweep_max_s: f64,
    /// The first sweep, which records every attendee as joined.
    pub sweep_first_s: f64,
    /// Changes the churn made, and of those, matched with their event.
    pub changes: u64,
    pub changes_detected: u64,
    pub detection_latency_p50_ms: f64,
    pub detection_latency_p99_ms: f64,
    pub detection_latency_max_ms: f64,
    /// Events the daemon recorded (the warm-up's joins included).
    pub events: u64,
    /// Snapshot and event rows written by polls that found no change: on Postgres, row
    /// writes counted by the server beyond the two per event (the event and its snapshot
    /// row); on SQLite, rows beyond those the events account for.
    pub unchanged_poll_writes: i64,
    /// utime + stime of this process (the daemon side; the simulator is another process)
    /// over the polling window.
    pub cpu_seconds: f64,
    /// cpu_seconds / polling_s: the share of one core.
    pub cpu_fraction: f64,
    /// The same over the churn and settle phases only (after the warm-up sweep).
    pub cpu_fraction_after_warmup: f64,
    /// VmHWM of this process since polling started (reset after setup), MiB.
    pub peak_rss_mb: f64,
    /// The daemon's rate budget at the end, and how many times it decreased.
    pub rate_final: f64,
    pub rate_decreases: u64,
}

/// Runs the benchmark; progress and the human summary go to stdout, the JSON line is for the
/// caller to print last.
///
/// # Errors
/// The simulator binary is missing or does not start, the database cannot be created, or the
/// setup fails (the message says which).
pub async fn run(args: BenchArgs) -> anyhow::Result<Outcome> {
    validate(&args)?;
    let mut settings = Settings::defaults()?;
    let daemon_rps = args.daemon_rps.unwrap_or(settings.rate.requests_per_second);
    let daemon_burst = args
        .daemon_burst
        .unwrap_or_else(|| (2.0 * daemon_rps).ceil().max(1.0) as u32);
    settings.rate.requests_per_second = daemon_rps;
    settings.rate.burst = daemon_burst;
    if let Some(i) = args.interval {
        settings.poll.interval = i;
    }
    if let Some(c) = args.concurrency {
        settings.poll.concurrency = c;
    }
    if let Some(m) = args.max_results {
        settings.poll.max_results = m;
    }
    settings.validate()?;
    if let Some(polls) = args.floor_polls {
        return floor(&args, &settings, polls).await.map(Outcome::Floor);
    }

    let sim = SimProcess::start(&args)?;
    println!(
        "simulator: {} (pid {}, quota {} rps, burst {}; its own process, not measured)",
        sim.url,
        sim.child.id(),
        args.quota_rps,
        sim_burst(args.quota_rps)
    );
    let db = BenchDb::create(&args).await?;
    println!("database: {}", redact_url(&db.url));
    let report = measure(&args, &settings, &sim, &db).await;
    drop(sim);
    db.finish(args.keep_database).await;
    report.map(Outcome::Capacity)
}

/// Polls kept in flight at once by [`floor`]: the default `poll.concurrency`.
const FLOOR_CONCURRENCY: u64 = 16;

/// See [`BenchArgs::floor_polls`].
async fn floor(args: &BenchArgs, settings: &Settings, polls: u64) -> anyhow::Result<FloorReport> {
    let mut sim_args = args.clone();
    sim_args.quota_rps = f64::INFINITY;
    let sim = SimProcess::start(&sim_args)?;
    let region = Region::parse("us-east-1")?;
    // The daemon's client settings (timeouts, retries, page size), without its rate budget.
    let mut options = ClientOptions::from_settings(settings);
    options.endpoint_url = Some(sim.url.clone());
    options.requests_per_second = 1e9;
    options.burst = 1_000_000;
    options.adaptive = false;
    let client = Arc::new(ChimeClient::new(simulator_sdk_config(&region), options));
    let driver = Driver::new(client.sdk_client(&region));
    let meeting = driver
        .create_meeting("floor-bench", region.as_str())
        .await?;
    driver
        .add_attendees(
            &meeting,
            (0..args.attendees).map(|i| (format!("floor-{i}"), None)),
        )
        .await?;
    // Warm: connections open, caches filled.
    for _ in 0..FLOOR_CONCURRENCY * 4 {
        client
            .fetch_roster(&meeting, &region, &crate::chime::NoPause)
            .await?;
    }
    let requests_before = client.counters().requests.load(Ordering::Relaxed);
    let cpu_start = cpu_seconds()?;
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for worker in 0..FLOOR_CONCURRENCY {
        let (client, meeting, region) = (Arc::clone(&client), meeting.clone(), region.clone());
        let share = polls / FLOOR_CONCURRENCY + u64::from(worker < polls % FLOOR_CONCURRENCY);
        tasks.spawn(async move {
            for _ in 0..share {
                client
                    .fetch_roster(&meeting, &region, &crate::chime::NoPause)
                    .await?;
            }
            Ok::<_, crate::chime::ChimeError>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("a floor task failed")??;
    }
    let wall_s = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds()? - cpu_start;
    let requests = client.counters().requests.load(Ordering::Relaxed) - requests_before;
    let per_request = cpu / requests.max(1) as f64;
    let report = FloorReport {
        mode: "floor",
        attendees: args.attendees,
        polls,
        requests,
        runtime: args.runtime,
        wall_s,
        cpu_seconds: cpu,
        cpu_us_per_request: per_request * 1e6,
        quota_rps: args.quota_rps,
        cpu_fraction_at_quota: per_request * args.quota_rps,
    };
    println!(
        "floor: {polls} polls of {} attendees = {requests} requests in {wall_s:.1}s; cpu {cpu:.2}s = {:.0} µs a request \
         (client path only: SigV4, HTTP, JSON, conversion); at {} rps that alone is {:.1} % of one core",
        args.attendees,
        report.cpu_us_per_request,
        args.quota_rps,
        100.0 * report.cpu_fraction_at_quota
    );
    Ok(report)
}

/// Everything between creating the database and dropping it: setup, the phases, the report.
async fn measure(
    args: &BenchArgs,
    settings: &Settings,
    sim: &SimProcess,
    db: &BenchDb,
) -> anyhow::Result<Report> {
    let region = Region::parse("us-east-1")?;
    let daemon_rps = settings.rate.requests_per_second;
    let daemon_burst = settings.rate.burst;
    let store = Store::connect(&db.url, settings.database.max_connections)
        .await
        .context("opening the bench database")?;
    store.acquire_writer_lock().await?;
    store.migrate().await.context("applying migrations")?;

    let mut options = ClientOptions::from_settings(settings);
    options.endpoint_url = Some(sim.url.clone());
    let client = Arc::new(ChimeClient::new(
        simulator_sdk_config(&region),
        options.clone(),
    ));
    // The driver has its own client, connections and (unused) budget: control operations are
    // exempt from the simulator's quota and must not share the daemon's.
    let driver_client = ChimeClient::new(simulator_sdk_config(&region), options);
    let driver = Driver::new(driver_client.sdk_client(&region));

    let setup_started = Instant::now();
    let fleet = setup(args, &driver, &store, &region).await?;
    let pages_per_meeting = pages(args.attendees, settings.poll.max_results);
    let total_pages = pages_per_meeting * args.meetings as u64;
    let ideal_sweep_s = total_pages as f64 / args.quota_rps;
    println!(
        "setup: {} meetings × {} attendees in {:.1}s; {} pages per sweep, ideal sweep {:.1}s at {} rps",
        args.meetings,
        args.attendees,
        setup_started.elapsed().as_secs_f64(),
        total_pages,
        ideal_sweep_s,
        args.quota_rps
    );

    let sweeps = Arc::new(Mutex::new(Sweeps::new(&fleet.ids)));
    let changes = Arc::new(Mutex::new(Changes::default()));
    // Small: the receiver keeps up, and a full ring of events is memory the daemon would not
    // hold (a lagging receiver is reported, and only the warm-up's joins could lag).
    let (tx, rx) = broadcast::channel::<StoredEvent>(EVENT_BUFFER);
    let receiver = tokio::spawn(receive_events(rx, Arc::clone(&changes)));
    let observer = {
        let sweeps = Arc::clone(&sweeps);
        move |r: &PollReport<'_>| lock(&sweeps).on_poll(r)
    };
    let scheduler = Scheduler::new(
        Arc::clone(&client),
        store.clone(),
        SchedulerOptions::from_settings(settings),
    )
    .with_event_sink(tx)
    .with_poll_observer(observer);

    // As `roster-sync run`: the Prometheus recorder counts every metric the daemon updates
    // (nothing serves it here), with the same periodic upkeep.
    let ops = crate::http::Ops::install(crate::health::Health::new(settings.http.stall_after));
    let upkeep = {
        let ops = ops.clone();
        tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_secs(5));
            loop {
                t.tick().await;
                ops.upkeep();
            }
        })
    };

    // Setup is not the daemon's work: what it freed goes back to the OS, and the peak RSS
    // starts again from here.
    release_free_memory();
    let hwm_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let cpu_start = cpu_seconds()?;
    let polling_started = Instant::now();
    lock(&sweeps).begin(polling_started);
    let cancel = CancellationToken::new();
    let daemon = tokio::spawn(scheduler.run(cancel.clone()));

    // Warm-up: the first sweep records everyone as joined.
    let warmup_limit = settle_limit(ideal_sweep_s, args.quota_rps.min(daemon_rps), args);
    wait_for(&sweeps, warmup_limit, |s| !s.completed.is_empty()).await;
    let warmup_s = polling_started.elapsed().as_secs_f64();
    let cpu_warm = cpu_seconds()?;
    println!(
        "warm-up: first sweep done after {warmup_s:.1}s; churn for {:?}",
        args.duration
    );
    lock(&changes).armed = true;

    let churned = churn(args, &driver, fleet, &changes).await;
    let churn_stopped = Instant::now();
    println!(
        "churn: {} changes made ({} failed); settling until a sweep started after the last change completes",
        churned.made, churned.failed
    );
    wait_for(&sweeps, warmup_limit, |s| {
        s.completed.iter().any(|c| c.started >= churn_stopped)
    })
    .await;

    let polling_s = polling_started.elapsed().as_secs_f64();
    let cpu_end = cpu_seconds()?;
    let peak_rss_mb = peak_rss_mb()?;
    cancel.cancel();
    upkeep.abort();
    daemon.await.context("the scheduler task failed")?;
    let received = receiver.await.context("the event receiver failed")?;
    let budget = client.budget(&region);
    let counters = client.counters();
    let requests = counters.requests.load(Ordering::Relaxed);
    let throttled = counters.throttled.load(Ordering::Relaxed);
    let pages_ok = counters.pages_ok.load(Ordering::Relaxed);

    store.close().await;
    let unchanged_poll_writes = db.unchanged_poll_writes(received).await?;
    let sweeps = std::mem::take(&mut *lock(&sweeps));
    let changes = std::mem::take(&mut *lock(&changes));
    let mut sweep_times: Vec<f64> = sweeps.completed.iter().map(|c| c.seconds).collect();
    let sweep_first_s = sweep_times.first().copied().unwrap_or(f64::NAN);
    sweep_times.sort_by(f64::total_cmp);
    let mut latencies = changes.latencies_ms.clone();
    latencies.sort_by(f64::total_cmp);
    let report = Report {
        meetings: args.meetings,
        attendees: args.attendees,
        churn_per_s: args.churn_per_s,
        quota_rps: args.quota_rps,
        daemon_rps,
        daemon_burst,
        database: match db.backend {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        },
        runtime: args.runtime,
        duration_s: args.duration.as_secs_f64(),
        polling_s,
        requests,
        throttled,
        throttled_ratio: ratio(throttled as f64, requests as f64),
        goodput_rps: ratio(pages_ok as f64, polling_s),
        ideal_sweep_s,
        sweeps: sweep_times.len(),
        sweep_p50_s: percentile(&sweep_times, 0.5),
        sweep_max_s: sweep_times.last().copied().unwrap_or(f64::NAN),
        sweep_first_s,
        changes: churned.made,
        changes_detected: changes.latencies_ms.len() as u64,
        detection_latency_p50_ms: percentile(&latencies, 0.5),
        detection_latency_p99_ms: percentile(&latencies, 0.99),
        detection_latency_max_ms: latencies.last().copied().unwrap_or(f64::NAN),
        events: received,
        unchanged_poll_writes,
        cpu_seconds: cpu_end - cpu_start,
        cpu_fraction: ratio(cpu_end - cpu_start, polling_s),
        cpu_fraction_after_warmup: ratio(cpu_end - cpu_warm, polling_s - warmup_s),
        peak_rss_mb,
        rate_final: budget.rate(),
        rate_decreases: budget.decreases(),
    };
    print_summary(&report, &sweeps.completed, hwm_reset);
    Ok(report)
}

fn validate(args: &BenchArgs) -> anyhow::Result<()> {
    if args.meetings == 0 {
        bail!("--meetings must be at least 1");
    }
    if args.floor_polls.is_some_and(|n| n < FLOOR_CONCURRENCY) {
        bail!("--floor-polls must be at least {FLOOR_CONCURRENCY}");
    }
    if !(1..=250).contains(&args.attendees) {
        bail!("--attendees must be 1..=250 (the service's limit per meeting)");
    }
    if !(args.quota_rps.is_finite() && args.quota_rps > 0.0) {
        bail!("--quota-rps must be a positive number");
    }
    if !(args.churn_per_s.is_finite() && args.churn_per_s >= 0.0) {
        bail!("--churn-per-s must be 0 or more");
    }
    if args.daemon_rps.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
        bail!("--daemon-rps must be a positive number");
    }
    Ok(())
}

fn sim_burst(quota: f64) -> u32 {
    (2.0 * quota).ceil().max(1.0) as u32
}

/// `ListAttendees` pages of a meeting of `attendees` at `max_results` a page.
fn pages(attendees: usize, max_results: i32) -> u64 {
    let per_page = u64::try_from(max_results.max(1)).unwrap_or(1);
    (attendees as u64).div_ceil(per_page).max(1)
}

/// The longest a phase may wait for a sweep: three ideal sweeps at the slower of the quota
/// and the daemon's rate, plus the poll interval and a minute.
fn settle_limit(ideal_sweep_s: f64, effective_rps: f64, args: &BenchArgs) -> Duration {
    let slow = ideal_sweep_s * args.quota_rps / effective_rps.max(f64::MIN_POSITIVE);
    let interval = args.interval.unwrap_or(Duration::from_secs(10));
    Duration::from_secs_f64(3.0 * slow + 60.0) + interval
}

async fn wait_for(sweeps: &Mutex<Sweeps>, limit: Duration, done: impl Fn(&Sweeps) -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done(&lock(sweeps)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("(gave up waiting after {limit:?})");
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::NAN }
}

/// Nearest-rank percentile of sorted values; NaN when there are none.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The `roster-sync sim` child. Killed when dropped.
struct SimProcess {
    child: Child,
    url: String,
}

impl SimProcess {
    fn start(args: &BenchArgs) -> anyhow::Result<Self> {
        let binary = match &args.sim_binary {
            Some(b) => b.clone(),
            None => std::env::current_exe()
                .context("locating roster-bench")?
                .with_file_name("roster-sync"),
        };
        if !binary.is_file() {
            bail!(
                "the simulator binary {} does not exist: build it first with `cargo build --release` \
                 (roster-bench runs `roster-sync sim` as a separate process so its CPU is not counted)",
                binary.display()
            );
        }
        let mut child = Command::new(&binary)
            .args(["sim", "--listen", "127.0.0.1:0", "--exempt-control"])
            .args(["--rate", &args.quota_rps.to_string()])
            .args(["--burst", &sim_burst(args.quota_rps).to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {} sim", binary.display()))?;
        let stdout = child.stdout.take().context("the simulator's stdout")?;
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line);
        let mut sim = Self {
            child,
            url: line.trim().to_owned(),
        };
        match read {
            Ok(n) if n > 0 && sim.url.starts_with("http://") => Ok(sim),
            Ok(_) => {
                let status = sim.child.try_wait().ok().flatten();
                bail!("the simulator printed no URL (exit status {status:?})")
            }
            Err(e) => Err(e).context("reading the simulator's URL"),
        }
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The database of one run: a fresh SQLite file in a temporary directory, or a scratch
/// Postgres database.
struct BenchDb {
    url: String,
    backend: Backend,
    /// SQLite: the directory to delete. Postgres: the admin URL and database name to drop.
    cleanup: Cleanup,
}

enum Cleanup {
    Directory(PathBuf),
    Postgres { admin_url: String, name: String },
}

impl BenchDb {
    async fn create(args: &BenchArgs) -> anyhow::Result<Self> {
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let tag = &tag[..12];
        match &args.database_url {
            Some(admin_url) => {
                let name = format!("roster_bench_{tag}");
                let url = store::create_scratch_database(admin_url, &name)
                    .await
                    .with_context(|| {
                        format!(
                            "creating the scratch database {name} on {}",
                            redact_url(admin_url)
                        )
                    })?;
                Ok(Self {
                    url,
                    backend: Backend::Postgres,
                    cleanup: Cleanup::Postgres {
                        admin_url: admin_url.clone(),
                        name,
                    },
                })
            }
            None => {
                let dir = std::env::temp_dir().join(format!("roster-bench-{tag}"));
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                Ok(Self {
                    url: format!("sqlite://{}", dir.join("roster.db").display()),
                    backend: Backend::Sqlite,
                    cleanup: Cleanup::Directory(dir),
                })
            }
        }
    }

    /// Snapshot and event rows written beyond what `events` account for (see
    /// [`Report::unchanged_poll_writes`]). Call after the daemon's store is closed, so the
    /// server has every connection's statistics.
    async fn unchanged_poll_writes(&self, events: u64) -> anyhow::Result<i64> {
        let events = i64::try_from(events).unwrap_or(i64::MAX);
        if self.backend == Backend::Postgres {
            // Statistics of closed connections arrive within a moment.
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        let store = Store::connect(&self.url, 1).await?;
        let counts = store.write_counts().await?;
        store.close().await;
        Ok(match counts.row_writes {
            // Each event is one insert into roster_events and one insert, update or delete
            // of roster_attendees.
            Some(writes) => writes - 2 * events,
            // Events rows beyond the events delivered, plus snapshot rows beyond what joins
            // minus leaves leave (the warm-up's joins are events too).
            None => counts.event_rows - events,
        })
    }

    async fn finish(self, keep: bool) {
        match self.cleanup {
            Cleanup::Directory(dir) if !keep => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Cleanup::Postgres { admin_url, name } if !keep => {
                if let Err(e) = store::drop_scratch_database(&admin_url, &name).await {
                    println!("could not drop the scratch database {name}: {e}");
                }
            }
            Cleanup::Directory(dir) => println!("kept {}", dir.display()),
            Cleanup::Postgres { name, .. } => println!("kept database {name}"),
        }
    }
}

/// The meetings created at setup, and their attendees (as 128-bit GUIDs, 16 bytes each).
struct Fleet {
    ids: Vec<MeetingId>,
    attendees: Vec<Vec<u128>>,
    /// Whether each attendee has the "listener" capabilities (else the default ones).
    listener: Vec<Vec<bool>>,
}

async fn setup(
    args: &BenchArgs,
    driver: &Driver,
    store: &Store,
    region: &Region,
) -> anyhow::Result<Fleet> {
    const WORKERS: usize = 8;
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..WORKERS {
        let (next, driver, store, region) = (
            Arc::clone(&next),
            driver.clone(),
            store.clone(),
            region.clone(),
        );
        let (meetings, attendees) = (args.meetings, args.attendees);
        workers.spawn(async move {
            let mut made = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= meetings {
                    return anyhow::Ok(made);
                }
                let id = driver
                    .create_meeting(&format!("bench-{i}"), region.as_str())
                    .await?;
                let people = (0..attendees).map(|a| (format!("bench-{i}-{a}"), None));
                let created = driver.add_attendees(&id, people).await?;
                let guids = created
                    .iter()
                    .map(|c| guid(c.attendee_id.as_str()))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                drop(created);
                store
                    .add_meeting(&id, &region, Some("bench"), crate::domain::now(), false)
                    .await?;
                made.push((i, id, guids));
            }
        });
    }
    let mut all = Vec::with_capacity(args.meetings);
    while let Some(done) = workers.join_next().await {
        all.extend(done.context("a setup worker failed")??);
    }
    all.sort_by_key(|(i, _, _)| *i);
    let mut fleet = Fleet {
        ids: Vec::with_capacity(all.len()),
        attendees: Vec::with_capacity(all.len()),
        listener: Vec::with_capacity(all.len()),
    };
    for (_, id, guids) in all {
        fleet.listener.push(vec![false; guids.len()]);
        fleet.ids.push(id);
        fleet.attendees.push(guids);
    }
    Ok(fleet)
}

fn guid(s: &str) -> anyhow::Result<u128> {
    Ok(uuid::Uuid::parse_str(s)
        .with_context(|| format!("{s:?} is not a GUID"))?
        .as_u128())
}

fn attendee_id(g: u128) -> anyhow::Result<crate::domain::AttendeeId> {
    Ok(crate::domain::AttendeeId::parse(
        &uuid::Uuid::from_u128(g).hyphenated().to_string(),
    )?)
}

/// A change the churn made: meeting, attendee, kind.
type ChangeKey = (u128, u128, EventKind);

/// Changes made and not yet matched with their event, and the latencies of those matched.
#[derive(Default)]
struct Changes {
    /// Set when the churn starts: events before are the warm-up's joins.
    armed: bool,
    /// When the Driver's answer arrived; the earliest, if the same change was made twice.
    pending: HashMap<ChangeKey, Instant>,
    /// Events that arrived before the Driver's answer was noted (a poll raced it).
    early: HashMap<ChangeKey, Instant>,
    latencies_ms: Vec<f64>,
}

impl Changes {
    fn made(&mut self, key: ChangeKey, at: Instant) {
        match self.early.remove(&key) {
            Some(seen) => self
                .latencies_ms
                .push(seen.saturating_duration_since(at).as_secs_f64() * 1e3),
            None => {
                self.pending.entry(key).or_insert(at);
            }
        }
    }

    fn seen(&mut self, key: ChangeKey, at: Instant) {
        if !self.armed {
            return;
        }
        match self.pending.remove(&key) {
            Some(made) => self
                .latencies_ms
                .push(at.saturating_duration_since(made).as_secs_f64() * 1e3),
            None => {
                self.early.insert(key, at);
            }
        }
    }
}

/// Matches every event from the scheduler's sink with the change that caused it; returns how
/// many events arrived.
async fn receive_events(
    mut rx: broadcast::Receiver<StoredEvent>,
    changes: Arc<Mutex<Changes>>,
) -> u64 {
    let mut received = 0u64;
    loop {
        match rx.recv().await {
            Ok(e) => {
                let at = Instant::now();
                received += 1;
                if let (Ok(m), Ok(a)) = (guid(e.meeting_id.as_str()), guid(e.attendee_id.as_str()))
                {
                    lock(&changes).seen((m, a, e.kind), at);
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                println!("(the event receiver fell behind: {n} events not matched)");
                received += n;
            }
            Err(broadcast::error::RecvError::Closed) => return received,
        }
    }
}

struct Churned {
    made: u64,
    failed: u64,
}

/// The capabilities a capability change switches to and from the default.
const LISTENER: Capabilities = Capabilities {
    audio: Capability::Receive,
    video: Capability::None,
    content: Capability::None,
};

/// `--churn-per-s` changes a second for `--duration`, each on a random meeting: a deletion
/// when it has its starting number of attendees or more, else a join (2 in 3), or a
/// capability change of a random attendee between the default and [`LISTENER`] (1 in 3).
async fn churn(
    args: &BenchArgs,
    driver: &Driver,
    mut fleet: Fleet,
    changes: &Mutex<Changes>,
) -> Churned {
    let mut churned = Churned { made: 0, failed: 0 };
    if args.churn_per_s <= 0.0 {
        tokio::time::sleep(args.duration).await;
        return churned;
    }
    let stop = Instant::now() + args.duration;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / args.churn_per_s));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut serial = 0u64;
    loop {
        ticker.tick().await;
        if Instant::now() >= stop {
            return churned;
        }
        let (m, membership, pick) = {
            let mut rng = rand::rng();
            let m = rng.random_range(0..fleet.ids.len());
            (m, rng.random_bool(2.0 / 3.0), rng.random::<u64>())
        };
        let result = change_one(
            args,
            driver,
            &mut fleet,
            m,
            membership,
            pick,
            &mut serial,
            changes,
        )
        .await;
        match result {
            Ok(()) => churned.made += 1,
            Err(e) => {
                churned.failed += 1;
                tracing::warn!(error = %format!("{e:#}"), "a churn change failed");
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn change_one(
    args: &BenchArgs,
    driver: &Driver,
    fleet: &mut Fleet,
    m: usize,
    membership: bool,
    pick: u64,
    serial: &mut u64,
    changes: &Mutex<Changes>,
) -> anyhow::Result<()> {
    let meeting = &fleet.ids[m];
    let mkey = guid(meeting.as_str())?;
    let people = &mut fleet.attendees[m];
    let listener = &mut fleet.listener[m];
    let len = people.len();
    if membership && len > 0 && len >= args.attendees || !membership && len == 0 {
        let i = usize::try_from(pick % len as u64)?;
        driver
            .delete_attendee(meeting, &attendee_id(people[i])?)
            .await?;
        let at = Instant::now();
        lock(changes).made((mkey, people[i], EventKind::Left), at);
        people.swap_remove(i);
        listener.swap_remove(i);
    } else if membership {
        *serial += 1;
        let created = driver
            .add_attendees(meeting, [(format!("churn-{serial}"), None)])
            .await?;
        let at = Instant::now();
        let first = created
            .first()
            .context("BatchCreateAttendee created nobody")?;
        let a = guid(first.attendee_id.as_str())?;
        lock(changes).made((mkey, a, EventKind::Joined), at);
        people.push(a);
        listener.push(false);
    } else {
        let i = usize::try_from(pick % len as u64)?;
        let to = if listener[i] {
            Capabilities::DEFAULT
        } else {
            LISTENER
        };
        driver
            .set_capabilities(meeting, &attendee_id(people[i])?, to)
            .await?;
        let at = Instant::now();
        lock(changes).made((mkey, people[i], EventKind::CapabilitiesChanged), at);
        listener[i] = !listener[i];
    }
    Ok(())
}

/// One completed sweep.
#[derive(Debug, Clone, Copy)]
struct Sweep {
    started: Instant,
    seconds: f64,
}

/// Tracks sweeps from the scheduler's poll reports (see the module header).
#[derive(Default)]
struct Sweeps {
    index: HashMap<MeetingId, usize>,
    /// The sweep each meeting last completed a poll in.
    done_in: Vec<u32>,
    current: u32,
    started: Option<Instant>,
    remaining: usize,
    completed: Vec<Sweep>,
}

impl Sweeps {
    fn new(ids: &[MeetingId]) -> Self {
        Self {
            index: ids
                .iter()
                .cloned()
                .enumerate()
                .map(|(i, id)| (id, i))
                .collect(),
            done_in: vec![0; ids.len()],
            current: 0,
            started: None,
            remaining: ids.len(),
            completed: Vec::new(),
        }
    }

    fn begin(&mut self, at: Instant) {
        self.current = 1;
        self.started = Some(at);
        self.remaining = self.done_in.len();
    }

    fn on_poll(&mut self, r: &PollReport<'_>) {
        let Some(started) = self.started else { return };
        if !r.succeeded() || r.started < started {
            return;
        }
        let Some(&i) = self.index.get(r.meeting_id) else {
            return;
        };
        if self.done_in[i] == self.current {
            return;
        }
        self.done_in[i] = self.current;
        self.remaining -= 1;
        if self.remaining == 0 {
            self.completed.push(Sweep {
                started,
                seconds: r.finished.duration_since(started).as_secs_f64(),
            });
            self.current += 1;
            self.started = Some(r.finished);
            self.remaining = self.done_in.len();
        }
    }
}

/// utime + stime of this process, in seconds. `/proc/self/stat` counts in clock ticks of
/// `USER_HZ`, which Linux fixes at 100 for user space.
fn cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
    // The command name may hold spaces and parentheses: fields are counted after the last ')'.
    let rest = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .context("unexpected /proc/self/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(i)
            .context("short /proc/self/stat")?
            .parse::<u64>()
            .context("unexpected /proc/self/stat")? as f64)
    };
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

/// Returns the heap memory freed so far to the OS. glibc keeps freed memory in its arenas,
/// where the setup's garbage (thousands of CreateMeeting and BatchCreateAttendee answers)
/// would count as the daemon's resident memory.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_memory() {
    unsafe extern "C" {
        fn malloc_trim(pad: usize) -> std::ffi::c_int;
    }
    // SAFETY: malloc_trim takes no pointer; it only hands free heap pages back to the kernel,
    // and is safe to call at any time from any thread.
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() {}

/// VmHWM of this process, MiB.
fn peak_rss_mb() -> anyhow::Result<f64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .context("no VmHWM in /proc/self/status")?;
    Ok(kb / 1024.0)
}

fn print_summary(r: &Report, sweeps: &[Sweep], hwm_reset: bool) {
    let mut s = String::new();
    let _ = writeln!(s, "\n== roster-bench summary ==");
    let _ = writeln!(
        s,
        "{} meetings × {} attendees, churn {}/s for {:.0}s, {} database",
        r.meetings, r.attendees, r.churn_per_s, r.duration_s, r.database
    );
    let _ = writeln!(
        s,
        "quota {} rps (simulator) — daemon configured for {} rps, burst {}",
        r.quota_rps, r.daemon_rps, r.daemon_burst
    );
    let _ = writeln!(
        s,
        "requests {} in {:.1}s of polling, throttled {} ({:.2} %), goodput {:.2} pages/s ({:.1} % of the quota)",
        r.requests,
        r.polling_s,
        r.throttled,
        100.0 * r.throttled_ratio,
        r.goodput_rps,
        100.0 * r.goodput_rps / r.quota_rps
    );
    let _ = writeln!(
        s,
        "rate budget at the end {:.2} rps after {} decrease(s)",
        r.rate_final, r.rate_decreases
    );
    let list: Vec<String> = sweeps.iter().map(|w| format!("{:.1}", w.seconds)).collect();
    let _ = writeln!(
        s,
        "sweeps (s): [{}] — p50 {:.1}s, max {:.1}s; ideal {:.1}s (p50 = {:.3} × ideal)",
        list.join(", "),
        r.sweep_p50_s,
        r.sweep_max_s,
        r.ideal_sweep_s,
        r.sweep_p50_s / r.ideal_sweep_s
    );
    let _ = writeln!(
        s,
        "changes {} made, {} detected; detection latency p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        r.changes,
        r.changes_detected,
        r.detection_latency_p50_ms,
        r.detection_latency_p99_ms,
        r.detection_latency_max_ms
    );
    let _ = writeln!(
        s,
        "events {}, snapshot/event rows written by unchanged polls: {}",
        r.events, r.unchanged_poll_writes
    );
    let _ = writeln!(
        s,
        "daemon side (this process; the simulator runs in its own process and is not counted): \
         cpu {:.2}s = {:.2} % of one core ({:.2} % after the warm-up sweep), peak RSS {:.1} MiB{}",
        r.cpu_seconds,
        100.0 * r.cpu_fraction,
        100.0 * r.cpu_fraction_after_warmup,
        r.peak_rss_mb,
        if hwm_reset {
            " (since polling started)"
        } else {
            " (since process start: /proc/self/clear_refs was not writable)"
        }
    );
    print!("{s}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::PollKind;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn pages_round_up_and_never_drop_to_zero() {
        assert_eq!(pages(250, 100), 3);
        assert_eq!(pages(200, 100), 2);
        assert_eq!(pages(20, 100), 1);
        assert_eq!(pages(0, 100), 1);
    }

    #[test]
    fn an_event_before_the_drivers_answer_still_counts() {
        let mut c = Changes {
            armed: true,
            ..Changes::default()
        };
        let t0 = Instant::now();
        let key = (1, 2, EventKind::Joined);
        c.seen(key, t0);
        c.made(key, t0 + Duration::from_millis(3));
        assert_eq!(c.latencies_ms, vec![0.0]);
        c.made((1, 3, EventKind::Left), t0);
        c.seen((1, 3, EventKind::Left), t0 + Duration::from_millis(500));
        assert_eq!(c.latencies_ms.len(), 2);
        assert!((c.latencies_ms[1] - 500.0).abs() < 1e-6);
    }

    #[test]
    fn a_sweep_ends_when_every_meeting_completed_a_poll_started_after_it_began() {
        let ids: Vec<MeetingId> = (1..=2)
            .map(|i| MeetingId::parse(&format!("00000000-0000-0000-0000-00000000000{i}")).unwrap())
            .collect();
        let mut s = Sweeps::new(&ids);
        let t0 = Instant::now();
        s.begin(t0);
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let report = |m: usize, started: u64, finished: u64, outcome: PollKind| PollReport {
            meeting_id: &ids[m],
            started: at(started),
            finished: at(finished),
            outcome,
            pages: 1,
        };
        s.on_poll(&report(0, 0, 100, PollKind::Unchanged));
        s.on_poll(&report(0, 200, 300, PollKind::Changed));
        s.on_poll(&report(1, 300, 400, PollKind::Failed));
        assert!(s.completed.is_empty(), "a failed poll does not count");
        s.on_poll(&report(1, 400, 500, PollKind::Unchanged));
        assert_eq!(s.completed.len(), 1);
        assert!((s.completed[0].seconds - 0.5).abs() < 1e-9);
        // The next sweep began at 500 ms: a poll started before it does not count.
        s.on_poll(&report(0, 450, 600, PollKind::Unchanged));
        s.on_poll(&report(1, 500, 700, PollKind::Unchanged));
        s.on_poll(&report(0, 700, 900, PollKind::Unchanged));
        assert_eq!(s.completed.len(), 2);
        assert!((s.completed[1].seconds - 0.4).abs() < 1e-9);
    }

    #[test]
    fn cpu_and_rss_are_readable() {
        assert!(cpu_seconds().unwrap() >= 0.0);
        assert!(peak_rss_mb().unwrap() > 0.0);
    }
}
