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
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use portcullis_tests::{
    End, Lab, Netns, Proc, bin, denies, in_netns, must, net_py, rule, rule_packets, stdout, veth,
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

/// The twin of the lab's A and B: namespaces C and D joined by a veth pair, with the
/// same addresses, for the nftables ruleset.
struct Twin {
    c: Netns,
    d: Netns,
}

/// A's and B's addresses; B also has a second one of each family (`.3`, `::3`) outside
/// the `relays` group.
struct Addrs {
    a4: String,
    a6: String,
    b4: String,
    b6: String,
    b4x: String,
    b6x: String,
}

impl Addrs {
    fn of(lab: &Lab) -> Addrs {
        let second = |addr: &str, sep: char| {
            let (head, _) = addr.rsplit_once(sep).expect("an address");
            format!("{head}{sep}3")
        };
        Addrs {
            a4: lab.a4.clone(),
            a6: lab.a6.clone(),
            b4: lab.b4.clone(),
            b6: lab.b6.clone(),
            b4x: second(&lab.b4, '.'),
            b6x: second(&lab.b6, ':'),
        }
    }

    /// The peer's addresses, in the group first.
    fn peers(&self) -> [(&str, &str); 4] {
        [
            (&self.b4, &self.a4),
            (&self.b4x, &self.a4),
            (&self.b6, &self.a6),
            (&self.b6x, &self.a6),
        ]
    }
}

fn twin(lab: &Lab, addrs: &Addrs) -> Twin {
    let c = Netns::new(&format!("{}c", lab.tag)).expect("namespace C");
    let d = Netns::new(&format!("{}d", lab.tag)).expect("namespace D");
    veth(
        &End {
            ns: &c.name,
            dev: &format!("{}p", lab.tag),
            addrs: &[format!("{}/24", addrs.a4), format!("{}/64", addrs.a6)],
        },
        &End {
            ns: &d.name,
            dev: &format!("{}q", lab.tag),
            addrs: &[
                format!("{}/24", addrs.b4),
                format!("{}/64", addrs.b6),
                format!("{}/24", addrs.b4x),
                format!("{}/64", addrs.b6x),
            ],
        },
    )
    .expect("the twin's veth pair");
    // The lab's B gets the same second addresses.
    let dev = format!("{}y", lab.tag);
    must(&format!(
        "ip -n {b} addr add {}/24 dev {dev} && ip -n {b} addr add {}/64 dev {dev} nodad",
        addrs.b4x,
        addrs.b6x,
        b = lab.ns_b
    ));
    Twin { c, d }
}

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

fn flows_py() -> String {
    format!("python3 {}/support/flows.py", env!("CARGO_MANIFEST_DIR"))
}

fn list(ports: impl IntoIterator<Item = u16>) -> String {
    ports
        .into_iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// A flow of the corpus: who starts it (the protected side "A" or the peer "B").
#[derive(Clone, Debug)]
struct Flow {
    from_a: bool,
    proto: &'static str,
    src: Option<String>,
    dst: String,
    port: u16,
}

fn corpus(addrs: &Addrs) -> Vec<Flow> {
    let mut flows = Vec::new();
    for port in PORTS {
        for proto in ["tcp", "udp"] {
            for (peer, local) in addrs.peers() {
                flows.push(Flow {
                    from_a: true,
                    proto,
                    src: None,
                    dst: peer.to_string(),
                    port,
                });
                flows.push(Flow {
                    from_a: false,
                    proto,
                    src: Some(peer.to_string()),
                    dst: local.to_string(),
                    port,
                });
            }
            for lo in ["127.0.0.1", "::1"] {
                flows.push(Flow {
                    from_a: true,
                    proto,
                    src: None,
                    dst: lo.to_string(),
                    port,
                });
            }
        }
    }
    flows
}

/// One side of the comparison: where A's and B's commands run.
struct Side<'a> {
    name: &'static str,
    /// Runs a shell command on A (in the agent's cgroup for the agent's side).
    on_a: Box<dyn Fn(&str) -> String + Sync + 'a>,
    on_b: Box<dyn Fn(&str) -> String + Sync + 'a>,
}

/// The outcome of every flow on one side, in corpus order. A refused connect (EPERM,
/// the agent's outbound deny) and a dropped packet (timeout) are the same verdict.
fn run_corpus(side: &Side<'_>, flows: &[Flow], dir: &Path) -> Vec<String> {
    let mut outcomes = vec![String::new(); flows.len()];
    for from_a in [true, false] {
        let picked: Vec<(usize, &Flow)> = flows
            .iter()
            .enumerate()
            .filter(|(_, f)| f.from_a == from_a)
            .collect();
        let json: Vec<Value> = picked
            .iter()
            .map(|(_, f)| {
                serde_json::json!({"proto": f.proto, "src": f.src, "dst": f.dst, "port": f.port})
            })
            .collect();
        let file = dir.join(format!("flows-{}-{from_a}.json", side.name));
        std::fs::write(&file, serde_json::to_string(&json).unwrap()).expect("corpus file");
        let cmd = format!("{} probe {}", flows_py(), file.display());
        let out = if from_a {
            (side.on_a)(&cmd)
        } else {
            (side.on_b)(&cmd)
        };
        let results: Vec<String> = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("{}: probe output {out:?}: {e}", side.name));
        assert_eq!(
            results.len(),
            picked.len(),
            "{}: one outcome per flow",
            side.name
        );
        for ((i, _), r) in picked.iter().zip(results) {
            outcomes[*i] = if r == "EPERM" { "timeout".into() } else { r };
        }
    }
    outcomes
}

