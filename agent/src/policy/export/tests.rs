//! The exports checked against the policy they come from: the Windows scripts of the
//! Windows-only products against their reviewed golden files, every script parsed back
//! rule by rule, and the nft ruleset's shape. The nft ruleset's verdicts are compared
//! with the agent's in the kernel by the root test `tests/export.rs`.
//!
//! Golden files: `tests/export/golden/<product>.ps1`, the script of
//! `portcullis export --format windows-firewall --product <product> --all-features
//! --mode enforce`. After a deliberate change, regenerate them with
//! `PORTCULLIS_BLESS=1 cargo test -p portcullis --lib export`, and review the diff
//! against the vendor's table (profiles/<product>.toml names the rows).

use std::{collections::BTreeMap, path::Path};

use super::{Format, nft, peer_set_of, port_list, product_origin, render, windows};
use crate::{
    config::{Site, profile::SLUGS},
    policy::{Direction, LoopbackMode, Mode, Policy, Protocol, compiler},
};

/// The products that run only on Windows: their admins cannot run the agent.
const WINDOWS_ONLY: [&str; 3] = [
    "clearswift-exchange",
    "gfi-mailessentials",
    "mdaemon-securitygateway",
];

fn product(slug: &str, all_features: bool, mode: Mode) -> Policy {
    let mut policy = compiler::compile_product(slug, &[], all_features, None)
        .unwrap_or_else(|e| panic!("compiling {slug}: {e}"));
    policy.mode = mode;
    policy
}

/// A site of the lab kind: a peer group with networks and a host name, one with only
/// host names, one let be any peer, a loopback rule, both protocols.
fn site_policy(extra: &str) -> Policy {
    // One directory per call: the tests run in parallel in one process.
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("portcullis-export-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    std::fs::write(
        dir.join("profile.toml"),
        r#"slug = "lab"
product = "Lab"
vendor = "tests"
source = "tests"

[[rule]]
id = "smtp-in"
direction = "in"
protocol = "tcp"
ports = [25, 465, 587]
why = "mail from the internet, it's \"quoted\""
source = "tests row 1"

[[rule]]
id = "relay-in"
direction = "in"
protocol = "tcp"
ports = 2525
peers = "relays"
why = "the relays only"
source = "tests row 2"

[[rule]]
id = "dns"
direction = "out"
protocol = "both"
ports = 53
peers = "dns-servers"
why = "name lookups"
source = "tests row 3"

[[rule]]
id = "updates"
direction = "out"
protocol = "tcp"
ports = [80, 443, "8000-8010"]
peers = "update-servers"
why = "updates"
source = "tests row 4"

[[rule]]
id = "9p-admin"
direction = "both"
protocol = "udp"
ports = 9999
scope = "loopback"
why = "local admin"
source = "tests row 5"
"#,
    )
    .expect("profile");
    let path = dir.join("site.toml");
    std::fs::write(
        &path,
        format!(
            r#"profile = "profile.toml"
mode = "enforce"
{extra}

[peers]
relays = ["198.51.100.0/24", "198.51.100.0/25", "2001:db8:1::/48", "mx.example.net"]
dns-servers = ["192.0.2.53/32"]
update-servers = ["updates.example.com", "*.cdn.example.com"]
"#
        ),
    )
    .expect("site");
    let site = Site::parse(&std::fs::read_to_string(&path).unwrap(), &path).expect("site parses");
    let policy = compiler::compile_site(&site, Some(&path)).expect("site compiles");
    let _ = std::fs::remove_dir_all(&dir);
    policy
}

#[test]
fn windows_golden_files_of_the_windows_only_products() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/export/golden");
    let bless = std::env::var_os("PORTCULLIS_BLESS").is_some();
    let mut stale = Vec::new();
    for slug in WINDOWS_ONLY {
        let policy = product(slug, true, Mode::Enforce);
        let origin = product_origin(slug, &[], true);
        let script = render(&policy, Format::WindowsFirewall, &origin).expect("renders");
        let path = dir.join(format!("{slug}.ps1"));
        if bless {
            std::fs::create_dir_all(&dir).expect("golden dir");
            std::fs::write(&path, &script).expect("writing a golden file");
            continue;
        }
        let golden = std::fs::read_to_string(&path).unwrap_or_default();
        if golden != script {
            stale.push(format!("{}:\n{script}", path.display()));
        }
    }
    assert!(
        stale.is_empty(),
        "the Windows Firewall export differs from its golden file (review, then regenerate \
         with PORTCULLIS_BLESS=1 cargo test -p portcullis --lib export):\n{}",
        stale.join("\n")
    );
}

