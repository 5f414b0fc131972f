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
    maps::{Array, LpmTrie, Map, MapData, lpm_trie::Key},
    programs::{CgroupSkbAttachType, CgroupSockAddrAttachType, Program},
    util::nr_cpus,
};
use portcullis_common::{
    config::{Config, MODE_AUDIT, MODE_ENFORCE},
    flow::FLOW_PORT_BYTES,
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
pub(super) static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("PORTCULLIS_EBPF_OBJECT"));

/// The loaded programs and maps.
pub struct Datapath {
    /// The object (programs loaded, maps pinned).
    pub ebpf: Ebpf,
    paths: PathArgs,
    /// What each generation of `PORTS` holds, where known: maps created by this process
    /// start zeroed; adopted ones are unknown until written once. Lets a reload write
    /// only the entries that change (a full generation is 262144 writes).
    shadow: [Option<Vec<u32>>; 2],
    /// The port table mapped into this process (`BPF_F_MMAPABLE`), when it is mappable.
    ports_mmap: Option<PortsMmap>,
    /// The rule counters were created by this process and no install has run yet.
    fresh_counters: bool,
    /// The key host names are hashed under (`maps::NAME_KEY`, see `names`).
    pub(super) name_key: portcullis_common::names::HashKey,
}

mod ports;
use ports::{PortsMmap, map_ports, write_ports_batch};

