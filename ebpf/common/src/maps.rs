//! Map names and sizes, used by the eBPF programs (as the statics' names and const
//! generics) and by the agent (to find and pin the maps). Kernel object names are at most
//! 15 bytes.

/// Port table: `policy::port_index` -> packed `policy::port_entry`. `Array<u32>`.
pub const PORTS: &str = "PC_PORTS";
/// Peer-set trie: `(generation, set, address)` prefixes -> rule index. `LpmTrie<PeerAddr, u32>`.
pub const PEERS: &str = "PC_PEERS";
/// Capacity of [`PEERS`] (CIDR entries across both generations).
pub const PEERS_MAX: u32 = 16 * 1024;
/// Per-rule allowed packets and bytes, indexed by `layer * MAX_RULES + rule index`
/// (`stats::LAYER_*`). `PerCpuArray<Counter>`.
pub const RULE_COUNTERS: &str = "PC_RULES";
/// Largest rule index + 1. Index 0 means "no rule" and is never counted.
pub const MAX_RULES: u32 = 4096;
/// Global counters, indexed by `layer * STATS_LEN + stats::*`. `PerCpuArray<Counter>`.
pub const STATS: &str = "PC_STATS";
/// Denied (or would-be denied) `(direction, protocol, port)` -> counter.
/// `LruPerCpuHashMap<DeniedKey, Counter>`: bounded, the least recently denied fall out.
pub const DENIED: &str = "PC_DENIED";
/// Capacity of [`DENIED`].
pub const DENIED_MAX: u32 = 4096;
/// Per-CPU cache in front of [`DENIED`]: `stats::denied_slot(key)` -> `stats::DeniedSlot`.
/// `PerCpuArray<DeniedSlot>`. A flood or scan counts in place here instead of looking
/// its key up in the hash on every packet; readers add the slots to the table.
pub const DENIED_HOT: &str = "PC_DENIED_HOT";
/// Slots of [`DENIED_HOT`] per CPU (a power of two).
pub const DENIED_HOT_SLOTS: u32 = 1024;
/// Flows this host opened (connectionless protocols and the XDP side). `LruHashMap<FlowKey, FlowValue>`.
pub const FLOWS_OUT: &str = "PC_FLOWS_OUT";
/// Flows remote peers opened. A separate map so an inbound flood can only evict inbound
/// state, never the state of flows this host opened.
pub const FLOWS_IN: &str = "PC_FLOWS_IN";
/// Capacity of each flow map.
pub const FLOWS_MAX: u32 = 64 * 1024;
/// Local ports a flow-table entry was ever written for, per protocol: byte
/// `flow::flow_port_slot(protocol, port)` is 1 from the first insertion of a flow with
/// that local port into [`FLOWS_OUT`] or [`FLOWS_IN`] and is never cleared (an evicted
/// flow leaves it set, which only costs lookups). A packet the port table denies looks
/// the flow tables up only when its port is marked. `Array<[u8; flow::FLOW_PORT_BYTES]>`.
pub const FLOW_PORTS: &str = "PC_FLOW_PORTS";
/// Entries of [`FLOW_PORTS`]: two protocols x 65536 ports / 64 bytes.
pub const FLOW_PORTS_SLOTS: u32 = 2 * 65536 / 64;
/// First fragments the XDP program allowed, so the later fragments of the same datagram
/// (which carry no ports) pass too. `LruHashMap<FragKey, FlowValue>`.
pub const FRAGS: &str = "PC_FRAGS";
/// Capacity of [`FRAGS`] (fragmented datagrams in flight).
pub const FRAGS_MAX: u32 = 8 * 1024;
/// Evidence per would-denied flow (audit mode): `FlowKey` -> `evidence::FlowEvidence`.
/// `LruPerCpuHashMap`: bounded, the least recently denied flows fall out; the agent
/// deletes the flows it has folded once they are closed or idle.
pub const AUDIT_FLOWS: &str = "PC_AUDIT_FLOWS";
/// Capacity of [`AUDIT_FLOWS`] (flows, per CPU).
pub const AUDIT_FLOWS_MAX: u32 = 16 * 1024;
/// Verdict recorded on each socket that called connect(). `SkStorage<SockState>`.
pub const SOCKETS: &str = "PC_SOCKETS";
/// The single runtime configuration entry. `Array<Config>` of length 1.
pub const CONFIG: &str = "PC_CONFIG";
/// Deny events. `RingBuf`.
pub const EVENTS: &str = "PC_EVENTS";
/// Size of [`EVENTS`] in bytes (a power of two, a multiple of the page size).
pub const EVENTS_BYTES: u32 = 256 * 1024;
/// Per-CPU token bucket that rate-limits [`EVENTS`]. `PerCpuArray<Counter>`
/// (`packets` = tokens left, `bytes` = time of the last refill in ns).
pub const EVENT_RATE: &str = "PC_RATE";

