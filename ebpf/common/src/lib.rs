//! The contract between portcullis' eBPF programs and its agent.
//!
//! Everything both sides must agree on lives here and only here: map names and sizes
//! ([`maps`]), the byte layout of every key and value ([`policy`], [`names`], [`flow`],
//! [`stats`], [`event`], [`evidence`], [`config`]), the DNS answer parser the datapath
//! learns names with ([`dns`]), the keyed hash names are found by ([`siphash`]), the questions an answer must match ([`question`]) and the verdict a new flow gets ([`policy::decide`]). The kernel
//! programs call `decide` with lookups in the real maps; the agent's `explain` calls the
//! same function with lookups in its userspace image of those maps, so the two cannot
//! drift apart.
//!
//! Layout rules: every type is `#[repr(C)]` with explicit padding fields, so no key or
//! value has hidden bytes (the kernel hashes and compares keys byte by byte). Addresses
//! are always 16 bytes in network order; IPv4 is stored IPv4-mapped (`::ffff:a.b.c.d`),
//! so one table serves IPv4, IPv6 and dual-stack sockets alike. Ports are host order.
#![no_std]

pub mod config;
pub mod dns;
pub mod event;
pub mod evidence;
pub mod flow;
pub mod kernel;
pub mod maps;
pub mod names;
pub mod policy;
pub mod question;
pub mod siphash;
pub mod stats;

/// Implements `aya::Pod` for the listed plain-old-data types on the userspace side.
#[cfg(feature = "user")]
macro_rules! pod {
    ($($t:ty),* $(,)?) => {
        $(
            // SAFETY: the type is `#[repr(C)]`, `Copy`, made only of integers and byte
            // arrays, with every padding byte spelled out as a field.
            unsafe impl aya::Pod for $t {}
        )*
    };
}

#[cfg(feature = "user")]
pod!(
    config::Config,
    event::DenyEvent,
    evidence::FlowEvidence,
    flow::FlowKey,
    flow::FragKey,
    flow::FlowValue,
    flow::SockState,
    names::Learned,
    names::LearnedKey,
    names::NameKey,
    names::NameValue,
    names::SlotKey,
    names::SlotNames,
    siphash::HashKey,
    policy::PeerAddr,
    question::Question,
    question::QuestionKey,
    stats::Counter,
    stats::DeniedKey,
    stats::DeniedSlot,
);
