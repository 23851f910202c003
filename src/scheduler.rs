//! Decides which meeting is polled when, and runs each poll: fetch → diff → `store.apply`.
//!
//! The "who is due" decision lives only in [`Scheduler::launch_due`]: due meetings go stalest
//! first, at most `concurrency` at once; every request also waits on the region's rate budget
//! inside the roster source. A failing meeting backs off on its own and never delays the
//! others. It must never diff a partial roster and never write outside `store.apply`,
//! `store.end_meeting` and `store.record_failure`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::broadcast;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::chime::{ChimeError, RosterSource};
use crate::config::Settings;
use crate::diff;
use crate::domain::{self, Fingerprint, MeetingId, Region};
use crate::store::{ApplyOutcome, PollRecord, Snapshot, Store, StoredEvent};

/// Scheduling knobs, from `[poll]` and `[shutdown]`.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    pub interval: Duration,
    pub jitter: f64,
    pub concurrency: usize,
    pub failure_backoff_cap: Duration,
    /// How often the tracked-meeting list is re-read, so meetings added or removed by
    /// `roster-sync meetings` are noticed without a restart.
    pub refresh_every: Duration,
    pub shutdown_grace: Duration,
}

impl SchedulerOptions {
    pub fn from_settings(s: &Settings) -> Self {
        Self {
            interval: s.poll.interval,
            jitter: s.poll.jitter,
            concurrency: s.poll.concurrency,
            failure_backoff_cap: s.poll.failure_backoff_cap,
            refresh_every: s.poll.interval.min(Duration::from_secs(5)),
            shutdown_grace: s.shutdown.grace,
        }
    }
}

/// What one poll did. Returned by [`poll_once`]; the loop only schedules around it.
#[derive(Debug)]
pub enum PollOutcome {
    /// The roster equals the snapshot; only the bookkeeping was updated.
    Unchanged,
    /// Changes were recorded.
    Changed(Vec<StoredEvent>),
    /// The meeting is gone: everyone left with `meeting_ended`, status `ended`.
    Ended(Vec<StoredEvent>),
    /// The snapshot moved under us (the meeting was removed, or another writer recorded a
    /// poll): nothing was written; the next poll starts from the stored snapshot.
    Conflict,
    /// The roster could not be fetched, or the database refused: nothing was recorded.
    Failed(String),
}

/// What the scheduler remembers of a meeting's recorded state between polls: enough to
/// record an unchanged poll without reading the snapshot. 40 bytes instead of a roster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    pub poll_seq: i64,
    pub last_polled_at: Option<chrono::DateTime<chrono::Utc>>,
    pub fingerprint: Fingerprint,
}

impl Known {
    fn of(snapshot: &Snapshot) -> Self {
        Self {
            poll_seq: snapshot.poll_seq,
            last_polled_at: snapshot.last_polled_at,
            fingerprint: domain::fingerprint(&snapshot.attendees),
        }
    }
}

