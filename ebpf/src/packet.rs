//! Header parsing for cgroup_skb, where packet data starts at the IP header.
//!
//! Every read goes through `load`: straight from the linear data when it holds the
//! bytes, else `bpf_skb_load_bytes`, which checks bounds and works on non-linear
//! buffers; a short packet is an error, never a guess.
//!
//! Two readers share those reads: [`parse_into`], the whole parse every verdict starts
//! from, and [`loopback_source_port`], only for TCP and UDP from a loopback address in
//! the plainest shape, for the loopback exemption's early exit (`skb::pc_ingress`).
//! What the second accepts, the first parses the same way from the same bytes.

use aya_ebpf::programs::SkBuffContext;
use portcullis_common::policy::{
    IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, v4_mapped,
};

/// The headers' fields a verdict needs.
pub struct Packet {
    /// IP protocol number (the last next-header for IPv6).
    pub protocol: u8,
    /// Source address (IPv6 or IPv4-mapped).
    pub src: [u8; 16],
    /// Destination address (IPv6 or IPv4-mapped).
    pub dst: [u8; 16],
    /// TCP/UDP ports, host order; 0 for other protocols.
    pub sport: u16,
    /// Destination port, host order.
    pub dport: u16,
    /// TCP flags byte (FIN=0x01, SYN=0x02, RST=0x04, ACK=0x10).
    pub tcp_flags: u8,
    /// ICMP/ICMPv6 type.
    pub icmp_type: u8,
    /// IPv6 (else IPv4).
    pub ipv6: bool,
    /// IPv6 hop limit (0 for IPv4): link-local ICMPv6 must carry 255 or 1.
    pub hop_limit: u8,
    /// Offset of the transport header: where an ICMP message starts.
    pub l4: usize,
}

impl Packet {
    /// A packet before parsing.
    pub const EMPTY: Packet = Packet {
        protocol: 0,
        src: [0; 16],
        dst: [0; 16],
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        icmp_type: 0,
        ipv6: false,
        hop_limit: 0,
        l4: 0,
    };
}

/// [`parse`] into `p`; false when the headers cannot be parsed. Not inlined: the header
/// copies parsing needs stay in this frame, which is gone before the verdict's calls.
#[inline(never)]
pub fn parse_into(ctx: &SkBuffContext, p: &mut Packet) -> bool {
    parse(ctx, p).is_ok()
}

/// Largest offset read directly (headers sit far below it; the bound lets the verifier
/// accept offsets computed from packet data). Past it, the helper reads.
const MAX_DIRECT: usize = 512;

/// Reads a `T` at `offset` (see the module docs).
#[inline(always)]
fn load<T: Copy>(ctx: &SkBuffContext, offset: usize) -> Result<T, ()> {
    // Not through [`direct`]: a read that falls back on its `None` gives LLVM another
    // block order for the whole parse; written out, the parse compiles as it did.
    if offset <= MAX_DIRECT {
        let (start, end) = linear_data(ctx);
        let ptr = start + offset;
        if ptr + core::mem::size_of::<T>() <= end {
            // SAFETY: the bytes lie between `data` and `data_end`, checked just above.
            return Ok(unsafe { (ptr as *const T).read_unaligned() });
        }
    }
    ctx.load(offset).map_err(|_| ())
}

/// Reads a `T` at `offset` straight from the linear data, as [`load`] does first; None
/// when it does not hold the bytes (or `offset` is past [`MAX_DIRECT`]).
#[inline(always)]
fn direct<T: Copy>(ctx: &SkBuffContext, offset: usize) -> Option<T> {
    if offset <= MAX_DIRECT {
        let (start, end) = linear_data(ctx);
        let ptr = start + offset;
        if ptr + core::mem::size_of::<T>() <= end {
            // SAFETY: the bytes lie between `data` and `data_end`, checked just above.
            return Some(unsafe { (ptr as *const T).read_unaligned() });
        }
    }
    None
}

/// `data` and `data_end`: where the linear data starts and ends.
#[inline(always)]
fn linear_data(ctx: &SkBuffContext) -> (usize, usize) {
    // SAFETY: reads two fields of the program's own context.
    unsafe {
        (
            (*ctx.skb.skb).data as usize,
            (*ctx.skb.skb).data_end as usize,
        )
    }
}

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

