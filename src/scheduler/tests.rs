//! The loop and the poll rules against a roster source without HTTP. The same rules are
//! checked through the real SDK client and the simulator in `tests/`.

use std::sync::Mutex;

use super::*;
use crate::chime::{ChimeError, FetchedRoster, Pause};
use crate::domain::{
    self, Attendee, AttendeeId, Capabilities, EventKind, ExternalUserId, LeftReason, Region, Roster,
};
use crate::store::{MeetingStatus, UnchangedPoll};

fn attendee(i: usize) -> Attendee {
    Attendee {
        attendee_id: AttendeeId::parse(&format!("00000000-0000-0000-0000-{i:012}")).unwrap(),
        external_user_id: ExternalUserId::new(format!("person-{i}")),
        capabilities: Capabilities::DEFAULT,
    }
}

fn error(code: &str, status: u16) -> ChimeError {
    let (code, message, request_id) = (code.to_owned(), String::new(), None);
    match code.as_str() {
        "NotFoundException" => ChimeError::NotFound {
            status,
            code,
            retry_after: None,
            request_id,
            message,
        },
        "ForbiddenException" => ChimeError::Forbidden {
            status,
            code,
            retry_after: None,
            request_id,
            message,
        },
        "ServiceUnavailableException" => ChimeError::Unavailable {
            status,
            code,
            retry_after: None,
            request_id,
            message,
        },
        _ if status == 401 || status == 403 => ChimeError::Denied {
            status,
            code,
            retry_after: None,
            request_id,
            message,
        },
        _ => ChimeError::Refused {
            status,
            code,
            retry_after: None,
            request_id,
            message,
        },
    }
}

/// A scripted roster source: what `ListAttendees`, `GetMeeting` and `GetAttendee` answer.
struct Script {
    roster: Mutex<Result<(Vec<Attendee>, u32), ChimeError>>,
    meeting: Mutex<Result<(), ChimeError>>,
    /// Attendees `GetAttendee` still knows; the others answer NotFound.
    present: Mutex<Vec<Attendee>>,
    attendee_error: Mutex<Option<ChimeError>>,
    fetches: Mutex<usize>,
    confirmations: Mutex<usize>,
}

impl Script {
    fn new(attendees: Vec<Attendee>, pages: u32) -> Self {
        Self {
            present: Mutex::new(attendees.clone()),
            roster: Mutex::new(Ok((attendees, pages))),
            meeting: Mutex::new(Ok(())),
            attendee_error: Mutex::new(None),
            fetches: Mutex::new(0),
            confirmations: Mutex::new(0),
        }
    }
}

impl RosterSource for Script {
    async fn fetch_roster(
        &self,
        _meeting: &MeetingId,
        _region: &Region,
        _pause: &dyn Pause,
    ) -> crate::chime::Result<FetchedRoster> {
        *self.fetches.lock().unwrap() += 1;
        let (attendees, pages) = self.roster.lock().unwrap().clone()?;
        Ok(FetchedRoster {
            roster: Roster::new(attendees),
            pages,
            requests: pages,
            throttled: 0,
        })
    }

    async fn get_meeting(
        &self,
        _meeting: &MeetingId,
        _region: &Region,
    ) -> crate::chime::Result<()> {
        self.meeting.lock().unwrap().clone()
    }

    async fn get_attendee(
        &self,
        _meeting: &MeetingId,
        _region: &Region,
        attendee: &AttendeeId,
    ) -> crate::chime::Result<Attendee> {
        *self.confirmations.lock().unwrap() += 1;
        if let Some(e) = self.attendee_error.lock().unwrap().clone() {
            return Err(e);
        }
        self.present
            .lock()
            .unwrap()
            .iter()
            .find(|a| a.attendee_id == *attendee)
            .cloned()
            .ok_or_else(|| error("NotFoundException", 404))
    }
}

/// A migrated SQLite store in a file of a new temporary directory (dropped with the returned
/// guard), tracking `meetings` meetings. A file, not `sqlite::memory:`: a pool connection
/// closed while a cancelled poll held it is replaced, and a new connection to an in-memory
/// database would open an empty one.
async fn store_with(meetings: usize) -> (Store, Vec<MeetingId>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("roster.db").display());
    let store = Store::connect(&url, 1).await.unwrap();
    store.migrate().await.unwrap();
    let region = Region::parse("us-east-1").unwrap();
    let mut ids = Vec::new();
    for i in 0..meetings {
        let id = MeetingId::parse(&format!("10000000-0000-0000-0000-{i:012}")).unwrap();
        store
            .add_meeting(&id, &region, None, domain::now(), false)
            .await
            .unwrap();
        ids.push(id);
    }
    (store, ids, dir)
}

