//! The only code that talks to the kernel, and the only module that imports aya: it
//! finds bpffs and the cgroup v2 mount ([`paths`]), loads the embedded eBPF object, pins
//! its maps and writes a map image into the idle policy generation ([`loader`]),
//! attaches cgroup programs and XDP and detaches them ([`attach`], [`xdp`]), reads and
//! resets the counters of every layer ([`counters`]), reads and deletes the per-flow
//! evidence of would-denied flows ([`evidence`]), reads the deny-event ring
//! ([`events`]) and the programs' run statistics ([`programs`]), keeps the agent's
//! state file ([`state`]), writes the host name maps and the trusted resolvers and reads
//! back what the kernel learned from DNS answers ([`names`]), probes what the running
//! kernel and host can carry ([`probe`]), and has the test-only fault points of a reload
//! ([`fault`]).

pub mod attach;
pub mod cgroup_query;
pub mod counters;
pub mod events;
pub mod evidence;
pub mod fault;
pub mod loader;
pub mod names;
pub mod paths;
pub mod probe;
pub mod programs;
pub mod state;
pub mod verify;
pub mod xdp;
