//! Per-flow evidence of would-denied traffic (audit mode), for `portcullis report`'s
//! breakage / exposure classes: one per-CPU LRU entry per flow, updated on the deny path
//! only (one lookup, an insert for a new flow). See `portcullis_common::evidence`.

use aya_ebpf::helpers::{bpf_ktime_get_ns, generated::bpf_skb_load_bytes};
use portcullis_common::{
    event::hook,
    evidence::FlowEvidence,
    flow::FlowKey,
    policy::{IPPROTO_TCP, IPPROTO_UDP},
};

use crate::{account::Denied, maps::PC_AUDIT_FLOWS};

/// UDP header length.
const UDP_HEADER: u32 = 8;

/// Transport payload bytes of a packet of `bytes` bytes (IP header included) whose
/// transport header starts at `l4`. A GSO buffer carries its headers once, so this is
/// the payload of all its segments. 0 when the TCP header cannot be read.
#[inline(always)]
pub fn payload(skb: *mut aya_ebpf::bindings::__sk_buff, l4: u16, protocol: u8, bytes: u32) -> u32 {
    let header = match protocol {
        IPPROTO_UDP => UDP_HEADER,
        IPPROTO_TCP => {
            let mut offset: u8 = 0;
            // SAFETY: the helper bounds-checks the read against the packet and writes
            // one byte into `offset`.
            let rc = unsafe {
                bpf_skb_load_bytes(
                    skb as *const _,
                    u32::from(l4) + 12,
                    core::ptr::from_mut(&mut offset).cast(),
                    1,
                )
            };
            if rc != 0 {
                return 0;
            }
            u32::from(offset >> 4) * 4
        }
        _ => return 0,
    };
    bytes.saturating_sub(u32::from(l4) + header)
}

/// Adds a would-denied packet (`segments` wire packets, `payload` transport bytes, TCP
/// `flags`) to its flow's evidence. Only the cgroup hooks call it: they see both
/// directions of a flow, XDP only its inbound half (and the same packets again).
#[inline(never)]
pub fn note(d: &Denied, segments: u32, flags: u8, payload: u32) {
    if d.protocol != IPPROTO_TCP && d.protocol != IPPROTO_UDP {
        return;
    }
    let key = FlowKey {
        local: d.local,
        remote: d.remote,
        local_port: d.local_port,
        remote_port: d.remote_port,
        protocol: d.protocol,
        _pad: [0; 3],
    };
    let received = d.hook == hook::INGRESS;
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(e) = PC_AUDIT_FLOWS.get_ptr_mut(&key) else {
        let mut e = FlowEvidence {
            first_ns: now,
            last_ns: now,
            direction: d.direction,
            reason: d.reason as u8,
            ..FlowEvidence::default()
        };
        add(&mut e, received, segments, flags, payload);
        let _ = PC_AUDIT_FLOWS.insert(&key, e, 0);
        return;
    };
    // SAFETY: this CPU's slot of a per-CPU entry, valid for the program's run.
    let e = unsafe { &mut *e };
    if e.first_ns == 0 {
        // The entry exists, another CPU made it: this CPU's slot starts now.
        e.first_ns = now;
        e.direction = d.direction;
        e.reason = d.reason as u8;
    }
    e.last_ns = now;
    add(e, received, segments, flags, payload);
}

#[inline(always)]
fn add(e: &mut FlowEvidence, received: bool, segments: u32, flags: u8, payload: u32) {
    if received {
        e.packets_in += u64::from(segments);
        e.payload_in += u64::from(payload);
        e.flags_in |= flags;
    } else {
        e.packets_out += u64::from(segments);
        e.payload_out += u64::from(payload);
        e.flags_out |= flags;
    }
}
