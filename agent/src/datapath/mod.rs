//! The only code that talks to the kernel, and the only module that imports aya: it
//! loads the embedded eBPF object, pins its maps and links, writes a map image into the
//! idle policy generation and flips to it ([`loader`]), attaches cgroup programs and XDP
//! and detaches them, reads and resets the counters of every layer ([`counters`]), reads
//! the deny-event ring and the programs' run statistics, and keeps the agent's state file
//! next to the pins ([`state`]).

pub mod counters;
pub mod loader;
pub mod state;
pub mod xdp;
