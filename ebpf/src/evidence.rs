//! Per-flow evidence of would-denied traffic (audit mode), for `portcullis report`'s
//! breakage / exposure classes: one per-CPU LRU entry per flow, updated on the deny path
//! only (one lookup, an insert for a new flow). See `portcullis_common::evidence`.

use aya_ebpf::helpers::{bpf_ktime_get_ns, generated::bpf_skb_load_bytes};
use portcullis_common::{
    evidence::FlowEvidence,
    flow::FlowKey,
    policy::{IPPROTO_TCP, IPPROTO_UDP},
};

use crate::maps::PC_AUDIT_FLOWS;

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

/// One would-denied packet, as its flow's evidence needs it.
pub struct Sample {
    /// Received (ingress), else sent.
    pub received: bool,
    /// `policy::DIR_*` of the flow.
    pub direction: u8,
    /// `stats::reason::*`.
    pub reason: u8,
    /// TCP flags (0 for UDP).
    pub flags: u8,
    /// Wire packets (a GSO buffer counts its segments).
    pub segments: u32,
    /// Transport payload bytes ([`payload`]).
    pub payload: u32,
}

/// Adds a would-denied packet to its flow's evidence. Only the cgroup programs call it:
/// they see both directions of a flow, XDP only its inbound half (and the same packets
/// again).
#[inline(always)]
pub fn note(key: &FlowKey, s: &Sample) {
    if key.protocol != IPPROTO_TCP && key.protocol != IPPROTO_UDP {
        return;
    }
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let Some(e) = PC_AUDIT_FLOWS.get_ptr_mut(key) else {
        let mut e = FlowEvidence {
            first_ns: now,
            last_ns: now,
            direction: s.direction,
            reason: s.reason,
            ..FlowEvidence::default()
        };
        add(&mut e, s);
        let _ = PC_AUDIT_FLOWS.insert(key, e, 0);
        return;
    };
    // SAFETY: this CPU's slot of a per-CPU entry, valid for the program's run.
    let e = unsafe { &mut *e };
    if e.first_ns == 0 {
        // The entry exists, another CPU made it: this CPU's slot starts now.
        e.first_ns = now;
        e.direction = s.direction;
        e.reason = s.reason;
    }
    e.last_ns = now;
    add(e, s);
}

#[inline(always)]
fn add(e: &mut FlowEvidence, s: &Sample) {
    if s.received {
        e.packets_in += u64::from(s.segments);
        e.payload_in += u64::from(s.payload);
        e.flags_in |= s.flags;
    } else {
        e.packets_out += u64::from(s.segments);
        e.payload_out += u64::from(s.payload);
        e.flags_out |= s.flags;
    }
}
