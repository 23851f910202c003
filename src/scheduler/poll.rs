//! One poll of one meeting, from fetch to `store.apply`: fetch every page, diff against the
//! recorded snapshot, confirm what needs confirming, record the result in one transaction.
//!
//! It owns the two rules that keep invented facts out of the record:
//! - **A meeting ends only when the service says so about that meeting**: `ListAttendees`
//!   answered `NotFoundException` or `ForbiddenException` for a meeting that answered before
//!   *in the region it is polled in now* (a complete poll recorded after its last region move:
//!   [`Known::answered_here`]), and `GetMeeting` of the same meeting then answered
//!   `NotFoundException`. Every other
//!   answer (another code, no code, an HTML page, a 401, a 403 from `GetMeeting`, throttling,
//!   5xx or a transport error on the confirmation) is a failed poll.
//! - **A departure from a roster that took more than one page is confirmed** with
//!   `GetAttendee` before it is recorded: nothing promises that NextToken is a stable cursor,
//!   and an offset-like cursor skips an attendee when another is deleted between two page
//!   requests. `NotFoundException` confirms the departure; a 200 puts the attendee back into
//!   the roster; anything else fails the poll.
//!
//! **Shutdown cancels everything but the write.** A poll is all or nothing, so a poll whose
//! fetch is interrupted has nothing to save: the snapshot reads, the fetch (its rate-budget
//! waits, its retries and their backoff included) and the `GetMeeting` / `GetAttendee`
//! confirmations are each raced against the poll's cancellation token (a child of the
//! scheduler's), and the poll ends as [`PollOutcome::Cancelled`] having written nothing. The
//! store writes (`apply`, `end_meeting`, `record_failure`) are never raced: once a transaction
//! has begun it is left to commit or roll back, and the scheduler bounds how long it waits for
//! that by `shutdown.grace`.
//!
//! In cluster mode every write carries the lease token the poll was launched with, so a
//! replica that lost the meeting's lease meanwhile writes nothing (see `store/leases.rs`).
//!
//! It never writes outside `store.apply`, `store.end_meeting` and `store.record_failure`,
//! never diffs a partial roster, and knows nothing of queues or timers.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::chime::{ChimeError, NoPause, Operation, Pause, RosterSource};
use crate::diff;
use crate::domain::{self, Attendee, Change, EventKind, Fingerprint, MeetingId, Region, Roster};
use crate::store::{
    ApplyOutcome, LeaseToken, PollRecord, Snapshot, Store, StoredEvent, UnchangedPoll,
};

/// What one poll did. Returned by [`poll_once`]; the loop only schedules around it.
#[derive(Debug)]
pub enum PollOutcome {
    /// The roster equals the snapshot; only the bookkeeping was updated.
    Unchanged,
    /// Changes were recorded.
    Changed(Vec<StoredEvent>),
    /// The service confirmed the meeting is gone: everyone left with `meeting_ended`, status
    /// `ended`.
    Ended(Vec<StoredEvent>),
    /// The snapshot moved under us (the meeting was removed or moved, or another writer
    /// recorded a poll): nothing was written; the next poll starts from the stored snapshot.
    Conflict,
    /// The roster could not be fetched or confirmed, or the database refused: nothing was
    /// recorded but the failure itself.
    Failed(PollFailure),
    /// Shutdown interrupted the poll before it began writing: nothing was recorded.
    Cancelled,
}

/// [`PollOutcome`] without its payload: what metrics, logs and observers need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollKind {
    Unchanged,
    Changed,
    Ended,
    Conflict,
    Failed,
    Cancelled,
}

impl PollKind {
    /// The label of `roster_sync_polls_total{outcome}`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Unchanged => "unchanged",
            Self::Changed => "changed",
            Self::Ended => "ended",
            Self::Conflict => "conflict",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// The roster was fetched completely and recorded (changed or not).
    pub fn succeeded(self) -> bool {
        matches!(self, Self::Unchanged | Self::Changed)
    }
}

impl PollOutcome {
    pub fn kind(&self) -> PollKind {
        match self {
            Self::Unchanged => PollKind::Unchanged,
            Self::Changed(_) => PollKind::Changed,
            Self::Ended(_) => PollKind::Ended,
            Self::Conflict => PollKind::Conflict,
            Self::Failed(_) => PollKind::Failed,
            Self::Cancelled => PollKind::Cancelled,
        }
    }
}

