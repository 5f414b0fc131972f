//! The compiled policy as the datapath sees it, and the one function that decides a new
//! flow from it.
//!
//! Two maps hold a policy generation:
//! - `PORTS`, an array with one `u32` per (generation, direction, protocol, port): the
//!   rule that opens that port for any peer, or the peer set whose members a rule opens
//!   it for. Port ranges are expanded by the agent, so the lookup is one array index
//!   whatever the number of rules and ranges.
//! - `PEERS`, an LPM trie keyed by (generation, peer set, address), only consulted when
//!   a port is open to named peers only.
//!
//! Each table exists twice (generation 0 and 1); `Config::generation` says which one is
//! live, so a reload fills the idle generation and flips one field.

/// A remote peer opens the flow to a local port.
pub const DIR_IN: u8 = 0;
/// This host opens the flow to a remote port.
pub const DIR_OUT: u8 = 1;

/// IP protocol numbers the policy knows.
pub const IPPROTO_TCP: u8 = 6;
/// UDP.
pub const IPPROTO_UDP: u8 = 17;
/// ICMP.
pub const IPPROTO_ICMP: u8 = 1;
/// ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;

/// Policy generations held at once (the live one and the one being filled).
pub const GENERATIONS: u32 = 2;
/// Length of the `PORTS` array.
pub const PORT_TABLE_LEN: u32 = GENERATIONS * 2 * 2 * 65536;

/// Index into `PORTS`, or `None` for a protocol without ports in the policy.
#[inline(always)]
pub fn port_index(generation: u32, direction: u8, protocol: u8, port: u16) -> Option<u32> {
    let proto = match protocol {
        IPPROTO_TCP => 0,
        IPPROTO_UDP => 1,
        _ => return None,
    };
    let table = (generation & 1) * 4 + (direction as u32 & 1) * 2 + proto;
    Some((table << 16) | port as u32)
}

/// Packs a `PORTS` value: the rule index that opens the port for every peer (`rule`,
/// 0 = none), else the peer set to look the peer up in (`peer_set`, 0 = none).
#[inline(always)]
pub const fn port_entry(rule: u16, peer_set: u16) -> u32 {
    (peer_set as u32) << 16 | rule as u32
}

/// The rule index of a `PORTS` value (0 = none).
#[inline(always)]
pub const fn entry_rule(entry: u32) -> u16 {
    entry as u16
}

/// The peer set of a `PORTS` value (0 = none).
#[inline(always)]
pub const fn entry_peer_set(entry: u32) -> u16 {
    (entry >> 16) as u16
}

/// Data part of a `PEERS` key. The trie matches `PEER_SET_BITS + address prefix` bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerAddr {
    /// `generation << 16 | peer set`, big-endian, so the set is part of the prefix.
    pub set: [u8; 4],
    /// The address, IPv6 or IPv4-mapped, network order.
    pub addr: [u8; 16],
}

/// Bits of a `PEERS` key before the address.
pub const PEER_SET_BITS: u32 = 32;

impl PeerAddr {
    /// The key data for `addr` in `peer_set` of `generation`.
    #[inline(always)]
    pub fn new(generation: u32, peer_set: u16, addr: [u8; 16]) -> Self {
        Self {
            set: ((generation & 1) << 16 | peer_set as u32).to_be_bytes(),
            addr,
        }
    }
}

/// `::ffff:a.b.c.d` for an IPv4 address given in network order bytes.
#[inline(always)]
pub const fn v4_mapped(v4: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

/// Whether the address is loopback: `127.0.0.0/8` (mapped) or `::1`.
#[inline(always)]
pub fn is_loopback(addr: &[u8; 16]) -> bool {
    (is_v4_mapped(addr) && addr[12] == 127) || (addr[..15] == [0; 15] && addr[15] == 1)
}

/// Read access to one policy image: the kernel's maps, or the agent's copy of them.
pub trait PolicyTables {
    /// The `PORTS` value at `index` (0 when absent).
    fn port_entry(&self, index: u32) -> u32;
    /// The rule of the longest `PEERS` prefix matching `key` (0 when none matches).
    fn peer_rule(&self, key: &PeerAddr) -> u16;
    /// The rule that opens `slot` to `peer` because a trusted resolver gave `peer` for
    /// a listed name (`names::learned_rule`); 0 when none. Tables without learned
    /// addresses keep the default.
    fn learned_rule(&self, _generation: u32, _slot: u16, _peer: &[u8; 16]) -> u16 {
        0
    }
}

/// The verdict on a new flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowed by the rule with this index.
    Allow(u16),
    /// Denied, for this `stats::reason`.
    Deny(u32),
}

