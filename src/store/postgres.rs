//! The Postgres backend: connecting, and the statements whose SQL only Postgres speaks (the
//! `UNNEST` bulk insert, the advisory lock that orders event commits). Everything else is in
//! `store/shared.rs`.

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

/// How long to wait for a connection before reporting the database unreachable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

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
        .application_name("roster-sync");
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