/// Polls one meeting: fetches the complete roster, diffs it against the recorded snapshot
/// and records the result in one transaction.
///
/// `known` is what the previous poll left behind; with it, an unchanged roster costs no
/// snapshot read, only the bookkeeping UPDATE. Without it (first poll, or after a conflict
/// or a database error) the snapshot is read first. Returns the outcome and what to
/// remember for next time (`None`: re-read the store).
pub async fn poll_once<S: RosterSource>(
    source: &S,
    store: &Store,
    meeting: &MeetingId,
    region: &Region,
    known: Option<Known>,
) -> (PollOutcome, Option<Known>) {
    let (known, mut snapshot) = match known {
        Some(k) => (k, None),
        None => match store.snapshot(meeting).await {
            Ok(s) => (Known::of(&s), Some(s)),
            Err(e) => {
                return (
                    PollOutcome::Failed(format!("cannot read snapshot: {e}")),
                    None,
                );
            }
        },
    };
    let started_at = domain::now();
    let existed = known.last_polled_at.is_some();
    let fetched = match source.fetch_roster(meeting, region, existed).await {
        Ok(f) => f,
        Err(ChimeError::MeetingGone { .. }) => return end(store, meeting, known).await,
        Err(e) => {
            let message = e.to_string();
            if let Err(db) = store.record_failure(meeting, &message, domain::now()).await {
                tracing::warn!(error = %db, "cannot record poll failure");
            }
            return (PollOutcome::Failed(message), Some(known));
        }
    };
    let fingerprint = fetched.roster.fingerprint();
    let changes = if fingerprint == known.fingerprint {
        Vec::new()
    } else {
        if snapshot.is_none() {
            match store.snapshot(meeting).await {
                Ok(s) if s.poll_seq == known.poll_seq => snapshot = Some(s),
                Ok(_) => return (PollOutcome::Conflict, None),
                Err(e) => {
                    return (
                        PollOutcome::Failed(format!("cannot read snapshot: {e}")),
                        None,
                    );
                }
            }
        }
        let previous = snapshot
            .as_ref()
            .map(|s| s.attendees.as_slice())
            .unwrap_or_default();
        diff::diff(previous, &fetched.roster)
    };
    let record = PollRecord {
        meeting_id: meeting,
        expected_seq: known.poll_seq,
        started_at,
        observed_at: domain::now(),
        previous_poll_at: known.last_polled_at,
        changes: &changes,
    };
    match store.apply(record).await {
        Ok(ApplyOutcome::Applied { events, poll_seq }) => {
            let next = Known {
                poll_seq,
                last_polled_at: Some(started_at),
                fingerprint,
            };
            let outcome = if events.is_empty() {
                PollOutcome::Unchanged
            } else {
                PollOutcome::Changed(events)
            };
            (outcome, Some(next))
        }
        Ok(ApplyOutcome::Conflict) => (PollOutcome::Conflict, None),
        Err(e) => (
            PollOutcome::Failed(format!("cannot record poll: {e}")),
            None,
        ),
    }
}

/// The meeting answered 404 (or 403 after answering before): the store closes everyone still
/// in the snapshot with `meeting_ended` and marks the meeting ended, in one transaction.
async fn end(store: &Store, meeting: &MeetingId, known: Known) -> (PollOutcome, Option<Known>) {
    match store
        .end_meeting(meeting, known.poll_seq, domain::now(), known.last_polled_at)
        .await
    {
        Ok(ApplyOutcome::Applied { events, .. }) => (PollOutcome::Ended(events), None),
        Ok(ApplyOutcome::Conflict) => (PollOutcome::Conflict, None),
        Err(e) => (
            PollOutcome::Failed(format!("cannot record meeting end: {e}")),
            None,
        ),
    }
}

/// Per-meeting scheduling state, in memory only; the store holds everything that matters.
#[derive(Debug)]
struct MeetingState {
    region: Region,
    due: Instant,
    in_flight: bool,
    failures: u32,
    /// The recorded state as of the last poll, so an unchanged poll reads nothing.
    known: Option<Known>,
    /// When the last successful poll started; `None` until one succeeds. Staleness is
    /// measured from here.
    fresh_at: Option<Instant>,
}

struct Finished {
    meeting: MeetingId,
    outcome: PollOutcome,
    known: Option<Known>,
    started: Instant,
}

/// The polling loop. Build with [`Scheduler::new`], drive with [`Scheduler::run`], or step
/// with [`Scheduler::tick`] in tests.
pub struct Scheduler<S: RosterSource> {
    source: Arc<S>,
    store: Store,
    opts: SchedulerOptions,
    meetings: HashMap<MeetingId, MeetingState>,
    running: JoinSet<Finished>,
    refreshed_at: Option<Instant>,
    events: Option<broadcast::Sender<StoredEvent>>,
}

impl<S: RosterSource> Scheduler<S> {
    pub fn new(source: Arc<S>, store: Store, opts: SchedulerOptions) -> Self {
        Self {
            source,
            store,
            opts,
            meetings: HashMap::new(),
            running: JoinSet::new(),
            refreshed_at: None,
            events: None,
        }
    }

    /// Every recorded event is also sent here (the demo's live output).
    pub fn with_event_sink(mut self, tx: broadcast::Sender<StoredEvent>) -> Self {
        self.events = Some(tx);
        self
    }

