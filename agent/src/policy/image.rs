//! The map image: a compiled [`Policy`] turned into the exact values the kernel's policy
//! maps get for one generation, and a userspace mirror of those maps.
//!
//! The mirror implements `portcullis_common::policy::PolicyTables`, so `explain` and the
//! tests evaluate flows with the very `decide` function the eBPF programs run, on the
//! very values the loader writes. There is no second implementation of the lookup.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use anyhow::{Context as _, bail};
use ipnet::IpNet;
use portcullis_common::{
    maps::{MAX_RULES, NAMES_MAX, PEERS_MAX, SLOT_NAMES_MAX},
    names::{
        self, HashKey, KIND_EXACT, KIND_WILDCARD, Learned, NameKey, NameTables, NameValue, SlotKey,
        SlotNames, WireName,
    },
    policy::{self, Decision, PEER_SET_BITS, PeerAddr, PolicyTables, port_entry, port_index},
};

use crate::policy::{Direction, Policy, Protocol};

/// Kernel rule indices (1..MAX_RULES) for the rule ids of a policy. Counters are kept by
/// index, so an id keeps its index across reloads ([`RuleIndex::carry_over`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleIndex {
    by_id: BTreeMap<String, u16>,
}

impl RuleIndex {
    /// Numbers the policy's rules 1, 2, ... in policy order.
    pub fn fresh(policy: &Policy) -> anyhow::Result<Self> {
        Self::carry_over(&Self::default(), policy)
    }

    /// Keeps the index of every id `previous` knows; gives new ids the lowest free ones.
    /// Indices of ids that left the policy are freed (their counters are reset when
    /// reused, see `loader`).
    pub fn carry_over(previous: &RuleIndex, policy: &Policy) -> anyhow::Result<Self> {
        let mut by_id = BTreeMap::new();
        let mut used = vec![false; MAX_RULES as usize];
        used[0] = true;
        for rule in &policy.rules {
            if let Some(&i) = previous.by_id.get(&rule.id) {
                by_id.insert(rule.id.clone(), i);
                used[i as usize] = true;
            }
        }
        let mut free = (1..MAX_RULES as usize).filter(|&i| !used[i]);
        for rule in &policy.rules {
            if !by_id.contains_key(&rule.id) {
                let Some(i) = free.next() else {
                    bail!("the policy has more than {} rules", MAX_RULES - 1);
                };
                by_id.insert(rule.id.clone(), i as u16);
            }
        }
        Ok(Self { by_id })
    }

    /// An index read back from the state file.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, u16)>) -> Self {
        Self {
            by_id: pairs.into_iter().collect(),
        }
    }

    /// The index of a rule id.
    pub fn get(&self, id: &str) -> Option<u16> {
        self.by_id.get(id).copied()
    }

    /// (id, index) pairs, by id.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u16)> {
        self.by_id.iter().map(|(id, i)| (id.as_str(), *i))
    }
}

/// One `PEERS` trie entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerEntry {
    /// Bits matched: `PEER_SET_BITS` + the network's prefix in IPv6 form.
    pub prefix_len: u32,
    /// Key data.
    pub key: PeerAddr,
    /// Rule index.
    pub rule: u16,
}

/// The values of one policy generation.
#[derive(Clone, Debug)]
pub struct Image {
    /// Which generation (0 or 1) these values are for.
    pub generation: u32,
    /// `PORTS` values for this generation: 4 tables of 65536 (in/out × tcp/udp), in
    /// `port_index` order starting at `port_index(generation, IN, TCP, 0)`.
    pub ports: Vec<u32>,
    /// `PEERS` entries for this generation.
    pub peers: Vec<PeerEntry>,
    /// Kernel rule index of each rule of the policy, in policy order.
    pub rule_index: Vec<u16>,
    /// `NAMES` entries for this generation: each host name and wildcard with the name
    /// groups (bits) it is in. A peer set's bit is its rank among the sets with names.
    pub names: BTreeMap<NameKey, NameValue>,
    /// `SLOT_NAMES` entries for this generation: the name groups of each slot.
    pub slot_names: BTreeMap<SlotKey, SlotNames>,
    /// The key the `NAMES` hashes are under (the datapath's, see `maps::NAME_KEY`).
    pub key: HashKey,
    peer_lookup: HashMap<(u32, u32, [u8; 16]), u16>,
}

