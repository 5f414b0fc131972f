//! `cargo xtask bench`: the performance figures of issue 8, measured side by side in one
//! run on this machine, written to `xtask/bench/` (BENCHMARKS.md, results.json,
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
//! 3. S1/S2: a 64-byte UDP flood (trafgen) from one namespace to the other, across N
//!    destination ports no rule opens: packets dropped per second by our XDP program and
//!    by nftables `netdev ingress` (a set, and a linear chain of N rules); then by our
//!    cgroup_skb ingress program and by nftables `inet input`, the same way. Each round
//!    measures the three filters back to back, switching our XDP on and off by reloading
//!    the agent.
//! 4. Startup (spawn to the "ready:" line), memory (VmRSS, PSS) idle with the full-range
//!    policy, reload latency (SIGHUP to the "reloaded:" log line).
//!
//! Safety: nothing is attached outside what this module creates (namespaces, veths,
//! cgroups, bpffs directories, all named `pcbench`/`portcullis-bench` with our pid);
//! every one of them is a guard value removed in `Drop`, on error and panic too; agents
//! are stopped with SIGTERM (they detach on exit) and then `portcullis detach`ed.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::{sh, step};

/// `cargo xtask bench` options.
pub struct Options {
    /// Also write results.json here.
    pub json: Option<PathBuf>,
    /// Fewer rounds, shorter floods, for a smoke run (not the published figures).
    pub quick: bool,
}

/// Packages only the benchmark needs: the peers it compares against and the traffic
/// generator. Installed here, not by `setup`, so a build machine does not get them.
const PACKAGES: &[&str] = &["nftables", "xdp-tools", "netsniff-ng"];

/// How much to measure.
struct Plan {
    /// Rounds of every measured figure (medians and min-max over these).
    rounds: usize,
    /// BPF_PROG_TEST_RUN repeat count.
    repeat: u32,
    /// Length of one flood measurement window.
    flood: Duration,
    /// Reloads per reload figure.
    reloads: usize,
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

// ---------------------------------------------------------------------------------------
// Entry point.

/// Runs the whole benchmark.
pub fn run(root: &Path, opts: &Options) -> anyhow::Result<()> {
    let started = Instant::now();
    require_root()?;
    ensure_packages()?;
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
        portcullis: root.join("target/release/portcullis"),
        prog_run: root.join("target/release/examples/prog_run"),
        object,
    };
    let plan = Plan::new(opts.quick);
    let lab = Lab::new()?;
    let mut results = Results::default();

    step("bench: starting one agent per policy size (10, 100, 1000 rules, full range)");
    let mut agents = Vec::new();
    for (i, (label, rules)) in SIZES.iter().enumerate() {
        let site = lab.site(i, label, *rules, true)?;
        let agent = Agent::start(&tools, &lab, i, &site)?;
        println!(
            "    {label}: {} policy rules, ready in {:.0} ms",
            agent.ready_line,
            agent.startup.as_secs_f64() * 1e3
        );
        agents.push(agent);
    }
    let filter = XdpFilter::load(&lab, SIZES[2].1)?;

    measure_programs(&tools, &lab, &plan, &agents, &filter, &mut results)?;
    drop(filter);
    measure_floods(&tools, &lab, &plan, &mut agents, &mut results)?;
    let full = agents.pop().context("the full-range agent")?;
    drop(agents);
    drop(full);
    measure_agent(&tools, &lab, &plan, &mut results)?;

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

fn require_root() -> anyhow::Result<()> {
    let out = Command::new("id")
        .arg("-u")
        .output()
        .context("running id -u")?;
    if String::from_utf8_lossy(&out.stdout).trim() != "0" {
        bail!("the benchmark loads eBPF programs, creates namespaces and cgroups: run it as root");
    }
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

struct Tools {
    portcullis: PathBuf,
    prog_run: PathBuf,
    object: PathBuf,
}

// ---------------------------------------------------------------------------------------
// Shell helpers.

/// Runs a command and returns its stdout; fails with the command line and stderr.
fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let line = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("starting {line}"))?;
    if !out.status.success() {
        bail!(
            "{line} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `sh -c script`, failing with the script and its stderr.
fn shell(script: &str) -> anyhow::Result<String> {
    output(Command::new("sh").arg("-c").arg(script))
}

/// A command inside a namespace. nsenter (unlike `ip netns exec`) keeps the mount
/// namespace, so bpffs and the cgroup tree stay visible.
fn in_ns(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{ns}"))
        .arg("--")
        .arg(program);
    c
}

/// The cgroup v2 mount point, from /proc/self/mountinfo (never assumed).
fn cgroup2_mount() -> anyhow::Result<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    info.lines()
        .find(|l| {
            l.split(" - ")
                .nth(1)
                .is_some_and(|t| t.starts_with("cgroup2 "))
        })
        .and_then(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .context("no cgroup v2 mount (the benchmark attaches to a cgroup of its own)")
}

/// Signals a whole process group (its leader's pid).
fn kill_group(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg("--")
        .arg(format!("-{pid}"))
        .stderr(Stdio::null())
        .status();
}

fn kill(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

// ---------------------------------------------------------------------------------------
// The lab: namespaces, veths, cgroups, directories. Everything goes in Drop.

/// Two namespaces: A (protected: agents, XDP, receivers) and B (senders, xdp-filter).
/// One veth pair per policy size i, `pcb{i}a` in A (198.19.20{i}.1) to `pcb{i}b` in B
/// (.2); one pair `pcbfa`/`pcbfb` inside B for xdp-filter.
struct Lab {
    ns_a: String,
    ns_b: String,
    cgroups: Vec<PathBuf>,
    cgroup_rels: Vec<String>,
    dir: PathBuf,
    prog_pins: PathBuf,
    pid: u32,
}

impl Lab {
    fn new() -> anyhow::Result<Lab> {
        let pid = std::process::id();
        let mount = cgroup2_mount()?;
        let cgroup_rels: Vec<String> = (0..SIZES.len())
            .map(|i| format!("portcullis-bench-{pid}-{i}"))
            .collect();
        let lab = Lab {
            ns_a: format!("pcbench{pid}a"),
            ns_b: format!("pcbench{pid}b"),
            cgroups: cgroup_rels.iter().map(|r| mount.join(r)).collect(),
            cgroup_rels,
            dir: std::env::temp_dir().join(format!("portcullis-bench-{pid}")),
            prog_pins: PathBuf::from(format!("/sys/fs/bpf/portcullis-bench-{pid}-progs")),
            pid,
        };
        // From here on, Drop cleans up whatever exists.
        fs::create_dir_all(&lab.dir)?;
        for c in &lab.cgroups {
            fs::create_dir_all(c).with_context(|| format!("creating cgroup {}", c.display()))?;
        }
        let (a, b) = (&lab.ns_a, &lab.ns_b);
        let mut script = format!(
            "set -e; ip netns add {a}; ip netns add {b}; ip -n {a} link set lo up; ip -n {b} link set lo up
             ip -n {b} link add pcbfa type veth peer name pcbfb; ip -n {b} link set pcbfa up; ip -n {b} link set pcbfb up\n"
        );
        for i in 0..SIZES.len() {
            let _ = writeln!(
                script,
                "ip link add pcb{i}a netns {a} type veth peer name pcb{i}b netns {b}
                 ip -n {a} addr add 198.19.20{i}.1/24 dev pcb{i}a; ip -n {b} addr add 198.19.20{i}.2/24 dev pcb{i}b
                 ip -n {a} link set pcb{i}a up; ip -n {b} link set pcb{i}b up"
            );
        }
        shell(&script).context("creating the benchmark's namespaces and veths")?;
        Ok(lab)
    }

    fn pin_dir(&self, i: usize) -> PathBuf {
        PathBuf::from(format!("/sys/fs/bpf/portcullis-bench-{}-{i}", self.pid))
    }

    fn state_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("state-{i}"))
    }

    /// Writes the generated profile and site config of size `i` and returns the site
    /// config's path. `xdp`: whether the site attaches XDP to the size's veth.
    fn site(&self, i: usize, label: &str, rules: usize, xdp: bool) -> anyhow::Result<PathBuf> {
        let profile = self.dir.join(format!("profile-{label}.toml"));
        if !profile.exists() {
            let mut p = format!(
                "slug = \"bench-{label}\"\nproduct = \"bench {label}\"\nvendor = \"portcullis bench\"\nsource = \"generated\"\n"
            );
            let mut rule = |id: &str, ports: &str| {
                let _ = write!(
                    p,
                    "\n[[rule]]\nid = \"{id}\"\ndirection = \"both\"\nprotocol = \"both\"\nports = {ports}\nwhy = \"benchmark\"\nsource = \"generated\"\n"
                );
            };
            for r in 0..rules {
                rule(&format!("r{r}"), &(BASE_PORT as usize + r).to_string());
            }
            if label == "full" {
                rule("low", &format!("\"1-{}\"", DENIED_PORT - 1));
                rule("high", &format!("\"{}-65535\"", DENIED_PORT + 1));
            }
            fs::write(&profile, p)?;
        }
        let site = self.dir.join(format!("site-{label}.toml"));
        fs::write(
            &site,
            format!(
                "profile = \"{}\"\nmode = \"enforce\"\nfailsafe = false\nscope = [\"{}\"]\nxdp = [{}]\npin_dir = \"{}\"\n",
                profile.display(),
                self.cgroup_rels[i],
                if xdp {
                    format!("\"pcb{i}a\"")
                } else {
                    String::new()
                },
                self.pin_dir(i).display()
            ),
        )?;
        Ok(site)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.ns_a])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.ns_b])
            .status();
        for c in &self.cgroups {
            // Receivers and agents are gone by now (their guards drop first); a cgroup
            // with a process left in it cannot be removed and is reported.
            if c.exists()
                && let Err(e) = fs::remove_dir(c)
            {
                eprintln!("bench: could not remove cgroup {}: {e}", c.display());
            }
        }
        let _ = fs::remove_dir_all(&self.prog_pins);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------
