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

use std::{
    collections::BTreeSet,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Deserializer};

use crate::{
    config::peers::{Cidr, HostName, Peer},
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

/// Process names of DHCP clients: seeing one running means the host leases its address.
const DHCP_CLIENTS: [&str; 5] = ["dhclient", "dhcpcd", "udhcpc", "NetworkManager", "dhcpcd5"];

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

fn read(path: &Path) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            log::warn!(
                "base set: reading {}: {e}; its servers are not kept open",
                path.display()
            );
            None
        }
    }
}

/// The files of `dir` ending in `suffix`, sorted (as the tools read them).
fn files_in(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.to_string_lossy().ends_with(suffix))
        .collect();
    files.sort();
    files
}

/// The file as the host names it: `path` below `root`, from `/`.
fn origin_of(root: &Path, path: &Path) -> Origin {
    let rel = path.strip_prefix(root).unwrap_or(path);
    Origin {
        file: Path::new("/").join(rel).display().to_string(),
        line: 0,
    }
}

/// Adds `text` (a name or an address) found at `origin`'s file, `line`. Anything else
/// (a dnf `$variable` in a host, a typo) is skipped with a warning: it names no server.
fn push_text(out: &mut Vec<Found>, text: &str, port: Option<u16>, origin: &Origin, line: usize) {
    let text = text.trim_start_matches('[').trim_end_matches(']');
    let peer = match text.parse::<std::net::IpAddr>() {
        Ok(ip) => Peer::Net(Cidr(ip.into())),
        Err(_) => match HostName::parse(text) {
            Ok(name) => Peer::Name(name),
            Err(e) => {
                log::warn!(
                    "base set: {} line {line}: {}; skipped",
                    origin.file,
                    e.message
                );
                return;
            }
        },
    };
    push(out, peer, port, origin, line);
}

fn push(out: &mut Vec<Found>, peer: Peer, port: Option<u16>, origin: &Origin, line: usize) {
    if out.iter().any(|f| f.peer == peer && f.port == port) {
        return;
    }
    out.push(Found {
        peer,
        port,
        origin: Origin {
            file: origin.file.clone(),
            line,
        },
    });
}

/// Lines without their comment (`#`, and chrony's `!`, `;`, `%`).
fn words(line: &str) -> Vec<&str> {
    line.split(['#', ';', '!', '%'])
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect()
}

/// `server`, `pool` and `peer` lines (chrony.conf(5), ntp.conf(5)); ntpd's options
/// such as `-4` may precede the host, and its reference clocks (127.127.t.u) are not
/// servers on the network.
fn server_lines(text: &str, origin: &Origin, out: &mut Vec<Found>) {
    for (n, line) in text.lines().enumerate() {
        let words = words(line);
        let Some((&"server" | &"pool" | &"peer", rest)) = words.split_first() else {
            continue;
        };
        if let Some(host) = rest.iter().find(|w| !w.starts_with('-'))
            && !host.starts_with("127.127.")
        {
            push_text(out, host, None, origin, n + 1);
        }
    }
}

/// chrony.conf and the directories it names (`confdir`: `*.conf`, `sourcedir`:
/// `*.sources`), one level down as chrony reads them.
fn chrony(root: &Path, file: &Path, out: &mut Vec<Found>, depth: u8) {
    let Some(text) = read(file) else { return };
    server_lines(&text, &origin_of(root, file), out);
    if depth > 0 {
        return;
    }
    for line in text.lines() {
        let words = words(line);
        let (suffix, dirs) = match words.split_first() {
            Some((&"confdir", dirs)) => (".conf", dirs),
            Some((&"sourcedir", dirs)) => (".sources", dirs),
            _ => continue,
        };
        for dir in dirs {
            let dir = root.join(dir.trim_start_matches('/'));
            for f in files_in(&dir, suffix) {
                chrony(root, &f, out, depth + 1);
            }
        }
    }
}

/// systemd-timesyncd's `NTP=` and `FallbackNTP=` (timesyncd.conf(5)).
fn timesyncd_lines(text: &str, origin: &Origin, out: &mut Vec<Found>) {
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if matches!(key.trim(), "NTP" | "FallbackNTP") && !line.starts_with(['#', ';']) {
            for host in value.split_whitespace() {
                push_text(out, host, None, origin, n + 1);
            }
        }
    }
}

/// The host and explicit port of a network URI (`http://host:port/...`); None for
/// local ones (`file:`, `cdrom:`) and for a mirror list file.
fn uri_host(uri: &str) -> Option<(&str, Option<u16>)> {
    let (scheme, rest) = uri.split_once("://")?;
    if !matches!(
        scheme,
        "http" | "https" | "ftp" | "mirror+http" | "mirror+https" | "tor+http" | "tor+https"
    ) {
        return None;
    }
    let authority = rest.split('/').next()?;
    let authority = authority.rsplit('@').next()?;
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        return Some((host, after.strip_prefix(':').and_then(|p| p.parse().ok())));
    }
    match authority.split_once(':') {
        Some((host, port)) => Some((host, port.parse().ok())),
        None => Some((authority, None)),
    }
}

