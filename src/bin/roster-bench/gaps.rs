//! The longest gap between two successful polls of the same meeting, from the scheduler's
//! poll reports: what `poll.max_interval` bounds under `change_aware`.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use roster_sync::domain::MeetingId;
use roster_sync::scheduler::PollReport;

#[derive(Default)]
pub struct Gaps {
    /// When each meeting's last successful poll started.
    last: HashMap<MeetingId, Instant>,
    /// The longest gap between the starts of two successive successful polls of a meeting.
    pub longest: Duration,
}

impl Gaps {
    pub fn on_poll(&mut self, r: &PollReport<'_>) {
        if !r.succeeded() {
            return;
        }
        match self.last.get_mut(r.meeting_id) {
            Some(last) => {
                self.longest = self.longest.max(r.started.saturating_duration_since(*last));
                *last = r.started;
            }
            None => {
                self.last.insert(r.meeting_id.clone(), r.started);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roster_sync::scheduler::PollKind;

    #[test]
    fn the_longest_gap_is_between_successful_polls_of_one_meeting() {
        let ids: Vec<MeetingId> = (1..=2)
            .map(|i| MeetingId::parse(&format!("00000000-0000-0000-0000-00000000000{i}")).unwrap())
            .collect();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut g = Gaps::default();
        let mut poll = |m: usize, started: u64, outcome: PollKind| {
            g.on_poll(&PollReport {
                meeting_id: &ids[m],
                started: at(started),
                finished: at(started + 1),
                outcome,
                pages: 1,
            });
        };
        poll(0, 0, PollKind::Unchanged);
        poll(1, 5, PollKind::Changed);
        poll(0, 10, PollKind::Failed);
        poll(0, 30, PollKind::Unchanged);
        poll(1, 20, PollKind::Unchanged);
        assert_eq!(g.longest, Duration::from_secs(30));
    }
}
