//! Helpers shared by the integration tests: a fresh, migrated database for every test, on
//! Postgres and on SQLite, and `both_backends!` to run one test body against both.
//!
//! Postgres tests use `DATABASE_URL` (default [`DEFAULT_DATABASE_URL`]) as an admin connection
//! and create a database `roster_test_<uuid>` per test, dropped when the test passes and left
//! for inspection when it fails (`DROP DATABASE` every `roster_test_%` to clean up). Without a
//! Postgres server they are skipped, unless `CI` is set to a true value: then they fail.
//!
//! A skipped test still shows as `ok` in libtest's list, so [`skip`] records it, and when the
//! test binary exits (after libtest's `test result:` line) one block on stderr names every test
//! of that binary that did not run and why: a plain `cargo test` shows what it did not test.

// Each test crate uses only some of these helpers.
#![allow(dead_code)]

use roster_sync::redact::redact_url;
use roster_sync::store::Store;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqlitePool, SqlitePoolOptions};
use sqlx::{AssertSqlSafe, Connection as _, PgConnection};
use std::sync::{Mutex, OnceLock, PoisonError};
use tempfile::TempDir;

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Whether `CI` is set to a true value (`1`, `true` or `yes`, any case): then a test whose
/// tools or server are missing fails instead of being skipped. `CI=0` or `CI=` is not set.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|value| {
        matches!(
            value.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes"
        )
    })
}

/// Tests of this binary that did not run, as (test name, reason).
static SKIPPED: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
/// Whether `report_skips` is registered to run at exit.
static REPORT_SKIPS_AT_EXIT: OnceLock<bool> = OnceLock::new();

unsafe extern "C" {
    /// C's `atexit`: runs `callback` when the process exits, after libtest's summary.
    fn atexit(callback: extern "C" fn()) -> std::ffi::c_int;
}

/// The calling test cannot run because `reason` (a missing server or tool): records it, for
/// the report printed when the test binary exits; the caller then returns early.
///
/// # Panics
/// When [`ci`] is true: there every test must run.
pub fn skip(reason: &str) {
    assert!(
        !ci(),
        "{reason} (CI is set, so this test must run; .ci/run sets up what the tests need)"
    );
    // libtest names each test's thread after the test; the test body runs on it.
    let test = std::thread::current()
        .name()
        .unwrap_or("a test on an unnamed thread")
        .to_owned();
    let registered = *REPORT_SKIPS_AT_EXIT.get_or_init(|| {
        // SAFETY: `atexit` only stores the pointer of a function that lives as long as the
        // process; `report_skips` neither panics nor unwinds into C.
        unsafe { atexit(report_skips) == 0 }
    });
    if !registered {
        // Without the report at exit, say it now, past libtest's capture of `eprintln!`.
        let line = format!("SKIPPED {test}: {reason}\n");
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
        return;
    }
    SKIPPED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push((test, reason.to_owned()));
}

