//! Support for the root integration tests: a small lab of real kernel objects.
//!
//! A [`Lab`] is two network namespaces joined by a veth pair (the protected host "A"
//! and its peer "B", addresses in the benchmarking range 198.18.0.0/15 and the ULA
//! range fd70::/16), a cgroup v2 child the programs are attached to, and the processes
//! started in them. Everything is removed in `Drop`, after a panic too. Nothing touches
//! the host's root cgroup, its real interfaces or any address outside the lab.
//!
//! The tests run the real `portcullis` binary (`PORTCULLIS_BIN`, set by `cargo xtask
//! test`), which loads the real eBPF programs into the running kernel.
//!
//! Root is required. Without it, or without BPF, the tests FAIL with a message; the
//! only way to skip them is `PORTCULLIS_SKIP_ROOT_TESTS=1`, which `cargo xtask test`
//! honours loudly (it does not run this crate at all).

use std::{
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::Value;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// The `portcullis` binary under test.
pub fn bin() -> PathBuf {
    std::env::var_os("PORTCULLIS_BIN").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/portcullis"),
        PathBuf::from,
    )
}

/// Panics unless running as root with the binary built: root tests never skip silently.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "root integration tests need root (they load eBPF programs and create namespaces); \
         run `cargo xtask test` as root, or set PORTCULLIS_SKIP_ROOT_TESTS=1 to skip them explicitly"
    );
    assert!(
        bin().is_file(),
        "{} is missing: run `cargo xtask build` first",
        bin().display()
    );
}

/// Runs a shell command, returning its output (never panics on a non-zero exit).
pub fn sh(cmd: &str) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("running sh")
}

