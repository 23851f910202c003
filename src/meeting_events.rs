//! The meeting-events intake: Chime lifecycle events from an SQS queue, turned into hints
//! (poll this meeting now) and, with `meeting_events.auto_track`, into tracked meetings.
//!
//! Events are best effort (at least once, in no order, sometimes missing), so they decide
//! *when* a meeting is polled, never *what* is recorded: no event ever writes a roster event,
//! and a meeting ends only by the rule in `scheduler/poll.rs`, whatever `MeetingEnded` says.
//!
//! One step, [`Intake::tick`]: one `ReceiveMessage` (long poll), each body parsed by
//! [`crate::lifecycle::parse_body`], its effect committed (a hint sent, a meeting tracked, its
//! envelope id recorded in `meeting_event_ids`), and only then the message deleted. A message
//! whose envelope id was handled before is counted as a duplicate and deleted; a body that is
//! not a valid event is counted by its rejection, logged once per kind and deleted; one whose
//! effect could not be committed (the database or `GetMeeting` failed) stays and comes back
//! after the visibility timeout. A queue that refuses us (AccessDenied, NonExistentQueue, no
//! answer) is logged with the reason and retried with capped backoff; it shows only in
//! `roster_sync_meeting_events_up`, never in polling or `/readyz`.
//!
//! Hints go through [`coalesce`] (events of one meeting within `meeting_events.coalesce` make
//! one poll) to the scheduler ([`crate::scheduler::Hint`]). In cluster mode a hint goes through
//! the database instead (`hinted_at` and a `NOTIFY`), so the replica holding the meeting's
//! lease hears it, whichever replica received the event.
//!
//! It never touches the Chime API except `GetMeeting` to verify a discovered meeting, and
//! never writes SQL itself (the store does).

mod coalesce;
mod presence_buffer;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata};
use backon::BackoffBuilder;
use chrono::Utc;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::chime::{ChimeClient, ChimeError, RosterSource};
use crate::config::{MeetingEventsSettings, Settings};
use crate::domain::MeetingId;
use crate::lifecycle::{EventType, MeetingEvent, Rejection, parse_body};
use crate::scheduler::Hint;
use crate::store::{Discovered, MeetingStatus, Store, StoreError};

pub use coalesce::Coalescer;
pub use presence_buffer::{Flushed, PresenceBuffer};

/// Handled envelope ids are kept this long: longer than SQS keeps a message (14 days).
pub const SEEN_RETENTION: Duration = Duration::from_secs(15 * 24 * 60 * 60);

/// How often the handled envelope ids past [`SEEN_RETENTION`] are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(60 * 60);

/// The first wait after a failed `ReceiveMessage`; doubles (with jitter) up to
/// [`BACKOFF_CAP`].
const BACKOFF_BASE: Duration = Duration::from_secs(1);

/// The longest wait between two `ReceiveMessage` attempts while the queue fails.
pub const BACKOFF_CAP: Duration = Duration::from_secs(60);

/// Messages received since the process started, for benchmarks that do not scrape.
static RECEIVED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Messages the intake has received in this process so far (duplicates included).
pub fn received_total() -> u64 {
    RECEIVED.load(std::sync::atomic::Ordering::Relaxed)
}

/// The pause after an empty answer to a short poll (`meeting_events.wait` under 1 s).
const IDLE_PAUSE: Duration = Duration::from_secs(1);

/// Entries per `DeleteMessageBatch`, at most (SQS's limit).
const MAX_DELETE_BATCH: usize = 10;

/// Hints waiting for the scheduler, at most; the intake waits when it is full.
const HINT_QUEUE: usize = 1024;

/// Why an event's effect could not be committed; the message stays in the queue.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error("GetMeeting: {0}")]
    Chime(#[from] ChimeError),
    #[error("the daemon is stopping")]
    Stopped,
}

pub type Result<T, E = IntakeError> = std::result::Result<T, E>;

/// What one [`Intake::tick`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tick {
    /// The long poll ended with no message.
    Idle,
    /// Messages arrived: how many, and how many were deleted (the others come back).
    Handled { received: usize, deleted: usize },
    /// The queue could not be read; the next attempt should wait `retry_in`.
    Failed {
        reason: &'static str,
        retry_in: Duration,
    },
}

/// What became of one message: its metric labels and whether it is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handled {
    /// The event type without `chime:`, or `unknown` for a body that is no valid event.
    pub event_type: &'static str,
    /// The `outcome` label of `roster_sync_meeting_events_total`.
    pub outcome: &'static str,
    pub delete: bool,
}

