//! Reports for analysts, on both backends: the HTML page of a 250-person meeting parsed as
//! XML, the label and capability-change reports, the example queries run out of
//! docs/analysts.md, and `report` through the real binary.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use chrono::{DateTime, TimeDelta, Utc};
use common::{Raw, TestDb};
use roster_sync::domain::{
    self, Attendee, AttendeeId, Capabilities, Capability, Change, ExternalUserId, LeftReason,
    MeetingId, Region,
};
use roster_sync::report::{CapabilityChanges, LabelReport, MeetingReport, Window, html};
use roster_sync::store::{ApplyOutcome, PollRecord, Store};
use sqlx::{AssertSqlSafe, Row as _};

const BIN: &str = env!("CARGO_BIN_EXE_roster-sync");

/// The meeting the first example query of docs/analysts.md names.
const QUERY_MEETING: &str = "11111111-2222-4333-8444-555555555555";
const SCRIPT_NAME: &str = "<script>alert(1)</script>";
const ATTRIBUTE_NAME: &str = "x\" onmouseover=\"alert(1)' y";

fn meeting(n: u32) -> MeetingId {
    MeetingId::parse(&format!("0000000{n:x}-0000-4000-8000-000000000000")).unwrap()
}

fn person(n: u32, user: &str) -> Attendee {
    Attendee {
        attendee_id: AttendeeId::parse(&format!("aaaaaaaa-0000-4000-8000-{n:012x}")).unwrap(),
        external_user_id: ExternalUserId::new(user),
        capabilities: Capabilities::DEFAULT,
    }
}

fn caps(audio: Capability, video: Capability, content: Capability) -> Capabilities {
    Capabilities {
        audio,
        video,
        content,
    }
}

fn with(a: &Attendee, c: Capabilities) -> Attendee {
    Attendee {
        capabilities: c,
        ..a.clone()
    }
}

fn at(start: DateTime<Utc>, seconds: i64) -> DateTime<Utc> {
    start + TimeDelta::seconds(seconds)
}

/// A few hours ago at microsecond precision: every seeded session has ended by now.
fn start() -> DateTime<Utc> {
    domain::now() - TimeDelta::hours(3)
}

async fn track(store: &Store, id: &MeetingId, label: &str, t: DateTime<Utc>) {
    let region = Region::parse("us-east-1").unwrap();
    store
        .add_meeting(id, &region, Some(label), t, false)
        .await
        .unwrap();
}

/// Records a poll observed at `observed_at` against the stored snapshot.
async fn poll(store: &Store, id: &MeetingId, observed_at: DateTime<Utc>, changes: &[Change]) {
    let snapshot = store.snapshot(id).await.unwrap();
    let rec = PollRecord {
        meeting_id: id,
        expected_seq: snapshot.poll_seq,
        started_at: observed_at - TimeDelta::seconds(1),
        observed_at,
        previous_poll_at: snapshot.last_polled_at,
        changes,
    };
    assert!(matches!(
        store.apply(rec).await.unwrap(),
        ApplyOutcome::Applied { .. }
    ));
}

fn left(a: &Attendee) -> Change {
    Change::left(a, LeftReason::Removed)
}

/// Four meetings, three labelled weekly-sync (X = the example queries' meeting, Y, Z) and one other:
///
/// - X: alice 0–600; bob 60–300 and again (a new attendee) 400–600; carol 300–500, joining
///   the instant bob leaves, audio raised Receive → SendReceive at 350. Peak 3 at 400.
/// - Y (from 1000): alice 1000–1300, dave 1100–1200 with content raised None → SendReceive at
///   1150. Peak 2 at 1100.
/// - Z (from 2000): alice 2000–2300 with audio lowered to Receive at 2100, bob 2000–2100.
///   Peak 2 at 2000.
/// - W, labelled other (from 3000): bob 3000–3060.
struct Seeded {
    t: DateTime<Utc>,
    x: MeetingId,
    y: MeetingId,
    z: MeetingId,
    w: MeetingId,
}