/// Runs a shell command that must succeed.
pub fn must(cmd: &str) -> String {
    let out = sh(cmd);
    assert!(
        out.status.success(),
        "command failed: {cmd}\nstatus: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The cgroup v2 mount point, from /proc/self/mountinfo.
pub fn cgroup2_mount() -> PathBuf {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("reading mountinfo");
    info.lines()
        .find(|l| {
            l.split(" - ")
                .nth(1)
                .is_some_and(|t| t.starts_with("cgroup2 "))
        })
        .and_then(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .expect("no cgroup2 mount: the tests need cgroup v2")
}

/// The lab: namespaces, veth, cgroup, processes, agent.
pub struct Lab {
    /// Unique tag of this lab (namespace and cgroup names use it).
    pub tag: String,
    /// Protected namespace.
    pub ns_a: String,
    /// Peer namespace.
    pub ns_b: String,
    /// A's IPv4 address.
    pub a4: String,
    /// B's IPv4 address.
    pub b4: String,
    /// A's IPv6 address.
    pub a6: String,
    /// B's IPv6 address.
    pub b6: String,
    /// The cgroup the programs are attached to (absolute path).
    pub cgroup: PathBuf,
    /// The cgroup relative to the cgroup v2 mount (what `scope` takes).
    pub cgroup_rel: String,
    /// A scratch directory for configs and scripts.
    pub dir: PathBuf,
    procs: Vec<Child>,
}

impl Lab {
    /// Builds a new lab. `name` shows up in namespace and cgroup names.
    pub fn new(name: &str) -> Lab {
        require_root();
        let n = SEQ.fetch_add(1, Ordering::SeqCst) + std::process::id() % 200;
        let tag = format!(
            "pc{}{}",
            &name
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .take(6)
                .collect::<String>(),
            n % 250
        );
        let (ns_a, ns_b) = (format!("{tag}a"), format!("{tag}b"));
        let octet = n % 250 + 1;
        let lab_dir = std::env::temp_dir().join(format!("portcullis-{tag}"));
        let _ = fs::remove_dir_all(&lab_dir);
        fs::create_dir_all(&lab_dir).expect("creating the lab directory");
        let rel = format!("portcullis-test-{tag}");
        let cgroup = cgroup2_mount().join(&rel);
        let lab = Lab {
            a4: format!("198.18.{octet}.1"),
            b4: format!("198.18.{octet}.2"),
            a6: format!("fd70:{octet:x}::1"),
            b6: format!("fd70:{octet:x}::2"),
            tag: tag.clone(),
            ns_a,
            ns_b,
            cgroup: cgroup.clone(),
            cgroup_rel: rel,
            dir: lab_dir,
            procs: Vec::new(),
        };
        // Leftovers of an aborted earlier run with the same names.
        let _ = sh(&format!(
            "ip netns del {} 2>/dev/null; ip netns del {} 2>/dev/null",
            lab.ns_a, lab.ns_b
        ));
        let _ = fs::create_dir(&cgroup);
        assert!(
            cgroup.join("cgroup.procs").is_file(),
            "could not create cgroup {}",
            cgroup.display()
        );
        let (a, b) = (&lab.ns_a, &lab.ns_b);
        must(&format!(
            "set -e
             ip netns add {a}; ip netns add {b}
             ip link add {tag}x netns {a} type veth peer name {tag}y netns {b}
             ip -n {a} link set lo up; ip -n {b} link set lo up
             ip -n {a} addr add {a4}/24 dev {tag}x; ip -n {b} addr add {b4}/24 dev {tag}y
             ip -n {a} addr add {a6}/64 dev {tag}x nodad; ip -n {b} addr add {b6}/64 dev {tag}y nodad
             ip -n {a} link set {tag}x up; ip -n {b} link set {tag}y up",
            a4 = lab.a4,
            b4 = lab.b4,
            a6 = lab.a6,
            b6 = lab.b6,
        ));
        lab
    }

    /// A's veth interface name (inside namespace A).
    pub fn veth_a(&self) -> String {
        format!("{}x", self.tag)
    }

    fn wrap_a(&self, cmd: &str) -> Command {
        // Join the cgroup first (inherited by everything exec'd after), then the
        // namespace. nsenter, unlike `ip netns exec`, leaves /sys (and the cgroup mount)
        // alone.
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec nsenter --net=/run/netns/{} -- sh -c \"$1\"",
                self.cgroup.display(),
                self.ns_a
            ))
            .arg("sh")
            .arg(cmd);
        c
    }

    fn wrap_b(&self, cmd: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.ns_b))
            .args(["--", "sh", "-c", cmd]);
        c
    }

    /// Runs `cmd` on A: inside namespace A and inside the enforced cgroup.
    pub fn on_a(&self, cmd: &str) -> Output {
        self.wrap_a(cmd).output().expect("running a command on A")
    }

    /// Runs `cmd` on B (the peer: not enforced).
    pub fn on_b(&self, cmd: &str) -> Output {
        self.wrap_b(cmd).output().expect("running a command on B")
    }

    /// Runs `cmd` in namespace A but outside the enforced cgroup.
    pub fn on_a_unenforced(&self, cmd: &str) -> Output {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns_a))
            .args(["--", "sh", "-c", cmd])
            .output()
            .expect("running a command in namespace A")
    }

    /// Starts a background process on A (enforced); killed when the lab drops.
    pub fn spawn_a(&mut self, cmd: &str) {
        let child = self
            .wrap_a(cmd)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning on A");
        self.procs.push(child);
    }

    /// Starts a background process on B; killed when the lab drops.
    pub fn spawn_b(&mut self, cmd: &str) {
        let child = self
            .wrap_b(cmd)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning on B");
        self.procs.push(child);
    }

    /// Writes a file into the lab directory and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.join(name);
        fs::write(&p, text).expect("writing a lab file");
        p
    }

    /// Writes a profile with the given `[[rule]]` tables and a site config using it,
    /// scoped to the lab's cgroup. `site` is extra site TOML (mode, loopback, ...).
    pub fn config(&self, rules: &str, site: &str) -> PathBuf {
        self.write(
            "profile.toml",
            &format!("slug = \"lab\"\nproduct = \"Lab\"\nvendor = \"portcullis tests\"\nsource = \"tests\"\n\n{rules}"),
        );
        self.write(
            "site.toml",
            &format!(
                "profile = \"profile.toml\"\nfailsafe = false\nevents_per_sec = 1000\nscope = [\"{}\"]\n{site}",
                self.cgroup_rel
            ),
        )
    }

    /// Starts the agent on a config from [`Lab::config`] and waits until it is ready.
    pub fn agent(&self, config: &Path, extra: &[&str]) -> Agent {
        Agent::start(self, config, extra, &[])
    }

    /// Like [`Lab::agent`], with extra environment variables.
    pub fn agent_env(&self, config: &Path, extra: &[&str], env: &[(&str, &str)]) -> Agent {
        Agent::start(self, config, extra, env)
    }

    /// Listeners on B's ports 8080 (what [`web_out`] allows) and 8081 (denied), ready
    /// when this returns.
    pub fn web_listeners_on_b(&mut self) {
        for port in [8080, 8081] {
            self.spawn_b(&format!("exec {} listen {port}", net_py()));
        }
        let (ns, b4) = (self.ns_b.clone(), self.b4.clone());
        self.wait_tcp(&ns, &b4, 8080);
        self.wait_tcp(&ns, &b4, 8081);
    }

    /// Waits until a TCP port accepts connections on `ns` at `addr` (from that namespace).
    pub fn wait_tcp(&self, ns: &str, addr: &str, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let ok = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{ns}"))
                .args(["--", "nc", "-z", "-w", "1", addr, &port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("nothing listens on {addr}:{port} in {ns} after 10 s");
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.kill();
            let _ = p.wait();
        }
        // Move anything left in the cgroup out (to the root), then remove it.
        if let Ok(pids) = fs::read_to_string(self.cgroup.join("cgroup.procs")) {
            for pid in pids.lines() {
                let _ = sh(&format!("kill -9 {pid} 2>/dev/null"));
            }
            std::thread::sleep(Duration::from_millis(100));
            if let Ok(pids) = fs::read_to_string(self.cgroup.join("cgroup.procs")) {
                for pid in pids.lines() {
                    let _ = fs::write(cgroup2_mount().join("cgroup.procs"), pid);
                }
            }
        }
        let _ = fs::remove_dir(&self.cgroup);
        let _ = sh(&format!(
            "ip netns del {} 2>/dev/null; ip netns del {} 2>/dev/null",
            self.ns_a, self.ns_b
        ));
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A running `portcullis run`, with its own pin and state directories.
pub struct Agent {
    child: Option<Child>,
    /// Environment for every `portcullis` command aimed at this agent.
    pub env: Vec<(String, String)>,
    /// stdout lines so far (ready line, deny events, final counters).
    pub lines: Arc<Mutex<Vec<String>>>,
    /// The agent's pin directory.
    pub pin_dir: PathBuf,
    detach_on_drop: bool,
}

impl Agent {
    fn start(lab: &Lab, config: &Path, extra: &[&str], extra_env: &[(&str, &str)]) -> Agent {
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/portcullis-{}", lab.tag));
        let state_dir = lab.dir.join("state");
        let env = vec![
            (
                "PORTCULLIS_PIN_DIR".to_owned(),
                pin_dir.display().to_string(),
            ),
            (
                "PORTCULLIS_STATE_DIR".to_owned(),
                state_dir.display().to_string(),
            ),
        ];
        let mut child = Command::new(bin())
            .arg("run")
            .arg("--config")
            .arg(config)
            .args(extra)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .envs(extra_env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting portcullis run");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        for (stream, is_stdout) in [
            (
                Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
                true,
            ),
            (Box::new(child.stderr.take().expect("stderr")), false),
        ] {
            let lines = lines.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if is_stdout && line.starts_with("ready:") {
                        let _ = tx.send(());
                    }
                    lines.lock().expect("lines lock").push(line);
                }
            });
        }
        let mut agent = Agent {
            child: Some(child),
            env,
            lines,
            pin_dir,
            detach_on_drop: true,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if rx.recv_timeout(Duration::from_millis(100)).is_ok() {
                return agent;
            }
            let exited = agent
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "portcullis run did not become ready (exit: {exited:?}); output:\n{}",
                    agent.output()
                );
            }
        }
    }

    /// All output so far.
    pub fn output(&self) -> String {
        self.lines.lock().expect("lines lock").join("\n")
    }

    /// Runs another `portcullis` subcommand against this agent's pins and state.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("running portcullis")
    }

    /// `portcullis status --json`.
    pub fn status(&self) -> Value {
        let out = self.cli(&["status", "--json"]);
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status --json is JSON")
    }

    /// The agent's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// kill -9: the agent gets no chance to clean up; its pinned programs stay.
    pub fn kill9(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.detach_on_drop = false;
    }

    /// Sends SIGTERM and waits; returns the agent's whole output.
    pub fn stop(mut self) -> String {
        self.terminate();
        self.output()
    }

    fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) with a pid we own.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
            // Give the reader threads a moment to drain the pipes.
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.terminate();
        // Whatever the agent left (it was killed, or a test failed midway).
        if self.detach_on_drop && self.pin_dir.exists() {
            let _ = self.cli(&["detach"]);
        }
    }
}

