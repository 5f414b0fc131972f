//! A real resolver for the names tests: dnsmasq in the lab's peer namespace
//! B, answering only from a zone the test writes (no upstream, no /etc/hosts), and the
//! addresses its answers point at, made B's own so that a listener there accepts
//! connections to every one of them. For hostile answers, a fake resolver on B that
//! sends bytes the test writes with [`Wire`].

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

    /// Adds a second peer address on B's veth, in B's /24 with the last octet `last` (A
    /// is .1, B .2), and returns it: a resolver nobody trusts, a fake one.
    pub fn add_b_peer(&self, last: u8) -> String {
        let (net, _) = self.b4.rsplit_once('.').expect("B's IPv4 address");
        let addr = format!("{net}.{last}");
        self.add_b_address(&format!("{addr}/24"));
        addr
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

    /// Starts a hostile resolver on B (`net.py fake-resolver`), listening on `listen`
    /// port 53 (UDP and TCP): a query for one of the names of `replies` is answered with
    /// its bytes, the ID set to the query's, over TCP delivered as its [`Delivery`]
    /// says; ready when this returns. Stopped with the lab.
    pub fn fake_resolver(&mut self, listen: &str, replies: &[(String, Wire, Delivery)]) {
        let text = replies
            .iter()
            .fold(String::new(), |mut text, (name, w, how)| {
                let how = match how {
                    Delivery::Whole => String::new(),
                    Delivery::Split(at) => format!(" split:{at}"),
                    Delivery::Ahead(m) => format!(" ahead {}", m.hex()),
                    Delivery::Again(m) => format!(" again {}", m.hex()),
                };
                let _ = writeln!(text, "{name} {}{how}", w.hex());
                text
            });
        let file = self.write(&format!("replies-{listen}"), &text);
        self.spawn_b(&format!(
            "exec {} fake-resolver {listen} {}",
            crate::net_py(),
            file.display()
        ));
        let ns = self.ns_b.clone();
        self.wait_tcp(&ns, listen, 53);
    }
}

/// How the fake resolver delivers an answer over TCP (UDP: always whole).
#[derive(Clone, Debug, Default)]
pub enum Delivery {
    /// The length prefix and the message in one segment.
    #[default]
    Whole,
    /// In two segments, the second from this byte of the message on; the 2 bytes after
    /// the next 2 (the ID of a message with its length prefix hidden there) are set to
    /// the query's ID.
    Split(u16),
    /// First this message (length prefix, the query's ID) in a raw segment 4,096 bytes
    /// ahead of the answer's sequence number (out of order), then the answer.
    Ahead(Wire),
    /// The answer, then this message (length prefix, the query's ID) in a raw segment
    /// at the answer's own sequence number (a retransmission that says something else).
    Again(Wire),
}

/// A DNS message written byte by byte, for a resolver that answers with crafted (often
/// hostile) bytes: compression pointers anywhere, record lengths that lie, counts that
/// disagree with the records. Hand-written on purpose: a DNS library writes only
/// well-formed messages. Offsets are those of the message (the ID at 0).
#[derive(Clone, Debug)]
pub struct Wire(pub Vec<u8>);

/// Flags of a successful answer: QR, RD, RA, RCODE 0.
pub const ANSWER: u16 = 0x8180;
/// The TC bit: the answer was truncated.
pub const TC: u16 = 0x0200;
/// Record type A.
pub const TYPE_A: u16 = 1;
/// Record type CNAME.
pub const TYPE_CNAME: u16 = 5;
/// Record type TXT (data the parser skips).
pub const TYPE_TXT: u16 = 16;

impl Wire {
    /// A header (ID 0: the resolver puts the query's there) with `flags` and the
    /// question and answer counts; no authority or additional records.
    pub fn header(flags: u16, questions: u16, answers: u16) -> Wire {
        let mut w = Wire(vec![0, 0]);
        for field in [flags, questions, answers, 0, 0] {
            w.0.extend_from_slice(&field.to_be_bytes());
        }
        w
    }

    /// A well-formed answer: the question `name`, then an A record of it per address.
    pub fn answer(name: &str, ttl: u32, addrs: &[&str]) -> Wire {
        let mut w = Wire::header(ANSWER, 1, addrs.len() as u16).question(name);
        for a in addrs {
            w = w.ptr(12).a_fixed(ttl, a);
        }
        w
    }

    /// Where the next byte goes.
    pub fn at(&self) -> u16 {
        self.0.len() as u16
    }

    /// Raw bytes.
    pub fn bytes(mut self, b: &[u8]) -> Wire {
        self.0.extend_from_slice(b);
        self
    }

    /// A name in labels (no compression), root label included.
    pub fn name(mut self, dotted: &str) -> Wire {
        for label in dotted.split('.') {
            self.0.push(label.len() as u8);
            self.0.extend_from_slice(label.as_bytes());
        }
        self.0.push(0);
        self
    }

    /// A compression pointer to offset `to`.
    pub fn ptr(self, to: u16) -> Wire {
        self.bytes(&(0xc000 | to).to_be_bytes())
    }

    /// A question entry: `name`, type A, class IN.
    pub fn question(self, name: &str) -> Wire {
        self.name(name).bytes(&[0, 1, 0, 1])
    }

    /// A record's fixed fields after its owner: type, class IN, TTL, data length.
    pub fn fixed(self, rtype: u16, ttl: u32, rdlen: u16) -> Wire {
        self.bytes(&rtype.to_be_bytes())
            .bytes(&1u16.to_be_bytes())
            .bytes(&ttl.to_be_bytes())
            .bytes(&rdlen.to_be_bytes())
    }

    /// The fixed fields and data of an A record of IPv4 address `addr`, after its owner.
    pub fn a_fixed(self, ttl: u32, addr: &str) -> Wire {
        self.fixed(TYPE_A, ttl, 4).bytes(&ipv4(addr))
    }

    /// A whole A record: owner `name` (no compression), `addr`.
    pub fn a(self, name: &str, ttl: u32, addr: &str) -> Wire {
        self.name(name).a_fixed(ttl, addr)
    }

    /// A whole CNAME record: `owner` -> `target`, both without compression.
    pub fn cname(self, owner: &str, ttl: u32, target: &str) -> Wire {
        let len = target.split('.').map(|l| l.len() + 1).sum::<usize>() + 1;
        self.name(owner)
            .fixed(TYPE_CNAME, ttl, len as u16)
            .name(target)
    }

    /// The message cut to its first `len` bytes.
    pub fn cut(mut self, len: usize) -> Wire {
        self.0.truncate(len);
        self
    }

    /// Lower-case hexadecimal, as the fake resolver's reply file takes it.
    pub fn hex(&self) -> String {
        self.0.iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }
}

/// The four bytes of a dotted IPv4 address (panics on anything else: test data).
pub fn ipv4(addr: &str) -> [u8; 4] {
    addr.parse::<std::net::Ipv4Addr>()
        .unwrap_or_else(|e| panic!("{addr}: {e}"))
        .octets()
}
