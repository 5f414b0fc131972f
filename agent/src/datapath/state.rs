//! The agent's state file: what `status`, `report` and a restarted agent need to know
//! about the running policy that the maps do not say (rule ids behind the indices,
//! scope, product, when the policy was loaded). Written atomically (temp file + rename).

use std::{fs, path::Path};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use portcullis_common::names;

use crate::{
    config::resolvers::Resolver,
    model::ScopeTarget,
    policy::{LoopbackMode, Mode, Policy, image::RuleIndex},
};

/// Version of the state file format.
pub const FORMAT: u32 = 1;

/// One rule of the running policy.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RuleState {
    /// Stable rule id.
    pub id: String,
    /// Kernel counter index.
    pub index: u16,
    /// in | out.
    pub direction: String,
    /// "tcp", "udp" or "tcp,udp".
    pub protocol: String,
    /// Ports as written ("25", "1024-65535", "80,443").
    pub ports: String,
    /// The vendor's reason.
    pub why: String,
}

/// The state file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct State {
    /// [`FORMAT`].
    pub format: u32,
    /// Profile slug.
    pub product: String,
    /// audit | enforce.
    pub mode: Mode,
    /// exempt | enforce.
    pub loopback: LoopbackMode,
    /// Scopes as configured.
    pub scopes: Vec<ScopeTarget>,
    /// The live policy generation (0 or 1).
    pub generation: u32,
    /// Incremented by every policy install (start and reload).
    pub policy_version: u64,
    /// [`Policy::digest`] of the live policy (empty in state files of older agents).
    #[serde(default)]
    pub policy_digest: String,
    /// Unix time (seconds) of the last install.
    pub loaded_at: u64,
    /// The agent's pid.
    pub pid: u32,
    /// Rules of the live policy.
    pub rules: Vec<RuleState>,
    /// The site config the policy came from (None for `--product`): what a reload reads.
    #[serde(default)]
    pub config: Option<std::path::PathBuf>,
    /// Outcome of the last reload, if there was one.
    #[serde(default)]
    pub last_reload: Option<ReloadOutcome>,
    /// Host names of the live policy and the DNS settings (empty in state files of
    /// older agents).
    #[serde(default)]
    pub names: NamesState,
}

/// What `status` needs to show the addresses learned from DNS: the pattern behind each
/// hash the kernel stores, the groups it is in, and the settings in force.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamesState {
    /// The site's `dns_grace`, seconds.
    pub dns_grace_secs: u32,
    /// The resolvers answers are learned from.
    pub trusted_resolvers: Vec<Resolver>,
    /// Every name and wildcard of the policy's peer groups.
    pub patterns: Vec<PatternState>,
}

/// One name pattern of the policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatternState {
    /// As written (lowercase): `repo.example.com` or `*.example.com`.
    pub pattern: String,
    /// `names::NameKey::hash`.
    pub hash: u64,
    /// `names::KIND_*`.
    pub kind: u8,
    /// The peer groups that list it.
    pub groups: Vec<String>,
}

impl NamesState {
    /// The names of `policy`, with the DNS settings.
    /// Hashes are under `key`, the datapath's.
    pub fn new(
        policy: &Policy,
        dns_grace_secs: u32,
        trusted_resolvers: Vec<Resolver>,
        key: &names::HashKey,
    ) -> Self {
        let mut by_pattern: std::collections::BTreeMap<String, PatternState> = Default::default();
        for set in &policy.peer_sets {
            for host in &set.names {
                let p = by_pattern
                    .entry(host.to_string())
                    .or_insert_with(|| PatternState {
                        pattern: host.to_string(),
                        hash: names::name_hash(key, &host.name),
                        kind: if host.wildcard {
                            names::KIND_WILDCARD
                        } else {
                            names::KIND_EXACT
                        },
                        groups: Vec::new(),
                    });
                if !p.groups.contains(&set.name) {
                    p.groups.push(set.name.clone());
                }
            }
        }
        Self {
            dns_grace_secs,
            trusted_resolvers,
            patterns: by_pattern.into_values().collect(),
        }
    }

    /// The pattern a learned slot stands for, if the live policy has it.
    pub fn pattern(&self, hash: u64, kind: u8) -> Option<&PatternState> {
        self.patterns
            .iter()
            .find(|p| p.hash == hash && p.kind == kind)
    }
}

