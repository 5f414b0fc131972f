//! The nftables export against the agent: one site config, enforced by the real agent on
//! the lab's cgroup in namespace A, and exported with `portcullis export --format nft`
//! and loaded with `nft -f` into a twin namespace C (same addresses, same peer B as D).
//! The same corpus of flows goes through both: every port of every rule (and ports no
//! rule opens, and ports where nothing listens) in both directions, both protocols, over
//! IPv4 and IPv6, from peers inside and outside the rule's group, to loopback, with
//! their replies, ICMP errors about a flow the host has and a forged one about a flow it
//! has not. The outcomes must be equal flow by flow; the rules' counters must be hit on
//! both sides alike. And `nft -c` accepts the export of every built-in product.
//!
//! One difference is inherent and kept out of the corpus: the agent judges packets of
//! the sockets in its scope, so an inbound flow to a port where nothing listens is
//! answered by the kernel (a reset, an ICMP port unreachable) where nftables drops it.
//! The serving side A therefore listens on every port the corpus tries.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use portcullis_tests::{
    Agent, Lab, Netns, bin,
    corpus::{Addrs, Flow, Side, Twin, corpus, forged_icmp_error_reaches_a, run_corpus, sh_out},
    denies, in_netns, rule, rule_packets, stdout,
};
use serde_json::Value;

/// The lab profile: each kind of rule the datapath has (any peer, one peer group, a
/// range, both directions, both protocols), plus the failsafe the site adds.
fn profile() -> String {
    let peers = "peers = \"relays\"";
    [
        rule("tcp-in", "in", "tcp", 2525, ""),
        rule("tcp-in-peers", "in", "tcp", 2526, peers),
        rule("udp-in", "in", "udp", 5300, ""),
        rule("udp-in-peers", "in", "udp", 5301, peers),
        rule("tcp-out", "out", "tcp", 8080, "").replace("ports = 8080", "ports = [8080, 8082]"),
        rule("tcp-out-peers", "out", "tcp", 8081, peers),
        rule("udp-out", "out", "udp", 5400, "").replace("ports = 5400", "ports = \"5400-5402\""),
        rule("udp-out-peers", "out", "udp", 5410, peers),
        rule("tcp-both", "both", "tcp", 9000, ""),
    ]
    .concat()
}

/// Every port the corpus tries: the rules' ports, the failsafe's, and 2599, which no rule
/// opens. 5402 (udp-out) and 8082 (tcp-out) have no server on the peer: the allowed flow
/// is answered with an ICMP port unreachable or a reset.
const PORTS: [u16; 15] = [
    2222, 2525, 2526, 2599, 5300, 5301, 5400, 5401, 5402, 5410, 8080, 8081, 8082, 9000, 2527,
];
const PEER_CLOSED: [u16; 2] = [5402, 8082];

/// The site: the lab profile, the `relays` group (B's first addresses), the failsafe on
/// port 2222, enforce, scoped to the lab's cgroup.
fn site(lab: &Lab, addrs: &Addrs, mode: &str) -> PathBuf {
    lab.write(
        "profile.toml",
        &format!(
            "slug = \"lab\"\nproduct = \"Lab\"\nvendor = \"portcullis tests\"\nsource = \"tests\"\n{}",
            profile()
        ),
    );
    lab.write(
        "site.toml",
        &format!(
            "profile = \"profile.toml\"\nmode = \"{mode}\"\nfailsafe = true\nfailsafe_port = 2222\n\
             events_per_sec = 1000\nscope = [\"{}\"]\n\n[peers]\nrelays = [\"{}/32\", \"{}/128\"]\n",
            lab.cgroup_rel, addrs.b4, addrs.b6
        ),
    )
}

