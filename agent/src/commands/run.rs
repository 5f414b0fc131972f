//! `portcullis run`: compile, load, attach, then serve until stopped: deny events to
//! the log, SIGINT/SIGTERM to stop (final counters printed, programs detached).
//!
//! Order matters and is the point of this file: the whole policy is compiled and every
//! scope resolved before the kernel is touched; the policy is written into the maps and
//! made live before any program is attached; new links are attached before the links of
//! an earlier run are removed. At no instant is a scope unprotected or half-configured.

use std::{
    fs, net::SocketAddr, os::fd::AsRawFd as _, path::PathBuf, process::ExitCode, time::Duration,
};

use anyhow::{Context as _, bail};
use aya::maps::RingBuf;
use portcullis_common::{
    config::{Config, LOOPBACK_ENFORCE, LOOPBACK_EXEMPT, MODE_AUDIT, MODE_ENFORCE},
    event::DenyEvent,
    maps as names,
};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{
    commands::status,
    compiler,
    events::EventLog,
    image::{Image, RuleIndex},
    loader::{self, Datapath, PathArgs, Scope},
    metrics,
    notify::Notifier,
    policy::{LoopbackMode, Mode, Policy},
    state::{ReloadOutcome, State, unix_now},
    xdp,
};

/// Arguments of `portcullis run`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Without --config or --product, runs /etc/portcullis/portcullis.toml if it exists, \
else the built-in default: product xeams, audit mode, host scope, inbound SSH kept open.

Examples:
  portcullis run --product xeams --mode audit
  portcullis run --product iredmail --feature pop3 --mode enforce --scope system.slice/postfix.service
  portcullis run --config /etc/portcullis/portcullis.toml
  portcullis run --product xeams --mode enforce --xdp eth0"
)]
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
    /// Attach the XDP filter to this interface too (native mode where the driver
    /// supports it, else generic). Repeatable. Overrides the config's `xdp`.
    #[arg(long = "xdp", value_name = "IFACE")]
    pub xdp: Vec<String>,
    /// Serve Prometheus metrics at this address (the suggested one is 127.0.0.1:9975). Overrides the
    /// config's `[metrics] listen`. Off by default.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Deny events per second per CPU (0: none). Overrides the config.
    #[arg(long)]
    pub events_per_sec: Option<u32>,
    /// What to do with the programs on SIGINT/SIGTERM: detach them, or keep them
    /// enforcing the last policy (what the systemd unit does).
    #[arg(long, value_enum, default_value = "detach")]
    pub on_exit: OnExit,
    #[command(flatten)]
    pub paths: PathArgs,
}

/// Deny log lines per second before the log summarises ("suppressed N lines"); the
/// kernel's own per-CPU limit (`events_per_sec`) comes first.
const LOG_LINES_PER_SEC: u32 = 20;

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
    /// Interfaces to attach the XDP program to.
    pub xdp: Vec<String>,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics: Option<SocketAddr>,
}

