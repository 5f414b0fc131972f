//! Host names in the kernel: the policy's name maps (`PC_NAMES`, `PC_SLOT_NAMES`) are
//! written per generation with the peer maps' hygiene (the idle generation cleared
//! before it is filled, the old one after the flip); the trusted resolvers
//! (`PC_RESOLVERS`) are replaced at each install; the addresses the ingress program
//! learned (`PC_LEARNED`) and the DNS counters (`PC_DNS_STATS`) are read back, and
//! expired addresses swept, by the agent.
//!
//! The key names are hashed under (`PC_NAME_KEY`) is drawn from the kernel's random
//! source by the agent that creates the maps and kept with them: a restarted agent
//! adopts it with the addresses learned under it. A new key empties `PC_LEARNED` and
//! `PC_NAME_ADDRS`, whose hashes it no longer produces (adopted from a version that
//! hashed otherwise).
//!
//! A reload keeps `PC_LEARNED`: an entry stores name patterns, which the kernel looks up
//! in the live generation's `PC_NAMES` at each decision, so a new policy applies to the
//! addresses learned under the old one at once.

use std::collections::BTreeSet;

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, Map, MapData, PerCpuArray, PerCpuValues, lpm_trie::Key},
};
use ipnet::IpNet;
use portcullis_common::{
    maps as names,
    names::{HashKey, Learned, LearnedKey, NameKey, NameValue, SlotKey, SlotNames},
    stats::dns,
};

use super::{loader::Datapath, loader::open_pinned, paths::PathArgs};
use crate::policy::image::Image;

/// The key of the loaded object's `PC_NAME_KEY`: the one an earlier run drew, or a new
/// one (then the learned addresses and their counts, hashed under another, are
/// removed).
pub(super) fn name_key(ebpf: &mut Ebpf) -> anyhow::Result<HashKey> {
    let mut map =
        Array::<_, HashKey>::try_from(ebpf.map_mut(names::NAME_KEY).context("name key map")?)?;
    let key = map.get(&0, 0).context("reading the host name key")?;
    if !key.is_unset() {
        return Ok(key);
    }
    let key = random_key()?;
    map.set(0, key, 0).context("writing the host name key")?;
    let mut learned = HashMap::<_, LearnedKey, Learned>::try_from(
        ebpf.map_mut(names::LEARNED)
            .context("learned addresses map")?,
    )?;
    remove_where(&mut learned, |_| true, "the learned addresses")?;
    let mut counts = HashMap::<_, NameKey, u32>::try_from(
        ebpf.map_mut(names::NAME_ADDRS)
            .context("addresses per name map")?,
    )?;
    remove_where(&mut counts, |_| true, "the addresses per name")?;
    Ok(key)
}

/// 16 bytes from the kernel's random source (getrandom(2), which waits for it to be
/// seeded, early in a boot).
fn random_key() -> anyhow::Result<HashKey> {
    let mut bytes = [0u8; 16];
    loop {
        // SAFETY: writes at most 16 bytes into the array.
        let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
        if n == bytes.len() as isize {
            break;
        }
        let e = std::io::Error::last_os_error();
        if n >= 0 || e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e).context("drawing the host name key with getrandom(2)");
        }
    }
    let key = HashKey::from_bytes(bytes);
    anyhow::ensure!(!key.is_unset(), "getrandom(2) gave 16 zero bytes");
    Ok(key)
}

/// The key host names are hashed under, read through the pins (zero when no agent
/// wrote one yet).
pub fn read_key(paths: &PathArgs) -> anyhow::Result<HashKey> {
    let map = Map::from_map_data(open_pinned(paths, names::NAME_KEY)?)?;
    let map = Array::<_, HashKey>::try_from(map).context("name key map")?;
    map.get(&0, 0).context("reading the host name key")
}

impl Datapath {
    /// The key host names are hashed under.
    pub fn name_key(&self) -> HashKey {
        self.name_key
    }

    /// Writes the image's name patterns and slot groups into its generation, after
    /// removing whatever that generation held (an earlier run's leftovers included).
    pub(super) fn write_names(&mut self, image: &Image) -> anyhow::Result<()> {
        self.clear_names(image.generation)?;
        let mut patterns = HashMap::<_, NameKey, NameValue>::try_from(
            self.ebpf.map_mut(names::NAMES).context("names map")?,
        )?;
        for (k, v) in &image.names {
            patterns
                .insert(k, v, 0)
                .context("writing the host name table")?;
        }
        let mut slots = HashMap::<_, SlotKey, SlotNames>::try_from(
            self.ebpf
                .map_mut(names::SLOT_NAMES)
                .context("slot names map")?,
        )?;
        for (k, v) in &image.slot_names {
            slots
                .insert(k, v, 0)
                .context("writing the host name groups of the ports")?;
        }
        Ok(())
    }

