//! The XDP ingress filter, in the kernel.
//!
//! - `corpus_*`: BPF_PROG_TEST_RUN over crafted frames, each with its expected action
//!   and the counter it must land in; after the run every counter must equal the sum the
//!   corpus predicts (packets and bytes), in enforce and in audit mode.
//! - `veth_*`: a protected namespace with `pc_xdp` on its veth, a peer namespace that
//!   scans it with nmap; then flows the protected side opens, whose replies must pass.
//!
//! Root only; they fail, never skip, when BPF is unavailable.

use std::collections::{BTreeSet, HashMap};

use portcullis_common::{
    policy::{DIR_IN, DIR_OUT, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP},
    stats::{self, reason},
};
use portcullis_tests::{Lab, frames::*, object::*, require_root};

// Rules of the test policy.
const R_SMTP: u16 = 1; // in tcp 25
const R_HTTPS: u16 = 2; // in tcp 443
const R_DNS: u16 = 3; // in udp 53
const R_LDAP: u16 = 4; // in tcp 389, peer set 1 only
const R_OUT_SMTP: u16 = 5; // out tcp 25 (flows in PC_FLOWS_OUT)
const R_OUT_DNS: u16 = 6; // out udp 53 (flows in PC_FLOWS_OUT)

const LOCAL4: [u8; 4] = [198, 18, 0, 1];
const PEER4: [u8; 4] = [198, 18, 0, 2];
const STRANGER4: [u8; 4] = [198, 19, 0, 2];

fn local6() -> [u8; 16] {
    v6(0, 1)
}
fn peer6() -> [u8; 16] {
    v6(0, 2)
}
fn stranger6() -> [u8; 16] {
    v6(1, 2)
}

/// Where a frame's packet must be counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Passes, counted against this rule.
    Rule(u16),
    /// Passes as ICMP error / neighbour discovery.
    Icmp,
    /// Passes as a non-IP frame.
    NonIp,
    /// Denied for this reason (dropped in enforce mode).
    Deny(u32),
}

struct Case {
    name: String,
    frame: Vec<u8>,
    expect: Expect,
}

/// The test policy, written into fresh maps.
fn datapath(enforce: bool) -> Datapath {
    let mut dp = Datapath::load();
    dp.set_config(enforce, false);
    dp.allow(DIR_IN, IPPROTO_TCP, 25, R_SMTP);
    dp.allow(DIR_IN, IPPROTO_TCP, 443, R_HTTPS);
    dp.allow(DIR_IN, IPPROTO_UDP, 53, R_DNS);
    dp.allow_set(DIR_IN, IPPROTO_TCP, 389, 1);
    dp.peer(1, mapped([198, 18, 0, 0]), 96 + 24, R_LDAP);
    dp.peer(1, v6(0, 0), 64, R_LDAP);
    // Outbound rules exist too, but XDP never decides outbound flows: it only finds them.
    dp.allow(DIR_OUT, IPPROTO_TCP, 25, R_OUT_SMTP);
    dp.allow(DIR_OUT, IPPROTO_UDP, 53, R_OUT_DNS);
    dp.flow_out(
        flow_key(mapped(LOCAL4), 40000, mapped(PEER4), 25, IPPROTO_TCP),
        R_OUT_SMTP,
    );
    dp.flow_out(
        flow_key(mapped(LOCAL4), 40053, mapped(PEER4), 53, IPPROTO_UDP),
        R_OUT_DNS,
    );
    dp.flow_out(
        flow_key(local6(), 40000, peer6(), 25, IPPROTO_TCP),
        R_OUT_SMTP,
    );
    dp.flow_out(
        flow_key(local6(), 40053, peer6(), 53, IPPROTO_UDP),
        R_OUT_DNS,
    );
    dp
}

fn v4(src: [u8; 4], protocol: u8, l4: &[u8]) -> Vec<u8> {
    eth(
        &[],
        ETH_P_IP,
        &ipv4(src, LOCAL4, protocol, &[], NOT_FRAGMENTED, l4),
    )
}

