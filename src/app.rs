//! The one place the daemon is assembled: `run`, `demo`, `roster-bench` and the in-process
//! tests all start it through [`Daemon::build`], so they cannot drift apart.
//!
//! [`Daemon::build`] reads as the list of its steps, each a named function: start the
//! operations endpoint when `http.listen` is set (so probes answer while the rest starts), open
//! the database when no store is given (waiting for an unreachable one, see
//! `database.startup_timeout`), take the writer lock (exclusively, or in shared mode as a
//! cluster replica with `cluster.enabled`, so the two kinds refuse each other; not at all when
//! [`DaemonOptions::single_writer`] is off), apply or wait for the migrations, add the
//! configured `[[meetings]]`, arm the test-only fault hook ([`crate::fault`]), start the webhook
//! sinks and the retention task ([`crate::retention`], when `retention.events` is set) and the
//! meeting-events intake ([`crate::meeting_events`], when `meeting_events.queue_url` is set), join
//! the cluster of replicas ([`crate::cluster`]), assemble the scheduler, and run it until the
//! token fires. The writer lock's permit ([`crate::permit`]) pauses polling, delivery and
//! retention while the lock is lost, and `/readyz` says so. What the daemon can do is recorded
//! in its [`Health`] as it happens; a monitor task turns that into the `roster_sync_ready` /
//! `_database_up` / `_scheduler_last_tick_timestamp_seconds` gauges and systemd notifications
//! ([`crate::systemd`]: `READY=1` once ready, `WATCHDOG=1` while live, `STOPPING=1`). Stopping
//! closes the pool once the scheduler has drained. What differs between callers is passed in,
//! never re-implemented: the roster client (the AWS credential chain, or one pointed at a
//! simulator), an event sink, a poll observer.
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
use tokio_util::task::TaskTracker;

use crate::chime::{ChimeClient, RosterSource};
use crate::cluster::Cluster;
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
    /// Take the store's writer lock (default): exclusively, so a second daemon on the same
    /// database is refused, or with `cluster.enabled` in shared mode, so replicas run side by
    /// side (meeting leases keep them apart) while a single writer and replicas refuse each
    /// other.
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
    /// `database.startup_timeout` (or refuses us), another process holds the writer lock (a
    /// single writer, or cluster replicas when this one is a single writer), migrations or a
    /// configured meeting cannot be written, `ROSTER_SYNC_FAULT` names no known fault, or a
    /// webhook cannot be started.
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
        let http = serve_operations(settings, &ops, &cancel).await?;
        let (store, owns_store) = open_store(settings, store, &health, &cancel).await?;
        take_writer_lock(settings, options.single_writer, &store, &health).await?;
        prepare_schema(settings, &store, &health, &cancel).await?;
        let client = roster_client(settings, options.client).await;
        add_configured_meetings(settings, &store, client.as_ref()).await?;
        arm_fault_hook()?;
        let background = start_background_tasks(settings, &store, &cancel).await?;
        let cluster = join_cluster(settings, &store, &client).await?;
        let hints = start_meeting_events(
            settings,
            &store,
            &client,
            &cancel,
            &background,
            options.events.clone(),
        )
        .await?;
        let scheduler = assemble_scheduler(
            settings,
            &store,
            &client,
            &health,
            cluster.as_ref(),
            options.events,
            options.poll_observer,
        );
        let scheduler = match hints {
            Some(hints) => scheduler.with_hints(hints),
            None => scheduler,
        };
        announce(settings, &store).await;
        let http_addr = http.as_ref().map(|(addr, _)| *addr);
        let task = tokio::spawn(run_until_stopped(Running {
            cancel: cancel.clone(),
            scheduler,
            cluster,
            background,
            store,
            owns_store,
            http,
            ops,
            health,
            notifier,
            monitor,
        }));
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

/// The operations endpoint's address and task.
type Served = (SocketAddr, JoinHandle<()>);

/// Starts the operations endpoint when `http.listen` is set, first of all, so probes answer
/// while the rest starts.
async fn serve_operations(
    settings: &Settings,
    ops: &Ops,
    cancel: &CancellationToken,
) -> anyhow::Result<Option<Served>> {
    if settings.http.listen.is_empty() {
        return Ok(None);
    }
    let addr: SocketAddr = settings.http.listen.parse().context("http.listen")?;
    let served = crate::http::serve(addr, ops.clone(), cancel.clone())
        .await
        .with_context(|| format!("cannot listen on {addr} (http.listen)"))?;
    Ok(Some(served))
}