/// IPv6 extension headers walked at most; a longer chain is malformed.
const MAX_EXT_HEADERS: usize = 6;

#[inline(always)]
fn parse(ctx: &SkBuffContext, p: &mut Packet) -> Result<(), ()> {
    // Two bytes, not one: a one-byte check at offset 0 compiles to `data_end > data`,
    // from which the verifier learns no range. A packet shorter than two bytes is
    // malformed either way.
    let [first, _]: [u8; 2] = load(ctx, 0)?;
    match first >> 4 {
        4 => parse_v4(ctx, p),
        6 => parse_v6(ctx, p),
        _ => Err(()),
    }
}

#[inline(always)]
fn parse_v4(ctx: &SkBuffContext, p: &mut Packet) -> Result<(), ()> {
    let h: [u8; IPV4_MIN] = load(ctx, 0)?;
    let ihl = (h[0] & 0x0f) as usize * 4;
    if ihl < IPV4_MIN {
        return Err(());
    }
    p.protocol = h[9];
    p.src = v4_source(&h);
    p.dst = v4_mapped([h[16], h[17], h[18], h[19]]);
    p.l4 = ihl;
    // A non-first fragment has no transport header. The cgroup hooks see packets after
    // reassembly (ingress) and before fragmentation (egress), so this is a stray: it is
    // judged without ports, which no port rule allows.
    if v4_frag_offset(&h) != 0 {
        p.protocol = 0xff;
        return Ok(());
    }
    transport(ctx, ihl, p)
}

/// Length of an IPv4 header without options.
const IPV4_MIN: usize = 20;
/// Length of the IPv6 header (without extension headers).
const IPV6_LEN: usize = 40;
/// End of the source address in the IPv6 header.
const IPV6_SRC_END: usize = 24;

/// The source address of an IPv4 header, mapped.
#[inline(always)]
fn v4_source(h: &[u8; IPV4_MIN]) -> [u8; 16] {
    v4_mapped([h[12], h[13], h[14], h[15]])
}

/// The fragment offset of an IPv4 header (8-byte units; not the flags).
#[inline(always)]
fn v4_frag_offset(h: &[u8; IPV4_MIN]) -> u16 {
    u16::from_be_bytes([h[6] & 0x1f, h[7]])
}

#[inline(always)]
fn parse_v6(ctx: &SkBuffContext, p: &mut Packet) -> Result<(), ()> {
    let h: [u8; 8] = load(ctx, 0)?;
    p.src = load(ctx, 8)?;
    p.dst = load(ctx, 24)?;
    p.protocol = h[6];
    p.ipv6 = true;
    p.hop_limit = h[7];
    p.l4 = IPV6_LEN;
    let mut offset = IPV6_LEN;
    // One more round than there may be extension headers: the last one must find the
    // transport header.
    for _ in 0..=MAX_EXT_HEADERS {
        match p.protocol {
            // Hop-by-hop, routing, destination options: length in 8-byte units, minus one.
            0 | 43 | 60 => {
                let e: [u8; 2] = load(ctx, offset)?;
                p.protocol = e[0];
                offset += (e[1] as usize + 1) * 8;
            }
            // Fragment: fixed 8 bytes; a non-first fragment has no transport header.
            44 => {
                let e: [u8; 4] = load(ctx, offset)?;
                p.protocol = e[0];
                offset += 8;
                if u16::from_be_bytes([e[2], e[3]]) & 0xfff8 != 0 {
                    p.protocol = 0xff;
                    return Ok(());
                }
            }
            // Authentication header: length in 4-byte units, minus two.
            51 => {
                let e: [u8; 2] = load(ctx, offset)?;
                p.protocol = e[0];
                offset += (e[1] as usize + 2) * 4;
            }
            _ => {
                p.l4 = offset;
                return transport(ctx, offset, p);
            }
        }
    }
    Err(())
}

