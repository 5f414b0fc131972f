//! Attaching and detaching: the four cgroup programs on a scope's cgroup, through links
//! pinned as `links/<cgroup inode>-<program>-<tag>` so that they outlive the agent;
//! [`Attachments`] keeps what one agent attached and moves it to a new set of scopes and
//! interfaces (start, reload and a re-created cgroup all go through it); `detach_all` is
//! the way out.

use std::{fs, os::unix::fs::MetadataExt as _, path::PathBuf};

use anyhow::{Context as _, bail};
use aya::programs::{
    CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, links::FdLink,
    links::PinnedLink,
};
use portcullis_common::maps::programs;

use super::{
    loader::{Datapath, program},
    paths::{PathArgs, cgroup2_mount},
    xdp,
};
use crate::model::ScopeTarget;

/// A cgroup the programs attach to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    /// As configured.
    pub target: ScopeTarget,
    /// Absolute path of the cgroup directory.
    pub path: PathBuf,
}

/// Resolves `host` (the cgroup v2 root: every process) or a cgroup path relative to the
/// cgroup v2 mount (a systemd unit is `system.slice/NAME.service`; an absolute path
/// already under the mount is accepted too).
pub fn resolve_scope(target: &ScopeTarget) -> anyhow::Result<Scope> {
    let root = cgroup2_mount()?;
    let path = match target {
        ScopeTarget::Host => root.clone(),
        ScopeTarget::Cgroup(p) if p.is_absolute() && p.starts_with(&root) => p.clone(),
        ScopeTarget::Cgroup(p) => root.join(p.strip_prefix("/").unwrap_or(p)),
    };
    if !path.join("cgroup.procs").is_file() {
        bail!(
            "scope \"{target}\": {} is not a cgroup v2 directory (hint: use \"host\", a path under {}, or a unit such as \"system.slice/xeams.service\" that is running)",
            path.display(),
            root.display()
        );
    }
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

impl Datapath {
    /// Attaches the four programs to a cgroup and pins the links as
    /// `links/<cgroup inode>-<program>-<tag>`. Returns the pin paths.
    pub fn attach(&mut self, scope: &Scope, tag: &str) -> anyhow::Result<Vec<PathBuf>> {
        let cgroup = fs::File::open(&scope.path)
            .with_context(|| format!("opening cgroup {}", scope.path.display()))?;
        let ino = cgroup.metadata()?.ino();
        let mut pinned = Vec::new();
        let links = self.paths().links();
        let mut pin = |link: FdLink, name: &str| -> anyhow::Result<()> {
            let path = links.join(format!("{ino}-{name}-{tag}"));
            let _ = fs::remove_file(&path);
            link.pin(&path)
                .with_context(|| format!("pinning link {}", path.display()))?;
            pinned.push(path);
            Ok(())
        };
        for (name, kind) in [
            (programs::INGRESS, CgroupSkbAttachType::Ingress),
            (programs::EGRESS, CgroupSkbAttachType::Egress),
        ] {
            let prog: &mut CgroupSkb = program(&mut self.ebpf, name)?.try_into()?;
            let id = prog
                .attach(&cgroup, kind, ATTACH_MODE)
                .with_context(|| format!("attaching {name} to {}", scope.path.display()))?;
            pin(FdLink::try_from(prog.take_link(id)?)?, name)?;
        }
        for name in [programs::CONNECT4, programs::CONNECT6] {
            let prog: &mut CgroupSockAddr = program(&mut self.ebpf, name)?.try_into()?;
            let id = prog
                .attach(&cgroup, ATTACH_MODE)
                .with_context(|| format!("attaching {name} to {}", scope.path.display()))?;
            pin(FdLink::try_from(prog.take_link(id)?)?, name)?;
        }
        Ok(pinned)
    }
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
    for dir in [paths.links(), paths.maps(), paths.pin_dir()] {
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
        for (scope, pins) in gone {
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
    pub fn reattach_recreated(&mut self, dp: &mut Datapath, tag: &str) {
        for (scope, pins) in &mut self.scopes {
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
