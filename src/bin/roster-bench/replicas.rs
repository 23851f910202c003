//! `--replicas N`: the capacity run with N `roster-sync run` processes in cluster mode
//! (`cluster.enabled`) sharing one scratch Postgres database, each configured with the whole
//! quota (`--daemon-rps`) as an operator would, so the cluster's split of the rate is what
//! keeps the fleet inside the simulator's quota.
//!
//! Each replica is its own process, so its CPU time and peak RSS are read from
//! `/proc/PID/stat` and `/proc/PID/status`. The fleet's requests and throttles are counted
//! where the quota is enforced: the simulator's `GET /_sim/stats`. Sweeps and detection
//! latency are read from the database the replicas write, sampled every [`SAMPLE_EVERY`]:
//! a sweep ends at the start (`last_polled_at`) of the last poll that completes it, and a
//! change is detected when the bench first reads its committed event, so both include up to
//! one sampling period of lag and no in-process hook.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::process::{Child, Command};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use roster_sync::chime::{ChimeClient, ClientOptions, simulator_sdk_config};
use roster_sync::config::Settings;
use roster_sync::domain::{MeetingId, Region};
use roster_sync::sim::SimStats;
use roster_sync::sim::churn::{ChurnPlan, churn, guid};
use roster_sync::sim::control::Driver;
use roster_sync::store::Store;

use crate::args::BenchArgs;
use crate::capacity::{percentile, ratio, settle_limit, setup, total_pages};
use crate::latency::{Changes, lock};
use crate::process::{cpu_seconds_of, peak_rss_mb_of};
use crate::scratch::BenchDb;
use crate::sim_process::SimProcess;

/// How often the bench reads the replicas' progress from the database.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// What `--replicas N` measured; printed as the last line, as one JSON object.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub mode: &'static str,
    pub replicas: usize,
    pub meetings: usize,
    pub attendees: usize,
    /// `--mixed-sizes`: meetings of a third, two thirds and all of `attendees`, in turn.
    pub mixed_sizes: bool,
    /// Pages of one sweep of every meeting at the start.
    pub total_pages: u64,
    pub churn_per_s: f64,
    pub quota_rps: f64,
    /// Each replica's configured rate and burst (the cluster gives each a share of them).
    pub daemon_rps: f64,
    pub daemon_burst: u32,
    pub interval_s: f64,
    pub heartbeat_s: f64,
    pub lease_ttl_s: f64,
    pub duration_s: f64,
    /// From starting the replicas to the end of the settle phase, s.
    pub polling_s: f64,
    /// ListAttendees requests the simulator received from the fleet, and of those answered 429.
    pub requests: u64,
    pub throttled: u64,
    pub throttled_ratio: f64,
    /// requests / polling_s: the fleet's request rate at the simulator.
    pub fleet_rps: f64,
    pub ideal_sweep_s: f64,
    pub sweeps: usize,
    pub sweep_first_s: f64,
    pub sweep_p50_s: f64,
    pub sweep_max_s: f64,
    pub changes: u64,
    pub changes_detected: u64,
    pub detection_latency_p50_ms: f64,
    pub detection_latency_p99_ms: f64,
    pub detection_latency_max_ms: f64,
    pub events: u64,
    /// Per replica, in start order: CPU time / polling_s (the share of one core), the same
    /// after the warm-up sweep, and peak RSS (MiB, since the process started).
    pub replica_cpu_fraction: Vec<f64>,
    pub replica_cpu_fraction_after_warmup: Vec<f64>,
    pub replica_peak_rss_mb: Vec<f64>,
    /// Leases each replica held when the run ended, and their pages.
    pub replica_meetings: Vec<i64>,
    pub replica_pages: Vec<i64>,
}

/// One `roster-sync run` child.
struct ReplicaProcess {
    child: Child,
    pid: u32,
}

impl ReplicaProcess {
    fn cpu_seconds(&self) -> anyhow::Result<f64> {
        cpu_seconds_of(self.pid)
    }

    /// SIGTERM, then waits for the exit (the replica releases its leases on the way out).
    async fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await;
        if tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .is_err()
        {
            println!("(replica {} did not stop within 60s; killed)", self.pid);
            let _ = self.child.kill().await;
        }
    }
}