/// One `New-NetFirewallRule` line parsed back: flag -> value (quotes removed).
fn parse_rule(line: &str) -> BTreeMap<String, String> {
    let mut flags = BTreeMap::new();
    let mut chars = line.chars().peekable();
    let mut flag: Option<String> = None;
    let mut word = String::new();
    let mut push = |word: &mut String, flag: &mut Option<String>| {
        if word.starts_with('-') && flag.is_none() {
            *flag = Some(word[1..].to_string());
        } else if let Some(f) = flag.take() {
            flags.insert(f, word.clone());
        }
        word.clear();
    };
    while let Some(c) = chars.next() {
        match c {
            '\'' => loop {
                match chars.next() {
                    Some('\'') if chars.peek() == Some(&'\'') => {
                        chars.next();
                        word.push('\'');
                    }
                    Some('\'') | None => break,
                    Some(c) => word.push(c),
                }
            },
            ' ' => push(&mut word, &mut flag),
            '|' => break,
            c => word.push(c),
        }
    }
    push(&mut word, &mut flag);
    flags
}

/// Every policy rule has exactly one firewall rule per protocol, with its direction,
/// protocol, ports and remote addresses; nothing else but the echo rules is created.
fn check_windows_structure(policy: &Policy) {
    let script = windows::render(policy, "tests").expect("renders");
    let created: Vec<_> = script
        .lines()
        .filter(|l| l.starts_with("New-NetFirewallRule "))
        .map(parse_rule)
        .collect();
    let mut expected = 0;
    for (index, rule) in policy.rules.iter().enumerate() {
        for &protocol in &rule.protocols {
            expected += 1;
            let name = windows::rule_name(policy, &rule.id, protocol);
            let found: Vec<_> = created.iter().filter(|f| f["Name"] == name).collect();
            assert_eq!(found.len(), 1, "{name}: one firewall rule\n{script}");
            let f = found[0];
            assert_eq!(f["Group"], "$Group", "{name}");
            let (direction, port_flag) = match rule.direction {
                Direction::In => ("Inbound", "LocalPort"),
                Direction::Out => ("Outbound", "RemotePort"),
            };
            assert_eq!(f["Direction"], direction, "{name}");
            let proto = if protocol == Protocol::Tcp {
                "TCP"
            } else {
                "UDP"
            };
            assert_eq!(f["Protocol"], proto, "{name}");
            assert_eq!(f[port_flag], port_list(&rule.ports, ","), "{name}");
            assert!(
                !f.contains_key(if port_flag == "LocalPort" {
                    "RemotePort"
                } else {
                    "LocalPort"
                }),
                "{name}: one port condition"
            );
            assert_eq!(f["Action"], "Allow", "{name}");
            assert!(f["DisplayName"].contains(&rule.id), "{name}");
            assert!(f["Description"].contains(&rule.why), "{name}");
            assert!(f["Description"].contains(&rule.source), "{name}");
            match peer_set_of(policy, index) {
                None => {
                    assert_eq!(f["RemoteAddress"], "Any", "{name}");
                    assert_eq!(f["Enabled"], "True", "{name}");
                }
                Some(set) if set.networks.is_empty() => {
                    // Host names only: never "any peer"; created disabled.
                    assert!(!f.contains_key("RemoteAddress"), "{name}");
                    assert_eq!(f["Enabled"], "False", "{name}");
                }
                Some(set) => {
                    let mut want: Vec<String> =
                        set.networks.iter().map(ToString::to_string).collect();
                    let mut got: Vec<String> =
                        f["RemoteAddress"].split(',').map(str::to_string).collect();
                    want.sort();
                    got.sort();
                    assert_eq!(got, want, "{name}: remote addresses");
                    assert_eq!(f["Enabled"], "True", "{name}");
                }
            }
        }
    }
    let echo = created
        .iter()
        .filter(|f| f["Name"].contains("/icmp-echo/"))
        .count();
    assert_eq!(echo, if policy.icmp_echo { 4 } else { 0 });
    assert_eq!(
        created.len(),
        expected + echo,
        "firewall rules beyond the policy's\n{script}"
    );
    assert!(
        script.contains("Remove-NetFirewallRule -Group $Group"),
        "the clean-up of an earlier run"
    );
    let blocks = script.contains("-DefaultInboundAction Block -DefaultOutboundAction Block");
    assert_eq!(blocks, policy.mode == Mode::Enforce, "default actions");
}

