//! The one frame builder: Ethernet (with VLAN tags), IPv4 (options, fragments), IPv6
//! (extension headers, fragments), TCP, UDP, ICMP and ARP, put together byte by byte for
//! BPF_PROG_TEST_RUN. No checksums: neither XDP nor the cgroup programs verify them, and
//! test_run frames go nowhere. Used by the XDP corpus (`tests/xdp.rs`) and by the frames
//! `cargo xtask bench` times.

/// EtherTypes (host byte order; written big-endian).
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const ETH_P_LLDP: u16 = 0x88cc;

/// TCP flags.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Ethernet header (with VLAN tags: each entry is a tag's TPID) followed by `payload`.
pub fn eth(tags: &[u16], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    for (i, tpid) in tags.iter().enumerate() {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&(100 + i as u16).to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// IPv4 fragmentation fields: `more` fragments flag and offset in 8-byte units.
#[derive(Clone, Copy)]
pub struct Frag4 {
    pub id: u16,
    pub more: bool,
    pub offset: u16,
}

pub const NOT_FRAGMENTED: Frag4 = Frag4 {
    id: 1,
    more: false,
    offset: 0,
};

/// An IPv4 header (options padded by the caller to 4 bytes) and `payload`.
pub fn ipv4(
    src: [u8; 4],
    dst: [u8; 4],
    protocol: u8,
    options: &[u8],
    frag: Frag4,
    payload: &[u8],
) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0);
    let ihl = 5 + options.len() / 4;
    let total = (ihl * 4 + payload.len()) as u16;
    let flags_offset = (u16::from(frag.more) << 13) | frag.offset;
    let mut h = vec![0x40 | ihl as u8, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&frag.id.to_be_bytes());
    h.extend_from_slice(&flags_offset.to_be_bytes());
    h.extend_from_slice(&[64, protocol, 0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(options);
    h.extend_from_slice(payload);
    h
}

/// An IPv6 header whose first next header is `next`, then `payload` (extension headers
/// included).
pub fn ipv6(src: [u8; 16], dst: [u8; 16], next: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(payload);
    h
}

/// A hop-by-hop, routing or destination options header of `units` * 8 bytes (PadN).
pub fn ext(next: u8, units: usize) -> Vec<u8> {
    assert!(units >= 1);
    let mut h = vec![next, (units - 1) as u8];
    h.resize(units * 8, 0);
    if units * 8 > 2 {
        // PadN option filling the rest.
        h[2] = 1;
        h[3] = (units * 8 - 4) as u8;
    }
    h
}

/// An authentication header (RFC 4302) with a 4-byte ICV: 16 bytes.
pub fn ah(next: u8) -> Vec<u8> {
    let mut h = vec![next, 2, 0, 0];
    h.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0xaa, 0xbb, 0xcc, 0xdd]);
    h
}

/// An IPv6 fragment header.
pub fn frag6(next: u8, offset_units: u16, more: bool, id: u32) -> Vec<u8> {
    let mut h = vec![next, 0];
    h.extend_from_slice(&((offset_units << 3) | u16::from(more)).to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    h
}

/// A 20-byte TCP header.
pub fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut h = Vec::with_capacity(20);
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&1u32.to_be_bytes());
    h.extend_from_slice(&u32::from(flags & TCP_ACK != 0).to_be_bytes());
    h.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    h
}

/// A UDP header and `payload`.
pub fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(8 + payload.len());
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend_from_slice(payload);
    h
}

/// An 8-byte ICMP/ICMPv6 header.
pub fn icmp(ty: u8, code: u8) -> Vec<u8> {
    vec![ty, code, 0, 0, 0, 0, 0, 1]
}

/// An ARP request (Ethernet/IPv4).
pub fn arp() -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1, 0x02, 0, 0, 0, 0, 2, 198, 18, 0, 2];
    a.extend_from_slice(&[0, 0, 0, 0, 0, 0, 198, 18, 0, 1]);
    a
}

/// `fd00::<last>` style addresses for tests: `prefix` is the second group.
pub fn v6(prefix: u16, last: u8) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 0xfd;
    a[2..4].copy_from_slice(&prefix.to_be_bytes());
    a[15] = last;
    a
}

/// The IP datagram length the programs count for a well-formed frame (after the
/// Ethernet header and any VLAN tags).
pub fn ip_len(frame: &[u8]) -> u64 {
    let mut off = 12;
    while matches!(
        u16::from_be_bytes([frame[off], frame[off + 1]]),
        ETH_P_8021Q | ETH_P_8021AD
    ) {
        off += 4;
    }
    let ethertype = u16::from_be_bytes([frame[off], frame[off + 1]]);
    let l3 = off + 2;
    match ethertype {
        ETH_P_IP => u64::from(u16::from_be_bytes([frame[l3 + 2], frame[l3 + 3]])),
        ETH_P_IPV6 => 40 + u64::from(u16::from_be_bytes([frame[l3 + 4], frame[l3 + 5]])),
        _ => frame.len() as u64,
    }
}

// ---------------------------------------------------------------------------------------
// Frames for the hardening tests (related-only ICMP, spoofed sources): ICMP errors that quote a packet, IPv6 with a
// chosen hop limit, special addresses.

/// An ICMPv4 error (`ty`, `code`) quoting the IPv4 header (no options) and first 8 bytes
/// of a `protocol` packet `src:sport -> dst:dport`, as a router would send back.
pub fn icmp_error4(
    ty: u8,
    code: u8,
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    protocol: u8,
) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0, 0, 0, 0, 0];
    let l4 = quoted_l4(sport, dport);
    m.extend_from_slice(&ipv4(src, dst, protocol, &[], NOT_FRAGMENTED, &l4)[..28]);
    m
}

/// An ICMPv6 error of type `ty` quoting an IPv6 `protocol` packet `src:sport -> dst:dport`.
pub fn icmp_error6(
    ty: u8,
    src: [u8; 16],
    sport: u16,
    dst: [u8; 16],
    dport: u16,
    protocol: u8,
) -> Vec<u8> {
    let mut m = vec![ty, 0, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&ipv6(src, dst, protocol, &quoted_l4(sport, dport)));
    m
}

/// The first 8 bytes of a TCP or UDP header (ports, then zeros).
fn quoted_l4(sport: u16, dport: u16) -> Vec<u8> {
    let mut l4 = sport.to_be_bytes().to_vec();
    l4.extend_from_slice(&dport.to_be_bytes());
    l4.resize(8, 0);
    l4
}

/// An Ethernet frame with an IPv6 packet of hop limit `hop_limit`.
pub fn v6_hop(src: [u8; 16], dst: [u8; 16], hop_limit: u8, next: u8, payload: &[u8]) -> Vec<u8> {
    let mut ip = ipv6(src, dst, next, payload);
    ip[7] = hop_limit;
    eth(&[], ETH_P_IPV6, &ip)
}

/// An ICMP echo request or reply (`ty`) with identifier `id`.
pub fn echo(ty: u8, id: u16) -> Vec<u8> {
    let mut m = vec![ty, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0, 1]);
    m
}

/// `fe80::1`.
pub fn link_local6() -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 0xfe;
    a[1] = 0x80;
    a[15] = 1;
    a
}

/// `::1`.
pub fn v6_loopback() -> [u8; 16] {
    let mut a = [0u8; 16];
    a[15] = 1;
    a
}
