//! `portcullis`: the agent's command line and daemon.
//!
//! Data flows one way, and the modules follow it:
//! profile (`profile.rs`, `profiles/*.toml`) + site config (`site.rs`)
//! -> compiler (`compiler.rs`, pure) -> [`policy::Policy`]
//! -> map image (`image.rs`, pure; also the userspace mirror `explain` uses)
//! -> loader (`loader.rs`, the only code that talks to the kernel)
//! -> counters (`counters.rs`) -> status and report (`commands/`).

mod cli;
mod commands;
mod compiler;
mod counters;
mod events;
mod image;
mod loader;
mod metrics;
mod notify;
mod policy;
mod profile;
mod site;
mod state;
mod xdp;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
