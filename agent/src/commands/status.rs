//! `portcullis status`: the running policy and its counters, as a table or as JSON.
//!
//! The JSON document ([`Status`]) is a contract for scripts; README.md documents it.

use std::{
    collections::HashMap,
    io::Write as _,
    process::ExitCode,
    time::{Duration, Instant},
};

use portcullis_common::{
    policy::{DIR_IN, DIR_OUT},
    stats::{self, Counter, reason},
};
use serde::Serialize;

use crate::{
    datapath::{
        counters,
        loader::{PathArgs, pinned_links},
        state::State,
    },
    policy::Direction,
};

/// Arguments of `portcullis status`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  portcullis status\n  portcullis status --watch\n  portcullis status --prometheus > /var/lib/node_exporter/portcullis.prom\n  portcullis status --json | jq '.rules[] | select(.packets > 0)'"
)]
pub struct Args {
    /// Print one JSON object (schema in README.md) instead of tables.
    #[arg(long, conflicts_with = "watch")]
    pub json: bool,
    /// Print the Prometheus text exposition the metrics endpoint serves (e.g. for
    /// node_exporter's textfile collector) instead of tables.
    #[arg(long, conflicts_with_all = ["watch", "json"])]
    pub prometheus: bool,
    /// Redraw the tables in place every --interval seconds, like top, with a rate and a
    /// last-hit column per rule (derived from counter changes seen while watching).
    /// Ctrl-C quits.
    #[arg(long)]
    pub watch: bool,
    /// Seconds between redraws with --watch.
    #[arg(long, default_value_t = 1.0, value_name = "SECS", requires = "watch", value_parser = parse_interval)]
    pub interval: f64,
    #[command(flatten)]
    pub paths: PathArgs,
}

fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.1..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "interval \"{s}\" is not a number of seconds between 0.1 and 3600"
        )),
    }
}

/// Packets and bytes.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Traffic {
    /// Packets (wire packets: GSO buffers count their segments).
    pub packets: u64,
    /// Bytes (IP header and payload).
    pub bytes: u64,
}

impl From<Counter> for Traffic {
    fn from(c: Counter) -> Self {
        Self {
            packets: c.packets,
            bytes: c.bytes,
        }
    }
}

/// One rule and what it allowed.
#[derive(Debug, Serialize)]
pub struct RuleStatus {
    /// Stable rule id.
    pub id: String,
    /// in | out.
    pub direction: String,
    /// tcp | udp | tcp,udp.
    pub protocol: String,
    /// Ports as written.
    pub ports: String,
    /// Allowed packets.
    pub packets: u64,
    /// Allowed bytes.
    pub bytes: u64,
}

