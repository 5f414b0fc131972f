//! The deny-event ring buffer, read asynchronously: the programs write whole
//! [`DenyEvent`]s (rate-limited per CPU); the daemon awaits them here without knowing
//! the map type behind them.

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use portcullis_common::{event::DenyEvent, maps as names};
use tokio::io::unix::AsyncFd;

use super::loader::Datapath;

/// The ring buffer of deny events, registered with the tokio reactor.
pub struct EventRing(AsyncFd<RingBuf<MapData>>);

impl EventRing {
    /// Takes the ring buffer out of the loaded object (once per process). Needs a tokio
    /// runtime with I/O enabled.
    pub fn take(dp: &mut Datapath) -> anyhow::Result<Self> {
        let ring = RingBuf::try_from(dp.ebpf.take_map(names::EVENTS).context("events map")?)?;
        // SAFETY: the ring buffer owns its map fd, which stays open and unchanged for as
        // long as the `AsyncFd` owns the ring buffer.
        unsafe { AsyncFd::register(ring) }
            .map(Self)
            .map_err(|e| anyhow::anyhow!("polling the event ring buffer: {e}"))
    }

    /// Waits until events are there, then hands each one to `f`.
    pub async fn next_batch(&mut self, mut f: impl FnMut(&DenyEvent)) -> anyhow::Result<()> {
        let mut guard = self.0.readable_mut().await?;
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if item.len() >= size_of::<DenyEvent>() {
                // SAFETY: the programs write whole `DenyEvent`s; the length was checked.
                let e: DenyEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                f(&e);
            }
        }
        guard.clear_ready();
        Ok(())
    }
}
