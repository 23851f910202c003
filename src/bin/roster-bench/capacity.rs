//! The capacity run: setup, then the daemon polls through warm-up, churn and settle while
//! sweeps, detection latency, CPU and peak RSS are measured (see the binary's header).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use tokio::sync::broadcast;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use roster_sync::app::{Daemon, DaemonOptions};
use roster_sync::chime::{ChimeClient, ClientOptions, simulator_sdk_config};
use roster_sync::config::{PollStrategy, Settings};
use roster_sync::deadline::Later as _;
use roster_sync::domain::Region;
use roster_sync::scheduler::PollReport;
use roster_sync::sim::churn::{ChurnPlan, Fleet, PresenceChurnPlan, churn, guid, presence_churn};
use roster_sync::sim::control::Driver;
use roster_sync::store::{Backend, Store, StoredEvent};

use crate::args::{BenchArgs, RuntimeKind};
use crate::floor;
use crate::gaps::Gaps;
use crate::latency::{Changes, lock, receive_events};
use crate::process::{cpu_seconds, peak_rss_mb, release_free_memory, reset_peak_rss};
use crate::scratch::BenchDb;
use crate::sim_process::SimProcess;
use crate::sweeps::{Sweep, Sweeps};

/// Events buffered between the scheduler's sink and the latency matcher. Small: the receiver
/// keeps up, and a full ring of events is memory the daemon would not hold (a lagging
/// receiver is reported, and only the warm-up's joins could lag).
const EVENT_BUFFER: usize = 4096;

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
    /// Changes no poll could see: undone or hidden by a later change to the same attendee
    /// before the meeting's next poll started (see `latency::Changes::masked`).
    pub changes_masked: u64,
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
    /// ListAttendees requests after the warm-up sweep (churn and settle), and the CPU each
    /// cost: the daemon's steady state.
    pub requests_steady: u64,
    pub cpu_us_per_request_steady: f64,
    /// The floor, measured after the daemon stopped, in this process, for `floor_s`: the
    /// bare SDK client paging the same meetings at the steady state's request rate, with the
    /// same churn (see `floor::paced`). `floor_errors` of its `floor_requests` failed.
    pub floor_s: f64,
    pub floor_requests: u64,
    pub floor_errors: u64,
    pub floor_us_per_request: f64,
    /// cpu_us_per_request_steady / floor_us_per_request.
    pub overhead_ratio: f64,
    /// VmHWM of this process since polling started (reset after setup), MiB.
    pub peak_rss_mb: f64,
    /// The daemon's rate budget at the end, and how many times it decreased.
    pub rate_final: f64,
    pub rate_decreases: u64,
    /// The webhook sink of the run: "none", "url" (`--webhook-url`) or "hung"
    /// (`--webhook-hung`).
    pub webhook: &'static str,
    /// `poll.strategy`, `poll.max_interval` (s) and how the churn was spread over meetings.
    pub strategy: PollStrategy,
    pub max_interval_s: f64,
    pub churn_skew: String,
    /// Mean detection latency: every change weighs alike.
    pub detection_latency_mean_ms: f64,
    /// The longest gap between the starts of two successive successful polls of one meeting.
    pub max_poll_gap_s: f64,
    /// Requests per second of polling.
    pub requests_per_s: f64,
    /// `--meeting-events`: what the event path did (hint polls, events received).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub meeting_events: Option<crate::events::EventsReport>,
}

