//! "Related" in the sense of nftables' `ct state related`, without conntrack: whether an
//! ICMP error or echo reply belongs to a flow this host has. Shared by the cgroup and XDP
//! programs; the quote itself is parsed by each program's own packet access.
//!
//! A flow is known when it is in a flow table (`PC_FLOWS_OUT`, `PC_FLOWS_IN`: UDP flows,
//! the connect()ed flows XDP needs, echo requests this host sent) or when the kernel has
//! a socket for it: an established (or closing) TCP socket, or a UDP socket connected to
//! exactly that peer. A listener or an unconnected UDP socket matches any peer, so it
//! proves nothing.

use aya_ebpf::{
    bindings::{BPF_F_CURRENT_NETNS, bpf_sock, bpf_sock_tuple},
    cty::c_void,
    helpers::generated::{bpf_sk_lookup_tcp, bpf_sk_lookup_udp, bpf_sk_release},
};
use portcullis_common::{
    flow::{FlowKey, FlowValue},
    policy::{IPPROTO_TCP, IPPROTO_UDP, is_v4_mapped},
};

use crate::maps::{PC_FLOWS_IN, PC_FLOWS_OUT};

/// `TCP_LISTEN` in `bpf_sock::state`.
const TCP_LISTEN: u32 = 10;

/// Whether the flow tables hold the flow `key` (this host's point of view). Enough for
/// the XDP program: while it is attached, the cgroup programs note every connect()ed
/// and every accepted TCP flow there too.
#[inline(always)]
pub fn in_tables(key: &FlowKey) -> bool {
    PC_FLOWS_OUT.get_ptr(key).is_some() || PC_FLOWS_IN.get_ptr(key).is_some()
}

/// Whether this host has the flow `key`: in the tables, or as a socket. `ctx` is the
/// program's context (`__sk_buff`), which the socket lookup helpers take to find the
/// network namespace.
#[inline(always)]
pub fn related(ctx: *mut c_void, key: &FlowKey) -> bool {
    if in_tables(key) {
        return true;
    }
    match key.protocol {
        IPPROTO_TCP | IPPROTO_UDP => has_socket(ctx, key),
        _ => false,
    }
}

/// Whether a TCP socket of the flow (not a listener) or a UDP socket connected to its
/// peer exists. Not inlined: the tuple and the acquired socket reference stay in their
/// own frame, away from the packet path's stack.
#[inline(never)]
fn has_socket(ctx: *mut c_void, key: &FlowKey) -> bool {
    // SAFETY: an all-zero tuple is a valid value of this plain C union.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    // The tuple is what a packet of the flow arriving here would carry: the remote end
    // is the source.
    let size = if is_v4_mapped(&key.remote) {
        // SAFETY: writes to the union's IPv4 member only.
        unsafe {
            let t = &mut tuple.__bindgen_anon_1.ipv4;
            t.saddr = u32::from_ne_bytes([key.remote[12], key.remote[13], key.remote[14], key.remote[15]]);
            t.daddr = u32::from_ne_bytes([key.local[12], key.local[13], key.local[14], key.local[15]]);
            t.sport = key.remote_port.to_be();
            t.dport = key.local_port.to_be();
        }
        12
    } else {
        // SAFETY: writes to the union's IPv6 member only.
        unsafe {
            let t = &mut tuple.__bindgen_anon_1.ipv6;
            for i in 0..4 {
                let j = i * 4;
                t.saddr[i] = u32::from_ne_bytes([key.remote[j], key.remote[j + 1], key.remote[j + 2], key.remote[j + 3]]);
                t.daddr[i] = u32::from_ne_bytes([key.local[j], key.local[j + 1], key.local[j + 2], key.local[j + 3]]);
            }
            t.sport = key.remote_port.to_be();
            t.dport = key.local_port.to_be();
        }
        36
    };
    let tcp = key.protocol == IPPROTO_TCP;
    // SAFETY: the helpers take the program's context and a tuple of the given size; a
    // non-NULL result is a referenced socket, released below on every path.
    unsafe {
        let sk: *mut bpf_sock = if tcp {
            bpf_sk_lookup_tcp(ctx, &mut tuple, size, BPF_F_CURRENT_NETNS as u64, 0)
        } else {
            bpf_sk_lookup_udp(ctx, &mut tuple, size, BPF_F_CURRENT_NETNS as u64, 0)
        };
        if sk.is_null() {
            return false;
        }
        let ok = if tcp {
            (*sk).state != TCP_LISTEN
        } else {
            (*sk).dst_port != 0
        };
        bpf_sk_release(sk.cast());
        ok
    }
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
