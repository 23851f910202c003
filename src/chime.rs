//! The only code that touches the AWS SDK: `ListAttendees` pages in, a complete [`Roster`] or a
//! classified [`ChimeError`] out.
//!
//! SDK retries are off; this module retries a failed request itself (exponential backoff, full
//! jitter, at least any Retry-After) so retries never multiply, and spends one token of the
//! region's budget for that operation per request. `GetMeeting` and `GetAttendee` confirm an
//! ending or a departure. `chime/classify.rs` sorts failures into [`ChimeError`] classes;
//! `chime/convert.rs` turns answers into domain values and drops the JoinToken. It must never
//! return a partial roster, and never keep, log or return a JoinToken.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_chimesdkmeetings as chime;
use aws_sdk_chimesdkmeetings::operation::get_attendee::GetAttendeeError;
use aws_sdk_chimesdkmeetings::operation::get_meeting::GetMeetingError;
use aws_sdk_chimesdkmeetings::operation::list_attendees::ListAttendeesError;
use backon::{ExponentialBuilder, Retryable};
use rand::Rng;

use crate::config::Settings;
use crate::domain::{Attendee, AttendeeId, MeetingId, Region, Roster};
use crate::rate::RateLimiter;

mod classify;
mod convert;

use classify::classify;
use convert::{Page, convert_attendee, parse_page};

/// A failed request to the service, classified by what the caller should do about it.
///
/// Only [`ChimeError::NotFound`] and [`ChimeError::Forbidden`] can say anything about a
/// meeting's existence, and only when the service sent the modelled error code: a status alone
/// (an HTML 404 from a proxy, a 403 from IAM) never does. Even then a `ListAttendees` answer is
/// only a hint; the scheduler asks `GetMeeting` before it ends a meeting.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ChimeError {
    /// Over the request quota (429 or a throttling code). Retried after backoff, no sooner
    /// than `retry_after`; the rate budget slows down.
    #[error(
        "throttled by the service, HTTP {status} {code} (request id {request_id:?}): {message}"
    )]
    Throttled {
        status: u16,
        code: String,
        retry_after: Option<Duration>,
        request_id: Option<String>,
        message: String,
    },
    /// 500/503 and other 5xx: the service failed; retried, no sooner than `retry_after`.
    #[error(
        "service unavailable, HTTP {status} {code} (request id {request_id:?}, retry after {retry_after:?}): {message}"
    )]
    Unavailable {
        status: u16,
        code: String,
        retry_after: Option<Duration>,
        request_id: Option<String>,
        message: String,
    },
    /// No HTTP answer: connect failure, reset, timeout. Retried.
    #[error("transport error: {message}")]
    Transport { message: String },
    /// The modelled `NotFoundException`: the service says the resource asked about does not
    /// exist (in this region). Never retried.
    #[error("not found, HTTP {status} {code} (request id {request_id:?}): {message}")]
    NotFound {
        status: u16,
        code: String,
        retry_after: Option<Duration>,
        request_id: Option<String>,
        message: String,
    },
    /// The modelled `ForbiddenException`: reported for meetings that ended, but also sent for
    /// other reasons. Never retried.
    #[error("forbidden, HTTP {status} {code} (request id {request_id:?}): {message}")]
    Forbidden {
        status: u16,
        code: String,
        retry_after: Option<Duration>,
        request_id: Option<String>,
        message: String,
    },
    /// Credentials or authorization (IAM denial, expired or unknown token, clock skew, an
    /// unsigned request, or any other 401/403 that is not `ForbiddenException`). Says nothing
    /// about the meeting: every meeting of the account and region fails the same way.
    #[error("access denied, HTTP {status} {code} (request id {request_id:?}): {message}")]
    Denied {
        status: u16,
        code: String,
        retry_after: Option<Duration>,
        request_id: Option<String>,
        message: String,
    },
    /// Any other refusal: a 400-class code, an unknown code, or a status with no code at all
    /// (an HTML page from a proxy or a wrong endpoint). Retrying the same request cannot help.
    #[error("request refused, HTTP {status} {code} (request id {request_id:?}): {message}")]
    Refused {
        status: u16,
        code: String,
        retry_after: Option<Duration>,
        request_id: Option<String>,
        message: String,
    },
    /// A 2xx answer that is not a valid page. Never retried; the poll fails.
    #[error("malformed answer from the service: {message}")]
    Malformed { message: String },
}

