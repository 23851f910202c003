//! Presence in `report`, on both backends: a meeting whose attendees connect, drop, reconnect,
//! share video and content and leave without being deleted, recorded through
//! `Store::record_presence` and polls, then reported through the real binary in every format
//! and through the label report. A meeting without presence reports as it always did.

mod common;

use std::process::{Command, Stdio};

use chrono::{DateTime, TimeDelta, Utc};
use common::{Raw, TestDb};
use roster_sync::domain::{
    self, Attendee, AttendeeId, Capabilities, Change, ExternalUserId, LeftReason, MeetingId, Region,
};
use roster_sync::lifecycle::{EventType, MeetingEvent};
use roster_sync::report::{LabelReport, Window};
use roster_sync::store::{ApplyOutcome, PollRecord, Store};
use sqlx::{AssertSqlSafe, Row as _};

const LABEL: &str = "standup";
/// A name that would break markup, CSV and attributes if anything forgot to escape it.
const BEN: &str = "ben <b>&\"' x";

fn meeting() -> MeetingId {
    MeetingId::parse("0000000b-0000-4000-8000-000000000000").unwrap()
}

/// A meeting of the same label that has no meeting events.
fn quiet_meeting() -> MeetingId {
    MeetingId::parse("0000000c-0000-4000-8000-000000000000").unwrap()
}

fn attendee(n: u32, user: &str) -> Attendee {
    Attendee {
        attendee_id: AttendeeId::parse(&format!("bbbbbbbb-0000-4000-8000-{n:012x}")).unwrap(),
        external_user_id: ExternalUserId::new(user),
        capabilities: Capabilities::DEFAULT,
    }
}

fn at(t0: DateTime<Utc>, s: i64) -> DateTime<Utc> {
    t0 + TimeDelta::seconds(s)
}

fn event(id: &str, ty: EventType, who: &Attendee, when: DateTime<Utc>) -> MeetingEvent {
    common::presence_event(id, ty, &meeting(), &who.attendee_id, when)
}

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
    match store.apply(rec).await.unwrap() {
        ApplyOutcome::Applied { .. } => {}
        ApplyOutcome::Conflict => panic!("unexpected conflict"),
    }
}

struct Seeded {
    t0: DateTime<Utc>,
}

/// Ana connects, shares video, drops, reconnects and leaves (never deleted: the roster keeps
/// her). Ben's first event is content (his start is inferred) and his `Left` never comes: a
/// poll proves him deleted (his end is inferred). Cat is on the roster with no event at all.
/// The quiet meeting has the same label and no presence.
async fn seed(store: &Store) -> Seeded {
    let t0 = domain::now() - TimeDelta::hours(1);
    let region = Region::parse("us-east-1").unwrap();
    let (ana, ben, cat) = (attendee(1, "ana"), attendee(2, BEN), attendee(3, "cat"));
    for id in [meeting(), quiet_meeting()] {
        store
            .add_meeting(&id, &region, Some(LABEL), t0, false)
            .await
            .unwrap();
    }
    poll(
        store,
        &meeting(),
        at(t0, 5),
        &[
            Change::joined(&ana),
            Change::joined(&ben),
            Change::joined(&cat),
        ],
    )
    .await;
    let batch = [
        event("a1", EventType::AttendeeJoined, &ana, at(t0, 10)),
        event("a2", EventType::AttendeeVideoStarted, &ana, at(t0, 12)),
        event(
            "b1",
            EventType::AttendeeContentVideoStarted,
            &ben,
            at(t0, 20),
        ),
        event("a3", EventType::AttendeeVideoStopped, &ana, at(t0, 30)),
        event("a4", EventType::AttendeeDropped, &ana, at(t0, 40)),
        event(
            "b2",
            EventType::AttendeeContentVideoStopped,
            &ben,
            at(t0, 50),
        ),
        event("a5", EventType::AttendeeJoined, &ana, at(t0, 60)),
        event("a6", EventType::AttendeeLeft, &ana, at(t0, 100)),
    ];
    let (_, plan) = store
        .record_presence(&meeting(), &batch, at(t0, 101))
        .await
        .unwrap();
    assert!(plan.unknown.is_empty());
    poll(store, &meeting(), at(t0, 120), &[]).await;
    poll(
        store,
        &meeting(),
        at(t0, 150),
        &[Change::left(&ben, LeftReason::Removed)],
    )
    .await;

    poll(
        store,
        &quiet_meeting(),
        at(t0, 200),
        &[Change::joined(&ana)],
    )
    .await;
    poll(
        store,
        &quiet_meeting(),
        at(t0, 500),
        &[Change::left(&ana, LeftReason::Removed)],
    )
    .await;
    Seeded { t0 }
}

