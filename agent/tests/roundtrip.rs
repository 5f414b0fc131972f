//! Round trip of the configuration format: parse -> print -> parse gives the
//! same policy.
//!
//! A generated profile and site config (TOML written in the varied ways people write
//! it: ports as a number, a range string or a list, basic and literal strings, any
//! Unicode in the free text, comments) are parsed and compiled into a [`Policy`]. That
//! policy is printed back as a profile and a site config by [`print`], which knows only
//! the policy, and those are parsed and compiled again. The two policies must be equal:
//! nothing the parser reads is lost, reinterpreted or reordered on the way.

use std::{collections::BTreeSet, fmt::Write as _, path::Path};

use portcullis::{
    config::{profile::Profile, site::Site},
    policy::{
        Direction, LoopbackMode, Policy, Protocol, Rule, RuleScope,
        compiler::{self, FAILSAFE_RULE, LOOPBACK_SET},
    },
};
use proptest::prelude::*;

/// A TOML basic string: quotes, backslashes and control characters escaped.
fn basic(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A string as a user might write it: a literal string where one can hold it.
fn any_string(s: &str, literal: bool) -> String {
    let fits_literal = !s.contains('\'') && !s.chars().any(|c| c.is_control());
    if literal && fits_literal {
        format!("'{s}'")
    } else {
        basic(s)
    }
}

// ---------------------------------------------------------------------------------
// The printer: a policy back to a profile and a site config.
// ---------------------------------------------------------------------------------

fn protocol_text(p: &[Protocol]) -> &'static str {
    match p {
        [Protocol::Tcp] => "tcp",
        [Protocol::Udp] => "udp",
        _ => "both",
    }
}

fn ports_text(ports: &[(u16, u16)]) -> String {
    let items: Vec<String> = ports
        .iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("\"{a}-{b}\"")
            }
        })
        .collect();
    format!("[{}]", items.join(", "))
}

/// Whether two compiled rules are the `/in` and `/out` halves of one `both` rule.
fn halves(a: &Rule, b: &Rule) -> Option<String> {
    let base = a.id.strip_suffix("/in")?;
    (b.id.strip_suffix("/out") == Some(base)
        && a.direction == Direction::In
        && b.direction == Direction::Out
        && (
            &a.protocols,
            &a.ports,
            &a.feature,
            a.scope,
            &a.peers,
            &a.why,
            &a.source,
            &a.note,
        ) == (
            &b.protocols,
            &b.ports,
            &b.feature,
            b.scope,
            &b.peers,
            &b.why,
            &b.source,
            &b.note,
        ))
        .then(|| base.to_owned())
}

/// Prints `policy` as (profile, site). `both` rules come back as one rule; the failsafe
/// rule as `failsafe = true`; peer sets (networks and names, the profile's own
/// `[[peer_group]]`s included) as `[peers]`; groups meaning any peer as
/// `any_peer_groups`; every feature a rule names is declared and turned on.
fn print(policy: &Policy) -> (String, String) {
    let mut rules: Vec<&Rule> = policy.rules.iter().collect();
    let failsafe = rules.last().is_some_and(|r| r.id == FAILSAFE_RULE);
    if failsafe {
        rules.pop();
    }
    let features: BTreeSet<&str> = rules.iter().filter_map(|r| r.feature.as_deref()).collect();
    let mut profile = format!(
        "slug = {}\nproduct = \"round trip\"\nvendor = \"tests\"\nsource = \"tests\"\n",
        basic(&policy.product)
    );
    for f in &features {
        let _ = write!(
            profile,
            "\n[[features]]\nname = {}\ndescription = \"d\"\n",
            basic(f)
        );
    }
    let mut i = 0;
    while i < rules.len() {
        let r = rules[i];
        let (id, direction) = match rules.get(i + 1).and_then(|b| halves(r, b)) {
            Some(base) => {
                i += 1;
                (base, "both")
            }
            None => (
                r.id.clone(),
                if r.direction == Direction::In {
                    "in"
                } else {
                    "out"
                },
            ),
        };
        i += 1;
        let _ = write!(
            profile,
            "\n[[rule]]\nid = {}\ndirection = \"{direction}\"\nprotocol = \"{}\"\nports = {}\nwhy = {}\nsource = {}\n",
            basic(&id),
            protocol_text(&r.protocols),
            ports_text(&r.ports),
            basic(&r.why),
            basic(&r.source)
        );
        if let Some(f) = &r.feature {
            let _ = writeln!(profile, "feature = {}", basic(f));
        }
        if r.scope == RuleScope::Loopback {
            profile.push_str("scope = \"loopback\"\n");
        }
        if let Some(p) = &r.peers {
            let _ = writeln!(profile, "peers = {}", basic(p));
        }
        if let Some(n) = &r.note {
            let _ = writeln!(profile, "note = {}", basic(n));
        }
    }
    let defined: BTreeSet<&str> = policy
        .peer_sets
        .iter()
        .map(|s| s.name.as_str())
        .filter(|n| *n != LOOPBACK_SET)
        .collect();
    let any: BTreeSet<&str> = rules
        .iter()
        .filter_map(|r| r.peers.as_deref())
        .filter(|g| !defined.contains(g))
        .collect();
    let list =
        |items: &mut dyn Iterator<Item = &str>| items.map(basic).collect::<Vec<_>>().join(", ");
    let mut site = format!(
        "mode = \"{}\"\nloopback = \"{}\"\nicmp_echo = {}\nfailsafe = {failsafe}\nfeatures = [{}]\nany_peer_groups = [{}]\n",
        policy.mode,
        if policy.loopback == LoopbackMode::Enforce {
            "enforce"
        } else {
            "exempt"
        },
        policy.icmp_echo,
        list(&mut features.iter().copied()),
        list(&mut any.iter().copied()),
    );
    if !defined.is_empty() {
        site.push_str("\n[peers]\n");
        for set in policy
            .peer_sets
            .iter()
            .filter(|s| defined.contains(s.name.as_str()))
        {
            let members: Vec<String> = set
                .networks
                .iter()
                .map(ToString::to_string)
                .chain(set.names.iter().map(ToString::to_string))
                .map(|m| basic(&m))
                .collect();
            let _ = writeln!(site, "{} = [{}]", basic(&set.name), members.join(", "));
        }
    }
    (profile, site)
}

