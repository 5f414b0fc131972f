//! `portcullis status`: the running policy and its counters, as a table or as JSON.
//!
//! The JSON document ([`Status`]) is a contract for scripts; README.md documents it.

use std::process::ExitCode;

use portcullis_common::{
    policy::{DIR_IN, DIR_OUT},
    stats::{self, Counter, reason},
};
use serde::Serialize;

use crate::{
    counters,
    loader::{PathArgs, pinned_links},
    policy::Direction,
    state::State,
};

/// Arguments of `portcullis status`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  portcullis status\n  portcullis status --json | jq '.rules[] | select(.packets > 0)'")]
pub struct Args {
    /// Print one JSON object (schema in README.md) instead of tables.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub paths: PathArgs,
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
        Self { packets: c.packets, bytes: c.bytes }
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
    let allowed = rules.iter().fold(Traffic::default(), |t, r| Traffic { packets: t.packets + r.packets, bytes: t.bytes + r.bytes });
    let mut denies = Vec::new();
    let (mut denied, mut would_deny) = (Traffic::default(), Traffic::default());
    for audit in [false, true] {
        for dir in [DIR_IN, DIR_OUT] {
            for (r, name) in reason::NAMES.iter().enumerate() {
                let c = snap.stat(stats::deny_index(audit, dir, r as u32));
                if c.packets == 0 {
                    continue;
                }
                let total = if audit { &mut would_deny } else { &mut denied };
                total.packets += c.packets;
                total.bytes += c.bytes;
                denies.push(DenyStatus { direction: Direction::from_code(dir), reason: name, audit, packets: c.packets, bytes: c.bytes });
            }
        }
    }
    let mut denied_ports: Vec<DeniedPort> = snap
        .denied
        .iter()
        .map(|(k, c)| DeniedPort {
            direction: Direction::from_code(k.direction),
            protocol: protocol_name(k.protocol),
            port: k.port,
            packets: c.packets,
            bytes: c.bytes,
        })
        .collect();
    denied_ports.sort_by(|a, b| b.packets.cmp(&a.packets).then(a.port.cmp(&b.port)));
    Ok(Status {
        product: state.product,
        mode: state.mode.to_string(),
        loopback: match state.loopback {
            crate::policy::LoopbackMode::Exempt => "exempt".into(),
            crate::policy::LoopbackMode::Enforce => "enforce".into(),
        },
        scopes: state.scopes,
        attached_links: pinned_links(paths).len(),
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
    })
}

/// Prints a [`Status`] as tables.
pub fn print_table(s: &Status) {
    println!(
        "product {}  mode {}  loopback {}  scope {}  links {}  policy v{} (generation {})",
        s.product,
        s.mode,
        s.loopback,
        s.scopes.join(","),
        s.attached_links,
        s.policy_version,
        s.generation
    );
    println!();
    println!("{:<32} {:<4} {:<8} {:<16} {:>10} {:>12}", "RULE", "DIR", "PROTO", "PORTS", "PACKETS", "BYTES");
    for r in &s.rules {
        println!("{:<32} {:<4} {:<8} {:<16} {:>10} {:>12}", r.id, r.direction, r.protocol, r.ports, r.packets, r.bytes);
    }
    println!();
    println!("allowed {} pkts  denied {} pkts  would-deny {} pkts  loopback-exempt {} pkts  icmp {} pkts  malformed {} pkts",
        s.allowed.packets, s.denied.packets, s.would_deny.packets, s.loopback_exempt.packets, s.icmp_passed.packets, s.malformed.packets);
    if !s.denies.is_empty() {
        println!();
        println!("{:<4} {:<10} {:<10} {:>10} {:>12}", "DIR", "REASON", "ACTION", "PACKETS", "BYTES");
        for d in &s.denies {
            println!("{:<4} {:<10} {:<10} {:>10} {:>12}", d.direction, d.reason, if d.audit { "would-drop" } else { "dropped" }, d.packets, d.bytes);
        }
    }
    if !s.denied_ports.is_empty() {
        println!();
        println!("{:<4} {:<8} {:>6} {:>10} {:>12}", "DIR", "PROTO", "PORT", "PACKETS", "BYTES");
        for d in s.denied_ports.iter().take(20) {
            println!("{:<4} {:<8} {:>6} {:>10} {:>12}", d.direction, d.protocol, d.port, d.packets, d.bytes);
        }
    }
    println!();
    println!("events: {} sent, {} rate-limited, {} lost (ring full)", s.events.sent, s.events.rate_limited, s.events.ring_full);
}

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let s = collect(&args.paths)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print_table(&s);
    }
    Ok(ExitCode::SUCCESS)
}
