//! Peer groups of host names, learned in the kernel from DNS answers, against
//! a real resolver: dnsmasq on the peer namespace B answers from a zone each test
//! writes, the protected namespace A resolves with a stub in the same process that then
//! connects (tests/support/net.py), and the real agent learns the answers' addresses on
//! the ingress path. B owns every address the zones point at (198.19.0.0/21 and
//! fd7f::/64, made local on B) and an echo server on port 443 answers on all of them, so
//! a connect fails only when the agent denies it.
//!
//! Every test checks the allowed connect, the denied one (EPERM, counted with reason
//! "peer") and the `names` section of `portcullis status --json` (NAMES-CONTRACT.md:
//! learned addresses with their pattern and groups, and the counters).
//!
//! For hostile answers, a fake resolver on a second trusted address of B
//! (`net.py fake-resolver`) answers each query with bytes the test writes
//! ([`portcullis_tests::Wire`]), and the client (`net.py dns-ask`) reads them whole.
//!
//! The site: rule "dns" (out, UDP and TCP 53) to the trusted resolvers of the
//! `dns-servers` group (B's address), rule "updates" (out, TCP 443) to the group
//! `vendor-updates`, whose members are host names and wildcards.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    time::{Duration, Instant},
};

use portcullis_common::dns::{self, Status};
use portcullis_tests::dns::ANSWER as ANSWER_FLAGS;
use portcullis_tests::{
    Agent, Delivery, Lab, Wire, Zone, denies, must, net_py, rule, rule_packets, stdout,
};
use serde_json::Value;

/// The prefix B owns for the zones' addresses, routed from A.
const NAMED_PREFIX: &str = "198.19.0.0/21";
/// The IPv6 prefix B owns for the zones' AAAA records, routed from A.
const NAMED_PREFIX6: &str = "fd7f::/64";
/// The port of rule "updates", where B's echo server listens.
const PORT: u16 = 443;
/// The group of names the tests' rule uses.
const GROUP: &str = "vendor-updates";
/// The wildcard most tests list.
const WILDCARD: &str = "*.lab.test";

/// The `i`-th address of [`NAMED_PREFIX`] (0 <= i < 2000).
fn named(i: u32) -> String {
    format!("198.19.{}.{}", i / 250, i % 250 + 1)
}

/// What a test's site adds to the common one.
#[derive(Default)]
struct Setup<'a> {
    /// Members of the `vendor-updates` group.
    members: &'a [&'a str],
    /// Top-level site settings (`dns_grace`, `xdp_scope_only`).
    site: &'a str,
    /// A second resolver on B that the site may query (rule "other-dns", UDP 53, group
    /// `other-resolvers`) but does not trust, and what it answers.
    forger: Option<&'a Zone>,
    /// Run the agent in A with XDP on A's veth.
    xdp: bool,
    /// Put B's resolver in a group `resolvers` instead of `dns-servers`: the site then
    /// names no trusted resolvers, and those of /etc/resolv.conf are trusted.
    resolv_conf: bool,
    /// The client asks a local stub on A (127.0.0.53, forwarding to B), and the stub
    /// is the trusted resolver (`dns-servers`).
    stub: bool,
    /// A second trusted resolver on B (in `dns-servers` too) that answers these names
    /// with these bytes (`Lab::fake_resolver`); none when empty.
    fake: &'a [(String, Wire, Delivery)],
}

/// The address of the local stub resolver on A.
const STUB: &str = "127.0.0.53";

/// How the stub asks.
#[derive(Clone, Copy)]
enum Query {
    /// An A query over UDP.
    Udp,
    /// An A query over TCP.
    Tcp,
    /// An AAAA query over UDP.
    Aaaa,
}

/// A lab with the resolver, the echo server and the agent; the agent is dropped first.
struct Names {
    agent: Agent,
    lab: Lab,
    /// The trusted resolver the client asks: B's address, or the stub on A.
    resolver: String,
    /// The untrusted resolver's address (B's second address), if the setup has one.
    forger: String,
    /// The fake trusted resolver's address (B's third address), if the setup has one.
    fake: String,
    /// The profile's rules, and the site's text before and after the group's line:
    /// [`Names::set_members`] rewrites the group.
    rules: String,
    site: (String, String),
}

impl Names {
    /// A lab whose trusted resolver (B's address) answers from `zone`, with the echo
    /// server on B and the agent enforcing the site of `setup`.
    fn new(name: &str, zone: &Zone, setup: Setup) -> Names {
        let mut lab = Lab::new(name);
        lab.local_prefix_on_b(NAMED_PREFIX);
        lab.local_prefix_on_b(NAMED_PREFIX6);
        lab.spawn_b(&format!("exec {} echo {PORT}", net_py()));
        let (ns_b, probe) = (lab.ns_b.clone(), named(1999));
        lab.wait_tcp(&ns_b, &probe, PORT);
        let b4 = lab.b4.clone();
        lab.dnsmasq(&b4, zone);
        let resolver = if setup.stub {
            lab.dns_stub_on_a(STUB, &b4);
            STUB.to_owned()
        } else {
            b4
        };
        let dns_group = if setup.resolv_conf {
            "resolvers"
        } else {
            "dns-servers"
        };
        let mut rules = rule(
            "dns",
            "out",
            "both",
            53,
            &format!("peers = \"{dns_group}\""),
        ) + &rule(
            "updates",
            "out",
            "tcp",
            PORT,
            &format!("peers = \"{GROUP}\""),
        );
        let mut trusted = format!("\"{resolver}/32\"");
        let mut fake = String::new();
        if !setup.fake.is_empty() {
            fake = lab.add_b_peer(4);
            lab.fake_resolver(&fake, setup.fake);
            trusted += &format!(", \"{fake}/32\"");
        }
        let head = format!(
            "mode = \"enforce\"\n{}\n[peers]\n{dns_group} = [{trusted}]\n",
            setup.site,
        );
        let mut tail = String::new();
        let mut forger = String::new();
        if let Some(zone) = setup.forger {
            forger = lab.add_b_peer(3);
            lab.dnsmasq(&forger, zone);
            rules += &rule("other-dns", "out", "udp", 53, "peers = \"other-resolvers\"");
            tail += &format!("other-resolvers = [\"{forger}/32\"]\n");
        }
        let cfg: PathBuf = lab.config(&rules, &site_text(&head, setup.members, &tail));
        let agent = if setup.xdp {
            lab.agent_xdp(&cfg)
        } else {
            lab.agent(&cfg, &[])
        };
        Names {
            agent,
            lab,
            resolver,
            forger,
            fake,
            rules,
            site: (head, tail),
        }
    }

    /// Rewrites the site with `members` as the group's members and reloads the agent
    /// (SIGHUP, or `portcullis reload` with `cli`); returns when the new policy is live.
    fn set_members(&mut self, members: &[&str], cli: bool) {
        let (head, tail) = &self.site;
        self.lab
            .config(&self.rules, &site_text(head, members, tail));
        if cli {
            let out = self.agent.cli(&["reload", "--timeout", "30"]);
            assert!(
                out.status.success(),
                "portcullis reload: {}{}",
                stdout(&out),
                portcullis_tests::stderr(&out)
            );
        } else {
            self.agent.reload().unwrap_or_else(|e| panic!("{e:#}"));
        }
    }

    /// Resolves each name (one query to `server`, UDP or TCP) and connects at once to
    /// its first address on [`PORT`], all in one process on A; net.py's JSON summary.
    fn resolve_connect(&self, server: &str, names: &[&str], how: Query) -> Value {
        let flags = match how {
            Query::Udp => "",
            Query::Tcp => " --tcp",
            Query::Aaaa => " --aaaa",
        };
        self.run_resolve(&format!(
            "{} resolve-connect {server} {PORT}{flags} {}",
            net_py(),
            names.join(" ")
        ))
    }

