//! What the real binary prints: tables whose columns line up whatever the widths of the ids,
//! regions and labels (non-ASCII labels included), and webhook URLs shown as scheme, host and
//! port only, in `roster-sync config` and in validation errors.

mod common;

use std::process::{Command, Output, Stdio};

/// The binary with a clean environment (see `common::binary_env`).
fn roster_sync(args: &[&str]) -> Command {
    let mut cmd = Command::new(common::BIN);
    cmd.args(args)
        .env_clear()
        .envs(common::binary_env())
        .env("ROSTER_SYNC__HTTP__LISTEN", "")
        .stdin(Stdio::null());
    cmd
}

fn run(cmd: &mut Command) -> (Output, String, String) {
    let out = cmd.output().expect("run roster-sync");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (out, stdout, stderr)
}

/// The char offsets where the header's columns start (after two or more spaces).
fn column_starts(header: &str) -> Vec<usize> {
    let chars: Vec<char> = header.chars().collect();
    let mut starts = vec![0];
    let first = chars.iter().position(|c| *c != ' ').unwrap_or(0);
    for i in (first + 2)..chars.len() {
        if chars[i] != ' ' && chars[i - 1] == ' ' && chars[i - 2] == ' ' {
            starts.push(i);
        }
    }
    starts
}

/// Every row has a value starting exactly at each of the header's column starts, preceded
/// by the two spaces that separate columns.
fn assert_aligned(table: &str) {
    let mut lines = table.lines();
    let header = lines.next().expect("a header line");
    let starts = column_starts(header);
    for line in lines {
        let chars: Vec<char> = line.chars().collect();
        for &s in &starts[1..] {
            let ok =
                chars.len() > s && chars[s] != ' ' && chars[s - 1] == ' ' && chars[s - 2] == ' ';
            assert!(ok, "column at char {s} misaligned in:\n{table}");
        }
    }
}

#[test]
fn meetings_list_columns_line_up_with_mixed_regions_and_non_ascii_labels() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("roster.db").display());
    let meetings = [
        ("11111111-1111-1111-1111-111111111111", "us-east-1", "a"),
        (
            "22222222-2222-2222-2222-222222222222",
            "ap-southeast-1",
            "Zoë Ångström – équipe",
        ),
        (
            "33333333-3333-3333-3333-333333333333",
            "us-gov-west-1",
            "日本語のラベル",
        ),
        (
            "44444444-4444-4444-4444-444444444444",
            "eu-central-1",
            "a label far longer than any column would be",
        ),
    ];
    for (id, region, label) in meetings {
        let (out, _, stderr) = run(roster_sync(&[
            "meetings",
            "add",
            id,
            "--region",
            region,
            "--label",
            label,
            "--no-verify",
        ])
        .env("DATABASE_URL", &url));
        assert!(out.status.success(), "{stderr}");
    }
    let (out, stdout, stderr) = run(roster_sync(&["meetings", "list"]).env("DATABASE_URL", &url));
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.lines().count(), 5, "{stdout}");
    assert_aligned(&stdout);
    for (_, region, label) in meetings {
        assert!(stdout.contains(region), "{stdout}");
        assert!(stdout.contains(label), "{stdout}");
    }
}

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Webhook URLs carrying credentials in the path and in the query.
const CREDENTIAL_URLS: [(&str, &str); 4] = [
    (
        "https://hooks.slack.com/services/T0SLACKTOK/B0SLACKTOK/XyZsLaCkPaThToKeN",
        "SLACKTOK",
    ),
    (
        "https://hooks.example.com/roster?token=tok3nS3CR3T",
        "tok3nS3CR3T",
    ),
    (
        "https://hooks.example.com:8443/in?code=c0d3S3CR3T&x=1",
        "c0d3S3CR3T",
    ),
    (
        "https://user:pw@hooks.example.com/a/b?sig=s1gS3CR3T#frag",
        "s1gS3CR3T",
    ),
];

