//! systemd's service notification protocol (sd_notify) through the `sd-notify` crate:
//! datagrams of `KEY=VALUE` lines to the socket named by `NOTIFY_SOCKET`. Outside
//! systemd (no `NOTIFY_SOCKET`) every call does nothing.
//!
//! The agent sends READY=1 only once the programs are attached, RELOADING=1 (with
//! MONOTONIC_USEC) and READY=1 around a reload, STOPPING=1 on the way out, STATUS= lines
//! that `systemctl status` shows, and WATCHDOG=1 at half the `WATCHDOG_USEC` interval.

use std::time::Duration;

use sd_notify::NotifyState;

/// The service manager's notification settings, read once at start.
pub struct Notifier {
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from the environment.
    pub fn from_env() -> Self {
        // sd-notify connects to the name as a path. systemd has named a path since v212;
        // an abstract name (`@...`) would fail on every send, so say so once.
        if std::env::var_os("NOTIFY_SOCKET").is_some_and(|n| n.as_encoded_bytes().starts_with(b"@"))
        {
            log::warn!(
                "NOTIFY_SOCKET names an abstract socket, which is not supported: no notifications"
            );
        }
        // Pinging at half the interval leaves systemd a whole half of slack.
        let watchdog = sd_notify::watchdog_enabled()
            .filter(|d| !d.is_zero())
            .map(|d| d / 2);
        Self { watchdog }
    }

    /// How often to send WATCHDOG=1, if the service manager asked for it.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends one notification: newline-separated assignments, passed through as they are.
    pub fn send(&self, message: &str) {
        self.notify(&[NotifyState::Custom(message)]);
    }

    /// RELOADING=1 with the CLOCK_MONOTONIC time systemd requires since v253.
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.notify(&[NotifyState::Reloading, now]),
            Err(e) => log::warn!("reading CLOCK_MONOTONIC for RELOADING=1: {e}"),
        }
    }

    fn notify(&self, states: &[NotifyState]) {
        if let Err(e) = sd_notify::notify(states) {
            log::warn!("notifying the service manager: {e}");
        }
    }
}
