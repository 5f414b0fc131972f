//! The status model: the running policy and its counters, per layer, as one
//! [`Status`] value. `status` prints it (as tables through `observe::table`, or as JSON),
//! the metrics endpoint renders it. The JSON form is a contract for scripts; README.md
//! documents it.

use portcullis_common::{
    policy::{DIR_IN, DIR_OUT},
    stats::{self, Counter, reason},
};
use serde::Serialize;

use crate::{
    datapath::{
        attach::pinned_links,
        counters,
        names::{self as datapath_names, Learning},
        paths::PathArgs,
        state::State,
    },
    model::{Direction, IpProtocol, LoopbackMode, Mode, ScopeTarget},
    observe::names::{self, NamesStatus},
    systemd::protection::{self, UnitProtection},
};

/// Packets and bytes.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Traffic {
    /// Packets (wire packets: GSO buffers count their segments).
    pub packets: u64,
    /// Bytes (IP header and payload).
    pub bytes: u64,
}

impl From<Counter> for Traffic {
    fn from(c: Counter) -> Self {
        Self {
            packets: c.packets,
            bytes: c.bytes,
        }
    }
}

/// One rule and what it allowed.
#[derive(Debug, Serialize)]
pub struct RuleStatus {
    /// Stable rule id.
    pub id: String,
    /// in | out.
    pub direction: String,
    /// tcp | udp | tcp,udp.
    pub protocol: String,
    /// Ports as written.
    pub ports: String,
    /// Allowed packets.
    pub packets: u64,
    /// Allowed bytes.
    pub bytes: u64,
}

