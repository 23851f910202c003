//! What a log pipeline and Prometheus see of the real `roster-sync run` polling the simulator:
//! JSON log lines whose poll facts (`meeting_id`, `region`, `outcome`, `status`, `request_id`)
//! are fields, a startup line naming the version, database kind, regions and rate, no colour
//! escapes off a terminal; and a `/metrics` page that a strict text-format parser accepts, where
//! every metric has HELP and TYPE and the `roster_sync_` prefix, and the counters move while the
//! daemon polls.
//!
//! The simulator runs in the test's runtime, so the binary is driven with `tokio::process`.

mod common;

use common::{collect_stderr as collect_lines, eventually, get};

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Mutex;

use roster_sync::domain::MeetingId;
use roster_sync::sim::ScriptedFault;
use serde_json::Value;
use tokio::process::{Child, Command};

use common::BIN;

/// The binary with a clean environment, polling every 300 ms, talking to `endpoint`.
fn roster_sync(args: &[&str], endpoint: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .envs(common::binary_env())
        .env("ROSTER_SYNC__HTTP__LISTEN", "")
        .env("ROSTER_SYNC__CHIME__ENDPOINT_URL", endpoint)
        .env("ROSTER_SYNC__POLL__INTERVAL", "300ms")
        .env("ROSTER_SYNC__RETRY__BASE", "20ms")
        .env("ROSTER_SYNC__RETRY__CAP", "500ms")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

async fn ok(cmd: &mut Command) {
    let out = cmd.output().await.expect("run roster-sync");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn terminate(child: &mut Child) {
    let status = common::terminate(child).await;
    assert!(status.success(), "the daemon exited {status} after SIGTERM");
}

/// A simulated meeting with two attendees, tracked in a fresh SQLite file. Returns the
/// simulator, the meeting, the database URL and the directory holding it.
async fn tracked_meeting() -> (
    roster_sync::sim::SimHandle,
    MeetingId,
    String,
    tempfile::TempDir,
) {
    let (sim, driver) = common::sim_and_driver(100.0).await;
    let meeting = driver
        .create_meeting("observability", "us-east-1")
        .await
        .expect("create a meeting");
    driver
        .add_attendees(
            &meeting,
            ["ana@example.com", "bo@example.com"].map(|p| (p.to_owned(), None)),
        )
        .await
        .expect("add attendees");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let url = format!("sqlite://{}", dir.path().join("roster.db").display());
    let endpoint = sim.endpoint_url();
    ok(roster_sync(&["migrate"], &endpoint).env("DATABASE_URL", &url)).await;
    ok(roster_sync(
        &["meetings", "add", meeting.as_str(), "--no-verify"],
        &endpoint,
    )
    .env("DATABASE_URL", &url))
    .await;
    (sim, meeting, url, dir)
}

/// The first JSON log line whose fields satisfy `pick`.
fn find(lines: &Mutex<Vec<String>>, pick: impl Fn(&Value) -> bool) -> Option<Value> {
    lines
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| pick(&v["fields"]))
}

#[tokio::test]
async fn json_logs_carry_poll_facts_as_fields_and_the_startup_line_names_what_runs() {
    let (sim, meeting, url, _dir) = tracked_meeting().await;
    // The first ListAttendees is refused (400, not retried): one failed poll, then success.
    sim.script(
        &meeting,
        ScriptedFault {
            times: Some(1),
            ..ScriptedFault::new(400, "BadRequestException")
        },
    );
    let mut daemon = roster_sync(&["run"], &sim.endpoint_url())
        .env("DATABASE_URL", &url)
        .env("ROSTER_SYNC__LOG__FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the daemon");
    let lines = collect_lines(&mut daemon);
    let is_event = |f: &Value| f["message"] == "event" && f["meeting_id"] == meeting.as_str();
    eventually("the failed poll and both joins are logged", || async {
        let joined = lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| is_event(&v["fields"]))
            .count();
        joined == 2 && find(&lines, |f| f["message"] == "poll failed").is_some()
    })
    .await;
    terminate(&mut daemon).await;

    let started = find(&lines, |f| f["message"] == "roster-sync running").expect("startup line");
    let f = &started["fields"];
    assert_eq!(f["version"], env!("CARGO_PKG_VERSION"), "{started}");
    assert_eq!(f["database_kind"], "sqlite", "{started}");
    assert!(
        f["database"]
            .as_str()
            .is_some_and(|d| d.ends_with("roster.db")),
        "{started}"
    );
    assert_eq!(f["regions"], "us-east-1", "{started}");
    assert_eq!(f["rate"].as_f64(), Some(10.0), "{started}");

    let failed = find(&lines, |f| f["message"] == "poll failed").expect("a failed poll");
    let f = &failed["fields"];
    assert_eq!(f["meeting_id"], meeting.as_str(), "{failed}");
    assert_eq!(f["region"], "us-east-1", "{failed}");
    assert_eq!(f["outcome"], "failed", "{failed}");
    assert_eq!(f["status"], 400, "{failed}");
    assert!(
        f["code"]
            .as_str()
            .is_some_and(|c| c.starts_with("BadRequest")),
        "{failed}"
    );
    let request_id = f["request_id"].as_str().expect("a request id field");
    assert!(!request_id.is_empty(), "{failed}");
    assert!(
        !f["message"]
            .as_str()
            .unwrap_or_default()
            .contains(request_id),
        "{failed}"
    );

    let event = find(&lines, is_event).expect("an event line");
    assert_eq!(event["fields"]["region"], "us-east-1", "{event}");

    let lines = lines.lock().unwrap();
    assert!(
        lines.iter().all(|l| !l.contains('\u{1b}')),
        "colour escapes off a terminal"
    );
    assert!(
        lines
            .iter()
            .all(|l| serde_json::from_str::<Value>(l).is_ok()),
        "every line is JSON"
    );
}

