//! `portcullis mode audit|enforce`: switches the running policy between counting and
//! dropping with one write of the configuration map, without reloading anything. The
//! next reload or restart applies the config's `mode` again.

use std::process::ExitCode;

use anyhow::Context as _;
use aya::maps::{Array, Map};
use portcullis_common::{
    config::{Config, MODE_AUDIT, MODE_ENFORCE},
    maps as names,
};

use crate::{
    datapath::{
        loader::{PathArgs, open_pinned},
        state::State,
    },
    policy::Mode,
};

/// Arguments of `portcullis mode`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  portcullis mode enforce\n  portcullis mode audit")]
pub struct Args {
    /// The new mode.
    #[arg(value_enum)]
    pub mode: crate::daemon::run::ModeArg,
    #[command(flatten)]
    pub paths: PathArgs,
}

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let state_file = args.paths.state_file();
    let mut state = State::read(&state_file)?;
    let mut config = Array::<_, Config>::try_from(Map::from_map_data(open_pinned(
        &args.paths,
        names::CONFIG,
    )?)?)?;
    let mut c = config.get(&0, 0).context("reading the configuration")?;
    let was = if c.mode == MODE_ENFORCE {
        Mode::Enforce
    } else {
        Mode::Audit
    };
    let (mode, value) = match args.mode {
        crate::daemon::run::ModeArg::Audit => (Mode::Audit, MODE_AUDIT),
        crate::daemon::run::ModeArg::Enforce => (Mode::Enforce, MODE_ENFORCE),
    };
    c.mode = value;
    config.set(0, c, 0).context("writing the configuration")?;
    state.mode = mode;
    state.write(&state_file)?;
    println!("mode: {mode} (was {was})");
    Ok(ExitCode::SUCCESS)
}
