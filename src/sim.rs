//! A Chime SDK Meetings-compatible HTTP server (restJson1) for tests, `demo` and
//! `roster-bench`: the operations roster-sync polls and the ones a driver needs to change a
//! roster, with the real service's paths, member names, status codes and error headers
//! (service model `chime-sdk-meetings/2021-07-15`), its per-operation quota (token buckets),
//! and injected faults (random, or scripted per meeting and operation).
//!
//! It must never be used as a production endpoint: it does not verify SigV4 signatures (it
//! only checks that an `Authorization: AWS4-HMAC-SHA256 ...` header is present), keeps
//! everything in memory, and its media URLs point nowhere. It never logs a JoinToken, nor
//! any request or response body.
//!
//! In-process, [`SimHandle`] gives tests and benchmarks what a client cannot see: request
//! counts ([`SimHandle::stats`]), a live quota change, and when each attendee was created,
//! changed and deleted ([`SimHandle::attendee_timeline`]). It also lets a test reproduce
//! how the real service may misbehave:
//! - [`Paging::Offset`] makes NextToken a position in the live attendee list instead of a
//!   keyset cursor, so an attendee deleted from an earlier page between two page requests
//!   makes the next page silently skip one live attendee. Nothing documents the real
//!   NextToken as either.
//! - [`SimHandle::delete_before_page`] arms exactly such a deletion, deterministically,
//!   just before a given page is served; [`SimHandle::hook_deletions`] and
//!   [`SimHandle::pending_hooks`] say what it deleted and whether it fired.
//! - [`SimHandle::script`] plants [`ScriptedFault`]s on one meeting's ListAttendees (per
//!   page), GetMeeting, GetAttendee or any other operation naming the meeting: any status,
//!   any `x-amzn-ErrorType` (or none, e.g. an IAM denial's
//!   `AccessDeniedException:http://internal.amazon.com/coral/...` sent verbatim), the
//!   service's JSON body, JSON without `Code`, or a proxy's HTML page, with `Retry-After` on
//!   any status. Scripts driving the `roster-sync sim` process plant the same faults
//!   through the control endpoint `POST /_sim/faults` (see `sim/faults_endpoint.rs`).

mod bucket;
pub mod churn;
pub mod control;
mod cursor;
mod faults_endpoint;
mod state;
mod wire;

use std::collections::HashMap;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Body;
use axum::extract::{Query, Request, State as AxumState};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::domain::{AttendeeId, Capabilities, MeetingId, is_guid};

use bucket::TokenBucket;
use cursor::{Cursor, Position};
use state::{AttendeeView, MeetingExtras, NewAttendee, NewMeeting, Stamp, State, TokenKey};
use wire::{AttendeeOut, ErrorBody};

/// `max-results` when the request has none. The model sets no default; 10 keeps pages small
/// enough that a test with a dozen attendees already sees pagination.
pub const DEFAULT_MAX_RESULTS: usize = 10;

/// Bodies larger than this are refused (the service's inputs are a few KB at most).
const MAX_BODY_BYTES: usize = 1 << 20;

/// Seconds a random 503 asks the caller to wait.
const FAULT_RETRY_AFTER_SECS: u32 = 1;

/// How the simulator behaves. The defaults are the real service's quota and limits.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Requests per second each operation's token bucket refills (the real quota is 10).
    /// `f64::INFINITY` turns throttling off.
    pub rate: f64,
    /// Bucket size: how many requests may arrive at once (the real quota is 20).
    pub burst: u32,
    /// Fraction (0.0..=1.0) of non-exempt requests answered with a random 500
    /// ServiceFailure or 503 ServiceUnavailable (`Retry-After: 1`).
    pub fault_rate: f64,
    /// Waited before answering each request, to model network and service time.
    pub latency: Duration,
    /// Makes ids, JoinTokens, request ids and faults repeat run to run (for the same order
    /// of requests). `None` seeds from the OS.
    pub seed: Option<u64>,
    /// When true the mutating operations (create/batch-create/update/delete) are never
    /// throttled nor faulted, so a test driver changing rosters does not eat the quota the
    /// poller is measured against. Reads (`Get*`, `ListAttendees`) stay subject to both.
    pub exempt_control: bool,
    /// Live attendees per meeting before CreateAttendee answers LimitExceeded (real: 250).
    pub max_attendees: usize,
    /// What a `ListAttendees` NextToken remembers: the last attendee returned, or a position
    /// in the live list (see [`Paging`]).
    pub paging: Paging,
}

/// How `ListAttendees` pages follow each other. Nothing documents the real NextToken as a
/// stable cursor, so tests can run against both behaviours.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Paging {
    /// The next page starts after the last attendee id already returned: an attendee
    /// deleted between two page requests never makes a later page skip anyone.
    #[default]
    Keyset,
    /// The next page starts at a position (index) in the live attendee list: each attendee
    /// deleted from an earlier page between two page requests shifts the list, and the
    /// next page silently skips one live attendee.
    Offset,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            rate: 10.0,
            burst: 20,
            fault_rate: 0.0,
            latency: Duration::ZERO,
            seed: None,
            exempt_control: false,
            max_attendees: 250,
            paging: Paging::Keyset,
        }
    }
}

/// A [`SimConfig`] value the simulator cannot run with.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("rate must be a non-negative number of requests per second (got {0})")]
    Rate(f64),
    #[error("burst must be at least 1")]
    Burst,
    #[error("fault_rate must be between 0.0 and 1.0 (got {0})")]
    FaultRate(f64),
    #[error("max_attendees must be at least 1")]
    MaxAttendees,
}

fn check_rate(rate: f64, burst: u32) -> Result<(), ConfigError> {
    if rate.is_nan() || rate < 0.0 {
        return Err(ConfigError::Rate(rate));
    }
    if burst == 0 {
        return Err(ConfigError::Burst);
    }
    Ok(())
}

