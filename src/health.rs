//! What `/healthz` and `/readyz` report: facts the daemon's parts record as they happen, read
//! by the operations endpoint.
//!
//! - **Live** (`/healthz`, and systemd's watchdog pings): the scheduler loop has ticked within
//!   `stall_after`, or the daemon is still starting: waiting for its database, or for its
//!   migrations (applied by it, or by another role under `run --no-migrate`); waiting is not a
//!   stall. Or it is stopping. Once running, a loop that waits for a database that went away
//!   keeps ticking (each attempt is bounded by the pool's acquire timeout), while a loop stuck
//!   on a call that hangs stops ticking: liveness fails so the supervisor restarts the process.
//! - **Ready** (`/readyz`): the database answered within [`DB_FRESH`], migrations are applied,
//!   the meeting list is loaded, no region's credentials are refused, and the writer permit is
//!   held (a daemon that lost its writer lock answers 503 with the reason until it has it back).
//!
//! It only records and answers; it never acts on what it sees.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::permit::WriterPermit;

/// How recently the database must have answered for the daemon to be ready.
pub const DB_FRESH: Duration = Duration::from_secs(15);

/// Shared, cheap to clone; every method is lock-free.
#[derive(Clone, Debug)]
pub struct Health(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    epoch: Instant,
    stall_after: Duration,
    /// Milliseconds since `epoch` + 1 of the last loop tick (0: never).
    ticked_at: AtomicU64,
    /// Milliseconds since `epoch` + 1 of the last database answer (0: never).
    db_answered_at: AtomicU64,
    waiting_for_db: AtomicBool,
    migrated: AtomicBool,
    meetings_loaded: AtomicBool,
    regions_down: AtomicUsize,
    stopping: AtomicBool,
    /// The store's writer permit, once the daemon took its lock: not ready while revoked.
    writer: OnceLock<WriterPermit>,
}

impl Health {
    /// `stall_after` is `http.stall_after`: how long the loop may go without ticking.
    pub fn new(stall_after: Duration) -> Self {
        Self(Arc::new(Inner {
            epoch: Instant::now(),
            stall_after,
            ticked_at: AtomicU64::new(0),
            db_answered_at: AtomicU64::new(0),
            waiting_for_db: AtomicBool::new(false),
            migrated: AtomicBool::new(false),
            meetings_loaded: AtomicBool::new(false),
            regions_down: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            writer: OnceLock::new(),
        }))
    }

