//! `portcullis detach` (placeholder until implemented).

use std::process::ExitCode;

/// Arguments of `portcullis detach`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs the subcommand.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
