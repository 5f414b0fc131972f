//! The DNS answer parser the datapath learns addresses with, written once for the
//! kernel and for userspace (unit tests, the `dns` fuzz target, `explain`).
//!
//! It reads one DNS message (UDP payload, or a TCP segment's payload after the 2-byte
//! length) from a fixed buffer of [`DNS_BUF`] bytes and reports the question's label
//! hashes and lengths (for the name lookup, see [`crate::names`]; the hashes keyed) and the A/AAAA addresses of the
//! question's name, following CNAME records inside the answer section.
//!
//! **Bounded by construction.** [`Parser::step`] does a bounded amount of work (one
//! label, or one record's fixed fields) and the parser never needs more than
//! [`MAX_STEPS`] steps: the kernel calls `step` from a bounded loop, userspace from a `for`
//! loop ([`parse`]). Every byte is read through one bounds check against the message
//! length, and the index is masked to the buffer size so the verifier sees the bound
//! too. Limits: [`MAX_RECORDS`] answer records, [`MAX_HOPS`] compression pointers per
//! name (each pointing strictly backwards, so no loop), [`MAX_CHAIN`] names in a CNAME
//! chain, [`crate::names::MAX_LABELS`] labels and 255 bytes per name (a longer name
//! makes the message malformed), [`MAX_ADDRS`] addresses per answer. What lies beyond
//! a limit is not learned (fail closed).
//!
//! **What counts.** A response (QR = 1) to a standard query (opcode 0) with RCODE 0 and
//! exactly one question, which is not the root. A record counts when its owner is the question's name or a
//! name a counted CNAME pointed to, and its class is IN. A CNAME to a name hides
//! nothing: an unlisted question never yields addresses, whatever its chain reaches.
//! An address's TTL is the smallest TTL along its chain (RFC 2181: a TTL with the top
//! bit set is 0), capped at [`crate::names::MAX_TTL`].

use crate::names::{HashKey, LabelHasher, MAX_LABELS, MAX_TTL, ROOT, fold};

/// Bytes of a message the parser sees (a power of two); the rest is cut off.
pub const DNS_BUF: usize = 2048;
/// Answer records examined.
pub const MAX_RECORDS: u16 = 32;
/// Addresses reported per message.
pub const MAX_ADDRS: usize = 16;
/// Compression pointers followed per name.
pub const MAX_HOPS: u8 = 8;
/// Names in the CNAME chain, the question's included.
pub const MAX_CHAIN: usize = 8;
/// Longest name in wire form (RFC 1035 2.3.4), root label included.
pub const MAX_NAME_BYTES: u16 = 255;
/// Steps the parser can take at most: the header, then per name (the question, and per
/// record its owner and a CNAME's target) one per label, pointer and root label, one
/// for the name's hash, and one for what follows the name (the question's end, a
/// record's fixed fields and address, a CNAME's place on the chain).
pub const MAX_STEPS: u32 =
    1 + (1 + 2 * MAX_RECORDS as u32) * (MAX_LABELS as u32 + MAX_HOPS as u32 + 3);

/// What the parser's next step does (see [`Parser::next`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Reads a label or pointer of a name ([`Parser::step_name`]).
    Name,
    /// Hashes the name just read ([`Parser::step_hash`]).
    Hash,
    /// The header, or what follows a name ([`Parser::step_other`]).
    Other,
}

const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
const HEADER_LEN: usize = 12;

/// How far a message got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Still parsing.
    Running,
    /// Every answer record (up to [`MAX_RECORDS`]) was read.
    Complete,
    /// The message ends inside a record (cut at [`DNS_BUF`], or a truncated answer):
    /// the records before the cut were read and count.
    Truncated,
    /// Not a successful response to one standard query: nothing counts.
    NotAnswer,
    /// Broken (a bad label type, a pointer forward or too many pointers, a name too
    /// long, a record past the end of its own length): nothing counts.
    Malformed,
}

/// One address of the answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Address {
    /// IPv6, or IPv4-mapped; network order.
    pub addr: [u8; 16],
    /// Seconds, the smallest TTL along its chain.
    pub ttl: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Header,
    Question,
    Owner,
    Cname,
    Done,
}

