//! The policy compiler: a product profile plus a site config in, the flat [`Policy`] the
//! datapath enforces out.
//!
//! [`compile`] is pure and deterministic. It does no I/O, and the same inputs always
//! give the same policy. [`compile_site`] and [`compile_product`] are the entry points
//! the commands and the daemon use. They find the profile (embedded, or read from the
//! path the site names) and then call [`compile`].
//!
//! What compiling does:
//! - Rules whose feature is off are dropped. A `direction = "both"` rule becomes two
//!   rules, `<id>/in` and `<id>/out`.
//! - Peer groups are resolved. `scope = "loopback"` uses the built-in `loopback` set. A
//!   named group uses the site's members (networks and host names), else the profile's
//!   `[[peer_group]]` of the vendor's named servers; it means any peer when the site
//!   lists it in `any_peer_groups` (or, for a vendor group, sets `vendor_peers =
//!   "any"`). Such a rule keeps the group's name in `Rule::peers`, but its entries have
//!   `peer_set: None`.
//! - The base set's rules (`config::base`, from what the host's configuration names,
//!   read before compiling) follow the site's, each limited to its own peer group of
//!   servers (`base-ntp-servers`, `base-mirrors`, `base-resolvers`) or to none.
//! - The failsafe rule goes last, then the flat entries are built: one per (rule,
//!   protocol, merged port range), sorted.
//!
//! Every error is a [`PolicyError`]: the file, the line, a lowercase message with the
//! offending value quoted, and a hint.

use std::{collections::BTreeSet, ops::Range, path::Path};

use crate::{
    config::{
        PolicyError,
        base::{self, BaseRule},
        error::LineIndex,
        peers::{self, Peer},
        profile::{self, DirectionSpec, Profile, RuleSpec},
        site::{Site, VendorPeers},
    },
    policy::{Direction, Entry, PeerSet, Policy, Protocol, Rule, RuleScope},
};
use ipnet::IpNet;
use portcullis_common::{maps::MAX_RULES, names::MAX_NAME_GROUPS};

/// Id of the rule that keeps inbound SSH open unless the site sets `failsafe = false`.
pub const FAILSAFE_RULE: &str = "failsafe-ssh";

pub use crate::config::profile::LOOPBACK_SET;

/// Compiles a site config. Its profile is the embedded one of `site.product`, or the
/// file `site.profile` (relative to the directory of `site_path`). `site_path` is only
/// used to place errors and to resolve that path.
pub fn compile_site(site: &Site, site_path: Option<&Path>) -> Result<Policy, PolicyError> {
    let profile = site_profile(site, site_path)?;
    compile(&profile, site, site_path)
}

/// Finds the profile a site config names (reading it when it is a path).
pub fn site_profile(site: &Site, site_path: Option<&Path>) -> Result<Profile, PolicyError> {
    let here = |span: Range<usize>| (site_path, site.lines(), span);
    match (&site.product, &site.profile) {
        (Some(slug), None) => profile::find(slug.get_ref()).map_err(|e| {
            let (file, lines, span) = here(slug.span());
            e.at(file, lines, span)
        }),
        (None, Some(path)) => {
            let resolved = match site_path.and_then(Path::parent) {
                Some(dir) if path.get_ref().is_relative() => dir.join(path.get_ref()),
                _ => path.get_ref().clone(),
            };
            Profile::load(&resolved).map_err(|e| {
                if e.file.as_deref() == Some(resolved.as_path()) && e.line.is_some() {
                    return e;
                }
                let (file, lines, span) = here(path.span());
                e.at(file, lines, span)
            })
        }
        (Some(_), Some(path)) => Err(PolicyError::new(
            "the site config sets both \"product\" and \"profile\"",
        )
        .hint("keep one: product = \"<slug>\" for a built-in profile, or profile = \"<path>\"")
        .at(site_path, site.lines(), path.span())),
        (None, None) => Err(PolicyError::new("the site config names no product")
            .hint(format!(
                "add product = \"<slug>\" ({}) or profile = \"<path>\"; `portcullis detect` names the product this host runs",
                profile::SLUGS.join(", ")
            ))
            .at(site_path, &LineIndex::default(), 0..0)),
    }
}

