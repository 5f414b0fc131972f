//! The classes of `portcullis report`: for each would-denied (direction, protocol,
//! port), whether enforcing would break something (breakage), close something that
//! should never have been reachable (exposure closed), or cannot be told (unclear), from
//! the flow evidence of the deny aggregate (`observe::evidence`); and which exposed
//! ports have a listener reachable from outside.
//!
//! The rules, in order:
//! - outbound: a local process opened the flow, so it is **breakage**;
//! - inbound, with the flows of scanners (peers that touched at least
//!   `evidence::SCAN_PORTS` ports) set aside: payload in both directions in some flow
//!   is **breakage**; payload from a peer that got none back is **unclear**; no payload
//!   from any peer (a SYN, a handshake, a reset) is **exposure closed**, and so is a
//!   port only scanners touched;
//! - no flow evidence at all (ICMP, other protocols, evidence evicted): **unclear**.
//!
//! It also writes the verdict line from the classes ([`verdict`]).

use std::{fs, net::IpAddr, path::Path};

use serde::Serialize;

use super::{
    evidence::{PeerEvidence, PortEvidence, SCAN_PORTS, ScanTracker, TOP_PEERS},
    report::{PortFinding, ago},
    rfc3339, status,
};
use crate::model::{Direction, IpProtocol, Mode, Protocol};

/// What enforcing would do to a would-denied port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    /// Enforcing cuts traffic this host uses.
    Breakage,
    /// Enforcing blocks contact that should be blocked.
    ExposureClosed,
    /// The evidence does not tell.
    Unclear,
}

impl Class {
    /// The name used in the text report and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Class::Breakage => "breakage",
            Class::ExposureClosed => "exposure closed",
            Class::Unclear => "unclear",
        }
    }
}

/// Classifies a port; returns the class and why, in words.
pub fn classify(
    direction: Direction,
    evidence: Option<&PortEvidence>,
    scans: &ScanTracker,
) -> (Class, String) {
    if direction == Direction::Out {
        return (
            Class::Breakage,
            "outbound: a local process opened these flows".to_owned(),
        );
    }
    let Some(ev) = evidence.filter(|e| e.total.flows > 0) else {
        return (
            Class::Unclear,
            "no flow evidence (not TCP/UDP, or older than the evidence)".to_owned(),
        );
    };
    // Peers beyond the tracked ones count as non-scanners: the safe side.
    let mut others = ev.untracked;
    let mut other_peers = usize::from(ev.untracked.flows > 0);
    for (peer, p) in &ev.peers {
        if !scans.is_scanner(peer) {
            others.add(p);
            other_peers += 1;
        }
    }
    if others.flows_with_payload_both_ways > 0 {
        (
            Class::Breakage,
            format!(
                "{} flow(s) from {other_peers} peer(s) exchanged payload both ways",
                others.flows_with_payload_both_ways
            ),
        )
    } else if others.flows_with_peer_payload > 0 {
        (
            Class::Unclear,
            format!(
                "peers sent {} payload bytes in {} flow(s) that got no answer",
                others.payload_bytes_in, others.flows_with_peer_payload
            ),
        )
    } else if others.flows == 0 {
        (
            Class::ExposureClosed,
            format!("only scanners (peers that touched {SCAN_PORTS} or more ports)"),
        )
    } else {
        (
            Class::ExposureClosed,
            format!(
                "no payload from peers: {} flow(s), {} handshake(s)",
                others.flows, others.handshakes
            ),
        )
    }
}

/// A socket waiting for inbound flows: a TCP listener or a bound, unconnected UDP socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listener {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The address it is bound to (unspecified: all).
    pub addr: IpAddr,
    /// Its port.
    pub port: u16,
}

impl Listener {
    /// Reachable from another host: bound to all addresses or to a non-loopback one.
    pub fn reachable_from_outside(&self) -> bool {
        match self.addr {
            IpAddr::V4(a) => !a.is_loopback(),
            IpAddr::V6(a) => {
                !a.is_loopback() && !a.to_ipv4_mapped().is_some_and(|m| m.is_loopback())
            }
        }
    }
}

/// TCP_LISTEN and TCP_CLOSE (an unconnected UDP socket) in `/proc/net/*`'s `st` column.
const TCP_LISTEN: &str = "0A";
const UDP_UNCONNECTED: &str = "07";

