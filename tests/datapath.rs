//! The enforcement datapath against real traffic: cgroup programs loaded into
//! the running kernel by the real agent, real sockets and clients (curl, nc, dig against
//! dnsmasq, Python for exact errno and byte counts) across a veth pair between two
//! network namespaces. Every test checks the allowed outcome, the denied outcome and
//! the counters. What real traffic cannot carry, a loopback source from another device
//! (the kernel drops such a martian before any hook), `pc_ingress` is given by
//! BPF_PROG_TEST_RUN on crafted packets (`object::Ingress`).

use std::time::{Duration, Instant};

use portcullis_common::{
    policy::{DIR_IN, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
    stats::{self, Counter, dns, reason},
};
use portcullis_tests::{
    Lab, denied_port, denies,
    frames::{
        ETH_P_IP, ETH_P_IPV6, Frag4, NOT_FRAGMENTED, TCP_SYN, echo, eth, ext, ip_len, ipv4, ipv6,
        tcp, udp, v6_loopback,
    },
    must, net_py,
    object::{Ingress, mapped},
    rule, rule_field, rule_packets, stdout, web_out,
};

fn http_servers(lab: &mut Lab) {
    for port in [8080, 8081] {
        lab.spawn_b(&format!("exec python3 -m http.server {port} --bind ::"));
    }
    lab.wait_tcp(&lab.ns_b.clone(), &lab.b4.clone(), 8080);
    lab.wait_tcp(&lab.ns_b.clone(), &lab.b4.clone(), 8081);
}

fn connect(lab: &Lab, args: &str) -> String {
    stdout(&lab.on_a(&format!("{} connect {args}", net_py())))
        .trim()
        .to_owned()
}

#[test]
fn outbound_allowed_and_denied_with_eperm_over_ipv4_ipv6_and_mapped() {
    let mut lab = Lab::new("out");
    http_servers(&mut lab);
    let cfg = lab.config(&web_out(), "mode = \"enforce\"");
    let agent = lab.agent(&cfg, &[]);

    // Allowed: a real HTTP exchange, both ways.
    let ok = lab.on_a(&format!(
        "curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 http://{}:8080/",
        lab.b4
    ));
    assert_eq!(stdout(&ok), "200", "allowed outbound HTTP over IPv4 failed");
    let ok6 = lab.on_a(&format!(
        "curl -s -g -o /dev/null -w '%{{http_code}}' --max-time 5 'http://[{}]:8080/'",
        lab.b6
    ));
    assert_eq!(
        stdout(&ok6),
        "200",
        "allowed outbound HTTP over IPv6 failed"
    );

    // Denied: connect() fails at once with EPERM, no time-out.
    let t = Instant::now();
    let curl = lab.on_a(&format!(
        "curl -s -o /dev/null --max-time 5 http://{}:8081/",
        lab.b4
    ));
    assert_eq!(
        curl.status.code(),
        Some(7),
        "curl to a denied port should fail to connect"
    );
    assert!(
        t.elapsed() < Duration::from_secs(2) * portcullis_tests::patience(),
        "a denied connect must fail at once, took {:?}",
        t.elapsed()
    );
    assert_eq!(connect(&lab, &format!("{} 8081", lab.b6)), "EPERM");
    assert_eq!(
        connect(&lab, &format!("{} 8081 --mapped", lab.b4)),
        "EPERM",
        "IPv4-mapped socket"
    );
    assert_eq!(
        connect(&lab, &format!("{} 8080 --mapped", lab.b4)),
        "ok",
        "IPv4-mapped socket, allowed port"
    );

    let s = agent.status();
    assert!(
        rule_packets(&s, "web-out") >= 12,
        "web-out counted too little: {s:#}"
    );
    assert_eq!(
        denies(&s, "out", "no-rule", false).0,
        3,
        "three refused connects: {s:#}"
    );
    assert_eq!(
        denied_port(&s, "out", "tcp", 8081),
        3,
        "denied-ports table: {s:#}"
    );
    let out = agent.stop();
    assert!(
        out.lines().any(|l| l.contains("verdict=deny")
            && l.contains("direction=out")
            && l.contains("dport=8081")
            && l.contains("comm=curl")),
        "a deny log line naming the process: {out}"
    );
}

#[test]
fn inbound_allowed_denied_and_spoofed_source_ports_dropped() {
    let mut lab = Lab::new("in");
    let rules = &(rule("smtp-in", "in", "tcp", 2525, "") + &rule("dns-out", "out", "both", 53, ""));
    for port in [2525, 2526] {
        lab.spawn_a(&format!("exec {} listen {port}", net_py()));
    }
    lab.spawn_a(&format!(
        "exec {} listen 5353 --udp --log {}/udp-received",
        net_py(),
        lab.dir.display()
    ));
    for port in [2525, 2526] {
        lab.wait_tcp(&lab.ns_a.clone(), &lab.a4.clone(), port);
    }
    let cfg = lab.config(rules, "mode = \"enforce\"");
    let agent = lab.agent(&cfg, &[]);

    let ok = lab.on_b(&format!("nc -z -w 3 {} 2525", lab.a4));
    assert!(ok.status.success(), "allowed inbound 2525 over IPv4 failed");
    let ok6 = lab.on_b(&format!("nc -6 -z -w 3 {} 2525", lab.a6));
    assert!(
        ok6.status.success(),
        "allowed inbound 2525 over IPv6 failed"
    );

    // Denied inbound: no answer at all (not even a reset), so the client times out.
    let t = Instant::now();
    let denied = lab.on_b(&format!("nc -z -w 2 {} 2526", lab.a4));
    assert!(!denied.status.success(), "inbound to 2526 must be denied");
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "a dropped SYN gets no answer; got one after {:?}",
        t.elapsed()
    );
    let denied6 = lab.on_b(&format!("nc -6 -z -w 2 {} 2526", lab.a6));
    assert!(
        !denied6.status.success(),
        "inbound IPv6 to 2526 must be denied"
    );

    // Spoofed replies: source port 53 (an allowed outbound port) opens nothing inbound.
    let spoof = lab.on_b(&format!("nc -z -w 2 -p 53 {} 2526", lab.a4));
    assert!(
        !spoof.status.success(),
        "TCP from source port 53 to a closed-by-policy port must be dropped"
    );
    lab.on_b(&format!("echo spoofed | nc -u -w 1 -p 53 {} 5353", lab.a4));
    std::thread::sleep(Duration::from_millis(300));
    let got = std::fs::read_to_string(lab.dir.join("udp-received")).unwrap_or_default();
    assert!(
        got.is_empty(),
        "a UDP datagram from source port 53 reached a socket no rule opens: {got:?}"
    );

    let s = agent.status();
    assert!(
        rule_packets(&s, "smtp-in") >= 6,
        "smtp-in counted too little: {s:#}"
    );
    assert!(
        denied_port(&s, "in", "tcp", 2526) >= 3,
        "in/tcp/2526 not in the denied table: {s:#}"
    );
    assert!(
        denied_port(&s, "in", "udp", 5353) >= 1,
        "in/udp/5353 not in the denied table: {s:#}"
    );
    assert!(denies(&s, "in", "no-rule", false).0 >= 4, "{s:#}");
    assert_eq!(rule_packets(&s, "dns-out"), 0, "nothing went to 53: {s:#}");
}

