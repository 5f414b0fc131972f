//! Reliability and adversarial tests (issue 9): how the agent fails, and that it never
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
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use portcullis_tests::{Lab, bin, denies, figures, must, net_py, rule_packets, sh, stderr, stdout};
use serde_json::Value;

const RULES: &str = r#"
[[rule]]
id = "web-out"
direction = "out"
protocol = "tcp"
ports = 8080
why = "test"
source = "tests"
"#;

/// Listeners on B: 8080 (allowed by [`RULES`]) and 8081 (denied).
fn servers(lab: &mut Lab) {
    for port in [8080, 8081] {
        lab.spawn_b(&format!("exec {} listen {port}", net_py()));
    }
    let (ns, b4) = (lab.ns_b.clone(), lab.b4.clone());
    lab.wait_tcp(&ns, &b4, 8080);
    lab.wait_tcp(&ns, &b4, 8081);
}

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
    lines: Arc<Mutex<Vec<String>>>,
}

impl Wrapped {
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
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().expect("stdout"));
        let err: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().expect("stderr"));
        for stream in [out, err] {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    lines.lock().expect("lines").push(line);
                }
            });
        }
        Wrapped { child, lines }
    }

    fn output(&self) -> String {
        self.lines.lock().expect("lines").join("\n")
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
    servers(&mut lab);
    let cfg = lab.config(RULES, "mode = \"enforce\"");
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
    let cfg = lab.config(RULES, "mode = \"enforce\"");
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
    assert_eq!(code, Some(1), "a clear failure, exit code 1:\n{out}");
    assert!(
        out.contains("no cgroup v2 filesystem is mounted"),
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
        &[("exit", "1".into()), ("ran_unenforced", "0".into())],
    );
}

#[test]
fn no_bpf_permission_is_a_clear_error_and_nothing_is_attached() {
    let mut lab = Lab::new("noperm");
    servers(&mut lab);
    let cfg = lab.config(RULES, "mode = \"enforce\"");
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
        let mut agent = Wrapped::start(
            &format!(
                "exec {wrapper} \"$PORTCULLIS\" run --config {}",
                cfg.display()
            ),
            &env,
        );
        let code = agent.wait_exit(Duration::from_secs(30));
        let out = agent.output();
        assert!(
            !out.contains("ready:"),
            "{who}: the agent must not claim to run:\n{out}"
        );
        assert_eq!(code, Some(1), "{who}: exit code 1:\n{out}");
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
    servers(&mut lab);
    let cfg = lab.config(RULES, "mode = \"enforce\"");
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
    let mut agent = Wrapped::start(
        &format!(
            "exec \"$PORTCULLIS\" run --config {} --on-exit keep",
            cfg.display()
        ),
        &env,
    );
    let code = agent.wait_exit(Duration::from_secs(30));
    let out = agent.output();
    assert!(
        !out.contains("ready:"),
        "a mismatched map must not be adopted:\n{out}"
    );
    assert_eq!(code, Some(1), "{out}");
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
    servers(&mut lab);
    let cfg = lab.config(RULES, "mode = \"enforce\"");
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
    servers(&mut lab);
    let cfg = lab.config(RULES, "mode = \"enforce\"");
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