/// Compiles a built-in product with the default site settings (audit, failsafe on,
/// loopback exempt, the groups a site fills in meaning any peer, the vendor's named
/// servers kept to their names) and the given features. `host`: the root of the host
/// whose base set joins the policy (`/` for the agent), or None for the product alone.
pub fn compile_product(
    slug: &str,
    features: &[String],
    all_features: bool,
    host: Option<&Path>,
) -> Result<Policy, PolicyError> {
    let mut site = Site::default_for(slug);
    if let Some(root) = host {
        site.read_host(root);
    }
    compile_with_defaults(&profile::find(slug)?, site, features, all_features)
}

/// Like [`compile_product`], for a profile already loaded (e.g. from a user's file).
pub fn compile_profile(
    profile: &Profile,
    features: &[String],
    all_features: bool,
) -> Result<Policy, PolicyError> {
    compile_with_defaults(profile, Site::for_profile(profile), features, all_features)
}

/// Compiles `profile` under `site` with these features (or all of them) turned on.
pub fn compile_with_defaults(
    profile: &Profile,
    mut site: Site,
    features: &[String],
    all_features: bool,
) -> Result<Policy, PolicyError> {
    site.set_features(if all_features {
        profile.feature_names()
    } else {
        features.to_vec()
    });
    compile(profile, &site, None)
}

/// Where a rule spec was written, to place errors about it.
#[derive(Clone, Copy)]
struct Origin<'a> {
    file: Option<&'a Path>,
    lines: &'a LineIndex,
    in_profile: bool,
}

impl Origin<'_> {
    fn error(self, span: Range<usize>, message: String, hint: String) -> PolicyError {
        PolicyError::new(message)
            .hint(hint)
            .at(self.file, self.lines, span)
    }
}

/// The compiler proper: pure, deterministic. See the module docs.
pub fn compile(
    profile: &Profile,
    site: &Site,
    site_path: Option<&Path>,
) -> Result<Policy, PolicyError> {
    let site_at = Origin {
        file: site_path,
        lines: site.lines(),
        in_profile: false,
    };
    let profile_at = Origin {
        file: Some(profile.file.as_path()),
        lines: profile.lines(),
        in_profile: true,
    };
    let enabled = check_features(profile, site, site_at)?;
    check_rule_ids(profile, site, site_at)?;
    check_peer_groups(profile, site, site_at)?;

    // Rules in policy order, each with the peer set it is limited to (None: any peer).
    let mut rules = Vec::new();
    let mut peers_of: Vec<Option<String>> = Vec::new();
    // Counter index 0 means "no rule" in the maps, and the failsafe rule needs one too.
    let base = site.base_rules();
    let capacity = MAX_RULES as usize - 1 - usize::from(site.failsafe) - base.len();
    let specs = profile
        .rules
        .iter()
        .map(|r| (r, profile_at))
        .chain(site.rules.iter().map(|r| (r, site_at)));
    for (spec, at) in specs {
        let on = spec
            .feature
            .as_ref()
            .is_none_or(|f| enabled.contains(f.get_ref().as_str()));
        if !on {
            continue;
        }
        let peers = resolve_peers(spec, at, profile, site, site_at)?;
        for &direction in directions(spec.direction) {
            let id = match spec.direction {
                DirectionSpec::Both => format!("{}/{direction}", spec.id.get_ref()),
                _ => spec.id.get_ref().clone(),
            };
            if rules.len() == capacity {
                return Err(at.error(
                    spec.id.span(),
                    format!("rule \"{id}\" does not fit: the datapath holds at most {capacity} rules"),
                    "merge rules that differ only in ports (a rule takes a list of ports and ranges)".into(),
                ));
            }
            rules.push(Rule {
                id,
                direction,
                protocols: spec.protocol.protocols().to_vec(),
                ports: merge_ranges(spec.ports.get_ref().ranges().to_vec()),
                feature: spec.feature.as_ref().map(|f| f.get_ref().clone()),
                scope: spec.scope,
                peers: spec.peers.as_ref().map(|p| p.get_ref().clone()),
                why: spec.why.clone(),
                source: spec.source.clone().unwrap_or_else(|| "site".into()),
                note: spec.note.clone(),
            });
            peers_of.push(peers.clone());
        }
    }
    for b in &base {
        rules.push(b.rule.clone());
        peers_of.push(b.rule.peers.clone());
    }
    if site.failsafe {
        rules.push(failsafe_rule(site.failsafe_port.get()));
        peers_of.push(None);
    }
    let peer_sets = peer_sets(profile, site, &base, &peers_of);
    let named = peer_sets.iter().filter(|s| !s.names.is_empty()).count();
    if named > MAX_NAME_GROUPS {
        return Err(site_at.error(
            site.profile_span(),
            format!("the policy has {named} peer groups with host names; the datapath holds at most {MAX_NAME_GROUPS}"),
            "merge groups whose rules open the same ports, or set vendor_peers = \"any\"".into(),
        ));
    }
    let entries = entries(&rules, &peers_of, &peer_sets);
    Ok(Policy {
        product: profile.slug.get_ref().clone(),
        mode: site.mode,
        loopback: site.loopback,
        icmp_echo: site.icmp_echo,
        rules,
        peer_sets,
        entries,
    })
}

