//! `portcullis mode audit|enforce`: switches the running policy between counting and
//! dropping with one write of the configuration map, without reloading anything. The
//! next reload or restart applies the config's `mode` again.

use std::process::ExitCode;

use crate::{
    datapath::{
        loader::write_mode,
        paths::PathArgs,
        state::{InstallLock, State},
    },
    model::Mode,
};

/// Arguments of `portcullis mode`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  portcullis mode enforce\n  portcullis mode audit")]
pub struct Args {
    /// The new mode.
    #[arg(value_enum)]
    pub mode: Mode,
    #[command(flatten)]
    pub paths: PathArgs,
}

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let state_file = args.paths.state_file();
    // Serialised with the agent's installs: see `InstallLock`.
    let _lock = InstallLock::take(&args.paths.state_dir)?;
    let mut state = State::read(&state_file)?;
    let was = write_mode(&args.paths, args.mode)?;
    state.mode = args.mode;
    state.write(&state_file)?;
    println!("mode: {} (was {was})", args.mode);
    Ok(ExitCode::SUCCESS)
}
