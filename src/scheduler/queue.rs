//! Who is due, in what order, and how much of a region's budget polls in flight may hold.
//!
//! Meetings wait in a timer heap until their due time, then in their region's ready heap,
//! **stalest first** (never polled, then the longest since the last successful poll), so
//! when the budget cannot poll every meeting each interval freshness degrades evenly. Under
//! `change_aware` ([`Queue::by_due`]) polled meetings go earliest due first instead, except
//! that one whose last successful poll started the longest allowed wait ago goes before them
//! all (the `poll.max_interval` deadline); and when nothing is due and no poll is sending,
//! one of the meetings due soonest is launched early (work-conserving). A
//! meeting's **cost is its pages** (those of its last complete roster): a region launches
//! polls only while the pages of polls in flight are under [`LOOKAHEAD`] seconds of its
//! current rate. A poll that sleeps in a backoff or a Retry-After, or confirms departures,
//! gives its pages back to the window meanwhile ([`PageClaim`]), so a failing meeting never
//! holds the others back.
//!
//! Each region also has a [`Breaker`]: when meetings of a region keep failing with
//! credential or authorization errors and none succeeds, the region is down and only one
//! probe poll per interval is launched until one succeeds.
//!
//! A **hint** (a meeting event said the roster may have changed, see `crate::meeting_events`)
//! puts a meeting in its region's hinted heap ([`Queue::hint`]): it goes after meetings never
//! polled and those at their deadline (`poll.max_interval` less 10 %, under either strategy),
//! and before every other due meeting, within the same page window and budget.
//!
//! It holds scheduling state only, in memory: it never touches the store or the network.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::cadence::{ChangeRate, Level};
use super::poll::Known;
use crate::chime::Pause;
use crate::deadline::Later as _;
use crate::domain::{MeetingId, Region};

/// Seconds of a region's current rate that may be promised to polls in flight. Half a second
/// keeps the budget busy (the next poll is already waiting when one finishes) while a poll
/// waits at most about this long for its pages.
pub const LOOKAHEAD: Duration = Duration::from_millis(500);

/// Credential failures from this many different meetings of a region (or from all of them,
/// if it has fewer), with no success between, put the region down.
pub const DENIED_MEETINGS_TO_TRIP: usize = 3;

/// What a poll of a meeting with `pages` pages is expected to spend: at least one request
/// (a meeting never polled yet counts one).
pub(super) fn cost(pages: u32) -> u32 {
    pages.max(1)
}

/// Per-meeting scheduling state, in memory only; the store holds everything that matters.
#[derive(Debug)]
pub(super) struct MeetingState {
    pub id: MeetingId,
    pub region: usize,
    pub in_flight: bool,
    pub failures: u32,
    /// The recorded state as of the last poll, so an unchanged poll reads nothing.
    pub known: Option<Known>,
    /// When the last successful poll started; `None` until one succeeds. Staleness is
    /// measured from here.
    pub fresh_at: Option<Instant>,
    /// When the scheduler first saw the meeting: its staleness until a poll succeeds.
    pub seen_at: Instant,
    /// Pages of the last complete roster (0 until one arrived): the meeting's cost.
    pub pages: u32,
    /// An unchanged poll's bookkeeping waits in the batch: flush it before polling again.
    pub pending: bool,
    /// Bumped whenever the meeting is queued, so older queue entries are ignored.
    version: u32,
    /// The refresh that last saw it active.
    pub seen_in: u64,
    /// No longer active: dropped when its poll in flight finishes.
    pub removed: bool,
    /// What its polls found changing: `change_aware` spends the budget by it.
    pub change: ChangeRate,
    /// When a hint made it due, until a poll of it launches; its hinted-heap entry is live
    /// only while this holds that entry's time.
    pub hinted: Option<Instant>,
}

impl MeetingState {
    pub fn staleness_since(&self) -> Instant {
        self.fresh_at.unwrap_or(self.seen_at)
    }
}

/// A poll's place in its region's page window. Taken at launch, given back while the poll
/// pauses (see [`Pause`]) and when it is dropped, so the window always counts only polls that
/// are sending `ListAttendees` requests.
#[derive(Debug)]
pub(super) struct PageClaim {
    window: Arc<AtomicU32>,
    pages: u32,
    held: AtomicBool,
}

impl PageClaim {
    fn take(window: &Arc<AtomicU32>, pages: u32) -> Self {
        window.fetch_add(pages, Ordering::Relaxed);
        Self {
            window: Arc::clone(window),
            pages,
            held: AtomicBool::new(true),
        }
    }
}