fn roster_sync(db: &TestDb, args: &[&str]) -> String {
    let out = Command::new(common::BIN)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("DATABASE_URL", &db.url)
        .env("ROSTER_SYNC__HTTP__LISTEN", "")
        .stdin(Stdio::null())
        .output()
        .expect("run roster-sync");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?}: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

/// Ben's connected seconds as the `presence_sessions` view computes them: his start is
/// inferred, so the report must agree with the view rather than with a number of ours.
async fn bens_connected_seconds(db: &TestDb) -> i64 {
    db.raw
        .scalar(
            "SELECT cast(round(sum(duration_seconds)) AS bigint) FROM presence_sessions \
             WHERE attendee_id = 'bbbbbbbb-0000-4000-8000-000000000002'",
        )
        .await
}

both_backends!(
    the_presence_queries_of_docs_analysts_md_answer_from_the_views,
    the_table_csv_and_json_show_connected_time_beside_roster_time,
    the_html_timeline_draws_presence_over_the_roster_line,
    the_label_report_counts_connected_time_where_presence_exists,
);

async fn the_table_csv_and_json_show_connected_time_beside_roster_time(db: &TestDb) {
    seed(&db.store).await;
    let id = meeting();
    let ben_secs = bens_connected_seconds(db).await;
    let ben_time = format!("{}m{:02}s", ben_secs / 60, ben_secs % 60);

    let table = roster_sync(db, &["report", id.as_str()]);
    let header = table.lines().nth(1).unwrap();
    assert!(
        header.ends_with("TOTAL  CONNECTS   CONNECTED       VIDEO     CONTENT"),
        "{table}"
    );
    let line = |who: &str| {
        table
            .lines()
            .find(|l| l.trim_start().starts_with(who))
            .unwrap_or_else(|| panic!("no line for {who}: {table}"))
            .split_whitespace()
            .rev()
            .take(4)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        line("ana"),
        ["0m00s", "0m18s", "1m10s", "2"],
        "two sessions around a drop, 70 s connected, 18 s of video: {table}"
    );
    assert_eq!(line("ben"), ["0m30s", "0m00s", ben_time.as_str(), "1"]);
    assert_eq!(
        line("cat"),
        ["-", "-", "-", "-"],
        "no presence rows: {table}"
    );

    let csv = roster_sync(db, &["report", id.as_str(), "--format", "csv"]);
    let mut lines = csv.lines();
    assert!(
        lines.next().unwrap().ends_with(
            ",peak_concurrent,peak_at,presence_sessions,connected_seconds,video_seconds,content_seconds"
        ),
        "{csv}"
    );
    let row = |who: &str| {
        csv.lines()
            .find(|l| l.contains(who))
            .unwrap_or_else(|| panic!("no line for {who}: {csv}"))
            .to_owned()
    };
    assert!(row(",ana,").ends_with(",2,70.000,18.000,0.000"), "{csv}");
    assert!(
        row("\"ben <b>&\"\"' x\"").ends_with(",0.000,30.000"),
        "the name is quoted, the content counted: {csv}"
    );
    assert!(row(",cat,").ends_with(",,,,"), "{csv}");
    assert!(
        csv.lines().all(|l| l.matches(',').count()
            == csv.lines().next().unwrap().matches(',').count()
            || l.contains('"')),
        "every line has the header's columns: {csv}"
    );

    let json: serde_json::Value = serde_json::from_str(&roster_sync(
        db,
        &["report", id.as_str(), "--format", "json"],
    ))
    .unwrap();
    let person = |who: &str| {
        json["attendance"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["external_user_id"] == who)
            .unwrap_or_else(|| panic!("no {who} in {json}"))
            .clone()
    };
    let ana = person("ana");
    assert_eq!(ana["presence_sessions"], 2);
    assert_eq!(ana["connected_seconds"], 70.0);
    assert_eq!(ana["video_seconds"], 18.0);
    assert!(
        ana["total_seconds"].as_f64().unwrap() > 3000.0,
        "roster time: {ana}"
    );
    let ben = person(BEN);
    assert_eq!(
        ben["connected_seconds"].as_f64().unwrap().round() as i64,
        ben_secs
    );
    assert_eq!(ben["content_seconds"], 30.0);
    assert!(person("cat")["connected_seconds"].is_null());
    let sessions = json["presence"].as_array().unwrap();
    assert_eq!(sessions.len(), 3, "{json}");
    let dropped: Vec<_> = sessions
        .iter()
        .filter(|s| s["disconnect_reason"] == "dropped")
        .collect();
    assert_eq!(dropped.len(), 1);
    assert_eq!(dropped[0]["external_user_id"], "ana");
    let bens: Vec<_> = sessions
        .iter()
        .filter(|s| s["external_user_id"] == BEN)
        .collect();
    assert!(bens[0]["start_inferred"]["from"].is_string(), "{json}");
    assert_eq!(bens[0]["disconnect_reason"], "removed");
    assert!(bens[0]["end_inferred"]["to"].is_string(), "{json}");

    // The meeting without presence reports as before: no presence column or key.
    let quiet = quiet_meeting();
    let table = roster_sync(db, &["report", quiet.as_str()]);
    assert!(!table.contains("CONNECTED"), "{table}");
    let csv = roster_sync(db, &["report", quiet.as_str(), "--format", "csv"]);
    assert!(
        csv.lines()
            .next()
            .unwrap()
            .ends_with(",peak_concurrent,peak_at")
    );
    let json: serde_json::Value = serde_json::from_str(&roster_sync(
        db,
        &["report", quiet.as_str(), "--format", "json"],
    ))
    .unwrap();
    assert!(json.get("presence").is_none(), "{json}");
    assert!(json["attendance"][0].get("connected_seconds").is_none());
}

