//! Cluster mode (`cluster.enabled`) on a real Postgres: a poll whose lease was lost writes
//! nothing and is counted; three real `run` replicas share meetings, each polled by one of
//! them, and take over from a killed or stopped replica without repeating or losing an event;
//! SQLite refuses cluster mode naming the key.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::TestDb;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use roster_sync::domain::{
    Attendee, AttendeeId, Capabilities, Change, ExternalUserId, MeetingId, Region,
};
use roster_sync::store::{ApplyOutcome, PollRecord, ReplicaId, ReplicaInfo, UnchangedPoll};
use tokio::process::{Child, Command};

use common::BIN;

/// The process-wide metrics recorder, so a test can read `roster_sync_lease_lost_total`.
fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .install_recorder()
            .expect("install the metrics recorder")
    })
}

fn lease_lost_total() -> u64 {
    metrics()
        .render()
        .lines()
        .find_map(|l| l.strip_prefix("roster_sync_lease_lost_total "))
        .map_or(0, |v| v.trim().parse().unwrap())
}

fn replica(n: u32) -> ReplicaInfo {
    ReplicaInfo {
        id: ReplicaId::random(),
        host: format!("test-{n}"),
        pid: n,
        version: "test".into(),
    }
}

fn attendee(n: u32) -> Attendee {
    Attendee {
        attendee_id: AttendeeId::parse(&format!("00000000-0000-0000-0000-{n:012}")).unwrap(),
        external_user_id: ExternalUserId::new(format!("user-{n}")),
        capabilities: Capabilities::DEFAULT,
    }
}

async fn postgres() -> Option<TestDb> {
    common::postgres_db().await
}

#[tokio::test]
async fn a_poll_whose_lease_was_taken_over_writes_nothing_and_is_counted() {
    let Some(db) = postgres().await else { return };
    metrics();
    let store = &db.store;
    let region = Region::parse("us-east-1").unwrap();
    let meeting = MeetingId::parse("00000000-0000-0000-0000-0000000000aa").unwrap();
    store
        .add_meeting(&meeting, &region, None, roster_sync::domain::now(), false)
        .await
        .unwrap();
    let ttl = Duration::from_secs(30);
    let a = replica(1);
    let view = store.heartbeat(&a, ttl, 100).await.unwrap();
    assert_eq!((view.held, view.live_replicas), (1, 1));
    let held = store.leased_meeting_keys(&a.id).await.unwrap();
    let [(_, _, token)] = held.as_slice() else {
        panic!("{held:?}")
    };
    let token = *token;

    // Replica A fetched the roster under `token`; meanwhile its lease expires and replica B
    // takes the meeting over.
    let snapshot = store.snapshot(&meeting).await.unwrap();
    db.raw
        .execute("UPDATE meeting_leases SET expires_at = now() - interval '1 second'")
        .await;
    let b = replica(2);
    store.heartbeat(&b, ttl, 100).await.unwrap();
    let taken = store.leased_meeting_keys(&b.id).await.unwrap();
    assert_eq!(taken.len(), 1, "B holds the meeting now");
    assert!(taken[0].2.0 > token.0, "a new grant has a larger token");

    let lost_before = lease_lost_total();
    let changes = [Change::joined(&attendee(1))];
    let now = roster_sync::domain::now();
    let rec = || PollRecord {
        meeting_id: &meeting,
        expected_seq: snapshot.poll_seq,
        started_at: now,
        observed_at: now,
        previous_poll_at: None,
        changes: &changes,
    };
    let outcome = store.apply_fenced(rec(), Some(token)).await.unwrap();
    assert!(matches!(outcome, ApplyOutcome::Conflict), "{outcome:?}");
    let unchanged = store
        .record_unchanged_polls(&[UnchangedPoll {
            meeting_id: meeting.clone(),
            expected_seq: snapshot.poll_seq,
            started_at: now,
            fence: Some(token),
        }])
        .await
        .unwrap();
    assert_eq!(unchanged, [false]);
    let ended = store
        .end_meeting_fenced(&meeting, snapshot.poll_seq, now, None, Some(token))
        .await
        .unwrap();
    assert!(matches!(ended, ApplyOutcome::Conflict), "{ended:?}");

    assert_eq!(db.raw.scalar("SELECT count(*) FROM roster_events").await, 0);
    assert_eq!(
        db.raw.scalar("SELECT count(*) FROM roster_attendees").await,
        0
    );
    let after = store.get_meeting(&meeting).await.unwrap().unwrap();
    assert_eq!(after.poll_seq, snapshot.poll_seq, "no bookkeeping either");
    assert!(after.last_polled_at.is_none());
    assert_eq!(
        lease_lost_total() - lost_before,
        3,
        "each refused write counted"
    );

    // B, holding the lease, records the same poll.
    let outcome = store.apply_fenced(rec(), Some(taken[0].2)).await.unwrap();
    assert!(
        matches!(outcome, ApplyOutcome::Applied { ref events, .. } if events.len() == 1),
        "{outcome:?}"
    );
    db.finish().await;
}

