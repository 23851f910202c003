//! The batch of unchanged polls' bookkeeping.
//!
//! A poll that finds the roster unchanged writes nothing itself: its bookkeeping (one fenced
//! UPDATE of `last_polled_at` and `poll_seq`) waits here and is written for many meetings in
//! one statement by [`Store::record_unchanged_polls`], at least every [`BOOKKEEPING_EVERY`],
//! when the batch reaches [`BOOKKEEPING_BATCH`], before the meeting is polled again, and on
//! shutdown.
//!
//! It never writes anything but that bookkeeping, and never decides when a meeting is due.

use std::time::Duration;

use tokio::time::Instant;

use crate::deadline::Later as _;
use crate::store::{Store, UnchangedPoll};

/// Unchanged polls' bookkeeping waits at most this long before it is written.
pub const BOOKKEEPING_EVERY: Duration = Duration::from_secs(1);

/// A batch of unchanged polls' bookkeeping is written when it reaches this size.
pub const BOOKKEEPING_BATCH: usize = 2_000;

/// Bookkeeping not yet written, with the slot of each poll's meeting.
#[derive(Debug, Default)]
pub(super) struct Batch {
    pending: Vec<(usize, UnchangedPoll)>,
    since: Option<Instant>,
}

impl Batch {
    pub fn push(&mut self, slot: usize, poll: UnchangedPoll, now: Instant) {
        self.pending.push((slot, poll));
        self.since.get_or_insert(now);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether the batch should be written now.
    pub fn is_due(&self, now: Instant) -> bool {
        self.since.is_some_and(|t| {
            now.duration_since(t) >= BOOKKEEPING_EVERY || self.pending.len() >= BOOKKEEPING_BATCH
        })
    }

    /// When the batch must be written at the latest; `None` while it is empty.
    pub fn due_at(&self) -> Option<Instant> {
        self.since.map(|t| t.later_by(BOOKKEEPING_EVERY))
    }

    /// Writes the whole batch. Returns each poll's slot, meeting and whether its fence held;
    /// when the write fails, none did (their meetings re-read the snapshot next poll).
    pub async fn flush(&mut self, store: &Store) -> Vec<(usize, UnchangedPoll, bool)> {
        self.since = None;
        if self.pending.is_empty() {
            return Vec::new();
        }
        let batch = std::mem::take(&mut self.pending);
        let polls: Vec<UnchangedPoll> = batch.iter().map(|(_, p)| p.clone()).collect();
        let recorded = match store.record_unchanged_polls(&polls).await {
            Ok(r) => r,
            Err(e) => {
                crate::telemetry::database_error("bookkeeping");
                tracing::warn!(error = %e, polls = polls.len(), "cannot record unchanged polls; their meetings re-read the snapshot next poll");
                vec![false; polls.len()]
            }
        };
        batch
            .into_iter()
            .zip(recorded)
            .map(|((slot, poll), ok)| (slot, poll, ok))
            .collect()
    }
}