/// Decides a new flow of `protocol` in `direction` whose policy port is `port` (the local
/// port for inbound flows, the remote port for outbound ones) and whose remote end is
/// `peer`. This is the whole policy lookup: O(1) array read, plus one trie lookup only
/// when the port is open to named peers only, and, when the trie has no network for
/// `peer`, the addresses learned from DNS answers for the slot's names.
#[inline(always)]
pub fn decide<T: PolicyTables>(
    tables: &T,
    generation: u32,
    direction: u8,
    protocol: u8,
    port: u16,
    peer: &[u8; 16],
) -> Decision {
    // Every path sets both `allow` and `value` (rule or reason): the variant is built
    // once, at the end. Returning variants from each path lets LLVM leave the payload
    // register of a path that never sets it unset, and read it on the join, which the
    // verifier rejects as uninitialised (`!read_ok`).
    let (allow, value) = match port_index(generation, direction, protocol, port) {
        None => (false, crate::stats::reason::PROTOCOL),
        Some(index) => {
            let entry = tables.port_entry(index);
            let rule = entry_rule(entry);
            let set = entry_peer_set(entry);
            if rule != 0 {
                (true, rule as u32)
            } else if set == 0 {
                (false, crate::stats::reason::NO_RULE)
            } else {
                match tables.peer_rule(&PeerAddr::new(generation, set, *peer)) {
                    0 => match tables.learned_rule(generation, set, peer) {
                        0 => (false, crate::stats::reason::PEER),
                        rule => (true, rule as u32),
                    },
                    rule => (true, rule as u32),
                }
            }
        }
    };
    if allow {
        Decision::Allow(value as u16)
    } else {
        Decision::Deny(value)
    }
}

/// Whether the address is IPv4-mapped (`::ffff:0:0/96`): how this crate stores IPv4,
/// and a source no real IPv6 packet has.
#[inline(always)]
pub fn is_v4_mapped(addr: &[u8; 16]) -> bool {
    addr[..10] == [0; 10] && addr[10] == 0xff && addr[11] == 0xff
}

/// Whether the address is unspecified: `::` or (mapped) `0.0.0.0`.
#[inline(always)]
pub fn is_unspecified(addr: &[u8; 16]) -> bool {
    addr[..10] == [0; 10]
        && addr[12..] == [0; 4]
        && (addr[10..12] == [0; 2] || addr[10..12] == [0xff; 2])
}

/// Whether the address is IPv6 link-local (`fe80::/10`).
#[inline(always)]
pub const fn is_link_local6(addr: &[u8; 16]) -> bool {
    addr[0] == 0xfe && addr[1] & 0xc0 == 0x80
}

/// Whether `remote`, the far end of a packet, cannot be real: an IPv4-mapped address in
/// an IPv6 header (`ipv6`), a loopback address on a packet that did not cross the
/// loopback device (`loopback_device`; pass true for egress, where the kernel routes
/// loopback destinations to it), or the unspecified address. Checked before the loopback
/// exemption and before any peer lookup, so such a source is never loopback and never a
/// member of a peer group (an IPv4 group's mapped prefix included). IPv6 neighbour
/// discovery from `::` (duplicate address detection) is the one honest unspecified
/// source: callers let [`Icmp::Local`] messages through first.
#[inline(always)]
pub fn is_spoofed(remote: &[u8; 16], ipv6: bool, loopback_device: bool) -> bool {
    (ipv6 && is_v4_mapped(remote))
        || (!loopback_device && is_loopback(remote))
        || is_unspecified(remote)
}

/// What an ICMP or ICMPv6 message is, for the related-only rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Icmp {
    /// An error (v4: destination unreachable, time exceeded, parameter problem; v6:
    /// types 1-4): passes only when it quotes a flow this host has.
    Error,
    /// Echo request: `Config::icmp_echo` decides.
    EchoRequest,
    /// Echo reply: passes only as the answer to an echo request this host sent.
    EchoReply,
    /// IPv6 link-local configuration traffic RFC 4890 (4.4.1) says a host must accept:
    /// neighbour and router discovery, inverse ND and SEND with hop limit 255; multicast
    /// listener and multicast router discovery messages from a link-local (or, for
    /// reports, the unspecified) source with hop limit 1. Anything else with these types
    /// (a hop limit that shows the packet was routed) is not link-local and is denied.
    Local,
    /// Everything else (redirects, timestamps, router renumbering, node information,
    /// unknown types): denied.
    Other,
}

/// The class of an ICMPv4 message.
#[inline(always)]
pub const fn icmp4_class(icmp_type: u8) -> Icmp {
    match icmp_type {
        3 | 11 | 12 => Icmp::Error,
        8 => Icmp::EchoRequest,
        0 => Icmp::EchoReply,
        _ => Icmp::Other,
    }
}