/// The events that can change a roster: their meeting is polled now. `AttendeeJoined` counts
/// only for an attendee not in the snapshot (the caller checks).
pub fn can_change_roster(t: EventType) -> bool {
    matches!(
        t,
        EventType::AttendeeAdded
            | EventType::AttendeeDeleted
            | EventType::AttendeeCapabilitiesUpdated
            | EventType::MeetingEnded
    )
}

/// Where a hint goes: straight to this process's coalescer, or (cluster mode) through the
/// database to whichever replica holds the meeting's lease.
#[derive(Clone)]
enum HintRoute {
    Local(mpsc::Sender<MeetingId>),
    Database,
}

/// The intake: an SQS client on the configured queue and what an event's effect needs.
pub struct Intake {
    sqs: aws_sdk_sqs::Client,
    settings: MeetingEventsSettings,
    store: Store,
    verifier: Arc<ChimeClient>,
    route: HintRoute,
    scheduler: mpsc::Sender<Hint>,
    /// Rejection kinds already logged at warn level (later ones go to debug).
    logged: HashSet<&'static str>,
    /// The reason of the last failed receive, while failing.
    failing: Option<&'static str>,
    backoff: backon::ExponentialBackoff,
    pruned_at: Option<Instant>,
    /// Presence events held for the reorder window, then recorded (`presence_buffer.rs`).
    presence: PresenceBuffer,
    /// Every presence event recorded is also sent here, after its commit (the demo's live
    /// output), as the scheduler sends the roster's.
    sink: Option<tokio::sync::broadcast::Sender<crate::store::StoredEvent>>,
    cancel: CancellationToken,
}

/// The SQS client: the Chime client's AWS configuration (credential chain, HTTP client, SDK
/// retries off), in the queue's region, with an attempt timeout that fits the long poll.
pub fn sqs_client(settings: &Settings, base: &aws_config::SdkConfig) -> aws_sdk_sqs::Client {
    let me = &settings.meeting_events;
    let region = me.queue_region(&settings.chime.region);
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(settings.chime.connect_timeout)
        .operation_attempt_timeout(me.wait + settings.chime.attempt_timeout)
        .build();
    let mut b = aws_sdk_sqs::config::Builder::from(base)
        .region(aws_sdk_sqs::config::Region::new(region.to_string()))
        .retry_config(aws_sdk_sqs::config::retry::RetryConfig::disabled())
        .timeout_config(timeouts);
    if !me.endpoint_url.is_empty() {
        b = b.endpoint_url(&me.endpoint_url);
    }
    aws_sdk_sqs::Client::from_conf(b.build())
}

fn backoff() -> backon::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(BACKOFF_BASE)
        .with_max_delay(BACKOFF_CAP)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Starts the intake when `meeting_events.queue_url` is set: the receive loop, and the
/// coalescer that feeds the scheduler. Returns the scheduler's end of the hints; `None` when
/// the intake is off.
///
/// # Errors
/// Cluster mode only: the `LISTEN` for other replicas' hints cannot be opened.
pub async fn spawn(
    settings: &Settings,
    store: Store,
    verifier: Arc<ChimeClient>,
    cancel: CancellationToken,
    tracker: &TaskTracker,
    sink: Option<tokio::sync::broadcast::Sender<crate::store::StoredEvent>>,
) -> Result<Option<mpsc::Receiver<Hint>>> {
    if !settings.meeting_events.enabled() {
        return Ok(None);
    }
    let (to_scheduler, hints) = mpsc::channel(HINT_QUEUE);
    let (raw_tx, raw_rx) = mpsc::channel(HINT_QUEUE);
    let route = if settings.cluster.enabled {
        HintRoute::Database
    } else {
        HintRoute::Local(raw_tx.clone())
    };
    let wakeups = if settings.cluster.enabled {
        store.hint_wakeups().await?
    } else {
        None
    };
    tracker.spawn(coalesce_hints(
        settings.meeting_events.coalesce,
        raw_rx,
        wakeups,
        to_scheduler.clone(),
        cancel.clone(),
    ));
    drop(raw_tx);
    let sqs = sqs_client(settings, verifier.sdk_config());
    let mut intake = Intake::new(
        sqs,
        settings.meeting_events.clone(),
        store,
        verifier,
        route,
        to_scheduler,
        cancel.clone(),
    );
    intake.sink = sink;
    tracing::info!(
        queue_url = %settings.meeting_events.queue_url,
        region = %settings.meeting_events.queue_region(&settings.chime.region),
        auto_track = settings.meeting_events.auto_track,
        "meeting events: reading the queue"
    );
    tracker.spawn(intake.run());
    Ok(Some(hints))
}

