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
pub mod events;
mod events_endpoint;
mod faults;
mod faults_endpoint;
mod operations;
pub mod presence;
mod process;
pub mod sqs;
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

pub use faults::{FaultBody, HookError, ScriptedFault};
use operations::{guid, handle, json_response, read_json};
pub use process::{SimArgs, run_cli};

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
    /// Where the Chime side emits meeting lifecycle events (an SQS queue of this simulator),
    /// and what goes wrong on the way; `None` (the default) emits nothing.
    pub events: Option<events::EventsConfig>,
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
            events: None,
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
    #[error("events: {0}")]
    Events(#[from] events::EventsError),
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
        if let Some(e) = &self.events {
            e.faults.validate()?;
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
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

/// A snapshot of the request counters, one field per operation. `GET /_sim/stats` answers it
/// as JSON, with these field names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
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
    /// The SQS side: queues served on the same listener, fed by the event emitter.
    sqs: sqs::Sqs,
    /// The lifecycle events the Chime side emits into `sqs`.
    events: events::Emitter,
    /// Who is connected, as the presence controls made it happen.
    presence: Mutex<presence::Truth>,
}

impl Shared {
    /// Request counters per operation and in total.
    fn stats(&self) -> SimStats {
        let c = |op: Operation| self.counters[op.index()].snapshot();
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
            total: self.total.snapshot(),
        }
    }
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
        sqs: sqs::Sqs::new(endpoint_url(addr), cfg.seed),
        events: events::Emitter::new(cfg.seed),
        presence: Mutex::new(presence::Truth::default()),
        cfg,
    });
    shared
        .events
        .configure(&shared.sqs, shared.cfg.events.clone())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
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
        endpoint_url(self.addr)
    }

    /// Creates SQS queue `name` (default attributes) unless it exists; answers its URL,
    /// `http://<listen address>/<account>/<name>`.
    ///
    /// # Errors
    /// A name SQS would refuse (1 to 80 letters, digits, `-` and `_`).
    pub fn create_queue(&self, name: &str) -> Result<String, QueueNameError> {
        self.shared
            .sqs
            .ensure(name)
            .map_err(|_| QueueNameError(name.chars().take(90).collect()))
    }

    /// The URL of queue `name`, if it exists.
    pub fn queue_url(&self, name: &str) -> Option<String> {
        self.shared
            .sqs
            .exists(name)
            .then(|| self.shared.sqs.url(name))
    }

    /// Puts `body` on queue `name` as SendMessage would, without a request: how a test
    /// plants a message no Chime operation would send (a poison message).
    ///
    /// # Errors
    /// The queue does not exist.
    pub fn send_to_queue(&self, name: &str, body: &str) -> Result<(), NoSuchQueue> {
        self.shared
            .sqs
            .send(name, body.to_owned(), None)
            .map(|_| ())
            .map_err(|_| NoSuchQueue(name.to_owned()))
    }

    /// ReceiveMessage requests waiting in a long poll right now, on any queue.
    pub fn waiting_receives(&self) -> usize {
        self.shared.sqs.waiting()
    }

    /// Turns lifecycle event emission on (creating its queue) or off, live.
    ///
    /// # Errors
    /// A fault out of range or an invalid queue name; nothing changes.
    pub fn set_events(&self, cfg: Option<events::EventsConfig>) -> Result<(), events::EventsError> {
        self.shared.events.configure(&self.shared.sqs, cfg)
    }

    /// Changes the event path's faults live (nothing when emission is off).
    ///
    /// # Errors
    /// A value out of range; nothing changes.
    pub fn set_event_faults(&self, faults: events::EventFaults) -> Result<(), events::EventsError> {
        self.shared.events.set_faults(faults)
    }

    /// What the event emitter did so far.
    pub fn event_stats(&self) -> events::EventStats {
        self.shared.events.stats()
    }

    /// Plants a poison message on the events queue.
    ///
    /// # Errors
    /// Emission is off or its queue was deleted.
    pub fn inject_poison(&self, poison: &events::Poison) -> Result<(), events::PoisonError> {
        self.shared.events.poison(&self.shared.sqs, poison)
    }

    /// Loses the next `count` events of `event_type` whatever the dice say (say, a meeting
    /// that ends without `MeetingEnded`).
    pub fn lose_next(&self, event_type: crate::lifecycle::EventType, count: u32) {
        self.shared.events.lose_next(event_type, count);
    }

    /// Applies a presence control to a live attendee at `at` (now when `None`; never in the
    /// future) and emits its events. `network_type` is for joins (default `Voip`).
    ///
    /// # Errors
    /// An unknown or deleted meeting or attendee, a time in the future, or a control no
    /// client could make now (joining twice, stopping video that is off, going back in time).
    pub fn presence(
        &self,
        meeting: &MeetingId,
        attendee: &AttendeeId,
        action: presence::PresenceAction,
        network_type: Option<&str>,
        at: Option<DateTime<Utc>>,
    ) -> Result<(), PresenceControlError> {
        let (Some(m), Some(a)) = (key(meeting.as_str()), key(attendee.as_str())) else {
            return Err(PresenceControlError("ids must be GUIDs".into()));
        };
        self.shared
            .presence_control(m, a, action, network_type, at)
            .map_err(|e| PresenceControlError(e.to_string()))
    }

    /// The simulator's truth of who was connected to `meeting` and when; `None` when no
    /// presence control ever touched it.
    pub fn presence_truth(&self, meeting: &MeetingId) -> Option<presence::MeetingPresence> {
        lock(&self.shared.presence).meeting(&key(meeting.as_str())?)
    }

    /// How many messages queue `name` holds, visible, in flight and delayed.
    pub fn queue_counts(&self, name: &str) -> Option<sqs::QueueCounts> {
        self.shared.sqs.counts(name)
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
        self.shared.stats()
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

/// A presence control the simulator refused, and why.
#[derive(Debug, thiserror::Error)]
#[error("presence control refused: {0}")]
pub struct PresenceControlError(pub String);

/// A queue name SQS would refuse.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a valid queue name: 1 to 80 letters, digits, '-' and '_'")]
pub struct QueueNameError(pub String);

/// A queue that does not exist.
#[derive(Debug, thiserror::Error)]
#[error("the simulator has no queue named {0:?}")]
pub struct NoSuchQueue(pub String);

/// `http://IP:PORT` for a bound address; an unspecified address (`0.0.0.0`, `::`) is
/// replaced by loopback.
fn endpoint_url(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

/// Our ids are validated GUIDs already; this only changes their representation.
fn key(guid: &str) -> Option<Uuid> {
    Uuid::parse_str(guid).ok()
}

#[cfg(test)]
mod tests;