async fn seed_label_meetings(store: &Store) -> Seeded {
    let t = start();
    let s = Seeded {
        t,
        x: MeetingId::parse(QUERY_MEETING).unwrap(),
        y: meeting(2),
        z: meeting(3),
        w: meeting(4),
    };
    for (id, label) in [
        (&s.x, "weekly-sync"),
        (&s.y, "weekly-sync"),
        (&s.z, "weekly-sync"),
        (&s.w, "other"),
    ] {
        track(store, id, label, t).await;
    }
    use Capability::{None as No, Receive, SendReceive};

    let (alice, bob, bob2) = (person(1, "alice"), person(2, "bob"), person(3, "bob"));
    let carol = with(&person(4, "carol"), caps(Receive, No, No));
    let carol_raised = with(&carol, caps(SendReceive, No, No));
    poll(store, &s.x, at(t, 0), &[Change::joined(&alice)]).await;
    poll(store, &s.x, at(t, 60), &[Change::joined(&bob)]).await;
    poll(
        store,
        &s.x,
        at(t, 300),
        &[left(&bob), Change::joined(&carol)],
    )
    .await;
    let raise = Change::capabilities_changed(&carol, &carol_raised);
    poll(store, &s.x, at(t, 350), &[raise]).await;
    poll(store, &s.x, at(t, 400), &[Change::joined(&bob2)]).await;
    poll(store, &s.x, at(t, 500), &[left(&carol_raised)]).await;
    poll(store, &s.x, at(t, 600), &[left(&alice), left(&bob2)]).await;

    let dave = with(&person(5, "dave"), caps(SendReceive, SendReceive, No));
    let dave_raised = with(&dave, Capabilities::DEFAULT);
    poll(store, &s.y, at(t, 1000), &[Change::joined(&alice)]).await;
    poll(store, &s.y, at(t, 1100), &[Change::joined(&dave)]).await;
    let raise = Change::capabilities_changed(&dave, &dave_raised);
    poll(store, &s.y, at(t, 1150), &[raise]).await;
    poll(store, &s.y, at(t, 1200), &[left(&dave_raised)]).await;
    poll(store, &s.y, at(t, 1300), &[left(&alice)]).await;

    let alice_lowered = with(&alice, caps(Receive, SendReceive, SendReceive));
    let join_both = [Change::joined(&alice), Change::joined(&bob)];
    poll(store, &s.z, at(t, 2000), &join_both).await;
    let lower = Change::capabilities_changed(&alice, &alice_lowered);
    poll(store, &s.z, at(t, 2100), &[lower, left(&bob)]).await;
    poll(store, &s.z, at(t, 2300), &[left(&alice_lowered)]).await;

    poll(store, &s.w, at(t, 3000), &[Change::joined(&bob)]).await;
    poll(store, &s.w, at(t, 3060), &[left(&bob)]).await;
    s
}

/// The SQL of the docs/analysts.md block marked `<!-- sql:NAME -->`.
fn readme_query(name: &str) -> String {
    let readme = include_str!("../docs/analysts.md");
    let marker = format!("<!-- sql:{name} -->");
    let after = &readme[readme
        .find(&marker)
        .unwrap_or_else(|| panic!("docs/analysts.md has no {marker}"))..];
    let body = &after[after
        .find("```sql\n")
        .expect("a sql block after the marker")
        + 7..];
    body[..body.find("```").expect("the end of the sql block")].to_owned()
}

/// A value of an example query's result, as the test compares it.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Int(i64),
    Real(f64),
    Text(String),
    Time(DateTime<Utc>),
}

/// Runs an example query on the raw pool and reads the named columns of every row, each as the
/// kind given.
async fn run_readme_query(raw: &Raw, name: &str, columns: &[(&str, char)]) -> Vec<Vec<Value>> {
    let sql = readme_query(name);
    macro_rules! read {
        ($rows:expr) => {
            $rows
                .iter()
                .map(|row| {
                    columns
                        .iter()
                        .map(|&(column, kind)| match kind {
                            'i' => Value::Int(row.try_get(column).unwrap()),
                            'r' => Value::Real(row.try_get(column).unwrap()),
                            't' => Value::Time(row.try_get(column).unwrap()),
                            _ => Value::Text(row.try_get(column).unwrap()),
                        })
                        .collect()
                })
                .collect()
        };
    }
    match raw {
        Raw::Postgres(pool) => {
            let rows = sqlx::query(AssertSqlSafe(sql.clone()))
                .fetch_all(pool)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            read!(rows)
        }
        Raw::Sqlite(pool) => {
            let rows = sqlx::query(AssertSqlSafe(sql.clone()))
                .fetch_all(pool)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            read!(rows)
        }
    }
}

fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

both_backends!(
    the_readme_queries_answer_from_the_views,
    the_label_report_counts_meetings_held_and_attended_in_the_window,
    the_capability_changes_report_lists_before_and_after,
    the_html_page_of_a_250_person_meeting_parses_and_shows_every_session,
    the_meeting_report_peak_matches_the_readme_peak_query,
);

