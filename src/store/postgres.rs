//! The Postgres backend: connecting, the statements whose SQL only Postgres speaks (the
//! `UNNEST` bulk insert, the advisory lock that orders event commits) and the writer lock that
//! keeps a second daemon off the database. Everything else is in `store/shared.rs`.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection as _, Postgres, Transaction};

use super::shared::{event_columns, shared_queries};
use super::{
    EVENT_VALUES, PollRecord, Result, StoreError, StoredEvent, UnchangedPoll, event_values,
    redact_url,
};

shared_queries!(
    database = sqlx::Postgres,
    for_update = " FOR UPDATE",
    lease_fence = " AND EXISTS (SELECT 1 FROM meeting_leases AS l \
                    WHERE l.meeting_id = tracked_meetings.meeting_id AND l.token = $4 \
                      AND l.expires_at > now() FOR SHARE)"
);
pub(super) use queries::*;
type Database = sqlx::Postgres;
super::alerting::alerting_queries!();
super::retention::retention_queries!();

/// How long to wait for a connection before reporting the database unreachable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Every session's `lock_timeout`: a statement that waits this long for a lock another session
/// holds fails instead of hanging, so the scheduler loop (which treats the failure like a
/// database that does not answer) keeps ticking, and a stuck stop stays bounded.
const LOCK_TIMEOUT: &str = "10s";

/// Key of the session-level advisory lock that makes one daemon the database's only writer;
/// see [`WriterLock`]. The bytes spell "rstrwrtr".
const WRITER_LOCK: i64 = 0x7273_7472_7772_7472;

/// How often the writer lock's connection is checked.
const WRITER_LOCK_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Key of the transaction-scoped advisory lock every event writer takes; see
/// [`serialize_event_writers`]. The bytes spell "rstrevnt".
const EVENT_WRITERS_LOCK: i64 = 0x7273_7472_6576_6e74;

pub(super) async fn connect(url: &str, max_connections: u32) -> Result<PgPool> {
    let failed = |source| StoreError::Connect {
        url: redact_url(url),
        source,
    };
    let options = PgConnectOptions::from_str(url)
        .map_err(failed)?
        .application_name("roster-sync")
        .options([("lock_timeout", LOCK_TIMEOUT)]);
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

/// Postgres timestamps are `timestamptz`, which sqlx encodes from `DateTime<Utc>` as is.
fn ts(t: DateTime<Utc>) -> DateTime<Utc> {
    t
}

async fn begin_write(pool: &PgPool) -> Result<Transaction<'static, Postgres>> {
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

/// Tells `LISTEN`ers on [`EVENTS_CHANNEL`](super::EVENTS_CHANNEL) which events this transaction
/// inserted. Postgres delivers a notification only when (and if) the transaction commits, so
/// listeners never hear of events they cannot read yet.
async fn announce_events(conn: &mut PgConnection, events: &[StoredEvent]) -> Result<()> {
    let Some(payload) = super::alerting::notify_payload(events)? else {
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

/// The writer lock of one database: `pg_try_advisory_lock` on a connection of its own, kept
/// open (and checked every [`WRITER_LOCK_CHECK_EVERY`]) by a task for the store's life. When
/// the connection drops the server has released the lock; the task takes it again as soon as
/// the database answers, or, if another process got it first, cancels [`WriterLock::lost`].
#[derive(Debug, Default)]
pub(crate) struct WriterLock {
    held: tokio::sync::Mutex<Option<Keeper>>,
    lost: tokio_util::sync::CancellationToken,
}

#[derive(Debug)]
struct Keeper {
    /// Cancelling it (or dropping it with the last store clone) closes the lock's connection.
    _stop: tokio_util::sync::DropGuard,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl WriterLock {
    pub(crate) async fn acquire(&self, pool: &PgPool) -> Result<()> {
        let mut held = self.held.lock().await;
        if held.is_some() {
            return Ok(());
        }
        let options = pool.connect_options();
        let conn = match try_lock(&options).await? {
            Some(conn) => conn,
            None => return Err(StoreError::Locked(refusal(&options))),
        };
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(keep(conn, options, stop.clone(), self.lost.clone()));
        *held = Some(Keeper {
            _stop: stop.clone().drop_guard(),
            stop,
            task,
        });
        Ok(())
    }

    pub(crate) fn lost(&self) -> tokio_util::sync::CancellationToken {
        self.lost.clone()
    }

    /// Closes the lock's connection, which releases the lock.
    pub(crate) async fn release(&self) {
        if let Some(keeper) = self.held.lock().await.take() {
            keeper.stop.cancel();
            let _ = keeper.task.await;
        }
    }
}

/// A new connection holding the writer lock, or `None` when another session holds it.
async fn try_lock(options: &PgConnectOptions) -> Result<Option<PgConnection>> {
    let mut conn = PgConnection::connect_with(options)
        .await
        .map_err(|source| StoreError::Connect {
            url: describe(options),
            source,
        })?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(WRITER_LOCK)
        .fetch_one(&mut conn)
        .await?;
    if locked {
        Ok(Some(conn))
    } else {
        let _ = conn.close().await;
        Ok(None)
    }
}

/// Keeps the lock's connection open until `stop`; retakes the lock after the connection drops.
async fn keep(
    mut conn: PgConnection,
    options: std::sync::Arc<PgConnectOptions>,
    stop: tokio_util::sync::CancellationToken,
    lost: tokio_util::sync::CancellationToken,
) {
    let database = describe(&options);
    loop {
        tokio::select! {
            () = stop.cancelled() => {
                let _ = conn.close().await;
                return;
            }
            () = tokio::time::sleep(WRITER_LOCK_CHECK_EVERY) => {}
        }
        if sqlx::query("SELECT 1").execute(&mut conn).await.is_ok() {
            continue;
        }
        tracing::warn!(%database, "the writer lock's connection dropped; taking the lock again when the database answers");
        conn = loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(WRITER_LOCK_CHECK_EVERY) => {}
            }
            match try_lock(&options).await {
                Ok(Some(conn)) => {
                    tracing::info!(%database, "writer lock held again");
                    break conn;
                }
                Ok(None) => {
                    tracing::error!(%database, "another roster-sync took the writer lock while the database was unreachable; this one must stop writing");
                    lost.cancel();
                    return;
                }
                Err(_) => {}
            }
        };
    }
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

fn refusal(options: &PgConnectOptions) -> String {
    format!(
        "database {} is already in use: another roster-sync holds its writer lock (one daemon per database; several replicas need cluster.enabled)",
        describe(options)
    )
}
