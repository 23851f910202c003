//! The simulator at the HTTP level: raw HTTP/1.1 requests over a TcpStream, asserting the
//! status codes, headers and JSON bodies the real Chime SDK Meetings service answers with.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use roster_sync::domain::{AttendeeId, MeetingId};
use roster_sync::sim::{self, Operation, ScriptedFault, SimConfig, SimHandle};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const AUTH: &str = "AWS4-HMAC-SHA256 Credential=test/20240101/us-east-1/chime/aws4_request, \
                    SignedHeaders=host;x-amz-date, Signature=0000";

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }

    fn error_type(&self) -> &str {
        self.header("x-amzn-ErrorType").unwrap_or("")
    }
}

/// One request on a fresh connection; `signed` adds a (fake) SigV4 Authorization header.
async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
    signed: bool,
) -> Reply {
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if signed {
        req.push_str(&format!(
            "Authorization: {AUTH}\r\nX-Amz-Date: 20240101T000000Z\r\n"
        ));
    }
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str("\r\n");
    req.push_str(&body);
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");
    parse_reply(&raw)
}

fn parse_reply(raw: &[u8]) -> Reply {
    let text = String::from_utf8(raw.to_vec()).expect("utf-8 reply");
    let (head, rest) = text.split_once("\r\n\r\n").expect("header end");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

async fn start(cfg: SimConfig) -> SimHandle {
    sim::start("127.0.0.1:0".parse().unwrap(), cfg)
        .await
        .expect("simulator starts")
}

/// Unthrottled, so tests that make many requests measure behaviour, not the quota.
fn unlimited() -> SimConfig {
    SimConfig {
        rate: f64::INFINITY,
        ..SimConfig::default()
    }
}

async fn create_meeting(sim: &SimHandle) -> String {
    let body = json!({"ClientRequestToken": uuid::Uuid::new_v4().to_string(),
                      "MediaRegion": "us-east-1", "ExternalMeetingId": "standup"});
    let r = send(sim.addr(), "POST", "/meetings", Some(&body), true).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["Meeting"]["MeetingId"]
        .as_str()
        .expect("MeetingId")
        .to_owned()
}

async fn create_attendees(sim: &SimHandle, meeting: &str, users: &[String]) -> Vec<Value> {
    let items: Vec<Value> = users.iter().map(|u| json!({"ExternalUserId": u})).collect();
    let path = format!("/meetings/{meeting}/attendees?operation=batch-create");
    let r = send(
        sim.addr(),
        "POST",
        &path,
        Some(&json!({"Attendees": items})),
        true,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["Errors"], json!([]));
    v["Attendees"].as_array().expect("Attendees").clone()
}

async fn list(sim: &SimHandle, meeting: &str, query: &str) -> Reply {
    send(
        sim.addr(),
        "GET",
        &format!("/meetings/{meeting}/attendees{query}"),
        None,
        true,
    )
    .await
}

/// Follows NextToken to the end; returns every page's attendee ids.
async fn list_all(sim: &SimHandle, meeting: &str, max: u32) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let q = match &token {
            Some(t) => format!("?max-results={max}&next-token={t}"),
            None => format!("?max-results={max}"),
        };
        let r = list(sim, meeting, &q).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        let ids = v["Attendees"]
            .as_array()
            .expect("Attendees")
            .iter()
            .map(|a| a["AttendeeId"].as_str().expect("AttendeeId").to_owned())
            .collect();
        pages.push(ids);
        match v.get("NextToken").and_then(Value::as_str) {
            Some(t) => token = Some(t.to_owned()),
            None => return pages,
        }
    }
}

fn users(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("user-{i}")).collect()
}

#[tokio::test]
async fn a_request_without_a_sigv4_authorization_header_is_forbidden() {
    let sim = start(SimConfig::default()).await;
    let meeting = create_meeting(&sim).await;
    let r = send(
        sim.addr(),
        "GET",
        &format!("/meetings/{meeting}/attendees"),
        None,
        false,
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.error_type(), "ForbiddenException");
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["Code"], "Forbidden");
    assert_eq!(v["RequestId"].as_str(), r.header("x-amzn-RequestId"));
    assert_eq!(sim.stats().list_attendees.errors, 1);
}

#[tokio::test]
async fn list_attendees_rejects_max_results_out_of_range() {
    let sim = start(unlimited()).await;
    let meeting = create_meeting(&sim).await;
    for bad in ["0", "101", "-1", "abc", "1.5", ""] {
        let r = list(&sim, &meeting, &format!("?max-results={bad}")).await;
        assert_eq!(r.status, 400, "max-results={bad}: {}", r.body);
        assert_eq!(r.error_type(), "BadRequestException");
        assert_eq!(r.json()["Code"], "BadRequest");
    }
    for good in ["1", "100"] {
        assert_eq!(
            list(&sim, &meeting, &format!("?max-results={good}"))
                .await
                .status,
            200
        );
    }
}

#[tokio::test]
async fn list_attendees_rejects_a_garbage_next_token() {
    let sim = start(unlimited()).await;
    let meeting = create_meeting(&sim).await;
    for bad in ["garbage", "", "00", &"0".repeat(74)] {
        let r = list(&sim, &meeting, &format!("?next-token={bad}")).await;
        assert_eq!(r.status, 400, "next-token={bad}: {}", r.body);
        assert_eq!(r.error_type(), "BadRequestException");
    }
}

#[tokio::test]
async fn list_attendees_rejects_another_meetings_next_token() {
    let sim = start(unlimited()).await;
    let (a, b) = (create_meeting(&sim).await, create_meeting(&sim).await);
    create_attendees(&sim, &a, &users(3)).await;
    let r = list(&sim, &a, "?max-results=1").await;
    let token = r.json()["NextToken"]
        .as_str()
        .expect("NextToken")
        .to_owned();
    assert_eq!(
        list(&sim, &a, &format!("?next-token={token}")).await.status,
        200
    );
    let r = list(&sim, &b, &format!("?next-token={token}")).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.error_type(), "BadRequestException");
}