/// Everything between creating the database and dropping it: setup, the phases, the report.
pub async fn measure(
    args: &BenchArgs,
    settings: &Settings,
    sim: &SimProcess,
    db: &BenchDb,
) -> anyhow::Result<Report> {
    let region = Region::parse("us-east-1")?;
    let daemon_rps = settings.rate.requests_per_second;
    let daemon_burst = settings.rate.burst;
    let mut settings = settings.clone();
    settings.database.url = db.url.clone();
    let store = Store::connect_with(&db.url, roster_sync::app::daemon_pool(&settings))
        .await
        .context("opening the bench database")?;
    // Migrated here, before the setup adds the meetings; the daemon is built after it.
    store.migrate().await.context("applying migrations")?;
    settings.database.migrate_on_start = false;

    let mut options = ClientOptions::from_settings(&settings);
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
    let mut fleet = setup(args, &driver, &store, &region).await?;
    let total_pages = total_pages(args, settings.poll.max_results);
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

    let ids: Vec<_> = fleet.ids().cloned().collect();
    let sweeps = Arc::new(Mutex::new(Sweeps::new(ids.iter())));
    let changes = Arc::new(Mutex::new(Changes::default()));
    let (tx, rx) = broadcast::channel::<StoredEvent>(EVENT_BUFFER);
    let receiver = tokio::spawn(receive_events(rx, Arc::clone(&changes)));
    let gaps = Arc::new(Mutex::new(Gaps::default()));
    let observer = {
        let sweeps = Arc::clone(&sweeps);
        let gaps = Arc::clone(&gaps);
        let changes = Arc::clone(&changes);
        move |r: &PollReport<'_>| {
            lock(&sweeps).on_poll(r);
            lock(&gaps).on_poll(r);
            if r.succeeded()
                && let Ok(meeting) = guid(r.meeting_id.as_str())
            {
                lock(&changes).polled(meeting, r.started);
            }
        }
    };

    if args.meeting_events {
        crate::events::enable(args, &sim.url, &mut settings).await?;
        println!(
            "meeting events: the simulator emits into {} (loss {}, duplicates {}, delay up to {:?})",
            settings.meeting_events.queue_url, args.event_loss, args.event_dup, args.event_delay
        );
    }
    // Setup is not the daemon's work: what it freed goes back to the OS, and the peak RSS
    // starts again from here.
    release_free_memory();
    let hwm_reset = reset_peak_rss();
    let cpu_start = cpu_seconds()?;
    let polling_started = Instant::now();
    lock(&sweeps).begin(polling_started);
    let cancel = CancellationToken::new();
    let daemon = Daemon::build(
        &settings,
        Some(store.clone()),
        cancel.clone(),
        DaemonOptions {
            client: Some(Arc::clone(&client)),
            events: Some(tx),
            poll_observer: Some(Box::new(observer)),
            ..DaemonOptions::default()
        },
    )
    .await?;

    // Warm-up: the first sweep records everyone as joined.
    let warmup_limit = settle_limit(ideal_sweep_s, args.quota_rps.min(daemon_rps), args);
    wait_for(&sweeps, warmup_limit, |s| !s.completed.is_empty()).await;
    let warmup_s = polling_started.elapsed().as_secs_f64();
    let cpu_warm = cpu_seconds()?;
    let requests_warm = client.counters().requests.load(Ordering::Relaxed);
    println!(
        "warm-up: first sweep done after {warmup_s:.1}s; churn for {:?}",
        args.duration
    );
    lock(&changes).armed = true;

    let plan = ChurnPlan {
        per_second: args.churn_per_s,
        duration: args.duration,
        target: args.attendees,
        end_a_meeting_after: None,
        name: |serial| format!("churn-{serial}"),
        skew: args.churn_skew,
    };
    // Presence beside the roster churn, over the attendees the setup made.
    let presence = (args.meeting_events && args.presence_churn_per_s > 0.0).then(|| {
        let driver = Driver::new(driver_client.sdk_client(&region)).with_endpoint(&sim.url);
        let people = fleet.people();
        let plan = PresenceChurnPlan {
            per_second: args.presence_churn_per_s,
            duration: args.duration,
            ..PresenceChurnPlan::default()
        };
        let cancel = cancel.clone();
        tokio::spawn(async move { presence_churn(&driver, &people, &plan, &cancel, |_| {}).await })
    });
    let churned = churn(&driver, &mut fleet, &plan, &cancel, |made| {
        lock(&changes).made(&made);
    })
    .await;
    let presence_churned = match presence {
        Some(task) => Some(task.await.context("the presence churn failed")?),
        None => None,
    };
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
    let counters = client.counters();
    let requests = counters.requests.load(Ordering::Relaxed);
    daemon.stop().await?;
    let meeting_events = if args.meeting_events {
        let mut report = crate::events::report(args, &sim.url).await?;
        if let Some(p) = &presence_churned {
            report.presence_changes = p.made;
            report.presence_changes_failed = p.failed;
        }
        Some(report)
    } else {
        None
    };
    let received = receiver.await.context("the event receiver failed")?;
    let budget = client.budget(&region);
    let requests_steady = requests - requests_warm;
    let steady_s = polling_s - warmup_s;
    let cpu_us_per_request_steady = ratio(1e6 * (cpu_end - cpu_warm), requests_steady as f64);

    let paced = if args.floor_duration.is_zero() {
        None
    } else {
        let rps = ratio(requests_steady as f64, steady_s);
        println!(
            "floor: the bare SDK client pages the same meetings at {rps:.1} rps for {:?}, with the same churn",
            args.floor_duration
        );
        let floor_churn = ChurnPlan {
            duration: args.floor_duration,
            ..plan.clone()
        };
        let busy = async {
            churn(
                &driver,
                &mut fleet,
                &floor_churn,
                &CancellationToken::new(),
                |_| {},
            )
            .await;
        };
        Some(
            floor::paced(
                &client.sdk_client(&region),
                ids,
                settings.poll.max_results,
                rps,
                settings.poll.concurrency,
                args.floor_duration,
                busy,
            )
            .await?,
        )
    };
    let floor_us_per_request = paced.map_or(f64::NAN, |p| p.cpu_us_per_request());
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
        webhook: if args.webhook_hung {
            "hung"
        } else if args.webhook_url.is_some() {
            "url"
        } else {
            "none"
        },
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
        changes_masked: changes.masked(),
        detection_latency_p50_ms: percentile(&latencies, 0.5),
        detection_latency_p99_ms: percentile(&latencies, 0.99),
        detection_latency_max_ms: latencies.last().copied().unwrap_or(f64::NAN),
        events: received,
        unchanged_poll_writes,
        cpu_seconds: cpu_end - cpu_start,
        cpu_fraction: ratio(cpu_end - cpu_start, polling_s),
        cpu_fraction_after_warmup: ratio(cpu_end - cpu_warm, polling_s - warmup_s),
        requests_steady,
        cpu_us_per_request_steady,
        floor_s: paced.map_or(0.0, |p| p.seconds),
        floor_requests: paced.map_or(0, |p| p.requests),
        floor_errors: paced.map_or(0, |p| p.errors),
        floor_us_per_request,
        overhead_ratio: cpu_us_per_request_steady / floor_us_per_request,
        peak_rss_mb,
        rate_final: budget.rate(),
        rate_decreases: budget.decreases(),
        strategy: settings.poll.strategy,
        max_interval_s: settings.poll.max_interval.as_secs_f64(),
        churn_skew: args.churn_skew.to_string(),
        detection_latency_mean_ms: ratio(latencies.iter().sum(), latencies.len() as f64),
        max_poll_gap_s: lock(&gaps).longest.as_secs_f64(),
        requests_per_s: ratio(requests as f64, polling_s),
        meeting_events,
    };
    print_summary(&report, &sweeps.completed, hwm_reset);
    Ok(report)
}

