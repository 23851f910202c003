//! Logging setup: human-readable text by default, JSON on request, filtered by `log.level`
//! or `RUST_LOG`, colour only on a terminal; and the HELP text of every metric.
//!
//! It must never let a JoinToken through: the AWS SDK prints response bodies at trace level
//! only when `LOG_SENSITIVE_BODIES=true`, so when that variable is set the SDK's orchestrator
//! is capped at debug here, whatever filter was asked for.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::LogFormat;

/// Builds the filter: `RUST_LOG` if set, else `level`; plus the JoinToken safety cap.
pub fn filter(level: &str) -> EnvFilter {
    let base = std::env::var("RUST_LOG").ok().filter(|s| !s.is_empty());
    let mut filter = EnvFilter::try_new(base.as_deref().unwrap_or(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let sensitive =
        std::env::var("LOG_SENSITIVE_BODIES").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    if sensitive && let Ok(cap) = "aws_smithy_runtime::client::orchestrator=debug".parse() {
        filter = filter.add_directive(cap);
    }
    filter
}

/// Installs the global subscriber writing to `writer`. Safe to call more than once: later
/// calls are ignored (tests install their own).
pub fn init<W>(format: LogFormat, level: &str, writer: W)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    // Colour escapes only for a person at a terminal, never in a file or the journal.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // A line that cannot be written (stderr's reader has gone) is dropped. Reporting it
    // would mean `eprintln!` to that same stderr, which panics: the task logging (the signal
    // handler's "stopping" among them) would die, and SIGTERM would no longer stop the process.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(level))
        .with_ansi(ansi)
        .with_writer(writer)
        .log_internal_errors(false);
    let _ = match format {
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Every metric roster-sync records itself, with its type and HELP text: the one list that
/// [`describe_metrics`] publishes and the metrics table of docs/operating.md follows. (The webhook and
/// retention metrics are described by `sinks` and `retention` when they start.)
pub const METRICS: &[(&str, Kind, &str)] = &[
    (
        "roster_sync_build_info",
        Kind::Gauge,
        "Always 1; the version label says which roster-sync is running.",
    ),
    (
        "roster_sync_poll_interval_seconds",
        Kind::Gauge,
        "The configured poll.interval: how often each meeting is polled when the rate allows.",
    ),
    (
        "roster_sync_chime_requests_total",
        Kind::Counter,
        "Requests sent to the Chime SDK Meetings API, by region, operation and outcome.",
    ),
    (
        "roster_sync_polls_total",
        Kind::Counter,
        "Finished polls by region and outcome: unchanged, changed, ended, conflict, failed, cancelled.",
    ),
    (
        "roster_sync_poll_duration_seconds",
        Kind::Histogram,
        "Time from a poll's launch to its outcome, rate-budget waits included.",
    ),
    (
        "roster_sync_events_total",
        Kind::Counter,
        "Roster events recorded, by kind: joined, left, capabilities_changed.",
    ),
    (
        "roster_sync_meeting_events_total",
        Kind::Counter,
        "Chime meeting lifecycle events read from the [meeting_events] queue, by type (unknown for a body that is no valid event) and outcome: hint, ignored, inactive, untracked, not_matched, not_found, tracked, duplicate, failed (kept in the queue), or the rejection (malformed, too_large, not_chime, unknown_type, bad_id, bad_timestamp, bad_sns_message).",
    ),
    (
        "roster_sync_presence_events_total",
        Kind::Counter,
        "Presence events (joins, leaves, drops, video and content) applied from the [meeting_events] queue, by type and outcome: applied, no_change, stale (older than a change already recorded for the attendee), duplicate, hint_only, meeting_not_active, unknown_attendee (no poll showed the attendee in time), failed (kept in the queue).",
    ),
    (
        "roster_sync_meeting_events_hint_polls_total",
        Kind::Counter,
        "Polls launched because a meeting event made the meeting due (hint polls), paid from the same rate budget.",
    ),
    (
        "roster_sync_meeting_events_receive_errors_total",
        Kind::Counter,
        "Failed requests to the meeting-events queue, by reason: access_denied, no_such_queue, throttled, transport, refused, malformed, other, delete.",
    ),
    (
        "roster_sync_meeting_events_up",
        Kind::Gauge,
        "1 when the last ReceiveMessage on the meeting-events queue succeeded, 0 while it fails (polling goes on without hints).",
    ),
    (
        "roster_sync_meeting_events_age_seconds",
        Kind::Histogram,
        "Age of meeting events at receipt: now minus the envelope time.",
    ),
    (
        "roster_sync_paging_skips_total",
        Kind::Counter,
        "Attendees missing from a multi-page roster that GetAttendee found still present.",
    ),
    (
        "roster_sync_region_up",
        Kind::Gauge,
        "1 while the service accepts the region's credentials, 0 while they are refused and only a probe is sent per interval.",
    ),
    (
        "roster_sync_rate_requests_per_second",
        Kind::Gauge,
        "Current ListAttendees request rate of the region's adaptive budget.",
    ),
    (
        "roster_sync_rate_decreases_total",
        Kind::Counter,
        "Times a region's rate budget (per operation) slowed down after a ThrottlingException.",
    ),
    (
        "roster_sync_sweep_estimate_seconds",
        Kind::Gauge,
        "How long one poll of every meeting of the region takes at its current rate.",
    ),
    (
        "roster_sync_staleness_max_seconds",
        Kind::Gauge,
        "Longest time since a meeting's last successful poll (or since tracking began), over the region's tracked meetings.",
    ),
    (
        "roster_sync_staleness_seconds",
        Kind::Histogram,
        "Age of a meeting's roster when a poll refreshed it: the time since its previous successful poll (since tracking began for its first), by region.",
    ),
    (
        "roster_sync_last_success_timestamp_seconds",
        Kind::Gauge,
        "Unix time of the region's last successful poll.",
    ),
    (
        "roster_sync_meetings_tracked",
        Kind::Gauge,
        "Active meetings the scheduler polls.",
    ),
    (
        "roster_sync_polls_in_flight",
        Kind::Gauge,
        "Polls running now.",
    ),
    (
        "roster_sync_ready",
        Kind::Gauge,
        "1 while /readyz answers 200 (database answered recently, migrations applied, meeting list loaded, no region refusing credentials), else 0.",
    ),
    (
        "roster_sync_database_up",
        Kind::Gauge,
        "1 while the database answered within the last 15 s and is not being waited for, else 0.",
    ),
    (
        "roster_sync_database_errors_total",
        Kind::Counter,
        "Database calls of the daemon that failed, by what it was doing: meeting_list, poll, record_failure, bookkeeping, webhook, retention, cluster.",
    ),
    (
        "roster_sync_scheduler_last_tick_timestamp_seconds",
        Kind::Gauge,
        "Unix time of the scheduler loop's last tick; a stuck loop stops advancing it.",
    ),
    (
        "roster_sync_process_cpu_seconds",
        Kind::Gauge,
        "CPU time (user and system) this process has used since it started; rate() of it is the CPU in use.",
    ),
    (
        "roster_sync_process_resident_memory_bytes",
        Kind::Gauge,
        "Resident memory of this process.",
    ),
    (
        "roster_sync_leases_held",
        Kind::Gauge,
        "Cluster mode: meeting leases this replica holds (the meetings it polls).",
    ),
    (
        "roster_sync_replicas_live",
        Kind::Gauge,
        "Cluster mode: replicas whose heartbeat is younger than cluster.lease_ttl.",
    ),
    (
        "roster_sync_lease_lost_total",
        Kind::Counter,
        "Cluster mode: poll results dropped unwritten because the meeting's lease was lost.",
    ),
];

/// Age of a roster when a poll refreshed it (histogram, seconds, by region).
pub const STALENESS: &str = "roster_sync_staleness_seconds";

/// Its buckets: around the default interval (10 s) and up to an hour behind. The other
/// histogram (poll duration) uses the recorder's default buckets, set in `http`.
pub const STALENESS_BUCKETS: &[f64] = &[
    1.0, 2.5, 5.0, 10.0, 12.5, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// A metric's Prometheus type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Gives every metric of [`METRICS`] its HELP text and sets `roster_sync_build_info`. Call
/// once, after the recorder is installed.
pub fn describe_metrics() {
    for &(name, kind, help) in METRICS {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Histogram => metrics::describe_histogram!(name, help),
        }
    }
    metrics::gauge!("roster_sync_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    // Present from the start (at 0), so a rate() over them works before the first failure.
    metrics::counter!("roster_sync_database_errors_total", "operation" => "meeting_list")
        .absolute(0);
}

/// A failed database call of the daemon, while doing `operation` (a label of
/// `roster_sync_database_errors_total`).
pub fn database_error(operation: &'static str) {
    metrics::counter!("roster_sync_database_errors_total", "operation" => operation).increment(1);
}

/// Seconds since the Unix epoch, for the `…_timestamp_seconds` gauges.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Publishes the process's CPU time and resident memory, read from `/proc/self` (Linux; does
/// nothing elsewhere or when `/proc` cannot be read).
///
/// Two numbers do not justify a crate: the `metrics-process` crate brings `procfs` and
/// `rustix` along and counts CPU in whole seconds; here they are two small reads.
pub fn record_process() {
    if let Some(cpu) = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| cpu_seconds(&stat))
    {
        metrics::gauge!("roster_sync_process_cpu_seconds").set(cpu);
    }
    if let Some(rss) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| resident_bytes(&status))
    {
        metrics::gauge!("roster_sync_process_resident_memory_bytes").set(rss);
    }
}

/// utime + stime from `/proc/self/stat`, in seconds. They count clock ticks of `USER_HZ`,
/// which Linux fixes at 100 for user space.
fn cpu_seconds(stat: &str) -> Option<f64> {
    // The command name may hold spaces and parentheses: fields are counted after the last ')'.
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    // After the name: state is field 3, utime field 14, stime field 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// `VmRSS` from `/proc/self/status`, in bytes.
fn resident_bytes(status: &str) -> Option<f64> {
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_after_a_command_name_with_spaces_and_parentheses() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime stime …
        let stat = "4242 (roster sync (x)) S 1 2 3 4 5 6 7 8 9 10 250 75 0 0 20 0";
        assert_eq!(cpu_seconds(stat), Some(3.25));
        assert_eq!(cpu_seconds("4242 (cut) R 1 2"), None);
    }

    #[test]
    fn resident_memory_is_read_from_vmrss_in_kib() {
        let status = "Name:\troster-sync\nVmHWM:\t  9000 kB\nVmRSS:\t  2048 kB\n";
        assert_eq!(resident_bytes(status), Some(2048.0 * 1024.0));
        assert_eq!(resident_bytes("Name:\tx\n"), None);
    }

    #[test]
    fn this_process_reports_cpu_time_and_resident_memory() {
        if cfg!(target_os = "linux") {
            let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
            assert!(cpu_seconds(&stat).is_some(), "{stat}");
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            assert!(resident_bytes(&status).is_some_and(|b| b > 0.0), "{status}");
        }
    }

    #[test]
    fn every_metric_is_prefixed_and_counters_end_in_total() {
        for &(name, kind, help) in METRICS {
            assert!(name.starts_with("roster_sync_"), "{name}");
            assert!(!help.is_empty(), "{name}");
            assert_eq!(kind == Kind::Counter, name.ends_with("_total"), "{name}");
        }
    }
}
