//! The `base` set: the rules that keep the host itself working under host scope,
//! read from the host's own configuration rather than written by anyone.
//!
//! - `ntp`: out udp/123 to the time servers chrony, ntpd or systemd-timesyncd are
//!   configured with (by name where they are names: their addresses are learned from
//!   DNS answers, as for any peer group).
//! - `mirrors`: out tcp/80, 443 (and any port a source names) to the package mirrors of
//!   the apt sources (one-line and deb822) and the dnf/yum repositories.
//! - `resolvers`: out udp+tcp/53 to the `nameserver`s of /etc/resolv.conf.
//! - `dhcp`: in udp/68 and out udp/67, where a DHCP client runs.
//! - `metrics`: in tcp to the agent's own metrics listener (the site's `[metrics]`).
//!
//! [`HostBase::read`] is the only I/O, and it takes the root directory to read under,
//! so tests read a fake /etc from a scratch directory. Each found server keeps the file
//! and line it came from, which becomes the rule's `source` (`profile show`, `explain`).
//! A site turns the set off with `base = false`, or one part with `[base] ntp = false`
//! ([`BaseSwitches`]). It applies only when the site's scope is the whole host: a
//! cgroup scope leaves the host's own traffic alone.

use std::{collections::BTreeSet, fmt, net::SocketAddr, path::Path};

use serde::{Deserialize, Deserializer};

use crate::{
    config::peers::{Cidr, Peer},
    policy::{Direction, Protocol, Rule, RuleScope},
};

/// The parts of the base set a site keeps: every one unless switched off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BaseSwitches {
    /// NTP to the configured time servers.
    pub ntp: bool,
    /// HTTP(S) to the package mirrors of the apt and dnf/yum sources.
    pub mirrors: bool,
    /// DNS to the resolvers of /etc/resolv.conf.
    pub resolvers: bool,
    /// The DHCP client's exchanges, where one runs.
    pub dhcp: bool,
    /// Inbound to the agent's own metrics listener.
    pub metrics: bool,
}

impl Default for BaseSwitches {
    fn default() -> Self {
        BaseSwitches::all(true)
    }
}

impl BaseSwitches {
    /// The top-level keys of `[base]` (to spot one misplaced under that table).
    pub const KEYS: [&str; 5] = ["ntp", "mirrors", "resolvers", "dhcp", "metrics"];

    fn all(on: bool) -> Self {
        BaseSwitches {
            ntp: on,
            mirrors: on,
            resolvers: on,
            dhcp: on,
            metrics: on,
        }
    }
}

/// `base = false` (or `true`), or a `[base]` table of switches.
pub fn switches<'de, D: Deserializer<'de>>(d: D) -> Result<BaseSwitches, D::Error> {
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = BaseSwitches;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("true, false, or a table such as [base] ntp = false")
        }
        fn visit_bool<E: serde::de::Error>(self, on: bool) -> Result<BaseSwitches, E> {
            Ok(BaseSwitches::all(on))
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<BaseSwitches, A::Error> {
            BaseSwitches::deserialize(serde::de::value::MapAccessDeserializer::new(map))
        }
    }
    d.deserialize_any(Visitor)
}

/// Where a server was found: a file (as the host names it, under `/`) and a line.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Origin {
    /// The file, e.g. `/etc/chrony/chrony.conf`, or what was seen (`process dhclient`).
    pub file: String,
    /// Its line, 1-based (0: not a line of a file).
    pub line: usize,
}

/// A server the host's configuration names, with where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// Its address or name.
    pub peer: Peer,
    /// A port the source names besides the usual one (a mirror's `http://host:8080/`).
    pub port: Option<u16>,
    /// Where it was found.
    pub origin: Origin,
}

/// What the host's configuration says about its own traffic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostBase {
    /// Time servers.
    pub ntp: Vec<Found>,
    /// Package mirrors.
    pub mirrors: Vec<Found>,
    /// DNS resolvers.
    pub resolvers: Vec<Found>,
    /// The running DHCP client, if any.
    pub dhcp: Option<Origin>,
}

