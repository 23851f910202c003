//! The one place the daemon is assembled: `run`, `demo`, `roster-bench` and the in-process
//! tests all start it through [`Daemon::build`], so they cannot drift apart.
//!
//! Building starts the operations endpoint first when `http.listen` is set (so probes answer
//! while the rest starts), connects to the database when no store is given (waiting for an
//! unreachable one, see `database.startup_timeout`), takes the writer lock (or, with
//! `cluster.enabled`, joins the cluster of replicas instead, see [`crate::cluster`]), applies
//! migrations when `database.migrate_on_start` says so, adds the configured `[[meetings]]`,
//! arms the test-only fault hook ([`crate::fault`]), starts the webhook sinks and spawns the
//! scheduler. What the daemon can do is recorded in its [`Health`] as it happens. What
//! differs between callers is passed in, never re-implemented: the roster client (the AWS
//! credential chain, or one pointed at a simulator), an event sink, a poll observer.
//!
//! It must never parse arguments or print to stdout (that is the commands' job), and never
//! decide when to stop: the caller's [`CancellationToken`] does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::chime::ChimeClient;
use crate::config::Settings;
use crate::health::Health;
use crate::http::Ops;
use crate::redact::redact_url;
use crate::scheduler::{PollReport, Scheduler, SchedulerOptions};
use crate::store::{AddOutcome, Store, StoredEvent};

/// How often the metrics recorder's upkeep (histogram maintenance) runs.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Called with every finished poll, on the scheduler's task: quick work only.
pub type PollObserver = Box<dyn Fn(&PollReport<'_>) + Send + Sync>;

/// What a caller adds to the daemon the configuration describes. The default is what
/// `roster-sync run` uses.
#[derive(Default)]
pub struct DaemonOptions {
    /// The roster client to poll with. `None`: one built from the configuration with the
    /// standard AWS credential chain. The demo, the benchmark and the tests pass a client
    /// pointed at the simulator (placeholder credentials).
    pub client: Option<Arc<ChimeClient>>,
    /// Every recorded event is also sent here, after its commit (the demo's live output).
    pub events: Option<broadcast::Sender<StoredEvent>>,
    /// Sees every finished poll (the benchmark's sweep tracking).
    pub poll_observer: Option<PollObserver>,
}

/// A running daemon. It stops when the token given to [`Daemon::build`] is cancelled;
/// [`Daemon::wait`] returns once it has drained.
pub struct Daemon {
    cancel: CancellationToken,
    client: Arc<ChimeClient>,
    http_addr: Option<SocketAddr>,
    task: JoinHandle<()>,
}

impl Daemon {
    /// Starts the daemon as `settings` describe, on `store` or (`None`) on the configured
    /// database, stopping when `cancel` fires.
    ///
    /// # Errors
    /// `http.listen` cannot be bound, the database stays unreachable past
    /// `database.startup_timeout` (or refuses us), another process holds the writer lock,
    /// migrations or a configured meeting cannot be written, `ROSTER_SYNC_FAULT` names no
    /// known fault, or a webhook cannot be started.
    pub async fn build(
        settings: &Settings,
        store: Option<Store>,
        cancel: CancellationToken,
        options: DaemonOptions,
    ) -> anyhow::Result<Daemon> {
        let health = Health::new(settings.http.stall_after);
        let ops = Ops::install(health.clone());
        let http = if settings.http.listen.is_empty() {
            None
        } else {
            let addr: SocketAddr = settings.http.listen.parse().context("http.listen")?;
            Some(
                crate::http::serve(addr, ops.clone(), cancel.clone())
                    .await
                    .with_context(|| format!("cannot listen on {addr} (http.listen)"))?,
            )
        };
        let http_addr = http.as_ref().map(|(addr, _)| *addr);

        let store = match store {
            Some(store) => store,
            None => {
                health.waiting_for_db();
                let url = settings.database_url();
                Store::connect_patiently(
                    &url,
                    settings.database.max_connections,
                    settings.database.startup_timeout,
                    &cancel,
                    |e, wait| tracing::warn!(error = %e, retry_in = ?wait, "waiting for the database"),
                )
                .await
                .with_context(|| format!("cannot open database {}", redact_url(&url)))?
            }
        };
        health.db_answered();
        // Cluster mode: replicas share the database through leases instead of one writer.
        if !settings.cluster.enabled {
            store.acquire_writer_lock().await?;
        }
        if settings.database.migrate_on_start {
            store.migrate().await.context("applying migrations")?;
        }
        health.set_migrated();
        add_configured_meetings(settings, &store).await?;
        if let Some(fault) = crate::fault::arm_from_env()? {
            tracing::warn!(fault = fault.as_str(), "test-only fault injection is armed");
        }
        let sinks = tokio_util::task::TaskTracker::new();
        crate::sinks::spawn_webhooks(settings, store.clone(), cancel.clone(), &sinks)?;
        sinks.close();

        let client = match options.client {
            Some(client) => client,
            None => Arc::new(ChimeClient::from_settings(settings).await),
        };
        let cluster = if settings.cluster.enabled {
            Some(
                crate::cluster::Cluster::join(settings, store.clone(), Arc::clone(&client))
                    .await
                    .context("joining the cluster (cluster.enabled)")?,
            )
        } else {
            None
        };
        let mut scheduler = Scheduler::new(
            Arc::clone(&client),
            store,
            SchedulerOptions::from_settings(settings),
        )
        .with_health(health.clone());
        if let Some(cluster) = &cluster {
            scheduler = scheduler.with_cluster(cluster.replica_id().clone());
        }
        if let Some(tx) = options.events {
            scheduler = scheduler.with_event_sink(tx);
        }
        if let Some(observer) = options.poll_observer {
            scheduler = scheduler.with_poll_observer(move |r: &PollReport<'_>| observer(r));
        }

        tracing::info!(
            database = %redact_url(&settings.database_url()),
            interval = ?settings.poll.interval,
            rate = settings.rate.requests_per_second,
            "roster-sync running"
        );
        let task = {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                let upkeep = tokio::spawn(upkeep(ops.clone(), cancel.clone()));
                scheduler.run(cancel.clone()).await;
                // After the drain: no poll of ours is writing, so the leases can go.
                if let Some(cluster) = cluster {
                    cluster.leave().await;
                }
                health.set_stopping();
                // The scheduler stops only when cancelled; this also covers a future early
                // return, so the endpoint and the upkeep never outlive it.
                cancel.cancel();
                let _ = upkeep.await;
                sinks.wait().await;
                if let Some((_, served)) = http {
                    let _ = served.await;
                }
                tracing::info!("roster-sync stopped");
            })
        };
        Ok(Daemon {
            cancel,
            client,
            http_addr,
            task,
        })
    }

    /// The address the operations endpoint listens on, when `http.listen` is set (a port of
    /// 0 there is resolved here).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The roster client the daemon polls with (its counters and rate budgets).
    pub fn client(&self) -> &Arc<ChimeClient> {
        &self.client
    }

    /// The token that stops the daemon.
    pub fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Waits until the daemon has stopped: the token was cancelled, in-flight polls drained
    /// (up to `shutdown.grace`) and pending bookkeeping written.
    ///
    /// # Errors
    /// The daemon's task panicked.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("the daemon task failed")
    }

    /// Cancels the token and waits as [`Daemon::wait`].
    ///
    /// # Errors
    /// As [`Daemon::wait`].
    pub async fn stop(self) -> anyhow::Result<()> {
        self.cancel.cancel();
        self.wait().await
    }
}

