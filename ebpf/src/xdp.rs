//! XDP: drops inbound packets of flows no rule allows, host-wide, before the kernel
//! spends anything on them (no skb, no socket lookup).
//!
//! The same policy, rule ids and counters as the cgroup programs: a new inbound flow is
//! decided by `portcullis_common::policy::decide` on its local (destination) port and
//! remote (source) address; allowed packets count against their rule; denies go through
//! `account::deny` with hook `XDP`, so audit mode counts would-drops and passes them.
//!
//! Per packet, in order:
//! 1. non-IP frames pass (ARP among them; counted in `PASS_NON_IP`); a frame whose
//!    headers cannot be parsed is denied as malformed (fail closed);
//! 2. a spoofed source (IPv4-mapped in IPv6, loopback, unspecified outside neighbour
//!    discovery) is denied for `SPOOFED`;
//! 3. a later fragment (no ports) passes only if its datagram's first fragment was
//!    allowed (`PC_FRAGS`, below); otherwise it is denied (reason `STATE`);
//! 4. ICMP is related-only (`crate::related`): an error passes when it quotes a flow
//!    this host has, an echo reply when this host sent the request, an echo request
//!    when `Config::icmp_echo` says so, IPv6 neighbour discovery and MLD when link-local
//!    (RFC 4890); other protocols than TCP and UDP are denied;
//! 5. TCP SYN without ACK opens a flow: the rule for the destination port decides;
//! 6. any other TCP segment, and any UDP datagram, passes when the destination port is
//!    open to this peer (more of an allowed inbound flow, or a new UDP one), or when it
//!    answers a flow this host opened (`PC_FLOWS_OUT`, decided again when the policy
//!    epoch changed: a revoked flow is denied for `REVOKED`, and a flow audit mode
//!    would deny counts its replies against itself); otherwise it is denied (TCP:
//!    reason `STATE`; UDP: the policy's reason, as the cgroup side reports it; either:
//!    `REVOKED` when the cgroup side had let the inbound flow in, `PC_FLOWS_IN`).
//!
//! Source ports are never trusted: a segment from port 25 or 53 to a port no rule opens
//! passes only if this host opened exactly that flow.
//!
//! # Flow state: a shared LRU table, not conntrack
//! Replies are recognised by `PC_FLOWS_OUT`, the LRU hash of allowed outbound flows that
//! the cgroup egress program fills (unconnected UDP per new flow; sockets with a
//! connect() record whenever one of their packets finds no entry). Chosen over the
//! conntrack kfuncs (`bpf_xdp_ct_lookup`) because it works without nf_conntrack loaded
//! (a host that runs no netfilter rules should not pay for conntrack on every packet,
//! nor depend on its module and sysctls), because it holds exactly the flows the policy
//! allowed (conntrack holds every flow, denied or not, and its state says nothing about
//! our rules) and because it costs one hash lookup, only for packets the port table did
//! not already allow.
//!
//! When the table is full, inserting a new flow evicts the least recently used one (the
//! kernel's LRU is approximate: per-CPU lists, a reference bit set by every lookup,
//! including the one this program does on each reply). An evicted flow's replies are
//! dropped here, as `STATE` denies, until this host sends on the flow again: the next
//! outbound packet of a connect()ed socket or the next datagram of an unconnected UDP
//! socket re-inserts it. A TCP flow idle in both directions longer than it takes 64K
//! newer flows to churn through the table therefore loses the first segment the peer
//! sends after the pause; the peer retransmits, and the flow resumes as soon as this
//! host sends anything (an ACK of earlier data, a keepalive). A flow that only ever
//! receives after a long idle (a server push with no keepalive) can stall; the
//! `deny` counters with reason `STATE` show it. The table is sized (`FLOWS_MAX`) so that
//! this takes far more concurrent flows than a mail gateway opens.
//!
//! Addresses must look the same to both programs: with source NAT on this host the
//! egress program sees the pre-NAT address and this program the post-NAT one, so
//! replies to NATed flows (containers behind masquerade) do not match and are dropped.
//!
//! # Fragments: tracked, never guessed
//! A later fragment carries no ports. The first fragment of a datagram (IPv4: MF set,
//! offset 0; IPv6: a fragment header with offset 0 and M set) is judged by its ports;
//! when allowed, its rule is stored in `PC_FRAGS` under (source, destination,
//! identification, protocol), and later fragments with the same key pass, counted
//! against that rule. Later fragments without an entry are denied: one that arrives
//! before its first fragment (reordering) is lost, and the datagram with it. A first
//! fragment too short for its transport header, and an IPv4 TCP fragment at offset 8
//! (RFC 1858: it could rewrite the flags), are malformed. Entries are never removed
//! (the last fragment can arrive before a middle one); the LRU recycles them.
//!
//! Not done here: the loopback exemption (loopback traffic never reaches a device's XDP
//! hook; a 127/8 or `::1` source on the wire is spoofed).

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    btf_maps::LruHashMap,
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use portcullis_common::{
    config::Config,
    event::hook,
    flow::{FlowKey, FlowValue, FragKey, VERDICT_ALLOW, echo_key, quoted_flow4, quoted_flow6},
    maps::FRAGS_MAX,
    policy::{
        DIR_IN, DIR_OUT, Decision, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, Icmp,
        decide, icmp4_class, icmp6_class, is_spoofed, is_unspecified,
    },
    stats::{self, reason},
};