#[inline(always)]
fn transport(ctx: &SkBuffContext, offset: usize, p: &mut Packet) -> Result<(), ()> {
    match p.protocol {
        IPPROTO_TCP | IPPROTO_UDP => {
            let t = ports(ctx, offset, p.protocol)?;
            p.sport = t.source;
            p.dport = t.destination;
            p.tcp_flags = t.tcp_flags;
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            // Through the helper: a one-byte direct read cannot be bounds-checked in a
            // form the verifier follows (see `parse`), and ICMP is rare.
            p.icmp_type = ctx.load(offset).map_err(|_| ())?;
        }
        _ => {}
    }
    Ok(())
}

/// What a verdict reads of a TCP or UDP header.
struct Ports {
    /// Host order.
    source: u16,
    /// Host order.
    destination: u16,
    /// TCP flags byte; 0 for UDP.
    tcp_flags: u8,
}

/// The TCP (`protocol`) or UDP header at `offset`: 14 bytes for TCP (up to the flags), 4
/// for UDP (the ports); a packet too short for them is malformed.
#[inline(always)]
fn ports(ctx: &SkBuffContext, offset: usize, protocol: u8) -> Result<Ports, ()> {
    if protocol == IPPROTO_TCP {
        let t: [u8; 14] = load(ctx, offset)?;
        Ok(Ports {
            source: u16::from_be_bytes([t[0], t[1]]),
            destination: u16::from_be_bytes([t[2], t[3]]),
            tcp_flags: t[13],
        })
    } else {
        let u: [u8; 4] = load(ctx, offset)?;
        Ok(Ports {
            source: u16::from_be_bytes([u[0], u[1]]),
            destination: u16::from_be_bytes([u[2], u[3]]),
            tcp_flags: 0,
        })
    }
}

/// The source port of a TCP or UDP packet from a loopback address, in the plainest
/// shape: IPv4 without options and not a fragment, or IPv6 whose next header is TCP or
/// UDP. None for anything else (a short packet included), which only [`parse_into`]
/// reads.
///
/// Never a port for a packet the full parse calls malformed: for one this accepts,
/// [`parse`] takes the same branches, and each of its reads succeeds (the IP header's
/// bytes all lie before those of [`ports`], which both call at the same offset), so it
/// would find the same source and port.
///
/// Loopback is `policy::is_loopback` less what `policy::is_spoofed` refuses on the
/// loopback device: 127/8 over IPv4 (never the unspecified address), `::1` over IPv6
/// (a mapped 127/8 there is spoofed). Compared as header bytes here, not through those
/// functions: their slice compares on an address array (for IPv4, one built on the
/// stack by `v4_mapped`) stay memory compares that LLVM expands only after its folding,
/// and cost as much as the rest of this early exit (measured before the build wrote
/// small memsets as stores, `.cargo/config.toml`: 8-12 ns of 15).
#[inline(always)]
pub fn loopback_source_port(ctx: &SkBuffContext) -> Option<u16> {
    // The IPv4 header and its first four transport bytes, or the IPv6 header up to the
    // end of the source address: a packet shorter than that has no ports either. Only
    // from the linear data (where the kernel has a loopback packet's headers by the
    // time the hook runs; else the full parse reads them): a value merged from the
    // helper's copy too would be assembled byte by byte before any test.
    let h: [u8; IPV6_SRC_END] = direct(ctx, 0)?;
    let (protocol, l4) = match h[0] {
        // Version 4, header length 5 words: no options.
        0x45 => {
            let mut v4 = [0u8; IPV4_MIN];
            v4.copy_from_slice(&h[..IPV4_MIN]);
            if v4_frag_offset(&v4) != 0 || v4[12] != 127 {
                return None;
            }
            (v4[9], IPV4_MIN)
        }
        b if b >> 4 == 6 => {
            let mut src = [0u8; 16];
            src.copy_from_slice(&h[8..IPV6_SRC_END]);
            if u128::from_be_bytes(src) != 1 {
                return None;
            }
            (h[6], IPV6_LEN)
        }
        _ => return None,
    };
    if protocol != IPPROTO_TCP && protocol != IPPROTO_UDP {
        return None;
    }
    ports(ctx, l4, protocol).ok().map(|t| t.source)
}