/// Checks the site's features and its rules' features against the profile's, and
/// returns the features turned on.
fn check_features<'a>(
    profile: &'a Profile,
    site: &'a Site,
    site_at: Origin<'_>,
) -> Result<BTreeSet<&'a str>, PolicyError> {
    let known: BTreeSet<&str> = profile
        .features
        .iter()
        .map(|f| f.name.get_ref().as_str())
        .collect();
    let unknown = |span: Range<usize>, message: String| {
        let hint = if known.is_empty() {
            format!("{} has no optional features", profile.slug.get_ref())
        } else {
            let names: Vec<&str> = known.iter().copied().collect();
            format!(
                "features of {}: {}",
                profile.slug.get_ref(),
                names.join(", ")
            )
        };
        site_at.error(span, message, hint)
    };
    for feature in &site.features {
        if !known.contains(feature.get_ref().as_str()) {
            let message = format!("unknown feature \"{}\"", feature.get_ref());
            return Err(unknown(feature.span(), message));
        }
    }
    for rule in &site.rules {
        if let Some(feature) = &rule.feature
            && !known.contains(feature.get_ref().as_str())
        {
            let message = format!(
                "rule \"{}\" names unknown feature \"{}\"",
                rule.id.get_ref(),
                feature.get_ref()
            );
            return Err(unknown(feature.span(), message));
        }
    }
    Ok(site.features.iter().map(|f| f.get_ref().as_str()).collect())
}

/// Site rule ids must not repeat a profile rule's id or the failsafe's: counters are
/// kept by id. (Each file's own duplicates were found when it was parsed.) All profile
/// rules count, on or off, so that turning a feature on never causes a clash.
fn check_rule_ids(profile: &Profile, site: &Site, site_at: Origin<'_>) -> Result<(), PolicyError> {
    let mut ids: BTreeSet<&str> = profile
        .rules
        .iter()
        .map(|r| r.id.get_ref().as_str())
        .collect();
    for rule in &site.rules {
        let id = rule.id.get_ref().as_str();
        if !ids.insert(id) {
            return Err(site_at.error(
                rule.id.span(),
                format!("duplicate rule id \"{id}\": the profile already has a rule with this id"),
                "give the site rule another id".into(),
            ));
        }
    }
    for id in base::RULE_IDS {
        if let Some(rule) = site.rules.iter().find(|r| r.id.get_ref() == id) {
            return Err(site_at.error(
                rule.id.span(),
                format!("duplicate rule id \"{id}\": the base set has a rule with this id"),
                "give the site rule another id".into(),
            ));
        }
    }
    if site.failsafe && ids.contains(FAILSAFE_RULE) {
        let span = site
            .rules
            .iter()
            .find(|r| r.id.get_ref() == FAILSAFE_RULE)
            .map_or(0..0, |r| r.id.span());
        return Err(site_at.error(
            span,
            format!("duplicate rule id \"{FAILSAFE_RULE}\": the failsafe rule has this id"),
            "rename the rule, or set failsafe = false".into(),
        ));
    }
    Ok(())
}

