//! `portcullis explain`: the verdict the datapath gives a new flow, and the rule that
//! decides it.
//!
//! The policy is compiled, turned into the map image the loader writes, and the flow is
//! decided by `Image::decide`, which runs the eBPF programs' own `decide` function on
//! those values. Only the loopback exemption is checked here first, in the same order
//! as the datapath does it. A deny can come with a hint: the same lookup is run on the
//! policy with every feature on, to name a feature that would open the port.

use std::{
    io::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context as _;
use portcullis_common::stats::reason;
use serde::Serialize;

use super::profile::{FeatureArgs, print_json};
use crate::{
    config::{
        profile::{self, Profile},
        site::Site,
    },
    datapath::paths::PathArgs,
    observe::names::{self, LearnedAddress},
    policy::{
        Direction, HostName, Mode, Policy, Protocol, Rule, compiler,
        verdict::{DEFAULT_PEER, FeatureHints, Flow, Tables, Verdict},
    },
};

const EXAMPLES: &str = "\
The verdict is what the datapath decides for the first packet of a new flow. In audit
mode a deny is counted as a would-deny and nothing is dropped. The command exits 0
whatever the verdict.

--json prints an object: {verdict: \"allow\"|\"deny\", rule: id|null, reason:
\"no-rule\"|\"peer\"|\"loopback-exempt\"|null, why, source, note, feature, hint,
direction, protocol, port, peer, peer_name, resolved, product, mode}; with
--peer NAME, the name is resolved now with the system resolver, \"resolved\" lists
its addresses and the verdict is for the first one, as if learned from a DNS answer;
when an agent runs (see --pin-dir, --state-dir), \"learned\" lists those of them its
kernel learned from DNS answers, with the names and the time left.

Examples:
  portcullis explain --product iredmail --direction in --protocol tcp --port 25
  portcullis explain --product xeams --feature pop3 --direction in --protocol tcp --port 110
  portcullis explain --config site.toml --direction out --protocol udp --port 53 \\
      --peer 192.0.2.53 --json
  portcullis explain --profile ./my-product.toml --all-features \\
      --direction out --protocol tcp --port 443
  portcullis explain --product gfi-mailessentials --direction out --protocol tcp \\
      --port 443 --peer meupdate.gfi.com";

/// Arguments of `portcullis explain`.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
#[command(group(clap::ArgGroup::new("policy").required(true).args(["config", "product", "profile"])))]
pub struct Args {
    /// Evaluate this site config (its product, features, peer groups and loopback setting).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["features", "all_features"])]
    config: Option<PathBuf>,
    /// Evaluate a built-in product with the default site settings: the groups a site fills
    /// in (dns-servers, ...) mean any peer; the vendor's named servers stay limited to
    /// their names.
    #[arg(long, value_name = "NAME")]
    product: Option<String>,
    /// Evaluate a profile file with the default site settings.
    #[arg(long, value_name = "PATH")]
    profile: Option<PathBuf>,
    #[command(flatten)]
    features: FeatureArgs,
    /// in: a remote peer opens the flow to local PORT; out: this host opens it to remote PORT.
    #[arg(long, value_parser = parse_direction)]
    direction: Direction,
    /// tcp | udp.
    #[arg(long, value_parser = parse_protocol)]
    protocol: Protocol,
    /// The local port of an inbound flow, the remote port of an outbound one.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,
    /// The remote peer: an address, or a host name, which is resolved with the system
    /// resolver and judged as the datapath judges addresses learned from DNS answers for
    /// it. The default is a documentation address (RFC 5737) that is in no peer group.
    #[arg(long, default_value = DEFAULT_PEER, value_parser = parse_peer)]
    peer: PeerArg,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Where a running agent keeps its pins and state: with a host name as --peer,
    /// what its kernel learned for the name's addresses is shown too.
    #[command(flatten)]
    paths: PathArgs,
}

/// `--peer`: an address, or a host name to resolve.
#[derive(Clone, Debug)]
enum PeerArg {
    Addr(IpAddr),
    Name(HostName),
}

fn parse_peer(s: &str) -> Result<PeerArg, String> {
    if let Ok(addr) = s.parse() {
        return Ok(PeerArg::Addr(addr));
    }
    match HostName::parse(s.trim_end_matches('.')) {
        Ok(name) if !name.wildcard => Ok(PeerArg::Name(name)),
        Ok(_) => Err(format!(
            "\"{s}\" is a wildcard; give an address or one host name"
        )),
        Err(e) => Err(format!("\"{s}\" is not an address, and {}", e.message)),
    }
}

/// The addresses of `name` from the system resolver (getaddrinfo).
fn resolve(name: &HostName) -> anyhow::Result<Vec<IpAddr>> {
    use std::net::ToSocketAddrs as _;
    let mut addrs: Vec<IpAddr> = (name.name.as_str(), 0)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve \"{name}\" with the system resolver"))?
        .map(|a| a.ip())
        .collect();
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        anyhow::bail!("\"{name}\" resolves to no address");
    }
    Ok(addrs)
}