impl Pause for PageClaim {
    fn paused(&self, paused: bool) {
        if paused {
            if self.held.swap(false, Ordering::Relaxed) {
                self.window.fetch_sub(self.pages, Ordering::Relaxed);
            }
        } else if !self.held.swap(true, Ordering::Relaxed) {
            self.window.fetch_add(self.pages, Ordering::Relaxed);
        }
    }
}

impl Drop for PageClaim {
    fn drop(&mut self) {
        self.paused(true);
    }
}

/// How a finished poll bears on its region's credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Evidence<'a> {
    /// The service answered this meeting (a recorded poll or a confirmed end).
    Answered,
    /// `ListAttendees` was refused for credential or authorization reasons, with this code.
    Denied(&'a str),
    /// Anything else: says nothing about the credentials.
    Neither,
}

/// What a region's breaker did with a poll's evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Transition {
    None,
    /// The region is down: its credentials are refused.
    Down {
        code: String,
    },
    /// The region answered again.
    Up,
}

/// A region's credential breaker. Up: every due meeting may be polled. Down: one probe poll
/// per interval, until one is answered.
#[derive(Debug, Default)]
pub(super) struct Breaker {
    /// Meetings (slots) refused since the last answer.
    denied: HashSet<usize>,
    down: Option<Down>,
}

#[derive(Debug)]
struct Down {
    next_probe: Instant,
    probing: bool,
}

impl Breaker {
    pub fn is_up(&self) -> bool {
        self.down.is_none()
    }

    /// Whether a poll may be launched now; while down, at most one probe per `interval`.
    fn admit(&mut self, now: Instant, interval: Duration) -> bool {
        match &mut self.down {
            None => true,
            Some(d) if !d.probing && now >= d.next_probe => {
                d.probing = true;
                d.next_probe = now.later_by(interval);
                true
            }
            Some(_) => false,
        }
    }

    /// Takes a finished poll's evidence. `meetings` is how many meetings the region has.
    pub fn observe(
        &mut self,
        slot: usize,
        evidence: Evidence<'_>,
        meetings: usize,
        now: Instant,
        interval: Duration,
    ) -> Transition {
        if let Some(d) = &mut self.down {
            d.probing = false;
        }
        match evidence {
            Evidence::Answered => {
                self.denied.clear();
                if self.down.take().is_some() {
                    Transition::Up
                } else {
                    Transition::None
                }
            }
            Evidence::Denied(code) => {
                self.denied.insert(slot);
                let needed = DENIED_MEETINGS_TO_TRIP.min(meetings.max(1));
                if self.down.is_none() && self.denied.len() >= needed {
                    self.down = Some(Down {
                        next_probe: now.later_by(interval),
                        probing: false,
                    });
                    Transition::Down {
                        code: code.to_owned(),
                    }
                } else {
                    Transition::None
                }
            }
            Evidence::Neither => Transition::None,
        }
    }
}

/// A wait within this of the longest allowed counts as having reached it ([`Queue::by_due`]).
const URGENT_MARGIN: Duration = Duration::from_millis(1);

/// Timers [`Queue::pull_early`] looks at before giving up: those due soonest may belong to
/// meetings polled less than an interval ago or to another region.
const EARLY_SCAN: usize = 32;

/// One control region: its meetings due now, and what its polls in flight cost.
#[derive(Debug)]
pub(super) struct RegionQueue {
    pub region: Arc<Region>,
    /// Due meetings, stalest first: (last success, slot, version); never polled (`None`)
    /// sorts first. With [`Queue::by_due`] the key of a polled meeting is its due time, or
    /// its last success once the longest wait since then is reached (it goes first).
    ready: BinaryHeap<Reverse<(Option<Instant>, usize, u32)>>,
    /// Pages held by polls in flight that are sending; shared with their [`PageClaim`]s.
    window: Arc<AtomicU32>,
    /// Pages of every meeting of the region (last complete rosters): a sweep's cost.
    pub pages_total: u64,
    /// Meetings tracked in the region.
    pub meetings: usize,
    pub breaker: Breaker,
    /// How `change_aware` last shared the region's budget between its meetings.
    pub level: Level,
    /// Hinted meetings, earliest hint first: (hinted at, slot).
    hinted: BinaryHeap<Reverse<(Instant, usize)>>,
}

