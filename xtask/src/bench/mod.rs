//! `cargo xtask bench`: the performance figures (cost per packet, drop rates against
//! nftables and xdp-filter, the agent's memory, startup and reload), measured side by
//! side in one run on this machine, written to `xtask/bench/` (BENCHMARKS.md, results.json,
//! ns_per_packet.svg).
//!
//! What runs, in order (one progress line per figure):
//! 1. Four real agents (`portcullis run --config`), one per policy size (10, 100, 1000
//!    generated rules, and a full 1-65535 range profile), each with its own pin and state
//!    directory, its own cgroup and its own veth for XDP, all inside two network
//!    namespaces this benchmark creates. The agents compile the generated profiles and
//!    write the maps themselves: what is measured is exactly what they installed.
//! 2. M1/M2/M3: the agents' attached programs (found through their pinned links, pinned
//!    by id with bpftool) are run with BPF_PROG_TEST_RUN (repeat 10^6) by the `prog_run`
//!    example of the root-test crate, round-robin with empty programs of the same types
//!    (`pc_noop_*`, ebpf/src/noop.rs) and with xdp-filter's program (xdp-tools) loaded on
//!    a veth of our own with the same 1000 ports: every ratio is taken inside one round.
//!    Each round runs on fresh loads of every program (the agents restarted, xdp-filter
//!    loaded again, the no-ops loaded by a new `prog_run`): where the kernel places a JIT
//!    image changes its cost by up to ~20 ns on some CPUs, so a median over rounds is
//!    a median over loads, not one draw.
//! 3. S1/S2: a 64-byte UDP flood (trafgen) from one namespace to the other, across N
//!    destination ports no rule opens: packets dropped per second by our XDP program and
//!    by nftables `netdev ingress` (a set, and a linear chain of N rules); then by our
//!    cgroup_skb ingress program and by nftables `inet input`, the same way. Each round
//!    measures the three filters back to back, switching our XDP on and off by reloading
//!    the agent.
//! 4. Startup (spawn to the "ready:" line), memory (VmRSS, PSS) idle with the full-range
//!    policy, reload latency (SIGHUP to the "reloaded:" log line).
//! 5. Names: what learning from a DNS answer costs `pc_ingress` (test_run of the query
//!    on `pc_egress`, then of its answer: trusted resolver against an untrusted sender),
//!    what the answer's match and the query's recording cost, and the memory per learned
//!    address. `--names-only` (hidden) runs just this section and writes no xtask/bench/;
//!    `--progs-only` (hidden) likewise runs just step 2 (with the agents of step 1).
//!
//! Layout: `lab` (namespaces, veths, cgroups, sites: the root tests' guards), `prog_run`
//! (M1-M3), `floods` (S1, S2), `agent` (startup, memory, reload), `names` (DNS learning), `stats` (figures,
//! results.json), `markdown` (BENCHMARKS.md), `svg` (the plot).
//!
//! Safety: nothing is attached outside what this module creates (namespaces, veths,
//! cgroups, bpffs directories, all named `pcbench`/`portcullis-bench` with our pid);
//! every one of them is a guard value removed in `Drop`, on error and panic too; agents
//! are stopped with SIGTERM (they detach on exit) and then `portcullis detach`ed.

mod agent;
mod floods;
mod lab;
mod markdown;
mod names;
mod prog_run;
mod stats;
mod svg;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use self::{
    agent::{measure_agent, start_agents},
    floods::measure_floods,
    lab::Lab,
    markdown::markdown,
    names::measure_names,
    prog_run::measure_programs,
    stats::{Machine, Results, print_summary},
    svg::svg,
};
use crate::{sh, step};

/// `cargo xtask bench` options.
pub struct Options {
    /// Also write results.json here.
    pub json: Option<PathBuf>,
    /// Fewer rounds, shorter floods, for a smoke run (not the published figures).
    pub quick: bool,
    /// Only the Names section, printed (and written to `json`), not to xtask/bench/.
    pub names_only: bool,
    /// Only M1-M3 (the agents, then BPF_PROG_TEST_RUN), printed (and written to
    /// `json`), not to xtask/bench/.
    pub progs_only: bool,
}

/// Packages only the benchmark needs: the peers it compares against and the traffic
/// generator. Installed here, not by `setup`, so a build machine does not get them.
const PACKAGES: &[&str] = &["nftables", "xdp-tools", "netsniff-ng", "ethtool"];

/// How much to measure.
pub struct Plan {
    /// Rounds of every measured figure (medians and min-max over these).
    pub rounds: usize,
    /// BPF_PROG_TEST_RUN repeat count.
    pub repeat: u32,
    /// Length of one flood measurement window.
    pub flood: Duration,
    /// Reloads per reload figure.
    pub reloads: usize,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Plan {
                rounds: 3,
                repeat: 100_000,
                flood: Duration::from_millis(400),
                reloads: 5,
            }
        } else {
            Plan {
                rounds: 7,
                repeat: 1_000_000,
                flood: Duration::from_millis(1500),
                reloads: 30,
            }
        }
    }
}

