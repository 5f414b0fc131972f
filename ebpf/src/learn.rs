//! Learning addresses from DNS answers, in cgroup_skb ingress, before the application
//! can read the answer: so the connect() that follows the lookup at once already finds
//! the address (no proxy, no userspace round trip).
//!
//! [`answer`] runs for a UDP datagram or TCP segment from remote port 53 that the
//! verdict let in (pass, or audit's would-deny). It learns only when the remote address
//! is in `PC_RESOLVERS` (the site's trusted resolvers); anything else from port 53 is
//! counted `untrusted` and never parsed. The message (UDP: the payload; TCP: a segment
//! that starts with the 2-byte length prefix and carries the whole message) is copied
//! into the per-CPU scratch and parsed by `portcullis_common::dns::Parser`, one bounded
//! step per round of a bounded loop, at most `MAX_STEPS` rounds. Each step (and each
//! pattern and address below) is a global BPF function, which the verifier checks once,
//! on its own, whatever calls it: the loop costs it a few instructions a round, not the
//! step's paths times the rounds. Global functions, not `bpf_loop` callbacks: Linux 5.10
//! has no `bpf_loop` (5.17+), and 6.1's verifier went over its 1M-instruction limit on
//! the callbacks. Before 5.12 a global function may take only scalars, so each finds its
//! state in the per-CPU scratch; and it declares no argument it does not read (LLVM
//! leaves such a register unset, and the verifier refuses a non-scalar there). Then the
//! question's name is matched against the live
//! generation's `PC_NAMES` (every pattern it matches: the exact name and the wildcards
//! above it) and each address is stored in `PC_LEARNED` with those patterns, valid for
//! min(TTL, `MAX_TTL`) + `dns_grace` seconds. A name no group lists teaches nothing.
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
    stats::dns,
};

use crate::maps::{
    DnsScratch, KernelTables, PC_DNS_SCRATCH, PC_DNS_STATS, PC_LEARNED, PC_NAME_ADDRS,
    PC_RESOLVERS, config_ref,
};

/// The port answers come from.
pub const DNS_PORT: u16 = 53;
/// UDP header length.
const UDP_HEADER: u32 = 8;
/// Smallest DNS message: the header.
const DNS_HEADER: u32 = 12;
const NS_PER_SEC: u64 = 1_000_000_000;

#[inline(always)]
fn count(index: u32, n: u64) {
    if let Some(c) = PC_DNS_STATS.get_ptr_mut(index) {
        // SAFETY: a per-CPU array slot, touched by no other CPU.
        unsafe { *c += n };
    }
}

/// Learns from the packet if it is an answer from a trusted resolver. Not inlined, and
/// keeping its state in the per-CPU scratch: it runs after the verdict's frame is gone,
/// and only for packets from port 53.
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
    s.resolver = Key::new(128, s.key.addr);
    if PC_RESOLVERS.get(&s.resolver).is_none() {
        count(dns::UNTRUSTED, 1);
        return;
    }
    let skb = ctx.skb.skb;
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
    load_and_parse(skb, s, start, n, msg_len);
}

/// Reads the packet's source address into `s.key` (IPv4 mapped), its protocol and the
/// offset of its transport header, through the scratch buffer (no stack). The verdict
/// parsed them already; reading them again here, for answers only, keeps its paths
/// from carrying them (see `skb::judge_ingress`). An IPv6 answer behind extension
/// headers is not learned from (None).
#[inline(always)]
fn sender(skb: *mut __sk_buff, s: &mut DnsScratch) -> Option<(u8, u32)> {
    let load = |at: u32, n: u32, to: *mut u8| {
        // SAFETY: `n` bytes into the scratch; the helper checks the packet's bounds.
        unsafe { bpf_skb_load_bytes(skb.cast_const().cast(), at, to.cast(), n) == 0 }
    };
    if !load(0, 20, s.buf.as_mut_ptr()) {
        return None;
    }
    let (protocol, l4) = if s.buf[0] >> 4 == 6 {
        if !load(8, 16, s.key.addr.as_mut_ptr()) {
            return None;
        }
        (s.buf[6], 40)
    } else {
        s.key.addr = v4_mapped([s.buf[12], s.buf[13], s.buf[14], s.buf[15]]);
        (s.buf[9], (s.buf[0] & 0x0f) as u32 * 4)
    };
    match protocol {
        IPPROTO_TCP | IPPROTO_UDP => Some((protocol, l4)),
        _ => None,
    }
}

/// Copies `n` (1..=DNS_BUF) bytes at `start` into the scratch and parses them as a
/// message of `msg_len` bytes, then learns from it.
#[inline(always)]
fn load_and_parse(skb: *mut __sk_buff, s: &mut DnsScratch, start: u32, n: u32, msg_len: u32) {
    // SAFETY: at most DNS_BUF bytes into the scratch buffer; the helper checks the
    // packet's bounds.
    let loaded =
        unsafe { bpf_skb_load_bytes(skb.cast_const().cast(), start, s.buf.as_mut_ptr().cast(), n) };
    if loaded != 0 {
        return;
    }
    s.parser.reset(msg_len as usize);
    rounds(MAX_STEPS, |_| pc_dns_step());
    learn();
}

/// Where the message starts in the packet and how long it says it is, or None when the
/// packet carries no whole message (a TCP segment that does not start one, a bare ACK).
/// Header bytes are read into the scratch buffer (no stack).
#[inline(always)]
fn message(
    skb: *mut __sk_buff,
    s: &mut DnsScratch,
    protocol: u8,
    l4: u32,
    len: u32,
) -> Option<(u32, u32)> {
    if protocol != IPPROTO_TCP {
        let start = l4 + UDP_HEADER;
        if start + DNS_HEADER > len {
            return None;
        }
        return Some((start, len - start));
    }
    let load = |at: u32, n: u32, s: &mut DnsScratch| {
        // SAFETY: 1 or 2 bytes into the scratch buffer; the helper checks the bounds.
        unsafe {
            bpf_skb_load_bytes(skb.cast_const().cast(), at, s.buf.as_mut_ptr().cast(), n) == 0
        }
    };
    if !load(l4 + 12, 1, s) {
        return None;
    }
    let start = l4 + (s.buf[0] >> 4) as u32 * 4;
    if start + 2 + DNS_HEADER > len || !load(start, 2, s) {
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

/// The per-CPU scratch. Every step looks it up again: a global function gets no pointer
/// to its caller's state (see the module docs).
#[inline(always)]
fn scratch() -> Option<&'static mut DnsScratch> {
    // SAFETY: the per-CPU scratch, used by one program run at a time on this CPU.
    PC_DNS_SCRATCH.get_ptr_mut(0).map(|s| unsafe { &mut *s })
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
    match s.walk.next(&s.parser.question, s.generation) {
        Some(key) => {
            s.listed |= names::record_pattern(&KernelTables, &key, 0, &mut s.patterns);
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
    s.walk = PatternWalk::new(s.parser.question_labels as usize);
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
