//! The simulator's per-operation quota: a token bucket that refills at `rate` tokens per
//! second up to `burst` tokens, the shape of the real service's "10 requests/s, burst 20".
//!
//! It takes the current instant as an argument, so tests drive it without sleeping. It must
//! never block: a request either gets a token now or is throttled.

use tokio::time::Instant;

/// One operation's request budget.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket. `rate` may be `f64::INFINITY` (never throttles); callers validate that
    /// it is not negative or NaN and that `burst >= 1`.
    pub(crate) fn new(rate: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst);
        Self {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub(crate) fn try_take(&mut self, now: Instant) -> bool {
        if self.rate.is_infinite() {
            return true;
        }
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Changes the quota live. Tokens earned at the old rate are kept, up to the new burst.
    pub(crate) fn set(&mut self, rate: f64, burst: u32, now: Instant) {
        if !self.rate.is_infinite() {
            self.refill(now);
        } else {
            self.last = now;
        }
        self.rate = rate;
        self.burst = f64::from(burst);
        if self.tokens > self.burst {
            self.tokens = self.burst;
        }
    }

    fn refill(&mut self, now: Instant) {
        // An instant earlier than `last` (callers racing for the lock) earns nothing.
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if now > self.last {
            self.last = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_full_bucket_allows_exactly_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 20, t0);
        assert_eq!((0..25).filter(|_| b.try_take(t0)).count(), 20);
    }

    #[test]
    fn tokens_come_back_at_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 20, t0);
        while b.try_take(t0) {}
        assert!(
            !b.try_take(t0 + Duration::from_millis(50)),
            "half a token is not a token"
        );
        assert!(b.try_take(t0 + Duration::from_millis(100)));
        assert!(!b.try_take(t0 + Duration::from_millis(100)));
        let t1 = t0 + Duration::from_millis(600);
        assert_eq!((0..10).filter(|_| b.try_take(t1)).count(), 5);
    }

    #[test]
    fn refill_never_exceeds_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 3, t0);
        let later = t0 + Duration::from_secs(3600);
        assert_eq!((0..10).filter(|_| b.try_take(later)).count(), 3);
    }

    #[test]
    fn an_earlier_instant_earns_nothing() {
        let t0 = Instant::now() + Duration::from_secs(1);
        let mut b = TokenBucket::new(1.0, 1, t0);
        assert!(b.try_take(t0));
        assert!(!b.try_take(t0 - Duration::from_secs(1)));
        assert!(!b.try_take(t0 + Duration::from_millis(500)));
        assert!(b.try_take(t0 + Duration::from_millis(1000)));
    }

    #[test]
    fn set_changes_rate_and_clamps_to_the_new_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 20, t0);
        b.set(1.0, 2, t0);
        assert_eq!((0..5).filter(|_| b.try_take(t0)).count(), 2);
        assert!(!b.try_take(t0 + Duration::from_millis(500)));
        assert!(b.try_take(t0 + Duration::from_millis(1000)));
    }

    #[test]
    fn an_infinite_rate_never_throttles() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(f64::INFINITY, 1, t0);
        assert!((0..1000).all(|_| b.try_take(t0)));
        b.set(1.0, 1, t0);
        assert!(b.try_take(t0));
        assert!(!b.try_take(t0));
    }
}