#[test]
fn config_shows_webhook_urls_as_scheme_host_and_port_only() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("roster.toml");
    let mut toml = String::new();
    for (i, (url, _)) in CREDENTIAL_URLS.iter().enumerate() {
        toml.push_str(&format!(
            "[[webhooks]]\nname = \"w{i}\"\nurl = \"{url}\"\nsecret = \"{SECRET}\"\n"
        ));
    }
    std::fs::write(&file, toml).unwrap();
    let (out, stdout, stderr) = run(roster_sync(&["config"]).arg("--config").arg(&file));
    assert!(out.status.success(), "{stderr}");
    for (_, secret) in CREDENTIAL_URLS {
        assert!(!stdout.contains(secret), "{secret} shown:\n{stdout}");
        assert!(!stderr.contains(secret), "{secret} logged:\n{stderr}");
    }
    for shown in [
        "\"https://hooks.slack.com\"",
        "\"https://hooks.example.com\"",
        "\"https://hooks.example.com:8443\"",
    ] {
        assert!(stdout.contains(shown), "{shown} missing:\n{stdout}");
    }
    assert!(!stdout.contains("pw@"), "{stdout}");
}

#[test]
fn a_refused_webhook_url_is_named_without_its_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("roster.toml");
    // http:// to another host is refused; the message must not quote the path or query.
    std::fs::write(
        &file,
        format!(
            "[[webhooks]]\nname = \"slack\"\n\
             url = \"http://hooks.slack.com/services/T0SLACKTOK/B0SLACKTOK/XyZ?token=tok3nS3CR3T\"\n\
             secret = \"{SECRET}\"\n"
        ),
    )
    .unwrap();
    let (out, stdout, stderr) = run(roster_sync(&["config"]).arg("--config").arg(&file));
    assert!(!out.status.success(), "{stdout}");
    assert!(stderr.contains("webhooks[0].url"), "{stderr}");
    assert!(stderr.contains("http://hooks.slack.com"), "{stderr}");
    for secret in ["SLACKTOK", "tok3nS3CR3T"] {
        assert!(!stderr.contains(secret), "{secret} shown:\n{stderr}");
        assert!(!stdout.contains(secret), "{secret} shown:\n{stdout}");
    }
}

#[tokio::test]
async fn events_table_columns_line_up_with_long_and_non_ascii_external_user_ids() {
    use roster_sync::domain::{
        self, Attendee, AttendeeId, Capabilities, ExternalUserId, MeetingId, Region, Roster,
    };
    use roster_sync::store::PollRecord;
    let db = common::sqlite_db().await;
    let id = MeetingId::parse("55555555-5555-5555-5555-555555555555").unwrap();
    db.store
        .add_meeting(
            &id,
            &Region::parse("us-east-1").unwrap(),
            None,
            domain::now(),
            false,
        )
        .await
        .unwrap();
    let names = [
        "a",
        "Zoë «Ångström» d'Arc",
        "日本語の名前",
        "someone.with.a.very.long.external.user.id@partner.example.com",
    ];
    let roster = Roster::new(
        names
            .iter()
            .enumerate()
            .map(|(i, n)| Attendee {
                attendee_id: AttendeeId::parse(&format!("00000000-0000-0000-0000-{i:012}"))
                    .unwrap(),
                external_user_id: ExternalUserId::new(*n),
                capabilities: Capabilities::DEFAULT,
            })
            .collect(),
    );
    let changes = roster_sync::diff::diff(&[], &roster);
    let now = domain::now();
    db.store
        .apply(PollRecord {
            meeting_id: &id,
            expected_seq: 0,
            started_at: now,
            observed_at: now,
            previous_poll_at: None,
            changes: &changes,
        })
        .await
        .unwrap();
    let (out, stdout, stderr) =
        run(roster_sync(&["events", "--format", "table"]).env("DATABASE_URL", &db.url));
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.lines().count(), 5, "{stdout}");
    assert_aligned(&stdout);
    db.finish().await;
}
