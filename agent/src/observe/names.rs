//! The `names` section of `status`: the DNS settings in force, each address the kernel
//! learned from a trusted resolver's answer with the policy names it stands for (the
//! kernel keeps pattern hashes; the state file maps them back to the names as written)
//! and when each expires, and the learning counters. The metrics render the counters.

use std::net::{IpAddr, Ipv6Addr};

use portcullis_common::stats::dns;
use serde::Serialize;

use crate::{
    config::resolvers::Resolver,
    datapath::{names::Learning, state::NamesState},
};

/// The `names` section.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NamesStatus {
    /// `dns_grace` in force, seconds.
    pub dns_grace_secs: u32,
    /// The resolvers answers are learned from.
    pub trusted_resolvers: Vec<Resolver>,
    /// Addresses with at least one name still valid, by address.
    pub learned: Vec<LearnedAddress>,
    /// The learning counters.
    pub counters: NameCounters,
}

/// One learned address.
#[derive(Clone, Debug, Serialize)]
pub struct LearnedAddress {
    /// The address (IPv4 without its mapping).
    pub address: IpAddr,
    /// The policy's names it was learned through, still valid.
    pub names: Vec<LearnedName>,
}

/// A name an address was learned through.
#[derive(Clone, Debug, Serialize)]
pub struct LearnedName {
    /// The name or wildcard as the policy writes it.
    pub pattern: String,
    /// The peer groups that list it.
    pub groups: Vec<String>,
    /// Until new flows to the address stop being allowed through it (TTL + grace).
    pub expires_in_ms: u64,
}

/// The learning counters (NAMES-CONTRACT.md).
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct NameCounters {
    /// Answers from a trusted resolver that taught at least one address.
    pub answers_learned: u64,
    /// Address records stored from them.
    pub addresses_learned: u64,
    /// Packets from port 53 of an untrusted address (never learned from).
    pub untrusted: u64,
    /// Trusted resolvers' messages that answer no question this host has in flight
    /// (never learned from).
    pub unsolicited: u64,
    /// Trusted answers for a name no group lists.
    pub unlisted: u64,
    /// Trusted messages the parser found broken.
    pub malformed: u64,
    /// Learned addresses swept after they expired.
    pub expired: u64,
    /// Learned addresses the LRU pushed out, plus names pushed out of an address's
    /// slots, while still valid.
    pub evicted: u64,
    /// New addresses not learned because a name pattern of the answer held its limit
    /// (`LEARNED_PER_NAME`) of addresses.
    pub over_limit: u64,
}

/// The section, from the state file's names and what the kernel holds (None: the
/// maps could not be read, e.g. pins of an older version) at boot time `now_ns`.
pub fn build(state: &NamesState, learning: Option<&Learning>, now_ns: u64) -> NamesStatus {
    let mut out = NamesStatus {
        dns_grace_secs: state.dns_grace_secs,
        trusted_resolvers: state.trusted_resolvers.clone(),
        ..NamesStatus::default()
    };
    let Some(learning) = learning else {
        return out;
    };
    out.counters = NameCounters {
        answers_learned: learning.counter(dns::ANSWERS_LEARNED),
        addresses_learned: learning.counter(dns::ADDRESSES_LEARNED),
        untrusted: learning.counter(dns::UNTRUSTED),
        unsolicited: learning.counter(dns::UNSOLICITED),
        unlisted: learning.counter(dns::UNLISTED),
        malformed: learning.counter(dns::MALFORMED),
        expired: learning.counter(dns::EXPIRED),
        evicted: learning.evicted(),
        over_limit: learning.counter(dns::OVER_LIMIT),
    };
    for (key, value) in &learning.learned {
        let names: Vec<LearnedName> = value
            .names
            .iter()
            .filter(|n| n.hash != 0 && n.expires_ns > now_ns)
            .filter_map(|n| {
                let p = state.pattern(n.hash, n.kind)?;
                Some(LearnedName {
                    pattern: p.pattern.clone(),
                    groups: p.groups.clone(),
                    expires_in_ms: (n.expires_ns - now_ns) / 1_000_000,
                })
            })
            .collect();
        if !names.is_empty() {
            out.learned.push(LearnedAddress {
                address: display_addr(key.addr),
                names,
            });
        }
    }
    out.learned.sort_by_key(|l| l.address);
    out
}

