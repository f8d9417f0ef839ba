//! The program's maps. Names match `foobar_lb_common::MAP_*`. The controller pins them on bpffs
//! by name at load time (tests load them unpinned).

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use foobar_lb_common::{
    verdict, Backend, BackendSet, Counters, FlowKey, FlowValue, ServiceInfo, ServiceKey, VipKey,
    MAX_BACKENDS, MAX_FLOWS, MAX_SERVICES,
};

/// (VIP, port, proto) -> service id.
#[map]
pub static SERVICES: HashMap<ServiceKey, ServiceInfo> = HashMap::with_max_entries(MAX_SERVICES, 0);

/// VIP addresses, to drop malformed packets aimed at them and pass everything else.
#[map]
pub static VIPS: HashMap<VipKey, u32> = HashMap::with_max_entries(MAX_SERVICES, 0);

/// Service id -> its round-robin slots. No preallocation: an update replaces the element under
/// RCU, so a reader never sees a half-written set.
#[map]
pub static BACKEND_SETS: HashMap<u32, BackendSet> =
    HashMap::with_max_entries(MAX_SERVICES, BPF_F_NO_PREALLOC);

/// Backend id -> where to send packets. Id 0 stays unused.
#[map]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Service id -> round-robin cursor, advanced atomically (shared by all CPUs).
#[map]
pub static RR_CURSORS: Array<u64> = Array::with_max_entries(MAX_SERVICES, 0);

/// 5-tuple -> backend id: keeps every packet of a connection on one backend.
#[map]
pub static FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

#[map]
pub static VERDICT_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(verdict::COUNT, 0);

#[map]
pub static SERVICE_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

#[map]
pub static BACKEND_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);
