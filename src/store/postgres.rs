//! The Postgres backend: connecting (every session with a `lock_timeout`, the daemon's also with
//! a `statement_timeout`), migrating, the statements whose SQL only Postgres speaks (the
//! `UNNEST` bulk insert, the advisory lock that orders event commits) and the writer lock that
//! keeps a second daemon off the database and names its holder. Everything else is in
//! `store/shared.rs`.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection as _, Postgres, Transaction};

use super::shared::{event_columns, shared_queries};
use super::{
    EVENT_VALUES, PollRecord, Result, StoreError, StoredEvent, UnchangedPoll, WriterRole,
    event_values, redact_url,
};
use crate::permit::{PermitGrantor, WriterPermit};

shared_queries!(
    database = sqlx::Postgres,
    for_update = " FOR UPDATE",
    lease_fence = " AND EXISTS (SELECT 1 FROM meeting_leases AS l \
                    WHERE l.meeting_id = tracked_meetings.meeting_id AND l.token = $4 \
                      AND l.expires_at > now() FOR SHARE)"
);
pub(super) use queries::*;
pub(super) type Database = sqlx::Postgres;

/// How long to wait for a connection before reporting the database unreachable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Every session's `lock_timeout`: a statement that waits this long for a lock another session
/// holds fails instead of hanging, so the scheduler loop (which treats the failure like a
/// database that does not answer) keeps ticking, and a stuck stop stays bounded.
const LOCK_TIMEOUT: &str = "10s";

/// Key of the session-level advisory lock that makes one daemon the database's only writer;
/// see [`WriterLock`]. The bytes spell "rstrwrtr".
const WRITER_LOCK: i64 = 0x7273_7472_7772_7472;

/// How often the writer lock's connection is checked (and, once lost, the lock tried again):
/// with [`WRITER_LOCK_CHECK_TIMEOUT`], a lost lock pauses the daemon within a second.
const WRITER_LOCK_CHECK_EVERY: Duration = Duration::from_millis(250);

/// A check of the writer lock that gets no answer within this counts as a lost lock.
const WRITER_LOCK_CHECK_TIMEOUT: Duration = Duration::from_millis(750);

/// Key of the transaction-scoped advisory lock every event writer takes; see
/// [`serialize_event_writers`]. The bytes spell "rstrevnt".
const EVENT_WRITERS_LOCK: i64 = 0x7273_7472_6576_6e74;

/// A pool on `url`. Every session gets [`LOCK_TIMEOUT`]; with `statement_timeout` (the
/// daemon's pools, `database.statement_timeout`) a statement that runs longer fails too, so no
/// database call can hold the scheduler for longer than that. Without it (the commands people
/// run, whose reports may rightly take long) statements are not limited.
pub(super) async fn connect(
    url: &str,
    max_connections: u32,
    statement_timeout: Option<Duration>,
) -> Result<PgPool> {
    let failed = |source| StoreError::Connect {
        url: redact_url(url),
        source,
    };
    let mut options = PgConnectOptions::from_str(url)
        .map_err(failed)?
        .application_name("roster-sync")
        .options([("lock_timeout", LOCK_TIMEOUT)]);
    if let Some(limit) = statement_timeout {
        // Whole milliseconds, the settings' unit; at least 1 (0 would mean "no limit"). The
        // same limit ends a session left idle inside a transaction: the daemon sends a
        // transaction's statements back to back, so such a session belongs to a process that
        // is frozen (SIGSTOP, a paused VM or container) or hung. Its transaction holds row
        // locks and the lock that orders event commits; without the limit every other writer
        // of the database would wait for it for as long as the process stays frozen.
        let ms = format!("{}ms", limit.as_millis().max(1));
        options = options.options([
            ("statement_timeout", ms.as_str()),
            ("idle_in_transaction_session_timeout", ms.as_str()),
        ]);
    }
    // One plain connection first: the pool retries a refused connection until its acquire
    // timeout and then reports only that it timed out, while this says why (refused, unknown
    // host, bad password).
    PgConnection::connect_with(&options)
        .await
        .map_err(failed)?
        .close()
        .await
        .map_err(failed)?;
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(failed)
}

