//! Configuration: embedded defaults (`config/default.toml`), an optional TOML file, then the
//! environment (`DATABASE_URL`, `ROSTER_SYNC__SECTION__KEY`).
//!
//! Every value is validated once here, so the rest of the program never sees an invalid one;
//! a refusal names the key and says why. It must never print a secret: use
//! [`Settings::redacted`] for display.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::domain::{MeetingId, Region};

/// The defaults, compiled in so the binary runs with no file at all.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Environment variable that names the configuration file (like `--config`).
pub const CONFIG_ENV: &str = "ROSTER_SYNC_CONFIG";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Parse(String),
    #[error("invalid configuration: `{key}` {why}")]
    Invalid { key: &'static str, why: String },
    /// Like `Invalid`, for a key inside a list entry (`webhooks[1].url`).
    #[error("invalid configuration: `{key}` {why}")]
    InvalidEntry { key: String, why: String },
}

pub type Result<T, E = ConfigError> = std::result::Result<T, E>;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub chime: ChimeSettings,
    pub poll: PollSettings,
    pub retry: RetrySettings,
    pub rate: RateSettings,
    pub http: HttpSettings,
    pub log: LogSettings,
    pub shutdown: ShutdownSettings,
    pub cluster: ClusterSettings,
    #[serde(default)]
    pub meetings: Vec<MeetingEntry>,
    /// How webhook sinks deliver (`[webhook]`); the sinks themselves are `[[webhooks]]`.
    pub webhook: WebhookSettings,
    #[serde(default)]
    pub webhooks: Vec<WebhookEntry>,
    pub retention: RetentionSettings,
    /// `[meeting_events]`: Chime lifecycle events from an SQS queue, as polling hints.
    pub meeting_events: MeetingEventsSettings,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Empty means the embedded SQLite default; see [`Settings::database_url`].
    pub url: String,
    pub max_connections: u32,
    pub migrate_on_start: bool,
    /// How long `run` waits for an unreachable database at start; `None` (empty): forever.
    #[serde(with = "optional_duration")]
    pub startup_timeout: Option<Duration>,
    /// Postgres `statement_timeout` and `idle_in_transaction_session_timeout` of the daemon's
    /// connections: a statement running longer fails instead of holding up the scheduler, and
    /// a session frozen that long inside a transaction is ended by the server, releasing its
    /// locks. Ignored on SQLite.
    #[serde(with = "human_duration")]
    pub statement_timeout: Duration,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChimeSettings {
    pub region: Region,
    /// Empty means the AWS default endpoint.
    pub endpoint_url: String,
    #[serde(with = "human_duration")]
    pub connect_timeout: Duration,
    #[serde(with = "human_duration")]
    pub attempt_timeout: Duration,
    #[serde(with = "human_duration")]
    pub page_timeout: Duration,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PollSettings {
    #[serde(with = "human_duration")]
    pub interval: Duration,
    pub max_results: i32,
    pub concurrency: usize,
    pub jitter: f64,
    #[serde(with = "human_duration")]
    pub failure_backoff_cap: Duration,
    /// How the request budget is shared between meetings when it cannot poll every one of
    /// them each `interval`.
    pub strategy: PollStrategy,
    /// `change_aware`: the longest a meeting waits between two polls (failures aside).
    #[serde(with = "human_duration")]
    pub max_interval: Duration,
}

/// `poll.strategy`: how the scheduler spends a request budget too small for every meeting
/// to be polled each `poll.interval` (see `crate::scheduler`). With an ample budget both
/// poll every meeting every `poll.interval`.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PollStrategy {
    /// Every meeting is due each `poll.interval` and due meetings go stalest first: all
    /// meetings are equally stale.
    Uniform,
    /// Each meeting is polled at a rate that goes as √(its change rate ÷ its pages), between
    /// once per `poll.interval` and once per `poll.max_interval`.
    ChangeAware,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    #[serde(with = "human_duration")]
    pub base: Duration,
    #[serde(with = "human_duration")]
    pub cap: Duration,
    pub max_retries: u32,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateSettings {
    pub requests_per_second: f64,
    pub burst: u32,
    pub adaptive: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    /// Empty disables the endpoint.
    pub listen: String,
    /// `/healthz` fails when the scheduler loop has not ticked for this long.
    #[serde(with = "human_duration")]
    pub stall_after: Duration,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownSettings {
    #[serde(with = "human_duration")]
    pub grace: Duration,
}

/// `[cluster]`: several replicas on one Postgres database (see `crate::cluster`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// Meetings are leased to replicas instead of this process taking the single-writer lock.
    pub enabled: bool,
    /// A lease, and a replica's row, expire this long after the last heartbeat.
    #[serde(with = "human_duration")]
    pub lease_ttl: Duration,
    /// How often leases are renewed and rebalanced.
    #[serde(with = "human_duration")]
    pub heartbeat: Duration,
}

/// A `[[meetings]]` entry.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MeetingEntry {
    pub id: MeetingId,
    pub region: Option<Region>,
    pub label: Option<String>,
}

