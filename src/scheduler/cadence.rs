//! How long each meeting waits between polls: `poll.strategy`.
//!
//! - `uniform`: every meeting is due each `poll.interval`; when the budget cannot keep up,
//!   the queue serves the stalest first, so every meeting is equally stale.
//! - `change_aware`: when the region's rate budget, not `poll.interval`, limits how often
//!   meetings are polled, each meeting gets a poll frequency proportional to
//!   √(change rate ÷ cost), clamped between once per `poll.interval` and once per
//!   `poll.max_interval`, and scaled so the frequencies together spend the budget
//!   ([`allocate`]). That is the split of a fixed request budget that minimises the mean wait
//!   of a change before a poll sees it (each change weighted alike): minimising
//!   Σ λᵢ·Tᵢ / 2 under Σ cᵢ / Tᵢ = budget gives Tᵢ ∝ √(cᵢ / λᵢ).
//!
//! A meeting's change rate is estimated from its own polls ([`ChangeRate`]): exponentially
//! weighted sums of the changes each poll found and of the seconds each poll covered (older
//! polls weigh exp(−age / 10 min)), their ratio being changes per second, pulled toward the
//! region's average by half a change's worth of evidence so that a meeting with little
//! history counts as about average. It lives in memory only: after a restart every meeting
//! starts from the average again. Every meeting keeps a small floor of the average rate.
//!
//! A poll that found a change brings no extra poll of its own: when changes come without
//! memory (as the benchmark's churn does) a poll soon after another finds little and takes
//! its requests from meetings that need them, and when they come in bursts the burst itself
//! raises the meeting's estimate, which brings its next polls closer. A meeting never polled
//! goes first in the queue. With an ample budget every meeting is due every `poll.interval`,
//! exactly as `uniform`.
//!
//! The planned waits spend [`UTILISATION`] of the budget, so that a due meeting seldom waits
//! for the rate; when nothing is due the queue spends the rest by launching early, of the
//! meetings due soonest, the one expected to have changed most (never sooner than
//! `poll.interval` after its last poll), so `change_aware` sends as many requests as
//! `uniform`. The planned waits are at most `poll.max_interval`
//! less [`MAX_INTERVAL_SLACK`]; a meeting still queued at that point goes ahead of every due
//! one, so the slack is what queueing behind the rate budget may add (see
//! `queue::Queue::by_due`).
//!
//! Pure arithmetic on what the queue knows: no clock reads, no I/O.

use std::time::Duration;

use crate::config::PollStrategy;

/// Share of the region's average change rate that every meeting is credited with, so a
/// meeting that has not changed lately is still polled now and then below the cap.
pub const FLOOR_SHARE: f64 = 0.05;

/// Share of the rate budget the allocation plans to spend. Planning a little under it keeps
/// the queue of due meetings short; the queue's early launches spend the rest.
pub const UTILISATION: f64 = 0.97;

/// Share of `poll.max_interval` kept free for a due poll waiting in the queue: planned waits
/// are at most `max_interval × (1 − MAX_INTERVAL_SLACK)`, and a meeting still waiting then
/// goes first.
pub const MAX_INTERVAL_SLACK: f64 = 0.1;

/// How far back a meeting's change history reaches: a poll weighs exp(−age / MEMORY).
pub const MEMORY: Duration = Duration::from_secs(600);

/// Evidence of the region's average rate credited to every meeting's estimate, in changes:
/// a meeting with little history of its own counts as about average.
pub const PRIOR_CHANGES: f64 = 0.5;

/// A meeting's change history: per poll, the changes it found and the seconds it covered,
/// each an exponentially weighted sum in which older polls weigh exp(−age / [`MEMORY`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ChangeRate {
    /// Changes (events) the polls found.
    events: f64,
    /// Seconds the polls covered (each since the previous successful poll started).
    seconds: f64,
    /// Whether any poll has been averaged in yet.
    known: bool,
}

impl ChangeRate {
    /// Averages in a poll that found `events` changes over `window` since the previous one.
    pub fn observe(&mut self, events: usize, window: Duration) {
        let events = events as f64;
        let seconds = window.as_secs_f64();
        if self.known {
            let keep = (-seconds / MEMORY.as_secs_f64()).exp();
            self.events = keep * self.events + events;
            self.seconds = keep * self.seconds + seconds;
        } else {
            *self = Self {
                events,
                seconds,
                known: true,
            };
        }
    }

