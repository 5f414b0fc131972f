//! Attaching and detaching: the four cgroup programs on a scope's cgroup, through links
//! pinned as `links/<cgroup inode>-<program>-<tag>` so that they outlive the agent;
//! [`Attachments`] keeps what one agent attached and moves it to a new set of scopes and
//! interfaces (start, reload and a re-created cgroup all go through it); `detach_all` is
//! the way out.
//!
//! A unit scope's links are tagged `unit:<name>` (see [`unit_tag`]), whoever attached
//! them: the agent (the instance running when it starts) or `attach --unit` in the
//! unit's drop-in (every new start, from the pinned programs): [`attach_unit_start`].

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use aya::programs::{
    CgroupAttachMode, CgroupSkb, CgroupSockAddr, links::FdLink, links::PinnedLink,
};

use super::{
    loader::{CGROUP_PROGRAMS, Datapath, Hook, program},
    paths::{PathArgs, cgroup2_mount},
    xdp,
};
use crate::{model::ScopeTarget, systemd};

/// A cgroup the programs attach to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    /// As configured.
    pub target: ScopeTarget,
    /// Absolute path of the cgroup directory.
    pub path: PathBuf,
}

impl Scope {
    /// The tag of this scope's link pins: a unit's links carry its name, so that
    /// `attach --unit` and the agent replace each other's and a unit's links can be found
    /// when it leaves the scope; other scopes carry the policy version's `tag`.
    fn tag(&self, tag: &str) -> String {
        match &self.target {
            ScopeTarget::Unit(name) => unit_tag(name),
            _ => tag.to_owned(),
        }
    }
}

/// `unit:<name>` with each `.` written `%2e`: bpffs refuses names with a dot (EPERM),
/// and unit names never contain `%`, so the escape is unambiguous.
fn unit_tag(unit: &str) -> String {
    format!("unit:{}", unit.replace('.', "%2e"))
}

/// Resolves `host` (the cgroup v2 root: every process), a cgroup path relative to the
/// cgroup v2 mount (an absolute path already under the mount is accepted too), or a
/// systemd unit: the cgroup it runs in now, or, when it is not running, the one it will
/// get (`system.slice/<unit>`; its drop-in attaches whatever cgroup it does get). A
/// cgroup path that does not exist yet is accepted (`check` and `run` warn, naming the
/// nearest unit): [`Attachments`] attaches it when it appears.
pub fn resolve_scope(target: &ScopeTarget) -> anyhow::Result<Scope> {
    let root = cgroup2_mount()?;
    let path = match target {
        ScopeTarget::Host => root.clone(),
        ScopeTarget::Cgroup(p) if p.is_absolute() && p.starts_with(&root) => p.clone(),
        ScopeTarget::Cgroup(p) if p.is_absolute() => bail!(
            "scope \"{target}\": {} is not under the cgroup v2 mount {} (hint: use \"host\", a path under {}, or a unit such as \"xeams.service\")",
            p.display(),
            root.display(),
            root.display()
        ),
        ScopeTarget::Cgroup(p) => root.join(p),
        ScopeTarget::Unit(name) => {
            let cgroup = systemd::control_group(name)
                .unwrap_or_else(|| Path::new("system.slice").join(name));
            root.join(cgroup)
        }
    };
    Ok(Scope {
        target: target.clone(),
        path,
    })
}

/// On kernels with BPF links (5.7+) aya attaches cgroup programs with `bpf_link_create`,
/// which rejects every flag (a cgroup link always coexists with other programs), so the
/// mode must be the one that passes 0. Coexisting is what lets a restart attach the new
/// programs before the old ones go.
const ATTACH_MODE: CgroupAttachMode = CgroupAttachMode::Single;

/// Attaches a program to a cgroup and returns its link.
fn attach_program(
    prog: &mut aya::programs::Program,
    hook: Hook,
    cgroup: &fs::File,
) -> anyhow::Result<FdLink> {
    Ok(match hook {
        Hook::Skb(kind) => {
            let prog: &mut CgroupSkb = prog.try_into()?;
            let id = prog.attach(cgroup, kind, ATTACH_MODE)?;
            FdLink::try_from(prog.take_link(id)?)?
        }
        Hook::SockAddr(_) => {
            let prog: &mut CgroupSockAddr = prog.try_into()?;
            let id = prog.attach(cgroup, ATTACH_MODE)?;
            FdLink::try_from(prog.take_link(id)?)?
        }
    })
}