impl SimConfig {
    /// # Errors
    /// The first value out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_rate(self.rate, self.burst)?;
        if !(0.0..=1.0).contains(&self.fault_rate) {
            return Err(ConfigError::FaultRate(self.fault_rate));
        }
        if self.max_attendees == 0 {
            return Err(ConfigError::MaxAttendees);
        }
        Ok(())
    }
}

/// The simulated operations. Each has its own token bucket and its own counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operation {
    CreateMeeting,
    GetMeeting,
    DeleteMeeting,
    CreateAttendee,
    BatchCreateAttendee,
    GetAttendee,
    ListAttendees,
    UpdateAttendeeCapabilities,
    DeleteAttendee,
}

impl Operation {
    pub const ALL: [Operation; 9] = [
        Self::CreateMeeting,
        Self::GetMeeting,
        Self::DeleteMeeting,
        Self::CreateAttendee,
        Self::BatchCreateAttendee,
        Self::GetAttendee,
        Self::ListAttendees,
        Self::UpdateAttendeeCapabilities,
        Self::DeleteAttendee,
    ];

    /// The model's operation name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CreateMeeting => "CreateMeeting",
            Self::GetMeeting => "GetMeeting",
            Self::DeleteMeeting => "DeleteMeeting",
            Self::CreateAttendee => "CreateAttendee",
            Self::BatchCreateAttendee => "BatchCreateAttendee",
            Self::GetAttendee => "GetAttendee",
            Self::ListAttendees => "ListAttendees",
            Self::UpdateAttendeeCapabilities => "UpdateAttendeeCapabilities",
            Self::DeleteAttendee => "DeleteAttendee",
        }
    }

    /// The operations `exempt_control` exempts: those that change meetings or rosters.
    pub fn is_mutating(self) -> bool {
        !matches!(
            self,
            Self::GetMeeting | Self::GetAttendee | Self::ListAttendees
        )
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counts for one operation (or all of them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpStats {
    /// Every request routed to the operation, whatever the answer.
    pub requests: u64,
    /// Answered 429 by the token bucket.
    pub throttled: u64,
    /// Answered with an injected fault: a random 500/503 or a scripted fault.
    pub faults: u64,
    /// Any other error answer (400, 403, 404, ...).
    pub errors: u64,
}

/// A snapshot of the request counters, one field per operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    pub create_meeting: OpStats,
    pub get_meeting: OpStats,
    pub delete_meeting: OpStats,
    pub create_attendee: OpStats,
    pub batch_create_attendee: OpStats,
    pub get_attendee: OpStats,
    pub list_attendees: OpStats,
    pub update_attendee_capabilities: OpStats,
    pub delete_attendee: OpStats,
    /// All requests, including those that matched no operation (counted as errors).
    pub total: OpStats,
}

impl SimStats {
    /// The counts of one operation.
    pub fn get(&self, op: Operation) -> OpStats {
        match op {
            Operation::CreateMeeting => self.create_meeting,
            Operation::GetMeeting => self.get_meeting,
            Operation::DeleteMeeting => self.delete_meeting,
            Operation::CreateAttendee => self.create_attendee,
            Operation::BatchCreateAttendee => self.batch_create_attendee,
            Operation::GetAttendee => self.get_attendee,
            Operation::ListAttendees => self.list_attendees,
            Operation::UpdateAttendeeCapabilities => self.update_attendee_capabilities,
            Operation::DeleteAttendee => self.delete_attendee,
        }
    }
}

/// What a scripted fault's body looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultBody {
    /// `application/json` `{"Code","Message","RequestId"}`, as the service writes its own
    /// errors. `Code` is the error type without any `:...` suffix and without `Exception`
    /// (`AccessDeniedException:http://...` gives `AccessDenied`); a fault without an error
    /// type writes no `Code`.
    Json,
    /// `application/json` `{"Message","RequestId"}`: no `Code`, whatever the header says.
    JsonWithoutCode,
    /// `text/html` with this text, as a proxy or a wrong endpoint answers.
    Html(String),
}

/// A fault a test plants on one meeting's requests (see [`SimHandle::script`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptedFault {
    /// The operation it hits (default `ListAttendees`). Any operation whose path names the
    /// meeting can be hit; CreateMeeting names none, so a fault on it never fires.
    pub operation: Operation,
    /// 0-based `ListAttendees` page it hits (no next-token = page 0); `None` hits every
    /// request. Only ListAttendees has pages: a fault with a page never hits another
    /// operation.
    pub page: Option<usize>,
    /// How many requests it answers before it is spent; `None` = forever.
    pub times: Option<u32>,
    /// HTTP status of the answer (an invalid status is answered as 500).
    pub status: u16,
    /// Sent verbatim as `x-amzn-ErrorType` when set: any string, so undocumented codes
    /// (`ValidationException`) and front-end suffixes
    /// (`AccessDeniedException:http://internal.amazon.com/coral/com.amazon.coral.service/`)
    /// can be tested. `None` sends no such header.
    pub error_type: Option<String>,
    /// The body's shape.
    pub body: FaultBody,
    /// The JSON body's `Message`; `None` writes one naming the operation (and page).
    pub message: Option<String>,
    /// Sent as `Retry-After` (seconds) when set, on any status.
    pub retry_after: Option<u32>,
}

impl ScriptedFault {
    /// A `ListAttendees` fault on every page, forever, without Retry-After: `status`,
    /// `x-amzn-ErrorType: error_type` and the service's JSON error body.
    pub fn new(status: u16, error_type: impl Into<String>) -> Self {
        Self {
            operation: Operation::ListAttendees,
            page: None,
            times: None,
            status,
            error_type: Some(error_type.into()),
            body: FaultBody::Json,
            message: None,
            retry_after: None,
        }
    }

    /// Like [`ScriptedFault::new`] but with no error type at all: no `x-amzn-ErrorType`
    /// header and a JSON body without `Code`.
    pub fn untyped(status: u16) -> Self {
        Self {
            error_type: None,
            body: FaultBody::JsonWithoutCode,
            ..Self::new(status, "")
        }
    }