/// Applies the embedded migrations on a session of its own whose `statement_timeout` is off:
/// a migration that rewrites a large table may take longer than the daemon's statements may.
/// It still runs before polling starts, so it cannot hold up the scheduler.
pub(super) async fn migrate(pool: &PgPool) -> Result<()> {
    let mut conn = PgConnection::connect_with(&pool.connect_options()).await?;
    sqlx::query("SET statement_timeout = 0")
        .execute(&mut conn)
        .await?;
    let applied = sqlx::migrate!("./migrations/postgres").run(&mut conn).await;
    let _ = conn.close().await;
    applied?;
    Ok(())
}

/// Postgres timestamps are `timestamptz`, which sqlx encodes from `DateTime<Utc>` as is.
pub(super) fn ts(t: DateTime<Utc>) -> DateTime<Utc> {
    t
}

pub(super) async fn begin_write(pool: &PgPool) -> Result<Transaction<'static, Postgres>> {
    Ok(pool.begin().await?)
}

/// Makes event ids become visible in commit order.
///
/// Identity values are handed out when rows are inserted, not when transactions commit: a
/// transaction that took id 7 can commit after one that took id 8. A reader with a cursor over
/// `event_id` ([`Store::events_since`](crate::store::Store::events_since)) that saw 8 would
/// then move past 7 and never see it.
/// Every transaction that inserts events takes this lock just before its insert and holds it
/// until it commits or rolls back, so ids are taken and committed in the same order. Only polls
/// that changed something pay for it, and only for the end of their transaction.
async fn serialize_event_writers(conn: &mut PgConnection) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(EVENT_WRITERS_LOCK)
        .execute(conn)
        .await?;
    Ok(())
}

/// Inserts one event per change in one statement. `WITH ORDINALITY … ORDER BY` feeds the rows
/// to the insert in the order of `rec.changes`, so their `event_id`s ascend in that order.
async fn insert_events(conn: &mut PgConnection, rec: &PollRecord<'_>) -> Result<Vec<StoredEvent>> {
    serialize_event_writers(&mut *conn).await?;
    let mut columns: [Vec<Option<&str>>; EVENT_VALUES] =
        std::array::from_fn(|_| Vec::with_capacity(rec.changes.len()));
    for change in rec.changes {
        for (column, value) in columns.iter_mut().zip(event_values(change)) {
            column.push(value);
        }
    }
    let mut query = sqlx::query(concat!(
        "INSERT INTO roster_events \
             (meeting_id, attendee_id, external_user_id, kind, audio, video, content, \
              previous_audio, previous_video, previous_content, reason, \
              observed_at, previous_poll_at) \
         SELECT $1, c.attendee_id, c.external_user_id, c.kind, c.audio, c.video, c.content, \
                c.previous_audio, c.previous_video, c.previous_content, c.reason, $2, $3 \
         FROM UNNEST($4::text[], $5::text[], $6::text[], $7::text[], $8::text[], \
                     $9::text[], $10::text[], $11::text[], $12::text[], $13::text[]) \
              WITH ORDINALITY AS c (attendee_id, external_user_id, kind, audio, video, content, \
                                    previous_audio, previous_video, previous_content, reason, n) \
         ORDER BY c.n \
         RETURNING ",
        event_columns!()
    ))
    .bind(rec.meeting_id.as_str())
    .bind(rec.observed_at)
    .bind(rec.previous_poll_at);
    for column in columns {
        query = query.bind(column);
    }
    let rows = query.fetch_all(&mut *conn).await?;
    let events = events_from_rows(&rows)?;
    announce_events(conn, &events).await?;
    Ok(events)
}

/// The payload of the `NOTIFY` for one transaction's events (all of one meeting).
fn notify_payload(events: &[StoredEvent]) -> Result<Option<String>> {
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        return Ok(None);
    };
    let payload = crate::event_json::NotifyPayload {
        meeting_id: first.meeting_id.as_str().to_owned(),
        first_event_id: first.event_id,
        last_event_id: last.event_id,
    };
    payload
        .to_json()
        .map(Some)
        .map_err(|e| StoreError::InvalidRecord(format!("cannot encode the notification: {e}")))
}

/// Tells `LISTEN`ers on [`EVENTS_CHANNEL`](super::EVENTS_CHANNEL) which events this transaction
/// inserted. Postgres delivers a notification only when (and if) the transaction commits, so
/// listeners never hear of events they cannot read yet.
async fn announce_events(conn: &mut PgConnection, events: &[StoredEvent]) -> Result<()> {
    let Some(payload) = notify_payload(events)? else {
        return Ok(());
    };
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(super::EVENTS_CHANNEL)
        .bind(payload)
        .execute(conn)
        .await?;
    Ok(())
}