/// Prints, after libtest's `test result:` line, which tests of this binary did not run and
/// why, grouped by reason.
extern "C" fn report_skips() {
    let skipped = std::mem::take(&mut *SKIPPED.lock().unwrap_or_else(PoisonError::into_inner));
    if skipped.is_empty() {
        return;
    }
    let binary = std::env::args()
        .next()
        .and_then(|path| {
            std::path::Path::new(&path)
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
        })
        .map(|name| match name.rsplit_once('-') {
            Some((stem, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => stem.to_owned(),
            _ => name,
        })
        .unwrap_or_default();
    let mut reasons: Vec<(String, Vec<String>)> = Vec::new();
    for (test, reason) in skipped.iter() {
        match reasons.iter_mut().find(|(known, _)| known == reason) {
            Some((_, tests)) => tests.push(test.clone()),
            None => reasons.push((reason.clone(), vec![test.clone()])),
        }
    }
    let mut report = format!(
        "\nSKIPPED: {} test(s) of tests/{binary}.rs passed without running (listed as ok above):\n",
        skipped.len()
    );
    for (reason, mut tests) in reasons {
        tests.sort();
        report.push_str(&format!("  {} because {reason}:\n", tests.len()));
        for test in tests {
            report.push_str(&format!("    {test}\n"));
        }
    }
    report.push_str("  Set CI=1 to make a missing server or tool fail the run instead.\n\n");
    // A failed write to stderr has nowhere else to go.
    let _ = std::io::Write::write_all(&mut std::io::stderr(), report.as_bytes());
}

/// A database made for one test.
pub struct TestDb {
    pub store: Store,
    /// A separate pool on the same database, for assertions the store's API does not offer
    /// (row counts, triggers). Tests only read through it or set up instrumentation.
    pub raw: Raw,
    /// The database's URL, for opening a second store on it.
    pub url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    /// The admin URL and the name of the database to drop.
    Postgres { admin_url: String, name: String },
    /// Deleted with the directory.
    Sqlite(TempDir),
}

/// A plain sqlx pool on a test database.
pub enum Raw {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

impl Raw {
    /// Runs a query returning one integer (e.g. `SELECT count(*) …`).
    pub async fn scalar(&self, sql: &'static str) -> i64 {
        let value = match self {
            Raw::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
            Raw::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
        };
        value.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Runs one or more statements without parameters.
    pub async fn execute(&self, sql: &'static str) {
        let done = match self {
            Raw::Postgres(pool) => sqlx::raw_sql(sql).execute(pool).await.map(drop),
            Raw::Sqlite(pool) => sqlx::raw_sql(sql).execute(pool).await.map(drop),
        };
        done.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Every row of every table (migrations' bookkeeping included) as text, one
    /// `table: row` line each: for asserting that something is stored nowhere.
    pub async fn dump_all_tables(&self) -> String {
        let mut dump = String::new();
        match self {
            Raw::Postgres(pool) => {
                let tables: Vec<String> = sqlx::query_scalar(
                    "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' \
                     ORDER BY tablename",
                )
                .fetch_all(pool)
                .await
                .expect("list tables");
                for table in tables {
                    // A name read from the catalogue, quoted: safe to put in the statement.
                    let sql = format!("SELECT t::text FROM \"{table}\" AS t");
                    let rows: Vec<String> = sqlx::query_scalar(AssertSqlSafe(sql))
                        .fetch_all(pool)
                        .await
                        .unwrap_or_else(|e| panic!("dump {table}: {e}"));
                    for row in rows {
                        dump.push_str(&format!("{table}: {row}\n"));
                    }
                }
            }
            Raw::Sqlite(pool) => {
                let tables: Vec<String> = sqlx::query_scalar(
                    "SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name",
                )
                .fetch_all(pool)
                .await
                .expect("list tables");
                for table in tables {
                    let columns: Vec<String> =
                        sqlx::query_scalar("SELECT name FROM pragma_table_info($1)")
                            .bind(&table)
                            .fetch_all(pool)
                            .await
                            .unwrap_or_else(|e| panic!("columns of {table}: {e}"));
                    if columns.is_empty() {
                        continue;
                    }
                    // Names read from the schema, quoted: safe to put in the statement.
                    let row = columns
                        .iter()
                        .map(|c| format!("quote(\"{c}\")"))
                        .collect::<Vec<_>>()
                        .join(" || ', ' || ");
                    let sql = format!("SELECT {row} FROM \"{table}\"");
                    let rows: Vec<String> = sqlx::query_scalar(AssertSqlSafe(sql))
                        .fetch_all(pool)
                        .await
                        .unwrap_or_else(|e| panic!("dump {table}: {e}"));
                    for row in rows {
                        dump.push_str(&format!("{table}: {row}\n"));
                    }
                }
            }
        }
        dump
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Raw::Postgres(_))
    }
}

impl TestDb {
    /// Drops the test's Postgres database (the SQLite directory goes when `self` is dropped).
    pub async fn finish(self) {
        let TestDb {
            store,
            raw,
            cleanup,
            ..
        } = self;
        drop(store);
        match &raw {
            Raw::Postgres(pool) => pool.close().await,
            Raw::Sqlite(pool) => pool.close().await,
        }
        if let Cleanup::Postgres { admin_url, name } = cleanup {
            drop_postgres_database(&admin_url, &name).await;
        }
    }
}

/// An empty Postgres database made for one test (not migrated), dropped by `finish`.
pub struct EmptyPgDb {
    /// The database's URL, with the admin's credentials.
    pub url: String,
    /// `DATABASE_URL`: the admin connection the database was created with.
    pub admin_url: String,
    /// The database's name, `roster_test_<uuid>`.
    pub name: String,
}

impl EmptyPgDb {
    /// Drops the database (connections still open to it are closed).
    pub async fn finish(self) {
        drop_postgres_database(&self.admin_url, &self.name).await;
    }
}

async fn drop_postgres_database(admin_url: &str, name: &str) {
    let mut admin = PgConnection::connect(admin_url)
        .await
        .expect("admin connection to drop the test database");
    // WITH (FORCE): the store's pool may not have closed its connections yet.
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .expect("drop the test database");
}

/// A fresh, empty Postgres database, or `None` (the test is recorded as skipped, see [`skip`])
/// when no server answers at `DATABASE_URL`.
///
/// # Panics
/// When no server answers and `CI` is set, or when the server refuses to create the database.
pub async fn postgres_empty_db() -> Option<EmptyPgDb> {
    let admin_url =
        std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.to_owned());
    let mut admin = match PgConnection::connect(&admin_url).await {
        Ok(conn) => conn,
        Err(e) => {
            skip(&format!(
                "no Postgres at {} ({e}); start it or set DATABASE_URL",
                redact_url(&admin_url)
            ));
            return None;
        }
    };
    // A generated name (letters, digits, underscores): safe to put in the statement.
    let name = format!("roster_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
    let url = with_database(&admin_url, &name);
    Some(EmptyPgDb {
        url,
        admin_url,
        name,
    })
}

/// A fresh, migrated Postgres database, or `None` (the test is recorded as skipped, see
/// [`skip`]) when no server answers at `DATABASE_URL`.
///
/// # Panics
/// When no server answers and `CI` is set, or when the server refuses to create the database.
pub async fn postgres_db() -> Option<TestDb> {
    let EmptyPgDb {
        url,
        admin_url,
        name,
    } = postgres_empty_db().await?;
    let store = Store::connect(&url, 5)
        .await
        .expect("connect to the test database");
    store.migrate().await.expect("migrate the test database");
    let raw = PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .expect("raw pool on the test database");
    Some(TestDb {
        store,
        raw: Raw::Postgres(raw),
        url,
        cleanup: Cleanup::Postgres { admin_url, name },
    })
}

/// A fresh, migrated SQLite database in a temporary directory.
///
/// # Panics
/// When the file cannot be created or migrated.
pub async fn sqlite_db() -> TestDb {
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite://{}", dir.path().join("roster.db").display());
    let store = Store::connect(&url, 4)
        .await
        .expect("open the SQLite database");
    store.migrate().await.expect("migrate the SQLite database");
    let raw = SqlitePoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .expect("raw pool on the SQLite database");
    TestDb {
        store,
        raw: Raw::Sqlite(raw),
        url,
        cleanup: Cleanup::Sqlite(dir),
    }
}

/// A migrated store on a fresh Postgres database; see [`postgres_db`].
pub async fn postgres_store() -> Option<Store> {
    postgres_db().await.map(|db| db.store)
}

/// A migrated store on a fresh SQLite file; keep the directory alive as long as the store.
pub async fn sqlite_store() -> (Store, TempDir) {
    let db = sqlite_db().await;
    match db.cleanup {
        Cleanup::Sqlite(dir) => (db.store, dir),
        Cleanup::Postgres { .. } => unreachable!("sqlite_db makes a SQLite database"),
    }
}

/// `url` with its database name replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let host_start = base.find("://").map_or(0, |i| i + 3);
    let host_start = base[host_start..]
        .rfind('@')
        .map_or(host_start, |i| host_start + i);
    let path_start = base[host_start..]
        .find('/')
        .map_or(base.len(), |i| host_start + i);
    let mut out = format!("{}/{name}", &base[..path_start]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// Runs each named test body, an `async fn(TestDb)` in the same file, once on a fresh Postgres
/// database and once on a fresh SQLite file, as the tests `<name>::postgres` and
/// `<name>::sqlite`: one body for both, so the backends cannot drift apart unnoticed.
#[macro_export]
macro_rules! both_backends {
    ($($test:ident),+ $(,)?) => {$(
        mod $test {
            #[tokio::test]
            async fn postgres() {
                if let Some(db) = $crate::common::postgres_db().await {
                    super::$test(&db).await;
                    db.finish().await;
                }
            }

            #[tokio::test]
            async fn sqlite() {
                let db = $crate::common::sqlite_db().await;
                super::$test(&db).await;
                db.finish().await;
            }
        }
    )+};
}

/// The `roster-sync` binary Cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_roster-sync");

/// What a test gives the binary after `env_clear()`: `PATH`, placeholder AWS credentials (the
/// simulator does not check signatures), and no shared AWS config or instance-metadata lookup.
pub fn binary_env() -> Vec<(&'static str, std::ffi::OsString)> {
    vec![
        ("PATH", std::env::var_os("PATH").unwrap_or_default()),
        ("AWS_ACCESS_KEY_ID", "roster-sync-test".into()),
        ("AWS_SECRET_ACCESS_KEY", "roster-sync-test".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ("AWS_CONFIG_FILE", "/nonexistent/aws-config".into()),
        (
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/aws-credentials".into(),
        ),
    ]
}

/// The simulator on a free port with the real quota for reads and the control operations
/// exempt, and a control client (`Driver`) whose own budget is `control_rps`, so making changes
/// never eats the quota the daemon under test is measured against.
pub async fn sim_and_driver(
    control_rps: f64,
) -> (
    roster_sync::sim::SimHandle,
    roster_sync::sim::control::Driver,
) {
    use roster_sync::chime::{ChimeClient, ClientOptions, simulator_sdk_config};
    let region = roster_sync::domain::Region::parse("us-east-1").expect("a region");
    let sim = roster_sync::sim::start(
        "127.0.0.1:0".parse().expect("an address"),
        roster_sync::sim::SimConfig {
            exempt_control: true,
            ..roster_sync::sim::SimConfig::default()
        },
    )
    .await
    .expect("start the simulator");
    let options = ClientOptions::for_endpoint(&sim.endpoint_url(), control_rps, control_rps as u32);
    let client = ChimeClient::new(simulator_sdk_config(&region), options);
    let driver = roster_sync::sim::control::Driver::new(client.sdk_client(&region));
    (sim, driver)
}

impl Raw {
    /// Runs a query returning one text column, every row in order.
    pub async fn text_rows(&self, sql: &'static str) -> Vec<String> {
        let rows = match self {
            Raw::Postgres(pool) => sqlx::query_scalar(sql).fetch_all(pool).await,
            Raw::Sqlite(pool) => sqlx::query_scalar(sql).fetch_all(pool).await,
        };
        rows.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

/// How long [`eventually`] waits before failing: only a guard that keeps a broken build from
/// hanging the run, never a measure of speed.
pub const EVENTUALLY_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Polls `check` every 50 ms until it holds; fails the test, naming `what`, after
/// [`EVENTUALLY_LIMIT`].
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    eventually_within(EVENTUALLY_LIMIT, what, check).await;
}

/// [`eventually`] with its own failure guard `limit`.
pub async fn eventually_within<F, Fut>(limit: std::time::Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + limit;
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// `GET path` on 127.0.0.1:`port` over HTTP/1.0: the status and the body, or `None` when
/// nothing answers or the answer is not HTTP.
pub async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
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
    let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((code, body))
}

/// Sends SIGTERM to `child` and waits for it to exit (failing the test after a minute);
/// returns its exit status.
pub async fn terminate(child: &mut tokio::process::Child) -> std::process::ExitStatus {
    let pid = child.id().expect("the child is still running");
    let sent = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -TERM {pid}: {sent}");
    tokio::time::timeout(std::time::Duration::from_secs(60), child.wait())
        .await
        .unwrap_or_else(|_| panic!("process {pid} did not exit within a minute of SIGTERM"))
        .expect("wait for the child")
}

/// Everything `child` writes to stderr, collected line by line as it comes.
pub fn collect_stderr(child: &mut tokio::process::Child) -> std::sync::Arc<Mutex<Vec<String>>> {
    use tokio::io::AsyncBufReadExt as _;
    let lines = std::sync::Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().expect("stderr is piped");
    let sink = std::sync::Arc::clone(&lines);
    tokio::spawn(async move {
        let mut reader = tokio::io::BufReader::new(stderr).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            sink.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(line);
        }
    });
    lines
}

/// A Chime `AttendeeJoined`/`Left`/… lifecycle event of `attendee` in `meeting` at `when`, as
/// the intake parses it (control region us-east-1, `networkType` where the type carries one):
/// the presence tests build their events with it.
pub fn presence_event(
    id: &str,
    event_type: roster_sync::lifecycle::EventType,
    meeting: &roster_sync::domain::MeetingId,
    attendee: &roster_sync::domain::AttendeeId,
    when: chrono::DateTime<chrono::Utc>,
) -> roster_sync::lifecycle::MeetingEvent {
    roster_sync::lifecycle::MeetingEvent {
        id: id.into(),
        event_type,
        region: roster_sync::domain::Region::parse("us-east-1").expect("a region name"),
        time: when,
        occurred_at: when,
        meeting_id: meeting.clone(),
        external_meeting_id: None,
        media_region: None,
        attendee: Some(roster_sync::lifecycle::EventAttendee {
            attendee_id: attendee.clone(),
            external_user_id: None,
        }),
        network_type: event_type.has_network_type().then(|| "Voip".to_owned()),
        capabilities: None,
        success: None,
    }
}

/// A child process killed (and reaped) when the test ends, however it ends: a test that fails
/// half-way leaves no `roster-sync` behind holding its pipes. Derefs to the
/// [`std::process::Child`].
pub struct Reaped(pub std::process::Child);

impl std::ops::Deref for Reaped {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