/// The peer sets the rules use, by name, so that their indices do not depend on rule
/// order. A group's members are the site's list, else the profile's `[[peer_group]]`.
fn peer_sets(
    profile: &Profile,
    site: &Site,
    base: &[BaseRule],
    peers_of: &[Option<String>],
) -> Vec<PeerSet> {
    let used: BTreeSet<&str> = peers_of.iter().flatten().map(String::as_str).collect();
    used.into_iter()
        .map(|name| {
            let of_base = base.iter().find(|b| b.rule.peers.as_deref() == Some(name));
            let members: &[Peer] = match (of_base, site.peers.get(name), profile.vendor_group(name))
            {
                (Some(b), _, _) => &b.members,
                (None, Some(list), _) => list.get_ref(),
                (None, None, Some(group)) => group.peers.get_ref(),
                (None, None, None) => &[],
            };
            let mut networks: Vec<IpNet> = if name == LOOPBACK_SET {
                vec![
                    "127.0.0.0/8".parse().expect("valid CIDR"),
                    "::1/128".parse().expect("valid CIDR"),
                ]
            } else {
                peers::networks(members).collect()
            };
            networks.sort();
            networks.dedup();
            let mut names: Vec<_> = peers::names(members).cloned().collect();
            names.sort();
            names.dedup();
            PeerSet {
                name: name.to_string(),
                networks,
                names,
            }
        })
        .collect()
}

/// The flat entries: one per (rule, protocol, port range), sorted. A rule's ranges are
/// already merged, so entries of one rule never overlap or touch.
fn entries(rules: &[Rule], peers_of: &[Option<String>], peer_sets: &[PeerSet]) -> Vec<Entry> {
    let mut entries = Vec::new();
    for (index, (rule, peers)) in rules.iter().zip(peers_of).enumerate() {
        let peer_set = peers
            .as_ref()
            .and_then(|name| peer_sets.iter().position(|s| &s.name == name));
        for &protocol in &rule.protocols {
            for &(from, to) in &rule.ports {
                entries.push(Entry {
                    direction: rule.direction,
                    protocol,
                    from,
                    to,
                    peer_set,
                    rule: index,
                });
            }
        }
    }
    entries.sort();
    entries
}

/// The rule that keeps inbound SSH (on `port`, the site's `failsafe_port`) open so that
/// a wrong policy in enforce mode cannot lock the operator out.
pub fn failsafe_rule(port: u16) -> Rule {
    Rule {
        id: FAILSAFE_RULE.into(),
        direction: Direction::In,
        protocols: vec![Protocol::Tcp],
        ports: vec![(port, port)],
        feature: None,
        scope: RuleScope::Any,
        peers: None,
        why: "keep SSH reachable so that a wrong policy cannot lock the operator out".into(),
        source: "site failsafe (set failsafe = false to remove)".into(),
        note: None,
    }
}

fn directions(spec: DirectionSpec) -> &'static [Direction] {
    match spec {
        DirectionSpec::In => &[Direction::In],
        DirectionSpec::Out => &[Direction::Out],
        DirectionSpec::Both => &[Direction::In, Direction::Out],
    }
}

