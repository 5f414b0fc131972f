//! Deny events, from the ring buffer to the operator: one structured log line per event
//! and a bounded aggregate of what was denied, persisted for `portcullis report`.
//!
//! The kernel already rate-limits the ring buffer per CPU (`events_per_sec`); the log
//! has its own limit on top ([`EventLog::new`]'s `lines_per_sec`), because a flood of
//! denied packets must not flood the journal either. Lines over the limit are counted
//! and replaced by one `suppressed K deny log lines` line. The aggregate is not
//! rate-limited by userspace: every event that reached the agent counts.
//!
//! Log lines are `key=value` pairs (values with spaces or quotes are double-quoted), on
//! stderr. When stderr is the journal (systemd sets `JOURNAL_STREAM`), each line starts
//! with a syslog priority prefix that journald turns into the entry's priority: `<4>`
//! (warning) for a deny, `<5>` (notice) for a would-deny and for the suppression summary.
//! On a terminal the prefix would only be noise, so it is left out.
//!
//! The aggregate groups events by (direction, protocol, port) — the same key as the
//! kernel's denied-port table — with the first and last time seen, the top remote peers
//! and the top processes. It is written to `<state_dir>/denies.json` by
//! [`EventLog::flush`] (temp file + rename, so a reader never sees half a file) and is
//! bounded: at most [`MAX_PORTS`] keys (the least recently seen key is evicted) and
//! [`MAX_TRACKED`] peers and processes per key, kept with the Space-Saving algorithm so
//! the heavy hitters survive whatever the number of distinct peers.

use std::{
    borrow::Cow,
    collections::{BTreeMap, HashMap},
    fs,
    io::Write as _,
    net::IpAddr,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use portcullis_common::{
    event::{DenyEvent, hook},
    stats::reason,
};
use serde::{Deserialize, Serialize};

use crate::{
    datapath::paths::{self, PathArgs},
    model::{Direction, IpProtocol},
};

/// Keys (direction, protocol, port) the aggregate keeps.
pub const MAX_PORTS: usize = 1024;
/// Peers and processes tracked per key (Space-Saving counters).
pub const MAX_TRACKED: usize = 32;
/// Peers and processes written per key to `denies.json`.
pub const TOP: usize = 5;
/// Version of the `denies.json` format.
pub const FORMAT: u32 = 1;
/// The aggregate's file name in the state directory.
pub const FILE_NAME: &str = "denies.json";
/// A cgroup id the cache does not know triggers a new walk of the cgroup tree at most
/// this often (a unit that starts gets a new cgroup; a storm of events from a cgroup
/// that is already gone must not turn into a storm of directory walks).
const RESCAN_INTERVAL: Duration = Duration::from_secs(10);
/// Most cgroup directories one walk visits (a runaway tree must not stall the agent).
const MAX_CGROUPS: usize = 100_000;

/// The path of the aggregate for these paths.
pub fn denies_file(paths: &PathArgs) -> PathBuf {
    paths.state_dir.join(FILE_NAME)
}

pub use crate::datapath::state::unix_now;

/// A Unix time as RFC 3339 UTC, e.g. `2026-01-31T12:00:00Z`.
pub fn rfc3339(unix: u64) -> String {
    let (days, secs) = (unix / 86_400, unix % 86_400);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// An address in the datapath's 16-byte form, IPv4-mapped addresses shown as IPv4.
pub fn event_addr(a: &[u8; 16]) -> IpAddr {
    let v6 = std::net::Ipv6Addr::from(*a);
    match v6.to_ipv4_mapped() {
        Some(v4) => v4.into(),
        None => v6.into(),
    }
}

/// The process name of an event ("" where the hook does not know it).
fn comm(e: &DenyEvent) -> String {
    String::from_utf8_lossy(e.comm.split(|b| *b == 0).next().unwrap_or_default()).into_owned()
}

/// A log value: bare when it is one plain word, else double-quoted with `"` and `\`
/// escaped, so a line always splits back into the same pairs.
fn quote(v: &str) -> Cow<'_, str> {
    let plain = !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '=' && c != '\\');
    if plain {
        Cow::Borrowed(v)
    } else {
        let escaped: String = v
            .chars()
            .flat_map(|c| match c {
                '"' => vec!['\\', '"'],
                '\\' => vec!['\\', '\\'],
                '\n' => vec!['\\', 'n'],
                c if c.is_control() => vec!['?'],
                c => vec![c],
            })
            .collect();
        Cow::Owned(format!("\"{escaped}\""))
    }
}

