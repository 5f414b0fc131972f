//! The kernel matrix: the agent on the kernels gateways run, not only on this machine's.
//!
//! Setup downloads Debian's stock kernels (5.10 of bullseye, 6.1 of bookworm, 6.12 of
//! trixie) with a private apt configuration, caches each under `target/kernels/<series>/`
//! and installs its modules in `/lib/modules/<release>` (virtme-ng builds the guest's
//! initramfs from there); virtme-ng comes from PyPI into a venv under `target/vng`.
//!
//! `cargo xtask test` then boots each kernel under qemu (TCG: KVM guests hang on these
//! machines) with the host's filesystem read-only, and runs in it, as root, the already
//! built root test binaries on [`CORE`] and `portcullis debug verifier` (per program: the
//! verifier's instruction count and the load time). `guest.sh` is what the guest runs;
//! this side times each step as the guest announces it and gathers the results.

use std::{
    fmt,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{sh, step};

/// The kernels of the matrix. `Host` is this machine's kernel, on which the whole root
/// suite runs (not only the core).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Kernel {
    /// Debian 11 (bullseye).
    #[value(name = "5.10")]
    V5_10,
    /// Debian 12 (bookworm), the README's platform.
    #[value(name = "6.1")]
    V6_1,
    /// Debian 13 (trixie).
    #[value(name = "6.12")]
    V6_12,
    /// The kernel this machine runs.
    #[value(name = "host")]
    Host,
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V5_10 => "5.10",
            Self::V6_1 => "6.1",
            Self::V6_12 => "6.12",
            Self::Host => "host",
        })
    }
}

/// A Debian kernel: the series, the suite whose `linux-image-amd64` names it, and that
/// suite's security suite (where the newest kernels of a released suite are).
struct Debian {
    kernel: Kernel,
    suite: &'static str,
    security: &'static str,
}

/// The guest kernels, oldest first.
const DEBIAN: [Debian; 3] = [
    Debian {
        kernel: Kernel::V5_10,
        suite: "bullseye",
        security: "bullseye-security",
    },
    Debian {
        kernel: Kernel::V6_1,
        suite: "bookworm",
        security: "bookworm-security",
    },
    Debian {
        kernel: Kernel::V6_12,
        suite: "trixie",
        security: "trixie-security",
    },
];

/// Every kernel of the matrix, in the order `cargo xtask test` runs them.
pub const ALL: [Kernel; 4] = [Kernel::Host, Kernel::V5_10, Kernel::V6_1, Kernel::V6_12];

/// The core of the root suites each guest runs: (test binary, test name, what it proves
/// on that kernel). Small on purpose: under TCG a guest is tens of times slower than the
/// host, and every agent start verifies all programs again.
pub const CORE: &[(&str, &str, &str)] = &[
    (
        "datapath",
        "outbound_allowed_and_denied_with_eperm_over_ipv4_ipv6_and_mapped",
        "connect4/6 and egress: allowed flows connect, others get EPERM (IPv4, IPv6, \
         v4-mapped), counted per rule and under reason no-rule",
    ),
    (
        "datapath",
        "inbound_allowed_denied_and_spoofed_source_ports_dropped",
        "ingress: opened ports answer, others and spoofed source ports are dropped, \
         counted per reason",
    ),
    (
        "datapath",
        "audit_mode_passes_everything_and_counts_every_would_deny_exactly",
        "audit mode: nothing refused, every would-deny counted exactly",
    ),
    (
        "datapath",
        "reload_revokes_established_tcp_and_udp_flows_at_the_cgroup_layer",
        "a reload flips the idle generation live and revokes established TCP and UDP \
         flows (reason revoked)",
    ),
    (
        "xdp",
        "corpus_enforce",
        "pc_xdp's verdict and counters on every frame shape of the corpus (test_run)",
    ),
    (
        "xdp",
        "veth_generic_mode_filters_the_same",
        "XDP attached to a veth: nmap from the peer sees only the allowed ports",
    ),
    (
        "service",
        "kill_9_then_restart_adopts_the_pins_and_the_counters",
        "kill -9: the pinned programs keep allowing and refusing with no agent; the \
         restart adopts pins, policy and counters",
    ),
    (
        "names",
        "unlisted_name",
        "a name's address learned from a dnsmasq answer is allowed, an unlisted name's \
         denied under reason peer",
    ),
    (
        "names",
        "a_name_colliding_with_a_listed_one_teaches_nothing",
        "the keyed hash and the whole-name compare: a name whose label collides with a \
         listed one's under unkeyed FNV-1a teaches nothing (EPERM, counted unlisted)",
    ),
];

