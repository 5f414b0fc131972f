//! Fuzzes the DNS answer parser the datapath learns host name addresses with
//! (`portcullis_common::dns`), the very code the kernel runs step by step.
//!
//! Properties besides "no panic": the parser always finishes within `MAX_STEPS` steps;
//! it reports at most `MAX_ADDRS` addresses, each with a TTL of at most `MAX_TTL` and
//! bytes that occur in the message (as an A or AAAA record's data); a message that is
//! not a usable answer reports no address; and bytes past `DNS_BUF` change nothing.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_common::{
    dns::{self, DNS_BUF, MAX_ADDRS, MAX_STEPS, Parser, Status},
    names::MAX_TTL,
};

fuzz_target!(|data: &[u8]| {
    let mut buf = [0u8; DNS_BUF];
    let n = data.len().min(DNS_BUF);
    buf[..n].copy_from_slice(&data[..n]);
    let mut p = Parser::new(data.len());
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
    // The one-call form agrees, and what lies past the buffer is never read.
    let again = dns::parse(data);
    assert_eq!(again.status(), p.status());
    assert_eq!(again.addresses(), p.addresses());
    if data.len() > DNS_BUF {
        let cut = dns::parse_buf(&buf, DNS_BUF);
        assert_eq!(cut.addresses(), p.addresses());
    }
});
