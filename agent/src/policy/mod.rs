//! The compiled policy: what the compiler produces from a profile and a site config, and
//! what every later stage consumes (the map image, `explain`, `status`, `report`).
//!
//! It is flat, sorted and deterministic: the same inputs give the same `Policy`, byte for
//! byte, so two compilations can be compared and a reload can tell what changed.

pub mod compiler;
pub mod export;
pub mod image;
pub mod verdict;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use crate::config::peers::HostName;
pub use crate::model::{Direction, LoopbackMode, Mode, Protocol, RuleScope};

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

/// A named set of networks and host names. A rule limited to a peer group refers to
/// one by index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerSet {
    /// The group's name (`loopback` is built in).
    pub name: String,
    /// Its networks, sorted, deduplicated.
    pub networks: Vec<IpNet>,
    /// Its host names and wildcards, sorted, deduplicated: addresses a trusted
    /// resolver gives for them join the set until their TTL (plus grace) runs out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<HostName>,
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

impl Policy {
    /// A short, stable fingerprint of what the policy enforces: its rules, peer sets,
    /// entries, loopback and echo settings, not its mode (audit and enforce of the same
    /// policy are the same policy). Hosts running the same config have the same digest,
    /// whatever their `policy_version` (which counts a host's own installs); the metrics
    /// export it so a fleet can see drift.
    pub fn digest(&self) -> String {
        use sha2::{Digest as _, Sha256};
        let what = (
            &self.product,
            self.loopback,
            self.icmp_echo,
            &self.rules,
            &self.peer_sets,
            &self.entries,
        );
        let bytes = serde_json::to_vec(&what).expect("a policy always serialises");
        Sha256::digest(bytes)[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}
