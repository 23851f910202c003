//! The simulator's own rules, without HTTP: configuration, quotas, faults and hooks.

use super::operations::Route;
use super::*;

#[test]
fn the_default_config_is_the_real_quota() {
    let c = SimConfig::default();
    assert_eq!((c.rate, c.burst, c.max_attendees), (10.0, 20, 250));
    assert!(c.validate().is_ok());
}

#[test]
fn out_of_range_config_is_refused() {
    let bad = |f: fn(&mut SimConfig)| {
        let mut c = SimConfig::default();
        f(&mut c);
        c.validate().is_err()
    };
    assert!(bad(|c| c.rate = -1.0));
    assert!(bad(|c| c.rate = f64::NAN));
    assert!(bad(|c| c.burst = 0));
    assert!(bad(|c| c.fault_rate = 1.5));
    assert!(bad(|c| c.max_attendees = 0));
}

#[test]
fn routes_follow_the_model_paths() {
    let r = |m: &str, p: &str, q: &[(&str, &str)]| {
        let q: Vec<(String, String)> = q
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Route::parse(&Method::from_bytes(m.as_bytes()).unwrap(), p, &q).map(|r| r.operation())
    };
    assert_eq!(r("POST", "/meetings", &[]), Some(Operation::CreateMeeting));
    assert_eq!(
        r("POST", "/meetings/x/attendees", &[]),
        Some(Operation::CreateAttendee)
    );
    assert_eq!(
        r(
            "POST",
            "/meetings/x/attendees",
            &[("operation", "batch-create")]
        ),
        Some(Operation::BatchCreateAttendee)
    );
    assert_eq!(
        r("GET", "/meetings/x/attendees", &[]),
        Some(Operation::ListAttendees)
    );
    assert_eq!(
        r("PUT", "/meetings/x/attendees/y/capabilities", &[]),
        Some(Operation::UpdateAttendeeCapabilities)
    );
    assert_eq!(
        r("DELETE", "/meetings/x/attendees/y", &[]),
        Some(Operation::DeleteAttendee)
    );
    assert_eq!(r("PATCH", "/meetings/x", &[]), None);
    assert_eq!(r("GET", "/meetings/x/attendees/y/z", &[]), None);
    assert_eq!(
        r("POST", "/meetings/x/attendees", &[("operation", "nope")]),
        None
    );
}

#[test]
fn the_error_body_code_drops_the_exception_suffix() {
    let resp = ApiError::NotFound("gone".into()).into_response("rid");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(resp.headers()["x-amzn-ErrorType"], "NotFoundException");
    assert_eq!(body_code("NotFoundException"), "NotFound");
}

#[test]
fn the_error_body_code_drops_a_front_end_suffix_too() {
    assert_eq!(
        body_code(
            "AccessDeniedException:http://internal.amazon.com/coral/com.amazon.coral.service/"
        ),
        "AccessDenied"
    );
    assert_eq!(body_code("SomethingOdd"), "SomethingOdd");
    assert_eq!(body_code(""), "");
}

#[test]
fn the_simulator_cli_pages_by_keyset_unless_told_otherwise() {
    use clap::Parser as _;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimArgs,
    }
    let default = Cli::try_parse_from(["sim"]).unwrap();
    assert_eq!(SimConfig::from(&default.sim).paging, Paging::Keyset);
    let offset = Cli::try_parse_from(["sim", "--paging", "offset"]).unwrap();
    assert_eq!(SimConfig::from(&offset.sim).paging, Paging::Offset);
    assert!(Cli::try_parse_from(["sim", "--paging", "random"]).is_err());
}

#[tokio::test]
async fn a_deletion_hook_cannot_be_armed_on_page_zero() {
    let sim = start("127.0.0.1:0".parse().unwrap(), SimConfig::default())
        .await
        .unwrap();
    let m = MeetingId::parse(&Uuid::new_v4().to_string()).unwrap();
    assert_eq!(sim.delete_before_page(&m, 0, 1), Err(HookError::PageZero));
    assert_eq!(sim.pending_hooks(&m), 0);
    sim.delete_before_page(&m, 2, 1).unwrap();
    assert_eq!(sim.pending_hooks(&m), 1);
    assert!(sim.hook_deletions(&m).is_empty());
}
