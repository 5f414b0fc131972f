//! Header parsing for XDP, by direct packet access: Ethernet, up to two VLAN tags,
//! IPv4 or IPv6 (with a bounded walk of extension headers), then the few transport
//! fields a verdict needs.
//!
//! Every read goes through [`at`], the one bounds-checked accessor: it refuses any
//! offset past [`MAX_OFFSET`] (so the verifier knows every variable offset is bounded)
//! and any read that would end past `data_end`. A frame that cannot be parsed the way
//! the checks demand is an `Err`, which the caller denies as malformed: nothing is ever
//! guessed from a short or inconsistent header.
//!
//! Lengths are checked twice: against the frame (`data_end`) and against the IP
//! header's own length fields, so bytes of Ethernet padding past the IP datagram are
//! never taken for a transport header.

use core::mem::size_of;

use aya_ebpf::{btf_maps::PerCpuArray, macros::btf_map, programs::XdpContext};
use portcullis_common::{
    flow::FragKey,
    policy::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, v4_mapped},
};

/// Ethernet header: two addresses, then the EtherType at offset 12.
const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
/// 802.1Q customer tag.
const ETH_P_8021Q: u16 = 0x8100;
/// 802.1ad service tag (the outer tag of QinQ).
const ETH_P_8021AD: u16 = 0x88a8;

/// IPv6 extension headers walked at most; a longer chain is malformed.
const MAX_EXT_HEADERS: usize = 6;
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AUTH: u8 = 51;
const IPV6_DSTOPTS: u8 = 60;

/// Largest offset at which [`at`] reads a header. The bound is what lets the verifier
/// accept reads at offsets computed from packet data (IHL, extension header lengths).
/// A native-mode frame lives in one page anyway; in generic mode a frame can be longer
/// (jumbo MTU, GRO), but no honest header chain reaches this far into it.
const MAX_OFFSET: usize = 4096;

/// Minimal transport headers, read in full before a verdict: a first fragment too short
/// to hold one (the "tiny fragment" attack, RFC 1858) is malformed.
const TCP_MIN: usize = 20;
const UDP_LEN: usize = 8;
const ICMP_MIN: usize = 4;

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

/// A bounds-checked pointer to a `T` at `offset` bytes into the frame. The only way this
/// module touches packet memory.
#[inline(always)]
fn at<T>(ctx: &XdpContext, offset: usize) -> Result<*const T, ()> {
    if offset > MAX_OFFSET {
        return Err(());
    }
    let start = ctx.data();
    let end = ctx.data_end();
    let ptr = start + offset;
    if ptr + size_of::<T>() > end {
        return Err(());
    }
    Ok(ptr as *const T)
}

/// Whether the frame holds at least `end` bytes: checks the IP length fields, for which
/// no header is read (so no range is needed and `end` may exceed [`MAX_OFFSET`]).
#[inline(always)]
fn holds(ctx: &XdpContext, end: usize) -> bool {
    ctx.data() + end <= ctx.data_end()
}

/// Reads `N` bytes at `offset` (byte arrays: no alignment assumptions).
#[inline(always)]
fn read<const N: usize>(ctx: &XdpContext, offset: usize) -> Result<[u8; N], ()> {
    // SAFETY: `at` checked that `N` bytes at `offset` lie inside the frame.
    Ok(unsafe { *at::<[u8; N]>(ctx, offset)? })
}

/// Reads `N` bytes at `offset`, for the verdict code (ICMP quotes, echo identifiers).
#[inline(always)]
pub fn read_at<const N: usize>(ctx: &XdpContext, offset: usize) -> Result<[u8; N], ()> {
    // Through `black_box`: these offsets are sums (the ICMP header's offset + 4), and
    // LLVM checks the bound on the addend instead of the sum; verifiers before 6.x's
    // linked-scalar tracking (5.10, 6.1) then see an unbounded packet offset.
    read(ctx, core::hint::black_box(offset))
}

/// Where a packet stands in its datagram's fragmentation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    /// Not fragmented (or an IPv6 atomic fragment: offset 0, no more fragments).
    None,
    /// The first fragment: carries the ports, is judged, and leaves its verdict for the
    /// rest of the datagram under [`Frame::frag_key`].
    First,
    /// A later fragment: no transport header, judged by its first fragment's verdict.
    Later,
}

