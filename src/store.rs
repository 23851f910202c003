//! The only code that writes SQL. Postgres in production, SQLite as the embedded default.
//!
//! `apply` writes the new snapshot rows, the events and the poll bookkeeping of one poll in one
//! transaction, fenced by the meeting's `poll_seq`, so a poll is either fully recorded or not at
//! all. It must never store a JoinToken (no type here can hold one).
//!
//! SQL whose text is the same on both backends lives once, in `store/shared.rs`, and is compiled
//! for each backend; `store/postgres.rs` and `store/sqlite.rs` hold only what differs (connecting,
//! bulk inserts, transaction start, timestamp encoding, the writer lock).

use std::collections::HashSet;
use std::fmt::Display;
use std::path::PathBuf;
use std::str::FromStr;

use chrono::{DateTime, Utc};

use crate::deadline::Later as _;
use crate::domain::{
    Attendee, AttendeeId, Capabilities, Capability, Change, EventKind, ExternalUserId, LeftReason,
    MeetingId, Region,
};
use crate::permit::WriterPermit;
use crate::redact::redact_url;

mod alerting;
mod leases;
mod meeting_events;
mod postgres;
mod presence_reads;
mod retention;
mod rows;
mod shared;
mod sqlite;
mod stats;

pub use alerting::{CursorClaim, EVENTS_CHANNEL, EventWakeups, LabeledEvent};
pub use leases::{
    ClockOffset, ClusterView, LeaseToken, LeasedMeeting, ReplicaId, ReplicaInfo, ReplicaRow,
};
pub use meeting_events::{ADDED_BY_EVENTS, Discovered, HINTS_CHANNEL, HintWakeups};
pub use presence_reads::PresenceSessionRow;
pub use retention::{Erased, WebhookCursor};
pub use rows::{
    AddOutcome, ApplyOutcome, AttendanceRow, MeetingsVersion, PollRecord, PresenceFacts,
    PresenceRecord, SessionRow, Snapshot, StoredEvent, TrackedMeeting, UnchangedPoll,
    describe_presence,
};
use rows::{EVENT_VALUES, check_changes, decode, event_values};
pub use stats::WriteCounts;

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database url {0:?} is neither postgres://… nor sqlite://…")]
    UnsupportedUrl(String),
    /// The database did not answer or refused us. `url` has its password redacted.
    #[error("cannot connect to database {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    /// Shutdown was asked for while waiting for the database.
    #[error("stopped while waiting for the database")]
    Cancelled,
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored row is invalid: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Locked(String),
    /// The backend cannot do what was asked (cluster mode on SQLite).
    #[error("{0}")]
    Unsupported(&'static str),
    /// A file next to the SQLite database (its directory, its lock file) is unusable.
    #[error("cannot {action} {}: {source}", path.display())]
    File {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The meeting has no row in `tracked_meetings`.
    #[error("meeting {0} is not tracked")]
    UnknownMeeting(MeetingId),
    /// The caller's changes contradict themselves or the stored snapshot (a bug in the caller,
    /// never a property of the roster): nothing was written.
    #[error("refusing to record the poll: {0}")]
    InvalidRecord(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl StoreError {
    /// A failure that waiting can cure: the database is unreachable, restarting, or out of
    /// connections. A bad URL or a refused password is not.
    pub fn is_transient(&self) -> bool {
        let sqlx = match self {
            Self::Connect { source, .. } | Self::Sqlx(source) => source,
            _ => return false,
        };
        match sqlx {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => true,
            // Connection exceptions (08), insufficient resources (53), operator intervention
            // such as "the database system is starting up" (57).
            sqlx::Error::Database(e) => e
                .code()
                .is_some_and(|c| c.starts_with("08") || c.starts_with("53") || c.starts_with("57")),
            _ => false,
        }
    }
}

/// How [`Store::connect_with`] sets up its pool.
#[derive(Clone, Copy, Debug)]
pub struct PoolOptions {
    /// Connections in the pool, at most.
    pub max_connections: u32,
    /// Postgres: every statement fails after this long (`statement_timeout`); `None`: no
    /// limit. Ignored on SQLite, whose writes wait at most its busy timeout.
    pub statement_timeout: Option<std::time::Duration>,
}

/// This machine's name, as the writer lock's holder row and `cluster_replicas.host` show it:
/// `$HOSTNAME` (the pod name under Kubernetes), else the kernel's host name.
pub(crate) fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// How a process holds the writer lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriterRole {
    /// A daemon without `cluster.enabled`: the only writer, holding the lock exclusively.
    Single,
    /// A cluster replica: one of several, holding the lock in shared mode.
    Replica,
}

/// Which database a [`Store`] talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// `tracked_meetings.status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MeetingStatus {
    Active,
    Ended,
    Stopped,
}

impl MeetingStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Ended => "ended",
            Self::Stopped => "stopped",
        }
    }
}