fn sh_out(mut cmd: Command) -> String {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .expect("running a command");
    stdout(&out)
}

/// The nft counters of the table, by name (packets).
fn nft_counters(ns: &str) -> std::collections::BTreeMap<String, u64> {
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

/// Whether a forged ICMP error about a flow A does not have reaches a raw socket on A.
fn forged_icmp_error_reaches_a(
    on_a: &(dyn Fn(&str) -> String + Sync),
    on_b: &(dyn Fn(&str) -> String + Sync),
    addrs: &Addrs,
    log: &Path,
) -> bool {
    let _ = std::fs::remove_file(log);
    std::thread::scope(|s| {
        let listener = s.spawn(|| on_a(&format!("{} icmp-listen 3 {}", net_py(), log.display())));
        std::thread::sleep(std::time::Duration::from_millis(800));
        on_b(&format!(
            "{} icmp-error {} 3 3 {} 40000 {} 5555 17",
            net_py(),
            addrs.a4,
            addrs.a4,
            addrs.b4
        ));
        listener.join().expect("icmp listener");
    });
    !std::fs::read_to_string(log)
        .unwrap_or_default()
        .trim()
        .is_empty()
}

#[test]
fn nft_export_gives_every_flow_the_agents_verdict() {
    let mut lab = Lab::new("export");
    let addrs = Addrs::of(&lab);
    let twin = twin(&lab, &addrs);
    let cfg = site(&lab, &addrs, "enforce");

    // Servers: A listens on every corpus port (and on loopback), B on all but the two
    // it leaves closed.
    let a_serve = format!(
        "exec {} serve {},{},127.0.0.1,::1 {}",
        flows_py(),
        addrs.a4,
        addrs.a6,
        list(PORTS)
    );
    let b_ports = list(PORTS.into_iter().filter(|p| !PEER_CLOSED.contains(p)));
    let b_serve = format!(
        "exec {} serve {},{},{},{} {b_ports}",
        flows_py(),
        addrs.b4,
        addrs.b4x,
        addrs.b6,
        addrs.b6x
    );
    lab.spawn_a(&a_serve);
    lab.spawn_b(&b_serve);
    let spawn = |ns: &str, cmd: &str| {
        let mut c = in_netns(ns, "sh");
        c.args(["-c", cmd])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Proc(c.spawn().expect("spawning a server"))
    };
    let _servers = [spawn(&twin.c.name, &a_serve), spawn(&twin.d.name, &b_serve)];
    for (ns, addr) in [
        (lab.ns_a.clone(), &addrs.a6),
        (lab.ns_b.clone(), &addrs.b6x),
        (twin.c.name.clone(), &addrs.a6),
        (twin.d.name.clone(), &addrs.b6x),
    ] {
        lab.wait_tcp(&ns, addr, 9000);
    }
    std::thread::sleep(std::time::Duration::from_millis(200));

    // The same config, twice: the agent, and its export loaded with nft.
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
    let mut load = in_netns(&twin.c.name, "nft");
    load.arg("-f").arg(&export);
    let loaded = load.output().expect("running nft -f");
    assert!(
        loaded.status.success(),
        "nft -f: {}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    let agent = lab.agent(&cfg, &[]);

    let flows = corpus(&addrs);
    let in_ns = |ns: String| {
        move |cmd: &str| {
            let mut c = in_netns(&ns, "sh");
            c.args(["-c", cmd]);
            sh_out(c)
        }
    };
    let agent_side = Side {
        name: "agent",
        on_a: Box::new(|cmd| stdout(&lab.on_a(cmd))),
        on_b: Box::new(|cmd| stdout(&lab.on_b(cmd))),
    };
    let nft_side = Side {
        name: "nft",
        on_a: Box::new(in_ns(twin.c.name.clone())),
        on_b: Box::new(in_ns(twin.d.name.clone())),
    };
    let by_agent = run_corpus(&agent_side, &flows, &lab.dir);
    let by_nft = run_corpus(&nft_side, &flows, &lab.dir);

    let differences: Vec<String> = flows
        .iter()
        .zip(by_agent.iter().zip(&by_nft))
        .filter(|(_, (a, n))| a != n)
        .map(|(f, (a, n))| {
            format!(
                "{} {} {}{} -> {} port {}: agent {a}, nft {n}",
                if f.from_a { "out" } else { "in" },
                f.proto,
                if f.from_a { "A" } else { "B" },
                f.src.as_ref().map_or(String::new(), |s| format!(" ({s})")),
                f.dst,
                f.port
            )
        })
        .collect();
    let count = |what: &str| by_agent.iter().filter(|o| *o == what).count();
    eprintln!(
        "{} flows: {} ok, {} denied, {} refused (reset or ICMP error), {} differences",
        flows.len(),
        count("ok"),
        count("timeout"),
        count("ECONNREFUSED"),
        differences.len()
    );
    assert!(
        differences.is_empty(),
        "{} of {} flows got another verdict from the nft export than from the agent:\n{}",
        differences.len(),
        flows.len(),
        differences.join("\n")
    );

    // The corpus is not vacuous: allowed, denied, and answered-with-an-error flows, and
    // the ones the rules decide come out as the policy says.
    let outcome = |from_a: bool, proto: &str, src: Option<&str>, dst: &str, port: u16| {
        let i = flows
            .iter()
            .position(|f| {
                f.from_a == from_a
                    && f.proto == proto
                    && f.src.as_deref() == src
                    && f.dst == dst
                    && f.port == port
            })
            .expect("a corpus flow");
        by_agent[i].as_str()
    };
    let (a4, b4, b4x, b6, b6x) = (&addrs.a4, &addrs.b4, &addrs.b4x, &addrs.b6, &addrs.b6x);
    assert_eq!(
        outcome(false, "tcp", Some(b4x), a4, 2525),
        "ok",
        "tcp-in, any peer"
    );
    assert_eq!(
        outcome(false, "tcp", Some(b4), a4, 2526),
        "ok",
        "tcp-in-peers, in group"
    );
    assert_eq!(
        outcome(false, "tcp", Some(b4x), a4, 2526),
        "timeout",
        "outside the group"
    );
    assert_eq!(
        outcome(false, "udp", Some(b6x), &addrs.a6, 5301),
        "timeout",
        "udp outside"
    );
    assert_eq!(
        outcome(true, "udp", None, b6, 5410),
        "ok",
        "udp-out-peers, in group"
    );
    assert_eq!(
        outcome(true, "udp", None, b6x, 5410),
        "timeout",
        "udp-out-peers, outside"
    );
    assert_eq!(
        outcome(true, "tcp", None, b4, 2525),
        "timeout",
        "an inbound rule opens nothing out"
    );
    assert_eq!(
        outcome(false, "tcp", Some(b4), a4, 2222),
        "ok",
        "the failsafe port"
    );
    assert_eq!(
        outcome(false, "tcp", Some(b4), a4, 2599),
        "timeout",
        "no rule"
    );
    assert_eq!(
        outcome(true, "udp", None, b4, 5402),
        "ECONNREFUSED",
        "a related ICMP error"
    );
    assert_eq!(
        outcome(true, "tcp", None, b4x, 8082),
        "ECONNREFUSED",
        "a reset"
    );
    assert_eq!(
        outcome(true, "tcp", None, "127.0.0.1", 2599),
        "ok",
        "loopback exempt"
    );
    assert_eq!(
        outcome(false, "tcp", Some(b4), a4, 9000),
        "ok",
        "tcp-both in"
    );
    assert_eq!(outcome(true, "tcp", None, b4, 9000), "ok", "tcp-both out");

    // An ICMP error about a flow A does not have: dropped by both.
    let agent_icmp = forged_icmp_error_reaches_a(
        &*agent_side.on_a,
        &*agent_side.on_b,
        &addrs,
        &lab.dir.join("icmp-agent"),
    );
    let nft_icmp = forged_icmp_error_reaches_a(
        &*nft_side.on_a,
        &*nft_side.on_b,
        &addrs,
        &lab.dir.join("icmp-nft"),
    );
    assert!(
        !agent_icmp && !nft_icmp,
        "forged ICMP error: agent {agent_icmp}, nft {nft_icmp}"
    );

    // Counters: the same rules hit on both sides, and denies counted.
    let status = agent.status();
    let counters = nft_counters(&twin.c.name);
    let ids = [
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
    for id in ids {
        let agent_hits = rule_packets(&status, id);
        let nft_hits = counters
            .get(id)
            .copied()
            .unwrap_or_else(|| panic!("no nft counter {id}: {counters:?}"));
        assert!(
            agent_hits > 0 && nft_hits > 0,
            "{id}: agent {agent_hits}, nft {nft_hits}"
        );
    }
    assert!(counters["portcullis-denied-in"] > 0, "{counters:?}");
    assert!(counters["portcullis-denied-out"] > 0, "{counters:?}");
    assert!(denies(&status, "in", "no-rule", false).0 > 0, "{status:#}");
    assert!(denies(&status, "in", "peer", false).0 > 0, "{status:#}");
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
                let out = Command::new(bin())
                    .args([
                        "export",
                        "--format",
                        "nft",
                        "--product",
                        &slug,
                        "--mode",
                        mode,
                    ])
                    .args(features)
                    .arg("-o")
                    .arg(&file)
                    .output()
                    .expect("running portcullis export");
                assert!(
                    out.status.success(),
                    "{slug}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let mut check = in_netns(&ns.name, "nft");
                check.arg("-c").arg("-f").arg(&file);
                let checked_out = check.output().expect("running nft -c");
                assert!(
                    checked_out.status.success(),
                    "nft -c rejects the export of {slug} {features:?} {mode}: {}",
                    String::from_utf8_lossy(&checked_out.stderr)
                );
                let _ = std::fs::remove_file(&file);
                checked += 1;
            }
        }
    }
    assert!(checked >= 24, "only {checked} exports checked");
}
