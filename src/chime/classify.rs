//! How a failed request is sorted into [`ChimeError`] classes: by its error code first, by
//! its HTTP status only when the code is unknown or absent.
//!
//! It must never turn a status alone into [`ChimeError::NotFound`] or
//! [`ChimeError::Forbidden`] (an HTML 404 from a proxy or a 403 from IAM says nothing about a
//! meeting), and never quote a response body (it can hold JoinTokens).
//!
//! A `Retry-After` (header or modelled member, on any status) is read as delta-seconds or an
//! HTTP date and bounded by [`MAX_RETRY_AFTER`]; anything else is ignored. The network can send
//! any number there, so no wait it asks for reaches a clock unbounded.

use std::time::Duration;

use aws_sdk_chimesdkmeetings::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_chimesdkmeetings::operation::RequestId;

use super::{ChimeError, NO_CODE};

/// Error codes that mean "too many requests".
const THROTTLING_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "ThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "SlowDown",
];

/// Error codes of a failed or overloaded service.
const UNAVAILABLE_CODES: &[&str] = &[
    "ServiceUnavailableException",
    "ServiceUnavailable",
    "ServiceFailureException",
    "ServiceFailure",
    "InternalServerError",
    "InternalServerException",
    "InternalFailure",
];

/// Error codes about the caller's credentials or permissions (IAM, STS, SigV4), never about a
/// meeting. The modelled `UnauthorizedException` (401) is one of them.
const DENIED_CODES: &[&str] = &[
    "AccessDeniedException",
    "AccessDenied",
    "UnauthorizedException",
    "UnrecognizedClientException",
    "ExpiredTokenException",
    "ExpiredToken",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "IncompleteSignatureException",
    "InvalidClientTokenId",
    "MissingAuthenticationToken",
    "MissingAuthenticationTokenException",
    "InvalidAccessKeyId",
    "RequestExpired",
    "NotAuthorized",
    "AuthFailure",
];

/// The error class of an answer, decided from its code first and its status only when the
/// code is unknown or absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Throttled,
    Unavailable,
    NotFound,
    Forbidden,
    Denied,
    Refused,
}

/// Known codes decide; an unknown or missing code falls back to the status, and a status
/// alone is never [`Class::NotFound`] or [`Class::Forbidden`]: an HTML 404 from a proxy or a
/// 403 from IAM says nothing about a meeting.
fn class_of(code: Option<&str>, status: u16) -> Class {
    match code {
        Some("NotFoundException" | "NotFound") => return Class::NotFound,
        Some("ForbiddenException" | "Forbidden") => return Class::Forbidden,
        Some(c) if THROTTLING_CODES.contains(&c) => return Class::Throttled,
        Some(c) if UNAVAILABLE_CODES.contains(&c) => return Class::Unavailable,
        Some(c) if DENIED_CODES.contains(&c) => return Class::Denied,
        _ => {}
    }
    match status {
        429 => Class::Throttled,
        401 | 403 => Class::Denied,
        s if s >= 500 => Class::Unavailable,
        _ => Class::Refused,
    }
}

/// Sorts an SDK failure of any operation into the [`ChimeError`] classes. `retry_after_member`
/// reads the modelled `RetryAfterSeconds` member, which wins over the header.
pub(super) fn classify<E>(
    err: SdkError<E, aws_sdk_chimesdkmeetings::config::http::HttpResponse>,
    retry_after_member: impl Fn(&E) -> Option<String>,
) -> ChimeError
where
    E: ProvideErrorMetadata + RequestId + std::error::Error + Send + Sync + 'static,
{
    let (status, retry_after, header_request_id) = match err.raw_response() {
        Some(r) => (
            r.status().as_u16(),
            r.headers().get("retry-after").and_then(parse_retry_after),
            r.headers().get("x-amzn-requestid").map(str::to_owned),
        ),
        None => (0, None, None),
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
            if (200..300).contains(&status) {
                // Only the parser's own error: never the raw response, whose body can hold
                // JoinTokens.
                return ChimeError::Malformed {
                    message: format!(
                        "unreadable answer, HTTP {status}: {}",
                        parse_error.unwrap_or_default()
                    ),
                };
            }
            return by_class(
                class_of(None, status),
                status,
                NO_CODE.to_owned(),
                retry_after,
                header_request_id,
                "unreadable error answer".to_owned(),
            );
        }
        other => {
            return ChimeError::Refused {
                status,
                code: "ConstructionFailure".into(),
                retry_after: None,
                request_id: None,
                message: aws_sdk_chimesdkmeetings::error::DisplayErrorContext(&other).to_string(),
            };
        }
    };
    let code = service.code().filter(|c| !c.is_empty());
    let message = service
        .message()
        .map(|m| truncate(m, MAX_MESSAGE))
        .unwrap_or_default();
    let request_id = service
        .request_id()
        .map(str::to_owned)
        .or(header_request_id);
    let retry_after = retry_after_member(&service)
        .and_then(|s| parse_retry_after(&s))
        .or(retry_after);
    if code.is_none() && (200..300).contains(&status) {
        // A success status whose body the SDK could not read as an answer.
        return ChimeError::Malformed {
            message: format!("unreadable answer, HTTP {status}"),
        };
    }
    let class = class_of(code, status);
    let code = code.unwrap_or(NO_CODE).to_owned();
    by_class(class, status, code, retry_after, request_id, message)
}

