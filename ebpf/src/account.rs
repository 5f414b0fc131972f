//! Counting and reporting: per-rule counters, global counters, the denied-port table and
//! rate-limited deny events. Nothing here decides anything.

use aya_ebpf::bindings::__sk_buff;
use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, generated::bpf_skb_cgroup_id,
};
use portcullis_common::{
    config::{Config, MODE_ENFORCE},
    stats::{self, Counter, DeniedKey},
};

use portcullis_common::maps::MAX_RULES;

use crate::maps::{PC_DENIED, PC_DENIED_HOT, PC_EVENTS, PC_RATE, PC_RULES, PC_STATS};

/// Adds one packet (or `segments` wire packets of a GSO buffer) of `bytes` to a counter.
#[inline(always)]
fn add(counter: Option<*mut Counter>, segments: u32, bytes: u32) {
    if let Some(c) = counter {
        // SAFETY: a per-CPU array slot: valid for the program's run and touched by no
        // other CPU.
        unsafe {
            (*c).packets += segments as u64;
            (*c).bytes += bytes as u64;
        }
    }
}

/// Counts allowed traffic against its rule, in a layer's counters (`stats::LAYER_*`).
#[inline(always)]
pub fn count_rule(layer: u32, rule: u16, segments: u32, bytes: u32) {
    add(
        PC_RULES.get_ptr_mut(layer * MAX_RULES + rule as u32),
        segments,
        bytes,
    );
}

/// Counts traffic in one of a layer's global counters (`stats::*`).
#[inline(always)]
pub fn count_stat(layer: u32, index: u32, segments: u32, bytes: u32) {
    add(
        PC_STATS.get_ptr_mut(layer * stats::STATS_LEN + index),
        segments,
        bytes,
    );
}

/// The counter layer of a hook.
#[inline(always)]
fn layer_of(hook: u8) -> u32 {
    if hook == portcullis_common::event::hook::XDP {
        stats::LAYER_XDP
    } else {
        stats::LAYER_CGROUP
    }
}

/// What a denied packet or call was.
pub struct Denied {
    pub direction: u8,
    pub reason: u32,
    pub protocol: u8,
    pub local: [u8; 16],
    pub remote: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
    pub hook: u8,
    /// cgroup v2 id of the calling task (connect); 0 when `skb` names it or none is known.
    pub cgroup_id: u64,
    /// The packet whose socket's cgroup an event names (cgroup_skb), else NULL. Asked
    /// (`bpf_skb_cgroup_id`) only for an event actually sent: a helper call saved on
    /// every rate-limited deny.
    pub skb: *mut __sk_buff,
}

impl Denied {
    /// A packet whose headers could not be parsed: nothing known but where it was seen.
    #[inline(always)]
    pub fn malformed(direction: u8, hook: u8) -> Self {
        Denied {
            direction,
            reason: stats::reason::MALFORMED,
            protocol: 0,
            local: [0; 16],
            remote: [0; 16],
            local_port: 0,
            remote_port: 0,
            hook,
            cgroup_id: 0,
            skb: core::ptr::null_mut(),
        }
    }
}

/// Accounts a deny (or, in audit mode, a would-deny) and returns whether to drop.
/// `event` is false for packets of a flow whose deny was already reported at connect().
#[inline(always)]
pub fn deny(cfg: &Config, d: &Denied, segments: u32, bytes: u32, event: bool) -> bool {
    let drop = cfg.mode == MODE_ENFORCE;
    let layer = layer_of(d.hook);
    count_stat(
        layer,
        stats::deny_index(!drop, d.direction, d.reason),
        segments,
        bytes,
    );
    let key = DeniedKey {
        direction: d.direction,
        protocol: d.protocol,
        port: if d.direction == portcullis_common::policy::DIR_IN {
            d.local_port
        } else {
            d.remote_port
        },
        layer: layer as u8,
        _pad: [0; 3],
    };
    count_denied_port(key, segments, bytes);
    if event {
        emit(cfg, d, drop, 0, [0; 16]);
    }
    drop
}

/// Like [`deny`] for connect(), where the process is known.
#[inline(always)]
pub fn deny_connect(cfg: &Config, d: &Denied) -> bool {
    let drop = cfg.mode == MODE_ENFORCE;
    // In audit mode the flow goes ahead and each of its packets is counted as a
    // would-deny by the skb programs; counting the call too would count it twice.
    if drop {
        count_stat(
            stats::LAYER_CGROUP,
            stats::deny_index(false, d.direction, d.reason),
            1,
            0,
        );
        let key = DeniedKey {
            direction: d.direction,
            protocol: d.protocol,
            port: d.remote_port,
            layer: stats::LAYER_CGROUP as u8,
            _pad: [0; 3],
        };
        count_denied_port(key, 1, 0);
    }
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    emit(cfg, d, drop, pid, comm);
    drop
}

