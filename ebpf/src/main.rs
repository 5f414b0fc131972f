//! portcullis' kernel programs.
//!
//! - [`connect`]: `connect4`/`connect6` decide a flow this host opens when the
//!   application calls connect(), refuse it with EPERM in enforce mode, and record the
//!   verdict on the socket.
//! - [`skb`]: cgroup_skb `ingress`/`egress` judge every packet of the enforced cgroups:
//!   by the socket's record when it has one, else by the policy and the flow tables.
//! - [`packet`]: bounds-checked header parsing.
//! - [`related`]: whether an ICMP error or echo reply belongs to a flow this host has.
//! - [`account`]: counters, the denied-port table and rate-limited deny events.
//! - [`evidence`]: per-flow evidence of would-denied flows, for the report's classes.
//! - [`learn`]: addresses of listed host names, learned from trusted resolvers' DNS
//!   answers in ingress.
//! - [`kernel`]: what the running kernel offers, as the loader found it.
//! - [`maps`]: the maps, with names and sizes from `portcullis-common`.
//! - [`noop`]: empty baseline programs for the benchmark only; never attached.
//!
//! The policy lookup itself is `portcullis_common::policy::decide`, shared with the agent.
#![no_std]
#![no_main]

mod account;
mod connect;
mod evidence;
mod kernel;
mod learn;
mod maps;
mod noop;
mod packet;
mod related;
mod skb;
mod xdp;
mod xdp_parse;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this: there is no unwinding in
    // eBPF, so a panic path that survives optimisation fails the load, not a packet.
    loop {}
}

/// GPL-compatible: needed for the ring buffer and socket-storage helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
