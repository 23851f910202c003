//! Decides which meeting is polled when, and runs each poll: fetch → diff → `store.apply`.
//!
//! The "who is due" decision lives only in [`Scheduler::launch_due`]. Due meetings go
//! **stalest first** (never polled, then the longest since the last successful poll), so when
//! the request budget cannot poll every meeting each interval, freshness degrades evenly
//! instead of some meetings going stale while others are polled often. A meeting's **cost is
//! its pages** (those of its last complete roster): a region launches polls only while the
//! pages already promised to polls in flight are under [`LOOKAHEAD`] seconds of its current
//! rate, so polls do not queue for long inside the rate budget (a poll stuck behind the pages
//! of fifteen others takes seconds, which delays what it detects), and a rate decrease takes
//! effect at once. Every request still waits on the region's rate budget inside the roster
//! source; `concurrency` bounds polls in flight across regions.
//!
//! Polls that find the roster unchanged write nothing themselves: their bookkeeping (one
//! fenced UPDATE each) is recorded in batches by [`Store::record_unchanged_polls`], at least
//! every [`BOOKKEEPING_EVERY`], before the meeting is polled again, and on shutdown.
//!
//! A failing meeting backs off on its own and never delays the others. It must never diff a
//! partial roster and never write outside `store.apply`, `store.record_unchanged_polls`,
//! `store.end_meeting` and `store.record_failure`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
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
use crate::store::{
    ApplyOutcome, MeetingsVersion, PollRecord, Snapshot, Store, StoredEvent, UnchangedPoll,
};

/// Seconds of a region's current rate that may be promised to polls in flight. Half a second
/// keeps the budget busy (the next poll is already waiting when one finishes) while a poll
/// waits at most about this long for its pages.
pub const LOOKAHEAD: Duration = Duration::from_millis(500);

/// Unchanged polls' bookkeeping waits at most this long before it is written.
pub const BOOKKEEPING_EVERY: Duration = Duration::from_secs(1);

/// A batch of unchanged polls' bookkeeping is written when it reaches this size.
const BOOKKEEPING_BATCH: usize = 2_000;

/// The meeting list is read in full at least this often, even when the probe says nothing
/// changed.
const FULL_REFRESH_EVERY: Duration = Duration::from_secs(60);

/// How often the gauges are published.
const GAUGES_EVERY: Duration = Duration::from_secs(1);

/// Scheduling knobs, from `[poll]` and `[shutdown]`.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// How often each meeting is due, when the budget allows.
    pub interval: Duration,
    /// Fraction of `interval` by which due times are randomly spread.
    pub jitter: f64,
    /// Polls in flight at once, across all regions.
    pub concurrency: usize,
    /// The longest wait before retrying a meeting whose polls keep failing.
    pub failure_backoff_cap: Duration,
    /// How often the tracked-meeting list is re-read, so meetings added or removed by
    /// `roster-sync meetings` are noticed without a restart.
    pub refresh_every: Duration,
    /// How long in-flight polls may take to finish after shutdown was asked for.
    pub shutdown_grace: Duration,
}

impl SchedulerOptions {
    /// The options the configuration asks for.
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

impl PollOutcome {
    /// A short label for metrics and reports.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Unchanged => "unchanged",
            Self::Changed(_) => "changed",
            Self::Ended(_) => "ended",
            Self::Conflict => "conflict",
            Self::Failed(_) => "failed",
        }
    }
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
    let polled = poll(source, store, meeting, region, known, Bookkeeping::Now).await;
    (polled.outcome, polled.known)
}

/// When an unchanged poll's bookkeeping is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bookkeeping {
    /// By the poll itself (`poll_once`).
    Now,
    /// Handed back to the scheduler, which writes it in a batch.
    Deferred,
}

/// Everything a poll hands back to the scheduler.
struct Polled {
    outcome: PollOutcome,
    known: Option<Known>,
    /// Pages of the complete roster; 0 when none arrived.
    pages: u32,
    /// With [`Bookkeeping::Deferred`]: the unchanged poll's bookkeeping, not yet written.
    /// `known` already assumes it will be.
    deferred: Option<UnchangedPoll>,
}

impl Polled {
    fn plain(outcome: PollOutcome, known: Option<Known>) -> Self {
        Self {
            outcome,
            known,
            pages: 0,
            deferred: None,
        }
    }
}

