//! Sweeps, tracked from the scheduler's poll reports. A **sweep** is the time it takes for
//! every meeting to complete one successful poll that started after the sweep began; the
//! first begins when polling starts, each next one when the previous one completes.

use std::collections::HashMap;

use tokio::time::Instant;

use roster_sync::domain::MeetingId;
use roster_sync::scheduler::PollReport;

/// One completed sweep.
#[derive(Debug, Clone, Copy)]
pub struct Sweep {
    pub started: Instant,
    pub seconds: f64,
}

#[derive(Default)]
pub struct Sweeps {
    index: HashMap<MeetingId, usize>,
    /// The sweep each meeting last completed a poll in.
    done_in: Vec<u32>,
    current: u32,
    started: Option<Instant>,
    remaining: usize,
    pub completed: Vec<Sweep>,
}

impl Sweeps {
    pub fn new<'a>(ids: impl IntoIterator<Item = &'a MeetingId>) -> Self {
        let index: HashMap<MeetingId, usize> = ids
            .into_iter()
            .cloned()
            .enumerate()
            .map(|(i, id)| (id, i))
            .collect();
        Self {
            done_in: vec![0; index.len()],
            remaining: index.len(),
            index,
            current: 0,
            started: None,
            completed: Vec::new(),
        }
    }

    /// The first sweep begins at `at` (polling starts).
    pub fn begin(&mut self, at: Instant) {
        self.current = 1;
        self.started = Some(at);
        self.remaining = self.done_in.len();
    }

    pub fn on_poll(&mut self, r: &PollReport<'_>) {
        let Some(started) = self.started else { return };
        if !r.succeeded() || r.started < started {
            return;
        }
        let Some(&i) = self.index.get(r.meeting_id) else {
            return;
        };
        if self.done_in[i] == self.current {
            return;
        }
        self.done_in[i] = self.current;
        self.remaining -= 1;
        if self.remaining == 0 {
            self.completed.push(Sweep {
                started,
                seconds: r.finished.duration_since(started).as_secs_f64(),
            });
            self.current += 1;
            self.started = Some(r.finished);
            self.remaining = self.done_in.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use roster_sync::scheduler::PollKind;

    #[test]
    fn a_sweep_ends_when_every_meeting_completed_a_poll_started_after_it_began() {
        let ids: Vec<MeetingId> = (1..=2)
            .map(|i| MeetingId::parse(&format!("00000000-0000-0000-0000-00000000000{i}")).unwrap())
            .collect();
        let mut s = Sweeps::new(&ids);
        let t0 = Instant::now();
        s.begin(t0);
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let report = |m: usize, started: u64, finished: u64, outcome: PollKind| PollReport {
            meeting_id: &ids[m],
            started: at(started),
            finished: at(finished),
            outcome,
            pages: 1,
        };
        s.on_poll(&report(0, 0, 100, PollKind::Unchanged));
        s.on_poll(&report(0, 200, 300, PollKind::Changed));
        s.on_poll(&report(1, 300, 400, PollKind::Failed));
        assert!(s.completed.is_empty(), "a failed poll does not count");
        s.on_poll(&report(1, 400, 500, PollKind::Unchanged));
        assert_eq!(s.completed.len(), 1);
        assert!((s.completed[0].seconds - 0.5).abs() < 1e-9);
        // The next sweep began at 500 ms: a poll started before it does not count.
        s.on_poll(&report(0, 450, 600, PollKind::Unchanged));
        s.on_poll(&report(1, 500, 700, PollKind::Unchanged));
        s.on_poll(&report(0, 700, 900, PollKind::Unchanged));
        assert_eq!(s.completed.len(), 2);
        assert!((s.completed[1].seconds - 0.4).abs() < 1e-9);
    }
}
