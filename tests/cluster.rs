//! Cluster mode (`cluster.enabled`) on a real Postgres: a poll whose lease was lost writes
//! nothing and is counted; three real `run` replicas share meetings, each polled by one of
//! them, and take over from a killed or stopped replica without repeating or losing an event;
//! a replica stopped (SIGSTOP) past its lease cannot commit the poll it had in flight; one
//! frozen inside a transaction (its heartbeat or a write) holds up no other replica; three
//! replicas share 200 meetings under two minutes of churn inside the quota the simulator
//! enforces; SQLite refuses cluster mode naming the key.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{TestDb, eventually, eventually_within};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use roster_sync::domain::{
    Attendee, AttendeeId, Capabilities, Change, EventKind, ExternalUserId, MeetingId, Region,
};
use roster_sync::sim::ScriptedFault;
use roster_sync::sim::churn::{ChurnPlan, Fleet, LISTENER, churn, guid};
use roster_sync::store::{ApplyOutcome, PollRecord, ReplicaId, ReplicaInfo, UnchangedPoll};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use common::BIN;

/// `cluster.lease_ttl` of every replica these tests start.
const LEASE_TTL: Duration = Duration::from_secs(4);

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
    let held = store.leased_meetings(&a.id).await.unwrap();
    let [leased] = held.as_slice() else {
        panic!("{held:?}")
    };
    let token = leased.token;

    // Replica A fetched the roster under `token`; meanwhile its lease expires and replica B
    // takes the meeting over.
    let snapshot = store.snapshot(&meeting).await.unwrap();
    db.raw
        .execute("UPDATE meeting_leases SET expires_at = now() - interval '1 second'")
        .await;
    let b = replica(2);
    store.heartbeat(&b, ttl, 100).await.unwrap();
    let taken = store.leased_meetings(&b.id).await.unwrap();
    assert_eq!(taken.len(), 1, "B holds the meeting now");
    assert!(taken[0].token.0 > token.0, "a new grant has a larger token");

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
    let failure_written = store
        .record_failure_fenced(
            &meeting,
            Some("ThrottlingException"),
            "stale failure",
            now,
            Some(token),
        )
        .await
        .unwrap();
    assert!(
        !failure_written,
        "a failure under a lost lease is not noted"
    );

    assert_eq!(db.raw.scalar("SELECT count(*) FROM roster_events").await, 0);
    assert_eq!(
        db.raw.scalar("SELECT count(*) FROM roster_attendees").await,
        0
    );
    let after = store.get_meeting(&meeting).await.unwrap().unwrap();
    assert_eq!(after.poll_seq, snapshot.poll_seq, "no bookkeeping either");
    assert!(after.last_polled_at.is_none());
    assert_eq!(
        (after.consecutive_failures, after.last_error.as_deref()),
        (0, None),
        "no error columns either"
    );
    assert_eq!(
        lease_lost_total() - lost_before,
        4,
        "each refused write counted"
    );

    // B, holding the lease, notes its own failure, and records the same poll.
    assert!(
        store
            .record_failure_fenced(&meeting, None, "B's failure", now, Some(taken[0].token))
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .get_meeting(&meeting)
            .await
            .unwrap()
            .unwrap()
            .last_error
            .as_deref(),
        Some("B's failure")
    );
    let outcome = store
        .apply_fenced(rec(), Some(taken[0].token))
        .await
        .unwrap();
    assert!(
        matches!(outcome, ApplyOutcome::Applied { ref events, .. } if events.len() == 1),
        "{outcome:?}"
    );
    db.finish().await;
}

