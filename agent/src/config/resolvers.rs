//! The trusted resolvers: the only sources the datapath learns host name addresses
//! from. The site's `dns-servers` peer group when it defines one (networks only, see
//! `site`), else every `nameserver` of /etc/resolv.conf, read at start and at each
//! reload (a local stub such as systemd-resolved's 127.0.0.53 included: it is the
//! resolver the applications ask).
//!
//! Trusting a resolver means trusting its answers for every listed name: an answer
//! from any other address is never learned from, whatever port it comes from.

use std::{fmt, net::IpAddr, path::Path};

use ipnet::IpNet;
use serde::Serialize;

use crate::config::{
    peers,
    site::{DNS_SERVERS, Site},
};

/// Where the list of resolvers comes from.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// Where a trusted resolver was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum Source {
    /// The site's `dns-servers` peer group.
    #[serde(rename = "dns-servers")]
    DnsServers,
    /// A `nameserver` line of /etc/resolv.conf.
    #[serde(rename = "resolv.conf")]
    ResolvConf,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::DnsServers => DNS_SERVERS,
            Source::ResolvConf => "resolv.conf",
        })
    }
}

/// One trusted resolver (or network of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Resolver {
    /// Its address or network.
    pub network: IpNet,
    /// Where it was found.
    pub source: Source,
}

/// The trusted resolvers for a site (None: a built-in product, no site config): its
/// `dns-servers` group, else /etc/resolv.conf's. A missing or unreadable resolv.conf
/// gives none (and a warning): nothing is learned, listed names admit no address.
pub fn trusted(site: Option<&Site>) -> Vec<Resolver> {
    if let Some(list) = site.and_then(|s| s.peers.get(DNS_SERVERS)) {
        return peers::networks(list.get_ref())
            .map(|network| Resolver {
                network,
                source: Source::DnsServers,
            })
            .collect();
    }
    match std::fs::read_to_string(Path::new(RESOLV_CONF)) {
        Ok(text) => nameservers(&text)
            .into_iter()
            .map(|ip| Resolver {
                network: IpNet::from(ip),
                source: Source::ResolvConf,
            })
            .collect(),
        Err(e) => {
            log::warn!(
                "reading {RESOLV_CONF}: {e}; no trusted resolver, so no host name address is learned (define the peer group \"{DNS_SERVERS}\" in the site config)"
            );
            Vec::new()
        }
    }
}

/// The addresses of the `nameserver` lines of a resolv.conf text (resolv.conf(5)):
/// comments start with '#' or ';'; an IPv6 address may carry a `%zone`, dropped here
/// (the datapath matches addresses, not interfaces); anything unparsable is skipped,
/// as the C library does.
pub fn nameservers(text: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("");
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(addr) = words.next() else { continue };
        let addr = addr.split('%').next().unwrap_or(addr);
        if let Ok(ip) = addr.parse::<IpAddr>()
            && !out.contains(&ip)
        {
            out.push(ip);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameserver_lines() {
        let text = "# generated\nsearch example.com\nnameserver 127.0.0.53\n\
                    nameserver  192.0.2.1 # office\n;nameserver 10.0.0.1\n\
                    nameserver fe80::1%eth0\nnameserver bogus\nnameserver 127.0.0.53\noptions edns0\n";
        let got: Vec<String> = nameservers(text).iter().map(ToString::to_string).collect();
        assert_eq!(got, ["127.0.0.53", "192.0.2.1", "fe80::1"]);
    }

    #[test]
    fn dns_servers_group_wins() {
        let site = Site::parse(
            "product = \"xeams\"\n[peers]\ndns-servers = [\"198.18.0.2\", \"2001:db8::/64\"]\n",
            Path::new("site.toml"),
        )
        .unwrap();
        let got = trusted(Some(&site));
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|r| r.source == Source::DnsServers));
        assert_eq!(got[0].network.to_string(), "198.18.0.2/32");
    }
}