#[test]
fn socket_bound_to_an_inbound_port_cannot_open_other_outbound_flows() {
    let mut lab = Lab::new("bind");
    http_servers(&mut lab);
    let rules = web_out() + &rule("https-in", "in", "tcp", 4443, "");
    let cfg = lab.config(&rules, "mode = \"enforce\"");
    let agent = lab.agent(&cfg, &[]);
    assert_eq!(
        connect(&lab, &format!("{} 8081 --bind 4443", lab.b4)),
        "EPERM",
        "bound to an in-port, to a denied port"
    );
    assert_eq!(
        connect(&lab, &format!("{} 8080 --bind 4443", lab.b4)),
        "ok",
        "bound to an in-port, to an allowed port"
    );
    let s = agent.status();
    assert_eq!(denies(&s, "out", "no-rule", false).0, 1, "{s:#}");
    assert!(rule_packets(&s, "web-out") >= 2, "{s:#}");
    assert_eq!(
        rule_packets(&s, "https-in"),
        0,
        "the in-rule must not be credited: {s:#}"
    );
}

#[test]
fn dns_over_udp_and_tcp_with_dnsmasq() {
    let mut lab = Lab::new("dns");
    let rules = &rule("dns", "out", "both", 53, "");
    for port in [53, 5300] {
        lab.spawn_b(&format!(
            "exec dnsmasq --keep-in-foreground --port={port} --listen-address=0.0.0.0 --bind-interfaces --no-resolv --no-hosts --pid-file={}/dnsmasq{port}.pid --address=/lab.test/198.18.99.99",
            lab.dir.display()
        ));
    }
    lab.wait_tcp(&lab.ns_b.clone(), &lab.b4.clone(), 53);
    let cfg = lab.config(rules, "mode = \"enforce\"");
    let agent = lab.agent(&cfg, &[]);
    let udp = lab.on_a(&format!("dig +short +tries=1 +time=2 @{} lab.test", lab.b4));
    assert_eq!(stdout(&udp).trim(), "198.18.99.99", "DNS over UDP: {udp:?}");
    let tcp = lab.on_a(&format!(
        "dig +tcp +short +tries=1 +time=2 @{} lab.test",
        lab.b4
    ));
    assert_eq!(stdout(&tcp).trim(), "198.18.99.99", "DNS over TCP: {tcp:?}");
    let denied = lab.on_a(&format!(
        "dig +short +tries=1 +time=2 -p 5300 @{} lab.test",
        lab.b4
    ));
    assert!(
        !stdout(&denied).contains("198.18.99.99"),
        "DNS to port 5300 must be denied: {denied:?}"
    );
    let s = agent.status();
    assert!(rule_packets(&s, "dns") >= 4, "{s:#}");
    assert!(denied_port(&s, "out", "udp", 5300) >= 1, "{s:#}");
}

