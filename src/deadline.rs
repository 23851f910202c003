//! Adding a wait to a clock reading without ever panicking: `Instant + Duration` panics when
//! the sum does not fit, and a wait can come from the network (`Retry-After`) or from a
//! computation that multiplies. Every addition of a wait to an `Instant` in the crate goes
//! through [`Later::later_by`].
//!
//! A leaf: it imports nothing from the crate. It never clamps a wait to a policy (the callers
//! do that with the configured caps); it only keeps the arithmetic total.

use std::time::Duration;

/// How far "never" is: a reading this far ahead is as good as never for a daemon, and still
/// fits every platform's clock (tokio uses the same horizon for its own far future).
pub const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// Total addition of a wait to a clock reading.
pub trait Later: Sized + Copy {
    /// `self + wait`, or [`FAR_FUTURE`] ahead when that does not fit (or `self` itself when
    /// even that does not).
    fn later_by(self, wait: Duration) -> Self;
}

impl Later for std::time::Instant {
    fn later_by(self, wait: Duration) -> Self {
        self.checked_add(wait)
            .or_else(|| self.checked_add(FAR_FUTURE))
            .unwrap_or(self)
    }
}

impl Later for tokio::time::Instant {
    fn later_by(self, wait: Duration) -> Self {
        self.checked_add(wait)
            .or_else(|| self.checked_add(FAR_FUTURE))
            .unwrap_or(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_too_long_for_the_clock_lands_far_ahead_instead_of_panicking() {
        let now = std::time::Instant::now();
        assert_eq!(
            now.later_by(Duration::from_secs(3)),
            now + Duration::from_secs(3)
        );
        assert_eq!(now.later_by(Duration::MAX), now + FAR_FUTURE);
        assert_eq!(
            now.later_by(Duration::from_secs(u64::MAX)),
            now + FAR_FUTURE
        );
        let now = tokio::time::Instant::now();
        assert_eq!(now.later_by(Duration::MAX), now + FAR_FUTURE);
    }
}
