//! The real `roster-sync run` as an operator's supervisor sees it: it stops at once on SIGTERM
//! (a hung endpoint or a throttling storm in the way), exits at once on a second signal, starts
//! while its Postgres is down and loses nothing when it goes away mid-run, refuses to be a
//! second writer, reports a stuck loop on /healthz, and talks to systemd.
//!
//! The simulator and the fake endpoints run in the test's runtime, so the binary is driven
//! with `tokio::process` (a blocking wait would starve them).

mod common;

use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use roster_sync::chime::{ChimeClient, ClientOptions, simulator_sdk_config};
use roster_sync::domain::{MeetingId, Region};
use roster_sync::sim::control::Driver;
use roster_sync::sim::{self, SimConfig, SimHandle};
use sqlx::postgres::PgPoolOptions;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use common::{BIN, eventually, eventually_within};

/// The binary with a clean environment: no inherited configuration, placeholder AWS
/// credentials (the simulator does not check signatures), the endpoint off unless asked.
fn roster_sync(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .envs(common::binary_env())
        .env("ROSTER_SYNC__HTTP__LISTEN", "")
        .env("ROSTER_SYNC__POLL__INTERVAL", "300ms")
        .env("ROSTER_SYNC__RETRY__BASE", "20ms")
        .env("ROSTER_SYNC__RETRY__CAP", "500ms")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Runs a short command to its end; panics with its output unless it succeeds.
async fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().await.expect("run roster-sync");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    stdout
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `GET path` on the daemon's endpoint: the status code and the whole answer, or `None`
/// while nothing answers.
async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.ok()?;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let code = answer.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, answer))
}

async fn status_of(port: u16, path: &str) -> Option<u16> {
    get(port, path).await.map(|(code, _)| code)
}