/// A rule total from `status --json`.
pub fn rule_packets(status: &Value, id: &str) -> u64 {
    status["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no rule {id:?} in status: {status:#}"))["packets"]
        .as_u64()
        .expect("packets")
}

/// Field of a rule from `status --json`.
pub fn rule_field(status: &Value, id: &str, field: &str) -> u64 {
    status["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no rule {id:?} in status: {status:#}"))[field]
        .as_u64()
        .expect("number")
}

/// Deny (or would-deny) packets and bytes for a direction and reason.
pub fn denies(status: &Value, direction: &str, reason: &str, audit: bool) -> (u64, u64) {
    status["denies"]
        .as_array()
        .expect("denies")
        .iter()
        .find(|d| d["direction"] == direction && d["reason"] == reason && d["audit"] == audit)
        .map_or((0, 0), |d| {
            (
                d["packets"].as_u64().unwrap_or(0),
                d["bytes"].as_u64().unwrap_or(0),
            )
        })
}

/// Whether the denied-ports table has (direction, protocol, port).
pub fn denied_port(status: &Value, direction: &str, protocol: &str, port: u16) -> u64 {
    status["denied_ports"]
        .as_array()
        .expect("denied_ports")
        .iter()
        .find(|d| d["direction"] == direction && d["protocol"] == protocol && d["port"] == port)
        .map_or(0, |d| d["packets"].as_u64().unwrap_or(0))
}

