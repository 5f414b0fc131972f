//! `portcullis debug verifier`: every program of the embedded object verified on its
//! own, with the agent's loader settings, for the kernel matrix's figures.

use anyhow::Context as _;
use portcullis_common::maps::programs;

use super::{
    loader::{CGROUP_PROGRAMS, OBJECT, load_program, object_loader},
    probe::kernel_features,
};

/// What the verifier made of one program of the embedded object (see [`verify_each`]).
pub struct Verified {
    /// The program's name.
    pub name: &'static str,
    /// Instructions the verifier processed: the kernel's `verified_insns` (Linux 5.16+),
    /// or for a refused program the "processed N insns" line of its log; `None` when an
    /// older kernel accepted the program (it reports no count for a success).
    pub insns_processed: Option<u64>,
    /// Wall time of the BPF_PROG_LOAD call: almost all of it is verification.
    pub load: std::time::Duration,
    /// The kernel's refusal, with the verifier's log, when it refused the program.
    pub error: Option<String>,
}

/// Loads every program of the embedded object, one after another (so each load time is
/// that program's alone), with the same loader settings as `Datapath::load` but into
/// maps of their own: nothing is pinned or attached, and everything is freed on return.
/// A refusal is recorded and the next program still loaded, so one run gives the whole
/// picture of a kernel. For `portcullis debug verifier` (the kernel matrix's figures).
pub fn verify_each() -> anyhow::Result<Vec<Verified>> {
    let features = kernel_features();
    let mut ebpf = object_loader(&features)
        .load(OBJECT)
        .context("loading the eBPF object (maps only, nothing pinned)")?;
    let mut out = Vec::new();
    for name in CGROUP_PROGRAMS
        .iter()
        .map(|(name, _)| *name)
        .chain([programs::XDP])
    {
        let prog = ebpf
            .program_mut(name)
            .with_context(|| format!("the eBPF object has no program {name:?}"))?;
        let started = std::time::Instant::now();
        let result = load_program(name, prog);
        let load = started.elapsed();
        let error = result.err().map(|e| format!("{e:#}"));
        let insns_processed = prog
            .info()
            .ok()
            .and_then(|i| i.verified_instruction_count())
            .map(u64::from)
            .or_else(|| error.as_deref().and_then(processed_insns));
        out.push(Verified {
            name,
            insns_processed,
            load,
            error,
        });
    }
    Ok(out)
}

/// The count of the verifier log's last "processed N insns" line.
fn processed_insns(log: &str) -> Option<u64> {
    let at = log.rfind("processed ")? + "processed ".len();
    let rest = &log[at..];
    rest.split_once(" insns")?.0.trim().parse().ok()
}

#[cfg(test)]
mod verify_tests {
    #[test]
    fn reads_the_processed_count_of_a_verifier_log() {
        let log = "R4 invalid mem access 'scalar'\nprocessed 312045 insns (limit 1000000) max_states_per_insn 4";
        assert_eq!(super::processed_insns(log), Some(312_045));
        assert_eq!(super::processed_insns("no count here"), None);
    }
}
