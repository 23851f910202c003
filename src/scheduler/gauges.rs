//! What the loop publishes about itself once a second: staleness, meetings tracked, polls in
//! flight, and per region its request rate, the estimated sweep time and whether the service
//! accepts its credentials.
//!
//! It only reads scheduling state; it never decides anything.

use tokio::time::Instant;

use super::queue::Queue;
use crate::chime::RosterSource;

/// Reused between publications so that publishing allocates nothing.
#[derive(Debug, Default)]
pub(super) struct Gauges {
    staleness: Vec<f64>,
}

impl Gauges {
    /// Staleness (since the last successful poll, or since tracking began for a meeting never
    /// polled) max and p99 over meetings, and per region the rate of its `ListAttendees`
    /// budget, how long one sweep of all its meetings takes at that rate, and whether it is up.
    pub fn publish<S: RosterSource>(
        &mut self,
        queue: &Queue,
        in_flight: usize,
        source: &S,
        now: Instant,
    ) {
        let staleness = &mut self.staleness;
        staleness.clear();
        staleness.extend(
            queue
                .meetings()
                .map(|m| now.duration_since(m.staleness_since()).as_secs_f64()),
        );
        let (p99, max) = if staleness.is_empty() {
            (0.0, 0.0)
        } else {
            // The smallest value that at least 99 % of meetings do not exceed.
            let rank = ((staleness.len() as f64) * 0.99).ceil() as usize;
            let rank = rank.clamp(1, staleness.len()) - 1;
            let (_, p99, above) = staleness.select_nth_unstable_by(rank, f64::total_cmp);
            let p99 = *p99;
            let max = above.iter().copied().fold(p99, f64::max);
            (p99, max)
        };
        metrics::gauge!("roster_sync_staleness_max_seconds").set(max);
        metrics::gauge!("roster_sync_staleness_p99_seconds").set(p99);
        metrics::gauge!("roster_sync_meetings_tracked").set(queue.len() as f64);
        metrics::gauge!("roster_sync_polls_in_flight").set(in_flight as f64);
        for q in &queue.regions {
            let region = q.region.to_string();
            let up = if q.breaker.is_up() { 1.0 } else { 0.0 };
            metrics::gauge!("roster_sync_region_up", "region" => region.clone()).set(up);
            if let Some(rate) = source.current_rate(&q.region) {
                metrics::gauge!("roster_sync_rate_requests_per_second", "region" => region.clone())
                    .set(rate);
                metrics::gauge!("roster_sync_sweep_estimate_seconds", "region" => region)
                    .set(q.pages_total as f64 / rate.max(f64::MIN_POSITIVE));
            }
        }
    }
}