/// Attaches the four programs (`prog` gives each, by name) to the cgroup at `path` and
/// pins the links as `links/<cgroup inode>-<program>-<tag>`, replacing pins of the same
/// name only once the new link is attached. Returns the pin paths.
fn attach_cgroup(
    links: &Path,
    path: &Path,
    tag: &str,
    mut prog: impl FnMut(&str, Hook, &fs::File) -> anyhow::Result<FdLink>,
) -> anyhow::Result<Vec<PathBuf>> {
    let cgroup =
        fs::File::open(path).with_context(|| format!("opening cgroup {}", path.display()))?;
    let ino = cgroup.metadata()?.ino();
    let mut pinned = Vec::new();
    for (name, hook) in CGROUP_PROGRAMS {
        let link = prog(name, hook, &cgroup)
            .with_context(|| format!("attaching {name} to {}", path.display()))?;
        let pin = links.join(format!("{ino}-{name}-{tag}"));
        let _ = fs::remove_file(&pin);
        link.pin(&pin)
            .with_context(|| format!("pinning link {}", pin.display()))?;
        pinned.push(pin);
    }
    Ok(pinned)
}

impl Datapath {
    /// Attaches the four programs to a scope's cgroup and pins the links as
    /// `links/<cgroup inode>-<program>-<tag>` (a unit's: `unit:<name>`). Returns the pin
    /// paths.
    pub fn attach(&mut self, scope: &Scope, tag: &str) -> anyhow::Result<Vec<PathBuf>> {
        let links = self.paths().links();
        let ebpf = &mut self.ebpf;
        attach_cgroup(
            &links,
            &scope.path,
            &scope.tag(tag),
            |name, hook, cgroup| attach_program(program(ebpf, name)?, hook, cgroup),
        )
    }
}

/// `portcullis attach --unit NAME`, run by the unit's drop-in as `ExecStartPre=+` on
/// every start: attaches the pinned programs to the cgroup this process runs in (the
/// unit's new one) and removes the unit's links to its earlier cgroups. Fails, and with
/// it the start, when the programs are not pinned or this is not the unit's cgroup.
pub fn attach_unit_start(paths: &PathArgs, unit: &str) -> anyhow::Result<(PathBuf, usize)> {
    let own = fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
    let relative = own
        .lines()
        .find_map(|l| l.strip_prefix("0::/"))
        .context("this process is in no cgroup v2 cgroup (/proc/self/cgroup has no 0:: line)")?;
    let mut cgroup = cgroup2_mount()?.join(relative);
    // Units with Delegate= run their control processes in a ".control" child.
    if cgroup.file_name().is_some_and(|n| n == ".control") {
        cgroup.pop();
    }
    if cgroup.file_name().and_then(|n| n.to_str()) != Some(unit) {
        bail!(
            "attach --unit {unit}: this process runs in cgroup {}, not in the unit's (hint: it is meant to run as ExecStartPre=+ of {unit}, from the drop-in portcullis writes)",
            cgroup.display()
        );
    }
    if let Some(pin) = missing_program(paths) {
        bail!(
            "attach --unit {unit}: program {} is not pinned, so {unit} would run unprotected and must not start (hint: start portcullis.service first; pins do not survive a reboot)",
            pin.display()
        );
    }
    let tag = unit_tag(unit);
    let pinned = attach_cgroup(&paths.links(), &cgroup, &tag, |name, hook, cgroup| {
        let pin = paths.prog(name);
        let mut prog: aya::programs::Program = match hook {
            Hook::Skb(kind) => {
                CgroupSkb::from_pin(&pin, kind).map(aya::programs::Program::CgroupSkb)
            }
            Hook::SockAddr(kind) => {
                CgroupSockAddr::from_pin(&pin, kind).map(aya::programs::Program::CgroupSockAddr)
            }
        }
        .with_context(|| format!("opening pinned program {}", pin.display()))?;
        attach_program(&mut prog, hook, cgroup)
    })?;
    // Links to the unit's earlier cgroups are dead (the kernel detached them with the
    // cgroup); only their pins are left.
    let stale = unit_links(paths, unit)
        .into_iter()
        .filter(|p| !pinned.contains(p))
        .collect::<Vec<_>>();
    remove_links(&stale)?;
    Ok((cgroup, pinned.len()))
}

