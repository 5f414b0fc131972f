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
    compiler,
    image::{Image, RuleIndex},
    loader::{self, Datapath, PathArgs},
    policy::{Direction, LoopbackMode, Mode, Policy},
    state::State,
};

/// Arguments of `portcullis run`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Without --config or --product, runs /etc/portcullis/portcullis.toml if it exists, \
else the built-in default: product xeams, audit mode, host scope, inbound SSH kept open.

Examples:
  portcullis run --product xeams --mode audit
  portcullis run --product iredmail --feature pop3 --mode enforce --scope system.slice/postfix.service
  portcullis run --config /etc/portcullis/portcullis.toml")]
pub struct Args {
    /// Site config (TOML): product, features, peers, site rules, mode, scope.
    #[arg(long, value_name = "FILE", conflicts_with = "product")]
    pub config: Option<PathBuf>,
    /// A built-in product profile (see `portcullis profile list`), default site settings.
    #[arg(long, value_name = "NAME")]
    pub product: Option<String>,
    /// With --product: turn on an optional feature of the profile. Repeatable.
    #[arg(long = "feature", value_name = "F", requires = "product")]
    pub features: Vec<String>,
    /// With --product: turn on every optional feature.
    #[arg(long, requires = "product")]
    pub all_features: bool,
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

/// The config `run` reads when given neither --config nor --product.
pub const DEFAULT_CONFIG: &str = "/etc/portcullis/portcullis.toml";
/// The product of the built-in default policy.
pub const DEFAULT_PRODUCT: &str = "xeams";

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

/// Compiles the policy and settles the settings, before anything touches the kernel.
fn resolve(args: &mut Args) -> anyhow::Result<(Policy, Settings)> {
    let default_config = PathBuf::from(DEFAULT_CONFIG);
    let config = match (&args.config, &args.product) {
        (Some(c), _) => Some(c.clone()),
        (None, None) if default_config.is_file() => Some(default_config),
        _ => None,
    };
    let (mut policy, mut settings) = if let Some(path) = config {
        let site = compiler::load_site(&path)?;
        let policy = compiler::compile_site(&site, Some(&path))?;
        if args.paths.pin_dir.is_none() {
            args.paths.pin_dir = Some(site.pin_dir.clone());
        }
        let scopes = site.scope.iter().map(ToString::to_string).collect();
        (policy, Settings { scopes, events_per_sec: site.events_per_sec })
    } else {
        let product = args.product.as_deref().unwrap_or(DEFAULT_PRODUCT);
        let policy = compiler::compile_product(product, &args.features, args.all_features)?;
        (policy, Settings { scopes: vec!["host".to_owned()], events_per_sec: 100 })
    };
    if let Some(m) = args.mode {
        policy.mode = match m {
            ModeArg::Audit => Mode::Audit,
            ModeArg::Enforce => Mode::Enforce,
        };
    }
    if !args.scopes.is_empty() {
        settings.scopes = args.scopes.clone();
    }
    if settings.scopes.is_empty() {
        settings.scopes = vec!["host".to_owned()];
    }
    if let Some(e) = args.events_per_sec {
        settings.events_per_sec = e;
    }
    Ok((policy, settings))
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
pub fn run(mut args: Args) -> anyhow::Result<ExitCode> {
    let (policy, settings) = resolve(&mut args)?;
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
        paths.pin_dir().display()
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