fn region() -> Region {
    Region::parse("us-east-1").unwrap()
}

/// Polls once with a scripted source, as the scheduler does, bookkeeping written at once.
async fn poll(
    source: &Script,
    store: &Store,
    id: &MeetingId,
    known: Option<Known>,
) -> (PollOutcome, Option<Known>) {
    poll_once(source, store, id, &region(), known).await
}

#[tokio::test]
async fn credential_and_proxy_errors_on_a_live_meeting_end_nothing() {
    let cases = [
        ("AccessDeniedException", 403),
        ("ExpiredTokenException", 403),
        ("InvalidSignatureException", 403),
        ("UnrecognizedClientException", 401),
        ("UnrecognizedClientException", 403),
        (crate::chime::NO_CODE, 404),
        ("ResourceNotFoundException", 404),
    ];
    for (code, status) in cases {
        let (store, ids, _dir) = store_with(1).await;
        let source = Script::new(vec![attendee(1), attendee(2)], 1);
        let (first, known) = poll(&source, &store, &ids[0], None).await;
        assert!(matches!(first, PollOutcome::Changed(_)));
        *source.roster.lock().unwrap() = Err(error(code, status));
        // GetMeeting would even say NotFound: an answer that says nothing about the meeting
        // never reaches the confirmation.
        *source.meeting.lock().unwrap() = Err(error("NotFoundException", 404));
        let mut known = known;
        for _ in 0..20 {
            let (outcome, k) = poll(&source, &store, &ids[0], known).await;
            assert!(
                matches!(outcome, PollOutcome::Failed(_)),
                "{code} {status}: {outcome:?}"
            );
            known = k;
        }
        let m = store.get_meeting(&ids[0]).await.unwrap().unwrap();
        assert_eq!(m.status, MeetingStatus::Active, "{code} {status}");
        assert_eq!(m.last_error_code.as_deref(), Some(code));
        assert_eq!(m.consecutive_failures, 20);
        assert_eq!(store.events_since(0, 100).await.unwrap().len(), 2, "{code}");
    }
}

#[tokio::test]
async fn a_meeting_ends_only_when_get_meeting_confirms_not_found() {
    let (store, ids, _dir) = store_with(1).await;
    let source = Script::new(vec![attendee(1), attendee(2)], 1);
    let (_, known) = poll(&source, &store, &ids[0], None).await;

    *source.roster.lock().unwrap() = Err(error("ForbiddenException", 403));
    let (outcome, known) = poll(&source, &store, &ids[0], known).await;
    let PollOutcome::Failed(f) = outcome else {
        panic!("forbidden while GetMeeting answers 200 is a failed poll");
    };
    assert!(
        f.message.contains("GetMeeting says the meeting exists"),
        "{f}"
    );

    *source.roster.lock().unwrap() = Err(error("NotFoundException", 404));
    *source.meeting.lock().unwrap() = Err(error("ServiceUnavailableException", 503));
    let (outcome, known) = poll(&source, &store, &ids[0], known).await;
    assert!(matches!(outcome, PollOutcome::Failed(_)), "{outcome:?}");
    *source.meeting.lock().unwrap() = Err(error("AccessDeniedException", 403));
    let (outcome, known) = poll(&source, &store, &ids[0], known).await;
    assert!(matches!(outcome, PollOutcome::Failed(_)), "{outcome:?}");
    assert_eq!(
        store.get_meeting(&ids[0]).await.unwrap().unwrap().status,
        MeetingStatus::Active
    );

    *source.meeting.lock().unwrap() = Err(error("NotFoundException", 404));
    let (outcome, _) = poll(&source, &store, &ids[0], known).await;
    let PollOutcome::Ended(events) = outcome else {
        panic!("NotFound confirmed by GetMeeting ends the meeting: {outcome:?}");
    };
    assert_eq!(events.len(), 2);
    assert!(
        events
            .iter()
            .all(|e| e.kind == EventKind::Left && e.reason == Some(LeftReason::MeetingEnded))
    );
}

