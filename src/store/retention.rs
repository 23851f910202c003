//! The store's side of retention and erasure: deleting events past `retention.events`
//! without breaking a session or losing a webhook delivery, then the meetings that ended
//! before it and have nothing left, and erasing one person (`roster-sync forget`).
//!
//! Like the rest of the store, the SQL is written once (`retention_queries!`) and compiled
//! for each backend. These are the only statements that delete from `roster_events` and
//! `tracked_meetings`.

use chrono::{DateTime, Utc};

use super::{Db, Result, Store};
use crate::domain::ExternalUserId;

/// What [`Store::forget_person`] erased (or, from [`Store::person_rows`], would erase).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Erased {
    /// Rows deleted from `roster_events`.
    pub events: u64,
    /// Rows deleted from `roster_attendees`: the meetings the person is in right now.
    pub present: u64,
}

/// One row of `webhook_cursors`: a sink's name and the last event it delivered or skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookCursor {
    pub name: String,
    pub last_event_id: i64,
}

/// Runs `backend::retention::$function(pool, args…)` on whichever backend `$store` talks to.
macro_rules! on_backend {
    ($store:expr, $function:ident($($arg:expr),* $(,)?)) => {
        match &$store.db {
            Db::Postgres(pool) => on_postgres::retention::$function(pool, $($arg),*).await,
            Db::Sqlite(db) => on_sqlite::retention::$function(&db.pool, $($arg),*).await,
        }
    };
}

impl Store {
    /// Every webhook sink's delivery cursor, configured or not, ordered by name.
    ///
    /// # Errors
    /// [`StoreError::Sqlx`](super::StoreError::Sqlx) when the database fails.
    pub async fn webhook_cursors(&self) -> Result<Vec<WebhookCursor>> {
        on_backend!(self, webhook_cursors())
    }

    /// Deletes at most `limit` events observed before `cutoff`, in one transaction, and
    /// returns how many it deleted. An event is deleted only when:
    ///
    /// - its `event_id` is at most `delivered_through` (pass the lowest webhook cursor, or
    ///   `i64::MAX` when there is none), and so is every later event of the same attendee
    ///   in the same meeting;
    /// - every later event of that attendee in that meeting is also older than `cutoff`;
    /// - the attendee is not in the meeting's current snapshot (`roster_attendees`).
    ///
    /// So an attendee's history in a meeting goes all at once (across batches, in one pass),
    /// and a session never loses its `joined` while its `left` or the attendee remains.
    ///
    /// # Errors
    /// [`StoreError::Sqlx`](super::StoreError::Sqlx) when the database fails; nothing is
    /// deleted then.
    pub async fn delete_expired_events(
        &self,
        cutoff: DateTime<Utc>,
        delivered_through: i64,
        limit: i64,
    ) -> Result<u64> {
        on_backend!(
            self,
            delete_expired_events(cutoff, delivered_through, limit.max(0))
        )
    }

    /// Deletes at most `limit` meetings that ended or were stopped before `cutoff` and have
    /// nothing left: no event (retention deletes them first, by [`Store::delete_expired_events`])
    /// and no snapshot row (an ended or stopped meeting has an empty snapshot). Their lease
    /// rows go with them. Returns how many it deleted. An active meeting is never deleted,
    /// nor one `meetings add` reactivates meanwhile: the status is checked again on the row
    /// being deleted.
    ///
    /// # Errors
    /// [`StoreError::Sqlx`](super::StoreError::Sqlx) when the database fails; nothing is
    /// deleted then.
    pub async fn delete_expired_meetings(&self, cutoff: DateTime<Utc>, limit: i64) -> Result<u64> {
        on_backend!(self, delete_expired_meetings(cutoff, limit.max(0)))
    }

    /// How many rows [`Store::forget_person`] would delete now.
    ///
    /// # Errors
    /// [`StoreError::Sqlx`](super::StoreError::Sqlx) when the database fails.
    pub async fn person_rows(&self, person: &ExternalUserId) -> Result<Erased> {
        on_backend!(self, person_rows(person.as_str()))
    }

    /// Erases one person: in one transaction, every `roster_events` row and every
    /// `roster_attendees` row with this `external_user_id`, whatever their age or the webhook
    /// cursors. Meetings the person is in right now get their `poll_seq` bumped, which fences
    /// off a poll in flight and makes a running daemon re-read the snapshot at the next poll
    /// instead of trusting its remembered fingerprint; if the person is still in the meeting,
    /// that poll records them as `joined` again.
    ///
    /// # Errors
    /// [`StoreError::Sqlx`](super::StoreError::Sqlx) when the database fails; nothing is
    /// erased then.
    pub async fn forget_person(&self, person: &ExternalUserId) -> Result<Erased> {
        let erased = on_backend!(self, forget_person(person.as_str()))?;
        if let Db::Sqlite(db) = &self.db {
            // `secure_delete` zeroed the rows in the pages this transaction wrote, but the
            // write-ahead log still holds earlier copies of those pages: fold it into the
            // database and truncate it. Best effort: a reader open elsewhere (the daemon
            // mid-query) can keep part of it until the next automatic checkpoint.
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&db.pool)
                .await?;
        }
        Ok(erased)
    }
}

