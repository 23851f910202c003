//! Replicas and meeting leases for cluster mode (`cluster.enabled`, Postgres only): the SQL
//! behind `crate::cluster`.
//!
//! Every replica upserts its row of `cluster_replicas` with each heartbeat and renews the
//! leases it holds in `meeting_leases`; a lease is valid while `expires_at` is in the future.
//! Free leases (never granted, released, or expired because their owner stopped renewing) are
//! claimed with `FOR UPDATE SKIP LOCKED`, each grant taking a new fencing token from the
//! `meeting_lease_tokens` sequence, until the replica holds about its share of the pages of
//! all active meetings; a replica holding more than its share releases the surplus.
//!
//! The fence itself is in the writes of a poll (`apply`, `record_unchanged_polls`,
//! `end_meeting`): their `UPDATE` of `tracked_meetings` also requires the lease row with the
//! poll's token to be unexpired, and locks it `FOR SHARE` until commit, so a lease cannot be
//! taken over while a write under it is committing. Time is always the database's `now()`,
//! never a replica's clock. Leases of meetings that ended or stopped are not renewed: any
//! replica's heartbeat deletes them.
//!
//! [`Store::clock_offset`] measures how far the database's clock is from this host's, so
//! that the timestamps a replica records (`crate::clock`) are the database's too.
//!
//! Nothing here runs on SQLite: cluster mode is refused there ([`StoreError::Unsupported`]).

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::Row as _;
use sqlx::postgres::PgPool;

use super::{Db, Result, Store, StoreError, decode};
use crate::domain::{MeetingId, Region};

/// The fencing token of one lease grant. Tokens only grow: a replica that polled under an
/// older grant of the same meeting cannot write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LeaseToken(pub i64);

/// A replica's id (a UUID, as text), new for every process.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct ReplicaId(String);

impl ReplicaId {
    /// A fresh random id.
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a replica says about itself in `cluster_replicas`.
#[derive(Clone, Debug)]
pub struct ReplicaInfo {
    pub id: ReplicaId,
    pub host: String,
    pub pid: u32,
    pub version: String,
}

/// What one heartbeat saw and did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterView {
    /// Replicas whose heartbeat is younger than the lease TTL, this one included.
    pub live_replicas: i64,
    /// Leases this replica holds after the heartbeat, and their pages.
    pub held: i64,
    pub held_pages: i64,
    /// Pages of every active meeting.
    pub total_pages: i64,
    /// Leases taken and given away by this heartbeat.
    pub claimed: usize,
    pub released: usize,
    /// Leases of meetings no longer active (ended or stopped) that this heartbeat dropped.
    pub retired: u64,
    /// For each region where this replica holds a lease: how many live replicas hold leases
    /// there (this one included).
    pub region_holders: Vec<(Region, i64)>,
    /// For each region where this replica holds a lease: its share of the region's rate
    /// budget, its pages there over the pages all live replicas hold there.
    pub region_shares: Vec<(Region, f64)>,
}

/// A meeting this replica holds the lease of.
#[derive(Clone, Debug, PartialEq)]
pub struct LeasedMeeting {
    pub meeting_id: MeetingId,
    pub region: Region,
    /// The fence every write of a poll under this lease carries.
    pub token: LeaseToken,
    /// The meeting's last recorded poll, by whichever replica: a meeting taken over is due one
    /// interval after it, not one interval after the takeover.
    pub last_polled_at: Option<DateTime<Utc>>,
}

/// One row of `roster-sync cluster`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReplicaRow {
    pub replica_id: ReplicaId,
    pub host: String,
    pub pid: i32,
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    /// Seconds since the last heartbeat, by the database's clock.
    pub heartbeat_age_seconds: f64,
    /// Valid leases held, and their pages.
    pub meetings: i64,
    pub pages: i64,
    /// For each region where it holds leases: its share of the region's rate budget (its
    /// pages there over the pages all live replicas hold there).
    pub rate_share: Vec<(Region, f64)>,
}