const TABLES: [(Direction, Protocol); 4] = [
    (Direction::In, Protocol::Tcp),
    (Direction::In, Protocol::Udp),
    (Direction::Out, Protocol::Tcp),
    (Direction::Out, Protocol::Udp),
];

impl Image {
    /// Builds the image of `policy` for `generation`, with rule indices from `index` and
    /// host names hashed under `key`. What the image decides does not depend on the key
    /// (a hash only finds a pattern, whose name is then compared whole): commands that
    /// only evaluate the policy pass any key, [`HashKey::default`]; the loader passes the
    /// datapath's.
    pub fn build(
        policy: &Policy,
        index: &RuleIndex,
        generation: u32,
        key: &HashKey,
    ) -> anyhow::Result<Self> {
        let generation = generation & 1;
        let rule_index = policy
            .rules
            .iter()
            .map(|r| {
                index
                    .get(&r.id)
                    .with_context(|| format!("rule {:?} has no index", r.id))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let base = port_index(generation, policy::DIR_IN, policy::IPPROTO_TCP, 0).unwrap_or(0);
        let mut ports = vec![0u32; 4 * 65536];
        let mut peers = Vec::new();
        // Peer-restricted candidates of a port: (rule order, peer set), and the slot
        // (trie set id) given to each distinct list of them.
        let mut slots: HashMap<Vec<(usize, usize)>, u16> = HashMap::new();

        for (dir, proto) in TABLES {
            let offset = (port_index(generation, dir.code(), proto.number(), 0).unwrap_or(0) - base)
                as usize;
            let entries: Vec<_> = policy
                .entries
                .iter()
                .filter(|e| e.direction == dir && e.protocol == proto)
                .collect();
            // Any-peer rules: the first rule in policy order wins a port (write in
            // reverse order so earlier rules overwrite later ones).
            let mut any = vec![usize::MAX; 65536];
            for e in entries.iter().filter(|e| e.peer_set.is_none()) {
                for p in e.from..=e.to {
                    let slot = &mut any[p as usize];
                    *slot = (*slot).min(e.rule);
                }
            }
            let mut restricted: BTreeMap<u16, Vec<(usize, usize)>> = BTreeMap::new();
            for e in &entries {
                if let Some(set) = e.peer_set {
                    for p in e.from..=e.to {
                        if any[p as usize] == usize::MAX {
                            restricted.entry(p).or_default().push((e.rule, set));
                        }
                    }
                }
            }
            for (p, &r) in any.iter().enumerate() {
                if r != usize::MAX {
                    ports[offset + p] = port_entry(rule_index[r], 0);
                }
            }
            for (p, mut cands) in restricted {
                cands.sort_unstable();
                cands.dedup();
                let next = slots.len() + 1;
                if next > u16::MAX as usize {
                    bail!(
                        "too many distinct peer-restricted port groups (more than {})",
                        u16::MAX
                    );
                }
                let slot = *slots.entry(cands).or_insert(next as u16);
                ports[offset + p as usize] = port_entry(0, slot);
            }
        }

        // Trie entries of each slot: every network of every candidate, the first rule in
        // policy order winning where two rules name the same network.
        let mut peer_lookup = HashMap::new();
        let mut by_slot: Vec<_> = slots.into_iter().collect();
        by_slot.sort_by_key(|(_, s)| *s);
        for (cands, slot) in &by_slot {
            let slot = *slot;
            for &(rule, set) in cands {
                for net in &policy.peer_sets[set].networks {
                    let (addr, bits) = ipv6_form(net);
                    let key = PeerAddr::new(generation, slot, addr);
                    let prefix_len = PEER_SET_BITS + bits;
                    let k = (u32::from_be_bytes(key.set), prefix_len, addr);
                    if let std::collections::hash_map::Entry::Vacant(v) = peer_lookup.entry(k) {
                        v.insert(rule_index[rule]);
                        peers.push(PeerEntry {
                            prefix_len,
                            key,
                            rule: rule_index[rule],
                        });
                    }
                }
            }
        }
        let (names, slot_names) = name_tables(policy, &rule_index, generation, key, &by_slot)?;
        if names.len() > NAMES_MAX as usize / 2 || slot_names.len() > SLOT_NAMES_MAX as usize / 2 {
            bail!(
                "the policy needs {} host name entries and {} port groups with names; at most {} and {} fit",
                names.len(),
                slot_names.len(),
                NAMES_MAX / 2,
                SLOT_NAMES_MAX / 2
            );
        }
        if peers.len() > PEERS_MAX as usize / 2 {
            bail!(
                "the policy needs {} peer entries; at most {} fit",
                peers.len(),
                PEERS_MAX / 2
            );
        }
        Ok(Self {
            generation,
            ports,
            peers,
            rule_index,
            names,
            slot_names,
            key: *key,
            peer_lookup,
        })
    }

    /// The verdict on a new flow to `peer` as if a trusted resolver had just given
    /// `peer` as an address of `host` (what the datapath learns from DNS answers).
    pub fn decide_learned(
        &self,
        direction: Direction,
        protocol: Protocol,
        port: u16,
        peer: IpAddr,
        host: &str,
    ) -> Decision {
        let mut learned = Learned::default();
        if let Some(name) = WireName::new(&self.key, host.trim_end_matches('.')) {
            names::record_listed(
                self,
                &self.key,
                &name,
                self.generation,
                u64::MAX,
                &mut learned,
            );
        }
        let with = WithLearned {
            image: self,
            peer: addr16(peer),
            learned,
        };
        policy::decide(
            &with,
            self.generation,
            direction.code(),
            protocol.number(),
            port,
            &addr16(peer),
        )
    }

    /// The verdict on a new flow, computed by the datapath's own `decide`.
    pub fn decide(
        &self,
        direction: Direction,
        protocol: Protocol,
        port: u16,
        peer: IpAddr,
    ) -> Decision {
        policy::decide(
            self,
            self.generation,
            direction.code(),
            protocol.number(),
            port,
            &addr16(peer),
        )
    }

    /// `PORTS` index of the first value of [`Image::ports`].
    pub fn ports_base(&self) -> u32 {
        port_index(self.generation, policy::DIR_IN, policy::IPPROTO_TCP, 0).unwrap_or(0)
    }
}

impl PolicyTables for Image {
    fn port_entry(&self, index: u32) -> u32 {
        let i = index.wrapping_sub(self.ports_base()) as usize;
        self.ports.get(i).copied().unwrap_or(0)
    }

    fn peer_rule(&self, key: &PeerAddr) -> u16 {
        // Longest prefix first, as the kernel's trie does.
        let set = u32::from_be_bytes(key.set);
        (0..=128u32)
            .rev()
            .find_map(|bits| {
                let masked = mask(key.addr, bits);
                self.peer_lookup
                    .get(&(set, PEER_SET_BITS + bits, masked))
                    .copied()
            })
            .unwrap_or(0)
    }
}

impl NameTables for Image {
    fn name_groups(&self, key: &NameKey) -> u64 {
        self.names.get(key).map_or(0, |v| v.groups)
    }

    fn name_value(&self, key: &NameKey) -> Option<&NameValue> {
        self.names.get(key)
    }

    fn slot_names(&self, key: &SlotKey) -> Option<&SlotNames> {
        self.slot_names.get(key)
    }
}

/// The image plus one address learned from DNS, as the kernel's `LEARNED` map would
/// hold it.
struct WithLearned<'a> {
    image: &'a Image,
    peer: [u8; 16],
    learned: Learned,
}

impl PolicyTables for WithLearned<'_> {
    fn port_entry(&self, index: u32) -> u32 {
        self.image.port_entry(index)
    }

