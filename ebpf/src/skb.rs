//! cgroup_skb ingress and egress: the per-packet verdict.
//!
//! Order of questions, cheapest and most certain first:
//! 1. a spoofed remote address (IPv4-mapped in IPv6, loopback not from the loopback
//!    device, unspecified) is denied for `spoofed`, before anything could take it for
//!    loopback or a peer;
//! 2. loopback (exempt by default), ICMP (related-only: see `related`), other IP
//!    protocols (denied);
//! 3. does the socket carry a record for this packet's remote end? Then the record
//!    decides, in both directions: the flow was judged once, as the flow it is. A record
//!    is for one remote address and port; a datagram the socket sends anywhere else
//!    is judged as an unconnected one;
//! 4. otherwise the packet belongs to a listener, a new accepted socket or an
//!    unconnected UDP socket: inbound packets are judged by their local port (a new
//!    inbound flow or more of one), UDP replies by the flow tables, TCP replies by the
//!    local port that an inbound rule opened (and the accepted socket then gets a record).
//!
//! Records and flow entries carry the policy epoch of their verdict; after a reload each
//! flow is decided again on its next packet and denied for `revoked` when its rule is
//! gone (`FlowValue::judge`).
//!
//! Source ports are never trusted: an inbound packet from port 53 or 25 is judged by the
//! local port it is sent to like any other (the "spoofed reply" attack).
//!
//! Before all of this, a plain TCP or UDP packet from a loopback address that crossed
//! the loopback device takes an early exit when loopback is exempt (`exempt_loopback`):
//! the answers to questions 1 and 2 without the full parse.
//!
//! Fail-closed choice: a packet whose headers cannot be parsed is denied (dropped in
//! enforce mode) and counted as malformed.

