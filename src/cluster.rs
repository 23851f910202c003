//! Cluster mode (`cluster.enabled`): several `run` replicas on one Postgres database.
//!
//! Each replica registers in `cluster_replicas` and runs a heartbeat every
//! `cluster.heartbeat`: it renews the leases it holds, claims free ones (never granted,
//! released, or expired because their owner died) until it holds about its share of all
//! meetings' pages, and releases the surplus when replicas join (the SQL is in
//! `store/leases.rs`). After each heartbeat it sets its share of every region's rate budget
//! to its pages there over the pages all live replicas hold there, so the fleet stays inside
//! the account's quota and every replica sweeps its meetings in the same time, however the
//! leases fell. A region it no longer holds counts for nothing in the others' shares, so they
//! take its part back at their next heartbeat.
//!
//! Before each heartbeat it reads the database's clock and makes it the process's
//! ([`crate::clock`]): every timestamp a replica records is compared by the others (the
//! `last_polled_at` of one is the `previous_poll_at` of the next owner's poll), so all of
//! them come from one clock, whatever the hosts' clocks say.
//!
//! The scheduler polls only the meetings this replica holds (`Scheduler::with_cluster`), and
//! every write of a poll is fenced by the lease token it was launched with: a replica that
//! lost a lease (paused past the TTL, cut off from the database) writes nothing for it. On
//! shutdown, after the scheduler drained, [`Cluster::leave`] releases every lease so the
//! others take over at their next heartbeat.
//!
//! It never polls, never decides when a meeting is due, and writes only through the store's
//! lease methods.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::chime::ChimeClient;
use crate::config::Settings;
use crate::store::{ClusterView, ReplicaId, ReplicaInfo, Store};

/// This replica's membership: the heartbeat task and what it needs to leave.
pub struct Cluster {
    info: ReplicaInfo,
    store: Store,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// A change of the clock offset between two heartbeats that is worth a warning: the host's
/// clock was stepped (NTP, a VM resumed), not the jitter of a round trip.
const CLOCK_STEP_LOGGED: chrono::TimeDelta = chrono::TimeDelta::seconds(1);

/// What the heartbeat needs, shared by [`Cluster::join`] and its task.
#[derive(Clone)]
struct Beat {
    info: ReplicaInfo,
    store: Store,
    client: Arc<ChimeClient>,
    ttl: Duration,
    page_size: u32,
}

impl Cluster {
    /// Registers this process as a replica, runs its first heartbeat (so it holds its share
    /// of meetings before the scheduler's first read) and starts the heartbeat task.
    ///
    /// # Errors
    /// The store is not Postgres, or the first heartbeat fails.
    pub async fn join(
        settings: &Settings,
        store: Store,
        client: Arc<ChimeClient>,
    ) -> anyhow::Result<Cluster> {
        let info = ReplicaInfo {
            id: ReplicaId::random(),
            host: crate::store::hostname(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        let beat = Beat {
            info: info.clone(),
            store: store.clone(),
            client,
            ttl: settings.cluster.lease_ttl,
            page_size: u32::try_from(settings.poll.max_results).unwrap_or(100),
        };
        let view = beat.tick(true).await?;
        tracing::info!(
            replica_id = %info.id,
            live_replicas = view.live_replicas,
            leases = view.held,
            "joined the cluster"
        );
        let stop = CancellationToken::new();
        let task = tokio::spawn(heartbeats(beat, settings.cluster.heartbeat, stop.clone()));
        Ok(Cluster {
            info,
            store,
            stop,
            task,
        })
    }

    pub fn replica_id(&self) -> &ReplicaId {
        &self.info.id
    }

    /// Stops the heartbeat and releases every lease this replica holds. Call after the
    /// scheduler has drained, so no poll of this replica is still writing.
    pub async fn leave(self) {
        self.stop.cancel();
        let _ = self.task.await;
        match self.store.leave_cluster(&self.info.id).await {
            Ok(released) => {
                tracing::info!(replica_id = %self.info.id, released, "left the cluster; leases released");
            }
            Err(e) => {
                tracing::warn!(replica_id = %self.info.id, error = %e, "cannot release leases; they expire after cluster.lease_ttl");
            }
        }
        metrics::gauge!("roster_sync_leases_held").set(0.0);
    }
}

impl Beat {
    /// Reads the database's clock and makes it this process's ([`crate::clock`]), so every
    /// timestamp this replica records is comparable with every other replica's. Logged at
    /// `first` (joining), and whenever the host clock moved against the database's by more
    /// than [`CLOCK_STEP_LOGGED`] since the last heartbeat.
    async fn sync_clock(&self, first: bool) -> crate::store::Result<()> {
        let reading = self.store.clock_offset().await?;
        let before = crate::clock::correction();
        crate::clock::set_correction(reading.offset);
        let offset_ms = reading.offset.num_milliseconds();
        let round_trip_ms = reading.round_trip.num_microseconds().unwrap_or(i64::MAX) as f64 / 1e3;
        if first {
            tracing::info!(
                offset_ms,
                round_trip_ms,
                "timestamps follow the database's clock (offset from this host's clock)"
            );
        } else if (reading.offset - before).abs() > CLOCK_STEP_LOGGED {
            tracing::warn!(
                offset_ms,
                previous_offset_ms = before.num_milliseconds(),
                round_trip_ms,
                "this host's clock moved against the database's; timestamps follow the database's"
            );
        }
        Ok(())
    }

    /// One heartbeat (after reading the database's clock), then the rate shares and gauges it
    /// implies.
    async fn tick(&self, first: bool) -> crate::store::Result<ClusterView> {
        self.sync_clock(first).await?;
        let view = self
            .store
            .heartbeat(&self.info, self.ttl, self.page_size)
            .await?;
        for (region, share) in &view.region_shares {
            self.client.set_share(region, *share);
        }
        metrics::gauge!("roster_sync_leases_held").set(view.held as f64);
        metrics::gauge!("roster_sync_replicas_live").set(view.live_replicas as f64);
        if view.claimed > 0 || view.released > 0 || view.retired > 0 {
            tracing::info!(
                claimed = view.claimed,
                released = view.released,
                retired = view.retired,
                leases = view.held,
                pages = view.held_pages,
                total_pages = view.total_pages,
                live_replicas = view.live_replicas,
                "leases rebalanced"
            );
        }
        Ok(view)
    }
}

/// Runs a heartbeat every `every` until `stop` fires. A failed heartbeat is logged and
/// retried at the next one; leases it could not renew expire on their own.
async fn heartbeats(beat: Beat, every: Duration, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if let Err(e) = beat.tick(false).await {
            crate::telemetry::database_error("cluster");
            tracing::warn!(error = %e, "cluster heartbeat failed; leases not renewed expire after cluster.lease_ttl");
        }
    }
}