/// What [`Store::clock_offset`] measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockOffset {
    /// Database clock minus host clock.
    pub offset: TimeDelta,
    /// The round trip of the reading; the offset is right to within half of it.
    pub round_trip: TimeDelta,
}

/// Round trips per clock reading; the shortest one is kept.
const CLOCK_SAMPLES: usize = 3;

/// Free leases looked at per heartbeat, at most.
const CLAIM_CANDIDATES: i64 = 1_000;

impl Store {
    fn cluster_pool(&self) -> Result<&PgPool> {
        match &self.db {
            Db::Postgres(pool) => Ok(pool),
            Db::Sqlite(_) => Err(StoreError::Unsupported(
                "cluster mode (cluster.enabled) needs Postgres; SQLite holds no leases",
            )),
        }
    }

    /// One heartbeat of replica `me`, in one transaction: its row is upserted, rows of
    /// replicas silent for longer than `ttl` are deleted, its valid leases are renewed for
    /// `ttl` (and their page counts refreshed, at `page_size` attendees a page), then it claims
    /// free leases while it holds less than its share of all pages (the total over the live
    /// replicas, rounded up) or releases leases while it holds more than that without them.
    ///
    /// # Errors
    /// [`StoreError::Unsupported`] on SQLite; [`StoreError::Sqlx`] when the database fails
    /// (nothing changes then).
    pub async fn heartbeat(
        &self,
        me: &ReplicaInfo,
        ttl: Duration,
        page_size: u32,
    ) -> Result<ClusterView> {
        let pool = self.cluster_pool()?;
        let ttl = ttl.as_secs_f64();
        let me_id = me.id.as_str();
        let mut tx = pool.begin().await?;
        sqlx::query(
            "INSERT INTO cluster_replicas (replica_id, host, pid, version) \
             VALUES ($1::uuid, $2, $3, $4) \
             ON CONFLICT (replica_id) DO UPDATE SET heartbeat_at = now()",
        )
        .bind(me_id)
        .bind(&me.host)
        .bind(i32::try_from(me.pid).unwrap_or(i32::MAX))
        .bind(&me.version)
        .execute(&mut *tx)
        .await?;
        // A replica frozen inside its own heartbeat holds its row locked until the server ends
        // its session (`idle_in_transaction_session_timeout`, see `postgres::connect`); its row
        // is skipped rather than waited for, so the live replicas' heartbeats go on meanwhile.
        sqlx::query(
            "DELETE FROM cluster_replicas WHERE replica_id IN ( \
                 SELECT replica_id FROM cluster_replicas \
                 WHERE heartbeat_at < now() - make_interval(secs => $1) \
                 FOR UPDATE SKIP LOCKED)",
        )
        .bind(ttl)
        .execute(&mut *tx)
        .await?;
        // Only meetings with no lease row yet: an insert that meets an existing row another
        // transaction has locked (a frozen replica's renewal) would wait for that transaction.
        sqlx::query(
            "INSERT INTO meeting_leases (meeting_id) \
             SELECT m.meeting_id FROM tracked_meetings AS m \
             WHERE m.status = 'active' \
               AND NOT EXISTS (SELECT 1 FROM meeting_leases AS l \
                               WHERE l.meeting_id = m.meeting_id) \
             ON CONFLICT (meeting_id) DO NOTHING",
        )
        .execute(&mut *tx)
        .await?;
        // The heartbeat never waits for a lease row another transaction holds: a poll
        // committing under its lease holds the row `FOR SHARE` (see the lease fence), and the
        // batched bookkeeping of unchanged polls holds many, in no set order. Waiting for them
        // while holding the rows already renewed is a deadlock. A lease skipped here is
        // renewed at the next heartbeat, well inside its TTL.
        // Only leases of active meetings are renewed; those of meetings that ended or stopped
        // are dropped below.
        let renewed = sqlx::query(
            "UPDATE meeting_leases AS l \
             SET expires_at = now() + make_interval(secs => $2), \
                 pages = GREATEST(1, CEIL((SELECT count(*) FROM roster_attendees AS a \
                                           WHERE a.meeting_id = l.meeting_id)::float8 / $3))::int \
             FROM (SELECT ml.meeting_id FROM meeting_leases AS ml \
                   JOIN tracked_meetings AS m USING (meeting_id) \
                   WHERE ml.owner = $1::uuid AND ml.expires_at > now() AND m.status = 'active' \
                   FOR NO KEY UPDATE OF ml SKIP LOCKED) AS mine \
             WHERE l.meeting_id = mine.meeting_id",
        )
        .bind(me_id)
        .bind(ttl)
        .bind(f64::from(page_size.max(1)))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // A meeting that ended or stopped is never polled again: its lease goes, whoever held
        // it (a lease is made again if the meeting is tracked again). Rows a committing write
        // holds are skipped, as above, and dropped at a later heartbeat.
        let retired = sqlx::query(
            "DELETE FROM meeting_leases WHERE meeting_id IN ( \
                 SELECT l.meeting_id FROM meeting_leases AS l \
                 JOIN tracked_meetings AS m USING (meeting_id) \
                 WHERE m.status <> 'active' \
                 FOR UPDATE OF l SKIP LOCKED)",
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();

        let row = sqlx::query(
            "SELECT (SELECT count(*) FROM cluster_replicas \
                     WHERE heartbeat_at > now() - make_interval(secs => $2)) AS live, \
                    COALESCE(sum(l.pages), 0)::int8 AS total_pages, \
                    COALESCE(sum(l.pages) FILTER (WHERE l.owner = $1::uuid \
                                                    AND l.expires_at > now()), 0)::int8 AS mine \
             FROM meeting_leases AS l JOIN tracked_meetings AS m USING (meeting_id) \
             WHERE m.status = 'active'",
        )
        .bind(me_id)
        .bind(ttl)
        .fetch_one(&mut *tx)
        .await?;
        let live: i64 = row.try_get("live")?;
        let total_pages: i64 = row.try_get("total_pages")?;
        let mut mine: i64 = row.try_get("mine")?;
        let live_or_one = live.max(1);
        let target = (total_pages + live_or_one - 1) / live_or_one;

        let mut claimed = Vec::new();
        if mine < target {
            let candidates = sqlx::query(
                "SELECT l.meeting_id, l.pages FROM meeting_leases AS l \
                 JOIN tracked_meetings AS m USING (meeting_id) \
                 WHERE m.status = 'active' AND l.expires_at <= now() \
                 ORDER BY l.pages DESC, l.meeting_id \
                 LIMIT $1 \
                 FOR UPDATE OF l SKIP LOCKED",
            )
            .bind(CLAIM_CANDIDATES)
            .fetch_all(&mut *tx)
            .await?;
            for c in &candidates {
                if mine >= target {
                    break;
                }
                let pages: i32 = c.try_get("pages")?;
                claimed.push(c.try_get::<String, _>("meeting_id")?);
                mine += i64::from(pages);
            }
            if !claimed.is_empty() {
                sqlx::query(
                    "UPDATE meeting_leases \
                     SET owner = $1::uuid, expires_at = now() + make_interval(secs => $2), \
                         token = nextval('meeting_lease_tokens') \
                     WHERE meeting_id = ANY($3)",
                )
                .bind(me_id)
                .bind(ttl)
                .bind(&claimed)
                .execute(&mut *tx)
                .await?;
            }
        }
        let mut released = Vec::new();
        if mine > target {
            let held = sqlx::query(
                "SELECT l.meeting_id, l.pages FROM meeting_leases AS l \
                 JOIN tracked_meetings AS m USING (meeting_id) \
                 WHERE m.status = 'active' AND l.owner = $1::uuid AND l.expires_at > now() \
                 ORDER BY l.pages, l.meeting_id \
                 FOR NO KEY UPDATE OF l SKIP LOCKED",
            )
            .bind(me_id)
            .fetch_all(&mut *tx)
            .await?;
            for h in &held {
                let pages = i64::from(h.try_get::<i32, _>("pages")?);
                if mine - pages < target {
                    continue;
                }
                released.push(h.try_get::<String, _>("meeting_id")?);
                mine -= pages;
            }
            if !released.is_empty() {
                sqlx::query(
                    "UPDATE meeting_leases SET owner = NULL, expires_at = '-infinity' \
                     WHERE meeting_id = ANY($1) AND owner = $2::uuid",
                )
                .bind(&released)
                .bind(me_id)
                .execute(&mut *tx)
                .await?;
            }
        }

        let held: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM meeting_leases AS l JOIN tracked_meetings AS m USING (meeting_id) \
             WHERE m.status = 'active' AND l.owner = $1::uuid AND l.expires_at > now()",
        )
        .bind(me_id)
        .fetch_one(&mut *tx)
        .await?;
        let holdings = region_holdings(&mut tx, ttl).await?;
        let region_holders = holdings
            .iter()
            .filter(|(_, holders)| holders.iter().any(|h| h.owner == me_id))
            .map(|(region, holders)| (region.clone(), holders.len() as i64))
            .collect();
        let region_shares = shares_of(me_id, &holdings);
        if renewed > 0 {
            // Test-only: ROSTER_SYNC_FAULT=stop_in_heartbeat stops the process here once.
            crate::fault::inject(crate::fault::Fault::StopInHeartbeat);
        }
        tx.commit().await?;
        Ok(ClusterView {
            live_replicas: live,
            held,
            held_pages: mine,
            total_pages,
            claimed: claimed.len(),
            released: released.len(),
            retired,
            region_holders,
            region_shares,
        })
    }