/// Where an event's cgroup is, when the cgroup tree knows its id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupName {
    /// Path relative to the cgroup v2 mount ("/" for the root).
    pub path: String,
    /// The innermost systemd unit (`*.service` or `*.scope`) on the path, if any.
    pub unit: Option<String>,
}

impl CgroupName {
    fn from_relative(path: &str) -> Self {
        let unit = path
            .rsplit('/')
            .find(|c| c.ends_with(".service") || c.ends_with(".scope"))
            .map(str::to_owned);
        let path = if path.is_empty() {
            "/".to_owned()
        } else {
            path.to_owned()
        };
        Self { path, unit }
    }
}

fn format_line(e: &DenyEvent, cgroup: Option<&CgroupName>) -> String {
    use std::fmt::Write as _;
    let direction = Direction::from_code(e.direction);
    let (src, sport, dst, dport) = if direction == Direction::In {
        (
            event_addr(&e.remote),
            e.remote_port,
            event_addr(&e.local),
            e.local_port,
        )
    } else {
        (
            event_addr(&e.local),
            e.local_port,
            event_addr(&e.remote),
            e.remote_port,
        )
    };
    // Denies have no rule (a rule allows); `rule=none` keeps the field present so every
    // line has the same keys.
    let mut line = format!(
        "verdict={} rule=none direction={direction} protocol={} src={src} sport={sport} dst={dst} dport={dport} reason={} hook={} cgroup={}",
        if e.dropped == 1 { "deny" } else { "would-deny" },
        IpProtocol(e.protocol),
        reason::NAMES.get(e.reason as usize).unwrap_or(&"unknown"),
        hook::NAMES.get(e.hook as usize).unwrap_or(&"unknown"),
        e.cgroup_id,
    );
    if let Some(c) = cgroup {
        let _ = write!(line, " cgroup_path={}", quote(&c.path));
        if let Some(unit) = &c.unit {
            let _ = write!(line, " unit={}", quote(unit));
        }
    }
    if e.pid != 0 {
        let _ = write!(line, " pid={} comm={}", e.pid, quote(&comm(e)));
    }
    line
}

/// cgroup id -> path. The id of a cgroup v2 directory is its inode number, so one walk
/// of the tree fills the cache; ids it does not know trigger another walk, at most once
/// per [`RESCAN_INTERVAL`].
#[derive(Debug, Default)]
pub struct CgroupNames {
    root: Option<PathBuf>,
    by_id: HashMap<u64, CgroupName>,
    last_walk: Option<Instant>,
}

impl CgroupNames {
    /// A cache over the cgroup v2 mount (found in /proc/self/mountinfo; none: no names).
    pub fn new() -> Self {
        Self {
            root: paths::cgroup2_mount().ok(),
            ..Self::default()
        }
    }

    /// A cache over a given tree (tests).
    #[cfg(test)]
    fn at(root: &Path) -> Self {
        Self {
            root: Some(root.to_path_buf()),
            ..Self::default()
        }
    }

    /// The name of cgroup `id`, if the tree has it.
    pub fn resolve(&mut self, id: u64) -> Option<&CgroupName> {
        if id == 0 {
            return None;
        }
        if !self.by_id.contains_key(&id)
            && self
                .last_walk
                .is_none_or(|t| t.elapsed() >= RESCAN_INTERVAL)
        {
            self.walk();
        }
        self.by_id.get(&id)
    }

    fn walk(&mut self) {
        self.last_walk = Some(Instant::now());
        let Some(root) = &self.root else { return };
        let mut by_id = HashMap::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            if by_id.len() >= MAX_CGROUPS {
                break;
            }
            let Ok(meta) = fs::metadata(&dir) else {
                continue;
            };
            let rel = dir
                .strip_prefix(root)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            by_id.insert(meta.ino(), CgroupName::from_relative(&rel));
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                }
            }
        }
        self.by_id = by_id;
    }
}

/// A per-second line budget. Lines over it are counted, and the count is reported once
/// the second is over.
#[derive(Debug)]
pub struct RateLimiter {
    per_sec: u32,
    window: Option<Instant>,
    used: u32,
    suppressed: u64,
    suppressed_since: Option<Instant>,
}