/// Compiles the policy and settles the settings, before anything touches the kernel.
fn resolve(args: &mut Args) -> anyhow::Result<(Policy, Settings, Option<PathBuf>)> {
    let default_config = PathBuf::from(DEFAULT_CONFIG);
    let config = match (&args.config, &args.product) {
        (Some(c), _) => Some(c.clone()),
        (None, None) if default_config.is_file() => Some(default_config),
        _ => None,
    };
    let (mut policy, mut settings) = if let Some(path) = &config {
        let site = compiler::load_site(path)?;
        let policy = compiler::compile_site(&site, Some(path))?;
        if args.paths.pin_dir.is_none() {
            args.paths.pin_dir = Some(site.pin_dir.clone());
        }
        let scopes = site.scope.iter().map(ToString::to_string).collect();
        let settings = Settings {
            scopes,
            events_per_sec: site.events_per_sec,
            xdp: site.xdp.clone(),
            metrics: site.metrics.listen,
        };
        (policy, settings)
    } else {
        let product = args.product.as_deref().unwrap_or(DEFAULT_PRODUCT);
        let policy = compiler::compile_product(product, &args.features, args.all_features)?;
        (
            policy,
            Settings {
                scopes: vec!["host".to_owned()],
                events_per_sec: 100,
                xdp: Vec::new(),
                metrics: None,
            },
        )
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
    if !args.xdp.is_empty() {
        settings.xdp = args.xdp.clone();
    }
    if args.metrics_listen.is_some() {
        settings.metrics = args.metrics_listen;
    }
    if let Some(e) = args.events_per_sec {
        settings.events_per_sec = e;
    }
    Ok((policy, settings, config))
}

/// The runtime configuration for a policy.
pub fn config_for(policy: &Policy, generation: u32, settings: &Settings) -> Config {
    Config {
        generation,
        mode: if policy.mode == Mode::Enforce {
            MODE_ENFORCE
        } else {
            MODE_AUDIT
        },
        loopback: if policy.loopback == LoopbackMode::Enforce {
            LOOPBACK_ENFORCE
        } else {
            LOOPBACK_EXEMPT
        },
        icmp_echo: u32::from(policy.icmp_echo),
        events_per_sec: settings.events_per_sec,
        xdp_flows: u32::from(!settings.xdp.is_empty()),
        epoch: 0,
        _reserved: [0; 1],
    }
}

/// Installs `policy` in the idle generation and makes it live. Returns the new state.
pub fn install(
    dp: &mut Datapath,
    policy: &Policy,
    settings: &Settings,
    previous: Option<&State>,
) -> anyhow::Result<State> {
    let prev_index = previous.map(State::rule_index).unwrap_or_default();
    let index = RuleIndex::carry_over(&prev_index, policy)?;
    let fresh: Vec<u16> = index
        .iter()
        .filter(|(id, _)| prev_index.get(id).is_none())
        .map(|(_, i)| i)
        .collect();
    // Build first: a policy that does not fit is rejected before any map is touched.
    let live = dp.config()?;
    let generation = 1 - (live.generation & 1);
    let image = Image::build(policy, &index, generation)?;
    dp.reset_rule_counters(&fresh)?;
    // A new epoch: every flow is decided again on its next packet (revocation).
    let config = Config {
        epoch: live.epoch.wrapping_add(1),
        ..config_for(policy, generation, settings)
    };
    dp.install(&image, config)?;
    let version = previous.map_or(1, |s| s.policy_version + 1);
    Ok(State::new(
        policy,
        &index,
        &settings.scopes,
        generation,
        version,
    ))
}

/// What `run` does with the programs when it stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnExit {
    /// Detach everything: enforcement ends with the agent (interactive use).
    Detach,
    /// Leave the pinned programs enforcing the last policy (the systemd unit): a
    /// restart or upgrade takes over without a gap; `portcullis detach` removes them.
    Keep,
}

/// The running agent.
struct Daemon {
    args: Args,
    paths: PathArgs,
    dp: Datapath,
    state: State,
    /// Attached scopes and the link pins that attach them.
    attached: Vec<(Scope, Vec<PathBuf>)>,
    /// Interfaces with the XDP program, and their link pins.
    xdp: Vec<(String, PathBuf)>,
    notify: Notifier,
    /// Deny events: log lines (rate-limited) and the aggregate `report` reads.
    events: EventLog,
    /// Where metrics are served (fixed at start: a reload does not move the listener).
    metrics: Option<SocketAddr>,
    reloads: u64,
    _lock: fs::File,
}

/// Takes the single-instance lock of a state directory (released by the kernel when the
/// process dies, even by kill -9).
fn lock(paths: &PathArgs) -> anyhow::Result<fs::File> {
    fs::create_dir_all(&paths.state_dir)
        .with_context(|| format!("creating {}", paths.state_dir.display()))?;
    let path = paths.state_dir.join("lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!(
            "another portcullis agent is running with state directory {} (see `portcullis status`)",
            paths.state_dir.display()
        );
    }
    Ok(file)
}

