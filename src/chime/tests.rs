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

/// Full jitter spreads the delay over the whole step: never past it, and not bunched near
/// zero either (a zero backoff would retry at once). With 1000 draws, the chance that the
/// mean falls below 40 % of the step or no draw reaches 90 % of it is below 1e-20.
#[test]
fn full_jitter_spreads_over_the_whole_step() {
    let e = ChimeError::Transport {
        message: String::new(),
    };
    let step = Duration::from_millis(800);
    let draws: Vec<Duration> = (0..1000)
        .map(|_| retry_delay(&e, Some(step), Duration::from_secs(20)).unwrap())
        .collect();
    let mean = draws.iter().sum::<Duration>() / 1000;
    let longest = draws.iter().max().copied().unwrap_or_default();
    assert!(draws.iter().all(|d| *d <= step), "a delay past the step");
    assert!(
        mean >= step.mul_f64(0.4),
        "delays bunched near zero: mean {mean:?}"
    );
    assert!(
        longest >= step.mul_f64(0.9),
        "no delay near the step: longest {longest:?}"
    );
}
