//! Detection latency: from the driver's answer to a change (the simulator has applied it) to
//! the moment the scheduler's event sink delivers the matching event (it is committed),
//! matched by meeting, attendee and kind.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::broadcast;
use tokio::time::Instant;

use roster_sync::domain::EventKind;
use roster_sync::sim::churn::{Made, guid};
use roster_sync::store::StoredEvent;

/// A change the churn made: meeting, attendee, kind.
pub type ChangeKey = (u128, u128, EventKind);

/// Changes made and not yet matched with their event, and the latencies of those matched.
#[derive(Default)]
pub struct Changes {
    /// Set when the churn starts: events before are the warm-up's joins.
    pub armed: bool,
    /// When the Driver's answer arrived; the earliest, if the same change was made twice.
    pending: HashMap<ChangeKey, Instant>,
    /// Events that arrived before the Driver's answer was noted (a poll raced it).
    early: HashMap<ChangeKey, Instant>,
    pub latencies_ms: Vec<f64>,
    /// Every change made, in order: what [`Changes::masked`] replays.
    log: Vec<(ChangeKey, Instant)>,
    /// When each meeting's successful polls started, in order.
    polls: HashMap<u128, Vec<Instant>>,
}

impl Changes {
    pub fn made(&mut self, m: &Made) {
        let key = (m.meeting, m.attendee, m.kind);
        self.log.push((key, m.at));
        match self.early.remove(&key) {
            Some(seen) => self
                .latencies_ms
                .push(seen.saturating_duration_since(m.at).as_secs_f64() * 1e3),
            None => {
                self.pending.entry(key).or_insert(m.at);
            }
        }
    }

    /// A successful poll of `meeting` started at `started`.
    pub fn polled(&mut self, meeting: u128, started: Instant) {
        self.polls.entry(meeting).or_default().push(started);
    }

    /// Changes that no poll could see, because a later change to the same attendee undid or
    /// hid them before the meeting's next poll started: two capability changes cancel out, a
    /// deletion hides an earlier capability change, a deletion of an attendee who joined since
    /// the last poll hides both, and a joined attendee's capability change shows only as the
    /// join. Changes after a meeting's last poll count as not seen either.
    pub fn masked(&self) -> u64 {
        // The changes to each attendee between two polls of its meeting, in order.
        let mut windows: HashMap<(u128, u128, usize), Vec<EventKind>> = HashMap::new();
        let mut unpolled = 0u64;
        for &((meeting, attendee, kind), at) in &self.log {
            let starts = self.polls.get(&meeting).map_or(&[][..], Vec::as_slice);
            let next = starts.partition_point(|&s| s <= at);
            if next == starts.len() {
                unpolled += 1;
                continue;
            }
            windows
                .entry((meeting, attendee, next))
                .or_default()
                .push(kind);
        }
        let hidden: usize = windows
            .values()
            .map(|kinds| {
                let joined = kinds.contains(&EventKind::Joined);
                let left = kinds.contains(&EventKind::Left);
                let caps = kinds
                    .iter()
                    .filter(|&&k| k == EventKind::CapabilitiesChanged)
                    .count();
                let visible = match (joined, left) {
                    (true, true) => 0,
                    (true, false) | (false, true) => 1,
                    (false, false) => caps % 2,
                };
                kinds.len() - visible
            })
            .sum();
        unpolled + hidden as u64
    }

    pub fn seen(&mut self, key: ChangeKey, at: Instant) {
        if !self.armed {
            return;
        }
        match self.pending.remove(&key) {
            Some(made) => self
                .latencies_ms
                .push(at.saturating_duration_since(made).as_secs_f64() * 1e3),
            None => {
                self.early.insert(key, at);
            }
        }
    }
}

/// Matches every event from the scheduler's sink with the change that caused it; returns how
/// many events arrived.
pub async fn receive_events(
    mut rx: broadcast::Receiver<StoredEvent>,
    changes: Arc<Mutex<Changes>>,
) -> u64 {
    let mut received = 0u64;
    loop {
        match rx.recv().await {
            Ok(e) => {
                let at = Instant::now();
                received += 1;
                if let (Ok(m), Ok(a)) = (guid(e.meeting_id.as_str()), guid(e.attendee_id.as_str()))
                {
                    lock(&changes).seen((m, a, e.kind), at);
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                println!("(the event receiver fell behind: {n} events not matched)");
                received += n;
            }
            Err(broadcast::error::RecvError::Closed) => return received,
        }
    }
}

/// The guard of `m`, also after a thread panicked while holding it (the measurements stay
/// readable).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn an_event_before_the_drivers_answer_still_counts() {
        let mut c = Changes {
            armed: true,
            ..Changes::default()
        };
        let t0 = Instant::now();
        let made = |attendee, kind, at| Made {
            meeting: 1,
            attendee,
            kind,
            at,
        };
        c.seen((1, 2, EventKind::Joined), t0);
        c.made(&made(2, EventKind::Joined, t0 + Duration::from_millis(3)));
        assert_eq!(c.latencies_ms, vec![0.0]);
        c.made(&made(3, EventKind::Left, t0));
        c.seen((1, 3, EventKind::Left), t0 + Duration::from_millis(500));
        assert_eq!(c.latencies_ms.len(), 2);
        assert!((c.latencies_ms[1] - 500.0).abs() < 1e-6);
    }

    #[test]
    fn changes_undone_before_the_next_poll_are_masked() {
        let mut c = Changes {
            armed: true,
            ..Changes::default()
        };
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let made = |attendee, kind, s| Made {
            meeting: 1,
            attendee,
            kind,
            at: at(s),
        };
        c.polled(1, at(0));
        // Between the polls at 0 and 10 s: attendee 2's capabilities change twice (undone),
        // attendee 3 joins and is deleted, attendee 4's capabilities change and it is
        // deleted (the deletion shows), attendee 5 changes once (shows).
        c.made(&made(2, EventKind::CapabilitiesChanged, 1));
        c.made(&made(2, EventKind::CapabilitiesChanged, 2));
        c.made(&made(3, EventKind::Joined, 3));
        c.made(&made(3, EventKind::Left, 4));
        c.made(&made(4, EventKind::CapabilitiesChanged, 5));
        c.made(&made(4, EventKind::Left, 6));
        c.made(&made(5, EventKind::CapabilitiesChanged, 7));
        c.polled(1, at(10));
        // Attendee 2 again, once each side of the poll at 20 s: both show.
        c.made(&made(2, EventKind::CapabilitiesChanged, 15));
        c.polled(1, at(20));
        c.made(&made(2, EventKind::CapabilitiesChanged, 25));
        c.polled(1, at(30));
        // After the last poll: not seen.
        c.made(&made(5, EventKind::CapabilitiesChanged, 35));
        assert_eq!(c.masked(), 2 + 2 + 1 + 1);
    }

    #[test]
    fn events_before_the_churn_started_are_not_matched() {
        let mut c = Changes::default();
        let t0 = Instant::now();
        c.seen((1, 2, EventKind::Joined), t0);
        c.armed = true;
        c.made(&Made {
            meeting: 1,
            attendee: 2,
            kind: EventKind::Joined,
            at: t0,
        });
        assert!(
            c.latencies_ms.is_empty(),
            "a warm-up join is not a churn change"
        );
    }
}