/// `[webhook]`: what every webhook sink shares.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// Events per POST, at most.
    pub batch: u32,
    /// How often an idle sink looks for new events.
    #[serde(with = "human_duration")]
    pub poll_interval: Duration,
    /// Timeout of one POST, connecting included.
    #[serde(with = "human_duration")]
    pub timeout: Duration,
    /// First wait before retrying a failed POST; doubles per failure up to `backoff_cap`.
    #[serde(with = "human_duration")]
    pub backoff_base: Duration,
    #[serde(with = "human_duration")]
    pub backoff_cap: Duration,
}

/// `[retention]`: how long recorded data is kept.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// Events older than this are deleted by the daemon (see `crate::retention` for which
    /// ones are kept longer); `None` (empty): kept forever.
    #[serde(with = "optional_duration")]
    pub events: Option<Duration>,
}

/// `[meeting_events]`: Chime meeting lifecycle events read from an SQS queue (see
/// `crate::meeting_events`). They decide when a meeting is polled, never what is recorded.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MeetingEventsSettings {
    /// The queue's URL; empty: no intake, everything works as without events.
    pub queue_url: String,
    /// The queue's region; empty: the one in `queue_url`, else `chime.region`.
    pub region: String,
    /// Empty: the AWS default endpoint; else a VPC endpoint, the simulator or any
    /// SQS-compatible server.
    pub endpoint_url: String,
    /// ReceiveMessage long-poll wait (0..=20 s).
    #[serde(with = "human_duration")]
    pub wait: Duration,
    /// Messages per ReceiveMessage, 1..=10.
    pub batch: i32,
    /// How long a received message stays invisible to other receivers (1 s..=12 h); it must
    /// outlast handling one batch, or another replica handles it too (harmless, but wasted).
    #[serde(with = "human_duration")]
    pub visibility_timeout: Duration,
    /// Events of one meeting within this window make one poll.
    #[serde(with = "human_duration")]
    pub coalesce: Duration,
    /// Presence: how long an event is held before it is applied, so that events delivered
    /// out of order within this window are applied in Chime-timestamp order.
    #[serde(with = "human_duration")]
    pub reorder_window: Duration,
    /// Track a meeting not yet tracked on its first event (discovery).
    pub auto_track: bool,
    /// Discovery: only meetings whose externalMeetingId matches one of these patterns (`*`,
    /// `?`); empty: every meeting.
    #[serde(default)]
    pub track_external_meeting_ids: Vec<String>,
    /// Discovery: the label of a discovered meeting; empty: its externalMeetingId.
    pub label: String,
}

/// The longest ReceiveMessage wait SQS accepts.
pub const MAX_SQS_WAIT: Duration = Duration::from_secs(20);

/// The longest visibility timeout SQS accepts.
pub const MAX_SQS_VISIBILITY: Duration = Duration::from_secs(12 * 60 * 60);

