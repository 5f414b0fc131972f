//! Reporting and observability against real traffic: the Prometheus endpoint
//! scraped over HTTP from a running agent (numbers checked against the traffic sent and
//! `promtool check metrics`), the audit report naming exactly the ports that were sent
//! and not allowed, and `status --json` keeping its documented fields. Every test
//! checks an allowed and a denied outcome.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use portcullis_tests::{
    Agent, Lab, denied_port, denies, net_py, reported_ports, rule_packets, stderr, stdout,
};
use serde_json::Value;

const WEB_OUT: &str = r#"
[[features]]
name = "extra"
description = "a second web service"

[[rule]]
id = "web-out"
direction = "out"
protocol = "tcp"
ports = 8080
why = "test"
source = "tests"

[[rule]]
id = "extra-web"
direction = "out"
protocol = "tcp"
ports = 8082
feature = "extra"
why = "test"
source = "tests"

[[rule]]
id = "smtp-in"
direction = "in"
protocol = "tcp"
ports = 2525
why = "test: never hit"
source = "tests"
"#;

fn http_servers(lab: &mut Lab, ports: &[u16]) {
    for port in ports {
        lab.spawn_b(&format!("exec python3 -m http.server {port} --bind ::"));
    }
    for port in ports {
        lab.wait_tcp(&lab.ns_b.clone(), &lab.b4.clone(), *port);
    }
}

fn curl(lab: &Lab, port: u16) -> String {
    stdout(&lab.on_a(&format!(
        "curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 http://{}:{port}/",
        lab.b4
    )))
}

fn connect(lab: &Lab, port: u16) -> String {
    stdout(&lab.on_a(&format!("{} connect {} {port}", net_py(), lab.b4)))
        .trim()
        .to_owned()
}

/// A port nothing listens on right now (the kernel picks it; it is free again at once).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("binding a probe port")
        .local_addr()
        .expect("probe address")
        .port()
}

/// `method` `path` on 127.0.0.1:`port`, retrying the connection for a few seconds (the
/// agent binds the endpoint after it becomes ready). Returns (head, body).
fn http_request(port: u16, method: &str, path: &str) -> (String, String) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut stream = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => panic!(
                "nothing serves metrics on 127.0.0.1:{port} ({e}): the agent must serve `[metrics] listen` \
                 (metrics::serve wired into `portcullis run`)"
            ),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("socket timeout");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    )
    .expect("sending the request");
    let mut raw = String::new();
    stream
        .read_to_string(&mut raw)
        .expect("reading the response");
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {raw:?}"));
    (head.to_owned(), body.to_owned())
}

/// GET `path`: (status line, body).
fn http_get(port: u16, path: &str) -> (String, String) {
    let (head, body) = http_request(port, "GET", path);
    (head.lines().next().unwrap_or_default().to_owned(), body)
}

/// The value of the sample whose line starts with `series` (name and labels, exact).
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
        .parse()
        .expect("a number")
}

