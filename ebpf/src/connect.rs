//! connect4/connect6: decide a flow this host opens when the application calls
//! connect(), before any packet leaves.
//!
//! Why here and not only per packet: the application gets EPERM at once instead of a
//! time-out, the event names the process, and the verdict is recorded on the socket, so
//! that a socket bound to a port an inbound rule opens (say 443) still cannot open an
//! outbound flow that no outbound rule allows: its packets are judged by this record,
//! never by its local port.
//!
//! The record is for the one destination connect() named. Unconnected UDP (sendto()
//! with an address), and a connected socket's sendto() to anywhere else, are judged per
//! datagram by the egress program, which also fails sendto() with EPERM when it drops.
//! A refused re-connect leaves a record that applies to nothing (`VERDICT_NONE`): the
//! socket's earlier verdict is not kept in force. `connect(AF_UNSPEC)` runs no hook; the
//! record then only ever matches datagrams to the destination it was given for.

use aya_ebpf::{
    helpers::bpf_get_current_cgroup_id, macros::cgroup_sock_addr, programs::SockAddrContext,
};
use portcullis_common::{
    config::LOOPBACK_EXEMPT,
    event::hook,
    flow::{FlowValue, SockState, VERDICT_ALLOW, VERDICT_EXEMPT, VERDICT_NONE},
    policy::{DIR_OUT, Decision, IPPROTO_TCP, IPPROTO_UDP, decide, is_loopback, v4_mapped},
    stats,
};

use crate::{
    account::{Denied, count_stat, deny_connect},
    maps::{KernelTables, PC_SOCKETS, config},
};

/// connect() goes ahead.
const ALLOW: i32 = 1;
/// connect() fails with EPERM.
const REFUSE: i32 = 0;

#[cgroup_sock_addr(connect4)]
pub fn pc_connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the context pointer is valid for the program's run; fields are read one
    // by one (the verifier rejects reads through a moved context pointer).
    let (ip, port, protocol) = unsafe {
        let sa = &*ctx.sock_addr;
        (sa.user_ip4, sa.user_port, sa.protocol)
    };
    // `user_ip4` holds the address in network order: its in-memory bytes are the octets.
    on_connect(&ctx, v4_mapped(ip.to_ne_bytes()), port, protocol)
}

#[cgroup_sock_addr(connect6)]
pub fn pc_connect6(ctx: SockAddrContext) -> i32 {
    // SAFETY: as above.
    let (w0, w1, w2, w3, port, protocol) = unsafe {
        let sa = &*ctx.sock_addr;
        (
            sa.user_ip6[0],
            sa.user_ip6[1],
            sa.user_ip6[2],
            sa.user_ip6[3],
            sa.user_port,
            sa.protocol,
        )
    };
    let mut addr = [0u8; 16];
    addr[0..4].copy_from_slice(&w0.to_ne_bytes());
    addr[4..8].copy_from_slice(&w1.to_ne_bytes());
    addr[8..12].copy_from_slice(&w2.to_ne_bytes());
    addr[12..16].copy_from_slice(&w3.to_ne_bytes());
    // IPv4-mapped destinations (dual-stack sockets) are already in the policy's form.
    on_connect(&ctx, addr, port, protocol)
}

#[inline(always)]
fn on_connect(ctx: &SockAddrContext, addr: [u8; 16], port_be: u32, protocol: u32) -> i32 {
    let protocol = protocol as u8;
    if protocol != IPPROTO_TCP && protocol != IPPROTO_UDP {
        // Raw and ICMP sockets: their packets are judged by the skb programs.
        return ALLOW;
    }
    let port = u16::from_be(port_be as u16);
    let cfg = config();
    let mut state = SockState {
        remote: addr,
        remote_port: port,
        direction: DIR_OUT,
        _pad: 0,
        value: FlowValue::allowed(0, cfg.epoch),
    };
    if cfg.loopback == LOOPBACK_EXEMPT && is_loopback(&addr) {
        state.value.verdict = VERDICT_EXEMPT;
        record(ctx, &mut state);
        return ALLOW;
    }
    match decide(
        &KernelTables,
        cfg.generation,
        DIR_OUT,
        protocol,
        port,
        &addr,
    ) {
        Decision::Allow(rule) => {
            state.value.rule = rule;
            state.value.verdict = VERDICT_ALLOW;
            record(ctx, &mut state);
            ALLOW
        }
        Decision::Deny(reason) => {
            let d = Denied {
                direction: DIR_OUT,
                reason,
                protocol,
                local: [0; 16],
                remote: addr,
                local_port: 0,
                remote_port: port,
                hook: hook::CONNECT,
                // SAFETY: plain helper call.
                cgroup_id: unsafe { bpf_get_current_cgroup_id() },
                skb: core::ptr::null_mut(),
            };
            if deny_connect(&cfg, &d) {
                // The socket stays connected to its earlier destination (if any), but
                // that verdict is not this call's: the record is emptied rather than
                // left in force. Only an existing record is touched.
                // SAFETY: the helper reads the socket from the context; NULL when none.
                let slot = unsafe { PC_SOCKETS.get_ptr_mut(ctx) };
                if !slot.is_null() {
                    state.value = FlowValue::denied(reason, cfg.epoch);
                    state.value.verdict = VERDICT_NONE;
                    // SAFETY: non-null socket storage of the right type.
                    unsafe { *slot = state };
                }
                REFUSE
            } else {
                state.value = FlowValue::denied(reason, cfg.epoch);
                record(ctx, &mut state);
                ALLOW
            }
        }
    }
}

/// Records the verdict on the socket. A second connect() on the same socket (UDP may
/// re-connect) overwrites it: the socket's flow is now the new one.
#[inline(always)]
fn record(ctx: &SockAddrContext, state: &mut SockState) {
    // SAFETY: the helper reads the socket from the context and returns NULL on failure.
    let slot = unsafe { PC_SOCKETS.get_or_insert_ptr_mut(ctx, Some(state)) };
    if slot.is_null() {
        count_stat(stats::LAYER_CGROUP, stats::SOCKET_STORAGE_FULL, 1, 0);
        return;
    }
    // SAFETY: non-null socket storage of the right type, owned by this socket.
    unsafe { *slot = *state };
}