// The agent under test.

/// What the agent's output readers forward: the lines the benchmark waits for.
enum Line {
    Ready(Instant, String),
    Reloaded(Instant),
    Rejected(String),
    Closed,
}

/// A running `portcullis run`; stopped (SIGTERM, then `portcullis detach`) on drop.
struct Agent {
    child: Child,
    lines: mpsc::Receiver<Line>,
    tail: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    env: Vec<(&'static str, PathBuf)>,
    portcullis: PathBuf,
    ns: String,
    index: usize,
    startup: Duration,
    ready_line: String,
}

impl Agent {
    fn start(tools: &Tools, lab: &Lab, i: usize, site: &Path) -> anyhow::Result<Agent> {
        let env = vec![
            ("PORTCULLIS_PIN_DIR", lab.pin_dir(i)),
            ("PORTCULLIS_STATE_DIR", lab.state_dir(i)),
        ];
        let mut cmd = in_ns(&lab.ns_a, &tools.portcullis);
        cmd.arg("run")
            .arg("--config")
            .arg(site)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let t0 = Instant::now();
        let mut child = cmd.spawn().context("starting portcullis run")?;
        let (tx, lines) = mpsc::channel();
        let tail = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let out = child.stdout.take().context("agent stdout")?;
        let err = child.stderr.take().context("agent stderr")?;
        for (stream, is_err) in [
            (Box::new(out) as Box<dyn std::io::Read + Send>, false),
            (Box::new(err), true),
        ] {
            let tx = tx.clone();
            let tail = tail.clone();
            // Reads continuously (deny events would otherwise fill the pipe and block
            // the agent); timestamps the lines the benchmark waits for as they arrive.
            thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let now = Instant::now();
                    if line.starts_with("ready:") {
                        let _ = tx.send(Line::Ready(now, line.clone()));
                    } else if line.contains("reloaded: ") {
                        let _ = tx.send(Line::Reloaded(now));
                    } else if line.contains("reload rejected") {
                        let _ = tx.send(Line::Rejected(line.clone()));
                    }
                    if is_err {
                        let mut t = tail
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        t.push(line);
                        if t.len() > 20 {
                            t.remove(0);
                        }
                    }
                }
                let _ = tx.send(Line::Closed);
            });
        }
        let mut agent = Agent {
            child,
            lines,
            tail,
            env,
            portcullis: tools.portcullis.clone(),
            ns: lab.ns_a.clone(),
            index: i,
            startup: Duration::ZERO,
            ready_line: String::new(),
        };
        loop {
            match agent.lines.recv_timeout(Duration::from_secs(60)) {
                Ok(Line::Ready(at, line)) => {
                    agent.startup = at - t0;
                    agent.ready_line = line
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("rules="))
                        .unwrap_or("?")
                        .to_owned();
                    return Ok(agent);
                }
                Ok(Line::Reloaded(_) | Line::Rejected(_)) => {}
                Ok(Line::Closed) | Err(_) => {
                    thread::sleep(Duration::from_millis(100));
                    bail!(
                        "agent {i} did not become ready ({}): {}",
                        site.display(),
                        agent.tail().join(" | ")
                    );
                }
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn tail(&self) -> Vec<String> {
        self.tail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Sends SIGHUP and waits for the agent's "reloaded:" log line. Returns the time
    /// from the signal to the line.
    fn reload(&mut self) -> anyhow::Result<Duration> {
        while self.lines.try_recv().is_ok() {}
        let t0 = Instant::now();
        kill(self.pid(), "HUP");
        loop {
            match self.lines.recv_timeout(Duration::from_secs(60)) {
                Ok(Line::Reloaded(at)) => return Ok(at - t0),
                Ok(Line::Rejected(why)) => bail!("agent {} rejected a reload: {why}", self.index),
                Ok(Line::Ready(..)) => {}
                Ok(Line::Closed) | Err(_) => bail!(
                    "agent {} did not answer a reload: {}",
                    self.index,
                    self.tail().join(" | ")
                ),
            }
        }
    }

    /// The packets the agent's programs denied so far (cgroup and XDP layers), from
    /// `portcullis status --json`.
    fn denied(&self) -> anyhow::Result<u64> {
        let mut cmd = Command::new(&self.portcullis);
        cmd.args(["status", "--json"]);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let v: Value =
            serde_json::from_str(&output(&mut cmd)?).context("parsing portcullis status --json")?;
        // Both layers: during S1 only XDP sees the flood, during S2 only cgroup_skb.
        let cgroup = v["denied"]["packets"]
            .as_u64()
            .context("status --json has no denied.packets")?;
        Ok(cgroup + v["xdp"]["denied"]["packets"].as_u64().unwrap_or(0))
    }

    /// The ids of the programs the agent attached, from its pinned links.
    fn program_ids(&self) -> anyhow::Result<BTreeMap<&'static str, u64>> {
        let links = self.env[0].1.join("links");
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
                bail!(
                    "agent {} has no pinned {k} link under {}",
                    self.index,
                    links.display()
                );
            }
        }
        Ok(ids)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        kill(self.pid(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // The agent detaches on SIGTERM; this catches a crash or a kill.
        let mut cmd = in_ns(&self.ns, &self.portcullis);
        cmd.arg("detach")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let _ = cmd.status();
    }
}

