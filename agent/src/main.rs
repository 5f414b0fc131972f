//! `portcullis`: the agent's command line and daemon. Everything is in the library
//! (`lib.rs` explains the layout).

use std::process::ExitCode;

fn main() -> ExitCode {
    portcullis::cli::main()
}