#[tokio::test]
async fn a_meeting_that_never_answered_is_not_found_in_its_region_never_ended() {
    let (store, ids, _dir) = store_with(1).await;
    let source = Script::new(Vec::new(), 1);
    *source.roster.lock().unwrap() = Err(error("NotFoundException", 404));
    *source.meeting.lock().unwrap() = Err(error("NotFoundException", 404));
    let (outcome, _) = poll(&source, &store, &ids[0], None).await;
    let PollOutcome::Failed(f) = outcome else {
        panic!("{outcome:?}");
    };
    assert!(f.message.contains("not found in region us-east-1"), "{f}");
    let m = store.get_meeting(&ids[0]).await.unwrap().unwrap();
    assert_eq!(m.status, MeetingStatus::Active);
    assert!(
        m.last_error
            .unwrap()
            .contains("not found in region us-east-1")
    );
}

#[tokio::test]
async fn a_departure_from_a_multi_page_roster_is_recorded_only_when_get_attendee_confirms_it() {
    let (store, ids, _dir) = store_with(1).await;
    let everyone: Vec<Attendee> = (1..=5).map(attendee).collect();
    let source = Script::new(everyone.clone(), 2);
    let (_, known) = poll(&source, &store, &ids[0], None).await;

    // Attendee 3 was skipped by the paging, attendee 4 was really deleted.
    let seen: Vec<Attendee> = everyone
        .iter()
        .filter(|a| {
            a.attendee_id != attendee(3).attendee_id && a.attendee_id != attendee(4).attendee_id
        })
        .cloned()
        .collect();
    *source.roster.lock().unwrap() = Ok((seen.clone(), 2));
    source
        .present
        .lock()
        .unwrap()
        .retain(|a| a.attendee_id != attendee(4).attendee_id);
    let (outcome, known) = poll(&source, &store, &ids[0], known).await;
    let PollOutcome::Changed(events) = outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].attendee_id, attendee(4).attendee_id);
    assert_eq!(events[0].reason, Some(LeftReason::Removed));
    assert_eq!(*source.confirmations.lock().unwrap(), 2);
    let snapshot = store.snapshot(&ids[0]).await.unwrap();
    assert_eq!(snapshot.attendees.len(), 4, "the skipped attendee stays");

    // A confirmation that fails fails the poll: no diff at all.
    *source.attendee_error.lock().unwrap() = Some(error("ThrottlingException", 429));
    let with_three_missing: Vec<Attendee> = seen.into_iter().take(2).collect();
    *source.roster.lock().unwrap() = Ok((with_three_missing, 2));
    let (outcome, _) = poll(&source, &store, &ids[0], known).await;
    assert!(matches!(outcome, PollOutcome::Failed(_)), "{outcome:?}");
    assert_eq!(store.events_since(0, 100).await.unwrap().len(), 6);
}

#[tokio::test]
async fn a_one_page_roster_needs_no_confirmation() {
    let (store, ids, _dir) = store_with(1).await;
    let source = Script::new(vec![attendee(1), attendee(2)], 1);
    let (_, known) = poll(&source, &store, &ids[0], None).await;
    *source.roster.lock().unwrap() = Ok((vec![attendee(1)], 1));
    let (outcome, _) = poll(&source, &store, &ids[0], known).await;
    assert!(
        matches!(&outcome, PollOutcome::Changed(e) if e.len() == 1),
        "{outcome:?}"
    );
    assert_eq!(*source.confirmations.lock().unwrap(), 0);
}

