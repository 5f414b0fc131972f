//! Loading: the embedded eBPF object is loaded with every map pinned under the pin
//! directory (adopting maps an earlier run pinned, after checking their layout), and a
//! map image is written into the idle policy generation and made live with one write of
//! the configuration map.
//!
//! Pinned links keep enforcing when the agent exits or dies; `detach` is the only way
//! out. A restart attaches new links before it removes the old ones: both programs read
//! the same maps, so there is no instant without enforcement.

use std::{fs, path::PathBuf};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, LpmTrie, Map, MapData, PerCpuArray, PerCpuValues, lpm_trie::Key},
    programs::{CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, CgroupSockAddrAttachType},
    util::nr_cpus,
};
use portcullis_common::{
    config::{Config, MODE_AUDIT, MODE_ENFORCE},
    maps::MAX_RULES,
    maps::{self as names, programs},
    policy::PeerAddr,
    stats::{Counter, LAYERS},
};

use super::{
    fault::{self, Step},
    paths::{PathArgs, ensure_bpffs},
};
use crate::{model::Mode, policy::image::Image};

/// How each of the four cgroup programs attaches.
#[derive(Clone, Copy)]
pub(super) enum Hook {
    Skb(CgroupSkbAttachType),
    SockAddr(CgroupSockAddrAttachType),
}

/// The four cgroup programs, by name (the loader pins them under these names too).
pub(super) const CGROUP_PROGRAMS: [(&str, Hook); 4] = [
    (programs::INGRESS, Hook::Skb(CgroupSkbAttachType::Ingress)),
    (programs::EGRESS, Hook::Skb(CgroupSkbAttachType::Egress)),
    (
        programs::CONNECT4,
        Hook::SockAddr(CgroupSockAddrAttachType::Connect4),
    ),
    (
        programs::CONNECT6,
        Hook::SockAddr(CgroupSockAddrAttachType::Connect6),
    ),
];

