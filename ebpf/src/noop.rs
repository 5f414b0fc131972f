//! Baseline programs for `cargo xtask bench`, never attached by the agent.
//!
//! `BPF_PROG_TEST_RUN`'s time per packet includes the kernel's own loop around the
//! program (building the context, timing, the indirect call). The benchmark divides our
//! programs' time by these empty programs' time, run the same way on the same frames,
//! so what remains is the cost of the datapath itself (figure M1). `pc_noop_drop` is the
//! ceiling of the UDP flood S1: any XDP filter on that veth drops at most as fast as a
//! program that drops everything without reading it. They touch no map
//! and decide nothing; the agent loads programs by name (`portcullis_common::maps::
//! programs`) and never names these.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    macros::{cgroup_skb, xdp},
    programs::{SkBuffContext, XdpContext},
};

/// cgroup_skb baseline: passes every packet.
#[cgroup_skb(ingress)]
pub fn pc_noop_skb(_ctx: SkBuffContext) -> i32 {
    1
}

/// XDP baseline: passes every frame.
#[xdp]
pub fn pc_noop_xdp(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// XDP ceiling: drops every frame, reads nothing (the veth counts its drops).
#[xdp]
pub fn pc_noop_drop(_ctx: XdpContext) -> u32 {
    XDP_DROP
}
