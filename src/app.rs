//! The one place the daemon is assembled: `run`, `demo`, `roster-bench` and the in-process
//! tests all start it through [`Daemon::build`], so they cannot drift apart.
//!
//! Building starts the operations endpoint first when `http.listen` is set (so probes answer
//! while the rest starts), connects to the database when no store is given (waiting for an
//! unreachable one, see `database.startup_timeout`), takes the writer lock (unless
//! [`DaemonOptions::single_writer`] is off, or, with `cluster.enabled`, joins the cluster of
//! replicas instead, see [`crate::cluster`]), applies migrations when
//! `database.migrate_on_start` says so, adds the configured `[[meetings]]`, arms the test-only
//! fault hook ([`crate::fault`]), starts the webhook sinks and the retention task
//! ([`crate::retention`], when `retention.events` is set) and spawns the scheduler. What the
//! daemon can do is recorded in its [`Health`] as it happens; a monitor task turns that into
//! the `roster_sync_ready` / `_database_up` / `_scheduler_last_tick_timestamp_seconds` gauges
//! and systemd notifications ([`crate::systemd`]: `READY=1` once ready, `WATCHDOG=1` while
//! live, `STOPPING=1`). Stopping closes the pool once the scheduler has drained. What differs
//! between callers is passed in, never re-implemented: the roster client (the AWS credential
//! chain, or one pointed at a simulator), an event sink, a poll observer.
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
use crate::store::{AddOutcome, Backend, PoolOptions, Store, StoredEvent};
use crate::systemd::Notifier;

/// How often the metrics recorder's upkeep (histogram maintenance) runs.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// How often the monitor turns [`Health`] into gauges, readiness and watchdog pings (more
/// often when systemd's watchdog asks for pings more often).
const MONITOR_EVERY: Duration = Duration::from_secs(1);

/// How long closing the pool may take at the end of a stop.
const CLOSE_WITHIN: Duration = Duration::from_secs(2);

/// Called with every finished poll, on the scheduler's task: quick work only.
pub type PollObserver = Box<dyn Fn(&PollReport<'_>) + Send + Sync>;

/// What a caller adds to the daemon the configuration describes. The default is what
/// `roster-sync run` uses.
pub struct DaemonOptions {
    /// The roster client to poll with. `None`: one built from the configuration with the
    /// standard AWS credential chain. The demo, the benchmark and the tests pass a client
    /// pointed at the simulator (placeholder credentials).
    pub client: Option<Arc<ChimeClient>>,
    /// Every recorded event is also sent here, after its commit (the demo's live output).
    pub events: Option<broadcast::Sender<StoredEvent>>,
    /// Sees every finished poll (the benchmark's sweep tracking).
    pub poll_observer: Option<PollObserver>,
    /// Take the store's writer lock, so a second daemon on the same database is refused
    /// (default). `cluster.enabled` turns it off: there, meeting leases keep replicas apart.
    pub single_writer: bool,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        Self {
            client: None,
            events: None,
            poll_observer: None,
            single_writer: true,
        }
    }
}

/// A running daemon. It stops when the token given to [`Daemon::build`] is cancelled;
/// [`Daemon::wait`] returns once it has drained.
pub struct Daemon {
    cancel: CancellationToken,
    client: Arc<ChimeClient>,
    http_addr: Option<SocketAddr>,
    task: JoinHandle<anyhow::Result<()>>,
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
        let notifier = Notifier::from_env();
        let monitor = tokio::spawn(monitor(health.clone(), notifier.clone(), cancel.clone()));
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