fn v6f(src: [u8; 16], next: u8, payload: &[u8]) -> Vec<u8> {
    eth(&[], ETH_P_IPV6, &ipv6(src, local6(), next, payload))
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// The corpus, in order (fragment cases depend on earlier first fragments).
fn corpus() -> Vec<Case> {
    use Expect::*;
    const TCP: u8 = IPPROTO_TCP;
    const UDP: u8 = IPPROTO_UDP;
    let mut c: Vec<Case> = Vec::new();
    let mut add = |name: &str, frame: Vec<u8>, expect: Expect| {
        c.push(Case {
            name: name.to_owned(),
            frame,
            expect,
        })
    };

    // --- IPv4 TCP/UDP by policy.
    add(
        "v4 syn to 25",
        v4(PEER4, TCP, &tcp(33000, 25, TCP_SYN)),
        Rule(R_SMTP),
    );
    add(
        "v4 syn to 443",
        v4(PEER4, TCP, &tcp(33001, 443, TCP_SYN)),
        Rule(R_HTTPS),
    );
    add(
        "v4 syn to 22",
        v4(PEER4, TCP, &tcp(33002, 22, TCP_SYN)),
        Deny(reason::NO_RULE),
    );
    add(
        "v4 ack to 25 (inbound flow)",
        v4(PEER4, TCP, &tcp(33000, 25, TCP_ACK)),
        Rule(R_SMTP),
    );
    add(
        "v4 fin-ack to 443",
        v4(PEER4, TCP, &tcp(33001, 443, TCP_FIN | TCP_ACK)),
        Rule(R_HTTPS),
    );
    add(
        "v4 syn-ack reply to own flow",
        v4(PEER4, TCP, &tcp(25, 40000, TCP_SYN | TCP_ACK)),
        Rule(R_OUT_SMTP),
    );
    add(
        "v4 ack reply to own flow",
        v4(PEER4, TCP, &tcp(25, 40000, TCP_ACK)),
        Rule(R_OUT_SMTP),
    );
    add(
        "v4 spoofed ack from 25 to 8080",
        v4(PEER4, TCP, &tcp(25, 8080, TCP_ACK)),
        Deny(reason::STATE),
    );
    add(
        "v4 syn-ack from 25 to other port",
        v4(PEER4, TCP, &tcp(25, 40001, TCP_SYN | TCP_ACK)),
        Deny(reason::STATE),
    );
    add(
        "v4 reply from other host",
        v4(STRANGER4, TCP, &tcp(25, 40000, TCP_ACK)),
        Deny(reason::STATE),
    );
    add(
        "v4 rst to 22",
        v4(PEER4, TCP, &tcp(33002, 22, TCP_RST)),
        Deny(reason::STATE),
    );
    add(
        "v4 syn from 25 to 22 (source port not trusted)",
        v4(PEER4, TCP, &tcp(25, 22, TCP_SYN)),
        Deny(reason::NO_RULE),
    );
    add(
        "v4 syn to 389 from peer set",
        v4(PEER4, TCP, &tcp(33003, 389, TCP_SYN)),
        Rule(R_LDAP),
    );
    add(
        "v4 syn to 389 from stranger",
        v4(STRANGER4, TCP, &tcp(33003, 389, TCP_SYN)),
        Deny(reason::PEER),
    );
    add(
        "v4 ack to 389 from stranger",
        v4(STRANGER4, TCP, &tcp(33003, 389, TCP_ACK)),
        Deny(reason::STATE),
    );
    add(
        "v4 udp to 53",
        v4(PEER4, UDP, &udp(33004, 53, b"query")),
        Rule(R_DNS),
    );
    add(
        "v4 udp to 5353",
        v4(PEER4, UDP, &udp(33004, 5353, b"x")),
        Deny(reason::NO_RULE),
    );
    add(
        "v4 udp reply to own flow",
        v4(PEER4, UDP, &udp(53, 40053, b"answer")),
        Rule(R_OUT_DNS),
    );
    add(
        "v4 udp from 53 to other port",
        v4(PEER4, UDP, &udp(53, 40054, b"spoof")),
        Deny(reason::NO_RULE),
    );
    add(
        "v4 udp to out-only port 25",
        v4(PEER4, UDP, &udp(1, 25, b"")),
        Deny(reason::NO_RULE),
    );

    // --- ICMP and other protocols.
    add(
        "v4 echo request (echo off)",
        v4(PEER4, IPPROTO_ICMP, &icmp(8, 0)),
        Deny(reason::ICMP),
    );
    add(
        "v4 echo reply (echo off)",
        v4(PEER4, IPPROTO_ICMP, &icmp(0, 0)),
        Deny(reason::ICMP),
    );
    // ICMP is related-only: an error passes when the packet it quotes is of a
    // flow this host has (here: LOCAL4:40000 -> PEER4:25 in the flow table), never bare.
    for (ty, code, name) in [
        (3, 4, "dest unreachable"),
        (11, 0, "time exceeded"),
        (12, 0, "parameter problem"),
    ] {
        add(
            &format!("v4 {name}, quoting nothing"),
            v4(PEER4, IPPROTO_ICMP, &icmp(ty, code)),
            Deny(reason::STATE),
        );
        add(
            &format!("v4 {name}, quoting an own flow"),
            v4(
                PEER4,
                IPPROTO_ICMP,
                &icmp_error4(ty, code, LOCAL4, 40000, PEER4, 25, TCP),
            ),
            Icmp,
        );
        add(
            &format!("v4 {name}, quoting an unknown flow"),
            v4(
                PEER4,
                IPPROTO_ICMP,
                &icmp_error4(ty, code, LOCAL4, 40001, PEER4, 25, TCP),
            ),
            Deny(reason::STATE),
        );
    }
    add(
        "v4 dest unreachable, quoting own udp flow",
        v4(
            PEER4,
            IPPROTO_ICMP,
            &icmp_error4(3, 3, LOCAL4, 40053, PEER4, 53, UDP),
        ),
        Icmp,
    );
    add(
        "v4 dest unreachable, quoting a flow of another host",
        v4(
            PEER4,
            IPPROTO_ICMP,
            &icmp_error4(3, 3, STRANGER4, 40000, PEER4, 25, TCP),
        ),
        Deny(reason::STATE),
    );
    add(
        "v4 redirect",
        v4(PEER4, IPPROTO_ICMP, &icmp(5, 0)),
        Deny(reason::ICMP),
    );
    add(
        "v4 timestamp",
        v4(PEER4, IPPROTO_ICMP, &icmp(13, 0)),
        Deny(reason::ICMP),
    );
    add("v4 gre", v4(PEER4, 47, &[0; 8]), Deny(reason::PROTOCOL));
    add(
        "v4 icmpv6 protocol over ipv4",
        v4(PEER4, IPPROTO_ICMPV6, &icmp(135, 0)),
        Deny(reason::PROTOCOL),
    );
    add(
        "v4 truncated icmp",
        v4(PEER4, IPPROTO_ICMP, &[3, 0, 0]),
        Deny(reason::MALFORMED),
    );

    // --- IPv4 options, IHL, lengths.
    let syn25 = tcp(33000, 25, TCP_SYN);
    add(
        "v4 ihl 6 (nop options)",
        eth(
            &[],
            ETH_P_IP,
            &ipv4(PEER4, LOCAL4, TCP, &[1, 1, 1, 0], NOT_FRAGMENTED, &syn25),
        ),
        Rule(R_SMTP),
    );
    add(
        "v4 ihl 15 (40 bytes of options)",
        eth(
            &[],
            ETH_P_IP,
            &ipv4(PEER4, LOCAL4, TCP, &[1; 40], NOT_FRAGMENTED, &syn25),
        ),
        Rule(R_SMTP),
    );
    let good = ipv4(PEER4, LOCAL4, TCP, &[], NOT_FRAGMENTED, &syn25);
    for ihl in [0u8, 1, 4] {
        let mut p = good.clone();
        p[0] = 0x40 | ihl;
        add(
            &format!("v4 ihl {ihl}"),
            eth(&[], ETH_P_IP, &p),
            Deny(reason::MALFORMED),
        );
    }
    {
        // IHL 15 claims 60 bytes of header: the TCP header is read as options.
        let mut p = good.clone();
        p[0] = 0x4f;
        add(
            "v4 ihl 15 without options",
            eth(&[], ETH_P_IP, &p),
            Deny(reason::MALFORMED),
        );
        let mut p = good.clone();
        p[0] = 0x55;
        add(
            "v4 version 5",
            eth(&[], ETH_P_IP, &p),
            Deny(reason::MALFORMED),
        );
        let mut p = good.clone();
        p[2..4].copy_from_slice(&19u16.to_be_bytes());
        add(
            "v4 total length below ihl",
            eth(&[], ETH_P_IP, &p),
            Deny(reason::MALFORMED),
        );
        let mut p = good.clone();
        p[2..4].copy_from_slice(&(good.len() as u16 + 1).to_be_bytes());
        add(
            "v4 total length past the frame",
            eth(&[], ETH_P_IP, &p),
            Deny(reason::MALFORMED),
        );
        let mut p = good.clone();
        p[2..4].copy_from_slice(&30u16.to_be_bytes());
        add(
            "v4 total length cuts the tcp header",
            eth(&[], ETH_P_IP, &p),
            Deny(reason::MALFORMED),
        );
        let mut p = good.clone();
        p[20 + 12] = 0x40;
        add(
            "v4 tcp data offset 4",
            eth(&[], ETH_P_IP, &p),
            Deny(reason::MALFORMED),
        );
        // Ethernet padding past the datagram is not part of it (bytes = IP length).
        let mut f = eth(&[], ETH_P_IP, &good);
        f.extend_from_slice(&[0; 20]);
        add("v4 with ethernet padding", f, Rule(R_SMTP));
        // A UDP datagram whose IP length stops inside the UDP header, padding after it.
        let mut p = ipv4(PEER4, LOCAL4, UDP, &[], NOT_FRAGMENTED, &udp(1, 53, b""));
        p[2..4].copy_from_slice(&24u16.to_be_bytes());
        add(
            "v4 udp header cut by ip length",
            eth(&[], ETH_P_IP, &p),
            Deny(reason::MALFORMED),
        );
    }

    // --- VLAN and QinQ.
    add(
        "802.1q syn to 25",
        eth(&[ETH_P_8021Q], ETH_P_IP, &good),
        Rule(R_SMTP),
    );
    add(
        "qinq syn to 25",
        eth(&[ETH_P_8021AD, ETH_P_8021Q], ETH_P_IP, &good),
        Rule(R_SMTP),
    );
    add(
        "qinq (two 802.1q) syn to 25",
        eth(&[ETH_P_8021Q, ETH_P_8021Q], ETH_P_IP, &good),
        Rule(R_SMTP),
    );
    add(
        "qinq syn to 22",
        eth(
            &[ETH_P_8021AD, ETH_P_8021Q],
            ETH_P_IP,
            &ipv4(
                PEER4,
                LOCAL4,
                TCP,
                &[],
                NOT_FRAGMENTED,
                &tcp(1, 22, TCP_SYN),
            ),
        ),
        Deny(reason::NO_RULE),
    );
    add(
        "three vlan tags",
        eth(&[ETH_P_8021AD, ETH_P_8021Q, ETH_P_8021Q], ETH_P_IP, &good),
        Deny(reason::MALFORMED),
    );
    add("vlan arp", eth(&[ETH_P_8021Q], ETH_P_ARP, &arp()), NonIp);
    add(
        "vlan tag cut short",
        eth(&[], ETH_P_8021Q, &[0, 100]),
        Deny(reason::MALFORMED),
    );

    // --- Non-IP.
    add("arp", eth(&[], ETH_P_ARP, &arp()), NonIp);
    add(
        "lldp",
        eth(&[], ETH_P_LLDP, &[2, 7, 4, 0, 0, 0, 0, 0, 1]),
        NonIp,
    );
    add(
        "ethernet header only, ipv4 type",
        eth(&[], ETH_P_IP, &[]),
        Deny(reason::MALFORMED),
    );

    // --- IPv4 fragments.
    let frag = |id, more, offset| Frag4 { id, more, offset };
    let dns = udp(33005, 53, &[7; 64]);
    add(
        "v4 first fragment udp 53",
        eth(
            &[],
            ETH_P_IP,
            &ipv4(PEER4, LOCAL4, UDP, &[], frag(7, true, 0), &dns[..24]),
        ),
        Rule(R_DNS),
    );
    add(
        "v4 middle fragment",
        eth(
            &[],
            ETH_P_IP,
            &ipv4(PEER4, LOCAL4, UDP, &[], frag(7, true, 3), &dns[24..48]),
        ),
        Rule(R_DNS),
    );
    add(
        "v4 last fragment",
        eth(
            &[],
            ETH_P_IP,
            &ipv4(PEER4, LOCAL4, UDP, &[], frag(7, false, 6), &dns[48..]),
        ),
        Rule(R_DNS),
    );
    add(
        "v4 middle fragment, unknown id",
        eth(
            &[],
            ETH_P_IP,
            &ipv4(PEER4, LOCAL4, UDP, &[], frag(8, true, 3), &[0; 24]),
        ),
        Deny(reason::STATE),
    );
    add(
        "v4 last fragment, other source",
        eth(
            &[],
            ETH_P_IP,
            &ipv4(STRANGER4, LOCAL4, UDP, &[], frag(7, false, 6), &[0; 24]),
        ),
        Deny(reason::STATE),
    );
    add(
        "v4 first fragment udp 5353",
        eth(
            &[],
            ETH_P_IP,
            &ipv4(
                PEER4,
                LOCAL4,
                UDP,
                &[],
                frag(9, true, 0),
                &udp(1, 5353, &[0; 16]),
            ),
        ),
        Deny(reason::NO_RULE),
    );
    add(
        "v4 later fragment of a denied first",
        eth(
            &[],
            ETH_P_IP,
            &ipv4(PEER4, LOCAL4, UDP, &[], frag(9, false, 3), &[0; 8]),
        ),
        Deny(reason::STATE),
    );
    add(
        "v4 tiny first fragment (tcp flags cut off)",
        eth(
            &[],
            ETH_P_IP,
            &ipv4(PEER4, LOCAL4, TCP, &[], frag(10, true, 0), &syn25[..8]),
        ),
        Deny(reason::MALFORMED),
    );
    add(
        "v4 tcp fragment at offset 8 (rfc 1858)",
        eth(
            &[],
            ETH_P_IP,
            &ipv4(PEER4, LOCAL4, TCP, &[], frag(11, true, 1), &[0; 16]),
        ),
        Deny(reason::MALFORMED),
    );
    add(
        "v4 first fragment tcp 25",
        eth(
            &[],
            ETH_P_IP,
            &ipv4(
                PEER4,
                LOCAL4,
                TCP,
                &[],
                frag(12, true, 0),
                &cat(&[&tcp(33000, 25, TCP_ACK), &[0; 4]]),
            ),
        ),
        Rule(R_SMTP),
    );
    add(
        "v4 later fragment tcp 25",
        eth(
            &[],
            ETH_P_IP,
            &ipv4(PEER4, LOCAL4, TCP, &[], frag(12, false, 3), &[0; 8]),
        ),
        Rule(R_SMTP),
    );
    add(
        "v4 later fragment, same id, other protocol",
        eth(
            &[],
            ETH_P_IP,
            &ipv4(PEER4, LOCAL4, UDP, &[], frag(12, false, 3), &[0; 8]),
        ),
        Deny(reason::STATE),
    );
    add(
        "v4 first fragment, echo request",
        eth(
            &[],
            ETH_P_IP,
            &ipv4(
                PEER4,
                LOCAL4,
                IPPROTO_ICMP,
                &[],
                frag(13, true, 0),
                &icmp(8, 0),
            ),
        ),
        Deny(reason::ICMP),
    );
    add(
        "v4 first fragment, icmp error",
        eth(
            &[],
            ETH_P_IP,
            &ipv4(
                PEER4,
                LOCAL4,
                IPPROTO_ICMP,
                &[],
                frag(14, true, 0),
                &icmp_error4(3, 4, LOCAL4, 40000, PEER4, 25, TCP),
            ),
        ),
        Icmp,
    );
    add(
        "v4 later fragment, icmp error",
        eth(
            &[],
            ETH_P_IP,
            &ipv4(
                PEER4,
                LOCAL4,
                IPPROTO_ICMP,
                &[],
                frag(14, false, 1),
                &[0; 8],
            ),
        ),
        Icmp,
    );

    // --- IPv6 by policy.
    add(
        "v6 syn to 25",
        v6f(peer6(), TCP, &tcp(33000, 25, TCP_SYN)),
        Rule(R_SMTP),
    );
    add(
        "v6 syn to 22",
        v6f(peer6(), TCP, &tcp(33000, 22, TCP_SYN)),
        Deny(reason::NO_RULE),
    );
    add(
        "v6 ack to 443",
        v6f(peer6(), TCP, &tcp(33000, 443, TCP_ACK)),
        Rule(R_HTTPS),
    );
    add(
        "v6 syn-ack reply to own flow",
        v6f(peer6(), TCP, &tcp(25, 40000, TCP_SYN | TCP_ACK)),
        Rule(R_OUT_SMTP),
    );
    add(
        "v6 spoofed ack from 25",
        v6f(peer6(), TCP, &tcp(25, 8080, TCP_ACK)),
        Deny(reason::STATE),
    );
    add(
        "v6 udp to 53",
        v6f(peer6(), UDP, &udp(1, 53, b"q")),
        Rule(R_DNS),
    );
    add(
        "v6 udp reply to own flow",
        v6f(peer6(), UDP, &udp(53, 40053, b"a")),
        Rule(R_OUT_DNS),
    );
    add(
        "v6 udp from 53 to other port",
        v6f(peer6(), UDP, &udp(53, 40054, b"a")),
        Deny(reason::NO_RULE),
    );
    add(
        "v6 syn to 389 from peer set",
        v6f(peer6(), TCP, &tcp(1, 389, TCP_SYN)),
        Rule(R_LDAP),
    );
    add(
        "v6 syn to 389 from stranger",
        v6f(stranger6(), TCP, &tcp(1, 389, TCP_SYN)),
        Deny(reason::PEER),
    );
    add(
        "v6 version 4",
        {
            let mut f = v6f(peer6(), TCP, &tcp(1, 25, TCP_SYN));
            f[14] = 0x40;
            f
        },
        Deny(reason::MALFORMED),
    );
    add(
        "v6 payload length past the frame",
        {
            let mut f = v6f(peer6(), TCP, &tcp(1, 25, TCP_SYN));
            f[18..20].copy_from_slice(&21u16.to_be_bytes());
            f
        },
        Deny(reason::MALFORMED),
    );
    add(
        "v6 payload length cuts the tcp header",
        {
            let mut f = v6f(peer6(), TCP, &tcp(1, 25, TCP_SYN));
            f[18..20].copy_from_slice(&19u16.to_be_bytes());
            f
        },
        Deny(reason::MALFORMED),
    );

    // --- ICMPv6.
    for (ty, name) in [
        (1, "dest unreachable"),
        (2, "packet too big"),
        (3, "time exceeded"),
        (4, "parameter problem"),
    ] {
        add(
            &format!("v6 {name}, quoting nothing"),
            v6f(peer6(), IPPROTO_ICMPV6, &icmp(ty, 0)),
            Deny(reason::STATE),
        );
        add(
            &format!("v6 {name}, quoting an own flow"),
            v6f(
                peer6(),
                IPPROTO_ICMPV6,
                &icmp_error6(ty, local6(), 40000, peer6(), 25, TCP),
            ),
            Icmp,
        );
        add(
            &format!("v6 {name}, quoting an unknown flow"),
            v6f(
                peer6(),
                IPPROTO_ICMPV6,
                &icmp_error6(ty, local6(), 40002, peer6(), 25, TCP),
            ),
            Deny(reason::STATE),
        );
    }
    // Link-local configuration traffic (RFC 4890 4.4.1): hop limit 255 for neighbour and
    // router discovery; a routed one (hop limit 64) is not link-local.
    for (ty, name) in [
        (133, "router solicitation"),
        (134, "router advertisement"),
        (135, "neighbour solicitation"),
        (136, "neighbour advertisement"),
    ] {
        add(
            &format!("v6 {name}"),
            v6_hop(peer6(), local6(), 255, IPPROTO_ICMPV6, &icmp(ty, 0)),
            Icmp,
        );
        add(
            &format!("v6 {name}, hop limit 64"),
            v6f(peer6(), IPPROTO_ICMPV6, &icmp(ty, 0)),
            Deny(reason::ICMP),
        );
    }
    add(
        "v6 redirect",
        v6_hop(peer6(), local6(), 255, IPPROTO_ICMPV6, &icmp(137, 0)),
        Deny(reason::ICMP),
    );
    add(
        "v6 node information query",
        v6_hop(peer6(), local6(), 255, IPPROTO_ICMPV6, &icmp(139, 0)),
        Deny(reason::ICMP),
    );
    add(
        "v6 mld report from link-local",
        v6_hop(link_local6(), local6(), 1, IPPROTO_ICMPV6, &icmp(143, 0)),
        Icmp,
    );
    add(
        "v6 mld report from a global address",
        v6_hop(peer6(), local6(), 1, IPPROTO_ICMPV6, &icmp(143, 0)),
        Deny(reason::ICMP),
    );
    add(
        "v6 dad neighbour solicitation from ::",
        v6_hop([0; 16], local6(), 255, IPPROTO_ICMPV6, &icmp(135, 0)),
        Icmp,
    );
    add(
        "v6 echo request (echo off)",
        v6f(peer6(), IPPROTO_ICMPV6, &icmp(128, 0)),
        Deny(reason::ICMP),
    );
    add(
        "v6 echo reply (echo off)",
        v6f(peer6(), IPPROTO_ICMPV6, &icmp(129, 0)),
        Deny(reason::ICMP),
    );
    add(
        "v6 icmpv4 protocol over ipv6",
        v6f(peer6(), IPPROTO_ICMP, &icmp(3, 0)),
        Deny(reason::PROTOCOL),
    );
    add(
        "v6 ns behind hop-by-hop",
        v6_hop(
            peer6(),
            local6(),
            255,
            0,
            &cat(&[&ext(IPPROTO_ICMPV6, 1), &icmp(135, 0)]),
        ),
        Icmp,
    );

    // --- Spoofed sources: never loopback, never a peer, denied for their own
    // reason. Port 25 is open to everyone and 389 to 198.18.0.0/24, whose IPv4-mapped
    // prefix a mapped IPv6 source would otherwise match.
    for (name, src) in [
        ("v6 from ipv4-mapped peer", mapped(PEER4)),
        ("v6 from ipv4-mapped loopback", mapped([127, 0, 0, 1])),
        ("v6 from ::1", v6_loopback()),
        ("v6 from ::", [0; 16]),
    ] {
        add(
            &format!("{name}, syn to 25"),
            v6f(src, TCP, &tcp(33000, 25, TCP_SYN)),
            Deny(reason::SPOOFED),
        );
        add(
            &format!("{name}, udp to 53"),
            v6f(src, UDP, &udp(33000, 53, b"x")),
            Deny(reason::SPOOFED),
        );
    }
    add(
        "v6 from ipv4-mapped peer-set member, syn to 389",
        v6f(mapped(PEER4), TCP, &tcp(33000, 389, TCP_SYN)),
        Deny(reason::SPOOFED),
    );
    add(
        "v4 from 127.0.0.1 on a device, syn to 25",
        v4([127, 0, 0, 1], TCP, &tcp(33000, 25, TCP_SYN)),
        Deny(reason::SPOOFED),
    );
    add(
        "v4 from 0.0.0.0, udp to 53",
        v4([0, 0, 0, 0], UDP, &udp(68, 53, b"x")),
        Deny(reason::SPOOFED),
    );
    add(
        "v4 from 127.0.0.1, reply to own flow",
        v4([127, 0, 0, 1], TCP, &tcp(25, 40000, TCP_ACK)),
        Deny(reason::SPOOFED),
    );

    // --- IPv6 extension header chains.
    let syn = tcp(33000, 25, TCP_SYN);
    add(
        "v6 hop-by-hop, tcp 25",
        v6f(peer6(), 0, &cat(&[&ext(TCP, 1), &syn])),
        Rule(R_SMTP),
    );
    add(
        "v6 hbh+dst+routing+dst, tcp 25",
        v6f(
            peer6(),
            0,
            &cat(&[&ext(60, 1), &ext(43, 2), &ext(60, 3), &ext(TCP, 1), &syn]),
        ),
        Rule(R_SMTP),
    );
    add(
        "v6 ah, tcp 25",
        v6f(peer6(), 51, &cat(&[&ah(TCP), &syn])),
        Rule(R_SMTP),
    );
    add(
        "v6 ah, tcp 22",
        v6f(peer6(), 51, &cat(&[&ah(TCP), &tcp(1, 22, TCP_SYN)])),
        Deny(reason::NO_RULE),
    );
    // Each header's type is the previous one's next header: hop-by-hop, destination
    // options, routing, AH, fragment (atomic), destination options.
    let six = cat(&[
        &ext(60, 1),
        &ext(43, 1),
        &ext(51, 1),
        &ah(44),
        &frag6(60, 0, false, 5),
        &ext(TCP, 1),
        &syn,
    ]);
    add(
        "v6 chain of 6 (the bound), tcp 25",
        v6f(peer6(), 0, &six),
        Rule(R_SMTP),
    );
    let seven = cat(&[
        &ext(60, 1),
        &ext(43, 1),
        &ext(51, 1),
        &ah(44),
        &frag6(60, 0, false, 5),
        &ext(60, 1),
        &ext(TCP, 1),
        &syn,
    ]);
    add(
        "v6 chain of 7 (past the bound)",
        v6f(peer6(), 0, &seven),
        Deny(reason::MALFORMED),
    );
    add(
        "v6 longest options header (2048 bytes), tcp 25",
        v6f(peer6(), 60, &cat(&[&ext(TCP, 256), &syn])),
        Rule(R_SMTP),
    );
    add(
        "v6 options header of 120 units, tcp 25",
        v6f(peer6(), 60, &cat(&[&ext(TCP, 120), &syn])),
        Rule(R_SMTP),
    );
    add(
        "v6 unknown next header 253",
        v6f(peer6(), 0, &cat(&[&ext(253, 1), &[0; 8]])),
        Deny(reason::PROTOCOL),
    );
    add(
        "v6 no next header",
        v6f(peer6(), 59, &[]),
        Deny(reason::PROTOCOL),
    );
    add("v6 esp", v6f(peer6(), 50, &[0; 16]), Deny(reason::PROTOCOL));
    add(
        "v6 hop-by-hop cut short",
        v6f(peer6(), 0, &ext(TCP, 2)[..10]),
        Deny(reason::MALFORMED),
    );
    add(
        "v6 extension header past payload length",
        v6f(peer6(), 0, &ext(TCP, 1)[..2]),
        Deny(reason::MALFORMED),
    );
    add(
        "v6 dst opts, tcp header cut",
        v6f(peer6(), 60, &cat(&[&ext(TCP, 1), &syn[..12]])),
        Deny(reason::MALFORMED),
    );

    // --- IPv6 fragments.
    let dns6 = udp(33006, 53, &[6; 48]);
    add(
        "v6 first fragment udp 53",
        v6f(
            peer6(),
            44,
            &cat(&[&frag6(UDP, 0, true, 0x1234), &dns6[..24]]),
        ),
        Rule(R_DNS),
    );
    add(
        "v6 middle fragment",
        v6f(
            peer6(),
            44,
            &cat(&[&frag6(UDP, 3, true, 0x1234), &dns6[24..40]]),
        ),
        Rule(R_DNS),
    );
    add(
        "v6 last fragment",
        v6f(
            peer6(),
            44,
            &cat(&[&frag6(UDP, 5, false, 0x1234), &dns6[40..]]),
        ),
        Rule(R_DNS),
    );
    add(
        "v6 middle fragment, unknown id",
        v6f(peer6(), 44, &cat(&[&frag6(UDP, 3, true, 0x4321), &[0; 16]])),
        Deny(reason::STATE),
    );
    add(
        "v6 atomic fragment udp 53",
        v6f(
            peer6(),
            44,
            &cat(&[&frag6(UDP, 0, false, 0x99), &udp(1, 53, b"x")]),
        ),
        Rule(R_DNS),
    );
    add(
        "v6 first fragment, dst opts then tcp 25",
        v6f(
            peer6(),
            44,
            &cat(&[
                &frag6(60, 0, true, 0x55),
                &ext(TCP, 1),
                &tcp(1, 25, TCP_ACK),
            ]),
        ),
        Rule(R_SMTP),
    );
    add(
        "v6 later fragment of it (next header dst opts)",
        v6f(peer6(), 44, &cat(&[&frag6(60, 4, false, 0x55), &[0; 8]])),
        Rule(R_SMTP),
    );
    add(
        "v6 tiny first fragment",
        v6f(peer6(), 44, &cat(&[&frag6(TCP, 0, true, 0x56), &syn[..4]])),
        Deny(reason::MALFORMED),
    );
    add(
        "v6 fragment header cut",
        v6f(peer6(), 44, &frag6(UDP, 0, true, 1)[..6]),
        Deny(reason::MALFORMED),
    );
    add(
        "v6 first fragment udp 5353",
        v6f(
            peer6(),
            44,
            &cat(&[&frag6(UDP, 0, true, 0x77), &udp(1, 5353, &[0; 8])]),
        ),
        Deny(reason::NO_RULE),
    );
    add(
        "v6 later fragment of a denied first",
        v6f(peer6(), 44, &cat(&[&frag6(UDP, 2, false, 0x77), &[0; 8]])),
        Deny(reason::STATE),
    );

    // --- Truncated at every byte, header boundaries included. The kernel refuses frames
    // shorter than an Ethernet header (`truncated_below_ethernet`).
    let deep4 = eth(
        &[ETH_P_8021AD, ETH_P_8021Q],
        ETH_P_IP,
        &ipv4(PEER4, LOCAL4, TCP, &[1, 1, 1, 0], NOT_FRAGMENTED, &syn25),
    );
    let deep6 = eth(
        &[ETH_P_8021AD, ETH_P_8021Q],
        ETH_P_IPV6,
        &ipv6(
            peer6(),
            local6(),
            0,
            &cat(&[&ext(44, 1), &frag6(UDP, 0, true, 0x88), &udp(1, 53, b"")]),
        ),
    );
    let udp4 = eth(
        &[],
        ETH_P_IP,
        &ipv4(PEER4, LOCAL4, UDP, &[], NOT_FRAGMENTED, &udp(1, 53, b"")),
    );
    let ah6 = v6f(peer6(), 51, &cat(&[&ah(TCP), &syn]));
    for (name, full, expect) in [
        ("qinq v4 options tcp 25", &deep4, Rule(R_SMTP)),
        ("qinq v6 hbh frag udp 53", &deep6, Rule(R_DNS)),
        ("v4 udp 53", &udp4, Rule(R_DNS)),
        ("v6 ah tcp 25", &ah6, Rule(R_SMTP)),
    ] {
        for len in 14..full.len() {
            add(
                &format!("{name} truncated to {len} bytes"),
                full[..len].to_vec(),
                Deny(reason::MALFORMED),
            );
        }
        add(&format!("{name} whole"), full.clone(), expect);
    }
    c
}

/// Runs the corpus; returns the mismatches and the expected counters.
fn run_corpus(dp: &Datapath, enforce: bool) -> (Vec<String>, Totals) {
    let mut wrong = Vec::new();
    let mut t = Totals::default();
    for case in corpus() {
        let want_action = match case.expect {
            Expect::Deny(_) if enforce => XDP_DROP,
            _ => XDP_PASS,
        };
        match dp.run(&case.frame) {
            Ok(got) if got == want_action => {}
            Ok(got) => wrong.push(format!(
                "{}: action {got}, expected {want_action} ({:?})",
                case.name, case.expect
            )),
            Err(e) => wrong.push(format!("{}: test_run failed: {e}", case.name)),
        }
        let bytes = match case.expect {
            Expect::NonIp | Expect::Deny(reason::MALFORMED) => case.frame.len() as u64,
            _ => ip_len(&case.frame),
        };
        let slot = t.by.entry(case.expect).or_default();
        slot.0 += 1;
        slot.1 += bytes;
    }
    (wrong, t)
}

#[derive(Default)]
struct Totals {
    /// Expected (packets, bytes) per outcome.
    by: HashMap<Expect, (u64, u64)>,
}

impl std::hash::Hash for Expect {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        format!("{self:?}").hash(h);
    }
}

