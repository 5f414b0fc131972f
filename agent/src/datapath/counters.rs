//! Reads the counters back from the pinned maps and sums the CPUs: per-rule allowed
//! traffic, the global counters (denies and would-denies by direction and reason,
//! loopback and ICMP passes, events) and the table of denied ports.
//!
//! Reads go through the pins, so the running agent, `status` and `report` read the same
//! thing the same way. [`reset`] zeroes every layer's counters (`report --reset`).

use std::collections::BTreeMap;

use anyhow::Context as _;
use aya::{
    maps::{Map, PerCpuArray, PerCpuHashMap, PerCpuValues},
    util::nr_cpus,
};
use portcullis_common::{
    maps::{self as names, DENIED_HOT_SLOTS, MAX_RULES},
    stats::{Counter, DeniedKey, DeniedSlot, LAYER_CGROUP, LAYER_XDP, LAYERS, STATS_LEN},
};

use super::{loader::open_pinned, paths::PathArgs};

/// All counters at one instant. `rules`, `stats` and `denied` are the cgroup layer's
/// (what the per-service or host programs saw); the `xdp_*` fields the XDP layer's. A
/// packet both layers judged is in both, once each.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Rule index -> allowed traffic (indices with no traffic are left out).
    pub rules: BTreeMap<u16, Counter>,
    /// The global counters, indexed by `stats::*`.
    pub stats: Vec<Counter>,
    /// Denied (direction, protocol, port) -> traffic.
    pub denied: BTreeMap<DeniedKey, Counter>,
    /// Like `rules`, for the XDP layer.
    pub xdp_rules: BTreeMap<u16, Counter>,
    /// Like `stats`, for the XDP layer.
    pub xdp_stats: Vec<Counter>,
    /// Like `denied`, for the XDP layer.
    pub xdp_denied: BTreeMap<DeniedKey, Counter>,
}

fn sum(values: impl IntoIterator<Item = Counter>) -> Counter {
    values.into_iter().fold(Counter::default(), |a, c| Counter {
        packets: a.packets + c.packets,
        bytes: a.bytes + c.bytes,
    })
}

/// Reads every counter.
pub fn read(paths: &PathArgs) -> anyhow::Result<Snapshot> {
    let rules_map = Map::from_map_data(open_pinned(paths, names::RULE_COUNTERS)?)?;
    let rules_map = PerCpuArray::<_, Counter>::try_from(rules_map).context("rule counters")?;
    let read_rules = |layer: u32| -> anyhow::Result<BTreeMap<u16, Counter>> {
        let mut rules = BTreeMap::new();
        for i in 1..MAX_RULES {
            let c = sum(rules_map.get(&(layer * MAX_RULES + i), 0)?.iter().copied());
            if c.packets != 0 || c.bytes != 0 {
                rules.insert(i as u16, c);
            }
        }
        Ok(rules)
    };
    let stats_map = Map::from_map_data(open_pinned(paths, names::STATS)?)?;
    let stats_map = PerCpuArray::<_, Counter>::try_from(stats_map).context("global counters")?;
    let read_stats = |layer: u32| -> anyhow::Result<Vec<Counter>> {
        (0..STATS_LEN)
            .map(|i| {
                Ok(sum(stats_map
                    .get(&(layer * STATS_LEN + i), 0)?
                    .iter()
                    .copied()))
            })
            .collect()
    };
    let denied_map = Map::from_map_data(open_pinned(paths, names::DENIED)?)?;
    let denied_map =
        PerCpuHashMap::<_, DeniedKey, Counter>::try_from(denied_map).context("denied ports")?;
    let (mut denied, mut xdp_denied) = (BTreeMap::new(), BTreeMap::new());
    for item in denied_map.iter() {
        let (k, v) = item?;
        let table = if u32::from(k.layer) == LAYER_XDP {
            &mut xdp_denied
        } else {
            &mut denied
        };
        table.insert(k, sum(v.iter().copied()));
    }
    // Then the per-CPU cache in front of the table: a key's count is its entry plus the
    // slots holding it (read after the table, so a slot moved into the table while we
    // read is missed until the next read, never counted twice).
    for (k, c) in hot_slots(paths)? {
        let table = if u32::from(k.layer) == LAYER_XDP {
            &mut xdp_denied
        } else {
            &mut denied
        };
        let e: &mut Counter = table.entry(k).or_default();
        e.packets += c.packets;
        e.bytes += c.bytes;
    }
    Ok(Snapshot {
        rules: read_rules(LAYER_CGROUP)?,
        stats: read_stats(LAYER_CGROUP)?,
        denied,
        xdp_rules: read_rules(LAYER_XDP)?,
        xdp_stats: read_stats(LAYER_XDP)?,
        xdp_denied,
    })
}

