//! Reliability and adversarial tests: how the agent fails, and that it never
//! fails open.
//!
//! What `tests/service.rs` (kill -9 and 1000 reloads under load, a bad reload, detach)
//! and `tests/datapath.rs` already show is not repeated here. This file adds the faults
//! (bpffs not mounted, no cgroup v2, no BPF permission, the enforced cgroup removed and
//! created again, maps pinned by another layout, a full ring buffer), GSO traffic
//! through veth, and bad input on reload (every kind of compiler error, oversized and
//! non-UTF-8 files, the SSH failsafe).
//!
//! Mount faults are made in private mount namespaces (`unshare --mount --propagation
//! private`): the host's bpffs and cgroup mounts are never touched. Each test prints its
//! figures with [`figures`] for the summary `cargo xtask test` ends with.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use portcullis_tests::{
    Agent, Lab, agent::Captured, bin, denies, figures, must, net_py, object::LivePolicy, rule,
    rule_packets, sh, stderr, stdout, web_out,
};
use serde_json::Value;

/// `net.py connect` from A (enforced): ok | EPERM | timeout | ...
fn connect(lab: &Lab, host: &str, port: u16) -> String {
    stdout(&lab.on_a(&format!("{} connect {host} {port}", net_py())))
        .trim()
        .to_owned()
}

/// Asserts the lab policy is enforced: 8080 allowed, 8081 refused with EPERM.
#[track_caller]
fn assert_enforced(lab: &Lab, when: &str) {
    assert_eq!(
        connect(lab, &lab.b4, 8080),
        "ok",
        "{when}: the allowed connection failed"
    );
    assert_eq!(
        connect(lab, &lab.b4, 8081),
        "EPERM",
        "{when}: the denied connection was not refused"
    );
}

/// Program names attached to a cgroup (bpftool).
fn attached(cgroup: &Path) -> String {
    stdout(&sh(&format!(
        "bpftool cgroup show {} 2>&1",
        cgroup.display()
    )))
}

/// A `portcullis run` started through a wrapper (unshare, setpriv), with its output
/// collected. Killed (SIGKILL) when dropped if still running.
struct Wrapped {
    child: Child,
    output: Captured,
}

impl Wrapped {
    /// Runs `script` (a `portcullis run` that must be refused) to its end and returns its
    /// output, after checking it never claimed to be ready and exited with 1 (`what`
    /// says which case failed).
    fn refused(script: &str, env: &[(String, String)], what: &str) -> String {
        let mut agent = Wrapped::start(script, env);
        let code = agent.wait_exit(Duration::from_secs(30));
        let out = agent.output();
        assert!(
            !out.contains("ready:"),
            "{what}: the agent must not claim to run:\n{out}"
        );
        assert_eq!(code, Some(1), "{what}: exit code 1:\n{out}");
        out
    }

    /// Runs `sh -c script` with the agent's environment; `$PORTCULLIS` is the binary.
    fn start(script: &str, env: &[(String, String)]) -> Wrapped {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .env("PORTCULLIS", bin())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the wrapped agent");
        let output = Captured::start(&mut child);
        Wrapped { child, output }
    }

    fn output(&self) -> String {
        self.output.text()
    }

    /// Waits for the ready line; panics with the output if the agent exits first.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.output().lines().any(|l| l.starts_with("ready:")) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "the agent exited ({status}) before it was ready:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the agent was not ready after 30 s:\n{}", self.output());
    }

    /// Waits for the process to exit; returns its exit code (None: killed by a signal).
    fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "the agent was still running after {within:?}:\n{}",
            self.output()
        );
    }
}

