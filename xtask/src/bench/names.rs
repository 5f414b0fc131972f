//! Names: what learning addresses from a DNS answer costs `pc_ingress`, and
//! the memory one learned address takes.
//!
//! One agent (slot 0's cgroup and pin directory, once the size agents are gone) enforces
//! a small policy: `dns-servers` is [`RESOLVER`], a peer group of one name
//! ([`NAME`]) is used by an outbound rule (so the name is in the kernel's name table),
//! and local UDP port [`ANSWER_PORT`] is open inbound, so the answers below pass the
//! verdict and reach the learning. Its attached `pc_ingress` runs, with
//! BPF_PROG_TEST_RUN, UDP answers for the name with 1, 4 and 16 A records and one
//! through a CNAME (4 A records of the target), each from the trusted resolver and the
//! same datagram from another address ([`UNTRUSTED`]), which is counted and never
//! parsed. The difference, per round, is the parse and the learning (the name lookups,
//! one `PC_LEARNED` lookup and update per address): `names.<case>.parse_ns`.
//!
//! Memory: `PC_LEARNED`'s key and value sizes, and the kernel's own count of the map's
//! memory (`bytes_memlock` of `bpftool map show`) before and after the answers were
//! learned, divided by its capacity. An LRU hash is preallocated: the kernel charges
//! every element at creation, so the figure per address holds from the first address
//! to the last.

use std::{fmt::Write as _, fs, path::PathBuf, process::Command};

use anyhow::{Context as _, bail};
use portcullis_common::policy::IPPROTO_UDP;
use portcullis_tests::{
    Agent,
    frames::{ETH_P_IP, NOT_FRAGMENTED, eth, ipv4, udp},
    output,
};
use serde_json::Value;

use super::{
    Plan, Tools,
    lab::Lab,
    prog_run::{hex, run_jobs},
    stats::Results,
};
use crate::step;

/// The trusted resolver (`dns-servers`).
const RESOLVER: [u8; 4] = [198, 19, 200, 53];
/// Another sender from port 53: not trusted, never parsed.
const UNTRUSTED: [u8; 4] = [198, 19, 200, 54];
/// This host.
const LOCAL: [u8; 4] = [198, 19, 200, 1];
/// The local port the answers arrive on (open inbound in the policy).
const ANSWER_PORT: u16 = 40000;
/// The listed name, and the name it is a CNAME to in the chain case.
const NAME: &str = "www.bench.example";
const TARGET: &str = "edge.cdn.bench.example";
/// Answers measured: (label, A records, through a CNAME).
const CASES: [(&str, u8, bool); 4] = [
    ("a1", 1, false),
    ("a4", 4, false),
    ("a16", 16, false),
    ("cname_a4", 4, true),
];

/// A DNS answer the way a resolver writes it: the question, then the records, owner
/// names as pointers (to the question's name, or to the CNAME's target).
fn answer(records: u8, cname: bool) -> Vec<u8> {
    let mut m = vec![
        0x12,
        0x34,
        0x81,
        0x80,
        0,
        1,
        0,
        records + u8::from(cname),
        0,
        0,
        0,
        0,
    ];
    let name = |m: &mut Vec<u8>, dotted: &str| {
        for label in dotted.split('.') {
            m.push(label.len() as u8);
            m.extend_from_slice(label.as_bytes());
        }
        m.push(0);
    };
    name(&mut m, NAME);
    m.extend_from_slice(&[0, 1, 0, 1]);
    // Record fixed fields: type, class IN, TTL 300, data length.
    let fixed = |m: &mut Vec<u8>, rtype: u16, rdlen: usize| {
        m.extend_from_slice(&rtype.to_be_bytes());
        m.extend_from_slice(&[0, 1, 0, 0, 1, 44]);
        m.extend_from_slice(&(rdlen as u16).to_be_bytes());
    };
    let mut owner = 12u16;
    if cname {
        m.extend_from_slice(&(0xc000 | owner).to_be_bytes());
        let len = TARGET.len() + 2;
        fixed(&mut m, 5, len);
        owner = m.len() as u16;
        name(&mut m, TARGET);
    }
    for i in 0..records {
        m.extend_from_slice(&(0xc000 | owner).to_be_bytes());
        fixed(&mut m, 1, 4);
        m.extend_from_slice(&[198, 18, 7, 1 + i]);
    }
    m
}

/// The answer as an Ethernet frame from `src` port 53 to this host.
fn frame(src: [u8; 4], records: u8, cname: bool) -> Vec<u8> {
    eth(
        &[],
        ETH_P_IP,
        &ipv4(
            src,
            LOCAL,
            IPPROTO_UDP,
            &[],
            NOT_FRAGMENTED,
            &udp(53, ANSWER_PORT, &answer(records, cname)),
        ),
    )
}

