//! Per-port evidence of would-denied flows, folded from the kernel's per-flow map
//! (`portcullis_common::evidence`) into the deny aggregate, and what tells a scanner.
//!
//! The kernel keeps one entry per flow with running totals. Every flush the agent reads
//! them all, adds to each (direction, protocol, port) what grew since its last look (a
//! flow it has not seen before counts as one more flow), and deletes the entries of
//! flows that are closed and idle for [`CLOSED_IDLE_NS`], or idle for [`IDLE_NS`]. A
//! flow is known again by its key and its first-packet time, so an entry re-created
//! after a deletion, an eviction or a `report --reset` is a new flow, never a negative
//! difference.
//!
//! Memory is bounded: [`MAX_PEERS`] peers per port (the flows of further peers are summed
//! in `untracked`), [`MAX_SCAN_PEERS`] peers for scan detection with at most
//! [`SCAN_PORTS`] ports each, and the per-flow snapshots are those of the kernel map
//! (`AUDIT_FLOWS_MAX`).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    path::Path,
};

use portcullis_common::{
    evidence::{FlowEvidence, tcp},
    flow::FlowKey,
    policy::DIR_IN,
};
use serde::{Deserialize, Serialize};

use super::denylog::event_addr;
use crate::datapath::state::write_json_atomically;

/// Distinct peers whose flows are tracked one by one per port.
pub const MAX_PEERS: usize = 64;
/// Peers listed per port in the report (most flows first).
pub const TOP_PEERS: usize = 5;
/// Peers tracked for scan detection.
pub const MAX_SCAN_PEERS: usize = 1024;
/// A peer that touched this many distinct inbound ports no rule opens to it, in the
/// window, is a scanner: its flows are exposure, whatever they carried. Ten is far more
/// than a real client of one host tries by mistake and far fewer than any port scan.
pub const SCAN_PORTS: usize = 10;
/// A closed flow (TCP FIN or RST seen) idle this long is folded for good: deleted from
/// the kernel map.
pub const CLOSED_IDLE_NS: u64 = 5_000_000_000;
/// Any flow idle this long is deleted from the kernel map (UDP has no close).
pub const IDLE_NS: u64 = 120_000_000_000;

/// What the would-denied flows of one peer on one port carried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerEvidence {
    /// Flows.
    pub flows: u64,
    /// TCP flows whose three-way handshake completed.
    pub handshakes: u64,
    /// Flows in which the peer sent payload.
    pub flows_with_peer_payload: u64,
    /// Flows with payload in both directions: a real exchange.
    pub flows_with_payload_both_ways: u64,
    /// Payload bytes this host received.
    pub payload_bytes_in: u64,
    /// Payload bytes this host sent.
    pub payload_bytes_out: u64,
    /// TCP flows whose handshake completed and that the peer then reset without
    /// sending payload: what a connect scan (nmap -sT) leaves.
    #[serde(default)]
    pub connect_resets: u64,
    /// Unix time the first of these flows started (0: unknown), to tell a peer that
    /// comes back at a steady pace (a health check) from a one-off.
    #[serde(default)]
    pub first_flow: u64,
    /// Unix time the last of these flows started.
    #[serde(default)]
    pub last_flow: u64,
}

impl PeerEvidence {
    /// Flows whose handshake completed but that carried no payload from the peer (a TCP
    /// flow with peer payload has completed its handshake): a scanner's connect, a
    /// health check, or a client of a server-speaks-first protocol that only listened.
    pub fn silent_handshakes(&self) -> u64 {
        self.handshakes.saturating_sub(self.flows_with_peer_payload)
    }

    /// Adds another's counts.
    pub fn add(&mut self, d: &PeerEvidence) {
        if d.first_flow != 0 && (self.first_flow == 0 || d.first_flow < self.first_flow) {
            self.first_flow = d.first_flow;
        }
        self.last_flow = self.last_flow.max(d.last_flow);
        self.connect_resets += d.connect_resets;
        self.flows += d.flows;
        self.handshakes += d.handshakes;
        self.flows_with_peer_payload += d.flows_with_peer_payload;
        self.flows_with_payload_both_ways += d.flows_with_payload_both_ways;
        self.payload_bytes_in += d.payload_bytes_in;
        self.payload_bytes_out += d.payload_bytes_out;
    }
}