#[test]
fn audit_mode_passes_everything_and_counts_every_would_deny_exactly() {
    let mut lab = Lab::new("audit");
    http_servers(&mut lab);
    let rules = web_out() + &rule("sink", "out", "udp", 9000, "");
    for port in [9000, 9001] {
        lab.spawn_b(&format!("exec python3 -c 'import socket\ns=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM)\ns.setsockopt(socket.IPPROTO_IPV6,socket.IPV6_V6ONLY,0)\ns.bind((\"::\",{port}))\nwhile True: s.recv(9000)'"));
    }
    std::thread::sleep(Duration::from_millis(300));
    let cfg = lab.config(&rules, "mode = \"audit\"");
    let agent = lab.agent(&cfg, &[]);

    // What enforce would refuse goes through.
    let denied = lab.on_a(&format!(
        "curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 http://{}:8081/",
        lab.b4
    ));
    assert_eq!(stdout(&denied), "200", "audit mode must not drop");
    // Exact counts: 10 datagrams of 100 bytes each, IPv4 (+28) and IPv6 (+48).
    let send = |host: &str, port: u16| {
        stdout(&lab.on_a(&format!("{} udp-send {host} {port} 10 100", net_py())))
            .trim()
            .to_owned()
    };
    assert_eq!(send(&lab.b4, 9000), "sent=10 eperm=0");
    assert_eq!(send(&lab.b4, 9001), "sent=10 eperm=0");
    assert_eq!(send(&lab.b6, 9001), "sent=10 eperm=0");

    let s = agent.status();
    assert_eq!(rule_packets(&s, "sink"), 10, "{s:#}");
    assert_eq!(rule_field(&s, "sink", "bytes"), 10 * 128, "{s:#}");
    let (p, b) = denies(&s, "out", "no-rule", true);
    // The curl flow's packets (egress side) plus the 20 datagrams.
    let (curl_p, curl_b) = (p - 20, b - 10 * 128 - 10 * 148);
    assert!(
        curl_p >= 4 && curl_b > 0,
        "the curl flow's would-denies: {s:#}"
    );
    assert_eq!(denied_port(&s, "out", "udp", 9001), 20, "{s:#}");
    assert_eq!(
        denies(&s, "out", "no-rule", false),
        (0, 0),
        "nothing may be dropped in audit mode: {s:#}"
    );
    assert_eq!(s["denied"]["packets"], 0);
}

#[test]
fn loopback_is_exempt_by_default_and_enforced_on_request() {
    let mut lab = Lab::new("lo");
    lab.spawn_a(&format!("exec {} listen 8081 --host 127.0.0.1", net_py()));
    lab.spawn_a(&format!("exec {} listen 8082 --host 127.0.0.1", net_py()));
    lab.wait_tcp(&lab.ns_a.clone(), "127.0.0.1", 8081);
    lab.wait_tcp(&lab.ns_a.clone(), "127.0.0.1", 8082);
    let rules = web_out() + &rule("local-db", "both", "tcp", 8082, "scope = \"loopback\"");
    {
        let cfg = lab.config(&rules, "mode = \"enforce\"");
        let agent = lab.agent(&cfg, &[]);
        assert_eq!(
            connect(&lab, "127.0.0.1 8081"),
            "ok",
            "loopback is exempt by default"
        );
        let s = agent.status();
        assert!(
            s["loopback_exempt"]["packets"].as_u64().unwrap_or(0) >= 3,
            "{s:#}"
        );
        assert_eq!(s["denied"]["packets"], 0, "{s:#}");
        agent.stop();
    }
    let cfg = lab.config(&rules, "mode = \"enforce\"\nloopback = \"enforce\"");
    let agent = lab.agent(&cfg, &[]);
    assert_eq!(
        connect(&lab, "127.0.0.1 8081"),
        "EPERM",
        "loopback = enforce applies the rules"
    );
    assert_eq!(
        connect(&lab, "127.0.0.1 8082"),
        "ok",
        "a scope = loopback rule opens the local service"
    );
    let s = agent.status();
    assert_eq!(denies(&s, "out", "no-rule", false).0, 1, "{s:#}");
    assert!(
        rule_packets(&s, "local-db/out") + rule_packets(&s, "local-db/in") >= 3,
        "{s:#}"
    );
}