    /// Removes every name entry of `generation`.
    pub(super) fn clear_names(&mut self, generation: u32) -> anyhow::Result<()> {
        let generation = generation & 1;
        remove_where(
            &mut HashMap::<_, NameKey, NameValue>::try_from(
                self.ebpf.map_mut(names::NAMES).context("names map")?,
            )?,
            |k| k.generation == generation,
            "the host name table",
        )?;
        remove_where(
            &mut HashMap::<_, SlotKey, SlotNames>::try_from(
                self.ebpf
                    .map_mut(names::SLOT_NAMES)
                    .context("slot names map")?,
            )?,
            |k| k.generation == generation,
            "the host name groups of the ports",
        )
    }

    /// Makes `networks` the trusted resolvers: new ones are added before old ones go,
    /// so a resolver in both lists is trusted throughout.
    pub fn set_resolvers(&mut self, networks: &[IpNet]) -> anyhow::Result<()> {
        let mut trie = LpmTrie::<_, [u8; 16], u32>::try_from(
            self.ebpf
                .map_mut(names::RESOLVERS)
                .context("resolvers map")?,
        )?;
        let want: BTreeSet<(u32, [u8; 16])> = networks.iter().map(prefix).collect();
        anyhow::ensure!(
            want.len() <= names::RESOLVERS_MAX as usize,
            "{} trusted resolver networks; at most {} fit",
            want.len(),
            names::RESOLVERS_MAX
        );
        for (bits, addr) in &want {
            trie.insert(&Key::new(*bits, *addr), 1, 0)
                .context("writing the trusted resolvers")?;
        }
        let stale: Vec<Key<[u8; 16]>> = trie
            .keys()
            .collect::<Result<Vec<_>, _>>()
            .context("listing the trusted resolvers")?
            .into_iter()
            .filter(|k| !want.contains(&(k.prefix_len(), k.data())))
            .collect();
        for k in stale {
            trie.remove(&k).context("removing a trusted resolver")?;
        }
        Ok(())
    }
}

/// A network as a trie key: prefix bits of the 16-byte (IPv4-mapped) form, masked.
fn prefix(net: &IpNet) -> (u32, [u8; 16]) {
    let (addr, bits) = match net.trunc() {
        IpNet::V4(n) => (
            n.network().to_ipv6_mapped().octets(),
            96 + u32::from(n.prefix_len()),
        ),
        IpNet::V6(n) => (n.network().octets(), u32::from(n.prefix_len())),
    };
    (bits, addr)
}

/// The DNS counters, summed over the CPUs (indexed by `stats::dns::*`), and the
/// evictions the LRU made, derived from them (see [`Learning::lru_evicted`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Learning {
    /// `stats::dns::LEN` counters.
    pub counters: Vec<u64>,
    /// Learned addresses, with their entries.
    pub learned: Vec<(LearnedKey, Learned)>,
}

impl Learning {
    /// A counter.
    pub fn counter(&self, index: u32) -> u64 {
        self.counters.get(index as usize).copied().unwrap_or(0)
    }

    /// Entries the LRU pushed out: every entry the kernel inserted is still there, was
    /// swept by the agent after it expired, or was evicted. Approximate by the few
    /// inserts two CPUs can race on (both count one entry).
    pub fn lru_evicted(&self) -> u64 {
        self.counter(dns::INSERTED)
            .saturating_sub(self.learned.len() as u64)
            .saturating_sub(self.counter(dns::EXPIRED))
    }

    /// Evictions of either kind: patterns pushed out of an address's slots while
    /// still valid, and addresses the LRU pushed out.
    pub fn evicted(&self) -> u64 {
        self.counter(dns::PATTERNS_EVICTED) + self.lru_evicted()
    }
}

/// Reads the learned addresses and the DNS counters through the pins.
pub fn read(paths: &PathArgs) -> anyhow::Result<Learning> {
    let learned = learned_map(open_pinned(paths, names::LEARNED)?)?;
    let learned = learned
        .iter()
        .collect::<Result<Vec<_>, _>>()
        .context("reading the learned addresses")?;
    Ok(Learning {
        counters: read_counters(paths)?,
        learned,
    })
}

fn learned_map(data: MapData) -> anyhow::Result<HashMap<MapData, LearnedKey, Learned>> {
    HashMap::try_from(Map::from_map_data(data)?).context("learned addresses map")
}

fn counters_map(paths: &PathArgs) -> anyhow::Result<PerCpuArray<MapData, u64>> {
    let map = Map::from_map_data(open_pinned(paths, names::DNS_STATS)?)?;
    PerCpuArray::try_from(map).context("DNS counters")
}

fn read_counters(paths: &PathArgs) -> anyhow::Result<Vec<u64>> {
    let map = counters_map(paths)?;
    (0..dns::LEN)
        .map(|i| Ok(map.get(&i, 0)?.iter().sum()))
        .collect()
}