/// A name being read, one label per step.
#[derive(Clone, Copy, Debug)]
struct NameCursor {
    /// Where the next label (or pointer) is read.
    pos: u16,
    /// Where the record continues after the name; 0 until the first pointer or the end.
    after: u16,
    hops: u8,
    count: u8,
    bytes: u16,
    labels: [u64; MAX_LABELS],
    /// Label lengths, as `labels`.
    lens: [u8; MAX_LABELS],
}

impl NameCursor {
    const fn at(pos: u16) -> Self {
        Self {
            pos,
            after: 0,
            hops: 0,
            count: 0,
            bytes: 1,
            labels: [0; MAX_LABELS],
            lens: [0; MAX_LABELS],
        }
    }

    /// Starts reading a name at `pos`, in place: the label hashes of an earlier name
    /// stay in the array but are never read (only the first `count` are). Building a
    /// new cursor instead would put its 256-byte array on the kernel program's stack.
    #[inline(always)]
    fn start(&mut self, pos: u16) {
        self.pos = pos;
        self.after = 0;
        self.hops = 0;
        self.count = 0;
        self.bytes = 1;
    }

    /// The hash of the whole name: its labels folded from the last one up. The loop
    /// ends after the name's last label: one path per label count for the verifier
    /// (skipping the labels past the count one by one made 6.1's verifier walk more
    /// than a million instructions).
    fn hash(&self, key: &HashKey) -> u64 {
        let mut h = ROOT;
        let mut left = (self.count as usize).min(MAX_LABELS);
        let mut round = 0;
        while round < MAX_LABELS {
            if left == 0 {
                break;
            }
            left -= 1;
            h = fold(key, self.labels[left & (MAX_LABELS - 1)], h);
            round += 1;
        }
        h
    }
}

/// The parser's state and results. Large (about 1 KiB): the kernel keeps it in a
/// per-CPU map and [`Parser::reset`]s it in place.
#[derive(Clone, Copy, Debug)]
pub struct Parser {
    /// The key names are hashed under ([`crate::names`]).
    key: HashKey,
    len: u16,
    phase: Phase,
    status: Status,
    /// Answer records left to read.
    records: u16,
    name: NameCursor,
    /// Where the current record's data starts and ends (`Cname` phase).
    rdata_end: u16,
    cname_ttl: u32,
    chain: [u64; MAX_CHAIN],
    chain_ttl: [u32; MAX_CHAIN],
    chain_len: u8,
    /// Where the current name is: being read, read (to be hashed), hashed.
    name_stage: Next,
    /// The hash of the name just read (`Next::Other` uses it).
    name_hash: u64,
    /// Label hashes of the question's name, first label first.
    pub question: [u64; MAX_LABELS],
    /// Label lengths of the question's name, as [`Parser::question`].
    pub question_lens: [u8; MAX_LABELS],
    /// Labels in [`Parser::question`] (0: the question was not read).
    pub question_labels: u8,
    /// Where the question's name ends in the message (just past its root label), when
    /// it is written out whole, without a compression pointer; 0 otherwise (then no
    /// pattern can match it: the whole-name compare reads the name there).
    pub question_end: u16,
    /// The addresses found.
    pub addrs: [Address; MAX_ADDRS],
    /// How many of [`Parser::addrs`] are set.
    pub addr_count: u8,
}

#[inline(always)]
fn byte(buf: &[u8; DNS_BUF], len: u16, i: u16) -> Option<u8> {
    if (i as usize) < len as usize {
        Some(buf[i as usize & (DNS_BUF - 1)])
    } else {
        None
    }
}

#[inline(always)]
fn be16(buf: &[u8; DNS_BUF], len: u16, i: u16) -> Option<u16> {
    let hi = byte(buf, len, i)?;
    let lo = byte(buf, len, i.checked_add(1)?)?;
    Some(u16::from_be_bytes([hi, lo]))
}

#[inline(always)]
fn be32(buf: &[u8; DNS_BUF], len: u16, i: u16) -> Option<u32> {
    let hi = be16(buf, len, i)?;
    let lo = be16(buf, len, i.checked_add(2)?)?;
    Some((hi as u32) << 16 | lo as u32)
}