/// The kernel programs, built by `cargo xtask build` and embedded at compile time.
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("PORTCULLIS_EBPF_OBJECT"));

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
        for dir in [paths.maps(), paths.links(), paths.progs()] {
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let pins: Vec<(&str, PathBuf)> = names::ALL.iter().map(|n| (*n, paths.map(n))).collect();
        let adopted = paths.map(names::PORTS).exists();
        let mut loader = EbpfLoader::new();
        loader.btf(None);
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
        pin_programs(&mut ebpf, paths)?;
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
    ///
    /// The idle generation is made to hold exactly the image before the flip, whatever
    /// an earlier run left in it (a reload killed between its flip and its cleanup
    /// leaves a whole old generation behind): every port entry whose content is not
    /// known from this process's own writes is written, and every idle peer entry is
    /// removed before the new ones go in (peer-set ids are renumbered for each policy,
    /// so a stale entry would admit the wrong peers).
    pub fn install(&mut self, image: &Image, config: Config) -> anyhow::Result<()> {
        anyhow::ensure!(
            config.generation == image.generation,
            "config and image generations differ"
        );
        {
            let Some(Map::Array(ports)) = self.ebpf.map(names::PORTS) else {
                bail!("the eBPF object's {} is not an array", names::PORTS);
            };
            let base = image.ports_base();
            // Taken, not borrowed: if writing fails half-way, the next install writes all.
            let known = self.shadow[image.generation as usize & 1].take();
            let (mut keys, mut values) = (Vec::new(), Vec::new());
            for (i, v) in image.ports.iter().enumerate() {
                if known.as_ref().is_some_and(|k| k[i] == *v) {
                    continue;
                }
                keys.push(base + i as u32);
                values.push(*v);
            }
            let half = keys.len() / 2;
            update_batch(ports, &keys[..half], &values[..half])
                .context("writing the port table")?;
            fault::point(Step::PortsHalf);
            update_batch(ports, &keys[half..], &values[half..])
                .context("writing the port table")?;
            self.shadow[image.generation as usize & 1] = Some(image.ports.clone());
        }
        fault::point(Step::Ports);
        self.clear_peers(image.generation)?;
        fault::point(Step::PeersCleared);
        {
            let mut peers = LpmTrie::<_, PeerAddr, u32>::try_from(
                self.ebpf.map_mut(names::PEERS).context("peers map")?,
            )?;
            for (i, e) in image.peers.iter().enumerate() {
                if i == image.peers.len() / 2 {
                    fault::point(Step::PeersHalf);
                }
                peers
                    .insert(&Key::new(e.prefix_len, e.key), u32::from(e.rule), 0)
                    .context("writing the peer table")?;
            }
        }
        fault::point(Step::Peers);
        {
            let mut cfg = Array::<_, Config>::try_from(
                self.ebpf.map_mut(names::CONFIG).context("config map")?,
            )?;
            cfg.set(0, config, 0).context("writing the configuration")?;
        }
        fault::point(Step::Flip);
        // The old generation's trie entries are now unreachable; remove them (memory
        // only: the next install clears that generation again before filling it).
        self.clear_peers(1 - image.generation)?;
        fault::point(Step::Cleanup);
        Ok(())
    }

    /// Removes every peer entry of `generation`.
    fn clear_peers(&mut self, generation: u32) -> anyhow::Result<()> {
        let mut peers = LpmTrie::<_, PeerAddr, u32>::try_from(
            self.ebpf.map_mut(names::PEERS).context("peers map")?,
        )?;
        let mut stale = Vec::new();
        for k in peers.keys() {
            let k = k.context("listing the peer table")?;
            if (u32::from_be_bytes(k.data().set) >> 16) & 1 == generation & 1 {
                stale.push(k);
            }
        }
        for k in stale {
            peers
                .remove(&k)
                .with_context(|| format!("clearing the peer table of generation {generation}"))?;
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
}

/// Pins the four cgroup programs as `progs/<name>`, replacing those of an earlier run:
/// `attach --unit` attaches them to a unit's new cgroup on every start, also when the
/// agent is stopped or dead. Links of the earlier programs keep them alive as long as
/// they are attached.
fn pin_programs(ebpf: &mut Ebpf, paths: &PathArgs) -> anyhow::Result<()> {
    for (name, _) in CGROUP_PROGRAMS {
        let path = paths.prog(name);
        let _ = fs::remove_file(&path);
        program(ebpf, name)?
            .pin(&path)
            .with_context(|| format!("pinning program {}", path.display()))?;
    }
    Ok(())
}

/// Writes `values` at `keys` of an array map with BPF_MAP_UPDATE_BATCH (Linux 5.6+).
///
/// A generation of the port table is 262144 entries, all written when the contents of
/// an adopted map are unknown: one syscall per entry took about half a second, the batch
/// a few milliseconds. aya 0.14 has no batch API, hence the raw syscall.
fn update_batch(map: &MapData, keys: &[u32], values: &[u32]) -> std::io::Result<()> {
    use std::os::fd::{AsFd as _, AsRawFd as _};

    use aya_obj::generated::{bpf_attr, bpf_cmd};
    debug_assert_eq!(keys.len(), values.len());
    let fd = map.fd().as_fd().as_raw_fd();
    let mut done = 0;
    while done < keys.len() {
        // SAFETY: bpf_attr is plain data; all-zero is its "no options" value.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        attr.batch.keys = keys[done..].as_ptr() as u64;
        attr.batch.values = values[done..].as_ptr() as u64;
        attr.batch.count = (keys.len() - done) as u32;
        attr.batch.map_fd = fd as u32;
        // SAFETY: the kernel reads `count` keys and values from the live slices above.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                bpf_cmd::BPF_MAP_UPDATE_BATCH as libc::c_long,
                &raw mut attr,
                std::mem::size_of::<bpf_attr>(),
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the kernel wrote back how many elements it updated.
        let n = unsafe { attr.batch.count } as usize;
        if n == 0 {
            return Err(std::io::Error::other(
                "BPF_MAP_UPDATE_BATCH updated nothing",
            ));
        }
        done += n;
    }
    Ok(())
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

pub(super) fn program<'a>(
    ebpf: &'a mut Ebpf,
    name: &str,
) -> anyhow::Result<&'a mut aya::programs::Program> {
    ebpf.program_mut(name).with_context(|| {
        format!("the eBPF object has no program {name:?} (rebuild with `cargo xtask build`)")
    })
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

/// Switches the running policy between audit and enforce with one write of the pinned
/// configuration map. Returns the mode it had.
pub fn write_mode(paths: &PathArgs, mode: Mode) -> anyhow::Result<Mode> {
    let mut config =
        Array::<_, Config>::try_from(Map::from_map_data(open_pinned(paths, names::CONFIG)?)?)?;
    let mut c = config.get(&0, 0).context("reading the configuration")?;
    let was = if c.mode == MODE_ENFORCE {
        Mode::Enforce
    } else {
        Mode::Audit
    };
    c.mode = match mode {
        Mode::Audit => MODE_AUDIT,
        Mode::Enforce => MODE_ENFORCE,
    };
    config.set(0, c, 0).context("writing the configuration")?;
    Ok(was)
}
