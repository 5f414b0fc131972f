//! The parser on hand-built messages: each limit and each way a message can be broken.

extern crate std;
use std::vec::Vec;

use super::*;
use crate::names::{HashKey, WireName, name_hash};

/// The key the tests hash names under.
const KEY: HashKey = HashKey {
    k0: 0x5eed_0000_0000_0001,
    k1: 0x5eed_0000_0000_0002,
};

fn parse(msg: &[u8]) -> Parser {
    super::parse(msg, &KEY)
}

/// Builds DNS messages the way a resolver writes them.
struct Msg(Vec<u8>);

impl Msg {
    fn response(qname: &str, answers: u16) -> Self {
        let mut m = Msg(Vec::new());
        m.0.extend_from_slice(&[0x12, 0x34, 0x81, 0x80, 0, 1]);
        m.0.extend_from_slice(&answers.to_be_bytes());
        m.0.extend_from_slice(&[0, 0, 0, 0]);
        m.name(qname);
        m.0.extend_from_slice(&[0, 1, 0, 1]);
        m
    }

    fn name(&mut self, dotted: &str) {
        for label in dotted.split('.') {
            self.0.push(label.len() as u8);
            self.0.extend_from_slice(label.as_bytes());
        }
        self.0.push(0);
    }

    /// A pointer to the question's name (offset 12).
    fn ptr(&mut self, to: u16) {
        self.0.extend_from_slice(&(0xc000 | to).to_be_bytes());
    }

    fn fixed(&mut self, rtype: u16, ttl: u32, rdlen: u16) {
        self.0.extend_from_slice(&rtype.to_be_bytes());
        self.0.extend_from_slice(&1u16.to_be_bytes());
        self.0.extend_from_slice(&ttl.to_be_bytes());
        self.0.extend_from_slice(&rdlen.to_be_bytes());
    }

    fn a(&mut self, owner: &str, ttl: u32, ip: [u8; 4]) {
        self.name(owner);
        self.fixed(TYPE_A, ttl, 4);
        self.0.extend_from_slice(&ip);
    }

    fn cname(&mut self, owner: &str, ttl: u32, target: &str) {
        self.name(owner);
        let len: usize = target.split('.').map(|l| l.len() + 1).sum::<usize>() + 1;
        self.fixed(TYPE_CNAME, ttl, len as u16);
        self.name(target);
    }
}

fn v4(ip: [u8; 4]) -> [u8; 16] {
    crate::policy::v4_mapped(ip)
}

fn addrs(p: &Parser) -> Vec<([u8; 16], u32)> {
    p.addresses().iter().map(|a| (a.addr, a.ttl)).collect()
}

#[test]
fn a_and_aaaa_of_the_question() {
    let mut m = Msg::response("Repo.Clearswift.net", 3);
    m.ptr(12);
    m.fixed(TYPE_A, 300, 4);
    m.0.extend_from_slice(&[192, 0, 2, 7]);
    m.ptr(12);
    m.fixed(TYPE_AAAA, 60, 16);
    let v6 = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
    m.0.extend_from_slice(&v6);
    // A record of another name (additional data in the answer section) does not count.
    m.a("evil.example", 300, [198, 51, 100, 1]);
    let p = parse(&m.0);
    assert_eq!(p.status(), Status::Complete);
    assert!(p.usable());
    assert_eq!(addrs(&p), [(v4([192, 0, 2, 7]), 300), (v6, 60)]);
    let name = WireName::new(&KEY, "repo.clearswift.net").unwrap();
    let n = name.count;
    assert_eq!(p.question_labels as usize, n);
    assert_eq!(p.question[..n], name.labels[..n]);
    assert_eq!(p.question_lens[..n], name.lens[..n]);
    assert_eq!(
        p.question_end as usize,
        12 + name.len,
        "the name ends there"
    );
}

#[test]
fn cname_chain_is_followed_with_the_smallest_ttl() {
    let mut m = Msg::response("files.mdaemon.com", 3);
    m.cname("files.mdaemon.com", 30, "cdn.example.net");
    m.cname("CDN.example.net", 600, "edge.example.org");
    m.a("edge.example.org", 3600, [203, 0, 113, 5]);
    let p = parse(&m.0);
    assert_eq!(addrs(&p), [(v4([203, 0, 113, 5]), 30)]);
}

