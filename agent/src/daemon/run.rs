//! `portcullis run`: compile, load, attach, then serve until stopped: deny events to
//! the log, SIGHUP to reload, SIGINT/SIGTERM to stop (final counters printed, programs
//! detached or kept).
//!
//! Order matters and is the point of this file: the whole policy is compiled and every
//! scope resolved before the kernel is touched; the policy is written into the maps and
//! made live before any program is attached; new links are attached before the links of
//! an earlier run are removed. At no instant is a scope unprotected or half-configured.

use std::{collections::BTreeMap, fs, net::SocketAddr, process::ExitCode, time::Duration};

use anyhow::bail;
use portcullis_common::config::MODE_ENFORCE;
use tokio::signal::unix::{SignalKind, signal};

use super::{
    install::install,
    notify::Notifier,
    settings::{OnExit, Overrides, Settings, resolve},
    watch::{self, ScopeWatch},
};
use crate::{
    datapath::{
        attach::{self, Attachments, Scope},
        events::EventRing,
        evidence::EvidenceMap,
        fault::{self, Step},
        loader::Datapath,
        names,
        paths::PathArgs,
        probe::{KernelFeatures, Needs},
        state::{self, InstallLock, ReloadOutcome, State, unix_now},
    },
    model::{Mode, ScopeTarget},
    observe::events::EventLog,
    policy::Policy,
    systemd::{self, protection, units},
};

/// How often expired learned addresses are swept (`datapath::names::sweep`): an expired
/// entry opens nothing, so this only bounds how long it takes room in the LRU map.
const NAMES_SWEEP: Duration = Duration::from_secs(10);

/// How often each unit in scope is checked for protection (its live cgroup asked of the
/// kernel, its effective ExecCondition= of systemd): a unit found unprotected is logged
/// as an error and, while it runs, attached again at once.
const UNIT_CHECK: Duration = Duration::from_secs(5);

/// Deny log lines per second before the log summarises ("suppressed N lines"); the
/// kernel's own per-CPU limit (`events_per_sec`) comes first.
const LOG_LINES_PER_SEC: u32 = 20;

/// The running agent.
struct Daemon {
    args: Overrides,
    paths: PathArgs,
    dp: Datapath,
    state: State,
    attached: Attachments,
    notify: Notifier,
    /// Deny events: log lines (rate-limited) and the aggregate `report` reads.
    events: EventLog,
    /// The kernel's per-flow evidence of would-denied flows, folded into the aggregate
    /// at each flush (`None`: could not be opened, logged once at start).
    evidence: Option<EvidenceMap>,
    /// Where metrics are served (fixed at start: a reload does not move the listener).
    metrics: Option<SocketAddr>,
    reloads: u64,
    /// What the kernel offers, probed once at start: a reload checks its policy against
    /// it without probing again (the socket-storage probe alone waits out an RCU grace
    /// period, ~25 ms, which was most of a reload's time), and the kernel cannot gain
    /// or lose a program type, map type or helper under a running agent.
    kernel: KernelFeatures,
    /// The last reason logged per unprotected unit, so that a unit that stays
    /// unprotected is logged once, not every check.
    unprotected: BTreeMap<String, String>,
    _lock: fs::File,
}

/// Takes the single-instance lock of a state directory (released by the kernel when the
/// process dies, even by kill -9).
fn lock(paths: &PathArgs) -> anyhow::Result<fs::File> {
    match state::lock_file(&paths.state_dir, "lock", false)? {
        Some(file) => Ok(file),
        None => bail!(
            "another portcullis agent is running with state directory {} (see `portcullis status`)",
            paths.state_dir.display()
        ),
    }
}

/// Resolves every scope of the settings, before anything is attached. A template
/// (`postfix@.service`) stands for each of its loaded instances: the running ones are
/// attached now, every later start by the template's drop-in.
fn resolve_scopes(settings: &Settings) -> anyhow::Result<Vec<Scope>> {
    let mut scopes = Vec::new();
    for target in &settings.scopes {
        match target {
            ScopeTarget::Unit(name) if units::is_template(name) => {
                for instance in units::instances(name) {
                    scopes.push(attach::resolve_scope(&ScopeTarget::Unit(instance))?);
                }
            }
            _ => scopes.push(attach::resolve_scope(target)?),
        }
    }
    Ok(scopes)
}

