//! Only the service ends a meeting, and only a confirmed absence is a departure: answers that
//! say nothing about a meeting (credential errors, a proxy's HTML 404, a `ForbiddenException`
//! while `GetMeeting` still finds the meeting, a confirmation that fails) never end it;
//! offset-like paging never invents a `left`; a failing meeting never stalls its region.
//! Through the real SDK client and the simulator over HTTP, on Postgres and SQLite, and the
//! real binary where an operator would meet it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{TestDb, eventually};
use roster_sync::app::{Daemon, DaemonOptions};
use roster_sync::chime::{ChimeClient, ClientOptions, simulator_sdk_config};
use roster_sync::config::Settings;
use roster_sync::domain::{self, AttendeeId, EventKind, LeftReason, MeetingId, Region};
use roster_sync::scheduler::{PollOutcome, PollReport, poll_once};
use roster_sync::sim::control::Driver;
use roster_sync::sim::{self, Operation, Paging, ScriptedFault, SimConfig, SimHandle};
use roster_sync::store::MeetingStatus;
use tokio_util::sync::CancellationToken;

use common::BIN;

fn region() -> Region {
    Region::parse("us-east-1").unwrap()
}

struct Rig {
    sim: SimHandle,
    client: ChimeClient,
    driver: Driver,
}

async fn rig(cfg: SimConfig, options: impl FnOnce(&str) -> ClientOptions) -> Rig {
    let sim = sim::start(
        "127.0.0.1:0".parse().unwrap(),
        SimConfig {
            exempt_control: true,
            ..cfg
        },
    )
    .await
    .expect("simulator");
    let client = ChimeClient::new(
        simulator_sdk_config(&region()),
        options(&sim.endpoint_url()),
    );
    let driver = Driver::new(client.sdk_client(&region()));
    Rig {
        sim,
        client,
        driver,
    }
}

async fn fast_rig() -> Rig {
    rig(
        SimConfig {
            rate: 1000.0,
            burst: 1000,
            ..SimConfig::default()
        },
        |url| ClientOptions::for_endpoint(url, 1000.0, 1000),
    )
    .await
}

async fn tracked(db: &TestDb, rig: &Rig, attendees: usize) -> MeetingId {
    let id = rig
        .driver
        .create_meeting("endings", "us-east-1")
        .await
        .unwrap();
    rig.driver
        .add_attendees(
            &id,
            (0..attendees).map(|i| (format!("p{i}@example.com"), None)),
        )
        .await
        .unwrap();
    db.store
        .add_meeting(&id, &region(), Some("endings"), domain::now(), false)
        .await
        .unwrap();
    id
}

both_backends!(
    answers_that_say_nothing_about_the_meeting_never_end_it,
    delete_meeting_still_ends_the_meeting_for_everyone_present,
    departures_under_offset_paging_are_exactly_the_real_deletions,
    a_meeting_added_with_the_wrong_region_fails_as_not_found_and_never_ends,
    a_failing_meeting_sleeping_in_retry_after_never_stalls_its_region,
);