    fn peer_rule(&self, key: &PeerAddr) -> u16 {
        self.image.peer_rule(key)
    }

    fn learned_rule(&self, generation: u32, slot: u16, peer: &[u8; 16]) -> u16 {
        if *peer != self.peer {
            return 0;
        }
        names::learned_rule(self.image, generation, slot, &self.learned, 0)
    }
}

/// `NAMES` and `SLOT_NAMES` of a generation. Name group bit `b` is the `b`-th peer set
/// with names (the compiler refuses more than `MAX_NAME_GROUPS`); a slot's rule for a
/// bit is its first candidate in policy order from that group.
fn name_tables(
    policy: &Policy,
    rule_index: &[u16],
    generation: u32,
    key: &HashKey,
    slots: &[(Vec<(usize, usize)>, u16)],
) -> anyhow::Result<(BTreeMap<NameKey, NameValue>, BTreeMap<SlotKey, SlotNames>)> {
    let bit_of: HashMap<usize, usize> = policy
        .peer_sets
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.names.is_empty())
        .enumerate()
        .map(|(bit, (set, _))| (set, bit))
        .collect();
    let mut names = BTreeMap::new();
    for (&set, &bit) in &bit_of {
        for host in &policy.peer_sets[set].names {
            let kind = if host.wildcard {
                KIND_WILDCARD
            } else {
                KIND_EXACT
            };
            let value = NameValue::for_name(&host.name)
                .with_context(|| format!("host name {:?} does not fit in wire form", host.name))?;
            let key = NameKey::new(names::name_hash(key, &host.name), generation, kind);
            let entry = names.entry(key).or_insert(value);
            // Two patterns with one hash (odds 2^-64 per pair under a random key): one
            // would shut the other out, which the whole-name compare would then refuse.
            if entry.name[..] != value.name[..] {
                bail!(
                    "host name {:?} and another pattern of the policy hash alike under this boot's name key (odds 2^-64): run `portcullis detach`, then start again to draw another key",
                    host.name
                );
            }
            entry.groups |= 1u64 << bit;
        }
    }
    let mut slot_names = BTreeMap::new();
    for (cands, slot) in slots {
        let mut entry = SlotNames::default();
        for &(rule, set) in cands {
            if let Some(&bit) = bit_of.get(&set)
                && entry.mask & (1 << bit) == 0
            {
                entry.mask |= 1 << bit;
                entry.rules[bit] = rule_index[rule];
            }
        }
        if entry.mask != 0 {
            slot_names.insert(SlotKey::new(generation, *slot), entry);
        }
    }
    Ok((names, slot_names))
}

/// An address in the datapath's 16-byte form (IPv4 mapped).
pub fn addr16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => policy::v4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// A network in the datapath's form: its (masked) address and prefix length in bits.
fn ipv6_form(net: &IpNet) -> ([u8; 16], u32) {
    match net {
        IpNet::V4(n) => (
            mask(
                policy::v4_mapped(n.network().octets()),
                96 + n.prefix_len() as u32,
            ),
            96 + n.prefix_len() as u32,
        ),
        IpNet::V6(n) => (
            mask(n.network().octets(), n.prefix_len() as u32),
            n.prefix_len() as u32,
        ),
    }
}

fn mask(mut addr: [u8; 16], bits: u32) -> [u8; 16] {
    for (i, b) in addr.iter_mut().enumerate() {
        let keep = bits.saturating_sub(i as u32 * 8).min(8);
        *b &= if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
    }
    addr
}

#[cfg(test)]
mod tests;