fn promtool(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running promtool (Debian package prometheus; `cargo xtask setup` installs it)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feeding promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\non:\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sends known traffic in enforce mode: allowed HTTP to 8080, three refused connects to
/// 8081. Checks the outcomes and returns the agent's status afterwards.
fn enforce_traffic(lab: &Lab, agent: &Agent) -> Value {
    assert_eq!(
        curl(lab, 8080),
        "200",
        "allowed outbound HTTP to 8080 failed"
    );
    for _ in 0..3 {
        assert_eq!(
            connect(lab, 8081),
            "EPERM",
            "outbound 8081 must be refused in enforce mode"
        );
    }
    agent.status()
}

/// The exposition's numbers against `status --json` and the traffic, and promtool.
fn check_exposition(text: &str, s: &Value) {
    let rule = |m: &str| {
        format!(
            "{m}{{product=\"lab\",rule=\"web-out\",direction=\"out\",protocol=\"tcp\",mode=\"enforce\"}}"
        )
    };
    let packets = sample(text, &rule("portcullis_rule_packets_total"));
    assert!(
        packets >= 6.0,
        "an HTTP exchange is at least 6 packets, metrics say {packets}"
    );
    assert_eq!(
        packets as u64,
        rule_packets(s, "web-out"),
        "metrics and status disagree on web-out packets"
    );
    assert!(sample(text, &rule("portcullis_rule_bytes_total")) > 0.0);
    assert_eq!(
        sample(
            text,
            "portcullis_denied_packets_total{product=\"lab\",direction=\"out\",reason=\"no-rule\",verdict=\"deny\"}"
        ),
        3.0,
        "three refused connects"
    );
    assert_eq!(
        sample(
            text,
            "portcullis_denied_port_packets_total{product=\"lab\",direction=\"out\",protocol=\"tcp\",port=\"8081\"}"
        ),
        3.0
    );
    // The policy label is the digest `status --json` reports for the same policy.
    let digest = s["policy_digest"].as_str().expect("policy_digest");
    assert_eq!(digest.len(), 16, "{s:#}");
    assert_eq!(
        sample(
            text,
            &format!(
                "portcullis_info{{product=\"lab\",mode=\"enforce\",loopback=\"exempt\",version=\"0.1.0\",policy=\"{digest}\"}}"
            )
        ),
        1.0
    );
    assert_eq!(
        sample(text, "portcullis_policy_version"),
        s["policy_version"].as_f64().expect("policy_version")
    );
    assert_eq!(
        sample(text, "portcullis_policy_loaded_timestamp_seconds"),
        s["loaded_at"].as_f64().expect("loaded_at")
    );
    assert!(
        sample(text, "portcullis_deny_events_total{outcome=\"sent\"}") >= 3.0,
        "each refused connect sends an event"
    );
    assert!(text.contains("# TYPE portcullis_program_runs_total counter"));
    assert!(
        text.contains("portcullis_program_runs_total{program=\"pc_connect4\"}"),
        "attached programs are listed:\n{text}"
    );
    promtool(text);
}

#[test]
fn metrics_scraped_over_http_match_traffic_and_pass_promtool() {
    let mut lab = Lab::new("metrics");
    http_servers(&mut lab, &[8080, 8081]);
    let port = free_port();
    let cfg = lab.config(
        WEB_OUT,
        &format!("mode = \"enforce\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let agent = lab.agent(&cfg, &[]);
    let s = enforce_traffic(&lab, &agent);

    let (status_line, body) = http_get(port, "/metrics");
    assert_eq!(status_line, "HTTP/1.1 200 OK", "GET /metrics");
    check_exposition(&body, &s);
    let (head, head_body) = http_request(port, "HEAD", "/metrics");
    assert!(
        head.starts_with("HTTP/1.1 200 OK\r\n") && head_body.is_empty(),
        "HEAD /metrics: the status and no body, got {head:?} {head_body:?}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4; charset=utf-8\r\n"),
        "the 0.0.4 text format's content type: {head:?}"
    );
    let (not_found, _) = http_get(port, "/");
    assert_eq!(
        not_found, "HTTP/1.1 404 Not Found",
        "only /metrics is served"
    );
}

#[test]
fn prometheus_text_from_status_matches_traffic_and_passes_promtool() {
    let mut lab = Lab::new("promtxt");
    http_servers(&mut lab, &[8080, 8081]);
    let cfg = lab.config(WEB_OUT, "mode = \"enforce\"");
    let agent = lab.agent(&cfg, &[]);
    let s = enforce_traffic(&lab, &agent);
    let out = agent.cli(&["status", "--prometheus"]);
    assert!(
        out.status.success(),
        "status --prometheus failed: {}",
        stderr(&out)
    );
    check_exposition(&stdout(&out), &s);
}

/// `report --json` for the lab's config.
fn report(agent: &Agent, cfg: &std::path::Path) -> Value {
    let out = agent.cli(&["report", "--json", "--config", &cfg.display().to_string()]);
    assert!(out.status.success(), "report failed: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("report --json is JSON")
}

/// Audit traffic: allowed HTTP to 8080; HTTP to 8081 and 8082 and UDP to 5353 that no
/// rule allows (audit mode lets it all through).
fn audit_traffic(lab: &Lab) {
    for port in [8080, 8081, 8082] {
        assert_eq!(
            curl(lab, port),
            "200",
            "audit mode drops nothing: HTTP to {port}"
        );
    }
    let udp = stdout(&lab.on_a(&format!("{} udp-send {} 5353 3 100", net_py(), lab.b4)));
    assert_eq!(udp.trim(), "sent=3 eperm=0", "audit mode refuses nothing");
}

#[test]
fn report_names_exactly_the_denied_ports_then_says_safe_after_a_site_rule_and_reset() {
    let mut lab = Lab::new("report");
    http_servers(&mut lab, &[8080, 8081, 8082]);
    // No minimum window here (the readiness suite tests it): the verdict is the ports'.
    let cfg = lab.config(WEB_OUT, "mode = \"audit\"\naudit_min_window = \"0\"");
    let agent = lab.agent(&cfg, &[]);
    audit_traffic(&lab);

    let r = report(&agent, &cfg);
    let expected: Vec<(String, String, u64)> = vec![
        ("out".into(), "tcp".into(), 8081),
        ("out".into(), "tcp".into(), 8082),
        ("out".into(), "udp".into(), 5353),
    ];
    assert_eq!(
        reported_ports(&r),
        expected,
        "the report must name exactly the ports sent and not allowed: {r:#}"
    );
    assert_eq!(r["safe"], false, "{r:#}");
    let verdict = r["verdict"].as_str().expect("verdict");
    assert!(
        verdict.starts_with("not safe to enforce: enforcing would break "),
        "{verdict}"
    );
    for port in ["tcp/8081", "tcp/8082", "udp/5353"] {
        assert!(verdict.contains(port), "verdict names {port}: {verdict}");
    }
    let port = |n: u64| {
        r["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["port"] == n)
            .cloned()
            .unwrap()
    };
    assert_eq!(
        port(8082)["covered_by"]["kind"],
        "feature",
        "8082 is opened by feature extra: {r:#}"
    );
    assert_eq!(port(8082)["covered_by"]["feature"], "extra");
    assert_eq!(
        port(8081)["covered_by"],
        Value::Null,
        "nothing opens 8081: {r:#}"
    );
    assert!(
        port(8081)["packets"].as_u64().unwrap_or(0) >= 3,
        "a would-denied HTTP exchange is several packets: {r:#}"
    );
    let idle: Vec<&str> = r["rules_never_hit"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x["id"].as_str())
        .collect();
    assert_eq!(idle, ["smtp-in"], "web-out was hit, smtp-in was not: {r:#}");
    let s = agent.status();
    assert!(
        rule_packets(&s, "web-out") >= 6,
        "the allowed flow is counted: {s:#}"
    );
    assert!(
        denies(&s, "out", "no-rule", true).0 >= 6,
        "would-denies are counted: {s:#}"
    );
    let text = stdout(&agent.cli(&["report", "--config", &cfg.display().to_string()]));
    assert!(
        text.trim_end().ends_with(verdict),
        "the text report ends with the verdict:\n{text}"
    );
    drop(agent);

    // The site allows what it needs: a site rule for 8081 and 5353, the feature for 8082.
    let cfg = lab.config(
        WEB_OUT,
        "mode = \"audit\"\naudit_min_window = \"0\"\nfeatures = [\"extra\"]\n\n[[rule]]\nid = \"site-web\"\ndirection = \"out\"\nprotocol = \"tcp\"\nports = 8081\nwhy = \"site\"\n\n\
         [[rule]]\nid = \"site-udp\"\ndirection = \"out\"\nprotocol = \"udp\"\nports = 5353\nwhy = \"site\"\n",
    );
    let agent = lab.agent(&cfg, &[]);
    let out = agent.cli(&["report", "--reset"]);
    assert!(
        out.status.success(),
        "report --reset failed: {}",
        stderr(&out)
    );
    assert_eq!(
        agent.status()["would_deny"]["packets"],
        0,
        "reset zeroes the would-denies"
    );
    audit_traffic(&lab);

    let r = report(&agent, &cfg);
    assert_eq!(
        reported_ports(&r),
        vec![],
        "everything sent is allowed now: {r:#}"
    );
    assert_eq!(r["safe"], true, "{r:#}");
    assert!(
        r["verdict"]
            .as_str()
            .unwrap()
            .starts_with("safe to enforce: no would-deny since "),
        "{r:#}"
    );
    let s = agent.status();
    for rule in ["web-out", "extra-web", "site-web", "site-udp"] {
        assert!(
            rule_packets(&s, rule) > 0,
            "{rule} allowed the traffic: {s:#}"
        );
    }
    assert_eq!(denied_port(&s, "out", "tcp", 8081), 0, "{s:#}");
}

#[test]
fn status_json_is_stable_and_watch_redraws() {
    let mut lab = Lab::new("statjs");
    http_servers(&mut lab, &[8080, 8081]);
    let cfg = lab.config(WEB_OUT, "mode = \"enforce\"");
    let agent = lab.agent(&cfg, &[]);
    let s = enforce_traffic(&lab, &agent);

    // The fields README.md documents, with their types.
    for (key, kind) in [
        ("product", "string"),
        ("mode", "string"),
        ("loopback", "string"),
        ("scopes", "array"),
        ("attached_links", "number"),
        ("generation", "number"),
        ("policy_version", "number"),
        ("loaded_at", "number"),
        ("pid", "number"),
        ("rules", "array"),
        ("allowed", "object"),
        ("denies", "array"),
        ("denied", "object"),
        ("would_deny", "object"),
        ("loopback_exempt", "object"),
        ("icmp_passed", "object"),
        ("malformed", "object"),
        ("denied_ports", "array"),
        ("events", "object"),
    ] {
        let v = &s[key];
        let ok = match kind {
            "string" => v.is_string(),
            "array" => v.is_array(),
            "number" => v.is_u64(),
            _ => v.is_object(),
        };
        assert!(ok, "status --json: {key:?} should be a {kind}, is {v}");
    }
    let rule = s["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "web-out")
        .expect("web-out in rules");
    for key in ["id", "direction", "protocol", "ports", "packets", "bytes"] {
        assert!(!rule[key].is_null(), "rules[] lacks {key:?}: {rule}");
    }
    let deny = s["denies"]
        .as_array()
        .unwrap()
        .first()
        .expect("a deny entry after refused connects");
    for key in ["direction", "reason", "audit", "packets", "bytes"] {
        assert!(!deny[key].is_null(), "denies[] lacks {key:?}: {deny}");
    }
    for key in ["sent", "rate_limited", "ring_full"] {
        assert!(s["events"][key].is_u64(), "events lacks {key:?}");
    }
    assert_eq!(s["mode"], "enforce");
    assert!(rule_packets(&s, "web-out") >= 6, "allowed traffic counted");
    assert_eq!(
        denied_port(&s, "out", "tcp", 8081),
        3,
        "denied traffic counted"
    );

    // --watch redraws in place (clear + home) until stopped.
    let out = Command::new("timeout")
        .args([
            "2.5",
            &portcullis_tests::bin().display().to_string(),
            "status",
            "--watch",
        ])
        .envs(agent.env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("running status --watch");
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(124),
        "--watch runs until stopped: {}",
        stderr(&out)
    );
    assert!(
        text.matches("\x1b[H\x1b[2J").count() >= 2,
        "at least two redraws in 2.5 s: {text:?}"
    );
    assert!(
        text.contains("PKTS/S") && text.contains("LAST HIT") && text.contains("web-out"),
        "{text}"
    );
}

/// `report --reset` zeroes the XDP layer's counters as well as the cgroup layer's: the
/// maps hold one block per layer, and a reset that walked only the first block left the
/// XDP counters standing.
#[test]
fn report_reset_zeroes_the_xdp_layer_too() {
    let mut lab = Lab::new("rstxdp");
    // The listener runs outside the enforced cgroup: XDP alone decides what reaches it.
    for port in [2525, 2526] {
        lab.spawn_a_unenforced(&format!(
            "exec python3 -m http.server {port} --bind 0.0.0.0"
        ));
    }
    let (ns_a, a4) = (lab.ns_a.clone(), lab.a4.clone());
    for port in [2525, 2526] {
        lab.wait_tcp(&ns_a, &a4, port);
    }
    let cfg = lab.config(WEB_OUT, "mode = \"enforce\"\nxdp_scope_only = true");
    // The agent runs in namespace A, where the veth it filters lives.
    let agent = lab.agent_xdp(&cfg);
    let from_b = |port: u16| {
        stdout(&lab.on_b(&format!(
            "curl -s -o /dev/null -w '%{{http_code}}' --max-time 2 http://{}:{port}/",
            lab.a4
        )))
    };
    let xdp_rule = |s: &Value| {
        s["xdp"]["rules"]
            .as_array()
            .expect("xdp.rules")
            .iter()
            .find(|r| r["id"] == "smtp-in")
            .map_or(0, |r| r["packets"].as_u64().unwrap_or(0))
    };
    let xdp_denied_port = |s: &Value, port: u64| {
        s["xdp"]["denied_ports"]
            .as_array()
            .expect("xdp.denied_ports")
            .iter()
            .filter(|d| d["port"] == port)
            .map(|d| d["packets"].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    let traffic = || {
        assert_eq!(from_b(2525), "200", "XDP lets the allowed port through");
        assert_eq!(from_b(2526), "000", "XDP drops the port no rule opens");
    };

    traffic();
    let s = agent.status();
    assert!(xdp_rule(&s) > 0, "XDP counted the allowed flow: {s:#}");
    assert!(
        s["xdp"]["denied"]["packets"].as_u64().unwrap_or(0) > 0 && xdp_denied_port(&s, 2526) > 0,
        "XDP counted the drops on 2526: {s:#}"
    );

    let out = agent.cli(&["report", "--reset"]);
    assert!(
        out.status.success(),
        "report --reset failed: {}",
        stderr(&out)
    );
    let s = agent.status();
    assert_eq!(xdp_rule(&s), 0, "the XDP rule counter is zeroed: {s:#}");
    assert_eq!(
        s["xdp"]["denied"]["packets"], 0,
        "XDP denies are zeroed: {s:#}"
    );
    assert_eq!(
        s["xdp"]["denied_ports"].as_array().map(Vec::len),
        Some(0),
        "the XDP denied-port entries are gone: {s:#}"
    );
    assert_eq!(s["denied"]["packets"], 0, "cgroup denies are zeroed: {s:#}");

    // Still enforcing, counting from zero.
    traffic();
    let s = agent.status();
    assert!(xdp_rule(&s) > 0, "counting starts again: {s:#}");
    assert!(xdp_denied_port(&s, 2526) > 0, "{s:#}");
}