impl RateLimiter {
    /// At most `per_sec` lines per second (0: no lines, everything is counted).
    pub fn new(per_sec: u32) -> Self {
        Self {
            per_sec,
            window: None,
            used: 0,
            suppressed: 0,
            suppressed_since: None,
        }
    }

    /// Whether a line may be written at `now`. Returns the suppression summary that is
    /// due first, if any.
    pub fn admit(&mut self, now: Instant) -> (bool, Option<String>) {
        let summary = self.summary(now);
        if self
            .window
            .is_none_or(|w| now.duration_since(w) >= Duration::from_secs(1))
        {
            self.window = Some(now);
            self.used = 0;
        }
        if self.used < self.per_sec {
            self.used += 1;
            (true, summary)
        } else {
            self.suppressed += 1;
            self.suppressed_since.get_or_insert(now);
            (false, summary)
        }
    }

    /// The summary line for lines suppressed in a window that is over, if any.
    pub fn summary(&mut self, now: Instant) -> Option<String> {
        let since = self.suppressed_since?;
        let window_over = self
            .window
            .is_none_or(|w| now.duration_since(w) >= Duration::from_secs(1));
        if !window_over || self.suppressed == 0 {
            return None;
        }
        let n = std::mem::take(&mut self.suppressed);
        self.suppressed_since = None;
        let secs = now.duration_since(since).as_secs().max(1);
        Some(format!(
            "suppressed {n} deny log lines in the last {secs}s (over {} lines/s; `portcullis report` has them all)",
            self.per_sec
        ))
    }
}

/// A bounded top-k counter (Space-Saving): when full, a new item replaces the smallest
/// one and inherits its count, so counts are upper bounds and every item seen more than
/// total/capacity times is kept.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopK {
    counts: BTreeMap<String, u64>,
}

impl TopK {
    /// Counts one occurrence of `item`, keeping at most `capacity` items.
    pub fn add(&mut self, item: &str, n: u64, capacity: usize) {
        if let Some(c) = self.counts.get_mut(item) {
            *c += n;
            return;
        }
        let mut base = 0;
        if self.counts.len() >= capacity {
            let smallest = self
                .counts
                .iter()
                .min_by_key(|(_, c)| **c)
                .map(|(k, c)| (k.clone(), *c));
            if let Some((k, c)) = smallest {
                self.counts.remove(&k);
                base = c;
            }
        }
        self.counts.insert(item.to_owned(), base + n);
    }

    /// The `n` largest, largest first (ties by name).
    pub fn top(&self, n: usize) -> Vec<Seen> {
        let mut v: Vec<Seen> = self
            .counts
            .iter()
            .map(|(k, c)| Seen {
                name: k.clone(),
                events: *c,
            })
            .collect();
        v.sort_by(|a, b| b.events.cmp(&a.events).then_with(|| a.name.cmp(&b.name)));
        v.truncate(n);
        v
    }
}

/// A peer or a process and how many events named it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// Address or process name.
    pub name: String,
    /// Events (an upper bound once more than [`MAX_TRACKED`] distinct ones were seen).
    pub events: u64,
}

/// The aggregate of one (direction, protocol, port).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct PortStats {
    denies: u64,
    would_denies: u64,
    first_seen: u64,
    last_seen: u64,
    reasons: BTreeMap<&'static str, u64>,
    peers: TopK,
    processes: TopK,
}

/// One (direction, protocol, port) of `denies.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRecord {
    /// in | out.
    pub direction: Direction,
    /// tcp | udp | icmp | icmpv6 | the protocol number.
    pub protocol: IpProtocol,
    /// Local port (in) or remote port (out); 0 for protocols without ports.
    pub port: u16,
    /// Deny events (enforce mode).
    pub denies: u64,
    /// Would-deny events (audit mode).
    pub would_denies: u64,
    /// Unix time of the first event.
    pub first_seen: u64,
    /// Unix time of the last event.
    pub last_seen: u64,
    /// Events by reason (`no-rule`, `peer`, `state`, ...).
    pub reasons: BTreeMap<String, u64>,
    /// Top remote peers.
    pub peers: Vec<Seen>,
    /// Top processes (only connect() events know the process).
    pub processes: Vec<Seen>,
}

