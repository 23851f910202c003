//! Cluster mode (`cluster.enabled`) where it used to break: replicas whose clocks disagree
//! take meetings over from each other and every recorded timestamp still comes from one clock
//! (no event observed before its previous poll, no session shorter than nothing); the lease of
//! a meeting that ended or stopped is released instead of renewed forever.
//!
//! Real `run` replicas on a real Postgres against the simulator, through the real SDK client.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{BIN, TestDb, eventually};
use roster_sync::domain::{MeetingId, Region};
use tokio::process::{Child, Command};

/// A `run` replica in cluster mode, killed when dropped.
struct Replica(Child);

impl Replica {
    /// A replica with a short interval, heartbeat and lease TTL; `extra` adds or overrides
    /// environment variables.
    fn start(db: &TestDb, endpoint: &str, extra: &[(&str, &str)]) -> Self {
        let child = Command::new(BIN)
            .arg("run")
            .env_clear()
            .envs(common::binary_env())
            .env("ROSTER_SYNC__HTTP__LISTEN", "")
            .env("DATABASE_URL", &db.url)
            .env("ROSTER_SYNC__CHIME__ENDPOINT_URL", endpoint)
            .env("ROSTER_SYNC__POLL__INTERVAL", "300ms")
            .env("ROSTER_SYNC__RETRY__BASE", "20ms")
            .env("ROSTER_SYNC__RETRY__CAP", "500ms")
            .env("ROSTER_SYNC__CLUSTER__ENABLED", "true")
            .env("ROSTER_SYNC__CLUSTER__LEASE_TTL", "4s")
            .env("ROSTER_SYNC__CLUSTER__HEARTBEAT", "300ms")
            .envs(extra.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start a replica");
        Replica(child)
    }

    /// Sends SIGTERM and waits for a clean exit (the replica releases its leases).
    async fn stop(mut self) {
        let pid = self.0.id().expect("running").to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(sent.success(), "kill -TERM {pid}");
        let status = tokio::time::timeout(Duration::from_secs(60), self.0.wait())
            .await
            .expect("the replica stops after SIGTERM")
            .unwrap();
        assert!(status.success(), "SIGTERM exits 0: {status}");
    }
}

async fn count(db: &TestDb, sql: &'static str) -> i64 {
    db.raw.scalar(sql).await
}

/// Creates `n` meetings of `attendees` each in the simulator and tracks them.
async fn meetings(
    db: &TestDb,
    driver: &roster_sync::sim::control::Driver,
    n: usize,
    attendees: usize,
) -> Vec<MeetingId> {
    let region = Region::parse("us-east-1").unwrap();
    let mut ids = Vec::new();
    for m in 0..n {
        let id = driver
            .create_meeting(&format!("m{m}"), "us-east-1")
            .await
            .unwrap();
        driver
            .add_attendees(&id, (0..attendees).map(|i| (format!("m{m}-p{i}"), None)))
            .await
            .unwrap();
        db.store
            .add_meeting(&id, &region, None, roster_sync::domain::now(), false)
            .await
            .unwrap();
        ids.push(id);
    }
    ids
}

/// Two replicas whose host clocks are 20 minutes apart (one 10 minutes behind the database's,
/// one 10 minutes ahead) take meetings over from each other: the joins are recorded by one, the
/// departures and the end of a meeting by the other. Every event must still be observed no
/// earlier than its previous poll, every session must end no earlier than it began, and every
/// recorded time must be the database's (within a few minutes of it, not ten off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_with_skewed_clocks_record_every_time_by_one_clock() {
    let Some(db) = common::postgres_db().await else {
        return;
    };
    let (sim, driver) = common::sim_and_driver(200.0).await;
    let ids = meetings(&db, &driver, 6, 3).await;

    let ahead = Replica::start(
        &db,
        &sim.endpoint_url(),
        &[("ROSTER_SYNC_CLOCK_OFFSET", "+10m")],
    );
    eventually("the replica ahead records every join", || async {
        count(
            &db,
            "SELECT count(*) FROM roster_events WHERE kind = 'joined'",
        )
        .await
            == 18
    })
    .await;

