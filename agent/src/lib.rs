//! portcullis: the agent's library (the `portcullis` binary is `main.rs`, a call to
//! [`cli::main`]).
//!
//! Data flows one way, and the modules follow it:
//! profile (`profile.rs`, `profiles/*.toml`) + site config (`site.rs`)
//! -> compiler (`compiler.rs`, pure) -> [`policy::Policy`]
//! -> map image (`image.rs`, pure; also the userspace mirror `explain` uses)
//! -> loader (`loader.rs`, the only code that talks to the kernel)
//! -> counters (`counters.rs`) -> status and report (`commands/`).
//!
//! The pure stages are public so that the fuzz targets (`tests/fuzz`) and property
//! tests can drive them; everything that touches the kernel stays private.

pub mod cli;
mod commands;
pub mod compiler;
mod counters;
mod events;
pub mod image;
mod loader;
mod metrics;
mod notify;
pub mod policy;
pub mod profile;
pub mod site;
mod state;
mod xdp;