/// The whole `denies.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DenyFile {
    /// [`FORMAT`].
    pub format: u32,
    /// Unix time the counting started (agent start or the last `report --reset`).
    pub since: u64,
    /// Unix time of the last `report --reset` (0: never). A running agent that sees a
    /// newer one than it knows drops its aggregate.
    pub reset_at: u64,
    /// Unix time of this write.
    pub updated_at: u64,
    /// Keys evicted because more than [`MAX_PORTS`] were seen.
    pub evicted: u64,
    /// Per (direction, protocol, port), most recently seen first.
    pub ports: Vec<PortRecord>,
}

impl DenyFile {
    /// An empty aggregate starting at `now`.
    pub fn empty(now: u64, reset_at: u64) -> Self {
        Self {
            format: FORMAT,
            since: now,
            reset_at,
            updated_at: now,
            evicted: 0,
            ports: Vec::new(),
        }
    }

    /// Reads `denies.json`; `Ok(None)` when there is none.
    pub fn read(path: &Path) -> anyhow::Result<Option<Self>> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading \"{}\"", path.display())),
        };
        let file: DenyFile = serde_json::from_str(&text)
            .with_context(|| format!("parsing \"{}\"", path.display()))?;
        anyhow::ensure!(
            file.format == FORMAT,
            "\"{}\" has format {}, this agent reads {FORMAT}",
            path.display(),
            file.format
        );
        Ok(Some(file))
    }

    /// Writes atomically (temp file + rename in the same directory).
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        crate::datapath::state::write_json_atomically(path, self)
    }
}

/// The aggregate in memory.
#[derive(Debug)]
struct Aggregate {
    since: u64,
    reset_at: u64,
    evicted: u64,
    ports: HashMap<(Direction, u8, u16), PortStats>,
}

impl Aggregate {
    fn new(since: u64, reset_at: u64) -> Self {
        Self {
            since,
            reset_at,
            evicted: 0,
            ports: HashMap::new(),
        }
    }

    /// Picks up where a previous agent left off, so a restart keeps the audit history.
    fn from_file(f: DenyFile) -> Self {
        let mut agg = Self::new(f.since, f.reset_at);
        agg.evicted = f.evicted;
        for p in f.ports.into_iter().take(MAX_PORTS) {
            let proto = p.protocol.0;
            let mut s = PortStats {
                denies: p.denies,
                would_denies: p.would_denies,
                first_seen: p.first_seen,
                last_seen: p.last_seen,
                ..PortStats::default()
            };
            for (r, n) in p.reasons {
                if let Some(name) = reason::NAMES.iter().find(|n| **n == r) {
                    s.reasons.insert(name, n);
                }
            }
            for x in p.peers {
                s.peers.add(&x.name, x.events, MAX_TRACKED);
            }
            for x in p.processes {
                s.processes.add(&x.name, x.events, MAX_TRACKED);
            }
            agg.ports.insert((p.direction, proto, p.port), s);
        }
        agg
    }