impl FromStr for MeetingStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [Self::Active, Self::Ended, Self::Stopped]
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| format!("status {s:?} is not one of active, ended, stopped"))
    }
}

/// A pool of connections to the roster-sync database. Cheap to clone: clones share the pool
/// and the writer lock, released when the last clone is dropped or the store is closed.
#[derive(Clone, Debug)]
pub struct Store {
    db: Db,
    /// On Postgres, once taken: the connection that holds the writer lock. Unused on SQLite.
    pg_writer: std::sync::Arc<postgres::WriterLock>,
    /// Bumped after every commit through this store (and its clones) that recorded events:
    /// wakes in-process consumers such as the webhook sinks ([`Store::committed`]).
    committed: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
}

#[derive(Clone, Debug)]
enum Db {
    Postgres(sqlx::PgPool),
    Sqlite(sqlite::SqliteDb),
}

/// Runs `backend::$function(pool, args…)` on whichever backend `$store` talks to.
macro_rules! on_backend {
    ($store:expr, $function:ident($($arg:expr),* $(,)?)) => {
        match &$store.db {
            Db::Postgres(pool) => postgres::$function(pool, $($arg),*).await,
            Db::Sqlite(db) => sqlite::$function(&db.pool, $($arg),*).await,
        }
    };
}

