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

//! **Overhead over the floor.** After the settle phase the daemon stops and, in the same
//! process, the bare SDK client pages the same meetings at the request rate the daemon reached
//! after its warm-up, with the same churn (`--floor-duration`). `cpu_us_per_request_steady`
//! (the daemon after its warm-up sweep), `floor_us_per_request` and their ratio,
//! `overhead_ratio`, are in the report.
//!
//! With `--replicas N` the polling runs in N `roster-sync run` processes in cluster mode on
//! one Postgres database instead of in this process (see [`replicas`]).
//!
//! This binary reads `/proc` and calls into libc (`malloc_trim`, `clock_gettime`). Modules:
//! [`capacity`] (the phases and the report), [`floor`] (the floor after a capacity run, and
//! `--floor-polls`), [`replicas`] (`--replicas`), [`latency`] (matching changes with events), [`sweeps`],
//! [`process`] (CPU time and peak RSS of this process), [`sim_process`] (the child simulator)
//! and [`scratch`] (the run's own database).

mod args;
mod capacity;
mod events;
mod floor;
mod gaps;
mod latency;
mod process;
mod replicas;
mod scratch;
mod sim_process;
mod sweeps;

use anyhow::bail;
use clap::Parser;
use serde::Serialize;

use roster_sync::config::Settings;

use args::BenchArgs;

/// The secret of the benchmark's webhook sink (the example from the Standard Webhooks
/// specification's format; nothing verifies it).
const BENCH_WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A webhook endpoint that accepts connections, never reads or answers, and holds them open
/// until the run ends (the task is aborted on drop).
struct HungReceiver {
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl HungReceiver {
    async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        Ok(Self { url, task })
    }
}

impl Drop for HungReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a run measured: the capacity run's report, or the floor's.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
enum Outcome {
    Capacity(Box<capacity::Report>),
    Floor(floor::FloorReport),
    Replicas(Box<replicas::Report>),
}

