//! `portcullis profile list|show`: the built-in product profiles, and one profile
//! compiled for reading.
//!
//! It also owns the views of a compiled policy that several commands print: the
//! feature flags (`--feature`, `--all-features`), one JSON object or table line per
//! policy entry ([`entry_views`], [`print_entries`]). `check` uses them too, so both
//! commands print the same columns and fields.

use std::{io::Write as _, path::Path, process::ExitCode};

use serde::Serialize;

use crate::{
    config::{
        profile,
        site::{Site, VendorPeers},
    },
    policy::{Direction, Policy, Protocol, RuleScope, compiler},
};

const LIST_EXAMPLES: &str = "\
Examples:
  portcullis profile list
  portcullis profile list --json | jq -r '.[].slug'";

const SHOW_EXAMPLES: &str = "\
NAME is a built-in slug (see `portcullis profile list`) or the path of a profile file.
The profile is compiled with the default site settings: the peer groups a site fills in
(dns-servers, ldap-servers, ...) mean any peer, the vendor's own groups of named servers
stay limited to those names, and the failsafe rule (inbound 22/tcp) is added last.

Examples:
  portcullis profile show xeams
  portcullis profile show xeams --feature pop3 --feature imaps
  portcullis profile show clearswift-seg --all-features --json
  portcullis profile show ./my-product.toml";

/// `portcullis profile ...`.
#[derive(Debug, clap::Subcommand)]
pub enum ProfileCommand {
    /// List the built-in profiles: slug, vendor, product and rule count, one per line.
    #[command(after_help = LIST_EXAMPLES)]
    List(ListArgs),
    /// Show a profile's compiled rules: one line per rule, protocol and port range.
    #[command(after_help = SHOW_EXAMPLES)]
    Show(ShowArgs),
}

/// Arguments of `profile list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Print a JSON array of {slug, vendor, product, source, rules, features, peer_groups}.
    #[arg(long)]
    json: bool,
}

/// Arguments of `profile show`.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// A built-in product slug, or the path of a profile file.
    #[arg(value_name = "NAME")]
    name: String,
    #[command(flatten)]
    features: FeatureArgs,
    /// Print a JSON array with one object per entry (rule, protocol, port range).
    #[arg(long)]
    json: bool,
}

/// Which optional features of a profile to turn on.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct FeatureArgs {
    /// Turn on an optional feature of the profile (repeat it, or separate with commas).
    #[arg(long = "feature", value_name = "F", value_delimiter = ',')]
    pub features: Vec<String>,
    /// Turn on every feature of the profile.
    #[arg(long, conflicts_with = "features")]
    pub all_features: bool,
}

/// Runs the subcommand.
pub fn run(command: ProfileCommand) -> anyhow::Result<ExitCode> {
    match command {
        ProfileCommand::List(args) => list(&args),
        ProfileCommand::Show(args) => show(&args),
    }
}

#[derive(Serialize)]
struct ProfileSummary {
    slug: String,
    vendor: String,
    product: String,
    source: String,
    rules: usize,
    features: Vec<FeatureSummary>,
    peer_groups: Vec<String>,
}

#[derive(Serialize)]
struct FeatureSummary {
    name: String,
    description: String,
}