fn by_class(
    class: Class,
    status: u16,
    code: String,
    retry_after: Option<Duration>,
    request_id: Option<String>,
    message: String,
) -> ChimeError {
    match class {
        Class::Throttled => ChimeError::Throttled {
            status,
            code,
            retry_after,
            request_id,
            message,
        },
        Class::Unavailable => ChimeError::Unavailable {
            status,
            code,
            retry_after,
            request_id,
            message,
        },
        Class::NotFound => ChimeError::NotFound {
            status,
            code,
            retry_after,
            request_id,
            message,
        },
        Class::Forbidden => ChimeError::Forbidden {
            status,
            code,
            retry_after,
            request_id,
            message,
        },
        Class::Denied => ChimeError::Denied {
            status,
            code,
            retry_after,
            request_id,
            message,
        },
        Class::Refused => ChimeError::Refused {
            status,
            code,
            retry_after,
            request_id,
            message,
        },
    }
}

/// Service messages are kept in logs and `meetings list`; a proxy can send anything.
const MAX_MESSAGE: usize = 300;

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// The longest wait a `Retry-After` is read as. The callers clamp it again to their own cap
/// (`retry.cap`, `poll.failure_backoff_cap`); this bound only keeps an absurd number from
/// travelling further than the classifier.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(86_400);

