//! Compiler tests: the shipped profiles against the vendors' tables (through `explain`'s
//! evaluation, i.e. the datapath's `decide`), one bad input per error kind, and a
//! property test of `decide` against a brute-force reading of the rule list.

use std::net::IpAddr;

use proptest::prelude::*;

use super::*;
use crate::{
    policy::image::{Image, RuleIndex},
    policy::verdict::{Flow, Tables, Verdict, evaluate},
    policy::{LoopbackMode, Mode},
};

const ANY_PEER: &str = "192.0.2.1";
const LOCAL: &str = "127.0.0.1";

fn dir(s: &str) -> &'static [Direction] {
    match s {
        "in" => &[Direction::In],
        "out" => &[Direction::Out],
        "both" => &[Direction::In, Direction::Out],
        _ => panic!("bad direction {s:?} in test table"),
    }
}

fn proto(s: &str) -> &'static [Protocol] {
    match s {
        "tcp" => &[Protocol::Tcp],
        "udp" => &[Protocol::Udp],
        "both" => &[Protocol::Tcp, Protocol::Udp],
        _ => panic!("bad protocol {s:?} in test table"),
    }
}

/// A product with every feature on, its peer groups meaning any peer (the default
/// site), and loopback enforced so that loopback rules are decided by the policy.
fn full_policy(slug: &str) -> Policy {
    let profile = profile::find(slug).unwrap();
    let mut site = Site::for_profile(&profile);
    site.set_features(profile.feature_names());
    site.loopback = LoopbackMode::Enforce;
    compile(&profile, &site, None).unwrap()
}

/// Whether `id` is the rule `base` (or one half of the `both` rule `base`).
fn is_rule(id: &str, base: &str) -> bool {
    id == base
        || id
            .strip_prefix(base)
            .is_some_and(|rest| rest == "/in" || rest == "/out")
}

