//! Flow state: what makes the datapath stateful.
//!
//! - TCP and connected UDP: connect() runs the `connect4/6` hooks, which decide the flow
//!   once and record the verdict on the socket ([`SockState`] in socket storage, freed
//!   with the socket), for that one remote address and port. Every later packet of that
//!   flow, in either direction, is judged by that record: a socket that connected out is
//!   only ever an outbound flow, even when it is bound to a port an inbound rule opens.
//!   An accepted TCP socket gets an inbound record at its first allowed packet.
//! - Packets no record applies to (listeners, unconnected UDP, datagrams a connected
//!   socket sends elsewhere with sendto()) are judged per packet: inbound by the local
//!   port, and their replies by the flow tables below.
//! - Unconnected UDP keeps its flows in two LRU hash maps keyed by [`FlowKey`]: one for
//!   flows this host opened, one for flows peers opened. Would-denied flows (audit mode)
//!   are kept too, so their replies count against the flow, not as new inbound flows.
//! - Every record and entry carries the policy epoch of its verdict ([`FlowValue::judge`]):
//!   after a reload, each flow is decided again on its next packet (revocation).
//! - ICMP is related-only: an error passes when the flow it quotes ([`quoted_flow`]) is
//!   one this host has; an echo reply when this host sent the request ([`echo_key`]).

use crate::{
    policy::{Decision, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, v4_mapped},
    stats::reason,
};

/// No verdict: a record left by a connect() that was refused. It applies to no packet,
/// so the socket's datagrams are judged one by one (a refused re-connect must not leave
/// the socket's earlier verdict in force).
pub const VERDICT_NONE: u8 = 0;
/// Verdict recorded for a flow.
pub const VERDICT_ALLOW: u8 = 1;
/// Denied: recorded in audit mode (enforce refuses the connect() or drops the packet),
/// and for a flow whose rule a reload revoked.
pub const VERDICT_DENY: u8 = 2;
/// Exempt (loopback): passes, counted as loopback.
pub const VERDICT_EXEMPT: u8 = 3;

/// Record kept on a socket: the verdict on ONE flow, the one to `remote`:`remote_port`.
/// A packet of the socket to or from anywhere else is not that flow and is judged as if
/// the socket had no record (an unconnected datagram), so `connect()` to an allowed
/// server followed by `sendto()` elsewhere, `connect(AF_UNSPEC)` (which no hook sees)
/// and a loopback-exempt record cannot carry other destinations.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockState {
    /// Remote address the verdict is for (IPv6 or IPv4-mapped).
    pub remote: [u8; 16],
    /// Remote port, host order.
    pub remote_port: u16,
    /// `policy::DIR_*`: `DIR_OUT` for connect(), `DIR_IN` for an accepted TCP socket.
    pub direction: u8,
    /// Padding, zero.
    pub _pad: u8,
    /// The verdict, with the policy epoch it was given under.
    pub value: FlowValue,
}

impl SockState {
    /// Whether this record is the verdict on the flow of a packet with this remote end.
    #[inline(always)]
    pub fn applies_to(&self, remote: &[u8; 16], remote_port: u16) -> bool {
        self.value.verdict != VERDICT_NONE
            && self.remote_port == remote_port
            && self.remote == *remote
    }
}

/// A flow's 5-tuple from this host's point of view.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Local address (IPv6 or IPv4-mapped).
    pub local: [u8; 16],
    /// Remote address (IPv6 or IPv4-mapped).
    pub remote: [u8; 16],
    /// Local port, host order.
    pub local_port: u16,
    /// Remote port, host order.
    pub remote_port: u16,
    /// IP protocol number.
    pub protocol: u8,
    /// Padding, zero.
    pub _pad: [u8; 3],
}

/// What a flow table (and a socket record) remembers about a flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    /// Rule index that allowed it (0 when denied or exempt).
    pub rule: u16,
    /// `VERDICT_*`.
    pub verdict: u8,
    /// Why it was denied (`stats::reason::*`), when it was.
    pub reason: u8,
    /// `Config::epoch` of the policy that gave the verdict.
    pub epoch: u32,
}

impl FlowValue {
    /// Allowed by `rule` under policy `epoch`.
    #[inline(always)]
    pub const fn allowed(rule: u16, epoch: u32) -> Self {
        FlowValue {
            rule,
            verdict: VERDICT_ALLOW,
            reason: 0,
            epoch,
        }
    }

    /// Denied for `reason` under policy `epoch`.
    #[inline(always)]
    pub const fn denied(reason: u32, epoch: u32) -> Self {
        FlowValue {
            rule: 0,
            verdict: VERDICT_DENY,
            reason: reason as u8,
            epoch,
        }
    }

    /// The verdict of a flow with this entry under policy `epoch`. When the entry is from
    /// an older policy (or an exemption that no longer applies), `fresh` decides the flow
    /// again, and the entry to store is returned too. A flow that was allowed and is no
    /// longer is denied for `REVOKED`, and only that first packet raises an event; a flow
    /// denied before (audit mode) stays denied without a second event.
    #[inline(always)]
    pub fn judge(&self, epoch: u32, fresh: impl FnOnce() -> Decision) -> Judged {
        // Every path sets every field; the decision is built once at the end (see
        // `policy::decide` for why: the verifier rejects unset payload registers).
        let current = self.epoch == epoch && self.verdict != VERDICT_EXEMPT;
        let (allow, value, event) = if current {
            if self.verdict == VERDICT_ALLOW {
                (true, self.rule as u32, false)
            } else {
                (false, self.reason as u32, false)
            }
        } else {
            match fresh() {
                Decision::Allow(rule) => (true, rule as u32, false),
                Decision::Deny(why) if self.verdict == VERDICT_DENY => (false, why, false),
                Decision::Deny(_) => (false, reason::REVOKED, true),
            }
        };
        // Through memory: every path has set all three, so nothing after this point can
        // read a register a path left unset (LLVM otherwise spills such a register on the
        // paths that never set it, and the verifier refuses the spill).
        let (allow, value, event) = core::hint::black_box((allow, value, event));
        let (decision, store) = if allow {
            (
                Decision::Allow(value as u16),
                FlowValue::allowed(value as u16, epoch),
            )
        } else {
            (Decision::Deny(value), FlowValue::denied(value, epoch))
        };
        Judged {
            decision,
            changed: !current,
            store,
            event,
        }
    }
}

