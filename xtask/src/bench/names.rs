//! Names: what learning addresses from a DNS answer costs `pc_ingress`, what recording
//! a query's question costs `pc_egress`, and the memory one learned address takes.
//!
//! One agent (slot 0's cgroup and pin directory, once the size agents are gone) enforces
//! a small policy: `dns-servers` is [`RESOLVER`], a peer group of one name
//! ([`NAME`]) is used by an outbound rule (so the name is in the kernel's name table),
//! UDP port 53 and [`OTHER_PORT`] are open outbound to the resolver, and local UDP port
//! [`ANSWER_PORT`] is open inbound, so the answers below pass the verdict and reach the
//! learning. Its attached programs run with BPF_PROG_TEST_RUN:
//!
//! - Learning. An answer teaches only once, and only when it answers a question this
//!   host's query recorded, so each measurement is a chain (tests/bench/prog_run.rs):
//!   `pc_egress` on the query, then `pc_ingress` on the answer, one run each, many
//!   times. Answers for the name with 1, 4 and 16 A records and one through a CNAME
//!   (4 A records of the target), each from the trusted resolver and the same datagram
//!   from another address ([`UNTRUSTED`]), which is counted and never parsed. The
//!   difference, per round, is the match, the parse and the learning (the name lookups,
//!   one `PC_LEARNED` lookup and update per address): `names.<case>.parse_ns`.
//! - The match: an answer with no records (NODATA, so what follows the match is the
//!   header and question only) that answers the recorded question, minus the same
//!   answer with an id no question has (counted `unsolicited`, never parsed):
//!   `names.match_ns`. And what such a forgery from the trusted resolver's address
//!   costs above one from another sender (the copy and the failed lookup):
//!   `names.unsolicited_ns`.
//! - Recording: `pc_egress` on the query to the resolver's port 53 minus the same
//!   query to [`OTHER_PORT`], which the verdict lets out the same way but which is no
//!   DNS query: `names.question_ns`.
//!
//! The agent's `unsolicited`, `untrusted` and `answers_learned` counters must grow by
//! exactly the runs above that take those paths, or the figures would measure another
//! path than their names say.
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
    prog_run::{chain_rounds, hex, run_jobs},
    stats::Results,
};
use crate::step;

/// The trusted resolver (`dns-servers`).
const RESOLVER: [u8; 4] = [198, 19, 200, 53];
/// Another sender from port 53: not trusted, never parsed.
const UNTRUSTED: [u8; 4] = [198, 19, 200, 54];
/// This host.
const LOCAL: [u8; 4] = [198, 19, 200, 1];
/// The local port the queries leave from and the answers arrive on (open inbound in the
/// policy).
const ANSWER_PORT: u16 = 40000;
/// An outbound port open to the resolver that is not DNS: the query's baseline.
const OTHER_PORT: u16 = 5353;
/// The query's transaction id, and one no query has.
const ID: u16 = 0x1234;
const OTHER_ID: u16 = 0x4321;
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