/// The listeners of the network namespace of process `pid` (the agent's: the host it
/// enforces), from `/proc/PID/net/{tcp,tcp6,udp,udp6}`; this process's namespace when
/// `pid` is 0 or gone. Unreadable files give no listeners.
///
/// Parsed by hand: four fixed-format kernel files, two columns each; a procfs crate
/// would bring far more than it saves.
pub fn listeners(pid: u32) -> Vec<Listener> {
    let proc_dir = Path::new("/proc").join(pid.to_string());
    let base = if pid != 0 && proc_dir.join("net").is_dir() {
        proc_dir.join("net")
    } else {
        Path::new("/proc/self/net").to_path_buf()
    };
    let mut out = Vec::new();
    for (file, protocol, state) in [
        ("tcp", Protocol::Tcp, TCP_LISTEN),
        ("tcp6", Protocol::Tcp, TCP_LISTEN),
        ("udp", Protocol::Udp, UDP_UNCONNECTED),
        ("udp6", Protocol::Udp, UDP_UNCONNECTED),
    ] {
        if let Ok(text) = fs::read_to_string(base.join(file)) {
            out.extend(
                parse_proc_net(&text, state)
                    .into_iter()
                    .map(|(addr, port)| Listener {
                        protocol,
                        addr,
                        port,
                    }),
            );
        }
    }
    out
}

/// The local (address, port) of the rows in `state` of a `/proc/net/{tcp,udp}[6]` file.
fn parse_proc_net(text: &str, state: &str) -> Vec<(IpAddr, u16)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let local = cols.nth(1)?;
            let st = cols.nth(1)?;
            if st != state {
                return None;
            }
            let (addr, port) = local.split_once(':')?;
            Some((hex_addr(addr)?, u16::from_str_radix(port, 16).ok()?))
        })
        .collect()
}

/// An address as the kernel prints it: 32-bit words in host (little-endian) order.
fn hex_addr(hex: &str) -> Option<IpAddr> {
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(
            u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16)
                .ok()?
                .to_le_bytes(),
        )
    };
    match hex.len() {
        8 => Some(IpAddr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            Some(IpAddr::from(b))
        }
        _ => None,
    }
}

/// The finding for an exposure closed on a port a reachable listener serves.
pub fn exposure_finding(
    protocol: IpProtocol,
    port: u16,
    listeners: &[Listener],
) -> Option<(String, String)> {
    let l = listeners.iter().find(|l| {
        l.protocol.number() == protocol.0 && l.port == port && l.reachable_from_outside()
    })?;
    let bound = match l.addr {
        IpAddr::V6(a) => format!("[{a}]:{port}"),
        IpAddr::V4(a) => format!("{a}:{port}"),
    };
    Some((
        bound.clone(),
        format!(
            "{port} is reachable from outside ({protocol} listener on {bound}); enforcing closes it"
        ),
    ))
}

/// The flow evidence of a port, as reported.
#[derive(Clone, Debug, Serialize)]
pub struct Evidence {
    /// Flows, handshakes, payload bytes (in = received by this host).
    #[serde(flatten)]
    pub total: PeerEvidence,
    /// Distinct peers (exact while `peers_truncated` is false).
    pub distinct_peers: usize,
    /// More peers than tracked (their flows are in the totals).
    pub peers_truncated: bool,
    /// Unix time of the first flow's first packet.
    pub first_seen: u64,
    /// Unix time of the last packet.
    pub last_seen: u64,
    /// The peers with most flows.
    pub peers: Vec<PeerFinding>,
}

/// One peer's flows on a port.
#[derive(Clone, Debug, Serialize)]
pub struct PeerFinding {
    /// Its address.
    pub address: String,
    /// It touched `evidence::SCAN_PORTS` ports or more.
    pub scanner: bool,
    /// Its flows.
    #[serde(flatten)]
    pub flows: PeerEvidence,
}

impl Evidence {
    pub(super) fn new(e: &PortEvidence, scans: &ScanTracker) -> Self {
        let mut peers: Vec<PeerFinding> = e
            .peers
            .iter()
            .map(|(address, flows)| PeerFinding {
                address: address.clone(),
                scanner: scans.is_scanner(address),
                flows: *flows,
            })
            .collect();
        peers.sort_by(|a, b| {
            b.flows
                .flows
                .cmp(&a.flows.flows)
                .then_with(|| a.address.cmp(&b.address))
        });
        peers.truncate(TOP_PEERS);
        Evidence {
            total: e.total,
            distinct_peers: e.distinct_peers(),
            peers_truncated: e.untracked.flows > 0,
            first_seen: e.first_seen,
            last_seen: e.last_seen,
            peers,
        }
    }
}

