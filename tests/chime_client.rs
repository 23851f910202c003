//! The real AWS SDK client against the simulator over HTTP on 127.0.0.1.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use roster_sync::chime::{
    ChimeClient, ChimeError, ClientOptions, NoPause, RetryPolicy, RosterSource,
    simulator_sdk_config,
};
use roster_sync::domain::{Capabilities, Capability, MeetingId, Region};
use roster_sync::sim::control::Driver;
use roster_sync::sim::{self, ScriptedFault, SimConfig, SimHandle};

fn region() -> Region {
    Region::parse("us-east-1").unwrap()
}

/// The simulator's default quota (like the real one), pages of `max_results`, fast retries.
fn options(endpoint: &str, max_results: i32) -> ClientOptions {
    ClientOptions {
        max_results,
        retry: RetryPolicy {
            base: Duration::from_millis(20),
            cap: Duration::from_secs(2),
            max_retries: 4,
        },
        ..ClientOptions::for_endpoint(endpoint, 10.0, 20)
    }
}

async fn start_sim(cfg: SimConfig) -> SimHandle {
    sim::start(
        "127.0.0.1:0".parse().unwrap(),
        SimConfig {
            exempt_control: true,
            ..cfg
        },
    )
    .await
    .expect("simulator starts")
}

fn client(sim: &SimHandle, max_results: i32) -> ChimeClient {
    ChimeClient::new(
        simulator_sdk_config(&region()),
        options(&sim.endpoint_url(), max_results),
    )
}

/// Creates a meeting with `n` attendees (every third one audio-receive only) and returns
/// its id, the attendees as (attendee id, external user id, capabilities) sorted, and every
/// JoinToken the service issued.
async fn meeting_with(
    c: &ChimeClient,
    n: usize,
) -> (MeetingId, Vec<(String, String, String)>, Vec<String>) {
    let driver = Driver::new(c.sdk_client(&region()));
    let meeting = driver
        .create_meeting("test-meeting", "us-east-1")
        .await
        .expect("CreateMeeting");
    let listener = Capabilities {
        audio: Capability::Receive,
        video: Capability::None,
        content: Capability::None,
    };
    let people = (0..n).map(|i| {
        (
            format!("user «{i}», \"quoted\" Zoë"),
            (i % 3 == 0).then_some(listener),
        )
    });
    let made = driver
        .add_attendees(&meeting, people)
        .await
        .expect("BatchCreateAttendee");
    let mut created: Vec<(String, String, String)> = made
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let k = if i % 3 == 0 {
                listener
            } else {
                Capabilities::DEFAULT
            };
            (
                a.attendee_id.to_string(),
                a.external_user_id.clone(),
                format!("{}/{}/{}", k.audio, k.video, k.content),
            )
        })
        .collect();
    created.sort();
    (
        meeting,
        created,
        made.into_iter().map(|a| a.join_token).collect(),
    )
}

#[tokio::test]
async fn a_250_attendee_meeting_read_seven_at_a_time_comes_back_complete_and_identical() {
    let sim = start_sim(SimConfig::default()).await;
    let c = client(&sim, 7);
    let (meeting, created, _) = meeting_with(&c, 250).await;
    let fetched = c
        .fetch_roster(&meeting, &region(), &NoPause)
        .await
        .expect("complete roster");
    assert_eq!(fetched.pages, 36, "250 attendees at 7 per page");
    let got: Vec<(String, String, String)> = fetched
        .roster
        .attendees()
        .iter()
        .map(|a| {
            let k = a.capabilities;
            (
                a.attendee_id.to_string(),
                a.external_user_id.to_string(),
                format!("{}/{}/{}", k.audio, k.video, k.content),
            )
        })
        .collect();
    assert_eq!(got, created);
}

#[tokio::test]
async fn an_unknown_meeting_answers_not_found() {
    let sim = start_sim(SimConfig::default()).await;
    let c = client(&sim, 100);
    let unknown = MeetingId::parse(&uuid::Uuid::new_v4().to_string()).unwrap();
    let err = c
        .fetch_roster(&unknown, &region(), &NoPause)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ChimeError::NotFound { status: 404, code, .. } if code == "NotFoundException"),
        "{err:?}"
    );
    assert_eq!(
        sim.stats().list_attendees.requests,
        1,
        "a gone meeting is not retried"
    );
}