/// Each case: what is planted on the live meeting, for 20 consecutive polls.
fn misleading_answers() -> Vec<(&'static str, Vec<ScriptedFault>)> {
    let list = |f: ScriptedFault| f.on(Operation::ListAttendees);
    vec![
        (
            "AccessDeniedException 403",
            vec![list(ScriptedFault::new(403, "AccessDeniedException"))],
        ),
        (
            "ExpiredTokenException 403",
            vec![list(ScriptedFault::new(403, "ExpiredTokenException"))],
        ),
        (
            "InvalidSignatureException 403",
            vec![list(ScriptedFault::new(403, "InvalidSignatureException"))],
        ),
        (
            "UnrecognizedClientException 401",
            vec![list(ScriptedFault::new(401, "UnrecognizedClientException"))],
        ),
        (
            "UnrecognizedClientException 403",
            vec![list(ScriptedFault::new(403, "UnrecognizedClientException"))],
        ),
        (
            "AccessDeniedException with a suffix",
            vec![list(ScriptedFault::new(
                403,
                "AccessDeniedException:http://internal.amazon.com/coral/com.amazon.coral.service/",
            ))],
        ),
        (
            "an HTML 404 without an error type",
            vec![list(ScriptedFault::html(
                404,
                "<html><body><h1>404 Not Found</h1></body></html>",
            ))],
        ),
        ("an untyped 404", vec![list(ScriptedFault::untyped(404))]),
        (
            "ForbiddenException while GetMeeting answers 200",
            vec![list(ScriptedFault::new(403, "ForbiddenException"))],
        ),
        (
            "NotFoundException while GetMeeting answers 503",
            vec![
                list(ScriptedFault::new(404, "NotFoundException")),
                ScriptedFault::new(503, "ServiceUnavailableException").on(Operation::GetMeeting),
            ],
        ),
        (
            "NotFoundException while GetMeeting is denied",
            vec![
                list(ScriptedFault::new(404, "NotFoundException")),
                ScriptedFault::new(403, "AccessDeniedException").on(Operation::GetMeeting),
            ],
        ),
        (
            "ForbiddenException while GetMeeting answers ForbiddenException",
            vec![
                list(ScriptedFault::new(403, "ForbiddenException")),
                ScriptedFault::new(403, "ForbiddenException").on(Operation::GetMeeting),
            ],
        ),
    ]
}

async fn answers_that_say_nothing_about_the_meeting_never_end_it(db: &TestDb) {
    let rig = fast_rig().await;
    for (case, faults) in misleading_answers() {
        let id = tracked(db, &rig, 5).await;
        let region = region();
        let poll = |known| poll_once(&rig.client, &db.store, &id, &region, known);
        let (first, mut known) = poll(None).await;
        assert!(
            matches!(&first, PollOutcome::Changed(e) if e.len() == 5),
            "{case}: {first:?}"
        );
        for f in faults {
            rig.sim.script(&id, f);
        }
        for _ in 0..20 {
            let (outcome, k) = poll(known).await;
            assert!(
                matches!(outcome, PollOutcome::Failed(_)),
                "{case}: {outcome:?}"
            );
            known = k;
        }
        let m = db.store.get_meeting(&id).await.unwrap().unwrap();
        assert_eq!(m.status, MeetingStatus::Active, "{case}");
        assert_eq!(m.consecutive_failures, 20, "{case}");
        assert!(
            m.last_error.is_some() && m.last_error_code.is_some(),
            "{case}: {m:?}"
        );
        let events = db.store.events_for_meeting(&id).await.unwrap();
        assert_eq!(events.len(), 5, "{case}: only the joins: {events:?}");

        // The answers recover: the next real change is recorded, and only it.
        rig.sim.clear_script(&id);
        let gone = rig.driver.attendee_ids(&id).await.unwrap()[0].clone();
        rig.driver.delete_attendee(&id, &gone).await.unwrap();
        let (outcome, _) = poll(known).await;
        let PollOutcome::Changed(events) = outcome else {
            panic!("{case}: {outcome:?}");
        };
        assert_eq!(events.len(), 1, "{case}");
        assert_eq!(
            (events[0].kind, events[0].reason, &events[0].attendee_id),
            (EventKind::Left, Some(LeftReason::Removed), &gone),
            "{case}"
        );
        let m = db.store.get_meeting(&id).await.unwrap().unwrap();
        assert_eq!((m.consecutive_failures, m.last_error), (0, None), "{case}");
    }
}

async fn delete_meeting_still_ends_the_meeting_for_everyone_present(db: &TestDb) {
    let rig = fast_rig().await;
    let id = tracked(db, &rig, 7).await;
    let (_, known) = poll_once(&rig.client, &db.store, &id, &region(), None).await;
    rig.driver.delete_meeting(&id).await.unwrap();
    let (outcome, _) = poll_once(&rig.client, &db.store, &id, &region(), known).await;
    let PollOutcome::Ended(events) = outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(events.len(), 7);
    assert!(
        events
            .iter()
            .all(|e| e.reason == Some(LeftReason::MeetingEnded))
    );
    let m = db.store.get_meeting(&id).await.unwrap().unwrap();
    assert_eq!(m.status, MeetingStatus::Ended);
}

