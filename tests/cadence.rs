//! `poll.strategy` through the daemon as `run` builds it, against the simulator over HTTP:
//! with a request budget too small to poll every meeting each `poll.interval` and one meeting
//! changing all the time, `change_aware` spends the polls on that meeting while every quiet
//! meeting is still polled at least once per `poll.max_interval`; `uniform` polls them alike.
//! Poll counts are read from the store (`poll_seq` counts recorded polls); no assertion
//! depends on how long anything took.

mod common;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use roster_sync::app::{Daemon, DaemonOptions};
use roster_sync::chime::{ChimeClient, ClientOptions, simulator_sdk_config};
use roster_sync::config::{PollStrategy, Settings};
use roster_sync::domain::{self, Capabilities, MeetingId, Region};
use roster_sync::sim::churn::LISTENER;
use roster_sync::sim::control::Driver;

use common::{TestDb, eventually_within};

const MEETINGS: usize = 8;
const INTERVAL: Duration = Duration::from_millis(250);
const MAX_INTERVAL: Duration = Duration::from_secs(3);
/// The daemon's budget: 8 one-page meetings every 250 ms would need 32 requests/s.
const RATE: f64 = 6.0;
/// An unchanged poll's bookkeeping is written within this (`scheduler::bookkeeping`).
const BOOKKEEPING_EVERY: Duration = Duration::from_secs(1);
/// Polls of the busy meeting before counting starts.
const WARM_UP: i64 = 30;
/// A planned wait is at most `poll.max_interval` less this share (docs/operating.md,
/// "change_aware").
const MAX_INTERVAL_SLACK: f64 = 0.1;

fn region() -> Region {
    Region::parse("us-east-1").unwrap()
}

/// Meetings of one attendee each, tracked; the first is the busy one. Returns them with the
/// busy meeting's attendee.
async fn meetings(db: &TestDb, driver: &Driver) -> (Vec<MeetingId>, domain::AttendeeId) {
    let mut ids = Vec::new();
    let mut busy_attendee = None;
    for i in 0..MEETINGS {
        let id = driver
            .create_meeting(&format!("cadence-{i}"), "us-east-1")
            .await
            .unwrap();
        let made = driver
            .add_attendees(&id, [(format!("person-{i}@example.com"), None)])
            .await
            .unwrap();
        busy_attendee.get_or_insert(made[0].attendee_id.clone());
        db.store
            .add_meeting(&id, &region(), Some("cadence"), domain::now(), false)
            .await
            .unwrap();
        ids.push(id);
    }
    (ids, busy_attendee.unwrap())
}

async fn daemon(db: &TestDb, endpoint: &str, strategy: PollStrategy) -> Daemon {
    let mut settings = Settings::defaults().unwrap();
    settings.database.url = db.url.clone();
    settings.http.listen.clear();
    settings.poll.interval = INTERVAL;
    settings.poll.jitter = 0.0;
    settings.poll.strategy = strategy;
    settings.poll.max_interval = MAX_INTERVAL;
    settings.rate.requests_per_second = RATE;
    settings.rate.burst = RATE as u32;
    settings.shutdown.grace = Duration::from_secs(5);
    settings.validate().unwrap();
    let client = ChimeClient::new(
        simulator_sdk_config(&region()),
        ClientOptions::for_endpoint(endpoint, RATE, RATE as u32),
    );
    Daemon::build(
        &settings,
        Some(db.store.clone()),
        CancellationToken::new(),
        DaemonOptions {
            client: Some(Arc::new(client)),
            ..DaemonOptions::default()
        },
    )
    .await
    .expect("build the daemon")
}

