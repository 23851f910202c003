//! Logging setup: human-readable text by default, JSON on request, filtered by `log.level`
//! or `RUST_LOG`.
//!
//! It must never let a JoinToken through: the AWS SDK prints response bodies at trace level
//! only when `LOG_SENSITIVE_BODIES=true`, so when that variable is set the SDK's orchestrator
//! is capped at debug here, whatever filter was asked for.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::LogFormat;

/// Builds the filter: `RUST_LOG` if set, else `level`; plus the JoinToken safety cap.
pub fn filter(level: &str) -> EnvFilter {
    let base = std::env::var("RUST_LOG").ok().filter(|s| !s.is_empty());
    let mut filter = EnvFilter::try_new(base.as_deref().unwrap_or(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let sensitive =
        std::env::var("LOG_SENSITIVE_BODIES").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    if sensitive && let Ok(cap) = "aws_smithy_runtime::client::orchestrator=debug".parse() {
        filter = filter.add_directive(cap);
    }
    filter
}

/// Installs the global subscriber writing to `writer`. Safe to call more than once: later
/// calls are ignored (tests install their own).
pub fn init<W>(format: LogFormat, level: &str, writer: W)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(level))
        .with_writer(writer);
    let _ = match format {
        LogFormat::Json => builder.json().with_current_span(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
