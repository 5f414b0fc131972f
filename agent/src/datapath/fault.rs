//! Test-only fault injection for the reload sequence. NOT a user setting.
//!
//! The root suite proves that a reload killed at any step leaves nothing a restarted
//! agent does not repair (tests/reliability.rs, `reload_killed_at_every_step_...`).
//! Killing the agent from outside cannot hit a chosen step reliably, so the agent kills
//! itself instead: with `PORTCULLIS_FAULT_AT=<n>` in its environment, the first reload
//! that reaches step `n` ends the process with SIGKILL (no unwinding, no destructors:
//! exactly what kill -9 does). The start of the agent is never interrupted; only a
//! reload arms the points. Without the variable every point is a no-op.

use std::sync::{
    OnceLock,
    atomic::{AtomicBool, Ordering},
};

/// The test-only variable: the step number at which a reload kills the agent.
pub const FAULT_ENV: &str = "PORTCULLIS_FAULT_AT";

/// The steps of a reload, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Step {
    /// Rule counters of new rule ids zeroed.
    Counters = 1,
    /// Half of the idle generation's port table written.
    PortsHalf = 2,
    /// The idle generation's port table written.
    Ports = 3,
    /// The idle generation's peer entries removed.
    PeersCleared = 4,
    /// Half of the new peer entries written.
    PeersHalf = 5,
    /// Every new peer entry written.
    Peers = 6,
    /// The configuration written: the new generation is live.
    Flip = 7,
    /// The old generation's peer entries removed.
    Cleanup = 8,
    /// Links reconciled, the state file not yet written.
    Attached = 9,
}

static ARMED: AtomicBool = AtomicBool::new(false);

fn target() -> Option<u8> {
    static AT: OnceLock<Option<u8>> = OnceLock::new();
    *AT.get_or_init(|| std::env::var(FAULT_ENV).ok()?.parse().ok())
}

/// Arms (or disarms) the points: the daemon arms them for the length of a reload.
pub fn arm(on: bool) {
    ARMED.store(on, Ordering::SeqCst);
}

/// A point of the reload sequence: kills the process here when asked to.
pub fn point(step: Step) {
    if ARMED.load(Ordering::SeqCst) && target() == Some(step as u8) {
        log::warn!("{FAULT_ENV}={}: killing the agent at {step:?}", step as u8);
        // SAFETY: raising SIGKILL on ourselves.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}
