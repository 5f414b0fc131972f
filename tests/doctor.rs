//! `portcullis doctor` on the running kernel: every probe the agent's features depend on
//! is named in its JSON and found present, the real programs verify, and it exits 0 for
//! the default policy, without a config and without a running agent (the kernel matrix
//! runs the same command in each guest). The denied side: without privileges it cannot
//! tell and exits 1 (while `check` still validates); a unit scope where systemd is not
//! the service manager is refused by `doctor` (exit 1) and by `check` and `run` (exit 3,
//! before anything is loaded).

use std::{path::Path, process::Command};

use portcullis_tests::{bin, figures, require_root, stderr, stdout};
use serde_json::Value;

/// Every probe `doctor --json` must name, by its stable identifier.
const PROBES: &[&str] = &[
    "kernel",
    "bpf",
    "unprivileged_bpf",
    "program_type:cgroup_skb",
    "program_type:cgroup_sock_addr",
    "program_type:xdp",
    "map_type:array",
    "map_type:percpu_array",
    "map_type:hash",
    "map_type:lru_hash",
    "map_type:lru_percpu_hash",
    "map_type:lpm_trie",
    "map_type:ringbuf",
    "map_type:sk_storage",
    "map_type:array_mmapable",
    "helper:bpf_ktime_get_coarse_ns/cgroup_skb",
    "helper:bpf_ktime_get_coarse_ns/cgroup_sock_addr",
    "helper:bpf_ktime_get_coarse_ns/xdp",
    "helper:bpf_ktime_get_boot_ns/cgroup_skb",
    "helper:bpf_ktime_get_boot_ns/cgroup_sock_addr",
    "helper:bpf_ktime_get_boot_ns/xdp",
    "helper:bpf_sk_storage_get/cgroup_skb",
    "helper:bpf_sk_storage_get/cgroup_sock_addr",
    "helper:bpf_sk_fullsock/cgroup_skb",
    "helper:bpf_skb_cgroup_id/cgroup_skb",
    "helper:bpf_skb_load_bytes/cgroup_skb",
    "helper:bpf_ringbuf_reserve/cgroup_skb",
    "helper:bpf_ringbuf_reserve/cgroup_sock_addr",
    "helper:bpf_ringbuf_reserve/xdp",
    "helper:bpf_get_current_pid_tgid/cgroup_sock_addr",
    "helper:bpf_get_current_comm/cgroup_sock_addr",
    "helper:bpf_get_current_cgroup_id/cgroup_sock_addr",
    "btf",
    "cgroup2",
    "bpffs",
    "lockdown",
    "systemd",
];

const PROGRAMS: &[&str] = &[
    "pc_ingress",
    "pc_egress",
    "pc_connect4",
    "pc_connect6",
    "pc_xdp",
];

fn doctor(args: &[&str]) -> (std::process::Output, Value) {
    let out = Command::new(bin())
        .arg("doctor")
        .args(args)
        .arg("--json")
        .output()
        .expect("running portcullis doctor");
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor --json printed no JSON ({e}):\nstdout: {}\nstderr: {}",
            stdout(&out),
            stderr(&out)
        )
    });
    (out, json)
}

fn feature<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["features"]
        .as_array()
        .expect("features is an array")
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("doctor --json names no probe {name:?}: {report:#}"))
}

/// Whether systemd is the service manager here (what the systemd probe reports).
fn systemd_runs() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