#[test]
fn a_record_of_a_name_off_the_chain_does_not_count() {
    // The question is unlisted-looking; a CNAME elsewhere in the answer to a name does
    // not put that name on the chain.
    let mut m = Msg::response("a.example", 2);
    m.cname("b.example", 30, "a.example");
    m.a("b.example", 30, [192, 0, 2, 1]);
    assert!(parse(&m.0).addresses().is_empty());
}

#[test]
fn ttl_top_bit_is_zero_and_ttls_are_capped() {
    let mut m = Msg::response("x.example", 2);
    m.a("x.example", 0x8000_0001, [192, 0, 2, 1]);
    m.a("x.example", u32::MAX >> 1, [192, 0, 2, 2]);
    let p = parse(&m.0);
    assert_eq!(
        addrs(&p),
        [(v4([192, 0, 2, 1]), 0), (v4([192, 0, 2, 2]), MAX_TTL)]
    );
}

#[test]
fn queries_errors_and_many_questions_are_not_answers() {
    let m = Msg::response("x.example", 0);
    for (offset, value) in [(2, 0x01u8), (3, 0x83), (2, 0x89), (5, 2)] {
        let mut bad = m.0.clone();
        bad[offset] = value;
        assert_eq!(
            parse(&bad).status(),
            Status::NotAnswer,
            "{offset}={value:#x}"
        );
    }
    assert_eq!(parse(&m.0[..5]).status(), Status::Malformed);
}

#[test]
fn truncated_answers_keep_the_records_before_the_cut() {
    let mut m = Msg::response("x.example", 2);
    m.a("x.example", 30, [192, 0, 2, 1]);
    m.a("x.example", 30, [192, 0, 2, 2]);
    for cut in m.0.len() - 20..m.0.len() {
        let p = parse(&m.0[..cut]);
        assert_eq!(p.status(), Status::Truncated, "cut {cut}");
        assert!(p.addresses().len() <= 1);
    }
    assert_eq!(parse(&m.0).addresses().len(), 2);
}

#[test]
fn pointer_loops_and_forward_pointers_are_malformed() {
    // A name that points at itself.
    let mut m = Msg::response("x.example", 1);
    let at = m.0.len() as u16;
    m.ptr(at);
    m.fixed(TYPE_A, 30, 4);
    m.0.extend_from_slice(&[1, 2, 3, 4]);
    assert_eq!(parse(&m.0).status(), Status::Malformed);
    // Forward.
    let mut m = Msg::response("x.example", 1);
    let at = m.0.len() as u16;
    m.ptr(at + 2);
    assert_eq!(parse(&m.0).status(), Status::Malformed);
    // Into the header.
    let mut m = Msg::response("x.example", 1);
    m.ptr(2);
    assert_eq!(parse(&m.0).status(), Status::Malformed);
    // A chain of pointers, each one back to the previous, longer than MAX_HOPS.
    // The pointers sit in the data of a record of an unknown type, which is skipped.
    let mut m = Msg::response("x.example", 2);
    m.ptr(12);
    m.fixed(99, 30, 2 * (MAX_HOPS as u16 + 1));
    let mut prev = 12u16;
    for _ in 0..=MAX_HOPS {
        let here = m.0.len() as u16;
        m.ptr(prev);
        prev = here;
    }
    m.ptr(prev);
    m.fixed(TYPE_A, 30, 4);
    m.0.extend_from_slice(&[1, 2, 3, 4]);
    assert_eq!(parse(&m.0).status(), Status::Malformed);
    // MAX_HOPS pointers in all is fine.
    let last = m.0.len() - 4 - 10 - 2;
    m.0[last..last + 2].copy_from_slice(&(0xc000 | (prev - 4)).to_be_bytes());
    assert_eq!(parse(&m.0).addresses().len(), 1);
}

