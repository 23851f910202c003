//! The command line: argument parsing (clap) and one function per command. `main.rs` only
//! calls [`run`]; tests call the same functions.
//!
//! Commands print results on stdout and diagnostics through tracing on stderr. They must
//! never print a secret (the database URL is redacted) or a JoinToken.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

use crate::app::{Daemon, DaemonOptions};
use crate::chime::{ChimeClient, ChimeError, RosterSource as _};
use crate::config::Settings;
use crate::domain::{MeetingId, Region};
use crate::redact::redact_url;
use crate::store::AddOutcome;

/// Keeps the attendance record of Amazon Chime SDK meetings.
#[derive(Debug, Parser)]
#[command(name = "roster-sync", version, about)]
pub struct Cli {
    /// TOML configuration file (also ROSTER_SYNC_CONFIG).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: poll every tracked meeting and record what changes.
    Run(RunArgs),
    /// Apply database migrations and exit.
    Migrate,
    /// Add, remove or list tracked meetings.
    #[command(subcommand)]
    Meetings(MeetingsCommand),
    /// Print the attendance of one meeting, of a label's meetings, or capability changes.
    Report(ReportArgs),
    /// Print recorded events in event_id order; --follow keeps printing them as they commit.
    Events(crate::events::EventsArgs),
    /// Run the Chime-compatible simulator (for tests and trials; never a real endpoint).
    Sim(crate::sim::SimArgs),
    /// Erase one person: their events and current-roster rows (asks first; see --yes).
    Forget(crate::forget::ForgetArgs),
    /// Simulator + daemon + live events, zero setup.
    Demo(crate::demo::DemoArgs),
    /// Print the effective configuration with secrets redacted; exit non-zero if invalid.
    Config,
    /// List the replicas of a cluster (cluster.enabled): heartbeat age, meetings held, share
    /// of the rate budget.
    Cluster {
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Do not apply migrations on start, even if database.migrate_on_start is true.
    #[arg(long)]
    pub no_migrate: bool,
}

#[derive(Debug, Subcommand)]
pub enum MeetingsCommand {
    /// Track a meeting (idempotent).
    Add {
        meeting_id: String,
        /// Control region that created the meeting (default: chime.region).
        #[arg(long)]
        region: Option<String>,
        /// A name for people reading reports.
        #[arg(long)]
        label: Option<String>,
        /// Do not ask the service (GetMeeting) whether the meeting exists in the region, for
        /// setup without network access. A wrong id or region then shows as a failing meeting
        /// in `meetings list`.
        #[arg(long)]
        no_verify: bool,
        /// Track an ended or stopped meeting again, or move an active one to `--region`.
        #[arg(long)]
        force: bool,
    },
    /// Stop tracking a meeting; its present attendees are closed with reason tracking_stopped.
    Remove { meeting_id: String },
    /// List tracked meetings.
    List {
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ListFormat {
    Table,
    Json,
}

/// `report <MEETING_ID>`, `report --label L`, or `report --capability-changes`: exactly one.
#[derive(Debug, Args)]
#[command(group(
    ArgGroup::new("subject")
        .args(["meeting_id", "label", "capability_changes"])
        .required(true)
        .multiple(false)
))]
#[command(group(ArgGroup::new("across").args(["label", "capability_changes"])))]
pub struct ReportArgs {
    /// The meeting whose attendance to report.
    pub meeting_id: Option<String>,
    /// Attendance per person across every meeting with this label.
    #[arg(long, value_name = "L")]
    pub label: Option<String>,
    /// Every capabilities_changed event: who, meeting, when, values before and after.
    #[arg(long)]
    pub capability_changes: bool,
    /// Only activity at or after T (RFC 3339, or a date: its midnight UTC).
    #[arg(long, value_name = "T", value_parser = parse_since, requires = "across")]
    pub since: Option<DateTime<Utc>>,
    /// Only activity before T (RFC 3339, or a date: the whole day counts). With --label only.
    #[arg(
        long,
        value_name = "T",
        value_parser = parse_until,
        conflicts_with_all = ["meeting_id", "capability_changes"]
    )]
    pub until: Option<DateTime<Utc>>,
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    pub format: ReportFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Table,
    Csv,
    Json,
    /// One self-contained page (inline CSS and SVG, no script); not for --capability-changes.
    Html,
}