/// Pins a program by id under the lab's program directory (test_run needs an fd).
fn pin_program(lab: &Lab, id: u64, name: &str) -> anyhow::Result<PathBuf> {
    fs::create_dir_all(&lab.prog_pins)?;
    let path = lab.prog_pins.join(name);
    let _ = fs::remove_file(&path);
    output(
        Command::new("bpftool")
            .args(["prog", "pin", "id", &id.to_string()])
            .arg(&path),
    )?;
    Ok(path)
}

// ---------------------------------------------------------------------------------------
// xdp-filter, the peer of M3.

/// xdp-filter (xdp-tools) loaded on `pcbfa` in namespace B with policy deny and the
/// given ports allowed; unloaded on drop.
struct XdpFilter {
    ns: String,
    prog_id: u64,
    features: String,
}

impl XdpFilter {
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
        let xf = |args: &[&str]| {
            let mut c = in_ns(&lab.ns_b, "xdp-filter");
            // The program itself on the interface, not libxdp's dispatcher, so its id
            // is the one to test_run.
            c.env("LIBXDP_SKIP_DISPATCHER", "1").args(args);
            output(&mut c)
        };
        xf(&["load", "-m", "skb", "-p", "deny", "pcbfa"])?;
        let mut filter = XdpFilter {
            ns: lab.ns_b.clone(),
            prog_id: 0,
            features: String::new(),
        };
        for p in 0..ports {
            xf(&["port", &(BASE_PORT as usize + p).to_string()])?;
        }
        let v: Value = serde_json::from_str(&output(
            Command::new("ip").args(["-n", &lab.ns_b, "-j", "-d", "link", "show", "pcbfa"]),
        )?)?;
        let prog = &v[0]["xdp"]["prog"];
        let prog_id = prog["id"]
            .as_u64()
            .context("xdp-filter's program id (ip -d link show)")?;
        let status = xf(&["status"])?;
        let features = status
            .lines()
            .skip_while(|l| !l.contains("Enabled features"))
            .find(|l| l.contains("pcbfa"))
            .and_then(|l| l.split_whitespace().last())
            .unwrap_or("?")
            .to_owned();
        println!(
            "    xdp-filter program {} (id {prog_id}), features {features}",
            prog["name"].as_str().unwrap_or("?")
        );
        filter.prog_id = prog_id;
        filter.features = features;
        Ok(filter)
    }
}

