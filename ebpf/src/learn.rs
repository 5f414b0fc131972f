//! Learning addresses from DNS answers, in cgroup_skb ingress, before the application
//! can read the answer: so the connect() that follows the lookup at once already finds
//! the address (no proxy, no userspace round trip).
//!
//! [`question`] runs in egress for a UDP datagram or TCP segment to remote port 53 that
//! the verdict let out: a query to a trusted resolver (`PC_RESOLVERS`) is recorded in
//! `PC_DNS_QUESTION` (`portcullis_common::question`: both ends, the id, the question,
//! for TCP the answer's expected sequence number).
//!
//! [`answer`] runs for a UDP datagram or TCP segment from remote port 53 that the
//! verdict let in (pass, or audit's would-deny). It learns only when the remote address
//! is in `PC_RESOLVERS` (the site's trusted resolvers); anything else from port 53 is
//! counted `untrusted` and never parsed. The message (UDP: the payload; TCP: a segment
//! that starts with the 2-byte length prefix and carries the whole message) is copied
//! into the per-CPU scratch, and must answer a recorded question exactly (the same ends
//! and id, the same question, over TCP the segment at the expected sequence number);
//! the record is consumed, and a message that answers none is counted `unsolicited`
//! and never parsed. Then `portcullis_common::dns::Parser` reads it, one bounded step
//! per round of a bounded loop, at most `MAX_STEPS` rounds, hashing names under the
//! agent's key (`PC_NAME_KEY`, see `portcullis_common::siphash`). Then the question's
//! name is matched against the live generation's `PC_NAMES` (every pattern it matches:
//! the exact name and the wildcards above it), each hash hit confirmed by comparing the
//! name's bytes in the scratch with the pattern's (`names::same_name`), and each
//! address is stored in `PC_LEARNED`
//! with those patterns, valid for min(TTL, `MAX_TTL`) + `dns_grace` seconds. A name no
//! group lists teaches nothing.
//!
//! **Verifiable on 5.10.** Each step of the parse (and each pattern and address below,
//! the recording of a question and the match of an answer) is a global BPF function
//! (`pc_dns_*`), which the verifier checks once, on its own, whatever calls it: a
//! bounded loop of them costs it a few instructions a round, not the step's paths
//! times the rounds. Global functions, not `bpf_loop` callbacks: Linux 5.10 has no
//! `bpf_loop` (5.17+), and 6.1's verifier went over its 1M-instruction limit on the
//! callbacks. Before 5.12 a global function may take only scalars (and the context),
//! so each finds its state in a per-CPU scratch; and it declares no argument it does
//! not read (LLVM leaves such a register unset, and the verifier refuses a non-scalar
//! there).
//!
//! Counters (`stats::dns`): answers that taught an address, addresses stored, untrusted
//! packets, unlisted and malformed answers, patterns pushed out of an address's slots
//! while still valid, new entries (the agent derives the LRU's evictions from them), and
//! new addresses refused because a pattern holds `LEARNED_PER_NAME` of them already
//! (`PC_NAME_ADDRS` counts them per pattern; the agent recounts it at each sweep).

use aya_ebpf::{
    bindings::__sk_buff,
    btf_maps::lpm_trie::Key,
    helpers::generated::{bpf_ktime_get_boot_ns, bpf_skb_load_bytes},
    programs::SkBuffContext,
};
use portcullis_common::{
    dns::{DNS_BUF, MAX_ADDRS, MAX_STEPS, Next, Status},
    names::{
        self, LEARNED_NAMES, LEARNED_PER_NAME, Learned, MAX_LABELS, MAX_TTL, NameKey, PatternWalk,
    },
    policy::{IPPROTO_TCP, IPPROTO_UDP, v4_mapped},
    question::{QUERY_BUF, QUESTION_LIFETIME_NS, message_id, read_query},
    stats::dns,
};

use crate::maps::{
    DnsScratch, KernelTables, PC_DNS_QSCRATCH, PC_DNS_QUESTION, PC_DNS_SCRATCH, PC_DNS_STATS,
    PC_LEARNED, PC_NAME_ADDRS, PC_NAME_KEY, PC_RESOLVERS, QueryScratch, config_ref,
};

