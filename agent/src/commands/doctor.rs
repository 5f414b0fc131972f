//! `portcullis doctor`: a preflight of the running host. Prints what
//! `datapath::probe` found (kernel, program types, map types, helpers, BTF, cgroup v2,
//! bpffs, lockdown, BPF privileges, systemd) and whether the real programs verify, and
//! exits 0 only when the policy `run` would enforce can be enforced here as written.
//! Needs no config and no running agent; nothing is pinned or attached.

use std::{io::Write as _, path::PathBuf, process::ExitCode};

use serde::Serialize;

use super::profile::print_json;
use crate::{
    config::PolicyError,
    daemon::settings::{OnExit, Overrides, resolve},
    datapath::{
        paths::PathArgs,
        probe::{Feature, KernelFeatures, KernelRelease, Need, Needs, ProgramCheck, Status},
    },
    model::ScopeTarget,
};

const EXAMPLES: &str = "\
Probes each BPF feature the agent needs by asking the kernel (a tiny program or map per
feature, as libbpf does), never by its version, then loads the real programs (the kernel
verifies them; nothing is pinned or attached). Prints one line per probe: ok, missing,
warn (works, with a caveat) or unknown (the probe could not run, e.g. without root), which
policies need it, and for what is missing, what stops working and the way out.

The policy is the one `run` would enforce: --config, else --product, else
/etc/portcullis/portcullis.toml if it exists, else the built-in default (product xeams).
An XDP interface and unit scopes need their own features; `info` lines are needed by no
policy (a speed-up the loader uses where the kernel has it, a hardening note).

With --json, prints {ok, kernel: {release, version}, policy: {source, needs}, features:
[{name, label, status, detail, need, since, breaks, fix}], programs: [{name, status, need,
verified_instructions, load_ms, detail}], refusal}.

Exit codes: 0 the policy can be enforced here as written; 1 it cannot (or a probe it
needs could not run: run as root); 2 usage error; 3 invalid config or profile.

Examples:
  portcullis doctor
  portcullis doctor --config /etc/portcullis/portcullis.toml
  portcullis doctor --product iredmail --xdp eth0
  portcullis doctor --json | jq '.features[] | select(.status != \"ok\")'";

/// Arguments of `portcullis doctor`.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// The site config whose policy must be enforceable (as `run --config`).
    #[arg(long, value_name = "FILE", conflicts_with = "product")]
    config: Option<PathBuf>,
    /// A built-in product profile instead of a config (as `run --product`).
    #[arg(long, value_name = "NAME")]
    product: Option<String>,
    /// With --product: an optional feature of the profile. Repeatable.
    #[arg(long = "feature", value_name = "F", requires = "product")]
    features: Vec<String>,
    /// With --product: every optional feature.
    #[arg(long, requires = "product")]
    all_features: bool,
    /// The scope `run --scope` would get. Repeatable.
    #[arg(long = "scope", value_name = "host|UNIT|CGROUP", value_parser = ScopeTarget::parse_arg)]
    scopes: Vec<ScopeTarget>,
    /// An interface `run --xdp` would get (XDP then counts as needed). Repeatable.
    #[arg(long = "xdp", value_name = "IFACE")]
    xdp: Vec<String>,
    /// Only the feature probes (milliseconds); do not load the real programs (seconds,
    /// minutes under emulation).
    #[arg(long)]
    no_verify: bool,
    /// Print JSON instead of lines.
    #[arg(long)]
    json: bool,
}

/// Which policy was asked about.
#[derive(Serialize)]
struct PolicySource {
    /// The config file, or "product NAME" for a built-in profile.
    source: String,
    needs: Needs,
}

/// What `doctor --json` prints.
#[derive(Serialize)]
struct Report<'a> {
    ok: bool,
    kernel: &'a KernelRelease,
    policy: PolicySource,
    features: &'a [Feature],
    programs: &'a [ProgramCheck],
    /// Why the policy cannot be enforced here, when it cannot.
    refusal: Option<String>,
}

