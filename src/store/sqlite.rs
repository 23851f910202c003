//! The SQLite backend: connecting, the timestamp encoding, the multi-row insert of events, and
//! the writer lock that keeps a second daemon off the same file. Everything else is in
//! `store/shared.rs`.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Sqlite, Transaction};

use super::shared::{event_columns, shared_queries};
use super::{
    EVENT_VALUES, PollRecord, Result, StoreError, StoredEvent, UnchangedPoll, event_values,
    redact_url,
};

// SQLite holds no leases (cluster mode is refused on it): a fenced write matches nothing.
shared_queries!(
    database = sqlx::Sqlite,
    for_update = "",
    lease_fence = " AND $4 IS NULL"
);
pub(super) use queries::*;
type Database = sqlx::Sqlite;
super::alerting::alerting_queries!();
super::retention::retention_queries!();

/// How long a statement waits for another connection's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest number of bound values in one statement (SQLite's `SQLITE_MAX_VARIABLE_NUMBER`
/// since 3.32; the bundled SQLite is newer).
const MAX_VARIABLES: usize = 32_766;

/// Values bound per event row: the meeting, [`EVENT_VALUES`], `observed_at`, `previous_poll_at`.
const VALUES_PER_EVENT: usize = EVENT_VALUES + 3;

/// The one timestamp form in SQLite columns (see migrations/sqlite/0001_initial_schema.sql):
/// UTC, six fractional digits, `Z`. Fixed width, so text order is time order.
const TIMESTAMP_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.6fZ";

/// A SQLite pool, the database file's path (`None` in memory) and, once taken, the writer lock.
#[derive(Clone, Debug)]
pub(super) struct SqliteDb {
    pub(super) pool: SqlitePool,
    path: Option<PathBuf>,
    writer_lock: Arc<Mutex<Option<File>>>,
}