/// `[[meetings]]` from the configuration are added on every start (idempotent).
async fn add_configured_meetings(settings: &Settings, store: &Store) -> anyhow::Result<()> {
    for m in &settings.meetings {
        let region = m.region.as_ref().unwrap_or(&settings.chime.region);
        let add = |force| {
            store.add_meeting(
                &m.id,
                region,
                m.label.as_deref(),
                crate::domain::now(),
                force,
            )
        };
        let mut outcome = add(false)
            .await
            .with_context(|| format!("adding configured meeting {}", m.id))?;
        if let AddOutcome::RegionDiffers { .. } = outcome {
            // The configuration says where the meeting lives: it wins over an earlier
            // `meetings add`. Only a region move is forced here, never a revival.
            outcome = add(true)
                .await
                .with_context(|| format!("moving configured meeting {}", m.id))?;
        }
        match outcome {
            AddOutcome::AlreadyEnded => {
                tracing::warn!(meeting_id = %m.id, "configured meeting has ended; it is not polled (`meetings add --force` tracks it again)");
            }
            AddOutcome::Moved { from } => {
                tracing::info!(meeting_id = %m.id, %from, to = %region, "configured meeting moved to the region the configuration names");
            }
            _ => {}
        }
    }
    Ok(())
}

/// Runs the metrics recorder's upkeep until `cancel` fires.
async fn upkeep(ops: Ops, cancel: CancellationToken) {
    let mut every = tokio::time::interval(UPKEEP_EVERY);
    while tokio::select! { _ = cancel.cancelled() => false, _ = every.tick() => true } {
        ops.upkeep();
    }
}