    fn run_resolve(&self, cmd: &str) -> Value {
        let out = self.lab.on_a(cmd);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{cmd}: no JSON summary ({e}): {}\n{}",
                stdout(&out),
                portcullis_tests::stderr(&out)
            )
        })
    }

    /// Resolves one name with the resolver of the setup and connects at once: the
    /// address and the connect's verdict ("ok", "EPERM", ...).
    fn resolve_one(&self, name: &str) -> (String, String) {
        self.resolve_one_at(&self.resolver, name, Query::Udp)
    }

    /// Asserts that `name` resolves to `addr` and that the connect that follows gets
    /// `verdict` ("ok", "EPERM").
    #[track_caller]
    fn expect_verdict(&self, name: &str, addr: &str, verdict: &str, why: &str) {
        assert_eq!(
            self.resolve_one(name),
            (addr.to_owned(), verdict.to_owned()),
            "{why}"
        );
    }

    /// Like [`Names::resolve_one`], asking `server` in the way `how`.
    fn resolve_one_at(&self, server: &str, name: &str, how: Query) -> (String, String) {
        let r = self.resolve_connect(server, &[name], how);
        let addr = r["answers"][name]
            .as_str()
            .unwrap_or_else(|| panic!("{name} did not resolve at {server}: {r}"))
            .to_owned();
        let verdict = if r["connected"] == 1 {
            "ok".to_owned()
        } else {
            let failure = r["failures"][0].as_str().unwrap_or("?");
            failure.rsplit(": ").next().unwrap_or("?").to_owned()
        };
        (addr, verdict)
    }

    /// connect() from A to `addr` on [`PORT`], no resolution: "ok", "EPERM", ...
    fn connect(&self, addr: &str) -> String {
        stdout(
            &self
                .lab
                .on_a(&format!("{} connect {addr} {PORT}", net_py())),
        )
        .trim()
        .to_owned()
    }
}

/// The site's text: `head` (mode, settings, `[peers]` with the trusted resolvers), the
/// group [`GROUP`] of `members`, then `tail` (more groups).
fn site_text(head: &str, members: &[&str], tail: &str) -> String {
    let members: Vec<String> = members.iter().map(|m| format!("\"{m}\"")).collect();
    format!("{head}{GROUP} = [{}]\n{tail}", members.join(", "))
}

/// The `names` section of a status (panics with the status if it has none).
fn names(status: &Value) -> &Value {
    let n = &status["names"];
    assert!(n.is_object(), "status --json has no \"names\": {status:#}");
    n
}

/// A counter of the `names` section.
fn counter(status: &Value, key: &str) -> u64 {
    names(status)["counters"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("names.counters has no number {key:?}: {status:#}"))
}

/// The learned entry of an address, if the status lists it.
fn learned<'a>(status: &'a Value, addr: &str) -> Option<&'a Value> {
    names(status)["learned"]
        .as_array()
        .unwrap_or_else(|| panic!("names.learned is not a list: {status:#}"))
        .iter()
        .find(|l| l["address"] == addr)
}