/// Writes the drop-ins of the unit scopes and removes those of units that left (their
/// links go in [`Attachments::reconcile`], and in [`remove_template_links`] for the
/// instances of a template that left). Returns the units that left.
fn sync_drop_ins(settings: &Settings, paths: &PathArgs) -> anyhow::Result<Vec<String>> {
    let units: Vec<String> = settings
        .scopes
        .iter()
        .filter_map(|s| match s {
            ScopeTarget::Unit(name) => Some(name.clone()),
            _ => None,
        })
        .collect();
    systemd::sync_drop_ins(&units, &paths.pin_dir(), settings.unpinned_start)
}

/// Removes the links of every instance of the templates that left the scope: instances
/// started since the agent attached were attached by the drop-in, not by the agent.
fn remove_template_links(gone: &[String], paths: &PathArgs) -> anyhow::Result<()> {
    for template in gone.iter().filter(|u| units::is_template(u)) {
        for instance in units::instances(template) {
            attach::remove_links(&attach::unit_links(paths, &instance))?;
        }
    }
    Ok(())
}

/// Refuses (exit 3 at start, a rejected reload later) a policy the running kernel
/// cannot carry as written, before anything touches the kernel: never enforced with
/// less than it says.
fn within_kernel(
    kernel: &KernelFeatures,
    policy: &Policy,
    settings: &Settings,
    config: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    kernel.require(&Needs::of(policy, &settings.xdp, &settings.scopes), config)?;
    Ok(())
}

/// The tag of the link pins a policy version attaches.
fn tag(state: &State) -> String {
    format!("v{}", state.policy_version)
}

impl Daemon {
    /// Compiles, loads, installs and attaches; on success the scopes are enforced.
    fn start(mut args: Overrides) -> anyhow::Result<Self> {
        let (policy, settings, config) = resolve(&mut args)?;
        let kernel = KernelFeatures::probe();
        within_kernel(&kernel, &policy, &settings, config.as_deref())?;
        let scopes = resolve_scopes(&settings)?;
        let paths = args.paths.clone();
        let lock = lock(&paths)?;
        let old_links = attach::pinned_links(&paths);
        let previous = if old_links.is_empty() {
            None
        } else {
            State::read(&paths.state_file()).ok()
        };
        let mut attached = Attachments::default();
        let install_lock = InstallLock::take(&paths.state_dir)?;
        let result = Datapath::load(&paths, !settings.xdp.is_empty()).and_then(|mut dp| {
            let state = install(&mut dp, &policy, &settings, previous.as_ref())?;
            // Drop-ins before the running instances: a unit restarting in between is
            // attached by its drop-in (the programs are pinned by now).
            let gone = sync_drop_ins(&settings, &paths)?;
            attached.reconcile(&mut dp, &scopes, &settings.xdp, &tag(&state))?;
            remove_template_links(&gone, &paths)?;
            // Only now that the new links enforce may those of an earlier run go.
            let stale: Vec<_> = old_links
                .iter()
                .filter(|p| !attached.pins().any(|o| o == *p))
                .cloned()
                .collect();
            if !stale.is_empty() {
                log::info!(
                    "took over from an earlier agent: removing its {} links",
                    stale.len()
                );
            }
            attach::remove_links(&stale)?;
            Ok((dp, state))
        });
        let (dp, mut state) = match result {
            Ok(v) => v,
            Err(e) => {
                // Nothing of an earlier run was enforcing: leave nothing half-made behind.
                if old_links.is_empty() {
                    let _ = attach::detach_all(&paths);
                }
                return Err(e);
            }
        };
        state.config = config;
        state.write(&paths.state_file())?;
        drop(install_lock);
        let events = EventLog::new(&paths, LOG_LINES_PER_SEC);
        let evidence = EvidenceMap::open(&paths)
            .inspect_err(|e| log::warn!("no per-flow evidence for the report: {e:#}"))
            .ok();
        Ok(Self {
            args,
            paths,
            dp,
            state,
            attached,
            notify: Notifier::from_env(),
            events,
            evidence,
            metrics: settings.metrics,
            reloads: 0,
            kernel,
            unprotected: BTreeMap::new(),
            _lock: lock,
        })
    }