#[tokio::test]
async fn a_throttling_storm_still_completes_and_counts_its_throttles() {
    let sim = start_sim(SimConfig {
        rate: 1.0,
        burst: 1,
        ..SimConfig::default()
    })
    .await;
    let mut opts = options(&sim.endpoint_url(), 10);
    opts.retry = RetryPolicy {
        base: Duration::from_millis(100),
        cap: Duration::from_secs(2),
        max_retries: 30,
    };
    let c = ChimeClient::new(simulator_sdk_config(&region()), opts);
    let (meeting, created, _) = meeting_with(&c, 30).await;
    let fetched = c
        .fetch_roster(&meeting, &region(), &NoPause)
        .await
        .expect("completes despite throttling");
    assert_eq!(fetched.roster.len(), created.len());
    let throttled = c
        .counters()
        .throttled
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(throttled > 0, "the storm was observed");
    assert_eq!(throttled, sim.stats().list_attendees.throttled);
    assert!(c.budget(&region()).rate() < 10.0, "the budget slowed down");
}

#[tokio::test]
async fn retry_after_of_a_503_is_honoured() {
    let sim = start_sim(SimConfig::default()).await;
    let c = client(&sim, 100);
    let (meeting, created, _) = meeting_with(&c, 3).await;
    sim.script(
        &meeting,
        ScriptedFault::new(503, "ServiceUnavailableException")
            .on_page(0)
            .times(1)
            .retry_after(1),
    );
    let started = Instant::now();
    let fetched = c
        .fetch_roster(&meeting, &region(), &NoPause)
        .await
        .expect("second attempt succeeds");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited {:?}",
        started.elapsed()
    );
    assert_eq!(fetched.roster.len(), created.len());
    assert_eq!(sim.stats().list_attendees.requests, 2);
}

#[tokio::test]
async fn a_bad_request_is_not_retried() {
    let sim = start_sim(SimConfig::default()).await;
    let c = client(&sim, 100);
    let (meeting, _, _) = meeting_with(&c, 3).await;
    sim.script(&meeting, ScriptedFault::new(400, "BadRequestException"));
    let err = c
        .fetch_roster(&meeting, &region(), &NoPause)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ChimeError::Refused { status: 400, .. }),
        "{err:?}"
    );
    assert_eq!(sim.stats().list_attendees.requests, 1);
}

#[tokio::test]
async fn undocumented_codes_are_classified_by_http_status() {
    let sim = start_sim(SimConfig::default()).await;
    let c = client(&sim, 100);
    let (meeting, _, _) = meeting_with(&c, 3).await;
    sim.script(
        &meeting,
        ScriptedFault::new(400, "ValidationException").times(1),
    );
    let err = c
        .fetch_roster(&meeting, &region(), &NoPause)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ChimeError::Refused { status: 400, code, .. } if code == "ValidationException"),
        "{err:?}"
    );
    sim.script(
        &meeting,
        ScriptedFault::new(502, "BadGatewayException").times(1),
    );
    let fetched = c
        .fetch_roster(&meeting, &region(), &NoPause)
        .await
        .expect("a 5xx with an unknown code is retried");
    assert_eq!(fetched.roster.len(), 3);
}

#[tokio::test]
async fn forbidden_is_reported_as_such_and_never_retried() {
    let sim = start_sim(SimConfig::default()).await;
    let c = client(&sim, 100);
    let (meeting, _, _) = meeting_with(&c, 1).await;
    sim.script(&meeting, ScriptedFault::new(403, "ForbiddenException"));
    let err = c
        .fetch_roster(&meeting, &region(), &NoPause)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ChimeError::Forbidden { status: 403, .. }),
        "{err:?}"
    );
    assert_eq!(sim.stats().list_attendees.requests, 1);
}

#[tokio::test]
async fn a_page_that_keeps_failing_yields_an_error_never_a_partial_roster() {
    let sim = start_sim(SimConfig::default()).await;
    let c = client(&sim, 10);
    let (meeting, _, _) = meeting_with(&c, 25).await;
    sim.script(
        &meeting,
        ScriptedFault::new(500, "ServiceFailureException").on_page(1),
    );
    let err = c
        .fetch_roster(&meeting, &region(), &NoPause)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ChimeError::Unavailable { status: 500, .. }),
        "{err:?}"
    );
    // Page 0 once, then page 1: the first attempt and max_retries (4) retries. Page 0 is
    // never fetched again: a retry repeats only the page that failed.
    assert_eq!(sim.stats().list_attendees.requests, 1 + 5);
}

