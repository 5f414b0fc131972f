//! The questions this host asked its trusted resolvers, and whether an answer answers
//! one of them: written once for the kernel (egress records, ingress matches) and for
//! userspace (unit tests, the `question` fuzz target).
//!
//! On egress, a standard query (QR = 0, opcode 0, one question, class IN, a name
//! without compression pointers, at most 255 bytes) sent to a trusted
//! resolver is recorded in `QUESTIONS` under a [`QuestionKey`]: both ends (addresses
//! and ports), the protocol and the transaction id. The value ([`Question`]) keeps the
//! question (name in wire form, ASCII-lowercased, and type), when it was asked and, for
//! TCP, the sequence number the resolver's next byte must carry (the query segment's
//! acknowledgement number).
//!
//! On ingress, an answer is parsed for learning only when its [`QuestionKey`] (the same
//! four ends, protocol and its id) finds a record younger than [`QUESTION_LIFETIME_NS`],
//! its question section is exactly that question ([`Question::answered_by`]), and over
//! TCP it starts at the recorded sequence number. The record is then deleted: a second
//! answer (a replay, a retransmission, a forgery racing the real one) finds nothing.
//! Anything else is `unsolicited` and teaches nothing.
//!
//! So an off-path forger must guess the client's port and the 16-bit id of a question
//! in flight, and answer exactly that question, before the real answer consumes it.

use crate::{dns::DNS_BUF, names::lower};

/// Bytes of a query the egress program reads: the header and the longest question fit.
pub const QUERY_BUF: usize = 512;
/// Longest name in wire form (RFC 1035 2.3.4), root label included.
pub const NAME_BUF: usize = 256;
/// How long a question waits for its answer (stub resolvers give up after about 5 s and
/// ask again with a new id, which is recorded anew).
pub const QUESTION_LIFETIME_NS: u64 = 10_000_000_000;
/// The DNS header's length.
const HEADER_LEN: usize = 12;
const CLASS_IN: u16 = 1;

/// Key of `QUESTIONS`: one question in flight.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct QuestionKey {
    /// This host's address (IPv6 or IPv4-mapped, network order).
    pub client: [u8; 16],
    /// The resolver's address (as above).
    pub resolver: [u8; 16],
    /// This host's port, host order.
    pub client_port: u16,
    /// The resolver's port (53), host order.
    pub resolver_port: u16,
    /// The transaction id, host order.
    pub id: u16,
    /// `IPPROTO_UDP` or `IPPROTO_TCP`.
    pub protocol: u8,
    /// Zero.
    pub _pad: u8,
}

/// Value of `QUESTIONS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Question {
    /// `bpf_ktime_get_boot_ns` when the question left.
    pub asked_ns: u64,
    /// TCP: the sequence number the answer's first byte (its length prefix) must carry;
    /// 0 for UDP.
    pub seq: u32,
    /// The question's type (host order).
    pub qtype: u16,
    /// Bytes of [`Question::name`] in use (the root label included).
    pub name_len: u16,
    /// The question's name in wire form, ASCII-lowercased (and what followed it in the
    /// query, past `name_len`: never compared).
    pub name: [u8; NAME_BUF],
}

impl Default for Question {
    fn default() -> Self {
        Self {
            asked_ns: 0,
            seq: 0,
            qtype: 0,
            name_len: 0,
            name: [0; NAME_BUF],
        }
    }
}

#[inline(always)]
fn at<const N: usize>(buf: &[u8; N], len: usize, i: usize) -> Option<u8> {
    if i < len {
        Some(buf[i & (N - 1)])
    } else {
        None
    }
}

#[inline(always)]
fn be16_at<const N: usize>(buf: &[u8; N], len: usize, i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([at(buf, len, i)?, at(buf, len, i + 1)?]))
}