    /// Like [`ScriptedFault::new`] but answered as a proxy would: a `text/html` body and no
    /// error type header.
    pub fn html(status: u16, html: impl Into<String>) -> Self {
        Self {
            error_type: None,
            body: FaultBody::Html(html.into()),
            ..Self::new(status, "")
        }
    }

    /// Hits `operation` instead of ListAttendees.
    pub fn on(mut self, operation: Operation) -> Self {
        self.operation = operation;
        self
    }

    pub fn on_page(mut self, page: usize) -> Self {
        self.page = Some(page);
        self
    }

    pub fn times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }

    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn with_body(mut self, body: FaultBody) -> Self {
        self.body = body;
        self
    }

    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }
}

/// Why a deletion hook could not be armed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HookError {
    #[error("page 0 has no earlier page to delete attendees from")]
    PageZero,
}

/// When an attendee was created, last had its capabilities changed, and was deleted
/// (DeleteAttendee or DeleteMeeting), on the simulator's clock: wall time at start plus
/// monotonic time since, at microsecond precision, so it never jumps with the system clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttendeeTimeline {
    pub created_at: DateTime<Utc>,
    /// Set only by an UpdateAttendeeCapabilities that changed something.
    pub capabilities_updated_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
}

/// A refused request, as the service would answer it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    LimitExceeded(String),
    #[error("Rate exceeded")]
    Throttled,
    #[error("{0}")]
    UnknownOperation(String),
    /// A broken invariant of the simulator itself.
    #[error("{0}")]
    Internal(String),
    /// A random or scripted fault.
    #[error("{message}")]
    Injected {
        status: StatusCode,
        error_type: Option<String>,
        body: FaultBody,
        retry_after: Option<u32>,
        message: String,
    },
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) | Self::LimitExceeded(_) => StatusCode::BAD_REQUEST,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) | Self::UnknownOperation(_) => StatusCode::NOT_FOUND,
            Self::Throttled => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Injected { status, .. } => *status,
        }
    }

    /// What `x-amzn-ErrorType` says; `None` sends no such header.
    fn error_type(&self) -> Option<&str> {
        Some(match self {
            Self::BadRequest(_) => "BadRequestException",
            Self::Forbidden(_) => "ForbiddenException",
            Self::NotFound(_) => "NotFoundException",
            Self::LimitExceeded(_) => "LimitExceededException",
            Self::Throttled => "ThrottlingException",
            Self::UnknownOperation(_) => "UnknownOperationException",
            Self::Internal(_) => "ServiceFailureException",
            Self::Injected { error_type, .. } => return error_type.as_deref(),
        })
    }

    fn outcome(&self) -> Outcome {
        match self {
            Self::Throttled => Outcome::Throttled,
            Self::Injected { .. } => Outcome::Fault,
            _ => Outcome::Error,
        }
    }

    fn into_response(self, request_id: &str) -> Response {
        let status = self.status();
        let error_type = self.error_type().map(str::to_owned);
        let message = self.to_string();
        let (body, retry_after) = match self {
            Self::Injected {
                body, retry_after, ..
            } => (body, retry_after),
            _ => (FaultBody::Json, None),
        };
        let mut resp = match body {
            FaultBody::Json | FaultBody::JsonWithoutCode => {
                let code = match body {
                    FaultBody::Json => error_type.as_deref().map(body_code),
                    _ => None,
                };
                let body = ErrorBody {
                    code,
                    message: &message,
                    request_id,
                };
                json_response(status, &body)
            }
            FaultBody::Html(html) => {
                let mut resp = (status, html).into_response();
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                resp
            }
        };
        let h = resp.headers_mut();
        if let Some(v) = error_type.and_then(|t| HeaderValue::from_str(&t).ok()) {
            h.insert("x-amzn-ErrorType", v);
        }
        if let Some(secs) = retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// The body's `Code` for an error type, as the service writes it: without a `:...` suffix
/// (some front ends append one to `x-amzn-ErrorType`) and without `Exception`.
fn body_code(error_type: &str) -> &str {
    let name = error_type.split(':').next().unwrap_or(error_type);
    name.strip_suffix("Exception").unwrap_or(name)
}

type ApiResult<T = Response> = Result<T, ApiError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Throttled,
    Fault,
    Error,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    throttled: AtomicU64,
    faults: AtomicU64,
    errors: AtomicU64,
}

impl Counters {
    fn record(&self, outcome: Outcome) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let field = match outcome {
            Outcome::Ok => return,
            Outcome::Throttled => &self.throttled,
            Outcome::Fault => &self.faults,
            Outcome::Error => &self.errors,
        };
        field.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> OpStats {
        OpStats {
            requests: self.requests.load(Ordering::Relaxed),
            throttled: self.throttled.load(Ordering::Relaxed),
            faults: self.faults.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
        }
    }
}

struct ScriptEntry {
    fault: ScriptedFault,
    remaining: Option<u32>,
}

/// A one-shot deletion armed by [`SimHandle::delete_before_page`].
struct PageHook {
    page: u32,
    count: usize,
}

/// One meeting's armed hooks and what fired hooks deleted.
#[derive(Default)]
struct MeetingHooks {
    armed: Vec<PageHook>,
    deleted: Vec<Uuid>,
}

/// The simulator's clock: [`Stamp`]s are microseconds since `start`.
struct Clock {
    start: std::time::Instant,
    start_wall: DateTime<Utc>,
}

impl Clock {
    fn new() -> Self {
        Self {
            start: std::time::Instant::now(),
            start_wall: crate::domain::now(),
        }
    }

    fn now(&self) -> Stamp {
        let micros = u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX);
        Stamp::from_micros(micros)
    }

    fn wall(&self, s: Stamp) -> DateTime<Utc> {
        let micros = i64::try_from(s.micros()).unwrap_or(i64::MAX);
        self.start_wall + chrono::Duration::microseconds(micros)
    }
}

