//! `portcullis run`: compile, load, attach, then serve until stopped: deny events to
//! the log, SIGINT/SIGTERM to stop (final counters printed, programs detached).
//!
//! Order matters and is the point of this file: the whole policy is compiled and every
//! scope resolved before the kernel is touched; the policy is written into the maps and
//! made live before any program is attached; new links are attached before the links of
//! an earlier run are removed. At no instant is a scope unprotected or half-configured.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use aya::maps::RingBuf;
use portcullis_common::{
    config::{Config, LOOPBACK_ENFORCE, LOOPBACK_EXEMPT, MODE_AUDIT, MODE_ENFORCE},
    event::{DenyEvent, hook},
    maps as names,
    stats::reason,
};
use tokio::{io::unix::AsyncFd, signal::unix::{SignalKind, signal}};

use crate::{
    commands::status,
    image::{Image, RuleIndex},
    loader::{self, Datapath, PathArgs},
    policy::{Direction, LoopbackMode, Mode, Policy},
    state::State,
};

/// Arguments of `portcullis run`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  portcullis run --product xeams --mode audit\n  portcullis run --product iredmail --feature pop3 --mode enforce --scope system.slice/postfix.service\n  portcullis run --config /etc/portcullis/portcullis.toml")]
pub struct Args {
    /// A compiled policy as JSON (internal, for tests of the datapath).
    #[arg(long, hide = true)]
    pub policy_json: Option<PathBuf>,
    /// audit (count what would be dropped) or enforce (drop). Overrides the config.
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
    /// Where to enforce: "host" (every process) or a cgroup path under the cgroup v2
    /// mount, e.g. system.slice/xeams.service. Repeatable. Overrides the config.
    #[arg(long = "scope", value_name = "host|CGROUP")]
    pub scopes: Vec<String>,
    /// Deny events per second per CPU (0: none). Overrides the config.
    #[arg(long)]
    pub events_per_sec: Option<u32>,
    #[command(flatten)]
    pub paths: PathArgs,
}

/// `--mode`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ModeArg {
    /// Count what would be dropped; drop nothing.
    Audit,
    /// Drop what the policy denies.
    Enforce,
}

/// Everything `run` needs besides the policy.
pub struct Settings {
    /// Scopes to attach to.
    pub scopes: Vec<String>,
    /// Events per second per CPU.
    pub events_per_sec: u32,
}

fn resolve(args: &Args) -> anyhow::Result<(Policy, Settings)> {
    let path = args.policy_json.as_ref().context("give --config FILE or --product NAME")?;
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut policy: Policy = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    if let Some(m) = args.mode {
        policy.mode = match m {
            ModeArg::Audit => Mode::Audit,
            ModeArg::Enforce => Mode::Enforce,
        };
    }
    let scopes = if args.scopes.is_empty() { vec!["host".to_owned()] } else { args.scopes.clone() };
    Ok((policy, Settings { scopes, events_per_sec: args.events_per_sec.unwrap_or(100) }))
}

/// The runtime configuration for a policy.
pub fn config_for(policy: &Policy, generation: u32, events_per_sec: u32) -> Config {
    Config {
        generation,
        mode: if policy.mode == Mode::Enforce { MODE_ENFORCE } else { MODE_AUDIT },
        loopback: if policy.loopback == LoopbackMode::Enforce { LOOPBACK_ENFORCE } else { LOOPBACK_EXEMPT },
        icmp_echo: u32::from(policy.icmp_echo),
        events_per_sec,
        _reserved: [0; 3],
    }
}