pub type Result<T, E = ChimeError> = std::result::Result<T, E>;

/// What `x-amzn-ErrorType` carries for an unreadable answer or none at all.
pub const NO_CODE: &str = "(no error code)";

impl ChimeError {
    /// Throttled, Unavailable and Transport may succeed on a later attempt.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Throttled { .. } | Self::Unavailable { .. } | Self::Transport { .. }
        )
    }

    /// The wait the service asked for (`Retry-After`, on any status), if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Throttled { retry_after, .. }
            | Self::Unavailable { retry_after, .. }
            | Self::NotFound { retry_after, .. }
            | Self::Forbidden { retry_after, .. }
            | Self::Denied { retry_after, .. }
            | Self::Refused { retry_after, .. } => *retry_after,
            Self::Transport { .. } | Self::Malformed { .. } => None,
        }
    }

    /// The service's error code, or a stand-in for answers without one.
    pub fn code(&self) -> &str {
        match self {
            Self::Throttled { code, .. }
            | Self::Unavailable { code, .. }
            | Self::NotFound { code, .. }
            | Self::Forbidden { code, .. }
            | Self::Denied { code, .. }
            | Self::Refused { code, .. } => code,
            Self::Transport { .. } => "(transport)",
            Self::Malformed { .. } => "(malformed answer)",
        }
    }

    /// The HTTP status of the answer; `None` when there was no answer (transport) or it
    /// was a 2xx that could not be read.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Throttled { status, .. }
            | Self::Unavailable { status, .. }
            | Self::NotFound { status, .. }
            | Self::Forbidden { status, .. }
            | Self::Denied { status, .. }
            | Self::Refused { status, .. } => Some(*status).filter(|s| *s != 0),
            Self::Transport { .. } | Self::Malformed { .. } => None,
        }
    }

    /// The service's request id (`x-amzn-RequestId`), which AWS support asks for.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            Self::Throttled { request_id, .. }
            | Self::Unavailable { request_id, .. }
            | Self::NotFound { request_id, .. }
            | Self::Forbidden { request_id, .. }
            | Self::Denied { request_id, .. }
            | Self::Refused { request_id, .. } => request_id.as_deref(),
            Self::Transport { .. } | Self::Malformed { .. } => None,
        }
    }

    /// True for the credential and authorization failures that a whole account and region
    /// shares ([`ChimeError::Denied`]).
    pub fn is_denied(&self) -> bool {
        matches!(self, Self::Denied { .. })
    }

    /// A short label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Throttled { .. } => "throttled",
            Self::Unavailable { .. } => "unavailable",
            Self::Transport { .. } => "transport",
            Self::NotFound { .. } => "not_found",
            Self::Forbidden { .. } => "forbidden",
            Self::Denied { .. } => "denied",
            Self::Refused { .. } => "refused",
            Self::Malformed { .. } => "malformed",
        }
    }
}

/// A complete roster and what fetching it cost.
#[derive(Debug, Clone)]
pub struct FetchedRoster {
    pub roster: Roster,
    /// Pages in the final, complete sweep.
    pub pages: u32,
    /// HTTP requests sent, retries included.
    pub requests: u32,
    /// Of those, answered 429.
    pub throttled: u32,
}

/// Told when a poll stops and starts sending `ListAttendees` requests: while it sleeps between
/// two attempts (a backoff or a Retry-After) or confirms departures with other operations.
/// Whoever launched it lends what it set aside for it (its place in the region's page window)
/// to other polls meanwhile, so a failing meeting never delays the others.
pub trait Pause: Send + Sync {
    /// `true` when the pause begins, `false` when it ends.
    fn paused(&self, paused: bool);
}

/// A [`Pause`] for callers that set nothing aside.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPause;

impl Pause for NoPause {
    fn paused(&self, _paused: bool) {}
}

