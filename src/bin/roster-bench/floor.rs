//! The floor: what the requests alone cost, with no scheduler, store or rate budget.
//! [`paced`] is the floor of a capacity run (the bare SDK client paging the same meetings at
//! the same rate, in the same process); `--floor-polls` ([`floor`]) polls one meeting through
//! the daemon's client as fast as 16 workers go.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context;
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;

use roster_sync::chime::{ChimeClient, ClientOptions, RosterSource as _, simulator_sdk_config};
use roster_sync::config::Settings;
use roster_sync::deadline::Later as _;
use roster_sync::domain::{MeetingId, Region};
use roster_sync::sim::control::Driver;

use crate::args::{BenchArgs, RuntimeKind};
use crate::process::cpu_seconds;
use crate::sim_process::SimProcess;

/// Polls kept in flight at once: the default `poll.concurrency`.
pub const FLOOR_CONCURRENCY: u64 = 16;

/// What `--floor-polls` measured. Printed as the last line.
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

/// See [`BenchArgs::floor_polls`].
pub async fn floor(
    args: &BenchArgs,
    settings: &Settings,
    polls: u64,
) -> anyhow::Result<FloorReport> {
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
            .fetch_roster(&meeting, &region, &roster_sync::chime::NoPause)
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
                    .fetch_roster(&meeting, &region, &roster_sync::chime::NoPause)
                    .await?;
            }
            Ok::<_, roster_sync::chime::ChimeError>(())
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

/// What the paced floor of a capacity run measured: the bare SDK client paging the run's
/// meetings at the rate the daemon reached, with the same churn going on.
#[derive(Debug, Clone, Copy)]
pub struct PacedFloor {
    pub seconds: f64,
    pub requests: u64,
    /// Requests that failed (a throttle, a transport error); counted in `requests`.
    pub errors: u64,
    pub cpu_seconds: f64,
}

impl PacedFloor {
    pub fn cpu_us_per_request(&self) -> f64 {
        1e6 * self.cpu_seconds / self.requests.max(1) as f64
    }
}

/// The floor of a capacity run, measured in the same process after the daemon stopped: for
/// `duration`, `workers` tasks page through `meetings` in turn with the bare SDK client
/// (`ListAttendees` and NextToken by hand, the answer only counted), spaced evenly at
/// `rps` requests per second, while `busy` (the churn the daemon saw) runs beside them. What a
/// poller with no scheduler, store, rate budget, metrics or logs would spend on the same
/// requests; the CPU of `busy` is in both numbers.
pub async fn paced(
    sdk: &aws_sdk_chimesdkmeetings::Client,
    meetings: Vec<MeetingId>,
    max_results: i32,
    rps: f64,
    workers: usize,
    duration: std::time::Duration,
    busy: impl std::future::Future<Output = ()>,
) -> anyhow::Result<PacedFloor> {
    anyhow::ensure!(!meetings.is_empty(), "no meetings to page");
    let cpu_start = cpu_seconds()?;
    let started = Instant::now();
    let pager = Arc::new(Pager {
        sdk: sdk.clone(),
        meetings,
        max_results,
        period: std::time::Duration::from_secs_f64(1.0 / rps.max(0.1)),
        stop: started.later_by(duration),
        next_slot: Mutex::new(started),
        next_meeting: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let mut tasks = JoinSet::new();
    for _ in 0..workers.max(1) {
        let pager = Arc::clone(&pager);
        tasks.spawn(async move { pager.work().await });
    }
    let pagers = async {
        while let Some(done) = tasks.join_next().await {
            done.context("a floor task failed")?;
        }
        anyhow::Ok(())
    };
    let (paged, ()) = tokio::join!(pagers, busy);
    paged?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds()? - cpu_start;
    Ok(PacedFloor {
        seconds,
        requests: pager.requests.load(Ordering::Relaxed),
        errors: pager.errors.load(Ordering::Relaxed),
        cpu_seconds: cpu,
    })
}

/// The state the paced floor's workers share.
struct Pager {
    sdk: aws_sdk_chimesdkmeetings::Client,
    meetings: Vec<MeetingId>,
    max_results: i32,
    /// 1 / rate: the gap between two requests' start times.
    period: std::time::Duration,
    stop: Instant,
    /// When the next request may start.
    next_slot: Mutex<Instant>,
    next_meeting: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
}

impl Pager {
    /// Pages one meeting after another until `stop`, each request at its slot.
    async fn work(&self) {
        while Instant::now() < self.stop {
            let i = self.next_meeting.fetch_add(1, Ordering::Relaxed) as usize;
            let meeting = &self.meetings[i % self.meetings.len()];
            let mut token: Option<String> = None;
            loop {
                let slot = {
                    let mut next = self
                        .next_slot
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    let slot = (*next).max(Instant::now());
                    *next = slot.later_by(self.period);
                    slot
                };
                if slot >= self.stop {
                    return;
                }
                tokio::time::sleep_until(slot).await;
                self.requests.fetch_add(1, Ordering::Relaxed);
                let answer = self
                    .sdk
                    .list_attendees()
                    .meeting_id(meeting.as_str())
                    .max_results(self.max_results)
                    .set_next_token(token.take())
                    .send()
                    .await;
                match answer {
                    Ok(page) => {
                        std::hint::black_box(page.attendees().len());
                        match page.next_token {
                            Some(t) => token = Some(t),
                            None => break,
                        }
                    }
                    Err(_) => {
                        self.errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
        }
    }
}