/// The first of the four cgroup programs that is not pinned, if any.
pub fn missing_program(paths: &PathArgs) -> Option<PathBuf> {
    CGROUP_PROGRAMS
        .iter()
        .map(|(name, _)| paths.prog(name))
        .find(|pin| !pin.exists())
}

/// Every link pin of a unit scope (see [`Scope::tag`]).
pub fn unit_links(paths: &PathArgs, unit: &str) -> Vec<PathBuf> {
    let suffix = format!("-{}", unit_tag(unit));
    pinned_links(paths)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(&suffix))
        })
        .collect()
}

/// Pinned link files currently under the pin directory.
pub fn pinned_links(paths: &PathArgs) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(paths.links())
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Detaches and unpins the given links.
pub fn remove_links(links: &[PathBuf]) -> anyhow::Result<()> {
    for path in links {
        // Already gone: replaced in place (XDP link update) or removed by a racing detach.
        if !path.exists() {
            continue;
        }
        let link = PinnedLink::from_pin(path)
            .with_context(|| format!("opening pinned link {}", path.display()))?;
        // Unpinning removes the file; dropping the last fd detaches the program.
        drop(
            link.unpin()
                .with_context(|| format!("unpinning {}", path.display()))?,
        );
    }
    Ok(())
}

/// What `detach` removed.
#[derive(Debug, Default, serde::Serialize)]
pub struct Detached {
    /// Link pins removed (each detached a program from a cgroup).
    pub links: usize,
    /// Map pins removed.
    pub maps: usize,
}