/// Name patterns of the policy (both generations): `names::NameKey` -> `names::NameValue`.
/// `HashMap`. Written by the agent with the policy, read by the ingress program when it
/// learns from an answer and by `decide` for a learned address.
pub const NAMES: &str = "PC_NAMES";
/// Capacity of [`NAMES`] (patterns across both generations).
pub const NAMES_MAX: u32 = 8 * 1024;
/// Name groups of each peer-restricted port slot: `names::SlotKey` -> `names::SlotNames`.
/// `HashMap`.
pub const SLOT_NAMES: &str = "PC_SLOT_NAMES";
/// Capacity of [`SLOT_NAMES`] (slots with names across both generations).
pub const SLOT_NAMES_MAX: u32 = 2 * 1024;
/// Addresses learned from DNS answers: `names::LearnedKey` -> `names::Learned`.
/// `LruHashMap`: the least recently used address is evicted first.
pub const LEARNED: &str = "PC_LEARNED";
/// Capacity of [`LEARNED`] (addresses in total).
pub const LEARNED_MAX: u32 = 64 * 1024;

/// Addresses each name pattern holds in [`LEARNED`]: `names::NameKey` (generation 0)
/// -> `u32`. `HashMap`. The kernel adds one for each new address it learns for a
/// pattern and refuses a new one at `names::LEARNED_PER_NAME`; the agent's sweep
/// recounts it from [`LEARNED`] (which the LRU shrinks without telling anyone).
pub const NAME_ADDRS: &str = "PC_NAME_ADDRS";

/// Trusted resolvers: address prefixes -> 1. `LpmTrie<[u8; 16], u32>` (IPv6 or
/// IPv4-mapped, prefix length in bits of the 16-byte form). Only answers from these are
/// learned from.
pub const RESOLVERS: &str = "PC_RESOLVERS";
/// Capacity of [`RESOLVERS`].
pub const RESOLVERS_MAX: u32 = 256;
/// Questions this host has in flight to trusted resolvers: `question::QuestionKey` ->
/// `question::Question`. `LruHashMap` (not pinned: a restart forgets the questions of
/// the last few seconds, whose answers then teach nothing). Written by the egress
/// program, consumed by the ingress program when their answer arrives.
pub const QUESTIONS: &str = "PC_DNS_QUESTION";
/// Capacity of [`QUESTIONS`] (questions in flight; the least recently asked fall out).
pub const QUESTIONS_MAX: u32 = 8 * 1024;
/// DNS learning counters, indexed by `stats::dns::*`. `PerCpuArray<u64>`.
pub const DNS_STATS: &str = "PC_DNS_STATS";
/// The ingress program's per-CPU DNS parser state and message buffer (not pinned: each
/// loaded object has its own; nothing outside the program reads it).
pub const DNS_SCRATCH: &str = "PC_DNS_SCRATCH";

/// The key host names are hashed under (`siphash::HashKey`): drawn at random by the agent
/// that creates the maps, kept with them (pinned) while the host runs, so a restarted
/// agent and the addresses learned before it hash alike. `Array<HashKey>` of length 1.
pub const NAME_KEY: &str = "PC_NAME_KEY";

/// Every map the object defines and pins, for pinning and for the adoption check.
pub const ALL: [&str; 22] = [
    PORTS,
    PEERS,
    RULE_COUNTERS,
    STATS,
    DENIED,
    DENIED_HOT,
    FLOWS_OUT,
    FLOWS_IN,
    FLOW_PORTS,
    FRAGS,
    SOCKETS,
    CONFIG,
    EVENTS,
    EVENT_RATE,
    AUDIT_FLOWS,
    NAMES,
    SLOT_NAMES,
    LEARNED,
    NAME_ADDRS,
    RESOLVERS,
    DNS_STATS,
    NAME_KEY,
];

/// Program names (the Rust function names in the eBPF crate).
pub mod programs {
    /// cgroup_skb ingress.
    pub const INGRESS: &str = "pc_ingress";
    /// cgroup_skb egress.
    pub const EGRESS: &str = "pc_egress";
    /// cgroup_sock_addr connect4.
    pub const CONNECT4: &str = "pc_connect4";
    /// cgroup_sock_addr connect6.
    pub const CONNECT6: &str = "pc_connect6";
    /// XDP, inbound on the interfaces named in the configuration.
    pub const XDP: &str = "pc_xdp";
}
