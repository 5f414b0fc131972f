//! The readiness report separates breakage from exposure, on real traffic
//! from real clients through the lab's veth, with the agent in namespace A (so the
//! report reads A's listeners from `/proc/<agent>/net/*`).
//!
//! - Scans only: nmap SYN and connect scans of every TCP port (1-65535, `-T5
//!   --max-retries 0 --min-rate 20000`: in a veth lab a full range takes seconds, so no
//!   narrower range was needed) from two peers (B's two addresses), plus real SMTP (curl
//!   to Python's smtpd) on the allowed port 25. The report says safe to enforce and
//!   lists 3306 (a listener on 0.0.0.0) as an exposure closed, with the finding that it
//!   is reachable from outside; 11211 (loopback only) is nowhere. A one-way UDP sender
//!   to another port is unclear: unsafe with the default `--max-unclear 0`, safe with 1.
//!   `--since` keeps the classes; `--reset` clears the evidence (a new flow counts 1).
//! - Real breakage: a process on A exchanges payload with a denied port of B, and a
//!   client on B exchanges payload with an unlisted port of A whose server answers.
//!   Not safe; both are breakage with their process or peer, and the JSON has the exact
//!   flows, handshakes, peers and payload bytes each way.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use portcullis_tests::{Agent, Lab, net_py, rule, rule_packets, stderr, stdout};
use serde_json::Value;

