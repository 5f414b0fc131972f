//! The daemon's settings, resolved once into typed values before anything touches the
//! kernel: the site config (or a built-in product) compiled into a policy, then the
//! command line's overrides applied. A reload resolves them again the same way.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use crate::{
    config::{
        resolvers::{self, Resolver},
        site::DEFAULT_CONFIG,
    },
    datapath::paths::PathArgs,
    model::{Mode, ScopeTarget, UnpinnedStart},
    policy::{Policy, compiler},
    systemd::units,
};

/// The product of the built-in default policy.
pub const DEFAULT_PRODUCT: &str = "xeams";

/// The command line of `portcullis run` (flattened into its clap arguments); kept by
/// the daemon, since a reload resolves the config again with the same overrides.
#[derive(Debug, clap::Args)]
pub struct Overrides {
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
    pub mode: Option<Mode>,
    /// Where to enforce: "host" (every process), a systemd service (postfix@-.service:
    /// enforced on every start, before its first command runs; a template such as
    /// postfix@.service covers every instance), or a cgroup path under the cgroup v2
    /// mount (system.slice/xeams.service). Repeatable. Overrides the config.
    #[arg(long = "scope", value_name = "host|UNIT|CGROUP", value_parser = ScopeTarget::parse_arg)]
    pub scopes: Vec<ScopeTarget>,
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

/// What `run` does with the programs when it stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnExit {
    /// Detach everything: enforcement ends with the agent (interactive use).
    Detach,
    /// Leave the pinned programs enforcing the last policy (the systemd unit): a
    /// restart or upgrade takes over without a gap; `portcullis detach` removes them.
    Keep,
}

/// Everything `run` needs besides the policy.
pub struct Settings {
    /// Scopes to attach to.
    pub scopes: Vec<ScopeTarget>,
    /// Events per second per CPU.
    pub events_per_sec: u32,
    /// Interfaces to attach the XDP program to.
    pub xdp: Vec<String>,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// Seconds a learned address outlives its TTL (the site's `dns_grace`).
    pub dns_grace: u32,
    /// The resolvers whose answers the datapath learns from.
    pub resolvers: Vec<Resolver>,
    /// What a unit scope's start does without pinned programs (the site's
    /// `unpinned_start`, written into the drop-ins).
    pub unpinned_start: UnpinnedStart,
}

/// The site config the agent runs: `--config`, else the default one when it exists and
/// no `--product` is given; None: the built-in product.
pub fn config_path(args: &Overrides) -> Option<PathBuf> {
    let default_config = PathBuf::from(DEFAULT_CONFIG);
    match (&args.config, &args.product) {
        (Some(c), _) => Some(c.clone()),
        (None, None) if default_config.is_file() => Some(default_config),
        _ => None,
    }
}

/// Compiles the policy and settles the settings, before anything touches the kernel.
pub fn resolve(args: &mut Overrides) -> anyhow::Result<(Policy, Settings, Option<PathBuf>)> {
    let config = config_path(args);
    let mut xdp_scope_only = false;
    let (mut policy, mut settings) = if let Some(path) = &config {
        let mut site = crate::config::load_site(path)?;
        // The listener the agent serves is the one the base set keeps open.
        if args.metrics_listen.is_some() {
            site.metrics.listen = args.metrics_listen;
        }
        xdp_scope_only = site.xdp_scope_only;
        let policy = compiler::compile_site(&site, Some(path))?;
        if args.paths.pin_dir.is_none() {
            args.paths.pin_dir = Some(site.pin_dir.clone());
        }
        let settings = Settings {
            scopes: site.scope.clone(),
            events_per_sec: site.events_per_sec,
            xdp: site.xdp.clone(),
            metrics: site.metrics.listen,
            dns_grace: site.dns_grace,
            resolvers: resolvers::trusted(Some(&site)),
            unpinned_start: site.unpinned_start,
        };
        (policy, settings)
    } else {
        let product = args.product.as_deref().unwrap_or(DEFAULT_PRODUCT);
        let policy = compiler::compile_product(
            product,
            &args.features,
            args.all_features,
            Some(Path::new("/")),
        )?;
        (
            policy,
            Settings {
                scopes: vec![ScopeTarget::Host],
                events_per_sec: 100,
                xdp: Vec::new(),
                metrics: None,
                dns_grace: crate::config::Site::default_for(product).dns_grace,
                resolvers: resolvers::trusted(None),
                unpinned_start: UnpinnedStart::default(),
            },
        )
    };
    if let Some(m) = args.mode {
        policy.mode = m;
    }
    if !args.scopes.is_empty() {
        settings.scopes = args.scopes.clone();
    }
    if settings.scopes.is_empty() {
        settings.scopes = vec![ScopeTarget::Host];
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
    // The config refuses the combination itself (with its line); this catches it when
    // the command line makes it.
    if !settings.xdp.is_empty() && settings.scopes != [ScopeTarget::Host] && !xdp_scope_only {
        return Err(crate::config::site::scope_xdp_error()
            .hint("drop --xdp or --scope, or set xdp_scope_only = true in the site config to accept that only the scope's flows get replies through xdp")
            .into());
    }
    // What the unit scopes name, asked of systemd: a unit that runs nothing, or that
    // does not exist, is refused here (exit code 3), before anything is attached.
    let root = crate::datapath::paths::cgroup2_mount().ok();
    let checked = units::check_scopes(&settings.scopes, root.as_deref(), config.as_deref())?;
    for warning in checked.warnings {
        log::warn!("{}", warning.trim_start_matches("warning: "));
    }
    Ok((policy, settings, config))
}
