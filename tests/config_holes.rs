//! No configuration the validator accepts may make the daemon panic or spin: a property test
//! feeds `Settings::validate` arbitrary values (zero, tiny, huge, NaN, the bounds and just past
//! them) and builds and runs a real daemon (`Daemon::build`, the real SDK client polling the
//! simulator over HTTP, a SQLite file) from every configuration it accepts. A refusal must
//! name the key.
//!
//! Every accepted configuration must poll (within its `poll.interval`, when that is short
//! enough to watch), use no more CPU than its requests explain (no spinning), stop within its
//! `shutdown.grace`.
//!
//! A panic anywhere in the process (a poll task, the scheduler, the rate budget) is caught by
//! a panic hook, so one the daemon would swallow still fails the case.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use roster_sync::app::{Daemon, DaemonOptions};
use roster_sync::chime::{ChimeClient, ClientOptions, simulator_sdk_config};
use roster_sync::config::{
    MAX_CONNECTIONS, MAX_DURATION, MAX_REQUESTS_PER_SECOND, MAX_RETENTION, MAX_SHUTDOWN_GRACE,
    MAX_STARTUP_TIMEOUT, MIN_REQUESTS_PER_SECOND, PollStrategy, Settings,
};
use roster_sync::domain::{self, MeetingId, Region};
use roster_sync::store::Store;
use tokio_util::sync::CancellationToken;

/// Panics seen by the hook since the last [`take_panics`].
static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(info.to_string());
            previous(info);
        }));
    });
}

fn take_panics() -> Vec<String> {
    std::mem::take(&mut *PANICS.lock().unwrap_or_else(|e| e.into_inner()))
}

/// A configuration as the property makes it: ordinary values for every key it varies, then
/// one to three keys pushed to an edge ([`stress`]): the bound itself, zero, just past the
/// bound, or something absurd.
#[derive(Debug, Clone)]
struct Knobs {
    interval: Duration,
    /// `poll.failure_backoff_cap` as a multiple of the interval.
    backoff_times: u32,
    retry_base: Duration,
    /// `retry.cap` as a multiple of `retry.base`.
    retry_times: u32,
    connect_timeout: Duration,
    attempt_timeout: Duration,
    page_timeout: Duration,
    stall_after: Duration,
    grace: Duration,
    statement_timeout: Duration,
    startup_timeout: Option<Duration>,
    retention: Option<Duration>,
    requests_per_second: f64,
    burst: u32,
    adaptive: bool,
    concurrency: usize,
    jitter: f64,
    max_results: i32,
    max_retries: u32,
    max_connections: u32,
    /// Which keys (indexes into [`KEYS`]) are pushed to which edge.
    stressed: Vec<(usize, usize)>,
}

fn millis(lo: u64, hi: u64) -> impl Strategy<Value = Duration> {
    (lo..=hi).prop_map(Duration::from_millis)
}

fn knobs() -> impl Strategy<Value = Knobs> {
    let timing = (
        millis(20, 500),
        1u32..=8,
        millis(1, 500),
        1u32..=8,
        millis(1, 3_000),
        millis(1, 5_000),
        millis(1, 10_000),
        millis(100, 120_000),
        millis(0, 60_000),
        millis(1, 60_000),
        proptest::option::of(millis(1, 600_000)),
        proptest::option::of(millis(1, 10_000_000_000)),
    );
    let numbers = (
        prop_oneof![MIN_REQUESTS_PER_SECOND..1.0f64, 1.0f64..200.0],
        1u32..=100,
        any::<bool>(),
        1usize..=64,
        0.0f64..=0.5,
        1i32..=100,
        0u32..=8,
        1u32..=16,
        proptest::collection::vec((0..KEYS.len(), 0usize..24), 0..=2),
    );
    (timing, numbers).prop_map(
        |(
            (
                interval,
                backoff_times,
                retry_base,
                retry_times,
                connect_timeout,
                attempt_timeout,
                page_timeout,
                stall_after,
                grace,
                statement_timeout,
                startup_timeout,
                retention,
            ),
            (
                requests_per_second,
                burst,
                adaptive,
                concurrency,
                jitter,
                max_results,
                max_retries,
                max_connections,
                stressed,
            ),
        )| Knobs {
            interval,
            backoff_times,
            retry_base,
            retry_times,
            connect_timeout,
            attempt_timeout,
            page_timeout,
            stall_after,
            grace,
            statement_timeout,
            startup_timeout,
            retention,
            requests_per_second,
            burst,
            adaptive,
            concurrency,
            jitter,
            max_results,
            max_retries,
            max_connections,
            stressed,
        },
    )
}

