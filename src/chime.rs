//! The only code that touches the AWS SDK: `ListAttendees` pages in, a complete [`Roster`] or a
//! classified [`ChimeError`] out.
//!
//! SDK retries are off; this module retries a failed *page* itself (exponential backoff, full
//! jitter, at least any Retry-After) so retries never multiply, and spends one token of the
//! account+region [`RateLimiter`] per request. It must never return a partial roster, and never
//! keep, log or return a JoinToken: the token is dropped as each page is converted.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_chimesdkmeetings as chime;
use aws_sdk_chimesdkmeetings::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_chimesdkmeetings::operation::RequestId;
use aws_sdk_chimesdkmeetings::operation::list_attendees::ListAttendeesError;
use backon::{ExponentialBuilder, Retryable};
use rand::Rng;

use crate::config::Settings;
use crate::domain::{
    Attendee, AttendeeId, Capabilities, Capability, ExternalUserId, MeetingId, Region, Roster,
};
use crate::rate::RateLimiter;

/// A failed `ListAttendees` request, classified by what the caller should do about it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ChimeError {
    /// 429: over the request quota. Retried after backoff; the rate budget slows down.
    #[error("throttled by the service (request id {request_id:?}): {message}")]
    Throttled {
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
    /// 404, or 403 for a meeting that answered before: the meeting is over. Never retried.
    #[error("meeting is gone, HTTP {status} {code} (request id {request_id:?})")]
    MeetingGone {
        status: u16,
        code: String,
        request_id: Option<String>,
    },
    /// 400, 401, 403 on a meeting never seen, and anything else: retrying cannot help.
    #[error("request refused, HTTP {status} {code} (request id {request_id:?}): {message}")]
    Fatal {
        status: u16,
        code: String,
        request_id: Option<String>,
        message: String,
    },
    /// A 2xx answer that is not a valid roster page. Never retried; the poll fails.
    #[error("malformed answer from the service: {message}")]
    Malformed { message: String },
}

pub type Result<T, E = ChimeError> = std::result::Result<T, E>;

impl ChimeError {
    /// Throttled, Unavailable and Transport may succeed on a later attempt.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Throttled { .. } | Self::Unavailable { .. } | Self::Transport { .. }
        )
    }

    /// The wait the service asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A short label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Throttled { .. } => "throttled",
            Self::Unavailable { .. } => "unavailable",
            Self::Transport { .. } => "transport",
            Self::MeetingGone { .. } => "meeting_gone",
            Self::Fatal { .. } => "fatal",
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

/// Where rosters come from. The scheduler depends on this, not on the SDK, so it can be
/// tested without HTTP.
pub trait RosterSource: Send + Sync + 'static {
    /// Every page of the meeting's attendee list, or the error that stopped it.
    /// `existed` says the meeting answered before, which turns a 403 into `MeetingGone`.
    fn fetch_roster(
        &self,
        meeting: &MeetingId,
        region: &Region,
        existed: bool,
    ) -> impl Future<Output = Result<FetchedRoster>> + Send;

    /// The current request rate of the region's budget, for metrics.
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
}

/// The SDK-backed [`RosterSource`]: one SDK client and one request budget per control region.
pub struct ChimeClient {
    sdk_config: aws_config::SdkConfig,
    options: ClientOptions,
    regions: Mutex<HashMap<Region, (chime::Client, Arc<RateLimiter>)>>,
    counters: Counters,
}

/// Loads the standard AWS configuration (credential chain: environment, profile, web identity
/// / IRSA, container and instance roles) with SDK retries disabled and our timeouts.
pub async fn load_sdk_config(
    options: &ClientOptions,
    default_region: &Region,
) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(default_region.as_str().to_owned()))
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .timeout_config(timeouts(options))
        .load()
        .await
}

