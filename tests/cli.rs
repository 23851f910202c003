//! The real `roster-sync` binary: bad input is refused clearly, and the daemon survives
//! SIGTERM and a crash in the middle of recording a poll without repeating or losing an event.

mod common;

use common::eventually;

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::TestDb;
use roster_sync::domain::{Capabilities, Capability};
use roster_sync::store::MeetingStatus;

use common::BIN;

/// The binary with a clean environment: no inherited configuration, placeholder AWS
/// credentials (the simulator does not check signatures), no instance-metadata lookups.
fn roster_sync(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .envs(common::binary_env())
        .env("ROSTER_SYNC__HTTP__LISTEN", "")
        .stdin(Stdio::null());
    cmd
}

fn run(cmd: &mut Command) -> (Output, String, String) {
    let out = cmd.output().expect("run roster-sync");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !stderr.contains("panicked"),
        "roster-sync panicked: {stderr}"
    );
    (out, stdout, stderr)
}

fn refused(cmd: &mut Command) -> String {
    let (out, _, stderr) = run(cmd);
    assert!(
        !out.status.success(),
        "expected a refusal, got success; stderr: {stderr}"
    );
    stderr
}

#[test]
fn a_meeting_id_that_is_not_a_guid_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("x.db").display());
    let err = refused(roster_sync(&["meetings", "add", "not-a-meeting"]).env("DATABASE_URL", &url));
    assert!(
        err.contains("not-a-meeting") && err.contains("GUID"),
        "{err}"
    );
    assert!(
        !dir.path().join("x.db").exists(),
        "refused before touching the database"
    );
}

#[test]
fn an_unreadable_config_file_is_named() {
    let err = refused(&mut roster_sync(&[
        "--config",
        "/nonexistent/roster.toml",
        "config",
    ]));
    assert!(err.contains("/nonexistent/roster.toml"), "{err}");
}