    /// Folds the flow evidence and writes the deny aggregate.
    fn flush(&mut self) {
        if let Err(e) = self.events.flush(self.evidence.as_mut()) {
            log::warn!("writing the deny aggregate: {e:#}");
        }
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
            ScopeTarget::join(&self.state.scopes, ", ")
        )
    }

    /// Reloads the configuration: compiled and validated in full first; a bad one is
    /// rejected and the running policy stays untouched.
    fn reload(&mut self) {
        self.notify.reloading();
        self.reloads += 1;
        let lock = match InstallLock::take(&self.paths.state_dir) {
            Ok(l) => Some(l),
            Err(e) => {
                log::error!("reload without the install lock: {e:#}");
                None
            }
        };
        fault::arm(true);
        let result = self.try_reload();
        fault::arm(false);
        // `portcullis mode` may have switched the mode since the last install: the live
        // configuration is the truth the state file must tell.
        if let Ok(c) = self.dp.config() {
            self.state.mode = if c.mode == MODE_ENFORCE {
                Mode::Enforce
            } else {
                Mode::Audit
            };
        }
        let error = result.err().map(|e| format!("{e:#}"));
        let failed_before = self.state.last_reload.as_ref().map_or(0, |r| r.failures);
        self.state.last_reload = Some(ReloadOutcome {
            attempt: self.reloads,
            ok: error.is_none(),
            error: error.clone(),
            at: unix_now(),
            failures: failed_before + u64::from(error.is_some()),
        });
        if let Err(e) = self.state.write(&self.paths.state_file()) {
            log::error!("writing the state file: {e:#}");
        }
        drop(lock);
        // Logged once the state file tells it: whoever reads the line sees it in `status`.
        match error {
            None => log::info!("reloaded: {}", self.status_line()),
            Some(e) => log::error!(
                "reload rejected, policy v{} stays: {e}",
                self.state.policy_version
            ),
        }
        self.notify
            .send(&format!("READY=1\nSTATUS={}", self.status_line()));
    }

    fn try_reload(&mut self) -> anyhow::Result<()> {
        let (policy, settings, config) = resolve(&mut self.args)?;
        within_kernel(&self.kernel, &policy, &settings, config.as_deref())?;
        let scopes = resolve_scopes(&settings)?;
        let mut state = install(&mut self.dp, &policy, &settings, Some(&self.state))?;
        state.config = config;
        let gone = sync_drop_ins(&settings, &self.paths)?;
        self.attached
            .reconcile(&mut self.dp, &scopes, &settings.xdp, &tag(&state))?;
        remove_template_links(&gone, &self.paths)?;
        fault::point(Step::Attached);
        state.last_reload = self.state.last_reload.clone();
        self.state = state;
        Ok(())
    }
}