fn parse(html: &str) -> roxmltree::Document<'_> {
    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    roxmltree::Document::parse_with_options(html, options)
        .unwrap_or_else(|e| panic!("the page is not well-formed XML: {e}"))
}

fn has_class(n: &roxmltree::Node<'_, '_>, class: &str) -> bool {
    n.attribute("class")
        .is_some_and(|c| c.split(' ').any(|w| w == class))
}

fn within<'a, 'i>(
    node: roxmltree::Node<'a, 'i>,
    tag: &'static str,
    class: &'static str,
) -> Vec<roxmltree::Node<'a, 'i>> {
    node.descendants()
        .filter(|n| n.tag_name().name() == tag && has_class(n, class))
        .collect()
}

fn num(n: &roxmltree::Node<'_, '_>, attr: &str) -> f64 {
    n.attribute(attr).unwrap().parse().unwrap()
}

async fn the_html_timeline_draws_presence_over_the_roster_line(db: &TestDb) {
    let s = seed(&db.store).await;
    // Dan's Joined carries a timestamp before any poll saw anyone: the timeline starts there.
    let dan = attendee(4, "dan");
    poll(
        &db.store,
        &meeting(),
        at(s.t0, 160),
        &[Change::joined(&dan)],
    )
    .await;
    let early = [event("d1", EventType::AttendeeJoined, &dan, at(s.t0, 1))];
    let (stored, _) = db
        .store
        .record_presence(&meeting(), &early, at(s.t0, 161))
        .await
        .unwrap();
    assert_eq!(stored.len(), 1, "{stored:?}");
    let page = roster_sync(db, &["report", meeting().as_str(), "--format", "html"]);
    let doc = parse(&page);
    let timeline = doc
        .descendants()
        .find(|n| n.attribute("id") == Some("timeline"))
        .expect("a timeline");
    assert!(
        timeline.descendants().any(
            |n| n.tag_name().name() == "pattern" && n.attribute("id") == Some("inferred-hatch")
        ),
        "the hatching is an SVG pattern"
    );
    let row = |who: &str| {
        timeline
            .descendants()
            .find(|n| has_class(n, "person") && n.attribute("data-person") == Some(who))
            .unwrap_or_else(|| panic!("no timeline row for {who}"))
    };

    // Ana: the roster line behind two bars with a gap where she dropped, video on the first.
    let ana = row("ana");
    assert_eq!(within(ana, "rect", "roster-line").len(), 1);
    let sessions = within(ana, "g", "presence");
    assert_eq!(sessions.len(), 2);
    assert_eq!(
        sessions[0].attribute("data-disconnect-reason"),
        Some("dropped")
    );
    assert_eq!(
        sessions[1].attribute("data-disconnect-reason"),
        Some("left")
    );
    let span = |g: roxmltree::Node<'_, '_>| {
        let bars = within(g, "rect", "connected");
        let from = bars.iter().map(|b| num(b, "x")).fold(f64::MAX, f64::min);
        let to = bars
            .iter()
            .map(|b| num(b, "x") + num(b, "width"))
            .fold(f64::MIN, f64::max);
        (from, to)
    };
    let (first, second) = (span(sessions[0]), span(sessions[1]));
    assert!(
        first.1 < second.0,
        "a gap for the drop: {first:?} {second:?}"
    );
    let roster = within(ana, "rect", "roster-line")[0];
    assert!(num(&roster, "x") <= first.0 && num(&roster, "x") + num(&roster, "width") >= second.1);
    assert!(
        num(&roster, "height") < 8.0,
        "the roster lifetime is a thin line"
    );
    assert_eq!(within(sessions[0], "line", "drop").len(), 1);
    let video = within(ana, "rect", "video");
    assert_eq!(video.len(), 1);
    let v = (
        num(&video[0], "x"),
        num(&video[0], "x") + num(&video[0], "width"),
    );
    assert!(
        v.0 >= first.0 && v.1 <= first.1 + 0.01,
        "video on the first bar: {v:?} {first:?}"
    );
    assert!(
        within(ana, "rect", "inferred").is_empty(),
        "every boundary of ana came from an event"
    );

    // Ben: escaped name intact, both ends hatched, content marked.
    let ben = row(BEN);
    let bens = within(ben, "g", "presence");
    assert_eq!(bens.len(), 1);
    assert_eq!(bens[0].attribute("data-disconnect-reason"), Some("removed"));
    let hatched = within(bens[0], "rect", "inferred");
    assert_eq!(hatched.len(), 2, "an inferred start and an inferred end");
    let (from, to) = span(bens[0]);
    assert!((num(&hatched[1], "x") + num(&hatched[1], "width") - to).abs() < 0.01);
    assert!((num(&hatched[0], "x") - from).abs() < 0.01);
    assert_eq!(within(ben, "rect", "content").len(), 1);

    // Dan: connected before the roster showed him, so the time axis starts at his event and
    // his bar starts before his roster line.
    let first_tick = timeline
        .descendants()
        .find(|n| n.tag_name().name() == "text" && has_class(n, "axis"))
        .and_then(|n| n.text())
        .unwrap();
    assert_eq!(first_tick, at(s.t0, 1).format("%H:%M:%S").to_string());
    let dan = row("dan");
    let dans = within(dan, "g", "presence");
    let roster = within(dan, "rect", "roster-line")[0];
    assert!(span(dans[0]).0 < num(&roster, "x"));

    // Cat: no presence, so the roster bar as without presence.
    let cat = row("cat");
    assert!(within(cat, "rect", "roster-line").is_empty());
    assert!(within(cat, "rect", "connected").is_empty());
    assert_eq!(within(cat, "rect", "bar").len(), 1);

    // The attendance table: connected time beside the total.
    let table = doc
        .descendants()
        .find(|n| n.attribute("id") == Some("attendance"))
        .unwrap();
    let headers: Vec<_> = table
        .descendants()
        .filter(|n| n.tag_name().name() == "th")
        .filter_map(|n| n.text())
        .collect();
    assert!(headers.ends_with(&["Total", "Connects", "Connected", "Video", "Content"]));
    let connected: Vec<_> = within(table, "td", "connected")
        .iter()
        .filter_map(|n| n.text())
        .collect();
    assert_eq!(connected.len(), 3, "ana, ben and dan; cat has none");
    assert!(connected.contains(&"1m10s"));
}