async fn the_readme_queries_answer_from_the_views(db: &TestDb) {
    let s = seed_label_meetings(&db.store).await;

    let who = run_readme_query(
        &db.raw,
        "attendance-of-meeting",
        &[
            ("external_user_id", 's'),
            ("sessions", 'i'),
            ("seconds", 'r'),
        ],
    )
    .await;
    assert_eq!(
        who,
        vec![
            vec![text("alice"), Value::Int(1), Value::Real(600.0)],
            vec![text("bob"), Value::Int(2), Value::Real(440.0)],
            vec![text("carol"), Value::Int(1), Value::Real(200.0)],
        ]
    );

    let peaks = run_readme_query(
        &db.raw,
        "peak-per-meeting",
        &[("meeting_id", 's'), ("peak", 'i'), ("first_at", 't')],
    )
    .await;
    let peaks: BTreeMap<String, (Value, Value)> = peaks
        .into_iter()
        .map(|row| match &row[..] {
            [Value::Text(id), peak, first] => (id.clone(), (peak.clone(), first.clone())),
            other => panic!("unexpected row {other:?}"),
        })
        .collect();
    let expect = |id: &MeetingId, peak: i64, second: i64| {
        (
            id.as_str().to_owned(),
            (Value::Int(peak), Value::Time(at(s.t, second))),
        )
    };
    assert_eq!(
        peaks,
        BTreeMap::from([
            expect(&s.x, 3, 400),
            expect(&s.y, 2, 1100),
            expect(&s.z, 2, 2000),
            expect(&s.w, 1, 3000),
        ])
    );

    let raised = run_readme_query(
        &db.raw,
        "raised-to-send",
        &[("external_user_id", 's'), ("meeting_id", 's')],
    )
    .await;
    assert_eq!(
        raised,
        vec![
            vec![text("carol"), text(s.x.as_str())],
            vec![text("dave"), text(s.y.as_str())],
        ],
        "alice's lowered audio is not a raise"
    );

    let every = run_readme_query(
        &db.raw,
        "every-meeting-of-label",
        &[("external_user_id", 's')],
    )
    .await;
    assert_eq!(every, vec![vec![text("alice")]]);
}