    fn stamp(&self) -> u64 {
        u64::try_from(self.0.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    fn age(&self, stamp: &AtomicU64) -> Option<Duration> {
        match stamp.load(Ordering::Relaxed) {
            0 => None,
            at => Some(Duration::from_millis(self.stamp().saturating_sub(at))),
        }
    }

    /// The scheduler loop went round once.
    pub fn ticked(&self) {
        self.0.ticked_at.store(self.stamp(), Ordering::Relaxed);
    }

    /// A database call succeeded.
    pub fn db_answered(&self) {
        self.0.db_answered_at.store(self.stamp(), Ordering::Relaxed);
        self.0.waiting_for_db.store(false, Ordering::Relaxed);
    }

    /// The daemon is waiting for its database (at start or after it went away).
    pub fn waiting_for_db(&self) {
        self.0.waiting_for_db.store(true, Ordering::Relaxed);
    }

    pub fn set_migrated(&self) {
        self.0.migrated.store(true, Ordering::Relaxed);
    }

    pub fn set_meetings_loaded(&self) {
        self.0.meetings_loaded.store(true, Ordering::Relaxed);
    }

    pub fn set_regions_down(&self, n: usize) {
        self.0.regions_down.store(n, Ordering::Relaxed);
    }

    /// Reports `permit` on `/readyz`: not ready, with its reason, while it is revoked (the
    /// writer lock was lost). Set once; later calls are ignored.
    pub fn watch_writer(&self, permit: WriterPermit) {
        let _ = self.0.writer.set(permit);
    }

    /// Shutdown began: not ready any more, still alive.
    pub fn set_stopping(&self) {
        self.0.stopping.store(true, Ordering::Relaxed);
    }

    /// How long ago the scheduler loop last ticked; `None` before its first tick.
    pub fn since_tick(&self) -> Option<Duration> {
        self.age(&self.0.ticked_at)
    }

    /// The database answered within [`DB_FRESH`] and is not being waited for.
    pub fn db_up(&self) -> bool {
        !self.0.waiting_for_db.load(Ordering::Relaxed)
            && self
                .age(&self.0.db_answered_at)
                .is_some_and(|a| a <= DB_FRESH)
    }

    /// `Ok` while alive; otherwise why not.
    pub fn live(&self) -> Result<(), String> {
        let since = self.age(&self.0.ticked_at);
        let starting = since.is_none()
            && (self.0.waiting_for_db.load(Ordering::Relaxed)
                || !self.0.migrated.load(Ordering::Relaxed));
        if starting || self.0.stopping.load(Ordering::Relaxed) {
            return Ok(());
        }
        let stall_after = self.0.stall_after;
        // Before the first tick, the clock runs from the end of the wait for the database.
        let since = since
            .or_else(|| self.age(&self.0.db_answered_at))
            .unwrap_or_else(|| self.0.epoch.elapsed());
        if since > stall_after {
            return Err(format!(
                "the scheduler loop has not ticked for {}s (http.stall_after is {}s)",
                since.as_secs(),
                stall_after.as_secs()
            ));
        }
        Ok(())
    }

    /// `Ok` when the daemon can do its job; otherwise every reason it cannot.
    pub fn ready(&self) -> Result<(), Vec<String>> {
        let mut not = Vec::new();
        if self.0.stopping.load(Ordering::Relaxed) {
            not.push("shutting down".to_owned());
        }
        if self.0.waiting_for_db.load(Ordering::Relaxed) {
            not.push("waiting for the database".to_owned());
        } else {
            match self.age(&self.0.db_answered_at) {
                None => not.push("the database has not answered yet".to_owned()),
                Some(age) if age > DB_FRESH => {
                    not.push(format!("the database last answered {}s ago", age.as_secs()))
                }
                Some(_) => {}
            }
        }
        if !self.0.migrated.load(Ordering::Relaxed) {
            not.push("migrations are not applied yet".to_owned());
        }
        if !self.0.meetings_loaded.load(Ordering::Relaxed) {
            not.push("the meeting list is not loaded yet".to_owned());
        }
        if let Some(why) = self.0.writer.get().and_then(WriterPermit::why_not) {
            not.push(why);
        }
        let down = self.0.regions_down.load(Ordering::Relaxed);
        if down > 0 {
            not.push(format!(
                "{down} region(s) refuse the credentials (see roster_sync_region_up)"
            ));
        }
        if not.is_empty() { Ok(()) } else { Err(not) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ready_needs_every_condition_and_a_recent_database_answer() {
        let h = Health::new(Duration::from_secs(60));
        assert_eq!(h.ready().unwrap_err().len(), 3);
        h.db_answered();
        h.set_migrated();
        h.set_meetings_loaded();
        assert!(h.ready().is_ok());
        h.set_regions_down(1);
        assert!(h.ready().is_err());
        h.set_regions_down(0);
        tokio::time::advance(DB_FRESH + Duration::from_secs(1)).await;
        assert!(h.ready().is_err(), "a silent database is not ready");
        h.waiting_for_db();
        assert!(h.ready().is_err());
    }

    #[test]
    fn a_revoked_writer_permit_is_not_ready_and_names_the_reason() {
        let h = Health::new(Duration::from_secs(60));
        h.db_answered();
        h.set_migrated();
        h.set_meetings_loaded();
        let grantor = crate::permit::PermitGrantor::new();
        h.watch_writer(grantor.permit());
        assert!(h.ready().is_ok());
        grantor.revoke("the writer lock was lost".into());
        assert_eq!(h.ready().unwrap_err(), ["the writer lock was lost"]);
        grantor.grant();
        assert!(h.ready().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_the_database_at_start_is_not_a_stall() {
        let h = Health::new(Duration::from_secs(60));
        h.waiting_for_db();
        tokio::time::advance(Duration::from_secs(600)).await;
        assert!(h.live().is_ok(), "waiting for the database is not a stall");
        h.db_answered();
        tokio::time::advance(Duration::from_secs(600)).await;
        assert!(
            h.live().is_ok(),
            "waiting for migrations (or applying them) is not a stall"
        );
        h.db_answered();
        h.set_migrated();
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(h.live().is_err(), "the loop never started");
    }

    #[tokio::test(start_paused = true)]
    async fn a_running_loop_that_stops_ticking_is_not_live_even_while_the_database_is_away() {
        let h = Health::new(Duration::from_secs(60));
        h.ticked();
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(h.live().is_ok());
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(h.live().is_err());
        h.waiting_for_db();
        assert!(
            h.live().is_err(),
            "a loop that waits for its database keeps ticking; one that does not is stuck"
        );
        h.ticked();
        assert!(h.live().is_ok());
        h.set_stopping();
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(h.live().is_ok(), "stopping is not a stall");
    }
}