/// Creates the meetings and their attendees over HTTP (8 at once) and tracks them.
pub(crate) async fn setup(
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
        let (meetings, attendees, mixed) = (args.meetings, args.attendees, args.mixed_sizes);
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
                let size = meeting_size(attendees, mixed, i);
                let people = (0..size).map(|a| (format!("bench-{i}-{a}"), None));
                let created = driver.add_attendees(&id, people).await?;
                // Only the GUIDs are kept: 16 bytes an attendee.
                let mut one = Fleet::default();
                one.add(id.clone(), &created)?;
                drop(created);
                store
                    .add_meeting(
                        &id,
                        &region,
                        Some("bench"),
                        roster_sync::domain::now(),
                        false,
                    )
                    .await?;
                made.push((i, one));
            }
        });
    }
    let mut all = Vec::with_capacity(args.meetings);
    while let Some(done) = workers.join_next().await {
        all.extend(done.context("a setup worker failed")??);
    }
    all.sort_by_key(|(i, _)| *i);
    let mut fleet = Fleet::default();
    for (_, one) in all {
        fleet.extend(one);
    }
    Ok(fleet)
}

/// `ListAttendees` pages of a meeting of `attendees` at `max_results` a page.
pub(crate) fn pages(attendees: usize, max_results: i32) -> u64 {
    let per_page = u64::try_from(max_results.max(1)).unwrap_or(1);
    (attendees as u64).div_ceil(per_page).max(1)
}