/// Parses the command line, runs the capacity run (or the floor), prints its JSON report as
/// the last line of stdout.
fn main() -> std::process::ExitCode {
    let args = BenchArgs::parse();
    // The daemon's own logs stay at warnings, as a quiet production daemon's would (at info
    // it logs a line per event), unless RUST_LOG asks for more.
    roster_sync::telemetry::init(
        roster_sync::config::LogFormat::Text,
        "warn",
        std::io::stderr,
    );
    let runtime = match args.runtime.build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(report) => match serde_json::to_string(&report) {
            Ok(json) => {
                println!("{json}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot encode the report: {e}");
                std::process::ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the benchmark; progress and the human summary go to stdout, the JSON line is for the
/// caller to print last.
///
/// # Errors
/// The simulator binary is missing or does not start, the database cannot be created, or the
/// setup fails (the message says which).
async fn run(args: BenchArgs) -> anyhow::Result<Outcome> {
    validate(&args)?;
    let hung = if args.webhook_hung {
        let hung = HungReceiver::start().await?;
        println!("webhook sink: {} (hung: accepts, never answers)", hung.url);
        Some(hung)
    } else {
        None
    };
    let webhook_url = hung
        .as_ref()
        .map(|h| h.url.as_str())
        .or(args.webhook_url.as_deref());
    let settings = daemon_settings(&args, webhook_url)?;
    if let Some(polls) = args.floor_polls {
        return floor::floor(&args, &settings, polls)
            .await
            .map(Outcome::Floor);
    }

    let sim = sim_process::SimProcess::start(&args)?;
    println!(
        "simulator: {} (pid {}, quota {} rps, burst {}; its own process, not measured)",
        sim.url,
        sim.pid(),
        args.quota_rps,
        sim_process::sim_burst(args.quota_rps)
    );
    let db = scratch::BenchDb::create(&args).await?;
    println!("database: {}", roster_sync::redact::redact_url(&db.url));
    let report = match args.replicas {
        Some(n) => replicas::measure(&args, &settings, n, &sim, &db)
            .await
            .map(|r| Outcome::Replicas(Box::new(r))),
        None => capacity::measure(&args, &settings, &sim, &db)
            .await
            .map(|r| Outcome::Capacity(Box::new(r))),
    };
    drop(sim);
    drop(hung);
    db.finish(args.keep_database).await;
    report
}

/// The default configuration with the run's rate, burst, interval, concurrency and page size,
/// and a webhook sink posting to `webhook_url` if given.
fn daemon_settings(args: &BenchArgs, webhook_url: Option<&str>) -> anyhow::Result<Settings> {
    let mut settings = Settings::defaults()?;
    let daemon_rps = args.daemon_rps.unwrap_or(settings.rate.requests_per_second);
    settings.rate.requests_per_second = daemon_rps;
    settings.rate.burst = args
        .daemon_burst
        .unwrap_or_else(|| (2.0 * daemon_rps).ceil().max(1.0) as u32);
    if let Some(i) = args.interval {
        settings.poll.interval = i;
    }
    if let Some(c) = args.concurrency {
        settings.poll.concurrency = c;
    }
    if let Some(m) = args.max_results {
        settings.poll.max_results = m;
    }
    if let Some(s) = args.strategy {
        settings.poll.strategy = s;
    }
    if let Some(m) = args.max_interval {
        settings.poll.max_interval = m;
    }
    // Nothing serves the metrics here (the recorder still counts them, as in `run`).
    settings.http.listen.clear();
    if let Some(url) = webhook_url {
        settings.webhooks.push(roster_sync::config::WebhookEntry {
            name: "bench".into(),
            url: url.into(),
            secret: Some(roster_sync::config::Secret::new(BENCH_WEBHOOK_SECRET)),
            secret_env: None,
            kinds: Vec::new(),
            meeting_labels: Vec::new(),
            external_user_ids: Vec::new(),
        });
    }
    settings.validate()?;
    Ok(settings)
}

fn validate(args: &BenchArgs) -> anyhow::Result<()> {
    if args.meetings == 0 {
        bail!("--meetings must be at least 1");
    }
    if args
        .floor_polls
        .is_some_and(|n| n < floor::FLOOR_CONCURRENCY)
    {
        bail!(
            "--floor-polls must be at least {}",
            floor::FLOOR_CONCURRENCY
        );
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
    if let Some(n) = args.replicas {
        replicas::validate(args, n)?;
    }
    if args.meeting_events && args.replicas.is_some() {
        bail!("--meeting-events runs with the in-process daemon, not with --replicas");
    }
    for (flag, p) in [
        ("--event-loss", args.event_loss),
        ("--event-dup", args.event_dup),
    ] {
        if !(0.0..=1.0).contains(&p) {
            bail!("{flag} must be within 0.0..=1.0");
        }
    }
    if !(args.presence_churn_per_s.is_finite() && args.presence_churn_per_s >= 0.0) {
        bail!("--presence-churn-per-s must be a number of changes a second, 0 or more");
    }
    if args.event_delay > roster_sync::sim::events::MAX_EVENT_DELAY {
        bail!("--event-delay must be at most 15m");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use roster_sync::config::PollStrategy;
    use roster_sync::sim::churn::Skew;

    #[test]
    fn the_daemon_burst_defaults_to_twice_its_rate() {
        let args = BenchArgs::parse_from(["roster-bench", "--daemon-rps", "7"]);
        let s = daemon_settings(&args, None).unwrap();
        assert_eq!(s.rate.requests_per_second, 7.0);
        assert_eq!(s.rate.burst, 14);
        assert!(s.http.listen.is_empty());
    }

    #[test]
    fn a_webhook_url_adds_one_sink_with_every_event() {
        let args = BenchArgs::parse_from(["roster-bench", "--webhook-url", "http://127.0.0.1:9/h"]);
        let s = daemon_settings(&args, args.webhook_url.as_deref()).unwrap();
        assert_eq!(s.webhooks.len(), 1);
        assert_eq!(s.webhooks[0].url, "http://127.0.0.1:9/h");
        assert!(s.webhooks[0].kinds.is_empty());
        assert!(daemon_settings(&args, None).unwrap().webhooks.is_empty());
    }

    #[test]
    fn replicas_need_postgres() {
        let args = BenchArgs::parse_from(["roster-bench", "--replicas", "2"]);
        let e = validate(&args).unwrap_err().to_string();
        assert!(e.contains("--database-url"), "{e}");
        let args = BenchArgs::parse_from([
            "roster-bench",
            "--replicas",
            "2",
            "--database-url",
            "postgres://localhost/postgres",
        ]);
        assert!(validate(&args).is_ok());
    }

    #[test]
    fn the_strategy_max_interval_and_churn_skew_reach_the_run() {
        let args = BenchArgs::parse_from([
            "roster-bench",
            "--strategy",
            "change_aware",
            "--max-interval",
            "90s",
            "--churn-skew",
            "zipf:1.0",
        ]);
        let s = daemon_settings(&args, None).unwrap();
        assert_eq!(s.poll.strategy, PollStrategy::ChangeAware);
        assert_eq!(s.poll.max_interval, Duration::from_secs(90));
        assert_eq!(args.churn_skew, Skew::Zipf(1.0));
        assert!(BenchArgs::try_parse_from(["roster-bench", "--strategy", "busiest"]).is_err());
    }

    #[test]
    fn event_faults_need_meeting_events_and_are_bounded() {
        assert!(BenchArgs::try_parse_from(["roster-bench", "--event-loss", "0.2"]).is_err());
        let args = BenchArgs::parse_from([
            "roster-bench",
            "--meeting-events",
            "--event-loss",
            "0.2",
            "--event-dup",
            "0.1",
            "--event-delay",
            "5s",
        ]);
        assert!(validate(&args).is_ok());
        assert_eq!(args.event_delay, Duration::from_secs(5));
        let args = BenchArgs::parse_from(["roster-bench", "--meeting-events", "--event-dup", "2"]);
        assert!(validate(&args).is_err());
    }

    #[test]
    fn a_floor_shorter_than_its_workers_is_refused() {
        let args = BenchArgs::parse_from(["roster-bench", "--floor-polls", "3"]);
        assert!(validate(&args).is_err());
    }
}