/// Where rosters come from. The scheduler depends on this, not on the SDK, so it can be
/// tested without HTTP.
pub trait RosterSource: Send + Sync + 'static {
    /// Every page of the meeting's attendee list, or the error that stopped it.
    fn fetch_roster(
        &self,
        meeting: &MeetingId,
        region: &Region,
        pause: &dyn Pause,
    ) -> impl Future<Output = Result<FetchedRoster>> + Send;

    /// `GetMeeting`: `Ok` when the meeting exists. Only [`ChimeError::NotFound`] says that it
    /// does not.
    fn get_meeting(
        &self,
        meeting: &MeetingId,
        region: &Region,
    ) -> impl Future<Output = Result<()>> + Send;

    /// `GetAttendee`: the attendee as the service has it now. Only [`ChimeError::NotFound`]
    /// says that it was deleted.
    fn get_attendee(
        &self,
        meeting: &MeetingId,
        region: &Region,
        attendee: &AttendeeId,
    ) -> impl Future<Output = Result<Attendee>> + Send;

    /// The current request rate of the region's `ListAttendees` budget, for metrics.
    fn current_rate(&self, _region: &Region) -> Option<f64> {
        None
    }
}

/// How a page is retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub base: Duration,
    pub cap: Duration,
    /// Retries after the first attempt of each page.
    pub max_retries: u32,
}

/// Everything [`ChimeClient`] needs besides AWS credentials.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub endpoint_url: Option<String>,
    pub max_results: i32,
    pub connect_timeout: Duration,
    pub attempt_timeout: Duration,
    pub page_timeout: Duration,
    pub retry: RetryPolicy,
    pub requests_per_second: f64,
    pub burst: u32,
    pub adaptive: bool,
}

impl ClientOptions {
    /// For the simulator: `endpoint`, a quota of `rps`/`burst`, short timeouts and retries,
    /// pages of 100. Tests and tools start from this and change what they study.
    pub fn for_endpoint(endpoint: &str, rps: f64, burst: u32) -> Self {
        Self {
            endpoint_url: Some(endpoint.to_owned()),
            max_results: 100,
            connect_timeout: Duration::from_secs(2),
            attempt_timeout: Duration::from_secs(5),
            page_timeout: Duration::from_secs(10),
            retry: RetryPolicy {
                base: Duration::from_millis(20),
                cap: Duration::from_secs(1),
                max_retries: 3,
            },
            requests_per_second: rps,
            burst,
            adaptive: true,
        }
    }

    pub fn from_settings(s: &Settings) -> Self {
        Self {
            endpoint_url: s.endpoint_url().map(str::to_owned),
            max_results: s.poll.max_results,
            connect_timeout: s.chime.connect_timeout,
            attempt_timeout: s.chime.attempt_timeout,
            page_timeout: s.chime.page_timeout,
            retry: RetryPolicy {
                base: s.retry.base,
                cap: s.retry.cap,
                max_retries: s.retry.max_retries,
            },
            requests_per_second: s.rate.requests_per_second,
            burst: s.rate.burst,
            adaptive: s.rate.adaptive,
        }
    }
}

/// Totals since start, for tests, benchmarks and the metrics endpoint.
#[derive(Debug, Default)]
pub struct Counters {
    pub requests: AtomicU64,
    pub pages_ok: AtomicU64,
    pub throttled: AtomicU64,
    pub unavailable: AtomicU64,
    pub transport: AtomicU64,
    pub other_errors: AtomicU64,
    /// `GetMeeting` requests sent to confirm that a meeting ended.
    pub meeting_checks: AtomicU64,
    /// `GetAttendee` requests sent to confirm that an attendee left.
    pub attendee_checks: AtomicU64,
}

/// The operations roster-sync calls. Each has its own quota per account and region, so each
/// has its own request budget: confirmations never eat the `ListAttendees` budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    ListAttendees,
    GetMeeting,
    GetAttendee,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ListAttendees => "ListAttendees",
            Self::GetMeeting => "GetMeeting",
            Self::GetAttendee => "GetAttendee",
        }
    }
}

/// One control region: its SDK client and one request budget per operation.
#[derive(Clone)]
struct RegionClient {
    /// The control region, the `region` label of the request metrics.
    name: Region,
    client: chime::Client,
    list_attendees: Arc<RateLimiter>,
    get_meeting: Arc<RateLimiter>,
    get_attendee: Arc<RateLimiter>,
}

impl RegionClient {
    fn budget(&self, op: Operation) -> &RateLimiter {
        match op {
            Operation::ListAttendees => &self.list_attendees,
            Operation::GetMeeting => &self.get_meeting,
            Operation::GetAttendee => &self.get_attendee,
        }
    }
}