/// Adds to the denied-port count of `key`: in place in its per-CPU cache slot
/// (`PC_DENIED_HOT`) when the slot holds that key, which is every packet but the first of
/// a flood or of a port scanned twice. A slot holding another key moves its counts to the
/// denied-port table first, so each packet is counted once, in the slot or in the table.
#[inline(always)]
fn count_denied_port(key: DeniedKey, segments: u32, bytes: u32) {
    let Some(slot) = PC_DENIED_HOT.get_ptr_mut(stats::denied_slot(&key)) else {
        // A slot of a per-CPU array within its size always exists; for the verifier.
        table_add(key, segments as u64, bytes as u64);
        return;
    };
    // SAFETY: per-CPU array slot, see `add`.
    let slot = unsafe { &mut *slot };
    if slot.count.packets != 0 && slot.key.bits() != key.bits() {
        let (old, count) = (slot.key, slot.count);
        table_add(old, count.packets, count.bytes);
        slot.count = Counter::default();
    }
    slot.key = key;
    slot.count.packets += segments as u64;
    slot.count.bytes += bytes as u64;
}

/// Adds to the denied-port table (an LRU map: the least recently denied ports fall out
/// when it is full, so it stays bounded under a scan).
#[inline(never)]
fn table_add(key: DeniedKey, packets: u64, bytes: u64) {
    match PC_DENIED.get_ptr_mut(key) {
        Some(c) => {
            // SAFETY: a per-CPU hash value of this CPU, valid for the program's run.
            unsafe {
                (*c).packets += packets;
                (*c).bytes += bytes;
            }
        }
        None => {
            let _ = PC_DENIED.insert(key, Counter { packets, bytes }, 0);
        }
    }
}

/// Puts a deny event on the ring buffer if the per-CPU token bucket allows it.
#[inline(always)]
fn emit(cfg: &Config, d: &Denied, dropped: bool, pid: u32, comm: [u8; 16]) {
    let layer = layer_of(d.hook);
    // The bucket runs on the coarse clock where the kernel has one: a rate a second
    // needs no better. Only a sent event reads the precise time it carries.
    if !take_token(cfg.events_per_sec, crate::kernel::coarse_ns()) {
        count_stat(layer, stats::EVENTS_RATE_LIMITED, 1, 0);
        return;
    }
    // SAFETY: as above.
    let now = unsafe { bpf_ktime_get_ns() };
    // Built in place in the ring buffer: no copy of the event on the stack (the deny
    // path's frame then leaves room for `evidence::note`).
    let Some(mut entry) = PC_EVENTS.reserve(0) else {
        count_stat(layer, stats::EVENTS_RING_FULL, 1, 0);
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` points to a reserved, writable ring-buffer record of this type; each
    // field is written once, in place (a struct literal would be built on the stack).
    unsafe {
        (*e).time_ns = now;
        (*e).cgroup_id = if d.skb.is_null() {
            d.cgroup_id
        } else {
            bpf_skb_cgroup_id(d.skb)
        };
        (*e).pid = pid;
        (*e)._pad0 = 0;
        (*e).comm = comm;
        (*e).local = d.local;
        (*e).remote = d.remote;
        (*e).local_port = d.local_port;
        (*e).remote_port = d.remote_port;
        (*e).protocol = d.protocol;
        (*e).direction = d.direction;
        (*e).reason = d.reason as u8;
        (*e).hook = d.hook;
        (*e).dropped = dropped as u8;
        (*e)._pad1 = [0; 7];
    }
    entry.submit(0);
    count_stat(layer, stats::EVENTS_SENT, 1, 0);
}

/// Token bucket, per CPU: `rate` tokens a second, at most `rate` banked.
/// `PC_RATE[0]` holds the tokens left (`packets`) and the last refill time (`bytes`).
#[inline(always)]
fn take_token(rate: u32, now: u64) -> bool {
    if rate == 0 {
        return false;
    }
    let Some(b) = PC_RATE.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU array slot, see `add`.
    let b = unsafe { &mut *b };
    let mut elapsed = now.wrapping_sub(b.bytes);
    if elapsed > 1_000_000_000 {
        elapsed = 1_000_000_000;
    }
    // The coarse clock moves once a tick: most calls see no time pass and skip the division.
    let refill = if elapsed == 0 {
        0
    } else {
        elapsed * rate as u64 / 1_000_000_000
    };
    if refill > 0 {
        b.packets = if b.packets + refill > rate as u64 {
            rate as u64
        } else {
            b.packets + refill
        };
        b.bytes = now;
    }
    if b.packets == 0 {
        return false;
    }
    b.packets -= 1;
    true
}