use aya_ebpf::{
    bindings::{BPF_SK_STORAGE_GET_F_CREATE, bpf_sock},
    helpers::generated::{bpf_sk_fullsock, bpf_sk_storage_get},
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use portcullis_common::{
    config::{Config, LOOPBACK_EXEMPT, MODE_AUDIT},
    event::hook,
    flow::{FlowKey, FlowValue, SockState, echo_key, quoted_flow4, quoted_flow6},
    policy::{
        DIR_IN, DIR_OUT, Decision, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, Icmp,
        decide, icmp4_class, icmp6_class, is_loopback, is_spoofed, is_unspecified,
    },
    stats::{self, reason},
};

use crate::{
    account::{Denied, count_rule, count_stat, deny},
    evidence, learn,
    maps::{
        KernelTables, PC_FLOWS_IN, PC_FLOWS_OUT, PC_SOCKETS, config_ref, mark_flow_port,
        may_have_flow,
    },
    packet::{Packet, TCP_ACK, TCP_SYN, loopback_source_port, parse_into},
    related::{echo_answered, in_tables, remember_echo},
};

/// `ingress_ifindex` of a packet that crossed the loopback device (`LOOPBACK_IFINDEX`:
/// the same in every network namespace).
const LOOPBACK_IFINDEX: u32 = 1;
/// `TCP_LISTEN` in `bpf_sock::state`.
const TCP_LISTEN: u32 = 10;

const PASS: i32 = 1;
const DROP: i32 = 0;

#[cgroup_skb(ingress)]
pub fn pc_ingress(ctx: SkBuffContext) -> i32 {
    if from_loopback(&ctx) && exempt_loopback(&ctx) {
        return PASS;
    }
    let mut dns = 0u8;
    let v = judge_ingress(&ctx, &mut dns);
    // An answer from port 53 the verdict let in: learn its addresses before the
    // application can read it (`learn`).
    if v == PASS && dns != 0 {
        learn::answer(&ctx);
    }
    v
}

/// The loopback exemption's early exit, for a packet that crossed the loopback device
/// (the caller checks the interface: other traffic pays only that compare). A plain TCP
/// or UDP packet from a loopback source ([`loopback_source_port`]), while loopback is
/// exempt, is counted and passed without the full parse, the flow and the policy: the
/// MTA and its content filters (milters, scanners) talk over 127.0.0.1 all day (bench:
/// 25 ns against 20 for an empty program; the full path costs 38). The verdict is the one [`judge`] gives, by the
/// same questions: not spoofed (an IPv4-mapped source in IPv6 is; the device is the
/// loopback one), then loopback. Everything else goes the full way and gets its verdict
/// there: a packet the full parse might call malformed (options, extension headers,
/// fragments, other protocols, short ones), loopback enforced, and any packet from port
/// 53, which may be a local stub resolver's answer to learn from (`learn`). Inlined:
/// its frame is the configuration key and, when a transport header is not in the
/// linear data, the helper's copy of it; `pc_ingress` then needs 32 bytes of stack
/// instead of 8, the same after older kernels round each frame up to 32.
#[inline(always)]
fn exempt_loopback(ctx: &SkBuffContext) -> bool {
    let Some(cfg) = config_ref() else {
        return false;
    };
    if cfg.loopback != LOOPBACK_EXEMPT {
        return false;
    }
    if loopback_source_port(ctx).is_none_or(|port| port == learn::DNS_PORT) {
        return false;
    }
    count_stat(
        stats::LAYER_CGROUP,
        stats::PASS_LOOPBACK,
        segments(ctx),
        ctx.len(),
    );
    true
}

/// [`judge`] for ingress. For a TCP or UDP packet from port 53 it sets `dns` to 1. Not
/// inlined: its many paths return here with only the verdict differing, so the verifier
/// checks the learning after it a few times instead of once per path, and the verdict's
/// frame is gone before the learning's frames are pushed. Only a flag: a value that
/// differs between paths (the protocol, an offset) kept live to the end multiplies the
/// states the verifier must tell apart (measured: 35k instructions verified with the
/// flag, 390k with the offset and protocol packed in); `learn` reads those itself.
#[inline(never)]
fn judge_ingress(ctx: &SkBuffContext, dns: &mut u8) -> i32 {
    judge(ctx, false, Some(dns))
}

#[cgroup_skb(egress)]
pub fn pc_egress(ctx: SkBuffContext) -> i32 {
    let j = judge_egress(&ctx);
    let v = j & VERDICT;
    // A query to port 53 the verdict let out: record its question, so that only its
    // answer can teach addresses (`learn`).
    if v == PASS && j & TO_DNS != 0 {
        learn::question(&ctx);
    }
    v
}

/// The verdict's bits of [`judge_egress`]'s result.
const VERDICT: i32 = 0xff;
/// Set in [`judge_egress`]'s result for a packet to port 53.
const TO_DNS: i32 = 0x100;

/// [`judge`] for egress, not inlined for the same reasons as [`judge_ingress`] (and
/// so that the verdict's frame is gone before the question's is pushed: together they
/// pass the 512-byte stack limit). The verdict, with [`TO_DNS`] set for a TCP or UDP
/// packet to port 53 (in the result, not through a pointer: `pc_egress` then needs no
/// stack, and the deepest call chain of the verdict stays within the limit).
#[inline(never)]
fn judge_egress(ctx: &SkBuffContext) -> i32 {
    let mut dns = 0u8;
    let v = judge(ctx, true, Some(&mut dns));
    if dns != 0 { v | TO_DNS } else { v }
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
    /// Offset of the transport header (for the payload length a deny's evidence needs).
    l4: u16,
    segments: u32,
    bytes: u32,
    /// The packet, for what only a sent deny event needs (the cgroup id): a helper call
    /// saved on every allowed and every rate-limited denied packet.
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
        Flow {
            egress,
            local,
            remote,
            local_port,
            remote_port,
            protocol: p.protocol,
            tcp_flags: p.tcp_flags,
            l4: p.l4 as u16,
            segments: segments(ctx),
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
            cgroup_id: 0,
            skb: self.skb,
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

/// Whether an inbound packet crossed the loopback device.
#[inline(always)]
fn from_loopback(ctx: &SkBuffContext) -> bool {
    // SAFETY: reads a field of the program's own context.
    unsafe { (*ctx.skb.skb).ingress_ifindex == LOOPBACK_IFINDEX }
}

/// Packets on the wire: a GSO buffer is several, and counts as those.
#[inline(always)]
fn segments(ctx: &SkBuffContext) -> u32 {
    // SAFETY: the context pointer is valid for the program's run.
    let gso_segs = unsafe { (*ctx.skb.skb).gso_segs };
    if gso_segs > 1 { gso_segs } else { 1 }
}

#[inline(always)]
fn judge(ctx: &SkBuffContext, egress: bool, dns: Option<&mut u8>) -> i32 {
    // A never-written entry is zeroed: audit mode, which passes. The lookup of index 0 of
    // a one-entry array cannot fail; passing there matches that zeroed entry.
    let Some(cfg) = config_ref() else {
        return PASS;
    };
    let mut p = Packet::EMPTY;
    if !parse_into(ctx, &mut p) {
        return malformed(ctx, cfg, egress);
    }
    let f = Flow::new(ctx, &p, egress);

    let from_lo = egress || from_loopback(ctx);
    if is_spoofed(&f.remote, p.ipv6, from_lo) && !dad_or_mld(&p, &f) {
        return verdict(
            cfg,
            &f,
            f.natural_direction(),
            Decision::Deny(reason::SPOOFED),
            true,
        );
    }
    // A possible DNS answer, or (egress) question (after the spoof check: a forged
    // source is never learned from; before the loopback exemption: a local stub such as
    // 127.0.0.53 is a trusted resolver).
    if let Some(dns) = dns
        && f.remote_port == learn::DNS_PORT
        && (f.protocol == IPPROTO_UDP || f.protocol == IPPROTO_TCP)
    {
        *dns = 1;
    }
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
        IPPROTO_ICMP if !p.ipv6 => return icmp_verdict(ctx, cfg, &p, &f),
        IPPROTO_ICMPV6 if p.ipv6 => return icmp_verdict(ctx, cfg, &p, &f),
        _ => {
            return verdict(
                cfg,
                &f,
                f.natural_direction(),
                Decision::Deny(reason::PROTOCOL),
                true,
            );
        }
    }

    let sk = full_socket(ctx);
    let record = storage(sk, None);
    // SAFETY: non-NULL socket storage of this map's type, owned by the socket.
    let j = if !record.is_null() && unsafe { (*record).applies_to(&f.remote, f.remote_port) } {
        // SAFETY: as above.
        Judged::unpack(by_record(cfg, &f, unsafe { &mut *record }))
    } else if f.egress {
        egress_unrecorded(cfg, &f, sk)
    } else {
        ingress_unrecorded(cfg, &f, sk)
    };
    verdict(cfg, &f, j.direction, j.decision, j.event)
}

/// What a path of the verdict decided, applied by [`judge`] on the program's own frame.
/// The paths return it instead of applying it themselves so that the deny path's
/// frames ([`deny_flow`], [`note_evidence`]) never stack on a path's frame: kernels
/// before 6.8 round each frame up to 32 bytes, and a path's frame with the deny path's
/// on top went over the 512-byte stack there.
#[derive(Clone, Copy)]
struct Judged {
    /// The direction the flow was judged in (who opened it).
    direction: u8,
    decision: Decision,
    /// Whether a deny sends an event (not for every packet of a known denied flow).
    event: bool,
}

impl Judged {
    #[inline(always)]
    fn new(direction: u8, decision: Decision, event: bool) -> Self {
        Judged {
            direction,
            decision,
            event,
        }
    }

    /// As one register, for what a non-inlined path returns: LLVM builds a returned
    /// struct in the caller's frame in ways the verifier cannot always follow (a
    /// register that holds a pointer on one path and a number on another).
    #[inline(always)]
    fn pack(self) -> u64 {
        let (deny, value) = match self.decision {
            Decision::Allow(rule) => (0u64, rule as u64),
            Decision::Deny(why) => (1, why as u64),
        };
        self.direction as u64 | (self.event as u64) << 8 | deny << 16 | value << 32
    }

    #[inline(always)]
    fn unpack(v: u64) -> Self {
        let value = (v >> 32) as u32;
        Judged {
            direction: v as u8,
            event: (v >> 8) & 1 == 1,
            decision: if (v >> 16) & 1 == 1 {
                Decision::Deny(value)
            } else {
                Decision::Allow(value as u16)
            },
        }
    }
}

/// Duplicate address detection and multicast listener reports come from `::` before an
/// address is configured: the one honest unspecified source.
#[inline(always)]
fn dad_or_mld(p: &Packet, f: &Flow) -> bool {
    p.ipv6
        && p.protocol == IPPROTO_ICMPV6
        && is_unspecified(&f.remote)
        && icmp6_class(p.icmp_type, p.hop_limit, &p.src) == Icmp::Local
}

/// What [`icmp`] returns for a message that passes.
const ICMP_PASSES: u32 = u32::MAX;

/// ICMP, related-only: link-local IPv6 configuration traffic passes; echo requests follow
/// `icmp_echo` (and this host's own are remembered); echo replies pass only for those;
/// an error passes only when the flow it quotes is one this host has. Returns
/// [`ICMP_PASSES`] (counted here) or the reason to deny for: `state` for what fails the
/// relation (an echo too short to carry an identifier among it), `icmp` for what the
/// rules never allow. Not inlined: the quote has its own stack frame, and the deny is
/// applied by the caller so that the two frames never stack.
#[inline(never)]
fn icmp(ctx: &SkBuffContext, cfg: &Config, p: &Packet, f: &Flow) -> u32 {
    let class = if p.ipv6 {
        icmp6_class(p.icmp_type, p.hop_limit, &p.src)
    } else {
        icmp4_class(p.icmp_type)
    };
    let related_ok = match class {
        Icmp::Local => true,
        Icmp::EchoRequest | Icmp::EchoReply if cfg.icmp_echo != 1 => return reason::ICMP,
        Icmp::EchoRequest if f.egress => match echo_id(ctx, p) {
            Some(id) => {
                remember_echo(&echo_key(f.local, f.remote, id, f.protocol), cfg.epoch);
                true
            }
            None => false,
        },
        Icmp::EchoRequest => true,
        // An echo reply this host sends answers a request `icmp_echo` let in.
        Icmp::EchoReply if f.egress => true,
        Icmp::EchoReply => match echo_id(ctx, p) {
            Some(id) => echo_answered(&echo_key(f.local, f.remote, id, f.protocol)),
            None => false,
        },
        Icmp::Error => error_related(ctx, p, f.egress),
        Icmp::Other => return reason::ICMP,
    };
    if !related_ok {
        return reason::STATE;
    }
    count_stat(stats::LAYER_CGROUP, stats::PASS_ICMP, f.segments, f.bytes);
    ICMP_PASSES
}

/// Whether an ICMP error quotes a flow this host has (`related::in_tables`). Inlined
/// into [`icmp`], whose frame is only on the stack for ICMP.
#[inline(always)]
fn error_related(ctx: &SkBuffContext, p: &Packet, egress: bool) -> bool {
    let quote = p.l4 + 8;
    let mut key = FlowKey::default();
    let known = if p.ipv6 {
        ctx.load::<[u8; 48]>(quote)
            .is_ok_and(|q| quoted_flow6(&q, &mut key, !egress))
    } else {
        ctx.load::<[u8; 28]>(quote)
            .is_ok_and(|q| quoted_flow4(&q, &mut key, !egress))
    };
    known && in_tables(&key)
}

#[inline(always)]
fn icmp_verdict(ctx: &SkBuffContext, cfg: &Config, p: &Packet, f: &Flow) -> i32 {
    match icmp(ctx, cfg, p, f) {
        ICMP_PASSES => PASS,
        why => verdict(cfg, f, f.natural_direction(), Decision::Deny(why), true),
    }
}

/// The identifier of an echo request or reply.
#[inline(always)]
fn echo_id(ctx: &SkBuffContext, p: &Packet) -> Option<u16> {
    ctx.load::<[u8; 2]>(p.l4 + 4).ok().map(u16::from_be_bytes)
}

/// The packet's full socket, or NULL (no socket, a request or time-wait socket).
#[inline(always)]
fn full_socket(ctx: &SkBuffContext) -> *mut bpf_sock {
    // SAFETY: `sk` is a field of the context; the helper accepts NULL and returns NULL
    // for sockets that are not full.
    unsafe {
        let sk = (*ctx.skb.skb).__bindgen_anon_2.sk;
        if sk.is_null() {
            return core::ptr::null_mut();
        }
        bpf_sk_fullsock(sk)
    }
}

/// The socket's record: looked up, or created with `init` when given. NULL when the
/// socket is NULL, has none, or storage is exhausted.
#[inline(always)]
fn storage(sk: *mut bpf_sock, init: Option<&SockState>) -> *mut SockState {
    if sk.is_null() {
        return core::ptr::null_mut();
    }
    let map = core::ptr::from_ref(&PC_SOCKETS).cast_mut().cast();
    let (value, flags) = match init {
        Some(v) => (
            core::ptr::from_ref(v).cast_mut().cast(),
            BPF_SK_STORAGE_GET_F_CREATE as u64,
        ),
        None => (core::ptr::null_mut(), 0),
    };
    // SAFETY: a full socket and a value of the map's type (or NULL).
    unsafe { bpf_sk_storage_get(map, sk.cast(), value, flags) as *mut SockState }
}

/// A packet of the flow a socket's record is for. Not inlined (nor is the UDP path):
/// each path keeps its own stack frame.
#[inline(never)]
fn by_record(cfg: &Config, f: &Flow, record: &mut SockState) -> u64 {
    let direction = record.direction;
    let j = record.value.judge(cfg.epoch, || f.decide(cfg, direction));
    if j.changed {
        record.value = j.store;
    }
    // The XDP program sees replies before any socket does; it finds the flows this
    // host opened in PC_FLOWS_OUT, with their verdict (a would-denied one too, so its
    // replies count against it). Only while XDP is attached: without it nothing reads
    // these entries.
    if cfg.xdp_flows == 1 && f.egress && direction == DIR_OUT {
        note(&PC_FLOWS_OUT, &f.key(), &record.value);
    }
    Judged::new(direction, j.decision, j.event).pack()
}

/// Inbound packet no record applies to.
#[inline(always)]
fn ingress_unrecorded(cfg: &Config, f: &Flow, sk: *mut bpf_sock) -> Judged {
    if f.protocol == IPPROTO_UDP {
        // A reply to a datagram this host sent, else a new inbound flow.
        return Judged::unpack(udp_unrecorded(cfg, f));
    }
    // TCP: the kernel only hands this socket segments of a flow it accepted through a
    // listener, or new connection attempts; both are judged by the local port.
    let d = f.decide(cfg, DIR_IN);
    if let Decision::Allow(rule) = d {
        record_inbound(cfg, f, sk, rule);
    }
    Judged::new(DIR_IN, d, true)
}

/// Gives an accepted TCP socket (not a listener) the record of the inbound flow it
/// carries, so that a reload that revokes the rule is seen as a revocation. With XDP,
/// the flow is also noted in PC_FLOWS_IN so that XDP can tell a revoked flow's packets
/// from strangers'. Not inlined: it runs once per accepted connection.
#[inline(never)]
fn record_inbound(cfg: &Config, f: &Flow, sk: *mut bpf_sock, rule: u16) {
    // SAFETY: a non-NULL full socket's fields are readable.
    if sk.is_null() || unsafe { (*sk).state } == TCP_LISTEN {
        return;
    }
    let init = SockState {
        remote: f.remote,
        remote_port: f.remote_port,
        direction: DIR_IN,
        _pad: 0,
        value: FlowValue::allowed(rule, cfg.epoch),
    };
    let r = storage(sk, Some(&init));
    if r.is_null() {
        count_stat(stats::LAYER_CGROUP, stats::SOCKET_STORAGE_FULL, 1, 0);
        return;
    }
    // SAFETY: see `judge`. A socket that had a record for another remote end (none
    // does: TCP sockets have one peer) is overwritten.
    unsafe { *r = init };
    if cfg.xdp_flows == 1 {
        note(&PC_FLOWS_IN, &f.key(), &init.value);
    }
}

type FlowMap = aya_ebpf::btf_maps::LruHashMap<
    FlowKey,
    FlowValue,
    { portcullis_common::maps::FLOWS_MAX as usize },
>;

/// A UDP datagram no record applies to: a reply to a flow the other side opened (found
/// in the other direction's table), more of a flow already judged (in this direction's
/// table), else a new flow in the packet's direction, remembered in this direction's
/// table so that its replies pass (or, in audit mode, count against it). Flows this host
/// opens live in PC_FLOWS_OUT, flows peers open in PC_FLOWS_IN.
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "the key is looked up by reference: no 40-byte copy per lookup on a tight stack"
)]
#[inline(never)]
fn udp_unrecorded(cfg: &Config, f: &Flow) -> u64 {
    let (replies, reply_direction, opened, direction) = if f.egress {
        (&PC_FLOWS_IN, DIR_IN, &PC_FLOWS_OUT, DIR_OUT)
    } else {
        (&PC_FLOWS_OUT, DIR_OUT, &PC_FLOWS_IN, DIR_IN)
    };
    let key = f.key();
    // No flow was ever inserted with this local port (a scan, a flood of closed ports):
    // neither table can hold this one.
    if may_have_flow(f.protocol, f.local_port) {
        if let Some(v) = replies.get_ptr_mut(&key) {
            return by_entry(cfg, f, v, reply_direction).pack();
        }
        if let Some(v) = opened.get_ptr_mut(&key) {
            return by_entry(cfg, f, v, direction).pack();
        }
    }
    let d = f.decide(cfg, direction);
    match d {
        Decision::Allow(rule) => remember(opened, &key, FlowValue::allowed(rule, cfg.epoch)),
        // A would-denied flow is remembered too (one event per flow, and its replies
        // count against it instead of as new inbound flows). Not in enforce mode: the
        // datagram is dropped, and a scan must not fill the table.
        Decision::Deny(why) if cfg.mode == MODE_AUDIT => {
            remember(opened, &key, FlowValue::denied(why, cfg.epoch))
        }
        Decision::Deny(_) => {}
    }
    Judged::new(direction, d, true).pack()
}

