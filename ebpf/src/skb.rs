//! cgroup_skb ingress and egress: the per-packet verdict.
//!
//! Order of questions, cheapest and most certain first:
//! 1. loopback (exempt by default), ICMP (errors and NDP always pass, echo is a setting),
//!    other IP protocols (denied);
//! 2. does the socket carry a connect() record? Then the record decides, in both
//!    directions: the flow was judged once, as the outbound flow it is;
//! 3. otherwise the packet belongs to a listener, an accepted socket or an unconnected
//!    UDP socket: inbound packets are judged by their local port (a new inbound flow or
//!    more of one), UDP replies by the flow tables, TCP replies by the local port that
//!    an inbound rule opened.
//!
//! Source ports are never trusted: an inbound packet from port 53 or 25 is judged by the
//! local port it is sent to like any other (the "spoofed reply" attack).
//!
//! Fail-closed choice: a packet whose headers cannot be parsed is denied (dropped in
//! enforce mode) and counted as malformed.

use aya_ebpf::{
    helpers::generated::{bpf_sk_fullsock, bpf_sk_storage_get, bpf_skb_cgroup_id},
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use portcullis_common::{
    config::{Config, LOOPBACK_EXEMPT},
    event::hook,
    flow::{FlowKey, FlowValue, SockState, VERDICT_ALLOW, VERDICT_DENY, VERDICT_EXEMPT},
    policy::{
        DIR_IN, DIR_OUT, Decision, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, decide,
        icmp4_is_echo, icmp4_is_error, icmp6_is_echo, is_loopback,
    },
    stats::{self, reason},
};

use crate::{
    account::{Denied, count_rule, count_stat, deny},
    maps::{KernelTables, PC_FLOWS_IN, PC_FLOWS_OUT, PC_SOCKETS, config},
    packet::{Packet, TCP_ACK, TCP_SYN, parse},
};

const PASS: i32 = 1;
const DROP: i32 = 0;

#[cgroup_skb(ingress)]
pub fn pc_ingress(ctx: SkBuffContext) -> i32 {
    judge(&ctx, false)
}

#[cgroup_skb(egress)]
pub fn pc_egress(ctx: SkBuffContext) -> i32 {
    judge(&ctx, true)
}

/// One packet as this host sees it.
struct Flow {
    egress: bool,
    local: [u8; 16],
    remote: [u8; 16],
    local_port: u16,
    remote_port: u16,
    protocol: u8,
    tcp_flags: u8,
    segments: u32,
    bytes: u32,
    /// The packet, for what only a deny needs (the cgroup id): a helper call saved on
    /// every allowed packet.
    skb: *mut aya_ebpf::bindings::__sk_buff,
}

impl Flow {
    #[inline(always)]
    fn new(ctx: &SkBuffContext, p: &Packet, egress: bool) -> Self {
        let (local, remote, local_port, remote_port) = if egress {
            (p.src, p.dst, p.sport, p.dport)
        } else {
            (p.dst, p.src, p.dport, p.sport)
        };
        // SAFETY: the context pointer is valid for the program's run.
        let gso_segs = unsafe { (*ctx.skb.skb).gso_segs };
        Flow {
            egress,
            local,
            remote,
            local_port,
            remote_port,
            protocol: p.protocol,
            tcp_flags: p.tcp_flags,
            // A GSO buffer is several packets on the wire; count those.
            segments: if gso_segs > 1 { gso_segs } else { 1 },
            bytes: ctx.len(),
            skb: ctx.skb.skb,
        }
    }

    #[inline(always)]
    fn key(&self) -> FlowKey {
        FlowKey {
            local: self.local,
            remote: self.remote,
            local_port: self.local_port,
            remote_port: self.remote_port,
            protocol: self.protocol,
            _pad: [0; 3],
        }
    }

    #[inline(always)]
    fn denied(&self, direction: u8, reason: u32) -> Denied {
        Denied {
            direction,
            reason,
            protocol: self.protocol,
            local: self.local,
            remote: self.remote,
            local_port: self.local_port,
            remote_port: self.remote_port,
            hook: if self.egress {
                hook::EGRESS
            } else {
                hook::INGRESS
            },
            // SAFETY: plain helper call on the program's own context.
            cgroup_id: unsafe { bpf_skb_cgroup_id(self.skb) },
        }
    }

    /// The policy's verdict on this packet as a new flow in `direction`: inbound flows
    /// are judged by the local port, outbound ones by the remote port; the peer is the
    /// remote address either way.
    #[inline(always)]
    fn decide(&self, cfg: &Config, direction: u8) -> Decision {
        let port = if direction == DIR_IN {
            self.local_port
        } else {
            self.remote_port
        };
        decide(
            &KernelTables,
            cfg.generation,
            direction,
            self.protocol,
            port,
            &self.remote,
        )
    }

    /// The direction a flow without any state would have: who opened it.
    #[inline(always)]
    fn natural_direction(&self) -> u8 {
        if self.egress { DIR_OUT } else { DIR_IN }
    }
}

#[inline(always)]
fn judge(ctx: &SkBuffContext, egress: bool) -> i32 {
    let cfg = config();
    let p = match parse(ctx) {
        Ok(p) => p,
        Err(()) => return malformed(ctx, &cfg, egress),
    };
    let f = Flow::new(ctx, &p, egress);

    if cfg.loopback == LOOPBACK_EXEMPT && is_loopback(&f.remote) {
        count_stat(
            stats::LAYER_CGROUP,
            stats::PASS_LOOPBACK,
            f.segments,
            f.bytes,
        );
        return PASS;
    }
    match f.protocol {
        IPPROTO_TCP | IPPROTO_UDP => {}
        // Each ICMP only in its own IP version: protocol 58 over IPv4 is just an unknown
        // protocol (and 1 over IPv6).
        IPPROTO_ICMP if !p.ipv6 => {
            return icmp(
                &cfg,
                &f,
                icmp4_is_error(p.icmp_type),
                icmp4_is_echo(p.icmp_type),
            );
        }
        IPPROTO_ICMPV6 if p.ipv6 => return icmp(&cfg, &f, !icmp6_is_echo(p.icmp_type), true),
        _ => {
            return verdict(
                &cfg,
                &f,
                f.natural_direction(),
                Decision::Deny(reason::PROTOCOL),
                true,
            );
        }
    }

    if let Some(record) = socket_record(ctx) {
        // The XDP program sees replies before any socket does; it finds the flows this
        // host opened in PC_FLOWS_OUT. TCP and connected UDP alike: inserted when absent
        // (the SYN, a connected socket's first datagram), so a flow the LRU evicted comes
        // back with its next outbound packet; the lookup also refreshes the entry. Only
        // while XDP is attached: without it nothing reads these entries.
        if cfg.xdp_flows == 1
            && f.egress
            && record.verdict == VERDICT_ALLOW
            && PC_FLOWS_OUT.get_ptr(f.key()).is_none()
        {
            remember(&PC_FLOWS_OUT, &f.key(), record.rule);
        }
        return by_record(&cfg, &f, record);
    }
    if f.egress {
        egress_unrecorded(&cfg, &f)
    } else {
        ingress_unrecorded(&cfg, &f)
    }
}

/// ICMP: errors (and for ICMPv6 everything but echo) pass; echo is a setting.
#[inline(always)]
fn icmp(cfg: &Config, f: &Flow, always: bool, echo: bool) -> i32 {
    if always || (echo && cfg.icmp_echo == 1) {
        count_stat(stats::LAYER_CGROUP, stats::PASS_ICMP, f.segments, f.bytes);
        return PASS;
    }
    verdict(
        cfg,
        f,
        f.natural_direction(),
        Decision::Deny(reason::ICMP),
        true,
    )
}

/// The record connect() left on the packet's socket, if any.
#[inline(always)]
fn socket_record(ctx: &SkBuffContext) -> Option<SockState> {
    // SAFETY: `sk` is a field of the context; the helpers accept NULL and non-full
    // sockets by returning NULL, which is checked before any dereference.
    unsafe {
        let sk = (*ctx.skb.skb).__bindgen_anon_2.sk;
        if sk.is_null() {
            return None;
        }
        let full = bpf_sk_fullsock(sk);
        if full.is_null() {
            return None;
        }
        let map = core::ptr::from_ref(&PC_SOCKETS).cast_mut().cast();
        let state = bpf_sk_storage_get(map, full.cast(), core::ptr::null_mut(), 0);
        if state.is_null() {
            return None;
        }
        Some(*(state as *const SockState))
    }
}

#[inline(always)]
fn by_record(cfg: &Config, f: &Flow, record: SockState) -> i32 {
    match record.verdict {
        VERDICT_ALLOW => verdict(
            cfg,
            f,
            record.direction,
            Decision::Allow(record.rule),
            false,
        ),
        VERDICT_EXEMPT => {
            count_stat(
                stats::LAYER_CGROUP,
                stats::PASS_LOOPBACK,
                f.segments,
                f.bytes,
            );
            PASS
        }
        // Recorded in audit mode: every packet is a would-deny (or a deny, if the mode
        // has since switched to enforce). connect() already sent the event.
        VERDICT_DENY => verdict(
            cfg,
            f,
            record.direction,
            Decision::Deny(record.reason as u32),
            false,
        ),
        _ => verdict(
            cfg,
            f,
            record.direction,
            Decision::Deny(reason::STATE),
            true,
        ),
    }
}

/// Inbound packet to a socket without a connect() record.
#[inline(always)]
fn ingress_unrecorded(cfg: &Config, f: &Flow) -> i32 {
    if f.protocol == IPPROTO_UDP {
        // A reply to a datagram this host sent, else a new inbound flow.
        return udp_unrecorded(cfg, f, &PC_FLOWS_OUT, DIR_OUT, &PC_FLOWS_IN, DIR_IN);
    }
    // TCP: the kernel only hands this socket segments of a flow it accepted through a
    // listener, or new connection attempts; both are judged by the local port.
    let d = f.decide(cfg, DIR_IN);
    verdict(cfg, f, DIR_IN, d, true)
}

type FlowMap = aya_ebpf::btf_maps::LruHashMap<
    FlowKey,
    FlowValue,
    { portcullis_common::maps::FLOWS_MAX as usize },
>;

/// A UDP datagram of a socket without a record: a reply to a flow the other side opened
/// (found in `replies`, opened in `reply_direction`), else a new flow in `direction`,
/// remembered in `opened` so that its replies pass.
#[inline(always)]
fn udp_unrecorded(
    cfg: &Config,
    f: &Flow,
    replies: &FlowMap,
    reply_direction: u8,
    opened: &FlowMap,
    direction: u8,
) -> i32 {
    let key = f.key();
    if let Some(v) = replies.get_ptr(key) {
        // SAFETY: LRU values stay valid for the program's run (RCU).
        let rule = unsafe { (*v).rule };
        return verdict(cfg, f, reply_direction, Decision::Allow(rule), false);
    }
    let d = f.decide(cfg, direction);
    if let Decision::Allow(rule) = d {
        // Written only when missing or changed: an LRU update on every datagram of a
        // busy flow costs more than the lookup (which also refreshes the entry).
        let known = opened.get_ptr(key).is_some_and(|v| {
            // SAFETY: see above.
            unsafe { (*v).rule == rule }
        });
        if !known {
            remember(opened, &key, rule);
        }
    }
    verdict(cfg, f, direction, d, true)
}

/// Outbound packet from a socket without a connect() record.
#[inline(always)]
fn egress_unrecorded(cfg: &Config, f: &Flow) -> i32 {
    if f.protocol == IPPROTO_UDP {
        // A reply to a datagram a peer sent us through an inbound rule, else a new
        // outbound flow.
        return udp_unrecorded(cfg, f, &PC_FLOWS_IN, DIR_IN, &PC_FLOWS_OUT, DIR_OUT);
    }
    // TCP. A SYN without ACK opens a flow: connect() should have recorded it, so this
    // is a path around the connect hooks (or a socket older than the agent); judge it
    // as the outbound flow it is.
    if f.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        let d = f.decide(cfg, DIR_OUT);
        return verdict(cfg, f, DIR_OUT, d, true);
    }
    // Anything else is the local service answering an inbound flow (SYN-ACK from the
    // request socket, data from the accepted socket): allowed only from a local port
    // an inbound rule opens to this peer.
    let d = f.decide(cfg, DIR_IN);
    match d {
        Decision::Allow(_) => verdict(cfg, f, DIR_IN, d, false),
        Decision::Deny(_) => verdict(cfg, f, DIR_IN, Decision::Deny(reason::STATE), true),
    }
}

