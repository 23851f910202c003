//! roster-sync keeps the attendance record of Amazon Chime SDK meetings: it polls
//! `ListAttendees`, diffs each complete roster against the previous snapshot and records
//! `joined`, `left` and `capabilities_changed` events in Postgres or SQLite.
//!
//! The binary (`main.rs`) only parses arguments and calls [`cli::run`]; [`app`] assembles the
//! daemon. ARCHITECTURE.md at the repository root maps every module.

pub mod app;
pub mod chime;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod deadline;
pub mod demo;
pub mod diff;
pub mod domain;
pub mod event_json;
pub mod events;
pub mod fault;
pub mod forget;
pub mod glob;
pub mod health;
pub mod http;
pub mod lifecycle;
pub mod meeting_events;
pub mod permit;
pub mod presence;
pub mod rate;
pub mod redact;
pub mod report;
pub mod retention;
pub mod scheduler;
pub mod shutdown;
pub mod signing;
pub mod sim;
pub mod sinks;
pub mod store;
pub mod systemd;
pub mod telemetry;