use crate::{
    account::{Denied, count_rule, count_stat, deny},
    maps::{KernelTables, PC_FLOWS_IN, PC_FLOWS_OUT, config, config_ref, may_have_flow},
    related::{echo_answered, in_tables},
    xdp_parse::{Fragment, Frame, Link, TCP_ACK, TCP_SYN, icmp_offset, link, parse, read_at},
};

/// A verdict on an inbound packet, with the direction of the flow it belongs to (an
/// answer to a flow this host opened is counted as that outbound flow) and whether a
/// deny raises an event (once per flow).
#[derive(Clone, Copy)]
struct Verdict {
    direction: u8,
    decision: Decision,
    event: bool,
}

impl Verdict {
    #[inline(always)]
    const fn inbound(decision: Decision) -> Self {
        Verdict {
            direction: DIR_IN,
            decision,
            event: true,
        }
    }
}

/// Allowed first fragments, for the rest of their datagram (see the module docs). Only
/// this program uses it, so it lives here rather than with the shared maps.
#[btf_map]
static PC_FRAGS: LruHashMap<FragKey, FlowValue, { FRAGS_MAX as usize }> = LruHashMap::new();

/// Rule "index" stored for an allowed ICMP first fragment: no rule, counted as ICMP.
const NO_RULE: u16 = 0;

#[xdp]
pub fn pc_xdp(ctx: XdpContext) -> u32 {
    // The link layer first, before the configuration or any frame state: a non-IP frame
    // (ARP, LLDP) costs one read and one counter.
    let (ip, l3) = match link(&ctx) {
        Ok(Link::Ip(ip)) => ip,
        Ok(Link::NonIp) => {
            count_stat(stats::LAYER_XDP, stats::PASS_NON_IP, 1, frame_len(&ctx));
            return XDP_PASS;
        }
        Err(()) => return malformed(frame_len(&ctx)),
    };
    // A one-entry array: the lookup cannot fail; `None` is for the verifier only, and
    // fails closed like a frame that cannot be parsed.
    let Some(cfg) = config_ref() else {
        return XDP_DROP;
    };
    let mut f = Frame::EMPTY;
    match parse(&ctx, ip, l3, &mut f) {
        Ok(()) => judge(&ctx, cfg, &f),
        // Fail closed: what cannot be parsed cannot be shown to be allowed.
        Err(()) => malformed(frame_len(&ctx)),
    }
}

#[inline(always)]
fn frame_len(ctx: &XdpContext) -> u32 {
    // SAFETY: reads two fields of the program's own context.
    unsafe { (*ctx.ctx).data_end.wrapping_sub((*ctx.ctx).data) }
}

#[inline(always)]
fn judge(ctx: &XdpContext, cfg: &Config, f: &Frame) -> u32 {
    // XDP runs on the interfaces the configuration names, where a loopback source is
    // always forged (loopback traffic never crosses them; BPF_PROG_TEST_RUN reports the
    // loopback device as the receiving one, so the device is not asked).
    if is_spoofed(&f.src, f.v6, false) && !dad_or_mld(f) {
        return apply(cfg, f, &Verdict::inbound(Decision::Deny(reason::SPOOFED)));
    }
    let first = match f.fragment {
        Fragment::Later => return later_fragment(cfg, f),
        Fragment::First => true,
        Fragment::None => false,
    };
    let v = match (f.protocol, f.v6) {
        (IPPROTO_TCP, _) => tcp(cfg, f),
        (IPPROTO_UDP, _) => udp(cfg, f),
        (IPPROTO_ICMP, false) | (IPPROTO_ICMPV6, true) => match icmp(ctx, cfg, f, first) {
            ICMP_PASSES => return XDP_PASS,
            why => Verdict::inbound(Decision::Deny(why)),
        },
        _ => Verdict::inbound(Decision::Deny(reason::PROTOCOL)),
    };
    if let (true, Decision::Allow(rule)) = (first, v.decision) {
        remember_fragment(f, rule);
    }
    apply(cfg, f, &v)
}

