//! The request budget shared by every poll of one account and control region.
//!
//! A token bucket (`rate` tokens per second, `burst` capacity) that hands out reservations in
//! arrival order: a caller that finds the bucket empty is given the exact instant its token will
//! exist and sleeps until then, so waiters never stampede and the long-run rate is exact.
//!
//! The rate adapts so that when the real quota is lower than configured — other tools share the
//! account — throttles stay rare. It is AIMD (additive increase, multiplicative decrease, the
//! rule TCP uses to share a link) with a memory of where the last throttle came:
//!
//! - **Decrease.** On a `ThrottlingException` the rate is multiplied by [`DECREASE_FACTOR`],
//!   at most once per [`DECREASE_COOLDOWN`] (one overload answers several requests in flight
//!   with 429 at once; counting each would collapse the rate). The rate it had is remembered as
//!   the *knee*. The bucket is emptied and every reservation already handed out is re-made at
//!   the new rate, so the callers queued behind the throttle do not keep arriving at the old
//!   pace (without this, a queue of waiters sends at the rate that was just refused for as long
//!   as the queue lasts, and each of them draws another 429).
//! - **Increase.** Each success adds `ceiling × slope / rate`: one success at rate `r` stands
//!   for `1/r` s of sending, so while polls keep the budget busy the rate climbs linearly in
//!   time, by `ceiling × slope` per second, whatever the rate. Below [`KNEE_MARGIN`] × knee the
//!   slope is [`RECOVERY_PER_SECOND`] (get back quickly to where throttling is not expected);
//!   above it, [`PROBE_PER_SECOND`] (creep up to where the quota is, slowly, so the overshoot
//!   is small when it is found). Once the rate passes the knee without a throttle the quota has
//!   grown (the other tool stopped): the knee is forgotten and recovery is fast again.
//! - **Bounds.** Never above the ceiling, never below [`MIN_RATE_FRACTION`] of it.
//! - **Share.** In cluster mode the account's budget is split between the replicas polling
//!   the region: [`RateLimiter::set_share`] scales the ceiling and the burst to this replica's
//!   fraction of the configured ones, and the current rate with them, so a decrease after a
//!   throttle applies to the share.
//!
//! Why these numbers. The service's own bucket (burst 20) hides an overshoot until the burst
//! is spent, so the rate at the first 429 is above the quota by about `sqrt(2 × burst × slope)`
//! requests/s. A slow probe keeps that overshoot small (0.02 rps/s at the default ceiling of
//! 10: about 0.6 rps over with 10 tokens saved), and a decrease by 0.8 then lands clearly
//! below the quota, so one throttle episode costs one or two 429s. Recovery at 0.2 rps/s
//! brings a rate from 8 back to 9 within seconds, so a lone 429 (a burst of another tool) costs
//! little throughput. The constants were chosen with a model of both buckets (client and
//! service) and checked with `roster-bench` runs whose quota is below the configured rate
//! (docs/benchmarks.md has the commands and the measured numbers).
//!
//! It must never sleep while holding its lock, and never let the rate exceed the ceiling.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Multiplicative decrease applied on a throttle.
pub const DECREASE_FACTOR: f64 = 0.8;
/// Several 429s inside this window count as one overload signal.
pub const DECREASE_COOLDOWN: Duration = Duration::from_secs(1);
/// Increase per second of busy sending, as a fraction of the ceiling, while the rate is below
/// [`KNEE_MARGIN`] × the rate of the last throttle (or there was none).
pub const RECOVERY_PER_SECOND: f64 = 0.02;
/// Increase per second of busy sending, as a fraction of the ceiling, near the knee: the probe
/// for where the quota is.
pub const PROBE_PER_SECOND: f64 = 0.002;
/// Fast recovery stops at this fraction of the rate of the last throttle.
pub const KNEE_MARGIN: f64 = 0.9;
/// The floor, as a fraction of the ceiling, so a storm never stops polling altogether.
pub const MIN_RATE_FRACTION: f64 = 0.02;

/// A token bucket whose rate adapts between a floor and the configured ceiling.
#[derive(Debug)]
pub struct RateLimiter {
    /// The configured rate and burst: the whole account's budget for the region.
    configured_rate: f64,
    configured_burst: f64,
    adaptive: bool,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// `configured_rate × share`.
    ceiling: f64,
    /// `configured_burst × share`, at least 1.
    burst: f64,
    rate: f64,
    /// May go negative: that many tokens are promised to callers already sleeping.
    tokens: f64,
    refilled_at: Instant,
    last_decrease: Option<Instant>,
    /// The rate at the last throttle, until the rate passes it again.
    knee: Option<f64>,
    /// Bumped by every decrease: a reservation made in an older epoch was promised at a rate
    /// that the service has since refused, and is made again.
    epoch: u64,
    decreases: u64,
}