/// What `pc_ingress` must make of a packet in the loopback exemption's reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lo {
    /// Passes, counted as loopback-exempt.
    Exempt,
    /// Dropped, counted under this inbound reason; nothing counted as exempt.
    Deny(u32),
}

const LO4: [u8; 4] = [127, 0, 0, 1];
const STUB4: [u8; 4] = [127, 0, 0, 53];

fn v4(src: [u8; 4], protocol: u8, l4: &[u8]) -> Vec<u8> {
    eth(
        &[],
        ETH_P_IP,
        &ipv4(src, LO4, protocol, &[], NOT_FRAGMENTED, l4),
    )
}

fn v6(src: [u8; 16], next: u8, payload: &[u8]) -> Vec<u8> {
    eth(&[], ETH_P_IPV6, &ipv6(src, v6_loopback(), next, payload))
}

/// The loopback exemption's early exit passes nothing the full verdict would not: each
/// packet below gets the verdict and the counter it got before there was one. A
/// loopback source from another device is spoofed; loopback enforced goes by the rules;
/// the unspecified and IPv4-mapped sources are spoofed; a malformed loopback packet is
/// malformed; the shapes the early exit leaves to the full parse (options, extension
/// headers, fragments, ICMP) are exempt all the same; and a local stub resolver's
/// answer (from port 53, TCP or UDP) still reaches the DNS learner (counted there as
/// from an untrusted resolver: this object has none), where another exempt packet does
/// not.
#[test]
fn loopback_early_exit_passes_only_what_the_full_verdict_exempts() {
    let mut ig = Ingress::load();
    ig.set_config(false);
    let udp25 = udp(40000, 25, b"mail");
    let syn25 = tcp(40000, 25, TCP_SYN);
    let mut opts_v4 = ipv4(LO4, LO4, IPPROTO_UDP, &[1, 1, 1, 0], NOT_FRAGMENTED, &udp25);
    opts_v4 = eth(&[], ETH_P_IP, &opts_v4);
    let later_fragment = Frag4 {
        id: 7,
        more: false,
        offset: 2,
    };
    let mut hbh_udp = ext(IPPROTO_UDP, 1);
    hbh_udp.extend_from_slice(&udp25);
    let cases: Vec<(&str, Vec<u8>, bool, Lo)> = vec![
        ("v4 udp", v4(LO4, IPPROTO_UDP, &udp25), true, Lo::Exempt),
        ("v4 tcp", v4(LO4, IPPROTO_TCP, &syn25), true, Lo::Exempt),
        (
            "v4 from 127.1.2.3",
            v4([127, 1, 2, 3], IPPROTO_UDP, &udp25),
            true,
            Lo::Exempt,
        ),
        (
            "v6 udp",
            v6(v6_loopback(), IPPROTO_UDP, &udp25),
            true,
            Lo::Exempt,
        ),
        (
            "v6 tcp",
            v6(v6_loopback(), IPPROTO_TCP, &syn25),
            true,
            Lo::Exempt,
        ),
        // Left to the full parse, exempt there.
        ("v4 with options", opts_v4, true, Lo::Exempt),
        (
            "v4 later fragment",
            eth(
                &[],
                ETH_P_IP,
                &ipv4(LO4, LO4, IPPROTO_UDP, &[], later_fragment, &udp25),
            ),
            true,
            Lo::Exempt,
        ),
        (
            "v6 hop-by-hop then udp",
            v6(v6_loopback(), 0, &hbh_udp),
            true,
            Lo::Exempt,
        ),
        (
            "v4 echo request",
            v4(LO4, IPPROTO_ICMP, &echo(8, 1)),
            true,
            Lo::Exempt,
        ),
        // Not from the loopback device: spoofed.
        (
            "v4 udp from another device",
            v4(LO4, IPPROTO_UDP, &udp25),
            false,
            Lo::Deny(reason::SPOOFED),
        ),
        (
            "v6 tcp from another device",
            v6(v6_loopback(), IPPROTO_TCP, &syn25),
            false,
            Lo::Deny(reason::SPOOFED),
        ),
        // Spoofed even on the loopback device.
        (
            "v6 from ::ffff:127.0.0.1",
            v6(mapped(LO4), IPPROTO_UDP, &udp25),
            true,
            Lo::Deny(reason::SPOOFED),
        ),
        (
            "v4 from 0.0.0.0",
            v4([0; 4], IPPROTO_UDP, &udp25),
            true,
            Lo::Deny(reason::SPOOFED),
        ),
        // A local address other than loopback on the loopback device: the rules decide.
        (
            "v4 from 198.18.0.1",
            v4([198, 18, 0, 1], IPPROTO_UDP, &udp25),
            true,
            Lo::Deny(reason::NO_RULE),
        ),
        // Malformed: a TCP header cut before its flags, a UDP header cut after an
        // extension header.
        (
            "v4 tcp cut short",
            v4(LO4, IPPROTO_TCP, &syn25[..8]),
            true,
            Lo::Deny(reason::MALFORMED),
        ),
        (
            "v6 udp cut short",
            v6(v6_loopback(), 0, &hbh_udp[..10]),
            true,
            Lo::Deny(reason::MALFORMED),
        ),
    ];
    let denied = |ig: &Ingress, why| ig.stat(stats::deny_index(false, DIR_IN, why));
    for (name, frame, from_lo, expect) in &cases {
        let exempt0 = ig.stat(stats::PASS_LOOPBACK);
        let deny0 = match expect {
            Lo::Deny(why) => denied(&ig, *why),
            Lo::Exempt => Counter::default(),
        };
        let verdict = ig.run(frame, *from_lo);
        let exempt = ig.stat(stats::PASS_LOOPBACK);
        match expect {
            Lo::Exempt => {
                assert_eq!(verdict, 1, "{name}: should pass as loopback");
                assert_eq!(exempt.packets, exempt0.packets + 1, "{name}: exempt count");
                assert_eq!(
                    exempt.bytes,
                    exempt0.bytes + ip_len(frame),
                    "{name}: exempt bytes"
                );
            }
            Lo::Deny(why) => {
                assert_eq!(
                    verdict,
                    0,
                    "{name}: should be dropped ({})",
                    reason::NAMES[*why as usize]
                );
                assert_eq!(exempt, exempt0, "{name}: counted as loopback-exempt");
                assert_eq!(
                    denied(&ig, *why).packets,
                    deny0.packets + 1,
                    "{name}: inbound {} count",
                    reason::NAMES[*why as usize]
                );
            }
        }
    }
    assert_eq!(
        ig.stat(stats::MALFORMED).packets,
        2,
        "the two cut-short packets"
    );

    // A stub resolver's answers reach the learner; another loopback packet does not.
    let untrusted = |ig: &Ingress| ig.dns_stat(dns::UNTRUSTED);
    let before = untrusted(&ig);
    assert_eq!(
        ig.run(
            &v4(LO4, IPPROTO_UDP, &udp(40000, 53, b"not an answer")),
            true
        ),
        1
    );
    assert_eq!(untrusted(&ig), before, "a packet to port 53 is no answer");
    for (name, l4, protocol) in [
        ("udp", udp(53, 40000, &[0; 12]), IPPROTO_UDP),
        ("tcp", tcp(53, 40000, TCP_SYN), IPPROTO_TCP),
    ] {
        let n = untrusted(&ig);
        let exempt0 = ig.stat(stats::PASS_LOOPBACK).packets;
        assert_eq!(
            ig.run(&v4(STUB4, protocol, &l4), true),
            1,
            "stub {name}: passes"
        );
        assert_eq!(
            ig.stat(stats::PASS_LOOPBACK).packets,
            exempt0 + 1,
            "stub {name}: exempt"
        );
        assert_eq!(
            untrusted(&ig),
            n + 1,
            "stub {name}: the learner saw the answer"
        );
    }
    let n = untrusted(&ig);
    assert_eq!(
        ig.run(
            &v6(v6_loopback(), IPPROTO_UDP, &udp(53, 40000, &[0; 12])),
            true
        ),
        1
    );
    assert_eq!(
        untrusted(&ig),
        n + 1,
        "an answer from ::1 reaches the learner"
    );

    // Loopback enforced: judged by the rules (none open port 25), never exempt.
    ig.set_config(true);
    let exempt0 = ig.stat(stats::PASS_LOOPBACK);
    let no_rule0 = denied(&ig, reason::NO_RULE).packets;
    assert_eq!(
        ig.run(&v4(LO4, IPPROTO_UDP, &udp25), true),
        0,
        "loopback = enforce"
    );
    assert_eq!(
        ig.run(&v6(v6_loopback(), IPPROTO_TCP, &syn25), true),
        0,
        "loopback = enforce (v6)"
    );
    assert_eq!(denied(&ig, reason::NO_RULE).packets, no_rule0 + 2);
    assert_eq!(
        ig.stat(stats::PASS_LOOPBACK),
        exempt0,
        "nothing exempt when enforced"
    );
}