async fn poll<S: RosterSource>(
    source: &S,
    store: &Store,
    meeting: &MeetingId,
    region: &Region,
    known: Option<Known>,
    bookkeeping: Bookkeeping,
) -> Polled {
    let (known, mut snapshot) = match known {
        Some(k) => (k, None),
        None => match store.snapshot(meeting).await {
            Ok(s) => (Known::of(&s), Some(s)),
            Err(e) => {
                let failed = PollOutcome::Failed(format!("cannot read snapshot: {e}"));
                return Polled::plain(failed, None);
            }
        },
    };
    let started_at = domain::now();
    let existed = known.last_polled_at.is_some();
    let fetched = match source.fetch_roster(meeting, region, existed).await {
        Ok(f) => f,
        Err(ChimeError::MeetingGone { .. }) => {
            let (outcome, known) = end(store, meeting, known).await;
            return Polled::plain(outcome, known);
        }
        Err(e) => {
            let message = e.to_string();
            if let Err(db) = store.record_failure(meeting, &message, domain::now()).await {
                tracing::warn!(meeting_id = %meeting, error = %db, "cannot record poll failure");
            }
            return Polled::plain(PollOutcome::Failed(message), Some(known));
        }
    };
    let pages = fetched.pages;
    let fingerprint = fetched.roster.fingerprint();
    let changes = if fingerprint == known.fingerprint {
        Vec::new()
    } else {
        if snapshot.is_none() {
            match store.snapshot(meeting).await {
                Ok(s) if s.poll_seq == known.poll_seq => snapshot = Some(s),
                Ok(_) => return Polled::plain(PollOutcome::Conflict, None),
                Err(e) => {
                    let failed = PollOutcome::Failed(format!("cannot read snapshot: {e}"));
                    return Polled::plain(failed, None);
                }
            }
        }
        let previous = snapshot
            .as_ref()
            .map(|s| s.attendees.as_slice())
            .unwrap_or_default();
        diff::diff(previous, &fetched.roster)
    };
    let next = |poll_seq| Known {
        poll_seq,
        last_polled_at: Some(started_at),
        fingerprint,
    };
    if changes.is_empty() && bookkeeping == Bookkeeping::Deferred {
        return Polled {
            outcome: PollOutcome::Unchanged,
            known: Some(next(known.poll_seq + 1)),
            pages,
            deferred: Some(UnchangedPoll {
                meeting_id: meeting.clone(),
                expected_seq: known.poll_seq,
                started_at,
            }),
        };
    }
    let record = PollRecord {
        meeting_id: meeting,
        expected_seq: known.poll_seq,
        started_at,
        observed_at: domain::now(),
        previous_poll_at: known.last_polled_at,
        changes: &changes,
    };
    let (outcome, known) = match store.apply(record).await {
        Ok(ApplyOutcome::Applied { events, poll_seq }) => {
            let outcome = if events.is_empty() {
                PollOutcome::Unchanged
            } else {
                PollOutcome::Changed(events)
            };
            (outcome, Some(next(poll_seq)))
        }
        Ok(ApplyOutcome::Conflict) => (PollOutcome::Conflict, None),
        Err(e) => (
            PollOutcome::Failed(format!("cannot record poll: {e}")),
            None,
        ),
    };
    Polled {
        outcome,
        known,
        pages,
        deferred: None,
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

/// What the scheduler tells a poll observer (see [`Scheduler::with_poll_observer`]) about
/// every finished poll. Benchmarks measure sweeps with it.
#[derive(Debug, Clone, Copy)]
pub struct PollReport<'a> {
    pub meeting_id: &'a MeetingId,
    /// When the poll was launched (before it waited for the rate budget).
    pub started: Instant,
    pub finished: Instant,
    /// [`PollOutcome::label`].
    pub outcome: &'static str,
    /// Pages of the complete roster; 0 when the poll failed.
    pub pages: u32,
}

impl PollReport<'_> {
    /// The roster was fetched completely and recorded (changed or not).
    pub fn succeeded(&self) -> bool {
        matches!(self.outcome, "unchanged" | "changed")
    }
}