async fn the_label_report_counts_meetings_held_and_attended_in_the_window(db: &TestDb) {
    let s = seed_label_meetings(&db.store).await;
    let now = domain::now();

    let all = LabelReport::load(&db.store, "weekly-sync", Window::default(), now)
        .await
        .unwrap();
    let held: Vec<&MeetingId> = all.meetings.iter().map(|m| &m.meeting_id).collect();
    assert_eq!(held, [&s.x, &s.y, &s.z], "W has another label");
    let summary: Vec<(&str, usize, usize, f64)> = all
        .people
        .iter()
        .map(|p| {
            (
                p.external_user_id.as_str(),
                p.meetings_attended,
                p.meetings_held,
                p.total_seconds,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("alice", 3, 3, 600.0 + 300.0 + 300.0),
            ("bob", 2, 3, 440.0 + 100.0),
            ("carol", 1, 3, 200.0),
            ("dave", 1, 3, 100.0),
        ]
    );
    let alice = &all.people[0];
    assert_eq!(
        (alice.first_seen, alice.last_seen),
        (at(s.t, 0), Some(at(s.t, 2300)))
    );
    assert_eq!(
        all.grid_row(&all.people[1]),
        [Some(440.0), None, Some(100.0)],
        "bob's two sessions of X add up; he missed Y"
    );

    // From 1150 to 2050: Y (partly) and Z (partly) are held, X is not.
    let window = Window {
        since: Some(at(s.t, 1150)),
        until: Some(at(s.t, 2050)),
    };
    let part = LabelReport::load(&db.store, "weekly-sync", window, now)
        .await
        .unwrap();
    let held: Vec<&MeetingId> = part.meetings.iter().map(|m| &m.meeting_id).collect();
    assert_eq!(held, [&s.y, &s.z]);
    let summary: Vec<(&str, usize, f64)> = part
        .people
        .iter()
        .map(|p| {
            (
                p.external_user_id.as_str(),
                p.meetings_attended,
                p.total_seconds,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("alice", 2, 150.0 + 50.0),
            ("dave", 1, 50.0),
            ("bob", 1, 50.0)
        ],
        "time is counted inside the window only; ordered by first seen"
    );

    let none = LabelReport::load(&db.store, "nobody-uses-this", Window::default(), now)
        .await
        .unwrap();
    assert!(none.meetings.is_empty() && none.people.is_empty());
}

async fn the_capability_changes_report_lists_before_and_after(db: &TestDb) {
    let s = seed_label_meetings(&db.store).await;
    let all = CapabilityChanges::load(&db.store, None).await.unwrap();
    let seen: Vec<(&str, &MeetingId, DateTime<Utc>)> = all
        .events
        .iter()
        .map(|e| (e.external_user_id.as_str(), &e.meeting_id, e.observed_at))
        .collect();
    assert_eq!(
        seen,
        [
            ("carol", &s.x, at(s.t, 350)),
            ("dave", &s.y, at(s.t, 1150)),
            ("alice", &s.z, at(s.t, 2100)),
        ]
    );
    let carol = &all.events[0];
    assert_eq!(
        (carol.before.map(|c| c.audio), carol.after.map(|c| c.audio)),
        (Some(Capability::Receive), Some(Capability::SendReceive))
    );
    let json = all.to_json();
    assert_eq!(json["changes"][2]["before"]["audio"], "SendReceive");
    assert_eq!(json["changes"][2]["after"]["audio"], "Receive");

    let since = CapabilityChanges::load(&db.store, Some(at(s.t, 1150)))
        .await
        .unwrap();
    let who: Vec<&str> = since
        .events
        .iter()
        .map(|e| e.external_user_id.as_str())
        .collect();
    assert_eq!(who, ["dave", "alice"], "--since includes its own instant");
}

/// External user ids of the 250-person meeting: two hostile names among ordinary ones.
fn big_name(i: u32) -> String {
    match i {
        0 => SCRIPT_NAME.to_owned(),
        1 => ATTRIBUTE_NAME.to_owned(),
        i => format!("person-{i:03}"),
    }
}

/// 250 people in one meeting:
/// - at 0, people 0..150 join; at 60, people 150..250 join and 0..10 leave (240 present, the
///   peak); at 90, people 20..40 change capabilities (audio to Receive, video to None, content
///   to None); at 120, people 10..60 leave and person 0 joins again as a new attendee (191);
///   at 180, people 60..200 leave; people 200..250 and person 0's second session stay open.
async fn seed_big_meeting(store: &Store) -> (MeetingId, DateTime<Utc>) {
    let id = meeting(9);
    let t = start();
    track(store, &id, "all-hands", t).await;
    let people: Vec<Attendee> = (0..250).map(|i| person(i, &big_name(i))).collect();
    let quiet = caps(Capability::Receive, Capability::None, Capability::None);

    let joins: Vec<Change> = people[..150].iter().map(Change::joined).collect();
    poll(store, &id, at(t, 0), &joins).await;
    let mut changes: Vec<Change> = people[150..].iter().map(Change::joined).collect();
    changes.extend(people[..10].iter().map(left));
    poll(store, &id, at(t, 60), &changes).await;
    let lowered: Vec<Change> = people[20..40]
        .iter()
        .map(|a| Change::capabilities_changed(a, &with(a, quiet)))
        .collect();
    poll(store, &id, at(t, 90), &lowered).await;
    let mut changes: Vec<Change> = (10..60)
        .map(|i| {
            let a = &people[i];
            left(&if (20..40).contains(&i) {
                with(a, quiet)
            } else {
                a.clone()
            })
        })
        .collect();
    changes.push(Change::joined(&person(1000, SCRIPT_NAME)));
    poll(store, &id, at(t, 120), &changes).await;
    let leaves: Vec<Change> = people[60..200].iter().map(left).collect();
    poll(store, &id, at(t, 180), &leaves).await;
    (id, t)
}

fn parse(html: &str) -> roxmltree::Document<'_> {
    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    roxmltree::Document::parse_with_options(html, options)
        .unwrap_or_else(|e| panic!("the page is not well-formed XML: {e}"))
}

fn with_class<'a, 'i>(
    doc: &'a roxmltree::Document<'i>,
    tag: &'a str,
    class: &'a str,
) -> impl Iterator<Item = roxmltree::Node<'a, 'i>> + 'a {
    doc.descendants().filter(move |n| {
        n.tag_name().name() == tag
            && n.attribute("class")
                .is_some_and(|c| c.split(' ').any(|w| w == class))
    })
}