/// The capacity run with `args.replicas` processes; `db` must be Postgres.
pub async fn measure(
    args: &BenchArgs,
    settings: &Settings,
    replicas: usize,
    sim: &SimProcess,
    db: &BenchDb,
) -> anyhow::Result<Report> {
    let region = Region::parse("us-east-1")?;
    let store = Store::connect(&db.url, 4)
        .await
        .context("opening the bench database")?;
    store.migrate().await.context("applying migrations")?;

    let mut options = ClientOptions::from_settings(settings);
    options.endpoint_url = Some(sim.url.clone());
    let driver_client = ChimeClient::new(simulator_sdk_config(&region), options);
    let driver = Driver::new(driver_client.sdk_client(&region));
    let setup_started = Instant::now();
    let mut fleet = setup(args, &driver, &store, &region).await?;
    let total_pages = total_pages(args, settings.poll.max_results);
    let ideal_sweep_s = total_pages as f64 / args.quota_rps;
    println!(
        "setup: {} meetings × {}{} attendees in {:.1}s; {} pages per sweep, ideal sweep {:.1}s at {} rps; {} replicas",
        args.meetings,
        if args.mixed_sizes { "up to " } else { "" },
        args.attendees,
        setup_started.elapsed().as_secs_f64(),
        total_pages,
        ideal_sweep_s,
        args.quota_rps,
        replicas
    );

    let binary = crate::sim_process::roster_sync_binary(args)?;
    let at_sim_before = sim_stats(&sim.url).await?;
    let polling_started = Instant::now();
    let mut sweeps = DbSweeps::new(Utc::now());
    let mut children = Vec::with_capacity(replicas);
    for _ in 0..replicas {
        children.push(start_replica(&binary, settings, &db.url, &sim.url)?);
    }
    let cpu_start = cpu_all(&children)?;
    println!(
        "replicas: pids {:?}",
        children.iter().map(|c| c.pid).collect::<Vec<_>>()
    );

    let changes = Arc::new(Mutex::new(Changes::default()));
    let sampler_stop = CancellationToken::new();
    let (sweep_tx, mut sweep_rx) = tokio::sync::watch::channel(0usize);
    let sampler = {
        let (store, changes, stop) = (store.clone(), Arc::clone(&changes), sampler_stop.clone());
        tokio::spawn(async move {
            let mut cursor = 0i64;
            let mut events = 0u64;
            loop {
                let meetings = store.list_meetings().await?;
                sweeps.observe(meetings.iter().map(|m| (&m.meeting_id, m.last_polled_at)));
                sweep_tx.send_replace(sweeps.completed.len());
                loop {
                    let batch = store.events_since(cursor, 10_000).await?;
                    let at = Instant::now();
                    let Some(last) = batch.last() else { break };
                    cursor = last.event_id;
                    events += batch.len() as u64;
                    let mut c = lock(&changes);
                    for e in &batch {
                        if let (Ok(m), Ok(a)) =
                            (guid(e.meeting_id.as_str()), guid(e.attendee_id.as_str()))
                        {
                            c.seen((m, a, e.kind), at);
                        }
                    }
                }
                tokio::select! {
                    () = stop.cancelled() => return anyhow::Ok((sweeps, events)),
                    () = tokio::time::sleep(SAMPLE_EVERY) => {}
                }
            }
        })
    };

    let limit = settle_limit(
        ideal_sweep_s,
        args.quota_rps.min(settings.rate.requests_per_second),
        args,
    );
    let warmed = wait_sweeps(&mut sweep_rx, 1, limit).await;
    let warmup_s = polling_started.elapsed().as_secs_f64();
    let cpu_warm = cpu_all(&children)?;
    println!(
        "warm-up: first sweep {} after {warmup_s:.1}s; churn for {:?}",
        if warmed { "done" } else { "NOT done" },
        args.duration
    );
    lock(&changes).armed = true;
    let plan = ChurnPlan {
        per_second: args.churn_per_s,
        duration: args.duration,
        target: args.attendees,
        end_a_meeting_after: None,
        skew: args.churn_skew,
        name: |serial| format!("churn-{serial}"),
    };
    let churned = churn(
        &driver,
        &mut fleet,
        &plan,
        &CancellationToken::new(),
        |made| {
            lock(&changes).made(&made);
        },
    )
    .await;
    println!(
        "churn: {} changes made ({} failed); settling until a sweep started after the last change completes",
        churned.made, churned.failed
    );
    // Sweeps completed now may have started before the churn ended; the one after next
    // started after it.
    let now_completed = *sweep_rx.borrow();
    wait_sweeps(&mut sweep_rx, now_completed + 2, limit).await;

    let polling_s = polling_started.elapsed().as_secs_f64();
    let cpu_end = cpu_all(&children)?;
    let peak_rss: Vec<f64> = children
        .iter()
        .map(|c| peak_rss_mb_of(c.pid))
        .collect::<anyhow::Result<_>>()?;
    let at_sim = sim_stats(&sim.url).await?;
    let held = held_per_replica(&store, &children).await?;
    sampler_stop.cancel();
    let (sweeps, events) = sampler.await.context("the sampler panicked")??;
    for c in children {
        c.stop().await;
    }
    store.close().await;

    let requests = at_sim.list_attendees.requests - at_sim_before.list_attendees.requests;
    let throttled = at_sim.list_attendees.throttled - at_sim_before.list_attendees.throttled;
    let mut sweep_times: Vec<f64> = sweeps.completed.iter().map(|s| s.1).collect();
    let sweep_first_s = sweep_times.first().copied().unwrap_or(f64::NAN);
    sweep_times.sort_by(f64::total_cmp);
    let changes = std::mem::take(&mut *lock(&changes));
    let mut latencies = changes.latencies_ms.clone();
    latencies.sort_by(f64::total_cmp);
    let report = Report {
        mode: "replicas",
        replicas,
        meetings: args.meetings,
        attendees: args.attendees,
        mixed_sizes: args.mixed_sizes,
        total_pages,
        churn_per_s: args.churn_per_s,
        quota_rps: args.quota_rps,
        daemon_rps: settings.rate.requests_per_second,
        daemon_burst: settings.rate.burst,
        interval_s: settings.poll.interval.as_secs_f64(),
        heartbeat_s: settings.cluster.heartbeat.as_secs_f64(),
        lease_ttl_s: settings.cluster.lease_ttl.as_secs_f64(),
        duration_s: args.duration.as_secs_f64(),
        polling_s,
        requests,
        throttled,
        throttled_ratio: ratio(throttled as f64, requests as f64),
        fleet_rps: ratio(requests as f64, polling_s),
        ideal_sweep_s,
        sweeps: sweep_times.len(),
        sweep_first_s,
        sweep_p50_s: percentile(&sweep_times, 0.5),
        sweep_max_s: sweep_times.last().copied().unwrap_or(f64::NAN),
        changes: churned.made,
        changes_detected: changes.latencies_ms.len() as u64,
        detection_latency_p50_ms: percentile(&latencies, 0.5),
        detection_latency_p99_ms: percentile(&latencies, 0.99),
        detection_latency_max_ms: latencies.last().copied().unwrap_or(f64::NAN),
        events,
        replica_cpu_fraction: cpu_end
            .iter()
            .zip(&cpu_start)
            .map(|(e, s)| ratio(e - s, polling_s))
            .collect(),
        replica_cpu_fraction_after_warmup: cpu_end
            .iter()
            .zip(&cpu_warm)
            .map(|(e, s)| ratio(e - s, polling_s - warmup_s))
            .collect(),
        replica_peak_rss_mb: peak_rss,
        replica_meetings: held.iter().map(|h| h.0).collect(),
        replica_pages: held.iter().map(|h| h.1).collect(),
    };
    print_summary(&report, &sweeps.completed);
    Ok(report)
}

