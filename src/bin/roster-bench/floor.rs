//! `--floor-polls`: the CPU cost of one poll through the SDK client alone (signing, HTTP,
//! JSON, conversion), with no scheduler, store or rate budget.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context;
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;

use roster_sync::chime::{ChimeClient, ClientOptions, RosterSource as _, simulator_sdk_config};
use roster_sync::config::Settings;
use roster_sync::domain::Region;
use roster_sync::sim::control::Driver;

use crate::process::cpu_seconds;
use crate::sim_process::SimProcess;
use crate::{BenchArgs, RuntimeKind};

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
