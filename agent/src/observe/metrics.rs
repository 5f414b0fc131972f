//! The Prometheus endpoint: `GET /metrics` in the text exposition format (0.0.4), served
//! by a deliberately tiny HTTP/1.1 server (one request per connection, no keep-alive,
//! bounded request size, time and concurrency) so the agent needs no web framework.
//!
//! Every scrape reads the state file and the pinned counters afresh (through
//! [`status::build`] and [`counters::read`], the same code `status` uses), so the
//! numbers are the kernel's at scrape time. Metric names and labels are documented in
//! README.md ("Reporting"); the Grafana dashboard in `agent/dashboards/` uses them.
//!
//! Counters are Prometheus counters (monotonic, `_total`) except across
//! `portcullis report --reset` and `portcullis detach`, which Prometheus sees as counter
//! resets, as it does a process restart.

use std::{collections::BTreeMap, fmt::Write as _, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use aya::programs::{
    links::{FdLink, PinnedLink},
    loaded_programs,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

use crate::{
    datapath::{
        attach::pinned_links,
        counters::{self, Snapshot},
        paths::PathArgs,
        state::State,
    },
    observe::status::{self, Status},
};

/// Content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Largest request head read (request line and headers).
const MAX_REQUEST: usize = 8 * 1024;
/// A client that sends no complete request head within this time is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more are closed at once (a scraper needs one).
const MAX_CONNECTIONS: usize = 16;
/// Denied-port series exposed (the most packets first): the kernel table holds up to
/// 4096 entries, too many series for one host.
pub const MAX_PORT_SERIES: usize = 256;

/// Run counts of one program (summed over the program ids attached under that name).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProgramRuns {
    /// Program name (`pc_ingress`, ...).
    pub name: String,
    /// `bpf_prog_info.run_cnt`.
    pub runs: u64,
    /// `bpf_prog_info.run_time_ns`.
    pub run_ns: u64,
}

/// Serves `/metrics` on `listen` until the task is dropped. Fails only if the address
/// cannot be bound; errors of single connections are logged at debug level.
pub async fn serve(listen: SocketAddr, paths: PathArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).await.with_context(|| {
        format!("listening for metrics on \"{listen}\" (is another process using the port?)")
    })?;
    log::info!("serving metrics on http://{listen}/metrics");
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let paths = Arc::new(paths);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // E.g. EMFILE: back off instead of spinning.
                log::warn!("accepting a metrics connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            log::debug!("metrics: too many connections, closing the one from {peer}");
            continue;
        };
        let paths = paths.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, paths).await {
                log::debug!("metrics request from {peer}: {e:#}");
            }
            drop(permit);
        });
    }
}

async fn handle(mut stream: TcpStream, paths: Arc<PathArgs>) -> anyhow::Result<()> {
    let head = tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream))
        .await
        .context("request timed out")??;
    let response = match route(&head) {
        Route::Metrics { head_only } => {
            let body = tokio::task::spawn_blocking(move || gather(&paths)).await?;
            match body {
                Ok(text) => response(200, "OK", CONTENT_TYPE, &text, head_only),
                Err(e) => {
                    let msg = format!("reading the counters: {e:#}\n");
                    response(
                        503,
                        "Service Unavailable",
                        "text/plain; charset=utf-8",
                        &msg,
                        head_only,
                    )
                }
            }
        }
        Route::Error(code, reason) => response(
            code,
            reason,
            "text/plain; charset=utf-8",
            &format!("{reason}\n"),
            false,
        ),
    };
    stream.write_all(&response).await?;
    stream.shutdown().await?;
    Ok(())
}

async fn read_head(stream: &mut TcpStream) -> anyhow::Result<String> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n != 0, "connection closed before a complete request");
        buf.extend_from_slice(&chunk[..n]);
        anyhow::ensure!(
            buf.len() <= MAX_REQUEST,
            "request head over {MAX_REQUEST} bytes"
        );
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics { head_only: bool },
    Error(u16, &'static str),
}

