//! The classes of `portcullis report`: for each would-denied (direction, protocol,
//! port), whether enforcing would break something (breakage), close something that
//! should never have been reachable (exposure closed), or cannot be told (unclear), from
//! the flow evidence of the deny aggregate (`observe::evidence`); and which exposed
//! ports have a listener reachable from outside.
//!
//! The rules err towards "not safe": enforcing on a wrong "safe" cuts mail, on a wrong
//! "not safe" only waits. In order:
//! - outbound: a local process opened the flow, so it is **breakage**;
//! - inbound, each peer's flows on the port read on their own ([`Reading`]), the most
//!   telling reading deciding: payload in both directions in some flow is **breakage**,
//!   from any peer, scanner or not; a peer that keeps completing handshakes without
//!   sending anything is a **health check?** finding and **unclear**; payload from a peer
//!   that got none back is **unclear**; a completed handshake without payload from the
//!   peer is **unclear** (a connect check, or a client of a server-speaks-first protocol
//!   that only read the banner) unless it is a scanner's probe: a peer that touched
//!   `evidence::SCAN_PORTS` ports, with at most [`SCAN_REPEATS`] flows on this one, or
//!   at most that many handshakes each reset by the peer at once (a connect scan); no
//!   handshake and no payload (SYNs, resets, spoofed sources) is **exposure closed**,
//!   and so are scanners' probes;
//! - no flow evidence at all (ICMP, other protocols, evidence evicted): **unclear**.
//!
//! It also writes the verdict line from the classes ([`verdict`]).

use std::collections::BTreeMap;

use serde::Serialize;

use super::{
    aggregate::Seen,
    ago,
    evidence::{PeerEvidence, PortEvidence, SCAN_PORTS, ScanTracker, TOP_PEERS},
    rfc3339, status,
};
use crate::model::{Direction, IpProtocol, Mode};

mod listeners;
pub use listeners::{exposure_finding, listeners};

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
    /// Peers that keep connecting without payload: health checks enforcing would fail.
    pub health_checks: Vec<HealthCheck>,
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

/// A scanner's probes of one port are at most this many flows: a scan tries each port
/// once or twice (a retry, or a SYN scan then a connect scan). A peer that comes back
/// more often is a client of that port, whatever else it scanned.
pub const SCAN_REPEATS: u64 = 2;
/// A peer with at least this many handshakes on a port and never any payload from it
/// reads as a health check (a load balancer's or a monitor's connect check).
pub const HEALTH_CHECK_FLOWS: u64 = 3;

/// What one peer's flows on one inbound port read as, the most telling first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reading {
    /// Payload both ways in some flow: a real exchange (breakage, scanner or not).
    Exchange,
    /// Handshakes again and again, no payload from the peer: a health check?
    HealthCheck,
    /// Payload from the peer that got no answer.
    OneWay,
    /// Completed handshakes without payload from the peer, not a scanner's probe: a
    /// connect check, or a client of a server-speaks-first protocol (SMTP's banner).
    SilentHandshake,
    /// A scanner's probe: a peer that touched `SCAN_PORTS` ports, at most
    /// `SCAN_REPEATS` flows here, no exchange; or at most `SCAN_REPEATS` flows, each
    /// handshake reset by the peer without payload (a connect scan).
    ScanProbe,
    /// No handshake, no payload: SYNs, resets, spoofed sources.
    Attempt,
}

impl Reading {
    /// The name used in the text report (the JSON's, in words).
    pub fn name(self) -> &'static str {
        match self {
            Reading::Exchange => "exchange",
            Reading::HealthCheck => "health check?",
            Reading::OneWay => "one way",
            Reading::SilentHandshake => "silent handshake",
            Reading::ScanProbe => "scan probe",
            Reading::Attempt => "attempt",
        }
    }

    /// Reads one peer's flows on an inbound port.
    pub fn of(e: &PeerEvidence, scanner: bool) -> Reading {
        if e.flows_with_payload_both_ways > 0 {
            Reading::Exchange
        } else if scanner && e.flows <= SCAN_REPEATS {
            Reading::ScanProbe
        } else if e.flows_with_peer_payload > 0 {
            Reading::OneWay
        } else if e.silent_handshakes() >= HEALTH_CHECK_FLOWS {
            Reading::HealthCheck
        } else if e.silent_handshakes() > 0
            && e.flows <= SCAN_REPEATS
            && e.connect_resets >= e.silent_handshakes()
        {
            // Connected, sent nothing, reset at once, and did not come back: the
            // pattern of a connect scan. Repeated, it is a health check (above).
            Reading::ScanProbe
        } else if e.silent_handshakes() > 0 {
            Reading::SilentHandshake
        } else {
            Reading::Attempt
        }
    }

    /// The class a port gets from a peer read so.
    pub fn class(self) -> Class {
        match self {
            Reading::Exchange => Class::Breakage,
            Reading::HealthCheck | Reading::OneWay | Reading::SilentHandshake => Class::Unclear,
            Reading::ScanProbe | Reading::Attempt => Class::ExposureClosed,
        }
    }
}

/// A peer that keeps connecting to a would-denied port without sending anything: what a
/// load balancer's or monitor's health check looks like. Enforcing fails the check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HealthCheck {
    /// The peer's address.
    pub peer: String,
    /// Its flows to the port.
    pub flows: u64,
    /// Of which completed handshakes.
    pub handshakes: u64,
    /// Mean seconds between its flows' starts (0: all within a second).
    pub interval_seconds: u64,
    /// Unix time its first flow started.
    pub first_flow: u64,
    /// Unix time its last flow started.
    pub last_flow: u64,
}

