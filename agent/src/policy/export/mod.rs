//! Exports: the compiled [`Policy`] written out for a firewall other than the agent's
//! own datapath, a sibling of the map image (profile -> compiler -> policy -> image for
//! the kernel, or -> export for nftables and Windows Firewall).
//!
//! Both formats are rendered from the very policy the agent enforces (same rules, same
//! peer sets, same failsafe and loopback settings, same mode), in the order the
//! datapath lets a rule win a port: rules open to any peer first, in policy order, then
//! the rules limited to peer sets. Verdicts do not depend on that order (every rule
//! allows); which rule's counter a flow credits does.
//!
//! What a format cannot say is said in its output, as comments, and in docs/export.md.
//! What would change a verdict silently is refused instead ([`PolicyError`], exit 3).

pub mod nft;
pub mod windows;

use std::fmt::Write as _;

use ipnet::IpNet;

use super::{Direction, PeerSet, Policy, Rule};
use crate::config::PolicyError;

/// An output format of `portcullis export`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// An nftables ruleset (`nft -f FILE`): one table, `inet portcullis`.
    Nft,
    /// A PowerShell script of `New-NetFirewallRule` calls for Windows Firewall.
    WindowsFirewall,
}

/// Renders `policy` in `format`. `origin` says where the policy came from (the command
/// line or the config file); it goes into the header.
pub fn render(policy: &Policy, format: Format, origin: &str) -> Result<String, PolicyError> {
    match format {
        Format::Nft => nft::render(policy, origin),
        Format::WindowsFirewall => windows::render(policy, origin),
    }
}

/// Where a built-in product's policy came from, for the header: the product, the
/// features turned on, and that the site settings are the defaults.
pub fn product_origin(product: &str, features: &[String], all_features: bool) -> String {
    let features = if all_features {
        " --all-features".to_string()
    } else if features.is_empty() {
        String::new()
    } else {
        format!(" --feature {}", features.join(","))
    };
    format!("built-in product {product}{features}, default site settings")
}

/// A policy rule as an export writes it: the rule, its index in the policy, and the
/// peer set it is limited to (None: any peer).
pub struct Exported<'a> {
    /// Index in `Policy::rules`.
    pub index: usize,
    /// The rule.
    pub rule: &'a Rule,
    /// The peer set its entries are limited to (`loopback` for loopback-scoped rules);
    /// None when any peer may open it (no group, or a group the site lets be any).
    pub peers: Option<&'a PeerSet>,
}

/// The rules of one direction in the order the datapath lets them win a port: open to
/// any peer first (the first in policy order wins), then limited to peer sets.
pub fn ordered(policy: &Policy, direction: Direction) -> Vec<Exported<'_>> {
    let mut rules: Vec<Exported<'_>> = policy
        .rules
        .iter()
        .enumerate()
        .filter(|(_, r)| r.direction == direction)
        .map(|(index, rule)| Exported {
            index,
            rule,
            peers: peer_set_of(policy, index),
        })
        .collect();
    rules.sort_by_key(|e| (e.peers.is_some(), e.index));
    rules
}

/// The peer set the entries of rule `index` are limited to. The compiler gives every
/// entry of a rule the same one.
pub fn peer_set_of(policy: &Policy, index: usize) -> Option<&PeerSet> {
    policy
        .entries
        .iter()
        .find(|e| e.rule == index)
        .and_then(|e| e.peer_set)
        .map(|s| &policy.peer_sets[s])
}

/// The `#` comment line on a rule's peers: its group, or why a group it names lets
/// any peer through. None for a rule open to any peer by itself.
pub fn peers_note(e: &Exported<'_>) -> Option<String> {
    match (e.peers, &e.rule.peers) {
        (Some(set), _) => Some(format!("peers: group {}", set.name)),
        (None, Some(group)) => Some(format!(
            "peers: group {group}, which this site lets be any peer (any_peer_groups, or vendor_peers = \"any\")"
        )),
        (None, None) => None,
    }
}

/// A peer set's networks of one IP version (the config refuses host bits, so each is
/// written as the network it is).
pub fn networks(set: &PeerSet, v6: bool) -> impl Iterator<Item = &IpNet> {
    set.networks
        .iter()
        .filter(move |n| matches!(n, IpNet::V6(_)) == v6)
}

/// Ports as a firewall writes them: `25`, `465-466`, joined by `sep`.
pub fn port_list(ports: &[(u16, u16)], sep: &str) -> String {
    let mut out = String::new();
    for (i, &(from, to)) in ports.iter().enumerate() {
        if i > 0 {
            out.push_str(sep);
        }
        if from == to {
            let _ = write!(out, "{from}");
        } else {
            let _ = write!(out, "{from}-{to}");
        }
    }
    out
}

/// The host names of every peer set used by a rule, for the "cannot be expressed"
/// notes: (group, names).
pub fn named_groups(policy: &Policy) -> Vec<(&str, String)> {
    policy
        .peer_sets
        .iter()
        .filter(|s| !s.names.is_empty())
        .map(|s| {
            let names: Vec<String> = s.names.iter().map(ToString::to_string).collect();
            (s.name.as_str(), names.join(", "))
        })
        .collect()
}

/// What every export says about host names: the agent learns their addresses from
/// trusted DNS answers; a static ruleset cannot, so it keeps the safe side.
pub const NAMES_LIMIT: &str = "Host names in peer groups cannot be expressed: the agent \
learns their addresses from trusted DNS answers as they arrive, a static ruleset cannot. \
Safe side: a rule limited to such a group lets only the group's networks through, so \
flows to the names are denied until you add their addresses";

#[cfg(test)]
mod tests;