/// The flow evidence of one (direction, protocol, port), as kept in `denies.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortEvidence {
    /// All flows, summed.
    pub total: PeerEvidence,
    /// Per peer address, at most [`MAX_PEERS`].
    pub peers: BTreeMap<String, PeerEvidence>,
    /// Flows of peers beyond [`MAX_PEERS`], summed.
    pub untracked: PeerEvidence,
    /// Unix time of the first flow's first packet (0: no flow).
    pub first_seen: u64,
    /// Unix time of the last packet.
    pub last_seen: u64,
}

impl PortEvidence {
    /// Distinct peers (exact up to [`MAX_PEERS`]; `untracked.flows > 0` says more).
    pub fn distinct_peers(&self) -> usize {
        self.peers.len()
    }

    fn add(&mut self, peer: &str, d: &PeerEvidence, first: u64, last: u64) {
        self.total.add(d);
        let full = self.peers.len() >= MAX_PEERS;
        match self.peers.get_mut(peer) {
            Some(p) => p.add(d),
            None if full => self.untracked.add(d),
            None => {
                self.peers.insert(peer.to_owned(), *d);
            }
        }
        if first != 0 && (self.first_seen == 0 || first < self.first_seen) {
            self.first_seen = first;
        }
        self.last_seen = self.last_seen.max(last);
    }
}

/// Distinct inbound ports each peer touched (bounded), to tell scanners.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ScanTracker(BTreeMap<String, BTreeSet<u16>>);

impl ScanTracker {
    /// Notes that `peer` touched inbound `port`.
    pub fn touch(&mut self, peer: &str, port: u16) {
        if let Some(ports) = self.0.get_mut(peer) {
            if ports.len() < SCAN_PORTS {
                ports.insert(port);
            }
            return;
        }
        if self.0.len() >= MAX_SCAN_PEERS {
            // Full: the peer with the fewest ports makes room (a scanner keeps its place).
            let fewest = self
                .0
                .iter()
                .min_by_key(|(_, p)| p.len())
                .map(|(k, _)| k.clone());
            if let Some(k) = fewest {
                self.0.remove(&k);
            }
        }
        self.0.insert(peer.to_owned(), BTreeSet::from([port]));
    }

    /// Whether `peer` touched at least [`SCAN_PORTS`] ports.
    pub fn is_scanner(&self, peer: &str) -> bool {
        self.0.get(peer).is_some_and(|p| p.len() >= SCAN_PORTS)
    }
}

/// The (direction code, protocol, port) a flow is aggregated under.
pub type PortKey = (u8, u8, u16);

/// What one flow adds to its port at a fold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowDelta {
    /// Where it goes.
    pub port: PortKey,
    /// The remote address.
    pub peer: String,
    /// The increments (`flows` is 1 for a flow seen for the first time).
    pub delta: PeerEvidence,
    /// Kernel time of the flow's first and last packet (ns, CLOCK_MONOTONIC).
    pub first_ns: u64,
    /// Last packet.
    pub last_ns: u64,
}

/// The last totals folded of each flow in the kernel map.
#[derive(Debug, Default)]
pub struct FlowTracker {
    seen: HashMap<FlowKey, FlowEvidence>,
    /// The next fold only takes its snapshot: a restarted agent must not count again
    /// what its predecessor folded.
    baseline: bool,
}

impl FlowTracker {
    /// A tracker whose first fold is a baseline (for an agent that may adopt pins).
    pub fn after_restart() -> Self {
        Self {
            seen: HashMap::new(),
            baseline: true,
        }
    }