/// The defaults with `k` applied, polling the simulator at `endpoint` and storing in `url`.
fn settings(k: &Knobs, endpoint: &str, url: &str) -> Settings {
    let mut s = Settings::defaults().expect("the defaults are valid");
    s.database.url = url.to_owned();
    s.http.listen.clear();
    s.chime.endpoint_url = endpoint.to_owned();
    s.poll.interval = k.interval;
    s.poll.failure_backoff_cap = k.interval * k.backoff_times;
    s.poll.max_interval = k.interval * k.backoff_times;
    s.retry.base = k.retry_base;
    s.retry.cap = k.retry_base * k.retry_times;
    s.chime.connect_timeout = k.connect_timeout;
    s.chime.attempt_timeout = k.attempt_timeout;
    s.chime.page_timeout = k.page_timeout;
    s.http.stall_after = k.stall_after;
    s.shutdown.grace = k.grace;
    s.database.statement_timeout = k.statement_timeout;
    s.database.startup_timeout = k.startup_timeout;
    s.retention.events = k.retention;
    s.rate.requests_per_second = k.requests_per_second;
    s.rate.burst = k.burst;
    s.rate.adaptive = k.adaptive;
    s.poll.concurrency = k.concurrency;
    s.poll.jitter = k.jitter;
    s.poll.max_results = k.max_results;
    s.retry.max_retries = k.max_retries;
    s.database.max_connections = k.max_connections;
    for &(key, edge) in &k.stressed {
        stress(&mut s, KEYS[key], edge);
    }
    s
}

/// The keys the property varies; a refusal must name one of them.
const KEYS: &[&str] = &[
    "poll.interval",
    "poll.failure_backoff_cap",
    "retry.base",
    "retry.cap",
    "chime.connect_timeout",
    "chime.attempt_timeout",
    "chime.page_timeout",
    "http.stall_after",
    "shutdown.grace",
    "database.statement_timeout",
    "database.startup_timeout",
    "retention.events",
    "rate.requests_per_second",
    "rate.burst",
    "poll.concurrency",
    "poll.jitter",
    "poll.max_results",
    "retry.max_retries",
    "database.max_connections",
    "poll.max_interval",
    "poll.strategy",
];