struct Shared {
    cfg: SimConfig,
    state: Mutex<State>,
    tokens: TokenKey,
    buckets: Mutex<Vec<TokenBucket>>,
    faults: Mutex<StdRng>,
    request_ids: Mutex<StdRng>,
    scripts: Mutex<HashMap<Uuid, Vec<ScriptEntry>>>,
    /// Locked before `state` when both are held.
    hooks: Mutex<HashMap<Uuid, MeetingHooks>>,
    counters: Vec<Counters>,
    total: Counters,
    clock: Clock,
}

/// A poisoned lock only means another request panicked; the data is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running simulator. Dropping it stops the server too, without waiting.
pub struct SimHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

/// Binds `listen` (port 0 picks a free port) and serves in a spawned task.
///
/// # Errors
/// `InvalidInput` when `cfg` is out of range (see [`SimConfig::validate`]); the bind error
/// when the address cannot be bound.
pub async fn start(listen: SocketAddr, cfg: SimConfig) -> std::io::Result<SimHandle> {
    cfg.validate()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let seeded = |stream: u64| match cfg.seed {
        Some(seed) => StdRng::seed_from_u64(seed.wrapping_add(stream)),
        None => StdRng::from_os_rng(),
    };
    let now = tokio::time::Instant::now();
    let shared = Arc::new(Shared {
        state: Mutex::new(State::new(seeded(0), cfg.max_attendees)),
        tokens: TokenKey::new(&mut seeded(3)),
        buckets: Mutex::new(
            Operation::ALL
                .iter()
                .map(|_| TokenBucket::new(cfg.rate, cfg.burst, now))
                .collect(),
        ),
        faults: Mutex::new(seeded(1)),
        request_ids: Mutex::new(seeded(2)),
        scripts: Mutex::new(HashMap::new()),
        hooks: Mutex::new(HashMap::new()),
        counters: Operation::ALL.iter().map(|_| Counters::default()).collect(),
        total: Counters::default(),
        clock: Clock::new(),
        cfg,
    });
    let app = axum::Router::new()
        .fallback(handle)
        .with_state(Arc::clone(&shared));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                // Resolves on shutdown() and when the handle is dropped.
                let _ = stopped.await;
            })
            .await
    });
    tracing::info!(%addr, "chime simulator listening");
    Ok(SimHandle {
        addr,
        shared,
        stop,
        task,
    })
}

impl SimHandle {
    /// The address actually bound.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT` to give a client as its endpoint; an unspecified bind address
    /// (`0.0.0.0`, `::`) is replaced by loopback.
    pub fn endpoint_url(&self) -> String {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}", SocketAddr::new(ip, self.addr.port()))
    }

    /// Stops accepting, lets in-flight requests finish, and waits for the server task.
    ///
    /// # Errors
    /// The server's I/O error, if it failed.
    pub async fn shutdown(self) -> std::io::Result<()> {
        let _ = self.stop.send(());
        self.task.await.map_err(std::io::Error::other)?
    }

    /// Request counters per operation and in total.
    pub fn stats(&self) -> SimStats {
        let c = |op: Operation| self.shared.counters[op.index()].snapshot();
        SimStats {
            create_meeting: c(Operation::CreateMeeting),
            get_meeting: c(Operation::GetMeeting),
            delete_meeting: c(Operation::DeleteMeeting),
            create_attendee: c(Operation::CreateAttendee),
            batch_create_attendee: c(Operation::BatchCreateAttendee),
            get_attendee: c(Operation::GetAttendee),
            list_attendees: c(Operation::ListAttendees),
            update_attendee_capabilities: c(Operation::UpdateAttendeeCapabilities),
            delete_attendee: c(Operation::DeleteAttendee),
            total: self.shared.total.snapshot(),
        }
    }

    /// Changes every operation's quota live.
    ///
    /// # Errors
    /// [`ConfigError`] for a negative or NaN rate or a zero burst; the quota is unchanged.
    pub fn set_rate(&self, rps: f64, burst: u32) -> Result<(), ConfigError> {
        check_rate(rps, burst)?;
        let now = tokio::time::Instant::now();
        for b in lock(&self.shared.buckets).iter_mut() {
            b.set(rps, burst, now);
        }
        Ok(())
    }

    /// Plants a fault on `meeting`'s requests of one operation (`ListAttendees` unless
    /// [`ScriptedFault::on`] says otherwise). Faults are tried in the order they were
    /// planted; the first that matches the operation and page and is not spent answers. A
    /// scripted fault fires after authorization, throttling and input validation, before
    /// the meeting or attendee is looked up, so it also works for ones that do not exist;
    /// on ListAttendees it fires after any deletion hook armed for the same page.
    pub fn script(&self, meeting: &MeetingId, fault: ScriptedFault) {
        let Some(key) = key(meeting.as_str()) else {
            return;
        };
        self.shared.plant(key, fault);
    }

    /// Removes every fault planted on `meeting`.
    pub fn clear_script(&self, meeting: &MeetingId) {
        if let Some(key) = key(meeting.as_str()) {
            self.shared.clear(&key);
        }
    }

    /// Arms a one-shot deletion between two page requests: the next `ListAttendees` request
    /// for page `page` (0-based, so the request carrying the first NextToken is page 1) of
    /// `meeting` first deletes up to `count` attendees the client has already been served
    /// on earlier pages (the first ones in attendee-id order), through the same code as
    /// DeleteAttendee, so [`SimHandle::attendee_timeline`] records their `deleted_at`. Then
    /// the page is served: with [`Paging::Offset`] it skips `count` live attendees, with
    /// [`Paging::Keyset`] it skips none. Hooks fire after authorization, throttling and
    /// NextToken validation (a refused request leaves them armed) and before scripted
    /// faults; several hooks on one page fire one request each, in the order armed.
    ///
    /// # Errors
    /// [`HookError::PageZero`]: page 0 has no earlier page.
    pub fn delete_before_page(
        &self,
        meeting: &MeetingId,
        page: u32,
        count: usize,
    ) -> Result<(), HookError> {
        if page == 0 {
            return Err(HookError::PageZero);
        }
        if let Some(key) = key(meeting.as_str()) {
            lock(&self.shared.hooks)
                .entry(key)
                .or_default()
                .armed
                .push(PageHook { page, count });
        }
        Ok(())
    }

    /// Hooks armed on `meeting` that have not fired yet.
    pub fn pending_hooks(&self, meeting: &MeetingId) -> usize {
        key(meeting.as_str())
            .and_then(|k| lock(&self.shared.hooks).get(&k).map(|h| h.armed.len()))
            .unwrap_or(0)
    }

    /// Every attendee the fired hooks of `meeting` deleted, in deletion order.
    pub fn hook_deletions(&self, meeting: &MeetingId) -> Vec<AttendeeId> {
        let Some(k) = key(meeting.as_str()) else {
            return Vec::new();
        };
        lock(&self.shared.hooks).get(&k).map_or_else(Vec::new, |h| {
            h.deleted
                .iter()
                .filter_map(|id| AttendeeId::parse(&id.to_string()).ok())
                .collect()
        })
    }

    /// When the attendee was created, changed and deleted; `None` if this meeting never
    /// had this attendee.
    pub fn attendee_timeline(
        &self,
        meeting: &MeetingId,
        attendee: &AttendeeId,
    ) -> Option<AttendeeTimeline> {
        let t =
            lock(&self.shared.state).timeline(&key(meeting.as_str())?, &key(attendee.as_str())?)?;
        let c = &self.shared.clock;
        Some(AttendeeTimeline {
            created_at: c.wall(t.created),
            capabilities_updated_at: t.capabilities_updated.map(|s| c.wall(s)),
            deleted_at: t.deleted.map(|s| c.wall(s)),
        })
    }
}