impl MeetingEventsSettings {
    /// Whether the intake runs (`queue_url` is set).
    pub fn enabled(&self) -> bool {
        !self.queue_url.is_empty()
    }

    /// The queue's region: `region`, else the one named in `queue_url`
    /// (`https://sqs.{region}.amazonaws.com/…`, VPC endpoints too), else `default`.
    pub fn queue_region(&self, default: &Region) -> Region {
        if let Ok(r) = Region::parse(&self.region) {
            return r;
        }
        region_in_url(&self.queue_url).unwrap_or_else(|| default.clone())
    }

    fn validate(&self) -> Result<()> {
        let bad = |key: &'static str, why: String| ConfigError::Invalid { key, why };
        let url = &self.queue_url;
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            return Err(bad(
                "meeting_events.queue_url",
                format!("{url:?} is not an http:// or https:// URL (empty: no meeting events)"),
            ));
        }
        if !self.region.is_empty() && Region::parse(&self.region).is_err() {
            return Err(bad(
                "meeting_events.region",
                format!(
                    "{:?} is not a region like us-east-1 (empty: the one in queue_url)",
                    self.region
                ),
            ));
        }
        let endpoint = &self.endpoint_url;
        if !(endpoint.is_empty()
            || endpoint.starts_with("http://")
            || endpoint.starts_with("https://"))
        {
            return Err(bad(
                "meeting_events.endpoint_url",
                format!("{endpoint:?} is not an http:// or https:// URL"),
            ));
        }
        if self.wait > MAX_SQS_WAIT {
            return Err(bad(
                "meeting_events.wait",
                format!(
                    "is {}, must be at most 20s (SQS's longest long poll)",
                    humantime::format_duration(self.wait)
                ),
            ));
        }
        if !(1..=10).contains(&self.batch) {
            return Err(bad(
                "meeting_events.batch",
                format!("is {}, must be within 1..=10 (SQS's limit)", self.batch),
            ));
        }
        if self.visibility_timeout < Duration::from_secs(1)
            || self.visibility_timeout > MAX_SQS_VISIBILITY
        {
            return Err(bad(
                "meeting_events.visibility_timeout",
                format!(
                    "is {}, must be within 1s..=12h (SQS's limits, whole seconds)",
                    humantime::format_duration(self.visibility_timeout)
                ),
            ));
        }
        if self.coalesce > Duration::from_secs(60) {
            return Err(bad(
                "meeting_events.coalesce",
                format!(
                    "is {}, must be at most 1m (longer is what poll.interval is for)",
                    humantime::format_duration(self.coalesce)
                ),
            ));
        }
        if self.reorder_window > Duration::from_secs(60) {
            return Err(bad(
                "meeting_events.reorder_window",
                format!(
                    "is {}, must be at most 1m (presence is recorded that much later)",
                    humantime::format_duration(self.reorder_window)
                ),
            ));
        }
        if self.reorder_window >= self.visibility_timeout {
            return Err(bad(
                "meeting_events.reorder_window",
                format!(
                    "is {}, must be shorter than meeting_events.visibility_timeout ({}): a held \
                     message would come back before it is applied",
                    humantime::format_duration(self.reorder_window),
                    humantime::format_duration(self.visibility_timeout)
                ),
            ));
        }
        for pattern in &self.track_external_meeting_ids {
            if pattern.is_empty() || pattern.chars().count() > 64 {
                return Err(bad(
                    "meeting_events.track_external_meeting_ids",
                    format!("holds {pattern:?}; a pattern has 1..=64 characters"),
                ));
            }
        }
        if self.label.chars().count() > 200 {
            return Err(bad(
                "meeting_events.label",
                "is longer than 200 characters".into(),
            ));
        }
        Ok(())
    }
}

