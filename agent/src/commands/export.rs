//! `portcullis export`: the compiled policy written out for another firewall, an
//! nftables ruleset or a Windows Firewall PowerShell script (`policy::export`).
//!
//! The policy is compiled exactly as `check` (a site config) and `run` (a built-in
//! product) compile it; only then is it rendered.

use std::{io::Write as _, path::PathBuf, process::ExitCode};

use anyhow::Context as _;

use super::profile::FeatureArgs;
use crate::{
    config::PolicyError,
    model::{Mode, ScopeTarget},
    policy::{
        compiler,
        export::{self, Format},
    },
};

const EXAMPLES: &str = "\
The output is rendered from the same compiled policy the agent enforces: rules, peer
groups, failsafe, loopback and mode. nft: one table, inet portcullis, that `nft -f`
loads (replacing an earlier load); windows-firewall: a PowerShell script of
New-NetFirewallRule calls that first removes the rules an earlier run created. What a
format cannot express is said in the output (host names in peer groups, counters,
per-service scope; docs/export.md); a policy it would change silently is refused
(exit 3): a config scoped to services or cgroups (unless --host-wide), loopback =
\"enforce\" for Windows Firewall.

Exit codes: 0 written, 3 invalid policy or one the format cannot express, 1 other failure.

Examples:
  portcullis export --format nft --product iredmail --feature imaps
  portcullis export --format nft --config site.toml -o portcullis.nft
  portcullis export --format windows-firewall --product gfi-mailessentials --mode enforce
  portcullis export --format windows-firewall --product mdaemon-securitygateway \\
      --all-features -o portcullis.ps1";

/// Arguments of `portcullis export`.
#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
#[command(group(clap::ArgGroup::new("policy").required(true).args(["config", "product"])))]
pub struct Args {
    /// nft (an nftables ruleset) or windows-firewall (a PowerShell script).
    #[arg(long, value_enum)]
    format: Format,
    /// Export this site config (its product, features, peer groups, mode, loopback).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["features", "all_features"])]
    config: Option<PathBuf>,
    /// Export a built-in product with the default site settings (as `run --product`).
    #[arg(long, value_name = "NAME")]
    product: Option<String>,
    #[command(flatten)]
    features: FeatureArgs,
    /// audit (count what would be denied, drop nothing) or enforce. Overrides the config.
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// Accept that a config scoped to services or cgroups is exported for every process
    /// of the host (neither format can scope rules to one service).
    #[arg(long)]
    host_wide: bool,
    /// Write to FILE instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
}

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (mut policy, origin) = if let Some(path) = &args.config {
        let mut site = crate::config::load_site(path)?;
        // The base set is read from the host the agent runs on; an export runs on
        // another one (a Windows server, a host without the agent), whose own NTP,
        // mirrors and resolvers this host cannot know.
        site.host = crate::config::base::HostBase::default();
        let policy = compiler::compile_site(&site, Some(path))?;
        if !args.host_wide && site.scope.iter().any(|s| *s != ScopeTarget::Host) {
            let mut error = PolicyError::new(format!(
                "scope {} cannot be exported: nftables and Windows Firewall rules apply to every process of the host",
                ScopeTarget::join(&site.scope, ", ")
            ))
            .hint("pass --host-wide to export the policy for the whole host, or use the agent for a per-service scope");
            error.file = Some(path.clone());
            return Err(error.into());
        }
        (policy, format!("site config {}", path.display()))
    } else {
        let product = args
            .product
            .as_deref()
            .context("give --config or --product")?;
        let policy = compiler::compile_product(
            product,
            &args.features.features,
            args.features.all_features,
            None,
        )?;
        let origin =
            export::product_origin(product, &args.features.features, args.features.all_features);
        (policy, origin)
    };
    if let Some(mode) = args.mode {
        policy.mode = mode;
    }
    let text = export::render(&policy, args.format, &origin)?;
    match &args.output {
        Some(path) => std::fs::write(path, &text)
            .with_context(|| format!("cannot write \"{}\"", path.display()))?,
        None => std::io::stdout().lock().write_all(text.as_bytes())?,
    }
    Ok(ExitCode::SUCCESS)
}
