//! What the operator sees of a running policy: the status model and its rendering, the
//! Prometheus metrics, the deny log and the deny aggregate behind `report`. It reads
//! counters and events through `crate::datapath`; it never touches the kernel itself.

pub mod events;
pub mod metrics;
pub mod status;
pub mod table;