/// Site-level peer group checks that do not depend on which features are on: every
/// group the site defines or lists in `any_peer_groups` must be one some rule uses (a
/// misspelt group name would otherwise leave the real one undefined or silently
/// unused), and a listed group must not also have networks.
fn check_peer_groups(
    profile: &Profile,
    site: &Site,
    site_at: Origin<'_>,
) -> Result<(), PolicyError> {
    let used: BTreeSet<&str> = profile
        .rules
        .iter()
        .chain(&site.rules)
        .filter_map(|r| r.peers.as_ref())
        .map(|p| p.get_ref().as_str())
        .collect();
    let used_list = || {
        if used.is_empty() {
            "no rule of this profile or site uses a peer group".to_string()
        } else {
            format!(
                "groups the rules use: {}",
                used.iter().copied().collect::<Vec<_>>().join(", ")
            )
        }
    };
    for (name, networks) in &site.peers {
        // `dns-servers` also names the trusted resolvers (`config::resolvers`): with
        // loopback exempt, a local stub needs no rule and the group is still meant.
        if !used.contains(name.as_str()) && name != crate::config::site::DNS_SERVERS {
            // TOML puts every key after `[peers]` into that table, including top-level
            // settings written below it.
            let hint = if Site::TOP_LEVEL_KEYS.contains(&name.as_str()) {
                format!("\"{name}\" is a top-level setting: move it above the [peers] table")
            } else {
                used_list()
            };
            return Err(site_at.error(
                networks.span(),
                format!("peer group \"{name}\" is not used by any rule"),
                hint,
            ));
        }
    }
    for name in &site.any_peer_groups {
        if !used.contains(name.get_ref().as_str()) {
            return Err(site_at.error(
                name.span(),
                format!(
                    "any_peer_groups names \"{}\", which no rule uses",
                    name.get_ref()
                ),
                used_list(),
            ));
        }
        if let Some(networks) = site.peers.get(name.get_ref())
            && !networks.get_ref().is_empty()
        {
            return Err(site_at.error(
                name.span(),
                format!("peer group \"{}\" is in any_peer_groups but has networks", name.get_ref()),
                "remove it from any_peer_groups to limit its rules to the networks, or empty it to allow any peer".into(),
            ));
        }
    }
    Ok(())
}

/// The peer set a rule is limited to: `loopback`, a group with members (the site's,
/// else the vendor's named servers), or None for any peer (no group, a group listed in
/// `any_peer_groups`, or a vendor group under `vendor_peers = "any"`).
fn resolve_peers(
    spec: &RuleSpec,
    at: Origin<'_>,
    profile: &Profile,
    site: &Site,
    site_at: Origin<'_>,
) -> Result<Option<String>, PolicyError> {
    let id = spec.id.get_ref();
    let Some(group) = &spec.peers else {
        return Ok(match spec.scope {
            RuleScope::Any => None,
            RuleScope::Loopback => Some(LOOPBACK_SET.into()),
        });
    };
    let name = group.get_ref();
    if spec.scope == RuleScope::Loopback {
        return Err(at.error(
            group.span(),
            format!("rule \"{id}\" has both scope = \"loopback\" and peers = \"{name}\""),
            "a loopback rule already limits its peers to 127.0.0.0/8 and ::1; remove one of the two".into(),
        ));
    }
    let listed = site.any_peer_groups.iter().any(|g| g.get_ref() == name);
    if !site.peers.contains_key(name) && profile.vendor_group(name).is_some() {
        return Ok(match (listed, site.vendor_peers) {
            (false, VendorPeers::Names) => Some(name.clone()),
            _ => None,
        });
    }
    // A profile rule's group is filled in by the site, so the error points at the
    // site (at the group if it is there, else at the line that picked the profile).
    let (span, at) = match site.peers.get(name) {
        Some(members) => (members.span(), site_at),
        None if at.in_profile => (site.profile_span(), site_at),
        None => (group.span(), at),
    };
    match site.peers.get(name) {
        Some(members) if !members.get_ref().is_empty() => Ok(Some(name.clone())),
        _ if listed => Ok(None),
        Some(_) => Err(at.error(
            span,
            format!("peer group \"{name}\" of rule \"{id}\" is empty"),
            format!(
                "add its networks or host names under [peers], or list it in any_peer_groups = [\"{name}\"] to let any peer through"
            ),
        )),
        None => Err(at.error(
            span,
            format!("rule \"{id}\" uses peer group \"{name}\", which the site config does not define"),
            format!(
                "add {name} = [\"<cidr or host name>\", ...] under [peers], or list it in any_peer_groups = [\"{name}\"] to let any peer through"
            ),
        )),
    }
}

/// Sorts inclusive ranges and merges overlapping and adjacent ones.
pub fn merge_ranges(mut ranges: Vec<(u16, u16)>) -> Vec<(u16, u16)> {
    ranges.sort_unstable();
    let mut merged: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
    for (from, to) in ranges {
        match merged.last_mut() {
            Some(last) if u32::from(from) <= u32::from(last.1) + 1 => last.1 = last.1.max(to),
            _ => merged.push((from, to)),
        }
    }
    merged
}

#[cfg(test)]
mod tests;
