//! Command-line parsing and dispatch. Each subcommand's arguments and behaviour live in
//! `commands/<name>.rs`; this file only wires them together and maps errors to exit codes.

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand};

use crate::commands;

/// Exit code for a policy that does not validate (bad profile, config or rule).
pub const EXIT_INVALID_POLICY: u8 = 3;

const EXAMPLES: &str = "\
Examples:
  portcullis detect
  portcullis profile list
  portcullis profile show xeams --feature pop3
  portcullis explain --product iredmail --direction in --protocol tcp --port 25
  portcullis check --config /etc/portcullis/portcullis.toml
  portcullis doctor --config /etc/portcullis/portcullis.toml
  portcullis run --product xeams --mode audit
  portcullis export --format nft --product iredmail
  portcullis status --json
  portcullis status --watch
  portcullis report --since 1d
  portcullis detach

Exit codes: 0 success, 1 failure, 2 usage error, 3 invalid policy or config.";

/// Turns a mail-security product's published port table into an enforced, counted,
/// stateful eBPF allowlist.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about, after_help = EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the built-in product profiles, or show one compiled.
    #[command(subcommand)]
    Profile(commands::profile::ProfileCommand),
    /// Name the mail-security product installed on this host, with the evidence.
    Detect(commands::detect::Args),
    /// Validate a site config and print the policy it compiles to.
    Check(commands::check::Args),
    /// Show the verdict the datapath gives a new flow, and the rule that decides it.
    Explain(commands::explain::Args),
    /// Check this host before running: kernel, BPF features (probed), cgroup v2, bpffs,
    /// BTF, lockdown, systemd, and whether the programs verify for the policy.
    Doctor(commands::doctor::Args),
    /// Write the compiled policy as an nftables ruleset or a Windows Firewall script, for
    /// hosts that cannot run the agent.
    Export(commands::export::Args),
    /// Load the policy into the kernel and enforce (or audit) until stopped.
    Run(commands::run::Args),
    /// Show mode, scope, per-rule counters and denies of the running policy.
    Status(commands::status::Args),
    /// The audit -> enforce decision: what enforcing would break, rules never hit, and
    /// the feature or site rule that would open each denied port.
    Report(commands::report::Args),
    /// Ask the running agent to reload its config (validated first; a bad one is rejected).
    Reload(commands::reload::Args),
    /// Switch the running policy between audit and enforce (one map write).
    Mode(commands::mode::Args),
    /// Remove every program, link, pinned map and unit drop-in portcullis added.
    Detach(commands::detach::Args),
    /// Attach the pinned programs to a starting unit's cgroup (run by its drop-in).
    Attach(commands::attach::Args),
    /// Test and diagnosis helpers (not a stable interface).
    #[command(subcommand, hide = true)]
    Debug(commands::debug::DebugCommand),
    /// Write man pages or shell completions (used by `cargo xtask install`).
    #[command(hide = true)]
    Generate(commands::generate::Args),
}

/// Parses the command line, runs the subcommand and turns its result into an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::new().filter_or("PORTCULLIS_LOG", "info"))
        .format_target(false)
        .init();
    if !matches!(cli.command, Command::Run(_)) {
        // `portcullis status | head` should end quietly, as other Unix tools do. Not for
        // the daemon: a closed stdout must not kill the firewall agent.
        // SAFETY: setting a signal disposition to its default before any thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let result = match cli.command {
        Command::Profile(c) => commands::profile::run(c),
        Command::Detect(a) => commands::detect::run(a),
        Command::Check(a) => commands::check::run(a),
        Command::Explain(a) => commands::explain::run(a),
        Command::Doctor(a) => commands::doctor::run(a),
        Command::Export(a) => commands::export::run(a),
        Command::Run(a) => commands::run::run(a),
        Command::Status(a) => commands::status::run(a),
        Command::Report(a) => commands::report::run(a),
        Command::Reload(a) => commands::reload::run(a),
        Command::Mode(a) => commands::mode::run(a),
        Command::Detach(a) => commands::detach::run(a),
        Command::Attach(a) => commands::attach::run(a),
        Command::Debug(c) => commands::debug::run(c),
        Command::Generate(a) => commands::generate::run(a, Cli::command()),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            if err.chain().any(|e| e.is::<crate::config::PolicyError>()) {
                ExitCode::from(EXIT_INVALID_POLICY)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