/// Toggles the busy meeting's attendee between two capability sets every 100 ms until
/// cancelled: a change for nearly every poll of it.
fn churn_busy(
    driver: Driver,
    meeting: MeetingId,
    attendee: domain::AttendeeId,
) -> CancellationToken {
    let stop = CancellationToken::new();
    let cancel = stop.clone();
    tokio::spawn(async move {
        let mut listener = false;
        loop {
            listener = !listener;
            let caps = if listener {
                LISTENER
            } else {
                Capabilities::DEFAULT
            };
            let _ = driver.set_capabilities(&meeting, &attendee, caps).await;
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    });
    stop
}

async fn polls(db: &TestDb, id: &MeetingId) -> i64 {
    db.store.get_meeting(id).await.unwrap().unwrap().poll_seq
}

/// Poll counts of the busy meeting and of each quiet one.
async fn counts(db: &TestDb, ids: &[MeetingId]) -> (i64, Vec<i64>) {
    let mut quiet = Vec::new();
    for id in &ids[1..] {
        quiet.push(polls(db, id).await);
    }
    (polls(db, &ids[0]).await, quiet)
}

/// Runs the daemon with `strategy` while the first meeting churns. Once the busy meeting has
/// been polled `WARM_UP` times (long enough for `change_aware` to have learnt which meeting
/// changes), counts the polls of each meeting until `enough` holds of those counted since;
/// returns them. The counts at the start lag: an unchanged poll's bookkeeping is written
/// within `BOOKKEEPING_EVERY`, and one poll of each meeting may be in flight. The daemon runs on a multi-threaded runtime beside the simulator, so how
/// one thread is shared between them does not decide the split.
async fn run(strategy: PollStrategy, enough: impl Fn(i64, &[i64]) -> bool) -> (i64, Vec<i64>) {
    let db = common::sqlite_db().await;
    let (sim, driver) = common::sim_and_driver(1000.0).await;
    let (ids, attendee) = meetings(&db, &driver).await;
    let daemon = daemon(&db, &sim.endpoint_url(), strategy).await;
    let stop = churn_busy(driver, ids[0].clone(), attendee);
    eventually_within(Duration::from_secs(120), "the warm-up", || async {
        polls(&db, &ids[0]).await >= WARM_UP
    })
    .await;
    let (busy_from, quiet_from) = counts(&db, &ids).await;
    let since = |(busy, quiet): (i64, Vec<i64>)| {
        let quiet: Vec<i64> = quiet.iter().zip(&quiet_from).map(|(q, f)| q - f).collect();
        (busy - busy_from, quiet)
    };
    eventually_within(
        Duration::from_secs(120),
        "enough polls of the busy and the quiet meetings",
        || async {
            let (busy, quiet) = since(counts(&db, &ids).await);
            enough(busy, &quiet)
        },
    )
    .await;
    // Counted after the stop, when no poll is in flight and the bookkeeping of every
    // unchanged poll is written.
    stop.cancel();
    daemon.stop().await.unwrap();
    let (busy, quiet) = since(counts(&db, &ids).await);
    sim.shutdown().await.unwrap();
    db.finish().await;
    println!(
        "{strategy:?}: after the warm-up, the busy meeting was polled {busy} times, the quiet ones {quiet:?}"
    );
    (busy, quiet)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_aware_polls_the_busy_meeting_most_and_every_quiet_one_within_max_interval() {
    let (busy, quiet) = run(PollStrategy::ChangeAware, |busy, _| busy >= 60).await;
    let most_quiet = *quiet.iter().max().unwrap();
    // What the configuration implies. Each quiet meeting is planned once per max_interval
    // less its 10 % slack, and the busy one (whose estimate is far above theirs) gets the
    // rest of the budget, at most one poll per interval; the queue's early launches go to
    // the meeting expected to have changed most, the busy one whenever an interval has
    // passed since its last poll. The split asked for is half the one implied: the quiet
    // meetings' estimates never reach zero (their prior and floor share keep them planned
    // somewhat more often than their cap).
    let quiet_rate = 1.0 / (MAX_INTERVAL.as_secs_f64() * (1.0 - MAX_INTERVAL_SLACK));
    let quiet_meetings = (MEETINGS - 1) as f64;
    let busy_rate = (RATE - quiet_meetings * quiet_rate).min(1.0 / INTERVAL.as_secs_f64());
    let implied = busy_rate / quiet_rate;
    assert!(
        busy as f64 >= implied / 2.0 * most_quiet as f64,
        "the busy meeting was polled {busy} times, a quiet one up to {most_quiet} ({quiet:?}): \
         less than half the {implied:.1} × the configuration implies"
    );
    // No poll of the busy meeting follows the previous one sooner than poll.interval, so
    // `busy` polls took at least (busy − 1) intervals. Polled at least once per
    // max_interval, each quiet meeting had at least that long ÷ max_interval polls, less one
    // for the poll in flight when counting started.
    let lasted = INTERVAL * u32::try_from(busy - 1).unwrap();
    let at_least = (lasted.as_secs_f64() / MAX_INTERVAL.as_secs_f64()).floor() as i64 - 1;
    assert!(at_least >= 3, "a run long enough to show it: {lasted:?}");
    for q in &quiet {
        assert!(
            *q >= at_least,
            "a quiet meeting was polled {q} times in at least {lasted:?} (max_interval {MAX_INTERVAL:?}): {quiet:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uniform_polls_busy_and_quiet_meetings_alike() {
    let (busy, quiet) = run(PollStrategy::Uniform, |_, quiet| {
        quiet.iter().all(|&q| q >= 12)
    })
    .await;
    let least_quiet = *quiet.iter().min().unwrap();
    // Uniform serves the stalest meeting first: no meeting gets a second poll before every
    // other has had one, so over one window no two counts differ by more than what the
    // counts at its start miss: the poll of each meeting in flight, and the quiet meetings'
    // bookkeeping not yet written (at most RATE × BOOKKEEPING_EVERY polls, shared by all).
    let unwritten = (RATE * BOOKKEEPING_EVERY.as_secs_f64() / MEETINGS as f64).ceil() as i64;
    assert!(
        busy <= least_quiet + 1 + unwritten,
        "uniform polled the busy meeting {busy} times, a quiet one {least_quiet}: {quiet:?}"
    );
}