/// Every counter the corpus touches must equal what it predicts.
fn check_counters(dp: &Datapath, t: &Totals, enforce: bool) {
    let mut wrong = Vec::new();
    let mut check = |what: String, got: stats::Counter, want: (u64, u64)| {
        if (got.packets, got.bytes) != want {
            wrong.push(format!(
                "{what}: counted {} packets / {} bytes, expected {} / {}",
                got.packets, got.bytes, want.0, want.1
            ));
        }
    };
    let get = |e: Expect| t.by.get(&e).copied().unwrap_or_default();
    for rule in [R_SMTP, R_HTTPS, R_DNS, R_LDAP, R_OUT_SMTP, R_OUT_DNS] {
        check(
            format!("rule {rule}"),
            dp.rule(rule),
            get(Expect::Rule(rule)),
        );
    }
    check(
        "icmp passes".into(),
        dp.stat(stats::PASS_ICMP),
        get(Expect::Icmp),
    );
    check(
        "non-ip passes".into(),
        dp.stat(stats::PASS_NON_IP),
        get(Expect::NonIp),
    );
    check(
        "malformed".into(),
        dp.stat(stats::MALFORMED),
        get(Expect::Deny(reason::MALFORMED)),
    );
    for r in [
        reason::NO_RULE,
        reason::PEER,
        reason::STATE,
        reason::PROTOCOL,
        reason::ICMP,
        reason::MALFORMED,
        reason::SPOOFED,
        reason::REVOKED,
    ] {
        let name = reason::NAMES[r as usize];
        check(
            format!("denies in/{name}"),
            dp.stat(stats::deny_index(!enforce, DIR_IN, r)),
            get(Expect::Deny(r)),
        );
        // Nothing may land in the other mode's counters, nor in the outbound ones.
        check(
            format!("denies in/{name} (other mode)"),
            dp.stat(stats::deny_index(enforce, DIR_IN, r)),
            (0, 0),
        );
        check(
            format!("denies out/{name}"),
            dp.stat(stats::deny_index(!enforce, DIR_OUT, r)),
            (0, 0),
        );
    }
    assert!(
        wrong.is_empty(),
        "{} counters off ({} mode):\n{}",
        wrong.len(),
        if enforce { "enforce" } else { "audit" },
        wrong.join("\n")
    );
}

