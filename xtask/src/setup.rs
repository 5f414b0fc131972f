//! `cargo xtask setup`: installs what the build and the tests need, skipping what is
//! already there. One line per step. Versions come from the recipe in TOOLCHAIN.md
//! (shared with the team): LLVM 22 for bpf-linker 0.13, nightly with rust-src.

use std::process::Command;

use anyhow::Context as _;

use crate::{sh, step};

/// Debian packages: building bpf-linker, and the real clients the root tests use.
const PACKAGES: &[(&str, &str)] = &[
    ("llvm-22-dev", "bpf-linker links against LLVM 22"),
    ("libpolly-22-dev", "bpf-linker links against LLVM 22"),
    ("libzstd-dev", "bpf-linker"),
    ("zlib1g-dev", "bpf-linker"),
    ("iproute2", "tests: ip netns, veth"),
    ("curl", "tests: HTTP client"),
    ("netcat-openbsd", "tests: TCP/UDP client"),
    ("dnsutils", "tests: dig, a DNS client"),
    ("nmap", "tests: port scans"),
    (
        "dnsmasq-base",
        "tests: a real DNS server (binary only, no service)",
    ),
    ("python3", "tests: small servers"),
    ("python3-venv", "tests: the ansible-core venv (fleet tests)"),
    ("prometheus", "tests: promtool check metrics"),
    ("bpftool", "tests: what is attached to a cgroup"),
    (
        "iperf3",
        "tests: TSO/GSO traffic through veth (reliability)",
    ),
    ("ethtool", "tests: turn TSO off on a veth (reliability)"),
    (
        "systemd-container",
        "tests: systemd-nspawn boots a real systemd host",
    ),
    (
        "debootstrap",
        "tests: the Debian 12 root filesystem of that host",
    ),
    ("lintian", "dist: the package is checked with lintian"),
    (
        "qemu-system-x86",
        "kernel matrix: the guests of the other kernels",
    ),
    (
        "kmod",
        "kernel matrix: depmod for the guest kernels' modules",
    ),
    (
        "busybox-static",
        "kernel matrix: virtme-ng's initramfs for the guests",
    ),
    ("binutils", "dist: cargo-deb strips the binary with strip"),
    (
        "dpkg-dev",
        "dist: cargo-deb reads the architecture from dpkg",
    ),
    ("rpmlint", "dist: the .rpm is checked with rpmlint"),
    (
        "rpm",
        "tests: the .rpm installed, upgraded and erased in a scratch root",
    ),
    ("jq", "tests: the help examples that pipe --json into jq"),
    (
        "nftables",
        "tests: nft loads and checks the nftables export (tests/export.rs)",
    ),
];

/// cargo-deb builds the .deb (`cargo xtask dist`); 3.8.0 declares rust-version 1.85 and
/// builds with the toolchain of TOOLCHAIN.md.
const CARGO_DEB_VERSION: &str = "3.8.0";

/// cargo-generate-rpm builds the .rpm (`cargo xtask dist`); 0.16.1 builds with the
/// toolchain of TOOLCHAIN.md (`cargo install --locked`, about 10 minutes on 2 cores).
const CARGO_GENERATE_RPM_VERSION: &str = "0.16.1";

/// The Debian 12 root filesystem the systemd tests boot with systemd-nspawn
/// (`tests/support/nspawn.rs` copies it per test), relative to the workspace root.
pub const ROOTFS_DIR: &str = "target/nspawn/bookworm";

/// What the root filesystem holds beyond `minbase`: systemd as PID 1 and its bus, the
/// tools the tests call inside (ip, python3 for clients, bpftool to list links), and
/// what the package itself depends on (libc6 is in minbase).
const ROOTFS_PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "iproute2",
    "python3",
    "bpftool",
    "python3-apt", // the apt module of the Ansible role (tests/fleet.rs)
    // Debian's real Postfix for the unit-scope tests (tests/systemd.rs): postfix.service
    // is a oneshot wrapper, the daemon runs in postfix@-.service. Installed, not enabled
    // (see ROOTFS_DISABLED), so other tests' hosts run no mail server.
    "postfix",
    // Dovecot beside Postfix is how `portcullis detect` recognises iredmail: the package
    // test installs the .deb on such a host and finds that product chosen
    // (tests/install.rs). Installed, not enabled, like Postfix.
    "dovecot-core",
];

/// Services of [`ROOTFS_PACKAGES`] that are installed but not started at boot: the tests
/// that want them start them.
const ROOTFS_DISABLED: &[&str] = &["postfix.service", "dovecot.service"];

const BPF_LINKER_VERSION: &str = "0.13.0";

pub(crate) fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Runs every step.
pub fn all() -> anyhow::Result<()> {
    packages()?;
    toolchains()?;
    // The cargo tools compile for minutes on a fresh machine (CPU) while the venv, the
    // root filesystem and the kernels mostly download (network): side by side, setup
    // costs the longer of the two rather than their sum.
    let compiled = std::thread::spawn(|| -> anyhow::Result<()> {
        bpf_linker()?;
        cargo_tool("cargo-deb", "deb", CARGO_DEB_VERSION)?;
        cargo_tool(
            "cargo-generate-rpm",
            "generate-rpm",
            CARGO_GENERATE_RPM_VERSION,
        )
    });
    let root = crate::workspace_root();
    let downloaded = crate::ansible::venv(&root)
        .and_then(|()| rootfs(&root))
        .and_then(|()| crate::kernels::setup(&root));
    let compiled = compiled
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p));
    downloaded.and(compiled)
}