async fn the_label_report_counts_connected_time_where_presence_exists(db: &TestDb) {
    let s = seed(&db.store).await;
    let now = domain::now();
    let bens = bens_connected_seconds(db).await;
    let r = LabelReport::load(&db.store, LABEL, Window::default(), now)
        .await
        .unwrap();
    let person = |who: &str| {
        r.people
            .iter()
            .find(|p| p.external_user_id.as_str() == who)
            .unwrap_or_else(|| panic!("no {who}: {r:?}"))
    };
    let ana = person("ana");
    assert_eq!(ana.meetings_attended, 2);
    assert_eq!(ana.presence_meetings, 1);
    let by_meeting = |p: &roster_sync::report::label::PersonAttendance, id: &MeetingId| {
        p.meetings
            .iter()
            .find(|a| &a.meeting_id == id)
            .map(|a| (a.seconds.round() as i64, a.connected))
    };
    assert_eq!(
        by_meeting(ana, &meeting()),
        Some((70, true)),
        "connected, not roster time"
    );
    assert_eq!(
        by_meeting(ana, &quiet_meeting()),
        Some((300, false)),
        "no presence there"
    );
    assert_eq!(ana.total_seconds.round() as i64, 370);
    assert_eq!(by_meeting(person(BEN), &meeting()), Some((bens, true)));
    let cat = person("cat");
    assert_eq!(cat.presence_meetings, 0);
    assert!(
        by_meeting(cat, &meeting()).unwrap().0 > 3000,
        "roster time for cat"
    );

    // A window cuts connected time as it cuts roster time: ana's second session only.
    let late = LabelReport::load(
        &db.store,
        LABEL,
        Window {
            since: Some(at(s.t0, 50)),
            until: Some(at(s.t0, 150)),
        },
        now,
    )
    .await
    .unwrap();
    let ana = late
        .people
        .iter()
        .find(|p| p.external_user_id.as_str() == "ana")
        .unwrap();
    assert_eq!(by_meeting(ana, &meeting()), Some((40, true)));

    // The formats say which time they count.
    let csv = roster_sync(db, &["report", "--label", LABEL, "--format", "csv"]);
    assert!(
        csv.lines()
            .next()
            .unwrap()
            .ends_with(",last_seen,presence_meetings"),
        "{csv}"
    );
    let table = roster_sync(db, &["report", "--label", LABEL]);
    assert!(table.contains("TOTAL is connected time"), "{table}");
    let page = roster_sync(db, &["report", "--label", LABEL, "--format", "html"]);
    let doc = parse(&page);
    assert_eq!(
        doc.descendants()
            .filter(|n| n.tag_name().name() == "td" && has_class(n, "connected"))
            .count(),
        2,
        "ana's and ben's cells of the meeting with presence"
    );
}