/// Asserts the status lists `addr` as learned for `pattern` of [`GROUP`], expiring in
/// (0, max_ms]; returns its expiry.
fn assert_learned(status: &Value, addr: &str, pattern: &str, max_ms: u64) -> u64 {
    let entry = learned(status, addr)
        .unwrap_or_else(|| panic!("{addr} is not in names.learned: {:#}", names(status)));
    let name = entry["names"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["pattern"] == pattern))
        .unwrap_or_else(|| panic!("{addr} is not learned for {pattern}: {entry:#}"));
    assert!(
        name["groups"]
            .as_array()
            .is_some_and(|g| g.iter().any(|g| g == GROUP)),
        "{addr} for {pattern} names its group {GROUP}: {entry:#}"
    );
    let expires = name["expires_in_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("no expires_in_ms: {entry:#}"));
    assert!(
        expires > 0 && expires <= max_ms,
        "{addr} expires in {expires} ms, expected (0, {max_ms}]: {entry:#}"
    );
    expires
}

/// Denied outbound connects with reason "peer" (enforce).
fn peer_denies(status: &Value) -> u64 {
    denies(status, "out", "peer", false).0
}

/// 1,000 distinct names under a wildcard, each resolved and connected to at once by the
/// same process with no sleep: every first connection is allowed.
#[test]
fn first_connection() {
    const N: u32 = 1000;
    // Names at depth 1 and 3 under the wildcard ("any depth below").
    let hosts: Vec<(String, String)> = (0..N)
        .map(|i| {
            let name = if i % 2 == 0 {
                format!("h{i}.lab.test")
            } else {
                format!("h{i}.eu.pool.lab.test")
            };
            (name, named(i))
        })
        .collect();
    let zone = Zone {
        ttl: 300,
        hosts: hosts.clone(),
        cnames: Vec::new(),
    };
    let t = Names::new(
        "first",
        &zone,
        Setup {
            members: &[WILDCARD],
            ..Setup::default()
        },
    );
    let list: Vec<&str> = hosts.iter().map(|(n, _)| n.as_str()).collect();
    let file = t.lab.write("names.txt", &list.join("\n"));
    let s0 = t.agent.status();
    let started = Instant::now();
    let r = t.run_resolve(&format!(
        "{} resolve-connect {} {PORT} --names {}",
        net_py(),
        t.resolver,
        file.display()
    ));
    let elapsed = started.elapsed();
    assert_eq!(r["resolved"], N, "every name resolved: {r}");
    assert_eq!(
        (&r["connected"], &r["eperm"]),
        (&Value::from(N), &Value::from(0)),
        "every first connection allowed: failures {}",
        r["failures"]
    );
    for (name, addr) in &hosts {
        assert_eq!(r["answers"][name], addr.as_str(), "the answer for {name}");
    }

    // Denied: an address of the same prefix that no answer named.
    assert_eq!(t.connect(&named(1500)), "EPERM", "an unlearned address");
    let s = t.agent.status();
    assert!(
        peer_denies(&s) > peer_denies(&s0),
        "the deny is counted with reason peer: {s:#}"
    );
    assert!(
        counter(&s, "addresses_learned") >= u64::from(N),
        "{:#}",
        names(&s)
    );
    assert!(
        counter(&s, "answers_learned") >= u64::from(N),
        "{:#}",
        names(&s)
    );
    assert_eq!(counter(&s, "untrusted"), 0, "{:#}", names(&s));
    assert_eq!(counter(&s, "evicted"), 0, "{:#}", names(&s));
    assert!(rule_packets(&s, "updates") >= u64::from(N), "{s:#}");
    // The last answers are listed with their pattern, group and TTL + grace (60 s).
    for i in [N - 2, N - 1] {
        assert_learned(&s, &named(i), WILDCARD, (300 + 60) * 1000);
    }
    assert!(
        learned(&s, &named(1500)).is_none(),
        "an address no answer named is not listed: {:#}",
        names(&s)
    );
    portcullis_tests::figures(
        "names_first_connection",
        &[
            ("names", N.to_string()),
            ("connected", r["connected"].to_string()),
            ("eperm", r["eperm"].to_string()),
            ("resolve_connect_ms", elapsed.as_millis().to_string()),
        ],
    );
}

/// One pattern holds at most `LEARNED_PER_NAME` addresses at a time: the wildcard's
/// answers beyond it are not learned (EPERM, counted `over_limit`), while another
/// pattern of the same group keeps the address it learned before the flood and still
/// learns, and the wildcard's first addresses keep working.
#[test]
fn a_name_holds_at_most_its_limit_of_addresses() {
    let limit = portcullis_common::names::LEARNED_PER_NAME;
    let over = 6;
    let n = limit + over;
    let mut hosts: Vec<(String, String)> = (0..n)
        .map(|i| (format!("p{i}.lab.test"), named(i)))
        .collect();
    hosts.push(("solo.other.test".to_owned(), named(n)));
    let zone = Zone {
        ttl: 300,
        hosts: hosts.clone(),
        cnames: Vec::new(),
    };
    let t = Names::new(
        "limit",
        &zone,
        Setup {
            members: &[WILDCARD, "solo.other.test"],
            ..Setup::default()
        },
    );
    // Another name learned before the flood: the flood must not push it out.
    t.expect_verdict(
        "solo.other.test",
        &named(n),
        "ok",
        "an exact name learned before the wildcard's flood",
    );
    let list: Vec<&str> = hosts[..n as usize]
        .iter()
        .map(|(h, _)| h.as_str())
        .collect();
    let file = t.lab.write("names.txt", &list.join("\n"));
    let r = t.run_resolve(&format!(
        "{} resolve-connect {} {PORT} --names {}",
        net_py(),
        t.resolver,
        file.display()
    ));
    assert_eq!(r["resolved"], n, "every name resolved: {r}");
    assert_eq!(
        (&r["connected"], &r["eperm"]),
        (&Value::from(limit), &Value::from(over)),
        "the first {limit} addresses of the wildcard are learned, the rest refused: failures {}",
        r["failures"]
    );
    let s = t.agent.status();
    assert_eq!(
        counter(&s, "over_limit"),
        u64::from(over),
        "{:#}",
        names(&s)
    );
    assert_eq!(counter(&s, "evicted"), 0, "{:#}", names(&s));
    assert!(
        learned(&s, &named(n - 1)).is_none(),
        "over the limit: not listed"
    );
    assert_learned(&s, &named(0), WILDCARD, (300 + 60) * 1000);
    // The name learned before the flood kept its address, and its own answers still
    // teach next to the full wildcard.
    assert_learned(&s, &named(n), "solo.other.test", (300 + 60) * 1000);
    assert_eq!(
        t.connect(&named(n)),
        "ok",
        "solo.other.test after the flood"
    );
    t.expect_verdict(
        "solo.other.test",
        &named(n),
        "ok",
        "an exact name next to the full wildcard",
    );
    // The wildcard's learned addresses keep working; a refused one stays refused.
    assert_eq!(t.connect(&named(0)), "ok");
    assert_eq!(t.connect(&named(n - 1)), "EPERM");
    let s = t.agent.status();
    assert!(peer_denies(&s) > u64::from(over), "{s:#}");
}

/// A name in no group resolves (the trusted resolver answers) but its address is
/// denied; so are the wildcard's own apex and a sibling of an exactly listed name. The
/// listed names, in any letter case, are allowed.
#[test]
fn unlisted_name() {
    let zone = Zone::new(
        300,
        &[
            ("www.lab.test", &named(1)),
            ("repo.vendor.test", &named(2)),
            ("intruder.example", &named(3)),
            ("lab.test", &named(4)),
            ("www.vendor.test", &named(5)),
        ],
    );
    let t = Names::new(
        "unlisted",
        &zone,
        Setup {
            members: &[WILDCARD, "repo.vendor.test"],
            ..Setup::default()
        },
    );
    let s0 = t.agent.status();
    for (name, i) in [("WWW.Lab.Test", 1), ("repo.vendor.test", 2)] {
        t.expect_verdict(name, &named(i), "ok", &format!("listed {name}"));
    }
    for (name, i) in [
        ("intruder.example", 3),
        ("lab.test", 4),
        ("www.vendor.test", 5),
    ] {
        t.expect_verdict(
            name,
            &named(i),
            "EPERM",
            &format!("unlisted {name} resolves, its address is denied"),
        );
    }
    let s = t.agent.status();
    assert!(
        peer_denies(&s) >= peer_denies(&s0) + 3,
        "three denies with reason peer: {s:#}"
    );
    assert!(
        counter(&s, "unlisted") >= 3,
        "three trusted answers for names in no group: {:#}",
        names(&s)
    );
    assert_learned(&s, &named(1), WILDCARD, 360_000);
    assert_learned(&s, &named(2), "repo.vendor.test", 360_000);
    for i in 3..=5 {
        assert!(
            learned(&s, &named(i)).is_none(),
            "{} of an unlisted name is not learned: {:#}",
            named(i),
            names(&s)
        );
    }
}

/// Two names whose first labels hash alike under the unkeyed FNV-1a 64 the datapath
/// compared names by before (`names::FNV_COLLISION`): whoever controls a domain the
/// host looks up could pick such a name. The listed one teaches its address; the other
/// is in no group, whatever its hash: its address is denied (EPERM, reason peer),
/// counted `unlisted`, and not learned. (With the unkeyed hash it was learned as the
/// listed name and its connect allowed.) After a kill -9 and a restart the key and the
/// learned address are adopted.
#[test]
fn a_name_colliding_with_a_listed_one_teaches_nothing() {
    let [a, b] = portcullis_common::names::FNV_COLLISION;
    let (listed, other) = (format!("{a}.vendor.test"), format!("{b}.vendor.test"));
    let zone = Zone::new(300, &[(&listed, &named(1)), (&other, &named(2))]);
    let t = Names::new(
        "collide",
        &zone,
        Setup {
            members: &[&listed],
            ..Setup::default()
        },
    );
    let s0 = t.agent.status();
    t.expect_verdict(&listed, &named(1), "ok", "the listed name");
    t.expect_verdict(
        &other,
        &named(2),
        "EPERM",
        "a name whose unkeyed hash is the listed name's is still unlisted",
    );
    let s = t.agent.status();
    assert_eq!(
        peer_denies(&s),
        peer_denies(&s0) + 1,
        "one deny, reason peer: {s:#}"
    );
    assert_eq!(
        counter(&s, "unlisted"),
        counter(&s0, "unlisted") + 1,
        "the colliding name's answer is counted unlisted: {:#}",
        names(&s)
    );
    assert_learned(&s, &named(1), &listed, 360_000);
    assert!(
        learned(&s, &named(2)).is_none(),
        "the colliding name's address is not learned: {:#}",
        names(&s)
    );
    // A restarted agent adopts the key with the pins: the address learned under it
    // still opens the port, with no new lookup, and the other is still refused.
    let Names {
        agent,
        lab,
        resolver,
        forger,
        fake,
        rules,
        site,
    } = t;
    agent.kill9();
    let cfg = lab.config(&rules, &site_text(&site.0, &[&listed], &site.1));
    let t = Names {
        agent: lab.agent(&cfg, &[]),
        lab,
        resolver,
        forger,
        fake,
        rules,
        site,
    };
    assert_eq!(t.connect(&named(1)), "ok", "learned before the restart");
    assert_eq!(t.connect(&named(2)), "EPERM", "never learned");
}

/// An answer from port 53 of an address that is not a trusted resolver (a second
/// dnsmasq on B, which the site may query but does not trust) is not learned, neither
/// for a new name nor for a name the trusted resolver answers otherwise.
#[test]
fn forged_answer() {
    let zone = Zone::new(300, &[("good.lab.test", &named(10))]);
    let forged = Zone::new(
        300,
        &[("evil.lab.test", &named(11)), ("good.lab.test", &named(12))],
    );
    // The agent's metrics endpoint, on a port the kernel picks (free again at once).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let t = Names::new(
        "forged",
        &zone,
        Setup {
            members: &[WILDCARD],
            site: &format!("[metrics]\nlisten = \"127.0.0.1:{port}\""),
            forger: Some(&forged),
            ..Setup::default()
        },
    );
    let s0 = t.agent.status();
    // The forger's answers reach the client (the query and its answer are allowed) ...
    let forger = t.forger.clone();
    for (name, i) in [("evil.lab.test", 11), ("good.lab.test", 12)] {
        assert_eq!(
            t.resolve_one_at(&forger, name, Query::Udp),
            (named(i), "EPERM".to_owned()),
            "{name} answered by the untrusted {forger}: the client reads it, the address is denied"
        );
    }
    // ... while the trusted resolver's answer teaches its address.
    t.expect_verdict(
        "good.lab.test",
        &named(10),
        "ok",
        "good.lab.test answered by the trusted resolver",
    );
    // The forged addresses stay denied after a trusted answer for the same name.
    assert_eq!(t.connect(&named(12)), "EPERM");
    let s = t.agent.status();
    assert!(
        peer_denies(&s) >= peer_denies(&s0) + 3,
        "three denies with reason peer: {s:#}"
    );
    assert!(
        counter(&s, "untrusted") >= 2,
        "two answers from an untrusted address: {:#}",
        names(&s)
    );
    assert_learned(&s, &named(10), WILDCARD, 360_000);
    for i in [11, 12] {
        assert!(
            learned(&s, &named(i)).is_none(),
            "a forged address is not learned: {:#}",
            names(&s)
        );
    }
    let trusted = names(&s)["trusted_resolvers"].to_string();
    assert!(
        trusted.contains(&format!("{}/32", t.lab.b4)) && !trusted.contains(&forger),
        "the trusted resolvers are dns-servers only: {trusted}"
    );
    // The same counts as metrics.
    let metrics = must(&format!(
        "curl -s --max-time 5 http://127.0.0.1:{port}/metrics"
    ));
    let sample = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no sample {series} in the metrics:\n{metrics}"))
    };
    assert!(
        sample("portcullis_dns_answers_total{result=\"untrusted\"}") >= 2.0,
        "{metrics}"
    );
    assert!(
        sample("portcullis_dns_answers_total{result=\"learned\"}") >= 1.0,
        "{metrics}"
    );
    assert!(
        sample("portcullis_dns_learned_addresses") >= 1.0,
        "{metrics}"
    );
}

