//! Detection latency: from the driver's answer to a change (the simulator has applied it) to
//! the moment the scheduler's event sink delivers the matching event (it is committed),
//! matched by meeting, attendee and kind.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;
use tokio::time::Instant;

use roster_sync::domain::EventKind;
use roster_sync::sim::churn::{Made, guid};
use roster_sync::store::StoredEvent;

use crate::capacity::lock;

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
}

impl Changes {
    pub fn made(&mut self, m: &Made) {
        let key = (m.meeting, m.attendee, m.kind);
        match self.early.remove(&key) {
            Some(seen) => self
                .latencies_ms
                .push(seen.saturating_duration_since(m.at).as_secs_f64() * 1e3),
            None => {
                self.pending.entry(key).or_insert(m.at);
            }
        }
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
