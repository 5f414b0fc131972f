//! The readiness report separates breakage from exposure (issue 17), on real traffic
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
    lab.spawn_a(&format!("exec {net} listen 3306 --host 0.0.0.0"));
    lab.spawn_a(&format!("exec {net} listen 11211 --host 127.0.0.1"));
    lab.spawn_a(&format!("exec {net} listen 5140 --udp --host 0.0.0.0"));
    let (ns_a, a4) = (lab.ns_a.clone(), lab.a4.clone());
    lab.wait_tcp(&ns_a, &a4, 25);
    lab.wait_tcp(&ns_a, &a4, 3306);
    lab.wait_tcp(&ns_a, "127.0.0.1", 11211);
    lab.wait_udp(&ns_a, 5140);
    let cfg = lab.config(&rule("smtp-in", "in", "tcp", 25, ""), "mode = \"audit\"");
    let agent = lab.agent_in_a(&cfg, &[]);

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
    assert_eq!(r["safe"], true);
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
    let cfg = lab.config(&rule("web-out", "out", "tcp", 8080, ""), "mode = \"audit\"");
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
