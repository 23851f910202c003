//! The control endpoint of the event path and of presence, for scripts driving the
//! `roster-sync sim` process (in-process callers use the [`super::SimHandle`] methods):
//!
//! - `GET /_sim/events`: the emission configuration and [`super::events::EventStats`];
//! - `PUT /_sim/events` with `{"queue", "format", "loss", "duplicate", "max_delay_ms"}`:
//!   turns emission on (creating the queue) or changes it; `DELETE /_sim/events` turns it off;
//! - `PUT /_sim/events/faults` with `{"loss", "duplicate", "max_delay_ms"}`: faults only;
//! - `POST /_sim/events/poison` with `{"kind": "not_json"}` (or `not_chime`, `unknown_type`,
//!   `bad_meeting_id`, `future_timestamp`, `broken_sns`, `huge`) or `{"raw": "..."}`;
//! - `POST /_sim/events/lose` with `{"event_type": "MeetingEnded", "count": 1}`;
//! - `POST /_sim/presence` with `{"meeting_id", "attendee_id", "action", "network_type"?,
//!   "at"?}` (`action`: `join`, `leave`, `drop`, `handoff`, `video_start`, `video_stop`,
//!   `content_join`, `content_leave`, `content_drop`, `content_video_start`,
//!   `content_video_stop`; `at` an RFC 3339 time, default now);
//! - `GET /_sim/presence/{MeetingId}`: the truth ([`super::presence::MeetingPresence`]).
//!
//! Like `/_sim/faults`: no signature, never throttled, not counted; a refusal is a 400 (404
//! for an unknown meeting or attendee) in the Chime error format. It never logs a body.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::events::{EventFaults, EventStats, EventsConfig, EventsFormat, Poison};
use super::presence::PresenceAction;
use super::{ApiError, ApiResult, Shared, guid, json_response, lock, read_json};
use crate::lifecycle::EventType;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultsSpec {
    #[serde(default)]
    loss: f64,
    #[serde(default)]
    duplicate: f64,
    #[serde(default)]
    max_delay_ms: u64,
}

impl FaultsSpec {
    fn faults(&self) -> EventFaults {
        EventFaults {
            loss: self.loss,
            duplicate: self.duplicate,
            max_delay: Duration::from_millis(self.max_delay_ms),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsSpec {
    queue: String,
    #[serde(default)]
    format: EventsFormat,
    #[serde(flatten)]
    faults: FaultsSpec,
}

#[derive(Debug, Serialize)]
struct EventsView {
    queue: Option<String>,
    queue_url: Option<String>,
    format: Option<EventsFormat>,
    loss: f64,
    duplicate: f64,
    max_delay_ms: u128,
    stats: EventStats,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PoisonSpec {
    #[serde(default)]
    kind: Option<Poison>,
    #[serde(default)]
    raw: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoseSpec {
    event_type: String,
    #[serde(default = "one")]
    count: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PresenceSpec {
    meeting_id: String,
    attendee_id: String,
    action: PresenceAction,
    #[serde(default)]
    network_type: Option<String>,
    #[serde(default)]
    at: Option<DateTime<Utc>>,
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// Serves `/_sim/events...` and `/_sim/presence...`; `None` for any other control path.
pub(crate) async fn serve(
    shared: &Shared,
    method: &Method,
    segs: &[&str],
    body: Body,
) -> Option<ApiResult> {
    let bad = |e: &dyn std::fmt::Display| ApiError::BadRequest(e.to_string());
    Some(match (method.as_str(), segs) {
        ("GET", ["events"]) => {
            let cfg = shared.events.config();
            let f = cfg.as_ref().map(|c| c.faults).unwrap_or_default();
            let view = EventsView {
                queue_url: cfg.as_ref().map(|c| shared.sqs.url(&c.queue)),
                queue: cfg.as_ref().map(|c| c.queue.clone()),
                format: cfg.as_ref().map(|c| c.format),
                loss: f.loss,
                duplicate: f.duplicate,
                max_delay_ms: f.max_delay.as_millis(),
                stats: shared.events.stats(),
            };
            Ok(json_response(StatusCode::OK, &view))
        }
        ("PUT", ["events"]) => {
            async {
                let spec: EventsSpec = read_json(body).await?;
                let cfg = EventsConfig {
                    queue: spec.queue,
                    format: spec.format,
                    faults: spec.faults.faults(),
                };
                shared
                    .events
                    .configure(&shared.sqs, Some(cfg))
                    .map_err(|e| bad(&e))?;
                Ok(no_content())
            }
            .await
        }
        ("DELETE", ["events"]) => shared
            .events
            .configure(&shared.sqs, None)
            .map(|()| no_content())
            .map_err(|e| bad(&e)),
        ("PUT", ["events", "faults"]) => {
            async {
                let spec: FaultsSpec = read_json(body).await?;
                shared
                    .events
                    .set_faults(spec.faults())
                    .map_err(|e| bad(&e))?;
                Ok(no_content())
            }
            .await
        }
        ("POST", ["events", "poison"]) => {
            async {
                let spec: PoisonSpec = read_json(body).await?;
                let poison = match (spec.kind, spec.raw) {
                    (Some(k), None) => k,
                    (None, Some(raw)) => Poison::Raw(raw),
                    _ => return Err(bad(&"give exactly one of kind and raw")),
                };
                shared
                    .events
                    .poison(&shared.sqs, &poison)
                    .map_err(|e| bad(&e))?;
                Ok(no_content())
            }
            .await
        }
        ("POST", ["events", "lose"]) => {
            async {
                let spec: LoseSpec = read_json(body).await?;
                let t = EventType::parse(&format!("chime:{}", spec.event_type))
                    .or_else(|| EventType::parse(&spec.event_type))
                    .ok_or_else(|| bad(&format!("unknown event type {:?}", spec.event_type)))?;
                shared.events.lose_next(t, spec.count);
                Ok(no_content())
            }
            .await
        }
        ("POST", ["presence"]) => {
            async {
                let spec: PresenceSpec = read_json(body).await?;
                let m = guid("MeetingId", &spec.meeting_id)?;
                let a = guid("AttendeeId", &spec.attendee_id)?;
                shared.presence_control(
                    m,
                    a,
                    spec.action,
                    spec.network_type.as_deref(),
                    spec.at,
                )?;
                Ok(no_content())
            }
            .await
        }
        ("GET", ["presence", m]) => (|| {
            let id = guid("MeetingId", m)?;
            let truth = lock(&shared.presence).meeting(&id).or_else(|| {
                lock(&shared.state)
                    .meeting(&id)
                    .is_ok()
                    .then(|| super::presence::MeetingPresence {
                        meeting_id: id.to_string(),
                        ..Default::default()
                    })
            });
            let truth =
                truth.ok_or_else(|| ApiError::NotFound(format!("Meeting {id} not found")))?;
            Ok(json_response(StatusCode::OK, &truth))
        })(),
        _ => return None,
    })
}