pub(super) async fn connect(url: &str, max_connections: u32) -> Result<SqliteDb> {
    let failed = |source| StoreError::Connect {
        url: redact_url(url),
        source,
    };
    let options = SqliteConnectOptions::from_str(url)
        .map_err(failed)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(true)
        // FULL: every commit is on disk before it returns. With NORMAL a power loss can roll
        // back commits already announced, and their event ids would be handed out again for
        // other events, which receivers that de-duplicate by event_id would silently drop.
        // One fsync per commit is negligible at this commit rate.
        .synchronous(SqliteSynchronous::Full)
        // Statement journals (every multi-row statement inside a transaction keeps one) and
        // RETURNING's temporary rows stay in memory instead of spilling to temporary files
        // past 64 KiB: a first poll of a large meeting otherwise opens and writes a file.
        .pragma("temp_store", "memory")
        // Deleted rows are overwritten with zeros, so what retention and `forget` delete does
        // not linger in free space inside the file.
        .pragma("secure_delete", "on");
    let in_memory = url.contains(":memory:") || url.contains("mode=memory");
    let path = (!in_memory).then(|| options.get_filename().to_path_buf());
    if let Some(dir) = path.as_deref().and_then(Path::parent)
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::File {
            action: "create the database directory",
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let pool = SqlitePoolOptions::new()
        .max_connections(max_connections)
        .connect_with(options)
        .await
        .map_err(failed)?;
    Ok(SqliteDb {
        pool,
        path,
        writer_lock: Arc::default(),
    })
}

impl SqliteDb {
    /// Takes an exclusive lock on `<database>.lock`, kept until the last clone of the store is
    /// dropped (or the process exits, whatever way it does).
    ///
    /// The lock is on a file of its own, not on the database: SQLite locks the database with
    /// POSIX record locks, which a process loses on *every* descriptor of the file as soon as
    /// it closes *any* descriptor of it. A handle of ours on the database file would put
    /// SQLite's own locking at risk; a separate file cannot.
    pub(super) fn acquire_writer_lock(&self) -> Result<()> {
        let Some(db_path) = &self.path else {
            // An in-memory database belongs to this process alone.
            return Ok(());
        };
        let mut held = self
            .writer_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if held.is_some() {
            return Ok(());
        }
        let mut lock_path = db_path.clone().into_os_string();
        lock_path.push(".lock");
        let lock_path = PathBuf::from(lock_path);
        let file_error = |action, source| StoreError::File {
            action,
            path: lock_path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| file_error("open the lock file", e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                // Best effort: only for the message.
                let _ = file.read_to_string(&mut holder);
                // "<pid> <host>", as written below (older versions wrote the pid alone).
                let holder = match holder.trim().split_once(' ') {
                    _ if holder.trim().is_empty() => String::new(),
                    Some((pid, host)) => format!(" (pid {pid} on host {host})"),
                    None => format!(" (pid {})", holder.trim()),
                };
                return Err(StoreError::Locked(format!(
                    "another roster-sync process{holder} is already writing to {}: stop it, or \
                     point this one at another database ({} is locked)",
                    db_path.display(),
                    lock_path.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(file_error("lock", e)),
        }
        // Who holds it, for the message above; the lock is what matters, so failures are ignored.
        let _ = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{} {}", std::process::id(), super::hostname()));
        *held = Some(file);
        Ok(())
    }
}

pub(super) fn ts(t: DateTime<Utc>) -> String {
    t.format(TIMESTAMP_FORMAT).to_string()
}

/// `BEGIN IMMEDIATE` takes the write lock at the start, so the transaction cannot fail half
/// way with SQLITE_BUSY when it upgrades from reading to writing; it waits up to the busy
/// timeout for the lock instead.
async fn begin_write(pool: &SqlitePool) -> Result<Transaction<'static, Sqlite>> {
    Ok(pool.begin_with("BEGIN IMMEDIATE").await?)
}

/// Nothing to do: SQLite runs one write transaction at a time, so event ids are always
/// committed in order.
async fn serialize_event_writers(_conn: &mut SqliteConnection) -> Result<()> {
    Ok(())
}

/// Nothing to do: SQLite has no `NOTIFY`; its event consumers poll.
async fn announce_events(_conn: &mut SqliteConnection, _events: &[StoredEvent]) -> Result<()> {
    Ok(())
}

/// Inserts one event per change with multi-row `VALUES`, in chunks under SQLite's limit of
/// bound values; rows are inserted in `VALUES` order, so `event_id`s follow `rec.changes`.
async fn insert_events(
    conn: &mut SqliteConnection,
    rec: &PollRecord<'_>,
) -> Result<Vec<StoredEvent>> {
    let mut events = Vec::with_capacity(rec.changes.len());
    for chunk in rec.changes.chunks(MAX_VARIABLES / VALUES_PER_EVENT) {
        let mut insert = QueryBuilder::<Sqlite>::new(
            "INSERT INTO roster_events \
                 (meeting_id, attendee_id, external_user_id, kind, audio, video, content, \
                  previous_audio, previous_video, previous_content, reason, \
                  observed_at, previous_poll_at) ",
        );
        insert.push_values(chunk, |mut row, change| {
            row.push_bind(rec.meeting_id.as_str());
            for value in event_values(change) {
                row.push_bind(value);
            }
            row.push_bind(ts(rec.observed_at));
            row.push_bind(rec.previous_poll_at.map(ts));
        });
        insert.push(concat!(" RETURNING ", event_columns!()));
        let rows = insert.build().fetch_all(&mut *conn).await?;
        events.extend(events_from_rows(&rows)?);
    }
    events.sort_by_key(|e| e.event_id);
    Ok(events)
}

/// The bookkeeping of unchanged polls in one `UPDATE … FROM json_each(…)` statement: the
/// batch travels as one JSON array of `[meeting_id, expected_seq, started_at]`, so the
/// statement's text never changes and its prepared form is cached (a `VALUES` list would be a
/// new statement, and a new cached program of hundreds of KB, for every batch size).
/// Returns the meetings whose row matched the fence.
pub(super) async fn record_unchanged_polls(
    pool: &SqlitePool,
    polls: &[UnchangedPoll],
) -> Result<std::collections::HashSet<String>> {
    if polls.iter().any(|p| p.fence.is_some()) {
        // SQLite holds no leases (cluster mode is refused on it): a fenced write matches nothing.
        return Ok(std::collections::HashSet::new());
    }
    let batch: Vec<(&str, i64, String)> = polls
        .iter()
        .map(|p| (p.meeting_id.as_str(), p.expected_seq, ts(p.started_at)))
        .collect();
    let batch = serde_json::to_string(&batch)
        .map_err(|e| StoreError::InvalidRecord(format!("cannot encode the batch: {e}")))?;
    let recorded: Vec<String> = sqlx::query_scalar(
        "UPDATE tracked_meetings \
         SET last_polled_at = v.value ->> 2, poll_seq = tracked_meetings.poll_seq + 1, \
             consecutive_failures = 0, last_error = NULL, last_error_code = NULL, last_error_at = NULL \
         FROM json_each($1) AS v \
         WHERE tracked_meetings.meeting_id = v.value ->> 0 \
           AND tracked_meetings.poll_seq = v.value ->> 1 \
           AND tracked_meetings.status = 'active' \
         RETURNING meeting_id",
    )
    .bind(batch)
    .fetch_all(pool)
    .await?;
    Ok(recorded.into_iter().collect())
}