fn compile(profile: &str, site: &str) -> Policy {
    let p = Profile::parse(profile, Path::new("profile.toml"))
        .unwrap_or_else(|e| panic!("profile does not parse: {e}\n{profile}"));
    let s = Site::parse(site, Path::new("site.toml"))
        .unwrap_or_else(|e| panic!("site does not parse: {e}\n{site}"));
    compiler::compile(&p, &s, None)
        .unwrap_or_else(|e| panic!("does not compile: {e}\n{profile}\n{site}"))
}

// ---------------------------------------------------------------------------------
// The generator: valid configs, written in varied ways.
// ---------------------------------------------------------------------------------

/// Not "dns-servers": that group names the trusted resolvers and takes addresses only,
/// while the generator gives any group host names.
const GROUPS: [&str; 3] = ["mail-relays", "ldap", "g.2_x"];
/// Members of a peer group: networks and host names (in the cases people write them).
const NETS: [&str; 10] = [
    "192.0.2.0/24",
    "198.51.100.7/32",
    "10.0.0.0/8",
    "2001:db8::/32",
    "fd00::1/128",
    "0.0.0.0/0",
    "repo.example.com",
    "*.Mail.Example.NET",
    "xn--bcher-kva.example",
    "a-1.b2.example.org",
];

#[derive(Clone, Debug)]
struct GenRule {
    id_suffix: String,
    direction: &'static str,
    protocol: &'static str,
    /// (first, last, written as a range string even when first == last)
    ports: Vec<(u16, u16, bool)>,
    feature: Option<usize>,
    loopback: bool,
    group: Option<usize>,
    why: String,
    note: Option<String>,
    literal: bool,
    in_site: bool,
}

#[derive(Clone, Debug)]
struct GenConfig {
    rules: Vec<GenRule>,
    /// Members (networks and names) of each group; empty: the group is listed in
    /// any_peer_groups.
    groups: [Vec<usize>; 3],
    features_on: Vec<bool>,
    mode: bool,
    loopback: bool,
    icmp_echo: bool,
    failsafe: Option<bool>,
}

fn gen_rule() -> impl Strategy<Value = GenRule> {
    let port = (1u16..=65535, 0u16..50, any::<bool>())
        .prop_map(|(a, len, s)| (a, a.saturating_add(len), s));
    (
        "[a-z0-9._-]{0,6}",
        prop::sample::select(vec!["in", "out", "both"]),
        prop::sample::select(vec!["tcp", "udp", "both"]),
        prop::collection::vec(port, 1..5),
        prop::option::of(0usize..3),
        any::<bool>(),
        prop::option::of(0usize..3),
        // A reason is required (not blank); any other text goes, escapes included.
        (
            any::<String>().prop_filter("a blank why is an error", |w| !w.trim().is_empty()),
            prop::option::of(any::<String>()),
            any::<bool>(),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                id_suffix,
                direction,
                protocol,
                ports,
                feature,
                loopback,
                group,
                (why, note, literal, in_site),
            )| {
                // Loopback rules are `both` and never limited to a group (that is an error).
                let loopback = loopback && group.is_none();
                GenRule {
                    id_suffix,
                    direction: if loopback { "both" } else { direction },
                    protocol,
                    ports,
                    feature,
                    loopback,
                    group,
                    why,
                    note,
                    literal,
                    in_site,
                }
            },
        )
}

fn gen_config() -> impl Strategy<Value = GenConfig> {
    let group = prop::collection::vec(0usize..NETS.len(), 0..3);
    (
        prop::collection::vec(gen_rule(), 1..10),
        [group.clone(), group.clone(), group],
        prop::collection::vec(any::<bool>(), 3),
        (
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            prop::option::of(any::<bool>()),
        ),
    )
        .prop_map(
            |(rules, groups, features_on, (mode, loopback, icmp_echo, failsafe))| GenConfig {
                rules,
                groups,
                features_on,
                mode,
                loopback,
                icmp_echo,
                failsafe,
            },
        )
}