#[test]
fn doctor_finds_every_feature_on_the_host_kernel_and_the_programs_verify() {
    require_root();
    // No config, no product, no agent: as the kernel matrix and the Ansible role run it.
    let (out, report) = doctor(&[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "doctor on the host kernel must pass: {report:#}\nstderr: {}",
        stderr(&out)
    );
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["refusal"], Value::Null, "{report:#}");
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    assert_eq!(report["kernel"]["release"], release.trim(), "{report:#}");
    assert!(report["kernel"]["version"][0].as_u64().unwrap_or(0) >= 5);
    let names: Vec<&str> = report["features"]
        .as_array()
        .expect("features")
        .iter()
        .map(|f| f["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, PROBES, "the probes, in their documented order");
    for f in report["features"].as_array().expect("features") {
        // Every probe a policy can need is present on the host kernel (6.x); bpffs may
        // be unmounted (a warning: `run` mounts it); only info probes may say anything.
        let status = f["status"].as_str().expect("status");
        match f["need"].as_str().expect("need") {
            "info" => assert_ne!(status, "unknown", "{f:#}"),
            "units" if !systemd_runs() => assert_eq!(status, "missing", "{f:#}"),
            _ if f["name"] == "bpffs" => assert!(status == "ok" || status == "warn", "{f:#}"),
            _ => assert_eq!(status, "ok", "{f:#}"),
        }
    }
    let mut fields = Vec::new();
    for (p, name) in report["programs"]
        .as_array()
        .expect("programs")
        .iter()
        .zip(PROGRAMS)
    {
        assert_eq!(p["name"], *name, "{p:#}");
        assert_eq!(p["status"], "ok", "{p:#}");
        let insns = p["verified_instructions"].as_u64().unwrap_or(0);
        assert!(insns > 0 && insns < 1_000_000, "{p:#}");
        fields.push((*name, format!("{insns}insns/{}ms", p["load_ms"])));
    }
    assert_eq!(
        report["programs"].as_array().map(Vec::len),
        Some(PROGRAMS.len())
    );
    figures("doctor_host_programs", &fields);

    // The text form says the same.
    let text = Command::new(bin())
        .args(["doctor", "--no-verify"])
        .output()
        .expect("doctor");
    assert_eq!(text.status.code(), Some(0), "{}", stdout(&text));
    assert!(
        stdout(&text).contains("ok: this host can enforce the policy as written"),
        "{}",
        stdout(&text)
    );
}

#[test]
fn doctor_without_privileges_cannot_tell_and_check_still_validates() {
    require_root();
    let nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(bin())
            .args(args)
            .output()
            .expect("running setpriv (util-linux)")
    };
    let out = nobody(&["doctor", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("doctor --json");
    assert_eq!(report["ok"], false, "{report:#}");
    // Not knowing is not a refusal: nothing was found missing.
    assert_eq!(report["refusal"], Value::Null, "{report:#}");
    assert_eq!(feature(&report, "bpf")["status"], "unknown", "{report:#}");
    assert_eq!(
        feature(&report, "helper:bpf_sk_storage_get/cgroup_skb")["status"],
        "unknown",
        "{report:#}"
    );
    assert!(
        report["programs"]
            .as_array()
            .expect("programs")
            .iter()
            .all(|p| p["status"] == "unknown"),
        "{report:#}"
    );
    // `check` needs no root: it refuses only what a probe found missing.
    let dir = std::env::temp_dir().join(format!("pc-doctor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let site = dir.join("site.toml");
    std::fs::write(&site, "product = \"xeams\"\n").expect("site");
    let check = nobody(&["check", "--config", site.to_str().expect("utf-8")]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(check.status.code(), Some(0), "{}", stderr(&check));
}

#[test]
fn doctor_check_and_run_refuse_a_unit_scope_without_systemd_as_the_service_manager() {
    require_root();
    let dir = std::env::temp_dir().join(format!("pc-doctor-units-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let site = dir.join("site.toml");
    std::fs::write(
        &site,
        "product = \"xeams\"\nscope = [\"pc-doctor-probe.service\"]\n",
    )
    .expect("site");
    let site_arg = site.to_str().expect("utf-8");
    let (out, report) = doctor(&["--config", site_arg, "--no-verify"]);
    // Allowed: the same host with the host scope passes.
    let (host, host_report) = doctor(&["--no-verify"]);
    assert_eq!(host.status.code(), Some(0), "{host_report:#}");
    let check = Command::new(bin())
        .args(["check", "--config", site_arg])
        .output()
        .expect("check");
    if systemd_runs() {
        assert_eq!(report["policy"]["needs"]["units"], true, "{report:#}");
        assert_eq!(out.status.code(), Some(0), "{report:#}");
        assert_eq!(check.status.code(), Some(0), "{}", stderr(&check));
    } else {
        // Denied: the unit scope is refused where the config is read, the same way by
        // doctor, check and run (exit 3, at the scope's line, naming systemd), and run
        // has loaded nothing.
        const WHY: &str = "not the service manager here";
        assert_eq!(out.status.code(), Some(3), "{report:#}");
        assert_eq!(report["error"]["line"], 2, "{report:#}");
        let why = report["error"]["message"].as_str().expect("a message");
        assert!(why.contains(WHY), "{why}");
        assert_eq!(check.status.code(), Some(3), "{}", stderr(&check));
        assert!(stderr(&check).contains(WHY), "{}", stderr(&check));
        let pin_dir = Path::new("/sys/fs/bpf").join(format!("pc-doctor-{}", std::process::id()));
        let run = Command::new(bin())
            .args(["run", "--config", site_arg, "--pin-dir"])
            .arg(&pin_dir)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .output()
            .expect("run");
        assert_eq!(run.status.code(), Some(3), "{}", stderr(&run));
        assert!(stderr(&run).contains(WHY), "{}", stderr(&run));
        assert!(!pin_dir.exists(), "run pinned something before refusing");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn doctor_exits_3_on_an_invalid_config_and_2_on_a_usage_error() {
    require_root();
    let dir = std::env::temp_dir().join(format!("pc-doctor-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let site = dir.join("site.toml");
    std::fs::write(&site, "product = \"xeams\"\nmode = \"sometimes\"\n").expect("site");
    let (out, report) = doctor(&["--config", site.to_str().expect("utf-8")]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(3), "{report:#}");
    assert_eq!(report["ok"], false, "{report:#}");
    assert_eq!(report["error"]["line"], 2, "{report:#}");
    let usage = Command::new(bin())
        .args(["doctor", "--feature", "pop3"])
        .output()
        .expect("doctor");
    assert_eq!(usage.status.code(), Some(2), "{}", stderr(&usage));
}