/// `--since`: an RFC 3339 instant, or a date meaning its first instant (UTC).
fn parse_since(s: &str) -> Result<DateTime<Utc>, String> {
    parse_time(s, 0)
}

/// `--until`: an RFC 3339 instant, or a date meaning the end of that day (UTC), so
/// `--until 2026-01-31` includes the 31st.
fn parse_until(s: &str) -> Result<DateTime<Utc>, String> {
    parse_time(s, 1)
}

fn parse_time(s: &str, days_after_date: u64) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.checked_add_days(chrono::Days::new(days_after_date)))
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| {
            format!(
                "{s:?} is neither an RFC 3339 time (2026-01-31T09:00:00Z) nor a date (2026-01-31)"
            )
        })
}

/// Runs one parsed command line.
///
/// # Errors
/// Whatever the command met: invalid configuration or arguments, an unreachable database,
/// an unbindable address. The message names the problem.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Sim(args) = cli.command {
        return crate::sim::run_cli(args).await;
    }
    let settings = Settings::load(cli.config.as_deref())?;
    // The demo's own output is the event stream; its logs stay at warnings unless RUST_LOG asks.
    let level = if matches!(cli.command, Command::Demo(_)) {
        "warn"
    } else {
        settings.log.level.as_str()
    };
    crate::telemetry::init(settings.log.format, level, std::io::stderr);
    match cli.command {
        Command::Run(args) => run_daemon(settings, args).await,
        Command::Migrate => {
            let store = crate::app::connect(&settings).await?;
            store.migrate().await.context("applying migrations")?;
            println!(
                "migrations applied to {}",
                redact_url(&settings.database_url())
            );
            Ok(())
        }
        Command::Meetings(cmd) => meetings(&settings, cmd).await,
        Command::Report(args) => report(&settings, args).await,
        Command::Events(args) => crate::events::run(&settings, args).await,
        Command::Forget(args) => crate::forget::run(&settings, args).await,
        Command::Demo(args) => {
            crate::demo::run(&settings, args, crate::shutdown::on_signals()).await
        }
        Command::Config => {
            let text = toml::to_string_pretty(&settings.redacted())
                .context("rendering the configuration")?;
            print!("{text}");
            Ok(())
        }
        Command::Cluster { format } => cluster(&settings, format).await,
        Command::Sim(_) => Ok(()),
    }
}

/// `roster-sync cluster`: every replica row, with what it holds.
async fn cluster(settings: &Settings, format: ListFormat) -> anyhow::Result<()> {
    let store = crate::app::connect(settings).await?;
    let replicas = store.replicas(settings.cluster.lease_ttl).await?;
    let mut out = std::io::stdout().lock();
    match format {
        ListFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&replicas)?)?,
        ListFormat::Table => {
            writeln!(
                out,
                "{:<36}  {:<20}  {:>7}  {:>9}  {:>8}  {:>6}  RATE SHARE",
                "REPLICA", "HOST", "PID", "HEARTBEAT", "MEETINGS", "PAGES"
            )?;
            for r in replicas {
                let rps = settings.rate.requests_per_second;
                let share = if r.rate_share.is_empty() {
                    "-".to_owned()
                } else {
                    r.rate_share
                        .iter()
                        .map(|(region, f)| format!("{region} {:.2}/s ({:.0}%)", rps * f, f * 100.0))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                writeln!(
                    out,
                    "{:<36}  {:<20}  {:>7}  {:>8.1}s  {:>8}  {:>6}  {}",
                    r.replica_id,
                    r.host,
                    r.pid,
                    r.heartbeat_age_seconds,
                    r.meetings,
                    r.pages,
                    share
                )?;
            }
        }
    }
    Ok(())
}