/// A vendor row as transcribed: (direction, protocol, port, the rule it became,
/// whether it is a loopback-only service).
type Row = (&'static str, &'static str, u16, &'static str, bool);

/// Checks every row against the compiled product: the flow is allowed, either by the
/// row's own rule or by a rule earlier in policy order that opens the same port (the
/// first rule wins), and the row's own rule does cover it. Loopback rows are allowed
/// from 127.0.0.1 and denied (peer) from elsewhere. Then every unlisted flow is denied.
fn check_product(slug: &str, rows: &[Row], unlisted: &[(&str, &str, u16, &str)]) {
    let policy = full_policy(slug);
    let tables = Tables::build(&policy).unwrap();
    for &(d, p, port, base, local) in rows {
        for &direction in dir(d) {
            for &protocol in proto(p) {
                let peer: IpAddr = if local { LOCAL } else { ANY_PEER }.parse().unwrap();
                let flow = Flow {
                    direction,
                    protocol,
                    port,
                    peer,
                };
                let what =
                    format!("{slug}: {direction} {protocol}/{port} from {peer} (row {base})");
                let own = policy
                    .rules
                    .iter()
                    .position(|r| {
                        is_rule(&r.id, base)
                            && r.direction == direction
                            && r.protocols.contains(&protocol)
                            && r.ports.iter().any(|&(a, b)| (a..=b).contains(&port))
                    })
                    .unwrap_or_else(|| panic!("{what}: no rule {base:?} covers it"));
                // A row limited to the vendor's named servers is checked with an
                // address learned for its first name.
                let host = policy.rules[own].peers.as_ref().and_then(|g| {
                    let set = policy.peer_sets.iter().find(|s| &s.name == g)?;
                    set.names.first().map(|n| {
                        if n.wildcard {
                            format!("x.{}", n.name)
                        } else {
                            n.name.clone()
                        }
                    })
                });
                match tables.evaluate_as(&policy, flow, host.as_deref()).unwrap() {
                    // The first rule in policy order wins, and a rule open to any peer
                    // beats one limited to peers (loopback here).
                    Verdict::Allow(i) => assert!(
                        i <= own
                            || policy
                                .entries
                                .iter()
                                .any(|e| e.rule == i && e.peer_set.is_none()),
                        "{what}: decided by {:?}, which comes after {base:?}",
                        policy.rules[i].id
                    ),
                    other => panic!("{what}: expected allow, got {other:?}"),
                }
                if local {
                    // Closed to other peers, unless another rule opens the port to them
                    // (iRedMail's managesieve feature does, for 4190).
                    let remote = Flow {
                        peer: ANY_PEER.parse().unwrap(),
                        ..flow
                    };
                    match tables.evaluate(&policy, remote).unwrap() {
                        Verdict::Deny(r) => {
                            assert_eq!(r, portcullis_common::stats::reason::PEER, "{what}")
                        }
                        Verdict::Allow(i) => assert!(
                            i != own && policy.rules[i].scope == RuleScope::Any,
                            "{what}: the loopback-only rule lets {ANY_PEER} in"
                        ),
                        Verdict::LoopbackExempt => panic!("{what}: {ANY_PEER} is not loopback"),
                    }
                }
            }
        }
    }
    for &(d, p, port, peer) in unlisted {
        for &direction in dir(d) {
            for &protocol in proto(p) {
                let flow = Flow {
                    direction,
                    protocol,
                    port,
                    peer: peer.parse().unwrap(),
                };
                let verdict = tables.evaluate(&policy, flow).unwrap();
                assert!(
                    matches!(verdict, Verdict::Deny(_)),
                    "{slug}: {direction} {protocol}/{port} from {peer} is not in the vendor's table but {verdict:?} (rule {:?})",
                    match verdict {
                        Verdict::Allow(i) => policy.rules[i].id.as_str(),
                        _ => "",
                    }
                );
            }
        }
    }
}

#[test]
fn xeams_rows() {
    check_product(
        "xeams",
        &[
            ("both", "tcp", 25, "smtp", false),
            ("out", "tcp", 43, "whois", false),
            ("out", "both", 53, "dns", false),
            ("out", "tcp", 80, "updates", false),
            ("out", "tcp", 443, "updates", false),
            ("in", "tcp", 110, "pop3-server", false),
            ("out", "tcp", 110, "pop3-fetcher", false),
            ("in", "tcp", 143, "imap", false),
            ("in", "tcp", 995, "pop3s", false),
            ("in", "tcp", 993, "imaps", false),
            ("in", "tcp", 5272, "admin-console", false),
            ("both", "tcp", 7865, "embedded-db", true),
        ],
        &[
            ("in", "tcp", 80, ANY_PEER),
            ("in", "tcp", 443, ANY_PEER),
            ("out", "tcp", 143, ANY_PEER),
            ("in", "both", 53, ANY_PEER),
            ("out", "udp", 25, ANY_PEER),
            ("in", "tcp", 8080, ANY_PEER),
            ("out", "tcp", 5272, ANY_PEER),
        ],
    );
}

#[test]
fn clearswift_seg_rows() {
    check_product(
        "clearswift-seg",
        &[
            ("both", "tcp", 20, "ftp-data-backup", false),
            ("both", "tcp", 21, "ftp-backup", false),
            ("both", "tcp", 21, "ftps-explicit-backup", false),
            ("both", "tcp", 22, "sftp-backup", false),
            ("in", "tcp", 25, "smtp-in", false),
            ("out", "tcp", 25, "smtp-out", false),
            ("both", "both", 53, "trustmanager-livefeed", false),
            ("out", "tcp", 53, "dns-tcp", false),
            ("out", "udp", 53, "dns-udp", false),
            ("in", "tcp", 80, "pmm-http", false),
            ("out", "tcp", 80, "online-help", false),
            ("out", "tcp", 80, "product-updates", false),
            ("out", "tcp", 80, "av-updates", false),
            ("out", "tcp", 80, "http-out-row14", false),
            ("out", "tcp", 80, "http-out-row15", false),
            ("out", "tcp", 80, "spam-rule-updates", false),
            ("out", "tcp", 80, "spam-stats", false),
            ("out", "tcp", 80, "rss-feed", false),
            ("out", "tcp", 80, "service-availability", false),
            ("out", "udp", 123, "ntp", false),
            ("out", "tcp", 135, "ntlm-rpc", false),
            ("out", "udp", 137, "ntlm-netbios-ns", false),
            ("out", "tcp", 139, "ntlm-netbios-ssn", false),
            ("in", "udp", 162, "snmp-alerts", false),
            ("both", "tcp", 389, "ldap", false),
            ("both", "tcp", 389, "ldap-key-server", false),
            ("both", "tcp", 443, "kaspersky-ksn", false),
            ("in", "tcp", 443, "https-in", false),
            ("out", "tcp", 443, "https-out-addresses", false),
            ("both", "tcp", 443, "https-key-server", false),
            ("out", "tcp", 445, "ntlm-smb", false),
            ("out", "tcp", 514, "syslog", false),
            ("both", "tcp", 636, "ldaps", false),
            ("both", "tcp", 990, "ftps-implicit-backup", false),
            ("both", "tcp", 11371, "hkp-key-server", false),
            ("out", "tcp", 3268, "ldap-global-catalog", false),
            ("both", "tcp", 3269, "ldaps-global-catalog", false),
        ],
        &[
            ("in", "tcp", 3268, ANY_PEER),
            ("out", "udp", 162, ANY_PEER),
            ("in", "udp", 123, ANY_PEER),
            ("in", "tcp", 135, ANY_PEER),
            ("out", "tcp", 10443, ANY_PEER),
            ("both", "udp", 389, ANY_PEER),
            ("in", "tcp", 8080, ANY_PEER),
        ],
    );
}

#[test]
fn clearswift_exchange_rows() {
    check_product(
        "clearswift-exchange",
        &[
            ("out", "tcp", 10443, "sxg-web-service", false),
            ("both", "tcp", 23953, "sxg-interceptors", false),
            ("both", "tcp", 23955, "sxg-config-store", false),
        ],
        &[
            ("in", "tcp", 10443, ANY_PEER),
            ("both", "tcp", 23954, ANY_PEER),
            ("both", "udp", 23953, ANY_PEER),
            ("in", "tcp", 25, ANY_PEER),
            ("out", "tcp", 443, ANY_PEER),
        ],
    );
}

#[test]
fn gfi_mailessentials_rows() {
    check_product(
        "gfi-mailessentials",
        &[
            ("out", "both", 53, "dns", false),
            ("out", "tcp", 20, "ftp-updates", false),
            ("out", "tcp", 21, "ftp-updates", false),
            ("out", "tcp", 80, "http-updates", false),
            ("out", "tcp", 443, "http-updates", false),
            ("both", "tcp", 9090, "remoting", true),
            ("both", "tcp", 9091, "remoting", true),
            ("both", "tcp", 8015, "remoting", true),
            ("both", "tcp", 9095, "multi-server", false),
            ("both", "tcp", 9096, "multi-server", false),
            ("out", "tcp", 389, "ldap", false),
            ("out", "tcp", 636, "ldap", false),
            ("both", "tcp", 61000, "gfi-directory", false),
        ],
        &[
            ("in", "tcp", 25, ANY_PEER),
            ("in", "tcp", 80, ANY_PEER),
            ("out", "tcp", 9092, ANY_PEER),
            ("in", "tcp", 389, ANY_PEER),
            ("out", "tcp", 1023, ANY_PEER),
        ],
    );
}

#[test]
fn mdaemon_securitygateway_rows() {
    let https_out = [
        "m365-verification",
        "mdaemon-services",
        "update-checker",
        "microsoft-oauth",
        "public-suffix-list",
        "mta-sts",
        "tls-reports",
        "anonymous-stats",
        "pwned-passwords",
        "ai-classification",
        "ikarus-updates",
        "clamav-updates",
        "spamassassin-updates",
        "letsencrypt-acme",
    ];
    let mut rows: Vec<Row> = vec![
        ("in", "tcp", 25, "smtp-in-internet", false),
        ("out", "tcp", 25, "smtp-out-internet", false),
        ("in", "tcp", 25, "smtp-in-clients", false),
        ("in", "tcp", 25, "smtp-in-domain", false),
        ("out", "tcp", 25, "smtp-out-domain", false),
        ("in", "tcp", 587, "submission-in-internet", false),
        ("in", "tcp", 587, "submission-in-clients", false),
        ("in", "tcp", 587, "submission-in-domain", false),
        ("out", "tcp", 587, "submission-out-domain", false),
        ("in", "tcp", 465, "smtps-in-clients", false),
        ("in", "tcp", 465, "smtps-in-internet", false),
        ("in", "tcp", 465, "smtps-in-domain", false),
        ("out", "tcp", 110, "remote-pop3", false),
        ("out", "tcp", 995, "remote-pop3s", false),
        ("out", "udp", 53, "dns", false),
        ("out", "udp", 4069, "minger", false),
        ("out", "tcp", 389, "ldap", false),
        ("out", "tcp", 444, "mdaemon-xml-api", false),
        ("in", "tcp", 4000, "ui-http-clients", false),
        ("in", "tcp", 4000, "ui-http-internet", false),
        ("in", "tcp", 4443, "ui-https-clients", false),
        ("in", "tcp", 4443, "ui-https-internet", false),
        ("out", "tcp", 80, "outbreak-protection", false),
        ("in", "tcp", 80, "letsencrypt-http01", false),
        ("in", "tcp", 443, "letsencrypt-https", false),
    ];
    rows.extend(https_out.iter().map(|&id| ("out", "tcp", 443, id, false)));
    check_product(
        "mdaemon-securitygateway",
        &rows,
        &[
            ("out", "tcp", 53, ANY_PEER),
            ("in", "udp", 53, ANY_PEER),
            ("in", "tcp", 110, ANY_PEER),
            ("in", "tcp", 444, ANY_PEER),
            ("in", "tcp", 389, ANY_PEER),
            ("out", "tcp", 4443, ANY_PEER),
            ("out", "tcp", 465, ANY_PEER),
            ("in", "tcp", 8080, ANY_PEER),
        ],
    );
}

#[test]
fn iredmail_rows() {
    check_product(
        "iredmail",
        &[
            ("in", "tcp", 25, "smtp", false),
            ("in", "tcp", 587, "submission", false),
            ("in", "tcp", 465, "smtps", false),
            ("in", "tcp", 110, "pop3", false),
            ("in", "tcp", 995, "pop3s", false),
            ("in", "tcp", 143, "imap", false),
            ("in", "tcp", 993, "imaps", false),
            ("both", "tcp", 4190, "managesieve-local", true),
            ("in", "tcp", 4190, "managesieve", false),
            ("in", "tcp", 80, "http", false),
            ("in", "tcp", 443, "https", false),
            ("both", "tcp", 3306, "mysql", true),
            ("both", "tcp", 5432, "postgresql", true),
            ("both", "tcp", 389, "ldap", true),
            ("both", "tcp", 636, "ldaps", true),
            ("both", "tcp", 10024, "amavisd-inbound", true),
            ("both", "tcp", 10026, "amavisd-outbound", true),
            ("both", "tcp", 9998, "amavisd-quarantine", true),
            ("both", "tcp", 7777, "iredapd", true),
            ("both", "tcp", 10031, "policyd", true),
            // Not in the vendor's table, added so the server can deliver mail and resolve.
            ("out", "tcp", 25, "smtp-delivery", false),
            ("out", "both", 53, "dns", false),
        ],
        &[
            ("in", "tcp", 2000, ANY_PEER),
            ("in", "tcp", 3306, ANY_PEER),
            ("in", "tcp", 10024, ANY_PEER),
            ("out", "tcp", 587, ANY_PEER),
            ("in", "udp", 25, ANY_PEER),
            ("in", "tcp", 8080, ANY_PEER),
            ("in", "tcp", 387, ANY_PEER),
        ],
    );
}

#[test]
fn every_profile_compiles_with_no_and_all_features_deterministically() {
    for p in profile::builtin().unwrap() {
        let slug = p.slug.get_ref();
        for all in [false, true] {
            let a = compile_product(slug, &[], all, None).unwrap();
            let b = compile_product(slug, &[], all, None).unwrap();
            assert_eq!(a, b, "{slug}: two compilations differ");
            assert_eq!(a.rules.last().unwrap().id, FAILSAFE_RULE);
            let mut sorted = a.entries.clone();
            sorted.sort();
            assert_eq!(a.entries, sorted, "{slug}: entries are not sorted");
            let index = RuleIndex::fresh(&a).unwrap();
            Image::build(&a, &index, 1, &Default::default()).unwrap();
        }
    }
}

#[test]
fn feature_rules_are_off_without_their_feature() {
    for p in profile::builtin().unwrap() {
        let slug = p.slug.get_ref();
        let off = compile_product(slug, &[], false, None).unwrap();
        let on = full_policy(slug);
        assert!(off.rules.iter().all(|r| r.feature.is_none()), "{slug}");
        // Every port a feature rule opens is closed without it, unless an always-on
        // rule opens it too.
        let tables = Tables::build(&off).unwrap();
        for rule in on
            .rules
            .iter()
            .filter(|r| r.feature.is_some() && r.scope == RuleScope::Any)
        {
            for &protocol in &rule.protocols {
                for &(port, _) in &rule.ports {
                    let flow = Flow {
                        direction: rule.direction,
                        protocol,
                        port,
                        peer: ANY_PEER.parse().unwrap(),
                    };
                    if let Verdict::Allow(i) = tables.evaluate(&off, flow).unwrap() {
                        assert!(off.rules[i].feature.is_none(), "{slug}: {flow:?}");
                    }
                }
            }
        }
    }
}

#[test]
fn failsafe_port_moves_the_failsafe_rule_and_zero_is_an_error_at_its_line() {
    let site = Site::parse(
        "product = \"iredmail\"\nfailsafe_port = 2222\n",
        Path::new("s.toml"),
    )
    .unwrap();
    let policy = compile_site(&site, None).unwrap();
    let last = policy.rules.last().unwrap();
    assert_eq!(
        (last.id.as_str(), last.ports.as_slice()),
        (FAILSAFE_RULE, &[(2222, 2222)][..]),
        "the failsafe keeps the configured port"
    );
    assert!(
        policy.rules.iter().all(|r| !r.ports.contains(&(22, 22))),
        "22 is no longer kept open by the failsafe"
    );
    let err = Site::parse(
        "product = \"iredmail\"\nfailsafe_port = 0\n",
        Path::new("s.toml"),
    )
    .unwrap_err();
    assert_error(&err, "s.toml", 2, "nonzero");
}

#[test]
fn failsafe_is_last_and_can_be_turned_off() {
    let on = compile_product("iredmail", &[], false, None).unwrap();
    let last = on.rules.last().unwrap();
    assert_eq!(
        (last.id.as_str(), last.direction, last.ports.as_slice()),
        (FAILSAFE_RULE, Direction::In, &[(22, 22)][..])
    );
    let site = Site::parse(
        "product = \"iredmail\"\nfailsafe = false\n",
        Path::new("s.toml"),
    )
    .unwrap();
    let off = compile_site(&site, None).unwrap();
    assert!(off.rules.iter().all(|r| r.id != FAILSAFE_RULE));
    let ssh = Flow {
        direction: Direction::In,
        protocol: Protocol::Tcp,
        port: 22,
        peer: ANY_PEER.parse().unwrap(),
    };
    assert!(matches!(evaluate(&off, ssh).unwrap(), Verdict::Deny(_)));
}

#[test]
fn ranges_merge_and_entries_sort() {
    assert_eq!(
        merge_ranges(vec![(10, 20), (5, 9), (30, 30), (21, 25), (29, 29)]),
        vec![(5, 25), (29, 30)]
    );
    assert_eq!(
        merge_ranges(vec![(1, 65535), (65535, 65535)]),
        vec![(1, 65535)]
    );
    let profile = Profile::parse(
        "slug = \"t\"\nproduct = \"t\"\nvendor = \"t\"\nsource = \"t\"\n\
         [[rule]]\nid = \"a\"\ndirection = \"in\"\nprotocol = \"both\"\nports = [\"10-20\", 21, \"15-16\", 5]\nwhy = \"w\"\nsource = \"t\"\n",
        Path::new("t.toml"),
    )
    .unwrap();
    let policy = compile_profile(&profile, &[], false).unwrap();
    assert_eq!(policy.rules[0].ports, vec![(5, 5), (10, 21)]);
    let ranges: Vec<_> = policy
        .entries
        .iter()
        .map(|e| (e.protocol, e.from, e.to, e.rule))
        .collect();
    assert_eq!(
        ranges,
        vec![
            (Protocol::Tcp, 5, 5, 0),
            (Protocol::Tcp, 10, 21, 0),
            (Protocol::Tcp, 22, 22, 1),
            (Protocol::Udp, 5, 5, 0),
            (Protocol::Udp, 10, 21, 0)
        ]
    );
}

#[test]
fn site_peer_groups_limit_rules() {
    let text = "product = \"mdaemon-securitygateway\"\nfeatures = [\"ldap\"]\nloopback = \"enforce\"\nmode = \"enforce\"\n\
                any_peer_groups = [\"clients\", \"mdaemon-servers\"]\n\
                [peers]\ndns-servers = [\"192.0.2.53\"]\ndomain-mail-servers = [\"198.51.100.0/24\"]\n\
                ldap-servers = [\"2001:db8::/32\", \"203.0.113.7\"]\n";
    let site = Site::parse(text, Path::new("site.toml")).unwrap();
    let policy = compile_site(&site, Some(Path::new("site.toml"))).unwrap();
    assert_eq!(policy.mode, Mode::Enforce);
    let names: Vec<_> = policy
        .peer_sets
        .iter()
        .filter(|s| s.names.is_empty())
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(
        names,
        ["dns-servers", "domain-mail-servers", "ldap-servers"]
    );
    let flow = |direction, protocol, port, peer: &str| Flow {
        direction,
        protocol,
        port,
        peer: peer.parse().unwrap(),
    };
    let id = |f| match evaluate(&policy, f).unwrap() {
        Verdict::Allow(i) => policy.rules[i].id.clone(),
        other => format!("{other:?}"),
    };
    let peer_deny = format!(
        "{:?}",
        Verdict::Deny(portcullis_common::stats::reason::PEER)
    );
    assert_eq!(
        id(flow(Direction::Out, Protocol::Udp, 53, "192.0.2.53")),
        "dns"
    );
    assert_eq!(
        id(flow(Direction::Out, Protocol::Udp, 53, "192.0.2.54")),
        peer_deny
    );
    assert_eq!(
        id(flow(Direction::Out, Protocol::Tcp, 389, "2001:db8::1")),
        "ldap"
    );
    assert_eq!(
        id(flow(Direction::Out, Protocol::Tcp, 389, "203.0.113.7")),
        "ldap"
    );
    assert_eq!(
        id(flow(Direction::Out, Protocol::Tcp, 389, "203.0.113.8")),
        peer_deny
    );
    // Outbound 25 is open to any peer (smtp-out-internet comes first), whatever the group.
    assert_eq!(
        id(flow(Direction::Out, Protocol::Tcp, 25, "203.0.113.8")),
        "smtp-out-internet"
    );
}

#[test]
fn vendor_groups_are_their_names_by_default_and_any_peer_on_request() {
    let compile_text = |text: &str| {
        let site = Site::parse(text, Path::new("site.toml")).unwrap();
        compile_site(&site, Some(Path::new("site.toml"))).unwrap()
    };
    let out = |port, peer: &str| Flow {
        direction: Direction::Out,
        protocol: Protocol::Tcp,
        port,
        peer: peer.parse().unwrap(),
    };
    let id = |policy: &Policy, flow, host: Option<&str>| match Tables::build(policy)
        .unwrap()
        .evaluate_as(policy, flow, host)
        .unwrap()
    {
        Verdict::Allow(i) => policy.rules[i].id.clone(),
        other => format!("{other:?}"),
    };
    let peer_deny = format!(
        "{:?}",
        Verdict::Deny(portcullis_common::stats::reason::PEER)
    );

    // Names by default: what the vendor documents; the same policy as asking for them.
    let default = compile_text("product = \"gfi-mailessentials\"\n");
    let policy = compile_text("product = \"gfi-mailessentials\"\nvendor_peers = \"names\"\n");
    assert_eq!(default.digest(), policy.digest());
    assert_eq!(id(&default, out(443, "203.0.113.9"), None), peer_deny);
    let set = policy
        .peer_sets
        .iter()
        .find(|s| s.name == "gfi-update-servers")
        .unwrap();
    assert_eq!(set.names.len(), 9);
    assert!(set.networks.is_empty());
    assert_eq!(
        id(&policy, out(443, "203.0.113.9"), Some("meupdate.gfi.com")),
        "http-updates"
    );
    assert_eq!(
        id(&policy, out(80, "203.0.113.9"), Some("sn12.MAILSHELL.net")),
        "http-updates"
    );
    assert_eq!(
        id(&policy, out(443, "203.0.113.9"), Some("mailshell.net")),
        peer_deny,
        "apex"
    );
    assert_eq!(
        id(&policy, out(443, "203.0.113.9"), Some("example.com")),
        peer_deny
    );
    assert_eq!(id(&policy, out(443, "203.0.113.9"), None), peer_deny);
    assert_eq!(
        id(&policy, out(21, "203.0.113.9"), Some("ftp.gfisoftware.com")),
        "ftp-updates"
    );
    assert_eq!(
        id(&policy, out(21, "203.0.113.9"), Some("meupdate.gfi.com")),
        peer_deny
    );

    // One line back to any peer: for every vendor group, or for one.
    let any = compile_text("product = \"gfi-mailessentials\"\nvendor_peers = \"any\"\n");
    assert!(any.peer_sets.iter().all(|s| s.names.is_empty()));
    assert_eq!(id(&any, out(443, "203.0.113.9"), None), "http-updates");
    let one = compile_text(
        "product = \"gfi-mailessentials\"\nvendor_peers = \"names\"\nany_peer_groups = [\"gfi-update-servers\"]\n",
    );
    assert_eq!(id(&one, out(443, "203.0.113.9"), None), "http-updates");
    assert_eq!(id(&one, out(21, "203.0.113.9"), None), peer_deny);

    // The site's list replaces the vendor's: a proxy and a mirror by name.
    let own = compile_text(
        "product = \"gfi-mailessentials\"\nvendor_peers = \"names\"\n[peers]\ngfi-update-servers = [\"192.0.2.8\", \"mirror.example.org\"]\n",
    );
    assert_eq!(id(&own, out(443, "192.0.2.8"), None), "http-updates");
    assert_eq!(
        id(&own, out(443, "203.0.113.9"), Some("mirror.example.org")),
        "http-updates"
    );
    assert_eq!(
        id(&own, out(443, "203.0.113.9"), Some("meupdate.gfi.com")),
        peer_deny
    );
}

#[test]
fn error_bad_host_name_in_a_site_group() {
    let err = site_error(
        "product = \"mdaemon-securitygateway\"\n[peers]\ndns-servers = [\"192.0.2.53\",\n  \"resolver_1.example\"]\n",
    );
    assert_error(
        &err,
        "site.toml",
        4,
        "host name \"resolver_1.example\" has the character '_'",
    );
    let err = site_error("product = \"xeams\"\nvendor_peers = \"some\"\n");
    assert_eq!(err.line, Some(2), "{err}");
}

#[test]
fn error_vendor_group_in_any_peer_groups_with_site_members() {
    let err = site_error(
        "product = \"gfi-mailessentials\"\nany_peer_groups = [\"gfi-ftp\"]\n[peers]\ngfi-ftp = [\"192.0.2.8\"]\n",
    );
    assert_error(&err, "site.toml", 2, "in any_peer_groups but has networks");
}

/// The error of compiling `site` (site.toml) against a built-in product, or of
/// parsing it.
fn site_error(text: &str) -> PolicyError {
    let path = Path::new("site.toml");
    match Site::parse(text, path) {
        Ok(site) => compile_site(&site, Some(path)).expect_err("the config should not compile"),
        Err(e) => e,
    }
}

/// The error of parsing a profile whose `[[rule]]` is `rule` (profile.toml).
fn profile_error(extra: &str, rule: &str) -> PolicyError {
    let text = format!(
        "slug = \"t\"\nproduct = \"t\"\nvendor = \"t\"\nsource = \"doc\"\n{extra}\n[[rule]]\nid = \"a\"\ndirection = \"in\"\n\
         protocol = \"tcp\"\nwhy = \"w\"\nsource = \"doc row 1\"\n{rule}\n"
    );
    Profile::parse(&text, Path::new("profile.toml")).expect_err("the profile should not parse")
}

#[track_caller]
fn assert_error(err: &PolicyError, file: &str, line: usize, needle: &str) {
    assert_eq!(err.file.as_deref(), Some(Path::new(file)), "{err}");
    assert_eq!(err.line, Some(line), "{err}");
    assert!(
        err.message.contains(needle),
        "expected {needle:?} in: {err}"
    );
    assert!(err.hint.is_some(), "no hint: {err}");
    let shown = err.to_string();
    assert!(shown.starts_with(&format!("{file}:{line}: ")), "{shown}");
    assert!(shown.contains("(hint: "), "{shown}");
}

#[test]
fn error_port_above_65535() {
    let err = profile_error("", "ports = 70000");
    assert_error(&err, "profile.toml", 12, "port 70000 is above 65535");
    assert_eq!(
        err.to_string(),
        "profile.toml:12: port 70000 is above 65535 (hint: ports are 1-65535)"
    );
}

#[test]
fn error_port_zero() {
    assert_error(
        &profile_error("", "ports = [25, 0]"),
        "profile.toml",
        12,
        "port 0",
    );
}

#[test]
fn error_reversed_range() {
    let err = profile_error("", "ports = \"2000-1000\"");
    assert_error(
        &err,
        "profile.toml",
        12,
        "port range \"2000-1000\" is reversed",
    );
    assert!(err.hint.unwrap().contains("1000-2000"));
}

#[test]
fn error_bad_direction_and_protocol() {
    let text = |d: &str, p: &str| {
        format!(
            "product = \"xeams\"\n[[rule]]\nid = \"x\"\ndirection = \"{d}\"\nprotocol = \"{p}\"\nports = 1\nwhy = \"w\"\n"
        )
    };
    assert_error(
        &site_error(&text("inbound", "tcp")),
        "site.toml",
        4,
        "direction \"inbound\" is not one of",
    );
    assert_error(
        &site_error(&text("in", "sctp")),
        "site.toml",
        5,
        "protocol \"sctp\" is not one of",
    );
}

#[test]
fn error_bad_cidr() {
    let err =
        site_error("product = \"xeams\"\n[peers]\ndns = [\"192.0.2.0/24\",\n  \"10.0.0.300/8\"]\n");
    assert_error(&err, "site.toml", 4, "invalid CIDR \"10.0.0.300/8\"");
}

#[test]
fn error_unknown_feature() {
    let err = site_error("product = \"xeams\"\nfeatures = [\"pop3\",\n  \"pop4\"]\n");
    assert_error(&err, "site.toml", 3, "unknown feature \"pop4\"");
    assert!(err.hint.unwrap().contains("pop3-fetcher"));
    let err = profile_error("", "ports = 1\nfeature = \"nope\"");
    assert_error(&err, "profile.toml", 13, "unknown feature \"nope\"");
    let err = compile_product("xeams", &["popp3".into()], false, None).unwrap_err();
    assert_eq!((err.file, err.line), (None, None));
    assert!(err.message.contains("\"popp3\""));
}

#[test]
fn error_peer_group_not_defined() {
    // A profile rule: the error points at the site's product line, where the profile
    // (and with it the group) comes from.
    let err = site_error("mode = \"audit\"\nproduct = \"clearswift-seg\"\n");
    assert_error(
        &err,
        "site.toml",
        2,
        "uses peer group \"dns-servers\", which the site config does not define",
    );
    assert!(err.hint.unwrap().contains("any_peer_groups"));
    // A site rule: at its peers line.
    let err = site_error(
        "product = \"xeams\"\n[[rule]]\nid = \"x\"\ndirection = \"in\"\nprotocol = \"tcp\"\nports = 1\nwhy = \"w\"\npeers = \"backup\"\n",
    );
    assert_error(&err, "site.toml", 8, "uses peer group \"backup\"");
}

#[test]
fn error_peer_group_empty() {
    let err = site_error("product = \"clearswift-exchange\"\n\n[peers]\n\nsxg-servers = []\n");
    assert_error(
        &err,
        "site.toml",
        5,
        "peer group \"sxg-servers\" of rule \"sxg-interceptors\" is empty",
    );
    // Listed in any_peer_groups, empty means any peer.
    let site = Site::parse(
        "product = \"clearswift-exchange\"\nany_peer_groups = [\"sxg-servers\"]\n[peers]\nsxg-servers = []\n",
        Path::new("site.toml"),
    )
    .unwrap();
    let policy = compile_site(&site, None).unwrap();
    assert!(policy.peer_sets.is_empty());
    assert!(policy.entries.iter().all(|e| e.peer_set.is_none()));
}

#[test]
fn error_peer_group_unused_or_contradictory() {
    let err = site_error("product = \"xeams\"\n[peers]\ndns-server = [\"192.0.2.1\"]\n");
    assert_error(
        &err,
        "site.toml",
        3,
        "peer group \"dns-server\" is not used by any rule",
    );
    // "dns-servers" names the trusted resolvers too: meant even when no rule uses it.
    let site = Site::parse(
        "product = \"xeams\"\n[peers]\ndns-servers = [\"127.0.0.53\"]\n",
        Path::new("site.toml"),
    )
    .unwrap();
    compile_site(&site, None).expect("an unused dns-servers group compiles");
    let err = site_error(
        "product = \"clearswift-exchange\"\n[peers]\nsxg-servers = [\"192.0.2.1\"]\nany_peer_groups = []\n",
    );
    assert_error(&err, "site.toml", 4, "\"any_peer_groups\" is not used");
    assert!(err.hint.unwrap().contains("move it above"));
    let err = site_error(
        "product = \"clearswift-exchange\"\nany_peer_groups = [\"sxg-servers\"]\n[peers]\nsxg-servers = [\"192.0.2.1\"]\n",
    );
    assert_error(
        &err,
        "site.toml",
        2,
        "is in any_peer_groups but has networks",
    );
}

#[test]
fn error_duplicate_rule_id() {
    let err = profile_error(
        "",
        "ports = 1\n[[rule]]\nid = \"a\"\ndirection = \"in\"\nprotocol = \"tcp\"\nports = 2\nwhy = \"w\"\nsource = \"s\"",
    );
    assert_error(&err, "profile.toml", 14, "duplicate rule id \"a\"");
    let err = site_error(
        "product = \"xeams\"\n[[rule]]\nid = \"dns\"\ndirection = \"in\"\nprotocol = \"tcp\"\nports = 1\nwhy = \"w\"\n",
    );
    assert_error(
        &err,
        "site.toml",
        3,
        "duplicate rule id \"dns\": the profile already has",
    );
    let err = site_error(
        "product = \"xeams\"\n[[rule]]\nid = \"failsafe-ssh\"\ndirection = \"in\"\nprotocol = \"tcp\"\nports = 22\nwhy = \"w\"\n",
    );
    assert_error(&err, "site.toml", 3, "failsafe");
}

#[test]
fn error_unknown_field() {
    let err = profile_error("", "ports = 1\nfeatures = \"x\"");
    assert_error(&err, "profile.toml", 13, "unknown field `features`");
    let err = site_error("product = \"xeams\"\nfailsave = false\n");
    assert_error(&err, "site.toml", 2, "unknown field `failsave`");
}

#[test]
fn error_unknown_product() {
    let err = site_error("\nproduct = \"xeam\"\n");
    assert_error(&err, "site.toml", 2, "unknown product \"xeam\"");
    assert!(err.hint.unwrap().contains("xeams, clearswift-seg"));
    let err = compile_product("nope", &[], false, None).unwrap_err();
    assert!(err.message.contains("unknown product \"nope\""));
}

#[test]
fn error_loopback_rule_with_peers() {
    // Parsing checks each file on its own; the conflict shows when compiling.
    let text = "slug = \"t\"\nproduct = \"t\"\nvendor = \"t\"\nsource = \"d\"\n[[rule]]\nid = \"a\"\ndirection = \"in\"\n\
                protocol = \"tcp\"\nports = 1\nscope = \"loopback\"\npeers = \"dbs\"\nwhy = \"w\"\nsource = \"d\"\n";
    let profile = Profile::parse(text, Path::new("profile.toml")).unwrap();
    let err = compile_profile(&profile, &[], false).unwrap_err();
    assert_error(
        &err,
        "profile.toml",
        11,
        "both scope = \"loopback\" and peers",
    );
}

#[test]
fn error_product_and_profile() {
    assert_error(
        &site_error("product = \"xeams\"\nprofile = \"x.toml\"\n"),
        "site.toml",
        2,
        "both \"product\" and \"profile\"",
    );
    let err = site_error("mode = \"audit\"\n");
    assert!(err.message.contains("names no product"), "{err}");
    let err = site_error("profile = \"/nonexistent/p.toml\"\n");
    assert_error(&err, "site.toml", 1, "cannot read profile");
}

#[test]
fn error_bad_names_and_missing_fields() {
    let err = profile_error("", "ports = 1\npeers = \"DNS Servers\"");
    assert_error(
        &err,
        "profile.toml",
        13,
        "peer group \"DNS Servers\" is not a valid name",
    );
    let err = Profile::parse(
        "slug = \"t\"\nproduct = \"t\"\nvendor = \"t\"\nsource = \"d\"\n[[rule]]\nid = \"a\"\n",
        Path::new("p.toml"),
    )
    .unwrap_err();
    assert!(err.message.contains("missing field"), "{err}");
    assert_eq!(err.file.as_deref(), Some(Path::new("p.toml")));
    assert!(err.line.is_some());
}

#[test]
fn line_index() {
    let lines = LineIndex::new("ab\ncé\n\nx");
    assert_eq!(lines.position(0), Some((1, 1)));
    assert_eq!(lines.position(3), Some((2, 1)));
    assert_eq!(lines.position(6), Some((2, 3)));
    assert_eq!(lines.position(8), Some((4, 1)));
    assert_eq!(LineIndex::default().position(0), None);
}

// Property test: `decide` (through the compiled policy and its map image) agrees with
// a brute-force reading of the rule list as the profile and site wrote it.

/// Networks with nested prefixes, so that longest-prefix matching matters.
const NETS: [&str; 8] = [
    "10.0.0.0/8",
    "10.1.0.0/16",
    "10.1.2.0/24",
    "10.1.2.3/32",
    "192.0.2.0/25",
    "2001:db8::/32",
    "2001:db8:1::/48",
    "127.0.0.0/8",
];
const PEERS: [&str; 10] = [
    "10.1.2.3",
    "10.1.2.4",
    "10.1.9.9",
    "10.9.9.9",
    "192.0.2.1",
    "192.0.2.200",
    "2001:db8:1::1",
    "2001:db8:2::1",
    "127.0.0.1",
    "::1",
];
const GROUPS: [&str; 3] = ["g0", "g1", "g2"];

#[derive(Clone, Debug)]
struct GenRule {
    direction: &'static str,
    protocol: &'static str,
    ports: Vec<(u16, u16)>,
    feature: Option<&'static str>,
    loopback: bool,
    group: Option<usize>,
}

#[derive(Clone, Debug)]
struct GenPolicy {
    rules: Vec<GenRule>,
    /// Networks of each group; an empty group is listed in `any_peer_groups`.
    groups: [Vec<usize>; 3],
    features: Vec<&'static str>,
    loopback_enforce: bool,
    failsafe: bool,
}

fn gen_rule() -> impl Strategy<Value = GenRule> {
    let range = (1u16..40, 0u16..6).prop_map(|(a, len)| (a, (a + len).min(45)));
    (
        prop::sample::select(vec!["in", "out", "both"]),
        prop::sample::select(vec!["tcp", "udp", "both"]),
        prop::collection::vec(range, 1..4),
        prop::option::of(prop::sample::select(vec!["f1", "f2"])),
        any::<bool>(),
        prop::option::of(0usize..3),
    )
        .prop_map(
            |(direction, protocol, ports, feature, loopback, group)| GenRule {
                direction,
                protocol,
                ports,
                feature,
                // A rule is loopback or limited to a group, never both (that is an error).
                loopback: loopback && group.is_none(),
                group,
            },
        )
}

fn gen_policy() -> impl Strategy<Value = GenPolicy> {
    let group = prop::collection::vec(0usize..NETS.len(), 0..3);
    (
        prop::collection::vec(gen_rule(), 1..8),
        [group.clone(), group.clone(), group],
        prop::sample::subsequence(vec!["f1", "f2"], 0..=2),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(rules, groups, features, loopback_enforce, failsafe)| GenPolicy {
                rules,
                groups,
                features,
                loopback_enforce,
                failsafe,
            },
        )
}

fn quoted(items: impl IntoIterator<Item = String>) -> String {
    items
        .into_iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

impl GenPolicy {
    fn profile_text(&self) -> String {
        let mut t = String::from(
            "slug = \"gen\"\nproduct = \"g\"\nvendor = \"g\"\nsource = \"g\"\n\
             [[features]]\nname = \"f1\"\ndescription = \"d\"\n[[features]]\nname = \"f2\"\ndescription = \"d\"\n",
        );
        for (i, r) in self.rules.iter().enumerate() {
            let ports = quoted(r.ports.iter().map(|(a, b)| format!("{a}-{b}")));
            t += &format!(
                "[[rule]]\nid = \"r{i}\"\ndirection = \"{}\"\nprotocol = \"{}\"\nports = [{ports}]\nwhy = \"w\"\nsource = \"g\"\nscope = \"{}\"\n",
                r.direction,
                r.protocol,
                if r.loopback { "loopback" } else { "any" }
            );
            if let Some(f) = r.feature {
                t += &format!("feature = \"{f}\"\n");
            }
            if let Some(g) = r.group {
                t += &format!("peers = \"{}\"\n", GROUPS[g]);
            }
        }
        t
    }

    fn used_groups(&self) -> Vec<usize> {
        let mut used: Vec<usize> = self.rules.iter().filter_map(|r| r.group).collect();
        used.sort_unstable();
        used.dedup();
        used
    }

    fn site(&self) -> Site {
        let used = self.used_groups();
        let mut t = format!(
            "profile = \"gen.toml\"\nfeatures = [{}]\nloopback = \"{}\"\nfailsafe = {}\nany_peer_groups = [{}]\n[peers]\n",
            quoted(self.features.iter().map(|f| f.to_string())),
            if self.loopback_enforce {
                "enforce"
            } else {
                "exempt"
            },
            self.failsafe,
            quoted(
                used.iter()
                    .filter(|&&g| self.groups[g].is_empty())
                    .map(|&g| GROUPS[g].to_string())
            ),
        );
        for &g in used.iter().filter(|&&g| !self.groups[g].is_empty()) {
            t += &format!(
                "{} = [{}]\n",
                GROUPS[g],
                quoted(self.groups[g].iter().map(|&n| NETS[n].to_string()))
            );
        }
        Site::parse(&t, Path::new("site.toml")).unwrap()
    }

    /// The verdict read straight off the rule list: loopback exemption first; then
    /// the first active rule in order that opens the port to any peer; else, among the
    /// rules whose peer networks contain the peer, the most specific network, the
    /// earlier rule on a tie; else peer if some rule opens the port, else no rule.
    fn brute_force(&self, flow: Flow) -> (String, Option<String>) {
        use portcullis_common::stats::reason::{NO_RULE, PEER};
        let exempt = matches!(flow.peer, IpAddr::V4(a) if a.is_loopback())
            || flow.peer == "::1".parse::<IpAddr>().unwrap();
        if !self.loopback_enforce && exempt {
            return ("loopback".into(), None);
        }
        // (id, networks: None for any peer)
        let mut active: Vec<(String, Option<Vec<ipnet::IpNet>>)> = Vec::new();
        for (i, r) in self.rules.iter().enumerate() {
            if r.feature.is_some_and(|f| !self.features.contains(&f)) {
                continue;
            }
            let opens = dir(r.direction).contains(&flow.direction)
                && proto(r.protocol).contains(&flow.protocol)
                && r.ports.iter().any(|&(a, b)| (a..=b).contains(&flow.port));
            if !opens {
                continue;
            }
            let id = if r.direction == "both" {
                format!("r{i}/{}", flow.direction)
            } else {
                format!("r{i}")
            };
            let nets = if r.loopback {
                Some(vec![
                    "127.0.0.0/8".parse().unwrap(),
                    "::1/128".parse().unwrap(),
                ])
            } else {
                r.group.filter(|&g| !self.groups[g].is_empty()).map(|g| {
                    self.groups[g]
                        .iter()
                        .map(|&n| NETS[n].parse().unwrap())
                        .collect()
                })
            };
            active.push((id, nets));
        }
        if self.failsafe
            && flow.direction == Direction::In
            && flow.protocol == Protocol::Tcp
            && flow.port == 22
        {
            active.push((FAILSAFE_RULE.into(), None));
        }
        if let Some((id, _)) = active.iter().find(|(_, nets)| nets.is_none()) {
            return ("allow".into(), Some(id.clone()));
        }
        let best = active
            .iter()
            .enumerate()
            .filter_map(|(order, (id, nets))| {
                let longest = nets
                    .as_ref()?
                    .iter()
                    .filter(|n| n.contains(&flow.peer))
                    .map(|n| n.prefix_len())
                    .max()?;
                Some((longest, std::cmp::Reverse(order), id))
            })
            .max();
        match best {
            Some((_, _, id)) => ("allow".into(), Some(id.clone())),
            None if !active.is_empty() => (format!("deny {PEER}"), None),
            None => (format!("deny {NO_RULE}"), None),
        }
    }
}

proptest! {
    #[test]
    fn decide_agrees_with_brute_force(
        generated in gen_policy(),
        flows in prop::collection::vec(
            (
                prop::sample::select(vec![Direction::In, Direction::Out]),
                prop::sample::select(vec![Protocol::Tcp, Protocol::Udp]),
                prop_oneof![1u16..48, Just(22u16)],
                prop::sample::select(PEERS.to_vec()),
            ),
            1..24,
        ),
    ) {
        let profile = Profile::parse(&generated.profile_text(), Path::new("gen.toml")).unwrap();
        let site = generated.site();
        let policy = compile(&profile, &site, Some(Path::new("site.toml"))).unwrap();
        let tables = Tables::build(&policy).unwrap();
        for (direction, protocol, port, peer) in flows {
            let flow = Flow { direction, protocol, port, peer: peer.parse().unwrap() };
            let got = match tables.evaluate(&policy, flow).unwrap() {
                Verdict::LoopbackExempt => ("loopback".to_string(), None),
                Verdict::Allow(i) => ("allow".to_string(), Some(policy.rules[i].id.clone())),
                Verdict::Deny(r) => (format!("deny {r}"), None),
            };
            prop_assert_eq!(got, generated.brute_force(flow), "flow {:?}", flow);
        }
    }
}

#[test]
fn error_more_rules_than_the_maps_hold() {
    // 5000 rules of 7 lines each after a 4-line header: rule i starts at line 5 + 7 i.
    let rules: String = (0..5000)
        .map(|i| {
            format!(
                "[[rule]]\nid = \"r{i}\"\ndirection = \"out\"\nprotocol = \"tcp\"\nports = {}\nwhy = \"w\"\nsource = \"s\"\n",
                10000 + i
            )
        })
        .collect();
    let text = format!("slug = \"t\"\nproduct = \"t\"\nvendor = \"t\"\nsource = \"doc\"\n{rules}");
    let profile = Profile::parse(&text, Path::new("profile.toml")).expect("the profile parses");
    let site = Site::for_profile(&profile);
    let err = compile(&profile, &site, None).expect_err("4095 rules do not fit with the failsafe");
    // MAX_RULES = 4096: index 0 is "no rule", the failsafe takes one, so r4094 is the first
    // that does not fit; its id is on the second line of its block.
    assert_error(
        &err,
        "profile.toml",
        5 + 7 * 4094 + 1,
        "\"r4094\" does not fit",
    );
}

#[test]
fn the_digest_follows_what_is_enforced_not_the_mode() {
    let audit = compile_product("xeams", &[], false, None).unwrap();
    let mut enforce = audit.clone();
    enforce.mode = Mode::Enforce;
    assert_eq!(
        audit.digest(),
        enforce.digest(),
        "the mode is not the policy"
    );
    assert_eq!(audit.digest().len(), 16);
    let more = compile_product("xeams", &[], true, None).unwrap();
    assert_ne!(
        audit.digest(),
        more.digest(),
        "another feature, another digest"
    );
}
