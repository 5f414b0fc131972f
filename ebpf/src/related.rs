//! "Related" in the sense of nftables' `ct state related`, without conntrack: whether an
//! ICMP error or echo reply belongs to a flow this host has. Shared by the cgroup and XDP
//! programs; the quote itself is parsed by each program's own packet access.
//!
//! A flow is known when it is in a flow table: `PC_FLOWS_OUT` (UDP flows this host
//! opened, echo requests it sent, and while XDP is attached every connect()ed flow) or
//! `PC_FLOWS_IN` (UDP flows peers opened, and while XDP is attached every accepted TCP
//! flow). Known gap: without XDP, a TCP flow lives only in its socket record, so an
//! error quoting it is unrelated for the cgroup programs, which see ICMP only on its way
//! to raw and ping sockets (the kernel hands errors to TCP sockets before any cgroup
//! program runs, so TCP itself, PMTU discovery included, is unaffected). A socket lookup
//! (`bpf_sk_lookup_tcp`) would close it but did not fit the 512-byte stack next to the
//! quote.

use portcullis_common::flow::{FlowKey, FlowValue};

use crate::maps::{PC_FLOWS_IN, PC_FLOWS_OUT};

/// Whether the flow tables hold the flow `key` (this host's point of view).
#[inline(always)]
pub fn in_tables(key: &FlowKey) -> bool {
    PC_FLOWS_OUT.get_ptr(key).is_some() || PC_FLOWS_IN.get_ptr(key).is_some()
}

/// Records an echo request this host sends (`key` from [`portcullis_common::flow::echo_key`]),
/// so that its reply passes.
#[inline(always)]
pub fn remember_echo(key: &FlowKey, epoch: u32) {
    if PC_FLOWS_OUT.get_ptr(*key).is_none() {
        let _ = PC_FLOWS_OUT.insert(key, FlowValue::allowed(0, epoch), 0);
    }
}

/// Whether this host sent the echo request an echo reply (`key`) answers.
#[inline(always)]
pub fn echo_answered(key: &FlowKey) -> bool {
    PC_FLOWS_OUT.get_ptr(*key).is_some()
}
