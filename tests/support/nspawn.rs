//! A real systemd host for the root tests: Debian 12 with systemd 252 as PID 1, booted
//! with systemd-nspawn from the root filesystem `cargo xtask setup` debootstraps into
//! `target/nspawn/bookworm` (the recipe of TOOLCHAIN.md).
//!
//! A [`Container`] copies that root filesystem (`cp -a`, so every test starts from a
//! pristine host), boots it in a cgroup of its own, waits until `systemctl
//! is-system-running` says `running` or `degraded`, and runs commands inside with
//! `nsenter` into the container's PID 1. `Drop` powers it off and removes the copy, the
//! cgroup and the bpffs instance. The tests drive the agent only through systemctl,
//! journalctl and dpkg inside; nothing runs the binary by hand.
//!
//! Two choices beyond the recipe, both for isolation from the machine running the tests:
//! - The container boots in its own cgroup under the host's cgroup v2 mount. nspawn
//!   with `--keep-unit` stays in its caller's cgroup, and on these machines that is the
//!   root cgroup: a "host" scope inside the container would otherwise be the real host.
//! - `/sys/fs/bpf` inside is a bpffs instance of its own (each bpffs mount is a new
//!   instance), mounted on the host, bound in, and unmounted from the host once the
//!   container runs (its bind keeps the instance alive). The container's agent pins,
//!   detaches and purges under `/sys/fs/bpf/portcullis`; with the host's bpffs bound in,
//!   that would be the pin directory of an agent running on the machine itself.
//!
//! Without root, systemd-nspawn, nsenter or the root filesystem the tests fail with the
//! fix in the message; they never skip.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::{cgroup2_mount, require_root, sh, stderr, stdout};

/// The cached root filesystem, relative to the workspace root (xtask's
/// `setup::ROOTFS_DIR`; `PORTCULLIS_ROOTFS` overrides it).
const ROOTFS_DIR: &str = "target/nspawn/bookworm";

/// How long a boot may take before the test fails (a cold boot takes a few seconds).
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

/// PATH inside the container: the test's own environment is not passed in.
const CONTAINER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// The cached root filesystem; panics with the fix when it is missing.
pub fn rootfs() -> PathBuf {
    let dir = std::env::var_os("PORTCULLIS_ROOTFS")
        .map_or_else(|| workspace_root().join(ROOTFS_DIR), PathBuf::from);
    assert!(
        dir.join("lib/systemd/systemd").is_file(),
        "no Debian 12 root filesystem with systemd at {}: run `cargo xtask setup` \
         (it debootstraps one), or point PORTCULLIS_ROOTFS at one",
        dir.display()
    );
    dir
}

/// The .deb under test: `PORTCULLIS_DEB` (set by `cargo xtask test`), else the newest
/// `target/dist/portcullis_*.deb` that `cargo xtask dist` built.
pub fn deb() -> PathBuf {
    if let Some(p) = std::env::var_os("PORTCULLIS_DEB") {
        return PathBuf::from(p);
    }
    let dir = workspace_root().join("target/dist");
    fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("portcullis_") && n.ends_with(".deb"))
        })
        .max_by_key(|p| fs::metadata(p).and_then(|m| m.modified()).ok())
        .unwrap_or_else(|| {
            panic!(
                "no portcullis_*.deb in {}: run `cargo xtask dist` (or set PORTCULLIS_DEB)",
                dir.display()
            )
        })
}

fn require_tool(tool: &str, package: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{tool} is not installed: run `cargo xtask setup` (Debian package {package})"
    );
}

/// A booted Debian 12 container with systemd as PID 1.
pub struct Container {
    /// The machine name (`-M`), unique per test.
    pub name: String,
    /// The container's root filesystem (a copy of the cached one), seen from the host.
    pub root: PathBuf,
    /// The host cgroup the container runs in (its `/sys/fs/cgroup`).
    pub cgroup: PathBuf,
    /// Where the container's bpffs instance was mounted on the host to be bound in.
    bpffs: PathBuf,
    nspawn: Option<Child>,
    /// The container's PID 1, as the host sees it.
    leader: u32,
    console: PathBuf,
}