    /// How far the database's clock is ahead of this process's host clock
    /// ([`crate::clock::local`]): the database's `clock_timestamp()` minus the midpoint of the
    /// round trip that read it, the best of [`CLOCK_SAMPLES`] round trips on one connection (the
    /// shortest, whose midpoint is the closest). Also returns that round trip: the reading is
    /// right to within half of it.
    ///
    /// # Errors
    /// [`StoreError::Unsupported`] on SQLite; [`StoreError::Sqlx`] when the database fails.
    pub async fn clock_offset(&self) -> Result<ClockOffset> {
        let pool = self.cluster_pool()?;
        let mut conn = pool.acquire().await?;
        let mut best: Option<ClockOffset> = None;
        for _ in 0..CLOCK_SAMPLES {
            let sent = crate::clock::local();
            let database: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
                .fetch_one(&mut *conn)
                .await?;
            let answered = crate::clock::local();
            let round_trip = (answered - sent).max(TimeDelta::zero());
            let midpoint = sent + round_trip / 2;
            let sample = ClockOffset {
                offset: database - midpoint,
                round_trip,
            };
            if best.is_none_or(|b| sample.round_trip < b.round_trip) {
                best = Some(sample);
            }
        }
        best.ok_or(StoreError::Unsupported("no clock sample was taken"))
    }