/// What [`FlowValue::judge`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Judged {
    /// The verdict on the packet.
    pub decision: Decision,
    /// Whether the entry must be rewritten with `store` (the flow was decided again).
    pub changed: bool,
    /// The entry for this verdict under the live epoch.
    pub store: FlowValue,
    /// Whether the packet raises a deny event (the first of a flow's denies only).
    pub event: bool,
}

/// The flow an ICMP error is about, from the packet the error quotes: the IP header and
/// the first 8 bytes after it (`l4`). `key` arrives with the quoted source in `local` and
/// destination in `remote`. `received` says who got the error: when this host received
/// it, the quoted packet is one this host sent (its source is local, as given); when this
/// host sends it, the quoted packet is one it received, and the ends are swapped. Quotes
/// of protocols other than TCP, UDP and echo requests name no flow (false): an error
/// about them is unrelated.
#[inline(always)]
pub fn quoted_flow(key: &mut FlowKey, protocol: u8, l4: &[u8], received: bool) -> bool {
    if l4.len() < 8 {
        return false;
    }
    let (sport, dport) = match protocol {
        IPPROTO_TCP | IPPROTO_UDP => (
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        ),
        // An error about an echo request: the flow is keyed by the identifier, as the
        // egress program records it (only requests this host sent are recorded).
        IPPROTO_ICMP if l4[0] == 8 => (u16::from_be_bytes([l4[4], l4[5]]), 0),
        IPPROTO_ICMPV6 if l4[0] == 128 => (u16::from_be_bytes([l4[4], l4[5]]), 0),
        _ => return false,
    };
    key.protocol = protocol;
    if received {
        key.local_port = sport;
        key.remote_port = dport;
    } else {
        core::mem::swap(&mut key.local, &mut key.remote);
        key.local_port = dport;
        key.remote_port = sport;
    }
    true
}

/// [`quoted_flow`] of an IPv4 error's quote (`q`: the quoted header, which must have no
/// options, then 8 bytes).
#[inline(always)]
pub fn quoted_flow4(q: &[u8; 28], key: &mut FlowKey, received: bool) -> bool {
    if q[0] != 0x45 {
        return false;
    }
    key.local = v4_mapped([q[12], q[13], q[14], q[15]]);
    key.remote = v4_mapped([q[16], q[17], q[18], q[19]]);
    quoted_flow(key, q[9], &q[20..28], received)
}

/// [`quoted_flow`] of an IPv6 error's quote (`q`: the 40-byte header, then 8 bytes; a
/// quote with extension headers names no flow).
#[inline(always)]
pub fn quoted_flow6(q: &[u8; 48], key: &mut FlowKey, received: bool) -> bool {
    if q[0] >> 4 != 6 {
        return false;
    }
    key.local.copy_from_slice(&q[8..24]);
    key.remote.copy_from_slice(&q[24..40]);
    quoted_flow(key, q[6], &q[40..48], received)
}

/// The key under which an echo request this host sends (and the replies to it) are
/// kept in `FLOWS_OUT`: the identifier in the local port, remote port 0.
#[inline(always)]
pub fn echo_key(local: [u8; 16], remote: [u8; 16], id: u16, protocol: u8) -> FlowKey {
    FlowKey {
        local,
        remote,
        local_port: id,
        remote_port: 0,
        protocol,
        _pad: [0; 3],
    }
}

/// Bytes per entry of the flow-port marks (`maps::FLOW_PORTS`).
pub const FLOW_PORT_BYTES: usize = 64;

/// Where the mark of local `port` for `protocol` lives in `maps::FLOW_PORTS`: the
/// entry and the byte in it. UDP has the upper half, TCP (and anything else, which no
/// flow table keyed by ports holds) the lower.
#[inline(always)]
pub const fn flow_port_slot(protocol: u8, port: u16) -> (u32, usize) {
    let half = if protocol == IPPROTO_UDP {
        1u32 << 10
    } else {
        0
    };
    (
        half | (port as u32 >> 6),
        port as usize & (FLOW_PORT_BYTES - 1),
    )
}

/// An IP datagram being fragmented, as the XDP program tracks it: its first fragment
/// carries the ports and is judged; the later ones are let through only when the first
/// one was allowed (`maps::FRAGS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    /// Source address (IPv6 or IPv4-mapped).
    pub src: [u8; 16],
    /// Destination address (IPv6 or IPv4-mapped).
    pub dst: [u8; 16],
    /// Identification: the IPv4 header's 16 bits or the IPv6 fragment header's 32,
    /// host order.
    pub id: u32,
    /// IPv4: the protocol field. IPv6: the fragment header's next header (the same in
    /// every fragment of a datagram).
    pub protocol: u8,
    /// Padding, zero.
    pub _pad: [u8; 3],
}