/// What the running agent's kernel learned for `addrs` (the entries among them), or
/// None when no agent runs with these paths (no state file or maps).
pub fn learned_for(
    paths: &crate::datapath::paths::PathArgs,
    addrs: &[IpAddr],
) -> Option<Vec<LearnedAddress>> {
    let state = crate::datapath::state::State::read(&paths.state_file()).ok()?;
    let learning = crate::datapath::names::read(paths).ok()?;
    let now = crate::datapath::names::boot_ns();
    let all = build(&state.names, Some(&learning), now);
    Some(
        all.learned
            .into_iter()
            .filter(|l| addrs.contains(&l.address))
            .collect(),
    )
}

/// A 16-byte datapath address as people write it (IPv4 unmapped).
fn display_addr(addr: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// The section as text: the settings, then one line per (name, address).
pub fn table(n: &NamesStatus) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let resolvers: Vec<String> = n
        .trusted_resolvers
        .iter()
        .map(|r| format!("{} ({})", r.network, r.source))
        .collect();
    let c = &n.counters;
    let _ = writeln!(
        o,
        "names: dns_grace {}s, trusted resolvers: {}",
        n.dns_grace_secs,
        if resolvers.is_empty() {
            "none".to_owned()
        } else {
            resolvers.join(", ")
        }
    );
    let _ = writeln!(
        o,
        "  answers learned {}  addresses learned {}  untrusted {}  unsolicited {}  unlisted {}  malformed {}  expired {}  evicted {}  over limit {}",
        c.answers_learned,
        c.addresses_learned,
        c.untrusted,
        c.unsolicited,
        c.unlisted,
        c.malformed,
        c.expired,
        c.evicted,
        c.over_limit
    );
    if n.learned.is_empty() {
        return o;
    }
    let _ = writeln!(
        o,
        "  {:<32} {:<24} {:<39} {:>10}",
        "NAME", "GROUPS", "ADDRESS", "EXPIRES"
    );
    let mut rows: Vec<(&str, String, String, u64)> = n
        .learned
        .iter()
        .flat_map(|l| {
            l.names.iter().map(move |name| {
                (
                    name.pattern.as_str(),
                    name.groups.join(","),
                    l.address.to_string(),
                    name.expires_in_ms,
                )
            })
        })
        .collect();
    rows.sort();
    for (pattern, groups, address, ms) in rows {
        let _ = writeln!(
            o,
            "  {pattern:<32} {groups:<24} {address:<39} {:>9}s",
            ms / 1000
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::state::PatternState;
    use portcullis_common::names::{KIND_WILDCARD, Learned, LearnedKey, LearnedName as Slot};

    #[test]
    fn learned_patterns_map_back_to_names_and_expired_ones_go() {
        let hash = portcullis_common::names::name_hash(&Default::default(), "lab.test");
        let state = NamesState {
            dns_grace_secs: 60,
            trusted_resolvers: Vec::new(),
            patterns: vec![PatternState {
                pattern: "*.lab.test".into(),
                hash,
                kind: KIND_WILDCARD,
                groups: vec!["vendor-updates".into()],
            }],
        };
        let slot = |expires_ns| Slot {
            hash,
            expires_ns,
            kind: KIND_WILDCARD,
            _pad: [0; 7],
        };
        let mut live = Learned::default();
        live.names[0] = slot(5_000_000_000);
        let mut gone = Learned::default();
        gone.names[0] = slot(1_000);
        let key = |last| LearnedKey {
            addr: portcullis_common::policy::v4_mapped([198, 19, 0, last]),
        };
        let mut counters = vec![0; dns::LEN as usize];
        counters[dns::INSERTED as usize] = 5;
        counters[dns::EXPIRED as usize] = 1;
        let learning = Learning {
            counters,
            learned: vec![(key(1), live), (key(2), gone)],
        };
        let n = build(&state, Some(&learning), 2_000_000_000);
        assert_eq!(n.learned.len(), 1);
        assert_eq!(n.learned[0].address.to_string(), "198.19.0.1");
        assert_eq!(n.learned[0].names[0].pattern, "*.lab.test");
        assert_eq!(n.learned[0].names[0].expires_in_ms, 3000);
        // 5 inserted = 2 present + 1 swept + 2 evicted by the LRU.
        assert_eq!(n.counters.evicted, 2);
        assert!(table(&n).contains("*.lab.test"));
    }
}
