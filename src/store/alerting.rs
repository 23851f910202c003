//! The store's side of alerting: reading events after a cursor (with their meeting's label),
//! the webhook sinks' durable delivery cursors, and Postgres `LISTEN` for freshly committed
//! events. The `NOTIFY` itself is sent by `store/postgres.rs` inside the transaction that
//! inserts the events, so listeners hear only of committed events.
//!
//! Like the rest of the store, the SQL is written once (`alerting_queries!`) and compiled for
//! each backend. Nothing here writes `roster_events`: consumers only read after a cursor.

use chrono::{DateTime, Utc};
use sqlx::postgres::PgListener;

use super::{Db, Result, Store, StoreError, StoredEvent};
use crate::domain::{Capabilities, MeetingId};
use crate::event_json::EventJson;

/// The Postgres channel that hears of every commit that recorded events. The payload is a
/// [`NotifyPayload`]; listeners read the rows themselves (a payload is limited to 8000 bytes,
/// and a listener may have missed some).
pub const EVENTS_CHANNEL: &str = "roster_events";

/// An event with the label of its meeting, as `events` prints it and webhooks deliver it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabeledEvent {
    pub event: StoredEvent,
    /// `tracked_meetings.label` as it is now (labels can change after the event).
    pub meeting_label: Option<String>,
}

/// Runs `backend::alerting::$function(pool, args…)` on whichever backend `$store` talks to.
macro_rules! on_backend {
    ($store:expr, $function:ident($($arg:expr),* $(,)?)) => {
        match &$store.db {
            Db::Postgres(pool) => on_postgres::alerting::$function(pool, $($arg),*).await,
            Db::Sqlite(db) => on_sqlite::alerting::$function(&db.pool, $($arg),*).await,
        }
    };
}

/// Wakes an event consumer when events commit: a Postgres `LISTEN` on [`EVENTS_CHANNEL`].
pub struct EventWakeups {
    listener: PgListener,
}

impl EventWakeups {
    /// Waits for the next notification. After a lost connection the listener reconnects and
    /// listens again by itself, but notifications sent meanwhile are lost: a consumer reads
    /// after its cursor on every wakeup, and also on a timer, so it misses nothing.
    ///
    /// # Errors
    /// [`StoreError::Sqlx`] when the connection fails (the next call reconnects).
    pub async fn next(&mut self) -> Result<String> {
        let notification = self.listener.recv().await?;
        Ok(notification.payload().to_owned())
    }
}

/// One process's turn to deliver a webhook sink's next batch ([`Store::claim_webhook_cursor`]):
/// the cursor as it was when claimed, and the claim's token, which every move of the cursor
/// must present. The claim is a row value, not a lock: no transaction stays open while the
/// batch is posted, and a claim nobody renews lapses at `claim_expires_at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CursorClaim {
    cursor: i64,
    token: i64,
}

impl CursorClaim {
    /// The sink's durable cursor, read when the claim was taken.
    pub fn cursor(&self) -> i64 {
        self.cursor
    }
}

