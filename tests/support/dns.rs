//! A real resolver for the names tests (issue 15): dnsmasq in the lab's peer namespace
//! B, answering only from a zone the test writes (no upstream, no /etc/hosts), and the
//! addresses its answers point at, made B's own so that a listener there accepts
//! connections to every one of them.

use std::fmt::Write as _;

use crate::{Lab, must};

/// What a resolver answers: A/AAAA and CNAME records, all with one TTL.
#[derive(Default)]
pub struct Zone {
    /// The TTL of every answer, in seconds (dnsmasq `--local-ttl`; dnsmasq's own default
    /// is 0).
    pub ttl: u32,
    /// (name, address) records, written as a hosts file (`--addn-hosts`): many distinct
    /// names with distinct addresses, which `--address=/domain/` cannot give.
    pub hosts: Vec<(String, String)>,
    /// (alias, target) CNAME records (`--cname`); dnsmasq answers a CNAME only when the
    /// target is a name it knows, so the target must be in `hosts`.
    pub cnames: Vec<(String, String)>,
}

impl Zone {
    /// A zone of `hosts` with TTL `ttl` and no CNAMEs.
    pub fn new(ttl: u32, hosts: &[(&str, &str)]) -> Zone {
        Zone {
            ttl,
            hosts: hosts
                .iter()
                .map(|(n, a)| ((*n).to_owned(), (*a).to_owned()))
                .collect(),
            cnames: Vec::new(),
        }
    }

    /// Adds a CNAME record `alias` -> `target`.
    pub fn cname(mut self, alias: &str, target: &str) -> Zone {
        self.cnames.push((alias.to_owned(), target.to_owned()));
        self
    }
}

impl Lab {
    /// B's veth interface name (inside namespace B).
    pub fn veth_b(&self) -> String {
        format!("{}y", self.tag)
    }

    /// Adds an address (CIDR) to B's veth: a second peer, e.g. a resolver nobody trusts.
    pub fn add_b_address(&self, cidr: &str) {
        must(&format!(
            "ip -n {} addr add {cidr} dev {}",
            self.ns_b,
            self.veth_b()
        ));
    }

    /// Makes every address of `prefix` (IPv4 or IPv6) local on B (a `local` route on
    /// B's loopback, "AnyIP"), and routes the prefix from A through B's veth address: one
    /// listener on B's wildcard address then answers on thousands of addresses without
    /// thousands of `ip addr add`.
    pub fn local_prefix_on_b(&self, prefix: &str) {
        let via = if prefix.contains(':') {
            &self.b6
        } else {
            &self.b4
        };
        must(&format!(
            "ip -n {} route add local {prefix} dev lo && ip -n {} route add {prefix} via {via}",
            self.ns_b, self.ns_a
        ));
    }

    /// A local stub resolver on A, as systemd-resolved is on a gateway: dnsmasq on A's
    /// loopback address `listen` (e.g. 127.0.0.53, added to A's `lo`), outside the
    /// enforced cgroup, forwarding every query to `upstream` port 53, with no data of its
    /// own; ready when this returns. Stopped with the lab.
    pub fn dns_stub_on_a(&mut self, listen: &str, upstream: &str) {
        must(&format!("ip -n {} addr add {listen}/8 dev lo", self.ns_a));
        self.spawn_a_unenforced(&format!(
            "exec dnsmasq --keep-in-foreground --conf-file=/dev/null --port=53 \
             --listen-address={listen} --bind-interfaces --no-resolv --no-hosts \
             --server={upstream} --pid-file={}/dnsmasq-stub.pid",
            self.dir.display()
        ));
        let ns = self.ns_a.clone();
        self.wait_tcp(&ns, listen, 53);
    }

    /// Starts dnsmasq on B, listening on `listen` port 53 (UDP and TCP) only and
    /// answering from `zone` only; ready (its TCP port accepts) when this returns. Several
    /// may run side by side on different addresses. Stopped with the lab.
    pub fn dnsmasq(&mut self, listen: &str, zone: &Zone) {
        let hosts = zone
            .hosts
            .iter()
            .fold(String::new(), |mut text, (name, addr)| {
                let _ = writeln!(text, "{addr} {name}");
                text
            });
        let hosts_file = self.write(&format!("hosts-{listen}"), &hosts);
        let mut cmd = format!(
            "exec dnsmasq --keep-in-foreground --conf-file=/dev/null --port=53 \
             --listen-address={listen} --bind-interfaces --no-resolv --no-hosts \
             --addn-hosts={} --local-ttl={ttl} --pid-file={}/dnsmasq-{listen}.pid",
            hosts_file.display(),
            self.dir.display(),
            ttl = zone.ttl,
        );
        for (alias, target) in &zone.cnames {
            let _ = write!(cmd, " --cname={alias},{target},{}", zone.ttl);
        }
        self.spawn_b(&cmd);
        let ns = self.ns_b.clone();
        self.wait_tcp(&ns, listen, 53);
    }
}