/// Where setup caches the kernels, relative to the workspace root.
const KERNELS_DIR: &str = "target/kernels";
/// The virtme-ng venv, relative to the workspace root.
const VNG_DIR: &str = "target/vng";
/// virtme-ng, pinned: the version the recipe was checked with.
const VNG_VERSION: &str = "1.42";
/// How many times longer the tests wait in a guest (`PORTCULLIS_TEST_PATIENCE`, see
/// tests/support): a python server took 6-10 s to start under TCG on a busy machine,
/// against the 10 s the tests wait on real hardware.
const GUEST_PATIENCE: u32 = 10;
/// A guest that runs longer than this is killed and fails.
const GUEST_TIMEOUT: Duration = Duration::from_secs(40 * 60);

/// Setup: the guest kernels (cached) with their modules installed, and virtme-ng.
pub fn setup(root: &Path) -> anyhow::Result<()> {
    let cache = root.join(KERNELS_DIR);
    let mut missing = Vec::new();
    for debian in &DEBIAN {
        match Cached::read(&cache, debian.kernel) {
            Some(k) if k.modules_installed() => step(&format!(
                "setup: kernel {} present ({}, {KERNELS_DIR}/{})",
                debian.kernel, k.release, debian.kernel
            )),
            _ => missing.push(debian),
        }
    }
    if !missing.is_empty() {
        let apt = Apt::new(&cache.join("apt"))?;
        for debian in missing {
            fetch_kernel(&apt, &cache, debian)?;
        }
    }
    vng_venv(root)
}

/// A cached kernel: `target/kernels/<series>/vmlinuz`, the package it came from (the
/// modules are extracted again from it when /lib/modules lost them), and a stamp that
/// names the release, written last.
struct Cached {
    release: String,
    dir: PathBuf,
}

/// The stamp file of a cached kernel: its release (`uname -r`).
const STAMP: &str = ".portcullis-kernel";

impl Cached {
    fn read(cache: &Path, kernel: Kernel) -> Option<Self> {
        let dir = cache.join(kernel.to_string());
        let release = std::fs::read_to_string(dir.join(STAMP)).ok()?;
        let release = release.trim().to_owned();
        (dir.join("vmlinuz").exists() && dir.join("image.deb").exists())
            .then_some(Self { release, dir })
    }

    fn modules_dir(&self) -> PathBuf {
        Path::new("/lib/modules").join(&self.release)
    }

    fn modules_installed(&self) -> bool {
        self.modules_dir().join("modules.dep").exists()
    }

    /// Copies the modules out of the cached package into /lib/modules and runs depmod.
    fn install_modules(&self) -> anyhow::Result<()> {
        let tmp = self.dir.join("extract");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        sh(Command::new("dpkg-deb")
            .arg("-x")
            .arg(self.dir.join("image.deb"))
            .arg(&tmp))?;
        // 6.12 (trixie, merged /usr) keeps its modules under usr/lib/modules.
        let from = ["lib/modules", "usr/lib/modules"]
            .iter()
            .map(|d| tmp.join(d).join(&self.release))
            .find(|d| d.exists())
            .with_context(|| format!("the kernel package has no modules for {}", self.release))?;
        let to = self.modules_dir();
        if to.exists() {
            std::fs::remove_dir_all(&to)?;
        }
        sh(Command::new("cp").arg("-a").arg(&from).arg(&to))?;
        std::fs::remove_dir_all(&tmp)?;
        sh(Command::new("depmod").arg(&self.release))
    }
}

