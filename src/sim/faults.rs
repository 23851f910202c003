//! Faults a test plants on the simulator: any status, error code and body (JSON, untyped,
//! HTML) on one meeting's operations, and why a deletion hook can be refused.
//!
//! Only descriptions live here; [`super::SimHandle::script`] plants them and the request path
//! fires them. It never holds or logs a request body.

use super::*;

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
    pub retry_after: Option<u64>,
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

    pub fn retry_after(mut self, seconds: u64) -> Self {
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