/// An IP packet's fields that a verdict needs. Filled in place by [`parse`].
#[derive(Clone, Copy)]
pub struct Frame {
    /// IPv6 (else IPv4): ICMP is protocol 1 only in IPv4 and 58 only in IPv6.
    pub v6: bool,
    /// IP protocol (IPv6: the header after the extension chain; for a later fragment,
    /// the fragment header's next header).
    pub protocol: u8,
    /// TCP flags byte.
    pub tcp_flags: u8,
    /// ICMP/ICMPv6 type.
    pub icmp_type: u8,
    /// TCP/UDP source port, host order (0 otherwise).
    pub sport: u16,
    /// TCP/UDP destination port, host order (0 otherwise).
    pub dport: u16,
    /// Source address (IPv6 or IPv4-mapped): the remote end.
    pub src: [u8; 16],
    /// Destination address: this host.
    pub dst: [u8; 16],
    /// The IP datagram's length (header included, link layer and padding excluded): what
    /// the counters count, as the cgroup programs do.
    pub ip_len: u32,
    /// Identification of a fragmented datagram (IPv4: 16 bits, IPv6: 32), host order.
    pub frag_id: u32,
    /// Protocol that names a fragmented datagram: IPv4's protocol field, or the IPv6
    /// fragment header's next header (the same in every fragment of a datagram).
    pub frag_protocol: u8,
    pub fragment: Fragment,
    /// IPv6 hop limit (0 for IPv4): link-local ICMPv6 must carry 255 or 1.
    pub hop_limit: u8,
}

/// Where the ICMP message of the packet being judged starts: written by [`parse`] for ICMP
/// only, read by the ICMP checks. Per CPU, and an XDP program runs to its end on one CPU.
///
/// Not a `Frame` field on purpose: an offset carried in the frame through the verdict
/// code is a value the verifier must track exactly, so it walked every path after the
/// parse once per header layout (VLAN tags, IPv6 extension headers), and loading the
/// program took about a second of the agent's startup. Read back from a map, the offset
/// is just a number that `read_at` bounds-checks.
#[btf_map]
static PC_ICMP_AT: PerCpuArray<u32, 1> = PerCpuArray::new();

/// The offset [`parse`] found for the ICMP message (see [`PC_ICMP_AT`]).
#[inline(always)]
pub fn icmp_offset() -> usize {
    PC_ICMP_AT.get(0).map_or(usize::MAX, |v| *v as usize)
}

impl Frame {
    pub const EMPTY: Frame = Frame {
        v6: false,
        protocol: 0,
        tcp_flags: 0,
        icmp_type: 0,
        sport: 0,
        dport: 0,
        src: [0; 16],
        dst: [0; 16],
        ip_len: 0,
        frag_id: 0,
        frag_protocol: 0,
        fragment: Fragment::None,
        hop_limit: 0,
    };

    /// The key of this packet's datagram in the fragment table.
    #[inline(always)]
    pub fn frag_key(&self) -> FragKey {
        FragKey {
            src: self.src,
            dst: self.dst,
            id: self.frag_id,
            protocol: self.frag_protocol,
            _pad: [0; 3],
        }
    }
}

/// IP version of a frame's network header.
#[derive(Clone, Copy)]
pub enum Ip {
    V4,
    V6,
}

/// What the link layer says the frame is.
pub enum Link {
    /// IPv4 or IPv6, with the offset of its header (after any VLAN tags).
    Ip((Ip, usize)),
    /// Not IPv4 or IPv6 (ARP, LLDP, ...).
    NonIp,
}