/// Writes the names policy for slot `i` and returns its site config.
fn site(lab: &Lab, i: usize) -> anyhow::Result<PathBuf> {
    let profile = lab.dir.join("profile-names.toml");
    let mut p = String::from(
        "slug = \"bench-names\"\nproduct = \"bench names\"\nvendor = \"portcullis bench\"\nsource = \"generated\"\n",
    );
    for (id, direction, protocol, port, peers) in [
        ("dns", "out", "both", 53, "dns-servers"),
        ("updates", "out", "tcp", 443, "bench-names"),
        ("answers", "in", "udp", ANSWER_PORT, ""),
    ] {
        let _ = write!(
            p,
            "\n[[rule]]\nid = \"{id}\"\ndirection = \"{direction}\"\nprotocol = \"{protocol}\"\nports = {port}\nwhy = \"benchmark\"\nsource = \"generated\"\n"
        );
        if !peers.is_empty() {
            let _ = writeln!(p, "peers = \"{peers}\"");
        }
    }
    fs::write(&profile, p)?;
    let [a, b, c, d] = RESOLVER;
    let site = lab.dir.join("site-names.toml");
    fs::write(
        &site,
        format!(
            "profile = \"{}\"\nmode = \"enforce\"\nfailsafe = false\nscope = [\"{}\"]\nxdp = [\"pcb{i}a\"]\nxdp_scope_only = true\npin_dir = \"{}\"\n\n[peers]\ndns-servers = [\"{a}.{b}.{c}.{d}/32\"]\nbench-names = [\"{NAME}\"]\n",
            profile.display(),
            lab.cgroups[i].rel,
            lab.pin_dir(i).display()
        ),
    )?;
    Ok(site)
}

/// `bpftool -j map show` of the agent's pinned `PC_LEARNED`.
fn learned_map(agent: &Agent) -> anyhow::Result<Value> {
    let path = agent
        .pin_dir
        .join("maps")
        .join(portcullis_common::maps::LEARNED);
    Ok(serde_json::from_str(&output(
        Command::new("bpftool")
            .args(["-j", "map", "show", "pinned"])
            .arg(&path),
    )?)?)
}

/// Addresses in the agent's `PC_LEARNED`.
fn learned_count(agent: &Agent) -> anyhow::Result<usize> {
    let path = agent
        .pin_dir
        .join("maps")
        .join(portcullis_common::maps::LEARNED);
    let v: Value = serde_json::from_str(&output(
        Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned"])
            .arg(&path),
    )?)?;
    v.as_array()
        .map(Vec::len)
        .context("bpftool map dump gave no list")
}

pub fn measure_names(tools: &Tools, lab: &Lab, plan: &Plan, r: &mut Results) -> anyhow::Result<()> {
    step(&format!(
        "bench names: pc_ingress on DNS answers from a trusted resolver vs an untrusted sender (1, 4, 16 A records, a CNAME), repeat {}, {} rounds; PC_LEARNED memory",
        plan.repeat, plan.rounds
    ));
    let i = 0;
    let agent = lab.agent(i, &site(lab, i)?)?;
    let before = learned_map(&agent)?;
    let ids = super::agent::program_ids(&agent)?;
    let ingress = lab.pin_program(ids["ingress"], "names-ingress")?;
    let mut jobs = Vec::new();
    for (label, records, cname) in CASES {
        for (who, src) in [("trusted", RESOLVER), ("untrusted", UNTRUSTED)] {
            jobs.push(format!(
                "names.{label}.{who}=skb-ingress:{}:{}",
                ingress.display(),
                hex(&frame(src, records, cname))
            ));
        }
    }
    // Every answer passes (the port is open): 1.
    let ns = run_jobs(tools, plan, &jobs, |_| Some(1))?;
    let learned = learned_count(&agent)?;
    // 16 addresses from the A cases, 4 more of the CNAME's: all of 198.18.7.1-16.
    if learned < 16 {
        bail!(
            "the answers taught {learned} addresses, expected 16: the figures would not measure learning"
        );
    }
    let get = |k: &str| {
        ns.get(k)
            .cloned()
            .with_context(|| format!("prog_run gave no result for {k}"))
    };
    for (label, _, _) in CASES {
        let trusted = get(&format!("names.{label}.trusted"))?;
        let untrusted = get(&format!("names.{label}.untrusted"))?;
        r.add(
            &format!("names.{label}.parse_ns"),
            "ns",
            trusted.iter().zip(&untrusted).map(|(t, u)| t - u).collect(),
            None,
        );
        r.add(&format!("names.{label}.trusted.ns"), "ns", trusted, None);
        r.add(
            &format!("names.{label}.untrusted.ns"),
            "ns",
            untrusted,
            None,
        );
    }

    let after = learned_map(&agent)?;
    let field = |v: &Value, k: &str| {
        v[k].as_f64()
            .with_context(|| format!("bpftool map show has no {k}"))
    };
    let entries = field(&after, "max_entries")?;
    r.add(
        "names.learned.entry_bytes",
        "B",
        vec![field(&after, "bytes_key")? + field(&after, "bytes_value")?],
        None,
    );
    r.add(
        "names.learned.memlock_per_address_bytes",
        "B",
        vec![field(&after, "bytes_memlock")? / entries],
        None,
    );
    r.add(
        "names.learned.memlock_mib",
        "MiB",
        vec![field(&after, "bytes_memlock")? / 1048576.0],
        None,
    );
    r.add(
        "names.learned.memlock_growth_bytes",
        "B",
        vec![field(&after, "bytes_memlock")? - field(&before, "bytes_memlock")?],
        None,
    );
    r.add("names.learned.capacity", "addresses", vec![entries], None);
    r.add(
        "names.learned.count",
        "addresses",
        vec![learned as f64],
        None,
    );
    Ok(())
}