impl Daemon {
    /// Measures every unit in scope ([`protection::units`]); logs each one found
    /// unprotected (once per reason) and attaches the programs again to a running one
    /// that lacks them. A unit whose ExecCondition= was reset stays an error until the
    /// admin removes the override: its next start would run unprotected.
    fn check_units(&mut self) {
        let tag = tag(&self.state);
        let mut now = BTreeMap::new();
        for unit in protection::units(&self.paths, &self.state.scopes) {
            let Some(reason) = unit.reason.clone() else {
                if self.unprotected.contains_key(&unit.unit) {
                    log::info!("scope {}: {} is protected again", unit.scope, unit.unit);
                }
                continue;
            };
            if self.unprotected.get(&unit.unit) != Some(&reason) {
                log::error!(
                    "scope {}: {} is not protected: {reason}",
                    unit.scope,
                    unit.unit
                );
            }
            now.insert(unit.unit.clone(), reason);
            let (true, Some(cgroup)) = (unit.running && unit.programs_attached < 4, &unit.cgroup)
            else {
                continue;
            };
            let Ok(root) = crate::datapath::paths::cgroup2_mount() else {
                continue;
            };
            let scope = Scope {
                target: ScopeTarget::Unit(unit.unit.clone()),
                path: root.join(cgroup),
            };
            match self.dp.attach(&scope, &tag) {
                Ok(_) => log::warn!(
                    "scope {}: attached the programs to {} ({}) again",
                    unit.scope,
                    unit.unit,
                    scope.path.display()
                ),
                Err(e) => log::error!("scope {}: re-attaching {}: {e:#}", unit.scope, unit.unit),
            }
        }
        self.unprotected = now;
    }
}

/// Runs the agent until SIGINT or SIGTERM.
pub fn run(args: Overrides) -> anyhow::Result<ExitCode> {
    // The packaged config before a product was chosen: wait, enforcing nothing.
    if let Some(config) = super::settings::config_path(&args)
        && super::waiting::names_no_product(&config)
    {
        return super::waiting::wait(&args.paths, &config);
    }
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
        ScopeTarget::join(&daemon.state.scopes, ",")
    );
    daemon
        .notify
        .send(&format!("READY=1\nSTATUS={}", daemon.status_line()));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(&mut daemon))?;

    daemon.notify.send("STOPPING=1");
    daemon.flush();
    // The successor counts the flows of the downtime from what this agent folded.
    daemon.events.save_flows(&daemon.paths);
    let paths = daemon.paths.clone();
    drop(daemon);
    match crate::observe::status::collect(&paths) {
        Ok(s) => crate::observe::table::print_table(&s),
        Err(e) => log::warn!("reading final counters: {e:#}"),
    }
    match on_exit {
        OnExit::Detach => {
            let done = attach::detach_all(&paths)?;
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
async fn serve(daemon: &mut Daemon) -> anyhow::Result<()> {
    let mut ring = EventRing::take(&mut daemon.dp)?;
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
    let mut names_sweep = tokio::time::interval(NAMES_SWEEP);
    if let Some(addr) = daemon.metrics {
        let paths = daemon.paths.clone();
        tokio::spawn(async move {
            if let Err(e) = super::http::serve(addr, paths).await {
                log::error!("metrics endpoint {addr}: {e:#}");
            }
        });
    }
    // A scope's cgroup can be removed and created again under a running agent: inotify
    // on its parent says when (see `watch`), with a slow check as the safety net.
    let mut scope_watch = ScopeWatch::new(daemon.attached.scopes.iter().map(|(s, _)| s));
    let mut scope_check = tokio::time::interval(watch::SAFETY_NET);
    let mut unit_check = tokio::time::interval(UNIT_CHECK);
    loop {
        tokio::select! {
            batch = ring.next_batch(|e| daemon.events.record(e)) => batch?,
            _ = sighup.recv() => {
                daemon.reload();
                scope_watch = ScopeWatch::new(daemon.attached.scopes.iter().map(|(s, _)| s));
            }
            () = scope_watch.changed() => {
                let tag = tag(&daemon.state);
                daemon.attached.reattach_recreated(&mut daemon.dp, &tag);
            }
            _ = watchdog.tick(), if watchdog_on => daemon.notify.send("WATCHDOG=1"),
            _ = flush.tick() => daemon.flush(),
            _ = names_sweep.tick() => {
                if let Err(e) = names::sweep(&daemon.paths) {
                    log::warn!("sweeping expired host name addresses: {e:#}");
                }
            }
            _ = scope_check.tick() => {
                let tag = tag(&daemon.state);
                daemon.attached.reattach_recreated(&mut daemon.dp, &tag);
            }
            _ = unit_check.tick() => daemon.check_units(),
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    Ok(())
}