/// Denies (or would-denies) for one direction and reason.
#[derive(Debug, Serialize)]
pub struct DenyStatus {
    /// in | out.
    pub direction: Direction,
    /// no-rule | peer | state | protocol | icmp | malformed.
    pub reason: &'static str,
    /// false: dropped (enforce mode); true: would have been dropped (audit mode).
    pub audit: bool,
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// One entry of the denied-ports table.
#[derive(Debug, Serialize)]
pub struct DeniedPort {
    /// in | out.
    pub direction: Direction,
    /// tcp | udp | icmp | icmpv6 | the protocol number.
    pub protocol: String,
    /// Local port (in) or remote port (out).
    pub port: u16,
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// Deny-event delivery.
#[derive(Debug, Serialize)]
pub struct EventStatus {
    /// Events written to the ring buffer.
    pub sent: u64,
    /// Events the in-kernel rate limit suppressed.
    pub rate_limited: u64,
    /// Events lost because the ring buffer was full.
    pub ring_full: u64,
}

/// An interface the XDP program is attached to.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct XdpInterface {
    /// Interface name.
    pub interface: String,
    /// native (in the driver) | generic (on an skb: drivers without native XDP).
    pub mode: crate::datapath::xdp::XdpMode,
}

/// The XDP layer: where it is attached and what it counted. Its counters are its own:
/// a packet XDP passes and a cgroup program then judges is counted once in each layer.
#[derive(Debug, Default, Serialize)]
pub struct XdpStatus {
    /// Interfaces with the XDP program (empty when XDP is not in use).
    pub interfaces: Vec<XdpInterface>,
    /// Allowed per rule (rules with traffic only), in policy order.
    pub rules: Vec<XdpRule>,
    /// Sum over `rules`.
    pub allowed: Traffic,
    /// Non-zero deny counters.
    pub denies: Vec<DenyStatus>,
    /// Sum of drops.
    pub denied: Traffic,
    /// Sum of would-drops (audit mode).
    pub would_deny: Traffic,
    /// ICMP errors, neighbour discovery and allowed echo.
    pub icmp_passed: Traffic,
    /// Non-IP frames (ARP, LLDP, ...), which always pass.
    pub non_ip_passed: Traffic,
    /// Frames whose headers could not be parsed.
    pub malformed: Traffic,
    /// Denied (direction, protocol, port), most packets first.
    pub denied_ports: Vec<DeniedPort>,
}

/// A rule's traffic at the XDP layer.
#[derive(Debug, Serialize)]
pub struct XdpRule {
    /// Stable rule id.
    pub id: String,
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// The whole `status --json` document.
#[derive(Debug, Serialize)]
pub struct Status {
    /// Profile slug.
    pub product: String,
    /// audit | enforce.
    pub mode: String,
    /// exempt | enforce.
    pub loopback: String,
    /// Scopes the programs are attached to.
    pub scopes: Vec<String>,
    /// Pinned links (4 per scope while attached).
    pub attached_links: usize,
    /// Live policy generation (0 or 1).
    pub generation: u32,
    /// Policy installs since start.
    pub policy_version: u64,
    /// Unix time of the last install.
    pub loaded_at: u64,
    /// Agent pid.
    pub pid: u32,
    /// Allowed traffic per rule, in policy order.
    pub rules: Vec<RuleStatus>,
    /// Sum over `rules`.
    pub allowed: Traffic,
    /// Non-zero deny counters.
    pub denies: Vec<DenyStatus>,
    /// Sum of denies (enforce mode).
    pub denied: Traffic,
    /// Sum of would-denies (audit mode).
    pub would_deny: Traffic,
    /// Loopback traffic let through by the exemption.
    pub loopback_exempt: Traffic,
    /// ICMP errors, neighbour discovery and allowed echo.
    pub icmp_passed: Traffic,
    /// Packets whose headers could not be parsed.
    pub malformed: Traffic,
    /// Denied (direction, protocol, port), most packets first.
    pub denied_ports: Vec<DeniedPort>,
    /// Deny-event delivery.
    pub events: EventStatus,
    /// The XDP layer.
    pub xdp: XdpStatus,
}

/// Protocol number to name.
pub fn protocol_name(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        n => n.to_string(),
    }
}

/// Reads state and counters into a [`Status`].
pub fn collect(paths: &PathArgs) -> anyhow::Result<Status> {
    let state = State::read(&paths.state_file())?;
    let snap = counters::read(paths)?;
    Ok(build(state, &snap, &pinned_links(paths)))
}

/// A [`Status`] from a state file and a counter snapshot already read (the metrics
/// endpoint reads each once and needs both).
pub fn build(state: State, snap: &counters::Snapshot, links: &[std::path::PathBuf]) -> Status {
    let attached_links = links.len();
    let paths_links = links;
    let rules: Vec<RuleStatus> = state
        .rules
        .iter()
        .map(|r| {
            let c = snap.rules.get(&r.index).copied().unwrap_or_default();
            RuleStatus {
                id: r.id.clone(),
                direction: r.direction.clone(),
                protocol: r.protocol.clone(),
                ports: r.ports.clone(),
                packets: c.packets,
                bytes: c.bytes,
            }
        })
        .collect();
    let allowed = rules.iter().fold(Traffic::default(), |t, r| Traffic {
        packets: t.packets + r.packets,
        bytes: t.bytes + r.bytes,
    });
    let (denies, denied, would_deny) = deny_summary(|i| snap.stat(i));
    let denied_ports = denied_ports(&snap.denied);
    let xdp = xdp_status(&state, snap, paths_links);
    Status {
        product: state.product,
        mode: state.mode.to_string(),
        loopback: match state.loopback {
            crate::policy::LoopbackMode::Exempt => "exempt".into(),
            crate::policy::LoopbackMode::Enforce => "enforce".into(),
        },
        scopes: state.scopes,
        attached_links,
        generation: state.generation,
        policy_version: state.policy_version,
        loaded_at: state.loaded_at,
        pid: state.pid,
        rules,
        allowed,
        denies,
        denied,
        would_deny,
        loopback_exempt: snap.stat(stats::PASS_LOOPBACK).into(),
        icmp_passed: snap.stat(stats::PASS_ICMP).into(),
        malformed: snap.stat(stats::MALFORMED).into(),
        denied_ports,
        events: EventStatus {
            sent: snap.stat(stats::EVENTS_SENT).packets,
            rate_limited: snap.stat(stats::EVENTS_RATE_LIMITED).packets,
            ring_full: snap.stat(stats::EVENTS_RING_FULL).packets,
        },
        xdp,
    }
}

/// Denies and would-denies of one layer, by direction and reason, with their sums.
fn deny_summary(stat: impl Fn(u32) -> Counter) -> (Vec<DenyStatus>, Traffic, Traffic) {
    let mut denies = Vec::new();
    let (mut denied, mut would_deny) = (Traffic::default(), Traffic::default());
    for audit in [false, true] {
        for dir in [DIR_IN, DIR_OUT] {
            for (r, name) in reason::NAMES.iter().enumerate() {
                let c = stat(stats::deny_index(audit, dir, r as u32));
                if c.packets == 0 {
                    continue;
                }
                let total = if audit { &mut would_deny } else { &mut denied };
                total.packets += c.packets;
                total.bytes += c.bytes;
                denies.push(DenyStatus {
                    direction: Direction::from_code(dir),
                    reason: name,
                    audit,
                    packets: c.packets,
                    bytes: c.bytes,
                });
            }
        }
    }
    (denies, denied, would_deny)
}

/// A layer's denied-port table, most packets first.
fn denied_ports(
    table: &std::collections::BTreeMap<portcullis_common::stats::DeniedKey, Counter>,
) -> Vec<DeniedPort> {
    let mut v: Vec<DeniedPort> = table
        .iter()
        .map(|(k, c)| DeniedPort {
            direction: Direction::from_code(k.direction),
            protocol: protocol_name(k.protocol),
            port: k.port,
            packets: c.packets,
            bytes: c.bytes,
        })
        .collect();
    v.sort_by(|a, b| b.packets.cmp(&a.packets).then(a.port.cmp(&b.port)));
    v
}

/// The XDP layer's status: interfaces from the link pins, counters from the XDP layer.
fn xdp_status(state: &State, snap: &counters::Snapshot, links: &[std::path::PathBuf]) -> XdpStatus {
    let interfaces = links
        .iter()
        .filter_map(|p| crate::datapath::xdp::describe_pin(p))
        .map(|(interface, mode)| XdpInterface { interface, mode })
        .collect();
    let rules: Vec<XdpRule> = state
        .rules
        .iter()
        .filter_map(|r| {
            let c = snap.xdp_rules.get(&r.index)?;
            Some(XdpRule {
                id: r.id.clone(),
                packets: c.packets,
                bytes: c.bytes,
            })
        })
        .collect();
    let allowed = rules.iter().fold(Traffic::default(), |t, r| Traffic {
        packets: t.packets + r.packets,
        bytes: t.bytes + r.bytes,
    });
    let (denies, denied, would_deny) = deny_summary(|i| snap.xdp_stat(i));
    XdpStatus {
        interfaces,
        rules,
        allowed,
        denies,
        denied,
        would_deny,
        icmp_passed: snap.xdp_stat(stats::PASS_ICMP).into(),
        non_ip_passed: snap.xdp_stat(stats::PASS_NON_IP).into(),
        malformed: snap.xdp_stat(stats::MALFORMED).into(),
        denied_ports: denied_ports(&snap.xdp_denied),
    }
}

/// Prints a [`Status`] as tables.
pub fn print_table(s: &Status) {
    print!("{}", table(s, None));
}

/// What `--watch` learns by comparing successive reads. The kernel keeps no time per
/// rule, so "last hit" is the last refresh at which a rule's packet counter moved, and
/// is only known for hits seen while watching.
#[derive(Debug, Default)]
pub struct Watch {
    started: Option<Instant>,
    previous: HashMap<String, (u64, Instant)>,
    rate: HashMap<String, f64>,
    last_hit: HashMap<String, Instant>,
}

impl Watch {
    /// Takes in a new read made at `now`.
    pub fn update(&mut self, s: &Status, now: Instant) {
        self.started.get_or_insert(now);
        for r in &s.rules {
            if let Some(&(packets, at)) = self.previous.get(&r.id) {
                let secs = now.duration_since(at).as_secs_f64();
                let delta = r.packets.saturating_sub(packets);
                if secs > 0.0 {
                    self.rate.insert(r.id.clone(), delta as f64 / secs);
                }
                if delta > 0 {
                    self.last_hit.insert(r.id.clone(), now);
                }
            }
            self.previous.insert(r.id.clone(), (r.packets, now));
        }
    }

