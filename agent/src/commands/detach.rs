//! `portcullis detach`: removes every program, link and pin portcullis left, the state
//! file, and the drop-ins of unit scopes. Enforcement stops here and nowhere else: an agent that exits or dies
//! leaves its pinned links enforcing.

use std::process::ExitCode;

use crate::{
    datapath::{attach::detach_all, paths::PathArgs},
    systemd,
};

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
    // Drop-ins first: a unit started after its programs are gone but before its drop-in
    // is would fail to start (its attach finds no pins).
    let units = systemd::remove_all_drop_ins(&args.paths.pin_dir())?;
    let done = detach_all(&args.paths)?;
    if args.json {
        let mut value = serde_json::to_value(&done)?;
        value["drop_ins"] = serde_json::json!(units);
        println!("{value}");
    } else {
        println!(
            "detached: {} links and {} maps removed from {}, {} unit drop-ins removed",
            done.links,
            done.maps,
            args.paths.pin_dir().display(),
            units.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