/// `roster-sync run`: the daemon of [`crate::app`], until SIGTERM or SIGINT.
async fn run_daemon(mut settings: Settings, args: RunArgs) -> anyhow::Result<()> {
    if args.no_migrate {
        settings.database.migrate_on_start = false;
    }
    let cancel = crate::shutdown::on_signals();
    match Daemon::build(&settings, None, cancel.clone(), DaemonOptions::default()).await {
        Ok(daemon) => daemon.wait().await,
        // Asked to stop while it waited for the database: a clean stop, not a failure.
        Err(e) if cancel.is_cancelled() => {
            tracing::info!(reason = %format!("{e:#}"), "stopped before the daemon was running");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

async fn meetings(settings: &Settings, cmd: MeetingsCommand) -> anyhow::Result<()> {
    // Parse ids before touching the database, so a typo never needs a connection.
    match cmd {
        MeetingsCommand::Add {
            meeting_id,
            region,
            label,
            no_verify,
            force,
        } => {
            let id = MeetingId::parse(&meeting_id)?;
            let region = match region {
                Some(r) => Region::parse(&r)?,
                None => settings.chime.region.clone(),
            };
            if !no_verify {
                verify_meeting(settings, &id, &region).await?;
            }
            let store = crate::app::connect(settings).await?;
            // A role that may not change the schema (deploy/postgres/roles.sql's writer)
            // runs with database.migrate_on_start = false.
            if settings.database.migrate_on_start {
                store.migrate().await.context("applying migrations")?;
            }
            let outcome = store
                .add_meeting(&id, &region, label.as_deref(), crate::domain::now(), force)
                .await?;
            let said = match outcome {
                AddOutcome::Added => "now tracked".to_owned(),
                AddOutcome::AlreadyTracked => "already tracked".to_owned(),
                AddOutcome::Reactivated => "tracked again".to_owned(),
                AddOutcome::Revived => "had ended; tracked again".to_owned(),
                AddOutcome::Moved { from } => format!("moved from region {from}"),
                AddOutcome::AlreadyEnded => {
                    bail!(
                        "meeting {id} has ended (the service reported it gone); pass --force to track it again"
                    )
                }
                AddOutcome::RegionDiffers { current } => {
                    bail!(
                        "meeting {id} is already tracked in region {current}, not {region}; pass --force to move it to {region}"
                    )
                }
            };
            println!("meeting {id} ({region}) {said}");
        }
        MeetingsCommand::Remove { meeting_id } => {
            let id = MeetingId::parse(&meeting_id)?;
            let store = crate::app::connect(settings).await?;
            match store.remove_meeting(&id, crate::domain::now()).await? {
                None => bail!("meeting {id} is not tracked"),
                Some(events) => println!(
                    "meeting {id} no longer tracked; {} attendee(s) closed with reason tracking_stopped",
                    events.len()
                ),
            }
        }
        MeetingsCommand::List { format } => {
            let store = crate::app::connect(settings).await?;
            let list = store.list_meetings().await?;
            // Cluster mode: the replica holding each meeting's lease (none on SQLite).
            let owners = store.meeting_owners().await?;
            let owner_of = |m: &MeetingId| owners.get(m).map(|o| o.to_string());
            // Who started tracking it: `meeting_events` (discovery), else an operator or the
            // configuration.
            let sources = store.meeting_sources().await?;
            let added_by = |m: &MeetingId| sources.get(m).map_or("operator", String::as_str);
            let mut out = std::io::stdout().lock();
            match format {
                ListFormat::Json => {
                    let mut rows = Vec::with_capacity(list.len());
                    for m in &list {
                        let mut row = serde_json::to_value(m)?;
                        if let Some(fields) = row.as_object_mut() {
                            fields.insert("owner".into(), owner_of(&m.meeting_id).into());
                            fields.insert("added_by".into(), added_by(&m.meeting_id).into());
                        }
                        rows.push(row);
                    }
                    writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?
                }
                ListFormat::Table => {
                    writeln!(
                        out,
                        "{:<36}  {:<14}  {:<7}  {:<20}  {:<8}  {:<16}  {:<8}  {:<14}  LAST ERROR",
                        "MEETING",
                        "REGION",
                        "STATUS",
                        "LAST POLLED",
                        "FAILURES",
                        "LABEL",
                        "OWNER",
                        "ADDED BY"
                    )?;
                    for m in list {
                        let error = match (&m.last_error_code, &m.last_error) {
                            (_, None) => "-".to_owned(),
                            (Some(code), Some(e)) => format!("[{code}] {e}"),
                            (None, Some(e)) => e.clone(),
                        };
                        // The first 8 characters of the replica id, as `roster-sync cluster`
                        // prints it in full.
                        let owner = owner_of(&m.meeting_id)
                            .map(|o| o.chars().take(8).collect::<String>())
                            .unwrap_or_else(|| "-".into());
                        writeln!(
                            out,
                            "{:<36}  {:<14}  {:<7}  {:<20}  {:<8}  {:<16}  {:<8}  {:<14}  {}",
                            m.meeting_id,
                            m.region,
                            m.status.as_str(),
                            m.last_polled_at
                                .map(crate::report::timestamp)
                                .unwrap_or_else(|| "-".into()),
                            m.consecutive_failures,
                            m.label.as_deref().unwrap_or("-"),
                            owner,
                            added_by(&m.meeting_id),
                            error
                        )?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Asks the service whether `id` exists in `region` before it is tracked, so a typo or a wrong
/// region is refused at once instead of failing every poll.
async fn verify_meeting(
    settings: &Settings,
    id: &MeetingId,
    region: &Region,
) -> anyhow::Result<()> {
    let client = ChimeClient::from_settings(settings).await;
    match client.get_meeting(id, region).await {
        Ok(()) => Ok(()),
        Err(ChimeError::NotFound { .. }) => bail!(
            "meeting {id} was not found in region {region} (GetMeeting answered NotFoundException); check the id and --region, or pass --no-verify to track it anyway"
        ),
        Err(e) => bail!(
            "cannot check that meeting {id} exists in region {region}: GetMeeting failed: {e}; pass --no-verify to track it without checking"
        ),
    }
}

async fn report(settings: &Settings, args: ReportArgs) -> anyhow::Result<()> {
    use crate::report::{self, CapabilityChanges, LabelReport, MeetingReport, Window};

    let now = crate::domain::now();
    let mut out = std::io::stdout().lock();
    if let Some(label) = &args.label {
        let window = Window {
            since: args.since,
            until: args.until,
        };
        if let (Some(since), Some(until)) = (window.since, window.until)
            && since >= until
        {
            bail!("--since must be before --until");
        }
        let store = crate::app::connect(settings).await?;
        let r = LabelReport::load(&store, label, window, now).await?;
        match args.format {
            ReportFormat::Table => report::write_label_table(&mut out, &r)?,
            ReportFormat::Csv => report::csv::write_label(&mut out, &r)?,
            ReportFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&r)?)?,
            ReportFormat::Html => report::html::write_label(&mut out, &r)?,
        }
    } else if args.capability_changes {
        if args.format == ReportFormat::Html {
            bail!("--capability-changes prints table, csv or json, not html");
        }
        let store = crate::app::connect(settings).await?;
        let r = CapabilityChanges::load(&store, args.since).await?;
        match args.format {
            ReportFormat::Csv => report::csv::write_capability_changes(&mut out, &r)?,
            ReportFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&r.to_json())?)?,
            ReportFormat::Table | ReportFormat::Html => {
                report::write_capability_changes_table(&mut out, &r)?
            }
        }
    } else {
        let Some(meeting_id) = &args.meeting_id else {
            bail!("name a meeting, --label or --capability-changes");
        };
        let id = MeetingId::parse(meeting_id)?;
        let store = crate::app::connect(settings).await?;
        let Some(r) = MeetingReport::load(&store, &id, now).await? else {
            bail!("meeting {id} is not tracked");
        };
        match args.format {
            ReportFormat::Table => report::write_meeting_table(&mut out, &r)?,
            ReportFormat::Csv => report::csv::write_meeting(&mut out, &r)?,
            ReportFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&r.to_json())?)?,
            ReportFormat::Html => report::html::write_meeting(&mut out, &r)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_times_are_rfc_3339_or_dates() {
        let t = parse_since("2026-01-31T09:00:00+01:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-01-31T08:00:00+00:00");
        assert_eq!(
            parse_since("2026-01-31").unwrap().to_rfc3339(),
            "2026-01-31T00:00:00+00:00"
        );
        assert_eq!(
            parse_until("2026-01-31").unwrap().to_rfc3339(),
            "2026-02-01T00:00:00+00:00"
        );
        assert!(parse_since("yesterday").unwrap_err().contains("yesterday"));
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
