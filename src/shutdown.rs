//! Shutdown: the one [`CancellationToken`] a process stops by, and the signals that cancel it.
//!
//! SIGTERM (systemd, Kubernetes) and SIGINT (Ctrl-C) both cancel the token; every loop selects
//! on `cancelled()` and winds down (the scheduler drains in-flight polls under
//! `shutdown.grace`). Nothing else here: this module must never import a command (`cli`,
//! `demo`), so that every command can import it.

use tokio_util::sync::CancellationToken;

/// A fresh token that SIGTERM and SIGINT will cancel. Call inside a tokio runtime.
pub fn on_signals() -> CancellationToken {
    let cancel = CancellationToken::new();
    cancel_on_signals(cancel.clone());
    cancel
}

/// Spawns a task that cancels `cancel` on the first SIGTERM or SIGINT (Ctrl-C elsewhere than
/// Unix), and ends when `cancel` is cancelled some other way.
pub fn cancel_on_signals(cancel: CancellationToken) {
    tokio::spawn(async move {
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = signal() => cancel.cancel(),
        }
    });
}

/// Resolves on the first SIGTERM or SIGINT, logging which.
async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received; stopping"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; stopping"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