/// Detaches every program and removes every pin and the state file.
pub fn detach_all(paths: &PathArgs) -> anyhow::Result<Detached> {
    let mut done = Detached::default();
    let links = pinned_links(paths);
    remove_links(&links)?;
    done.links = links.len();
    if let Ok(dir) = fs::read_dir(paths.maps()) {
        for e in dir.filter_map(Result::ok) {
            fs::remove_file(e.path())
                .with_context(|| format!("removing {}", e.path().display()))?;
            done.maps += 1;
        }
    }
    if let Ok(dir) = fs::read_dir(paths.progs()) {
        for e in dir.filter_map(Result::ok) {
            fs::remove_file(e.path())
                .with_context(|| format!("removing {}", e.path().display()))?;
        }
    }
    for dir in [paths.links(), paths.maps(), paths.progs(), paths.pin_dir()] {
        if dir.exists() {
            fs::remove_dir(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
    }
    let _ = fs::remove_file(paths.state_file());
    Ok(done)
}

/// What one agent attached: each scope with the link pins that attach it, each XDP
/// interface with its link pin. Start, reload and the re-creation of a cgroup all change
/// it through [`Attachments::reconcile`] and [`Attachments::reattach_recreated`], so the
/// order (attach the new before removing the old) is written once.
#[derive(Debug, Default)]
pub struct Attachments {
    /// Attached scopes and their link pins (empty while the cgroup is gone).
    pub scopes: Vec<(Scope, Vec<PathBuf>)>,
    /// Interfaces with the XDP program, and their link pins.
    pub xdp: Vec<(String, PathBuf)>,
}

impl Attachments {
    /// Every link pin this agent holds.
    pub fn pins(&self) -> impl Iterator<Item = &PathBuf> {
        self.scopes
            .iter()
            .flat_map(|(_, p)| p)
            .chain(self.xdp.iter().map(|(_, p)| p))
    }

    /// Moves to `scopes` and `interfaces`: first attaches what is new (links tagged
    /// `tag`), then removes the links of what left. At no instant is a scope that stays
    /// unprotected.
    pub fn reconcile(
        &mut self,
        dp: &mut Datapath,
        scopes: &[Scope],
        interfaces: &[String],
        tag: &str,
    ) -> anyhow::Result<()> {
        for scope in scopes {
            if !self.scopes.iter().any(|(s, _)| s.path == scope.path) {
                // A unit that is not running has no cgroup yet: its drop-in attaches
                // the one it gets when it starts. A cgroup path that does not exist yet
                // is attached when it appears (`reattach_recreated`).
                if !scope.path.join("cgroup.procs").is_file() {
                    log::info!(
                        "scope {}: {} does not exist (yet); enforced from when it does",
                        scope.target,
                        scope.path.display()
                    );
                    self.scopes.push((scope.clone(), Vec::new()));
                    continue;
                }
                let pins = dp.attach(scope, tag)?;
                log::info!("attached to {} ({})", scope.target, scope.path.display());
                self.scopes.push((scope.clone(), pins));
            }
        }
        for iface in interfaces {
            if !self.xdp.iter().any(|(i, _)| i == iface) {
                let (pin, mode) = xdp::attach(dp, iface, tag)?;
                log::info!("attached XDP to {iface} ({mode} mode)");
                self.xdp.push((iface.clone(), pin));
            }
        }
        let (keep, gone): (Vec<_>, Vec<_>) = std::mem::take(&mut self.scopes)
            .into_iter()
            .partition(|(s, _)| scopes.iter().any(|n| n.path == s.path));
        self.scopes = keep;
        for (scope, mut pins) in gone {
            // A unit's starts since the agent attached have links of their own.
            if let ScopeTarget::Unit(name) = &scope.target {
                pins.extend(unit_links(dp.paths(), name));
            }
            remove_links(&pins)?;
            log::info!("detached from {}", scope.target);
        }
        let (keep, gone): (Vec<_>, Vec<_>) = std::mem::take(&mut self.xdp)
            .into_iter()
            .partition(|(i, _)| interfaces.contains(i));
        self.xdp = keep;
        for (iface, pin) in gone {
            remove_links(&[pin])?;
            log::info!("detached XDP from {iface}");
        }
        Ok(())
    }

    /// Re-attaches to scopes whose cgroup was removed and created again.
    ///
    /// Removing a cgroup detaches its programs with it (the kernel frees the cgroup's
    /// links), and a cgroup created again at the same path, e.g. by a unit restart, is a
    /// new cgroup that nothing enforces. Link pins are named after the inode of the
    /// cgroup they attach to, so comparing that with the path's inode now tells which
    /// scopes lost their programs. A missing cgroup's dead links are removed (logged
    /// once); when the path exists again the programs are attached to it.
    ///
    /// Unit scopes are left out: their drop-in attaches each new cgroup before the unit
    /// runs, which this check could only follow.
    pub fn reattach_recreated(&mut self, dp: &mut Datapath, tag: &str) {
        for (scope, pins) in &mut self.scopes {
            if matches!(scope.target, ScopeTarget::Unit(_)) {
                continue;
            }
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
                .map(|m| m.ino());
            if now.is_some() && now == pinned {
                continue;
            }
            if !pins.is_empty() {
                log::warn!(
                    "scope {}: cgroup {} was removed; its programs went with it",
                    scope.target,
                    scope.path.display()
                );
                if let Err(e) = remove_links(pins) {
                    log::error!(
                        "scope {}: removing the links of the removed cgroup: {e:#}",
                        scope.target
                    );
                }
                pins.clear();
            }
            if now.is_some() {
                match dp.attach(scope, tag) {
                    Ok(new) => {
                        log::warn!(
                            "scope {}: cgroup {} was created again; re-attached",
                            scope.target,
                            scope.path.display()
                        );
                        *pins = new;
                    }
                    Err(e) => log::error!(
                        "scope {}: re-attaching to {}: {e:#}",
                        scope.target,
                        scope.path.display()
                    ),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn unit_tags_have_no_dots_and_stay_distinct() {
        assert_eq!(super::unit_tag("postfix.service"), "unit:postfix%2eservice");
        // bpffs refuses a dot anywhere in a pin name.
        assert!(!super::unit_tag("a.b.service").contains('.'));
        assert_ne!(
            super::unit_tag("a.b.service"),
            super::unit_tag("a_b.service")
        );
    }
}