/// The SDK-backed [`RosterSource`]: one SDK client per control region, and one request budget
/// per region and operation.
pub struct ChimeClient {
    sdk_config: aws_config::SdkConfig,
    options: ClientOptions,
    regions: Mutex<HashMap<Region, RegionClient>>,
    counters: Counters,
}

/// Loads the standard AWS configuration (credential chain: environment, profile, web identity
/// / IRSA, container and instance roles) with SDK retries and stalled-stream protection
/// disabled and our timeouts.
pub async fn load_sdk_config(
    options: &ClientOptions,
    default_region: &Region,
) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(default_region.as_str().to_owned()))
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .timeout_config(timeouts(options))
        .stalled_stream_protection(no_stalled_stream_protection())
        .load()
        .await
}

/// Only the attempt timeout, not also an operation timeout: with the SDK's retries off an
/// operation is one attempt, and the attempt timeout covers the whole exchange (sending,
/// the answer's body, its parsing). So the shorter of `attempt_timeout` and `page_timeout`
/// bounds each page, at the cost of one timer a request instead of two.
fn timeouts(o: &ClientOptions) -> aws_config::timeout::TimeoutConfig {
    aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(o.connect_timeout)
        .operation_attempt_timeout(o.attempt_timeout.min(o.page_timeout))
        .build()
}

/// The SDK's stalled-stream protection watches the throughput of every answer's body, with a
/// timer of its own; the attempt timeout (see [`timeouts`]) already bounds a stalled page.
fn no_stalled_stream_protection()
-> aws_config::stalled_stream_protection::StalledStreamProtectionConfig {
    aws_config::stalled_stream_protection::StalledStreamProtectionConfig::disabled()
}

/// An SDK configuration with fixed placeholder credentials for an endpoint that does not
/// check signatures: the simulator, in tests, the demo and the benchmark. Never for AWS.
pub fn simulator_sdk_config(default_region: &Region) -> aws_config::SdkConfig {
    let credentials = chime::config::Credentials::new(
        "roster-sync-sim",
        "roster-sync-sim",
        None,
        None,
        "simulator",
    );
    aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(default_region.as_str().to_owned()))
        .credentials_provider(chime::config::SharedCredentialsProvider::new(credentials))
        .build()
}

impl ChimeClient {
    /// A client on an explicit SDK configuration (tests pass static credentials this way).
    /// Retries and stalled-stream protection are forced off and the timeouts from `options`
    /// applied whatever `sdk_config` says.
    pub fn new(sdk_config: aws_config::SdkConfig, options: ClientOptions) -> Self {
        let sdk_config = sdk_config
            .into_builder()
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .timeout_config(timeouts(&options))
            .stalled_stream_protection(no_stalled_stream_protection())
            .build();
        Self {
            sdk_config,
            options,
            regions: Mutex::new(HashMap::new()),
            counters: Counters::default(),
        }
    }

    /// A client from the configuration, using the standard AWS credential chain.
    pub async fn from_settings(settings: &Settings) -> Self {
        let options = ClientOptions::from_settings(settings);
        let sdk_config = load_sdk_config(&options, &settings.chime.region).await;
        Self::new(sdk_config, options)
    }

