//! The lab's kernel objects as guard values: network namespaces, veth pairs, cgroup v2
//! directories and background processes, each removed in `Drop` (after a panic or an
//! error too), and the [`Lab`] the root tests build from them.
//!
//! The guards return errors instead of panicking so that `cargo xtask bench`, which
//! builds a larger lab of its own from them, can report a failed setup as an error; the
//! root tests' [`Lab`] turns the same errors into panics that name what failed.
//!
//! A [`Lab`] is two network namespaces joined by a veth pair (the protected host "A"
//! and its peer "B", addresses in the benchmarking range 198.18.0.0/15 and the ULA
//! range fd70::/16), a cgroup v2 child the programs are attached to, and the processes
//! started in them. Nothing touches the host's root cgroup, its real interfaces or any
//! address outside the lab.

use std::{
    ffi::OsStr,
    fs,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{must, require_root, sh};

/// The cgroup v2 mount point, from /proc/self/mountinfo (never assumed).
pub fn cgroup2_mount() -> anyhow::Result<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    info.lines()
        .find(|l| {
            l.split(" - ")
                .nth(1)
                .is_some_and(|t| t.starts_with("cgroup2 "))
        })
        .and_then(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .context("no cgroup2 mount: the lab attaches to a cgroup v2 of its own")
}

/// Runs a command and returns its stdout; fails with the command line and its stderr.
pub fn output(cmd: &mut Command) -> anyhow::Result<String> {
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

/// A signal for [`Signal::send`]: the ones the lab and the benchmark send.
#[derive(Clone, Copy, Debug)]
pub enum Signal {
    /// SIGHUP: the agent reloads its configuration.
    Hup,
    /// SIGINT: trafgen stops and prints its summary.
    Int,
    /// SIGTERM: the agent detaches and exits.
    Term,
    /// SIGKILL.
    Kill,
}

impl Signal {
    fn number(self) -> libc::c_int {
        match self {
            Signal::Hup => libc::SIGHUP,
            Signal::Int => libc::SIGINT,
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
        }
    }

    /// Sends the signal to one process (a pid of ours; a gone process is not an error).
    pub fn send(self, pid: u32) {
        // SAFETY: kill(2) has no memory preconditions; the pid is a child we started.
        unsafe { libc::kill(pid as libc::pid_t, self.number()) };
    }

    /// Sends the signal to a whole process group, given its leader's pid.
    pub fn send_group(self, leader: u32) {
        // SAFETY: as in `send`; a negative pid names the process group.
        unsafe { libc::kill(-(leader as libc::pid_t), self.number()) };
    }
}

/// A background process, killed and reaped on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A named network namespace (`ip netns`), deleted on drop with every interface in it.
pub struct Netns {
    /// The name under /run/netns.
    pub name: String,
}

impl Netns {
    /// Creates the namespace (removing a leftover of an aborted run with the same name)
    /// and sets its loopback up.
    pub fn new(name: &str) -> anyhow::Result<Netns> {
        let _ = sh(&format!("ip netns del {name} 2>/dev/null"));
        output(Command::new("ip").args(["netns", "add", name]))
            .with_context(|| format!("creating network namespace {name}"))?;
        let ns = Netns {
            name: name.to_owned(),
        };
        output(Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]))?;
        Ok(ns)
    }

    /// `program` inside this namespace. nsenter, unlike `ip netns exec`, keeps the mount
    /// namespace: /sys, bpffs and the cgroup tree stay those of the host.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        in_netns(&self.name, program)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sh(&format!("ip netns del {} 2>/dev/null", self.name));
    }
}

/// `program` inside the named network namespace `ns` (see [`Netns::command`]).
pub fn in_netns(ns: &str, program: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{ns}"))
        .arg("--")
        .arg(program);
    c
}

/// A command that joins `cgroup` first (inherited by everything exec'd after), then
/// namespace `ns` (nsenter, as in [`in_netns`]), then execs the arguments added to it.
pub fn in_cgroup_netns(cgroup: &Path, ns: &str) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec nsenter --net=/run/netns/{ns} -- \"$@\"",
            cgroup.display()
        ))
        .arg("sh");
    c
}

/// One end of a veth pair for [`veth`]: namespace, interface name, addresses (CIDR).
pub struct End<'a> {
    pub ns: &'a str,
    pub dev: &'a str,
    pub addrs: &'a [String],
}