/// What one name step did.
enum NameStep {
    More,
    Done,
    Cut,
    Bad,
}

impl Parser {
    /// A parser for a message of `len` bytes (more than [`DNS_BUF`] are cut off) that
    /// hashes names under `key`.
    pub fn new(len: usize, key: &HashKey) -> Self {
        let mut p = Self {
            key: *key,
            len: 0,
            phase: Phase::Header,
            status: Status::Running,
            records: 0,
            name: NameCursor::at(0),
            rdata_end: 0,
            cname_ttl: 0,
            chain: [0; MAX_CHAIN],
            chain_ttl: [0; MAX_CHAIN],
            chain_len: 0,
            name_stage: Next::Name,
            name_hash: 0,
            question: [0; MAX_LABELS],
            question_lens: [0; MAX_LABELS],
            question_labels: 0,
            question_end: 0,
            addrs: [Address::default(); MAX_ADDRS],
            addr_count: 0,
        };
        p.reset(len, key);
        p
    }

    /// Starts over on a new message of `len` bytes, hashing names under `key`, in place.
    #[inline(always)]
    pub fn reset(&mut self, len: usize, key: &HashKey) {
        self.key = *key;
        self.len = if len > DNS_BUF {
            DNS_BUF as u16
        } else {
            len as u16
        };
        self.phase = Phase::Header;
        self.status = Status::Running;
        self.records = 0;
        self.chain_len = 0;
        self.name_stage = Next::Name;
        self.question_labels = 0;
        self.question_end = 0;
        self.addr_count = 0;
    }

    /// The key names are hashed under.
    pub fn key(&self) -> &HashKey {
        &self.key
    }

    /// How far the message got.
    pub fn status(&self) -> Status {
        self.status
    }

    /// Whether the addresses count: the message was a good answer, read whole or up to
    /// a cut.
    pub fn usable(&self) -> bool {
        matches!(self.status, Status::Complete | Status::Truncated) && self.question_labels > 0
    }

    /// The addresses found.
    pub fn addresses(&self) -> &[Address] {
        &self.addrs[..(self.addr_count as usize).min(MAX_ADDRS)]
    }

    fn finish(&mut self, status: Status) -> bool {
        self.status = status;
        self.phase = Phase::Done;
        if status != Status::Complete && status != Status::Truncated {
            self.addr_count = 0;
        }
        false
    }

    /// Does one bounded step; false when done.
    pub fn step(&mut self, buf: &[u8; DNS_BUF]) -> bool {
        match self.next() {
            Next::Name => self.step_name(buf),
            Next::Hash => self.step_hash(),
            Next::Other => self.step_other(buf),
        }
    }

    /// What the next step does. The kernel runs the three kinds of step as separate
    /// functions, each verified once: together, one step's paths went over the
    /// 1M-instruction limit of the verifiers of Linux 5.10 and 6.1.
    #[inline(always)]
    pub fn next(&self) -> Next {
        match self.phase {
            Phase::Question | Phase::Owner | Phase::Cname => self.name_stage,
            Phase::Header | Phase::Done => Next::Other,
        }
    }

    /// Hashes the name just read.
    pub fn step_hash(&mut self) -> bool {
        self.name_hash = self.name.hash(&self.key);
        self.name_stage = Next::Other;
        true
    }

    /// One label or pointer of the current name; false when done.
    pub fn step_name(&mut self, buf: &[u8; DNS_BUF]) -> bool {
        match self.name_step(buf) {
            NameStep::More => true,
            NameStep::Cut => self.finish(Status::Truncated),
            NameStep::Bad => self.finish(Status::Malformed),
            NameStep::Done => {
                self.name_stage = Next::Hash;
                true
            }
        }
    }

    /// The header, or what follows a name that was read to its end; false when done.
    pub fn step_other(&mut self, buf: &[u8; DNS_BUF]) -> bool {
        // What follows a name may start the next one.
        self.name_stage = Next::Name;
        match self.phase {
            Phase::Header => self.header(buf),
            Phase::Question => self.question_done(buf),
            Phase::Owner => self.record(buf),
            Phase::Cname => self.cname_done(),
            Phase::Done => false,
        }
    }