/// stdout of an output as a string.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// stderr of an output as a string.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The Python client (`tests/support/net.py`).
pub fn net_py() -> String {
    format!("python3 {}/support/net.py", env!("CARGO_MANIFEST_DIR"))
}

/// Prints a test's figures as one line, `RELIABILITY: <test>: key=value ...`, which
/// `cargo xtask test` collects into its reliability summary. Written to the process's
/// stderr directly: the test harness captures `println!`/`eprintln!` of passing tests.
pub fn figures(test: &str, fields: &[(&str, String)]) {
    use std::io::Write as _;
    let kv: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let _ = writeln!(std::io::stderr(), "RELIABILITY: {test}: {}", kv.join(" "));
}

/// One `[[rule]]` table of a lab profile; `extra` adds lines (`scope = "loopback"`, ...).
pub fn rule(id: &str, direction: &str, protocol: &str, ports: u16, extra: &str) -> String {
    format!(
        "\n[[rule]]\nid = \"{id}\"\ndirection = \"{direction}\"\nprotocol = \"{protocol}\"\n\
         ports = {ports}\nwhy = \"test\"\nsource = \"tests\"\n{extra}\n"
    )
}

/// The outbound rule most tests start from: TCP to port 8080.
pub fn web_out() -> String {
    rule("web-out", "out", "tcp", 8080, "")
}