/// The length in wire form (root label included) of the name at [`HEADER_LEN`] of a
/// message of `len` bytes: None for a compression pointer, more than 255 bytes, or a
/// name cut by the end. Label lengths are taken as they are (up to 191): what a label
/// may be is the parser's to judge (a 64-byte label or 33 labels make the answer
/// malformed there), this only says which bytes the question is.
#[inline(always)]
fn name_len<const N: usize>(buf: &[u8; N], len: usize) -> Option<usize> {
    let mut pos = 0usize;
    // Each label takes 2 bytes at least: NAME_BUF / 2 rounds reach the limit.
    let mut round = 0usize;
    while round < NAME_BUF / 2 {
        let b = at(buf, len, HEADER_LEN + pos)? as usize;
        if b == 0 {
            return Some(pos + 1);
        }
        if b >= 0xc0 {
            return None;
        }
        pos += 1 + b;
        if pos >= NAME_BUF {
            return None;
        }
        round += 1;
    }
    None
}

/// Reads the query in the first `len` bytes of `buf` into `q` (name, type; `asked_ns`
/// and `seq` are the caller's) and returns its transaction id, or None when it is not a
/// query this module records (see the module doc).
#[inline(always)]
pub fn read_query(buf: &[u8; QUERY_BUF], len: usize, q: &mut Question) -> Option<u16> {
    let id = be16_at(buf, len, 0)?;
    let flags = be16_at(buf, len, 2)?;
    let qd = be16_at(buf, len, 4)?;
    if flags & 0x8000 != 0 || (flags >> 11) & 0xf != 0 || qd != 1 {
        return None;
    }
    // The name's bytes first, all NAME_BUF of them whatever the name's length: one
    // path for the verifier (a copy after the walk below would be checked once per
    // state the walk ends in).
    let mut i = 0usize;
    while i < NAME_BUF {
        q.name[i] = lower(buf[(HEADER_LEN + i) & (QUERY_BUF - 1)]);
        i += 1;
    }
    let n = name_len(buf, len)?;
    let qtype = be16_at(buf, len, HEADER_LEN + n)?;
    if be16_at(buf, len, HEADER_LEN + n + 2)? != CLASS_IN {
        return None;
    }
    q.name_len = n as u16;
    q.qtype = qtype;
    Some(id)
}

impl Question {
    /// Whether the message in the first `len` bytes of `buf` (its id already matched
    /// through the key) carries exactly this question: one question, the same name
    /// (letter case aside, no compression), the same type, class IN.
    #[inline(always)]
    pub fn answered_by(&self, buf: &[u8; DNS_BUF], len: usize) -> bool {
        if be16_at(buf, len, 4) != Some(1) {
            return false;
        }
        let n = self.name_len as usize;
        if n == 0 || n > NAME_BUF {
            return false;
        }
        if be16_at(buf, len, HEADER_LEN + n) != Some(self.qtype)
            || be16_at(buf, len, HEADER_LEN + n + 2) != Some(CLASS_IN)
        {
            return false;
        }
        // Byte for byte (letter case aside) the recorded name, which is labels without
        // pointers ending in the root label: equal bytes are the same labels, ending at
        // the same place. (No walk of the answer's name: its exits would each be checked
        // through this loop by the verifier.)
        let mut i = 0usize;
        while i < n && i < NAME_BUF {
            if lower(buf[(HEADER_LEN + i) & (DNS_BUF - 1)]) != self.name[i] {
                return false;
            }
            i += 1;
        }
        true
    }
}

/// The transaction id of a message (its first two bytes), if it has them.
#[inline(always)]
pub fn message_id(buf: &[u8; DNS_BUF], len: usize) -> Option<u16> {
    be16_at(buf, len, 0)
}

/// Userspace: the record a query's bytes make (None when not recorded), for tests and
/// the fuzz target.
pub fn query(msg: &[u8]) -> Option<(u16, Question)> {
    let mut buf = [0u8; QUERY_BUF];
    let n = msg.len().min(QUERY_BUF);
    buf[..n].copy_from_slice(&msg[..n]);
    let mut q = Question::default();
    read_query(&buf, n, &mut q).map(|id| (id, q))
}