#[test]
fn a_wrongly_typed_key_is_named() {
    let err = refused(roster_sync(&["config"]).env("ROSTER_SYNC__POLL__MAX_RESULTS", "lots"));
    assert!(err.contains("max_results"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("roster.toml");
    std::fs::write(&file, "[poll]\ninterval = 5\n").unwrap();
    let err = refused(roster_sync(&["config"]).arg("--config").arg(&file));
    assert!(err.contains("interval"), "{err}");
    std::fs::write(&file, "[poll]\nintervall = \"5s\"\n").unwrap();
    let err = refused(roster_sync(&["config"]).arg("--config").arg(&file));
    assert!(err.contains("intervall"), "{err}");
    let err = refused(roster_sync(&["config"]).env("ROSTER_SYNC__POLL__MAX_RESULTS", "500"));
    assert!(err.contains("poll.max_results"), "{err}");
}

#[test]
fn an_unreachable_database_is_named_without_its_password() {
    let err = refused(
        roster_sync(&["migrate"]).env("DATABASE_URL", "postgres://app:s3cr3t@127.0.0.1:1/roster"),
    );
    assert!(
        err.contains("postgres://app:***@127.0.0.1:1/roster"),
        "{err}"
    );
    assert!(!err.contains("s3cr3t"), "{err}");
}

/// A database still unreachable when `database.startup_timeout` runs out: the start was
/// retried meanwhile (each attempt logged), then the daemon exits non-zero with a message
/// that names the database (redacted), the timeout that expired and the last reason.
#[test]
fn a_database_unreachable_past_startup_timeout_fails_the_start_naming_the_timeout() {
    let (out, _, stderr) = run(roster_sync(&["run"])
        .env("DATABASE_URL", "postgres://app:s3cr3t@127.0.0.1:1/roster")
        .env("ROSTER_SYNC__DATABASE__STARTUP_TIMEOUT", "2s"));
    assert!(!out.status.success(), "the start succeeded: {stderr}");
    assert!(
        stderr.contains("waiting for the database"),
        "no retry was logged before giving up: {stderr}"
    );
    let last = stderr.lines().last().unwrap_or_default();
    for part in [
        "postgres://app:***@127.0.0.1:1/roster",
        "database.startup_timeout",
        "2s",
        "refused",
    ] {
        assert!(
            last.contains(part),
            "{part:?} missing from the error: {stderr}"
        );
    }
    assert!(!stderr.contains("s3cr3t"), "{stderr}");
}

#[test]
fn config_prints_the_effective_settings_with_the_password_redacted() {
    let (out, stdout, stderr) = run(roster_sync(&["config"])
        .env("DATABASE_URL", "postgres://app:s3cr3t@db:5432/roster")
        .env("ROSTER_SYNC__POLL__INTERVAL", "30s"));
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("postgres://app:***@db:5432/roster"),
        "{stdout}"
    );
    assert!(stdout.contains("interval = \"30s\""), "{stdout}");
    assert!(!stdout.contains("s3cr3t"));
}

struct Daemon(Child);

impl Daemon {
    fn start(db: &TestDb, endpoint: &str) -> Self {
        Self::start_with(db, endpoint, &[])
    }

    /// With extra environment variables, such as the test-only `ROSTER_SYNC_FAULT`.
    fn start_with(db: &TestDb, endpoint: &str, env: &[(&str, &str)]) -> Self {
        let child = roster_sync(&["run"])
            .envs(env.iter().copied())
            .env("DATABASE_URL", &db.url)
            .env("ROSTER_SYNC__CHIME__ENDPOINT_URL", endpoint)
            .env("ROSTER_SYNC__POLL__INTERVAL", "300ms")
            .env("ROSTER_SYNC__RETRY__BASE", "20ms")
            .env("ROSTER_SYNC__RETRY__CAP", "500ms")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the daemon");
        Daemon(child)
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(sig)
            .arg(self.0.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }

    /// SIGTERM, then the exit status.
    async fn terminate(self) -> std::process::ExitStatus {
        self.signal("-TERM");
        self.exit_status("stop after SIGTERM").await
    }

    /// Waits for the process to exit by itself, without blocking the test's runtime (the
    /// simulator the daemon talks to runs on it). The limit only keeps a broken daemon from
    /// hanging the test.
    async fn exit_status(mut self, what: &str) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the daemon did not {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn counts(db: &TestDb) -> [i64; 4] {
    [
        db.raw
            .scalar("SELECT count(*) FROM roster_events WHERE kind = 'joined'")
            .await,
        db.raw
            .scalar("SELECT count(*) FROM roster_events WHERE reason = 'removed'")
            .await,
        db.raw
            .scalar("SELECT count(*) FROM roster_events WHERE kind = 'capabilities_changed'")
            .await,
        db.raw
            .scalar("SELECT count(*) FROM roster_events WHERE reason = 'meeting_ended'")
            .await,
    ]
}

both_backends!(the_daemon_stopped_and_crashed_mid_poll_repeats_and_loses_nothing);

async fn the_daemon_stopped_and_crashed_mid_poll_repeats_and_loses_nothing(db: &TestDb) {
    let (sim, driver) = common::sim_and_driver(100.0).await;
    let id = driver.create_meeting("restart", "us-east-1").await.unwrap();
    let made = driver
        .add_attendees(&id, (0..120).map(|i| (format!("p{i}"), None)))
        .await
        .unwrap();

    let (out, stdout, stderr) = run(roster_sync(&["migrate"]).env("DATABASE_URL", &db.url));
    assert!(out.status.success(), "{stderr}");
    let (out, stdout2, stderr) = run(roster_sync(&[
        "meetings",
        "add",
        id.as_str(),
        "--label",
        "restart",
        "--no-verify",
    ])
    .env("DATABASE_URL", &db.url));
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout2.contains("now tracked"), "{stdout2}");

    let daemon = Daemon::start(db, &sim.endpoint_url());
    eventually("120 joined", || async { counts(db).await[0] == 120 }).await;
    driver
        .add_attendees(&id, (120..150).map(|i| (format!("p{i}"), None)))
        .await
        .unwrap();
    eventually("150 joined", || async { counts(db).await[0] == 150 }).await;
    assert!(daemon.terminate().await.success(), "SIGTERM exits 0");

    // While the daemon is down: 10 deletions and 5 capability changes.
    for a in &made[..10] {
        driver.delete_attendee(&id, &a.attendee_id).await.unwrap();
    }
    let muted = Capabilities {
        audio: Capability::Receive,
        video: Capability::Receive,
        content: Capability::None,
    };
    for a in &made[10..15] {
        driver
            .set_capabilities(&id, &a.attendee_id, muted)
            .await
            .unwrap();
    }
    // The next daemon sees them in its first poll and crashes on purpose while recording
    // it: after the events are inserted, before the commit.
    let before = db.store.get_meeting(&id).await.unwrap().unwrap();
    let crashed = Daemon::start_with(
        db,
        &sim.endpoint_url(),
        &[("ROSTER_SYNC_FAULT", "crash_before_commit")],
    );
    let status = crashed.exit_status("crash on purpose").await;
    assert_eq!(
        status.code(),
        Some(roster_sync::fault::CRASH_EXIT_CODE),
        "the daemon crashed at the injection point: {status}"
    );
    assert_eq!(
        counts(db).await,
        [150, 0, 0, 0],
        "nothing of the crashed poll was recorded"
    );
    let after = db.store.get_meeting(&id).await.unwrap().unwrap();
    assert_eq!(after.poll_seq, before.poll_seq, "its bookkeeping neither");
    assert_eq!(after.last_polled_at, before.last_polled_at);
    assert_eq!(
        db.raw.scalar("SELECT count(*) FROM roster_attendees").await,
        150,
        "the snapshot is the one before the crash"
    );

    // Restarted without the fault, the daemon records the same changes, once.
    let daemon = Daemon::start(db, &sim.endpoint_url());
    eventually("10 removed and 5 changed", || async {
        let c = counts(db).await;
        c[1] == 10 && c[2] == 5
    })
    .await;
    assert!(daemon.terminate().await.success());

    let daemon = Daemon::start(db, &sim.endpoint_url());
    driver.delete_meeting(&id).await.unwrap();
    eventually("the meeting ended", || async {
        db.store
            .get_meeting(&id)
            .await
            .unwrap()
            .is_some_and(|m| m.status == MeetingStatus::Ended)
    })
    .await;
    assert!(daemon.terminate().await.success());

    assert_eq!(
        counts(db).await,
        [150, 10, 5, 140],
        "[joined, removed, changed, meeting_ended]"
    );
    assert_eq!(
        db.raw.scalar("SELECT count(*) FROM roster_attendees").await,
        0
    );
    let (out, report, stderr) =
        run(roster_sync(&["report", id.as_str(), "--format", "csv"]).env("DATABASE_URL", &db.url));
    assert!(out.status.success(), "{stderr}");
    assert_eq!(report.lines().count(), 151, "a header and 150 sessions");
    assert_eq!(
        report
            .lines()
            .filter(|l| l.ends_with(",removed,") || l.contains(",removed,"))
            .count(),
        10
    );
    sim.shutdown().await.unwrap();
}

both_backends!(the_demo_shows_every_kind_of_event_and_records_them);

/// `demo` on a given database: every kind of event appears live, the closing report is
/// printed, and the database holds the events that were shown.
///
/// The demo opens with one change of each kind, each shown before the next is made. The test
/// reads the demo's output as it comes and stops it (SIGTERM, like Ctrl-C) once every kind was
/// shown: no fixed duration that a slow start could use up. `--duration` is only a guard.
async fn the_demo_shows_every_kind_of_event_and_records_them(db: &TestDb) {
    use tokio::io::AsyncBufReadExt as _;
    let mut cmd = roster_sync(&[
        "demo",
        "--duration",
        "10m",
        "--interval",
        "500ms",
        "--meetings",
        "2",
        "--attendees",
        "5",
        "--database-url",
        &db.url,
    ]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .expect("start the demo");
    let stderr = common::collect_stderr(&mut child);
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = std::sync::Arc::clone(&lines);
        let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stdout.next_line().await {
                lines.lock().unwrap().push(line);
            }
        })
    };
    // A departure is a `left` line with its reason in the detail column: `removed` (someone
    // left the meeting) is not the closing `tracking_stopped` lines, nor `meeting_ended`.
    let shows =
        |kind: &str, detail: &str| {
            lines.lock().unwrap().iter().any(|l| {
                l.contains("  #") && l.contains(&format!(" {kind} ")) && l.contains(detail)
            })
        };
    let opening = [
        ("joined", "a:"),
        ("left", "removed"),
        ("capabilities_changed", "→"),
    ];
    eventually(
        "the demo shows a join, a departure and a capability change",
        || async { opening.iter().all(|(kind, detail)| shows(kind, detail)) },
    )
    .await;
    let status = common::terminate(&mut child).await;
    reader.await.unwrap();
    let stdout = lines.lock().unwrap().join("\n");
    let stderr = stderr.lock().unwrap().join("\n");
    assert!(status.success(), "{status}\n{stdout}\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        shows("left", "tracking_stopped"),
        "no closing tracking_stopped lines after SIGTERM:\n{stdout}"
    );
    assert!(stdout.contains("attendee(s)"), "{stdout}");
    let shown = stdout.lines().filter(|l| l.contains("  #")).count() as i64;
    let stored = db.raw.scalar("SELECT count(*) FROM roster_events").await;
    assert_eq!(shown, stored, "every recorded event was shown:\n{stdout}");
    assert!(
        db.raw
            .scalar("SELECT count(*) FROM roster_events WHERE kind = 'capabilities_changed'")
            .await
            >= 1
    );
}

/// `demo | head -1`: the reader goes away after the first line. The demo winds down without
/// a panic, exits 0, and still stops tracking its meetings.
#[test]
fn the_demo_ends_cleanly_when_its_reader_goes_away() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("demo.db");
    let url = format!("sqlite://{}", db.display());
    let mut child = roster_sync(&[
        "demo",
        "--duration",
        "10m",
        "--interval",
        "1s",
        "--meetings",
        "1",
        "--attendees",
        "3",
        "--database-url",
        &url,
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("roster-sync demo:"), "{first}");
    // The reader is dropped here: the next line the demo prints finds the pipe closed. The
    // demo was asked to run for ten minutes; it must end long before, by itself.
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("the demo ran on although nobody reads its output");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success(), "{stderr}");
    let (out, listed, stderr) =
        run(roster_sync(&["meetings", "list", "--format", "json"]).env("DATABASE_URL", &url));
    assert!(out.status.success(), "{stderr}");
    assert!(!listed.contains("\"active\""), "{listed}");
}