fn packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| !installed(p))
        .collect();
    if missing.is_empty() {
        step("setup: system packages present");
    } else {
        step(&format!("setup: installing {}", missing.join(" ")));
        sh(Command::new("apt-get").args(["update", "-qq"]))?;
        sh(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    Ok(())
}

fn toolchains() -> anyhow::Result<()> {
    let toolchains = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .context("running rustup")?;
    if String::from_utf8_lossy(&toolchains.stdout)
        .lines()
        .any(|l| l.starts_with("nightly"))
    {
        step("setup: nightly toolchain present");
    } else {
        step("setup: installing the nightly toolchain");
        sh(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let components = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .context("running rustup")?;
    if String::from_utf8_lossy(&components.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        step("setup: nightly rust-src present");
    } else {
        step("setup: adding rust-src to nightly (build-std for the BPF target)");
        sh(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

/// bpf-linker at its pinned version, built against LLVM 22 (a few minutes).
fn bpf_linker() -> anyhow::Result<()> {
    let ok = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION));
    if ok {
        step(&format!("setup: bpf-linker {BPF_LINKER_VERSION} present"));
    } else {
        step(&format!(
            "setup: installing bpf-linker {BPF_LINKER_VERSION} (llvm-22, a few minutes)"
        ));
        let path = format!(
            "/usr/lib/llvm-22/bin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        sh(Command::new("cargo")
            .args([
                "install",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("PATH", path)
            .env_remove("RUSTUP_TOOLCHAIN"))?;
    }
    Ok(())
}

/// A cargo subcommand at its pinned version, installed with `cargo install --locked`.
fn cargo_tool(krate: &str, subcommand: &str, version: &str) -> anyhow::Result<()> {
    let ok = Command::new("cargo")
        .args([subcommand, "--version"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(version));
    if ok {
        step(&format!("setup: {krate} {version} present"));
        return Ok(());
    }
    step(&format!(
        "setup: installing {krate} {version} (a few minutes)"
    ));
    sh(Command::new("cargo")
        .args(["install", "--locked", &format!("{krate}@{version}")])
        .env_remove("RUSTUP_TOOLCHAIN"))
}

/// The mirror of `suite` (`bookworm`, `bookworm-security`): the first `URIs:` of the
/// sources that carry it, in the deb822 file this machine's apt uses. debootstrap and the
/// kernel matrix's private apt take their mirrors from here.
pub(crate) fn debian_mirror(suite: &str) -> anyhow::Result<String> {
    let path = "/etc/apt/sources.list.d/debian.sources";
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    text.split("\n\n")
        .filter(|stanza| {
            stanza
                .lines()
                .any(|l| l.starts_with("Suites:") && l.split_whitespace().any(|s| s == suite))
        })
        .flat_map(str::lines)
        .find_map(|l| l.strip_prefix("URIs:"))
        .and_then(|uris| uris.split_whitespace().next())
        .map(str::to_owned)
        .with_context(|| format!("no URIs: line for {suite} in {path}"))
}

/// The cached root filesystem of the systemd tests. Built into a temporary directory and
/// renamed when complete, so an interrupted run never leaves a half-built one; a stamp
/// file names the package list, so changing [`ROOTFS_PACKAGES`] rebuilds it.
fn rootfs(root: &std::path::Path) -> anyhow::Result<()> {
    let dir = root.join(ROOTFS_DIR);
    let stamp = dir.join(".portcullis-rootfs");
    let want = ROOTFS_PACKAGES.join(",");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == want) {
        step(&format!("setup: Debian 12 rootfs present ({ROOTFS_DIR})"));
        return Ok(());
    }
    let mirror = debian_mirror("bookworm")?;
    step(&format!(
        "setup: debootstrap Debian 12 into {ROOTFS_DIR} from {mirror} (about a minute)"
    ));
    let tmp = dir.with_extension("tmp");
    for old in [&tmp, &dir] {
        if old.exists() {
            std::fs::remove_dir_all(old).with_context(|| format!("removing {}", old.display()))?;
        }
    }
    std::fs::create_dir_all(dir.parent().context("rootfs parent")?)?;
    sh(Command::new("debootstrap")
        .args([
            "--variant=minbase",
            &format!("--include={want}"),
            "bookworm",
        ])
        .arg(&tmp)
        .arg(&mirror))?;
    // Keep the cache small: the downloaded .debs are not needed once installed.
    for entry in std::fs::read_dir(tmp.join("var/cache/apt/archives"))?.flatten() {
        if entry.path().extension().is_some_and(|e| e == "deb") {
            std::fs::remove_file(entry.path())?;
        }
    }
    // Offline: systemctl edits the unit links of the root it is given.
    sh(Command::new("systemctl")
        .arg(format!("--root={}", tmp.display()))
        .arg("disable")
        .args(ROOTFS_DISABLED))?;
    std::fs::write(tmp.join(".portcullis-rootfs"), format!("{want}\n"))?;
    std::fs::rename(&tmp, &dir)
        .with_context(|| format!("renaming {} to {}", tmp.display(), dir.display()))?;
    Ok(())
}
