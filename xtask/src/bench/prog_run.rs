//! M1, M2, M3: the agents' attached programs and their peers run with
//! BPF_PROG_TEST_RUN by the `prog_run` example of the root-test crate
//! (`tests/bench/prog_run.rs`), on frames from the root tests' frame builder
//! (`portcullis_tests::frames`), round-robin with empty programs of the same types and
//! with xdp-filter's program, so that every ratio is taken inside one round. Every round
//! measures fresh loads: before each round but the first the four agents are restarted
//! (each loads, verifies and JITs its programs again and writes its policy into its
//! maps) and xdp-filter is loaded again, and each round is a `prog_run` process of its
//! own (its no-op baselines are loaded again too). The kernel places each JIT image at a
//! random offset, and on some CPUs (this Intel Xeon) the same code costs ~20 ns more or
//! less depending on it: a figure taken from one load is one draw of that lottery, a
//! median over the rounds is a median over loads.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};
use portcullis_common::policy::{IPPROTO_TCP, IPPROTO_UDP};
use portcullis_tests::{
    Agent,
    frames::{self, ETH_P_IP, ETH_P_IPV6, NOT_FRAGMENTED, TCP_SYN, eth, ipv4, ipv6},
    in_netns, output,
};
use serde_json::Value;

use super::{
    BASE_PORT, DENIED_PORT, Plan, SIZES, Tools,
    agent::{program_ids, start_agents},
    allowed_port,
    lab::Lab,
    stats::{Goal, Results, ratio},
};
use crate::step;

