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
//! 2. a later fragment (no ports) passes only if its datagram's first fragment was
//!    allowed (`PC_FRAGS`, below); otherwise it is denied (reason `STATE`);
//! 3. ICMP errors and every ICMPv6 type but echo pass (neighbour discovery among them);
//!    echo is `Config::icmp_echo`; other protocols than TCP and UDP are denied;
//! 4. TCP SYN without ACK opens a flow: the rule for the destination port decides;
//! 5. any other TCP segment, and any UDP datagram, passes when the destination port is
//!    open to this peer (more of an allowed inbound flow, or a new UDP one), or when it
//!    answers a flow this host opened (`PC_FLOWS_OUT`); otherwise it is denied (TCP:
//!    reason `STATE`; UDP: the policy's reason, as the cgroup side reports it).
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
//! hook; a 127/8 source on the wire is judged like any other address and the kernel
//! drops it as a martian anyway).

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    btf_maps::LruHashMap,
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use portcullis_common::{
    config::Config,
    event::hook,
    flow::{FlowKey, FlowValue, FragKey, VERDICT_ALLOW},
    maps::FRAGS_MAX,
    policy::{
        DIR_IN, Decision, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, decide,
        icmp4_is_echo, icmp4_is_error, icmp6_is_echo,
    },
    stats::{self, reason},
};

use crate::{
    account::{Denied, count_rule, count_stat, deny},
    maps::{KernelTables, PC_FLOWS_OUT, config},
    xdp_parse::{Fragment, Frame, Parsed, TCP_ACK, TCP_SYN, parse},
};

/// Allowed first fragments, for the rest of their datagram (see the module docs). Only
/// this program uses it, so it lives here rather than with the shared maps.
#[btf_map]
static PC_FRAGS: LruHashMap<FragKey, FlowValue, { FRAGS_MAX as usize }> = LruHashMap::new();

/// Rule "index" stored for an allowed ICMP first fragment: no rule, counted as ICMP.
const NO_RULE: u16 = 0;

#[xdp]
pub fn pc_xdp(ctx: XdpContext) -> u32 {
    let cfg = config();
    let mut f = Frame::EMPTY;
    match parse(&ctx, &mut f) {
        Ok(Parsed::Ip) => judge(&cfg, &f),
        Ok(Parsed::NonIp) => {
            count_stat(stats::LAYER_XDP, stats::PASS_NON_IP, 1, frame_len(&ctx));
            XDP_PASS
        }
        // Fail closed: what cannot be parsed cannot be shown to be allowed.
        Err(()) => malformed(&cfg, frame_len(&ctx)),
    }
}

#[inline(always)]
fn frame_len(ctx: &XdpContext) -> u32 {
    // SAFETY: reads two fields of the program's own context.
    unsafe { (*ctx.ctx).data_end.wrapping_sub((*ctx.ctx).data) }
}

#[inline(always)]
fn judge(cfg: &Config, f: &Frame) -> u32 {
    let first = match f.fragment {
        Fragment::Later => return later_fragment(cfg, f),
        Fragment::First => true,
        Fragment::None => false,
    };
    let d = match (f.protocol, f.v6) {
        (IPPROTO_TCP, _) => tcp(cfg, f),
        (IPPROTO_UDP, _) => udp(cfg, f),
        (IPPROTO_ICMP, false) => {
            return icmp(
                cfg,
                f,
                first,
                icmp4_is_error(f.icmp_type),
                icmp4_is_echo(f.icmp_type),
            );
        }
        (IPPROTO_ICMPV6, true) => return icmp(cfg, f, first, !icmp6_is_echo(f.icmp_type), true),
        _ => Decision::Deny(reason::PROTOCOL),
    };
    if let (true, Decision::Allow(rule)) = (first, d) {
        remember_fragment(f, rule);
    }
    apply(cfg, f, d)
}