async fn the_html_page_of_a_250_person_meeting_parses_and_shows_every_session(db: &TestDb) {
    let (id, _) = seed_big_meeting(&db.store).await;
    let report = MeetingReport::load(&db.store, &id, domain::now())
        .await
        .unwrap()
        .expect("the meeting is tracked");
    let mut page = Vec::new();
    html::write_meeting(&mut page, &report).unwrap();
    let page = String::from_utf8(page).unwrap();
    let doc = parse(&page);

    assert_eq!(
        with_class(&doc, "g", "person").count(),
        250,
        "one row per person"
    );
    assert_eq!(
        with_class(&doc, "g", "session").count(),
        251,
        "one bar per session"
    );
    let timeline = doc
        .descendants()
        .find(|n| n.attribute("id") == Some("timeline"))
        .expect("the timeline");
    assert_eq!(
        timeline
            .descendants()
            .filter(|n| n.tag_name().name() == "line" && n.attribute("class") == Some("cap-change"))
            .count(),
        20,
        "a marker per capability change"
    );
    assert_eq!(
        with_class(&doc, "rect", "bar").count(),
        251 + 20,
        "a changed session's bar has a segment before and after the change"
    );
    let rejoined = with_class(&doc, "g", "person")
        .find(|g| g.attribute("data-person") == Some(SCRIPT_NAME))
        .expect("the row of the script-named person, its name intact");
    assert_eq!(
        rejoined
            .children()
            .filter(|n| n.attribute("class") == Some("session"))
            .count(),
        2,
        "a re-join is a second bar on the same row"
    );
    let first_rows: Vec<&str> = with_class(&doc, "g", "person")
        .take(3)
        .filter_map(|g| g.attribute("data-person"))
        .collect();
    assert_eq!(
        first_rows,
        [SCRIPT_NAME, ATTRIBUTE_NAME, "person-002"],
        "rows in order of first join"
    );

    assert_eq!(
        doc.descendants()
            .find(|n| n.attribute("id") == Some("peak"))
            .and_then(|n| n.attribute("data-peak")),
        Some("240")
    );
    assert_eq!(
        doc.descendants()
            .find(|n| n.attribute("id") == Some("people"))
            .and_then(|n| n.attribute("data-people")),
        Some("250")
    );
    let table_rows = doc
        .descendants()
        .find(|n| n.attribute("id") == Some("attendance"))
        .expect("the attendance table")
        .descendants()
        .filter(|n| n.tag_name().name() == "tr")
        .count();
    assert_eq!(table_rows, 1 + 250, "a header and one row per person");

    // Hostile names are text, never markup: no script element, no event-handler attribute.
    assert!(!doc.descendants().any(|n| n.tag_name().name() == "script"));
    assert!(
        !doc.descendants()
            .any(|n| n.attributes().any(|a| a.name().starts_with("on")))
    );
    assert!(
        !page.contains("<script"),
        "the raw page never opens a script"
    );
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(
        !doc.descendants()
            .any(|n| n.has_attribute("src") || n.has_attribute("href"))
            && !page.contains("url(")
            && !page.contains("@import"),
        "the page fetches nothing"
    );
    assert!(
        doc.descendants().any(|n| n.text() == Some(ATTRIBUTE_NAME)),
        "the quoted name reads back as itself"
    );
}

async fn the_meeting_report_peak_matches_the_readme_peak_query(db: &TestDb) {
    let (big, t) = seed_big_meeting(&db.store).await;
    let peaks = run_readme_query(
        &db.raw,
        "peak-per-meeting",
        &[("meeting_id", 's'), ("peak", 'i'), ("first_at", 't')],
    )
    .await;
    assert_eq!(
        peaks,
        vec![vec![
            text(big.as_str()),
            Value::Int(240),
            Value::Time(at(t, 60))
        ]]
    );
    let report = MeetingReport::load(&db.store, &big, domain::now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (report.concurrency.peak, report.concurrency.peak_at),
        (240, Some(at(t, 60)))
    );
    let json = report.to_json();
    let points = json["concurrency"]["points"].as_array().unwrap();
    let counts: Vec<u64> = points
        .iter()
        .map(|p| p["count"].as_u64().unwrap())
        .collect();
    assert_eq!(
        counts,
        [150, 240, 191, 51],
        "open sessions stay on the curve"
    );
}

// The real binary.

fn roster_sync(db: &TestDb, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("DATABASE_URL", &db.url)
        .env("ROSTER_SYNC__HTTP__LISTEN", "")
        .stdin(Stdio::null())
        .output()
        .expect("run roster-sync")
}