/// 100 polls of a 250-attendee meeting read 100 at a time, with NextToken a position in the
/// live list: before many page requests, attendees already served are deleted, which makes
/// the next page skip a live attendee. Every real deletion is exactly one `left`; nothing
/// else leaves and nobody joins twice.
async fn departures_under_offset_paging_are_exactly_the_real_deletions(db: &TestDb) {
    let rig = rig(
        SimConfig {
            rate: 1000.0,
            burst: 1000,
            paging: Paging::Offset,
            ..SimConfig::default()
        },
        |url| ClientOptions::for_endpoint(url, 1000.0, 1000),
    )
    .await;
    let id = tracked(db, &rig, 250).await;
    let mut known = None;
    for i in 0..100u32 {
        // Most polls have a deletion between two of their page requests.
        if i % 5 != 4 {
            rig.sim
                .delete_before_page(&id, 1, 1)
                .expect("arm a deletion");
        }
        let (outcome, k) = poll_once(&rig.client, &db.store, &id, &region(), known).await;
        assert!(
            matches!(outcome, PollOutcome::Changed(_) | PollOutcome::Unchanged),
            "poll {i}: {outcome:?}"
        );
        known = k;
    }
    // One last poll with no deletion in flight sees the final roster.
    let (_, _) = poll_once(&rig.client, &db.store, &id, &region(), known).await;

    let deleted: BTreeSet<AttendeeId> = rig.sim.hook_deletions(&id).into_iter().collect();
    assert!(deleted.len() >= 70, "{} deletions happened", deleted.len());
    let events = db.store.events_for_meeting(&id).await.unwrap();
    let mut left = BTreeMap::<AttendeeId, usize>::new();
    let mut joined = BTreeMap::<AttendeeId, usize>::new();
    for e in &events {
        match e.kind {
            EventKind::Left => *left.entry(e.attendee_id.clone()).or_default() += 1,
            EventKind::Joined => *joined.entry(e.attendee_id.clone()).or_default() += 1,
            other => panic!("no {other} happened: {e:?}"),
        }
    }
    assert!(left.values().all(|&n| n == 1), "a departure recorded twice");
    assert_eq!(left.keys().cloned().collect::<BTreeSet<_>>(), deleted);
    assert_eq!(joined.len(), 250);
    assert!(joined.values().all(|&n| n == 1), "somebody joined twice");
    let confirmations = rig
        .client
        .counters()
        .attendee_checks
        .load(std::sync::atomic::Ordering::Relaxed);
    let snapshot = db.store.snapshot(&id).await.unwrap();
    assert_eq!(snapshot.attendees.len(), 250 - deleted.len());
    println!(
        "offset paging: {} deletions, {} GetAttendee confirmations over 101 polls",
        deleted.len(),
        confirmations
    );
}

async fn a_meeting_added_with_the_wrong_region_fails_as_not_found_and_never_ends(db: &TestDb) {
    let rig = fast_rig().await;
    // The id exists nowhere the client calls: it has never answered.
    let id = MeetingId::parse(&uuid::Uuid::new_v4().to_string()).unwrap();
    db.store
        .add_meeting(&id, &region(), None, domain::now(), false)
        .await
        .unwrap();
    let mut known = None;
    for _ in 0..5 {
        let (outcome, k) = poll_once(&rig.client, &db.store, &id, &region(), known).await;
        let PollOutcome::Failed(f) = outcome else {
            panic!("{outcome:?}");
        };
        assert!(f.message.contains("not found in region us-east-1"), "{f}");
        known = k;
    }
    let m = db.store.get_meeting(&id).await.unwrap().unwrap();
    assert_eq!(m.status, MeetingStatus::Active);
    assert_eq!(m.last_error_code.as_deref(), Some("NotFoundException"));
    assert_eq!(
        rig.sim.stats().get_meeting.requests,
        0,
        "a meeting that never answered needs no confirmation"
    );
}

