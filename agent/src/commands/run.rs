//! `portcullis run`: its arguments; the agent itself is `crate::daemon`.

use std::process::ExitCode;

use crate::daemon::{self, settings::Overrides};

/// Arguments of `portcullis run`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Without --config or --product, runs /etc/portcullis/portcullis.toml if it exists, \
else the built-in default: product xeams, audit mode, host scope, inbound SSH kept open.

Examples:
  portcullis run --product xeams --mode audit
  portcullis run --product iredmail --feature pop3 --mode enforce --scope system.slice/postfix.service
  portcullis run --config /etc/portcullis/portcullis.toml
  portcullis run --product xeams --mode enforce --xdp eth0"
)]
pub struct Args {
    #[command(flatten)]
    pub overrides: Overrides,
}

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    daemon::run::run(args.overrides)
}
