//! The SQL behind the meeting-events intake (`crate::meeting_events`): the envelope ids already
//! handled, the meetings discovery tracks, and the hints that reach the replica holding a
//! meeting's lease (`hinted_at` and a `NOTIFY` on [`HINTS_CHANNEL`], Postgres only).
//!
//! Nothing here records a roster event: meeting events decide when a meeting is polled, never
//! what is recorded.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::Row as _;
use sqlx::postgres::PgListener;

use super::{Db, MeetingStatus, Result, Store, decode, sqlite};
use crate::domain::{AttendeeId, MeetingId, Region};

/// The Postgres channel on which a hint names its meeting, for the replica holding its lease.
pub const HINTS_CHANNEL: &str = "roster_hints";

/// `tracked_meetings.added_by` of a meeting tracked by discovery.
pub const ADDED_BY_EVENTS: &str = "meeting_events";

/// What [`Store::track_discovered`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discovered {
    /// The meeting is tracked now, by this call.
    Tracked,
    /// The meeting already had a row (active, ended or stopped): left as it is, so discovery
    /// never revives a meeting an operator stopped or the service ended.
    Known(MeetingStatus),
}

/// Hints from other replicas: a `LISTEN` on [`HINTS_CHANNEL`].
pub struct HintWakeups {
    listener: PgListener,
}

impl HintWakeups {
    /// The next hinted meeting. A payload that is not a meeting id is skipped.
    ///
    /// # Errors
    /// [`super::StoreError::Sqlx`] when the listening connection fails (sqlx reconnects on the
    /// next call; hints sent meanwhile are lost, and the scheduled polls cover them).
    pub async fn next(&mut self) -> Result<MeetingId> {
        loop {
            let n = self.listener.recv().await?;
            if let Ok(id) = MeetingId::parse(n.payload()) {
                return Ok(id);
            }
        }
    }
}

impl Store {
    /// Whether a meeting event with this envelope id was handled already.
    ///
    /// # Errors
    /// [`super::StoreError::Sqlx`] when the database fails.
    pub async fn meeting_event_seen(&self, event_id: &str) -> Result<bool> {
        let sql = "SELECT count(*) FROM meeting_event_ids WHERE event_id = $1";
        let n: i64 = match &self.db {
            Db::Postgres(pool) => {
                sqlx::query_scalar(sql)
                    .bind(event_id)
                    .fetch_one(pool)
                    .await?
            }
            Db::Sqlite(db) => {
                sqlx::query_scalar(sql)
                    .bind(event_id)
                    .fetch_one(&db.pool)
                    .await?
            }
        };
        Ok(n > 0)
    }

    /// Records that the meeting event `event_id` was handled (its effect committed), so a
    /// redelivery is recognised. Idempotent.
    ///
    /// # Errors
    /// [`super::StoreError::Sqlx`] when the database fails.
    pub async fn note_meeting_event(&self, event_id: &str, now: DateTime<Utc>) -> Result<()> {
        let sql = "INSERT INTO meeting_event_ids (event_id, seen_at) VALUES ($1, $2) \
                   ON CONFLICT (event_id) DO NOTHING";
        match &self.db {
            Db::Postgres(pool) => {
                sqlx::query(sql)
                    .bind(event_id)
                    .bind(now)
                    .execute(pool)
                    .await?;
            }
            Db::Sqlite(db) => {
                sqlx::query(sql)
                    .bind(event_id)
                    .bind(sqlite::ts(now))
                    .execute(&db.pool)
                    .await?;
            }
        }
        Ok(())
    }

    /// Deletes the handled envelope ids seen before `cutoff`; returns how many.
    ///
    /// # Errors
    /// [`super::StoreError::Sqlx`] when the database fails.
    pub async fn forget_meeting_events_before(&self, cutoff: DateTime<Utc>) -> Result<u64> {
        let sql = "DELETE FROM meeting_event_ids WHERE seen_at < $1";
        let done = match &self.db {
            Db::Postgres(pool) => sqlx::query(sql)
                .bind(cutoff)
                .execute(pool)
                .await?
                .rows_affected(),
            Db::Sqlite(db) => sqlx::query(sql)
                .bind(sqlite::ts(cutoff))
                .execute(&db.pool)
                .await?
                .rows_affected(),
        };
        Ok(done)
    }

    /// The status of a tracked meeting, `None` when it has no row.
    ///
    /// # Errors
    /// [`super::StoreError::Sqlx`] when the database fails; `Corrupt` for a bad row.
    pub async fn meeting_status(&self, id: &MeetingId) -> Result<Option<MeetingStatus>> {
        let sql = "SELECT status FROM tracked_meetings WHERE meeting_id = $1";
        let status: Option<String> = match &self.db {
            Db::Postgres(pool) => {
                sqlx::query_scalar(sql)
                    .bind(id.as_str())
                    .fetch_optional(pool)
                    .await?
            }
            Db::Sqlite(db) => {
                sqlx::query_scalar(sql)
                    .bind(id.as_str())
                    .fetch_optional(&db.pool)
                    .await?
            }
        };
        status
            .map(|s| decode::parse::<MeetingStatus>("status", &s))
            .transpose()
    }