/// The region an SQS URL names: the label after `sqs` in its host
/// (`sqs.us-east-1.amazonaws.com`, `vpce-1.sqs.us-east-1.vpce.amazonaws.com`).
fn region_in_url(url: &str) -> Option<Region> {
    let rest = url.split_once("://")?.1;
    let host = rest.split(['/', ':']).next()?;
    let mut labels = host.split('.');
    labels.find(|l| *l == "sqs")?;
    labels.next().and_then(|r| Region::parse(r).ok())
}

/// A `[[webhooks]]` entry: one receiver, with its own durable cursor and filters.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookEntry {
    /// Unique; the delivery cursor is stored under it, so renaming a sink starts it afresh.
    pub name: String,
    pub url: String,
    /// A Standard Webhooks secret, `whsec_` + base64 of 24..=64 random bytes.
    pub secret: Option<Secret>,
    /// The environment variable holding the secret instead (read at start).
    pub secret_env: Option<String>,
    /// Event kinds to deliver; empty means all.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Only events of meetings with one of these labels; empty means all meetings.
    #[serde(default)]
    pub meeting_labels: Vec<String>,
    /// Only events whose ExternalUserId matches one of these patterns (`*` any run of
    /// characters, `?` one character); empty means all.
    #[serde(default)]
    pub external_user_ids: Vec<String>,
}

impl WebhookEntry {
    /// The secret, from `secret` or the variable `secret_env` names.
    ///
    /// # Errors
    /// The variable named by `secret_env` is unset, or neither or both keys are given.
    pub fn secret_value(&self) -> std::result::Result<String, String> {
        match (&self.secret, &self.secret_env) {
            (Some(secret), None) => Ok(secret.expose().to_owned()),
            (None, Some(var)) => std::env::var(var)
                .map_err(|_| format!("names the environment variable {var}, which is not set")),
            (Some(_), Some(_)) => Err("gives both secret and secret_env; keep one".into()),
            (None, None) => Err("has neither secret nor secret_env".into()),
        }
    }
}

/// A secret value: `Debug` never shows it, and [`Settings::redacted`] replaces it.
#[derive(Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// What a redacted secret prints as.
pub const REDACTED: &str = "***";

/// The longest value a timing key accepts (intervals, timeouts, backoffs). Anything longer is
/// a typo, and bounding it keeps every `Instant + duration` the daemon computes far from
/// overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// The longest `database.startup_timeout` (longer: leave it empty, which waits forever).
pub const MAX_STARTUP_TIMEOUT: Duration = Duration::from_secs(366 * 24 * 60 * 60);

/// The longest `retention.events`: a century, far inside what timestamps can subtract.
pub const MAX_RETENTION: Duration = Duration::from_secs(36_525 * 24 * 60 * 60);

/// The longest `shutdown.grace`: a stop must stay within what supervisors wait for
/// (systemd's default `TimeoutStopSec` is 90 s, Kubernetes' grace period 30 s).
pub const MAX_SHUTDOWN_GRACE: Duration = Duration::from_secs(10 * 60);

/// The lowest `rate.requests_per_second`: one request per 1000 s. The highest is
/// [`MAX_REQUESTS_PER_SECOND`]. Between them every wait the budget computes is a finite,
/// representable duration.
pub const MIN_REQUESTS_PER_SECOND: f64 = 0.001;

/// The most connections a pool may have: the pool sets aside room for each up front, and
/// Postgres itself allows 100 by default.
pub const MAX_CONNECTIONS: u32 = 1000;

/// The highest `rate.requests_per_second` (the service's quota is 10, adjustable).
pub const MAX_REQUESTS_PER_SECOND: f64 = 100_000.0;