/// Attendees of the `i`-th meeting: `attendees`, or with `--mixed-sizes` a third, two thirds
/// or all of it in turn (rounded up): with 250 at 100 a page, meetings of 1, 2 and 3 pages.
pub(crate) fn meeting_size(attendees: usize, mixed: bool, i: usize) -> usize {
    if mixed {
        (attendees * (i % 3 + 1)).div_ceil(3)
    } else {
        attendees
    }
}

/// Pages of one sweep of every meeting the run creates.
pub(crate) fn total_pages(args: &BenchArgs, max_results: i32) -> u64 {
    (0..args.meetings)
        .map(|i| {
            pages(
                meeting_size(args.attendees, args.mixed_sizes, i),
                max_results,
            )
        })
        .sum()
}

/// The longest a phase may wait for a sweep: three ideal sweeps at the slower of the quota
/// and the daemon's rate, plus the poll interval and a minute.
pub(crate) fn settle_limit(ideal_sweep_s: f64, effective_rps: f64, args: &BenchArgs) -> Duration {
    let slow = ideal_sweep_s * args.quota_rps / effective_rps.max(f64::MIN_POSITIVE);
    let interval = args.interval.unwrap_or(Duration::from_secs(10));
    Duration::from_secs_f64(3.0 * slow + 60.0).saturating_add(interval)
}

async fn wait_for(sweeps: &Mutex<Sweeps>, limit: Duration, done: impl Fn(&Sweeps) -> bool) {
    let deadline = Instant::now().later_by(limit);
    while Instant::now() < deadline {
        if done(&lock(sweeps)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("(gave up waiting after {limit:?})");
}

pub(crate) fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::NAN }
}

/// Nearest-rank percentile of sorted values; NaN when there are none.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn print_summary(r: &Report, sweeps: &[Sweep], hwm_reset: bool) {
    let mut s = String::new();
    let _ = writeln!(s, "\n== roster-bench summary ==");
    let _ = writeln!(
        s,
        "{} meetings × {} attendees, churn {}/s for {:.0}s, {} database, webhook sink: {}",
        r.meetings, r.attendees, r.churn_per_s, r.duration_s, r.database, r.webhook
    );
    let _ = writeln!(
        s,
        "quota {} rps (simulator) — daemon configured for {} rps, burst {}",
        r.quota_rps, r.daemon_rps, r.daemon_burst
    );
    if let Some(e) = &r.meeting_events {
        let _ = writeln!(
            s,
            "meeting events: {} emitted ({} lost, {} duplicated), {} received, {} hint polls; {} presence changes made ({} refused)",
            e.events_emitted,
            e.events_lost,
            e.events_duplicated,
            e.events_received,
            e.hint_polls,
            e.presence_changes,
            e.presence_changes_failed
        );
    }
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
        "changes {} made, {} detected, {} masked by a later change before any poll; detection latency p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        r.changes,
        r.changes_detected,
        r.changes_masked,
        r.detection_latency_p50_ms,
        r.detection_latency_p99_ms,
        r.detection_latency_max_ms
    );
    let _ = writeln!(
        s,
        "strategy {:?} (max_interval {:.0}s), churn {}: detection latency mean {:.0} ms; longest gap between two polls of a meeting {:.1}s; {:.2} requests/s",
        r.strategy,
        r.max_interval_s,
        r.churn_skew,
        r.detection_latency_mean_ms,
        r.max_poll_gap_s,
        r.requests_per_s
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
    let _ = writeln!(
        s,
        "steady state (after the warm-up sweep): {} requests at {:.0} µs of CPU each; floor (bare SDK client, same \
         meetings, rate and churn, {:.0}s): {} requests ({} failed) at {:.0} µs each; overhead ratio {:.2}",
        r.requests_steady,
        r.cpu_us_per_request_steady,
        r.floor_s,
        r.floor_requests,
        r.floor_errors,
        r.floor_us_per_request,
        r.overhead_ratio
    );
    print!("{s}");
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn mixed_sizes_take_one_to_three_pages_in_turn() {
        let sizes: Vec<u64> = (0..4)
            .map(|i| pages(meeting_size(250, true, i), 100))
            .collect();
        assert_eq!(sizes, [1, 2, 3, 1]);
        assert_eq!(meeting_size(250, false, 1), 250);
    }
}
