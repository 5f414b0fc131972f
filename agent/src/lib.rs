//! portcullis: the agent's library (the `portcullis` binary is `main.rs`, a call to
//! [`cli::main`]).
//!
//! Data flows one way, and the modules follow it:
//! [`config`] (profile + site config, parsed and validated)
//! -> [`policy`] (compiler, pure -> [`policy::Policy`] -> map image, pure; the verdict
//! lookup `explain` and `report` share)
//! -> [`datapath`] (the only code that talks to the kernel: load, pin, attach, counters)
//! -> `observe` (status, metrics, deny log and aggregate)
//! -> `commands` (clap arguments and printing). The `daemon` runs the pipeline as a
//! service. [`model`] is the typed vocabulary they all share; `systemd` writes the drop-ins
//! that enforce unit scopes on every start.
//!
//! The pure stages are public so that the fuzz targets (`tests/fuzz`) and property
//! tests can drive them; everything that touches the kernel stays private.

pub mod cli;
mod commands;
pub mod config;
mod daemon;
mod datapath;
pub mod model;
mod observe;
pub mod policy;
mod systemd;