/// Starts one `roster-sync run` in cluster mode against the simulator, with the run's
/// settings passed as environment variables and placeholder AWS credentials.
fn start_replica(
    binary: &std::path::Path,
    settings: &Settings,
    database_url: &str,
    sim_url: &str,
) -> anyhow::Result<ReplicaProcess> {
    let secs = |d: Duration| format!("{}ms", d.as_millis());
    let child = Command::new(binary)
        .arg("run")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("AWS_ACCESS_KEY_ID", "roster-bench")
        .env("AWS_SECRET_ACCESS_KEY", "roster-bench")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/aws-credentials",
        )
        .env("DATABASE_URL", database_url)
        .env("ROSTER_SYNC__DATABASE__MIGRATE_ON_START", "false")
        .env("ROSTER_SYNC__CHIME__ENDPOINT_URL", sim_url)
        // The operations endpoint is on, as in production, on a port of its own: its memory
        // and CPU count in the replica's numbers.
        .env("ROSTER_SYNC__HTTP__LISTEN", "127.0.0.1:0")
        .env("ROSTER_SYNC__LOG__LEVEL", "warn")
        .env("ROSTER_SYNC__CLUSTER__ENABLED", "true")
        .env(
            "ROSTER_SYNC__CLUSTER__HEARTBEAT",
            secs(settings.cluster.heartbeat),
        )
        .env(
            "ROSTER_SYNC__CLUSTER__LEASE_TTL",
            secs(settings.cluster.lease_ttl),
        )
        .env(
            "ROSTER_SYNC__RATE__REQUESTS_PER_SECOND",
            settings.rate.requests_per_second.to_string(),
        )
        .env("ROSTER_SYNC__RATE__BURST", settings.rate.burst.to_string())
        .env("ROSTER_SYNC__POLL__INTERVAL", secs(settings.poll.interval))
        .env(
            "ROSTER_SYNC__POLL__CONCURRENCY",
            settings.poll.concurrency.to_string(),
        )
        .env(
            "ROSTER_SYNC__POLL__MAX_RESULTS",
            settings.poll.max_results.to_string(),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {} run", binary.display()))?;
    let pid = child.id().context("the replica exited at once")?;
    Ok(ReplicaProcess { child, pid })
}