fn signal(child: &Child, sig: &str) {
    let pid = child.id().expect("the daemon is running");
    let ok = std::process::Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// Sends SIGTERM and waits for the exit; prints how long the stop took (for the record: no
/// assertion depends on it).
async fn terminate(child: &mut Child, what: &str) -> ExitStatus {
    let asked = Instant::now();
    signal(child, "-TERM");
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .unwrap_or_else(|_| panic!("the daemon did not stop ({what})"))
        .expect("wait for the daemon");
    eprintln!("stop time ({what}): {:?}", asked.elapsed());
    status
}

fn alive(child: &mut Child) -> bool {
    child.try_wait().expect("poll the daemon").is_none()
}

async fn start_sim(config: SimConfig) -> (SimHandle, Driver) {
    let sim = sim::start("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap();
    let region = Region::parse("us-east-1").unwrap();
    let options = ClientOptions::for_endpoint(&sim.endpoint_url(), 1000.0, 1000);
    let driver =
        Driver::new(ChimeClient::new(simulator_sdk_config(&region), options).sdk_client(&region));
    (sim, driver)
}

/// A SQLite file with `meetings` tracked, migrated by the binary.
async fn sqlite_with(dir: &tempfile::TempDir, meetings: &[MeetingId]) -> String {
    let url = format!("sqlite://{}", dir.path().join("roster.db").display());
    ok(roster_sync(&["migrate"]).env("DATABASE_URL", &url)).await;
    for id in meetings {
        ok(roster_sync(&["meetings", "add", id.as_str(), "--no-verify"]).env("DATABASE_URL", &url))
            .await;
    }
    url
}

async fn sqlite_count(url: &str, sql: &'static str) -> i64 {
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .unwrap();
    let n = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
    pool.close().await;
    n
}

fn guid(n: u32) -> MeetingId {
    MeetingId::parse(&format!("{n:08x}-0000-4000-8000-000000000000")).unwrap()
}

#[tokio::test]
async fn sigterm_while_the_endpoint_hangs_stops_at_once_with_status_0_and_records_nothing() {
    // An endpoint that accepts connections and never answers.
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", hung.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let holder = {
        let accepted = Arc::clone(&accepted);
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = hung.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                held.push(socket);
            }
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_with(&dir, &[guid(1), guid(2), guid(3)]).await;
    let mut daemon = roster_sync(&["run"])
        .env("DATABASE_URL", &url)
        .env("ROSTER_SYNC__CHIME__ENDPOINT_URL", &endpoint)
        .env("ROSTER_SYNC__CHIME__ATTEMPT_TIMEOUT", "10m")
        .env("ROSTER_SYNC__CHIME__PAGE_TIMEOUT", "10m")
        .env("ROSTER_SYNC__SHUTDOWN__GRACE", "5m")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    eventually("every meeting's fetch hangs", || {
        let n = accepted.load(Ordering::SeqCst);
        async move { n >= 3 }
    })
    .await;

    let status = terminate(&mut daemon, "hung endpoint").await;

    assert!(status.success(), "{status}");
    assert_eq!(
        sqlite_count(
            &url,
            "SELECT count(*) FROM tracked_meetings WHERE last_polled_at IS NOT NULL OR last_error IS NOT NULL"
        )
        .await,
        0,
        "a cancelled fetch records nothing, not even a failure"
    );
    holder.abort();
}

#[tokio::test]
async fn sigterm_during_a_throttling_storm_stops_at_once_with_status_0_and_whole_polls() {
    // A quota of 2 requests/s against a daemon that believes it has 100.
    let (sim, driver) = start_sim(SimConfig {
        rate: 2.0,
        burst: 2,
        exempt_control: true,
        ..SimConfig::default()
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..12 {
        let id = driver
            .create_meeting(&format!("storm{i}"), "us-east-1")
            .await
            .unwrap();
        driver
            .add_attendees(&id, (0..3).map(|a| (format!("m{i}a{a}"), None)))
            .await
            .unwrap();
        ids.push(id);
    }
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_with(&dir, &ids).await;
    let port = free_port();
    let mut daemon = roster_sync(&["run"])
        .env("DATABASE_URL", &url)
        .env("ROSTER_SYNC__CHIME__ENDPOINT_URL", sim.endpoint_url())
        .env("ROSTER_SYNC__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("ROSTER_SYNC__RATE__REQUESTS_PER_SECOND", "100")
        .env("ROSTER_SYNC__RATE__BURST", "100")
        .env("ROSTER_SYNC__POLL__CONCURRENCY", "12")
        .env("ROSTER_SYNC__SHUTDOWN__GRACE", "5m")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    eventually("the service throttles the daemon", || async {
        get(port, "/metrics").await.is_some_and(|(_, m)| {
            m.lines().any(|l| {
                l.starts_with("roster_sync_chime_requests_total") && l.contains("throttled")
            })
        })
    })
    .await;

    let status = terminate(&mut daemon, "throttling storm").await;

    assert!(status.success(), "{status}");
    let partial = sqlite_count(
        &url,
        "SELECT count(*) FROM (SELECT meeting_id, count(*) AS n FROM roster_attendees \
         GROUP BY meeting_id) WHERE n <> 3",
    )
    .await;
    assert_eq!(partial, 0, "every recorded roster is whole");
    sim.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_second_signal_exits_at_once_with_a_non_zero_status() {
    let Some(db) = common::postgres_db().await else {
        return;
    };
    let (sim, driver) = start_sim(SimConfig {
        exempt_control: true,
        ..SimConfig::default()
    })
    .await;
    let id = driver.create_meeting("stuck", "us-east-1").await.unwrap();
    driver
        .add_attendees(&id, (0..5).map(|a| (format!("p{a}"), None)))
        .await
        .unwrap();
    ok(roster_sync(&["meetings", "add", id.as_str(), "--no-verify"]).env("DATABASE_URL", &db.url))
        .await;
    // Another session holds roster_events: the first poll's transaction waits on it.
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&db.url)
        .await
        .unwrap();
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE roster_events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let mut daemon = roster_sync(&["run"])
        .env("DATABASE_URL", &db.url)
        .env("ROSTER_SYNC__CHIME__ENDPOINT_URL", sim.endpoint_url())
        .env("ROSTER_SYNC__SHUTDOWN__GRACE", "5m")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let waiting = "SELECT count(*) FROM pg_stat_activity \
                   WHERE application_name = 'roster-sync' AND wait_event_type = 'Lock'";
    eventually("a poll's transaction waits for the lock", || async {
        sqlx::query_scalar::<_, i64>(waiting)
            .fetch_one(&pool)
            .await
            .unwrap()
            > 0
    })
    .await;
    signal(&daemon, "-TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(alive(&mut daemon), "the first signal waits for the write");

    let asked = Instant::now();
    signal(&daemon, "-INT");
    let status = tokio::time::timeout(Duration::from_secs(60), daemon.wait())
        .await
        .expect("the second signal ends the daemon")
        .unwrap();
    eprintln!("exit after the second signal: {:?}", asked.elapsed());

    assert_eq!(status.code(), Some(130), "{status}");
    blocker.rollback().await.unwrap();
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM roster_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(events, 0, "the abandoned transaction left nothing behind");
    pool.close().await;
    sim.shutdown().await.unwrap();
    db.finish().await;
}

#[tokio::test]
async fn a_second_run_on_the_same_postgres_database_is_refused_naming_the_first() {
    let Some(db) = common::postgres_db().await else {
        return;
    };
    // A database without the holder table yet: the first daemon takes the lock, then
    // migrates, then describes itself.
    sqlx::raw_sql("DROP TABLE writer_lock_holder; DELETE FROM _sqlx_migrations WHERE version = 6")
        .execute(match &db.raw {
            common::Raw::Postgres(pool) => pool,
            common::Raw::Sqlite(_) => unreachable!("a Postgres database"),
        })
        .await
        .unwrap();
    let port = free_port();
    let mut first = roster_sync(&["run"])
        .env("DATABASE_URL", &db.url)
        .env("HOSTNAME", "writer-one.example")
        .env("ROSTER_SYNC__CHIME__ENDPOINT_URL", "http://127.0.0.1:9")
        .env("ROSTER_SYNC__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    eventually("the first daemon is ready", || async {
        status_of(port, "/readyz").await == Some(200)
    })
    .await;

    let out = roster_sync(&["run"])
        .env("DATABASE_URL", &db.url)
        .env("ROSTER_SYNC__CHIME__ENDPOINT_URL", "http://127.0.0.1:9")
        .output()
        .await
        .unwrap();

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let name = db.url.rsplit('/').next().unwrap();
    assert!(
        stderr.contains("another roster-sync") && stderr.contains(name),
        "{stderr}"
    );
    let pid = first.id().expect("the first daemon runs");
    assert!(
        stderr.contains(&format!("pid {pid} on host writer-one.example")),
        "{stderr}"
    );
    assert!(alive(&mut first), "the first daemon runs on");
    assert!(terminate(&mut first, "idle").await.success());
    db.finish().await;
}

#[tokio::test]
async fn healthz_turns_503_while_the_loop_waits_on_a_lock_and_200_when_it_is_released() {
    let Some(db) = common::postgres_db().await else {
        return;
    };
    ok(roster_sync(&["migrate"]).env("DATABASE_URL", &db.url)).await;
    let port = free_port();
    let mut daemon = roster_sync(&["run"])
        .env("DATABASE_URL", &db.url)
        .env("ROSTER_SYNC__CHIME__ENDPOINT_URL", "http://127.0.0.1:9")
        .env("ROSTER_SYNC__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("ROSTER_SYNC__HTTP__STALL_AFTER", "1s")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    eventually("ready", || async {
        status_of(port, "/readyz").await == Some(200)
    })
    .await;
    assert_eq!(status_of(port, "/healthz").await, Some(200));

    // The loop re-reads the meeting list; this lock makes that read wait.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await
        .unwrap();
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE tracked_meetings IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    eventually("/healthz reports the stall", || async {
        get(port, "/healthz")
            .await
            .is_some_and(|(code, body)| code == 503 && body.contains("has not ticked"))
    })
    .await;
    blocker.rollback().await.unwrap();
    eventually("/healthz is 200 again", || async {
        status_of(port, "/healthz").await == Some(200)
    })
    .await;

    assert!(terminate(&mut daemon, "idle").await.success());
    pool.close().await;
    db.finish().await;
}

/// The value of one unlabeled-or-labeled sample line of `/metrics`, e.g.
/// `roster_sync_database_errors_total{operation="meeting_list"}`.
async fn metric(port: u16, series: &str) -> Option<f64> {
    let (_, page) = get(port, "/metrics").await?;
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn a_statement_past_statement_timeout_fails_and_the_loop_keeps_ticking() {
    let Some(db) = common::postgres_db().await else {
        return;
    };
    let port = free_port();
    let mut daemon = roster_sync(&["run"])
        .env("DATABASE_URL", &db.url)
        .env("ROSTER_SYNC__CHIME__ENDPOINT_URL", "http://127.0.0.1:9")
        .env("ROSTER_SYNC__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("ROSTER_SYNC__DATABASE__STATEMENT_TIMEOUT", "200ms")
        // Shorter than the 10 s lock_timeout: without the statement limit, the lock below
        // would hold the loop long enough to fail /healthz (see the test above).
        .env("ROSTER_SYNC__HTTP__STALL_AFTER", "3s")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    eventually("ready", || async {
        status_of(port, "/readyz").await == Some(200)
    })
    .await;
    let errors = "roster_sync_database_errors_total{operation=\"meeting_list\"}";
    let before = metric(port, errors).await.unwrap_or(0.0);

    // The loop re-reads the meeting list; this lock makes that read wait, until the
    // statement_timeout cancels it.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await
        .unwrap();
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE tracked_meetings IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    eventually(
        "three reads of the meeting list failed, the loop going on",
        || async {
            metric(port, errors)
                .await
                .is_some_and(|n| n >= before + 3.0)
        },
    )
    .await;
    let (code, body) = get(port, "/readyz").await.unwrap();
    assert_eq!(code, 503, "{body}");
    let (code, body) = get(port, "/healthz").await.unwrap();
    assert_eq!(code, 200, "the loop is not stalled: {body}");
    blocker.rollback().await.unwrap();
    eventually("ready again", || async {
        status_of(port, "/readyz").await == Some(200)
    })
    .await;

    assert!(terminate(&mut daemon, "idle").await.success());
    pool.close().await;
    db.finish().await;
}

#[cfg(unix)]
#[tokio::test]
async fn under_systemd_it_notifies_ready_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_with(&dir, &[]).await;
    let socket_path = dir.path().join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&socket_path).unwrap();
    let mut daemon = roster_sync(&["run"])
        .env("DATABASE_URL", &url)
        .env("ROSTER_SYNC__CHIME__ENDPOINT_URL", "http://127.0.0.1:9")
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = String::new();
    let mut buf = vec![0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(seen.contains("READY=1") && seen.contains("WATCHDOG=1")) {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, socket.recv(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no READY=1 and WATCHDOG=1; got:\n{seen}"))
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.contains("STATUS=ready"), "{seen}");

    let status = terminate(&mut daemon, "idle, under systemd").await;

    assert!(status.success(), "{status}");
    let mut rest = String::new();
    while let Ok(Ok(n)) =
        tokio::time::timeout(Duration::from_millis(200), socket.recv(&mut buf)).await
    {
        rest.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(rest.contains("STOPPING=1"), "{rest}");
}

/// A private Postgres cluster on a free port, run as the `postgres` user (the tests run as
/// root, which Postgres refuses to be). Stopped when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    port: u16,
}

impl Cluster {
    fn bin(tool: &str) -> Option<std::path::PathBuf> {
        let mut found: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin").join(tool))
            .filter(|p| p.exists())
            .collect();
        found.sort();
        found.pop()
    }

    /// `None` (the test is skipped) without Postgres' server binaries, unless `CI` is set.
    fn init() -> Option<Self> {
        let Some(initdb) = Self::bin("initdb") else {
            common::skip("no initdb under /usr/lib/postgresql (install the PostgreSQL server)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let owned = std::process::Command::new("chown")
            .arg("postgres")
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(owned.success(), "chown postgres {}", dir.path().display());
        let data = dir.path().join("data");
        let out = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(initdb)
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(Self {
            dir,
            port: free_port(),
        })
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    async fn pg_ctl(&self, args: &[&str]) {
        let pg_ctl = Self::bin("pg_ctl").expect("pg_ctl beside initdb");
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg_ctl)
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-o")
            .arg(options)
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .args(["-w", "-t", "60"])
            .args(args)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    async fn start(&self) {
        self.pg_ctl(&["start"]).await;
    }

    async fn stop(&self) {
        self.pg_ctl(&["stop", "-m", "fast"]).await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(pg_ctl) = Self::bin("pg_ctl") {
            let _ = std::process::Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(pg_ctl)
                .arg("-D")
                .arg(self.dir.path().join("data"))
                .args(["-m", "immediate", "stop"])
                .output();
        }
    }
}

/// `[joined, removed]` events recorded, or `None` while the database does not answer.
async fn pg_counts(url: &str) -> Option<[i64; 2]> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(2))
        .connect(url)
        .await
        .ok()?;
    let joined = sqlx::query_scalar("SELECT count(*) FROM roster_events WHERE kind = 'joined'")
        .fetch_one(&pool)
        .await
        .ok()?;
    let removed = sqlx::query_scalar("SELECT count(*) FROM roster_events WHERE reason = 'removed'")
        .fetch_one(&pool)
        .await
        .ok()?;
    pool.close().await;
    Some([joined, removed])
}

#[tokio::test]
async fn a_start_while_postgres_is_down_waits_and_an_outage_mid_run_loses_nothing() {
    let Some(cluster) = Cluster::init() else {
        return;
    };
    let (sim, driver) = start_sim(SimConfig {
        exempt_control: true,
        ..SimConfig::default()
    })
    .await;
    let id = driver.create_meeting("outage", "us-east-1").await.unwrap();
    let made = driver
        .add_attendees(&id, (0..10).map(|a| (format!("p{a}"), None)))
        .await
        .unwrap();
    let config = cluster.dir.path().join("roster.toml");
    std::fs::write(&config, format!("[[meetings]]\nid = \"{id}\"\n")).unwrap();
    let port = free_port();
    let mut daemon = roster_sync(&["run"])
        .arg("--config")
        .arg(&config)
        .env("DATABASE_URL", cluster.url())
        .env("ROSTER_SYNC__CHIME__ENDPOINT_URL", sim.endpoint_url())
        .env("ROSTER_SYNC__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();

    // The database is not there yet: the endpoint answers, not ready, and the process waits.
    eventually("/readyz answers", || async {
        status_of(port, "/readyz").await.is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(status_of(port, "/readyz").await, Some(503));
    assert_eq!(
        status_of(port, "/healthz").await,
        Some(200),
        "waiting is not a stall"
    );
    assert!(alive(&mut daemon), "it waits for its database");

    cluster.start().await;
    eventually_within(Duration::from_secs(90), "ready and polling", || async {
        status_of(port, "/readyz").await == Some(200)
            && pg_counts(&cluster.url()).await == Some([10, 0])
    })
    .await;

    // The database goes away for a while; meanwhile 3 attendees leave and 2 join.
    cluster.stop().await;
    for a in &made[..3] {
        driver.delete_attendee(&id, &a.attendee_id).await.unwrap();
    }
    driver
        .add_attendees(&id, (10..12).map(|a| (format!("p{a}"), None)))
        .await
        .unwrap();
    eventually("not ready while the database is away", || async {
        status_of(port, "/readyz").await == Some(503)
    })
    .await;
    assert!(alive(&mut daemon), "it waits for its database again");
    cluster.start().await;
    eventually_within(Duration::from_secs(90), "every change recorded", || async {
        pg_counts(&cluster.url()).await == Some([12, 3])
    })
    .await;
    eventually("ready again", || async {
        status_of(port, "/readyz").await == Some(200)
    })
    .await;
    // More polls after that record nothing twice.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        pg_counts(&cluster.url()).await,
        Some([12, 3]),
        "exactly once"
    );

    assert!(terminate(&mut daemon, "after an outage").await.success());
    sim.shutdown().await.unwrap();
    cluster.stop().await;
}

#[tokio::test]
async fn run_no_migrate_waits_unready_until_another_role_applies_the_migrations() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("roster.db").display());
    let port = free_port();
    let mut daemon = roster_sync(&["run", "--no-migrate"])
        .env("DATABASE_URL", &url)
        .env("ROSTER_SYNC__CHIME__ENDPOINT_URL", "http://127.0.0.1:9")
        .env("ROSTER_SYNC__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    eventually("/readyz answers", || async {
        status_of(port, "/readyz").await.is_some()
    })
    .await;
    let (code, body) = get(port, "/readyz").await.unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("migrations"), "{body}");
    assert!(alive(&mut daemon), "it waits instead of failing");

    ok(roster_sync(&["migrate"]).env("DATABASE_URL", &url)).await;
    eventually("ready once the migrations are applied", || async {
        status_of(port, "/readyz").await == Some(200)
    })
    .await;
    assert!(terminate(&mut daemon, "no-migrate").await.success());
    let mut stderr = String::new();
    daemon
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    assert!(
        stderr.contains("waiting for `roster-sync migrate`"),
        "{stderr}"
    );
}

/// The daemon's stderr reader goes away (a log shipper that died, `2>&1 | head`): a log line
/// that cannot be written is dropped, so the daemon keeps polling and recording, and SIGTERM
/// (whose own log line cannot be written either) still stops it with status 0.
#[tokio::test]
async fn a_daemon_whose_log_reader_went_away_keeps_recording_and_stops_on_sigterm() {
    let (sim, driver) = start_sim(SimConfig {
        exempt_control: true,
        ..SimConfig::default()
    })
    .await;
    let id = driver.create_meeting("unread", "us-east-1").await.unwrap();
    driver
        .add_attendees(&id, [("first".to_owned(), None)])
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_with(&dir, std::slice::from_ref(&id)).await;
    let mut daemon = roster_sync(&["run"])
        .env("DATABASE_URL", &url)
        .env("ROSTER_SYNC__CHIME__ENDPOINT_URL", sim.endpoint_url())
        // Every poll logs, so lines keep coming after the reader has gone.
        .env("RUST_LOG", "roster_sync=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let joins = "SELECT count(*) FROM roster_events WHERE kind = 'joined'";
    eventually("the first join recorded", || async {
        sqlite_count(&url, joins).await == 1
    })
    .await;

    drop(daemon.stderr.take());
    driver
        .add_attendees(&id, [("second".to_owned(), None)])
        .await
        .unwrap();
    eventually(
        "the second join recorded with nobody reading the log",
        || async { sqlite_count(&url, joins).await == 2 },
    )
    .await;
    let status = terminate(&mut daemon, "log reader gone").await;

    assert!(status.success(), "{status}");
    sim.shutdown().await.unwrap();
}
