//! Reads of presence for reports: the `presence_sessions` rows of every meeting of a label.
//!
//! The same SQL runs on both backends; only the pool differs.

use chrono::{DateTime, Utc};
use sqlx::Row as _;

use super::{Db, Result, Store, decode};
use crate::domain::{AttendeeId, ExternalUserId, MeetingId};

/// One row of the `presence_sessions` view, as the label report reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct PresenceSessionRow {
    pub meeting_id: MeetingId,
    pub attendee_id: AttendeeId,
    pub external_user_id: ExternalUserId,
    pub connected_at: DateTime<Utc>,
    /// `None` while the session is open.
    pub disconnected_at: Option<DateTime<Utc>>,
}

const LABEL_PRESENCE_SQL: &str = "\
    SELECT p.meeting_id, p.attendee_id, p.external_user_id, p.connected_at, p.disconnected_at \
    FROM presence_sessions AS p \
    JOIN tracked_meetings AS m ON m.meeting_id = p.meeting_id \
    WHERE m.label = $1 \
    ORDER BY p.connected_at, p.meeting_id, p.attendee_id";

impl Store {
    /// The `presence_sessions` rows of every meeting labelled `label`, ordered by
    /// `connected_at`, meeting id, then attendee id. Empty when none of them has presence.
    ///
    /// # Errors
    /// [`StoreError::Sqlx`](super::StoreError::Sqlx) when the database fails;
    /// [`StoreError::Corrupt`](super::StoreError::Corrupt) for a bad row.
    pub async fn label_presence_sessions(&self, label: &str) -> Result<Vec<PresenceSessionRow>> {
        macro_rules! read {
            ($pool:expr) => {{
                let rows = sqlx::query(LABEL_PRESENCE_SQL)
                    .bind(label)
                    .fetch_all($pool)
                    .await?;
                rows.iter()
                    .map(|row| {
                        let get_text = |column: &'static str| -> Result<String> {
                            row.try_get(column)
                                .map_err(|e| decode::column_error(column, e))
                        };
                        Ok(PresenceSessionRow {
                            meeting_id: decode::meeting_id(&get_text("meeting_id")?)?,
                            attendee_id: decode::attendee_id(&get_text("attendee_id")?)?,
                            external_user_id: ExternalUserId::new(get_text("external_user_id")?),
                            connected_at: row
                                .try_get("connected_at")
                                .map_err(|e| decode::column_error("connected_at", e))?,
                            disconnected_at: row
                                .try_get("disconnected_at")
                                .map_err(|e| decode::column_error("disconnected_at", e))?,
                        })
                    })
                    .collect()
            }};
        }
        match &self.db {
            Db::Postgres(pool) => read!(pool),
            Db::Sqlite(db) => read!(&db.pool),
        }
    }
}