/// The link layer: the EtherType under up to two VLAN tags (QinQ; a third tag is
/// malformed). Read apart from
/// [`parse`] so that a non-IP frame leaves before anything else is read.
///
/// Without a branch on the tags: the tag count only moves the offsets (by 4 per tag),
/// so the verifier walks the rest of the program once, with the IP header at an offset
/// in 14..=22, instead of once per layout at a constant offset (which was about 40 %
/// of `pc_xdp`'s verification). Each read is the one the loop over the tags made: an
/// untagged frame reads its EtherType again where a tagged one reads the inner one.
#[inline(always)]
pub fn link(ctx: &XdpContext) -> Result<Link, ()> {
    let outer = u16::from_be_bytes(read(ctx, 12)?);
    let t0 = is_tag(outer);
    // Tag control information (2 bytes), then the encapsulated EtherType.
    let inner = u16::from_be_bytes(read(ctx, 12 + 4 * t0)?);
    let t1 = t0 & is_tag(inner);
    let ethertype = u16::from_be_bytes(read(ctx, 12 + 4 * (t0 + t1))?);
    // Three tags or more: the kernel would not strip them either.
    if t1 & is_tag(ethertype) != 0 {
        return Err(());
    }
    let offset = ETH_HLEN + 4 * (t0 + t1);
    match ethertype {
        ETH_P_IP => Ok(Link::Ip((Ip::V4, offset))),
        ETH_P_IPV6 => Ok(Link::Ip((Ip::V6, offset))),
        _ => Ok(Link::NonIp),
    }
}

/// 1 when `ethertype` is a VLAN tag's (802.1Q or 802.1ad), else 0, by arithmetic: `x - 1`
/// has its top bit set only for `x == 0`. The operands go through `black_box` so that
/// LLVM does not turn the comparison back into a branch.
#[inline(always)]
fn is_tag(ethertype: u16) -> usize {
    let q = core::hint::black_box((ethertype ^ ETH_P_8021Q) as u64);
    let ad = core::hint::black_box((ethertype ^ ETH_P_8021AD) as u64);
    ((q.wrapping_sub(1) >> 63) | (ad.wrapping_sub(1) >> 63)) as usize
}

/// Parses the IP packet at `l3` (from [`link`]) into `f`.
#[inline(always)]
pub fn parse(ctx: &XdpContext, ip: Ip, l3: usize, f: &mut Frame) -> Result<(), ()> {
    let ip_end = match ip {
        Ip::V4 => parse_v4(ctx, l3, f)?,
        Ip::V6 => parse_v6(ctx, l3, f)?,
    };
    // The datagram must fit in the frame. Checked last, on purpose: done before the
    // header reads, it would let LLVM drop their bounds checks as implied by this one,
    // which the verifier cannot follow (it tracks no range for an offset this large).
    if !holds(ctx, ip_end) {
        return Err(());
    }
    Ok(())
}

/// The IPv4 packet at `l3` into `f`; returns the offset where its datagram ends (not
/// yet checked against the frame: see [`parse`]).
#[inline(always)]
fn parse_v4(ctx: &XdpContext, l3: usize, f: &mut Frame) -> Result<usize, ()> {
    let [version_ihl, _tos, len_hi, len_lo] = read(ctx, l3)?;
    let ihl = (version_ihl & 0x0f) as usize * 4;
    let total = u16::from_be_bytes([len_hi, len_lo]) as usize;
    if version_ihl >> 4 != 4 || ihl < 20 || total < ihl {
        return Err(());
    }
    // The options (IHL > 5) are skipped, but must be present in full.
    let ip_end = l3 + total;
    let [id_hi, id_lo, flags_hi, flags_lo, _ttl, protocol] = read(ctx, l3 + 4)?;
    f.protocol = protocol;
    f.src = v4_mapped(read(ctx, l3 + 12)?);
    f.dst = v4_mapped(read(ctx, l3 + 16)?);
    f.ip_len = total as u32;
    let more = flags_hi & 0x20 != 0;
    let frag_offset = u16::from_be_bytes([flags_hi & 0x1f, flags_lo]);
    if more || frag_offset != 0 {
        f.frag_id = u16::from_be_bytes([id_hi, id_lo]) as u32;
        f.frag_protocol = protocol;
        if frag_offset != 0 {
            // A fragment at offset 8 could rewrite a TCP header's flags after the first
            // fragment was judged (RFC 1858); no honest sender makes one.
            if frag_offset == 1 && protocol == IPPROTO_TCP {
                return Err(());
            }
            f.fragment = Fragment::Later;
            return Ok(ip_end);
        }
        f.fragment = Fragment::First;
    }
    transport(ctx, l3 + ihl, ip_end, f)?;
    Ok(ip_end)
}