/// TCP: a SYN without ACK is a new flow; anything else must belong to an allowed one.
#[inline(always)]
fn tcp(cfg: &Config, f: &Frame) -> Decision {
    let d = decide(
        &KernelTables,
        cfg.generation,
        DIR_IN,
        IPPROTO_TCP,
        f.dport,
        &f.src,
    );
    if f.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        return d;
    }
    match d {
        // More of an inbound flow the port's rule allows (judged by port, like the
        // cgroup ingress program judges accepted sockets).
        Decision::Allow(_) => d,
        Decision::Deny(_) => match reply_rule(f) {
            Some(rule) => Decision::Allow(rule),
            None => Decision::Deny(reason::STATE),
        },
    }
}

/// UDP: open port for this peer, or a reply to a flow this host opened.
#[inline(always)]
fn udp(cfg: &Config, f: &Frame) -> Decision {
    let d = decide(
        &KernelTables,
        cfg.generation,
        DIR_IN,
        IPPROTO_UDP,
        f.dport,
        &f.src,
    );
    match d {
        Decision::Allow(_) => d,
        Decision::Deny(_) => match reply_rule(f) {
            Some(rule) => Decision::Allow(rule),
            None => d,
        },
    }
}

/// The rule of the outbound flow this packet answers, if this host opened one.
#[inline(always)]
fn reply_rule(f: &Frame) -> Option<u16> {
    // This host's view: the packet's destination is local.
    let key = FlowKey {
        local: f.dst,
        remote: f.src,
        local_port: f.dport,
        remote_port: f.sport,
        protocol: f.protocol,
        _pad: [0; 3],
    };
    // SAFETY: LRU hash values stay valid for the program's run (RCU).
    PC_FLOWS_OUT.get_ptr(key).map(|v| unsafe { (*v).rule })
}

/// ICMP: errors (for ICMPv6 everything but echo, neighbour discovery included) pass;
/// echo is a setting; the rest is denied.
#[inline(always)]
fn icmp(cfg: &Config, f: &Frame, first: bool, always: bool, echo: bool) -> u32 {
    if always || (echo && cfg.icmp_echo == 1) {
        if first {
            remember_fragment(f, NO_RULE);
        }
        count_stat(stats::LAYER_XDP, stats::PASS_ICMP, 1, f.ip_len);
        return XDP_PASS;
    }
    apply(cfg, f, Decision::Deny(reason::ICMP))
}

#[inline(always)]
fn remember_fragment(f: &Frame, rule: u16) {
    let _ = PC_FRAGS.insert(
        f.frag_key(),
        FlowValue {
            rule,
            verdict: VERDICT_ALLOW,
            _pad: [0; 5],
        },
        0,
    );
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
            rule => apply(cfg, f, Decision::Allow(rule)),
        },
        None => apply(cfg, f, Decision::Deny(reason::STATE)),
    }
}

/// Counts and applies a decision on an inbound packet.
#[inline(always)]
fn apply(cfg: &Config, f: &Frame, d: Decision) -> u32 {
    match d {
        Decision::Allow(rule) => {
            count_rule(stats::LAYER_XDP, rule, 1, f.ip_len);
            XDP_PASS
        }
        Decision::Deny(why) => deny_packet(cfg, f, why),
    }
}

/// Accounts a denied packet. Not inlined: the deny path (event, denied-port table) has
/// its own stack frame, which keeps the allow path's within the 512-byte limit.
#[inline(never)]
fn deny_packet(cfg: &Config, f: &Frame, why: u32) -> u32 {
    let denied = Denied {
        direction: DIR_IN,
        reason: why,
        protocol: f.protocol,
        local: f.dst,
        remote: f.src,
        local_port: f.dport,
        remote_port: f.sport,
        hook: hook::XDP,
        cgroup_id: 0,
    };
    if deny(cfg, &denied, 1, f.ip_len, true) {
        XDP_DROP
    } else {
        XDP_PASS
    }
}

/// Not inlined, like [`deny_packet`].
#[inline(never)]
fn malformed(cfg: &Config, bytes: u32) -> u32 {
    count_stat(stats::LAYER_XDP, stats::MALFORMED, 1, bytes);
    let d = Denied::malformed(DIR_IN, hook::XDP);
    if deny(cfg, &d, 1, bytes, true) {
        XDP_DROP
    } else {
        XDP_PASS
    }
}
