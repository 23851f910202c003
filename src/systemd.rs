//! systemd's service notifications (`Type=notify`): `READY=1` once the daemon can do its job,
//! `STOPPING=1` when it begins to stop, `STATUS=` lines saying what it is doing, and
//! `WATCHDOG=1` pings at half of `WATCHDOG_USEC` while the daemon is live.
//!
//! Everything here does nothing when `NOTIFY_SOCKET` is unset (not under systemd, or under
//! Kubernetes). A notification that cannot be sent is logged at debug level and otherwise
//! ignored: the service manager's view is never a reason to stop polling. It only reports; it
//! decides nothing about the daemon.

use std::time::Duration;

use sd_notify::NotifyState;

/// Sends notifications to the service manager named by `NOTIFY_SOCKET`.
#[derive(Debug, Clone)]
pub struct Notifier {
    enabled: bool,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` (the watchdog is ours when
    /// `WATCHDOG_PID` is unset or names this process).
    pub fn from_env() -> Self {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty());
        let usec = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|&u| u > 0);
        let ours = std::env::var("WATCHDOG_PID")
            .ok()
            .is_none_or(|p| p.parse::<u32>().ok() == Some(std::process::id()));
        Self {
            enabled,
            watchdog: usec.filter(|_| enabled && ours).map(Duration::from_micros),
        }
    }

    /// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC`, as sd_watchdog_enabled(3)
    /// recommends. `None` when systemd runs no watchdog for us.
    pub fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }

    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    pub fn status(&self, status: &str) {
        self.send(&[NotifyState::Status(status)]);
    }

    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(false, states) {
            tracing::debug!(error = %e, "cannot notify the service manager");
        }
    }
}