/// Two 3-page meetings answer 503 with `Retry-After: 60` beside ten healthy ones at 10
/// requests/s. The failing polls sleep inside their retry (60 s is within `retry.cap`), and
/// while they sleep the healthy meetings keep being polled: a sleeping poll holds no place in
/// the region's page window.
async fn a_failing_meeting_sleeping_in_retry_after_never_stalls_its_region(db: &TestDb) {
    let rig = rig(SimConfig::default(), |url| {
        let mut o = ClientOptions::for_endpoint(url, 10.0, 20);
        o.retry.cap = Duration::from_secs(90);
        o.adaptive = false;
        o
    })
    .await;
    let mut healthy = Vec::new();
    for _ in 0..10 {
        healthy.push(tracked(db, &rig, 3).await);
    }
    let failing = [tracked(db, &rig, 250).await, tracked(db, &rig, 250).await];

    let polls = Arc::new(Mutex::new(BTreeMap::<
        MeetingId,
        Vec<(tokio::time::Instant, bool)>,
    >::new()));
    let seen = Arc::clone(&polls);
    let mut settings = Settings::defaults().unwrap();
    settings.http.listen.clear();
    settings.poll.interval = Duration::from_millis(500);
    settings.poll.jitter = 0.0;
    settings.database.migrate_on_start = false;
    settings.shutdown.grace = Duration::from_secs(1);
    let daemon = Daemon::build(
        &settings,
        Some(db.store.clone()),
        CancellationToken::new(),
        DaemonOptions {
            client: Some(Arc::new(rig.client)),
            poll_observer: Some(Box::new(move |r: &PollReport<'_>| {
                seen.lock()
                    .unwrap()
                    .entry(r.meeting_id.clone())
                    .or_default()
                    .push((r.finished, r.succeeded()));
            })),
            ..DaemonOptions::default()
        },
    )
    .await
    .unwrap();
    let polled_ok = |ids: &[MeetingId]| {
        let p = polls.lock().unwrap();
        ids.iter()
            .map(|id| {
                p.get(id)
                    .map_or(0, |v| v.iter().filter(|(_, ok)| *ok).count())
            })
            .min()
            .unwrap_or(0)
    };
    // Every meeting's cost (pages) is known before the faults begin.
    eventually("a first poll of every meeting", || async {
        polled_ok(&healthy) >= 1 && polled_ok(&failing) >= 1
    })
    .await;
    for id in &failing {
        rig.sim.script(
            id,
            ScriptedFault::new(503, "ServiceUnavailableException").retry_after(60),
        );
    }
    let faults_began = tokio::time::Instant::now();
    let faults = |sim: &SimHandle| sim.stats().list_attendees.faults;
    eventually("two failing polls asleep in their Retry-After", || async {
        faults(&rig.sim) >= 2
    })
    .await;
    let before = polled_ok(&healthy);
    eventually("three more polls of every healthy meeting", || async {
        polled_ok(&healthy) >= before + 3
    })
    .await;
    assert_eq!(
        faults(&rig.sim),
        2,
        "the failing meetings are still asleep in their first Retry-After"
    );
    // What a user feels: how long each healthy meeting waited between successful polls.
    let gaps: Vec<f64> = {
        let p = polls.lock().unwrap();
        healthy
            .iter()
            .flat_map(|id| {
                let times: Vec<_> = p[id]
                    .iter()
                    .filter(|(t, ok)| *ok && *t >= faults_began)
                    .map(|(t, _)| *t)
                    .collect();
                times
                    .windows(2)
                    .map(|w| w[1].duration_since(w[0]).as_secs_f64())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let mean = gaps.iter().sum::<f64>() / gaps.len().max(1) as f64;
    println!(
        "healthy meetings polled every {mean:.3} s on average while two failing meetings slept (interval 0.5 s; ideal sweep 1.0 s at 10 requests/s)"
    );
    daemon.stop().await.unwrap();
}

/// The binary with a clean environment pointed at the simulator.
fn roster_sync(endpoint: &str, database_url: &str, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .envs(common::binary_env())
        .env("ROSTER_SYNC__HTTP__LISTEN", "")
        .env("ROSTER_SYNC__CHIME__ENDPOINT_URL", endpoint)
        .env("DATABASE_URL", database_url)
        .stdin(std::process::Stdio::null());
    cmd
}

async fn output(mut cmd: tokio::process::Command) -> (bool, String) {
    let out = cmd.output().await.expect("run roster-sync");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn meetings_add_checks_the_region_and_force_brings_a_meeting_back() {
    let rig = fast_rig().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("roster.db").display());
    let endpoint = rig.sim.endpoint_url();

    let unknown = uuid::Uuid::new_v4().to_string();
    let (ok, text) = output(roster_sync(&endpoint, &url, &["meetings", "add", &unknown])).await;
    assert!(!ok, "{text}");
    assert!(text.contains("not found in region us-east-1"), "{text}");
    assert!(text.contains("--no-verify"), "{text}");

    let (ok, text) = output(roster_sync(
        &endpoint,
        &url,
        &["meetings", "add", &unknown, "--no-verify"],
    ))
    .await;
    assert!(ok, "{text}");
    assert!(text.contains("now tracked"), "{text}");

    // A live meeting ended by mistake (as a false ending once did) comes back with --force.
    let id = rig
        .driver
        .create_meeting("force", "us-east-1")
        .await
        .unwrap();
    let (ok, text) = output(roster_sync(
        &endpoint,
        &url,
        &["meetings", "add", id.as_str()],
    ))
    .await;
    assert!(ok && text.contains("now tracked"), "{text}");
    let store = roster_sync::store::Store::connect(&url, 1).await.unwrap();
    store
        .end_meeting(&id, 0, domain::now(), None)
        .await
        .unwrap();
    let (ok, text) = output(roster_sync(
        &endpoint,
        &url,
        &["meetings", "add", id.as_str()],
    ))
    .await;
    assert!(!ok && text.contains("--force"), "{text}");
    let (ok, text) = output(roster_sync(
        &endpoint,
        &url,
        &["meetings", "add", id.as_str(), "--force"],
    ))
    .await;
    assert!(ok && text.contains("tracked again"), "{text}");
    assert_eq!(
        store.get_meeting(&id).await.unwrap().unwrap().status,
        MeetingStatus::Active
    );

    // Another region is refused without --force, never silently ignored; with it, it moves.
    let (ok, text) = output(roster_sync(
        &endpoint,
        &url,
        &["meetings", "add", id.as_str(), "--region", "us-west-2"],
    ))
    .await;
    assert!(
        !ok && text.contains("already tracked in region us-east-1"),
        "{text}"
    );
    let (ok, text) = output(roster_sync(
        &endpoint,
        &url,
        &[
            "meetings",
            "add",
            id.as_str(),
            "--region",
            "us-west-2",
            "--force",
        ],
    ))
    .await;
    assert!(ok && text.contains("moved from region us-east-1"), "{text}");

    // `meetings list` shows the failing meeting's error code and message.
    let mut settings = Settings::defaults().unwrap();
    settings.database.url = url.clone();
    settings.http.listen.clear();
    let (outcome, _) = poll_once(
        &rig.client,
        &store,
        &MeetingId::parse(&unknown).unwrap(),
        &region(),
        None,
    )
    .await;
    assert!(matches!(outcome, PollOutcome::Failed(_)));
    let (ok, table) = output(roster_sync(&endpoint, &url, &["meetings", "list"])).await;
    assert!(ok, "{table}");
    let line = table.lines().find(|l| l.starts_with(&unknown)).unwrap();
    assert!(
        line.contains("[NotFoundException]") && line.contains("not found in region"),
        "{line}"
    );
    let (ok, json) = output(roster_sync(
        &endpoint,
        &url,
        &["meetings", "list", "--format", "json"],
    ))
    .await;
    assert!(ok, "{json}");
    let list: serde_json::Value = serde_json::from_str(&json).unwrap();
    let row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["meeting_id"] == unknown.as_str())
        .unwrap();
    assert_eq!(row["last_error_code"], "NotFoundException");
    assert_eq!(row["status"], "active");
}

/// Every meeting of the region is denied, then allowed again, under the real binary: while
/// denied, `roster_sync_region_up` is 0 and only one probe per interval is sent; afterwards
/// every meeting resumes and nothing was invented.
#[tokio::test]
async fn a_region_whose_credentials_are_refused_is_probed_once_per_interval_until_it_recovers() {
    let rig = fast_rig().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("roster.db").display());
    let store = roster_sync::store::Store::connect(&url, 1).await.unwrap();
    store.migrate().await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..4 {
        let id = rig
            .driver
            .create_meeting("breaker", "us-east-1")
            .await
            .unwrap();
        rig.driver
            .add_attendees(&id, (0..3).map(|i| (format!("p{i}"), None)))
            .await
            .unwrap();
        store
            .add_meeting(&id, &region(), None, domain::now(), false)
            .await
            .unwrap();
        ids.push(id);
    }
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let listen = format!("127.0.0.1:{port}");
    let mut daemon = roster_sync(&rig.sim.endpoint_url(), &url, &["run"])
        .env("ROSTER_SYNC__HTTP__LISTEN", &listen)
        .env("ROSTER_SYNC__POLL__INTERVAL", "200ms")
        // No backoff beyond the interval: without the breaker, each failing meeting would be
        // polled every interval, four requests per interval instead of one probe.
        .env("ROSTER_SYNC__POLL__FAILURE_BACKOFF_CAP", "200ms")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let events = || async { store.events_since(0, 10_000).await.unwrap() };
    eventually("every meeting's joins", || async {
        events().await.len() == 12
    })
    .await;

    for id in &ids {
        rig.sim
            .script(id, ScriptedFault::new(403, "AccessDeniedException"));
    }
    eventually("roster_sync_region_up 0", || async {
        metric(&listen, "roster_sync_region_up{region=\"us-east-1\"}").await == Some(0.0)
    })
    .await;
    assert!(get(&listen, "/readyz").await.0 == 503);
    // While denied, the region sends one probe per interval (200 ms), not a poll of each of
    // its 4 meetings. Wait for a few probes (observed), then bound them by the time they took:
    // a slow machine only lowers the count, so the bound cannot be hit by load.
    let (before, since) = (
        rig.sim.stats().list_attendees.requests,
        std::time::Instant::now(),
    );
    eventually("five probes while denied", || async {
        rig.sim.stats().list_attendees.requests >= before + 5
    })
    .await;
    let probes = rig.sim.stats().list_attendees.requests - before;
    let intervals = since.elapsed().as_secs_f64() / 0.2;
    assert!(
        probes as f64 <= intervals.floor() + 2.0,
        "{probes} requests while denied in {intervals:.1} intervals: more than one probe per interval"
    );

    for id in &ids {
        rig.sim.clear_script(id);
    }
    eventually("roster_sync_region_up 1", || async {
        metric(&listen, "roster_sync_region_up{region=\"us-east-1\"}").await == Some(1.0)
    })
    .await;
    let gone = rig.driver.attendee_ids(&ids[3]).await.unwrap()[0].clone();
    rig.driver.delete_attendee(&ids[3], &gone).await.unwrap();
    eventually("the departure after recovery", || async {
        events().await.len() == 13
    })
    .await;
    // Every meeting resumed: each is polled successfully again.
    for id in &ids {
        let seq = store.get_meeting(id).await.unwrap().unwrap().poll_seq;
        eventually("a successful poll of every meeting", || async {
            store.get_meeting(id).await.unwrap().unwrap().poll_seq > seq
        })
        .await;
    }
    let all = events().await;
    assert_eq!(all.len(), 13, "nothing invented: {all:?}");
    assert_eq!(all[12].attendee_id, gone);
    let _ = daemon.start_kill();
    let _ = daemon.wait().await;
}

/// A plain HTTP/1.1 GET: (status, body). 0 when nothing answers.
async fn get(listen: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(listen).await else {
        return (0, String::new());
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: {listen}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

async fn metric(listen: &str, series: &str) -> Option<f64> {
    let (_, body) = get(listen, "/metrics").await;
    body.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
