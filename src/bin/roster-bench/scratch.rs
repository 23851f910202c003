//! The run's own database: a fresh SQLite file in a temporary directory, or a scratch Postgres
//! database created on the server of `--database-url` and dropped afterwards.
//!
//! Creating and dropping databases belongs here, not in the production store: it must never
//! touch a database it did not create, so it drops only the name it generated.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use sqlx::{AssertSqlSafe, Connection as _, PgConnection};

use roster_sync::redact::redact_url;
use roster_sync::store::{Backend, Store};

/// The database of one run.
pub struct BenchDb {
    pub url: String,
    pub backend: Backend,
    /// SQLite: the directory to delete. Postgres: the admin URL and database name to drop.
    cleanup: Cleanup,
}

enum Cleanup {
    Directory(PathBuf),
    Postgres { admin_url: String, name: String },
}

impl BenchDb {
    pub async fn create(args: &crate::args::BenchArgs) -> anyhow::Result<Self> {
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let tag = &tag[..12];
        match &args.database_url {
            Some(admin_url) => {
                let name = format!("roster_bench_{tag}");
                let url = create_database(admin_url, &name).await.with_context(|| {
                    format!(
                        "creating the scratch database {name} on {}",
                        redact_url(admin_url)
                    )
                })?;
                Ok(Self {
                    url,
                    backend: Backend::Postgres,
                    cleanup: Cleanup::Postgres {
                        admin_url: admin_url.clone(),
                        name,
                    },
                })
            }
            None => {
                let dir = std::env::temp_dir().join(format!("roster-bench-{tag}"));
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                Ok(Self {
                    url: format!("sqlite://{}", dir.join("roster.db").display()),
                    backend: Backend::Sqlite,
                    cleanup: Cleanup::Directory(dir),
                })
            }
        }
    }

    /// Snapshot and event rows written beyond what `events` account for (see
    /// [`crate::capacity::Report::unchanged_poll_writes`]). Call after the daemon's store is
    /// closed, so the server has every connection's statistics.
    pub async fn unchanged_poll_writes(&self, events: u64) -> anyhow::Result<i64> {
        let events = i64::try_from(events).unwrap_or(i64::MAX);
        if self.backend == Backend::Postgres {
            // Statistics of closed connections arrive within a moment.
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        let store = Store::connect(&self.url, 1).await?;
        let counts = store.write_counts().await?;
        store.close().await;
        Ok(match counts.row_writes {
            // Each event is one insert into roster_events and one insert, update or delete
            // of roster_attendees.
            Some(writes) => writes - 2 * events,
            // Events rows beyond the events delivered.
            None => counts.event_rows - events,
        })
    }

    /// Deletes the database, unless `keep`.
    pub async fn finish(self, keep: bool) {
        match self.cleanup {
            Cleanup::Directory(dir) if !keep => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Cleanup::Postgres { admin_url, name } if !keep => {
                if let Err(e) = drop_database(&admin_url, &name).await {
                    println!("could not drop the scratch database {name}: {e:#}");
                }
            }
            Cleanup::Directory(dir) => println!("kept {}", dir.display()),
            Cleanup::Postgres { name, .. } => println!("kept database {name}"),
        }
    }
}

/// Creates the empty database `name` on the server of `admin_url` (a role allowed to create
/// databases) and returns the new database's URL.
async fn create_database(admin_url: &str, name: &str) -> anyhow::Result<String> {
    check_name(name)?;
    let mut conn = admin(admin_url).await?;
    // A checked identifier: lower-case letters, digits and underscores only.
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(with_database(admin_url, name))
}

/// Drops the database `name` made by [`create_database`], closing its connections.
async fn drop_database(admin_url: &str, name: &str) -> anyhow::Result<()> {
    check_name(name)?;
    let mut conn = admin(admin_url).await?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await?;
    conn.close().await?;
    Ok(())
}

async fn admin(admin_url: &str) -> anyhow::Result<PgConnection> {
    if !(admin_url.starts_with("postgres://") || admin_url.starts_with("postgresql://")) {
        anyhow::bail!(
            "--database-url {} is not a postgres:// URL",
            redact_url(admin_url)
        );
    }
    PgConnection::connect(admin_url)
        .await
        .with_context(|| format!("cannot connect to {}", redact_url(admin_url)))
}

fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    anyhow::ensure!(ok, "{name:?} is not a scratch database name ([a-z0-9_]+)");
    Ok(())
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