/// Creates a veth pair between two ends, adds each end's addresses (IPv6 without
/// duplicate address detection, so they are usable at once) and sets both up. The pair
/// goes away with its namespaces.
pub fn veth(a: &End, b: &End) -> anyhow::Result<()> {
    let mut script = format!(
        "set -e\nip link add {} netns {} type veth peer name {} netns {}\n",
        a.dev, a.ns, b.dev, b.ns
    );
    for end in [a, b] {
        for addr in end.addrs {
            let nodad = if addr.contains(':') { " nodad" } else { "" };
            script += &format!("ip -n {} addr add {addr} dev {}{nodad}\n", end.ns, end.dev);
        }
        script += &format!("ip -n {} link set {} up\n", end.ns, end.dev);
    }
    output(Command::new("sh").arg("-c").arg(&script))
        .with_context(|| format!("creating the veth pair {} - {}", a.dev, b.dev))?;
    Ok(())
}

/// A cgroup v2 directory of our own. On drop, whatever still runs in it is killed (or
/// moved to the root cgroup if it survives), then the directory is removed.
pub struct Cgroup {
    /// Absolute path.
    pub path: PathBuf,
    /// Path relative to the cgroup v2 mount (what a site's `scope` takes).
    pub rel: String,
}

impl Cgroup {
    /// Creates `rel` under the cgroup v2 mount (a leftover of the same name is reused).
    pub fn new(rel: &str) -> anyhow::Result<Cgroup> {
        let path = cgroup2_mount()?.join(rel);
        let _ = fs::create_dir(&path);
        if !path.join("cgroup.procs").is_file() {
            bail!("could not create cgroup {}", path.display());
        }
        Ok(Cgroup {
            path,
            rel: rel.to_owned(),
        })
    }

    fn procs(&self) -> Vec<String> {
        fs::read_to_string(self.path.join("cgroup.procs"))
            .map(|p| p.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let left = self.procs();
        if !left.is_empty() {
            for pid in &left {
                if let Ok(pid) = pid.parse() {
                    Signal::Kill.send(pid);
                }
            }
            std::thread::sleep(Duration::from_millis(100));
            if let Ok(root) = cgroup2_mount() {
                for pid in self.procs() {
                    let _ = fs::write(root.join("cgroup.procs"), pid);
                }
            }
        }
        // A process that just exited may keep the cgroup busy for a moment.
        for _ in 0..50 {
            if fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("warning: could not remove cgroup {}", self.path.display());
    }
}

/// Polls `ready` every 50 ms for up to 10 s (times the [`crate::patience`] factor);
/// panics naming `what` if it never holds.
fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let limit = Duration::from_secs(10) * crate::patience();
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if ready() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} after {limit:?}");
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// The root tests' lab: namespaces, veth, cgroup, processes.
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
    // Dropped in this order: processes, then their cgroup, then the namespaces.
    procs: Vec<Proc>,
    _cgroup: Cgroup,
    _netns: [Netns; 2],
}

