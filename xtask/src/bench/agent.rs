//! The agent's own figures: startup (spawn to the "ready:" line; with and without an
//! XDP interface), memory (VmRSS, PSS)
//! idle with the full-range policy, reload latency (SIGHUP to the "reloaded:" log line);
//! and what the other figures read from a running agent (its denied packets, the ids of
//! the programs it attached).

use std::{collections::BTreeMap, fs, process::Command, thread, time::Duration};

use anyhow::{Context as _, bail};
use portcullis_tests::{Agent, output};
use serde_json::Value;

use super::{
    Plan, SIZES,
    lab::Lab,
    stats::{Goal, Results, percentile},
};
use crate::step;

/// The pause between the last start and the first measured reload (see `measure_agent`).
const RELOAD_SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

/// The packets the agent's programs denied so far (cgroup and XDP layers), from
/// `portcullis status --json`.
pub fn denied(agent: &Agent) -> anyhow::Result<u64> {
    let v = agent.try_status()?;
    // Both layers: during S1 only XDP sees the flood, during S2 only cgroup_skb.
    let cgroup = v["denied"]["packets"]
        .as_u64()
        .context("status --json has no denied.packets")?;
    Ok(cgroup + v["xdp"]["denied"]["packets"].as_u64().unwrap_or(0))
}

/// Starts one agent per policy size ([`SIZES`]), each on its generated site with XDP on
/// its veth. Every start loads, verifies and JIT-compiles the agent's programs anew and
/// writes its policy into its maps; an agent already running on the same pins, cgroup
/// and veth must have been stopped first.
pub fn start_agents(lab: &Lab) -> anyhow::Result<Vec<Agent>> {
    let mut agents = Vec::new();
    for (i, (label, rules)) in SIZES.iter().enumerate() {
        let site = lab.site(i, label, *rules, true)?;
        agents.push(lab.agent(i, &site)?);
    }
    Ok(agents)
}

/// The ids of the programs the agent attached, from its pinned links.
pub fn program_ids(agent: &Agent) -> anyhow::Result<BTreeMap<&'static str, u64>> {
    let links = agent.pin_dir.join("links");
    let mut ids = BTreeMap::new();
    for e in fs::read_dir(&links).with_context(|| format!("reading {}", links.display()))? {
        let path = e?.path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let kind = if name.contains("-pc_ingress-") {
            "ingress"
        } else if name.contains("-pc_egress-") {
            "egress"
        } else if name.starts_with("xdp-") {
            "xdp"
        } else {
            continue;
        };
        let v: Value = serde_json::from_str(&output(
            Command::new("bpftool")
                .args(["-j", "link", "show", "pinned"])
                .arg(&path),
        )?)?;
        ids.insert(
            kind,
            v["prog_id"]
                .as_u64()
                .with_context(|| format!("no prog_id for link {}", path.display()))?,
        );
    }
    for k in ["ingress", "egress", "xdp"] {
        if !ids.contains_key(k) {
            bail!("the agent has no pinned {k} link under {}", links.display());
        }
    }
    Ok(ids)
}

pub fn measure_agent(lab: &Lab, plan: &Plan, r: &mut Results) -> anyhow::Result<()> {
    let i = 3;
    step(&format!(
        "bench startup/memory: {} starts of the agent with the full-range profile",
        plan.rounds
    ));
    // The same profile without an XDP interface first: the cgroup programs alone (the
    // packaged default configuration names no interface), so the figure below shows
    // what pc_xdp's verification adds.
    let site = lab.site(i, "full", 1000, false)?;
    let mut cgroup_only = Vec::new();
    for _ in 0..plan.rounds {
        let agent = lab.agent(i, &site)?;
        cgroup_only.push(agent.startup.as_secs_f64() * 1e3);
        println!(
            "    start without XDP: ready in {:.0} ms",
            agent.startup.as_secs_f64() * 1e3
        );
    }
    r.add(
        "startup.cgroup_only.ms",
        "ms",
        cgroup_only,
        Some(Goal::AtMost(300.0)),
    );
    let site = lab.site(i, "full", 1000, true)?;
    let (mut startup, mut rss, mut pss) = (Vec::new(), Vec::new(), Vec::new());
    let mut last = None;
    for round in 0..plan.rounds {
        drop(last.take());
        let agent = lab.agent(i, &site)?;
        startup.push(agent.startup.as_secs_f64() * 1e3);
        // Idle: let the allocator settle and the first status writes finish.
        thread::sleep(Duration::from_millis(if round == 0 { 1500 } else { 700 }));
        let (v, p) = memory(agent.pid())?;
        println!(
            "    start {}: ready in {:.0} ms, VmRSS {v:.1} MiB, PSS {p:.1} MiB",
            round + 1,
            agent.startup.as_secs_f64() * 1e3
        );
        rss.push(v);
        pss.push(p);
        last = Some(agent);
    }
    r.add("startup.ms", "ms", startup, Some(Goal::AtMost(300.0)));
    r.add("memory.vmrss_mib", "MiB", rss, Some(Goal::AtMost(20.0)));
    r.add("memory.pss_mib", "MiB", pss, Some(Goal::AtMost(20.0)));

    let mut agent = last.context("the last agent")?;
    step(&format!(
        "bench reload: {} reloads unchanged, {} cycling full range -> 1000 -> 100 rules",
        plan.reloads, plan.reloads
    ));
    // Right after the starts above (six agents stopped, their programs and maps freed
    // by the kernel, on the same two cores), the first 7 reloads took 18-22 ms and the
    // rest 12.5-13.5: measured so, the figure was the machine settling. A long-running
    // agent is reloaded on a settled host.
    std::thread::sleep(RELOAD_SETTLE);
    let mut same = Vec::new();
    for _ in 0..plan.reloads {
        same.push(agent.reload()?.as_secs_f64() * 1e3);
    }
    let mut changed = Vec::new();
    for n in 0..plan.reloads {
        // The same site file, another profile each time. Three of them, not two: the
        // agent fills the idle one of two generations and skips entries that already
        // hold the right value, so flipping between two policies would rewrite nothing.
        let (label, rules) = [("1000", 1000), ("100", 100), ("full", 1000)][n % 3];
        let s = lab.site(i, label, rules, true)?;
        if s != site {
            fs::copy(&s, &site)?;
        }
        changed.push(agent.reload()?.as_secs_f64() * 1e3);
    }
    lab.site(i, "full", 1000, true)?;
    for (name, v, goal) in [("unchanged", same, 20.0), ("changed", changed, 50.0)] {
        r.add(
            &format!("reload.{name}.p50_ms"),
            "ms",
            vec![percentile(&v, 50.0)],
            None,
        );
        r.add(
            &format!("reload.{name}.p99_ms"),
            "ms",
            vec![percentile(&v, 99.0)],
            Some(Goal::AtMost(goal)),
        );
        r.samples.insert(format!("reload.{name}"), v);
    }
    drop(agent);
    Ok(())
}

/// VmRSS and PSS of a process, in MiB.
fn memory(pid: u32) -> anyhow::Result<(f64, f64)> {
    let field = |text: &str, name: &str| -> anyhow::Result<f64> {
        let kb: f64 = text
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("{name} in /proc/{pid}"))?;
        Ok(kb / 1024.0)
    };
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    Ok((field(&status, "VmRSS:")?, field(&rollup, "Pss:")?))
}
