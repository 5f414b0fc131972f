//! Fuzzes the DNS answer parser the datapath learns host name addresses with
//! (`portcullis_common::dns`), the very code the kernel runs step by step.
//!
//! Properties besides "no panic": the parser always finishes within `MAX_STEPS` steps;
//! it reports at most `MAX_ADDRS` addresses, each with a TTL of at most `MAX_TTL` and
//! bytes that occur in the message (as an A or AAAA record's data); a message that is
//! not a usable answer reports no address; and bytes past `DNS_BUF` change nothing.
//! For the question's name, the pattern walk the kernel runs (keyed hashes folded from
//! the label hashes the parser computed a byte at a time, and the wire length of each
//! suffix) agrees with hashing each suffix's labels whole, and the whole-name compare
//! accepts each suffix's own bytes and refuses them with any one byte changed.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_common::{
    dns::{self, DNS_BUF, MAX_ADDRS, MAX_STEPS, Parser, Status},
    names::{
        HashKey, MAX_LABELS, MAX_TTL, NameValue, PatternWalk, ROOT, fold, label_hash, lower,
        same_name,
    },
};

/// The key the target hashes under (any key: the properties hold for all).
const KEY: HashKey = HashKey {
    k0: 0x0706_0504_0302_0100,
    k1: 0x0f0e_0d0c_0b0a_0908,
};

/// Checks the walk over the question's name against its bytes (see the module doc).
fn check_question(p: &Parser, buf: &[u8; DNS_BUF]) {
    let end = p.question_end as usize;
    let count = p.question_labels as usize;
    if end == 0 || count == 0 {
        return;
    }
    // The labels, as the message writes them (no pointer: `question_end` is set).
    let mut labels: Vec<&[u8]> = Vec::new();
    let mut at = 12;
    while buf[at] != 0 {
        let n = buf[at] as usize;
        labels.push(&buf[at + 1..at + 1 + n]);
        at += 1 + n;
    }
    assert_eq!(at + 1, end, "the name ends where the parser says");
    assert_eq!(labels.len(), count);
    assert!(count <= MAX_LABELS);
    let mut walk = PatternWalk::new(count, &KEY);
    let mut hash = ROOT;
    for i in (0..count).rev() {
        let key = walk
            .next(&p.question, &p.question_lens, 0)
            .expect("one pattern per label");
        hash = fold(&KEY, label_hash(&KEY, labels[i]), hash);
        assert_eq!(key.hash, hash, "the suffix from label {i}");
        let len = walk.bytes();
        assert_eq!(len, end - suffix_start(&labels, i), "its bytes");
        let mut value = NameValue::default();
        value.name_len = len as u16;
        for (j, b) in buf[end - len..end].iter().enumerate() {
            value.name[j] = lower(*b);
        }
        assert!(same_name(&value, buf, end, len), "its own bytes");
        for j in 0..len {
            let mut other = value;
            other.name[j] ^= 0x01;
            assert!(!same_name(&other, buf, end, len), "byte {j} changed");
        }
    }
    assert!(walk.next(&p.question, &p.question_lens, 0).is_none());
}

/// Where label `i` starts, counting from the message's offset 12.
fn suffix_start(labels: &[&[u8]], i: usize) -> usize {
    12 + labels[..i].iter().map(|l| 1 + l.len()).sum::<usize>()
}

fuzz_target!(|data: &[u8]| {
    let mut buf = [0u8; DNS_BUF];
    let n = data.len().min(DNS_BUF);
    buf[..n].copy_from_slice(&data[..n]);
    let mut p = Parser::new(data.len(), &KEY);
    let mut steps = 0u32;
    while p.step(&buf) {
        steps += 1;
        assert!(steps <= MAX_STEPS, "the parser ran past MAX_STEPS");
    }
    assert_ne!(p.status(), Status::Running);
    let addrs = p.addresses();
    assert!(addrs.len() <= MAX_ADDRS);
    if !p.usable() {
        assert!(addrs.is_empty(), "{:?} with addresses", p.status());
    }
    let seen = &data[..n];
    for a in addrs {
        assert!(a.ttl <= MAX_TTL);
        let v4 = a.addr[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];
        let bytes: &[u8] = if v4 { &a.addr[12..] } else { &a.addr };
        assert!(
            seen.windows(bytes.len()).any(|w| w == bytes),
            "an address that is not in the message"
        );
    }
    if p.usable() {
        check_question(&p, &buf);
    }
    // The one-call form agrees, and what lies past the buffer is never read.
    let again = dns::parse(data, &KEY);
    assert_eq!(again.status(), p.status());
    assert_eq!(again.addresses(), p.addresses());
    if data.len() > DNS_BUF {
        let cut = dns::parse_buf(&buf, DNS_BUF, &KEY);
        assert_eq!(cut.addresses(), p.addresses());
    }
});
