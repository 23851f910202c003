use chrono::{TimeZone, Utc};

use super::*;

const MEETING: &str = "4f1c7a2e-0b3d-4c5e-9f60-7a8b9c0d1e2f";
const ATTENDEE: &str = "0a1b2c3d-0b3d-4c5e-9f60-7a8b9c0d1e2f";

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 4, 12, 0, 0).unwrap()
}

fn joined() -> MeetingEvent {
    MeetingEvent {
        id: "5b1f2c3d-1111-2222-3333-444455556666".into(),
        event_type: EventType::AttendeeJoined,
        region: Region::parse("us-east-1").unwrap(),
        time: now(),
        occurred_at: now() - TimeDelta::seconds(1),
        meeting_id: MeetingId::parse(MEETING).unwrap(),
        external_meeting_id: Some("standup-42".into()),
        media_region: Some("eu-west-1".into()),
        attendee: Some(EventAttendee {
            attendee_id: AttendeeId::parse(ATTENDEE).unwrap(),
            external_user_id: Some(ExternalUserId::new("Zoë «the» O'Neil")),
        }),
        network_type: Some("Voip".into()),
        capabilities: None,
        success: None,
    }
}

#[test]
fn an_event_written_for_eventbridge_parses_back_to_itself() {
    let event = joined();
    let body = event.to_body("123456789012");
    assert_eq!(parse_body(&body, now()).unwrap(), event);
}

#[test]
fn an_sns_envelope_around_an_event_parses_to_the_event() {
    let event = joined();
    let body = sns_envelope(&event.to_body("1"), "arn:aws:sns:us-east-1:1:chime");
    assert_eq!(parse_body(&body, now()).unwrap(), event);
}

#[test]
fn capabilities_updated_carries_its_capabilities_and_success() {
    let mut event = joined();
    event.event_type = EventType::AttendeeCapabilitiesUpdated;
    event.network_type = None;
    event.capabilities = Some(Capabilities {
        audio: Capability::Send,
        video: Capability::None,
        content: Capability::None,
    });
    event.success = Some(true);
    assert_eq!(parse_body(&event.to_body("1"), now()).unwrap(), event);
}

#[test]
fn every_bad_body_is_rejected_with_its_outcome() {
    let good = joined().to_body("1");
    let with = |from: &str, to: &str| good.replace(from, to);
    let cases: Vec<(String, &str)> = vec![
        ("not json".into(), "malformed"),
        ("x".repeat(MAX_BODY_BYTES + 1), "too_large"),
        (with("aws.chime", "aws.s3"), "not_chime"),
        (
            with("chime:AttendeeJoined", "chime:AttendeeTeleported"),
            "unknown_type",
        ),
        (
            with("chime:AttendeeJoined", "AttendeeJoined"),
            "unknown_type",
        ),
        (with(MEETING, "not-a-guid"), "bad_id"),
        (with(ATTENDEE, "nope"), "bad_id"),
        (
            with(
                &(now() - TimeDelta::seconds(1))
                    .timestamp_millis()
                    .to_string(),
                "0",
            ),
            "bad_timestamp",
        ),
        (
            with(
                &(now() - TimeDelta::seconds(1))
                    .timestamp_millis()
                    .to_string(),
                &(now() + TimeDelta::hours(2)).timestamp_millis().to_string(),
            ),
            "bad_timestamp",
        ),
        (
            r#"{"Type":"Notification","Message":"{broken"}"#.into(),
            "bad_sns_message",
        ),
        (r#"{"Type":"Notification"}"#.into(), "bad_sns_message"),
        ("[]".into(), "not_chime"),
    ];
    for (body, outcome) in cases {
        let got = parse_body(&body, now());
        assert_eq!(
            got.as_ref().map_err(Rejection::outcome).err(),
            Some(outcome),
            "{} → {got:?}",
            body.chars().take(80).collect::<String>()
        );
    }
}

#[test]
fn an_attendee_event_without_an_attendee_id_is_refused() {
    let body = joined().to_body("1").replace("attendeeId", "somethingElse");
    assert_eq!(
        parse_body(&body, now()),
        Err(Rejection::MissingField {
            field: "detail.attendeeId"
        })
    );
}

#[test]
fn ids_are_compared_in_lower_case() {
    let body = joined()
        .to_body("1")
        .replace(MEETING, &MEETING.to_uppercase());
    assert_eq!(
        parse_body(&body, now()).unwrap().meeting_id.as_str(),
        MEETING
    );
}

#[test]
fn a_content_share_attendee_is_the_sharing_attendee() {
    let mut event = joined();
    event.event_type = EventType::AttendeeContentJoined;
    let body = event
        .to_body("1")
        .replace(ATTENDEE, &format!("{ATTENDEE}#content"));
    assert_eq!(parse_body(&body, now()).unwrap(), event);
    let body = joined()
        .to_body("1")
        .replace(ATTENDEE, &format!("{ATTENDEE}#content"));
    assert_eq!(
        parse_body(&body, now()).map_err(|e| e.outcome()),
        Err("bad_id")
    );
}
