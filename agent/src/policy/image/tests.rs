//! Unit tests of `image`.
use super::*;
use crate::policy::{Entry, HostName, LoopbackMode, Mode, PeerSet, Rule, RuleScope};

fn rule(id: &str) -> Rule {
    Rule {
        id: id.into(),
        direction: Direction::In,
        protocols: vec![Protocol::Tcp],
        ports: vec![],
        feature: None,
        scope: RuleScope::Any,
        peers: None,
        why: String::new(),
        source: String::new(),
        note: None,
    }
}

fn policy() -> Policy {
    Policy {
        product: "t".into(),
        mode: Mode::Audit,
        loopback: LoopbackMode::Exempt,
        icmp_echo: false,
        rules: vec![rule("smtp"), rule("ldap-a"), rule("ldap-b")],
        peer_sets: vec![
            PeerSet {
                name: "a".into(),
                networks: vec!["198.18.0.0/24".parse().unwrap()],
                names: vec![],
            },
            PeerSet {
                name: "b".into(),
                networks: vec![
                    "198.18.0.128/25".parse().unwrap(),
                    "2001:db8::/32".parse().unwrap(),
                ],
                names: vec![],
            },
        ],
        entries: vec![
            Entry {
                direction: Direction::In,
                protocol: Protocol::Tcp,
                from: 25,
                to: 25,
                peer_set: None,
                rule: 0,
            },
            Entry {
                direction: Direction::In,
                protocol: Protocol::Tcp,
                from: 389,
                to: 389,
                peer_set: Some(0),
                rule: 1,
            },
            Entry {
                direction: Direction::In,
                protocol: Protocol::Tcp,
                from: 389,
                to: 389,
                peer_set: Some(1),
                rule: 2,
            },
            Entry {
                direction: Direction::In,
                protocol: Protocol::Tcp,
                from: 20,
                to: 30,
                peer_set: Some(0),
                rule: 1,
            },
        ],
    }
}

#[test]
fn any_rule_wins_over_peer_rules_and_longest_prefix_decides() {
    let p = policy();
    let idx = RuleIndex::fresh(&p).unwrap();
    for generation in [0, 1] {
        let img = Image::build(&p, &idx, generation, &Default::default()).unwrap();
        let d =
            |port, ip: &str| img.decide(Direction::In, Protocol::Tcp, port, ip.parse().unwrap());
        assert_eq!(
            d(25, "203.0.113.9"),
            Decision::Allow(idx.get("smtp").unwrap())
        );
        assert_eq!(
            d(24, "198.18.0.7"),
            Decision::Allow(idx.get("ldap-a").unwrap())
        );
        assert_eq!(
            d(24, "198.18.1.7"),
            Decision::Deny(portcullis_common::stats::reason::PEER)
        );
        assert_eq!(
            d(389, "198.18.0.7"),
            Decision::Allow(idx.get("ldap-a").unwrap())
        );
        assert_eq!(
            d(389, "198.18.0.200"),
            Decision::Allow(idx.get("ldap-b").unwrap())
        );
        assert_eq!(
            d(389, "2001:db8::1"),
            Decision::Allow(idx.get("ldap-b").unwrap())
        );
        assert_eq!(
            d(389, "2001:db9::1"),
            Decision::Deny(portcullis_common::stats::reason::PEER)
        );
        assert_eq!(
            d(31, "198.18.0.7"),
            Decision::Deny(portcullis_common::stats::reason::NO_RULE)
        );
        let out = img.decide(
            Direction::Out,
            Protocol::Tcp,
            25,
            "198.18.0.7".parse().unwrap(),
        );
        assert_eq!(
            out,
            Decision::Deny(portcullis_common::stats::reason::NO_RULE)
        );
    }
}

#[test]
fn learned_addresses_of_listed_names_open_their_groups_ports() {
    let mut p = policy();
    p.rules.push(rule("updates"));
    p.peer_sets.push(PeerSet {
        name: "vendor".into(),
        networks: vec![],
        names: vec![
            HostName::parse("repo.example.com").unwrap(),
            HostName::parse("*.cdn.example.net").unwrap(),
        ],
    });
    p.entries.push(Entry {
        direction: Direction::Out,
        protocol: Protocol::Tcp,
        from: 443,
        to: 443,
        peer_set: Some(2),
        rule: 3,
    });
    // The same port opened to group "a" by an earlier rule: both are candidates.
    p.entries.push(Entry {
        direction: Direction::Out,
        protocol: Protocol::Tcp,
        from: 443,
        to: 443,
        peer_set: Some(0),
        rule: 1,
    });
    let idx = RuleIndex::fresh(&p).unwrap();
    let updates = Decision::Allow(idx.get("updates").unwrap());
    let peer = Decision::Deny(portcullis_common::stats::reason::PEER);
    for generation in [0, 1] {
        let img = Image::build(&p, &idx, generation, &Default::default()).unwrap();
        assert_eq!(img.names.len(), 2);
        assert_eq!(img.slot_names.len(), 1);
        let d = |ip: &str, host: &str| {
            img.decide_learned(
                Direction::Out,
                Protocol::Tcp,
                443,
                ip.parse().unwrap(),
                host,
            )
        };
        assert_eq!(d("203.0.113.1", "REPO.example.com"), updates);
        assert_eq!(d("203.0.113.1", "a.b.cdn.example.net"), updates);
        assert_eq!(d("203.0.113.1", "cdn.example.net"), peer, "not the apex");
        assert_eq!(d("203.0.113.1", "x.repo.example.com"), peer);
        assert_eq!(d("203.0.113.1", "example.org"), peer);
        // The network of group "a" still decides by its own rule.
        assert_eq!(
            d("198.18.0.9", "example.org"),
            Decision::Allow(idx.get("ldap-a").unwrap())
        );
        // Nothing learned: denied.
        assert_eq!(
            img.decide(
                Direction::Out,
                Protocol::Tcp,
                443,
                "203.0.113.1".parse().unwrap()
            ),
            peer
        );
    }
}

#[test]
fn indices_survive_reloads() {
    let p = policy();
    let first = RuleIndex::fresh(&p).unwrap();
    let mut q = p.clone();
    q.rules.remove(1);
    q.rules.push(rule("new"));
    let second = RuleIndex::carry_over(&first, &q).unwrap();
    assert_eq!(second.get("smtp"), first.get("smtp"));
    assert_eq!(second.get("ldap-b"), first.get("ldap-b"));
    assert_eq!(
        second.get("new"),
        first.get("ldap-a"),
        "freed index is reused"
    );
    assert_eq!(second.get("ldap-a"), None);
}

#[test]
fn masks() {
    assert_eq!(mask([0xff; 16], 0), [0; 16]);
    assert_eq!(mask([0xff; 16], 128), [0xff; 16]);
    let m = mask([0xff; 16], 12);
    assert_eq!(&m[..3], &[0xff, 0xf0, 0]);
}