impl Datapath {
    /// Loads the embedded object. Maps already pinned by an earlier run are reused, with
    /// their counters, flow state and socket records: that is what lets a restarted
    /// agent take over without a gap.
    ///
    /// `xdp`: whether to load `pc_xdp` now, beside the cgroup programs (an interface is
    /// configured); otherwise it is loaded on its first attach, if any.
    pub fn load(paths: &PathArgs, xdp: bool) -> anyhow::Result<Self> {
        ensure_bpffs(&paths.pin_dir())?;
        check_pinned_layout(paths)?;
        for dir in [paths.maps(), paths.links(), paths.progs()] {
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let pins: Vec<(&str, PathBuf)> = names::ALL.iter().map(|n| (*n, paths.map(n))).collect();
        let adopted = paths.map(names::PORTS).exists();
        // Asked of the counters' own pin: a half-removed pin directory may hold one map
        // and not the other.
        let counters_adopted = paths.map(names::RULE_COUNTERS).exists();
        // Flows pinned by a build without the flow-port marks: their ports are unknown.
        let flows_unmarked = !paths.map(names::FLOW_PORTS).exists()
            && (paths.map(names::FLOWS_OUT).exists() || paths.map(names::FLOWS_IN).exists());
        let features = super::probe::kernel_features();
        let mut loader = object_loader(&features);
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
        let wanted: Vec<&str> = CGROUP_PROGRAMS
            .iter()
            .map(|(name, _)| *name)
            .chain(xdp.then_some(programs::XDP))
            .collect();
        if flows_unmarked {
            mark_every_flow_port(&mut ebpf)?;
        }
        load_programs(&mut ebpf, &wanted)?;
        pin_programs(&mut ebpf, paths)?;
        let name_key = super::names::name_key(&mut ebpf)?;
        let ports_mmap = map_ports(&ebpf);
        // Only the batched writes need to know what a generation holds.
        let zero = || (!adopted && ports_mmap.is_none()).then(|| vec![0u32; 4 * 65536]);
        Ok(Self {
            ebpf,
            paths: paths.clone(),
            shadow: [zero(), zero()],
            ports_mmap,
            fresh_counters: !counters_adopted,
            name_key,
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
    /// generation's peer and host name entries (`names`). Packets see the old policy or the new one, never a mix.
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
            if let Some(table) = &mut self.ports_mmap {
                // The mapped table is its own record of what it holds: compare and write
                // in place (a full generation is 1 MiB of memory).
                let half = image.ports.len() / 2;
                for (i, (have, want)) in table.entries(base as usize).zip(&image.ports).enumerate()
                {
                    if i == half {
                        fault::point(Step::PortsHalf);
                    }
                    if *have != *want {
                        *have = *want;
                    }
                }
                // The flip below is a syscall the programs then see; the entries written
                // here must be visible no later than it, on every architecture.
                std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            } else {
                write_ports_batch(ports, &mut self.shadow, image)?;
            }
        }
        fault::point(Step::Ports);
        self.install_rest(image, config)
    }

    /// The peers, the flip and the cleanup of [`Datapath::install`], once the ports are in.
    fn install_rest(&mut self, image: &Image, config: Config) -> anyhow::Result<()> {
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
        self.write_names(image)?;
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
        self.clear_names(1 - image.generation)?;
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

    /// Zeroes the counters of rule indices that a new rule id now uses, in one batched
    /// write. Skipped on the first install into counters this process created: they
    /// start zeroed and nothing ran before (one syscall per counter was most of startup).
    pub fn reset_rule_counters(&mut self, indices: &[u16]) -> anyhow::Result<()> {
        if std::mem::take(&mut self.fresh_counters) {
            return Ok(());
        }
        let Some(Map::PerCpuArray(rules)) = self.ebpf.map(names::RULE_COUNTERS) else {
            bail!(
                "the eBPF object's {} is not a per-CPU array",
                names::RULE_COUNTERS
            );
        };
        let cpus = nr_cpus().map_err(|(_, e)| e).context("counting CPUs")?;
        let keys: Vec<u32> = indices
            .iter()
            .flat_map(|&i| (0..LAYERS).map(move |layer| layer * MAX_RULES + u32::from(i)))
            .collect();
        let zeros = vec![Counter::default(); keys.len() * cpus];
        update_batch(rules, &keys, &zeros, cpus).context("zeroing rule counters")
    }
}

/// Logs (debug) how many instructions the verifier processed for a program: how close
/// it is to the kernel's limit of one million.
fn log_verified(name: &str, info: Result<aya::programs::ProgramInfo, aya::programs::ProgramError>) {
    if let Some(n) = info.ok().and_then(|i| i.verified_instruction_count()) {
        log::debug!("program {name}: the verifier processed {n} instructions");
    }
}

/// Loads (the kernel verifies) the programs `names`, each on a thread of its own.
///
/// The kernel verifies a program in the thread that calls BPF_PROG_LOAD, so programs
/// loaded from several threads are verified on several CPUs at once; verification is
/// most of startup (on the bench machine `pc_xdp` about 0.6 s, `pc_ingress` 0.2 s, the
/// others 0.1 s together). One thread each rather than a split tuned to today's costs:
/// on two CPUs both came out the same.
fn load_programs(ebpf: &mut Ebpf, names: &[&str]) -> anyhow::Result<()> {
    let progs: Vec<(&str, &mut Program)> = ebpf
        .programs_mut()
        .filter(|(name, _)| names.contains(name))
        .collect();
    for name in names {
        if !progs.iter().any(|(n, _)| n == name) {
            bail!("the eBPF object has no program {name:?} (rebuild with `cargo xtask build`)");
        }
    }
    std::thread::scope(|s| {
        let loads: Vec<_> = progs
            .into_iter()
            .map(|(name, prog)| s.spawn(move || load_program(name, prog)))
            .collect();
        // Every thread is joined before the first error is returned.
        let results: Vec<anyhow::Result<()>> = loads
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect();
        // Every refusal, not only the first: on an older kernel more than one program
        // may fail, and the admin needs the whole list at once.
        let failed: Vec<String> = results
            .into_iter()
            .filter_map(|r| r.err().map(|e| format!("{e:#}")))
            .collect();
        if failed.is_empty() {
            Ok(())
        } else {
            bail!("{}", failed.join("\n\n"))
        }
    })
}

/// Loads one program of the object: a verifier rejection names the program, the running
/// kernel and `doctor`, which says what this kernel lacks.
pub(super) fn load_program(name: &str, prog: &mut Program) -> anyhow::Result<()> {
    match prog {
        Program::Xdp(p) => p.load(),
        Program::CgroupSkb(p) => p.load(),
        Program::CgroupSockAddr(p) => p.load(),
        _ => bail!("program {name} has a type this agent does not load"),
    }
    .with_context(|| {
        format!(
            "loading program {name}: the verifier of kernel {} refused it; `portcullis doctor` probes what this kernel lacks",
            super::probe::KernelRelease::running().release
        )
    })?;
    log_verified(name, prog.info());
    Ok(())
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
/// `per_key` values per key: 1, or the number of possible CPUs for a per-CPU map (whose
/// values must then be 8-byte multiples, as `Counter` is).
fn update_batch<V: Copy>(
    map: &MapData,
    keys: &[u32],
    values: &[V],
    per_key: usize,
) -> std::io::Result<()> {
    use std::os::fd::{AsFd as _, AsRawFd as _};

    use aya_obj::generated::{bpf_attr, bpf_cmd};
    assert_eq!(keys.len() * per_key, values.len());
    let fd = map.fd().as_fd().as_raw_fd();
    let mut done = 0;
    while done < keys.len() {
        // SAFETY: bpf_attr is plain data; all-zero is its "no options" value.
        let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
        attr.batch.keys = keys[done..].as_ptr() as u64;
        attr.batch.values = values[done * per_key..].as_ptr() as u64;
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

/// Marks every local port as one with flows (`maps::FLOW_PORTS`), for flow tables
/// adopted from a build that did not mark them: the programs then look every packet's
/// flow up, as that build did, and no reply to an adopted flow is taken for a stranger.
fn mark_every_flow_port(ebpf: &mut Ebpf) -> anyhow::Result<()> {
    let mut marks = Array::<_, [u8; FLOW_PORT_BYTES]>::try_from(
        ebpf.map_mut(names::FLOW_PORTS)
            .context("the eBPF object has no flow-port marks")?,
    )?;
    for i in 0..names::FLOW_PORTS_SLOTS {
        marks
            .set(i, [1; FLOW_PORT_BYTES], 0)
            .context("marking the ports of adopted flows")?;
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

/// The loader of the embedded object, as every load of it is configured: `features`
/// (from `probe::kernel_features`) set as the constants the verifier prunes by.
pub(super) fn object_loader(features: &u32) -> EbpfLoader<'_> {
    // aya 0.14's `EbpfLoader::new()` parses the kernel BTF (/sys/kernel/btf/vmlinux)
    // whatever follows, tens of ms of startup; `btf(None)` only keeps it out of the
    // load. aya has no constructor without it (see xtask/bench/analysis.md, "The per-packet round").
    let mut loader = EbpfLoader::new();
    loader.btf(None);
    // The kernel's features, as constants the verifier prunes by (`kernel`).
    loader.override_global(portcullis_common::kernel::GLOBAL, features, true);
    loader
}
