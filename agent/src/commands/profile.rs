//! `portcullis profile` (placeholder until implemented).

use std::process::ExitCode;

/// `portcullis profile ...`.
#[derive(Debug, clap::Subcommand)]
pub enum ProfileCommand {
    /// List the built-in profiles.
    List,
}

/// Runs the subcommand.
pub fn run(_c: ProfileCommand) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not implemented yet")
}