/// One sample of a `/metrics` page.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A metric family: its HELP, TYPE and samples (a histogram's `_bucket`, `_sum` and `_count`
/// samples belong to it).
#[derive(Debug, Default)]
struct Family {
    help: Option<String>,
    kind: Option<String>,
    samples: Vec<Sample>,
}

/// Parses the Prometheus text exposition format (version 0.0.4) strictly: every line is a
/// `# HELP`, a `# TYPE`, another comment, blank, or a sample `name{label="value",…} value
/// [timestamp]` with escaped label values; anything else is an error naming the line.
fn parse_exposition(text: &str) -> Result<BTreeMap<String, Family>, String> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let bad = |why: &str| format!("line {}: {why}: {line:?}", n + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest
                .split_once(' ')
                .ok_or_else(|| bad("HELP without text"))?;
            check_name(name).map_err(|e| bad(&e))?;
            let family = families.entry(name.to_owned()).or_default();
            if family.help.replace(unescape(help, false)?).is_some() {
                return Err(bad("second HELP"));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .ok_or_else(|| bad("TYPE without type"))?;
            check_name(name).map_err(|e| bad(&e))?;
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(bad("unknown type"));
            }
            let family = families.entry(name.to_owned()).or_default();
            if !family.samples.is_empty() {
                return Err(bad("TYPE after the family's samples"));
            }
            if family.kind.replace(kind.to_owned()).is_some() {
                return Err(bad("second TYPE"));
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let sample = parse_sample(line).map_err(|e| bad(&e))?;
        let family = family_of(&families, &sample.name);
        families.entry(family).or_default().samples.push(sample);
    }
    Ok(families)
}

/// The family a sample belongs to: a histogram's or summary's suffixed series belong to the
/// family declared without the suffix.
fn family_of(families: &BTreeMap<String, Family>, sample: &str) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = sample.strip_suffix(suffix)
            && families
                .get(base)
                .is_some_and(|f| matches!(f.kind.as_deref(), Some("histogram" | "summary")))
        {
            return base.to_owned();
        }
    }
    sample.to_owned()
}

fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        Ok(())
    } else {
        Err(format!("{name:?} is not a metric name"))
    }
}

/// Undoes the format's escapes: `\\` and `\n`, and in label values also `\"`.
fn unescape(text: &str, quotes: bool) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('"') if quotes => out.push('"'),
            other => return Err(format!("bad escape \\{other:?}")),
        }
    }
    Ok(out)
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("a sample needs a value")?;
    let name = &line[..name_end];
    check_name(name)?;
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(after) = rest.strip_prefix('{') {
        rest = after;
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let (label, after) = rest.split_once("=\"").ok_or("label without =\"")?;
            check_name(label)?;
            // The value runs to the first quote not escaped.
            let mut end = None;
            let mut escaped = false;
            for (i, c) in after.char_indices() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let end = end.ok_or("unterminated label value")?;
            let value = unescape(&after[..end], true)?;
            if labels.insert(label.to_owned(), value).is_some() {
                return Err(format!("label {label} twice"));
            }
            rest = &after[end + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
    }
    let mut parts = rest
        .strip_prefix(' ')
        .ok_or("no space before the value")?
        .split(' ');
    let value = match parts.next().ok_or("no value")? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().map_err(|_| format!("{v:?} is not a value"))?,
    };
    if let Some(ts) = parts.next() {
        ts.parse::<i64>()
            .map_err(|_| format!("{ts:?} is not a timestamp"))?;
    }
    if parts.next().is_some() {
        return Err("text after the timestamp".into());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// The sum of a family's samples named `name` whose labels include `with`.
fn total(families: &BTreeMap<String, Family>, name: &str, with: &[(&str, &str)]) -> f64 {
    families
        .values()
        .flat_map(|f| &f.samples)
        .filter(|s| s.name == name)
        .filter(|s| {
            with.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v))
        })
        .map(|s| s.value)
        .sum()
}