/// `Retry-After` (header or the modelled `RetryAfterSeconds` member) as a wait: delta-seconds
/// (what the service sends; a number too long for any clock reads as [`MAX_RETRY_AFTER`]) or
/// an HTTP date (the wait until then, none if it is past). Anything else (a negative or
/// fractional number, garbage) is ignored, as if the header were absent.
pub(super) fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        let secs = v.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let wait = (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
        .to_std()
        .unwrap_or_default();
    Some(wait.min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_modelled_error_code_is_classified_by_its_code() {
        let modelled = [
            ("BadRequestException", 400, Class::Refused),
            ("ConflictException", 409, Class::Refused),
            ("ForbiddenException", 403, Class::Forbidden),
            ("LimitExceededException", 400, Class::Refused),
            ("NotFoundException", 404, Class::NotFound),
            ("ResourceNotFoundException", 404, Class::Refused),
            ("ServiceFailureException", 500, Class::Unavailable),
            ("ServiceUnavailableException", 503, Class::Unavailable),
            ("ThrottlingException", 429, Class::Throttled),
            ("TooManyTagsException", 400, Class::Refused),
            ("UnauthorizedException", 401, Class::Denied),
            ("UnprocessableEntityException", 422, Class::Refused),
        ];
        for (code, status, class) in modelled {
            assert_eq!(class_of(Some(code), status), class, "{code}");
        }
    }

    #[test]
    fn credential_errors_are_denied_whatever_their_status() {
        for code in [
            "AccessDeniedException",
            "ExpiredTokenException",
            "InvalidSignatureException",
            "UnrecognizedClientException",
            "MissingAuthenticationTokenException",
            "InvalidClientTokenId",
        ] {
            for status in [400, 401, 403, 404] {
                assert_eq!(
                    class_of(Some(code), status),
                    Class::Denied,
                    "{code} {status}"
                );
            }
        }
    }

    #[test]
    fn a_status_alone_never_says_a_meeting_is_gone() {
        // An HTML 404 from a proxy, a 403 from a gateway, unknown codes: never NotFound or
        // Forbidden, whatever the status.
        assert_eq!(class_of(None, 404), Class::Refused);
        assert_eq!(class_of(None, 403), Class::Denied);
        assert_eq!(class_of(None, 401), Class::Denied);
        assert_eq!(class_of(Some("SomethingNewException"), 404), Class::Refused);
        assert_eq!(class_of(Some("SomethingNewException"), 403), Class::Denied);
        assert_eq!(class_of(Some("ValidationException"), 400), Class::Refused);
        assert_eq!(class_of(None, 429), Class::Throttled);
        assert_eq!(class_of(None, 502), Class::Unavailable);
        assert_eq!(
            class_of(Some("SomethingNewException"), 503),
            Class::Unavailable
        );
    }

    #[test]
    fn retryable_errors_are_throttled_unavailable_and_transport() {
        let t = by_class(
            Class::Throttled,
            429,
            "ThrottlingException".into(),
            None,
            None,
            String::new(),
        );
        let n = by_class(
            Class::NotFound,
            404,
            "NotFoundException".into(),
            None,
            None,
            String::new(),
        );
        let d = by_class(
            Class::Denied,
            403,
            "AccessDeniedException".into(),
            None,
            None,
            String::new(),
        );
        let r = by_class(
            Class::Refused,
            400,
            "BadRequestException".into(),
            None,
            None,
            String::new(),
        );
        assert!(t.is_retryable());
        assert!(!n.is_retryable());
        assert!(!d.is_retryable());
        assert!(d.is_denied());
        assert!(!r.is_retryable());
    }

    #[test]
    fn retry_after_is_kept_on_every_status() {
        for (class, status) in [
            (Class::Throttled, 429),
            (Class::Unavailable, 503),
            (Class::Denied, 403),
            (Class::NotFound, 404),
            (Class::Forbidden, 403),
            (Class::Refused, 400),
        ] {
            let e = by_class(
                class,
                status,
                "Whatever".into(),
                Some(Duration::from_secs(3)),
                None,
                String::new(),
            );
            assert_eq!(e.retry_after(), Some(Duration::from_secs(3)), "{class:?}");
        }
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_a_date_and_bounded() {
        let secs = |n: u64| Some(Duration::from_secs(n));
        assert_eq!(parse_retry_after("0"), secs(0));
        assert_eq!(parse_retry_after(" 3 "), secs(3));
        assert_eq!(
            parse_retry_after("18446744073709551615"),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(
            parse_retry_after("99999999999999999999999"),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"), secs(0));
        for ignored in ["-1", "1.5", "", "soon", "0x10", "+3"] {
            assert_eq!(parse_retry_after(ignored), None, "{ignored:?}");
        }
        let soon = (chrono::Utc::now() + chrono::TimeDelta::seconds(120)).to_rfc2822();
        let wait = parse_retry_after(&soon).unwrap();
        assert!(wait > Duration::from_secs(100) && wait <= Duration::from_secs(120));
    }

    use proptest::prelude::*;

    proptest::proptest! {
        /// Whatever a `Retry-After` holds, on whatever status: the classifier keeps it within
        /// [`MAX_RETRY_AFTER`], a retry never waits longer than `retry.cap`, the next poll never
        /// waits longer than `poll.failure_backoff_cap`, and the scheduler's clock arithmetic
        /// never panics.
        #[test]
        fn no_retry_after_can_stretch_a_wait_past_its_cap_or_overflow_a_clock(
            header in proptest::prop_oneof![
                any::<String>(),
                any::<u64>().prop_map(|n| n.to_string()),
                any::<i64>().prop_map(|n| n.to_string()),
                any::<f64>().prop_map(|n| n.to_string()),
                "[0-9]{1,40}".prop_map(String::from),
                (0i64..4_000_000_000).prop_map(|t| chrono::DateTime::from_timestamp(t, 0)
                    .unwrap_or_default()
                    .format("%a, %d %b %Y %H:%M:%S GMT")
                    .to_string()),
                Just("18446744073709551615".to_owned()),
            ],
            class in proptest::sample::select(vec![
                (Class::Throttled, 429),
                (Class::Unavailable, 503),
                (Class::Unavailable, 500),
                (Class::NotFound, 404),
                (Class::Forbidden, 403),
                (Class::Denied, 401),
                (Class::Refused, 400),
            ]),
            retry_cap_ms in 1u64..600_000,
            backoff_cap_ms in 1u64..3_600_000,
            backoff_ms in 0u64..3_600_000,
        ) {
            use crate::deadline::Later as _;
            let retry_after = parse_retry_after(&header);
            prop_assert!(retry_after.is_none_or(|w| w <= MAX_RETRY_AFTER));
            let (class, status) = class;
            let e = by_class(class, status, "Whatever".into(), retry_after, None, String::new());
            prop_assert_eq!(e.retry_after(), retry_after);
            let retry_cap = Duration::from_millis(retry_cap_ms);
            let step = Some(retry_cap);
            if let Some(wait) = super::super::retry_delay(&e, step, retry_cap) {
                prop_assert!(wait <= retry_cap);
                let _ = tokio::time::Instant::now().later_by(wait);
            }
            let failure = crate::scheduler::PollFailure {
                code: Some(e.code().to_owned()),
                message: e.to_string(),
                retry_after: e.retry_after(),
                denied: false,
                status: e.status(),
                request_id: None,
            };
            let cap = Duration::from_millis(backoff_cap_ms);
            let backoff = Duration::from_millis(backoff_ms).min(cap);
            let wait = crate::scheduler::next_poll_wait(backoff, &failure, cap);
            prop_assert!(wait <= cap);
            let now = tokio::time::Instant::now();
            prop_assert!(now.later_by(wait) <= now.later_by(cap));
        }
    }
}