/// A poll committing under its lease holds the lease row `FOR SHARE`, and a batch of unchanged
/// polls' bookkeeping holds many: the heartbeat renews the other leases without waiting for
/// those rows (waiting, while holding the rows already renewed, is how the two deadlocked),
/// and renews the held one at a later heartbeat.
#[tokio::test]
async fn a_heartbeat_does_not_wait_for_a_lease_row_a_commit_holds() {
    use sqlx::Connection as _;
    let Some(db) = postgres().await else { return };
    let store = &db.store;
    let region = Region::parse("us-east-1").unwrap();
    for n in 1..=3u32 {
        let id = MeetingId::parse(&format!("00000000-0000-0000-0000-00000000010{n}")).unwrap();
        store
            .add_meeting(&id, &region, None, roster_sync::domain::now(), false)
            .await
            .unwrap();
    }
    let ttl = Duration::from_secs(30);
    let a = replica(1);
    assert_eq!(store.heartbeat(&a, ttl, 100).await.unwrap().held, 3);
    // Every lease far in the future, so a renewal (to now + TTL) shows whatever the clock.
    db.raw
        .execute("UPDATE meeting_leases SET expires_at = '2100-01-01'")
        .await;

    let mut committing = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut tx = committing.begin().await.unwrap();
    sqlx::query(
        "SELECT 1 FROM meeting_leases \
         WHERE meeting_id = '00000000-0000-0000-0000-000000000101' FOR SHARE",
    )
    .execute(&mut *tx)
    .await
    .unwrap();

    // Without the skip, this waits for the lock until the session's lock_timeout fails it.
    let view = store.heartbeat(&a, ttl, 100).await.unwrap();
    assert_eq!(
        view.held, 3,
        "a lease skipped for a heartbeat is still held"
    );
    let renewed = db
        .raw
        .scalar("SELECT count(*) FROM meeting_leases WHERE expires_at < '2099-01-01'")
        .await;
    assert_eq!(renewed, 2, "the two rows nobody else held were renewed");

    tx.commit().await.unwrap();
    store.heartbeat(&a, ttl, 100).await.unwrap();
    let renewed = db
        .raw
        .scalar("SELECT count(*) FROM meeting_leases WHERE expires_at < '2099-01-01'")
        .await;
    assert_eq!(renewed, 3, "the next heartbeat renews the third");
    drop(committing);
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

/// A `run` replica in cluster mode, killed when dropped, and the directory of the file that
/// lets an injected stop go on ([`Replica::resume`]).
struct Replica(Child, tempfile::TempDir);

impl Replica {
    fn start(db: &TestDb, endpoint: &str) -> Self {
        Self::start_with(db, endpoint, &[])
    }

    /// A replica with a short interval, heartbeat and lease TTL; `extra` adds or overrides
    /// environment variables.
    fn start_with(db: &TestDb, endpoint: &str, extra: &[(&str, String)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
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
            .env(
                "ROSTER_SYNC__CLUSTER__LEASE_TTL",
                format!("{}s", LEASE_TTL.as_secs()),
            )
            .env("ROSTER_SYNC__CLUSTER__HEARTBEAT", "300ms")
            .env(
                roster_sync::fault::RESUME_FILE_ENV,
                dir.path().join("resume"),
            )
            .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start a replica");
        Replica(child, dir)
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

    /// The process state letter from `/proc/PID/stat` (`T`: stopped by a signal).
    fn state(&self) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        stat.rsplit_once(')')?.1.trim_start().chars().next()
    }

    /// Lets a replica stopped by an injected fault go on: creates its resume file, then sends
    /// SIGCONT. A SIGCONT alone (from anywhere else) only makes the fault stop it again.
    async fn resume(&self) {
        std::fs::write(self.1.path().join("resume"), b"").unwrap();
        self.signal("-CONT").await;
    }

    /// Waits until the replica is stopped by a signal (an injected stop fault); fails at once,
    /// with its exit status, if it exits instead.
    async fn wait_until_stopped(&mut self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.0.try_wait().expect("the replica's status") {
                panic!("{what}: the replica exited instead ({status})");
            }
            if self.state() == Some('T') {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends SIGTERM and waits for a clean exit.
    async fn stop(mut self) {
        self.signal("-TERM").await;
        let status = tokio::time::timeout(Duration::from_secs(60), self.0.wait())
            .await
            .expect("the replica stops after SIGTERM")
            .unwrap();
        assert!(status.success(), "SIGTERM exits 0: {status}");
    }
}

/// The owner of every meeting with a valid lease, and the replica id of each pid.
async fn owners(db: &TestDb) -> (HashMap<MeetingId, ReplicaId>, HashMap<i32, String>) {
    let owners = db.store.meeting_owners().await.unwrap();
    let rows = db.store.replicas(LEASE_TTL).await.unwrap();
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The value of `metric` on the `/metrics` page served at `port`, `None` while nothing answers
/// or the metric is not there yet.
async fn scrape(port: u16, metric: &str) -> Option<f64> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .ok()?;
    let mut page = String::new();
    s.read_to_string(&mut page).await.ok()?;
    page.lines()
        .find_map(|l| l.strip_prefix(metric)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn pg(db: &TestDb) -> &sqlx::PgPool {
    match &db.raw {
        common::Raw::Postgres(pool) => pool,
        common::Raw::Sqlite(_) => unreachable!("cluster tests run on Postgres"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_paused_past_its_lease_cannot_commit_the_poll_it_had_in_flight() {
    let Some(db) = postgres().await else { return };
    let region = Region::parse("us-east-1").unwrap();
    let (sim, driver) = common::sim_and_driver(200.0).await;
    let meeting = driver.create_meeting("paused", "us-east-1").await.unwrap();
    let people = driver
        .add_attendees(&meeting, (0..3).map(|i| (format!("paused-{i}"), None)))
        .await
        .unwrap();
    db.store
        .add_meeting(&meeting, &region, None, roster_sync::domain::now(), false)
        .await
        .unwrap();

    // A polls, finds three attendees, and stops (SIGSTOP) just before its write.
    let port = free_port();
    // Its other threads stop wherever they are, perhaps inside a heartbeat transaction: the
    // server ends such a session after its idle_in_transaction_session_timeout, here 3 s.
    let mut a = Replica::start_with(
        &db,
        &sim.endpoint_url(),
        &[
            ("ROSTER_SYNC_FAULT", "stop_before_write".into()),
            ("ROSTER_SYNC__HTTP__LISTEN", format!("127.0.0.1:{port}")),
            ("ROSTER_SYNC__DATABASE__STATEMENT_TIMEOUT", "3s".into()),
        ],
    );
    a.wait_until_stopped("A is stopped with its poll in flight")
        .await;
    let a_id = owners(&db).await.1[&a.pid()].clone();
    assert_eq!(
        db.raw.scalar("SELECT count(*) FROM roster_events").await,
        0,
        "A wrote nothing before it stopped"
    );

    // While A is stopped, the first attendee leaves, and B takes the lease over once A's has
    // expired. B's own polls fail for now, so nothing but the lease moves: the meeting's
    // poll_seq stays what A's poll expects.
    driver
        .delete_attendee(&meeting, &people[0].attendee_id)
        .await
        .unwrap();
    sim.script(
        &meeting,
        ScriptedFault::new(503, "ServiceUnavailableException"),
    );
    let b = Replica::start_with(
        &db,
        &sim.endpoint_url(),
        &[("ROSTER_SYNC__POLL__FAILURE_BACKOFF_CAP", "1s".into())],
    );
    eventually("B holds the meeting's lease", || async {
        let (owners, pids) = owners(&db).await;
        pids.get(&b.pid())
            .is_some_and(|b_id| owners.get(&meeting).is_some_and(|o| o.to_string() == *b_id))
    })
    .await;

    // A resumes with its fetched roster and tries to commit it under its old lease token.
    a.resume().await;
    eventually("A counts the write it lost", || async {
        scrape(port, "roster_sync_lease_lost_total")
            .await
            .is_some_and(|n| n >= 1.0)
    })
    .await;
    assert_eq!(
        db.raw.scalar("SELECT count(*) FROM roster_events").await,
        0,
        "A's three joins were dropped"
    );
    assert_eq!(
        db.raw.scalar("SELECT count(*) FROM roster_attendees").await,
        0
    );
    let row = db.store.get_meeting(&meeting).await.unwrap().unwrap();
    assert_eq!(
        (row.poll_seq, row.last_polled_at),
        (0, None),
        "the lease alone refused it: no other write had moved poll_seq"
    );
    let (owners_now, _) = owners(&db).await;
    assert_ne!(owners_now[&meeting].to_string(), a_id, "B still holds it");

    // B polls again and records the roster as it is now, once: the attendee who left while A
    // was stopped, seen only by A's dropped poll, appears nowhere.
    sim.clear_script(&meeting);
    eventually("B records the two attendees", || async {
        db.raw.scalar("SELECT count(*) FROM roster_events").await >= 2
    })
    .await;
    let mut recorded: Vec<(String, String)> =
        sqlx::query_as("SELECT kind, attendee_id FROM roster_events")
            .fetch_all(pg(&db))
            .await
            .unwrap();
    recorded.sort();
    let mut expected: Vec<(String, String)> = people[1..]
        .iter()
        .map(|p| ("joined".to_owned(), p.attendee_id.as_str().to_owned()))
        .collect();
    expected.sort();
    assert_eq!(recorded, expected);
    assert_eq!(duplicated_joins(&db).await, 0);

    a.stop().await;
    b.stop().await;
    sim.shutdown().await.unwrap();
    db.finish().await;
}

/// The attendees `meeting`'s snapshot holds, sorted.
async fn snapshot_of(db: &TestDb, meeting: &MeetingId) -> Vec<String> {
    let mut ids: Vec<String> =
        sqlx::query_scalar("SELECT attendee_id FROM roster_attendees WHERE meeting_id = $1")
            .bind(meeting.as_str())
            .fetch_all(pg(db))
            .await
            .unwrap();
    ids.sort();
    ids
}

/// Replica A stops itself with `fault` inside a transaction and stays frozen, its session kept
/// open, with `statement_timeout` as its `database.statement_timeout` (also its
/// `idle_in_transaction_session_timeout`). Once its heartbeat is older than its lease TTL, an
/// attendee leaves A's meeting, a second meeting starts, and replica B starts. B must record the second meeting whatever A
/// holds; with `takeover`, B must also take A's meeting over once the server has ended A's
/// session, and record its roster as it is now, each join once.
async fn frozen_inside_a_transaction(fault: &str, statement_timeout: &str, takeover: bool) {
    let Some(db) = postgres().await else { return };
    let region = Region::parse("us-east-1").unwrap();
    let (sim, driver) = common::sim_and_driver(200.0).await;
    let first = driver.create_meeting("frozen", "us-east-1").await.unwrap();
    let people = driver
        .add_attendees(&first, (0..3).map(|i| (format!("frozen-{i}"), None)))
        .await
        .unwrap();
    db.store
        .add_meeting(&first, &region, None, roster_sync::domain::now(), false)
        .await
        .unwrap();

    let mut a = Replica::start_with(
        &db,
        &sim.endpoint_url(),
        &[
            ("ROSTER_SYNC_FAULT", fault.into()),
            (
                "ROSTER_SYNC__DATABASE__STATEMENT_TIMEOUT",
                statement_timeout.into(),
            ),
        ],
    );
    a.wait_until_stopped(&format!("A stops itself ({fault})"))
        .await;
    // Past A's lease TTL: its leases are up for takeover and its heartbeat row is one the
    // others' heartbeats delete, both as committed (A's open transaction may hold them locked).
    eventually("A's heartbeat row goes stale", || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM cluster_replicas \
             WHERE heartbeat_at < now() - make_interval(secs => $1)",
        )
        .bind(LEASE_TTL.as_secs_f64())
        .fetch_one(pg(&db))
        .await
        .unwrap()
            == 1
    })
    .await;

    driver
        .delete_attendee(&first, &people[0].attendee_id)
        .await
        .unwrap();
    let second = driver.create_meeting("after", "us-east-1").await.unwrap();
    let others = driver
        .add_attendees(&second, (0..2).map(|i| (format!("after-{i}"), None)))
        .await
        .unwrap();
    db.store
        .add_meeting(&second, &region, None, roster_sync::domain::now(), false)
        .await
        .unwrap();
    let b = Replica::start(&db, &sim.endpoint_url());

    let mut expected: Vec<String> = others
        .iter()
        .map(|p| p.attendee_id.as_str().to_owned())
        .collect();
    expected.sort();
    eventually(
        "B records the meeting that started while A is frozen",
        || async { snapshot_of(&db, &second).await == expected },
    )
    .await;
    if takeover {
        let mut expected: Vec<String> = people[1..]
            .iter()
            .map(|p| p.attendee_id.as_str().to_owned())
            .collect();
        expected.sort();
        eventually(
            "B takes A's meeting over and records it as it is now",
            || async { snapshot_of(&db, &first).await == expected },
        )
        .await;
        assert_eq!(duplicated_joins(&db).await, 0);
    }
    // Still frozen (a stray SIGCONT only makes it stop itself again: see `Replica::resume`).
    a.wait_until_stopped("A is still frozen").await;

    drop(a);
    b.stop().await;
    sim.shutdown().await.unwrap();
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_frozen_inside_its_heartbeat_loses_its_session_and_its_meetings() {
    frozen_inside_a_transaction("stop_in_heartbeat", "3s", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_other_replicas_go_on_while_a_replica_frozen_inside_its_heartbeat_keeps_its_session() {
    // A day: A's session and its locks outlast the test; B's heartbeat must not wait for them.
    frozen_inside_a_transaction("stop_in_heartbeat", "1d", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_frozen_inside_its_write_holds_up_no_other_writer() {
    frozen_inside_a_transaction("stop_before_commit", "3s", true).await;
}

/// What the simulator holds for one attendee the test created: whether it is still there and
/// its capabilities (the churn switches them between the default and `LISTENER`).
struct Truth {
    meeting: MeetingId,
    live: bool,
    capabilities: Capabilities,
    /// Changes the simulator applied to it: its creation, capability changes, its deletion.
    changes: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_200_meetings_under_churn_within_the_quota() {
    // The real quota; the simulator enforces it on ListAttendees (and on each other read) and
    // the replicas are configured with the same numbers.
    const QUOTA_RPS: f64 = 10.0;
    const BURST: u32 = 20;
    const MEETINGS: usize = 200;
    const REPLICAS: usize = 3;
    let Some(db) = postgres().await else { return };
    let region = Region::parse("us-east-1").unwrap();
    let (sim, driver) = common::sim_and_driver(200.0).await;
    sim.set_rate(QUOTA_RPS, BURST).unwrap();

    let mut fleet = Fleet::default();
    let mut truth: HashMap<u128, Truth> = HashMap::new();
    for n in 0..MEETINGS {
        let id = driver
            .create_meeting(&format!("shared-{n}"), "us-east-1")
            .await
            .unwrap();
        let created = driver
            .add_attendees(&id, (0..3).map(|i| (format!("shared-{n}-{i}"), None)))
            .await
            .unwrap();
        for c in &created {
            truth.insert(
                guid(c.attendee_id.as_str()).unwrap(),
                Truth {
                    meeting: id.clone(),
                    live: true,
                    capabilities: Capabilities::DEFAULT,
                    changes: 1,
                },
            );
        }
        fleet.add(id.clone(), &created).unwrap();
        db.store
            .add_meeting(&id, &region, None, roster_sync::domain::now(), false)
            .await
            .unwrap();
    }
    let meetings: HashMap<u128, MeetingId> = fleet
        .ids()
        .map(|m| (guid(m.as_str()).unwrap(), m.clone()))
        .collect();

    // Three replicas, each configured with the whole quota (the cluster splits it) and an
    // interval that asks for four times what the quota allows: the quota is what limits them.
    let at_sim_before = sim.stats();
    let window_started = Instant::now();
    let settings = [
        ("ROSTER_SYNC__POLL__INTERVAL", "5s".to_owned()),
        ("ROSTER_SYNC__POLL__FAILURE_BACKOFF_CAP", "5s".to_owned()),
        (
            "ROSTER_SYNC__RATE__REQUESTS_PER_SECOND",
            QUOTA_RPS.to_string(),
        ),
        ("ROSTER_SYNC__RATE__BURST", BURST.to_string()),
    ];
    let replicas: Vec<Replica> = (0..REPLICAS)
        .map(|_| Replica::start_with(&db, &sim.endpoint_url(), &settings))
        .collect();

    // The shares settle: the leases are balanced by pages (one page a meeting here: a third
    // each, up to rounding), and every replica has heartbeated since, so each has set its
    // rate share from those holdings.
    let store = &db.store;
    let balanced = move || async move {
        let held = held_by(&store.meeting_owners().await.unwrap());
        held.len() == REPLICAS && held.values().all(|n| n.abs_diff(MEETINGS / REPLICAS) <= 1)
    };
    eventually("the replicas hold a third of the meetings each", balanced).await;
    let balanced_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(pg(&db))
        .await
        .unwrap();
    eventually("every replica heartbeated after the balance", || async {
        let rows = db.store.replicas(LEASE_TTL).await.unwrap();
        rows.len() == REPLICAS && rows.iter().all(|r| r.heartbeat_at > balanced_at)
    })
    .await;
    let at_sim_settled = sim.stats();

    // Two minutes of churn, while the test samples who holds what.
    let plan = ChurnPlan {
        per_second: 2.0,
        duration: Duration::from_secs(120),
        target: 3,
        end_a_meeting_after: None,
        skew: roster_sync::sim::churn::Skew::Uniform,
        name: |serial| format!("churn-{serial}"),
    };
    let mut made = Vec::new();
    let churn_done = std::sync::atomic::AtomicBool::new(false);
    let churning = async {
        let churned = churn(&driver, &mut fleet, &plan, &CancellationToken::new(), |m| {
            made.push(m)
        })
        .await;
        churn_done.store(true, std::sync::atomic::Ordering::SeqCst);
        churned
    };
    let sampling = async {
        let mut last = BTreeMap::new();
        while !churn_done.load(std::sync::atomic::Ordering::SeqCst) {
            last = held_by(&db.store.meeting_owners().await.unwrap());
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        last
    };
    let (churned, held_at_the_end) = tokio::join!(churning, sampling);
    let churn_ended = roster_sync::domain::now();
    assert_eq!(churned.failed, 0, "the simulator applied every change");
    for m in &made {
        let t = truth.entry(m.attendee).or_insert_with(|| Truth {
            meeting: meetings[&m.meeting].clone(),
            live: false,
            capabilities: Capabilities::DEFAULT,
            changes: 0,
        });
        t.changes += 1;
        match m.kind {
            EventKind::Joined => t.live = true,
            EventKind::Left => t.live = false,
            EventKind::CapabilitiesChanged => {
                t.capabilities = if t.capabilities == LISTENER {
                    Capabilities::DEFAULT
                } else {
                    LISTENER
                };
            }
            other => panic!("the churn made a {other}, which it cannot"),
        }
    }
    // The simulator's own record agrees with the driver's account.
    for (attendee, t) in &truth {
        let id = AttendeeId::parse(&uuid::Uuid::from_u128(*attendee).to_string()).unwrap();
        let timeline = sim.attendee_timeline(&t.meeting, &id).expect("created");
        assert_eq!(timeline.deleted_at.is_none(), t.live, "{id}");
    }
    // Balanced by pages (one page a meeting here): a third each, up to rounding. A sample
    // taken mid-churn may catch a lease in a handover, so wait for the balance to be observed
    // (the last sample is only in the failure message).
    eventually_within(
        Duration::from_secs(60),
        &format!("all three replicas hold a third of the meetings each (last sample during the churn: {held_at_the_end:?})"),
        balanced,
    )
    .await;

    // Settle: every meeting completes a poll started after the churn, and the record then
    // matches the simulator.
    let live_of = |m: &MeetingId| -> BTreeMap<String, Capabilities> {
        truth
            .iter()
            .filter(|(_, t)| t.live && t.meeting == *m)
            .map(|(a, t)| (uuid::Uuid::from_u128(*a).to_string(), t.capabilities))
            .collect()
    };
    eventually_within(
        Duration::from_secs(180),
        "every meeting polled after the churn, its snapshot as in the simulator",
        || async {
            let polled: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM tracked_meetings WHERE last_polled_at >= $1",
            )
            .bind(churn_ended)
            .fetch_one(pg(&db))
            .await
            .unwrap();
            if polled < MEETINGS as i64 {
                return false;
            }
            for m in meetings.values() {
                let snapshot = db.store.snapshot(m).await.unwrap();
                let recorded: BTreeMap<String, Capabilities> = snapshot
                    .attendees
                    .iter()
                    .map(|a| (a.attendee_id.as_str().to_owned(), a.capabilities))
                    .collect();
                if recorded != live_of(m) {
                    return false;
                }
            }
            true
        },
    )
    .await;
    let window = window_started.elapsed().as_secs_f64();
    let at_sim = sim.stats();

    // No event twice: per attendee, one join first, each capability change starting from
    // the capabilities the previous event left, at most one departure and nothing after it;
    // never more events than the simulator made changes.
    let events = db.store.events_since(0, i64::MAX).await.unwrap();
    let mut per_attendee: HashMap<u128, Vec<&roster_sync::store::StoredEvent>> = HashMap::new();
    for e in &events {
        per_attendee
            .entry(guid(e.attendee_id.as_str()).unwrap())
            .or_default()
            .push(e);
    }
    for (attendee, seq) in &per_attendee {
        let t = truth.get(attendee).expect("an attendee the test created");
        assert_eq!(seq[0].meeting_id, t.meeting);
        assert!(seq.len() <= t.changes, "more events than changes: {seq:?}");
        assert_eq!(seq[0].kind, EventKind::Joined, "{seq:?}");
        let mut caps = seq[0].after;
        for (i, e) in seq.iter().enumerate().skip(1) {
            assert_eq!(
                e.before, caps,
                "a change from what the last event left: {seq:?}"
            );
            match e.kind {
                EventKind::Joined => panic!("joined twice: {seq:?}"),
                EventKind::CapabilitiesChanged => caps = e.after,
                EventKind::Left => {
                    assert_eq!(i, seq.len() - 1, "nothing after a departure: {seq:?}");
                    assert!(!t.live, "a departure of someone still there: {seq:?}");
                }
                other => panic!("no meeting events were read, yet a {other} was recorded"),
            }
        }
    }
    for (attendee, t) in &truth {
        if t.live {
            assert!(
                per_attendee.contains_key(attendee),
                "every present attendee recorded"
            );
        }
    }

    // The fleet's requests, counted where the quota is enforced. The bounds on throttles
    // follow from the configuration:
    // - While the shares settle, a replica that claims leases polls them at its new share
    //   while their last holder keeps its old share until its next heartbeat (every 300 ms,
    //   and a holder a lease TTL late has lost the leases): each replica after the first can
    //   overlap by at most its burst and a lease TTL at the whole quota.
    // - Once they are settled, the replicas' buckets together refill at the quota and hold at
    //   most its burst, like the simulator's, which each request drains as it drains theirs:
    //   they can send at most one burst more than the simulator lets through.
    let settling_bound =
        (REPLICAS - 1) as f64 * (f64::from(BURST) + QUOTA_RPS * LEASE_TTL.as_secs_f64());
    let settled_bound = f64::from(BURST);
    for (op, before, settled, after) in [
        (
            "ListAttendees",
            at_sim_before.list_attendees,
            at_sim_settled.list_attendees,
            at_sim.list_attendees,
        ),
        (
            "GetMeeting",
            at_sim_before.get_meeting,
            at_sim_settled.get_meeting,
            at_sim.get_meeting,
        ),
        (
            "GetAttendee",
            at_sim_before.get_attendee,
            at_sim_settled.get_attendee,
            at_sim.get_attendee,
        ),
    ] {
        let requests = after.requests - before.requests;
        let settling = settled.throttled - before.throttled;
        let throttled = after.throttled - settled.throttled;
        eprintln!(
            "{op}: {requests} requests in {window:.1}s ({:.2}/s, quota {QUOTA_RPS}/s), \
             {settling} throttled while the shares settled, {throttled} after",
            requests as f64 / window
        );
        assert!(
            settling as f64 <= settling_bound,
            "{op}: {settling} throttled while the shares settled (at most {settling_bound})"
        );
        assert!(
            throttled as f64 <= settled_bound,
            "{op}: {throttled} throttled once the shares had settled (at most {settled_bound})"
        );
        // What the simulator let through (its bucket starts full), and the throttled ones.
        let allowed = QUOTA_RPS * window + f64::from(BURST) + settling_bound + settled_bound;
        assert!(
            requests as f64 <= allowed,
            "{op}: {requests} requests in {window:.1}s exceed the quota ({allowed:.0})"
        );
    }
    eprintln!(
        "{} changes made, {} events recorded",
        churned.made,
        events.len()
    );

    for r in replicas {
        r.stop().await;
    }
    assert!(
        db.store.meeting_owners().await.unwrap().is_empty(),
        "every lease released on the way out"
    );
    sim.shutdown().await.unwrap();
    db.finish().await;
}