/// Our ids are validated GUIDs already; this only changes their representation.
fn key(guid: &str) -> Option<Uuid> {
    Uuid::parse_str(guid).ok()
}

/// A request mapped to its operation, path labels still unvalidated.
#[derive(Debug)]
enum Route {
    CreateMeeting,
    GetMeeting(String),
    DeleteMeeting(String),
    CreateAttendee(String),
    BatchCreateAttendee(String),
    ListAttendees(String),
    GetAttendee(String, String),
    UpdateAttendeeCapabilities(String, String),
    DeleteAttendee(String, String),
}

impl Route {
    fn parse(method: &Method, path: &str, query: &[(String, String)]) -> Option<Self> {
        let segs: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
        let own = |s: &str| s.to_owned();
        let route = match (method.as_str(), segs.as_slice()) {
            ("POST", ["meetings"]) => Self::CreateMeeting,
            ("GET", ["meetings", m]) => Self::GetMeeting(own(m)),
            ("DELETE", ["meetings", m]) => Self::DeleteMeeting(own(m)),
            ("POST", ["meetings", m, "attendees"]) => {
                match query
                    .iter()
                    .find(|(k, _)| k == "operation")
                    .map(|(_, v)| v.as_str())
                {
                    None => Self::CreateAttendee(own(m)),
                    Some("batch-create") => Self::BatchCreateAttendee(own(m)),
                    Some(_) => return None,
                }
            }
            ("GET", ["meetings", m, "attendees"]) => Self::ListAttendees(own(m)),
            ("GET", ["meetings", m, "attendees", a]) => Self::GetAttendee(own(m), own(a)),
            ("DELETE", ["meetings", m, "attendees", a]) => Self::DeleteAttendee(own(m), own(a)),
            ("PUT", ["meetings", m, "attendees", a, "capabilities"]) => {
                Self::UpdateAttendeeCapabilities(own(m), own(a))
            }
            _ => return None,
        };
        Some(route)
    }

    fn operation(&self) -> Operation {
        match self {
            Self::CreateMeeting => Operation::CreateMeeting,
            Self::GetMeeting(_) => Operation::GetMeeting,
            Self::DeleteMeeting(_) => Operation::DeleteMeeting,
            Self::CreateAttendee(_) => Operation::CreateAttendee,
            Self::BatchCreateAttendee(_) => Operation::BatchCreateAttendee,
            Self::ListAttendees(_) => Operation::ListAttendees,
            Self::GetAttendee(..) => Operation::GetAttendee,
            Self::UpdateAttendeeCapabilities(..) => Operation::UpdateAttendeeCapabilities,
            Self::DeleteAttendee(..) => Operation::DeleteAttendee,
        }
    }
}

async fn handle(AxumState(shared): AxumState<Arc<Shared>>, req: Request) -> Response {
    let request_id = {
        let mut b = [0u8; 16];
        lock(&shared.request_ids).fill_bytes(&mut b);
        uuid::Builder::from_random_bytes(b).into_uuid().to_string()
    };
    if req.uri().path().starts_with(faults_endpoint::PREFIX) {
        let (parts, body) = req.into_parts();
        let result = faults_endpoint::serve(&shared, &parts.method, parts.uri.path(), body).await;
        return result.unwrap_or_else(|e| e.into_response(&request_id));
    }
    if !shared.cfg.latency.is_zero() {
        tokio::time::sleep(shared.cfg.latency).await;
    }
    let (op, result) = shared.serve(req).await;
    let outcome = match &result {
        Ok(_) => Outcome::Ok,
        Err(e) => e.outcome(),
    };
    if let Some(op) = op {
        shared.counters[op.index()].record(outcome);
    }
    shared.total.record(if op.is_none() {
        Outcome::Error
    } else {
        outcome
    });
    let mut resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            // Never the body: it may hold a JoinToken or an ExternalUserId.
            tracing::debug!(
                op = op.map(Operation::as_str),
                error_type = e.error_type().unwrap_or("-"),
                status = e.status().as_u16(),
                %request_id,
                "chime simulator refused a request"
            );
            e.into_response(&request_id)
        }
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-amzn-RequestId", v);
    }
    resp
}