fn succeeded(out: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn refused(out: &std::process::Output, args: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "{args:?}: expected a refusal; stderr: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[tokio::test]
async fn report_through_the_binary_prints_every_format_and_refuses_bad_combinations() {
    let db = common::sqlite_db().await;
    let s = seed_label_meetings(&db.store).await;
    let x = s.x.as_str();

    let table = succeeded(&roster_sync(&db, &["report", x]));
    assert!(table.contains("peak 3 concurrent attendee(s)"), "{table}");
    let csv = succeeded(&roster_sync(&db, &["report", x, "--format", "csv"]));
    assert_eq!(csv.lines().count(), 1 + 4, "a header and four sessions");
    assert!(
        csv.lines()
            .next()
            .unwrap()
            .ends_with(",peak_concurrent,peak_at")
    );
    assert!(csv.lines().nth(1).unwrap().contains(",3,"), "{csv}");
    let json: serde_json::Value = serde_json::from_str(&succeeded(&roster_sync(
        &db,
        &["report", x, "--format", "json"],
    )))
    .unwrap();
    assert_eq!(json["concurrency"]["peak"], 3);
    let page = succeeded(&roster_sync(&db, &["report", x, "--format", "html"]));
    assert_eq!(with_class(&parse(&page), "g", "session").count(), 4);

    let label = succeeded(&roster_sync(
        &db,
        &["report", "--label", "weekly-sync", "--format", "csv"],
    ));
    let lines: Vec<&str> = label.lines().collect();
    assert_eq!(lines.len(), 1 + 4, "{label}");
    assert!(
        lines[1].starts_with("weekly-sync,alice,3,3,1200.000,"),
        "{label}"
    );
    let since = at(s.t, 1150).to_rfc3339();
    let label_json: serde_json::Value = serde_json::from_str(&succeeded(&roster_sync(
        &db,
        &[
            "report",
            "--label",
            "weekly-sync",
            "--since",
            &since,
            "--format",
            "json",
        ],
    )))
    .unwrap();
    assert_eq!(label_json["meetings"].as_array().unwrap().len(), 2);
    let grid = succeeded(&roster_sync(
        &db,
        &["report", "--label", "weekly-sync", "--format", "html"],
    ));
    let grid = parse(&grid);
    assert_eq!(with_class(&grid, "tr", "person").count(), 4);
    assert_eq!(with_class(&grid, "td", "attended").count(), 3 + 2 + 1 + 1);
    let table = succeeded(&roster_sync(&db, &["report", "--label", "weekly-sync"]));
    assert!(
        table.contains("3 meeting(s) held") && table.contains("4 person(s)"),
        "{table}"
    );

    let changes = succeeded(&roster_sync(
        &db,
        &["report", "--capability-changes", "--format", "csv"],
    ));
    assert_eq!(changes.lines().count(), 1 + 3);
    assert!(
        changes.contains(",Receive,SendReceive,None,None,None,None"),
        "{changes}"
    );
    let table = succeeded(&roster_sync(&db, &["report", "--capability-changes"]));
    assert!(
        table.contains("Receive -> SendReceive") && table.contains("3 change(s)"),
        "{table}"
    );
    let tomorrow = (Utc::now() + TimeDelta::days(1))
        .format("%Y-%m-%d")
        .to_string();
    let json: serde_json::Value = serde_json::from_str(&succeeded(&roster_sync(
        &db,
        &[
            "report",
            "--capability-changes",
            "--since",
            &tomorrow,
            "--format",
            "json",
        ],
    )))
    .unwrap();
    assert_eq!(json["changes"].as_array().unwrap().len(), 0);

    for (args, expected) in [
        (vec!["report"], "required"),
        (
            vec!["report", x, "--label", "weekly-sync"],
            "cannot be used with",
        ),
        (
            vec!["report", "--label", "a", "--capability-changes"],
            "cannot be used with",
        ),
        (vec!["report", x, "--since", "2026-01-01"], "--label"),
        (
            vec!["report", "--capability-changes", "--until", "2026-01-01"],
            "--label",
        ),
        (
            vec!["report", "--label", "a", "--since", "yesterday"],
            "--since",
        ),
        (
            vec!["report", "--label", "a", "--until", "2026-13-01"],
            "--until",
        ),
        (
            vec!["report", "--capability-changes", "--format", "html"],
            "html",
        ),
        (
            vec![
                "report",
                "--label",
                "a",
                "--since",
                "2026-02-01",
                "--until",
                "2026-01-01",
            ],
            "--since",
        ),
    ] {
        let err = refused(&roster_sync(&db, &args), &args);
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    db.finish().await;
}