#[test]
fn corpus_enforce() {
    let dp = datapath(true);
    let (wrong, totals) = run_corpus(&dp, true);
    assert!(
        wrong.is_empty(),
        "{} of {} frames got the wrong verdict:\n{}",
        wrong.len(),
        corpus().len(),
        wrong.join("\n")
    );
    check_counters(&dp, &totals, true);
    // The denied-port table names what the policy lacks.
    let denied = dp.denied();
    for (proto, port) in [
        (IPPROTO_TCP, 22u16),
        (IPPROTO_UDP, 5353),
        (IPPROTO_TCP, 8080),
        (IPPROTO_TCP, 389),
    ] {
        assert!(
            denied
                .get(&(DIR_IN, proto, port))
                .is_some_and(|c| c.packets > 0),
            "no denied-port entry for {proto}/{port}: {denied:?}"
        );
    }
    // Port 25 is allowed: only the five spoofed SYNs to it are denied.
    assert_eq!(
        denied.get(&(DIR_IN, IPPROTO_TCP, 25)).map(|c| c.packets),
        Some(5),
        "port 25 is allowed; only spoofed sources may be denied there: {denied:?}"
    );
}

#[test]
fn corpus_audit_passes_everything_and_counts_would_drops() {
    let dp = datapath(false);
    let (wrong, totals) = run_corpus(&dp, false);
    assert!(
        wrong.is_empty(),
        "{} of {} frames got the wrong verdict in audit mode:\n{}",
        wrong.len(),
        corpus().len(),
        wrong.join("\n")
    );
    check_counters(&dp, &totals, false);
}