    fn header(&mut self, buf: &[u8; DNS_BUF]) -> bool {
        let (Some(flags), Some(qd), Some(an)) = (
            be16(buf, self.len, 2),
            be16(buf, self.len, 4),
            be16(buf, self.len, 6),
        ) else {
            return self.finish(Status::Malformed);
        };
        let response = flags & 0x8000 != 0;
        let opcode = (flags >> 11) & 0xf;
        let rcode = flags & 0xf;
        if !response || opcode != 0 || rcode != 0 || qd != 1 {
            return self.finish(Status::NotAnswer);
        }
        self.records = if an > MAX_RECORDS { MAX_RECORDS } else { an };
        self.name.start(HEADER_LEN as u16);
        self.phase = Phase::Question;
        true
    }

    /// Reads one label or pointer of the current name.
    fn name_step(&mut self, buf: &[u8; DNS_BUF]) -> NameStep {
        let n = &mut self.name;
        let Some(b) = byte(buf, self.len, n.pos) else {
            return NameStep::Cut;
        };
        match b & 0xc0 {
            0 if b == 0 => {
                if n.after == 0 {
                    n.after = n.pos + 1;
                }
                NameStep::Done
            }
            0 => {
                n.bytes += 1 + b as u16;
                if n.bytes > MAX_NAME_BYTES {
                    return NameStep::Bad;
                }
                let mut h = LabelHasher::new(&self.key);
                let mut i = 0u16;
                while i < 63 {
                    if i >= b as u16 {
                        break;
                    }
                    let Some(c) = byte(buf, self.len, n.pos + 1 + i) else {
                        return NameStep::Cut;
                    };
                    h.byte(c);
                    i += 1;
                }
                if n.count as usize >= MAX_LABELS {
                    return NameStep::Bad;
                }
                n.labels[n.count as usize & (MAX_LABELS - 1)] = h.finish();
                n.lens[n.count as usize & (MAX_LABELS - 1)] = b;
                n.count += 1;
                n.pos += 1 + b as u16;
                NameStep::More
            }
            0xc0 => {
                let Some(lo) = byte(buf, self.len, n.pos + 1) else {
                    return NameStep::Cut;
                };
                let target = ((b as u16 & 0x3f) << 8) | lo as u16;
                n.hops += 1;
                // Strictly backwards and bounded: no loop, whatever the message says.
                if n.hops > MAX_HOPS || target >= n.pos || (target as usize) < HEADER_LEN {
                    return NameStep::Bad;
                }
                if n.after == 0 {
                    n.after = n.pos + 2;
                }
                n.pos = target;
                NameStep::More
            }
            _ => NameStep::Bad,
        }
    }

    fn question_done(&mut self, buf: &[u8; DNS_BUF]) -> bool {
        let next = self.name.after + 4;
        if be32(buf, self.len, self.name.after).is_none() {
            return self.finish(Status::Truncated);
        }
        // The root has no host addresses, and no pattern can list it (found by fuzzing:
        // records of the root would otherwise be reported for an unusable question).
        if self.name.count == 0 {
            return self.finish(Status::NotAnswer);
        }
        self.question = self.name.labels;
        self.question_lens = self.name.lens;
        self.question_labels = self.name.count;
        self.question_end = if self.name.hops == 0 {
            self.name.after
        } else {
            0
        };
        self.chain[0] = self.name_hash;
        self.chain_ttl[0] = MAX_TTL;
        self.chain_len = 1;
        self.next_record(next)
    }

    fn next_record(&mut self, pos: u16) -> bool {
        if self.records == 0 {
            return self.finish(Status::Complete);
        }
        self.records -= 1;
        self.name.start(pos);
        self.phase = Phase::Owner;
        true
    }

    /// The chain index of the current name, if it is on the chain.
    fn on_chain(&self) -> Option<usize> {
        let hash = self.name_hash;
        let mut i = 0;
        while i < MAX_CHAIN {
            if i < self.chain_len as usize && self.chain[i] == hash {
                return Some(i);
            }
            i += 1;
        }
        None
    }