fn list(ports: impl IntoIterator<Item = u16>) -> String {
    ports
        .into_iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The nft counters of the table, by name (packets).
fn nft_counters(ns: &str) -> BTreeMap<String, u64> {
    let mut cmd = in_netns(ns, "nft");
    cmd.args(["-j", "list", "counters", "table", "inet", "portcullis"]);
    let v: Value = serde_json::from_str(&sh_out(cmd)).expect("nft -j output");
    v["nftables"]
        .as_array()
        .expect("nftables")
        .iter()
        .filter_map(|o| o.get("counter"))
        .map(|c| {
            (
                c["name"].as_str().unwrap_or("?").to_string(),
                c["packets"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// What one differential run leaves for the assertions of its mode.
struct Run {
    flows: Vec<Flow>,
    by_agent: Vec<String>,
    status: Value,
    counters: BTreeMap<String, u64>,
    /// Whether a forged ICMP error reached A: (agent, nft).
    forged_icmp: (bool, bool),
    _agent: Agent,
    _twin: Twin,
    _lab: Lab,
}

impl Run {
    fn outcome(&self, from_a: bool, proto: &str, src: Option<&str>, dst: &str, port: u16) -> &str {
        let i = self
            .flows
            .iter()
            .position(|f| {
                f.from_a == from_a
                    && f.proto == proto
                    && f.src.as_deref() == src
                    && f.dst == dst
                    && f.port == port
            })
            .expect("a corpus flow");
        &self.by_agent[i]
    }
}

/// One site config in `mode`, enforced by the agent on the lab and exported to nft in
/// the twin; the corpus through both; fails on any flow whose outcomes differ.
fn differential(name: &str, mode: &str) -> (Run, Addrs) {
    let mut lab = Lab::new(name);
    let addrs = Addrs::of(&lab);
    let mut twin = Twin::new(&lab, &addrs);
    let cfg = site(&lab, &addrs, mode);
    // A listens on every corpus port (see the module docs), B on all but two.
    let b_ports = list(PORTS.into_iter().filter(|p| !PEER_CLOSED.contains(p)));
    twin.serve(&mut lab, &addrs, &list(PORTS), &b_ports);
    for (ns, addr) in [
        (&lab.ns_a, &addrs.a6),
        (&lab.ns_b, &addrs.b6x),
        (&twin.c.name, &addrs.a6),
        (&twin.d.name, &addrs.b6x),
    ] {
        lab.wait_tcp(ns, addr, 9000);
    }
    std::thread::sleep(std::time::Duration::from_millis(200));

    // The same config, twice: its export loaded with nft, and the agent.
    let export = lab.dir.join("portcullis.nft");
    let out = Command::new(bin())
        .args(["export", "--format", "nft", "--host-wide", "--config"])
        .arg(&cfg)
        .arg("-o")
        .arg(&export)
        .output()
        .expect("running portcullis export");
    assert!(
        out.status.success(),
        "export: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let refused = Command::new(bin())
        .args(["export", "--format", "nft", "--config"])
        .arg(&cfg)
        .output()
        .expect("running portcullis export");
    assert_eq!(
        refused.status.code(),
        Some(3),
        "a cgroup scope without --host-wide"
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--host-wide"));
    // Loaded twice: a new load replaces the table of the earlier one.
    for _ in 0..2 {
        let mut load = in_netns(&twin.c.name, "nft");
        load.arg("-f").arg(&export);
        let loaded = load.output().expect("running nft -f");
        assert!(
            loaded.status.success(),
            "nft -f: {}",
            String::from_utf8_lossy(&loaded.stderr)
        );
    }
    let mut tables = in_netns(&twin.c.name, "nft");
    tables.args(["list", "tables"]);
    assert_eq!(sh_out(tables).trim(), "table inet portcullis", "one table");
    let agent = lab.agent(&cfg, &[]);

    let flows = corpus(&addrs, &PORTS);
    let (c, d) = (twin.c.name.clone(), twin.d.name.clone());
    let agent_side = Side {
        name: "agent",
        on_a: Box::new(|cmd| stdout(&lab.on_a(cmd))),
        on_b: Box::new(|cmd| stdout(&lab.on_b(cmd))),
    };
    let nft_side = Side {
        name: "nft",
        on_a: Box::new(move |cmd| Twin::run(&c, cmd)),
        on_b: Box::new(move |cmd| Twin::run(&d, cmd)),
    };
    let by_agent = run_corpus(&agent_side, &flows, &lab.dir);
    let by_nft = run_corpus(&nft_side, &flows, &lab.dir);
    let forged_icmp = (
        forged_icmp_error_reaches_a(&agent_side, &addrs, &lab.dir.join("icmp-agent")),
        forged_icmp_error_reaches_a(&nft_side, &addrs, &lab.dir.join("icmp-nft")),
    );
    drop((agent_side, nft_side));

    let differences: Vec<String> = flows
        .iter()
        .zip(by_agent.iter().zip(&by_nft))
        .filter(|(_, (a, n))| a != n)
        .map(|(f, (a, n))| format!("{f}: agent {a}, nft {n}"))
        .collect();
    let count = |what: &str| by_agent.iter().filter(|o| *o == what).count();
    eprintln!(
        "{mode}: {} flows: {} ok, {} denied, {} refused (reset or ICMP error), {} differences",
        flows.len(),
        count("ok"),
        count("timeout"),
        count("ECONNREFUSED"),
        differences.len()
    );
    assert!(
        differences.is_empty(),
        "{mode}: {} of {} flows got another verdict from the nft export than from the agent:\n{}",
        differences.len(),
        flows.len(),
        differences.join("\n")
    );
    let status = agent.status();
    let counters = nft_counters(&twin.c.name);
    let run = Run {
        flows,
        by_agent,
        status,
        counters,
        forged_icmp,
        _agent: agent,
        _twin: twin,
        _lab: lab,
    };
    (run, addrs)
}

/// Every policy rule of the lab site.
const RULE_IDS: [&str; 11] = [
    "tcp-in",
    "tcp-in-peers",
    "udp-in",
    "udp-in-peers",
    "tcp-out",
    "tcp-out-peers",
    "udp-out",
    "udp-out-peers",
    "tcp-both/in",
    "tcp-both/out",
    "failsafe-ssh",
];

/// Every rule was hit on both sides.
fn every_rule_counted(run: &Run) {
    for id in RULE_IDS {
        let agent = rule_packets(&run.status, id);
        let nft = run.counters.get(id).copied();
        assert!(
            agent > 0 && nft.is_some_and(|n| n > 0),
            "{id}: agent counted {agent}, nft {nft:?}: {:?}",
            run.counters
        );
    }
}

#[test]
fn nft_export_gives_every_flow_the_agents_verdict_in_enforce_mode() {
    let (run, a) = differential("exporten", "enforce");
    // Not vacuous: the rules decide as the policy says, on both sides (they are equal).
    let o = |from_a, proto, src, dst: &str, port| run.outcome(from_a, proto, src, dst, port);
    let (a4, a6, b4, b4x, b6, b6x) = (&a.a4, &a.a6, &a.b4, &a.b4x, &a.b6, &a.b6x);
    assert_eq!(
        o(false, "tcp", Some(b4x), a4, 2525),
        "ok",
        "tcp-in, any peer"
    );
    assert_eq!(
        o(false, "tcp", Some(b4), a4, 2526),
        "ok",
        "tcp-in-peers, in the group"
    );
    assert_eq!(
        o(false, "tcp", Some(b4x), a4, 2526),
        "timeout",
        "outside the group"
    );
    assert_eq!(
        o(false, "udp", Some(b6), a6, 5301),
        "ok",
        "udp-in-peers, in the group"
    );
    assert_eq!(
        o(false, "udp", Some(b6x), a6, 5301),
        "timeout",
        "outside the group"
    );
    assert_eq!(
        o(true, "udp", None, b6, 5410),
        "ok",
        "udp-out-peers, in the group"
    );
    assert_eq!(
        o(true, "udp", None, b6x, 5410),
        "timeout",
        "outside the group"
    );
    assert_eq!(
        o(true, "tcp", None, b4, 2525),
        "timeout",
        "an inbound rule opens nothing out"
    );
    assert_eq!(
        o(false, "tcp", Some(b4), a4, 2222),
        "ok",
        "the failsafe port"
    );
    assert_eq!(o(false, "tcp", Some(b4), a4, 2599), "timeout", "no rule");
    assert_eq!(
        o(true, "udp", None, b4, 5402),
        "ECONNREFUSED",
        "a related ICMP error"
    );
    assert_eq!(o(true, "tcp", None, b4x, 8082), "ECONNREFUSED", "a reset");
    assert_eq!(
        o(true, "tcp", None, "127.0.0.1", 2599),
        "ok",
        "loopback exempt"
    );
    assert_eq!(o(false, "tcp", Some(b6x), a6, 9000), "ok", "tcp-both in");
    assert_eq!(o(true, "tcp", None, b6x, 9000), "ok", "tcp-both out");
    assert_eq!(
        run.forged_icmp,
        (false, false),
        "a forged ICMP error: (agent, nft)"
    );
    every_rule_counted(&run);
    assert!(
        run.counters["portcullis-denied-in"] > 0,
        "{:?}",
        run.counters
    );
    assert!(
        run.counters["portcullis-denied-out"] > 0,
        "{:?}",
        run.counters
    );
    assert!(
        denies(&run.status, "in", "no-rule", false).0 > 0,
        "{:#}",
        run.status
    );
    assert!(
        denies(&run.status, "in", "peer", false).0 > 0,
        "{:#}",
        run.status
    );
}

#[test]
fn nft_export_counts_without_dropping_in_audit_mode_as_the_agent_does() {
    let (run, a) = differential("exportau", "audit");
    // Nothing is dropped: every flow is answered (ok, or refused where B serves nothing).
    for (f, o) in run.flows.iter().zip(&run.by_agent) {
        let to_b = f.from_a && !["127.0.0.1", "::1"].contains(&f.dst.as_str());
        let closed = to_b && PEER_CLOSED.contains(&f.port);
        assert!(o == "ok" || (closed && o == "ECONNREFUSED"), "{f}: {o}");
    }
    assert_eq!(run.outcome(false, "tcp", Some(&a.b4x), &a.a4, 2526), "ok");
    every_rule_counted(&run);
    assert!(
        run.counters["portcullis-would-deny-in"] > 0,
        "{:?}",
        run.counters
    );
    assert!(
        run.counters["portcullis-would-deny-out"] > 0,
        "{:?}",
        run.counters
    );
    assert!(
        !run.counters.contains_key("portcullis-denied-in"),
        "{:?}",
        run.counters
    );
    assert!(
        denies(&run.status, "in", "no-rule", true).0 > 0,
        "{:#}",
        run.status
    );
    assert!(
        denies(&run.status, "in", "peer", true).0 > 0,
        "{:#}",
        run.status
    );
}

#[test]
fn nft_accepts_the_export_of_every_built_in_product() {
    let ns = Netns::new("pcnftcheck").expect("a namespace for nft -c");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("profiles/") {
        let path = entry.expect("a profile").path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let slug = path.file_stem().unwrap().to_string_lossy().to_string();
        for features in [&[][..], &["--all-features"][..]] {
            for mode in ["audit", "enforce"] {
                let file = std::env::temp_dir().join(format!("portcullis-{slug}-{mode}.nft"));
                let mut args = vec!["--product", slug.as_str(), "--mode", mode];
                args.extend_from_slice(features);
                export_nft_checked(
                    &ns.name,
                    &args,
                    &file,
                    &format!("{slug} {features:?} {mode}"),
                );
                let _ = std::fs::remove_file(&file);
                checked += 1;
            }
        }
    }
    assert!(checked >= 24, "only {checked} exports checked");

    // A site whose group lists nested networks and a host name, in both modes.
    let dir = std::env::temp_dir().join(format!("portcullis-nftcheck-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    for mode in ["audit", "enforce"] {
        let site = dir.join("site.toml");
        std::fs::write(
            &site,
            format!(
                "product = \"iredmail\"\nmode = \"{mode}\"\nloopback = \"enforce\"\n\n[[rule]]\n\
                 id = \"relay-in\"\ndirection = \"both\"\nprotocol = \"both\"\nports = [25, \"2000-2010\"]\n\
                 peers = \"relays\"\nwhy = \"the relays\"\n\n[peers]\ndns-servers = [\"192.0.2.53/32\"]\n\
                 relays = [\"10.0.0.0/8\", \"10.1.0.0/16\", \"2001:db8::/32\", \"2001:db8:1::/48\", \"relay.example.net\"]\n"
            ),
        )
        .expect("site");
        let file = dir.join("site.nft");
        let site = site.to_str().expect("a UTF-8 temp path");
        export_nft_checked(
            &ns.name,
            &["--config", site],
            &file,
            &format!("nested networks ({mode})"),
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `portcullis export --format nft ARGS -o FILE`, then `nft -c -f FILE` in namespace
/// `ns`: fails the test, naming `what`, when either refuses.
fn export_nft_checked(ns: &str, args: &[&str], file: &Path, what: &str) {
    let out = Command::new(bin())
        .args(["export", "--format", "nft"])
        .args(args)
        .arg("-o")
        .arg(file)
        .output()
        .expect("running portcullis export");
    assert!(
        out.status.success(),
        "export of {what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut check = in_netns(ns, "nft");
    check.arg("-c").arg("-f").arg(file);
    let checked = check.output().expect("running nft -c");
    assert!(
        checked.status.success(),
        "nft -c rejects the export of {what}: {}",
        String::from_utf8_lossy(&checked.stderr)
    );
}