/// Captures every log line of every target at TRACE.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn trace_logs_of_a_fetch_contain_no_join_token() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let sim = start_sim(SimConfig::default()).await;
    let c = client(&sim, 5);
    let (meeting, _, tokens) = meeting_with(&c, 12).await;
    sim.script(
        &meeting,
        ScriptedFault::new(503, "ServiceUnavailableException")
            .on_page(1)
            .times(1)
            .retry_after(0),
    );
    let fetched = c
        .fetch_roster(&meeting, &region(), &NoPause)
        .await
        .expect("roster");
    assert_eq!(fetched.roster.len(), 12);
    let debug = format!("{fetched:?}");

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.len() > 1000,
        "trace logging was captured ({} bytes)",
        logs.len()
    );
    for t in &tokens {
        assert!(!logs.contains(t.as_str()), "a JoinToken reached the logs");
        assert!(
            !debug.contains(t.as_str()),
            "a JoinToken reached Debug output"
        );
    }
    assert!(!debug.contains("Zoë"), "Debug output hides ExternalUserId");
}

/// The project's own safeguard (`telemetry::filter`), exercised: `LOG_SENSITIVE_BODIES=true`
/// makes the AWS SDK print whole response bodies at trace level, and `ListAttendees` answers
/// carry every attendee's JoinToken; with `RUST_LOG=trace` too, the real daemon's logs still
/// hold none of them.
#[tokio::test]
async fn with_log_sensitive_bodies_set_trace_logs_of_the_daemon_contain_no_join_token() {
    let sim = start_sim(SimConfig::default()).await;
    let c = client(&sim, 5);
    let (meeting, _, tokens) = meeting_with(&c, 6).await;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let url = format!("sqlite://{}", dir.path().join("roster.db").display());
    let binary = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(common::BIN);
        cmd.args(args)
            .env_clear()
            .envs(common::binary_env())
            .env("DATABASE_URL", &url)
            .env("ROSTER_SYNC__HTTP__LISTEN", "")
            .env("ROSTER_SYNC__CHIME__ENDPOINT_URL", sim.endpoint_url())
            .env("ROSTER_SYNC__POLL__INTERVAL", "200ms")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        cmd
    };
    for args in [
        &["migrate"][..],
        &["meetings", "add", meeting.as_str(), "--no-verify"],
    ] {
        let out = binary(args).output().await.expect("run roster-sync");
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
    let before = sim.stats().list_attendees.requests;
    let mut daemon = binary(&["run"])
        .env("RUST_LOG", "trace")
        .env("LOG_SENSITIVE_BODIES", "true")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the daemon");
    let lines = common::collect_stderr(&mut daemon);
    common::eventually("three polls of the meeting", || async {
        sim.stats().list_attendees.requests >= before + 3
    })
    .await;
    let status = common::terminate(&mut daemon).await;
    assert!(status.success(), "{status}");
    let logs = lines.lock().unwrap().join("\n");
    // The SDK did log at trace level (the request pipeline), so the bodies were one
    // directive away from the output.
    assert!(
        logs.contains("aws_smithy_runtime") && logs.contains("TRACE"),
        "the SDK's trace logging was on ({} bytes of logs)",
        logs.len()
    );
    for t in &tokens {
        assert!(!logs.contains(t.as_str()), "a JoinToken reached the logs");
    }
}

#[tokio::test]
async fn a_hung_endpoint_times_out_instead_of_stalling_the_poll() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    let mut opts = options(&format!("http://{addr}"), 100);
    opts.attempt_timeout = Duration::from_millis(300);
    opts.page_timeout = Duration::from_millis(300);
    opts.retry = RetryPolicy {
        base: Duration::from_millis(10),
        cap: Duration::from_millis(50),
        max_retries: 2,
    };
    let c = ChimeClient::new(simulator_sdk_config(&region()), opts);
    let meeting = MeetingId::parse(&uuid::Uuid::new_v4().to_string()).unwrap();
    let started = Instant::now();
    let err = c
        .fetch_roster(&meeting, &region(), &NoPause)
        .await
        .unwrap_err();
    assert!(matches!(err, ChimeError::Transport { .. }), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "gave up after {:?}",
        started.elapsed()
    );
    assert_eq!(
        c.counters()
            .transport
            .load(std::sync::atomic::Ordering::Relaxed),
        3,
        "first attempt and two retries"
    );
    hold.abort();
}

/// Answers every request on `listener` with `response` (a whole HTTP/1.1 response).
fn serve_fixed(listener: tokio::net::TcpListener, response: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut socket, _)) = listener.accept().await {
            let response = response.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let _ = socket.read(&mut buf).await;
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    })
}