#[test]
fn echo_setting_switches_without_reload() {
    let mut dp = datapath(true);
    let ping = v4(PEER4, IPPROTO_ICMP, &icmp(8, 0));
    let ping6 = v6f(peer6(), IPPROTO_ICMPV6, &icmp(128, 0));
    assert_eq!(
        dp.run(&ping).unwrap(),
        XDP_DROP,
        "echo request with icmp_echo = 0"
    );
    assert_eq!(
        dp.run(&ping6).unwrap(),
        XDP_DROP,
        "v6 echo request with icmp_echo = 0"
    );
    dp.set_config(true, true);
    assert_eq!(
        dp.run(&ping).unwrap(),
        XDP_PASS,
        "echo request with icmp_echo = 1"
    );
    assert_eq!(
        dp.run(&ping6).unwrap(),
        XDP_PASS,
        "v6 echo request with icmp_echo = 1"
    );
    assert_eq!(dp.stat(stats::PASS_ICMP).packets, 2);
    assert_eq!(
        dp.stat(stats::deny_index(false, DIR_IN, reason::ICMP))
            .packets,
        2
    );
}

#[test]
fn truncated_below_ethernet_never_reaches_the_program() {
    let dp = datapath(true);
    let frame = v4(PEER4, IPPROTO_TCP, &tcp(1, 25, TCP_SYN));
    for len in 0..14 {
        assert!(
            dp.run(&frame[..len]).is_err(),
            "the kernel ran pc_xdp on a {len}-byte frame"
        );
    }
    assert_eq!(dp.stat(stats::MALFORMED).packets, 0);
}

