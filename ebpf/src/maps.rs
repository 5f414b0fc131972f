//! The maps. Each static's name is the map's name in the kernel and must equal the
//! constant in `portcullis_common::maps` (the agent checks this when it loads the object).

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    btf_maps::lpm_trie::Key,
    btf_maps::{Array, LpmTrie, LruHashMap, LruPerCpuHashMap, PerCpuArray, RingBuf, SkStorage},
    macros::btf_map,
};
use portcullis_common::{
    config::Config,
    event::DenyEvent,
    evidence::FlowEvidence,
    flow::{FlowKey, FlowValue, SockState},
    maps::{
        AUDIT_FLOWS_MAX, DENIED_HOT_SLOTS, DENIED_MAX, EVENTS_BYTES, FLOWS_MAX, MAX_RULES,
        PEERS_MAX,
    },
    policy::{PORT_TABLE_LEN, PeerAddr, PolicyTables},
    stats::{Counter, DeniedKey, DeniedSlot, LAYERS, STATS_LEN},
};

/// Mappable (`BPF_F_MMAPABLE`): the agent writes a generation as plain memory, a
/// reload's quarter of a million entries in well under a millisecond. The programs'
/// lookup is the same.
#[btf_map]
pub static PC_PORTS: Array<u32, { PORT_TABLE_LEN as usize }, { BPF_F_MMAPABLE as usize }> =
    Array::new();

#[btf_map]
pub static PC_PEERS: LpmTrie<PeerAddr, u32, { PEERS_MAX as usize }> = LpmTrie::new();

#[btf_map]
pub static PC_RULES: PerCpuArray<Counter, { (MAX_RULES * LAYERS) as usize }> = PerCpuArray::new();

#[btf_map]
pub static PC_STATS: PerCpuArray<Counter, { (STATS_LEN * LAYERS) as usize }> = PerCpuArray::new();

#[btf_map]
pub static PC_DENIED: LruPerCpuHashMap<DeniedKey, Counter, { DENIED_MAX as usize }> =
    LruPerCpuHashMap::new();

#[btf_map]
pub static PC_DENIED_HOT: PerCpuArray<DeniedSlot, { DENIED_HOT_SLOTS as usize }> =
    PerCpuArray::new();

#[btf_map]
pub static PC_FLOWS_OUT: LruHashMap<FlowKey, FlowValue, { FLOWS_MAX as usize }> = LruHashMap::new();

#[btf_map]
pub static PC_FLOWS_IN: LruHashMap<FlowKey, FlowValue, { FLOWS_MAX as usize }> = LruHashMap::new();

#[btf_map]
pub static PC_AUDIT_FLOWS: LruPerCpuHashMap<FlowKey, FlowEvidence, { AUDIT_FLOWS_MAX as usize }> =
    LruPerCpuHashMap::new();

#[btf_map]
pub static PC_SOCKETS: SkStorage<SockState> = SkStorage::new();

#[btf_map]
pub static PC_CONFIG: Array<Config, 1> = Array::new();

#[btf_map]
pub static PC_EVENTS: RingBuf<DenyEvent, { EVENTS_BYTES as usize }> = RingBuf::new();

#[btf_map]
pub static PC_RATE: PerCpuArray<Counter, 1> = PerCpuArray::new();

/// The live configuration, in the map (no copy on the program's stack). The entry of a
/// one-entry array always exists; `None` is for the verifier only.
#[inline(always)]
pub fn config_ref() -> Option<&'static Config> {
    PC_CONFIG.get(0)
}

/// The live configuration. A zeroed (never written) entry means audit mode, generation 0.
#[inline(always)]
pub fn config() -> Config {
    match PC_CONFIG.get(0) {
        Some(c) => *c,
        None => Config::default(),
    }
}

/// The kernel maps seen through the trait `decide` is written against.
pub struct KernelTables;

impl PolicyTables for KernelTables {
    #[inline(always)]
    fn port_entry(&self, index: u32) -> u32 {
        // Through `black_box`: both outcomes of the lookup then write one stack slot.
        // Without it LLVM may leave the register of the absent case unset, and read it
        // on a path that never uses it, which the verifier rejects (`!read_ok`).
        core::hint::black_box(PC_PORTS.get(index).copied().unwrap_or(0))
    }

    #[inline(always)]
    fn peer_rule(&self, key: &PeerAddr) -> u16 {
        let key = Key::new(128 + portcullis_common::policy::PEER_SET_BITS, *key);
        PC_PEERS.get(&key).map_or(0, |rule| *rule as u16)
    }
}