/// Every tracked meeting's scheduling state, by slot, with the timer and ready heaps.
#[derive(Debug, Default)]
pub(super) struct Queue {
    /// Meeting states by slot; `None` is a free slot.
    slots: Vec<Option<MeetingState>>,
    free: Vec<usize>,
    index: HashMap<MeetingId, usize>,
    pub regions: Vec<RegionQueue>,
    /// Meetings waiting for their due time: (due, slot, version).
    timers: BinaryHeap<Reverse<(Instant, usize, u32)>>,
    next_region: usize,
    /// `Some(longest)`: due meetings that have been polled go earliest due first instead of
    /// stalest first (`change_aware`: waits differ, and the earliest due is the one furthest
    /// past its planned wait), except that a meeting `longest` after its last successful poll
    /// started (its planned wait reached `longest`, or it has been queued that long) goes
    /// before all of them, oldest first: it is the one `poll.max_interval` is about to bound.
    /// When none is due and no poll is sending, one of those due soonest goes early
    /// ([`Queue::pull_early`]).
    by_due: Option<Duration>,
    /// The longest a polled meeting may wait since its last successful poll started before it
    /// goes ahead of hinted meetings; `None`: hinted meetings go before every polled one.
    pub hint_deadline: Option<Duration>,
}

/// What [`Queue::take_due`] chose.
#[derive(Debug, Default)]
pub(super) struct Due {
    /// Slots to launch now, each with its page claim already taken.
    pub launch: Vec<(usize, PageClaim)>,
    /// A due meeting was held back because its previous poll's bookkeeping is not written.
    pub held: bool,
    /// Of `launch`, the polls a hint made due.
    pub hinted: u32,
}

impl Queue {
    /// An empty queue; `by_due` (`Some(longest wait)`) orders due meetings that have been
    /// polled by due time rather than by staleness, those `longest` after their last poll
    /// first, and launches early when nothing is due. Meetings never polled go first either
    /// way.
    pub fn by_due(by_due: Option<Duration>) -> Self {
        Self {
            by_due,
            ..Self::default()
        }
    }

    pub fn get(&self, slot: usize) -> Option<&MeetingState> {
        self.slots.get(slot).and_then(Option::as_ref)
    }

    pub fn get_mut(&mut self, slot: usize) -> Option<&mut MeetingState> {
        self.slots.get_mut(slot).and_then(Option::as_mut)
    }

