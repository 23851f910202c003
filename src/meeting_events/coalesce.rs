//! Coalescing hints: events of one meeting within the `meeting_events.coalesce` window make
//! one poll.
//!
//! Pure and clock-free (the caller passes `now`): the first hint of a meeting goes at once;
//! a hint within the window after the last one sent waits for the window's end, and every
//! hint of the meeting until then joins it. So a burst of events makes at most one poll now
//! and one at the window's end, and every event is followed by a poll that starts after it
//! arrived (a poll already under way may have fetched before the change).

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::domain::MeetingId;

/// The hint state of every meeting hinted within the last window.
#[derive(Debug)]
pub struct Coalescer {
    window: Duration,
    /// When a hint of the meeting was last sent.
    sent: HashMap<MeetingId, Instant>,
    /// Hints waiting for their window's end: when each is to be sent.
    waiting: HashMap<MeetingId, Instant>,
}

impl Coalescer {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            sent: HashMap::new(),
            waiting: HashMap::new(),
        }
    }

    /// A hint for `id` arrived at `now`: `true` when it is to be sent now, `false` when it
    /// waits (or joined a waiting one); [`Coalescer::due`] hands it out at the window's end.
    pub fn offer(&mut self, id: &MeetingId, now: Instant) -> bool {
        if self.waiting.contains_key(id) {
            return false;
        }
        match self.sent.get(id) {
            Some(&last) if now.saturating_duration_since(last) < self.window => {
                self.waiting.insert(id.clone(), last + self.window);
                false
            }
            _ => {
                self.sent.insert(id.clone(), now);
                true
            }
        }
    }

    /// The waiting hints whose window ended by `now`, which count as sent now.
    pub fn due(&mut self, now: Instant) -> Vec<MeetingId> {
        let ready: Vec<MeetingId> = self
            .waiting
            .iter()
            .filter(|&(_, &at)| at <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &ready {
            self.waiting.remove(id);
            self.sent.insert(id.clone(), now);
        }
        // Meetings whose window ended long ago need no memory.
        let window = self.window;
        self.sent.retain(|_, &mut at| {
            now.saturating_duration_since(at) < window.max(Duration::from_millis(1)) * 2
        });
        ready
    }

    /// When the next waiting hint is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.waiting.values().min().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> MeetingId {
        MeetingId::parse(&format!("{n:08x}-0000-4000-8000-000000000000")).unwrap()
    }

    #[test]
    fn a_burst_within_the_window_makes_one_hint_now_and_one_at_its_end() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(Duration::from_secs(1));
        assert!(c.offer(&id(1), t0));
        assert!(!c.offer(&id(1), t0 + Duration::from_millis(100)));
        assert!(!c.offer(&id(1), t0 + Duration::from_millis(900)));
        assert_eq!(c.next_due(), Some(t0 + Duration::from_secs(1)));
        assert!(c.due(t0 + Duration::from_millis(999)).is_empty());
        assert_eq!(c.due(t0 + Duration::from_secs(1)), vec![id(1)]);
        assert_eq!(c.next_due(), None);
    }

    #[test]
    fn meetings_coalesce_separately_and_a_later_hint_goes_at_once() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(Duration::from_secs(1));
        assert!(c.offer(&id(1), t0));
        assert!(c.offer(&id(2), t0));
        assert!(c.offer(&id(1), t0 + Duration::from_secs(2)));
    }

    #[test]
    fn a_zero_window_sends_every_hint() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(Duration::ZERO);
        assert!(c.offer(&id(1), t0));
        assert!(c.offer(&id(1), t0));
    }
}
