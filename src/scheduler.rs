//! The polling loop: decides which meeting is polled when, launches each poll as a task, and
//! schedules around its outcome.
//!
//! The parts live beside it:
//! - [`poll`]: one poll, fetch → diff → `store.apply`, and the rules for endings and
//!   departures;
//! - [`queue`]: due order (stalest first; under `change_aware` earliest due first, the
//!   `poll.max_interval` deadline first of all, and early launches when nothing is due), each
//!   region's page window, the credential breaker;
//! - [`cadence`]: how long each meeting waits between polls (`poll.strategy`);
//! - [`bookkeeping`]: the batch of unchanged polls' bookkeeping;
//! - [`gauges`]: what the loop publishes about itself;
//! - [`meetings`]: re-reading the meeting list (and, in cluster mode, the leases).
//!
//! Hints ([`Hint`], from `crate::meeting_events` through [`Scheduler::with_hints`]) make a
//! meeting due now; the queue ranks them (see [`queue`]). A hint never changes what a poll
//! records.
//!
//! The "who is due" decision lives only in [`queue::Queue::take_due`], called from
//! [`Scheduler::tick`]. A failing meeting backs off on its own (at least as long as any
//! Retry-After) and never delays the others. The loop never writes to the store itself except
//! through the bookkeeping batch; it never diffs and never touches the SDK.

mod bookkeeping;
mod cadence;
mod gauges;
mod meetings;
mod poll;
mod queue;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::{Notify, broadcast, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::chime::RosterSource;
use crate::config::{PollStrategy, Settings};
use crate::domain::{MeetingId, Region};
use crate::health::Health;
use crate::store::{LeaseToken, MeetingsVersion, ReplicaId, Store, StoredEvent};

pub use bookkeeping::{BOOKKEEPING_BATCH, BOOKKEEPING_EVERY};
pub use poll::{Known, PollFailure, PollKind, PollOutcome, poll_once};
pub use queue::{DENIED_MEETINGS_TO_TRIP, LOOKAHEAD};

use poll::{Bookkeeping, Polled};
use queue::{Evidence, PageClaim, Queue, Transition};

/// The meeting list is read in full at least this often, even when the probe says nothing
/// changed.
const FULL_REFRESH_EVERY: Duration = Duration::from_secs(60);

/// How often `change_aware` re-shares each region's budget between its meetings.
const CADENCE_EVERY: Duration = Duration::from_secs(1);

/// How often the gauges are published.
const GAUGES_EVERY: Duration = Duration::from_secs(1);

/// The loop ticks at least this often even when nothing is due (health, a region's rate
/// growing its page window, a breaker's next probe).
const IDLE_TICK: Duration = Duration::from_secs(1);

/// While the database does not answer, it is asked again this often.
const DB_RETRY_EVERY: Duration = Duration::from_secs(1);

/// At shutdown the pending bookkeeping gets at least this long, even when stuck writes used up
/// the grace period.
const FLUSH_AT_STOP_AT_LEAST: Duration = Duration::from_secs(1);

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
    /// `roster-sync meetings` (and, in cluster mode, leases gained or lost) are noticed
    /// without a restart.
    pub refresh_every: Duration,
    /// How long in-flight polls may take to finish after shutdown was asked for.
    pub shutdown_grace: Duration,
    /// How the budget is shared when it cannot poll every meeting each `interval`.
    pub strategy: PollStrategy,
    /// `change_aware`: the longest a meeting waits between polls.
    pub max_interval: Duration,
}

impl SchedulerOptions {
    /// The options the configuration asks for.
    pub fn from_settings(s: &Settings) -> Self {
        Self {
            interval: s.poll.interval,
            jitter: s.poll.jitter,
            concurrency: s.poll.concurrency,
            failure_backoff_cap: s.poll.failure_backoff_cap,
            refresh_every: {
                let every = s.poll.interval.min(Duration::from_secs(5));
                if s.cluster.enabled {
                    every.min(s.cluster.heartbeat)
                } else {
                    every
                }
            },
            shutdown_grace: s.shutdown.grace,
            strategy: s.poll.strategy,
            max_interval: s.poll.max_interval,
        }
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
    pub outcome: PollKind,
    /// Pages of the complete roster; 0 when the poll failed.
    pub pages: u32,
}

impl PollReport<'_> {
    /// The roster was fetched completely and recorded (changed or not).
    pub fn succeeded(&self) -> bool {
        self.outcome.succeeded()
    }
}