#[tokio::test]
async fn replicas_split_the_pages_and_a_departing_replica_releases_its_leases() {
    let Some(db) = postgres().await else { return };
    let store = &db.store;
    let region = Region::parse("us-east-1").unwrap();
    for n in 0..12u32 {
        let id = MeetingId::parse(&format!("00000000-0000-0000-0000-{n:012}")).unwrap();
        store
            .add_meeting(&id, &region, None, roster_sync::domain::now(), false)
            .await
            .unwrap();
    }
    let ttl = Duration::from_secs(30);
    let (a, b, c) = (replica(1), replica(2), replica(3));
    assert_eq!(store.heartbeat(&a, ttl, 100).await.unwrap().held, 12);
    // B joins: it finds nothing free until A gives up its surplus.
    store.heartbeat(&b, ttl, 100).await.unwrap();
    store.heartbeat(&c, ttl, 100).await.unwrap();
    let a_view = store.heartbeat(&a, ttl, 100).await.unwrap();
    assert_eq!((a_view.held, a_view.released), (4, 8));
    assert_eq!(a_view.region_holders, vec![(region.clone(), 1)]);
    assert_eq!(store.heartbeat(&b, ttl, 100).await.unwrap().held, 4);
    let c_view = store.heartbeat(&c, ttl, 100).await.unwrap();
    assert_eq!(c_view.held, 4);
    assert_eq!(
        c_view.region_holders,
        vec![(region.clone(), 3)],
        "a third of the rate each"
    );
    let owners = store.meeting_owners().await.unwrap();
    assert_eq!(owners.len(), 12, "every meeting has exactly one owner");

    let rows = store.replicas(ttl).await.unwrap();
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r.meetings == 4), "{rows:?}");

    assert_eq!(store.leave_cluster(&c.id).await.unwrap(), 4);
    assert_eq!(store.heartbeat(&a, ttl, 100).await.unwrap().held, 6);
    assert_eq!(store.heartbeat(&b, ttl, 100).await.unwrap().held, 6);
    db.finish().await;
}

#[test]
fn cluster_mode_on_sqlite_is_refused_at_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("roster.db").display());
    let out = std::process::Command::new(BIN)
        .arg("run")
        .env_clear()
        .env("DATABASE_URL", &url)
        .env("ROSTER_SYNC__CLUSTER__ENABLED", "true")
        .env("ROSTER_SYNC__HTTP__LISTEN", "")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cluster.enabled"), "{stderr}");
    assert!(stderr.contains("Postgres"), "{stderr}");
}

/// A `run` replica in cluster mode, killed when dropped.
struct Replica(Child);

impl Replica {
    fn start(db: &TestDb, endpoint: &str) -> Self {
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
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start a replica");
        Replica(child)
    }

    fn pid(&self) -> i32 {
        self.0.id().expect("running") as i32
    }

    async fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(sig)
            .arg(self.pid().to_string())
            .status()
            .await
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }
}

/// Polls `what` until it holds or 60 s pass (a failure guard only).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The owner of every meeting with a valid lease, and the replica id of each pid.
async fn owners(db: &TestDb) -> (HashMap<MeetingId, ReplicaId>, HashMap<i32, String>) {
    let owners = db.store.meeting_owners().await.unwrap();
    let rows = db.store.replicas(Duration::from_secs(4)).await.unwrap();
    let pids = rows
        .into_iter()
        .map(|r| (r.pid, r.replica_id.to_string()))
        .collect();
    (owners, pids)
}

fn held_by(owners: &HashMap<MeetingId, ReplicaId>) -> BTreeMap<String, usize> {
    let mut held = BTreeMap::new();
    for o in owners.values() {
        *held.entry(o.to_string()).or_default() += 1;
    }
    held
}