fn route(head: &str) -> Route {
    let mut parts = head.lines().next().unwrap_or_default().split(' ');
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Route::Error(400, "Bad Request");
    }
    let path = target.split('?').next().unwrap_or_default();
    match (method, path) {
        ("GET", "/metrics") => Route::Metrics { head_only: false },
        ("HEAD", "/metrics") => Route::Metrics { head_only: true },
        (_, "/metrics") => Route::Error(405, "Method Not Allowed"),
        _ => Route::Error(404, "Not Found"),
    }
}

fn response(code: u16, reason: &str, content_type: &str, body: &str, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n",
        body.len(),
        if code == 405 { "Allow: GET, HEAD\r\n" } else { "" },
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// Reads everything a scrape shows and renders it.
pub fn gather(paths: &PathArgs) -> anyhow::Result<String> {
    let state = State::read(&paths.state_file())?;
    let snap = counters::read(paths)?;
    let status = status::build(state, &snap, &pinned_links(paths));
    Ok(render(
        &status,
        &snap,
        &program_runs(paths),
        bpf_stats_enabled(),
    ))
}

/// Run counts of the programs behind the pinned links, by program name. The kernel only
/// counts runs while `kernel.bpf_stats_enabled = 1` (it costs a little per run), so
/// without it these stay 0; [`bpf_stats_enabled`] is exported next to them.
pub fn program_runs(paths: &PathArgs) -> Vec<ProgramRuns> {
    let ids: std::collections::BTreeSet<u32> = pinned_links(paths)
        .iter()
        .filter_map(|p| PinnedLink::from_pin(p).ok())
        .filter_map(|l| FdLink::from(l).info().ok())
        .map(|i| i.program_id())
        .collect();
    let mut by_name: BTreeMap<String, ProgramRuns> = BTreeMap::new();
    for info in loaded_programs()
        .filter_map(Result::ok)
        .filter(|i| ids.contains(&i.id()))
    {
        let name = info.name_as_str().unwrap_or("unknown").to_owned();
        let e = by_name.entry(name.clone()).or_insert_with(|| ProgramRuns {
            name,
            ..ProgramRuns::default()
        });
        e.runs += info.run_count();
        e.run_ns += info.run_time().as_nanos() as u64;
    }
    by_name.into_values().collect()
}

/// `kernel.bpf_stats_enabled`, if readable.
pub fn bpf_stats_enabled() -> Option<bool> {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
        .ok()
        .map(|s| s.trim() != "0")
}

/// Escapes a label value (backslash, double quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One metric family: HELP, TYPE, then its samples (label set, value).
struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &'static str, kind: &str, help: &str) -> Self {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Self { out, name }
    }

    fn sample(&mut self, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let _ = write!(self.out, "{}", self.name);
        if !labels.is_empty() {
            let set: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
                .collect();
            let _ = write!(self.out, "{{{}}}", set.join(","));
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// The exposition text. Pure: what a scrape shows for these inputs.
pub fn render(
    s: &Status,
    snap: &Snapshot,
    programs: &[ProgramRuns],
    bpf_stats: Option<bool>,
) -> String {
    let mut o = String::new();
    let version = env!("CARGO_PKG_VERSION");
    Family::new(
        &mut o,
        "portcullis_info",
        "gauge",
        "The running policy: product, mode, loopback handling and agent version (always 1).",
    )
    .sample(
        &[
            ("product", &s.product),
            ("mode", s.mode.as_str()),
            ("loopback", s.loopback.as_str()),
            ("version", version),
        ],
        1,
    );
    Family::new(
        &mut o,
        "portcullis_policy_version",
        "gauge",
        "Policy installs since the pins were created (start and reload).",
    )
    .sample(&[], s.policy_version);
    Family::new(
        &mut o,
        "portcullis_policy_loaded_timestamp_seconds",
        "gauge",
        "Unix time of the last policy install.",
    )
    .sample(&[], s.loaded_at);
    Family::new(
        &mut o,
        "portcullis_attached_links",
        "gauge",
        "Pinned program links (4 per cgroup scope, plus XDP).",
    )
    .sample(&[], s.attached_links);

    for (name, help, bytes) in [
        (
            "portcullis_rule_packets_total",
            "Packets allowed by each rule.",
            false,
        ),
        (
            "portcullis_rule_bytes_total",
            "Bytes (IP header included) allowed by each rule.",
            true,
        ),
    ] {
        let mut f = Family::new(&mut o, name, "counter", help);
        for r in &s.rules {
            let labels = [
                ("product", s.product.as_str()),
                ("rule", r.id.as_str()),
                ("direction", r.direction.as_str()),
                ("protocol", r.protocol.as_str()),
                ("mode", s.mode.as_str()),
            ];
            f.sample(&labels, if bytes { r.bytes } else { r.packets });
        }
    }

    // The kernel counts denies by (verdict, direction, reason): it has no protocol
    // there. The protocol is in the denied-port table, exported below.
    for (name, help, bytes) in [
        (
            "portcullis_denied_packets_total",
            "Packets denied (verdict=deny, enforce mode) or that would have been (verdict=would-deny, audit mode), by direction and reason.",
            false,
        ),
        (
            "portcullis_denied_bytes_total",
            "Bytes denied or that would have been, by direction and reason.",
            true,
        ),
    ] {
        let mut f = Family::new(&mut o, name, "counter", help);
        for d in &s.denies {
            let direction = d.direction.to_string();
            let verdict = if d.audit { "would-deny" } else { "deny" };
            let labels = [
                ("product", s.product.as_str()),
                ("direction", direction.as_str()),
                ("reason", d.reason),
                ("verdict", verdict),
            ];
            f.sample(&labels, if bytes { d.bytes } else { d.packets });
        }
    }

    // `status` sorts the table by packets, so the first entries are the heaviest.
    let ports = &s.denied_ports[..s.denied_ports.len().min(MAX_PORT_SERIES)];
    for (name, help, bytes) in [
        (
            "portcullis_denied_port_packets_total",
            "Packets denied or would-be denied per (direction, protocol, port) from the kernel's bounded denied-port table (both verdicts; the busiest 256 entries; port is the local port inbound, the remote port outbound).",
            false,
        ),
        (
            "portcullis_denied_port_bytes_total",
            "Bytes denied or would-be denied per (direction, protocol, port), as portcullis_denied_port_packets_total.",
            true,
        ),
    ] {
        let mut f = Family::new(&mut o, name, "counter", help);
        for d in ports {
            let (direction, port) = (d.direction.to_string(), d.port.to_string());
            let labels = [
                ("product", s.product.as_str()),
                ("direction", direction.as_str()),
                ("protocol", &d.protocol.to_string()),
                ("port", port.as_str()),
            ];
            f.sample(&labels, if bytes { d.bytes } else { d.packets });
        }
    }
    Family::new(
        &mut o,
        "portcullis_denied_ports",
        "gauge",
        "Entries in the kernel's denied-port table (at most 4096, least recently denied evicted).",
    )
    .sample(&[], snap.denied.len());

    let mut f = Family::new(
        &mut o,
        "portcullis_deny_events_total",
        "counter",
        "Deny events by outcome: sent to the agent, dropped by the kernel's rate limit (events_per_sec), or lost because the ring buffer was full.",
    );
    for (outcome, n) in [
        ("sent", s.events.sent),
        ("rate_limited", s.events.rate_limited),
        ("ring_full", s.events.ring_full),
    ] {
        f.sample(&[("outcome", outcome)], n);
    }

    for (name, help, bytes) in [
        (
            "portcullis_passed_packets_total",
            "Packets let through before the policy: the loopback exemption (class=loopback) and ICMP errors, neighbour discovery and allowed echo (class=icmp).",
            false,
        ),
        (
            "portcullis_passed_bytes_total",
            "Bytes let through before the policy, as portcullis_passed_packets_total.",
            true,
        ),
    ] {
        let mut f = Family::new(&mut o, name, "counter", help);
        for (class, t) in [("loopback", s.loopback_exempt), ("icmp", s.icmp_passed)] {
            f.sample(&[("class", class)], if bytes { t.bytes } else { t.packets });
        }
    }
    Family::new(
        &mut o,
        "portcullis_malformed_packets_total",
        "counter",
        "Packets whose headers could not be parsed (dropped in enforce mode).",
    )
    .sample(&[], s.malformed.packets);

    let mut f = Family::new(
        &mut o,
        "portcullis_program_runs_total",
        "counter",
        "Runs of each attached eBPF program (bpf_prog_info.run_cnt; counted only while kernel.bpf_stats_enabled=1).",
    );
    for p in programs {
        f.sample(&[("program", p.name.as_str())], p.runs);
    }
    let mut f = Family::new(
        &mut o,
        "portcullis_program_run_seconds_total",
        "counter",
        "Time spent in each attached eBPF program (bpf_prog_info.run_time_ns; counted only while kernel.bpf_stats_enabled=1).",
    );
    for p in programs {
        f.sample(&[("program", p.name.as_str())], p.run_ns as f64 / 1e9);
    }
    if let Some(on) = bpf_stats {
        Family::new(
            &mut o,
            "portcullis_bpf_stats_enabled",
            "gauge",
            "1 when kernel.bpf_stats_enabled is on, so the program run metrics count.",
        )
        .sample(&[], u8::from(on));
    }
    o
}

#[cfg(test)]
mod tests {
    use portcullis_common::stats::Counter;

    use super::*;
    use crate::{
        observe::status::{DeniedPort, DenyStatus, EventStatus, RuleStatus, Traffic},
        policy::Direction,
    };

    fn status() -> Status {
        Status {
            product: "xeams".into(),
            mode: crate::model::Mode::Audit,
            loopback: crate::model::LoopbackMode::Exempt,
            scopes: vec![crate::model::ScopeTarget::Host],
            attached_links: 4,
            xdp: Default::default(),
            generation: 1,
            policy_version: 3,
            loaded_at: 1_795_000_000,
            pid: 42,
            rules: vec![RuleStatus {
                id: "smtp/in".into(),
                direction: "in".into(),
                protocol: "tcp".into(),
                ports: "25".into(),
                packets: 12,
                bytes: 1530,
            }],
            allowed: Traffic {
                packets: 12,
                bytes: 1530,
            },
            denies: vec![DenyStatus {
                direction: Direction::Out,
                reason: "no-rule",
                audit: true,
                packets: 3,
                bytes: 180,
            }],
            denied: Traffic::default(),
            would_deny: Traffic {
                packets: 3,
                bytes: 180,
            },
            loopback_exempt: Traffic {
                packets: 5,
                bytes: 500,
            },
            icmp_passed: Traffic::default(),
            malformed: Traffic::default(),
            denied_ports: vec![DeniedPort {
                direction: Direction::Out,
                protocol: crate::model::IpProtocol(6),
                port: 8081,
                packets: 3,
                bytes: 180,
            }],
            events: EventStatus {
                sent: 3,
                rate_limited: 1,
                ring_full: 0,
            },
        }
    }

    fn snapshot() -> Snapshot {
        let mut snap = Snapshot::default();
        snap.denied.insert(
            Default::default(),
            Counter {
                packets: 3,
                bytes: 180,
            },
        );
        snap
    }

    #[test]
    fn exposition_has_help_type_and_the_numbers() {
        let text = render(
            &status(),
            &snapshot(),
            &[ProgramRuns {
                name: "pc_ingress".into(),
                runs: 10,
                run_ns: 2_500_000_000,
            }],
            Some(false),
        );
        for line in [
            "portcullis_info{product=\"xeams\",mode=\"audit\",loopback=\"exempt\",version=\"0.1.0\"} 1",
            "portcullis_policy_version 3",
            "portcullis_policy_loaded_timestamp_seconds 1795000000",
            "portcullis_rule_packets_total{product=\"xeams\",rule=\"smtp/in\",direction=\"in\",protocol=\"tcp\",mode=\"audit\"} 12",
            "portcullis_rule_bytes_total{product=\"xeams\",rule=\"smtp/in\",direction=\"in\",protocol=\"tcp\",mode=\"audit\"} 1530",
            "portcullis_denied_packets_total{product=\"xeams\",direction=\"out\",reason=\"no-rule\",verdict=\"would-deny\"} 3",
            "portcullis_denied_port_packets_total{product=\"xeams\",direction=\"out\",protocol=\"tcp\",port=\"8081\"} 3",
            "portcullis_deny_events_total{outcome=\"rate_limited\"} 1",
            "portcullis_passed_packets_total{class=\"loopback\"} 5",
            "portcullis_program_runs_total{program=\"pc_ingress\"} 10",
            "portcullis_program_run_seconds_total{program=\"pc_ingress\"} 2.5",
            "portcullis_bpf_stats_enabled 0",
            "portcullis_denied_ports 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        // Every family has HELP and TYPE, counters end in _total, and each family's
        // samples come right after its TYPE line.
        let mut current = String::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(
                    text.contains(&format!("# HELP {name} ")),
                    "{name} has no HELP"
                );
                assert_eq!(
                    kind == "counter",
                    name.ends_with("_total"),
                    "{name} is a {kind}"
                );
                current = name.to_owned();
            } else if !l.starts_with('#') {
                assert!(
                    l.starts_with(&current),
                    "sample {l:?} outside its family {current}"
                );
            }
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let mut s = status();
        s.rules[0].id = "a\"b\\c\nd".into();
        let text = render(&s, &snapshot(), &[], None);
        assert!(text.contains("rule=\"a\\\"b\\\\c\\nd\""), "{text}");
        assert!(
            !text.contains("portcullis_bpf_stats_enabled"),
            "unknown stats setting: no sample"
        );
    }

    #[test]
    fn routes() {
        assert_eq!(
            route("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics { head_only: false }
        );
        assert_eq!(
            route("GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Route::Metrics { head_only: false }
        );
        assert_eq!(
            route("HEAD /metrics HTTP/1.1\r\n\r\n"),
            Route::Metrics { head_only: true }
        );
        assert_eq!(
            route("POST /metrics HTTP/1.1\r\n\r\n"),
            Route::Error(405, "Method Not Allowed")
        );
        assert_eq!(
            route("GET / HTTP/1.1\r\n\r\n"),
            Route::Error(404, "Not Found")
        );
        assert_eq!(route("garbage\r\n\r\n"), Route::Error(400, "Bad Request"));
        let r = String::from_utf8(response(200, "OK", CONTENT_TYPE, "x 1\n", false)).unwrap();
        assert!(
            r.starts_with("HTTP/1.1 200 OK\r\n")
                && r.contains("Content-Length: 4\r\n")
                && r.ends_with("\r\n\r\nx 1\n"),
            "{r}"
        );
        let head = String::from_utf8(response(200, "OK", CONTENT_TYPE, "x 1\n", true)).unwrap();
        assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {head}");
    }

    #[tokio::test]
    async fn serves_over_http() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let dir = std::env::temp_dir().join(format!("portcullis-metrics-{}", std::process::id()));
        let paths = PathArgs {
            pin_dir: Some(dir.join("pins")),
            state_dir: dir.join("state"),
        };
        let server = tokio::spawn(serve(addr, paths));
        let get = |path: &'static str| async move {
            for _ in 0..50 {
                if let Ok(mut s) = TcpStream::connect(addr).await {
                    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                        .await
                        .unwrap();
                    let mut out = String::new();
                    s.read_to_string(&mut out).await.unwrap();
                    return out;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("the server never accepted");
        };
        assert!(get("/").await.starts_with("HTTP/1.1 404 Not Found\r\n"));
        // No agent state: the scrape fails loudly rather than serving zeros.
        let r = get("/metrics").await;
        assert!(
            r.starts_with("HTTP/1.1 503 Service Unavailable\r\n") && r.contains("state.json"),
            "{r}"
        );
        server.abort();
    }

    #[test]
    fn dashboard_uses_only_exported_metrics() {
        let dashboard = include_str!("../../dashboards/portcullis.json");
        let _: serde_json::Value = serde_json::from_str(dashboard).expect("the dashboard is JSON");
        let text = render(
            &status(),
            &snapshot(),
            &[ProgramRuns::default()],
            Some(true),
        );
        let mut names: Vec<&str> = dashboard
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("portcullis_"))
            .collect();
        names.sort_unstable();
        names.dedup();
        assert!(names.len() >= 10, "{names:?}");
        for name in names {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "the dashboard uses {name}, which is not exported"
            );
        }
    }
}