    /// Changes per second, pulled toward the region's average `mean` by [`PRIOR_CHANGES`];
    /// `mean` itself with no history.
    pub fn per_second(&self, mean: f64) -> f64 {
        if !self.known || self.seconds <= 0.0 {
            return mean;
        }
        if mean <= 0.0 {
            return self.events / self.seconds;
        }
        (self.events + PRIOR_CHANGES) / (self.seconds + PRIOR_CHANGES / mean)
    }
}

/// What the allocation needs of one meeting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Demand {
    /// Requests a poll costs: its pages (at least one).
    pub pages: u32,
    pub rate: ChangeRate,
}

impl Demand {
    /// Requests a poll costs.
    fn cost(&self) -> f64 {
        f64::from(self.pages.max(1))
    }

    /// Requests per second when polls are `wait` seconds apart.
    fn spend(&self, wait: f64) -> f64 {
        self.cost() / wait
    }
}

/// How a region's budget is shared, as [`allocate`] found it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Level {
    /// Every meeting can be polled each `poll.interval`.
    Ample,
    /// Not even once per `max_interval` each: every meeting waits the longest planned wait
    /// and the queue serves them stalest first.
    Saturated,
    /// Frequencies are `scale × √(rate / cost)`, clamped; `mean` is the average change rate
    /// (meetings with no estimate count as this, and every one gets a floor of it).
    Shared { scale: f64, mean: f64 },
}

/// The bounds a wait is kept within.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    /// `poll.interval`.
    pub shortest: Duration,
    /// `poll.max_interval` less [`MAX_INTERVAL_SLACK`].
    pub longest: Duration,
}

impl Bounds {
    pub fn new(interval: Duration, max_interval: Duration) -> Self {
        Self {
            shortest: interval,
            longest: max_interval.mul_f64(1.0 - MAX_INTERVAL_SLACK).max(interval),
        }
    }
}

/// The weight √(λ / c) of a meeting, with no estimate counted as `mean` and a floor of
/// [`FLOOR_SHARE`] × `mean` (all alike when nothing has changed anywhere).
fn weight(d: &Demand, mean: f64) -> f64 {
    let rate = d.rate.per_second(mean) + FLOOR_SHARE * mean;
    let rate = if mean > 0.0 { rate } else { 1.0 };
    (rate / d.cost()).sqrt()
}

fn frequency(scale: f64, w: f64, b: Bounds) -> f64 {
    (scale * w).clamp(
        1.0 / b.longest.as_secs_f64(),
        1.0 / b.shortest.as_secs_f64(),
    )
}

/// Shares `budget` requests per second between `demands` (one region's meetings): ample,
/// saturated, or the scale at which the meetings' planned polls spend `budget` ×
/// [`UTILISATION`].
pub fn allocate(demands: &[Demand], budget: Option<f64>, b: Bounds) -> Level {
    let Some(budget) = budget else {
        return Level::Ample;
    };
    let budget = budget * UTILISATION;
    // A meeting not polled yet counts as many pages as the average polled one.
    let polled: Vec<u32> = demands.iter().map(|d| d.pages).filter(|&p| p > 0).collect();
    let typical = if polled.is_empty() {
        1
    } else {
        polled.iter().sum::<u32>().div_ceil(polled.len() as u32)
    };
    let demands: Vec<Demand> = demands
        .iter()
        .map(|d| Demand {
            pages: if d.pages == 0 { typical } else { d.pages },
            ..*d
        })
        .collect();
    let demands = demands.as_slice();
    let (shortest, longest) = (b.shortest.as_secs_f64(), b.longest.as_secs_f64());
    let pages: f64 = demands.iter().map(|d| f64::from(d.pages.max(1))).sum();
    if pages / shortest <= budget {
        return Level::Ample;
    }
    if pages / longest >= budget {
        return Level::Saturated;
    }
    // The region's average: every meeting's changes over every meeting's seconds.
    let (events, seconds) = demands
        .iter()
        .filter(|d| d.rate.known)
        .fold((0.0, 0.0), |(e, s), d| {
            (e + d.rate.events, s + d.rate.seconds)
        });
    let mean = if seconds > 0.0 { events / seconds } else { 0.0 };
    let weights: Vec<f64> = demands.iter().map(|d| weight(d, mean)).collect();
    let spend = |scale: f64| -> f64 {
        demands
            .iter()
            .zip(&weights)
            .map(|(d, &w)| d.spend(1.0 / frequency(scale, w, b)))
            .sum()
    };
    // Below `low` every meeting is at the longest wait, above `high` at the shortest; spend
    // grows with the scale in between, so bisect (on a log scale: weights span decades).
    let (w_min, w_max) = weights
        .iter()
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), &w| {
            (lo.min(w), hi.max(w))
        });
    let mut low = (1.0 / longest / w_max).ln();
    let mut high = (1.0 / shortest / w_min).ln();
    for _ in 0..60 {
        let mid = 0.5 * (low + high);
        if spend(mid.exp()) > budget {
            high = mid;
        } else {
            low = mid;
        }
    }
    Level::Shared {
        scale: low.exp(),
        mean,
    }
}