#[tokio::test]
async fn a_meeting_id_that_is_not_a_guid_is_a_bad_request() {
    let sim = start(unlimited()).await;
    for bad in [
        "not-a-meeting",
        "4f1c7a2e-0b3d-4c5e-9f60-7a8b9c0d1e2",
        "%204f1c7a2e-0b3d-4c5e-9f60-7a8b9c0d1e2f",
    ] {
        for path in [
            format!("/meetings/{bad}/attendees"),
            format!("/meetings/{bad}"),
        ] {
            let r = send(sim.addr(), "GET", &path, None, true).await;
            assert_eq!(r.status, 400, "{path}: {}", r.body);
            assert_eq!(r.error_type(), "BadRequestException");
        }
    }
    let meeting = create_meeting(&sim).await;
    let r = send(
        sim.addr(),
        "GET",
        &format!("/meetings/{meeting}/attendees/nope"),
        None,
        true,
    )
    .await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn an_unknown_meeting_is_not_found() {
    let sim = start(unlimited()).await;
    let unknown = uuid::Uuid::new_v4();
    for (method, path) in [
        ("GET", format!("/meetings/{unknown}/attendees")),
        ("GET", format!("/meetings/{unknown}")),
        ("DELETE", format!("/meetings/{unknown}")),
        (
            "GET",
            format!("/meetings/{unknown}/attendees/{}", uuid::Uuid::new_v4()),
        ),
    ] {
        let r = send(sim.addr(), method, &path, None, true).await;
        assert_eq!(r.status, 404, "{method} {path}: {}", r.body);
        assert_eq!(r.error_type(), "NotFoundException");
        assert_eq!(r.json()["Code"], "NotFound");
    }
    let r = send(
        sim.addr(),
        "POST",
        &format!("/meetings/{unknown}/attendees"),
        Some(&json!({"ExternalUserId": "alice"})),
        true,
    )
    .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn an_unknown_attendee_is_not_found() {
    let sim = start(unlimited()).await;
    let meeting = create_meeting(&sim).await;
    let path = format!("/meetings/{meeting}/attendees/{}", uuid::Uuid::new_v4());
    for method in ["GET", "DELETE"] {
        let r = send(sim.addr(), method, &path, None, true).await;
        assert_eq!(r.status, 404, "{method}: {}", r.body);
        assert_eq!(r.error_type(), "NotFoundException");
    }
}

#[tokio::test]
async fn requests_beyond_the_burst_are_throttled_until_the_rate_is_raised() {
    let sim = start(SimConfig {
        rate: 0.001,
        burst: 3,
        ..SimConfig::default()
    })
    .await;
    let unknown = uuid::Uuid::new_v4();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(
            send(
                sim.addr(),
                "GET",
                &format!("/meetings/{unknown}/attendees"),
                None,
                true,
            )
            .await,
        );
    }
    let codes: Vec<u16> = statuses.iter().map(|r| r.status).collect();
    assert_eq!(codes, [404, 404, 404, 429, 429]);
    assert_eq!(statuses[3].error_type(), "ThrottlingException");
    assert_eq!(statuses[3].json()["Code"], "Throttling");
    let s = sim.stats().list_attendees;
    assert_eq!((s.requests, s.throttled, s.errors), (5, 2, 3));

    // Each operation has its own bucket.
    let r = send(
        sim.addr(),
        "GET",
        &format!("/meetings/{unknown}"),
        None,
        true,
    )
    .await;
    assert_eq!(r.status, 404);

    sim.set_rate(f64::INFINITY, 1).expect("valid quota");
    let r = send(
        sim.addr(),
        "GET",
        &format!("/meetings/{unknown}/attendees"),
        None,
        true,
    )
    .await;
    assert_eq!(r.status, 404, "a raised quota admits again");
    assert!(sim.set_rate(-1.0, 1).is_err());
}

#[tokio::test]
async fn exempt_control_never_throttles_mutations() {
    let sim = start(SimConfig {
        rate: 0.001,
        burst: 1,
        exempt_control: true,
        ..SimConfig::default()
    })
    .await;
    let meeting = create_meeting(&sim).await;
    for u in users(5) {
        let path = format!("/meetings/{meeting}/attendees");
        let r = send(
            sim.addr(),
            "POST",
            &path,
            Some(&json!({"ExternalUserId": u})),
            true,
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert_eq!(list(&sim, &meeting, "").await.status, 200);
    assert_eq!(
        list(&sim, &meeting, "").await.status,
        429,
        "reads stay throttled"
    );
    assert_eq!(sim.stats().create_attendee.throttled, 0);
}

#[tokio::test]
async fn every_response_carries_a_fresh_request_id() {
    let sim = start(unlimited()).await;
    let meeting = create_meeting(&sim).await;
    let attendee = create_attendees(&sim, &meeting, &users(1)).await[0]["AttendeeId"]
        .as_str()
        .unwrap()
        .to_owned();
    let replies = [
        list(&sim, &meeting, "").await,
        list(&sim, &meeting, "?max-results=0").await,
        send(sim.addr(), "GET", "/nowhere", None, true).await,
        send(
            sim.addr(),
            "DELETE",
            &format!("/meetings/{meeting}/attendees/{attendee}"),
            None,
            true,
        )
        .await,
    ];
    assert_eq!(replies[2].status, 404);
    assert_eq!(replies[3].status, 204);
    assert!(replies[3].body.is_empty());
    let ids: HashSet<&str> = replies
        .iter()
        .map(|r| r.header("x-amzn-RequestId").expect("request id"))
        .collect();
    assert_eq!(ids.len(), replies.len(), "request ids are unique");
    assert!(ids.iter().all(|id| roster_sync::domain::is_guid(id)));
}

#[tokio::test]
async fn pages_of_seven_cover_every_attendee_exactly_once() {
    let sim = start(unlimited()).await;
    let meeting = create_meeting(&sim).await;
    let created = create_attendees(&sim, &meeting, &users(24)).await;
    let single = send(
        sim.addr(),
        "POST",
        &format!("/meetings/{meeting}/attendees"),
        Some(&json!({"ExternalUserId": "late «joiner»"})),
        true,
    )
    .await;
    assert_eq!(single.status, 200, "{}", single.body);
    let pages = list_all(&sim, &meeting, 7).await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [7, 7, 7, 4]);
    let mut got: Vec<String> = pages.concat();
    let mut want: Vec<String> = created
        .iter()
        .map(|a| a["AttendeeId"].as_str().unwrap().to_owned())
        .collect();
    want.push(
        single.json()["Attendee"]["AttendeeId"]
            .as_str()
            .unwrap()
            .to_owned(),
    );
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "stable attendee-id order"
    );
    got.sort();
    want.sort();
    assert_eq!(got, want);
}

#[tokio::test]
async fn the_default_page_is_ten_attendees_and_the_last_page_has_no_next_token() {
    let sim = start(unlimited()).await;
    let meeting = create_meeting(&sim).await;
    let v = list(&sim, &meeting, "").await.json();
    assert_eq!(
        v,
        json!({"Attendees": []}),
        "an empty meeting, no NextToken"
    );
    create_attendees(&sim, &meeting, &users(10)).await;
    let v = list(&sim, &meeting, "").await.json();
    assert_eq!(v["Attendees"].as_array().unwrap().len(), 10);
    assert!(v.get("NextToken").is_none(), "exactly full last page");
    create_attendees(&sim, &meeting, &users(11)).await;
    let v = list(&sim, &meeting, "").await.json();
    assert_eq!(v["Attendees"].as_array().unwrap().len(), 10);
    assert!(v["NextToken"].is_string());
}

#[tokio::test]
async fn an_attendee_deleted_between_pages_makes_no_page_skip_anyone() {
    let sim = start(unlimited()).await;
    let meeting = create_meeting(&sim).await;
    create_attendees(&sim, &meeting, &users(12)).await;
    let first = list(&sim, &meeting, "?max-results=5").await.json();
    let page1: Vec<&str> = first["Attendees"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["AttendeeId"].as_str().unwrap())
        .collect();
    for gone in [page1[0], page1[4]] {
        let r = send(
            sim.addr(),
            "DELETE",
            &format!("/meetings/{meeting}/attendees/{gone}"),
            None,
            true,
        )
        .await;
        assert_eq!(r.status, 204);
    }
    let token = first["NextToken"].as_str().unwrap();
    let rest = list(
        &sim,
        &meeting,
        &format!("?max-results=100&next-token={token}"),
    )
    .await
    .json();
    assert_eq!(
        rest["Attendees"].as_array().unwrap().len(),
        7,
        "all 7 attendees after page 1"
    );
}

#[tokio::test]
async fn attendees_carry_join_tokens_and_default_capabilities() {
    let sim = start(unlimited()).await;
    let meeting = create_meeting(&sim).await;
    let a = &create_attendees(&sim, &meeting, &users(1)).await[0];
    assert_eq!(
        a["Capabilities"],
        json!({"Audio": "SendReceive", "Video": "SendReceive", "Content": "SendReceive"})
    );
    let token = a["JoinToken"].as_str().expect("JoinToken");
    assert!(token.len() >= 64, "{token}");
    let listed = list(&sim, &meeting, "").await.json();
    assert_eq!(
        &listed["Attendees"][0], a,
        "ListAttendees returns the same attendee and token"
    );
    let id = a["AttendeeId"].as_str().unwrap();
    let got = send(
        sim.addr(),
        "GET",
        &format!("/meetings/{meeting}/attendees/{id}"),
        None,
        true,
    )
    .await;
    assert_eq!(&got.json()["Attendee"], a);
}

#[tokio::test]
async fn a_duplicate_external_user_id_returns_the_existing_attendee() {
    let sim = start(unlimited()).await;
    let meeting = create_meeting(&sim).await;
    let path = format!("/meetings/{meeting}/attendees");
    let first = send(
        sim.addr(),
        "POST",
        &path,
        Some(&json!({"ExternalUserId": "alice"})),
        true,
    )
    .await;
    let again = send(
        sim.addr(),
        "POST",
        &path,
        Some(&json!({"ExternalUserId": "alice"})),
        true,
    )
    .await;
    assert_eq!(again.status, 200);
    assert_eq!(first.json(), again.json());
    assert_eq!(
        list(&sim, &meeting, "").await.json()["Attendees"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn external_user_ids_are_validated_by_characters_pattern_and_reserved_prefix() {
    let sim = start(unlimited()).await;
    let meeting = create_meeting(&sim).await;
    let path = format!("/meetings/{meeting}/attendees");
    let post = |u: String| {
        let path = path.clone();
        let addr = sim.addr();
        async move {
            send(
                addr,
                "POST",
                &path,
                Some(&json!({"ExternalUserId": u})),
                true,
            )
            .await
        }
    };
    assert_eq!(
        post("é".repeat(64)).await.status,
        200,
        "64 characters, 128 bytes"
    );
    for bad in [
        "é".repeat(65),
        "a".to_owned(),
        "AWS:admin".to_owned(),
        "semi;colon".to_owned(),
    ] {
        let r = post(bad.clone()).await;
        assert_eq!(r.status, 400, "{bad:?}");
        assert_eq!(r.error_type(), "BadRequestException");
    }
    let r = send(sim.addr(), "POST", &path, Some(&json!({})), true).await;
    assert_eq!(r.status, 400, "ExternalUserId is required");
    let r = send(sim.addr(), "POST", &path, None, true).await;
    assert_eq!(r.status, 400, "an empty body lacks ExternalUserId");
}

#[tokio::test]
async fn content_receive_without_video_receive_is_refused_on_create_and_update() {
    let sim = start(unlimited()).await;
    let meeting = create_meeting(&sim).await;
    let path = format!("/meetings/{meeting}/attendees");
    let bad = json!({"Audio": "SendReceive", "Video": "Send", "Content": "Receive"});
    let r = send(
        sim.addr(),
        "POST",
        &path,
        Some(&json!({"ExternalUserId": "bob", "Capabilities": bad})),
        true,
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.error_type(), "BadRequestException");

    let ok = send(
        sim.addr(),
        "POST",
        &path,
        Some(&json!({"ExternalUserId": "bob"})),
        true,
    )
    .await
    .json();
    let id = ok["Attendee"]["AttendeeId"].as_str().unwrap().to_owned();
    let caps_path = format!("/meetings/{meeting}/attendees/{id}/capabilities");
    let r = send(
        sim.addr(),
        "PUT",
        &caps_path,
        Some(&json!({"Capabilities": bad})),
        true,
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);

    let good = json!({"Audio": "Receive", "Video": "None", "Content": "None"});
    let r = send(
        sim.addr(),
        "PUT",
        &caps_path,
        Some(&json!({"Capabilities": good})),
        true,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["Attendee"]["Capabilities"], good);
    let got = send(
        sim.addr(),
        "GET",
        &format!("/meetings/{meeting}/attendees/{id}"),
        None,
        true,
    )
    .await;
    assert_eq!(got.json()["Attendee"]["Capabilities"], good);

    let r = send(
        sim.addr(),
        "PUT",
        &caps_path,
        Some(&json!({"Capabilities": {"Audio": "Loud"}})),
        true,
    )
    .await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn batch_create_reports_invalid_items_in_errors_and_creates_the_rest() {
    let sim = start(unlimited()).await;
    let meeting = create_meeting(&sim).await;
    let body = json!({"Attendees": [
        {"ExternalUserId": "good"},
        {"ExternalUserId": "aws:reserved"},
        {"ExternalUserId": "bad-caps", "Capabilities": {"Audio": "None", "Video": "None", "Content": "SendReceive"}},
    ]});
    let path = format!("/meetings/{meeting}/attendees?operation=batch-create");
    let v = send(sim.addr(), "POST", &path, Some(&body), true)
        .await
        .json();
    assert_eq!(v["Attendees"].as_array().unwrap().len(), 1);
    let errors = v["Errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2);
    assert_eq!(errors[0]["ExternalUserId"], "aws:reserved");
    assert_eq!(errors[0]["ErrorCode"], "BadRequest");
    assert!(
        errors[1]["ErrorMessage"]
            .as_str()
            .unwrap()
            .contains("Video")
    );

    let too_many: Vec<Value> = (0..101)
        .map(|i| json!({"ExternalUserId": format!("u{i}")}))
        .collect();
    let r = send(
        sim.addr(),
        "POST",
        &path,
        Some(&json!({"Attendees": too_many})),
        true,
    )
    .await;
    assert_eq!(r.status, 400);
    let r = send(
        sim.addr(),
        "POST",
        &path,
        Some(&json!({"Attendees": []})),
        true,
    )
    .await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn attendees_beyond_the_limit_are_refused_with_limit_exceeded() {
    let sim = start(SimConfig {
        max_attendees: 3,
        ..unlimited()
    })
    .await;
    let meeting = create_meeting(&sim).await;
    create_attendees(&sim, &meeting, &users(3)).await;
    let path = format!("/meetings/{meeting}/attendees");
    let r = send(
        sim.addr(),
        "POST",
        &path,
        Some(&json!({"ExternalUserId": "one-too-many"})),
        true,
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error_type(), "LimitExceededException");
    let again = send(
        sim.addr(),
        "POST",
        &path,
        Some(&json!({"ExternalUserId": "user-0"})),
        true,
    )
    .await;
    assert_eq!(
        again.status, 200,
        "an existing attendee is returned, not counted again"
    );
}

#[tokio::test]
async fn create_meeting_validates_required_members_and_is_idempotent() {
    let sim = start(unlimited()).await;
    let r = send(
        sim.addr(),
        "POST",
        "/meetings",
        Some(&json!({"MediaRegion": "us-east-1", "ExternalMeetingId": "x1"})),
        true,
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["Message"]
            .as_str()
            .unwrap()
            .contains("ClientRequestToken")
    );
    let r = send(
        sim.addr(),
        "POST",
        "/meetings",
        Some(&json!({"ClientRequestToken": "tok-1", "ExternalMeetingId": "x1"})),
        true,
    )
    .await;
    assert_eq!(r.status, 400);
    let r = send(
        sim.addr(),
        "POST",
        "/meetings",
        Some(&json!("not an object")),
        true,
    )
    .await;
    assert_eq!(r.status, 400);

    let body = json!({"ClientRequestToken": "tok-1", "MediaRegion": "eu-central-1", "ExternalMeetingId": "x1",
                      "MeetingFeatures": {"Audio": {"EchoReduction": "AVAILABLE"}, "Attendee": {"MaxCount": 2}}});
    let a = send(sim.addr(), "POST", "/meetings", Some(&body), true).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let b = send(sim.addr(), "POST", "/meetings", Some(&body), true).await;
    assert_eq!(a.json(), b.json(), "same ClientRequestToken, same meeting");
    let m = &a.json()["Meeting"];
    assert_eq!(m["MediaRegion"], "eu-central-1");
    assert_eq!(m["ExternalMeetingId"], "x1");
    assert_eq!(m["MeetingFeatures"]["Audio"]["EchoReduction"], "AVAILABLE");
    assert!(m["MediaPlacement"]["SignalingUrl"].is_string());
    assert!(
        m["MeetingArn"]
            .as_str()
            .unwrap()
            .starts_with("arn:aws:chime:")
    );

    let id = m["MeetingId"].as_str().unwrap();
    let got = send(sim.addr(), "GET", &format!("/meetings/{id}"), None, true).await;
    assert_eq!(got.json(), a.json());
    // MeetingFeatures.Attendee.MaxCount lowers the attendee limit.
    let path = format!("/meetings/{id}/attendees?operation=batch-create");
    let r = send(sim.addr(), "POST", &path, Some(&json!({"Attendees": [{"ExternalUserId": "a1"}, {"ExternalUserId": "a2"}, {"ExternalUserId": "a3"}]})), true).await;
    assert_eq!(r.error_type(), "LimitExceededException");
}

#[tokio::test]
async fn a_deleted_meeting_answers_not_found_and_keeps_its_attendees_timelines() {
    let sim = start(unlimited()).await;
    let meeting = create_meeting(&sim).await;
    let a = create_attendees(&sim, &meeting, &users(2)).await;
    let ids: Vec<AttendeeId> = a
        .iter()
        .map(|x| AttendeeId::parse(x["AttendeeId"].as_str().unwrap()).unwrap())
        .collect();
    let m = MeetingId::parse(&meeting).unwrap();

    let caps = json!({"Capabilities": {"Audio": "Send", "Video": "None", "Content": "None"}});
    let before_update = chrono::Utc::now();
    let r = send(
        sim.addr(),
        "PUT",
        &format!("/meetings/{meeting}/attendees/{}/capabilities", ids[0]),
        Some(&caps),
        true,
    )
    .await;
    assert_eq!(r.status, 200);
    let r = send(
        sim.addr(),
        "DELETE",
        &format!("/meetings/{meeting}/attendees/{}", ids[0]),
        None,
        true,
    )
    .await;
    assert_eq!(r.status, 204);
    let t0 = sim
        .attendee_timeline(&m, &ids[0])
        .expect("timeline of a deleted attendee");
    let updated = t0.capabilities_updated_at.expect("capabilities changed");
    let deleted = t0.deleted_at.expect("deleted");
    assert!(t0.created_at <= updated && updated <= deleted);
    assert!(updated >= before_update - chrono::Duration::milliseconds(50));

    let t1 = sim.attendee_timeline(&m, &ids[1]).expect("live attendee");
    assert_eq!((t1.capabilities_updated_at, t1.deleted_at), (None, None));

    let r = send(
        sim.addr(),
        "DELETE",
        &format!("/meetings/{meeting}"),
        None,
        true,
    )
    .await;
    assert_eq!(r.status, 204);
    let r = list(&sim, &meeting, "").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_type(), "NotFoundException");
    assert!(
        sim.attendee_timeline(&m, &ids[1])
            .unwrap()
            .deleted_at
            .is_some(),
        "ended with the meeting"
    );
    let other = MeetingId::parse(&uuid::Uuid::new_v4().to_string()).unwrap();
    assert!(sim.attendee_timeline(&other, &ids[1]).is_none());
}

#[tokio::test]
async fn a_scripted_fault_hits_only_its_page_and_only_as_often_as_told() {
    let sim = start(unlimited()).await;
    let meeting = create_meeting(&sim).await;
    create_attendees(&sim, &meeting, &users(12)).await;
    let m = MeetingId::parse(&meeting).unwrap();
    sim.script(
        &m,
        ScriptedFault::new(503, "ServiceUnavailableException")
            .on_page(1)
            .times(2)
            .retry_after(3),
    );

    let first = list(&sim, &meeting, "?max-results=5").await;
    assert_eq!(first.status, 200, "page 0 is untouched");
    let token = first.json()["NextToken"].as_str().unwrap().to_owned();
    let page1 = format!("?max-results=5&next-token={token}");
    for _ in 0..2 {
        let r = list(&sim, &meeting, &page1).await;
        assert_eq!(r.status, 503);
        assert_eq!(r.error_type(), "ServiceUnavailableException");
        assert_eq!(r.header("retry-after"), Some("3"));
    }
    assert_eq!(
        list(&sim, &meeting, &page1).await.status,
        200,
        "spent after two"
    );

    sim.script(&m, ScriptedFault::new(400, "ValidationException"));
    let r = list(&sim, &meeting, "").await;
    assert_eq!((r.status, r.error_type()), (400, "ValidationException"));
    assert_eq!(r.json()["Code"], "Validation");
    sim.clear_script(&m);
    assert_eq!(list(&sim, &meeting, "").await.status, 200);
    assert_eq!(sim.stats().list_attendees.faults, 3);
    assert_eq!(
        sim.stats().get(Operation::ListAttendees),
        sim.stats().list_attendees
    );
}

#[tokio::test]
async fn a_fault_rate_of_one_fails_every_read_but_no_exempt_mutation() {
    let sim = start(SimConfig {
        fault_rate: 1.0,
        exempt_control: true,
        seed: Some(42),
        ..unlimited()
    })
    .await;
    let meeting = create_meeting(&sim).await;
    create_attendees(&sim, &meeting, &users(2)).await;
    let mut seen = HashSet::new();
    for _ in 0..20 {
        let r = list(&sim, &meeting, "").await;
        match r.status {
            500 => assert_eq!(r.error_type(), "ServiceFailureException"),
            503 => {
                assert_eq!(r.error_type(), "ServiceUnavailableException");
                assert_eq!(r.header("retry-after"), Some("1"));
            }
            s => panic!("status {s}"),
        }
        seen.insert(r.status);
    }
    assert_eq!(seen.len(), 2, "both kinds of fault occur");
    let s = sim.stats();
    assert_eq!((s.list_attendees.faults, s.create_meeting.faults), (20, 0));
    assert_eq!(s.total.requests, 22);
}

#[tokio::test]
async fn the_same_seed_issues_the_same_ids_and_join_tokens() {
    let run = || async {
        let sim = start(SimConfig {
            seed: Some(7),
            ..unlimited()
        })
        .await;
        let meeting = create_meeting(&sim).await;
        let a = create_attendees(&sim, &meeting, &users(2)).await;
        sim.shutdown().await.expect("clean shutdown");
        (meeting, a)
    };
    let (first, second) = (run().await, run().await);
    assert_eq!(first, second);
}

#[tokio::test]
async fn latency_delays_every_answer() {
    let sim = start(SimConfig {
        latency: Duration::from_millis(150),
        ..unlimited()
    })
    .await;
    let started = Instant::now();
    let r = send(
        sim.addr(),
        "GET",
        &format!("/meetings/{}", uuid::Uuid::new_v4()),
        None,
        true,
    )
    .await;
    assert_eq!(r.status, 404);
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_unknown_route_is_answered_in_the_service_error_format() {
    let sim = start(unlimited()).await;
    let r = send(sim.addr(), "PATCH", "/meetings", None, true).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_type(), "UnknownOperationException");
    assert!(r.json()["Message"].is_string());
    assert_eq!(sim.stats().total.errors, 1);
}

#[tokio::test]
async fn endpoint_url_names_the_bound_loopback_port_and_shutdown_stops_serving() {
    let sim = sim::start("0.0.0.0:0".parse().unwrap(), SimConfig::default())
        .await
        .expect("starts");
    let port = sim.addr().port();
    assert_ne!(port, 0);
    assert_eq!(sim.endpoint_url(), format!("http://127.0.0.1:{port}"));
    let addr = sim.addr();
    sim.shutdown().await.expect("clean shutdown");
    assert!(
        TcpStream::connect(("127.0.0.1", port)).await.is_err(),
        "{addr} still accepts"
    );
}

/// Lists every page of `meeting` `max` at a time, arming nothing; returns the ids served.
async fn served_ids(sim: &SimHandle, meeting: &str, max: u32) -> Vec<String> {
    list_all(sim, meeting, max).await.concat()
}

async fn live_ids(sim: &SimHandle, meeting: &str) -> HashSet<String> {
    served_ids(sim, meeting, 100).await.into_iter().collect()
}

#[tokio::test]
async fn offset_paging_skips_a_live_attendee_after_a_deletion_between_pages() {
    let sim = start(SimConfig {
        paging: sim::Paging::Offset,
        ..unlimited()
    })
    .await;
    let meeting = create_meeting(&sim).await;
    create_attendees(&sim, &meeting, &users(12)).await;
    let m = MeetingId::parse(&meeting).unwrap();
    let before = served_ids(&sim, &meeting, 100).await;
    sim.delete_before_page(&m, 1, 1).unwrap();
    assert_eq!(sim.pending_hooks(&m), 1);

    let served = served_ids(&sim, &meeting, 5).await;

    assert_eq!(sim.pending_hooks(&m), 0, "the hook fired");
    let deleted = sim.hook_deletions(&m);
    assert_eq!(
        deleted.iter().map(AttendeeId::as_str).collect::<Vec<_>>(),
        vec![before[0].as_str()],
        "the first attendee of page 0"
    );
    assert!(
        sim.attendee_timeline(&m, &deleted[0])
            .unwrap()
            .deleted_at
            .is_some()
    );
    let live = live_ids(&sim, &meeting).await;
    assert_eq!(live.len(), 11);
    let missed: Vec<&String> = live.iter().filter(|id| !served.contains(id)).collect();
    assert_eq!(
        missed,
        vec![&before[5]],
        "the first attendee of page 1 slid onto page 0 and was never served"
    );
}

#[tokio::test]
async fn keyset_paging_serves_every_live_attendee_despite_a_deletion_between_pages() {
    let sim = start(unlimited()).await;
    let meeting = create_meeting(&sim).await;
    create_attendees(&sim, &meeting, &users(12)).await;
    let m = MeetingId::parse(&meeting).unwrap();
    sim.delete_before_page(&m, 1, 3).unwrap();
    sim.delete_before_page(&m, 2, 1).unwrap();

    let served = served_ids(&sim, &meeting, 5).await;

    assert_eq!(sim.pending_hooks(&m), 0);
    assert_eq!(sim.hook_deletions(&m).len(), 4);
    let live = live_ids(&sim, &meeting).await;
    assert_eq!(live.len(), 8);
    assert!(live.iter().all(|id| served.contains(id)), "none skipped");
    assert_eq!(served.len(), 12, "each attendee served exactly once");
}

#[tokio::test]
async fn an_offset_next_token_is_opaque_and_bound_to_its_meeting() {
    let sim = start(SimConfig {
        paging: sim::Paging::Offset,
        ..unlimited()
    })
    .await;
    let (a, b) = (create_meeting(&sim).await, create_meeting(&sim).await);
    create_attendees(&sim, &a, &users(3)).await;
    let first = list(&sim, &a, "?max-results=2").await.json();
    let token = first["NextToken"]
        .as_str()
        .expect("a second page")
        .to_owned();
    let r = list(&sim, &b, &format!("?next-token={token}")).await;
    assert_eq!((r.status, r.error_type()), (400, "BadRequestException"));
    let r = list(
        &sim,
        &a,
        &format!("?next-token={}", &token[..token.len() - 2]),
    )
    .await;
    assert_eq!(r.status, 400);
    let rest = list(&sim, &a, &format!("?next-token={token}")).await.json();
    assert_eq!(rest["Attendees"].as_array().unwrap().len(), 1);
    assert!(rest.get("NextToken").is_none());
}

/// A meeting with one attendee, and the path of each read operation on them.
async fn read_paths(sim: &SimHandle) -> (MeetingId, Vec<(Operation, String)>) {
    let meeting = create_meeting(sim).await;
    let a = create_attendees(sim, &meeting, &users(1)).await;
    let attendee = a[0]["AttendeeId"].as_str().unwrap();
    let paths = vec![
        (
            Operation::ListAttendees,
            format!("/meetings/{meeting}/attendees"),
        ),
        (Operation::GetMeeting, format!("/meetings/{meeting}")),
        (
            Operation::GetAttendee,
            format!("/meetings/{meeting}/attendees/{attendee}"),
        ),
    ];
    (MeetingId::parse(&meeting).unwrap(), paths)
}

async fn get(sim: &SimHandle, path: &str) -> Reply {
    send(sim.addr(), "GET", path, None, true).await
}

#[tokio::test]
async fn scripted_faults_answer_any_status_and_error_type_on_each_read_operation() {
    let sim = start(unlimited()).await;
    let (m, paths) = read_paths(&sim).await;
    let coral = "http://internal.amazon.com/coral/com.amazon.coral.service/";
    let cases = [
        (
            403,
            format!("AccessDeniedException:{coral}"),
            "AccessDenied",
        ),
        (403, "ExpiredTokenException".to_owned(), "ExpiredToken"),
        (
            403,
            "InvalidSignatureException".to_owned(),
            "InvalidSignature",
        ),
        (
            401,
            "UnrecognizedClientException".to_owned(),
            "UnrecognizedClient",
        ),
        (
            403,
            format!("UnrecognizedClientException:{coral}"),
            "UnrecognizedClient",
        ),
        (403, "ForbiddenException".to_owned(), "Forbidden"),
        (404, "NotFoundException".to_owned(), "NotFound"),
        (
            503,
            "ServiceUnavailableException".to_owned(),
            "ServiceUnavailable",
        ),
        (429, "ThrottlingException".to_owned(), "Throttling"),
        (418, "TeapotException".to_owned(), "Teapot"),
        (400, "SomethingNew".to_owned(), "SomethingNew"),
    ];
    for (op, path) in &paths {
        for (status, error_type, code) in &cases {
            sim.script(
                &m,
                ScriptedFault::new(*status, error_type.clone())
                    .on(*op)
                    .times(1),
            );
            let r = get(&sim, path).await;
            let what = format!("{op:?} {status} {error_type}");
            assert_eq!(r.status, *status, "{what}");
            assert_eq!(r.error_type(), error_type, "{what}: sent verbatim");
            assert_eq!(r.header("content-type"), Some("application/json"), "{what}");
            assert!(r.header("retry-after").is_none(), "{what}");
            let body = r.json();
            assert_eq!(body["Code"], *code, "{what}");
            assert!(body["Message"].is_string(), "{what}");
            assert_eq!(
                body["RequestId"].as_str(),
                r.header("x-amzn-RequestId"),
                "{what}"
            );
            assert_eq!(get(&sim, path).await.status, 200, "{what}: spent");
        }
    }
    let faults = cases.len() as u64;
    let stats = sim.stats();
    for op in [
        Operation::ListAttendees,
        Operation::GetMeeting,
        Operation::GetAttendee,
    ] {
        assert_eq!(stats.get(op).faults, faults, "{op:?}");
    }
}

#[tokio::test]
async fn an_untyped_fault_sends_no_error_type_and_no_code() {
    let sim = start(unlimited()).await;
    let (m, paths) = read_paths(&sim).await;
    for (op, path) in &paths {
        sim.script(
            &m,
            ScriptedFault::untyped(403)
                .on(*op)
                .with_message("User is not authorized")
                .times(1),
        );
        let r = get(&sim, path).await;
        assert_eq!(r.status, 403, "{op:?}");
        assert!(r.header("x-amzn-ErrorType").is_none(), "{op:?}");
        let body = r.json();
        assert!(body.get("Code").is_none(), "{op:?}: {body}");
        assert_eq!(body["Message"], "User is not authorized");
        assert!(body["RequestId"].is_string());
    }
}

#[tokio::test]
async fn an_html_fault_answers_a_proxy_page_without_an_error_type() {
    let sim = start(unlimited()).await;
    let (m, paths) = read_paths(&sim).await;
    let page = "<html><body><h1>404 Not Found</h1></body></html>";
    for (op, path) in &paths {
        sim.script(&m, ScriptedFault::html(404, page).on(*op).times(1));
        let r = get(&sim, path).await;
        assert_eq!(r.status, 404, "{op:?}");
        assert!(r.header("x-amzn-ErrorType").is_none(), "{op:?}");
        assert!(
            r.header("content-type")
                .is_some_and(|t| t.starts_with("text/html")),
            "{op:?}"
        );
        assert_eq!(r.body, page, "{op:?}");
    }
}

#[tokio::test]
async fn a_typed_fault_can_carry_a_body_without_code_or_an_html_page() {
    let sim = start(unlimited()).await;
    let (m, paths) = read_paths(&sim).await;
    let (_, get_meeting) = &paths[1];
    sim.script(
        &m,
        ScriptedFault::new(403, "AccessDeniedException")
            .on(Operation::GetMeeting)
            .with_body(sim::FaultBody::JsonWithoutCode)
            .times(1),
    );
    let r = get(&sim, get_meeting).await;
    assert_eq!(r.error_type(), "AccessDeniedException");
    assert!(r.json().get("Code").is_none());
    sim.script(
        &m,
        ScriptedFault::new(502, "BadGateway")
            .on(Operation::GetMeeting)
            .with_body(sim::FaultBody::Html("<p>bad gateway</p>".into()))
            .times(1),
    );
    let r = get(&sim, get_meeting).await;
    assert_eq!((r.status, r.error_type()), (502, "BadGateway"));
    assert_eq!(r.body, "<p>bad gateway</p>");
}

#[tokio::test]
async fn retry_after_is_sent_on_a_scripted_429_as_on_a_503_on_every_read() {
    let sim = start(unlimited()).await;
    let (m, paths) = read_paths(&sim).await;
    for (op, path) in &paths {
        for (status, error_type) in [
            (429, "ThrottlingException"),
            (503, "ServiceUnavailableException"),
        ] {
            sim.script(
                &m,
                ScriptedFault::new(status, error_type)
                    .on(*op)
                    .retry_after(7)
                    .times(1),
            );
            let r = get(&sim, path).await;
            assert_eq!((r.status, r.error_type()), (status, error_type), "{op:?}");
            assert_eq!(r.header("retry-after"), Some("7"), "{op:?} {status}");
        }
        sim.script(
            &m,
            ScriptedFault::html(503, "<h1>down</h1>")
                .on(*op)
                .retry_after(2)
                .times(1),
        );
        let r = get(&sim, path).await;
        assert_eq!(r.header("retry-after"), Some("2"), "{op:?} html");
    }
}

#[tokio::test]
async fn a_fault_hits_only_its_own_operation_and_a_paged_fault_only_list_attendees() {
    let sim = start(unlimited()).await;
    let (m, paths) = read_paths(&sim).await;
    sim.script(
        &m,
        ScriptedFault::new(403, "AccessDeniedException").on(Operation::GetMeeting),
    );
    sim.script(
        &m,
        ScriptedFault::new(500, "ServiceFailureException")
            .on(Operation::GetAttendee)
            .on_page(0),
    );
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for (_, path) in &paths {
            v.push(get(&sim, path).await.status);
        }
        v
    };
    assert_eq!(statuses, vec![200, 403, 200]);
    sim.clear_script(&m);
    assert_eq!(get(&sim, &paths[1].1).await.status, 200);
}

#[tokio::test]
async fn a_scripted_fault_on_a_mutation_answers_before_anything_changes() {
    let sim = start(unlimited()).await;
    let (m, paths) = read_paths(&sim).await;
    let (_, attendee_path) = &paths[2];
    sim.script(
        &m,
        ScriptedFault::new(503, "ServiceUnavailableException")
            .on(Operation::DeleteAttendee)
            .times(1),
    );
    let r = send(sim.addr(), "DELETE", attendee_path, None, true).await;
    assert_eq!(r.status, 503);
    assert_eq!(get(&sim, attendee_path).await.status, 200, "still there");
    let r = send(sim.addr(), "DELETE", attendee_path, None, true).await;
    assert_eq!(r.status, 204);
}

#[tokio::test]
async fn get_meeting_and_get_attendee_answer_not_found_once_deleted() {
    let sim = start(unlimited()).await;
    let (_, paths) = read_paths(&sim).await;
    let (_, meeting_path) = &paths[1];
    let (_, attendee_path) = &paths[2];
    let r = send(sim.addr(), "DELETE", attendee_path, None, true).await;
    assert_eq!(r.status, 204);
    let r = get(&sim, attendee_path).await;
    assert_eq!((r.status, r.error_type()), (404, "NotFoundException"));
    assert_eq!(r.json()["Code"], "NotFound");
    assert_eq!(get(&sim, meeting_path).await.status, 200);

    let r = send(sim.addr(), "DELETE", meeting_path, None, true).await;
    assert_eq!(r.status, 204);
    for path in [meeting_path, attendee_path] {
        let r = get(&sim, path).await;
        assert_eq!(
            (r.status, r.error_type()),
            (404, "NotFoundException"),
            "{path}"
        );
        assert_eq!(r.json()["Code"], "NotFound");
    }
}

#[tokio::test]
async fn the_aws_sdk_reads_each_fault_shape_as_the_real_service_would_send_it() {
    use aws_sdk_chimesdkmeetings as chime;
    use chime::error::ProvideErrorMetadata as _;
    let sim = start(unlimited()).await;
    let (m, _) = read_paths(&sim).await;
    let sdk = roster_sync::chime::simulator_sdk_config(
        &roster_sync::domain::Region::parse("us-east-1").unwrap(),
    );
    let client = chime::Client::from_conf(
        chime::config::Builder::from(&sdk)
            .endpoint_url(sim.endpoint_url())
            .retry_config(chime::config::retry::RetryConfig::disabled())
            .build(),
    );
    let faults = [
        (
            ScriptedFault::new(
                403,
                "AccessDeniedException:http://internal.amazon.com/coral/com.amazon.coral.service/",
            ),
            Some("AccessDeniedException"),
        ),
        (
            ScriptedFault::new(429, "ThrottlingException"),
            Some("ThrottlingException"),
        ),
        (ScriptedFault::untyped(403), None),
        (
            ScriptedFault::html(404, "<html><body><h1>404 Not Found</h1></body></html>"),
            None,
        ),
    ];
    for (fault, code) in faults {
        let status = fault.status;
        sim.script(&m, fault.on(Operation::GetMeeting).times(1));
        let err = client
            .get_meeting()
            .meeting_id(m.as_str())
            .send()
            .await
            .expect_err("a scripted fault");
        assert_eq!(err.code(), code, "{status}: {err:?}");
        let raw = err.raw_response().expect("an HTTP answer");
        assert_eq!(raw.status().as_u16(), status);
    }
    sim.script(
        &m,
        ScriptedFault::new(404, "NotFoundException").on(Operation::GetMeeting),
    );
    let err = client
        .get_meeting()
        .meeting_id(m.as_str())
        .send()
        .await
        .expect_err("a scripted fault")
        .into_service_error();
    assert!(err.is_not_found_exception(), "{err:?}");
}

#[tokio::test]
async fn the_control_endpoint_plants_and_clears_faults_without_a_signature() {
    let sim = start(unlimited()).await;
    let (m, paths) = read_paths(&sim).await;
    let (_, get_meeting) = &paths[1];
    let spec = json!({
        "meeting_id": m.as_str(), "operation": "GetMeeting", "status": 429,
        "error_type": "ThrottlingException", "retry_after": 4, "times": 1
    });
    let r = send(sim.addr(), "POST", "/_sim/faults", Some(&spec), false).await;
    assert_eq!(r.status, 204, "{}", r.body);
    let r = get(&sim, get_meeting).await;
    assert_eq!((r.status, r.error_type()), (429, "ThrottlingException"));
    assert_eq!(r.header("retry-after"), Some("4"));
    assert_eq!(get(&sim, get_meeting).await.status, 200, "spent");

    let html = json!({"meeting_id": m.as_str(), "status": 404, "body": "html",
                      "html": "<h1>404 Not Found</h1>"});
    let r = send(sim.addr(), "POST", "/_sim/faults", Some(&html), false).await;
    assert_eq!(r.status, 204, "{}", r.body);
    let (_, list_path) = &paths[0];
    assert_eq!(get(&sim, list_path).await.body, "<h1>404 Not Found</h1>");
    let clear = format!("/_sim/faults/{}", m.as_str());
    let r = send(sim.addr(), "DELETE", &clear, None, false).await;
    assert_eq!(r.status, 204);
    assert_eq!(get(&sim, list_path).await.status, 200, "cleared");

    let bad = json!({"meeting_id": m.as_str(), "status": 500, "operation": "Nope"});
    let r = send(sim.addr(), "POST", "/_sim/faults", Some(&bad), false).await;
    assert_eq!((r.status, r.error_type()), (400, "BadRequestException"));
    let stats = sim.stats();
    assert_eq!(
        stats.total.requests,
        stats.get(Operation::CreateMeeting).requests
            + stats.get(Operation::BatchCreateAttendee).requests
            + stats.get(Operation::GetMeeting).requests
            + stats.get(Operation::ListAttendees).requests,
        "control requests are not counted"
    );
    let r = send(sim.addr(), "GET", "/_sim/stats", None, false).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let served: roster_sync::sim::SimStats = serde_json::from_str(&r.body).expect("stats JSON");
    assert_eq!(
        served,
        sim.stats(),
        "the counters, as the handle reads them"
    );
    assert!(served.list_attendees.requests > 0 && served.get_meeting.faults >= 1);
}