/// A local stub resolver (127.0.0.53 on A, outside the enforced cgroup, forwarding to
/// B), as systemd-resolved is on a gateway: its answers cross the loopback device, which
/// the policy exempts, and are learned all the same when the stub is trusted.
#[test]
fn local_stub() {
    let zone = Zone::new(
        300,
        &[
            ("stub.lab.test", &named(70)),
            ("stub.other.test", &named(71)),
        ],
    );
    let t = Names::new(
        "stub",
        &zone,
        Setup {
            members: &[WILDCARD],
            stub: true,
            ..Setup::default()
        },
    );
    let s0 = t.agent.status();
    t.expect_verdict(
        "stub.lab.test",
        &named(70),
        "ok",
        "stub.lab.test through the stub",
    );
    t.expect_verdict(
        "stub.other.test",
        &named(71),
        "EPERM",
        "unlisted stub.other.test through the stub",
    );
    let s = t.agent.status();
    assert!(peer_denies(&s) > peer_denies(&s0), "{s:#}");
    assert!(counter(&s, "unlisted") >= 1, "{:#}", names(&s));
    assert!(
        names(&s)["trusted_resolvers"]
            .to_string()
            .contains(&format!("{STUB}/32")),
        "{:#}",
        names(&s)
    );
    assert_learned(&s, &named(70), WILDCARD, 360_000);
    assert!(learned(&s, &named(71)).is_none(), "{:#}", names(&s));
}

/// Without a `dns-servers` group the nameservers of /etc/resolv.conf are the trusted
/// resolvers (the agent runs in the host's mount namespace, so the host's file): B's
/// resolver, which the site may query, is not one of them, so its answers are not
/// learned; the group's network member is allowed all the same.
#[test]
fn resolv_conf_trusted_without_dns_servers() {
    let zone = Zone::new(300, &[("www.lab.test", &named(60))]);
    let cidr = "198.19.7.0/24";
    let t = Names::new(
        "resolvconf",
        &zone,
        Setup {
            members: &[WILDCARD, cidr],
            resolv_conf: true,
            ..Setup::default()
        },
    );
    let nameservers: Vec<String> = std::fs::read_to_string("/etc/resolv.conf")
        .expect("reading /etc/resolv.conf")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .map(|a| a.trim().to_owned())
        .collect();
    let s0 = t.agent.status();
    let trusted = names(&s0)["trusted_resolvers"]
        .as_array()
        .unwrap_or_else(|| panic!("names.trusted_resolvers: {:#}", names(&s0)));
    for r in trusted {
        assert_eq!(r["source"], "resolv.conf", "{:#}", names(&s0));
        let network = r["network"].as_str().unwrap_or("?");
        let address = network.split('/').next().unwrap_or("?");
        assert!(
            nameservers.iter().any(|n| n == address),
            "{network} is a nameserver of /etc/resolv.conf ({nameservers:?})"
        );
    }
    assert_eq!(
        trusted.len(),
        nameservers.len(),
        "every nameserver of /etc/resolv.conf, nothing else: {:#}",
        names(&s0)
    );
    t.expect_verdict(
        "www.lab.test",
        &named(60),
        "EPERM",
        "www.lab.test answered by B, which resolv.conf does not name",
    );
    assert_eq!(t.connect("198.19.7.9"), "ok", "the group's network {cidr}");
    let s = t.agent.status();
    assert!(peer_denies(&s) > peer_denies(&s0), "{s:#}");
    assert!(counter(&s, "untrusted") >= 1, "{:#}", names(&s));
    assert!(learned(&s, &named(60)).is_none(), "{:#}", names(&s));
}