    /// Gives up every lease of replica `me` and deletes its row, so other replicas take its
    /// meetings over at their next heartbeat instead of after the lease TTL.
    ///
    /// # Errors
    /// [`StoreError::Unsupported`] on SQLite; [`StoreError::Sqlx`] when the database fails.
    pub async fn leave_cluster(&self, me: &ReplicaId) -> Result<u64> {
        let pool = self.cluster_pool()?;
        let mut tx = pool.begin().await?;
        let released = sqlx::query(
            "UPDATE meeting_leases SET owner = NULL, expires_at = '-infinity' \
             WHERE owner = $1::uuid",
        )
        .bind(me.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query("DELETE FROM cluster_replicas WHERE replica_id = $1::uuid")
            .bind(me.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(released)
    }

    /// The active meetings whose lease replica `me` holds now, with their regions, tokens and
    /// last polls: what it polls, the fence each poll carries, and when each is due.
    ///
    /// # Errors
    /// [`StoreError::Unsupported`] on SQLite; [`StoreError::Sqlx`] when the database fails;
    /// [`StoreError::Corrupt`] for a bad row.
    pub async fn leased_meetings(&self, me: &ReplicaId) -> Result<Vec<LeasedMeeting>> {
        let pool = self.cluster_pool()?;
        let rows = sqlx::query(
            "SELECT m.meeting_id, m.region, m.last_polled_at, l.token \
             FROM meeting_leases AS l JOIN tracked_meetings AS m USING (meeting_id) \
             WHERE m.status = 'active' AND l.owner = $1::uuid AND l.expires_at > now() \
             ORDER BY m.added_at, m.meeting_id",
        )
        .bind(me.as_str())
        .fetch_all(pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(LeasedMeeting {
                    meeting_id: decode::meeting_id(&row.try_get::<String, _>("meeting_id")?)?,
                    region: decode::region(&row.try_get::<String, _>("region")?)?,
                    token: LeaseToken(row.try_get("token")?),
                    last_polled_at: row.try_get("last_polled_at")?,
                })
            })
            .collect()
    }

    /// The owner of every meeting whose lease is valid now. Empty on SQLite (no leases).
    ///
    /// # Errors
    /// [`StoreError::Sqlx`] when the database fails; [`StoreError::Corrupt`] for a bad row.
    pub async fn meeting_owners(&self) -> Result<HashMap<MeetingId, ReplicaId>> {
        let Ok(pool) = self.cluster_pool() else {
            return Ok(HashMap::new());
        };
        let rows = sqlx::query(
            "SELECT meeting_id, owner::text AS owner FROM meeting_leases \
             WHERE owner IS NOT NULL AND expires_at > now()",
        )
        .fetch_all(pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    decode::meeting_id(&row.try_get::<String, _>("meeting_id")?)?,
                    ReplicaId(row.try_get("owner")?),
                ))
            })
            .collect()
    }

    /// Every replica with a row (live or not yet cleaned up), oldest first, with what it
    /// holds. `ttl` is the lease TTL: a replica's share counts only live holders.
    ///
    /// # Errors
    /// [`StoreError::Unsupported`] on SQLite; [`StoreError::Sqlx`] when the database fails.
    pub async fn replicas(&self, ttl: Duration) -> Result<Vec<ReplicaRow>> {
        let pool = self.cluster_pool()?;
        let mut conn = pool.acquire().await?;
        let rows = sqlx::query(
            "SELECT r.replica_id::text AS replica_id, r.host, r.pid, r.version, r.started_at, \
                    r.heartbeat_at, \
                    EXTRACT(EPOCH FROM now() - r.heartbeat_at)::float8 AS age, \
                    count(m.meeting_id) AS meetings, COALESCE(sum(l.pages) FILTER \
                        (WHERE m.meeting_id IS NOT NULL), 0)::int8 AS pages \
             FROM cluster_replicas AS r \
             LEFT JOIN meeting_leases AS l ON l.owner = r.replica_id AND l.expires_at > now() \
             LEFT JOIN tracked_meetings AS m \
                    ON m.meeting_id = l.meeting_id AND m.status = 'active' \
             GROUP BY r.replica_id \
             ORDER BY r.started_at, r.replica_id",
        )
        .fetch_all(&mut *conn)
        .await?;
        let holdings = region_holdings(&mut conn, ttl.as_secs_f64()).await?;
        rows.iter()
            .map(|row| {
                let replica_id: String = row.try_get("replica_id")?;
                let rate_share = shares_of(&replica_id, &holdings);
                Ok(ReplicaRow {
                    replica_id: ReplicaId(replica_id),
                    host: row.try_get("host")?,
                    pid: row.try_get("pid")?,
                    version: row.try_get("version")?,
                    started_at: row.try_get("started_at")?,
                    heartbeat_at: row.try_get("heartbeat_at")?,
                    heartbeat_age_seconds: row.try_get("age")?,
                    meetings: row.try_get("meetings")?,
                    pages: row.try_get("pages")?,
                    rate_share,
                })
            })
            .collect()
    }

    /// Counts in `roster_sync_lease_lost_total` the tokens among `tokens` whose lease no
    /// longer holds (expired or granted again): the fenced writes they refused. Best effort:
    /// a failure to check is logged, not returned.
    pub(super) async fn count_lost_leases(&self, tokens: &[LeaseToken]) {
        let lost = match &self.db {
            Db::Sqlite(_) => Ok(tokens.len() as i64),
            Db::Postgres(pool) => {
                let tokens: Vec<i64> = tokens.iter().map(|t| t.0).collect();
                sqlx::query_scalar(
                    "SELECT count(*) FROM UNNEST($1::int8[]) AS t (token) \
                     WHERE NOT EXISTS (SELECT 1 FROM meeting_leases AS l \
                                       WHERE l.token = t.token AND l.expires_at > now())",
                )
                .bind(tokens)
                .fetch_one(pool)
                .await
            }
        };
        match lost {
            Ok(0) => {}
            Ok(n) => {
                tracing::warn!(
                    polls = n,
                    "lease lost: another replica owns these meetings now; their poll results are dropped"
                );
                metrics::counter!("roster_sync_lease_lost_total").increment(n.unsigned_abs());
            }
            Err(e) => tracing::warn!(error = %e, "cannot check lost leases"),
        }
    }
}