/// Removes the learned addresses none of whose patterns is valid any more, and adds
/// them to the `expired` counter; then corrects the addresses each pattern holds
/// (`PC_NAME_ADDRS`, which the kernel's per-name limit reads, see [`recount`]). Returns
/// how many went.
///
/// An entry is read, then deleted if it has expired: should the kernel learn the same
/// address again in between (microseconds), that answer is lost and the address waits
/// for the next one. An expired entry opens nothing, so keeping it costs only memory;
/// the sweep is for the LRU's room and the counter.
pub fn sweep(paths: &PathArgs) -> anyhow::Result<u64> {
    let now = boot_ns();
    let mut name_addrs = name_addrs_map(paths)?;
    let before = read_name_counts(&name_addrs)?;
    let mut map = learned_map(open_pinned(paths, names::LEARNED)?)?;
    let entries = map
        .iter()
        .collect::<Result<Vec<_>, _>>()
        .context("reading the learned addresses")?;
    let expired: Vec<LearnedKey> = entries
        .iter()
        .filter(|(_, v)| v.expired(now))
        .map(|(k, _)| *k)
        .collect();
    let mut gone = 0u64;
    for k in &expired {
        if map.remove(k).is_ok() {
            gone += 1;
        }
    }
    if gone > 0 {
        // CPU 0's slot of `expired`: no program writes it, so this read-modify-write
        // races with nothing but another sweep (one agent runs at a time).
        let mut counters = counters_map(paths)?;
        let mut values: Vec<u64> = counters.get(&dns::EXPIRED, 0)?.iter().copied().collect();
        if let Some(first) = values.first_mut() {
            *first += gone;
        }
        counters.set(dns::EXPIRED, PerCpuValues::try_from(values)?, 0)?;
    }
    recount(&mut name_addrs, &before, &entries, now)?;
    Ok(gone)
}

/// The addresses per pattern of `PC_NAME_ADDRS`.
type NameCounts = std::collections::BTreeMap<NameKey, u32>;

fn name_addrs_map(paths: &PathArgs) -> anyhow::Result<HashMap<MapData, NameKey, u32>> {
    let map = Map::from_map_data(open_pinned(paths, names::NAME_ADDRS)?)?;
    HashMap::try_from(map).context("addresses per name map")
}

fn read_name_counts(map: &HashMap<MapData, NameKey, u32>) -> anyhow::Result<NameCounts> {
    map.iter()
        .collect::<Result<NameCounts, _>>()
        .context("reading the addresses per name")
}

/// Corrects `PC_NAME_ADDRS` (which the kernel's per-name limit reads) by the drift the
/// sweep saw: `before` is the map read just before the learned addresses `entries`,
/// whose valid patterns at `now` are the true counts then. The kernel's counts drift up
/// (the LRU drops entries without a word, addresses expire, two CPUs may add at once);
/// what the kernel added since `before` is kept, so an answer learned during the sweep
/// still counts: each count becomes (now in the map) - (before - true).
fn recount(
    map: &mut HashMap<MapData, NameKey, u32>,
    before: &NameCounts,
    entries: &[(LearnedKey, Learned)],
    now: u64,
) -> anyhow::Result<()> {
    let mut true_counts = NameCounts::new();
    for (_, learned) in entries {
        for n in learned
            .names
            .iter()
            .filter(|n| n.hash != 0 && n.expires_ns > now)
        {
            *true_counts
                .entry(NameKey::new(n.hash, 0, n.kind))
                .or_default() += 1;
        }
    }
    for (key, current) in read_name_counts(map)? {
        let seen = before.get(&key).copied().unwrap_or(0);
        let drift = seen.saturating_sub(true_counts.get(&key).copied().unwrap_or(0));
        let fixed = current.saturating_sub(drift);
        if fixed == 0 {
            // Removed while the kernel may add to it: that add is lost, and the count
            // is low by one until the next sweep (a limit a little late, never early).
            let _ = map.remove(&key);
        } else if fixed != current {
            map.insert(key, fixed, 0)
                .context("writing the addresses per name")?;
        }
    }
    Ok(())
}

/// `CLOCK_BOOTTIME` in ns: the clock of `bpf_ktime_get_boot_ns`, which the kernel
/// stamps learned addresses' expiry with.
pub fn boot_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &raw mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Removes the entries of a hash map whose keys `stale` picks (listed first: a map's keys
/// cannot be walked while entries are removed). `what` names the map in errors.
fn remove_where<K: aya::Pod + Eq + std::hash::Hash, V: aya::Pod>(
    map: &mut HashMap<&mut MapData, K, V>,
    stale: impl Fn(&K) -> bool,
    what: &str,
) -> anyhow::Result<()> {
    let keys: Vec<K> = map
        .keys()
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("listing {what}"))?
        .into_iter()
        .filter(|k| stale(k))
        .collect();
    for k in keys {
        map.remove(&k).with_context(|| format!("clearing {what}"))?;
    }
    Ok(())
}