/// The occupied slots of the denied-port cache, of every CPU.
fn hot_slots(paths: &PathArgs) -> anyhow::Result<Vec<(DeniedKey, Counter)>> {
    let map = Map::from_map_data(open_pinned(paths, names::DENIED_HOT)?)?;
    let map = PerCpuArray::<_, DeniedSlot>::try_from(map).context("denied-port cache")?;
    let mut out = Vec::new();
    for i in 0..DENIED_HOT_SLOTS {
        for slot in map.get(&i, 0)?.iter() {
            if slot.count.packets != 0 {
                out.push((slot.key, slot.count));
            }
        }
    }
    Ok(out)
}

impl Snapshot {
    /// A global counter of the cgroup layer.
    pub fn stat(&self, index: u32) -> Counter {
        self.stats.get(index as usize).copied().unwrap_or_default()
    }

    /// A global counter of the XDP layer.
    pub fn xdp_stat(&self, index: u32) -> Counter {
        self.xdp_stats
            .get(index as usize)
            .copied()
            .unwrap_or_default()
    }
}

/// Zeroes the counters of every layer: the rule counters and global counters (each map
/// holds [`LAYERS`] consecutive blocks, one per layer) and the denied-port table, whose
/// keys carry their layer.
///
/// The writes race with the programs' per-CPU increments: a packet counted at the very
/// instant of the reset may be lost or kept. That is the nature of a reset.
pub fn reset(paths: &PathArgs) -> anyhow::Result<()> {
    let cpus = nr_cpus().map_err(|(_, e)| e).context("counting CPUs")?;
    let zero = || PerCpuValues::try_from(vec![Counter::default(); cpus]);
    for (name, per_layer) in [(names::RULE_COUNTERS, MAX_RULES), (names::STATS, STATS_LEN)] {
        let map = Map::from_map_data(open_pinned(paths, name)?)?;
        let mut array = PerCpuArray::<_, Counter>::try_from(map)
            .with_context(|| format!("opening map \"{name}\""))?;
        for i in 0..LAYERS * per_layer {
            array
                .set(i, zero()?, 0)
                .with_context(|| format!("zeroing entry {i} of map \"{name}\""))?;
        }
    }
    let map = Map::from_map_data(open_pinned(paths, names::DENIED)?)?;
    let mut denied = PerCpuHashMap::<_, DeniedKey, Counter>::try_from(map)
        .context("opening the denied-port table")?;
    let keys: Vec<DeniedKey> = denied.keys().filter_map(Result::ok).collect();
    for k in keys {
        // Gone already (LRU eviction) is as good as removed.
        let _ = denied.remove(&k);
    }
    let map = Map::from_map_data(open_pinned(paths, names::DENIED_HOT)?)?;
    let mut hot =
        PerCpuArray::<_, DeniedSlot>::try_from(map).context("opening the denied-port cache")?;
    for i in 0..DENIED_HOT_SLOTS {
        hot.set(
            i,
            PerCpuValues::try_from(vec![DeniedSlot::default(); cpus])?,
            0,
        )
        .with_context(|| format!("zeroing slot {i} of the denied-port cache"))?;
    }
    Ok(())
}