impl RateLimiter {
    /// `rate` requests per second with bursts of up to `burst`; the bucket starts full.
    /// With `adaptive`, the rate moves between a floor and `rate` on the feedback of
    /// [`RateLimiter::on_throttle`] and [`RateLimiter::on_success`]; without, it is fixed.
    pub fn new(rate: f64, burst: u32, adaptive: bool) -> Self {
        let rate = rate.max(f64::MIN_POSITIVE);
        let burst = f64::from(burst.max(1));
        Self {
            configured_rate: rate,
            configured_burst: burst,
            adaptive,
            state: Mutex::new(State {
                ceiling: rate,
                burst,
                rate,
                tokens: burst,
                refilled_at: Instant::now(),
                last_decrease: None,
                knee: None,
                epoch: 0,
                decreases: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain numbers behind; keep using them.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until one request may be sent.
    ///
    /// If the rate decreased while the caller slept, its slot was given at a pace the service
    /// has refused: it takes a new one at the new rate.
    pub async fn acquire(&self) {
        loop {
            let (wait, epoch) = self.reserve(Instant::now());
            if wait.is_zero() {
                return;
            }
            tokio::time::sleep(wait).await;
            if self.lock().epoch == epoch {
                return;
            }
        }
    }

    /// Takes one token now and returns how long the caller must wait before using it, and the
    /// epoch the promise belongs to.
    fn reserve(&self, now: Instant) -> (Duration, u64) {
        let mut s = self.lock();
        refill(&mut s, now);
        s.tokens -= 1.0;
        let wait = if s.tokens >= 0.0 {
            Duration::ZERO
        } else {
            // Finite and positive here; saturating all the same, so no rate, however small,
            // can make the conversion panic (tokio sleeps a saturated wait as "forever").
            Duration::try_from_secs_f64(-s.tokens / s.rate).unwrap_or(Duration::MAX)
        };
        (wait, s.epoch)
    }

    /// Reports a `ThrottlingException`: slow down. Returns whether the rate decreased (not
    /// when fixed, nor again within [`DECREASE_COOLDOWN`]).
    pub fn on_throttle(&self) -> bool {
        if !self.adaptive {
            return false;
        }
        let now = Instant::now();
        let mut s = self.lock();
        if s.last_decrease
            .is_some_and(|t| now.duration_since(t) < DECREASE_COOLDOWN)
        {
            return false;
        }
        refill(&mut s, now);
        s.knee = Some(s.rate);
        s.rate = (s.rate * DECREASE_FACTOR).max(s.ceiling * MIN_RATE_FRACTION);
        // No burst after a refusal, and the promises made at the refused pace are void: their
        // holders re-reserve when they wake (see `acquire`).
        s.tokens = 0.0;
        s.epoch += 1;
        s.decreases += 1;
        s.last_decrease = Some(now);
        true
    }

    /// Reports a request the service accepted: speed up again, fast up to near the last
    /// throttle's rate, slowly beyond.
    pub fn on_success(&self) {
        if !self.adaptive {
            return;
        }
        let mut s = self.lock();
        if s.rate >= s.ceiling {
            return;
        }
        let now = Instant::now();
        refill(&mut s, now);
        if s.knee.is_some_and(|k| s.rate > k) {
            s.knee = None;
        }
        let slope = match s.knee {
            Some(k) if s.rate >= k * KNEE_MARGIN => PROBE_PER_SECOND,
            _ => RECOVERY_PER_SECOND,
        };
        // At most doubling per success, so a rate near the floor does not leap to the ceiling
        // on one answer.
        let step = (s.ceiling * slope / s.rate).min(s.rate);
        s.rate = (s.rate + step).min(s.ceiling);
    }

    /// Makes this budget `share` (0..=1) of the configured one: the ceiling and burst become
    /// that fraction of the configured rate and burst, and the current rate (and the knee) are
    /// scaled by the change, so an adaptive decrease made under the old share still holds.
    /// Tokens beyond the new burst are dropped.
    pub fn set_share(&self, share: f64) {
        let share = if share.is_finite() {
            share.clamp(f64::MIN_POSITIVE, 1.0)
        } else {
            1.0
        };
        let mut s = self.lock();
        refill(&mut s, Instant::now());
        let ceiling = self.configured_rate * share;
        let factor = ceiling / s.ceiling;
        if factor == 1.0 {
            return;
        }
        s.ceiling = ceiling;
        s.burst = (self.configured_burst * share).max(1.0);
        s.rate = (s.rate * factor).clamp(ceiling * MIN_RATE_FRACTION, ceiling);
        s.knee = s.knee.map(|k| k * factor);
        s.tokens = s.tokens.min(s.burst);
        if factor < 1.0 {
            // Promises made at the old pace are void, as after a throttle.
            s.epoch += 1;
        }
    }

    /// The current rate in requests per second.
    pub fn rate(&self) -> f64 {
        self.lock().rate
    }

    /// The ceiling: the configured rate times this replica's share.
    pub fn ceiling(&self) -> f64 {
        self.lock().ceiling
    }

    /// How many times the rate was decreased since start (throttle episodes, not 429s).
    pub fn decreases(&self) -> u64 {
        self.lock().decreases
    }
}

fn refill(s: &mut State, now: Instant) {
    let elapsed = now.saturating_duration_since(s.refilled_at).as_secs_f64();
    s.tokens = (s.tokens + elapsed * s.rate).min(s.burst);
    s.refilled_at = now;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn burst_then_steady_rate() {
        let l = RateLimiter::new(10.0, 20, false);
        let start = Instant::now();
        for _ in 0..20 {
            l.acquire().await;
        }
        assert_eq!(Instant::now(), start, "the burst is free");
        for _ in 0..50 {
            l.acquire().await;
        }
        let took = Instant::now() - start;
        assert!((took.as_secs_f64() - 5.0).abs() < 0.01, "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn throttle_decreases_once_per_cooldown_and_success_recovers() {
        let l = RateLimiter::new(10.0, 20, true);
        l.on_throttle();
        l.on_throttle();
        assert!((l.rate() - 8.0).abs() < 1e-9);
        tokio::time::advance(DECREASE_COOLDOWN).await;
        l.on_throttle();
        assert!((l.rate() - 6.4).abs() < 1e-9);
        assert_eq!(l.decreases(), 2);
        for _ in 0..10_000 {
            l.on_success();
        }
        assert_eq!(l.rate(), 10.0, "never above the ceiling");
    }

    #[tokio::test(start_paused = true)]
    async fn recovery_is_fast_below_the_knee_and_slow_near_it() {
        let l = RateLimiter::new(10.0, 20, true);
        l.on_throttle();
        // 8 rps now, knee 10: fast recovery (0.2 rps per second of sending) up to 9.
        let mut successes = 0;
        while l.rate() < 9.0 {
            l.on_success();
            successes += 1;
        }
        // 1 rps at 0.2 rps/s is 5 s of sending at about 8.5 rps: about 43 answers.
        assert!((35..=50).contains(&successes), "{successes}");
        // From 9 to 10 at 0.02 rps/s is 50 s at about 9.5 rps: hundreds of answers.
        let mut probing = 0;
        while l.rate() < 10.0 {
            l.on_success();
            probing += 1;
        }
        assert!(probing > 400, "{probing}");
    }

    #[tokio::test(start_paused = true)]
    async fn rate_never_falls_below_the_floor() {
        let l = RateLimiter::new(10.0, 20, true);
        for _ in 0..100 {
            l.on_throttle();
            tokio::time::advance(DECREASE_COOLDOWN).await;
        }
        assert!((l.rate() - 10.0 * MIN_RATE_FRACTION).abs() < 1e-9);
        l.on_success();
        assert!(
            l.rate() <= 2.0 * 10.0 * MIN_RATE_FRACTION + 1e-9,
            "at most doubling"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_share_scales_the_ceiling_and_decreases_apply_to_it() {
        let l = RateLimiter::new(9.0, 21, true);
        l.set_share(1.0 / 3.0);
        assert!((l.ceiling() - 3.0).abs() < 1e-9);
        assert!((l.rate() - 3.0).abs() < 1e-9);
        l.on_throttle();
        assert!(
            (l.rate() - 2.4).abs() < 1e-9,
            "the decrease applies to the share"
        );
        for _ in 0..10_000 {
            l.on_success();
        }
        assert!((l.rate() - 3.0).abs() < 1e-9, "never above the share");
        // A replica left: the share grows, and the rate with it.
        l.set_share(0.5);
        assert!((l.ceiling() - 4.5).abs() < 1e-9);
        assert!((l.rate() - 4.5).abs() < 1e-9);
        // The burst shrank with the share: 10 (of 21 × 0.5) are free, the next waits.
        tokio::time::advance(Duration::from_secs(10)).await;
        let start = Instant::now();
        for _ in 0..10 {
            l.acquire().await;
        }
        assert_eq!(Instant::now(), start);
        l.acquire().await;
        assert!(Instant::now() > start);
    }

    #[tokio::test(start_paused = true)]
    async fn fixed_limiter_ignores_feedback() {
        let l = RateLimiter::new(5.0, 1, false);
        l.on_throttle();
        assert_eq!(l.rate(), 5.0);
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_queued_before_a_throttle_are_respaced_at_the_new_rate() {
        let l = std::sync::Arc::new(RateLimiter::new(10.0, 1, true));
        l.acquire().await;
        let start = Instant::now();
        // Ten waiters reserve slots 0.1 s apart (1.0 s for all of them at 10 rps).
        let mut waiters = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let l = std::sync::Arc::clone(&l);
            waiters.spawn(async move {
                l.acquire().await;
                Instant::now()
            });
        }
        tokio::task::yield_now().await;
        l.on_throttle();
        let mut done = Vec::new();
        while let Some(t) = waiters.join_next().await {
            done.push(t.unwrap());
        }
        let last = done.into_iter().max().unwrap() - start;
        // At 8 rps the ten take 1.25 s, not the 1.0 s promised at 10 rps.
        assert!(last.as_secs_f64() >= 1.2, "{last:?}");
    }
}
