//! The simulator's fault endpoint, for scripts driving the `roster-sync sim` process: the
//! faults [`super::SimHandle::script`] plants in-process, planted over HTTP.
//!
//! - `POST /_sim/faults` with a JSON [`FaultSpec`] plants one fault (204);
//! - `DELETE /_sim/faults/{MeetingId}` removes every fault planted on that meeting (204);
//! - `GET /_sim/stats` answers the request counters ([`super::SimStats`]) as JSON, so a tool
//!   driving the process (`roster-bench --replicas`) measures the fleet's requests and
//!   throttles where the quota is enforced.
//!
//! Its paths start with `/_sim/`, which no Chime SDK Meetings path does. Its requests need no
//! signature, are never throttled or faulted, and are not counted in [`super::SimStats`].
//! A refused request is a 400 in the service's error format. It must never log a body.

use axum::body::Body;
use axum::http::{Method, StatusCode};
use axum::response::IntoResponse;
use serde::Deserialize;

use super::{
    ApiError, ApiResult, FaultBody, Operation, ScriptedFault, Shared, guid, json_response,
    read_json,
};

/// Where the control endpoint lives; no model path starts with it.
pub(crate) const PREFIX: &str = "/_sim/";

/// One fault, as `POST /_sim/faults` takes it. Omitted members take
/// [`ScriptedFault::new`]'s defaults: ListAttendees, every page, forever, JSON body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultSpec {
    meeting_id: String,
    /// The model's operation name, e.g. `GetMeeting`.
    #[serde(default)]
    operation: Option<String>,
    status: u16,
    /// Sent verbatim as `x-amzn-ErrorType`; omitted or null sends none.
    #[serde(default)]
    error_type: Option<String>,
    /// `json` (default), `json-without-code` or `html`.
    #[serde(default)]
    body: Option<String>,
    /// The page of an `html` body.
    #[serde(default)]
    html: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    page: Option<usize>,
    #[serde(default)]
    times: Option<u32>,
    #[serde(default)]
    retry_after: Option<u32>,
}

impl FaultSpec {
    fn into_fault(self) -> ApiResult<(uuid::Uuid, ScriptedFault)> {
        let meeting = guid("MeetingId", &self.meeting_id)?;
        let operation = match self.operation.as_deref() {
            None => Operation::ListAttendees,
            Some(name) => Operation::ALL
                .into_iter()
                .find(|op| op.as_str() == name)
                .ok_or_else(|| ApiError::BadRequest(format!("unknown operation {name:?}")))?,
        };
        let body = match (self.body.as_deref(), self.html) {
            (None | Some("json"), None) => FaultBody::Json,
            (Some("json-without-code"), None) => FaultBody::JsonWithoutCode,
            (Some("html"), Some(page)) => FaultBody::Html(page),
            (Some("html"), None) => {
                return Err(ApiError::BadRequest("an html body needs html".into()));
            }
            (_, Some(_)) => {
                return Err(ApiError::BadRequest("html goes with body \"html\"".into()));
            }
            (Some(other), None) => {
                return Err(ApiError::BadRequest(format!(
                    "body must be json, json-without-code or html, not {other:?}"
                )));
            }
        };
        let fault = ScriptedFault {
            operation,
            page: self.page,
            times: self.times,
            status: self.status,
            error_type: self.error_type,
            body,
            message: self.message,
            retry_after: self.retry_after,
        };
        Ok((meeting, fault))
    }
}

/// Serves one control request (its path starts with [`PREFIX`]).
pub(crate) async fn serve(shared: &Shared, method: &Method, path: &str, body: Body) -> ApiResult {
    let segs: Vec<&str> = path.trim_start_matches(PREFIX).split('/').collect();
    if matches!(segs.first(), Some(&("events" | "presence"))) {
        if let Some(answer) = super::events_endpoint::serve(shared, method, &segs, body).await {
            return answer;
        }
        return Err(ApiError::UnknownOperation(format!(
            "No control operation matches {method} {path}"
        )));
    }
    match (method.as_str(), segs.as_slice()) {
        ("POST", ["faults"]) => {
            let spec: FaultSpec = read_json(body).await?;
            let (meeting, fault) = spec.into_fault()?;
            shared.plant(meeting, fault);
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        ("DELETE", ["faults", m]) => {
            shared.clear(&guid("MeetingId", m)?);
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        ("GET", ["stats"]) => Ok(json_response(StatusCode::OK, &shared.stats())),
        _ => Err(ApiError::UnknownOperation(format!(
            "No control operation matches {method} {path}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> ApiResult<(uuid::Uuid, ScriptedFault)> {
        serde_json::from_value::<FaultSpec>(json)
            .map_err(|e| ApiError::BadRequest(e.to_string()))?
            .into_fault()
    }

    const M: &str = "4f1c7a2e-0b3d-4c5e-9f60-7a8b9c0d1e2f";

    #[test]
    fn a_minimal_spec_is_a_list_attendees_fault_like_scripted_fault_new() {
        let (_, f) = spec(serde_json::json!({
            "meeting_id": M, "status": 503, "error_type": "ServiceUnavailableException"
        }))
        .unwrap();
        assert_eq!(f, ScriptedFault::new(503, "ServiceUnavailableException"));
    }

    #[test]
    fn a_full_spec_sets_every_member() {
        let (m, f) = spec(serde_json::json!({
            "meeting_id": M, "operation": "GetAttendee", "status": 404, "body": "html",
            "html": "<h1>404</h1>", "times": 2, "retry_after": 3
        }))
        .unwrap();
        assert_eq!(m.to_string(), M);
        assert_eq!(
            f,
            ScriptedFault::html(404, "<h1>404</h1>")
                .on(Operation::GetAttendee)
                .times(2)
                .retry_after(3)
        );
    }

    #[test]
    fn a_bad_spec_is_refused() {
        for bad in [
            serde_json::json!({"meeting_id": "nope", "status": 500}),
            serde_json::json!({"meeting_id": M, "status": 500, "operation": "Nope"}),
            serde_json::json!({"meeting_id": M, "status": 500, "body": "xml"}),
            serde_json::json!({"meeting_id": M, "status": 500, "body": "html"}),
            serde_json::json!({"meeting_id": M, "status": 500, "html": "<p>"}),
            serde_json::json!({"meeting_id": M, "status": 500, "colour": "red"}),
        ] {
            assert!(spec(bad.clone()).is_err(), "{bad}");
        }
    }
}
