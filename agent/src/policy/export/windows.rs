//! The Windows Firewall export: a PowerShell script of `New-NetFirewallRule` calls, one
//! per policy rule and protocol (Windows takes one protocol per rule), all in one rule
//! group so that the script first removes what an earlier run of it created.
//!
//! How the policy maps: an inbound rule is `-Direction Inbound -LocalPort`, an outbound
//! one `-Direction Outbound -RemotePort`; a peer set is `-RemoteAddress` with its
//! networks; the display name and description carry the rule id, why, source and note.
//! Windows Firewall is stateful: replies of an allowed connection pass, as with the
//! agent. Enforce mode sets every profile's default inbound and outbound action to
//! Block, so that what no allow rule opens is dropped; audit mode leaves the default
//! actions alone (Windows Firewall has no count-only mode).
//!
//! Not expressible, said in the script: host names (`-RemoteAddress` takes addresses,
//! subnets, ranges and keywords, no names; FQDN "dynamic keywords" exist from Windows
//! Server 2022 / build 20348 on, resolved by Microsoft Defender, not by this script), a
//! rule limited to host names only is created disabled; per-rule counters; loopback
//! (Windows Firewall does not filter it: `loopback = "enforce"` is refused).

use std::fmt::Write as _;

use super::{Exported, NAMES_LIMIT, named_groups, networks, ordered, peers_note, port_list};
use crate::{
    config::PolicyError,
    policy::{Direction, LoopbackMode, Mode, Policy, Protocol},
};

/// The rule group of a product's rules: what the clean-up removes.
pub fn group(policy: &Policy) -> String {
    format!("portcullis {}", policy.product)
}

/// The `-Name` of the firewall rule of `id` for `protocol` (unique on the host).
pub fn rule_name(policy: &Policy, id: &str, protocol: Protocol) -> String {
    format!("portcullis/{}/{id}/{protocol}", policy.product)
}