        // A store the caller gave is the caller's to close; one opened here is closed here.
        let owns_store = store.is_none();
        let store = match store {
            Some(store) => store,
            None => {
                health.waiting_for_db();
                let url = settings.database_url();
                Store::connect_patiently(
                    &url,
                    daemon_pool(settings),
                    settings.database.startup_timeout,
                    &cancel,
                    |e, wait| tracing::warn!(error = %e, retry_in = ?wait, "waiting for the database"),
                )
                .await
                .map_err(|e| {
                    // A database that stayed unreachable until the timeout ran out: say that
                    // the start gave up waiting, and which key decides how long it waits.
                    let waited = settings
                        .database
                        .startup_timeout
                        .filter(|_| e.is_transient())
                        .map(|t| {
                            format!(
                                " (gave up waiting: `database.startup_timeout` is {})",
                                humantime::format_duration(t)
                            )
                        })
                        .unwrap_or_default();
                    anyhow::Error::new(e)
                        .context(format!("cannot open database {}{waited}", redact_url(&url)))
                })?
            }
        };
        health.db_answered();
        // Cluster mode: replicas share the database through leases instead of one writer.
        if options.single_writer && !settings.cluster.enabled {
            store.acquire_writer_lock().await?;
        }
        if settings.database.migrate_on_start {
            store.migrate().await.context("applying migrations")?;
        } else {
            wait_for_migrations(&store, &health, &cancel).await?;
        }
        // The migrations just answered: the stall clock runs from here until the first tick.
        health.db_answered();
        health.set_migrated();
        add_configured_meetings(settings, &store).await?;
        if let Some(fault) = crate::fault::arm_from_env()? {
            tracing::warn!(fault = fault.as_str(), "test-only fault injection is armed");
        }
        let sinks = tokio_util::task::TaskTracker::new();
        // Before the scheduler starts: a new sink's cursor is placed before this daemon's
        // first event.
        crate::sinks::spawn_webhooks(settings, store.clone(), cancel.clone(), &sinks).await?;
        crate::retention::spawn(settings, store.clone(), cancel.clone(), &sinks);
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
            store.clone(),
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

        let regions = polled_regions(settings, &store).await;
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            database_kind = match store.backend() {
                Backend::Postgres => "postgres",
                Backend::Sqlite => "sqlite",
            },
            database = %redact_url(&settings.database_url()),
            regions = %regions,
            rate = settings.rate.requests_per_second,
            burst = settings.rate.burst,
            interval = ?settings.poll.interval,
            "roster-sync running"
        );
        metrics::gauge!("roster_sync_poll_interval_seconds")
            .set(settings.poll.interval.as_secs_f64());
        let lost = store.writer_lock_lost();
        let task = {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                let upkeep = tokio::spawn(upkeep(ops.clone(), cancel.clone()));
                let lost_lock = {
                    let cancel = cancel.clone();
                    async move {
                        tokio::select! {
                            () = lost.cancelled() => true,
                            () = cancel.cancelled() => false,
                        }
                    }
                };
                let stop = {
                    let cancel = cancel.clone();
                    let health = health.clone();
                    let notifier = notifier.clone();
                    async move {
                        cancel.cancelled().await;
                        health.set_stopping();
                        notifier.stopping();
                    }
                };
                let (lost_lock, (), ()) =
                    tokio::join!(lost_lock, stop, scheduler.run(cancel.clone()));
                // After the drain: no poll of ours is writing, so the leases can go.
                if let Some(cluster) = cluster {
                    cluster.leave().await;
                }
                // The scheduler stops only when cancelled; this also covers a future early
                // return, so the endpoint and the upkeep never outlive it.
                cancel.cancel();
                let _ = upkeep.await;
                sinks.wait().await;
                if owns_store
                    && tokio::time::timeout(CLOSE_WITHIN, store.close())
                        .await
                        .is_err()
                {
                    tracing::warn!("the database connections did not close in time");
                }
                if let Some((_, served)) = http {
                    let _ = served.await;
                }
                let _ = monitor.await;
                tracing::info!("roster-sync stopped");
                if lost_lock {
                    anyhow::bail!(
                        "stopped: another roster-sync took this database's writer lock while the database was unreachable"
                    );
                }
                Ok(())
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
    /// The daemon's task panicked, or the daemon stopped because another process took its
    /// writer lock.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("the daemon task failed")?
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

/// Until `cancel` fires: publishes the health gauges, tells systemd once the daemon is ready
/// and what it is doing, and pings the watchdog while the daemon is live (so a scheduler loop
/// that stopped ticking stops the pings, and systemd restarts the process).
async fn monitor(health: Health, notifier: Notifier, cancel: CancellationToken) {
    let watchdog_every = notifier.watchdog_every();
    let period = watchdog_every.map_or(MONITOR_EVERY, |w| w.min(MONITOR_EVERY));
    let mut every = tokio::time::interval(period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pinged: Option<tokio::time::Instant> = None;
    let mut ready_sent = false;
    let mut status = String::new();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = every.tick() => {}
        }
        let ready = health.ready();
        metrics::gauge!("roster_sync_ready").set(if ready.is_ok() { 1.0 } else { 0.0 });
        metrics::gauge!("roster_sync_database_up").set(if health.db_up() { 1.0 } else { 0.0 });
        if let Some(since) = health.since_tick() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            metrics::gauge!("roster_sync_scheduler_last_tick_timestamp_seconds")
                .set(now.saturating_sub(since).as_secs_f64());
        }
        let now_status = match &ready {
            Ok(()) => "ready: polling".to_owned(),
            Err(why) => format!("not ready: {}", why.join("; ")),
        };
        if ready.is_ok() && !ready_sent {
            notifier.ready(&now_status);
            ready_sent = true;
        } else if now_status != status {
            notifier.status(&now_status);
        }
        status = now_status;
        if let Some(ping_every) = watchdog_every {
            let now = tokio::time::Instant::now();
            let due = pinged.is_none_or(|t| now.duration_since(t) >= ping_every);
            if due && health.live().is_ok() {
                notifier.watchdog();
                pinged = Some(now);
            }
        }
    }
}