/// Forwards hints to the scheduler, coalesced per meeting: from this process's intake and
/// (cluster mode) from every replica's, through the database's `NOTIFY`.
async fn coalesce_hints(
    window: Duration,
    mut local: mpsc::Receiver<MeetingId>,
    mut remote: Option<crate::store::HintWakeups>,
    scheduler: mpsc::Sender<Hint>,
    cancel: CancellationToken,
) {
    let mut coalescer = Coalescer::new(window);
    let mut local_open = true;
    loop {
        let next = coalescer.next_due();
        let hinted = tokio::select! {
            () = cancel.cancelled() => return,
            id = local.recv(), if local_open => match id {
                Some(id) => Some(id),
                None => { local_open = false; None }
            },
            id = next_remote(&mut remote) => id,
            () = sleep_until_opt(next) => None,
        };
        let now = Instant::now();
        let mut send: Vec<MeetingId> = coalescer.due(now);
        if let Some(id) = hinted
            && coalescer.offer(&id, now)
        {
            send.push(id);
        }
        for id in send {
            if scheduler.send(Hint::Poll(id)).await.is_err() {
                return;
            }
        }
    }
}

async fn next_remote(remote: &mut Option<crate::store::HintWakeups>) -> Option<MeetingId> {
    let Some(listener) = remote else {
        return std::future::pending().await;
    };
    match listener.next().await {
        Ok(id) => Some(id),
        Err(e) => {
            tracing::warn!(error = %e, "meeting events: listening for other replicas' hints failed; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            None
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Intake {
    fn new(
        sqs: aws_sdk_sqs::Client,
        settings: MeetingEventsSettings,
        store: Store,
        verifier: Arc<ChimeClient>,
        route: HintRoute,
        scheduler: mpsc::Sender<Hint>,
        cancel: CancellationToken,
    ) -> Self {
        metrics::gauge!("roster_sync_meeting_events_up").set(0.0);
        let presence = PresenceBuffer::new(
            settings.reorder_window,
            // An unknown attendee waits for a poll at most until its message would come back
            // anyway.
            settings
                .visibility_timeout
                .saturating_sub(settings.reorder_window),
        );
        Self {
            sqs,
            settings,
            store,
            verifier,
            route,
            scheduler,
            logged: HashSet::new(),
            failing: None,
            backoff: backoff(),
            pruned_at: None,
            presence,
            sink: None,
            cancel,
        }
    }

    /// Repeats [`Intake::tick`] until the token fires, waiting after failures.
    pub async fn run(mut self) {
        let cancel = self.cancel.clone();
        loop {
            // The tick itself stops at the receive; what it committed is always passed on
            // (to the sink, the queue's deletes), never cut between commit and report.
            if cancel.is_cancelled() {
                return;
            }
            let tick = self.tick().await;
            let pause = match tick {
                Tick::Failed { retry_in, .. } => retry_in,
                // Without a long poll (`wait` under a second) an empty queue answers at once:
                // ask again a second later rather than in a tight loop.
                Tick::Idle if self.settings.wait < Duration::from_secs(1) => IDLE_PAUSE,
                _ => continue,
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// One step: deletes old envelope ids when due, receives one batch (long poll) and
    /// handles and deletes its messages.
    pub async fn tick(&mut self) -> Tick {
        self.prune_when_due().await;
        let receive = self
            .sqs
            .receive_message()
            .queue_url(&self.settings.queue_url)
            .max_number_of_messages(self.settings.batch)
            .wait_time_seconds(self.receive_wait())
            .visibility_timeout(
                i32::try_from(self.settings.visibility_timeout.as_secs().max(1)).unwrap_or(30),
            )
            .send();
        // Shutdown cuts the long poll short; messages it would have brought stay in the queue.
        let answer = tokio::select! {
            () = self.cancel.cancelled() => return Tick::Idle,
            answer = receive => answer,
        };
        let out = match answer {
            Ok(out) => out,
            Err(e) => {
                let reason = receive_failure(&e);
                let retry_in = self.backoff.next().unwrap_or(BACKOFF_CAP);
                metrics::counter!("roster_sync_meeting_events_receive_errors_total", "reason" => reason)
                    .increment(1);
                metrics::gauge!("roster_sync_meeting_events_up").set(0.0);
                let error = DisplayErrorContext(&e).to_string();
                if self.failing != Some(reason) {
                    tracing::error!(
                        reason,
                        code = e.code(),
                        error = %error,
                        ?retry_in,
                        queue_url = %self.settings.queue_url,
                        "meeting events: cannot read the queue; polling goes on without hints, retrying with backoff"
                    );
                } else {
                    tracing::debug!(reason, error = %error, ?retry_in, "meeting events: the queue still fails");
                }
                self.failing = Some(reason);
                return Tick::Failed { reason, retry_in };
            }
        };
        metrics::gauge!("roster_sync_meeting_events_up").set(1.0);
        if self.failing.take().is_some() {
            tracing::info!(queue_url = %self.settings.queue_url, "meeting events: the queue answers again");
        }
        self.backoff = backoff();
        let messages = out.messages.unwrap_or_default();
        if messages.is_empty() && self.presence.held() == 0 {
            return Tick::Idle;
        }
        let received = messages.len();
        RECEIVED.fetch_add(received as u64, std::sync::atomic::Ordering::Relaxed);
        let mut delete = Vec::new();
        for m in &messages {
            let (mut handled, presence) = self.handle_message(m.body().unwrap_or_default()).await;
            if let Some(event) = presence
                && handled.delete
            {
                // Deleted once its presence is recorded.
                handled.delete = false;
                self.presence
                    .offer(event, m.receipt_handle().map(str::to_owned), Utc::now());
            }
            metrics::counter!(
                "roster_sync_meeting_events_total",
                "type" => handled.event_type,
                "outcome" => handled.outcome
            )
            .increment(1);
            if handled.delete
                && let Some(receipt) = m.receipt_handle()
            {
                delete.push(receipt.to_owned());
            }
        }
        let flushed = self.presence.flush(&self.store, Utc::now()).await;
        for (event_type, outcome) in &flushed.outcomes {
            metrics::counter!(
                "roster_sync_presence_events_total",
                "type" => event_type.name(),
                "outcome" => *outcome
            )
            .increment(1);
        }
        for meeting in &flushed.hint {
            if let Err(e) = self.hint(meeting).await {
                tracing::debug!(meeting_id = %meeting, error = %e, "meeting events: no hint for an unknown attendee");
            }
        }
        if let Some(sink) = &self.sink {
            for e in &flushed.stored {
                // Nobody listening is fine: the sink is only a live view.
                let _ = sink.send(e.clone());
            }
        }
        delete.extend(flushed.delete);
        let deleted = self.delete(delete).await;
        Tick::Handled { received, deleted }
    }

    /// The long poll's wait: `meeting_events.wait`, shortened while presence events are held
    /// so that they are applied when their reorder window ends.
    fn receive_wait(&self) -> i32 {
        let configured = i32::try_from(self.settings.wait.as_secs()).unwrap_or(20);
        match self.presence.next_flush(Utc::now()) {
            Some(at) => {
                let left = (at - Utc::now()).num_milliseconds().max(0);
                configured.min(i32::try_from((left + 999) / 1000).unwrap_or(configured))
            }
            None => configured,
        }
    }

    /// Deletes the handled messages in one batch; returns how many went.
    async fn delete(&self, receipts: Vec<String>) -> usize {
        let mut deleted = 0;
        // SQS takes at most 10 entries per DeleteMessageBatch; a flush of held presence
        // events can release many more at once.
        for chunk in receipts.chunks(MAX_DELETE_BATCH) {
            deleted += self.delete_batch(chunk).await;
        }
        deleted
    }

    /// One `DeleteMessageBatch` of at most [`MAX_DELETE_BATCH`] receipts; returns how many
    /// went.
    async fn delete_batch(&self, receipts: &[String]) -> usize {
        if receipts.is_empty() {
            return 0;
        }
        let mut entries = Vec::with_capacity(receipts.len());
        for (i, receipt) in receipts.iter().enumerate() {
            match aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(receipt)
                .build()
            {
                Ok(entry) => entries.push(entry),
                Err(e) => tracing::warn!(error = %e, "meeting events: cannot build a delete entry"),
            }
        }
        let total = entries.len();
        match self
            .sqs
            .delete_message_batch()
            .queue_url(&self.settings.queue_url)
            .set_entries(Some(entries))
            .send()
            .await
        {
            Ok(out) => {
                let failed = out.failed.len();
                if failed > 0 {
                    metrics::counter!("roster_sync_meeting_events_receive_errors_total", "reason" => "delete")
                        .increment(failed as u64);
                    tracing::warn!(
                        failed,
                        code = out.failed.first().map(|f| f.code.as_str()),
                        "meeting events: messages not deleted; they come back and are recognised as handled"
                    );
                }
                total - failed.min(total)
            }
            Err(e) => {
                metrics::counter!("roster_sync_meeting_events_receive_errors_total", "reason" => "delete")
                    .increment(1);
                tracing::warn!(error = %DisplayErrorContext(&e), "meeting events: DeleteMessageBatch failed; the messages come back and are recognised as handled");
                0
            }
        }
    }

    /// Parses one body and commits its effect. Never fails: what went wrong is the outcome.
    pub async fn handle(&mut self, body: &str) -> Handled {
        self.handle_message(body).await.0
    }

    /// [`Intake::handle`], also returning the event when it is one presence records (the
    /// caller holds it in the [`PresenceBuffer`] and deletes the message after).
    async fn handle_message(&mut self, body: &str) -> (Handled, Option<MeetingEvent>) {
        let handled = self.handle_hint(body).await;
        let presence = match &handled {
            (h, Some(event))
                if h.delete && crate::presence::is_presence_event(event.event_type) =>
            {
                Some(event.clone())
            }
            _ => None,
        };
        (handled.0, presence)
    }

    async fn handle_hint(&mut self, body: &str) -> (Handled, Option<MeetingEvent>) {
        let now = Utc::now();
        let event = match parse_body(body, now) {
            Ok(event) => event,
            Err(rejection) => {
                self.log_rejection(&rejection);
                let handled = Handled {
                    event_type: "unknown",
                    outcome: rejection.outcome(),
                    delete: true,
                };
                return (handled, None);
            }
        };
        let event_type = event.event_type.name();
        let age = (now - event.time).to_std().unwrap_or_default();
        metrics::histogram!("roster_sync_meeting_events_age_seconds").record(age.as_secs_f64());
        let handled = match self.commit(&event, now).await {
            Ok(outcome) => {
                tracing::debug!(
                    event_id = %event.id,
                    meeting_id = %event.meeting_id,
                    event_type,
                    outcome,
                    "meeting event"
                );
                Handled {
                    event_type,
                    outcome,
                    delete: true,
                }
            }
            Err(e) => {
                tracing::warn!(
                    event_id = %event.id,
                    meeting_id = %event.meeting_id,
                    event_type,
                    error = %e,
                    "meeting events: the event's effect could not be committed; it comes back after the visibility timeout"
                );
                Handled {
                    event_type,
                    outcome: "failed",
                    delete: false,
                }
            }
        };
        (handled, Some(event))
    }

    /// The event's effect, then its envelope id recorded: a redelivery after a crash between
    /// the two repeats an idempotent effect.
    async fn commit(
        &mut self,
        event: &MeetingEvent,
        now: chrono::DateTime<Utc>,
    ) -> Result<&'static str> {
        if self.store.meeting_event_seen(&event.id).await? {
            return Ok("duplicate");
        }
        let outcome = self.effect(event).await?;
        self.store.note_meeting_event(&event.id, now).await?;
        Ok(outcome)
    }

    async fn effect(&mut self, event: &MeetingEvent) -> Result<&'static str> {
        let meeting = &event.meeting_id;
        match self.store.meeting_status(meeting).await? {
            Some(MeetingStatus::Active) => {
                let hint = match event.event_type {
                    t if can_change_roster(t) => true,
                    EventType::AttendeeJoined => match &event.attendee {
                        Some(a) => {
                            !self
                                .store
                                .attendee_in_snapshot(meeting, &a.attendee_id)
                                .await?
                        }
                        None => false,
                    },
                    _ => false,
                };
                if !hint {
                    return Ok("ignored");
                }
                self.hint(meeting).await?;
                Ok("hint")
            }
            Some(_) => Ok("inactive"),
            None if !self.settings.auto_track => Ok("untracked"),
            None => self.discover(event).await,
        }
    }

    async fn hint(&self, meeting: &MeetingId) -> Result<()> {
        match &self.route {
            HintRoute::Local(tx) => {
                tokio::select! {
                    () = self.cancel.cancelled() => return Err(IntakeError::Stopped),
                    sent = tx.send(meeting.clone()) => sent.map_err(|_| IntakeError::Stopped)?,
                }
            }
            HintRoute::Database => self.store.hint_meeting(meeting, Utc::now()).await?,
        }
        Ok(())
    }

    /// Discovery: tracks the event's meeting if its externalMeetingId matches, after
    /// `GetMeeting` in the event's control region confirms it exists.
    async fn discover(&mut self, event: &MeetingEvent) -> Result<&'static str> {
        let external = event.external_meeting_id.as_deref().unwrap_or_default();
        if !matches_any(&self.settings.track_external_meeting_ids, external) {
            return Ok("not_matched");
        }
        match self
            .verifier
            .get_meeting(&event.meeting_id, &event.region)
            .await
        {
            Ok(()) => {}
            Err(ChimeError::NotFound { .. }) => return Ok("not_found"),
            Err(e) => return Err(e.into()),
        }
        let label = if self.settings.label.is_empty() {
            event.external_meeting_id.as_deref()
        } else {
            Some(self.settings.label.as_str())
        };
        let found = self
            .store
            .track_discovered(&event.meeting_id, &event.region, label, Utc::now())
            .await?;
        match found {
            Discovered::Tracked => {
                tracing::info!(
                    meeting_id = %event.meeting_id,
                    region = %event.region,
                    external_meeting_id = external,
                    "meeting events: tracking a discovered meeting"
                );
                let _ = self
                    .scheduler
                    .send(Hint::Tracked(event.meeting_id.clone()))
                    .await;
                Ok("tracked")
            }
            Discovered::Known(MeetingStatus::Active) => Ok("ignored"),
            Discovered::Known(_) => Ok("inactive"),
        }
    }

    fn log_rejection(&mut self, rejection: &Rejection) {
        let outcome = rejection.outcome();
        if self.logged.insert(outcome) {
            tracing::warn!(
                outcome,
                error = %rejection,
                "meeting events: a message is not a usable Chime meeting event; deleted (further ones of this kind are logged at debug level)"
            );
        } else {
            tracing::debug!(outcome, error = %rejection, "meeting events: message rejected");
        }
    }

    async fn prune_when_due(&mut self) {
        let now = Instant::now();
        if self
            .pruned_at
            .is_some_and(|t| now.duration_since(t) < PRUNE_EVERY)
        {
            return;
        }
        self.pruned_at = Some(now);
        let Ok(retention) = chrono::TimeDelta::from_std(SEEN_RETENTION) else {
            return;
        };
        match self
            .store
            .forget_meeting_events_before(Utc::now() - retention)
            .await
        {
            Ok(n) if n > 0 => {
                tracing::debug!(deleted = n, "meeting events: old envelope ids deleted")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "meeting events: cannot delete old envelope ids"),
        }
    }
}

/// Whether `text` matches one of `patterns` (`*`, `?`); no pattern matches everything.
pub fn matches_any(patterns: &[String], text: &str) -> bool {
    patterns.is_empty() || patterns.iter().any(|p| crate::glob::glob_matches(p, text))
}

/// The `reason` label of a failed `ReceiveMessage`.
fn receive_failure<E, R>(e: &aws_sdk_sqs::error::SdkError<E, R>) -> &'static str
where
    E: ProvideErrorMetadata,
{
    use aws_sdk_sqs::error::SdkError;
    match e {
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or_default();
            if code.contains("NonExistentQueue") || code.contains("QueueDoesNotExist") {
                "no_such_queue"
            } else if code.contains("AccessDenied")
                || code.contains("InvalidClientTokenId")
                || code.contains("SignatureDoesNotMatch")
                || code.contains("ExpiredToken")
                || code.contains("UnrecognizedClient")
                || code.contains("InvalidSecurity")
            {
                "access_denied"
            } else if code.contains("Throttl") || code.contains("OverLimit") {
                "throttled"
            } else {
                "refused"
            }
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => "transport",
        SdkError::ResponseError(_) => "malformed",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roster_changing_events_are_the_documented_ones() {
        let changing: Vec<&str> = EventType::ALL
            .iter()
            .copied()
            .filter(|t| can_change_roster(*t))
            .map(EventType::name)
            .collect();
        assert_eq!(
            changing,
            [
                "MeetingEnded",
                "AttendeeAdded",
                "AttendeeDeleted",
                "AttendeeCapabilitiesUpdated"
            ]
        );
    }

    #[test]
    fn no_pattern_matches_every_external_meeting_id() {
        assert!(matches_any(&[], "anything"));
        assert!(matches_any(&["prod-*".into()], "prod-42"));
        assert!(!matches_any(&["prod-*".into()], "dev-42"));
        assert!(!matches_any(&["prod-*".into()], ""));
    }
}