fn parse_direction(s: &str) -> Result<Direction, String> {
    match s {
        "in" => Ok(Direction::In),
        "out" => Ok(Direction::Out),
        _ => Err(format!("direction \"{s}\" is not \"in\" or \"out\"")),
    }
}

fn parse_protocol(s: &str) -> Result<Protocol, String> {
    match s {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        _ => Err(format!("protocol \"{s}\" is not \"tcp\" or \"udp\"")),
    }
}

/// What `explain --json` prints.
#[derive(Debug, Serialize)]
struct Explanation<'a> {
    verdict: &'static str,
    rule: Option<&'a str>,
    reason: Option<&'static str>,
    why: Option<&'a str>,
    source: Option<&'a str>,
    note: Option<&'a str>,
    feature: Option<&'a str>,
    hint: Option<String>,
    direction: Direction,
    protocol: Protocol,
    port: u16,
    peer: IpAddr,
    /// The host name `--peer` gave, when it gave one.
    peer_name: Option<&'a str>,
    /// What the name resolves to now; the verdict is for the first address.
    resolved: Vec<IpAddr>,
    /// With a host name and a running agent: those of `resolved` its kernel learned
    /// from DNS answers, with the names and expiry (absent without an agent).
    #[serde(skip_serializing_if = "Option::is_none")]
    learned: Option<Vec<LearnedAddress>>,
    product: &'a str,
    mode: Mode,
}

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (profile, site, site_path) = policy_inputs(&args)?;
    let policy = compiler::compile(&profile, &site, site_path)?;
    let (resolved, name) = match &args.peer {
        PeerArg::Addr(addr) => (vec![*addr], None),
        PeerArg::Name(name) => (resolve(name)?, Some(name.name.as_str())),
    };
    let flow = Flow {
        direction: args.direction,
        protocol: args.protocol,
        port: args.port,
        peer: resolved[0],
    };
    let verdict = Tables::build(&policy)?.evaluate_as(&policy, flow, name)?;
    let rule: Option<&Rule> = match verdict {
        Verdict::Allow(i) => Some(&policy.rules[i]),
        _ => None,
    };
    let hint = match verdict {
        Verdict::Deny(reason::NO_RULE) => feature_hint(&profile, &site, flow),
        Verdict::Deny(reason::PEER) => Some(peer_hint(&policy, flow)),
        _ => None,
    };
    let explanation = Explanation {
        verdict: if matches!(verdict, Verdict::Deny(_)) {
            "deny"
        } else {
            "allow"
        },
        rule: rule.map(|r| r.id.as_str()),
        reason: match verdict {
            Verdict::LoopbackExempt => Some("loopback-exempt"),
            Verdict::Allow(_) => None,
            Verdict::Deny(r) => Some(reason::NAMES.get(r as usize).copied().unwrap_or("unknown")),
        },
        why: rule.map(|r| r.why.as_str()),
        source: rule.map(|r| r.source.as_str()),
        note: rule.and_then(|r| r.note.as_deref()),
        feature: rule.and_then(|r| r.feature.as_deref()),
        hint,
        direction: flow.direction,
        protocol: flow.protocol,
        port: flow.port,
        peer: flow.peer,
        peer_name: name,
        learned: name.and_then(|_| names::learned_for(&args.paths, &resolved)),
        resolved: if name.is_some() { resolved } else { vec![] },
        product: &policy.product,
        mode: policy.mode,
    };
    if args.json {
        print_json(&explanation)?;
    } else {
        print_text(&explanation)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The profile, the site settings and the site file the arguments name.
fn policy_inputs(args: &Args) -> anyhow::Result<(Profile, Site, Option<&Path>)> {
    if let Some(path) = &args.config {
        let site = crate::config::load_site(path)?;
        let profile = compiler::site_profile(&site, Some(path))?;
        return Ok((profile, site, Some(path.as_path())));
    }
    let (profile, mut site) = match (&args.product, &args.profile) {
        (Some(name), _) if !profile::is_path(name) => {
            (profile::find(name)?, Site::default_for(name))
        }
        (product, path) => {
            let path = product.as_deref().map(Path::new).or(path.as_deref());
            let profile = Profile::load(path.context("give --config, --product or --profile")?)?;
            let site = Site::for_profile(&profile);
            (profile, site)
        }
    };
    site.set_features(if args.features.all_features {
        profile.feature_names()
    } else {
        args.features.features.clone()
    });
    // The default site is host scope: the host's own base set applies.
    site.read_host(Path::new("/"));
    Ok((profile, site, None))
}

/// For a port no rule opens: a feature of the profile whose rule would open it.
fn feature_hint(profile: &Profile, site: &Site, flow: Flow) -> Option<String> {
    let hints = FeatureHints::new(profile, site).ok()?;
    let rule = hints.opening(flow)?;
    Some(format!(
        "rule \"{}\" opens it when feature \"{}\" is on",
        rule.id,
        rule.feature.as_deref()?
    ))
}

/// For a peer outside the groups a port is open to: which groups those are.
fn peer_hint(policy: &Policy, flow: Flow) -> String {
    let mut groups: Vec<&str> = policy
        .entries
        .iter()
        .filter(|e| {
            e.direction == flow.direction
                && e.protocol == flow.protocol
                && (e.from..=e.to).contains(&flow.port)
        })
        .filter_map(|e| e.peer_set.map(|s| policy.peer_sets[s].name.as_str()))
        .collect();
    groups.dedup();
    let named = groups.iter().any(|g| {
        policy
            .peer_sets
            .iter()
            .any(|s| s.name == *g && !s.names.is_empty())
    });
    format!(
        "the port is open only to peer group(s) {}; pass a peer from one of them with --peer{}",
        groups.join(", "),
        if named {
            " (a host name of a group is resolved and judged as if learned from DNS)"
        } else {
            ""
        }
    )
}

fn print_text(e: &Explanation<'_>) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let audit = if e.verdict == "deny" && e.mode == Mode::Audit {
        " (audit mode: counted as a would-deny, not dropped)"
    } else {
        ""
    };
    let preposition = if e.direction == Direction::In {
        "from"
    } else {
        "to"
    };
    let peer = match e.peer_name {
        Some(name) => format!("{name} ({})", e.peer),
        None => e.peer.to_string(),
    };
    writeln!(
        out,
        "{}: {} {}/{} {preposition} {peer}{audit}",
        e.verdict, e.direction, e.protocol, e.port
    )?;
    if let Some(name) = e.peer_name {
        let all: Vec<String> = e.resolved.iter().map(ToString::to_string).collect();
        writeln!(
            out,
            "{:<9}{name} -> {} (system resolver, now)",
            "dns:",
            all.join(", ")
        )?;
    }
    if let Some(learned) = &e.learned {
        if learned.is_empty() {
            writeln!(
                out,
                "{:<9}none of these addresses is learned by the running agent (yet)",
                "kernel:"
            )?;
        }
        for l in learned {
            for n in &l.names {
                writeln!(
                    out,
                    "{:<9}{} learned for {} ({}), {} s left",
                    "kernel:",
                    l.address,
                    n.pattern,
                    n.groups.join(", "),
                    n.expires_in_ms / 1000
                )?;
            }
        }
    }
    let line = |out: &mut std::io::StdoutLock<'_>, key: &str, value: Option<&str>| match value {
        Some(v) => writeln!(out, "{key:<9}{v}"),
        None => Ok(()),
    };
    let reason = e.reason.map(|r| match r {
        "loopback-exempt" => {
            "loopback-exempt: loopback traffic passes before the policy (loopback = \"exempt\")"
                .to_string()
        }
        "no-rule" => format!(
            "no-rule: no rule of {} opens {} {}/{}",
            e.product, e.direction, e.protocol, e.port
        ),
        "peer" => format!(
            "peer: a rule opens {} {}/{}, but not for {}",
            e.direction, e.protocol, e.port, e.peer
        ),
        other => other.to_string(),
    });
    line(&mut out, "rule:", e.rule)?;
    line(&mut out, "reason:", reason.as_deref())?;
    line(&mut out, "why:", e.why)?;
    line(&mut out, "source:", e.source)?;
    line(&mut out, "feature:", e.feature)?;
    line(&mut out, "note:", e.note)?;
    line(&mut out, "hint:", e.hint.as_deref())?;
    Ok(())
}
