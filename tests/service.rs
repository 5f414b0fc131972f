//! The agent as a service: the systemd unit, the notification protocol, reload
//! (good and bad), kill -9 and restart while traffic flows, detach.

use std::{
    os::unix::net::UnixDatagram,
    path::Path,
    time::{Duration, Instant},
};

use portcullis_tests::{
    Agent, Lab, bin, denies,
    load::{assert_nothing_lost, load_figures},
    must, net_py, rule_packets, sh, stderr, stdout, web_out,
};

fn links(agent: &Agent) -> usize {
    std::fs::read_dir(agent.pin_dir.join("links")).map_or(0, Iterator::count)
}

#[test]
fn unit_file_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/packaging/portcullis.service"),
    )
    .expect("reading the unit file");
    // verify checks that ExecStart's binary exists: point it at the one under test.
    let dir = std::env::temp_dir().join(format!("portcullis-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("portcullis.service");
    std::fs::write(
        &path,
        unit.replace("/usr/bin/portcullis", &bin().display().to_string()),
    )
    .expect("writing unit");
    let out = sh(&format!(
        "systemd-analyze verify --man=no {} 2>&1",
        path.display()
    ));
    let text = stdout(&out);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{text}"
    );
    assert!(
        !text.contains("portcullis.service:"),
        "systemd-analyze found problems in the unit:\n{text}"
    );
}

