//! Presence under a lossy event path: 50 attendees over a scripted hour (joins, drops and
//! reconnects, hand-offs, video, content, leaves without DeleteAttendee) and a meeting that
//! ends without `MeetingEnded`. One event in five is lost (chosen by the test, so it knows
//! which sessions' events arrived), one delivery in ten is duplicated, and deliveries are
//! held back up to 5 s, so they arrive out of order. The real daemon reads the simulator's
//! queue; what it records is compared with the simulator's truth.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use common::TestDb;
use roster_sync::app::{Daemon, DaemonOptions};
use roster_sync::chime::{ChimeClient, ClientOptions, simulator_sdk_config};
use roster_sync::config::Settings;
use roster_sync::domain::{self, AttendeeId, MeetingId, Region};
use roster_sync::lifecycle::EventType;
use roster_sync::sim::control::Driver;
use roster_sync::sim::events::{EventFaults, EventsConfig};
use roster_sync::sim::presence::PresenceAction;
use roster_sync::sim::{self, SimConfig};
use roster_sync::store::MeetingStatus;
use tokio_util::sync::CancellationToken;

const QUEUE: &str = "chime-events";
const PEOPLE: usize = 50;

fn region() -> Region {
    Region::parse("us-east-1").unwrap()
}

/// A small deterministic generator, so a failure can be replayed.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// One scripted control: who, what, when, and whether its event is lost on the way.
struct Step {
    at: DateTime<Utc>,
    who: usize,
    action: PresenceAction,
    lose: bool,
}

/// A true session of one person and whether both of its events reached the queue.
#[derive(Debug)]
struct TrueSession {
    start: DateTime<Utc>,
    end: Option<DateTime<Utc>>,
    both_arrived: bool,
}

/// The hour: each person connects 1–3 times, with video, content and hand-offs inside, and
/// ends each session with a leave or a drop (the last one may stay open until the meeting
/// ends). 20 % of joins, leaves and drops are lost.
fn script(start: DateTime<Utc>, dice: &mut Dice) -> (Vec<Step>, Vec<Vec<TrueSession>>) {
    let mut steps = Vec::new();
    let mut truth = Vec::new();
    for who in 0..PEOPLE {
        let mut at = start + TimeDelta::seconds(dice.below(300) as i64 + 1);
        let mut sessions = Vec::new();
        let count = 1 + dice.below(3);
        for n in 0..count {
            let lose_join = dice.chance(20);
            steps.push(Step {
                at,
                who,
                action: PresenceAction::Join,
                lose: lose_join,
            });
            let begin = at;
            let mut t = at + TimeDelta::seconds(30 + dice.below(300) as i64);
            if dice.chance(50) {
                steps.push(Step {
                    at: t,
                    who,
                    action: PresenceAction::VideoStart,
                    lose: dice.chance(20),
                });
                t += TimeDelta::seconds(10 + dice.below(200) as i64);
                if dice.chance(60) {
                    steps.push(Step {
                        at: t,
                        who,
                        action: PresenceAction::VideoStop,
                        lose: dice.chance(20),
                    });
                    t += TimeDelta::seconds(5 + dice.below(60) as i64);
                }
            }
            if dice.chance(30) {
                steps.push(Step {
                    at: t,
                    who,
                    action: PresenceAction::ContentJoin,
                    lose: dice.chance(20),
                });
                t += TimeDelta::seconds(10 + dice.below(120) as i64);
            }
            if dice.chance(20) {
                steps.push(Step {
                    at: t,
                    who,
                    action: PresenceAction::Handoff,
                    lose: dice.chance(20),
                });
                t += TimeDelta::seconds(5 + dice.below(60) as i64);
            }
            let last = n + 1 == count;
            if last && dice.chance(25) {
                // Still connected when the meeting ends.
                sessions.push(TrueSession {
                    start: begin,
                    end: None,
                    both_arrived: false,
                });
                break;
            }
            let lose_end = dice.chance(20);
            let action = if dice.chance(30) {
                PresenceAction::Drop
            } else {
                PresenceAction::Leave
            };
            steps.push(Step {
                at: t,
                who,
                action,
                lose: lose_end,
            });
            sessions.push(TrueSession {
                start: begin,
                end: Some(t),
                both_arrived: !lose_join && !lose_end,
            });
            at = t + TimeDelta::seconds(15 + dice.below(240) as i64);
        }
        truth.push(sessions);
    }
    steps.sort_by_key(|s| (s.at, s.who));
    (steps, truth)
}