/// The port answers come from.
pub const DNS_PORT: u16 = 53;
/// UDP header length.
const UDP_HEADER: u32 = 8;
/// Smallest DNS message: the header.
const DNS_HEADER: u32 = 12;
const NS_PER_SEC: u64 = 1_000_000_000;
/// The ACK bit of the TCP flags byte.
const TCP_ACK: u8 = 0x10;

#[inline(always)]
fn count(index: u32, n: u64) {
    if let Some(c) = PC_DNS_STATS.get_ptr_mut(index) {
        // SAFETY: a per-CPU array slot, touched by no other CPU.
        unsafe { *c += n };
    }
}

/// Records the packet's question if it is a query to a trusted resolver (see the module
/// doc). Called for packets to port 53 that the verdict let out.
#[inline(always)]
pub fn question(ctx: &SkBuffContext) {
    pc_dns_question(ctx.skb.skb);
}

/// [`question`] as a global function: verified once, on its own, whatever state the
/// verdict's paths leave behind. Returns 1 when a question was recorded.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn pc_dns_question(skb: *mut __sk_buff) -> i32 {
    // SAFETY: the per-CPU egress scratch, used by one program run at a time on this CPU.
    let Some(s) = PC_DNS_QSCRATCH.get_ptr_mut(0).map(|s| unsafe { &mut *s }) else {
        return 0;
    };
    record(skb, s).is_some() as i32
}

/// Reads `n` bytes at `at` of the packet to `to` (a scratch buffer): false when the
/// packet is shorter.
#[inline(always)]
fn load(skb: *mut __sk_buff, at: u32, to: *mut u8, n: u32) -> bool {
    // SAFETY: `n` bytes into a scratch buffer at least that long (each caller's); the
    // helper checks the packet's bounds.
    unsafe { bpf_skb_load_bytes(skb.cast_const().cast(), at, to.cast(), n) == 0 }
}

#[inline(always)]
fn copy16(to: &mut [u8; 16], from: &[u8], at: usize) {
    let mut i = 0;
    while i < 16 {
        to[i] = from[(at + i) & 63];
        i += 1;
    }
}