impl Container {
    /// Copies the root filesystem and boots it; returns once systemd reports the system
    /// `running` or `degraded`.
    pub fn boot(name: &str) -> Container {
        require_root();
        require_tool("systemd-nspawn", "systemd-container");
        require_tool("nsenter", "util-linux");
        let rootfs = rootfs();
        let name = format!("pc-{name}-{}", std::process::id());
        let base = workspace_root().join("target/nspawn");
        let root = base.join(&name);
        let console = base.join(format!("{name}.console"));
        let _ = fs::remove_dir_all(&root);
        let cp = sh(&format!("cp -a {} {}", rootfs.display(), root.display()));
        assert!(
            cp.status.success(),
            "copying the root filesystem failed: {}",
            stderr(&cp)
        );
        // The machine name doubles as the hostname; machine-id is made fresh per boot.
        let _ = fs::write(root.join("etc/hostname"), format!("{name}\n"));

        let cgroup = cgroup2_mount()
            .expect("a cgroup v2 mount for the container")
            .join(&name);
        fs::create_dir_all(&cgroup)
            .unwrap_or_else(|e| panic!("creating cgroup {}: {e}", cgroup.display()));
        let bpffs = PathBuf::from("/run/portcullis-tests")
            .join(&name)
            .join("bpf");
        fs::create_dir_all(&bpffs).expect("bpffs mount point");
        let mount = sh(&format!("mount -t bpf bpf {}", bpffs.display()));
        assert!(
            mount.status.success(),
            "mounting a bpffs at {} failed: {}",
            bpffs.display(),
            stderr(&mount)
        );

        let log = fs::File::create(&console).expect("console log");
        // Join the container's cgroup first (nspawn with --keep-unit stays in it), then
        // exec nspawn. The flags are TOOLCHAIN.md's: seccomp lets bpf() through, no
        // machined to register with, the unified cgroup hierarchy inside.
        let nspawn = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec systemd-nspawn -b -D {} -M {name} \
                 --capability=all --system-call-filter='bpf perf_event_open' \
                 --register=no --keep-unit --private-network \
                 --bind={}:/sys/fs/bpf --console=read-only",
                cgroup.display(),
                root.display(),
                bpffs.display(),
            ))
            .env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("console log"))
            .stderr(log)
            .spawn()
            .expect("starting systemd-nspawn");
        let mut container = Container {
            name,
            root,
            cgroup,
            bpffs,
            leader: 0,
            nspawn: Some(nspawn),
            console,
        };
        container.wait_booted();
        // The container's bind keeps the instance (and its pins) alive; on the host it
        // is no longer needed, and a bpffs mounted there would be one more for tests that
        // look for bpffs mounts (or for their absence) on the machine.
        let _ = sh(&format!("umount {}", container.bpffs.display()));
        container
    }

    /// Finds PID 1 (the nspawn process's child) and waits for systemd to finish booting.
    fn wait_booted(&mut self) {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        let nspawn_pid = self.nspawn.as_ref().map_or(0, Child::id);
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some(status) = self
                .nspawn
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "systemd-nspawn exited during boot ({status}); console:\n{}",
                    self.console_log()
                );
            }
            // Read again on every try: nspawn's first child is a helper that starts PID 1
            // and exits (PID 1 is then re-parented to nspawn); a pid read that early
            // would be a process that is gone, and every nsenter into it would fail.
            self.leader =
                fs::read_to_string(format!("/proc/{nspawn_pid}/task/{nspawn_pid}/children"))
                    .ok()
                    .and_then(|c| c.split_whitespace().next()?.parse().ok())
                    .unwrap_or(0);
            if self.leader != 0 {
                let out = self.run("systemctl is-system-running");
                last = stdout(&out).trim().to_owned();
                if last == "running" || last == "degraded" {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "the container did not boot in {BOOT_TIMEOUT:?} (is-system-running: {last:?}); \
             console:\n{}",
            self.console_log()
        );
    }

    /// What the container printed on its console (boot messages).
    pub fn console_log(&self) -> String {
        fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// Runs a shell command inside the container (all its namespaces, a clean
    /// environment), bounded to 5 minutes.
    pub fn run(&self, cmd: &str) -> Output {
        Command::new("nsenter")
            .args(["-a", "-t", &self.leader.to_string(), "--"])
            .args(["timeout", "300", "sh", "-c", cmd])
            .env_clear()
            .env("PATH", CONTAINER_PATH)
            .env("LANG", "C.UTF-8")
            .env("SYSTEMD_PAGER", "")
            .output()
            .expect("running nsenter")
    }

    /// Runs a command inside and returns its stdout; panics with both streams if it fails.
    pub fn must(&self, cmd: &str) -> String {
        let out = self.run(cmd);
        assert!(
            out.status.success(),
            "in {}: `{cmd}` failed ({}):\nstdout:\n{}\nstderr:\n{}",
            self.name,
            out.status,
            stdout(&out),
            stderr(&out)
        );
        stdout(&out)
    }

    /// The host path of a path inside the container.
    pub fn path(&self, inside: &str) -> PathBuf {
        self.root.join(inside.trim_start_matches('/'))
    }

    /// Writes a file inside the container (parents created).
    pub fn write(&self, inside: &str, text: &str) {
        let p = self.path(inside);
        if let Some(dir) = p.parent() {
            fs::create_dir_all(dir).expect("creating a directory in the container");
        }
        fs::write(&p, text).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
    }

    /// Copies a host file into the container and returns its path inside.
    pub fn copy_in(&self, host: &Path, inside_dir: &str) -> String {
        let name = host.file_name().expect("file name").to_string_lossy();
        let inside = format!("{}/{name}", inside_dir.trim_end_matches('/'));
        let to = self.path(&inside);
        fs::create_dir_all(to.parent().expect("parent")).expect("creating a directory");
        fs::copy(host, &to).unwrap_or_else(|e| panic!("copying {}: {e}", host.display()));
        inside
    }

    /// Wires the container's private network to the host namespace `ns` (a lab's peer):
    /// a veth `dev` in `ns` with `ns_addr`, its peer `eth-lab` inside with `inside_addr`
    /// (both CIDRs). The pair goes with the namespaces.
    pub fn wire_to(&self, ns: &str, dev: &str, ns_addr: &str, inside_addr: &str) {
        crate::must(&format!(
            "ip -n {ns} link add {dev} type veth peer name eth-lab netns {leader} && \
             ip -n {ns} addr add {ns_addr} dev {dev} && ip -n {ns} link set {dev} up",
            leader = self.leader
        ));
        self.must(&format!(
            "ip addr add {inside_addr} dev eth-lab && ip link set eth-lab up && ip link set lo up"
        ));
    }

    /// `dpkg -i` of a .deb from the host; returns dpkg's output (not checked).
    pub fn install_deb(&self, deb: &Path) -> Output {
        let inside = self.copy_in(deb, "/root/debs");
        self.run(&format!("dpkg -i {inside} 2>&1"))
    }

    /// A unit's journal since boot, message text only.
    pub fn journal(&self, unit: &str) -> String {
        stdout(&self.run(&format!("journalctl -b -u {unit} --no-pager -o cat")))
    }

    /// Waits until `cmd` succeeds inside, at most `limit`; panics with its last output.
    pub fn wait_for(&self, what: &str, cmd: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let out = self.run(cmd);
            if out.status.success() {
                return stdout(&out);
            }
            if Instant::now() > deadline {
                panic!(
                    "in {}: {what} did not happen within {limit:?}; last `{cmd}`:\n{}{}\n\
                     the journal's last lines:\n{}",
                    self.name,
                    stdout(&out),
                    stderr(&out),
                    stdout(&self.run("journalctl -b --no-pager -n 40"))
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn power_off(&mut self) {
        let Some(mut nspawn) = self.nspawn.take() else {
            return;
        };
        if self.leader != 0 {
            let _ = self.run("systemctl poweroff --no-block");
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if nspawn.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = nspawn.kill();
        let _ = nspawn.wait();
    }
}

/// Removes a cgroup and everything below it, deepest first (rmdir only removes empty
/// ones; the container is gone by then).
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

impl Drop for Container {
    fn drop(&mut self) {
        self.power_off();
        // Anything still in the cgroup tree (a container that would not stop) is killed.
        let _ = fs::write(self.cgroup.join("cgroup.kill"), "1");
        std::thread::sleep(Duration::from_millis(200));
        remove_cgroup_tree(&self.cgroup);
        let _ = sh(&format!("umount {} 2>/dev/null", self.bpffs.display()));
        if let Some(dir) = self.bpffs.parent() {
            let _ = fs::remove_dir_all(dir);
        }
        let _ = fs::remove_dir_all(&self.root);
        let _ = fs::remove_file(&self.console);
    }
}