    /// The AWS configuration this client was built from (credential chain, HTTP client,
    /// retries off): other AWS clients of the daemon (the meeting-events queue) start from it.
    pub fn sdk_config(&self) -> &aws_config::SdkConfig {
        &self.sdk_config
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// The SDK client for `region` (created on first use), for callers that drive other
    /// operations, such as the demo's churn. Polls go through [`RosterSource::fetch_roster`].
    pub fn sdk_client(&self, region: &Region) -> chime::Client {
        self.region(region).client
    }

    /// The `ListAttendees` request budget of `region`.
    pub fn budget(&self, region: &Region) -> Arc<RateLimiter> {
        self.region(region).list_attendees
    }

    /// Makes every request budget of `region` `share` (0..=1) of the configured one: in
    /// cluster mode, this replica's part of the account's quota (see `crate::cluster`).
    pub fn set_share(&self, region: &Region, share: f64) {
        let r = self.region(region);
        for budget in [&r.list_attendees, &r.get_meeting, &r.get_attendee] {
            budget.set_share(share);
        }
    }

    fn region(&self, region: &Region) -> RegionClient {
        let mut map = self.regions.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(region.clone())
            .or_insert_with(|| {
                let mut b = chime::config::Builder::from(&self.sdk_config)
                    .region(aws_config::Region::new(region.as_str().to_owned()));
                if let Some(url) = &self.options.endpoint_url {
                    b = b.endpoint_url(url);
                }
                let limiter = || {
                    Arc::new(RateLimiter::new(
                        self.options.requests_per_second,
                        self.options.burst,
                        self.options.adaptive,
                    ))
                };
                RegionClient {
                    name: region.clone(),
                    client: chime::Client::from_conf(b.build()),
                    list_attendees: limiter(),
                    get_meeting: limiter(),
                    get_attendee: limiter(),
                }
            })
            .clone()
    }

    /// One request of `op`, after taking a token from its budget; counts and classifies the
    /// answer, and adapts the budget to throttling.
    async fn send<T, F>(&self, region: &RegionClient, op: Operation, request: F) -> Result<T>
    where
        F: Future<Output = Result<T>>,
    {
        let budget = region.budget(op);
        budget.acquire().await;
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let result = request.await;
        let outcome = match &result {
            Ok(_) => {
                budget.on_success();
                "ok"
            }
            Err(e) => {
                let counter = match e {
                    ChimeError::Throttled { .. } => {
                        if budget.on_throttle() {
                            metrics::counter!(
                                "roster_sync_rate_decreases_total",
                                "region" => region.name.to_string(),
                                "operation" => op.as_str()
                            )
                            .increment(1);
                        }
                        &self.counters.throttled
                    }
                    ChimeError::Unavailable { .. } => &self.counters.unavailable,
                    ChimeError::Transport { .. } => &self.counters.transport,
                    _ => &self.counters.other_errors,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                e.kind()
            }
        };
        metrics::counter!(
            "roster_sync_chime_requests_total",
            "region" => region.name.to_string(),
            "operation" => op.as_str(),
            "outcome" => outcome
        )
        .increment(1);
        result
    }

    /// One `ListAttendees` page.
    async fn list_page(
        &self,
        region: &RegionClient,
        meeting: &MeetingId,
        token: Option<&str>,
    ) -> Result<Page> {
        let request = async {
            let answer = region
                .client
                .list_attendees()
                .meeting_id(meeting.as_str())
                .max_results(self.options.max_results)
                .set_next_token(token.map(str::to_owned))
                .send()
                .await;
            match answer {
                Ok(out) => parse_page(out),
                Err(e) => Err(classify(e, |e| match e {
                    ListAttendeesError::ServiceUnavailableException(e) => {
                        e.retry_after_seconds.clone()
                    }
                    _ => None,
                })),
            }
        };
        let page = self.send(region, Operation::ListAttendees, request).await?;
        self.counters.pages_ok.fetch_add(1, Ordering::Relaxed);
        Ok(page)
    }

    fn backoff(&self) -> ExponentialBuilder {
        let policy = self.options.retry;
        ExponentialBuilder::default()
            .with_min_delay(policy.base)
            .with_max_delay(policy.cap)
            .with_max_times(policy.max_retries as usize)
    }

    /// Runs `attempt` with our retry policy: exponential backoff with full jitter, never
    /// sooner than a Retry-After, giving up when the service asks for a longer wait than the
    /// cap. `pause` hears about every sleep.
    async fn with_retries<T, F, Fut>(&self, what: &str, pause: &dyn Pause, attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let cap = self.options.retry.cap;
        let mut attempt = attempt;
        let asleep = AtomicBool::new(false);
        (|| {
            if asleep.swap(false, Ordering::Relaxed) {
                pause.paused(false);
            }
            attempt()
        })
        .retry(self.backoff())
        .sleep(tokio::time::sleep)
        .when(ChimeError::is_retryable)
        .adjust(|e: &ChimeError, next| retry_delay(e, next, cap))
        .notify(|e: &ChimeError, wait: Duration| {
            tracing::debug!(error = %e, ?wait, what, "retrying");
            asleep.store(true, Ordering::Relaxed);
            pause.paused(true);
        })
        .await
    }
}

impl RosterSource for ChimeClient {
    async fn fetch_roster(
        &self,
        meeting: &MeetingId,
        region: &Region,
        pause: &dyn Pause,
    ) -> Result<FetchedRoster> {
        let region = self.region(region);
        let requests_before = self.counters.requests.load(Ordering::Relaxed);
        let throttled_before = self.counters.throttled.load(Ordering::Relaxed);

        let mut attendees = Vec::new();
        let mut token: Option<String> = None;
        let mut pages = 0u32;
        loop {
            let page = self
                .with_retries("ListAttendees page", pause, || {
                    self.list_page(&region, meeting, token.as_deref())
                })
                .await?;
            pages += 1;
            attendees.extend(page.attendees);
            match page.next_token {
                Some(next) if Some(&next) == token.as_ref() => {
                    return Err(ChimeError::Malformed {
                        message: "the service returned the same NextToken twice".into(),
                    });
                }
                Some(next) => token = Some(next),
                None => break,
            }
            if pages > MAX_PAGES {
                return Err(ChimeError::Malformed {
                    message: format!("pagination did not end after {MAX_PAGES} pages"),
                });
            }
        }
        // Counters are shared by concurrent polls, so these are approximate per poll; the
        // totals in `counters()` are exact.
        let requests = self.counters.requests.load(Ordering::Relaxed) - requests_before;
        let throttled = self.counters.throttled.load(Ordering::Relaxed) - throttled_before;
        Ok(FetchedRoster {
            roster: Roster::new(attendees),
            pages,
            requests: u32::try_from(requests).unwrap_or(u32::MAX),
            throttled: u32::try_from(throttled).unwrap_or(u32::MAX),
        })
    }

    async fn get_meeting(&self, meeting: &MeetingId, region: &Region) -> Result<()> {
        let region = self.region(region);
        self.with_retries("GetMeeting", &NoPause, || async {
            self.counters.meeting_checks.fetch_add(1, Ordering::Relaxed);
            let request = async {
                let answer = region
                    .client
                    .get_meeting()
                    .meeting_id(meeting.as_str())
                    .send()
                    .await;
                match answer {
                    // What the meeting is does not matter, only that the service knows it.
                    Ok(_) => Ok(()),
                    Err(e) => Err(classify(e, |e| match e {
                        GetMeetingError::ServiceUnavailableException(e) => {
                            e.retry_after_seconds.clone()
                        }
                        _ => None,
                    })),
                }
            };
            self.send(&region, Operation::GetMeeting, request).await
        })
        .await
    }

    async fn get_attendee(
        &self,
        meeting: &MeetingId,
        region: &Region,
        attendee: &AttendeeId,
    ) -> Result<Attendee> {
        let region = self.region(region);
        self.with_retries("GetAttendee", &NoPause, || async {
            self.counters
                .attendee_checks
                .fetch_add(1, Ordering::Relaxed);
            let request = async {
                let answer = region
                    .client
                    .get_attendee()
                    .meeting_id(meeting.as_str())
                    .attendee_id(attendee.as_str())
                    .send()
                    .await;
                match answer {
                    Ok(out) => out.attendee.map(convert_attendee).unwrap_or_else(|| {
                        Err(ChimeError::Malformed {
                            message: "GetAttendee answered without an Attendee".into(),
                        })
                    }),
                    Err(e) => Err(classify(e, |e| match e {
                        GetAttendeeError::ServiceUnavailableException(e) => {
                            e.retry_after_seconds.clone()
                        }
                        _ => None,
                    })),
                }
            };
            self.send(&region, Operation::GetAttendee, request).await
        })
        .await
    }

    fn current_rate(&self, region: &Region) -> Option<f64> {
        Some(self.budget(region).rate())
    }
}

/// More pages than a 250-attendee meeting can have at `max_results = 1`, with room to spare:
/// past this the service is looping.
const MAX_PAGES: u32 = 1_000;

/// The wait before the next attempt: full jitter over backon's exponential step, but never
/// shorter than Retry-After. A Retry-After longer than the cap ends the retries: the poll
/// fails and the scheduler backs the meeting off instead of holding a slot for that long.
fn retry_delay(e: &ChimeError, next: Option<Duration>, cap: Duration) -> Option<Duration> {
    let step = next?;
    let jittered = Duration::from_secs_f64(rand::rng().random_range(0.0..=step.as_secs_f64()));
    match e.retry_after() {
        Some(after) if after > cap => None,
        Some(after) => Some(jittered.max(after)),
        None => Some(jittered),
    }
}

#[cfg(test)]
mod tests;