// Frame addresses: the benchmarking range and a ULA prefix of the benchmark's own.
const LOCAL4: [u8; 4] = [198, 19, 200, 1];
const REMOTE4: [u8; 4] = [198, 19, 200, 2];
const LOCAL6: [u8; 16] = [0xfd, 0x71, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const REMOTE6: [u8; 16] = [0xfd, 0x71, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

/// A test frame, 64 bytes where the headers allow (IPv6 TCP needs 74): a TCP SYN or a
/// UDP datagram from port 40000 to `port`. `outbound`: from this host (egress), else to
/// it (ingress, XDP).
fn frame(v6: bool, tcp: bool, port: u16, outbound: bool) -> Vec<u8> {
    // The remote end's port for egress, the local one otherwise: the policy port.
    let (sport, dport): (u16, u16) = (40000, port);
    let headers = 14 + if v6 { 40 } else { 20 } + if tcp { 20 } else { 8 };
    let pad = vec![0u8; 64usize.saturating_sub(headers)];
    let (l4, proto) = if tcp {
        let mut t = frames::tcp(sport, dport, TCP_SYN);
        t.extend_from_slice(&pad);
        (t, IPPROTO_TCP)
    } else {
        (frames::udp(sport, dport, &pad), IPPROTO_UDP)
    };
    if v6 {
        let (src, dst) = if outbound {
            (LOCAL6, REMOTE6)
        } else {
            (REMOTE6, LOCAL6)
        };
        eth(&[], ETH_P_IPV6, &ipv6(src, dst, proto, &l4))
    } else {
        let (src, dst) = if outbound {
            (LOCAL4, REMOTE4)
        } else {
            (REMOTE4, LOCAL4)
        };
        eth(
            &[],
            ETH_P_IP,
            &ipv4(src, dst, proto, &[], NOT_FRAGMENTED, &l4),
        )
    }
}

/// Runs the `prog_run` jobs (`LABEL=KIND:SOURCE:HEXFRAME`, or chained steps joined by
/// `,`) for `runs` rounds in one `prog_run` process and returns each label's ns per
/// round. `want` gives the return value a label's frame must get, if any: a frame that
/// takes another path than its label names is an error, not a figure.
pub(super) fn run_jobs(
    tools: &Tools,
    plan: &Plan,
    runs: usize,
    jobs: &[String],
    want: impl Fn(&str) -> Option<u32>,
) -> anyhow::Result<BTreeMap<String, Vec<f64>>> {
    let out = output(
        Command::new(&tools.prog_run)
            .arg("--object")
            .arg(&tools.object)
            .args([
                "--repeat",
                &plan.repeat.to_string(),
                "--runs",
                &runs.to_string(),
                "--chain",
                &chain_rounds(plan).to_string(),
            ])
            .args(jobs),
    )?;
    let mut ns: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() != 4 {
            continue;
        }
        ns.entry(f[0].to_owned())
            .or_default()
            .push(f[2].parse().unwrap_or(f64::NAN));
        let ret: u32 = f[3].parse().unwrap_or(99);
        if let Some(w) = want(f[0]).filter(|w| *w != ret) {
            bail!(
                "{}: the program returned {ret}, expected {w}: the frame does not take the path it is named after",
                f[0]
            );
        }
    }
    Ok(ns)
}

/// Rounds of a chained job (`STEP,STEP`: one `repeat = 1` run of each step per round,
/// see tests/bench/prog_run.rs) per measured round: two syscalls each, so fewer than the
/// `repeat` of a single program (20,000 for the published figures, 2,000 quick).
pub(super) fn chain_rounds(plan: &Plan) -> u32 {
    (plan.repeat / 50).max(1000)
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The measured paths: (hook, family, protocol, verdict).
pub fn cases() -> Vec<(&'static str, &'static str, &'static str, &'static str)> {
    let mut v = Vec::new();
    for hook in ["xdp", "ingress", "egress"] {
        for fam in ["v4", "v6"] {
            for proto in ["tcp", "udp"] {
                for verdict in ["allow", "deny"] {
                    v.push((hook, fam, proto, verdict));
                }
            }
        }
    }
    v
}

/// The return value a job's frame must get (see [`run_jobs`]). Allowed frames and the
/// early exits pass: XDP_PASS (2) on XDP (a non-IP frame too), 1 on cgroup_skb (loopback
/// too); denied ones get XDP_DROP (1) and 0. xdp-filter's allowed frames passing also
/// shows that its ports survived its reloads.
fn expected_return(label: &str) -> Option<u32> {
    let passes = label.ends_with(".allow") || label.starts_with("probe.");
    match (
        label.contains(".xdp.") || label.starts_with("xdpfilter."),
        passes,
        label.ends_with(".deny"),
    ) {
        (true, true, _) => Some(2),
        (true, _, true) => Some(1),
        (false, true, _) => Some(1),
        (false, _, true) => Some(0),
        _ => None,
    }
}

/// One round's jobs: every path of every agent's programs, the early exits, the no-op
/// baselines and xdp-filter's paths, on the programs loaded now (pinned by id).
fn program_jobs(lab: &Lab, agents: &[Agent], filter: &XdpFilter) -> anyhow::Result<Vec<String>> {
    let mut jobs: Vec<String> = Vec::new();
    for (i, agent) in agents.iter().enumerate() {
        let size = SIZES[i].0;
        let ids = program_ids(agent)?;
        let mut pins = BTreeMap::new();
        for (kind, id) in &ids {
            pins.insert(*kind, lab.pin_program(*id, &format!("{size}-{kind}"))?);
        }
        for (hook, fam, proto, verdict) in cases() {
            let port = if verdict == "allow" {
                allowed_port(SIZES[i].1)
            } else {
                DENIED_PORT
            };
            let f = frame(fam == "v6", proto == "tcp", port, hook == "egress");
            let kind = if hook == "xdp" {
                "xdp".to_owned()
            } else {
                format!("skb-{hook}")
            };
            jobs.push(format!(
                "{size}.{hook}.{fam}.{proto}.{verdict}={kind}:{}:{}",
                pins[hook].display(),
                hex(&f)
            ));
        }
        if size == "10" {
            // Early exits, for the breakdown of where the time goes: a loopback packet
            // that crossed the loopback device (config, parse, one counter; from any other
            // device a 127/8 source is spoofed and denied) and a non-IP frame on XDP.
            let mut lo = frame(false, false, 53, false);
            lo[26..30].copy_from_slice(&[127, 0, 0, 1]);
            lo[30..34].copy_from_slice(&[127, 0, 0, 1]);
            jobs.push(format!(
                "probe.ingress.loopback=skb-ingress-lo:{}:{}",
                pins["ingress"].display(),
                hex(&lo)
            ));
            let mut arp = frame(false, false, 53, false);
            arp[12..14].copy_from_slice(&[0x08, 0x06]);
            jobs.push(format!(
                "probe.xdp.nonip=xdp:{}:{}",
                pins["xdp"].display(),
                hex(&arp)
            ));
        }
    }
    let xf = lab.pin_program(filter.prog_id, "xdp-filter")?;
    for fam in ["v4", "v6"] {
        for proto in ["tcp", "udp"] {
            for outbound in [false, true] {
                let f = frame(fam == "v6", proto == "tcp", 53, outbound);
                let dir = if outbound { "out" } else { "in" };
                jobs.push(format!("noop.xdp.{fam}.{proto}.{dir}=xdp:noop:{}", hex(&f)));
                jobs.push(format!(
                    "noop.skb.{fam}.{proto}.{dir}=skb-ingress:noop:{}",
                    hex(&f)
                ));
            }
            for verdict in ["allow", "deny"] {
                let port = if verdict == "allow" {
                    allowed_port(SIZES[2].1)
                } else {
                    DENIED_PORT
                };
                let f = frame(fam == "v6", proto == "tcp", port, false);
                jobs.push(format!(
                    "xdpfilter.{fam}.{proto}.{verdict}=xdp:{}:{}",
                    xf.display(),
                    hex(&f)
                ));
            }
        }
    }
    Ok(jobs)
}

/// M3's paths: (family, protocol, verdict).
pub fn m3_paths() -> impl Iterator<Item = (&'static str, &'static str, &'static str)> {
    ["v4", "v6"].into_iter().flat_map(|fam| {
        ["tcp", "udp"].into_iter().flat_map(move |proto| {
            ["allow", "deny"]
                .into_iter()
                .map(move |verdict| (fam, proto, verdict))
        })
    })
}

pub fn measure_programs(
    tools: &Tools,
    lab: &Lab,
    plan: &Plan,
    agents: &mut Vec<Agent>,
    r: &mut Results,
) -> anyhow::Result<()> {
    let mut filter = XdpFilter::load(lab, SIZES[2].1)?;
    step(&format!(
        "bench M1/M2/M3: BPF_PROG_TEST_RUN, repeat {}, {} rounds on fresh loads (agents restarted, xdp-filter and the no-ops loaded again): 4 policy sizes x 24 paths, no-op baselines, xdp-filter",
        plan.repeat, plan.rounds
    ));
    let mut ns: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for round in 0..plan.rounds {
        if round > 0 {
            // Stopped, all of them, before any starts again (each agent's pins, cgroup
            // and veth are its successor's). A failed start returns with the others
            // stopped and the started ones dropped: nothing is left behind.
            agents.clear();
            *agents = start_agents(lab)?;
            filter.reload()?;
        }
        let jobs = program_jobs(lab, agents, &filter)?;
        for (label, v) in run_jobs(tools, plan, 1, &jobs, expected_return)? {
            ns.entry(label).or_default().extend(v);
        }
        // The bimodality, as it happens: M3's paths on this round's loads.
        let last = |k: String| {
            ns.get(&k)
                .and_then(|v| v.last().copied())
                .unwrap_or(f64::NAN)
        };
        println!(
            "    round {}/{}: agents ready in {} ms; xdp-filter id {}; M3 ns ours/xdp-filter: {}",
            round + 1,
            plan.rounds,
            agents
                .iter()
                .map(|a| format!("{:.0}", a.startup.as_secs_f64() * 1e3))
                .collect::<Vec<_>>()
                .join("/"),
            filter.prog_id,
            m3_paths()
                .map(|(fam, proto, verdict)| format!(
                    "{fam} {proto} {verdict} {:.0}/{:.0}",
                    last(format!("1000.xdp.{fam}.{proto}.{verdict}")),
                    last(format!("xdpfilter.{fam}.{proto}.{verdict}"))
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let get = |k: &str| {
        ns.get(k)
            .cloned()
            .with_context(|| format!("prog_run gave no result for {k}"))
    };

    // A no-op parses nothing, so it is no peer to aim at (xdp-filter and nftables are):
    // M1 says how many ns each path spends above it, per round, with no goal.
    step("bench M1: ns/packet of our programs above a no-op program of the same type (10 rules)");
    for (hook, fam, proto, verdict) in cases() {
        let ours = get(&format!("10.{hook}.{fam}.{proto}.{verdict}"))?;
        let dir = if hook == "egress" { "out" } else { "in" };
        let noop = get(&format!(
            "noop.{}.{fam}.{proto}.{dir}",
            if hook == "xdp" { "xdp" } else { "skb" }
        ))?;
        let key = format!("M1.{hook}.{fam}.{proto}.{verdict}");
        r.add(&format!("{key}.ns"), "ns", ours.clone(), None);
        r.add(
            &format!("{key}.above_noop"),
            "ns",
            ours.iter().zip(&noop).map(|(o, n)| o - n).collect(),
            None,
        );
    }
    for (k, v) in &ns {
        if k.starts_with("noop.") || k.starts_with("probe.") {
            r.add(&format!("M1.{k}.ns"), "ns", v.clone(), None);
        }
    }

    step("bench M2: cost against policy size (10, 100, 1000 rules, full range)");
    for (hook, fam, proto, verdict) in cases() {
        let base = get(&format!("10.{hook}.{fam}.{proto}.{verdict}"))?;
        for (size, _) in &SIZES[1..] {
            let v = get(&format!("{size}.{hook}.{fam}.{proto}.{verdict}"))?;
            r.add(
                &format!("M2.{size}.{hook}.{fam}.{proto}.{verdict}.ns"),
                "ns",
                v.clone(),
                None,
            );
            if *size == "full" {
                r.add(
                    &format!("M2.{hook}.{fam}.{proto}.{verdict}.full_vs_10"),
                    "ratio",
                    ratio(&v, &base),
                    Some(Goal::AtMost(1.1)),
                );
            }
        }
    }

    // All 24 paths together, per round: one noisy path cannot decide it either way.
    let total = |size: &str| -> anyhow::Result<Vec<f64>> {
        let mut sum = vec![0.0; plan.rounds];
        for (hook, fam, proto, verdict) in cases() {
            for (i, v) in get(&format!("{size}.{hook}.{fam}.{proto}.{verdict}"))?
                .iter()
                .enumerate()
            {
                sum[i] += v;
            }
        }
        Ok(sum)
    };
    r.add(
        "M2.all_paths.full_vs_10",
        "ratio",
        ratio(&total("full")?, &total("10")?),
        Some(Goal::AtMost(1.1)),
    );
    r.add(
        "M2.all_paths.1000_vs_10",
        "ratio",
        ratio(&total("1000")?, &total("10")?),
        Some(Goal::AtMost(1.1)),
    );

    step("bench M3: our XDP program against xdp-filter with the same 1000 ports");
    r.xdp_filter_features = filter.features.clone();
    for (fam, proto, verdict) in m3_paths() {
        let theirs = get(&format!("xdpfilter.{fam}.{proto}.{verdict}"))?;
        let ours = get(&format!("1000.xdp.{fam}.{proto}.{verdict}"))?;
        // Both sides per round, that is per load: the spread between loads shows here.
        r.add(
            &format!("M3.{fam}.{proto}.{verdict}.ours.ns"),
            "ns",
            ours.clone(),
            None,
        );
        r.add(
            &format!("M3.{fam}.{proto}.{verdict}.xdp_filter.ns"),
            "ns",
            theirs.clone(),
            None,
        );
        r.add(
            &format!("M3.{fam}.{proto}.{verdict}.ours_vs_xdp_filter"),
            "ratio",
            ratio(&ours, &theirs),
            Some(Goal::AtMost(1.0)),
        );
    }
    Ok(())
}

/// The two ends of xdp-filter's veth pair (both in namespace B): it is loaded on one,
/// and loaded again on the other for a fresh load ([`XdpFilter::reload`]).
const FILTER_DEVS: [&str; 2] = ["pcbfa", "pcbfb"];

/// xdp-filter (xdp-tools) loaded on one end of its veth pair in namespace B with policy
/// deny and the given ports allowed; unloaded on drop.
struct XdpFilter {
    ns: String,
    /// The device it is loaded on now (one of [`FILTER_DEVS`]).
    dev: &'static str,
    prog_id: u64,
    features: String,
}

impl XdpFilter {
    /// Runs `xdp-filter ARGS` in namespace B.
    fn xf(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut c = in_netns(&self.ns, "xdp-filter");
        // The program itself on the interface, not libxdp's dispatcher, so its id is
        // the one to test_run.
        c.env("LIBXDP_SKIP_DISPATCHER", "1").args(args);
        output(&mut c)
    }

    fn load(lab: &Lab, ports: usize) -> anyhow::Result<XdpFilter> {
        step(&format!(
            "bench: loading xdp-filter (policy deny, {ports} ports allowed) on a veth in our namespace"
        ));
        // Its maps are pinned host-wide: refuse to touch another user's filter.
        if Path::new("/sys/fs/bpf/xdp-filter").exists() {
            bail!(
                "/sys/fs/bpf/xdp-filter exists: xdp-filter is in use on this host; the benchmark will not change its port list"
            );
        }
        let mut filter = XdpFilter {
            ns: lab.ns_b.name.clone(),
            dev: FILTER_DEVS[0],
            prog_id: 0,
            features: String::new(),
        };
        // From here on, Drop unloads it.
        filter.xf(&["load", "-m", "skb", "-p", "deny", filter.dev])?;
        for p in 0..ports {
            filter.xf(&["port", &(BASE_PORT as usize + p).to_string()])?;
        }
        filter.read_loaded()?;
        println!(
            "    xdp-filter program id {} on {}, features {}",
            filter.prog_id, filter.dev, filter.features
        );
        Ok(filter)
    }

    /// A fresh load of xdp-filter's program (a new JIT image): loaded on the other end of
    /// the veth pair, then unloaded from this one. Its maps are pinned and shared by
    /// every interface it is loaded on, so the ports stay (unloading it from the last
    /// interface would remove them, and adding 1000 ports again takes seconds).
    fn reload(&mut self) -> anyhow::Result<()> {
        let next = if self.dev == FILTER_DEVS[0] {
            FILTER_DEVS[1]
        } else {
            FILTER_DEVS[0]
        };
        let (was_id, was_features) = (self.prog_id, self.features.clone());
        self.xf(&["load", "-m", "skb", "-p", "deny", next])?;
        let old = std::mem::replace(&mut self.dev, next);
        self.xf(&["unload", old])?;
        self.read_loaded()?;
        if self.prog_id == was_id {
            bail!(
                "xdp-filter on {next} has the program id of its load on {old} ({was_id}): not a fresh load"
            );
        }
        if self.features != was_features {
            bail!(
                "xdp-filter on {next} has features {:?}, on {old} it had {was_features:?}: not the same filter",
                self.features
            );
        }
        Ok(())
    }

    /// Reads the id of the program on `dev` (ip link) and its features (xdp-filter
    /// status).
    fn read_loaded(&mut self) -> anyhow::Result<()> {
        let v: Value = serde_json::from_str(&output(
            Command::new("ip").args(["-n", &self.ns, "-j", "-d", "link", "show", self.dev]),
        )?)?;
        self.prog_id = v[0]["xdp"]["prog"]["id"].as_u64().with_context(|| {
            format!("xdp-filter's program id on {} (ip -d link show)", self.dev)
        })?;
        let status = self.xf(&["status"])?;
        self.features = status
            .lines()
            .skip_while(|l| !l.contains("Enabled features"))
            .find(|l| l.split_whitespace().next() == Some(self.dev))
            .and_then(|l| l.split_whitespace().last())
            .unwrap_or("?")
            .to_owned();
        Ok(())
    }
}

impl Drop for XdpFilter {
    fn drop(&mut self) {
        // Both ends: a reload that failed midway may have left it on either or both.
        for dev in FILTER_DEVS {
            let _ = in_netns(&self.ns, "xdp-filter")
                .args(["unload", dev])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}
