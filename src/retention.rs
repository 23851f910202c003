//! Retention: the daemon's periodic deletion of events older than `retention.events`, and of
//! the meetings that ended or were stopped before that.
//!
//! A pass ([`Retention::pass`]) deletes in batches of [`BATCH`] rows, each its own short
//! transaction so polls are never held up for long, until a batch comes back short: events
//! first, then meetings. What is kept longer than `retention.events`, and why, is the rule of
//! [`Store::delete_expired_events`]: an attendee's events in a meeting go all at once, only
//! once the newest is old enough, every webhook cursor has passed it and the attendee is no
//! longer present. A meeting row goes ([`Store::delete_expired_meetings`]) once it ended or
//! was stopped before the cutoff and none of its events is left. The first pass runs when
//! the daemon starts, then one every [`EVERY`].
//!
//! It deletes nothing while the store's writer permit is revoked (the writer lock was lost
//! to another process): the pass waits for it, and a pass under way stops between batches.
//!
//! It never deletes the current roster (`roster_attendees`) or an active meeting, and never
//! moves a webhook cursor.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Settings;
use crate::permit::WriterPermit;
use crate::store::{Result, Store};

/// Events deleted per transaction.
pub const BATCH: i64 = 1000;

/// Time between two passes.
pub const EVERY: Duration = Duration::from_secs(3600);

/// Pause between two batches of one pass, so the daemon's own writes get the database.
const BETWEEN_BATCHES: Duration = Duration::from_millis(50);

const DELETED: &str = "roster_sync_retention_deleted_events_total";
const DELETED_MEETINGS: &str = "roster_sync_retention_deleted_meetings_total";

/// What one [`Retention::pass`] deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Deleted {
    /// Rows of `roster_events`.
    pub events: u64,
    /// Rows of `tracked_meetings` (ended or stopped meetings with no event left).
    pub meetings: u64,
}

/// The retention of one daemon: its store, what it keeps, and the configured sink names.
pub struct Retention {
    store: Store,
    /// The store's writer permit: no batch is deleted while it is revoked.
    permit: WriterPermit,
    keep: Duration,
    configured_sinks: Vec<String>,
}

impl Retention {
    /// Retention as `settings` describe it; `None` when `retention.events` is empty.
    pub fn from_settings(settings: &Settings, store: Store) -> Option<Self> {
        let keep = settings.retention.events?;
        Some(Self {
            permit: store.writer_permit(),
            store,
            keep,
            configured_sinks: settings.webhooks.iter().map(|w| w.name.clone()).collect(),
        })
    }

    /// Events observed before this are past retention; `None` when `retention.events` reaches
    /// back before the calendar does (nothing is that old).
    pub fn cutoff(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        TimeDelta::from_std(self.keep)
            .ok()
            .and_then(|keep| now.checked_sub_signed(keep))
    }

    /// One pass: deletes expired events batch by batch until none is left, then the expired
    /// meetings with nothing left the same way (or until `cancel` fires between batches).
    /// Returns how many rows of each were deleted.
    ///
    /// # Errors
    /// [`crate::store::StoreError`] when the database fails; batches committed before stay
    /// deleted.
    pub async fn pass(&self, now: DateTime<Utc>, cancel: &CancellationToken) -> Result<Deleted> {
        let Some(cutoff) = self.cutoff(now) else {
            return Ok(Deleted::default());
        };
        let cursors = self.store.webhook_cursors().await?;
        for c in &cursors {
            if !self.configured_sinks.contains(&c.name) {
                tracing::warn!(
                    sink = %c.name,
                    last_event_id = c.last_event_id,
                    "a webhook cursor of a sink that is not configured holds retention back; \
                     delete its webhook_cursors row if the sink is gone for good"
                );
            }
        }
        // Cursors only move forward, so this stays a safe bound for the whole pass.
        let delivered_through = cursors
            .iter()
            .map(|c| c.last_event_id)
            .min()
            .unwrap_or(i64::MAX);
        let events = in_batches(cancel, &self.permit, DELETED, || {
            self.store
                .delete_expired_events(cutoff, delivered_through, BATCH)
        })
        .await?;
        // After the events: a meeting goes only once none of its events is left.
        let meetings = if cancel.is_cancelled() {
            0
        } else {
            in_batches(cancel, &self.permit, DELETED_MEETINGS, || {
                self.store.delete_expired_meetings(cutoff, BATCH)
            })
            .await?
        };
        Ok(Deleted { events, meetings })
    }

    /// Runs a pass now and then every [`EVERY`] until `cancel` fires. A failed pass is logged
    /// and tried again at the next.
    pub async fn run(self, cancel: CancellationToken) {
        let mut every = tokio::time::interval(EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = every.tick() => {}
            }
            // A daemon that lost its writer lock deletes nothing until it holds it again.
            if !self.permit.wait_held(&cancel).await {
                break;
            }
            match self.pass(crate::domain::now(), &cancel).await {
                Ok(Deleted {
                    events: 0,
                    meetings: 0,
                }) => tracing::debug!("retention: nothing to delete"),
                Ok(Deleted { events, meetings }) => {
                    tracing::info!(events, meetings, "retention deleted expired rows");
                }
                Err(e) => {
                    crate::telemetry::database_error("retention");
                    tracing::warn!(error = %e, "retention pass failed; next pass retries");
                }
            }
        }
    }
}

/// Runs `delete` (one batch of at most [`BATCH`] rows) until a batch comes back short,
/// `cancel` fires or `permit` is revoked, pausing between batches; counts the rows in the
/// counter `metric`.
async fn in_batches<F, Fut>(
    cancel: &CancellationToken,
    permit: &WriterPermit,
    metric: &'static str,
    delete: F,
) -> Result<u64>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<u64>>,
{
    let mut deleted = 0;
    loop {
        if !permit.is_held() {
            return Ok(deleted);
        }
        let batch = delete().await?;
        deleted += batch;
        metrics::counter!(metric).increment(batch);
        if batch < BATCH.unsigned_abs() || cancel.is_cancelled() {
            return Ok(deleted);
        }
        tokio::select! {
            () = cancel.cancelled() => return Ok(deleted),
            () = tokio::time::sleep(BETWEEN_BATCHES) => {}
        }
    }
}

/// Starts the retention task on `tracker` when `retention.events` is set; it stops when
/// `cancel` fires. Returns whether it was started.
pub fn spawn(
    settings: &Settings,
    store: Store,
    cancel: CancellationToken,
    tracker: &TaskTracker,
) -> bool {
    let Some(retention) = Retention::from_settings(settings, store) else {
        return false;
    };
    metrics::describe_counter!(
        DELETED,
        "Events deleted because they were older than retention.events."
    );
    metrics::counter!(DELETED).increment(0);
    metrics::describe_counter!(
        DELETED_MEETINGS,
        "Meetings (tracked_meetings rows) deleted because they ended or were stopped before \
         retention.events and had no event left."
    );
    metrics::counter!(DELETED_MEETINGS).increment(0);
    tracing::info!(keep = %humantime::format_duration(retention.keep), "retention enabled");
    tracker.spawn(retention.run(cancel));
    true
}
