//! The wall clock every recorded timestamp is read from ([`crate::domain::now`]).
//!
//! Alone, a daemon reads its host's clock. In cluster mode (`cluster.enabled`) several
//! replicas on several hosts write timestamps that the others compare against: the
//! `last_polled_at` one replica records is the `previous_poll_at` of the next poll, by
//! whichever replica holds the meeting then, and a session's `joined` and `left` may come from
//! two replicas. Hosts' clocks differ, so there every replica reads the database's clock
//! instead: at each heartbeat `crate::cluster` measures the database's `clock_timestamp()`
//! against this clock (the midpoint of the round trip) and sets the difference as the
//! [correction](set_correction), which [`now`] adds to every reading. The correction is
//! process-wide because both clocks are: one host clock, one database server.
//!
//! `ROSTER_SYNC_CLOCK_OFFSET` (test only, see ARCHITECTURE.md "Test hooks") skews this
//! process's reading of its host clock by a signed duration (`-10m`, `+90s`), so a test can run
//! replicas whose clocks disagree. It is read once, when the daemon starts.
//!
//! A leaf: it imports nothing from the crate. It never sleeps and never does I/O beyond reading
//! the variable once.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, TimeDelta, Utc};

/// The environment variable that skews this process's host clock (tests only).
pub const OFFSET_ENV: &str = "ROSTER_SYNC_CLOCK_OFFSET";

static SKEW: OnceLock<TimeDelta> = OnceLock::new();

/// Microseconds added to the host clock to read the shared clock (0 outside cluster mode).
static CORRECTION_MICROS: AtomicI64 = AtomicI64::new(0);

/// The host's clock as this process reads it: the system time plus the test skew, if armed.
pub fn local() -> DateTime<Utc> {
    let now = Utc::now();
    match SKEW.get() {
        Some(skew) => now.checked_add_signed(*skew).unwrap_or(now),
        None => now,
    }
}

/// The clock timestamps are recorded by: [`local`] plus the correction (the database's clock
/// in cluster mode, the host's otherwise).
pub fn now() -> DateTime<Utc> {
    let local = local();
    let correction = TimeDelta::microseconds(CORRECTION_MICROS.load(Ordering::Relaxed));
    local.checked_add_signed(correction).unwrap_or(local)
}

/// Makes [`now`] read `local() + correction`. Set by the cluster heartbeat.
pub fn set_correction(correction: TimeDelta) {
    let micros = correction.num_microseconds().unwrap_or(0);
    CORRECTION_MICROS.store(micros, Ordering::Relaxed);
}

/// The correction [`now`] applies.
pub fn correction() -> TimeDelta {
    TimeDelta::microseconds(CORRECTION_MICROS.load(Ordering::Relaxed))
}

/// Reads [`OFFSET_ENV`] once and arms the skew; later calls return what the first one found.
///
/// # Errors
/// The variable is set to something that is not a signed duration (a typo must not leave a
/// clock test quietly testing nothing).
pub fn arm_from_env() -> anyhow::Result<Option<TimeDelta>> {
    if let Some(skew) = SKEW.get() {
        return Ok(Some(*skew).filter(|s| !s.is_zero()));
    }
    let skew = match std::env::var(OFFSET_ENV) {
        Err(_) => return Ok(None),
        Ok(v) if v.is_empty() => return Ok(None),
        Ok(v) => parse_offset(&v).ok_or_else(|| {
            anyhow::anyhow!(
                "{OFFSET_ENV}={v:?} is not a signed duration (for example -10m or +90s)"
            )
        })?,
    };
    Ok(Some(*SKEW.get_or_init(|| skew)).filter(|s| !s.is_zero()))
}

/// `-10m`, `+90s`, `1h 5m`: an optional sign, then a humantime duration.
fn parse_offset(text: &str) -> Option<TimeDelta> {
    let text = text.trim();
    let (negative, magnitude) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let magnitude = TimeDelta::from_std(humantime::parse_duration(magnitude.trim()).ok()?).ok()?;
    Some(if negative { -magnitude } else { magnitude })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_signed_durations() {
        assert_eq!(parse_offset("-10m"), Some(TimeDelta::minutes(-10)));
        assert_eq!(parse_offset("+90s"), Some(TimeDelta::seconds(90)));
        assert_eq!(parse_offset("1h 5m"), Some(TimeDelta::minutes(65)));
        assert_eq!(parse_offset("ten minutes"), None);
        assert_eq!(parse_offset("--5m"), None);
    }
}
