//! Criterion benchmarks of the code every poll runs: the diff of two 250-attendee rosters
//! (unchanged, and with 10 % churn), the fingerprint that lets an unchanged poll skip the
//! snapshot, building a [`Roster`] from pages, and fetching a 250-attendee roster (3 pages)
//! through the real [`ChimeClient`]: SDK request building and SigV4 signing, HTTP over
//! loopback, JSON parsing and conversion to domain values.
//!
//! The fetch is served by a canned HTTP responder in this process (a few pre-built responses
//! written to the socket), so it measures the client side, not the simulator; the responder's
//! small cost is included, and so is a `block_on` per iteration. Run with
//! `cargo bench --bench hot_paths`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use roster_sync::chime::{
    ChimeClient, ClientOptions, RetryPolicy, RosterSource, simulator_sdk_config,
};
use roster_sync::diff::diff;
use roster_sync::domain::{
    Attendee, AttendeeId, Capabilities, Capability, ExternalUserId, MeetingId, Region, Roster,
    fingerprint,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ROSTER: usize = 250;

fn guid(n: u64) -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        n as u32,
        (n >> 32) as u16,
        n % 0xfff,
        (n * 7) % 0xfff,
        n.wrapping_mul(0x9e37_79b9_7f4a_7c15) & 0xffff_ffff_ffff
    )
}

fn attendee(n: u64) -> Attendee {
    Attendee {
        attendee_id: AttendeeId::parse(&guid(n)).expect("a valid GUID"),
        external_user_id: ExternalUserId::new(format!("person-{n}@example.com")),
        capabilities: Capabilities::DEFAULT,
    }
}

fn roster(range: std::ops::Range<u64>) -> Roster {
    Roster::new(range.map(attendee).collect())
}

/// 250 attendees, and the same meeting after 25 changes: 9 left, 8 joined, 8 changed
/// capabilities.
fn churned_pair() -> (Vec<Attendee>, Roster) {
    let before = roster(0..ROSTER as u64);
    let mut after: Vec<Attendee> = before.attendees()[9..].to_vec();
    after.extend((1_000..1_008).map(attendee));
    for a in after.iter_mut().take(8) {
        a.capabilities = Capabilities {
            audio: Capability::Receive,
            video: Capability::None,
            content: Capability::None,
        };
    }
    (before.into_attendees(), Roster::new(after))
}

fn pure(c: &mut Criterion) {
    let previous = roster(0..ROSTER as u64);
    let current = roster(0..ROSTER as u64);
    c.bench_function("diff/250_unchanged", |b| {
        b.iter(|| diff(black_box(previous.attendees()), black_box(&current)))
    });
    let (before, after) = churned_pair();
    assert_eq!(diff(&before, &after).len(), 25);
    c.bench_function("diff/250_with_10pct_churn", |b| {
        b.iter(|| diff(black_box(&before), black_box(&after)))
    });
    c.bench_function("fingerprint/250", |b| {
        b.iter(|| fingerprint(black_box(current.attendees())))
    });
    let mut shuffled = current.attendees().to_vec();
    shuffled.shuffle(&mut rand::rngs::StdRng::seed_from_u64(7));
    c.bench_function("roster_new/250_from_pages", |b| {
        b.iter_batched(
            || shuffled.clone(),
            |pages| Roster::new(black_box(pages)),
            BatchSize::SmallInput,
        )
    });
}

/// The JSON body of one ListAttendees page, as the service writes it (JoinToken included).
fn page_body(range: std::ops::Range<u64>, next: Option<&str>) -> String {
    let attendees: Vec<serde_json::Value> = range
        .map(|n| {
            serde_json::json!({
                "ExternalUserId": format!("person-{n}@example.com"),
                "AttendeeId": guid(n),
                "JoinToken": format!("{:0>64}", guid(n).replace('-', "")).repeat(3),
                "Capabilities": {"Audio": "SendReceive", "Video": "SendReceive", "Content": "SendReceive"},
            })
        })
        .collect();
    serde_json::json!({ "Attendees": attendees, "NextToken": next }).to_string()
}

fn http_response(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-amzn-RequestId: {}\r\ncontent-length: {}\r\n\r\n{body}",
        guid(42),
        body.len()
    )
    .into_bytes()
}

/// Serves over keep-alive connections the three pages of a 250-attendee meeting (the page is
/// chosen by the request's `next-token`: none, `p2`, `p3`), or with `small` the one page of a
/// 20-attendee meeting.
async fn canned_server(small: bool) -> std::io::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let pages = Arc::new(if small {
        let page = http_response(&page_body(0..20, None));
        [page.clone(), page.clone(), page]
    } else {
        [
            http_response(&page_body(0..100, Some("p2"))),
            http_response(&page_body(100..200, Some("p3"))),
            http_response(&page_body(200..250, None)),
        ]
    });
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let pages = Arc::clone(&pages);
            tokio::spawn(async move {
                let mut buf = Vec::with_capacity(4096);
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = socket.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    // A GET has no body: each request ends with its headers.
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 4);
                        let page = if head.contains("next-token=p3") {
                            2
                        } else if head.contains("next-token=p2") {
                            1
                        } else {
                            0
                        };
                        if socket.write_all(&pages[page]).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    Ok(format!("http://{addr}"))
}

fn client(runtime: &tokio::runtime::Runtime, region: &Region, small: bool) -> ChimeClient {
    runtime.block_on(async {
        let endpoint = canned_server(small).await.expect("a loopback listener");
        let options = ClientOptions {
            endpoint_url: Some(endpoint),
            max_results: 100,
            connect_timeout: Duration::from_secs(2),
            attempt_timeout: Duration::from_secs(5),
            page_timeout: Duration::from_secs(10),
            retry: RetryPolicy {
                base: Duration::from_millis(10),
                cap: Duration::from_millis(100),
                max_retries: 0,
            },
            requests_per_second: 1e9,
            burst: 1_000_000,
            adaptive: false,
        };
        ChimeClient::new(simulator_sdk_config(region), options)
    })
}

fn fetch(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let region = Region::parse("us-east-1").expect("a region");
    let meeting = MeetingId::parse(&guid(99)).expect("a GUID");
    for (small, name, attendees, pages) in [
        (
            false,
            "fetch_roster/250_attendees_3_pages_sdk_http_json",
            250,
            3,
        ),
        (
            true,
            "fetch_roster/20_attendees_1_page_sdk_http_json",
            20,
            1,
        ),
    ] {
        let client = client(&runtime, &region, small);
        let fetched = runtime
            .block_on(client.fetch_roster(&meeting, &region, &roster_sync::chime::NoPause))
            .expect("the canned roster");
        assert_eq!((fetched.roster.len(), fetched.pages), (attendees, pages));
        c.bench_function(name, |b| {
            // block_on adds a few microseconds per iteration (criterion's async support is
            // not enabled in this crate).
            b.iter(|| {
                runtime.block_on(client.fetch_roster(
                    black_box(&meeting),
                    &region,
                    &roster_sync::chime::NoPause,
                ))
            })
        });
    }
}

criterion_group!(benches, pure, fetch);
criterion_main!(benches);
