//! A corpus of flows for differential tests: the lab's A and B and a twin pair C and D
//! with the same addresses, where another firewall than the agent protects C; the
//! same flows tried on both pairs (`flows.py probe`), one outcome word per flow.
//!
//! B and D have a second address of each family (`.3`, `::3`), so that a flow can come
//! from inside or from outside a peer group of the first ones.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::Value;

use crate::{End, Lab, Netns, Proc, in_netns, must, net_py, stdout, veth};

/// `tests/support/flows.py`: the echo servers and the concurrent prober.
pub fn flows_py() -> String {
    format!("python3 {}/support/flows.py", env!("CARGO_MANIFEST_DIR"))
}

/// A's and B's addresses, with B's second ones outside any group of the first.
pub struct Addrs {
    pub a4: String,
    pub a6: String,
    pub b4: String,
    pub b6: String,
    pub b4x: String,
    pub b6x: String,
}

impl Addrs {
    /// The lab's addresses, and B's second ones (same prefix, host part 3).
    pub fn of(lab: &Lab) -> Addrs {
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

    /// (peer address, A's address of the same family): B's first addresses first.
    pub fn peers(&self) -> [(&str, &str); 4] {
        [
            (&self.b4, &self.a4),
            (&self.b4x, &self.a4),
            (&self.b6, &self.a6),
            (&self.b6x, &self.a6),
        ]
    }
}

/// The twin of the lab's A and B: namespaces C and D joined by a veth pair, with the
/// same addresses. Creating it also gives the lab's B its second addresses.
pub struct Twin {
    /// The protected side (A's twin).
    pub c: Netns,
    /// The peer (B's twin).
    pub d: Netns,
    servers: Vec<Proc>,
}

impl Twin {
    /// Creates C and D for `lab`.
    pub fn new(lab: &Lab, addrs: &Addrs) -> Twin {
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
        let dev = format!("{}y", lab.tag);
        must(&format!(
            "ip -n {b} addr add {}/24 dev {dev} && ip -n {b} addr add {}/64 dev {dev} nodad",
            addrs.b4x,
            addrs.b6x,
            b = lab.ns_b
        ));
        Twin {
            c,
            d,
            servers: Vec::new(),
        }
    }

    /// Echo servers (`flows.py serve`) on A and C on `a_ports`, on B and D on `b_ports`,
    /// each bound to every address of its side (A and C also to loopback; A's inside the
    /// lab's cgroup). Wait for them with [`Lab::wait_tcp`].
    pub fn serve(&mut self, lab: &mut Lab, addrs: &Addrs, a_ports: &str, b_ports: &str) {
        let a = format!(
            "exec {} serve {},{},127.0.0.1,::1 {a_ports}",
            flows_py(),
            addrs.a4,
            addrs.a6
        );
        let b = format!(
            "exec {} serve {},{},{},{} {b_ports}",
            flows_py(),
            addrs.b4,
            addrs.b4x,
            addrs.b6,
            addrs.b6x
        );
        lab.spawn_a(&a);
        lab.spawn_b(&b);
        for (ns, cmd) in [(&self.c.name, &a), (&self.d.name, &b)] {
            let mut c = in_netns(ns, "sh");
            c.args(["-c", cmd])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            self.servers
                .push(Proc(c.spawn().expect("spawning a server")));
        }
    }

    /// Runs a shell command in namespace `ns`, returning its stdout.
    pub fn run(ns: &str, cmd: &str) -> String {
        let mut c = in_netns(ns, "sh");
        c.args(["-c", cmd]);
        sh_out(c)
    }
}

/// A flow of the corpus: who starts it (the protected side A, or the peer B), the
/// protocol, the source address it binds (None: the kernel's choice), where it goes.
#[derive(Clone, Debug)]
pub struct Flow {
    pub from_a: bool,
    pub proto: &'static str,
    pub src: Option<String>,
    pub dst: String,
    pub port: u16,
}

impl std::fmt::Display for Flow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {}{} -> {} port {}",
            if self.from_a { "out" } else { "in" },
            self.proto,
            if self.from_a { "A" } else { "B" },
            self.src
                .as_ref()
                .map_or(String::new(), |s| format!(" ({s})")),
            self.dst,
            self.port
        )
    }
}

/// Every port, both protocols: from A to each of B's addresses and to loopback, and
/// from each of B's addresses to A.
pub fn corpus(addrs: &Addrs, ports: &[u16]) -> Vec<Flow> {
    let mut flows = Vec::new();
    let flow = |from_a, proto, src: Option<&str>, dst: &str, port| Flow {
        from_a,
        proto,
        src: src.map(str::to_string),
        dst: dst.to_string(),
        port,
    };
    for &port in ports {
        for proto in ["tcp", "udp"] {
            for (peer, local) in addrs.peers() {
                flows.push(flow(true, proto, None, peer, port));
                flows.push(flow(false, proto, Some(peer), local, port));
            }
            for lo in ["127.0.0.1", "::1"] {
                flows.push(flow(true, proto, None, lo, port));
            }
        }
    }
    flows
}

/// One side of a comparison: a name, and how a shell command runs on its A (for the
/// agent, inside the enforced cgroup) and on its B.
pub struct Side<'a> {
    pub name: &'static str,
    pub on_a: Box<dyn Fn(&str) -> String + Sync + 'a>,
    pub on_b: Box<dyn Fn(&str) -> String + Sync + 'a>,
}

/// The outcome of every flow on one side, in corpus order: ok | timeout | ECONNREFUSED
/// | .... A refused connect (EPERM, the agent's outbound deny) and a dropped packet
/// (timeout) are the same verdict, written "timeout".
pub fn run_corpus(side: &Side<'_>, flows: &[Flow], dir: &Path) -> Vec<String> {
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
        let file: PathBuf = dir.join(format!("flows-{}-{from_a}.json", side.name));
        std::fs::write(&file, serde_json::to_string(&json).expect("JSON")).expect("corpus file");
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

/// stdout of a command (stderr passed through).
pub fn sh_out(mut cmd: Command) -> String {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .expect("running a command");
    stdout(&out)
}

/// Whether a forged ICMP error (port unreachable about a UDP flow A never had) from B
/// reaches a raw ICMP socket on A.
pub fn forged_icmp_error_reaches_a(side: &Side<'_>, addrs: &Addrs, log: &Path) -> bool {
    let _ = std::fs::remove_file(log);
    std::thread::scope(|s| {
        let listener =
            s.spawn(|| (side.on_a)(&format!("{} icmp-listen 3 {}", net_py(), log.display())));
        std::thread::sleep(std::time::Duration::from_millis(800));
        (side.on_b)(&format!(
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