impl Daemon {
    /// Compiles, loads, installs and attaches; on success the scopes are enforced.
    fn start(mut args: Args) -> anyhow::Result<Self> {
        let (policy, settings, config) = resolve(&mut args)?;
        let scopes = settings
            .scopes
            .iter()
            .map(|s| loader::resolve_scope(s))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let paths = args.paths.clone();
        let lock = lock(&paths)?;
        let old_links = loader::pinned_links(&paths);
        let previous = if old_links.is_empty() {
            None
        } else {
            State::read(&paths.state_file()).ok()
        };
        let result = Self::attach_all(
            &paths,
            &policy,
            &settings,
            previous.as_ref(),
            &scopes,
            &old_links,
        );
        let (dp, mut state, attached, xdp) = match result {
            Ok(v) => v,
            Err(e) => {
                // Nothing of an earlier run was enforcing: leave nothing half-made behind.
                if old_links.is_empty() {
                    let _ = loader::detach_all(&paths);
                }
                return Err(e);
            }
        };
        state.config = config;
        state.write(&paths.state_file())?;
        let events = EventLog::new(&paths, LOG_LINES_PER_SEC);
        Ok(Self {
            args,
            paths,
            dp,
            state,
            attached,
            xdp,
            notify: Notifier::from_env(),
            events,
            metrics: settings.metrics,
            reloads: 0,
            _lock: lock,
        })
    }

    #[expect(clippy::type_complexity, reason = "a private constructor step")]
    fn attach_all(
        paths: &PathArgs,
        policy: &Policy,
        settings: &Settings,
        previous: Option<&State>,
        scopes: &[Scope],
        old_links: &[PathBuf],
    ) -> anyhow::Result<(
        Datapath,
        State,
        Vec<(Scope, Vec<PathBuf>)>,
        Vec<(String, PathBuf)>,
    )> {
        let mut dp = Datapath::load(paths)?;
        let state = install(&mut dp, policy, settings, previous)?;
        let tag = format!("v{}", state.policy_version);
        let mut attached = Vec::new();
        for scope in scopes {
            let pins = dp.attach(scope, &tag)?;
            log::info!("attached to {} ({})", scope.label, scope.path.display());
            attached.push((scope.clone(), pins));
        }
        let mut xdp_links = Vec::new();
        for iface in &settings.xdp {
            let (pin, mode) = xdp::attach(&mut dp, iface, &tag)?;
            log::info!("attached XDP to {iface} ({mode} mode)");
            xdp_links.push((iface.clone(), pin));
        }
        // Only now that the new links enforce may those of an earlier run go.
        let ours: Vec<&PathBuf> = attached
            .iter()
            .flat_map(|(_, p)| p)
            .chain(xdp_links.iter().map(|(_, p)| p))
            .collect();
        let stale: Vec<PathBuf> = old_links
            .iter()
            .filter(|p| !ours.contains(p))
            .cloned()
            .collect();
        if !stale.is_empty() {
            log::info!(
                "took over from an earlier agent: removing its {} links",
                stale.len()
            );
        }
        loader::remove_links(&stale)?;
        Ok((dp, state, attached, xdp_links))
    }

    fn status_line(&self) -> String {
        format!(
            "{} {} v{}: {} rules on {}",
            if self.state.mode == Mode::Enforce {
                "enforcing"
            } else {
                "auditing"
            },
            self.state.product,
            self.state.policy_version,
            self.state.rules.len(),
            self.state.scopes.join(", ")
        )
    }

    /// Reloads the configuration: compiled and validated in full first; a bad one is
    /// rejected and the running policy stays untouched.
    fn reload(&mut self) {
        self.notify.reloading();
        self.reloads += 1;
        let outcome = match self.try_reload() {
            Ok(()) => {
                log::info!("reloaded: {}", self.status_line());
                ReloadOutcome {
                    attempt: self.reloads,
                    ok: true,
                    error: None,
                    at: unix_now(),
                }
            }
            Err(e) => {
                log::error!(
                    "reload rejected, policy v{} stays: {e:#}",
                    self.state.policy_version
                );
                ReloadOutcome {
                    attempt: self.reloads,
                    ok: false,
                    error: Some(format!("{e:#}")),
                    at: unix_now(),
                }
            }
        };
        self.state.last_reload = Some(outcome);
        if let Err(e) = self.state.write(&self.paths.state_file()) {
            log::error!("writing the state file: {e:#}");
        }
        self.notify
            .send(&format!("READY=1\nSTATUS={}", self.status_line()));
    }