#[test]
fn notify_ready_only_after_attach_then_reloading_ready_and_watchdog() {
    let lab = Lab::new("notify");
    let socket_path = lab.dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("binding the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let cfg = lab.config(&web_out(), "mode = \"enforce\"");
    let agent = lab.agent_env(
        &cfg,
        &[],
        &[
            ("NOTIFY_SOCKET", &socket_path.display().to_string()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    let mut buf = [0u8; 4096];
    let mut next = || {
        let n = socket.recv(&mut buf).expect("a notification within 10 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let first = next();
    assert!(
        first.starts_with("READY=1"),
        "first notification must be READY=1, got {first:?}"
    );
    assert_eq!(
        links(&agent),
        4,
        "READY=1 came before the four programs were attached"
    );
    assert!(first.contains("STATUS=enforcing lab"), "{first:?}");

    let reload = agent.cli(&["reload"]);
    assert!(
        reload.status.success(),
        "reload failed: {}",
        stderr(&reload)
    );
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline
        && !(seen.iter().any(|m: &String| m.starts_with("RELOADING=1"))
            && seen.last().is_some_and(|m| m.starts_with("READY=1")))
    {
        seen.push(next());
    }
    let reloading = seen
        .iter()
        .position(|m| m.starts_with("RELOADING=1"))
        .expect("RELOADING=1");
    assert!(seen[reloading].contains("MONOTONIC_USEC="), "{seen:?}");
    assert!(
        seen[reloading..].iter().any(|m| m.starts_with("READY=1")),
        "READY=1 after RELOADING=1: {seen:?}"
    );
    let start = Instant::now();
    let mut pings = 0;
    while start.elapsed() < Duration::from_secs(1) {
        if next().contains("WATCHDOG=1") {
            pings += 1;
        }
    }
    assert!(
        pings >= 5,
        "WATCHDOG=1 every 100 ms expected, got {pings} in 1 s"
    );
    let out = agent.stop();
    let stopping = next_all(&socket);
    assert!(
        stopping.iter().any(|m| m.contains("STOPPING=1")),
        "STOPPING=1 on exit: {stopping:?}\n{out}"
    );
}

fn next_all(socket: &UnixDatagram) -> Vec<String> {
    socket
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    let mut v = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = socket.recv(&mut buf) {
        v.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    v
}

#[test]
fn bad_config_on_reload_keeps_the_old_policy_and_says_why() {
    let mut lab = Lab::new("badrel");
    lab.web_listeners_on_b();
    let cfg = lab.config(&web_out(), "mode = \"enforce\"");
    let agent = lab.agent(&cfg, &[]);
    let before = agent.status();
    // Break the config: a port above 65535 on line 3 of the profile.
    let good = std::fs::read_to_string(lab.dir.join("profile.toml")).expect("profile");
    lab.write(
        "profile.toml",
        &good.replace("ports = 8080", "ports = 80800"),
    );
    let out = agent.cli(&["reload"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "a bad config is an invalid policy (exit 3): {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("profile.toml:") && stderr(&out).contains("80800"),
        "names file, line and value: {}",
        stderr(&out)
    );
    // The agent, asked directly, rejects it too and keeps running the old policy.
    must(&format!("kill -HUP {}", agent.pid()));
    std::thread::sleep(Duration::from_millis(500));
    let after = agent.status();
    assert_eq!(
        after["policy_version"], before["policy_version"],
        "the old policy must stay"
    );
    assert_eq!(
        stdout(&lab.on_a(&format!("{} connect {} 8080", net_py(), lab.b4))).trim(),
        "ok",
        "still allowed"
    );
    assert_eq!(
        stdout(&lab.on_a(&format!("{} connect {} 8081", net_py(), lab.b4))).trim(),
        "EPERM",
        "still denied"
    );
    assert!(
        agent.output().contains("reload rejected"),
        "the agent logs why: {}",
        agent.output()
    );
    // A good config again: accepted.
    lab.write("profile.toml", &good);
    let out = agent.cli(&["reload"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        agent.status()["policy_version"].as_u64(),
        before["policy_version"].as_u64().map(|v| v + 1)
    );
}

/// Starts the load client on A, an allowed and a denied connection every
/// `interval_ms`; returns (stop file, result file).
fn start_load(lab: &mut Lab, interval_ms: u32) -> (std::path::PathBuf, std::path::PathBuf) {
    let stop = lab.dir.join("stop");
    let result = lab.dir.join("load.json");
    lab.spawn_a(&format!(
        "exec {} load {} 8080 8081 {interval_ms} {} {}",
        net_py(),
        lab.b4,
        stop.display(),
        result.display()
    ));
    (stop, result)
}

fn finish_load(stop: &Path, result: &Path) -> serde_json::Value {
    std::fs::write(stop, "").expect("stop file");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !result.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    serde_json::from_str(&std::fs::read_to_string(result).expect("load result"))
        .expect("load result JSON")
}

#[test]
fn kill_9_during_reload_50_times_under_load_loses_nothing() {
    let mut lab = Lab::new("kill9");
    lab.web_listeners_on_b();
    let cfg = lab.config(&web_out(), "mode = \"enforce\"");
    let mut agent = lab.agent(&cfg, &["--on-exit", "keep"]);
    let (stop, result) = start_load(&mut lab, 3);
    for round in 0..50u64 {
        must(&format!("kill -HUP {}", agent.pid()));
        std::thread::sleep(Duration::from_millis(round % 7));
        agent.kill9();
        agent = lab.agent(&cfg, &["--on-exit", "keep"]);
        assert_eq!(
            links(&agent),
            4,
            "round {round}: the restarted agent must leave exactly its own 4 links"
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    let counts = finish_load(&stop, &result);
    let s = agent.status();
    load_figures(
        "kill9-x50-under-load",
        &counts,
        &[("kills", "50".into()), ("interval_ms", "3".into())],
    );
    assert_nothing_lost(&counts, 50);
    assert!(
        counts["denied_blocked"].as_u64().unwrap_or(0) >= 50,
        "{counts}"
    );
    assert!(
        s["policy_version"].as_u64().unwrap_or(0) >= 51,
        "the restarted agents adopted the pins: {s:#}"
    );
    assert!(
        rule_packets(&s, "web-out") > 0,
        "counters survive restarts: {s:#}"
    );
}

#[test]
fn a_thousand_reloads_under_load_lose_nothing() {
    let mut lab = Lab::new("reload");
    lab.web_listeners_on_b();
    let cfg = lab.config(&web_out(), "mode = \"enforce\"");
    let agent = lab.agent(&cfg, &[]);
    let (stop, result) = start_load(&mut lab, 1);
    let t = Instant::now();
    for i in 0..1000 {
        let out = agent.cli(&["reload", "--timeout", "10"]);
        assert!(out.status.success(), "reload {i} failed: {}", stderr(&out));
    }
    let elapsed = t.elapsed();
    let counts = finish_load(&stop, &result);
    load_figures(
        "reload-x1000-under-load",
        &counts,
        &[
            ("reloads", "1000".into()),
            ("interval_ms", "1".into()),
            ("ms_per_reload", format!("{:.1}", elapsed.as_secs_f64())),
        ],
    );
    assert_nothing_lost(&counts, 100);
    assert_eq!(agent.status()["policy_version"], 1001);
}

#[test]
fn detach_leaves_nothing_attached_or_pinned() {
    let mut lab = Lab::new("detach");
    lab.web_listeners_on_b();
    let cfg = lab.config(&web_out(), "mode = \"enforce\"");
    let agent = lab.agent(&cfg, &["--on-exit", "keep"]);
    let pin_dir = agent.pin_dir.clone();
    let cgroup = lab.cgroup.display().to_string();
    assert_eq!(
        stdout(&lab.on_a(&format!("{} connect {} 8081", net_py(), lab.b4))).trim(),
        "EPERM"
    );
    let attached = must(&format!("bpftool cgroup show {cgroup}"));
    assert!(
        attached.contains("pc_ingress") && attached.contains("pc_connect4"),
        "attached before: {attached}"
    );
    let env = agent.env.clone();
    agent.kill9();
    // Still enforcing after the agent is gone.
    assert_eq!(
        stdout(&lab.on_a(&format!("{} connect {} 8081", net_py(), lab.b4))).trim(),
        "EPERM",
        "pins keep enforcing"
    );
    let out = std::process::Command::new(bin())
        .args(["detach", "--json"])
        .envs(env)
        .output()
        .expect("detach");
    assert!(out.status.success(), "{}", stderr(&out));
    let done: serde_json::Value = serde_json::from_slice(&out.stdout).expect("detach --json");
    assert_eq!(done["links"], 4, "{done}");
    assert!(!pin_dir.exists(), "pin directory left behind");
    let attached = must(&format!("bpftool cgroup show {cgroup}"));
    assert!(
        !attached.contains("pc_"),
        "programs still attached: {attached}"
    );
    assert_eq!(
        stdout(&lab.on_a(&format!("{} connect {} 8081", net_py(), lab.b4))).trim(),
        "ok",
        "enforcement gone"
    );
}

/// kill -9 once, without load: while no agent runs, the pinned programs keep allowing
/// and refusing; the restarted agent adopts the pins (exactly its own 4 links, the next
/// policy version) and the counters, which also counted what happened in between. The
/// small form of the 50-kill test above, for the kernel matrix's guests
/// (xtask/src/kernels.rs), where every agent start verifies the programs under TCG.
#[test]
fn kill_9_then_restart_adopts_the_pins_and_the_counters() {
    let mut lab = Lab::new("kill9once");
    lab.web_listeners_on_b();
    let cfg = lab.config(&web_out(), "mode = \"enforce\"");
    let agent = lab.agent(&cfg, &["--on-exit", "keep"]);
    assert_eq!(connect(&lab, 8080), "ok", "allowed before the kill");
    assert_eq!(connect(&lab, 8081), "EPERM", "refused before the kill");
    let before = agent.status();
    agent.kill9();
    assert_eq!(connect(&lab, 8080), "ok", "allowed while no agent runs");
    assert_eq!(connect(&lab, 8081), "EPERM", "refused while no agent runs");
    let agent = lab.agent(&cfg, &["--on-exit", "keep"]);
    assert_eq!(
        links(&agent),
        4,
        "the restarted agent leaves exactly its own 4 links"
    );
    let after = agent.status();
    assert!(
        after["policy_version"].as_u64() > before["policy_version"].as_u64(),
        "the restart adopted the pinned policy and moved it on: {before:#} -> {after:#}"
    );
    assert!(
        rule_packets(&after, "web-out") > rule_packets(&before, "web-out"),
        "the adopted counters kept the allowed packets and counted those sent meanwhile: {after:#}"
    );
    assert!(
        denies(&after, "out", "no-rule", false).0 > denies(&before, "out", "no-rule", false).0,
        "the refusal while no agent ran is counted: {after:#}"
    );
}

/// The flow-port marks (`PC_FLOW_PORTS`: the local ports that ever had a flow, which
/// let a packet the port table denies skip the flow-table lookups) on a restart: a
/// fresh agent marks only the ports of flows it inserted; one that adopts flow tables
/// pinned by a build without the marks (the pin removed here) marks every port, so no
/// adopted flow's replies are taken for strangers; enforcement carries on as before.
#[test]
fn restart_adopting_flows_without_port_marks_marks_every_port() {
    use aya::maps::{Array, Map, MapData};
    use portcullis_common::{flow::FLOW_PORT_BYTES, maps};

    let mut lab = Lab::new("flowmarks");
    lab.web_listeners_on_b();
    let cfg = lab.config(&web_out(), "mode = \"enforce\"");
    // (marked ports, all ports) in the pinned marks.
    let marked = |pin: &Path| -> (usize, usize) {
        let map = Map::from_map_data(MapData::from_pin(pin).expect("opening the pinned marks"))
            .expect("the marks as a map");
        let marks = Array::<_, [u8; FLOW_PORT_BYTES]>::try_from(map).expect("an array");
        let (mut set, mut all) = (0, 0);
        for entry in marks.iter() {
            for b in entry.expect("reading the marks") {
                set += usize::from(b == 1);
                all += 1;
            }
        }
        (set, all)
    };
    let agent = lab.agent(&cfg, &["--on-exit", "keep"]);
    let pin = agent.pin_dir.join("maps").join(maps::FLOW_PORTS);
    let flows = agent.pin_dir.join("maps").join(maps::FLOWS_OUT);
    assert!(
        flows.exists(),
        "the flow table is pinned at {}",
        flows.display()
    );
    let (set, all) = marked(&pin);
    assert_eq!(all, 2 * 65536, "one mark per protocol and port");
    assert!(
        set < 1000,
        "a fresh agent marked {set} ports with no traffic yet"
    );
    agent.kill9();
    std::fs::remove_file(&pin).expect("removing the marks' pin (a build without them)");

    let agent = lab.agent(&cfg, &["--on-exit", "keep"]);
    assert_eq!(
        marked(&pin),
        (all, all),
        "adopting flow tables without marks marks every port"
    );
    let before = agent.status();
    assert_eq!(connect(&lab, 8080), "ok", "allowed after the restart");
    assert_eq!(connect(&lab, 8081), "EPERM", "refused after the restart");
    let after = agent.status();
    assert!(
        rule_packets(&after, "web-out") > rule_packets(&before, "web-out"),
        "the allowed flow is counted: {after:#}"
    );
    assert!(
        denies(&after, "out", "no-rule", false).0 > denies(&before, "out", "no-rule", false).0,
        "the refusal is counted: {after:#}"
    );
}

/// A TCP connect from namespace A to B's `port` over IPv4: "ok", "EPERM", ...
fn connect(lab: &Lab, port: u16) -> String {
    stdout(&lab.on_a(&format!("{} connect {} {port}", net_py(), lab.b4)))
        .trim()
        .to_owned()
}
