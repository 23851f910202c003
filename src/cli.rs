//! The command line: argument parsing (clap) and one function per command. `main.rs` only
//! calls [`run`]; tests call the same functions.
//!
//! Commands print results on stdout and diagnostics through tracing on stderr. They must
//! never print a secret (the database URL is redacted) or a JoinToken.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::app::{Daemon, DaemonOptions};
use crate::config::Settings;
use crate::domain::{MeetingId, Region};
use crate::redact::redact_url;
use crate::store::{AddOutcome, Store};

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
    /// Print the attendance of one meeting.
    Report(ReportArgs),
    /// Run the Chime-compatible simulator (for tests and trials; never a real endpoint).
    Sim(crate::sim::SimArgs),
    /// Simulator + daemon + live events, zero setup.
    Demo(crate::demo::DemoArgs),
    /// Print the effective configuration with secrets redacted; exit non-zero if invalid.
    Config,
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

#[derive(Debug, Args)]
pub struct ReportArgs {
    pub meeting_id: String,
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    pub format: ReportFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ReportFormat {
    Table,
    Csv,
    Json,
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
            let store = connect(&settings).await?;
            store.migrate().await.context("applying migrations")?;
            println!(
                "migrations applied to {}",
                redact_url(&settings.database_url())
            );
            Ok(())
        }
        Command::Meetings(cmd) => meetings(&settings, cmd).await,
        Command::Report(args) => report(&settings, args).await,
        Command::Demo(args) => {
            crate::demo::run(&settings, args, crate::shutdown::on_signals()).await
        }
        Command::Config => {
            let text = toml::to_string_pretty(&settings.redacted())
                .context("rendering the configuration")?;
            print!("{text}");
            Ok(())
        }
        Command::Sim(_) => Ok(()),
    }
}

/// Connects to the configured database; the error names it (password redacted).
///
/// # Errors
/// The database cannot be reached or the URL is not supported.
pub async fn connect(settings: &Settings) -> anyhow::Result<Store> {
    let url = settings.database_url();
    Store::connect(&url, settings.database.max_connections)
        .await
        .with_context(|| format!("cannot open database {}", redact_url(&url)))
}

/// `roster-sync run`: the daemon of [`crate::app`], until SIGTERM or SIGINT.
async fn run_daemon(mut settings: Settings, args: RunArgs) -> anyhow::Result<()> {
    if args.no_migrate {
        settings.database.migrate_on_start = false;
    }
    let store = connect(&settings).await?;
    let cancel = crate::shutdown::on_signals();
    let daemon = Daemon::build(&settings, store, cancel, DaemonOptions::default()).await?;
    daemon.wait().await
}

async fn meetings(settings: &Settings, cmd: MeetingsCommand) -> anyhow::Result<()> {
    // Parse ids before touching the database, so a typo never needs a connection.
    match cmd {
        MeetingsCommand::Add {
            meeting_id,
            region,
            label,
        } => {
            let id = MeetingId::parse(&meeting_id)?;
            let region = match region {
                Some(r) => Region::parse(&r)?,
                None => settings.chime.region.clone(),
            };
            let store = connect(settings).await?;
            store.migrate().await.context("applying migrations")?;
            let outcome = store
                .add_meeting(&id, &region, label.as_deref(), crate::domain::now())
                .await?;
            let said = match outcome {
                AddOutcome::Added => "now tracked",
                AddOutcome::AlreadyTracked => "already tracked",
                AddOutcome::Reactivated => "tracked again",
                AddOutcome::AlreadyEnded => {
                    bail!(
                        "meeting {id} has ended (the service reported it gone); it cannot be tracked again"
                    )
                }
            };
            println!("meeting {id} ({region}) {said}");
        }
        MeetingsCommand::Remove { meeting_id } => {
            let id = MeetingId::parse(&meeting_id)?;
            let store = connect(settings).await?;
            match store.remove_meeting(&id, crate::domain::now()).await? {
                None => bail!("meeting {id} is not tracked"),
                Some(events) => println!(
                    "meeting {id} no longer tracked; {} attendee(s) closed with reason tracking_stopped",
                    events.len()
                ),
            }
        }
        MeetingsCommand::List { format } => {
            let store = connect(settings).await?;
            let list = store.list_meetings().await?;
            let mut out = std::io::stdout().lock();
            match format {
                ListFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?,
                ListFormat::Table => {
                    writeln!(
                        out,
                        "{:<36}  {:<14}  {:<7}  {:<20}  {:<8}  LABEL",
                        "MEETING", "REGION", "STATUS", "LAST POLLED", "FAILURES"
                    )?;
                    for m in list {
                        writeln!(
                            out,
                            "{:<36}  {:<14}  {:<7}  {:<20}  {:<8}  {}",
                            m.meeting_id,
                            m.region,
                            m.status.as_str(),
                            m.last_polled_at
                                .map(crate::report::timestamp)
                                .unwrap_or_else(|| "-".into()),
                            m.consecutive_failures,
                            m.label.unwrap_or_default()
                        )?;
                    }
                }
            }
        }
    }
    Ok(())
}

async fn report(settings: &Settings, args: ReportArgs) -> anyhow::Result<()> {
    let id = MeetingId::parse(&args.meeting_id)?;
    let store = connect(settings).await?;
    let Some(meeting) = store.get_meeting(&id).await? else {
        bail!("meeting {id} is not tracked");
    };
    let sessions = store.sessions(&id).await?;
    let attendance = store.attendance(&id).await?;
    let mut out = std::io::stdout().lock();
    match args.format {
        ReportFormat::Json => {
            let doc = serde_json::json!({ "meeting": meeting, "sessions": sessions, "attendance": attendance });
            writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
        }
        ReportFormat::Csv => {
            writeln!(
                out,
                "meeting_id,attendee_id,external_user_id,joined_at,left_at,left_reason,duration_seconds"
            )?;
            for s in sessions {
                writeln!(
                    out,
                    "{},{},{},{},{},{},{:.3}",
                    s.meeting_id,
                    s.attendee_id,
                    csv_field(s.external_user_id.as_str()),
                    s.joined_at.to_rfc3339(),
                    s.left_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
                    s.left_reason.map(|r| r.as_str()).unwrap_or_default(),
                    s.duration_seconds
                )?;
            }
        }
        ReportFormat::Table => crate::report::write_table(&mut out, &meeting, &attendance)?,
    }
    Ok(())
}

/// RFC 4180 quoting: ExternalUserIds may hold commas, quotes and spaces.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) || s.starts_with(' ') || s.ends_with(' ') {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_field_quotes_commas_and_quotes() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