async fn scrape(port: u16) -> BTreeMap<String, Family> {
    let (code, body) = get(port, "/metrics").await.expect("/metrics answers");
    assert_eq!(code, 200, "{body}");
    parse_exposition(&body).unwrap_or_else(|e| panic!("{e}\n{body}"))
}

#[test]
fn the_exposition_parser_refuses_malformed_lines_and_reads_escapes() {
    let good = "# HELP a_total Help with \\\\ and \\n.\n# TYPE a_total counter\n\
                a_total{x=\"q\\\"uote\",y=\"b\\\\s\"} 3 1700000000000\n\
                # TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 0.5\nh_count 1\n";
    let parsed = parse_exposition(good).unwrap();
    assert_eq!(
        parsed["a_total"].help.as_deref(),
        Some("Help with \\ and \n.")
    );
    assert_eq!(parsed["a_total"].samples[0].labels["x"], "q\"uote");
    assert_eq!(parsed["h"].samples.len(), 3);
    for bad in [
        "a_total 1 2 3",
        "a_total{x=\"1} 1",
        "a_total{x=1} 1",
        "0bad 1",
        "a_total{x=\"1\",x=\"2\"} 1",
        "# TYPE a_total countr",
        "a_total one",
    ] {
        assert!(parse_exposition(bad).is_err(), "{bad}");
    }
}

#[tokio::test]
async fn metrics_have_help_and_the_prefix_and_counters_move_while_polling() {
    let (sim, meeting, url, _dir) = tracked_meeting().await;
    // One ThrottlingException, retried: the region's budget slows down once.
    sim.script(
        &meeting,
        ScriptedFault {
            times: Some(1),
            ..ScriptedFault::new(429, "ThrottlingException")
        },
    );
    let port = free_port();
    let mut daemon = roster_sync(&["run"], &sim.endpoint_url())
        .env("DATABASE_URL", &url)
        .env("ROSTER_SYNC__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the daemon");
    let region = [("region", "us-east-1")];
    eventually("a successful poll is counted", || async {
        match get(port, "/metrics").await {
            Some((200, body)) => parse_exposition(&body).is_ok_and(|m| {
                total(&m, "roster_sync_polls_total", &[("outcome", "changed")]) >= 1.0
            }),
            _ => false,
        }
    })
    .await;
    let first = scrape(port).await;
    let requests = total(&first, "roster_sync_chime_requests_total", &region);
    let polls = total(&first, "roster_sync_polls_total", &region);
    eventually(
        "requests and polls are counted as the daemon polls",
        || async {
            let now = scrape(port).await;
            total(&now, "roster_sync_chime_requests_total", &region) > requests
                && total(&now, "roster_sync_polls_total", &region) > polls
        },
    )
    .await;
    let metrics = scrape(port).await;
    terminate(&mut daemon).await;

    for (name, family) in &metrics {
        assert!(name.starts_with("roster_sync_"), "{name}");
        assert!(
            family.help.as_deref().is_some_and(|h| !h.is_empty()),
            "{name} has no HELP"
        );
        let kind = family
            .kind
            .as_deref()
            .unwrap_or_else(|| panic!("{name} has no TYPE"));
        assert_eq!(
            kind == "counter",
            name.ends_with("_total"),
            "{name}: {kind}"
        );
        assert!(!family.samples.is_empty(), "{name} has no samples");
    }
    let has = |name: &str, label: &str| {
        metrics
            .get(name)
            .unwrap_or_else(|| panic!("{name} is missing"))
            .samples
            .iter()
            .any(|s| s.labels.contains_key(label))
    };
    assert!(has("roster_sync_build_info", "version"));
    assert!(has("roster_sync_chime_requests_total", "region"));
    assert!(has("roster_sync_rate_requests_per_second", "region"));
    assert!(has("roster_sync_rate_decreases_total", "region"));
    assert!(has("roster_sync_last_success_timestamp_seconds", "region"));
    assert!(has("roster_sync_staleness_max_seconds", "region"));
    assert!(has("roster_sync_staleness_seconds", "region"));
    assert!(has("roster_sync_database_errors_total", "operation"));
    assert_eq!(
        metrics["roster_sync_staleness_seconds"].kind.as_deref(),
        Some("histogram")
    );
    assert_eq!(
        total(
            &metrics,
            "roster_sync_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    let unix_now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let last_success = total(
        &metrics,
        "roster_sync_last_success_timestamp_seconds",
        &region,
    );
    assert!(
        last_success > unix_now - 600.0 && last_success <= unix_now,
        "{last_success}"
    );
    assert!(total(&metrics, "roster_sync_process_cpu_seconds", &[]) > 0.0);
    assert!(total(&metrics, "roster_sync_process_resident_memory_bytes", &[]) > 1e6);
    assert!(total(&metrics, "roster_sync_rate_decreases_total", &region) >= 1.0);
    assert_eq!(
        total(&metrics, "roster_sync_database_errors_total", &[]),
        0.0
    );
}
