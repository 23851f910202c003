//! Shutdown: the one [`CancellationToken`] a process stops by, and the signals that cancel it.
//!
//! The first SIGTERM (systemd, Kubernetes) or SIGINT (Ctrl-C) cancels the token; every loop
//! selects on `cancelled()` and winds down: the scheduler launches nothing new, cancels every
//! fetch and rate-budget wait at once and lets only the transactions already writing finish,
//! under `shutdown.grace`. A second signal means the operator will not wait: the process exits
//! at once with [`SECOND_SIGNAL_EXIT_CODE`]. Nothing else here: this module must never import
//! a command (`cli`, `demo`), so that every command can import it.

use tokio_util::sync::CancellationToken;

/// The exit status after a second SIGTERM or SIGINT (128 + SIGINT, what a shell reports for
/// an interrupted command).
pub const SECOND_SIGNAL_EXIT_CODE: i32 = 130;

/// A fresh token that SIGTERM and SIGINT will cancel. Call inside a tokio runtime.
pub fn on_signals() -> CancellationToken {
    let cancel = CancellationToken::new();
    cancel_on_signals(cancel.clone());
    cancel
}

/// Spawns a task that cancels `cancel` on the first SIGTERM or SIGINT (Ctrl-C elsewhere than
/// Unix) and exits the process at once on the second. If `cancel` is cancelled some other way
/// first, the task ends.
pub fn cancel_on_signals(cancel: CancellationToken) {
    tokio::spawn(async move {
        let mut signals = Signals::new();
        tokio::select! {
            _ = cancel.cancelled() => return,
            name = signals.next() => {
                tracing::info!(signal = name, "stopping (a second signal exits at once)");
                cancel.cancel();
            }
        }
        let name = signals.next().await;
        tracing::warn!(
            signal = name,
            "second signal: exiting at once; polls in flight are abandoned (nothing of theirs is recorded)"
        );
        std::process::exit(SECOND_SIGNAL_EXIT_CODE);
    });
}

/// The signal streams, registered once, so that a signal arriving between the first and the
/// second wait is not missed.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let listen = |kind, name: &str| match signal(kind) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, signal = name, "cannot listen for this signal");
                    None
                }
            };
            Self {
                term: listen(SignalKind::terminate(), "SIGTERM"),
                int: listen(SignalKind::interrupt(), "SIGINT"),
            }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    /// Resolves on the next SIGTERM or SIGINT with its name.
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                () = recv(&mut self.term) => "SIGTERM",
                () = recv(&mut self.int) => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}