/// The egress side: the query's ends, id and question into `PC_DNS_QUESTION`.
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "keys and values are passed as pointers into the scratch: no copy on the stack"
)]
#[inline(always)]
fn record(skb: *mut __sk_buff, s: &mut QueryScratch) -> Option<()> {
    // SAFETY: reads a field of the program's own context.
    let len = unsafe { (*skb).len };
    if !load(skb, 0, s.buf.as_mut_ptr(), 20) {
        return None;
    }
    let (protocol, l4) = if s.buf[0] >> 4 == 6 {
        if !load(skb, 0, s.buf.as_mut_ptr(), 40) {
            return None;
        }
        copy16(&mut s.key.client, &s.buf[..64], 8);
        copy16(&mut s.key.resolver, &s.buf[..64], 24);
        (s.buf[6], 40)
    } else {
        s.key.client = v4_mapped([s.buf[12], s.buf[13], s.buf[14], s.buf[15]]);
        s.key.resolver = v4_mapped([s.buf[16], s.buf[17], s.buf[18], s.buf[19]]);
        (s.buf[9], (s.buf[0] & 0x0f) as u32 * 4)
    };
    s.resolver = Key::new(128, s.key.resolver);
    PC_RESOLVERS.get(&s.resolver)?;
    // The transport header: ports, and for TCP the flags, acknowledgement and offset.
    if !load(skb, l4, s.buf.as_mut_ptr(), 8) {
        return None;
    }
    s.key.client_port = u16::from_be_bytes([s.buf[0], s.buf[1]]);
    s.key.resolver_port = u16::from_be_bytes([s.buf[2], s.buf[3]]);
    if s.key.resolver_port != DNS_PORT {
        return None;
    }
    let (start, msg_len, seq) = match protocol {
        IPPROTO_UDP => {
            let start = l4 + UDP_HEADER;
            (start, len.checked_sub(start)?, 0)
        }
        IPPROTO_TCP => {
            if !load(skb, l4, s.buf.as_mut_ptr(), 20) || s.buf[13] & TCP_ACK == 0 {
                return None;
            }
            // The resolver's next byte: where the answer's length prefix will be.
            let ack = u32::from_be_bytes([s.buf[8], s.buf[9], s.buf[10], s.buf[11]]);
            let start = l4 + (s.buf[12] >> 4) as u32 * 4;
            if !load(skb, start, s.buf.as_mut_ptr(), 2) {
                return None;
            }
            let msg_len = u16::from_be_bytes([s.buf[0], s.buf[1]]) as u32;
            let start = start + 2;
            // The whole query in this segment, as stub resolvers send it.
            if msg_len > len.checked_sub(start)? {
                return None;
            }
            (start, msg_len, ack)
        }
        _ => return None,
    };
    // Through `black_box`, as in `answer`: the check is made on the helper's register.
    let n = core::hint::black_box(if msg_len > QUERY_BUF as u32 {
        QUERY_BUF as u32
    } else {
        msg_len
    });
    if n < DNS_HEADER || n > QUERY_BUF as u32 {
        return None;
    }
    // 1..=QUERY_BUF by arithmetic as well (see `answer`).
    let n = ((n - 1) & (QUERY_BUF as u32 - 1)) + 1;
    if !load(skb, start, s.buf.as_mut_ptr(), n) {
        return None;
    }
    s.key.id = read_query(&s.buf, n as usize, &mut s.question)?;
    s.key.protocol = protocol;
    s.key._pad = 0;
    s.question.seq = seq;
    // SAFETY: a plain helper call.
    s.question.asked_ns = unsafe { bpf_ktime_get_boot_ns() };
    PC_DNS_QUESTION.insert(&s.key, &s.question, 0).ok()
}

/// Learns from the packet if it is an answer from a trusted resolver to a question this
/// host asked. Not inlined, and keeping its state in the per-CPU scratch: it runs after
/// the verdict's frame is gone, and only for packets from port 53.
#[inline(never)]
pub fn answer(ctx: &SkBuffContext) {
    let Some(s) = scratch() else {
        return;
    };
    let skb = ctx.skb.skb;
    let Some((protocol, l4)) = sender(skb, s) else {
        return;
    };
    // The trie key is built in the scratch too (a map value may be a lookup key).
    s.resolver = Key::new(128, s.question.resolver);
    if PC_RESOLVERS.get(&s.resolver).is_none() {
        count(dns::UNTRUSTED, 1);
        return;
    }
    // SAFETY: reads a field of the program's own context.
    let len = unsafe { (*skb).len };
    let Some((start, msg_len)) = message(skb, s, protocol, l4, len) else {
        return;
    };
    // Bytes to copy: the message, cut at the buffer. Through `black_box`, so that the
    // check below is made on the very register the helper gets: the verifier then
    // knows 1..=DNS_BUF whatever LLVM makes of the comparisons.
    let avail = len - start;
    let n = if msg_len < avail { msg_len } else { avail };
    let n = core::hint::black_box(if n > DNS_BUF as u32 {
        DNS_BUF as u32
    } else {
        n
    });
    if n == 0 || n > DNS_BUF as u32 {
        return;
    }
    // 1..=DNS_BUF again, by arithmetic: 6.1's verifier does not carry the 32-bit `n != 0`
    // into the bound it checks the helper's size against (and refuses a size of 0).
    let n = ((n - 1) & (DNS_BUF as u32 - 1)) + 1;
    if !load(skb, start, s.buf.as_mut_ptr(), n) {
        return;
    }
    s.question.protocol = protocol;
    s.question._pad = 0;
    s.loaded = n;
    if pc_dns_match() == 0 {
        count(dns::UNSOLICITED, 1);
        return;
    }
    parse(msg_len);
}

