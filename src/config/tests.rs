use super::*;

#[test]
fn embedded_defaults_are_valid() {
    let s = Settings::defaults().unwrap();
    assert_eq!(s.poll.max_results, 100);
    assert_eq!(s.rate.requests_per_second, 10.0);
    assert_eq!(s.rate.burst, 20);
    assert_eq!(s.poll.interval, Duration::from_secs(10));
}

#[test]
fn out_of_range_value_is_refused_naming_the_key() {
    let mut s = Settings::defaults().unwrap();
    s.poll.max_results = 101;
    let err = s.validate().unwrap_err().to_string();
    assert!(err.contains("poll.max_results"), "{err}");
}

#[test]
fn values_that_would_panic_or_spin_are_refused_naming_the_key() {
    let day = Duration::from_secs(24 * 60 * 60);
    type Change = Box<dyn Fn(&mut Settings)>;
    let cases: Vec<(&str, Change)> = vec![
        (
            "poll.failure_backoff_cap",
            Box::new(|s| s.poll.failure_backoff_cap = s.poll.interval / 2),
        ),
        (
            "shutdown.grace",
            Box::new(|s| s.shutdown.grace = Duration::from_secs(11 * 60)),
        ),
        (
            "rate.requests_per_second",
            Box::new(|s| s.rate.requests_per_second = 1e-300),
        ),
        (
            "rate.requests_per_second",
            Box::new(|s| s.rate.requests_per_second = f64::NAN),
        ),
        (
            "poll.interval",
            Box::new(|s| s.poll.interval = Duration::MAX),
        ),
        (
            "retry.cap",
            Box::new(move |s| s.retry.cap = day + Duration::from_millis(1)),
        ),
        (
            "database.statement_timeout",
            Box::new(|s| s.database.statement_timeout = Duration::ZERO),
        ),
        (
            "database.startup_timeout",
            Box::new(|s| s.database.startup_timeout = Some(Duration::MAX)),
        ),
        (
            "retention.events",
            Box::new(|s| s.retention.events = Some(Duration::MAX)),
        ),
        (
            "database.max_connections",
            Box::new(|s| s.database.max_connections = u32::MAX),
        ),
    ];
    for (key, change) in cases {
        let mut s = Settings::defaults().unwrap();
        change(&mut s);
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
    }
}

#[test]
fn the_bounds_themselves_are_accepted() {
    let mut s = Settings::defaults().unwrap();
    s.poll.interval = MAX_DURATION;
    s.poll.failure_backoff_cap = MAX_DURATION;
    s.poll.max_interval = MAX_DURATION;
    s.shutdown.grace = MAX_SHUTDOWN_GRACE;
    s.rate.requests_per_second = MIN_REQUESTS_PER_SECOND;
    s.database.startup_timeout = Some(MAX_STARTUP_TIMEOUT);
    s.retention.events = Some(MAX_RETENTION);
    s.database.max_connections = MAX_CONNECTIONS;
    s.validate().unwrap();
    s.shutdown.grace = Duration::ZERO;
    s.rate.requests_per_second = MAX_REQUESTS_PER_SECOND;
    s.validate().unwrap();
}

#[test]
fn the_poll_strategy_defaults_to_uniform_and_max_interval_is_checked() {
    let mut s = Settings::defaults().unwrap();
    assert_eq!(s.poll.strategy, PollStrategy::Uniform);
    assert_eq!(s.poll.max_interval, Duration::from_secs(120));
    s.poll.max_interval = Duration::from_secs(5);
    let err = s.validate().unwrap_err().to_string();
    assert!(err.contains("poll.max_interval"), "{err}");
    let shown = toml::to_string(&Settings::defaults().unwrap().redacted()).unwrap();
    assert!(shown.contains("strategy = \"uniform\""), "{shown}");
    assert!(shown.contains("max_interval = \"2m\""), "{shown}");
}

#[test]
fn an_unknown_poll_strategy_is_refused_naming_it() {
    let err = config::Config::builder()
        .add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ))
        .add_source(config::File::from_str(
            "[poll]\nstrategy = \"busiest_first\"\n",
            config::FileFormat::Toml,
        ))
        .build()
        .and_then(|c| c.try_deserialize::<Settings>())
        .unwrap_err()
        .to_string();
    assert!(err.contains("busiest_first"), "{err}");
    assert!(err.contains("strategy"), "{err}");
}

#[test]
fn cluster_mode_on_sqlite_is_refused_naming_the_key() {
    let mut s = Settings::defaults().unwrap();
    s.cluster.enabled = true;
    s.database.url = "sqlite://roster.db".into();
    let err = s.validate().unwrap_err().to_string();
    assert!(err.contains("cluster.enabled"), "{err}");
    s.database.url = "postgres://db/roster".into();
    s.validate().unwrap();
}

#[test]
fn a_lease_ttl_shorter_than_two_heartbeats_is_refused() {
    let mut s = Settings::defaults().unwrap();
    s.cluster.lease_ttl = Duration::from_secs(6);
    let err = s.validate().unwrap_err().to_string();
    assert!(err.contains("cluster.lease_ttl"), "{err}");
}

#[test]
fn redacted_hides_the_database_password() {
    let mut s = Settings::defaults().unwrap();
    s.database.url = "postgres://app:hunter2@db:5432/roster".into();
    let shown = toml::to_string(&s.redacted()).unwrap();
    // What `roster-sync config` prints: the URL is there, its password is not.
    assert!(
        shown.contains("url = \"postgres://app:***@db:5432/roster\""),
        "{shown}"
    );
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(!format!("{:?}", s.redacted()).contains("hunter2"));
}

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn with_webhook(entry: &str) -> Result<Settings> {
    let s: Settings = config::Config::builder()
        .add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ))
        .add_source(config::File::from_str(entry, config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| ConfigError::Parse(e.to_string()))?;
    s.validate()?;
    Ok(s)
}