/// A base rule and the members of the peer group it is limited to.
#[derive(Clone, Debug)]
pub struct BaseRule {
    /// The rule; its `peers` names the group (None: any peer).
    pub rule: Rule,
    /// The group's members.
    pub members: Vec<Peer>,
}

/// The ids of the base rules, which site rules may not reuse.
pub const RULE_IDS: [&str; 6] = [
    "base-ntp",
    "base-mirrors",
    "base-dns",
    "base-dhcp/in",
    "base-dhcp/out",
    "base-metrics",
];

use files::{
    apt_lines, chrony, deb822, dhcp_client, files_in, origin_of, push, read, repo_lines,
    server_lines, timesyncd_lines,
};

impl HostBase {
    /// Reads the host's configuration under `root` (`/` on a real host). Missing files
    /// are normal (a host runs one time daemon, one package manager); unreadable ones
    /// are logged and skipped.
    pub fn read(root: &Path) -> HostBase {
        let mut host = HostBase::default();
        for conf in ["etc/chrony/chrony.conf", "etc/chrony.conf"] {
            chrony(root, &root.join(conf), &mut host.ntp, 0);
        }
        for conf in ["etc/ntp.conf", "etc/ntpsec/ntp.conf"] {
            if let Some(text) = read(&root.join(conf)) {
                server_lines(&text, &origin_of(root, &root.join(conf)), &mut host.ntp);
            }
        }
        let timesyncd = root.join("etc/systemd/timesyncd.conf");
        for file in std::iter::once(timesyncd).chain(files_in(
            &root.join("etc/systemd/timesyncd.conf.d"),
            ".conf",
        )) {
            if let Some(text) = read(&file) {
                timesyncd_lines(&text, &origin_of(root, &file), &mut host.ntp);
            }
        }
        let apt = root.join("etc/apt/sources.list");
        for file in
            std::iter::once(apt).chain(files_in(&root.join("etc/apt/sources.list.d"), ".list"))
        {
            if let Some(text) = read(&file) {
                apt_lines(&text, &origin_of(root, &file), &mut host.mirrors);
            }
        }
        for file in files_in(&root.join("etc/apt/sources.list.d"), ".sources") {
            if let Some(text) = read(&file) {
                deb822(&text, &origin_of(root, &file), &mut host.mirrors);
            }
        }
        for file in files_in(&root.join("etc/yum.repos.d"), ".repo") {
            if let Some(text) = read(&file) {
                repo_lines(&text, &origin_of(root, &file), &mut host.mirrors);
            }
        }
        let resolv = root.join("etc/resolv.conf");
        if let Some(text) = read(&resolv) {
            let origin = origin_of(root, &resolv);
            for (n, line) in text.lines().enumerate() {
                for ip in crate::config::resolvers::nameservers(line) {
                    push(
                        &mut host.resolvers,
                        Peer::Net(Cidr(ip.into())),
                        None,
                        &origin,
                        n + 1,
                    );
                }
            }
        }
        host.dhcp = dhcp_client(root);
        host
    }