/// The planned wait of one meeting until its next poll.
pub fn wait(strategy: PollStrategy, level: Level, d: &Demand, b: Bounds) -> Duration {
    match (strategy, level) {
        (PollStrategy::Uniform, _) | (_, Level::Ample) => b.shortest,
        (PollStrategy::ChangeAware, Level::Saturated) => b.longest,
        (PollStrategy::ChangeAware, Level::Shared { scale, mean }) => {
            Duration::from_secs_f64(1.0 / frequency(scale, weight(d, mean), b))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds() -> Bounds {
        Bounds::new(Duration::from_secs(10), Duration::from_secs(120))
    }

    /// A meeting of `pages` pages whose polls every `every` seconds found `events` changes.
    fn demand(pages: u32, events: usize, every: f64) -> Demand {
        let mut rate = ChangeRate::default();
        rate.observe(events, Duration::from_secs_f64(every));
        Demand { pages, rate }
    }

    fn spend(demands: &[Demand], level: Level) -> f64 {
        demands
            .iter()
            .map(|d| d.spend(wait(PollStrategy::ChangeAware, level, d, bounds()).as_secs_f64()))
            .sum()
    }

    #[test]
    fn the_average_weighs_recent_polls_most() {
        let mut r = ChangeRate::default();
        assert_eq!(r.per_second(0.3), 0.3, "no history: the average");
        r.observe(2, Duration::from_secs(10));
        assert_eq!(r.per_second(0.0), 0.2);
        // Little history is pulled toward the average; more of it speaks for itself.
        assert!((r.per_second(0.01) - 2.5 / 60.0).abs() < 1e-9);
        for _ in 0..300 {
            r.observe(1, Duration::from_secs(10));
        }
        assert!((r.per_second(0.01) - 0.1).abs() < 0.01, "{r:?}");
        // An hour of quiet: the old changes are forgotten.
        for _ in 0..360 {
            r.observe(0, Duration::from_secs(10));
        }
        assert!(r.per_second(0.0) < 0.001, "{r:?}");
    }

    #[test]
    fn an_ample_budget_polls_every_meeting_every_interval_whatever_the_strategy() {
        // 20 meetings of 3 pages every 10 s: 6 requests/s, under a budget of 10.
        let demands: Vec<Demand> = (0..20).map(|i| demand(3, i % 4, 10.0)).collect();
        let level = allocate(&demands, Some(10.0), bounds());
        assert_eq!(level, Level::Ample);
        assert_eq!(allocate(&demands, None, bounds()), Level::Ample);
        for d in &demands {
            for strategy in [PollStrategy::Uniform, PollStrategy::ChangeAware] {
                assert_eq!(wait(strategy, level, d, bounds()), bounds().shortest);
            }
        }
    }

    #[test]
    fn a_tight_budget_goes_as_the_square_root_of_change_rate_over_pages() {
        // 250 meetings of 3 pages at 10 requests/s: a sweep takes 75 s, more than 10.
        // Zipf(1) churn: the meeting of rank i changes once every 5·i seconds, seen over a
        // long history.
        let demands: Vec<Demand> = (1..=250)
            .map(|i| Demand {
                pages: 3,
                rate: ChangeRate {
                    events: 2000.0 / f64::from(i),
                    seconds: 10_000.0,
                    known: true,
                },
            })
            .collect();
        let level = allocate(&demands, Some(10.0), bounds());
        let Level::Shared { .. } = level else {
            panic!("{level:?}");
        };
        // The planned spend is the budget (less the slack).
        let spent = spend(&demands, level);
        assert!((spent - 10.0 * UTILISATION).abs() < 0.01, "{spent}");
        let waits: Vec<f64> = demands
            .iter()
            .map(|d| wait(PollStrategy::ChangeAware, level, d, bounds()).as_secs_f64())
            .collect();
        // Inside the bounds, the wait goes as √(rank): 4 × the rank, 2 × the wait.
        let (a, b) = (waits[9], waits[39]);
        assert!(a > 10.0 && b < 108.0, "{a} {b}");
        assert!((b / a - 2.0).abs() < 0.05, "{a} {b}");
        for w in &waits {
            assert!(*w >= 10.0 && *w <= 108.0 + 1e-9, "{w}");
        }
        assert!(waits.windows(2).all(|p| p[0] <= p[1] + 1e-9));
    }

    #[test]
    fn more_pages_mean_fewer_polls_at_the_same_change_rate() {
        let mut demands: Vec<Demand> = (0..100).map(|_| demand(1, 1, 30.0)).collect();
        demands.push(demand(4, 1, 30.0));
        let level = allocate(&demands, Some(5.0), bounds());
        let w = |d: &Demand| wait(PollStrategy::ChangeAware, level, d, bounds());
        let ratio = w(&demands[100]).as_secs_f64() / w(&demands[0]).as_secs_f64();
        assert!((ratio - 2.0).abs() < 0.05, "{ratio}");
    }

    #[test]
    fn no_planned_wait_exceeds_max_interval_less_the_slack() {
        let b = Bounds::new(Duration::from_secs(10), Duration::from_secs(60));
        assert_eq!(b.longest, Duration::from_secs(54));
        // One very busy meeting and many that never change: the quiet ones sit at the cap.
        let mut demands: Vec<Demand> = (0..200).map(|_| demand(1, 0, 60.0)).collect();
        demands.push(demand(1, 50, 10.0));
        let level = allocate(&demands, Some(5.0), b);
        for d in &demands {
            let w = wait(PollStrategy::ChangeAware, level, d, b);
            assert!(w <= b.longest && w >= b.shortest, "{w:?}");
        }
        assert_eq!(
            wait(PollStrategy::ChangeAware, level, &demands[200], b),
            b.shortest
        );
        // A budget that cannot poll everyone once per max_interval: everyone at the cap.
        let level = allocate(&demands, Some(1.0), b);
        assert_eq!(level, Level::Saturated);
        assert_eq!(
            wait(PollStrategy::ChangeAware, level, &demands[200], b),
            b.longest
        );
    }

    #[test]
    fn a_burst_of_changes_brings_the_next_polls_closer() {
        // 300 meetings of 3 pages, each having found one change in its last minute.
        let mut demands: Vec<Demand> = (0..300).map(|_| demand(3, 1, 60.0)).collect();
        let level = allocate(&demands, Some(10.0), bounds());
        let before = wait(PollStrategy::ChangeAware, level, &demands[0], bounds());
        assert!(before > bounds().shortest, "{before:?}");
        // Meeting 0's next poll finds a burst of 20 joins.
        demands[0].rate.observe(20, before);
        let level = allocate(&demands, Some(10.0), bounds());
        let after = wait(PollStrategy::ChangeAware, level, &demands[0], bounds());
        assert!(after < before / 2, "{before:?} then {after:?}");
    }

    #[test]
    fn a_meeting_not_polled_yet_counts_as_many_pages_as_the_others() {
        let mut demands: Vec<Demand> = (0..300).map(|_| demand(3, 0, 60.0)).collect();
        let level = allocate(&demands, Some(10.0), bounds());
        demands.push(Demand {
            pages: 0,
            rate: ChangeRate::default(),
        });
        // One meeting more of 3 pages, not of 1: the others wait a 301st longer.
        let with_new = allocate(&demands, Some(10.0), bounds());
        let w = |level| wait(PollStrategy::ChangeAware, level, &demands[0], bounds());
        let ratio = w(with_new).as_secs_f64() / w(level).as_secs_f64();
        assert!((ratio - 301.0 / 300.0).abs() < 1e-3, "{ratio}");
    }

    #[test]
    fn with_no_change_anywhere_the_budget_is_shared_evenly() {
        let demands: Vec<Demand> = (0..300).map(|_| demand(3, 0, 60.0)).collect();
        let level = allocate(&demands, Some(10.0), bounds());
        let w = wait(PollStrategy::ChangeAware, level, &demands[0], bounds());
        // 900 pages at 9.7 requests/s: about 93 s each.
        assert!(
            (w.as_secs_f64() - 900.0 / (10.0 * UTILISATION)).abs() < 0.5,
            "{w:?}"
        );
    }
}