/// Prints test_run's average time per packet for a few paths (for the benchmark issue),
/// and checks that none is wildly slow.
#[test]
fn corpus_cost_per_packet() {
    let dp = datapath(true);
    let frames = [
        (
            "v4 syn allowed (array)",
            v4(PEER4, IPPROTO_TCP, &tcp(1, 25, TCP_SYN)),
        ),
        (
            "v4 syn denied (array + deny path)",
            v4(PEER4, IPPROTO_TCP, &tcp(1, 22, TCP_SYN)),
        ),
        (
            "v4 reply to own flow (array + hash)",
            v4(PEER4, IPPROTO_TCP, &tcp(25, 40000, TCP_ACK)),
        ),
        (
            "v4 syn peer set (array + trie)",
            v4(PEER4, IPPROTO_TCP, &tcp(1, 389, TCP_SYN)),
        ),
        (
            "qinq v6 chain of 6, syn allowed",
            eth(
                &[ETH_P_8021AD, ETH_P_8021Q],
                ETH_P_IPV6,
                &ipv6(
                    peer6(),
                    local6(),
                    0,
                    &cat(&[
                        &ext(60, 1),
                        &ext(43, 1),
                        &ext(51, 1),
                        &ah(44),
                        &frag6(60, 0, false, 5),
                        &ext(IPPROTO_TCP, 1),
                        &tcp(1, 25, TCP_SYN),
                    ]),
                ),
            ),
        ),
        ("arp", eth(&[], ETH_P_ARP, &arp())),
    ];
    for (name, frame) in &frames {
        let per = dp.time(frame, 200_000);
        println!("pc_xdp test_run {name}: {} ns/packet", per.as_nanos());
        assert!(per.as_micros() < 5, "{name}: {per:?} per packet");
    }
}

// ---------------------------------------------------------------------------------------
// veth and namespaces.

/// nmap's open TCP ports in grepable output.
fn open_ports(grepable: &str) -> BTreeSet<u16> {
    let mut open = BTreeSet::new();
    for line in grepable.lines() {
        let Some(ports) = line.split("Ports: ").nth(1) else {
            continue;
        };
        for p in ports.split("\t").next().unwrap_or("").split(", ") {
            let mut f = p.split('/');
            if let (Some(port), Some("open")) = (f.next(), f.next()) {
                open.insert(port.trim().parse().unwrap());
            }
        }
    }
    open
}

/// The programs the protected side runs: `pc_xdp` on its veth (native mode, else
/// generic), the cgroup programs on a cgroup for its clients.
struct Protected {
    dp: Datapath,
    mode: &'static str,
}

impl Protected {
    fn new(lab: &Lab, generic_only: bool) -> Protected {
        let mut dp = Datapath::load();
        dp.set_config(true, false);
        dp.allow(DIR_IN, IPPROTO_TCP, 25, R_SMTP);
        dp.allow(DIR_IN, IPPROTO_TCP, 443, R_HTTPS);
        dp.allow(DIR_OUT, IPPROTO_TCP, 8025, R_OUT_SMTP);
        dp.allow(DIR_OUT, IPPROTO_UDP, 5353, R_OUT_DNS);
        let iface = lab.veth_a();
        let prog = dp.xdp_mut();
        let mode = lab.in_ns_a(|| {
            let native = if generic_only {
                None
            } else {
                match prog.attach(&iface, aya::programs::XdpMode::Driver) {
                    Ok(_) => return "native",
                    Err(e) => Some(e),
                }
            };
            prog.attach(&iface, aya::programs::XdpMode::Skb)
                .unwrap_or_else(|e| {
                    panic!("attaching pc_xdp to {iface}: native: {native:?}; generic: {e}")
                });
            "generic"
        });
        let dir = std::fs::File::open(&lab.cgroup).unwrap();
        for name in ["pc_ingress", "pc_egress"] {
            let p: &mut aya::programs::CgroupSkb =
                dp.ebpf.program_mut(name).unwrap().try_into().unwrap();
            p.load().unwrap_or_else(|e| panic!("loading {name}: {e:#}"));
            let kind = if name == "pc_ingress" {
                aya::programs::CgroupSkbAttachType::Ingress
            } else {
                aya::programs::CgroupSkbAttachType::Egress
            };
            p.attach(&dir, kind, aya::programs::CgroupAttachMode::Single)
                .unwrap_or_else(|e| panic!("attaching {name}: {e:#}"));
        }
        for name in ["pc_connect4", "pc_connect6"] {
            let p: &mut aya::programs::CgroupSockAddr =
                dp.ebpf.program_mut(name).unwrap().try_into().unwrap();
            p.load().unwrap_or_else(|e| panic!("loading {name}: {e:#}"));
            p.attach(&dir, aya::programs::CgroupAttachMode::Single)
                .unwrap_or_else(|e| panic!("attaching {name}: {e:#}"));
        }
        Protected { dp, mode }
    }
}

const LISTENER: &str = r#"
import socket, sys, threading
socks = []
for port in map(int, sys.argv[1:]):
    for fam, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((addr, port)); s.listen(128); socks.append(s)
def serve(s):
    while True:
        c, _ = s.accept()
        try:
            c.sendall(b"hello\n")
        finally:
            c.close()
for s in socks:
    threading.Thread(target=serve, args=(s,), daemon=True).start()
threading.Event().wait()
"#;

