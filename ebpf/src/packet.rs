//! Header parsing for cgroup_skb, where packet data starts at the IP header.
//!
//! Every read goes through `bpf_skb_load_bytes` (`SkBuffContext::load`), which checks
//! bounds and works on non-linear buffers; a short packet is an error, never a guess.

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
    if offset <= MAX_DIRECT {
        // SAFETY: reads two fields of the program's own context.
        let (start, end) = unsafe {
            (
                (*ctx.skb.skb).data as usize,
                (*ctx.skb.skb).data_end as usize,
            )
        };
        let ptr = start + offset;
        if ptr + core::mem::size_of::<T>() <= end {
            // SAFETY: the bytes lie between `data` and `data_end`, checked just above.
            return Ok(unsafe { (ptr as *const T).read_unaligned() });
        }
    }
    ctx.load(offset).map_err(|_| ())
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
    let h: [u8; 20] = load(ctx, 0)?;
    let ihl = (h[0] & 0x0f) as usize * 4;
    if ihl < 20 {
        return Err(());
    }
    p.protocol = h[9];
    p.src = v4_mapped([h[12], h[13], h[14], h[15]]);
    p.dst = v4_mapped([h[16], h[17], h[18], h[19]]);
    p.l4 = ihl;
    // A non-first fragment has no transport header. The cgroup hooks see packets after
    // reassembly (ingress) and before fragmentation (egress), so this is a stray: it is
    // judged without ports, which no port rule allows.
    let frag_offset = u16::from_be_bytes([h[6] & 0x1f, h[7]]);
    if frag_offset != 0 {
        p.protocol = 0xff;
        return Ok(());
    }
    transport(ctx, ihl, p)
}

#[inline(always)]
fn parse_v6(ctx: &SkBuffContext, p: &mut Packet) -> Result<(), ()> {
    let h: [u8; 8] = load(ctx, 0)?;
    p.src = load(ctx, 8)?;
    p.dst = load(ctx, 24)?;
    p.protocol = h[6];
    p.ipv6 = true;
    p.hop_limit = h[7];
    p.l4 = 40;
    let mut offset = 40usize;
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
        IPPROTO_TCP => {
            let t: [u8; 14] = load(ctx, offset)?;
            p.sport = u16::from_be_bytes([t[0], t[1]]);
            p.dport = u16::from_be_bytes([t[2], t[3]]);
            p.tcp_flags = t[13];
        }
        IPPROTO_UDP => {
            let u: [u8; 4] = load(ctx, offset)?;
            p.sport = u16::from_be_bytes([u[0], u[1]]);
            p.dport = u16::from_be_bytes([u[2], u[3]]);
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
