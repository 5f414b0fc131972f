//! The nftables export: one table, `inet portcullis`, whose `input` and `output` chains
//! give a host's own traffic the verdicts the agent gives it.
//!
//! How each piece of the datapath is written:
//! - a rule: one nft rule per policy rule (two for a rule limited to a peer set: one per
//!   IP version), matching its protocols, its port set (`ports-<id>`: the local port
//!   inbound, the remote port outbound) and its peer set (`peers-<group>-v4`/`-v6`),
//!   counting into a counter named by the rule id, then accepting;
//! - replies: `ct state established,related accept`, where the agent keeps the verdict
//!   on the socket or in its flow tables; ICMP errors pass only as `related` to a flow
//!   this host has, as the agent's related-only check does;
//! - loopback: exempt (127.0.0.0/8 and ::1 pass first) or enforced like any peer;
//!   a loopback source on another interface is denied as spoofed, as the agent does;
//! - ICMP: echo requests follow `icmp_echo`; IPv6 neighbour and router discovery with
//!   hop limit 255 and multicast listener messages with hop limit 1 pass;
//! - the failsafe rule is a policy rule like the others;
//! - enforce: what no rule allows is counted (`portcullis-denied-in`/`-out`) and
//!   dropped; audit: counted (`portcullis-would-deny-in`/`-out`) and accepted.
//!
//! Counters count the packets the rules see: the first packet of each flow (its
//! replies and later packets are accepted by the `ct state` rule before). The agent's
//! counters count every packet of the flow.

use std::fmt::Write as _;

use super::{Exported, NAMES_LIMIT, named_groups, networks, ordered, peers_note, port_list};
use crate::{
    config::PolicyError,
    policy::{Direction, LoopbackMode, Mode, PeerSet, Policy, Protocol},
};

/// The table every export writes (and a new load replaces).
pub const TABLE: &str = "portcullis";

/// Counters of the export's own rules, beside the rules' counters. Rule ids are checked
/// not to take these names.
const OWN_COUNTERS: [&str; 5] = [
    "portcullis-denied-in",
    "portcullis-denied-out",
    "portcullis-would-deny-in",
    "portcullis-would-deny-out",
    "portcullis-spoofed",
];

/// nft's longest comment (bytes).
const COMMENT_MAX: usize = 128;

/// The nft object name of a rule's counter: its id, which nft takes as written unless
/// it starts with a digit (then `rule-` goes first).
pub fn counter_name(id: &str) -> String {
    if id.starts_with(|c: char| c.is_ascii_alphabetic()) {
        id.to_string()
    } else {
        format!("rule-{id}")
    }
}

/// The port set of a rule.
fn ports_set(id: &str) -> String {
    format!("ports-{id}")
}

/// The address set of a peer set, for one IP version.
pub fn peers_set(group: &str, v6: bool) -> String {
    format!("peers-{group}-{}", if v6 { "v6" } else { "v4" })
}