/// Reads the packet's ends into `s.question` (the resolver: its source; this host: its
/// destination; IPv4 mapped) and returns its protocol and the offset of its transport
/// header, through the scratch buffer (no stack). The verdict parsed them already;
/// reading them again here, for answers only, keeps its paths from carrying them (see
/// `skb::judge_ingress`). An IPv6 answer behind extension headers is not learned from
/// (None).
#[inline(always)]
fn sender(skb: *mut __sk_buff, s: &mut DnsScratch) -> Option<(u8, u32)> {
    if !load(skb, 0, s.buf.as_mut_ptr(), 20) {
        return None;
    }
    let (protocol, l4) = if s.buf[0] >> 4 == 6 {
        if !load(skb, 0, s.buf.as_mut_ptr(), 40) {
            return None;
        }
        copy16(&mut s.question.resolver, &s.buf[..64], 8);
        copy16(&mut s.question.client, &s.buf[..64], 24);
        (s.buf[6], 40)
    } else {
        s.question.resolver = v4_mapped([s.buf[12], s.buf[13], s.buf[14], s.buf[15]]);
        s.question.client = v4_mapped([s.buf[16], s.buf[17], s.buf[18], s.buf[19]]);
        (s.buf[9], (s.buf[0] & 0x0f) as u32 * 4)
    };
    match protocol {
        IPPROTO_TCP | IPPROTO_UDP => Some((protocol, l4)),
        _ => None,
    }
}

/// Parses the `msg_len`-byte message in the scratch (its first `DNS_BUF` bytes), one
/// global-function step per round, then learns from it.
#[inline(always)]
fn parse(msg_len: u32) {
    let Some(s) = scratch() else {
        return;
    };
    // The key the agent drew (`maps::NAME_KEY`). Before an agent wrote one it is zero,
    // and `PC_NAMES` is empty: nothing is learned either way.
    let key = PC_NAME_KEY.get(0).copied().unwrap_or_default();
    s.parser.reset(msg_len as usize, &key);
    rounds(MAX_STEPS, |_| pc_dns_step());
    learn();
}

/// Where the message starts in the packet and how long it says it is, or None when the
/// packet carries no whole message (a TCP segment that does not start one, a bare ACK).
/// Also the ports (into `s.question`) and, for TCP, the segment's sequence number
/// (`s.seq`). Header bytes are read into the scratch buffer (no stack).
#[inline(always)]
fn message(
    skb: *mut __sk_buff,
    s: &mut DnsScratch,
    protocol: u8,
    l4: u32,
    len: u32,
) -> Option<(u32, u32)> {
    if !load(skb, l4, s.buf.as_mut_ptr(), 8) {
        return None;
    }
    s.question.resolver_port = u16::from_be_bytes([s.buf[0], s.buf[1]]);
    s.question.client_port = u16::from_be_bytes([s.buf[2], s.buf[3]]);
    s.seq = u32::from_be_bytes([s.buf[4], s.buf[5], s.buf[6], s.buf[7]]);
    if protocol != IPPROTO_TCP {
        s.seq = 0;
        let start = l4 + UDP_HEADER;
        if start + DNS_HEADER > len {
            return None;
        }
        return Some((start, len - start));
    }
    if !load(skb, l4 + 12, s.buf.as_mut_ptr(), 1) {
        return None;
    }
    let start = l4 + (s.buf[0] >> 4) as u32 * 4;
    if start + 2 + DNS_HEADER > len || !load(skb, start, s.buf.as_mut_ptr(), 2) {
        return None;
    }
    let msg_len = u16::from_be_bytes([s.buf[0], s.buf[1]]) as u32;
    let start = start + 2;
    // The segment must hold the whole message (more may follow it: only the first is read).
    if msg_len < DNS_HEADER || msg_len > len - start {
        return None;
    }
    Some((start, msg_len))
}

/// Calls `f(0)`, `f(1)`, ... until it returns non-zero, at most `max` times. The bound is
/// what the verifier needs (Linux 5.3+); each call is one global function's.
#[inline(always)]
fn rounds(max: u32, mut f: impl FnMut(u32) -> i64) {
    let mut i = 0;
    while i < max {
        if f(i) != 0 {
            break;
        }
        i += 1;
    }
}

