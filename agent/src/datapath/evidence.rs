//! Reads, and deletes from, the kernel's per-flow evidence of would-denied flows
//! (`PC_AUDIT_FLOWS`, see `portcullis_common::evidence`): the CPUs' slots of each flow
//! are summed into one [`FlowEvidence`].

use anyhow::Context as _;
use aya::maps::{Map, MapData, PerCpuHashMap};
use portcullis_common::{evidence::FlowEvidence, flow::FlowKey, maps as names};

use super::{loader::open_pinned, paths::PathArgs};

/// The pinned evidence map.
pub struct EvidenceMap(PerCpuHashMap<MapData, FlowKey, FlowEvidence>);

impl EvidenceMap {
    /// Opens the pinned map.
    pub fn open(paths: &PathArgs) -> anyhow::Result<Self> {
        let map = Map::from_map_data(open_pinned(paths, names::AUDIT_FLOWS)?)?;
        Ok(Self(
            PerCpuHashMap::try_from(map).context("opening the per-flow evidence map")?,
        ))
    }

    /// Every flow in the map, its CPUs summed. Entries the kernel evicts while this
    /// iterates are skipped.
    pub fn read(&self) -> Vec<(FlowKey, FlowEvidence)> {
        self.0
            .iter()
            .filter_map(Result::ok)
            .map(|(k, per_cpu)| {
                let mut sum = FlowEvidence::default();
                for v in per_cpu.iter() {
                    sum.merge(v);
                }
                (k, sum)
            })
            .collect()
    }

    /// Deletes the entries of `keys` (gone already is as good as deleted).
    pub fn remove(&mut self, keys: &[FlowKey]) {
        for k in keys {
            let _ = self.0.remove(k);
        }
    }

    /// Deletes every entry (`report --reset`).
    pub fn clear(&mut self) {
        let keys: Vec<FlowKey> = self.0.keys().filter_map(Result::ok).collect();
        self.remove(&keys);
    }
}