/// UDP state is per flow, not per socket. A socket connect()ed to an
/// allowed server cannot sendto() anywhere else, not after connect(AF_UNSPEC), not after
/// a refused re-connect, and a loopback-exempt socket carries no other destination.
#[test]
fn connected_udp_socket_cannot_send_to_other_destinations() {
    let mut lab = Lab::new("udpflow");
    let rules = rule("dns-out", "out", "udp", 5300, "");
    for port in [5300, 9999] {
        lab.spawn_b(&format!(
            "exec {} listen {port} --udp --log {}/b-{port}",
            net_py(),
            lab.dir.display()
        ));
    }
    std::thread::sleep(Duration::from_millis(300));
    let cfg = lab.config(&rules, "mode = \"enforce\"");
    let agent = lab.agent(&cfg, &[]);
    let out = stdout(&lab.on_a(&format!(
        "{} udp-per-flow {} 5300 9999 127.0.0.1",
        net_py(),
        lab.b4
    )));
    let step = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in {out}"))
            .to_owned()
    };
    assert_eq!(step("connect"), "ok", "{out}");
    assert_eq!(step("send"), "ok", "the allowed flow works: {out}");
    for bypass in [
        "sendto_other",
        "after_unspec",
        "after_refused",
        "after_loopback",
    ] {
        assert_eq!(step(bypass), "EPERM", "{bypass}: {out}");
    }
    assert_eq!(step("reconnect_denied"), "EPERM", "{out}");
    assert_eq!(step("send_after_refused"), "ok", "{out}");
    std::thread::sleep(Duration::from_millis(300));
    let got = std::fs::read_to_string(lab.dir.join("b-9999")).unwrap_or_default();
    assert!(got.is_empty(), "datagrams reached the denied port: {got:?}");
    let ok = std::fs::read_to_string(lab.dir.join("b-5300")).unwrap_or_default();
    assert!(
        ok.contains("allowed"),
        "the allowed datagrams arrived: {ok:?}"
    );
    let s = agent.status();
    assert!(rule_packets(&s, "dns-out") >= 2, "{s:#}");
    // Four sendto()s and one refused connect().
    assert_eq!(denied_port(&s, "out", "udp", 9999), 5, "{s:#}");
    assert_eq!(denies(&s, "out", "no-rule", false).0, 5, "{s:#}");
}