#[derive(Debug, Clone)]
struct Recorded {
    connected_at: DateTime<Utc>,
    disconnected_at: Option<DateTime<Utc>>,
    start_inferred: bool,
    end_inferred: bool,
}

/// The recorded presence sessions, per attendee id, in order.
async fn recorded(db: &TestDb, meeting: &MeetingId) -> BTreeMap<String, Vec<Recorded>> {
    let mut by: BTreeMap<String, Vec<Recorded>> = BTreeMap::new();
    for e in db.store.events_for_meeting(meeting).await.unwrap() {
        let Some(p) = &e.presence else { continue };
        if let Some(w) = p.inferred {
            assert!(
                w.from <= p.occurred_at && p.occurred_at <= w.to,
                "an inferred boundary outside its window: {e:?}"
            );
        }
        let list = by.entry(e.attendee_id.as_str().to_owned()).or_default();
        match e.kind.as_str() {
            "connected" => {
                assert!(
                    list.last().is_none_or(|s| s.disconnected_at.is_some()),
                    "a second session opened over an open one: {e:?}"
                );
                list.push(Recorded {
                    connected_at: p.occurred_at,
                    disconnected_at: None,
                    start_inferred: p.inferred.is_some(),
                    end_inferred: false,
                });
            }
            "disconnected" => {
                let open = list.last_mut().expect("a disconnect follows a connect");
                assert!(
                    open.disconnected_at.is_none(),
                    "two disconnects of one session: {e:?}"
                );
                open.disconnected_at = Some(p.occurred_at);
                open.end_inferred = p.inferred.is_some();
            }
            _ => {}
        }
    }
    by
}

fn near(a: DateTime<Utc>, b: DateTime<Utc>) -> bool {
    (a - b).num_milliseconds().abs() <= 1000
}

both_backends!(an_hour_of_lossy_events_records_every_session_that_arrived_and_marks_the_rest);

