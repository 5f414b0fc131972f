//! Fuzzes the question/answer matching the datapath learns through
//! (`portcullis_common::question`): the egress side's record of a query and the ingress
//! side's test of an answer against it, the very code the kernel runs.
//!
//! The input is a query and an answer (the first byte says where the query ends).
//! Properties besides "no panic": a recorded name is a whole wire-form name (1 to 255
//! bytes, ending in the root label); the query answered by itself (QR set) matches; a
//! match means the same id and the same question bytes (letter case aside), type and
//! class; and changing any byte of a matching answer's question other than by letter
//! case breaks the match.

#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_common::{
    names::lower,
    question::{NAME_BUF, answers, query},
};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let (q_bytes, answer) = rest.split_at((cut as usize).min(rest.len()));
    let Some((id, q)) = query(q_bytes) else {
        return;
    };
    let n = q.name_len as usize;
    assert!((1..=NAME_BUF - 1).contains(&n), "name of {n} bytes");
    assert_eq!(q.name[n - 1], 0, "the name ends in the root label");
    assert_eq!(u16::from_be_bytes([q_bytes[0], q_bytes[1]]), id);

    // The query itself, turned into a response, answers it.
    let mut own = q_bytes.to_vec();
    own[2] |= 0x80;
    assert!(answers(id, &q, &own), "the query's own bytes as an answer");

    if answers(id, &q, answer) {
        assert_eq!(u16::from_be_bytes([answer[0], answer[1]]), id);
        assert_eq!(&answer[4..6], &[0, 1], "one question");
        for i in 0..n {
            assert_eq!(lower(answer[12 + i]), q.name[i], "name byte {i}");
        }
        assert_eq!(u16::from_be_bytes([answer[12 + n], answer[13 + n]]), q.qtype);
        assert_eq!(&answer[14 + n..16 + n], &[0, 1], "class IN");
        // Any other byte in the question section breaks the match.
        for i in 12..16 + n {
            let mut other = answer.to_vec();
            other[i] = other[i].wrapping_add(1);
            if lower(other[i]) != lower(answer[i]) {
                assert!(!answers(id, &q, &other), "byte {i} changed, still a match");
            }
        }
    }
});