#[test]
fn windows_script_has_one_rule_per_policy_rule_and_protocol() {
    for slug in SLUGS {
        for all in [false, true] {
            for mode in [Mode::Audit, Mode::Enforce] {
                check_windows_structure(&product(slug, all, mode));
            }
        }
    }
    let site = site_policy("");
    check_windows_structure(&site);
    let script = windows::render(&site, "tests").expect("renders");
    assert!(
        script.contains("NOT EXPRESSED: peer group relays names mx.example.net"),
        "{script}"
    );
    assert!(
        script.contains("-RemoteAddress '198.51.100.0/24','198.51.100.0/25','2001:db8:1::/48'"),
        "each network quoted, nested ones as listed: {script}"
    );
    assert!(
        script.contains("it''s \"quoted\""),
        "quotes in a PowerShell string"
    );
}

#[test]
fn windows_refuses_loopback_enforce() {
    let mut policy = site_policy("loopback = \"enforce\"");
    assert_eq!(policy.loopback, LoopbackMode::Enforce);
    let e = windows::render(&policy, "tests").expect_err("refused");
    assert!(e.message.contains("loopback"), "{e}");
    policy.loopback = LoopbackMode::Exempt;
    assert!(windows::render(&policy, "tests").is_ok());
}

#[test]
fn nft_has_one_counter_per_rule_and_states_what_it_cannot_express() {
    for mode in [Mode::Audit, Mode::Enforce] {
        let mut policy = site_policy("");
        policy.mode = mode;
        let text = nft::render(&policy, "tests").expect("renders");
        for rule in &policy.rules {
            let counter = nft::counter_name(&rule.id);
            assert!(
                text.contains(&format!("\tcounter {counter} {{ }}\n")),
                "{counter} declared"
            );
            let uses = text.matches(&format!("name \"{counter}\" accept")).count();
            let per_version = if peer_set_of(
                &policy,
                policy.rules.iter().position(|r| r.id == rule.id).unwrap(),
            )
            .is_some()
            {
                2
            } else {
                1
            };
            assert_eq!(
                uses, per_version,
                "{counter}: one nft rule (per IP version)\n{text}"
            );
        }
        assert!(
            text.contains("counter rule-9p-admin/in { }"),
            "a digit-first id"
        );
        assert!(text.contains("NOT EXPRESSED: peer group update-servers names"));
        assert!(text.contains(
            "set peers-update-servers-v4 { type ipv4_addr; flags interval; auto-merge; }"
        ));
        assert!(text.contains("ct state established,related accept"));
        let last_in = match mode {
            Mode::Enforce => "counter name \"portcullis-denied-in\" drop",
            Mode::Audit => "counter name \"portcullis-would-deny-in\" accept",
        };
        assert!(text.contains(last_in), "{mode}: {last_in}");
        assert_eq!(
            text.contains(" drop\n"),
            mode == Mode::Enforce,
            "audit drops nothing"
        );
    }
}

#[test]
fn nft_refuses_a_rule_id_that_takes_an_own_counter() {
    let mut policy = site_policy("");
    policy.rules[0].id = "portcullis-denied-in".into();
    let e = nft::render(&policy, "tests").expect_err("refused");
    assert!(e.message.contains("portcullis-denied-in"), "{e}");
}
