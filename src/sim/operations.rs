//! The simulated operations: each request, once admitted, is answered here the way the
//! service answers it (paths, members, status codes, error bodies), and scripted faults and
//! deletion hooks fire here.
//!
//! It never logs a request or response body (they hold JoinTokens and ExternalUserIds).

use super::*;
use crate::lifecycle::EventType;

/// A request mapped to its operation, path labels still unvalidated.
#[derive(Debug)]
pub(super) enum Route {
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
    pub(super) fn parse(method: &Method, path: &str, query: &[(String, String)]) -> Option<Self> {
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

    pub(super) fn operation(&self) -> Operation {
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

pub(super) async fn handle(AxumState(shared): AxumState<Arc<Shared>>, req: Request) -> Response {
    let request_id = {
        let mut b = [0u8; 16];
        lock(&shared.request_ids).fill_bytes(&mut b);
        uuid::Builder::from_random_bytes(b).into_uuid().to_string()
    };
    if let Some(target) = sqs::is_sqs(req.headers()) {
        let target = target.to_owned();
        let (parts, body) = req.into_parts();
        return shared
            .sqs
            .serve(&target, &parts.headers, body, &request_id)
            .await;
    }
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
    pub(super) fn plant(&self, meeting: Uuid, fault: ScriptedFault) {
        let remaining = fault.times;
        lock(&self.scripts)
            .entry(meeting)
            .or_default()
            .push(ScriptEntry { fault, remaining });
    }

    pub(super) fn clear(&self, meeting: &Uuid) {
        lock(&self.scripts).remove(meeting);
    }

    pub(super) async fn serve(&self, req: Request) -> (Option<Operation>, ApiResult) {
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
        let region = events::signing_region(&parts.headers);
        let result = match self.admit(op, &parts.headers) {
            Ok(()) => self.dispatch(route, &query, body, region).await,
            Err(e) => Err(e),
        };
        (Some(op), result)
    }

    /// Authorization, quota, random faults: what happens before the operation runs.
    pub(super) fn admit(&self, op: Operation, headers: &axum::http::HeaderMap) -> ApiResult<()> {
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

    pub(super) async fn dispatch(
        &self,
        route: Route,
        query: &[(String, String)],
        body: Body,
        region: Option<crate::domain::Region>,
    ) -> ApiResult {
        let op = route.operation();
        // ListAttendees fires its own faults, once it knows the page.
        let fault = |m: &Uuid| self.fire_script(op, m, None);
        match route {
            Route::CreateMeeting => self.create_meeting(read_json(body).await?, region),
            Route::GetMeeting(m) => {
                let m = guid("MeetingId", &m)?;
                fault(&m)?;
                self.get_meeting(&m)
            }
            Route::DeleteMeeting(m) => {
                let m = guid("MeetingId", &m)?;
                fault(&m)?;
                let now = self.clock.now();
                let facts = {
                    let mut state = lock(&self.state);
                    let facts = Facts::of(&state, &m);
                    state.delete_meeting(&m, now)?;
                    facts
                };
                let at = self.clock.wall(now);
                lock(&self.presence).meeting_ended(&m, at);
                if let Some(f) = facts {
                    self.emit(EventType::MeetingEnded, &m, &f, None, None, None, at);
                }
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
                let (view, facts) = {
                    let mut state = lock(&self.state);
                    let view = state.update_capabilities(&m, &a, caps, now)?;
                    (view, Facts::of(&state, &m))
                };
                if let Some(f) = facts {
                    let at = self.clock.wall(now);
                    let who = Some((view.id, view.external_user_id.as_str()));
                    let t = EventType::AttendeeCapabilitiesUpdated;
                    self.emit(t, &m, &f, who, None, Some(view.capabilities), at);
                }
                Ok(self.attendee_response(view))
            }
            Route::DeleteAttendee(m, a) => {
                let (m, a) = (guid("MeetingId", &m)?, guid("AttendeeId", &a)?);
                fault(&m)?;
                let now = self.clock.now();
                let (view, facts) = {
                    let mut state = lock(&self.state);
                    let view = state.attendee(&m, &a)?;
                    state.delete_attendee(&m, &a, now)?;
                    (view, Facts::of(&state, &m))
                };
                let at = self.clock.wall(now);
                lock(&self.presence).removed(&m, &a, at);
                if let Some(f) = facts {
                    let who = Some((view.id, view.external_user_id.as_str()));
                    self.emit(EventType::AttendeeDeleted, &m, &f, who, None, None, at);
                }
                Ok(StatusCode::NO_CONTENT.into_response())
            }
        }
    }

    pub(super) fn create_meeting(
        &self,
        input: wire::CreateMeetingIn,
        region: Option<crate::domain::Region>,
    ) -> ApiResult {
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
        let now = self.clock.now();
        let (id, facts) = {
            let mut state = lock(&self.state);
            let id = state.create_meeting(new);
            (id, Facts::of(&state, &id))
        };
        let region = region.or_else(|| crate::domain::Region::parse(events::DEFAULT_REGION).ok());
        let fresh = region.is_some_and(|r| self.events.meeting_created(id, r));
        if let (true, Some(f)) = (fresh, facts) {
            let at = self.clock.wall(now);
            self.emit(EventType::MeetingStarted, &id, &f, None, None, None, at);
        }
        self.get_meeting(&id)
    }

    pub(super) fn get_meeting(&self, id: &Uuid) -> ApiResult {
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

    pub(super) fn create_attendee(
        &self,
        meeting: &Uuid,
        input: wire::CreateAttendeeIn,
    ) -> ApiResult {
        let new = validate_attendee(input).map_err(|(_, msg)| ApiError::BadRequest(msg))?;
        let now = self.clock.now();
        let mut views = lock(&self.state).create_attendees(meeting, vec![new], now)?;
        self.announce(meeting, &views, now);
        let view = views
            .pop()
            .ok_or_else(|| ApiError::Internal("The attendee was not created".into()))?;
        Ok(self.attendee_response(view))
    }

    pub(super) fn batch_create_attendee(
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
        self.announce(meeting, &views, now);
        let attendees = views.into_iter().map(|v| self.attendee_out(v)).collect();
        let body = wire::BatchCreateAttendeeResponse { attendees, errors };
        Ok(json_response(StatusCode::OK, &body))
    }

    pub(super) fn list_attendees(&self, meeting: &Uuid, query: &[(String, String)]) -> ApiResult {
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

    /// Emits `AttendeeAdded` for each attendee created at `now` (not for an existing one a
    /// repeated ExternalUserId returned).
    fn announce(&self, meeting: &Uuid, views: &[AttendeeView], now: Stamp) {
        if !self.events.is_on() {
            return;
        }
        let Some(f) = Facts::of(&lock(&self.state), meeting) else {
            return;
        };
        let at = self.clock.wall(now);
        for v in views.iter().filter(|v| v.created == now) {
            let who = Some((v.id, v.external_user_id.as_str()));
            self.emit(EventType::AttendeeAdded, meeting, &f, who, None, None, at);
        }
    }

    /// Emits one lifecycle event (nothing when emission is off).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn emit(
        &self,
        event_type: EventType,
        meeting: &Uuid,
        facts: &Facts,
        attendee: Option<(Uuid, &str)>,
        network_type: Option<&str>,
        capabilities: Option<Capabilities>,
        at: DateTime<Utc>,
    ) {
        self.events.emit(
            &self.sqs,
            &events::Occurrence {
                event_type,
                meeting: *meeting,
                external_meeting_id: &facts.external_meeting_id,
                media_region: &facts.media_region,
                attendee,
                network_type,
                capabilities,
                at,
            },
        );
    }

    /// One presence control: checks the attendee is live, applies it to the truth, emits
    /// its events.
    pub(super) fn presence_control(
        &self,
        meeting: Uuid,
        attendee: Uuid,
        action: presence::PresenceAction,
        network_type: Option<&str>,
        at: Option<DateTime<Utc>>,
    ) -> ApiResult<()> {
        let now = self.clock.wall(self.clock.now());
        let at = at.unwrap_or(now);
        if at > now + chrono::Duration::seconds(1) {
            return Err(ApiError::BadRequest(format!(
                "at {at} is in the future (now {now})"
            )));
        }
        if let Some(n) = network_type
            && (n.is_empty() || n.len() > 32 || !n.chars().all(|c| c.is_ascii_alphanumeric()))
        {
            return Err(ApiError::BadRequest(format!(
                "network_type {n:?} must be 1 to 32 letters and digits"
            )));
        }
        let (view, facts) = {
            let state = lock(&self.state);
            let view = state.attendee(&meeting, &attendee)?;
            let facts = Facts::of(&state, &meeting)
                .ok_or_else(|| ApiError::NotFound(format!("Meeting {meeting} not found")))?;
            (view, facts)
        };
        let emitted = lock(&self.presence)
            .apply(
                meeting,
                attendee,
                &view.external_user_id,
                action,
                network_type,
                at,
            )
            .map_err(|e| ApiError::BadRequest(e.to_string()))?;
        let who = Some((view.id, view.external_user_id.as_str()));
        for e in emitted {
            let net = e.network_type.as_deref();
            self.emit(e.event_type, &meeting, &facts, who, net, None, at);
        }
        Ok(())
    }

    /// Fires the first hook armed for this page of this meeting, if any.
    pub(super) fn fire_hooks(&self, meeting: &Uuid, cursor: Cursor) {
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
    pub(super) fn fire_script(
        &self,
        op: Operation,
        meeting: &Uuid,
        page: Option<u32>,
    ) -> ApiResult<()> {
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

    pub(super) fn attendee_out(&self, v: AttendeeView) -> AttendeeOut {
        AttendeeOut {
            external_user_id: v.external_user_id,
            attendee_id: v.id.to_string(),
            join_token: self.tokens.join_token(&v.id),
            capabilities: v.capabilities.into(),
        }
    }

    pub(super) fn attendee_response(&self, v: AttendeeView) -> Response {
        let body = wire::AttendeeResponse {
            attendee: self.attendee_out(v),
        };
        json_response(StatusCode::OK, &body)
    }
}

/// What every event of a meeting repeats about it.
pub(super) struct Facts {
    external_meeting_id: String,
    media_region: String,
}

impl Facts {
    fn of(state: &State, meeting: &Uuid) -> Option<Self> {
        let m = state.meeting(meeting).ok()?;
        Some(Self {
            external_meeting_id: m.external_meeting_id.to_string(),
            media_region: m.media_region.to_string(),
        })
    }
}

/// Validates one CreateAttendee input; on failure gives the ExternalUserId (if any) and why.
pub(super) fn validate_attendee(
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
pub(super) fn guid(name: &str, raw: &str) -> ApiResult<Uuid> {
    if !is_guid(raw) {
        return Err(ApiError::BadRequest(format!(
            "{name} {raw:?} is not a valid GUID"
        )));
    }
    key(raw).ok_or_else(|| ApiError::BadRequest(format!("{name} {raw:?} is not a valid GUID")))
}

/// Reads and parses a JSON body; an empty body is `{}`.
pub(super) async fn read_json<T: DeserializeOwned>(body: Body) -> ApiResult<T> {
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

pub(super) fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
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