    // The replica behind joins, takes half of the meetings, then all of them once the one
    // ahead stops (a clean stop releases its leases).
    let behind = Replica::start(
        &db,
        &sim.endpoint_url(),
        &[("ROSTER_SYNC_CLOCK_OFFSET", "-10m")],
    );
    eventually("both replicas hold meetings", || async {
        count(
            &db,
            "SELECT count(DISTINCT owner) FROM meeting_leases WHERE expires_at > now()",
        )
        .await
            == 2
    })
    .await;
    ahead.stop().await;
    eventually("the replica behind holds every meeting", || async {
        count(
            &db,
            "SELECT count(*) FROM meeting_leases AS l JOIN cluster_replicas AS r \
             ON r.replica_id = l.owner WHERE l.expires_at > now()",
        )
        .await
            == 6
            && count(&db, "SELECT count(*) FROM cluster_replicas").await == 1
    })
    .await;

    // Departures and newcomers in every meeting, and one meeting ends.
    for (n, id) in ids.iter().enumerate() {
        let first = driver.attendee_ids(id).await.unwrap()[0].clone();
        driver.delete_attendee(id, &first).await.unwrap();
        driver
            .add_attendees(id, [(format!("late-{n}"), None)])
            .await
            .unwrap();
    }
    eventually("the replica behind records every change", || async {
        count(
            &db,
            "SELECT count(*) FROM roster_events WHERE kind = 'left'",
        )
        .await
            == 6
            && count(
                &db,
                "SELECT count(*) FROM roster_events WHERE kind = 'joined'",
            )
            .await
                == 24
    })
    .await;
    driver.delete_meeting(&ids[0]).await.unwrap();
    eventually("the end of the meeting is recorded", || async {
        count(
            &db,
            "SELECT count(*) FROM roster_events WHERE reason = 'meeting_ended'",
        )
        .await
            == 3
    })
    .await;

    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM roster_events WHERE observed_at < previous_poll_at"
        )
        .await,
        0,
        "an event observed before its previous poll"
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM attendance_sessions \
             WHERE left_at < joined_at OR duration_seconds < 0"
        )
        .await,
        0,
        "a session that ends before it began"
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM roster_events \
             WHERE abs(EXTRACT(EPOCH FROM observed_at - now())) > 300 \
                OR abs(EXTRACT(EPOCH FROM previous_poll_at - now())) > 300"
        )
        .await,
        0,
        "an event timed by a replica's skewed clock instead of the database's"
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM tracked_meetings \
             WHERE abs(EXTRACT(EPOCH FROM last_polled_at - now())) > 300 \
                OR abs(EXTRACT(EPOCH FROM ended_at - now())) > 300"
        )
        .await,
        0,
        "a meeting's bookkeeping timed by a replica's skewed clock"
    );
    drop(behind);
    sim.shutdown().await.unwrap();
    db.finish().await;
}

/// The newest heartbeat any replica recorded, in microseconds since the epoch.
async fn last_heartbeat(db: &TestDb) -> i64 {
    count(
        db,
        "SELECT COALESCE((EXTRACT(EPOCH FROM max(heartbeat_at)) * 1000000)::int8, 0) \
         FROM cluster_replicas",
    )
    .await
}