/// The class of an ICMPv6 message with this IPv6 hop limit and source address.
#[inline(always)]
pub fn icmp6_class(icmp_type: u8, hop_limit: u8, src: &[u8; 16]) -> Icmp {
    match icmp_type {
        1..=4 => Icmp::Error,
        128 => Icmp::EchoRequest,
        129 => Icmp::EchoReply,
        133..=136 | 141 | 142 | 148 | 149 if hop_limit == 255 => Icmp::Local,
        130..=132 | 143 | 151..=153
            if hop_limit == 1 && (is_link_local6(src) || is_unspecified(src)) =>
        {
            Icmp::Local
        }
        _ => Icmp::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct One {
        entry: u32,
        peer_rule: u16,
    }
    impl PolicyTables for One {
        fn port_entry(&self, _: u32) -> u32 {
            self.entry
        }
        fn peer_rule(&self, _: &PeerAddr) -> u16 {
            self.peer_rule
        }
    }

    #[test]
    fn indices_do_not_overlap() {
        let mut seen = [false; 16];
        for g in 0..2 {
            for d in [DIR_IN, DIR_OUT] {
                for p in [IPPROTO_TCP, IPPROTO_UDP] {
                    let i = port_index(g, d, p, 0).unwrap() >> 16;
                    assert!(!seen[i as usize]);
                    seen[i as usize] = true;
                    assert!(port_index(g, d, p, 65535).unwrap() < PORT_TABLE_LEN);
                }
            }
        }
        assert_eq!(port_index(0, DIR_IN, IPPROTO_ICMP, 1), None);
    }

    #[test]
    fn decide_covers_each_branch() {
        let p = v4_mapped([198, 18, 0, 1]);
        let d = |entry, peer_rule| decide(&One { entry, peer_rule }, 0, DIR_IN, 6, 25, &p);
        assert_eq!(d(port_entry(7, 0), 0), Decision::Allow(7));
        assert_eq!(d(0, 0), Decision::Deny(crate::stats::reason::NO_RULE));
        assert_eq!(
            d(port_entry(0, 3), 0),
            Decision::Deny(crate::stats::reason::PEER)
        );
        assert_eq!(d(port_entry(0, 3), 9), Decision::Allow(9));
        let icmp = decide(
            &One {
                entry: 1,
                peer_rule: 0,
            },
            0,
            DIR_IN,
            1,
            0,
            &p,
        );
        assert_eq!(icmp, Decision::Deny(crate::stats::reason::PROTOCOL));
    }

    #[test]
    fn spoofed_sources() {
        let mapped_lo = v4_mapped([127, 0, 0, 1]);
        let peer = v4_mapped([198, 18, 0, 2]);
        // IPv4-mapped in an IPv6 header: never real.
        assert!(is_spoofed(&peer, true, false));
        assert!(is_spoofed(&mapped_lo, true, true));
        // The same bytes are how IPv4 packets are stored: fine in an IPv4 header.
        assert!(!is_spoofed(&peer, false, false));
        // Loopback only from the loopback device.
        assert!(is_spoofed(&mapped_lo, false, false));
        assert!(!is_spoofed(&mapped_lo, false, true));
        let mut one = [0u8; 16];
        one[15] = 1;
        assert!(is_spoofed(&one, true, false));
        assert!(!is_spoofed(&one, true, true));
        // Unspecified, both families.
        assert!(is_spoofed(&[0; 16], true, true));
        assert!(is_spoofed(&v4_mapped([0; 4]), false, true));
        let mut ula = [0u8; 16];
        ula[0] = 0xfd;
        ula[15] = 2;
        assert!(!is_spoofed(&ula, true, false));
    }

    #[test]
    fn icmp_classes() {
        let mut ll = [0u8; 16];
        ll[0] = 0xfe;
        ll[1] = 0x80;
        ll[15] = 1;
        let mut global = [0u8; 16];
        global[0] = 0x20;
        global[15] = 1;
        assert_eq!(icmp4_class(3), Icmp::Error);
        assert_eq!(icmp4_class(0), Icmp::EchoReply);
        assert_eq!(icmp4_class(5), Icmp::Other);
        assert_eq!(icmp6_class(2, 64, &global), Icmp::Error);
        assert_eq!(icmp6_class(135, 255, &global), Icmp::Local);
        assert_eq!(icmp6_class(135, 64, &ll), Icmp::Other, "routed NS");
        assert_eq!(icmp6_class(137, 255, &ll), Icmp::Other, "redirect");
        assert_eq!(icmp6_class(143, 1, &ll), Icmp::Local);
        assert_eq!(icmp6_class(143, 1, &[0; 16]), Icmp::Local);
        assert_eq!(icmp6_class(131, 1, &global), Icmp::Other);
        assert_eq!(icmp6_class(139, 255, &ll), Icmp::Other, "node information");
    }

    #[test]
    fn loopback() {
        assert!(is_loopback(&v4_mapped([127, 0, 0, 1])));
        assert!(is_loopback(&v4_mapped([127, 9, 9, 9])));
        assert!(!is_loopback(&v4_mapped([128, 0, 0, 1])));
        let mut v6 = [0u8; 16];
        v6[15] = 1;
        assert!(is_loopback(&v6));
        v6[0] = 0xfe;
        assert!(!is_loopback(&v6));
    }
}