/// Spoofed IPv4-mapped sources: an IPv6 datagram from an IPv4-mapped source (here
/// `::ffff:127.0.0.1`, which passed as loopback) is denied as spoofed, never delivered.
#[test]
fn ipv4_mapped_sources_are_spoofed_not_loopback() {
    let mut lab = Lab::new("spoof");
    lab.spawn_a(&format!(
        "exec {} listen 5353 --udp --log {}/a-5353",
        net_py(),
        lab.dir.display()
    ));
    std::thread::sleep(Duration::from_millis(300));
    let cfg = lab.config(&web_out(), "mode = \"enforce\"");
    let agent = lab.agent(&cfg, &[]);
    let mac = must(&format!(
        "ip -n {} -br link show {} | awk '{{print $3}}'",
        lab.ns_a,
        lab.veth_a()
    ));
    let b_iface = format!("{}y", lab.tag);
    for src in ["::ffff:127.0.0.1", "::ffff:198.18.0.9"] {
        lab.on_b(&format!(
            "{} udp6-frame {b_iface} {} {src} {} 40000 5353 spoofed",
            net_py(),
            mac.trim(),
            lab.a6
        ));
    }
    std::thread::sleep(Duration::from_millis(300));
    let got = std::fs::read_to_string(lab.dir.join("a-5353")).unwrap_or_default();
    assert!(
        got.is_empty(),
        "a mapped source reached the socket: {got:?}"
    );
    let s = agent.status();
    assert_eq!(denies(&s, "in", "spoofed", false).0, 2, "{s:#}");
    assert_eq!(s["loopback_exempt"]["packets"], 0, "{s:#}");
    // The honest path still works.
    assert_eq!(
        connect(&lab, &format!("{} 8081", lab.b4)),
        "EPERM",
        "the policy still applies"
    );
}

/// Reads a lab file, empty when it does not exist yet.
fn lab_file(lab: &Lab, name: &str) -> String {
    std::fs::read_to_string(lab.dir.join(name)).unwrap_or_default()
}