#[inline(always)]
fn remember(map: &FlowMap, key: &FlowKey, rule: u16) {
    // Existing entries are left alone: their LRU position is refreshed by the lookup.
    let _ = map.insert(
        key,
        FlowValue {
            rule,
            verdict: VERDICT_ALLOW,
            _pad: [0; 5],
        },
        0,
    );
}

/// Counts and applies a decision.
#[inline(always)]
fn verdict(cfg: &Config, f: &Flow, direction: u8, d: Decision, event: bool) -> i32 {
    match d {
        Decision::Allow(rule) => {
            count_rule(stats::LAYER_CGROUP, rule, f.segments, f.bytes);
            PASS
        }
        Decision::Deny(why) => {
            if deny(cfg, &f.denied(direction, why), f.segments, f.bytes, event) {
                DROP
            } else {
                PASS
            }
        }
    }
}

#[inline(always)]
fn malformed(ctx: &SkBuffContext, cfg: &Config, egress: bool) -> i32 {
    count_stat(stats::LAYER_CGROUP, stats::MALFORMED, 1, ctx.len());
    let d = Denied::malformed(
        if egress { DIR_OUT } else { DIR_IN },
        if egress { hook::EGRESS } else { hook::INGRESS },
    );
    if deny(cfg, &d, 1, ctx.len(), true) {
        DROP
    } else {
        PASS
    }
}
