//! A `Retry-After` the daemon cannot honour (u64::MAX seconds) on one meeting's 503 must not
//! take the daemon down: the real binary keeps running and keeps polling the meetings beside it.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use roster_sync::domain::{MeetingId, Region};

/// Kills the daemon when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A plain HTTP/1.1 POST of a JSON body: the status.
async fn post_json(listen: &str, path: &str, body: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(listen)
        .await
        .expect("connect to the simulator");
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {listen}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("send");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    String::from_utf8_lossy(&buf)
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Each meeting's `poll_seq`: how many polls of it were recorded.
async fn polls(db: &common::TestDb, ids: &[MeetingId]) -> Vec<i64> {
    let mut out = Vec::new();
    for id in ids {
        let m = db.store.get_meeting(id).await.unwrap().expect("tracked");
        out.push(m.poll_seq);
    }
    out
}

#[tokio::test]
async fn a_retry_after_of_u64_max_seconds_leaves_the_daemon_up_and_the_other_meetings_polled() {
    let (sim, driver) = common::sim_and_driver(100.0).await;
    let db = common::sqlite_db().await;
    let region = Region::parse("us-east-1").unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        let id = driver
            .create_meeting(&format!("m{i}"), "us-east-1")
            .await
            .unwrap();
        driver
            .add_attendees(&id, [(format!("person-{i}"), None)])
            .await
            .unwrap();
        db.store
            .add_meeting(&id, &region, None, roster_sync::domain::now(), false)
            .await
            .unwrap();
        ids.push(id);
    }
    let (bad, good) = (ids[0].clone(), ids[1..].to_vec());
    let endpoint = sim.endpoint_url();
    let listen = endpoint.trim_start_matches("http://").to_owned();
    let fault = format!(
        r#"{{"meeting_id":"{bad}","status":503,"error_type":"ServiceUnavailableException","retry_after":18446744073709551615}}"#
    );
    assert_eq!(post_json(&listen, "/_sim/faults", &fault).await, 204);

    let mut daemon = Running(
        Command::new(common::BIN)
            .arg("run")
            .env_clear()
            .envs(common::binary_env())
            .env("DATABASE_URL", &db.url)
            .env("ROSTER_SYNC__HTTP__LISTEN", "")
            .env("ROSTER_SYNC__CHIME__ENDPOINT_URL", &endpoint)
            .env("ROSTER_SYNC__POLL__INTERVAL", "300ms")
            .env("ROSTER_SYNC__RETRY__BASE", "20ms")
            .env("ROSTER_SYNC__RETRY__CAP", "500ms")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the daemon"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let alive = |d: &mut Running| {
        if let Some(status) = d.0.try_wait().unwrap() {
            panic!("the daemon exited: {status}");
        }
    };
    // The failing meeting is answered with the fault and its failure recorded.
    loop {
        alive(&mut daemon);
        let m = db.store.get_meeting(&bad).await.unwrap().unwrap();
        if m.consecutive_failures >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the fault was never recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(sim.stats().list_attendees.faults >= 1);
    // Afterwards every healthy meeting is polled (and recorded) three more times.
    let before = polls(&db, &good).await;
    loop {
        alive(&mut daemon);
        let now = polls(&db, &good).await;
        if now.iter().zip(&before).all(|(n, b)| *n >= b + 3) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "healthy meetings not polled: {before:?} -> {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    alive(&mut daemon);
}