/// Unwraps a lab setup step, panicking with the whole error chain.
fn setup<T>(r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("setting up the lab: {e:#}"))
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
        let octet = n % 250 + 1;
        let dir = std::env::temp_dir().join(format!("portcullis-{tag}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("creating the lab directory");
        let cgroup = setup(Cgroup::new(&format!("portcullis-test-{tag}")));
        let netns = [
            setup(Netns::new(&format!("{tag}a"))),
            setup(Netns::new(&format!("{tag}b"))),
        ];
        let lab = Lab {
            a4: format!("198.18.{octet}.1"),
            b4: format!("198.18.{octet}.2"),
            a6: format!("fd70:{octet:x}::1"),
            b6: format!("fd70:{octet:x}::2"),
            tag: tag.clone(),
            ns_a: netns[0].name.clone(),
            ns_b: netns[1].name.clone(),
            cgroup: cgroup.path.clone(),
            cgroup_rel: cgroup.rel.clone(),
            dir,
            procs: Vec::new(),
            _cgroup: cgroup,
            _netns: netns,
        };
        setup(veth(
            &End {
                ns: &lab.ns_a,
                dev: &format!("{tag}x"),
                addrs: &[format!("{}/24", lab.a4), format!("{}/64", lab.a6)],
            },
            &End {
                ns: &lab.ns_b,
                dev: &format!("{tag}y"),
                addrs: &[format!("{}/24", lab.b4), format!("{}/64", lab.b6)],
            },
        ));
        lab
    }

    /// A's veth interface name (inside namespace A).
    pub fn veth_a(&self) -> String {
        format!("{}x", self.tag)
    }

    fn wrap_a(&self, cmd: &str) -> Command {
        let mut c = in_cgroup_netns(&self.cgroup, &self.ns_a);
        c.args(["sh", "-c", cmd]);
        c
    }

    fn wrap(ns: &str, cmd: &str) -> Command {
        let mut c = in_netns(ns, "sh");
        c.args(["-c", cmd]);
        c
    }

    /// Runs `cmd` on A: inside namespace A and inside the enforced cgroup.
    pub fn on_a(&self, cmd: &str) -> Output {
        self.wrap_a(cmd).output().expect("running a command on A")
    }

    /// Runs `cmd` on B (the peer: not enforced).
    pub fn on_b(&self, cmd: &str) -> Output {
        Self::wrap(&self.ns_b, cmd)
            .output()
            .expect("running a command on B")
    }

    /// Runs `cmd` in namespace A but outside the enforced cgroup.
    pub fn on_a_unenforced(&self, cmd: &str) -> Output {
        Self::wrap(&self.ns_a, cmd)
            .output()
            .expect("running a command in namespace A")
    }

    fn spawn(&mut self, mut cmd: Command, what: &str) {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {what}: {e}"));
        self.procs.push(Proc(child));
    }

    /// Starts a background process on A (enforced); killed when the lab drops.
    pub fn spawn_a(&mut self, cmd: &str) {
        let c = self.wrap_a(cmd);
        self.spawn(c, "a process on A");
    }

    /// Starts a background process in namespace A, outside the enforced cgroup (a
    /// listener the tests reach through XDP only); killed when the lab drops.
    pub fn spawn_a_unenforced(&mut self, cmd: &str) {
        let c = Self::wrap(&self.ns_a, cmd);
        self.spawn(c, "a process in namespace A");
    }

    /// Starts a background process on B; killed when the lab drops.
    pub fn spawn_b(&mut self, cmd: &str) {
        let c = Self::wrap(&self.ns_b, cmd);
        self.spawn(c, "a process on B");
    }

    /// Runs `f` on a thread that entered namespace A: for attaching to its veth.
    pub fn in_ns_a<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.ns_a);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = fs::File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
                // SAFETY: setns on a valid namespace fd; affects only this thread.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(
                    rc,
                    0,
                    "setns into {path}: {}",
                    std::io::Error::last_os_error()
                );
                f()
            })
            .join()
            .expect("thread in the namespace panicked")
        })
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

    /// Listeners on B's ports 8080 (what [`crate::web_out`] allows) and 8081 (denied),
    /// ready when this returns.
    pub fn web_listeners_on_b(&mut self) {
        for port in [8080, 8081] {
            self.spawn_b(&format!("exec {} listen {port}", crate::net_py()));
        }
        let (ns, b4) = (self.ns_b.clone(), self.b4.clone());
        self.wait_tcp(&ns, &b4, 8080);
        self.wait_tcp(&ns, &b4, 8081);
    }

    /// Waits until a TCP port accepts connections on `ns` at `addr` (from that namespace).
    pub fn wait_tcp(&self, ns: &str, addr: &str, port: u16) {
        wait_until(&format!("nothing listens on {addr}:{port} in {ns}"), || {
            in_netns(ns, "nc")
                .args(["-z", "-w", "1", addr, &port.to_string()])
                .status()
                .is_ok_and(|s| s.success())
        });
    }

    /// Waits until a UDP socket is bound to `port` in `ns` (UDP has no handshake to try).
    pub fn wait_udp(&self, ns: &str, port: u16) {
        wait_until(
            &format!("nothing listens on UDP port {port} in {ns}"),
            || {
                !must(&format!(
                    "nsenter --net=/run/netns/{ns} -- ss -H -uln 'sport = :{port}'"
                ))
                .trim()
                .is_empty()
            },
        );
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // The processes first (the guards below would kill them too, less gently).
        self.procs.clear();
        let _ = fs::remove_dir_all(&self.dir);
    }
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