#[test]
fn a_second_daemon_on_the_same_sqlite_file_is_refused_and_the_file_stays_intact() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("roster.db").display());
    let mut first = common::Reaped(
        roster_sync(&["run"])
            .env("DATABASE_URL", &url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let lock = dir.path().join("roster.db.lock");
    let deadline = Instant::now() + Duration::from_secs(60);
    // The lock file holds the daemon's pid once the lock is taken.
    while !(lock.exists() && std::fs::metadata(&lock).is_ok_and(|m| m.len() > 0)) {
        assert!(Instant::now() < deadline, "the first daemon did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let err = refused(roster_sync(&["run"]).env("DATABASE_URL", &url));
    assert!(err.contains("already"), "{err}");
    // The CLI still works beside the daemon (once the daemon's migrations are in), and the
    // file is sound.
    let stdout = loop {
        let (out, stdout, stderr) =
            run(roster_sync(&["meetings", "list"]).env("DATABASE_URL", &url));
        if out.status.success() {
            break stdout;
        }
        assert!(
            Instant::now() < deadline,
            "meetings list kept failing: {stderr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(stdout.starts_with("MEETING"), "{stdout}");
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(first.id().to_string())
        .status();
    assert!(first.wait().unwrap().success());
}

#[test]
fn meetings_listed_in_the_config_file_are_tracked_when_run_starts() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("roster.db").display());
    let file = dir.path().join("roster.toml");
    std::fs::write(
        &file,
        "[chime]\nendpoint_url = \"http://127.0.0.1:9\"\n\n[[meetings]]\nid = \"4F1C7A2E-0B3D-4C5E-9F60-7A8B9C0D1E2F\"\nlabel = \"all-hands\"\n\n[[meetings]]\nid = \"5f1c7a2e-0b3d-4c5e-9f60-7a8b9c0d1e2f\"\nregion = \"eu-central-1\"\n",
    )
    .unwrap();
    let (out, _, stderr) = run(roster_sync(&["migrate"]).env("DATABASE_URL", &url));
    assert!(out.status.success(), "{stderr}");
    let mut daemon = common::Reaped(
        roster_sync(&["run"])
            .arg("--config")
            .arg(&file)
            .env("DATABASE_URL", &url)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("daemon.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let listed = loop {
        let (out, stdout, _) =
            run(roster_sync(&["meetings", "list", "--format", "json"]).env("DATABASE_URL", &url));
        if out.status.success() && stdout.contains("5f1c7a2e") && stdout.contains("4f1c7a2e") {
            break stdout;
        }
        assert!(
            Instant::now() < deadline,
            "configured meetings never appeared: {stdout}\ndaemon: {}",
            std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(daemon.id().to_string())
        .status();
    assert!(daemon.wait().unwrap().success());
    let list: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let rows = list.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let first = rows
        .iter()
        .find(|m| m["meeting_id"] == "4f1c7a2e-0b3d-4c5e-9f60-7a8b9c0d1e2f")
        .unwrap();
    assert_eq!(first["label"], "all-hands");
    assert_eq!(
        first["region"], "us-east-1",
        "region defaults to chime.region"
    );
    let second = rows
        .iter()
        .find(|m| m["meeting_id"] == "5f1c7a2e-0b3d-4c5e-9f60-7a8b9c0d1e2f")
        .unwrap();
    assert_eq!(second["region"], "eu-central-1");
}
