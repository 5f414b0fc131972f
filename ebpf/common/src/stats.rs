//! Counter layouts and the indices of the global counters.

/// A packets-and-bytes counter. Per-CPU in every map that holds it, so the programs
/// add without atomics; the agent sums the CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// Packets.
    pub packets: u64,
    /// Bytes (IP header included, link-layer header excluded).
    pub bytes: u64,
}

/// Loopback packets let through by the loopback exemption.
pub const PASS_LOOPBACK: u32 = 0;
/// ICMP/ICMPv6 let through: errors that quote a flow this host has, echo (when
/// `icmp_echo` allows it; replies only to requests this host sent), and the link-local
/// neighbour discovery and multicast listener messages RFC 4890 says hosts must accept.
pub const PASS_ICMP: u32 = 1;
/// Deny events written to the ring buffer.
pub const EVENTS_SENT: u32 = 2;
/// Deny events dropped by the per-CPU rate limit.
pub const EVENTS_RATE_LIMITED: u32 = 3;
/// Deny events dropped because the ring buffer was full.
pub const EVENTS_RING_FULL: u32 = 4;
/// Socket storage could not be allocated in connect(): the flow is then judged per packet.
pub const SOCKET_STORAGE_FULL: u32 = 5;
/// Packets that could not be parsed (truncated headers); dropped in enforce mode.
pub const MALFORMED: u32 = 6;
/// Non-IP frames the XDP program lets through (ARP and every EtherType other than IPv4
/// and IPv6, e.g. LLDP): the policy is about IP flows. Bytes are whole frames.
pub const PASS_NON_IP: u32 = 7;

/// Why a flow was denied.
pub mod reason {
    /// No rule opens this port in this direction for this protocol.
    pub const NO_RULE: u32 = 0;
    /// A rule opens the port, but only for peers this address is not in.
    pub const PEER: u32 = 1;
    /// A packet that belongs to no known flow and does not open one (e.g. a TCP
    /// segment without SYN, a reply to nothing, an ICMP error quoting a flow this host
    /// does not have, an echo reply to a request it never sent).
    pub const STATE: u32 = 2;
    /// An IP protocol other than TCP, UDP, ICMP and ICMPv6.
    pub const PROTOCOL: u32 = 3;
    /// An ICMP/ICMPv6 type that is not allowed (echo when `icmp_echo = 0`, and ICMPv4
    /// informational types).
    pub const ICMP: u32 = 4;
    /// A packet whose headers could not be parsed.
    pub const MALFORMED: u32 = 5;
    /// A source no honest packet has: an IPv4-mapped address (`::ffff:0:0/96`) in an IPv6
    /// header, a loopback address (127/8, `::1`) that did not arrive on the loopback
    /// device, or the unspecified address (outside IPv6 neighbour discovery). Such a
    /// packet is never loopback and never matches a peer group.
    pub const SPOOFED: u32 = 6;
    /// A packet of a flow a rule allowed, after a reload removed or narrowed that rule.
    pub const REVOKED: u32 = 7;
    /// Number of reasons (the stride of the deny counters).
    pub const COUNT: u32 = 8;
    /// Display names, indexed by reason.
    pub const NAMES: [&str; 8] = [
        "no-rule",
        "peer",
        "state",
        "protocol",
        "icmp",
        "malformed",
        "spoofed",
        "revoked",
    ];
}

/// First index of the deny counters.
pub const DENY_BASE: u32 = 16;
/// Number of global counters of one layer.
pub const STATS_LEN: u32 = DENY_BASE + 2 * 2 * reason::COUNT;

/// Counters are kept per layer, so that a packet the XDP program and then a cgroup
/// program both judge is counted once in each layer and never twice in one counter.
/// The cgroup programs (per service or host, per socket).
pub const LAYER_CGROUP: u32 = 0;
/// The XDP program (per interface, before the stack).
pub const LAYER_XDP: u32 = 1;
/// Number of layers: `PC_STATS` holds `STATS_LEN * LAYERS` counters and `PC_RULES`
/// `MAX_RULES * LAYERS`, layer-major.
pub const LAYERS: u32 = 2;
/// Display names, indexed by layer.
pub const LAYER_NAMES: [&str; 2] = ["cgroup", "xdp"];

/// Index of the counter of denies (`audit == false`) or would-denies (`audit == true`)
/// for a direction (`policy::DIR_*`) and a reason (`reason::*`).
#[inline(always)]
pub const fn deny_index(audit: bool, direction: u8, reason: u32) -> u32 {
    DENY_BASE
        + (audit as u32) * 2 * reason::COUNT
        + (direction as u32 & 1) * reason::COUNT
        + (reason & (reason::COUNT - 1))
}

/// Key of the table of denied ports: what a report needs to show what the profile lacks.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeniedKey {
    /// `policy::DIR_IN` or `policy::DIR_OUT`.
    pub direction: u8,
    /// IP protocol number (6, 17, 1, 58, ...).
    pub protocol: u8,
    /// The local port for inbound flows, the remote port for outbound ones (0 where the
    /// protocol has no ports).
    pub port: u16,
    /// `LAYER_*` that denied it.
    pub layer: u8,
    /// Padding, zero.
    pub _pad: [u8; 3],
}