/// The bookkeeping of unchanged polls in one statement, whatever their number: the batch
/// travels as three arrays (four with lease tokens, in cluster mode: then a poll is recorded
/// only while its lease holds, see `store/leases.rs`). Returns the meetings whose row matched
/// the fence.
pub(super) async fn record_unchanged_polls(
    pool: &PgPool,
    polls: &[UnchangedPoll],
) -> Result<std::collections::HashSet<String>> {
    let ids: Vec<&str> = polls.iter().map(|p| p.meeting_id.as_str()).collect();
    let seqs: Vec<i64> = polls.iter().map(|p| p.expected_seq).collect();
    let started: Vec<DateTime<Utc>> = polls.iter().map(|p| p.started_at).collect();
    let fenced = polls.iter().any(|p| p.fence.is_some());
    let recorded: Vec<String> = if !fenced {
        sqlx::query_scalar(
            "UPDATE tracked_meetings AS m \
             SET last_polled_at = v.started_at, poll_seq = m.poll_seq + 1, \
                 consecutive_failures = 0, last_error = NULL, last_error_code = NULL, last_error_at = NULL \
             FROM UNNEST($1::text[], $2::int8[], $3::timestamptz[]) \
                  AS v (meeting_id, expected_seq, started_at) \
             WHERE m.meeting_id = v.meeting_id AND m.poll_seq = v.expected_seq \
               AND m.status = 'active' \
             RETURNING m.meeting_id",
        )
        .bind(ids)
        .bind(seqs)
        .bind(started)
        .fetch_all(pool)
        .await?
    } else {
        // A poll without a token in a fenced batch matches no lease: it is not recorded.
        let tokens: Vec<Option<i64>> = polls.iter().map(|p| p.fence.map(|t| t.0)).collect();
        sqlx::query_scalar(
            "UPDATE tracked_meetings AS m \
             SET last_polled_at = v.started_at, poll_seq = m.poll_seq + 1, \
                 consecutive_failures = 0, last_error = NULL, last_error_code = NULL, last_error_at = NULL \
             FROM UNNEST($1::text[], $2::int8[], $3::timestamptz[], $4::int8[]) \
                  AS v (meeting_id, expected_seq, started_at, token) \
             WHERE m.meeting_id = v.meeting_id AND m.poll_seq = v.expected_seq \
               AND m.status = 'active' \
               AND EXISTS (SELECT 1 FROM meeting_leases AS l \
                           WHERE l.meeting_id = m.meeting_id AND l.token = v.token \
                             AND l.expires_at > now() FOR SHARE) \
             RETURNING m.meeting_id",
        )
        .bind(ids)
        .bind(seqs)
        .bind(started)
        .bind(tokens)
        .fetch_all(pool)
        .await?
    };
    Ok(recorded.into_iter().collect())
}

/// The writer lock of one database: an advisory lock on [`WRITER_LOCK`], taken on a connection
/// of its own, exclusively by a single-writer daemon (`pg_try_advisory_lock`) and in shared
/// mode by each cluster replica (`pg_try_advisory_lock_shared`): replicas run side by side, but
/// a single writer and replicas refuse each other. A task checks every
/// [`WRITER_LOCK_CHECK_EVERY`] that the session still holds the lock. The moment it does not
/// (the session was terminated, the server restarted, the check got no answer within
/// [`WRITER_LOCK_CHECK_TIMEOUT`]) the writer permit is revoked, so polling, webhook delivery and
/// retention pause; the task then tries to take the lock back at the same pace and grants the
/// permit again once it holds it.
///
/// Whoever takes the lock describes itself (host, pid, version and the lock session's backend
/// pid): a single writer in `writer_lock_holder`, a replica in `writer_lock_replicas`, so a
/// refused process can name the one in its way.
#[derive(Debug, Default)]
pub(crate) struct WriterLock {
    held: tokio::sync::Mutex<Option<Keeper>>,
    grantor: Arc<PermitGrantor>,
}

#[derive(Debug)]
struct Keeper {
    /// Cancelling it (or dropping it with the last store clone) closes the lock's connection.
    _stop: tokio_util::sync::DropGuard,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
    role: WriterRole,
    /// `pg_backend_pid()` of the session that holds the lock (it changes when it is retaken).
    backend_pid: Arc<AtomicI32>,
}

