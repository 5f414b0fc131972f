//! `portcullis generate man|completions DIR` (hidden): writes the man pages and shell
//! completions from the clap definitions, so they can never disagree with `--help`.
//! `cargo xtask install` and `cargo xtask dist` call it.

use std::{fs, path::PathBuf, process::ExitCode};

use anyhow::Context as _;

/// Arguments of `portcullis generate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to write.
    #[arg(value_enum)]
    pub what: What,
    /// Directory to write into (created if missing).
    pub dir: PathBuf,
}

/// What `generate` writes.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum What {
    /// portcullis.1 and one page per subcommand (portcullis-run.1, ...).
    Man,
    /// bash, zsh and fish completions.
    Completions,
}

/// Runs the subcommand on `cli`, the whole command line definition (handed in by
/// `cli.rs`, which owns it).
pub fn run(args: Args, cli: clap::Command) -> anyhow::Result<ExitCode> {
    fs::create_dir_all(&args.dir).with_context(|| format!("creating {}", args.dir.display()))?;
    match args.what {
        What::Man => {
            clap_mangen::generate_to(cli, &args.dir)
                .with_context(|| format!("writing man pages to {}", args.dir.display()))?;
        }
        What::Completions => {
            for shell in [
                clap_complete::Shell::Bash,
                clap_complete::Shell::Zsh,
                clap_complete::Shell::Fish,
            ] {
                clap_complete::generate_to(shell, &mut cli.clone(), "portcullis", &args.dir)
                    .with_context(|| {
                        format!("writing {shell} completions to {}", args.dir.display())
                    })?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
