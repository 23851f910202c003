use super::*;

#[test]
fn retry_delay_is_at_least_retry_after_and_gives_up_past_the_cap() {
    let e = ChimeError::Unavailable {
        status: 503,
        code: "ServiceUnavailableException".into(),
        retry_after: Some(Duration::from_secs(2)),
        request_id: None,
        message: String::new(),
    };
    let cap = Duration::from_secs(20);
    for _ in 0..100 {
        let d = retry_delay(&e, Some(Duration::from_millis(400)), cap).unwrap();
        assert!(d >= Duration::from_secs(2));
    }
    assert_eq!(
        retry_delay(&e, None, cap),
        None,
        "an exhausted budget stays exhausted"
    );
    assert_eq!(
        retry_delay(&e, Some(Duration::from_secs(1)), Duration::from_secs(1)),
        None
    );
}

#[test]
fn full_jitter_stays_within_the_step() {
    let e = ChimeError::Transport {
        message: String::new(),
    };
    for _ in 0..100 {
        let d = retry_delay(
            &e,
            Some(Duration::from_millis(800)),
            Duration::from_secs(20),
        )
        .unwrap();
        assert!(d <= Duration::from_millis(800));
    }
}