/// What became of a reload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadOutcome {
    /// Monotonic count of reload attempts by this agent.
    pub attempt: u64,
    /// Whether the new policy is live.
    pub ok: bool,
    /// Why it was rejected (the running policy stayed), when it was.
    pub error: Option<String>,
    /// Unix time of the attempt.
    pub at: u64,
    /// Reloads this agent rejected since it started, this one included
    /// (`portcullis_reload_failures_total`).
    #[serde(default)]
    pub failures: u64,
}

impl State {
    /// The state for `policy` installed with `index`.
    pub fn new(
        policy: &Policy,
        index: &RuleIndex,
        scopes: &[ScopeTarget],
        generation: u32,
        policy_version: u64,
    ) -> Self {
        let rules = policy
            .rules
            .iter()
            .map(|r| RuleState {
                id: r.id.clone(),
                index: index.get(&r.id).unwrap_or(0),
                direction: r.direction.to_string(),
                protocol: r
                    .protocols
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                ports: r
                    .ports
                    .iter()
                    .map(|(a, b)| {
                        if a == b {
                            a.to_string()
                        } else {
                            format!("{a}-{b}")
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(","),
                why: r.why.clone(),
            })
            .collect();
        let loaded_at = unix_now();
        Self {
            format: FORMAT,
            product: policy.product.clone(),
            mode: policy.mode,
            loopback: policy.loopback,
            scopes: scopes.to_vec(),
            generation,
            policy_version,
            policy_digest: policy.digest(),
            loaded_at,
            pid: std::process::id(),
            rules,
            config: None,
            last_reload: None,
            names: NamesState::default(),
        }
    }

    /// The rule index this state records.
    pub fn rule_index(&self) -> RuleIndex {
        RuleIndex::from_pairs(self.rules.iter().map(|r| (r.id.clone(), r.index)))
    }

    /// Reads the state file.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = fs::read_to_string(path).with_context(|| {
            format!(
                "reading {} (is portcullis running? see `portcullis run`)",
                path.display()
            )
        })?;
        let state: State =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        anyhow::ensure!(
            state.format == FORMAT,
            "{} has format {}, this agent reads {FORMAT}",
            path.display(),
            state.format
        );
        Ok(state)
    }

    /// Writes the state file atomically.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        write_json_atomically(path, self)
    }
}

/// Writes `value` as JSON to `path` through a temporary file and a rename, so a reader
/// (or an agent restarted after a crash) sees the old file or the new one, never half.
pub fn write_json_atomically(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    let dir = path.parent().context("the file has no directory")?;
    fs::create_dir_all(dir).with_context(|| format!("creating \"{}\"", dir.display()))?;
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(value)?)
        .with_context(|| format!("writing \"{}\"", tmp.display()))?;
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming \"{}\" to \"{}\"", tmp.display(), path.display()))?;
    Ok(())
}

/// The lock that serialises every writer of the live policy: the agent holds it while
/// it installs a policy and writes the state file (start and reload), `portcullis mode`
/// while it rewrites the configuration map and the state file. Without it, `mode` could
/// read the configuration, let a reload flip the generation, then write the old
/// generation back with the new mode: an old policy live again, and a state file that
/// says otherwise. A separate file from the agent's single-instance lock, which the agent
/// holds for its whole life. Released when the file is dropped or the holder dies.
pub struct InstallLock {
    /// Held open for the lock's lifetime; closing it releases the lock.
    _file: fs::File,
}

impl InstallLock {
    /// Waits for the lock of the state directory `dir`.
    pub fn take(dir: &Path) -> anyhow::Result<Self> {
        let file =
            lock_file(dir, "install.lock", true)?.context("a waiting lock is always taken")?;
        Ok(Self { _file: file })
    }
}

/// Opens `dir/name` (creating both) and takes an exclusive flock on it, released when
/// the file is closed or its holder dies, even by kill -9. With `wait`, waits for the
/// holder; without, returns `None` at once when another process holds it.
pub fn lock_file(dir: &Path, name: &str, wait: bool) -> anyhow::Result<Option<fs::File>> {
    use std::os::fd::AsRawFd as _;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(name);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let op = if wait {
        libc::LOCK_EX
    } else {
        libc::LOCK_EX | libc::LOCK_NB
    };
    // SAFETY: flock on a file descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), op) } != 0 {
        let error = std::io::Error::last_os_error();
        if !wait && error.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Ok(None);
        }
        return Err(error).with_context(|| format!("locking {}", path.display()));
    }
    Ok(Some(file))
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