async fn duplicated_joins(db: &TestDb) -> i64 {
    db.raw
        .scalar(
            "SELECT count(*) FROM (SELECT meeting_id, attendee_id FROM roster_events \
             WHERE kind = 'joined' GROUP BY meeting_id, attendee_id HAVING count(*) > 1) AS d",
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_poll_each_meeting_once_and_take_over_from_a_killed_or_stopped_one() {
    let Some(db) = postgres().await else { return };
    let region = Region::parse("us-east-1").unwrap();
    let (sim, driver) = common::sim_and_driver(200.0).await;
    let mut meetings = Vec::new();
    for n in 0..30 {
        let id = driver
            .create_meeting(&format!("m{n}"), "us-east-1")
            .await
            .unwrap();
        driver
            .add_attendees(&id, (0..3).map(|i| (format!("m{n}-p{i}"), None)))
            .await
            .unwrap();
        db.store
            .add_meeting(&id, &region, None, roster_sync::domain::now(), false)
            .await
            .unwrap();
        meetings.push(id);
    }

    let a = Replica::start(&db, &sim.endpoint_url());
    let b = Replica::start(&db, &sim.endpoint_url());
    let c = Replica::start(&db, &sim.endpoint_url());
    eventually("90 joined and 10 meetings held by each replica", || async {
        let joined = db
            .raw
            .scalar("SELECT count(*) FROM roster_events WHERE kind = 'joined'")
            .await;
        let (owners, _) = owners(&db).await;
        let held = held_by(&owners);
        joined == 90 && held.len() == 3 && held.values().all(|&n| n == 10)
    })
    .await;
    assert_eq!(duplicated_joins(&db).await, 0, "every attendee joined once");

    // kill -9: A's leases stay until they expire, then B and C take its meetings over.
    let (owners_now, pids) = owners(&db).await;
    let a_id = pids[&a.pid()].clone();
    let a_meetings: Vec<MeetingId> = owners_now
        .iter()
        .filter(|(_, o)| o.to_string() == a_id)
        .map(|(m, _)| m.clone())
        .collect();
    assert_eq!(a_meetings.len(), 10);
    a.signal("-KILL").await;
    for (n, m) in a_meetings.iter().enumerate() {
        driver
            .add_attendees(m, [(format!("late-{n}"), None)])
            .await
            .unwrap();
    }
    eventually(
        "A's meetings taken over and their newcomers recorded",
        || async {
            let joined = db
                .raw
                .scalar("SELECT count(*) FROM roster_events WHERE kind = 'joined'")
                .await;
            let (owners, _) = owners(&db).await;
            joined == 100
                && a_meetings
                    .iter()
                    .all(|m| owners.get(m).is_some_and(|o| o.to_string() != a_id))
        },
    )
    .await;

    // SIGTERM: B releases its leases on the way out, so none is left in its name.
    let (_, pids) = owners(&db).await;
    let b_id = pids[&b.pid()].clone();
    b.signal("-TERM").await;
    let mut b = b;
    let status = b.0.wait().await.unwrap();
    assert!(status.success(), "SIGTERM exits 0: {status}");
    let (owners_after, pids) = owners(&db).await;
    assert!(
        owners_after.values().all(|o| o.to_string() != b_id),
        "no lease is left in the name of the stopped replica"
    );
    assert!(!pids.values().any(|id| *id == b_id), "its row is gone");
    for (n, m) in meetings.iter().enumerate() {
        driver
            .add_attendees(m, [(format!("last-{n}"), None)])
            .await
            .unwrap();
    }
    eventually("C holds and records every meeting", || async {
        let joined = db
            .raw
            .scalar("SELECT count(*) FROM roster_events WHERE kind = 'joined'")
            .await;
        let (owners, _) = owners(&db).await;
        joined == 130 && owners.len() == 30 && held_by(&owners).len() == 1
    })
    .await;
    assert_eq!(duplicated_joins(&db).await, 0, "no event repeated");
    assert_eq!(
        db.raw
            .scalar("SELECT count(*) FROM roster_events WHERE kind <> 'joined'")
            .await,
        0,
        "nothing invented"
    );
    drop(c);
    sim.shutdown().await.unwrap();
    db.finish().await;
}