#[derive(Serialize)]
struct Failure<'a> {
    ok: bool,
    error: &'a PolicyError,
}

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // The same resolution as `run`: one implementation of "which policy is configured".
    let mut overrides = Overrides {
        config: args.config.clone(),
        product: args.product.clone(),
        features: args.features.clone(),
        all_features: args.all_features,
        mode: None,
        scopes: args.scopes.clone(),
        xdp: args.xdp.clone(),
        metrics_listen: None,
        events_per_sec: None,
        on_exit: OnExit::Detach,
        paths: PathArgs {
            pin_dir: None,
            state_dir: PathBuf::from("/run/portcullis"),
        },
    };
    let (policy, settings, config) = match resolve(&mut overrides) {
        Ok(v) => v,
        Err(e) => {
            if args.json
                && let Some(error) = e.downcast_ref::<PolicyError>()
            {
                print_json(&Failure { ok: false, error })?;
            }
            return Err(e);
        }
    };
    let needs = Needs::of(&policy, &settings.xdp, &settings.scopes);
    let mut found = KernelFeatures::probe_all();
    if !args.no_verify {
        found.verify_programs();
    }
    let refusal = found.refusal(&needs);
    let verified = args.no_verify
        || found
            .programs
            .iter()
            .all(|p| p.status == Status::Ok || !needs.wants(p.need));
    let ok = refusal.is_none() && found.all_known(&needs) && verified;
    let source = config.map_or_else(
        || format!("product {}", policy.product),
        |c| c.display().to_string(),
    );
    if args.json {
        print_json(&Report {
            ok,
            kernel: &found.kernel,
            policy: PolicySource { source, needs },
            features: &found.features,
            programs: &found.programs,
            refusal,
        })?;
    } else {
        print_text(&found, &needs, &source, ok, refusal.as_deref())?;
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn need_word(need: Need, needs: &Needs) -> String {
    let word = match need {
        Need::Always => "always",
        Need::Xdp => "xdp",
        Need::Units => "units",
        Need::Info => "info",
    };
    // Marks what this policy does not need, so a missing line there is not alarming.
    if need == Need::Info || needs.wants(need) {
        word.to_owned()
    } else {
        format!("({word})")
    }
}

fn status_word(status: Status) -> &'static str {
    match status {
        Status::Ok => "ok",
        Status::Missing => "MISSING",
        Status::Warn => "warn",
        Status::Unknown => "unknown",
    }
}

fn print_text(
    found: &KernelFeatures,
    needs: &Needs,
    source: &str,
    ok: bool,
    refusal: Option<&str>,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "kernel {}; policy: {source} (needs: host names {}, xdp {}, unit scopes {})",
        found.kernel.release,
        yes_no(needs.names),
        yes_no(needs.xdp),
        yes_no(needs.units)
    )?;
    writeln!(out)?;
    writeln!(out, "{:<8} {:<8} {:<62} DETAIL", "STATUS", "NEED", "PROBE")?;
    for f in &found.features {
        writeln!(
            out,
            "{:<8} {:<8} {:<62} {}",
            status_word(f.status),
            need_word(f.need, needs),
            f.label,
            f.detail
        )?;
        if f.status != Status::Ok && !f.breaks.is_empty() {
            let since = f
                .since
                .map(|v| format!(" (kernel {v}+)"))
                .unwrap_or_default();
            writeln!(out, "{:18}without it{since}: {}", "", f.breaks)?;
            if !f.fix.is_empty() {
                writeln!(out, "{:18}fix: {}", "", f.fix)?;
            }
        }
    }
    if !found.programs.is_empty() {
        writeln!(out)?;
        writeln!(
            out,
            "{:<8} {:<8} {:<12} {:>12} {:>9}",
            "STATUS", "NEED", "PROGRAM", "VERIFIED", "LOAD"
        )?;
        for p in &found.programs {
            writeln!(
                out,
                "{:<8} {:<8} {:<12} {:>12} {:>9}",
                status_word(p.status),
                need_word(p.need, needs),
                p.name,
                p.verified_instructions
                    .map_or("-".to_owned(), |n| format!("{n} insns")),
                p.load_ms.map_or("-".to_owned(), |ms| format!("{ms} ms")),
            )?;
            if let Some(detail) = &p.detail {
                for line in detail.lines() {
                    writeln!(out, "{:18}{line}", "")?;
                }
            }
        }
    }
    writeln!(out)?;
    match (ok, refusal) {
        (true, _) => writeln!(out, "ok: this host can enforce the policy as written")?,
        (false, Some(why)) => writeln!(out, "cannot enforce: {why}")?,
        (false, None) => writeln!(
            out,
            "cannot tell: a probe the policy needs could not run (see above); run as root"
        )?,
    }
    Ok(())
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}