impl Shared {
    fn plant(&self, meeting: Uuid, fault: ScriptedFault) {
        let remaining = fault.times;
        lock(&self.scripts)
            .entry(meeting)
            .or_default()
            .push(ScriptEntry { fault, remaining });
    }

    fn clear(&self, meeting: &Uuid) {
        lock(&self.scripts).remove(meeting);
    }

    async fn serve(&self, req: Request) -> (Option<Operation>, ApiResult) {
        let (parts, body) = req.into_parts();
        let query = match Query::<Vec<(String, String)>>::try_from_uri(&parts.uri) {
            Ok(Query(q)) => q,
            Err(_) => {
                return (
                    None,
                    Err(ApiError::BadRequest("The query string is malformed".into())),
                );
            }
        };
        let Some(route) = Route::parse(&parts.method, parts.uri.path(), &query) else {
            let msg = format!("No operation matches {} {}", parts.method, parts.uri.path());
            return (None, Err(ApiError::UnknownOperation(msg)));
        };
        let op = route.operation();
        let result = match self.admit(op, &parts.headers) {
            Ok(()) => self.dispatch(route, &query, body).await,
            Err(e) => Err(e),
        };
        (Some(op), result)
    }

    /// Authorization, quota, random faults: what happens before the operation runs.
    fn admit(&self, op: Operation, headers: &axum::http::HeaderMap) -> ApiResult<()> {
        // Only the presence of a SigV4 header is checked; signatures are NOT verified.
        let signed = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("AWS4-HMAC-SHA256"));
        if !signed {
            return Err(ApiError::Forbidden(
                "Missing Authentication Token: requests must be signed with AWS4-HMAC-SHA256"
                    .into(),
            ));
        }
        if self.cfg.exempt_control && op.is_mutating() {
            return Ok(());
        }
        let now = tokio::time::Instant::now();
        if !lock(&self.buckets)[op.index()].try_take(now) {
            return Err(ApiError::Throttled);
        }
        if self.cfg.fault_rate > 0.0 {
            let mut rng = lock(&self.faults);
            if rng.random_bool(self.cfg.fault_rate) {
                return Err(if rng.random_bool(0.5) {
                    ApiError::Injected {
                        status: StatusCode::INTERNAL_SERVER_ERROR,
                        error_type: Some("ServiceFailureException".into()),
                        body: FaultBody::Json,
                        retry_after: None,
                        message: "Injected fault: the service failed".into(),
                    }
                } else {
                    ApiError::Injected {
                        status: StatusCode::SERVICE_UNAVAILABLE,
                        error_type: Some("ServiceUnavailableException".into()),
                        body: FaultBody::Json,
                        retry_after: Some(FAULT_RETRY_AFTER_SECS),
                        message: "Injected fault: the service is unavailable".into(),
                    }
                });
            }
        }
        Ok(())
    }

    async fn dispatch(&self, route: Route, query: &[(String, String)], body: Body) -> ApiResult {
        let op = route.operation();
        // ListAttendees fires its own faults, once it knows the page.
        let fault = |m: &Uuid| self.fire_script(op, m, None);
        match route {
            Route::CreateMeeting => self.create_meeting(read_json(body).await?),
            Route::GetMeeting(m) => {
                let m = guid("MeetingId", &m)?;
                fault(&m)?;
                self.get_meeting(&m)
            }
            Route::DeleteMeeting(m) => {
                let m = guid("MeetingId", &m)?;
                fault(&m)?;
                lock(&self.state).delete_meeting(&m, self.clock.now())?;
                Ok(StatusCode::NO_CONTENT.into_response())
            }
            Route::CreateAttendee(m) => {
                let m = guid("MeetingId", &m)?;
                let input = read_json(body).await?;
                fault(&m)?;
                self.create_attendee(&m, input)
            }
            Route::BatchCreateAttendee(m) => {
                let m = guid("MeetingId", &m)?;
                let input = read_json(body).await?;
                fault(&m)?;
                self.batch_create_attendee(&m, input)
            }
            Route::ListAttendees(m) => self.list_attendees(&guid("MeetingId", &m)?, query),
            Route::GetAttendee(m, a) => {
                let (m, a) = (guid("MeetingId", &m)?, guid("AttendeeId", &a)?);
                fault(&m)?;
                let view = lock(&self.state).attendee(&m, &a)?;
                Ok(self.attendee_response(view))
            }
            Route::UpdateAttendeeCapabilities(m, a) => {
                let (m, a) = (guid("MeetingId", &m)?, guid("AttendeeId", &a)?);
                let input: wire::UpdateCapabilitiesIn = read_json(body).await?;
                let caps = input
                    .capabilities
                    .ok_or_else(|| ApiError::BadRequest("Capabilities is required".into()))?
                    .validate()
                    .map_err(ApiError::BadRequest)?;
                fault(&m)?;
                let now = self.clock.now();
                let view = lock(&self.state).update_capabilities(&m, &a, caps, now)?;
                Ok(self.attendee_response(view))
            }
            Route::DeleteAttendee(m, a) => {
                let (m, a) = (guid("MeetingId", &m)?, guid("AttendeeId", &a)?);
                fault(&m)?;
                lock(&self.state).delete_attendee(&m, &a, self.clock.now())?;
                Ok(StatusCode::NO_CONTENT.into_response())
            }
        }
    }

    fn create_meeting(&self, input: wire::CreateMeetingIn) -> ApiResult {
        wire::validate_create_meeting(&input).map_err(ApiError::BadRequest)?;
        let wire::CreateMeetingIn {
            client_request_token,
            media_region,
            meeting_host_id,
            external_meeting_id,
            meeting_features,
            primary_meeting_id,
            tenant_ids,
        } = input;
        let extras =
            (meeting_features.is_some() || primary_meeting_id.is_some() || tenant_ids.is_some())
                .then(|| MeetingExtras {
                    features: meeting_features,
                    primary_meeting_id: primary_meeting_id.map(Into::into),
                    tenant_ids: tenant_ids.map(|v| v.into_iter().map(Into::into).collect()),
                });
        let new = NewMeeting {
            // validate_create_meeting has checked that the required members are present.
            client_request_token: client_request_token.unwrap_or_default(),
            external_meeting_id: external_meeting_id.unwrap_or_default(),
            media_region: media_region.unwrap_or_default(),
            host_id: meeting_host_id,
            extras,
        };
        let id = lock(&self.state).create_meeting(new);
        self.get_meeting(&id)
    }

    fn get_meeting(&self, id: &Uuid) -> ApiResult {
        let state = lock(&self.state);
        let m = state.meeting(id)?;
        let meeting_id = id.to_string();
        let extras = m.extras.as_deref();
        let meeting = wire::MeetingOut {
            media_placement: wire::MediaPlacement::new(&meeting_id, &m.media_region),
            meeting_arn: format!("arn:aws:chime:us-east-1:123456789012:meeting/{meeting_id}"),
            meeting_host_id: m.host_id.as_deref().map(str::to_owned),
            external_meeting_id: m.external_meeting_id.to_string(),
            media_region: m.media_region.to_string(),
            meeting_features: extras.and_then(|x| x.features.clone()),
            primary_meeting_id: extras
                .and_then(|x| x.primary_meeting_id.as_deref().map(Into::into)),
            tenant_ids: extras
                .and_then(|x| x.tenant_ids.as_ref())
                .map(|v| v.iter().map(|t| t.to_string()).collect()),
            meeting_id,
        };
        drop(state);
        Ok(json_response(
            StatusCode::OK,
            &wire::MeetingResponse { meeting },
        ))
    }

    fn create_attendee(&self, meeting: &Uuid, input: wire::CreateAttendeeIn) -> ApiResult {
        let new = validate_attendee(input).map_err(|(_, msg)| ApiError::BadRequest(msg))?;
        let now = self.clock.now();
        let mut views = lock(&self.state).create_attendees(meeting, vec![new], now)?;
        let view = views
            .pop()
            .ok_or_else(|| ApiError::Internal("The attendee was not created".into()))?;
        Ok(self.attendee_response(view))
    }

    fn batch_create_attendee(
        &self,
        meeting: &Uuid,
        input: wire::BatchCreateAttendeeIn,
    ) -> ApiResult {
        let items = input
            .attendees
            .ok_or_else(|| ApiError::BadRequest("Attendees is required".into()))?;
        if !(1..=100).contains(&items.len()) {
            return Err(ApiError::BadRequest(
                "Attendees must hold 1 to 100 items".into(),
            ));
        }
        // Items that fail validation are reported in Errors; the others are created.
        let mut valid = Vec::new();
        let mut errors = Vec::new();
        for item in items {
            match validate_attendee(item) {
                Ok(new) => valid.push(new),
                Err((external_user_id, msg)) => errors.push(wire::CreateAttendeeError {
                    external_user_id,
                    error_code: "BadRequest".into(),
                    error_message: msg,
                }),
            }
        }
        let now = self.clock.now();
        let views = {
            let mut state = lock(&self.state);
            if valid.is_empty() {
                // Nothing to create: still answer 404 for a meeting that does not exist.
                state.meeting(meeting)?;
                Vec::new()
            } else {
                state.create_attendees(meeting, valid, now)?
            }
        };
        let attendees = views.into_iter().map(|v| self.attendee_out(v)).collect();
        let body = wire::BatchCreateAttendeeResponse { attendees, errors };
        Ok(json_response(StatusCode::OK, &body))
    }

    fn list_attendees(&self, meeting: &Uuid, query: &[(String, String)]) -> ApiResult {
        let param = |name: &str| {
            query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let max = match param("max-results") {
            None => DEFAULT_MAX_RESULTS,
            Some(s) => s
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=100).contains(n))
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "MaxResults must be an integer from 1 to 100, not {s:?}"
                    ))
                })?,
        };
        let cursor = match param("next-token") {
            None => None,
            Some(t) => {
                let c = Cursor::decode(t).map_err(|e| ApiError::BadRequest(e.to_string()))?;
                if c.meeting != *meeting {
                    return Err(ApiError::BadRequest(
                        "NextToken belongs to another meeting".into(),
                    ));
                }
                Some(c)
            }
        };
        let page = cursor.map_or(0, |c| c.page);
        if let Some(c) = cursor {
            self.fire_hooks(meeting, c);
        }
        self.fire_script(Operation::ListAttendees, meeting, Some(page))?;
        let listed = lock(&self.state).list(meeting, cursor.map(|c| c.position), max)?;
        let position = match (self.cfg.paging, listed.attendees.last()) {
            (_, None) => None,
            (Paging::Keyset, Some(last)) => Some(Position::After(last.id)),
            (Paging::Offset, Some(_)) => {
                let at = listed.start.saturating_add(listed.attendees.len());
                Some(Position::Index(u32::try_from(at).map_err(|_| {
                    ApiError::Internal("The roster is too long for an offset".into())
                })?))
            }
        };
        let next_token = position.filter(|_| listed.more).map(|position| {
            Cursor {
                meeting: *meeting,
                position,
                page: page.saturating_add(1),
            }
            .encode()
        });
        let attendees = listed
            .attendees
            .into_iter()
            .map(|v| self.attendee_out(v))
            .collect();
        let body = wire::ListAttendeesResponse {
            attendees,
            next_token,
        };
        Ok(json_response(StatusCode::OK, &body))
    }

    /// Fires the first hook armed for this page of this meeting, if any.
    fn fire_hooks(&self, meeting: &Uuid, cursor: Cursor) {
        let mut hooks = lock(&self.hooks);
        let Some(h) = hooks.get_mut(meeting) else {
            return;
        };
        let Some(i) = h.armed.iter().position(|x| x.page == cursor.page) else {
            return;
        };
        let hook = h.armed.remove(i);
        let now = self.clock.now();
        let gone = lock(&self.state).delete_served(meeting, cursor.position, hook.count, now);
        h.deleted.extend(gone);
    }

    /// Answers with the first unspent fault planted on this operation (and page) of
    /// `meeting`, if any.
    fn fire_script(&self, op: Operation, meeting: &Uuid, page: Option<u32>) -> ApiResult<()> {
        let mut scripts = lock(&self.scripts);
        let Some(entries) = scripts.get_mut(meeting) else {
            return Ok(());
        };
        let hit = entries.iter_mut().find(|e| {
            e.remaining != Some(0)
                && e.fault.operation == op
                && match (e.fault.page, page) {
                    (None, _) => true,
                    (Some(want), Some(got)) => u32::try_from(want).is_ok_and(|w| w == got),
                    (Some(_), None) => false,
                }
        });
        let Some(entry) = hit else { return Ok(()) };
        if let Some(n) = entry.remaining.as_mut() {
            *n -= 1;
        }
        let f = &entry.fault;
        let status = StatusCode::from_u16(f.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let message = f.message.clone().unwrap_or_else(|| match page {
            Some(p) => format!("Scripted fault on {} page {p}", op.as_str()),
            None => format!("Scripted fault on {}", op.as_str()),
        });
        Err(ApiError::Injected {
            status,
            error_type: f.error_type.clone(),
            body: f.body.clone(),
            retry_after: f.retry_after,
            message,
        })
    }

    fn attendee_out(&self, v: AttendeeView) -> AttendeeOut {
        AttendeeOut {
            external_user_id: v.external_user_id,
            attendee_id: v.id.to_string(),
            join_token: self.tokens.join_token(&v.id),
            capabilities: v.capabilities.into(),
        }
    }

    fn attendee_response(&self, v: AttendeeView) -> Response {
        let body = wire::AttendeeResponse {
            attendee: self.attendee_out(v),
        };
        json_response(StatusCode::OK, &body)
    }
}