type PollObserver = Box<dyn Fn(&PollReport<'_>) + Send + Sync>;

/// What a meeting event tells the scheduler (see [`Scheduler::with_hints`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    /// The meeting's roster may have changed: poll it now (a meeting this scheduler does not
    /// poll is ignored).
    Poll(MeetingId),
    /// The meeting was just tracked: re-read the meeting list now, so its first poll starts
    /// without waiting for the periodic refresh.
    Tracked(MeetingId),
}

/// Waits for the next hint; never, without a receiver.
async fn next_hint(hints: &mut Option<mpsc::Receiver<Hint>>) -> Option<Hint> {
    match hints {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Counts, logs and sends to the sink (if any) the events of one poll.
fn publish(
    sink: Option<&broadcast::Sender<StoredEvent>>,
    meeting: &MeetingId,
    region: &Region,
    events: Vec<StoredEvent>,
) {
    for e in events {
        metrics::counter!("roster_sync_events_total", "kind" => e.kind.as_str()).increment(1);
        tracing::info!(
            meeting_id = %meeting,
            region = %region,
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

/// A poll's [`PageClaim`] that wakes the loop when the poll pauses: the pages it gives back
/// may launch a waiting meeting at once.
struct WakingClaim {
    claim: PageClaim,
    wake: Arc<Notify>,
}

impl crate::chime::Pause for WakingClaim {
    fn paused(&self, paused: bool) {
        self.claim.paused(paused);
        if paused {
            self.wake.notify_one();
        }
    }
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
    queue: Queue,
    running: JoinSet<Finished>,
    /// The slot and launch time of each poll task, so a task that panicked is accounted for.
    tasks: HashMap<tokio::task::Id, (usize, Instant)>,
    refreshed_at: Option<Instant>,
    refreshes: u64,
    /// What [`Store::meetings_version`] said at the last full read; `None` forces one.
    version: Option<MeetingsVersion>,
    full_refresh_at: Option<Instant>,
    batch: bookkeeping::Batch,
    gauges_at: Option<Instant>,
    gauges: gauges::Gauges,
    /// When `change_aware` last shared the budgets out.
    cadence_at: Option<Instant>,
    events: Option<broadcast::Sender<StoredEvent>>,
    observer: Option<PollObserver>,
    health: Option<Health>,
    /// The last read of the meeting list failed: no poll is launched (its result could not be
    /// recorded) and the list is re-read every [`DB_RETRY_EVERY`] until the database answers.
    db_down: bool,
    /// Each poll task gets a child of this token; [`Scheduler::run`] makes it a child of the
    /// token it stops by, so shutdown cancels every poll's fetch at once.
    polls_cancel: CancellationToken,
    /// Cluster mode: this replica's id; only meetings it holds the lease of are polled, each
    /// poll fenced by its lease token (see `crate::cluster`).
    cluster: Option<ReplicaId>,
    /// Cluster mode: the lease token of each queued meeting, as of the last list read.
    fences: HashMap<MeetingId, LeaseToken>,
    /// Woken when a poll pauses and gives its pages back, so a waiting meeting can use them.
    wake: Arc<Notify>,
    /// Hints from meeting events; `None` once closed or when there is no intake.
    hints: Option<mpsc::Receiver<Hint>>,
    /// Hinted meetings whose poll was in flight: hinted again once it ends.
    rehint: HashSet<MeetingId>,
}

impl<S: RosterSource> Scheduler<S> {
    /// A scheduler with no meetings yet; the first [`Scheduler::tick`] reads them.
    pub fn new(source: Arc<S>, store: Store, opts: SchedulerOptions) -> Self {
        Self {
            source,
            store,
            queue: Queue::by_due(
                (opts.strategy == PollStrategy::ChangeAware)
                    .then(|| cadence::Bounds::new(opts.interval, opts.max_interval).longest),
            ),
            opts,
            running: JoinSet::new(),
            tasks: HashMap::new(),
            refreshed_at: None,
            refreshes: 0,
            version: None,
            full_refresh_at: None,
            batch: bookkeeping::Batch::default(),
            gauges_at: None,
            gauges: gauges::Gauges::default(),
            cadence_at: None,
            events: None,
            observer: None,
            health: None,
            db_down: false,
            polls_cancel: CancellationToken::new(),
            cluster: None,
            fences: HashMap::new(),
            wake: Arc::new(Notify::new()),
            hints: None,
            rehint: HashSet::new(),
        }
        .with_hint_deadline()
    }

    /// Hinted meetings never go ahead of one waiting since its deadline.
    fn with_hint_deadline(mut self) -> Self {
        self.queue.hint_deadline =
            Some(cadence::Bounds::new(self.opts.interval, self.opts.max_interval).longest);
        self
    }

    /// Meeting events: each [`Hint`] received makes its meeting due now (coalescing is the
    /// sender's job), ranked after meetings at their `poll.max_interval` deadline.
    pub fn with_hints(mut self, rx: mpsc::Receiver<Hint>) -> Self {
        self.hints = Some(rx);
        self
    }

    /// Takes one hint: its meeting goes to the hinted queue, or waits for its poll in flight.
    fn take_hint(&mut self, hint: Hint, now: Instant) {
        match hint {
            Hint::Tracked(_) => self.refreshed_at = None,
            Hint::Poll(id) => {
                if let Some(slot) = self.queue.slot_of(&id)
                    && !self.queue.hint(slot, now)
                    && self.queue.get(slot).is_some_and(|m| m.in_flight)
                {
                    self.rehint.insert(id);
                }
            }
        }
    }

    /// Hints whose meeting's poll was in flight, once it has ended.
    fn take_rehints(&mut self, now: Instant) {
        if self.rehint.is_empty() {
            return;
        }
        let ids: Vec<MeetingId> = self.rehint.drain().collect();
        for id in ids {
            self.take_hint(Hint::Poll(id), now);
        }
    }

    /// Cluster mode: polls only the meetings whose lease replica `id` holds, each write
    /// fenced by the lease's token. The list is then read in full at every refresh, since
    /// leases move without the meeting list changing.
    pub fn with_cluster(mut self, id: ReplicaId) -> Self {
        self.cluster = Some(id);
        self
    }

    /// Records the loop's ticks, database answers, meeting list and regions in `health`.
    pub fn with_health(mut self, health: Health) -> Self {
        self.health = Some(health);
        self
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

    /// Runs until `cancel` fires, then launches nothing new: every poll's fetch, rate-budget
    /// wait and confirmation is cancelled with it (see [`poll`]), the polls already writing
    /// get up to the grace period to commit, and the pending bookkeeping is written.
    pub async fn run(mut self, cancel: CancellationToken) {
        self.polls_cancel = cancel.child_token();
        let wake = Arc::clone(&self.wake);
        loop {
            // Asleep until something can be done: a poll ends, a poll pauses (its pages are
            // free for another), a meeting is due, or a periodic duty (refresh, bookkeeping,
            // gauges) comes round. No wake-up per request.
            let until = self.next_wake(Instant::now());
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some(joined) = self.running.join_next_with_id(), if !self.running.is_empty() => {
                    self.joined(joined);
                }
                () = wake.notified() => {}
                hint = next_hint(&mut self.hints) => match hint {
                    Some(hint) => {
                        let now = Instant::now();
                        self.take_hint(hint, now);
                        while let Some(Ok(more)) = self.hints.as_mut().map(mpsc::Receiver::try_recv) {
                            self.take_hint(more, now);
                        }
                    }
                    None => self.hints = None,
                },
                () = tokio::time::sleep_until(until) => {}
            }
            // A tick only reads the meeting list and writes unchanged polls' bookkeeping, which
            // may be dropped half-way (it only widens the next change window): a database call
            // that hangs must not hold up the stop.
            tokio::select! {
                _ = cancel.cancelled() => break,
                () = self.tick() => {}
            }
        }
        self.drain().await;
    }

    /// When the loop must tick next if no poll ends or pauses first: the earliest of the next
    /// meeting's due time, the meeting list's refresh, the bookkeeping batch's deadline and the
    /// gauges, and at most [`IDLE_TICK`] away (a region's rate or breaker may let a waiting
    /// meeting go without any of those).
    fn next_wake(&self, now: Instant) -> Instant {
        let refresh_every = if self.db_down {
            DB_RETRY_EVERY.min(self.opts.refresh_every)
        } else {
            self.opts.refresh_every
        };
        [
            Some(now + IDLE_TICK),
            self.refreshed_at.map(|t| t + refresh_every),
            self.gauges_at.map(|t| t + GAUGES_EVERY),
            self.batch.due_at(),
            self.queue.next_timer(),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(now)
    }

    /// One step: re-reads the meeting list when due, writes pending bookkeeping when due,
    /// publishes gauges, launches due polls.
    pub async fn tick(&mut self) {
        let now = Instant::now();
        if let Some(h) = &self.health {
            h.ticked();
        }
        let refresh_every = if self.db_down {
            DB_RETRY_EVERY.min(self.opts.refresh_every)
        } else {
            self.opts.refresh_every
        };
        if self
            .refreshed_at
            .is_none_or(|t| now.duration_since(t) >= refresh_every)
        {
            self.refresh(now).await;
        }
        if self.batch.is_due(now) {
            self.flush_bookkeeping().await;
        }
        if self
            .gauges_at
            .is_none_or(|t| now.duration_since(t) >= GAUGES_EVERY)
        {
            self.gauges_at = Some(now);
            self.gauges
                .publish(&self.queue, self.running.len(), &*self.source, now);
            if let Some(h) = &self.health {
                h.set_regions_down(
                    self.queue
                        .regions
                        .iter()
                        .filter(|r| !r.breaker.is_up())
                        .count(),
                );
            }
        }
        if self.opts.strategy == PollStrategy::ChangeAware
            && self
                .cadence_at
                .is_none_or(|t| now.duration_since(t) >= CADENCE_EVERY)
        {
            self.cadence_at = Some(now);
            self.share_budgets();
        }
        if self.db_down {
            // A poll now could not be recorded: keep the quota for when the database is back.
            return;
        }
        self.queue.promote(now);
        self.take_rehints(now);
        if self.launch_due(now) {
            // A due meeting still has bookkeeping in the batch: write it, then poll.
            self.flush_bookkeeping().await;
            self.launch_due(now);
        }
    }

    /// `change_aware`: shares each region's current rate between its meetings (see
    /// [`cadence::allocate`]); the shares apply to the waits planned from now on.
    fn share_budgets(&mut self) {
        let bounds = cadence::Bounds::new(self.opts.interval, self.opts.max_interval);
        for r in 0..self.queue.regions.len() {
            let demands: Vec<cadence::Demand> = self
                .queue
                .slots_in(r)
                .into_iter()
                .filter_map(|s| self.queue.get(s))
                .map(|m| cadence::Demand {
                    pages: m.pages,
                    rate: m.change,
                })
                .collect();
            let region = &self.queue.regions[r];
            let rate = self.source.current_rate(&region.region);
            let level = cadence::allocate(&demands, rate, bounds);
            let was_saturated = region.level == cadence::Level::Saturated;
            if (level == cadence::Level::Saturated) != was_saturated {
                if was_saturated {
                    tracing::info!(region = %region.region, "the rate budget can poll every meeting within poll.max_interval again");
                } else {
                    tracing::warn!(
                        region = %region.region,
                        meetings = demands.len(),
                        pages = region.pages_total,
                        rate = rate.unwrap_or(f64::INFINITY),
                        max_interval = ?self.opts.max_interval,
                        "the rate budget cannot poll every meeting within poll.max_interval; polling each as often as it allows, stalest first"
                    );
                }
            }
            let previous = region.level;
            if level == cadence::Level::Ample && previous != cadence::Level::Ample {
                // The budget is ample again: no meeting waits longer than `interval` from
                // its last poll, as under `uniform`.
                for slot in self.queue.slots_in(r) {
                    let Some(m) = self.queue.get(slot) else {
                        continue;
                    };
                    if let (false, Some(fresh)) = (m.in_flight, m.fresh_at) {
                        self.queue.schedule(slot, fresh + self.opts.interval);
                    }
                }
            }
            self.queue.regions[r].level = level;
        }
    }

    /// Waits for every in-flight poll to end (those still fetching end at once, cancelled; those
    /// writing commit or roll back) or the grace period to pass, then writes the bookkeeping of
    /// the unchanged polls, bounded by what is left of the grace period (at least
    /// [`FLUSH_AT_STOP_AT_LEAST`]).
    async fn drain(&mut self) {
        self.polls_cancel.cancel();
        let in_flight = self.running.len();
        if in_flight > 0 {
            tracing::info!(in_flight, grace = ?self.opts.shutdown_grace, "stopping in-flight polls: fetches are cancelled, writes may finish");
        }
        let deadline = Instant::now() + self.opts.shutdown_grace;
        while !self.running.is_empty() {
            match tokio::time::timeout_at(deadline, self.running.join_next_with_id()).await {
                Ok(Some(joined)) => self.joined(joined),
                Ok(None) => {}
                Err(_) => {
                    let left: Vec<String> = self
                        .queue
                        .meetings()
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
        let flush_by = deadline.max(Instant::now() + FLUSH_AT_STOP_AT_LEAST);
        if tokio::time::timeout_at(flush_by, self.flush_bookkeeping())
            .await
            .is_err()
        {
            tracing::warn!(
                "the database did not take the pending bookkeeping in time; the next start re-reads those snapshots"
            );
        }
    }

    /// Launches due polls, stalest first, while the concurrency limit, each region's page
    /// window and breaker allow. Returns true when a due meeting was held back because its
    /// previous poll's bookkeeping is not written yet.
    fn launch_due(&mut self, now: Instant) -> bool {
        let capacity = self.opts.concurrency.saturating_sub(self.running.len());
        let source = Arc::clone(&self.source);
        let due = self.queue.take_due(now, capacity, self.opts.interval, |r| {
            source.current_rate(r)
        });
        if due.hinted > 0 {
            metrics::counter!("roster_sync_meeting_events_hint_polls_total")
                .increment(u64::from(due.hinted));
        }
        for (slot, claim) in due.launch {
            self.launch(slot, claim);
        }
        due.held
    }

    fn launch(&mut self, slot: usize, claim: PageClaim) {
        let Some(state) = self.queue.get_mut(slot) else {
            return;
        };
        let known = state.known.take();
        let id = state.id.clone();
        let r = state.region;
        let region = Arc::clone(&self.queue.regions[r].region);
        let source = Arc::clone(&self.source);
        let store = self.store.clone();
        let cancel = self.polls_cancel.child_token();
        let fence = self.fences.get(&id).copied();
        let claim = WakingClaim {
            claim,
            wake: Arc::clone(&self.wake),
        };
        // Debug level: at the default info level the span costs nothing per poll; the
        // warnings of a failed poll name the meeting themselves.
        let span = tracing::debug_span!("poll", meeting_id = %id, region = %region);
        let task = self.running.spawn(
            async move {
                let started = Instant::now();
                let polled = poll::poll(
                    &*source,
                    &store,
                    &id,
                    &region,
                    known,
                    Bookkeeping::Deferred,
                    fence,
                    &claim,
                    &cancel,
                )
                .await;
                drop(claim);
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
                let meeting = self.queue.get(slot).map(|m| &m.id);
                tracing::error!(meeting_id = ?meeting, error = %e, "a poll task failed");
                let failure = PollFailure::other(format!("poll task failed: {e}"));
                Finished {
                    slot,
                    polled: Polled::plain(PollOutcome::Failed(failure), None),
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
        let kind = polled.outcome.kind();
        metrics::histogram!("roster_sync_poll_duration_seconds")
            .record(now.duration_since(started).as_secs_f64());
        let Some(region) = self.queue.get(slot).map(|m| m.region) else {
            metrics::counter!("roster_sync_polls_total", "outcome" => kind.label()).increment(1);
            return;
        };
        let region_name = Arc::clone(&self.queue.regions[region].region);
        metrics::counter!(
            "roster_sync_polls_total",
            "region" => region_name.to_string(),
            "outcome" => kind.label()
        )
        .increment(1);
        let Some(state) = self.queue.get_mut(slot) else {
            return;
        };
        if let Some(observer) = &self.observer {
            observer(&PollReport {
                meeting_id: &state.id,
                started,
                finished: now,
                outcome: kind,
                pages: polled.pages,
            });
        }
        state.in_flight = false;
        state.known = polled.known;
        if let Some(record) = polled.deferred {
            state.pending = true;
            self.batch.push(slot, record, now);
        }
        if polled.pages > 0 {
            self.queue.set_pages(slot, polled.pages);
        }
        let evidence = match &polled.outcome {
            PollOutcome::Unchanged | PollOutcome::Changed(_) | PollOutcome::Ended(_) => {
                Evidence::Answered
            }
            PollOutcome::Failed(f) if f.denied => {
                Evidence::Denied(f.code.as_deref().unwrap_or_default())
            }
            PollOutcome::Conflict | PollOutcome::Failed(_) | PollOutcome::Cancelled => {
                Evidence::Neither
            }
        };
        let meetings = self.queue.regions[region].meetings;
        let transition = self.queue.regions[region].breaker.observe(
            slot,
            evidence,
            meetings,
            now,
            self.opts.interval,
        );
        self.on_transition(region, transition, now);

        let interval = self.opts.interval;
        let jitter = self.opts.jitter;
        let spread = |d: Duration| d.mul_f64(1.0 + rand::rng().random_range(-jitter..=jitter));
        let strategy = self.opts.strategy;
        let bounds = cadence::Bounds::new(interval, self.opts.max_interval);
        let level = self.queue.regions[region].level;
        let Some(state) = self.queue.get_mut(slot) else {
            return;
        };
        let id = state.id.clone();
        let outcome = kind.label();
        // The wait until a recorded poll's successor: `interval` (uniform), or as
        // `change_aware` shares the budget, after averaging in what this poll found.
        let recorded = |state: &mut queue::MeetingState, changes: usize| {
            gauges::poll_succeeded(&region_name, now.duration_since(state.staleness_since()));
            state.failures = 0;
            if let Some(previous) = state.fresh_at {
                state
                    .change
                    .observe(changes, started.saturating_duration_since(previous));
            }
            state.fresh_at = Some(started);
            let demand = cadence::Demand {
                pages: state.pages,
                rate: state.change,
            };
            let wait = cadence::wait(strategy, level, &demand, bounds);
            match strategy {
                PollStrategy::Uniform => started + spread(wait),
                PollStrategy::ChangeAware => started + spread(wait).min(bounds.longest),
            }
        };
        let (next_due, events) = match polled.outcome {
            PollOutcome::Unchanged => (Some(recorded(state, 0)), Vec::new()),
            PollOutcome::Changed(events) => (Some(recorded(state, events.len())), events),
            PollOutcome::Ended(events) => {
                tracing::info!(meeting_id = %id, region = %region_name, outcome, left = events.len(), "meeting ended");
                state.removed = true;
                (None, events)
            }
            PollOutcome::Cancelled => (Some(now), Vec::new()),
            PollOutcome::Conflict => {
                tracing::info!(meeting_id = %id, region = %region_name, outcome, "snapshot changed elsewhere; re-reading it next poll");
                self.refreshed_at = None;
                self.version = None;
                (Some(now), Vec::new())
            }
            PollOutcome::Failed(failure) if failure.code.is_none() => {
                // The database failed, not the meeting: no backoff of its own (that would
                // leave it stale long after the database is back); the list is re-read at
                // once, which pauses polling while the database is away.
                tracing::warn!(meeting_id = %id, region = %region_name, outcome, error = %failure, "poll not recorded");
                self.refreshed_at = None;
                (Some(now + spread(interval)), Vec::new())
            }
            PollOutcome::Failed(failure) => {
                state.failures = state.failures.saturating_add(1);
                let backoff = interval
                    .saturating_mul(1u32 << state.failures.min(16))
                    .min(self.opts.failure_backoff_cap);
                let wait = spread(backoff).max(failure.retry_after.unwrap_or_default());
                tracing::warn!(
                    meeting_id = %id,
                    region = %region_name,
                    outcome,
                    status = failure.status,
                    code = failure.code.as_deref(),
                    request_id = failure.request_id.as_deref(),
                    failures = state.failures,
                    retry_in = ?wait,
                    error = %failure,
                    "poll failed"
                );
                (Some(now + wait), Vec::new())
            }
        };
        let removed = state.removed;
        publish(self.events.as_ref(), &id, &region_name, events);
        match next_due {
            Some(due) if !removed => self.queue.schedule(slot, due),
            _ => self.queue.forget(slot),
        }
    }

    /// Logs a region going down or coming back; when it comes back, its meetings that backed
    /// off while it was down are due at once.
    fn on_transition(&mut self, region: usize, transition: Transition, now: Instant) {
        let name = self.queue.region_name(region).to_string();
        match transition {
            Transition::None => {}
            Transition::Down { code } => {
                tracing::error!(
                    region = %name,
                    code = %code,
                    "the service refuses this region's credentials; polling stops except one probe per interval until a request succeeds"
                );
            }
            Transition::Up => {
                tracing::info!(region = %name, "the service accepts this region's credentials again; polling resumes");
                let interval = self.opts.interval;
                for slot in self.queue.slots_in(region) {
                    let Some(state) = self.queue.get_mut(slot) else {
                        continue;
                    };
                    if state.failures > 0 && !state.in_flight {
                        state.failures = 0;
                        let due = now + interval.mul_f64(rand::rng().random_range(0.0..0.1));
                        self.queue.schedule(slot, due);
                    }
                }
            }
        }
    }

    /// Writes the batched bookkeeping of unchanged polls. A poll whose fence no longer holds
    /// (or whose batch failed) is forgotten, and its meeting's next poll re-reads the snapshot.
    async fn flush_bookkeeping(&mut self) {
        for (slot, poll, ok) in self.batch.flush(&self.store).await {
            let Some(state) = self.queue.get_mut(slot) else {
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
}

#[cfg(test)]
mod tests;