/// Polls (up to 10 s) until `ready`; panics with `what` otherwise.
fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10) * portcullis_tests::patience();
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Revocation, cgroup layer: a reload that removes a TCP rule and
/// narrows a UDP rule stops the flows they allowed at their next packet. A client holds
/// one connection of each; after the reload its next TCP segment and datagram are
/// denied under reason `revoked` (counted, in the deny log, in the metrics), the server
/// receives nothing more, and the flows the new policy still allows work.
#[test]
fn reload_revokes_established_tcp_and_udp_flows_at_the_cgroup_layer() {
    let mut lab = Lab::new("revoke");
    lab.web_listeners_on_b();
    lab.spawn_b(&format!(
        "exec {} listen 7000 --log {}/b-7000",
        net_py(),
        lab.dir.display()
    ));
    lab.spawn_b(&format!(
        "exec {} listen 7001 --udp --log {}/b-7001",
        net_py(),
        lab.dir.display()
    ));
    lab.wait_tcp(&lab.ns_b.clone(), &lab.b4.clone(), 7000);
    let before = web_out()
        + &rule("app-tcp", "out", "tcp", 7000, "")
        + &rule("app-udp", "out", "udp", 7001, "");
    let cfg = lab.config(&before, "mode = \"enforce\"");
    let metrics = "127.0.0.1:39975";
    let mut agent = lab.agent(&cfg, &["--metrics-listen", metrics]);
    let (go, out) = (lab.dir.join("go"), lab.dir.join("hold.json"));
    lab.spawn_a(&format!(
        "exec {} hold {} 7000 7001 {} {}",
        net_py(),
        lab.b4,
        go.display(),
        out.display()
    ));
    wait_for("the held flows' first bytes", || {
        lab_file(&lab, "b-7000").contains('1') && lab_file(&lab, "b-7001").contains('1')
    });
    let s0 = agent.status();
    assert!(rule_packets(&s0, "app-tcp") > 0 && rule_packets(&s0, "app-udp") > 0);
    // The TCP rule goes; the UDP rule is narrowed to another port.
    lab.config(
        &(web_out() + &rule("app-udp", "out", "udp", 7002, "")),
        "mode = \"enforce\"",
    );
    agent.reload().expect("reload");
    std::fs::write(&go, "").unwrap();
    let read = || serde_json::from_str::<serde_json::Value>(&lab_file(&lab, "hold.json")).ok();
    wait_for("the held flows' second sends", || read().is_some());
    let res = read().expect("hold.json");
    assert_eq!(
        res["udp2"], "EPERM",
        "the revoked datagram is refused: {res}"
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !lab_file(&lab, "b-7000").contains('2'),
        "the revoked TCP flow still delivers"
    );
    assert!(
        !lab_file(&lab, "b-7001").contains('2'),
        "the revoked UDP flow still delivers"
    );
    let s = agent.status();
    let revoked = denies(&s, "out", "revoked", false).0;
    assert!(revoked >= 2, "both flows counted as revoked: {s:#}");
    assert_eq!(
        denies(&s, "out", "no-rule", false).0,
        denies(&s0, "out", "no-rule", false).0,
        "a revoked flow is not a no-rule deny: {s:#}"
    );
    // What the new policy allows still works; what it does not is denied.
    assert_eq!(connect(&lab, &format!("{} 8080", lab.b4)), "ok");
    assert_eq!(connect(&lab, &format!("{} 8081", lab.b4)), "EPERM");
    let metrics_text = stdout(&portcullis_tests::sh(&format!(
        "curl -s http://{metrics}/metrics"
    )));
    assert!(
        metrics_text.lines().any(|l| {
            l.starts_with("portcullis_denied_packets_total{")
                && l.contains("reason=\"revoked\"")
                && l.contains("verdict=\"deny\"")
        }),
        "metrics count the revoked packets:\n{metrics_text}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let log = agent.stop();
    for port in [7000, 7001] {
        assert!(
            log.lines().any(|l| l.contains("reason=revoked")
                && l.contains(&format!("dport={port}"))
                && l.contains("verdict=deny")
                // The event names the socket's cgroup (read only for a sent event).
                && l.contains("cgroup_path=")),
            "the deny log has the revoked flow to {port}, with its cgroup:\n{log}"
        );
    }
    portcullis_tests::figures(
        "reload_revokes_cgroup",
        &[
            ("revoked_packets", revoked.to_string()),
            ("judged_at", "the first packet after the reload".to_owned()),
        ],
    );
}

/// ICMP related-only, cgroup layer, real traffic: a raw ICMP listener
/// in the enforced cgroup on A receives the port-unreachable B's kernel sends for a
/// datagram A really sent, and the echo reply to A's own ping; it never receives an
/// echo reply A did not ask for, nor an error quoting a flow A never had. Both are
/// counted under `state`.
#[test]
fn icmp_errors_and_echo_replies_pass_only_for_flows_this_host_has() {
    let mut lab = Lab::new("icmprel");
    let cfg = lab.config(
        &(web_out() + &rule("probe-out", "out", "udp", 7009, "")),
        "mode = \"enforce\"",
    );
    let agent = lab.agent(&cfg, &[]);
    let log = lab.dir.join("a-icmp");
    lab.spawn_a(&format!(
        "exec {} icmp-listen 4 {}",
        net_py(),
        log.display()
    ));
    wait_for("the ICMP listener", || log.exists());
    let s0 = agent.status();
    // An error quoting a flow A never had (A:5555 -> B:9999/udp): host unreachable.
    lab.on_b(&format!(
        "{} icmp-error {} 3 1 {} 5555 {} 9999 17",
        net_py(),
        lab.a4,
        lab.a4,
        lab.b4
    ));
    // An echo reply A never asked for (type 0, code 0).
    lab.on_b(&format!(
        "{} icmp-error {} 0 0 {} 5555 {} 9999 17",
        net_py(),
        lab.a4,
        lab.a4,
        lab.b4
    ));
    // A real flow: an allowed datagram to a port nobody listens on; B's kernel answers
    // with port unreachable (type 3, code 3) quoting it.
    let sent = stdout(&lab.on_a(&format!("{} udp-send {} 7009 1 8", net_py(), lab.b4)));
    assert_eq!(
        sent.trim(),
        "sent=1 eperm=0",
        "the allowed datagram goes out"
    );
    // And A's own ping gets its reply.
    let ping = stdout(&lab.on_a(&format!("{} ping {} 4242", net_py(), lab.b4)));
    assert_eq!(
        ping.trim(),
        "reply",
        "the reply to A's own echo request passes"
    );
    wait_for("the port unreachable", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("3 3"))
    });
    std::thread::sleep(Duration::from_millis(300));
    let seen = std::fs::read_to_string(&log).unwrap();
    let count = |what: &str| seen.lines().filter(|l| *l == what).count();
    assert_eq!(
        count("3 3"),
        1,
        "the error quoting A's real flow passes: {seen:?}"
    );
    assert_eq!(
        count("3 1"),
        0,
        "the error quoting an unknown flow is dropped: {seen:?}"
    );
    assert_eq!(
        count("0 0"),
        1,
        "only the reply to A's own ping passes, not the unsolicited one: {seen:?}"
    );
    let s = agent.status();
    assert!(
        denies(&s, "in", "state", false).0 >= denies(&s0, "in", "state", false).0 + 2,
        "the unknown error and the unsolicited reply are counted under state: {s:#}"
    );
    assert!(rule_packets(&s, "probe-out") >= 1, "{s:#}");
}