impl WriterLock {
    pub(crate) async fn acquire(&self, pool: &PgPool, role: WriterRole) -> Result<()> {
        let mut held = self.held.lock().await;
        if held.is_some() {
            return Ok(());
        }
        let options = pool.connect_options();
        let (conn, backend_pid) = match try_lock(&options, role).await? {
            Locked::Held(conn, backend_pid) => (conn, backend_pid),
            Locked::Refused(holders) => {
                return Err(StoreError::Locked(refusal(&options, role, &holders)));
            }
        };
        self.grantor.grant();
        let stop = tokio_util::sync::CancellationToken::new();
        let backend_pid = Arc::new(AtomicI32::new(backend_pid));
        let task = tokio::spawn(keep(
            Keep {
                options,
                role,
                stop: stop.clone(),
                grantor: Arc::clone(&self.grantor),
                backend_pid: Arc::clone(&backend_pid),
            },
            conn,
        ));
        *held = Some(Keeper {
            _stop: stop.clone().drop_guard(),
            stop,
            task,
            role,
            backend_pid,
        });
        Ok(())
    }

    /// Held while this process holds the lock (and before it took one).
    pub(crate) fn permit(&self) -> WriterPermit {
        self.grantor.permit()
    }

    /// Writes the holder row again, once migrations created its table (the lock is taken
    /// before migrating, on a database that may not have the table yet). Best effort.
    pub(crate) async fn describe_holder(&self, pool: &PgPool) {
        let (role, backend_pid) = match &*self.held.lock().await {
            Some(keeper) => (keeper.role, keeper.backend_pid.load(Ordering::Relaxed)),
            None => return,
        };
        let described = match pool.acquire().await {
            Ok(mut conn) => describe_self(&mut conn, role, backend_pid).await,
            Err(e) => Err(e.into()),
        };
        if let Err(e) = described {
            tracing::debug!(error = %e, "cannot describe the writer lock's holder");
        }
    }

    /// Closes the lock's connection, which releases the lock.
    pub(crate) async fn release(&self) {
        if let Some(keeper) = self.held.lock().await.take() {
            keeper.stop.cancel();
            let _ = keeper.task.await;
        }
    }
}

/// What trying the writer lock found.
enum Locked {
    /// A new connection holding it, and its backend pid.
    Held(PgConnection, i32),
    /// Other sessions hold it; who, as far as their rows say.
    Refused(Holders),
}

/// The processes holding the writer lock's key, as their rows describe them.
#[derive(Debug, Default)]
struct Holders {
    /// The single writer holding it exclusively.
    single: Option<Holder>,
    /// The cluster replicas holding it in shared mode.
    replicas: Vec<Holder>,
}

/// One process holding the writer lock's key, as its row describes it.
#[derive(Debug)]
struct Holder {
    host: String,
    pid: i32,
    version: String,
    locked_at: DateTime<Utc>,
}

/// The writer lock's key as `pg_locks` shows a bigint advisory key: its high half (`classid`)
/// and low half (`objid`), with `objsubid = 1`.
fn key_halves() -> (i64, i64) {
    (WRITER_LOCK >> 32, WRITER_LOCK & 0xffff_ffff)
}

/// Tries the writer lock in `role`'s mode on a new connection; on success describes this
/// process (best effort: before the migrations the tables do not exist).
async fn try_lock(options: &PgConnectOptions, role: WriterRole) -> Result<Locked> {
    let mut conn = PgConnection::connect_with(options)
        .await
        .map_err(|source| StoreError::Connect {
            url: describe(options),
            source,
        })?;
    let sql = match role {
        WriterRole::Single => "SELECT pg_try_advisory_lock($1), pg_backend_pid()",
        WriterRole::Replica => "SELECT pg_try_advisory_lock_shared($1), pg_backend_pid()",
    };
    let (locked, backend_pid): (bool, i32) = sqlx::query_as(sql)
        .bind(WRITER_LOCK)
        .fetch_one(&mut conn)
        .await?;
    if locked {
        if let Err(e) = describe_self(&mut conn, role, backend_pid).await {
            tracing::debug!(error = %e, "cannot describe the writer lock's holder yet");
        }
        Ok(Locked::Held(conn, backend_pid))
    } else {
        let holders = read_holders(&mut conn).await;
        let _ = conn.close().await;
        Ok(Locked::Refused(holders))
    }
}

