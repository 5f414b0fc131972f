//! `portcullis attach --unit NAME`: the one-shot a protected unit's drop-in runs as
//! `ExecStartPre=+` on every start (see `crate::systemd`). It attaches the pinned
//! programs to the unit's new cgroup before the unit's own processes run, and fails (so
//! the start fails) when they are not pinned.

use std::process::ExitCode;

use crate::datapath::{attach::attach_unit_start, paths::PathArgs};

/// Arguments of `portcullis attach`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Written by the agent into /etc/systemd/system/<unit>.d/50-portcullis.conf for every \
unit scope; not meant to be run by hand. Exit code 1 (and the unit does not start) when the \
programs are not pinned (the agent has not run since boot) or the process is not in the unit's cgroup.

Example (the drop-in's line):
  ExecStartPre=+/usr/bin/portcullis attach --unit %n --pin-dir /sys/fs/bpf/portcullis"
)]
pub struct Args {
    /// The unit being started (systemd's %n).
    #[arg(long, value_name = "UNIT")]
    pub unit: String,
    #[command(flatten)]
    pub paths: PathArgs,
}

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (cgroup, links) = attach_unit_start(&args.paths, &args.unit)?;
    println!(
        "attached {links} programs to {} ({})",
        args.unit,
        cgroup.display()
    );
    Ok(ExitCode::SUCCESS)
}