const UDP_ECHO: &str = r#"
import socket, sys, threading
def serve(fam, addr, port):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((addr, port))
    while True:
        data, peer = s.recvfrom(2048)
        s.sendto(b"echo:" + data, peer)
port = int(sys.argv[1])
for fam, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
    threading.Thread(target=serve, args=(fam, addr, port), daemon=True).start()
threading.Event().wait()
"#;

/// Client run on the protected side: TCP connect + read, UDP unconnected and connected.
const CLIENT: &str = r#"
import socket, sys
kind, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
if kind == "tcp":
    s = socket.create_connection((host, port), timeout=3)
    print(s.recv(100).decode().strip())
elif kind == "udp":
    s = socket.socket(fam, socket.SOCK_DGRAM); s.settimeout(3)
    s.sendto(b"unconnected", (host, port))
    print(s.recvfrom(100)[0].decode())
else:
    s = socket.socket(fam, socket.SOCK_DGRAM); s.settimeout(3)
    s.connect((host, port)); s.send(b"connected")
    print(s.recv(100).decode())
"#;

/// UDP listener on 9999 that records anything it receives.
const SINK: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 9999))
data = s.recv(100)
open(sys.argv[1], "wb").write(data)
"#;

/// Sends one datagram from source port 5353 (an outbound-allowed port) to argv[1]:9999.
const SPOOF: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 5353))
s.sendto(b"spoof", (sys.argv[1], 9999))
"#;

fn py(script: &str) -> String {
    format!("python3 -c '{}'", script.replace('\'', "'\"'\"'"))
}