/// Validates one CreateAttendee input; on failure gives the ExternalUserId (if any) and why.
fn validate_attendee(
    input: wire::CreateAttendeeIn,
) -> Result<NewAttendee, (Option<String>, String)> {
    let Some(ext) = input.external_user_id else {
        return Err((None, "ExternalUserId is required".into()));
    };
    if let Err(msg) = wire::validate_external_user_id(&ext) {
        return Err((Some(ext), msg));
    }
    let capabilities = match input.capabilities {
        None => Capabilities::DEFAULT,
        Some(c) => match c.validate() {
            Ok(c) => c,
            Err(msg) => return Err((Some(ext), msg)),
        },
    };
    Ok(NewAttendee {
        external_user_id: ext,
        capabilities,
    })
}

/// A path label that must match the model's GUID pattern, exactly (no trimming).
fn guid(name: &str, raw: &str) -> ApiResult<Uuid> {
    if !is_guid(raw) {
        return Err(ApiError::BadRequest(format!(
            "{name} {raw:?} is not a valid GUID"
        )));
    }
    key(raw).ok_or_else(|| ApiError::BadRequest(format!("{name} {raw:?} is not a valid GUID")))
}

/// Reads and parses a JSON body; an empty body is `{}`.
async fn read_json<T: DeserializeOwned>(body: Body) -> ApiResult<T> {
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| ApiError::BadRequest("The request body is too large or unreadable".into()))?;
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &bytes
    };
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::BadRequest(format!("The request body is not valid: {e}")))
}

fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => {
            let mut resp = (status, bytes).into_response();
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// `roster-sync sim`: the simulator as a process.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Requests per second allowed per operation (`inf`: never throttle).
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Requests per operation that may arrive at once.
    #[arg(long, default_value_t = 20)]
    pub burst: u32,
    /// Fraction (0.0 to 1.0) of requests answered with a random 500 or 503.
    #[arg(long, default_value_t = 0.0)]
    pub fault_rate: f64,
    /// Delay before answering each request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Seed for ids, join tokens and faults (default: random).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Never throttle or fault the mutating operations (create, update, delete).
    #[arg(long)]
    pub exempt_control: bool,
    /// Attendees per meeting before CreateAttendee answers LimitExceeded.
    #[arg(long, default_value_t = 250)]
    pub max_attendees: usize,
    /// What a ListAttendees NextToken remembers: the last attendee returned (keyset), or a
    /// position in the live list (offset: a deletion between pages skips an attendee).
    #[arg(long, value_enum, default_value_t = Paging::Keyset)]
    pub paging: Paging,
}

impl From<&SimArgs> for SimConfig {
    fn from(a: &SimArgs) -> Self {
        Self {
            rate: a.rate,
            burst: a.burst,
            fault_rate: a.fault_rate,
            latency: Duration::from_millis(a.latency_ms),
            seed: a.seed,
            exempt_control: a.exempt_control,
            max_attendees: a.max_attendees,
            paging: a.paging,
        }
    }
}

/// Starts the simulator, prints its endpoint URL (`http://127.0.0.1:PORT`, nothing else) as
/// the first line on stdout for scripts to read, and serves until SIGINT or SIGTERM.
///
/// # Errors
/// Invalid arguments, a failed bind, a closed stdout, or a failed signal handler.
pub async fn run_cli(args: SimArgs) -> anyhow::Result<()> {
    let handle = start(args.listen, SimConfig::from(&args))
        .await
        .with_context(|| format!("starting the Chime simulator on {}", args.listen))?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", handle.endpoint_url()).context("writing the endpoint to stdout")?;
        out.flush().context("flushing stdout")?;
    }
    shutdown_signal().await?;
    tracing::info!("chime simulator shutting down");
    handle
        .shutdown()
        .await
        .context("stopping the Chime simulator")
}

async fn shutdown_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}

#[cfg(test)]
mod tests {
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
}