/// The per-CPU scratch. Every global function looks it up again: a global function
/// gets no pointer to its caller's state (see the module docs).
#[inline(always)]
fn scratch() -> Option<&'static mut DnsScratch> {
    // SAFETY: the per-CPU scratch, used by one program run at a time on this CPU.
    PC_DNS_SCRATCH.get_ptr_mut(0).map(|s| unsafe { &mut *s })
}

/// Whether the message in the scratch (`loaded` bytes) answers a recorded question
/// (`portcullis_common::question`): 1, and the record is consumed; 0 otherwise. A
/// record past its lifetime is removed; a record a message fails to match stays (a
/// forgery must not cancel the real answer).
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "keys and values are passed as pointers into the scratch: no copy on the stack"
)]
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn pc_dns_match() -> i32 {
    let Some(s) = scratch() else { return 0 };
    let n = s.loaded as usize;
    let Some(id) = message_id(&s.buf, n) else {
        return 0;
    };
    s.question.id = id;
    let Some(q) = PC_DNS_QUESTION.get_ptr(&s.question) else {
        return 0;
    };
    // SAFETY: an LRU value stays valid for the program's run (RCU).
    let q = unsafe { &*q };
    // SAFETY: a plain helper call.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    if now.wrapping_sub(q.asked_ns) > QUESTION_LIFETIME_NS {
        let _ = PC_DNS_QUESTION.remove(&s.question);
        return 0;
    }
    if (s.question.protocol == IPPROTO_TCP && q.seq != s.seq) || !q.answered_by(&s.buf, n) {
        return 0;
    }
    // Consumed: a second message for this question (a replay, a retransmission, a
    // forgery racing the real answer) finds nothing. Only the one that removes it
    // learns, should two CPUs race.
    (PC_DNS_QUESTION.remove(&s.question).is_ok()) as i32
}

/// One parser step: 0 goes on, 1 stops. A global BPF function (see the module docs),
/// which hands the step to one of three more, by what it does (`dns::Next`).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn pc_dns_step() -> i64 {
    match scratch().map(|s| s.parser.next()) {
        Some(Next::Name) => pc_dns_name(),
        Some(Next::Hash) => pc_dns_hash(),
        Some(Next::Other) => pc_dns_other(),
        None => 1,
    }
}

/// `Parser::step_hash` as a global BPF function: 0 goes on, 1 stops.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn pc_dns_hash() -> i64 {
    match scratch() {
        Some(s) => (!s.parser.step_hash()) as i64,
        None => 1,
    }
}

/// `Parser::step_name` as a global BPF function: 0 goes on, 1 stops.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn pc_dns_name() -> i64 {
    match scratch() {
        Some(s) => (!s.parser.step_name(&s.buf)) as i64,
        None => 1,
    }
}

/// `Parser::step_other` as a global BPF function: 0 goes on, 1 stops.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn pc_dns_other() -> i64 {
    match scratch() {
        Some(s) => (!s.parser.step_other(&s.buf)) as i64,
        None => 1,
    }
}

/// One pattern of the question (`names::PatternWalk`): 0 goes on, 1 stops. A global BPF
/// function.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn pc_dns_pattern() -> i64 {
    let Some(s) = scratch() else { return 1 };
    match s
        .walk
        .next(&s.parser.question, &s.parser.question_lens, s.generation)
    {
        Some(key) => {
            s.listed |= names::record_pattern(
                &KernelTables,
                &key,
                &s.buf,
                s.parser.question_end as usize,
                s.walk.bytes(),
                0,
                &mut s.patterns,
            );
            0
        }
        None => 1,
    }
}