/// The SQL of the docs/analysts.md block marked `<!-- sql:NAME -->` (as `tests/report.rs`
/// reads the other example queries).
fn doc_query(name: &str) -> String {
    let doc = include_str!("../docs/analysts.md");
    let marker = format!("<!-- sql:{name} -->");
    let after = &doc[doc
        .find(&marker)
        .unwrap_or_else(|| panic!("docs/analysts.md has no {marker}"))..];
    let body = &after[after
        .find("```sql\n")
        .expect("a sql block after the marker")
        + 7..];
    body[..body.find("```").expect("the end of the sql block")].to_owned()
}

/// Runs an example query and reads every row through `read`.
macro_rules! run_doc_query {
    ($raw:expr, $name:expr, |$row:ident| $read:expr) => {{
        let sql = doc_query($name);
        match $raw {
            Raw::Postgres(pool) => sqlx::query(AssertSqlSafe(sql))
                .fetch_all(pool)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", $name))
                .iter()
                .map(|$row| $read)
                .collect::<Vec<_>>(),
            Raw::Sqlite(pool) => sqlx::query(AssertSqlSafe(sql))
                .fetch_all(pool)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}", $name))
                .iter()
                .map(|$row| $read)
                .collect::<Vec<_>>(),
        }
    }};
}

