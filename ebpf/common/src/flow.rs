//! Flow state: what makes the datapath stateful.
//!
//! - TCP and connected UDP: connect() runs the `connect4/6` hooks, which decide the flow
//!   once and record the verdict on the socket ([`SockState`] in socket storage, freed
//!   with the socket). Every later packet of that socket, in either direction, is judged
//!   by that record: a socket that connected out is only ever an outbound flow, even when
//!   it is bound to a port an inbound rule opens.
//! - Sockets without a record (listeners, accepted sockets, unconnected UDP) are judged
//!   per packet: inbound by the local port, and their replies by the flow tables below.
//! - Unconnected UDP keeps its flows in two LRU hash maps keyed by [`FlowKey`]: one for
//!   flows this host opened, one for flows peers opened.

/// Verdict recorded for a flow.
pub const VERDICT_ALLOW: u8 = 1;
/// Denied; only ever recorded in audit mode (enforce refuses the connect()).
pub const VERDICT_DENY: u8 = 2;
/// Exempt (loopback): passes, counted as loopback.
pub const VERDICT_EXEMPT: u8 = 3;

/// Record kept on a socket that called connect().
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockState {
    /// Rule index that allowed the flow (0 when denied or exempt).
    pub rule: u16,
    /// `VERDICT_*`.
    pub verdict: u8,
    /// `policy::DIR_*` (always `DIR_OUT` today: only connect() records).
    pub direction: u8,
    /// Why it was denied (`stats::reason::*`), when it was.
    pub reason: u8,
    /// Padding, zero.
    pub _pad: [u8; 3],
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

/// What a flow table remembers about a flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    /// Rule index that allowed it.
    pub rule: u16,
    /// `VERDICT_*`.
    pub verdict: u8,
    /// Padding, zero.
    pub _pad: [u8; 5],
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