#[test]
fn veth_nmap_sees_only_allowed_ports_and_own_flows_get_replies() {
    require_root();
    let mut lab = Lab::new("nmap");
    let p = Protected::new(&lab, false);
    println!("pc_xdp attached to {} in {} mode", lab.veth_a(), p.mode);

    // Listeners on allowed (25, 443) and not-allowed (2222, 8080) ports.
    lab.spawn_a_unenforced(&format!("exec {} 25 443 2222 8080", py(LISTENER)));
    for port in [25, 443, 2222, 8080] {
        lab.wait_tcp(&lab.ns_a, &lab.a4, port);
    }

    // Every TCP port, IPv4.
    let t = std::time::Instant::now();
    let out = lab.on_b(&format!("nmap -n -Pn -p- -T5 -oG - {}", lab.a4));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "nmap failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let open = open_ports(&text);
    println!(
        "nmap -p- over IPv4 took {:.1?}; open: {open:?}",
        t.elapsed()
    );
    assert_eq!(
        open,
        BTreeSet::from([25, 443]),
        "ports open to the scan (nmap said: {text})"
    );
    // Each of the 65533 other ports got at least one SYN, dropped and counted.
    let no_rule =
        p.dp.stat(stats::deny_index(false, DIR_IN, reason::NO_RULE))
            .packets;
    assert!(
        no_rule >= 65533,
        "only {no_rule} SYNs denied (no-rule) for a full scan"
    );
    assert!(
        p.dp.rule(R_SMTP).packets >= 1 && p.dp.rule(R_HTTPS).packets >= 1,
        "allowed SYNs not counted"
    );
    // The denied-port table is an LRU of 4096 entries: after 65533 denied ports it holds
    // (nearly) as many as it can, and never an allowed port.
    let denied = p.dp.denied();
    let tcp_in = denied
        .keys()
        .filter(|(d, proto, _)| *d == DIR_IN && *proto == IPPROTO_TCP)
        .count();
    assert!(
        tcp_in >= 1000,
        "only {tcp_in} denied TCP ports recorded after a full scan"
    );
    for port in [25u16, 443] {
        assert!(
            !denied.contains_key(&(DIR_IN, IPPROTO_TCP, port)),
            "allowed port {port} listed as denied"
        );
    }
    // ARP went through (the scan needed it).
    assert!(p.dp.stat(stats::PASS_NON_IP).packets >= 1, "no ARP passed");

    // IPv6: needs neighbour discovery to pass.
    let out = lab.on_b(&format!(
        "nmap -6 -n -Pn -p 1-1024,2222,8080 -T5 -oG - {}",
        lab.a6
    ));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        open_ports(&text),
        BTreeSet::from([25, 443]),
        "ports open to the IPv6 scan (nmap said: {text})"
    );
    assert!(
        p.dp.stat(stats::PASS_ICMP).packets >= 1,
        "no neighbour discovery passed"
    );

    // A spoofed "reply" from an allowed outbound port to a listener no rule opens: an
    // ACK scan from source port 8025 must find it filtered (dropped), not unfiltered (RST).
    let out = lab.on_b(&format!(
        "nmap -n -Pn -sA -g 8025 -p 2222,8080 -oG - {}",
        lab.a4
    ));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("2222/filtered") && text.contains("8080/filtered"),
        "spoofed ACKs from port 8025 were answered: {text}"
    );
    let state =
        p.dp.stat(stats::deny_index(false, DIR_IN, reason::STATE))
            .packets;
    assert!(
        state >= 2,
        "spoofed ACKs not counted as state denies ({state})"
    );

    // An unsolicited datagram from the outbound-allowed port 5353 to a port no rule
    // opens, with a listener there: dropped at XDP, never received.
    let sink = format!("/tmp/pcx-sink-{}", std::process::id());
    let _ = std::fs::remove_file(&sink);
    lab.spawn_a_unenforced(&format!("exec {} {sink}", py(SINK)));
    lab.wait_udp(&lab.ns_a, 9999);
    let drops =
        p.dp.stat(stats::deny_index(false, DIR_IN, reason::NO_RULE))
            .packets;
    lab.on_b(&format!("{} {}", py(SPOOF), lab.a4));
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        p.dp.stat(stats::deny_index(false, DIR_IN, reason::NO_RULE))
            .packets
            > drops,
        "unsolicited UDP not denied"
    );
    assert!(
        !std::path::Path::new(&sink).exists(),
        "the listener on udp/9999 received the spoofed datagram"
    );

    // Flows the protected side opens: their replies pass through XDP.
    lab.spawn_b(&format!("exec {} 8025", py(LISTENER)));
    lab.spawn_b(&format!("exec {} 5353", py(UDP_ECHO)));
    lab.wait_tcp(&lab.ns_b, &lab.b4, 8025);
    lab.wait_udp(&lab.ns_b, 5353);
    let before_tcp = p.dp.rule(R_OUT_SMTP).packets;
    let before_udp = p.dp.rule(R_OUT_DNS).packets;
    for host in [lab.b4.clone(), lab.b6.clone()] {
        for (kind, port, want) in [
            ("tcp", 8025, "hello"),
            ("udp", 5353, "echo:unconnected"),
            ("connected-udp", 5353, "echo:connected"),
        ] {
            let out = lab.on_a(&format!("{} {kind} {host} {port}", py(CLIENT)));
            let got = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            assert_eq!(
                got,
                want,
                "{kind} flow to {host}:{port} from the protected side: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    assert!(
        p.dp.rule(R_OUT_SMTP).packets > before_tcp,
        "tcp replies not counted against the outbound rule"
    );
    assert!(
        p.dp.rule(R_OUT_DNS).packets > before_udp,
        "udp replies not counted against the outbound rule"
    );
    // (The connected-UDP exchanges above pass only because the egress program recorded
    // those sockets' flows in PC_FLOWS_OUT: connect()ed sockets are not judged per flow
    // by the unrecorded path.)
}

#[test]
fn veth_generic_mode_filters_the_same() {
    require_root();
    let mut lab = Lab::new("generic");
    let p = Protected::new(&lab, true);
    assert_eq!(p.mode, "generic");
    lab.spawn_a_unenforced(&format!("exec {} 25 443 2222 8080", py(LISTENER)));
    for port in [25, 443, 2222, 8080] {
        lab.wait_tcp(&lab.ns_a, &lab.a4, port);
    }
    for (flag, addr) in [("", lab.a4.clone()), ("-6", lab.a6.clone())] {
        let out = lab.on_b(&format!(
            "nmap {flag} -n -Pn -p 1-1024,2222,8080 -T5 -oG - {addr}"
        ));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(
            open_ports(&text),
            BTreeSet::from([25, 443]),
            "ports open to the scan of {addr} (nmap said: {text})"
        );
    }
    let no_rule =
        p.dp.stat(stats::deny_index(false, DIR_IN, reason::NO_RULE))
            .packets;
    assert!(
        no_rule >= 2 * 1024,
        "only {no_rule} SYNs denied (no-rule) for two scans of 1026 ports"
    );
    lab.spawn_b(&format!("exec {} 8025", py(LISTENER)));
    lab.wait_tcp(&lab.ns_b, &lab.b4, 8025);
    let out = lab.on_a(&format!("{} tcp {} 8025", py(CLIENT), lab.b4));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hello",
        "outbound TCP flow in generic mode: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Revocation, XDP layer: the real agent in namespace A with XDP on its
/// veth and a scope for A's servers. B holds a TCP connection and a UDP flow into A,
/// opened under inbound rules; a reload removes the TCP rule and narrows the UDP one.
/// B's next segment and datagram are dropped by XDP under reason `revoked` (counted in
/// the XDP layer and in the deny log) and never reach A's servers; the flows the new
/// policy allows still work.
#[test]
fn reload_revokes_inbound_tcp_and_udp_flows_at_xdp() {
    use portcullis_tests::{net_py, rule, web_out};
    use std::time::{Duration, Instant};
    let mut lab = Lab::new("xrevoke");
    let dir = lab.dir.display().to_string();
    lab.spawn_a(&format!("exec {} listen 7000 --log {dir}/a-7000", net_py()));
    lab.spawn_a(&format!(
        "exec {} listen 7001 --udp --log {dir}/a-7001",
        net_py()
    ));
    lab.wait_tcp(&lab.ns_a.clone(), &lab.a4.clone(), 7000);
    let before = web_out()
        + &rule("app-tcp", "in", "tcp", 7000, "")
        + &rule("app-udp", "in", "udp", 7001, "");
    let cfg = lab.config(&before, "mode = \"enforce\"\nxdp_scope_only = true");
    let mut agent = lab.agent_xdp(&cfg);
    let lab_dir = lab.dir.clone();
    let file = |name: &str| std::fs::read_to_string(lab_dir.join(name)).unwrap_or_default();
    let wait = |what: &str, ready: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(10) * portcullis_tests::patience();
        while !ready() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    lab.spawn_b(&format!(
        "exec {} hold {} 7000 7001 {dir}/go {dir}/hold.json",
        net_py(),
        lab.a4
    ));
    wait("the held flows' first bytes", &|| {
        file("a-7000").contains('1') && file("a-7001").contains('1')
    });
    let xdp_denies = |s: &serde_json::Value, reason: &str| -> u64 {
        s["xdp"]["denies"]
            .as_array()
            .expect("xdp.denies")
            .iter()
            .filter(|d| d["reason"] == reason && d["audit"] == false && d["direction"] == "in")
            .map(|d| d["packets"].as_u64().unwrap_or(0))
            .sum()
    };
    let s0 = agent.status();
    lab.config(
        &(web_out() + &rule("app-udp", "in", "udp", 7002, "")),
        "mode = \"enforce\"\nxdp_scope_only = true",
    );
    agent.reload().expect("reload");
    std::fs::write(lab.dir.join("go"), "").unwrap();
    wait("the held flows' second sends", &|| {
        serde_json::from_str::<serde_json::Value>(&file("hold.json")).is_ok()
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !file("a-7000").contains('2'),
        "the revoked TCP flow still delivers"
    );
    assert!(
        !file("a-7001").contains('2'),
        "the revoked UDP flow still delivers"
    );
    let s = agent.status();
    let revoked = xdp_denies(&s, "revoked") - xdp_denies(&s0, "revoked");
    assert!(revoked >= 2, "XDP counted both flows as revoked: {s:#}");
    // The new policy's closed port is denied as before, not as revoked.
    let probe =
        portcullis_tests::stdout(&lab.on_b(&format!("{} connect {} 7000", net_py(), lab.a4)));
    assert_ne!(
        probe.trim(),
        "ok",
        "a new connection to the removed rule's port"
    );
    let s2 = agent.status();
    assert!(
        xdp_denies(&s2, "no-rule") > xdp_denies(&s, "no-rule"),
        "a new flow to the closed port is no-rule at XDP: {s2:#}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let log = agent.stop();
    assert!(
        log.lines()
            .any(|l| l.contains("reason=revoked") && l.contains("verdict=deny")),
        "the deny log has the revoked flows:\n{log}"
    );
    portcullis_tests::figures(
        "reload_revokes_xdp",
        &[("revoked_packets", revoked.to_string())],
    );
}

/// UDP state per flow, not per socket, at the XDP layer: with the real agent and XDP on A's veth, a
/// connected UDP socket (allowed to B:5300) that sendto()s B:9999 is refused, and opens
/// no reply path: B's echo from 5300 passes XDP (counted against the rule), a datagram
/// from B:9999 to the same socket port is dropped by XDP and counted.
#[test]
fn connected_udp_sendto_elsewhere_opens_no_xdp_reply_path() {
    use portcullis_tests::{rule, stdout, web_out};
    let mut lab = Lab::new("xflow");
    lab.spawn_b("exec python3 -c 'import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind((\"0.0.0.0\",5300))\nwhile True:\n    d,a=s.recvfrom(9000)\n    s.sendto(d,a)'");
    lab.wait_udp(&lab.ns_b.clone(), 5300);
    let cfg = lab.config(
        &(web_out() + &rule("dns-out", "out", "udp", 5300, "")),
        "mode = \"enforce\"\nxdp_scope_only = true",
    );
    let agent = lab.agent_xdp(&cfg);
    let out = stdout(&lab.on_a(&format!(
        "python3 -c 'import socket,errno\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.settimeout(2)\ns.connect((\"{b}\",5300))\ns.send(b\"q\")\necho=\"ok\" if s.recv(100)==b\"q\" else \"bad\"\ntry:\n    s.sendto(b\"x\",(\"{b}\",9999)); other=\"ok\"\nexcept OSError as e:\n    other=errno.errorcode[e.errno]\nprint(s.getsockname()[1], echo, other)'",
        b = lab.b4
    )));
    let fields: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(fields.len(), 3, "client output: {out:?}");
    let port: u16 = fields[0].parse().expect("the client's port");
    assert_eq!(fields[1], "ok", "the allowed flow's reply passed XDP");
    assert_eq!(fields[2], "EPERM", "sendto another destination is refused");
    let xdp_in_denied = |s: &serde_json::Value| -> u64 {
        s["xdp"]["denied_ports"]
            .as_array()
            .expect("xdp.denied_ports")
            .iter()
            .filter(|d| d["direction"] == "in" && d["protocol"] == "udp" && d["port"] == port)
            .map(|d| d["packets"].as_u64().unwrap_or(0))
            .sum()
    };
    let s0 = agent.status();
    let xdp_rule = |s: &serde_json::Value| -> u64 {
        s["xdp"]["rules"]
            .as_array()
            .expect("xdp.rules")
            .iter()
            .filter(|r| r["id"] == "dns-out")
            .map(|r| r["packets"].as_u64().unwrap_or(0))
            .sum()
    };
    assert!(
        xdp_rule(&s0) >= 1,
        "XDP counted the reply against dns-out: {s0:#}"
    );
    // B answers "from" the destination the socket was refused: no reply path exists.
    let sent = lab.on_b(&format!(
        "python3 -c 'import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind((\"0.0.0.0\",9999))\ns.sendto(b\"z\",(\"{}\",{port}))'",
        lab.a4
    ));
    assert!(sent.status.success());
    std::thread::sleep(std::time::Duration::from_millis(300));
    let s = agent.status();
    assert_eq!(
        xdp_in_denied(&s) - xdp_in_denied(&s0),
        1,
        "XDP dropped the datagram from B:9999 and counted it: {s:#}"
    );
}