/// `in tcp/3306`.
pub fn port_name(f: &PortFinding) -> String {
    format!("{} {}/{}", f.direction, f.protocol, f.port)
}

fn port_label(f: &PortFinding) -> String {
    let n = f.packets.map_or_else(
        || format!("{} event{}", f.events, if f.events == 1 { "" } else { "s" }),
        |p| format!("{p} packet{}", if p == 1 { "" } else { "s" }),
    );
    format!("{} ({n})", port_name(f))
}

/// At most ten labels of the ports of `class` (all ports when `None`), then "and N more".
fn list(ports: &[PortFinding], class: Option<Class>) -> Vec<String> {
    let of: Vec<&PortFinding> = ports
        .iter()
        .filter(|f| class.is_none_or(|c| f.class == c))
        .collect();
    let mut list: Vec<String> = of.iter().take(10).map(|f| port_label(f)).collect();
    if of.len() > 10 {
        list.push(format!("and {} more", of.len() - 10));
    }
    list
}

pub(super) fn verdict(
    mode: Mode,
    safe: bool,
    since: u64,
    now: u64,
    ports: &[PortFinding],
    status: &status::Status,
    max_unclear: u64,
) -> String {
    let when = format!("{} ({})", rfc3339(since), ago(now, since));
    if mode == Mode::Enforce {
        let mut all = list(ports, None);
        if all.is_empty() && !safe {
            all.push(format!("{} packets", status.denied.packets));
        }
        return if all.is_empty() {
            format!("enforcing: nothing denied since {when}")
        } else {
            format!("enforcing: denied since {when}: {}", all.join(", "))
        };
    }
    let (breakage, exposures, unclear) = (
        list(ports, Some(Class::Breakage)),
        list(ports, Some(Class::ExposureClosed)),
        list(ports, Some(Class::Unclear)),
    );
    let n_unclear = ports.iter().filter(|f| f.class == Class::Unclear).count();
    let unclear_part = format!(
        "{n_unclear} unclear (--max-unclear {max_unclear}): {}",
        unclear.join(", ")
    );
    if safe {
        let mut parts = vec![if ports.is_empty() {
            format!("safe to enforce: no would-deny since {when}")
        } else {
            format!("safe to enforce: nothing would break since {when}")
        }];
        if !exposures.is_empty() {
            parts.push(format!("enforcing closes {}", exposures.join(", ")));
        }
        if n_unclear > 0 {
            parts.push(unclear_part);
        }
        return parts.join("; ");
    }
    let mut parts = Vec::new();
    if !breakage.is_empty() {
        parts.push(format!("enforcing would break {}", breakage.join(", ")));
    }
    if n_unclear as u64 > max_unclear {
        parts.push(unclear_part);
    }
    if parts.is_empty() {
        // Counted, but the denied-port table lost the entries (LRU).
        parts.push(format!(
            "{} would-denied packets of unknown ports",
            status.would_deny.packets
        ));
    }
    format!("not safe to enforce: {}", parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:2BCB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
   2: 0112A8C6:0019 0212A8C6:9C40 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0
";
    const TCP6: &str =
        "  sl  local_address                         remote_address                        st
   0: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 0
";

    #[test]
    fn proc_net_listeners() {
        let v4 = parse_proc_net(TCP, TCP_LISTEN);
        assert_eq!(
            v4,
            vec![
                ("0.0.0.0".parse().unwrap(), 3306),
                ("127.0.0.1".parse().unwrap(), 11211)
            ]
        );
        assert_eq!(
            parse_proc_net(TCP6, TCP_LISTEN),
            vec![("::1".parse().unwrap(), 80)]
        );
        let ls: Vec<Listener> = v4
            .into_iter()
            .map(|(addr, port)| Listener {
                protocol: Protocol::Tcp,
                addr,
                port,
            })
            .collect();
        let (bound, text) = exposure_finding(IpProtocol(6), 3306, &ls).unwrap();
        assert_eq!(bound, "0.0.0.0:3306");
        assert!(text.starts_with("3306 is reachable from outside"), "{text}");
        assert_eq!(
            exposure_finding(IpProtocol(6), 11211, &ls),
            None,
            "loopback only"
        );
        assert_eq!(
            exposure_finding(IpProtocol(17), 3306, &ls),
            None,
            "other protocol"
        );
    }

    #[test]
    fn classes() {
        let scans = ScanTracker::default();
        assert_eq!(classify(Direction::Out, None, &scans).0, Class::Breakage);
        assert_eq!(classify(Direction::In, None, &scans).0, Class::Unclear);
        let peer = |flows, both, from_peer| PeerEvidence {
            flows,
            handshakes: flows,
            flows_with_peer_payload: from_peer,
            flows_with_payload_both_ways: both,
            payload_bytes_in: from_peer * 10,
            payload_bytes_out: both * 10,
        };
        let port = |p: PeerEvidence, addr: &str| PortEvidence {
            total: p,
            peers: [(addr.to_owned(), p)].into(),
            ..PortEvidence::default()
        };
        let probe = port(peer(3, 0, 0), "192.0.2.1");
        assert_eq!(
            classify(Direction::In, Some(&probe), &scans).0,
            Class::ExposureClosed
        );
        let talk = port(peer(1, 1, 1), "192.0.2.1");
        assert_eq!(
            classify(Direction::In, Some(&talk), &scans).0,
            Class::Breakage
        );
        let one_way = port(peer(1, 0, 1), "192.0.2.1");
        assert_eq!(
            classify(Direction::In, Some(&one_way), &scans).0,
            Class::Unclear
        );
        // The same exchange from a scanner is exposure.
        let mut scanner = ScanTracker::default();
        for p in 0..SCAN_PORTS as u16 {
            scanner.touch("192.0.2.1", p);
        }
        let (class, why) = classify(Direction::In, Some(&talk), &scanner);
        assert_eq!(class, Class::ExposureClosed, "{why}");
    }

    fn finding(port: u16, packets: Option<u64>, events: u64) -> PortFinding {
        PortFinding {
            direction: Direction::Out,
            protocol: IpProtocol(6),
            port,
            packets,
            bytes: None,
            events,
            denies: 0,
            would_denies: events,
            first_seen: None,
            last_seen: None,
            reasons: BTreeMap::new(),
            peers: vec![],
            processes: vec![],
            covered_by: None,
            class: Class::Breakage,
            class_reason: String::new(),
            evidence: None,
            listener: None,
        }
    }

    #[test]
    fn verdict_lines() {
        let status = empty_status();
        let safe = verdict(Mode::Audit, true, 0, 60, &[], &status, 0);
        assert_eq!(
            safe,
            "safe to enforce: no would-deny since 1970-01-01T00:00:00Z (60s ago)"
        );
        let ports = [finding(8081, Some(3), 3), finding(5353, None, 1)];
        let unsafe_ = verdict(Mode::Audit, false, 0, 60, &ports, &status, 0);
        assert_eq!(
            unsafe_,
            "not safe to enforce: enforcing would break out tcp/8081 (3 packets), out tcp/5353 (1 event)"
        );
        let mut scanned = finding(3306, Some(2), 2);
        scanned.direction = Direction::In;
        scanned.class = Class::ExposureClosed;
        assert_eq!(
            verdict(
                Mode::Audit,
                true,
                0,
                60,
                std::slice::from_ref(&scanned),
                &status,
                0
            ),
            "safe to enforce: nothing would break since 1970-01-01T00:00:00Z (60s ago); enforcing closes in tcp/3306 (2 packets)"
        );
        let mut unclear = scanned.clone();
        unclear.class = Class::Unclear;
        unclear.port = 5353;
        assert_eq!(
            verdict(Mode::Audit, false, 0, 60, &[scanned, unclear], &status, 0),
            "not safe to enforce: 1 unclear (--max-unclear 0): in tcp/5353 (2 packets)"
        );
        assert!(
            verdict(Mode::Enforce, false, 0, 60, &ports, &status, 0)
                .starts_with("enforcing: denied since")
        );
    }

    fn empty_status() -> status::Status {
        let mut s = crate::observe::table::tests::status(0);
        s.rules.clear();
        s
    }
}
