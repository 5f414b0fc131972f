//! Deny events, from the ring buffer to the operator: each event becomes a line of the
//! deny log (`observe::denylog`, rate-limited) and a count in the deny aggregate
//! (`observe::aggregate`, persisted for `portcullis report`).
//!
//! When stderr is the journal (systemd sets `JOURNAL_STREAM`), each line starts with a
//! syslog priority prefix that journald turns into the entry's priority: `<4>` (warning)
//! for a deny, `<5>` (notice) for a would-deny and for the suppression summary. On a
//! terminal the prefix would only be noise, so it is left out.

use std::{
    io::Write as _,
    path::PathBuf,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use portcullis_common::event::DenyEvent;

use super::{
    aggregate::{Aggregate, DenyFile, denies_file, unix_now},
    cgroups::CgroupNames,
    denylog::{RateLimiter, format_line},
    evidence::FlowTracker,
};
use crate::datapath::{evidence::EvidenceMap, paths::PathArgs};

/// Turns deny events into log lines and the persisted aggregate. See the module docs.
///
/// The daemon calls [`EventLog::record`] for each event read from the ring buffer and
/// [`EventLog::flush`] every few seconds and at shutdown (flush also writes the
/// suppression summary of a quiet period, which would otherwise wait for the next event).
pub struct EventLog {
    path: PathBuf,
    limiter: RateLimiter,
    cgroups: CgroupNames,
    agg: Aggregate,
    flows: FlowTracker,
    journal: bool,
    /// Wall clock minus monotonic clock, in ns: turns an event's `bpf_ktime_get_ns()`
    /// into wall-clock time.
    boot_offset_ns: i128,
    dirty: bool,
}

/// CLOCK_MONOTONIC in ns (the clock `bpf_ktime_get_ns` reads).
fn monotonic_ns() -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

impl EventLog {
    /// A log writing at most `lines_per_sec` deny lines per second, aggregating into
    /// `<state_dir>/denies.json`. An existing, readable aggregate is continued (a restart
    /// keeps the history); an unreadable one is logged and replaced.
    pub fn new(paths: &PathArgs, lines_per_sec: u32) -> Self {
        let path = denies_file(paths);
        let now = unix_now();
        // An unreadable file (or one of another format) is replaced at the first flush.
        let (agg, replace) = match DenyFile::read(&path) {
            Ok(Some(f)) => (Aggregate::from_file(f), false),
            Ok(None) => (Aggregate::new(now, 0), false),
            Err(e) => {
                log::warn!("starting a new deny aggregate: {e:#}");
                (Aggregate::new(now, 0), true)
            }
        };
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        Self {
            path,
            limiter: RateLimiter::new(lines_per_sec),
            cgroups: CgroupNames::new(),
            agg,
            flows: FlowTracker::resume(&flows_file(paths)),
            journal: std::env::var_os("JOURNAL_STREAM").is_some(),
            boot_offset_ns: wall - monotonic_ns(),
            dirty: replace,
        }
    }

    /// Unix seconds of a kernel time (`bpf_ktime_get_ns`).
    fn to_unix(&self, ns: u64) -> u64 {
        ((i128::from(ns) + self.boot_offset_ns) / 1_000_000_000).max(0) as u64
    }

    /// Logs (within the rate limit) and aggregates one event.
    pub fn record(&mut self, e: &DenyEvent) {
        let when = self.to_unix(e.time_ns);
        self.agg.record(e, when);
        self.dirty = true;
        let (admit, summary) = self.limiter.admit(Instant::now());
        if let Some(s) = summary {
            self.write(5, &s);
        }
        if admit {
            let line = format_line(e, self.cgroups.resolve(e.cgroup_id));
            self.write(if e.dropped == 1 { 4 } else { 5 }, &line);
        }
    }

    /// Writes a due suppression summary, folds the kernel's per-flow evidence (and
    /// deletes the flows done with), and, if anything changed, writes `denies.json`.
    pub fn flush(&mut self, evidence: Option<&mut EvidenceMap>) -> anyhow::Result<()> {
        if let Some(s) = self.limiter.summary(Instant::now()) {
            self.write(5, &s);
        }
        // A `report --reset` since our last look: start over from its time.
        if let Ok(Some(on_disk)) = DenyFile::read(&self.path)
            && on_disk.reset_at > self.agg.reset_at
        {
            self.agg = Aggregate::new(on_disk.reset_at, on_disk.reset_at);
            self.flows.clear();
            self.dirty = true;
        }
        if let Some(map) = evidence {
            let (deltas, done) = self.flows.fold(&map.read(), monotonic_ns().max(0) as u64);
            let offset = self.boot_offset_ns;
            let to_unix = |ns: u64| ((i128::from(ns) + offset) / 1_000_000_000).max(0) as u64;
            for d in &deltas {
                self.agg.fold(d, to_unix);
            }
            self.dirty |= !deltas.is_empty();
            map.remove(&done);
        }
        if !self.dirty {
            return Ok(());
        }
        self.agg.to_file(unix_now()).write(&self.path)?;
        self.dirty = false;
        Ok(())
    }

    /// At a clean stop, after the last [`EventLog::flush`]: saves what was folded of
    /// each flow still in the kernel map, so the next agent counts the flows of the
    /// downtime (`FlowTracker::resume`).
    pub fn save_flows(&self, paths: &PathArgs) {
        if let Err(e) = self.flows.save(&flows_file(paths)) {
            log::warn!("saving the folded flow evidence: {e:#}");
        }
    }

    fn write(&self, priority: u8, line: &str) {
        let mut err = std::io::stderr().lock();
        let _ = if self.journal {
            writeln!(err, "<{priority}>{line}")
        } else {
            writeln!(err, "{line}")
        };
    }
}

/// `<state_dir>/flows.json`: the folded flows a cleanly stopped agent leaves its successor.
fn flows_file(paths: &PathArgs) -> PathBuf {
    paths.state_dir.join("flows.json")
}

#[cfg(test)]
pub(crate) mod tests {
    use portcullis_common::{
        event::hook,
        policy::{DIR_IN, v4_mapped},
        stats::reason,
    };

    use super::*;

    /// A deny event of a TCP flow to or from `peer`.
    pub(crate) fn event(
        direction: u8,
        port: u16,
        peer: [u8; 4],
        comm_name: &str,
        dropped: u8,
    ) -> DenyEvent {
        let mut comm = [0u8; 16];
        comm[..comm_name.len()].copy_from_slice(comm_name.as_bytes());
        DenyEvent {
            time_ns: 0,
            cgroup_id: 42,
            pid: if comm_name.is_empty() { 0 } else { 77 },
            _pad0: 0,
            comm,
            local: v4_mapped([198, 18, 0, 1]),
            remote: v4_mapped(peer),
            local_port: if direction == DIR_IN { port } else { 40000 },
            remote_port: if direction == DIR_IN { 40000 } else { port },
            protocol: 6,
            direction,
            reason: reason::NO_RULE as u8,
            hook: hook::CONNECT,
            dropped,
            _pad1: [0; 7],
        }
    }
}
