//! The Prometheus metrics: what one scrape shows, in the text exposition format (0.0.4).
//! The HTTP endpoint that serves it is `daemon::http`; `status --prometheus` prints it.
//!
//! Every scrape reads the state file and the pinned counters afresh (through
//! [`status::build`] and [`counters::read`], the same code `status` uses), so the
//! numbers are the kernel's at scrape time. The values live in the kernel, not in this
//! process, so they are exposed through a prometheus-client [`Collector`] over one
//! scrape's [`Scrape`] rather than through instrumented metric objects; the crate (the
//! Prometheus project's own) does the families, label escaping and number formatting.
//! Metric names and labels are documented in README.md ("Metrics"); the Grafana
//! dashboard in `agent/dashboards/` uses them.
//!
//! Counters are Prometheus counters (monotonic, `_total`) except across
//! `portcullis report --reset` and `portcullis detach`, which Prometheus sees as counter
//! resets, as it does a process restart.

use std::fmt;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, prometheus_text},
    metrics::{TypedMetric, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use crate::{
    datapath::{
        attach::pinned_links,
        counters,
        paths::PathArgs,
        programs::{self, ProgramRuns},
        state::State,
    },
    observe::status::{self, Status},
};

/// Content type of the text exposition format (`text/plain; version=0.0.4; charset=utf-8`).
pub use prometheus_text::CONTENT_TYPE;

/// Denied-port series exposed (the most packets first): the kernel table holds up to
/// 4096 entries, too many series for one host.
pub const MAX_PORT_SERIES: usize = 256;

/// Everything one scrape shows, read once.
#[derive(Debug)]
pub struct Scrape {
    /// The running policy and its counters.
    pub status: Status,
    /// Entries in the kernel's denied-port table (all of them, not only the exported ones).
    pub denied_ports: usize,
    /// Run statistics of the attached programs.
    pub programs: Vec<ProgramRuns>,
    /// `kernel.bpf_stats_enabled`, if readable (no series when not).
    pub bpf_stats: Option<bool>,
    /// Reloads the agent rejected since it started (the state file's last outcome).
    pub reload_failures: u64,
}

/// Reads everything a scrape shows and renders it.
pub fn gather(paths: &PathArgs) -> anyhow::Result<String> {
    let state = State::read(&paths.state_file())?;
    let reload_failures = state.last_reload.as_ref().map_or(0, |r| r.failures);
    let snap = counters::read(paths)?;
    let learning = status::learned(paths);
    let status = status::build(state, &snap, &pinned_links(paths), learning.as_ref());
    Ok(Scrape {
        status,
        denied_ports: snap.denied.len(),
        programs: programs::program_runs(paths),
        bpf_stats: programs::bpf_stats_enabled(),
        reload_failures,
    }
    .render())
}

impl Scrape {
    /// The exposition text. Pure: what a scrape shows for these inputs.
    pub fn render(self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut text = String::new();
        prometheus_text::encode(&mut text, &registry)
            .expect("formatting into a String cannot fail");
        text
    }
}

/// A label set: (name, value) pairs in exposition order.
type Labels<const N: usize> = [(&'static str, String); N];

/// Writes one family (HELP, TYPE, then one sample per label set). `name` is the name as
/// exported: prometheus-client appends `_total` to counters itself, so a counter's
/// suffix is taken off here and the names in this file stay the ones users query.
fn family<L, M>(
    enc: &mut DescriptorEncoder,
    name: &'static str,
    help: &str,
    samples: impl IntoIterator<Item = (L, M)>,
) -> fmt::Result
where
    L: EncodeLabelSet,
    M: EncodeMetric + TypedMetric,
{
    let base = match M::TYPE {
        prometheus_client::metrics::MetricType::Counter => name
            .strip_suffix("_total")
            .expect("counter names end in _total"),
        _ => name,
    };
    let mut metric = enc.encode_descriptor(base, help, None, M::TYPE)?;
    for (labels, value) in samples {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// One family of a single unlabelled sample.
fn single<M: EncodeMetric + TypedMetric>(
    enc: &mut DescriptorEncoder,
    name: &'static str,
    help: &str,
    value: M,
) -> fmt::Result {
    family(enc, name, help, [(Labels::<0>::default(), value)])
}

/// A packets family and its bytes twin over the same label sets: (labels, packets, bytes).
fn packets_and_bytes<const N: usize>(
    enc: &mut DescriptorEncoder,
    (packets, packets_help): (&'static str, &str),
    (bytes, bytes_help): (&'static str, &str),
    samples: &[(Labels<N>, u64, u64)],
) -> fmt::Result {
    let series = |bytes: bool| {
        samples.iter().map(move |(labels, p, b)| {
            (
                labels.clone(),
                ConstCounter::new(if bytes { *b } else { *p }),
            )
        })
    };
    family(enc, packets, packets_help, series(false))?;
    family(enc, bytes, bytes_help, series(true))
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let s = &self.status;
        let enc = &mut enc;
        let product = || ("product", s.product.clone());
        family(
            enc,
            "portcullis_info",
            "The running policy: product, mode, loopback handling, agent version and policy digest (always 1).",
            [(
                [
                    product(),
                    ("mode", s.mode.as_str().to_owned()),
                    ("loopback", s.loopback.as_str().to_owned()),
                    ("version", env!("CARGO_PKG_VERSION").to_owned()),
                    ("policy", s.policy_digest.clone()),
                ],
                ConstGauge::new(1u64),
            )],
        )?;
        single(
            enc,
            "portcullis_policy_version",
            "Policy installs since the pins were created (start and reload).",
            ConstGauge::new(s.policy_version),
        )?;
        single(
            enc,
            "portcullis_reload_failures_total",
            "Reloads the agent rejected since it started (the running policy stayed).",
            ConstCounter::new(self.reload_failures),
        )?;
        single(
            enc,
            "portcullis_policy_loaded_timestamp_seconds",
            "Unix time of the last policy install.",
            ConstGauge::new(s.loaded_at),
        )?;
        single(
            enc,
            "portcullis_attached_links",
            "Pinned program links (4 per cgroup scope, plus XDP).",
            ConstGauge::new(s.attached_links),
        )?;

        let rules: Vec<_> = s
            .rules
            .iter()
            .map(|r| {
                let labels = [
                    product(),
                    ("rule", r.id.clone()),
                    ("direction", r.direction.clone()),
                    ("protocol", r.protocol.clone()),
                    ("mode", s.mode.as_str().to_owned()),
                ];
                (labels, r.packets, r.bytes)
            })
            .collect();
        packets_and_bytes(
            enc,
            (
                "portcullis_rule_packets_total",
                "Packets allowed by each rule.",
            ),
            (
                "portcullis_rule_bytes_total",
                "Bytes (IP header included) allowed by each rule.",
            ),
            &rules,
        )?;

        // The kernel counts denies by (verdict, direction, reason): it has no protocol
        // there. The protocol is in the denied-port table, exported below.
        let denies: Vec<_> = s
            .denies
            .iter()
            .map(|d| {
                let verdict = if d.audit { "would-deny" } else { "deny" };
                let labels = [
                    product(),
                    ("direction", d.direction.to_string()),
                    ("reason", d.reason.to_owned()),
                    ("verdict", verdict.to_owned()),
                ];
                (labels, d.packets, d.bytes)
            })
            .collect();
        packets_and_bytes(
            enc,
            (
                "portcullis_denied_packets_total",
                "Packets denied (verdict=deny, enforce mode) or that would have been (verdict=would-deny, audit mode), by direction and reason.",
            ),
            (
                "portcullis_denied_bytes_total",
                "Bytes denied or that would have been, by direction and reason.",
            ),
            &denies,
        )?;

        // `status` sorts the table by packets, so the first entries are the heaviest.
        let ports: Vec<_> = s
            .denied_ports
            .iter()
            .take(MAX_PORT_SERIES)
            .map(|d| {
                let labels = [
                    product(),
                    ("direction", d.direction.to_string()),
                    ("protocol", d.protocol.to_string()),
                    ("port", d.port.to_string()),
                ];
                (labels, d.packets, d.bytes)
            })
            .collect();
        packets_and_bytes(
            enc,
            (
                "portcullis_denied_port_packets_total",
                "Packets denied or would-be denied per (direction, protocol, port) from the kernel's bounded denied-port table (both verdicts; the busiest 256 entries; port is the local port inbound, the remote port outbound).",
            ),
            (
                "portcullis_denied_port_bytes_total",
                "Bytes denied or would-be denied per (direction, protocol, port), as portcullis_denied_port_packets_total.",
            ),
            &ports,
        )?;
        single(
            enc,
            "portcullis_denied_ports",
            "Entries in the kernel's denied-port table (at most 4096, least recently denied evicted).",
            ConstGauge::new(self.denied_ports),
        )?;

        family(
            enc,
            "portcullis_deny_events_total",
            "Deny events by outcome: sent to the agent, dropped by the kernel's rate limit (events_per_sec), or lost because the ring buffer was full.",
            [
                ("sent", s.events.sent),
                ("rate_limited", s.events.rate_limited),
                ("ring_full", s.events.ring_full),
            ]
            .map(|(outcome, n)| ([("outcome", outcome.to_owned())], ConstCounter::new(n))),
        )?;

        let passed = [("loopback", s.loopback_exempt), ("icmp", s.icmp_passed)]
            .map(|(class, t)| ([("class", class.to_owned())], t.packets, t.bytes));
        packets_and_bytes(
            enc,
            (
                "portcullis_passed_packets_total",
                "Packets let through before the policy: the loopback exemption (class=loopback) and ICMP errors, neighbour discovery and allowed echo (class=icmp).",
            ),
            (
                "portcullis_passed_bytes_total",
                "Bytes let through before the policy, as portcullis_passed_packets_total.",
            ),
            &passed,
        )?;
        single(
            enc,
            "portcullis_malformed_packets_total",
            "Packets whose headers could not be parsed (dropped in enforce mode).",
            ConstCounter::new(s.malformed.packets),
        )?;

        let dns = &s.names.counters;
        family(
            enc,
            "portcullis_dns_answers_total",
            "DNS answers from port 53 by what the kernel made of them: learned (a trusted resolver's answer taught at least one address of a listed name), untrusted (not from a trusted resolver: never learned from; counts packets), unsolicited (from a trusted resolver but answering no question this host has in flight: never learned from), unlisted (for a name no peer group lists), malformed (broken).",
            [
                ("learned", dns.answers_learned),
                ("untrusted", dns.untrusted),
                ("unsolicited", dns.unsolicited),
                ("unlisted", dns.unlisted),
                ("malformed", dns.malformed),
            ]
            .map(|(result, n)| ([("result", result.to_owned())], ConstCounter::new(n))),
        )?;
        single(
            enc,
            "portcullis_dns_learned_addresses",
            "Addresses learned from DNS answers with at least one listed name still valid.",
            ConstGauge::new(s.names.learned.len() as u64),
        )?;
        single(
            enc,
            "portcullis_dns_expired_total",
            "Learned addresses removed after their TTL plus dns_grace ran out.",
            ConstCounter::new(dns.expired),
        )?;
        single(
            enc,
            "portcullis_dns_evicted_total",
            "Learned addresses (or names of an address) pushed out by newer ones while still valid: the learned-address table or an address's name slots are full.",
            ConstCounter::new(dns.evicted),
        )?;
        single(
            enc,
            "portcullis_dns_over_limit_total",
            "New addresses not learned because a name (or wildcard) already held its limit of learned addresses; they are learned again once older ones expire.",
            ConstCounter::new(dns.over_limit),
        )?;

        let program = |p: &ProgramRuns| [("program", p.name.clone())];
        family(
            enc,
            "portcullis_program_runs_total",
            "Runs of each attached eBPF program (bpf_prog_info.run_cnt; counted only while kernel.bpf_stats_enabled=1).",
            self.programs
                .iter()
                .map(|p| (program(p), ConstCounter::new(p.runs))),
        )?;
        family(
            enc,
            "portcullis_program_run_seconds_total",
            "Time spent in each attached eBPF program (bpf_prog_info.run_time_ns; counted only while kernel.bpf_stats_enabled=1).",
            self.programs
                .iter()
                .map(|p| (program(p), ConstCounter::new(p.run_ns as f64 / 1e9))),
        )?;
        if let Some(on) = self.bpf_stats {
            single(
                enc,
                "portcullis_bpf_stats_enabled",
                "1 when kernel.bpf_stats_enabled is on, so the program run metrics count.",
                ConstGauge::new(u32::from(on)),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::{IpProtocol, LoopbackMode, Mode},
        observe::status::{DeniedPort, DenyStatus, EventStatus, RuleStatus, Traffic},
        policy::Direction,
    };

    fn scrape() -> Scrape {
        let traffic = |packets, bytes| Traffic { packets, bytes };
        let status = Status {
            product: "xeams".into(),
            mode: Mode::Audit,
            loopback: LoopbackMode::Exempt,
            scopes: vec![crate::model::ScopeTarget::Host],
            attached_links: 4,
            xdp: Default::default(),
            generation: 1,
            policy_version: 3,
            policy_digest: "0123456789abcdef".into(),
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
            allowed: traffic(12, 1530),
            denies: vec![DenyStatus {
                direction: Direction::Out,
                reason: "no-rule",
                audit: true,
                packets: 3,
                bytes: 180,
            }],
            denied: Traffic::default(),
            would_deny: traffic(3, 180),
            loopback_exempt: traffic(5, 500),
            icmp_passed: Traffic::default(),
            malformed: Traffic::default(),
            denied_ports: vec![DeniedPort {
                direction: Direction::Out,
                protocol: IpProtocol(6),
                port: 8081,
                packets: 3,
                bytes: 180,
            }],
            names: Default::default(),
            events: EventStatus {
                sent: 3,
                rate_limited: 1,
                ring_full: 0,
            },
        };
        Scrape {
            status,
            denied_ports: 1,
            programs: vec![ProgramRuns {
                name: "pc_ingress".into(),
                runs: 10,
                run_ns: 2_500_000_000,
            }],
            bpf_stats: Some(false),
            reload_failures: 2,
        }
    }

    #[test]
    fn exposition_has_help_type_and_the_numbers() {
        let text = scrape().render();
        for line in [
            "# HELP portcullis_rule_packets_total Packets allowed by each rule.",
            "# TYPE portcullis_rule_packets_total counter",
            "# TYPE portcullis_info gauge",
            "portcullis_info{product=\"xeams\",mode=\"audit\",loopback=\"exempt\",version=\"0.1.0\",policy=\"0123456789abcdef\"} 1",
            "portcullis_policy_version 3",
            "portcullis_policy_loaded_timestamp_seconds 1795000000",
            "portcullis_attached_links 4",
            "portcullis_reload_failures_total 2",
            "portcullis_rule_packets_total{product=\"xeams\",rule=\"smtp/in\",direction=\"in\",protocol=\"tcp\",mode=\"audit\"} 12",
            "portcullis_rule_bytes_total{product=\"xeams\",rule=\"smtp/in\",direction=\"in\",protocol=\"tcp\",mode=\"audit\"} 1530",
            "portcullis_denied_packets_total{product=\"xeams\",direction=\"out\",reason=\"no-rule\",verdict=\"would-deny\"} 3",
            "portcullis_denied_port_packets_total{product=\"xeams\",direction=\"out\",protocol=\"tcp\",port=\"8081\"} 3",
            "portcullis_deny_events_total{outcome=\"rate_limited\"} 1",
            "portcullis_passed_packets_total{class=\"loopback\"} 5",
            "portcullis_malformed_packets_total 0",
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
        // HELP texts are ours verbatim (no added period), and nothing but the 0.0.4 format.
        assert!(!text.contains(".."), "{text}");
        assert!(!text.contains("# EOF"), "OpenMetrics trailer in 0.0.4 text");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut s = scrape();
        s.status.rules[0].id = "a\"b\\c\nd".into();
        s.bpf_stats = None;
        let text = s.render();
        assert!(text.contains("rule=\"a\\\"b\\\\c\\nd\""), "{text}");
        assert!(
            !text.contains("portcullis_bpf_stats_enabled"),
            "unknown stats setting: no sample"
        );
    }

    #[test]
    fn dashboard_uses_only_exported_metrics() {
        let dashboard = include_str!("../../dashboards/portcullis.json");
        let _: serde_json::Value = serde_json::from_str(dashboard).expect("the dashboard is JSON");
        let mut s = scrape();
        s.bpf_stats = Some(true);
        let text = s.render();
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
