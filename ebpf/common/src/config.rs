//! The runtime configuration the programs read on every packet: one entry of an array
//! map. Switching audit <-> enforce or flipping to a new policy generation is one write
//! of one field; the programs read each field once per packet.

/// Audit (dry run): decide, count would-denies, pass everything. The zero value, so a
/// program running before the agent wrote its configuration never drops.
pub const MODE_AUDIT: u32 = 0;
/// Enforce: drop what is denied.
pub const MODE_ENFORCE: u32 = 1;

/// Loopback traffic is exempt (counted on its own).
pub const LOOPBACK_EXEMPT: u32 = 0;
/// Loopback traffic goes through the rules like any other.
pub const LOOPBACK_ENFORCE: u32 = 1;

/// The runtime configuration.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Which policy generation (0 or 1) of `PORTS` and `PEERS` is live. The agent fills
    /// the other generation, then flips this field: a reload is one write.
    pub generation: u32,
    /// [`MODE_AUDIT`] or [`MODE_ENFORCE`].
    pub mode: u32,
    /// [`LOOPBACK_EXEMPT`] or [`LOOPBACK_ENFORCE`].
    pub loopback: u32,
    /// 1: ICMP/ICMPv6 echo request and reply pass; 0: they are denied.
    pub icmp_echo: u32,
    /// Deny events per second per CPU; 0 turns events off.
    pub events_per_sec: u32,
    /// 1 when an XDP program is attached: the egress program then records every flow a
    /// connect()ed socket opens in `PC_FLOWS_OUT`, so XDP can let its replies in. 0 spares
    /// cgroup-only deployments that lookup per packet.
    pub xdp_flows: u32,
    /// Policy epoch: bumped by every install of a policy (a reload, a restart). Each socket
    /// record and flow-table entry keeps the epoch its verdict was given under; a packet
    /// that finds an older epoch has its flow decided again by the live policy, so a rule
    /// a reload removes or narrows stops the flows it allowed (reason `revoked`).
    pub epoch: u32,
    /// Seconds an address learned from a DNS answer stays usable for new flows after
    /// its TTL ran out (the site's `dns_grace`).
    pub dns_grace: u32,
}