async fn an_hour_of_lossy_events_records_every_session_that_arrived_and_marks_the_rest(
    db: &TestDb,
) {
    let sim = sim::start(
        "127.0.0.1:0".parse().unwrap(),
        SimConfig {
            exempt_control: true,
            seed: Some(7),
            ..SimConfig::default()
        },
    )
    .await
    .expect("simulator");
    sim.set_events(Some(EventsConfig {
        faults: EventFaults {
            loss: 0.0,
            duplicate: 0.1,
            max_delay: Duration::from_secs(5),
        },
        ..EventsConfig::to_queue(QUEUE)
    }))
    .unwrap();
    let client = Arc::new(ChimeClient::new(
        simulator_sdk_config(&region()),
        ClientOptions::for_endpoint(&sim.endpoint_url(), 100.0, 100),
    ));
    let driver = Driver::new(client.sdk_client(&region())).with_endpoint(&sim.endpoint_url());
    let id = driver
        .create_meeting("the-hour", "us-east-1")
        .await
        .unwrap();
    let made = driver
        .add_attendees(&id, (0..PEOPLE).map(|i| (format!("person-{i:02}"), None)))
        .await
        .unwrap();
    let people: Vec<AttendeeId> = made.iter().map(|a| a.attendee_id.clone()).collect();
    db.store
        .add_meeting(&id, &region(), Some("hour"), domain::now(), false)
        .await
        .unwrap();

    let mut settings = Settings::defaults().unwrap();
    settings.database.url = db.url.clone();
    settings.http.listen.clear();
    settings.poll.interval = Duration::from_secs(2);
    settings.meeting_events.queue_url = sim.queue_url(QUEUE).unwrap();
    settings.meeting_events.endpoint_url = sim.endpoint_url();
    settings.meeting_events.region = "us-east-1".into();
    settings.meeting_events.wait = Duration::from_secs(1);
    // Deliveries are held back up to 5 s: the reorder window covers that.
    settings.meeting_events.reorder_window = Duration::from_secs(6);
    settings.meeting_events.visibility_timeout = Duration::from_secs(120);
    settings.shutdown.grace = Duration::from_secs(5);
    let cancel = CancellationToken::new();
    let daemon = Daemon::build(
        &settings,
        Some(db.store.clone()),
        cancel.clone(),
        DaemonOptions {
            client: Some(client.clone()),
            ..DaemonOptions::default()
        },
    )
    .await
    .unwrap();
    common::eventually("the first poll knows everyone", || async {
        db.store.snapshot(&id).await.unwrap().attendees.len() == PEOPLE
    })
    .await;

    // The hour, backdated so that it ends now.
    let start = Utc::now() - TimeDelta::minutes(70);
    let mut dice = Dice(42);
    let (steps, truth) = script(start, &mut dice);
    assert!(
        steps.last().unwrap().at < Utc::now(),
        "the script ends in the past"
    );
    for s in &steps {
        if s.lose {
            sim.lose_next(s.action.event_type(), 1);
        }
        sim.presence(&id, &people[s.who], s.action, None, Some(s.at))
            .unwrap_or_else(|e| panic!("{:?} of person {} at {}: {e}", s.action, s.who, s.at));
    }
    // Every delivery is in (held back at most 5 s, applied after the 6 s window).
    // Every message deleted: each was applied (or counted) and none is held any more.
    common::eventually_within(Duration::from_secs(120), "every event applied", || {
        let c = sim.queue_counts(QUEUE);
        async move { c.is_some_and(|c| c.visible + c.in_flight + c.delayed == 0) }
    })
    .await;
    // The meeting ends, and its MeetingEnded is lost: a poll proves the end.
    sim.lose_next(EventType::MeetingEnded, 1);
    driver.delete_meeting(&id).await.unwrap();
    common::eventually_within(Duration::from_secs(120), "the meeting ended", || async {
        db.store.get_meeting(&id).await.unwrap().unwrap().status == MeetingStatus::Ended
    })
    .await;
    cancel.cancel();
    daemon.wait().await.unwrap();

    let got = recorded(db, &id).await;
    let mut exact = 0;
    let mut inferred = 0;
    for (who, sessions) in truth.iter().enumerate() {
        let key = people[who].as_str().to_owned();
        let mine = got.get(&key).cloned().unwrap_or_default();
        // Every session closed, none negative, none overlapping, none twice.
        let mut starts = HashSet::new();
        for (i, s) in mine.iter().enumerate() {
            let end = s
                .disconnected_at
                .unwrap_or_else(|| panic!("an open session after the end: {s:?}"));
            assert!(s.connected_at <= end, "a negative session: {s:?}");
            assert!(starts.insert(s.connected_at), "a session twice: {s:?}");
            if let Some(next) = mine.get(i + 1) {
                assert!(
                    end <= next.connected_at,
                    "overlapping sessions: {s:?} {next:?}"
                );
            }
            inferred += usize::from(s.start_inferred) + usize::from(s.end_inferred);
        }
        // Each true session whose join and end both arrived is recorded as it was.
        for t in sessions.iter().filter(|t| t.both_arrived) {
            let end = t.end.unwrap();
            let found = mine.iter().any(|s| {
                !s.start_inferred
                    && !s.end_inferred
                    && near(s.connected_at, t.start)
                    && s.disconnected_at.is_some_and(|d| near(d, end))
            });
            assert!(
                found,
                "person {who}: true session {t:?} not recorded exactly; got {mine:?}"
            );
            exact += 1;
        }
    }
    let stats = sim.event_stats();
    eprintln!(
        "{exact} sessions matched exactly, {inferred} inferred boundaries; events: {stats:?}"
    );
    assert!(
        exact >= PEOPLE / 2,
        "too few sessions to mean anything: {exact}"
    );
    assert!(
        stats.lost > 0 && stats.duplicated > 0 && stats.delayed > 0,
        "{stats:?}"
    );
}