type PollObserver = Box<dyn Fn(&PollReport<'_>) + Send + Sync>;

/// Per-meeting scheduling state, in memory only; the store holds everything that matters.
#[derive(Debug)]
struct MeetingState {
    id: MeetingId,
    region: usize,
    due: Instant,
    in_flight: bool,
    failures: u32,
    /// The recorded state as of the last poll, so an unchanged poll reads nothing.
    known: Option<Known>,
    /// When the last successful poll started; `None` until one succeeds. Staleness is
    /// measured from here.
    fresh_at: Option<Instant>,
    /// When the scheduler first saw the meeting: its staleness until a poll succeeds.
    seen_at: Instant,
    /// Pages of the last complete roster (0 until one arrived): the meeting's cost.
    pages: u32,
    /// Pages promised to the poll in flight.
    cost: u32,
    /// An unchanged poll's bookkeeping waits in the batch: flush it before polling again.
    pending: bool,
    /// Bumped whenever the meeting is queued, so older queue entries are ignored.
    version: u32,
    /// The refresh that last saw it active.
    seen_in: u64,
    /// No longer active: dropped when its poll in flight finishes.
    removed: bool,
}

impl MeetingState {
    fn staleness_since(&self) -> Instant {
        self.fresh_at.unwrap_or(self.seen_at)
    }
}

/// One control region: its meetings due now, and what its polls in flight cost.
#[derive(Debug)]
struct RegionQueue {
    region: Arc<Region>,
    /// Due meetings, stalest first: (last success, slot, version); never polled (`None`)
    /// sorts first.
    ready: BinaryHeap<Reverse<(Option<Instant>, usize, u32)>>,
    pages_in_flight: u32,
    /// Pages of every meeting of the region (last complete rosters): a sweep's cost.
    pages_total: u64,
}

/// Counts, logs and sends to the sink (if any) the events of one poll.
fn publish(
    sink: Option<&broadcast::Sender<StoredEvent>>,
    meeting: &MeetingId,
    events: Vec<StoredEvent>,
) {
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
        if let Some(tx) = sink {
            let _ = tx.send(e);
        }
    }
}

/// What a poll of a meeting with `pages` pages is expected to spend: at least one request
/// (a meeting never polled yet counts one).
fn cost(pages: u32) -> u32 {
    pages.max(1)
}

struct Finished {
    slot: usize,
    polled: Polled,
    started: Instant,
}

/// The polling loop. Build with [`Scheduler::new`], drive with [`Scheduler::run`], or step
/// with [`Scheduler::tick`] in tests.
pub struct Scheduler<S: RosterSource> {
    source: Arc<S>,
    store: Store,
    opts: SchedulerOptions,
    /// Meeting states by slot; `None` is a free slot.
    slots: Vec<Option<MeetingState>>,
    free: Vec<usize>,
    index: HashMap<MeetingId, usize>,
    regions: Vec<RegionQueue>,
    /// Meetings waiting for their due time: (due, slot, version).
    timers: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    running: JoinSet<Finished>,
    /// The slot and launch time of each poll task, so a task that panicked is accounted for.
    tasks: HashMap<tokio::task::Id, (usize, Instant)>,
    refreshed_at: Option<Instant>,
    refreshes: u64,
    /// What [`Store::meetings_version`] said at the last full read; `None` forces one.
    version: Option<MeetingsVersion>,
    full_refresh_at: Option<Instant>,
    /// Unchanged polls' bookkeeping not yet written, with their slots.
    pending: Vec<(usize, UnchangedPoll)>,
    pending_since: Option<Instant>,
    gauges_at: Option<Instant>,
    next_region: usize,
    staleness: Vec<f64>,
    events: Option<broadcast::Sender<StoredEvent>>,
    observer: Option<PollObserver>,
}

impl<S: RosterSource> Scheduler<S> {
    /// A scheduler with no meetings yet; the first [`Scheduler::tick`] reads them.
    pub fn new(source: Arc<S>, store: Store, opts: SchedulerOptions) -> Self {
        Self {
            source,
            store,
            opts,
            slots: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
            regions: Vec::new(),
            timers: BinaryHeap::new(),
            running: JoinSet::new(),
            tasks: HashMap::new(),
            refreshed_at: None,
            refreshes: 0,
            version: None,
            full_refresh_at: None,
            pending: Vec::new(),
            pending_since: None,
            gauges_at: None,
            next_region: 0,
            staleness: Vec::new(),
            events: None,
            observer: None,
        }
    }

    /// Every recorded event is also sent here (the demo's live output).
    pub fn with_event_sink(mut self, tx: broadcast::Sender<StoredEvent>) -> Self {
        self.events = Some(tx);
        self
    }