/// A learned address expires TTL + dns_grace after its answer: a connection opened
/// before keeps exchanging data, a new connect to the same address is denied.
#[test]
fn expiry() {
    // Short, but long enough that the status read right after the answer still sees the
    // address valid on a loaded machine.
    const TTL: u64 = 2;
    const GRACE: u64 = 2;
    let zone = Zone::new(TTL as u32, &[("brief.lab.test", &named(20))]);
    let mut t = Names::new(
        "expiry",
        &zone,
        Setup {
            members: &[WILDCARD],
            site: &format!("dns_grace = {GRACE}"),
            ..Setup::default()
        },
    );
    let (go, out) = (t.lab.dir.join("go"), t.lab.dir.join("hold.json"));
    let cmd = format!(
        "exec {} resolve-hold {} {PORT} brief.lab.test {} {}",
        net_py(),
        t.resolver,
        go.display(),
        out.display()
    );
    t.lab.spawn_a(&cmd);
    let opened = wait_json(&t.lab.dir.join("hold.json.open"));
    assert_eq!(opened["address"], named(20).as_str(), "{opened}");
    assert_eq!(
        opened["1"], "ok",
        "connect right after the answer, and data: {opened}"
    );
    let s = t.agent.status();
    assert_eq!(names(&s)["dns_grace_secs"], GRACE, "{:#}", names(&s));
    assert_learned(&s, &named(20), WILDCARD, (TTL + GRACE) * 1000);

    // Semantics, not timing: well past TTL + grace.
    std::thread::sleep(Duration::from_secs(TTL + GRACE + 2));
    let s0 = t.agent.status();
    std::fs::write(&go, "").expect("writing the go file");
    let held = wait_json(&out);
    assert_eq!(held["2"], "ok", "the open connection keeps working: {held}");
    assert_eq!(
        held["new_connect"], "EPERM",
        "a new connect after expiry: {held}"
    );
    let s = t.agent.status();
    assert!(
        peer_denies(&s) > peer_denies(&s0),
        "the deny is counted with reason peer: {s:#}"
    );
    assert!(
        learned(&s, &named(20)).is_none_or(|l| l["names"]
            .as_array()
            .is_some_and(|n| n.iter().all(|n| n["expires_in_ms"].as_u64() == Some(0)))),
        "an expired address is not listed as valid: {:#}",
        names(&s)
    );
    // The agent sweeps expired entries on its own schedule: wait for the count.
    let deadline = Instant::now() + Duration::from_secs(90);
    while counter(&t.agent.status(), "expired") == 0 {
        assert!(
            Instant::now() < deadline,
            "the expired entry was never swept: {:#}",
            names(&t.agent.status())
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // A fresh answer teaches the address again.
    t.expect_verdict(
        "brief.lab.test",
        &named(20),
        "ok",
        "a new answer after expiry",
    );
}

/// Waits (up to 15 s) for a JSON file a background client writes.
fn wait_json(path: &std::path::Path) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(v) = std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{} was never written",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// CNAME chains are followed inside the answer from the name asked: a listed name that
/// is a CNAME to an unlisted one is allowed; an unlisted name that is a CNAME to a
/// listed one is not.
#[test]
fn cname() {
    let zone = Zone::new(
        300,
        &[
            ("edge.cdn.example", &named(30)),
            ("real.lab.test", &named(31)),
        ],
    )
    .cname("cdn.lab.test", "edge.cdn.example")
    .cname("alias.other.test", "real.lab.test");
    let t = Names::new(
        "cname",
        &zone,
        Setup {
            members: &[WILDCARD],
            ..Setup::default()
        },
    );
    let s0 = t.agent.status();
    t.expect_verdict(
        "cdn.lab.test",
        &named(30),
        "ok",
        "listed cdn.lab.test -> CNAME edge.cdn.example (unlisted)",
    );
    t.expect_verdict(
        "alias.other.test",
        &named(31),
        "EPERM",
        "unlisted alias.other.test -> CNAME real.lab.test (listed)",
    );
    let s = t.agent.status();
    assert!(
        peer_denies(&s) > peer_denies(&s0),
        "the deny is counted with reason peer: {s:#}"
    );
    assert!(counter(&s, "unlisted") >= 1, "{:#}", names(&s));
    assert_learned(&s, &named(30), WILDCARD, 360_000);
    assert!(
        learned(&s, &named(31)).is_none(),
        "the target of an unlisted alias is not learned: {:#}",
        names(&s)
    );
    // The human status shows the learned address with its pattern and group.
    let human = stdout(&t.agent.cli(&["status"]));
    assert!(
        human
            .lines()
            .any(|l| l.contains(WILDCARD) && l.contains(GROUP) && l.contains(&named(30))),
        "status names {} for {WILDCARD} ({GROUP}):\n{human}",
        named(30)
    );
    // The listed target asked for by its own name is allowed: the deny above was the
    // alias's, not the address's or the listener's.
    t.expect_verdict(
        "real.lab.test",
        &named(31),
        "ok",
        "real.lab.test asked directly",
    );
}

/// An answer over TCP (2-byte length prefix, the segment after the handshake) is
/// learned; over TCP too an unlisted name's address is denied.
#[test]
fn tcp_answer() {
    listed_and_unlisted_by(
        "tcpdns",
        Query::Tcp,
        ("tcp.lab.test", &named(40)),
        ("tcp.other.test", &named(41)),
    );
}

/// AAAA answers are learned as A answers are: a listed name's IPv6 address is allowed,
/// an unlisted name's denied.
#[test]
fn aaaa_answer() {
    listed_and_unlisted_by(
        "aaaa",
        Query::Aaaa,
        ("v6.lab.test", "fd7f::10"),
        ("v6.other.test", "fd7f::11"),
    );
}

/// Resolves a listed and an unlisted name (name, address) by `how` from the trusted
/// resolver: the listed one connects and is learned for the wildcard, the unlisted one
/// gets EPERM, counted with reason peer and as `unlisted`, and is not learned.
fn listed_and_unlisted_by(lab: &str, how: Query, listed: (&str, &str), unlisted: (&str, &str)) {
    let zone = Zone::new(300, &[listed, unlisted]);
    let t = Names::new(
        lab,
        &zone,
        Setup {
            members: &[WILDCARD],
            ..Setup::default()
        },
    );
    let b4 = t.lab.b4.clone();
    let s0 = t.agent.status();
    for ((name, addr), verdict) in [(listed, "ok"), (unlisted, "EPERM")] {
        assert_eq!(
            t.resolve_one_at(&b4, name, how),
            (addr.to_owned(), verdict.to_owned()),
            "{name} resolved by {lab}"
        );
    }
    let s = t.agent.status();
    assert!(peer_denies(&s) > peer_denies(&s0), "{s:#}");
    assert!(counter(&s, "answers_learned") >= 1, "{:#}", names(&s));
    assert!(counter(&s, "unlisted") >= 1, "{:#}", names(&s));
    assert_learned(&s, listed.1, WILDCARD, 360_000);
    assert!(learned(&s, unlisted.1).is_none(), "{:#}", names(&s));
}

/// With XDP on A's veth, the DNS answer and the replies from a learned address pass
/// XDP (counted against their rules there); an unlearned address is denied.
#[test]
fn xdp_attached() {
    let zone = Zone::new(
        300,
        &[("x.lab.test", &named(50)), ("y.other.test", &named(51))],
    );
    let t = Names::new(
        "xdpnames",
        &zone,
        Setup {
            members: &[WILDCARD],
            site: "xdp_scope_only = true",
            xdp: true,
            ..Setup::default()
        },
    );
    let s0 = t.agent.status();
    t.expect_verdict(
        "x.lab.test",
        &named(50),
        "ok",
        "x.lab.test: its answer and the SYN-ACK of its address pass XDP",
    );
    // Data both ways on a connection to the learned address.
    let ex = stdout(
        &t.lab
            .on_a(&format!("{} exchange {} {PORT} 3000", net_py(), named(50))),
    );
    assert_eq!(ex.trim(), "received=3000", "echo through XDP");
    t.expect_verdict("y.other.test", &named(51), "EPERM", "unlisted y.other.test");
    let s = t.agent.status();
    assert!(peer_denies(&s) > peer_denies(&s0), "{s:#}");
    let xdp_rule = |id: &str| -> u64 {
        s["xdp"]["rules"]
            .as_array()
            .expect("xdp.rules")
            .iter()
            .filter(|r| r["id"] == id)
            .map(|r| r["packets"].as_u64().unwrap_or(0))
            .sum()
    };
    assert!(xdp_rule("dns") >= 2, "answers pass XDP on rule dns: {s:#}");
    assert!(
        xdp_rule("updates") >= 2,
        "replies from the learned address pass XDP on rule updates: {s:#}"
    );
    assert_learned(&s, &named(50), WILDCARD, 360_000);
    assert!(learned(&s, &named(51)).is_none(), "{:#}", names(&s));
}

/// The TTL of the hostile corpus's records.
const HOSTILE_TTL: u32 = 300;

/// One hostile answer of [`hostile_answers_on_the_wire_teach_nothing_and_break_nothing`]:
/// the name the client asks, the bytes the fake resolver answers with, and what the
/// parser's rules (ebpf/common/src/dns.rs) say of them.
struct Hostile {
    name: String,
    wire: Wire,
    /// Asked over TCP (else UDP).
    tcp: bool,
    /// The parser's verdict on the bytes.
    status: Status,
    /// Addresses of the answer the rules let it teach: connect works.
    learned: Vec<String>,
    /// Addresses of the answer (or near it) that must not be learned: connect gets EPERM.
    denied: Vec<String>,
}

impl Hostile {
    /// The case `label`.lab.test (listed by [`WILDCARD`]), answered with what `wire`
    /// writes for that name; the parser says `status`.
    fn new(label: &str, status: Status, wire: impl FnOnce(&str) -> Wire) -> Hostile {
        let name = format!("{label}.lab.test");
        Hostile {
            wire: wire(&name),
            name,
            tcp: false,
            status,
            learned: Vec::new(),
            denied: Vec::new(),
        }
    }

    fn tcp(mut self) -> Hostile {
        self.tcp = true;
        self
    }

    fn learns(mut self, addrs: &[u32]) -> Hostile {
        self.learned = addrs.iter().map(|&i| hostile_addr(i)).collect();
        self
    }

    fn denies(mut self, addrs: &[u32]) -> Hostile {
        self.denied = addrs.iter().map(|&i| hostile_addr(i)).collect();
        self
    }
}

/// The `i`-th address of the hostile corpus (B listens on it).
fn hostile_addr(i: u32) -> String {
    named(100 + i)
}

/// The hostile corpus: each case's name is listed and each address is one B listens
/// on, so only the parser's rules decide what is learned. Every case that the rules
/// call malformed carries a good A record of the question before the bad part: nothing
/// of a malformed message counts, not even what came before the damage.
fn hostile_corpus() -> Vec<Hostile> {
    use portcullis_tests::dns::{ANSWER, TC, TYPE_A, TYPE_CNAME, TYPE_TXT, ipv4};
    const TTL: u32 = HOSTILE_TTL;
    let a = hostile_addr;
    // A good A record of the question, then one whose owner is a pointer to itself.
    let self_loop = |q: &str, good, bad| {
        let w = Wire::header(ANSWER, 1, 2)
            .question(q)
            .ptr(12)
            .a_fixed(TTL, &a(good));
        let at = w.at();
        w.ptr(at).a_fixed(TTL, &a(bad))
    };
    // TC set, three records announced: the first whole, the second cut in its address.
    let truncated = |q: &str, kept, cut| {
        let w = Wire::header(ANSWER | TC, 1, 3)
            .question(q)
            .ptr(12)
            .a_fixed(TTL, &a(kept))
            .ptr(12)
            .a_fixed(TTL, &a(cut));
        let len = w.0.len() - 2;
        w.cut(len)
    };
    // The question, then `hops` CNAMEs, each to the next name, then the A record of the
    // last name.
    let chain = |q: &str, hops: u16, addr| {
        let mut w = Wire::header(ANSWER, 1, hops + 1).question(q);
        let mut owner = q.to_owned();
        for i in 1..=hops {
            let target = format!("c{i}.chain{hops}.example");
            w = w.cname(&owner, TTL, &target);
            owner = target;
        }
        w.a(&owner, TTL, &a(addr))
    };
    // `n` short labels: with "lab.test", a name of n + 2 labels.
    let labels = |n: usize| {
        (0..n)
            .map(|i| format!("l{i}"))
            .collect::<Vec<_>>()
            .join(".")
    };
    let answer = |addr| move |q: &str| Wire::answer(q, TTL, &[&a(addr)]);
    let with_a = |w: Wire, addr| w.ptr(12).a_fixed(TTL, &a(addr));
    vec![
        Hostile::new("self-loop", Status::Malformed, |q| self_loop(q, 0, 1)).denies(&[0, 1]),
        Hostile::new("self-loop-tcp", Status::Malformed, |q| self_loop(q, 2, 3))
            .tcp()
            .denies(&[2, 3]),
        // A TXT record whose data is two pointers to each other (the parser skips data
        // it does not read), then a record whose owner points into that pair.
        Hostile::new("pointer-pair", Status::Malformed, |q| {
            let w = with_a(Wire::header(ANSWER, 1, 3).question(q), 4)
                .ptr(12)
                .fixed(TYPE_TXT, TTL, 4);
            let x = w.at();
            w.ptr(x + 2).ptr(x).ptr(x + 2).a_fixed(TTL, &a(5))
        })
        .denies(&[4, 5]),
        // An owner pointing forwards, past its own record, at a copy of the question.
        Hostile::new("forward", Status::Malformed, |q| {
            let w = with_a(Wire::header(ANSWER, 1, 2).question(q), 6);
            let after = w.at() + 2 + 10 + 4;
            w.ptr(after).a_fixed(TTL, &a(7)).name(q)
        })
        .denies(&[6, 7]),
        // Cut in the middle of a record: the records before the cut count.
        Hostile::new("truncated", Status::Truncated, |q| truncated(q, 8, 9))
            .learns(&[8])
            .denies(&[9]),
        Hostile::new("truncated-tcp", Status::Truncated, |q| truncated(q, 10, 11))
            .tcp()
            .learns(&[10])
            .denies(&[11]),
        // An A record whose length (200) runs past the end of the message: the message
        // ends inside that record, which is a cut too.
        Hostile::new("rdlength", Status::Truncated, |q| {
            with_a(Wire::header(ANSWER, 1, 2).question(q), 12)
                .ptr(12)
                .fixed(TYPE_A, TTL, 200)
                .bytes(&ipv4(&a(13)))
        })
        .learns(&[12])
        .denies(&[13]),
        // A CNAME whose data says 2 bytes while its target name runs on past them.
        Hostile::new("cname-overrun", Status::Malformed, |q| {
            let target = "edge.overrun.example";
            Wire::header(ANSWER, 1, 2)
                .question(q)
                .ptr(12)
                .fixed(TYPE_CNAME, TTL, 2)
                .name(target)
                .a(target, TTL, &a(14))
        })
        .denies(&[14]),
        // A chain of 8 names (the limit) is followed to its end; one of 9 is not.
        Hostile::new("chain8", Status::Complete, |q| chain(q, 7, 15)).learns(&[15]),
        Hostile::new("chain9", Status::Complete, |q| chain(q, 8, 16)).denies(&[16]),
        // 32 labels (the limit) are read; 33 make the message malformed.
        Hostile::new(&labels(30), Status::Complete, answer(17)).learns(&[17]),
        Hostile::new(&labels(31), Status::Malformed, answer(18)).denies(&[18]),
        // A label of 63 bytes (the most RFC 1035 allows) is read; a length byte of 64
        // has the reserved label type 01.
        Hostile::new(&"x".repeat(63), Status::Complete, answer(19)).learns(&[19]),
        Hostile::new(&"x".repeat(64), Status::Malformed, answer(20)).denies(&[20]),
        // 40 records: 31 of another name, the question's A as the 32nd (the last one
        // read), then 8 more of the question that lie beyond the limit.
        Hostile::new("records40", Status::Complete, |q| {
            let mut w = Wire::header(ANSWER, 1, 40).question(q);
            for _ in 0..31 {
                w = w.a("decoy.records40.example", TTL, &a(21));
            }
            for i in 22..=30 {
                w = with_a(w, i);
            }
            w
        })
        .learns(&[22])
        .denies(&[21, 23, 24, 25, 26, 27, 28, 29, 30]),
        // Not an answer to one standard query: nothing counts.
        Hostile::new("two-questions", Status::NotAnswer, |q| {
            with_a(
                Wire::header(ANSWER, 2, 1)
                    .question(q)
                    .question("second.lab.test"),
                31,
            )
        })
        .denies(&[31]),
        Hostile::new("nxdomain", Status::NotAnswer, |q| {
            with_a(Wire::header(ANSWER | 3, 1, 1).question(q), 32)
        })
        .denies(&[32]),
        Hostile::new("query", Status::NotAnswer, |q| {
            with_a(Wire::header(0x0100, 1, 1).question(q), 33)
        })
        .denies(&[33]),
        // The same fake resolver's well-formed answers: the path itself works.
        Hostile::new("good", Status::Complete, answer(34)).learns(&[34]),
        Hostile::new("good-tcp", Status::Complete, answer(35))
            .tcp()
            .learns(&[35]),
    ]
}

/// A fake resolver on a trusted address of B answers listed names with hostile bytes
/// (pointer loops, forward pointers, cuts, lying lengths, over-long chains, names and
/// labels, too many records, not-answers), each to the client's own query so that the
/// reply is a real reply to its socket, over UDP and, for some, TCP. The client gets
/// every answer whole (the kernel neither drops nor chokes on it); the addresses learned
/// are exactly those the parser's rules let count (its verdict checked in userspace on
/// the same bytes), the others get EPERM, and the counters say which answers were
/// malformed. The agent keeps running, logs no error and still answers `status`.
#[test]
fn hostile_answers_on_the_wire_teach_nothing_and_break_nothing() {
    let corpus = hostile_corpus();
    let replies: Vec<(String, Wire, Delivery)> = corpus
        .iter()
        .map(|c| (c.name.clone(), c.wire.clone(), Delivery::Whole))
        .collect();
    let mut t = Names::new(
        "hostile",
        &Zone::new(HOSTILE_TTL, &[]),
        Setup {
            members: &[WILDCARD],
            fake: &replies,
            ..Setup::default()
        },
    );
    let start = t.agent.status();
    assert!(
        names(&start)["trusted_resolvers"]
            .to_string()
            .contains(&format!("\"{}/32\"", t.fake)),
        "the fake resolver is trusted: {:#}",
        names(&start)
    );
    let mut denied = 0;
    for c in &corpus {
        // The same parser, in userspace: the case says what the rules say.
        let p = dns::parse(&c.wire.0, &Default::default());
        assert_eq!(p.status(), c.status, "{}: the parser's verdict", c.name);
        let parsed: Vec<String> = if p.usable() {
            p.addresses()
                .iter()
                .map(|a| Ipv4Addr::new(a.addr[12], a.addr[13], a.addr[14], a.addr[15]).to_string())
                .collect()
        } else {
            Vec::new()
        };
        assert_eq!(parsed, c.learned, "{}: the parser's addresses", c.name);

        let s0 = t.agent.status();
        let flags = if c.tcp { " --tcp" } else { "" };
        let got = t.run_resolve(&format!(
            "{} dns-ask {} {}{flags}",
            net_py(),
            t.fake,
            c.name
        ));
        assert_eq!(
            got,
            serde_json::json!({"bytes": c.wire.0.len(), "id_ok": true}),
            "{}: the client receives the whole answer",
            c.name
        );
        let s1 = t.agent.status();
        let delta = |key| counter(&s1, key) - counter(&s0, key);
        assert_eq!(
            [
                delta("malformed"),
                delta("answers_learned"),
                delta("addresses_learned"),
                delta("unlisted"),
                delta("untrusted"),
            ],
            [
                u64::from(c.status == Status::Malformed),
                u64::from(!c.learned.is_empty()),
                c.learned.len() as u64,
                0,
                0
            ],
            "{} ({:?}): counters [malformed, answers_learned, addresses_learned, unlisted, \
             untrusted] rose by: {:#}",
            c.name,
            c.status,
            names(&s1)["counters"]
        );
        for addr in &c.learned {
            assert_eq!(t.connect(addr), "ok", "{}: {addr} was learned", c.name);
        }
        for addr in &c.denied {
            assert_eq!(
                t.connect(addr),
                "EPERM",
                "{}: {addr} was not learned",
                c.name
            );
        }
        denied += c.denied.len() as u64;
        assert!(
            t.agent.running(),
            "the agent exited after {}: {}",
            c.name,
            t.agent.output()
        );
    }

    let s = t.agent.status();
    assert!(
        peer_denies(&s) >= peer_denies(&start) + denied,
        "{denied} denies with reason peer: {s:#}"
    );
    for c in &corpus {
        for addr in &c.learned {
            assert_learned(&s, addr, WILDCARD, u64::from(HOSTILE_TTL + 60) * 1000);
        }
        for addr in &c.denied {
            assert!(
                learned(&s, addr).is_none(),
                "{}: {addr} is not listed: {:#}",
                c.name,
                names(&s)
            );
        }
    }
    let human = t.agent.cli(&["status"]);
    assert!(
        human.status.success() && stdout(&human).contains(WILDCARD),
        "portcullis status answers: {}{}",
        stdout(&human),
        portcullis_tests::stderr(&human)
    );
    assert!(t.agent.running(), "the agent runs: {}", t.agent.output());
    let log = t.agent.output();
    assert!(
        !log.lines().any(|l| ["ERROR", "WARN", "error:", "panicked"]
            .iter()
            .any(|e| l.contains(e))),
        "the agent logged an error or a warning:\n{log}"
    );
}

/// The name the forgery tests' client asks the fake resolver, which never answers it:
/// its question stays in flight while the test aims answers at it.
const PENDING: &str = "pending.lab.test";

/// A question in flight (`net.py dns-pending`): the port it was asked from, a second
/// socket's port (connected to the same resolver, no question), and its id.
struct Pending {
    port: u16,
    other_port: u16,
    id: u16,
}

impl Names {
    /// A lab whose only trusted resolver that is asked is the fake one, answering
    /// `replies`.
    fn forgeries(name: &str, replies: &[(String, Wire, Delivery)]) -> Names {
        Names::new(
            name,
            &Zone::new(300, &[]),
            Setup {
                members: &[WILDCARD],
                fake: replies,
                ..Setup::default()
            },
        )
    }

    /// Asks the fake resolver for [`PENDING`] from A and leaves the question in flight.
    fn pending(&mut self) -> Pending {
        let out = self.lab.dir.join("pending.json");
        let cmd = format!(
            "exec {} dns-pending {} {PENDING} {} 60",
            net_py(),
            self.fake,
            out.display()
        );
        self.lab.spawn_a(&cmd);
        let v = wait_json(&out);
        let field = |k: &str| -> u16 {
            v[k].as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .unwrap_or_else(|| panic!("dns-pending wrote no {k}: {v}"))
        };
        Pending {
            port: field("port"),
            other_port: field("other_port"),
            id: field("id"),
        }
    }

    /// Sends `msg` with id `id` from the fake resolver's address and port 53 to A's
    /// port `port` (a raw socket on B: the fake resolver holds the port).
    fn forge(&self, port: u16, id: u16, msg: &Wire) {
        let mut bytes = msg.clone();
        bytes.0[..2].copy_from_slice(&id.to_be_bytes());
        let out = self.lab.on_b(&format!(
            "{} udp-forge {} 53 {} {port} {}",
            net_py(),
            self.fake,
            self.lab.a4,
            bytes.hex()
        ));
        assert!(
            out.status.success(),
            "udp-forge: {}{}",
            stdout(&out),
            portcullis_tests::stderr(&out)
        );
        // The datagram crosses the veth pair and the ingress program at once; a margin
        // for a loaded machine.
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The counters a forgery test watches: [unsolicited, answers_learned].
fn forgery_counters(s: &Value) -> [u64; 2] {
    [counter(s, "unsolicited"), counter(s, "answers_learned")]
}

/// A UDP answer the `forged` case makes for a question in flight (the port to send it
/// to, its id, the message with an A record of `addr`) teaches nothing: EPERM, counted
/// `unsolicited`. Then the real answer (the question's port, id and question) teaches
/// its address, once: the same answer again is `unsolicited` too.
fn forged_udp_teaches_nothing(lab: &str, forged: impl Fn(&Pending, &str) -> (u16, u16, Wire)) {
    let replies = [(
        "other.lab.test".to_owned(),
        Wire::answer("other.lab.test", 300, &[&named(309)]),
        Delivery::Whole,
    )];
    let mut t = Names::forgeries(lab, &replies);
    let p = t.pending();
    let s0 = t.agent.status();
    let (port, id, msg) = forged(&p, &named(300));
    t.forge(port, id, &msg);
    assert_eq!(
        t.connect(&named(300)),
        "EPERM",
        "the forged answer taught its address"
    );
    let s1 = t.agent.status();
    let [u0, l0] = forgery_counters(&s0);
    assert_eq!(
        forgery_counters(&s1),
        [u0 + 1, l0],
        "[unsolicited, answers_learned]: {:#}",
        names(&s1)
    );
    assert!(peer_denies(&s1) > peer_denies(&s0), "{s1:#}");
    assert!(learned(&s1, &named(300)).is_none(), "{:#}", names(&s1));

    // The real answer: its question was not consumed by the forgery.
    t.forge(p.port, p.id, &Wire::answer(PENDING, 300, &[&named(301)]));
    assert_eq!(
        t.connect(&named(301)),
        "ok",
        "the real answer teaches its address"
    );
    let s2 = t.agent.status();
    assert_eq!(forgery_counters(&s2), [u0 + 1, l0 + 1], "{:#}", names(&s2));
    assert_learned(&s2, &named(301), WILDCARD, 360_000);
    // Once: the same answer again (a replay) finds no question.
    t.forge(p.port, p.id, &Wire::answer(PENDING, 300, &[&named(302)]));
    assert_eq!(
        t.connect(&named(302)),
        "EPERM",
        "a second answer to one question"
    );
    let s3 = t.agent.status();
    assert_eq!(forgery_counters(&s3), [u0 + 2, l0 + 1], "{:#}", names(&s3));
}

/// From the trusted resolver's address and port 53 to the port of a question in
/// flight, the right question, but another transaction id.
#[test]
fn udp_answer_with_a_wrong_id_teaches_nothing() {
    forged_udp_teaches_nothing("fid", |p, addr| {
        (p.port, p.id ^ 0x8001, Wire::answer(PENDING, 300, &[addr]))
    });
}

/// The right id and port, but an answer to another question (a listed name).
#[test]
fn udp_answer_to_another_question_teaches_nothing() {
    forged_udp_teaches_nothing("fquestion", |p, addr| {
        (p.port, p.id, Wire::answer("udp.lab.test", 300, &[addr]))
    });
}

/// The right id and question, sent to another port of this host than the one the
/// question left from (another socket connected to the same resolver).
#[test]
fn udp_answer_to_another_port_teaches_nothing() {
    forged_udp_teaches_nothing("fport", |p, addr| {
        (p.other_port, p.id, Wire::answer(PENDING, 300, &[addr]))
    });
}

/// A message with its length prefix hidden in a big TCP answer (a TXT record), where
/// the answer's second segment starts: the segment starts no message of the stream.
/// The client reads the whole TXT answer; the hidden address gets EPERM, counted
/// `unsolicited`; a good TCP answer of the same resolver still teaches.
#[test]
fn tcp_message_in_the_middle_of_an_answer_teaches_nothing() {
    let hidden = Wire::answer("mid.lab.test", 300, &[&named(310)]);
    let mut rdata = vec![b'x'; 300];
    rdata.extend_from_slice(&(hidden.0.len() as u16).to_be_bytes());
    rdata.extend_from_slice(&hidden.0);
    rdata.extend(vec![b'y'; 1200]);
    let outer = Wire::header(ANSWER_FLAGS, 1, 1)
        .question("mid.lab.test")
        .ptr(12)
        .fixed(portcullis_tests::dns::TYPE_TXT, 300, rdata.len() as u16);
    let split = outer.at() + 300;
    let outer = outer.bytes(&rdata);
    let replies = [
        (
            "mid.lab.test".to_owned(),
            outer.clone(),
            Delivery::Split(split),
        ),
        (
            "good.lab.test".to_owned(),
            Wire::answer("good.lab.test", 300, &[&named(311)]),
            Delivery::Whole,
        ),
    ];
    let t = Names::forgeries("fmid", &replies);
    let s0 = t.agent.status();
    let got = t.run_resolve(&format!(
        "{} dns-ask {} mid.lab.test --tcp --hold",
        net_py(),
        t.fake
    ));
    assert_eq!(
        got,
        serde_json::json!({"bytes": outer.0.len(), "id_ok": true}),
        "the client reads the whole TXT answer"
    );
    assert_eq!(
        t.connect(&named(310)),
        "EPERM",
        "the hidden message taught its address"
    );
    let s1 = t.agent.status();
    let [u0, l0] = forgery_counters(&s0);
    assert_eq!(forgery_counters(&s1), [u0 + 1, l0], "{:#}", names(&s1));
    assert!(peer_denies(&s1) > peer_denies(&s0), "{s1:#}");
    let (addr, verdict) = t.resolve_one_at(&t.fake, "good.lab.test", Query::Tcp);
    assert_eq!(
        (addr, verdict.as_str()),
        (named(311), "ok"),
        "a good TCP answer"
    );
    let s2 = t.agent.status();
    assert_eq!(forgery_counters(&s2), [u0 + 1, l0 + 1], "{:#}", names(&s2));
}

/// TCP segments that do not start the answer at its sequence number: one 4 KiB ahead
/// of it (out of order, before the answer) and one at the answer's own sequence number
/// after it (a retransmission that says something else). Each carries a whole message
/// with the right id and question and teaches nothing (EPERM, `unsolicited`); the real
/// answers between them teach theirs.
#[test]
fn tcp_out_of_order_and_retransmitted_segments_teach_nothing() {
    let ahead = Wire::answer("ahead.lab.test", 300, &[&named(320)]);
    let again = Wire::answer("again.lab.test", 300, &[&named(322)]);
    let replies = [
        (
            "ahead.lab.test".to_owned(),
            Wire::answer("ahead.lab.test", 300, &[&named(321)]),
            Delivery::Ahead(ahead),
        ),
        (
            "again.lab.test".to_owned(),
            Wire::answer("again.lab.test", 300, &[&named(323)]),
            Delivery::Again(again),
        ),
    ];
    let t = Names::forgeries("fooo", &replies);
    let mut s0 = t.agent.status();
    for (name, forged, real) in [("ahead.lab.test", 320, 321), ("again.lab.test", 322, 323)] {
        let got = t.run_resolve(&format!(
            "{} dns-ask {} {name} --tcp --hold",
            net_py(),
            t.fake
        ));
        assert_eq!(
            got["id_ok"], true,
            "{name}: the client reads the answer: {got}"
        );
        assert_eq!(
            t.connect(&named(real)),
            "ok",
            "{name}: the real answer teaches"
        );
        assert_eq!(
            t.connect(&named(forged)),
            "EPERM",
            "{name}: the segment off the answer's sequence number taught its address"
        );
        let s = t.agent.status();
        let [u0, l0] = forgery_counters(&s0);
        assert_eq!(
            forgery_counters(&s),
            [u0 + 1, l0 + 1],
            "{name}: [unsolicited, answers_learned]: {:#}",
            names(&s)
        );
        assert!(peer_denies(&s) > peer_denies(&s0), "{s:#}");
        s0 = s;
    }
}

/// Learned addresses survive a reload, and the names a reload changes apply at once to
/// them: with the name dropped from the group, its address (still learned) is denied
/// for new connects without any new DNS answer; with the name back, it is allowed again,
/// still without a new answer (the same entry, the same expiry). The `names` section
/// follows each state.
#[test]
fn reload_keeps_learned_addresses_and_applies_the_new_names_at_once() {
    const REPO: &str = "repo.lab.test";
    const OTHER: &str = "other.lab.test";
    let zone = Zone::new(300, &[(REPO, &named(80)), (OTHER, &named(81))]);
    let mut t = Names::new(
        "reload",
        &zone,
        Setup {
            members: &[REPO, OTHER],
            ..Setup::default()
        },
    );
    // Both listed names learned; an address no answer named is denied.
    for (name, i) in [(REPO, 80), (OTHER, 81)] {
        assert_eq!(t.resolve_one(name), (named(i), "ok".to_owned()), "{name}");
    }
    assert_eq!(t.connect(&named(82)), "EPERM", "an unlearned address");
    let s1 = t.agent.status();
    let expiry = assert_learned(&s1, &named(80), REPO, 360_000);
    assert_learned(&s1, &named(81), OTHER, 360_000);
    let answers = counter(&s1, "answers_learned");

    // repo.lab.test dropped (SIGHUP): its address is denied at once; the other stays.
    t.set_members(&[OTHER], false);
    assert_eq!(
        t.connect(&named(80)),
        "EPERM",
        "{REPO} is no longer listed: its learned address is denied at once"
    );
    assert_eq!(t.connect(&named(81)), "ok", "{OTHER} is still listed");
    let s2 = t.agent.status();
    assert!(
        peer_denies(&s2) > peer_denies(&s1),
        "the deny is counted with reason peer: {s2:#}"
    );
    assert!(
        learned(&s2, &named(80)).is_none(),
        "an address of names the live policy does not list is not shown: {:#}",
        names(&s2)
    );
    assert_learned(&s2, &named(81), OTHER, 360_000);

    // repo.lab.test back (`portcullis reload`): allowed again, from the kept entry.
    t.set_members(&[REPO, OTHER], true);
    assert_eq!(
        t.connect(&named(80)),
        "ok",
        "{REPO} listed again: its address, kept, is allowed without a new answer"
    );
    let s3 = t.agent.status();
    let again = assert_learned(&s3, &named(80), REPO, 360_000);
    assert!(
        again <= expiry,
        "the same entry (expiry {again} ms, was {expiry} ms): no new answer taught it"
    );
    assert_eq!(
        counter(&s3, "answers_learned"),
        answers,
        "no DNS answer since the first two: {:#}",
        names(&s3)
    );
    assert_eq!(peer_denies(&s3), peer_denies(&s2), "no new deny: {s3:#}");
    assert_eq!(t.connect(&named(82)), "EPERM", "an unlearned address");
}
