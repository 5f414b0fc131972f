//! Support for the root integration tests and `cargo xtask bench`: one lab of real kernel
//! objects and one frame builder.
//!
//! - [`lab`]: network namespaces, veth pairs, cgroups and processes as guard values, and
//!   the root tests' [`Lab`] built from them;
//! - [`agent`]: the real `portcullis run` (`PORTCULLIS_BIN`, set by `cargo xtask test`),
//!   which loads the real eBPF programs into the running kernel;
//! - [`frames`]: crafted Ethernet frames for BPF_PROG_TEST_RUN;
//! - [`object`] (feature `object`, on by default): the eBPF object loaded directly, for
//!   the XDP tests;
//! - [`corpus`]: a corpus of flows tried on the lab and on a twin pair of namespaces
//!   protected by another firewall, for differential tests;
//! - [`status`]: reading `portcullis status --json`;
//! - [`dns`]: a real resolver (dnsmasq) on B with a zone of the test's, and a fake one
//!   that sends crafted answers, for the names tests.
//!
//! Root is required. Without it, or without BPF, the tests FAIL with a message; the
//! only way to skip them is `PORTCULLIS_SKIP_ROOT_TESTS=1`, which `cargo xtask test`
//! honours loudly (it does not run this crate at all).

pub mod agent;
pub mod corpus;
pub mod dns;
pub mod frames;
pub mod lab;
pub mod load;
pub mod nspawn;
#[cfg(feature = "object")]
pub mod object;
pub mod status;
pub mod workload;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

pub use agent::{Agent, AgentSpec};
pub use dns::{Delivery, Wire, Zone};
pub use lab::{
    Cgroup, End, Lab, Netns, Proc, Signal, cgroup2_mount, in_cgroup_netns, in_netns, output, rule,
    veth, web_out,
};
pub use status::{denied_port, denies, reported_ports, rule_field, rule_packets};

/// The `portcullis` binary under test.
pub fn bin() -> PathBuf {
    std::env::var_os("PORTCULLIS_BIN").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/portcullis"),
        PathBuf::from,
    )
}

/// How many times longer than on a real machine the tests wait for something to
/// happen: `PORTCULLIS_TEST_PATIENCE` (a whole factor, default 1). The kernel matrix sets
/// it in its qemu guests, where TCG makes every process start tens of times slower; the
/// outcomes asserted stay the same, only the waiting is longer.
pub fn patience() -> u32 {
    match std::env::var("PORTCULLIS_TEST_PATIENCE") {
        Err(_) => 1,
        Ok(v) => v.parse().ok().filter(|f| *f >= 1).unwrap_or_else(|| {
            panic!("PORTCULLIS_TEST_PATIENCE={v:?}: expected a whole factor >= 1")
        }),
    }
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Panics unless running as root: root tests never skip silently.
pub fn require_root() {
    assert!(
        is_root(),
        "root integration tests need root (they load eBPF programs and create namespaces); \
         run `cargo xtask test` as root, or set PORTCULLIS_SKIP_ROOT_TESTS=1 to skip them explicitly"
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
