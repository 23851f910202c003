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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(level))
        .with_ansi(ansi)
        .with_writer(writer);
    let _ = match format {
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Gives every metric roster-sync records its HELP text and unit. Call once, after the
/// recorder is installed.
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "roster_sync_chime_requests_total",
        "Requests sent to the Chime SDK Meetings API, by operation and outcome."
    );
    describe_counter!(
        "roster_sync_polls_total",
        "Finished polls by outcome: unchanged, changed, ended, conflict, failed."
    );
    describe_histogram!(
        "roster_sync_poll_duration_seconds",
        Unit::Seconds,
        "Time from a poll's launch to its outcome, rate-budget waits included."
    );
    describe_counter!(
        "roster_sync_events_total",
        "Roster events recorded, by kind: joined, left, capabilities_changed."
    );
    describe_counter!(
        "roster_sync_paging_skips_total",
        "Attendees missing from a multi-page roster that GetAttendee found still present."
    );
    describe_gauge!(
        "roster_sync_region_up",
        "1 while the service accepts the region's credentials, 0 while they are refused and only a probe is sent per interval."
    );
    describe_gauge!(
        "roster_sync_rate_requests_per_second",
        "Current ListAttendees request rate of the region's adaptive budget."
    );
    describe_counter!(
        "roster_sync_rate_decreases_total",
        "Times a rate budget slowed down after a ThrottlingException."
    );
    describe_gauge!(
        "roster_sync_sweep_estimate_seconds",
        Unit::Seconds,
        "How long one poll of every meeting of the region takes at its current rate."
    );
    describe_gauge!(
        "roster_sync_staleness_max_seconds",
        Unit::Seconds,
        "Longest time since a meeting's last successful poll, over all tracked meetings."
    );
    describe_gauge!(
        "roster_sync_staleness_p99_seconds",
        Unit::Seconds,
        "99th percentile of the time since each meeting's last successful poll."
    );
    describe_gauge!(
        "roster_sync_meetings_tracked",
        "Active meetings the scheduler polls."
    );
    describe_gauge!("roster_sync_polls_in_flight", "Polls running now.");
    describe_gauge!(
        "roster_sync_ready",
        "1 while /readyz answers 200 (database answered recently, migrations applied, meeting list loaded, no region refusing credentials), else 0."
    );
    describe_gauge!(
        "roster_sync_database_up",
        "1 while the database answered within the last 15 s and is not being waited for, else 0."
    );
    describe_gauge!(
        "roster_sync_scheduler_last_tick_timestamp_seconds",
        Unit::Seconds,
        "Unix time of the scheduler loop's last tick; a stuck loop stops advancing it."
    );
    describe_gauge!(
        "roster_sync_leases_held",
        "Cluster mode: meeting leases this replica holds (the meetings it polls)."
    );
    describe_gauge!(
        "roster_sync_replicas_live",
        "Cluster mode: replicas whose heartbeat is younger than cluster.lease_ttl."
    );
    describe_counter!(
        "roster_sync_lease_lost_total",
        "Cluster mode: poll results dropped unwritten because the meeting's lease was lost."
    );
}
