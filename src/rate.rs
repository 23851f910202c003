//! The request budget shared by every poll of one account and control region.
//!
//! A token bucket (`rate` tokens per second, `burst` capacity) that hands out reservations in
//! arrival order: a caller that finds the bucket empty is given the exact instant its token will
//! exist and sleeps until then, so waiters never stampede and the long-run rate is exact.
//!
//! The rate adapts (AIMD) so that when the real quota is lower than configured — other tools
//! share the account — throttles stay rare:
//! - on a `ThrottlingException` the rate is multiplied by [`DECREASE_FACTOR`] (at most once per
//!   [`DECREASE_COOLDOWN`], because one overload shows up as several 429s at once) and the bucket
//!   is emptied so no burst follows;
//! - every success adds [`INCREASE_PER_SUCCESS`] × ceiling, so after a decrease the rate climbs
//!   back to the ceiling in about `1 / INCREASE_PER_SUCCESS` successful requests;
//! - it never exceeds the configured ceiling and never drops below [`MIN_RATE_FRACTION`] of it.
//!
//! It must never sleep while holding its lock, and never let the rate exceed the ceiling.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Multiplicative decrease applied on a throttle.
pub const DECREASE_FACTOR: f64 = 0.8;
/// Several 429s inside this window count as one overload signal.
pub const DECREASE_COOLDOWN: Duration = Duration::from_secs(1);
/// Additive increase per successful request, as a fraction of the ceiling.
pub const INCREASE_PER_SUCCESS: f64 = 0.002;
/// The floor, as a fraction of the ceiling, so a storm never stops polling altogether.
pub const MIN_RATE_FRACTION: f64 = 0.02;

/// A token bucket whose rate adapts between a floor and the configured ceiling.
#[derive(Debug)]
pub struct RateLimiter {
    ceiling: f64,
    burst: f64,
    adaptive: bool,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    rate: f64,
    /// May go negative: that many tokens are promised to callers already sleeping.
    tokens: f64,
    refilled_at: Instant,
    last_decrease: Option<Instant>,
}

impl RateLimiter {
    /// `rate` requests per second with bursts of up to `burst`; the bucket starts full.
    pub fn new(rate: f64, burst: u32, adaptive: bool) -> Self {
        let rate = rate.max(f64::MIN_POSITIVE);
        let burst = f64::from(burst.max(1));
        Self {
            ceiling: rate,
            burst,
            adaptive,
            state: Mutex::new(State {
                rate,
                tokens: burst,
                refilled_at: Instant::now(),
                last_decrease: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain numbers behind; keep using them.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits until one request may be sent.
    pub async fn acquire(&self) {
        let wait = self.reserve(Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Takes one token now and returns how long the caller must wait before using it.
    fn reserve(&self, now: Instant) -> Duration {
        let mut s = self.lock();
        refill(&mut s, now, self.burst);
        s.tokens -= 1.0;
        if s.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-s.tokens / s.rate)
        }
    }

    /// Reports a `ThrottlingException`: slow down.
    pub fn on_throttle(&self) {
        if !self.adaptive {
            return;
        }
        let now = Instant::now();
        let mut s = self.lock();
        if s.last_decrease
            .is_some_and(|t| now.duration_since(t) < DECREASE_COOLDOWN)
        {
            return;
        }
        refill(&mut s, now, self.burst);
        s.rate = (s.rate * DECREASE_FACTOR).max(self.ceiling * MIN_RATE_FRACTION);
        s.tokens = s.tokens.min(0.0);
        s.last_decrease = Some(now);
    }

    /// Reports a request the service accepted: speed up again, gently.
    pub fn on_success(&self) {
        if !self.adaptive {
            return;
        }
        let now = Instant::now();
        let mut s = self.lock();
        if s.rate < self.ceiling {
            refill(&mut s, now, self.burst);
            s.rate = (s.rate + self.ceiling * INCREASE_PER_SUCCESS).min(self.ceiling);
        }
    }

    /// The current rate in requests per second.
    pub fn rate(&self) -> f64 {
        self.lock().rate
    }

    /// The configured ceiling.
    pub fn ceiling(&self) -> f64 {
        self.ceiling
    }
}

fn refill(s: &mut State, now: Instant, burst: f64) {
    let elapsed = now.saturating_duration_since(s.refilled_at).as_secs_f64();
    s.tokens = (s.tokens + elapsed * s.rate).min(burst);
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
        for _ in 0..10_000 {
            l.on_success();
        }
        assert_eq!(l.rate(), 10.0, "never above the ceiling");
    }

    #[tokio::test(start_paused = true)]
    async fn rate_never_falls_below_the_floor() {
        let l = RateLimiter::new(10.0, 20, true);
        for _ in 0..100 {
            l.on_throttle();
            tokio::time::advance(DECREASE_COOLDOWN).await;
        }
        assert!((l.rate() - 10.0 * MIN_RATE_FRACTION).abs() < 1e-9);
    }

    #[tokio::test(start_paused = true)]
    async fn fixed_limiter_ignores_feedback() {
        let l = RateLimiter::new(5.0, 1, false);
        l.on_throttle();
        assert_eq!(l.rate(), 5.0);
    }
}