/// A meeting the service ended (DeleteMeeting, confirmed by the daemon) and one whose tracking
/// was stopped keep no lease: three heartbeats after, neither has a lease row, while the
/// meeting still active keeps its lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_of_ended_and_stopped_meetings_are_released() {
    let Some(db) = common::postgres_db().await else {
        return;
    };
    let (sim, driver) = common::sim_and_driver(200.0).await;
    let ids = meetings(&db, &driver, 3, 2).await;
    let replica = Replica::start(&db, &sim.endpoint_url(), &[]);
    eventually("every join recorded and every meeting leased", || async {
        count(
            &db,
            "SELECT count(*) FROM roster_events WHERE kind = 'joined'",
        )
        .await
            == 6
            && count(
                &db,
                "SELECT count(*) FROM meeting_leases WHERE expires_at > now()",
            )
            .await
                == 3
    })
    .await;

    driver.delete_meeting(&ids[0]).await.unwrap();
    db.store
        .remove_meeting(&ids[1], roster_sync::domain::now())
        .await
        .unwrap();
    eventually("the daemon confirms the end of the meeting", || async {
        count(
            &db,
            "SELECT count(*) FROM tracked_meetings WHERE status = 'ended'",
        )
        .await
            == 1
    })
    .await;

    // Three heartbeats after the end was recorded.
    let mut seen = last_heartbeat(&db).await;
    for beat in 1..=3 {
        eventually(&format!("heartbeat {beat} after the end"), || async {
            last_heartbeat(&db).await > seen
        })
        .await;
        seen = last_heartbeat(&db).await;
    }
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM meeting_leases AS l JOIN tracked_meetings AS m \
             USING (meeting_id) WHERE m.status <> 'active'"
        )
        .await,
        0,
        "a lease of an ended or stopped meeting is left"
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM meeting_leases WHERE expires_at > now()"
        )
        .await,
        1,
        "the active meeting keeps its lease"
    );
    drop(replica);
    sim.shutdown().await.unwrap();
    db.finish().await;
}

both_backends!(a_poll_timed_before_the_poll_it_follows_is_recorded_at_that_poll);

/// The store's own guard, whatever clock the caller read: a poll whose start and observation
/// are earlier than the previous poll (a clock stepped back, a replica behind the one before
/// it) is recorded at the previous poll's time, its events and the meeting's end alike.
async fn a_poll_timed_before_the_poll_it_follows_is_recorded_at_that_poll(db: &TestDb) {
    use roster_sync::domain::{Attendee, AttendeeId, Capabilities, Change, ExternalUserId};
    use roster_sync::store::{ApplyOutcome, PollRecord};
    let store = &db.store;
    let meeting = MeetingId::parse("00000000-0000-0000-0000-0000000000c1").unwrap();
    let region = Region::parse("us-east-1").unwrap();
    let t0 = roster_sync::domain::now();
    store
        .add_meeting(&meeting, &region, None, t0, false)
        .await
        .unwrap();
    let person = |n: u32| Attendee {
        attendee_id: AttendeeId::parse(&format!("00000000-0000-0000-0000-{n:012}")).unwrap(),
        external_user_id: ExternalUserId::new(format!("user-{n}")),
        capabilities: Capabilities::DEFAULT,
    };
    let first = [Change::joined(&person(1))];
    let applied = store
        .apply(PollRecord {
            meeting_id: &meeting,
            expected_seq: 0,
            started_at: t0,
            observed_at: t0,
            previous_poll_at: None,
            changes: &first,
        })
        .await
        .unwrap();
    let ApplyOutcome::Applied { poll_seq, .. } = applied else {
        panic!("{applied:?}")
    };
    // The next poll read a clock ten minutes behind.
    let behind = t0 - chrono::TimeDelta::minutes(10);
    let second = [Change::joined(&person(2))];
    let applied = store
        .apply(PollRecord {
            meeting_id: &meeting,
            expected_seq: poll_seq,
            started_at: behind,
            observed_at: behind,
            previous_poll_at: Some(t0),
            changes: &second,
        })
        .await
        .unwrap();
    let ApplyOutcome::Applied { events, poll_seq } = applied else {
        panic!("{applied:?}")
    };
    assert_eq!(
        events[0].observed_at, t0,
        "observed no earlier than the previous poll"
    );
    let stored = store.get_meeting(&meeting).await.unwrap().unwrap();
    assert_eq!(
        stored.last_polled_at,
        Some(t0),
        "last_polled_at never goes back"
    );

    let ended = store
        .end_meeting(&meeting, poll_seq, behind, Some(t0))
        .await
        .unwrap();
    let ApplyOutcome::Applied { events, .. } = ended else {
        panic!("{ended:?}")
    };
    assert_eq!(events.len(), 2);
    assert!(events.iter().all(|e| e.observed_at == t0), "{events:?}");
    assert_eq!(
        db.raw
            .scalar(
                "SELECT count(*) FROM roster_events \
                 WHERE observed_at < previous_poll_at"
            )
            .await,
        0
    );
}