impl HealthCheck {
    /// `10.0.0.7 connects to in tcp/8080 about every 5 s (12 handshakes, no payload
    /// from it): a health check? enforcing breaks it`.
    pub fn text(&self, port: &str) -> String {
        let pace = if self.interval_seconds == 0 {
            format!("{} times within a second", self.flows)
        } else {
            format!("about every {} s", self.interval_seconds)
        };
        format!(
            "{} connects to {port} {pace} ({} handshakes, no payload from it): a health check? enforcing breaks it",
            self.peer, self.handshakes
        )
    }
}

/// A port's class, why, and the health-check-like peers among its flows.
#[derive(Clone, Debug)]
pub struct Classified {
    /// The class.
    pub class: Class,
    /// Why, in words, with the evidence's counts.
    pub reason: String,
    /// Health-check-like peers (inbound only).
    pub health_checks: Vec<HealthCheck>,
}

/// Classifies a port. Each peer's flows are read on their own ([`Reading::of`]): one
/// peer with a real exchange makes the port breakage, whatever it or others did
/// elsewhere; a scanner's flows are set aside only while they look like probes.
pub fn classify(
    direction: Direction,
    evidence: Option<&PortEvidence>,
    scans: &ScanTracker,
) -> Classified {
    let plain = |class, reason: &str| Classified {
        class,
        reason: reason.to_owned(),
        health_checks: Vec::new(),
    };
    if direction == Direction::Out {
        return plain(
            Class::Breakage,
            "outbound: a local process opened these flows",
        );
    }
    let Some(ev) = evidence.filter(|e| e.total.flows > 0) else {
        return plain(
            Class::Unclear,
            "no flow evidence (not TCP/UDP, or older than the evidence)",
        );
    };
    // Peers beyond the tracked ones are read together, never as scanners: the safe side.
    let mut by: BTreeMap<Reading, (PeerEvidence, u64)> = BTreeMap::new();
    let mut health_checks = Vec::new();
    let untracked = (ev.untracked.flows > 0).then_some(("other peers", &ev.untracked, false));
    let tracked = ev
        .peers
        .iter()
        .map(|(peer, p)| (peer.as_str(), p, scans.is_scanner(peer)));
    for (peer, p, scanner) in tracked.chain(untracked) {
        let reading = Reading::of(p, scanner);
        let slot = by.entry(reading).or_default();
        slot.0.add(p);
        slot.1 += 1;
        if reading == Reading::HealthCheck && peer != "other peers" {
            health_checks.push(HealthCheck {
                peer: peer.to_owned(),
                flows: p.flows,
                handshakes: p.handshakes,
                interval_seconds: p.last_flow.saturating_sub(p.first_flow)
                    / p.flows.saturating_sub(1).max(1),
                first_flow: p.first_flow,
                last_flow: p.last_flow,
            });
        }
    }
    let (reading, (e, peers)) = by
        .iter()
        .next()
        .map(|(r, v)| (*r, *v))
        .expect("a port with flows has a peer");
    let reason = match reading {
        Reading::Exchange => format!(
            "{} flow(s) from {peers} peer(s) exchanged payload both ways",
            e.flows_with_payload_both_ways
        ),
        Reading::HealthCheck => format!(
            "{peers} peer(s) connected again and again without payload ({} handshakes): health checks? enforcing breaks them",
            e.handshakes
        ),
        Reading::OneWay => format!(
            "peers sent {} payload bytes in {} flow(s) that got no answer",
            e.payload_bytes_in, e.flows_with_peer_payload
        ),
        Reading::SilentHandshake => format!(
            "{} completed handshake(s) from {peers} peer(s) that sent nothing: a connect check or a client waiting for a banner? not a scanner's pattern",
            e.silent_handshakes()
        ),
        Reading::ScanProbe => format!(
            "only scanners' probes: {} flow(s) from {peers} peer(s), at most {SCAN_REPEATS} each, no payload from them ({} connect-and-reset, the rest from peers that touched {SCAN_PORTS} or more ports)",
            e.flows, e.connect_resets
        ),
        Reading::Attempt => format!(
            "no handshake and no payload from peers: {} flow(s) from {peers} peer(s)",
            e.flows
        ),
    };
    Classified {
        class: reading.class(),
        reason,
        health_checks,
    }
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
    /// What its flows here read as (inbound; null outbound).
    pub reading: Option<Reading>,
    /// Its flows.
    #[serde(flatten)]
    pub flows: PeerEvidence,
}

impl Evidence {
    pub(super) fn new(direction: Direction, e: &PortEvidence, scans: &ScanTracker) -> Self {
        let mut peers: Vec<PeerFinding> = e
            .peers
            .iter()
            .map(|(address, flows)| PeerFinding {
                address: address.clone(),
                scanner: scans.is_scanner(address),
                reading: (direction == Direction::In)
                    .then(|| Reading::of(flows, scans.is_scanner(address))),
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
    let checks: Vec<String> = ports
        .iter()
        .flat_map(|f| {
            f.health_checks
                .iter()
                .map(move |h| format!("{} -> {}", h.peer, port_name(f)))
        })
        .collect();
    if !checks.is_empty() {
        parts.push(format!(
            "health checks? enforcing fails {}",
            checks.join(", ")
        ));
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
