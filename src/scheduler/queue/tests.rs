//! Unit tests of the queue: due order, page windows, early launches and the breaker.

use super::*;

fn region() -> Region {
    Region::parse("us-east-1").unwrap()
}

fn id(i: usize) -> MeetingId {
    MeetingId::parse(&format!("00000000-0000-0000-0000-{i:012}")).unwrap()
}

#[test]
fn a_paused_claim_gives_its_pages_back_and_takes_them_again_on_resume() {
    let window = Arc::new(AtomicU32::new(0));
    let claim = PageClaim::take(&window, 3);
    assert_eq!(window.load(Ordering::Relaxed), 3);
    claim.paused(true);
    claim.paused(true);
    assert_eq!(window.load(Ordering::Relaxed), 0);
    claim.paused(false);
    assert_eq!(window.load(Ordering::Relaxed), 3);
    drop(claim);
    assert_eq!(window.load(Ordering::Relaxed), 0);
}

#[tokio::test(start_paused = true)]
async fn a_region_promises_at_most_half_a_second_of_its_rate() {
    let mut q = Queue::default();
    let now = Instant::now();
    for i in 0..12 {
        q.insert(id(i), region(), now, now, 1);
    }
    for slot in 0..12 {
        q.set_pages(slot, 3);
    }
    q.promote(now);
    // 10 requests/s → 5 pages of lookahead: with 3 pages a meeting, two polls at once.
    let due = q.take_due(now, 16, Duration::from_secs(10), |_| Some(10.0));
    assert_eq!(due.launch.len(), 2);
    assert_eq!(q.window_used(0), 6);
    // One of them sleeps in a Retry-After: its pages are free for another poll.
    due.launch[0].1.paused(true);
    let more = q.take_due(now, 16, Duration::from_secs(10), |_| Some(10.0));
    assert_eq!(more.launch.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn due_meetings_launch_stalest_first() {
    let mut q = Queue::default();
    let now = Instant::now();
    for i in 0..3 {
        q.insert(id(i), region(), now, now, 1);
    }
    q.get_mut(0).unwrap().fresh_at = Some(now + Duration::from_secs(2));
    q.get_mut(1).unwrap().fresh_at = Some(now + Duration::from_secs(1));
    q.get_mut(2).unwrap().fresh_at = None;
    q.promote(now);
    let due = q.take_due(now, 3, Duration::from_secs(10), |_| None);
    let order: Vec<usize> = due.launch.iter().map(|(s, _)| *s).collect();
    assert_eq!(order, vec![2, 1, 0]);
}

/// The stalest meeting's bookkeeping is still in the batch: nothing behind it launches
/// first. The caller writes the batch (`held`) and the next call launches it, in its place.
#[tokio::test(start_paused = true)]
async fn a_due_meeting_waiting_for_its_bookkeeping_keeps_its_place() {
    let mut q = Queue::default();
    let now = Instant::now();
    for i in 0..3 {
        q.insert(id(i), region(), now, now, 1);
        q.get_mut(i).unwrap().fresh_at = Some(now + Duration::from_secs(i as u64));
    }
    q.get_mut(0).unwrap().pending = true;
    q.promote(now);
    let held = q.take_due(now, 3, Duration::from_secs(10), |_| None);
    assert!(held.held);
    assert!(
        held.launch.is_empty(),
        "launched behind it: {:?}",
        held.launch
    );
    q.get_mut(0).unwrap().pending = false;
    let due = q.take_due(now, 3, Duration::from_secs(10), |_| None);
    let order: Vec<usize> = due.launch.iter().map(|(s, _)| *s).collect();
    assert_eq!(order, vec![0, 1, 2]);
}

#[tokio::test(start_paused = true)]
async fn by_due_polled_meetings_launch_earliest_due_first_after_the_never_polled() {
    let mut q = Queue::by_due(Some(Duration::from_secs(3600)));
    let now = Instant::now();
    let s = Duration::from_secs;
    for i in 0..3 {
        q.insert(id(i), region(), now, now, 1);
    }
    // Slot 0 was polled long ago but is due last; slot 1 recently but due first.
    q.get_mut(0).unwrap().fresh_at = Some(now);
    q.get_mut(1).unwrap().fresh_at = Some(now + s(50));
    let later = now + s(100);
    q.schedule(0, now + s(90));
    q.schedule(1, now + s(60));
    q.promote(later);
    let due = q.take_due(later, 3, s(10), |_| None);
    let order: Vec<usize> = due.launch.iter().map(|(s, _)| *s).collect();
    assert_eq!(order, vec![2, 1, 0]);
}

#[tokio::test(start_paused = true)]
async fn by_due_a_meeting_at_the_longest_wait_goes_before_earlier_due_ones() {
    let s = Duration::from_secs;
    let mut q = Queue::by_due(Some(s(108)));
    let now = Instant::now();
    for i in 0..3 {
        q.insert(id(i), region(), now, now, 1);
    }
    // Slots 0 and 1 were due before slot 2, whose wait was capped at the longest.
    for (slot, fresh, due) in [(0, 70, 80), (1, 75, 90), (2, 0, 108)] {
        q.get_mut(slot).unwrap().fresh_at = Some(now + s(fresh));
        q.schedule(slot, now + s(due));
    }
    let later = now + s(110);
    q.promote(later);
    let due = q.take_due(later, 3, s(10), |_| None);
    let order: Vec<usize> = due.launch.iter().map(|(s, _)| *s).collect();
    assert_eq!(order, vec![2, 0, 1]);
}

#[tokio::test(start_paused = true)]
async fn by_due_a_meeting_still_queued_at_its_deadline_goes_before_earlier_due_ones() {
    let s = Duration::from_secs;
    let now = Instant::now();
    let queue = || {
        let mut q = Queue::by_due(Some(s(108)));
        for i in 0..3 {
            q.insert(id(i), region(), now, now, 1);
        }
        // Slot 0's planned wait, 100 s, is under the longest; slots 1 and 2 are due
        // before it.
        for (slot, fresh, due) in [(0, 0, 100), (1, 60, 70), (2, 65, 75)] {
            q.get_mut(slot).unwrap().fresh_at = Some(now + s(fresh));
            q.schedule(slot, now + s(due));
        }
        q
    };
    let order = |at: u64| {
        let mut q = queue();
        let at = now + s(at);
        q.promote(at);
        let due = q.take_due(at, 4, s(10), |_| None);
        due.launch.iter().map(|(s, _)| *s).collect::<Vec<usize>>()
    };
    // Before its deadline (0 + 108 s) it waits its turn; a backlog that keeps it queued
    // past the deadline puts it first, and it is launched once.
    assert_eq!(order(107), vec![1, 2, 0]);
    assert_eq!(order(110), vec![0, 1, 2]);
}

#[tokio::test(start_paused = true)]
async fn by_due_a_shared_budget_with_room_launches_the_likeliest_changed_meeting_early() {
    let s = Duration::from_secs;
    let interval = s(10);
    let mut q = Queue::by_due(Some(s(108)));
    let now = Instant::now();
    for i in 0..4 {
        q.insert(id(i), region(), now, now, 1);
        q.set_pages(i, 3);
    }
    // Nothing is due at 100 s. Slot 0, due soonest, was polled less than an interval
    // ago; slot 1 is backing off after a failure; slot 3 is due before slot 2, but slot
    // 2 found 5 changes in its last minute and slot 3 has no history (the average).
    for (slot, fresh, due) in [(0, 95, 105), (1, 50, 110), (2, 60, 130), (3, 70, 120)] {
        q.get_mut(slot).unwrap().fresh_at = Some(now + s(fresh));
        q.schedule(slot, now + s(due));
    }
    q.get_mut(1).unwrap().failures = 1;
    q.get_mut(2)
        .unwrap()
        .change
        .observe(5, Duration::from_secs(60));
    let at = now + s(100);
    q.promote(at);
    // With an ample budget every meeting waits for its due time.
    assert!(
        q.take_due(at, 4, interval, |_| Some(10.0))
            .launch
            .is_empty()
    );
    q.regions[0].level = Level::Shared {
        scale: 1.0,
        mean: 0.01,
    };
    // One early poll at a time: the next waits until the first stops sending.
    let first = q.take_due(at, 4, interval, |_| Some(10.0));
    let order: Vec<usize> = first.launch.iter().map(|(s, _)| *s).collect();
    assert_eq!(order, vec![2]);
    assert!(
        q.take_due(at, 4, interval, |_| Some(10.0))
            .launch
            .is_empty()
    );
    drop(first);
    let second = q.take_due(at, 4, interval, |_| Some(10.0));
    let order: Vec<usize> = second.launch.iter().map(|(s, _)| *s).collect();
    assert_eq!(order, vec![3]);
}

#[tokio::test(start_paused = true)]
async fn a_denied_region_launches_one_probe_per_interval_until_answered() {
    let interval = Duration::from_secs(10);
    let mut q = Queue::default();
    let now = Instant::now();
    for i in 0..5 {
        q.insert(id(i), region(), now, now, 1);
    }
    let mut t = Transition::None;
    for slot in 0..3 {
        t = q.regions[0].breaker.observe(
            slot,
            Evidence::Denied("AccessDeniedException"),
            5,
            now,
            interval,
        );
    }
    assert_eq!(
        t,
        Transition::Down {
            code: "AccessDeniedException".into()
        }
    );
    q.promote(now);
    assert!(q.take_due(now, 16, interval, |_| None).launch.is_empty());
    let later = now + interval;
    let probe = q.take_due(later, 16, interval, |_| None);
    assert_eq!(probe.launch.len(), 1, "one probe");
    assert!(q.take_due(later, 16, interval, |_| None).launch.is_empty());
    let (slot, _) = &probe.launch[0];
    let still = q.regions[0].breaker.observe(
        *slot,
        Evidence::Denied("AccessDeniedException"),
        5,
        later,
        interval,
    );
    assert_eq!(still, Transition::None);
    let up = q.regions[0]
        .breaker
        .observe(*slot, Evidence::Answered, 5, later, interval);
    assert_eq!(up, Transition::Up);
    assert_eq!(q.take_due(later, 16, interval, |_| None).launch.len(), 4);
}

#[test]
fn one_denied_meeting_among_answering_ones_never_trips_the_breaker() {
    let interval = Duration::from_secs(10);
    let now = Instant::now();
    let mut b = Breaker::default();
    for _ in 0..10 {
        assert_eq!(
            b.observe(
                7,
                Evidence::Denied("AccessDeniedException"),
                50,
                now,
                interval
            ),
            Transition::None
        );
        assert_eq!(
            b.observe(1, Evidence::Answered, 50, now, interval),
            Transition::None
        );
    }
    assert!(b.is_up());
}

#[tokio::test(start_paused = true)]
async fn a_hinted_meeting_goes_after_deadline_urgent_ones_and_before_other_due_ones() {
    let s = Duration::from_secs;
    let mut q = Queue::by_due(Some(s(108)));
    q.hint_deadline = Some(s(108));
    let now = Instant::now();
    for i in 0..4 {
        q.insert(id(i), region(), now, now, 1);
    }
    // Slot 0: due (ordinary); slot 1: at its deadline; slot 2: hinted, not due; slot 3:
    // never polled (first of all).
    for (slot, fresh, due) in [(0, 70, 80), (1, 0, 108), (2, 100, 200)] {
        q.get_mut(slot).unwrap().fresh_at = Some(now + s(fresh));
        q.schedule(slot, now + s(due));
    }
    let later = now + s(110);
    q.promote(later);
    assert!(q.hint(2, later));
    let due = q.take_due(later, 4, s(10), |_| None);
    let order: Vec<usize> = due.launch.iter().map(|(s, _)| *s).collect();
    assert_eq!(order, vec![3, 1, 2, 0]);
    assert_eq!(due.hinted, 1);
}

#[tokio::test(start_paused = true)]
async fn uniform_hinted_meetings_go_before_polled_ones_until_one_reaches_its_deadline() {
    let s = Duration::from_secs;
    let mut q = Queue {
        hint_deadline: Some(s(108)),
        ..Queue::default()
    };
    let now = Instant::now();
    for i in 0..3 {
        q.insert(id(i), region(), now, now, 1);
    }
    // Slot 0 polled 50 s ago, slot 1 polled 120 s ago (past the deadline), slot 2 hinted.
    let later = now + s(200);
    q.get_mut(0).unwrap().fresh_at = Some(later - s(50));
    q.get_mut(1).unwrap().fresh_at = Some(later - s(120));
    q.get_mut(2).unwrap().fresh_at = Some(later - s(5));
    q.schedule(0, later);
    q.schedule(1, later);
    q.schedule(2, later + s(100));
    q.promote(later);
    assert!(q.hint(2, later));
    let due = q.take_due(later, 3, s(10), |_| None);
    let order: Vec<usize> = due.launch.iter().map(|(s, _)| *s).collect();
    assert_eq!(order, vec![1, 2, 0]);
}

#[tokio::test(start_paused = true)]
async fn a_meeting_in_flight_is_not_hinted_and_a_launch_consumes_its_hint() {
    let mut q = Queue::default();
    let now = Instant::now();
    q.insert(id(0), region(), now, now + Duration::from_secs(60), 1);
    q.get_mut(0).unwrap().fresh_at = Some(now);
    q.promote(now);
    assert!(q.hint(0, now));
    let due = q.take_due(now, 1, Duration::from_secs(10), |_| None);
    assert_eq!(due.launch.len(), 1);
    assert_eq!(due.hinted, 1, "the hint made it due before its time");
    assert!(
        !q.hint(0, now),
        "a hint for a meeting in flight waits for its poll to end"
    );
    q.get_mut(0).unwrap().in_flight = false;
    let again = q.take_due(now, 1, Duration::from_secs(10), |_| None);
    assert!(
        again.launch.is_empty(),
        "the consumed hint launched it twice"
    );
}