fn report(agent: &Agent, cfg: &Path, extra: &[&str]) -> Value {
    let cfg = cfg.display().to_string();
    let mut args = vec!["report", "--json", "--config", &cfg];
    args.extend_from_slice(extra);
    let out = agent.cli(&args);
    assert!(out.status.success(), "report failed: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("report --json is JSON")
}

/// The report once `ready` holds (the agent folds the kernel's flow evidence every 2 s);
/// panics with the last report after 30 s.
fn report_when(agent: &Agent, cfg: &Path, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = report(agent, cfg, &[]);
        if ready(&r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not in the report after 30 s:\n{r:#}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The reported port `direction protocol/port`, if any.
fn port<'a>(r: &'a Value, direction: &str, protocol: &str, number: u64) -> Option<&'a Value> {
    r["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["direction"] == direction && p["protocol"] == protocol && p["port"] == number)
}

fn evidence(r: &Value, direction: &str, protocol: &str, number: u64, field: &str) -> u64 {
    port(r, direction, protocol, number)
        .and_then(|p| p["evidence"][field].as_u64())
        .unwrap_or(0)
}

fn labels(r: &Value, class: &str) -> Vec<String> {
    r[class]
        .as_array()
        .unwrap_or_else(|| panic!("no {class} in {r:#}"))
        .iter()
        .map(|v| v.as_str().expect("a label").to_owned())
        .collect()
}

fn ok(lab: &Lab, on_b: bool, cmd: &str) -> String {
    let out = if on_b { lab.on_b(cmd) } else { lab.on_a(cmd) };
    assert!(
        out.status.success(),
        "{cmd}: {}\n{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

#[test]
fn scans_only_are_safe_to_enforce_and_listed_as_exposures_closed() {
    let mut lab = Lab::new("scans");
    // B's second address: the second scanning peer.
    let b4_2 = format!("{}3", lab.b4.trim_end_matches('2'));
    let dev_b = format!("{}y", lab.tag);
    ok(&lab, true, &format!("ip addr add {b4_2}/24 dev {dev_b}"));
    let net = net_py();
    // On A, in the enforced cgroup: a real SMTP server on 25 (allowed), a database-like
    // listener on 3306 bound to all addresses, one on 11211 bound to loopback only, and
    // a UDP socket on 5140 that never answers.
    lab.spawn_a("exec python3 -W ignore -m smtpd -n -c DebuggingServer 0.0.0.0:25");
    // 3306 holds each connection open until the peer ends it, as a database does: a
    // listener that closes at once leaves an orphan whose kernel state (FIN_WAIT2 as a
    // time-wait socket) no cgroup program sees, so a connect scan's reset would race it.
    let db_log = lab.dir.join("3306.log");
    lab.spawn_a(&format!(
        "exec {net} listen 3306 --host 0.0.0.0 --log {}",
        db_log.display()
    ));
    lab.spawn_a(&format!("exec {net} listen 11211 --host 127.0.0.1"));
    lab.spawn_a(&format!("exec {net} listen 5140 --udp --host 0.0.0.0"));
    let (ns_a, a4) = (lab.ns_a.clone(), lab.a4.clone());
    lab.wait_tcp(&ns_a, &a4, 25);
    lab.wait_tcp(&ns_a, &a4, 3306);
    lab.wait_tcp(&ns_a, "127.0.0.1", 11211);
    lab.wait_udp(&ns_a, 5140);
    // A window of 2 s is long enough here; the default (7 days) is checked first.
    let cfg = lab.config(
        &rule("smtp-in", "in", "tcp", 25, ""),
        "mode = \"audit\"\naudit_min_window = \"2s\"",
    );
    let agent = lab.agent_in_a(&cfg, &[]);
    let fresh = report(&agent, &cfg, &["--min-window", "7d"]);
    assert_eq!(
        (
            &fresh["safe"],
            &fresh["window_complete"],
            &fresh["min_window_seconds"]
        ),
        (&false.into(), &false.into(), &604_800.into()),
        "a fresh install has seen nothing, which is not safe: {fresh:#}"
    );
    let verdict = fresh["verdict"].as_str().expect("verdict");
    assert!(
        verdict.starts_with("not yet: the window is ")
            && verdict.contains("the minimum is 7d")
            && verdict.contains("so far: safe to enforce: no would-deny"),
        "{verdict}"
    );
    std::thread::sleep(Duration::from_millis(2100));

    // Real mail on the allowed port, from both peers.
    let mail = lab.write("mail.txt", "Subject: readiness\r\n\r\nhello\r\n");
    for src in [&lab.b4, &b4_2] {
        ok(
            &lab,
            true,
            &format!(
                "curl -sS --max-time 10 --interface {src} smtp://{a4}:25 --mail-from sender@example.org \
                 --mail-rcpt postmaster@example.org -T {}",
                mail.display()
            ),
        );
    }
    // Scans of every port from both peers.
    let t0 = Instant::now();
    for src in [lab.b4.clone(), b4_2.clone()] {
        for kind in ["-sS", "-sT"] {
            let out = ok(
                &lab,
                true,
                &format!(
                    "nmap {kind} -Pn -n -T5 --max-retries 0 --min-rate 20000 -p 1-65535 \
                     -e {dev_b} -S {src} {a4}"
                ),
            );
            for open in ["25/tcp", "3306/tcp"] {
                assert!(
                    out.lines()
                        .any(|l| l.starts_with(open) && l.contains("open")),
                    "audit mode: nmap {kind} from {src} finds {open} open:\n{out}"
                );
            }
            assert!(
                !out.contains("11211/tcp"),
                "a loopback listener is not reachable:\n{out}"
            );
        }
    }
    let scans = t0.elapsed();

    let r = report_when(&agent, &cfg, "3306 scanned by 4 scans from 2 peers", |r| {
        evidence(r, "in", "tcp", 3306, "flows") >= 4
            && evidence(r, "in", "tcp", 3306, "distinct_peers") == 2
    });
    let p = port(&r, "in", "tcp", 3306).expect("3306 reported");
    assert_eq!(p["class"], "exposure-closed", "{p:#}");
    assert_eq!(p["listener"], "0.0.0.0:3306", "{p:#}");
    assert_eq!(
        p["evidence"]["payload_bytes_in"], 0,
        "scans carry no payload: {p:#}"
    );
    // Exact: one probe per scan and port (--max-retries 0); only the connect scans
    // complete the handshake (nmap's SYN scan answers the SYN+ACK with a reset).
    assert_eq!(
        (&p["evidence"]["flows"], &p["evidence"]["handshakes"]),
        (&4.into(), &2.into()),
        "{p:#}"
    );
    // nmap's connect scan resets each connection at once without sending anything: the
    // connect-scan pattern, so each peer's flows here read as scan probes, although
    // the cgroup programs saw only this one of the ports they scanned.
    assert_eq!(p["evidence"]["connect_resets"], 2, "{p:#}");
    for peer in p["evidence"]["peers"].as_array().expect("peers") {
        assert_eq!(peer["reading"], "scan-probe", "{p:#}");
    }
    assert_eq!(r["safe"], true, "{r:#}");
    assert_eq!(labels(&r, "breakage"), Vec::<String>::new(), "{r:#}");
    assert_eq!(labels(&r, "unclear"), Vec::<String>::new(), "{r:#}");
    assert_eq!(labels(&r, "exposure_closed"), vec!["in tcp/3306"], "{r:#}");
    let findings = labels(&r, "findings");
    assert_eq!(findings.len(), 1, "{r:#}");
    assert!(
        findings[0].starts_with("3306 is reachable from outside"),
        "{findings:?}"
    );
    assert!(port(&r, "in", "tcp", 11211).is_none(), "{r:#}");
    assert!(
        port(&r, "in", "tcp", 25).is_none(),
        "smtp is allowed: {r:#}"
    );
    assert!(
        rule_packets(&agent.status(), "smtp-in") > 0,
        "the smtp rule counted the mail"
    );
    let text = stdout(&agent.cli(&["report", "--config", &cfg.display().to_string()]));
    assert!(text.contains("exposure closed (1):"), "{text}");
    assert!(text.contains("3306 is reachable from outside"), "{text}");
    assert!(
        text.trim_end()
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("safe to enforce: nothing would break")),
        "{text}"
    );
    let since = report(&agent, &cfg, &["--since", "1h"]);
    assert_eq!(
        labels(&since, "exposure_closed"),
        vec!["in tcp/3306"],
        "{since:#}"
    );

    // A peer's datagrams that nothing answers: unclear, unsafe unless tolerated.
    let sent = ok(&lab, true, &format!("{net} udp-send {a4} 5140 3 100"));
    assert_eq!(sent.trim(), "sent=3 eperm=0");
    let r = report_when(&agent, &cfg, "udp/5140", |r| {
        evidence(r, "in", "udp", 5140, "payload_bytes_in") == 300
    });
    assert_eq!(labels(&r, "unclear"), vec!["in udp/5140"], "{r:#}");
    assert_eq!(evidence(&r, "in", "udp", 5140, "flows"), 1, "{r:#}");
    assert_eq!(r["safe"], false, "unclear above --max-unclear 0: {r:#}");
    let tolerant = report(&agent, &cfg, &["--max-unclear", "1"]);
    assert_eq!(tolerant["safe"], true, "{tolerant:#}");
    assert_eq!(tolerant["max_unclear"], 1);

    // --reset clears the evidence too: one new connection is one flow, not five.
    let out = agent.cli(&["report", "--reset"]);
    assert!(out.status.success(), "report --reset: {}", stderr(&out));
    let r = report(&agent, &cfg, &[]);
    assert_eq!(r["ports"], serde_json::json!([]), "{r:#}");
    assert_eq!(
        (&r["safe"], &r["window_complete"], &r["min_window_seconds"]),
        (&false.into(), &false.into(), &2.into()),
        "a new window starts short of the config's audit_min_window: {r:#}"
    );
    std::thread::sleep(Duration::from_millis(2100));
    let r = report(&agent, &cfg, &[]);
    assert_eq!(r["safe"], true, "{r:#}");
    let c = ok(&lab, true, &format!("{net} connect {a4} 3306"));
    assert_eq!(c.trim(), "ok");
    let r = report_when(&agent, &cfg, "3306 after the reset", |r| {
        evidence(r, "in", "tcp", 3306, "flows") >= 1
    });
    assert_eq!(evidence(&r, "in", "tcp", 3306, "flows"), 1, "{r:#}");
    assert_eq!(
        evidence(&r, "in", "tcp", 3306, "distinct_peers"),
        1,
        "{r:#}"
    );
    portcullis_tests::figures(
        "readiness scans",
        &[
            ("full_range_scans", "4".into()),
            ("seconds", format!("{:.1}", scans.as_secs_f64())),
        ],
    );
}

#[test]
fn real_breakage_is_not_safe_with_exact_flow_evidence() {
    let mut lab = Lab::new("breakage");
    let net = net_py();
    // B serves the allowed 8080 and the denied 8081; A serves 9000, which no rule opens.
    lab.spawn_b(&format!("exec {net} serve 8080 100"));
    lab.spawn_b(&format!("exec {net} serve 8081 300"));
    lab.spawn_a(&format!("exec {net} serve 9000 200 --host 0.0.0.0"));
    let (ns_a, ns_b, a4, b4) = (
        lab.ns_a.clone(),
        lab.ns_b.clone(),
        lab.a4.clone(),
        lab.b4.clone(),
    );
    lab.wait_tcp(&ns_b, &b4, 8080);
    lab.wait_tcp(&ns_b, &b4, 8081);
    lab.wait_tcp(&ns_a, &a4, 9000);
    let cfg = lab.config(
        &rule("web-out", "out", "tcp", 8080, ""),
        "mode = \"audit\"\naudit_min_window = \"1s\"",
    );
    let agent = lab.agent_in_a(&cfg, &[]);

    assert_eq!(
        ok(&lab, false, &format!("{net} exchange {b4} 8080 10")).trim(),
        "received=100"
    );
    assert_eq!(
        ok(&lab, false, &format!("{net} exchange {b4} 8081 1000")).trim(),
        "received=300",
        "audit mode lets the denied flow through"
    );
    assert_eq!(
        ok(&lab, true, &format!("{net} exchange {a4} 9000 700")).trim(),
        "received=200"
    );

    let r = report_when(&agent, &cfg, "both flows with their payload", |r| {
        evidence(r, "out", "tcp", 8081, "payload_bytes_in") == 300
            && evidence(r, "in", "tcp", 9000, "payload_bytes_out") == 200
    });
    assert_eq!(r["safe"], false, "{r:#}");
    let mut breakage = labels(&r, "breakage");
    breakage.sort();
    assert_eq!(breakage, vec!["in tcp/9000", "out tcp/8081"], "{r:#}");
    assert_eq!(labels(&r, "exposure_closed"), Vec::<String>::new());
    assert_eq!(labels(&r, "unclear"), Vec::<String>::new());
    assert!(
        r["verdict"]
            .as_str()
            .is_some_and(|v| v.starts_with("not safe to enforce: enforcing would break")),
        "{r:#}"
    );
    // Exact evidence: one flow each, handshake done, payload each way, one peer.
    for (direction, number, bytes_in, bytes_out) in
        [("out", 8081, 300, 1000), ("in", 9000, 700, 200)]
    {
        let p = port(&r, direction, "tcp", number).expect("reported");
        let e = &p["evidence"];
        assert_eq!(p["class"], "breakage", "{p:#}");
        assert_eq!(
            (
                &e["flows"],
                &e["handshakes"],
                &e["flows_with_payload_both_ways"],
                &e["payload_bytes_in"],
                &e["payload_bytes_out"],
                &e["distinct_peers"],
            ),
            (
                &1.into(),
                &1.into(),
                &1.into(),
                &bytes_in.into(),
                &bytes_out.into(),
                &1.into()
            ),
            "{p:#}"
        );
        assert_eq!(e["peers"][0]["address"], b4, "{p:#}");
    }
    let out8081 = port(&r, "out", "tcp", 8081).unwrap();
    assert_eq!(
        out8081["processes"][0]["name"], "python3",
        "the process that connected: {out8081:#}"
    );
    assert!(port(&r, "out", "tcp", 8080).is_none(), "8080 is allowed");
    assert!(rule_packets(&agent.status(), "web-out") > 0);
    let text = stdout(&agent.cli(&["report", "--config", &cfg.display().to_string()]));
    assert!(text.contains("breakage (2):"), "{text}");
    assert!(text.contains("exchanged payload both ways"), "{text}");
}

/// Listens on 9001-9009 on all addresses, accepting and closing: nine ports a peer can
/// complete a handshake with and send nothing, as a connect scan does.
const NINE_LISTENERS: &str = "\
import select, socket
socks = []
for port in range(9001, 9010):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('0.0.0.0', port))
    s.listen(16)
    socks.append(s)
while True:
    for s in select.select(socks, [], [])[0]:
        s.accept()[0].close()
";

/// Connects from SRC to HOST:PORT COUNT times, PAUSE seconds apart, sending nothing:
/// a load balancer's TCP health check.
const HEALTH_CHECK: &str = "\
import socket, sys, time
src, host, port, count, pause = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
for i in range(count):
    s = socket.socket()
    s.bind((src, 0))
    s.settimeout(3)
    s.connect((host, port))
    s.close()
    if i + 1 < count:
        time.sleep(pause)
print('checked')
";

#[test]
fn an_exchange_among_scans_and_a_health_check_are_not_safe() {
    let mut lab = Lab::new("hcheck");
    let b4_2 = format!("{}3", lab.b4.trim_end_matches('2'));
    let dev_b = format!("{}y", lab.tag);
    ok(&lab, true, &format!("ip addr add {b4_2}/24 dev {dev_b}"));
    let net = net_py();
    // On A: the allowed 25, a server on 9000 that answers 200 bytes, nine more listeners
    // (9001-9009) and 8080, a listener a load balancer checks. No rule opens 8080-9009.
    let listeners = lab.write("nine.py", NINE_LISTENERS);
    let check = lab.write("check.py", HEALTH_CHECK);
    lab.spawn_a(&format!("exec {net} listen 25 --host 0.0.0.0"));
    lab.spawn_a(&format!("exec {net} serve 9000 200 --host 0.0.0.0"));
    lab.spawn_a(&format!("exec python3 {}", listeners.display()));
    lab.spawn_a(&format!("exec {net} listen 8080 --host 0.0.0.0"));
    let (ns_a, a4) = (lab.ns_a.clone(), lab.a4.clone());
    for port in [25, 8080, 9000, 9001, 9005, 9009] {
        lab.wait_tcp(&ns_a, &a4, port);
    }
    let cfg = lab.config(
        &rule("smtp-in", "in", "tcp", 25, ""),
        "mode = \"audit\"\naudit_min_window = \"1s\"",
    );
    let agent = lab.agent_in_a(&cfg, &[]);

    // Allowed: a connection to 25.
    assert_eq!(
        ok(&lab, true, &format!("{net} connect {a4} 25")).trim(),
        "ok"
    );
    // One peer: a real exchange on 9000 and a silent connect to nine other ports, so it
    // touched ten would-denied ports: a "scanner" for the window.
    assert_eq!(
        ok(&lab, true, &format!("{net} exchange {a4} 9000 700")).trim(),
        "received=200"
    );
    ok(
        &lab,
        true,
        &format!("for p in $(seq 9001 9009); do {net} connect {a4} $p; done"),
    );
    // Another peer: a health check of 8080, five connects 2 s apart, nothing sent.
    assert_eq!(
        ok(
            &lab,
            true,
            &format!("python3 {} {b4_2} {a4} 8080 5 2", check.display())
        )
        .trim(),
        "checked"
    );

    let r = report_when(
        &agent,
        &cfg,
        "9000, 9001-9009 and five checks of 8080",
        |r| {
            evidence(r, "in", "tcp", 9000, "payload_bytes_out") == 200
                && evidence(r, "in", "tcp", 9009, "flows") == 1
                && evidence(r, "in", "tcp", 8080, "flows") == 5
        },
    );
    // Denied: the exchange is breakage although its peer scanned; the scan's probes are
    // exposures closed; the health check is unclear with a finding of its own.
    let p = port(&r, "in", "tcp", 9000).expect("9000 reported");
    assert_eq!(p["class"], "breakage", "{p:#}");
    let peer = &p["evidence"]["peers"][0];
    assert_eq!(
        (&peer["address"], &peer["scanner"], &peer["reading"]),
        (&lab.b4.clone().into(), &true.into(), &"exchange".into()),
        "{p:#}"
    );
    assert_eq!(labels(&r, "breakage"), vec!["in tcp/9000"], "{r:#}");
    let mut closed = labels(&r, "exposure_closed");
    closed.sort();
    let probes: Vec<String> = (9001..=9009).map(|p| format!("in tcp/{p}")).collect();
    assert_eq!(
        closed, probes,
        "a scanner's silent connects are probes: {r:#}"
    );
    let p9001 = port(&r, "in", "tcp", 9001).unwrap();
    assert_eq!(
        p9001["evidence"]["peers"][0]["reading"], "scan-probe",
        "{p9001:#}"
    );
    assert_eq!(labels(&r, "unclear"), vec!["in tcp/8080"], "{r:#}");
    let p8080 = port(&r, "in", "tcp", 8080).unwrap();
    assert_eq!(
        (
            &p8080["evidence"]["flows"],
            &p8080["evidence"]["handshakes"]
        ),
        (&5.into(), &5.into()),
        "{p8080:#}"
    );
    let hc = &p8080["health_checks"][0];
    assert_eq!(
        (&hc["peer"], &hc["flows"]),
        (&b4_2.clone().into(), &5.into()),
        "{p8080:#}"
    );
    let interval = hc["interval_seconds"].as_u64().expect("interval");
    assert!((1..=3).contains(&interval), "checks 2 s apart: {p8080:#}");
    let checks = labels(&r, "health_checks");
    assert_eq!(checks.len(), 1, "{r:#}");
    assert!(
        checks[0].starts_with(&format!("{b4_2} connects to in tcp/8080 about every"))
            && checks[0].ends_with("a health check? enforcing breaks it"),
        "{checks:?}"
    );
    assert_eq!(r["safe"], false, "{r:#}");
    let verdict = r["verdict"].as_str().expect("verdict");
    assert!(
        verdict.starts_with("not safe to enforce: enforcing would break in tcp/9000")
            && verdict.contains(&format!(
                "health checks? enforcing fails {b4_2} -> in tcp/8080"
            )),
        "{verdict}"
    );
    // Tolerating unclear ports does not tolerate a health check.
    let tolerant = report(&agent, &cfg, &["--max-unclear", "5"]);
    assert_eq!(tolerant["safe"], false, "{tolerant:#}");
    // The allowed port is not in the report, and its rule counted the connection.
    assert!(port(&r, "in", "tcp", 25).is_none(), "{r:#}");
    assert!(rule_packets(&agent.status(), "smtp-in") > 0);
    let text = stdout(&agent.cli(&["report", "--config", &cfg.display().to_string()]));
    assert!(text.contains("Health checks?"), "{text}");
    assert!(text.contains("exchanged payload both ways"), "{text}");
}

#[test]
fn flows_of_a_restart_downtime_are_counted_once() {
    let mut lab = Lab::new("restart");
    let net = net_py();
    // On A: two servers no rule opens; B exchanges with 9000 before the restart and with
    // 9100 while no agent runs (the pinned programs keep recording evidence).
    lab.spawn_a(&format!("exec {net} serve 9000 200 --host 0.0.0.0"));
    lab.spawn_a(&format!("exec {net} serve 9100 300 --host 0.0.0.0"));
    lab.spawn_a(&format!("exec {net} listen 25 --host 0.0.0.0"));
    let (ns_a, a4) = (lab.ns_a.clone(), lab.a4.clone());
    lab.wait_tcp(&ns_a, &a4, 25);
    lab.wait_tcp(&ns_a, &a4, 9000);
    lab.wait_tcp(&ns_a, &a4, 9100);
    let cfg = lab.config(
        &rule("smtp-in", "in", "tcp", 25, ""),
        "mode = \"audit\"\naudit_min_window = \"1s\"",
    );
    let keep = ["--on-exit", "keep"];
    let agent = lab.agent_in_a(&cfg, &keep);
    assert_eq!(
        ok(&lab, true, &format!("{net} exchange {a4} 9000 700")).trim(),
        "received=200"
    );
    report_when(&agent, &cfg, "9000 before the restart", |r| {
        evidence(r, "in", "tcp", 9000, "payload_bytes_out") == 200
    });
    // A clean stop (SIGTERM) that keeps the pinned programs, as `--on-exit keep` and
    // the service do; `Agent::stop` would detach them.
    let mut agent = agent;
    // SAFETY: kill(2) on the agent this test started.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(15);
    while agent.running() {
        assert!(
            Instant::now() < deadline,
            "the agent did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = agent.output();
    agent.kill9(); // reaps it; leaves the pins
    let saved = lab.dir.join("state/flows.json");
    assert!(
        saved.is_file(),
        "a clean stop saves the folded flows:\n{out}"
    );

    // Downtime: a real exchange on 9100, recorded by the kernel only.
    assert_eq!(
        ok(&lab, true, &format!("{net} exchange {a4} 9100 700")).trim(),
        "received=300",
        "audit mode lets it through while the agent is down"
    );
    let agent = lab.agent_in_a(&cfg, &keep);
    assert!(!saved.exists(), "read once by the next agent");
    let r = report_when(&agent, &cfg, "9100 from the downtime", |r| {
        evidence(r, "in", "tcp", 9100, "payload_bytes_out") == 300
    });
    // Denied: the downtime's exchange is breakage with exact evidence; the flow from
    // before the restart is counted once, not again.
    let p = port(&r, "in", "tcp", 9100).expect("9100 reported");
    assert_eq!(p["class"], "breakage", "{p:#}");
    assert_eq!(
        (&p["evidence"]["flows"], &p["evidence"]["payload_bytes_in"]),
        (&1.into(), &700.into()),
        "{p:#}"
    );
    assert_eq!(evidence(&r, "in", "tcp", 9000, "flows"), 1, "{r:#}");
    assert_eq!(
        evidence(&r, "in", "tcp", 9000, "payload_bytes_in"),
        700,
        "{r:#}"
    );
    let mut breakage = labels(&r, "breakage");
    breakage.sort();
    assert_eq!(breakage, vec!["in tcp/9000", "in tcp/9100"], "{r:#}");
    assert_eq!(r["safe"], false, "{r:#}");
    // Allowed: SMTP through the adopted programs, counted by its rule, not reported.
    assert_eq!(
        ok(&lab, true, &format!("{net} connect {a4} 25")).trim(),
        "ok"
    );
    assert!(rule_packets(&agent.status(), "smtp-in") > 0);
    assert!(port(&report(&agent, &cfg, &[]), "in", "tcp", 25).is_none());
}

/// Sends COUNT TCP SYNs to DST:PORT from spoofed sources: every address of DST's /24
/// from .10 to .250 (on the link, so reverse-path filtering lets them in) and source
/// ports from 1024 up, each (address, port) once: COUNT distinct flows. A raw socket
/// with IP_HDRINCL; prints `sent=N seconds=S`.
const SYN_FLOOD: &str = "\
import socket, struct, sys, time
dst, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
net = dst.rsplit('.', 1)[0]
def csum(b):
    if len(b) % 2: b += b'\\0'
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
d = socket.inet_aton(dst)
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
hosts = list(range(10, 251))
t0 = time.time()
sent = 0
for i in range(count):
    src = socket.inet_aton('%s.%d' % (net, hosts[i % len(hosts)]))
    sport = 1024 + i // len(hosts)
    tcp = struct.pack('!HHIIBBHHH', sport, port, i, 0, 5 << 4, 0x02, 64240, 0, 0)
    tcp = tcp[:16] + struct.pack('!H', csum(src + d + struct.pack('!BBH', 0, 6, 20) + tcp)) + tcp[18:]
    ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 40, i & 0xffff, 0, 64, 6, 0, src, d)
    ip = ip[:10] + struct.pack('!H', csum(ip)) + ip[12:]
    s.sendto(ip + tcp, (dst, 0))
    sent += 1
print('sent=%d seconds=%.1f' % (sent, time.time() - t0))
";

#[test]
fn a_syn_flood_does_not_evict_a_real_flows_evidence() {
    const SYNS: u64 = 100_000;
    let mut lab = Lab::new("flood");
    let net = net_py();
    let flood = lab.write("flood.py", SYN_FLOOD);
    // On A: 9000 listens (the flood's target), 9100 serves a real client, 25 is allowed.
    lab.spawn_a(&format!("exec {net} listen 9000 --host 0.0.0.0"));
    lab.spawn_a(&format!("exec {net} serve 9100 300 --host 0.0.0.0"));
    lab.spawn_a(&format!("exec {net} listen 25 --host 0.0.0.0"));
    let (ns_a, a4) = (lab.ns_a.clone(), lab.a4.clone());
    for p in [25, 9000, 9100] {
        lab.wait_tcp(&ns_a, &a4, p);
    }
    let cfg = lab.config(
        &rule("smtp-in", "in", "tcp", 25, ""),
        "mode = \"audit\"\naudit_min_window = \"1s\"",
    );
    let agent = lab.agent_in_a(&cfg, &[]);
    // The flood from B in the background, a real exchange in its middle.
    let out = flood.with_extension("out");
    ok(
        &lab,
        true,
        &format!(
            "python3 {} {a4} 9000 {SYNS} > {} 2>&1 &",
            flood.display(),
            out.display()
        ),
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        ok(&lab, true, &format!("{net} exchange {a4} 9100 700")).trim(),
        "received=300"
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let sent = loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        if text.starts_with("sent=") {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the flood did not finish: {text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(sent.starts_with(&format!("sent={SYNS} ")), "{sent}");

    // Denied: the real exchange is breakage with its exact evidence, whatever the flood
    // pushed through the kernel's table; the flood is exposure closed, with a bounded
    // count and bounded per-peer memory.
    let r = report_when(&agent, &cfg, "9100 beside the flood", |r| {
        evidence(r, "in", "tcp", 9100, "payload_bytes_out") == 300
    });
    let p = port(&r, "in", "tcp", 9100).expect("9100 reported");
    assert_eq!(p["class"], "breakage", "{p:#}");
    assert_eq!(
        (
            &p["evidence"]["flows"],
            &p["evidence"]["payload_bytes_in"],
            &p["evidence"]["payload_bytes_out"]
        ),
        (&1.into(), &700.into(), &300.into()),
        "{p:#}"
    );
    let f = port(&r, "in", "tcp", 9000).expect("9000 reported");
    let flows = f["evidence"]["flows"].as_u64().expect("flows");
    assert_eq!(f["class"], "exposure-closed", "{}", f["class_reason"]);
    assert!(flows > 0 && flows <= SYNS, "{f:#}");
    assert_eq!(f["evidence"]["handshakes"], 0, "{f:#}");
    assert!(
        f["evidence"]["distinct_peers"].as_u64().unwrap() <= 64,
        "per-peer memory is bounded: {f:#}"
    );
    assert_eq!(labels(&r, "breakage"), vec!["in tcp/9100"], "{r:#}");
    // Allowed: SMTP still connects and counts.
    assert_eq!(
        ok(&lab, true, &format!("{net} connect {a4} 25")).trim(),
        "ok"
    );
    assert!(rule_packets(&agent.status(), "smtp-in") > 0);
    portcullis_tests::figures(
        "readiness flood",
        &[
            ("syns", SYNS.to_string()),
            ("flood", sent.trim().to_owned()),
            ("flood_flows_counted", flows.to_string()),
            ("real_flow_kept", "yes".into()),
        ],
    );
}

#[test]
fn mode_says_what_a_reload_does_and_persist_makes_it_stick() {
    let mut lab = Lab::new("persist");
    let net = net_py();
    lab.spawn_a(&format!("exec {net} listen 25 --host 0.0.0.0"));
    lab.spawn_a(&format!("exec {net} listen 9000 --host 0.0.0.0"));
    let (ns_a, a4) = (lab.ns_a.clone(), lab.a4.clone());
    lab.wait_tcp(&ns_a, &a4, 25);
    lab.wait_tcp(&ns_a, &a4, 9000);
    let cfg = lab.config(
        &rule("smtp-in", "in", "tcp", 25, ""),
        "mode = \"audit\"  # until the report says safe",
    );
    let text = std::fs::read_to_string(&cfg).expect("the config");
    let agent = lab.agent_in_a(&cfg, &[]);
    let json = |args: &[&str]| -> Value {
        let out = agent.cli(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).expect("JSON")
    };

    // Without --persist: the switch is live, the file untouched, and the command says
    // the next reload returns to audit; the reload does.
    let m = json(&["mode", "enforce", "--json"]);
    assert_eq!(
        (
            &m["mode"],
            &m["was"],
            &m["persisted"],
            &m["reload_returns_to"]
        ),
        (
            &"enforce".into(),
            &"audit".into(),
            &false.into(),
            &"audit".into()
        ),
        "{m:#}"
    );
    let said = stdout(&agent.cli(&["mode", "enforce"]));
    assert!(
        said.contains("the next reload or restart returns to audit") && said.contains("--persist"),
        "{said}"
    );
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), text);
    let r = json(&["reload", "--json"]);
    assert_eq!(
        (&r["ok"], &r["mode"]),
        (&true.into(), &"audit".into()),
        "{r:#}"
    );
    assert_eq!(agent.status()["mode"], "audit");

    // With --persist: the file says enforce (only that line changed, its comment kept),
    // and a reload keeps enforcing.
    let m = json(&["mode", "enforce", "--persist", "--json"]);
    assert_eq!(
        (&m["persisted"], &m["config_mode"], &m["reload_returns_to"]),
        (&true.into(), &"enforce".into(), &Value::Null),
        "{m:#}"
    );
    assert_eq!(
        std::fs::read_to_string(&cfg).unwrap(),
        text.replace("mode = \"audit\"  # until", "mode = \"enforce\"  # until")
    );
    let r = json(&["reload", "--json"]);
    assert_eq!(
        (&r["ok"], &r["mode"]),
        (&true.into(), &"enforce".into()),
        "{r:#}"
    );
    // Enforcing: the allowed port connects and counts, the unlisted one is dropped and
    // counted.
    assert_eq!(
        ok(&lab, true, &format!("{net} connect {a4} 25")).trim(),
        "ok"
    );
    assert_eq!(
        ok(&lab, true, &format!("{net} connect {a4} 9000")).trim(),
        "timeout"
    );
    let s = agent.status();
    assert!(rule_packets(&s, "smtp-in") > 0, "{s:#}");
    assert!(s["denied"]["packets"].as_u64().unwrap_or(0) > 0, "{s:#}");

    // A config that does not compile is refused by --persist; file and mode stay.
    let bad = text.replace(
        "mode = \"audit\"",
        "mode = \"enforce\"\nfeatures = [\"no-such\"]",
    );
    std::fs::write(&cfg, &bad).unwrap();
    let out = agent.cli(&["mode", "audit", "--persist"]);
    assert!(!out.status.success(), "a bad config was rewritten");
    assert!(stderr(&out).contains("no-such"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), bad);
    assert_eq!(agent.status()["mode"], "enforce");
}