fn push_uri(out: &mut Vec<Found>, uri: &str, origin: &Origin, line: usize) {
    if let Some((host, port)) = uri_host(uri)
        && !host.is_empty()
    {
        push_text(out, host, port, origin, line);
    }
}

/// One-line apt sources (sources.list(5)): `deb [options] uri suite [component...]`.
fn apt_lines(text: &str, origin: &Origin, out: &mut Vec<Found>) {
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line
            .strip_prefix("deb-src")
            .or_else(|| line.strip_prefix("deb"))
        else {
            continue;
        };
        let rest = rest.trim_start();
        let rest = match rest.strip_prefix('[') {
            Some(opts) => opts.split_once(']').map_or("", |(_, r)| r),
            None => rest,
        };
        if let Some(uri) = rest.split_whitespace().next() {
            push_uri(out, uri, origin, n + 1);
        }
    }
}

/// deb822 apt sources: stanzas separated by blank lines; `URIs:` (values may continue
/// on indented lines); a stanza with `Enabled: no` is skipped.
fn deb822(text: &str, origin: &Origin, out: &mut Vec<Found>) {
    let lines: Vec<&str> = text.lines().collect();
    let mut start = 0;
    while start < lines.len() {
        let end = lines[start..]
            .iter()
            .position(|l| l.trim().is_empty())
            .map_or(lines.len(), |p| start + p);
        let stanza = &lines[start..end];
        let disabled = stanza.iter().any(|l| {
            l.split_once(':').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("enabled") && v.trim().eq_ignore_ascii_case("no")
            })
        });
        if !disabled {
            let mut in_uris = false;
            for (i, line) in stanza.iter().enumerate() {
                if line.starts_with('#') {
                    continue;
                }
                let value = if line.starts_with([' ', '\t']) {
                    in_uris.then_some(*line)
                } else {
                    let (key, value) = line.split_once(':').unwrap_or((line, ""));
                    in_uris = key.trim().eq_ignore_ascii_case("uris");
                    in_uris.then_some(value)
                };
                for uri in value.unwrap_or("").split_whitespace() {
                    push_uri(out, uri, origin, start + i + 1);
                }
            }
        }
        start = end + 1;
    }
}

/// dnf/yum `.repo` files (dnf.conf(5)): per section `baseurl` (several URLs, separated
/// by commas or spaces, or on continuation lines), `mirrorlist` and `metalink`; a
/// section with `enabled=0` is skipped.
fn repo_lines(text: &str, origin: &Origin, out: &mut Vec<Found>) {
    let mut section: Vec<(usize, String)> = Vec::new();
    let mut enabled = true;
    let mut flush = |section: &mut Vec<(usize, String)>, enabled: bool| {
        if enabled {
            for (line, uri) in section.drain(..) {
                push_uri(out, &uri, origin, line);
            }
        }
        section.clear();
    };
    let mut in_url = false;
    for (n, line) in text.lines().enumerate() {
        if line.trim_start().starts_with(['#', ';']) {
            continue;
        }
        if line.trim_start().starts_with('[') {
            flush(&mut section, enabled);
            enabled = true;
            in_url = false;
            continue;
        }
        let value = if line.starts_with([' ', '\t']) {
            in_url.then_some(line)
        } else {
            let (key, value) = line.split_once('=').unwrap_or((line, ""));
            let key = key.trim();
            if key == "enabled" {
                enabled = !matches!(value.trim(), "0" | "false" | "no");
            }
            in_url = matches!(key, "baseurl" | "mirrorlist" | "metalink");
            in_url.then_some(value)
        };
        for uri in value
            .unwrap_or("")
            .split([',', ' ', '\t'])
            .filter(|u| !u.is_empty())
        {
            section.push((n + 1, uri.to_string()));
        }
    }
    flush(&mut section, enabled);
}

/// A running DHCP client: a process of that name (`/proc/<pid>/comm`), or a lease
/// systemd-networkd holds.
fn dhcp_client(root: &Path) -> Option<Origin> {
    let mut pids: Vec<(u32, PathBuf)> = std::fs::read_dir(root.join("proc"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path())))
        .collect();
    pids.sort();
    for (pid, dir) in pids {
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        let comm = comm.trim();
        if DHCP_CLIENTS.contains(&comm) {
            return Some(Origin {
                file: format!("process {comm} (pid {pid})"),
                line: 0,
            });
        }
    }
    let leases = root.join("run/systemd/netif/leases");
    files_in(&leases, "")
        .first()
        .map(|lease| origin_of(root, lease))
        .map(|o| Origin {
            file: format!("systemd-networkd's lease {}", o.file),
            line: 0,
        })
}

#[cfg(test)]
mod tests;