async fn the_presence_queries_of_docs_analysts_md_answer_from_the_views(db: &TestDb) {
    let s = seed(&db.store).await;
    let ben_secs = bens_connected_seconds(db).await as f64;

    let beside = run_doc_query!(&db.raw, "connected-beside-roster", |row| (
        row.try_get::<String, _>("meeting_id").unwrap(),
        row.try_get::<String, _>("external_user_id").unwrap(),
        row.try_get::<f64, _>("roster_seconds").unwrap(),
        row.try_get::<f64, _>("connected_seconds").unwrap(),
        row.try_get::<f64, _>("video_seconds").unwrap(),
        row.try_get::<f64, _>("content_seconds").unwrap(),
    ));
    let people: Vec<_> = beside
        .iter()
        .map(|(m, who, _, connected, video, content)| {
            (m.as_str(), who.as_str(), *connected, *video, *content)
        })
        .collect();
    let id = meeting();
    assert_eq!(
        people,
        [
            (id.as_str(), "ana", 70.0, 18.0, 0.0),
            (id.as_str(), BEN, ben_secs, 0.0, 30.0),
        ],
        "cat and the quiet meeting have no presence"
    );
    assert!(beside[0].2 > 3000.0, "ana stays on the roster: {beside:?}");

    let drops = run_doc_query!(&db.raw, "drops-per-person", |row| (
        row.try_get::<String, _>("external_user_id").unwrap(),
        row.try_get::<i64, _>("drops").unwrap(),
    ));
    assert_eq!(drops, [("ana".to_owned(), 1)]);

    let inferred = run_doc_query!(&db.raw, "inferred-boundaries", |row| (
        row.try_get::<String, _>("external_user_id").unwrap(),
        row.try_get::<String, _>("kind").unwrap(),
        row.try_get::<Option<String>, _>("reason").unwrap(),
        row.try_get::<String, _>("source").unwrap(),
        row.try_get::<DateTime<Utc>, _>("inferred_from").unwrap(),
        row.try_get::<DateTime<Utc>, _>("inferred_to").unwrap(),
    ));
    let kinds: Vec<_> = inferred
        .iter()
        .map(|(who, kind, reason, source, ..)| {
            (
                who.as_str(),
                kind.as_str(),
                reason.as_deref(),
                source.as_str(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            (BEN, "connected", None, "meeting_event"),
            (BEN, "disconnected", Some("removed"), "poll"),
        ],
        "ben's start (his first event was content) and his end (a poll proved him deleted)"
    );
    let (from, to) = (inferred[1].4, inferred[1].5);
    assert!(
        from >= at(s.t0, 118) && to == at(s.t0, 150),
        "between the two polls: {from} {to}"
    );
}