/// One slot of the per-CPU cache in front of the denied-port table (`maps::DENIED_HOT`):
/// the key it counts for and what it counted since it took that key. A denied packet
/// whose key is in its slot adds here, with no hash lookup; a packet of another key moves
/// the slot's counts into the table first. The table's count for a key is the table
/// entry plus the slots that hold the key (one per CPU at most), so each packet is in
/// exactly one of them. `count.packets == 0`: the slot is empty.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeniedSlot {
    /// The key counted here.
    pub key: DeniedKey,
    /// Its packets and bytes since the slot took it.
    pub count: Counter,
}

/// Slot of the denied-port cache for a key: a mix of its fields, so that the ports of a
/// scan or a flood (consecutive numbers) land in different slots.
#[inline(always)]
pub const fn denied_slot(key: &DeniedKey) -> u32 {
    (key.port as u32
        ^ ((key.protocol as u32) << 4)
        ^ ((key.direction as u32 & 1) << 9)
        ^ ((key.layer as u32 & 1) << 8))
        & (crate::maps::DENIED_HOT_SLOTS - 1)
}

impl DeniedKey {
    /// The key as one number (its 8 bytes, padding zero), for a one-compare match.
    #[inline(always)]
    pub const fn bits(&self) -> u64 {
        (self.direction as u64)
            | ((self.protocol as u64) << 8)
            | ((self.port as u64) << 16)
            | ((self.layer as u64) << 32)
    }
}

/// Counters of the DNS answers the datapath learns addresses from (`maps::DNS_STATS`,
/// a `PerCpuArray<u64>` indexed by these). The kernel adds to all but [`dns::EXPIRED`],
/// which the agent's sweep keeps (in CPU 0's slot, which no program writes).
pub mod dns {
    /// Answers from a trusted resolver that taught at least one address.
    pub const ANSWERS_LEARNED: u32 = 0;
    /// Address records stored (new or refreshed) from those answers.
    pub const ADDRESSES_LEARNED: u32 = 1;
    /// Packets from port 53 of an address that is not a trusted resolver: never parsed.
    pub const UNTRUSTED: u32 = 2;
    /// Usable answers from a trusted resolver for a name no peer group lists.
    pub const UNLISTED: u32 = 3;
    /// Messages from a trusted resolver the parser found broken (`dns::Status::Malformed`).
    pub const MALFORMED: u32 = 4;
    /// Name patterns pushed out of a learned address's slots while still valid.
    pub const PATTERNS_EVICTED: u32 = 5;
    /// Learned addresses inserted as new entries (for the LRU eviction count: inserted
    /// minus present minus swept).
    pub const INSERTED: u32 = 6;
    /// Learned addresses the agent removed after they expired.
    pub const EXPIRED: u32 = 7;
    /// New addresses not learned because a name pattern of the answer already holds
    /// `names::LEARNED_PER_NAME` addresses.
    pub const OVER_LIMIT: u32 = 8;
    /// Messages from a trusted resolver that answer no question this host has in flight
    /// (another id, other ends or question, a late or second answer, a TCP segment not at
    /// the answer's expected sequence number): never parsed (`question`).
    pub const UNSOLICITED: u32 = 9;
    /// Number of counters.
    pub const LEN: u32 = 10;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::DENIED_HOT_SLOTS;

    fn key(direction: u8, protocol: u8, port: u16, layer: u8) -> DeniedKey {
        DeniedKey {
            direction,
            protocol,
            port,
            layer,
            _pad: [0; 3],
        }
    }

    /// Consecutive ports (a flood over N ports, a scan) never share a slot.
    #[test]
    fn denied_slots_are_in_range_and_spread_a_port_scan() {
        let mut used = [false; DENIED_HOT_SLOTS as usize];
        for port in 30000..30000 + DENIED_HOT_SLOTS as u16 {
            let s = denied_slot(&key(0, 17, port, 1));
            assert!(s < DENIED_HOT_SLOTS, "slot {s} of port {port} out of range");
            assert!(!used[s as usize], "ports of one scan share slot {s}");
            used[s as usize] = true;
        }
        for direction in 0..2 {
            for protocol in [1u8, 6, 17, 58, 255] {
                for layer in 0..2 {
                    assert!(
                        denied_slot(&key(direction, protocol, 65535, layer)) < DENIED_HOT_SLOTS
                    );
                }
            }
        }
    }

    #[test]
    fn denied_key_bits_tell_every_field_apart() {
        let base = key(1, 6, 25, 0);
        for other in [
            key(0, 6, 25, 0),
            key(1, 17, 25, 0),
            key(1, 6, 26, 0),
            key(1, 6, 25, 1),
        ] {
            assert_ne!(
                base.bits(),
                other.bits(),
                "{base:?} and {other:?} share their bits"
            );
        }
        assert_eq!(base.bits(), key(1, 6, 25, 0).bits());
    }
}
