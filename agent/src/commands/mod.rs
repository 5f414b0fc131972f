//! One module per subcommand: its clap arguments and its behaviour.

pub mod attach;
pub mod check;
pub mod debug;
pub mod detach;
pub mod detect;
pub mod doctor;
pub mod explain;
pub mod export;
pub mod generate;
pub mod mode;
pub mod profile;
pub mod reload;
pub mod report;
pub mod run;
pub mod status;
