//! The only code that talks to the kernel: finds bpffs and the cgroup v2 mount, loads the
//! embedded eBPF object with every map pinned under the pin directory (adopting maps a
//! previous run pinned), writes a map image into the idle policy generation and flips to
//! it, attaches the programs to cgroups through pinned links, and detaches.
//!
//! Pinned links keep enforcing when the agent exits or dies; `detach` is the only way
//! out. A restart attaches new links before it removes the old ones: both programs read
//! the same maps, so there is no instant without enforcement.

use std::{
    fs,
    io::{self, BufRead as _},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, LpmTrie, MapData, PerCpuArray, PerCpuValues, lpm_trie::Key},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, links::FdLink,
        links::PinnedLink,
    },
    util::nr_cpus,
};
use portcullis_common::{
    config::Config,
    maps::MAX_RULES,
    maps::{self as names, programs},
    policy::PeerAddr,
    stats::{Counter, LAYERS},
};

use crate::policy::image::Image;

/// The kernel programs, built by `cargo xtask build` and embedded at compile time.
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("PORTCULLIS_EBPF_OBJECT"));

/// Where pins and state live. Shared by `run`, `status`, `detach` and `reload`.
#[derive(Clone, Debug, clap::Args)]
pub struct PathArgs {
    /// bpffs directory for pinned maps and links (bpffs is mounted if it is not).
    /// Default: the config's `pin_dir`, else /sys/fs/bpf/portcullis.
    #[arg(long, env = "PORTCULLIS_PIN_DIR")]
    pub pin_dir: Option<PathBuf>,
    /// Directory for the agent's state file (rule ids, scope, policy version).
    #[arg(long, env = "PORTCULLIS_STATE_DIR", default_value = "/run/portcullis")]
    pub state_dir: PathBuf,
}

/// Where maps and links are pinned unless told otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/portcullis";

impl PathArgs {
    /// The pin directory: the flag or environment, else [`DEFAULT_PIN_DIR`].
    pub fn pin_dir(&self) -> PathBuf {
        self.pin_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_DIR))
    }

    /// Directory of the pinned maps.
    pub fn maps(&self) -> PathBuf {
        self.pin_dir().join("maps")
    }

    /// Pin path of one map.
    pub fn map(&self, name: &str) -> PathBuf {
        self.maps().join(name)
    }

    /// Directory of the pinned links.
    pub fn links(&self) -> PathBuf {
        self.pin_dir().join("links")
    }

    /// The state file.
    pub fn state_file(&self) -> PathBuf {
        self.state_dir.join("state.json")
    }
}