/// Audit accounting per flow: in audit mode, a blocked outbound UDP flow and a
/// blocked TCP connection, both with replies, are one would-deny flow each, their
/// replies are counted against them (direction out), and `report --json` lists exactly
/// the two outbound ports and no inbound one (before, the replies showed up as inbound
/// no-rule would-denies on ephemeral ports, and `report` suggested bogus inbound rules).
#[test]
fn audit_counts_replies_against_the_outbound_flow_and_report_suggests_only_it() {
    let mut lab = Lab::new("auditacct");
    http_servers(&mut lab);
    lab.spawn_b("exec python3 -c 'import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind((\"0.0.0.0\",9001))\nwhile True:\n    d,a=s.recvfrom(9000)\n    s.sendto(d,a)'");
    lab.wait_udp(&lab.ns_b.clone(), 9001);
    let cfg = lab.config(&web_out(), "mode = \"audit\"");
    let agent = lab.agent(&cfg, &[]);
    let echo = stdout(&lab.on_a(&format!(
        "python3 -c 'import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(2)\nn=0\nfor i in range(5):\n    s.sendto(b\"x\"*10,(\"{}\",9001))\n    n+=len(s.recv(100))>0\nprint(n)'",
        lab.b4
    )));
    assert_eq!(
        echo.trim(),
        "5",
        "audit mode passes the flow and its replies"
    );
    let http = stdout(&lab.on_a(&format!(
        "curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 http://{}:8081/",
        lab.b4
    )));
    assert_eq!(
        http, "200",
        "audit mode passes the TCP flow and its replies"
    );
    // The allowed flow is counted as allowed, not as a would-deny.
    let ok = stdout(&lab.on_a(&format!(
        "curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 http://{}:8080/",
        lab.b4
    )));
    assert_eq!(ok, "200");
    std::thread::sleep(Duration::from_millis(2500));
    let s = agent.status();
    assert!(rule_packets(&s, "web-out") > 0, "{s:#}");
    let (out_p, _) = denies(&s, "out", "no-rule", true);
    assert!(
        out_p >= 10 + 4,
        "the UDP datagrams and echoes, and the TCP flow's packets, are would-denies of the outbound flows: {s:#}"
    );
    for reason in ["no-rule", "state", "peer"] {
        assert_eq!(
            denies(&s, "in", reason, true).0,
            0,
            "no reply is counted as an inbound {reason} would-deny: {s:#}"
        );
    }
    assert_eq!(
        denied_port(&s, "out", "udp", 9001),
        10,
        "datagrams and echoes: {s:#}"
    );
    assert_eq!(
        denies(&s, "out", "no-rule", false),
        (0, 0),
        "audit drops nothing"
    );
    let out = agent.cli(&["report", "--json"]);
    assert!(out.status.success(), "{}", portcullis_tests::stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("report JSON");
    let ports = portcullis_tests::reported_ports(&report);
    assert_eq!(
        ports,
        vec![
            ("out".to_owned(), "tcp".to_owned(), 8081),
            ("out".to_owned(), "udp".to_owned(), 9001)
        ],
        "report suggests exactly the outbound ports: {report:#}"
    );
    for p in report["ports"].as_array().unwrap() {
        assert_eq!(p["events"], 1, "one would-deny event per flow: {p:#}");
    }
}
