//! `roster-sync sim`: the simulator as a process, for scripts and other tools.

use super::*;

/// `roster-sync sim`: the simulator as a process.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Requests per second allowed per operation (`inf`: never throttle).
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Requests per operation that may arrive at once.
    #[arg(long, default_value_t = 20)]
    pub burst: u32,
    /// Fraction (0.0 to 1.0) of requests answered with a random 500 or 503.
    #[arg(long, default_value_t = 0.0)]
    pub fault_rate: f64,
    /// Delay before answering each request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Seed for ids, join tokens and faults (default: random).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Never throttle or fault the mutating operations (create, update, delete).
    #[arg(long)]
    pub exempt_control: bool,
    /// Attendees per meeting before CreateAttendee answers LimitExceeded.
    #[arg(long, default_value_t = 250)]
    pub max_attendees: usize,
    /// What a ListAttendees NextToken remembers: the last attendee returned (keyset), or a
    /// position in the live list (offset: a deletion between pages skips an attendee).
    #[arg(long, value_enum, default_value_t = Paging::Keyset)]
    pub paging: Paging,
    /// Emit Chime meeting lifecycle events to this queue of the simulator's SQS side
    /// (created at start; its URL is `<endpoint>/123456789012/NAME`). Off when absent.
    #[arg(long, value_name = "NAME")]
    pub events_queue: Option<String>,
    /// How events reach the queue: the EventBridge event JSON, or wrapped in an SNS
    /// notification.
    #[arg(long, value_enum, default_value_t = events::EventsFormat::Eventbridge, requires = "events_queue")]
    pub events_format: events::EventsFormat,
    /// Probability (0.0 to 1.0) that an event is lost.
    #[arg(long, default_value_t = 0.0, requires = "events_queue")]
    pub event_loss: f64,
    /// Probability (0.0 to 1.0) that an event is delivered twice.
    #[arg(long, default_value_t = 0.0, requires = "events_queue")]
    pub event_dup: f64,
    /// Each event copy is held back a random delay up to this many milliseconds (so events
    /// overtake each other).
    #[arg(long, default_value_t = 0, requires = "events_queue")]
    pub event_delay_ms: u64,
}

impl From<&SimArgs> for SimConfig {
    fn from(a: &SimArgs) -> Self {
        Self {
            rate: a.rate,
            burst: a.burst,
            fault_rate: a.fault_rate,
            latency: Duration::from_millis(a.latency_ms),
            seed: a.seed,
            exempt_control: a.exempt_control,
            max_attendees: a.max_attendees,
            paging: a.paging,
            events: a.events_queue.as_ref().map(|queue| events::EventsConfig {
                queue: queue.clone(),
                format: a.events_format,
                faults: events::EventFaults {
                    loss: a.event_loss,
                    duplicate: a.event_dup,
                    max_delay: Duration::from_millis(a.event_delay_ms),
                },
            }),
        }
    }
}

/// Starts the simulator, prints its endpoint URL (`http://127.0.0.1:PORT`, nothing else) as
/// the first line on stdout for scripts to read, and serves until SIGINT or SIGTERM.
///
/// # Errors
/// Invalid arguments, a failed bind, a closed stdout, or a failed signal handler.
pub async fn run_cli(args: SimArgs) -> anyhow::Result<()> {
    let handle = start(args.listen, SimConfig::from(&args))
        .await
        .with_context(|| format!("starting the Chime simulator on {}", args.listen))?;
    if let Some(q) = &args.events_queue {
        let url = handle.queue_url(q).unwrap_or_default();
        tracing::info!(queue_url = %url, "chime simulator emitting meeting events");
    }
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", handle.endpoint_url()).context("writing the endpoint to stdout")?;
        out.flush().context("flushing stdout")?;
    }
    shutdown_signal().await?;
    tracing::info!("chime simulator shutting down");
    handle
        .shutdown()
        .await
        .context("stopping the Chime simulator")
}

async fn shutdown_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}