/// Duplicate address detection and multicast listener reports come from `::`.
#[inline(always)]
fn dad_or_mld(f: &Frame) -> bool {
    f.v6 && f.protocol == IPPROTO_ICMPV6
        && is_unspecified(&f.src)
        && icmp6_class(f.icmp_type, f.hop_limit, &f.src) == Icmp::Local
}

/// The policy's verdict on this packet as a new inbound flow.
#[inline(always)]
fn inbound(cfg: &Config, f: &Frame) -> Decision {
    decide(
        &KernelTables,
        cfg.generation,
        DIR_IN,
        f.protocol,
        f.dport,
        &f.src,
    )
}

/// TCP: a SYN without ACK is a new flow; anything else must belong to an allowed one.
#[inline(always)]
fn tcp(cfg: &Config, f: &Frame) -> Verdict {
    let d = inbound(cfg, f);
    if f.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        return Verdict::inbound(d);
    }
    match d {
        // More of an inbound flow the port's rule allows (judged by port, like the
        // cgroup ingress program judges accepted sockets).
        Decision::Allow(_) => Verdict::inbound(d),
        Decision::Deny(_) => not_by_port(cfg, f, reason::STATE),
    }
}

/// UDP: open port for this peer, or a reply to a flow this host opened.
#[inline(always)]
fn udp(cfg: &Config, f: &Frame) -> Verdict {
    match inbound(cfg, f) {
        d @ Decision::Allow(_) => Verdict::inbound(d),
        Decision::Deny(why) => not_by_port(cfg, f, why),
    }
}

/// A packet the port table does not let in: the answer to a flow this host opened, the
/// packet of an inbound flow a reload revoked, or denied for `why`. Not inlined: the
/// reply path keeps the allow path's stack small.
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "the key is looked up by reference: no 40-byte copy per lookup on a tight stack"
)]
#[inline(never)]
fn not_by_port(cfg: &Config, f: &Frame, why: u32) -> Verdict {
    // No flow with this local port was ever noted (a scan, a flood of closed ports):
    // neither table can answer, and the deny costs no hash lookup.
    if !may_have_flow(f.protocol, f.dport) {
        return Verdict::inbound(Decision::Deny(why));
    }
    // This host's view: the packet's destination is local.
    let key = FlowKey {
        local: f.dst,
        remote: f.src,
        local_port: f.dport,
        remote_port: f.sport,
        protocol: f.protocol,
        _pad: [0; 3],
    };
    if let Some(v) = PC_FLOWS_OUT.get_ptr_mut(&key) {
        // SAFETY: LRU hash values stay valid for the program's run (RCU); the cgroup
        // programs write the same verdict.
        let j = unsafe {
            (*v).judge(cfg.epoch, || {
                decide(
                    &KernelTables,
                    cfg.generation,
                    DIR_OUT,
                    f.protocol,
                    f.sport,
                    &f.src,
                )
            })
        };
        if j.changed {
            // SAFETY: as above.
            unsafe { *v = j.store };
        }
        return Verdict {
            direction: DIR_OUT,
            decision: j.decision,
            event: j.event,
        };
    }
    // An inbound flow the cgroup side let in whose port no rule opens any more.
    let revoked = PC_FLOWS_IN.get_ptr(&key).is_some_and(|v| {
        // SAFETY: as above.
        unsafe { (*v).verdict == VERDICT_ALLOW }
    });
    Verdict::inbound(Decision::Deny(if revoked { reason::REVOKED } else { why }))
}

/// What [`icmp`] returns for a message that passes.
const ICMP_PASSES: u32 = u32::MAX;