/// The pages of valid leases that one live replica holds in one region.
struct Holding {
    owner: String,
    pages: i64,
}

/// For every region with valid leases held by live replicas: those replicas and their pages
/// there, in owner order.
async fn region_holdings(
    conn: &mut sqlx::PgConnection,
    ttl: f64,
) -> Result<Vec<(Region, Vec<Holding>)>> {
    let rows = sqlx::query(
        "SELECT m.region, l.owner::text AS owner, sum(l.pages)::int8 AS pages \
         FROM meeting_leases AS l \
         JOIN tracked_meetings AS m USING (meeting_id) \
         JOIN cluster_replicas AS r ON r.replica_id = l.owner \
         WHERE m.status = 'active' AND l.expires_at > now() \
           AND r.heartbeat_at > now() - make_interval(secs => $1) \
         GROUP BY m.region, l.owner ORDER BY m.region, owner",
    )
    .bind(ttl)
    .fetch_all(conn)
    .await?;
    let mut regions: Vec<(Region, Vec<Holding>)> = Vec::new();
    for row in &rows {
        let region = decode::region(&row.try_get::<String, _>("region")?)?;
        let holding = Holding {
            owner: row.try_get("owner")?,
            pages: row.try_get("pages")?,
        };
        match regions.last_mut() {
            Some((r, holdings)) if *r == region => holdings.push(holding),
            _ => regions.push((region, vec![holding])),
        }
    }
    Ok(regions)
}

/// `owner`'s share of each region's rate budget where it holds leases: its pages there over
/// the pages every live replica holds there. A replica polls about its pages per sweep, so
/// with shares in proportion to pages every replica sweeps its meetings in the same time,
/// the time one process would take for all of them, however unevenly the leases fall; and a
/// replica that holds nothing in a region counts for nothing there, so what it used is shared
/// by the replicas that do.
fn shares_of(owner: &str, holdings: &[(Region, Vec<Holding>)]) -> Vec<(Region, f64)> {
    holdings
        .iter()
        .filter_map(|(region, holders)| {
            let mine = holders.iter().find(|h| h.owner == owner)?.pages;
            let total: i64 = holders.iter().map(|h| h.pages).sum();
            Some((region.clone(), mine as f64 / total.max(1) as f64))
        })
        .collect()
}