impl Drop for Wrapped {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `script` (sh) in a new, private mount namespace: mounts and unmounts there
/// never reach the host. The shell and `$PORTCULLIS` exec in turn, so the pid is the
/// agent's.
fn in_private_mount_ns(script: &str, env: &[(String, String)]) -> Wrapped {
    let mut env = env.to_vec();
    env.push(("INNER".into(), script.into()));
    Wrapped::start(
        "exec unshare --mount --propagation private -- sh -c \"$INNER\"",
        &env,
    )
}

/// The environment `Lab::agent` gives its agent: pin and state directories of its own.
fn agent_env(lab: &Lab) -> Vec<(String, String)> {
    vec![
        (
            "PORTCULLIS_PIN_DIR".into(),
            format!("/sys/fs/bpf/portcullis-{}", lab.tag),
        ),
        (
            "PORTCULLIS_STATE_DIR".into(),
            lab.dir.join("state").display().to_string(),
        ),
    ]
}

// ---------------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------------

#[test]
fn bpffs_not_mounted_the_agent_mounts_it_and_enforces() {
    let mut lab = Lab::new("nobpffs");
    lab.web_listeners_on_b();
    let cfg = lab.config(&web_out(), "mode = \"enforce\"");
    let env = agent_env(&lab);
    let host_pin = PathBuf::from(&env[0].1);
    let host_mounts_before = must("grep -c ' - bpf ' /proc/self/mountinfo");
    // In a private mount namespace: unmount every bpffs at /sys/fs/bpf (stacked mounts
    // included), prove it is gone, then become the agent (exec keeps the pid).
    let mut agent = in_private_mount_ns(
        &format!(
            "while grep -q ' /sys/fs/bpf .* - bpf ' /proc/self/mountinfo; do umount /sys/fs/bpf || exit 97; done
             if grep -q ' - bpf ' /proc/self/mountinfo; then echo 'a bpffs is still mounted'; exit 98; fi
             exec \"$PORTCULLIS\" run --config {}",
            cfg.display()
        ),
        &env,
    );
    agent.wait_ready();
    let pid = agent.child.id();
    // The agent's namespace now has a bpffs at /sys/fs/bpf again: the one it mounted.
    let ns_mounts = must(&format!("cat /proc/{pid}/mountinfo"));
    assert!(
        ns_mounts
            .lines()
            .any(|l| l.contains(" /sys/fs/bpf ") && l.contains(" - bpf ")),
        "the agent did not mount bpffs at /sys/fs/bpf in its namespace:\n{ns_mounts}"
    );
    assert!(
        agent.output().contains("mounted bpffs at /sys/fs/bpf"),
        "the agent logs the mount:\n{}",
        agent.output()
    );
    // The host's mounts are untouched, and the pins live only in the new bpffs.
    assert_eq!(
        must("grep -c ' - bpf ' /proc/self/mountinfo"),
        host_mounts_before,
        "host bpffs mounts changed"
    );
    assert!(
        !host_pin.exists(),
        "pins appeared in the host's bpffs: {}",
        host_pin.display()
    );

    assert_enforced(&lab, "agent on the bpffs it mounted");
    let status = Command::new("nsenter")
        .arg(format!("--mount=/proc/{pid}/ns/mnt"))
        .arg("--")
        .arg(bin())
        .args(["status", "--json"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("status in the agent's namespace");
    assert!(
        status.status.success(),
        "status in the agent's mount namespace: {}",
        stderr(&status)
    );
    let s: Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    assert_eq!(s["attached_links"], 4, "{s:#}");
    let allowed = rule_packets(&s, "web-out");
    assert!(allowed > 0, "{s:#}");
    assert_eq!(denies(&s, "out", "no-rule", false).0, 1, "{s:#}");

    // SIGTERM: the agent detaches and exits 0.
    // SAFETY: kill(2) on our child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    assert_eq!(
        agent.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        agent.output()
    );
    assert!(
        !attached(&lab.cgroup).contains("pc_"),
        "programs left attached: {}",
        attached(&lab.cgroup)
    );
    figures(
        "bpffs-not-mounted",
        &[
            ("mounted", "yes".into()),
            ("allowed_packets", allowed.to_string()),
            ("denied", "1".into()),
            ("host_mounts_touched", "0".into()),
        ],
    );
}

#[test]
fn no_cgroup2_mount_is_a_clear_error_and_nothing_is_attached() {
    let lab = Lab::new("nocg2");
    let cfg = lab.config(&web_out(), "mode = \"enforce\"");
    let env = agent_env(&lab);
    let pin = PathBuf::from(&env[0].1);
    // Hide every cgroup2 mount in a private namespace (the host keeps its own), and only
    // then start the agent: it must refuse, not run without enforcement.
    let mut agent = in_private_mount_ns(
        &format!(
            "for m in $(awk '{{ for (i = 7; i <= NF; i++) if ($i == \"-\") {{ if ($(i+1) == \"cgroup2\") print $5; break }} }}' /proc/self/mountinfo | sort -r); do
                 umount -l \"$m\" || exit 97
             done
             if grep -q ' - cgroup2 ' /proc/self/mountinfo; then echo 'a cgroup2 mount is still there'; exit 98; fi
             exec \"$PORTCULLIS\" run --config {}",
            cfg.display()
        ),
        &env,
    );
    let code = agent.wait_exit(Duration::from_secs(30));
    let out = agent.output();
    assert!(
        !out.contains("ready:"),
        "the agent must not run without cgroup v2:\n{out}"
    );
    // Refused as a policy this host cannot carry (what `doctor` probes): exit 3.
    assert_eq!(code, Some(3), "a clear refusal, exit code 3:\n{out}");
    assert!(
        out.contains("no cgroup2 filesystem"),
        "the error says what is missing:\n{out}"
    );
    assert!(
        out.contains("mount -t cgroup2"),
        "and how to fix it:\n{out}"
    );
    assert!(!pin.exists(), "nothing pinned: {}", pin.display());
    assert!(
        !attached(&lab.cgroup).contains("pc_"),
        "nothing attached: {}",
        attached(&lab.cgroup)
    );
    figures(
        "no-cgroup2",
        &[("exit", "3".into()), ("ran_unenforced", "0".into())],
    );
}

#[test]
fn no_bpf_permission_is_a_clear_error_and_nothing_is_attached() {
    let mut lab = Lab::new("noperm");
    lab.web_listeners_on_b();
    let cfg = lab.config(&web_out(), "mode = \"enforce\"");
    let env = agent_env(&lab);
    let pin = PathBuf::from(&env[0].1);
    // Root without any capability, then an ordinary user (nobody): both must fail.
    let state = lab.dir.join("state");
    std::fs::create_dir_all(&state).expect("state dir");
    must(&format!(
        "chmod 0777 {} {}",
        lab.dir.display(),
        state.display()
    ));
    let cases = [
        (
            "root without capabilities",
            "setpriv --inh-caps=-all --ambient-caps=-all --bounding-set=-all --",
        ),
        (
            "user nobody",
            "setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all --bounding-set=-all --",
        ),
    ];
    for (who, wrapper) in cases {
        let out = Wrapped::refused(
            &format!(
                "exec {wrapper} \"$PORTCULLIS\" run --config {}",
                cfg.display()
            ),
            &env,
            who,
        );
        assert!(out.contains("error:"), "{who}: an error line:\n{out}");
        assert!(
            out.contains("CAP_BPF")
                || out.contains("CAP_SYS_ADMIN")
                || out.contains("ermission denied"),
            "{who}: the error names the missing privilege:\n{out}"
        );
        assert!(
            !attached(&lab.cgroup).contains("pc_"),
            "{who}: nothing attached: {}",
            attached(&lab.cgroup)
        );
        assert!(
            !pin.join("links").exists()
                || std::fs::read_dir(pin.join("links")).map_or(0, Iterator::count) == 0,
            "{who}: no links pinned"
        );
        // Without an agent nothing is enforced, and nothing pretends to be.
        assert_eq!(
            connect(&lab, &lab.b4, 8081),
            "ok",
            "{who}: no enforcement was left behind"
        );
        let _ = sh(&format!("rm -rf {}", pin.display()));
    }
    figures(
        "no-bpf-permission",
        &[
            ("cases", cases.len().to_string()),
            ("ran_unenforced", "0".into()),
        ],
    );
}

#[test]
fn pinned_maps_of_another_layout_are_refused_and_the_old_programs_keep_enforcing() {
    let mut lab = Lab::new("layout");
    lab.web_listeners_on_b();
    let cfg = lab.config(&web_out(), "mode = \"enforce\"");
    let agent = lab.agent(&cfg, &["--on-exit", "keep"]);
    let env = agent.env.clone();
    let pin_dir = agent.pin_dir.clone();
    agent.kill9();
    // An "older version" left PC_RATE with another value size: replace the pin (the
    // running programs keep their own map; only the pinned name changes).
    let rate = pin_dir.join("maps/PC_RATE");
    must(&format!(
        "rm {r} && bpftool map create {r} type percpu_array key 4 value 8 entries 1 name PC_RATE",
        r = rate.display()
    ));
    let out = Wrapped::refused(
        &format!(
            "exec \"$PORTCULLIS\" run --config {} --on-exit keep",
            cfg.display()
        ),
        &env,
        "a mismatched map must not be adopted",
    );
    assert!(
        out.contains("PC_RATE") && out.contains("another layout"),
        "the error names the map:\n{out}"
    );
    assert!(
        out.contains("value 8 B") && out.contains("value 16 B"),
        "and both layouts:\n{out}"
    );
    assert!(out.contains("portcullis detach"), "and the way out:\n{out}");
    // The refused start changed nothing: the earlier programs still enforce.
    assert_enforced(&lab, "after the refused start");
    assert!(rate.exists(), "the refused start must not remove pins");
    // The way out works: detach, then a fresh start.
    let detach = Command::new(bin())
        .arg("detach")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("detach");
    assert!(detach.status.success(), "{}", stderr(&detach));
    let agent = lab.agent(&cfg, &[]);
    assert_enforced(&lab, "after detach and a fresh start");
    assert_eq!(agent.status()["attached_links"], 4);
    figures(
        "pinned-map-layout",
        &[
            ("refused", "1".into()),
            ("old_policy_kept", "yes".into()),
            ("restart_after_detach", "ok".into()),
        ],
    );
}

#[test]
fn enforced_cgroup_removed_and_created_again_is_reattached_within_two_seconds() {
    let mut lab = Lab::new("recg");
    lab.web_listeners_on_b();
    let cfg = lab.config(&web_out(), "mode = \"enforce\"");
    let agent = lab.agent(&cfg, &[]);
    assert_enforced(&lab, "before");
    let mut rounds = Vec::new();
    for round in 0..3 {
        std::fs::remove_dir(&lab.cgroup).expect("removing the (empty) enforced cgroup");
        // Gone for a moment, as with a unit restart; then created again.
        std::thread::sleep(Duration::from_millis(if round == 0 { 1500 } else { 0 }));
        std::fs::create_dir(&lab.cgroup).expect("creating the cgroup again");
        let t = Instant::now();
        while !attached(&lab.cgroup).contains("pc_connect4") {
            assert!(
                t.elapsed() < Duration::from_secs(2),
                "round {round}: not re-attached after 2 s:\n{}",
                agent.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        rounds.push(t.elapsed().as_millis());
        let programs = attached(&lab.cgroup);
        for p in ["pc_ingress", "pc_egress", "pc_connect4", "pc_connect6"] {
            assert_eq!(
                programs.matches(p).count(),
                1,
                "round {round}: {p} attached once: {programs}"
            );
        }
        assert_enforced(&lab, &format!("round {round}, re-attached"));
        assert_eq!(
            agent.status()["attached_links"],
            4,
            "round {round}: exactly the new links are pinned"
        );
    }
    let out = agent.output();
    assert_eq!(
        out.matches("re-attached").count(),
        3,
        "each re-attach is logged:\n{out}"
    );
    assert!(out.contains("was removed"), "the removal is logged:\n{out}");
    let worst = rounds.iter().max().copied().unwrap_or(0);
    figures(
        "cgroup-recreated",
        &[
            ("rounds", rounds.len().to_string()),
            ("reattach_ms_max", worst.to_string()),
            ("bound_ms", "2000".into()),
        ],
    );
}

#[test]
fn full_ring_buffer_loses_events_not_enforcement() {
    let mut lab = Lab::new("ring");
    lab.web_listeners_on_b();
    let cfg = lab.config(&web_out(), "mode = \"enforce\"");
    // No rate limit to speak of: every deny tries the ring buffer.
    let agent = lab.agent(&cfg, &["--events-per-sec", "10000000"]);
    // The agent stops reading (SIGSTOP): the ring fills, the kernel goes on enforcing.
    must(&format!("kill -STOP {}", agent.pid()));
    let n: u64 = 50_000;
    let sent = stdout(&lab.on_a(&format!("{} udp-send {} 9999 {n} 16", net_py(), lab.b4)));
    assert_eq!(
        sent.trim(),
        format!("sent=0 eperm={n}"),
        "every denied datagram refused"
    );
    assert_enforced(&lab, "agent stopped, ring full");
    let s = agent.status();
    let (denied, _) = denies(&s, "out", "no-rule", false);
    assert_eq!(
        denied,
        n + 1,
        "every deny counted (datagrams and the refused connect): {s:#}"
    );
    let ev = &s["events"];
    let ring_full = ev["ring_full"].as_u64().unwrap_or(0);
    let events_sent = ev["sent"].as_u64().unwrap_or(0);
    let limited = ev["rate_limited"].as_u64().unwrap_or(0);
    assert!(ring_full > 0, "the ring buffer must have overflowed: {ev}");
    assert_eq!(
        events_sent + ring_full + limited,
        n + 1,
        "each deny is an event sent, lost or rate-limited: {ev}"
    );
    must(&format!("kill -CONT {}", agent.pid()));
    // The agent catches up and goes on working.
    std::thread::sleep(Duration::from_millis(500));
    assert_enforced(&lab, "agent resumed");
    // The deny log is itself rate-limited: some lines, never more than events sent.
    let printed = agent
        .output()
        .lines()
        .filter(|l| l.contains("udp") && (l.contains("deny out") || l.contains("verdict=deny")))
        .count() as u64;
    assert!(
        printed > 0 && printed <= events_sent,
        "logged {printed} of {events_sent} events sent:\n{}",
        agent.output()
    );
    figures(
        "ring-buffer-full",
        &[
            ("denies", (n + 1).to_string()),
            ("denies_counted", denied.to_string()),
            ("events_sent", events_sent.to_string()),
            ("ring_full", ring_full.to_string()),
            ("rate_limited", limited.to_string()),
            ("denied_passed", "0".into()),
        ],
    );
}

// ---------------------------------------------------------------------------------
// Load
// ---------------------------------------------------------------------------------

/// TCP counters of a namespace from /proc/net/snmp: (InSegs, OutSegs, RetransSegs).
fn tcp_segments(ns: &str) -> (u64, u64, u64) {
    let snmp = stdout(
        &Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .args(["cat", "/proc/net/snmp"])
            .output()
            .expect("snmp"),
    );
    let tcp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Tcp:")).collect();
    let (names, values) = (
        tcp[0].split_whitespace().collect::<Vec<_>>(),
        tcp[1].split_whitespace().collect::<Vec<_>>(),
    );
    let get = |n: &str| {
        values[names.iter().position(|x| *x == n).expect("snmp field")]
            .parse::<u64>()
            .expect("number")
    };
    (get("InSegs"), get("OutSegs"), get("RetransSegs"))
}

/// (rx_packets, tx_packets) of an interface in a namespace, from /proc/net/dev.
fn dev_packets(ns: &str, iface: &str) -> (u64, u64) {
    let dev = stdout(
        &Command::new("nsenter")
            .arg(format!("--net=/run/netns/{ns}"))
            .args(["cat", "/proc/net/dev"])
            .output()
            .expect("net/dev"),
    );
    let line = dev
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{iface}:")))
        .expect("interface in /proc/net/dev");
    let f: Vec<u64> = line
        .split(':')
        .nth(1)
        .expect("stats")
        .split_whitespace()
        .map(|v| v.parse().expect("number"))
        .collect();
    (f[1], f[9])
}

#[test]
fn gso_buffers_are_counted_as_wire_packets() {
    let mut lab = Lab::new("gso");
    lab.spawn_b("exec iperf3 -s -p 5201");
    let (ns, b4) = (lab.ns_b.clone(), lab.b4.clone());
    lab.wait_tcp(&ns, &b4, 5201);
    let cfg = lab.config(
        "[[rule]]\nid = \"iperf\"\ndirection = \"out\"\nprotocol = \"tcp\"\nports = 5201\nwhy = \"test\"\nsource = \"tests\"\n",
        "mode = \"enforce\"",
    );
    let agent = lab.agent(&cfg, &[]);
    let veth_b = format!("{}y", lab.tag);
    let mut figs = Vec::new();
    // Round 1: offloads as veth has them (TSO on): the GSO buffers cross the veth whole,
    // so the device counts buffers; the truth is TCP's own segment count.
    // Round 2: TSO off on A: the stack still builds GSO buffers (software GSO), the
    // programs see them whole, and they are cut into wire-size packets before the veth,
    // so the receiver's device counters are the wire packets.
    for (round, tso) in [(1, "on"), (2, "off")] {
        must(&format!(
            "nsenter --net=/run/netns/{} ethtool -K {} tso {tso}",
            lab.ns_a,
            lab.veth_a()
        ));
        let r0 = rule_packets(&agent.status(), "iperf");
        let (in0, out0, re0) = tcp_segments(&lab.ns_a);
        let (rx0, tx0) = dev_packets(&lab.ns_b, &veth_b);
        let run = lab.on_a(&format!("iperf3 -c {} -p 5201 -t 2 -J", lab.b4));
        assert!(
            run.status.success(),
            "iperf3 (allowed) failed: {}{}",
            stdout(&run),
            stderr(&run)
        );
        let report: Value = serde_json::from_slice(&run.stdout).expect("iperf3 -J");
        let bps = report["end"]["sum_sent"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0);
        std::thread::sleep(Duration::from_millis(200));
        let rule = rule_packets(&agent.status(), "iperf") - r0;
        let (in1, out1, re1) = tcp_segments(&lab.ns_a);
        let (rx1, tx1) = dev_packets(&lab.ns_b, &veth_b);
        let segs = (in1 - in0) + (out1 - out0) + (re1 - re0);
        let dev = (rx1 - rx0) + (tx1 - tx0);
        // Within 0.1 %: a stray segment (a late ACK, an IPv6 neighbour probe) may land on
        // either side of a snapshot.
        let close = |a: u64, b: u64| a.abs_diff(b) <= (b / 1000).max(8);
        assert!(
            close(rule, segs),
            "round {round} (tso {tso}): the rule counted {rule} packets, TCP sent and received {segs} segments"
        );
        if tso == "on" {
            assert!(
                dev * 3 < segs,
                "round {round}: GSO buffers should have crossed the veth whole ({dev} buffers for {segs} segments)"
            );
        } else {
            assert!(
                close(rule, dev),
                "round {round} (tso off): the rule counted {rule} packets, the receiver's device {dev}"
            );
        }
        figs.push((tso, rule, segs, dev, bps));
    }
    // The denied side: iperf3 to a port no rule opens fails at connect().
    let denied = lab.on_a(&format!("iperf3 -c {} -p 5202 -t 1", lab.b4));
    assert!(
        !denied.status.success(),
        "iperf3 to a port no rule opens must fail"
    );
    let s = agent.status();
    assert!(
        denies(&s, "out", "no-rule", false).0 >= 1,
        "the refused connect is counted: {s:#}"
    );
    let (_, r1, s1, d1, b1) = figs[0];
    let (_, r2, s2, d2, b2) = figs[1];
    figures(
        "gso-veth",
        &[
            ("tso_on_rule_packets", r1.to_string()),
            ("tso_on_tcp_segments", s1.to_string()),
            ("tso_on_device_buffers", d1.to_string()),
            ("tso_off_rule_packets", r2.to_string()),
            ("tso_off_tcp_segments", s2.to_string()),
            ("tso_off_receiver_packets", d2.to_string()),
            ("gbit_s", format!("{:.1}/{:.1}", b1 / 1e9, b2 / 1e9)),
        ],
    );
}

// ---------------------------------------------------------------------------------
// Bad input
// ---------------------------------------------------------------------------------

/// One broken config: which file, its new text, the exit code `reload` must give
/// (None: any failure) and a piece of the message.
struct Bad {
    name: &'static str,
    file: &'static str,
    text: Vec<u8>,
    code: Option<i32>,
    needle: &'static str,
}

/// Every kind of mistake the compiler knows (see agent/src/compiler/tests.rs), plus
/// files that are too big, not UTF-8, missing or empty, scopes that do not resolve and a
/// policy that does not fit the maps.
fn bad_configs(profile: &str, site: &str) -> Vec<Bad> {
    let p = |name, from: &str, to: &str, needle| {
        assert!(
            profile.contains(from),
            "{name}: {from:?} not in the profile"
        );
        Bad {
            name,
            file: "profile.toml",
            text: profile.replacen(from, to, 1).into_bytes(),
            code: Some(3),
            needle,
        }
    };
    let s_add = |name, extra: &str, needle| Bad {
        name,
        file: "site.toml",
        text: format!("{site}\n{extra}\n").into_bytes(),
        code: Some(3),
        needle,
    };
    let s_rep = |name, from: &str, to: &str, needle| {
        assert!(site.contains(from), "{name}: {from:?} not in the site");
        Bad {
            name,
            file: "site.toml",
            text: site.replacen(from, to, 1).into_bytes(),
            code: Some(3),
            needle,
        }
    };
    let site_rule = |id: &str, more: &str| {
        format!(
            "[[rule]]\nid = \"{id}\"\ndirection = \"in\"\nprotocol = \"tcp\"\nports = 9000\nwhy = \"w\"\n{more}"
        )
    };
    let many: String = (0..5000)
        .map(|i| format!("[[rule]]\nid = \"r{i}\"\ndirection = \"out\"\nprotocol = \"tcp\"\nports = {}\nwhy = \"w\"\nsource = \"s\"\n", 10000 + i))
        .collect();
    let mut big = site.as_bytes().to_vec();
    big.extend(b"\n# ");
    big.extend(std::iter::repeat_n(b'x', 1 << 20));
    let mut big_profile = profile.as_bytes().to_vec();
    big_profile.extend(b"\n# ");
    big_profile.extend(std::iter::repeat_n(b'x', 1 << 20));
    let mut latin1 = site.as_bytes().to_vec();
    latin1.extend(b"\n# caf\xe9\n");
    let mut latin1_profile = profile.as_bytes().to_vec();
    latin1_profile.extend(b"\n# \xff\xfe\n");
    vec![
        p("port-above-65535", "ports = 8080", "ports = 80800", "80800"),
        p("port-zero", "ports = 8080", "ports = [8080, 0]", "port 0"),
        p(
            "reversed-range",
            "ports = 8080",
            "ports = \"9000-8000\"",
            "reversed",
        ),
        p("empty-port-list", "ports = 8080", "ports = []", "empty"),
        p(
            "bad-direction",
            "direction = \"out\"",
            "direction = \"outbound\"",
            "outbound",
        ),
        p(
            "bad-protocol",
            "protocol = \"tcp\"",
            "protocol = \"sctp\"",
            "sctp",
        ),
        Bad {
            name: "duplicate-rule-id",
            file: "profile.toml",
            text: format!("{profile}\n{}source = \"s\"\n", site_rule("web-out", "")).into_bytes(),
            code: Some(3),
            needle: "duplicate rule id",
        },
        p(
            "unknown-field-profile",
            "why = \"test\"",
            "why = \"test\"\nfeatures = \"x\"",
            "unknown field",
        ),
        p(
            "unknown-feature-in-profile",
            "why = \"test\"",
            "why = \"test\"\nfeature = \"nope\"",
            "nope",
        ),
        p(
            "bad-rule-id",
            "id = \"web-out\"",
            "id = \"Web Out\"",
            "Web Out",
        ),
        p("missing-field", "why = \"test\"\n", "", "missing field"),
        p(
            "toml-syntax",
            "ports = 8080",
            "ports = [8080",
            "profile.toml",
        ),
        p(
            "loopback-rule-with-peers",
            "why = \"test\"",
            "why = \"test\"\nscope = \"loopback\"\npeers = \"dbs\"",
            "loopback",
        ),
        p(
            "peer-group-not-defined",
            "why = \"test\"",
            "why = \"test\"\npeers = \"backup\"",
            "backup",
        ),
        p(
            "bad-peer-group-name",
            "why = \"test\"",
            "why = \"test\"\npeers = \"DNS Servers\"",
            "DNS Servers",
        ),
        p("bad-slug", "slug = \"lab\"", "slug = \"Lab!\"", "Lab!"),
        s_add("unknown-field-site", "modes = \"audit\"", "unknown field"),
        s_rep(
            "bad-mode",
            "mode = \"enforce\"",
            "mode = \"enforcing\"",
            "enforcing",
        ),
        s_add(
            "bad-cidr",
            "[peers]\nweb = [\"10.0.0.300/8\"]",
            "10.0.0.300/8",
        ),
        s_add("unknown-feature-site", "features = [\"pop3\"]", "pop3"),
        s_add(
            "peer-group-unused",
            "[peers]\nunused = [\"192.0.2.1/32\"]",
            "not used",
        ),
        s_add(
            "any-peer-group-unused",
            "any_peer_groups = [\"nothing\"]",
            "nothing",
        ),
        s_add(
            "peer-group-empty",
            &format!(
                "[peers]\nbk = []\n\n{}peers = \"bk\"",
                site_rule("bk-in", "")
            ),
            "empty",
        ),
        s_add(
            "duplicate-id-site-and-profile",
            &site_rule("web-out", ""),
            "duplicate rule id",
        ),
        Bad {
            name: "failsafe-id-taken",
            file: "site.toml",
            text: format!(
                "{}\n{}",
                site.replacen("failsafe = false", "failsafe = true", 1),
                site_rule("failsafe-ssh", "")
            )
            .into_bytes(),
            code: Some(3),
            needle: "failsafe",
        },
        s_add("product-and-profile", "product = \"xeams\"", "both"),
        s_rep(
            "no-product",
            "profile = \"profile.toml\"",
            "",
            "names no product",
        ),
        s_rep(
            "unknown-product",
            "profile = \"profile.toml\"",
            "product = \"xeam\"",
            "xeam",
        ),
        s_rep(
            "missing-profile-file",
            "profile = \"profile.toml\"",
            "profile = \"nope.toml\"",
            "nope.toml",
        ),
        s_rep(
            "bad-events-per-sec",
            "events_per_sec = 1000",
            "events_per_sec = -1",
            "site.toml:3: invalid value: integer `-1`",
        ),
        s_add(
            "relative-pin-dir",
            "pin_dir = \"relative/pins\"",
            "relative",
        ),
        s_rep(
            "scope-leaves-cgroup-mount",
            "scope = [",
            "scope = [\"../escape\", ",
            "escape",
        ),
        // A cgroup path that does not exist is accepted with a warning (attached when it
        // appears); a unit scope systemd cannot vouch for is refused: here, without
        // systemd as PID 1, "systemd is not the service manager"; with it, "systemd
        // knows no unit".
        Bad {
            name: "scope-unit-systemd-cannot-vouch-for",
            file: "site.toml",
            text: site
                .replacen("scope = [", "scope = [\"no-such.service\", ", 1)
                .into_bytes(),
            code: Some(3),
            needle: "no-such.service",
        },
        Bad {
            name: "more-rules-than-fit",
            file: "profile.toml",
            text: format!("{profile}\n{many}").into_bytes(),
            code: Some(3),
            needle: "rules",
        },
        Bad {
            name: "oversized-site",
            file: "site.toml",
            text: big,
            code: Some(3),
            needle: "larger than 1048576 bytes",
        },
        Bad {
            name: "oversized-profile",
            file: "profile.toml",
            text: big_profile,
            code: Some(3),
            needle: "larger than 1048576 bytes",
        },
        Bad {
            name: "non-utf8-site",
            file: "site.toml",
            text: latin1,
            code: Some(3),
            needle: "not UTF-8",
        },
        Bad {
            name: "non-utf8-profile",
            file: "profile.toml",
            text: latin1_profile,
            code: Some(3),
            needle: "not UTF-8",
        },
        Bad {
            name: "empty-site",
            file: "site.toml",
            text: Vec::new(),
            code: Some(3),
            needle: "names no product",
        },
        Bad {
            name: "profile-deleted",
            file: "profile.toml",
            text: b"\0delete".to_vec(),
            code: Some(3),
            needle: "cannot read profile",
        },
    ]
}

fn state_file(lab: &Lab) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(lab.dir.join("state/state.json")).expect("state file"),
    )
    .expect("state JSON")
}

#[test]
fn every_kind_of_bad_config_on_reload_leaves_the_running_policy_untouched() {
    let mut lab = Lab::new("badcfg");
    lab.web_listeners_on_b();
    let cfg = lab.config(&web_out(), "mode = \"enforce\"");
    let agent = lab.agent(&cfg, &[]);
    let profile = std::fs::read_to_string(lab.dir.join("profile.toml")).expect("profile");
    let site = std::fs::read_to_string(&cfg).expect("site");
    let before = agent.status();
    let cases = bad_configs(&profile, &site);
    let mut agent_rejections = 0;
    for bad in &cases {
        let path = lab.dir.join(bad.file);
        if bad.text == b"\0delete" {
            std::fs::remove_file(&path).expect("removing the profile");
        } else {
            std::fs::write(&path, &bad.text).expect("writing the bad config");
        }
        // 1. `portcullis reload` refuses it with a clear message.
        let out = agent.cli(&["reload", "--timeout", "10"]);
        let err = stderr(&out);
        assert!(
            !out.status.success(),
            "{}: reload accepted a bad config",
            bad.name
        );
        if let Some(code) = bad.code {
            assert_eq!(
                out.status.code(),
                Some(code),
                "{}: exit code: {err}",
                bad.name
            );
        }
        assert!(
            err.contains(bad.needle),
            "{}: the message should contain {:?}: {err}",
            bad.name,
            bad.needle
        );
        // The file at fault: the one edited, or the other one where the fix belongs
        // (a peer group a profile rule uses is defined in the site config).
        assert!(
            err.contains("profile.toml") || err.contains("site.toml") || bad.code.is_none(),
            "{}: the message names a file: {err}",
            bad.name
        );
        assert!(
            err.len() < 2000,
            "{}: a message, not a dump ({} bytes)",
            bad.name,
            err.len()
        );
        // 2. The agent, signalled directly (no validation in front), rejects it too.
        let attempt = state_file(&lab)["last_reload"]["attempt"]
            .as_u64()
            .unwrap_or(0);
        must(&format!("kill -HUP {}", agent.pid()));
        let t = Instant::now();
        let outcome = loop {
            let s = state_file(&lab);
            if s["last_reload"]["attempt"].as_u64().unwrap_or(0) > attempt {
                break s["last_reload"].clone();
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{}: the agent did not answer SIGHUP",
                bad.name
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(
            outcome["ok"], false,
            "{}: the agent accepted a bad config: {outcome}",
            bad.name
        );
        agent_rejections += 1;
        // 3. Nothing changed: same policy version and generation, same enforcement.
        let now = agent.status();
        for key in ["policy_version", "generation", "mode", "attached_links"] {
            assert_eq!(now[key], before[key], "{}: {key} changed", bad.name);
        }
        assert_enforced(&lab, bad.name);
        std::fs::write(lab.dir.join("profile.toml"), &profile).expect("restoring");
        std::fs::write(&cfg, &site).expect("restoring");
    }
    // And a good config still goes through afterwards.
    let out = agent.cli(&["reload"]);
    assert!(
        out.status.success(),
        "the restored config must reload: {}",
        stderr(&out)
    );
    let after = agent.status();
    assert_eq!(
        after["policy_version"].as_u64(),
        before["policy_version"].as_u64().map(|v| v + 1)
    );
    assert!(rule_packets(&after, "web-out") > 0);
    figures(
        "bad-config-reloads",
        &[
            ("inputs", cases.len().to_string()),
            ("rejected_by_reload", cases.len().to_string()),
            ("rejected_by_agent", agent_rejections.to_string()),
            ("policy_changed", "0".into()),
        ],
    );
}

#[test]
fn ssh_stays_reachable_unless_the_config_says_failsafe_false() {
    let mut lab = Lab::new("ssh");
    // Services on A: "sshd" on 22, and 2222 that no rule opens.
    for port in [22, 2222] {
        lab.spawn_a(&format!("exec {} listen {port}", net_py()));
    }
    let (ns, a4) = (lab.ns_a.clone(), lab.a4.clone());
    lab.wait_tcp(&ns, &a4, 22);
    lab.wait_tcp(&ns, &a4, 2222);
    let from_b = |port: u16| {
        stdout(&lab.on_b(&format!("{} connect {} {port}", net_py(), lab.a4)))
            .trim()
            .to_owned()
    };
    let cfg = lab.config(&web_out(), "");
    // The site as an operator writes it: enforce, and nothing said about the failsafe.
    let site = |failsafe: &str, scope: &str| {
        format!(
            "profile = \"profile.toml\"\nmode = \"enforce\"\nevents_per_sec = 1000\nscope = [\"{scope}\"]\n{failsafe}"
        )
    };
    let checked = |text: String| -> Value {
        let path = lab.write("check.toml", &text);
        let out = Command::new(bin())
            .args(["check", "--json", "--config"])
            .arg(&path)
            .output()
            .expect("check");
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).expect("check --json")
    };
    let has_failsafe = |v: &Value| {
        v["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .any(|r| r["id"] == "failsafe-ssh")
    };
    // Host scope in enforce mode is what could lock an operator out: the failsafe rule
    // is there unless the config turns it off by name.
    let host = checked(site("", "host"));
    assert!(
        host["failsafe"] == true && has_failsafe(&host),
        "enforce + host scope keeps the failsafe: {host:#}"
    );
    let off = checked(site("failsafe = false\n", "host"));
    assert!(
        off["failsafe"] == false && !has_failsafe(&off),
        "only failsafe = false removes it: {off:#}"
    );

    std::fs::write(&cfg, site("", &lab.cgroup_rel)).expect("site");
    let agent = lab.agent(&cfg, &[]);
    assert_eq!(
        from_b(22),
        "ok",
        "failsafe on: inbound SSH must stay reachable in enforce mode"
    );
    assert_eq!(
        from_b(2222),
        "timeout",
        "a port no rule opens gets no answer"
    );
    let s = agent.status();
    assert!(rule_packets(&s, "failsafe-ssh") > 0, "{s:#}");
    assert!(denies(&s, "in", "no-rule", false).0 > 0, "{s:#}");

    // Explicitly off: the operator asked for it, SSH is closed like any other port.
    std::fs::write(&cfg, site("failsafe = false\n", &lab.cgroup_rel)).expect("site");
    let out = agent.cli(&["reload"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        from_b(22),
        "timeout",
        "failsafe = false: inbound SSH is denied as written"
    );
    // And back.
    std::fs::write(&cfg, site("", &lab.cgroup_rel)).expect("site");
    let out = agent.cli(&["reload"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(from_b(22), "ok", "failsafe on again: SSH reachable");
    assert_eq!(from_b(2222), "timeout");
    figures(
        "ssh-failsafe",
        &[
            ("configs", "4".into()),
            ("ssh_open_with_failsafe", "2/2".into()),
            ("ssh_closed_only_when_false", "yes".into()),
        ],
    );
}

/// The lab's two policies for the generation tests: A and B differ in rules, peer groups,
/// peer networks and host names, so an entry of one left in the other's generation is
/// visible (in the peer trie and in the name tables).
fn generation_configs(lab: &Lab) -> [(String, String); 2] {
    let db = rule("db-out", "out", "tcp", 5432, "peers = \"dbs\"");
    let relay = rule("relay-out", "out", "tcp", 25, "peers = \"relays\"");
    [
        (
            web_out() + &db,
            format!(
                "mode = \"enforce\"\n[peers]\ndbs = [\"{}/32\", \"192.0.2.0/24\", \"2001:db8::/48\", \"db.lab.test\", \"*.dbs.lab.test\"]\n",
                lab.b4
            ),
        ),
        (
            web_out() + &relay + &db,
            "mode = \"enforce\"\n[peers]\ndbs = [\"198.51.100.0/24\", \"db2.lab.test\"]\nrelays = [\"203.0.113.0/24\", \"2001:db8:25::/64\", \"*.relay.test\"]\n"
                .to_owned(),
        ),
    ]
}

/// Asserts that the live generation of the agent's pinned maps (config, port table, peer
/// trie) is exactly the image of the policy `status` reports (`portcullis debug image`).
#[track_caller]
fn assert_live_is_status_policy(agent: &Agent, when: &str) {
    let status = agent.status();
    let out = agent.cli(&["debug", "image"]);
    assert!(
        out.status.success(),
        "{when}: debug image: {}",
        stderr(&out)
    );
    let image: Value = serde_json::from_slice(&out.stdout).expect("debug image prints JSON");
    assert_eq!(
        (&image["policy_version"], &image["generation"]),
        (&status["policy_version"], &status["generation"]),
        "{when}: the image is not of the policy status reports"
    );
    let want = LivePolicy::from_image(&image, status["mode"] == "enforce");
    let have = LivePolicy::read(&agent.pin_dir);
    assert!(
        have == want,
        "{when}: the live maps differ from the image of the policy status reports (v{}):\nlive: gen {} {} ports, peers {:?}, names {:?}, slots with names {}\nimage: gen {} {} ports, peers {:?}, names {:?}, slots with names {}",
        status["policy_version"],
        have.generation,
        have.ports.len(),
        have.peers,
        have.names,
        have.slot_names.len(),
        want.generation,
        want.ports.len(),
        want.peers,
        want.names,
        want.slot_names.len()
    );
    assert!(
        !want.names.is_empty() && !want.slot_names.is_empty(),
        "{when}: the generation policies have host names: the name tables must be compared"
    );
}

/// A reload killed at any of its steps (the agent's test-only fault points,
/// `PORTCULLIS_FAULT_AT`) leaves nothing behind that the restarted agent does not
/// repair. 200 kills, cycling through every step, alternating two policies whose peer
/// entries differ; after each restart the live maps are exactly the image of the policy
/// `status` reports. Before the idle generation was cleared before filling, a kill
/// between the flip and the cleanup left the old policy's peer entries in the generation
/// the restart then filled and made live.
#[test]
fn reload_killed_at_every_step_leaves_the_live_maps_equal_to_the_status_policy() {
    const KILLS: usize = 200;
    const STEPS: usize = 9;
    let mut lab = Lab::new("faults");
    lab.web_listeners_on_b();
    let configs = generation_configs(&lab);
    let cfg = lab.config(&configs[0].0, &configs[0].1);
    let start = |kill: usize| {
        let step = (1 + kill % STEPS).to_string();
        lab.agent_env(
            &cfg,
            &["--on-exit", "keep"],
            &[("PORTCULLIS_FAULT_AT", step.as_str())],
        )
    };
    let mut agent = start(0);
    assert_live_is_status_policy(&agent, "at the start");
    let t0 = Instant::now();
    for kill in 0..KILLS {
        let (rules, site) = &configs[(kill + 1) % 2];
        lab.config(rules, site);
        agent.reload_killed();
        agent = start(kill + 1);
        let when = format!("after kill {kill} at step {}", 1 + kill % STEPS);
        assert_live_is_status_policy(&agent, &when);
        if kill % 100 == 99 {
            let s0 = agent.status();
            assert_enforced(&lab, &when);
            let s1 = agent.status();
            assert!(
                rule_packets(&s1, "web-out") > rule_packets(&s0, "web-out")
                    && denies(&s1, "out", "no-rule", false).0
                        > denies(&s0, "out", "no-rule", false).0,
                "{when}: the allowed and the denied connection are counted: {s1:#}"
            );
        }
    }
    let elapsed = t0.elapsed();
    drop(agent);
    figures(
        "reload_killed_at_every_step",
        &[
            ("kills", KILLS.to_string()),
            ("steps", STEPS.to_string()),
            ("seconds", format!("{:.1}", elapsed.as_secs_f64())),
        ],
    );
}

/// `portcullis mode` and reloads are serialised (the install lock). 100
/// reloads, each raced by a `mode` switch; after each, the live generation and mode are
/// those `status` reports. Before, `mode` could write back the configuration it read
/// before a reload's flip: the old generation live again under a state file that says
/// otherwise.
#[test]
fn mode_racing_reloads_never_revives_an_old_generation() {
    const RELOADS: usize = 100;
    let mut lab = Lab::new("moderace");
    lab.web_listeners_on_b();
    let configs = generation_configs(&lab);
    let cfg = lab.config(&configs[0].0, &configs[0].1);
    let mut agent = lab.agent(&cfg, &[]);
    for i in 0..RELOADS {
        let (rules, site) = &configs[(i + 1) % 2];
        lab.config(rules, site);
        let mode = if i % 2 == 0 { "audit" } else { "enforce" };
        let mut racer = Command::new(bin());
        racer
            .args(["mode", mode])
            .envs(agent.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let racer = racer.spawn().expect("portcullis mode");
        agent.reload().expect("reload");
        let out = racer.wait_with_output().expect("portcullis mode");
        assert!(out.status.success(), "mode {mode}: {}", stderr(&out));
        let status = agent.status();
        let live = LivePolicy::read(&agent.pin_dir);
        assert_eq!(
            (u64::from(live.generation), live.enforce),
            (
                status["generation"].as_u64().expect("generation"),
                status["mode"] == "enforce"
            ),
            "reload {i} raced by mode {mode}: the live generation and mode are not those status reports"
        );
        assert_live_is_status_policy(&agent, &format!("reload {i} raced by mode {mode}"));
    }
    // Back in enforce mode, the policy enforces and counts.
    let out = agent.cli(&["mode", "enforce"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s0 = agent.status();
    assert_enforced(&lab, "after the race");
    let s1 = agent.status();
    assert!(
        rule_packets(&s1, "web-out") > rule_packets(&s0, "web-out")
            && denies(&s1, "out", "no-rule", false).0 > denies(&s0, "out", "no-rule", false).0,
        "the allowed and the denied connection are counted: {s1:#}"
    );
    figures("mode_racing_reloads", &[("reloads", RELOADS.to_string())]);
}