    /// Folds the kernel's flows read at kernel time `now_ns`: returns what to add per
    /// port and the keys to delete from the kernel map.
    pub fn fold(
        &mut self,
        flows: &[(FlowKey, FlowEvidence)],
        now_ns: u64,
    ) -> (Vec<FlowDelta>, Vec<FlowKey>) {
        let baseline = std::mem::take(&mut self.baseline);
        let mut deltas = Vec::new();
        let mut done = Vec::new();
        let mut seen = HashMap::with_capacity(flows.len());
        // Walking a hash map the kernel changes meanwhile (an LRU evicting under a flood)
        // can return a key twice: a key counts once per read.
        let mut read = HashSet::with_capacity(flows.len());
        for (key, now) in flows {
            if !read.insert(*key) {
                continue;
            }
            let old = self
                .seen
                .get(key)
                .filter(|o| o.first_ns == now.first_ns && grew(o, now))
                .copied();
            if !baseline {
                deltas.push(delta(key, old.as_ref(), now));
            }
            let idle = now_ns.saturating_sub(now.last_ns);
            if idle >= IDLE_NS || (now.closed() && idle >= CLOSED_IDLE_NS) {
                done.push(*key);
            } else {
                seen.insert(*key, *now);
            }
        }
        self.seen = seen;
        deltas.retain(|d| d.delta != PeerEvidence::default());
        (deltas, done)
    }

    /// Forgets every flow (`report --reset` cleared the kernel map too).
    pub fn clear(&mut self) {
        self.seen.clear();
    }

    /// Writes what was folded of each flow still in the kernel map to `path`, for the
    /// next agent ([`FlowTracker::resume`]): an agent that stops cleanly (an upgrade, a
    /// restart) lets its successor count the flows of the downtime instead of taking
    /// them as a baseline.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let flows: Vec<SavedFlow> = self.seen.iter().map(SavedFlow::new).collect();
        write_json_atomically(path, &SavedFlows { flows })
    }

    /// The tracker for an agent starting now: what its predecessor saved at a clean
    /// stop (then every flow in the kernel map that it did not know is new, and known
    /// ones count only their growth), else a baseline (after a crash or a first start:
    /// counting again what a predecessor folded would be worse than missing a little).
    /// The file is deleted once read: after a later crash it would be stale.
    pub fn resume(path: &Path) -> Self {
        let saved = std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice::<SavedFlows>(&b).ok());
        let _ = std::fs::remove_file(path);
        match saved {
            Some(s) => Self {
                seen: s.flows.iter().map(SavedFlow::get).collect(),
                baseline: false,
            },
            None => Self::after_restart(),
        }
    }
}

/// `<state_dir>/flows.json`: [`FlowTracker::save`]'s file.
#[derive(Serialize, Deserialize)]
struct SavedFlows {
    flows: Vec<SavedFlow>,
}

/// One flow as folded: its key and the totals the next fold takes differences from.
#[derive(Serialize, Deserialize)]
struct SavedFlow {
    local: [u8; 16],
    remote: [u8; 16],
    local_port: u16,
    remote_port: u16,
    protocol: u8,
    first_ns: u64,
    last_ns: u64,
    packets_in: u64,
    packets_out: u64,
    payload_in: u64,
    payload_out: u64,
    direction: u8,
    reason: u8,
    flags_in: u8,
    flags_out: u8,
}

impl SavedFlow {
    fn new((k, e): (&FlowKey, &FlowEvidence)) -> Self {
        Self {
            local: k.local,
            remote: k.remote,
            local_port: k.local_port,
            remote_port: k.remote_port,
            protocol: k.protocol,
            first_ns: e.first_ns,
            last_ns: e.last_ns,
            packets_in: e.packets_in,
            packets_out: e.packets_out,
            payload_in: e.payload_in,
            payload_out: e.payload_out,
            direction: e.direction,
            reason: e.reason,
            flags_in: e.flags_in,
            flags_out: e.flags_out,
        }
    }

    fn get(&self) -> (FlowKey, FlowEvidence) {
        (
            FlowKey {
                local: self.local,
                remote: self.remote,
                local_port: self.local_port,
                remote_port: self.remote_port,
                protocol: self.protocol,
                _pad: [0; 3],
            },
            FlowEvidence {
                first_ns: self.first_ns,
                last_ns: self.last_ns,
                packets_in: self.packets_in,
                packets_out: self.packets_out,
                payload_in: self.payload_in,
                payload_out: self.payload_out,
                direction: self.direction,
                reason: self.reason,
                flags_in: self.flags_in,
                flags_out: self.flags_out,
                _pad: [0; 4],
            },
        )
    }
}