/// Why a poll recorded nothing. Kept as the meeting's `last_error_code` and `last_error`.
#[derive(Debug, Clone)]
pub struct PollFailure {
    /// The service's error code (or a stand-in in parentheses); `None` for a database failure.
    pub code: Option<String>,
    pub message: String,
    /// The earliest the service wants to be asked again (`Retry-After`).
    pub retry_after: Option<Duration>,
    /// `ListAttendees` was refused for credential or authorization reasons: a problem of the
    /// whole account and region, not of this meeting.
    pub denied: bool,
    /// The HTTP status of the service's answer, when there was one.
    pub status: Option<u16>,
    /// The service's request id of the failed request, for AWS support.
    pub request_id: Option<String>,
}

impl PollFailure {
    fn service(op: Operation, e: &ChimeError, context: Option<String>) -> Self {
        let message = match context {
            Some(c) => format!("{}: {e}; {c}", op.as_str()),
            None => format!("{}: {e}", op.as_str()),
        };
        Self {
            code: Some(e.code().to_owned()),
            message,
            retry_after: e.retry_after(),
            denied: op == Operation::ListAttendees && e.is_denied(),
            status: e.status(),
            request_id: e.request_id().map(str::to_owned),
        }
    }

    /// The database failed (counted in `roster_sync_database_errors_total`).
    fn store(message: String) -> Self {
        crate::telemetry::database_error("poll");
        Self::other(message)
    }

    /// A failure that is neither the service's nor the database's (a poll task that panicked).
    pub fn other(message: String) -> Self {
        Self {
            code: None,
            message,
            retry_after: None,
            denied: false,
            status: None,
            request_id: None,
        }
    }
}

impl fmt::Display for PollFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// How long a meeting waits after a failed poll: its own `backoff`, or longer when the
/// service asked for it (`Retry-After`), but never longer than `cap`
/// (`poll.failure_backoff_cap`): a `Retry-After` is the network's word, and any number of
/// seconds can arrive in it.
pub fn next_poll_wait(backoff: Duration, failure: &PollFailure, cap: Duration) -> Duration {
    backoff.max(failure.retry_after.unwrap_or_default().min(cap))
}

/// What the scheduler remembers of a meeting's recorded state between polls: enough to
/// record an unchanged poll without reading the snapshot: a few words instead of a roster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    pub poll_seq: i64,
    pub last_polled_at: Option<chrono::DateTime<chrono::Utc>>,
    pub fingerprint: Fingerprint,
    /// A complete poll was recorded in the region the meeting is tracked in now
    /// ([`Snapshot::answered_in_current_region`]). Only then can a `NotFoundException` mean
    /// that the meeting ended. A region move bumps `poll_seq`, so every write made with a
    /// `Known` from before the move (an ending included) conflicts, and a fresh read follows.
    pub answered_here: bool,
}

impl Known {
    fn of(snapshot: &Snapshot) -> Self {
        Self {
            poll_seq: snapshot.poll_seq,
            last_polled_at: snapshot.last_polled_at,
            fingerprint: domain::fingerprint(&snapshot.attendees),
            answered_here: snapshot.answered_in_current_region(),
        }
    }
}

/// Polls one meeting: fetches the complete roster, diffs it against the recorded snapshot
/// and records the result in one transaction.
///
/// `known` is what the previous poll left behind; with it, an unchanged roster costs no
/// snapshot read, only the bookkeeping UPDATE. Without it (first poll, or after a conflict
/// or a database error) the snapshot is read first. Returns the outcome and what to
/// remember for next time (`None`: re-read the store).
pub async fn poll_once<S: RosterSource>(
    source: &S,
    store: &Store,
    meeting: &MeetingId,
    region: &Region,
    known: Option<Known>,
) -> (PollOutcome, Option<Known>) {
    let polled = poll(
        source,
        store,
        meeting,
        region,
        known,
        Bookkeeping::Now,
        None,
        &NoPause,
        &CancellationToken::new(),
    )
    .await;
    (polled.outcome, polled.known)
}

/// When an unchanged poll's bookkeeping is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Bookkeeping {
    /// By the poll itself (`poll_once`).
    Now,
    /// Handed back to the scheduler, which writes it in a batch.
    Deferred,
}

/// Everything a poll hands back to the scheduler.
pub(super) struct Polled {
    pub outcome: PollOutcome,
    pub known: Option<Known>,
    /// Pages of the complete roster; 0 when none arrived.
    pub pages: u32,
    /// With [`Bookkeeping::Deferred`]: the unchanged poll's bookkeeping, not yet written.
    /// `known` already assumes it will be.
    pub deferred: Option<UnchangedPoll>,
}

impl Polled {
    pub fn plain(outcome: PollOutcome, known: Option<Known>) -> Self {
        Self {
            outcome,
            known,
            pages: 0,
            deferred: None,
        }
    }

    /// Shutdown interrupted the poll; what it knew still holds, since nothing was written.
    fn cancelled(known: Option<Known>) -> Self {
        Self::plain(PollOutcome::Cancelled, known)
    }
}