/// Installs `policy` in the idle generation and makes it live. Returns the new state.
pub fn install(dp: &mut Datapath, paths: &PathArgs, policy: &Policy, settings: &Settings, previous: Option<&State>) -> anyhow::Result<State> {
    let prev_index = previous.map(State::rule_index).unwrap_or_default();
    let index = RuleIndex::carry_over(&prev_index, policy)?;
    let fresh: Vec<u16> = index.iter().filter(|(id, _)| prev_index.get(id).is_none()).map(|(_, i)| i).collect();
    dp.reset_rule_counters(&fresh)?;
    let generation = 1 - (dp.config()?.generation & 1);
    let image = Image::build(policy, &index, generation)?;
    dp.install(&image, config_for(policy, generation, settings.events_per_sec))?;
    let version = previous.map_or(1, |s| s.policy_version + 1);
    let state = State::new(policy, &index, &settings.scopes, generation, version);
    state.write(&paths.state_file())?;
    Ok(state)
}

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (policy, settings) = resolve(&args)?;
    let scopes = settings.scopes.iter().map(|s| loader::resolve_scope(s)).collect::<anyhow::Result<Vec<_>>>()?;

    let paths = args.paths.clone();
    let mut dp = Datapath::load(&paths)?;
    let previous = State::read(&paths.state_file()).ok();
    let old_links = loader::pinned_links(&paths);
    let state = install(&mut dp, &paths, &policy, &settings, previous.as_ref())?;
    let mut ours = Vec::new();
    for scope in &scopes {
        ours.extend(dp.attach(scope, &format!("v{}", state.policy_version))?);
        log::info!("attached to {} ({})", scope.label, scope.path.display());
    }
    // Only now that the new links enforce may those of an earlier run go.
    let stale: Vec<_> = old_links.into_iter().filter(|p| !ours.contains(p)).collect();
    loader::remove_links(&stale)?;
    log::info!(
        "{} {} with {} rules on {} (pins under {})",
        if policy.mode == Mode::Enforce { "enforcing" } else { "auditing" },
        policy.product,
        policy.rules.len(),
        settings.scopes.join(", "),
        paths.pin_dir.display()
    );
    println!("ready: mode={} product={} rules={} scope={}", policy.mode, policy.product, policy.rules.len(), settings.scopes.join(","));

    let ring = RingBuf::try_from(dp.ebpf.take_map(names::EVENTS).context("events map")?)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(serve(ring))?;

    drop(dp);
    match status::collect(&paths) {
        Ok(s) => status::print_table(&s),
        Err(e) => log::warn!("reading final counters: {e:#}"),
    }
    let done = loader::detach_all(&paths)?;
    log::info!("stopped: detached {} links, removed {} maps", done.links, done.maps);
    Ok(ExitCode::SUCCESS)
}

/// Prints deny events until SIGINT or SIGTERM.
async fn serve(ring: RingBuf<aya::maps::MapData>) -> anyhow::Result<()> {
    // SAFETY: the ring buffer owns its map fd, which stays open and unchanged for as
    // long as the `AsyncFd` owns the ring buffer.
    let mut events = unsafe { AsyncFd::register(ring) }
        .map_err(|e| anyhow::anyhow!("polling the event ring buffer: {e}"))?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    loop {
        tokio::select! {
            guard = events.readable_mut() => {
                let mut guard = guard?;
                let ring = guard.get_inner_mut();
                while let Some(item) = ring.next() {
                    if item.len() >= size_of::<DenyEvent>() {
                        // SAFETY: the programs write whole `DenyEvent`s; the length was checked.
                        let e: DenyEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                        println!("{}", format_event(&e));
                    }
                }
                guard.clear_ready();
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    Ok(())
}

fn addr(a: &[u8; 16]) -> std::net::IpAddr {
    let v6 = std::net::Ipv6Addr::from(*a);
    match v6.to_ipv4_mapped() {
        Some(v4) => v4.into(),
        None => v6.into(),
    }
}

/// One deny event as one log line.
pub fn format_event(e: &DenyEvent) -> String {
    let comm = String::from_utf8_lossy(e.comm.split(|b| *b == 0).next().unwrap_or_default()).into_owned();
    let (src, sport, dst, dport) = if Direction::from_code(e.direction) == Direction::In {
        (addr(&e.remote), e.remote_port, addr(&e.local), e.local_port)
    } else {
        (addr(&e.local), e.local_port, addr(&e.remote), e.remote_port)
    };
    format!(
        "{} {} {} {src}:{sport} -> {dst}:{dport} reason={} hook={} cgroup={}{}",
        if e.dropped == 1 { "deny" } else { "would-deny" },
        Direction::from_code(e.direction),
        status::protocol_name(e.protocol),
        reason::NAMES.get(e.reason as usize).unwrap_or(&"?"),
        hook::NAMES.get(e.hook as usize).unwrap_or(&"?"),
        e.cgroup_id,
        if e.pid != 0 { format!(" pid={} comm={comm}", e.pid) } else { String::new() },
    )
}