#[tokio::test]
async fn unchanged_polls_are_recorded_in_one_batch_by_shutdown() {
    let (store, ids, _dir) = store_with(3).await;
    let source = Arc::new(Script::new(vec![attendee(1)], 1));
    let polls = Arc::new(Mutex::new(HashMap::<MeetingId, usize>::new()));
    let seen = Arc::clone(&polls);
    let opts = SchedulerOptions {
        interval: Duration::from_millis(20),
        jitter: 0.0,
        concurrency: 4,
        failure_backoff_cap: Duration::from_secs(1),
        refresh_every: Duration::from_secs(60),
        shutdown_grace: Duration::from_secs(5),
        strategy: crate::config::PollStrategy::Uniform,
        max_interval: Duration::from_secs(60),
    };
    let scheduler = Scheduler::new(Arc::clone(&source), store.clone(), opts).with_poll_observer(
        move |r: &PollReport<'_>| {
            assert!(r.succeeded(), "{:?}", r.outcome);
            *seen
                .lock()
                .unwrap()
                .entry(r.meeting_id.clone())
                .or_default() += 1;
        },
    );
    let cancel = CancellationToken::new();
    let run = tokio::spawn(scheduler.run(cancel.clone()));
    // Wait for an observed state: every meeting polled a few times. The deadline only keeps
    // a broken loop from hanging the run; a loop that died (the observer's assertion failed)
    // fails at once with its panic.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let enough = {
            let p = polls.lock().unwrap();
            ids.iter().all(|id| p.get(id).copied().unwrap_or(0) >= 5)
        };
        if enough {
            break;
        }
        if run.is_finished() {
            let ended = run.await;
            panic!("the scheduler ended before every meeting was polled five times: {ended:?}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not every meeting was polled five times within a minute: {:?}",
            polls.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cancel.cancel();
    run.await.unwrap();
    let polls = polls.lock().unwrap().clone();
    for id in &ids {
        let recorded = store.get_meeting(id).await.unwrap().unwrap().poll_seq;
        assert_eq!(
            recorded, polls[id] as i64,
            "every poll of {id} is in the bookkeeping"
        );
    }
    assert_eq!(
        store.events_since(0, 100).await.unwrap().len(),
        3,
        "one join each"
    );
}

#[tokio::test]
async fn the_batch_waits_until_it_is_due_then_writes_every_poll_at_once() {
    let (store, ids, _dir) = store_with(3).await;
    let source = Script::new(Vec::new(), 1);
    let mut batch = bookkeeping::Batch::default();
    let now = Instant::now();
    for (slot, id) in ids.iter().enumerate() {
        // A first poll records the empty roster, so the next one is an unchanged poll.
        poll(&source, &store, id, None).await;
        batch.push(
            slot,
            UnchangedPoll {
                meeting_id: id.clone(),
                expected_seq: 1,
                started_at: domain::now(),
                fence: None,
            },
            now,
        );
    }
    assert!(!batch.is_due(now));
    assert!(!batch.is_due(now + BOOKKEEPING_EVERY / 2));
    assert!(batch.is_due(now + BOOKKEEPING_EVERY));
    let written = batch.flush(&store).await;
    assert_eq!(written.len(), 3);
    assert!(written.iter().all(|(_, _, ok)| *ok));
    assert_eq!(batch.len(), 0);
    for id in &ids {
        assert_eq!(store.get_meeting(id).await.unwrap().unwrap().poll_seq, 2);
    }
}

#[tokio::test]
async fn bookkeeping_of_a_meeting_removed_meanwhile_is_refused() {
    let (store, ids, _dir) = store_with(1).await;
    let source = Script::new(vec![attendee(1)], 1);
    let (first, known) = poll(&source, &store, &ids[0], None).await;
    assert!(matches!(first, PollOutcome::Changed(_)));
    let second = poll::poll(
        &source,
        &store,
        &ids[0],
        &region(),
        known,
        Bookkeeping::Deferred,
        None,
        &crate::chime::NoPause,
        &tokio_util::sync::CancellationToken::new(),
    )
    .await;
    assert!(matches!(second.outcome, PollOutcome::Unchanged));
    let record = second.deferred.unwrap();
    assert_eq!(record.expected_seq, 1);
    store.remove_meeting(&ids[0], domain::now()).await.unwrap();
    let recorded = store.record_unchanged_polls(&[record]).await.unwrap();
    assert_eq!(recorded, vec![false]);
}

#[tokio::test]
async fn a_retry_after_too_long_for_the_clock_leaves_the_loop_running() {
    let (store, _ids, _dir) = store_with(2).await;
    let source = Arc::new(Script::new(Vec::new(), 1));
    *source.roster.lock().unwrap() = Err(ChimeError::Unavailable {
        status: 503,
        code: "ServiceUnavailableException".into(),
        retry_after: Some(Duration::MAX),
        request_id: None,
        message: String::new(),
    });
    let opts = SchedulerOptions {
        interval: Duration::from_millis(20),
        jitter: 0.0,
        concurrency: 4,
        failure_backoff_cap: Duration::from_millis(50),
        refresh_every: Duration::from_secs(60),
        shutdown_grace: Duration::from_secs(5),
        strategy: crate::config::PollStrategy::Uniform,
        max_interval: Duration::from_secs(60),
    };
    let scheduler = Scheduler::new(Arc::clone(&source), store.clone(), opts);
    let cancel = CancellationToken::new();
    let run = tokio::spawn(scheduler.run(cancel.clone()));
    // Each meeting fails, waits at most failure_backoff_cap, and is asked again.
    while *source.fetches.lock().unwrap() < 6 {
        assert!(!run.is_finished(), "the scheduler stopped");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cancel.cancel();
    run.await.expect("the scheduler never panics");
}
