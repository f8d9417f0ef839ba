//! Flow-state sync between balancer nodes: what the program tells the controller about the
//! flows it creates (README "Redundancy").

use crate::FlowKey;

/// The program's ring buffer of [`FlowEvent`]s (per process, never pinned).
pub const MAP_FLOW_EVENTS: &str = "FLOW_EVENTS";
/// Per-CPU counters of the sync events, indexed by the `SYNC_STAT_*` constants (per process).
pub const MAP_SYNC_STATS: &str = "SYNC_STATS";
/// The program's global (`.rodata`, set at load time) that turns the events on: 0 = off, so a
/// node without `[sync]` pays nothing (the verifier prunes the path on the known constant).
pub const SYNC_ENABLED_GLOBAL: &str = "SYNC_ENABLED";

/// Bytes of [`MAP_FLOW_EVENTS`]: about 18,000 events of 56 bytes (header included) between
/// two reads of the controller.
pub const FLOW_EVENTS_BYTES: u32 = 1 << 20;

/// [`MAP_SYNC_STATS`] index: events written to the ring.
pub const SYNC_STAT_SENT: u32 = 0;
/// [`MAP_SYNC_STATS`] index: events lost because the ring was full (forwarding went on).
pub const SYNC_STAT_RING_FULL: u32 = 1;
pub const SYNC_STAT_COUNT: u32 = 2;

/// One record of [`MAP_FLOW_EVENTS`]: the program created a flow-table entry for `key`, sent to
/// backend `backend_id` whose owner word was `owner`. Ids are local to a node: the controller
/// translates them to the backend's address before anything leaves the node.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowEvent {
    pub key: FlowKey,
    pub backend_id: u32,
    pub owner: u32,
}
const _: () = assert!(core::mem::size_of::<FlowEvent>() == 48);

#[cfg(feature = "user")]
mod pod {
    unsafe impl aya::Pod for super::FlowEvent {}
}