impl GenConfig {
    /// (profile, site) as a user could have written them.
    fn texts(&self) -> (String, String) {
        let mut profile = String::from(
            "# generated\nslug = \"gen\"\nproduct = 'Gen'\nvendor = \"v\"\nsource = \"doc\"\n",
        );
        for f in 0..3 {
            let _ = write!(
                profile,
                "\n[[features]]\nname = \"f{f}\"   # feature {f}\ndescription = \"d\"\n"
            );
        }
        let mut site_rules = String::new();
        for (i, r) in self.rules.iter().enumerate() {
            let ports = match r.ports.as_slice() {
                [(a, b, false)] if a == b => a.to_string(),
                [(a, b, _)] => format!("\"{a}-{b}\""),
                many => {
                    let items: Vec<String> = many
                        .iter()
                        .map(|&(a, b, s)| {
                            if a == b && !s {
                                a.to_string()
                            } else {
                                format!("\"{a}-{b}\"")
                            }
                        })
                        .collect();
                    format!("[ {} ]", items.join(" ,"))
                }
            };
            let mut t = format!(
                "\n[[rule]]\nid = \"r{i}{}\"\ndirection = \"{}\"\nprotocol = \"{}\"\nports = {ports}\nwhy = {}\n",
                r.id_suffix,
                r.direction,
                r.protocol,
                any_string(&r.why, r.literal),
            );
            if !r.in_site {
                t.push_str("source = \"doc row 1\"\n");
            }
            if let Some(f) = r.feature {
                let _ = writeln!(t, "feature = \"f{f}\"");
            }
            if r.loopback {
                t.push_str("scope = \"loopback\"\n");
            }
            if let Some(g) = r.group {
                let _ = writeln!(t, "peers = \"{}\"", GROUPS[g]);
            }
            if let Some(n) = &r.note {
                let _ = writeln!(t, "note = {}", any_string(n, !r.literal));
            }
            if r.in_site {
                site_rules += &t
            } else {
                profile += &t
            }
        }
        let used: BTreeSet<usize> = self.rules.iter().filter_map(|r| r.group).collect();
        let on: Vec<String> = (0..3)
            .filter(|&f| self.features_on[f])
            .map(|f| format!("\"f{f}\""))
            .collect();
        let any: Vec<String> = used
            .iter()
            .filter(|&&g| self.groups[g].is_empty())
            .map(|&g| format!("\"{}\"", GROUPS[g]))
            .collect();
        let mut site = format!(
            "mode = \"{}\"\nloopback = \"{}\"\nicmp_echo = {}\nfeatures = [{}]\nany_peer_groups = [{}]\n",
            if self.mode { "enforce" } else { "audit" },
            if self.loopback { "enforce" } else { "exempt" },
            self.icmp_echo,
            on.join(", "),
            any.join(", "),
        );
        if let Some(f) = self.failsafe {
            let _ = writeln!(site, "failsafe = {f}");
        }
        let defined: Vec<usize> = used
            .iter()
            .copied()
            .filter(|&g| !self.groups[g].is_empty())
            .collect();
        if !defined.is_empty() {
            site.push_str("\n[peers]\n");
            for g in defined {
                let nets: Vec<String> = self.groups[g]
                    .iter()
                    .map(|&n| format!("\"{}\"", NETS[n]))
                    .collect();
                let _ = writeln!(site, "\"{}\" = [{}]", GROUPS[g], nets.join(", "));
            }
        }
        site += &site_rules;
        (profile, site)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn parse_print_parse_gives_the_same_policy(config in gen_config()) {
        let (profile, site) = config.texts();
        let first = compile(&profile, &site);
        let (profile2, site2) = print(&first);
        let second = compile(&profile2, &site2);
        prop_assert_eq!(&second, &first, "printed as:\n{}\n---\n{}", profile2, site2);
        // The printed form is a fixed point: printing again gives the same text.
        prop_assert_eq!(print(&second), (profile2, site2));
    }
}

#[test]
fn every_shipped_profile_round_trips_with_all_features() {
    for slug in portcullis::config::profile::SLUGS {
        let policy =
            compiler::compile_product(slug, &[], true, None).expect("a shipped profile compiles");
        let (profile, site) = print(&policy);
        assert_eq!(
            compile(&profile, &site),
            policy,
            "{slug}: printed as\n{profile}\n---\n{site}"
        );
    }
}

/// Found by the `config` fuzz target: toml describes some syntax errors with an empty
/// message; the error must still say something.
#[test]
fn a_control_character_in_a_comment_is_an_error_with_a_message() {
    let err = Profile::parse(
        "# ok\n# \u{3}bad\nslug = \"x\"\n",
        Path::new("profile.toml"),
    )
    .expect_err("a control character is not allowed in a TOML comment");
    assert!(!err.message.is_empty(), "{err:?}");
    assert_eq!(err.line, Some(2), "{err}");
}