/// One line of /proc/self/mountinfo: (mount point, filesystem type).
fn mounts() -> anyhow::Result<Vec<(PathBuf, String)>> {
    let file = fs::File::open("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let mut out = Vec::new();
    for line in io::BufReader::new(file).lines() {
        let line = line.context("reading /proc/self/mountinfo")?;
        // "<id> <parent> <maj:min> <root> <mount point> <options> [optional...] - <fstype> ..."
        let mut fields = line.split(' ');
        let Some(mount_point) = fields.nth(4) else {
            continue;
        };
        let Some(fstype) = line.split(" - ").nth(1).and_then(|s| s.split(' ').next()) else {
            continue;
        };
        out.push((PathBuf::from(unescape(mount_point)), fstype.to_owned()));
    }
    Ok(out)
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The cgroup v2 mount point, from /proc/self/mountinfo (never assumed).
pub fn cgroup2_mount() -> anyhow::Result<PathBuf> {
    mounts()?
        .into_iter()
        .find(|(_, fstype)| fstype == "cgroup2")
        .map(|(p, _)| p)
        .context("no cgroup v2 filesystem is mounted (portcullis attaches to cgroup v2; mount one with `mount -t cgroup2 none /sys/fs/cgroup`)")
}

/// A cgroup the programs attach to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    /// As the user wrote it ("host", "system.slice/xeams.service", ...).
    pub label: String,
    /// Absolute path of the cgroup directory.
    pub path: PathBuf,
}

/// Resolves `host` (the cgroup v2 root: every process) or a cgroup path relative to the
/// cgroup v2 mount (a systemd unit is `system.slice/NAME.service`).
pub fn resolve_scope(scope: &str) -> anyhow::Result<Scope> {
    let root = cgroup2_mount()?;
    let path = if scope == "host" {
        root.clone()
    } else {
        let rel = scope.trim_start_matches('/');
        if rel.split('/').any(|c| c == "..") {
            bail!("scope {scope:?} leaves the cgroup v2 mount");
        }
        // Accept an absolute path already under the mount, too.
        let p = Path::new(scope);
        if p.is_absolute() && p.starts_with(&root) {
            p.to_path_buf()
        } else {
            root.join(rel)
        }
    };
    if !path.join("cgroup.procs").is_file() {
        bail!(
            "scope {scope:?}: {} is not a cgroup v2 directory (hint: use \"host\", a path under {}, or a unit such as \"system.slice/xeams.service\" that is running)",
            path.display(),
            root.display()
        );
    }
    Ok(Scope {
        label: scope.to_owned(),
        path,
    })
}

/// Makes sure the pin directory is on a bpffs, mounting bpffs at its parent when nothing
/// is mounted there (a fresh machine often has no /sys/fs/bpf mount).
pub fn ensure_bpffs(pin_dir: &Path) -> anyhow::Result<()> {
    let parent = pin_dir
        .parent()
        .context("the pin directory has no parent")?;
    let on_bpffs = |mounts: &[(PathBuf, String)]| {
        mounts
            .iter()
            .filter(|(m, _)| parent.starts_with(m))
            .max_by_key(|(m, _)| m.as_os_str().len())
            .is_some_and(|(_, t)| t == "bpf")
    };
    if on_bpffs(&mounts()?) {
        return Ok(());
    }
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let target = std::ffi::CString::new(parent.as_os_str().as_encoded_bytes())?;
    // SAFETY: all pointers are valid NUL-terminated strings or NULL for `data`.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).with_context(|| {
            format!(
                "mounting bpffs at {} (needs CAP_SYS_ADMIN)",
                parent.display()
            )
        });
    }
    log::info!("mounted bpffs at {}", parent.display());
    Ok(())
}

/// On kernels with BPF links (5.7+) aya attaches cgroup programs with `bpf_link_create`,
/// which rejects every flag (a cgroup link always coexists with other programs), so the
/// mode must be the one that passes 0. Coexisting is what lets a restart attach the new
/// programs before the old ones go.
const ATTACH_MODE: CgroupAttachMode = CgroupAttachMode::Single;

/// The loaded programs and maps.
pub struct Datapath {
    /// The object (programs loaded, maps pinned).
    pub ebpf: Ebpf,
    paths: PathArgs,
    /// What each generation of `PORTS` holds, where known: maps created by this process
    /// start zeroed; adopted ones are unknown until written once. Lets a reload write
    /// only the entries that change (a full generation is 262144 writes).
    shadow: [Option<Vec<u32>>; 2],
}

