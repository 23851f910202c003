//! The scheduler's meeting list: re-read when the store says it changed or a full read is
//! due, and merged into the queue (in cluster mode, the meetings this replica leases).

use tokio::time::Instant;

use super::*;

impl<S: RosterSource> Scheduler<S> {
    /// Re-reads the meeting list if it changed (a one-row probe says so) or a full read is
    /// due anyway.
    pub(super) async fn refresh(&mut self, now: Instant) {
        // Tried again after `refresh_every`, whatever happens here.
        self.refreshed_at = Some(now);
        let version = match self.store.meetings_version().await {
            Ok(v) => {
                if std::mem::take(&mut self.db_down) {
                    tracing::info!("the database answers again; polling resumes");
                }
                if let Some(h) = &self.health {
                    h.db_answered();
                }
                v
            }
            Err(e) => {
                crate::telemetry::database_error("meeting_list");
                if !self.db_down {
                    tracing::warn!(error = %e, "cannot read tracked meetings; polling pauses until the database answers");
                }
                self.db_down = true;
                if let Some(h) = &self.health {
                    h.waiting_for_db();
                }
                return;
            }
        };
        let full_due = self.cluster.is_some()
            || self
                .full_refresh_at
                .is_none_or(|t| now.duration_since(t) >= FULL_REFRESH_EVERY);
        if !full_due && self.version.as_ref() == Some(&version) {
            return;
        }
        if self.read_meetings(now).await {
            self.version = Some(version);
            self.full_refresh_at = Some(now);
            if let Some(h) = &self.health {
                h.set_meetings_loaded();
            }
        }
    }

    /// Reads the active meetings; new ones are queued, those gone are dropped, those moved to
    /// another region are queued there. Returns false when the store could not be read.
    async fn read_meetings(&mut self, now: Instant) -> bool {
        // Cluster mode: when each held meeting was last polled (by any replica), so one taken
        // over is due an interval after that poll instead of an interval after the takeover.
        let mut last_polled = HashMap::new();
        let active = match &self.cluster {
            None => self.store.active_meeting_keys().await,
            Some(me) => self.store.leased_meetings(me).await.map(|held| {
                self.fences = held
                    .iter()
                    .map(|l| (l.meeting_id.clone(), l.token))
                    .collect();
                held.into_iter()
                    .map(|l| {
                        if let Some(at) = l.last_polled_at {
                            last_polled.insert(l.meeting_id.clone(), at);
                        }
                        (l.meeting_id, l.region)
                    })
                    .collect()
            }),
        };
        let active = match active {
            Ok(a) => a,
            Err(e) => {
                crate::telemetry::database_error("meeting_list");
                tracing::warn!(error = %e, "cannot read tracked meetings; keeping the current list");
                return false;
            }
        };
        self.refreshes += 1;
        let generation = self.refreshes;
        for (meeting_id, region) in active {
            if let Some(slot) = self.queue.slot_of(&meeting_id) {
                let moved = self
                    .queue
                    .get(slot)
                    .is_some_and(|m| *self.queue.region_name(m.region) != region);
                if !moved {
                    if let Some(state) = self.queue.get_mut(slot) {
                        state.seen_in = generation;
                        // Tracked again while its last poll was in flight: keep it.
                        state.removed = false;
                    }
                    continue;
                }
                // Moved to another region: drop it here (a poll in flight is fenced off by
                // the store) and queue it in its new region once that poll is over.
                self.queue.forget(slot);
                if self.queue.slot_of(&meeting_id).is_some() {
                    continue;
                }
            }
            let due = match last_polled.get(&meeting_id) {
                // Taken over from another replica: due when its last poll says, at once if
                // that is past.
                Some(at) => {
                    let since = (crate::domain::now() - *at).to_std().unwrap_or_default();
                    now.later_by(self.opts.interval.saturating_sub(since))
                }
                // New meetings spread over the first interval instead of all firing at once.
                None => now.later_by(
                    self.opts
                        .interval
                        .mul_f64(rand::rng().random_range(0.0..1.0)),
                ),
            };
            self.queue.insert(meeting_id, region, now, due, generation);
        }
        // Meetings no longer active (removed, or ended by another process) stop here; an
        // in-flight poll of one finishes, and its apply is refused by the fence.
        let gone: Vec<usize> = (0..self.queue.slot_count())
            .filter(|&s| self.queue.get(s).is_some_and(|m| m.seen_in != generation))
            .collect();
        for slot in gone {
            self.queue.forget(slot);
        }
        true
    }
}