/// Generated policy sizes. `N` profile rules, each `direction = "both"`,
/// `protocol = "both"`, port 20000+i (so 2N policy rules, 4N port-table entries).
/// The full profile adds two range rules after the 1000: every port but 9 is open.
const SIZES: [(&str, usize); 4] = [("10", 10), ("100", 100), ("1000", 1000), ("full", 1000)];
/// A port no generated profile opens: the denied path.
const DENIED_PORT: u16 = 9;
/// The first generated port.
const BASE_PORT: u16 = 20000;
/// The first port the floods target (no rule opens it; in the full profile the range
/// rules would, so the full profile is not flooded).
const FLOOD_PORT: u16 = 30000;

/// The allowed port the test frames use for a size: the last generated rule's, so a
/// linear matcher would have to try every rule before it.
fn allowed_port(rules: usize) -> u16 {
    BASE_PORT + rules as u16 - 1
}

/// The end of a partial run (`--names-only`, `--progs-only`): the figures printed, and
/// written to `--json` when given; xtask/bench/ is left as published.
fn partial_run_done(
    opts: &Options,
    plan: &Plan,
    started: Instant,
    results: &Results,
) -> anyhow::Result<()> {
    if let Some(path) = &opts.json {
        let machine = Machine::probe(plan, opts.quick, started.elapsed());
        let text = serde_json::to_string_pretty(&results.json(&machine))? + "\n";
        fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    print_summary(results);
    Ok(())
}

/// Runs the whole benchmark.
pub fn run(root: &Path, opts: &Options) -> anyhow::Result<()> {
    let started = Instant::now();
    if !portcullis_tests::is_root() {
        bail!("the benchmark loads eBPF programs, creates namespaces and cgroups: run it as root");
    }
    if !opts.names_only {
        ensure_packages()?;
    }
    step("bench: building the test_run driver (tests/bench/prog_run.rs)");
    let object = root.join("target/bpfel-unknown-none/release/portcullis-ebpf");
    sh(Command::new("cargo")
        .args([
            "build",
            "--release",
            "-p",
            "portcullis-tests",
            "--example",
            "prog_run",
        ])
        .env("PORTCULLIS_EBPF_OBJECT", &object))?;
    let tools = Tools {
        prog_run: root.join("target/release/examples/prog_run"),
        object,
    };
    let plan = Plan::new(opts.quick);
    let lab = Lab::new()?;
    let mut results = Results::default();
    if opts.names_only {
        measure_names(&tools, &lab, &plan, &mut results)?;
        return partial_run_done(opts, &plan, started, &results);
    }

    step("bench: starting one agent per policy size (10, 100, 1000 rules, full range)");
    let mut agents = start_agents(&lab)?;
    for ((label, _), agent) in SIZES.iter().zip(&agents) {
        println!(
            "    {label}: {} policy rules, ready in {:.0} ms",
            agent
                .ready
                .split_whitespace()
                .find_map(|w| w.strip_prefix("rules="))
                .unwrap_or("?"),
            agent.startup.as_secs_f64() * 1e3
        );
    }

    measure_programs(&tools, &lab, &plan, &mut agents, &mut results)?;
    if opts.progs_only {
        drop(agents);
        return partial_run_done(opts, &plan, started, &results);
    }
    measure_floods(&tools, &lab, &plan, &mut agents, &mut results)?;
    let full = agents.pop().context("the full-range agent")?;
    drop(agents);
    drop(full);
    measure_agent(&lab, &plan, &mut results)?;
    measure_names(&tools, &lab, &plan, &mut results)?;

    let elapsed = started.elapsed();
    step(&format!(
        "bench: done in {:.0} s; writing xtask/bench/",
        elapsed.as_secs_f64()
    ));
    let out = root.join("xtask/bench");
    fs::create_dir_all(&out)?;
    let machine = Machine::probe(&plan, opts.quick, elapsed);
    let json = results.json(&machine);
    let text = serde_json::to_string_pretty(&json)? + "\n";
    fs::write(out.join("results.json"), &text)?;
    if let Some(path) = &opts.json {
        fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
    }
    fs::write(out.join("ns_per_packet.svg"), svg(&results))?;
    fs::write(out.join("BENCHMARKS.md"), markdown(&results, &machine))?;
    print_summary(&results);
    Ok(())
}

fn ensure_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| !crate::setup::installed(p))
        .collect();
    if missing.is_empty() {
        step("bench: nftables, xdp-tools, netsniff-ng present");
        return Ok(());
    }
    step(&format!("bench: installing {}", missing.join(" ")));
    sh(Command::new("apt-get").args(["update", "-qq"]))?;
    sh(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// What the benchmark runs besides the agent (`portcullis_tests::bin`).
struct Tools {
    /// The test_run driver, `tests/bench/prog_run.rs`.
    prog_run: PathBuf,
    /// The eBPF object `cargo xtask build` produced (for the no-op baselines).
    object: PathBuf,
}