/// A string nft accepts between double quotes in a comment: no quotes, no line breaks,
/// at most [`COMMENT_MAX`] bytes.
fn quoted(text: &str) -> String {
    let mut clean: String = text
        .chars()
        .map(|c| match c {
            '"' => '\'',
            '\\' => '/',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect();
    if clean.len() > COMMENT_MAX - 3 {
        let mut cut = COMMENT_MAX - 6;
        while !clean.is_char_boundary(cut) {
            cut -= 1;
        }
        clean.truncate(cut);
        clean.push_str("...");
    }
    format!("\"{clean}\"")
}

/// Writes `text` as `#` comment lines at `indent`, wrapped near 88 columns.
fn comment(out: &mut String, indent: &str, text: &str) {
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && indent.len() + line.len() + word.len() > 86 {
            let _ = writeln!(out, "{indent}# {line}");
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    let _ = writeln!(out, "{indent}# {line}");
}

/// Renders the ruleset. Refuses (exit 3) a policy whose counter names would collide.
pub fn render(policy: &Policy, origin: &str) -> Result<String, PolicyError> {
    check_names(policy)?;
    let mut out = String::new();
    let _ = writeln!(out, "#!/usr/sbin/nft -f");
    comment(
        &mut out,
        "",
        &format!(
            "portcullis export for nftables: product {}, mode {}, loopback {}, policy digest {}",
            policy.product,
            policy.mode,
            policy.loopback,
            policy.digest()
        ),
    );
    comment(&mut out, "", &format!("from {origin}"));
    comment(
        &mut out,
        "",
        "Load with `nft -f FILE`: it replaces the table of an earlier load and touches no \
         other table. Read the counters with `nft list counters table inet portcullis`; \
         remove it all with `nft delete table inet portcullis`.",
    );
    comment(
        &mut out,
        "",
        "It covers every process of the host (the agent's scope can be one service) and \
         counts the first packet of each flow (the agent counts every packet). See docs/export.md.",
    );
    for (group, names) in named_groups(policy) {
        comment(
            &mut out,
            "",
            &format!("NOT EXPRESSED: peer group {group} names {names}. {NAMES_LIMIT}:"),
        );
        for v6 in [false, true] {
            let _ = writeln!(
                out,
                "#   nft add element inet {TABLE} {} {{ ADDRESS }}",
                peers_set(group, v6)
            );
        }
    }
    let _ = writeln!(out, "\ntable inet {TABLE}\ndelete table inet {TABLE}\n");
    let _ = writeln!(out, "table inet {TABLE} {{");
    declarations(&mut out, policy);
    for direction in [Direction::In, Direction::Out] {
        chain(&mut out, policy, direction);
    }
    let _ = writeln!(out, "}}");
    Ok(out)
}

/// Every counter name must be an nft name of its own: rule ids are unique, but the
/// `rule-` prefix or the export's own counters could meet one.
fn check_names(policy: &Policy) -> Result<(), PolicyError> {
    let mut seen: Vec<String> = OWN_COUNTERS.iter().map(ToString::to_string).collect();
    for rule in &policy.rules {
        let name = counter_name(&rule.id);
        if seen.contains(&name) {
            return Err(PolicyError::new(format!(
                "rule \"{}\" cannot be exported to nftables: its counter name \"{name}\" is taken",
                rule.id
            ))
            .hint("rename the rule in the site config or profile"));
        }
        seen.push(name);
    }
    Ok(())
}

/// Counters, port sets and peer sets.
fn declarations(out: &mut String, policy: &Policy) {
    let _ = writeln!(out, "\t# One counter per policy rule, named by its id.");
    for rule in &policy.rules {
        let _ = writeln!(out, "\tcounter {} {{ }}", counter_name(&rule.id));
    }
    let own: &[&str] = match policy.mode {
        Mode::Enforce => &OWN_COUNTERS[..2],
        Mode::Audit => &OWN_COUNTERS[2..4],
    };
    for name in own.iter().chain([&OWN_COUNTERS[4]]) {
        let _ = writeln!(out, "\tcounter {name} {{ }}");
    }
    let _ = writeln!(out, "\n\t# The ports of each rule.");
    for rule in &policy.rules {
        let _ = writeln!(
            out,
            "\tset {} {{ type inet_service; flags interval; elements = {{ {} }} }}",
            ports_set(&rule.id),
            port_list(&rule.ports, ", ")
        );
    }
    if !policy.peer_sets.is_empty() {
        let _ = writeln!(out, "\n\t# The networks of each peer group.");
    }
    for set in &policy.peer_sets {
        if !set.names.is_empty() {
            let names: Vec<String> = set.names.iter().map(ToString::to_string).collect();
            comment(
                out,
                "\t",
                &format!(
                    "{}: host names not expressed (add their addresses): {}",
                    set.name,
                    names.join(", ")
                ),
            );
        }
        for v6 in [false, true] {
            let nets: Vec<String> = networks(set, v6).map(ToString::to_string).collect();
            let elements = if nets.is_empty() {
                String::new()
            } else {
                format!(" elements = {{ {} }}", nets.join(", "))
            };
            let _ = writeln!(
                out,
                "\tset {} {{ type {}; flags interval; auto-merge;{elements} }}",
                peers_set(&set.name, v6),
                if v6 { "ipv6_addr" } else { "ipv4_addr" }
            );
        }
    }
    let _ = writeln!(out);
}

/// How a packet the agent denies is treated: counted, then dropped (enforce) or let
/// through (audit).
fn deny(mode: Mode, counter: &str) -> String {
    match mode {
        Mode::Enforce => format!("counter name \"{counter}\" drop"),
        Mode::Audit => format!("counter name \"{counter}\" accept"),
    }
}

/// The chain of one direction: `input` for flows peers open, `output` for flows this
/// host opens (and each chain also sees the other direction's replies).
fn chain(out: &mut String, policy: &Policy, direction: Direction) {
    let (name, hook, peer, own) = match direction {
        Direction::In => ("input", "input", "saddr", "in"),
        Direction::Out => ("output", "output", "daddr", "out"),
    };
    let policy_verdict = match policy.mode {
        Mode::Enforce => "drop",
        Mode::Audit => "accept",
    };
    let _ = writeln!(out, "\tchain {name} {{");
    let _ = writeln!(
        out,
        "\t\ttype filter hook {hook} priority filter; policy {policy_verdict};"
    );
    if direction == Direction::In {
        let _ = writeln!(
            out,
            "\t\t# Loopback sources only from the loopback device, no IPv4-mapped IPv6 source."
        );
        let spoofed = deny(policy.mode, "portcullis-spoofed");
        let _ = writeln!(out, "\t\tiif != \"lo\" ip saddr 127.0.0.0/8 {spoofed}");
        let _ = writeln!(out, "\t\tiif != \"lo\" ip6 saddr ::1 {spoofed}");
        let _ = writeln!(out, "\t\tip6 saddr ::ffff:0.0.0.0/96 {spoofed}");
    }
    let _ = writeln!(
        out,
        "\t\t# Replies, and ICMP errors about a flow this host has."
    );
    let _ = writeln!(out, "\t\tct state established,related accept");
    if policy.loopback == LoopbackMode::Exempt {
        let _ = writeln!(out, "\t\t# loopback = \"exempt\": loopback peers pass.");
        let _ = writeln!(out, "\t\tip {peer} 127.0.0.0/8 accept");
        let _ = writeln!(out, "\t\tip6 {peer} ::1 accept");
    }
    let _ = writeln!(
        out,
        "\t\t# IPv6 neighbour and router discovery (hop limit 255), multicast listeners (hop limit 1)."
    );
    let _ = writeln!(
        out,
        "\t\ticmpv6 type {{ nd-router-solicit, nd-router-advert, nd-neighbor-solicit, \
         nd-neighbor-advert, ind-neighbor-solicit, ind-neighbor-advert, 148, 149 }} \
         ip6 hoplimit 255 accept"
    );
    let _ = writeln!(
        out,
        "\t\ticmpv6 type {{ mld-listener-query, mld-listener-report, mld-listener-done, \
         mld2-listener-report, 151, 152, 153 }} ip6 hoplimit 1 ip6 saddr {{ fe80::/10, :: }} accept"
    );
    if policy.icmp_echo {
        let _ = writeln!(out, "\t\t# icmp_echo = true: echo requests pass.");
        let _ = writeln!(out, "\t\ticmp type echo-request accept");
        let _ = writeln!(out, "\t\ticmpv6 type echo-request accept");
    }
    for e in ordered(policy, direction) {
        rule(out, &e, peer);
    }
    let (counter, what) = match policy.mode {
        Mode::Enforce => (
            format!("portcullis-denied-{own}"),
            "denied: counted, dropped",
        ),
        Mode::Audit => (
            format!("portcullis-would-deny-{own}"),
            "audit: what enforcing would drop, counted, not dropped",
        ),
    };
    let _ = writeln!(out, "\t\t# No rule allows it: {what}.");
    let _ = writeln!(out, "\t\t{}", deny(policy.mode, &counter));
    let _ = writeln!(out, "\t}}");
}

/// One policy rule: its `#` comment lines (why, source, note, feature, peers) and its
/// nft rule, or two (one per IP version) when it is limited to a peer set.
fn rule(out: &mut String, e: &Exported<'_>, peer: &str) {
    let r = e.rule;
    let _ = writeln!(out);
    comment(out, "\t\t", &format!("{}: {}", r.id, r.why));
    comment(out, "\t\t", &format!("source: {}", r.source));
    if let Some(feature) = &r.feature {
        comment(out, "\t\t", &format!("feature: {feature}"));
    }
    if let Some(note) = &r.note {
        comment(out, "\t\t", &format!("note: {note}"));
    }
    let l4 = match r.protocols.as_slice() {
        [one] => one.to_string(),
        _ => {
            let names: Vec<String> = r.protocols.iter().map(Protocol::to_string).collect();
            format!("{{ {} }}", names.join(", "))
        }
    };
    let head = format!("meta l4proto {l4} th dport @{}", ports_set(&r.id));
    let tail = format!(
        "counter name \"{}\" accept comment {}",
        counter_name(&r.id),
        quoted(&format!("{}: {}", r.id, r.why))
    );
    if let Some(note) = peers_note(e) {
        comment(out, "\t\t", &note);
    }
    match e.peers {
        None => {
            let _ = writeln!(out, "\t\t{head} {tail}");
        }
        Some(set) => peers_rules(out, set, &head, &tail, peer),
    }
}

/// A rule limited to a peer set: one nft rule per IP version, one counter.
fn peers_rules(out: &mut String, set: &PeerSet, head: &str, tail: &str, peer: &str) {
    for (family, v6) in [("ip", false), ("ip6", true)] {
        let _ = writeln!(
            out,
            "\t\t{head} {family} {peer} @{} {tail}",
            peers_set(&set.name, v6)
        );
    }
}