/// The IPv6 packet at `l3` into `f`; returns the offset where its datagram ends (see
/// [`parse_v4`]).
#[inline(always)]
fn parse_v6(ctx: &XdpContext, l3: usize, f: &mut Frame) -> Result<usize, ()> {
    let [version, _, _, _, len_hi, len_lo, next, hop] = read(ctx, l3)?;
    let payload = u16::from_be_bytes([len_hi, len_lo]) as usize;
    if version >> 4 != 6 {
        return Err(());
    }
    let ip_end = l3 + 40 + payload;
    f.v6 = true;
    f.hop_limit = hop;
    f.protocol = next;
    f.src = read(ctx, l3 + 8)?;
    f.dst = read(ctx, l3 + 24)?;
    f.ip_len = (40 + payload) as u32;
    let mut offset = l3 + 40;
    // One step per extension header, plus the step that finds the transport header.
    for _ in 0..MAX_EXT_HEADERS + 1 {
        let len = match f.protocol {
            // Length in 8-byte units, not counting the first 8.
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                let [next, units] = read(ctx, offset)?;
                f.protocol = next;
                (units as usize + 1) * 8
            }
            // Length in 4-byte units, not counting the first 8 bytes (RFC 4302).
            IPV6_AUTH => {
                let [next, units] = read(ctx, offset)?;
                f.protocol = next;
                (units as usize + 2) * 4
            }
            IPV6_FRAGMENT => {
                let [next, _, off_hi, off_lo, id0, id1, id2, id3] = read(ctx, offset)?;
                f.protocol = next;
                let frag_offset = u16::from_be_bytes([off_hi, off_lo]) >> 3;
                let more = off_lo & 1 != 0;
                if frag_offset != 0 || more {
                    f.frag_id = u32::from_be_bytes([id0, id1, id2, id3]);
                    f.frag_protocol = next;
                    if frag_offset != 0 {
                        f.fragment = Fragment::Later;
                        return Ok(ip_end);
                    }
                    f.fragment = Fragment::First;
                }
                8
            }
            // The end of the chain: a transport header, or a protocol the policy denies
            // (an unknown next header included).
            _ => {
                transport(ctx, offset, ip_end, f)?;
                return Ok(ip_end);
            }
        };
        offset += len;
        if offset > ip_end {
            return Err(());
        }
    }
    // Still inside the chain after the bound: refused rather than guessed.
    Err(())
}

/// Reads the transport fields at `offset`; the header must lie within the IP datagram
/// (`ip_end`) as well as the frame.
#[inline(always)]
fn transport(ctx: &XdpContext, offset: usize, ip_end: usize, f: &mut Frame) -> Result<(), ()> {
    let need = match f.protocol {
        IPPROTO_TCP => TCP_MIN,
        IPPROTO_UDP => UDP_LEN,
        IPPROTO_ICMP | IPPROTO_ICMPV6 => ICMP_MIN,
        _ => return Ok(()),
    };
    if offset + need > ip_end {
        return Err(());
    }

    // Each read covers the whole minimal header, though only some fields are used.
    match f.protocol {
        IPPROTO_TCP => {
            let t: [u8; TCP_MIN] = read(ctx, offset)?;
            // Data offset below 5 words: not a TCP header.
            if t[12] >> 4 < 5 {
                return Err(());
            }
            f.sport = u16::from_be_bytes([t[0], t[1]]);
            f.dport = u16::from_be_bytes([t[2], t[3]]);
            f.tcp_flags = t[13];
        }
        IPPROTO_UDP => {
            let u: [u8; UDP_LEN] = read(ctx, offset)?;
            f.sport = u16::from_be_bytes([u[0], u[1]]);
            f.dport = u16::from_be_bytes([u[2], u[3]]);
        }
        _ => {
            let i: [u8; ICMP_MIN] = read(ctx, offset)?;
            f.icmp_type = i[0];
            if let Some(at) = PC_ICMP_AT.get_ptr_mut(0) {
                // SAFETY: this CPU's slot of a per-CPU array, see `PC_ICMP_AT`.
                unsafe { *at = offset as u32 };
            }
        }
    }
    Ok(())
}