/// Runs the metrics recorder's upkeep until `cancel` fires.
async fn upkeep(ops: Ops, cancel: CancellationToken) {
    let mut every = tokio::time::interval(UPKEEP_EVERY);
    while tokio::select! { _ = cancel.cancelled() => false, _ = every.tick() => true } {
        ops.upkeep();
    }
}

/// The pool the daemon polls with: `database.max_connections`, and on Postgres
/// `database.statement_timeout` on every statement, so no database call can hold the scheduler
/// for longer than that.
pub fn daemon_pool(settings: &Settings) -> PoolOptions {
    PoolOptions {
        max_connections: settings.database.max_connections,
        statement_timeout: Some(settings.database.statement_timeout),
    }
}

/// The regions the daemon polls at start, for its first log line: those of the active
/// meetings, and the default region (`chime.region`), comma-separated.
async fn polled_regions(settings: &Settings, store: &Store) -> String {
    let mut regions = std::collections::BTreeSet::from([settings.chime.region.to_string()]);
    match store.active_meeting_keys().await {
        Ok(keys) => regions.extend(keys.into_iter().map(|(_, r)| r.to_string())),
        Err(e) => tracing::debug!(error = %e, "cannot list the regions of the tracked meetings"),
    }
    regions.into_iter().collect::<Vec<_>>().join(",")
}

/// Connects to the configured database for a command (`report`, `meetings`, `events`, …):
/// no statement limit, since a person or script waits for the answer and may stop it. The
/// error names the database (password redacted).
///
/// # Errors
/// The database cannot be reached or the URL is not supported.
pub async fn connect(settings: &Settings) -> anyhow::Result<Store> {
    let url = settings.database_url();
    Store::connect(&url, settings.database.max_connections)
        .await
        .with_context(|| format!("cannot open database {}", redact_url(&url)))
}

/// How often a daemon that does not migrate (`run --no-migrate`) looks again for the
/// migrations another role applies.
const MIGRATIONS_RECHECK: Duration = Duration::from_secs(5);

/// Waits until the database holds every migration this binary embeds, so a daemon started
/// beside (or before) the migrating job never writes to an older schema. `/readyz` keeps
/// answering "migrations are not applied yet" meanwhile.
async fn wait_for_migrations(
    store: &Store,
    health: &Health,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let mut logged = false;
    loop {
        let pending = store
            .pending_migrations()
            .await
            .context("reading the applied migrations (_sqlx_migrations)")?;
        health.db_answered();
        if pending.is_empty() {
            if logged {
                tracing::info!("migrations are applied; starting");
            }
            return Ok(());
        }
        if !logged {
            tracing::warn!(
                pending = ?pending,
                "database.migrate_on_start is off and the database lacks migrations; \
                 waiting for `roster-sync migrate` to apply them"
            );
            logged = true;
        }
        tokio::select! {
            () = cancel.cancelled() => anyhow::bail!("stopped while waiting for migrations"),
            () = tokio::time::sleep(MIGRATIONS_RECHECK) => {}
        }
    }
}