impl Drop for XdpFilter {
    fn drop(&mut self) {
        let _ = in_ns(&self.ns, "xdp-filter")
            .args(["unload", "pcbfa"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

// ---------------------------------------------------------------------------------------
// Frames for test_run: Ethernet + IP + transport, no checksums (neither XDP nor the
// cgroup programs verify them). 64 bytes where the headers allow: IPv6 TCP needs 74.

const LOCAL4: [u8; 4] = [198, 19, 200, 1];
const REMOTE4: [u8; 4] = [198, 19, 200, 2];
const LOCAL6: [u8; 16] = [0xfd, 0x71, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const REMOTE6: [u8; 16] = [0xfd, 0x71, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

/// A test frame. `outbound`: from this host (egress), else to it (ingress, XDP).
fn frame(v6: bool, tcp: bool, port: u16, outbound: bool) -> Vec<u8> {
    // The remote end's port for egress, the local one otherwise: the policy port.
    let (sport, dport): (u16, u16) = (40000, port);
    let mut l4 = Vec::new();
    l4.extend_from_slice(&sport.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    if tcp {
        // seq, ack, data offset 5, SYN, window, checksum, urgent.
        l4.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    } else {
        l4.extend_from_slice(&[0, 0, 0, 0]);
    }
    let ip_hdr = if v6 { 40 } else { 20 };
    let pad = 64usize.saturating_sub(14 + ip_hdr + l4.len());
    l4.extend(std::iter::repeat_n(0u8, pad));
    if !tcp {
        let len = l4.len() as u16;
        l4[4..6].copy_from_slice(&len.to_be_bytes());
    }
    let proto = if tcp { 6 } else { 17 };
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    if v6 {
        let (src, dst) = if outbound {
            (LOCAL6, REMOTE6)
        } else {
            (REMOTE6, LOCAL6)
        };
        f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
        f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        f.extend_from_slice(&[proto, 64]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
    } else {
        let (src, dst) = if outbound {
            (LOCAL4, REMOTE4)
        } else {
            (REMOTE4, LOCAL4)
        };
        f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
        f.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
    }
    f.extend_from_slice(&l4);
    f
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

// ---------------------------------------------------------------------------------------
// M1, M2, M3: BPF_PROG_TEST_RUN.

/// The measured paths: (hook, family, protocol, verdict).
fn cases() -> Vec<(&'static str, &'static str, &'static str, &'static str)> {
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

fn measure_programs(
    tools: &Tools,
    lab: &Lab,
    plan: &Plan,
    agents: &[Agent],
    filter: &XdpFilter,
    r: &mut Results,
) -> anyhow::Result<()> {
    step(&format!(
        "bench M1/M2/M3: BPF_PROG_TEST_RUN, repeat {}, {} rounds: 4 policy sizes x 24 paths, no-op baselines, xdp-filter",
        plan.repeat, plan.rounds
    ));
    let mut jobs: Vec<String> = Vec::new();
    for (i, agent) in agents.iter().enumerate() {
        let size = SIZES[i].0;
        let ids = agent.program_ids()?;
        let mut pins = BTreeMap::new();
        for (kind, id) in &ids {
            pins.insert(*kind, pin_program(lab, *id, &format!("{size}-{kind}"))?);
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
            // (config, parse, cgroup id, one counter) and a non-IP frame on XDP.
            let mut lo = frame(false, false, 53, false);
            lo[26..30].copy_from_slice(&[127, 0, 0, 1]);
            lo[30..34].copy_from_slice(&[127, 0, 0, 1]);
            jobs.push(format!(
                "probe.ingress.loopback=skb-ingress:{}:{}",
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
    let xf = pin_program(lab, filter.prog_id, "xdp-filter")?;
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
    let out = output(
        Command::new(&tools.prog_run)
            .arg("--object")
            .arg(&tools.object)
            .args([
                "--repeat",
                &plan.repeat.to_string(),
                "--runs",
                &plan.rounds.to_string(),
            ])
            .args(&jobs),
    )?;
    // label -> per-round ns, return values.
    let mut ns: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() == 4 {
            ns.entry(f[0].to_owned())
                .or_default()
                .push(f[2].parse().unwrap_or(f64::NAN));
            let ret: u32 = f[3].parse().unwrap_or(99);
            // The verdict must be what the label says, or the figure measures a path
            // it does not name.
            let want = match (
                f[0].contains(".xdp.") || f[0].starts_with("xdpfilter."),
                f[0].ends_with(".allow"),
                f[0].ends_with(".deny"),
            ) {
                (true, true, _) => Some(2),
                (true, _, true) => Some(1),
                (false, true, _) => Some(1),
                (false, _, true) => Some(0),
                _ => None,
            };
            if want.is_some_and(|w| w != ret) {
                bail!(
                    "{}: the program returned {ret}, expected {}: the frame does not take the path it is named after",
                    f[0],
                    want.unwrap_or(0)
                );
            }
        }
    }
    let get = |k: &str| {
        ns.get(k)
            .cloned()
            .with_context(|| format!("prog_run gave no result for {k}"))
    };
    let ratio = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x / y).collect::<Vec<f64>>();

    step("bench M1: ns/packet of our programs against a no-op program of the same type (10 rules)");
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
            &format!("{key}.ratio"),
            "x no-op",
            ratio(&ours, &noop),
            Some(Goal::AtMost(1.25)),
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
    for fam in ["v4", "v6"] {
        for proto in ["tcp", "udp"] {
            for verdict in ["allow", "deny"] {
                let theirs = get(&format!("xdpfilter.{fam}.{proto}.{verdict}"))?;
                let ours = get(&format!("1000.xdp.{fam}.{proto}.{verdict}"))?;
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
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// S1, S2: floods between the namespaces.

/// A trafgen flood from B to size i's veth in A, 60-byte frames (64 on the wire with the
/// FCS) to `ports` consecutive UDP ports from [`FLOOD_PORT`]; killed on drop.
struct Flood {
    child: Child,
    log: PathBuf,
}

impl Flood {
    fn start(lab: &Lab, i: usize, ports: usize) -> anyhow::Result<Flood> {
        let v: Value = serde_json::from_str(&output(Command::new("ip").args([
            "-n",
            &lab.ns_a,
            "-j",
            "link",
            "show",
            &format!("pcb{i}a"),
        ]))?)?;
        let mac = v[0]["address"].as_str().context("the veth's MAC address")?;
        let conf = lab.dir.join(format!("flood-{i}-{ports}.cfg"));
        fs::write(
            &conf,
            format!(
                "{{ eth(da={mac}, type=0x0800), ipv4(saddr=198.19.20{i}.2, daddr=198.19.20{i}.1, ttl=64), udp(sp=40000, dp=dinc({FLOOD_PORT}, {})), fill(0x00, 18) }}\n",
                FLOOD_PORT as usize + ports - 1
            ),
        )?;
        let log = lab.dir.join("trafgen.log");
        let file = fs::File::create(&log)?;
        let child = in_ns(&lab.ns_b, "trafgen")
            .args(["--dev", &format!("pcb{i}b"), "--conf"])
            .arg(&conf)
            .args(["--cpus", "1"])
            // Its own process group: trafgen forks a sender per CPU, and only a ^C-like
            // SIGINT to the whole group stops the sender and makes it print its summary.
            .process_group(0)
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("starting trafgen")?;
        Ok(Flood { child, log })
    }

    /// Stops the flood and returns how long trafgen says it sent, in seconds.
    fn stop(mut self) -> anyhow::Result<f64> {
        kill_group(self.child.id(), "INT");
        let status = self.child.wait()?;
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        // trafgen's summary: "1 sec, 959826 usec on CPU0 (243172 packets)".
        let secs = text
            .lines()
            .filter(|l| l.contains("usec on CPU"))
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                Some(w.first()?.parse::<f64>().ok()? + w.get(2)?.parse::<f64>().ok()? / 1e6)
            })
            .fold(0.0, f64::max);
        if secs <= 0.0 {
            bail!(
                "trafgen ({status}) reported no sending time: {}",
                text.trim()
            );
        }
        Ok(secs)
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        kill_group(self.child.id(), "KILL");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Drops per second: the filter's drop counter before and after one flood, divided by
/// the time trafgen spent sending. The counters are read while nothing is sent, so
/// reading them (a process each) takes no CPU from the flood.
fn drop_rate(
    lab: &Lab,
    plan: &Plan,
    i: usize,
    ports: usize,
    count: &dyn Fn() -> anyhow::Result<u64>,
) -> anyhow::Result<f64> {
    let c0 = count()?;
    let flood = Flood::start(lab, i, ports)?;
    thread::sleep(plan.flood);
    let secs = flood.stop()?;
    // Let the receive path drain what is queued.
    thread::sleep(Duration::from_millis(100));
    let c1 = count()?;
    if c1 <= c0 {
        bail!(
            "no drops counted during the flood (size {i}, {ports} ports): the filter did not see it"
        );
    }
    Ok((c1 - c0) as f64 / secs)
}

/// An nftables table in namespace A, deleted on drop.
struct NftTable {
    ns: String,
    family: &'static str,
}

const NFT_TABLE: &str = "pcbench";

impl NftTable {
    /// `hook`: "ingress" (netdev, on the veth) or "input" (inet). `set`: a set lookup,
    /// else a linear chain of one rule per allowed port.
    fn load(lab: &Lab, i: usize, ports: usize, hook: &str, set: bool) -> anyhow::Result<NftTable> {
        let family = if hook == "ingress" { "netdev" } else { "inet" };
        let allowed: Vec<String> = (0..ports)
            .map(|p| (BASE_PORT as usize + p).to_string())
            .collect();
        let chain_head = if hook == "ingress" {
            format!("type filter hook ingress device \"pcb{i}a\" priority 0; policy accept;")
        } else {
            "type filter hook input priority 0; policy accept;".to_owned()
        };
        let body = if set {
            "udp dport @allowed accept\n".to_owned()
        } else {
            allowed
                .iter()
                .map(|p| format!("udp dport {p} accept\n"))
                .collect()
        };
        let script = format!(
            "table {family} {NFT_TABLE} {{\n set allowed {{ type inet_service; elements = {{ {} }} }}\n counter drops {{ }}\n chain filter {{\n {chain_head}\n {body} meta l4proto udp counter name \"drops\" drop\n }}\n}}\n",
            allowed.join(", ")
        );
        let path = lab.dir.join("nft.conf");
        fs::write(&path, script)?;
        let table = NftTable {
            ns: lab.ns_a.clone(),
            family,
        };
        output(in_ns(&lab.ns_a, "nft").arg("-f").arg(&path))
            .context("loading the nftables ruleset")?;
        Ok(table)
    }

    fn drops(&self) -> anyhow::Result<u64> {
        let text = output(in_ns(&self.ns, "nft").args([
            "list",
            "counter",
            self.family,
            NFT_TABLE,
            "drops",
        ]))?;
        text.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .context("parsing nft's counter")
    }
}

impl Drop for NftTable {
    fn drop(&mut self) {
        let _ = in_ns(&self.ns, "nft")
            .args(["delete", "table", self.family, NFT_TABLE])
            .status();
    }
}

/// A process in namespace A and size i's cgroup with a UDP socket bound to each flooded
/// port, so the flood reaches sockets (cgroup_skb ingress runs at socket delivery).
struct Receiver(Child);

impl Receiver {
    fn start(lab: &Lab, i: usize, ports: usize) -> anyhow::Result<Receiver> {
        let py = format!(
            "import resource,socket,time\nresource.setrlimit(resource.RLIMIT_NOFILE,(4096,4096))\nss=[]\nfor p in range({FLOOD_PORT},{}):\n s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.bind(('198.19.20{i}.1',p)); ss.append(s)\nprint('bound',flush=True)\ntime.sleep(3600)\n",
            FLOOD_PORT as usize + ports
        );
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("echo $$ > {}/cgroup.procs && exec nsenter --net=/run/netns/{} -- python3 -c \"$1\"", lab.cgroups[i].display(), lab.ns_a))
            .arg("sh")
            .arg(py)
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the UDP receiver")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("receiver stdout")?).read_line(&mut line)?;
        let r = Receiver(child);
        if line.trim() != "bound" {
            bail!("the UDP receiver could not bind its {ports} ports");
        }
        Ok(r)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn measure_floods(
    _tools: &Tools,
    lab: &Lab,
    plan: &Plan,
    agents: &mut [Agent],
    r: &mut Results,
) -> anyhow::Result<()> {
    for (i, (size, ports)) in SIZES.iter().enumerate().take(3) {
        step(&format!(
            "bench S1: {ports}-port UDP flood, drops/s: our XDP vs nftables netdev ingress (set, linear chain of {ports})"
        ));
        let (mut ours, mut set, mut linear) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..plan.rounds {
            // The agent's XDP goes on for our measurement and off for nftables' (XDP
            // runs before netdev ingress and would drop the flood first): a reload of
            // the same site file with `xdp` rewritten.
            lab.site(i, size, *ports, true)?;
            agents[i].reload()?;
            let agent = &agents[i];
            ours.push(drop_rate(lab, plan, i, *ports, &|| agent.denied())?);
            lab.site(i, size, *ports, false)?;
            agents[i].reload()?;
            for (set_lookup, out) in [(true, &mut set), (false, &mut linear)] {
                let t = NftTable::load(lab, i, *ports, "ingress", set_lookup)?;
                out.push(drop_rate(lab, plan, i, *ports, &|| t.drops())?);
            }
        }
        add_flood(
            r,
            "S1",
            size,
            "ours_xdp",
            "nft_netdev_set",
            "nft_netdev_linear",
            ours,
            set,
            linear,
        );

        step(&format!(
            "bench S2: {ports}-port UDP flood to bound sockets, drops/s: our cgroup_skb vs nftables inet input"
        ));
        let receiver = Receiver::start(lab, i, *ports)?;
        let (mut ours, mut set, mut linear) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..plan.rounds {
            let agent = &agents[i];
            ours.push(drop_rate(lab, plan, i, *ports, &|| agent.denied())?);
            for (set_lookup, out) in [(true, &mut set), (false, &mut linear)] {
                let t = NftTable::load(lab, i, *ports, "input", set_lookup)?;
                out.push(drop_rate(lab, plan, i, *ports, &|| t.drops())?);
            }
        }
        drop(receiver);
        add_flood(
            r,
            "S2",
            size,
            "ours_cgroup_skb",
            "nft_inet_set",
            "nft_inet_linear",
            ours,
            set,
            linear,
        );
    }
    Ok(())
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call per flood figure, names spelled out"
)]
fn add_flood(
    r: &mut Results,
    fig: &str,
    size: &str,
    ours_name: &str,
    set_name: &str,
    linear_name: &str,
    ours: Vec<f64>,
    set: Vec<f64>,
    linear: Vec<f64>,
) {
    let ratio = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x / y).collect::<Vec<f64>>();
    r.add(
        &format!("{fig}.{size}.{ours_name}.pps"),
        "drops/s",
        ours.clone(),
        None,
    );
    r.add(
        &format!("{fig}.{size}.{set_name}.pps"),
        "drops/s",
        set.clone(),
        None,
    );
    r.add(
        &format!("{fig}.{size}.{linear_name}.pps"),
        "drops/s",
        linear.clone(),
        None,
    );
    r.add(
        &format!("{fig}.{size}.ours_vs_set"),
        "ratio",
        ratio(&ours, &set),
        Some(Goal::AtLeast(1.0)),
    );
    r.add(
        &format!("{fig}.{size}.ours_vs_linear"),
        "ratio",
        ratio(&ours, &linear),
        None,
    );
}

// ---------------------------------------------------------------------------------------
// Startup, memory, reload.

fn measure_agent(tools: &Tools, lab: &Lab, plan: &Plan, r: &mut Results) -> anyhow::Result<()> {
    let i = 3;
    step(&format!(
        "bench startup/memory: {} starts of the agent with the full-range profile",
        plan.rounds
    ));
    let site = lab.site(i, "full", 1000, true)?;
    let (mut startup, mut rss, mut pss) = (Vec::new(), Vec::new(), Vec::new());
    let mut last = None;
    for round in 0..plan.rounds {
        drop(last.take());
        let agent = Agent::start(tools, lab, i, &site)?;
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
    r.add("startup.ms", "ms", startup, None);
    r.add("memory.vmrss_mib", "MiB", rss, Some(Goal::AtMost(20.0)));
    r.add("memory.pss_mib", "MiB", pss, Some(Goal::AtMost(20.0)));

    let mut agent = last.context("the last agent")?;
    step(&format!(
        "bench reload: {} reloads unchanged, {} cycling full range -> 1000 -> 100 rules",
        plan.reloads, plan.reloads
    ));
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
    for (name, v) in [("unchanged", same), ("changed", changed)] {
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
            None,
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

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    s[rank.min(s.len()) - 1]
}

// ---------------------------------------------------------------------------------------
// Results.

#[derive(Clone, Copy)]
enum Goal {
    AtMost(f64),
    AtLeast(f64),
}

impl Goal {
    fn met(self, v: f64) -> bool {
        match self {
            Goal::AtMost(g) => v <= g,
            Goal::AtLeast(g) => v >= g,
        }
    }

    fn text(self) -> String {
        match self {
            Goal::AtMost(g) => format!("<= {g}"),
            Goal::AtLeast(g) => format!(">= {g}"),
        }
    }
}

struct Figure {
    unit: &'static str,
    samples: Vec<f64>,
    goal: Option<Goal>,
}

impl Figure {
    fn median(&self) -> f64 {
        percentile_median(&self.samples)
    }
    fn min(&self) -> f64 {
        self.samples.iter().copied().fold(f64::INFINITY, f64::min)
    }
    fn max(&self) -> f64 {
        self.samples
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max)
    }
}

fn percentile_median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

#[derive(Default)]
struct Results {
    figures: BTreeMap<String, Figure>,
    /// Raw series that are not figures themselves (reload latencies).
    samples: BTreeMap<String, Vec<f64>>,
    xdp_filter_features: String,
}

impl Results {
    fn add(&mut self, key: &str, unit: &'static str, samples: Vec<f64>, goal: Option<Goal>) {
        self.figures.insert(
            key.to_owned(),
            Figure {
                unit,
                samples,
                goal,
            },
        );
    }

    fn med(&self, key: &str) -> f64 {
        self.figures.get(key).map_or(f64::NAN, Figure::median)
    }

    fn json(&self, m: &Machine) -> Value {
        let mut figures = serde_json::Map::new();
        for (k, f) in &self.figures {
            let mut o = json!({
                "median": round3(f.median()),
                "min": round3(f.min()),
                "max": round3(f.max()),
                "unit": f.unit,
                "samples": f.samples.iter().map(|v| round3(*v)).collect::<Vec<_>>(),
            });
            if let Some(g) = f.goal {
                o["goal"] = json!(g.text());
                o["met"] = json!(g.met(f.median()));
            }
            figures.insert(k.clone(), o);
        }
        json!({
            "machine": m.json(),
            "figures": figures,
            "raw": self.samples.iter().map(|(k, v)| (k.clone(), json!(v.iter().map(|x| round3(*x)).collect::<Vec<_>>()))).collect::<serde_json::Map<_, _>>(),
        })
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Where and how the figures were taken.
struct Machine {
    date: String,
    kernel: String,
    cpu: String,
    cores: usize,
    memory: String,
    os: String,
    commit: String,
    rounds: usize,
    repeat: u32,
    flood_ms: u128,
    quick: bool,
    elapsed_s: f64,
}

impl Machine {
    fn probe(plan: &Plan, quick: bool, elapsed: Duration) -> Machine {
        let run = |c: &str| {
            shell(c)
                .map(|s| s.trim().to_owned())
                .unwrap_or_else(|_| "?".to_owned())
        };
        Machine {
            date: run("date -u '+%Y-%m-%d %H:%M UTC'"),
            kernel: run("uname -r"),
            cpu: run("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-"),
            cores: thread::available_parallelism().map_or(0, usize::from),
            memory: run("awk '/MemTotal/ {printf \"%.1f GiB\", $2/1048576}' /proc/meminfo"),
            os: run(". /etc/os-release && echo \"$PRETTY_NAME\""),
            commit: run("git rev-parse --short HEAD"),
            rounds: plan.rounds,
            repeat: plan.repeat,
            flood_ms: plan.flood.as_millis(),
            quick,
            elapsed_s: elapsed.as_secs_f64(),
        }
    }

    fn json(&self) -> Value {
        json!({
            "date": self.date, "kernel": self.kernel, "cpu": self.cpu, "cores": self.cores,
            "memory": self.memory, "os": self.os, "commit": self.commit, "rounds": self.rounds,
            "test_run_repeat": self.repeat, "flood_window_ms": self.flood_ms as u64, "quick": self.quick,
            "bench_seconds": round3(self.elapsed_s),
        })
    }
}

fn print_summary(r: &Results) {
    println!();
    println!("{:<48} {:>12} {:>22}  goal", "figure", "median", "min-max");
    for (k, f) in &r.figures {
        if k.starts_with("M2.") && !k.ends_with("full_vs_10") {
            continue;
        }
        let goal = f.goal.map_or(String::new(), |g| {
            format!(
                "{} {}",
                g.text(),
                if g.met(f.median()) { "met" } else { "NOT met" }
            )
        });
        println!(
            "{k:<48} {:>12.3} {:>10.3}-{:<11.3} {goal}",
            f.median(),
            f.min(),
            f.max()
        );
    }
}

// ---------------------------------------------------------------------------------------
// BENCHMARKS.md and the SVG.

/// The agent's own figures (memory, startup, reload): in the headline and in their table.
const AGENT_FIGURES: [&str; 7] = [
    "memory.vmrss_mib",
    "memory.pss_mib",
    "startup.ms",
    "reload.unchanged.p50_ms",
    "reload.unchanged.p99_ms",
    "reload.changed.p50_ms",
    "reload.changed.p99_ms",
];

/// A ratio as a table cell: "median (min-max)", or "-" when it was not measured.
fn ratio_cell(f: Option<&Figure>) -> String {
    f.map_or("-".to_owned(), |f| {
        format!("{} ({}-{})", fmt(f.median()), fmt(f.min()), fmt(f.max()))
    })
}

/// Whether a ratio's median meets its goal, as a table cell ("" when not measured).
fn goal_cell(f: Option<&Figure>, met: impl Fn(f64) -> bool) -> &'static str {
    f.map_or("", |f| if met(f.median()) { "met" } else { "not met" })
}

fn fmt(v: f64) -> String {
    if !v.is_finite() {
        "-".to_owned()
    } else if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn row(r: &Results, key: &str) -> String {
    match r.figures.get(key) {
        None => format!("| `{key}` | - | - | - | |"),
        Some(f) => {
            let goal = f.goal.map_or(String::new(), |g| {
                format!(
                    "{} {}",
                    g.text(),
                    if g.met(f.median()) {
                        "met"
                    } else {
                        "**not met**"
                    }
                )
            });
            format!(
                "| `{key}` | {} {} | {}-{} | {} | {goal} |",
                fmt(f.median()),
                f.unit,
                fmt(f.min()),
                fmt(f.max()),
                f.samples.len()
            )
        }
    }
}

/// Writes BENCHMARKS.md. The prose that does not depend on the numbers lives in
/// `xtask/bench/analysis.md` (hand-written) and is appended.
fn markdown(r: &Results, m: &Machine) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# portcullis benchmarks\n");
    let _ = writeln!(
        s,
        "Generated by `cargo xtask bench`{} on {}. Do not edit the tables by hand: rerun the benchmark.\n",
        if m.quick {
            " --quick (smoke run: NOT the published figures)"
        } else {
            ""
        },
        m.date
    );
    let _ = writeln!(s, "| machine | |\n|---|---|");
    let _ = writeln!(s, "| CPU | {} ({} cores) |", m.cpu, m.cores);
    let _ = writeln!(s, "| memory | {} |", m.memory);
    let _ = writeln!(s, "| OS, kernel | {}, {} |", m.os, m.kernel);
    let _ = writeln!(s, "| commit | {} |", m.commit);
    let _ = writeln!(
        s,
        "| method | {} rounds per figure (median, min-max); BPF_PROG_TEST_RUN repeat {}; flood windows {} ms; whole bench {:.0} s |\n",
        m.rounds, m.repeat, m.flood_ms, m.elapsed_s
    );

    let _ = writeln!(s, "## Headline\n");
    let _ = writeln!(
        s,
        "| figure | median | min-max | runs | goal |\n|---|---|---|---|---|"
    );
    let worst = |prefix: &str, suffix: &str| -> Option<String> {
        r.figures
            .iter()
            .filter(|(k, _)| k.starts_with(prefix) && k.ends_with(suffix))
            .max_by(|a, b| a.1.median().total_cmp(&b.1.median()))
            .map(|(k, _)| k.clone())
    };
    for (prefix, suffix) in [
        ("M1.xdp.", ".ratio"),
        ("M1.ingress.", ".ratio"),
        ("M1.egress.", ".ratio"),
        ("M2.", ".full_vs_10"),
        ("M3.", ".ours_vs_xdp_filter"),
    ] {
        if let Some(k) = worst(prefix, suffix) {
            let line = row(r, &k);
            let _ = writeln!(
                s,
                "{} (worst of the paths) |",
                line.trim_end_matches('|').trim_end()
            );
        }
    }
    for k in [
        "M2.all_paths.full_vs_10",
        "M2.all_paths.1000_vs_10",
        "S1.1000.ours_vs_set",
        "S1.1000.ours_vs_linear",
        "S2.1000.ours_vs_set",
        "S2.1000.ours_vs_linear",
    ]
    .into_iter()
    .chain(AGENT_FIGURES)
    {
        let _ = writeln!(s, "{}", row(r, k));
    }

    let _ = writeln!(
        s,
        "\n## M1: ns per packet against a no-op program (10-rule policy)\n"
    );
    let _ = writeln!(
        s,
        "| path | ours ns (median, min-max) | no-op ns | ours / no-op (median, min-max) | goal <= 1.25 |\n|---|---|---|---|---|"
    );
    for (hook, fam, proto, verdict) in cases() {
        let key = format!("M1.{hook}.{fam}.{proto}.{verdict}");
        let dir = if hook == "egress" { "out" } else { "in" };
        let noop = format!(
            "M1.noop.{}.{fam}.{proto}.{dir}.ns",
            if hook == "xdp" { "xdp" } else { "skb" }
        );
        let (Some(ns), Some(ra)) = (
            r.figures.get(&format!("{key}.ns")),
            r.figures.get(&format!("{key}.ratio")),
        ) else {
            continue;
        };
        let _ = writeln!(
            s,
            "| {hook} {fam} {proto} {verdict} | {} ({}-{}) | {} | {} ({}-{}) | {} |",
            fmt(ns.median()),
            fmt(ns.min()),
            fmt(ns.max()),
            fmt(r.med(&noop)),
            fmt(ra.median()),
            fmt(ra.min()),
            fmt(ra.max()),
            if ra.median() <= 1.25 {
                "met"
            } else {
                "not met"
            }
        );
    }
    let _ = writeln!(
        s,
        "\nEarly-exit paths (same 10-rule policy), for the breakdown below:\n"
    );
    let _ = writeln!(
        s,
        "| figure | median | min-max | runs | |\n|---|---|---|---|---|"
    );
    for k in ["M1.probe.ingress.loopback.ns", "M1.probe.xdp.nonip.ns"] {
        let _ = writeln!(s, "{}", row(r, k));
    }

    let _ = writeln!(s, "\n## M2: ns per packet against policy size\n");
    let _ = writeln!(
        s,
        "| path | 10 rules | 100 | 1000 | full range | full / 10 (median, min-max) | goal <= 1.1 |\n|---|---|---|---|---|---|---|"
    );
    for (hook, fam, proto, verdict) in cases() {
        let tail = format!("{hook}.{fam}.{proto}.{verdict}");
        let ratio = r.figures.get(&format!("M2.{tail}.full_vs_10"));
        let _ = writeln!(
            s,
            "| {hook} {fam} {proto} {verdict} | {} | {} | {} | {} | {} | {} |",
            fmt(r.med(&format!("M1.{tail}.ns"))),
            fmt(r.med(&format!("M2.100.{tail}.ns"))),
            fmt(r.med(&format!("M2.1000.{tail}.ns"))),
            fmt(r.med(&format!("M2.full.{tail}.ns"))),
            ratio_cell(ratio),
            goal_cell(ratio, |m| m <= 1.1),
        );
    }

    let _ = writeln!(
        s,
        "\n## M3: our XDP program against xdp-filter, same 1000 ports\n"
    );
    let _ = writeln!(
        s,
        "xdp-filter features loaded: `{}` (policy deny, the ports allowed).\n",
        r.xdp_filter_features
    );
    let _ = writeln!(
        s,
        "| path | ours ns | xdp-filter ns | ours / xdp-filter (median, min-max) | goal <= 1.0 |\n|---|---|---|---|---|"
    );
    for fam in ["v4", "v6"] {
        for proto in ["tcp", "udp"] {
            for verdict in ["allow", "deny"] {
                let t = format!("{fam}.{proto}.{verdict}");
                let ra = r.figures.get(&format!("M3.{t}.ours_vs_xdp_filter"));
                let _ = writeln!(
                    s,
                    "| xdp {fam} {proto} {verdict} | {} | {} | {} | {} |",
                    fmt(r.med(&format!("M2.1000.xdp.{t}.ns"))),
                    fmt(r.med(&format!("M3.{t}.xdp_filter.ns"))),
                    ratio_cell(ra),
                    goal_cell(ra, |m| m <= 1.0),
                );
            }
        }
    }

    for (fig, title, names) in [
        (
            "S1",
            "S1: UDP flood, drops per second at the device (XDP vs nftables netdev ingress)",
            ["ours_xdp", "nft_netdev_set", "nft_netdev_linear"],
        ),
        (
            "S2",
            "S2: UDP flood to bound sockets, drops per second (cgroup_skb vs nftables inet input)",
            ["ours_cgroup_skb", "nft_inet_set", "nft_inet_linear"],
        ),
    ] {
        let _ = writeln!(s, "\n## {title}\n");
        let _ = writeln!(
            s,
            "| ports N | ours | nft set | nft linear (N rules) | ours / set (goal >= 1.0) | ours / linear |\n|---|---|---|---|---|---|"
        );
        for (size, _) in &SIZES[..3] {
            let cell = |k: String| {
                r.figures.get(&k).map_or("-".to_owned(), |f| {
                    format!("{} ({}-{})", fmt(f.median()), fmt(f.min()), fmt(f.max()))
                })
            };
            let set_ratio = r.figures.get(&format!("{fig}.{size}.ours_vs_set"));
            let _ = writeln!(
                s,
                "| {size} | {} | {} | {} | {}{} | {} |",
                cell(format!("{fig}.{size}.{}.pps", names[0])),
                cell(format!("{fig}.{size}.{}.pps", names[1])),
                cell(format!("{fig}.{size}.{}.pps", names[2])),
                cell(format!("{fig}.{size}.ours_vs_set")),
                set_ratio.map_or("", |f| if f.median() >= 1.0 {
                    " met"
                } else {
                    " **not met**"
                }),
                cell(format!("{fig}.{size}.ours_vs_linear")),
            );
        }
    }

    let _ = writeln!(
        s,
        "\n## Agent: memory, startup, reload (full-range profile)\n"
    );
    let _ = writeln!(
        s,
        "| figure | median | min-max | runs | goal |\n|---|---|---|---|---|"
    );
    for k in AGENT_FIGURES {
        let _ = writeln!(s, "{}", row(r, k));
    }
    let _ = writeln!(
        s,
        "\n![ns per packet against rule count](ns_per_packet.svg)\n"
    );
    let analysis = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/analysis.md");
    match fs::read_to_string(&analysis) {
        Ok(text) => s.push_str(&text),
        Err(_) => {
            s.push_str("(xtask/bench/analysis.md is missing: no method notes or explanation.)\n")
        }
    }
    s
}

/// One line of a plot: name, colour, (size index, value) points.
type Series = (String, &'static str, Vec<(usize, f64)>);

/// ns/packet against policy size: test_run cost of our programs (left) and flood cost
/// per dropped packet, 1e9 / drops per second (right), for us and the peers.
fn svg(r: &Results) -> String {
    let sizes = ["10", "100", "1000", "full"];
    let tr_key = |size: &str, path: &str| {
        if size == "10" {
            format!("M1.{path}.ns")
        } else {
            format!("M2.{size}.{path}.ns")
        }
    };
    let mut left: Vec<Series> = Vec::new();
    for (path, color) in [
        ("xdp.v4.tcp.allow", "#1f77b4"),
        ("xdp.v4.udp.deny", "#aec7e8"),
        ("ingress.v4.tcp.allow", "#2ca02c"),
        ("egress.v4.udp.deny", "#98df8a"),
    ] {
        let pts = sizes
            .iter()
            .enumerate()
            .map(|(i, s)| (i, r.med(&tr_key(s, path))))
            .filter(|p| p.1.is_finite())
            .collect();
        left.push((format!("ours {path}"), color, pts));
    }
    for (path, color) in [("v4.tcp.allow", "#d62728"), ("v4.udp.deny", "#ff9896")] {
        let v = r.med(&format!("M3.{path}.xdp_filter.ns"));
        left.push((
            format!("xdp-filter {path} (1000 ports)"),
            color,
            vec![(2, v)],
        ));
    }
    let noop = r.med("M1.noop.xdp.v4.tcp.in.ns");
    left.push((
        "no-op XDP".to_owned(),
        "#7f7f7f",
        (0..4).map(|i| (i, noop)).collect(),
    ));
    let mut right: Vec<Series> = Vec::new();
    for (fig, name, label, color) in [
        ("S1", "ours_xdp", "ours XDP", "#1f77b4"),
        ("S1", "nft_netdev_set", "nft netdev set", "#ff7f0e"),
        ("S1", "nft_netdev_linear", "nft netdev linear", "#d62728"),
        ("S2", "ours_cgroup_skb", "ours cgroup_skb", "#2ca02c"),
        ("S2", "nft_inet_set", "nft inet set", "#bcbd22"),
        ("S2", "nft_inet_linear", "nft inet linear", "#8c564b"),
    ] {
        let pts = sizes[..3]
            .iter()
            .enumerate()
            .map(|(i, s)| (i, 1e9 / r.med(&format!("{fig}.{s}.{name}.pps"))))
            .filter(|p| p.1.is_finite())
            .collect();
        right.push((label.to_owned(), color, pts));
    }
    let mut s = String::from(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"1000\" height=\"460\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"1000\" height=\"460\" fill=\"white\"/>\n",
    );
    panel(
        &mut s,
        60.0,
        "BPF_PROG_TEST_RUN: ns per packet (median)",
        &sizes,
        &left,
    );
    panel(
        &mut s,
        560.0,
        "UDP flood: ns per dropped packet (1e9 / drops per s)",
        &sizes[..3],
        &right,
    );
    s.push_str("</svg>\n");
    s
}

fn panel(s: &mut String, x0: f64, title: &str, sizes: &[&str], series: &[Series]) {
    let (w, h, y0) = (380.0, 260.0, 40.0);
    let max = series
        .iter()
        .flat_map(|(_, _, p)| p.iter().map(|q| q.1))
        .fold(0.0f64, f64::max)
        * 1.15;
    let max = if max > 0.0 { max } else { 1.0 };
    let x = |i: usize| x0 + w * (i as f64 + 0.5) / sizes.len() as f64;
    let y = |v: f64| y0 + h - h * v / max;
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"22\" font-size=\"13\" font-weight=\"bold\">{title}</text>",
        x0
    );
    let _ = writeln!(
        s,
        "<rect x=\"{x0}\" y=\"{y0}\" width=\"{w}\" height=\"{h}\" fill=\"none\" stroke=\"#444\"/>"
    );
    for t in 0..=4 {
        let v = max * t as f64 / 4.0;
        let (x1, yv, tx, ty, label) = (x0 + w, y(v), x0 - 4.0, y(v) + 4.0, fmt(v));
        let _ = writeln!(
            s,
            "<line x1=\"{x0}\" x2=\"{x1}\" y1=\"{yv:.1}\" y2=\"{yv:.1}\" stroke=\"#ddd\"/><text x=\"{tx}\" y=\"{ty:.1}\" text-anchor=\"end\">{label}</text>"
        );
    }
    for (i, label) in sizes.iter().enumerate() {
        let text = if *label == "full" {
            "full range".to_owned()
        } else {
            format!("{label} rules")
        };
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{text}</text>",
            x(i),
            y0 + h + 16.0
        );
    }
    for (n, (name, color, pts)) in series.iter().enumerate() {
        if pts.len() > 1 {
            let d: Vec<String> = pts
                .iter()
                .map(|(i, v)| format!("{:.1},{:.1}", x(*i), y(*v)))
                .collect();
            let _ = writeln!(
                s,
                "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"/>",
                d.join(" ")
            );
        }
        for (i, v) in pts {
            let _ = writeln!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"{color}\"/>",
                x(*i),
                y(*v)
            );
        }
        let ly = y0 + h + 34.0 + 15.0 * n as f64;
        let _ = writeln!(
            s,
            "<rect x=\"{x0}\" y=\"{:.1}\" width=\"12\" height=\"4\" fill=\"{color}\"/><text x=\"{}\" y=\"{:.1}\">{name}</text>",
            ly - 4.0,
            x0 + 18.0,
            ly
        );
    }
}
