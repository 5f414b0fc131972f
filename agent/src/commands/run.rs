//! `portcullis run`: its arguments; the agent itself is `crate::daemon`. `--dry-run`
//! stops after the step that settles the policy and settings, before the kernel is
//! touched, so the same command line can be tried without root.

use std::{io::Write as _, process::ExitCode};

use super::profile::print_entries;
use crate::daemon::{
    self,
    settings::{Overrides, resolve},
};

/// Arguments of `portcullis run`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Without --config or --product, runs /etc/portcullis/portcullis.toml if it exists, \
else the built-in default: product xeams, audit mode, host scope, inbound SSH kept open. \
A config that names no product (the package's, where `portcullis detect` found none) waits, \
enforcing nothing, until one is chosen: `portcullis status` says how. \
Start in audit mode, read `portcullis report`, then switch with `portcullis mode enforce`.

Examples:
  portcullis run --config /etc/portcullis/portcullis.toml
  portcullis run --product xeams --mode audit
  portcullis run --product iredmail --feature pop3s --scope postfix@-.service
  portcullis run --product xeams --mode audit --xdp eth0
  portcullis run --product iredmail --feature imaps --dry-run"
)]
pub struct Args {
    #[command(flatten)]
    pub overrides: Overrides,
    /// Compile the policy and settle the settings exactly as `run` would, print them, and
    /// exit without loading anything (no root needed; exit code 3 for an invalid policy).
    #[arg(long)]
    pub dry_run: bool,
}

/// Runs the subcommand.
pub fn run(mut args: Args) -> anyhow::Result<ExitCode> {
    if !args.dry_run {
        return daemon::run::run(args.overrides);
    }
    let (policy, settings, config) = resolve(&mut args.overrides)?;
    let mut out = std::io::stdout().lock();
    let list = |items: Vec<String>| {
        if items.is_empty() {
            "none".to_string()
        } else {
            items.join(", ")
        }
    };
    writeln!(
        out,
        "dry run: nothing loaded; would run product {} in {} mode from {}",
        policy.product,
        policy.mode,
        config.map_or("the command line".to_string(), |c| c.display().to_string()),
    )?;
    writeln!(
        out,
        "scope: {}  xdp: {}  events_per_sec: {}  metrics: {}",
        list(settings.scopes.iter().map(ToString::to_string).collect()),
        list(settings.xdp.clone()),
        settings.events_per_sec,
        settings
            .metrics
            .map_or("off".to_string(), |a| a.to_string()),
    )?;
    writeln!(out)?;
    drop(out);
    print_entries(&policy)?;
    Ok(ExitCode::SUCCESS)
}