    fn columns(&self, id: &str, now: Instant) -> (String, String) {
        let rate = self
            .rate
            .get(id)
            .map_or_else(|| "-".to_owned(), |r| format!("{r:.1}"));
        let last = self.last_hit.get(id).map_or_else(
            || "-".to_owned(),
            |t| format!("{}s ago", now.duration_since(*t).as_secs()),
        );
        (rate, last)
    }
}

/// A [`Status`] as text tables; with `watch`, the rule table has a rate and a last-hit
/// column.
pub fn table(s: &Status, watch: Option<&Watch>) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let now = Instant::now();
    let _ = writeln!(
        o,
        "product {}  mode {}  loopback {}  scope {}  links {}  policy v{} (generation {}) loaded {}  pid {}",
        s.product,
        s.mode,
        s.loopback,
        s.scopes.join(","),
        s.attached_links,
        s.policy_version,
        s.generation,
        crate::observe::events::rfc3339(s.loaded_at),
        s.pid,
    );
    let _ = writeln!(o);
    let _ = write!(
        o,
        "{:<32} {:<4} {:<8} {:<16} {:>10} {:>12}",
        "RULE", "DIR", "PROTO", "PORTS", "PACKETS", "BYTES"
    );
    let _ = writeln!(
        o,
        "{}",
        if watch.is_some() {
            format!(" {:>9} {:>10}", "PKTS/S", "LAST HIT")
        } else {
            String::new()
        }
    );
    for r in &s.rules {
        let _ = write!(
            o,
            "{:<32} {:<4} {:<8} {:<16} {:>10} {:>12}",
            r.id, r.direction, r.protocol, r.ports, r.packets, r.bytes
        );
        let extra = watch
            .map(|w| w.columns(&r.id, now))
            .map(|(rate, last)| format!(" {rate:>9} {last:>10}"));
        let _ = writeln!(o, "{}", extra.unwrap_or_default());
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "allowed {} pkts  denied {} pkts  would-deny {} pkts  loopback-exempt {} pkts  icmp {} pkts  malformed {} pkts",
        s.allowed.packets,
        s.denied.packets,
        s.would_deny.packets,
        s.loopback_exempt.packets,
        s.icmp_passed.packets,
        s.malformed.packets
    );
    if !s.denies.is_empty() {
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "{:<4} {:<10} {:<10} {:>10} {:>12}",
            "DIR", "REASON", "ACTION", "PACKETS", "BYTES"
        );
        for d in &s.denies {
            let action = if d.audit { "would-drop" } else { "dropped" };
            let _ = writeln!(
                o,
                "{:<4} {:<10} {:<10} {:>10} {:>12}",
                d.direction, d.reason, action, d.packets, d.bytes
            );
        }
    }
    if !s.denied_ports.is_empty() {
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "{:<4} {:<8} {:>6} {:>10} {:>12}",
            "DIR", "PROTO", "PORT", "PACKETS", "BYTES"
        );
        for d in s.denied_ports.iter().take(20) {
            let _ = writeln!(
                o,
                "{:<4} {:<8} {:>6} {:>10} {:>12}",
                d.direction, d.protocol, d.port, d.packets, d.bytes
            );
        }
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "events: {} sent, {} rate-limited, {} lost (ring full)",
        s.events.sent, s.events.rate_limited, s.events.ring_full
    );
    o
}