    pub fn slot_of(&self, id: &MeetingId) -> Option<usize> {
        self.index.get(id).copied()
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Slots in use or free: every slot is below this.
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    pub fn meetings(&self) -> impl Iterator<Item = &MeetingState> {
        self.slots.iter().flatten()
    }

    /// Slots of the meetings of region `r`.
    pub fn slots_in(&self, r: usize) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&s| self.get(s).is_some_and(|m| m.region == r))
            .collect()
    }

    /// Starts tracking `id` in `region`, due at `due`.
    pub fn insert(
        &mut self,
        id: MeetingId,
        region: Region,
        now: Instant,
        due: Instant,
        generation: u64,
    ) {
        let region = self.region_index(region);
        let state = MeetingState {
            id: id.clone(),
            region,
            in_flight: false,
            failures: 0,
            known: None,
            fresh_at: None,
            seen_at: now,
            pages: 0,
            pending: false,
            version: 0,
            seen_in: generation,
            removed: false,
            change: ChangeRate::default(),
            hinted: None,
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
        self.index.insert(id, slot);
        let queue = &mut self.regions[region];
        queue.pages_total += u64::from(cost(0));
        queue.meetings += 1;
        self.schedule(slot, due);
    }

    fn region_index(&mut self, region: Region) -> usize {
        if let Some(i) = self.regions.iter().position(|r| *r.region == region) {
            return i;
        }
        self.regions.push(RegionQueue {
            region: Arc::new(region),
            ready: BinaryHeap::new(),
            window: Arc::new(AtomicU32::new(0)),
            pages_total: 0,
            meetings: 0,
            breaker: Breaker::default(),
            level: Level::Ample,
            hinted: BinaryHeap::new(),
        });
        self.regions.len() - 1
    }

    /// The region name of region index `r`.
    pub fn region_name(&self, r: usize) -> &Region {
        &self.regions[r].region
    }

    /// Stops tracking the meeting in `slot`: at once, or when its poll in flight finishes.
    pub fn forget(&mut self, slot: usize) {
        let Some(state) = self.get_mut(slot) else {
            return;
        };
        if state.in_flight {
            state.removed = true;
            return;
        }
        if let Some(state) = self.slots[slot].take() {
            self.index.remove(&state.id);
            let queue = &mut self.regions[state.region];
            queue.pages_total -= u64::from(cost(state.pages));
            queue.meetings -= 1;
            queue.breaker.denied.remove(&slot);
        }
        self.free.push(slot);
    }

    /// Queues the meeting in `slot` to become due at `due`; earlier queue entries of it are
    /// void. With [`Queue::by_due`], a polled meeting due before its deadline (its last
    /// successful poll's start plus the longest wait) gets a second timer at the deadline: if
    /// it is still waiting then, it goes ahead of every due meeting ([`Queue::promote`]).
    pub fn schedule(&mut self, slot: usize, due: Instant) {
        let longest = self.by_due;
        if let Some(state) = self.get_mut(slot) {
            state.version = state.version.wrapping_add(1);
            let version = state.version;
            let deadline = longest
                .zip(state.fresh_at)
                .map(|(longest, fresh)| fresh.later_by(longest))
                .filter(|&deadline| deadline > due);
            self.timers.push(Reverse((due, slot, version)));
            if let Some(deadline) = deadline {
                self.timers.push(Reverse((deadline, slot, version)));
            }
        }
    }

    /// Records the pages of a complete roster as the meeting's cost.
    pub fn set_pages(&mut self, slot: usize, pages: u32) {
        let Some(state) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let queue = &mut self.regions[state.region];
        queue.pages_total =
            queue.pages_total - u64::from(cost(state.pages)) + u64::from(cost(pages));
        state.pages = pages;
    }

    /// The earliest due time waiting in the timer heap (possibly of an entry made void since).
    pub fn next_timer(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((due, _, _))| *due)
    }

    /// Moves meetings whose due time has come to their region's ready queue.
    pub fn promote(&mut self, now: Instant) {
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
            let key = match (state.fresh_at, self.by_due) {
                // Waits are planned from the poll's start, which is `fresh_at`.
                (Some(fresh), Some(longest))
                    if due
                        .saturating_duration_since(fresh)
                        .saturating_add(URGENT_MARGIN)
                        < longest =>
                {
                    Some(due)
                }
                (stalest, _) => stalest,
            };
            self.regions[state.region]
                .ready
                .push(Reverse((key, slot, version)));
        }
    }

    /// Chooses due polls to launch, stalest first, at most `capacity`, while each region's
    /// page window and breaker allow. `rate_of` gives a region's current request rate
    /// (`None`: unlimited). Marks the chosen meetings in flight.
    pub fn take_due(
        &mut self,
        now: Instant,
        capacity: usize,
        interval: Duration,
        rate_of: impl Fn(&Region) -> Option<f64>,
    ) -> Due {
        let mut due = Due::default();
        let regions = self.regions.len();
        if regions == 0 {
            return due;
        }
        // Regions take turns, so one region's backlog never starves another.
        self.next_region = (self.next_region + 1) % regions;
        for offset in 0..regions {
            let r = (self.next_region + offset) % regions;
            let window = rate_of(&self.regions[r].region)
                .map_or(f64::INFINITY, |rate| rate * LOOKAHEAD.as_secs_f64());
            // A hinted meeting whose bookkeeping is not written yet holds the hints back
            // until the caller wrote it (`held`).
            let mut hints_held = false;
            while due.launch.len() < capacity {
                let queue = &self.regions[r];
                let used = queue.window.load(Ordering::Relaxed);
                if used > 0 && f64::from(used) >= window {
                    break;
                }
                let hint = if hints_held { None } else { self.live_hint(r) };
                let queue = &self.regions[r];
                let top = queue.ready.peek().copied();
                let from_hint = match (hint, top) {
                    (None, None) => {
                        if used == 0 && self.pull_early(r, now, interval) {
                            continue;
                        }
                        break;
                    }
                    (Some(_), None) => true,
                    (hint, Some(Reverse((key, slot, version)))) => {
                        let stale = self
                            .get(slot)
                            .is_none_or(|s| s.version != version || s.in_flight);
                        if stale {
                            self.regions[r].ready.pop();
                            continue;
                        }
                        hint.is_some() && !self.ahead_of_hints(key, now)
                    }
                };
                let slot = if from_hint {
                    let Some(slot) = hint else { break };
                    if self.get(slot).is_some_and(|s| s.pending) {
                        hints_held = true;
                        due.held = true;
                        continue;
                    }
                    slot
                } else {
                    let Some(Reverse((_, slot, _))) = top else {
                        break;
                    };
                    if self.get(slot).is_some_and(|s| s.pending) {
                        // It keeps its place: nothing behind it goes first while the caller
                        // writes its bookkeeping (`held`), then it launches.
                        due.held = true;
                        break;
                    }
                    slot
                };
                if !self.regions[r].breaker.admit(now, interval) {
                    break;
                }
                if from_hint {
                    self.regions[r].hinted.pop();
                    due.hinted += 1;
                } else {
                    self.regions[r].ready.pop();
                }
                let Some(state) = self.slots[slot].as_mut() else {
                    continue;
                };
                state.in_flight = true;
                state.hinted = None;
                let claim = PageClaim::take(&self.regions[r].window, cost(state.pages));
                due.launch.push((slot, claim));
            }
        }
        due
    }

    /// Makes the meeting in `slot` due now because of a hint, unless a poll of it is in flight
    /// (that poll may have fetched before the change: the caller hints again once it ends).
    /// A meeting already hinted keeps its first hint's place. Returns whether it is hinted.
    pub fn hint(&mut self, slot: usize, now: Instant) -> bool {
        let Some(state) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return false;
        };
        if state.in_flight || state.removed {
            return false;
        }
        if state.hinted.is_none() {
            state.hinted = Some(now);
            self.regions[state.region].hinted.push(Reverse((now, slot)));
        }
        true
    }

    /// The slot of region `r`'s earliest live hint, dropping entries made void by a launch.
    fn live_hint(&mut self, r: usize) -> Option<usize> {
        while let Some(Reverse((at, slot))) = self.regions[r].hinted.peek().copied() {
            let live = self
                .get(slot)
                .is_some_and(|s| s.hinted == Some(at) && !s.in_flight && s.region == r);
            if live {
                return Some(slot);
            }
            self.regions[r].hinted.pop();
        }
        None
    }

    /// Whether a due meeting with ready key `key` goes before hinted meetings: it was never
    /// polled, or its last successful poll started at least the deadline ago.
    fn ahead_of_hints(&self, key: Option<Instant>, now: Instant) -> bool {
        match (key, self.hint_deadline) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(since), Some(deadline)) => {
                now.saturating_duration_since(since) + URGENT_MARGIN >= deadline
            }
        }
    }

    /// Work-conserving launch: while region `r` shares its budget out ([`Level::Shared`]) and
    /// none of its meetings is due, one goes to the ready heap early, so the budget the planned
    /// waits leave idle is spent rather than lost. Called only when no poll of the region is
    /// sending, so one early poll at a time holds the window: a meeting that falls due
    /// meanwhile waits for at most that poll's requests. Of the [`EARLY_SCAN`] timers due
    /// soonest, the meetings whose last successful poll started at least `interval` ago, that
    /// are not backing off after failures and whose bookkeeping is written qualify; the one
    /// expected to have changed most per page (change rate × time since its last poll ÷
    /// pages) goes, the soonest due on a tie. Returns whether one was moved.
    fn pull_early(&mut self, r: usize, now: Instant, interval: Duration) -> bool {
        let region = &self.regions[r];
        let mean = match region.level {
            Level::Shared { mean, .. } if self.by_due.is_some() && region.breaker.is_up() => mean,
            _ => return false,
        };
        let mut aside = Vec::new();
        // (expected changes per page, index in `aside`)
        let mut best: Option<(f64, usize)> = None;
        while aside.len() < EARLY_SCAN {
            let Some(Reverse(entry)) = self.timers.pop() else {
                break;
            };
            let (_, slot, version) = entry;
            let Some(state) = self.get(slot) else {
                continue;
            };
            if state.version != version || state.in_flight {
                continue;
            }
            let since = state
                .fresh_at
                .map(|fresh| now.saturating_duration_since(fresh))
                .filter(|&since| since >= interval);
            if let Some(since) = since
                && state.region == r
                && state.failures == 0
                && !state.pending
            {
                let expected = state.change.per_second(mean) * since.as_secs_f64()
                    / f64::from(cost(state.pages));
                if best.is_none_or(|(most, _)| expected > most) {
                    best = Some((expected, aside.len()));
                }
            }
            aside.push(Reverse(entry));
        }
        let pulled = best.map(|(_, i)| aside.swap_remove(i));
        self.timers.extend(aside);
        if let Some(Reverse((due, slot, version))) = pulled {
            self.regions[r]
                .ready
                .push(Reverse((Some(due), slot, version)));
        }
        pulled.is_some()
    }

    /// Pages held by polls in flight that are sending, in region `r`.
    #[cfg(test)]
    pub fn window_used(&self, r: usize) -> u32 {
        self.regions[r].window.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests;