    /// The owner name is read: the record's fixed fields and data.
    fn record(&mut self, buf: &[u8; DNS_BUF]) -> bool {
        let at = self.name.after;
        // The ten bytes of fixed fields checked at once, then read: four optional reads
        // left LLVM a register undefined on the failing paths, which the kernel's
        // verifier refuses to even spill.
        if at as usize + 10 > self.len as usize {
            return self.finish(Status::Truncated);
        }
        let rtype = be16(buf, self.len, at).unwrap_or(0);
        let class = be16(buf, self.len, at + 2).unwrap_or(0);
        let ttl = be32(buf, self.len, at + 4).unwrap_or(0);
        let rdlen = be16(buf, self.len, at + 8).unwrap_or(0);
        let start = at + 10;
        let Some(end) = start.checked_add(rdlen) else {
            return self.finish(Status::Malformed);
        };
        if end > self.len {
            return self.finish(Status::Truncated);
        }
        // RFC 2181 8: a TTL with the top bit set is zero.
        let ttl = if ttl & 0x8000_0000 != 0 { 0 } else { ttl };
        let link = match self.on_chain() {
            Some(link) if class == CLASS_IN => link,
            _ => return self.next_record(end),
        };
        let ttl = ttl.min(self.chain_ttl[link & (MAX_CHAIN - 1)]);
        match (rtype, rdlen) {
            (TYPE_A, 4) => {
                let mut addr = [0u8; 16];
                addr[10] = 0xff;
                addr[11] = 0xff;
                let mut i = 0;
                while i < 4 {
                    addr[12 + i] = byte(buf, self.len, start + i as u16).unwrap_or(0);
                    i += 1;
                }
                self.push(addr, ttl);
            }
            (TYPE_AAAA, 16) => {
                let mut addr = [0u8; 16];
                let mut i = 0;
                while i < 16 {
                    addr[i] = byte(buf, self.len, start + i as u16).unwrap_or(0);
                    i += 1;
                }
                self.push(addr, ttl);
            }
            (TYPE_A | TYPE_AAAA, _) => return self.finish(Status::Malformed),
            (TYPE_CNAME, _) if (self.chain_len as usize) < MAX_CHAIN => {
                self.name.start(start);
                self.rdata_end = end;
                self.cname_ttl = ttl;
                self.phase = Phase::Cname;
                return true;
            }
            _ => {}
        }
        self.next_record(end)
    }

    fn cname_done(&mut self) -> bool {
        if self.name.after > self.rdata_end {
            return self.finish(Status::Malformed);
        }
        let i = self.chain_len as usize & (MAX_CHAIN - 1);
        self.chain[i] = self.name_hash;
        self.chain_ttl[i] = self.cname_ttl;
        self.chain_len += 1;
        self.next_record(self.rdata_end)
    }

    fn push(&mut self, addr: [u8; 16], ttl: u32) {
        let i = self.addr_count as usize;
        if i < MAX_ADDRS {
            self.addrs[i] = Address {
                addr,
                ttl: ttl.min(MAX_TTL),
            };
            self.addr_count += 1;
        }
    }
}

/// Parses `msg` (its first [`DNS_BUF`] bytes) to the end, in at most [`MAX_STEPS`]
/// steps, hashing names under `key`.
pub fn parse(msg: &[u8], key: &HashKey) -> Parser {
    let mut buf = [0u8; DNS_BUF];
    let n = msg.len().min(DNS_BUF);
    buf[..n].copy_from_slice(&msg[..n]);
    parse_buf(&buf, msg.len(), key)
}

/// Parses the first `len` bytes of `buf`, as the kernel does.
pub fn parse_buf(buf: &[u8; DNS_BUF], len: usize, key: &HashKey) -> Parser {
    let mut p = Parser::new(len, key);
    let mut steps = 0;
    while steps < MAX_STEPS && p.step(buf) {
        steps += 1;
    }
    if p.status == Status::Running {
        // Unreachable by MAX_STEPS' definition; fail closed if it ever is not.
        p.finish(Status::Malformed);
    }
    p
}

#[cfg(test)]
mod tests;
