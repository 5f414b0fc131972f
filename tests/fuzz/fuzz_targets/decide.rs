//! Fuzzes the map image and `decide`, the lookup the eBPF programs run (the image is the
//! userspace mirror of the kernel maps, so this is the kernel's decision function on the
//! values the loader writes).
//!
//! The input drives a small policy (rules with port ranges, some limited to peer sets)
//! and a list of flows. For each flow the verdict is checked against the policy's own
//! entries, independently of the image's packing:
//! - an `Allow(rule)` names a rule one of whose entries covers the flow's direction,
//!   protocol and port, for any peer or for a peer set containing the peer;
//! - a port an any-peer entry covers is never denied, and gets the first such rule;
//! - a port no entry covers is denied with `no-rule`.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use portcullis::{
    policy::{
        Direction, Entry, LoopbackMode, Mode, PeerSet, Policy, Protocol, Rule, RuleScope,
        image::{Image, RuleIndex},
    },
};

/// Reads the fuzzer's bytes as small numbers; zeros once they run out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn addr(&mut self) -> IpAddr {
        if self.u8() & 1 == 0 {
            IpAddr::V4(Ipv4Addr::new(10, self.u8() & 3, self.u8() & 3, self.u8()))
        } else {
            IpAddr::V6(Ipv6Addr::new(
                0xfd00,
                0,
                0,
                0,
                0,
                0,
                u16::from(self.u8() & 3),
                u16::from(self.u8()),
            ))
        }
    }
}

fn contains(set: &PeerSet, peer: IpAddr) -> bool {
    set.networks.iter().any(|n| n.contains(&peer))
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let dirs = [Direction::In, Direction::Out];
    let protos = [Protocol::Tcp, Protocol::Udp];
    let nsets = usize::from(b.u8() % 4);
    let peer_sets: Vec<PeerSet> = (0..nsets)
        .map(|i| {
            let mut networks: Vec<ipnet::IpNet> = (0..1 + b.u8() % 3)
                .map(|_| {
                    let a = b.addr();
                    let max = if a.is_ipv4() { 32 } else { 128 };
                    ipnet::IpNet::new(a, (max - b.u8() % 10).min(max))
                        .expect("prefix")
                        .trunc()
                })
                .collect();
            networks.sort();
            networks.dedup();
            PeerSet {
                name: format!("set{i}"),
                networks,
                names: vec![],
            }
        })
        .collect();
    let nrules = 1 + usize::from(b.u8() % 12);
    let mut rules = Vec::new();
    let mut entries = Vec::new();
    for r in 0..nrules {
        let direction = dirs[usize::from(b.u8() & 1)];
        let protocols = match b.u8() % 3 {
            0 => vec![Protocol::Tcp],
            1 => vec![Protocol::Udp],
            _ => vec![Protocol::Tcp, Protocol::Udp],
        };
        let from = b.u16().max(1);
        let to = from.saturating_add(b.u16() % 300);
        let peer_set = match b.u8() % 3 {
            0 if nsets > 0 => Some(usize::from(b.u8()) % nsets),
            _ => None,
        };
        for &protocol in &protocols {
            entries.push(Entry {
                direction,
                protocol,
                from,
                to,
                peer_set,
                rule: r,
            });
        }
        rules.push(Rule {
            id: format!("r{r}"),
            direction,
            protocols,
            ports: vec![(from, to)],
            feature: None,
            scope: RuleScope::Any,
            peers: peer_set.map(|s| peer_sets[s].name.clone()),
            why: String::new(),
            source: String::new(),
            note: None,
        });
    }
    entries.sort();
    let policy = Policy {
        product: "fuzz".into(),
        mode: Mode::Enforce,
        loopback: LoopbackMode::Exempt,
        icmp_echo: true,
        rules,
        peer_sets,
        entries,
    };
    let index = RuleIndex::fresh(&policy).expect("few rules");
    let generation = u32::from(b.u8() & 1);
    let image = Image::build(&policy, &index, generation, &Default::default()).expect("a small policy fits");
    let rule_of = |kernel: u16| {
        policy
            .rules
            .iter()
            .position(|r| index.get(&r.id) == Some(kernel))
    };
    for _ in 0..64 {
        if b.0.is_empty() {
            break;
        }
        let (direction, protocol) = (
            dirs[usize::from(b.u8() & 1)],
            protos[usize::from(b.u8() & 1)],
        );
        // Ports near the rules' edges are the interesting ones.
        let port = match b.u8() % 3 {
            0 => b.u16(),
            _ => {
                let e = &policy.entries[usize::from(b.u8()) % policy.entries.len()];
                [
                    e.from.saturating_sub(1),
                    e.from,
                    e.to,
                    e.to.saturating_add(1),
                ][usize::from(b.u8() & 3)]
            }
        };
        let peer = b.addr();
        let covering: Vec<&Entry> = policy
            .entries
            .iter()
            .filter(|e| {
                e.direction == direction
                    && e.protocol == protocol
                    && (e.from..=e.to).contains(&port)
            })
            .collect();
        let any_peer = covering
            .iter()
            .filter(|e| e.peer_set.is_none())
            .map(|e| e.rule)
            .min();
        match image.decide(direction, protocol, port, peer) {
            portcullis_common::policy::Decision::Allow(kernel) => {
                let r = rule_of(kernel).expect("an allow names a rule of the policy");
                assert!(
                    covering.iter().any(|e| e.rule == r
                        && e.peer_set
                            .is_none_or(|s| contains(&policy.peer_sets[s], peer))),
                    "allowed by rule {r} that does not cover {direction:?} {protocol:?} {port} from {peer}"
                );
                if let Some(first) = any_peer {
                    assert_eq!(
                        r, first,
                        "an any-peer port is decided by the first rule opening it"
                    );
                }
            }
            portcullis_common::policy::Decision::Deny(reason) => {
                assert!(
                    any_peer.is_none(),
                    "denied {direction:?} {protocol:?} {port} that rule {any_peer:?} opens to any peer"
                );
                assert!(
                    !covering.iter().any(|e| e
                        .peer_set
                        .is_some_and(|s| contains(&policy.peer_sets[s], peer))),
                    "denied {direction:?} {protocol:?} {port} from {peer}, which a peer set of a covering rule contains"
                );
                if covering.is_empty() {
                    assert_eq!(reason, portcullis_common::stats::reason::NO_RULE);
                }
            }
        }
    }
});