impl Settings {
    /// Loads defaults, then `file` (or the file named by `ROSTER_SYNC_CONFIG`), then the
    /// environment, and validates the result.
    ///
    /// # Errors
    /// An unreadable file, a malformed or wrongly typed value, an unknown key, or a value out
    /// of range; the message names the file or key.
    pub fn load(file: Option<&Path>) -> Result<Self> {
        let env_file = std::env::var_os(CONFIG_ENV).map(PathBuf::from);
        let file = file.map(Path::to_path_buf).or(env_file);
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(path) = &file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Unreadable {
                path: path.clone(),
                source,
            })?;
            builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
        }
        if let Ok(url) = std::env::var("DATABASE_URL") {
            builder = builder
                .set_override("database.url", url)
                .map_err(|e| ConfigError::Parse(e.to_string()))?;
        }
        // ROSTER_SYNC__DATABASE__URL beats DATABASE_URL: the specific name wins.
        if let Ok(url) = std::env::var("ROSTER_SYNC__DATABASE__URL") {
            builder = builder
                .set_override("database.url", url)
                .map_err(|e| ConfigError::Parse(e.to_string()))?;
        }
        builder = builder.add_source(
            config::Environment::with_prefix("ROSTER_SYNC")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        );
        let settings: Settings =
            builder
                .build()
                .and_then(|c| c.try_deserialize())
                .map_err(|e| match &file {
                    Some(path) => ConfigError::Parse(format!("{e} (file {})", path.display())),
                    None => ConfigError::Parse(e.to_string()),
                })?;
        settings.validate()?;
        Ok(settings)
    }

    /// The defaults alone, as the demo and benchmarks start from.
    ///
    /// # Errors
    /// Only if the embedded defaults are broken, which a unit test rules out.
    pub fn defaults() -> Result<Self> {
        let settings: Settings = config::Config::builder()
            .add_source(config::File::from_str(
                DEFAULT_TOML,
                config::FileFormat::Toml,
            ))
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::Parse(e.to_string()))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Refuses values the program could not run with, naming the key.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for the first bad value found.
    pub fn validate(&self) -> Result<()> {
        fn bad(key: &'static str, why: impl Into<String>) -> ConfigError {
            ConfigError::Invalid {
                key,
                why: why.into(),
            }
        }
        let url = &self.database.url;
        if !(url.is_empty()
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://")
            || url.starts_with("sqlite:"))
        {
            return Err(bad(
                "database.url",
                "must start with postgres://, postgresql:// or sqlite: (or be empty for the embedded SQLite default)",
            ));
        }
        if !(1..=MAX_CONNECTIONS).contains(&self.database.max_connections) {
            return Err(bad(
                "database.max_connections",
                format!(
                    "is {}, must be within 1..={MAX_CONNECTIONS}",
                    self.database.max_connections
                ),
            ));
        }
        let endpoint = &self.chime.endpoint_url;
        if !(endpoint.is_empty()
            || endpoint.starts_with("http://")
            || endpoint.starts_with("https://"))
        {
            return Err(bad(
                "chime.endpoint_url",
                format!("{endpoint:?} is not an http:// or https:// URL"),
            ));
        }
        self.validate_durations()?;
        if self.retry.cap < self.retry.base {
            return Err(bad("retry.cap", "must not be shorter than retry.base"));
        }
        if self.poll.failure_backoff_cap < self.poll.interval {
            return Err(bad(
                "poll.failure_backoff_cap",
                format!(
                    "is {}, must not be shorter than poll.interval ({})",
                    humantime::format_duration(self.poll.failure_backoff_cap),
                    humantime::format_duration(self.poll.interval)
                ),
            ));
        }
        if !(1..=100).contains(&self.poll.max_results) {
            return Err(bad(
                "poll.max_results",
                format!(
                    "is {}, must be within 1..=100 (the API's limit)",
                    self.poll.max_results
                ),
            ));
        }
        if self.poll.concurrency == 0 {
            return Err(bad("poll.concurrency", "must be at least 1"));
        }
        if !(0.0..=0.5).contains(&self.poll.jitter) {
            return Err(bad(
                "poll.jitter",
                format!("is {}, must be within 0.0..=0.5", self.poll.jitter),
            ));
        }
        if self.poll.max_interval < self.poll.interval {
            return Err(bad(
                "poll.max_interval",
                format!(
                    "is {}, must not be shorter than poll.interval ({})",
                    humantime::format_duration(self.poll.max_interval),
                    humantime::format_duration(self.poll.interval)
                ),
            ));
        }
        let rps = self.rate.requests_per_second;
        if !(MIN_REQUESTS_PER_SECOND..=MAX_REQUESTS_PER_SECOND).contains(&rps) {
            return Err(bad(
                "rate.requests_per_second",
                format!(
                    "is {rps}, must be within {MIN_REQUESTS_PER_SECOND}..={MAX_REQUESTS_PER_SECOND}"
                ),
            ));
        }
        if self.rate.burst == 0 {
            return Err(bad("rate.burst", "must be at least 1"));
        }
        if !self.http.listen.is_empty() && self.http.listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(bad(
                "http.listen",
                format!(
                    "{:?} is not an address like 127.0.0.1:9464",
                    self.http.listen
                ),
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(bad(
                "log.level",
                format!(
                    "{:?} is not a tracing filter such as \"info\"",
                    self.log.level
                ),
            ));
        }
        self.validate_cluster()?;
        let mut seen = std::collections::HashSet::new();
        for m in &self.meetings {
            if !seen.insert(&m.id) {
                return Err(bad("meetings", format!("lists meeting {} twice", m.id)));
            }
        }
        if self.retention.events.is_some_and(|d| d.is_zero()) {
            return Err(bad(
                "retention.events",
                "must be longer than zero (empty keeps events forever)",
            ));
        }
        self.meeting_events.validate()?;
        self.validate_webhooks()
    }

    /// Every duration key is within its bounds: above zero where zero cannot work, and never
    /// so long that adding it to a clock reading could overflow.
    fn validate_durations(&self) -> Result<()> {
        let longest = |d: Duration| humantime::format_duration(d).to_string();
        let positive = [
            (
                "database.statement_timeout",
                self.database.statement_timeout,
            ),
            ("chime.connect_timeout", self.chime.connect_timeout),
            ("chime.attempt_timeout", self.chime.attempt_timeout),
            ("chime.page_timeout", self.chime.page_timeout),
            ("poll.interval", self.poll.interval),
            ("poll.failure_backoff_cap", self.poll.failure_backoff_cap),
            ("poll.max_interval", self.poll.max_interval),
            ("retry.base", self.retry.base),
            ("retry.cap", self.retry.cap),
            ("http.stall_after", self.http.stall_after),
            ("cluster.heartbeat", self.cluster.heartbeat),
            ("cluster.lease_ttl", self.cluster.lease_ttl),
            ("webhook.poll_interval", self.webhook.poll_interval),
            ("webhook.timeout", self.webhook.timeout),
            ("webhook.backoff_base", self.webhook.backoff_base),
            ("webhook.backoff_cap", self.webhook.backoff_cap),
        ];
        for (key, d) in positive {
            if d.is_zero() {
                return Err(ConfigError::Invalid {
                    key,
                    why: "must be longer than zero".into(),
                });
            }
        }
        let bounded = positive
            .into_iter()
            .map(|(k, d)| (k, d, MAX_DURATION))
            .chain([
                ("shutdown.grace", self.shutdown.grace, MAX_SHUTDOWN_GRACE),
                (
                    "database.startup_timeout",
                    self.database.startup_timeout.unwrap_or_default(),
                    MAX_STARTUP_TIMEOUT,
                ),
                (
                    "retention.events",
                    self.retention.events.unwrap_or_default(),
                    MAX_RETENTION,
                ),
            ]);
        for (key, d, max) in bounded {
            if d > max {
                return Err(ConfigError::Invalid {
                    key,
                    why: format!("is {}, must be at most {}", longest(d), longest(max)),
                });
            }
        }
        Ok(())
    }

    fn validate_cluster(&self) -> Result<()> {
        let c = &self.cluster;
        if c.lease_ttl < c.heartbeat * 2 {
            return Err(ConfigError::Invalid {
                key: "cluster.lease_ttl",
                why: format!(
                    "is {}, must be at least twice cluster.heartbeat ({}) so one late heartbeat does not lose every lease",
                    humantime::format_duration(c.lease_ttl),
                    humantime::format_duration(c.heartbeat)
                ),
            });
        }
        let url = self.database_url();
        if c.enabled && !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(ConfigError::Invalid {
                key: "cluster.enabled",
                why: "needs a Postgres database.url: several replicas cannot share a SQLite file"
                    .into(),
            });
        }
        Ok(())
    }

    fn validate_webhooks(&self) -> Result<()> {
        if !(1..=10_000).contains(&self.webhook.batch) {
            return Err(ConfigError::Invalid {
                key: "webhook.batch",
                why: format!("is {}, must be within 1..=10000", self.webhook.batch),
            });
        }
        if self.webhook.backoff_cap < self.webhook.backoff_base {
            return Err(ConfigError::Invalid {
                key: "webhook.backoff_cap",
                why: "must not be shorter than webhook.backoff_base".into(),
            });
        }
        let mut names = std::collections::HashSet::new();
        for (i, w) in self.webhooks.iter().enumerate() {
            let bad = |field: &str, why: String| ConfigError::InvalidEntry {
                key: format!("webhooks[{i}].{field}"),
                why,
            };
            if w.name.is_empty()
                || w.name.len() > 100
                || !w
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(bad(
                    "name",
                    format!(
                        "{:?} must be 1..=100 characters of letters, digits, '-', '_' or '.'",
                        w.name
                    ),
                ));
            }
            if !names.insert(w.name.as_str()) {
                return Err(bad("name", format!("{:?} is used by two webhooks", w.name)));
            }
            crate::signing::check_url(&w.url).map_err(|why| bad("url", why))?;
            let key = if w.secret_env.is_some() {
                "secret_env"
            } else {
                "secret"
            };
            let secret = w.secret_value().map_err(|why| bad(key, why))?;
            crate::signing::signing_key(&secret).map_err(|why| bad(key, why))?;
            for kind in &w.kinds {
                if kind.parse::<crate::domain::EventKind>().is_err() {
                    return Err(bad(
                        "kinds",
                        format!("{kind:?} is not one of joined, left, capabilities_changed"),
                    ));
                }
            }
            for pattern in &w.external_user_ids {
                if pattern.is_empty() {
                    return Err(bad("external_user_ids", "holds an empty pattern".into()));
                }
            }
        }
        Ok(())
    }

    /// The database URL to use: the configured one, or the embedded SQLite default.
    pub fn database_url(&self) -> String {
        if !self.database.url.is_empty() {
            return self.database.url.clone();
        }
        let dir = std::env::var_os("STATE_DIRECTORY")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        format!("sqlite://{}", dir.join("roster-sync.db").display())
    }

    /// The endpoint override, if any.
    pub fn endpoint_url(&self) -> Option<&str> {
        Some(self.chime.endpoint_url.as_str()).filter(|s| !s.is_empty())
    }

    /// A copy safe to print: the database password is replaced by `***`, webhook secrets by
    /// a placeholder and webhook URLs by their origin (scheme, host, port).
    pub fn redacted(&self) -> Self {
        let mut s = self.clone();
        s.database.url = crate::redact::redact_url(&s.database.url);
        for w in &mut s.webhooks {
            w.url = crate::redact::webhook_origin(&w.url);
            if w.secret.is_some() {
                w.secret = Some(Secret::new(REDACTED));
            }
        }
        s
    }
}

/// Serde adapter for an optional human-readable duration: an empty string is `None`.
mod optional_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let raw = String::deserialize(d)?;
        if raw.trim().is_empty() {
            return Ok(None);
        }
        humantime::parse_duration(raw.trim())
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("{raw:?} is not a duration: {e}")))
    }
}

/// Serde adapter for human-readable durations ("10s", "1m 30s", "250ms").
mod human_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!("{text:?} is not a duration like \"10s\" ({e})"))
        })
    }
}

#[cfg(test)]
mod tests;