/// `name` in wire form.
fn wire_name(m: &mut Vec<u8>, dotted: &str) {
    for label in dotted.split('.') {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
}

/// The query a stub resolver sends for [`NAME`] A.
fn query() -> Vec<u8> {
    let mut m = ID.to_be_bytes().to_vec();
    m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    wire_name(&mut m, NAME);
    m.extend_from_slice(&[0, 1, 0, 1]);
    m
}

/// A DNS answer with transaction id `id` the way a resolver writes it: the question,
/// then the records, owner names as pointers (to the question's name, or to the
/// CNAME's target).
fn answer(id: u16, records: u8, cname: bool) -> Vec<u8> {
    let [id0, id1] = id.to_be_bytes();
    let mut m = vec![
        id0,
        id1,
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
    wire_name(&mut m, NAME);
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
        wire_name(&mut m, TARGET);
    }
    for i in 0..records {
        m.extend_from_slice(&(0xc000 | owner).to_be_bytes());
        fixed(&mut m, 1, 4);
        m.extend_from_slice(&[198, 18, 7, 1 + i]);
    }
    m
}

/// `message` as an Ethernet frame from `src` port 53 to this host.
fn answer_frame(src: [u8; 4], message: &[u8]) -> Vec<u8> {
    eth(
        &[],
        ETH_P_IP,
        &ipv4(
            src,
            LOCAL,
            IPPROTO_UDP,
            &[],
            NOT_FRAGMENTED,
            &udp(53, ANSWER_PORT, message),
        ),
    )
}

/// The query as an Ethernet frame from this host to the resolver's port `port`.
fn query_frame(port: u16) -> Vec<u8> {
    eth(
        &[],
        ETH_P_IP,
        &ipv4(
            LOCAL,
            RESOLVER,
            IPPROTO_UDP,
            &[],
            NOT_FRAGMENTED,
            &udp(ANSWER_PORT, port, &query()),
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
        ("other", "out", "udp", OTHER_PORT, "dns-servers"),
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

/// The agent's DNS counter `key` (`status --json`, `names.counters`).
fn counter(agent: &Agent, key: &str) -> anyhow::Result<f64> {
    agent.try_status()?["names"]["counters"][key]
        .as_f64()
        .with_context(|| format!("status --json has no names.counters.{key}"))
}

/// The counters the jobs must move, in this order.
const COUNTERS: [&str; 3] = ["answers_learned", "untrusted", "unsolicited"];

pub fn measure_names(tools: &Tools, lab: &Lab, plan: &Plan, r: &mut Results) -> anyhow::Result<()> {
    step(&format!(
        "bench names: pc_egress on a DNS query, then pc_ingress on its answer from the trusted resolver vs an untrusted sender (1, 4, 16 A records, a CNAME), a matching vs an unsolicited answer; pc_egress on a query to port 53 vs {OTHER_PORT}; repeat {}, {} rounds; PC_LEARNED memory",
        plan.repeat, plan.rounds
    ));
    let i = 0;
    let agent = lab.agent(i, &site(lab, i)?)?;
    let before = learned_map(&agent)?;
    let ids = super::agent::program_ids(&agent)?;
    let ingress = lab.pin_program(ids["ingress"], "names-ingress")?;
    let egress = lab.pin_program(ids["egress"], "names-egress")?;
    let ask = format!("skb-egress:{}:{}", egress.display(), hex(&query_frame(53)));
    // The query, then the answer: a chain (see the module docs).
    let chain = |src: [u8; 4], message: &[u8]| {
        format!(
            "{ask},skb-ingress:{}:{}",
            ingress.display(),
            hex(&answer_frame(src, message))
        )
    };
    let mut jobs = Vec::new();
    for (label, records, cname) in CASES {
        for (who, src) in [("trusted", RESOLVER), ("untrusted", UNTRUSTED)] {
            jobs.push(format!(
                "names.{label}.{who}={}",
                chain(src, &answer(ID, records, cname))
            ));
        }
    }
    for (who, src, id) in [
        ("matched", RESOLVER, ID),
        ("unsolicited", RESOLVER, OTHER_ID),
        ("untrusted", UNTRUSTED, ID),
    ] {
        jobs.push(format!(
            "names.match.{who}={}",
            chain(src, &answer(id, 0, false))
        ));
    }
    for (who, port) in [("recorded", 53), ("other_port", OTHER_PORT)] {
        jobs.push(format!(
            "names.question.{who}=skb-egress:{}:{}",
            egress.display(),
            hex(&query_frame(port))
        ));
    }
    let counted: Vec<f64> = COUNTERS
        .iter()
        .map(|k| counter(&agent, k))
        .collect::<anyhow::Result<_>>()?;
    // Every query and answer passes (the ports are open): 1.
    let ns = run_jobs(tools, plan, plan.rounds, &jobs, |_| Some(1))?;
    let learned = learned_count(&agent)?;
    // 16 addresses from the A cases, 4 more of the CNAME's: all of 198.18.7.1-16.
    if learned < 16 {
        bail!(
            "the answers taught {learned} addresses, expected 16: the figures would not measure learning"
        );
    }
    // Runs of each chain: one to warm up, then its rounds in every measured round.
    let runs = 1.0 + plan.rounds as f64 * f64::from(chain_rounds(plan));
    // Answers learned from: the four cases' trusted answers (the NODATA one teaches
    // nothing); untrusted: their untrusted twins and the match's; unsolicited: one job.
    let expected = [4.0 * runs, 5.0 * runs, runs];
    for ((key, was), want) in COUNTERS.iter().zip(&counted).zip(expected) {
        let moved = counter(&agent, key)? - was;
        if moved != want {
            bail!(
                "names.counters.{key} grew by {moved}, expected {want}: some runs took another path than their figure is named after"
            );
        }
    }
    let get = |k: &str| {
        ns.get(k)
            .cloned()
            .with_context(|| format!("prog_run gave no result for {k}"))
    };
    let minus = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(a, b)| a - b).collect::<Vec<_>>();
    for (label, _, _) in CASES {
        let trusted = get(&format!("names.{label}.trusted"))?;
        let untrusted = get(&format!("names.{label}.untrusted"))?;
        r.add(
            &format!("names.{label}.parse_ns"),
            "ns",
            minus(&trusted, &untrusted),
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
    let matched = get("names.match.matched")?;
    let unsolicited = get("names.match.unsolicited")?;
    let untrusted = get("names.match.untrusted")?;
    r.add("names.match_ns", "ns", minus(&matched, &unsolicited), None);
    r.add(
        "names.unsolicited_ns",
        "ns",
        minus(&unsolicited, &untrusted),
        None,
    );
    r.add("names.match.matched.ns", "ns", matched, None);
    r.add("names.match.unsolicited.ns", "ns", unsolicited, None);
    r.add("names.match.untrusted.ns", "ns", untrusted, None);
    let recorded = get("names.question.recorded")?;
    let other = get("names.question.other_port")?;
    r.add("names.question_ns", "ns", minus(&recorded, &other), None);
    r.add("names.question.recorded.ns", "ns", recorded, None);
    r.add("names.question.other_port.ns", "ns", other, None);

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

#[cfg(test)]
mod tests {
    use portcullis_common::question;

    use super::*;

    /// The query is one the kernel records, every measured answer answers it (the
    /// unsolicited one only by its id not), so the chains take the paths they are named
    /// after.
    #[test]
    fn answers_match_the_query() {
        let (id, q) = question::query(&query()).expect("the query is recorded");
        assert_eq!(id, ID);
        for (label, records, cname) in CASES {
            assert!(
                question::answers(id, &q, &answer(ID, records, cname)),
                "{label}"
            );
        }
        assert!(question::answers(id, &q, &answer(ID, 0, false)));
        assert!(!question::answers(id, &q, &answer(OTHER_ID, 0, false)));
    }
}