    fn record(&mut self, e: &DenyEvent, when: u64) {
        let direction = Direction::from_code(e.direction);
        let port = if direction == Direction::In {
            e.local_port
        } else {
            e.remote_port
        };
        let key = (direction, e.protocol, port);
        if !self.ports.contains_key(&key)
            && self.ports.len() >= MAX_PORTS
            && let Some(oldest) = self
                .ports
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| *k)
        {
            self.ports.remove(&oldest);
            self.evicted += 1;
        }
        let s = self.ports.entry(key).or_insert_with(|| PortStats {
            first_seen: when,
            ..PortStats::default()
        });
        if e.dropped == 1 {
            s.denies += 1;
        } else {
            s.would_denies += 1;
        }
        s.first_seen = s.first_seen.min(when);
        s.last_seen = s.last_seen.max(when);
        *s.reasons
            .entry(
                reason::NAMES
                    .get(e.reason as usize)
                    .copied()
                    .unwrap_or("unknown"),
            )
            .or_default() += 1;
        s.peers
            .add(&event_addr(&e.remote).to_string(), 1, MAX_TRACKED);
        let name = comm(e);
        if !name.is_empty() {
            s.processes.add(&name, 1, MAX_TRACKED);
        }
    }

    fn to_file(&self, now: u64) -> DenyFile {
        let mut ports: Vec<PortRecord> = self
            .ports
            .iter()
            .map(|((direction, proto, port), s)| PortRecord {
                direction: *direction,
                protocol: IpProtocol(*proto),
                port: *port,
                denies: s.denies,
                would_denies: s.would_denies,
                first_seen: s.first_seen,
                last_seen: s.last_seen,
                reasons: s
                    .reasons
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), *v))
                    .collect(),
                peers: s.peers.top(TOP),
                processes: s.processes.top(TOP),
            })
            .collect();
        ports.sort_by(|a, b| {
            b.last_seen.cmp(&a.last_seen).then_with(|| {
                (a.direction, &a.protocol, a.port).cmp(&(b.direction, &b.protocol, b.port))
            })
        });
        DenyFile {
            format: FORMAT,
            since: self.since,
            reset_at: self.reset_at,
            updated_at: now,
            evicted: self.evicted,
            ports,
        }
    }
}

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
        let agg = match DenyFile::read(&path) {
            Ok(Some(f)) => Aggregate::from_file(f),
            Ok(None) => Aggregate::new(now, 0),
            Err(e) => {
                log::warn!("starting a new deny aggregate: {e:#}");
                Aggregate::new(now, 0)
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
            journal: std::env::var_os("JOURNAL_STREAM").is_some(),
            boot_offset_ns: wall - monotonic_ns(),
            dirty: false,
        }
    }

    /// Logs (within the rate limit) and aggregates one event.
    pub fn record(&mut self, e: &DenyEvent) {
        let when = ((i128::from(e.time_ns) + self.boot_offset_ns) / 1_000_000_000).max(0) as u64;
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

    /// Writes a due suppression summary and, if anything changed, `denies.json`.
    pub fn flush(&mut self) -> anyhow::Result<()> {
        if let Some(s) = self.limiter.summary(Instant::now()) {
            self.write(5, &s);
        }
        // A `report --reset` since our last look: start over from its time.
        if let Ok(Some(on_disk)) = DenyFile::read(&self.path)
            && on_disk.reset_at > self.agg.reset_at
        {
            self.agg = Aggregate::new(on_disk.reset_at, on_disk.reset_at);
            self.dirty = true;
        }
        if !self.dirty {
            return Ok(());
        }
        self.agg.to_file(unix_now()).write(&self.path)?;
        self.dirty = false;
        Ok(())
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

#[cfg(test)]
mod tests {
    use portcullis_common::policy::{DIR_IN, DIR_OUT, v4_mapped};

    use super::*;

    fn event(direction: u8, port: u16, peer: [u8; 4], comm_name: &str, dropped: u8) -> DenyEvent {
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

    #[test]
    fn line_is_key_value_with_src_and_dst_by_direction() {
        let out = format_line(&event(DIR_OUT, 8081, [198, 18, 0, 2], "curl", 1), None);
        assert_eq!(
            out,
            "verdict=deny rule=none direction=out protocol=tcp src=198.18.0.1 sport=40000 dst=198.18.0.2 dport=8081 \
             reason=no-rule hook=connect cgroup=42 pid=77 comm=curl"
        );
        let inbound = format_line(&event(DIR_IN, 25, [203, 0, 113, 9], "", 0), None);
        assert!(inbound.starts_with("verdict=would-deny rule=none direction=in protocol=tcp src=203.0.113.9 sport=40000 dst=198.18.0.1 dport=25 "), "{inbound}");
        assert!(
            !inbound.contains("pid="),
            "no pid where the hook does not know it: {inbound}"
        );
        let named = format_line(
            &event(DIR_OUT, 53, [192, 0, 2, 53], "my proc", 1),
            Some(&CgroupName::from_relative("system.slice/xeams.service")),
        );
        assert!(named.ends_with("cgroup=42 cgroup_path=system.slice/xeams.service unit=xeams.service pid=77 comm=\"my proc\""), "{named}");
    }

    #[test]
    fn quoting_keeps_pairs_splittable() {
        assert_eq!(quote("curl"), "curl");
        assert_eq!(quote("a b"), "\"a b\"");
        assert_eq!(quote("x\"y\\"), "\"x\\\"y\\\\\"");
        assert_eq!(quote(""), "\"\"");
        assert_eq!(quote("k=v"), "\"k=v\"");
    }

    #[test]
    fn cgroup_ids_resolve_to_paths_and_units() {
        let dir = std::env::temp_dir().join(format!("portcullis-cg-{}", std::process::id()));
        let unit = dir.join("system.slice/xeams.service");
        fs::create_dir_all(&unit).unwrap();
        let ino = fs::metadata(&unit).unwrap().ino();
        let mut names = CgroupNames::at(&dir);
        let got = names.resolve(ino).cloned().unwrap();
        assert_eq!(
            got,
            CgroupName {
                path: "system.slice/xeams.service".into(),
                unit: Some("xeams.service".into())
            }
        );
        let root = fs::metadata(&dir).unwrap().ino();
        assert_eq!(names.resolve(root).unwrap().path, "/");
        assert_eq!(names.resolve(0), None);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rate_limit_suppresses_and_summarises_once_per_window() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(3);
        let admitted = (0..10).filter(|_| rl.admit(t0).0).count();
        assert_eq!(admitted, 3);
        assert_eq!(
            rl.summary(t0 + Duration::from_millis(500)),
            None,
            "no summary inside the window"
        );
        let (ok, summary) = rl.admit(t0 + Duration::from_millis(1100));
        assert!(ok, "a new second has a new budget");
        let summary = summary.expect("the summary comes with the next line");
        assert!(
            summary.starts_with("suppressed 7 deny log lines"),
            "{summary}"
        );
        assert_eq!(
            rl.summary(t0 + Duration::from_secs(5)),
            None,
            "reported once"
        );
        // A quiet period: flush reports it without a new event.
        for _ in 0..5 {
            rl.admit(t0 + Duration::from_millis(1200));
        }
        assert!(
            rl.summary(t0 + Duration::from_millis(2200))
                .is_some_and(|s| s.starts_with("suppressed 3 "))
        );
        let mut none = RateLimiter::new(0);
        assert!(!none.admit(t0).0, "0 lines per second writes nothing");
    }

    #[test]
    fn aggregate_groups_by_port_with_top_peers_and_processes() {
        let mut agg = Aggregate::new(100, 0);
        for i in 0..10u8 {
            agg.record(
                &event(
                    DIR_OUT,
                    8081,
                    [198, 18, 0, 2 + i % 2],
                    if i < 7 { "curl" } else { "wget" },
                    0,
                ),
                1000 + u64::from(i),
            );
        }
        agg.record(&event(DIR_IN, 25, [203, 0, 113, 9], "", 1), 2000);
        let file = agg.to_file(3000);
        assert_eq!(file.ports.len(), 2);
        assert_eq!(
            (
                file.ports[0].direction,
                file.ports[0].port,
                file.ports[0].denies
            ),
            (Direction::In, 25, 1)
        );
        let p = &file.ports[1];
        assert_eq!(
            (p.direction, p.protocol.to_string().as_str(), p.port),
            (Direction::Out, "tcp", 8081)
        );
        assert_eq!(
            (p.would_denies, p.denies, p.first_seen, p.last_seen),
            (10, 0, 1000, 1009)
        );
        assert_eq!(p.reasons.get("no-rule"), Some(&10));
        assert_eq!(
            p.peers,
            vec![
                Seen {
                    name: "198.18.0.2".into(),
                    events: 5
                },
                Seen {
                    name: "198.18.0.3".into(),
                    events: 5
                }
            ]
        );
        assert_eq!(
            p.processes[0],
            Seen {
                name: "curl".into(),
                events: 7
            }
        );
        // Round trip through the file keeps everything.
        let back = Aggregate::from_file(
            serde_json::from_str(&serde_json::to_string(&file).unwrap()).unwrap(),
        );
        assert_eq!(back.to_file(3000), file);
    }

    #[test]
    fn aggregate_is_bounded() {
        let mut agg = Aggregate::new(0, 0);
        for port in 1..=(MAX_PORTS as u16 + 10) {
            agg.record(
                &event(DIR_OUT, port, [198, 18, 0, 2], "", 0),
                u64::from(port),
            );
        }
        assert_eq!(agg.ports.len(), MAX_PORTS);
        assert_eq!(agg.evicted, 10);
        assert!(
            !agg.ports.contains_key(&(Direction::Out, 6, 1)),
            "the least recently seen key goes first"
        );
        let mut top = TopK::default();
        for i in 0..1000u32 {
            top.add(&format!("10.0.{}.{}", i / 256, i % 256), 1, MAX_TRACKED);
            top.add("heavy", 1, MAX_TRACKED);
        }
        assert_eq!(top.counts.len(), MAX_TRACKED);
        assert_eq!(top.top(1)[0].name, "heavy", "the heavy hitter survives");
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_767_225_599), "2025-12-31T23:59:59Z");
    }
}