impl Store {
    /// Opens a pool of at most `max_connections` connections.
    ///
    /// `postgres://…` and `postgresql://…` open Postgres. `sqlite://path`, `sqlite:path` (the
    /// file and its directory are created if missing) and `sqlite::memory:` open SQLite in WAL
    /// mode with foreign keys on, `synchronous = FULL`, `temp_store = MEMORY` and a 5 s busy
    /// timeout.
    ///
    /// # Errors
    /// [`StoreError::UnsupportedUrl`] for any other scheme; [`StoreError::Connect`] (naming the
    /// database, password redacted) when it cannot be reached; [`StoreError::File`] when the
    /// SQLite file's directory cannot be created.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store> {
        Store::connect_with(
            url,
            PoolOptions {
                max_connections,
                statement_timeout: None,
            },
        )
        .await
    }

    /// [`Store::connect`] with every option: the daemon's pools limit how long a Postgres
    /// statement may run (`database.statement_timeout`).
    ///
    /// # Errors
    /// As [`Store::connect`].
    pub async fn connect_with(url: &str, options: PoolOptions) -> Result<Store> {
        let max_connections = options.max_connections;
        let db = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Db::Postgres(postgres::connect(url, max_connections, options.statement_timeout).await?)
        } else if url.starts_with("sqlite:") {
            Db::Sqlite(sqlite::connect(url, max_connections).await?)
        } else {
            return Err(StoreError::UnsupportedUrl(redact_url(url)));
        };
        Ok(Store {
            db,
            pg_writer: Default::default(),
            committed: std::sync::Arc::new(tokio::sync::watch::channel(0).0),
        })
    }

    /// [`Store::connect`], retried while the database is unreachable: with capped exponential
    /// backoff (0.5 s doubling to 30 s), each failed attempt reported to `on_retry` with the
    /// wait before the next, until `timeout` (`None`: forever) or `cancel`.
    ///
    /// # Errors
    /// The first error that waiting cannot cure (a bad URL, a refused password); the last
    /// error when `timeout` passes; [`StoreError::Cancelled`] when `cancel` fires.
    pub async fn connect_patiently(
        url: &str,
        options: PoolOptions,
        timeout: Option<std::time::Duration>,
        cancel: &tokio_util::sync::CancellationToken,
        on_retry: impl Fn(&StoreError, std::time::Duration),
    ) -> Result<Store> {
        use std::time::Duration;
        // A timeout too long to add to the clock is no deadline at all.
        let deadline = timeout.and_then(|t| tokio::time::Instant::now().checked_add(t));
        let mut wait = Duration::from_millis(500);
        loop {
            let error = match Store::connect_with(url, options).await {
                Ok(store) => return Ok(store),
                Err(e) if e.is_transient() => e,
                Err(e) => return Err(e),
            };
            let now = tokio::time::Instant::now();
            if deadline.is_some_and(|d| now.later_by(wait) > d) {
                return Err(error);
            }
            on_retry(&error, wait);
            tokio::select! {
                () = cancel.cancelled() => return Err(StoreError::Cancelled),
                () = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(30));
        }
    }

    pub fn backend(&self) -> Backend {
        match self.db {
            Db::Postgres(_) => Backend::Postgres,
            Db::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// Closes the pool: waits for the connections in use to come back, then closes every
    /// connection (the writer lock's too), so the database sees clean disconnects at shutdown.
    /// Queries after this fail.
    pub async fn close(&self) {
        self.pg_writer.release().await;
        match &self.db {
            Db::Postgres(pool) => pool.close().await,
            Db::Sqlite(db) => db.pool.close().await,
        }
    }

    /// Applies the migrations this binary embeds that the database lacks.
    ///
    /// On Postgres they run on a session of their own without `statement_timeout`, and a
    /// writer lock taken before (on a database without the holder tables yet) is described in
    /// `writer_lock_holder` (or, for a replica, `writer_lock_replicas`) afterwards.
    ///
    /// # Errors
    /// [`StoreError::Migrate`] when a migration fails or the database holds migrations this
    /// binary does not know (it is older than the schema).
    pub async fn migrate(&self) -> Result<()> {
        match &self.db {
            Db::Postgres(pool) => {
                postgres::migrate(pool).await?;
                self.pg_writer.describe_holder(pool).await;
            }
            Db::Sqlite(db) => sqlx::migrate!("./migrations/sqlite").run(&db.pool).await?,
        }
        Ok(())
    }

    /// Describes the writer lock's holder again (see [`Store::migrate`]), for a daemon whose
    /// migrations another role applied after it took the lock. Best effort; nothing on SQLite
    /// or without a lock.
    pub async fn describe_writer_lock(&self) {
        if let Db::Postgres(pool) = &self.db {
            self.pg_writer.describe_holder(pool).await;
        }
    }

    /// Versions of the migrations this binary embeds that the database has not applied, oldest
    /// first. A `run --no-migrate` daemon waits until this is empty, since the migrations are
    /// another role's job there.
    ///
    /// # Errors
    /// [`StoreError::Sqlx`] when the database cannot be asked.
    pub async fn pending_migrations(&self) -> Result<Vec<i64>> {
        let (migrator, applied): (sqlx::migrate::Migrator, Vec<i64>) = match &self.db {
            Db::Postgres(pool) => {
                let exists: bool =
                    sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                        .fetch_one(pool)
                        .await?;
                let applied = if exists {
                    sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                        .fetch_all(pool)
                        .await?
                } else {
                    Vec::new()
                };
                (sqlx::migrate!("./migrations/postgres"), applied)
            }
            Db::Sqlite(db) => {
                let exists: bool = sqlx::query_scalar(
                    "SELECT count(*) > 0 FROM sqlite_master \
                     WHERE type = 'table' AND name = '_sqlx_migrations'",
                )
                .fetch_one(&db.pool)
                .await?;
                let applied = if exists {
                    sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                        .fetch_all(&db.pool)
                        .await?
                } else {
                    Vec::new()
                };
                (sqlx::migrate!("./migrations/sqlite"), applied)
            }
        };
        let applied: HashSet<i64> = applied.into_iter().collect();
        Ok(migrator
            .iter()
            .filter(|m| !m.migration_type.is_down_migration() && !applied.contains(&m.version))
            .map(|m| m.version)
            .collect())
    }

    /// Makes this the only process writing polls to the database, for as long as the store
    /// (or a clone of it) lives or until [`Store::close`]. Idempotent. Two daemons on one
    /// database would poll every meeting twice and their snapshots would fight (the
    /// `poll_seq` fence keeps each poll whole, not the pair sensible). Several replicas share
    /// a Postgres database only with `cluster.enabled`, whose meeting leases replace this lock:
    /// each replica takes it in shared mode instead ([`Store::acquire_replica_lock`]).
    ///
    /// SQLite: an exclusive OS lock on `<database>.lock`, which the kernel holds until the
    /// process exits: it cannot be lost, so the [`Store::writer_permit`] stays held. Postgres:
    /// a session-level advisory lock (`pg_try_advisory_lock`) on a dedicated connection held
    /// for the store's life and checked every 250 ms. When that session ends (terminated, or
    /// the server restarted) the permit is revoked at once and the lock is taken again as soon
    /// as the database answers and no other process holds it; the permit is granted again
    /// then.
    ///
    /// # Errors
    /// [`StoreError::Locked`] when another process holds the lock, a single writer or cluster
    /// replicas (the message names the database and them); [`StoreError::File`] when the
    /// SQLite lock file cannot be opened; [`StoreError::Connect`] / [`StoreError::Sqlx`] when
    /// Postgres cannot be asked.
    pub async fn acquire_writer_lock(&self) -> Result<()> {
        match &self.db {
            Db::Postgres(pool) => self.pg_writer.acquire(pool, WriterRole::Single).await,
            Db::Sqlite(db) => db.acquire_writer_lock(),
        }
    }

    /// The writer lock as a cluster replica holds it: the same advisory key in shared mode
    /// (`pg_try_advisory_lock_shared`), so replicas run beside each other while a single-writer
    /// daemon and replicas refuse each other. Kept, checked and retaken like
    /// [`Store::acquire_writer_lock`]. A no-op on SQLite, where cluster mode is refused.
    ///
    /// # Errors
    /// [`StoreError::Locked`] when a single-writer daemon holds the lock (the message names
    /// it); [`StoreError::Connect`] / [`StoreError::Sqlx`] when Postgres cannot be asked.
    pub async fn acquire_replica_lock(&self) -> Result<()> {
        match &self.db {
            Db::Postgres(pool) => self.pg_writer.acquire(pool, WriterRole::Replica).await,
            Db::Sqlite(_) => Ok(()),
        }
    }

    /// Whether this process may write now: revoked while the Postgres writer lock is lost,
    /// granted again once it is retaken. Always held on SQLite and when no lock was taken.
    pub fn writer_permit(&self) -> WriterPermit {
        match &self.db {
            Db::Postgres(_) => self.pg_writer.permit(),
            Db::Sqlite(_) => WriterPermit::always(),
        }
    }

    /// Starts tracking a meeting. Idempotent: an active meeting in the same region stays as it
    /// is (its label is replaced if `label` is given); a stopped one becomes active again with
    /// the new region and label, and its first poll counts as the first ever (`last_polled_at`
    /// is cleared). An ended meeting, or an active one in another region, is left alone unless
    /// `force` is given: then the ended one comes back like a stopped one, and the active one
    /// moves to `region` (its snapshot kept, its poll in flight fenced off).
    ///
    /// # Errors
    /// [`StoreError::Sqlx`] when the database fails.
    pub async fn add_meeting(
        &self,
        id: &MeetingId,
        region: &Region,
        label: Option<&str>,
        now: DateTime<Utc>,
        force: bool,
    ) -> Result<AddOutcome> {
        on_backend!(self, add_meeting(id, region, label, now, force))
    }

    /// Stops tracking a meeting: in one transaction every attendee of the snapshot gets a
    /// `left` event with reason `tracking_stopped` (`observed_at` = `now`), the snapshot is
    /// emptied and the meeting becomes `stopped`, which makes any poll in flight conflict.
    ///
    /// Returns `None` when the meeting is not tracked, and no events when it was already
    /// stopped or ended (then nothing changes).
    ///
    /// # Errors
    /// [`StoreError::Sqlx`] when the database fails; nothing is written then.
    pub async fn remove_meeting(
        &self,
        id: &MeetingId,
        now: DateTime<Utc>,
    ) -> Result<Option<Vec<StoredEvent>>> {
        let stopped = on_backend!(self, remove_meeting(id, now))?;
        if stopped.as_ref().is_some_and(|events| !events.is_empty()) {
            self.note_committed();
        }
        Ok(stopped)
    }

    /// Changes after every commit through this store (or a clone) that recorded events, so an
    /// in-process consumer can read them at once instead of at its next poll. It says nothing
    /// of other processes' commits (on Postgres, `LISTEN` hears those: [`Store::event_wakeups`]).
    pub fn committed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.committed.subscribe()
    }

    fn note_committed(&self) {
        self.committed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Notes that events were committed elsewhere, for the consumers of [`Store::committed`].
    pub fn note_committed_elsewhere(&self) {
        self.note_committed();
    }

    /// Every tracked meeting, whatever its status, ordered by `added_at` then id.
    ///
    /// # Errors
    /// [`StoreError::Sqlx`] when the database fails; [`StoreError::Corrupt`] for a bad row.
    pub async fn list_meetings(&self) -> Result<Vec<TrackedMeeting>> {
        on_backend!(self, list_meetings(false))
    }

    /// A cheap summary of `tracked_meetings` that differs whenever the set of active meetings
    /// has changed since it was last read: a meeting added (`last_added` grows, `active`
    /// grows), stopped or ended (`last_ended` grows), or tracked again (`active` grows). Lets
    /// the scheduler skip re-reading thousands of rows when nothing changed.
    ///
    /// # Errors
    /// [`StoreError::Sqlx`] when the database fails.
    pub async fn meetings_version(&self) -> Result<MeetingsVersion> {
        on_backend!(self, meetings_version())
    }

    /// The meetings to poll (status `active`), ordered by `added_at` then id.
    ///
    /// # Errors
    /// [`StoreError::Sqlx`] when the database fails; [`StoreError::Corrupt`] for a bad row.
    pub async fn active_meetings(&self) -> Result<Vec<TrackedMeeting>> {
        on_backend!(self, list_meetings(true))
    }

    /// The id and region of every meeting to poll (status `active`), ordered by `added_at`
    /// then id: what the scheduler re-reads, without the other columns of
    /// [`Store::active_meetings`].
    ///
    /// # Errors
    /// [`StoreError::Sqlx`] when the database fails; [`StoreError::Corrupt`] for a bad row.
    pub async fn active_meeting_keys(&self) -> Result<Vec<(MeetingId, Region)>> {
        on_backend!(self, active_meeting_keys())
    }

    /// One tracked meeting, whatever its status; `None` when it was never added.
    ///
    /// # Errors
    /// [`StoreError::Sqlx`] when the database fails; [`StoreError::Corrupt`] for a bad row.
    pub async fn get_meeting(&self, id: &MeetingId) -> Result<Option<TrackedMeeting>> {
        on_backend!(self, get_meeting(id))
    }

    /// The roster the last recorded poll left, sorted by attendee id, with the `poll_seq` an
    /// `apply` of a diff against it must present. Read in one statement, so the attendees
    /// and `poll_seq` always belong together.
    ///
    /// # Errors
    /// [`StoreError::UnknownMeeting`] when the meeting is not tracked; [`StoreError::Sqlx`] when
    /// the database fails; [`StoreError::Corrupt`] for a bad row.
    pub async fn snapshot(&self, id: &MeetingId) -> Result<Snapshot> {
        on_backend!(self, snapshot(id))
    }

    /// Records one successful poll, if the meeting is still active and its `poll_seq` is still
    /// `rec.expected_seq`; otherwise returns [`ApplyOutcome::Conflict`] having written nothing.
    ///
    /// Without changes this is one `UPDATE` of the meeting's bookkeeping and nothing else.
    /// With changes, one transaction inserts the events in the order given (so `event_id`
    /// follows it) and applies them to the snapshot.
    ///
    /// # Errors
    /// [`StoreError::InvalidRecord`] when an attendee appears in two changes, a change's fields
    /// do not fit its kind, or a change contradicts the stored snapshot (a `left` for an
    /// attendee not in it, a `joined` for one already in it); [`StoreError::Sqlx`] when the
    /// database fails. Nothing is written in either case.
    pub async fn apply(&self, rec: PollRecord<'_>) -> Result<ApplyOutcome> {
        self.apply_fenced(rec, None).await
    }

    /// [`Store::apply`], also fenced (with `Some`) by the meeting's lease: in cluster mode a
    /// poll is recorded only while this replica still holds the lease under the token it
    /// polled with. A poll whose lease was lost writes nothing, returns
    /// [`ApplyOutcome::Conflict`] and counts in `roster_sync_lease_lost_total`.
    ///
    /// # Errors
    /// As [`Store::apply`].
    pub async fn apply_fenced(
        &self,
        rec: PollRecord<'_>,
        fence: Option<LeaseToken>,
    ) -> Result<ApplyOutcome> {
        check_changes(rec.meeting_id, rec.changes)?;
        let mut rec = rec;
        rec.started_at = not_before(rec.meeting_id, rec.started_at, rec.previous_poll_at);
        rec.observed_at = not_before(rec.meeting_id, rec.observed_at, Some(rec.started_at));
        let outcome = on_backend!(self, apply(&rec, fence))?;
        self.note_if_recorded(&outcome);
        if let (ApplyOutcome::Conflict, Some(token)) = (&outcome, fence) {
            self.count_lost_leases(&[token]).await;
        }
        Ok(outcome)
    }

    fn note_if_recorded(&self, outcome: &ApplyOutcome) {
        if matches!(outcome, ApplyOutcome::Applied { events, .. } if !events.is_empty()) {
            self.note_committed();
        }
    }

    /// What the presence reconciler needs of one meeting: whether it is active, its roster
    /// (with each attendee's earliest possible start), each attendee's presence so far, and
    /// the fence for [`Store::apply_presence`].
    ///
    /// # Errors
    /// [`StoreError::Sqlx`] when the database fails; [`StoreError::Corrupt`] for a stored
    /// value that does not decode.
    pub async fn presence_context(
        &self,
        meeting: &MeetingId,
    ) -> Result<crate::presence::PresenceContext> {
        on_backend!(self, presence_context(meeting))
    }

    /// The envelope ids among `ids` already applied to presence.
    ///
    /// # Errors
    /// [`StoreError::Sqlx`] when the database fails.
    pub async fn presence_applied(&self, ids: &[String]) -> Result<HashSet<String>> {
        on_backend!(self, presence_applied(ids))
    }

    /// Records one batch of presence changes of one meeting and marks its envelope ids
    /// applied, in one transaction, if the meeting is still active, no presence was recorded
    /// for it since `rec.fence`, and no envelope id was applied meanwhile. Returns `None`
    /// (nothing written) otherwise: recompute from a fresh [`Store::presence_context`].
    ///
    /// # Errors
    /// [`StoreError::InvalidRecord`] when a change names an attendee missing from `users`;
    /// [`StoreError::Sqlx`] when the database fails. Nothing is written in either case.
    pub async fn apply_presence(
        &self,
        rec: PresenceRecord<'_>,
        users: &std::collections::HashMap<AttendeeId, ExternalUserId>,
    ) -> Result<Option<Vec<StoredEvent>>> {
        let out = on_backend!(self, apply_presence(&rec, users))?;
        if out.as_ref().is_some_and(|e| !e.is_empty()) {
            self.note_committed();
        }
        Ok(out)
    }

    /// Reconciles a batch of one meeting's meeting events (in Chime-timestamp order) with
    /// what is recorded and records the result: reads the context, lets
    /// [`crate::presence::plan`] decide, and writes fenced; when another writer recorded
    /// presence of the meeting meanwhile it starts again from a fresh context (at most 5
    /// times). Returns the stored presence events and the plan (its `unknown` events are not
    /// recorded: the caller holds them until a poll shows their attendees).
    ///
    /// # Errors
    /// [`StoreError::Sqlx`] when the database fails, [`StoreError::InvalidRecord`] when the fence kept moving.
    pub async fn record_presence(
        &self,
        meeting: &MeetingId,
        events: &[crate::lifecycle::MeetingEvent],
        now: DateTime<Utc>,
    ) -> Result<(Vec<StoredEvent>, crate::presence::Plan)> {
        let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
        for _ in 0..5 {
            let mut ctx = self.presence_context(meeting).await?;
            let already = self.presence_applied(&ids).await?;
            let plan = crate::presence::plan(&mut ctx, events, &already);
            if plan.applied.is_empty() {
                return Ok((Vec::new(), plan));
            }
            let users = ctx
                .roster
                .iter()
                .map(|(a, (u, _))| (a.clone(), u.clone()))
                .collect();
            let rec = PresenceRecord {
                meeting_id: meeting,
                fence: ctx.fence,
                envelope_ids: &plan.applied,
                changes: &plan.changes,
                observed_at: now,
            };
            if let Some(stored) = self.apply_presence(rec, &users).await? {
                return Ok((stored, plan));
            }
        }
        Err(StoreError::InvalidRecord(format!(
            "presence of meeting {meeting} kept changing under five attempts to record it"
        )))
    }

    /// Records the bookkeeping of many unchanged polls in one statement: for each, exactly what
    /// [`Store::apply`] writes for a poll without changes (`last_polled_at`, `poll_seq + 1`, the
    /// failure count and error cleared), fenced the same way by meeting status and `poll_seq`.
    /// No snapshot or event row is touched.
    ///
    /// Returns, in the order of `polls`, whether each was recorded; `false` is a conflict (the
    /// meeting is no longer active, or its `poll_seq` moved), as [`ApplyOutcome::Conflict`].
    /// A meeting must appear at most once in `polls`.
    ///
    /// This is the daemon's hot path: at hundreds of polls a second, one statement per second
    /// instead of one per poll. Delaying it is safe: until it is written, `last_polled_at` is
    /// older than the truth, which only widens the next change window.
    ///
    /// # Errors
    /// [`StoreError::InvalidRecord`] when a meeting appears twice (nothing is written);
    /// [`StoreError::Sqlx`] when the database fails (nothing is written).
    pub async fn record_unchanged_polls(&self, polls: &[UnchangedPoll]) -> Result<Vec<bool>> {
        if polls.is_empty() {
            return Ok(Vec::new());
        }
        let mut ids = HashSet::with_capacity(polls.len());
        for p in polls {
            if !ids.insert(p.meeting_id.as_str()) {
                return Err(StoreError::InvalidRecord(format!(
                    "meeting {} appears twice in one batch of unchanged polls",
                    p.meeting_id
                )));
            }
        }
        let recorded: HashSet<String> = on_backend!(self, record_unchanged_polls(polls))?;
        let refused: Vec<LeaseToken> = polls
            .iter()
            .filter(|p| !recorded.contains(p.meeting_id.as_str()))
            .filter_map(|p| p.fence)
            .collect();
        if !refused.is_empty() {
            self.count_lost_leases(&refused).await;
        }
        Ok(polls
            .iter()
            .map(|p| recorded.contains(p.meeting_id.as_str()))
            .collect())
    }

    /// Records that the service says the meeting is gone, fenced like [`Store::apply`]: in
    /// one transaction the meeting becomes `ended` (at `observed_at`), everyone still in the
    /// snapshot gets a `left` event with reason `meeting_ended` (their last capabilities as
    /// `before`), and the snapshot is emptied.
    ///
    /// # Errors
    /// [`StoreError::Sqlx`] when the database fails; nothing is written then.
    pub async fn end_meeting(
        &self,
        id: &MeetingId,
        expected_seq: i64,
        observed_at: DateTime<Utc>,
        previous_poll_at: Option<DateTime<Utc>>,
    ) -> Result<ApplyOutcome> {
        self.end_meeting_fenced(id, expected_seq, observed_at, previous_poll_at, None)
            .await
    }

    /// [`Store::end_meeting`], also fenced (with `Some`) by the meeting's lease, as
    /// [`Store::apply_fenced`].
    ///
    /// # Errors
    /// As [`Store::end_meeting`].
    pub async fn end_meeting_fenced(
        &self,
        id: &MeetingId,
        expected_seq: i64,
        observed_at: DateTime<Utc>,
        previous_poll_at: Option<DateTime<Utc>>,
        fence: Option<LeaseToken>,
    ) -> Result<ApplyOutcome> {
        let observed_at = not_before(id, observed_at, previous_poll_at);
        let outcome = on_backend!(
            self,
            end_meeting(id, expected_seq, observed_at, previous_poll_at, fence)
        )?;
        self.note_if_recorded(&outcome);
        if let (ApplyOutcome::Conflict, Some(token)) = (&outcome, fence) {
            self.count_lost_leases(&[token]).await;
        }
        Ok(outcome)
    }

    /// Notes a failed poll: bumps `consecutive_failures` and keeps `error` (cut to
    /// [`MAX_ERROR_LEN`] bytes) as `last_error`. The snapshot and events are untouched.
    ///
    /// # Errors
    /// [`StoreError::Sqlx`] when the database fails.
    pub async fn record_failure(
        &self,
        id: &MeetingId,
        code: Option<&str>,
        error: &str,
        at: DateTime<Utc>,
    ) -> Result<()> {
        self.record_failure_fenced(id, code, error, at, None)
            .await
            .map(|_| ())
    }

    /// [`Store::record_failure`], also fenced (with `Some`) by the meeting's lease, as
    /// [`Store::apply_fenced`]: a replica that lost the lease writes nothing (and counts it in
    /// `roster_sync_lease_lost_total`), so the error columns only ever tell of the owner's
    /// polls. False when nothing was written.
    ///
    /// # Errors
    /// [`StoreError::Sqlx`] when the database fails.
    pub async fn record_failure_fenced(
        &self,
        id: &MeetingId,
        code: Option<&str>,
        error: &str,
        at: DateTime<Utc>,
        fence: Option<LeaseToken>,
    ) -> Result<bool> {
        let error = truncate_at_char_boundary(error, MAX_ERROR_LEN);
        let code = code.map(|c| truncate_at_char_boundary(c, MAX_CODE_LEN));
        let written = on_backend!(self, record_failure(id, code, error, at, fence))?;
        if let (false, Some(token)) = (written, fence) {
            self.count_lost_leases(&[token]).await;
        }
        Ok(written)
    }

    /// At most `limit` events with `event_id > after_event_id`, in `event_id` order: the
    /// cursor read of a consumer that must see every event once, in order.
    ///
    /// # Errors
    /// [`StoreError::Sqlx`] when the database fails; [`StoreError::Corrupt`] for a bad row.
    pub async fn events_since(&self, after_event_id: i64, limit: i64) -> Result<Vec<StoredEvent>> {
        // A negative LIMIT is an error on Postgres and "no limit" on SQLite: make it none.
        let limit = limit.max(0);
        on_backend!(self, events_since(after_event_id, limit))
    }

    /// Every event of one meeting, in `event_id` order.
    ///
    /// # Errors
    /// [`StoreError::Sqlx`] when the database fails; [`StoreError::Corrupt`] for a bad row.
    pub async fn events_for_meeting(&self, id: &MeetingId) -> Result<Vec<StoredEvent>> {
        on_backend!(self, events_for_meeting(id))
    }

    /// The meeting's rows of the `attendance_sessions` view, ordered by `joined_at` then
    /// attendee id.
    ///
    /// # Errors
    /// [`StoreError::Sqlx`] when the database fails; [`StoreError::Corrupt`] for a bad row.
    pub async fn sessions(&self, id: &MeetingId) -> Result<Vec<SessionRow>> {
        on_backend!(self, sessions(id))
    }

    /// The meeting's rows of the `meeting_attendance` view, ordered by `first_joined_at` then
    /// external user id.
    ///
    /// # Errors
    /// [`StoreError::Sqlx`] when the database fails; [`StoreError::Corrupt`] for a bad row.
    pub async fn attendance(&self, id: &MeetingId) -> Result<Vec<AttendanceRow>> {
        on_backend!(self, attendance(id))
    }

    /// Every meeting labelled `label`, whatever its status, ordered by `added_at` then id.
    ///
    /// # Errors
    /// [`StoreError::Sqlx`] when the database fails; [`StoreError::Corrupt`] for a bad row.
    pub async fn meetings_with_label(&self, label: &str) -> Result<Vec<TrackedMeeting>> {
        on_backend!(self, meetings_with_label(label))
    }

    /// The `attendance_sessions` rows of every meeting labelled `label`, ordered by
    /// `joined_at`, meeting id, then attendee id.
    ///
    /// # Errors
    /// [`StoreError::Sqlx`] when the database fails; [`StoreError::Corrupt`] for a bad row.
    pub async fn label_sessions(&self, label: &str) -> Result<Vec<SessionRow>> {
        on_backend!(self, label_sessions(label))
    }

    /// Every `capabilities_changed` event of every meeting observed at or after `since` (all
    /// of them without it), in `event_id` order.
    ///
    /// # Errors
    /// [`StoreError::Sqlx`] when the database fails; [`StoreError::Corrupt`] for a bad row.
    pub async fn capability_changes(
        &self,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<StoredEvent>> {
        on_backend!(self, capability_changes(since))
    }
}

/// `last_error` is cut to this many bytes: an error message is for a human, and a service
/// answering with a huge body must not bloat the meetings table.
pub const MAX_ERROR_LEN: usize = 2000;

/// `last_error_code` is cut to this many bytes; real codes are short names.
pub const MAX_CODE_LEN: usize = 128;

fn truncate_at_char_boundary(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let end = (0..=max)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0);
    &s[..end]
}

/// `at`, or `floor` when `at` is earlier: a poll is never recorded as started or observed
/// before the poll it follows, so `observed_at >= previous_poll_at` holds for every event and
/// no session gets a negative duration, even when the clocks that took the two readings
/// disagree (a replica whose host clock is behind the one that polled before it, a clock
/// stepped back). In cluster mode every replica reads the database's clock, so this should
/// not happen; when it does, it is logged, since the window it records is then wider than
/// what was seen.
pub(crate) fn not_before(
    meeting: &MeetingId,
    at: DateTime<Utc>,
    floor: Option<DateTime<Utc>>,
) -> DateTime<Utc> {
    match floor {
        Some(floor) if at < floor => {
            tracing::warn!(
                meeting_id = %meeting,
                at = %at,
                previous_poll_at = %floor,
                "a poll's time is before the poll it follows (clocks disagree); recorded at the previous poll's time"
            );
            floor
        }
        _ => at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_error_is_cut_on_a_char_boundary() {
        assert_eq!(truncate_at_char_boundary("héllo", 2), "h");
        assert_eq!(truncate_at_char_boundary("héllo", 3), "hé");
        assert_eq!(truncate_at_char_boundary("hello", 10), "hello");
    }

    #[test]
    fn an_attendee_in_two_changes_is_refused() {
        let meeting = MeetingId::parse("00000000-0000-0000-0000-0000000000aa").unwrap();
        let a = Attendee {
            attendee_id: AttendeeId::parse("00000000-0000-0000-0000-000000000001").unwrap(),
            external_user_id: ExternalUserId::new("a"),
            capabilities: Capabilities::DEFAULT,
        };
        let changes = [Change::joined(&a), Change::left(&a, LeftReason::Removed)];
        let err = check_changes(&meeting, &changes).unwrap_err();
        assert!(matches!(err, StoreError::InvalidRecord(_)), "{err}");
        assert!(check_changes(&meeting, &changes[..1]).is_ok());
    }

    #[test]
    fn a_change_with_fields_of_another_kind_is_refused() {
        let meeting = MeetingId::parse("00000000-0000-0000-0000-0000000000aa").unwrap();
        let a = Attendee {
            attendee_id: AttendeeId::parse("00000000-0000-0000-0000-000000000001").unwrap(),
            external_user_id: ExternalUserId::new("a"),
            capabilities: Capabilities::DEFAULT,
        };
        let mut c = Change::joined(&a);
        c.reason = Some(LeftReason::Removed);
        assert!(matches!(
            check_changes(&meeting, &[c]),
            Err(StoreError::InvalidRecord(_))
        ));
    }
}