    fn try_reload(&mut self) -> anyhow::Result<()> {
        let (policy, settings, config) = resolve(&mut self.args)?;
        let scopes = settings
            .scopes
            .iter()
            .map(|s| loader::resolve_scope(s))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut state = install(&mut self.dp, &policy, &settings, Some(&self.state))?;
        state.config = config;
        // Scopes: attach the new ones before detaching the ones that left.
        let tag = format!("v{}", state.policy_version);
        for scope in &scopes {
            if !self.attached.iter().any(|(s, _)| s.path == scope.path) {
                let pins = self.dp.attach(scope, &tag)?;
                log::info!("attached to {} ({})", scope.label, scope.path.display());
                self.attached.push((scope.clone(), pins));
            }
        }
        let (keep, gone): (Vec<_>, Vec<_>) = std::mem::take(&mut self.attached)
            .into_iter()
            .partition(|(s, _)| scopes.iter().any(|n| n.path == s.path));
        for (scope, pins) in gone {
            loader::remove_links(&pins)?;
            log::info!("detached from {}", scope.label);
        }
        self.attached = keep;
        // XDP: the same for interfaces (the program itself does not change on reload).
        for iface in &settings.xdp {
            if !self.xdp.iter().any(|(i, _)| i == iface) {
                let (pin, mode) = xdp::attach(&mut self.dp, iface, &tag)?;
                log::info!("attached XDP to {iface} ({mode} mode)");
                self.xdp.push((iface.clone(), pin));
            }
        }
        let (keep, gone): (Vec<_>, Vec<_>) = std::mem::take(&mut self.xdp)
            .into_iter()
            .partition(|(i, _)| settings.xdp.contains(i));
        for (iface, pin) in gone {
            loader::remove_links(&[pin])?;
            log::info!("detached XDP from {iface}");
        }
        self.xdp = keep;
        state.last_reload = self.state.last_reload.clone();
        self.state = state;
        Ok(())
    }
}

/// How often the daemon checks that each scope's cgroup is still the one its programs
/// are attached to (see [`Daemon::reattach_recreated_scopes`]).
const SCOPE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

