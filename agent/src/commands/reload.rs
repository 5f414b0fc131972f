//! `portcullis reload`: asks the running agent to reload its config (SIGHUP), after
//! validating that config here first, and reports what the agent made of it.
//!
//! A config that does not compile is rejected before the agent is even signalled; the
//! agent validates again (the file may change in between) and keeps the running policy
//! when its own compilation fails.

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{
    datapath::{paths::PathArgs, state::State},
    policy::compiler,
};

/// Arguments of `portcullis reload`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  portcullis reload\n  systemctl reload portcullis   # the unit runs this"
)]
pub struct Args {
    /// How long to wait for the agent's answer, in seconds.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    #[command(flatten)]
    pub paths: PathArgs,
}

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let state_file = args.paths.state_file();
    let state = State::read(&state_file)?;
    if let Some(config) = &state.config {
        let site = crate::config::load_site(config)?;
        compiler::compile_site(&site, Some(config))?;
        // The scopes as the agent will check them (a unit that runs nothing, or that
        // systemd does not know, is exit code 3 here too).
        let root = crate::datapath::paths::cgroup2_mount().ok();
        crate::systemd::units::check_scopes(&site.scope, root.as_deref(), Some(config))?;
    }
    let pid = i32::try_from(state.pid).context("pid in the state file")?;
    // SAFETY: kill(2) with signal 0 only checks that the process exists.
    if unsafe { libc::kill(pid, 0) } != 0 {
        bail!(
            "the agent (pid {pid}) is not running; its last policy stays enforced until `portcullis run` or `portcullis detach`"
        );
    }
    let before = state.last_reload.as_ref().map_or(0, |r| r.attempt);
    // SAFETY: kill(2) with a pid read from our own state file.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        return Err(std::io::Error::last_os_error())
            .context(format!("signalling the agent (pid {pid})"));
    }
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    while Instant::now() < deadline {
        if let Ok(s) = State::read(&state_file)
            && let Some(outcome) = s.last_reload.filter(|r| r.attempt > before)
        {
            if outcome.ok {
                println!(
                    "reloaded: policy v{} ({} rules, mode {})",
                    s.policy_version,
                    s.rules.len(),
                    s.mode
                );
                return Ok(ExitCode::SUCCESS);
            }
            bail!(
                "the agent rejected the reload, policy v{} stays: {}",
                s.policy_version,
                outcome.error.unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!(
        "no answer from the agent (pid {pid}) within {} s",
        args.timeout
    )
}
