//! deploy/postgres/roles.sql in use, as docs/operating.md ("Database roles") shows it: on a fresh
//! database the migrator applies the migrations and owns the schema, the writer runs the
//! daemon (`run --no-migrate`, alone and in cluster mode) and records events but can change no
//! schema, and the analyst reads tables and views (also through `report` and `events`) and can
//! write nothing.
//!
//! Roles are cluster-wide, so the test gives them names of its own (`roster_test_<uuid>_…`
//! instead of the file's `roster_…`) and drops them at the end; `.ci/run` drops any that a
//! failed run left behind.

mod common;

use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use roster_sync::domain::MeetingId;
use roster_sync::sim::control::Driver;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection as _, PgConnection};
use tokio::process::{Child, Command};

use common::BIN;

const ROLES_SQL: &str = include_str!("../deploy/postgres/roles.sql");

/// The file's three roles under names unique to this test, with one generated password.
struct Roles {
    migrator: String,
    writer: String,
    analyst: String,
    password: String,
}

impl Roles {
    fn new() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Roles {
            migrator: format!("roster_test_{id}_migrator"),
            writer: format!("roster_test_{id}_writer"),
            analyst: format!("roster_test_{id}_analyst"),
            password: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    /// roles.sql with this test's role names.
    fn script(&self) -> String {
        ROLES_SQL
            .replace("roster_migrator", &self.migrator)
            .replace("roster_writer", &self.writer)
            .replace("roster_analyst", &self.analyst)
    }

    fn all(&self) -> [&str; 3] {
        [&self.migrator, &self.writer, &self.analyst]
    }
}

/// `url` logging in as `user` with `password` instead of its own credentials.
fn login_as(url: &str, user: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{scheme}://{user}:{password}@{host}{tail}")
}

/// The binary with a clean environment, `DATABASE_URL` set to `url`, a fast poll and no
/// operations endpoint.
fn roster_sync(url: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .envs(common::binary_env())
        .env("DATABASE_URL", url)
        .env("ROSTER_SYNC__HTTP__LISTEN", "")
        .env("ROSTER_SYNC__POLL__INTERVAL", "300ms")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Runs a short command to its end: its exit status, stdout and stderr.
async fn output(cmd: &mut Command) -> (ExitStatus, String, String) {
    let out = cmd.output().await.expect("run roster-sync");
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn ok(cmd: &mut Command) -> String {
    let (status, stdout, stderr) = output(cmd).await;
    assert!(status.success(), "{status}: {stdout}{stderr}");
    stdout
}

/// Sends SIGTERM and waits for a clean exit.
async fn stop(mut daemon: Child) {
    let pid = daemon.id().expect("the daemon is running");
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -TERM {pid}");
    let status = tokio::time::timeout(Duration::from_secs(60), daemon.wait())
        .await
        .expect("the daemon stops on SIGTERM")
        .expect("wait for the daemon");
    assert!(status.success(), "the daemon exited with {status}");
}

/// Waits until the analyst sees `want` `joined` events; the limit only keeps a broken daemon
/// from hanging the test.
async fn wait_for_joins(analyst: &PgPool, daemon: &mut Child, want: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen: i64 =
            sqlx::query_scalar("SELECT count(*) FROM roster_events WHERE kind = 'joined'")
                .fetch_one(analyst)
                .await
                .expect("the analyst reads roster_events");
        if seen == want {
            return;
        }
        assert!(
            seen < want,
            "{seen} joined events recorded, {want} expected"
        );
        if let Some(status) = daemon.try_wait().expect("poll the daemon") {
            panic!("the daemon exited with {status} before recording {want} joins");
        }
        assert!(
            Instant::now() < deadline,
            "{seen} of {want} joined events recorded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The SQLSTATE of a failed statement.
fn sqlstate(result: Result<sqlx::postgres::PgQueryResult, sqlx::Error>) -> String {
    match result {
        Ok(_) => "00000 (it succeeded)".to_owned(),
        Err(e) => e
            .as_database_error()
            .and_then(|d| d.code())
            .map_or_else(|| format!("no SQLSTATE: {e}"), |c| c.into_owned()),
    }
}

async fn add_people(driver: &Driver, meeting: &MeetingId, names: &[&str]) {
    driver
        .add_attendees(meeting, names.iter().map(|n| ((*n).to_owned(), None)))
        .await
        .expect("add attendees in the simulator");
}

#[tokio::test]
async fn migrator_writer_and_analyst_roles_each_do_their_part_and_no_more() {
    let Some(db) = common::postgres_empty_db().await else {
        return;
    };
    let roles = Roles::new();
    let mut admin = PgConnection::connect(&db.url)
        .await
        .expect("admin connection to the test database");
    sqlx::raw_sql(AssertSqlSafe(roles.script()))
        .execute(&mut admin)
        .await
        .expect("apply roles.sql");
    for role in roles.all() {
        // Generated names and password (letters, digits, underscores): safe in the statement.
        sqlx::raw_sql(AssertSqlSafe(format!(
            "ALTER ROLE {role} PASSWORD '{}'",
            roles.password
        )))
        .execute(&mut admin)
        .await
        .expect("set the role's password");
    }
    let migrator_url = login_as(&db.url, &roles.migrator, &roles.password);
    let writer_url = login_as(&db.url, &roles.writer, &roles.password);
    let analyst_url = login_as(&db.url, &roles.analyst, &roles.password);

    // The writer cannot migrate; the migrator can, and owns what it creates.
    let (status, _, stderr) = output(&mut roster_sync(&writer_url, &["migrate"])).await;
    assert!(!status.success(), "the writer applied migrations: {stderr}");
    ok(&mut roster_sync(&migrator_url, &["migrate"])).await;
    // Once more after the first migration, as the file asks.
    sqlx::raw_sql(AssertSqlSafe(roles.script()))
        .execute(&mut admin)
        .await
        .expect("apply roles.sql again");
    let owners: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT tableowner::text FROM pg_tables WHERE schemaname = 'public' \
         UNION SELECT DISTINCT viewowner::text FROM pg_views WHERE schemaname = 'public'",
    )
    .fetch_all(&mut admin)
    .await
    .expect("read the owners");
    assert_eq!(
        owners,
        std::slice::from_ref(&roles.migrator),
        "owners of tables and views"
    );

    let writer = PgPoolOptions::new()
        .max_connections(1)
        .connect(&writer_url)
        .await
        .expect("the writer logs in");
    assert_eq!(
        sqlstate(
            sqlx::query("CREATE TABLE writer_scratch (x int)")
                .execute(&writer)
                .await
        ),
        "42501",
        "the writer creates a table"
    );
    assert_eq!(
        sqlstate(
            sqlx::query("ALTER TABLE roster_events ADD COLUMN x int")
                .execute(&writer)
                .await
        ),
        "42501",
        "the writer alters a table"
    );
    assert_eq!(
        sqlstate(
            sqlx::query("DELETE FROM _sqlx_migrations")
                .execute(&writer)
                .await
        ),
        "42501",
        "the writer edits the record of applied migrations"
    );
    writer.close().await;

    // The writer tracks a meeting and records its roster with `run --no-migrate`.
    let (sim, driver) = common::sim_and_driver(1000.0).await;
    let meeting = driver
        .create_meeting("roles", "us-east-1")
        .await
        .expect("create a meeting in the simulator");
    add_people(&driver, &meeting, &["ada", "grace", "edsger"]).await;
    ok(roster_sync(
        &writer_url,
        &["meetings", "add", meeting.as_str(), "--no-verify"],
    )
    .env("ROSTER_SYNC__DATABASE__MIGRATE_ON_START", "false"))
    .await;
    let analyst = PgPoolOptions::new()
        .max_connections(1)
        .connect(&analyst_url)
        .await
        .expect("the analyst logs in");
    let mut daemon = roster_sync(&writer_url, &["run", "--no-migrate"])
        .env("ROSTER_SYNC__CHIME__ENDPOINT_URL", sim.endpoint_url())
        .stdout(Stdio::null())
        .spawn()
        .expect("start the daemon as the writer");
    wait_for_joins(&analyst, &mut daemon, 3).await;
    add_people(&driver, &meeting, &["barbara"]).await;
    wait_for_joins(&analyst, &mut daemon, 4).await;
    stop(daemon).await;

    // Cluster mode too: leases, heartbeats and fencing tokens (a sequence) are the writer's.
    let mut replica = roster_sync(&writer_url, &["run", "--no-migrate"])
        .env("ROSTER_SYNC__CHIME__ENDPOINT_URL", sim.endpoint_url())
        .env("ROSTER_SYNC__CLUSTER__ENABLED", "true")
        .env("ROSTER_SYNC__CLUSTER__HEARTBEAT", "200ms")
        .stdout(Stdio::null())
        .spawn()
        .expect("start a replica as the writer");
    add_people(&driver, &meeting, &["donald"]).await;
    wait_for_joins(&analyst, &mut replica, 5).await;
    let token: i64 = sqlx::query_scalar("SELECT max(token) FROM meeting_leases")
        .fetch_one(&analyst)
        .await
        .expect("the analyst reads meeting_leases");
    assert!(token > 0, "a lease was granted with a fencing token");
    stop(replica).await;

    // The analyst reads tables and views, through SQL and the read-only commands.
    let sessions: i64 = sqlx::query_scalar("SELECT count(*) FROM attendance_sessions")
        .fetch_one(&analyst)
        .await
        .expect("the analyst reads attendance_sessions");
    assert_eq!(sessions, 5);
    let people: i64 = sqlx::query_scalar("SELECT count(*) FROM meeting_attendance")
        .fetch_one(&analyst)
        .await
        .expect("the analyst reads meeting_attendance");
    assert_eq!(people, 5);
    let events = ok(&mut roster_sync(
        &analyst_url,
        &["events", "--format", "json"],
    ))
    .await;
    assert_eq!(events.lines().count(), 5, "{events}");
    let report = ok(&mut roster_sync(
        &analyst_url,
        &["report", meeting.as_str(), "--format", "json"],
    ))
    .await;
    for name in ["ada", "grace", "edsger", "barbara", "donald"] {
        assert!(report.contains(&format!("\"{name}\"")), "{name}: {report}");
    }

    // ...and writes nothing: refused by the read-only default, and by privileges without it.
    let mut conn = analyst.acquire().await.expect("an analyst connection");
    let insert = "INSERT INTO tracked_meetings (meeting_id, region, added_at) \
                  VALUES ('x', 'us-east-1', now())";
    assert_eq!(
        sqlstate(sqlx::query(insert).execute(&mut *conn).await),
        "25006",
        "the analyst's default transaction is read-only"
    );
    sqlx::query("SET default_transaction_read_only = off")
        .execute(&mut *conn)
        .await
        .expect("an analyst may lift the default");
    for write in [
        insert,
        "UPDATE roster_events SET reason = 'removed'",
        "DELETE FROM roster_events",
        "CREATE TABLE analyst_scratch (x int)",
    ] {
        assert_eq!(
            sqlstate(sqlx::query(write).execute(&mut *conn).await),
            "42501",
            "the analyst ran: {write}"
        );
    }
    drop(conn);
    analyst.close().await;
    let still: i64 = sqlx::query_scalar("SELECT count(*) FROM roster_events")
        .fetch_one(&mut admin)
        .await
        .expect("count the events");
    assert_eq!(still, 5);

    sim.shutdown().await.expect("stop the simulator");
    admin.close().await.expect("close the admin connection");
    let admin_url = db.admin_url.clone();
    db.finish().await;
    // The roles own nothing outside the dropped database.
    let mut server = PgConnection::connect(&admin_url)
        .await
        .expect("admin connection to drop the roles");
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP ROLE {}, {}, {}",
        roles.migrator, roles.writer, roles.analyst
    )))
    .execute(&mut server)
    .await
    .expect("drop the test's roles");
}