impl Store {
    /// Claims (or renews) sink `name`'s cursor for `holder` until `ttl` from now, by the
    /// database's clock on Postgres (`now()`; SQLite has no server, its clock is this
    /// process's). `None` when another holder's claim has not expired yet, or when the cursor
    /// does not exist yet ([`Store::webhook_cursor`] creates it).
    ///
    /// The claim is taken in one autocommitted statement and holds no connection afterwards.
    /// Every claim gets a new token, so a holder whose claim lapsed and was taken over cannot
    /// move the cursor any more ([`Store::advance_claimed_cursor`]).
    ///
    /// # Errors
    /// [`StoreError::Sqlx`] when the database fails.
    pub async fn claim_webhook_cursor(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<CursorClaim>> {
        let row: Option<(i64, i64)> = match &self.db {
            Db::Postgres(pool) => {
                sqlx::query_as(
                    "UPDATE webhook_cursors \
                     SET claimed_by = $2, claim_token = claim_token + 1, \
                         claim_expires_at = now() + make_interval(secs => $3) \
                     WHERE name = $1 \
                       AND (claimed_by IS NULL OR claimed_by = $2 OR claim_expires_at <= now()) \
                     RETURNING last_event_id, claim_token",
                )
                .bind(name)
                .bind(holder)
                .bind(ttl.as_secs_f64())
                .fetch_optional(pool)
                .await?
            }
            Db::Sqlite(db) => {
                let now = crate::domain::now();
                let expires = chrono::TimeDelta::from_std(ttl)
                    .ok()
                    .and_then(|ttl| now.checked_add_signed(ttl))
                    .ok_or_else(|| {
                        StoreError::InvalidRecord(format!("claim ttl {ttl:?} is out of range"))
                    })?;
                sqlx::query_as(
                    "UPDATE webhook_cursors \
                     SET claimed_by = $2, claim_token = claim_token + 1, claim_expires_at = $3 \
                     WHERE name = $1 \
                       AND (claimed_by IS NULL OR claimed_by = $2 OR claim_expires_at <= $4) \
                     RETURNING last_event_id, claim_token",
                )
                .bind(name)
                .bind(holder)
                .bind(super::sqlite::ts(expires))
                .bind(super::sqlite::ts(now))
                .fetch_optional(&db.pool)
                .await?
            }
        };
        Ok(row.map(|(cursor, token)| CursorClaim { cursor, token }))
    }

    /// A store on the same database for the webhook sinks, so they never take a connection
    /// the scheduler needs: on Postgres a pool of its own of at most `max_connections`
    /// (opened lazily, same connection settings), sharing this store's [`Store::committed`]
    /// wakeups and its writer lock's permit, so the sinks pause while the daemon has lost the
    /// lock (never close it: it would release the shared lock; the daemon closes its own). On
    /// SQLite, a clone: its one writing process serialises writes anyway, and the sinks'
    /// statements are short.
    pub fn with_own_pool(&self, max_connections: u32) -> Store {
        match &self.db {
            Db::Postgres(pool) => Store {
                db: Db::Postgres(
                    sqlx::postgres::PgPoolOptions::new()
                        .max_connections(max_connections.max(1))
                        .connect_lazy_with((*pool.connect_options()).clone()),
                ),
                pg_writer: self.pg_writer.clone(),
                committed: self.committed.clone(),
            },
            Db::Sqlite(_) => self.clone(),
        }
    }

    /// Sink `name`'s cursor as last committed, without claiming it (`None` before it
    /// exists); never waits for a claim.
    ///
    /// # Errors
    /// [`StoreError::Sqlx`] when the database fails.
    pub async fn peek_webhook_cursor(&self, name: &str) -> Result<Option<i64>> {
        on_backend!(self, peek_webhook_cursor(name))
    }

    /// Moves a claimed cursor to `last_event_id` (never back) and clears its last error, if
    /// the claim is still the latest one taken: `false` (nothing changed) when another holder
    /// has claimed the sink since, so a holder that was paused past its claim never moves the
    /// cursor the new holder owns. A claim that lapsed without being taken over still counts:
    /// nobody else delivered meanwhile.
    ///
    /// # Errors
    /// [`StoreError::Sqlx`] when the database fails; the cursor stays where it was.
    pub async fn advance_claimed_cursor(
        &self,
        claim: CursorClaim,
        name: &str,
        last_event_id: i64,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        on_backend!(
            self,
            advance_claimed_cursor(name, claim.token, last_event_id, now)
        )
    }

    /// Gives up `holder`'s claim on sink `name` (a clean stop), so another process takes the
    /// sink over at once instead of when the claim expires. Nothing happens if the claim is
    /// someone else's by now.
    ///
    /// # Errors
    /// [`StoreError::Sqlx`] when the database fails.
    pub async fn release_webhook_claim(&self, name: &str, holder: &str) -> Result<()> {
        on_backend!(self, release_webhook_claim(name, holder))
    }

    /// At most `limit` events with `event_id > after_event_id` (of one meeting, if given), in
    /// `event_id` order, each with its meeting's label.
    ///
    /// # Errors
    /// [`StoreError::Sqlx`] when the database fails; [`StoreError::Corrupt`] for a bad row.
    pub async fn labeled_events_after(
        &self,
        after_event_id: i64,
        meeting: Option<&MeetingId>,
        limit: i64,
    ) -> Result<Vec<LabeledEvent>> {
        let meeting = meeting.map(MeetingId::as_str);
        on_backend!(
            self,
            labeled_events_after(after_event_id, meeting, limit.max(0))
        )
    }

    /// The highest `event_id` recorded, 0 when there is none.
    ///
    /// # Errors
    /// [`StoreError::Sqlx`] when the database fails.
    pub async fn last_event_id(&self) -> Result<i64> {
        on_backend!(self, last_event_id())
    }

    /// The delivery cursor of the webhook sink `name`. A sink seen for the first time starts
    /// at the newest event recorded then: it receives what happens from then on, not the
    /// whole history (which may be months of events, and a receiver set up for alerts should
    /// not be flooded with them; `events --since` replays history, and a cursor row inserted
    /// before the first start, e.g. at 0, makes a sink deliver it). The daemon creates the
    /// cursors of its sinks when it starts, before its first poll
    /// ([`crate::sinks::spawn_webhooks`]), so "then" is before any event it records.
    ///
    /// # Errors
    /// [`StoreError::Sqlx`] when the database fails.
    pub async fn webhook_cursor(&self, name: &str, now: DateTime<Utc>) -> Result<i64> {
        on_backend!(self, webhook_cursor(name, now))
    }

    /// Moves the cursor of sink `name` forward to `last_event_id` and clears its last error.
    /// A cursor never moves back: a smaller value leaves it as it is.
    ///
    /// # Errors
    /// [`StoreError::Sqlx`] when the database fails.
    pub async fn advance_webhook_cursor(
        &self,
        name: &str,
        last_event_id: i64,
        now: DateTime<Utc>,
    ) -> Result<()> {
        on_backend!(self, advance_webhook_cursor(name, last_event_id, now))
    }

    /// Notes a failed delivery attempt of sink `name` (the cursor stays where it is).
    ///
    /// # Errors
    /// [`StoreError::Sqlx`] when the database fails.
    pub async fn record_webhook_failure(
        &self,
        name: &str,
        error: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let error = super::truncate_at_char_boundary(error, super::MAX_ERROR_LEN);
        on_backend!(self, record_webhook_failure(name, error, now))
    }

    /// A `LISTEN` on [`EVENTS_CHANNEL`] on Postgres, on a connection of its own outside the
    /// store's pool; `None` on SQLite, whose consumers poll.
    ///
    /// # Errors
    /// [`StoreError::Sqlx`] when the listening connection cannot be opened.
    pub async fn event_wakeups(&self) -> Result<Option<EventWakeups>> {
        match &self.db {
            Db::Postgres(pool) => {
                // A pool of one connection of its own: a LISTEN holds its connection for as
                // long as it listens, which must never be one the scheduler needs.
                let own = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(1)
                    .connect_lazy_with((*pool.connect_options()).clone());
                let mut listener = PgListener::connect_with(&own).await?;
                listener.listen(EVENTS_CHANNEL).await?;
                Ok(Some(EventWakeups { listener }))
            }
            Db::Sqlite(_) => Ok(None),
        }
    }
}

/// A stored event in its wire form ([`crate::event_json`]), with its meeting's label.
impl From<&LabeledEvent> for EventJson {
    fn from(e: &LabeledEvent) -> Self {
        let event = &e.event;
        let split = |c: Option<Capabilities>| match c {
            Some(c) => [
                Some(c.audio.as_str()),
                Some(c.video.as_str()),
                Some(c.content.as_str()),
            ],
            None => [None; 3],
        };
        let [audio, video, content] = split(event.after);
        let [previous_audio, previous_video, previous_content] = split(event.before);
        let p = event.presence.as_ref();
        Self {
            event_id: event.event_id,
            meeting_id: event.meeting_id.as_str().to_owned(),
            meeting_label: e.meeting_label.clone(),
            attendee_id: event.attendee_id.as_str().to_owned(),
            external_user_id: event.external_user_id.as_str().to_owned(),
            kind: event.kind,
            reason: event
                .reason
                .map(|r| r.as_str())
                .or_else(|| p.and_then(|p| p.reason).map(|r| r.as_str())),
            audio,
            video,
            content,
            previous_audio,
            previous_video,
            previous_content,
            observed_at: event.observed_at,
            previous_poll_at: event.previous_poll_at,
            occurred_at: p.map(|p| p.occurred_at),
            source: p.map(|p| p.source.as_str()),
            inferred: p.map(|p| p.inferred.is_some()),
            inferred_from: p.and_then(|p| p.inferred).map(|w| w.from),
            inferred_to: p.and_then(|p| p.inferred).map(|w| w.to),
            network_type: p.and_then(|p| p.network_type.clone()),
        }
    }
}

macro_rules! alerting_queries {
    () => {
        /// The alerting queries (see `store/alerting.rs`).
        pub(in crate::store) mod alerting {
            use chrono::{DateTime, Utc};
            use sqlx::Row as _;

            use super::queries::events_from_rows;
            use super::ts;
            use crate::store::Result;
            use crate::store::alerting::LabeledEvent;

            type Pool = sqlx::Pool<super::Database>;

            pub(in crate::store) async fn labeled_events_after(
                pool: &Pool,
                after_event_id: i64,
                meeting: Option<&str>,
                limit: i64,
            ) -> Result<Vec<LabeledEvent>> {
                let rows = sqlx::query(
                    "SELECT e.event_id, e.meeting_id, e.attendee_id, e.external_user_id, \
                            e.kind, e.audio, e.video, e.content, e.previous_audio, \
                            e.previous_video, e.previous_content, e.reason, e.observed_at, \
                            e.previous_poll_at, m.label AS meeting_label \
                     FROM roster_events AS e \
                     JOIN tracked_meetings AS m ON m.meeting_id = e.meeting_id \
                     WHERE e.event_id > $1 AND ($2 IS NULL OR e.meeting_id = $2) \
                     ORDER BY e.event_id LIMIT $3",
                )
                .bind(after_event_id)
                .bind(meeting)
                .bind(limit)
                .fetch_all(pool)
                .await?;
                let events = events_from_rows(&rows)?;
                let mut labels = std::collections::HashMap::with_capacity(rows.len());
                for row in &rows {
                    let id: i64 = row.try_get("event_id")?;
                    let label: Option<String> = row.try_get("meeting_label")?;
                    labels.insert(id, label);
                }
                Ok(events
                    .into_iter()
                    .map(|event| LabeledEvent {
                        meeting_label: labels.remove(&event.event_id).flatten(),
                        event,
                    })
                    .collect())
            }

            pub(in crate::store) async fn last_event_id(pool: &Pool) -> Result<i64> {
                Ok(
                    sqlx::query_scalar("SELECT COALESCE(MAX(event_id), 0) FROM roster_events")
                        .fetch_one(pool)
                        .await?,
                )
            }

            /// `WHERE true` keeps SQLite from reading `ON CONFLICT` as a join constraint of
            /// the `SELECT`.
            pub(in crate::store) async fn webhook_cursor(
                pool: &Pool,
                name: &str,
                now: DateTime<Utc>,
            ) -> Result<i64> {
                sqlx::query(
                    "INSERT INTO webhook_cursors (name, last_event_id, created_at, updated_at) \
                     SELECT $1, COALESCE(MAX(event_id), 0), $2, $2 FROM roster_events \
                     WHERE true \
                     ON CONFLICT (name) DO NOTHING",
                )
                .bind(name)
                .bind(ts(now))
                .execute(pool)
                .await?;
                Ok(
                    sqlx::query_scalar("SELECT last_event_id FROM webhook_cursors WHERE name = $1")
                        .bind(name)
                        .fetch_one(pool)
                        .await?,
                )
            }

            pub(in crate::store) async fn peek_webhook_cursor(
                pool: &Pool,
                name: &str,
            ) -> Result<Option<i64>> {
                Ok(
                    sqlx::query_scalar("SELECT last_event_id FROM webhook_cursors WHERE name = $1")
                        .bind(name)
                        .fetch_optional(pool)
                        .await?,
                )
            }

            pub(in crate::store) async fn advance_webhook_cursor(
                pool: &Pool,
                name: &str,
                last_event_id: i64,
                now: DateTime<Utc>,
            ) -> Result<()> {
                sqlx::query(
                    "UPDATE webhook_cursors \
                     SET last_event_id = CASE WHEN last_event_id < $2 THEN $2 \
                                              ELSE last_event_id END, \
                         updated_at = $3, last_error = NULL, last_error_at = NULL \
                     WHERE name = $1",
                )
                .bind(name)
                .bind(last_event_id)
                .bind(ts(now))
                .execute(pool)
                .await?;
                Ok(())
            }

            pub(in crate::store) async fn advance_claimed_cursor(
                pool: &Pool,
                name: &str,
                token: i64,
                last_event_id: i64,
                now: DateTime<Utc>,
            ) -> Result<bool> {
                let moved = sqlx::query(
                    "UPDATE webhook_cursors \
                     SET last_event_id = CASE WHEN last_event_id < $3 THEN $3 \
                                              ELSE last_event_id END, \
                         updated_at = $4, last_error = NULL, last_error_at = NULL \
                     WHERE name = $1 AND claim_token = $2",
                )
                .bind(name)
                .bind(token)
                .bind(last_event_id)
                .bind(ts(now))
                .execute(pool)
                .await?;
                Ok(moved.rows_affected() == 1)
            }

            pub(in crate::store) async fn release_webhook_claim(
                pool: &Pool,
                name: &str,
                holder: &str,
            ) -> Result<()> {
                sqlx::query(
                    "UPDATE webhook_cursors SET claimed_by = NULL, claim_expires_at = NULL \
                     WHERE name = $1 AND claimed_by = $2",
                )
                .bind(name)
                .bind(holder)
                .execute(pool)
                .await?;
                Ok(())
            }

            pub(in crate::store) async fn record_webhook_failure(
                pool: &Pool,
                name: &str,
                error: &str,
                now: DateTime<Utc>,
            ) -> Result<()> {
                sqlx::query(
                    "UPDATE webhook_cursors SET last_error = $2, last_error_at = $3 \
                     WHERE name = $1",
                )
                .bind(name)
                .bind(error)
                .bind(ts(now))
                .execute(pool)
                .await?;
                Ok(())
            }
        }
    };
}

/// The alerting queries compiled for Postgres, beside the backend's helpers they use. They are
/// instantiated here rather than in the backend files so that the backends never name this
/// module (which names them to dispatch).
mod on_postgres {
    use crate::store::postgres::{Database, queries, ts};
    alerting_queries!();
}

/// The alerting queries compiled for SQLite.
mod on_sqlite {
    use crate::store::sqlite::{Database, queries, ts};
    alerting_queries!();
}
