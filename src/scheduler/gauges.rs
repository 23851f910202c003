//! What the loop publishes about itself: once a second the meetings tracked, polls in
//! flight, and per region the stalest meeting, its request rate, the estimated sweep time and
//! whether the service accepts its credentials; and at every successful poll the age of the
//! roster it refreshed (a histogram Prometheus can aggregate into any quantile) and the time
//! of the region's last success.
//!
//! It only reads scheduling state; it never decides anything.

use std::time::Duration;

use tokio::time::Instant;

use super::queue::Queue;
use crate::chime::RosterSource;
use crate::domain::Region;

/// Reused between publications so that publishing allocates nothing per meeting.
#[derive(Debug, Default)]
pub(super) struct Gauges {
    /// The largest staleness of each region (by the queue's region index).
    stalest: Vec<f64>,
}

impl Gauges {
    /// Per region: the largest staleness over its meetings (since the last successful poll,
    /// or since tracking began for a meeting never polled), the rate of its `ListAttendees`
    /// budget, how long one sweep of all its meetings takes at that rate, and whether it is
    /// up. Overall: meetings tracked and polls in flight.
    pub fn publish<S: RosterSource>(
        &mut self,
        queue: &Queue,
        in_flight: usize,
        source: &S,
        now: Instant,
    ) {
        let stalest = &mut self.stalest;
        stalest.clear();
        stalest.resize(queue.regions.len(), 0.0);
        for m in queue.meetings() {
            let age = now.duration_since(m.staleness_since()).as_secs_f64();
            if let Some(max) = stalest.get_mut(m.region) {
                *max = max.max(age);
            }
        }
        metrics::gauge!("roster_sync_meetings_tracked").set(queue.len() as f64);
        metrics::gauge!("roster_sync_polls_in_flight").set(in_flight as f64);
        for (q, &max) in queue.regions.iter().zip(stalest.iter()) {
            let region = q.region.to_string();
            metrics::gauge!("roster_sync_staleness_max_seconds", "region" => region.clone())
                .set(max);
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

/// A poll of a meeting of `region` succeeded, refreshing a roster that was `age` old.
pub(super) fn poll_succeeded(region: &Region, age: Duration) {
    let region = region.to_string();
    metrics::histogram!(crate::telemetry::STALENESS, "region" => region.clone())
        .record(age.as_secs_f64());
    metrics::gauge!("roster_sync_last_success_timestamp_seconds", "region" => region)
        .set(crate::telemetry::unix_now());
}