#[tokio::test]
async fn a_malformed_answer_fails_the_poll_without_quoting_its_body() {
    let token = "SECRET-JOIN-TOKEN-abcdefghijklmnopqrstuvwxyz0123456789";
    let attendee = |id: &str| {
        format!(
            r#"{{"ExternalUserId":"x1","AttendeeId":"{id}","JoinToken":"{token}","Capabilities":{{"Audio":"SendReceive","Video":"SendReceive","Content":"SendReceive"}}}}"#
        )
    };
    let cases = [
        // Truncated JSON.
        format!(
            r#"{{"Attendees":[{}"#,
            attendee("00000000-0000-0000-0000-000000000001")
        ),
        // Valid JSON, but the attendee id is not a GUID.
        format!(r#"{{"Attendees":[{}]}}"#, attendee("not-a-guid")),
        // Valid JSON, but an unknown capability value.
        format!(
            r#"{{"Attendees":[{}]}}"#,
            attendee("00000000-0000-0000-0000-000000000001")
                .replace("\"Audio\":\"SendReceive\"", "\"Audio\":\"Loud\"")
        ),
    ];
    for body in cases {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let server = serve_fixed(listener, response);
        let c = ChimeClient::new(
            simulator_sdk_config(&region()),
            options(&format!("http://{addr}"), 100),
        );
        let meeting = MeetingId::parse(&uuid::Uuid::new_v4().to_string()).unwrap();
        let err = c
            .fetch_roster(&meeting, &region(), &NoPause)
            .await
            .unwrap_err();
        assert!(matches!(err, ChimeError::Malformed { .. }), "{err:?}");
        assert!(
            !err.to_string().contains(token),
            "the error quotes the body: {err}"
        );
        assert!(!format!("{err:?}").contains(token));
        server.abort();
    }
}

/// Answers the `n`th request on `listener` (from 0) with one attendee and `next_token(n)`
/// as its NextToken. Returns the server task and the number of requests answered.
fn serve_pages(
    listener: tokio::net::TcpListener,
    next_token: fn(u64) -> String,
) -> (
    tokio::task::JoinHandle<()>,
    Arc<std::sync::atomic::AtomicU64>,
) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let served = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&served);
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut socket, _)) = listener.accept().await {
            let n = count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let _ = socket.read(&mut buf).await;
                let body = format!(
                    r#"{{"Attendees":[{{"ExternalUserId":"page-{n}","AttendeeId":"00000000-0000-0000-0000-{n:012}","JoinToken":"t","Capabilities":{{"Audio":"SendReceive","Video":"SendReceive","Content":"SendReceive"}}}}],"NextToken":"{}"}}"#,
                    next_token(n)
                );
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (server, served)
}

/// A service whose NextToken comes back unchanged, and one whose pages never end: the poll
/// fails as malformed and records nothing, not the pages it read before noticing.
#[tokio::test]
async fn a_next_token_loop_and_a_roster_past_the_page_limit_fail_the_poll_as_malformed_recording_nothing()
 {
    type Case = (
        &'static str,
        fn(u64) -> String,
        std::ops::RangeInclusive<u64>,
    );
    let cases: [Case; 2] = [
        ("a NextToken loop", |_| "again".to_owned(), 2..=3),
        // A new token on every page: only the page limit (1000) ends it.
        ("endless pages", |n| format!("page-{n}"), 1000..=1001),
    ];
    for (case, next_token, requests) in cases {
        let db = common::sqlite_db().await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (server, served) = serve_pages(listener, next_token);
        // Pages of one, and a budget that lets a thousand pages through at once.
        let c = ChimeClient::new(
            simulator_sdk_config(&region()),
            ClientOptions {
                max_results: 1,
                ..ClientOptions::for_endpoint(&format!("http://{addr}"), 10_000.0, 2_000)
            },
        );
        let meeting = MeetingId::parse(&uuid::Uuid::new_v4().to_string()).unwrap();
        db.store
            .add_meeting(&meeting, &region(), None, roster_sync::domain::now(), false)
            .await
            .unwrap();
        let (outcome, _) =
            roster_sync::scheduler::poll_once(&c, &db.store, &meeting, &region(), None).await;
        let roster_sync::scheduler::PollOutcome::Failed(failure) = outcome else {
            panic!("{case}: the poll did not fail: {outcome:?}");
        };
        assert_eq!(
            failure.code.as_deref(),
            Some("(malformed answer)"),
            "{case}: {failure:?}"
        );
        let asked = served.load(std::sync::atomic::Ordering::SeqCst);
        assert!(requests.contains(&asked), "{case}: {asked} pages requested");
        for table in ["roster_events", "roster_attendees"] {
            let sql = if table == "roster_events" {
                "SELECT count(*) FROM roster_events"
            } else {
                "SELECT count(*) FROM roster_attendees"
            };
            assert_eq!(db.raw.scalar(sql).await, 0, "{case}: {table} holds rows");
        }
        let m = db.store.get_meeting(&meeting).await.unwrap().unwrap();
        assert_eq!(m.consecutive_failures, 1, "{case}: the failure is recorded");
        server.abort();
        db.finish().await;
    }
}
