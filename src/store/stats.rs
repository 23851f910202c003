//! Statistics of the snapshot and event tables: how many rows they hold and, on Postgres, how
//! many rows were written to them. With these, tests and `roster-bench` show that unchanged
//! polls write no snapshot or event row.
//!
//! Read-only: it must never write, and never create or drop a database (helpers outside the
//! library do that for tests and benchmarks).

use super::{Db, Result, Store};

/// Rows of the snapshot and event tables, and (Postgres) how many rows were written to them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteCounts {
    /// Rows in `roster_events`.
    pub event_rows: i64,
    /// Rows in `roster_attendees`.
    pub snapshot_rows: i64,
    /// Postgres only: inserted + updated + deleted rows of both tables since the statistics
    /// were reset, from `pg_stat_user_tables` (rolled-back writes included). Statistics of
    /// a connection arrive when it commits at most once a second, or closes: read this after
    /// [`Store::close`].
    pub row_writes: Option<i64>,
}

impl Store {
    /// Counts rows of `roster_events` and `roster_attendees` and, on Postgres, the row
    /// writes the server counted for them.
    ///
    /// # Errors
    /// [`StoreError::Sqlx`] when the database fails.
    pub async fn write_counts(&self) -> Result<WriteCounts> {
        const ROWS: &str = "SELECT (SELECT count(*) FROM roster_events), \
                                   (SELECT count(*) FROM roster_attendees)";
        match &self.db {
            Db::Postgres(pool) => {
                let (event_rows, snapshot_rows): (i64, i64) =
                    sqlx::query_as(ROWS).fetch_one(pool).await?;
                let row_writes: i64 = sqlx::query_scalar(
                    "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::bigint \
                     FROM pg_stat_user_tables \
                     WHERE relname IN ('roster_events', 'roster_attendees')",
                )
                .fetch_one(pool)
                .await?;
                Ok(WriteCounts {
                    event_rows,
                    snapshot_rows,
                    row_writes: Some(row_writes),
                })
            }
            Db::Sqlite(db) => {
                let (event_rows, snapshot_rows): (i64, i64) =
                    sqlx::query_as(ROWS).fetch_one(&db.pool).await?;
                Ok(WriteCounts {
                    event_rows,
                    snapshot_rows,
                    row_writes: None,
                })
            }
        }
    }
}