/// `work`, unless `cancel` fires first (then `None`, and `work` is dropped where it stood:
/// a rate-budget wait, a request in flight, a retry's backoff). Only for steps that write
/// nothing.
async fn unless_cancelled<T>(
    cancel: &CancellationToken,
    work: impl Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        biased;
        () = cancel.cancelled() => None,
        done = work => Some(done),
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "one poll's inputs, each from a different owner (queue, store, claim, shutdown)"
)]
pub(super) async fn poll<S: RosterSource>(
    source: &S,
    store: &Store,
    meeting: &MeetingId,
    region: &Region,
    known: Option<Known>,
    bookkeeping: Bookkeeping,
    fence: Option<LeaseToken>,
    pause: &dyn Pause,
    cancel: &CancellationToken,
) -> Polled {
    let (known, mut snapshot) = match known {
        Some(k) => (k, None),
        None => match unless_cancelled(cancel, store.snapshot(meeting)).await {
            None => return Polled::cancelled(None),
            Some(Ok(s)) => (Known::of(&s), Some(s)),
            Some(Err(e)) => {
                let failed = PollFailure::store(format!("cannot read snapshot: {e}"));
                return Polled::plain(PollOutcome::Failed(failed), None);
            }
        },
    };
    let started_at = domain::now();
    let Some(fetched) = unless_cancelled(cancel, source.fetch_roster(meeting, region, pause)).await
    else {
        return Polled::cancelled(Some(known));
    };
    let fetched = match fetched {
        Ok(f) => f,
        Err(e) => {
            let answered_before = known.answered_here;
            let confirmed = unless_cancelled(
                cancel,
                confirm_end(source, meeting, region, &e, answered_before),
            )
            .await;
            return match confirmed {
                None => Polled::cancelled(Some(known)),
                Some(Ok(())) => {
                    let (outcome, known) = end(store, meeting, known, fence).await;
                    Polled::plain(outcome, known)
                }
                Some(Err(failure)) => failed(store, meeting, failure, known, fence).await,
            };
        }
    };
    let pages = fetched.pages;
    let mut roster = fetched.roster;
    let mut fingerprint = roster.fingerprint();
    let changes = if fingerprint == known.fingerprint {
        Vec::new()
    } else {
        if snapshot.is_none() {
            match unless_cancelled(cancel, store.snapshot(meeting)).await {
                None => return Polled::cancelled(Some(known)),
                Some(Ok(s)) if s.poll_seq == known.poll_seq => snapshot = Some(s),
                Some(Ok(_)) => return Polled::plain(PollOutcome::Conflict, None),
                Some(Err(e)) => {
                    let failed = PollFailure::store(format!("cannot read snapshot: {e}"));
                    return Polled::plain(PollOutcome::Failed(failed), None);
                }
            }
        }
        let previous = snapshot
            .as_ref()
            .map(|s| s.attendees.as_slice())
            .unwrap_or_default();
        let changes = diff::diff(previous, &roster);
        if pages > 1 && changes.iter().any(|c| c.kind == EventKind::Left) {
            // Confirmations spend other operations' budgets: the page window is free meanwhile.
            pause.paused(true);
            let confirmed = unless_cancelled(
                cancel,
                confirm_departures(source, meeting, region, &changes),
            )
            .await;
            pause.paused(false);
            match confirmed {
                None => return Polled::cancelled(Some(known)),
                Some(Ok(present)) if present.is_empty() => changes,
                Some(Ok(present)) => {
                    let skipped = present.len();
                    metrics::counter!("roster_sync_paging_skips_total").increment(skipped as u64);
                    tracing::info!(
                        meeting_id = %meeting,
                        skipped,
                        "attendees missing from a multi-page roster are still present"
                    );
                    let mut all = roster.into_attendees();
                    all.extend(present);
                    roster = Roster::new(all);
                    fingerprint = roster.fingerprint();
                    diff::diff(previous, &roster)
                }
                Some(Err(failure)) => return failed(store, meeting, failure, known, fence).await,
            }
        } else {
            changes
        }
    };
    let next = |poll_seq| Known {
        poll_seq,
        last_polled_at: Some(started_at),
        fingerprint,
        answered_here: true,
    };
    if changes.is_empty() && bookkeeping == Bookkeeping::Deferred {
        return Polled {
            outcome: PollOutcome::Unchanged,
            known: Some(next(known.poll_seq + 1)),
            pages,
            deferred: Some(UnchangedPoll {
                meeting_id: meeting.clone(),
                expected_seq: known.poll_seq,
                started_at,
                fence,
            }),
        };
    }
    let record = PollRecord {
        meeting_id: meeting,
        expected_seq: known.poll_seq,
        started_at,
        observed_at: domain::now(),
        previous_poll_at: known.last_polled_at,
        changes: &changes,
    };
    let (outcome, known) = match store.apply_fenced(record, fence).await {
        Ok(ApplyOutcome::Applied { events, poll_seq }) => {
            let outcome = if events.is_empty() {
                PollOutcome::Unchanged
            } else {
                PollOutcome::Changed(events)
            };
            (outcome, Some(next(poll_seq)))
        }
        Ok(ApplyOutcome::Conflict) => (PollOutcome::Conflict, None),
        Err(e) => (
            PollOutcome::Failed(PollFailure::store(format!("cannot record poll: {e}"))),
            None,
        ),
    };
    Polled {
        outcome,
        known,
        pages,
        deferred: None,
    }
}