/// Whether `now` can be a later state of `old` (no counter went back).
fn grew(old: &FlowEvidence, now: &FlowEvidence) -> bool {
    now.packets_in >= old.packets_in
        && now.packets_out >= old.packets_out
        && now.payload_in >= old.payload_in
        && now.payload_out >= old.payload_out
}

fn delta(key: &FlowKey, old: Option<&FlowEvidence>, now: &FlowEvidence) -> FlowDelta {
    let base = old.copied().unwrap_or_default();
    let became = |f: fn(&FlowEvidence) -> bool| u64::from(f(now) && !(old.is_some() && f(&base)));
    let port = if now.direction == DIR_IN {
        key.local_port
    } else {
        key.remote_port
    };
    FlowDelta {
        port: (now.direction, key.protocol, port),
        peer: event_addr(&key.remote).to_string(),
        delta: PeerEvidence {
            flows: u64::from(old.is_none()),
            handshakes: became(FlowEvidence::handshake),
            flows_with_peer_payload: became(|e| e.payload_in > 0),
            flows_with_payload_both_ways: became(|e| e.payload_in > 0 && e.payload_out > 0),
            payload_bytes_in: now.payload_in - base.payload_in,
            payload_bytes_out: now.payload_out - base.payload_out,
            connect_resets: became(|e| {
                e.handshake() && e.flags_in & tcp::RST != 0 && e.payload_in == 0
            }),
            first_flow: 0,
            last_flow: 0,
        },
        first_ns: now.first_ns,
        last_ns: now.last_ns,
    }
}

impl PortEvidence {
    /// Adds a fold's delta; `to_unix` turns kernel ns into Unix seconds.
    pub fn fold(&mut self, d: &FlowDelta, to_unix: impl Fn(u64) -> u64) {
        let first = if d.delta.flows > 0 {
            to_unix(d.first_ns)
        } else {
            0
        };
        let delta = PeerEvidence {
            first_flow: first,
            last_flow: first,
            ..d.delta
        };
        self.add(&d.peer, &delta, first, to_unix(d.last_ns));
    }
}

#[cfg(test)]
mod tests {
    use portcullis_common::policy::v4_mapped;

    use super::*;

    fn key(remote_port: u16) -> FlowKey {
        FlowKey {
            local: v4_mapped([198, 18, 0, 1]),
            remote: v4_mapped([198, 18, 0, 2]),
            local_port: 3306,
            remote_port,
            protocol: 6,
            _pad: [0; 3],
        }
    }