impl Datapath {
    /// Loads the embedded object. Maps already pinned by an earlier run are reused, with
    /// their counters, flow state and socket records: that is what lets a restarted
    /// agent take over without a gap.
    pub fn load(paths: &PathArgs) -> anyhow::Result<Self> {
        ensure_bpffs(&paths.pin_dir())?;
        check_pinned_layout(paths)?;
        for dir in [paths.maps(), paths.links()] {
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let pins: Vec<(&str, PathBuf)> = names::ALL.iter().map(|n| (*n, paths.map(n))).collect();
        let adopted = paths.map(names::PORTS).exists();
        let mut loader = EbpfLoader::new();
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT).with_context(|| {
            format!(
                "loading the eBPF object (maps pinned under {}): BPF needs root or CAP_BPF + CAP_NET_ADMIN, and a kernel with BTF; a map pinned by an incompatible older version must be removed with `portcullis detach`",
                paths.maps().display()
            )
        })?;
        for name in names::ALL {
            if ebpf.map(name).is_none() {
                bail!(
                    "the eBPF object has no map {name:?}: agent and kernel programs disagree (rebuild with `cargo xtask build`)"
                );
            }
        }
        for name in [programs::INGRESS, programs::EGRESS] {
            let prog: &mut CgroupSkb = program(&mut ebpf, name)?.try_into()?;
            prog.load()
                .with_context(|| format!("loading program {name} (verifier)"))?;
        }
        for name in [programs::CONNECT4, programs::CONNECT6] {
            let prog: &mut CgroupSockAddr = program(&mut ebpf, name)?.try_into()?;
            prog.load()
                .with_context(|| format!("loading program {name} (verifier)"))?;
        }
        let zero = || (!adopted).then(|| vec![0u32; 4 * 65536]);
        Ok(Self {
            ebpf,
            paths: paths.clone(),
            shadow: [zero(), zero()],
        })
    }

    /// Where this datapath pins its maps and links (the XDP attach pins there too).
    pub fn paths(&self) -> &PathArgs {
        &self.paths
    }

    /// The configuration the programs currently read.
    pub fn config(&self) -> anyhow::Result<Config> {
        let map = self.ebpf.map(names::CONFIG).context("config map")?;
        let array = Array::<_, Config>::try_from(map)?;
        Ok(array.get(&0, 0)?)
    }

    /// Writes `image` into its generation, then makes it live by writing `config` (whose
    /// `generation` must be the image's) in one map update, then clears the other
    /// generation's peer entries. Packets see the old policy or the new one, never a mix.
    pub fn install(&mut self, image: &Image, config: Config) -> anyhow::Result<()> {
        anyhow::ensure!(
            config.generation == image.generation,
            "config and image generations differ"
        );
        {
            let mut ports =
                Array::<_, u32>::try_from(self.ebpf.map_mut(names::PORTS).context("ports map")?)?;
            let base = image.ports_base();
            let known = self.shadow[image.generation as usize & 1].take();
            for (i, v) in image.ports.iter().enumerate() {
                if known.as_ref().is_some_and(|k| k[i] == *v) {
                    continue;
                }
                ports
                    .set(base + i as u32, *v, 0)
                    .context("writing the port table")?;
            }
            self.shadow[image.generation as usize & 1] = Some(image.ports.clone());
        }
        {
            let mut peers = LpmTrie::<_, PeerAddr, u32>::try_from(
                self.ebpf.map_mut(names::PEERS).context("peers map")?,
            )?;
            for e in &image.peers {
                peers
                    .insert(&Key::new(e.prefix_len, e.key), u32::from(e.rule), 0)
                    .context("writing the peer table")?;
            }
        }
        {
            let mut cfg = Array::<_, Config>::try_from(
                self.ebpf.map_mut(names::CONFIG).context("config map")?,
            )?;
            cfg.set(0, config, 0).context("writing the configuration")?;
        }
        // The old generation's trie entries are now unreachable; remove them.
        let mut peers = LpmTrie::<_, PeerAddr, u32>::try_from(
            self.ebpf.map_mut(names::PEERS).context("peers map")?,
        )?;
        let stale: Vec<Key<PeerAddr>> = peers
            .keys()
            .filter_map(Result::ok)
            .filter(|k| (u32::from_be_bytes(k.data().set) >> 16) & 1 != image.generation)
            .collect();
        for k in stale {
            peers.remove(&k).context("clearing the idle peer table")?;
        }
        Ok(())
    }