    /// Whether the attendee is in the meeting's current snapshot.
    ///
    /// # Errors
    /// [`super::StoreError::Sqlx`] when the database fails.
    pub async fn attendee_in_snapshot(
        &self,
        meeting: &MeetingId,
        attendee: &AttendeeId,
    ) -> Result<bool> {
        let sql =
            "SELECT count(*) FROM roster_attendees WHERE meeting_id = $1 AND attendee_id = $2";
        let n: i64 = match &self.db {
            Db::Postgres(pool) => {
                sqlx::query_scalar(sql)
                    .bind(meeting.as_str())
                    .bind(attendee.as_str())
                    .fetch_one(pool)
                    .await?
            }
            Db::Sqlite(db) => {
                sqlx::query_scalar(sql)
                    .bind(meeting.as_str())
                    .bind(attendee.as_str())
                    .fetch_one(&db.pool)
                    .await?
            }
        };
        Ok(n > 0)
    }

    /// Discovery: tracks the meeting (status `active`, `added_by = 'meeting_events'`) unless
    /// it has a row already, whatever its status. Idempotent across replicas: of several
    /// concurrent calls one inserts, the others find the row.
    ///
    /// # Errors
    /// [`super::StoreError::Sqlx`] when the database fails.
    pub async fn track_discovered(
        &self,
        id: &MeetingId,
        region: &Region,
        label: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Discovered> {
        let sql = "INSERT INTO tracked_meetings (meeting_id, region, label, status, added_at, added_by) \
                   VALUES ($1, $2, $3, 'active', $4, $5) ON CONFLICT (meeting_id) DO NOTHING";
        let inserted = match &self.db {
            Db::Postgres(pool) => sqlx::query(sql)
                .bind(id.as_str())
                .bind(region.as_str())
                .bind(label)
                .bind(now)
                .bind(ADDED_BY_EVENTS)
                .execute(pool)
                .await?
                .rows_affected(),
            Db::Sqlite(db) => sqlx::query(sql)
                .bind(id.as_str())
                .bind(region.as_str())
                .bind(label)
                .bind(sqlite::ts(now))
                .bind(ADDED_BY_EVENTS)
                .execute(&db.pool)
                .await?
                .rows_affected(),
        };
        if inserted == 1 {
            return Ok(Discovered::Tracked);
        }
        let status = self.meeting_status(id).await?;
        Ok(Discovered::Known(status.unwrap_or(MeetingStatus::Active)))
    }

    /// Who added each meeting that was not added by an operator or the configuration
    /// (`tracked_meetings.added_by`), for `meetings list`.
    ///
    /// # Errors
    /// [`super::StoreError::Sqlx`] when the database fails; `Corrupt` for a bad row.
    pub async fn meeting_sources(&self) -> Result<HashMap<MeetingId, String>> {
        let sql = "SELECT meeting_id, added_by FROM tracked_meetings WHERE added_by IS NOT NULL";
        let rows: Vec<(String, String)> = match &self.db {
            Db::Postgres(pool) => sqlx::query(sql)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect::<Result<_, sqlx::Error>>()?,
            Db::Sqlite(db) => sqlx::query(sql)
                .fetch_all(&db.pool)
                .await?
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                .collect::<Result<_, sqlx::Error>>()?,
        };
        rows.into_iter()
            .map(|(id, by)| Ok((decode::meeting_id(&id)?, by)))
            .collect()
    }

    /// Records a hint for the meeting (`hinted_at`) and, on Postgres, announces it on
    /// [`HINTS_CHANNEL`] in the same transaction, so the replica holding the meeting's lease
    /// hears it once it is committed.
    ///
    /// # Errors
    /// [`super::StoreError::Sqlx`] when the database fails.
    pub async fn hint_meeting(&self, id: &MeetingId, now: DateTime<Utc>) -> Result<()> {
        let sql = "UPDATE tracked_meetings SET hinted_at = $2 WHERE meeting_id = $1";
        match &self.db {
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query(sql)
                    .bind(id.as_str())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(HINTS_CHANNEL)
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            }
            Db::Sqlite(db) => {
                sqlx::query(sql)
                    .bind(id.as_str())
                    .bind(sqlite::ts(now))
                    .execute(&db.pool)
                    .await?;
            }
        }
        Ok(())
    }

    /// A `LISTEN` on [`HINTS_CHANNEL`] on Postgres; `None` on SQLite (one process only).
    ///
    /// # Errors
    /// [`super::StoreError::Sqlx`] when the listening connection cannot be opened.
    pub async fn hint_wakeups(&self) -> Result<Option<HintWakeups>> {
        match &self.db {
            Db::Postgres(pool) => {
                let mut listener = PgListener::connect_with(pool).await?;
                listener.listen(HINTS_CHANNEL).await?;
                Ok(Some(HintWakeups { listener }))
            }
            Db::Sqlite(_) => Ok(None),
        }
    }
}