macro_rules! retention_queries {
    () => {
        /// The retention and erasure queries (see `store/retention.rs`).
        pub(in crate::store) mod retention {
            use chrono::{DateTime, Utc};
            use sqlx::Row as _;

            use super::{begin_write, ts};
            use crate::store::Result;
            use crate::store::retention::{Erased, WebhookCursor};

            type Pool = sqlx::Pool<super::Database>;

            pub(in crate::store) async fn webhook_cursors(
                pool: &Pool,
            ) -> Result<Vec<WebhookCursor>> {
                let rows = sqlx::query(
                    "SELECT name, last_event_id FROM webhook_cursors ORDER BY name",
                )
                .fetch_all(pool)
                .await?;
                rows.iter()
                    .map(|row| {
                        Ok(WebhookCursor {
                            name: row.try_get("name")?,
                            last_event_id: row.try_get("last_event_id")?,
                        })
                    })
                    .collect()
            }

            /// The join with `tracked_meetings` lets both backends find old events through
            /// the `(meeting_id, observed_at)` index, one range per meeting.
            pub(in crate::store) async fn delete_expired_events(
                pool: &Pool,
                cutoff: DateTime<Utc>,
                delivered_through: i64,
                limit: i64,
            ) -> Result<u64> {
                let mut tx = begin_write(pool).await?;
                let done = sqlx::query(
                    "DELETE FROM roster_events WHERE event_id IN ( \
                         SELECT e.event_id \
                         FROM tracked_meetings AS m \
                         JOIN roster_events AS e ON e.meeting_id = m.meeting_id \
                         WHERE e.observed_at < $1 AND e.event_id <= $2 \
                           AND NOT EXISTS ( \
                               SELECT 1 FROM roster_attendees AS a \
                               WHERE a.meeting_id = e.meeting_id \
                                 AND a.attendee_id = e.attendee_id) \
                           AND NOT EXISTS ( \
                               SELECT 1 FROM roster_events AS later \
                               WHERE later.meeting_id = e.meeting_id \
                                 AND later.attendee_id = e.attendee_id \
                                 AND later.event_id > e.event_id \
                                 AND (later.observed_at >= $1 OR later.event_id > $2)) \
                         LIMIT $3)",
                )
                .bind(ts(cutoff))
                .bind(delivered_through)
                .bind(limit)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(done.rows_affected())
            }

            pub(in crate::store) async fn delete_expired_meetings(
                pool: &Pool,
                cutoff: DateTime<Utc>,
                limit: i64,
            ) -> Result<u64> {
                let mut tx = begin_write(pool).await?;
                let done = sqlx::query(
                    "DELETE FROM tracked_meetings \
                     WHERE status <> 'active' AND ended_at < $1 \
                       AND meeting_id IN ( \
                         SELECT m.meeting_id FROM tracked_meetings AS m \
                         WHERE m.status <> 'active' AND m.ended_at < $1 \
                           AND NOT EXISTS ( \
                               SELECT 1 FROM roster_events AS e \
                               WHERE e.meeting_id = m.meeting_id) \
                           AND NOT EXISTS ( \
                               SELECT 1 FROM roster_attendees AS a \
                               WHERE a.meeting_id = m.meeting_id) \
                         LIMIT $2)",
                )
                .bind(ts(cutoff))
                .bind(limit)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(done.rows_affected())
            }

            pub(in crate::store) async fn person_rows(pool: &Pool, person: &str) -> Result<Erased> {
                let row = sqlx::query(
                    "SELECT (SELECT count(*) FROM roster_events WHERE external_user_id = $1) \
                                AS events, \
                            (SELECT count(*) FROM roster_attendees WHERE external_user_id = $1) \
                                AS present",
                )
                .bind(person)
                .fetch_one(pool)
                .await?;
                let events: i64 = row.try_get("events")?;
                let present: i64 = row.try_get("present")?;
                Ok(Erased {
                    events: events.unsigned_abs(),
                    present: present.unsigned_abs(),
                })
            }

            /// The meetings are fenced first: on Postgres the UPDATE waits for a poll of
            /// those meetings that is committing, and the DELETEs after it (new statements,
            /// new snapshots) then see what that poll wrote.
            pub(in crate::store) async fn forget_person(pool: &Pool, person: &str) -> Result<Erased> {
                let mut tx = begin_write(pool).await?;
                sqlx::query(
                    "UPDATE tracked_meetings SET poll_seq = poll_seq + 1 \
                     WHERE meeting_id IN ( \
                         SELECT meeting_id FROM roster_attendees WHERE external_user_id = $1)",
                )
                .bind(person)
                .execute(&mut *tx)
                .await?;
                let events = sqlx::query("DELETE FROM roster_events WHERE external_user_id = $1")
                    .bind(person)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                let present =
                    sqlx::query("DELETE FROM roster_attendees WHERE external_user_id = $1")
                        .bind(person)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                tx.commit().await?;
                Ok(Erased { events, present })
            }
        }
    };
}

/// The retention queries compiled for Postgres, beside the backend's helpers they use (here,
/// not in the backend files, so that the backends never name this module).
mod on_postgres {
    use crate::store::postgres::{Database, begin_write, ts};
    retention_queries!();
}

/// The retention queries compiled for SQLite.
mod on_sqlite {
    use crate::store::sqlite::{Database, begin_write, ts};
    retention_queries!();
}