#[test]
fn a_webhook_entry_with_filters_is_accepted_and_its_secret_never_shown() {
    let s = with_webhook(&format!(
        "[[webhooks]]\nname = \"security\"\nurl = \"https://hooks.example.com/roster\"\n\
         secret = \"{SECRET}\"\nkinds = [\"joined\", \"capabilities_changed\"]\n\
         meeting_labels = [\"board\"]\nexternal_user_ids = [\"*@partner.example\"]\n"
    ))
    .unwrap();
    assert_eq!(s.webhooks.len(), 1);
    assert_eq!(s.webhook.batch, 100);
    let shown = toml::to_string(&s.redacted()).unwrap();
    let debugged = format!("{s:?}");
    for text in [shown, debugged] {
        assert!(!text.contains("MfKQ9r8"), "{text}");
    }
}

#[test]
fn bad_webhook_entries_are_refused_naming_the_key() {
    let entry = |fields: &str| {
        format!("[[webhooks]]\nname = \"a\"\nurl = \"https://h.example/x\"\n{fields}\n")
    };
    let cases = [
        (
            entry(&format!("secret = \"{SECRET}\"\nkinds = [\"arrived\"]")),
            "webhooks[0].kinds",
        ),
        (
            entry("secret = \"whsec_not base64!\""),
            "webhooks[0].secret",
        ),
        (
            entry("secret = \"MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\""),
            "webhooks[0].secret",
        ),
        (
            entry("secret_env = \"ROSTER_SYNC_TEST_UNSET_SECRET\""),
            "webhooks[0].secret_env",
        ),
        (
            format!(
                "{}{}",
                entry(&format!("secret = \"{SECRET}\"")),
                entry(&format!("secret = \"{SECRET}\""))
            ),
            "webhooks[1].name",
        ),
        (
            format!("[[webhooks]]\nname = \"a\"\nurl = \"ftp://h/x\"\nsecret = \"{SECRET}\"\n"),
            "webhooks[0].url",
        ),
        (
            format!(
                "[[webhooks]]\nname = \"a\"\nurl = \"http://hooks.example.com/x\"\nsecret = \"{SECRET}\"\n"
            ),
            "webhooks[0].url",
        ),
        ("[webhook]\nbatch = 0\n".to_owned(), "webhook.batch"),
    ];
    for (toml, key) in cases {
        let err = with_webhook(&toml).unwrap_err().to_string();
        assert!(err.contains(key), "{toml}: {err}");
        assert!(!err.contains("MfKQ9r8"), "{err}");
    }
}

#[test]
fn meeting_events_are_off_by_default_and_every_bad_value_names_its_key() {
    let s = Settings::defaults().unwrap();
    assert!(!s.meeting_events.enabled());
    assert_eq!(s.meeting_events.wait, Duration::from_secs(20));
    assert_eq!(s.meeting_events.coalesce, Duration::from_secs(1));
    type Change = Box<dyn Fn(&mut MeetingEventsSettings)>;
    let cases: Vec<(&str, Change)> = vec![
        (
            "meeting_events.queue_url",
            Box::new(|m| m.queue_url = "sqs://q".into()),
        ),
        (
            "meeting_events.region",
            Box::new(|m| m.region = "US EAST".into()),
        ),
        (
            "meeting_events.endpoint_url",
            Box::new(|m| m.endpoint_url = "localhost:4566".into()),
        ),
        (
            "meeting_events.wait",
            Box::new(|m| m.wait = Duration::from_secs(21)),
        ),
        ("meeting_events.batch", Box::new(|m| m.batch = 0)),
        ("meeting_events.batch", Box::new(|m| m.batch = 11)),
        (
            "meeting_events.visibility_timeout",
            Box::new(|m| m.visibility_timeout = Duration::ZERO),
        ),
        (
            "meeting_events.visibility_timeout",
            Box::new(|m| m.visibility_timeout = Duration::from_secs(13 * 3600)),
        ),
        (
            "meeting_events.coalesce",
            Box::new(|m| m.coalesce = Duration::from_secs(61)),
        ),
        (
            "meeting_events.track_external_meeting_ids",
            Box::new(|m| m.track_external_meeting_ids = vec![String::new()]),
        ),
        (
            "meeting_events.label",
            Box::new(|m| m.label = "x".repeat(201)),
        ),
    ];
    for (key, change) in cases {
        let mut s = Settings::defaults().unwrap();
        change(&mut s.meeting_events);
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains(key), "{key}: {err}");
    }
}

#[test]
fn the_queue_region_comes_from_the_key_then_the_url_then_chime_region() {
    let mut m = Settings::defaults().unwrap().meeting_events;
    let default = Region::parse("eu-central-1").unwrap();
    m.queue_url = "https://sqs.us-west-2.amazonaws.com/123456789012/q".into();
    assert_eq!(m.queue_region(&default).as_str(), "us-west-2");
    m.queue_url = "https://vpce-0a1b.sqs.ap-southeast-1.vpce.amazonaws.com/123456789012/q".into();
    assert_eq!(m.queue_region(&default).as_str(), "ap-southeast-1");
    m.queue_url = "http://127.0.0.1:4566/123456789012/q".into();
    assert_eq!(m.queue_region(&default).as_str(), "eu-central-1");
    m.region = "us-east-1".into();
    assert_eq!(m.queue_region(&default).as_str(), "us-east-1");
}
