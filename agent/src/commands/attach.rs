//! `portcullis attach --unit NAME`: the command a protected unit's drop-in runs as
//! `ExecCondition=+` on every start (see `crate::systemd`), before the unit's own
//! commands. It attaches the pinned programs to the unit's new cgroup, and fails with
//! exit code 255 (the ExecCondition= status that fails the start; 1-254 would only skip
//! it) when they are not pinned, unless the site chose `unpinned_start = "unprotected"`.

use std::process::ExitCode;

use crate::{
    datapath::{
        attach::{attach_unit_start, missing_program},
        paths::PathArgs,
    },
    model::UnpinnedStart,
};

/// The exit code of a failed attach: as ExecCondition=, 255 fails the unit's start.
const FAIL_START: u8 = 255;

/// Arguments of `portcullis attach`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Written by the agent into /etc/systemd/system/<unit>.d/50-portcullis.conf for every \
unit scope; not meant to be run by hand. Exit code 255 (and the unit does not start) when the \
programs are not pinned (the agent has not run since boot) or the process is not in the unit's cgroup.
With --unpinned unprotected (the site's unpinned_start) missing programs only log an error and exit 0.

Example (the drop-in's line):
  ExecCondition=+/usr/bin/portcullis attach --unit %n --pin-dir /sys/fs/bpf/portcullis"
)]
pub struct Args {
    /// The unit being started (systemd's %n).
    #[arg(long, value_name = "UNIT")]
    pub unit: String,
    /// What to do when the programs are not pinned: refuse the start, or let the unit
    /// start unprotected (logged as an error).
    #[arg(long, value_enum, default_value = "refuse")]
    pub unpinned: UnpinnedStart,
    #[command(flatten)]
    pub paths: PathArgs,
}

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.unpinned == UnpinnedStart::Unprotected
        && let Some(pin) = missing_program(&args.paths)
    {
        // To the unit's journal: the one place an admin looks when a unit misbehaves.
        eprintln!(
            "error: {} STARTS UNPROTECTED: program {} is not pinned (portcullis has not run since boot, or could not load its programs); unpinned_start = \"unprotected\" lets it start. Start portcullis.service, then restart {}",
            args.unit,
            pin.display(),
            args.unit
        );
        return Ok(ExitCode::SUCCESS);
    }
    match attach_unit_start(&args.paths, &args.unit) {
        Ok((cgroup, links)) => {
            println!(
                "attached {links} programs to {} ({})",
                args.unit,
                cgroup.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            Ok(ExitCode::from(FAIL_START))
        }
    }
}