/// A PowerShell single-quoted string (a quote inside is doubled).
fn ps(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A PowerShell array of single-quoted strings: `'25','465-466'` (ranges and IPv6
/// addresses are never left to PowerShell's parsing of bare words).
fn ps_list<T: ToString>(items: impl IntoIterator<Item = T>) -> String {
    let quoted: Vec<String> = items.into_iter().map(|i| ps(&i.to_string())).collect();
    quoted.join(",")
}

/// Writes `text` as `#` comment lines, wrapped near 88 columns.
fn comment(out: &mut String, text: &str) {
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + word.len() > 86 {
            let _ = writeln!(out, "# {line}");
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    let _ = writeln!(out, "# {line}");
}

/// Renders the script. Refuses (exit 3) `loopback = "enforce"`: Windows Firewall does
/// not filter loopback traffic, so the script could not enforce what the policy says.
pub fn render(policy: &Policy, origin: &str) -> Result<String, PolicyError> {
    if policy.loopback == LoopbackMode::Enforce {
        return Err(PolicyError::new(
            "loopback = \"enforce\" cannot be exported to Windows Firewall: it does not filter loopback traffic",
        )
        .hint("set loopback = \"exempt\" in the site config (the default), or use the agent or the nft export"));
    }
    let mut out = String::new();
    comment(
        &mut out,
        &format!(
            "portcullis export for Windows Firewall: product {}, mode {}, policy digest {}",
            policy.product,
            policy.mode,
            policy.digest()
        ),
    );
    comment(&mut out, &format!("from {origin}"));
    comment(
        &mut out,
        "Run it as Administrator (PowerShell 5.1 or 7, NetSecurity module). It first removes \
         every rule of its group, so running it again replaces what an earlier run created; \
         other rules on the host are left alone and still apply (an allow rule of any group \
         opens its port). See docs/export.md.",
    );
    comment(
        &mut out,
        "Not expressed: per-rule counters (Windows Firewall counts nothing per rule: turn on \
         its log with Set-NetFirewallProfile -LogAllowed/-LogBlocked); the agent's per-service \
         scope (these rules cover every program); loopback, which Windows Firewall never filters.",
    );
    for (name, names) in named_groups(policy) {
        comment(
            &mut out,
            &format!(
                "NOT EXPRESSED: peer group {name} names {names}. {NAMES_LIMIT} \
                 (Set-NetFirewallRule -Name ... -RemoteAddress ...). New-NetFirewallRule \
                 -RemoteAddress takes no host names; Windows Server 2022 (build 20348) and \
                 later have FQDN dynamic keywords (New-NetFirewallDynamicKeywordAddress \
                 -AutoResolve), resolved by Microsoft Defender: this script does not create them."
            ),
        );
    }
    let _ = writeln!(out, "#Requires -RunAsAdministrator");
    let _ = writeln!(out, "$ErrorActionPreference = 'Stop'");
    let _ = writeln!(out, "$Group = {}", ps(&group(policy)));
    let _ = writeln!(out, "\n# What an earlier run of this script created.");
    let _ = writeln!(
        out,
        "Remove-NetFirewallRule -Group $Group -ErrorAction SilentlyContinue"
    );
    for direction in [Direction::In, Direction::Out] {
        for e in ordered(policy, direction) {
            rule(&mut out, policy, &e);
        }
    }
    if policy.icmp_echo {
        let _ = writeln!(out, "\n# icmp_echo = true: echo requests pass both ways.");
        for (dir, way) in [("Inbound", "in"), ("Outbound", "out")] {
            for (proto, ty) in [("ICMPv4", 8), ("ICMPv6", 128)] {
                let _ = writeln!(
                    out,
                    "New-NetFirewallRule -Group $Group -Name {} -DisplayName {} -Direction {dir} \
                     -Protocol {proto} -IcmpType {ty} -Action Allow -Profile Any | Out-Null",
                    ps(&format!(
                        "portcullis/{}/icmp-echo/{proto}/{way}",
                        policy.product
                    )),
                    ps(&format!("portcullis icmp-echo ({proto} {way})")),
                );
            }
        }
    }
    let _ = writeln!(out);
    match policy.mode {
        Mode::Enforce => {
            comment(
                &mut out,
                "enforce: what no allow rule opens is blocked, both ways. The failsafe rule keeps \
                 the port the site names (failsafe_port, 22 by default; RDP is 3389).",
            );
            let _ = writeln!(
                out,
                "Set-NetFirewallProfile -Profile Domain,Private,Public -Enabled True \
                 -DefaultInboundAction Block -DefaultOutboundAction Block"
            );
        }
        Mode::Audit => comment(
            &mut out,
            "audit: Windows Firewall has no count-only mode. The rules are in place and the \
             default actions are left as they are; export with --mode enforce to block what no \
             rule opens.",
        ),
    }
    Ok(out)
}

/// One policy rule: a `#` comment block and one `New-NetFirewallRule` per protocol.
fn rule(out: &mut String, policy: &Policy, e: &Exported<'_>) {
    let r = e.rule;
    let _ = writeln!(out);
    comment(out, &format!("{}: {}", r.id, r.why));
    comment(out, &format!("source: {}", r.source));
    if let Some(note) = &r.note {
        comment(out, &format!("note: {note}"));
    }
    if let Some(note) = peers_note(e) {
        comment(out, &note);
    }
    let mut description = format!("{} (source: {})", r.why, r.source);
    if let Some(feature) = &r.feature {
        let _ = write!(description, " [feature {feature}]");
    }
    let (direction, port_flag) = match r.direction {
        Direction::In => ("Inbound", "LocalPort"),
        Direction::Out => ("Outbound", "RemotePort"),
    };
    // Peers: None = any; the set's networks; no network at all (host names only): the
    // rule is created disabled, since an empty -RemoteAddress would mean any peer.
    let mut enabled = true;
    let remote = match e.peers {
        None => "Any".to_string(),
        Some(set) => {
            let nets: Vec<&ipnet::IpNet> =
                networks(set, false).chain(networks(set, true)).collect();
            if nets.is_empty() {
                enabled = false;
                comment(
                    out,
                    &format!(
                        "DISABLED: peer group {} has only host names; add their addresses \
                         (Set-NetFirewallRule -Name ... -RemoteAddress ...), then enable it.",
                        set.name
                    ),
                );
                let _ = write!(
                    description,
                    " DISABLED: peer group {} has only host names",
                    set.name
                );
            }
            ps_list(nets)
        }
    };
    for &protocol in &r.protocols {
        let proto = match protocol {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        };
        let mut line = format!(
            "New-NetFirewallRule -Group $Group -Name {} -DisplayName {} -Description {} \
             -Direction {direction} -Protocol {proto} -{port_flag} {}",
            ps(&rule_name(policy, &r.id, protocol)),
            ps(&format!("portcullis {} ({protocol})", r.id)),
            ps(&description),
            ps_list(port_list(&r.ports, ",").split(',')),
        );
        if !remote.is_empty() {
            let _ = write!(line, " -RemoteAddress {remote}");
        }
        let _ = write!(
            line,
            " -Action Allow -Profile Any -Enabled {} | Out-Null",
            if enabled { "True" } else { "False" }
        );
        let _ = writeln!(out, "{line}");
    }
}
