//! `portcullis detach`: removes every program, link and pin portcullis left, and the
//! state file. Enforcement stops here and nowhere else: an agent that exits or dies
//! leaves its pinned links enforcing.

use std::process::ExitCode;

use crate::datapath::{attach::detach_all, paths::PathArgs};

/// Arguments of `portcullis detach`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  portcullis detach\n  portcullis detach --pin-dir /sys/fs/bpf/portcullis-test --json"
)]
pub struct Args {
    /// Print what was removed as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub paths: PathArgs,
}

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let done = detach_all(&args.paths)?;
    if args.json {
        println!("{}", serde_json::to_string(&done)?);
    } else {
        println!(
            "detached: {} links and {} maps removed from {}",
            done.links,
            done.maps,
            args.paths.pin_dir().display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
