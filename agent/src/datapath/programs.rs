//! Run statistics of the attached eBPF programs, read from the kernel's program info
//! (`bpf_prog_info.run_cnt` / `run_time_ns`) and returned as plain data, so the
//! metrics in `observe` need no aya.
//!
//! The kernel only counts runs while `kernel.bpf_stats_enabled = 1` (it costs a little
//! per run), so without it the counts stay 0; [`bpf_stats_enabled`] says which it is.

use std::collections::{BTreeMap, BTreeSet};

use aya::programs::{
    links::{FdLink, PinnedLink},
    loaded_programs,
};

use crate::datapath::{attach::pinned_links, paths::PathArgs};

/// Where the kernel says whether it counts program runs.
const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Run counts of one program (summed over the program ids attached under that name).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProgramRuns {
    /// Program name (`pc_ingress`, ...).
    pub name: String,
    /// `bpf_prog_info.run_cnt`.
    pub runs: u64,
    /// `bpf_prog_info.run_time_ns`.
    pub run_ns: u64,
}

/// Run counts of the programs behind the pinned links, by program name (sorted).
/// Links or programs that cannot be read (a racing detach) are left out.
pub fn program_runs(paths: &PathArgs) -> Vec<ProgramRuns> {
    let ids: BTreeSet<u32> = pinned_links(paths)
        .iter()
        .filter_map(|p| PinnedLink::from_pin(p).ok())
        .filter_map(|l| FdLink::from(l).info().ok())
        .map(|i| i.program_id())
        .collect();
    let mut by_name: BTreeMap<String, ProgramRuns> = BTreeMap::new();
    for info in loaded_programs()
        .filter_map(Result::ok)
        .filter(|i| ids.contains(&i.id()))
    {
        let name = info.name_as_str().unwrap_or("unknown").to_owned();
        let e = by_name.entry(name.clone()).or_insert_with(|| ProgramRuns {
            name,
            ..ProgramRuns::default()
        });
        e.runs += info.run_count();
        e.run_ns += u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX);
    }
    by_name.into_values().collect()
}

/// `kernel.bpf_stats_enabled`, if readable.
pub fn bpf_stats_enabled() -> Option<bool> {
    std::fs::read_to_string(BPF_STATS_SYSCTL)
        .ok()
        .map(|s| s.trim() != "0")
}