    /// The base rules `switches` keep, with `metrics` the agent's own listener.
    pub fn rules(&self, switches: &BaseSwitches, metrics: Option<SocketAddr>) -> Vec<BaseRule> {
        let mut out = Vec::new();
        let mut group = |on: bool, id: &str, group: &str, found: &[Found], spec: Spec| {
            if !on || found.is_empty() {
                return;
            }
            let mut ports: BTreeSet<u16> = spec.ports.iter().copied().collect();
            ports.extend(found.iter().filter_map(|f| f.port));
            let mut members: Vec<Peer> = Vec::new();
            for f in found {
                if !members.contains(&f.peer) {
                    members.push(f.peer.clone());
                }
            }
            out.push(BaseRule {
                rule: Rule {
                    id: id.into(),
                    direction: Direction::Out,
                    protocols: spec.protocols.to_vec(),
                    ports: crate::policy::compiler::merge_ranges(
                        ports.into_iter().map(|p| (p, p)).collect(),
                    ),
                    feature: None,
                    scope: RuleScope::Any,
                    peers: Some(group.into()),
                    why: spec.why.into(),
                    source: format!(
                        "base: {} from {} (switch off with [base] {} = false)",
                        spec.what,
                        sources(found.iter().map(|f| &f.origin)),
                        spec.switch
                    ),
                    note: None,
                },
                members,
            });
        };
        group(switches.ntp, "base-ntp", "base-ntp-servers", &self.ntp, NTP);
        group(
            switches.mirrors,
            "base-mirrors",
            "base-mirrors",
            &self.mirrors,
            MIRRORS,
        );
        group(
            switches.resolvers,
            "base-dns",
            "base-resolvers",
            &self.resolvers,
            DNS,
        );
        if let (true, Some(origin)) = (switches.dhcp, &self.dhcp) {
            for (direction, port, id) in [
                (Direction::In, 68, "base-dhcp/in"),
                (Direction::Out, 67, "base-dhcp/out"),
            ] {
                out.push(BaseRule {
                    rule: any_peer_rule(
                        id,
                        direction,
                        port,
                        Protocol::Udp,
                        "the host leases its address over DHCP (the server is not known in advance)",
                        format!(
                            "base: dhcp client from {} (switch off with [base] dhcp = false)",
                            sources([origin])
                        ),
                    ),
                    members: Vec::new(),
                });
            }
        }
        if let (true, Some(listen)) = (switches.metrics, metrics) {
            out.push(BaseRule {
                rule: any_peer_rule(
                    "base-metrics",
                    Direction::In,
                    listen.port(),
                    Protocol::Tcp,
                    "the agent's own metrics endpoint, for the Prometheus that scrapes it",
                    format!(
                        "base: metrics listener from the site config's [metrics] listen = \"{listen}\" (switch off with [base] metrics = false)"
                    ),
                ),
                members: Vec::new(),
            });
        }
        out
    }
}

/// The fixed part of a base rule limited to a group.
struct Spec {
    protocols: &'static [Protocol],
    ports: &'static [u16],
    what: &'static str,
    switch: &'static str,
    why: &'static str,
}

const NTP: Spec = Spec {
    protocols: &[Protocol::Udp],
    ports: &[123],
    what: "ntp",
    switch: "ntp",
    why: "keep the host's clock synchronised with its configured time servers",
};
const MIRRORS: Spec = Spec {
    protocols: &[Protocol::Tcp],
    ports: &[80, 443],
    what: "package mirrors",
    switch: "mirrors",
    why: "let the host fetch package indexes and updates from its configured mirrors",
};
const DNS: Spec = Spec {
    protocols: &[Protocol::Udp, Protocol::Tcp],
    ports: &[53],
    what: "resolvers",
    switch: "resolvers",
    why: "let the host resolve names through its configured resolvers",
};

fn any_peer_rule(
    id: &str,
    direction: Direction,
    port: u16,
    protocol: Protocol,
    why: &str,
    source: String,
) -> Rule {
    Rule {
        id: id.into(),
        direction,
        protocols: vec![protocol],
        ports: vec![(port, port)],
        feature: None,
        scope: RuleScope::Any,
        peers: None,
        why: why.into(),
        source,
        note: None,
    }
}

/// "/etc/a line 3, 4 and /etc/b line 1": each file once, its lines in order.
fn sources<'a>(origins: impl IntoIterator<Item = &'a Origin>) -> String {
    let mut files: Vec<(&str, Vec<usize>)> = Vec::new();
    for o in origins {
        match files.iter_mut().find(|(f, _)| *f == o.file) {
            Some((_, lines)) if o.line > 0 && !lines.contains(&o.line) => lines.push(o.line),
            Some(_) => {}
            None => files.push((&o.file, if o.line > 0 { vec![o.line] } else { vec![] })),
        }
    }
    let parts: Vec<String> = files
        .iter()
        .map(|(file, lines)| match lines.as_slice() {
            [] => (*file).to_string(),
            [one] => format!("{file} line {one}"),
            many => {
                let list: Vec<String> = many.iter().map(ToString::to_string).collect();
                format!("{file} lines {}", list.join(", "))
            }
        })
        .collect();
    parts.join(" and ")
}

mod files;
#[cfg(test)]
mod tests;