/// Userspace: whether `answer` (its first [`DNS_BUF`] bytes) answers the question
/// recorded with id `id`, as the kernel decides it.
pub fn answers(id: u16, q: &Question, answer: &[u8]) -> bool {
    let mut buf = [0u8; DNS_BUF];
    let n = answer.len().min(DNS_BUF);
    buf[..n].copy_from_slice(&answer[..n]);
    message_id(&buf, answer.len()) == Some(id) && q.answered_by(&buf, answer.len())
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{vec, vec::Vec};

    use super::*;

    fn msg(id: u16, flags: u16, qd: u16, name: &str, qtype: u16, class: u16) -> Vec<u8> {
        let mut m = vec![0u8; 12 + name.len() + 2 + 4];
        m[..2].copy_from_slice(&id.to_be_bytes());
        m[2..4].copy_from_slice(&flags.to_be_bytes());
        m[4..6].copy_from_slice(&qd.to_be_bytes());
        let mut at = 12;
        for label in name.split('.') {
            m[at] = label.len() as u8;
            m[at + 1..at + 1 + label.len()].copy_from_slice(label.as_bytes());
            at += 1 + label.len();
        }
        at += 1;
        m[at..at + 2].copy_from_slice(&qtype.to_be_bytes());
        m[at + 2..at + 4].copy_from_slice(&class.to_be_bytes());
        m.truncate(at + 4);
        m
    }

    #[test]
    fn an_answer_matches_only_its_own_question() {
        let (id, q) = query(&msg(7, 0x0100, 1, "Repo.Lab.Test", 1, 1)).expect("a query");
        assert_eq!((id, q.qtype, q.name_len), (7, 1, 15));
        assert!(answers(7, &q, &msg(7, 0x8180, 1, "repo.lab.TEST", 1, 1)));
        assert!(
            !answers(7, &q, &msg(8, 0x8180, 1, "repo.lab.test", 1, 1)),
            "another id"
        );
        assert!(
            !answers(7, &q, &msg(7, 0x8180, 1, "udp.lab.test", 1, 1)),
            "another name"
        );
        assert!(
            !answers(7, &q, &msg(7, 0x8180, 1, "repo.lab.tes", 1, 1)),
            "shorter"
        );
        assert!(
            !answers(7, &q, &msg(7, 0x8180, 1, "repo.lab.test", 28, 1)),
            "another type"
        );
        assert!(
            !answers(7, &q, &msg(7, 0x8180, 1, "repo.lab.test", 1, 3)),
            "another class"
        );
        assert!(
            !answers(7, &q, &msg(7, 0x8180, 2, "repo.lab.test", 1, 1)),
            "two questions"
        );
        assert!(
            !answers(7, &q, &msg(7, 0x8180, 1, "repo.lab.test", 1, 1)[..20]),
            "cut"
        );
    }

    #[test]
    fn only_standard_queries_are_recorded() {
        assert!(
            query(&msg(1, 0x8180, 1, "a.test", 1, 1)).is_none(),
            "a response"
        );
        assert!(
            query(&msg(1, 0x2800, 1, "a.test", 1, 1)).is_none(),
            "an update"
        );
        assert!(
            query(&msg(1, 0x0100, 0, "a.test", 1, 1)).is_none(),
            "no question"
        );
        assert!(
            query(&msg(1, 0x0100, 1, "a.test", 1, 3)).is_none(),
            "class CH"
        );
        let mut p = msg(1, 0x0100, 1, "a.test", 1, 1);
        p[12] = 0xc0;
        assert!(query(&p).is_none(), "a pointer");
        let long = ["a"; 128].join(".");
        assert!(
            query(&msg(1, 0x0100, 1, &long[..199], 1, 1)).is_some(),
            "100 labels"
        );
        assert!(
            query(&msg(1, 0x0100, 1, "a.test", 1, 1)[..15]).is_none(),
            "cut"
        );
    }
}
