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
use serde::Serialize;

use crate::{
    datapath::{paths::PathArgs, state::State},
    model::Mode,
    policy::compiler,
};

/// Arguments of `portcullis reload`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "With --json, prints {ok, policy_version, rules, mode, error}; the exit code is 1 when the\nagent rejected the reload (its running policy stays) or did not answer.\n\nExamples:\n  portcullis reload\n  portcullis reload --json | jq .policy_version\n  systemctl reload portcullis   # the unit runs this"
)]
pub struct Args {
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// How long to wait for the agent's answer, in seconds.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    #[command(flatten)]
    pub paths: PathArgs,
}

/// What `reload --json` prints.
#[derive(Debug, Serialize)]
pub struct Outcome {
    /// The new policy is live.
    pub ok: bool,
    /// The policy version running now (the new one, or the one that stayed).
    pub policy_version: u64,
    /// Its rules.
    pub rules: usize,
    /// Its mode: the config's, after a reload that took.
    pub mode: Mode,
    /// Why the agent rejected the reload.
    pub error: Option<String>,
}

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let state_file = args.paths.state_file();
    if let Some(w) = crate::daemon::waiting::read(&args.paths) {
        return start_waiting(&args, &w);
    }
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
            if args.json {
                let out = Outcome {
                    ok: outcome.ok,
                    policy_version: s.policy_version,
                    rules: s.rules.len(),
                    mode: s.mode,
                    error: outcome.error,
                };
                println!("{}", serde_json::to_string_pretty(&out)?);
                return Ok(if out.ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                });
            }
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

/// A reload of an agent that waits for a product: the config must name one now and
/// compile; the agent then starts (it executes itself anew, keeping its pid) and this
/// waits until its state says it runs.
fn start_waiting(args: &Args, w: &crate::daemon::waiting::Waiting) -> anyhow::Result<ExitCode> {
    let site = crate::config::load_site(&w.config)?;
    if site.product.is_none() && site.profile.is_none() {
        bail!(
            "{} still names no product, so the agent keeps waiting; {}",
            w.config.display(),
            w.how_to_choose
        );
    }
    compiler::compile_site(&site, Some(&w.config))?;
    let root = crate::datapath::paths::cgroup2_mount().ok();
    crate::systemd::units::check_scopes(&site.scope, root.as_deref(), Some(&w.config))?;
    let pid = i32::try_from(w.pid).context("pid in the waiting file")?;
    // SAFETY: kill(2) with the pid of the live waiting agent.
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        return Err(std::io::Error::last_os_error())
            .context(format!("signalling the agent (pid {pid})"));
    }
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    while Instant::now() < deadline {
        if crate::daemon::waiting::read(&args.paths).is_none()
            && let Ok(s) = State::read(&args.paths.state_file())
            && s.pid == w.pid
        {
            let out = Outcome {
                ok: true,
                policy_version: s.policy_version,
                rules: s.rules.len(),
                mode: s.mode,
                error: None,
            };
            if args.json {
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!(
                    "started: product {}, policy v{} ({} rules, mode {})",
                    s.product,
                    s.policy_version,
                    s.rules.len(),
                    s.mode
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!(
        "the waiting agent (pid {pid}) did not start within {} s; see `journalctl -u portcullis`",
        args.timeout
    )
}