/// ICMP, related-only (see the module docs): [`ICMP_PASSES`] when it passes (counted
/// here), else the reason to deny it for. Not inlined: the ICMP paths stay out of the
/// TCP/UDP path's frame; the deny is applied by the caller, so the two frames never stack.
#[inline(never)]
fn icmp(ctx: &XdpContext, cfg: &Config, f: &Frame, first: bool) -> u32 {
    let class = if f.v6 {
        icmp6_class(f.icmp_type, f.hop_limit, &f.src)
    } else {
        icmp4_class(f.icmp_type)
    };
    let ok = match class {
        Icmp::Local => true,
        Icmp::EchoRequest if cfg.icmp_echo == 1 => true,
        Icmp::EchoReply if cfg.icmp_echo == 1 => match read_at::<2>(ctx, icmp_offset() + 4) {
            Ok(id) => echo_answered(&echo_key(f.dst, f.src, u16::from_be_bytes(id), f.protocol)),
            Err(()) => false,
        },
        Icmp::Error => error_related(ctx, f),
        _ => return reason::ICMP,
    };
    if !ok {
        return reason::STATE;
    }
    if first {
        remember_fragment(f, NO_RULE);
    }
    count_stat(stats::LAYER_XDP, stats::PASS_ICMP, 1, f.ip_len);
    ICMP_PASSES
}

/// Whether an ICMP error quotes a flow this host has (a flow-table entry: see
/// `related::in_tables`). Inlined into [`icmp`], whose frame it shares.
#[inline(always)]
fn error_related(ctx: &XdpContext, f: &Frame) -> bool {
    let quote = icmp_offset() + 8;
    let mut key = FlowKey::default();
    let known = if f.v6 {
        match read_at::<48>(ctx, quote) {
            Ok(q) => quoted_flow6(&q, &mut key, true),
            Err(()) => false,
        }
    } else {
        match read_at::<28>(ctx, quote) {
            Ok(q) => quoted_flow4(&q, &mut key, true),
            Err(()) => false,
        }
    };
    known && in_tables(&key)
}

#[inline(always)]
fn remember_fragment(f: &Frame, rule: u16) {
    let _ = PC_FRAGS.insert(f.frag_key(), FlowValue::allowed(rule, 0), 0);
}

/// A fragment after the first: its datagram's first fragment decided for it.
#[inline(always)]
fn later_fragment(cfg: &Config, f: &Frame) -> u32 {
    match PC_FRAGS.get_ptr(f.frag_key()) {
        // SAFETY: see `reply_rule`.
        Some(v) => match unsafe { (*v).rule } {
            NO_RULE => {
                count_stat(stats::LAYER_XDP, stats::PASS_ICMP, 1, f.ip_len);
                XDP_PASS
            }
            rule => apply(cfg, f, &Verdict::inbound(Decision::Allow(rule))),
        },
        None => apply(cfg, f, &Verdict::inbound(Decision::Deny(reason::STATE))),
    }
}

/// Counts and applies a verdict on an inbound packet. Inlined: a BPF-to-BPF call less on
/// every packet (3 ns on an allowed one). It was a call of its own while the frame state
/// was zeroed by a call to a byte loop (see `.cargo/config.toml`); with that code, LLVM
/// read a variant's payload on paths that never built it and the verifier refused it.
#[inline(always)]
fn apply(cfg: &Config, f: &Frame, v: &Verdict) -> u32 {
    match v.decision {
        Decision::Allow(rule) => {
            count_rule(stats::LAYER_XDP, rule, 1, f.ip_len);
            XDP_PASS
        }
        Decision::Deny(why) => deny_packet(cfg, f, v.direction, why, v.event),
    }
}

/// Accounts a denied packet (inlined, like [`apply`]).
#[inline(always)]
fn deny_packet(cfg: &Config, f: &Frame, direction: u8, why: u32, event: bool) -> u32 {
    let denied = Denied {
        direction,
        reason: why,
        protocol: f.protocol,
        local: f.dst,
        remote: f.src,
        local_port: f.dport,
        remote_port: f.sport,
        hook: hook::XDP,
        cgroup_id: 0,
        skb: core::ptr::null_mut(),
    };
    if deny(cfg, &denied, 1, f.ip_len, event) {
        XDP_DROP
    } else {
        XDP_PASS
    }
}

/// Not inlined, like [`deny_packet`]. Reads the configuration itself: a frame can be
/// found malformed before the entry point read it.
#[inline(never)]
fn malformed(bytes: u32) -> u32 {
    count_stat(stats::LAYER_XDP, stats::MALFORMED, 1, bytes);
    let cfg = config();
    let d = Denied::malformed(DIR_IN, hook::XDP);
    if deny(&cfg, &d, 1, bytes, true) {
        XDP_DROP
    } else {
        XDP_PASS
    }
}