impl Daemon {
    /// Re-attaches to scopes whose cgroup was removed and created again.
    ///
    /// Removing a cgroup detaches its programs with it (the kernel frees the cgroup's
    /// links), and a cgroup created again at the same path, e.g. by a unit restart, is a
    /// new cgroup that nothing enforces. Link pins are named after the inode of the
    /// cgroup they attach to, so comparing that with the path's inode now tells which
    /// scopes lost their programs. A missing cgroup's dead links are removed (logged
    /// once); when the path exists again the programs are attached to it.
    fn reattach_recreated_scopes(&mut self) {
        let tag = format!("v{}", self.state.policy_version);
        for (scope, pins) in &mut self.attached {
            let pinned = pins.first().and_then(|p| {
                p.file_name()?
                    .to_str()?
                    .split('-')
                    .next()?
                    .parse::<u64>()
                    .ok()
            });
            let now = fs::metadata(&scope.path)
                .ok()
                .filter(|_| scope.path.join("cgroup.procs").is_file())
                .map(|m| std::os::unix::fs::MetadataExt::ino(&m));
            if now.is_some() && now == pinned {
                continue;
            }
            if !pins.is_empty() {
                log::warn!(
                    "scope {}: cgroup {} was removed; its programs went with it",
                    scope.label,
                    scope.path.display()
                );
                if let Err(e) = loader::remove_links(pins) {
                    log::error!(
                        "scope {}: removing the links of the removed cgroup: {e:#}",
                        scope.label
                    );
                }
                pins.clear();
            }
            if now.is_some() {
                match self.dp.attach(scope, &tag) {
                    Ok(new) => {
                        log::warn!(
                            "scope {}: cgroup {} was created again; re-attached",
                            scope.label,
                            scope.path.display()
                        );
                        *pins = new;
                    }
                    Err(e) => log::error!(
                        "scope {}: re-attaching to {}: {e:#}",
                        scope.label,
                        scope.path.display()
                    ),
                }
            }
        }
    }
}

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let on_exit = args.on_exit;
    let mut daemon = Daemon::start(args)?;
    log::info!(
        "{} (pins under {})",
        daemon.status_line(),
        daemon.paths.pin_dir().display()
    );
    println!(
        "ready: mode={} product={} rules={} scope={}",
        daemon.state.mode,
        daemon.state.product,
        daemon.state.rules.len(),
        daemon.state.scopes.join(",")
    );
    daemon
        .notify
        .send(&format!("READY=1\nSTATUS={}", daemon.status_line()));

    let ring = RingBuf::try_from(
        daemon
            .dp
            .ebpf
            .take_map(names::EVENTS)
            .context("events map")?,
    )?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(&mut daemon, ring))?;

    daemon.notify.send("STOPPING=1");
    if let Err(e) = daemon.events.flush() {
        log::warn!("writing the deny aggregate: {e:#}");
    }
    let paths = daemon.paths.clone();
    drop(daemon);
    match status::collect(&paths) {
        Ok(s) => status::print_table(&s),
        Err(e) => log::warn!("reading final counters: {e:#}"),
    }
    match on_exit {
        OnExit::Detach => {
            let done = loader::detach_all(&paths)?;
            log::info!(
                "stopped: detached {} links, removed {} maps",
                done.links,
                done.maps
            );
        }
        OnExit::Keep => {
            log::info!("stopped: the last policy stays enforced (`portcullis detach` removes it)")
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Serves until SIGINT or SIGTERM: deny events, SIGHUP reloads, watchdog pings.
async fn serve(daemon: &mut Daemon, ring: RingBuf<aya::maps::MapData>) -> anyhow::Result<()> {
    // SAFETY: the ring buffer owns its map fd, which stays open and unchanged for as
    // long as the `AsyncFd` owns the ring buffer.
    let mut events = unsafe { AsyncFd::register(ring) }
        .map_err(|e| anyhow::anyhow!("polling the event ring buffer: {e}"))?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut watchdog = tokio::time::interval(
        daemon
            .notify
            .watchdog_interval()
            .unwrap_or(Duration::from_secs(3600)),
    );
    let watchdog_on = daemon.notify.watchdog_interval().is_some();
    let mut flush = tokio::time::interval(Duration::from_secs(2));
    if let Some(addr) = daemon.metrics {
        let paths = daemon.paths.clone();
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(addr, paths).await {
                log::error!("metrics endpoint {addr}: {e:#}");
            }
        });
        log::info!("serving metrics at http://{addr}/metrics");
    }
    // A scope's cgroup can be removed and created again under a running agent.
    let mut scope_check = tokio::time::interval(SCOPE_CHECK_INTERVAL);
    loop {
        tokio::select! {
            guard = events.readable_mut() => {
                let mut guard = guard?;
                let ring = guard.get_inner_mut();
                while let Some(item) = ring.next() {
                    if item.len() >= size_of::<DenyEvent>() {
                        // SAFETY: the programs write whole `DenyEvent`s; the length was checked.
                        let e: DenyEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                        daemon.events.record(&e);
                    }
                }
                guard.clear_ready();
            }
            _ = sighup.recv() => daemon.reload(),
            _ = watchdog.tick(), if watchdog_on => daemon.notify.send("WATCHDOG=1"),
            _ = flush.tick() => {
                if let Err(e) = daemon.events.flush() {
                    log::warn!("writing the deny aggregate: {e:#}");
                }
            }
            _ = scope_check.tick() => daemon.reattach_recreated_scopes(),
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    Ok(())
}
