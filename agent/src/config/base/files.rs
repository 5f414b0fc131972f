//! Reading the host's own files for the base set: the time daemons' servers, the apt
//! and dnf/yum sources' mirrors, and whether a DHCP client runs. Every path is under
//! the root the caller gives; every server keeps the file and line it came from.

use std::path::{Path, PathBuf};

use super::{Found, Origin};
use crate::config::peers::{Cidr, HostName, Peer};

/// Process names of DHCP clients: seeing one running means the host leases its address.
const DHCP_CLIENTS: [&str; 5] = ["dhclient", "dhcpcd", "udhcpc", "NetworkManager", "dhcpcd5"];

pub(super) fn read(path: &Path) -> Option<String> {
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
pub(super) fn files_in(dir: &Path, suffix: &str) -> Vec<PathBuf> {
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
pub(super) fn origin_of(root: &Path, path: &Path) -> Origin {
    let rel = path.strip_prefix(root).unwrap_or(path);
    Origin {
        file: Path::new("/").join(rel).display().to_string(),
        line: 0,
    }
}

/// Adds `text` (a name or an address) found at `origin`'s file, `line`. Anything else
/// (a dnf `$variable` in a host, a typo) is skipped with a warning: it names no server.
pub(super) fn push_text(
    out: &mut Vec<Found>,
    text: &str,
    port: Option<u16>,
    origin: &Origin,
    line: usize,
) {
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

pub(super) fn push(
    out: &mut Vec<Found>,
    peer: Peer,
    port: Option<u16>,
    origin: &Origin,
    line: usize,
) {
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
pub(super) fn words(line: &str) -> Vec<&str> {
    line.split(['#', ';', '!', '%'])
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect()
}

/// `server`, `pool` and `peer` lines (chrony.conf(5), ntp.conf(5)); ntpd's options
/// such as `-4` may precede the host, and its reference clocks (127.127.t.u) are not
/// servers on the network.
pub(super) fn server_lines(text: &str, origin: &Origin, out: &mut Vec<Found>) {
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
pub(super) fn chrony(root: &Path, file: &Path, out: &mut Vec<Found>, depth: u8) {
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
pub(super) fn timesyncd_lines(text: &str, origin: &Origin, out: &mut Vec<Found>) {
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
pub(super) fn uri_host(uri: &str) -> Option<(&str, Option<u16>)> {
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

pub(super) fn push_uri(out: &mut Vec<Found>, uri: &str, origin: &Origin, line: usize) {
    if let Some((host, port)) = uri_host(uri)
        && !host.is_empty()
    {
        push_text(out, host, port, origin, line);
    }
}

/// One-line apt sources (sources.list(5)): `deb [options] uri suite [component...]`.
pub(super) fn apt_lines(text: &str, origin: &Origin, out: &mut Vec<Found>) {
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
pub(super) fn deb822(text: &str, origin: &Origin, out: &mut Vec<Found>) {
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
pub(super) fn repo_lines(text: &str, origin: &Origin, out: &mut Vec<Found>) {
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
pub(super) fn dhcp_client(root: &Path) -> Option<Origin> {
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
