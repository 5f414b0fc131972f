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

use std::{collections::BTreeMap, fs, net::IpAddr, path::Path};

use serde::Serialize;

use super::{
    aggregate::Seen,
    ago,
    evidence::{PeerEvidence, PortEvidence, SCAN_PORTS, ScanTracker, TOP_PEERS},
    rfc3339, status,
};
use crate::model::{Direction, IpProtocol, Mode, Protocol};

/// What would open a denied port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Cover {
    /// A rule of the site config (or a profile rule the config turns on) opens it: the
    /// config differs from the running policy, or the deny is older than the change.
    ConfigRule {
        /// Rule id.
        rule: String,
        /// The config file.
        config: String,
    },
    /// A rule of an optional feature of the profile opens it.
    Feature {
        /// The feature to turn on.
        feature: String,
        /// The rule it turns on.
        rule: String,
    },
}

/// One denied (direction, protocol, port).
#[derive(Clone, Debug, Serialize)]
pub struct PortFinding {
    /// in | out.
    pub direction: Direction,
    /// tcp | udp | icmp | icmpv6 | a protocol number.
    pub protocol: IpProtocol,
    /// Local port (in), remote port (out).
    pub port: u16,
    /// Packets in the kernel's table (null when the window is narrower than its count).
    pub packets: Option<u64>,
    /// Bytes in the kernel's table (likewise).
    pub bytes: Option<u64>,
    /// Deny events logged in the window (deny + would-deny).
    pub events: u64,
    /// Of which denies (enforce mode).
    pub denies: u64,
    /// Of which would-denies (audit mode).
    pub would_denies: u64,
    /// Unix time of the first logged event (null: no event logged).
    pub first_seen: Option<u64>,
    /// Unix time of the last logged event.
    pub last_seen: Option<u64>,
    /// Events by reason.
    pub reasons: BTreeMap<String, u64>,
    /// Top remote peers.
    pub peers: Vec<Seen>,
    /// Top processes (known for connect() only).
    pub processes: Vec<Seen>,
    /// What would open it, where something would.
    pub covered_by: Option<Cover>,
    /// breakage | exposure-closed | unclear.
    pub class: Class,
    /// Why, in words.
    pub class_reason: String,
    /// The flow evidence (null: none, e.g. not TCP/UDP).
    pub evidence: Option<Evidence>,
    /// A listener reachable from outside on this port (inbound), e.g. `0.0.0.0:3306`.
    pub listener: Option<String>,
}

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
mod tests;
