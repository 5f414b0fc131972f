//! systemd's service notification protocol (sd_notify), without libsystemd: datagrams
//! of `KEY=VALUE` lines to the socket named by `NOTIFY_SOCKET` (a path, or an abstract
//! name starting with `@`). Outside systemd (no `NOTIFY_SOCKET`) every call does nothing.
//!
//! The agent sends READY=1 only once the programs are attached, RELOADING=1 (with
//! MONOTONIC_USEC) and READY=1 around a reload, STOPPING=1 on the way out, STATUS= lines
//! that `systemctl status` shows, and WATCHDOG=1 at half the `WATCHDOG_USEC` interval.

use std::{
    os::{
        linux::net::SocketAddrExt as _,
        unix::net::{SocketAddr, UnixDatagram},
    },
    time::Duration,
};

/// A connection to the service manager, or nothing.
pub struct Notifier {
    socket: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from the environment.
    pub fn from_env() -> Self {
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|name| {
            let name = name.to_string_lossy().into_owned();
            let addr = match name.strip_prefix('@') {
                Some(abstract_name) => {
                    SocketAddr::from_abstract_name(abstract_name.as_bytes()).ok()?
                }
                None => SocketAddr::from_pathname(&name).ok()?,
            };
            match UnixDatagram::unbound() {
                Ok(s) => Some((s, addr)),
                Err(e) => {
                    log::warn!("NOTIFY_SOCKET is set but no socket could be made: {e}");
                    None
                }
            }
        });
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|pid| pid == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|&u| u > 0 && for_us)
            .map(|u| Duration::from_micros(u / 2));
        Self { socket, watchdog }
    }

    /// How often to send WATCHDOG=1, if the service manager asked for it.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends one notification (newline-separated assignments).
    pub fn send(&self, message: &str) {
        if let Some((socket, addr)) = &self.socket
            && let Err(e) = socket.send_to_addr(message.as_bytes(), addr)
        {
            log::warn!("notifying the service manager: {e}");
        }
    }

    /// RELOADING=1 with the CLOCK_MONOTONIC time systemd requires since v253.
    pub fn reloading(&self) {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec to write into.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        let usec = ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000;
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
    }
}
