//! The deny event the programs put on the ring buffer (rate-limited per CPU).

/// Which program saw the denied packet or call.
pub mod hook {
    /// cgroup_skb ingress.
    pub const INGRESS: u8 = 0;
    /// cgroup_skb egress.
    pub const EGRESS: u8 = 1;
    /// connect() (cgroup_sock_addr): pid and comm are known.
    pub const CONNECT: u8 = 2;
    /// XDP.
    pub const XDP: u8 = 3;
    /// Display names, indexed by hook.
    pub const NAMES: [&str; 4] = ["ingress", "egress", "connect", "xdp"];
}

/// One denied (or, in audit mode, would-be denied) packet or connect().
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DenyEvent {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).
    pub time_ns: u64,
    /// cgroup v2 id of the socket's cgroup (0 where unknown, e.g. XDP).
    pub cgroup_id: u64,
    /// Process id (tgid) where the hook runs in the process (connect), else 0.
    pub pid: u32,
    /// Padding, zero.
    pub _pad0: u32,
    /// Process name where `pid` is set, NUL-padded.
    pub comm: [u8; 16],
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
    /// `policy::DIR_*`.
    pub direction: u8,
    /// `stats::reason::*`.
    pub reason: u8,
    /// `hook::*`.
    pub hook: u8,
    /// 1 when the packet was dropped, 0 when audit mode let it pass.
    pub dropped: u8,
    /// Padding, zero.
    pub _pad1: [u8; 7],
}