fn cpu_all(children: &[ReplicaProcess]) -> anyhow::Result<Vec<f64>> {
    children.iter().map(ReplicaProcess::cpu_seconds).collect()
}

/// Valid leases held by each replica and their pages, in start order (matched by pid).
async fn held_per_replica(
    store: &Store,
    children: &[ReplicaProcess],
) -> anyhow::Result<Vec<(i64, i64)>> {
    let rows = store.replicas(Duration::from_secs(3600)).await?;
    Ok(children
        .iter()
        .map(|c| {
            rows.iter()
                .find(|r| u32::try_from(r.pid).ok() == Some(c.pid))
                .map_or((0, 0), |r| (r.meetings, r.pages))
        })
        .collect())
}

/// Waits until `at_least` sweeps completed or `limit` passed; false when it gave up.
async fn wait_sweeps(
    rx: &mut tokio::sync::watch::Receiver<usize>,
    at_least: usize,
    limit: Duration,
) -> bool {
    let done = tokio::time::timeout(limit, rx.wait_for(|n| *n >= at_least)).await;
    let ok = matches!(done, Ok(Ok(_)));
    if !ok {
        println!("(gave up waiting for sweep {at_least} after {limit:?})");
    }
    ok
}

/// `GET /_sim/stats` of the simulator process.
async fn sim_stats(url: &str) -> anyhow::Result<SimStats> {
    let addr = url.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to the simulator at {url}"))?;
    s.write_all(format!("GET /_sim/stats HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).await?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .context("the simulator's stats answer has no body")?;
    serde_json::from_str(body).with_context(|| format!("the simulator's stats: {body}"))
}

/// Sweeps read from `tracked_meetings.last_polled_at` (the start of each meeting's last
/// recorded poll): sweep k, begun at `start`, is complete when every meeting shows a poll
/// started at or after it; it ends at the latest of those starts, where sweep k+1 begins.
#[derive(Debug)]
pub struct DbSweeps {
    start: DateTime<Utc>,
    /// Per meeting, the first poll start seen at or after `start`.
    seen: HashMap<MeetingId, DateTime<Utc>>,
    /// (start, seconds) of each completed sweep.
    pub completed: Vec<(DateTime<Utc>, f64)>,
}

impl DbSweeps {
    pub fn new(start: DateTime<Utc>) -> Self {
        Self {
            start,
            seen: HashMap::new(),
            completed: Vec::new(),
        }
    }

    /// Takes one sample of every meeting's last poll start.
    pub fn observe<'a>(
        &mut self,
        meetings: impl Iterator<Item = (&'a MeetingId, Option<DateTime<Utc>>)> + Clone,
    ) {
        loop {
            let mut total = 0usize;
            for (id, polled) in meetings.clone() {
                total += 1;
                if let Some(at) = polled.filter(|at| *at >= self.start) {
                    self.seen.entry(id.clone()).or_insert(at);
                }
            }
            if total == 0 || self.seen.len() < total {
                return;
            }
            let Some(end) = self.seen.values().max().copied() else {
                return;
            };
            let seconds = (end - self.start).num_microseconds().unwrap_or(0) as f64 / 1e6;
            self.completed.push((self.start, seconds));
            self.start = end;
            self.seen.clear();
        }
    }
}

fn print_summary(r: &Report, sweeps: &[(DateTime<Utc>, f64)]) {
    let list: Vec<String> = sweeps.iter().map(|(_, s)| format!("{s:.1}")).collect();
    println!("\n== roster-bench --replicas {} summary ==", r.replicas);
    println!(
        "{} meetings × {}{} attendees ({} pages), churn {}/s for {:.0}s, postgres; quota {} rps at the simulator, \
         each replica configured for {} rps (burst {}), interval {}s, heartbeat {}s, lease TTL {}s",
        r.meetings,
        if r.mixed_sizes { "up to " } else { "" },
        r.attendees,
        r.total_pages,
        r.churn_per_s,
        r.duration_s,
        r.quota_rps,
        r.daemon_rps,
        r.daemon_burst,
        r.interval_s,
        r.heartbeat_s,
        r.lease_ttl_s
    );
    println!(
        "fleet: {} ListAttendees requests in {:.1}s ({:.2}/s), throttled {} ({:.2} %)",
        r.requests,
        r.polling_s,
        r.fleet_rps,
        r.throttled,
        100.0 * r.throttled_ratio
    );
    println!(
        "sweeps (s): [{}] — p50 {:.1}s, max {:.1}s; ideal {:.1}s",
        list.join(", "),
        r.sweep_p50_s,
        r.sweep_max_s,
        r.ideal_sweep_s
    );
    println!(
        "changes {} made, {} detected; detection latency p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; events {}",
        r.changes,
        r.changes_detected,
        r.detection_latency_p50_ms,
        r.detection_latency_p99_ms,
        r.detection_latency_max_ms,
        r.events
    );
    for (i, cpu) in r.replica_cpu_fraction.iter().enumerate() {
        println!(
            "replica {i}: cpu {:.2} % of one core ({:.2} % after warm-up), peak RSS {:.1} MiB, {} meetings ({} pages) at the end",
            100.0 * cpu,
            100.0 * r.replica_cpu_fraction_after_warmup[i],
            r.replica_peak_rss_mb[i],
            r.replica_meetings[i],
            r.replica_pages[i]
        );
    }
}

/// Refuses `--replicas` without what cluster mode needs.
pub fn validate(args: &BenchArgs, replicas: usize) -> anyhow::Result<()> {
    if replicas == 0 {
        bail!("--replicas must be at least 1");
    }
    if args.database_url.is_none() {
        bail!(
            "--replicas needs --database-url: cluster mode (cluster.enabled) runs on Postgres only"
        );
    }
    if args.floor_polls.is_some() {
        bail!("--replicas and --floor-polls are different runs; give one of them");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweep_ends_at_the_start_of_the_last_poll_that_completes_it() {
        let ids: Vec<MeetingId> = (1..=2)
            .map(|i| MeetingId::parse(&format!("00000000-0000-0000-0000-00000000000{i}")).unwrap())
            .collect();
        let t0 = Utc::now();
        let at = |ms: i64| Some(t0 + chrono::Duration::milliseconds(ms));
        let mut s = DbSweeps::new(t0);
        s.observe([(&ids[0], at(-5)), (&ids[1], None)].into_iter());
        s.observe([(&ids[0], at(100)), (&ids[1], None)].into_iter());
        assert!(
            s.completed.is_empty(),
            "a poll before the sweep or none does not count"
        );
        // Meeting 0 was polled again meanwhile: its first poll in the sweep still counts.
        s.observe([(&ids[0], at(300)), (&ids[1], at(400))].into_iter());
        assert_eq!(s.completed.len(), 1);
        assert!((s.completed[0].1 - 0.4).abs() < 1e-9);
        s.observe([(&ids[0], at(900)), (&ids[1], at(700))].into_iter());
        assert_eq!(s.completed.len(), 2);
        assert!((s.completed[1].1 - 0.5).abs() < 1e-9);
    }
}