/// The store the caller gave, or the configured database, waited for while it is unreachable
/// (`database.startup_timeout`); and whether the daemon owns it (a store the caller gave is
/// the caller's to close, one opened here is closed here).
async fn open_store(
    settings: &Settings,
    given: Option<Store>,
    health: &Health,
    cancel: &CancellationToken,
) -> anyhow::Result<(Store, bool)> {
    let opened = match given {
        Some(store) => (store, false),
        None => {
            health.waiting_for_db();
            let url = settings.database_url();
            let store = Store::connect_patiently(
                &url,
                daemon_pool(settings),
                settings.database.startup_timeout,
                cancel,
                |e, wait| tracing::warn!(error = %e, retry_in = ?wait, "waiting for the database"),
            )
            .await
            .map_err(|e| {
                // A database that stayed unreachable until the timeout ran out: say that the
                // start gave up waiting, and which key decides how long it waits.
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
            })?;
            (store, true)
        }
    };
    health.db_answered();
    Ok(opened)
}

/// Takes the writer lock (unless `enabled` is off): exclusively for a single writer, in shared
/// mode for a cluster replica, so the two kinds refuse each other. `/readyz` then reports the
/// lock's permit, which every loop that writes consults through the store.
async fn take_writer_lock(
    settings: &Settings,
    enabled: bool,
    store: &Store,
    health: &Health,
) -> anyhow::Result<()> {
    if !enabled {
        return Ok(());
    }
    if settings.cluster.enabled {
        store.acquire_replica_lock().await?;
    } else {
        store.acquire_writer_lock().await?;
    }
    health.watch_writer(store.writer_permit());
    Ok(())
}

/// Applies the migrations when `database.migrate_on_start` says so, else waits until another
/// role has applied them.
async fn prepare_schema(
    settings: &Settings,
    store: &Store,
    health: &Health,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    if settings.database.migrate_on_start {
        store.migrate().await.context("applying migrations")?;
    } else {
        wait_for_migrations(store, health, cancel).await?;
        // The lock was taken before the holder tables may have existed.
        store.describe_writer_lock().await;
    }
    // The migrations just answered: the stall clock runs from here until the first tick.
    health.db_answered();
    health.set_migrated();
    Ok(())
}

/// Arms the test-only hooks: the fault `ROSTER_SYNC_FAULT` names, and the clock skew of
/// `ROSTER_SYNC_CLOCK_OFFSET`.
fn arm_fault_hook() -> anyhow::Result<()> {
    if let Some(fault) = crate::fault::arm_from_env()? {
        tracing::warn!(fault = fault.as_str(), "test-only fault injection is armed");
    }
    if let Some(skew) = crate::clock::arm_from_env()? {
        tracing::warn!(skew = %skew, "test-only clock skew is armed");
    }
    Ok(())
}

/// Starts the webhook sinks and retention on one tracker. Before the scheduler starts, so a
/// new sink's cursor is placed before this daemon's first event.
async fn start_background_tasks(
    settings: &Settings,
    store: &Store,
    cancel: &CancellationToken,
) -> anyhow::Result<TaskTracker> {
    let tracker = TaskTracker::new();
    crate::sinks::spawn_webhooks(settings, store.clone(), cancel.clone(), &tracker).await?;
    crate::retention::spawn(settings, store.clone(), cancel.clone(), &tracker);
    tracker.close();
    Ok(tracker)
}

/// The client the caller gave (one pointed at a simulator), or one built from the
/// configuration with the standard AWS credential chain.
async fn roster_client(settings: &Settings, given: Option<Arc<ChimeClient>>) -> Arc<ChimeClient> {
    match given {
        Some(client) => client,
        None => Arc::new(ChimeClient::from_settings(settings).await),
    }
}

/// With `cluster.enabled`: registers this replica and runs its first heartbeat.
async fn join_cluster(
    settings: &Settings,
    store: &Store,
    client: &Arc<ChimeClient>,
) -> anyhow::Result<Option<Cluster>> {
    if !settings.cluster.enabled {
        return Ok(None);
    }
    let cluster = Cluster::join(settings, store.clone(), Arc::clone(client))
        .await
        .context("joining the cluster (cluster.enabled)")?;
    Ok(Some(cluster))
}