    /// Zeroes the counters of rule indices that a new rule id now uses.
    pub fn reset_rule_counters(&mut self, indices: &[u16]) -> anyhow::Result<()> {
        let mut rules = PerCpuArray::<_, Counter>::try_from(
            self.ebpf
                .map_mut(names::RULE_COUNTERS)
                .context("rule counters")?,
        )?;
        let cpus = nr_cpus().map_err(|(_, e)| e).context("counting CPUs")?;
        for &i in indices {
            for layer in 0..LAYERS {
                rules.set(
                    layer * MAX_RULES + u32::from(i),
                    PerCpuValues::try_from(vec![Counter::default(); cpus])?,
                    0,
                )?;
            }
        }
        Ok(())
    }

    /// Attaches the four programs to a cgroup and pins the links as
    /// `links/<cgroup inode>-<program>-<tag>`. Returns the pin paths.
    pub fn attach(&mut self, scope: &Scope, tag: &str) -> anyhow::Result<Vec<PathBuf>> {
        let cgroup = fs::File::open(&scope.path)
            .with_context(|| format!("opening cgroup {}", scope.path.display()))?;
        let ino = cgroup.metadata()?.ino();
        let mut pinned = Vec::new();
        let mut pin = |link: FdLink, name: &str| -> anyhow::Result<()> {
            let path = self.paths.links().join(format!("{ino}-{name}-{tag}"));
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

/// Refuses maps pinned by a build whose map layout differs from this one's.
///
/// aya reuses a pinned map by name without comparing it to the object's definition, so
/// a map left by an older version (another value size, type or capacity) would be
/// adopted as it is: at best the verifier rejects a program, at worst the programs and
/// the agent read the same bytes as different structures. The object embedded in this
/// binary is the reference; any difference is an error naming the map and the fix.
fn check_pinned_layout(paths: &PathArgs) -> anyhow::Result<()> {
    let mut object = None;
    for name in names::ALL {
        let path = paths.map(name);
        if !path.exists() {
            continue;
        }
        let object = match &mut object {
            Some(o) => o,
            None => object.insert(
                aya_obj::Object::parse(OBJECT).context("parsing the embedded eBPF object")?,
            ),
        };
        let want = object
            .maps
            .get(name)
            .with_context(|| format!("the eBPF object has no map {name:?}"))?;
        let have = aya::maps::MapInfo::from_pin(&path).with_context(|| {
            format!(
                "reading the pinned map {} (remove it with `portcullis detach`)",
                path.display()
            )
        })?;
        let have_type = have.map_type().map_or(u32::MAX, |t| t as u32);
        // aya creates ring buffers with value size 0 whatever the object says.
        let ring = want.map_type() == aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_RINGBUF as u32;
        let layout = |t: u32, k: u32, v: u32, n: u32| {
            format!("type {t}, key {k} B, value {v} B, {n} entries")
        };
        if have_type != want.map_type()
            || have.key_size() != want.key_size()
            || (!ring && have.value_size() != want.value_size())
            || have.max_entries() != want.max_entries()
        {
            bail!(
                "pinned map {} has another layout than this version of portcullis expects (pinned: {}; expected: {}): it was left by an older or newer version; run `portcullis detach` (with the same pin directory) to remove the old programs and maps, then start again",
                path.display(),
                layout(
                    have_type,
                    have.key_size(),
                    have.value_size(),
                    have.max_entries()
                ),
                layout(
                    want.map_type(),
                    want.key_size(),
                    if ring { 0 } else { want.value_size() },
                    want.max_entries()
                ),
            );
        }
    }
    Ok(())
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name).with_context(|| {
        format!("the eBPF object has no program {name:?} (rebuild with `cargo xtask build`)")
    })
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

/// Opens a pinned map for reading (used by `status` and the counters).
pub fn open_pinned(paths: &PathArgs, name: &str) -> anyhow::Result<MapData> {
    let path = paths.map(name);
    MapData::from_pin(&path).with_context(|| {
        format!(
            "opening pinned map {} (is portcullis running? see `portcullis run`)",
            path.display()
        )
    })
}
