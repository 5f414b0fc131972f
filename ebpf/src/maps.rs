//! The maps. Each static's name is the map's name in the kernel and must equal the
//! constant in `portcullis_common::maps` (the agent checks this when it loads the object).

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    btf_maps::lpm_trie::Key,
    btf_maps::{
        Array, HashMap, LpmTrie, LruHashMap, LruPerCpuHashMap, PerCpuArray, RingBuf, SkStorage,
    },
    helpers::generated::bpf_ktime_get_boot_ns,
    macros::btf_map,
};
use portcullis_common::{
    config::Config,
    dns::{DNS_BUF, Parser},
    event::DenyEvent,
    evidence::FlowEvidence,
    flow::{FLOW_PORT_BYTES, FlowKey, FlowValue, SockState, flow_port_slot},
    maps::{
        AUDIT_FLOWS_MAX, DENIED_HOT_SLOTS, DENIED_MAX, EVENTS_BYTES, FLOW_PORTS_SLOTS, FLOWS_MAX,
        LEARNED_MAX, MAX_RULES, NAMES_MAX, PEERS_MAX, QUESTIONS_MAX, RESOLVERS_MAX, SLOT_NAMES_MAX,
    },
    names::{
        self, Learned, LearnedKey, NameKey, NameTables, NameValue, PatternWalk, SlotKey, SlotNames,
    },
    policy::{PORT_TABLE_LEN, PeerAddr, PolicyTables},
    question::{QUERY_BUF, Question, QuestionKey},
    siphash::HashKey,
    stats::{self, Counter, DeniedKey, DeniedSlot, LAYERS, STATS_LEN},
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

/// Which local ports ever had a flow-table entry (`portcullis_common::maps::FLOW_PORTS`).
#[btf_map]
pub static PC_FLOW_PORTS: Array<[u8; FLOW_PORT_BYTES], { FLOW_PORTS_SLOTS as usize }> =
    Array::new();

/// Marks `key`'s local port as one with flows, before the flow is inserted (a reply can
/// only arrive after the packet that inserted it left, so it finds the mark). A plain
/// byte store: concurrent marks of neighbouring ports cannot undo each other, and
/// 5.10 has no atomic OR.
#[inline(always)]
pub fn mark_flow_port(key: &FlowKey) {
    let (index, byte) = flow_port_slot(key.protocol, key.local_port);
    if let Some(marks) = PC_FLOW_PORTS.get_ptr_mut(index) {
        // SAFETY: an array value stays valid for the program's run; `byte` < 64.
        unsafe {
            let b = &mut (*marks)[byte];
            // Written only when unset: the line is not dirtied on every insertion.
            if *b == 0 {
                *b = 1;
            }
        }
    }
}

/// Whether a flow table may hold a flow with this local port: false only when no flow
/// with it was ever inserted, so the lookups cannot find one.
#[inline(always)]
pub fn may_have_flow(protocol: u8, port: u16) -> bool {
    let (index, byte) = flow_port_slot(protocol, port);
    PC_FLOW_PORTS
        .get(index)
        .is_none_or(|marks| marks[byte] != 0)
}

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

#[btf_map]
pub static PC_NAMES: HashMap<NameKey, NameValue, { NAMES_MAX as usize }> = HashMap::new();

#[btf_map]
pub static PC_SLOT_NAMES: HashMap<SlotKey, SlotNames, { SLOT_NAMES_MAX as usize }> = HashMap::new();

#[btf_map]
pub static PC_LEARNED: LruHashMap<LearnedKey, Learned, { LEARNED_MAX as usize }> =
    LruHashMap::new();

#[btf_map]
pub static PC_NAME_ADDRS: HashMap<NameKey, u32, { NAMES_MAX as usize }> = HashMap::new();

#[btf_map]
pub static PC_RESOLVERS: LpmTrie<[u8; 16], u32, { RESOLVERS_MAX as usize }> = LpmTrie::new();

#[btf_map]
pub static PC_NAME_KEY: Array<HashKey, 1> = Array::new();

#[btf_map]
pub static PC_DNS_STATS: PerCpuArray<u64, { stats::dns::LEN as usize }> = PerCpuArray::new();

/// The DNS learner's working memory: far larger than the 512-byte stack, and shared by
/// the global functions of `learn` (which take no pointers: 5.10 allows only scalars).
pub struct DnsScratch {
    /// The message, copied out of the packet.
    pub buf: [u8; DNS_BUF],
    /// The parser's state and results.
    pub parser: Parser,
    /// A key of `PC_NAME_ADDRS` being looked up (here: not on the stack).
    pub name_key: NameKey,
    /// The walk over the question's patterns.
    pub walk: PatternWalk,
    /// Whether a pattern of the question is listed.
    pub listed: bool,
    /// The live policy generation.
    pub generation: u32,
    /// The policy's patterns the answer's question matches (expiry unset).
    pub patterns: Learned,
    /// A learned address's entry being merged.
    pub entry: Learned,
    /// Its key.
    pub key: LearnedKey,
    /// The key of the sender's lookup in `PC_RESOLVERS`.
    pub resolver: Key<[u8; 16]>,
    /// The question the message must answer (`PC_DNS_QUESTION`'s key).
    pub question: QuestionKey,
    /// TCP: the segment's sequence number.
    pub seq: u32,
    /// Bytes of the message copied into `buf`.
    pub loaded: u32,
    /// `bpf_ktime_get_boot_ns` of the answer.
    pub now: u64,
    /// `dns_grace` in ns.
    pub grace: u64,
    /// Addresses stored, entries inserted, valid patterns pushed out.
    pub stored: u64,
    pub inserted: u64,
    pub evicted: u64,
    /// New addresses refused for a pattern at its limit.
    pub over_limit: u64,
}

#[btf_map]
pub static PC_DNS_SCRATCH: PerCpuArray<DnsScratch, 1> = PerCpuArray::new();

#[btf_map]
pub static PC_DNS_QUESTION: LruHashMap<QuestionKey, Question, { QUESTIONS_MAX as usize }> =
    LruHashMap::new();

/// The egress program's working memory for recording a question: its own, since an
/// ingress run (softirq) can interrupt an egress run on the same CPU.
pub struct QueryScratch {
    /// The query, copied out of the packet.
    pub buf: [u8; QUERY_BUF],
    /// The record's key and value, built here and inserted from here.
    pub key: QuestionKey,
    pub question: Question,
    /// The key of the resolver's lookup in `PC_RESOLVERS`.
    pub resolver: Key<[u8; 16]>,
}

#[btf_map]
pub static PC_DNS_QSCRATCH: PerCpuArray<QueryScratch, 1> = PerCpuArray::new();

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

    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "the key is looked up by reference: no second copy on a tight stack"
    )]
    #[inline(always)]
    fn learned_rule(&self, generation: u32, slot: u16, peer: &[u8; 16]) -> u16 {
        let key = LearnedKey { addr: *peer };
        match PC_LEARNED.get_ptr(&key) {
            None => 0,
            Some(learned) => {
                // SAFETY: an LRU value stays valid for the program's run (RCU); a
                // concurrent update at worst gives the old or the new expiry.
                let learned = unsafe { &*learned };
                // SAFETY: a plain helper call.
                let now = unsafe { bpf_ktime_get_boot_ns() };
                names::learned_rule(self, generation, slot, learned, now)
            }
        }
    }
}

impl NameTables for KernelTables {
    #[inline(always)]
    fn name_groups(&self, key: &NameKey) -> u64 {
        // SAFETY: a hash map value stays valid for the program's run (RCU).
        PC_NAMES.get_ptr(key).map_or(0, |v| unsafe { (*v).groups })
    }

    #[inline(always)]
    fn name_value(&self, key: &NameKey) -> Option<&NameValue> {
        // SAFETY: as above.
        PC_NAMES.get_ptr(key).map(|v| unsafe { &*v })
    }

    #[inline(always)]
    fn slot_names(&self, key: &SlotKey) -> Option<&SlotNames> {
        // SAFETY: as above; the agent writes a slot's entry before the generation that
        // refers to it goes live and removes it only after it went idle.
        PC_SLOT_NAMES.get_ptr(key).map(|v| unsafe { &*v })
    }
}