/// Stores address `index` of the answer with the question's patterns: 0 goes on, 1
/// stops. A global BPF function.
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "key and value are passed as pointers into the scratch: no copy on the stack"
)]
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn pc_dns_address(index: u32) -> i64 {
    let Some(s) = scratch() else { return 1 };
    let i = index as usize;
    if i >= MAX_ADDRS || i >= s.parser.addr_count as usize {
        return 1;
    }
    let a = s.parser.addrs[i & (MAX_ADDRS - 1)];
    let ttl = if a.ttl > MAX_TTL { MAX_TTL } else { a.ttl };
    let expires = s.now + ttl as u64 * NS_PER_SEC + s.grace;
    s.key.addr = a.addr;
    match PC_LEARNED.get_ptr(&s.key) {
        // SAFETY: an LRU value stays valid for the program's run (RCU).
        Some(old) => s.entry = unsafe { *old },
        None => {
            if at_limit(s) {
                s.over_limit += 1;
                return 0;
            }
            s.entry = Learned::default();
            s.inserted += 1;
        }
    }
    s.evicted += s.entry.merge(&s.patterns, expires, s.now) as u64;
    if PC_LEARNED.insert(&s.key, &s.entry, 0).is_ok() {
        s.stored += 1;
    }
    0
}

/// Whether a pattern of the answer holds `LEARNED_PER_NAME` addresses already; if none
/// does, counts the new address for each of them. The counts are approximate between
/// the agent's recounts (two CPUs may add at once; the LRU drops entries silently), which
/// moves the limit by a few addresses, never the verdicts of learned ones.
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "the key lives in the scratch and is passed by pointer: no copy on the stack"
)]
#[inline(always)]
fn at_limit(s: &mut DnsScratch) -> bool {
    let mut i = 0;
    while i < LEARNED_NAMES {
        let n = s.patterns.names[i];
        if n.hash != 0 {
            s.name_key = NameKey::new(n.hash, 0, n.kind);
            if let Some(c) = PC_NAME_ADDRS.get_ptr(&s.name_key) {
                // SAFETY: a hash map value stays valid for the program's run (RCU).
                if unsafe { *c } >= LEARNED_PER_NAME {
                    return true;
                }
            }
        }
        i += 1;
    }
    let mut i = 0;
    while i < LEARNED_NAMES {
        let n = s.patterns.names[i];
        if n.hash != 0 {
            s.name_key = NameKey::new(n.hash, 0, n.kind);
            match PC_NAME_ADDRS.get_ptr_mut(&s.name_key) {
                // SAFETY: as above; a lost add between CPUs is corrected by the recount.
                Some(c) => unsafe { *c += 1 },
                None => {
                    let _ = PC_NAME_ADDRS.insert(&s.name_key, &1, 0);
                }
            }
        }
        i += 1;
    }
    false
}

/// Stores what a parsed message teaches. Not inlined: its frame is separate.
#[inline(never)]
fn learn() {
    let (Some(s), Some(cfg)) = (scratch(), config_ref()) else {
        return;
    };
    match s.parser.status() {
        Status::Malformed => return count(dns::MALFORMED, 1),
        // A parse that never finished within MAX_STEPS (impossible by its definition)
        // teaches nothing.
        Status::Running => return count(dns::MALFORMED, 1),
        _ => {}
    }
    if !s.parser.usable() {
        return;
    }
    s.walk = PatternWalk::new(s.parser.question_labels as usize, s.parser.key());
    s.listed = false;
    s.generation = cfg.generation;
    s.patterns = Learned::default();
    rounds(MAX_LABELS as u32, |_| pc_dns_pattern());
    if !s.listed {
        return count(dns::UNLISTED, 1);
    }
    // SAFETY: a plain helper call.
    s.now = unsafe { bpf_ktime_get_boot_ns() };
    s.grace = cfg.dns_grace as u64 * NS_PER_SEC;
    s.stored = 0;
    s.inserted = 0;
    s.evicted = 0;
    s.over_limit = 0;
    rounds(MAX_ADDRS as u32, |i| pc_dns_address(i));
    if s.stored > 0 {
        count(dns::ANSWERS_LEARNED, 1);
        count(dns::ADDRESSES_LEARNED, s.stored);
    }
    if s.inserted > 0 {
        count(dns::INSERTED, s.inserted);
    }
    if s.evicted > 0 {
        count(dns::PATTERNS_EVICTED, s.evicted);
    }
    if s.over_limit > 0 {
        count(dns::OVER_LIMIT, s.over_limit);
    }
}
