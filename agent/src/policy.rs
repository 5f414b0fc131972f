//! The compiled policy: what the compiler produces from a profile and a site config, and
//! what every later stage consumes (the map image, `explain`, `status`, `report`).
//!
//! It is flat, sorted and deterministic: the same inputs give the same `Policy`, byte for
//! byte, so two compilations can be compared and a reload can tell what changed.

use std::fmt;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Who opens the flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// A remote peer opens the flow to a local port.
    In,
    /// This host opens the flow to a remote port.
    Out,
}

impl Direction {
    /// The datapath's encoding (`portcullis_common::policy::DIR_*`).
    pub fn code(self) -> u8 {
        match self {
            Direction::In => portcullis_common::policy::DIR_IN,
            Direction::Out => portcullis_common::policy::DIR_OUT,
        }
    }

    /// From the datapath's encoding.
    pub fn from_code(code: u8) -> Self {
        if code == portcullis_common::policy::DIR_IN {
            Direction::In
        } else {
            Direction::Out
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::In => "in",
            Direction::Out => "out",
        })
    }
}

/// A transport protocol the policy can open ports for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => portcullis_common::policy::IPPROTO_TCP,
            Protocol::Udp => portcullis_common::policy::IPPROTO_UDP,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// Where a rule applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleScope {
    /// Any peer (or the rule's peer group).
    Any,
    /// Loopback peers only (services that listen on 127.0.0.1/::1). Such rules only
    /// matter with `loopback = "enforce"`; otherwise loopback is exempt anyway.
    Loopback,
}

/// audit | enforce.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Decide and count, drop nothing.
    #[default]
    Audit,
    /// Drop what is denied.
    Enforce,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Audit => "audit",
            Mode::Enforce => "enforce",
        })
    }
}

/// How loopback traffic is treated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoopbackMode {
    /// 127.0.0.0/8 and ::1 pass, counted on their own.
    #[default]
    Exempt,
    /// The rules apply on loopback too.
    Enforce,
}

/// One rule of the compiled policy, as the profile or the site wrote it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// Stable id, unique in the policy (counters are keyed by it).
    pub id: String,
    /// in | out.
    pub direction: Direction,
    /// tcp | udp (a rule written for both becomes two entries, same id).
    pub protocols: Vec<Protocol>,
    /// Inclusive port ranges, sorted, merged.
    pub ports: Vec<(u16, u16)>,
    /// The feature that turns it on (None: always on).
    pub feature: Option<String>,
    /// any | loopback.
    pub scope: RuleScope,
    /// The peer group it is limited to (None: any peer).
    pub peers: Option<String>,
    /// The vendor's reason, short.
    pub why: String,
    /// Document and row it comes from ("site" for site rules).
    pub source: String,
    /// What a port rule cannot express about the vendor's row (host names, ...).
    pub note: Option<String>,
}

/// A named set of networks. A rule limited to a peer group refers to one by index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerSet {
    /// The group's name (`loopback` is built in).
    pub name: String,
    /// Its networks, sorted, deduplicated.
    pub networks: Vec<IpNet>,
}

/// One line of the flat policy: a port range opened in one direction for one protocol,
/// to any peer or to one peer set, by one rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Entry {
    /// in | out.
    pub direction: Direction,
    /// tcp | udp.
    pub protocol: Protocol,
    /// First port, inclusive.
    pub from: u16,
    /// Last port, inclusive.
    pub to: u16,
    /// Index into `Policy::peer_sets`, or None for any peer.
    pub peer_set: Option<usize>,
    /// Index into `Policy::rules`.
    pub rule: usize,
}

/// The compiled policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Profile slug.
    pub product: String,
    /// audit | enforce.
    pub mode: Mode,
    /// exempt | enforce.
    pub loopback: LoopbackMode,
    /// Whether ICMP echo passes.
    pub icmp_echo: bool,
    /// Rules in policy order (profile rules, then site rules, then the failsafe rule).
    pub rules: Vec<Rule>,
    /// Peer sets the entries refer to.
    pub peer_sets: Vec<PeerSet>,
    /// The flat, sorted entries.
    pub entries: Vec<Entry>,
}