fn replica_info(n: u32) -> roster_sync::store::ReplicaInfo {
    roster_sync::store::ReplicaInfo {
        id: roster_sync::store::ReplicaId::random(),
        host: format!("test-{n}"),
        pid: n,
        version: "test".into(),
    }
}

/// Rate shares follow pages: a replica that ends up with a 5-page meeting while the other
/// holds two meetings of one page gets 5/7 of the region's budget, not half, so it is not
/// starved while the other's quota idles; and once the other leaves, the whole budget is its.
#[tokio::test]
async fn rate_shares_follow_the_pages_each_replica_holds() {
    use roster_sync::domain::{Attendee, AttendeeId, Capabilities, Change, ExternalUserId};
    use roster_sync::store::PollRecord;
    let Some(db) = common::postgres_db().await else {
        return;
    };
    let store = &db.store;
    let region = Region::parse("us-east-1").unwrap();
    // One attendee a page (page_size 1 below): 5, 1 and 1 pages.
    for (n, size) in [(1u32, 5u32), (2, 1), (3, 1)] {
        let id = MeetingId::parse(&format!("00000000-0000-0000-0000-00000000020{n}")).unwrap();
        let now = roster_sync::domain::now();
        store
            .add_meeting(&id, &region, None, now, false)
            .await
            .unwrap();
        let people: Vec<Change> = (0..size)
            .map(|a| {
                Change::joined(&Attendee {
                    attendee_id: AttendeeId::parse(&format!("00000000-0000-0000-{n:04}-{a:012}"))
                        .unwrap(),
                    external_user_id: ExternalUserId::new(format!("user-{n}-{a}")),
                    capabilities: Capabilities::DEFAULT,
                })
            })
            .collect();
        store
            .apply(PollRecord {
                meeting_id: &id,
                expected_seq: 0,
                started_at: now,
                observed_at: now,
                previous_poll_at: None,
                changes: &people,
            })
            .await
            .unwrap();
    }
    let ttl = Duration::from_secs(30);
    let (a, b) = (replica_info(1), replica_info(2));
    store.heartbeat(&a, ttl, 1).await.unwrap();
    // The renewal counts the pages; B joins; A gives up the two small meetings; B takes them.
    assert_eq!(store.heartbeat(&a, ttl, 1).await.unwrap().held_pages, 7);
    store.heartbeat(&b, ttl, 1).await.unwrap();
    assert_eq!(store.heartbeat(&a, ttl, 1).await.unwrap().held_pages, 5);
    assert_eq!(store.heartbeat(&b, ttl, 1).await.unwrap().held_pages, 2);

    let a_view = store.heartbeat(&a, ttl, 1).await.unwrap();
    let b_view = store.heartbeat(&b, ttl, 1).await.unwrap();
    let share = |v: &roster_sync::store::ClusterView| {
        let [(r, s)] = v.region_shares.as_slice() else {
            panic!("{v:?}")
        };
        assert_eq!(*r, region);
        *s
    };
    assert!((share(&a_view) - 5.0 / 7.0).abs() < 1e-9, "{a_view:?}");
    assert!((share(&b_view) - 2.0 / 7.0).abs() < 1e-9, "{b_view:?}");
    let rows = store.replicas(ttl).await.unwrap();
    let shown: Vec<f64> = rows.iter().map(|r| r.rate_share[0].1).collect();
    assert_eq!(rows.len(), 2);
    assert!(
        (shown[0] - 5.0 / 7.0).abs() < 1e-9 && (shown[1] - 2.0 / 7.0).abs() < 1e-9,
        "`roster-sync cluster` shows the same shares: {shown:?}"
    );

    // B leaves: its share goes back to A with its meetings.
    store.leave_cluster(&b.id).await.unwrap();
    let a_view = store.heartbeat(&a, ttl, 1).await.unwrap();
    assert_eq!(a_view.held_pages, 7);
    assert!((share(&a_view) - 1.0).abs() < 1e-9, "{a_view:?}");
    db.finish().await;
}
