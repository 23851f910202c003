//! What capacity runs (`roster-bench`) need from the database besides the daemon's own
//! queries: a scratch Postgres database per run, and counts of the rows written to the
//! snapshot and event tables, which show that unchanged polls write none.
//!
//! Read-only apart from creating and dropping the scratch database. It must never be used
//! on a database that holds real data: the scratch database is created by name, here, and
//! dropped only by that name.

use sqlx::{AssertSqlSafe, Connection as _, PgConnection};

use super::{Db, Result, Store, StoreError, redact_url};

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

/// Creates the empty database `name` on the server of `admin_url` (a `postgres://` URL of a
/// role allowed to create databases) and returns the URL of the new database.
///
/// # Errors
/// [`StoreError::UnsupportedUrl`] for a URL that is not `postgres://…`; [`StoreError::InvalidRecord`]
/// for a name that is not `[a-z0-9_]+`; [`StoreError::Connect`] / [`StoreError::Sqlx`] when
/// the server cannot be reached or refuses.
pub async fn create_scratch_database(admin_url: &str, name: &str) -> Result<String> {
    check_name(name)?;
    let mut conn = admin(admin_url).await?;
    // A checked identifier: lower-case letters, digits and underscores only.
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(with_database(admin_url, name))
}

/// Drops the database `name` made by [`create_scratch_database`], closing its connections.
///
/// # Errors
/// As [`create_scratch_database`].
pub async fn drop_scratch_database(admin_url: &str, name: &str) -> Result<()> {
    check_name(name)?;
    let mut conn = admin(admin_url).await?;
    sqlx::query(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await?;
    conn.close().await?;
    Ok(())
}

async fn admin(admin_url: &str) -> Result<PgConnection> {
    if !(admin_url.starts_with("postgres://") || admin_url.starts_with("postgresql://")) {
        return Err(StoreError::UnsupportedUrl(redact_url(admin_url)));
    }
    PgConnection::connect(admin_url)
        .await
        .map_err(|source| StoreError::Connect {
            url: redact_url(admin_url),
            source,
        })
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidRecord(format!(
            "{name:?} is not a scratch database name ([a-z0-9_]+)"
        )))
    }
}

/// `url` with its database (the path) replaced by `name`, query string kept.
fn with_database(url: &str, name: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let (base, query) = match url.find('?') {
        Some(q) => (&url[..q], &url[q..]),
        None => (url, ""),
    };
    let authority_end = base[after_scheme..]
        .find('/')
        .map_or(base.len(), |i| after_scheme + i);
    format!("{}/{name}{query}", &base[..authority_end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_of_a_url_is_replaced_and_the_query_kept() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "b_1"),
            "postgres://postgres@127.0.0.1:5432/b_1"
        );
        assert_eq!(
            with_database("postgres://u:p@db/x?sslmode=require", "b"),
            "postgres://u:p@db/b?sslmode=require"
        );
        assert_eq!(with_database("postgres://db", "b"), "postgres://db/b");
    }

    #[test]
    fn only_plain_names_are_accepted() {
        assert!(check_name("roster_bench_01").is_ok());
        assert!(check_name("x; DROP").is_err());
        assert!(check_name("").is_err());
    }
}
