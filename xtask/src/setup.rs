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
    ("prometheus", "tests: promtool check metrics"),
    ("bpftool", "tests: what is attached to a cgroup"),
    (
        "iperf3",
        "tests: TSO/GSO traffic through veth (reliability)",
    ),
    ("ethtool", "tests: turn TSO off on a veth (reliability)"),
];

const BPF_LINKER_VERSION: &str = "0.13.0";

pub(crate) fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Runs every step.
pub fn all() -> anyhow::Result<()> {
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
