//! `portcullis check`: validates a site config and prints the policy it compiles to.
//! On any error it names the file and line and exits with code 3.

use std::{io::Write as _, path::PathBuf, process::ExitCode};

use portcullis_common::names::HashKey;
use serde::Serialize;

use super::profile::{EntryView, entry_views, print_entries, print_json};
use crate::{
    config::{
        PolicyError,
        site::{Metrics, Site},
    },
    datapath::probe::{KernelFeatures, Needs},
    model::ScopeTarget,
    policy::{
        LoopbackMode, Mode, PeerSet, Policy, Rule, compiler,
        image::{Image, RuleIndex},
    },
    systemd::units,
};

const EXAMPLES: &str = "\
Prints the settings and one line per rule, protocol and port range. Unit scopes are
checked with systemd: an unknown unit (with a did-you-mean) or a oneshot that runs no
process (naming the units that do the work) is an error; a cgroup path that does not
exist is a warning naming the nearest unit. With
--json, prints an object: {ok, product, mode, loopback, icmp_echo, failsafe, features,
scope, scope_warnings, xdp, events_per_sec, pin_dir, metrics, peer_sets, rules, entries},
where entries are the same objects `portcullis profile show --json` prints. On error with --json, prints
{ok: false, error: {file, line, column, message, hint}}.

Under host scope the policy ends with the base set (the host's own NTP servers, package
mirrors, resolvers, DHCP client and metrics listener, read from this host's files: the
\"base set\" section names each rule's file and line); `base = false` or `[base] ntp =
false` in the config drops it or a part of it.

Also refuses (exit 3) a config the running kernel cannot carry as written, naming the
feature, the kernel and the way out (`portcullis doctor` shows every probe).

Exit codes: 0 valid, 3 invalid config or profile (or beyond this kernel), 1 other failure.

Examples:
  portcullis check --config /etc/portcullis/portcullis.toml
  portcullis check --config site.toml --json | jq '.entries[] | select(.direction == \"in\")'";

/// Arguments of `portcullis check`.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// The site config to validate (TOML; schema in profiles/README.md).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// What `check --json` prints for a valid config.
#[derive(Serialize)]
struct Report<'a> {
    ok: bool,
    product: &'a str,
    mode: Mode,
    loopback: LoopbackMode,
    icmp_echo: bool,
    failsafe: bool,
    features: Vec<&'a str>,
    scope: &'a [ScopeTarget],
    /// Scopes accepted with a warning (a cgroup path that does not exist yet).
    scope_warnings: Vec<String>,
    xdp: &'a [String],
    events_per_sec: u32,
    pin_dir: &'a std::path::Path,
    metrics: &'a Metrics,
    peer_sets: &'a [PeerSet],
    rules: &'a [Rule],
    entries: Vec<EntryView<'a>>,
}

#[derive(Serialize)]
struct Failure<'a> {
    ok: bool,
    error: &'a PolicyError,
}

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let compiled = crate::config::load_site(&args.config).and_then(|site| {
        let policy = compiler::compile_site(&site, Some(&args.config))?;
        // What `run` would write: a policy that does not fit the maps fails here, not
        // at start.
        if let Err(e) = RuleIndex::fresh(&policy)
            .and_then(|index| Image::build(&policy, &index, 0, &HashKey::default()))
        {
            let mut error =
                PolicyError::new(format!("the policy does not fit the kernel maps: {e:#}"))
                    .hint("use fewer rules or peer networks, or wider ranges");
            error.file = Some(args.config.clone());
            return Err(error);
        }
        // What `run` would refuse on this kernel (exit 3 too): probed, a few ms.
        KernelFeatures::probe().require(
            &Needs::of(&policy, &site.xdp, &site.scope),
            Some(&args.config),
        )?;
        // What the unit scopes name, asked of systemd (the check `run` makes too).
        let root = crate::datapath::paths::cgroup2_mount().ok();
        let scopes = units::check_scopes(&site.scope, root.as_deref(), Some(&args.config))?;
        Ok((site, policy, scopes.warnings))
    });
    let (site, policy, scope_warnings) = match compiled {
        Ok(v) => v,
        Err(error) => {
            if args.json {
                print_json(&Failure {
                    ok: false,
                    error: &error,
                })?;
            }
            return Err(error.into());
        }
    };
    if args.json {
        print_json(&Report {
            ok: true,
            product: &policy.product,
            mode: policy.mode,
            loopback: policy.loopback,
            icmp_echo: policy.icmp_echo,
            failsafe: site.failsafe,
            features: site.features.iter().map(|f| f.get_ref().as_str()).collect(),
            scope: &site.scope,
            scope_warnings,
            xdp: &site.xdp,
            events_per_sec: site.events_per_sec,
            pin_dir: &site.pin_dir,
            metrics: &site.metrics,
            peer_sets: &policy.peer_sets,
            rules: &policy.rules,
            entries: entry_views(&policy),
        })?;
    } else {
        print_summary(&args, &site, &policy, &scope_warnings)?;
        print_entries(&policy)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_summary(
    args: &Args,
    site: &Site,
    policy: &Policy,
    scope_warnings: &[String],
) -> anyhow::Result<()> {
    let on_off = |b: bool| if b { "on" } else { "off" };
    let list = |items: Vec<String>| {
        if items.is_empty() {
            "none".to_string()
        } else {
            items.join(", ")
        }
    };
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "ok: {} compiles: product {}, {} rules, {} entries",
        args.config.display(),
        policy.product,
        policy.rules.len(),
        policy.entries.len()
    )?;
    writeln!(
        out,
        "mode: {}  loopback: {}  icmp_echo: {}  failsafe: {}",
        policy.mode,
        match policy.loopback {
            LoopbackMode::Exempt => "exempt",
            LoopbackMode::Enforce => "enforce",
        },
        on_off(policy.icmp_echo),
        on_off(site.failsafe)
    )?;
    writeln!(
        out,
        "features: {}",
        list(site.features.iter().map(|f| f.get_ref().clone()).collect())
    )?;
    writeln!(
        out,
        "scope: {}  xdp: {}  events_per_sec: {}  pin_dir: {}  metrics: {}",
        list(site.scope.iter().map(ToString::to_string).collect()),
        list(site.xdp.clone()),
        site.events_per_sec,
        site.pin_dir.display(),
        site.metrics
            .listen
            .map_or("off".to_string(), |a| a.to_string())
    )?;
    for warning in scope_warnings {
        writeln!(out, "{warning}")?;
    }
    for set in &policy.peer_sets {
        writeln!(
            out,
            "peers {}: {}",
            set.name,
            super::profile::peer_set_members(set)
        )?;
    }
    writeln!(out)?;
    Ok(())
}