/// A private apt configuration (sources, lists, cache under `target/kernels/apt`) that
/// knows the three suites, on the mirrors this machine's apt uses; the system's apt
/// state is never touched.
struct Apt {
    options: Vec<String>,
}

impl Apt {
    fn new(dir: &Path) -> anyhow::Result<Self> {
        let debian = crate::setup::debian_mirror("bookworm")?;
        let security = crate::setup::debian_mirror("bookworm-security")?;
        for sub in ["lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let key = "[signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]";
        let sources: String = DEBIAN
            .iter()
            .map(|d| {
                format!(
                    "deb {key} {debian} {} main\ndeb {key} {security} {} main\n",
                    d.suite, d.security
                )
            })
            .collect();
        let list = dir.join("sources.list");
        std::fs::write(&list, sources)?;
        let options = [
            format!("Dir::Etc::SourceList={}", list.display()),
            "Dir::Etc::SourceParts=/dev/null".to_owned(),
            format!("Dir::State::Lists={}", dir.join("lists").display()),
            format!("Dir::Cache={}", dir.join("cache").display()),
            "APT::Architecture=amd64".to_owned(),
            // Downloads land in target/, which apt's _apt user may not enter.
            "APT::Sandbox::User=root".to_owned(),
        ]
        .into_iter()
        .flat_map(|o| ["-o".to_owned(), o])
        .collect();
        let apt = Self { options };
        step("setup: apt-get update (private lists of bullseye, bookworm, trixie)");
        sh(apt.command("apt-get").args(["update", "-qq"]))?;
        Ok(apt)
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(&self.options);
        cmd
    }

    /// The kernel package `linux-image-amd64` of `suite` (or its security suite) depends
    /// on, e.g. `linux-image-6.1.0-57-amd64`: resolved at setup time, so a mirror that
    /// drops an old ABI does not break it.
    fn kernel_package(&self, debian: &Debian) -> anyhow::Result<String> {
        let out = self
            .command("apt-cache")
            .args(["show", "linux-image-amd64"])
            .output()
            .context("running apt-cache show linux-image-amd64")?;
        let text = String::from_utf8_lossy(&out.stdout);
        // One stanza per version; this suite's are those whose kernel the series names,
        // and the newest of them wins.
        let prefix = format!("linux-image-{}.", debian.kernel);
        let mut found: Vec<(String, String)> = text
            .split("\n\n")
            .filter_map(|stanza| {
                let field = |name: &str| {
                    stanza
                        .lines()
                        .find_map(|l| l.strip_prefix(name))
                        .map(|v| v.trim().to_owned())
                };
                let version = field("Version:")?;
                let depends = field("Depends:")?;
                let package = depends
                    .split(',')
                    .map(|d| d.split_whitespace().next().unwrap_or(""))
                    .find(|d| d.starts_with(&prefix))?
                    .to_owned();
                Some((version, package))
            })
            .collect();
        found.sort_by(|a, b| dpkg_compare(&a.0, &b.0));
        found.pop().map(|(_, p)| p).with_context(|| {
            format!(
                "no linux-image-amd64 of {} ({}) depends on a {} kernel",
                debian.suite, debian.security, debian.kernel
            )
        })
    }
}

/// Orders two Debian versions with `dpkg --compare-versions`.
fn dpkg_compare(a: &str, b: &str) -> std::cmp::Ordering {
    let lt = Command::new("dpkg")
        .args(["--compare-versions", a, "lt", b])
        .status()
        .is_ok_and(|s| s.success());
    if lt {
        std::cmp::Ordering::Less
    } else if a == b {
        std::cmp::Ordering::Equal
    } else {
        std::cmp::Ordering::Greater
    }
}

/// Downloads and caches one kernel, then installs its modules.
fn fetch_kernel(apt: &Apt, cache: &Path, debian: &Debian) -> anyhow::Result<()> {
    let package = apt.kernel_package(debian)?;
    let release = package
        .strip_prefix("linux-image-")
        .context("kernel package name")?
        .to_owned();
    // The unsigned image: the same kernel and modules as the signed one.
    let unsigned = format!("{package}-unsigned");
    step(&format!(
        "setup: downloading kernel {} ({unsigned} of {})",
        debian.kernel, debian.suite
    ));
    let dir = cache.join(debian.kernel.to_string());
    // Built beside it and renamed when complete: an interrupted setup leaves no
    // half-cached kernel ("5.10" has an extension already: append, do not replace).
    let tmp = cache.join(format!("{}.tmp", debian.kernel));
    for old in [&tmp, &dir] {
        if old.exists() {
            std::fs::remove_dir_all(old)?;
        }
    }
    std::fs::create_dir_all(&tmp)?;
    sh(apt
        .command("apt-get")
        .args(["download", "-qq", &unsigned])
        .current_dir(&tmp))?;
    let deb = std::fs::read_dir(&tmp)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download {unsigned} left no .deb"))?;
    std::fs::rename(&deb, tmp.join("image.deb"))?;
    let extract = tmp.join("extract");
    sh(Command::new("dpkg-deb")
        .arg("-x")
        .arg(tmp.join("image.deb"))
        .arg(&extract))?;
    std::fs::rename(
        extract.join(format!("boot/vmlinuz-{release}")),
        tmp.join("vmlinuz"),
    )
    .with_context(|| format!("{unsigned} has no boot/vmlinuz-{release}"))?;
    std::fs::remove_dir_all(&extract)?;
    std::fs::write(tmp.join(STAMP), format!("{release}\n"))?;
    std::fs::rename(&tmp, &dir)?;
    let cached = Cached::read(cache, debian.kernel).context("the kernel just cached")?;
    step(&format!(
        "setup: installing the modules of {release} into /lib/modules (depmod)"
    ));
    cached.install_modules()
}

/// The virtme-ng venv (stamp: the version), made like the ansible one.
fn vng_venv(root: &Path) -> anyhow::Result<()> {
    let dir = root.join(VNG_DIR);
    let stamp = dir.join(".portcullis-vng");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == VNG_VERSION) {
        step(&format!(
            "setup: virtme-ng {VNG_VERSION} present ({VNG_DIR})"
        ));
        return Ok(());
    }
    step(&format!(
        "setup: installing virtme-ng {VNG_VERSION} from PyPI into {VNG_DIR}"
    ));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    sh(Command::new("/usr/bin/python3")
        .args(["-m", "venv"])
        .arg(&dir))?;
    sh(Command::new(dir.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .arg(format!("virtme-ng=={VNG_VERSION}")))?;
    std::fs::write(&stamp, format!("{VNG_VERSION}\n"))?;
    Ok(())
}

/// The root test binaries `cargo test` built (by target name), without running them.
pub fn test_binaries(object: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let out = Command::new("cargo")
        .args([
            "test",
            "--release",
            "-p",
            "portcullis-tests",
            "--no-run",
            "--message-format=json",
        ])
        .env("PORTCULLIS_EBPF_OBJECT", object)
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("cargo test --no-run -p portcullis-tests failed");
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_test = msg["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "test"));
        if let (true, Some(name), Some(exe)) = (
            is_test,
            msg["target"]["name"].as_str(),
            msg["executable"].as_str(),
        ) {
            found.push((name.to_owned(), PathBuf::from(exe)));
        }
    }
    Ok(found)
}

/// What one guest did.
pub struct GuestRun {
    pub kernel: Kernel,
    /// The release the guest booted (`uname -r`), once known.
    pub release: String,
    /// From starting qemu to the guest's script running.
    pub boot: Option<Duration>,
    /// `portcullis debug verifier` and each suite: name, wall time, passed.
    pub steps: Vec<(String, Duration, bool)>,
    /// The suites' `test result:` lines, prefixed with the kernel.
    pub results: Vec<String>,
    /// Per program: name, verifier instruction count, load ms, refusal (first line).
    pub verifier: Vec<(String, Option<u64>, f64, Option<String>)>,
    /// Everything from start to power-off.
    pub total: Duration,
    /// Why the guest failed, if it did.
    pub failure: Option<String>,
}

/// Boots `kernel` and runs [`CORE`] (those whose name contains `filter`) and the
/// verifier figures in it. Output lines are passed through prefixed with the kernel;
/// the console goes whole to `target/matrix/<kernel>/console.log`.
pub fn run_guest(
    root: &Path,
    kernel: Kernel,
    binaries: &[(String, PathBuf)],
    filter: Option<&str>,
) -> anyhow::Result<GuestRun> {
    let cached = Cached::read(&root.join(KERNELS_DIR), kernel)
        .with_context(|| format!("kernel {kernel} is not cached: run `cargo xtask setup`"))?;
    let out = root.join("target/matrix").join(kernel.to_string());
    if out.exists() {
        std::fs::remove_dir_all(&out)?;
    }
    std::fs::create_dir_all(&out)?;
    let object = root.join("target/bpfel-unknown-none/release/portcullis-ebpf");
    std::fs::write(
        out.join("env"),
        format!(
            "export PORTCULLIS_BIN={}\nexport PORTCULLIS_EBPF_OBJECT={}\nexport TESTS_DIR={}\n\
             export PORTCULLIS_TEST_PATIENCE={GUEST_PATIENCE}\n",
            root.join("target/release/portcullis").display(),
            object.display(),
            root.join("tests").display(),
        ),
    )?;
    let mut plan = String::new();
    let mut suites: Vec<&str> = Vec::new();
    for (suite, _, _) in CORE {
        if !suites.contains(suite) {
            suites.push(suite);
        }
    }
    for suite in suites {
        let tests: Vec<&str> = CORE
            .iter()
            .filter(|(s, name, _)| *s == suite && filter.is_none_or(|f| name.contains(f)))
            .map(|(_, name, _)| *name)
            .collect();
        if tests.is_empty() {
            continue;
        }
        let binary = binaries
            .iter()
            .find(|(name, _)| name == suite)
            .map(|(_, path)| path)
            .with_context(|| format!("no test binary {suite} was built"))?;
        plan.push_str(&format!(
            "{suite}\t{}\t{}\n",
            binary.display(),
            tests.join(" ")
        ));
    }
    std::fs::write(out.join("plan"), plan)?;

    let vng = root.join(VNG_DIR).join("bin");
    let script = root.join("xtask/guest.sh");
    let mut cmd = Command::new(vng.join("vng"));
    cmd.args(["--verbose", "--disable-kvm", "--force-9p", "--run"])
        .arg(cached.dir.join("vmlinuz"))
        .args(["--memory", "2G", "--cpus", "2", "--rwdir"])
        .arg(&out)
        .arg("--")
        .arg(format!("sh {} {}", script.display(), out.display()))
        .env(
            "PATH",
            format!(
                "{}:{}",
                vng.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting vng for kernel {kernel}"))?;
    // qemu's stderr (vng's messages) joins the console log.
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, String)>();
    let readers: Vec<_> = [
        Box::new(child.stdout.take().context("vng stdout")?) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().context("vng stderr")?),
    ]
    .into_iter()
    .map(|stream| {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).split(b'\n').map_while(Result::ok) {
                let line = String::from_utf8_lossy(&line).trim_end().to_owned();
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        })
    })
    .collect();
    drop(tx);

    let mut console = std::fs::File::create(out.join("console.log"))?;
    let mut run = GuestRun {
        kernel,
        release: cached.release.clone(),
        boot: None,
        steps: Vec::new(),
        results: Vec::new(),
        verifier: Vec::new(),
        total: Duration::ZERO,
        failure: None,
    };
    let mut step_started: Option<(String, Instant)> = None;
    let mut done = false;
    let mut refused = false;
    loop {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok((at, line)) => {
                writeln!(console, "{line}")?;
                if let Some(what) = line.strip_prefix("MATRIX: ") {
                    if what.starts_with("booted") {
                        run.boot = Some(at - started);
                    } else if let Some(name) = what.strip_prefix("start ") {
                        step_started = Some((name.to_owned(), at));
                    } else if let Some(name) = what.strip_prefix("end ") {
                        if let Some((n, t)) = step_started.take().filter(|(n, _)| n == name) {
                            let passed = rc_ok(&out, &n);
                            run.steps.push((n, at - t, passed));
                        }
                    } else if what == "refused" {
                        refused = true;
                    } else if what == "done" {
                        done = true;
                    }
                }
                // Kernel messages stay in the console log; the script's lines are shown.
                if !is_kernel_message(&line) {
                    println!("[{kernel}] {line}");
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if started.elapsed() > GUEST_TIMEOUT {
                    // Our own child (vng execs qemu): killed by its id.
                    let _ = child.kill();
                    run.failure = Some(format!(
                        "the guest did not finish within {GUEST_TIMEOUT:?} (killed)"
                    ));
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = child.wait()?;
    for r in readers {
        let _ = r.join();
    }
    run.total = started.elapsed();
    run.results = collect_results(&out, kernel);
    run.verifier = read_verifier(&out);
    if run.failure.is_none() {
        run.failure = if !done {
            Some(format!(
                "the guest stopped before its script finished (vng {status}); see {}",
                out.join("console.log").display()
            ))
        } else if run.verifier.is_empty() {
            Some("`portcullis debug verifier` printed nothing".to_owned())
        } else if refused {
            let names: Vec<&str> = run
                .verifier
                .iter()
                .filter(|(_, _, _, error)| error.is_some())
                .map(|(name, _, _, _)| name.as_str())
                .collect();
            Some(format!(
                "the kernel refused {} (see the table); the suites were not run",
                names.join(", ")
            ))
        } else if let Some((name, _, _)) = run.steps.iter().find(|(_, _, ok)| !ok) {
            Some(format!("{name} failed"))
        } else {
            None
        };
    }
    Ok(run)
}

/// CPU seconds (user + system) of this process's children that have been waited for:
/// vng and the qemu it runs, once a guest has stopped. /proc/self/stat counts in clock
/// ticks, 100 a second on Linux.
pub fn children_cpu() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (in parentheses, which may hold spaces): cutime and
    // cstime are fields 16 and 17 of the line, 14 and 15 after it.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(13) + ticks(14)) / 100.0
}

/// Whether a console line is the kernel's (`[   12.345678] ...`: microseconds).
fn is_kernel_message(line: &str) -> bool {
    line.strip_prefix('[')
        .and_then(|l| l.split_once(']'))
        .and_then(|(t, _)| t.trim().split_once('.'))
        .is_some_and(|(s, us)| {
            s.bytes().all(|b| b.is_ascii_digit())
                && us.len() == 6
                && us.bytes().all(|b| b.is_ascii_digit())
        })
}

/// Whether the guest recorded exit code 0 for a step.
fn rc_ok(out: &Path, step: &str) -> bool {
    std::fs::read_to_string(out.join(format!("{step}.rc"))).is_ok_and(|s| s.trim() == "0")
}

/// The `test result:` lines of every suite log, prefixed with the kernel and suite.
fn collect_results(out: &Path, kernel: Kernel) -> Vec<String> {
    let mut results = Vec::new();
    for (suite, _, _) in CORE {
        let Ok(log) = std::fs::read_to_string(out.join(format!("{suite}.log"))) else {
            continue;
        };
        let line = format!("[{kernel}] {suite}: ");
        for l in log.lines().filter(|l| l.starts_with("test result: ")) {
            let r = format!("{line}{l}");
            if !results.contains(&r) {
                results.push(r);
            }
        }
    }
    results
}

/// The guest's `debug verifier --json`, one entry per program.
fn read_verifier(out: &Path) -> Vec<(String, Option<u64>, f64, Option<String>)> {
    let Ok(text) = std::fs::read_to_string(out.join("verifier.json")) else {
        return Vec::new();
    };
    let Ok(serde_json::Value::Array(programs)) = serde_json::from_str(&text) else {
        return Vec::new();
    };
    programs
        .iter()
        .map(|p| {
            (
                p["program"].as_str().unwrap_or("?").to_owned(),
                p["insns_processed"].as_u64(),
                p["load_ms"].as_f64().unwrap_or(0.0),
                p["error"].as_str().map(refusal_summary),
            )
        })
        .collect()
}

/// The gist of a refusal for the summary table: the verifier's last line before its
/// statistics (`verification time`, `stack depth`, `processed N insns`), or the error's
/// first line.
fn refusal_summary(error: &str) -> String {
    const STATS: [&str; 4] = ["verification time", "stack depth", "processed ", ": "];
    let lines: Vec<&str> = error
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| l.rsplit_once("Verifier output: ").map_or(l, |(_, log)| log))
        .collect();
    let gist = lines
        .iter()
        .rev()
        .find(|l| !STATS.iter().any(|s| l.starts_with(s)))
        .or(lines.first())
        .copied()
        .unwrap_or("");
    gist.chars().take(100).collect()
}

/// The matrix part of the summary: per kernel its boot and step times, the verifier's
/// figures per program, and failures named by kernel.
pub fn print_summary(runs: &[GuestRun]) {
    if runs.is_empty() {
        return;
    }
    println!();
    println!("==> kernel matrix ({} guests, TCG)", runs.len());
    for run in runs {
        let boot = run
            .boot
            .map_or_else(|| "-".to_owned(), |b| format!("{:.0}s", b.as_secs_f64()));
        let steps: Vec<String> = run
            .steps
            .iter()
            .map(|(name, t, ok)| {
                format!(
                    "{name} {:.0}s{}",
                    t.as_secs_f64(),
                    if *ok { "" } else { " FAILED" }
                )
            })
            .collect();
        println!(
            "[{}] {}: total {:.0}s, boot {boot}, {}{}",
            run.kernel,
            run.release,
            run.total.as_secs_f64(),
            steps.join(", "),
            run.failure
                .as_ref()
                .map_or_else(String::new, |f| format!(" -- FAILED: {f}"))
        );
        for (program, insns, ms, error) in &run.verifier {
            let insns = insns.map_or_else(|| "n/a".to_owned(), |n| n.to_string());
            println!(
                "[{}]   verifier {program:<12} insns {insns:>8}  load {ms:>8.1} ms  {}",
                run.kernel,
                error
                    .as_ref()
                    .map_or_else(|| "loaded".to_owned(), |e| format!("REFUSED: {e}"))
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tells_kernel_messages_from_the_script_output() {
        assert!(super::is_kernel_message(
            "[   12.345678] virtme-ng-init: done"
        ));
        assert!(!super::is_kernel_message("[6.1] test result: ok."));
        assert!(!super::is_kernel_message("test result: ok. 1 passed"));
    }

    #[test]
    fn a_refusal_is_summed_up_by_the_verifiers_last_complaint() {
        let e = "loading program pc_egress (verifier): the BPF_PROG_LOAD syscall returned \
                 Permission denied. Verifier output: 0: (bf) r6 = r1\n\
                 R4 invalid mem access 'scalar'\n\
                 processed 301234 insns (limit 1000000) max_states_per_insn 4\n";
        assert_eq!(super::refusal_summary(e), "R4 invalid mem access 'scalar'");
        // As 6.1 refused pc_egress: the complaint is on the error's first line.
        let e = "loading program pc_egress (verifier): the BPF_PROG_LOAD syscall returned \
                 Permission denied (os error 13). Verifier output: combined stack size of 4 \
                 calls is 544. Too large\nverification time 38371850 usec\nstack depth 208+0\n\
                 processed 313300 insns (limit 1000000) max_states_per_insn 24\n\
                 : Permission denied (os error 13)";
        assert_eq!(
            super::refusal_summary(e),
            "combined stack size of 4 calls is 544. Too large"
        );
    }

    #[test]
    fn every_core_test_says_what_it_proves() {
        for (suite, name, why) in super::CORE {
            assert!(
                !suite.is_empty() && !name.is_empty() && why.len() > 20,
                "{name}"
            );
        }
    }
}