/// Pushes `key` to its edge number `edge` (taken modulo the key's edges): the bound itself,
/// zero, just past the bound, or something absurd.
fn stress(s: &mut Settings, key: &str, edge: usize) {
    fn pick<T: Copy>(edges: &[T], edge: usize) -> T {
        edges[edge % edges.len()]
    }
    let past = |max: Duration| max + Duration::from_millis(1);
    // The bound itself comes up as often as the three values beyond it together.
    let durations = |max: Duration| [max, max, max, Duration::ZERO, past(max), Duration::MAX];
    let day = durations(MAX_DURATION);
    match key {
        "poll.interval" => s.poll.interval = pick(&day, edge),
        "poll.failure_backoff_cap" => {
            let below = s.poll.interval / 2;
            s.poll.failure_backoff_cap =
                pick(&[day[0], day[0], day[3], day[4], day[5], below], edge);
        }
        "retry.base" => s.retry.base = pick(&day, edge),
        "poll.max_interval" => s.poll.max_interval = pick(&day, edge),
        "poll.strategy" => s.poll.strategy = PollStrategy::ChangeAware,
        "retry.cap" => s.retry.cap = pick(&day, edge),
        "chime.connect_timeout" => s.chime.connect_timeout = pick(&day, edge),
        "chime.attempt_timeout" => s.chime.attempt_timeout = pick(&day, edge),
        "chime.page_timeout" => s.chime.page_timeout = pick(&day, edge),
        "http.stall_after" => s.http.stall_after = pick(&day, edge),
        "shutdown.grace" => s.shutdown.grace = pick(&durations(MAX_SHUTDOWN_GRACE), edge),
        "database.statement_timeout" => s.database.statement_timeout = pick(&day, edge),
        "database.startup_timeout" => {
            s.database.startup_timeout = Some(pick(&durations(MAX_STARTUP_TIMEOUT), edge));
        }
        "retention.events" => {
            s.retention.events = Some(pick(&durations(MAX_RETENTION), edge));
        }
        "rate.requests_per_second" => {
            s.rate.requests_per_second = pick(
                &[
                    MIN_REQUESTS_PER_SECOND,
                    MAX_REQUESTS_PER_SECOND,
                    1e-300,
                    0.0,
                    -1.0,
                    f64::NAN,
                    f64::INFINITY,
                    f64::MAX,
                ],
                edge,
            );
        }
        "rate.burst" => s.rate.burst = pick(&[u32::MAX, 0, 1], edge),
        "poll.concurrency" => s.poll.concurrency = pick(&[usize::MAX, 0, 1], edge),
        "poll.jitter" => s.poll.jitter = pick(&[0.0, 0.5, -0.1, 0.75, f64::NAN], edge),
        "poll.max_results" => s.poll.max_results = pick(&[1, 100, 0, 101, i32::MIN], edge),
        "retry.max_retries" => s.retry.max_retries = pick(&[0, u32::MAX], edge),
        "database.max_connections" => {
            s.database.max_connections = pick(&[MAX_CONNECTIONS, 1, 0, u32::MAX], edge);
        }
        other => unreachable!("no edges for {other}"),
    }
}

/// The longest `poll.interval` under which a case must be seen polling: a new meeting's first
/// poll falls anywhere in its first interval, so one of hours cannot be waited for. Cases with
/// a longer interval (only the stressed edges) must still start, stay idle and stop cleanly.
const WATCHABLE_INTERVAL: Duration = Duration::from_secs(2);

/// A generous guard on top of every wait derived from the configuration, for a loaded machine.
const GUARD: Duration = Duration::from_secs(20);

/// How long each case's CPU use is measured, once it has polled.
const CPU_WINDOW: Duration = Duration::from_millis(200);

/// The CPU the process may use in the window beyond what its requests explain: a quarter of
/// a core.
/// A loop that spins while nothing is due uses a whole core (100 %), or most of what a loaded
/// machine gives it.
const IDLE_CPU_SHARE: f64 = 0.25;

/// CPU allowed per `ListAttendees` request the simulator answered in the window (a debug
/// build's SDK call, diff and SQLite write, and the simulator's side, on a loaded machine).
const CPU_PER_REQUEST: Duration = Duration::from_millis(10);

/// The CPU time (user + system) this process has used so far, from `/proc/self/stat`.
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("read /proc/self/stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').expect("a command name in /proc/self/stat") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // Linux reports them in USER_HZ, 100 on every architecture it exports to user space.
    Duration::from_millis(ticks * 10)
}

/// What one accepted configuration did.
struct CaseRun {
    /// Whether the simulator saw the daemon's `ListAttendees`.
    polled: bool,
}