/// Notes the failure on the meeting's row (best effort) and hands it back.
/// In cluster mode it is fenced by the lease, as the poll's other writes are.
async fn failed(
    store: &Store,
    meeting: &MeetingId,
    failure: PollFailure,
    known: Known,
    fence: Option<LeaseToken>,
) -> Polled {
    if let Err(db) = store
        .record_failure_fenced(
            meeting,
            failure.code.as_deref(),
            &failure.message,
            domain::now(),
            fence,
        )
        .await
    {
        crate::telemetry::database_error("record_failure");
        tracing::warn!(meeting_id = %meeting, error = %db, "cannot record poll failure");
    }
    Polled::plain(PollOutcome::Failed(failure), Some(known))
}

/// Decides what a failed `ListAttendees` means. `Ok(())` only when the service said the
/// meeting is gone and `GetMeeting` confirmed it; otherwise the failure to record.
async fn confirm_end<S: RosterSource>(
    source: &S,
    meeting: &MeetingId,
    region: &Region,
    error: &ChimeError,
    answered_before: bool,
) -> Result<(), PollFailure> {
    let list = Operation::ListAttendees;
    if !matches!(
        error,
        ChimeError::NotFound { .. } | ChimeError::Forbidden { .. }
    ) {
        return Err(PollFailure::service(list, error, None));
    }
    if !answered_before {
        // A wrong id or a wrong region (also after a move): nothing was recorded in this
        // region, so nothing can end.
        let context = format!(
            "meeting not found in region {region}: it has never answered there; check its id and region"
        );
        return Err(PollFailure::service(list, error, Some(context)));
    }
    match source.get_meeting(meeting, region).await {
        Err(ChimeError::NotFound { .. }) => Ok(()),
        Ok(()) => Err(PollFailure::service(
            list,
            error,
            Some("GetMeeting says the meeting exists, so it has not ended".into()),
        )),
        Err(confirmation) => Err(PollFailure::service(
            list,
            error,
            Some(format!(
                "GetMeeting could not confirm that the meeting ended: {confirmation}"
            )),
        )),
    }
}

/// Asks `GetAttendee` about every attendee that `changes` says left. Returns those the service
/// still has (a paging skip, not a departure); a departure is confirmed only by
/// `NotFoundException`, and any other answer fails the poll.
async fn confirm_departures<S: RosterSource>(
    source: &S,
    meeting: &MeetingId,
    region: &Region,
    changes: &[Change],
) -> Result<Vec<Attendee>, PollFailure> {
    let mut present = Vec::new();
    for change in changes.iter().filter(|c| c.kind == EventKind::Left) {
        match source
            .get_attendee(meeting, region, &change.attendee_id)
            .await
        {
            Ok(attendee) => present.push(attendee),
            Err(ChimeError::NotFound { .. }) => {}
            Err(e) => {
                let context = format!(
                    "cannot confirm that attendee {} left, so nothing is recorded",
                    change.attendee_id
                );
                return Err(PollFailure::service(
                    Operation::GetAttendee,
                    &e,
                    Some(context),
                ));
            }
        }
    }
    Ok(present)
}

/// The service confirmed the meeting is gone: the store closes everyone still in the snapshot
/// with `meeting_ended` and marks the meeting ended, in one transaction.
async fn end(
    store: &Store,
    meeting: &MeetingId,
    known: Known,
    fence: Option<LeaseToken>,
) -> (PollOutcome, Option<Known>) {
    match store
        .end_meeting_fenced(
            meeting,
            known.poll_seq,
            domain::now(),
            known.last_polled_at,
            fence,
        )
        .await
    {
        Ok(ApplyOutcome::Applied { events, .. }) => (PollOutcome::Ended(events), None),
        Ok(ApplyOutcome::Conflict) => (PollOutcome::Conflict, None),
        Err(e) => (
            PollOutcome::Failed(PollFailure::store(format!(
                "cannot record meeting end: {e}"
            ))),
            None,
        ),
    }
}