/// A datagram of a flow with a table entry: the entry's verdict, decided again when the
/// policy changed since (revocation).
#[inline(always)]
fn by_entry(cfg: &Config, f: &Flow, v: *mut FlowValue, direction: u8) -> Judged {
    // SAFETY: LRU values stay valid for the program's run (RCU); a concurrent writer
    // writes the same verdict.
    let j = unsafe { (*v).judge(cfg.epoch, || f.decide(cfg, direction)) };
    if j.changed {
        // SAFETY: as above.
        unsafe { *v = j.store };
    }
    Judged::new(direction, j.decision, j.event)
}

/// Outbound packet no record applies to.
#[inline(always)]
fn egress_unrecorded(cfg: &Config, f: &Flow, sk: *mut bpf_sock) -> Judged {
    if f.protocol == IPPROTO_UDP {
        // A reply to a datagram a peer sent us through an inbound rule, else a new
        // outbound flow.
        return Judged::unpack(udp_unrecorded(cfg, f));
    }
    // TCP. A SYN without ACK opens a flow: connect() should have recorded it, so this
    // is a path around the connect hooks (or a socket older than the agent); judge it
    // as the outbound flow it is.
    if f.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        return Judged::new(DIR_OUT, f.decide(cfg, DIR_OUT), true);
    }
    // Anything else is the local service answering an inbound flow (SYN-ACK from the
    // request socket, data from the accepted socket): allowed only from a local port
    // an inbound rule opens to this peer.
    let d = f.decide(cfg, DIR_IN);
    match d {
        Decision::Allow(rule) => {
            record_inbound(cfg, f, sk, rule);
            Judged::new(DIR_IN, d, false)
        }
        Decision::Deny(_) => Judged::new(DIR_IN, Decision::Deny(reason::STATE), true),
    }
}