    #[test]
    fn flows_are_counted_once_and_grow_by_differences() {
        let mut t = FlowTracker::default();
        let mut e = FlowEvidence {
            first_ns: 10,
            last_ns: 10,
            packets_in: 1,
            direction: DIR_IN,
            flags_in: tcp::SYN,
            ..FlowEvidence::default()
        };
        let (d, done) = t.fold(&[(key(40000), e)], 20);
        assert!(done.is_empty());
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].port, (DIR_IN, 6, 3306));
        assert_eq!(d[0].peer, "198.18.0.2");
        assert_eq!((d[0].delta.flows, d[0].delta.handshakes), (1, 0));
        // Handshake and data both ways: the same flow, grown.
        e.flags_out = tcp::SYN | tcp::ACK;
        e.flags_in |= tcp::ACK;
        e.payload_in = 100;
        e.payload_out = 7;
        e.last_ns = 30;
        let (d, _) = t.fold(&[(key(40000), e)], 40);
        assert_eq!(
            d[0].delta,
            PeerEvidence {
                flows: 0,
                handshakes: 1,
                flows_with_peer_payload: 1,
                flows_with_payload_both_ways: 1,
                payload_bytes_in: 100,
                payload_bytes_out: 7,
                ..PeerEvidence::default()
            }
        );
        // Nothing new: nothing added. Closed and idle: deleted.
        e.flags_in |= tcp::FIN;
        let (d, done) = t.fold(&[(key(40000), e)], 31 + CLOSED_IDLE_NS);
        assert_eq!(d.len(), 0);
        assert_eq!(done, vec![key(40000)]);
        // Re-created with a new first packet: a new flow.
        let again = FlowEvidence {
            first_ns: 99,
            ..FlowEvidence::default()
        };
        let (d, _) = t.fold(&[(key(40000), again)], 100);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].delta.flows, 1);
    }

    #[test]
    fn a_key_read_twice_in_one_walk_counts_once() {
        let mut t = FlowTracker::default();
        let e = FlowEvidence {
            first_ns: 1,
            last_ns: 1,
            payload_in: 700,
            payload_out: 300,
            direction: DIR_IN,
            ..FlowEvidence::default()
        };
        let (d, _) = t.fold(&[(key(1), e), (key(2), e), (key(1), e)], 2);
        assert_eq!(d.len(), 2);
        assert_eq!(
            d.iter().map(|d| d.delta.payload_bytes_in).sum::<u64>(),
            1400
        );
    }

    #[test]
    fn a_restart_takes_a_baseline_first() {
        let mut t = FlowTracker::after_restart();
        let e = FlowEvidence {
            first_ns: 1,
            last_ns: 1,
            packets_in: 3,
            payload_in: 9,
            ..FlowEvidence::default()
        };
        assert!(t.fold(&[(key(1), e)], 2).0.is_empty());
        let more = FlowEvidence {
            payload_in: 12,
            ..e
        };
        let (d, _) = t.fold(&[(key(1), more)], 3);
        assert_eq!((d[0].delta.flows, d[0].delta.payload_bytes_in), (0, 3));
    }

    #[test]
    fn a_clean_restart_counts_the_flows_of_the_downtime_once() {
        let dir = std::env::temp_dir().join(format!("portcullis-flows-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("flows.json");
        let old = FlowEvidence {
            first_ns: 1,
            last_ns: 1,
            packets_in: 3,
            payload_in: 9,
            direction: DIR_IN,
            ..FlowEvidence::default()
        };
        let mut t = FlowTracker::default();
        assert_eq!(t.fold(&[(key(1), old)], 2).0.len(), 1);
        t.save(&file).unwrap();
        // While no agent ran: the known flow grew, a new one came.
        let grown = FlowEvidence {
            payload_in: 12,
            ..old
        };
        let new = FlowEvidence {
            first_ns: 5,
            last_ns: 6,
            payload_in: 4,
            payload_out: 2,
            direction: DIR_IN,
            ..FlowEvidence::default()
        };
        let mut next = FlowTracker::resume(&file);
        assert!(!file.exists(), "read once: a later crash must not reuse it");
        let (d, _) = next.fold(&[(key(1), grown), (key(2), new)], 7);
        let by_port: HashMap<u16, PeerEvidence> = d
            .iter()
            .map(|d| (if d.delta.flows == 1 { 2 } else { 1 }, d.delta))
            .collect();
        assert_eq!(d.len(), 2);
        assert_eq!((by_port[&1].flows, by_port[&1].payload_bytes_in), (0, 3));
        assert_eq!(
            (by_port[&2].flows, by_port[&2].flows_with_payload_both_ways),
            (1, 1)
        );
        // No file (a crash, a first start): a baseline, as before.
        let mut after_crash = FlowTracker::resume(&file);
        assert!(after_crash.fold(&[(key(2), new)], 8).0.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn peers_and_scanners_are_bounded() {
        let mut p = PortEvidence::default();
        let one = PeerEvidence {
            flows: 1,
            ..PeerEvidence::default()
        };
        for i in 0..(MAX_PEERS + 5) {
            p.add(&format!("10.0.0.{i}"), &one, 5, 6);
        }
        assert_eq!(p.distinct_peers(), MAX_PEERS);
        assert_eq!(
            (p.total.flows, p.untracked.flows),
            (MAX_PEERS as u64 + 5, 5)
        );
        let mut s = ScanTracker::default();
        for port in 0..100 {
            s.touch("192.0.2.1", port);
        }
        s.touch("192.0.2.2", 25);
        assert!(s.is_scanner("192.0.2.1"));
        assert!(!s.is_scanner("192.0.2.2"));
        assert_eq!(s.0["192.0.2.1"].len(), SCAN_PORTS);
        for i in 0..(MAX_SCAN_PEERS + 10) {
            s.touch(&format!("peer{i}"), 1);
        }
        assert_eq!(s.0.len(), MAX_SCAN_PEERS);
        assert!(s.is_scanner("192.0.2.1"), "a scanner keeps its place");
    }
}
