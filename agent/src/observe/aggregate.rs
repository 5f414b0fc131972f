//! The deny aggregate behind `portcullis report`: deny events grouped by (direction,
//! protocol, port), the same key as the kernel's denied-port table, with the first and
//! last time seen, the top remote peers and the top processes.
//!
//! It is persisted as `<state_dir>/denies.json` (temp file + rename, so a reader never
//! sees half a file) and is bounded: at most [`MAX_PORTS`] keys (the least recently seen
//! key is evicted) and [`MAX_TRACKED`] peers and processes per key, kept with the
//! Space-Saving algorithm so the heavy hitters survive whatever the number of distinct
//! peers. It is not rate-limited by userspace: every event that reached the agent counts.
//!
//! Each key also carries the flow evidence folded from the kernel's per-flow map
//! (`observe::evidence`: flows, handshakes, payload bytes each way, per peer), and the
//! file keeps which peers touched how many inbound ports (scan detection). When the key
//! limit is reached, keys without evidence of a real exchange are evicted first, so a
//! scan cannot push the evidence of breakage out.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use portcullis_common::{event::DenyEvent, stats::reason};
use serde::{Deserialize, Serialize};

use super::{
    denylog::{comm, event_addr},
    evidence::{FlowDelta, PortEvidence, ScanTracker},
};
use crate::{
    datapath::paths::PathArgs,
    model::{Direction, IpProtocol},
};

pub use crate::datapath::state::unix_now;

/// Keys (direction, protocol, port) the aggregate keeps.
pub const MAX_PORTS: usize = 1024;
/// Peers and processes tracked per key (Space-Saving counters).
pub const MAX_TRACKED: usize = 32;
/// Peers and processes written per key to `denies.json`.
pub const TOP: usize = 5;
/// Version of the `denies.json` format.
pub const FORMAT: u32 = 2;
/// The aggregate's file name in the state directory.
pub const FILE_NAME: &str = "denies.json";
/// The path of the aggregate for these paths.
pub fn denies_file(paths: &PathArgs) -> PathBuf {
    paths.state_dir.join(FILE_NAME)
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
    evidence: PortEvidence,
}

impl PortStats {
    /// Whether this key holds evidence of a real exchange (kept longest under a scan).
    fn exchanged(&self, direction: Direction) -> bool {
        direction == Direction::Out || self.evidence.total.flows_with_payload_both_ways > 0
    }
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
    /// Flow evidence from the kernel's per-flow map (audit mode).
    #[serde(default)]
    pub evidence: PortEvidence,
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
    /// Inbound ports each peer touched (at most `evidence::SCAN_PORTS` per peer).
    #[serde(default)]
    pub scan_peers: ScanTracker,
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
            scan_peers: ScanTracker::default(),
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
pub(super) struct Aggregate {
    since: u64,
    pub(super) reset_at: u64,
    evicted: u64,
    ports: HashMap<(Direction, u8, u16), PortStats>,
    scans: ScanTracker,
}

impl Aggregate {
    pub(super) fn new(since: u64, reset_at: u64) -> Self {
        Self {
            since,
            reset_at,
            evicted: 0,
            ports: HashMap::new(),
            scans: ScanTracker::default(),
        }
    }

    /// Picks up where a previous agent left off, so a restart keeps the audit history.
    pub(super) fn from_file(f: DenyFile) -> Self {
        let mut agg = Self::new(f.since, f.reset_at);
        agg.evicted = f.evicted;
        agg.scans = f.scan_peers;
        for p in f.ports.into_iter().take(MAX_PORTS) {
            let proto = p.protocol.0;
            let mut s = PortStats {
                denies: p.denies,
                would_denies: p.would_denies,
                first_seen: p.first_seen,
                last_seen: p.last_seen,
                evidence: p.evidence,
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

    pub(super) fn record(&mut self, e: &DenyEvent, when: u64) {
        let direction = Direction::from_code(e.direction);
        let port = if direction == Direction::In {
            e.local_port
        } else {
            e.remote_port
        };
        let s = self.slot((direction, e.protocol, port), when);
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

    /// The stats of `key`, made (evicting one key when full) at `when` if new.
    fn slot(&mut self, key: (Direction, u8, u16), when: u64) -> &mut PortStats {
        if !self.ports.contains_key(&key)
            && self.ports.len() >= MAX_PORTS
            && let Some(oldest) = self
                .ports
                .iter()
                .min_by_key(|((d, _, _), s)| (s.exchanged(*d), s.last_seen))
                .map(|(k, _)| *k)
        {
            self.ports.remove(&oldest);
            self.evicted += 1;
        }
        self.ports.entry(key).or_insert_with(|| PortStats {
            first_seen: when,
            ..PortStats::default()
        })
    }

    /// Adds one flow's growth since the last fold (`observe::evidence`).
    pub(super) fn fold(&mut self, d: &FlowDelta, to_unix: impl Fn(u64) -> u64) {
        let (direction, protocol, port) = d.port;
        let direction = Direction::from_code(direction);
        if direction == Direction::In {
            self.scans.touch(&d.peer, port);
        }
        let last = to_unix(d.last_ns);
        let s = self.slot((direction, protocol, port), to_unix(d.first_ns));
        s.evidence.fold(d, &to_unix);
        if s.evidence.first_seen != 0 {
            s.first_seen = s.first_seen.min(s.evidence.first_seen);
        }
        s.last_seen = s.last_seen.max(last);
    }

    pub(super) fn to_file(&self, now: u64) -> DenyFile {
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
                evidence: s.evidence.clone(),
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
            scan_peers: self.scans.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use portcullis_common::policy::{DIR_IN, DIR_OUT};

    use super::*;
    use crate::observe::events::tests::event;

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
        // A scan of more ports than fit cannot push out evidence of breakage: an
        // outbound port seen first outlives the inbound ones seen after it.
        let mut agg = Aggregate::new(0, 0);
        agg.record(&event(DIR_OUT, 8081, [198, 18, 0, 2], "curl", 0), 1);
        for port in 1..=(MAX_PORTS as u16 + 10) {
            agg.record(
                &event(DIR_IN, port, [203, 0, 113, 9], "", 0),
                10 + u64::from(port),
            );
        }
        assert!(agg.ports.contains_key(&(Direction::Out, 6, 8081)));
        assert_eq!(agg.ports.len(), MAX_PORTS);
        let mut top = TopK::default();
        for i in 0..1000u32 {
            top.add(&format!("10.0.{}.{}", i / 256, i % 256), 1, MAX_TRACKED);
            top.add("heavy", 1, MAX_TRACKED);
        }
        assert_eq!(top.counts.len(), MAX_TRACKED);
        assert_eq!(top.top(1)[0].name, "heavy", "the heavy hitter survives");
    }
}