/// Describes this process as the holder of the lock on the session `backend_pid`: the one
/// `writer_lock_holder` row for a single writer; for a replica its `writer_lock_replicas` row,
/// after deleting the rows of sessions that no longer hold the lock.
async fn describe_self(conn: &mut PgConnection, role: WriterRole, backend_pid: i32) -> Result<()> {
    let pid = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
    match role {
        WriterRole::Single => {
            sqlx::query(
                "INSERT INTO writer_lock_holder (host, pid, version, backend_pid) \
                 VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (singleton) DO UPDATE \
                 SET host = EXCLUDED.host, pid = EXCLUDED.pid, version = EXCLUDED.version, \
                     backend_pid = EXCLUDED.backend_pid, locked_at = now()",
            )
            .bind(super::hostname())
            .bind(pid)
            .bind(env!("CARGO_PKG_VERSION"))
            .bind(backend_pid)
            .execute(&mut *conn)
            .await?;
        }
        WriterRole::Replica => {
            let (high, low) = key_halves();
            sqlx::query(
                "DELETE FROM writer_lock_replicas AS r \
                 WHERE NOT EXISTS (SELECT 1 FROM pg_locks AS l \
                                   WHERE l.locktype = 'advisory' AND l.granted \
                                     AND l.pid = r.backend_pid AND l.mode = 'ShareLock' \
                                     AND l.classid::int8 = $1 AND l.objid::int8 = $2 \
                                     AND l.objsubid = 1)",
            )
            .bind(high)
            .bind(low)
            .execute(&mut *conn)
            .await?;
            sqlx::query(
                "INSERT INTO writer_lock_replicas (backend_pid, host, pid, version) \
                 VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (backend_pid) DO UPDATE \
                 SET host = EXCLUDED.host, pid = EXCLUDED.pid, version = EXCLUDED.version, \
                     locked_at = now()",
            )
            .bind(backend_pid)
            .bind(super::hostname())
            .bind(pid)
            .bind(env!("CARGO_PKG_VERSION"))
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

/// Who holds the writer lock's key now: the rows whose session holds it in the matching mode
/// (a row left by a process that died is not believed). Empty when the tables are missing or
/// unreadable.
async fn read_holders(conn: &mut PgConnection) -> Holders {
    let (high, low) = key_halves();
    let single: Option<(String, i32, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT h.host, h.pid, h.version, h.locked_at FROM writer_lock_holder AS h \
         WHERE EXISTS (SELECT 1 FROM pg_locks AS l \
                       WHERE l.locktype = 'advisory' AND l.granted AND l.pid = h.backend_pid \
                         AND l.mode = 'ExclusiveLock' AND l.classid::int8 = $1 \
                         AND l.objid::int8 = $2 AND l.objsubid = 1)",
    )
    .bind(high)
    .bind(low)
    .fetch_optional(&mut *conn)
    .await
    .ok()
    .flatten();
    let replicas: Vec<(String, i32, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT r.host, r.pid, r.version, r.locked_at FROM writer_lock_replicas AS r \
         WHERE EXISTS (SELECT 1 FROM pg_locks AS l \
                       WHERE l.locktype = 'advisory' AND l.granted AND l.pid = r.backend_pid \
                         AND l.mode = 'ShareLock' AND l.classid::int8 = $1 \
                         AND l.objid::int8 = $2 AND l.objsubid = 1) \
         ORDER BY r.locked_at, r.pid",
    )
    .bind(high)
    .bind(low)
    .fetch_all(&mut *conn)
    .await
    .unwrap_or_default();
    let holder = |(host, pid, version, locked_at)| Holder {
        host,
        pid,
        version,
        locked_at,
    };
    Holders {
        single: single.map(holder),
        replicas: replicas.into_iter().map(holder).collect(),
    }
}

/// What the keeper task needs besides the lock's connection.
struct Keep {
    options: Arc<PgConnectOptions>,
    role: WriterRole,
    stop: tokio_util::sync::CancellationToken,
    grantor: Arc<PermitGrantor>,
    backend_pid: Arc<AtomicI32>,
}

/// Keeps the lock's connection open until `stop`, checking that it still holds the lock. When
/// it does not, revokes the permit (logging once) and takes the lock back as soon as it can.
async fn keep(k: Keep, mut conn: PgConnection) {
    let database = describe(&k.options);
    loop {
        tokio::select! {
            () = k.stop.cancelled() => {
                let _ = conn.close().await;
                return;
            }
            () = tokio::time::sleep(WRITER_LOCK_CHECK_EVERY) => {}
        }
        if still_holds(&mut conn).await {
            continue;
        }
        // The session is gone or no longer holds the lock: whatever is left of it goes too.
        drop(conn);
        k.grantor.revoke(
            "the writer lock was lost (its database session ended); taking it back".to_owned(),
        );
        tracing::warn!(%database, "lost the writer lock: polling, webhook delivery and retention pause until this daemon holds it again");
        conn = loop {
            tokio::select! {
                () = k.stop.cancelled() => return,
                () = tokio::time::sleep(WRITER_LOCK_CHECK_EVERY) => {}
            }
            match try_lock(&k.options, k.role).await {
                Ok(Locked::Held(conn, backend_pid)) => {
                    k.backend_pid.store(backend_pid, Ordering::Relaxed);
                    k.grantor.grant();
                    tracing::info!(%database, "writer lock held again; resuming");
                    break conn;
                }
                Ok(Locked::Refused(holders)) => k.grantor.revoke(format!(
                    "the writer lock was lost and is held by {}; taking it back once it is free",
                    holders_text(&holders)
                )),
                Err(e) => k.grantor.revoke(format!(
                    "the writer lock was lost and the database does not answer ({e}); taking it back once it does"
                )),
            }
        };
    }
}

/// Whether the lock's session answers, within [`WRITER_LOCK_CHECK_TIMEOUT`], that it holds the
/// writer lock.
async fn still_holds(conn: &mut PgConnection) -> bool {
    let (high, low) = key_halves();
    let check = sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_locks \
                        WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid() \
                          AND classid::int8 = $1 AND objid::int8 = $2 AND objsubid = 1)",
    )
    .bind(high)
    .bind(low)
    .fetch_one(conn);
    matches!(
        tokio::time::timeout(WRITER_LOCK_CHECK_TIMEOUT, check).await,
        Ok(Ok(true))
    )
}

/// `host:port/database` of a connection's options (never a password).
fn describe(options: &PgConnectOptions) -> String {
    format!(
        "postgres://{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or_default()
    )
}

/// "pid 4242 on host web-1 (version 0.1.0, holding it since …)".
fn holder_text(h: &Holder) -> String {
    format!(
        "pid {} on host {} (version {}, holding it since {})",
        h.pid,
        h.host,
        h.version,
        h.locked_at.format("%Y-%m-%d %H:%M:%S UTC")
    )
}

/// Every holder, for a log line or `/readyz`.
fn holders_text(holders: &Holders) -> String {
    match (&holders.single, holders.replicas.as_slice()) {
        (Some(single), _) => format!("a single-writer roster-sync, {}", holder_text(single)),
        (None, []) => {
            "another session (its row is missing: an older roster-sync, or migrations not applied)"
                .to_owned()
        }
        (None, replicas) => format!("cluster replicas: {}", replicas_text(replicas)),
    }
}

fn replicas_text(replicas: &[Holder]) -> String {
    replicas
        .iter()
        .map(holder_text)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Why `role` may not take the lock, naming the processes in its way.
fn refusal(options: &PgConnectOptions, role: WriterRole, holders: &Holders) -> String {
    let database = describe(options);
    const UNKNOWN: &str = "holder unknown: its writer_lock_holder row is missing (an older roster-sync, or migrations not applied)";
    match (role, &holders.single, holders.replicas.as_slice()) {
        (WriterRole::Single, None, replicas) if !replicas.is_empty() => format!(
            "database {database} is already in use by {} cluster replica(s) (cluster.enabled): {}; a single-writer roster-sync cannot run beside them (enable cluster.enabled to join them, or stop them first)",
            replicas.len(),
            replicas_text(replicas)
        ),
        (WriterRole::Single, single, _) => format!(
            "database {database} is already in use: another roster-sync holds its writer lock, {} (one daemon per database; several replicas need cluster.enabled)",
            single
                .as_ref()
                .map_or_else(|| UNKNOWN.to_owned(), holder_text)
        ),
        (WriterRole::Replica, single, _) => format!(
            "database {database} is already in use by a single-writer roster-sync (without cluster.enabled), {}; cluster replicas cannot run beside it (stop it, or run it with cluster.enabled too)",
            single
                .as_ref()
                .map_or_else(|| UNKNOWN.to_owned(), holder_text)
        ),
    }
}