#[test]
fn reserved_label_types_bad_rdata_and_long_names_are_malformed() {
    let mut m = Msg::response("x.example", 0);
    m.0[12] = 0x40;
    assert_eq!(parse(&m.0).status(), Status::Malformed);
    let mut m = Msg::response("x.example", 1);
    m.name("x.example");
    m.fixed(TYPE_A, 30, 5);
    m.0.extend_from_slice(&[1, 2, 3, 4, 5]);
    assert_eq!(parse(&m.0).status(), Status::Malformed);
    let long: Vec<&str> = (0..=MAX_LABELS).map(|_| "a").collect();
    let m = Msg::response(&long.join("."), 0);
    assert_eq!(parse(&m.0).status(), Status::Malformed);
    let label = "b".repeat(63);
    let m = Msg::response(&[label.as_str(); 4].join("."), 0);
    assert_eq!(parse(&m.0).status(), Status::Malformed, "256 bytes");
    let m = Msg::response(&[label.as_str(); 3].join("."), 0);
    assert_eq!(parse(&m.0).status(), Status::Complete, "193 bytes");
}

#[test]
fn long_cname_chains_and_many_records_stop_at_the_limits() {
    let mut m = Msg::response("n0.example", MAX_CHAIN as u16 + 1);
    for i in 0..MAX_CHAIN {
        m.cname(
            &std::format!("n{i}.example"),
            30,
            &std::format!("n{}.example", i + 1),
        );
    }
    m.a(&std::format!("n{MAX_CHAIN}.example"), 30, [192, 0, 2, 1]);
    assert!(parse(&m.0).addresses().is_empty(), "chain too long");

    let n = MAX_RECORDS + 4;
    let mut m = Msg::response("x.example", n);
    for i in 0..n {
        m.a("x.example", 30, [192, 0, 2, i as u8]);
    }
    let p = parse(&m.0);
    assert_eq!(p.status(), Status::Complete);
    assert_eq!(p.addresses().len(), MAX_ADDRS);
}

#[test]
fn the_question_hash_matches_the_policy_hash() {
    let m = Msg::response("Sn12.MailShell.net", 0);
    let p = parse(&m.0);
    let mut found = false;
    let mut walk = crate::names::PatternWalk::new(p.question_labels as usize, &KEY);
    while let Some(k) = walk.next(&p.question, &p.question_lens, 0) {
        found |= k.kind == crate::names::KIND_WILDCARD
            && k.hash == name_hash(&KEY, "mailshell.net")
            && walk.bytes() == 15;
    }
    assert!(found);
}

#[test]
fn every_prefix_and_every_byte_flip_terminates() {
    let mut m = Msg::response("a.b.example", 3);
    m.cname("a.b.example", 30, "c.example");
    m.ptr(12);
    m.fixed(TYPE_A, 30, 4);
    m.0.extend_from_slice(&[1, 2, 3, 4]);
    m.a("c.example", 30, [5, 6, 7, 8]);
    for cut in 0..=m.0.len() {
        let p = parse(&m.0[..cut]);
        assert_ne!(p.status(), Status::Running);
    }
    for i in 0..m.0.len() {
        for bit in 0..8 {
            let mut x = m.0.clone();
            x[i] ^= 1 << bit;
            let p = parse(&x);
            assert_ne!(p.status(), Status::Running);
            assert!(p.addresses().len() <= MAX_ADDRS);
        }
    }
}

/// Found by the `dns` fuzz target: a question for the root with an A record of the
/// root reported an address for a question that can match no pattern.
#[test]
fn a_question_for_the_root_is_not_an_answer() {
    let crash = [
        0x12, 0x34, 0x81, 0x80, 0, 1, 0, 1, 3, 0x6e, 0x65, 0x74, 0, 0, 1, 0, 1, 0xc0, 0x0c, 0, 1,
        0, 1, 0, 0, 1, 0x2c, 0, 4, 0x32, 4, 0xc0, 0x5b, 0, 2, 7,
    ];
    let p = parse(&crash);
    assert_eq!(p.status(), Status::NotAnswer);
    assert!(p.addresses().is_empty());
}