/// Denies (or would-denies) for one direction and reason.
#[derive(Debug, Serialize)]
pub struct DenyStatus {
    /// in | out.
    pub direction: Direction,
    /// no-rule | peer | state | protocol | icmp | malformed.
    pub reason: &'static str,
    /// false: dropped (enforce mode); true: would have been dropped (audit mode).
    pub audit: bool,
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// One entry of the denied-ports table.
#[derive(Debug, Serialize)]
pub struct DeniedPort {
    /// in | out.
    pub direction: Direction,
    /// tcp | udp | icmp | icmpv6 | the protocol number.
    pub protocol: IpProtocol,
    /// Local port (in) or remote port (out).
    pub port: u16,
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// Deny-event delivery.
#[derive(Debug, Serialize)]
pub struct EventStatus {
    /// Events written to the ring buffer.
    pub sent: u64,
    /// Events the in-kernel rate limit suppressed.
    pub rate_limited: u64,
    /// Events lost because the ring buffer was full.
    pub ring_full: u64,
}

/// An interface the XDP program is attached to.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct XdpInterface {
    /// Interface name.
    pub interface: String,
    /// native (in the driver) | generic (on an skb: drivers without native XDP).
    pub mode: crate::datapath::xdp::XdpMode,
}

/// The XDP layer: where it is attached and what it counted. Its counters are its own:
/// a packet XDP passes and a cgroup program then judges is counted once in each layer.
#[derive(Debug, Default, Serialize)]
pub struct XdpStatus {
    /// Interfaces with the XDP program (empty when XDP is not in use).
    pub interfaces: Vec<XdpInterface>,
    /// Allowed per rule (rules with traffic only), in policy order.
    pub rules: Vec<XdpRule>,
    /// Sum over `rules`.
    pub allowed: Traffic,
    /// Non-zero deny counters.
    pub denies: Vec<DenyStatus>,
    /// Sum of drops.
    pub denied: Traffic,
    /// Sum of would-drops (audit mode).
    pub would_deny: Traffic,
    /// ICMP errors, neighbour discovery and allowed echo.
    pub icmp_passed: Traffic,
    /// Non-IP frames (ARP, LLDP, ...), which always pass.
    pub non_ip_passed: Traffic,
    /// Frames whose headers could not be parsed.
    pub malformed: Traffic,
    /// Denied (direction, protocol, port), most packets first.
    pub denied_ports: Vec<DeniedPort>,
}

/// A rule's traffic at the XDP layer.
#[derive(Debug, Serialize)]
pub struct XdpRule {
    /// Stable rule id.
    pub id: String,
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// The whole `status --json` document.
#[derive(Debug, Serialize)]
pub struct Status {
    /// Profile slug.
    pub product: String,
    /// audit | enforce.
    pub mode: Mode,
    /// exempt | enforce.
    pub loopback: LoopbackMode,
    /// Scopes the programs are attached to.
    pub scopes: Vec<ScopeTarget>,
    /// Pinned links (4 per scope while attached).
    pub attached_links: usize,
    /// Live policy generation (0 or 1).
    pub generation: u32,
    /// Policy installs since start.
    pub policy_version: u64,
    /// Fingerprint of what the live policy enforces (equal on hosts that run the same
    /// config, whatever their policy_version).
    pub policy_digest: String,
    /// Unix time of the last install.
    pub loaded_at: u64,
    /// Agent pid.
    pub pid: u32,
    /// Allowed traffic per rule, in policy order.
    pub rules: Vec<RuleStatus>,
    /// Sum over `rules`.
    pub allowed: Traffic,
    /// Non-zero deny counters.
    pub denies: Vec<DenyStatus>,
    /// Sum of denies (enforce mode).
    pub denied: Traffic,
    /// Sum of would-denies (audit mode).
    pub would_deny: Traffic,
    /// Loopback traffic let through by the exemption.
    pub loopback_exempt: Traffic,
    /// ICMP errors, neighbour discovery and allowed echo.
    pub icmp_passed: Traffic,
    /// Packets whose headers could not be parsed.
    pub malformed: Traffic,
    /// Denied (direction, protocol, port), most packets first.
    pub denied_ports: Vec<DeniedPort>,
    /// Deny-event delivery.
    pub events: EventStatus,
    /// The XDP layer.
    pub xdp: XdpStatus,
    /// Host names: the addresses learned from DNS answers, and the counters.
    pub names: NamesStatus,
    /// Per unit of a unit scope (each instance of a template): whether it is protected,
    /// measured on its live cgroup and its effective ExecCondition= (empty without unit
    /// scopes).
    pub units: Vec<UnitProtection>,
}

/// Reads state and counters into a [`Status`].
pub fn collect(paths: &PathArgs) -> anyhow::Result<Status> {
    let state = State::read(&paths.state_file())?;
    let snap = counters::read(paths)?;
    let learning = learned(paths);
    let units = protection::units(paths, &state.scopes);
    let mut status = build(state, &snap, &pinned_links(paths), learning.as_ref());
    status.units = units;
    Ok(status)
}

/// What the kernel learned from DNS answers; None (logged) when its maps cannot be
/// read, e.g. pins left by a version without them: the rest of the status still shows.
pub fn learned(paths: &PathArgs) -> Option<Learning> {
    datapath_names::read(paths)
        .inspect_err(|e| log::debug!("no learned host names: {e:#}"))
        .ok()
}

/// A [`Status`] from a state file and a counter snapshot already read (the metrics
/// endpoint reads each once and needs both).
pub fn build(
    state: State,
    snap: &counters::Snapshot,
    links: &[std::path::PathBuf],
    learning: Option<&Learning>,
) -> Status {
    let attached_links = links.len();
    let paths_links = links;
    let rules: Vec<RuleStatus> = state
        .rules
        .iter()
        .map(|r| {
            let c = snap.rules.get(&r.index).copied().unwrap_or_default();
            RuleStatus {
                id: r.id.clone(),
                direction: r.direction.clone(),
                protocol: r.protocol.clone(),
                ports: r.ports.clone(),
                packets: c.packets,
                bytes: c.bytes,
            }
        })
        .collect();
    let allowed = rules.iter().fold(Traffic::default(), |t, r| Traffic {
        packets: t.packets + r.packets,
        bytes: t.bytes + r.bytes,
    });
    let (denies, denied, would_deny) = deny_summary(|i| snap.stat(i));
    let denied_ports = denied_ports(&snap.denied);
    let xdp = xdp_status(&state, snap, paths_links);
    let names = names::build(&state.names, learning, datapath_names::boot_ns());
    Status {
        product: state.product,
        mode: state.mode,
        loopback: state.loopback,
        scopes: state.scopes,
        attached_links,
        generation: state.generation,
        policy_version: state.policy_version,
        policy_digest: state.policy_digest.clone(),
        loaded_at: state.loaded_at,
        pid: state.pid,
        rules,
        allowed,
        denies,
        denied,
        would_deny,
        loopback_exempt: snap.stat(stats::PASS_LOOPBACK).into(),
        icmp_passed: snap.stat(stats::PASS_ICMP).into(),
        malformed: snap.stat(stats::MALFORMED).into(),
        denied_ports,
        events: EventStatus {
            sent: snap.stat(stats::EVENTS_SENT).packets,
            rate_limited: snap.stat(stats::EVENTS_RATE_LIMITED).packets,
            ring_full: snap.stat(stats::EVENTS_RING_FULL).packets,
        },
        xdp,
        names,
        units: Vec::new(),
    }
}

/// Denies and would-denies of one layer, by direction and reason, with their sums.
fn deny_summary(stat: impl Fn(u32) -> Counter) -> (Vec<DenyStatus>, Traffic, Traffic) {
    let mut denies = Vec::new();
    let (mut denied, mut would_deny) = (Traffic::default(), Traffic::default());
    for audit in [false, true] {
        for dir in [DIR_IN, DIR_OUT] {
            for (r, name) in reason::NAMES.iter().enumerate() {
                let c = stat(stats::deny_index(audit, dir, r as u32));
                if c.packets == 0 {
                    continue;
                }
                let total = if audit { &mut would_deny } else { &mut denied };
                total.packets += c.packets;
                total.bytes += c.bytes;
                denies.push(DenyStatus {
                    direction: Direction::from_code(dir),
                    reason: name,
                    audit,
                    packets: c.packets,
                    bytes: c.bytes,
                });
            }
        }
    }
    (denies, denied, would_deny)
}

/// A layer's denied-port table, most packets first.
fn denied_ports(
    table: &std::collections::BTreeMap<portcullis_common::stats::DeniedKey, Counter>,
) -> Vec<DeniedPort> {
    let mut v: Vec<DeniedPort> = table
        .iter()
        .map(|(k, c)| DeniedPort {
            direction: Direction::from_code(k.direction),
            protocol: IpProtocol(k.protocol),
            port: k.port,
            packets: c.packets,
            bytes: c.bytes,
        })
        .collect();
    v.sort_by(|a, b| b.packets.cmp(&a.packets).then(a.port.cmp(&b.port)));
    v
}

/// The XDP layer's status: interfaces from the link pins, counters from the XDP layer.
fn xdp_status(state: &State, snap: &counters::Snapshot, links: &[std::path::PathBuf]) -> XdpStatus {
    let interfaces = links
        .iter()
        .filter_map(|p| crate::datapath::xdp::describe_pin(p))
        .map(|(interface, mode)| XdpInterface { interface, mode })
        .collect();
    let rules: Vec<XdpRule> = state
        .rules
        .iter()
        .filter_map(|r| {
            let c = snap.xdp_rules.get(&r.index)?;
            Some(XdpRule {
                id: r.id.clone(),
                packets: c.packets,
                bytes: c.bytes,
            })
        })
        .collect();
    let allowed = rules.iter().fold(Traffic::default(), |t, r| Traffic {
        packets: t.packets + r.packets,
        bytes: t.bytes + r.bytes,
    });
    let (denies, denied, would_deny) = deny_summary(|i| snap.xdp_stat(i));
    XdpStatus {
        interfaces,
        rules,
        allowed,
        denies,
        denied,
        would_deny,
        icmp_passed: snap.xdp_stat(stats::PASS_ICMP).into(),
        non_ip_passed: snap.xdp_stat(stats::PASS_NON_IP).into(),
        malformed: snap.xdp_stat(stats::MALFORMED).into(),
        denied_ports: denied_ports(&snap.xdp_denied),
    }
}

#[cfg(test)]
mod tests {
    use crate::observe::table::tests::status;

    #[test]
    fn json_has_the_documented_fields() {
        let v = serde_json::to_value(status(1)).unwrap();
        for key in [
            "product",
            "mode",
            "loopback",
            "scopes",
            "attached_links",
            "generation",
            "policy_version",
            "policy_digest",
            "loaded_at",
            "pid",
            "rules",
            "allowed",
            "denies",
            "denied",
            "would_deny",
            "loopback_exempt",
            "icmp_passed",
            "malformed",
            "denied_ports",
            "events",
        ] {
            assert!(v.get(key).is_some(), "status --json lacks {key:?}");
        }
    }
}
