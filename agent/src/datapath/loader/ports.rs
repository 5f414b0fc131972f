//! The port table written in place: mapped (`BPF_F_MMAPABLE`, one store per changed
//! entry) where the table allows it, else with batched updates for a table pinned by a
//! build before it was made mappable.

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{Map, MapData},
};
use portcullis_common::{maps as names, policy::PORT_TABLE_LEN};

use super::update_batch;
use crate::{
    datapath::fault::{self, Step},
    policy::image::Image,
};

/// The port table, mapped: both generations. The kernel lays array values out in 8-byte
/// slots, so entry `i` is the first four bytes of slot `i`.
pub(super) struct PortsMmap(memmap2::MmapMut);

/// Bytes between two entries of a mapped array (`round_up(value_size, 8)`).
const PORTS_STRIDE: usize = 8;

impl PortsMmap {
    /// The entries from `start`, as (slot, entry) pairs.
    pub(super) fn entries(&mut self, start: usize) -> impl Iterator<Item = &mut u32> {
        let words: &mut [u32] = {
            let len = self.0.len() / std::mem::size_of::<u32>();
            // SAFETY: the mapping is page-aligned, `len` whole u32s long, and u32 has no
            // invalid values; the programs only read it.
            unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast(), len) }
        };
        words
            .iter_mut()
            .step_by(PORTS_STRIDE / std::mem::size_of::<u32>())
            .skip(start)
    }
}

/// Maps the port table, or `None` (logged) when it cannot be: a table pinned by a build
/// before it was made mappable is written with batched syscalls instead. memmap2 rather
/// than raw mmap: it unmaps on drop and checks the length.
pub(super) fn map_ports(ebpf: &Ebpf) -> Option<PortsMmap> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let Some(Map::Array(ports)) = ebpf.map(names::PORTS) else {
        return None;
    };
    let len = PORT_TABLE_LEN as usize * PORTS_STRIDE;
    let fd = ports.fd().as_fd().as_raw_fd();
    // SAFETY: a shared mapping of a BPF array's value area; the kernel keeps it valid
    // until it is unmapped, whatever happens to the fd. Only this process writes it.
    match unsafe { memmap2::MmapOptions::new().len(len).map_mut(fd) } {
        Ok(m) if m.len() >= len => Some(PortsMmap(m)),
        Ok(_) => None,
        Err(e) => {
            log::info!(
                "the pinned port table cannot be mapped ({e}): writing it with batched updates"
            );
            None
        }
    }
}

/// Writes `image`'s port entries that differ from what this process knows the idle
/// generation holds, with BPF_MAP_UPDATE_BATCH: for a table that cannot be mapped
/// (pinned by a build before it was made mappable).
pub(super) fn write_ports_batch(
    ports: &MapData,
    shadow: &mut [Option<Vec<u32>>; 2],
    image: &Image,
) -> anyhow::Result<()> {
    let base = image.ports_base();
    {
        // Taken, not borrowed: if writing fails half-way, the next install writes all.
        let known = shadow[image.generation as usize & 1].take();
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        for (i, v) in image.ports.iter().enumerate() {
            if known.as_ref().is_some_and(|k| k[i] == *v) {
                continue;
            }
            keys.push(base + i as u32);
            values.push(*v);
        }
        let half = keys.len() / 2;
        update_batch(ports, &keys[..half], &values[..half], 1).context("writing the port table")?;
        fault::point(Step::PortsHalf);
        update_batch(ports, &keys[half..], &values[half..], 1).context("writing the port table")?;
        shadow[image.generation as usize & 1] = Some(image.ports.clone());
    }
    Ok(())
}