    /// Runs until `cancel` fires, then stops launching polls and waits up to the grace
    /// period for in-flight polls to finish their transaction.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut ticker = tokio::time::interval(Duration::from_millis(100));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some(done) = self.running.join_next(), if !self.running.is_empty() => {
                    if let Ok(done) = done {
                        self.finish(done);
                    }
                }
                _ = ticker.tick() => {}
            }
            self.tick().await;
        }
        self.drain().await;
    }

    /// One step: re-reads the meeting list when due, publishes gauges, launches due polls.
    pub async fn tick(&mut self) {
        let now = Instant::now();
        if self
            .refreshed_at
            .is_none_or(|t| now.duration_since(t) >= self.opts.refresh_every)
        {
            self.refresh(now).await;
        }
        self.publish_gauges(now);
        self.launch_due(now);
    }

    /// Waits for every in-flight poll to finish (or the grace period to pass).
    async fn drain(&mut self) {
        let in_flight = self.running.len();
        if in_flight == 0 {
            return;
        }
        tracing::info!(in_flight, grace = ?self.opts.shutdown_grace, "draining in-flight polls");
        let deadline = Instant::now() + self.opts.shutdown_grace;
        while !self.running.is_empty() {
            match tokio::time::timeout_at(deadline, self.running.join_next()).await {
                Ok(Some(Ok(done))) => self.finish(done),
                Ok(_) => {}
                Err(_) => {
                    let left: Vec<String> = self
                        .meetings
                        .iter()
                        .filter(|(_, m)| m.in_flight)
                        .map(|(id, _)| id.to_string())
                        .collect();
                    tracing::warn!(
                        ?left,
                        "grace period over; abandoning polls (nothing of theirs was recorded)"
                    );
                    self.running.abort_all();
                    break;
                }
            }
        }
    }

    async fn refresh(&mut self, now: Instant) {
        let active = match self.store.active_meetings().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read tracked meetings; keeping the current list");
                return;
            }
        };
        self.refreshed_at = Some(now);
        let mut seen = std::collections::HashSet::with_capacity(active.len());
        for m in active {
            seen.insert(m.meeting_id.clone());
            let interval = self.opts.interval;
            self.meetings
                .entry(m.meeting_id)
                .or_insert_with(|| MeetingState {
                    region: m.region,
                    // New meetings spread over the first interval instead of all firing at once.
                    due: now + interval.mul_f64(rand::rng().random_range(0.0..1.0)),
                    in_flight: false,
                    failures: 0,
                    known: None,
                    fresh_at: None,
                });
        }
        // Meetings no longer active (removed, or ended by another process) stop here; an
        // in-flight poll of one finishes, and its apply is refused by the fence.
        self.meetings
            .retain(|id, m| seen.contains(id) || m.in_flight);
    }

    /// Launches due polls, stalest first, up to the concurrency limit.
    fn launch_due(&mut self, now: Instant) {
        let free = self.opts.concurrency.saturating_sub(self.running.len());
        if free == 0 {
            return;
        }
        let mut due: Vec<(&MeetingId, &MeetingState)> = self
            .meetings
            .iter()
            .filter(|(_, m)| !m.in_flight && m.due <= now)
            .collect();
        // Never-polled first, then the longest since the last success.
        due.sort_by_key(|(_, m)| m.fresh_at);
        let picked: Vec<MeetingId> = due
            .into_iter()
            .take(free)
            .map(|(id, _)| id.clone())
            .collect();
        for id in picked {
            let Some(state) = self.meetings.get_mut(&id) else {
                continue;
            };
            state.in_flight = true;
            let known = state.known.take();
            let region = state.region.clone();
            let source = Arc::clone(&self.source);
            let store = self.store.clone();
            let span = tracing::info_span!("poll", meeting_id = %id, region = %region);
            self.running.spawn(
                async move {
                    let started = Instant::now();
                    let (outcome, known) = poll_once(&*source, &store, &id, &region, known).await;
                    Finished {
                        meeting: id,
                        outcome,
                        known,
                        started,
                    }
                }
                .instrument(span),
            );
        }
    }

    fn finish(&mut self, done: Finished) {
        let elapsed = done.started.elapsed();
        metrics::histogram!("roster_poll_duration_seconds").record(elapsed.as_secs_f64());
        let label = match &done.outcome {
            PollOutcome::Unchanged => "unchanged",
            PollOutcome::Changed(_) => "changed",
            PollOutcome::Ended(_) => "ended",
            PollOutcome::Conflict => "conflict",
            PollOutcome::Failed(_) => "failed",
        };
        metrics::counter!("roster_polls_total", "outcome" => label).increment(1);
        let interval = self.opts.interval;
        let jitter = self.opts.jitter;
        let cap = self.opts.failure_backoff_cap;
        let Some(state) = self.meetings.get_mut(&done.meeting) else {
            return;
        };
        state.in_flight = false;
        state.known = done.known;
        let spread = |d: Duration| d.mul_f64(1.0 + rand::rng().random_range(-jitter..=jitter));
        match done.outcome {
            PollOutcome::Unchanged | PollOutcome::Changed(_) => {
                state.failures = 0;
                state.fresh_at = Some(done.started);
                state.due = done.started + spread(interval);
                if let PollOutcome::Changed(events) = done.outcome {
                    self.publish(&done.meeting, events);
                }
            }
            PollOutcome::Ended(events) => {
                tracing::info!(meeting_id = %done.meeting, left = events.len(), "meeting ended");
                self.publish(&done.meeting, events);
                self.meetings.remove(&done.meeting);
            }
            PollOutcome::Conflict => {
                tracing::info!(meeting_id = %done.meeting, "snapshot changed elsewhere; re-reading it next poll");
                state.due = Instant::now();
                self.refreshed_at = None;
            }
            PollOutcome::Failed(error) => {
                state.failures = state.failures.saturating_add(1);
                let backoff = interval
                    .saturating_mul(1u32 << state.failures.min(16))
                    .min(cap);
                state.due = Instant::now() + spread(backoff);
                tracing::warn!(
                    meeting_id = %done.meeting,
                    failures = state.failures,
                    retry_in = ?backoff,
                    %error,
                    "poll failed"
                );
            }
        }
    }

    fn publish(&self, meeting: &MeetingId, events: Vec<StoredEvent>) {
        for e in events {
            metrics::counter!("roster_events_total", "kind" => e.kind.as_str()).increment(1);
            tracing::info!(
                meeting_id = %meeting,
                event_id = e.event_id,
                kind = %e.kind,
                attendee_id = %e.attendee_id,
                reason = e.reason.map(|r| r.as_str()),
                "event"
            );
            if let Some(tx) = &self.events {
                let _ = tx.send(e);
            }
        }
    }

    fn publish_gauges(&self, now: Instant) {
        let mut staleness: Vec<f64> = self
            .meetings
            .values()
            .map(|m| {
                m.fresh_at
                    .map_or(f64::NAN, |t| now.duration_since(t).as_secs_f64())
            })
            .filter(|s| s.is_finite())
            .collect();
        staleness.sort_by(f64::total_cmp);
        let max = staleness.last().copied().unwrap_or(0.0);
        let p99 = staleness
            .get(((staleness.len() as f64) * 0.99).ceil() as usize)
            .or(staleness.last())
            .copied()
            .unwrap_or(0.0);
        metrics::gauge!("roster_staleness_max_seconds").set(max);
        metrics::gauge!("roster_staleness_p99_seconds").set(p99);
        metrics::gauge!("roster_meetings_tracked").set(self.meetings.len() as f64);
        metrics::gauge!("roster_polls_in_flight").set(self.running.len() as f64);
        let mut regions: Vec<&Region> = self.meetings.values().map(|m| &m.region).collect();
        regions.sort();
        regions.dedup();
        for r in regions {
            if let Some(rate) = self.source.current_rate(r) {
                metrics::gauge!("roster_rate_requests_per_second", "region" => r.to_string())
                    .set(rate);
            }
        }
    }
}