fn list(args: &ListArgs) -> anyhow::Result<ExitCode> {
    let summaries: Vec<ProfileSummary> = profile::builtin()?
        .into_iter()
        .map(|p| ProfileSummary {
            features: p
                .features
                .iter()
                .map(|f| FeatureSummary {
                    name: f.name.get_ref().clone(),
                    description: f.description.clone(),
                })
                .collect(),
            peer_groups: p.peer_groups().into_iter().collect(),
            rules: p.rules.len(),
            slug: p.slug.into_inner(),
            vendor: p.vendor,
            product: p.product,
            source: p.source,
        })
        .collect();
    if args.json {
        print_json(&summaries)?;
    } else {
        let rows = summaries
            .iter()
            .map(|s| {
                vec![
                    s.slug.clone(),
                    s.vendor.clone(),
                    s.product.clone(),
                    format!("{} rules", s.rules),
                ]
            })
            .collect();
        print_table(None, rows)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn show(args: &ShowArgs) -> anyhow::Result<ExitCode> {
    let (features, all) = (&args.features.features, args.features.all_features);
    let (profile, mut site) = if profile::is_path(&args.name) {
        let profile = profile::Profile::load(Path::new(&args.name))?;
        let site = Site::for_profile(&profile);
        (profile, site)
    } else {
        (profile::find(&args.name)?, Site::default_for(&args.name))
    };
    // The vendor's table as documented: rules limited to its named servers.
    site.vendor_peers = VendorPeers::Names;
    // Then the base set this host's own configuration gives under host scope.
    site.read_host(Path::new("/"));
    let policy = compiler::compile_with_defaults(&profile, site, features, all)?;
    if args.json {
        print_json(&entry_views(&policy))?;
    } else {
        print_entries(&policy)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// One policy entry as `profile show --json` and `check --json` print it.
#[derive(Clone, Debug, Serialize)]
pub struct EntryView<'a> {
    /// Rule id (`<id>/in`, `<id>/out` for a profile's `both` rules).
    pub id: &'a str,
    /// in | out.
    pub direction: Direction,
    /// tcp | udp.
    pub protocol: Protocol,
    /// First port, inclusive.
    pub from: u16,
    /// Last port, inclusive.
    pub to: u16,
    /// The feature that turned the rule on.
    pub feature: Option<&'a str>,
    /// any | loopback.
    pub scope: RuleScope,
    /// The rule's peer group, as written.
    pub peers: Option<&'a str>,
    /// The networks the entry is limited to; null for any peer (also for a peer group
    /// the site lists in `any_peer_groups`).
    pub peer_networks: Option<Vec<String>>,
    /// The host names and wildcards the entry is limited to (addresses learned from
    /// DNS answers for them); null for any peer.
    pub peer_names: Option<Vec<String>>,
    /// The vendor's reason.
    pub why: &'a str,
    /// Document and row.
    pub source: &'a str,
    /// What the port rule does not capture.
    pub note: Option<&'a str>,
}

/// The entries of a policy in rule order (then direction, protocol, port), which reads
/// like the profile.
pub fn entry_views(policy: &Policy) -> Vec<EntryView<'_>> {
    let mut entries: Vec<_> = policy.entries.iter().collect();
    entries.sort_by_key(|e| (e.rule, e.direction, e.protocol, e.from));
    entries
        .into_iter()
        .map(|e| {
            let rule = &policy.rules[e.rule];
            EntryView {
                id: &rule.id,
                direction: e.direction,
                protocol: e.protocol,
                from: e.from,
                to: e.to,
                feature: rule.feature.as_deref(),
                scope: rule.scope,
                peers: rule.peers.as_deref(),
                peer_networks: e.peer_set.map(|s| {
                    policy.peer_sets[s]
                        .networks
                        .iter()
                        .map(ToString::to_string)
                        .collect()
                }),
                peer_names: e.peer_set.map(|s| {
                    policy.peer_sets[s]
                        .names
                        .iter()
                        .map(ToString::to_string)
                        .collect()
                }),
                why: &rule.why,
                source: &rule.source,
                note: rule.note.as_deref(),
            }
        })
        .collect()
}

/// Prints the entries as a table, then the notes of the rules that have one.
pub fn print_entries(policy: &Policy) -> anyhow::Result<()> {
    let views = entry_views(policy);
    let rows = views
        .iter()
        .map(|v| {
            let ports = if v.from == v.to {
                v.from.to_string()
            } else {
                format!("{}-{}", v.from, v.to)
            };
            let peers = match (v.peers, v.peer_networks.is_some()) {
                (Some(group), true) => group.to_string(),
                (Some(group), false) => format!("{group}=any"),
                (None, _) => "-".into(),
            };
            let scope = match v.scope {
                RuleScope::Any => "any",
                RuleScope::Loopback => "loopback",
            };
            vec![
                v.id.to_string(),
                v.direction.to_string(),
                v.protocol.to_string(),
                ports,
                v.feature.unwrap_or("-").to_string(),
                scope.to_string(),
                peers,
                v.why.to_string(),
            ]
        })
        .collect();
    print_table(
        Some(&[
            "ID", "DIR", "PROTO", "PORTS", "FEATURE", "SCOPE", "PEERS", "WHY",
        ]),
        rows,
    )?;
    // The two halves of a `both` rule share their note: print it once for both ids.
    let mut notes: Vec<(Vec<&str>, &str)> = Vec::new();
    for rule in &policy.rules {
        let Some(note) = rule.note.as_deref() else {
            continue;
        };
        match notes.last_mut() {
            Some((ids, last)) if *last == note => ids.push(&rule.id),
            _ => notes.push((vec![&rule.id], note)),
        }
    }
    let mut out = std::io::stdout().lock();
    if !notes.is_empty() {
        writeln!(out, "\nnotes:")?;
        for (ids, note) in notes {
            writeln!(out, "  {}: {note}", ids.join(", "))?;
        }
    }
    // Where each rule of the host's base set comes from (the host's own files).
    let base: Vec<_> = policy
        .rules
        .iter()
        .filter(|r| crate::config::base::RULE_IDS.contains(&r.id.as_str()))
        .collect();
    if !base.is_empty() {
        writeln!(
            out,
            "\nbase set (this host's own traffic, kept under host scope):"
        )?;
        for rule in base {
            writeln!(out, "  {}: {}", rule.id, rule.source)?;
        }
    }
    let groups: Vec<_> = policy
        .peer_sets
        .iter()
        .filter(|s| s.name != crate::config::profile::LOOPBACK_SET)
        .collect();
    if !groups.is_empty() {
        writeln!(out, "\npeer groups:")?;
        for set in groups {
            writeln!(out, "  {}: {}", set.name, peer_set_members(set))?;
        }
    }
    Ok(())
}

/// A peer set's networks, then its names, comma-separated.
pub fn peer_set_members(set: &crate::policy::PeerSet) -> String {
    let members: Vec<String> = set
        .networks
        .iter()
        .map(ToString::to_string)
        .chain(set.names.iter().map(ToString::to_string))
        .collect();
    members.join(", ")
}

/// Prints rows in aligned columns (the last one unpadded).
pub fn print_table(header: Option<&[&str]>, rows: Vec<Vec<String>>) -> anyhow::Result<()> {
    let header: Option<Vec<String>> = header.map(|h| h.iter().map(ToString::to_string).collect());
    let all: Vec<&Vec<String>> = header.iter().chain(rows.iter()).collect();
    let columns = all.iter().map(|r| r.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            all.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = std::io::stdout().lock();
    for row in all {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[c]));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// Prints a value as pretty JSON on stdout.
pub fn print_json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}