/// The scheduler with everything the caller and the configuration add to it.
fn assemble_scheduler(
    settings: &Settings,
    store: &Store,
    client: &Arc<ChimeClient>,
    health: &Health,
    cluster: Option<&Cluster>,
    events: Option<broadcast::Sender<StoredEvent>>,
    poll_observer: Option<PollObserver>,
) -> Scheduler<ChimeClient> {
    let mut scheduler = Scheduler::new(
        Arc::clone(client),
        store.clone(),
        SchedulerOptions::from_settings(settings),
    )
    .with_health(health.clone());
    if let Some(cluster) = cluster {
        scheduler = scheduler.with_cluster(cluster.replica_id().clone());
    }
    if let Some(tx) = events {
        scheduler = scheduler.with_event_sink(tx);
    }
    if let Some(observer) = poll_observer {
        scheduler = scheduler.with_poll_observer(move |r: &PollReport<'_>| observer(r));
    }
    scheduler
}

/// The meeting-events intake (`[meeting_events]`), on the background tracker so it stops with
/// the sinks: the hints it sends the scheduler, or `None` without a queue.
async fn start_meeting_events(
    settings: &Settings,
    store: &Store,
    client: &Arc<ChimeClient>,
    cancel: &CancellationToken,
    background: &TaskTracker,
    events: Option<broadcast::Sender<StoredEvent>>,
) -> anyhow::Result<Option<tokio::sync::mpsc::Receiver<crate::scheduler::Hint>>> {
    crate::meeting_events::spawn(
        settings,
        store.clone(),
        Arc::clone(client),
        cancel.clone(),
        background,
        events,
    )
    .await
    .context("starting the meeting-events intake ([meeting_events])")
}

/// The startup line (version, database, regions, rate) and the interval gauge.
async fn announce(settings: &Settings, store: &Store) {
    let regions = polled_regions(settings, store).await;
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
    metrics::gauge!("roster_sync_poll_interval_seconds").set(settings.poll.interval.as_secs_f64());
}

/// What the running daemon's task owns.
struct Running {
    cancel: CancellationToken,
    scheduler: Scheduler<ChimeClient>,
    cluster: Option<Cluster>,
    /// The webhook sinks and retention.
    background: TaskTracker,
    store: Store,
    owns_store: bool,
    http: Option<Served>,
    ops: Ops,
    health: Health,
    notifier: Notifier,
    monitor: JoinHandle<()>,
}

/// Runs the scheduler until `cancel` fires, then stops in order: the scheduler drains, the
/// cluster leases go, the sinks and retention end, the pool closes (if the daemon opened it),
/// the endpoint and the monitor stop.
async fn run_until_stopped(r: Running) -> anyhow::Result<()> {
    let upkeep = tokio::spawn(upkeep(r.ops.clone(), r.cancel.clone()));
    let stop = {
        let cancel = r.cancel.clone();
        let health = r.health.clone();
        let notifier = r.notifier.clone();
        async move {
            cancel.cancelled().await;
            health.set_stopping();
            notifier.stopping();
        }
    };
    let ((), ()) = tokio::join!(stop, r.scheduler.run(r.cancel.clone()));
    // After the drain: no poll of ours is writing, so the leases can go.
    if let Some(cluster) = r.cluster {
        cluster.leave().await;
    }
    // The scheduler stops only when cancelled; this also covers a future early return, so
    // the endpoint and the upkeep never outlive it.
    r.cancel.cancel();
    let _ = upkeep.await;
    r.background.wait().await;
    if r.owns_store
        && tokio::time::timeout(CLOSE_WITHIN, r.store.close())
            .await
            .is_err()
    {
        tracing::warn!("the database connections did not close in time");
    }
    if let Some((_, served)) = r.http {
        let _ = served.await;
    }
    let _ = r.monitor.await;
    tracing::info!("roster-sync stopped");
    Ok(())
}

/// `[[meetings]]` from the configuration are added on every start (idempotent). An entry
/// never moves a meeting already tracked in another region on its word alone: without
/// `region` the tracked region stays; with one, the meeting moves only once `GetMeeting` finds
/// it there (a meeting polled where it does not live fails every poll, and before the move
/// rule it could be ended).
async fn add_configured_meetings(
    settings: &Settings,
    store: &Store,
    source: &impl RosterSource,
) -> anyhow::Result<()> {
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
        let outcome = add(false)
            .await
            .with_context(|| format!("adding configured meeting {}", m.id))?;
        match outcome {
            AddOutcome::AlreadyEnded => {
                tracing::warn!(meeting_id = %m.id, "configured meeting has ended; it is not polled (`meetings add --force` tracks it again)");
            }
            AddOutcome::RegionDiffers { current } if m.region.is_none() => {
                tracing::info!(meeting_id = %m.id, region = %current, "configured meeting names no region; it stays in the region it is tracked in");
            }
            AddOutcome::RegionDiffers { current } => {
                match source.get_meeting(&m.id, region).await {
                    Ok(()) => {
                        add(true)
                            .await
                            .with_context(|| format!("moving configured meeting {}", m.id))?;
                        tracing::info!(meeting_id = %m.id, from = %current, to = %region, "configured meeting moved to the region the configuration names (GetMeeting found it there)");
                    }
                    Err(e) => {
                        tracing::warn!(meeting_id = %m.id, region = %current, refused = %region, error = %e, "configured region refused: GetMeeting did not find the meeting there; it stays in the region it is tracked in");
                    }
                }
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