    /// `observer` is called with every finished poll, on the scheduler's task: it must be
    /// quick (a counter, a timestamp), never block.
    pub fn with_poll_observer(
        mut self,
        observer: impl Fn(&PollReport<'_>) + Send + Sync + 'static,
    ) -> Self {
        self.observer = Some(Box::new(observer));
        self
    }

    /// Runs until `cancel` fires, then stops launching polls, waits up to the grace period
    /// for in-flight polls to finish their transaction, and writes the pending bookkeeping.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut ticker = tokio::time::interval(Duration::from_millis(100));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some(joined) = self.running.join_next_with_id(), if !self.running.is_empty() => {
                    self.joined(joined);
                }
                _ = ticker.tick() => {}
            }
            self.tick().await;
        }
        self.drain().await;
    }

    /// One step: re-reads the meeting list when due, writes pending bookkeeping when due,
    /// publishes gauges, launches due polls.
    pub async fn tick(&mut self) {
        let now = Instant::now();
        if self
            .refreshed_at
            .is_none_or(|t| now.duration_since(t) >= self.opts.refresh_every)
        {
            self.refresh(now).await;
        }
        if self.pending_since.is_some_and(|t| {
            now.duration_since(t) >= BOOKKEEPING_EVERY || self.pending.len() >= BOOKKEEPING_BATCH
        }) {
            self.flush_bookkeeping().await;
        }
        if self
            .gauges_at
            .is_none_or(|t| now.duration_since(t) >= GAUGES_EVERY)
        {
            self.gauges_at = Some(now);
            self.publish_gauges(now);
        }
        self.promote(now);
        if self.launch_due() {
            // A due meeting still has bookkeeping in the batch: write it, then poll.
            self.flush_bookkeeping().await;
            self.launch_due();
        }
    }

    /// Waits for every in-flight poll to finish (or the grace period to pass), then writes
    /// the bookkeeping of the unchanged polls.
    async fn drain(&mut self) {
        let in_flight = self.running.len();
        if in_flight > 0 {
            tracing::info!(in_flight, grace = ?self.opts.shutdown_grace, "draining in-flight polls");
        }
        let deadline = Instant::now() + self.opts.shutdown_grace;
        while !self.running.is_empty() {
            match tokio::time::timeout_at(deadline, self.running.join_next_with_id()).await {
                Ok(Some(joined)) => self.joined(joined),
                Ok(None) => {}
                Err(_) => {
                    let left: Vec<String> = self
                        .slots
                        .iter()
                        .flatten()
                        .filter(|m| m.in_flight)
                        .map(|m| m.id.to_string())
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
        self.flush_bookkeeping().await;
    }

    /// Re-reads the meeting list if it changed (a one-row probe says so) or a full read is
    /// due anyway.
    async fn refresh(&mut self, now: Instant) {
        // Tried again after `refresh_every`, whatever happens here.
        self.refreshed_at = Some(now);
        let version = match self.store.meetings_version().await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read tracked meetings; keeping the current list");
                return;
            }
        };
        let full_due = self
            .full_refresh_at
            .is_none_or(|t| now.duration_since(t) >= FULL_REFRESH_EVERY);
        if !full_due && self.version.as_ref() == Some(&version) {
            return;
        }
        if self.read_meetings(now).await {
            self.version = Some(version);
            self.full_refresh_at = Some(now);
        }
    }

    /// Reads the active meetings; new ones are queued, those gone are dropped. Returns false
    /// when the store could not be read.
    async fn read_meetings(&mut self, now: Instant) -> bool {
        let active = match self.store.active_meeting_keys().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read tracked meetings; keeping the current list");
                return false;
            }
        };
        self.refreshes += 1;
        let generation = self.refreshes;
        for (meeting_id, region) in active {
            if let Some(&slot) = self.index.get(&meeting_id)
                && let Some(state) = self.slots[slot].as_mut()
            {
                state.seen_in = generation;
                // Tracked again while its last poll was in flight: keep it.
                state.removed = false;
                continue;
            }
            let region = self.region_index(region);
            // New meetings spread over the first interval instead of all firing at once.
            let due = now
                + self
                    .opts
                    .interval
                    .mul_f64(rand::rng().random_range(0.0..1.0));
            let state = MeetingState {
                id: meeting_id.clone(),
                region,
                due,
                in_flight: false,
                failures: 0,
                known: None,
                fresh_at: None,
                seen_at: now,
                pages: 0,
                cost: 0,
                pending: false,
                version: 0,
                seen_in: generation,
                removed: false,
            };
            let slot = match self.free.pop() {
                Some(slot) => {
                    self.slots[slot] = Some(state);
                    slot
                }
                None => {
                    self.slots.push(Some(state));
                    self.slots.len() - 1
                }
            };
            self.index.insert(meeting_id, slot);
            self.regions[region].pages_total += u64::from(cost(0));
            self.schedule(slot, due);
        }
        // Meetings no longer active (removed, or ended by another process) stop here; an
        // in-flight poll of one finishes, and its apply is refused by the fence.
        for slot in 0..self.slots.len() {
            let gone = self.slots[slot]
                .as_ref()
                .is_some_and(|m| m.seen_in != generation);
            if gone {
                self.forget(slot);
            }
        }
        true
    }

    fn region_index(&mut self, region: Region) -> usize {
        if let Some(i) = self.regions.iter().position(|r| *r.region == region) {
            return i;
        }
        self.regions.push(RegionQueue {
            region: Arc::new(region),
            ready: BinaryHeap::new(),
            pages_in_flight: 0,
            pages_total: 0,
        });
        self.regions.len() - 1
    }

    /// Stops tracking the meeting in `slot`: at once, or when its poll in flight finishes.
    fn forget(&mut self, slot: usize) {
        let Some(state) = self.slots[slot].as_mut() else {
            return;
        };
        if state.in_flight {
            state.removed = true;
            return;
        }
        let region = state.region;
        let pages = state.pages;
        if let Some(state) = self.slots[slot].take() {
            self.index.remove(&state.id);
        }
        self.regions[region].pages_total -= u64::from(cost(pages));
        self.free.push(slot);
    }

    /// Queues the meeting in `slot` to become due at `due`; earlier queue entries of it are
    /// void.
    fn schedule(&mut self, slot: usize, due: Instant) {
        if let Some(state) = self.slots[slot].as_mut() {
            state.version = state.version.wrapping_add(1);
            state.due = due;
            self.timers.push(Reverse((due, slot, state.version)));
        }
    }

    /// Moves meetings whose due time has come to their region's ready queue.
    fn promote(&mut self, now: Instant) {
        while let Some(Reverse((due, slot, version))) = self.timers.peek().copied() {
            if due > now {
                break;
            }
            self.timers.pop();
            let Some(state) = self.slots.get(slot).and_then(Option::as_ref) else {
                continue;
            };
            if state.version != version || state.in_flight {
                continue;
            }
            self.regions[state.region]
                .ready
                .push(Reverse((state.fresh_at, slot, version)));
        }
    }

    /// Launches due polls, stalest first, while the concurrency limit and each region's
    /// lookahead allow. Returns true when a due meeting was held back because its previous
    /// poll's bookkeeping is not written yet.
    fn launch_due(&mut self) -> bool {
        let mut held = false;
        let regions = self.regions.len();
        if regions == 0 {
            return false;
        }
        // Regions take turns, so one region's backlog never starves another.
        self.next_region = (self.next_region + 1) % regions;
        for offset in 0..regions {
            let r = (self.next_region + offset) % regions;
            let window = self
                .source
                .current_rate(&self.regions[r].region)
                .map_or(f64::INFINITY, |rate| rate * LOOKAHEAD.as_secs_f64());
            let mut blocked = Vec::new();
            while self.running.len() < self.opts.concurrency {
                let queue = &self.regions[r];
                if queue.pages_in_flight > 0 && f64::from(queue.pages_in_flight) >= window {
                    break;
                }
                let Some(Reverse(entry)) = self.regions[r].ready.pop() else {
                    break;
                };
                let (_, slot, version) = entry;
                let Some(state) = self.slots.get(slot).and_then(Option::as_ref) else {
                    continue;
                };
                if state.version != version || state.in_flight {
                    continue;
                }
                if state.pending {
                    blocked.push(Reverse(entry));
                    continue;
                }
                self.launch(slot);
            }
            held |= !blocked.is_empty();
            self.regions[r].ready.extend(blocked);
        }
        held
    }

    fn launch(&mut self, slot: usize) {
        let Some(state) = self.slots[slot].as_mut() else {
            return;
        };
        state.in_flight = true;
        state.cost = cost(state.pages);
        let queue = &mut self.regions[state.region];
        queue.pages_in_flight += state.cost;
        let known = state.known.take();
        let id = state.id.clone();
        let region = Arc::clone(&queue.region);
        let source = Arc::clone(&self.source);
        let store = self.store.clone();
        // Debug level: at the default info level the span costs nothing per poll; the
        // warnings of a failed poll name the meeting themselves.
        let span = tracing::debug_span!("poll", meeting_id = %id, region = %region);
        let task = self.running.spawn(
            async move {
                let started = Instant::now();
                let polled =
                    poll(&*source, &store, &id, &region, known, Bookkeeping::Deferred).await;
                Finished {
                    slot,
                    polled,
                    started,
                }
            }
            .instrument(span),
        );
        self.tasks.insert(task.id(), (slot, Instant::now()));
    }

    /// A poll task ended: normally with its outcome; if it panicked (a bug), as a failed poll
    /// whose meeting re-reads the snapshot next time.
    fn joined(&mut self, joined: Result<(tokio::task::Id, Finished), tokio::task::JoinError>) {
        let done = match joined {
            Ok((task, done)) => {
                self.tasks.remove(&task);
                done
            }
            Err(e) => {
                let Some((slot, started)) = self.tasks.remove(&e.id()) else {
                    return;
                };
                let meeting = self.slots.get(slot).and_then(Option::as_ref).map(|m| &m.id);
                tracing::error!(meeting_id = ?meeting, error = %e, "a poll task failed");
                Finished {
                    slot,
                    polled: Polled::plain(
                        PollOutcome::Failed(format!("poll task failed: {e}")),
                        None,
                    ),
                    started,
                }
            }
        };
        self.finish(done);
    }

    fn finish(&mut self, done: Finished) {
        let now = Instant::now();
        let Finished {
            slot,
            polled,
            started,
        } = done;
        let label = polled.outcome.label();
        metrics::histogram!("roster_poll_duration_seconds")
            .record(now.duration_since(started).as_secs_f64());
        metrics::counter!("roster_polls_total", "outcome" => label).increment(1);
        let Some(state) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        if let Some(observer) = &self.observer {
            observer(&PollReport {
                meeting_id: &state.id,
                started,
                finished: now,
                outcome: label,
                pages: polled.pages,
            });
        }
        state.in_flight = false;
        state.known = polled.known;
        let queue = &mut self.regions[state.region];
        queue.pages_in_flight = queue.pages_in_flight.saturating_sub(state.cost);
        if polled.pages > 0 {
            queue.pages_total =
                queue.pages_total - u64::from(cost(state.pages)) + u64::from(cost(polled.pages));
            state.pages = polled.pages;
        }
        if let Some(record) = polled.deferred {
            state.pending = true;
            self.pending.push((slot, record));
            self.pending_since.get_or_insert(now);
        }
        let interval = self.opts.interval;
        let jitter = self.opts.jitter;
        let spread = |d: Duration| d.mul_f64(1.0 + rand::rng().random_range(-jitter..=jitter));
        let id = &state.id;
        let (next_due, events) = match polled.outcome {
            PollOutcome::Unchanged => {
                state.failures = 0;
                state.fresh_at = Some(started);
                (Some(started + spread(interval)), Vec::new())
            }
            PollOutcome::Changed(events) => {
                state.failures = 0;
                state.fresh_at = Some(started);
                (Some(started + spread(interval)), events)
            }
            PollOutcome::Ended(events) => {
                tracing::info!(meeting_id = %id, left = events.len(), "meeting ended");
                state.removed = true;
                (None, events)
            }
            PollOutcome::Conflict => {
                tracing::info!(meeting_id = %id, "snapshot changed elsewhere; re-reading it next poll");
                self.refreshed_at = None;
                self.version = None;
                (Some(now), Vec::new())
            }
            PollOutcome::Failed(error) => {
                state.failures = state.failures.saturating_add(1);
                let backoff = interval
                    .saturating_mul(1u32 << state.failures.min(16))
                    .min(self.opts.failure_backoff_cap);
                tracing::warn!(
                    meeting_id = %id,
                    failures = state.failures,
                    retry_in = ?backoff,
                    %error,
                    "poll failed"
                );
                (Some(now + spread(backoff)), Vec::new())
            }
        };
        let removed = state.removed;
        publish(self.events.as_ref(), id, events);
        match next_due {
            Some(due) if !removed => self.schedule(slot, due),
            _ => self.forget(slot),
        }
    }

    /// Writes the batched bookkeeping of unchanged polls. A poll whose fence no longer holds
    /// (or whose batch failed) is forgotten, and its meeting's next poll re-reads the snapshot.
    async fn flush_bookkeeping(&mut self) {
        if self.pending.is_empty() {
            self.pending_since = None;
            return;
        }
        let batch = std::mem::take(&mut self.pending);
        self.pending_since = None;
        let polls: Vec<UnchangedPoll> = batch.iter().map(|(_, p)| p.clone()).collect();
        let recorded = match self.store.record_unchanged_polls(&polls).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, polls = polls.len(), "cannot record unchanged polls; their meetings re-read the snapshot next poll");
                vec![false; polls.len()]
            }
        };
        for ((slot, poll), ok) in batch.into_iter().zip(recorded) {
            let Some(state) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            if state.id != poll.meeting_id {
                continue;
            }
            state.pending = false;
            if !ok {
                state.known = None;
            }
        }
    }

    /// Staleness (since the last successful poll, or since tracking began for a meeting never
    /// polled) max and p99 over meetings, the rate of each region's budget, and how long one
    /// sweep of all meetings takes at that rate.
    fn publish_gauges(&mut self, now: Instant) {
        let mut staleness = std::mem::take(&mut self.staleness);
        staleness.clear();
        staleness.extend(
            self.slots
                .iter()
                .flatten()
                .map(|m| now.duration_since(m.staleness_since()).as_secs_f64()),
        );
        let (p99, max) = if staleness.is_empty() {
            (0.0, 0.0)
        } else {
            // The smallest value that at least 99 % of meetings do not exceed.
            let rank = ((staleness.len() as f64) * 0.99).ceil() as usize;
            let rank = rank.clamp(1, staleness.len()) - 1;
            let (_, p99, above) = staleness.select_nth_unstable_by(rank, f64::total_cmp);
            let p99 = *p99;
            let max = above.iter().copied().fold(p99, f64::max);
            (p99, max)
        };
        self.staleness = staleness;
        metrics::gauge!("roster_staleness_max_seconds").set(max);
        metrics::gauge!("roster_staleness_p99_seconds").set(p99);
        metrics::gauge!("roster_meetings_tracked").set(self.index.len() as f64);
        metrics::gauge!("roster_polls_in_flight").set(self.running.len() as f64);
        for q in &self.regions {
            if let Some(rate) = self.source.current_rate(&q.region) {
                let region = q.region.to_string();
                metrics::gauge!("roster_rate_requests_per_second", "region" => region.clone())
                    .set(rate);
                metrics::gauge!("roster_sweep_estimate_seconds", "region" => region)
                    .set(q.pages_total as f64 / rate.max(f64::MIN_POSITIVE));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::chime::FetchedRoster;
    use crate::domain::{Attendee, AttendeeId, Capabilities, ExternalUserId, Roster};

    /// Rosters without HTTP: every meeting has one attendee over `pages` pages, and each
    /// fetch takes `latency`. Counts fetches in flight once every meeting was polled (until
    /// then a meeting's cost is unknown and counted as one page).
    struct FakeSource {
        pages: u32,
        latency: Duration,
        rate: Option<f64>,
        fetches: AtomicUsize,
        count_after: usize,
        in_flight: AtomicUsize,
        max_in_flight: AtomicUsize,
    }

    impl FakeSource {
        fn new(pages: u32, latency: Duration, rate: Option<f64>) -> Self {
            Self {
                pages,
                latency,
                rate,
                fetches: AtomicUsize::new(0),
                count_after: 0,
                in_flight: AtomicUsize::new(0),
                max_in_flight: AtomicUsize::new(0),
            }
        }
    }

    impl RosterSource for FakeSource {
        async fn fetch_roster(
            &self,
            _meeting: &MeetingId,
            _region: &Region,
            _existed: bool,
        ) -> crate::chime::Result<FetchedRoster> {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            if self.fetches.fetch_add(1, Ordering::SeqCst) >= self.count_after {
                self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            }
            tokio::time::sleep(self.latency).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            let attendee = Attendee {
                attendee_id: AttendeeId::parse("00000000-0000-0000-0000-000000000001").map_err(
                    |e| crate::chime::ChimeError::Malformed {
                        message: e.to_string(),
                    },
                )?,
                external_user_id: ExternalUserId::new("someone"),
                capabilities: Capabilities::DEFAULT,
            };
            Ok(FetchedRoster {
                roster: Roster::new(vec![attendee]),
                pages: self.pages,
                requests: self.pages,
                throttled: 0,
            })
        }

        fn current_rate(&self, _region: &Region) -> Option<f64> {
            self.rate
        }
    }

    fn options(interval: Duration, concurrency: usize) -> SchedulerOptions {
        SchedulerOptions {
            interval,
            jitter: 0.0,
            concurrency,
            failure_backoff_cap: Duration::from_secs(1),
            refresh_every: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(5),
        }
    }

    async fn store_with(meetings: usize) -> (Store, Vec<MeetingId>) {
        let store = Store::connect("sqlite::memory:", 1).await.unwrap();
        store.migrate().await.unwrap();
        let region = Region::parse("us-east-1").unwrap();
        let mut ids = Vec::new();
        for i in 0..meetings {
            let id = MeetingId::parse(&format!("00000000-0000-0000-0000-{i:012}")).unwrap();
            store
                .add_meeting(&id, &region, None, domain::now())
                .await
                .unwrap();
            ids.push(id);
        }
        (store, ids)
    }

    /// Runs the scheduler for `for_` and returns every poll report, in order.
    async fn run_for(
        source: Arc<FakeSource>,
        store: &Store,
        opts: SchedulerOptions,
        for_: Duration,
    ) -> Vec<(MeetingId, &'static str)> {
        let reports = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&reports);
        let scheduler = Scheduler::new(source, store.clone(), opts).with_poll_observer(
            move |r: &PollReport<'_>| {
                seen.lock().unwrap().push((r.meeting_id.clone(), r.outcome));
            },
        );
        let cancel = CancellationToken::new();
        let run = tokio::spawn(scheduler.run(cancel.clone()));
        tokio::time::sleep(for_).await;
        cancel.cancel();
        run.await.unwrap();
        reports.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn unchanged_polls_are_recorded_in_batches_and_all_of_them_by_shutdown() {
        let (store, ids) = store_with(3).await;
        let source = Arc::new(FakeSource::new(1, Duration::from_millis(5), None));
        let reports = run_for(
            source,
            &store,
            options(Duration::from_millis(30), 4),
            Duration::from_millis(1500),
        )
        .await;
        for id in &ids {
            let polls = reports.iter().filter(|(m, _)| m == id).count();
            assert!(polls >= 10, "{id} polled {polls} times");
            let recorded = store.get_meeting(id).await.unwrap().unwrap().poll_seq;
            assert_eq!(
                recorded, polls as i64,
                "every poll of {id} is in the bookkeeping"
            );
        }
        let events = store.events_since(0, 100).await.unwrap();
        assert_eq!(events.len(), 3, "one join per meeting, nothing else");
    }

    #[tokio::test]
    async fn when_the_budget_is_short_meetings_take_turns_stalest_first() {
        let (store, ids) = store_with(8).await;
        // One poll at a time, each 20 ms: 8 meetings take 160 ms, but each is due every 1 ms.
        let source = Arc::new(FakeSource::new(1, Duration::from_millis(20), None));
        let reports = run_for(
            source,
            &store,
            options(Duration::from_millis(1), 1),
            Duration::from_millis(1200),
        )
        .await;
        let counts: Vec<usize> = ids
            .iter()
            .map(|id| reports.iter().filter(|(m, _)| m == id).count())
            .collect();
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min >= 3, "{counts:?}");
        assert!(max - min <= 1, "freshness degrades evenly: {counts:?}");
        // After the first round, the order repeats: the stalest goes next.
        let order: Vec<&MeetingId> = reports.iter().map(|(m, _)| m).collect();
        for (i, m) in order.iter().enumerate().skip(8) {
            assert_eq!(*m, order[i - 8], "poll {i} is not the stalest meeting");
        }
    }

    #[tokio::test]
    async fn a_region_promises_its_polls_at_most_half_a_second_of_its_rate() {
        let (store, _) = store_with(12).await;
        // 10 requests/s → 5 pages of lookahead: with 3 pages a meeting, two polls at once,
        // however high the concurrency limit.
        let source = Arc::new(FakeSource {
            count_after: 20,
            ..FakeSource::new(3, Duration::from_millis(20), Some(10.0))
        });
        let reports = run_for(
            Arc::clone(&source),
            &store,
            options(Duration::from_millis(1), 16),
            Duration::from_millis(800),
        )
        .await;
        assert!(reports.len() >= 30, "{}", reports.len());
        assert_eq!(source.max_in_flight.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn bookkeeping_of_a_meeting_removed_meanwhile_is_refused_and_forgotten() {
        let (store, ids) = store_with(1).await;
        let region = Region::parse("us-east-1").unwrap();
        let source = FakeSource::new(1, Duration::ZERO, None);
        let first = poll(
            &source,
            &store,
            &ids[0],
            &region,
            None,
            Bookkeeping::Deferred,
        )
        .await;
        assert!(matches!(first.outcome, PollOutcome::Changed(_)));
        let second = poll(
            &source,
            &store,
            &ids[0],
            &region,
            first.known,
            Bookkeeping::Deferred,
        )
        .await;
        assert!(matches!(second.outcome, PollOutcome::Unchanged));
        let record = second.deferred.unwrap();
        assert_eq!(record.expected_seq, 1);
        store.remove_meeting(&ids[0], domain::now()).await.unwrap();
        let recorded = store.record_unchanged_polls(&[record]).await.unwrap();
        assert_eq!(recorded, vec![false]);
    }
}