fn timeouts(o: &ClientOptions) -> aws_config::timeout::TimeoutConfig {
    aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(o.connect_timeout)
        .operation_attempt_timeout(o.attempt_timeout)
        .operation_timeout(o.page_timeout)
        .build()
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
    /// Retries are forced off and the timeouts from `options` applied whatever `sdk_config` says.
    pub fn new(sdk_config: aws_config::SdkConfig, options: ClientOptions) -> Self {
        let sdk_config = sdk_config
            .into_builder()
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .timeout_config(timeouts(&options))
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

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// The SDK client for `region` (created on first use), for callers that drive other
    /// operations, such as the demo's churn. Polls go through [`RosterSource::fetch_roster`].
    pub fn sdk_client(&self, region: &Region) -> chime::Client {
        self.region(region).0
    }

    /// The request budget of `region`.
    pub fn budget(&self, region: &Region) -> Arc<RateLimiter> {
        self.region(region).1
    }

    fn region(&self, region: &Region) -> (chime::Client, Arc<RateLimiter>) {
        let mut map = self.regions.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(region.clone())
            .or_insert_with(|| {
                let mut b = chime::config::Builder::from(&self.sdk_config)
                    .region(aws_config::Region::new(region.as_str().to_owned()));
                if let Some(url) = &self.options.endpoint_url {
                    b = b.endpoint_url(url);
                }
                let limiter = RateLimiter::new(
                    self.options.requests_per_second,
                    self.options.burst,
                    self.options.adaptive,
                );
                (chime::Client::from_conf(b.build()), Arc::new(limiter))
            })
            .clone()
    }

    /// One `ListAttendees` request, after taking a token from the region's budget.
    async fn list_page(
        &self,
        client: &chime::Client,
        budget: &RateLimiter,
        meeting: &MeetingId,
        token: Option<&str>,
        existed: bool,
    ) -> Result<Page> {
        budget.acquire().await;
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let answer = client
            .list_attendees()
            .meeting_id(meeting.as_str())
            .max_results(self.options.max_results)
            .set_next_token(token.map(str::to_owned))
            .send()
            .await;
        let result = match answer {
            Ok(out) => parse_page(out),
            Err(e) => Err(classify(e, existed)),
        };
        let outcome = match &result {
            Ok(_) => {
                budget.on_success();
                self.counters.pages_ok.fetch_add(1, Ordering::Relaxed);
                "ok"
            }
            Err(e) => {
                let counter = match e {
                    ChimeError::Throttled { .. } => {
                        budget.on_throttle();
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
        metrics::counter!("roster_chime_requests_total", "outcome" => outcome).increment(1);
        result
    }
}

impl RosterSource for ChimeClient {
    async fn fetch_roster(
        &self,
        meeting: &MeetingId,
        region: &Region,
        existed: bool,
    ) -> Result<FetchedRoster> {
        let (client, budget) = self.region(region);
        let policy = self.options.retry;
        let backoff = ExponentialBuilder::default()
            .with_min_delay(policy.base)
            .with_max_delay(policy.cap)
            .with_max_times(policy.max_retries as usize);
        let requests_before = self.counters.requests.load(Ordering::Relaxed);
        let throttled_before = self.counters.throttled.load(Ordering::Relaxed);

        let mut attendees = Vec::new();
        let mut token: Option<String> = None;
        let mut pages = 0u32;
        loop {
            let page = (|| self.list_page(&client, &budget, meeting, token.as_deref(), existed))
                .retry(backoff)
                .sleep(tokio::time::sleep)
                .when(ChimeError::is_retryable)
                .adjust(|e: &ChimeError, next| retry_delay(e, next, policy.cap))
                .notify(|e: &ChimeError, wait: Duration| {
                    tracing::debug!(error = %e, ?wait, page = pages, "retrying page");
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

/// One converted page. The SDK's attendee values, JoinToken included, are dropped here.
struct Page {
    attendees: Vec<Attendee>,
    next_token: Option<String>,
}

fn parse_page(out: chime::operation::list_attendees::ListAttendeesOutput) -> Result<Page> {
    let next_token = out.next_token.filter(|t| !t.is_empty());
    let attendees = out
        .attendees
        .unwrap_or_default()
        .into_iter()
        .map(convert_attendee)
        .collect::<Result<Vec<_>>>()?;
    Ok(Page {
        attendees,
        next_token,
    })
}

/// Keeps what roster-sync records; the JoinToken goes out of scope with `a`.
fn convert_attendee(a: chime::types::Attendee) -> Result<Attendee> {
    let malformed = |message: String| ChimeError::Malformed { message };
    let attendee_id = a
        .attendee_id
        .as_deref()
        .ok_or_else(|| malformed("an attendee has no AttendeeId".into()))
        .and_then(|id| AttendeeId::parse(id).map_err(|e| malformed(e.to_string())))?;
    let external_user_id = a
        .external_user_id
        .ok_or_else(|| malformed(format!("attendee {attendee_id} has no ExternalUserId")))?;
    let capabilities = match a.capabilities {
        // The service gives attendees created without capabilities all three SendReceive.
        None => Capabilities::DEFAULT,
        Some(c) => Capabilities {
            audio: capability(c.audio(), "Audio", &attendee_id)?,
            video: capability(c.video(), "Video", &attendee_id)?,
            content: capability(c.content(), "Content", &attendee_id)?,
        },
    };
    Ok(Attendee {
        attendee_id,
        external_user_id: ExternalUserId::new(external_user_id),
        capabilities,
    })
}

fn capability(
    c: &chime::types::MediaCapabilities,
    which: &str,
    attendee: &AttendeeId,
) -> Result<Capability> {
    c.as_str().parse().map_err(|_| ChimeError::Malformed {
        message: format!(
            "attendee {attendee} has {which} capability {:?}",
            c.as_str()
        ),
    })
}

/// Sorts an SDK failure into retryable, gone or fatal. Known error codes decide first;
/// unknown codes (real services send undocumented ones such as `ValidationException`) are
/// classified by HTTP status.
fn classify(
    err: SdkError<ListAttendeesError, aws_sdk_chimesdkmeetings::config::http::HttpResponse>,
    existed: bool,
) -> ChimeError {
    let (status, retry_after) = match err.raw_response() {
        Some(r) => (
            r.status().as_u16(),
            r.headers().get("retry-after").and_then(parse_retry_after),
        ),
        None => (0, None),
    };
    let parse_error = match &err {
        SdkError::ResponseError(_) => std::error::Error::source(&err)
            .map(|e| aws_sdk_chimesdkmeetings::error::DisplayErrorContext(e).to_string()),
        _ => None,
    };
    let service = match err {
        SdkError::ServiceError(ctx) => ctx.into_err(),
        SdkError::TimeoutError(_) => {
            return ChimeError::Transport {
                message: "timed out".into(),
            };
        }
        SdkError::DispatchFailure(d) => {
            let message = if d.is_timeout() {
                "timed out".to_owned()
            } else {
                d.as_connector_error()
                    .map(|c| aws_sdk_chimesdkmeetings::error::DisplayErrorContext(c).to_string())
                    .unwrap_or_else(|| "request not sent".to_owned())
            };
            return ChimeError::Transport { message };
        }
        SdkError::ResponseError(_) => {
            // Only the parser's own error: never the raw response, whose body can hold
            // JoinTokens.
            let message = format!(
                "unreadable answer, HTTP {status}: {}",
                parse_error.unwrap_or_default()
            );
            return if status >= 500 || status == 0 {
                ChimeError::Unavailable {
                    status,
                    code: "ResponseError".into(),
                    retry_after,
                    request_id: None,
                    message,
                }
            } else {
                ChimeError::Malformed { message }
            };
        }
        other => {
            return ChimeError::Fatal {
                status,
                code: "ConstructionFailure".into(),
                request_id: None,
                message: aws_sdk_chimesdkmeetings::error::DisplayErrorContext(&other).to_string(),
            };
        }
    };
    let code = service.code().unwrap_or("Unknown").to_owned();
    let message = service.message().unwrap_or_default().to_owned();
    let request_id = service.request_id().map(str::to_owned);
    // The modelled ServiceUnavailableException carries Retry-After as a member too.
    let retry_after = match &service {
        ListAttendeesError::ServiceUnavailableException(e) => e
            .retry_after_seconds
            .as_deref()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
            .or(retry_after),
        _ => retry_after,
    };
    let by_code = match code.as_str() {
        "ThrottlingException" | "Throttling" | "TooManyRequestsException" => Some(429),
        "ServiceUnavailableException" | "ServiceUnavailable" => Some(503),
        "ServiceFailureException" | "ServiceFailure" | "InternalServerError" => Some(500),
        "NotFoundException" | "NotFound" => Some(404),
        "ForbiddenException" | "Forbidden" => Some(403),
        "BadRequestException"
        | "BadRequest"
        | "LimitExceededException"
        | "UnauthorizedException"
        | "UnprocessableEntityException"
        | "ConflictException" => Some(400),
        _ => None,
    };
    if by_code.is_none() && (200..300).contains(&status) {
        // A success status whose body the SDK could not read as a page.
        return ChimeError::Malformed {
            message: format!("unreadable answer, HTTP {status} ({code})"),
        };
    }
    match by_code.unwrap_or(status) {
        429 => ChimeError::Throttled {
            request_id,
            message,
        },
        404 => ChimeError::MeetingGone {
            status,
            code,
            request_id,
        },
        403 if existed => ChimeError::MeetingGone {
            status,
            code,
            request_id,
        },
        s if s >= 500 => ChimeError::Unavailable {
            status,
            code,
            retry_after,
            request_id,
            message,
        },
        _ => ChimeError::Fatal {
            status,
            code,
            request_id,
            message,
        },
    }
}

/// `Retry-After` as delta-seconds (what the service sends); HTTP dates are not used by it.
fn parse_retry_after(v: &str) -> Option<Duration> {
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_errors_are_throttled_unavailable_and_transport() {
        let t = ChimeError::Throttled {
            request_id: None,
            message: String::new(),
        };
        let g = ChimeError::MeetingGone {
            status: 404,
            code: "NotFoundException".into(),
            request_id: None,
        };
        let f = ChimeError::Fatal {
            status: 400,
            code: "BadRequestException".into(),
            request_id: None,
            message: String::new(),
        };
        assert!(t.is_retryable());
        assert!(!g.is_retryable());
        assert!(!f.is_retryable());
    }

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
}