/// Builds the daemon `s` describes on a fresh SQLite file tracking `meeting`, and checks what
/// every accepted configuration must do: poll (when its interval is short enough to watch,
/// within that interval), use no more CPU than its requests explain while it runs, stop
/// within `shutdown.grace`.
async fn run_daemon(
    s: &Settings,
    meeting: &MeetingId,
    sim: &roster_sync::sim::SimHandle,
) -> Result<CaseRun, String> {
    let requests = || sim.stats().list_attendees.requests;
    let region = Region::parse("us-east-1").map_err(|e| e.to_string())?;
    let store = Store::connect_with(&s.database.url, roster_sync::app::daemon_pool(s))
        .await
        .map_err(|e| format!("open the store: {e}"))?;
    store.migrate().await.map_err(|e| e.to_string())?;
    store
        .add_meeting(meeting, &region, None, domain::now(), false)
        .await
        .map_err(|e| e.to_string())?;
    let client = Arc::new(ChimeClient::new(
        simulator_sdk_config(&region),
        ClientOptions::from_settings(s),
    ));
    let before = requests();
    let cancel = CancellationToken::new();
    let daemon = Daemon::build(
        s,
        Some(store.clone()),
        cancel,
        DaemonOptions {
            client: Some(client),
            ..DaemonOptions::default()
        },
    )
    .await
    .map_err(|e| format!("build: {e:#}"))?;
    let polled = if s.poll.interval <= WATCHABLE_INTERVAL {
        let by = s.poll.interval + GUARD;
        tokio::time::timeout(by, async {
            while requests() == before {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .map_err(|_| {
            format!(
                "no poll within {by:?} (poll.interval {:?})",
                s.poll.interval
            )
        })?;
        true
    } else {
        false
    };
    let (cpu_before, requests_before) = (process_cpu(), requests());
    tokio::time::sleep(CPU_WINDOW).await;
    let (cpu, answered) = (process_cpu() - cpu_before, requests() - requests_before);
    let allowed = CPU_WINDOW.mul_f64(IDLE_CPU_SHARE) + CPU_PER_REQUEST * answered as u32;
    if cpu > allowed {
        return Err(format!(
            "spins: {cpu:?} of CPU in {CPU_WINDOW:?} for {answered} requests (allowed {allowed:?})"
        ));
    }
    let by = s.shutdown.grace + GUARD;
    tokio::time::timeout(by, daemon.stop())
        .await
        .map_err(|_| {
            format!(
                "did not stop within {by:?} (shutdown.grace {:?})",
                s.shutdown.grace
            )
        })?
        .map_err(|e| format!("stop: {e:#}"))?;
    store.close().await;
    Ok(CaseRun { polled })
}

#[test]
fn every_configuration_the_validator_accepts_runs_a_daemon_without_a_panic() {
    install_panic_hook();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let (sim, meeting) = rt.block_on(async {
        let (sim, driver) = common::sim_and_driver(1000.0).await;
        let meeting = driver
            .create_meeting("config-holes", "us-east-1")
            .await
            .expect("create a meeting");
        driver
            .add_attendees(
                &meeting,
                (0..3).map(|i| (format!("person-{i}@example.com"), None)),
            )
            .await
            .expect("add attendees");
        (sim, meeting)
    });
    let endpoint = sim.endpoint_url();
    let accepted = AtomicUsize::new(0);
    let polled = AtomicUsize::new(0);
    let refused = AtomicUsize::new(0);
    let mut runner = TestRunner::new(Config {
        cases: 120,
        failure_persistence: None,
        ..Config::default()
    });
    let outcome = runner.run(&knobs(), |k| {
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let url = format!("sqlite://{}", dir.path().join("roster.db").display());
        let s = settings(&k, &endpoint, &url);
        take_panics();
        match s.validate() {
            Err(e) => {
                let e = e.to_string();
                prop_assert!(
                    KEYS.iter().any(|key| e.contains(&format!("`{key}`"))),
                    "the refusal names no key: {}",
                    e
                );
                refused.fetch_add(1, Ordering::Relaxed);
            }
            Ok(()) => {
                let run = rt
                    .block_on(run_daemon(&s, &meeting, &sim))
                    .map_err(|e| TestCaseError::fail(format!("{e}\nsettings: {s:?}")))?;
                accepted.fetch_add(1, Ordering::Relaxed);
                if run.polled {
                    polled.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let panics = take_panics();
        prop_assert!(panics.is_empty(), "panicked: {:?}", panics);
        Ok(())
    });
    if let Err(e) = outcome {
        panic!("{e}");
    }
    let (accepted, polled, refused) = (
        accepted.into_inner(),
        polled.into_inner(),
        refused.into_inner(),
    );
    eprintln!("configurations: {accepted} accepted ({polled} watched polling), {refused} refused");
    // The generator keeps `poll.interval` watchable unless a case stresses it, so most
    // accepted cases must have been seen polling, not merely starting.
    assert!(
        polled * 2 > accepted && accepted >= 20,
        "too few configurations were run and seen polling: {accepted} accepted, {polled} polled"
    );
    drop(sim);
}