/// `--watch`: redraws the tables in place every `interval` until Ctrl-C (the default
/// SIGINT action ends the process; nothing needs restoring since the screen is only
/// cleared, never switched to an alternate buffer).
fn watch(args: &Args) -> anyhow::Result<ExitCode> {
    let interval = Duration::from_secs_f64(args.interval);
    let mut w = Watch::default();
    loop {
        let frame = match collect(&args.paths) {
            Ok(s) => {
                w.update(&s, Instant::now());
                table(&s, Some(&w))
            }
            // The agent may be restarting: keep watching and say why the numbers are gone.
            Err(e) => format!("{e:#}\n"),
        };
        let mut out = std::io::stdout().lock();
        // Home, clear screen, then the frame: one write, so the terminal never shows half.
        write!(
            out,
            "\x1b[H\x1b[2J{frame}\n(every {:.1}s, Ctrl-C to quit)\n",
            args.interval
        )?;
        out.flush()?;
        drop(out);
        std::thread::sleep(interval);
    }
}

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.watch {
        return watch(&args);
    }
    if args.prometheus {
        print!("{}", crate::observe::metrics::gather(&args.paths)?);
        return Ok(ExitCode::SUCCESS);
    }
    let s = collect(&args.paths)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print_table(&s);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(packets: u64) -> Status {
        Status {
            product: "lab".into(),
            mode: "audit".into(),
            loopback: "exempt".into(),
            scopes: vec!["host".into()],
            attached_links: 4,
            xdp: XdpStatus::default(),
            generation: 1,
            policy_version: 1,
            loaded_at: 0,
            pid: 1,
            rules: vec![RuleStatus {
                id: "smtp/in".into(),
                direction: "in".into(),
                protocol: "tcp".into(),
                ports: "25".into(),
                packets,
                bytes: packets * 60,
            }],
            allowed: Traffic::default(),
            denies: vec![],
            denied: Traffic::default(),
            would_deny: Traffic::default(),
            loopback_exempt: Traffic::default(),
            icmp_passed: Traffic::default(),
            malformed: Traffic::default(),
            denied_ports: vec![],
            events: EventStatus {
                sent: 0,
                rate_limited: 0,
                ring_full: 0,
            },
        }
    }

    #[test]
    fn watch_derives_rate_and_last_hit_from_counter_changes() {
        let t0 = Instant::now();
        let mut w = Watch::default();
        w.update(&status(10), t0);
        assert_eq!(
            w.columns("smtp/in", t0),
            ("-".into(), "-".into()),
            "nothing known after one read"
        );
        w.update(&status(30), t0 + Duration::from_secs(2));
        assert_eq!(
            w.columns("smtp/in", t0 + Duration::from_secs(2)),
            ("10.0".into(), "0s ago".into())
        );
        w.update(&status(30), t0 + Duration::from_secs(4));
        assert_eq!(
            w.columns("smtp/in", t0 + Duration::from_secs(5)),
            ("0.0".into(), "3s ago".into())
        );
        let text = table(&status(30), Some(&w));
        assert!(
            text.contains("PKTS/S") && text.contains("LAST HIT"),
            "{text}"
        );
        assert!(!table(&status(30), None).contains("LAST HIT"));
    }

    #[test]
    fn json_has_the_documented_fields() {
        let v = serde_json::to_value(status(1)).unwrap();
        for key in [
            "product",
            "mode",
            "loopback",
            "scopes",
            "attached_links",
            "generation",
            "policy_version",
            "loaded_at",
            "pid",
            "rules",
            "allowed",
            "denies",
            "denied",
            "would_deny",
            "loopback_exempt",
            "icmp_passed",
            "malformed",
            "denied_ports",
            "events",
        ] {
            assert!(v.get(key).is_some(), "status --json lacks {key:?}");
        }
    }
}