#[inline(always)]
fn remember(map: &FlowMap, key: &FlowKey, value: FlowValue) {
    mark_flow_port(key);
    let _ = map.insert(key, value, 0);
}

/// Writes `value` for `key` unless the entry already says so (the lookup also refreshes
/// its LRU position): an update on every packet of a busy flow costs more than a lookup.
#[inline(always)]
fn note(map: &FlowMap, key: &FlowKey, value: &FlowValue) {
    let same = map.get_ptr(key).is_some_and(|v| {
        // SAFETY: see `by_entry`.
        unsafe { *v == *value }
    });
    if !same {
        remember(map, key, *value);
    }
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
            let v = deny_flow(cfg, f, direction, why, event);
            if v == PASS {
                note_evidence(f, direction, why);
            }
            v
        }
    }
}

/// Accounts a denied packet. Not inlined: the deny path (event, denied-port table) has
/// its own stack frame, which keeps the allow path's within the 512-byte limit.
#[inline(never)]
fn deny_flow(cfg: &Config, f: &Flow, direction: u8, why: u32, event: bool) -> i32 {
    if deny(cfg, &f.denied(direction, why), f.segments, f.bytes, event) {
        DROP
    } else {
        PASS
    }
}

/// Audit mode: a would-denied packet goes on, and its flow's evidence tells breakage
/// from exposure (`evidence`). Not inlined, and called next to [`deny_flow`], never
/// from it: the two frames never stack.
#[inline(never)]
fn note_evidence(f: &Flow, direction: u8, why: u32) {
    let sample = evidence::Sample {
        received: !f.egress,
        direction,
        reason: why as u8,
        flags: f.tcp_flags,
        segments: f.segments,
        payload: evidence::payload(f.skb, f.l4, f.protocol, f.bytes),
    };
    evidence::note(&f.key(), &sample);
}

/// Not inlined, like [`deny_flow`].
#[inline(never)]
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
